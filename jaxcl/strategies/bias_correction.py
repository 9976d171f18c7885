"""Bias correction of replay: BiC and IL2M, as Avalanche's plugins.

A class-incremental model trained with replay favours the classes of the
latest experience, whose samples outnumber the memory's; both strategies
correct its outputs after training.

**BiC** (Avalanche's ``BiCPlugin``): Wu et al., "Large Scale Incremental
Learning", CVPR 2019. BiC trains as replay does, with knowledge
distillation from the model of the previous experience, and then fits two
scalars on a held-out, class-balanced validation set: the logits of the
latest experience's classes become ``α·z + β`` (the other logits stay),
which evaluation applies too.

Per experience (``fit`` runs the steps in one compiled program):

1. ``begin_experience``: of each class in the experience, the first
   ``quota`` samples (in the experience's order) are held out for
   validation, where the quota splits ``int(val_percentage · mem_size)``
   evenly over the classes seen so far (the remainder one each to the
   lowest class ids); the validation samples of older classes shrink to the
   new quota (a random subset, kept by random priorities).
2. Each step trains on the experience's other samples plus ``batch_size_mem``
   samples of the experience-balanced memory, with loss
   ``(1 − λ)·CE + λ·KD`` (``λ = old classes / all classes``, or the fixed
   ``lamb``: ``CE + lamb·KD``); ``KD`` is the cross-entropy between the
   softened (``temperature``) outputs of the previous model, with that
   model's bias correction, and of the current one, over the old classes.
3. ``end_experience``: the memory receives the experience's training
   samples; from the second experience on, ``α`` (from 1) and ``β`` (from 0)
   are fitted for ``stage_2_epochs`` epochs of SGD with momentum 0.9 on the
   validation samples (learning rate ``stage_2_lr``, divided by 10 after
   epochs 50, 100 and 150), loss ``CE + 0.1·β²/2``.

Example:
  >>> import optax, jaxcl
  >>> strategy = bic(mem_size=2000, stage_2_epochs=200)
  >>> result = jaxcl.fit(jaxcl.models.MLP(10), strategy, optax.sgd(0.1),
  ...                    jaxcl.benchmarks.split_mnist())  # doctest: +SKIP

**IL2M** (Avalanche's ``IL2MPlugin``, after FACIL): Belouadah and Popescu,
"IL2M: Class Incremental Learning With Dual Memory", ICCV 2019. Training is
replay with an experience-balanced memory; after each experience
``end_experience`` records, from the model's scores on the experience's
training samples and the memory, the mean own-class score of each class
(``init_mean`` for the classes new in the experience, kept from then on;
``current_mean`` for the past classes, on their memory samples and, for a
class the experience brings again, its samples there, recomputed every
experience) and the model's confidence (the mean top-1 score over the new
classes' samples). Evaluation rectifies the past classes' scores of the
samples predicted as a new class (Eq. 1 of the paper)::

  s_c <- s_c · (init_mean[c] / current_mean[c])
             · (confidence[now] / confidence[experience c was learnt in])
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxcl import _validation
from jaxcl.strategies import buffers
from jaxcl.strategies.base import Strategy, StrategyContext
from jaxcl.strategies.model_utils import (in_chunks, init_model_state,
                                          mask_logits, refuse_online_streams,
                                          refuse_task_labels, weighted_mean)
from jaxcl.strategies.rehearsal import _check_batch_size_mem, replay

__all__ = ["BicState", "Il2mState", "bias_correct", "bic", "il2m",
           "il2m_rectify"]

# Avalanche's stage-2 schedule: MultiStepLR(milestones=[50, 100, 150], 0.1).
_MILESTONES = (50, 100, 150)
_BETA_DECAY = 0.1  # The L2 weight on β in stage 2 (Avalanche's, the paper's).
_MOMENTUM = 0.9


@flax.struct.dataclass
class BicState:
  """State of :func:`bic`.

  Attributes:
    memory: Experience-balanced replay memory.
    validation: Class-balanced held-out samples for the bias correction.
    held_out: ``bool[experience_size]``, the current experience's rows held
      out for validation.
    teacher_params: The model after the previous experience (its outputs
      corrected by ``alpha``, ``beta`` on ``corrected``).
    teacher_model_state: Its model state.
    has_teacher: Whether an experience was trained before.
    old_classes: Classes of earlier experiences, not of the current one.
    trained_classes: Classes trained so far (after the last experience).
    distill_weight: ``λ`` of the current experience.
    lamb: The ``lamb`` setting (−1: ``old / all`` classes).
    temperature: Distillation temperature.
    stage_2_lr: Learning rate of the bias correction.
    alpha: Scale of the corrected logits.
    beta: Shift of the corrected logits.
    corrected: ``bool[n_classes]``, the classes ``α``, ``β`` apply to (the
      latest experience's; none before the second experience ends).
  """

  memory: buffers.Buffer
  validation: buffers.Buffer
  held_out: jax.Array
  teacher_params: Any
  teacher_model_state: Any
  has_teacher: jax.Array
  old_classes: jax.Array
  trained_classes: jax.Array
  distill_weight: jax.Array
  lamb: jax.Array
  temperature: jax.Array
  stage_2_lr: jax.Array
  alpha: jax.Array
  beta: jax.Array
  corrected: jax.Array


def bias_correct(logits: jax.Array, alpha: jax.Array, beta: jax.Array,
                 classes: jax.Array) -> jax.Array:
  """``α·z + β`` on the logits of ``classes``; the others unchanged.

  Example:
    >>> import jax.numpy as jnp
    >>> bias_correct(jnp.array([[1.0, 2.0]]), 2.0, 0.5,
    ...              jnp.array([False, True])).tolist()
    [[1.0, 4.5]]
  """
  return jnp.where(classes, alpha * logits + beta, logits)


def _held_out_rows(validation: buffers.Buffer, data) -> jax.Array:
  """The first ``quota`` rows of each class, the quota counting the
  experience's classes as seen (Avalanche's ``get_group_lengths``)."""
  valid = data.valid
  one_hot = jax.nn.one_hot(data.y, validation.n_groups, dtype=jnp.int32)
  one_hot = one_hot * valid[:, None]
  rank = jnp.sum((jnp.cumsum(one_hot, 0) - one_hot) * one_hot, -1)
  present = jnp.sum(one_hot, 0)
  quota = buffers.quotas(validation.replace(
      group_seen=validation.group_seen + present))
  return valid & (rank < quota[data.y])


def _stage_2(ctx: StrategyContext, cl: BicState, logits: jax.Array,
             labels: jax.Array, weight: jax.Array, classes: jax.Array,
             epochs: int, key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Fits ``(α, β)`` on fixed validation logits: SGD with momentum."""
  rows = logits.shape[0]
  batch = min(ctx.batch_size, rows)
  steps = -(-rows // batch)

  def loss(ab, idx, real):
    corrected = bias_correct(logits[idx], ab[0], ab[1], classes)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(corrected),
                              labels[idx][:, None], -1)[:, 0]
    # The last batch is short: its padding repeats slot 0 with weight 0.
    return (weighted_mean(ce, weight[idx] * real)
            + _BETA_DECAY * ab[1] ** 2 / 2)

  def epoch(carry, inputs):
    epoch_key, index = inputs
    lr = cl.stage_2_lr * 0.1 ** sum(index >= m for m in _MILESTONES)
    # Held-out samples first, in a random order; padding slots last.
    rank = jnp.where(weight > 0, jax.random.uniform(epoch_key, (rows,)), 2.0)
    order = jnp.pad(jnp.argsort(rank), (0, steps * batch - rows))
    real = jnp.arange(steps * batch) < jnp.sum(weight > 0)

    def step(carry, inputs):
      ab, velocity = carry
      idx, mask = inputs
      grad = jax.grad(loss)(ab, idx, mask)
      moved = jnp.any(mask)  # An empty batch is no step (no momentum).
      velocity = jnp.where(moved, _MOMENTUM * velocity + grad, velocity)
      return (jnp.where(moved, ab - lr * velocity, ab), velocity), None

    return jax.lax.scan(step, carry, (order.reshape(steps, batch),
                                      real.reshape(steps, batch)))[0], None

  start = (jnp.array([1.0, 0.0]), jnp.zeros(2))
  (ab, _), _ = jax.lax.scan(epoch, start, (jax.random.split(key, epochs),
                                           jnp.arange(epochs)))
  return ab[0], ab[1]


