"""The jit-compiled pieces of the loop: train one experience, evaluate a stream.

``make_train_experience`` returns one pure function that runs a whole
experience: ``begin_experience``, all epochs as a ``lax.scan`` over batches
gathered by index from device-resident data (reshuffled per epoch from the
key), then ``end_experience``. ``make_evaluate`` returns one pure function that
evaluates every experience of a (stacked) stream. Both keep every shape fixed,
so each compiles once per stream.

Example:
  >>> import optax
  >>> from jaxcl.strategies import naive
  >>> train = make_train_experience(ctx, naive(), optax.sgd(0.1),
  ...                               epochs=1)  # doctest: +SKIP
  >>> state, metrics = jax.jit(train)(state, data)  # doctest: +SKIP
"""

# No `from __future__ import annotations`: clu reads Collection annotations.

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax
from clu import metrics as clu_metrics

from jaxcl import _validation
from jaxcl.evaluation import system
from jaxcl.models.adapter import batch_stats_rows
from jaxcl.evaluation.reducers import (ClassCounts, ConfusionMatrix,
                                       TopKAccuracy)
from jaxcl.strategies.base import (Strategy, StrategyContext, UpdateOps,
                                   check_update_hooks)
from jaxcl.strategies.model_utils import MASK_VALUE, visible_classes
from jaxcl.training import _runs, optim, periodic
from jaxcl.training.state import ExperienceData, TrainState

__all__ = [
    "EvalCounts",
    "ExperienceParts",
    "Loss",
    "TrainMetrics",
    "cross_entropy",
    "smoothed_cross_entropy",
    "init_from_model",
    "init_model",
    "init_state",
    "make_evaluate",
    "make_experience_parts",
    "make_train_experience",
    "make_train_step",
    "mask_unseen",
    "minibatch_record",
]

# Names of the nested calls fit's FLOP count looks for (named_call_flops).
TRAIN_STEP_CALL = "jaxcl_train_step"
TRAIN_BATCH_CALL = "jaxcl_train_batch"  # The step's transform_batch.
EVAL_CHUNK_CALL = "jaxcl_eval_chunk"


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  """Training metrics accumulated through the scan (sample-weighted)."""

  loss: clu_metrics.Average.from_output("loss")
  accuracy: clu_metrics.Accuracy


def minibatch_record(metrics: TrainMetrics, loss: jax.Array, step: jax.Array,
                     ran: jax.Array) -> dict[str, jax.Array]:
  """One optimizer step's entry of the minibatch metrics.

  Args:
    metrics: The step's :class:`TrainMetrics`.
    loss: The step's training loss (penalties included).
    step: Optimizer steps taken so far, this one included.
    ran: Whether the step ran (empty and stopped steps do not).

  Returns:
    ``{"step", "loss", "accuracy"}`` scalars: ``accuracy`` is the fraction of
    the step's weighted rows predicted right; for a step that did not run
    ``step`` is -1 and the values NaN.
  """
  correct, count = metrics.accuracy.total, metrics.accuracy.count
  return {"step": jnp.where(ran, step, -1).astype(jnp.int32),
          "loss": jnp.where(ran, loss, jnp.nan).astype(jnp.float32),
          "accuracy": jnp.where(ran & (count > 0),
                                correct / jnp.maximum(count, 1),
                                jnp.nan).astype(jnp.float32)}


Loss = Callable[[jax.Array, dict], jax.Array]
"""A per-sample task loss: ``loss(logits, batch) -> [batch]``."""


def cross_entropy(logits: jax.Array, batch: dict) -> jax.Array:
  """Per-sample softmax cross-entropy; ``batch["class_mask"]`` restricts classes."""
  if "class_mask" in batch:
    logits = jnp.where(batch["class_mask"], logits, MASK_VALUE)
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])


