"""A long online stream in constant memory: RSS per experience, one compile.

1,000 online mini-experiences of 4 samples (bundled SplitMNIST's 4,000
training digits) with replay(200). A writer records the process's resident
memory (and the device's memory in use, where JAX reports it) after every
experience; the script prints them at the start, middle and end, and the
number of compilations of the training step.

Usage:
  python examples/benchmark_load.py [--experience-size 4]
"""

import argparse

import jax
import optax

import jaxcl
from jaxcl.benchmarks import split_mnist, split_online


def rss_mb() -> float:
  """Current resident set size of this process (Linux /proc)."""
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * 4096 / 2**20


def device_mb() -> float | None:
  stats = jax.devices()[0].memory_stats()
  return None if not stats else stats.get("bytes_in_use", 0) / 2**20


class MemoryProbe(jaxcl.loggers.MetricWriter):
  """A writer that samples memory whenever an experience's metrics arrive."""

  def __init__(self):
    self.samples = []

  def write_scalars(self, step, scalars):
    if any(name.startswith("eval/") for name in scalars):
      self.samples.append((step, rss_mb(), device_mb()))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--experience-size", type=int, default=4)
  args = parser.parse_args()
  bench = split_online(split_mnist(n_experiences=5, seed=0),
                       args.experience_size, seed=0)
  traces = []

  def counted_penalty(ctx, params, cl_state, batch, logits):
    traces.append(1)  # Runs once per trace of the training step.
    return replay.penalty(ctx, params, cl_state, batch, logits)

  replay = jaxcl.strategies.replay(mem_size=200)
  probe = MemoryProbe()
  # eval_every=1: the test stream after every mini-experience (an online
  # stream is otherwise evaluated at the end of each original experience),
  # so that the probe samples memory after every one.
  result = jaxcl.fit(jaxcl.models.MLP(10), replay._replace(penalty=counted_penalty),
                     optax.sgd(0.1), bench, batch_size=args.experience_size,
                     writer=probe, eval_every=1)
  n = len(probe.samples)
  print(f"{len(bench.train_stream)} mini-experiences, training step traced "
        f"{len(traces)} time(s); timings: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items()))
  for label, i in (("first", 0), ("middle", n // 2), ("last", n - 1)):
    step, rss, dev = probe.samples[i]
    print(f"{label:>6} (experience {step}): host RSS {rss:.1f} MB, device "
          f"{'n/a' if dev is None else f'{dev:.1f} MB'}")
  print(f"stream accuracy {result.metrics['stream_accuracy']:.4f}")


if __name__ == "__main__":
  main()
