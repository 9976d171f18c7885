"""Training state and device-side experience data: fixed-shape pytrees.

Example:
  >>> import numpy as np
  >>> from jaxcl.benchmarks import Experience
  >>> exp = Experience(x=np.ones((3, 2), np.float32), y=[0, 1, 1],
  ...                  task=[0, 0, 0], index=0, classes=(0, 1), origin="train")
  >>> data = experience_data(exp, size=5, n_classes=4)
  >>> data.x.shape, int(data.size), data.classes_mask.tolist()
  ((5, 2), 3, [True, True, False, False])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxcl import _hosts
from jaxcl.benchmarks.scenario import Experience

__all__ = ["ExperienceData", "TrainState", "experience_data", "put_experiences",
           "read_in_shares", "stack_experiences"]

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, as one pytree.

  Attributes:
    step: Number of optimizer updates applied so far.
    params: Model parameters.
    model_state: Non-parameter model variables (e.g. ``batch_stats``).
    opt_state: optax optimizer state.
    cl_state: The strategy's state (a tuple for chained strategies).
    key: PRNG key from which every later random choice is split.
    seen_classes: ``bool[n_classes]``: classes trained on so far (the
      class-incremental head masks the others).
    experience: Index of the experience being (or last) trained.
  """

  step: jax.Array
  params: PyTree
  model_state: PyTree
  opt_state: PyTree
  cl_state: PyTree
  key: jax.Array
  seen_classes: jax.Array
  experience: jax.Array


@flax.struct.dataclass
class ExperienceData:
  """One experience on the device, padded to a fixed size.

  Attributes:
    x: Raw inputs ``[size_max, *input_shape]``; rows past ``size`` are padding.
    y: Labels ``[size_max]`` (0 in padding).
    task: Task labels ``[size_max]``.
    size: Number of real samples (scalar int32).
    index: Position of the experience in its stream (scalar int32).
    classes_mask: ``bool[n_classes]``, the classes present in the experience.
    class_counts: ``int32[n_classes]``, samples of each class in the whole
      experience: the labels' counts, except in the strategy hooks' subset
      of a streamed experience (:mod:`jaxcl.training.streaming`), which
      holds only some of the samples and keeps the whole experience's
      counts (CWR* and AR1 weigh their consolidation by them).
    origin_experience: Index of the original experience that an online
      mini-experience was cut from (``Experience.origin_experience``); the
      experience's own ``index`` otherwise (scalar int32).
  """

  x: jax.Array
  y: jax.Array
  task: jax.Array
  size: jax.Array
  index: jax.Array
  classes_mask: jax.Array
  class_counts: jax.Array
  origin_experience: jax.Array

  @property
  def valid(self) -> jax.Array:
    """``bool[size_max]``: which rows are real samples."""
    return jnp.arange(self.y.shape[-1]) < self.size[..., None]

  @property
  def experience_size(self) -> jax.Array:
    """Samples of the whole experience (int32): ``size``, except in the
    hooks' subset of a streamed experience."""
    return self.class_counts.sum(axis=-1, dtype=jnp.int32)


def _pad(a: np.ndarray, size: int) -> np.ndarray:
  return np.pad(a, [(0, size - len(a))] + [(0, 0)] * (a.ndim - 1))


def _check_fit(experiences: Sequence[Experience], size: int,
               n_classes: int) -> None:
  """Refuses a padded ``size`` below an experience's length, or an
  ``n_classes`` that leaves out one of their classes."""
  if not experiences:
    raise ValueError("experiences must hold at least one experience, got "
                     "none.")
  longest = max(len(e) for e in experiences)
  if size < longest:
    raise ValueError(f"size={size} is below the {longest} samples of the "
                     f"longest experience; expected size >= {longest}.")
  top = max(max(e.classes, default=-1) for e in experiences)
  if top >= n_classes:
    raise ValueError(f"n_classes={n_classes} leaves out class {top} of the "
                     f"experiences; expected n_classes > {top}.")


def class_counts(experience: Experience, n_classes: int) -> np.ndarray:
  """``int32[n_classes]``: the experience's samples of each class."""
  return np.bincount(experience.y, minlength=n_classes).astype(np.int32)


def _origin(experience: Experience) -> int:
  """The original experience's index (the experience's own if not cut)."""
  if experience.origin_experience is None:
    return experience.index
  return experience.origin_experience


def experience_data(experience: Experience, size: int,
                    n_classes: int) -> ExperienceData:
  """Pads an experience to ``size`` samples (host side, numpy arrays).

  Args:
    experience: The experience to pad.
    size: The padded length (the stream's largest experience).
    n_classes: Width of ``classes_mask``.

  Returns:
    An :class:`ExperienceData` of numpy arrays, ready for ``jax.device_put``.
  """
  _check_fit([experience], size, n_classes)
  mask = np.zeros(n_classes, bool)
  mask[list(experience.classes)] = True
  return ExperienceData(
      x=_pad(np.asarray(experience.x), size),
      y=_pad(experience.y, size),
      task=_pad(experience.task, size),
      size=np.int32(len(experience)),
      index=np.int32(experience.index),
      classes_mask=mask,
      class_counts=class_counts(experience, n_classes),
      origin_experience=np.int32(_origin(experience)))


