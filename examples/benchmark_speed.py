"""Times the default `jaxcl run` setting and prints the numbers.

Setting: bundled SplitMNIST (5 experiences), naive, MLP 784-512-10, 1 epoch,
batch 32, SGD 0.01, seed 0. Prints fit's compile/train/eval/total seconds and
steps/s (best of --repeats fits in this process), the wall time of whole
`jaxcl run` processes (first with an empty compilation cache, then warm), and
the machine's measured float32 matmul peak for scale.

Usage:
  python examples/benchmark_speed.py [--repeats 3] [--no-process]
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import jax
import optax

import jaxcl


def time_fit(repeats: int) -> dict:
  bench = jaxcl.benchmarks.split_mnist(n_experiences=5, seed=0)
  steps = sum(math.ceil(len(e) / 32) for e in bench.train_stream)
  runs = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = jaxcl.fit(jaxcl.models.MLP(num_classes=10),
                       jaxcl.strategies.naive(), optax.sgd(0.01), bench,
                       epochs=1, batch_size=32, seed=0)
    runs.append({**result.timings, "wall_s": time.perf_counter() - start,
                 "stream_accuracy": result.metrics["stream_accuracy"]})
  best = min(runs, key=lambda r: r["total_s"])
  best["steps_per_s"] = steps / best["train_s"]
  best["steps"] = steps
  return best


def time_processes() -> list[float]:
  """Wall time of `jaxcl run` with a cold, then a warm compilation cache."""
  times = []
  with tempfile.TemporaryDirectory() as tmp:
    for i in range(2):
      start = time.perf_counter()
      subprocess.run(
          [sys.executable, "-m", "jaxcl.cli", "run", "--logdir",
           os.path.join(tmp, f"run{i}"), "--quiet", "--no-progress",
           "--compilation-cache", os.path.join(tmp, "cache")],
          check=True, capture_output=True, cwd=tmp)
      times.append(time.perf_counter() - start)
  return times


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no-process", action="store_true",
                      help="skip timing whole `jaxcl run` processes")
  args = parser.parse_args()
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}, {os.cpu_count()} CPUs")
  peak = jaxcl.evaluation.system.matmul_peak_flops()
  print(f"matmul peak: {peak / 1e9:.1f} GFLOP/s (float32 2048^3)")
  fit = time_fit(args.repeats)
  print(f"fit (best of {args.repeats}): compile {fit['compile_s']:.2f} s, "
        f"train {fit['train_s']:.3f} s, eval {fit['eval_s']:.3f} s, "
        f"total {fit['total_s']:.2f} s; {fit['steps']} steps, "
        f"{fit['steps_per_s']:.0f} steps/s; stream accuracy "
        f"{fit['stream_accuracy']:.4f}")
  if not args.no_process:
    cold, warm = time_processes()
    print(f"`jaxcl run` process: {cold:.2f} s (empty compilation cache), "
          f"{warm:.2f} s (warm cache)")
  print(json.dumps(fit))


if __name__ == "__main__":
  main()
