"""The data model of a continual-learning benchmark: experiences, streams, benchmarks.

An :class:`Experience` is the data of one step of a stream (host-side numpy
arrays) with its metadata; a :class:`Stream` is an ordered, indexable sequence
of experiences; a :class:`Benchmark` bundles the train and test streams with
what the training loop needs to allocate fixed shapes once for the whole
stream (number of classes, input shape) and the on-device preprocessing.

Example:
  >>> import numpy as np
  >>> exp = Experience(x=np.zeros((4, 2), np.float32), y=np.array([0, 1, 0, 1]),
  ...                  task=np.zeros(4, np.int32), index=0, classes=(0, 1),
  ...                  origin="train")
  >>> len(exp)
  4
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import overload

import jax.numpy as jnp
import numpy as np

from jaxcl import _validation

__all__ = [
    "Augment",
    "Benchmark",
    "Experience",
    "Preprocess",
    "Stream",
    "normalizer",
]

Preprocess = Callable[[jnp.ndarray], jnp.ndarray]
Augment = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


@dataclasses.dataclass(frozen=True, eq=False)
class Experience:
  """One step of a stream: samples, labels, per-sample task labels, metadata.

  Attributes:
    x: Inputs, ``[n, *input_shape]`` (any dtype; preprocessing happens on the
      device, see :attr:`Benchmark.preprocess`).
    y: Integer class labels, ``[n]``.
    task: Integer task label of each sample, ``[n]``.
    index: Position of the experience in its stream.
    classes: Sorted classes present in this experience.
    origin: Name of the stream this experience belongs to (``"train"``...).
    previous_classes: Classes of the experiences before this one.
    future_classes: Classes that only appear after this experience.
    origin_experience: For an experience split from a larger one (online
      streams, :func:`jaxcl.benchmarks.split_online`), the index of that
      experience in the original stream; None otherwise.
    is_first_subexp: Whether this is the first mini-experience of its origin
      experience; None unless the stream gives access to task boundaries.
    is_last_subexp: Whether this is the last mini-experience of its origin
      experience; None unless the stream gives access to task boundaries.
    test_experience: The test experience whose data this train experience
      holds, for the metrics that pair them (forgetting, forward transfer):
      set by :func:`jaxcl.benchmarks.data_incremental`, whose chunks may
      span two experiences (that of their first sample); None: the
      ``origin_experience``, else ``index``.
  """

  x: np.ndarray
  y: np.ndarray
  task: np.ndarray
  index: int
  classes: tuple[int, ...]
  origin: str
  previous_classes: tuple[int, ...] = ()
  future_classes: tuple[int, ...] = ()
  origin_experience: int | None = None
  is_first_subexp: bool | None = None
  is_last_subexp: bool | None = None
  test_experience: int | None = None

  def __post_init__(self):
    where = f"Experience {self.index} of stream {self.origin!r}:"
    # Whole floats pass (np.zeros(n) as task labels); 0.5 does not.
    for name in ("y", "task"):
      object.__setattr__(self, name, _validation.check_labels(
          f"{where} {name}", getattr(self, name), integer_dtype=False))
    if not (len(self.x) == len(self.y) == len(self.task)):
      raise ValueError(
          f"Experience {self.index} of stream {self.origin!r}: x, y and task "
          f"must have the same length, got {len(self.x)}, {len(self.y)} and "
          f"{len(self.task)}.")
    # Training masks the logits of classes outside `classes` (and of those
    # never seen): a label left out would train against -1000.
    missing = sorted(set(np.unique(self.y).tolist()) - set(self.classes))
    if missing:
      raise ValueError(
          f"{where} classes={tuple(self.classes)} leaves out the labels "
          f"{missing} that y holds; expected every label of y among the "
          f"classes.")

  def __len__(self) -> int:
    return len(self.y)

  @property
  def classes_in_this_experience(self) -> tuple[int, ...]:
    """Avalanche's name for :attr:`classes`."""
    return self.classes

  @property
  def classes_seen_so_far(self) -> tuple[int, ...]:
    """Classes of this experience and of every experience before it."""
    return tuple(sorted(set(self.previous_classes) | set(self.classes)))

  @property
  def trained_column(self) -> int:
    """The test experience this one trains, for the metrics:
    ``test_experience``, else ``origin_experience``, else ``index``."""
    for column in (self.test_experience, self.origin_experience):
      if column is not None:
        return column
    return self.index

  @property
  def task_label(self) -> int:
    """The experience's task label (the first one when several are present)."""
    return int(self.task[0]) if len(self.task) else 0

  @property
  def task_labels(self) -> tuple[int, ...]:
    """Sorted distinct task labels present in the experience."""
    return tuple(int(t) for t in np.unique(self.task))


