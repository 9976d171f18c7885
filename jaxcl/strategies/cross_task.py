"""GSA: Gradient Self-Adaptation (Guo, Liu and Zhao, CVPR 2023).

"Dealing with Cross-Task Class Discrimination in Online Continual
Learning", as Avalanche's ``GSA`` strategy
(``avalanche/training/supervised/gsa.py``). Training on a new task pushes
the logits of the old tasks' classes down (negative gradients) far more
than replay pushes them up; GSA measures, per class, how much of each
kind it has received and re-weights the replayed cross-entropy to balance
them. The loss has two parts:

* ``loss_p``: the cross-entropy over the current task's classes only, on
  the current batch and some memory samples of the current task, each
  twice (an augmented view and a flipped one), both augmented once more;
* ``loss_n``: the cross-entropy over every class seen, on a mixed batch of
  memory samples of earlier tasks and current samples, each twice, whose
  one-hot targets are scaled per class by ``2 / (1 + exp(1 - ANT_c))``,
  with ``ANT_c = (count_c - pos_c) / neg_c`` from running sums of the
  softmax probabilities on those batches;

and the loss is ``2·loss_n + loss_p``.

Example:
  >>> import optax, jaxcl
  >>> strategy = gsa(mem_size=200, batch_size_mem=64, batch_size_mem_cur=22)
  >>> strategy.name
  'gsa'
  >>> result = jaxcl.fit(jaxcl.models.MLP(10), strategy, optax.sgd(0.1),
  ...                    jaxcl.benchmarks.split_mnist())  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from jaxcl import _validation
from jaxcl.benchmarks import augment
from jaxcl.strategies import buffers
from jaxcl.strategies.base import Strategy, StrategyContext
from jaxcl.strategies.model_utils import (init_model_state, own_class_mask,
                                          refuse_task_labels, weighted_mean)

__all__ = ["GsaState", "gsa", "gsa_cross_entropy"]

PyTree = Any

EPS = 1e-5
"""Added to the probabilities before their log (Avalanche's
``cross_entropy_with_oh_targets``): it bounds the gradient of a
saturated probability."""

WARMUP_STEPS = 5
"""Steps of each task during which every class's ANT is 1 (Avalanche:
the task's first 5 mini-experiences)."""

NEGATIVE_WEIGHT = 2.0
"""Weight of ``loss_n`` against ``loss_p`` (Avalanche's
``2 * loss_n + 1 * loss_p``)."""

_TAG = "gsa_task"

# Avalanche's aug_trans: RandomGrayscale(p=0.2), then RandomResizedCrop of
# the image's size with scale (0.6, 1.0).
_augment = augment.compose(augment.random_grayscale(0.2),
                           augment.random_resized_crop(scale=(0.6, 1.0)))


@flax.struct.dataclass
class GsaState:
  """State of :func:`gsa`.

  Attributes:
    buffer: Reservoir memory; ``buffer.extras["gsa_task"]`` is each
      sample's task (the count of tasks before it).
    seen: ``bool[n_classes]``, the classes seen so far.
    current: ``bool[n_classes]``, the classes of the current task.
    task: The current task's number (0 for the first; -1 before it).
    origin: The original experience the current task is (-1 before it).
    task_steps: Steps trained since the current task began.
    count: ``[n_classes]`` rows of each class in the mixed batches so far.
    positive: ``[n_classes]`` sum, over those rows, of the probability of
      their own class.
    negative: ``[n_classes]`` sum, over the rows of other classes, of the
      probability given to the class.
    model_state: The current model's state, for the loss's forward passes.
    key: Raw key data (``jax.random.key_data``) of the next step's memory
      draws, augmentations and dropout; the loss hook gets no key of its
      own.
  """

  buffer: buffers.Buffer
  seen: jax.Array
  current: jax.Array
  task: jax.Array
  origin: jax.Array
  task_steps: jax.Array
  count: jax.Array
  positive: jax.Array
  negative: jax.Array
  model_state: Any
  key: jax.Array


def gsa_cross_entropy(logits: jax.Array, targets: jax.Array,
                      classes: jax.Array, weight: jax.Array) -> jax.Array:
  """Soft-target cross-entropy over some classes, with Avalanche's ``eps``.

  ``mean_i −Σ_{c ∈ classes} t_ic · log(softmax_classes(z_i)_c + 1e-5)``:
  the softmax runs over ``classes`` only, and the mean over the rows of
  positive ``weight``. Targets need not sum to 1 (GSA scales them).

  Args:
    logits: ``[n, n_classes]``.
    targets: ``[n, n_classes]``; entries outside ``classes`` are ignored.
    classes: ``bool[n_classes]``, at least one True.
    weight: ``[n]``, 0 for rows left out.

  Returns:
    The mean (0 without a row).

  Example:
    >>> import jax.numpy as jnp
    >>> round(float(gsa_cross_entropy(
    ...     jnp.zeros((1, 3)), jnp.array([[1.0, 0.0, 1.0]]),
    ...     jnp.array([True, True, False]), jnp.ones(1))), 4)
    0.6931
  """
  logits = jnp.where(classes, logits.astype(jnp.float32), -jnp.inf)
  probs = jax.nn.softmax(logits, axis=-1)
  ce = -jnp.sum(jnp.where(classes, targets * jnp.log(probs + EPS), 0.0), -1)
  return weighted_mean(ce, weight)


