"""Continual-learning metrics as pure functions of what evaluation recorded.

Definitions follow Avalanche (see ``docs/metrics.md``). ``R`` is the accuracy
matrix: ``R[i, j]`` is the accuracy on test experience ``j`` after training
experience ``i``; rows not yet trained are NaN.

Example:
  >>> import numpy as np
  >>> R = np.array([[0.9, 0.1], [0.5, 0.8]])
  >>> float(stream_forgetting(R, 1))  # 0.9 - 0.5
  0.4
  >>> float(stream_bwt(R, 1))
  -0.4
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "accuracy_on_trained_experiences",
    "clear_metrics",
    "trained_columns",
    "experience_forgetting",
    "forward_transfer",
    "stream_accuracy",
    "stream_bwt",
    "stream_forgetting",
    "stream_forward_transfer",
]


def stream_accuracy(correct: np.ndarray, count: np.ndarray) -> float:
  """Pooled accuracy ``sum(correct) / sum(count)`` (not a mean of accuracies)."""
  if np.shape(correct) != np.shape(count):
    raise ValueError(f"correct and count must have the same shape, got "
                     f"{np.shape(correct)} and {np.shape(count)}.")
  total = float(np.sum(count))
  return float(np.sum(correct)) / total if total else float("nan")


def trained_columns(train_stream, n_test: int) -> np.ndarray:
  """The test experience each train experience trains, or -1 for none.

  A train experience trains its ``trained_column``: the test experience of
  its first sample for data-incremental chunks, the original experience of
  online mini-experiences, or else its own index (anything else without
  that attribute: its index); columns past the test stream (e.g.
  new-instances streams, whose test stream is one experience) are -1.

  Example:
    >>> trained_columns([type("E", (), {"index": i})() for i in range(3)], 1)
    array([ 0, -1, -1])
  """
  cols = np.array([getattr(e, "trained_column", e.index)
                   for e in train_stream], np.int64)
  return np.where(cols < n_test, cols, -1)


def _check_current(current: int, rows: int | None) -> int:
  """``current`` if it indexes a train experience (of ``rows``, if known)."""
  if (isinstance(current, bool) or not isinstance(current, numbers.Integral)
      or current < 0 or (rows is not None and current >= rows)):
    bound = "" if rows is None else f", below {rows} (the rows of R)"
    raise ValueError(f"current must be the index of the last trained "
                     f"experience: an integer >= 0{bound}; got {current!r}.")
  return int(current)


def _columns(R: np.ndarray, columns: np.ndarray | None) -> np.ndarray:
  if columns is None:
    n_rows, n_cols = R.shape
    columns = np.arange(n_rows)
    return np.where(columns < n_cols, columns, -1)
  return np.asarray(columns)


def accuracy_on_trained_experiences(correct: np.ndarray, count: np.ndarray,
                                    current: int,
                                    columns: np.ndarray | None = None) -> float:
  """Pooled accuracy over the test experiences trained so far only.

  Avalanche's ``Accuracy_On_Trained_Experiences`` (``accuracy_metrics(
  trained_experience=True)``): like :func:`stream_accuracy`, restricted to the
  experiences trained up to ``current``.

  Args:
    correct: Correct predictions per test experience.
    count: Samples per test experience.
    current: Index of the last trained experience.
    columns: Test column of each train experience (see :func:`trained_columns`);
      default: train experience ``i`` trains test experience ``i``.

  Example:
    >>> accuracy_on_trained_experiences([9, 1, 0], [10, 10, 80], 1)
    0.5
  """
  correct, count = np.asarray(correct), np.asarray(count)
  current = _check_current(
      current, None if columns is None else len(np.asarray(columns)))
  if columns is None:
    columns = np.arange(current + 1)
  trained = np.unique(np.asarray(columns)[:current + 1])
  trained = trained[(trained >= 0) & (trained < len(count))]
  return stream_accuracy(correct[trained], count[trained])


def experience_forgetting(R: np.ndarray, current: int,
                          columns: np.ndarray | None = None) -> np.ndarray:
  """``F_j = R[r_j, j] - R[current, j]`` where trained; NaN elsewhere.

  Avalanche's ``ExperienceForgetting``: accuracy just after training on ``j``
  minus accuracy now. ``r_j`` is the last train experience up to ``current``
  that trains test experience ``j`` (``r_j = j`` for ordinary streams; for
  online streams the last mini-experience of ``j``); it is undefined for the
  experience being trained and for untrained ones.

  Args:
    R: Accuracy matrix ``[train experiences, test experiences]``.
    current: Index of the last trained experience.
    columns: Test column of each train experience (see :func:`trained_columns`).
  """
  R = np.asarray(R, np.float64)
  current = _check_current(current, len(R))
  columns = _columns(R, columns)
  out = np.full(R.shape[1], np.nan)
  for j in range(R.shape[1]):
    rows = np.flatnonzero(columns[:current + 1] == j)
    if not rows.size or rows[-1] >= current or columns[current] == j:
      continue
    # With an evaluation schedule, "just after training j" is the first
    # evaluated row from the end of j on.
    evaluated = np.flatnonzero(~np.isnan(R[rows[-1]:current, j]))
    if evaluated.size:
      out[j] = R[rows[-1] + evaluated[0], j] - R[current, j]
  return out


def stream_forgetting(R: np.ndarray, current: int,
                      columns: np.ndarray | None = None) -> float:
  """Mean experience forgetting over the experiences where it is defined.

  NaN after the first experience (nothing can have been forgotten yet).
  """
  f = experience_forgetting(R, current, columns)
  f = f[~np.isnan(f)]
  return float(np.mean(f)) if f.size else float("nan")


def stream_bwt(R: np.ndarray, current: int,
               columns: np.ndarray | None = None) -> float:
  """Backward transfer, Avalanche's ``StreamBWT``: minus stream forgetting."""
  return -stream_forgetting(R, current, columns)


