"""Parameter isolation by iterative pruning: PackNet.

Mallya and Lazebnik, "PackNet: Adding Multiple Tasks to a Single Network by
Iterative Pruning", CVPR 2018, as Avalanche's ``PackNetModel`` and
``PackNetPlugin``. Every weight of the model's Dense and convolution kernels
belongs to one task. An experience trains the weights no earlier task owns;
then the smallest of them (by magnitude) are released for the next task,
the rest are fine-tuned alone and frozen as the task's own. A sample of task
``t`` is predicted with the weights of tasks ``0..t`` only, so each task
keeps exactly the network it was evaluated with after its training.

Example:
  >>> import optax, jaxcl
  >>> strategy = packnet(post_prune_epochs=1, prune_proportion=0.5)
  >>> strategy.name
  'packnet'
  >>> bench = jaxcl.benchmarks.split_mnist(return_task_id=True)
  >>> result = jaxcl.fit(jaxcl.models.MLP(10), strategy, optax.sgd(0.01),
  ...                    bench, epochs=2)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcl import _validation
from jaxcl.benchmarks import Experience, Stream
from jaxcl.strategies.base import Strategy
from jaxcl.strategies.model_utils import (init_model_state, output_layer_path,
                                          require_optimizer,
                                          shuffled_batches, task_loss)
from jaxcl.training import optim

__all__ = ["PackNetState", "packnet", "prune_smallest", "task_weights"]

PyTree = Any

# float32 cannot hold most proportions exactly, and n · p in float32 can fall
# just short of an integer that Avalanche's float64 int(n * p) reaches (300 ·
# 0.21 gives 62.99999): the product is taken a hair above, by a relative
# 2^-21 capped at a quarter (exact below 2^24 entries per kernel).
_COUNT_SLACK = 2.0 ** -21
_COUNT_SLACK_CAP = 0.25

_NEEDS_TASK_LABELS = (
    "packnet needs task labels, one task per experience: it picks each "
    "sample's weights by its task (return_task_id=True or "
    "jaxcl.benchmarks.task_incremental).")


@flax.struct.dataclass
class PackNetState:
  """State of :func:`packnet`.

  Attributes:
    owner: Like the parameters: for each kernel entry, the task that owns it
      (``done`` for the weights free for the current task); a multi-head
      output layer's head ``t`` and its biases are task ``t``'s from the
      start; a scalar 0 for the other leaves (shared biases).
    done: Tasks trained and frozen so far.
    prune_proportion: ``[n_experiences]`` the proportion of the current
      task's weights released at the end of each experience.
  """

  owner: PyTree
  done: jax.Array
  prune_proportion: jax.Array


def _is_kernel(key_path) -> bool:
  return getattr(key_path[-1], "key", None) == "kernel"


def _check_parameters(params: PyTree, model_state: PyTree) -> None:
  """PackNet prunes kernels and freezes biases; anything else is refused."""
  if jax.tree.leaves(model_state):
    names = [jax.tree_util.keystr(path) for path, _ in
             jax.tree_util.tree_leaves_with_path(model_state)]
    raise ValueError(
        "packnet needs a model without state (batch-norm statistics), which "
        "its tasks could not share; Avalanche's PackNet refuses "
        f"normalisation layers too. Got a model state with leaves {names}.")
  for key_path, _ in jax.tree_util.tree_leaves_with_path(params):
    if getattr(key_path[-1], "key", None) not in ("kernel", "bias"):
      raise ValueError(
          f"packnet prunes Dense and convolution kernels and freezes biases; "
          f"got the parameter {jax.tree_util.keystr(key_path)}, which is "
          "neither (Avalanche's PackNet refuses such layers too).")


def task_weights(params: PyTree, owner: PyTree, task: jax.Array) -> PyTree:
  """The parameters as task ``task`` sees them: kernel entries owned by later
  tasks are zero (Avalanche's ``activate_task``); biases unchanged.

  Example:
    >>> import jax.numpy as jnp
    >>> params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    >>> owner = {"kernel": jnp.array([[0, 1], [1, 2]]), "bias": 0}
    >>> task_weights(params, owner, 1)["kernel"].tolist()
    [[1.0, 1.0], [1.0, 0.0]]
  """
  def visible(key_path, leaf, own):
    return jnp.where(own <= task, leaf, 0.0) if _is_kernel(key_path) else leaf
  return jax.tree_util.tree_map_with_path(visible, params, owner)


def prune_smallest(kernel: jax.Array, candidates: jax.Array,
                   proportion: jax.Array) -> jax.Array:
  """The ``floor(n · proportion)`` smallest-magnitude entries of the ``n``
  ``candidates`` (Avalanche's ``_rank_prunable``; ties by position).

  Example:
    >>> import jax.numpy as jnp
    >>> prune_smallest(jnp.array([0.3, -0.1, 2.0, 0.2]),
    ...                jnp.array([True, True, True, False]), 0.5).tolist()
    [False, True, False, False]
  """
  magnitude = jnp.where(candidates, jnp.abs(kernel), jnp.inf).ravel()
  rank = jnp.zeros(magnitude.shape, jnp.int32).at[jnp.argsort(magnitude)].set(
      jnp.arange(magnitude.size, dtype=jnp.int32))
  product = jnp.sum(candidates) * proportion
  count = jnp.floor(product + jnp.minimum(product * _COUNT_SLACK,
                                          _COUNT_SLACK_CAP))
  return candidates & (rank.reshape(kernel.shape) < count)


def _trainable(owner: PyTree, done: jax.Array) -> PyTree:
  """1 where a parameter may move: the entries the current task owns, and
  shared biases until the first task is frozen (Avalanche stops their
  gradient then)."""
  def mask(own):
    # Shared biases have a scalar owner; a multi-head layer's biases, one
    # per head.
    return (done == 0) if own.ndim == 0 else (own == done)
  return jax.tree.map(mask, owner)


def _head_path(ctx, params: PyTree) -> tuple[str, ...] | None:
  """The path of a multi-head output layer (kernel ``[heads, d, classes]``),
  whose head ``t`` is task ``t``'s alone; None for a shared head."""
  try:
    path = output_layer_path(ctx, params, init_model_state(
        ctx, jax.random.key(0)))
  except ValueError:  # Not a Flax model with a Dense output layer.
    return None
  layer = params
  for key in path:
    layer = layer[key]
  return path if layer["kernel"].ndim == 3 else None


def _initial_owner(ctx, params: PyTree) -> PyTree:
  """Every kernel entry task 0's, but a multi-head layer's head ``t`` (and
  its biases) task ``t``'s; shared biases get a scalar owner."""
  head = _head_path(ctx, params)

  def owner(key_path, leaf):
    keys = tuple(getattr(k, "key", k) for k in key_path)
    if head is not None and keys[:-1] == head:
      tasks = jnp.arange(leaf.shape[0], dtype=jnp.int32)
      return jnp.broadcast_to(tasks.reshape((-1,) + (1,) * (leaf.ndim - 1)),
                              leaf.shape)
    return (jnp.zeros(leaf.shape, jnp.int32) if _is_kernel(key_path)
            else jnp.zeros((), jnp.int32))
  return jax.tree_util.tree_map_with_path(owner, params)


def _masked(tree: PyTree, mask: PyTree) -> PyTree:
  return jax.tree.map(lambda a, m: jnp.where(m, a, jnp.zeros_like(a)), tree,
                      mask)


def _check_task_order(experience: Experience, stream: Stream,
                      seed: int) -> Experience:
  """``adapt_data``: PackNet's task ``i`` is the ``i``-th experience."""
  del seed
  if all(np.all(np.asarray(e.task) == 0) for e in stream):
    raise ValueError(_NEEDS_TASK_LABELS)
  position = next(i for i, e in enumerate(stream) if e is experience)
  labels = np.unique(np.asarray(experience.task))
  if labels.tolist() != [position]:
    raise ValueError(
        f"packnet trains task i in the i-th experience; experience "
        f"{position} of the stream carries task labels {labels.tolist()}, "
        f"expected [{position}] (one new task per experience, in order, as "
        "jaxcl.benchmarks.task_incremental gives).")
  return experience


def packnet(post_prune_epochs: int = 1,
            prune_proportion: float | Sequence[float] = 0.5) -> Strategy:
  """PackNet (Mallya & Lazebnik, 2018), as Avalanche's ``PackNetPlugin``.

  Each experience is a new task (task labels required, task ``i`` in the
  ``i``-th experience). While it trains, only the kernel entries no earlier
  task owns and, in the first experience only, the biases receive gradient;
  the optimizer state starts afresh. After the ``epochs`` of ``fit``,
  ``end_experience``:

  1. releases (prunes) ``floor(n · p)`` of the current task's ``n`` kernel
     entries in each layer, those of the smallest magnitude, setting them to
     zero;
  2. fine-tunes the rest for ``post_prune_epochs`` epochs (the loop's loss
     and optimizer, a fresh optimizer state; pruned and frozen entries held
     exactly);
  3. freezes what it tuned as the task's own and hands the released entries,
     with their values from before pruning, to the next task.

  ``predict`` runs each sample with the weights of tasks ``0..t`` for its
  task ``t`` (all weights for a task not trained yet).

  Args:
    post_prune_epochs: Fine-tuning epochs after pruning (≥ 0). Avalanche
      counts them in ``train_epochs``; here ``fit``'s ``epochs`` come
      before them.
    prune_proportion: The proportion in ``[0, 1]`` released after each
      experience, or one per experience (the last one repeats).

  Returns:
    The strategy; its ``cl_state`` is a :class:`PackNetState`.

  Example:
    >>> packnet(post_prune_epochs=2, prune_proportion=[0.75, 0.5]).name
    'packnet'
  """
  post_prune_epochs = _validation.check_non_negative_int(
      "post_prune_epochs", post_prune_epochs)
  if isinstance(prune_proportion, (list, tuple, np.ndarray)):
    if len(prune_proportion) == 0:
      raise ValueError("prune_proportion must be a number in [0, 1] or a "
                       "non-empty list of them (one per experience), got "
                       f"{prune_proportion!r}.")
    proportions = [_validation.check_in_range(f"prune_proportion[{i}]", p,
                                              low=0.0, high=1.0)
                   for i, p in enumerate(prune_proportion)]
  else:
    proportions = [_validation.check_in_range(
        "prune_proportion", prune_proportion, low=0.0, high=1.0)]

  def init(ctx, params, key):
    if ctx.task_classes is None:
      raise ValueError(_NEEDS_TASK_LABELS)
    require_optimizer(ctx, "packnet fine-tunes after pruning")
    _check_parameters(params, init_model_state(ctx, key))
    n = ctx.n_experiences
    return PackNetState(
        owner=_initial_owner(ctx, params), done=jnp.zeros((), jnp.int32),
        prune_proportion=jnp.asarray(
            (proportions + proportions[-1:] * n)[:n], jnp.float32))

  def begin_experience(ctx, state, data, key):
    del data, key
    # Avalanche builds a new optimizer for each experience: no momentum
    # carries over into the frozen weights.
    return state.replace(opt_state=optim.reset_optimizer_state(
        ctx.optimizer, state.opt_state, state.params, keep_schedules=True))

  def transform_grads(ctx, grads, state, batch, key):
    del ctx, batch, key
    cl = state.cl_state
    return _masked(grads, _trainable(cl.owner, cl.done))

  def fine_tune(ctx, state, data, key, trainable):
    """``post_prune_epochs`` of the loop's loss on the trainable entries."""
    def step(carry, batch):
      (params, opt_state), (rows, weight, step_key) = carry, batch
      dropout_key, augment_key = jax.random.split(step_key)
      x = data.x[rows]
      if ctx.augment is not None:
        x = ctx.augment(x, augment_key)
      rows_batch = {"x": x, "y": data.y[rows], "task": data.task[rows],
                    "weight": weight}
      loss, grads = jax.value_and_grad(task_loss, argnums=1)(
          ctx, params, state.model_state, rows_batch, state.seen_classes,
          True, dropout_key)
      updates, new_opt = ctx.optimizer.update(
          grads, opt_state, params, **optim.loss_arguments(ctx.optimizer,
                                                           loss))
      # Masking the updates holds frozen and pruned entries exactly, whatever
      # the optimizer (momentum, weight decay).
      new = (optax.apply_updates(params, _masked(updates, trainable)),
             new_opt)
      keep = jnp.any(weight > 0)
      return jax.tree.map(lambda a, b: jnp.where(keep, a, b), new,
                          (params, opt_state)), None

    def epoch(carry, epoch_key):
      order_key, steps_key = jax.random.split(epoch_key)
      rows, weight = shuffled_batches(order_key, data.valid, ctx.batch_size)
      return jax.lax.scan(step, carry, (rows, weight, jax.random.split(
          steps_key, rows.shape[0])))[0], None

    opt_state = optim.reset_optimizer_state(
        ctx.optimizer, state.opt_state, state.params, keep_schedules=True)
    (params, _), _ = jax.lax.scan(epoch, (state.params, opt_state),
                                  jax.random.split(key, post_prune_epochs))
    # The fine-tuning's steps stay out of the schedules' counts, which are
    # sized by the loop's steps (the CLI's, docs/training.md's).
    return state.replace(params=params)

  def end_experience(ctx, state, data, key):
    cl = state.cl_state
    proportion = cl.prune_proportion[jnp.minimum(
        cl.done, cl.prune_proportion.shape[0] - 1)]

    head = _head_path(ctx, state.params)

    def pruned_entries(key_path, leaf, own):
      keys = tuple(getattr(k, "key", k) for k in key_path)
      if not _is_kernel(key_path) or (head is not None and keys[:-1] == head):
        return jnp.zeros((), bool)  # Each head stays its task's, whole.
      return prune_smallest(leaf, own == cl.done, proportion)

    pruned = jax.tree_util.tree_map_with_path(pruned_entries, state.params,
                                              cl.owner)
    before = state.params
    state = state.replace(params=_masked(before, jax.tree.map(
        jnp.logical_not, pruned)))
    if post_prune_epochs:
      trainable = jax.tree.map(lambda t, p: t & ~p,
                               _trainable(cl.owner, cl.done), pruned)
      state = fine_tune(ctx, state, data, key, trainable)
    # The released entries go to the next task with their values from
    # before pruning, as Avalanche only hid them.
    params = jax.tree.map(lambda p, tuned, old: jnp.where(p, old, tuned),
                          pruned, state.params, before)
    owner = jax.tree.map(lambda p, own: jnp.where(p, cl.done + 1, own),
                         pruned, cl.owner)
    return state.replace(params=params, cl_state=cl.replace(
        owner=owner, done=cl.done + 1))

  def predict(ctx, params, model_state, cl, x, task):
    def logits_as(slot):
      return ctx.logits(task_weights(params, cl.owner, slot), model_state, x,
                        task)
    # Owners never exceed ``done``: a task not trained yet sees every weight,
    # as Avalanche's min(task, task_count) gives.
    every = jax.vmap(logits_as)(jnp.arange(len(ctx.task_classes)))
    return jnp.take_along_axis(every, task[None, :, None], 0)[0]

  return Strategy(name="packnet", init=init, adapt_data=_check_task_order,
                  begin_experience=begin_experience,
                  transform_grads=transform_grads,
                  end_experience=end_experience, predict=predict)


STRATEGIES = {"packnet": packnet}
