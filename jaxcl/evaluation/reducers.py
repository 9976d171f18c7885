"""Device-side metric reducers: ``clu.metrics.Metric`` subclasses.

They are built from one chunk of model outputs with ``from_model_output``,
accumulated with ``merge`` (inside a ``lax.scan``) and turned into values with
``compute``. The shapes depend on the number of classes (and task labels), so
``empty`` takes them as arguments.

Example:
  >>> import jax.numpy as jnp
  >>> logits = jnp.array([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
  >>> labels = jnp.array([1, 2])
  >>> m = TopKAccuracy.from_model_output(logits=logits, labels=labels, k=2)
  >>> float(m.compute())
  1.0
  >>> cm = ConfusionMatrix.from_model_output(logits=logits, labels=labels)
  >>> cm.compute().tolist()
  [[0, 0, 0], [1, 0, 0], [0, 0, 1]]
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from clu import metrics as clu_metrics

__all__ = ["ClassCounts", "ConfusionMatrix", "TopKAccuracy"]


def _mask(labels: jax.Array, mask: jax.Array | None) -> jax.Array:
  return jnp.ones(labels.shape, bool) if mask is None else mask.astype(bool)


@flax.struct.dataclass
class TopKAccuracy(clu_metrics.Average):
  """Fraction of samples whose label is among the ``k`` highest logits.

  Avalanche's ``TopkAccuracy``; with ``k`` at least the number of classes every
  sample counts as correct.
  """

  @classmethod
  def from_model_output(cls, *, logits: jax.Array, labels: jax.Array,
                        k: int = 5, mask: jax.Array | None = None,
                        label_visible: jax.Array | None = None,
                        **_) -> TopKAccuracy:
    """Builds the metric of one batch.

    Args:
      logits: ``[batch, n_classes]``.
      labels: ``int[batch]``.
      k: How many of the highest logits count as a hit (static).
      mask: Optional ``bool[batch]``; False rows are ignored.
      label_visible: Optional ``bool[batch]``: whether a sample's label is
        one the (masked) prediction may output; where not, it never counts
        as a hit, even when fewer than ``k`` classes are visible.

    Returns:
      The batch's metric; ``compute()`` gives the top-``k`` accuracy.
    """
    top = jax.lax.top_k(logits, min(k, logits.shape[-1]))[1]
    hit = jnp.any(top == labels[..., None], axis=-1)
    if label_visible is not None:
      hit = hit & label_visible
    return super().from_model_output(values=hit.astype(jnp.float32),
                                     mask=mask)


@flax.struct.dataclass
class ClassCounts(clu_metrics.Metric):
  """Per task label and class: samples, correct predictions, true-class scores.

  The raw material of per-class accuracy, AMCA (per task, as Avalanche groups
  them by each sample's task label) and mean scores.

  Attributes:
    correct: ``float[n_tasks, n_classes]`` correct top-1 predictions.
    count: ``int[n_tasks, n_classes]`` samples.
    score: ``float[n_tasks, n_classes]`` summed logit of the true class.
  """

  correct: jax.Array
  count: jax.Array
  score: jax.Array

  @classmethod
  def empty(cls, n_classes: int, n_tasks: int = 1) -> ClassCounts:
    """A metric with no samples (``merge`` with it is a no-op)."""
    zeros = jnp.zeros((n_tasks, n_classes))
    return cls(correct=zeros, count=zeros.astype(jnp.int32), score=zeros)

  @classmethod
  def from_model_output(cls, *, logits: jax.Array, labels: jax.Array,
                        task: jax.Array | None = None,
                        mask: jax.Array | None = None, n_tasks: int = 1,
                        **_) -> ClassCounts:
    """Builds the metric of one batch.

    Args:
      logits: ``[batch, n_classes]``.
      labels: ``int[batch]``.
      task: ``int[batch]`` task labels; ignored when ``n_tasks`` is 1.
      mask: Optional ``bool[batch]``; False rows are ignored.
      n_tasks: Number of task labels (static); samples whose task label is
        outside ``[0, n_tasks)``, or whose label is outside the classes, are
        dropped.

    Returns:
      The batch's counts.
    """
    n_classes = logits.shape[-1]
    row = jnp.zeros_like(labels) if task is None or n_tasks == 1 else task
    kept = (_mask(labels, mask) & (row >= 0) & (row < n_tasks)
            & (labels >= 0) & (labels < n_classes))
    # int32: narrower task or label dtypes would wrap around.
    cell = jnp.where(kept, row.astype(jnp.int32) * n_classes
                     + labels.astype(jnp.int32), -1)
    in_cell = cell[..., None] == jnp.arange(n_tasks * n_classes)

    def total(values, dtype):
      # A masked sum, not a scatter-add: GPUs scatter with atomic additions,
      # whose order (and so a float sum) changes from run to run.
      cells = jnp.where(in_cell, values[..., None].astype(dtype), 0)
      return jnp.sum(cells, axis=tuple(range(cell.ndim)), dtype=dtype
                     ).reshape(n_tasks, n_classes)

    hit = jnp.argmax(logits, -1) == labels
    score = jnp.take_along_axis(logits, labels[..., None], -1)[..., 0]
    return cls(correct=total(hit, jnp.float32),
               count=total(jnp.ones_like(labels), jnp.int32),
               score=total(score, jnp.float32))

  def merge(self, other: ClassCounts) -> ClassCounts:
    return jax.tree.map(jnp.add, self, other)

  def compute(self) -> jax.Array:
    """Per-class accuracy ``[n_tasks, n_classes]``; NaN for empty classes."""
    return jnp.where(self.count > 0,
                     self.correct / jnp.maximum(self.count, 1), jnp.nan)


@flax.struct.dataclass
class ConfusionMatrix(clu_metrics.Metric):
  """Counts of (label, top-1 prediction) pairs; rows are labels.

  Avalanche's ``ConfusionMatrix`` (``ConfusionMatrix_Stream`` when accumulated
  over a whole stream).

  Attributes:
    matrix: ``int[n_classes, n_classes]``.
  """

  matrix: jax.Array

  @classmethod
  def empty(cls, n_classes: int) -> ConfusionMatrix:
    """A matrix of zeros (``merge`` with it is a no-op)."""
    return cls(matrix=jnp.zeros((n_classes, n_classes), jnp.int32))

  @classmethod
  def from_model_output(cls, *, logits: jax.Array, labels: jax.Array,
                        mask: jax.Array | None = None, **_) -> ConfusionMatrix:
    """Builds the matrix of one batch (``mask``: optional ``bool[batch]``)."""
    mask = _mask(labels, mask)
    matrix = cls.empty(logits.shape[-1]).matrix
    return cls(matrix=matrix.at[labels, jnp.argmax(logits, -1)].add(
        mask.astype(jnp.int32)))

  def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
    return type(self)(matrix=self.matrix + other.matrix)

  def compute(self) -> jax.Array:
    return self.matrix
