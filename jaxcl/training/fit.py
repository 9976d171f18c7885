"""``fit``: run a strategy over a whole benchmark and record the results.

Example:
  >>> import jaxcl, optax
  >>> bench = jaxcl.benchmarks.split_mnist(n_experiences=5, seed=0)
  >>> result = jaxcl.fit(jaxcl.models.MLP(num_classes=10), jaxcl.strategies.naive(),
  ...                    optax.sgd(0.01), bench, epochs=1, batch_size=32)
  >>> result.accuracy_matrix.shape
  (5, 5)
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcl import _validation, checkpoint, compilation
from jaxcl._hosts import (addressable, check_same_everywhere, host_copy, put,
                          raised_on_every_host, read_together,
                          stop_all_hosts_on_error)
from jaxcl.benchmarks.scenario import Benchmark, Experience, Stream
from jaxcl.evaluation import cl_metrics, class_metrics, selection, system
from jaxcl.loggers.formatting import format_swept_value
from jaxcl.models.adapter import as_model
from jaxcl.strategies.base import Strategy, StrategyContext
from jaxcl.training import _runs, loop, optim, periodic, streaming
from jaxcl.training.loop import Loss
from jaxcl.training.state import (
    ExperienceData,
    TrainState,
    experience_data,
    put_experiences,
    read_in_shares,
    stack_experiences,
)

__all__ = ["MultiResult", "Result", "Run", "fit", "make_context", "sweep"]


@dataclasses.dataclass
class Result:
  """What a run produced.

  Attributes:
    accuracy_matrix: ``[train experiences, test experiences]`` numpy array
      (``[T, T]`` unless the streams differ: online streams' mini-experiences
      against the original test experiences, new-instances streams' single
      test experience); ``R[i, j]`` is the accuracy on test experience ``j``
      after training experience ``i``, NaN where ``j`` was not evaluated
      after ``i``.
    metrics: Final scalar metrics (after the last experience), those of the
      selected groups (``fit(metrics=...)``, see docs/metrics.md):
      ``stream_accuracy`` (pooled), ``train_accuracy``, ``stream_loss``,
      ``train_loss``, ``top5_accuracy`` (``top<k>_accuracy``),
      ``accuracy_on_trained_experiences``, ``forgetting``, ``bwt``,
      ``forward_transfer``, ``amca``, ``mean_class_accuracy``,
      ``mean_score_new``, ``mean_score_old``, ``train_time_s``,
      ``eval_time_s``, ``train_cpu_usage``, ``eval_cpu_usage``,
      ``peak_host_memory_mb``, ``peak_device_memory_mb``, ``disk_usage_kb``,
      ``train_flops``, ``eval_flops``; NaN where undefined or not reported.
    history: One metrics dict per evaluation (same keys plus
      ``experience``, the experience just trained): one per experience by
      default, fewer with ``eval_every`` or on online streams.
    timings: ``compile_s`` (the set-up before the first experience:
      compiling the programs and, overlapping it, uploading the test stream
      and the first experience, restoring a checkpoint), ``train_s``,
      ``eval_s`` (both without it), ``total_s``.
    initial_accuracies: Accuracy on each test experience before training
      (NaN if not evaluated).
    confusion_matrix: ``[n_classes, n_classes]`` (label, prediction) counts
      over the test stream after the last experience (None unless the
      ``confusion_matrix`` group is selected).
    state: The final :class:`TrainState`.
    class_accuracy: ``[n_classes]`` accuracy of each class on the test stream
      after the last experience, NaN for classes without test samples (None
      unless ``class_accuracy`` is selected).
    task_class_accuracy: ``[n_tasks, n_classes]`` the same per task label, as
      Avalanche keys it (class ids may repeat across tasks); ``n_tasks`` is 1
      unless the benchmark's train stream has several task labels.
    labels_repartition: ``int[T, n_classes]`` samples of each class in each
      training experience as trained on (after the strategy's
      ``adapt_data``; None unless ``labels_repartition`` is selected).
    periodic: The periodic evaluations (``fit(periodic_eval=...)``) in
      order, one dict each: ``experience`` (being trained), ``step`` (optimizer
      steps so far), ``stream_accuracy`` and ``stream_loss`` (pooled over the
      monitored stream) and ``experience_accuracy`` (one per experience of
      that stream). The first of each experience is taken before its first
      step; the last after its last step, if that step was not due.
    minibatch: With the ``minibatch`` metric group (opt-in): every optimizer
      step taken, in order, as columns of equal length: ``experience``,
      ``epoch`` (within it), ``step`` (optimizer steps so far, this one
      included), ``loss`` (the step's training loss, penalties included)
      and ``accuracy`` (of its rows, replayed ones included); Avalanche's
      ``Loss_MB`` and ``Top1_Acc_MB``. None unless selected.
    nonfinite: ``(experience, optimizer step)`` at which the training loss
      first became NaN or infinite, with ``fit(on_nonfinite="flag")``; what
      measures the model from that experience on (accuracy matrix rows,
      metrics, periodic evaluations, confusion matrix, class accuracies) is
      then NaN. None if it stayed finite.
    trained_columns: ``int[T]``: the test experience (column of
      ``accuracy_matrix``) each train experience trains, -1 for none
      (:func:`jaxcl.evaluation.trained_columns`); the ``columns`` argument
      with which :mod:`jaxcl.evaluation`'s functions of the accuracy matrix
      give ``metrics``' values on any stream, online ones included.
  """

  accuracy_matrix: np.ndarray
  metrics: dict[str, float]
  history: list[dict[str, float]]
  timings: dict[str, float]
  initial_accuracies: np.ndarray
  confusion_matrix: np.ndarray | None
  state: TrainState
  class_accuracy: np.ndarray | None = None
  task_class_accuracy: np.ndarray | None = None
  labels_repartition: np.ndarray | None = None
  periodic: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  nonfinite: tuple[int, int] | None = None
  minibatch: dict[str, np.ndarray] | None = None
  trained_columns: np.ndarray | None = None


def _check_run(run: Run) -> None:
  if not isinstance(run.strategy, Strategy):
    raise TypeError(f"strategy must be a jaxcl Strategy (e.g. "
                    f"jaxcl.strategies.naive()), got {type(run.strategy).__name__}.")
  if not isinstance(run.optimizer, optax.GradientTransformation):
    raise TypeError(f"optimizer must be an optax.GradientTransformation (e.g. "
                    f"optax.sgd(0.01)), got {type(run.optimizer).__name__}.")
  _check_seed(run.seed)


def _check_args(model, benchmark, epochs, batch_size, eval_batch_size):
  if not isinstance(benchmark, Benchmark):
    raise TypeError(f"benchmark must be a jaxcl Benchmark, got "
                    f"{type(benchmark).__name__}.")
  _validation.check_positive_int("epochs", epochs)
  _validation.check_positive_int("batch_size", batch_size)
  _validation.check_positive_int("eval_batch_size", eval_batch_size)
  for name in ("train_stream", "test_stream"):
    if len(getattr(benchmark, name)) == 0:
      raise ValueError(f"benchmark.{name} is empty; expected experiences.")
  # One compile per stream: every train experience has the first one's
  # input dtype (test experiences are stacked into one array).
  dtype = jax.dtypes.canonicalize_dtype(benchmark.train_stream[0].x.dtype)
  for stream in (benchmark.train_stream, benchmark.test_stream):
    for exp in stream:
      if stream is benchmark.train_stream and (
          jax.dtypes.canonicalize_dtype(exp.x.dtype) != dtype):
        raise ValueError(
            f"experience {exp.index} of the {stream.name} stream has inputs "
            f"of dtype {exp.x.dtype}; expected {dtype}, the dtype of the "
            "first train experience (the programs compile for one).")
      if len(exp) == 0:
        raise ValueError(f"experience {exp.index} of the {stream.name} stream "
                         "is empty; expected at least one sample.")
      if exp.x.shape[1:] != tuple(benchmark.input_shape):
        raise ValueError(
            f"experience {exp.index} of the {stream.name} stream has inputs of "
            f"shape {exp.x.shape[1:]}; expected the benchmark's input_shape "
            f"{tuple(benchmark.input_shape)}.")
      if exp.y.max() >= benchmark.n_classes or exp.y.min() < 0:
        raise ValueError(
            f"experience {exp.index} of the {stream.name} stream has labels in "
            f"[{exp.y.min()}, {exp.y.max()}]; expected labels in "
            f"[0, {benchmark.n_classes - 1}].")
  heads = getattr(model, "n_tasks", None)  # MultiHead, MTMLP, mt_* models.
  # The labels themselves, too: a benchmark built by hand may leave n_tasks
  # at 1 while its experiences carry task labels 0..k.
  labelled = 1 + max(int(np.max(exp.task)) for stream in (
      benchmark.train_stream, benchmark.test_stream) for exp in stream)
  needed = max(benchmark.n_tasks, labelled)
  if isinstance(heads, int) and heads < needed:
    # A task without a head gives NaN logits, seen only once it trains.
    source = (f"its experiences carry task labels up to {labelled - 1}"
              if labelled >= benchmark.n_tasks else
              f"it has n_tasks={benchmark.n_tasks}")
    raise ValueError(
        f"model has n_tasks={heads} heads but the benchmark needs {needed} "
        f"({source}); expected n_tasks >= {needed}.")
  return as_model(model)


def _check_model_output(ctx: StrategyContext, sample, task):
  """Traces init+apply abstractly so shape errors surface before compiling."""
  def probe(key):
    params, model_state = ctx.model.init(key, ctx.preprocess(sample), task)
    return ctx.logits(params, model_state, sample, task)
  try:
    out = jax.eval_shape(probe, jax.random.key(0))
  except Exception as e:  # Re-raised with the data's shape for context.
    raise ValueError(
        f"model could not be applied to inputs of shape {sample.shape[1:]} "
        f"(the benchmark's input_shape): {type(e).__name__}: {e}") from e
  if not isinstance(out, jax.ShapeDtypeStruct):
    raise ValueError(
        f"model returns {jax.tree.map(lambda a: a.shape, out)!r}; expected "
        f"one array of logits, ({ctx.n_classes},) per sample (return the "
        "logits alone; jaxcl.strategies.model_utils reads features).")
  if out.ndim != 2 or out.shape[1] != ctx.n_classes:
    raise ValueError(f"model outputs logits of shape {out.shape[1:]} per "
                     f"sample; expected ({ctx.n_classes},), one per class of "
                     "the benchmark (set num_classes=benchmark.n_classes).")


def _check_loss(ctx: StrategyContext, sample, task):
  """Traces the task loss on a batch of two so that a loss that does not
  return one value per sample is refused before compiling."""
  if not callable(ctx.loss):
    raise TypeError(f"loss must be a callable (logits, batch) -> per-sample "
                    f"losses, got {type(ctx.loss).__name__} {ctx.loss!r}.")
  two = lambda a: jnp.concatenate([a, a])
  batch = {"x": two(sample), "y": jnp.zeros((2,), jnp.int32),
           "task": two(task), "weight": jnp.ones((2,), jnp.float32)}
  logits = jax.ShapeDtypeStruct((2, ctx.n_classes), jnp.float32)
  name = getattr(ctx.loss, "__name__", repr(ctx.loss))
  try:
    out = jax.eval_shape(ctx.loss, logits, batch)
  except Exception as e:  # Re-raised naming the argument.
    raise ValueError(f"loss {name} failed on logits of shape (2, "
                     f"{ctx.n_classes}) and a batch of x, y, task and "
                     f"weight: {type(e).__name__}: {e}") from e
  if getattr(out, "shape", None) != (2,):
    raise ValueError(
        f"loss {name} returned {jax.tree.map(lambda a: a.shape, out)!r} for "
        f"a batch of 2; expected one loss per sample, shape (2,) (the loop "
        "weights and averages them).")


def make_context(model, benchmark: Benchmark,
                 optimizer: optax.GradientTransformation, *, batch_size: int,
                 experience_size: int | None = None,
                 batch_sharding: Any = None,
                 mask_classes: bool = True,
                 loss: Loss | None = None) -> StrategyContext:
  """The static :class:`StrategyContext` of a benchmark, for custom loops.

  Args:
    model: A Flax module or :class:`jaxcl.models.Model`.
    benchmark: The benchmark whose sizes and preprocessing apply.
    optimizer: The optax optimizer.
    batch_size: Training mini-batch size.
    experience_size: Padded experience size (default: the largest train
      experience).
    batch_sharding: Sharding that splits batches over devices, if any.
    mask_classes: Whether never-seen classes are masked.
    loss: The per-sample task loss (default :func:`loop.cross_entropy`).

  Returns:
    The context passed to every strategy hook.

  Example:
    >>> ctx = make_context(jaxcl.models.MLP(10), bench, optax.sgd(0.1),
    ...                    batch_size=32)  # doctest: +SKIP
  """
  stream = benchmark.train_stream
  return StrategyContext(
      model=as_model(model), preprocess=benchmark.preprocess,
      loss=loop.cross_entropy if loss is None else loss,
      n_classes=benchmark.n_classes,
      n_experiences=len(stream), input_shape=tuple(benchmark.input_shape),
      batch_size=batch_size,
      experience_size=experience_size or stream.max_size,
      x_dtype=np.asarray(stream[0].x[:1]).dtype, optimizer=optimizer,
      augment=benchmark.augment, task_classes=_task_classes(benchmark),
      batch_sharding=batch_sharding, mask_classes=mask_classes)


def _task_classes(benchmark: Benchmark) -> np.ndarray | None:
  """``bool[n_tasks, n_classes]``: the classes of each task (None for one task)."""
  tasks = {t for e in benchmark.train_stream for t in e.task_labels}
  if len(tasks) <= 1:
    return None
  table = np.zeros((max(tasks) + 1, benchmark.n_classes), bool)
  for e in benchmark.train_stream:
    for t in e.task_labels:
      table[t, list(np.unique(e.y[e.task == t]))] = True
  return table


def _percent(cpu_s: float, wall_s: float) -> float:
  """CPU seconds over wall seconds, in percent (NaN for no time at all)."""
  return 100.0 * cpu_s / wall_s if wall_s > 0 else float("nan")


def _timed(fn, *args):
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start


class Run(NamedTuple):
  """One member of a batch of runs: its strategy, optimizer and seed."""

  strategy: Strategy
  optimizer: optax.GradientTransformation
  seed: int


@dataclasses.dataclass
class MultiResult:
  """Results of several runs executed as one vmapped program.

  Attributes:
    labels: What distinguishes the runs (the seeds, or the swept values).
    runs: One :class:`Result` per run (its ``timings`` are the shared ones).
    accuracy_matrices: ``[runs, T, T]``.
    metrics: ``{name: (mean, std)}`` over runs of the final metrics (runs
      whose value is NaN left out; NaN if every run's is).
    metrics_per_run: ``{name: [value per run]}``.
    timings: ``compile_s``, ``train_s``, ``eval_s``, ``total_s`` of the
      whole batch.
  """

  labels: tuple
  runs: list[Result]
  accuracy_matrices: np.ndarray
  metrics: dict[str, tuple[float, float]]
  metrics_per_run: dict[str, list[float]]
  timings: dict[str, float]

  @property
  def trained_columns(self) -> np.ndarray:
    """The runs' :attr:`Result.trained_columns` (the same for every run)."""
    return self.runs[0].trained_columns


def fit(
    model,
    strategy: Strategy,
    optimizer: optax.GradientTransformation,
    benchmark: Benchmark,
    *,
    epochs: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    eval_batch_size: int = 1000,
    mask_unseen_classes: bool = True,
    loss: Loss | None = None,
    eval_before_training: bool = True,
    eval_every: int | None = None,
    periodic_eval: periodic.PeriodicEval | None = None,
    early_stopping: periodic.EarlyStopping | None = None,
    reset_optimizer: bool = False,
    reset_schedule: bool = False,
    writer: Any = None,
    progress: bool = False,
    data_parallel: bool | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_keep: int = 2,
    metrics: Sequence[str] | selection.MetricSelection | None = None,
    device_memory_budget_mb: float | None = None,
    on_nonfinite: str = "raise",
) -> Result | MultiResult:
  """Trains ``strategy`` over ``benchmark``'s train stream, evaluating after each experience.

  Training of each experience is one call of one compiled function (all
  epochs scanned on the device); where several experiences pass between two
  evaluations (online streams, ``eval_every``), one call scans over a block
  of them, saving the per-call host work that would outweigh a
  mini-experience's training. Evaluation of the whole test stream is one
  call of another function. Both compile once for the whole stream. With ``seeds``,
  all seeds run as one ``vmap``-ped program (parameters, optimizer and
  strategy state and data order stacked on a leading axis).

  Args:
    model: A Flax linen module (e.g. :class:`jaxcl.models.MLP`) or a
      :class:`jaxcl.models.Model`.
    strategy: A :class:`jaxcl.strategies.Strategy` (or a ``chain`` of them).
    optimizer: An optax gradient transformation; its state persists across
      experiences.
    benchmark: The :class:`jaxcl.benchmarks.Benchmark` to run.
    epochs: Passes over each experience.
    batch_size: Mini-batch size of current-experience samples.
    seed: Seed of every random choice of the run (init, shuffling, dropout,
      strategy sampling).
    seeds: Several seeds to run at once; then a :class:`MultiResult` is
      returned and ``seed`` is ignored. The benchmark (class order) is shared.
    eval_batch_size: Chunk size of evaluation.
    mask_unseen_classes: Mask the logits of classes not trained on so far
      (Avalanche's incremental classifier with masking) and, with task
      labels, those outside each sample's task; False trains and evaluates
      every logit (Avalanche's fixed heads, e.g. ``SimpleMLP``).
    loss: The task loss, Avalanche's ``criterion``: ``loss(logits, batch)
      -> [batch]`` per-sample losses (weighted and averaged by the loop;
      strategies add their penalties to it). Default
      :func:`jaxcl.training.cross_entropy`;
      :func:`jaxcl.training.smoothed_cross_entropy` gives PyTorch's
      ``label_smoothing``. ``batch`` holds ``"x"``, ``"y"``, ``"task"``,
      ``"weight"`` and what strategies add (``"class_mask"``: classes the
      loss may see; a row allowed its own class alone must get 0, as
      :func:`jaxcl.training.cross_entropy` gives); evaluation's loss uses
      it too (docs/training.md).
    eval_before_training: Evaluate the initial model too (needed by
      ``forward_transfer``).
    eval_every: Evaluate the test stream after every ``eval_every``-th train
      experience and after the last one. ``None`` (default): after every
      experience, except on online streams (``split_online``), which are
      evaluated at the end of each original experience only; rows of the
      accuracy matrix that were not evaluated are NaN.
    periodic_eval: Also evaluate a stream while each experience trains
      (every N epochs or steps, inside the compiled experience; Avalanche's
      ``eval_every``), see :class:`jaxcl.PeriodicEval`. The evaluations are in
      ``Result.periodic`` and written as ``periodic/<stream>/...``.
    early_stopping: Stop each experience when the periodic evaluation's
      metric stops improving and restore the best parameters (Avalanche's
      ``EarlyStoppingPlugin``), see :class:`jaxcl.EarlyStopping`; needs
      ``periodic_eval`` (default: every epoch on the ``valid`` stream).
    reset_optimizer: Start every experience with a fresh optimizer state
      (older Avalanche releases' default; by default the state is kept
      across experiences, as Avalanche 0.6 keeps it).
      Injected hyperparameters (``optax.inject_hyperparams``) are kept.
    reset_schedule: Restart the optimizer's learning-rate schedules at every
      experience (Avalanche's ``LRSchedulerPlugin(reset_scheduler=True)``);
      otherwise a schedule runs across the whole stream. Implied by
      ``reset_optimizer``.
    writer: Optional clu-style metric writer (see :mod:`jaxcl.loggers`); with
      several seeds, the mean and ``<name>_std`` over runs are written (a
      :func:`sweep` writes each value's apart, as ``<name>/value=<v>``).
    progress: Show a progress bar over experiences.
    data_parallel: Spread the work over all devices, every host's after
      ``jax.distributed.initialize`` (a ``Mesh`` with one ``"data"`` axis):
      batches are split over devices and the state is replicated; with
      several runs whose number the devices divide, the runs are split over
      the devices instead. ``None`` (default) turns it on when more than one
      device is present. On several hosts every process must make the same
      call; ``fit`` checks that before compiling (docs/scale.md). There, an
      error on one host inside ``fit`` ends the others' processes (exit
      status 1) instead of leaving them waiting for it; see
      :func:`jaxcl.training.stop_all_hosts_on_error`.
    checkpoint_dir: Save the whole run (state, position in the stream,
      metrics so far) there after every evaluated experience, and resume from the
      newest usable checkpoint found there (see docs/checkpointing.md). A
      resumed run gives exactly the numbers of an uninterrupted one; a
      checkpoint written by a different configuration is refused.
    checkpoint_keep: Number of newest checkpoints kept.
    metrics: The metric groups to record: names from
      :data:`jaxcl.evaluation.METRICS` or a
      :func:`jaxcl.evaluation.metrics` selection (which also sets the ``k``
      of the top-k accuracy and the paths ``disk_usage`` measures).
      Default: all of them but ``minibatch`` and ``disk_usage``
      (``jaxcl.evaluation.DEFAULT_METRICS``).
    device_memory_budget_mb: Device memory the training data of one
      experience may take; a stream whose largest experience exceeds it is
      streamed from the host in chunks with background prefetch instead of
      uploaded whole (same numbers for the same seed; see docs/streaming.md);
      a block of small experiences trained by one call stays within it too.
      ``None``: a quarter of the device's memory (of the host's RAM on CPU;
      1 GiB on an accelerator that reports no memory limit).
    on_nonfinite: What a training loss that became NaN or infinite does:
      ``"raise"`` a ``FloatingPointError`` naming the experience and step
      (after writing the metrics of the evaluations before it), or
      ``"flag"`` it (a ``RuntimeWarning``, :attr:`Result.nonfinite`), train
      on and report that run's metrics as NaN from that experience on, so
      that the other runs of a seeds batch or a sweep finish and their mean
      ± std leaves it out.

  Returns:
    A :class:`Result`, or a :class:`MultiResult` when ``seeds`` is given.
  """
  settings = dict(epochs=epochs, batch_size=batch_size,
                  eval_batch_size=eval_batch_size,
                  mask_unseen_classes=mask_unseen_classes, loss=loss,
                  eval_before_training=eval_before_training,
                  eval_every=eval_every, periodic_eval=periodic_eval,
                  early_stopping=early_stopping,
                  reset_optimizer=reset_optimizer,
                  reset_schedule=reset_schedule, writer=writer,
                  progress=progress, data_parallel=data_parallel,
                  checkpoint_dir=checkpoint_dir,
                  checkpoint_keep=checkpoint_keep, metrics=metrics,
                  device_memory_budget_mb=device_memory_budget_mb,
                  on_nonfinite=on_nonfinite)
  if seeds is None:
    return _fit_runs(model, [Run(strategy, optimizer, seed)], benchmark,
                     batched=False, **settings).runs[0]
  if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
    raise TypeError(f"seeds must be a sequence of ints such as [0, 1, 2], "
                    f"got {seeds!r} (seed={seeds!r} gives one run).")
  seeds = [_check_seed(s, f"seeds[{i}]") for i, s in enumerate(seeds)]
  if not seeds:
    raise ValueError("seeds must hold at least one seed, got [].")
  _check_distinct("seeds", seeds)
  return _fit_runs(model, [Run(strategy, optimizer, s) for s in seeds],
                   benchmark, batched=True, labels=tuple(seeds), **settings)


def sweep(
    model,
    benchmark: Benchmark,
    values: Sequence[float],
    *,
    strategy: Strategy | Callable[[float], Strategy],
    optimizer: (optax.GradientTransformation
                | Callable[[float], optax.GradientTransformation]),
    seed: int = 0,
    **fit_kwargs: Any,
) -> MultiResult:
  """Runs one hyperparameter's values as one ``vmap``-ped program.

  The swept value must live in the strategy state or the optimizer state as
  an array (jaxcl's strategies store λ, α, temperatures that way; for a
  learning rate use ``optax.inject_hyperparams``), so that one compiled
  program serves every value.

  Args:
    model: As for :func:`fit`.
    benchmark: As for :func:`fit`.
    values: The values to run.
    strategy: A strategy, or a function from a value to a strategy.
    optimizer: An optimizer, or a function from a value to an optimizer.
    seed: The seed shared by every run.
    **fit_kwargs: Other :func:`fit` arguments (epochs, batch_size, ...).

  Returns:
    A :class:`MultiResult` labelled by ``values``.

  Example:
    >>> res = sweep(model, bench, [0.1, 1.0, 10.0],
    ...             strategy=lambda v: jaxcl.strategies.ewc(ewc_lambda=v),
    ...             optimizer=optax.sgd(0.01))  # doctest: +SKIP
  """
  if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
    raise TypeError(f"values must be a sequence of the values to run, such "
                    f"as [0.1, 1.0], got {values!r}.")
  values = list(values)
  if not values:
    raise ValueError("values must hold at least one value, got [].")
  _check_distinct("values", values)
  for name in ("seeds", "labels"):
    if name in fit_kwargs:
      raise TypeError(f"sweep() got {name}=...; a sweep runs its values with "
                      "one seed (seed=...) and is labelled by its values.")
  if not (callable(strategy) or callable(optimizer)):
    raise TypeError(
        f"sweep() needs strategy or optimizer to be a function of the swept "
        f"value (e.g. strategy=lambda v: ewc(ewc_lambda=v)); got "
        f"{type(strategy).__name__} and {type(optimizer).__name__}, with "
        "which every run would be the same.")
  if not callable(strategy) and not strategy.trains_with_optimizer:
    raise ValueError(
        f"sweep() varies only the optimizer, which strategy "
        f"{strategy.name!r} never uses to move the parameters "
        "(trains_with_optimizer=False): every run would be the same; sweep "
        "one of the strategy's own values instead.")
  runs = [Run(strategy(v) if callable(strategy) else strategy,
              optimizer(v) if callable(optimizer) else optimizer,
              _check_seed(seed)) for v in values]
  return _fit_runs(model, runs, benchmark, batched=True, swept=True,
                   labels=tuple(values), **fit_kwargs)


class _Placement(NamedTuple):
  """Where arrays live: shardings of the state, the data and each batch."""

  state: Any = None
  data: Any = None
  batch: Any = None


def _devices_used(place: _Placement) -> dict[str, Any]:
  """Platform, kind and number of the devices a run computes on.

  Part of a checkpoint's fingerprint: the same program gives other bits on
  another kind of device, and its lowering is the same for every GPU kind.
  """
  devices = (list(place.state.mesh.devices.flat) if place.state is not None
             else [jax.devices()[0]])
  return {"platform": devices[0].platform,
          "device_kind": devices[0].device_kind, "count": len(devices)}


def _placement(data_parallel: bool | None, n_runs: int,
               batch_size: int) -> _Placement:
  """Shards runs (if the devices divide them) or batches over all devices."""
  devices = jax.devices()
  if data_parallel is None:
    data_parallel = len(devices) > 1
  if not data_parallel or len(devices) == 1:
    return _Placement()
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  if n_runs and n_runs % len(devices) == 0:
    return _Placement(state=split, data=replicated)
  if batch_size % len(devices):
    raise ValueError(
        f"batch_size={batch_size} must be a multiple of the {len(devices)} "
        "devices to split batches over them; change it or pass "
        "data_parallel=False.")
  return _Placement(state=replicated, data=replicated, batch=split)


def _check_seed(seed, name: str = "seed") -> int:
  # Seeds become uint32 arrays (one per run) for the compiled init.
  return _validation.check_seed(name, seed)


def _check_distinct(name: str, values: Sequence[Any]) -> None:
  repeated = sorted({repr(v) for v in values if values.count(v) > 1})
  if repeated:
    raise ValueError(f"{name} must be distinct (each is a run), got "
                     f"{list(values)}: {', '.join(repeated)} repeated.")


def _stack_runs(states: Sequence[Any]) -> Any:
  """Stacks the runs' states, which one program needs alike in layout."""
  first = jax.tree_util.tree_flatten_with_path(states[0])
  for i, state in enumerate(states[1:], 1):
    leaves = jax.tree_util.tree_flatten_with_path(state)
    if leaves[1] != first[1]:
      raise raised_on_every_host(ValueError(
          f"run {i} of the sweep builds a state of another structure than "
          "run 0 (the swept value changes the strategy's or optimizer's "
          "make-up); one compiled program cannot serve both: run the values "
          "as separate fit calls."))
    for (path, a), (_, b) in zip(first[0], leaves[0]):
      # Dtypes may differ (1 and 0.1 injected): stacking promotes them.
      if a.shape != b.shape:
        raise raised_on_every_host(ValueError(
            f"run {i} of the sweep builds state{jax.tree_util.keystr(path)} "
            f"of shape {b.shape}, run 0 of {a.shape}: a swept value that "
            "changes shapes (e.g. a memory size) cannot share one compiled "
            "program; run the values as separate fit calls."))
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def _init_fns(ctx, runs: Sequence[Run], sample, sample_task, batched: bool):
  """Two jittable halves of every run's initial state: ``init_model(seeds)
  -> (params, model_state)`` (a program that depends on the model, its
  inputs and the number of seeds alone, so the compilation cache serves it
  to runs of any strategy and optimizer: it is most of init's compile time)
  and
  ``init_state(seeds, params, model_state) -> state``."""
  def model_one(seed):
    return loop.init_model(ctx, jax.random.key(seed), sample, sample_task)

  def rest_one(run: Run, seed, params, model_state):
    return loop.init_from_model(ctx, run.strategy, run.optimizer,
                                jax.random.key(seed), params, model_state)

  def stacked_rest(seeds, params, model_state):
    # Runs differ by hyperparameters stored in their states: build each.
    return _stack_runs([
        rest_one(r, seeds[i], *jax.tree.map(lambda a, i=i: a[i],
                                            (params, model_state)))
        for i, r in enumerate(runs)])

  if not batched:
    model_all = lambda seeds: model_one(seeds[0])
    rest_all = lambda seeds, *variables: rest_one(runs[0], seeds[0],
                                                  *variables)
  else:
    model_all = jax.vmap(model_one)
    same = all(r.strategy is runs[0].strategy
               and r.optimizer is runs[0].optimizer for r in runs)
    rest_all = (jax.vmap(functools.partial(rest_one, runs[0])) if same
                else stacked_rest)

  def init_model(seeds):
    return model_all(seeds)

  def init_state(seeds, params, model_state):
    return rest_all(seeds, params, model_state)

  return init_model, init_state


def _initial_state(init_execs: Sequence[Any], seeds: np.ndarray) -> Any:
  """The runs' initial state from the compiled halves of :func:`_init_fns`."""
  model_exec, rest_exec = init_execs
  return rest_exec(seeds, *model_exec(seeds))


def _check_sweep_varies(state: TrainState, runs: Sequence[Run]) -> None:
  """Refuses a sweep whose values do not reach the compiled program.

  One program runs run 0's strategy hooks and optimizer update on every
  run's state: a value must live in the state (and the optimizer must not
  recompute it, as ``inject_hyperparams`` does for a schedule), else it is
  lost.
  """
  state = host_copy(state)
  # Typed keys compare by their data (np.array_equal finds two of them
  # unequal, which let every sweep of a strategy holding a key pass).
  leaves = [jax.random.key_data(leaf)
            if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf
            for leaf in jax.tree.leaves((state.cl_state, state.opt_state))]
  for i in range(1, len(runs)):
    if _hook_layout(runs[i].strategy) != _hook_layout(runs[0].strategy):
      raise raised_on_every_host(ValueError(
          f"run {i} of the sweep builds a strategy with other hooks than run "
          "0 (the swept value switches a part of the method on or off, as "
          "rar's use_adversarial_replay): one compiled program cannot serve "
          "both; run the values as separate fit calls."))
    if all(np.array_equal(leaf[0], leaf[i]) for leaf in leaves):
      raise raised_on_every_host(ValueError(
          f"run {i} of the sweep has the same strategy and optimizer state as "
          "run 0: the swept hyperparameter is not stored in the state, so one "
          "compiled program cannot vary it, or the configuration does not "
          "use it (La-MAML's lr_alpha without learn_lr). Store it as an "
          "array in the strategy state, or use optax.inject_hyperparams for "
          "optimizers."))
    if runs[i].optimizer is runs[0].optimizer:
      continue
    params, opt_state = jax.tree.map(lambda a, i=i: a[i],
                                     (state.params, state.opt_state))
    grads = jax.tree.map(np.ones_like, params)
    ours, theirs = (jax.tree.leaves(run.optimizer.update(
        grads, opt_state, params, **optim.loss_arguments(run.optimizer,
                                                         1.0))[0])
                    for run in (runs[0], runs[i]))
    if not all(np.array_equal(a, b) for a, b in zip(ours, theirs)):
      raise raised_on_every_host(ValueError(
          f"run {i} of the sweep would train with run 0's optimizer: its "
          "update differs on its own state (the swept value is recomputed "
          "inside the update, e.g. by an optax.inject_hyperparams schedule). "
          "Inject the value itself (inject_hyperparams(optax.sgd)("
          "learning_rate=value)), or run the values as separate fit calls."))


def _hook_layout(strategy: Strategy) -> tuple[Any, ...]:
  """Which of a strategy's slots hold their default, and its flags, with a
  chain's members' too: what a swept value must not change, since one
  program runs run 0's hooks."""
  defaults = Strategy._field_defaults
  return tuple(tuple(map(_hook_layout, value)) if name == "members" else
               value if isinstance(value, (str, bool)) else
               value is defaults[name]
               for name, value in strategy._asdict().items())


def _fit_runs(model, runs: Sequence[Run], benchmark: Benchmark,
              **kwargs: Any) -> MultiResult:
  """Runs ``runs`` together; on several hosts, an error on one stops all."""
  with stop_all_hosts_on_error():
    return _train_runs(model, runs, benchmark, **kwargs)


def _train_runs(model, runs: Sequence[Run], benchmark: Benchmark, *,
                batched: bool, epochs: int = 1, batch_size: int = 32,
                eval_batch_size: int = 1000, mask_unseen_classes: bool = True,
                loss: Loss | None = None,
                eval_before_training: bool = True,
                eval_every: int | None = None,
                periodic_eval: periodic.PeriodicEval | None = None,
                early_stopping: periodic.EarlyStopping | None = None,
                reset_optimizer: bool = False, reset_schedule: bool = False,
                writer: Any = None,
                progress: bool = False, data_parallel: bool | None = None,
                checkpoint_dir: str | os.PathLike[str] | None = None,
                checkpoint_keep: int = 2, labels: tuple = (),
                swept: bool = False,  # sweep(): runs differ by a value.
                metrics: Any = None,
                device_memory_budget_mb: float | None = None,
                on_nonfinite: str = "raise") -> MultiResult:
  """Runs ``runs`` together: vmapped over a leading axis when ``batched``."""
  start_total = time.perf_counter()
  if jax.config.jax_enable_x64:
    # Labels, counts and steps would turn int64 and no longer match the
    # int32 carries of the compiled loops (a TypeError deep in a scan).
    raise ValueError("jax_enable_x64=True: jaxcl runs its programs with "
                     "32-bit integers and floats; expected jax_enable_x64="
                     "False (JAX's default) while fit or sweep runs.")
  strategy, optimizer = runs[0].strategy, runs[0].optimizer
  for run in runs:
    _check_run(run)
  # Truthy strings would switch them on: reset_optimizer="no" reset.
  for name, value in (("mask_unseen_classes", mask_unseen_classes),
                      ("eval_before_training", eval_before_training),
                      ("reset_optimizer", reset_optimizer),
                      ("reset_schedule", reset_schedule),
                      ("progress", progress)):
    _validation.check_bool(name, value)
  if data_parallel is not None:
    _validation.check_bool("data_parallel", data_parallel)
  checkpoint_keep = _validation.check_positive_int("checkpoint_keep",
                                                   checkpoint_keep)
  flag_nonfinite = _validation.check_choice(
      "on_nonfinite", on_nonfinite, ("raise", "flag")) == "flag"
  if checkpoint_dir is not None:
    checkpoint.check_directory(checkpoint_dir)
  _check_writer(writer)
  chosen = selection.metrics(metrics)
  if ("forward_transfer" in chosen and not chosen.names >=
      selection.DEFAULT_METRICS and not eval_before_training):
    # Chosen by name; with the default groups it is NaN instead.
    raise ValueError("metrics selects 'forward_transfer', which compares with "
                     "the accuracies before training, but "
                     "eval_before_training=False; expected "
                     "eval_before_training=True or no 'forward_transfer'.")
  minibatch = "minibatch" in chosen
  model_fns = _check_args(model, benchmark, epochs, batch_size, eval_batch_size)
  test_stream = benchmark.test_stream
  # Host-side data adaptation is shared by all runs: it uses the first seed.
  train_stream = Stream(benchmark.train_stream.name, [
      _numbered(strategy.adapt_data(e, benchmark.train_stream, runs[0].seed),
                position)
      for position, e in enumerate(benchmark.train_stream)])
  _warn_if_adaptation_depends_on_seed(strategy, benchmark.train_stream,
                                      train_stream, runs)
  n_classes, n_exp = benchmark.n_classes, len(train_stream)
  size = train_stream.max_size
  sample = jnp.asarray(train_stream[0].x[:1])
  place = _placement(data_parallel, len(runs) if batched else 0, batch_size)
  ctx = make_context(model_fns, benchmark, optimizer, batch_size=batch_size,
                     experience_size=size, batch_sharding=place.batch,
                     mask_classes=mask_unseen_classes, loss=loss)
  sample_task = jnp.zeros((1,), jnp.int32)
  _check_model_output(ctx, sample, sample_task)
  _check_loss(ctx, sample, sample_task)

  steps = math.ceil(size / batch_size)
  skip_empty = any(math.ceil(len(e) / batch_size) < steps for e in train_stream)
  eval_fn = loop.make_evaluate(ctx, strategy, eval_batch_size=eval_batch_size,
                               mask_classes=mask_unseen_classes,
                               top_k=chosen.top_k)
  periodic_eval, early_stopping, periodic_stream = _periodic_setup(
      periodic_eval, early_stopping, benchmark)
  # Vmapped runs skip a step or an evaluation together once none needs it.
  run_axis = _runs.RUN_AXIS if batched else None
  watcher = None if periodic_eval is None else periodic.make_watcher(
      periodic_eval, early_stopping, eval_fn, run_axis=run_axis)
  optimizer_reset = ("state" if reset_optimizer else
                     "schedule" if reset_schedule else "none")
  budget = _budget_bytes(device_memory_budget_mb)
  trainer = _streaming_trainer(
      budget, train_stream, periodic_eval, ctx, strategy,
      optimizer, epochs=epochs, mask_classes=mask_unseen_classes,
      optimizer_reset=optimizer_reset, batched=batched,
      runs=len(runs) if batched else 1, seed=runs[0].seed, place=place,
      run_axis=run_axis, minibatch=minibatch)
  train_fn = loop.make_train_experience(
      ctx, strategy, optimizer, epochs=epochs, mask_classes=mask_unseen_classes,
      skip_empty_steps=skip_empty, watcher=watcher,
      optimizer_reset=optimizer_reset, run_axis=run_axis, minibatch=minibatch)
  # With batches split over devices, so is the test stream, unless periodic
  # evaluation (inside the training program) needs it whole anyway.
  split_test = place.batch is not None and periodic_stream is not test_stream
  if batched:
    train_fn = jax.vmap(train_fn, in_axes=(0, None, None),
                        axis_name=run_axis)
    eval_fn = _evaluate_runs(eval_fn)
    if place.batch is None and place.state is not None and _runs_one_by_one():
      eval_fn = _evaluate_runs_in_place(eval_fn, place)
  if split_test:
    eval_fn = _evaluate_split(
        ctx, strategy, place, batched, eval_batch_size=eval_batch_size,
        mask_classes=mask_unseen_classes, top_k=chosen.top_k)
  # The benchmark's stream: adapt_data keeps its order and length, not
  # necessarily its online-stream fields.
  eval_points = _eval_points(benchmark.train_stream, eval_every)
  block = 1 if trainer else _block_length(train_stream, eval_points, budget)
  # Hosts exchange data in the reads below (read_in_shares, streaming): the
  # sequence and sizes of those collectives follow from the streams' layout
  # and these settings, so they are compared first, in a collective of
  # fixed size (the full check of the arguments comes after lowering).
  check_same_everywhere("fit's data layout", {
      "train_stream": _layout(train_stream), "test_stream": _layout(test_stream),
      "periodic_stream": periodic_stream and _layout(periodic_stream),
      "runs": len(runs), "epochs": epochs, "batch_size": batch_size,
      "eval_batch_size": eval_batch_size, "eval_every": eval_every,
      "budget": budget, "streamed": bool(trainer), "block": block,
      "split_test": split_test})

  if checkpoint_dir is not None:
    # Made now, so that one that cannot be is refused before any lowering.
    _validation.make_folder("checkpoint_dir", checkpoint_dir)
  start = time.perf_counter()
  # Compiled init instead of Flax's op-by-op eager initialisation.
  model_init, rest_init = [
      jax.jit(fn, out_shardings=place.state)
      for fn in _init_fns(ctx, runs, sample, sample_task, batched)]
  seeds = np.array([r.seed for r in runs], np.uint32)
  model_shape = jax.eval_shape(model_init, seeds)
  state_shape = jax.eval_shape(rest_init, seeds, *model_shape)
  if optim.has_plateau(state_shape.opt_state) and not isinstance(
      optimizer, optax.GradientTransformationExtraArgs):
    raise ValueError(
        f"optimizer holds optax.contrib.reduce_on_plateau, which needs each "
        f"step's loss, but is a {type(optimizer).__name__}, to which fit "
        "passes no extra arguments; expected an optax."
        "GradientTransformationExtraArgs, e.g. optax.chain(optimizer, "
        "optax.contrib.reduce_on_plateau(...)).")
  if strategy.update is not None and optim.has_plateau(state_shape.opt_state):
    raise ValueError(
        f"{strategy.name} makes its own optimizer updates (several per batch, "
        "without the batch's loss), which optax.contrib.reduce_on_plateau "
        "needs for each; expected an optimizer without reduce_on_plateau "
        "(a schedule as its learning rate instead).")

  def put_training(indices: Sequence[int], in_flight: Any) -> ExperienceData:
    """Experiences ``indices`` on the devices (one, or a block of them).

    Reads are agreed between the hosts after the programs in flight, and
    lazy inputs are read in shares over them (read_in_shares).
    """
    what = (f"training experience {indices[0]}" if len(indices) == 1 else
            f"training experiences {indices[0]}-{indices[-1]}")
    experiences = read_in_shares([train_stream[j] for j in indices], what,
                                 in_flight)
    if block == 1:
      read = lambda: experience_data(experiences[0], size, n_classes)
    else:
      read = lambda: stack_experiences(experiences, n_classes, size=size,
                                       length=block)
    return read_together(what, lambda: put(read(), place.data), in_flight)

  # A split test stream is read per device; a whole one in shares.
  test_experiences = (list(test_stream) if split_test else
                      read_in_shares(test_stream, "the test stream"))
  periodic_experiences = (
      None if periodic_stream is None or periodic_stream is test_stream else
      read_in_shares(periodic_stream, "the periodic-evaluation stream"))

  def read_evaluation_data():
    test = _put_test_stream(test_experiences, test_stream.max_size, n_classes,
                            place, split_test)
    periodic_data = None if periodic_stream is None else (
        test[0] if periodic_experiences is None else put(
            stack_experiences(periodic_experiences, n_classes), place.data))
    return test, periodic_data
  (test_data, test_sharding), periodic_data = read_together(
      "the evaluation streams", read_evaluation_data)
  first = None if trainer or block > 1 else put_training([0], None)
  if trainer:
    train_lowered = trainer.lower(state_shape, train_stream[0])
    train_jaxpr = trainer.chunk_jaxpr
  elif block > 1:
    one_experience = jax.jit(train_fn)
    data_shape = jax.eval_shape(
        lambda: experience_data(train_stream[0], size, n_classes))
    block_shape = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((block, *a.shape), a.dtype), data_shape)
    single = one_experience.trace(state_shape, data_shape, periodic_data)
    train_lowered = [jax.jit(
        _train_block(one_experience, single.out_info[1]), donate_argnums=0,
        in_shardings=(place.state, place.data, place.data, place.data),
        out_shardings=(place.state, _behind_block_axis(place.state))).lower(
            state_shape, block_shape, np.int32(block), periodic_data)]
    train_jaxpr = single.jaxpr
  else:
    train_traced = jax.jit(
        train_fn, donate_argnums=0,
        in_shardings=(place.state, place.data, place.data),
        out_shardings=(place.state, place.state)).trace(
            state_shape, first, periodic_data)
    train_lowered = [train_traced.lower()]
    train_jaxpr = train_traced.jaxpr
  # XLA compiles without the GIL: each program compiles in a thread as soon
  # as it is lowered, while the next one is traced and lowered (after the
  # checks of a checkpoint's configuration, or of every host having the same
  # arguments, if there are any). A thread per program and one for the FLOP
  # analysis, so that none waits long in a queue. Nothing queued is
  # cancelled: a thread that finished a compile may not yet have taken the
  # FLOP analysis when the last compile returns. After an error the
  # submitted jobs finish in the background.
  check_first = checkpoint_dir is not None or jax.process_count() > 1
  # A sweep's values must reach the state: its initial state is checked
  # before the training and evaluation programs compile.
  defer_compiles = check_first or swept
  pool = concurrent.futures.ThreadPoolExecutor(
      len(train_lowered) + 4, thread_name_prefix="jaxcl-compile")
  programs: list[tuple[Any, dict[str, Any] | None]] = []
  compiles: list[concurrent.futures.Future] = []

  compiled_early: dict[int, jax.stages.Compiled] = {}

  def compile_lowered():
    compiles.extend(
        pool.submit(lambda c=compiled_early[id(program)]: c)
        if id(program) in compiled_early else
        pool.submit(_compile, program, options)
        for program, options in programs[len(compiles):])

  try:
    programs.extend((program, None) for program in train_lowered)
    if not defer_compiles:
      compile_lowered()
    init_lowered = (model_init.lower(seeds),
                    rest_init.lower(seeds, *model_shape))
    programs.extend((program, _init_compiler_options())
                    for program in init_lowered)
    if not defer_compiles:
      compile_lowered()
    eval_traced = jax.jit(
        eval_fn, in_shardings=(place.state, test_sharding),
        out_shardings=place.state).trace(state_shape, test_data)
    eval_lowered = eval_traced.lower()
    programs.append((eval_lowered, None))
    lowered = (*init_lowered, *train_lowered, eval_lowered)
    checkpointer = restored = config = None
    if check_first:
      config = checkpoint.run_config(
          benchmark=benchmark, train_stream=train_stream, model=model,
          strategy_name=strategy.name, seeds=[r.seed for r in runs],
          labels=labels, state=state_shape, programs=lowered,
          settings=dict(epochs=epochs, batch_size=batch_size,
                        eval_batch_size=eval_batch_size,
                        mask_unseen_classes=mask_unseen_classes,
                        loss=getattr(ctx.loss, "__qualname__",
                                     type(ctx.loss).__name__),
                        eval_before_training=eval_before_training,
                        eval_every=eval_every,
                        periodic_eval=(periodic_eval and
                                       periodic_eval._asdict()),
                        early_stopping=(early_stopping and
                                        early_stopping._asdict()),
                        reset_optimizer=reset_optimizer,
                        reset_schedule=reset_schedule,
                        streaming=bool(trainer),
                        metrics=sorted(chosen.names), top_k=chosen.top_k,
                        devices=_devices_used(place)))
      # Checkpointing is compared too, but is not part of the fingerprint.
      check_same_everywhere("fit's arguments", {
          **config, "checkpoint_dir given": checkpoint_dir is not None,
          "checkpoint_keep": checkpoint_keep})
    if checkpoint_dir is not None:
      checkpointer = checkpoint.Checkpointer(
          checkpoint_dir, keep=checkpoint_keep, config=config)
      restored = checkpointer.restore(state_shape)
      if restored is not None and restored.step == n_exp:
        # A finished run: nothing left to train or evaluate. The initial
        # state's programs alone, whose state places the checkpoint's arrays.
        programs[:] = [(program, _init_compiler_options())
                       for program in init_lowered]
    if swept:
      # After the checkpoint's comparison, which refuses another run's
      # checkpoint before anything is compiled.
      for program in init_lowered:
        compiled_early[id(program)] = _compile(program,
                                               _init_compiler_options())
      _check_sweep_varies(_initial_state(
          [compiled_early[id(program)] for program in init_lowered], seeds),
                          runs)
    compile_lowered()
    # Analysing the FLOPs needs the GIL, which XLA's compiles leave free; the
    # first evaluation's metrics wait for it, so with cached programs it
    # overlaps the first experiences instead of delaying them.
    # The FLOPs are a function of the programs, so they are cached with them.
    flop_analysis = functools.partial(
        _program_flops, train_jaxpr, eval_traced.jaxpr,
        n_runs=len(runs) if batched else 1,
        runs_share_data=batched and not _runs_one_by_one(),
        own_update=strategy.update is not None)
    # The key (the programs' text) is built in the thread too, and only
    # where there is a cache folder.
    flops = pool.submit(
        compilation.cached_json, "flops",
        lambda: [*(program.as_text() for program in lowered),
                 flop_analysis.keywords, _FLOP_ANALYSIS,
                 system.named_call_flops_setting()],
        flop_analysis, check=_is_flop_counts) if "flops" in chosen else None
    execs = [job.result() for job in compiles]
  finally:
    pool.shutdown(wait=False)
  if len(execs) == len(init_lowered):  # A finished run's.
    init_execs, train_exec, eval_exec = execs, None, None
  else:
    *train_execs, model_exec, rest_exec, eval_exec = execs
    init_execs = (model_exec, rest_exec)
    train_exec = trainer.bind(train_execs) if trainer else train_execs[0]
  state = _initial_state(init_execs, seeds)
  compile_s = time.perf_counter() - start
  recorder = _recorder(chosen, benchmark, flops)

  def per_run(tree):
    """Host copy with a leading run axis, whether or not runs are batched."""
    tree = host_copy(tree)
    return tree if batched else jax.tree.map(lambda a: np.asarray(a)[None], tree)

  eval_s = train_s = 0.0
  n_runs = len(runs)
  initial = np.full((n_runs, len(test_stream)), np.nan)
  if eval_before_training and restored is None:
    counts, seconds = _timed(eval_exec, state, test_data)
    eval_s += seconds
    initial = _accuracies(per_run(counts))

  R = np.full((n_runs, n_exp, len(test_stream)), np.nan)
  histories: list[list[dict[str, float]]] = [[] for _ in runs]
  periodic_histories: list[list[dict[str, Any]]] = [[] for _ in runs]
  # Per run, the minibatch columns of each experience (or block) so far.
  minibatch_parts: list[list[dict[str, np.ndarray]]] = [[] for _ in runs]
  # Per run: (experience, step) where its loss became NaN/inf, if flagged.
  nonfinite: list[tuple[int, int] | None] = [None] * n_runs
  done = 0
  if restored is not None:
    state = checkpoint.place(restored.arrays, state)
    done, meta = restored.step, restored.meta
    R, initial, histories = meta["accuracy"], meta["initial"], meta["histories"]
    periodic_histories = meta["periodic"]
    if minibatch:
      minibatch_parts = [[columns] for columns in meta["minibatch"]]
    nonfinite = [None if at is None else tuple(at)
                 for at in meta.get("nonfinite", nonfinite)]
    final_counts, train_s, eval_s = (meta["final_counts"], meta["train_s"],
                                     meta["eval_s"])
  bar = _progress_bar(n_exp) if progress else None
  if bar is not None:
    bar.update(done)
  # A sweep's runs are written apart, its values' scalars side by side.
  swept_values = labels if swept else None
  held = (_HeldMinibatch(writer, n_runs, swept_values)
          if minibatch and writer is not None else None)
  if held is not None and restored is not None:
    # The steps that some run had not passed at the checkpoint were held.
    passed = int(np.min(per_run(state.step)))
    held.add([{name: column[columns["step"] > passed]
               for name, column in columns.items()}
              for columns in meta["minibatch"]])

  def read_back(pending):
    """Host copies of the trained experiences' metrics, checked in order."""
    for indices, device_metrics in pending:
      host = host_copy(device_metrics)
      for k, j in enumerate(indices):
        train_metrics = per_run(host if block == 1 else jax.tree.map(
            lambda a, k=k: a[k], host))
        points = (_periodic_rows(j, train_metrics.pop("periodic"))
                  if periodic_eval is not None else None)
        check = functools.partial(
            _check_finite, train_metrics["first_nonfinite_step"], j,
            labels if batched else None, writer)
        if flag_nonfinite:
          check(nonfinite)
          train_metrics, points = _blank_flagged(train_metrics, points,
                                                 nonfinite)
        if points is not None:
          for history, run_points in zip(periodic_histories, points):
            history.extend(run_points)
          if writer is not None:
            _write_periodic(writer, periodic_eval.stream, points,
                            swept_values)
        if minibatch:
          steps = _minibatch_columns(j, train_metrics.pop("minibatch"),
                                     nonfinite if flag_nonfinite else None)
          for parts, columns in zip(minibatch_parts, steps):
            parts.append(columns)
          if held is not None:
            held.add(steps)
        if not flag_nonfinite:
          if held is not None and np.any(
              train_metrics["first_nonfinite_step"] >= 0):
            held.write()  # Before the error, as the periodic points.
          # After the periodic points, which are written before the error.
          check(None)
        if writer is not None:  # Every experience's, evaluated or not.
          _write_train(writer, j, train_metrics, swept_values)
    return train_metrics

  # Experiences between two evaluations are dispatched without waiting for
  # them, so the host prepares the next one while the device trains; their
  # metrics are read back (and checked) at the evaluation. Only the one
  # before the last is waited for, so that at most two experiences' (or
  # blocks') data are on the devices.
  pending = []
  if done:  # Resumed: experience 0 has trained already.
    first = None
  span_start, span_cpu = time.perf_counter(), time.process_time()
  for indices in _blocks(range(done, n_exp), eval_points, block):
    i = indices[-1]
    if trainer:
      state, device_metrics = train_exec(state, train_stream[i], periodic_data)
    elif block == 1:
      # Experience 0 was put before compiling; no reference is kept to it
      # afterwards, so that its device memory is freed once it has trained.
      data, first = (first, None) if i == 0 else (
          put_training(indices, in_flight=state), None)
      state, device_metrics = train_exec(state, data, periodic_data)
    else:
      data = put_training(indices, in_flight=state)
      # Placed explicitly, without comparing it between hosts (_hosts.put)
      # while the previous block may still be running its all-reduces.
      state, device_metrics = train_exec(
          state, data, put(np.int32(len(indices)), place.data), periodic_data)
    pending.append((indices, device_metrics))
    if len(pending) > 1:
      jax.block_until_ready(pending[-2][1])
    if i not in eval_points:
      if bar is not None:
        bar.update(len(indices))
      continue
    jax.block_until_ready(state)
    span_s = time.perf_counter() - span_start
    train_s += span_s
    cpu = [_percent(time.process_time() - span_cpu, span_s)]
    train_metrics, pending = read_back(pending), []
    if held is not None:  # Every run has passed its own step count.
      held.write(upto=int(np.min(per_run(state.step))))
    eval_cpu = time.process_time()
    counts, seconds = _timed(eval_exec, state, test_data)
    cpu.append(_percent(time.process_time() - eval_cpu, seconds))
    eval_s += seconds
    counts = per_run(counts)
    # What the results keep of the latest evaluation (class ids per task).
    final_counts = {"confusion": counts.confusion,
                    "class_correct": counts.class_correct.sum(1),
                    "class_count": counts.class_count.sum(1)}
    R[:, i] = _accuracies(counts)
    diverged = [r for r in range(n_runs) if nonfinite[r] is not None]
    R[diverged, i] = np.nan
    # Once per evaluation: the runs share the disk.
    disk_kb = recorder.disk() if recorder.disk is not None else None
    rows = [_experience_metrics(i, R[r], initial[r],
                                jax.tree.map(lambda a: a[r], counts),
                                jax.tree.map(lambda a: a[r], train_metrics),
                                histories[r], recorder, train_s, seconds, cpu,
                                disk_kb)
            for r in range(n_runs)]
    for r, (history, row) in enumerate(zip(histories, rows)):
      if early_stopping is not None:
        # Per epoch, experience i takes only the steps its samples fill (none
        # for an experience adapt_data emptied: joint's after the first).
        steps_per_epoch = math.ceil(len(train_stream[i]) / batch_size)
        row["epochs_trained"] = (
            float(train_metrics["steps_trained"][r]) / steps_per_epoch
            if steps_per_epoch else 0.0)
      if r in diverged:  # Its early stop too was decided on NaN values.
        rows[r] = row = _diverged(row)
      history.append(row)
    if writer is not None:
      _write_eval(writer, i, rows, R[:, i], swept_values)
    if bar is not None:
      if "stream_accuracy" in rows[0]:
        bar.set_postfix(
            acc=f"{_mean_std([r['stream_accuracy'] for r in rows])[0]:.3f}")
      bar.update(len(indices))
    if checkpointer is not None:
      # A checkpointed experience's metrics must be on disk with it: a run
      # killed later resumes after it and does not write them again. Held
      # minibatch steps stay held: a resumed run holds them again.
      if writer is not None:
        writer.flush()
      checkpointer.save(i + 1, state, {
          "accuracy": R, "initial": initial, "final_counts": final_counts,
          "histories": histories, "periodic": periodic_histories,
          "nonfinite": nonfinite, "train_s": train_s, "eval_s": eval_s,
          "minibatch": minibatch and [_concatenated(parts)
                                      for parts in minibatch_parts]})
    span_start, span_cpu = time.perf_counter(), time.process_time()
  if checkpointer is not None:
    checkpointer.close()
  if bar is not None:
    bar.close()
  timings = {"compile_s": compile_s, "train_s": train_s, "eval_s": eval_s,
             "total_s": time.perf_counter() - start_total}
  if recorder.disk is not None and recorder.disk.never_found():
    warnings.warn(f"disk_usage measured paths that never existed during "
                  f"the run (counted 0): {recorder.disk.never_found()}.",
                  stacklevel=3)
  if held is not None:
    held.write()
  if writer is not None:  # Outside total_s: a writer may still be starting.
    writer.flush()
  chosen_or_none = lambda name, make: make() if name in chosen else None
  final_counts = _blank_final_counts(final_counts, nonfinite)
  confusion = final_counts["confusion"]
  # Runs split over several hosts' devices: every host gets every run (in
  # host memory, which holds all runs more easily than each device would).
  state = addressable(state)
  results = [
      Result(accuracy_matrix=R[r], metrics=_final(histories[r]),
             history=histories[r], timings=timings,
             periodic=periodic_histories[r], nonfinite=nonfinite[r],
             minibatch=(_concatenated(minibatch_parts[r]) if minibatch
                        else None),
             initial_accuracies=initial[r],
             trained_columns=recorder.columns.copy(),
             confusion_matrix=chosen_or_none("confusion_matrix",
                                             lambda: confusion[r]),
             state=jax.tree.map(lambda a: a[r], state) if batched else state,
             class_accuracy=chosen_or_none(
                 "class_accuracy", lambda: class_metrics.class_accuracy(
                     np.diag(confusion[r]), confusion[r].sum(1))),
             task_class_accuracy=chosen_or_none(
                 "class_accuracy", lambda: class_metrics.class_accuracy(
                     final_counts["class_correct"][r],
                     final_counts["class_count"][r])),
             labels_repartition=chosen_or_none(
                 "labels_repartition", lambda: class_metrics.labels_repartition(
                     train_stream, n_classes)))
      for r in range(n_runs)]
  per_metric = {k: [res.metrics[k] for res in results] for k in results[0].metrics}
  return MultiResult(
      labels=labels, runs=results, accuracy_matrices=R,
      metrics={k: _mean_std(v) for k, v in per_metric.items()},
      metrics_per_run=per_metric, timings=timings)


def _warn_if_adaptation_depends_on_seed(strategy: Strategy, stream: Stream,
                                        adapted: Stream,
                                        runs: Sequence[Run]) -> None:
  """Warns when ``adapt_data`` draws other data for another run's seed.

  The runs share the first seed's data (GDumb's memory, say), so each run
  differs from its run alone. One experience tells, the smallest once
  adapted (labels and inputs): the others may hold the whole stream
  (cumulative, joint), which a lazily read benchmark would read again.
  """
  other = next((r.seed for r in runs if r.seed != runs[0].seed), None)
  if other is None or strategy.adapt_data is Strategy().adapt_data:
    return
  i = int(np.argmin([len(e) for e in adapted]))
  probe = strategy.adapt_data(stream[i], stream, other)
  # Inputs too: a class-balanced memory holds other samples of the same
  # labels. Adapting with the first seed again leaves a strategy's cache
  # (GDumb keeps its last stream and seed) as the runs will use it.
  differs = not (np.array_equal(np.asarray(probe.y), np.asarray(adapted[i].y))
                 and np.array_equal(np.asarray(probe.x),
                                    np.asarray(adapted[i].x)))
  strategy.adapt_data(stream[i], stream, runs[0].seed)
  if differs:
    warnings.warn(
        f"strategy {strategy.name!r} draws its training data on the host "
        "from the seed (adapt_data: GDumb's memory, for one), and seeds "
        f"trained together share the first seed's ({runs[0].seed}) data: "
        "each run's numbers differ from its run alone. Train the seeds "
        "one at a time for per-seed data.", UserWarning, stacklevel=5)


def _eval_points(train_stream: Stream, eval_every: int | None) -> set[int]:
  """Indices of the train experiences after which the test stream is evaluated."""
  n = len(train_stream)
  if eval_every is None:
    origins = [getattr(e, "origin_experience", None) for e in train_stream]
    if all(o is None for o in origins):
      return set(range(n))
    # Online stream: evaluate when an original experience is complete.
    return {i for i in range(n) if i == n - 1 or origins[i + 1] != origins[i]}
  eval_every = _validation.check_positive_int("eval_every", eval_every)
  return {i for i in range(n) if (i + 1) % eval_every == 0 or i == n - 1}


# Host bytes of the experiences that one call trains (see _block_length).
_BLOCK_BYTES = 32 * 2**20


def _block_length(train_stream: Stream, eval_points: set[int],
                  budget: int) -> int:
  """How many experiences one compiled call trains.

  Each call costs about a millisecond of host work (padding, transfer,
  dispatch), more than the training of a mini-experience of an online
  stream. So the experiences between two evaluations are trained by one call
  that scans over them: as many as the longest such span, as long as their
  data fits in ``_BLOCK_BYTES`` and in ``budget`` (the device memory budget,
  bytes); a longer span is cut into blocks of near-equal length, so that its
  last block is not mostly padding. 1 (one call per experience) where every
  experience is evaluated or experiences are large.
  """
  span = longest = 0
  for i in range(len(train_stream)):
    span += 1
    longest = max(longest, span)
    span = 0 if i in eval_points else span
  per_experience = train_stream.max_size * streaming.sample_nbytes(
      train_stream[0])
  fits = max(1, min(_BLOCK_BYTES, budget) // per_experience)
  return math.ceil(longest / math.ceil(longest / fits))


def _blocks(indices: Sequence[int], eval_points: set[int],
            length: int) -> list[list[int]]:
  """``indices`` cut after every evaluation point and every ``length``."""
  blocks, current = [], []
  for i in indices:
    current.append(i)
    if i in eval_points or len(current) == length:
      blocks.append(current)
      current = []
  if current:
    blocks.append(current)
  return blocks


def _behind_block_axis(sharding: Any) -> Any:
  """``sharding`` of per-run arrays, for the same arrays stacked per experience.

  A block's metrics carry the block's experience axis first, so runs split
  over devices are split along the second axis.
  """
  if sharding is None:
    return None
  return jax.sharding.NamedSharding(
      sharding.mesh, jax.sharding.PartitionSpec(None, *sharding.spec))


def _train_block(train_fn: Callable, metrics_shape: Any) -> Callable:
  """``(state, block, n_valid, eval_data) -> (state, metrics)`` over a block.

  Trains the first ``n_valid`` of the block's stacked experiences in order
  with ``train_fn``; the rest repeat the last one to keep the block's shape
  (one program for every block) and are skipped. Metrics are stacked on a
  leading experience axis (zeros for the skipped ones).
  """

  def skip(state, data, eval_data):
    del data, eval_data
    return state, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                               metrics_shape)

  def train_block(state, block, n_valid, eval_data):
    def body(state, inputs):
      data, k = inputs
      return jax.lax.cond(k < n_valid, train_fn, skip, state, data, eval_data)
    length = jax.tree.leaves(block)[0].shape[0]
    return jax.lax.scan(body, state, (block, jnp.arange(length)))

  return train_block


def _numbered(experience: Experience, position: int) -> Experience:
  """``experience`` with its position in the trained stream as its index.

  A sliced stream (``train_stream[2:]``) keeps its experiences' indices
  (2, 3, ...); the strategies (a replay memory's experience groups, ER-ACE's
  first experience) and the streaming subsets count the experiences trained.
  """
  if experience.index == position:
    return experience
  return dataclasses.replace(experience, index=position)


def _budget_bytes(budget_mb: float | None) -> int:
  """``device_memory_budget_mb`` in bytes, or the default budget."""
  if budget_mb is None:
    return streaming.default_budget_bytes()
  return int(_validation.check_in_range(
      "device_memory_budget_mb", budget_mb, low=0.0, low_inclusive=False)
             * 2**20)


def _streaming_trainer(budget: int, train_stream: Stream,
                       periodic_eval: periodic.PeriodicEval | None,
                       ctx: StrategyContext, strategy: Strategy,
                       optimizer: optax.GradientTransformation, *, epochs: int,
                       mask_classes: bool, optimizer_reset: str, batched: bool,
                       runs: int, seed: int, place: _Placement,
                       run_axis: str | None, minibatch: bool
                       ) -> streaming.StreamingTrainer | None:
  """A streaming trainer if the largest experience exceeds ``budget`` bytes, else None."""
  sample_bytes = streaming.sample_nbytes(train_stream[0])
  if train_stream.max_size * sample_bytes <= budget:
    return None
  if periodic_eval is not None:
    raise ValueError(
        f"the largest experience ({train_stream.max_size} samples, "
        f"{train_stream.max_size * sample_bytes / 2**20:.1f} MB) exceeds "
        f"device_memory_budget_mb={budget / 2**20:g}, so it would be "
        "streamed, and periodic evaluation / early stopping need the "
        "on-device path; raise the budget or drop periodic_eval.")
  parts = loop.make_experience_parts(
      ctx, strategy, optimizer, mask_classes=mask_classes,
      skip_empty_steps=True, optimizer_reset=optimizer_reset,
      run_axis=run_axis, minibatch=minibatch)
  return streaming.StreamingTrainer(
      ctx, parts, epochs=epochs, budget_bytes=budget, sample_bytes=sample_bytes,
      batched=batched, n_classes=ctx.n_classes, seed=seed, place=place,
      runs=runs)


def _periodic_setup(periodic_eval: periodic.PeriodicEval | None,
                    early_stopping: periodic.EarlyStopping | None,
                    benchmark: Benchmark
                    ) -> tuple[periodic.PeriodicEval | None,
                               periodic.EarlyStopping | None, Stream | None]:
  """Checks the periodic evaluation settings; returns them (validated) and
  their stream."""
  implied = False
  if early_stopping is not None:
    if not isinstance(early_stopping, periodic.EarlyStopping):
      raise TypeError(f"early_stopping must be a jaxcl.EarlyStopping, got "
                      f"{type(early_stopping).__name__}.")
    early_stopping = early_stopping.validate()
    implied = periodic_eval is None
    periodic_eval = periodic_eval or periodic.PeriodicEval()
  if periodic_eval is None:
    return None, None, None
  if not isinstance(periodic_eval, periodic.PeriodicEval):
    raise TypeError(f"periodic_eval must be a jaxcl.PeriodicEval, got "
                    f"{type(periodic_eval).__name__}.")
  periodic_eval = periodic_eval.validate(benchmark.valid_stream is not None,
                                         implied_by_early_stopping=implied)
  if early_stopping is not None and early_stopping.patience < periodic_eval.every:
    # The stop is tested at every tick: it would always come at tick
    # `patience`, before the first evaluation during training could improve.
    raise ValueError(
        f"early_stopping's patience={early_stopping.patience} is below "
        f"periodic_eval's every={periodic_eval.every}: every experience "
        f"would stop after {early_stopping.patience} "
        f"{periodic_eval.unit}(s), before its first evaluation; expected "
        f"patience >= every (CLI: --early-stopping >= --periodic-eval).")
  stream = (benchmark.valid_stream if periodic_eval.stream == "valid"
            else benchmark.test_stream)
  return periodic_eval, early_stopping, stream


def _periodic_rows(i: int, records: Mapping[str, np.ndarray]
                   ) -> list[list[dict[str, Any]]]:
  """Per run, the periodic evaluations of experience ``i`` that took place."""
  rows = []
  for r in range(records["count"].shape[0]):
    count = records["count"][r]
    run_rows = []
    for p in np.flatnonzero(count.sum(-1) > 0):
      correct, total = records["correct"][r, p], count[p]
      run_rows.append({
          "experience": i, "step": int(records["step"][r, p]),
          "stream_accuracy": cl_metrics.stream_accuracy(correct, total),
          "stream_loss": float(records["loss_sum"][r, p].sum() / total.sum()),
          "experience_accuracy": (correct / np.maximum(total, 1)).tolist()})
    rows.append(run_rows)
  return rows


_MINIBATCH_COLUMNS = ("experience", "epoch", "step", "loss", "accuracy")


def _minibatch_columns(i: int, steps: Mapping[str, np.ndarray],
                       flagged: Sequence[tuple[int, int] | None] | None
                       ) -> list[dict[str, np.ndarray]]:
  """Per run, the steps of experience ``i`` that ran, as ``Result.minibatch``
  columns; after a flagged run's non-finite step (``flagged``, as
  ``Result.nonfinite`` per run) its values are NaN, as are the other
  measures of its model."""
  columns = []
  for r, step in enumerate(steps["step"]):
    ran = step >= 0  # [epochs, steps per epoch]
    run = {"experience": np.full(ran.sum(), i, np.int64),
           "epoch": np.nonzero(ran)[0].astype(np.int64),
           "step": step[ran].astype(np.int64),
           "loss": steps["loss"][r][ran].astype(np.float64),
           "accuracy": steps["accuracy"][r][ran].astype(np.float64)}
    at = None if flagged is None else flagged[r]
    if at is not None:
      # The bad step itself keeps its non-finite loss.
      after = run["step"] > at[1] + 1 if at[0] == i else slice(None)
      run["loss"][after] = run["accuracy"][after] = np.nan
    columns.append(run)
  return columns


def _concatenated(parts: Sequence[Mapping[str, np.ndarray]]
                  ) -> dict[str, np.ndarray]:
  """Minibatch columns of consecutive experiences, joined."""
  return {name: np.concatenate([p[name] for p in parts])
          for name in _MINIBATCH_COLUMNS}


def _check_finite(bad: np.ndarray, i: int, labels: tuple | None,
                  writer: Any,
                  flagged: list[tuple[int, int] | None] | None) -> None:
  """Raises if a run's loss became NaN/inf during experience ``i``.

  With ``flagged`` (``on_nonfinite="flag"``, one entry per run), records
  each run's first such experience and step there and warns instead.
  """
  bad = np.atleast_1d(bad)
  if not np.any(bad >= 0):
    return
  which = lambda r: (f" (run {r}, label {labels[r]})" if labels is not None
                     else "")
  where = lambda r: (f"The training loss became NaN or infinite in experience "
                     f"{i} at optimizer step {int(bad[r])}{which(r)}")
  if flagged is not None:
    for r in np.flatnonzero(bad >= 0):
      if flagged[r] is None:
        flagged[r] = (i, int(bad[r]))
        warnings.warn(f"{where(r)}; training goes on (on_nonfinite='flag') "
                      "and this run's metrics from this experience on are "
                      "NaN.", RuntimeWarning, stacklevel=2)
    return
  if writer is not None:
    writer.flush()
  # Every host reads back the same losses (replicated, or gathered runs).
  others = (" (or pass on_nonfinite='flag' to let the other runs finish)"
            if len(bad) > 1 else "")
  raise raised_on_every_host(FloatingPointError(
      f"{where(int(np.argmax(bad >= 0)))}; the metrics of the evaluations "
      "before it were written. Lower the learning rate or check the "
      f"inputs{others}."))


# A diverged run's row keeps what does not measure its model.
_MEASURED_ANYWAY = frozenset({
    "experience", "step", "train_time_s", "eval_time_s", "train_cpu_usage",
    "eval_cpu_usage", "peak_host_memory_mb", "peak_device_memory_mb",
    "disk_usage_kb", "train_flops", "eval_flops"})


def _diverged(row: dict[str, Any]) -> dict[str, Any]:
  """``row`` of a run whose loss became NaN/inf: its model's metrics NaN."""
  def blank(value):
    return [float("nan")] * len(value) if isinstance(value, list) else (
        float("nan"))
  return {k: v if k in _MEASURED_ANYWAY else blank(v) for k, v in row.items()}


def _blank_final_counts(final_counts: dict[str, np.ndarray],
                        flagged: Sequence[tuple[int, int] | None]
                        ) -> dict[str, np.ndarray]:
  """The final confusion and class counts, NaN for flagged runs (whose
  model is NaN): per-run lists then."""
  if all(at is None for at in flagged):
    return final_counts
  # Per run, so that the other runs keep their integer counts.
  return {k: [v[r] if at is None else np.full(np.shape(v[r]), np.nan)
              for r, at in enumerate(flagged)]
          for k, v in final_counts.items()}


def _blank_flagged(train_metrics: dict[str, np.ndarray],
                   points: list[list[dict[str, Any]]] | None,
                   flagged: Sequence[tuple[int, int] | None]
                   ) -> tuple[dict[str, np.ndarray], Any]:
  """An experience's training metrics and periodic points with the flagged
  runs' (whose loss became NaN/inf) measures of their model NaN."""
  runs = [r for r, at in enumerate(flagged) if at is not None]
  if not runs:
    return train_metrics, points
  train_metrics = dict(train_metrics)
  for name in ("loss", "accuracy"):
    train_metrics[name] = np.array(train_metrics[name], np.float64)
    train_metrics[name][runs] = np.nan
  if points is not None:
    points = [[_diverged(p) for p in run_points] if r in runs else run_points
              for r, run_points in enumerate(points)]
  return train_metrics, points


def _final(history: list[dict[str, float]]) -> dict[str, float]:
  return {k: v for k, v in history[-1].items() if k != "experience"}


def _accuracies(counts: loop.EvalCounts) -> np.ndarray:
  """Per-run, per-experience accuracy from counts with a leading run axis."""
  return counts.correct / np.maximum(counts.count, 1)


class _Recorder(NamedTuple):
  """What every experience's metrics need besides the evaluation counts.

  Attributes:
    chosen: The selected metric groups.
    new_classes: ``bool[T, n_classes]``: the classes of training experience
      ``i`` (before ``adapt_data``, as Avalanche's ``MeanScores`` takes them).
    seen_classes: ``bool[T, n_classes]``: the classes of experiences ``0..i``.
    flops: The analysis giving ``train_flops`` and ``eval_flops`` (still
      running while the first experiences train), if selected.
    columns: The test experience each train experience trains (-1: none),
      see :func:`jaxcl.evaluation.trained_columns`.
    disk: What measures ``disk_usage_kb``, if selected.
  """

  chosen: selection.MetricSelection
  new_classes: np.ndarray
  seen_classes: np.ndarray
  flops: concurrent.futures.Future | None
  columns: np.ndarray
  disk: system.DiskUsage | None


def _recorder(chosen: selection.MetricSelection, benchmark: Benchmark,
              flops: concurrent.futures.Future | None) -> _Recorder:
  new = np.zeros((len(benchmark.train_stream), benchmark.n_classes), bool)
  for i, experience in enumerate(benchmark.train_stream):
    new[i, list(experience.classes)] = True
  return _Recorder(chosen, new, np.logical_or.accumulate(new, axis=0),
                   flops, cl_metrics.trained_columns(
                       benchmark.train_stream, len(benchmark.test_stream)),
                   system.DiskUsage(chosen.disk_paths)
                   if "disk_usage" in chosen else None)


def _check_writer(writer: Any) -> None:
  """``writer`` is None or a clu-style metric writer, checked before any
  compile (a path given by mistake failed after the first experience)."""
  missing = [m for m in ("write_scalars", "flush")
             if not callable(getattr(writer, m, None))]
  if writer is not None and missing:
    raise TypeError(
        f"writer must be a clu MetricWriter (e.g. jaxcl.loggers."
        f"create_writers(logdir)), got {writer!r}, which lacks "
        f"{', '.join(missing)}.")


def _compile(program: jax.stages.Lowered,
             options: dict[str, Any] | None) -> jax.stages.Compiled:
  """``program.compile``; options that this jaxlib does not know are dropped."""
  options = dict(options or {})
  while True:
    try:
      return program.compile(compiler_options=options or None)
    except Exception as e:  # XLA names the first unknown option.
      unknown = re.search(r"No such compile option: '(\w+)'", str(e))
      if unknown is None or unknown.group(1) not in options:
        raise
      del options[unknown.group(1)]


def _init_compiler_options() -> dict[str, Any]:
  """XLA options for the init program, which runs once.

  Its code is not worth optimising, so it is compiled for compile time
  alone. On a CPU that includes XLA's older fusion emitters, which compile it
  twice as fast as the MLIR ones; training and evaluation keep the MLIR
  emitters, whose kernels run 2-15 % faster (docs/performance.md).
  """
  options = {"xla_backend_optimization_level": 0}
  if jax.default_backend() == "cpu":
    options["xla_cpu_use_fusion_emitters"] = False
  return options


def _runs_one_by_one() -> bool:
  """Whether stacked runs are evaluated one after another (on a CPU)."""
  return jax.default_backend() == "cpu"


def _evaluate_runs(eval_fn: Callable) -> Callable:
  """Evaluates stacked runs: vmapped on accelerators, one by one on a CPU.

  On a CPU one run's evaluation already keeps the cores busy, and vmapping
  it only changes its program: per-run convolution outputs get stacked,
  which XLA:CPU's fused convolution kernels do not take (4 SimpleCNN seeds:
  16 s of evaluation vmapped, 2.1 s one by one; MLPs: the same time).
  ``lax.map`` keeps one run's program and compiles it once.
  """
  if not _runs_one_by_one():
    return jax.vmap(eval_fn, in_axes=(0, None))
  return lambda states, data: jax.lax.map(
      lambda state: eval_fn(state, data), states)


def _evaluate_runs_in_place(eval_fn: Callable, place: _Placement) -> Callable:
  """Runs split over the devices, each device evaluating its own.

  A CPU's ``lax.map`` over a run axis split over devices gathered every
  run's parameters on every device, which then evaluated all of them (4
  seeds on 4 CPU devices: 0.66-0.74 s of evaluation against 0.21 s on one
  device, the scale review).
  """
  mesh = place.state.mesh
  (axis,) = mesh.axis_names
  runs, whole = jax.sharding.PartitionSpec(axis), jax.sharding.PartitionSpec()
  return jax.shard_map(eval_fn, mesh=mesh, in_specs=(runs, whole),
                       out_specs=runs, check_vma=False)


def _layout(stream: Stream) -> list[list[Any]]:
  """Each experience's length, input dtype and shape, and whether in memory."""
  return [[len(e), np.dtype(e.x.dtype).str, list(e.x.shape[1:]),
           isinstance(e.x, np.ndarray)] for e in stream]


def _put_test_stream(experiences: Sequence[Experience], max_size: int,
                     n_classes: int, place: _Placement,
                     split: bool) -> tuple[ExperienceData, Any]:
  """The stacked test stream on the devices, and its shardings.

  If ``split``, its samples are split over the devices (see
  :func:`_evaluate_split`): each host reads only its devices' share.
  """
  if not split:
    return put_experiences(experiences, n_classes, max_size, place.data,
                           place.data), place.data
  mesh = place.batch.mesh
  samples = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(None, *mesh.axis_names))
  size = -(-max_size // mesh.size) * mesh.size
  data = put_experiences(experiences, n_classes, size, samples, place.data)
  return data, ExperienceData(x=samples, y=samples, task=samples,
                              size=place.data, index=place.data,
                              classes_mask=place.data,
                              class_counts=place.data,
                              origin_experience=place.data)


def _evaluate_split(ctx: StrategyContext, strategy: Strategy,
                    place: _Placement, batched: bool, *, eval_batch_size: int,
                    **evaluate_kwargs: Any) -> Callable:
  """Evaluates a stream whose samples are split over the devices.

  Each device evaluates the samples it holds, ``eval_batch_size`` over the
  devices at a time, and the counts are summed over the devices: no device
  holds the whole stream, and no chunk of it moves between devices.
  """
  mesh = place.batch.mesh
  (axis,) = mesh.axis_names
  local = loop.make_evaluate(
      ctx._replace(batch_sharding=None), strategy,
      eval_batch_size=max(eval_batch_size // mesh.size, 1), **evaluate_kwargs)
  if batched:
    local = _evaluate_runs(local)

  def on_device(state, data):
    rows = data.y.shape[-1]
    first = jax.lax.axis_index(axis) * rows
    data = data.replace(size=jnp.clip(data.size - first, 0, rows))
    return jax.lax.psum(local(state, data), axis)

  split = jax.sharding.PartitionSpec(None, axis)
  whole = jax.sharding.PartitionSpec()
  data_specs = ExperienceData(x=split, y=split, task=split, size=whole,
                              index=whole, classes_mask=whole,
                              class_counts=whole, origin_experience=whole)
  # The evaluation's scans start from constant (device-invariant) counts and
  # add device-varying ones; without the check, `psum` alone makes them
  # invariant again.
  return jax.shard_map(on_device, mesh=mesh, in_specs=(whole, data_specs),
                       out_specs=whole, check_vma=False)


# Part of the cached FLOP counts' key: bumped when the analysis changes
# while the programs it analyses may not.
_FLOP_ANALYSIS = "named calls lowered for the CPU, session 12"


def _is_flop_counts(value: Any) -> bool:
  """Whether a cached value has :func:`_program_flops`'s form."""
  return (isinstance(value, dict)
          and set(value) == {"train_flops", "eval_flops"}
          and all(isinstance(v, (int, float)) for v in value.values()))


def _program_flops(train_jaxpr: Any, eval_jaxpr: Any, *, n_runs: int,
                   runs_share_data: bool,
                   own_update: bool = False) -> dict[str, float]:
  """FLOPs of one optimizer step and of evaluating one sample, for one run.

  XLA counts a loop body once whatever its trip count, so the compiled
  programs give no per-step number: the training step and the evaluation of
  one chunk are named calls (:data:`loop.TRAIN_BATCH_CALL` and
  :data:`loop.TRAIN_STEP_CALL`, the step's batch transform and the rest;
  :data:`loop.EVAL_CHUNK_CALL`), found in the programs' jaxprs and analysed
  on their own. The jaxprs are those the programs were lowered from, so no
  hook is traced again. The step of vmapped runs is every run's; a chunk's
  count is divided by its rows (its last argument, the real-row mask: one
  device's share when the test stream is split over devices) and, when
  vmapped runs share the data (``runs_share_data``, see
  :func:`_evaluate_runs`), by the runs. NaN where a call is not found or the
  backend has no cost analysis, and for the step of a strategy that
  replaces it (``own_update``: MER's inner steps are loops, counted once).
  """
  nan = float("nan")
  step = system.named_call_flops(train_jaxpr, loop.TRAIN_STEP_CALL)
  batch = system.named_call_flops(train_jaxpr, loop.TRAIN_BATCH_CALL)
  if step is not None and batch is not None:
    step = (step[0] + batch[0],)
  chunk = system.named_call_flops(eval_jaxpr, loop.EVAL_CHUNK_CALL)
  rows = None if chunk is None else math.prod(chunk[1][-1].shape) * (
      n_runs if runs_share_data else 1)
  if own_update:
    step = None
  return {"train_flops": nan if step is None else step[0] / n_runs,
          "eval_flops": nan if chunk is None else chunk[0] / rows}


def _experience_metrics(i: int, R: np.ndarray, initial: np.ndarray,
                        counts: loop.EvalCounts,
                        train_metrics: Mapping[str, np.ndarray],
                        history: Sequence[Mapping[str, float]],
                        recorder: _Recorder, train_s: float,
                        eval_seconds: float,
                        cpu_usage: Sequence[float] = (np.nan, np.nan),
                        disk_kb: float | None = None) -> dict:
  """One run's metrics after training experience ``i`` (the selected groups).

  Args:
    i: Index of the experience just trained.
    R: The run's accuracy matrix so far.
    initial: The run's accuracies before training (NaN if not evaluated).
    counts: The run's evaluation of the test stream after experience ``i``.
    train_metrics: The run's per-epoch training metrics of experience ``i``.
    history: The run's rows of the earlier evaluations.
    recorder: Selection, class masks and FLOPs of the stream.
    train_s: Training seconds of experiences ``0..i`` (all runs together).
    eval_seconds: Seconds of this evaluation (all runs together).
    cpu_usage: The process's CPU usage in percent while training since the
      last evaluation, and while evaluating (all runs together).
    disk_kb: ``disk_usage_kb`` measured after this evaluation.

  Returns:
    A flat ``{name: float}`` row (plus ``experience``).
  """
  chosen = recorder.chosen
  pooled = lambda correct: cl_metrics.stream_accuracy(correct, counts.count)
  row: dict[str, Any] = {"experience": i}
  if "accuracy" in chosen:
    row["stream_accuracy"] = pooled(counts.correct)
    row["train_accuracy"] = _last_trained(train_metrics["accuracy"])
  if "loss" in chosen:
    row["stream_loss"] = float(np.sum(counts.loss_sum) / np.sum(counts.count))
    row["train_loss"] = _last_trained(train_metrics["loss"])
  if "topk_accuracy" in chosen:
    row[f"top{counts.top_k}_accuracy"] = pooled(counts.correct_topk)
  if "trained_experience_accuracy" in chosen:
    row["accuracy_on_trained_experiences"] = (
        cl_metrics.accuracy_on_trained_experiences(
            counts.correct, counts.count, i, recorder.columns))
  if "forgetting" in chosen:
    row["forgetting"] = cl_metrics.stream_forgetting(R, i, recorder.columns)
  if "bwt" in chosen:
    row["bwt"] = cl_metrics.stream_bwt(R, i, recorder.columns)
  if "forward_transfer" in chosen:
    row["forward_transfer"] = cl_metrics.stream_forward_transfer(
        R, initial, i, recorder.columns)
  if "amca" in chosen:
    # Every evaluation sees the same test stream, so the tracked classes are
    # those with test samples and AMCA is the running mean of each
    # evaluation's mean class accuracy (averaged over task labels).
    mca = class_metrics.mean_class_accuracy(counts.class_correct.sum(0),
                                            counts.class_count.sum(0))
    row["mean_class_accuracy"] = float(np.nanmean(mca))
    row["amca"] = float(np.mean([h["mean_class_accuracy"] for h in history]
                                + [row["mean_class_accuracy"]]))
  if "mean_scores" in chosen:
    new = recorder.new_classes[i]
    row["mean_score_new"], row["mean_score_old"] = class_metrics.mean_scores(
        counts.class_score.sum((0, 1)), counts.class_count.sum((0, 1)), new,
        recorder.seen_classes[i] & ~new)
  if "timing" in chosen:
    row["train_time_s"] = train_s - sum(h["train_time_s"] for h in history)
    row["eval_time_s"] = eval_seconds
  if "cpu_usage" in chosen:
    row["train_cpu_usage"], row["eval_cpu_usage"] = map(float, cpu_usage)
  if "disk_usage" in chosen:
    row["disk_usage_kb"] = disk_kb
  if "memory" in chosen:
    device = system.peak_device_memory_mb()
    row["peak_host_memory_mb"] = system.peak_host_memory_mb()
    row["peak_device_memory_mb"] = float("nan") if device is None else device
  if recorder.flops is not None:
    row.update(recorder.flops.result())
  return row


def _last_trained(per_epoch: np.ndarray) -> float:
  """The value of the last epoch that trained (epochs after an early stop are NaN)."""
  trained = per_epoch[~np.isnan(per_epoch)]
  return float(trained[-1]) if trained.size else float("nan")


def _progress_bar(total: int):
  from tqdm.auto import tqdm  # Lazy: only runs that show progress need it.
  return tqdm(total=total, desc="experiences", unit="exp")


def _mean_std(values) -> tuple[float, float]:
  """Mean and std over runs, NaNs skipped, as the writers' values: the mean
  is NaN if every run's value is, the std if fewer than two runs have one
  (one value has no spread to report)."""
  values = np.asarray(values, np.float64)
  values = values[~np.isnan(values)]
  if not values.size:
    return float("nan"), float("nan")
  with np.errstate(invalid="ignore"):  # inf - inf: a NaN mean or std.
    return float(np.mean(values)), (float(np.std(values)) if values.size > 1
                                    else float("nan"))


def _with_std(name: str, values, swept: Sequence[Any] | None = None
              ) -> dict[str, float]:
  """``{name: mean}`` over runs, plus ``name_std`` if several; NaN runs are
  skipped, and so is an aggregate that is NaN (the std of an infinity).

  The runs of a sweep (``swept``: their values) are kept apart instead, one
  scalar per value, ``name/value=<v>``: a mean over other hyperparameters
  measures nothing.
  """
  if swept is not None:
    return {f"{name}/value={format_swept_value(value)}": float(v)
            for value, v in zip(swept, values) if not np.isnan(v)}
  mean, std = _mean_std(values)
  return {k: v for k, v in {name: mean, name + "_std": std}.items()
          if not np.isnan(v)}


def _write_scalars(writer, step: int, scalars: Mapping[str, float]) -> None:
  # Epochs no run trained (early stopping) have only NaNs: no empty rows.
  if scalars:
    writer.write_scalars(step, scalars)


def _write_periodic(writer, stream: str,
                    points: Sequence[Sequence[Mapping[str, Any]]],
                    swept: Sequence[Any] | None) -> None:
  """Writes periodic evaluations at their optimizer step (mean over runs,
  or each swept value's)."""
  by_step: dict[int, dict[int, Mapping[str, Any]]] = {}
  for r, run_points in enumerate(points):
    for row in run_points:
      by_step.setdefault(row["step"], {})[r] = row
  for step, rows in sorted(by_step.items()):
    scalars = {}
    for name in ("accuracy", "loss"):
      values = [rows[r][f"stream_{name}"] if r in rows else np.nan
                for r in range(len(points))]
      scalars.update(_with_std(f"periodic/{stream}/{name}", values, swept))
    _write_scalars(writer, step, scalars)


class _HeldMinibatch:
  """The minibatch metrics of all runs, held until every run has passed
  their step, then written once per step: the mean (and std) over the runs.

  Runs that stop early (``early_stopping``) reach a step in different
  experiences, so one experience's entries may not hold every run's.
  """

  def __init__(self, writer: Any, n_runs: int, swept: Sequence[Any] | None):
    self._writer, self._held = writer, {}
    self._n_runs, self._swept = n_runs, swept

  def add(self, steps: Sequence[Mapping[str, np.ndarray]]) -> None:
    """Holds one experience's columns, one set per run."""
    for r, columns in enumerate(steps):
      for step, loss, accuracy in zip(columns["step"].tolist(),
                                      columns["loss"].tolist(),
                                      columns["accuracy"].tolist()):
        runs = self._held.setdefault(step, np.full((2, self._n_runs), np.nan))
        runs[:, r] = loss, accuracy

  def write(self, upto: int | None = None) -> None:
    """Writes the held steps up to ``upto`` (all if None), in order."""
    for step in sorted(s for s in self._held if upto is None or s <= upto):
      losses, accuracies = self._held.pop(step)
      _write_scalars(self._writer, step, {
          **_with_std("minibatch/loss", losses, self._swept),
          **_with_std("minibatch/accuracy", accuracies, self._swept)})


def _write_train(writer, i: int, train_metrics: Mapping[str, np.ndarray],
                 swept: Sequence[Any] | None) -> None:
  """Writes experience ``i``'s training metrics, per epoch (step: the epoch
  count over the stream); the mean (and std) over runs if several, or each
  swept value's."""
  epochs = train_metrics["loss"].shape[1]
  for e in range(epochs):
    _write_scalars(writer, i * epochs + e, {
        **_with_std("train/loss", train_metrics["loss"][:, e], swept),
        **_with_std("train/accuracy", train_metrics["accuracy"][:, e],
                    swept)})


def _write_eval(writer, i: int, rows: Sequence[Mapping[str, float]],
                accuracies: np.ndarray, swept: Sequence[Any] | None) -> None:
  """Writes the evaluation after experience ``i`` (step: ``i``); the mean
  (and std) over runs if several, or each swept value's."""
  scalars = {}
  for j in range(accuracies.shape[1]):
    scalars.update(_with_std(f"eval/exp_{j:03d}/accuracy", accuracies[:, j],
                             swept))
  for name in rows[0]:
    if name not in ("experience", "train_loss", "train_accuracy"):
      scalars.update(_with_std(f"eval/stream/{name.removeprefix('stream_')}",
                               [row[name] for row in rows], swept))
  writer.write_scalars(i, scalars)
