"""Contrastive strategies: SCR (Supervised Contrastive Replay).

Mai et al., "Supervised Contrastive Replay: Revisiting the Nearest Class
Mean Classifier in Online Class-Incremental Continual Learning", CVPR
Workshops 2021, as Avalanche's ``SCR`` strategy. The network is trained by
the supervised contrastive loss of Khosla et al. (2020, :func:`scr_loss`)
on two views of batches of current and replayed samples, and predicts the
class whose mean feature, over the samples of a class-balanced memory, is
nearest (NCM).

Avalanche's ``SCRModel`` is two networks: a feature extractor, whose
L2-normalised features the NCM classifier reads, and a projection head on
them, whose outputs the loss reads. A jaxcl model is one network: its
penultimate features (the inputs of its output layer,
:func:`jaxcl.strategies.model_utils.penultimate_features`) play the
feature extractor and its outputs the projection head.

Example:
  >>> import optax, jaxcl
  >>> strategy = scr(mem_size=200, temperature=0.1)
  >>> strategy.name
  'scr'
  >>> result = jaxcl.fit(jaxcl.models.MLP(10), strategy, optax.sgd(0.1),
  ...                    jaxcl.benchmarks.split_mnist())  # doctest: +SKIP
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
from jaxcl.strategies.exemplars import (class_feature_means,
                                        merge_class_statistics,
                                        nearest_mean_predict)
from jaxcl.strategies.model_utils import (feature_size, init_model_state,
                                          l2_normalize, own_class_mask,
                                          penultimate_features,
                                          refuse_task_labels)
from jaxcl.strategies.rehearsal import (_check_batch_size_mem,
                                        supervised_contrastive)

__all__ = ["BASE_TEMPERATURE", "ScrState", "scr", "scr_loss"]

PyTree = Any

BASE_TEMPERATURE = 0.07
"""SupCon's base temperature: the loss is scaled by ``temperature / 0.07``
(Avalanche's ``SCR`` builds its ``SCRLoss`` with this default)."""

_MEAN_MOMENTUM = 0.5
"""Weight of a class's new mean against its previous one (Avalanche's
``NCMClassifier.update_class_means_dict`` default)."""


@flax.struct.dataclass
class ScrState:
  """State of :func:`scr`.

  Attributes:
    buffer: Class-balanced memory, updated with each experience after
      training on it.
    class_means: ``[n_classes, n_features]`` class means of the normalised
      penultimate features, the NCM classifier.
    has_mean: ``bool[n_classes]``, the classes that have a mean.
    model_state: The current model's state, for the loss's forward pass.
    key: Raw key data (``jax.random.key_data``) of the next step's second
      view and dropout; the loss hook gets no key of its own.
    temperature: Temperature of the loss.
  """

  buffer: buffers.Buffer
  class_means: jax.Array
  has_mean: jax.Array
  model_state: Any
  key: jax.Array
  temperature: jax.Array


def scr_loss(views: jax.Array, labels: jax.Array, weight: jax.Array,
             temperature: jax.Array,
             base_temperature: float = BASE_TEMPERATURE) -> jax.Array:
  """The supervised contrastive loss over several views (``SCRLoss``).

  Khosla et al., "Supervised Contrastive Learning", 2020, as Avalanche's
  ``SCRLoss`` (``contrast_mode="all"``): the ``V·n`` rows of the views are
  both anchors and contrasts. For anchor ``i`` of label ``y_i``, with
  ``P(i)`` the other rows of its label (its own other views included) and
  ``A(i)`` all the other rows::

    ℓ_i = −(T / T_base) · mean_{p ∈ P(i)} log(exp(z_i·z_p / T)
                                             / Σ_{a ∈ A(i)} exp(z_i·z_a / T))

  and the loss is the mean of ``ℓ_i`` over the anchors. Rows of weight 0
  (padding, empty memory draws) are neither anchors nor contrasts.

  Args:
    views: ``[V, n, d]``, the embeddings of each view (unit rows for the
      cosine similarities of the paper).
    labels: ``int[n]``.
    weight: ``[n]``; rows of weight 0 are left out.
    temperature: ``T > 0``.
    base_temperature: ``T_base > 0``.

  Returns:
    The loss (0 without a row).

  Example:
    >>> import jax.numpy as jnp
    >>> views = jnp.stack([jnp.eye(2), jnp.eye(2)])
    >>> round(float(scr_loss(views, jnp.array([0, 1]), jnp.ones(2), 1.0,
    ...                      1.0)), 4)
    0.5514
  """
  if views.ndim != 3 or views.shape[1] != labels.shape[0] or (
      weight.shape != labels.shape):
    raise ValueError(
        f"scr_loss takes views first: views [V, n, d] with labels and "
        f"weight [n]; got views {views.shape}, labels {labels.shape}, "
        f"weight {weight.shape} (Avalanche's SCRLoss takes [n, V, d]: "
        f"swap its first two axes).")
  n_views = views.shape[0]
  rows = views.reshape(-1, views.shape[-1])
  y = jnp.tile(labels, n_views)
  w = jnp.tile(weight, n_views)
  return supervised_contrastive(rows, y, w, rows, y, w, temperature,
                                base_temperature, exclude_self=True)


def _embed_views(ctx: StrategyContext, params: PyTree, cl: ScrState,
                 batch: dict) -> jax.Array:
  """``[2, n, d]``: the unit outputs of the batch and of its augmentation,
  in one forward pass in training mode (as Avalanche's, dropout included).
  """
  view_key, dropout_key = jax.random.split(jax.random.wrap_key_data(cl.key))
  x = batch["x"]
  augmented = x if ctx.augment is None else ctx.augment(x, view_key)
  n = x.shape[0]
  out = ctx.logits(params, cl.model_state, jnp.concatenate([x, augmented]),
                   jnp.tile(batch["task"], 2), train=True, key=dropout_key,
                   weight=jnp.tile(batch["weight"], 2))
  return l2_normalize(out.astype(jnp.float32)).reshape(2, n, -1)


def scr(mem_size: int = 100, temperature: float = 0.1,
        batch_size_mem: int = 0) -> Strategy:
  """Supervised Contrastive Replay (Avalanche's ``SCR``).

  * **Batches.** Each step appends ``batch_size_mem`` samples (the training
    batch size by default, as Avalanche's ``ReplayPlugin``) drawn uniformly
    from a class-balanced memory of ``mem_size`` samples, which is updated
    with the whole experience after training on it.
  * **Views.** The batch as the loop augments it and a second view, the
    benchmark's training augmentation applied to it once more (the
    identity without one, Avalanche's default ``augmentations``).
  * **Loss.** :func:`scr_loss` with ``temperature`` over the two views of
    every row, on the model's outputs scaled to unit norm (the projection
    head's outputs), from one forward pass of both views in training mode.
    The loop's cross-entropy is zeroed (through ``batch["class_mask"]``):
    ``fit``'s training loss is the SCR loss, and its training accuracy the
    argmax of the raw outputs, not a prediction.
  * **Class means.** After each experience, once the memory holds it: per
    class in the memory, the mean of its samples' L2-normalised
    penultimate features (evaluation mode), normalised; a class that had
    a mean moves half way to the new one (Avalanche's momentum 0.5).
  * **Prediction** (``predict`` slot): nearest class mean, logits
    ``−‖φ(x)/‖φ(x)‖ − μ_c‖``; classes without a mean are masked.

  Differences from Avalanche, documented in ``docs/strategies_rehearsal.md``:
  the feature extractor and projection head are the model's penultimate
  features and outputs (the output layer reads the features before their
  normalisation, and the loss reads the outputs after theirs, as Mai et
  al.'s code, where Avalanche's ``SCR`` passes the raw projection outputs
  to ``SCRLoss``); the loop's own forward pass counts for batch-norm
  statistics (the first view), the loss's pass does not; classes without
  a mean are never predicted (Avalanche's zero mean can win).

  Args:
    mem_size: Memory capacity.
    temperature: Temperature ``T`` of the loss (> 0).
    batch_size_mem: Memory samples per step; 0 means the training batch
      size (Avalanche's newer ``SCR`` defaults to 100).

  Returns:
    The strategy; its ``cl_state`` is a :class:`ScrState`.

  Raises:
    ValueError: Bad arguments; (at ``init``) a stream with task labels or
      a model without an output layer to take features from.

  Example:
    >>> scr(mem_size=200, temperature=0.07).name
    'scr'
  """
  mem_size = _validation.check_positive_int("mem_size", mem_size)
  temperature = _validation.check_float32_positive("temperature", temperature)
  if temperature / BASE_TEMPERATURE > float(np.finfo(np.float32).max):
    raise ValueError(f"temperature / {BASE_TEMPERATURE} = {temperature!r} / "
                     f"{BASE_TEMPERATURE} overflows float32; expected a "
                     "temperature below 2.3e37.")
  batch_size_mem = _check_batch_size_mem(batch_size_mem, mem_size)

  def init(ctx, params, key):
    refuse_task_labels(ctx, "scr keeps one mean per class and ignores task "
                       "labels, as Avalanche's SCR; got a stream with task "
                       "labels (one head per task).")
    state_key, loss_key = jax.random.split(key)
    model_state = init_model_state(ctx, state_key)
    width = (ctx.n_classes, feature_size(ctx, params, model_state))
    return ScrState(
        buffer=buffers.for_context(ctx, mem_size, policy="class_balanced"),
        class_means=jnp.zeros(width, jnp.float32),
        has_mean=jnp.zeros(ctx.n_classes, bool), model_state=model_state,
        key=jax.random.key_data(loss_key),
        temperature=jnp.float32(temperature))

  def begin_experience(ctx, state, data, key):
    del ctx, data, key
    return state.replace(cl_state=state.cl_state.replace(
        model_state=state.model_state))

  def transform_batch(ctx, cl, batch, key):
    out = buffers.concat_batches(batch, buffers.sample(
        cl.buffer, key, batch_size_mem or ctx.batch_size))
    # Rows of weight 0 that a strategy before it appended keep their classes.
    out["class_mask"] = own_class_mask(ctx, out, out["weight"] > 0)
    return out

  def penalty(ctx, params, cl, batch, logits):
    del logits
    return scr_loss(_embed_views(ctx, params, cl, batch), batch["y"],
                    batch["weight"], cl.temperature)

  def after_step(ctx, old_state, new_state, grads, batch, key):
    del ctx, old_state, grads, batch
    return new_state.cl_state.replace(model_state=new_state.model_state,
                                      key=jax.random.key_data(key))

  def end_experience(ctx, state, data, key):
    cl = state.cl_state
    buffer = buffers.add_experience(cl.buffer, key, data)

    def features(x, task):
      return penultimate_features(ctx, state.params, state.model_state, x,
                                  task)

    means, counts = class_feature_means(features, buffer.x, buffer.task,
                                        buffer.y, buffer.valid, ctx.n_classes)
    class_means = merge_class_statistics(
        cl.class_means, l2_normalize(means), cl.has_mean, counts > 0,
        _MEAN_MOMENTUM)
    return state.replace(cl_state=cl.replace(
        buffer=buffer, class_means=class_means,
        has_mean=cl.has_mean | (counts > 0)))

  return Strategy(name="scr", init=init, begin_experience=begin_experience,
                  transform_batch=transform_batch, penalty=penalty,
                  after_step=after_step, end_experience=end_experience,
                  predict=nearest_mean_predict)


STRATEGIES = {"scr": scr}