# Why bic refuses online streams, and what to use instead.
_BIC_ONLINE_REFUSAL = (
    "bic holds out a validation quota of every class from each experience "
    "(Avalanche's BiCPlugin splits every experience too): a "
    "mini-experience's few samples would mostly or all go to validation, "
    "leaving little or nothing to train on or to store",
    "replay(storage='class_balanced') or er_ace for online training")


def bic(mem_size: int = 2000, batch_size_mem: int = 0,
        val_percentage: float = 0.1, temperature: float = 2.0,
        stage_2_epochs: int = 200, lamb: float = -1.0,
        stage_2_lr: float = 0.1) -> Strategy:
  """Bias Correction (Avalanche's ``BiCPlugin``; see the module docstring).

  Differences from Avalanche, documented in ``docs/strategies_rehearsal.md``:
  the distillation normalises the softened outputs over the classes (as the
  paper and FACIL do; Avalanche's softmax runs over the batch) and uses
  ``temperature`` (Avalanche's is fixed at 2); held-out samples stay in the
  experience with weight 0, so an epoch has as many steps as without
  holding out; the correction is fitted on the held-out samples without
  augmentation. In a chain, put ``bic`` after strategies that rewrite the
  output layer at the end of an experience (CWR*, AR1): its teacher and
  correction are taken at its own ``end_experience``.

  Args:
    mem_size: Replay memory capacity (Avalanche's default 2000).
    batch_size_mem: Memory samples per step; 0 means the training batch
      size (Avalanche's ``None``).
    val_percentage: Share of ``mem_size`` held out for validation (in
      (0, 1]); ``int(val_percentage · mem_size)`` samples.
    temperature: Distillation temperature (> 0).
    stage_2_epochs: Epochs of the bias correction (≥ 0).
    lamb: Distillation weight; −1 uses ``old / all`` classes and weighs the
      cross-entropy by ``1 − λ``.
    stage_2_lr: Learning rate of the bias correction (> 0).

  Returns:
    The strategy; its ``cl_state`` is a :class:`BicState`.

  Raises:
    ValueError: Bad arguments; a stream with task labels (``init``); the
      experience streamed from the host (the held-out rows are positions in
      the whole experience); an online stream (``adapt_data``, before
      compiling).

  Example:
    >>> bic(mem_size=2000, val_percentage=0.1).name
    'bic'
  """
  mem_size = _validation.check_positive_int("mem_size", mem_size)
  batch_size_mem = _check_batch_size_mem(batch_size_mem, mem_size)
  val_percentage = _validation.check_in_range(
      "val_percentage", val_percentage, low=0.0, high=1.0,
      low_inclusive=False)
  val_size = int(val_percentage * mem_size)
  if val_size < 1:
    raise ValueError(f"val_percentage={val_percentage} of mem_size={mem_size}"
                     f" holds no validation sample; expected "
                     f"val_percentage * mem_size >= 1.")
  temperature = _validation.check_float32_positive("temperature", temperature)
  stage_2_epochs = _validation.check_non_negative_int("stage_2_epochs",
                                                      stage_2_epochs)
  lamb = _validation.check_in_range(
      "lamb", lamb, low=-1.0, high=float(np.finfo(np.float32).max))
  if -1.0 < lamb < 0.0:
    raise ValueError(f"lamb must be -1 (old / all classes) or >= 0, got "
                     f"{lamb!r}.")
  stage_2_lr = _validation.check_float32_positive("stage_2_lr", stage_2_lr)

  def init(ctx, params, key):
    refuse_task_labels(ctx, "bic corrects the bias of one class-incremental "
                       "head, as Avalanche's BiCPlugin; got a stream with "
                       "task labels (one head per task).")
    model_state = init_model_state(ctx, key)
    no_classes = jnp.zeros(ctx.n_classes, bool)
    return BicState(
        memory=buffers.for_context(ctx, mem_size,
                                   policy="experience_balanced"),
        validation=buffers.for_context(ctx, val_size,
                                       policy="class_balanced"),
        held_out=jnp.zeros(ctx.experience_size, bool),
        teacher_params=params, teacher_model_state=model_state,
        has_teacher=jnp.zeros((), bool),
        old_classes=no_classes, trained_classes=no_classes,
        distill_weight=jnp.float32(0.0), lamb=jnp.float32(lamb),
        temperature=jnp.float32(temperature),
        stage_2_lr=jnp.float32(stage_2_lr), alpha=jnp.float32(1.0),
        beta=jnp.float32(0.0), corrected=no_classes)

  def begin_experience(ctx, state, data, key):
    if data.x.shape[0] != ctx.experience_size:
      raise ValueError(
          "bic holds out validation samples by their position in the "
          "experience, so it needs the whole experience on the device; it "
          "cannot run on experiences streamed from the host (raise "
          "device_memory_budget_mb, or leave it unset).")
    cl = state.cl_state
    held_out = _held_out_rows(cl.validation, data)
    validation = buffers.add(cl.validation, key, data.x, data.y, data.task,
                             valid=held_out, experience=data.index)
    old = cl.trained_classes & ~data.classes_mask
    n_all = jnp.sum(old | data.classes_mask)
    auto = jnp.sum(old) / jnp.maximum(n_all, 1)
    return state.replace(cl_state=cl.replace(
        validation=validation, held_out=held_out, old_classes=old,
        distill_weight=jnp.where(cl.lamb < 0, auto, cl.lamb)))

  def transform_batch(ctx, cl, batch, key):
    if "index" not in batch:
      raise ValueError("bic needs each batch's 'index' (the rows' positions "
                       "in the experience), which fit's training loops give; "
                       "a custom loop must add it.")
    n = ctx.batch_size
    current = jnp.arange(batch["y"].shape[0]) < n
    held = current & cl.held_out[jnp.clip(batch["index"], 0,
                                          ctx.experience_size - 1)]
    batch = {**batch, "weight": jnp.where(held, 0.0, batch["weight"])}
    rows = buffers.sample(cl.memory, key, batch_size_mem or n)
    return buffers.concat_batches(batch, rows)

  def penalty(ctx, params, cl, batch, logits):
    del params
    weight = batch["weight"]
    teacher = bias_correct(
        ctx.logits(cl.teacher_params, cl.teacher_model_state, batch["x"],
                   batch["task"]),
        cl.alpha, cl.beta, cl.corrected)

    def soft(z):
      # A finite stand-in for -inf keeps the gradient finite without old
      # classes (the term is then masked out).
      return jax.nn.log_softmax(
          jnp.where(cl.old_classes, z / cl.temperature, -1e30), -1)

    log_p, log_q = soft(teacher), soft(logits)
    kd = -jnp.sum(jnp.where(cl.old_classes, jnp.exp(log_p) * log_q, 0.0), -1)
    kd = weighted_mean(kd, weight)
    ce = weighted_mean(ctx.loss(logits, batch), weight)
    lam = cl.distill_weight
    # The loop adds the penalty to the cross-entropy: λ(KD − CE) makes the
    # total (1 − λ)·CE + λ·KD; a fixed lamb adds lamb·KD.
    term = jnp.where(cl.lamb < 0, lam * (kd - ce), lam * kd)
    return jnp.where(cl.has_teacher & jnp.any(cl.old_classes), term, 0.0)

  def end_experience(ctx, state, data, key):
    memory_key, stage_2_key = jax.random.split(key)
    cl = state.cl_state
    trained = data.valid & ~cl.held_out
    memory = buffers.add(cl.memory, memory_key, data.x, data.y, data.task,
                         valid=trained, experience=data.index)
    # The classes the experience trained on (Avalanche's bias layer covers
    # the adapted dataset's): not one whose every sample was held out.
    classes = data.classes_mask & (jnp.zeros_like(data.classes_mask).at[
        data.y].max(trained))
    validation = buffers.as_batch(cl.validation)
    logits = mask_logits(
        ctx, ctx.logits(state.params, state.model_state, validation["x"],
                        validation["task"]),
        state.seen_classes, validation["task"])
    alpha, beta = _stage_2(ctx, cl, logits, validation["y"],
                           validation["weight"], classes,
                           stage_2_epochs, stage_2_key)
    # Avalanche corrects from the second trained experience on.
    correct = cl.has_teacher
    alpha = jnp.where(correct, alpha, 1.0)
    beta = jnp.where(correct, beta, 0.0)
    corrected = classes & correct
    return state.replace(cl_state=cl.replace(
        memory=memory, teacher_params=state.params,
        teacher_model_state=state.model_state,
        has_teacher=jnp.ones((), bool), trained_classes=state.seen_classes,
        alpha=alpha, beta=beta, corrected=corrected))

  def predict(ctx, params, model_state, cl, x, task):
    return bias_correct(ctx.logits(params, model_state, x, task), cl.alpha,
                        cl.beta, cl.corrected)

  return Strategy(name="bic", init=init,
                  adapt_data=refuse_online_streams(*_BIC_ONLINE_REFUSAL),
                  begin_experience=begin_experience,
                  transform_batch=transform_batch, penalty=penalty,
                  end_experience=end_experience, predict=predict,
                  drops_current_rows=True)