def smoothed_cross_entropy(label_smoothing: float
                           ) -> Callable[[jax.Array, dict], jax.Array]:
  """Cross-entropy with smoothed labels, PyTorch's ``label_smoothing``.

  The target is ``(1 - ε)·onehot(y) + ε/K`` over the ``K`` classes the loss
  sees. PyTorch's ``CrossEntropyLoss(label_smoothing=ε)`` spreads ``ε`` over
  every output unit; jaxcl spreads it over the units that are not masked:
  logits above ``MASK_VALUE / 2`` (masked ones are ``MASK_VALUE``: classes
  not seen yet, another task's classes) and allowed by
  ``batch["class_mask"]``. That is a different target, not PyTorch's loss
  less a constant, whenever units are masked; a row with every unit masked
  spreads over all of them, as PyTorch does.

  Args:
    label_smoothing: ``ε`` in ``[0, 1]``; 0 is :func:`cross_entropy`.

  Returns:
    A per-sample loss ``(logits, batch) -> [batch]`` for ``fit(loss=...)``.

  Example:
    >>> import jax.numpy as jnp
    >>> loss = smoothed_cross_entropy(0.1)
    >>> logits = jnp.array([[2.0, 0.0, MASK_VALUE]])
    >>> round(float(loss(logits, {"y": jnp.array([0])})[0]), 4)
    0.2269
  """
  label_smoothing = _validation.check_in_range(
      "label_smoothing", label_smoothing, low=0, high=1)
  if label_smoothing == 0:
    return cross_entropy

  def loss(logits: jax.Array, batch: dict) -> jax.Array:
    if "class_mask" in batch:
      logits = jnp.where(batch["class_mask"], logits, MASK_VALUE)
    visible = logits > MASK_VALUE / 2
    # A row with every class masked (a task not seen yet) spreads over all.
    visible |= ~jnp.any(visible, -1, keepdims=True)
    log_p = jax.nn.log_softmax(logits)
    true = -jnp.take_along_axis(log_p, batch["y"][:, None].astype(jnp.int32),
                                -1)[:, 0]
    spread = -jnp.sum(jnp.where(visible, log_p, 0.0), -1) / jnp.maximum(
        jnp.sum(visible, -1), 1)
    return (1 - label_smoothing) * true + label_smoothing * spread

  # Named by its value: checkpoints record the loss by name.
  loss.__name__ = loss.__qualname__ = (
      f"smoothed_cross_entropy({label_smoothing!r})")
  return loss


def mask_unseen(logits: jax.Array, seen_classes: jax.Array,
                task_classes: jax.Array | None = None,
                task: jax.Array | None = None) -> jax.Array:
  """Sets the logits of never-seen classes to -1000, as Avalanche does.

  Args:
    logits: ``[batch, n_classes]``.
    seen_classes: ``bool[n_classes]``, classes trained on so far.
    task_classes: Optional ``bool[n_tasks, n_classes]``: the classes of each
      task. When given, each sample's logits are further restricted to the
      classes of its task (task-incremental prediction, as a multi-head
      classifier does).
    task: ``int[batch]`` task labels, needed with ``task_classes``.
  """
  return jnp.where(visible_classes(seen_classes, task_classes, task), logits,
                   MASK_VALUE)


def _shard(tree, sharding):
  """Splits the batch axis over devices (data parallelism), if asked."""
  if sharding is None:
    return tree
  return jax.tree.map(
      lambda a: jax.lax.with_sharding_constraint(a, sharding), tree)


def init_state(ctx: StrategyContext, strategy: Strategy,
               optimizer: optax.GradientTransformation, key: jax.Array,
               sample_x: jax.Array, sample_task: jax.Array) -> TrainState:
  """Initialises the model, the optimizer and the strategy state.

  Args:
    ctx: The strategy context (holds the model).
    strategy: The strategy whose ``init`` builds ``cl_state``.
    optimizer: An optax gradient transformation.
    key: The run's PRNG key.
    sample_x: One batch of raw inputs (only its shape matters).
    sample_task: Matching task labels.

  Returns:
    The initial :class:`TrainState`.
  """
  params, model_state = init_model(ctx, key, sample_x, sample_task)
  return init_from_model(ctx, strategy, optimizer, key, params, model_state)


def init_model(ctx: StrategyContext, key: jax.Array, sample_x: jax.Array,
               sample_task: jax.Array) -> tuple[Any, Any]:
  """The model half of :func:`init_state`: ``(params, model_state)``.

  It depends on the model, the inputs' shapes and preprocessing alone, so a
  program of it (``fit`` compiles one) is the same for every strategy and
  optimizer, and the persistent compilation cache serves it to all of their
  runs.

  Args:
    ctx: The strategy context (holds the model).
    key: The run's PRNG key (as given to :func:`init_state`).
    sample_x: One batch of raw inputs (only its shape matters).
    sample_task: Matching task labels.

  Returns:
    The model's parameters and its other variables.
  """
  model_key, _, _ = jax.random.split(key, 3)
  return ctx.model.init(model_key, ctx.preprocess(sample_x), sample_task)