def _double(x: jax.Array, key: jax.Array) -> jax.Array:
  """Avalanche's ``random_flip``: the augmented rows, then the rows
  flipped left-right (``[2n, H, W, C]``)."""
  return jnp.concatenate([_augment(x, key), x[:, :, ::-1]])


class _Keys(NamedTuple):
  current: jax.Array
  previous: jax.Array
  double_p: jax.Array
  augment_p: jax.Array
  dropout_p: jax.Array
  double_n: jax.Array
  dropout_n: jax.Array


class _Rows(NamedTuple):
  """The step's rows: ``x_cur`` (the current batch, then the current
  task's memory draw) and the mixed batch (the earlier tasks' memory draw,
  then ``x_cur``), each with labels and a 0/1 weight."""

  x_cur: jax.Array
  y_cur: jax.Array
  w_cur: jax.Array
  x_mix: jax.Array
  y_mix: jax.Array
  w_mix: jax.Array


def _draw(ctx: StrategyContext, cl: GsaState, batch: dict, keys: _Keys,
          batch_size_mem: int, batch_size_mem_cur: int) -> _Rows:
  tag = cl.buffer.extras[_TAG]
  own = slice(0, ctx.batch_size)
  cur_mem = buffers.sample(cl.buffer, keys.current, batch_size_mem_cur,
                           where=tag == cl.task)
  prev_mem = buffers.sample(cl.buffer, keys.previous, batch_size_mem,
                            where=tag < cl.task)
  x_cur = jnp.concatenate([batch["x"][own], cur_mem["x"]])
  y_cur = jnp.concatenate([batch["y"][own], cur_mem["y"]])
  w_cur = jnp.concatenate([batch["weight"][own] > 0, cur_mem["weight"] > 0])
  # rate = |current classes| / |seen classes|; the mixed batch takes
  # int(B·(1 − rate)) earlier rows and int(B·rate) current ones, here in
  # integers (Avalanche's floats can round an exact product down).
  n_seen = jnp.maximum(jnp.sum(cl.seen), 1)
  n_cur = jnp.sum(cl.current)
  n_prev_rows = batch_size_mem * (n_seen - n_cur) // n_seen
  n_cur_rows = batch_size_mem * n_cur // n_seen
  # Draws put the stored rows first; x_cur's rows count in order.
  w_prev = (prev_mem["weight"] > 0) & (
      jnp.arange(batch_size_mem) < n_prev_rows)
  w_cur_mix = w_cur & (jnp.cumsum(w_cur) <= n_cur_rows)
  return _Rows(
      x_cur, y_cur, w_cur.astype(jnp.float32),
      jnp.concatenate([prev_mem["x"], x_cur]),
      jnp.concatenate([prev_mem["y"], y_cur]),
      jnp.concatenate([w_prev, w_cur_mix]).astype(jnp.float32))


def _mixed_logits(ctx: StrategyContext, params: PyTree, cl: GsaState,
                  rows: _Rows, keys: _Keys) -> jax.Array:
  """The model's outputs on the doubled mixed batch (training mode)."""
  x = _double(rows.x_mix, keys.double_n)
  return ctx.logits(params, cl.model_state, x,
                    jnp.zeros(x.shape[0], jnp.int32), train=True,
                    key=keys.dropout_n,
                    weight=jnp.tile(rows.w_mix, 2)).astype(jnp.float32)


def _statistics(ctx: StrategyContext, cl: GsaState, logits: jax.Array,
                rows: _Rows) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(count, positive, negative)`` after this step's mixed batch (with
  memory): its rows' softmax over every output, without gradient."""
  probs = jax.lax.stop_gradient(jax.nn.softmax(logits, axis=-1))
  weight = jnp.tile(rows.w_mix, 2)[:, None]
  own = jax.nn.one_hot(jnp.tile(rows.y_mix, 2), ctx.n_classes) * weight
  on = buffers.size(cl.buffer) > 0
  return (cl.count + on * jnp.sum(own, 0),
          cl.positive + on * jnp.sum(own * probs, 0),
          cl.negative + on * jnp.sum((weight - own) * probs, 0))


