"""jaxcl: continual learning in JAX — Avalanche's benchmarks, strategies and metrics as pure, jit-compiled functions.

Example:
  >>> import jaxcl, optax
  >>> bench = jaxcl.benchmarks.split_mnist(n_experiences=5, seed=0)  # doctest: +SKIP
  >>> result = jaxcl.fit(jaxcl.models.MLP(num_classes=bench.n_classes),
  ...                    jaxcl.strategies.naive(), optax.sgd(0.01), bench)  # doctest: +SKIP
"""

from jaxcl import benchmarks, evaluation, models, strategies, training
from jaxcl.training import MultiResult, Result, TrainState, fit, sweep

__all__ = [
    "MultiResult",
    "Result",
    "TrainState",
    "benchmarks",
    "evaluation",
    "fit",
    "sweep",
    "models",
    "strategies",
    "training",
]

__version__ = "0.1.0"