def init_from_model(ctx: StrategyContext, strategy: Strategy,
                    optimizer: optax.GradientTransformation, key: jax.Array,
                    params: Any, model_state: Any) -> TrainState:
  """The rest of :func:`init_state`, from :func:`init_model`'s output.

  Args:
    ctx: The strategy context.
    strategy: The strategy whose ``init`` builds ``cl_state``.
    optimizer: An optax gradient transformation.
    key: The run's PRNG key (the one given to :func:`init_model`).
    params: The model's initial parameters.
    model_state: Its other variables.

  Returns:
    The initial :class:`TrainState`.
  """
  _, strategy_key, loop_key = jax.random.split(key, 3)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      model_state=model_state,
      opt_state=optimizer.init(params),
      cl_state=strategy.init(ctx, params, strategy_key),
      key=loop_key,
      seen_classes=jnp.zeros(ctx.n_classes, bool),
      experience=jnp.zeros((), jnp.int32),
  )


def _epoch_order(key: jax.Array, size: jax.Array, padded: int,
                 total: int) -> tuple[jax.Array, jax.Array]:
  """A random order of the ``size`` real rows first, padded to ``total``."""
  rank = jax.random.uniform(key, (padded,))
  rank = jnp.where(jnp.arange(padded) < size, rank, 2.0)
  order = jnp.argsort(rank)
  order = jnp.pad(order, (0, total - padded))
  return order, jnp.arange(total) < size


def _masking(ctx: StrategyContext, mask_classes: bool | None) -> bool:
  """The loop's class masking: the context's, which strategies' hooks follow
  (a different value would mask the loop's logits and not theirs)."""
  if mask_classes is None:
    return ctx.mask_classes
  _validation.check_bool("mask_classes", mask_classes)
  if bool(mask_classes) != bool(ctx.mask_classes):
    raise ValueError(
        f"mask_classes={mask_classes} contradicts ctx.mask_classes="
        f"{ctx.mask_classes}, which strategies' hooks follow; expected to "
        "leave it out (set it in make_context).")
  return bool(mask_classes)


def make_train_step(
    ctx: StrategyContext,
    strategy: Strategy,
    optimizer: optax.GradientTransformation,
    *,
    mask_classes: bool | None = None,
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, Any, jax.Array]]:
  """Builds one optimizer step: the body of every training scan.

  ``transform_batch`` -> loss (masked, weighted cross-entropy + ``penalty``)
  -> gradient -> ``transform_grads`` -> optax update -> ``after_step``.

  Args:
    ctx: Static context.
    strategy: The strategy whose per-step hooks run.
    optimizer: An optax gradient transformation.
    mask_classes: As for :func:`make_train_experience`.

  Returns:
    ``train_step(state, batch, key) -> (state, TrainMetrics, loss)``.
  """
  prepare, update = _step_parts(ctx, strategy, optimizer, mask_classes)

  def train_step(state: TrainState, batch: dict, key):
    return update(state, *prepare(state, batch, key))

  return train_step


