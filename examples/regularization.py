"""Regularisation against forgetting: naive vs EWC, SI, MAS, RWalk, LwF, LFL.

Runs plain fine-tuning and every regularisation strategy on two settings
built from the MNIST digits bundled with jaxcl (4,000 train / 1,000 test):

* ``split_mnist_task``: task-incremental SplitMNIST (5 experiences of 2
  digits, task label = experience). The MLP's shared 10-unit head is
  restricted to each sample's task (``fit`` does this when a stream has
  several task labels), which is what a multi-head classifier computes.
* ``permuted_mnist``: 5 experiences of all ten digits, each under its own
  pixel permutation, one shared head (domain-incremental).
* ``split_mnist_class`` (opt-in): class-incremental SplitMNIST, where
  regularisation alone is known not to help.

Every strategy runs its seeds as one vmapped program (``fit(seeds=...)``) and
the script prints the final stream accuracy and forgetting (mean ± std over
seeds) and the wall time of the whole multi-seed run.

Usage:
  python examples/regularization.py
  python examples/regularization.py --settings permuted_mnist --strategies naive ewc
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import optax

import jaxcl
from jaxcl import strategies as S

# Hyperparameters tuned on seed 0 (see docs/strategies_regularization.md).
SETTINGS: dict[str, dict] = {
    "split_mnist_task": {
        "benchmark": lambda: jaxcl.benchmarks.split_mnist(
            5, return_task_id=True, seed=0),
        "epochs": 5,
        "strategies": {
            "naive": S.naive,
            "ewc": lambda: S.ewc(ewc_lambda=1e5),
            "si": lambda: S.si(si_lambda=1e4, eps=0.1),
            "mas": lambda: S.mas(lambda_reg=1.0, alpha=0.5),
            "rwalk": lambda: S.rwalk(ewc_lambda=10.0, ewc_alpha=0.9,
                                     delta_t=10),
            "lwf": lambda: S.lwf(alpha=0.5, temperature=2.0),
            "lfl": lambda: S.lfl(lambda_e=1.0),
            "ewc+lwf": lambda: S.chain(S.ewc(ewc_lambda=1e5),
                                       S.lwf(alpha=0.5)),
        },
    },
    "permuted_mnist": {
        "benchmark": lambda: jaxcl.benchmarks.permuted_mnist(5, seed=0),
        "epochs": 2,
        "strategies": {
            "naive": S.naive,
            "ewc": lambda: S.ewc(ewc_lambda=1e3),
            "si": lambda: S.si(si_lambda=100.0, eps=0.1),
            "mas": lambda: S.mas(lambda_reg=1.0, alpha=0.5),
            "rwalk": lambda: S.rwalk(ewc_lambda=1.0, ewc_alpha=0.9,
                                     delta_t=10),
            "lwf": lambda: S.lwf(alpha=1.0, temperature=2.0),
            "lfl": lambda: S.lfl(lambda_e=1.0),
            "ewc+lwf": lambda: S.chain(S.ewc(ewc_lambda=1e3),
                                       S.lwf(alpha=1.0)),
        },
    },
    "split_mnist_class": {
        "benchmark": lambda: jaxcl.benchmarks.split_mnist(5, seed=0),
        "epochs": 5,
        "strategies": {
            "naive": S.naive,
            "ewc": lambda: S.ewc(ewc_lambda=1e5),
            "si": lambda: S.si(si_lambda=1e4, eps=0.1),
            "mas": lambda: S.mas(lambda_reg=1.0, alpha=0.5),
            "rwalk": lambda: S.rwalk(ewc_lambda=10.0),
            "lwf": lambda: S.lwf(alpha=1.0, temperature=2.0),
            "lfl": lambda: S.lfl(lambda_e=1.0),
        },
    },
}
DEFAULT_SETTINGS = ("split_mnist_task", "permuted_mnist")


def run_setting(name: str, seeds: list[int], only: list[str] | None,
                batch_size: int = 64) -> list[dict]:
  """Runs the strategies of one setting; returns one row per strategy.

  Example:
    >>> rows = run_setting("permuted_mnist", [0], ["naive"])  # doctest: +SKIP
  """
  setting = SETTINGS[name]
  benchmark = setting["benchmark"]()
  model = jaxcl.models.MLP(benchmark.n_classes, hidden_size=256,
                           hidden_layers=2, drop_rate=0.0)
  factories: dict[str, Callable[[], S.Strategy]] = setting["strategies"]
  rows = []
  for strategy_name, factory in factories.items():
    if only and strategy_name not in only:
      continue
    start = time.perf_counter()
    result = jaxcl.fit(model, factory(), optax.adam(1e-3), benchmark,
                       epochs=setting["epochs"], batch_size=batch_size,
                       seeds=seeds)
    rows.append({"setting": name, "strategy": strategy_name,
                 "accuracy": result.metrics["stream_accuracy"],
                 "forgetting": result.metrics["forgetting"],
                 "wall_s": time.perf_counter() - start,
                 "train_s": result.timings["train_s"]})
    print(_format_row(rows[-1]), flush=True)
  return rows


def _format_row(row: dict) -> str:
  (acc, acc_std), (fgt, fgt_std) = row["accuracy"], row["forgetting"]
  return (f"| {row['setting']} | {row['strategy']} | {acc:.3f} ± {acc_std:.3f}"
          f" | {fgt:.3f} ± {fgt_std:.3f} | {row['wall_s']:.0f} "
          f"| {row['train_s']:.1f} |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS),
                      choices=sorted(SETTINGS))
  parser.add_argument("--strategies", nargs="+", default=None,
                      help="subset of strategy names to run")
  parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  args = parser.parse_args()
  print("| setting | strategy | stream accuracy | forgetting | wall s "
        "(all seeds) | train s |")
  print("|---|---|---|---|---|---|")
  for name in args.settings:
    run_setting(name, args.seeds, args.strategies)


if __name__ == "__main__":
  main()
