"""Architectural strategies: CWR* (Copy Weights with Re-init).

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

import jax
import jax.numpy as jnp
import numpy as np

from jaxcl.strategies.base import Strategy, StrategyContext
from jaxcl.strategies.model_utils import init_model_state, output_layer_path

__all__ = ["cwr_star"]

PyTree = Any


def _keys(key_path) -> tuple[str, ...]:
  return tuple(getattr(k, "key", k) for k in key_path)


def _kernel(ctx: StrategyContext, params: PyTree, model_state: PyTree
            ) -> tuple[tuple[str, ...], jax.Array]:
  """The output layer's path and its ``[features, classes]`` kernel."""
  path = output_layer_path(ctx, params, model_state)
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
  refused. In a streamed experience (:mod:`jaxcl.training.streaming`) the
  per-class counts come from the hooks' subset, scaled to the experience
  (at least one for each class the experience holds).

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
    model_state = init_model_state(ctx, key)
    _, kernel = _kernel(ctx, params, model_state)
    return {"consolidated": jnp.zeros_like(kernel),
            "has_consolidated": jnp.zeros((ctx.n_classes,), bool),
            "past_counts": jnp.zeros((ctx.n_classes,), jnp.float32),
            "counts": jnp.zeros((ctx.n_classes,), jnp.float32),
            "experiences_trained": jnp.zeros((), jnp.int32),
            "model_state": model_state}

  def begin_experience(ctx, state, data, key):
    del key
    cl = state.cl_state
    per_class = jnp.zeros((ctx.n_classes,), jnp.float32).at[data.y].add(
        data.valid.astype(jnp.float32), mode="drop")
    # A streamed experience's hooks see a subset: scaled to the whole, and
    # at least one sample for each class of the experience (classes_mask
    # covers all of it), which the subset may have missed.
    counts = jnp.where(
        data.classes_mask,
        jnp.maximum(per_class * (data.experience_size
                                 / jnp.maximum(data.size, 1)), 1.0), 0.0)
    path, kernel = _kernel(ctx, state.params, state.model_state)
    restored = (counts > 0) & cl["has_consolidated"]
    kernel = jnp.where(restored, cl["consolidated"], jnp.zeros_like(kernel))
    return state.replace(
        params=_with_kernel(state.params, path, kernel),
        cl_state={**cl, "counts": counts, "model_state": state.model_state})

  def transform_grads(ctx, grads, state, batch, key):
    del batch, key
    path = output_layer_path(ctx, state.params, state.model_state)
    frozen = state.cl_state["experiences_trained"] > 0

    def visit(key_path, grad):
      if _keys(key_path)[:len(path)] == path:
        return grad
      return jnp.where(frozen, jnp.zeros_like(grad), grad)
    return jax.tree_util.tree_map_with_path(visit, grads)

  def end_experience(ctx, state, data, key):
    del data, key
    cl = state.cl_state
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
    return state.replace(
        params=_with_kernel(state.params, path,
                            jnp.where(has_consolidated, consolidated, kernel)),
        model_state=model_state,
        cl_state={**cl, "consolidated": consolidated,
                  "has_consolidated": has_consolidated,
                  "past_counts": jnp.where(current,
                                           cl["past_counts"] + cl["counts"],
                                           cl["past_counts"]),
                  "experiences_trained": cl["experiences_trained"] + 1})

  return Strategy(
      name="cwr_star", init=init, begin_experience=begin_experience,
      end_experience=end_experience,
      **({"transform_grads": transform_grads}
         if freeze_remaining_model else {}))


STRATEGIES = {"cwr_star": cwr_star}