def _step_parts(ctx: StrategyContext, strategy: Strategy,
                optimizer: optax.GradientTransformation,
                mask_classes: bool | None):
  """:func:`make_train_step` in two: ``prepare(state, batch, key) -> (batch,
  keys)`` runs ``transform_batch``, ``update(state, batch, keys)`` the rest,
  so that the loop can skip a step whose transformed batch has no current
  sample. A strategy's own ``update`` replaces the optimizer step."""
  check_update_hooks(strategy)
  mask_classes = _masking(ctx, mask_classes)

  def loss_fn(params, state: TrainState, batch: dict, key, augment=True):
    if augment and ctx.augment is not None:
      key, augment_key = jax.random.split(key)
      # The penalty sees the inputs the model sees (a teacher's logits on
      # the same crops, as Avalanche's on its transformed mini-batch).
      batch = {**batch, "x": ctx.augment(batch["x"], augment_key)}
    # Batch statistics cover the rows holding samples: weighted ones, and
    # those a strategy's penalty alone reads (DER's memory).
    counted = batch["weight"] > 0
    if "batch_stats_mask" in batch:
      counted = counted | batch["batch_stats_mask"]
    logits, model_state = ctx.model.apply(
        params, state.model_state, ctx.preprocess(batch["x"]), batch["task"],
        True, key, **batch_stats_rows(ctx.model.apply, counted))
    if mask_classes:
      logits = mask_unseen(logits, state.seen_classes, ctx.task_classes,
                           batch["task"])
    weight = batch["weight"]
    task_loss = jnp.sum(ctx.loss(logits, batch) * weight) / jnp.maximum(
        jnp.sum(weight), 1.0)
    total = task_loss + strategy.penalty(ctx, params, state.cl_state, batch,
                                         logits)
    return total, (logits, model_state)

  def prepare(state: TrainState, batch: dict, key):
    batch_key, *keys = jax.random.split(key, 4)
    return (strategy.transform_batch(ctx, state.cl_state, batch, batch_key),
            tuple(keys))

  def apply_updates(state: TrainState, grads, loss=None):
    extra = {} if loss is None else optim.loss_arguments(optimizer, loss)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params,
                                          **extra)
    return state.replace(params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state)

  def apply_gradients(state: TrainState, batch: dict, dropout_key, grads_key,
                      augment=True):
    """One optimizer step, uncounted; also returns what it measured."""
    (loss, (logits, model_state)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params, state, batch, dropout_key,
                               augment)
    if jax.default_backend() == "cpu":
      # Makes the update wait for the loss, so that the loss's own reads of
      # the parameters (a penalty's value) end before the update overwrites
      # them in place. Unordered, XLA:CPU copies every parameter they read
      # first (EWC's 784x512 kernel: 30-43 us a step); an optimization
      # barrier does not survive its pipeline. The factor is exactly 1,
      # whatever the loss (NaN and infinities included).
      order = 1.0 + 0.0 * jnp.nan_to_num(loss)
      grads = jax.tree.map(lambda g: g * order.astype(g.dtype), grads)
    grads = strategy.transform_grads(ctx, grads, state, batch, grads_key)
    return (apply_updates(state, grads, loss).replace(model_state=model_state),
            grads, loss, logits)

  # A strategy's own updates hold the schedules: every update of a batch
  # uses the batch's rate, and the batch advances them once (update below).
  def held(before: TrainState, after: TrainState) -> TrainState:
    return after.replace(opt_state=optim.hold_schedules(before.opt_state,
                                                        after.opt_state))

  def inner_apply(state: TrainState, grads):
    return held(state, apply_updates(state, grads))

  # A strategy's own update sees its batch augmented once (as Avalanche's
  # loader transforms a mini-batch once), and augments what it draws.
  def plain_step(state: TrainState, batch: dict, key):
    return held(state, apply_gradients(state, batch, *jax.random.split(key),
                                       augment=False)[0])

  def training_loss(params, state: TrainState, batch: dict, key):
    return loss_fn(params, state, batch, key, augment=False)[0]

  def augment_inputs(x, key):
    return x if ctx.augment is None else ctx.augment(x, key)

  ops = UpdateOps(loss=training_loss, step=plain_step, apply=inner_apply,
                  augment=augment_inputs)

  def update(state: TrainState, batch: dict, keys):
    dropout_key, grads_key, after_key = keys
    if strategy.update is None:
      new_state, grads, loss, logits = apply_gradients(state, batch,
                                                       dropout_key, grads_key)
      new_state = new_state.replace(step=state.step + 1)
      new_state = new_state.replace(cl_state=strategy.after_step(
          ctx, state, new_state, grads, batch, after_key))
    else:
      batch = {**batch, "x": augment_inputs(batch["x"], after_key)}
      new_state, cl_state = strategy.update(ctx, state.cl_state, state,
                                            batch, grads_key, ops)
      new_state = new_state.replace(
          step=state.step + 1, cl_state=cl_state,
          opt_state=optim.one_schedule_step(state.opt_state,
                                            new_state.opt_state))
      # Measured as Avalanche's MER does: the batch's loss after the update,
      # a forward pass in training mode that updates batch statistics.
      loss, (logits, model_state) = loss_fn(new_state.params, new_state,
                                            batch, dropout_key, augment=False)
      new_state = new_state.replace(model_state=model_state)
    metrics = TrainMetrics.single_from_model_output(
        loss=jnp.full(batch["y"].shape, loss), logits=logits,
        labels=batch["y"].astype(jnp.int32), mask=batch["weight"] > 0)
    return new_state, metrics, loss

  return prepare, update


