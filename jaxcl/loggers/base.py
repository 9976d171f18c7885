"""The metric-writer interface, without importing TensorFlow.

`clu.metric_writers.interface.MetricWriter` is importable only through the
`clu.metric_writers` package, whose `__init__` imports TensorFlow (about 5 s).
jaxcl's writers therefore implement the same methods by duck typing: they work
wherever clu expects a writer (`MultiWriter`, `AsyncWriter`, ...), and clu's
writers work wherever jaxcl expects one.
"""

import abc
import os
import pathlib
from collections.abc import Mapping
from typing import Any, Protocol, TextIO

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["MetricWriter", "ForwardingWriter", "open_append", "check_scalars"]


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
