"""TensorBoard writer running clu's `SummaryWriter` in a child process.

For local directories, `EventFileWriter` writes the same events in-process
without TensorFlow, and `create_writers` uses it; this writer serves remote
file systems (`gs://...`, through TensorFlow's file system layer) and users
who want TensorFlow's own writer.

clu's `SummaryWriter` needs TensorFlow, whose import is seconds of mostly
Python work. In a background thread that import competes for the GIL with JAX
tracing and compiling in the main thread and slows them several-fold. So the
writer lives in a child process started with the "spawn" method, which works
from notebooks and never forks a process holding JAX/XLA state. Creating the
writer returns at once; method calls are pickled as plain data (method name
and arguments, arrays as numpy) onto a queue that the child runs in order.

The child runs at lower CPU priority (nice 10), quiets TensorFlow's C++
logging unless `TF_CPP_MIN_LOG_LEVEL` is set, sends its own stdout and stderr
to `os.devnull` (errors still reach the parent), and hides GPUs and TPUs from
TensorFlow (TensorFlow only: JAX in the parent still sees them), so it holds
no accelerator memory. A failure in the child (TensorFlow import, writer
creation, a write) is sent back with its traceback and raised in the parent by
the next call, `flush` or `close`. The child exits once the parent is gone,
after closing (and so flushing) its `SummaryWriter`.

As with any "spawn" child, a script that creates the writer at top level must
do so under `if __name__ == "__main__":`, because the child imports the
script's main module.
"""

import atexit
import multiprocessing
import multiprocessing.queues
import os
import pickle
import queue
import signal
import time
import traceback
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from jaxcl.loggers.base import ForwardingWriter, MetricWriter

__all__ = ["tensorboard_writer"]

# How long `flush` and `close` wait for the child to catch up. It covers the
# TensorFlow import (seconds, more on a loaded machine) and slow file systems.
_WAIT_S = 300.0
# How often the idle child checks that its parent is alive.
_PARENT_CHECK_S = 1.0
# How long `close` waits for the child to exit after it closed its writer.
_EXIT_S = 10.0


def _silence_output() -> None:
    """Points this process's stdout and stderr file descriptors at devnull."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def _create_summary_writer(logdir: str) -> MetricWriter:
    """Imports TensorFlow without accelerators; returns clu's `SummaryWriter`."""
    # Only read when TensorFlow is imported, so setting them here suffices.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # TensorFlow would otherwise open every GPU (and take its memory)
    # at import, before set_visible_devices below hides them.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import tensorflow as tf

    for device_type in ("GPU", "TPU"):
        tf.config.set_visible_devices([], device_type)
    from clu import metric_writers

    return metric_writers.SummaryWriter(logdir)


def _serve(
    logdir: str, requests: multiprocessing.queues.Queue, replies: Connection
) -> None:
    """Child process: runs the parent's writer calls until `close`.

    A request is a pickled `(method, args, kwargs, token)`. After running it,
    a request with a token is acknowledged with `("ack", token)`. Any
    exception is sent as `("error", traceback)` and ends the loop, as does the
    parent's death; the `SummaryWriter` is then closed, keeping what was
    written.
    """
    # Ctrl-C reaches the whole process group; the parent decides what to do
    # (typically `close`, which needs this process alive).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Background work: when CPUs are short (e.g. the TensorFlow import while
    # XLA compiles), the training process comes first.
    if hasattr(os, "nice"):
        os.nice(10)
    writer = None
    try:
        _silence_output()
        writer = _create_summary_writer(logdir)
        parent = multiprocessing.parent_process()
        while True:
            try:
                request = requests.get(timeout=_PARENT_CHECK_S)
            except queue.Empty:
                if parent.is_alive():
                    continue
                break  # Orphaned, e.g. the parent was killed.
            method, args, kwargs, token = pickle.loads(request)
            getattr(writer, method)(*args, **kwargs)
            if token is not None:
                replies.send(("ack", token))
            if method == "close":
                # Everything is written; skip TensorFlow's interpreter
                # teardown, which takes seconds that `close` would wait for.
                os._exit(0)
    except Exception:  # noqa: BLE001 -- every failure must reach the parent.
        replies.send(("error", traceback.format_exc()))
    if writer is not None:
        writer.close()  # Keeps what was written before the failure.


def _to_numpy(value: Any) -> Any:
    """Converts array-likes (e.g. jax arrays) to numpy, which the child unpickles."""
    if hasattr(value, "__array__") and not isinstance(value, (np.ndarray, np.generic)):
        return np.asarray(value)
    return value


