"""Rehearsal and data strategies: replay, GDumb, DER/DER++, ER-ACE, ER-AML,
feature replay, MIR, cumulative, joint and from-scratch training.

The replay strategies keep a fixed-capacity :class:`~jaxcl.strategies.buffers.Buffer`
in their ``cl_state`` and append memory rows to each batch with
:func:`~jaxcl.strategies.buffers.concat_batches` (the current samples stay
the first ``ctx.batch_size`` rows). How much each memory row counts is set
through the batch's ``weight`` (the loop's task loss is the weighted mean of
the per-sample losses) or, where Avalanche sums separately normalised terms,
through the strategy's ``penalty``/``transform_grads``.

The data strategies (cumulative, joint, GDumb) replace what is trained on
through the host-side ``adapt_data`` slot; GDumb and from-scratch training
re-initialise the model and the optimizer state in ``begin_experience``.

Example:
  >>> import optax, jaxcl
  >>> from jaxcl.strategies import chain, ewc
  >>> strategy = chain(replay(mem_size=200), ewc(ewc_lambda=1.0))
  >>> strategy.name
  'replay+ewc'
  >>> result = jaxcl.fit(jaxcl.models.MLP(10), strategy, optax.sgd(0.1),
  ...                    jaxcl.benchmarks.split_mnist())  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcl import _validation
from jaxcl.benchmarks.scenario import Experience, Stream
from jaxcl.strategies import buffers, exemplars, latent
from jaxcl.strategies.base import Strategy, StrategyContext
from jaxcl.strategies.model_utils import (MASK_VALUE, example_inputs,
                                          feature_size,
                                          in_chunks, init_model_state,
                                          mask_logits, output_layer,
                                          output_layer_call,
                                          output_layer_path, own_class_mask,
                                          penultimate_features,
                                          refuse_task_labels,
                                          require_optimizer,
                                          restrict_current_classes,
                                          visible_classes, weighted_mean)

__all__ = [
    "DerState",
    "ErAceState",
    "ErAclState",
    "ErAmlState",
    "FeatureReplayState",
    "MirState",
    "RarState",
    "SerState",
    "contrast_partners",
    "cumulative",
    "der",
    "er_ace",
    "er_acl",
    "er_aml",
    "feature_replay",
    "from_scratch",
    "gdumb",
    "joint",
    "mir",
    "mi_fgsm",
    "nearest_other_class",
    "rar",
    "replay",
    "ser",
    "supervised_contrastive",
]

PyTree = Any


def _check_batch_size_mem(value, mem_size: int) -> int:
  """``batch_size_mem`` is a positive int up to ``mem_size``, or 0 for the
  training batch size."""
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool) \
      and value == 0:
    return 0
  try:
    value = _validation.check_positive_int("batch_size_mem", value)
  except ValueError:
    raise ValueError(f"batch_size_mem must be a positive integer, or 0 for the "
                     f"training batch size; got {value!r}.") from None
  buffers.check_draw_size("batch_size_mem", value, "mem_size", mem_size,
                          "; er_ace, er_acl, er_aml and mir draw 10 by "
                          "default")
  return value


def _memory_rows(ctx: StrategyContext, batch_size_mem: int) -> int:
  return batch_size_mem or ctx.batch_size


# --- Replay ------------------------------------------------------------------


def _with_memory_rows(ctx: StrategyContext, buffer: buffers.Buffer,
                      batch: dict, key: jax.Array, batch_size_mem: int) -> dict:
  """Replay's batch: the current rows, then ``batch_size_mem`` rows drawn
  uniformly from ``buffer`` (weight 0 while it holds fewer)."""
  rows = buffers.sample(buffer, key, _memory_rows(ctx, batch_size_mem))
  return buffers.concat_batches(batch, rows)


def replay(mem_size: int = 200, batch_size_mem: int = 0,
           storage: str = "experience_balanced",
           selection: str = "random") -> Strategy:
  """Experience replay (Avalanche's ``ReplayPlugin``).

  Each step appends ``batch_size_mem`` samples drawn uniformly (without
  replacement) from the memory to the ``batch_size`` current samples; the task
  loss is the mean over the concatenated batch. The memory is updated with
  the whole experience after training on it, in one vectorised insertion.
  Memory rows weigh 0 while the memory is empty.

  Args:
    mem_size: Memory capacity (samples).
    batch_size_mem: Memory samples per step; 0 means the training batch size
      (Avalanche's ``None``).
    storage: ``"experience_balanced"`` (Avalanche's default),
      ``"class_balanced"`` or ``"reservoir"`` (see
      :mod:`jaxcl.strategies.buffers`).
    selection: Which samples each group of the memory keeps: ``"random"``
      (Avalanche's reservoir buffers), or ``"herding"`` or
      ``"closest_to_center"`` (Avalanche's ``ParametricBuffer`` with
      ``HerdingSelectionStrategy`` or ``ClosestToCenterSelectionStrategy``,
      grouped by ``storage``: by experience, by class, or one group for
      ``"reservoir"``). Feature-based selection chooses every group's
      exemplars again after each experience from its stored and new samples,
      by the model's penultimate features at that point (see
      :func:`jaxcl.strategies.exemplars.add_experience_selected`).

  Returns:
    The strategy; its ``cl_state`` is a :class:`~jaxcl.strategies.buffers.Buffer`.

  Raises:
    ValueError: On invalid arguments; with feature-based selection, at
      initialisation, for a model without an output layer that
      :func:`~jaxcl.strategies.model_utils.penultimate_features` finds.

  Example:
    >>> replay(mem_size=500, storage="class_balanced").name
    'replay'
    >>> replay(storage="class_balanced", selection="herding").name
    'replay'
  """
  mem_size = _validation.check_positive_int("mem_size", mem_size)
  batch_size_mem = _check_batch_size_mem(batch_size_mem, mem_size)
  storage = _validation.check_choice("storage", storage, buffers.POLICIES)
  selection = _validation.check_choice("selection", selection,
                                       exemplars.SELECTIONS)

  def init(ctx, params, key):
    if selection != "random":
      # Fails here, before the stream compiles, for models without an
      # output layer to read features from.
      feature_size(ctx, params, init_model_state(ctx, key))
    return buffers.for_context(ctx, mem_size, policy=storage)

  def transform_batch(ctx, buffer, batch, key):
    return _with_memory_rows(ctx, buffer, batch, key, batch_size_mem)

  def end_experience(ctx, state, data, key):
    def features(x, task):
      return penultimate_features(ctx, state.params, state.model_state, x,
                                  task)

    return state.replace(cl_state=exemplars.add_experience_selected(
        state.cl_state, key, data, features, selection))

  return Strategy(name="replay", init=init, transform_batch=transform_batch,
                  end_experience=end_experience)


# --- DER / DER++ -------------------------------------------------------------


@flax.struct.dataclass
class DerState:
  """State of :func:`der`.

  Attributes:
    buffer: Reservoir memory; its extras ``der_logits`` hold the model's
      logits at insertion and ``der_logits_mask`` the classes seen then.
    alpha: Weight of the logit-matching (MSE) term.
    beta: Weight of the memory cross-entropy term (DER++).
  """

  buffer: buffers.Buffer
  alpha: jax.Array
  beta: jax.Array


def _as_weight(rows: dict, name: str, used: jax.Array | bool = True) -> dict:
  """Memory rows counted only by a strategy's penalty, not the task loss;
  as samples of the batch, they count in batch-norm statistics if the
  penalty ``used`` them."""
  weight = rows["weight"]
  return {**rows, name: weight, "weight": jnp.zeros_like(weight),
          "batch_stats_mask": (weight > 0) & used}


def der(mem_size: int = 200, alpha: float = 0.1, beta: float = 0.5,
        batch_size_mem: int = 0) -> Strategy:
  """Dark Experience Replay (DER, and DER++ when ``beta > 0``).

  Buzzega et al., "Dark Experience for General Continual Learning", 2020.
  The loss of each step is::

    CE(current) + alpha * MSE(logits(x'), z') + beta * CE(logits(x''), y'')

  where ``(x', z')`` and ``(x'', y'')`` are two independent draws of
  ``batch_size_mem`` memory samples and ``z'`` the logits stored with them.
  As in the paper, the memory is a reservoir over every sample seen and is
  filled online: after each step the current batch is offered with the
  logits of the model before the update (evaluation mode). The MSE averages
  over rows and classes (PyTorch's ``mse_loss``) but only compares the
  classes already seen when a sample was stored (the class-incremental head
  masks the others; every class with ``mask_unseen_classes=False``).

  Args:
    mem_size: Memory capacity.
    alpha: Weight of the logit-matching term.
    beta: Weight of the memory cross-entropy; 0 gives DER. The second draw
      is made even then, so that ``beta`` can be swept (``vmap``) through 0.
    batch_size_mem: Memory samples per draw; 0 means the training batch size.

  Returns:
    The strategy; its ``cl_state`` is a :class:`DerState`.

  Example:
    >>> der(mem_size=500, alpha=0.2, beta=0.5).name
    'der'
  """
  mem_size = _validation.check_positive_int("mem_size", mem_size)
  alpha = _validation.check_non_negative("alpha", alpha)
  beta = _validation.check_non_negative("beta", beta)
  batch_size_mem = _check_batch_size_mem(batch_size_mem, mem_size)

  def init(ctx, params, key):
    del params, key
    per_class = (ctx.n_classes,)
    extras = {"der_logits": jax.ShapeDtypeStruct(per_class, jnp.float32),
              "der_logits_mask": jax.ShapeDtypeStruct(per_class, jnp.bool_)}
    return DerState(
        buffer=buffers.for_context(ctx, mem_size, policy="reservoir",
                                   extras=extras),
        alpha=jnp.float32(alpha), beta=jnp.float32(beta))

  def transform_batch(ctx, cl_state, batch, key):
    n = _memory_rows(ctx, batch_size_mem)
    mse_key, ce_key = jax.random.split(key)
    return buffers.concat_batches(
        batch,
        _as_weight(buffers.sample(cl_state.buffer, mse_key, n),
                   "der_mse_weight"),
        # Drawn even for DER (beta = 0, sweepable), but then no sample of
        # the batch: out of batch-norm statistics, as if never drawn.
        _as_weight(buffers.sample(cl_state.buffer, ce_key, n),
                   "der_ce_weight", used=cl_state.beta > 0))

  def penalty(ctx, params, cl_state, batch, logits):
    del params
    diff = jnp.where(batch["der_logits_mask"], logits - batch["der_logits"], 0.)
    mse = jnp.sum(diff ** 2, -1) / ctx.n_classes
    ce = ctx.loss(logits, batch)
    return (cl_state.alpha * weighted_mean(mse, batch["der_mse_weight"])
            + cl_state.beta * weighted_mean(ce, batch["der_ce_weight"]))

  def after_step(ctx, old_state, new_state, grads, batch, key):
    del grads
    b = ctx.batch_size
    x, y, task = batch["x"][:b], batch["y"][:b], batch["task"][:b]
    logits = ctx.logits(old_state.params, old_state.model_state, x, task)
    # The classes seen so far; with task labels, only the sample's task's,
    # the others' logits being masked in training (their MSE is a constant).
    # Without masking, every logit is trained, and compared as in Avalanche.
    compared = (visible_classes(old_state.seen_classes, ctx.task_classes, task)
                if ctx.mask_classes else jnp.ones(ctx.n_classes, bool))
    extras = {"der_logits": logits,
              "der_logits_mask": jnp.broadcast_to(compared, logits.shape)}
    cl_state = new_state.cl_state
    return cl_state.replace(buffer=buffers.add(
        cl_state.buffer, key, x, y, task, valid=batch["weight"][:b] > 0,
        extras=extras))

  return Strategy(name="der", init=init, transform_batch=transform_batch,
                  penalty=penalty, after_step=after_step)


@flax.struct.dataclass
class SerState:
  """State of :func:`ser`.

  Attributes:
    buffer: Class-balanced memory; its extras ``ser_logits`` hold the
      model's logits when the sample was stored (after training on its
      experience) and ``ser_logits_mask`` the classes compared.
    teacher_params: The parameters before the current experience.
    teacher_model_state: Their model state.
    replaying: Whether the current experience replays (at least
      ``batch_size_mem`` samples stored).
    alpha: Weight of the backward consistency term.
    beta: Weight of the forward consistency term.
  """

  buffer: buffers.Buffer
  teacher_params: PyTree
  teacher_model_state: PyTree
  replaying: jax.Array
  alpha: jax.Array
  beta: jax.Array


def _masked_mse(ctx: StrategyContext, a: jax.Array, b: jax.Array,
                compared: jax.Array) -> jax.Array:
  """Per row, ``Σ_compared (a − b)² / n_classes``: PyTorch's ``mse_loss``
  over a head of ``n_classes``, with the masked classes contributing 0."""
  return jnp.sum(jnp.where(compared, a - b, 0.0) ** 2, -1) / ctx.n_classes


def ser(mem_size: int = 200, batch_size_mem: int = 0, alpha: float = 0.1,
        beta: float = 0.5) -> Strategy:
  """Strong Experience Replay (Avalanche's ``SER``).

  Zhuo et al., "Continual Learning with Strong Experience Replay", 2023.
  While replaying, each step trains on the current batch with
  ``batch_size_mem`` memory samples and the loss is::

    CE(current + memory) + alpha * MSE(f(x_mem), z_mem)
                         + beta * MSE(f_old(x_cur), f(x_cur))

  where ``z_mem`` are the logits stored with the memory samples (backward
  consistency, as DER's) and ``f_old`` is the model as it was before the
  current experience, in evaluation mode (forward consistency). Before the
  memory holds ``batch_size_mem`` samples the loss is the plain
  cross-entropy. The class-balanced memory takes each experience after
  training on it, with the trained model's logits. The MSEs average over
  rows and the head's classes, comparing only the classes the
  class-incremental head shows (all with ``mask_unseen_classes=False``).

  Args:
    mem_size: Memory capacity.
    batch_size_mem: Memory samples per step; 0 means the training batch size
      (Avalanche's ``None``).
    alpha: Weight of the backward consistency (memory logits) term.
    beta: Weight of the forward consistency (previous model) term.

  Returns:
    The strategy; its ``cl_state`` is a :class:`SerState`.

  Example:
    >>> ser(mem_size=500, alpha=0.2, beta=0.5).name
    'ser'
  """
  mem_size = _validation.check_positive_int("mem_size", mem_size)
  alpha = _validation.check_non_negative("alpha", alpha)
  beta = _validation.check_non_negative("beta", beta)
  batch_size_mem = _check_batch_size_mem(batch_size_mem, mem_size)

  def init(ctx, params, key):
    _check_replays("ser", ctx, mem_size, batch_size_mem)
    per_class = (ctx.n_classes,)
    extras = {"ser_logits": jax.ShapeDtypeStruct(per_class, jnp.float32),
              "ser_logits_mask": jax.ShapeDtypeStruct(per_class, jnp.bool_)}
    return SerState(
        buffer=buffers.for_context(ctx, mem_size, policy="class_balanced",
                                   extras=extras),
        teacher_params=params, teacher_model_state=init_model_state(ctx, key),
        replaying=jnp.zeros((), bool), alpha=jnp.float32(alpha),
        beta=jnp.float32(beta))

  def begin_experience(ctx, state, data, key):
    del data, key
    cl = state.cl_state
    replaying = buffers.size(cl.buffer) >= _memory_rows(ctx, batch_size_mem)
    return state.replace(cl_state=cl.replace(
        teacher_params=state.params, teacher_model_state=state.model_state,
        replaying=replaying))

  def transform_batch(ctx, cl_state, batch, key):
    rows = buffers.sample(cl_state.buffer, key,
                          _memory_rows(ctx, batch_size_mem))
    weight = rows["weight"] * cl_state.replaying
    return buffers.concat_batches(
        batch, {**rows, "weight": weight, "ser_mse_weight": weight})

  def penalty(ctx, params, cl_state, batch, logits):
    del params
    backward = weighted_mean(
        _masked_mse(ctx, logits, batch["ser_logits"],
                    batch["ser_logits_mask"]), batch["ser_mse_weight"])
    b = ctx.batch_size
    student = logits[:b]
    teacher = ctx.logits(cl_state.teacher_params,
                         cl_state.teacher_model_state, batch["x"][:b],
                         batch["task"][:b])
    # The classes the loop masked in the student's logits are not compared.
    forward = weighted_mean(
        _masked_mse(ctx, teacher, student, student > MASK_VALUE / 2),
        batch["weight"][:b])
    return jnp.where(cl_state.replaying,
                     cl_state.alpha * backward + cl_state.beta * forward, 0.0)

  def end_experience(ctx, state, data, key):
    cl = state.cl_state
    logits = in_chunks(lambda x, task: ctx.logits(
        state.params, state.model_state, x, task), data.x, data.task)
    compared = (visible_classes(state.seen_classes, ctx.task_classes,
                                data.task)
                if ctx.mask_classes else jnp.ones(ctx.n_classes, bool))
    extras = {"ser_logits": logits,
              "ser_logits_mask": jnp.broadcast_to(compared, logits.shape)}
    return state.replace(cl_state=cl.replace(buffer=buffers.add_experience(
        cl.buffer, key, data, extras=extras)))

  return Strategy(name="ser", init=init, begin_experience=begin_experience,
                  transform_batch=transform_batch, penalty=penalty,
                  end_experience=end_experience)


# --- ER-ACE ------------------------------------------------------------------


@flax.struct.dataclass
class ErAceState:
  """State of :func:`er_ace`.

  Attributes:
    buffer: Class-balanced memory (holds the current experience too).
    replaying: Whether the current experience replays (not the first
      experience, and at least ``batch_size_mem`` samples stored).
  """

  buffer: buffers.Buffer
  replaying: jax.Array


def _replay_memory(name: str, ctx: StrategyContext, mem_size: int,
                   batch_size_mem: int) -> buffers.Buffer:
  """The empty class-balanced memory of ER-ACE, ER-ACL and ER-AML."""
  _check_replays(name, ctx, mem_size, batch_size_mem)
  return buffers.for_context(ctx, mem_size, policy="class_balanced")


def _check_replays(name: str, ctx: StrategyContext, mem_size: int,
                   batch_size_mem: int) -> None:
  if _memory_rows(ctx, batch_size_mem) > mem_size:
    # Replay waits for batch_size_mem stored samples: it would never start.
    raise ValueError(
        f"{name} batch_size_mem=0 replays a training batch of "
        f"{ctx.batch_size} memory samples, more than mem_size={mem_size} "
        f"holds, so it would never replay; expected mem_size >= "
        f"{ctx.batch_size} or batch_size_mem <= {mem_size}.")


def _store_then_replay(ctx: StrategyContext, buffer: buffers.Buffer, data,
                       key: jax.Array, batch_size_mem: int
                       ) -> tuple[buffers.Buffer, jax.Array]:
  """ER-ACE's and ER-AML's memory update before an experience, and whether
  the experience replays (not the first, and enough samples stored)."""
  buffer = buffers.add_experience(buffer, key, data)
  replaying = (data.index > 0) & (
      buffers.size(buffer) >= _memory_rows(ctx, batch_size_mem))
  return buffer, replaying


def er_ace(mem_size: int = 200, batch_size_mem: int = 10) -> Strategy:
  """Experience replay with asymmetric cross-entropy (Avalanche's ``ER_ACE``).

  Caccia et al., "New Insights on Reducing Abrupt Representation Change in
  Online Continual Learning", ICLR 2022. While replaying, the loss is::

    (CE_restricted(current) + CE(memory)) / 2

  where the current samples' cross-entropy only uses the classes present in
  the current batch (``batch["class_mask"]``) and the memory samples' uses
  every class seen. Before the first replay (first experience, or fewer than
  ``batch_size_mem`` stored samples) the loss is the plain cross-entropy.
  As in Avalanche's offline ER-ACE, the class-balanced memory is updated with
  the whole experience before training on it.

  Args:
    mem_size: Memory capacity.
    batch_size_mem: Memory samples per step; 0 means the training batch size.

  Returns:
    The strategy; its ``cl_state`` is an :class:`ErAceState`.

  Example:
    >>> er_ace(mem_size=1000).name
    'er_ace'
  """
  mem_size = _validation.check_positive_int("mem_size", mem_size)
  batch_size_mem = _check_batch_size_mem(batch_size_mem, mem_size)

  def init(ctx, params, key):
    del params, key
    return ErAceState(
        _replay_memory("er_ace", ctx, mem_size, batch_size_mem),
        jnp.zeros((), bool))

  def begin_experience(ctx, state, data, key):
    buffer, replaying = _store_then_replay(ctx, state.cl_state.buffer, data,
                                           key, batch_size_mem)
    return state.replace(cl_state=ErAceState(buffer, replaying))

  def transform_batch(ctx, cl_state, batch, key):
    # Rows a replay strategy before it in the chain appended count as
    # present and are restricted too, as Avalanche's mb_y holds them.
    weighted = batch["weight"] > 0
    present = jnp.zeros(ctx.n_classes, bool).at[
        jnp.where(weighted, batch["y"], ctx.n_classes)].set(True, mode="drop")
    return _asymmetric_batch(ctx, batch, key, cl_state.buffer,
                             cl_state.replaying, present, weighted,
                             batch_size_mem)

  return Strategy(name="er_ace", init=init, begin_experience=begin_experience,
                  transform_batch=transform_batch)


def _asymmetric_batch(ctx: StrategyContext, batch: dict, key: jax.Array,
                      buffer: buffers.Buffer, replaying: jax.Array,
                      restrict: jax.Array, restricted: jax.Array,
                      batch_size_mem: int) -> dict:
  """ER-ACE's and ER-ACL's batch: while replaying, the ``restricted`` rows'
  cross-entropy runs over the ``restrict`` classes only, and memory rows
  follow, weighted so that the weighted mean is ``(mean_cur + mean_mem) /
  2``. The rows keep their own weights in ``asymmetric_weight``."""
  restrict = jnp.where(replaying, restrict, True)
  before = jnp.broadcast_to(batch.get("class_mask", True),
                            (batch["y"].shape[0], ctx.n_classes))
  # Rows of weight 0 that a strategy before it in a chain appended serve
  # that strategy's penalty (DER's memory rows): their classes stay.
  class_mask = jnp.where(restricted[:, None], before & restrict, before)
  rows = buffers.sample(buffer, key, _memory_rows(ctx, batch_size_mem))
  scale = jnp.sum(batch["weight"]) / jnp.maximum(jnp.sum(rows["weight"]), 1.)
  rows["weight"] = rows["weight"] * scale * replaying
  own = jnp.where(jnp.arange(batch["weight"].shape[0]) < ctx.batch_size,
                  batch["weight"], 0.0)
  return buffers.concat_batches(
      {**batch, "class_mask": class_mask, "asymmetric_weight": own},
      {**rows, "asymmetric_weight": rows["weight"]})


@flax.struct.dataclass
class ErAclState:
  """State of :func:`er_acl`.

  Attributes:
    buffer: Class-balanced memory (holds the current experience too).
    replaying: Whether the current experience replays (classes of an
      earlier task seen, and at least ``batch_size_mem`` samples stored).
    new_classes: ``bool[n_classes]``, the classes of the current task.
    old_classes: ``bool[n_classes]``, the classes of the tasks before it.
  """

  buffer: buffers.Buffer
  replaying: jax.Array
  new_classes: jax.Array
  old_classes: jax.Array


def er_acl(mem_size: int = 200, batch_size_mem: int = 10) -> Strategy:
  """Experience replay with asymmetric cross-entropy over the task's classes
  (Avalanche's ``ER_ACL`` and ``OnlineER_ACL``).

  Caccia et al., "New Insights on Reducing Abrupt Representation Change in
  Online Continual Learning", ICLR 2022. While replaying, the loss is::

    CE_task(current) + CE(memory)

  where the current samples' cross-entropy runs over the classes of the
  current task and the memory samples' over every class seen; before any
  earlier task's class was seen (or while fewer than ``batch_size_mem``
  samples are stored) the loss is the plain cross-entropy. The
  class-balanced memory takes each experience before training on it. A task
  is tracked by its classes, as Avalanche's online version does: an
  experience sharing no class with the current task starts a new one, and
  one sharing some adds its other classes to it (on an online stream the
  mini-experiences of an original experience make one task as long as
  consecutive ones share a class; mini-experiences of one or two samples
  often do not, and then, as in Avalanche, each starts a task).

  :func:`er_ace` differs in restricting the current rows to the classes of
  their mini-batch and halving the sum.

  Args:
    mem_size: Memory capacity.
    batch_size_mem: Memory samples per step; 0 means the training batch size.

  Returns:
    The strategy; its ``cl_state`` is an :class:`ErAclState`.

  Example:
    >>> er_acl(mem_size=1000).name
    'er_acl'
  """
  mem_size = _validation.check_positive_int("mem_size", mem_size)
  batch_size_mem = _check_batch_size_mem(batch_size_mem, mem_size)

  def init(ctx, params, key):
    del params, key
    none = jnp.zeros(ctx.n_classes, bool)
    return ErAclState(_replay_memory("er_acl", ctx, mem_size, batch_size_mem),
                      jnp.zeros((), bool), none, none)

  def begin_experience(ctx, state, data, key):
    cl = state.cl_state
    buffer = buffers.add_experience(cl.buffer, key, data)
    current = data.classes_mask
    new_task = ~jnp.any(current & cl.new_classes)
    old = jnp.where(new_task, cl.old_classes | cl.new_classes, cl.old_classes)
    new = jnp.where(new_task, current, cl.new_classes | current)
    replaying = jnp.any(old) & (
        buffers.size(buffer) >= _memory_rows(ctx, batch_size_mem))
    return state.replace(cl_state=ErAclState(buffer, replaying, new, old))

  def transform_batch(ctx, cl_state, batch, key):
    # Only the current samples are restricted to the task's classes: rows
    # a replay strategy before it appended are of earlier tasks.
    current = (jnp.arange(batch["weight"].shape[0]) < ctx.batch_size) & (
        batch["weight"] > 0)
    return _asymmetric_batch(ctx, batch, key, cl_state.buffer,
                             cl_state.replaying, cl_state.new_classes,
                             current, batch_size_mem)

  def penalty(ctx, params, cl_state, batch, logits):
    del params
    # Alone, the loop's loss is the half-sum (mean_cur + mean_mem) / 2:
    # adding its own rows' share again makes ER-ACL's sum (rows other
    # strategies append count once).
    own = jnp.sum(ctx.loss(logits, batch) * batch["asymmetric_weight"])
    loss = own / jnp.maximum(jnp.sum(batch["weight"]), 1.0)
    return jnp.where(cl_state.replaying, loss, 0.0)

  return Strategy(name="er_acl", init=init, begin_experience=begin_experience,
                  transform_batch=transform_batch, penalty=penalty)


# --- ER-AML ------------------------------------------------------------------


@flax.struct.dataclass
class ErAmlState:
  """State of :func:`er_aml`.

  Attributes:
    buffer: Class-balanced memory, updated with each experience before
      training on it.
    replaying: Whether the current experience replays.
    model_state: The current model's state (batch-norm statistics), for the
      features the penalty computes.
    temp: Temperature of the contrastive term.
    base_temp: Base temperature (the term is scaled by ``temp / base_temp``).
  """

  buffer: buffers.Buffer
  replaying: jax.Array
  model_state: Any
  temp: jax.Array
  base_temp: jax.Array


def contrast_partners(buffer: buffers.Buffer, key: jax.Array, y: jax.Array,
                      task: jax.Array, same_task_neg: bool = True
                      ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """A positive and a negative memory slot for each row, as ER-AML draws them.

  The positive is drawn uniformly among the stored samples of the row's
  class. The negative's class is drawn uniformly among the other stored
  classes, then its sample uniformly within that class: Avalanche draws the
  same number of samples from every class of its memory and then picks
  uniformly among them. With ``same_task_neg``, only samples of the row's
  task are candidates, so each class weighs the share of its stored samples
  in that task (as the same share of Avalanche's draw remains).

  Args:
    buffer: A class-balanced memory.
    key: PRNG key.
    y: ``int[n]`` labels of the rows.
    task: ``int[n]`` task labels of the rows.
    same_task_neg: Draw negatives only among samples of the row's task.

  Returns:
    ``(positive, negative, found)``: ``int[n]`` slots and ``bool[n]``, False
    for rows whose class or whose negatives the memory does not hold (their
    slots are arbitrary).

  Example:
    >>> pos, neg, found = contrast_partners(
    ...     buffer, key, batch["y"], batch["task"])  # doctest: +SKIP
  """
  same = buffer.valid & (buffer.y == y[:, None])
  other = buffer.valid & (buffer.y != y[:, None])
  if same_task_neg:
    other = other & (buffer.task == task[:, None])
  per_class = jnp.zeros(buffer.n_groups).at[buffer.y].add(buffer.valid)
  # Each slot weighs 1 / (its class's stored samples): classes equally likely.
  slot_weight = -jnp.log(jnp.maximum(per_class[buffer.y], 1.0))
  positive_key, negative_key = jax.random.split(key)
  positive = jax.random.categorical(
      positive_key, jnp.where(same, 0.0, -jnp.inf), axis=-1)
  negative = jax.random.categorical(
      negative_key, jnp.where(other, slot_weight, -jnp.inf), axis=-1)
  found = jnp.any(same, -1) & jnp.any(other, -1)
  return positive, negative, found


def _unit_rows(h: jax.Array) -> jax.Array:
  # Avalanche's scaling: the norm plus 1e-5, so that zero rows stay finite.
  # The floor under the squared norm gives a zero row a zero gradient, as
  # PyTorch's norm does (jnp.linalg.norm's is NaN there, even at weight 0).
  norm = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(h), -1, keepdims=True),
                              1e-30))
  return h / (norm + 1e-5)


def supervised_contrastive(anchors: jax.Array, anchor_y: jax.Array,
                           anchor_weight: jax.Array, features: jax.Array,
                           feature_y: jax.Array, feature_weight: jax.Array,
                           temp: jax.Array, base_temp: jax.Array, *,
                           exclude_self: bool = False) -> jax.Array:
  """Supervised contrastive loss of ``anchors`` against ``features``.

  Khosla et al., "Supervised Contrastive Learning", 2020, in the form
  Avalanche's ``AMLCriterion`` uses: for each anchor ``a`` with label ``y``,
  ``−(temp/base_temp) · mean over features f of label y of
  log softmax_f(a·f / temp)``, averaged over the anchors. Rows are used as
  given (scale them to unit norm for cosine similarities). With
  ``exclude_self`` the anchors are the features themselves and anchor ``i``
  leaves feature ``i`` out of its softmax and its positives (the
  ``SupConLoss`` of Khosla et al., Avalanche's ``SCRLoss``).

  Args:
    anchors: ``[n, d]``.
    anchor_y: ``int[n]``.
    anchor_weight: ``[n]``, 0 for anchors left out.
    features: ``[m, d]``.
    feature_y: ``int[m]``.
    feature_weight: ``[m]``, 0 for features left out of every softmax.
    temp: Temperature.
    base_temp: Base temperature.
    exclude_self: Leave each anchor's own row out (``n == m``, the same
      rows as anchors and features).

  Returns:
    The loss (0 when no anchor has weight; an anchor without a feature of
    its label counts 0).

  Example:
    >>> import jax.numpy as jnp
    >>> a, y, w = jnp.eye(2), jnp.array([0, 1]), jnp.ones(2)
    >>> round(float(supervised_contrastive(a, y, w, a, y, w, 1.0, 1.0)), 4)
    0.3133
  """
  used = feature_weight > 0
  if exclude_self:
    used = used & ~jnp.eye(anchors.shape[0], features.shape[0], dtype=bool)
  # A finite stand-in for -inf: with no feature left, log_softmax stays
  # finite and the masked means below give 0 without NaN gradients.
  similarity = jnp.where(used, anchors @ features.T / temp, -1e30)
  log_prob = jax.nn.log_softmax(similarity, axis=-1)
  positive = used & (anchor_y[:, None] == feature_y)
  mean_positive = jnp.sum(jnp.where(positive, log_prob, 0.0), -1) / (
      jnp.maximum(jnp.sum(positive, -1), 1))
  return -(temp / base_temp) * weighted_mean(mean_positive, anchor_weight)


def er_aml(mem_size: int = 200, batch_size_mem: int = 10, temp: float = 0.1,
           base_temp: float = 0.07, same_task_neg: bool = True) -> Strategy:
  """Experience replay with asymmetric metric learning (Avalanche's ``ER_AML``).

  Caccia et al., "New Insights on Reducing Abrupt Representation Change in
  Online Continual Learning", ICLR 2022. While replaying, the loss is::

    CE(memory) + SupCon(current | positives, negatives)

  The memory samples (``batch_size_mem`` drawn from the class-balanced
  memory) get the plain cross-entropy. The current samples get no
  cross-entropy: each draws a positive (same class) and a negative (another
  class) from the memory (:func:`contrast_partners`), and the penultimate
  features of the three, each scaled to unit norm, enter
  :func:`supervised_contrastive` with the current samples as anchors and the
  positives and negatives as the features they are compared with. Before
  the first replay (first experience, or fewer than ``batch_size_mem``
  stored samples) the loss is the plain cross-entropy. As in Avalanche, the
  memory is updated with the whole experience before training on it.

  Differences from Avalanche, each documented in
  ``docs/strategies_rehearsal.md``: the contrastive features are computed in
  evaluation mode (no dropout; batch-norm running statistics), as LFL's
  are; positives and negatives are not augmented; a current sample whose
  class or negatives the memory lacks (Avalanche stops with an error) is
  left out of the contrastive term.

  Args:
    mem_size: Memory capacity.
    batch_size_mem: Memory samples per step for the cross-entropy; 0 means
      the training batch size.
    temp: Temperature of the contrastive term (> 0).
    base_temp: Base temperature (> 0); the term is scaled by
      ``temp / base_temp``.
    same_task_neg: Draw negatives only among memory samples of the anchor's
      task.

  Returns:
    The strategy; its ``cl_state`` is an :class:`ErAmlState`.

  Example:
    >>> er_aml(mem_size=1000, temp=0.1).name
    'er_aml'
  """
  mem_size = _validation.check_positive_int("mem_size", mem_size)
  batch_size_mem = _check_batch_size_mem(batch_size_mem, mem_size)
  temp = _validation.check_float32_positive("temp", temp)
  base_temp = _validation.check_float32_positive("base_temp", base_temp)
  if temp / base_temp > float(np.finfo(np.float32).max):
    raise ValueError(f"temp / base_temp = {temp!r} / {base_temp!r} overflows "
                     "float32; expected a ratio below 3.4e38.")
  same_task_neg = _validation.check_bool("same_task_neg", same_task_neg)

  def init(ctx, params, key):
    memory = _replay_memory("er_aml", ctx, mem_size, batch_size_mem)
    model_state = init_model_state(ctx, key)
    output_layer_path(ctx, params, model_state)  # Features exist, or say so.
    return ErAmlState(memory, jnp.zeros((), bool), model_state,
                      jnp.float32(temp), jnp.float32(base_temp))

  def begin_experience(ctx, state, data, key):
    buffer, replaying = _store_then_replay(ctx, state.cl_state.buffer, data,
                                           key, batch_size_mem)
    return state.replace(cl_state=state.cl_state.replace(
        buffer=buffer, replaying=replaying, model_state=state.model_state))

  def transform_batch(ctx, cl_state, batch, key):
    memory_key, partners_key = jax.random.split(key)
    current = (batch["weight"] > 0) & (
        jnp.arange(batch["y"].shape[0]) < ctx.batch_size) & cl_state.replaying
    positive, negative, found = contrast_partners(
        cl_state.buffer, partners_key, batch["y"], batch["task"],
        same_task_neg)
    rows = buffers.sample(cl_state.buffer, memory_key,
                          _memory_rows(ctx, batch_size_mem))
    rows["weight"] = rows["weight"] * cl_state.replaying
    # The current samples' cross-entropy is zeroed; the penalty trains them.
    return buffers.concat_batches(
        {**batch, "class_mask": own_class_mask(ctx, batch, current),
         "aml_anchor": (current & found).astype(jnp.float32),
         "aml_positive": positive, "aml_negative": negative},
        _as_weight(rows, "aml_memory"))

  def penalty(ctx, params, cl_state, batch, logits):
    memory = weighted_mean(ctx.loss(logits, batch), batch["aml_memory"])
    n, buffer = ctx.batch_size, cl_state.buffer
    slots = jnp.concatenate([batch["aml_positive"][:n],
                             batch["aml_negative"][:n]])
    x = jnp.concatenate([batch["x"][:n],
                         buffer.x[slots].astype(batch["x"].dtype)])
    task = jnp.concatenate([batch["task"][:n], buffer.task[slots]])
    h = _unit_rows(penultimate_features(ctx, params, cl_state.model_state, x,
                                        task))
    anchor = batch["aml_anchor"][:n]
    # Avalanche stacks the anchors twice against [positives; negatives]; the
    # two copies give the same rows, so one copy has the same mean.
    contrastive = supervised_contrastive(
        h[:n], batch["y"][:n], anchor, h[n:], buffer.y[slots],
        jnp.tile(anchor, 2), cl_state.temp, cl_state.base_temp)
    return memory + contrastive

  def after_step(ctx, old_state, new_state, grads, batch, key):
    del ctx, old_state, grads, batch, key
    return new_state.cl_state.replace(model_state=new_state.model_state)

  return Strategy(name="er_aml", init=init, begin_experience=begin_experience,
                  transform_batch=transform_batch, penalty=penalty,
                  after_step=after_step)


# --- Feature replay ----------------------------------------------------------


@flax.struct.dataclass
class FeatureReplayState:
  """State of :func:`feature_replay`.

  Attributes:
    buffer: Class-balanced memory of penultimate features (its ``x``),
      updated with each experience after training on it.
    replaying: Whether the memory holds a draw (from the second experience).
    current_weight: ``1 / (i + 1)`` for the experience at position ``i``.
    seen: The classes seen so far (those the replayed losses use).
    current: The classes of the current experience.
    model_state: The current model's state, for the features of the batch.
    draw_key: PRNG key of the experience's memory draws.
    step: Optimizer steps taken in the experience (one draw each).
  """

  buffer: buffers.Buffer
  replaying: jax.Array
  current_weight: jax.Array
  seen: jax.Array
  current: jax.Array
  model_state: Any
  draw_key: jax.Array
  step: jax.Array


_CRITERION_MASKS = ("new", "seen")


def feature_replay(mem_size: int = 200, batch_size_mem: int = 10,
                   criterion_mask: str = "new") -> Strategy:
  """Replays stored penultimate features through the output layer
  (Avalanche's ``FeatureReplay``).

  The PR-ACE loss of Magistri et al., "Elastic Feature Consolidation for
  Cold Start Exemplar-Free Incremental Learning", ICLR 2024, with stored
  features in place of the paper's Gaussian prototypes, as Avalanche's
  strategy. After each experience, the features of its samples (the
  inputs of the model's output layer, in evaluation mode) enter a
  class-balanced memory. From the second experience on, with
  ``w = 1 / (i + 1)`` at the experience of position ``i``, the loss is::

    0.5 · CE_mask(f(x), y)
      + 0.5 · ((1 − w) · CE(g(h_mem), y_mem) + w · CE(g(sg(h(x))), y))

  where ``f`` is the model, ``g`` its output layer, ``h`` its features,
  ``sg`` stops the gradient (the replayed terms train the output layer
  only), ``(h_mem, y_mem)`` are ``batch_size_mem`` features drawn from the
  memory, ``CE`` is the plain cross-entropy over every class seen (every
  class of the head with ``mask_unseen_classes=False``) and ``CE_mask`` the
  loop's task loss with the current samples restricted to the current
  experience's classes (``criterion_mask="new"``, the paper's setting) or
  to every class seen (``"seen"``); rows that a strategy before it in a
  chain appends (replay's memory) keep their classes. Before the first
  replay the loss is ``CE_mask`` alone.

  Stored features are never recomputed: they keep the feature extractor of
  the experience they come from, so the output layer learns to separate
  old classes as they were represented then.

  Differences from Avalanche, documented in ``docs/strategies_rehearsal.md``:
  the default ``criterion_mask`` is ``"new"``, as the paper and Avalanche's
  docstring have it (Avalanche's default criterion, ``MaskedCrossEntropy()``,
  masks to the seen classes, with which the current samples' full
  cross-entropy undoes the replay: on SplitMNIST it ends near naive
  training); the output layer is found as for every feature strategy (the
  last Dense the model calls), not by name; the batch's features for the
  replayed term are computed in evaluation mode (no dropout), as ER-AML's
  are; the stored features are those of the inputs without the benchmark's
  augmentation.

  Args:
    mem_size: Memory capacity (features).
    batch_size_mem: Memory features per step; 0 means the training batch
      size (Avalanche's ``None``).
    criterion_mask: ``"new"`` or ``"seen"``, the classes of the current
      samples' cross-entropy.

  Returns:
    The strategy; its ``cl_state`` is a :class:`FeatureReplayState`.

  Raises:
    ValueError: Bad arguments; (at ``init``) a stream with task labels, a
      model whose output layer is not a ``flax.linen.Dense``, or one whose
      output layer's outputs are not its logits in shape.

  Example:
    >>> feature_replay(mem_size=2000, criterion_mask="seen").name
    'feature_replay'
  """
  mem_size = _validation.check_positive_int("mem_size", mem_size)
  batch_size_mem = _check_batch_size_mem(batch_size_mem, mem_size)
  criterion_mask = _validation.check_choice(
      "feature_replay criterion_mask", criterion_mask, _CRITERION_MASKS)

  def init(ctx, params, key):
    refuse_task_labels(ctx, "feature_replay trains one output layer on the "
                       "stored features of every class, as Avalanche's "
                       "FeatureReplay; got a stream with task labels (one "
                       "head per task).")
    _check_replays("feature_replay", ctx, mem_size, batch_size_mem)
    model_state = init_model_state(ctx, key)
    return FeatureReplayState(
        buffer=latent.feature_memory("feature_replay", ctx, params,
                                     model_state, mem_size,
                                     policy="class_balanced"),
        replaying=jnp.zeros((), bool), current_weight=jnp.ones(()),
        seen=jnp.zeros(ctx.n_classes, bool),
        current=jnp.zeros(ctx.n_classes, bool), model_state=model_state,
        draw_key=key, step=jnp.zeros((), jnp.int32))

  def begin_experience(ctx, state, data, key):
    del ctx
    return state.replace(cl_state=state.cl_state.replace(
        current_weight=1.0 / (data.index + 1.0), seen=state.seen_classes,
        current=data.classes_mask, model_state=state.model_state,
        draw_key=key, step=jnp.zeros((), jnp.int32)))

  def transform_batch(ctx, cl_state, batch, key):
    del key
    # "seen" also restricts without the loop's masking.
    return restrict_current_classes(
        ctx, batch,
        cl_state.current if criterion_mask == "new" else cl_state.seen)

  def penalty(ctx, params, cl_state, batch, logits):
    cl = cl_state
    # The loop adds CE_mask in full; half of it goes back here.
    masked = weighted_mean(ctx.loss(logits, batch), batch["weight"])
    features = output_layer_call(ctx, params, cl.model_state, batch["x"],
                                 batch["task"])[1]
    head = output_layer(ctx, params, cl.model_state, batch["x"],
                        batch["task"])

    def plain_ce(logits, y, weight):
      # Avalanche's plain cross-entropy (full_criterion), whatever ctx.loss.
      return weighted_mean(
          optax.softmax_cross_entropy_with_integer_labels(logits, y), weight)

    logits, rows = latent.replayed_logits(
        ctx, params, cl.model_state, cl.buffer,
        jax.random.fold_in(cl.draw_key, cl.step),
        _memory_rows(ctx, batch_size_mem), cl.seen)
    replayed = plain_ce(logits, rows["y"], rows["weight"])
    current = plain_ce(
        mask_logits(ctx, head(params, jax.lax.stop_gradient(features)),
                    cl.seen, batch["task"]),
        batch["y"], batch["weight"])
    w = cl.current_weight
    extra = 0.5 * ((1.0 - w) * replayed + w * current) - 0.5 * masked
    return jnp.where(cl.replaying, extra, 0.0)

  def after_step(ctx, old_state, new_state, grads, batch, key):
    del ctx, old_state, grads, batch, key
    cl = new_state.cl_state
    return cl.replace(model_state=new_state.model_state, step=cl.step + 1)

  def end_experience(ctx, state, data, key):
    cl = state.cl_state
    buffer = latent.store_features(ctx, state, cl.buffer, data, key)
    replaying = buffers.size(buffer) >= _memory_rows(ctx, batch_size_mem)
    return state.replace(cl_state=cl.replace(buffer=buffer,
                                             replaying=replaying))

  return Strategy(name="feature_replay", init=init,
                  begin_experience=begin_experience,
                  transform_batch=transform_batch, penalty=penalty,
                  after_step=after_step, end_experience=end_experience)


# --- MIR ---------------------------------------------------------------------


@flax.struct.dataclass
class MirState:
  """State of :func:`mir`.

  Attributes:
    buffer: Class-balanced memory, updated after each experience.
    mir_lr: Learning rate of the virtual SGD step.
  """

  buffer: buffers.Buffer
  mir_lr: jax.Array


def _seen_loss(ctx, state, params, rows, train=False, key=None):
  """Per-row task loss of ``rows`` under ``params``, logits masked as the loop's."""
  logits = ctx.logits(params, state.model_state, rows["x"], rows["task"],
                      train, key, weight=rows["weight"])
  return ctx.loss(mask_logits(ctx, logits, state.seen_classes, rows["task"]),
                  {k: rows[k] for k in ("x", "y", "task", "weight")})


def mir(mem_size: int = 200, subsample: int = 50, batch_size_mem: int = 10,
        mir_lr: float = 0.1) -> Strategy:
  """Maximally Interfered Retrieval (Avalanche's ``MIR``).

  Aljundi et al., "Online Continual Learning with Maximally Interfered
  Retrieval", NeurIPS 2019. Each step draws ``subsample`` memory samples,
  takes a virtual SGD step ``params - mir_lr * g`` along the gradient ``g``
  of the current loss, and replays the ``batch_size_mem`` samples whose loss
  would rise most. The total gradient is ``g`` plus the gradient of the mean
  cross-entropy of the chosen samples (Avalanche adds the two losses). The
  class-balanced memory is updated with each experience after training on it.

  Avalanche takes the virtual step's learning rate from the PyTorch
  optimizer; optax optimizers do not expose one, so it is the
  hyperparameter ``mir_lr`` (set it to the optimizer's learning rate to
  match Avalanche). The loss increases are measured in evaluation mode.

  Args:
    mem_size: Memory capacity.
    subsample: Memory samples scored per step.
    batch_size_mem: Samples replayed per step (at most ``subsample``); 0
      means the training batch size, capped at ``subsample``.
    mir_lr: Learning rate of the virtual SGD step.

  Returns:
    The strategy; its ``cl_state`` is a :class:`MirState`.

  Example:
    >>> mir(mem_size=500, subsample=100).name
    'mir'
  """
  mem_size = _validation.check_positive_int("mem_size", mem_size)
  subsample = _validation.check_positive_int("subsample", subsample)
  batch_size_mem = _check_batch_size_mem(batch_size_mem, mem_size)
  if batch_size_mem > subsample:
    raise ValueError(f"batch_size_mem={batch_size_mem} must be at most "
                     f"subsample={subsample} (replayed samples are chosen "
                     "among the subsample).")
  mir_lr = _validation.check_in_range("mir_lr", mir_lr, low=0.0,
                                      low_inclusive=False)

  def init(ctx, params, key):
    del params, key
    return MirState(buffers.for_context(ctx, mem_size, policy="class_balanced"),
                    jnp.float32(mir_lr))

  def transform_grads(ctx, grads, state, batch, key):
    del batch
    sample_key, dropout_key = jax.random.split(key)
    cl_state = state.cl_state
    candidates = buffers.sample(cl_state.buffer, sample_key, subsample)
    virtual = jax.tree.map(lambda p, g: p - cl_state.mir_lr * g, state.params,
                           grads)
    rise = (_seen_loss(ctx, state, virtual, candidates)
            - _seen_loss(ctx, state, state.params, candidates))
    rise = jnp.where(candidates["weight"] > 0, rise, -jnp.inf)
    n = min(_memory_rows(ctx, batch_size_mem), subsample)
    chosen = jax.tree.map(lambda a: a[jax.lax.top_k(rise, n)[1]], candidates)

    def replay_loss(params):
      losses = _seen_loss(ctx, state, params, chosen, True, dropout_key)
      return weighted_mean(losses, chosen["weight"])

    return jax.tree.map(jnp.add, grads, jax.grad(replay_loss)(state.params))

  def end_experience(ctx, state, data, key):
    cl_state = state.cl_state
    return state.replace(cl_state=cl_state.replace(
        buffer=buffers.add_experience(cl_state.buffer, key, data)))

  return Strategy(name="mir", init=init, transform_grads=transform_grads,
                  end_experience=end_experience)


# --- RAR ---------------------------------------------------------------------


@flax.struct.dataclass
class RarState:
  """State of :func:`rar`.

  Attributes:
    buffer: Reservoir memory, updated with each experience after training
      on it.
    opt_lr: Learning rate of the look-ahead SGD step.
    beta_coef: Weight of the adversarial replay term.
    decay_factor_fgsm: Momentum decay of MI-FGSM.
    epsilon_fgsm: L-inf budget of the perturbation, a fraction of the
      input range.
    iter_fgsm: MI-FGSM's ``iterations`` (int32), so that runs swept over it
      each take their own number of steps.

  Each hyperparameter is 0 where the configuration does not read it (see
  :func:`rar`), so that a sweep over it is refused.
  """

  buffer: buffers.Buffer
  opt_lr: jax.Array
  beta_coef: jax.Array
  decay_factor_fgsm: jax.Array
  epsilon_fgsm: jax.Array
  iter_fgsm: jax.Array


def nearest_other_class(features: jax.Array, y: jax.Array,
                        candidates: jax.Array, candidate_y: jax.Array,
                        candidate_valid: jax.Array
                        ) -> tuple[jax.Array, jax.Array]:
  """For each row, the label of the nearest candidate of another class.

  RAR's attack target: the memory sample is pushed towards the class of
  its nearest neighbour (Euclidean distance between features) among the
  current samples of a different class.

  Args:
    features: ``[m, d]``, the rows' features.
    y: ``int[m]``, the rows' labels.
    candidates: ``[n, d]``, the candidates' features.
    candidate_y: ``int[n]``, their labels.
    candidate_valid: ``bool[n]``, False for candidates left out (padding).

  Returns:
    ``(target, found)``: ``int[m]`` labels and ``bool[m]``, False for rows
    without a candidate of another class (their target is arbitrary).

  Example:
    >>> import jax.numpy as jnp
    >>> target, found = nearest_other_class(
    ...     jnp.array([[0.0], [8.0]]), jnp.array([0, 1]),
    ...     jnp.array([[1.0], [4.0], [9.0]]), jnp.array([0, 2, 3]),
    ...     jnp.ones(3, bool))
    >>> target.tolist(), found.tolist()
    ([2, 3], [True, True])
  """
  eligible = candidate_valid[None, :] & (candidate_y[None, :] != y[:, None])
  distance = (jnp.sum(jnp.square(features), -1, keepdims=True)
              - 2.0 * features @ candidates.T
              + jnp.sum(jnp.square(candidates), -1))
  nearest = jnp.argmin(jnp.where(eligible, distance, jnp.inf), -1)
  return candidate_y[nearest], jnp.any(eligible, -1)


def mi_fgsm(loss_grad, x: jax.Array, epsilon: jax.Array, decay: jax.Array,
            iterations: int | jax.Array, low: float = 0.0, high: float = 1.0
            ) -> jax.Array:
  """Targeted MI-FGSM (Dong et al., "Boosting Adversarial Attacks with
  Momentum", CVPR 2018) with Avalanche's RAR schedule.

  ``iterations - 1`` steps, each of which takes the gradient ``d`` of the
  loss at the current point, accumulates the momentum ``g = decay * g +
  d / ||d||_1`` (per row) and moves ``x_adv - epsilon / iterations *
  sign(g)`` (down the loss: towards the attack's target), clipped to
  ``[low, high]``. A row stops once it lies farther than ``epsilon`` (L-inf)
  from ``x``, which only the clipping of an input outside the range can do.

  Args:
    loss_grad: ``x -> [m, ...]``, the gradient of the loss to decrease.
    x: ``[m, ...]`` inputs.
    epsilon: The L-inf budget.
    decay: The momentum's decay.
    iterations: Avalanche's ``iter_fgsm`` (a Python or traced integer):
      ``iterations - 1`` steps of ``epsilon / iterations``.
    low: The smallest valid input value.
    high: The largest valid input value.

  Returns:
    The perturbed inputs (float32).

  Example:
    >>> import jax.numpy as jnp
    >>> out = mi_fgsm(jnp.ones_like, jnp.array([[0.5, 0.05]]), 0.3, 1.0, 3)
    >>> [round(v, 4) for v in out[0].tolist()]
    [0.3, 0.0]
  """
  x = x.astype(jnp.float32)
  axes = tuple(range(1, x.ndim))
  step = epsilon / iterations

  def body(_, carry):
    x_adv, g, done = carry
    grad = loss_grad(x_adv)
    l1 = jnp.sum(jnp.abs(grad), axes, keepdims=True)
    g = decay * g + grad / jnp.where(l1 > 0, l1, 1.0)
    moved = jnp.clip(x_adv - step * jnp.sign(g), low, high)
    x_adv = jnp.where(done, x_adv, moved)
    done = done | (jnp.max(jnp.abs(x_adv - x), axes, keepdims=True)
                   > epsilon)
    return x_adv, g, done

  done = jnp.zeros((x.shape[0],) + (1,) * len(axes), bool)
  return jax.lax.fori_loop(0, iterations - 1, body,
                           (x, jnp.zeros_like(x), done))[0]


def _input_scale(dtype) -> float:
  """The raw value of a full-range change: the largest value of integer
  inputs (255 for uint8 pixels), else 1 (float inputs in ``[0, 1]``)."""
  if jnp.issubdtype(dtype, jnp.integer):
    return float(jnp.iinfo(dtype).max)
  return 1.0


def _refuse_signed_inputs(dtype) -> None:
  """Refuses inputs that :func:`rar` cannot perturb within their range: it
  clips to ``[0, max]`` of an unsigned integer dtype, ``[0, 1]`` of floats."""
  if not (jnp.issubdtype(dtype, jnp.unsignedinteger)
          or jnp.issubdtype(dtype, jnp.floating)):
    raise ValueError(
        f"rar perturbs raw inputs clipped to [0, max] of an unsigned integer "
        f"dtype (uint8 pixels: [0, 255]) or to [0, 1] for floats; got inputs "
        f"of dtype {jnp.dtype(dtype).name}, whose negative values the clip "
        f"would erase. Give the benchmark uint8 pixels or floats in [0, 1].")


def rar(batch_size_mem: int = 0, mem_size: int = 200, opt_lr: float = 0.1,
        use_adversarial_replay: bool = True, beta_coef: float = 0.4,
        decay_factor_fgsm: float = 1.0, epsilon_fgsm: float = 0.0314,
        iter_fgsm: int = 2) -> Strategy:
  """Retrospective Adversarial Replay (Avalanche's ``RARPlugin``).

  Kumari et al., "Retrospective Adversarial Replay for Continual Learning",
  NeurIPS 2022. A reservoir memory is updated with each experience after
  training on it, and every step trains on the current samples followed by
  ``batch_size_mem`` memory samples, as :func:`replay` does. With
  ``use_adversarial_replay``, each step also

  1. draws another ``batch_size_mem`` memory samples ``(x_m, y_m)``;
  2. takes a look-ahead SGD step ``θ' = θ − opt_lr · g`` along the gradient
     ``g`` of the training batch's loss (the model itself is not moved; in
     a :func:`chain`, ``g`` as the strategies before ``rar`` transformed
     it: chain ``rar`` before a projection such as A-GEM's);
  3. gives each memory sample the label ``t`` of the nearest current sample
     of another class, by the distance between their penultimate features
     under ``θ'`` (:func:`nearest_other_class`);
  4. perturbs ``x_m`` towards ``t`` with targeted MI-FGSM under ``θ'``
     (:func:`mi_fgsm`: ``iter_fgsm − 1`` steps of ``epsilon_fgsm /
     iter_fgsm`` down ``CE(θ'(x), t)``, clipped to the input range);

  and adds the gradient of ``beta_coef · CE(θ(x_adv), y_m)`` to ``g``, so
  the loss is the replay loss plus the adversarial term.

  Raw inputs are perturbed (the model sees ``ctx.preprocess`` of them):
  ``epsilon_fgsm`` is a fraction of their range, ``[0, 255]`` for uint8 pixels
  (``[0, max]`` of an unsigned dtype) and ``[0, 1]`` for float inputs, the
  range Avalanche clamps to: float inputs are clipped to ``[0, 1]``, so float
  pixels in ``0..255`` must be scaled to ``[0, 1]`` first (signed integer
  inputs are refused). The attack and the target search see the inputs without
  ``ctx.augment``. Differences from Avalanche, each documented in
  ``docs/strategies_rehearsal.md``: the current part of a batch has
  ``ctx.batch_size`` samples (Avalanche's loader takes ``batch_size_mem`` of
  each); the target is the nearest current sample of another class, as the
  paper has it (Avalanche's loop ends on the farthest, and also considers the
  replayed rows); the attack moves down the target's loss, as the paper has it
  (Avalanche's steps up); the attack's gradient is recomputed at each step and
  normalised per sample, as in MI-FGSM (Avalanche takes it once, for the whole
  batch); a memory sample without a current sample of another class is left
  out of the term (Avalanche targets class 0); the features and the attack run
  in evaluation mode; the reported training loss leaves the adversarial term
  out (it enters through the gradient, as MIR's replay does).

  Args:
    batch_size_mem: Memory samples per draw; 0 means the training batch size.
    mem_size: Memory capacity.
    opt_lr: Learning rate of the look-ahead SGD step.
    use_adversarial_replay: Add the adversarial term; False gives replay
      with a reservoir memory (task labels allowed), and the attack's values
      are stored as 0.
    beta_coef: Weight of the adversarial term.
    decay_factor_fgsm: Momentum decay of MI-FGSM (>= 0); stored as 0 when
      ``iter_fgsm <= 2`` (one step reads no momentum).
    epsilon_fgsm: L-inf budget of the perturbation, a fraction of the input
      range.
    iter_fgsm: MI-FGSM takes ``iter_fgsm - 1`` steps (1 takes none, and
      stores ``epsilon_fgsm``, ``decay_factor_fgsm`` and ``opt_lr`` as 0:
      the term's memory samples stay unperturbed).

  Returns:
    The strategy; its ``cl_state`` is a :class:`RarState`.

  Raises:
    ValueError: Bad arguments (hyperparameters that float32 cannot hold
      included); at ``init``, with ``use_adversarial_replay``, a stream with
      task labels, signed integer inputs or a model without penultimate
      features.

  Example:
    >>> rar(batch_size_mem=10, mem_size=500).name
    'rar'
  """
  mem_size = _validation.check_positive_int("mem_size", mem_size)
  batch_size_mem = _check_batch_size_mem(batch_size_mem, mem_size)
  adversarial = _validation.check_bool("use_adversarial_replay",
                                       use_adversarial_replay)
  opt_lr, beta_coef, decay_factor_fgsm, epsilon_fgsm = (
      _validation.check_float32_non_negative(name, value) for name, value in (
          ("opt_lr", opt_lr), ("beta_coef", beta_coef),
          ("decay_factor_fgsm", decay_factor_fgsm),
          ("epsilon_fgsm", epsilon_fgsm)))
  iter_fgsm = _validation.check_positive_int("iter_fgsm", iter_fgsm)
  # A value the configuration does not read is stored as 0 (as La-MAML's
  # lr_alpha without learn_lr), so that fit refuses a sweep over it: the
  # attack's values without the term, the momentum with at most one step
  # (its first step reads none), the step's size and the look-ahead (which
  # only picks the attack's target) with no step at all.
  steps = iter_fgsm - 1 if adversarial else 0
  stored = (opt_lr if steps else 0.0, beta_coef if adversarial else 0.0,
            decay_factor_fgsm if steps > 1 else 0.0,
            epsilon_fgsm if steps else 0.0)

  def init(ctx, params, key):
    if adversarial:
      refuse_task_labels(ctx, "rar attacks memory samples towards current "
                         "classes through one head, as Avalanche's RAR; got "
                         "a stream with task labels (one head per task); "
                         "use_adversarial_replay=False (reservoir replay) "
                         "serves it.")
      _refuse_signed_inputs(ctx.x_dtype)
      output_layer_path(ctx, params, init_model_state(ctx, key))
    return RarState(buffers.for_context(ctx, mem_size, policy="reservoir"),
                    *map(jnp.float32, stored),
                    iter_fgsm=jnp.int32(iter_fgsm if adversarial else 0))

  def transform_batch(ctx, cl_state, batch, key):
    return _with_memory_rows(ctx, cl_state.buffer, batch, key, batch_size_mem)

  def transform_grads(ctx, grads, state, batch, key):
    draw_key, dropout_key = jax.random.split(key)
    cl, b = state.cl_state, ctx.batch_size
    rows = buffers.sample(cl.buffer, draw_key,
                          _memory_rows(ctx, batch_size_mem))
    look_ahead = jax.tree.map(lambda p, g: p - cl.opt_lr * g, state.params,
                              grads)
    features = penultimate_features(
        ctx, look_ahead, state.model_state,
        jnp.concatenate([batch["x"][:b], rows["x"].astype(batch["x"].dtype)]),
        jnp.concatenate([batch["task"][:b], rows["task"]]))
    target, found = nearest_other_class(
        features[b:], rows["y"], features[:b], batch["y"][:b],
        batch["weight"][:b] > 0)
    weight = rows["weight"] * found
    attacked = {**rows, "y": target, "weight": weight}

    def target_loss(x):
      losses = _seen_loss(ctx, state, look_ahead, {**attacked, "x": x})
      return jnp.sum(losses * weight)

    scale = _input_scale(rows["x"].dtype)
    x_adv = mi_fgsm(jax.grad(target_loss), rows["x"],
                    cl.epsilon_fgsm * scale, cl.decay_factor_fgsm,
                    cl.iter_fgsm, high=scale)
    replayed = {**rows, "x": x_adv, "weight": weight}

    def adversarial_loss(params):
      losses = _seen_loss(ctx, state, params, replayed, True, dropout_key)
      return cl.beta_coef * weighted_mean(losses, weight)

    return jax.tree.map(jnp.add, grads,
                        jax.grad(adversarial_loss)(state.params))

  def end_experience(ctx, state, data, key):
    cl_state = state.cl_state
    return state.replace(cl_state=cl_state.replace(
        buffer=buffers.add_experience(cl_state.buffer, key, data)))

  if not adversarial:
    return Strategy(name="rar", init=init, transform_batch=transform_batch,
                    end_experience=end_experience)
  return Strategy(name="rar", init=init, transform_batch=transform_batch,
                  transform_grads=transform_grads,
                  end_experience=end_experience)


# --- Data strategies ---------------------------------------------------------


def _position(experience: Experience, stream: Stream) -> int:
  for i, e in enumerate(stream):
    if e is experience:
      return i
  return experience.index


def _assemble(parts: Sequence[tuple[Experience, np.ndarray | slice]],
              like: Experience) -> Experience:
  """An experience made of rows of other experiences, with ``like``'s metadata."""
  def cat(field, empty):
    arrays = [getattr(e, field)[rows] for e, rows in parts]
    return np.concatenate(arrays) if arrays else empty

  y = cat("y", np.zeros(0, np.int32))
  # Every other field is like's (an online stream's origin among them).
  return dataclasses.replace(
      like, x=cat("x", np.zeros((0, *like.x.shape[1:]), like.x.dtype)),
      y=y, task=cat("task", np.zeros(0, np.int32)),
      classes=tuple(int(c) for c in np.unique(y)))


def cumulative() -> Strategy:
  """Trains on all the data seen so far (Avalanche's ``Cumulative``).

  Experience ``i`` is replaced by the union of experiences ``0..i`` (host
  side, before compiling), so every experience is padded to the whole
  stream's size.

  Example:
    >>> cumulative().name
    'cumulative'
  """
  def adapt_data(experience, stream, seed):
    del seed
    seen = stream[:_position(experience, stream) + 1]
    return _assemble([(e, slice(None)) for e in seen], experience)

  return Strategy(name="cumulative", adapt_data=adapt_data)


def joint() -> Strategy:
  """Trains once on the whole stream (Avalanche's ``JointTraining``).

  The first experience is replaced by the union of all experiences and the
  others by empty experiences (no step is taken), so the accuracy matrix
  shows the jointly trained model from the first row on.

  Example:
    >>> joint().name
    'joint'
  """
  def adapt_data(experience, stream, seed):
    del seed
    everything = _position(experience, stream) == 0
    return _assemble([(e, slice(None)) for e in stream] if everything else [],
                     experience)

  return Strategy(name="joint", adapt_data=adapt_data)


def _reinit_key(ctx, params, key):
  del ctx, params
  return key


def _reinitialise(ctx: StrategyContext, state, data, key):
  """Fresh model parameters, model state and optimizer state.

  The parameters come from ``ctx.model.init`` with the key kept in
  ``cl_state``, so every experience starts from the same weights, as
  Avalanche restores its initial model.
  """
  del data, key
  require_optimizer(ctx, "re-initialising resets the optimizer state")
  # Here, not at the top: jaxcl.training's package imports the strategies.
  from jaxcl.training import optim
  x, task = example_inputs(ctx)
  params, model_state = ctx.model.init(state.cl_state, ctx.preprocess(x), task)
  # A fresh optimizer state that keeps injected hyperparameters: each run of
  # a learning-rate sweep keeps its own rate (ctx.optimizer is the first's).
  return state.replace(params=params, model_state=model_state,
                       opt_state=optim.reset_optimizer_state(
                           ctx.optimizer, state.opt_state, params))


def from_scratch() -> Strategy:
  """Re-initialises the model and optimizer before every experience.

  Avalanche's ``FromScratchTraining``: each experience is learned from the
  same initial weights and a fresh optimizer state.

  Example:
    >>> from_scratch().name
    'from_scratch'
  """
  return Strategy(name="from_scratch", init=_reinit_key,
                  begin_experience=_reinitialise)


class _GreedyMemory:
  """GDumb's greedy class-balanced sampler, replayed over a stream.

  The memory after experience ``i`` is a deterministic function of the
  stream, the seed and ``i``; results are cached for the last stream so that
  an online stream costs one pass over its samples in total.
  """

  def __init__(self, mem_size: int):
    self.mem_size = mem_size
    self._stream = None
    self._seed = None
    self._snapshots = []  # after each experience: (slots, seen, rng state)

  def __call__(self, experience: Experience, stream: Stream,
               seed: int) -> Experience:
    if self._stream is not stream or self._seed != seed:
      self._stream, self._seed, self._snapshots = stream, seed, []
    position = _position(experience, stream)
    while len(self._snapshots) <= position:
      self._snapshots.append(self._fill(len(self._snapshots)))
    slots = np.array(self._snapshots[position][0], np.int64).reshape(-1, 2)
    parts = [(stream[e], slots[slots[:, 0] == e, 1])
             for e in np.unique(slots[:, 0])]
    return _assemble(parts, experience)

  def _fill(self, i: int):
    """Offers experience ``i``'s samples, in a random order, to the memory."""
    if i == 0:
      slots, seen = [], set()
      rng = np.random.default_rng(self._seed)
    else:
      slots, seen, state = self._snapshots[i - 1]
      slots, seen = list(slots), set(seen)
      rng = np.random.default_rng()
      rng.bit_generator.state = state
    labels = self._stream[i].y
    by_class = {c: [] for c in seen}
    for s, (e, j) in enumerate(slots):
      by_class[int(self._stream[e].y[j])].append(s)
    for j in rng.permutation(len(labels)):
      c = int(labels[j])
      members = by_class.setdefault(c, [])
      if len(slots) < self.mem_size:
        members.append(len(slots))
        slots.append((i, int(j)))
      elif len(members) < self.mem_size / len(by_class):
        largest = by_class[max(by_class, key=lambda k: (len(by_class[k]), -k))]
        pick = int(rng.integers(len(largest)))
        slot = largest[pick]
        largest[pick] = largest[-1]
        largest.pop()
        members.append(slot)
        slots[slot] = (i, int(j))
    return slots, set(by_class), rng.bit_generator.state


def gdumb(mem_size: int = 200) -> Strategy:
  """GDumb: greedy class-balanced memory, model retrained from scratch on it.

  Prabhu et al., "GDumb: A Simple Approach that Questions Our Progress in
  Continual Learning", ECCV 2020. Samples arrive one by one (each
  experience in a random order drawn from the run's seed); a sample is
  stored while the memory has room, or, when full, if its class holds fewer
  than ``mem_size / classes seen`` samples, replacing a random sample of the
  largest class. Before every experience the model and the optimizer state
  are re-initialised, and the experience is replaced by the memory (host side,
  ``adapt_data``), so the model only ever trains on the memory.

  Args:
    mem_size: Memory capacity.

  Returns:
    The strategy.

  Example:
    >>> gdumb(mem_size=4400).name
    'gdumb'
  """
  mem_size = _validation.check_positive_int("mem_size", mem_size)
  return Strategy(name="gdumb", init=_reinit_key,
                  adapt_data=_GreedyMemory(mem_size),
                  begin_experience=_reinitialise)


STRATEGIES = {
    "replay": replay,
    "der": der,
    "er_ace": er_ace,
    "er_acl": er_acl,
    "er_aml": er_aml,
    "feature_replay": feature_replay,
    "mir": mir,
    "ser": ser,
    "rar": rar,
    "gdumb": gdumb,
    "cumulative": cumulative,
    "joint": joint,
    "from_scratch": from_scratch,
}
