"""Online SplitMNIST: 400 mini-experiences of 10 samples with replay(200).

The setting where Avalanche is slowest (it rebuilds datasets and loaders for
every mini-experience). Prints fit's timings and the final metrics. With
--compilation-cache DIR, programs are stored in (or, on a later run, loaded
from) JAX's persistent compilation cache in DIR.

Usage:
  python examples/benchmark_online.py [--experience-size 10] [--mem-size 200]
      [--compilation-cache DIR]
"""

import argparse
import time

import optax

import jaxcl
from jaxcl.benchmarks import split_mnist, split_online


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--experience-size", type=int, default=10)
  parser.add_argument("--mem-size", type=int, default=200)
  parser.add_argument("--compilation-cache", default="",
                      help="persistent compilation cache folder (default: none)")
  args = parser.parse_args()
  jaxcl.enable_compilation_cache(args.compilation_cache)
  start = time.perf_counter()
  bench = split_online(split_mnist(n_experiences=5, seed=0),
                       args.experience_size, seed=0)
  result = jaxcl.fit(jaxcl.models.MLP(10),
                     jaxcl.strategies.replay(mem_size=args.mem_size),
                     optax.sgd(0.1), bench, epochs=1,
                     batch_size=args.experience_size, seed=0)
  print(f"{len(bench.train_stream)} mini-experiences; timings: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items()))
  print(f"stream accuracy {result.metrics['stream_accuracy']:.4f}, "
        f"forgetting {result.metrics['forgetting']:.4f}; wall "
        f"{time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
  main()
