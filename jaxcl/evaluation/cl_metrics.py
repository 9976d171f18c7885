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

import numpy as np

__all__ = [
    "experience_forgetting",
    "forward_transfer",
    "stream_accuracy",
    "stream_bwt",
    "stream_forgetting",
    "stream_forward_transfer",
]


def stream_accuracy(correct: np.ndarray, count: np.ndarray) -> float:
  """Pooled accuracy ``sum(correct) / sum(count)`` (not a mean of accuracies)."""
  total = float(np.sum(count))
  return float(np.sum(correct)) / total if total else float("nan")


def experience_forgetting(R: np.ndarray, current: int) -> np.ndarray:
  """``F_j = R[j, j] - R[current, j]`` for ``j < current``; NaN elsewhere.

  Avalanche's ``ExperienceForgetting``: accuracy just after training on ``j``
  minus accuracy now; undefined for the current and for untrained experiences.
  """
  R = np.asarray(R, np.float64)
  out = np.full(R.shape[1], np.nan)
  j = np.arange(current)
  out[j] = R[j, j] - R[current, j]
  return out


def stream_forgetting(R: np.ndarray, current: int) -> float:
  """Mean experience forgetting over the experiences where it is defined.

  NaN after the first experience (nothing can have been forgotten yet).
  """
  f = experience_forgetting(R, current)[:current]
  return float(np.mean(f)) if f.size else float("nan")


def stream_bwt(R: np.ndarray, current: int) -> float:
  """Backward transfer, Avalanche's ``StreamBWT``: minus stream forgetting."""
  return -stream_forgetting(R, current)


def forward_transfer(R: np.ndarray, initial: np.ndarray,
                     current: int) -> np.ndarray:
  """``FWT_k = R[k-1, k] - initial[k]`` for ``1 <= k <= current``; NaN elsewhere.

  Args:
    R: Accuracy matrix.
    initial: Accuracy on each test experience before any training.
    current: Index of the last trained experience.
  """
  R = np.asarray(R, np.float64)
  out = np.full(R.shape[1], np.nan)
  k = np.arange(1, min(current + 2, R.shape[1]))
  out[k] = R[k - 1, k] - np.asarray(initial, np.float64)[k]
  return out


def stream_forward_transfer(R: np.ndarray, initial: np.ndarray,
                            current: int) -> float:
  """Mean forward transfer over the experiences where it is defined."""
  f = forward_transfer(R, initial, current)
  f = f[~np.isnan(f)]
  return float(np.mean(f)) if f.size else float("nan")
