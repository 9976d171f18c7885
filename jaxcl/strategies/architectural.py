"""Architectural strategies: CWR* (Copy Weights with Re-init) and AR1.

CWR* (Lomonaco & Maltoni, 2017; Maltoni & Lomonaco, 2019) keeps one
consolidated weight column per class for the output layer. Each experience
trains temporary weights that start at zero (or, for a class seen before, at
its consolidated weights); afterwards each trained class's column, shifted to
zero mean, is merged into its consolidated column, weighted by how many
samples of the class each side has seen. Evaluation uses the consolidated
weights. After the first experience everything below the output layer is
frozen, so the features stay those the consolidated columns were fitted to.

Example:
  >>> import optax, jaxcl
  >>> cwr_star().name
  'cwr_star'
  >>> result = jaxcl.fit(jaxcl.models.MLP(num_classes=10), cwr_star(),
  ...                    optax.sgd(0.01), jaxcl.benchmarks.core50())  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxcl import _validation
from jaxcl.models import CosineLinear
from jaxcl.strategies import buffers, latent
from jaxcl.strategies.base import Strategy, StrategyContext
from jaxcl.strategies.model_utils import (init_model_state, mask_logits,
                                          output_layer, output_layer_call,
                                          output_layer_path,
                                          refuse_task_labels,
                                          require_optimizer, weighted_mean)

__all__ = ["Ar1State", "ar1", "cwr_star"]

PyTree = Any


def _keys(key_path) -> tuple[str, ...]:
  return tuple(getattr(k, "key", k) for k in key_path)


def _kernel(ctx: StrategyContext, params: PyTree, model_state: PyTree
            ) -> tuple[tuple[str, ...], jax.Array]:
  """The output layer's path and its ``[features, classes]`` kernel."""
  head = output_layer(ctx, params, model_state)
  path = head.path
  if isinstance(head.module, CosineLinear):
    # Its zeroed columns would get a zero gradient (the cosine of a zero
    # vector is constant), so the experience's classes would never train.
    raise ValueError(
        f"cwr_star and ar1 reset the output layer's columns to zero, which "
        f"a cosine output layer ({path}) cannot train from; expected a "
        "linear output layer (flax.linen.Dense), e.g. jaxcl.models.MLP.")
  layer = params
  for key in path:
    layer = layer[key]
  kernel = layer["kernel"]
  if kernel.ndim != 2 or kernel.shape[1] != ctx.n_classes:
    raise ValueError(
        f"cwr_star needs a single output layer with one column per class "
        f"(kernel [features, {ctx.n_classes}]), got an output layer {path} "
        f"with kernel shape {tuple(kernel.shape)}; multi-head classifiers "
        "are not supported (Avalanche's CWR* uses no task labels either).")
  return path, kernel


def _with_kernel(params: PyTree, path: tuple[str, ...],
                 kernel: jax.Array) -> PyTree:
  target = path + ("kernel",)
  return jax.tree_util.tree_map_with_path(
      lambda kp, leaf: kernel if _keys(kp) == target else leaf, params)


