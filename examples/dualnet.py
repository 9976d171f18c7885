"""DualNet against naive and replay with the same small DualNet network.

Bundled class-incremental SplitMNIST (5 experiences of 2 digits), one epoch,
batch 10 (Avalanche's DualNet example), SGD 0.1, seeds 0, 1, 2 (each seed
also draws the class order), ``DualNet(nf=8, blocks=(1, 1, 1, 1))``; replay
and DualNet hold 200 samples and draw 10 per step. Prints one markdown row
per strategy: final pooled stream accuracy, stream forgetting, training
time of one run and the whole fit (mean ± std over the seeds).

Usage:
  python examples/dualnet.py dual_net naive replay
"""

import argparse
import time

import numpy as np
import optax

import jaxcl
from jaxcl.models import DualNet
from jaxcl.strategies import from_spec

SPECS = {"naive": {}, "replay": {"mem_size": 200, "batch_size_mem": 10},
         "dual_net": {"mem_size": 200, "batch_size_mem": 10}}


def run(name: str, seed: int) -> tuple[float, float, float, float]:
  """One fit; returns accuracy, forgetting, training and whole-fit seconds."""
  bench = jaxcl.benchmarks.split_mnist(n_experiences=5, seed=seed)
  start = time.perf_counter()
  result = jaxcl.fit(DualNet(num_classes=10, nf=8, blocks=(1, 1, 1, 1)),
                     from_spec(name, **SPECS[name]), optax.sgd(0.1), bench,
                     epochs=1, batch_size=10, seed=seed)
  return (result.metrics["stream_accuracy"], result.metrics["forgetting"],
          result.timings["train_s"], time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("strategies", nargs="*", metavar="STRATEGY",
                      help=f"any of {', '.join(sorted(SPECS))} (default: "
                      "all three)")
  names = parser.parse_args().strategies or sorted(SPECS)
  unknown = sorted(set(names) - set(SPECS))
  if unknown:
    parser.error(f"unknown strategies {unknown}; expected any of "
                 f"{sorted(SPECS)}.")
  for name in names:
    rows = np.asarray([run(name, seed) for seed in (0, 1, 2)])
    cells = [f"{rows[:, i].mean():.{d}f} ± {rows[:, i].std():.{d}f}"
             for i, d in ((0, 3), (1, 3), (2, 1), (3, 1))]
    print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
  main()
