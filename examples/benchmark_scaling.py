"""How jaxcl's costs grow with stream length, replay-buffer size and seeds.

Three sweeps, three sizes each, on the bundled digits (MLP 784-512-10, SGD
0.05, batch 32, 1 epoch): the number of experiences of an online stream
(fixed total data, so more, smaller experiences), the replay buffer's
capacity, and the number of vmapped seeds. For each: compile time, training
time per optimizer step (excluding compilation), evaluation time, and peak
host memory.

Usage:
  python examples/benchmark_scaling.py [--only streams,buffer,seeds]
"""

import argparse
import time

import jax
import optax

import jaxcl
from jaxcl.benchmarks import split_mnist, split_online


def run(strategy, bench, **kwargs) -> dict:
  start = time.perf_counter()
  result = jaxcl.fit(jaxcl.models.MLP(10, drop_rate=0.0), strategy,
                     optax.sgd(0.05), bench, batch_size=32,
                     eval_before_training=False, **kwargs)
  wall = time.perf_counter() - start
  one = result.runs[0] if hasattr(result, "runs") else result
  steps = int(jax.device_get(one.state.step))
  return {"compile_s": result.timings["compile_s"],
          "train_ms_per_step": 1e3 * result.timings["train_s"] / steps,
          "eval_s": result.timings["eval_s"], "wall_s": wall,
          "host_mb": one.metrics["peak_host_memory_mb"]}


def table(title: str, label: str, rows: list[tuple[object, dict]]) -> None:
  print(f"\n{title}")
  print(f"{label:>14}{'compile s':>11}{'train ms/step':>15}{'eval s':>9}"
        f"{'wall s':>9}{'host MB':>9}")
  for value, r in rows:
    print(f"{value!s:>14}{r['compile_s']:>11.2f}{r['train_ms_per_step']:>15.3f}"
          f"{r['eval_s']:>9.2f}{r['wall_s']:>9.2f}{r['host_mb']:>9.0f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default="streams,buffer,seeds")
  args = parser.parse_args()
  parts = args.only.split(",")
  bench = split_mnist(n_experiences=5, seed=0)
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
  if "streams" in parts:
    rows = []
    for size in (800, 80, 8):  # 5, 50 and 500 experiences.
      online = split_online(bench, size, seed=0) if size < 800 else bench
      rows.append((len(online.train_stream),
                   run(jaxcl.strategies.replay(mem_size=200), online)))
    table("stream length (replay 200; online splits of the same 4,000 digits)",
          "experiences", rows)
  if "buffer" in parts:
    rows = [(mem, run(jaxcl.strategies.replay(mem_size=mem), bench))
            for mem in (200, 2000, 20000)]
    table("replay buffer capacity (5 experiences)", "mem_size", rows)
  if "seeds" in parts:
    rows = [(n, run(jaxcl.strategies.naive(), bench, seeds=list(range(n))))
            for n in (1, 4, 16)]
    table("vmapped seeds (naive, 5 experiences; ms per step of all seeds)",
          "seeds", rows)


if __name__ == "__main__":
  main()