@flax.struct.dataclass
class Il2mState:
  """State of :func:`il2m` (per-class arrays are ``[n_classes]``).

  Attributes:
    memory: Experience-balanced replay memory.
    seen: Classes the model predicts (the loop's seen classes, set at each
      experience's start): with ``mask_unseen_classes`` on (the default),
      the others are masked and the top-1 class is among these.
    trained: Classes trained up to the last experience that ended.
    new_classes: Classes first learnt in the last experience that ended:
      the samples predicted as one of them are rectified.
    init_mean: Mean own-class score of each class on its samples, taken at
      the end of the experience it was learnt in (meaningful where
      ``init_count > 0``).
    init_count: The number of samples ``init_mean`` averaged (0: the class
      has no learning-time statistics and is never rectified).
    current_mean: Mean own-class score of each past class at the end of
      the last experience, over its memory samples and, for a class the
      experience brought again, the experience's samples of it (meaningful
      where ``current_count > 0``).
    current_count: The number of samples ``current_mean`` averaged (0 for
      the classes that are not past or had no sample).
    learnt_in: Index of the experience each class was learnt in (−1: not
      yet).
    class_confidence: The model's confidence at the end of the experience
      each class was learnt in (it had samples where ``init_count > 0``).
    confidence: The model's confidence at the end of the last experience:
      the mean top-1 score over the samples of its new classes.
    confidence_count: The number of samples ``confidence`` averaged (0:
      nothing is rectified).
  """

  memory: buffers.Buffer
  seen: jax.Array
  trained: jax.Array
  new_classes: jax.Array
  init_mean: jax.Array
  init_count: jax.Array
  current_mean: jax.Array
  current_count: jax.Array
  learnt_in: jax.Array
  class_confidence: jax.Array
  confidence: jax.Array
  confidence_count: jax.Array


