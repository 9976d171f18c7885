"""The metric-writer interface, without importing TensorFlow.

`clu.metric_writers.interface.MetricWriter` is importable only through the
`clu.metric_writers` package, whose `__init__` imports TensorFlow (about 5 s).
jaxcl's writers therefore implement the same methods by duck typing: they work
wherever clu expects a writer (`MultiWriter`, `AsyncWriter`, ...), and clu's
writers work wherever jaxcl expects one.
"""

import abc
import operator
import os
import re
import pathlib
from collections.abc import Mapping
from typing import Any, Protocol, TextIO

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["MetricWriter", "ForwardingWriter", "open_append", "check_scalars",
           "check_step", "is_remote_path"]

# A URL scheme of two or more letters ("C:/" is a Windows drive); a
# pathlib.Path collapses "gs://bucket" to "gs:/bucket".
_REMOTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


def is_remote_path(path: str | os.PathLike[str]) -> bool:
    """Whether `path` names a remote file system (`gs://...`, `s3://...`).

    Example:
        >>> import pathlib
        >>> (is_remote_path("gs://bucket/run"), is_remote_path("runs/x"),
        ...  is_remote_path(pathlib.Path("gs://bucket/run")))
        (True, False, True)
    """
    return bool(_REMOTE.match(os.fspath(path)))


def check_step(step: Any) -> int:
    """`step` as an int, or a `ValueError` (a float or string is not a step).

    Example:
        >>> check_step(3)
        3
        >>> check_step(2.7)
        Traceback (most recent call last):
        ValueError: step must be an integer, got 2.7.
    """
    try:
        return operator.index(step)
    except TypeError:
        raise ValueError(f"step must be an integer, got {step!r}.") from None


def check_scalars(scalars: Mapping[str, ArrayLike]) -> None:
    """Raises unless every value is a real number (a 0-d array counts).

    Writers convert values their own way (`float(v)` takes a 1-element
    array, TensorBoard's scalar does not): combiners check once, so that no
    writer records a value another refuses.

    Example:
        >>> check_scalars({"train/loss": 0.5})
        >>> check_scalars({"train/loss": [0.5]})
        Traceback (most recent call last):
        ValueError: scalars['train/loss'] must be a real number (a scalar), got [0.5].
    """
    for name, value in scalars.items():
        if name == "step":  # The JSONL line's own field.
            raise ValueError("scalars must not be named 'step' (each line "
                             "records its step under that name).")
        array = np.asarray(value)
        if array.shape != () or not np.can_cast(array.dtype, np.float64):
            raise ValueError(
                f"scalars[{name!r}] must be a real number (a scalar), got {value!r}.")


class MetricWriter(Protocol):
    """Structural twin of clu's `MetricWriter` (clu 0.0.12).

    As a protocol it types any clu-compatible writer. Subclassed explicitly, it
    is a base class whose methods do nothing, so a writer overrides only what
    it records; `close` flushes by default.

    Example:
        >>> class PrintScalars(MetricWriter):
        ...     def write_scalars(self, step, scalars):
        ...         print(step, dict(scalars))
        >>> PrintScalars().write_scalars(3, {"train/loss": 0.5})
        3 {'train/loss': 0.5}
    """

    def write_summaries(
        self,
        step: int,
        values: Mapping[str, ArrayLike],
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Writes raw tensor summaries (TensorBoard-specific)."""
        del step, values, metadata

    def write_scalars(self, step: int, scalars: Mapping[str, ArrayLike]) -> None:
        """Writes scalar values, keyed by metric name, for `step`."""
        del step, scalars

    def write_images(self, step: int, images: Mapping[str, ArrayLike]) -> None:
        """Writes images of shape [N, H, W, C] or [H, W, C] for `step`."""
        del step, images

    def write_videos(self, step: int, videos: Mapping[str, ArrayLike]) -> None:
        """Writes videos of shape [N, T, H, W, C] or [T, H, W, C] for `step`."""
        del step, videos

    def write_audios(self, step: int, audios: Mapping[str, ArrayLike], *, sample_rate: int) -> None:
        """Writes audio clips of shape [N, T, C] for `step`."""
        del step, audios, sample_rate

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        """Writes text snippets, keyed by name, for `step`."""
        del step, texts

    def write_histograms(
        self,
        step: int,
        arrays: Mapping[str, ArrayLike],
        num_buckets: Mapping[str, int] | None = None,
    ) -> None:
        """Writes histograms of the given arrays for `step`."""
        del step, arrays, num_buckets

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        """Writes the hyperparameters of the run (called once)."""
        del hparams

    def flush(self) -> None:
        """Writes out anything buffered."""

    def close(self) -> None:
        """Flushes and releases resources; the writer is unusable afterwards."""
        self.flush()


class ForwardingWriter(MetricWriter, abc.ABC):
    """Base for writers that hand every call on to other writers.

    Subclasses implement `_forward(method, *args, **kwargs)`, which receives
    the name of the `MetricWriter` method called and its arguments.

    Example:
        >>> class Echo(ForwardingWriter):
        ...     def _forward(self, method, *args, **kwargs):
        ...         print(method, args)
        >>> Echo().write_scalars(0, {"train/loss": 1.0})
        write_scalars (0, {'train/loss': 1.0})
    """

    @abc.abstractmethod
    def _forward(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Receives every call as its method name and arguments."""

    def write_summaries(
        self,
        step: int,
        values: Mapping[str, ArrayLike],
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self._forward("write_summaries", step, values, metadata)

    def write_scalars(self, step: int, scalars: Mapping[str, ArrayLike]) -> None:
        self._forward("write_scalars", step, scalars)

    def write_images(self, step: int, images: Mapping[str, ArrayLike]) -> None:
        self._forward("write_images", step, images)

    def write_videos(self, step: int, videos: Mapping[str, ArrayLike]) -> None:
        self._forward("write_videos", step, videos)

    def write_audios(self, step: int, audios: Mapping[str, ArrayLike], *, sample_rate: int) -> None:
        self._forward("write_audios", step, audios, sample_rate=sample_rate)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        self._forward("write_texts", step, texts)

    def write_histograms(
        self,
        step: int,
        arrays: Mapping[str, ArrayLike],
        num_buckets: Mapping[str, int] | None = None,
    ) -> None:
        self._forward("write_histograms", step, arrays, num_buckets)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self._forward("write_hparams", hparams)

    def flush(self) -> None:
        self._forward("flush")

    def close(self) -> None:
        self._forward("close")


def open_append(path: str | os.PathLike[str]) -> TextIO:
    """Opens a UTF-8 text file for appending, creating its parent directories.

    Newlines are not translated, so the same handle suits the `csv` module.

    Example:
        >>> with open_append("/tmp/jaxcl_example/log.txt") as f:
        ...     _ = f.write("hello\\n")
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a", encoding="utf-8", newline="")
