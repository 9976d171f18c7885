"""Choosing metrics declaratively, like Avalanche's ``EvaluationPlugin``.

``metrics([...])`` names the metric groups a run records; ``fit(...,
metrics=...)`` takes the result (or the list itself). Every group is cheap
(sums gathered in the one evaluation pass, host-side arithmetic, XLA's cost
analysis of loop bodies of the programs already traced), so the default is
all of them but two, opt-in as in Avalanche: ``minibatch`` (one entry per
optimizer step is more than most runs want written) and ``disk_usage``
(it walks a folder tree of any size after every experience).

Example:
  >>> selection = metrics(["accuracy", "topk_accuracy", "amca"], top_k=3)
  >>> "amca" in selection, "flops" in selection
  (True, False)
  >>> metrics().names == DEFAULT_METRICS
  True
  >>> "minibatch" in metrics([*DEFAULT_METRICS, "minibatch"])
  True
  >>> metrics(["accuracy", "disk_usage"], disk_paths="runs").disk_paths
  ('runs',)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

from jaxcl import _validation

__all__ = ["DEFAULT_METRICS", "METRICS", "MetricSelection", "metrics"]

# Group name -> what it records (Result.metrics keys or Result fields).
METRICS: dict[str, str] = {
    "accuracy": "stream_accuracy (pooled) and train_accuracy (per epoch); the "
                "accuracy matrix is always recorded",
    "loss": "stream_loss and train_loss",
    "topk_accuracy": "top<k>_accuracy, pooled over the test stream",
    "trained_experience_accuracy": "accuracy_on_trained_experiences, pooled "
                                   "over the test experiences trained so far",
    "forgetting": "forgetting (stream forgetting)",
    "bwt": "bwt (backward transfer, minus forgetting)",
    "forward_transfer": "forward_transfer (needs eval_before_training)",
    "class_accuracy": "Result.class_accuracy and task_class_accuracy: "
                      "per-class (and per task and class) accuracy on the "
                      "test stream after the last experience",
    "amca": "amca and mean_class_accuracy",
    "confusion_matrix": "Result.confusion_matrix over the test stream",
    "mean_scores": "mean_score_new and mean_score_old: mean true-class logit "
                   "of new and old classes",
    "labels_repartition": "Result.labels_repartition: samples per class in "
                          "each training experience",
    "timing": "train_time_s and eval_time_s per experience",
    "memory": "peak_host_memory_mb and peak_device_memory_mb",
    "cpu_usage": "train_cpu_usage and eval_cpu_usage: the process's CPU "
                 "time over wall time, in percent (100 per busy core)",
    "flops": "train_flops (one optimizer step) and eval_flops (one sample)",
    "minibatch": "Result.minibatch: the loss and accuracy of every optimizer "
                 "step (opt-in)",
    "disk_usage": "disk_usage_kb: the size in KB of the files under the "
                  "selection's disk_paths (default: the working directory) "
                  "after each experience (opt-in)",
}

# The groups recorded unless fit(metrics=...) says otherwise.
DEFAULT_METRICS: frozenset[str] = frozenset(METRICS) - {"minibatch",
                                                        "disk_usage"}


@dataclasses.dataclass(frozen=True)
class MetricSelection:
  """The metric groups a run records.

  Attributes:
    names: Group names, keys of :data:`METRICS`.
    top_k: The ``k`` of ``topk_accuracy``.
    disk_paths: The files and folders ``disk_usage`` measures (None: the
      working directory).
  """

  names: frozenset[str]
  top_k: int = 5
  disk_paths: tuple[str, ...] | None = None

  def __post_init__(self):
    # Built directly too (it is public): a misspelt group would be ignored.
    if isinstance(self.names, str):
      raise TypeError(f"metrics names must be a list of names, got the "
                      f"string {self.names!r}; write [{self.names!r}].")
    names = tuple(self.names)  # An iterator is read once.
    for name in names:
      _validation.check_choice("metric", name, METRICS)
    object.__setattr__(self, "top_k",
                       _validation.check_positive_int("top_k", self.top_k))
    object.__setattr__(self, "names", frozenset(names))
    if self.top_k != 5 and "topk_accuracy" not in self.names:
      raise ValueError(f"top_k={self.top_k} sets the k of 'topk_accuracy', "
                       "which is not selected; expected it among the names "
                       "(or no top_k).")
    if self.disk_paths is not None:
      object.__setattr__(self, "disk_paths",
                         _check_disk_paths(self.disk_paths))
      if "disk_usage" not in self.names:
        raise ValueError(f"disk_paths={list(self.disk_paths)} are what "
                         "'disk_usage' measures, which is not selected; "
                         "expected it among the names (or no disk_paths).")

  def __contains__(self, name: str) -> bool:
    return name in self.names


def _check_disk_paths(paths) -> tuple[str, ...]:
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  try:
    paths = list(paths)
  except TypeError:
    paths = [paths]
  bad = [p for p in paths
         if not isinstance(p, (str, os.PathLike)) or not os.fspath(p)]
  if bad or not paths:
    raise TypeError(f"disk_paths must be a path or a non-empty list of paths "
                    f"(non-empty str or os.PathLike), got "
                    f"{bad[0] if bad else paths!r}.")
  return tuple(os.fspath(p) for p in paths)


def metrics(names: Iterable[str] | MetricSelection | None = None, *,
            top_k: int | None = None,
            disk_paths: Iterable[str | os.PathLike[str]] | None = None
            ) -> MetricSelection:
  """Selects metric groups by name (default: :data:`DEFAULT_METRICS`).

  Args:
    names: Group names (see :data:`METRICS`), or a selection (returned as
      is, with ``top_k`` replaced if given), or None for the default ones
      (all but ``minibatch`` and ``disk_usage``).
    top_k: The ``k`` of ``topk_accuracy`` (Avalanche's ``top_k``; 5 unless
      given).
    disk_paths: What ``disk_usage`` measures: a path or a list of paths
      (Avalanche's ``paths_to_monitor``; the working directory unless
      given).

  Returns:
    A :class:`MetricSelection` for ``fit(..., metrics=...)``.

  Raises:
    ValueError: For an unknown name or a non-positive ``top_k``.

  Example:
    >>> metrics(["accuracy", "confusion_matrix"]).names == frozenset(
    ...     {"accuracy", "confusion_matrix"})
    True
  """
  if isinstance(names, MetricSelection):
    changes = {k: v for k, v in (("top_k", top_k), ("disk_paths", disk_paths))
               if v is not None}
    return dataclasses.replace(names, **changes) if changes else names
  if names is not None and not isinstance(names, str):
    names = list(names)
  return MetricSelection(DEFAULT_METRICS if names is None else names,
                         5 if top_k is None else top_k, disk_paths)
