"""Data parallelism over 4 simulated CPU devices equals one device."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

SCRIPT = r"""
import importlib, json, sys
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
                                           for p in (False, True)],
               "loss": [runs[p].metrics["stream_loss"] for p in (False, True)],
               "flops": [[runs[p].metrics[k] for p in (False, True)]
                         for k in ("train_flops", "eval_flops")]}}
# The test stream is split over the devices with the batches; each
# evaluates its share.
fit_module = importlib.import_module("jaxcl.training.fit")
place = fit_module._placement(True, 0, 8)
test, _ = fit_module._put_test_stream(list(bench.test_stream),
                                     bench.test_stream.max_size, 4, place,
                                     True)
out["test_rows"] = sorted(shard.data.shape[1]
                          for shard in test.x.addressable_shards)
out["test_size"] = bench.test_stream.max_size
# With the test stream split, the FLOP count traces no hook a second time.
traces = []
def predict(ctx, params, model_state, cl_state, x, task):
  traces.append(1)
  return ctx.logits(params, model_state, x, task)
jaxcl.fit(model, jaxcl.strategies.naive()._replace(predict=predict),
          optax.sgd(0.1), bench, batch_size=8, data_parallel=True)
out["predict_traces"] = len(traces)
# Periodic evaluation of the test stream keeps it whole on every device.
periodic = [jaxcl.fit(model, jaxcl.strategies.naive(), optax.sgd(0.1), bench,
                      batch_size=8, epochs=2, data_parallel=parallel,
                      periodic_eval=jaxcl.training.periodic.PeriodicEval(
                          stream="test"))
            for parallel in (False, True)]
out["periodic"] = [[row["stream_accuracy"] for row in r.periodic]
                   for r in periodic]
# 3 seeds on 4 devices: the runs stay together and batches (and the test
# stream, 3 samples at a time: fewer than the devices) are split.
three = jaxcl.fit(model, jaxcl.strategies.naive(), optax.sgd(0.1), bench,
                  batch_size=8, epochs=2, seeds=[0, 1, 2], eval_batch_size=3)
one = jaxcl.fit(model, jaxcl.strategies.naive(), optax.sgd(0.1), bench,
                batch_size=8, epochs=2, seed=1, data_parallel=False,
                eval_batch_size=3)
out["three_seeds"] = [r.accuracy_matrix.tolist() for r in (three.runs[1], one)]
seeds = jaxcl.fit(model, jaxcl.strategies.naive(), optax.sgd(0.1), bench,
                  batch_size=8, epochs=2, seeds=[0, 1, 2, 3])
single = jaxcl.fit(model, jaxcl.strategies.naive(), optax.sgd(0.1), bench,
                   batch_size=8, epochs=2, seed=2, data_parallel=False)
out["seeds_sharded_diff"] = max(float(np.abs(a - b).max()) for a, b in zip(
    jax.tree.leaves(seeds.runs[2].state.params),
    jax.tree.leaves(single.state.params)))
# Each device evaluates its own runs (no gathering of the others').
out["seeds_sharded_accuracy"] = [r.accuracy_matrix.tolist()
                                 for r in (seeds.runs[2], single)]
# An online stream: its mini-experiences train in blocks (one call per span).
online = jaxcl.benchmarks.split_online(bench, 8)
blocked = [jaxcl.fit(model, jaxcl.strategies.naive(), optax.sgd(0.1), online,
                     batch_size=8, data_parallel=parallel)
           for parallel in (False, True)]
out["online_diff"] = max(float(np.abs(a - b).max()) for a, b in zip(
    jax.tree.leaves(blocked[0].state.params),
    jax.tree.leaves(blocked[1].state.params)))
# Seeds sharded over the devices, blocks of 5 mini-experiences (not a
# multiple of 4: the block axis must not be the one split).
online_seeds = jaxcl.fit(model, jaxcl.strategies.naive(), optax.sgd(0.1),
                         online, batch_size=8, seeds=[0, 1, 2, 3])
online_single = jaxcl.fit(model, jaxcl.strategies.naive(), optax.sgd(0.1),
                          online, batch_size=8, seed=2, data_parallel=False)
out["online_seeds_diff"] = max(float(np.abs(a - b).max()) for a, b in zip(
    jax.tree.leaves(online_seeds.runs[2].state.params),
    jax.tree.leaves(online_single.state.params)))