def _keys(cl: GsaState) -> _Keys:
  return _Keys(*jax.random.split(jax.random.wrap_key_data(cl.key),
                                 len(_Keys._fields)))


def _loss(ctx: StrategyContext, params: PyTree, cl: GsaState, batch: dict,
          batch_size_mem: int, batch_size_mem_cur: int) -> jax.Array:
  """``loss_p`` alone while the memory is empty, else ``2·loss_n +
  loss_p``."""
  keys = _keys(cl)
  rows = _draw(ctx, cl, batch, keys, batch_size_mem, batch_size_mem_cur)
  views = _augment(_double(rows.x_cur, keys.double_p), keys.augment_p)
  w_cur = jnp.tile(rows.w_cur, 2)
  logits_p = ctx.logits(params, cl.model_state, views,
                        jnp.zeros(views.shape[0], jnp.int32), train=True,
                        key=keys.dropout_p, weight=w_cur)
  y_cur = jax.nn.one_hot(jnp.tile(rows.y_cur, 2), ctx.n_classes)
  loss_p = gsa_cross_entropy(logits_p, y_cur, cl.current, w_cur)

  logits_n = _mixed_logits(ctx, params, cl, rows, keys)
  count, positive, negative = _statistics(ctx, cl, logits_n, rows)
  # ANT is indexed by class id (Avalanche reads it by position among the
  # seen classes); a class never given probability by another's rows
  # keeps 1.
  ant = jnp.where((cl.task_steps < WARMUP_STEPS) | (negative <= 0), 1.0,
                  (count - positive) / jnp.where(negative > 0, negative, 1.0))
  scale = 2.0 / (1.0 + jnp.exp(1.0 - ant))
  y_mix = jnp.tile(rows.y_mix, 2)
  targets = jax.nn.one_hot(y_mix, ctx.n_classes) * scale[y_mix][:, None]
  loss_n = gsa_cross_entropy(logits_n, targets, cl.seen,
                             jnp.tile(rows.w_mix, 2))
  return loss_p + jnp.where(buffers.size(cl.buffer) > 0,
                            NEGATIVE_WEIGHT * loss_n, 0.0)


