"""Several seeds with early stopping, as one vmapped program.

Bundled SplitMNIST (5 experiences) with a 20 % validation split, an MLP
without dropout, SGD 0.05, batch 32, 10 epochs and early stopping on the
validation accuracy, checked every epoch (patience 2) or every 10 steps
(patience 40). Prints, per unit and repeat, the training time, the mean
epochs trained and the mean final stream accuracy over the seeds, and the
machine's matmul peak for scale.

Usage:
  python examples/benchmark_early_stopping.py [--seeds 4] [--repeats 2]
"""

import argparse

import numpy as np
import optax

import jaxcl
from jaxcl import EarlyStopping, PeriodicEval
from jaxcl.evaluation import system


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--hidden-size", type=int, default=256)
  args = parser.parse_args()
  bench = jaxcl.benchmarks.with_validation(
      jaxcl.benchmarks.split_mnist(n_experiences=5, seed=0), 0.2, seed=1)
  model = jaxcl.models.MLP(10, hidden_size=args.hidden_size, drop_rate=0.0)
  print(f"matmul peak {system.matmul_peak_flops() / 1e9:.1f} GFLOP/s")
  for unit, every, patience in (("epoch", 1, 2), ("step", 10, 40)):
    for repeat in range(args.repeats):
      result = jaxcl.fit(
          model, jaxcl.strategies.naive(), optax.sgd(0.05), bench, epochs=10,
          batch_size=32, seeds=list(range(args.seeds)),
          early_stopping=EarlyStopping(patience=patience),
          periodic_eval=PeriodicEval(every=every, unit=unit))
      epochs = np.mean([h["epochs_trained"] for run in result.runs
                        for h in run.history])
      print(f"by {unit}, repeat {repeat}: train {result.timings['train_s']:.2f}"
            f" s, compile {result.timings['compile_s']:.2f} s, epochs trained "
            f"{epochs:.1f}, stream accuracy "
            f"{result.metrics['stream_accuracy'][0]:.4f}", flush=True)


if __name__ == "__main__":
  main()