class ExperienceParts(NamedTuple):
  """The pieces of a training experience, shared by the on-device loop and
  the streaming loop (:mod:`jaxcl.training.streaming`).

  Attributes:
    steps_per_epoch: ``ceil(experience_size / batch_size)``.
    begin: ``begin(state, data) -> (state, epochs_key, end_key)``: seen
      classes, optimizer resets and the strategy's ``begin_experience``.
    epoch_order: ``epoch_order(epoch_key, size) -> (order, valid, steps_key)``:
      the epoch's sample indices and real-row mask, ``[steps, batch]`` each.
    step: ``step(carry, batch, key, eval_data) -> (carry, (record,
      minibatch))`` with ``carry = (state, metrics, first_bad, trained,
      watch)``: one guarded optimizer step (and a periodic check, whose
      ``record`` it returns, when it is counted in steps); ``minibatch`` is
      the step's :func:`minibatch_record`, or None unless the parts were
      built with ``minibatch=True``.
    end: ``end(state, data, end_key) -> state``: the strategy's
      ``end_experience``.
  """

  steps_per_epoch: int
  begin: Callable[..., Any]
  epoch_order: Callable[..., Any]
  step: Callable[..., Any]
  end: Callable[..., Any]


def make_experience_parts(
    ctx: StrategyContext,
    strategy: Strategy,
    optimizer: optax.GradientTransformation,
    *,
    mask_classes: bool | None = None,
    skip_empty_steps: bool = True,
    watcher: periodic.Watcher | None = None,
    optimizer_reset: str = "none",
    run_axis: str | None = None,
    minibatch: bool = False,
) -> ExperienceParts:
  """Builds the :class:`ExperienceParts` (arguments as :func:`make_train_experience`)."""
  _validation.check_bool("minibatch", minibatch)
  _validation.check_bool("skip_empty_steps", skip_empty_steps)
  # A strategy that may hold out a whole batch needs the guard whatever the
  # experiences' sizes.
  skip_empty_steps = skip_empty_steps or strategy.drops_current_rows
  _runs.check_run_axis(run_axis)
  _validation.check_choice("optimizer_reset", optimizer_reset,
                           ("none", "schedule", "state"))
  batch_size = ctx.batch_size
  steps = math.ceil(ctx.experience_size / batch_size)
  prepare, update = _step_parts(ctx, strategy, optimizer, mask_classes)
  # Named calls, so that fit's FLOP count finds the step by name wherever
  # it sits in the program (XLA inlines them).
  prepare = system.named_call(prepare, TRAIN_BATCH_CALL)
  update = system.named_call(update, TRAIN_STEP_CALL)
  stops = watcher is not None and watcher.can_stop
  by_step = watcher is not None and watcher.unit == "step"

  def skip_step(state, batch, keys):
    del keys
    empty = TrainMetrics.single_from_model_output(
        loss=jnp.zeros(batch["y"].shape), labels=batch["y"].astype(jnp.int32),
        logits=jnp.zeros(batch["y"].shape + (ctx.n_classes,)),
        mask=jnp.zeros(batch["y"].shape, bool))
    return state, empty, jnp.zeros(())

  def begin(state: TrainState, data: ExperienceData):
    key, begin_key, epochs_key, end_key = jax.random.split(state.key, 4)
    state = state.replace(
        key=key, experience=data.index,
        seen_classes=state.seen_classes | data.classes_mask)
    if optimizer_reset == "state":
      state = state.replace(opt_state=optim.reset_optimizer_state(
          optimizer, state.opt_state, state.params))
    elif optimizer_reset == "schedule":
      state = state.replace(opt_state=optim.restart_schedules(state.opt_state))
    state = strategy.begin_experience(ctx, state, data, begin_key)
    return state, epochs_key, end_key

  def epoch_order(epoch_key, size):
    order_key, steps_key = jax.random.split(epoch_key)
    order, valid = _epoch_order(order_key, size, ctx.experience_size,
                                steps * batch_size)
    return (order.reshape(steps, batch_size), valid.reshape(steps, batch_size),
            steps_key)

  def step(carry, batch, key, eval_data):
    state, metrics, first_bad, trained, watch = carry
    batch, keys = prepare(state, batch, key)
    # A step needs a current sample after the transform: padding-only
    # batches, and batches whose rows a strategy held out (BiC), take none.
    current = batch["weight"][:batch_size]
    run = jnp.any(current > 0) & (watcher.active(watch) if stops else True)
    if skip_empty_steps or stops:
      state, step_metrics, loss = _runs.cond(run, update, skip_step,
                                             state, batch, keys,
                                             run_axis=run_axis)
    else:
      state, step_metrics, loss = update(state, batch, keys)
    bad = jnp.logical_and(first_bad < 0, ~jnp.isfinite(loss))
    first_bad = jnp.where(bad, state.step - 1, first_bad)
    trained = trained + run
    record = None
    if by_step:
      watch, record = watcher.check(state, watch, trained, eval_data, run)
    step_record = (minibatch_record(step_metrics, loss, state.step, run)
                   if minibatch else None)
    return (state, metrics.merge(step_metrics), first_bad, trained,
            watch), (record, step_record)

  def end(state, data, end_key):
    return strategy.end_experience(ctx, state, data, end_key)

  return ExperienceParts(steps, begin, epoch_order, step, end)


