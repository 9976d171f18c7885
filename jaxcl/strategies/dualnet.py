"""DualNet: a slow self-supervised learner and a fast supervised one.

Pham, Liu and Hoi, "DualNet: Continual Learning, Fast and Slow", NeurIPS
2021, as Avalanche's ``DualNet`` strategy (its task-agnostic variant, the
only one Avalanche implements), with :class:`jaxcl.models.DualNet` (the
parameters split into ``slow`` and ``fast`` subtrees). Per mini-batch of the
current experience (the whole update is one step of the loop):

1. **Slow update**, ``n_outer`` times: from ``θ_before`` (parameters and
   batch-norm statistics), ``inner_steps`` SGD steps of rate ``slow_lr`` on
   the slow learner's parameters, each on the Barlow-Twins loss of two
   augmented views of an SSL batch: ``ssl_batch_size`` memory samples (a
   fresh draw each step), or the current batch while the memory is empty;
   then ``θ ← θ_before + β (θ − θ_before)``.
2. **Fast update**, ``inner_steps`` optimizer steps (the loop's optimizer,
   on every parameter) on

       L = CE(current) + CE(memory) + memory_strength · Σ_i KL(
           softmax(l_i / T) ‖ softmax(f(x_i) / T)) / n_classes

   over ``batch_size_mem`` memory samples ``x_i`` (a fresh draw each step;
   no memory terms while it is empty) with the logits ``l_i`` stored with
   them.

After each experience the reservoir memory (``mem_size`` samples) takes in
the experience with its logits, computed in evaluation mode.

The Barlow-Twins loss (Zbontar et al., 2021) of projections ``z1, z2``
``[N, D]``, each standardised per feature over the batch (unbiased
standard deviation), is ``Σ_i (C_ii − 1)² + 0.002 Σ_{i≠j} C_ij²`` with
``C = z1ᵀ z2 / N``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcl import _validation
from jaxcl.benchmarks import augment
from jaxcl.models.adapter import batch_stats_rows
from jaxcl.strategies import buffers, model_utils
from jaxcl.strategies.base import Strategy, StrategyContext

__all__ = ["DualNetState", "barlow_twins_loss", "distillation_loss",
           "dual_net", "ssl_views"]

_LOGITS = "dualnet_logits"
# Barlow Twins' weight of the off-diagonal terms (DualNet's and Avalanche's).
_OFF_DIAGONAL = 2e-3


def barlow_twins_loss(z1: jax.Array, z2: jax.Array,
                      weight: jax.Array | None = None) -> jax.Array:
  """Barlow Twins' redundancy-reduction loss of two views' projections.

  Each feature is standardised over the rows of positive ``weight`` (mean,
  unbiased standard deviation; a constant feature is only centred, where
  PyTorch would divide by zero), ``C = z1ᵀ z2 / N`` over those ``N`` rows,
  and the loss is ``Σ_i (C_ii − 1)² + 0.002 Σ_{i≠j} C_ij²``.

  Args:
    z1: ``[N, D]`` projections of the first view.
    z2: ``[N, D]`` projections of the second view.
    weight: ``[N]``, 1 for real rows and 0 for padding (all real if None).

  Returns:
    A scalar.

  Example:
    >>> z = jnp.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    >>> round(float(barlow_twins_loss(z, z)), 4)  # C_ii = 3/4: unbiased var.
    0.125
  """
  w = jnp.ones(z1.shape[0]) if weight is None else (weight > 0).astype(
      z1.dtype)
  n = jnp.maximum(jnp.sum(w), 1.0)

  def standardise(z):
    mean = jnp.sum(w[:, None] * z, 0) / n
    centred = (z - mean) * w[:, None]
    var = jnp.sum(jnp.square(centred), 0) / jnp.maximum(n - 1.0, 1.0)
    # The inner where keeps the gradient finite for a constant feature.
    std = jnp.sqrt(jnp.where(var > 0, var, 1.0))
    return centred / std

  c = standardise(z1).T @ standardise(z2) / n
  eye = jnp.eye(c.shape[0], dtype=c.dtype)
  squared = jnp.square(c - eye)
  return jnp.sum(squared * eye) + _OFF_DIAGONAL * jnp.sum(squared * (1 - eye))


def distillation_loss(logits: jax.Array, stored: jax.Array,
                      weight: jax.Array, temperature) -> jax.Array:
  """DualNet's distillation term as Avalanche computes it.

  ``Σ_i w_i KL(softmax(stored_i / T) ‖ softmax(logits_i / T)) / C`` with
  ``C`` classes: PyTorch's ``kl_div(reduce=True)`` averages over rows and
  classes, and Avalanche multiplies by the number of rows.

  Args:
    logits: ``[N, C]`` the model's logits on the memory samples.
    stored: ``[N, C]`` the logits stored with them.
    weight: ``[N]``, 0 for padding.
    temperature: ``T``.

  Returns:
    A scalar.

  Example:
    >>> z = jnp.array([[1.0, 2.0]])
    >>> float(distillation_loss(z, z, jnp.ones(1), 2.0))
    0.0
  """
  target = jax.nn.softmax(stored / temperature)
  kl = jnp.sum(target * (jax.nn.log_softmax(stored / temperature)
                         - jax.nn.log_softmax(logits / temperature)), -1)
  return jnp.sum(kl * weight) / logits.shape[-1]


def ssl_views() -> tuple[augment.Augment, augment.Augment]:
  """DualNet's two self-supervised views (Avalanche's ``transforms_1/2``).

  Both flip with probability 0.5 and color-jitter (brightness 0.4, contrast
  0.4, saturation 0.2, hue 0.1) with probability 0.8; the first then turns
  to grayscale with probability 0.2 and is always blurred (3x3 kernel, σ in
  [0.1, 2]), the second is blurred with probability 0.1. Avalanche's random
  crop at the image's own size without padding is the identity, and its
  normalisation is the benchmark's ``preprocess`` here.

  Returns:
    ``(view_1, view_2)``, ``(x, key) -> x`` augmentations of raw images.

  Example:
    >>> first, second = ssl_views()
    >>> first(jnp.zeros((2, 8, 8, 3), jnp.uint8), jax.random.key(0)).shape
    (2, 8, 8, 3)
  """
  jitter = augment.color_jitter(0.4, 0.4, 0.2, 0.1, probability=0.8)
  first = augment.compose(augment.random_flip(), jitter,
                          augment.random_grayscale(0.2),
                          augment.gaussian_blur(3, (0.1, 2.0), 1.0))
  second = augment.compose(augment.random_flip(), jitter,
                           augment.gaussian_blur(3, (0.1, 2.0), 0.1))
  return first, second


class DualNetState(NamedTuple):
  """DualNet's state: the reservoir memory (with the stored logits in its
  extras) and the swept hyperparameters as arrays."""

  memory: buffers.Buffer
  memory_strength: jax.Array
  temperature: jax.Array
  beta: jax.Array
  slow_lr: jax.Array


def _projection_of_root(next_fun, args, kwargs, context):
  """Redirects the model's own ``__call__`` to its ``projection`` method."""
  if context.method_name == "__call__" and not context.module.scope.path:
    return context.module.projection(*args, **kwargs)
  return next_fun(*args, **kwargs)


