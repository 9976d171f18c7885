"""The classic benchmark catalogue, by Avalanche's names.

Each benchmark reads the real tfds dataset from ``data_dir`` when one is given
and otherwise falls back to the real data bundled in ``benchmarks_data/``
(no network needed).

Example:
  >>> bench = split_mnist(n_experiences=5, seed=0)  # doctest: +SKIP
  >>> bench.n_classes, len(bench.train_stream)      # doctest: +SKIP
  (10, 5)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from jaxcl.benchmarks import generators
from jaxcl.benchmarks.scenario import Benchmark, normalizer

__all__ = ["MNIST_MEAN", "MNIST_STD", "split_mnist"]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def _mnist_splits(data_dir: str | os.PathLike | None):
  from jaxcl.benchmarks import sources  # Lazy: tfds import is not free.
  if data_dir is None:
    return (sources.load_bundled("mnist_bundled", "train"),
            sources.load_bundled("mnist_bundled", "test"))
  return (sources.load_tfds_split("mnist", "train", data_dir=data_dir),
          sources.load_tfds_split("mnist", "test", data_dir=data_dir))


def split_mnist(
    n_experiences: int = 5,
    *,
    return_task_id: bool = False,
    seed: int = 0,
    fixed_class_order: Sequence[int] | None = None,
    data_dir: str | os.PathLike | None = None,
) -> Benchmark:
  """SplitMNIST: the ten digits split into ``n_experiences`` groups of classes.

  Args:
    n_experiences: Number of experiences (a divisor of 10).
    return_task_id: Task label ``i`` for experience ``i`` (task-incremental).
    seed: Seed of the class order.
    fixed_class_order: Explicit class order instead of a seeded permutation.
    data_dir: A tfds data directory holding the prepared ``mnist`` dataset
      (70,000 digits). Without it, the 5,000 real MNIST digits bundled with
      jaxcl are used (4,000 train / 1,000 test).

  Returns:
    A class-incremental (or task-incremental) :class:`Benchmark`, inputs
    normalised with MNIST's mean 0.1307 and std 0.3081 on the device.
  """
  train, test = _mnist_splits(data_dir)
  return generators.class_incremental(
      train, test, n_experiences, fixed_class_order=fixed_class_order,
      seed=seed, return_task_id=return_task_id,
      preprocess=normalizer(MNIST_MEAN, MNIST_STD), name="split_mnist")
