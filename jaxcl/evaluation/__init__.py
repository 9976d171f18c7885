"""Evaluation: Avalanche's metric suite as device reducers and pure functions.

- :mod:`~jaxcl.evaluation.reducers`: ``clu.metrics`` reducers accumulated on
  the device during evaluation (top-k accuracy, per-class counts, confusion
  matrix).
- :mod:`~jaxcl.evaluation.cl_metrics`: stream-level continual-learning
  metrics of the accuracy matrix (forgetting, BWT, forward transfer, ...).
- :mod:`~jaxcl.evaluation.class_metrics`: per-class accuracy, AMCA, mean
  scores, labels repartition.
- :mod:`~jaxcl.evaluation.system`: peak memory and FLOPs.
- :mod:`~jaxcl.evaluation.selection`: ``metrics([...])`` picks what a run
  records.

Example:
  >>> import jaxcl
  >>> selection = jaxcl.evaluation.metrics(["accuracy", "amca", "flops"])
  >>> result = jaxcl.fit(model, strategy, optimizer, bench,
  ...                    metrics=selection)  # doctest: +SKIP
"""

from jaxcl.evaluation.cl_metrics import (accuracy_on_trained_experiences,
                                         clear_metrics, trained_columns,
                                         experience_forgetting,
                                         forward_transfer, stream_accuracy,
                                         stream_bwt, stream_forgetting,
                                         stream_forward_transfer)
from jaxcl.evaluation.class_metrics import (amca, class_accuracy,
                                            labels_repartition,
                                            mean_class_accuracy, mean_scores)
from jaxcl.evaluation.reducers import ClassCounts, ConfusionMatrix, TopKAccuracy
from jaxcl.evaluation.selection import (DEFAULT_METRICS, METRICS,
                                       MetricSelection, metrics)
from jaxcl.evaluation.system import (DiskUsage, disk_usage_kb, flops,
                                     matmul_peak_flops,
                                     named_call, named_call_flops,
                                     peak_device_memory_mb,
                                     peak_host_memory_mb)

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "ClassCounts",
    "ConfusionMatrix",
    "DiskUsage",
    "MetricSelection",
    "TopKAccuracy",
    "accuracy_on_trained_experiences",
    "amca",
    "clear_metrics",
    "class_accuracy",
    "disk_usage_kb",
    "experience_forgetting",
    "flops",
    "forward_transfer",
    "labels_repartition",
    "matmul_peak_flops",
    "mean_class_accuracy",
    "mean_scores",
    "metrics",
    "named_call",
    "named_call_flops",
    "peak_device_memory_mb",
    "peak_host_memory_mb",
    "stream_accuracy",
    "stream_bwt",
    "stream_forgetting",
    "stream_forward_transfer",
    "trained_columns",
]
