"""Scenario generators: turn labelled datasets into streams of experiences.

The generators follow Avalanche's scenarios and names:

* :func:`class_incremental` -- new classes (``nc_benchmark``);
* :func:`new_instances` -- new instances of the same classes (``ni_benchmark``);
* :func:`dataset_per_experience` -- one dataset per experience;
* :func:`permuted` and :func:`rotated` -- domain-incremental input transforms
  (``PermutedMNIST``, ``RotatedMNIST``);
* :func:`task_incremental` -- task label = experience index;
* :func:`split_online` -- fixed-size mini-experiences (``split_online_stream``);
* :func:`data_incremental` -- consecutive chunks irrespective of classes;
* :func:`with_validation` -- a validation stream held out from the train
  stream (``benchmark_with_validation_stream``).

Every random choice (class order, sample assignment, permutations, angles)
comes from ``numpy.random.default_rng(seed)``, so a seed fixes the benchmark
bit for bit. Every experience carries its class timeline (``classes``,
``previous_classes``, ``future_classes``).

Example:
  >>> import numpy as np
  >>> x = np.zeros((40, 2), np.float32); y = np.repeat(np.arange(4), 10)
  >>> bench = class_incremental((x, y), (x, y), n_experiences=2, seed=0)
  >>> [len(e) for e in bench.train_stream]
  [20, 20]
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxcl import _validation
from jaxcl.benchmarks.scenario import Augment, Benchmark, Experience, Preprocess, Stream, _as_float

__all__ = [
    "as_arrays",
    "class_incremental",
    "data_incremental",
    "dataset_per_experience",
    "new_instances",
    "permuted",
    "rotate_images",
    "rotated",
    "split_online",
    "task_incremental",
    "with_validation",
]

# One part of a stream before it becomes an Experience: (x, y, task).
_Part = tuple[np.ndarray, np.ndarray, np.ndarray]


def as_arrays(name: str, data: Any) -> tuple[np.ndarray, np.ndarray]:
  """Validates ``(x, y)`` arrays or reads a tfds random-access data source.

  Args:
    name: The argument's name, for error messages.
    data: A pair ``(x, y)`` of arrays (``ArraySplit`` is one), or a tfds
      data source (``tfds.data_source(...)``) of ``{"image", "label"}`` records.

  Returns:
    ``x`` as given and ``y`` as int32, after checking lengths, label dtype and
    finiteness.

  Example:
    >>> x, y = as_arrays("train", (np.zeros((2, 3)), np.array([0, 1])))
    >>> y.dtype
    dtype('int32')
  """
  # A list of two arrays is a pair too; a data source may be a list.
  if (isinstance(data, tuple) and len(data) == 2) or (
      isinstance(data, list) and len(data) == 2 and hasattr(data[0], "shape")):
    from jaxcl.benchmarks import sources  # Lazy: tfds import is not free.
    lazy = isinstance(data[0], sources.RecordArray)
    x, y = data[0] if lazy else np.asarray(data[0]), np.asarray(data[1])
  elif hasattr(data, "__getitems__") or hasattr(data, "__getitem__"):
    from jaxcl.benchmarks import sources  # Lazy: tfds import is not free.
    lazy = False
    x, y = sources.arrays_from_data_source(data)
  else:
    raise TypeError(f"{name} must be an (x, y) pair of arrays or a tfds data "
                    f"source, got {type(data).__name__}.")
  if len(x) == 0:
    raise ValueError(f"{name} is empty; expected at least one sample.")
  if len(x) != len(y):
    raise ValueError(f"{name}: x has {len(x)} samples but y has {len(y)}; "
                     "expected the same number.")
  y = _validation.check_labels(f"{name}: labels", y)
  if not lazy:  # Lazy inputs are checked when read (they are images).
    _validation.check_finite(f"{name} inputs", x)
  return x, y


def _train_test(train: Any, test: Any, prefix: str = ""):
  """Loads and checks a train/test pair: same sample shape, known test labels."""
  x_train, y_train = as_arrays(f"{prefix}train", train)
  x_test, y_test = as_arrays(f"{prefix}test", test)
  if x_train.shape[1:] != x_test.shape[1:]:
    raise ValueError(f"{prefix}train inputs have sample shape "
                     f"{x_train.shape[1:]} but {prefix}test inputs have "
                     f"{x_test.shape[1:]}; expected the same.")
  if _is_float(x_train.dtype) != _is_float(x_test.dtype):
    # One preprocess serves both: raw uint8 pixels and already scaled floats
    # cannot both be right.
    raise ValueError(f"{prefix}train inputs have dtype {x_train.dtype} but "
                     f"{prefix}test inputs have {x_test.dtype}; expected both "
                     "integer or both floating point (cast one of them).")
  classes = np.unique(y_train)
  unknown = np.setdiff1d(np.unique(y_test), classes)
  if unknown.size:
    raise ValueError(f"{prefix}test labels {unknown.tolist()} are out of "
                     f"range: they are not among the {prefix}train classes "
                     f"{classes.tolist()}.")
  return x_train, y_train, x_test, y_test


def _is_float(dtype: np.dtype) -> bool:
  return np.issubdtype(dtype, np.floating)


def _rng(seed: int) -> np.random.Generator:
  return np.random.default_rng(_validation.check_seed("seed", seed))


def _tasks(n: int, task: int) -> np.ndarray:
  return np.full(n, task, np.int32)


def _subexp_fields(exp: Experience) -> dict[str, Any]:
  """The fields an experience keeps when its samples are re-split."""
  return {"origin_experience": exp.origin_experience,
          "is_first_subexp": exp.is_first_subexp,
          "is_last_subexp": exp.is_last_subexp,
          "test_experience": exp.test_experience}


def _stream(origin: str, parts: Sequence[_Part], *,
            classes: Sequence[Sequence[int]] | None = None,
            fields: Sequence[Mapping[str, Any]] | None = None) -> Stream:
  """Builds a stream from ``(x, y, task)`` parts and fills the class timeline.

  Args:
    origin: The stream's name.
    parts: One ``(x, y, task)`` triple per experience.
    classes: The classes of each experience; by default the labels present.
    fields: Extra :class:`Experience` fields, one mapping per experience.
  """
  if classes is None:
    classes = [np.unique(y).tolist() for _, y, _ in parts]
  sets = [frozenset(int(c) for c in cs) for cs in classes]
  # Running unions keep long online streams linear in their length.
  before, seen = [], frozenset()
  for s in sets:
    before.append(seen)
    seen = seen | s
  after, later = [frozenset()] * len(sets), frozenset()
  for i in reversed(range(len(sets))):
    after[i] = later
    later = later | sets[i]
  experiences = []
  for i, (x, y, task) in enumerate(parts):
    if len(y) == 0:
      raise ValueError(f"Experience {i} of the {origin} stream would be empty "
                       f"(classes {sorted(sets[i])}); every experience needs "
                       "at least one sample.")
    experiences.append(Experience(
        x=x, y=y, task=task, index=i, classes=tuple(sorted(sets[i])),
        origin=origin, previous_classes=tuple(sorted(before[i])),
        future_classes=tuple(sorted(after[i] - before[i] - sets[i])),
        **(fields[i] if fields is not None else {})))
  return Stream(origin, experiences)


def check_relabelling(in_each_exp: bool, from_first_exp: bool) -> None:
  """Refuses both of :func:`class_incremental`'s relabellings at once (also
  for catalogue factories, before they read their data)."""
  if in_each_exp and from_first_exp:
    raise ValueError(
        "class_ids_from_zero_in_each_exp=True and "
        "class_ids_from_zero_from_first_exp=True relabel the classes in two "
        "different ways; expected at most one of them.")


def _class_order(classes: np.ndarray, fixed_class_order: Sequence[int] | None,
                 shuffle: bool, seed: int,
                 what: str = "the classes") -> tuple[int, ...]:
  if fixed_class_order is None:
    if not shuffle:
      return tuple(int(c) for c in classes)
    return tuple(int(c) for c in _rng(seed).permutation(classes))
  given = np.asarray(fixed_class_order)
  if given.dtype == bool or not np.issubdtype(given.dtype, np.integer):
    raise TypeError(f"fixed_class_order must hold integer class ids, got "
                    f"dtype {given.dtype}.")
  if given.ndim != 1:
    raise ValueError(f"fixed_class_order must be a flat sequence of class "
                     f"ids, got shape {given.shape}.")
  order = tuple(int(c) for c in given)
  expected = sorted(int(c) for c in classes)
  if sorted(order) != expected:
    shown = (f"0..{len(expected) - 1}" if len(expected) > 10 and
             expected == list(range(len(expected))) else expected)
    raise ValueError(f"fixed_class_order must be a permutation of {what} "
                     f"{shown}, got {list(order)}.")
  return order


def check_angles(name: str, angles: Sequence[float],
                 n_experiences: int) -> list[float]:
  """One rotation in [-180, 180] degrees per experience, as floats."""
  if np.ndim(angles) != 1:
    raise TypeError(f"{name} must be a sequence of angles (one per "
                    f"experience), got {angles!r}.")
  angles = [float(_validation.check_in_range(f"{name}[{i}]", a, low=-180,
                                             high=180))
            for i, a in enumerate(angles)]
  if len(angles) != n_experiences:
    raise ValueError(f"{name} has {len(angles)} entries; expected one per "
                     f"experience ({n_experiences}).")
  return angles


def check_class_order(n_classes: int, fixed_class_order: Sequence[int] | None,
                      what: str = "the classes") -> None:
  """Checks ``fixed_class_order`` against ``what``, classes
  ``0..n_classes-1`` (for catalogue factories, which know their classes
  before reading the data)."""
  if fixed_class_order is not None:
    _class_order(np.arange(n_classes), fixed_class_order, False, 0, what)


def class_group_sizes(n_classes: int, n_experiences: int,
                      per_exp_classes: Mapping[int, int] | None) -> list[int]:
  """Classes per experience: ``per_exp_classes`` first, the rest evenly.

  Raises a ``ValueError`` (``TypeError`` for a ``per_exp_classes`` that is
  not a mapping) naming what does not fit, so that a catalogue entry can
  check its arguments before it reads any data.
  """
  if per_exp_classes is not None and not isinstance(per_exp_classes, Mapping):
    raise TypeError(f"per_exp_classes must map experience indices to class "
                    f"counts (e.g. {{0: 5}}), got {per_exp_classes!r} of type "
                    f"{type(per_exp_classes).__name__}.")
  fixed = dict(per_exp_classes or {})
  for exp, count in fixed.items():
    if (isinstance(exp, bool) or not isinstance(exp, numbers.Integral)
        or not 0 <= exp < n_experiences):
      raise ValueError(f"per_exp_classes keys must be experience indices in "
                       f"[0, {n_experiences - 1}], got {exp!r}.")
    _validation.check_positive_int(f"per_exp_classes[{exp}]", count)
  free_exps = n_experiences - len(fixed)
  free_classes = n_classes - sum(fixed.values())
  if not fixed and n_classes % n_experiences:
    raise ValueError(
        f"n_experiences={n_experiences} does not divide the {n_classes} "
        f"classes; expected a divisor of {n_classes} (e.g. "
        f"{[d for d in range(1, n_classes + 1) if n_classes % d == 0]}), or "
        "per_exp_classes.")
  if free_classes < 0 or (free_exps == 0 and free_classes) or (
      free_exps and (free_classes < free_exps or free_classes % free_exps)):
    raise ValueError(
        f"per_exp_classes={fixed} leaves {free_classes} of the {n_classes} "
        f"classes for the other {free_exps} experiences; expected a positive "
        "multiple of their number (none when every experience is listed).")
  even = free_classes // free_exps if free_exps else 0
  return [fixed.get(i, even) for i in range(n_experiences)]


@_validation.checks_bool_arguments
def class_incremental(
    train: Any,
    test: Any,
    n_experiences: int,
    *,
    per_exp_classes: Mapping[int, int] | None = None,
    fixed_class_order: Sequence[int] | None = None,
    shuffle: bool = True,
    seed: int = 0,
    return_task_id: bool = False,
    class_ids_from_zero_in_each_exp: bool = False,
    class_ids_from_zero_from_first_exp: bool = False,
    preprocess: Preprocess = _as_float,
    augment: Augment | None = None,
    name: str = "class_incremental",
) -> Benchmark:
  """New-classes (NC) scenario: each experience brings a disjoint set of classes.

  Like Avalanche's ``nc_benchmark``: the classes are ordered
  (``fixed_class_order``, a permutation drawn from ``seed``, or sorted when
  ``shuffle`` is False) and split over the experiences, evenly unless
  ``per_exp_classes`` fixes some experiences' counts. Labels keep their
  original values and the head covers all classes, unless
  ``class_ids_from_zero_in_each_exp`` or
  ``class_ids_from_zero_from_first_exp`` is set.

  Args:
    train: Training data, ``(x, y)`` arrays or a tfds data source.
    test: Test data, same kinds as ``train``; its labels must be train classes.
    n_experiences: Number of experiences.
    per_exp_classes: ``{experience index: number of classes}`` for some
      experiences (e.g. ``{0: 50}``: a first experience with half of
      CIFAR-100); the other classes are split evenly over the other
      experiences. Without it, ``n_experiences`` must divide the classes.
    fixed_class_order: Explicit class order, a permutation of the classes.
    shuffle: Draw the class order from ``seed`` (else sorted classes); ignored
      with ``fixed_class_order``.
    seed: Seed of the class order.
    return_task_id: If True, experience ``i`` carries task label ``i``
      (task-incremental); otherwise every sample has task label 0.
    class_ids_from_zero_in_each_exp: Relabel the classes of each experience
      ``0..k-1`` in class order (the ``j``-th class of experience ``i`` in
      ``class_order`` becomes ``j``). ``n_classes`` is then the largest
      number of classes of an experience and ``classes`` lists relabelled
      ids; usually combined with ``return_task_id`` (multi-head models).
    class_ids_from_zero_from_first_exp: Relabel the classes by their position
      in the class order (``class_order[j]`` becomes ``j``), so experience 0
      holds ``0..k-1``, experience 1 the next ids and so on; ``n_classes`` is
      the number of classes. ``class_order`` keeps the original ids.
    preprocess: On-device preprocessing of raw inputs (e.g. normalisation).
    augment: On-device training augmentation ``(x, key) -> x``.
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
    >>> b = class_incremental((x, y), (x, y), 3, per_exp_classes={0: 4},
    ...                       shuffle=False)
    >>> [e.classes for e in b.train_stream]
    [(0, 1, 2, 3), (4,), (5,)]
    >>> b = class_incremental((x, y), (x, y), 3, fixed_class_order=[5, 1, 0,
    ...                       2, 4, 3], class_ids_from_zero_from_first_exp=True)
    >>> [e.classes for e in b.train_stream], b.class_order
    ([(0, 1), (2, 3), (4, 5)], (5, 1, 0, 2, 4, 3))
  """
  _validation.check_seed("seed", seed)
  n_experiences = _validation.check_positive_int("n_experiences", n_experiences)
  check_relabelling(class_ids_from_zero_in_each_exp,
                    class_ids_from_zero_from_first_exp)
  x_train, y_train, x_test, y_test = _train_test(train, test)
  classes = np.unique(y_train)
  sizes = class_group_sizes(len(classes), n_experiences, per_exp_classes)
  order = _class_order(classes, fixed_class_order, shuffle, seed)
  bounds = np.cumsum([0] + sizes)
  groups = [order[a:b] for a, b in itertools.pairwise(bounds)]

  # new_label[k]: the label the k-th of the sorted classes gets (its own id
  # unless relabelled): a table over the classes, not over their ids, which
  # may be sparse and large.
  new_label = classes.astype(np.int32)
  if class_ids_from_zero_from_first_exp:
    new_label[np.searchsorted(classes, order)] = np.arange(len(order))
  for group in groups if class_ids_from_zero_in_each_exp else ():
    new_label[np.searchsorted(classes, group)] = np.arange(len(group))

  def relabel(ids):
    return new_label[np.searchsorted(classes, ids)]

  def parts(x, y):
    out = []
    for i, group in enumerate(groups):
      idx = np.flatnonzero(np.isin(y, group))
      out.append((x[idx], relabel(y[idx]),
                  _tasks(idx.size, i if return_task_id else 0)))
    return out

  if class_ids_from_zero_in_each_exp:
    n_classes = max(sizes)
  elif class_ids_from_zero_from_first_exp:
    n_classes = len(classes)
  else:
    n_classes = int(classes.max()) + 1
  exp_classes = [relabel(np.asarray(group)) for group in groups]
  return Benchmark(
      train_stream=_stream("train", parts(x_train, y_train),
                           classes=exp_classes),
      # A test experience lists the classes its labels hold (as Avalanche
      # computes them from targets), which a partial test set may lack.
      test_stream=_stream("test", parts(x_test, y_test)),
      n_classes=n_classes,
      class_order=order,
      input_shape=tuple(x_train.shape[1:]),
      scenario="task_incremental" if return_task_id else "class_incremental",
      name=name,
      preprocess=preprocess,
      n_tasks=n_experiences if return_task_id else 1,
      augment=augment,
  )


@_validation.checks_bool_arguments
def new_instances(
    train: Any,
    test: Any,
    n_experiences: int,
    *,
    shuffle: bool = True,
    balance_experiences: bool = False,
    fixed_exp_assignment: Sequence[Sequence[int]] | None = None,
    seed: int = 0,
    preprocess: Preprocess = _as_float,
    augment: Augment | None = None,
    name: str = "new_instances",
) -> Benchmark:
  """New-instances (NI) scenario: every experience brings new samples.

  Like Avalanche's ``ni_benchmark``: the training samples are split over
  ``n_experiences`` experiences of (nearly) equal size, all with task label
  0. As in Avalanche, the test stream is a single experience holding the
  whole test set.

  Args:
    train: Training data, ``(x, y)`` arrays or a tfds data source.
    test: Test data; its labels must be train classes.
    n_experiences: Number of training experiences.
    shuffle: Assign samples in a random order drawn from ``seed`` (else in
      dataset order).
    balance_experiences: Spread the samples of each class evenly over the
      experiences (each experience gets ``n_c // n_experiences`` samples of
      class ``c``). If False, experiences are consecutive chunks of
      ``N // n_experiences`` of the (shuffled) samples. Either way, as in
      Avalanche, the ``N % n_experiences`` samples left over go one each to
      the first experiences, or with ``shuffle`` to experiences drawn at
      random.
    fixed_exp_assignment: Explicit assignment, one sequence of train sample
      indices per experience (disjoint, not necessarily covering the data);
      overrides ``shuffle`` and ``balance_experiences``.
    seed: Seed of the assignment.
    preprocess: On-device preprocessing of raw inputs.
    augment: On-device training augmentation ``(x, key) -> x``.
    name: Name of the benchmark for logs.

  Returns:
    A :class:`Benchmark` with ``n_experiences`` train experiences and one
    test experience.

  Example:
    >>> x = np.zeros((30, 2), np.float32); y = np.repeat(np.arange(3), 10)
    >>> b = new_instances((x, y), (x, y), 5, balance_experiences=True)
    >>> [np.bincount(e.y).tolist() for e in b.train_stream][:2]
    [[2, 2, 2], [2, 2, 2]]
  """
  _validation.check_seed("seed", seed)
  n_experiences = _validation.check_positive_int("n_experiences", n_experiences)
  x_train, y_train, x_test, y_test = _train_test(train, test)
  if n_experiences > len(y_train):
    raise ValueError(f"n_experiences={n_experiences} exceeds the "
                     f"{len(y_train)} training samples; expected at most one "
                     "experience per sample.")
  rng = _rng(seed)
  if fixed_exp_assignment is not None:
    groups = _check_assignment(fixed_exp_assignment, n_experiences,
                               len(y_train))
  else:
    assignment = np.empty(len(y_train), np.int64)
    pools = ([np.flatnonzero(y_train == c) for c in np.unique(y_train)]
             if balance_experiences else [np.arange(len(y_train))])
    for idx in pools:
      if shuffle:
        idx = rng.permutation(idx)
      even, extra = divmod(len(idx), n_experiences)
      lucky = (rng.permutation(n_experiences) if shuffle
               else np.arange(n_experiences))[:extra]
      if balance_experiences:
        # Avalanche: each experience takes its count of the class in turn.
        counts = np.full(n_experiences, even)
        counts[lucky] += 1
        assignment[idx] = np.repeat(np.arange(n_experiences), counts)
      else:
        # Avalanche: runs of `even` samples, then the leftovers one each.
        assignment[idx] = np.concatenate(
            [np.repeat(np.arange(n_experiences), even), lucky])
    groups = [np.flatnonzero(assignment == e) for e in range(n_experiences)]
  classes = np.unique(y_train)
  return Benchmark(
      train_stream=_stream("train", [
          (x_train[g], y_train[g], _tasks(g.size, 0)) for g in groups]),
      test_stream=_stream("test", [(x_test, y_test, _tasks(len(y_test), 0))]),
      n_classes=int(classes.max()) + 1,
      class_order=tuple(int(c) for c in classes),
      input_shape=tuple(x_train.shape[1:]),
      scenario="new_instances",
      name=name,
      preprocess=preprocess,
      augment=augment,
  )


def _check_assignment(assignment: Sequence[Sequence[int]], n_experiences: int,
                      n_samples: int) -> list[np.ndarray]:
  groups = [np.asarray(g).reshape(-1) for g in assignment]
  for i, group in enumerate(groups):
    if group.size and (group.dtype == bool
                       or not np.issubdtype(group.dtype, np.integer)):
      raise TypeError(f"fixed_exp_assignment[{i}] must hold integer sample "
                      f"indices, got dtype {group.dtype}.")
  groups = [g.astype(np.int64) for g in groups]
  if len(groups) != n_experiences:
    raise ValueError(f"fixed_exp_assignment has {len(groups)} entries; "
                     f"expected one per experience ({n_experiences}).")
  every = np.concatenate(groups)
  if every.size and (every.min() < 0 or every.max() >= n_samples):
    raise ValueError(f"fixed_exp_assignment holds indices outside "
                     f"[0, {n_samples - 1}] (the training samples).")
  if np.unique(every).size != every.size:
    raise ValueError("fixed_exp_assignment assigns some samples to several "
                     "experiences (or twice); expected disjoint index lists.")
  return groups


@_validation.checks_bool_arguments
def dataset_per_experience(
    datasets: Sequence[tuple[Any, Any]],
    *,
    offset_class_ids: bool = False,
    return_task_id: bool = False,
    preprocess: Preprocess = _as_float,
    augment: Augment | None = None,
    name: str = "dataset_per_experience",
) -> Benchmark:
  """One experience per dataset (Avalanche's ``dataset_benchmark``).

  Args:
    datasets: ``[(train, test), ...]``, one pair per experience, each
      ``(x, y)`` arrays or tfds data sources. All inputs must share sample
      shape and dtype (resize or pad them first).
    offset_class_ids: Shift the labels of dataset ``k`` by the number of
      class ids of the datasets before it (``max label + 1`` of each), so
      that datasets do not share classes (class-incremental over datasets).
      If False, labels are kept, so datasets with labels ``0..9`` share them.
    return_task_id: Task label ``k`` for dataset ``k``.
    preprocess: On-device preprocessing of raw inputs.
    augment: On-device training augmentation ``(x, key) -> x``.
    name: Name of the benchmark for logs.

  Returns:
    A :class:`Benchmark` with one train and one test experience per dataset.

  Example:
    >>> a = (np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1]))
    >>> b = dataset_per_experience([(a, a), (a, a)], offset_class_ids=True)
    >>> [e.classes for e in b.train_stream], b.n_classes
    ([(0, 1), (2, 3)], 4)
  """
  if not isinstance(datasets, Sequence) or not datasets:
    raise ValueError("datasets must be a non-empty sequence of (train, test) "
                     f"pairs, got {datasets!r}.")
  train_parts, test_parts, offset = [], [], 0
  for k, pair in enumerate(datasets):
    if not (isinstance(pair, Sequence) and len(pair) == 2):
      raise TypeError(f"datasets[{k}] must be a (train, test) pair, got "
                      f"{type(pair).__name__}.")
    x_train, y_train, x_test, y_test = _train_test(*pair, prefix=f"datasets[{k}] ")
    first = train_parts[0][0] if train_parts else x_train
    if (x_train.shape[1:], x_train.dtype) != (first.shape[1:], first.dtype):
      raise ValueError(
          f"datasets[{k}] has inputs of sample shape {x_train.shape[1:]} and "
          f"dtype {x_train.dtype} but datasets[0] has {first.shape[1:]} and "
          f"{first.dtype}; expected the same (resize or pad them first).")
    task = k if return_task_id else 0
    train_parts.append((x_train, y_train + offset, _tasks(len(y_train), task)))
    test_parts.append((x_test, y_test + offset, _tasks(len(y_test), task)))
    if offset_class_ids:
      offset += int(y_train.max()) + 1
  return benchmark_from_parts(train_parts, test_parts,
                              task_incremental=return_task_id, name=name,
                              preprocess=preprocess, augment=augment)


def benchmark_from_parts(train_parts: Sequence[_Part],
                         test_parts: Sequence[_Part], *,
                         task_incremental: bool, name: str,
                         preprocess: Preprocess,
                         augment: Augment | None) -> Benchmark:
  """A benchmark whose experiences are given as ``(x, y, task)`` parts.

  The scenario is ``task_incremental`` if so flagged, else
  class-incremental when no two train experiences share a class, else
  domain-incremental; ``n_classes`` is the largest train label plus one and
  ``n_tasks`` the largest task label plus one.

  Example:
    >>> x = np.zeros((2, 3), np.float32)
    >>> part = lambda y, t: (x, np.array(y, np.int32), np.full(2, t, np.int32))
    >>> bench = benchmark_from_parts([part([0, 1], 0), part([2, 3], 0)],
    ...                              [part([0, 3], 0)], task_incremental=False,
    ...                              name="b", preprocess=lambda x: x,
    ...                              augment=None)
    >>> bench.scenario, bench.n_classes, len(bench.test_stream)
    ('class_incremental', 4, 1)
  """
  train_stream = _stream("train", train_parts)
  order = tuple(dict.fromkeys(c for e in train_stream for c in e.classes))
  disjoint = sum(len(e.classes) for e in train_stream) == len(order)
  n_tasks = 1 + max(int(task.max()) for _, _, task in
                    (*train_parts, *test_parts))
  return Benchmark(
      train_stream=train_stream,
      test_stream=_stream("test", test_parts),
      n_classes=max(order) + 1,
      class_order=order,
      input_shape=tuple(train_parts[0][0].shape[1:]),
      scenario=("task_incremental" if task_incremental else
                "class_incremental" if disjoint else "domain_incremental"),
      name=name,
      preprocess=preprocess,
      n_tasks=n_tasks,
      augment=augment,
  )


def task_incremental(benchmark: Benchmark) -> Benchmark:
  """Relabels a benchmark's experiences with task label = experience index.

  Every sample of train, test (and validation) experience ``i`` gets task
  label ``i``; experiences split from larger ones (:func:`split_online`) get
  the index of their origin experience. Fit then restricts each sample's
  prediction to the classes of its task, and multi-head models
  (:class:`jaxcl.models.MultiHead`) pick the head of its task.

  Args:
    benchmark: Any benchmark whose test stream has one experience per task.

  Returns:
    The same benchmark with new task labels, ``scenario="task_incremental"``
    and ``n_tasks`` set.

  Example:
    >>> x = np.zeros((40, 2), np.float32); y = np.repeat(np.arange(4), 10)
    >>> b = task_incremental(class_incremental((x, y), (x, y), 2))
    >>> b.n_tasks, b.test_stream[1].task_label
    (2, 1)
  """
  def task_of(exp):
    return exp.index if exp.origin_experience is None else exp.origin_experience

  def relabel(stream):
    return Stream(stream.name, [dataclasses.replace(
        e, task=_tasks(len(e), task_of(e))) for e in stream])

  n_tasks = 1 + max(task_of(e) for e in benchmark.train_stream)
  if len(benchmark.test_stream) != n_tasks:
    raise ValueError(
        f"task_incremental needs one test experience per task: the train "
        f"stream defines {n_tasks} tasks but the test stream has "
        f"{len(benchmark.test_stream)} experiences.")
  test_classes = [set(e.classes) for e in benchmark.test_stream]
  # Where each class belongs to one task's test experience, a train
  # experience holding another task's classes got samples of another
  # experience (e.g. a data_incremental chunk across two).
  disjoint = sum(map(len, test_classes)) == len(set().union(*test_classes))
  for exp in benchmark.train_stream if disjoint else ():
    task = task_of(exp)
    stray = sorted(c for c in set(exp.classes) - test_classes[task]
                   if any(c in other for other in test_classes))
    if stray:
      raise ValueError(
          f"task_incremental: train experience {exp.index} (task {task}) "
          f"holds classes {stray} of other tasks' test experiences; expected "
          f"the samples of test experience {task}'s classes. Apply "
          "task_incremental before re-splitting the train stream "
          "(data_incremental); split_online keeps each sample's origin.")
  valid = benchmark.valid_stream
  return dataclasses.replace(
      benchmark,
      train_stream=relabel(benchmark.train_stream),
      test_stream=relabel(benchmark.test_stream),
      valid_stream=None if valid is None else relabel(valid),
      scenario="task_incremental",
      n_tasks=n_tasks)


def _transformed(x_train, y_train, x_test, y_test,
                 transforms: Sequence[Callable[[np.ndarray], np.ndarray]], *,
                 return_task_id: bool, preprocess: Preprocess,
                 augment: Augment | None, name: str) -> Benchmark:
  """Domain-incremental benchmark: experience ``i`` sees ``transforms[i](x)``."""
  # Transformed copies live in memory: lazy inputs are read once here.
  x_train, x_test = np.asarray(x_train), np.asarray(x_test)
  classes = np.unique(y_train)

  def parts(x, y):
    return [(t(x), y, _tasks(len(y), i if return_task_id else 0))
            for i, t in enumerate(transforms)]

  every = [classes] * len(transforms)
  return Benchmark(
      train_stream=_stream("train", parts(x_train, y_train), classes=every),
      test_stream=_stream("test", parts(x_test, y_test), classes=every),
      n_classes=int(classes.max()) + 1,
      class_order=tuple(int(c) for c in classes),
      input_shape=tuple(x_train.shape[1:]),
      scenario="task_incremental" if return_task_id else "domain_incremental",
      name=name,
      preprocess=preprocess,
      n_tasks=len(transforms) if return_task_id else 1,
      augment=augment,
  )


@_validation.checks_bool_arguments
def permuted(
    train: Any,
    test: Any,
    n_experiences: int,
    *,
    seed: int = 0,
    return_task_id: bool = False,
    preprocess: Preprocess = _as_float,
    augment: Augment | None = None,
    name: str = "permuted",
) -> Benchmark:
  """Permuted inputs (PermutedMNIST): one fixed permutation per experience.

  As in Avalanche's ``PermutedMNIST``, every experience -- the first one
  included -- permutes the values of each flattened sample with its own
  permutation (``rng.permutation(x[0].size)`` for ``rng =
  numpy.random.default_rng(seed)``, one draw per experience in order), and
  keeps all the labels. The permutations differ from Avalanche's (which
  draws them with ``numpy.random.RandomState``).

  Args:
    train: Training data, ``(x, y)`` arrays or a tfds data source.
    test: Test data; its labels must be train classes.
    n_experiences: Number of permutations (experiences).
    seed: Seed of the permutations.
    return_task_id: Task label ``i`` for experience ``i`` (else 0:
      domain-incremental with one shared head).
    preprocess: On-device preprocessing of raw inputs.
    augment: On-device training augmentation ``(x, key) -> x``.
    name: Name of the benchmark for logs.

  Returns:
    A domain-incremental :class:`Benchmark` (task-incremental with
    ``return_task_id``); each experience holds every sample and class.

  Example:
    >>> x = np.arange(12, dtype=np.float32).reshape(3, 4); y = np.arange(3)
    >>> b = permuted((x, y), (x, y), 2, seed=0)
    >>> sorted(b.train_stream[1].x[0].tolist()) == x[0].tolist()
    True
  """
  _validation.check_seed("seed", seed)
  n_experiences = _validation.check_positive_int("n_experiences", n_experiences)
  x_train, y_train, x_test, y_test = _train_test(train, test)
  rng = _rng(seed)
  size = int(np.prod(x_train.shape[1:]))

  def permute(perm):
    return lambda x: x.reshape(len(x), -1)[:, perm].reshape(x.shape)

  transforms = [permute(rng.permutation(size)) for _ in range(n_experiences)]
  return _transformed(x_train, y_train, x_test, y_test, transforms,
                      return_task_id=return_task_id, preprocess=preprocess,
                      augment=augment, name=name)


def rotate_images(x: np.ndarray, angle: float) -> np.ndarray:
  """Rotates images counter-clockwise about their centre (host side, numpy).

  Nearest-neighbour sampling, zero fill, same size: what torchvision's
  ``RandomRotation(degrees=(angle, angle))`` does by default (Avalanche's
  ``RotatedMNIST``). A source position halfway between two pixels rounds to
  the even one, as the nearest-neighbour ``grid_sample`` that rotates
  Avalanche's float tensors does; PIL's rotation of an image rounds such
  ties all one way, so at 45° and 135° a few pixels differ from it.

  Args:
    x: Images ``[N, H, W]`` or ``[N, H, W, C]``.
    angle: Degrees, counter-clockwise.

  Returns:
    The rotated images, same shape and dtype.

  Example:
    >>> img = np.arange(9).reshape(1, 3, 3)
    >>> bool((rotate_images(img, 90) == np.rot90(img, axes=(1, 2))).all())
    True
  """
  if x.ndim not in (3, 4):
    raise ValueError(f"rotate_images expects images [N, H, W] or [N, H, W, C], "
                     f"got shape {x.shape}.")
  h, w = x.shape[1:3]
  theta = np.deg2rad(angle)
  rows, cols = np.mgrid[0:h, 0:w]
  dy, dx = rows - (h - 1) / 2, cols - (w - 1) / 2
  # Output pixel (row, col) reads the input at the inverse rotation of its
  # offset from the centre (rows grow downwards).
  src_cols = np.rint((w - 1) / 2 + dx * np.cos(theta) - dy * np.sin(theta))
  src_rows = np.rint((h - 1) / 2 + dx * np.sin(theta) + dy * np.cos(theta))
  inside = (src_rows >= 0) & (src_rows < h) & (src_cols >= 0) & (src_cols < w)
  out = np.zeros_like(x)
  out[:, rows[inside], cols[inside]] = x[:, src_rows[inside].astype(int),
                                         src_cols[inside].astype(int)]
  return out


@_validation.checks_bool_arguments
def rotated(
    train: Any,
    test: Any,
    n_experiences: int,
    *,
    seed: int = 0,
    angles: Sequence[float] | None = None,
    return_task_id: bool = False,
    preprocess: Preprocess = _as_float,
    augment: Augment | None = None,
    name: str = "rotated",
) -> Benchmark:
  """Rotated images (RotatedMNIST): one fixed rotation per experience.

  As in Avalanche's ``RotatedMNIST``, experience ``i`` rotates every image
  by ``angles[i]`` degrees (counter-clockwise, nearest neighbour, zero fill,
  see :func:`rotate_images`); without ``angles``, integer angles in
  ``[-180, 180]`` are drawn from ``numpy.random.default_rng(seed)``. Labels
  are kept.

  Args:
    train: Training images ``[N, H, W(, C)]`` with labels, or a tfds source.
    test: Test data; its labels must be train classes.
    n_experiences: Number of rotations (experiences).
    seed: Seed of the angles when ``angles`` is None.
    angles: Explicit angles in degrees, one per experience, in [-180, 180].
    return_task_id: Task label ``i`` for experience ``i``.
    preprocess: On-device preprocessing of raw inputs.
    augment: On-device training augmentation ``(x, key) -> x``.
    name: Name of the benchmark for logs.

  Returns:
    A domain-incremental :class:`Benchmark` (task-incremental with
    ``return_task_id``).

  Example:
    >>> x = np.arange(18).reshape(2, 3, 3); y = np.array([0, 1])
    >>> b = rotated((x, y), (x, y), 2, angles=[0, 180])
    >>> bool((b.train_stream[1].x[0] == x[0, ::-1, ::-1]).all())
    True
  """
  _validation.check_seed("seed", seed)
  n_experiences = _validation.check_positive_int("n_experiences", n_experiences)
  if angles is None:
    angles = _rng(seed).integers(-180, 181, n_experiences)
  angles = check_angles("angles", angles, n_experiences)
  x_train, y_train, x_test, y_test = _train_test(train, test)
  if x_train.ndim not in (3, 4):
    raise ValueError(f"rotated expects images [N, H, W] or [N, H, W, C], got "
                     f"inputs of shape {x_train.shape}.")
  transforms = [lambda x, a=a: rotate_images(x, a) for a in angles]
  return _transformed(x_train, y_train, x_test, y_test, transforms,
                      return_task_id=return_task_id, preprocess=preprocess,
                      augment=augment, name=name)


@_validation.checks_bool_arguments
def split_online(
    benchmark: Benchmark,
    experience_size: int,
    *,
    shuffle: bool = True,
    drop_last: bool = False,
    seed: int = 0,
    access_task_boundaries: bool = False,
) -> Benchmark:
  """Splits the train stream into mini-experiences of ``experience_size``.

  Like Avalanche's ``split_online_stream``: each train experience is
  (shuffled and) cut into consecutive mini-experiences of
  ``experience_size`` samples; the last one of each experience holds the
  remainder (or is dropped with ``drop_last``). Mini-experiences never mix
  samples of two experiences and record their experience in
  ``origin_experience``. Test and validation streams are unchanged.

  Args:
    benchmark: The benchmark to split.
    experience_size: Samples per mini-experience.
    shuffle: Shuffle each experience (from ``seed``) before cutting it.
    drop_last: Drop each experience's last mini-experience when smaller.
    seed: Seed of the shuffling.
    access_task_boundaries: Record ``is_first_subexp``/``is_last_subexp``
      (whether a mini-experience starts/ends its origin experience); when
      False they are None, as Avalanche hides them from training. Classes
      are unmasked per mini-experience either way (Avalanche, with the
      boundaries, unmasks the origin experience's at its first one).

  Returns:
    The benchmark with the online train stream (named ``<name>_online``).

  Example:
    >>> x = np.zeros((40, 2), np.float32); y = np.repeat(np.arange(4), 10)
    >>> b = split_online(class_incremental((x, y), (x, y), 2), 8)
    >>> [len(e) for e in b.train_stream], b.train_stream[3].origin_experience
    ([8, 8, 4, 8, 8, 4], 1)
  """
  _validation.check_seed("seed", seed)
  experience_size = _validation.check_positive_int("experience_size",
                                                   experience_size)
  rng = _rng(seed)
  parts, origins, tests = [], [], []
  for exp in benchmark.train_stream:
    order = rng.permutation(len(exp)) if shuffle else np.arange(len(exp))
    chunks = [order[s:s + experience_size]
              for s in range(0, len(exp), experience_size)]
    if drop_last and len(chunks[-1]) < experience_size:
      chunks.pop()
    # A stream split again keeps the experiences it was split from.
    origin = (exp.index if exp.origin_experience is None
              else exp.origin_experience)
    for idx in chunks:
      parts.append((exp.x[idx], exp.y[idx], exp.task[idx]))
      origins.append(origin)
      tests.append(exp.test_experience)
  # An origin's first and last mini-experiences, among those kept.
  bounds = [None, *origins, None]
  fields = [{"origin_experience": origin,
             "is_first_subexp": (bounds[i] != origin if access_task_boundaries
                                 else None),
             "is_last_subexp": (bounds[i + 2] != origin
                                if access_task_boundaries else None),
             "test_experience": test}
            for i, (origin, test) in enumerate(zip(origins, tests))]
  if not parts:
    raise ValueError(f"drop_last=True with experience_size={experience_size} "
                     "drops every sample: each train experience is smaller; "
                     "expected a smaller experience_size.")
  return dataclasses.replace(
      benchmark, train_stream=_stream("train", parts, fields=fields),
      name=f"{benchmark.name}_online")


@_validation.checks_bool_arguments
def data_incremental(
    benchmark: Benchmark,
    n_experiences: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
) -> Benchmark:
  """Re-splits the train data into ``n_experiences`` consecutive chunks.

  The samples of the train stream, in stream order, are cut into
  ``n_experiences`` chunks of (nearly) equal size (the first ``N %
  n_experiences`` chunks hold one sample more), irrespective of classes: a
  chunk may span two original experiences. Test and validation streams are
  unchanged. Lazy inputs (``RecordArray`` views) are read into memory
  (docs/streaming.md).

  Args:
    benchmark: The benchmark whose train stream is re-split.
    n_experiences: Number of chunks.
    shuffle: Shuffle the samples within each original experience (from
      ``seed``) first; the order of the experiences is kept.
    seed: Seed of the shuffling.

  Returns:
    The benchmark with the new train stream (named ``<name>_data_incremental``).

  Example:
    >>> x = np.zeros((40, 2), np.float32); y = np.repeat(np.arange(4), 10)
    >>> b = data_incremental(class_incremental((x, y), (x, y), 2), 3)
    >>> [len(e) for e in b.train_stream]
    [14, 13, 13]
  """
  _validation.check_seed("seed", seed)
  n_experiences = _validation.check_positive_int("n_experiences", n_experiences)
  rng = _rng(seed)
  orders = [rng.permutation(len(e)) if shuffle else np.arange(len(e))
            for e in benchmark.train_stream]
  x = np.concatenate([e.x[o] for e, o in zip(benchmark.train_stream, orders)])
  y = np.concatenate([e.y[o] for e, o in zip(benchmark.train_stream, orders)])
  task = np.concatenate([e.task[o]
                         for e, o in zip(benchmark.train_stream, orders)])
  if n_experiences > len(y):
    raise ValueError(f"n_experiences={n_experiences} exceeds the {len(y)} "
                     "training samples; expected at most one experience per "
                     "sample.")
  chunks = np.array_split(np.arange(len(y)), n_experiences)
  # Each sample's test experience, for the metrics (a chunk's is its first
  # sample's: it is the last chunk holding an experience's samples that
  # ends its training, as forgetting needs).
  columns = np.repeat([e.trained_column for e in benchmark.train_stream],
                      [len(e) for e in benchmark.train_stream])
  return dataclasses.replace(
      benchmark,
      train_stream=_stream("train", [(x[c], y[c], task[c]) for c in chunks],
                           fields=[{"test_experience": int(columns[c[0]])}
                                   for c in chunks]),
      name=f"{benchmark.name}_data_incremental")


@_validation.checks_bool_arguments
def with_validation(
    benchmark: Benchmark,
    validation_size: float = 0.1,
    *,
    class_balanced: bool = False,
    seed: int = 0,
) -> Benchmark:
  """Holds out part of each train experience as a validation stream.

  Like Avalanche's ``benchmark_with_validation_stream``: train experience
  ``i`` loses ``validation_size`` of its samples to validation experience
  ``i`` of the new ``valid_stream`` (a random subset drawn from ``seed``).

  Args:
    benchmark: The benchmark to split.
    validation_size: A fraction in (0, 1) (``int(fraction * n)`` samples of
      an experience of ``n``) or a number of samples per experience.
    class_balanced: Take ``int(fraction * n_c)`` samples of each class ``c``
      of the experience (Avalanche's ``class_balanced_split_strategy``), so
      validation keeps the class proportions; needs a fraction.
    seed: Seed of the split.

  Returns:
    The benchmark with smaller train experiences and ``valid_stream`` set.

  Example:
    >>> x = np.zeros((40, 2), np.float32); y = np.repeat(np.arange(4), 10)
    >>> b = with_validation(class_incremental((x, y), (x, y), 2), 0.2)
    >>> [len(e) for e in b.train_stream], [len(e) for e in b.valid_stream]
    ([16, 16], [4, 4])
  """
  _validation.check_seed("seed", seed)
  if benchmark.valid_stream is not None:
    raise ValueError(
        f"benchmark {benchmark.name!r} has a validation stream already; "
        "expected a benchmark without one (a second split would drop the "
        "first one's samples from both streams).")
  if isinstance(validation_size, numbers.Integral) and not isinstance(
      validation_size, bool):
    count = _validation.check_positive_int("validation_size", validation_size)
    if class_balanced:
      raise ValueError(f"class_balanced=True needs validation_size as a "
                       f"fraction in (0, 1), got {validation_size!r}.")
    fraction = None
  else:
    fraction = _validation.check_in_range(
        "validation_size", validation_size, low=0, high=1,
        low_inclusive=False, high_inclusive=False)

  def size_of(n: int) -> int:
    return count if fraction is None else int(fraction * n)

  rng = _rng(seed)
  train_parts, valid_parts, fields = [], [], []
  for exp in benchmark.train_stream:
    if class_balanced:
      picked = [rng.permutation(np.flatnonzero(exp.y == c))
                for c in np.unique(exp.y)]
      valid = np.concatenate([p[:size_of(len(p))] for p in picked])
    else:
      valid = rng.permutation(len(exp))[:size_of(len(exp))]
    if not 0 < len(valid) < len(exp):
      raise ValueError(
          f"validation_size={validation_size!r} leaves {len(valid)} of the "
          f"{len(exp)} samples of train experience {exp.index} for "
          "validation; expected at least one sample in both parts.")
    valid = np.sort(valid)
    keep = np.setdiff1d(np.arange(len(exp)), valid)
    train_parts.append((exp.x[keep], exp.y[keep], exp.task[keep]))
    valid_parts.append((exp.x[valid], exp.y[valid], exp.task[valid]))
    fields.append(_subexp_fields(exp))
  return dataclasses.replace(
      benchmark,
      train_stream=_stream("train", train_parts, fields=fields),
      valid_stream=_stream("valid", valid_parts, fields=fields))
