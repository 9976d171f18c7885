"""The issue's comparisons with Avalanche 0.6, as whole `jaxcl run` processes.

Runs each setting as a fresh process with an empty persistent compilation
cache ("cold"), then --repeats more times with that cache ("warm"), and
prints fit's timings (from results.json), the process's wall time and the
ratios to Avalanche's.

Avalanche's numbers are measured in the same run when --avalanche-python
names the Python of a virtual environment with avalanche-lib 0.6 (see
examples/avalanche_reference.py): the bundled digits are exported to an
.npz, and examples/avalanche_reference.py runs each setting there
(--repeats times, the fastest process is kept). Without it, the ratios are
to issue 7's numbers, taken with avalanche-lib 0.6 (PyTorch CPU, 2 threads)
on the same 2-core machine class.

Settings:
  naive   PermutedMNIST from the 5,000 bundled digits, 5 experiences, MLP 512
          with dropout 0.5, SGD 0.1, batch 32, 2 epochs (1,250 steps).
  ewc     the same with EWC (lambda 1).
  online  online SplitMNIST: 400 mini-experiences of 10 digits, replay with
          200 slots, SGD 0.1, batch 10.

Usage:
  python examples/benchmark_avalanche.py [--settings naive,ewc,online]
      [--repeats 2] [--avalanche-python /tmp/ava/bin/python]
      [--avalanche-device cuda]
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
ISSUE_AVALANCHE = {
    "naive": {"train_s": 3.9, "eval_s": 1.0, "process_s": (10.0, 18.0)},
    "ewc": {"train_s": 9.5, "eval_s": 1.0, "process_s": None},
    "online": {"train_s": 42.0, "eval_s": None, "process_s": None},
}


def _timed(command: list[str]) -> tuple[str, float]:
  """Runs `command`; returns its standard output and its wall time."""
  start = time.perf_counter()
  done = subprocess.run(command, capture_output=True, text=True)
  wall = time.perf_counter() - start
  if done.returncode != 0:
    sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
  return done.stdout, wall


def run_jaxcl(args: list[str], logdir: Path, cache: Path) -> dict:
  """Runs `jaxcl run` once; returns fit's timings and the process's wall time."""
  _, wall = _timed([sys.executable, "-m", "jaxcl.cli", "run", *args,
                    "--logdir", str(logdir), "--quiet", "--no-progress",
                    "--compilation-cache", str(cache)])
  results = json.loads((logdir / "results.json").read_text())
  return {**results["timings"], "wall_s": wall,
          "stream_accuracy": results["metrics"]["stream_accuracy"]}


def export_digits(path: Path) -> None:
  """Writes the bundled MNIST digits as uint8 arrays for the Avalanche side."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxcl.benchmarks import sources  # pylint: disable=g-import-not-at-top
  splits = {split: sources.load_bundled("mnist_bundled", split)
            for split in ("train", "test")}
  np.savez(path, **{f"{split}_{field}": np.asarray(getattr(data, field))
                    for split, data in splits.items() for field in "xy"})


def run_avalanche(python: str, name: str, digits: Path, device: str) -> dict:
  """Runs examples/avalanche_reference.py once; its timings and wall time."""
  script = Path(__file__).with_name("avalanche_reference.py")
  stdout, wall = _timed([python, str(script), "--setting", name,
                         "--digits", str(digits), "--device", device])
  reference = json.loads(stdout.strip().splitlines()[-1])
  return {**reference, "process_s": (wall, wall)}