def make_train_experience(
    ctx: StrategyContext,
    strategy: Strategy,
    optimizer: optax.GradientTransformation,
    *,
    epochs: int,
    mask_classes: bool | None = None,
    skip_empty_steps: bool = True,
    watcher: periodic.Watcher | None = None,
    optimizer_reset: str = "none",
    run_axis: str | None = None,
    minibatch: bool = False,
) -> Callable[..., tuple[TrainState, dict]]:
  """Builds the function that trains on one experience (to be jitted once).

  Args:
    ctx: Static context; ``ctx.batch_size`` and ``ctx.experience_size`` fix
      the number of steps per epoch, ``ceil(experience_size / batch_size)``.
    strategy: The strategy whose hooks run inside the loop.
    optimizer: An optax gradient transformation.
    epochs: Number of passes over the experience.
    mask_classes: Whether the logits of classes not seen so far
      (class-incremental head) and, with ``ctx.task_classes``, of classes
      outside each sample's task are masked; when False the head is used as
      is. ``ctx.mask_classes`` (set in ``make_context``) decides, as it does
      for strategies' hooks; a different value here is an error.
    skip_empty_steps: Skip the steps that hold no real sample, which an
      experience smaller than the largest by at least a batch has: without
      the guard they would update the parameters (momentum, a strategy's
      penalty) and advance the step count. False saves the guard where
      every experience fills the same number of batches.
    watcher: Periodic evaluation (and early stopping) inside the experience,
      from :func:`jaxcl.training.periodic.make_watcher`.
    optimizer_reset: What of the optimizer state starts over at the
      experience: ``"none"``, ``"schedule"`` (the step counts of learning-rate
      schedules) or ``"state"`` (all of it, as Avalanche does by default).
    run_axis: Where the function is vmapped over runs (seeds, swept values),
      the ``axis_name`` given to ``jax.vmap`` (``fit`` uses ``"runs"``): a
      skipped step (empty, or after an early stop) is then skipped for all
      runs once none needs it. Without it, ``vmap`` turns the skip into a
      select that computes the step for every run.
    minibatch: Also return every optimizer step's loss and accuracy (the
      minibatch metrics, Avalanche's ``*_MB``).

  Returns:
    ``train_experience(state, data, eval_data=None) -> (state, metrics)``
    where ``metrics`` maps ``loss``/``accuracy`` to arrays with one entry per
    epoch, ``first_nonfinite_step`` to the first step whose loss was NaN/inf
    (-1 if none), ``steps_trained`` to the optimizer steps taken and, with a
    ``watcher``, ``periodic`` to the periodic evaluations of ``eval_data``
    (see :func:`jaxcl.training.periodic.make_watcher`; the first is the one
    before training) and, with ``minibatch``, ``minibatch`` to the steps'
    :func:`minibatch_record` entries, ``[epochs, steps_per_epoch]`` each.
  """
  _validation.check_positive_int("epochs", epochs)
  parts = make_experience_parts(
      ctx, strategy, optimizer, mask_classes=mask_classes,
      skip_empty_steps=skip_empty_steps, watcher=watcher,
      optimizer_reset=optimizer_reset, run_axis=run_axis,
      minibatch=minibatch)
  by_epoch = watcher is not None and watcher.unit == "epoch"

  def run_epoch(carry, inputs):
    state, data, eval_data, first_bad, trained, watch = carry
    epoch_key, epoch = inputs
    order, valid, steps_key = parts.epoch_order(epoch_key, data.size)

    def body(carry, inputs):
      idx, mask, i = inputs
      batch = _shard({"x": data.x[idx], "y": data.y[idx],
                      "task": data.task[idx],
                      "weight": mask.astype(jnp.float32),
                      "index": idx.astype(jnp.int32)}, ctx.batch_sharding)
      return parts.step(carry, batch, jax.random.fold_in(steps_key, i),
                        eval_data)

    (state, metrics, first_bad, trained, watch), (records, steps) = (
        jax.lax.scan(body,
                     (state, TrainMetrics.empty(), first_bad, trained, watch),
                     (order, valid, jnp.arange(parts.steps_per_epoch))))
    if by_epoch:
      watch, records = watcher.check(state, watch, epoch + 1, eval_data, True)
    return ((state, data, eval_data, first_bad, trained, watch),
            (metrics.compute(), records, steps))

  def train_experience(state: TrainState, data: ExperienceData,
                       eval_data: ExperienceData | None = None):
    if data.x.shape[0] != ctx.experience_size:
      raise ValueError(
          f"data holds {data.x.shape[0]} rows; expected ctx.experience_size="
          f"{ctx.experience_size} (an experience padded to the context's "
          "size, as put_experiences does).")
    state, epochs_key, end_key = parts.begin(state, data)
    watch = first = None
    if watcher is not None:
      watch, first = watcher.start(state, eval_data)
    carry = (state, data, eval_data, jnp.array(-1, jnp.int32),
             jnp.zeros((), jnp.int32), watch)
    (state, _, _, first_bad, trained, watch), (epoch_metrics, records,
                                               steps) = jax.lax.scan(
        run_epoch, carry, (jax.random.split(epochs_key, epochs),
                           jnp.arange(epochs)))
    metrics = {**epoch_metrics, "first_nonfinite_step": first_bad,
               "steps_trained": trained}
    if minibatch:
      metrics["minibatch"] = steps
    if watcher is not None:
      state, last = watcher.finish(state, watch, eval_data)
      metrics["periodic"] = jax.tree.map(
          lambda a, b, c: jnp.concatenate(
              [a[None], b.reshape((-1,) + a.shape), c[None]]),
          first, records, last)
    return parts.end(state, data, end_key), metrics

  return train_experience


