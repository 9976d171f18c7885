"""Writers that combine other writers: fan-out and background writing.

These mirror `clu.metric_writers.MultiWriter` and `AsyncWriter`. clu's classes
live in the `clu.metric_writers` package, whose `__init__` imports TensorFlow,
so using them would put a ~5 s TensorFlow import on every `create_writers`
call, even for runs that log to the console only. The two classes below are
the same few lines without that import; clu's thread pool (`clu.asynclib`,
which does not import TensorFlow) still does the background work.
"""

from collections.abc import Sequence
from typing import Any

from clu import asynclib

from jaxcl.loggers.base import (ForwardingWriter, MetricWriter, check_scalars,
                                check_step)

# The methods of ForwardingWriter whose first argument is a step.
_STEPPED = frozenset({"write_summaries", "write_scalars", "write_images",
                      "write_videos", "write_audios", "write_texts",
                      "write_histograms"})


def _check_call(method: str, args: tuple[Any, ...]) -> None:
    """Refuses a write's bad step, scalars or names before anything writes."""
    if method not in _STEPPED:
        return
    check_step(args[0])
    if method == "write_scalars":
        check_scalars(args[1])
    elif method == "write_texts" and "step" in args[1]:
        raise ValueError("texts must not be named 'step' (each line of "
                         "metrics.jsonl records its step under that name).")

__all__ = ["MultiWriter", "AsyncWriter"]


class MultiWriter(ForwardingWriter):
    """Writes everything to several writers, in the order given.

    Example:
        >>> import io
        >>> from jaxcl.loggers import ConsoleWriter
        >>> out_a, out_b = io.StringIO(), io.StringIO()
        >>> writer = MultiWriter([ConsoleWriter(out_a), ConsoleWriter(out_b)])
        >>> writer.write_scalars(0, {"train/loss": 0.5})
        >>> out_a.getvalue() == out_b.getvalue() == "step 0 | train/loss 0.5000\\n"
        True
    """

    def __init__(self, writers: Sequence[MetricWriter]):
        self._writers = tuple(writers)

    def _forward(self, method: str, *args: Any, **kwargs: Any) -> None:
        _check_call(method, args)  # Before any writer writes a line.
        for writer in self._writers:
            getattr(writer, method)(*args, **kwargs)


class AsyncWriter(ForwardingWriter):
    """Runs a writer's calls in one background thread, in call order.

    An exception raised in the background is re-raised (wrapped in
    `clu.asynclib.AsyncError`) by the next call. `flush` waits for every
    pending call; `close` flushes, then closes the wrapped writer.

    Example:
        >>> import io
        >>> from jaxcl.loggers import ConsoleWriter
        >>> out = io.StringIO()
        >>> writer = AsyncWriter(ConsoleWriter(out))
        >>> writer.write_scalars(0, {"train/loss": 0.5})
        >>> writer.flush()
        >>> out.getvalue()
        'step 0 | train/loss 0.5000\\n'
    """

    def __init__(self, writer: MetricWriter):
        self._writer, self._closed = writer, False
        # One worker keeps the calls in order.
        self._pool = asynclib.Pool(thread_name_prefix="jaxcl-AsyncWriter", max_workers=1)

    def _forward(self, method: str, *args: Any, **kwargs: Any) -> None:
        if self._closed:  # The background call would fail unseen.
            raise RuntimeError(f"{method} after close: the writer is closed.")
        # Checked here, where the caller sees the error, not in the thread.
        _check_call(method, args)
        self._pool(getattr(self._writer, method))(*args, **kwargs)

    def flush(self) -> None:
        try:
            self._pool.join()
        finally:
            self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the wrapped writer; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        finally:
            self._writer.close()