def ratios(run: dict, reference: dict) -> str:
  """This jaxcl run against an Avalanche reference (measured or the issue's)."""
  hot = run["train_s"] + run["eval_s"]
  if reference["eval_s"] is None:  # The issue's online number: training only.
    return (f"{reference['train_s'] / run['total_s']:.1f}x end to end, "
            f"{reference['train_s'] / hot:.0f}x without compilation")
  avalanche_hot = reference["train_s"] + reference["eval_s"]
  parts = [f"train {reference['train_s'] / run['train_s']:.1f}x",
           f"train+eval {avalanche_hot / hot:.1f}x",
           f"with compilation {avalanche_hot / run['total_s']:.1f}x",
           f"eval {reference['eval_s'] / run['eval_s']:.1f}x"]
  if reference["process_s"] is not None:
    low, high = reference["process_s"]
    ratio = (f"{low / run['wall_s']:.1f}x" if low == high else
             f"{low / run['wall_s']:.1f}-{high / run['wall_s']:.1f}x")
    parts.append(f"process {ratio}")
  return ", ".join(parts)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--settings", default="naive,ewc,online",
                      help=f"comma-separated, from {', '.join(SETTINGS)}")
  parser.add_argument("--repeats", type=int, default=2,
                      help="warm-cache runs per setting (the best is shown)")
  parser.add_argument("--avalanche-python", default=None,
                      help="Python of an environment with avalanche-lib 0.6: "
                      "measure Avalanche in this run instead of using the "
                      "issue's numbers")
  parser.add_argument("--avalanche-device", default="cpu",
                      help="PyTorch device for Avalanche (cpu, cuda); jaxcl "
                      "runs on JAX's default device")
  args = parser.parse_args()
  names = args.settings.split(",")
  unknown = sorted(set(names) - set(SETTINGS))
  if unknown:
    parser.error(f"--settings {args.settings!r} names unknown settings "
                 f"{unknown}; expected some of {sorted(SETTINGS)}.")
  if args.repeats < 1:
    parser.error(f"--repeats must be a positive integer, got {args.repeats}.")
  if args.avalanche_device != "cpu" and not args.avalanche_python:
    parser.error(f"--avalanche-device {args.avalanche_device!r} needs "
                 "--avalanche-python (the issue's numbers are CPU ones).")
  if args.avalanche_python and not Path(args.avalanche_python).is_file():
    parser.error(f"--avalanche-python {args.avalanche_python!r} is not a "
                 "file; expected the Python of an environment with "
                 "avalanche-lib 0.6.")
  print(f"{'setting':8} {'run':9} {'compile':>8} {'train':>7} {'eval':>6} "
        f"{'fit':>6} {'process':>8}  accuracy  jaxcl vs Avalanche 0.6")
  with tempfile.TemporaryDirectory() as tmp:
    digits = Path(tmp) / "digits.npz"
    if args.avalanche_python:
      export_digits(digits)
    for name in names:
      reference = ISSUE_AVALANCHE[name]
      if args.avalanche_python:
        reference = min((run_avalanche(args.avalanche_python, name, digits,
                                       args.avalanche_device)
                         for _ in range(args.repeats)),
                        key=lambda r: r["process_s"][0])
        print(f"{name:8} {'avalanche':9} {'':>8} "
              f"{reference['train_s']:6.2f}s {reference['eval_s']:5.2f}s "
              f"{'':>6} {reference['process_s'][0]:7.2f}s  "
              f"{reference['stream_accuracy']:8.4f}  "
              f"(imports {reference['imports_s']:.2f}s)")
      cache = Path(tmp) / f"cache_{name}"
      cold = run_jaxcl(SETTINGS[name], Path(tmp) / f"{name}_cold", cache)
      warm = min((run_jaxcl(SETTINGS[name], Path(tmp) / f"{name}_warm{i}",
                            cache) for i in range(args.repeats)),
                 key=lambda r: r["wall_s"])
      for label, run in (("cold", cold), ("warm", warm)):
        print(f"{name:8} {'jaxcl ' + label:9} {run['compile_s']:7.2f}s "
              f"{run['train_s']:6.2f}s {run['eval_s']:5.2f}s "
              f"{run['total_s']:5.2f}s {run['wall_s']:7.2f}s  "
              f"{run['stream_accuracy']:8.4f}  {ratios(run, reference)}")


if __name__ == "__main__":
  main()
