"""Machine-readable writers: JSON Lines and Avalanche-style CSV files."""

import csv
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any, TextIO

import numpy as np
from numpy.typing import ArrayLike

from jaxcl.loggers.base import (MetricWriter, check_scalars, check_step,
                                open_append)

__all__ = ["JsonlWriter", "CsvWriter"]


def _to_json(value: Any) -> Any:
    """`json.dumps` fallback: arrays and NumPy scalars as lists/numbers,
    mappings (`ConfigDict`, `FrozenDict`, ...) as objects, else `str`."""
    if hasattr(value, "__array__"):
        return np.asarray(value).tolist()
    if isinstance(value, Mapping) or hasattr(value, "items"):
        return dict(value.items())
    return str(value)


class JsonlWriter(MetricWriter):
    """Appends one JSON object per call to a JSON Lines file.

    Each `write_scalars` call becomes `{"step": step, name: value, ...}` with
    float values (NaN is written as the `NaN` literal, which Python's `json`
    reads back); each `write_texts` call the same with string values;
    `write_hparams` becomes `{"hparams": {...}}`. Images, videos, audio,
    histograms and raw summaries are ignored. Each call's line reaches the
    file before the call returns (as Avalanche's CSV logger flushes every
    row), so a killed run keeps what it wrote.

    Example:
        >>> writer = JsonlWriter("/tmp/jaxcl_example/metrics.jsonl")
        >>> writer.write_scalars(0, {"eval/stream/accuracy": 0.9})
        >>> writer.close()
    """

    def __init__(self, path: str | os.PathLike[str]):
        """Opens `path` for appending, creating its parent directories."""
        self._file = open_append(path)

    def _write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(record, default=_to_json) + "\n")
        self._file.flush()

    def write_scalars(self, step: int, scalars: Mapping[str, ArrayLike]) -> None:
        check_scalars(scalars)
        self._write({"step": check_step(step),
                     **{k: float(v) for k, v in scalars.items()}})

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        if "step" in texts:
            raise ValueError("texts must not be named 'step' (each line "
                             "records its step under that name).")
        self._write({"step": check_step(step),
                     **{k: str(v) for k, v in texts.items()}})

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self._write({"hparams": dict(hparams)})

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _open_csv(path: pathlib.Path) -> tuple[TextIO, Any]:
    """Opens a CSV file for appending; writes the header if it is new or empty."""
    file = open_append(path)
    writer = csv.writer(file)
    if file.tell() == 0:
        writer.writerow(("step", "metric", "value"))
        file.flush()
    return file, writer


class CsvWriter(MetricWriter):
    """Writes scalars to Avalanche's two CSV files in `logdir`.

    Scalars named `train/...` and `minibatch/...` go to
    `training_results.csv`, all others to `eval_results.csv`. Both are in long format, one row per value under the
    header `step,metric,value`; existing files are appended to. Only scalars
    are written, each call's rows reaching the files before it returns.

    Example:
        >>> writer = CsvWriter("/tmp/jaxcl_example")
        >>> writer.write_scalars(10, {"train/loss": 0.25})
        >>> writer.close()
    """

    def __init__(self, logdir: str | os.PathLike[str]):
        """Opens both files for appending, creating `logdir` if needed."""
        logdir = pathlib.Path(logdir)
        self._train_file, self._train = _open_csv(logdir / "training_results.csv")
        self._eval_file, self._eval = _open_csv(logdir / "eval_results.csv")

    def write_scalars(self, step: int, scalars: Mapping[str, ArrayLike]) -> None:
        step = check_step(step)
        for name, value in scalars.items():
            training = name.startswith(("train/", "minibatch/"))
            writer = self._train if training else self._eval
            writer.writerow((step, name, float(value)))
        self.flush()

    def flush(self) -> None:
        self._train_file.flush()
        self._eval_file.flush()

    def close(self) -> None:
        self._train_file.close()
        self._eval_file.close()