def cwr_star(freeze_remaining_model: bool = True) -> Strategy:
  """CWR* (Copy Weights with Re-init), as Avalanche's ``CWRStar``.

  Before each experience the output layer's kernel is reset: zero for every
  class, except that classes of the experience (those with samples in it)
  consolidated before start from their consolidated column. After the
  experience, with ``W`` the trained kernel and ``w̄`` the mean of all its
  entries in the columns of the experience's classes, each such class ``c``
  with ``n_c`` samples in the experience is consolidated as

    ``cw_c ← (cw_c · √(p_c / n_c) + (W_c − w̄)) / (√(p_c / n_c) + 1)``,
    ``p_c ← p_c + n_c``

  (``cw_c ← W_c − w̄`` and ``p_c ← n_c`` the first time), and the kernel is
  set to the consolidated columns of every class consolidated so far (the
  other classes keep their trained columns). The output layer's bias is
  trained as usual, neither reset nor consolidated, as in Avalanche.

  With ``freeze_remaining_model``, from the second experience on every
  parameter outside the output layer gets a zero gradient, and the model
  state (batch-norm statistics) is restored at the end of each experience
  to what it was at its start. With plain SGD the frozen parameters stay
  fixed; momentum carried over from the first experience or weight decay
  would still move them (pass ``reset_optimizer=True`` to ``fit``, or mask
  the optimizer with ``optax.masked``). Avalanche also runs the frozen layers
  in evaluation mode; jaxcl's step runs the whole model in training mode, so
  a model's dropout below the output layer still applies while training
  (use ``drop_rate=0`` for Avalanche's behaviour).

  The output layer is the last ``flax.linen.Dense`` the model calls (as
  Avalanche's default, the last linear layer); multi-head classifiers are
  refused. The per-class counts are the whole experience's, also when it
  is streamed (:mod:`jaxcl.training.streaming`) and the hooks see a subset
  (``ExperienceData.class_counts``, counted on the host).

  Args:
    freeze_remaining_model: Freeze everything but the output layer from the
      second experience on (Avalanche's default, True).

  Returns:
    The strategy. Its state holds ``consolidated`` (``[features, classes]``),
    ``has_consolidated`` (``bool[classes]``), ``past_counts`` and
    ``counts`` (samples per class: before and in the current experience),
    ``experiences_trained`` and ``model_state`` (the model state at the start
    of the experience).

  Example:
    >>> cwr_star(freeze_remaining_model=False).name
    'cwr_star'
  """
  if not isinstance(freeze_remaining_model, (bool, np.bool_)):
    raise TypeError(f"freeze_remaining_model must be a bool, got "
                    f"{freeze_remaining_model!r}.")

  def init(ctx, params, key):
    return _cwr_init(ctx, params, init_model_state(ctx, key))

  def begin_experience(ctx, state, data, key):
    del key
    params, cl = _cwr_begin(ctx, state, state.cl_state,
                            data.class_counts.astype(jnp.float32))
    return state.replace(params=params, cl_state=cl)

  def transform_grads(ctx, grads, state, batch, key):
    del batch, key
    return _freeze_below_output(ctx, grads, state.params, state.model_state,
                                state.cl_state["experiences_trained"] > 0)

  def end_experience(ctx, state, data, key):
    del data, key
    params, model_state, cl = _cwr_end(ctx, state, state.cl_state,
                                       freeze_remaining_model)
    return state.replace(params=params, model_state=model_state,
                         cl_state=cl)

  return Strategy(
      name="cwr_star", init=init, begin_experience=begin_experience,
      end_experience=end_experience,
      **({"transform_grads": transform_grads}
         if freeze_remaining_model else {}))


def _cwr_init(ctx: StrategyContext, params: PyTree,
              model_state: PyTree) -> dict:
  _, kernel = _kernel(ctx, params, model_state)
  return {"consolidated": jnp.zeros_like(kernel),
          "has_consolidated": jnp.zeros((ctx.n_classes,), bool),
          "past_counts": jnp.zeros((ctx.n_classes,), jnp.float32),
          "counts": jnp.zeros((ctx.n_classes,), jnp.float32),
          "experiences_trained": jnp.zeros((), jnp.int32),
          "model_state": model_state}


def _cwr_begin(ctx: StrategyContext, state, cl: dict,
               counts: jax.Array) -> tuple[PyTree, dict]:
  """CWR*'s reset of the output layer for the classes trained on
  (``counts > 0``): consolidated columns where there are, else zero."""
  path, kernel = _kernel(ctx, state.params, state.model_state)
  restored = (counts > 0) & cl["has_consolidated"]
  kernel = jnp.where(restored, cl["consolidated"], jnp.zeros_like(kernel))
  return (_with_kernel(state.params, path, kernel),
          {**cl, "counts": counts, "model_state": state.model_state})


def _freeze_below_output(ctx: StrategyContext, grads: PyTree, params: PyTree,
                         model_state: PyTree, frozen: jax.Array) -> PyTree:
  """Zero gradients outside the output layer where ``frozen``."""
  path = output_layer_path(ctx, params, model_state)

  def visit(key_path, grad):
    if _keys(key_path)[:len(path)] == path:
      return grad
    return jnp.where(frozen, jnp.zeros_like(grad), grad)
  return jax.tree_util.tree_map_with_path(visit, grads)