def _project(ctx: StrategyContext, params, model_state, x, task, weight,
             key):
  """The slow learner's projections in training mode (batch statistics of
  the rows of positive ``weight``) and the new model state."""
  with nn.intercept_methods(_projection_of_root):
    return ctx.model.apply(params, model_state, ctx.preprocess(x), task, True,
                           key, **batch_stats_rows(ctx.model.apply,
                                                   weight > 0))


def _check_model(ctx: StrategyContext, params) -> None:
  """Refuses a model without the ``slow``/``fast`` split or ``projection``."""
  names = sorted(params) if isinstance(params, Mapping) else None
  if names != ["fast", "slow"]:
    raise ValueError(
        f"dual_net needs a model whose parameters split into 'slow' and "
        f"'fast' subtrees (jaxcl.models.DualNet), got top-level parameters "
        f"{names}.")
  x, task = model_utils.example_inputs(ctx)
  state = model_utils.init_model_state(ctx, jax.random.key(0))
  try:
    jax.eval_shape(lambda p: _project(ctx, p, state, x, task,
                                      jnp.ones(1), None), params)
  except AttributeError as error:
    raise ValueError(
        "dual_net needs a Flax model with a `projection` method (the slow "
        "learner's Barlow-Twins projection, as jaxcl.models.DualNet's); "
        f"calling it failed: {error}") from error


