"""Human-readable writers: one line per call, to the console or a log file."""

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from numpy.typing import ArrayLike

from jaxcl.loggers.base import MetricWriter, open_append
from jaxcl.loggers.formatting import format_scalars

__all__ = ["ConsoleWriter", "TextLogWriter"]


def _check_skip(skip: Sequence[str]) -> tuple[str, ...]:
    """`skip` as a tuple of prefixes, or a clear error."""
    if isinstance(skip, str):  # Each character would be a prefix.
        raise TypeError(f"skip must be a sequence of name prefixes, got "
                        f"the string {skip!r}; write [{skip!r}].")
    if not isinstance(skip, Iterable) or not all(
            isinstance(prefix, str) for prefix in skip):
        raise TypeError(f"skip must be a sequence of name prefixes "
                        f"(strings), got {skip!r}.")
    return tuple(skip)


class _LineWriter(MetricWriter):
    """Writes scalars, texts and hparams as lines; ignores arrays."""

    def __init__(self, stream: TextIO | None, skip: tuple[str, ...]):
        self._stream, self._skip = stream, skip

    def _emit(self, line: str) -> None:
        # `file=None` is the current `sys.stdout`, so notebooks, which replace
        # it per cell, and pytest's capture both see the output. Flushing each
        # line shows progress live and keeps log files complete after a crash.
        print(line, file=self._stream, flush=True)

    def write_scalars(self, step: int, scalars: Mapping[str, ArrayLike]) -> None:
        shown = {name: value for name, value in scalars.items()
                 if not name.startswith(self._skip)}
        if shown:
            self._emit(format_scalars(step, shown))

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        for name, text in texts.items():
            self._emit(f"step {step} | {name}: {text}")

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self._emit(" | ".join(["hparams", *(f"{k} {v}" for k, v in hparams.items())]))


class ConsoleWriter(_LineWriter):
    """Prints metrics to a stream, by default the current `sys.stdout`.

    Output goes through `print` rather than `logging`, so it shows in notebooks
    without any logging setup. Images, videos, audio, histograms and raw
    summaries are ignored.

    Example:
        >>> ConsoleWriter().write_scalars(3, {"eval/stream/accuracy": 0.912})
        step 3 | eval/stream/accuracy 0.9120
        >>> ConsoleWriter(skip=["minibatch/"]).write_scalars(
        ...     7, {"minibatch/loss": 0.3})
    """

    def __init__(self, stream: TextIO | None = None, skip: Sequence[str] = ()):
        """Creates the writer.

        Args:
            stream: Text stream to print to. `None` means `sys.stdout`, looked
                up at every write. The stream is never closed by the writer.
            skip: Prefixes of scalar names not to print (a write left with
                none prints no line).
        """
        super().__init__(stream, _check_skip(skip))


class TextLogWriter(_LineWriter):
    """Appends the lines `ConsoleWriter` would print to a text file.

    Example:
        >>> writer = TextLogWriter("/tmp/jaxcl_example/log.txt")
        >>> writer.write_scalars(3, {"eval/stream/accuracy": 0.912})
        >>> writer.close()
    """

    def __init__(self, path: str | os.PathLike[str], skip: Sequence[str] = ()):
        """Opens `path` for appending, creating its parent directories.

        Args:
            path: The log file.
            skip: Prefixes of scalar names not to write, as `ConsoleWriter`'s.
        """
        skip = _check_skip(skip)  # Before the file is created.
        super().__init__(open_append(path), skip)

    def close(self) -> None:
        self._stream.close()
