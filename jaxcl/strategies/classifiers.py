"""Evaluation-time classifiers: nearest class mean (NCM) and FeCAM.

Avalanche's ``NCMClassifier`` and ``FeCAMClassifier`` replace a model's
head at prediction time; plugins keep their class statistics up to date
after each training experience (``CurrentDataNCMUpdate``,
``MemoryNCMUpdate``, ``NCMOracle`` and their FeCAM counterparts). Here each
is a strategy that trains nothing and fills ``predict`` and
``end_experience``, meant to be chained after a training strategy::

  chain(lwf(), fecam())
  chain(replay(), ncm(update="memory"))

Features are the model's penultimate activations
(:func:`jaxcl.strategies.model_utils.penultimate_features`, evaluation
mode), taken after each experience. ``update`` says from which samples:

* ``"current"``: the experience just trained. A class seen before moves
  half way to its new statistics, the others keep theirs (Avalanche's
  ``update_class_means_dict``).
* ``"memory"``: a class-balanced memory of ``mem_size`` samples, updated
  with the experience; all statistics are recomputed from it, replacing
  the previous ones.
* ``"oracle"``: every training sample seen so far, kept in a memory sized
  for the whole stream (``n_experiences × experience_size`` samples); all
  statistics recomputed from it. An upper bound, not a continual method.

FeCAM is Goswami et al., "FeCAM: Exploiting the Heterogeneity of Class
Distributions in Exemplar-Free Continual Learning", NeurIPS 2023: the
Mahalanobis distance to each class under its own covariance, made usable
by Tukey's power transform of the features, covariance shrinkage and
normalisation of the covariance to a correlation matrix.

Example:
  >>> import optax, jaxcl
  >>> from jaxcl.strategies import chain, naive
  >>> chain(naive(), fecam()).name
  'naive+fecam'
  >>> result = jaxcl.fit(jaxcl.models.MLP(10), chain(naive(), ncm()),
  ...                    optax.sgd(0.01),
  ...                    jaxcl.benchmarks.split_mnist())  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from jaxcl import _validation
from jaxcl.strategies import buffers
from jaxcl.strategies.base import Strategy, StrategyContext
from jaxcl.strategies.exemplars import (class_feature_means,
                                        merge_class_statistics,
                                        nearest_mean_logits)
from jaxcl.strategies.model_utils import (FAR_LOGIT, MASK_VALUE,
                                          feature_size,
                                          in_chunks, init_model_state,
                                          l2_normalize,
                                          penultimate_features,
                                          refuse_task_labels)

__all__ = [
    "FecamState",
    "NcmState",
    "UPDATES",
    "class_covariances",
    "fecam",
    "mahalanobis_logits",
    "ncm",
    "normalize_covariance",
    "shrink_covariance",
    "tukey_transform",
]

PyTree = Any

UPDATES = ("current", "memory", "oracle")
"""Where the class statistics come from after each experience."""

_CLASS_BLOCK = 16
"""Classes whose Mahalanobis distances :func:`mahalanobis_logits` computes
at once: its temporaries are ``[_CLASS_BLOCK, batch, F]``, not
``[n_classes, batch, F]`` (3.7 GiB for 964 classes, 1000 rows, F = 512)."""

_MOMENTUM = 0.5
"""Weight of a class's new statistics against its previous ones with
``update="current"`` (Avalanche's ``update_class_means_dict``)."""


# ------------------------------------------------------------ shared pieces


def _check_update(update: str, mem_size: int) -> tuple[str, int]:
  update = _validation.check_choice("update", update, UPDATES)
  return update, _validation.check_positive_int("mem_size", mem_size)


def _memory(ctx: StrategyContext, update: str,
            mem_size: int) -> buffers.Buffer | None:
  """The samples the statistics are computed from (none for "current")."""
  if update == "memory":
    return buffers.for_context(ctx, mem_size, policy="class_balanced")
  if update == "oracle":
    # Room for every sample of the stream: a reservoir keeps all it is
    # offered until full.
    return buffers.for_context(ctx, ctx.n_experiences * ctx.experience_size)
  return None


def _sources(memory: buffers.Buffer | None, data, key: jax.Array):
  """``(memory, (x, task, y, valid))``: the memory updated with ``data``
  and the rows to compute the statistics from."""
  if memory is None:
    return None, (data.x, data.task, data.y.astype(jnp.int32), data.valid)
  memory = buffers.add_experience(memory, key, data)
  return memory, (memory.x, memory.task, memory.y, memory.valid)


def _refuse_task_labels(ctx: StrategyContext, name: str) -> None:
  refuse_task_labels(ctx, f"{name} keeps one set of statistics per class "
                     "and ignores task labels, as Avalanche's classifier; "
                     "got a stream with task labels (one head per task): "
                     "build the benchmark without them (no return_task_id "
                     "/ --return-task-id).")


def _features(ctx: StrategyContext, state):
  def features(x, task):
    return penultimate_features(ctx, state.params, state.model_state, x,
                                task)
  return features


def _updated(update: str, old: PyTree, new: PyTree, has_old: jax.Array,
             present: jax.Array) -> tuple[PyTree, jax.Array]:
  """``(statistics, has_statistics)`` after an experience."""
  if update == "current":
    return (merge_class_statistics(old, new, has_old, present, _MOMENTUM),
            has_old | present)
  return new, present


# --------------------------------------------------------------------- NCM


@flax.struct.dataclass
class NcmState:
  """State of :func:`ncm`.

  Attributes:
    buffer: The samples of ``update="memory"`` or ``"oracle"``; None for
      ``"current"``.
    class_means: ``[n_classes, n_features]`` class means.
    has_mean: ``bool[n_classes]``, the classes that have a mean.
  """

  buffer: buffers.Buffer | None
  class_means: jax.Array
  has_mean: jax.Array


def ncm(update: str = "current", mem_size: int = 2000,
        normalize: bool = True) -> Strategy:
  """Nearest class mean prediction (Avalanche's ``NCMClassifier``).

  * **Class means** after each experience, from the samples ``update``
    names (module docstring): per class, the mean of the samples'
    penultimate features in evaluation mode; with ``normalize`` each
    feature row is scaled to unit norm first and the mean after
    (Avalanche's ``compute_class_means``).
  * **Merge.** ``"current"``: a class seen before takes the average of
    its old and new means, a new class its new mean, other classes keep
    theirs (``CurrentDataNCMUpdate``). ``"memory"`` and ``"oracle"``
    replace every mean (``MemoryNCMUpdate``, ``NCMOracle``).
  * **Prediction** (``predict`` slot): ``−‖φ(x) − μ_c‖``, with ``φ(x)``
    scaled to unit norm when ``normalize``; classes without a mean are
    masked (Avalanche's zero mean can win).

  Args:
    update: ``"current"``, ``"memory"`` or ``"oracle"``.
    mem_size: Capacity of the class-balanced memory (``"memory"`` only).
    normalize: Normalise features and means (``NCMClassifier``'s
      ``normalize``).

  Returns:
    The strategy; its ``cl_state`` is an :class:`NcmState`.

  Raises:
    ValueError: Bad arguments; (at ``init``) a stream with task labels or
      a model without an output layer to take features from.

  Example:
    >>> ncm(update="memory", mem_size=200).name
    'ncm'
  """
  update, mem_size = _check_update(update, mem_size)
  normalize = bool(_validation.check_bool("normalize", normalize))

  def init(ctx, params, key):
    _refuse_task_labels(ctx, "ncm")
    width = feature_size(ctx, params, init_model_state(ctx, key))
    return NcmState(
        buffer=_memory(ctx, update, mem_size),
        class_means=jnp.zeros((ctx.n_classes, width), jnp.float32),
        has_mean=jnp.zeros(ctx.n_classes, bool))

  def end_experience(ctx, state, data, key):
    cl = state.cl_state
    buffer, (x, task, y, valid) = _sources(cl.buffer, data, key)
    means, counts = class_feature_means(_features(ctx, state), x, task, y,
                                        valid, ctx.n_classes, normalize)
    if normalize:
      means = l2_normalize(means)
    means, has_mean = _updated(update, cl.class_means, means, cl.has_mean,
                               counts > 0)
    return state.replace(cl_state=NcmState(buffer=buffer, class_means=means,
                                           has_mean=has_mean))

  def predict(ctx, params, model_state, cl, x, task):
    return nearest_mean_logits(
        penultimate_features(ctx, params, model_state, x, task),
        cl.class_means, cl.has_mean, normalize)

  return Strategy(name="ncm", init=init, end_experience=end_experience,
                  predict=predict)


# ------------------------------------------------------------------- FeCAM


def tukey_transform(x: jax.Array, power: jax.Array | float) -> jax.Array:
  """Tukey's ladder of powers, ``sign(x) · |x|^λ`` (``λ > 0``).

  FeCAM's transform, which brings features closer to Gaussian; on the
  non-negative features of a ReLU network it is Avalanche's ``x ** λ``
  (which is NaN on negative values).

  Example:
    >>> import jax.numpy as jnp
    >>> tukey_transform(jnp.array([4.0, 0.0, -9.0]), 0.5).tolist()
    [2.0, 0.0, -3.0]
  """
  return jnp.sign(x) * jnp.abs(x) ** power


def class_covariances(features: jax.Array, y: jax.Array, valid: jax.Array,
                      n_classes: int
                      ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per class, the mean and the unbiased covariance of its valid rows.

  Sums are masked class by class (no scatter, whose float sums vary from
  run to run on GPUs), as :func:`class_feature_means`.

  Args:
    features: ``[n, F]``.
    y: ``int[n]`` classes.
    valid: ``bool[n]``, the rows to count.
    n_classes: Number of classes (static).

  Returns:
    ``(means, covariances, counts)``: ``[n_classes, F]``,
    ``[n_classes, F, F]`` (``Σ (φ − μ)(φ − μ)ᵀ / (n − 1)``, ``torch.cov``;
    0 for a class of fewer than 2 rows) and ``float32[n_classes]``.

  Example:
    >>> import jax.numpy as jnp
    >>> means, covs, counts = class_covariances(
    ...     jnp.array([[0.0, 0.0], [2.0, 2.0], [5.0, 5.0]]),
    ...     jnp.array([0, 0, 1]), jnp.array([True, True, True]), 2)
    >>> means.tolist(), covs[0].tolist(), counts.tolist()
    ([[1.0, 1.0], [5.0, 5.0]], [[2.0, 2.0], [2.0, 2.0]], [2.0, 1.0])
  """
  features = features.astype(jnp.float32)

  def one_class(c):
    member = valid & (y == c)
    n = jnp.sum(member).astype(jnp.float32)
    mean = jnp.sum(jnp.where(member[:, None], features, 0), 0) / jnp.maximum(
        n, 1.0)
    centred = jnp.where(member[:, None], features - mean, 0)
    cov = centred.T @ centred / jnp.maximum(n - 1.0, 1.0)
    return mean, cov, n

  return jax.lax.map(one_class, jnp.arange(n_classes))


def shrink_covariance(cov: jax.Array, shrink1: jax.Array | float,
                      shrink2: jax.Array | float) -> jax.Array:
  """FeCAM's covariance shrinkage (Avalanche's ``_shrink_cov``).

  ``Σ + γ₁ · mean(diag Σ) · I + γ₂ · m_off · (1 − I)``, with ``m_off`` the
  mean of the non-zero off-diagonal entries (0 without one).

  Example:
    >>> import jax.numpy as jnp
    >>> shrink_covariance(jnp.array([[2.0, 1.0], [1.0, 4.0]]), 1.0,
    ...                   1.0).tolist()
    [[5.0, 2.0], [2.0, 7.0]]
  """
  eye = jnp.eye(cov.shape[-1], dtype=cov.dtype)
  diag_mean = jnp.mean(jnp.diagonal(cov, axis1=-2, axis2=-1), -1)
  off = cov * (1 - eye)
  off_mean = jnp.sum(off, (-2, -1)) / jnp.maximum(
      jnp.sum(off != 0, (-2, -1)), 1)
  return (cov + shrink1 * diag_mean[..., None, None] * eye
          + shrink2 * off_mean[..., None, None] * (1 - eye))


def normalize_covariance(cov: jax.Array) -> jax.Array:
  """``Σ_ij / (σ_i σ_j)``, the correlation matrix (Avalanche's
  ``_normalize_cov``); a variable of variance 0 is left unscaled.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> np.asarray(normalize_covariance(jnp.array([[4.0, 2.0], [2.0, 9.0]])),
    ...            float).round(4).tolist()
    [[1.0, 0.3333], [0.3333, 1.0]]
  """
  var = jnp.diagonal(cov, axis1=-2, axis2=-1)
  sd = jnp.sqrt(jnp.where(var > 0, var, 1.0))
  return cov / (sd[..., :, None] * sd[..., None, :])


def _pinv(covs: jax.Array) -> jax.Array:
  """Pseudo-inverses of symmetric matrices (by ``eigh``, several times
  faster than an SVD), with ``torch.linalg.pinv``'s cut-off of ``F · eps``
  of the largest eigenvalue (Avalanche's; JAX's default is ten times
  larger)."""
  width = covs.shape[-1]
  return jnp.linalg.pinv(covs, rtol=width * jnp.finfo(covs.dtype).eps,
                         hermitian=True)


def mahalanobis_logits(features: jax.Array, means: jax.Array,
                       precisions: jax.Array,
                       has_stats: jax.Array) -> jax.Array:
  """FeCAM's logits: minus the squared Mahalanobis distances.

  ``−(x̂ − μ̂_c)ᵀ P_c (x̂ − μ̂_c)`` with ``x̂`` and ``μ̂_c`` scaled to unit
  norm and ``P_c`` the (pseudo-)inverse covariance of class ``c``
  (Avalanche's ``FeCAMClassifier._mahalanobis``). Classes without
  statistics get ``MASK_VALUE``; distances are capped just above
  ``−MASK_VALUE / 2`` so that a far class is never taken for a masked
  one. Classes are taken in blocks of 16 (a loop), so that the
  ``[batch, F]`` differences are never held for all classes at once.

  Args:
    features: ``[batch, F]`` (transformed features).
    means: ``[n_classes, F]`` class means.
    precisions: ``[n_classes, F, F]``.
    has_stats: ``bool[n_classes]``.

  Returns:
    ``[batch, n_classes]``.

  Example:
    >>> import jax.numpy as jnp
    >>> mahalanobis_logits(jnp.array([[1.0, 0.0]]), jnp.eye(2),
    ...                    jnp.stack([jnp.eye(2), 2 * jnp.eye(2)]),
    ...                    jnp.array([True, True])).tolist()
    [[-0.0, -4.0]]
  """
  features, means = l2_normalize(features), l2_normalize(means)
  n_classes = means.shape[0]
  block = min(_CLASS_BLOCK, n_classes)

  def one_block(i, distance):
    # The last block is shifted to end at the last class (some classes
    # computed twice, same values) rather than padded: padding or
    # lax.map's remainder would copy the precisions.
    start = jnp.minimum(i * block, n_classes - block)
    diff = features[None] - jax.lax.dynamic_slice_in_dim(means, start, block)[
        :, None]
    precision = jax.lax.dynamic_slice_in_dim(precisions, start, block)
    return jax.lax.dynamic_update_slice_in_dim(
        distance, jnp.einsum("kbf,kfg,kbg->bk", diff, precision, diff),
        start, 1)

  distance = jax.lax.fori_loop(
      0, -(-n_classes // block), one_block,
      jnp.zeros((features.shape[0], n_classes), precisions.dtype))
  return jnp.where(has_stats, jnp.maximum(-distance, FAR_LOGIT), MASK_VALUE)


@flax.struct.dataclass
class FecamState:
  """State of :func:`fecam`.

  Attributes:
    buffer: The samples of ``update="memory"`` or ``"oracle"``; None for
      ``"current"``.
    class_means: ``[n_classes, F]`` means of the transformed features.
    class_covs: ``[n_classes, F, F]`` their covariances, shrunk and
      normalised, kept for ``update="current"`` (merged with the next
      ones); None for the other updates, which recompute them.
    precisions: ``[n_classes, F, F]`` pseudo-inverses of ``class_covs``.
    has_stats: ``bool[n_classes]``, the classes that have statistics.
    shrink1: Diagonal shrinkage ``γ₁``.
    shrink2: Off-diagonal shrinkage ``γ₂``.
    tukey1: Tukey power ``λ``.
  """

  buffer: buffers.Buffer | None
  class_means: jax.Array
  class_covs: jax.Array | None
  precisions: jax.Array
  has_stats: jax.Array
  shrink1: jax.Array
  shrink2: jax.Array
  tukey1: jax.Array


def fecam(update: str = "current", mem_size: int = 2000, tukey: bool = True,
          shrinkage: bool = True, shrink1: float = 1.0, shrink2: float = 1.0,
          tukey1: float = 0.5, covnorm: bool = True) -> Strategy:
  """FeCAM prediction (Avalanche's ``FeCAMClassifier``; Goswami et al.,
  2023).

  * **Statistics** after each experience, from the samples ``update``
    names (module docstring): the penultimate features in evaluation mode,
    with ``tukey`` transformed by :func:`tukey_transform` (power
    ``tukey1``); per class their mean and unbiased covariance
    (:func:`class_covariances`); with ``shrinkage`` the covariance is
    shrunk by :func:`shrink_covariance` twice (Avalanche's
    ``apply_cov_transforms`` does), with ``covnorm`` then scaled to a
    correlation matrix (:func:`normalize_covariance`). A class needs two
    samples for a covariance.
  * **Merge.** ``"current"``: a class seen before moves half way to its
    new mean and covariance, others keep theirs (``CurrentDataFeCAMUpdate``
    with momentum 0.5). ``"memory"`` and ``"oracle"`` replace all
    statistics (Avalanche's ``MemoryFeCAMUpdate`` and ``FeCAMOracle`` merge
    with momentum 0.5 too; see the docs).
  * **Prediction** (``predict`` slot): :func:`mahalanobis_logits` of the
    transformed features, with the pseudo-inverse covariances computed
    once per experience; classes without statistics are masked.

  Args:
    update: ``"current"``, ``"memory"`` or ``"oracle"``.
    mem_size: Capacity of the class-balanced memory (``"memory"`` only).
    tukey: Apply Tukey's transform to the features.
    shrinkage: Shrink the covariances.
    shrink1: Diagonal shrinkage ``γ₁`` (>= 0).
    shrink2: Off-diagonal shrinkage ``γ₂`` (>= 0).
    tukey1: Tukey power ``λ`` (> 0; Avalanche's ``λ = 0``, a log, sends a
      ReLU feature's zeros to −inf).
    covnorm: Normalise the covariances to correlation matrices.

  Returns:
    The strategy; its ``cl_state`` is a :class:`FecamState`.

  Raises:
    ValueError: Bad arguments; (at ``init``) a stream with task labels, a
      model without an output layer to take features from, or
      ``update="memory"`` with ``mem_size`` under two samples per class of
      the stream.

  Example:
    >>> fecam(update="oracle", shrink1=0.5).name
    'fecam'
  """
  update, mem_size = _check_update(update, mem_size)
  tukey = bool(_validation.check_bool("tukey", tukey))
  shrinkage = bool(_validation.check_bool("shrinkage", shrinkage))
  covnorm = bool(_validation.check_bool("covnorm", covnorm))
  shrink1 = _validation.check_non_negative("shrink1", shrink1)
  shrink2 = _validation.check_non_negative("shrink2", shrink2)
  tukey1 = _validation.check_float32_positive("tukey1", tukey1)

  def transformed(cl, features):
    return tukey_transform(features, cl.tukey1) if tukey else features

  def init(ctx, params, key):
    _refuse_task_labels(ctx, "fecam")
    if update == "memory" and mem_size < 2 * ctx.n_classes:
      # A class-balanced memory then keeps one sample of some classes at
      # the end of the stream: no covariance, the class never predicted.
      raise ValueError(
          f"fecam(update='memory') needs mem_size >= 2 x n_classes = "
          f"{2 * ctx.n_classes} (two samples per class for a covariance), "
          f"got mem_size={mem_size}.")
    width = feature_size(ctx, params, init_model_state(ctx, key))
    square = (ctx.n_classes, width, width)
    # Only "current" merges the covariances with the next ones: the other
    # updates would keep n_classes x F^2 floats for nothing (None: no leaf,
    # which vmap, sweeps and checkpoints take; orbax refuses empty arrays).
    return FecamState(
        buffer=_memory(ctx, update, mem_size),
        class_means=jnp.zeros((ctx.n_classes, width), jnp.float32),
        class_covs=(jnp.zeros(square, jnp.float32) if update == "current"
                    else None),
        precisions=jnp.zeros(square, jnp.float32),
        has_stats=jnp.zeros(ctx.n_classes, bool),
        shrink1=jnp.float32(shrink1), shrink2=jnp.float32(shrink2),
        tukey1=jnp.float32(tukey1))

  def end_experience(ctx, state, data, key):
    cl = state.cl_state
    buffer, (x, task, y, valid) = _sources(cl.buffer, data, key)
    features = transformed(cl, in_chunks(_features(ctx, state), x, task))
    means, covs, counts = class_covariances(features, y, valid,
                                            ctx.n_classes)
    if shrinkage:
      for _ in range(2):
        covs = shrink_covariance(covs, cl.shrink1, cl.shrink2)
    if covnorm:
      covs = normalize_covariance(covs)
    (means, covs), has_stats = _updated(
        update, (cl.class_means, cl.class_covs), (means, covs), cl.has_stats,
        counts >= 2)
    precisions = jnp.where(has_stats[:, None, None], _pinv(covs), 0.0)
    return state.replace(cl_state=cl.replace(
        buffer=buffer, class_means=means,
        class_covs=covs if update == "current" else cl.class_covs,
        precisions=precisions, has_stats=has_stats))

  def predict(ctx, params, model_state, cl, x, task):
    features = penultimate_features(ctx, params, model_state, x, task)
    return mahalanobis_logits(transformed(cl, features), cl.class_means,
                              cl.precisions, cl.has_stats)

  return Strategy(name="fecam", init=init, end_experience=end_experience,
                  predict=predict)


STRATEGIES = {"ncm": ncm, "fecam": fecam}
