"""Scenario generators: turn a labelled dataset into a stream of experiences.

Example:
  >>> import numpy as np
  >>> x = np.zeros((40, 2), np.float32); y = np.repeat(np.arange(4), 10)
  >>> bench = class_incremental((x, y), (x, y), n_experiences=2, seed=0)
  >>> [len(e) for e in bench.train_stream]
  [20, 20]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxcl import _validation
from jaxcl.benchmarks.scenario import Benchmark, Experience, Preprocess, Stream, _as_float

__all__ = ["class_incremental", "as_arrays"]


def as_arrays(name: str, data: Any) -> tuple[np.ndarray, np.ndarray]:
  """Validates ``(x, y)`` arrays or reads a tfds random-access data source.

  Args:
    name: The argument's name, for error messages.
    data: A pair ``(x, y)`` of arrays (``ArraySplit`` is one), or a tfds
      data source (``tfds.data_source(...)``) of ``{"image", "label"}`` records.

  Returns:
    ``x`` as given and ``y`` as int32, after checking lengths, label dtype and
    finiteness.
  """
  if isinstance(data, tuple) and len(data) == 2:
    x, y = np.asarray(data[0]), np.asarray(data[1])
  elif hasattr(data, "__getitems__") or hasattr(data, "__getitem__"):
    from jaxcl.benchmarks import sources  # Lazy: tfds import is not free.
    x, y = sources.arrays_from_data_source(data)
  else:
    raise TypeError(f"{name} must be an (x, y) pair of arrays or a tfds data "
                    f"source, got {type(data).__name__}.")
  if len(x) == 0:
    raise ValueError(f"{name} is empty; expected at least one sample.")
  if len(x) != len(y):
    raise ValueError(f"{name}: x has {len(x)} samples but y has {len(y)}; "
                     "expected the same number.")
  if not np.issubdtype(y.dtype, np.integer):
    raise TypeError(f"{name}: labels must be integers, got dtype {y.dtype}.")
  if y.ndim != 1:
    raise ValueError(f"{name}: labels must be a 1-D array, got shape {y.shape}.")
  if y.min() < 0:
    raise ValueError(f"{name}: labels must be >= 0, got {int(y.min())}.")
  _validation.check_finite(f"{name} inputs", x)
  return x, y.astype(np.int32)


def _class_order(classes: np.ndarray, fixed_class_order: Sequence[int] | None,
                 seed: int) -> tuple[int, ...]:
  if fixed_class_order is None:
    return tuple(int(c) for c in np.random.default_rng(seed).permutation(classes))
  order = tuple(int(c) for c in fixed_class_order)
  if sorted(order) != sorted(int(c) for c in classes):
    raise ValueError(
        f"fixed_class_order must be a permutation of the classes "
        f"{sorted(int(c) for c in classes)}, got {list(fixed_class_order)}.")
  return order


def _split_stream(origin: str, x: np.ndarray, y: np.ndarray,
                  groups: Sequence[tuple[int, ...]],
                  return_task_id: bool) -> Stream:
  experiences = []
  for i, group in enumerate(groups):
    idx = np.flatnonzero(np.isin(y, group))
    if idx.size == 0:
      raise ValueError(f"The {origin} data has no sample of classes "
                       f"{list(group)} (experience {i}); every experience "
                       "needs at least one sample.")
    previous = tuple(sorted(c for g in groups[:i] for c in g))
    future = tuple(sorted(c for g in groups[i + 1:] for c in g))
    experiences.append(Experience(
        x=x[idx], y=y[idx],
        task=np.full(idx.size, i if return_task_id else 0, np.int32),
        index=i, classes=tuple(sorted(group)), origin=origin,
        previous_classes=previous, future_classes=future))
  return Stream(origin, experiences)


def class_incremental(
    train: Any,
    test: Any,
    n_experiences: int,
    *,
    fixed_class_order: Sequence[int] | None = None,
    seed: int = 0,
    return_task_id: bool = False,
    preprocess: Preprocess = _as_float,
    name: str = "class_incremental",
) -> Benchmark:
  """New-classes (NC) scenario: each experience brings a disjoint set of classes.

  Like Avalanche's ``nc_benchmark``: the classes are ordered (``fixed_class_order``
  or a permutation drawn from ``seed``) and split evenly over ``n_experiences``.
  Labels keep their original values; the model's head covers all classes.

  Args:
    train: Training data, ``(x, y)`` arrays or a tfds data source.
    test: Test data, same kinds as ``train``; its labels must be train classes.
    n_experiences: Number of experiences; must divide the number of classes.
    fixed_class_order: Explicit class order, a permutation of the classes.
    seed: Seed of the class order when ``fixed_class_order`` is None.
    return_task_id: If True, experience ``i`` carries task label ``i``
      (task-incremental); otherwise every sample has task label 0.
    preprocess: On-device preprocessing of raw inputs (e.g. normalisation).
    name: Name of the benchmark for logs.

  Returns:
    A :class:`Benchmark` with ``n_experiences`` train and test experiences.

  Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((60, 3)).astype(np.float32)
    >>> y = np.repeat(np.arange(6), 10)
    >>> b = class_incremental((x, y), (x, y), 3, fixed_class_order=range(6))
    >>> [e.classes for e in b.train_stream]
    [(0, 1), (2, 3), (4, 5)]
  """
  n_experiences = _validation.check_positive_int("n_experiences", n_experiences)
  x_train, y_train = as_arrays("train", train)
  x_test, y_test = as_arrays("test", test)
  if x_train.shape[1:] != x_test.shape[1:]:
    raise ValueError(f"train inputs have sample shape {x_train.shape[1:]} but "
                     f"test inputs have {x_test.shape[1:]}; expected the same.")
  classes = np.unique(y_train)
  unknown = np.setdiff1d(np.unique(y_test), classes)
  if unknown.size:
    raise ValueError(f"test labels {unknown.tolist()} are out of range: they "
                     f"are not among the train classes {classes.tolist()}.")
  if len(classes) % n_experiences:
    raise ValueError(
        f"n_experiences={n_experiences} does not divide the {len(classes)} "
        f"classes; expected a divisor of {len(classes)} (e.g. "
        f"{[d for d in range(1, len(classes) + 1) if len(classes) % d == 0]}).")
  order = _class_order(classes, fixed_class_order, seed)
  per_exp = len(order) // n_experiences
  groups = [order[i * per_exp:(i + 1) * per_exp] for i in range(n_experiences)]
  return Benchmark(
      train_stream=_split_stream("train", x_train, y_train, groups, return_task_id),
      test_stream=_split_stream("test", x_test, y_test, groups, return_task_id),
      n_classes=int(classes.max()) + 1,
      class_order=order,
      input_shape=tuple(x_train.shape[1:]),
      scenario="task_incremental" if return_task_id else "class_incremental",
      name=name,
      preprocess=preprocess,
      n_tasks=n_experiences if return_task_id else 1,
  )