def _cwr_end(ctx: StrategyContext, state, cl: dict,
             freeze_remaining_model: bool) -> tuple[PyTree, PyTree, dict]:
  """CWR*'s consolidation after an experience: ``(params, model_state,
  cl)``."""
  path, kernel = _kernel(ctx, state.params, state.model_state)
  current = cl["counts"] > 0
  n_entries = kernel.shape[0] * jnp.maximum(jnp.sum(current), 1)
  mean = jnp.sum(jnp.where(current, kernel, 0.0)) / n_entries
  # √(p/n) is 0 for a class never consolidated: the merge is then W_c − w̄.
  weight_past = jnp.where(
      cl["has_consolidated"],
      jnp.sqrt(cl["past_counts"] / jnp.maximum(cl["counts"], 1e-12)), 0.0)
  merged = ((cl["consolidated"] * weight_past + (kernel - mean))
            / (weight_past + 1.0)).astype(kernel.dtype)
  consolidated = jnp.where(current, merged, cl["consolidated"])
  has_consolidated = cl["has_consolidated"] | current
  model_state = state.model_state
  if freeze_remaining_model:
    model_state = jax.tree.map(
        lambda start, now: jnp.where(cl["experiences_trained"] > 0, start,
                                     now),
        cl["model_state"], model_state)
  return (_with_kernel(state.params, path,
                       jnp.where(has_consolidated, consolidated, kernel)),
          model_state,
          {**cl, "consolidated": consolidated,
           "has_consolidated": has_consolidated,
           "past_counts": jnp.where(current,
                                    cl["past_counts"] + cl["counts"],
                                    cl["past_counts"]),
           "experiences_trained": cl["experiences_trained"] + 1})


@flax.struct.dataclass
class Ar1State:
  """State of :func:`ar1`.

  Attributes:
    cwr: CWR*'s state (as :func:`cwr_star`'s, a dict).
    memory: The latent memory: output-layer inputs, experience-balanced.
    seen: The classes seen so far (those the latent rows' logits use).
    draw_key: PRNG key of the experience's latent draws.
    step: Optimizer steps taken in the experience (one draw each).
  """

  cwr: dict
  memory: buffers.Buffer
  seen: jax.Array
  draw_key: jax.Array
  step: jax.Array


