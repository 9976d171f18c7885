"""jaxcl: continual learning in JAX — Avalanche's benchmarks, strategies and metrics as pure, jit-compiled functions.

Example:
  >>> import jaxcl, optax
  >>> bench = jaxcl.benchmarks.split_mnist(n_experiences=5, seed=0)  # doctest: +SKIP
  >>> result = jaxcl.fit(jaxcl.models.MLP(num_classes=bench.n_classes),
  ...                    jaxcl.strategies.naive(), optax.sgd(0.01), bench)  # doctest: +SKIP
"""

import importlib

__all__ = [
    "EarlyStopping",
    "MultiResult",
    "PeriodicEval",
    "Result",
    "TrainState",
    "benchmarks",
    "enable_compilation_cache",
    "evaluation",
    "fit",
    "loggers",
    "models",
    "strategies",
    "sweep",
    "training",
]

_SUBMODULES = ("benchmarks", "evaluation", "loggers", "models", "strategies",
               "training")
_TRAINING_NAMES = ("EarlyStopping", "MultiResult", "PeriodicEval", "Result",
                   "TrainState", "fit", "sweep")


def __getattr__(name: str):
  # Submodules load on first use, so that `import jaxcl` (and processes that
  # need only `jaxcl.loggers` or `jaxcl.cli`) do not pay for JAX and Flax.
  if name in _SUBMODULES:
    return importlib.import_module(f"jaxcl.{name}")
  if name == "enable_compilation_cache":
    return importlib.import_module("jaxcl.compilation").enable_compilation_cache
  if name in _TRAINING_NAMES:
    return getattr(importlib.import_module("jaxcl.training"), name)
  raise AttributeError(f"module 'jaxcl' has no attribute {name!r}")


def __dir__():
  return sorted(__all__)

__version__ = "0.1.0"
