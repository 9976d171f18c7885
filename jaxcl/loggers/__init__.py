"""Metric writers (clu's `MetricWriter` interface), text tables and plots.

All writers here have the methods of `clu.metric_writers.MetricWriter`, so
they mix freely with clu's writers. Importing this package imports neither
TensorFlow nor matplotlib. TensorBoard files are written by
`EventFileWriter`, in-process and without TensorFlow, with the same events as
clu's `SummaryWriter`; `tensorboard_writer` (clu's own `SummaryWriter`, for
remote file systems or users who want TensorFlow's writer) imports
TensorFlow in a child process. Matplotlib is imported when a plot is drawn.

Metric names used throughout jaxcl:

* `train/<metric>`, e.g. `train/loss`, `train/accuracy`. Step: the epoch
  count over the stream.
* `eval/exp_<jjj>/<metric>`, the metric on experience `jjj` (3 digits,
  0-based), e.g. `eval/exp_003/accuracy`.
* `periodic/<stream>/<metric>`, periodic evaluation inside an experience
  (`fit(periodic_eval=...)`). Step: the optimizer step.
* `minibatch/loss`, `minibatch/accuracy`, every optimizer step's values (the
  opt-in `minibatch` metric group). Step: the optimizer step.
* `eval/stream/<metric>`, the metric on the whole evaluation stream, e.g.
  `eval/stream/accuracy`, `eval/stream/loss`, `eval/stream/forgetting`,
  `eval/stream/bwt`; and the images `eval/stream/accuracy_matrix`,
  `eval/stream/accuracy_curves`, `eval/stream/confusion_matrix`.

Step of `eval/...` values: the index (0-based) of the training experience just
finished.

Example:
    >>> from jaxcl import loggers
    >>> writer = loggers.create_writers("/tmp/jaxcl_example/run")
    >>> writer.write_scalars(0, {"eval/exp_000/accuracy": 0.91,
    ...                          "eval/stream/accuracy": 0.91})
    step 0 | eval/exp_000/accuracy 0.9100 | eval/stream/accuracy 0.9100
    >>> writer.close()
"""

from jaxcl.loggers.base import MetricWriter
from jaxcl.loggers.combine import AsyncWriter, MultiWriter
from jaxcl.loggers.event_file import EventFileWriter
from jaxcl.loggers.factory import create_writers
from jaxcl.loggers.files import CsvWriter, JsonlWriter
from jaxcl.loggers.formatting import (format_accuracy_matrix,
                                      format_metrics_table,
                                      format_swept_value, json_safe)
from jaxcl.loggers.plots import (
    plot_accuracy_curves,
    plot_accuracy_matrix,
    plot_confusion_matrix,
    save_png,
    write_result_images,
)
from jaxcl.loggers.samples import image_grid, write_image_samples
from jaxcl.loggers.tensorboard import tensorboard_writer
from jaxcl.loggers.text import ConsoleWriter, TextLogWriter
from jaxcl.loggers.wandb_writer import WandbWriter

__all__ = [
    "MetricWriter",
    "MultiWriter",
    "AsyncWriter",
    "create_writers",
    "EventFileWriter",
    "tensorboard_writer",
    "JsonlWriter",
    "WandbWriter",
    "CsvWriter",
    "ConsoleWriter",
    "TextLogWriter",
    "format_accuracy_matrix",
    "format_metrics_table",
    "format_swept_value",
    "json_safe",
    "plot_accuracy_matrix",
    "plot_accuracy_curves",
    "plot_confusion_matrix",
    "save_png",
    "write_result_images",
    "image_grid",
    "write_image_samples",
]
