"""Class-level metrics as pure numpy functions of recorded counts.

The counts come from :class:`jaxcl.evaluation.reducers.ClassCounts` (or
``jaxcl.training.EvalCounts.class_*``): per task label and class, the number
of samples, of correct top-1 predictions and the summed true-class logit.
Definitions follow Avalanche 0.6 (``docs/metrics.md``).

Example:
  >>> import numpy as np
  >>> correct = np.array([[3.0, 0.0, 1.0]])  # one task, three classes
  >>> count = np.array([[4, 0, 2]])
  >>> class_accuracy(correct, count).tolist()
  [[0.75, nan, 0.5]]
  >>> mean_class_accuracy(correct, count).tolist()  # the empty class is skipped
  [0.625]
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = [
    "amca",
    "class_accuracy",
    "labels_repartition",
    "mean_class_accuracy",
    "mean_scores",
]


def class_accuracy(correct: np.ndarray, count: np.ndarray) -> np.ndarray:
  """Per-class accuracy ``correct / count``; NaN for classes without samples.

  Avalanche's ``Top1_ClassAcc_*`` (per task label and class).

  Args:
    correct: Correct top-1 predictions, any shape (e.g. ``[n_tasks,
      n_classes]``).
    count: Samples, same shape.

  Returns:
    float64 accuracies of the same shape.

  Example:
    >>> class_accuracy(np.array([1.0, 0.0]), np.array([2, 0])).tolist()
    [0.5, nan]
  """
  correct = np.asarray(correct, np.float64)
  count = np.asarray(count, np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, correct / count, np.nan)


def _class_mask(name: str, value, shape: tuple[int, ...]) -> np.ndarray:
  """``value`` as a bool mask broadcast to ``shape``, or a named error."""
  mask = np.asarray(value)
  if mask.dtype != bool:
    raise ValueError(
        f"{name} must be a bool mask over [n_tasks, n_classes] (or "
        f"[n_classes]), got dtype {mask.dtype}: {value!r}. For class ids "
        f"(Avalanche's list) pass np.isin(np.arange({shape[-1]}), ids).")
  try:
    return np.broadcast_to(mask, shape)
  except ValueError:
    raise ValueError(f"{name} has shape {mask.shape}; expected one "
                     f"broadcastable to {shape[-2:]} ([n_tasks, n_classes]"
                     ").") from None


def mean_class_accuracy(correct: np.ndarray, count: np.ndarray,
                        tracked: np.ndarray | None = None) -> np.ndarray:
  """Mean accuracy over the tracked classes of each task label.

  Args:
    correct: ``[..., n_tasks, n_classes]`` correct top-1 predictions.
    count: Samples, same shape.
    tracked: Optional ``bool`` mask broadcastable to ``[..., n_tasks,
      n_classes]``: the classes averaged over. A tracked class without
      samples counts as accuracy 0 (as Avalanche's ``ClassAccuracy`` reports
      it). Default: the classes that have samples.

  Returns:
    ``[..., n_tasks]``; NaN for a task label with no tracked class.

  Example:
    >>> mean_class_accuracy(np.array([[1.0, 2.0]]), np.array([[2, 2]])).tolist()
    [0.75]
  """
  count = np.asarray(count)
  tracked = count > 0 if tracked is None else _class_mask(
      "tracked", tracked, count.shape)
  accuracy = np.nan_to_num(class_accuracy(correct, count))
  n = tracked.sum(-1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(n > 0, (accuracy * tracked).sum(-1) / n, np.nan)


def amca(correct: np.ndarray, count: np.ndarray,
         classes: np.ndarray | None = None) -> np.ndarray:
  """Average mean class accuracy after each evaluation, per task label.

  Avalanche's ``Top1_AMCA_Stream``: after evaluation ``s``, the mean over the
  evaluations ``0..s`` of that evaluation's mean class accuracy, separately
  for each task label. Classes are tracked from the first evaluation in which
  they have samples (or, with ``classes``, from the start); a tracked class
  without samples in a later evaluation counts as accuracy 0. A task label
  enters the average from the first evaluation in which it has a tracked
  class.

  Args:
    correct: ``[S, n_tasks, n_classes]``: per evaluation ``s`` (e.g. of the
      test stream after each training experience), correct top-1 predictions
      summed over the evaluated stream.
    count: Samples, same shape.
    classes: Optional ``bool`` mask broadcastable to ``[n_tasks, n_classes]``
      restricting the tracked classes (Avalanche's ``classes`` argument). A
      1-D mask applies to every task label, which is then tracked from the
      start; Avalanche reads a plain class list as task 0's (for that, pass
      ``[n_tasks, n_classes]`` with the other rows False).

  Returns:
    ``[S, n_tasks]`` running AMCA; NaN where a task label is not yet tracked.

  Example:
    >>> correct = np.array([[[2.0, 0.0]], [[2.0, 1.0]]])  # 2 evaluations
    >>> count = np.array([[[2, 2]], [[2, 2]]])
    >>> amca(correct, count)[:, 0].tolist()  # mean of 0.5 and 0.75
    [0.5, 0.625]
  """
  count = np.asarray(count)
  if classes is None:
    tracked = np.logical_or.accumulate(count > 0, axis=0)
  else:
    tracked = _class_mask("classes", classes, count.shape)
  mca = mean_class_accuracy(correct, count, tracked)
  present = ~np.isnan(mca)
  total = np.cumsum(np.where(present, mca, 0.0), axis=0)
  n = np.cumsum(present, axis=0)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(n > 0, total / n, np.nan)


def mean_scores(score: np.ndarray, count: np.ndarray, new_classes: np.ndarray,
                old_classes: np.ndarray) -> tuple[float, float]:
  """Mean logit of the true class over samples of new and of old classes.

  Avalanche's ``MeanScores`` (IL2M, Belouadah & Popescu 2019): per sample the
  logit of its true class, averaged (sample-weighted) over the samples whose
  class is new (of the experience just trained) and over those whose class is
  old.

  Args:
    score: ``[n_classes]`` summed true-class logits (sum any task or
      experience axes first).
    count: ``[n_classes]`` samples.
    new_classes: ``bool[n_classes]``.
    old_classes: ``bool[n_classes]``.

  Returns:
    ``(new, old)``; NaN for a group without samples.

  Example:
    >>> mean_scores(np.array([6.0, 1.0, 4.0]), np.array([2, 1, 2]),
    ...             np.array([False, False, True]),
    ...             np.array([True, True, False]))
    (2.0, 2.3333333333333335)
  """
  score = np.asarray(score, np.float64)
  count = np.asarray(count, np.float64)

  def mean(mask):
    n = count[mask].sum()
    return float(score[mask].sum() / n) if n else float("nan")

  return (mean(np.asarray(new_classes, bool)),
          mean(np.asarray(old_classes, bool)))


def labels_repartition(experiences: Iterable, n_classes: int, *,
                       by_task: bool = False) -> np.ndarray:
  """Samples of each class in each experience (host side).

  Avalanche's ``Repartition`` (``labels_repartition_metrics``), computed from
  the data rather than from the mini-batches seen in training.

  Args:
    experiences: Experiences with integer ``y`` (and ``task``) arrays, e.g. a
      :class:`jaxcl.benchmarks.Stream`.
    n_classes: Number of classes.
    by_task: Also split by task label, as Avalanche does.

  Returns:
    ``int[T, n_classes]``, or ``int[T, n_tasks, n_classes]`` with
    ``by_task``.

  Example:
    >>> from types import SimpleNamespace as E
    >>> exps = [E(y=np.array([0, 0, 1]), task=np.zeros(3, int)),
    ...         E(y=np.array([2]), task=np.zeros(1, int))]
    >>> labels_repartition(exps, 3).tolist()
    [[2, 1, 0], [0, 0, 1]]
  """
  experiences = list(experiences)
  if not by_task:
    return np.stack([np.bincount(np.asarray(e.y), minlength=n_classes)
                     for e in experiences])
  n_tasks = 1 + max((int(np.max(e.task)) for e in experiences if len(e.task)),
                    default=0)
  out = np.zeros((len(experiences), n_tasks, n_classes), np.int64)
  for i, e in enumerate(experiences):
    np.add.at(out[i], (np.asarray(e.task), np.asarray(e.y)), 1)
  return out