@flax.struct.dataclass
class _ExperienceMetrics(clu_metrics.Collection):
  """The per-experience reducers of evaluation (see :func:`make_evaluate`)."""

  accuracy: clu_metrics.Accuracy
  topk: TopKAccuracy
  loss: clu_metrics.Average.from_output("loss")
  classes: ClassCounts


@flax.struct.dataclass
class EvalCounts:
  """Sums gathered by one evaluation of a stream of ``T`` experiences.

  Every metric of :mod:`jaxcl.evaluation` is a function of these sums.

  Attributes:
    correct: ``[T]`` correct top-1 predictions per experience.
    correct_topk: ``[T]`` samples whose label is among the ``top_k`` highest
      logits.
    count: ``[T]`` samples per experience.
    loss_sum: ``[T]`` summed cross-entropy per experience.
    confusion: ``[n_classes, n_classes]`` counts of (label, prediction) pairs
      over the whole stream.
    class_correct: ``[T, n_tasks, n_classes]`` correct top-1 predictions per
      experience, task label and class (``n_tasks`` is 1 unless the stream
      has several task labels).
    class_count: ``[T, n_tasks, n_classes]`` samples, likewise.
    class_score: ``[T, n_tasks, n_classes]`` summed logit of the true class.
    top_k: The ``k`` of ``correct_topk`` (static).
  """

  correct: jax.Array
  correct_topk: jax.Array
  count: jax.Array
  loss_sum: jax.Array
  confusion: jax.Array
  class_correct: jax.Array
  class_count: jax.Array
  class_score: jax.Array
  top_k: int = flax.struct.field(pytree_node=False, default=5)