def _interpolate(before, after, rate: jax.Array):
  """``before + rate · (after − before)`` on the floating-point leaves."""
  return jax.tree.map(
      lambda a, b: a + rate * (b - a)
      if jnp.issubdtype(a.dtype, jnp.inexact) else b, before, after)


def _pad_rows(rows: dict, n: int) -> dict:
  """``rows`` padded to ``n`` rows of weight 0."""
  return jax.tree.map(
      lambda a: jnp.pad(a, [(0, n - a.shape[0])] + [(0, 0)] * (a.ndim - 1)),
      rows)


def dual_net(inner_steps: int = 2, n_outer: int = 3, batch_size_mem: int = 10,
             mem_size: int = 200, memory_strength: float = 10.0,
             temperature: float = 2.0, beta: float = 0.05,
             slow_lr: float = 3e-4, ssl_batch_size: int = 32) -> Strategy:
  """DualNet (Avalanche's ``DualNet``, task-agnostic; see the module
  docstring).

  Args:
    inner_steps: Steps of each slow round and of the fast update.
    n_outer: Slow rounds per mini-batch.
    batch_size_mem: Memory samples in each fast step.
    mem_size: Capacity of the reservoir memory.
    memory_strength: Weight of the distillation (KL) term.
    temperature: Temperature of the distillation.
    beta: Fraction of each slow round's change that is kept.
    slow_lr: Learning rate of the slow learner's plain SGD (Avalanche's
      ``optimizer_bt``; 3e-4 in its example).
    ssl_batch_size: Memory samples in each slow step (32 in Avalanche).

  Returns:
    The strategy; its ``cl_state`` is a :class:`DualNetState`. It replaces
    the optimizer step (``Strategy.update``), so ``chain`` adds to it only
    strategies without per-step hooks (EWC, MAS, ...); it needs a model
    with a slow/fast split such as :class:`jaxcl.models.DualNet`.

  Example:
    >>> dual_net(inner_steps=1, n_outer=1).name
    'dual_net'
  """
  inner_steps = _validation.check_positive_int("inner_steps", inner_steps)
  n_outer = _validation.check_positive_int("n_outer", n_outer)
  mem_size = _validation.check_positive_int("mem_size", mem_size)
  batch_size_mem = _validation.check_positive_int("batch_size_mem",
                                                  batch_size_mem)
  buffers.check_draw_size("batch_size_mem", batch_size_mem, "mem_size",
                          mem_size)
  ssl_batch_size = _validation.check_positive_int("ssl_batch_size",
                                                  ssl_batch_size)
  memory_strength = _validation.check_float32_non_negative(
      "memory_strength", memory_strength)
  temperature = _validation.check_float32_positive("temperature", temperature)
  beta = _validation.check_in_range("beta", beta, low=0.0, high=1.0)
  slow_lr = _validation.check_float32_non_negative("slow_lr", slow_lr)
  view_1, view_2 = ssl_views()

  def init(ctx, params, key):
    del key
    _check_model(ctx, params)
    extras = {_LOGITS: jax.ShapeDtypeStruct((ctx.n_classes,), jnp.float32)}
    return DualNetState(
        memory=buffers.for_context(ctx, mem_size, policy="reservoir",
                                   extras=extras),
        memory_strength=jnp.float32(memory_strength),
        temperature=jnp.float32(temperature), beta=jnp.float32(beta),
        slow_lr=jnp.float32(slow_lr))

  def draw(own, key, n, ops):
    """``n`` memory samples, freshly augmented by the benchmark."""
    sample_key, augment_key = jax.random.split(key)
    rows = buffers.sample(own.memory, sample_key, n)
    return {**rows, "x": ops.augment(rows["x"], augment_key)}

  def ssl_batch(ctx, own, batch, key, ops):
    """Memory samples, or the current batch while the memory is empty."""
    current = {k: batch[k] for k in ("x", "task", "weight")}
    n = max(ssl_batch_size, current["weight"].shape[0])
    stored = draw(own, key, ssl_batch_size, ops)
    stored = {k: stored[k] for k in current}
    empty = buffers.size(own.memory) == 0
    return jax.tree.map(lambda c, m: jnp.where(empty, c, m),
                        _pad_rows(current, n), _pad_rows(stored, n))

  def slow_update(ctx, own, state, batch, key, ops):
    def ssl_loss(slow, params, model_state, rows, key):
      params = {**params, "slow": slow}
      keys = jax.random.split(key, 4)
      views = (view_1(rows["x"], keys[0]), view_2(rows["x"], keys[1]))
      z1, model_state = _project(ctx, params, model_state, views[0],
                                 rows["task"], rows["weight"], keys[2])
      z2, model_state = _project(ctx, params, model_state, views[1],
                                 rows["task"], rows["weight"], keys[3])
      return barlow_twins_loss(z1, z2, rows["weight"]), model_state

    def inner(carry, key):
      params, model_state = carry
      draw_key, loss_key = jax.random.split(key)
      rows = ssl_batch(ctx, own, batch, draw_key, ops)
      grads, model_state = jax.grad(ssl_loss, has_aux=True)(
          params["slow"], params, model_state, rows, loss_key)
      slow = jax.tree.map(lambda p, g: p - own.slow_lr * g, params["slow"],
                          grads)
      return ({**params, "slow": slow}, model_state), None

    def outer(carry, key):
      after, _ = jax.lax.scan(inner, carry,
                              jax.random.split(key, inner_steps))
      # Avalanche interpolates the whole state_dict: the batch-norm
      # statistics move beta of the way too.
      return _interpolate(carry, after, own.beta), None

    (params, model_state), _ = jax.lax.scan(
        outer, (state.params, state.model_state),
        jax.random.split(key, n_outer))
    return state.replace(params=params, model_state=model_state)

  def fast_loss(ctx, own, params, state, batch, memory, key, ops):
    current_key, memory_key = jax.random.split(key)
    # The loop's training loss of the current batch (with any chained
    # penalty); its forward pass leaves the batch statistics as they are.
    loss = ops.loss(params, state, batch, current_key)
    logits, model_state = ctx.model.apply(
        params, state.model_state, ctx.preprocess(memory["x"]),
        memory["task"], True, memory_key,
        **batch_stats_rows(ctx.model.apply, memory["weight"] > 0))
    weight = memory["weight"]
    # An empty memory (the first experience) runs no forward pass in
    # Avalanche: its padding rows leave the batch statistics alone.
    model_state = jax.tree.map(
        lambda new, old: jnp.where(jnp.any(weight > 0), new, old),
        model_state, state.model_state)
    masked = model_utils.mask_logits(ctx, logits, state.seen_classes,
                                     memory["task"])
    loss = loss + model_utils.weighted_mean(ctx.loss(masked, memory), weight)
    return loss + own.memory_strength * distillation_loss(
        logits, memory[_LOGITS], weight, own.temperature), model_state

  def update(ctx, own, state, batch, key, ops):
    slow_key, fast_key = jax.random.split(key)
    state = slow_update(ctx, own, state, batch, slow_key, ops)

    def fast_step(state, key):
      draw_key, loss_key = jax.random.split(key)
      memory = draw(own, draw_key, batch_size_mem, ops)
      grads, model_state = jax.grad(
          lambda p: fast_loss(ctx, own, p, state, batch, memory, loss_key,
                              ops),
          has_aux=True)(state.params)
      return ops.apply(state, grads).replace(model_state=model_state), None

    state, _ = jax.lax.scan(fast_step, state,
                            jax.random.split(fast_key, inner_steps))
    return state, own

  def end_experience(ctx, state, data, key):
    own = state.cl_state
    logits = model_utils.in_chunks(
        lambda x, task: ctx.logits(state.params, state.model_state, x, task),
        data.x, data.task)
    memory = buffers.add_experience(own.memory, key, data,
                                    extras={_LOGITS: logits})
    return state.replace(cl_state=own._replace(memory=memory))

  return Strategy(name="dual_net", init=init, update=update,
                  end_experience=end_experience)


STRATEGIES = {"dual_net": dual_net}
