"""The issue's comparisons with Avalanche 0.6, as whole `jaxcl run` processes.

Runs each setting as a fresh process with an empty persistent compilation
cache ("cold"), then --repeats more times with that cache ("warm"), and
prints fit's timings (from results.json), the process's wall time and the
ratios to Avalanche's numbers. Avalanche's numbers are not measured here:
they are those of issue 7, taken with avalanche-lib 0.6 (PyTorch CPU, 2
threads) on the same 2-core machine class (see docs/performance.md).

Settings:
  naive   PermutedMNIST from the 5,000 bundled digits, 5 experiences, MLP 512
          with dropout 0.5, SGD 0.1, batch 32, 2 epochs (1,250 steps).
  ewc     the same with EWC.
  online  online SplitMNIST: 400 mini-experiences of 10 digits, replay with
          200 slots, SGD 0.1, batch 10.

Usage:
  python examples/benchmark_avalanche.py [--settings naive,ewc,online]
      [--repeats 2]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_PERMUTED = ["--benchmark", "permuted_mnist", "--n-experiences", "5",
             "--epochs", "2", "--batch-size", "32", "--lr", "0.1"]
SETTINGS = {
    "naive": _PERMUTED,
    "ewc": [*_PERMUTED, "--strategy", "ewc"],
    "online": ["--benchmark", "split_mnist", "--online-size", "10",
               "--batch-size", "10", "--strategy", "replay", "--mem-size",
               "200", "--lr", "0.1"],
}
# Avalanche 0.6 on the 2-core machine, from issue 7: seconds of training and
# of evaluation, and of the whole process (a range over runs).
AVALANCHE = {
    "naive": {"train_s": 3.9, "eval_s": 1.0, "process_s": (10.0, 18.0)},
    "ewc": {"train_s": 9.5, "eval_s": 1.0, "process_s": None},
    "online": {"train_s": 42.0, "eval_s": None, "process_s": None},
}


def run_process(args: list[str], logdir: Path, cache: Path) -> dict:
  """Runs `jaxcl run` once; returns fit's timings and the process's wall time."""
  start = time.perf_counter()
  done = subprocess.run([sys.executable, "-m", "jaxcl.cli", "run", *args,
                         "--logdir", str(logdir), "--quiet", "--no-progress",
                         "--compilation-cache", str(cache)],
                        capture_output=True, text=True)
  wall = time.perf_counter() - start
  if done.returncode != 0:
    sys.exit(f"jaxcl run {' '.join(args)} failed:\n{done.stderr}")
  results = json.loads((logdir / "results.json").read_text())
  return {**results["timings"], "wall_s": wall,
          "stream_accuracy": results["metrics"]["stream_accuracy"]}


def ratios(name: str, run: dict) -> str:
  """This run against Avalanche's numbers, as far as they are known."""
  ref = AVALANCHE[name]
  hot = run["train_s"] + run["eval_s"]
  if ref["eval_s"] is None:  # Online: Avalanche's training time alone.
    return (f"{ref['train_s'] / run['total_s']:.1f}x end to end, "
            f"{ref['train_s'] / hot:.0f}x without compilation")
  avalanche_hot = ref["train_s"] + ref["eval_s"]
  parts = [f"train+eval {avalanche_hot / hot:.1f}x",
           f"with compilation {avalanche_hot / run['total_s']:.1f}x",
           f"eval {ref['eval_s'] / run['eval_s']:.1f}x"]
  if ref["process_s"] is not None:
    low, high = ref["process_s"]
    parts.append(f"process {low / run['wall_s']:.1f}-{high / run['wall_s']:.1f}x")
  return ", ".join(parts)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--settings", default="naive,ewc,online",
                      help=f"comma-separated, from {', '.join(SETTINGS)}")
  parser.add_argument("--repeats", type=int, default=2,
                      help="warm-cache runs per setting (the best is shown)")
  args = parser.parse_args()
  names = args.settings.split(",")
  unknown = sorted(set(names) - set(SETTINGS))
  if unknown:
    parser.error(f"--settings {args.settings!r} names unknown settings "
                 f"{unknown}; expected some of {sorted(SETTINGS)}.")
  if args.repeats < 1:
    parser.error(f"--repeats must be a positive integer, got {args.repeats}.")
  print(f"{'setting':8} {'cache':5} {'compile':>8} {'train':>7} {'eval':>6} "
        f"{'fit':>6} {'process':>8}  accuracy  vs Avalanche 0.6")
  with tempfile.TemporaryDirectory() as tmp:
    for name in names:
      cache = Path(tmp) / f"cache_{name}"
      cold = run_process(SETTINGS[name], Path(tmp) / f"{name}_cold", cache)
      warm = min((run_process(SETTINGS[name], Path(tmp) / f"{name}_warm{i}",
                              cache) for i in range(args.repeats)),
                 key=lambda r: r["wall_s"])
      for label, run in (("cold", cold), ("warm", warm)):
        print(f"{name:8} {label:5} {run['compile_s']:7.2f}s "
              f"{run['train_s']:6.2f}s {run['eval_s']:5.2f}s "
              f"{run['total_s']:5.2f}s {run['wall_s']:7.2f}s  "
              f"{run['stream_accuracy']:8.4f}  {ratios(name, run)}")


if __name__ == "__main__":
  main()
