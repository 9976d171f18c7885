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
import math
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcl import _validation
from jaxcl.benchmarks.scenario import Benchmark, Stream
from jaxcl.evaluation import cl_metrics
from jaxcl.models.adapter import as_model
from jaxcl.strategies.base import Strategy, StrategyContext
from jaxcl.training import loop
from jaxcl.training.state import TrainState, experience_data, stack_experiences

__all__ = ["Result", "fit"]


@dataclasses.dataclass
class Result:
  """What a run produced.

  Attributes:
    accuracy_matrix: ``[T, T]`` numpy array; ``R[i, j]`` is the accuracy on
      test experience ``j`` after training experience ``i``.
    metrics: Final metrics (after the last experience): ``stream_accuracy``
      (pooled), ``forgetting``, ``bwt``, ``forward_transfer``,
      ``top5_accuracy``, ``stream_loss``, ``train_loss``, ``train_accuracy``.
    history: One metrics dict per trained experience (same keys plus
      ``experience``).
    timings: ``compile_s``, ``train_s``, ``eval_s`` (both without
      compilation), ``total_s``.
    initial_accuracies: Accuracy on each test experience before training
      (NaN if not evaluated).
    confusion_matrix: ``[n_classes, n_classes]`` (label, prediction) counts
      over the test stream after the last experience.
    state: The final :class:`TrainState`.
  """

  accuracy_matrix: np.ndarray
  metrics: dict[str, float]
  history: list[dict[str, float]]
  timings: dict[str, float]
  initial_accuracies: np.ndarray
  confusion_matrix: np.ndarray
  state: TrainState


def _check_args(model, strategy, optimizer, benchmark, epochs, batch_size,
                eval_batch_size, seed):
  if not isinstance(benchmark, Benchmark):
    raise TypeError(f"benchmark must be a jaxcl Benchmark, got "
                    f"{type(benchmark).__name__}.")
  if not isinstance(strategy, Strategy):
    raise TypeError(f"strategy must be a jaxcl Strategy (e.g. "
                    f"jaxcl.strategies.naive()), got {type(strategy).__name__}.")
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError(f"optimizer must be an optax.GradientTransformation (e.g. "
                    f"optax.sgd(0.01)), got {type(optimizer).__name__}.")
  _validation.check_positive_int("epochs", epochs)
  _validation.check_positive_int("batch_size", batch_size)
  _validation.check_positive_int("eval_batch_size", eval_batch_size)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise TypeError(f"seed must be an integer, got {seed!r}.")
  if len(benchmark.train_stream) == 0:
    raise ValueError("benchmark.train_stream is empty; expected experiences.")
  for stream in (benchmark.train_stream, benchmark.test_stream):
    for exp in stream:
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
  if out.ndim != 2 or out.shape[1] != ctx.n_classes:
    raise ValueError(f"model outputs logits of shape {out.shape[1:]} per "
                     f"sample; expected ({ctx.n_classes},), one per class of "
                     "the benchmark (set num_classes=benchmark.n_classes).")


def _timed(fn, *args):
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start


def _experience_row(counts: loop.EvalCounts) -> tuple[np.ndarray, dict]:
  counts = jax.device_get(counts)
  acc = counts.correct / np.maximum(counts.count, 1)
  pooled = {
      "stream_accuracy": cl_metrics.stream_accuracy(counts.correct, counts.count),
      "top5_accuracy": cl_metrics.stream_accuracy(counts.correct_top5,
                                                  counts.count),
      "stream_loss": float(np.sum(counts.loss_sum) / np.sum(counts.count)),
  }
  return acc, pooled