class _SummaryWriterProcess(ForwardingWriter):
    """clu `SummaryWriter` in a child process; see module docstring."""

    def __init__(self, logdir: str):
        self._logdir = logdir
        context = multiprocessing.get_context("spawn")
        self._requests = context.Queue()
        # Unread requests of a dead child must not block interpreter exit;
        # `flush` and `close` are what guarantee delivery.
        self._requests.cancel_join_thread()
        self._replies, child_replies = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_serve,
            args=(logdir, self._requests, child_replies),
            name="jaxcl-tensorboard",
            daemon=True,
        )
        self._process.start()
        self._owner_pid = os.getpid()
        # Only the child may hold the sending end, so its exit reads as EOF.
        child_replies.close()
        self._sent = 0  # Tokens of requests that expect an acknowledgement.
        self._acked = 0
        self._error: str | None = None
        self._error_raised = False
        self._closed = False
        # Daemon children are terminated at exit; closing first flushes them.
        atexit.register(self.close)

    def _raise_error(self) -> None:
        self._error_raised = True
        raise RuntimeError(
            f"The TensorBoard writer for logdir={self._logdir!r} failed in its "
            f"child process:\n{self._error}"
        )

    def _receive(self, timeout: float) -> None:
        """Reads the child's replies, waiting up to `timeout` s for the first."""
        try:
            while self._replies.poll(timeout):
                kind, value = self._replies.recv()
                if kind == "ack":
                    self._acked = value
                else:
                    self._error = value
                timeout = 0.0
        except EOFError:  # The child exited without a word: it crashed.
            self._process.join(_EXIT_S)
            self._error = self._error or (
                f"The child process exited unexpectedly (exit code "
                f"{self._process.exitcode})."
            )
        if self._error is not None:
            self._raise_error()

    def _put(self, method: str, args: tuple, kwargs: dict, token: int | None = None) -> None:
        """Queues a call for the child, raising any error it reported."""
        if self._closed:
            raise RuntimeError(f"The TensorBoard writer for logdir={self._logdir!r} is closed.")
        self._receive(timeout=0.0)
        args = tuple(
            {k: _to_numpy(v) for k, v in arg.items()} if isinstance(arg, Mapping) else arg
            for arg in args
        )
        # Pickled here, not in the queue's feeder thread, so that the caller
        # gets any pickling error and may reuse its arrays right away.
        self._requests.put(pickle.dumps((method, args, kwargs, token)))

    def _run_and_wait(self, method: str) -> None:
        """Queues `method` and waits until the child has run it."""
        self._put(method, (), {}, token=self._sent + 1)
        self._sent += 1
        deadline = time.monotonic() + _WAIT_S
        while self._acked < self._sent:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"The TensorBoard writer for logdir={self._logdir!r} did "
                    f"not finish {method!r} within {_WAIT_S:.0f} s."
                )
            self._receive(remaining)

    def _forward(self, method: str, *args: Any, **kwargs: Any) -> None:
        self._put(method, args, kwargs)

    def flush(self) -> None:
        self._run_and_wait("flush")

    def close(self) -> None:
        # A forked copy of this process (its atexit hooks included) must not
        # close the child, which belongs to the original.
        if self._closed or os.getpid() != self._owner_pid:
            return
        atexit.unregister(self.close)
        try:
            if self._error is None:
                self._run_and_wait("close")
            elif not self._error_raised:
                self._raise_error()
            # Acknowledged: the child is exiting, give it time to finish.
            self._process.join(_EXIT_S)
        finally:
            self._closed = True
            if self._process.is_alive():
                self._process.terminate()
                self._process.join()
            self._replies.close()
            self._requests.close()


def tensorboard_writer(logdir: str | os.PathLike[str]) -> MetricWriter:
    """Returns clu's own `SummaryWriter`, run in a child process.

    `create_writers` uses it for remote logdirs (`gs://...`); for local ones
    `EventFileWriter` writes the same events without TensorFlow or a child
    process. The call returns immediately. A "spawn" child process imports TensorFlow,
    creates clu's `SummaryWriter(logdir)` and runs the writer's calls in
    order; the parent never imports TensorFlow. `flush` waits until the child
    has written everything sent so far; `close` also closes the
    `SummaryWriter` and ends the child (and runs at interpreter exit if not
    called). Arrays are sent as numpy copies, so callers may reuse them.

    Args:
        logdir: Directory for the event files (created if missing). Any path
            TensorFlow's file system supports, e.g. `gs://...`.

    Returns:
        A writer with clu's `MetricWriter` methods. If the child fails (e.g.
        TensorFlow cannot be imported or a write is invalid), the next call,
        `flush` or `close` raises `RuntimeError` naming `logdir`, with the
        child's traceback; later calls raise it again, a later `close` does
        not.

    Example:
        >>> writer = tensorboard_writer("/tmp/jaxcl_example/tb")
        >>> # ... jit-compile while the child imports TensorFlow ...
        >>> writer.write_scalars(0, {"train/loss": 1.0})
        >>> writer.close()
    """
    return _SummaryWriterProcess(os.fspath(logdir))
