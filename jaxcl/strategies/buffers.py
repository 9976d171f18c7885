"""Pure, fixed-capacity replay buffers that live inside ``jit``.

A :class:`Buffer` is a pytree of arrays allocated once at full capacity:
the stored samples (raw inputs ``x``, labels ``y``, task labels ``task`` and
optional per-sample ``extras`` such as DER's logits), a ``valid`` mask, and
counters of what was offered so far. Every operation is a pure function that
returns a new buffer with the same shapes, so a strategy can keep a buffer in
its ``cl_state`` for a whole stream without recompiling.

**One rule for every policy.** Each sample offered to the buffer receives a
priority (a uniform random number, or a score given by the caller) and a group
(nothing, its experience or its class, depending on the policy). The buffer
keeps, in each group, the samples of highest priority, up to the group's
quota. With random priorities this is Avalanche's storage:

* ``"reservoir"``: one group whose quota is the capacity: the top-``capacity``
  of uniform random weights over everything seen, i.e. a uniform random
  subset (Avalanche's ``ReservoirSamplingBuffer``).
* ``"experience_balanced"``: groups are experiences (Avalanche's
  ``ExperienceBalancedBuffer``).
* ``"class_balanced"``: groups are classes (Avalanche's ``ClassBalancedBuffer``).

Quotas are adaptive by default (Avalanche's ``adaptive_size=True``): the
capacity is split evenly over the groups seen so far and the remainder goes
one sample each to the first groups (lowest group id). With
``group_size=m`` every group keeps at most ``m`` samples instead (GEM's
``patterns_per_exp``, iCaRL without ``fixed_memory``). Because priorities are
drawn once, a group that shrinks keeps a nested random subset of what it had,
exactly as Avalanche's ``resize`` does.

**Insertion is one vectorised operation**, whatever the number of samples:
:func:`add` ranks the stored and offered samples per group (one sort over
``capacity + n`` scalars) and scatters the newly kept samples into the freed
slots, so inserting a whole padded experience or one mini-batch is one call.
Stored samples never move, so the data traffic is proportional to what
changes.

**Selection by scores or indices.** :func:`add` takes ``scores`` (higher is
kept first) instead of random priorities, and a ``valid`` mask that offers
only chosen rows; iCaRL's herding, for example, offers each class with
``scores = -herding_rank`` so that shrinking a class keeps its first
exemplars.

Sampling (:func:`sample`) draws uniformly without replacement among the valid
slots and returns rows in the batch format of the training loop (``x``,
``y``, ``task``, ``weight`` and the extras), ready for :func:`concat_batches`.

Example:
  >>> import jax, jax.numpy as jnp
  >>> buf = init(4, (2,), policy="class_balanced", n_groups=3)
  >>> buf = add(buf, jax.random.key(0), jnp.ones((6, 2)),
  ...           y=jnp.array([0, 0, 0, 1, 1, 1]), task=jnp.zeros(6, jnp.int32))
  >>> group_counts(buf).tolist(), int(size(buf))
  ([2, 2, 0], 4)
  >>> rows = sample(buf, jax.random.key(1), 3)
  >>> rows["x"].shape, rows["weight"].tolist()
  ((3, 2), [1.0, 1.0, 1.0])
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from jaxcl import _validation

__all__ = [
    "POLICIES",
    "Buffer",
    "add",
    "add_experience",
    "as_batch",
    "check_draw_size",
    "concat_batches",
    "context_groups",
    "for_context",
    "gather",
    "group_counts",
    "init",
    "kept",
    "offer_groups",
    "quotas",
    "random_rows",
    "sample",
    "sample_indices",
    "size",
]

POLICIES = ("reservoir", "experience_balanced", "class_balanced")
"""Storage policies: what a group is (nothing, an experience, a class)."""


def check_draw_size(name: str, value: int, capacity_name: str,
                    capacity: int, hint: str = "") -> None:
  """Refuses a draw per step larger than the memory it is drawn from
  (:func:`sample` draws without replacement).

  Example:
    >>> check_draw_size("batch_size_mem", 10, "mem_size", 200)
  """
  if value > capacity:
    raise ValueError(f"{name}={value} exceeds {capacity_name}={capacity}; "
                     f"expected at most the memory's capacity (its samples "
                     f"are drawn without replacement{hint}).")

_RESERVED = ("x", "y", "task", "weight")


@flax.struct.dataclass
class Buffer:
  """A fixed-capacity memory of samples (a pytree; see the module docstring).

  Attributes:
    x: Raw inputs ``[capacity, *input_shape]``.
    y: Labels ``int32[capacity]``.
    task: Task labels ``int32[capacity]``.
    extras: Extra per-sample arrays by name, each ``[capacity, ...]``.
    valid: ``bool[capacity]``: which slots hold a sample.
    group: ``int32[capacity]``: the group (experience or class) of each slot.
    priority: ``float32[capacity]``: the rank key each stored sample was
      given when offered (higher is kept first).
    seen: Number of (valid) samples offered so far.
    group_seen: ``int32[n_groups]``: samples offered so far per group.
    policy: One of :data:`POLICIES` (static).
    group_size: Fixed quota per group, or None for adaptive quotas (static).
  """

  x: jax.Array
  y: jax.Array
  task: jax.Array
  extras: dict[str, jax.Array]
  valid: jax.Array
  group: jax.Array
  priority: jax.Array
  seen: jax.Array
  group_seen: jax.Array
  policy: str = flax.struct.field(pytree_node=False, default="reservoir")
  group_size: int | None = flax.struct.field(pytree_node=False, default=None)

  @property
  def capacity(self) -> int:
    """Number of slots."""
    return self.y.shape[-1]

  @property
  def n_groups(self) -> int:
    """Number of possible groups (1 for a reservoir)."""
    return self.group_seen.shape[-1]


def init(
    capacity: int,
    input_shape: Sequence[int],
    x_dtype: Any = jnp.float32,
    *,
    policy: str = "reservoir",
    n_groups: int = 1,
    group_size: int | None = None,
    extras: Mapping[str, jax.ShapeDtypeStruct] | None = None,
) -> Buffer:
  """Allocates an empty buffer.

  Args:
    capacity: Number of slots.
    input_shape: Shape of one raw input.
    x_dtype: Dtype of the raw inputs.
    policy: One of :data:`POLICIES`.
    n_groups: Number of possible groups: experiences of the stream for
      ``"experience_balanced"``, classes for ``"class_balanced"``; ignored
      (1) for ``"reservoir"``.
    group_size: Fixed quota per group instead of the adaptive split; needs
      ``n_groups * group_size <= capacity``.
    extras: Extra per-sample arrays to store: name -> per-sample shape and
      dtype (``jax.ShapeDtypeStruct``).

  Returns:
    An empty :class:`Buffer`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> buf = init(10, (3,), extras={
    ...     "logits": jax.ShapeDtypeStruct((5,), jnp.float32)})
    >>> buf.extras["logits"].shape, int(size(buf))
    ((10, 5), 0)
  """
  capacity = _validation.check_positive_int("capacity", capacity)
  policy = _validation.check_choice("policy", policy, POLICIES)
  n_groups = (1 if policy == "reservoir"
              else _validation.check_positive_int("n_groups", n_groups))
  if group_size is not None:
    group_size = _validation.check_positive_int("group_size", group_size)
    if n_groups * group_size > capacity:
      raise ValueError(
          f"group_size={group_size} for {n_groups} groups needs "
          f"{n_groups * group_size} slots; expected at most capacity="
          f"{capacity}.")
  extras = dict(extras or {})
  for name in extras:
    if name in _RESERVED:
      raise ValueError(f"extras name {name!r} is reserved; use a name other "
                       f"than {', '.join(_RESERVED)}.")
  return Buffer(
      x=jnp.zeros((capacity, *input_shape), x_dtype),
      y=jnp.zeros(capacity, jnp.int32),
      task=jnp.zeros(capacity, jnp.int32),
      extras={k: jnp.zeros((capacity, *s.shape), s.dtype)
              for k, s in extras.items()},
      valid=jnp.zeros(capacity, bool),
      group=jnp.zeros(capacity, jnp.int32),
      priority=jnp.zeros(capacity, jnp.float32),
      seen=jnp.zeros((), jnp.int32),
      group_seen=jnp.zeros(n_groups, jnp.int32),
      policy=policy,
      group_size=group_size,
  )


def for_context(ctx, capacity: int, *, policy: str = "reservoir",
                group_size: int | None = None,
                extras: Mapping[str, jax.ShapeDtypeStruct] | None = None
                ) -> Buffer:
  """:func:`init` with shapes and group count taken from a strategy context.

  Args:
    ctx: A :class:`jaxcl.strategies.StrategyContext` (input shape and dtype,
      number of classes and experiences).
    capacity: Number of slots.
    policy: One of :data:`POLICIES`.
    group_size: Fixed quota per group (see :func:`init`).
    extras: Extra per-sample arrays (see :func:`init`).

  Returns:
    An empty :class:`Buffer`.

  Example:
    >>> buf = for_context(ctx, 200, policy="class_balanced")  # doctest: +SKIP
    >>> buf.n_groups == ctx.n_classes  # doctest: +SKIP
    True
  """
  return init(capacity, ctx.input_shape, ctx.x_dtype, policy=policy,
              n_groups=context_groups(ctx, policy, capacity, group_size),
              group_size=group_size, extras=extras)


def context_groups(ctx, policy: str, capacity: int,
                   group_size: int | None = None) -> int:
  """The number of groups of a ``policy`` memory on ``ctx``'s stream: its
  experiences, its classes or one.

  Warns when adaptive experience-balanced quotas run out of slots: with
  more train experiences than ``capacity`` (an online stream's
  mini-experiences), experiences from number ``capacity`` on get no slot
  and the memory stops changing, as Avalanche's ``ExperienceBalancedBuffer``
  does.

  Example:
    >>> context_groups(ctx, "class_balanced", 200)  # doctest: +SKIP
    10
  """
  if (policy == "experience_balanced" and group_size is None
      and ctx.n_experiences > capacity):
    warnings.warn(
        f"An experience-balanced memory of {capacity} slots over "
        f"{ctx.n_experiences} train experiences gives experiences "
        f"{capacity} to {ctx.n_experiences - 1} no slot: from there on it "
        f"stops changing (as Avalanche's ExperienceBalancedBuffer). On "
        f"online streams (split_online) a class-balanced memory or a "
        f"reservoir keeps taking recent samples (replay's "
        f"storage='class_balanced', CLI --storage class_balanced).",
        RuntimeWarning, stacklevel=2)
  return {"reservoir": 1, "experience_balanced": ctx.n_experiences,
          "class_balanced": ctx.n_classes}.get(policy, 1)


def _quotas(group_seen: jax.Array, capacity: int,
            group_size: int | None) -> jax.Array:
  seen = group_seen > 0
  if group_size is not None:
    return jnp.where(seen, group_size, 0)
  n = jnp.maximum(jnp.sum(seen), 1)
  order = jnp.cumsum(seen) - 1
  return jnp.where(seen, capacity // n + (order < capacity % n), 0)


def quotas(buffer: Buffer) -> jax.Array:
  """The current quota of every group: ``int32[n_groups]``.

  Adaptive quotas split the capacity evenly over the groups seen so far, the
  remainder going one each to the lowest group ids (Avalanche's
  ``get_group_lengths``); unseen groups get 0.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> buf = init(10, (1,), policy="class_balanced", n_groups=4)
    >>> buf = add(buf, jax.random.key(0), jnp.zeros((3, 1)),
    ...           y=jnp.array([0, 2, 3]), task=jnp.zeros(3, jnp.int32))
    >>> quotas(buf).tolist()
    [4, 0, 3, 3]
  """
  return _quotas(buffer.group_seen, buffer.capacity, buffer.group_size)


def size(buffer: Buffer) -> jax.Array:
  """Number of samples stored (an int32 scalar).

  Example:
    >>> int(size(init(5, (1,))))
    0
  """
  return jnp.sum(buffer.valid, dtype=jnp.int32)


def group_counts(buffer: Buffer) -> jax.Array:
  """Number of samples stored per group: ``int32[n_groups]``.

  Example:
    >>> group_counts(init(5, (1,))).tolist()
    [0]
  """
  return jnp.zeros(buffer.n_groups, jnp.int32).at[buffer.group].add(
      buffer.valid.astype(jnp.int32))


def _groups(buffer: Buffer, y: jax.Array, experience) -> jax.Array:
  if buffer.policy == "class_balanced":
    return y.astype(jnp.int32)
  if buffer.policy == "experience_balanced":
    return jnp.broadcast_to(jnp.asarray(experience, jnp.int32), y.shape)
  return jnp.zeros_like(y, jnp.int32)


def _offer(buffer: Buffer, y: jax.Array, experience,
           valid: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """The offered rows' groups (``n_groups`` for rows ignored like padding)
  and every group's count of samples seen once they are offered."""
  valid = (jnp.ones(y.shape, bool) if valid is None
           else jnp.asarray(valid, bool))
  group = _groups(buffer, y, experience)
  valid = valid & (group >= 0) & (group < buffer.n_groups)
  # Group n_groups marks padding: it is never counted nor kept.
  group = jnp.where(valid, group, buffer.n_groups)
  return group, buffer.group_seen.at[group].add(1, mode="drop")