def gsa(mem_size: int = 200, batch_size_mem: int = 64,
        batch_size_mem_cur: int = 22) -> Strategy:
  """Gradient Self-Adaptation (Avalanche's ``GSA``).

  * **Tasks.** A task is an original experience, Avalanche's boundary
    (``is_first_subexp``): every experience of an offline stream; on an
    online stream, the mini-experiences cut from one original experience
    (``ExperienceData.origin_experience``), whatever their size. Its
    classes are those of its mini-experiences so far.
  * **Memory.** A reservoir of ``mem_size`` samples (Avalanche's
    ``ReservoirSamplingBuffer``), offered each experience after training
    on it; each sample keeps the number of its task.
  * **Loss.** ``loss_p`` (:func:`gsa_cross_entropy` over the current
    task's classes) on ``x_cur`` = the current batch and up to
    ``batch_size_mem_cur`` memory samples of the current task, as
    ``aug(double(x_cur))``, where ``double(x) = [aug(x); hflip(x)]`` and
    ``aug`` is a random grayscale (p = 0.2) then a random resized crop
    (area 0.6 to 1). While the memory holds a sample, ``2·loss_n`` is
    added: with ``rate = |current classes| / |seen classes|``, the mixed
    batch is ``int(B·(1 − rate))`` samples drawn from the memory of
    earlier tasks and the first ``int(B·rate)`` rows of ``x_cur``
    (``B = batch_size_mem``), as ``double(mixed)``; its rows add to
    running per-class sums of the softmax (over every output) of their
    own class (``pos_c``), of the other rows' probability of the class
    (``neg_c``) and of their number (``count_c``); targets are one-hot
    scaled by ``2 / (1 + exp(1 − ANT_y))``, ``ANT_c = (count_c − pos_c) /
    neg_c`` (1 during the first 5 steps of each task), and ``loss_n`` is
    :func:`gsa_cross_entropy` over the seen classes. The loop's
    cross-entropy is zeroed on the current rows (their class mask keeps
    their own class): ``fit``'s training loss is GSA's.

  Differences from Avalanche, documented in ``docs/strategies_rehearsal.md``:
  tasks are the class-tracked ones above, not task labels (Avalanche tags
  memory samples with their task label, 0 for every sample of a
  class-incremental stream, where it then draws no earlier-task sample);
  ANT is indexed by class id; ``loss_n`` takes one softmax of the logits
  (Avalanche's applies ``cross_entropy_with_oh_targets`` to
  probabilities: a second softmax); the running sums are never reset;
  the warm-up counts steps, not mini-experiences; each image draws its
  own crop; the statistics are taken again after the step, from the
  same draws and the parameters before it (see ``after_step``).

  Args:
    mem_size: Memory capacity.
    batch_size_mem: ``B``, the size of the mixed batch (at most
      ``mem_size``).
    batch_size_mem_cur: Memory samples of the current task added to
      ``loss_p``'s batch (at most ``mem_size``).

  Returns:
    The strategy; its ``cl_state`` is a :class:`GsaState`.

  Raises:
    ValueError: Bad arguments; (at ``init``) a stream with task labels or
      inputs that are not images ``[H, W, C]`` with 1 or 3 channels.

  Example:
    >>> gsa(mem_size=500).name
    'gsa'
  """
  mem_size = _validation.check_positive_int("mem_size", mem_size)
  batch_size_mem = _validation.check_positive_int("batch_size_mem",
                                                  batch_size_mem)
  batch_size_mem_cur = _validation.check_positive_int("batch_size_mem_cur",
                                                      batch_size_mem_cur)
  for name, value in (("batch_size_mem", batch_size_mem),
                      ("batch_size_mem_cur", batch_size_mem_cur)):
    buffers.check_draw_size(name, value, "mem_size", mem_size)

  def init(ctx, params, key):
    del params
    refuse_task_labels(ctx, "gsa trains one class-incremental head, as "
                       "Avalanche's GSA; got a stream with task labels (one "
                       "head per task).")
    shape = tuple(ctx.input_shape)
    if len(shape) != 3 or shape[-1] not in (1, 3):
      raise ValueError(
          f"gsa augments images (grayscale, resized crops, flips); expected "
          f"inputs of shape [H, W, C] with C = 1 or 3, got input_shape "
          f"{shape}.")
    state_key, loss_key = jax.random.split(key)
    zeros = jnp.zeros(ctx.n_classes, jnp.float32)
    none = jnp.zeros(ctx.n_classes, bool)
    return GsaState(
        buffer=buffers.for_context(ctx, mem_size, policy="reservoir", extras={
            _TAG: jax.ShapeDtypeStruct((), jnp.int32)}),
        seen=none, current=none, task=jnp.int32(-1),
        origin=jnp.int32(-1), task_steps=jnp.int32(0), count=zeros, positive=zeros,
        negative=zeros, model_state=init_model_state(ctx, state_key),
        key=jax.random.key_data(loss_key))

  def begin_experience(ctx, state, data, key):
    del ctx, key
    cl = state.cl_state
    classes = data.classes_mask
    # Avalanche's task boundary: the first mini-experience of an original
    # experience (is_first_subexp); offline, every experience.
    new_task = data.origin_experience != cl.origin
    return state.replace(cl_state=cl.replace(
        seen=cl.seen | classes,
        current=jnp.where(new_task, classes, cl.current | classes),
        task=cl.task + new_task, origin=data.origin_experience,
        task_steps=jnp.where(new_task, 0, cl.task_steps),
        model_state=state.model_state))

  def transform_batch(ctx, cl, batch, key):
    del cl, key
    own = (jnp.arange(batch["y"].shape[0]) < ctx.batch_size) & (
        batch["weight"] > 0)
    return {**batch, "class_mask": own_class_mask(ctx, batch, own)}

  def penalty(ctx, params, cl, batch, logits):
    del logits
    return _loss(ctx, params, cl, batch, batch_size_mem, batch_size_mem_cur)

  def after_step(ctx, old_state, new_state, grads, batch, key):
    del grads
    # The loss hook cannot return state: the mixed batch's statistics are
    # taken again, from the same draws and keys and the parameters the
    # loss saw. (With a benchmark augmentation, this batch is the one
    # drawn, before augmentation.)
    cl = old_state.cl_state
    keys = _keys(cl)
    rows = _draw(ctx, cl, batch, keys, batch_size_mem, batch_size_mem_cur)
    count, positive, negative = _statistics(
        ctx, cl, _mixed_logits(ctx, old_state.params, cl, rows, keys), rows)
    return new_state.cl_state.replace(
        count=count, positive=positive, negative=negative,
        task_steps=cl.task_steps + 1, model_state=new_state.model_state,
        key=jax.random.key_data(key))

  def end_experience(ctx, state, data, key):
    del ctx
    cl = state.cl_state
    tags = jnp.full(data.y.shape, cl.task, jnp.int32)
    return state.replace(cl_state=cl.replace(buffer=buffers.add_experience(
        cl.buffer, key, data, extras={_TAG: tags})))

  return Strategy(name="gsa", init=init, begin_experience=begin_experience,
                  transform_batch=transform_batch, penalty=penalty,
                  after_step=after_step, end_experience=end_experience)


STRATEGIES = {"gsa": gsa}
