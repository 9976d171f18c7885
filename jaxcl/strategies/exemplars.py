"""Exemplar memories and iCaRL: per-experience slots, herding, nearest means.

Two fixed-shape memories of raw samples, allocated at full size in ``init`` so
that a stream compiles once:

* :class:`ExperienceMemory` (GEM, A-GEM): ``patterns_per_exp`` slots per
  experience of the stream with a ``valid`` mask, filled at the end of each
  experience with a random subset of its samples (:func:`store_experience`).
* The iCaRL exemplar set (:func:`icarl`): per-class sets chosen by
  :func:`herding` (Rebuffi et al., 2017), kept in one flat array with each
  exemplar's class and herding rank, so that shrinking a class to its first
  ``m`` exemplars is a mask.

Features, for herding and for the nearest-mean-of-exemplars classifier, are
the model's penultimate activations: the inputs of its output layer
(:func:`jaxcl.strategies.model_utils.penultimate_features`).

Example:
  >>> import optax, jaxcl
  >>> strategy = icarl(memory_size=200)
  >>> result = jaxcl.fit(jaxcl.models.MLP(num_classes=10), strategy,
  ...                    optax.sgd(0.05),
  ...                    jaxcl.benchmarks.split_mnist())  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxcl import _validation
from jaxcl.strategies import buffers
from jaxcl.strategies.base import Strategy, StrategyContext
from jaxcl.strategies.model_utils import (FAR_LOGIT, MASK_VALUE,
                                          feature_size,
                                          in_chunks, init_model_state,
                                          l2_normalize,
                                          penultimate_features,
                                          refuse_online_streams,
                                          visible_classes, weighted_mean)

__all__ = [
    "SELECTIONS",
    "ExperienceMemory",
    "ICaRLState",
    "add_experience_selected",
    "class_feature_means",
    "experience_memory",
    "herding",
    "herding_groups",
    "icarl",
    "merge_class_statistics",
    "nearest_mean_logits",
    "nearest_mean_predict",
    "selection_scores",
    "store_experience",
]

PyTree = Any



# ------------------------------------------------------ per-experience memory


@flax.struct.dataclass
class ExperienceMemory:
  """``patterns_per_exp`` samples for each experience of the stream.

  Slot ``i`` holds samples of the ``i``-th experience trained.

  Attributes:
    x: ``[n_experiences, patterns_per_exp, *input_shape]`` raw inputs.
    y: ``[n_experiences, patterns_per_exp]`` labels.
    task: ``[n_experiences, patterns_per_exp]`` task labels.
    valid: ``bool[n_experiences, patterns_per_exp]``: slots holding a sample.
    count: Number of experiences stored so far (int32 scalar).
  """

  x: jax.Array
  y: jax.Array
  task: jax.Array
  valid: jax.Array
  count: jax.Array

  @property
  def stored(self) -> jax.Array:
    """``bool[n_experiences]``: slots already filled (past experiences)."""
    return jnp.arange(self.valid.shape[0]) < self.count


def experience_memory(ctx: StrategyContext,
                      patterns_per_exp: int) -> ExperienceMemory:
  """An empty memory of ``patterns_per_exp`` slots per experience.

  Example:
    >>> from jaxcl.strategies.base import StrategyContext
    >>> ctx = StrategyContext(None, None, None, 4, 3, (2,), 8, 10)
    >>> experience_memory(ctx, 5).x.shape
    (3, 5, 2)
  """
  shape = (ctx.n_experiences, patterns_per_exp)
  return ExperienceMemory(
      x=jnp.zeros(shape + tuple(ctx.input_shape), ctx.x_dtype),
      y=jnp.zeros(shape, jnp.int32), task=jnp.zeros(shape, jnp.int32),
      valid=jnp.zeros(shape, bool), count=jnp.zeros((), jnp.int32))


def store_experience(memory: ExperienceMemory, data,
                     key: jax.Array) -> ExperienceMemory:
  """Fills the next experience's slots with a random subset of ``data``.

  ``min(patterns_per_exp, data.size)`` distinct samples are chosen uniformly
  (GEM and A-GEM keep ``patterns_per_exp`` random patterns per experience).

  Args:
    memory: The memory.
    data: The experience (:class:`jaxcl.training.ExperienceData`).
    key: PRNG key of the random subset.

  Returns:
    The memory with the experience's slots replaced.

  Example:
    >>> memory = store_experience(memory, data, key)  # doctest: +SKIP
  """
  patterns = memory.valid.shape[1]
  k = min(patterns, data.y.shape[0])
  rows, real = buffers.random_rows(key, data.valid, k)

  def slots(a, like):
    a = a[rows].astype(like.dtype)
    return jnp.pad(a, [(0, patterns - k)] + [(0, 0)] * (a.ndim - 1))

  i = memory.count
  return ExperienceMemory(
      x=memory.x.at[i].set(slots(data.x, memory.x)),
      y=memory.y.at[i].set(slots(data.y, memory.y)),
      task=memory.task.at[i].set(slots(data.task, memory.task)),
      valid=memory.valid.at[i].set(slots(real, memory.valid)),
      count=i + 1)


def class_feature_means(features: Callable[[jax.Array, jax.Array], jax.Array],
                        x: jax.Array, task: jax.Array, y: jax.Array,
                        valid: jax.Array, n_classes: int,
                        normalize: bool = True
                        ) -> tuple[jax.Array, jax.Array]:
  """Per class, the mean of the L2-normalised features of its valid rows.

  With ``normalize=False``, the mean of the raw features (Avalanche's
  ``compute_class_means`` with ``normalize=False``).

  The features are computed in chunks of rows (bounded memory). The sums
  are masked class by class, not a segment sum: GPUs scatter with atomic
  additions, whose order (and so a float sum) changes from run to run. A
  non-finite feature row spoils only its own class.

  Args:
    features: ``features(x, task) -> [rows, F]`` for a chunk of rows.
    x: ``[n, *input_shape]`` raw inputs.
    task: ``int[n]`` task labels.
    y: ``int[n]`` classes.
    valid: ``bool[n]``, the rows to count (a memory's filled slots).
    n_classes: Number of classes (static).
    normalize: Scale each feature row to unit norm first (static).

  Returns:
    ``(means, counts)``: ``[n_classes, F]`` means, not normalised again (0
    for a class without rows), and ``float32[n_classes]`` row counts.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> means, counts = class_feature_means(
    ...     lambda x, task: x, jnp.array([[3.0, 4.0], [0.0, 2.0], [9.0, 9.0]]),
    ...     jnp.zeros(3, int), jnp.array([0, 0, 1]),
    ...     jnp.array([True, True, False]), 2)
    >>> np.asarray(means, float).round(2).tolist(), counts.tolist()
    ([[0.3, 0.9], [0.0, 0.0]], [2.0, 0.0])
  """
  phi = in_chunks(features, x, task)
  if normalize:
    phi = l2_normalize(phi)
  member = valid & (y == jnp.arange(n_classes)[:, None])
  counts = jnp.sum(member, axis=1).astype(jnp.float32)
  sums = jax.lax.map(
      lambda rows: jnp.sum(jnp.where(rows[:, None], phi, 0), axis=0), member)
  return sums / jnp.maximum(counts, 1.0)[:, None], counts


def merge_class_statistics(old: PyTree, new: PyTree, has_old: jax.Array,
                           present: jax.Array,
                           momentum: float = 0.5) -> PyTree:
  """Per-class statistics updated with those of new data, as Avalanche's
  ``update_class_means_dict``.

  A class ``present`` in the new data takes its new statistics if it had
  none (``has_old`` False), else moves to ``momentum · new + (1 − momentum)
  · old``; the other classes keep theirs. With ``momentum=0.5`` that is
  ``NCMClassifier``'s average of the two means.

  Args:
    old: Pytree of ``[n_classes, ...]`` arrays, the statistics so far.
    new: The same structure, the statistics of the new data.
    has_old: ``bool[n_classes]``, classes that have statistics.
    present: ``bool[n_classes]``, classes of the new data.
    momentum: Weight of the new statistics.

  Returns:
    The merged statistics (the class mask is ``has_old | present``).

  Example:
    >>> import jax.numpy as jnp
    >>> merge_class_statistics(jnp.array([2.0, 2.0, 2.0]),
    ...                        jnp.array([4.0, 4.0, 4.0]),
    ...                        jnp.array([True, False, True]),
    ...                        jnp.array([True, True, False])).tolist()
    [3.0, 4.0, 2.0]
  """
  def merge(a, b):
    shape = (-1,) + (1,) * (a.ndim - 1)
    moved = jnp.where(has_old.reshape(shape),
                      momentum * b + (1.0 - momentum) * a, b)
    return jnp.where(present.reshape(shape), moved, a)

  return jax.tree.map(merge, old, new)


# ------------------------------------------------------------------- herding


def herding(features: jax.Array, member: jax.Array,
            n: jax.Array | int, normalize: bool = True) -> jax.Array:
  """Herding selection of exemplars (Rebuffi et al., 2017, Algorithm 4).

  On L2-normalised features ``φ``, with ``μ`` the mean of the member rows,
  step ``k = 1..n`` picks among the member rows not picked yet the one that
  brings the mean of the picked rows closest to ``μ``:
  ``p_k = argmin_i ‖μ − (φ_i + Σ_{j<k} φ_{p_j}) / k‖``.

  Args:
    features: ``[N, F]`` features.
    member: ``bool[N]``, the rows of the class.
    n: Number of exemplars to pick (may be traced; at most the members).
    normalize: Normalise the features first (iCaRL); Avalanche's
      ``HerdingSelectionStrategy`` herds the raw features.

  Returns:
    ``int32[N]``: the herding rank of each row (``k`` for the ``k``-th pick,
    0 for rows not picked).

  Example:
    >>> import jax.numpy as jnp
    >>> phi = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> herding(phi, jnp.array([True, True, True]), 2).tolist()
    [2, 0, 1]
  """
  phi = l2_normalize(features) if normalize else features
  return herding_groups(phi, jnp.where(member, 0, 1), jnp.reshape(n, (1,)))


def _group_means(features: jax.Array, group: jax.Array, n_groups: int
                 ) -> tuple[jax.Array, jax.Array]:
  """``(member, means)``: ``[N, G]`` one-hot memberships (rows of no group
  are all zero) and ``[G, F]`` mean features of every group."""
  member = jax.nn.one_hot(group, n_groups, dtype=features.dtype)
  count = jnp.maximum(jnp.sum(member, axis=0), 1.0)
  return member, member.T @ features / count[:, None]


def herding_groups(features: jax.Array, group: jax.Array,
                   n: jax.Array) -> jax.Array:
  """:func:`herding` in every group at once, on the features as given.

  The groups' picks advance together, one step of all of them per pick, so
  the sequential steps are the largest group's picks, not their sum.

  Args:
    features: ``[N, F]`` features (not normalised here).
    group: ``int32[N]``, each row's group; ``n.shape[0]`` or more for rows of
      no group.
    n: ``int32[G]``, picks per group (clipped to its rows; may be traced).

  Returns:
    ``int32[N]``: each row's rank within its group (``k`` for the ``k``-th
    pick, 0 for rows not picked).

  Example:
    >>> import jax.numpy as jnp
    >>> phi = jnp.array([[0.0], [1.0], [3.0], [5.0], [6.0]])
    >>> herding_groups(phi, jnp.array([0, 0, 0, 1, 1]),
    ...                jnp.array([2, 1])).tolist()
    [0, 1, 2, 1, 0]
  """
  member, mu = _group_means(features, group, n.shape[0])
  picks = jnp.minimum(n, jnp.sum(member, axis=0).astype(jnp.int32))
  sq_norm = jnp.sum(features * features, -1)
  no_pick = features.shape[0]

  def pick(k, carry):
    rank, total = carry
    # ‖k μ − Σ − φ_i‖² = k² × the squared distance of the mean to μ.
    target = (k + 1) * mu - total
    dist = sq_norm - 2 * target @ features.T
    dist = jnp.where((member.T > 0) & (rank == 0), dist, jnp.inf)
    i = jnp.argmin(dist, axis=1)
    active = k < picks
    rank = rank.at[jnp.where(active, i, no_pick)].set(k + 1, mode="drop")
    return rank, total + jnp.where(active[:, None], features[i], 0.0)

  rank = jnp.zeros(group.shape, jnp.int32)
  rank, _ = jax.lax.fori_loop(0, jnp.max(picks, initial=0), pick,
                              (rank, jnp.zeros_like(mu)))
  return rank


# ------------------------------------------ feature-based selection in buffers

SELECTIONS = ("random", "herding", "closest_to_center")
"""How :func:`add_experience_selected` chooses the exemplars a buffer keeps."""


def selection_scores(features: jax.Array, group: jax.Array, quota: jax.Array,
                     selection: str) -> jax.Array:
  """Priorities that keep each group's exemplars chosen from their features.

  Avalanche's feature-based ``ExemplarsSelectionStrategy``s, group by group:

  * ``"herding"`` (``HerdingSelectionStrategy``): :func:`herding` on the raw
    features of the group's rows, ``quota[g]`` picks; the ``k``-th pick
    scores ``-k`` and rows not picked score below every pick.
  * ``"closest_to_center"`` (``ClosestToCenterSelectionStrategy``): minus
    the squared distance of a row's features to the mean of its group's.

  Args:
    features: ``[n, F]`` features of the candidates.
    group: ``int32[n]``, each candidate's group; ``quota.shape[0]`` (or
      more) for rows that are not candidates.
    quota: ``int32[n_groups]``, how many rows each group keeps.
    selection: ``"herding"`` or ``"closest_to_center"``.

  Returns:
    ``float32[n]``: higher is kept first within a group (:func:`buffers.add`'s
    ``scores``).

  Example:
    >>> import jax.numpy as jnp
    >>> phi = jnp.array([[0.0], [2.0], [4.0], [5.0]])
    >>> scores = selection_scores(phi, jnp.array([0, 0, 0, 1]),
    ...                           jnp.array([1, 1]), "closest_to_center")
    >>> (-scores).tolist()
    [4.0, 0.0, 4.0, 0.0]
  """
  _validation.check_choice("selection", selection, SELECTIONS[1:])
  if selection == "herding":
    rank = herding_groups(features, group, quota)
    not_picked = -(group.shape[0] + 1)
    return jnp.where(rank > 0, -rank, not_picked).astype(jnp.float32)
  member, centers = _group_means(features, group, quota.shape[0])
  offset = features - member @ centers
  return -jnp.sum(offset * offset, axis=-1)


def add_experience_selected(
    buffer: buffers.Buffer, key: jax.Array, data,
    features: Callable[[jax.Array, jax.Array], jax.Array],
    selection: str = "random") -> buffers.Buffer:
  """Offers an experience; each group keeps exemplars chosen by ``selection``.

  ``"random"`` is :func:`buffers.add_experience` (random priorities drawn
  once, so a shrinking group keeps a nested subset). ``"herding"`` and
  ``"closest_to_center"`` are Avalanche's ``ParametricBuffer`` with that
  selection strategy: every group's exemplars are chosen again by their
  current ``features`` (:func:`selection_scores`), groups that received
  nothing included; as there, a group's stored and offered rows are first
  cut to the group's size before the offer, then the survivors to its new
  size.

  Args:
    buffer: The buffer (its policy says what a group is).
    key: PRNG key (random selection only).
    data: A :class:`jaxcl.training.ExperienceData`.
    features: ``(x, task) -> [rows, F]`` features of raw inputs, evaluated
      over the buffer and the experience in chunks.
    selection: One of :data:`SELECTIONS`.

  Returns:
    The updated buffer.

  Example:
    >>> buf = add_experience_selected(buf, key, data, features,
    ...                               "herding")  # doctest: +SKIP
  """
  _validation.check_choice("selection", selection, SELECTIONS)
  if selection == "random":
    return buffers.add_experience(buffer, key, data)
  offered, quota = buffers.offer_groups(buffer, data.y, data.index,
                                        data.valid)
  stored = jnp.where(buffer.valid, buffer.group, buffer.n_groups)
  group = jnp.concatenate([stored, offered])
  phi = jnp.concatenate([in_chunks(features, buffer.x, buffer.task),
                         in_chunks(features, data.x, data.task)])
  # Avalanche first cuts a group's stored and new samples to the group's
  # size before this experience, then the survivors to its new size, each
  # time choosing among what is left (its update_from_dataset, then resize).
  before = jnp.where(buffer.group_seen > 0, buffers.quotas(buffer), quota)
  survivors = buffers.kept(
      group, selection_scores(phi, group, before, selection), before)
  scores = selection_scores(
      phi, jnp.where(survivors, group, buffer.n_groups), quota, selection)
  scores = jnp.where(survivors, scores, jnp.finfo(jnp.float32).min)
  buffer = buffer.replace(priority=scores[:buffer.capacity])
  return buffers.add_experience(buffer, key, data,
                                scores=scores[buffer.capacity:])


# ------------------------------------------------------------------ NME rule


def nearest_mean_logits(features: jax.Array, means: jax.Array,
                        has_mean: jax.Array,
                        normalize: bool = True) -> jax.Array:
  """Nearest-mean-of-exemplars logits: ``−‖φ(x)/‖φ(x)‖ − μ_c‖`` per class.

  Classes without a mean get ``MASK_VALUE``, so ``argmax`` is the nearest
  class mean (Avalanche's ``NCMClassifier``). Distances are capped at
  ``−FAR_LOGIT`` (499) so that a far class (possible without
  ``normalize``) still ranks above the masked ones and is not counted as
  masked; normalised distances are at most 2 and never capped.

  Args:
    features: ``[batch, F]`` (normalised here).
    means: ``[n_classes, F]`` class means (normalised).
    has_mean: ``bool[n_classes]``.
    normalize: Scale the features to unit norm (``NCMClassifier``'s
      ``normalize``); with False, ``−‖φ(x) − μ_c‖`` (static).

  Returns:
    ``[batch, n_classes]`` logits.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> logits = nearest_mean_logits(jnp.array([[3.0, 0.0]]),
    ...                              jnp.array([[1.0, 0.0], [0.0, 1.0]]),
    ...                              jnp.array([True, True]))
    >>> np.asarray(logits, float).round(3).tolist()
    [[-0.0, -1.414]]
  """
  if normalize:
    features = l2_normalize(features)
  diff = features[:, None, :] - means[None]
  distance = jnp.sqrt(jnp.maximum(jnp.sum(diff * diff, -1), 0.0))
  return jnp.where(has_mean, jnp.maximum(-distance, FAR_LOGIT), MASK_VALUE)


def nearest_mean_predict(ctx: StrategyContext, params: PyTree,
                         model_state: PyTree, cl_state: Any, x: jax.Array,
                         task: jax.Array) -> jax.Array:
  """A ``predict`` slot: :func:`nearest_mean_logits` of the penultimate
  features, for a state with ``class_means`` and ``has_mean`` (iCaRL, SCR).

  Example:
    >>> Strategy(name="ncm", predict=nearest_mean_predict)  # doctest: +SKIP
  """
  return nearest_mean_logits(
      penultimate_features(ctx, params, model_state, x, task),
      cl_state.class_means, cl_state.has_mean)


# --------------------------------------------------------------------- iCaRL


@flax.struct.dataclass
class ICaRLState:
  """iCaRL's memory, classifier and teacher (fixed shapes for the stream).

  Attributes:
    x: ``[capacity, *input_shape]`` exemplars (raw inputs).
    y: ``[capacity]`` their classes.
    task: ``[capacity]`` their task labels.
    rank: ``int32[capacity]`` herding rank within the class (1 = first
      pick); 0 marks an empty slot.
    class_means: ``[n_classes, F]`` normalised exemplar means.
    has_mean: ``bool[n_classes]``, classes with exemplars.
    teacher_params: The model after the previous experience.
    teacher_model_state: Its model state.
    old_classes: ``bool[n_classes]``, classes of previous experiences.
    seen_classes: ``bool[n_classes]``, classes seen so far.
    n_current: Size of the current experience (float32).
  """

  x: jax.Array
  y: jax.Array
  task: jax.Array
  rank: jax.Array
  class_means: jax.Array
  has_mean: jax.Array
  teacher_params: PyTree
  teacher_model_state: PyTree
  old_classes: jax.Array
  seen_classes: jax.Array
  n_current: jax.Array


def _flipped_too(ctx: StrategyContext, x: jax.Array) -> bool:
  """Whether class means also average the exemplars' horizontal flips.

  Avalanche always does for image batches (from iCaRL's CIFAR code, whose
  training augmentation flips); jaxcl does when the benchmark has a training
  augmentation, so digits are not mirrored.
  """
  return x.ndim == 4 and ctx.augment is not None


def icarl(memory_size: int = 2000, fixed_memory: bool = True) -> Strategy:
  """iCaRL (Rebuffi et al., 2017) as Avalanche's ``ICaRL`` strategy.

  * **Exemplars.** After each experience every class of it gets an exemplar
    set chosen by :func:`herding` on its samples' normalised penultimate
    features (:func:`penultimate_features`). With ``fixed_memory`` a class
    keeps ``m = ceil(memory_size / n_seen_classes)`` exemplars (older sets are
    cut to their first ``m`` picks); otherwise ``memory_size`` per class.
  * **Replay.** Exemplars join the training data: each step appends
    ``batch_size`` exemplars drawn uniformly, weighted so that exemplars and
    current samples contribute in proportion to their counts, as in
    Avalanche's concatenated dataset.
  * **Loss.** iCaRL's binary cross-entropy replaces the task loss: targets are
    the previous model's sigmoid outputs on the classes of previous
    experiences and the one-hot label elsewhere, averaged over the classes
    seen so far. The protocol adds penalties to the task loss, so the penalty
    is ``BCE − CE`` (the task loss cancels, gradients included).
  * **Prediction.** Nearest mean of exemplars (``predict`` slot): logits are
    ``−‖φ(x) − μ_c‖`` with ``μ_c`` the normalised mean of the normalised
    features of class ``c``'s exemplars, averaged with that of their
    horizontal flips when the benchmark has a training augmentation (Avalanche
    always flips image inputs).

  Args:
    memory_size: Total exemplars (``fixed_memory``) or exemplars per class.
    fixed_memory: Share ``memory_size`` among the classes seen so far.

  Returns:
    The strategy; its state is an :class:`ICaRLState`.

  Raises:
    ValueError: Bad arguments; an online stream (``adapt_data``, before
      compiling): a mini-experience would replace its classes' exemplars by
      its own few samples and distil its own classes as old ones.

  Example:
    >>> icarl(memory_size=500).name
    'icarl'
  """
  memory_size = _validation.check_positive_int("memory_size", memory_size)
  fixed_memory = bool(_validation.check_bool("fixed_memory", fixed_memory))

  def capacity(ctx):
    # ceil(M / n) per class over n classes is at most M + n - 1 exemplars.
    if fixed_memory:
      return memory_size + ctx.n_classes - 1
    return memory_size * ctx.n_classes

  def init(ctx, params, key):
    model_state = init_model_state(ctx, key)
    n_features = feature_size(ctx, params, model_state)
    cap = capacity(ctx)
    return ICaRLState(
        x=jnp.zeros((cap, *ctx.input_shape), ctx.x_dtype),
        y=jnp.zeros(cap, jnp.int32), task=jnp.zeros(cap, jnp.int32),
        rank=jnp.zeros(cap, jnp.int32),
        class_means=jnp.zeros((ctx.n_classes, n_features), jnp.float32),
        has_mean=jnp.zeros(ctx.n_classes, bool),
        teacher_params=params, teacher_model_state=model_state,
        old_classes=jnp.zeros(ctx.n_classes, bool),
        seen_classes=jnp.zeros(ctx.n_classes, bool),
        n_current=jnp.ones((), jnp.float32))

  def begin_experience(ctx, state, data, key):
    del ctx, key
    return state.replace(cl_state=state.cl_state.replace(
        seen_classes=state.seen_classes,
        n_current=data.experience_size.astype(jnp.float32)))

  def transform_batch(ctx, cl, batch, key):
    valid = cl.rank > 0
    rows, real = buffers.random_rows(key, valid,
                                     min(ctx.batch_size, valid.shape[0]))
    # Each exemplar row stands for n_exemplars / k_real exemplars and each
    # current row for n_current / batch rows: the D ∪ E mixture's proportions.
    current = jnp.sum(batch["weight"][:ctx.batch_size])
    share = (jnp.sum(valid) / cl.n_current * current
             / jnp.maximum(jnp.sum(real), 1))
    return buffers.concat_batches(batch, {
        "x": cl.x[rows], "y": cl.y[rows], "task": cl.task[rows],
        "weight": jnp.where(real, share, 0.0)})

  def penalty(ctx, params, cl, batch, logits):
    del params
    teacher = ctx.logits(cl.teacher_params, cl.teacher_model_state,
                         batch["x"], batch["task"])
    targets = jnp.where(cl.old_classes, jax.nn.sigmoid(teacher),
                        jax.nn.one_hot(batch["y"], ctx.n_classes))
    bce = optax.sigmoid_binary_cross_entropy(logits, targets)
    # Over the seen classes; with task labels, the terms of other tasks'
    # classes, whose logits training masks, are constants and left out.
    compared = visible_classes(cl.seen_classes,
                               ctx.task_classes if ctx.mask_classes else None,
                               batch["task"])
    per_sample = (jnp.sum(jnp.where(compared, bce, 0.0), -1)
                  / jnp.maximum(jnp.sum(cl.seen_classes), 1))
    # The loop adds this to its own cross-entropy, which it cancels.
    return weighted_mean(per_sample - ctx.loss(logits, batch), batch["weight"])

  def end_experience(ctx, state, data, key):
    del key
    cl = state.cl_state

    def features(x, task):
      return penultimate_features(ctx, state.params, state.model_state, x,
                                  task)

    n_seen = jnp.sum(state.seen_classes)
    if fixed_memory:
      share = jnp.ceil(memory_size / jnp.maximum(n_seen, 1))
      per_class = share.astype(jnp.int32)
    else:
      per_class = jnp.int32(memory_size)
    # Older classes keep their first picks; this experience's classes are
    # (re)selected from its data.
    keep = (cl.rank > 0) & (cl.rank <= per_class) & ~data.classes_mask[cl.y]

    phi = l2_normalize(in_chunks(features, data.x, data.task))
    labels = data.y.astype(jnp.int32)
    picked = herding_groups(phi, jnp.where(data.valid, labels, ctx.n_classes),
                            jnp.full(ctx.n_classes, per_class))
    # The j-th picked row of the data goes to the j-th free slot.
    cap, k = keep.shape[0], min(keep.shape[0], labels.shape[0])
    chosen = picked > 0
    src = jnp.argsort(~chosen, stable=True)[:k]
    dst = jnp.argsort(keep, stable=True)[:k]
    ok = jnp.arange(k) < jnp.minimum(jnp.sum(chosen), jnp.sum(~keep))
    dst = jnp.where(ok, dst, cap)

    def write(old, new):
      return old.at[dst].set(new[src].astype(old.dtype), mode="drop")

    rank = jnp.where(keep, cl.rank, 0)
    cl = cl.replace(x=write(cl.x, data.x), y=write(cl.y, labels),
                    task=write(cl.task, data.task), rank=write(rank, picked))

    def class_mean(x):
      return class_feature_means(features, x, cl.task, cl.y, cl.rank > 0,
                                 ctx.n_classes)

    means, count = class_mean(cl.x)
    if _flipped_too(ctx, cl.x):
      means = (means + class_mean(jnp.flip(cl.x, axis=2))[0]) / 2
    means = l2_normalize(means)
    return state.replace(cl_state=cl.replace(
        class_means=means, has_mean=count > 0,
        teacher_params=state.params, teacher_model_state=state.model_state,
        old_classes=state.seen_classes))

  adapt_data = refuse_online_streams(
      "icarl picks each class's exemplars by herding over the experience that "
      "brought the class and distils from the model before it (Avalanche's "
      "ICaRL counts classes per experience and takes no online streams "
      "either): a mini-experience would replace its classes' exemplars by "
      "its own few samples and distil its own classes as old ones",
      "er_ace or replay(storage='class_balanced') for online training")
  return Strategy(name="icarl", init=init, adapt_data=adapt_data,
                  begin_experience=begin_experience,
                  transform_batch=transform_batch, penalty=penalty,
                  end_experience=end_experience, predict=nearest_mean_predict)
