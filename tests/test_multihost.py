"""Two processes joined by jax.distributed train as one run over their devices.

Each process is a "host" with 2 simulated CPU devices; the mesh spans all 4
and XLA's CPU collectives (gloo) carry the all-reduces between processes.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

# One host: join the others, then compare runs over the 4 global devices
# with the same runs on one of its own devices.
WORKER = r"""
import json, sys
process_id, port, tests, checkpoints = sys.argv[1:]
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{port}", num_processes=2,
                           process_id=int(process_id))
import numpy as np, optax
sys.path.insert(0, tests)
from conftest import make_benchmark
import jaxcl

assert len(jax.devices()) == 4 and len(jax.local_devices()) == 2
bench = make_benchmark(n_classes=4, n_experiences=2, per_class=20)
online = jaxcl.benchmarks.split_online(bench, 8)
model = jaxcl.models.MLP(4, hidden_size=16, drop_rate=0.0)


def fit(name="naive", benchmark=bench, **kwargs):
  return jaxcl.fit(model, jaxcl.strategies.from_spec(name), optax.sgd(0.1),
                   benchmark, batch_size=8, **kwargs)


def summary(result):
  params = jax.tree.leaves(result.state.params)
  return {"params": [np.asarray(p).tolist() for p in params],
          "devices": len(params[0].sharding.device_set),
          "accuracy": result.accuracy_matrix.tolist()}


out = {}
for name in ("naive", "replay", "ewc"):
  out[name] = [summary(fit(name, epochs=2, data_parallel=p))
               for p in (True, False)]
out["seeds"] = [summary(fit(epochs=2, seeds=[0, 1, 2, 3]).runs[2]),
                summary(fit(epochs=2, seed=2, data_parallel=False))]
out["online"] = [summary(fit(benchmark=online, data_parallel=p))
                 for p in (True, False)]
out["checkpoint"] = [summary(fit(epochs=2, checkpoint_dir=checkpoints))
                     for _ in range(2)]
print(json.dumps(out))
"""


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _on_two_hosts(command):
  """Runs ``command(process_id)`` as two processes; returns their stdouts."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  hosts = [subprocess.Popen(command(i), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outputs = []
  try:
    for host in hosts:
      stdout, stderr = host.communicate(timeout=600)
      assert host.returncode == 0, stderr[-3000:]
      outputs.append(stdout)
  finally:
    for host in hosts:
      host.kill()
  return outputs


def test_two_hosts_train_as_one_run(tmp_path):
  args = [str(_free_port()), str(pathlib.Path(__file__).parent),
          str(tmp_path / "checkpoints")]
  outputs = [json.loads([line for line in stdout.splitlines()
                         if line.startswith("{")][-1])
             for stdout in _on_two_hosts(
                 lambda i: [sys.executable, "-c", WORKER, str(i), *args])]
  # Both hosts hold every number of every run.
  assert outputs[0] == outputs[1]
  out = outputs[0]
  assert set(out) == {"naive", "replay", "ewc", "seeds", "online",
                      "checkpoint"}
  for name, (spread, single) in out.items():
    assert (spread["devices"], single["devices"]) == (
        4, 4 if name == "checkpoint" else 1), name
    np.testing.assert_array_equal(spread["accuracy"], single["accuracy"],
                                  err_msg=name)
    for a, b in zip(spread["params"], single["params"], strict=True):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=name)
  # The second run resumed from the first's last checkpoint, written once.
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()
                if p.name.isdigit()) == ["1", "2"]


def test_cli_on_two_hosts_writes_one_set_of_outputs(tmp_path):
  port = _free_port()
  logdirs = [tmp_path / "host0", tmp_path / "host1"]
  _on_two_hosts(lambda i: [
      sys.executable, "-m", "jaxcl.cli", "run", "--distributed",
      "--coordinator-address", f"localhost:{port}", "--num-processes", "2",
      "--process-id", str(i), "--n-experiences", "2", "--batch-size", "16",
      "--hidden-size", "32", "--logdir", str(logdirs[i]), "--quiet",
      "--no-progress", "--compilation-cache", ""])
  results = json.loads((logdirs[0] / "results.json").read_text())
  assert results["environment"]["processes"] == 2
  assert results["environment"]["devices"] == 4
  assert len(results["accuracy_matrix"]) == 2
  assert not logdirs[1].exists()