def fit(
    model,
    strategy: Strategy,
    optimizer: optax.GradientTransformation,
    benchmark: Benchmark,
    *,
    epochs: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    eval_batch_size: int = 1000,
    mask_unseen_classes: bool = True,
    eval_before_training: bool = True,
    writer: Any = None,
    progress: bool = False,
) -> Result:
  """Trains ``strategy`` over ``benchmark``'s train stream, evaluating after each experience.

  Training of each experience is one call of one compiled function (all
  epochs scanned on the device); evaluation of the whole test stream is one
  call of another. Both compile once for the whole stream.

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
    eval_batch_size: Chunk size of evaluation.
    mask_unseen_classes: Mask the logits of classes not trained on so far
      (Avalanche's incremental classifier with masking).
    eval_before_training: Evaluate the initial model too (needed by
      ``forward_transfer``).
    writer: Optional clu-style metric writer (see :mod:`jaxcl.loggers`).
    progress: Show a progress bar over experiences.

  Returns:
    A :class:`Result`.
  """
  start_total = time.perf_counter()
  model = _check_args(model, strategy, optimizer, benchmark, epochs,
                      batch_size, eval_batch_size, seed)
  test_stream = benchmark.test_stream
  train_stream = Stream(benchmark.train_stream.name, [
      strategy.adapt_data(e, benchmark.train_stream, seed)
      for e in benchmark.train_stream])
  n_classes, n_exp = benchmark.n_classes, len(train_stream)
  size = train_stream.max_size
  sample = jnp.asarray(train_stream[0].x[:1])
  ctx = StrategyContext(
      model=model, preprocess=benchmark.preprocess, loss=loop.cross_entropy,
      n_classes=n_classes, n_experiences=n_exp,
      input_shape=tuple(benchmark.input_shape), batch_size=batch_size,
      experience_size=size, x_dtype=sample.dtype, optimizer=optimizer)
  sample_task = jnp.zeros((1,), jnp.int32)
  _check_model_output(ctx, sample, sample_task)

  steps = math.ceil(size / batch_size)
  skip_empty = any(math.ceil(len(e) / batch_size) < steps for e in train_stream)
  train_fn = loop.make_train_experience(
      ctx, strategy, optimizer, epochs=epochs, mask_classes=mask_unseen_classes,
      skip_empty_steps=skip_empty)
  eval_fn = loop.make_evaluate(ctx, strategy, eval_batch_size=eval_batch_size,
                               mask_classes=mask_unseen_classes)

  start = time.perf_counter()
  # One compiled init instead of Flax's op-by-op eager initialisation.
  init_fn = jax.jit(lambda seed: loop.init_state(
      ctx, strategy, optimizer, jax.random.key(seed), sample, sample_task))
  seed_arr = np.uint32(seed)
  state_shape = jax.eval_shape(init_fn, seed_arr)
  test_data = jax.device_put(stack_experiences(list(test_stream), n_classes))
  first = jax.device_put(experience_data(train_stream[0], size, n_classes))
  lowered = (init_fn.lower(seed_arr),
             jax.jit(train_fn, donate_argnums=0).lower(state_shape, first),
             jax.jit(eval_fn).lower(state_shape, test_data))
  # Init runs once, so its code is not worth optimising; XLA compiles without
  # the GIL, so the three executables build in parallel.
  options = ({"xla_backend_optimization_level": 0}, None, None)
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    init_exec, train_exec, eval_exec = pool.map(
        lambda lo, opts: lo.compile(compiler_options=opts), lowered, options)
  state = init_exec(seed_arr)
  compile_s = time.perf_counter() - start

  eval_s = train_s = 0.0
  initial = np.full(len(test_stream), np.nan)
  if eval_before_training:
    counts, seconds = _timed(eval_exec, state, test_data)
    eval_s += seconds
    initial = _experience_row(counts)[0]

  R = np.full((n_exp, len(test_stream)), np.nan)
  history: list[dict[str, float]] = []
  bar = _progress_bar(n_exp) if progress else None
  for i, experience in enumerate(train_stream):
    data = first if i == 0 else jax.device_put(
        experience_data(experience, size, n_classes))
    (state, train_metrics), seconds = _timed(train_exec, state, data)
    train_s += seconds
    counts, seconds = _timed(eval_exec, state, test_data)
    eval_s += seconds
    R[i], pooled = _experience_row(counts)
    train_metrics = jax.device_get(train_metrics)
    row = {
        "experience": i,
        **pooled,
        "forgetting": cl_metrics.stream_forgetting(R, i),
        "bwt": cl_metrics.stream_bwt(R, i),
        "forward_transfer": cl_metrics.stream_forward_transfer(R, initial, i),
        "train_loss": float(train_metrics["loss"][-1]),
        "train_accuracy": float(train_metrics["accuracy"][-1]),
    }
    history.append(row)
    if writer is not None:
      _write(writer, i, row, R[i], train_metrics)
    if bar is not None:
      bar.set_postfix(acc=f"{row['stream_accuracy']:.3f}")
      bar.update()
    bad_step = int(train_metrics["first_nonfinite_step"])
    if bad_step >= 0:
      if writer is not None:
        writer.flush()
      raise FloatingPointError(
          f"The training loss became NaN or infinite in experience {i} at "
          f"optimizer step {bad_step} (global count); metrics up to experience "
          f"{i} were written. Lower the learning rate or check the inputs.")
  if bar is not None:
    bar.close()
  if writer is not None:
    writer.flush()
  final = {k: v for k, v in history[-1].items() if k != "experience"}
  return Result(
      accuracy_matrix=R,
      metrics=final,
      history=history,
      timings={"compile_s": compile_s, "train_s": train_s, "eval_s": eval_s,
               "total_s": time.perf_counter() - start_total},
      initial_accuracies=initial,
      confusion_matrix=np.asarray(jax.device_get(counts.confusion)),
      state=state,
  )


def _progress_bar(total: int):
  from tqdm.auto import tqdm  # Lazy: only runs that show progress need it.
  return tqdm(total=total, desc="experiences", unit="exp")


def _write(writer, i: int, row: Mapping[str, float], accuracies: np.ndarray,
           train_metrics: Mapping[str, np.ndarray]) -> None:
  """Writes one experience's metrics (train: step = epoch count over the stream)."""
  epochs = len(train_metrics["loss"])
  for e in range(epochs):
    writer.write_scalars(i * epochs + e, {
        "train/loss": float(train_metrics["loss"][e]),
        "train/accuracy": float(train_metrics["accuracy"][e])})
  scalars = {f"eval/exp_{j:03d}/accuracy": float(a)
             for j, a in enumerate(accuracies)}
  for name in ("stream_accuracy", "top5_accuracy", "stream_loss", "forgetting",
               "bwt", "forward_transfer"):
    metric = name.removeprefix("stream_")
    if not np.isnan(row[name]):
      scalars[f"eval/stream/{metric}"] = row[name]
  writer.write_scalars(i, scalars)