class Stream(Sequence[Experience]):
  """An ordered, indexable, sliceable sequence of experiences.

  Example:
    >>> stream = Stream("train", [])
    >>> len(stream)
    0
  """

  def __init__(self, name: str, experiences: Sequence[Experience]):
    self.name = name
    self._experiences = tuple(experiences)

  def __len__(self) -> int:
    return len(self._experiences)

  @overload
  def __getitem__(self, i: int) -> Experience: ...

  @overload
  def __getitem__(self, i: slice) -> Stream: ...

  def __getitem__(self, i):
    if isinstance(i, slice):
      return Stream(self.name, self._experiences[i])
    return self._experiences[i]

  def __iter__(self) -> Iterator[Experience]:
    return iter(self._experiences)

  def __repr__(self) -> str:
    sizes = [len(e) for e in self._experiences]
    return f"Stream({self.name!r}, {len(self)} experiences, sizes={sizes})"

  @property
  def max_size(self) -> int:
    """Number of samples of the largest experience (shapes are padded to it)."""
    return max((len(e) for e in self._experiences), default=0)


def normalizer(mean: Sequence[float] | float, std: Sequence[float] | float,
               scale: float = 255.0) -> Preprocess:
  """Returns ``x -> (x / scale - mean) / std`` as a jit-compatible function.

  Args:
    mean: Per-channel (or scalar) mean of the data scaled to ``[0, 1]``.
    std: Per-channel (or scalar) standard deviation of the scaled data.
    scale: Maximum raw value (255 for uint8 images).

  Example:
    >>> f = normalizer(0.1307, 0.3081)
    >>> float(f(jnp.array([0.0]))[0])  # doctest: +ELLIPSIS
    -0.4242...
  """
  mean_arr = np.asarray(mean, np.float32)
  std_arr = np.asarray(std, np.float32)
  for name, value in (("mean", mean_arr), ("std", std_arr)):
    if not np.all(np.isfinite(value)):
      raise ValueError(f"{name} must be finite, got {value.tolist()}.")
  if np.any(std_arr <= 0):
    raise ValueError(f"std must be positive, got {std_arr.tolist()}.")
  if not (np.isfinite(scale) and scale > 0):
    raise ValueError(f"scale must be a positive number, got {scale!r}.")

  def preprocess(x: jnp.ndarray) -> jnp.ndarray:
    sample = tuple(x.shape[1:])
    for name, value in (("mean", mean_arr), ("std", std_arr)):
      try:
        fits = np.broadcast_shapes(sample, value.shape) == sample
      except ValueError:
        fits = False
      if not fits:  # It would change the samples' shape.
        raise ValueError(
            f"normalizer's {name} has shape {value.shape}, which does not "
            f"broadcast to the samples' shape {sample}; expected a number, "
            "one value per channel or a per-pixel array.")
    return (x.astype(jnp.float32) / scale - mean_arr) / std_arr

  return preprocess


def _as_float(x: jnp.ndarray) -> jnp.ndarray:
  return x.astype(jnp.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class Benchmark:
  """A continual-learning benchmark: train/test streams plus static facts.

  Attributes:
    train_stream: The experiences to train on, in order.
    test_stream: The experiences to evaluate on: one per train experience,
      or one holding the whole test set (new-instances scenarios); online
      streams (:func:`jaxcl.benchmarks.split_online`) keep the original one.
    n_classes: Number of classes of the whole benchmark (the head's width).
    class_order: The order in which classes were assigned to experiences.
    input_shape: Shape of one input sample.
    scenario: ``"class_incremental"``, ``"task_incremental"``,
      ``"domain_incremental"``...
    name: A short name for logs.
    preprocess: Jit-compatible function applied to each batch of raw inputs on
      the device (e.g. normalisation).
    n_tasks: Number of distinct task labels.
    augment: Optional jit-compatible training augmentation ``(x, key) -> x``
      applied to raw training batches (before ``preprocess``) inside the
      compiled step; it should draw per-sample randomness from ``key``.
    valid_stream: Optional validation experiences (held-out training
      samples, one per train experience), see
      :func:`jaxcl.benchmarks.with_validation`.
  """

  train_stream: Stream
  test_stream: Stream
  n_classes: int
  class_order: tuple[int, ...]
  input_shape: tuple[int, ...]
  scenario: str
  name: str = "custom"
  preprocess: Preprocess = _as_float
  n_tasks: int = 1
  augment: Augment | None = None
  valid_stream: Stream | None = None

  @property
  def n_experiences(self) -> int:
    return len(self.train_stream)