def il2m_rectify(scores: jax.Array, cl: Il2mState) -> jax.Array:
  """IL2M's rectification (Eq. 1 of the paper) of a batch of scores.

  For each row whose top-1 class is one of ``cl.new_classes``, the score of
  every past class ``c`` (trained before the last experience) is multiplied
  by ``(init_mean[c] / current_mean[c]) · (confidence /
  class_confidence[c])``. A class is rectified only with statistics behind
  every term: learning-time ones (``init_count[c] > 0``), current ones
  (``current_count[c] > 0``: a memory sample or a sample of the last
  experience) and a current confidence (``confidence_count > 0``: the last
  experience brought a new class, with samples); a zero denominator also
  keeps the score (Avalanche skips a zero current mean). Other rows and
  classes are unchanged; masked classes are never past classes.

  Args:
    scores: ``[batch, n_classes]`` scores, never-seen classes masked.
    cl: The statistics.

  Returns:
    The rectified scores.

  Example:
    >>> il2m_rectify(scores, state.cl_state)  # doctest: +SKIP
  """
  past = cl.trained & ~cl.new_classes
  usable = (past & (cl.init_count > 0) & (cl.current_count > 0)
            & (cl.confidence_count > 0) & (cl.current_mean != 0)
            & (cl.class_confidence != 0))
  factor = jnp.where(
      usable, (cl.init_mean / jnp.where(usable, cl.current_mean, 1.0))
      * (cl.confidence / jnp.where(usable, cl.class_confidence, 1.0)), 1.0)
  rectified = cl.new_classes[jnp.argmax(scores, -1)]
  return jnp.where(rectified[:, None], scores * factor, scores)


