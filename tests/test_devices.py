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


def params_diff(a, b):
  return max(float(np.abs(u - v).max()) for u, v in zip(
      jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params)))


# EWC's prediction, counting its traces.
traces = []
def predict(ctx, params, model_state, cl_state, x, task):
  traces.append(1)
  return ctx.logits(params, model_state, x, task)
strategies = {{"naive": jaxcl.strategies.naive(),
               "replay": jaxcl.strategies.from_spec("replay"),
               "ewc": jaxcl.strategies.from_spec("ewc")._replace(
                   predict=predict)}}
# Replay's runs evaluate the test stream periodically, which keeps it whole
# on every device; the others' runs split it over the devices.
periodic_eval = {{"replay": jaxcl.training.periodic.PeriodicEval(
    stream="test")}}
out, single = {{}}, {{}}
for name, strategy in strategies.items():
  runs = {{}}
  for parallel in (False, True):
    traces.clear()
    runs[parallel] = jaxcl.fit(model, strategy, optax.sgd(0.1), bench,
                               batch_size=8, epochs=2, data_parallel=parallel,
                               periodic_eval=periodic_eval.get(name))
  single[name] = runs[False]
  out[name] = {{"param_diff": params_diff(runs[False], runs[True]),
               "acc": [runs[p].accuracy_matrix.tolist()
                       for p in (False, True)],
               "loss": [runs[p].metrics["stream_loss"] for p in (False, True)],
               "flops": [[runs[p].metrics[k] for p in (False, True)]
                         for k in ("train_flops", "eval_flops")]}}
  if name in periodic_eval:
    out["periodic"] = [[row["stream_accuracy"] for row in runs[p].periodic]
                       for p in (False, True)]
  if strategy.predict is predict:
    # With the test stream split, the FLOP count traces no hook a second
    # time (traces of the run over the devices, the last).
    out["predict_traces"] = len(traces)
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
# Seeds in another order than the runs: run i is not seed i's by mistake.
# The runs of seed 0 are compared with naive's on one device.
naive = lambda data=bench, **kwargs: jaxcl.fit(
    model, jaxcl.strategies.naive(), optax.sgd(0.1), data, batch_size=8,
    **kwargs)
# 3 seeds on 4 devices: the runs stay together and batches (and the test
# stream, 3 samples at a time: fewer than the devices) are split.
three = naive(epochs=2, seeds=[1, 0, 2], eval_batch_size=3)
out["three_seeds"] = [r.accuracy_matrix.tolist()
                      for r in (three.runs[1], single["naive"])]
seeds = naive(epochs=2, seeds=[3, 1, 0, 2])
out["seeds_sharded_diff"] = params_diff(seeds.runs[2], single["naive"])
# Each device evaluates its own runs (no gathering of the others').
out["seeds_sharded_accuracy"] = [r.accuracy_matrix.tolist()
                                 for r in (seeds.runs[2], single["naive"])]
# An online stream: its mini-experiences train in blocks (one call per span).
online = jaxcl.benchmarks.split_online(bench, 8)
blocked = [naive(online, data_parallel=parallel) for parallel in (False, True)]
out["online_diff"] = params_diff(*blocked)
# Seeds sharded over the devices, blocks of 5 mini-experiences (not a
# multiple of 4: the block axis must not be the one split).
online_seeds = naive(online, seeds=[3, 1, 0, 2])
out["online_seeds_diff"] = params_diff(online_seeds.runs[2], blocked[0])
# Streamed from the host in chunks: batch split, and seeds sharded. On one
# device, streamed runs give the numbers of runs on the device
# (test_streaming.py).
streamed = [naive(epochs=2, device_memory_budget_mb=0.0005, **kwargs)
            for kwargs in (dict(data_parallel=True),
                           dict(seeds=[3, 1, 0, 2]))]
out["streamed_diff"] = params_diff(streamed[0], single["naive"])
out["streamed_seeds_diff"] = params_diff(streamed[1].runs[2],
                                         single["naive"])
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
# One epoch of 4 steps per experience: each step's gradients are compared.
fit = lambda **kw: jaxcl.fit(model, jaxcl.strategies.naive(), optax.sgd(0.1),
                             bench, batch_size=8, **kw)
diff = lambda a, b: max(float(np.abs(u - v).max()) for u, v in zip(
    jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params)))
one = fit(data_parallel=False)
# Run 2, on device 2, is seed 0's: the run on one device.
seeds = fit(seeds=[3, 1, 0, 2])
print(json.dumps({"data_parallel_diff": diff(one, fit(data_parallel=True)),
                  "seeds_sharded_diff": diff(seeds.runs[2], one)}))
"""


def _run_on_four_devices(script, cache):
  """Runs `script` with 4 simulated CPU devices; returns its last JSON line.

  Runs that share a program (an evaluation of the same stream, an
  initialisation) build the same one: with a persistent compilation cache
  (`cache`, a fresh folder) each is compiled once and loaded after, bit for
  bit the same program.
  """
  env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") +
         " --xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  proc = subprocess.run([sys.executable, "-c", script], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_four_devices_equal_one_device(tmp_path):
  tests = str(pathlib.Path(__file__).parent)
  out = _run_on_four_devices(SCRIPT.format(tests=tests), tmp_path)
  for name in ("naive", "replay", "ewc"):
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
