"""Meta-learning strategies: MER and La-MAML, as Avalanche's ``MER`` and
``LaMAML`` (its ``lamaml_v2``, without the ``higher`` library).

Both replace the loop's optimizer step (``Strategy.update``): a mini-batch's
whole update, inner steps included, is one step of the loop.

**MER** (Meta-Experience Replay): Riemer et al., "Learning to Learn without Forgetting by Maximizing Transfer
and Minimizing Interference", ICLR 2019. MER replays memory samples one at
a time inside Reptile's meta-update, so that a step that helps the current
sample and hurts a remembered one is pulled back. Per mini-batch of the
current experience (the whole update is one optimizer step of the loop):

1. ``θ_A ← θ``; then ``n_inner_steps`` times:
   a. draw ``batch_size_mem`` samples of the memory (uniform, without
      replacement; all of them while it holds fewer, none at first);
   b. ``θ_B ← θ``; one optimizer step per sample, in order: the
      mini-batch's samples, then the drawn ones;
   c. ``θ ← θ_B + β (θ − θ_B)`` (within-batch Reptile).
2. ``θ ← θ_A + γ (θ − θ_A)`` (across-batch Reptile).

The optimizer's state carries through every inner step, as the one torch
optimizer's does in Avalanche, and Reptile moves the parameters only (not
batch statistics). After each experience the memory, a reservoir of
``mem_size`` samples (Avalanche's ``ReservoirSamplingBuffer``: the samples
with the highest uniform random priorities among all seen), takes in the
experience. The training loss reported for the step is the mini-batch's
loss under the updated parameters, as in Avalanche.

Avalanche trains MER with mini-batches of 1 (``train_mb_size=1``); with
``batch_size`` B each optimizer step of the loop runs ``n_inner_steps ·
(B + batch_size_mem)`` single-sample steps.

**La-MAML** (Look-ahead MAML): Gupta et al., "La-MAML: Look-ahead Meta
Learning for Continual Learning", NeurIPS 2020. Every parameter has its own
learnable learning rate ``α`` (from ``alpha_init``). Per mini-batch of B
current samples, with ``θ`` the parameters:

1. ``θ_0 = θ``; the batch's samples (padding rows aside) are cut into
   ``n_inner_updates`` chunks of ``ceil(B / n_inner_updates)``; for chunk
   ``k``: ``g_k`` = the gradient of the chunk's loss at ``θ_{k-1}``,
   clipped elementwise to ``±grad_clip_norm``; ``θ_k = θ_{k-1} − α ⊙
   g_k``; meta-loss ``L_k`` = the loss of the batch and ``batch_size_mem``
   memory samples at ``θ_k``.
2. The gradients of ``mean_k L_k`` with respect to ``θ`` and ``α`` (through
   the inner steps; with ``second_order=False`` the ``g_k`` are held
   constant) are each clipped to global norm ``grad_clip_norm``.
3. With ``learn_lr``: ``α ← α − lr_alpha · ∇_α``. Then ``θ ← θ − ∇_θ ⊙
   max(α, 0)``, or with ``sync_update`` the optimizer's step on ``∇_θ``.

The memory is a reservoir as MER's.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxcl import _validation
from jaxcl.strategies import buffers
from jaxcl.strategies.base import Strategy

__all__ = ["LaMamlState", "MerState", "la_maml", "mer"]


def _reptile(start, end, rate: jax.Array):
  """``start + rate · (end − start)``, leaf by leaf."""
  return jax.tree.map(lambda a, b: a + rate * (b - a), start, end)


def _check_memory(mem_size, batch_size_mem) -> tuple[int, int]:
  """Positive sizes, the draw no larger than the memory."""
  mem_size = _validation.check_positive_int("mem_size", mem_size)
  batch_size_mem = _validation.check_positive_int("batch_size_mem",
                                                  batch_size_mem)
  buffers.check_draw_size("batch_size_mem", batch_size_mem, "mem_size",
                          mem_size)
  return mem_size, batch_size_mem


def _reservoir(ctx, mem_size: int) -> buffers.Buffer:
  return buffers.for_context(ctx, mem_size, policy="reservoir")


def _draw(memory: buffers.Buffer, key: jax.Array, n: int, ops) -> dict:
  """``n`` memory samples, augmented (a fresh draw of the transform, as
  Avalanche's dataset gives each stored sample it reads)."""
  sample_key, augment_key = jax.random.split(key)
  rows = buffers.sample(memory, sample_key, n)
  return {**rows, "x": ops.augment(rows["x"], augment_key)}


class MerState(NamedTuple):
  """MER's state: the memory and its Reptile coefficients (arrays, so that
  ``jaxcl.sweep`` can give each run its own)."""

  memory: buffers.Buffer
  beta: jax.Array
  gamma: jax.Array


def mer(mem_size: int = 200, batch_size_mem: int = 10, n_inner_steps: int = 5,
        beta: float = 0.1, gamma: float = 0.1) -> Strategy:
  """Meta-Experience Replay (Avalanche's ``MER``; see the module docstring).

  Args:
    mem_size: Capacity of the reservoir memory (samples).
    batch_size_mem: Memory samples drawn for each inner iteration.
    n_inner_steps: Inner iterations per mini-batch.
    beta: Within-batch Reptile coefficient.
    gamma: Across-batch Reptile coefficient.

  Returns:
    The strategy; its ``cl_state`` is a :class:`MerState`. It replaces the
    optimizer step (``Strategy.update``), so ``chain`` adds to it only
    strategies without per-step hooks (EWC, MAS, ...).

  Example:
    >>> mer(mem_size=100, n_inner_steps=2).name
    'mer'
  """
  mem_size, batch_size_mem = _check_memory(mem_size, batch_size_mem)
  n_inner_steps = _validation.check_positive_int("n_inner_steps",
                                                 n_inner_steps)
  beta = _validation.check_float32_positive("beta", beta)
  gamma = _validation.check_float32_positive("gamma", gamma)

  def init(ctx, params, key):
    del params, key
    return MerState(memory=_reservoir(ctx, mem_size),
                    beta=jnp.float32(beta), gamma=jnp.float32(gamma))

  def update(ctx, own, state, batch, key, ops):
    del ctx

    def one_sample(state, inputs):
      row, row_key = inputs
      # Padding and memory slots not yet filled take no step.
      state = jax.lax.cond(row["weight"][0] > 0, ops.step,
                           lambda state, row, row_key: state,
                           state, row, row_key)
      return state, None

    def inner(state, inner_key):
      draw_key, steps_key = jax.random.split(inner_key)
      mixed = buffers.concat_batches(
          batch, _draw(own.memory, draw_key, batch_size_mem, ops))
      rows = jax.tree.map(lambda a: a[:, None], mixed)
      n_rows = mixed["y"].shape[0]
      end, _ = jax.lax.scan(one_sample, state,
                            (rows, jax.random.split(steps_key, n_rows)))
      return end.replace(params=_reptile(state.params, end.params,
                                         own.beta)), None

    end, _ = jax.lax.scan(inner, state, jax.random.split(key, n_inner_steps))
    return end.replace(params=_reptile(state.params, end.params,
                                       own.gamma)), own

  return Strategy(name="mer", init=init, update=update,
                  end_experience=_store_experience)


def _store_experience(ctx, state, data, key):
  """The reservoir memory takes in the experience just trained."""
  del ctx
  own = state.cl_state
  return state.replace(cl_state=own._replace(
      memory=buffers.add_experience(own.memory, key, data)))


class LaMamlState(NamedTuple):
  """La-MAML's state: the per-parameter learning rates, the memory, and the
  swept hyperparameters as arrays."""

  alpha: optax.Params
  memory: buffers.Buffer
  lr_alpha: jax.Array
  grad_clip_norm: jax.Array


def la_maml(mem_size: int = 200, batch_size_mem: int = 10,
            n_inner_updates: int = 5, second_order: bool = True,
            grad_clip_norm: float = 1.0, learn_lr: bool = True,
            lr_alpha: float = 0.25, sync_update: bool = False,
            alpha_init: float = 0.1) -> Strategy:
  """La-MAML (Avalanche's ``LaMAML``; see the module docstring).

  Args:
    mem_size: Capacity of the reservoir memory (Avalanche's
      ``max_buffer_size``).
    batch_size_mem: Memory samples in each meta-loss (``buffer_mb_size``).
    n_inner_updates: Inner steps per mini-batch, one per chunk of it.
    second_order: Differentiate the meta-loss through the inner gradients.
    grad_clip_norm: Bound of the inner gradients (elementwise) and of the
      meta-gradients (global norm).
    learn_lr: Learn the per-parameter learning rates.
    lr_alpha: Learning rate of the learning rates (plain SGD).
    sync_update: Update the parameters with the optimizer on the
      meta-gradient instead of with the learned learning rates.
    alpha_init: Initial per-parameter learning rate.

  Returns:
    The strategy; its ``cl_state`` is a :class:`LaMamlState`. It replaces
    the optimizer step (``Strategy.update``), as :func:`mer` does.

  Example:
    >>> la_maml(n_inner_updates=2, second_order=False).name
    'la_maml'
  """
  mem_size, batch_size_mem = _check_memory(mem_size, batch_size_mem)
  n_inner_updates = _validation.check_positive_int("n_inner_updates",
                                                   n_inner_updates)
  for name, value in (("second_order", second_order), ("learn_lr", learn_lr),
                      ("sync_update", sync_update)):
    _validation.check_bool(name, value)
  grad_clip_norm = _validation.check_float32_positive("grad_clip_norm",
                                                      grad_clip_norm)
  lr_alpha = _validation.check_float32_positive("lr_alpha", lr_alpha)
  alpha_init = _validation.check_float32_positive("alpha_init", alpha_init)

  def init(ctx, params, key):
    del key
    return LaMamlState(
        alpha=jax.tree.map(lambda p: jnp.full_like(p, alpha_init), params),
        memory=_reservoir(ctx, mem_size),
        # learn_lr lives in the state as a rate of 0, so that runs swept
        # over learn_lr (or over an unused lr_alpha) differ only there.
        lr_alpha=jnp.float32(lr_alpha if learn_lr else 0.0),
        grad_clip_norm=jnp.float32(grad_clip_norm))

  def update(ctx, cl_state, state, batch, key, ops):
    b = ctx.batch_size
    rows = math.ceil(b / n_inner_updates)  # The largest chunk's.
    draw_key, *keys = jax.random.split(key, 1 + 2 * n_inner_updates)
    current = {name: value[:b] for name, value in batch.items()}
    # Avalanche chunks the batch's samples: padding rows (an epoch's last
    # batch, small online mini-experiences) go last and count for nothing.
    real = current["weight"] > 0
    current = jax.tree.map(
        lambda a: a[jnp.argsort(~real, stable=True)], current)
    n_real = jnp.sum(real)
    chunk = (n_real + n_inner_updates - 1) // n_inner_updates
    mixed = buffers.concat_batches(
        current, _draw(cl_state.memory, draw_key, batch_size_mem, ops))

    bound = cl_state.grad_clip_norm

    def clip_norm(tree):
      return optax.clip_by_global_norm(bound).update(tree, ())[0]

    def chunk_rows(k):
      """Chunk ``k``, samples ``[k c, (k + 1) c)`` of the ``n_real``, as
      ``rows`` rows whose others weigh 0."""
      start = jnp.minimum(k * chunk, b - rows)
      index = start + jnp.arange(rows)
      inside = (index >= k * chunk) & (index < jnp.minimum((k + 1) * chunk,
                                                           n_real))
      part = jax.tree.map(
          lambda a: jax.lax.dynamic_slice_in_dim(a, start, rows), current)
      return {**part, "weight": jnp.where(inside, part["weight"], 0.0)}

    def meta_loss(params, alpha):
      fast, total = params, 0.0
      for k in range(n_inner_updates):
        # Chunks past the samples are empty (8 samples and 5 updates: 2, 2,
        # 2, 2, 0): no inner step, their meta-loss term repeats the last, as
        # with Avalanche's zero gradient of an empty chunk.
        grads = jax.grad(ops.loss)(fast, state, chunk_rows(k), keys[2 * k])
        grads = jax.tree.map(
            lambda g, k=k: jnp.where(k * chunk < n_real, g, 0.0), grads)
        if not second_order:
          grads = jax.lax.stop_gradient(grads)
        fast = jax.tree.map(
            lambda p, a, g: p - a * jnp.clip(g, -bound, bound),
            fast, alpha, grads)
        total = total + ops.loss(fast, state, mixed, keys[2 * k + 1])
      return total / n_inner_updates

    grads, alpha_grads = jax.grad(meta_loss, argnums=(0, 1))(
        state.params, cl_state.alpha)
    grads = clip_norm(grads)
    alpha = jax.tree.map(lambda a, g: a - cl_state.lr_alpha * g,
                         cl_state.alpha, clip_norm(alpha_grads))
    if sync_update:
      state = ops.apply(state, grads)
    else:
      state = state.replace(params=jax.tree.map(
          lambda p, g, a: p - g * jnp.maximum(a, 0.0), state.params, grads,
          alpha))
    return state, cl_state._replace(alpha=alpha)

  return Strategy(name="la_maml", init=init, update=update,
                  end_experience=_store_experience,
                  trains_with_optimizer=sync_update)


STRATEGIES = {"la_maml": la_maml, "mer": mer}