def make_evaluate(ctx: StrategyContext, strategy: Strategy, *,
                  eval_batch_size: int, mask_classes: bool | None = None,
                  top_k: int = 5
                  ) -> Callable[[TrainState, ExperienceData], EvalCounts]:
  """Builds the function that evaluates a stacked stream (to be jitted once).

  Per chunk of ``eval_batch_size`` samples, ``clu`` reducers
  (:mod:`jaxcl.evaluation.reducers`) are built from the logits and merged: a
  collection per experience and a confusion matrix over the whole stream.

  Args:
    ctx: Static context.
    strategy: Its ``predict`` slot, if set, replaces the model's prediction.
    eval_batch_size: Samples per evaluation chunk (memory/speed trade-off).
    mask_classes: Mask the logits of classes not seen so far (as for
      :func:`make_train_experience`: ``ctx.mask_classes`` decides).
    top_k: The ``k`` of the top-k accuracy (capped at the number of classes).

  Returns:
    ``evaluate(state, stream) -> EvalCounts`` where ``stream`` is an
    :class:`ExperienceData` with a leading experience axis.
  """
  _validation.check_positive_int("eval_batch_size", eval_batch_size)
  _validation.check_positive_int("top_k", top_k)
  mask_classes = _masking(ctx, mask_classes)
  n_classes = ctx.n_classes
  n_tasks = 1 if ctx.task_classes is None else len(ctx.task_classes)

  def logits_fn(state: TrainState, x, task):
    if strategy.predict is not None:
      logits = strategy.predict(ctx, state.params, state.model_state,
                                state.cl_state, x, task)
    else:
      logits = ctx.logits(state.params, state.model_state, x, task)
    if not mask_classes:
      return logits, None
    visible = visible_classes(state.seen_classes, ctx.task_classes, task)
    return jnp.where(visible, logits, MASK_VALUE), visible

  def reducers(logits, visible, x, y, task, valid):
    y = y.astype(jnp.int32)  # clu's Accuracy takes int32 labels alone.
    # A label the masked prediction cannot output is never right, even
    # where fewer than k classes are visible and masked ties fill the top k;
    # that covers labels a strategy's prediction masks itself (a class
    # without a mean, another expert's class).
    label_visible = jnp.take_along_axis(logits, y[:, None], -1)[:, 0] > (
        MASK_VALUE / 2)
    if visible is not None:
      label_visible &= jnp.take_along_axis(
          jnp.broadcast_to(visible, logits.shape), y[:, None], -1)[:, 0]
    outputs = dict(logits=logits, labels=y, task=task, mask=valid,
                   label_visible=label_visible,
                   loss=ctx.loss(logits, {
                       "x": x, "y": y, "task": task,
                       "weight": valid.astype(jnp.float32)}))
    return (_ExperienceMetrics.single_from_model_output(
        k=top_k, n_tasks=n_tasks, **outputs),
            ConfusionMatrix.from_model_output(**outputs))

  # A named call, as the training step (fit's FLOP count finds it).
  chunk_counts = system.named_call(
      lambda state, x, y, task, valid: reducers(*logits_fn(state, x, task), x,
                                                y, task, valid),
      EVAL_CHUNK_CALL)

  def evaluate(state: TrainState, stream: ExperienceData) -> EvalCounts:
    # The reducers of an empty chunk: the identity of `merge`.
    empty, _ = reducers(
        jnp.zeros((0, n_classes)), None,
        jnp.zeros((0, *ctx.input_shape), ctx.x_dtype),
        *[jnp.zeros((0,), dtype) for dtype in (jnp.int32, jnp.int32, bool)])
    size = stream.y.shape[1]
    chunk = min(eval_batch_size, size)
    chunks = math.ceil(size / chunk)
    pad = chunks * chunk - size

    def reshape(a):
      a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
      return a.reshape((chunks, chunk) + a.shape[1:])

    def one_chunk(carry, inputs):
      metrics, confusion = carry
      x, y, task, valid = _shard(inputs, ctx.batch_sharding)
      chunk_metrics, chunk_confusion = chunk_counts(state, x, y, task, valid)
      return (metrics.merge(chunk_metrics),
              confusion.merge(chunk_confusion)), None

    def one_experience(confusion, exp: ExperienceData):
      (metrics, confusion), _ = jax.lax.scan(
          one_chunk, (empty, confusion),
          (reshape(exp.x), reshape(exp.y), reshape(exp.task),
           reshape(exp.valid)))
      return confusion, metrics

    confusion, metrics = jax.lax.scan(
        one_experience, ConfusionMatrix.empty(n_classes), stream)
    return EvalCounts(
        correct=metrics.accuracy.total, correct_topk=metrics.topk.total,
        count=metrics.accuracy.count, loss_sum=metrics.loss.total,
        confusion=confusion.matrix, class_correct=metrics.classes.correct,
        class_count=metrics.classes.count, class_score=metrics.classes.score,
        top_k=top_k)

  return evaluate
