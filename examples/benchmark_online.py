"""Online SplitMNIST: 400 mini-experiences of 10 samples with replay(200).

The setting of Avalanche's slowest case (its loaders are rebuilt for every
mini-experience). Prints fit's timings and the final metrics.

Usage:
  python examples/benchmark_online.py
"""

import time, optax, jaxcl
from jaxcl.benchmarks import split_mnist, split_online
t0 = time.perf_counter()
bench = split_online(split_mnist(n_experiences=5, seed=0), 10, seed=0)
print("experiences", len(bench.train_stream))
model = jaxcl.models.MLP(10)
strategy = jaxcl.strategies.replay(mem_size=200)
r = jaxcl.fit(model, strategy, optax.sgd(0.1), bench, epochs=1, batch_size=10, seed=0)
print(r.timings, "stream acc", r.metrics["stream_accuracy"], "forgetting", r.metrics["forgetting"])
print("process-level wall", time.perf_counter() - t0)