# Streamed from the host in chunks: batch split, and seeds sharded.
streamed = [jaxcl.fit(model, jaxcl.strategies.naive(), optax.sgd(0.1), bench,
                      batch_size=8, epochs=2, device_memory_budget_mb=0.0005,
                      **kwargs)
            for kwargs in (dict(data_parallel=True), dict(seeds=[0, 1, 2, 3]),
                           dict(data_parallel=False))]
out["streamed_diff"] = max(float(np.abs(a - b).max()) for a, b in zip(
    jax.tree.leaves(streamed[0].state.params),
    jax.tree.leaves(streamed[2].state.params)))
out["streamed_seeds_diff"] = max(float(np.abs(a - b).max()) for a, b in zip(
    jax.tree.leaves(streamed[1].runs[0].state.params),
    jax.tree.leaves(streamed[2].state.params)))
print(json.dumps(out))
"""


# TorchConv's CPU gradients (custom VJP, per-kernel vmap rule) under a
# batch sharded over devices and under seeds sharded over devices.
CNN_SCRIPT = r"""
import json
import jax, numpy as np, optax
import jaxcl

assert len(jax.local_devices()) == 4
rng = np.random.default_rng(0)
y = np.repeat(np.arange(4), 16)
x = (rng.integers(0, 40, (64, 12, 12, 1))
     + 50 * y[:, None, None, None]).astype(np.uint8)
bench = jaxcl.benchmarks.class_incremental(
    (x, y), (x, y), 2, fixed_class_order=range(4),
    preprocess=jaxcl.benchmarks.normalizer(0.5, 0.25))
model = jaxcl.models.SimpleCNN(4, drop_rate=0.0)
fit = lambda **kw: jaxcl.fit(model, jaxcl.strategies.naive(), optax.sgd(0.1),
                             bench, batch_size=8, epochs=2, **kw)
diff = lambda a, b: max(float(np.abs(u - v).max()) for u, v in zip(
    jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params)))
seeds = fit(seeds=[0, 1, 2, 3])
print(json.dumps({
    "data_parallel_diff": diff(fit(data_parallel=False),
                               fit(data_parallel=True)),
    "seeds_sharded_diff": diff(seeds.runs[2],
                               fit(seed=2, data_parallel=False))}))
"""


def _run_on_four_devices(script, cache):
  """Runs `script` with 4 simulated CPU devices; returns its last JSON line.

  The runs on one device that differ only in their seed build the same
  programs: with a persistent compilation cache (`cache`, a fresh folder)
  each is compiled once and loaded after, bit for bit the same program.
  """
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  proc = subprocess.run([sys.executable, "-c", script], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_four_devices_equal_one_device(tmp_path):
  from jaxcl.strategies import REGISTRY
  names = [n for n in ("naive", "replay", "ewc") if n in REGISTRY]
  tests = str(pathlib.Path(__file__).parent)
  out = _run_on_four_devices(SCRIPT.format(tests=tests, names=names),
                             tmp_path)
  for name in names:
    assert out[name]["param_diff"] < 1e-5, name
    np.testing.assert_allclose(out[name]["acc"][0], out[name]["acc"][1], err_msg=name)
    np.testing.assert_allclose(*out[name]["loss"], rtol=1e-6, err_msg=name)
    for flops in out[name]["flops"]:  # per step, per sample: as one device
      assert np.isfinite(flops).all(), name
      np.testing.assert_allclose(*flops, rtol=1e-2, err_msg=name)
  assert out["test_rows"] == [-(-out["test_size"] // 4)] * 4
  assert out["predict_traces"] == 1
  assert len(out["periodic"][0]) > 2 and out["periodic"][0] == out["periodic"][1]
  assert out["three_seeds"][0] == out["three_seeds"][1]
  assert out["seeds_sharded_diff"] < 1e-5
  assert out["seeds_sharded_accuracy"][0] == out["seeds_sharded_accuracy"][1]
  assert out["online_diff"] < 1e-5
  assert out["online_seeds_diff"] < 1e-5
  assert out["streamed_diff"] < 1e-5
  assert out["streamed_seeds_diff"] < 1e-5


def test_convolutional_model_on_four_devices_equals_one_device(tmp_path):
  out = _run_on_four_devices(CNN_SCRIPT, tmp_path)
  assert out["data_parallel_diff"] < 1e-5
  assert out["seeds_sharded_diff"] < 1e-5
