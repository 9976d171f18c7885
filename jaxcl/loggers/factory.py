"""`create_writers`: the standard set of writers for a run directory."""

import os
import pathlib

from jaxcl.loggers.base import MetricWriter
from jaxcl.loggers.combine import AsyncWriter, MultiWriter
from jaxcl.loggers.event_file import EventFileWriter, is_remote_path
from jaxcl.loggers.files import CsvWriter, JsonlWriter
from jaxcl.loggers.tensorboard import tensorboard_writer
from jaxcl.loggers.text import ConsoleWriter, TextLogWriter

__all__ = ["create_writers"]


def create_writers(
    logdir: str | os.PathLike[str] | None,
    *,
    console: bool = True,
    tensorboard: bool = True,
    jsonl: bool = True,
    csv: bool = True,
    text: bool = True,
    asynchronous: bool = False,
    minibatch_lines: bool = False,
) -> MetricWriter:
    """Creates the enabled writers for a run and combines them into one.

    Files written in `logdir` (created if missing):

    * TensorBoard event files (`tensorboard`),
    * `metrics.jsonl` (`jsonl`),
    * `training_results.csv` and `eval_results.csv` (`csv`),
    * `log.txt` (`text`).

    A remote `logdir` (`gs://...`, anything with "://") takes the TensorBoard
    files only, written by clu's `SummaryWriter` in a child process
    (`tensorboard_writer`); the other files are local, so they must be
    switched off.

    Args:
        logdir: Run directory. `None` disables every file-based writer, leaving
            the console only.
        console: Print each call to `sys.stdout`.
        tensorboard: Write TensorBoard event files: with `EventFileWriter` (in
            this process, without TensorFlow) into a local `logdir`, with
            `tensorboard_writer` into a remote one.
        jsonl: Write `metrics.jsonl`, see `JsonlWriter`.
        csv: Write Avalanche's CSV files, see `CsvWriter`.
        text: Write the console lines to `log.txt`, see `TextLogWriter`.
        asynchronous: Run all writes in a background thread (`AsyncWriter`);
            call `flush()` to wait for them.
        minibatch_lines: Also print the minibatch metrics (`minibatch/...`,
            one line per optimizer step) to the console and `log.txt`; by
            default only the other writers get them, as Avalanche's text
            loggers print no per-minibatch line.

    Returns:
        One writer forwarding to all enabled writers. Call `close()` at the end
        of the run.

    Raises:
        ValueError: If `logdir` exists and is not a directory, or if it is
            remote and `jsonl`, `csv` or `text` is on.

    Example:
        >>> writer = create_writers("/tmp/jaxcl_example/run", tensorboard=False)
        >>> writer.write_scalars(0, {"eval/stream/accuracy": 0.9})
        step 0 | eval/stream/accuracy 0.9000
        >>> writer.close()
    """
    if not isinstance(minibatch_lines, bool):  # "no" would print them.
        raise TypeError(f"minibatch_lines must be True or False, got "
                        f"{minibatch_lines!r}.")
    skip = () if minibatch_lines else ("minibatch/",)
    writers: list[MetricWriter] = [ConsoleWriter(skip=skip)] if console else []
    if logdir is not None and is_remote_path(logdir):
        local = [name for name, on in (("jsonl", jsonl), ("csv", csv), ("text", text)) if on]
        if local:
            raise ValueError(
                f"logdir={os.fspath(logdir)!r} is remote, where only TensorBoard "
                f"files can be written; pass {', '.join(f'{n}=False' for n in local)}."
            )
        if tensorboard:
            writers.append(tensorboard_writer(logdir))
    elif logdir is not None:
        path = pathlib.Path(logdir)
        if path.exists() and not path.is_dir():
            raise ValueError(
                f"logdir must be a directory (or not exist yet), but "
                f"logdir={os.fspath(logdir)!r} is an existing file."
            )
        path.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            writers.append(EventFileWriter(path))
        if jsonl:
            writers.append(JsonlWriter(path / "metrics.jsonl"))
        if csv:
            writers.append(CsvWriter(path))
        if text:
            writers.append(TextLogWriter(path / "log.txt", skip=skip))
    writer = MultiWriter(writers)
    return AsyncWriter(writer) if asynchronous else writer