def offer_groups(buffer: Buffer, y: jax.Array, experience: jax.Array | int = 0,
                 valid: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
  """The groups of rows offered to :func:`add`, and the quotas after it.

  For callers that choose which rows to keep themselves (feature-based
  exemplar selection): they rank each group's candidates and pass the
  ranking to :func:`add` as ``scores``.

  Args:
    buffer: The buffer.
    y: Labels ``[n]`` of the rows to offer.
    experience: Their experience (scalar or ``[n]``), as for :func:`add`.
    valid: ``bool[n]``, the rows to offer (default: all).

  Returns:
    ``(group, quota)``: ``int32[n]``, each row's group, ``n_groups`` for rows
    that :func:`add` would ignore (padding, groups out of range); and
    ``int32[n_groups]``, every group's quota once the rows are offered.

  Example:
    >>> import jax.numpy as jnp
    >>> buf = init(4, (1,), policy="class_balanced", n_groups=3)
    >>> group, quota = offer_groups(buf, jnp.array([0, 2, 5]))
    >>> group.tolist(), quota.tolist()
    ([0, 2, 3], [2, 0, 2])
  """
  group, group_seen = _offer(buffer, jnp.asarray(y), experience, valid)
  return group, _quotas(group_seen, buffer.capacity, buffer.group_size)


def kept(group: jax.Array, priority: jax.Array, quota: jax.Array
         ) -> jax.Array:
  """``bool[m]``: the rows that rank within their group's quota.

  Args:
    group: ``int32[m]``, each row's group; ``quota.shape[0]`` or more for
      rows of no group (never kept).
    priority: ``float[m]``, higher first.
    quota: ``int32[n_groups]``.

  Example:
    >>> import jax.numpy as jnp
    >>> kept(jnp.array([0, 0, 1, 2]), jnp.array([0.1, 0.9, 0.5, 0.7]),
    ...      jnp.array([1, 1])).tolist()
    [False, True, True, False]
  """
  n_groups = quota.shape[0]
  group = jnp.where(group < n_groups, group, n_groups)
  return _keep_top(group, priority, jnp.append(quota, 0))


def _keep_top(group: jax.Array, priority: jax.Array,
              quota: jax.Array) -> jax.Array:
  """``bool[m]``: whether each candidate ranks within its group's quota."""
  order = jnp.lexsort((-priority, group))
  sorted_group = group[order]
  # Sorted by group, a candidate's rank in its group is its position minus
  # the number of candidates in lower groups.
  counts = jnp.zeros(quota.shape[0], jnp.int32).at[group].add(1)
  first = jnp.cumsum(counts) - counts
  rank = jnp.arange(group.shape[0]) - first[sorted_group]
  kept = rank < quota[sorted_group]
  return jnp.zeros(group.shape[0], bool).at[order].set(kept)


def add(
    buffer: Buffer,
    key: jax.Array,
    x: jax.Array,
    y: jax.Array,
    task: jax.Array,
    *,
    valid: jax.Array | None = None,
    experience: jax.Array | int = 0,
    extras: Mapping[str, jax.Array] | None = None,
    scores: jax.Array | None = None,
) -> Buffer:
  """Offers ``n`` samples to the buffer in one vectorised step.

  Every valid row receives a priority (uniform random, or ``scores``) and
  competes with the stored samples of its group; each group keeps its
  top-quota samples (see the module docstring). Rows with ``valid=False``
  (padding) are ignored and not counted as seen.

  Args:
    buffer: The buffer.
    key: PRNG key for the random priorities (unused when ``scores`` is given).
    x: Raw inputs ``[n, *input_shape]``.
    y: Labels ``[n]``.
    task: Task labels ``[n]``.
    valid: ``bool[n]``: rows to offer (default: all). Offering only chosen
      rows is how a caller selects samples by index.
    experience: The experience the rows come from (scalar or ``[n]``); the
      group of ``"experience_balanced"`` buffers. Rows whose group (class or
      experience) is not below ``n_groups`` are ignored like padding.
    extras: Values of the buffer's extra arrays for these rows (all of them).
    scores: ``float[n]`` priorities replacing the random ones (higher is kept
      first; must be comparable with the priorities already stored in the
      same groups).

  Returns:
    The updated buffer.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> buf = init(2, (1,))
    >>> buf = add(buf, jax.random.key(0), jnp.arange(4.)[:, None],
    ...           jnp.zeros(4, jnp.int32), jnp.zeros(4, jnp.int32),
    ...           scores=jnp.array([0.1, 0.9, 0.5, 0.2]))
    >>> sorted(buf.x[:, 0].tolist()), int(buf.seen)
    ([1.0, 2.0], 4)
  """
  extras = dict(extras or {})
  if set(extras) != set(buffer.extras):
    raise ValueError(f"add: extras {sorted(extras)} given; the buffer stores "
                     f"{sorted(buffer.extras)}, expected values for all of "
                     "them.")
  y = jnp.asarray(y)
  _check_rows(buffer, x, y, task, valid, experience, extras, scores)
  n, capacity, n_groups = y.shape[0], buffer.capacity, buffer.n_groups
  group, group_seen = _offer(buffer, y, experience, valid)
  valid = group < n_groups
  priority = (jax.random.uniform(key, (n,)) if scores is None
              else jnp.asarray(scores, jnp.float32))
  quota = jnp.append(_quotas(group_seen, capacity, buffer.group_size), 0)
  keep = _keep_top(
      jnp.concatenate([jnp.where(buffer.valid, buffer.group, n_groups), group]),
      jnp.concatenate([buffer.priority, priority]), quota)
  keep_old, keep_new = keep[:capacity], keep[capacity:]
  # The i-th newly kept row goes to the i-th freed slot; there are always
  # enough freed slots because the quotas add up to at most the capacity.
  k = min(n, capacity)
  rows = jnp.argsort(~keep_new, stable=True)[:k]
  free = jnp.argsort(keep_old, stable=True)[:k]
  slots = jnp.where(keep_new[rows], free, capacity)

  def put(stored, offered):
    offered = jnp.asarray(offered).astype(stored.dtype)
    return stored.at[slots].set(offered[rows], mode="drop")

  return buffer.replace(
      x=put(buffer.x, x),
      y=put(buffer.y, y),
      task=put(buffer.task, task),
      extras={k: put(v, extras[k]) for k, v in buffer.extras.items()},
      valid=keep_old.at[slots].set(True, mode="drop"),
      group=put(buffer.group, group),
      priority=put(buffer.priority, priority),
      seen=buffer.seen + jnp.sum(valid, dtype=jnp.int32),
      group_seen=group_seen,
  )


def _check_rows(buffer: Buffer, x, y, task, valid, experience, extras,
                scores) -> None:
  """Shapes and label dtypes of ``add``'s rows against the buffer's slots.

  JAX would clamp missing rows and broadcast wrong sample shapes, storing
  other samples' inputs under a label without an error.
  """
  if jnp.ndim(y) != 1 or not jnp.issubdtype(jnp.result_type(y), jnp.integer):
    raise ValueError(f"add: y must be integer labels of shape [n], got shape "
                     f"{jnp.shape(y)} and dtype {jnp.result_type(y)}.")
  n = jnp.shape(y)[0]
  expected = {"x": (x, (n,) + buffer.x.shape[1:]), "task": (task, (n,))}
  expected.update({f"extras[{name!r}]": (extras[name], (n,) + v.shape[1:])
                   for name, v in buffer.extras.items()})
  for name, value in (("valid", valid), ("scores", scores)):
    if value is not None:
      expected[name] = (value, (n,))
  if experience is not None and jnp.ndim(experience) != 0:
    expected["experience"] = (experience, (n,))
  for name, (value, shape) in expected.items():
    if tuple(jnp.shape(value)) != shape:
      raise ValueError(f"add: {name} has shape {tuple(jnp.shape(value))}; "
                       f"expected {shape} (one row per label of y, shaped "
                       "as the buffer's slots).")


def add_experience(buffer: Buffer, key: jax.Array, data, *,
                   extras: Mapping[str, jax.Array] | None = None,
                   scores: jax.Array | None = None) -> Buffer:
  """Offers a whole padded experience (an ``ExperienceData``) in one step.

  Args:
    buffer: The buffer.
    key: PRNG key for the random priorities.
    data: A :class:`jaxcl.training.ExperienceData` (``x``, ``y``, ``task``,
      ``valid``, ``index``).
    extras: Per-row values of the buffer's extra arrays.
    scores: Priorities replacing the random ones (see :func:`add`).

  Returns:
    The updated buffer.

  Example:
    >>> buf = add_experience(buf, key, data)  # doctest: +SKIP
  """
  return add(buffer, key, data.x, data.y, data.task, valid=data.valid,
             experience=data.index, extras=extras, scores=scores)


def random_rows(key: jax.Array, valid: jax.Array,
                k: int) -> tuple[jax.Array, jax.Array]:
  """``k`` distinct rows drawn uniformly among the ``valid`` ones.

  Args:
    key: PRNG key.
    valid: ``bool[n]``, the rows that may be drawn.
    k: How many rows (static, at most ``n``).

  Returns:
    ``(rows, real)``: ``int[k]`` row indices and ``bool[k]``, False for the
    draws beyond the number of valid rows (their index is arbitrary).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> rows, real = random_rows(jax.random.key(0),
    ...                          jnp.array([True, False, True]), 3)
    >>> sorted(rows[real].tolist()), real.tolist()
    ([0, 2], [True, True, False])
  """
  score = jnp.where(valid, jax.random.uniform(key, valid.shape), -1.0)
  _, rows = jax.lax.top_k(score, k)
  return rows, valid[rows]


def sample_indices(buffer: Buffer, key: jax.Array, n: int, *,
                   where: jax.Array | None = None
                   ) -> tuple[jax.Array, jax.Array]:
  """Draws ``n`` distinct slots uniformly among the valid ones.

  When fewer than ``n`` slots are eligible, all of them are returned and the
  remaining entries are masked out.

  Args:
    buffer: The buffer.
    key: PRNG key.
    n: Number of slots to draw (static).
    where: Optional ``bool[capacity]`` restricting the eligible slots (e.g.
      ``buffer.group == e`` for one experience).

  Returns:
    ``(indices int32[n], mask bool[n])``.

  Example:
    >>> import jax
    >>> idx, mask = sample_indices(init(3, (1,)), jax.random.key(0), 2)
    >>> mask.tolist()
    [False, False]
  """
  eligible = buffer.valid if where is None else buffer.valid & where
  idx, real = random_rows(key, eligible, min(n, buffer.capacity))
  pad = n - idx.shape[0]
  return jnp.pad(idx, (0, pad)).astype(jnp.int32), jnp.pad(real, (0, pad))


def gather(buffer: Buffer, indices: jax.Array,
           mask: jax.Array | None = None) -> dict[str, jax.Array]:
  """The rows at ``indices`` as a batch dict (``weight`` = mask and validity).

  Example:
    >>> import jax.numpy as jnp
    >>> gather(init(3, (1,)), jnp.array([0, 2]))["weight"].tolist()
    [0.0, 0.0]
  """
  weight = buffer.valid[indices]
  if mask is not None:
    weight = weight & mask
  return {"x": buffer.x[indices], "y": buffer.y[indices],
          "task": buffer.task[indices], "weight": weight.astype(jnp.float32),
          **{k: v[indices] for k, v in buffer.extras.items()}}


def sample(buffer: Buffer, key: jax.Array, n: int, *,
           where: jax.Array | None = None) -> dict[str, jax.Array]:
  """Draws ``n`` stored samples (without replacement) as a batch dict.

  Rows beyond the number of stored samples have ``weight`` 0.

  Args:
    buffer: The buffer.
    key: PRNG key.
    n: Number of rows (static).
    where: Optional ``bool[capacity]`` restricting the eligible slots.

  Returns:
    ``{"x", "y", "task", "weight", *extras}`` with ``n`` rows each.

  Example:
    >>> import jax
    >>> sample(init(3, (2,)), jax.random.key(0), 4)["x"].shape
    (4, 2)
  """
  return gather(buffer, *sample_indices(buffer, key, n, where=where))


def as_batch(buffer: Buffer) -> dict[str, jax.Array]:
  """Every slot as a batch dict (empty slots have ``weight`` 0).

  Example:
    >>> as_batch(init(3, (2,)))["weight"].shape
    (3,)
  """
  return gather(buffer, jnp.arange(buffer.capacity))


def _filler(name: str, like: jax.Array, rows: int) -> jax.Array:
  # A row without a class restriction may use every class.
  fill = jnp.ones if name == "class_mask" else jnp.zeros
  return fill((rows, *like.shape[1:]), like.dtype)


def concat_batches(*batches: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Stacks batches row-wise; keys missing from a batch are filled.

  Strategies that replay samples append their rows after the current batch
  with this function, so the first ``ctx.batch_size`` rows always remain the
  current experience's samples. A key present in only some batches is filled
  with zeros in the others (weights, extra targets), except ``class_mask``,
  filled with True (no restriction).

  Args:
    *batches: Batch dicts, each with a ``y`` entry.

  Returns:
    One batch dict.

  Example:
    >>> import jax.numpy as jnp
    >>> a = {"y": jnp.array([1, 2]), "weight": jnp.ones(2)}
    >>> b = {"y": jnp.array([3]), "weight": jnp.ones(1), "z": jnp.ones((1, 2))}
    >>> out = concat_batches(a, b)
    >>> out["z"].tolist()
    [[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]
  """
  names = list(dict.fromkeys(k for b in batches for k in b))
  out = {}
  for name in names:
    like = next(b[name] for b in batches if name in b)
    out[name] = jnp.concatenate([
        b[name] if name in b else _filler(name, like, b["y"].shape[0])
        for b in batches])
  return out
