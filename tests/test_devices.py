"""Data parallelism over 4 simulated CPU devices equals one device."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

SCRIPT = r"""
import json, sys
import jax, numpy as np, optax
sys.path.insert(0, {tests!r})
from conftest import make_benchmark
import jaxcl

assert len(jax.local_devices()) == 4
bench = make_benchmark(n_classes=4, n_experiences=2, per_class=20)
model = jaxcl.models.MLP(4, hidden_size=16, drop_rate=0.0)
out = {{}}
for name in {names!r}:
  runs = {{}}
  for parallel in (False, True):
    strategy = jaxcl.strategies.from_spec(name)
    r = jaxcl.fit(model, strategy, optax.sgd(0.1), bench, batch_size=8,
                  epochs=2, data_parallel=parallel)
    runs[parallel] = r
  diff = max(float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(runs[False].state.params),
      jax.tree.leaves(runs[True].state.params)))
  out[name] = {{"param_diff": diff, "acc": [runs[p].accuracy_matrix.tolist()
                                           for p in (False, True)]}}
seeds = jaxcl.fit(model, jaxcl.strategies.naive(), optax.sgd(0.1), bench,
                  batch_size=8, epochs=2, seeds=[0, 1, 2, 3])
single = jaxcl.fit(model, jaxcl.strategies.naive(), optax.sgd(0.1), bench,
                   batch_size=8, epochs=2, seed=2, data_parallel=False)
out["seeds_sharded_diff"] = max(float(np.abs(a - b).max()) for a, b in zip(
    jax.tree.leaves(seeds.runs[2].state.params),
    jax.tree.leaves(single.state.params)))
print(json.dumps(out))
"""


def test_four_devices_equal_one_device():
  from jaxcl.strategies import REGISTRY
  names = [n for n in ("naive", "replay", "ewc") if n in REGISTRY]
  tests = str(pathlib.Path(__file__).parent)
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=tests, names=names)],
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  for name in names:
    assert out[name]["param_diff"] < 1e-5, name
    np.testing.assert_allclose(out[name]["acc"][0], out[name]["acc"][1], err_msg=name)
  assert out["seeds_sharded_diff"] < 1e-5
