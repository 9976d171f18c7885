"""Deep Streaming LDA (Hayes & Kanan, CVPR-W 2020): a classifier without SGD.

The model's penultimate features (in evaluation mode) feed a linear
discriminant analysis fitted one sample at a time: one running mean per
class and one shared, running covariance. Nothing is trained by gradient
descent (the strategy zeroes every gradient), so the features are those of
the model's parameters as given: in practice a pretrained backbone, such
as Avalanche's ImageNet ResNet-18. Prediction uses the LDA scores in place
of the model's output layer.

Example:
  >>> streaming_lda(shrinkage_param=1e-4).name
  'streaming_lda'
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcl import _validation
from jaxcl.strategies.base import Strategy
from jaxcl.strategies.model_utils import (feature_size, init_model_state,
                                          penultimate_features)

__all__ = ["streaming_lda"]

PyTree = Any


def _fit_batch(stats: dict, features: jax.Array, labels: jax.Array,
               weight: jax.Array, update_covariance: bool) -> dict:
  """Avalanche's one-sample-at-a-time updates for a whole batch at once.

  Sample ``i`` (rows of weight 0 are skipped) sees its class's mean over
  that class's earlier samples, those earlier in the batch included, and
  adds ``N_i / (N_i + 1) · d dᵀ`` to ``N Σ`` (``N_i`` the samples before
  it, ``d`` its deviation from that mean): one matrix product instead of a
  loop of rank-one updates.
  """
  real = (weight > 0).astype(jnp.float32)
  size = labels.shape[0]
  # earlier[i, j]: real sample j comes before i and has i's label.
  earlier = ((labels[:, None] == labels[None, :])
             & (jnp.arange(size)[None, :] < jnp.arange(size)[:, None])
             ).astype(jnp.float32) * real[None, :]
  seen = stats["counts"][labels] + jnp.sum(earlier, axis=1)
  mean_before = jnp.where(
      seen[:, None] > 0,
      (stats["counts"][labels][:, None] * stats["means"][labels]
       + earlier @ features) / jnp.maximum(seen, 1.0)[:, None],
      stats["means"][labels])
  centred = features - mean_before
  before = stats["updates"] + jnp.cumsum(real) - real
  scale = real * before / (before + 1.0)
  total = stats["updates"] + jnp.sum(real)
  covariance = jnp.where(
      total > 0, (stats["updates"] * stats["covariance"]
                  + (centred * scale[:, None]).T @ centred)
      / jnp.maximum(total, 1.0), stats["covariance"])
  one_hot = jax.nn.one_hot(labels, stats["counts"].shape[0]) * real[:, None]
  counts = stats["counts"] + jnp.sum(one_hot, axis=0)
  means = jnp.where(
      counts[:, None] > 0,
      (stats["counts"][:, None] * stats["means"] + one_hot.T @ features)
      / jnp.maximum(counts, 1.0)[:, None], stats["means"])
  return {**stats, "means": means, "counts": counts, "updates": total,
          "covariance": covariance if update_covariance
          else stats["covariance"]}


def streaming_lda(shrinkage_param: float = 1e-4,
                  streaming_update_sigma: bool = True) -> Strategy:
  """Deep Streaming LDA, as Avalanche's ``StreamingLDA``.

  For each real sample ``(h, y)`` of each training batch, in order, with
  ``h`` the model's penultimate features in evaluation mode (the inputs of
  its output layer), ``μ_y`` and ``n_y`` class ``y``'s mean and count and
  ``N`` the samples fitted so far:

    ``Σ ← (N Σ + (h − μ_y)(h − μ_y)ᵀ · N / (N + 1)) / (N + 1)``,
    ``μ_y ← μ_y + (h − μ_y) / (n_y + 1)``, ``n_y ← n_y + 1``, ``N ← N + 1``.

  The updates of a batch are computed together, as these sequential ones
  would give them. Prediction: with ``Λ = ((1 − s) Σ + s I)⁻¹`` (``s`` the
  shrinkage, Avalanche's ``pinverse`` of this positive definite matrix),
  ``W = Λ Mᵀ`` for the means ``M`` (``[classes, features]``), the score of
  class ``c`` is ``h · W_c − ½ μ_c · W_c``.

  Every gradient is zeroed: with plain SGD the model's parameters stay as
  initialised (weight decay would still move them). The model state (batch
  norm's statistics) is the one of the experience's start, for the features
  of the fit and of the predictions, and is put back at the experience's
  end: Avalanche runs the model in evaluation mode throughout. With a
  benchmark augmentation, the fitted features are those of an augmented
  draw of the batch, as Avalanche fits its transformed mini-batch. Give the model the
  parameters it should extract features with, e.g. a pretrained backbone
  (a :class:`jaxcl.models.Model` whose ``init`` returns them). The training
  loss and accuracy that ``fit`` reports are those of the model's own
  (untrained) output layer; evaluation uses the LDA scores. Avalanche's
  ``fit_base`` (an offline first fit) is not offered.

  Args:
    shrinkage_param: ``s`` in ``(0, 1]``, the weight of the identity in the
      regularised covariance (Avalanche's default 1e-4; Avalanche also
      takes 0, a pseudo-inverse of a possibly singular covariance).
    streaming_update_sigma: Update the covariance with every sample; when
      False it keeps its initial value, all ones as in Avalanche (the first
      update multiplies it by ``N = 0``).

  Returns:
    The strategy. Its state holds ``means`` (``[classes, features]``),
    ``counts``, ``covariance`` (``[features, features]``), ``updates`` (the
    samples fitted), ``shrinkage`` (a float32 array, so a ``sweep`` can
    vary it) and ``model_state`` (the one the features are computed with).

  Example:
    >>> streaming_lda().name
    'streaming_lda'
  """
  shrinkage = _validation.check_in_range("shrinkage_param", shrinkage_param,
                                         low=0.0, high=1.0,
                                         low_inclusive=False)
  update_covariance = _validation.check_bool("streaming_update_sigma",
                                             streaming_update_sigma)

  def init(ctx, params, key):
    model_state = init_model_state(ctx, key)
    n_features = feature_size(ctx, params, model_state)
    return {"means": jnp.zeros((ctx.n_classes, n_features), jnp.float32),
            "counts": jnp.zeros((ctx.n_classes,), jnp.float32),
            "covariance": jnp.ones((n_features, n_features), jnp.float32),
            "updates": jnp.zeros((), jnp.float32),
            "shrinkage": jnp.float32(shrinkage),
            "model_state": model_state}

  def begin_experience(ctx, state, data, key):
    del ctx, data, key
    return state.replace(cl_state={**state.cl_state,
                                   "model_state": state.model_state})

  def transform_grads(ctx, grads, state, batch, key):
    del ctx, state, batch, key
    return jax.tree.map(jnp.zeros_like, grads)

  def after_step(ctx, old_state, new_state, grads, batch, key):
    del grads
    cl = new_state.cl_state
    x = batch["x"] if ctx.augment is None else ctx.augment(batch["x"], key)
    features = penultimate_features(ctx, old_state.params, cl["model_state"],
                                    x, batch["task"]).astype(jnp.float32)
    return _fit_batch(cl, features, batch["y"].astype(jnp.int32),
                      batch["weight"], update_covariance)

  def end_experience(ctx, state, data, key):
    # The training steps moved batch norm's statistics; the fit used these.
    del ctx, data, key
    return state.replace(model_state=state.cl_state["model_state"])

  def predict(ctx, params, model_state, cl, x, task):
    del model_state  # The one fitted on, also inside an experience.
    features = penultimate_features(ctx, params, cl["model_state"], x, task)
    s = cl["shrinkage"]
    identity = jnp.eye(cl["covariance"].shape[0], dtype=jnp.float32)
    # Avalanche's pinverse (no cut-off) is the inverse of this positive
    # definite matrix; a solve costs a hundredth of an SVD on a CPU.
    weights = jnp.linalg.solve((1.0 - s) * cl["covariance"] + s * identity,
                               cl["means"].T)
    bias = 0.5 * jnp.sum(cl["means"].T * weights, axis=0)
    return features.astype(jnp.float32) @ weights - bias

  return Strategy(name="streaming_lda", init=init,
                  begin_experience=begin_experience,
                  transform_grads=transform_grads, after_step=after_step,
                  end_experience=end_experience, predict=predict,
                  trains_with_optimizer=False)


STRATEGIES = {"streaming_lda": streaming_lda}