def stack_experiences(experiences, n_classes: int, size: int | None = None,
                      length: int | None = None) -> ExperienceData:
  """Pads experiences to a common size and stacks them on a leading axis.

  Args:
    experiences: The experiences, in order.
    n_classes: Width of ``classes_mask``.
    size: The padded number of samples (default: the largest experience's).
    length: The stacked number of experiences (default: as many as given);
      the last experience is repeated to fill it, for programs whose callers
      skip the repeats.

  Returns:
    An :class:`ExperienceData` of numpy arrays with a leading experience axis.
  """
  if size is None:
    size = max((len(e) for e in experiences), default=0)
  _check_fit(experiences, size, n_classes)
  if length is not None and length < len(experiences):
    raise ValueError(f"length={length} is below the {len(experiences)} "
                     f"experiences given; expected length >= "
                     f"{len(experiences)}.")
  padded = [experience_data(e, size, n_classes) for e in experiences]
  padded += padded[-1:] * ((length or len(padded)) - len(padded))
  return jax.tree.map(lambda *a: np.stack(a), *padded)


def put_experiences(experiences: Sequence[Experience], n_classes: int,
                    size: int, samples_sharding: Any,
                    sharding: Any) -> ExperienceData:
  """Stacks experiences on the devices, reading only this host's samples.

  The same arrays as ``jax.device_put(stack_experiences(experiences,
  n_classes, size))``, but inputs, labels and task labels ``[T, size, ...]``
  are placed with ``samples_sharding``, which may split the sample axis over
  devices: each host reads only the samples its devices hold (lazy inputs
  such as :class:`jaxcl.benchmarks.sources.RecordArray` views are read in
  those parts). The other fields are placed with ``sharding``.

  Args:
    experiences: The experiences, in order.
    n_classes: Width of ``classes_mask``.
    size: The padded number of samples (at least the largest experience's).
    samples_sharding: Sharding of ``x``, ``y`` and ``task`` (None: the
      default device).
    sharding: Sharding of ``size``, ``index`` and ``classes_mask``.

  Returns:
    An :class:`ExperienceData` of device arrays with a leading experience
    axis.

  Example:
    >>> import numpy as np
    >>> from jaxcl.benchmarks import Experience
    >>> exp = Experience(x=np.ones((3, 2), np.float32), y=[0, 1, 1],
    ...                  task=[0, 0, 0], index=0, classes=(0, 1),
    ...                  origin="train")
    >>> data = put_experiences([exp], n_classes=4, size=5,
    ...                        samples_sharding=None, sharding=None)
    >>> data.x.shape, data.size.tolist()
    ((1, 5, 2), [3])
  """
  _check_fit(experiences, size, n_classes)

  def stacked(field: str) -> jax.Array:
    def read(index):
      start, stop, _ = index[1].indices(size)
      blocks = []
      for experience in experiences[index[0]]:
        values = getattr(experience, field)
        blocks.append(_pad(np.asarray(values[start:max(start, min(
            stop, len(experience)))]), stop - start))
      return np.stack(blocks)[(slice(None), slice(None), *index[2:])]
    first = getattr(experiences[0], field)
    return _hosts.put_parts((len(experiences), size, *first.shape[1:]),
                            samples_sharding, read)

  masks = np.zeros((len(experiences), n_classes), bool)
  for row, experience in zip(masks, experiences):
    row[list(experience.classes)] = True
  return ExperienceData(
      x=stacked("x"), y=stacked("y"), task=stacked("task"),
      **_hosts.put({
          "size": np.array([len(e) for e in experiences], np.int32),
          "index": np.array([e.index for e in experiences], np.int32),
          "classes_mask": masks,
          "class_counts": np.stack([class_counts(e, n_classes)
                                    for e in experiences]),
          "origin_experience": np.array([_origin(e) for e in experiences],
                                        np.int32)}, sharding))


def read_in_shares(experiences: Sequence[Experience], what: str,
                   in_flight: Any = None) -> list[Experience]:
  """The experiences with their inputs in memory, each host reading a share.

  On several hosts, inputs still in a data source (lazy views such as
  :class:`jaxcl.benchmarks.sources.RecordArray`) are read in ``P`` equal
  shares of the experiences' samples taken together, one per host, and the
  hosts exchange their shares: every host then holds all the inputs, having
  read ``1/P`` of them. A collective (every process calls it), whose read is
  agreed between the hosts (``jaxcl._hosts.read_together``, after
  ``in_flight``). In-memory inputs, and everything on one host, are returned
  as they are: they are read when put on the devices.

  Args:
    experiences: The experiences to read.
    what: What they are, for the error of a host that cannot read its share.
    in_flight: Outputs of programs that may still be running.

  Example:
    >>> import numpy as np
    >>> from jaxcl.benchmarks import Experience
    >>> exp = Experience(x=np.ones((3, 2), np.float32), y=[0, 1, 1],
    ...                  task=[0, 0, 0], index=0, classes=(0, 1),
    ...                  origin="train")
    >>> read_in_shares([exp], "the test stream")[0] is exp  # One host.
    True
  """
  experiences = list(experiences)
  if (jax.process_count() == 1 or
      all(isinstance(e.x, np.ndarray) for e in experiences)):
    return experiences
  starts = np.cumsum([0, *map(len, experiences)]).tolist()
  mine = _hosts.share_of(starts[-1])
  # One dtype on every host, whichever experiences its share spans.
  dtype = np.result_type(*(e.x.dtype for e in experiences))

  def read() -> np.ndarray:
    parts = [np.asarray(e.x[max(mine.start - start, 0):mine.stop - start],
                        dtype)
             for e, start in zip(experiences, starts)
             if mine.start < start + len(e) and start < mine.stop]
    return (np.concatenate(parts) if parts else
            np.zeros((0, *experiences[0].x.shape[1:]), dtype))
  x = _hosts.gather_shares(_hosts.read_together(what, read, in_flight),
                           starts[-1])
  return [dataclasses.replace(e, x=x[start:start + len(e)])
          for e, start in zip(experiences, starts)]