def ar1(rm_sz: int = 1500, latent_mb_size: int = 0) -> Strategy:
  """AR1* with latent replay (Avalanche's ``AR1``), the latent layer being
  the output layer's input.

  Pellegrini et al., "Latent Replay for Real-Time Continual Learning",
  IROS 2020: CWR* on the output layer, everything below the latent layer
  frozen after the first experience, and a memory of latent activations
  replayed through the layers above it. Here the latent layer is the
  output layer's input (the model's penultimate features), so:

  * **CWR*** (:func:`cwr_star` with ``freeze_remaining_model``) consolidates
    the output layer; the classes it resets and merges at each experience
    are those with samples in the experience *or in the latent memory*,
    counted together (Avalanche adds the memory's counts to ``cur_j``).
  * **Latent memory.** After each experience, the features of its samples
    (evaluation mode, under the parameters the next experiences keep
    frozen) enter a memory of ``rm_sz`` rows with equal shares per
    experience, ``rm_sz / (k + 1)`` after ``k + 1`` experiences (AR1
    replaces that many random slots: equal shares in expectation).
  * **Steps.** From the second experience, each step's loss is the
    cross-entropy averaged over the ``B`` current samples and
    ``latent_mb_size`` latent rows, all run through the output layer alone
    on features computed in evaluation mode (AR1 runs its frozen layers in
    evaluation mode); the optimizer state is reset at the start of every
    experience after the first (AR1 builds a new SGD optimizer there; a
    learning-rate schedule goes on). Freezing zeroes gradients: weight
    decay in the optimizer would still move the frozen layers and stale
    the memory (mask it with ``optax.masked``).

  Differences from Avalanche, documented in
  ``docs/strategies_output_layer.md``: the latent layer is the output
  layer's input, not a layer inside the network (``latent_layer_num``,
  ``freeze_below_layer``), so everything but the output layer is frozen
  from the second experience and Synaptic Intelligence (``ewc_lambda``),
  which only protects layers above the latent one, has nothing to act on
  and is not offered; no Batch Renormalization (the model's own
  normalisation, whose statistics are frozen with the rest); the model,
  optimizer and mini-batch size are the user's (``B`` current samples plus
  ``latent_mb_size`` latent rows, where AR1 splits a fixed mini-batch);
  latent rows are drawn at random each step (AR1 walks the memory in
  order); the stored features are computed after the experience, not
  during its first epoch.

  Args:
    rm_sz: Latent memory capacity.
    latent_mb_size: Latent rows per step (at most ``rm_sz``); 0 for AR1's
      proportion, ``round(B · rm_sz / experience size)`` (between 1 and
      ``rm_sz``), with the stream's largest experience (AR1 takes each
      experience's own size: pass it for uneven streams).

  Returns:
    The strategy; its ``cl_state`` is an :class:`Ar1State`.

  Raises:
    ValueError: Bad arguments; (at ``init``) a stream with task labels, a
      context without the optimizer, or an output layer that is not a
      single ``Dense`` ending the model.

  Example:
    >>> ar1(rm_sz=1500).name
    'ar1'
  """
  rm_sz = _validation.check_positive_int("rm_sz", rm_sz)
  latent_mb_size = _validation.check_non_negative_int("latent_mb_size",
                                                      latent_mb_size)
  buffers.check_draw_size("latent_mb_size", latent_mb_size, "rm_sz", rm_sz)

  def latent_rows(ctx):
    return latent_mb_size or min(rm_sz, max(1, round(
        ctx.batch_size * rm_sz / max(ctx.experience_size, 1))))

  def init(ctx, params, key):
    refuse_task_labels(ctx, "ar1 consolidates one output layer for every "
                       "class, as Avalanche's AR1 (class-incremental "
                       "only); got a stream with task labels.")
    require_optimizer(ctx, "ar1 resets the optimizer state at each "
                      "experience after the first")
    model_state = init_model_state(ctx, key)
    # The memory first: its checks of the output layer name ar1.
    memory = latent.feature_memory("ar1", ctx, params, model_state, rm_sz,
                                   policy="experience_balanced")
    return Ar1State(
        cwr=_cwr_init(ctx, params, model_state), memory=memory,
        seen=jnp.zeros(ctx.n_classes, bool), draw_key=key,
        step=jnp.zeros((), jnp.int32))

  def begin_experience(ctx, state, data, key):
    # Here, not at the top: jaxcl.training's package imports the strategies.
    from jaxcl.training import optim
    cl = state.cl_state
    memory = cl.memory
    stored = jnp.zeros(ctx.n_classes, jnp.float32).at[memory.y].add(
        memory.valid.astype(jnp.float32), mode="drop")
    params, cwr = _cwr_begin(ctx, state, cl.cwr,
                             data.class_counts + stored)
    later = cwr["experiences_trained"] > 0
    opt_state = jax.tree.map(
        lambda fresh, old: jnp.where(later, fresh, old),
        optim.reset_optimizer_state(ctx.optimizer, state.opt_state, params,
                                    keep_schedules=True),
        state.opt_state)
    return state.replace(params=params, opt_state=opt_state,
                         cl_state=cl.replace(
                             cwr=cwr, seen=state.seen_classes, draw_key=key,
                             step=jnp.zeros((), jnp.int32)))

  def transform_grads(ctx, grads, state, batch, key):
    del batch, key
    return _freeze_below_output(
        ctx, grads, state.params, state.model_state,
        state.cl_state.cwr["experiences_trained"] > 0)

  def penalty(ctx, params, cl_state, batch, logits):
    cl = cl_state
    model_state = cl.cwr["model_state"]  # The frozen layers' statistics.
    logits_latent, rows = latent.replayed_logits(
        ctx, params, model_state, cl.memory,
        jax.random.fold_in(cl.draw_key, cl.step), latent_rows(ctx), cl.seen)
    # From the second experience the layers below the output layer are
    # frozen and run in evaluation mode, as AR1's: the current samples'
    # loss is taken on their evaluation-mode features, like the latent
    # rows', and replaces the loop's (taken back here).
    features = output_layer_call(ctx, params, model_state, batch["x"],
                                 batch["task"])[1]
    head = output_layer(ctx, params, model_state, batch["x"], batch["task"])
    current = ctx.loss(mask_logits(
        ctx, head(params, jax.lax.stop_gradient(features)), cl.seen,
        batch["task"]), batch)
    n, n_latent = jnp.sum(batch["weight"]), jnp.sum(rows["weight"])
    together = (jnp.sum(current * batch["weight"])
                + jnp.sum(ctx.loss(logits_latent, rows) * rows["weight"])
                ) / jnp.maximum(n + n_latent, 1.0)
    loop = weighted_mean(ctx.loss(logits, batch), batch["weight"])
    return jnp.where(cl.cwr["experiences_trained"] > 0, together - loop, 0.0)

  def after_step(ctx, old_state, new_state, grads, batch, key):
    del ctx, old_state, grads, batch, key
    cl = new_state.cl_state
    return cl.replace(step=cl.step + 1)

  def end_experience(ctx, state, data, key):
    cl = state.cl_state
    params, model_state, cwr = _cwr_end(ctx, state, cl.cwr, True)
    state = state.replace(params=params, model_state=model_state)
    return state.replace(cl_state=cl.replace(
        cwr=cwr, memory=latent.store_features(ctx, state, cl.memory, data,
                                              key)))

  return Strategy(name="ar1", init=init, begin_experience=begin_experience,
                  transform_grads=transform_grads, penalty=penalty,
                  after_step=after_step, end_experience=end_experience)


STRATEGIES = {"ar1": ar1, "cwr_star": cwr_star}