def forward_transfer(R: np.ndarray, initial: np.ndarray, current: int,
                     columns: np.ndarray | None = None) -> np.ndarray:
  """``FWT_k = R[f_k - 1, k] - initial[k]``; NaN where undefined.

  ``f_k`` is the first train experience that trains test experience ``k``
  (``k`` itself for ordinary streams); defined when ``1 <= f_k <= current + 1``.

  Args:
    R: Accuracy matrix.
    initial: Accuracy on each test experience before any training.
    current: Index of the last trained experience.
    columns: Test column of each train experience (see :func:`trained_columns`).
  """
  R = np.asarray(R, np.float64)
  current = _check_current(current, len(R))
  columns = _columns(R, columns)
  initial = np.asarray(initial, np.float64)
  out = np.full(R.shape[1], np.nan)
  for k in range(R.shape[1]):
    first = np.flatnonzero(columns == k)
    if not first.size or not 1 <= first[0] <= current + 1:
      continue
    # The last evaluation before k's training starts (rows may be skipped).
    evaluated = np.flatnonzero(~np.isnan(R[:first[0], k]))
    if evaluated.size:
      out[k] = R[evaluated[-1], k] - initial[k]
  return out


def stream_forward_transfer(R: np.ndarray, initial: np.ndarray, current: int,
                            columns: np.ndarray | None = None) -> float:
  """Mean forward transfer over the experiences where it is defined."""
  f = forward_transfer(R, initial, current, columns)
  f = f[~np.isnan(f)]
  return float(np.mean(f)) if f.size else float("nan")


def clear_metrics(R: np.ndarray) -> dict[str, float]:
  """CLEAR's five summaries of a square accuracy matrix (Lin et al., 2021).

  Avalanche's ``CLEARMetric``, for a stream whose test experience ``j`` is
  the same period as train experience ``j`` (:func:`jaxcl.benchmarks.clear`):
  ``in_domain`` is the mean of the diagonal, ``next_domain`` of the
  superdiagonal (the next period, CLEAR's streaming protocol),
  ``accuracy`` of the diagonal and everything below it,
  ``backward_transfer`` of everything below and ``forward_transfer`` of
  everything above. Means of the entries, unweighted; NaN (not evaluated)
  entries make their means NaN, and a 1 x 1 matrix has no off-diagonal.

  Args:
    R: Accuracy matrix, ``R[i, j]`` the accuracy on period ``j`` after
      training period ``i`` (``Result.accuracy_matrix``).

  Returns:
    ``{"in_domain", "next_domain", "accuracy", "backward_transfer",
    "forward_transfer"}``.

  Example:
    >>> R = np.array([[0.8, 0.6], [0.7, 0.9]])
    >>> m = clear_metrics(R)
    >>> round(m["in_domain"], 3), m["next_domain"], round(m["accuracy"], 3)
    (0.85, 0.6, 0.8)
  """
  R = np.asarray(R, np.float64)
  if R.ndim != 2 or R.shape[0] != R.shape[1] or not R.size:
    raise ValueError(f"R must be a square accuracy matrix (one test "
                     f"experience per train experience), got shape "
                     f"{R.shape}.")
  below = np.tril_indices_from(R, -1)
  above = np.triu_indices_from(R, 1)

  def mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else float("nan")

  return {"in_domain": mean(np.diag(R)),
          "next_domain": mean(np.diag(R, 1)),
          "accuracy": mean(R[np.tril_indices_from(R)]),
          "backward_transfer": mean(R[below]),
          "forward_transfer": mean(R[above])}
