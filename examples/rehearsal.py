"""Rehearsal strategies on class-incremental SplitMNIST: accuracy, forgetting, time.

Setting: the bundled SplitMNIST (5 experiences of 2 digits, 4,000 train and
1,000 test images), Avalanche's SimpleMLP (784-512-10, dropout 0.5), SGD with
learning rate 0.1, batch 32, 3 epochs per experience (GDumb: 30 epochs on its
memory, which it retrains from scratch), every memory holding 200 samples.
Each strategy runs for seeds 0, 1 and 2 (the seed also draws the class
order); the table shows the final pooled stream accuracy and stream
forgetting (mean ± std over seeds) and the wall time of one run (training
alone, and the whole fit including compilation).

GEM, A-GEM and iCaRL are included when they are registered (memory of 40
patterns per experience for GEM/A-GEM, 200 exemplars for iCaRL).

Usage:
  python examples/rehearsal.py [--seeds 3] [--epochs 3] [--strategies naive,replay]
"""

import argparse
import time

import numpy as np
import optax

import jaxcl
from jaxcl.strategies import REGISTRY, from_spec

MEMORY = 200
# Hyperparameters of each strategy, by registry name; sizes give every
# rehearsal method the same 200-sample memory.
STRATEGIES = {
    "naive": {},
    "replay": {"mem_size": MEMORY},
    "der": {"mem_size": MEMORY, "alpha": 0.1, "beta": 0.5},
    "er_ace": {"mem_size": MEMORY},
    "mir": {"mem_size": MEMORY, "mir_lr": 0.1},
    "gdumb": {"mem_size": MEMORY},
    "gem": {"patterns_per_exp": MEMORY // 5},
    "agem": {"patterns_per_exp": MEMORY // 5},
    "icarl": {"memory_size": MEMORY},
    "cumulative": {},
}
# GDumb trains only on its memory: more passes over far fewer samples.
EPOCHS_FACTOR = {"gdumb": 10}


def run(name: str, seed: int, epochs: int, lr: float) -> dict:
  """One fit of strategy ``name`` on SplitMNIST; returns its final metrics."""
  benchmark = jaxcl.benchmarks.split_mnist(n_experiences=5, seed=seed)
  start = time.perf_counter()
  result = jaxcl.fit(jaxcl.models.MLP(num_classes=10),
                     from_spec(name, **STRATEGIES[name]), optax.sgd(lr),
                     benchmark, epochs=epochs * EPOCHS_FACTOR.get(name, 1),
                     batch_size=32, seed=seed)
  return {"accuracy": result.metrics["stream_accuracy"],
          "forgetting": result.metrics["forgetting"],
          "train_s": result.timings["train_s"],
          "wall_s": time.perf_counter() - start}


def mean_std(values, fmt: str) -> str:
  """``"mean ± std"`` of ``values`` with the format spec ``fmt``."""
  values = np.asarray(values)
  return f"{values.mean():{fmt}} ± {values.std():{fmt}}"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--lr", type=float, default=0.1)
  parser.add_argument("--strategies", default=",".join(STRATEGIES),
                      help="comma-separated registry names")
  args = parser.parse_args()
  names = [n for n in args.strategies.split(",") if n in REGISTRY]
  skipped = sorted(set(args.strategies.split(",")) - set(names))
  if skipped:
    print(f"not registered, skipped: {', '.join(skipped)}")

  print("| strategy | stream accuracy | forgetting | train s | fit s |\n"
        "|---|---|---|---|---|")
  for name in names:
    runs = [run(name, seed, args.epochs, args.lr) for seed in range(args.seeds)]
    cells = [mean_std([r[key] for r in runs], fmt) for key, fmt in (
        ("accuracy", ".3f"), ("forgetting", ".3f"), ("train_s", ".1f"),
        ("wall_s", ".1f"))]
    print(f"| {name} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
  main()