def _own_class_means(scores: jax.Array, y: jax.Array, real: jax.Array,
                     n_classes: int) -> tuple[jax.Array, jax.Array]:
  """Per class, the mean score of the class on its real rows (0 without)
  and the number of those rows."""
  one_hot = jax.nn.one_hot(y, n_classes) * real[:, None]
  own = jnp.take_along_axis(scores, y[:, None], -1)
  counts = jnp.sum(one_hot, 0)
  return (jnp.sum(one_hot * own, 0) / jnp.maximum(counts, 1.0),
          counts.astype(jnp.int32))


def il2m(mem_size: int = 2000, batch_size_mem: int = 0) -> Strategy:
  """IL2M (Avalanche's ``IL2MPlugin``; see the module docstring).

  Replay (:func:`jaxcl.strategies.replay`'s hooks, experience-balanced
  memory) plus, after each experience, the statistics of every class over
  the experience's training samples and the memory (each row once, in
  evaluation mode, before the memory takes the experience), and at
  evaluation the rectification of :func:`il2m_rectify`. Differences from
  Avalanche, documented in ``docs/strategies_rehearsal.md``: the new and
  past classes of the rectification are those of the last trained
  experience (the paper's and FACIL's; Avalanche takes them from the
  evaluated experience); the statistics cover each memory row once
  (FACIL's; Avalanche's replay loader draws ``batch_size_mem`` memory rows
  per batch); with ``mask_unseen_classes`` on (the default) the top-1
  class is taken among the seen classes. The scores are the logits, as
  Avalanche's and FACIL's.

  IL2M is a class-incremental method: the rectification needs classes
  first seen in the last trained experience. Where that experience brings
  none (new instances, domain-incremental streams) nothing is rectified
  and IL2M evaluates as replay; online streams (``split_online``), whose
  last mini-experience brings none, are refused. In a
  :func:`jaxcl.strategies.chain`, put it after the strategies that change
  the parameters at the end of an experience (``chain(cwr_star(),
  il2m())``): its statistics read the parameters its ``end_experience`` is
  given.

  Args:
    mem_size: Replay memory capacity (Avalanche's default 2000).
    batch_size_mem: Memory samples per step; 0 means the training batch
      size (Avalanche's ``None``).

  Returns:
    The strategy; its ``cl_state`` is an :class:`Il2mState`.

  Raises:
    ValueError: Bad arguments; a stream with task labels (``init``); an
      online stream (``adapt_data``, before compiling).

  Example:
    >>> il2m(mem_size=2000).name
    'il2m'
  """
  memory = replay(mem_size, batch_size_mem)

  adapt_data = refuse_online_streams(
      "il2m rectifies the classes first seen in the last trained experience, "
      "with statistics taken at its end (a class-incremental method; "
      "Avalanche's IL2MPlugin is not meant for online streams either): after "
      "the last mini-experience of an experience no class is new and nothing "
      "would be rectified",
      "replay(storage='class_balanced') for online training")

  def init(ctx, params, key):
    refuse_task_labels(ctx, "il2m rectifies the scores of one "
                       "class-incremental head, as Avalanche's IL2MPlugin; "
                       "got a stream with task labels (one head per task).")
    none = jnp.zeros(ctx.n_classes, bool)
    zeros = jnp.zeros(ctx.n_classes, jnp.float32)
    no_rows = jnp.zeros(ctx.n_classes, jnp.int32)
    return Il2mState(
        memory=memory.init(ctx, params, key), seen=none, trained=none,
        new_classes=none, init_mean=zeros, init_count=no_rows,
        current_mean=zeros, current_count=no_rows,
        learnt_in=jnp.full(ctx.n_classes, -1, jnp.int32),
        class_confidence=zeros, confidence=jnp.float32(0.0),
        confidence_count=jnp.int32(0))

  def begin_experience(ctx, state, data, key):
    del ctx, data, key
    return state.replace(cl_state=state.cl_state.replace(
        seen=state.seen_classes))

  def transform_batch(ctx, cl, batch, key):
    return memory.transform_batch(ctx, cl.memory, batch, key)

  def end_experience(ctx, state, data, key):
    cl = state.cl_state

    def score(x, task):
      logits = ctx.logits(state.params, state.model_state, x, task)
      return mask_logits(ctx, logits, state.seen_classes, task)

    rows = buffers.as_batch(cl.memory)
    s = jnp.concatenate([in_chunks(score, data.x, data.task),
                         in_chunks(score, rows["x"], rows["task"])])
    y = jnp.concatenate([data.y, rows["y"]]).astype(jnp.int32)
    real = jnp.concatenate([data.valid, rows["weight"] > 0])
    means, counts = _own_class_means(s, y, real, ctx.n_classes)
    past = cl.trained
    new = data.classes_mask & ~past
    of_new = real & new[y]
    confidence = weighted_mean(jnp.max(s, -1), of_new)
    stored = memory.end_experience(ctx, state.replace(cl_state=cl.memory),
                                   data, key).cl_state
    return state.replace(cl_state=cl.replace(
        memory=stored, trained=past | new, new_classes=new,
        init_mean=jnp.where(new, means, cl.init_mean),
        init_count=jnp.where(new, counts, cl.init_count),
        current_mean=jnp.where(past, means, 0.0),
        current_count=jnp.where(past, counts, 0),
        learnt_in=jnp.where(new, data.index, cl.learnt_in),
        class_confidence=jnp.where(new, confidence, cl.class_confidence),
        confidence=confidence,
        confidence_count=jnp.sum(of_new).astype(jnp.int32)))

  def predict(ctx, params, model_state, cl, x, task):
    logits = mask_logits(ctx, ctx.logits(params, model_state, x, task),
                         cl.seen, task)
    return il2m_rectify(logits, cl)

  return Strategy(name="il2m", init=init, adapt_data=adapt_data,
                  begin_experience=begin_experience,
                  transform_batch=transform_batch,
                  end_experience=end_experience, predict=predict)


STRATEGIES = {"bic": bic, "il2m": il2m}
