"""Gradient-based strategies: GEM, A-GEM, GSS-greedy (and iCaRL's export).

GEM and A-GEM keep ``patterns_per_exp`` random samples of every past
experience (:class:`jaxcl.strategies.exemplars.ExperienceMemory`) and change
the gradient of each step (``transform_grads``) so that the loss on the
memory does not rise; GSS-greedy fills a replay memory with the samples whose
gradients are least similar to the memory's. The formulas follow Avalanche
(see ``docs/strategies_projection.md``):

==============  ===========================================================
strategy        gradient of each step
==============  ===========================================================
``gem``         if any ``G g < 0``: ``Gᵀ v* + g`` with ``v*`` the solution
                of ``min ½ vᵀ(G Gᵀ + 10⁻³ I)v + (G g)ᵀ v``, ``v ≥ margin``
``agem``        if ``g·g_ref < 0``: ``g − (g·g_ref / g_ref·g_ref) g_ref``
``gss_greedy``  unchanged; memory samples are replayed in every batch
==============  ===========================================================

``G`` stacks one gradient per past experience (on its whole memory) and
``g_ref`` is the gradient on ``sample_size`` random memory samples. GEM's
quadratic program is solved inside ``jit`` by an exact active-set method
(:func:`solve_box_qp`). iCaRL lives in :mod:`jaxcl.strategies.exemplars` and
is registered from here.

Example:
  >>> import optax, jaxcl
  >>> strategy = jaxcl.strategies.chain(agem(patterns_per_exp=100),
  ...                                   jaxcl.strategies.naive())
  >>> strategy.name
  'agem+naive'
  >>> result = jaxcl.fit(jaxcl.models.MLP(num_classes=10), gem(),
  ...                    optax.sgd(0.01),
  ...                    jaxcl.benchmarks.split_mnist())  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxcl import _validation
from jaxcl.strategies import buffers
from jaxcl.strategies.base import Strategy, StrategyContext
from jaxcl.strategies.exemplars import (ExperienceMemory, experience_memory,
                                        icarl, store_experience)
from jaxcl.strategies.model_utils import task_loss

__all__ = [
    "AGEMState",
    "GEMState",
    "GSSState",
    "agem",
    "agem_projection",
    "gem",
    "gem_projection",
    "gss_greedy",
    "icarl",
    "solve_box_qp",
]

PyTree = Any

# Added to the diagonal of GEM's dual Hessian G Gᵀ (Avalanche, after GEM's
# reference code).
_GEM_EPS = 1e-3
# GSS scores the first insertion with this similarity (Avalanche).
_GSS_FIRST_SCORE = 0.1


# --------------------------------------------------------------- shared pieces


def _flat_grad(ctx: StrategyContext, params: PyTree, model_state: PyTree,
               seen: jax.Array, rows: dict, train: bool = False,
               key: jax.Array | None = None) -> jax.Array:
  """The gradient of the masked task loss on ``rows`` as one flat vector."""
  grads = jax.grad(task_loss, argnums=1)(ctx, params, model_state, rows, seen,
                                         train, key)
  return ravel_pytree(grads)[0]


def _memory_rows(memory, rows: jax.Array, weight: jax.Array) -> dict:
  """The memory's ``rows`` as a batch dict."""
  # The barrier keeps XLA from fusing the gather into the model's first
  # matmul, which makes that matmul several times slower on CPU.
  x = jax.lax.optimization_barrier(memory.x[rows])
  return {"x": x, "y": memory.y[rows], "task": memory.task[rows],
          "weight": weight.astype(jnp.float32)}


def _store(ctx, state, data, key):
  """``end_experience`` of GEM and A-GEM: keep random samples of ``data``."""
  del ctx
  cl = state.cl_state
  return state.replace(cl_state=cl.replace(
      memory=store_experience(cl.memory, data, key)))


# ----------------------------------------------------------------------- GEM


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a @ b`` in float32 on every backend: GPUs (TF32) and TPUs (bfloat16)
  multiply at lower precision by default, which flips the signs that decide
  whether to project and perturbs the QP's solution."""
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def solve_box_qp(P: jax.Array, q: jax.Array, lower: jax.Array) -> jax.Array:
  """Solves ``min_v ½ vᵀ P v + qᵀ v`` subject to ``v ≥ lower``, inside ``jit``.

  ``P`` must be symmetric positive definite (GEM's dual Hessian is, thanks to
  its ``10⁻³ I`` term). The method is Lawson and Hanson's active set (as in
  NNLS, written on ``P`` directly): it adds one variable at a time to the free
  set and solves the equality-constrained problem on it, so it reaches the
  exact solution (up to float32 rounding) in finitely many steps; the loops
  are bounded by ``3n`` outer and ``n`` inner iterations. It works on the
  problem scaled to a unit diagonal, with a tolerance per row, so that rows
  of very different norms (GEM's memory gradients) are all solved exactly.

  Args:
    P: ``[n, n]`` symmetric positive definite matrix.
    q: ``[n]`` linear term.
    lower: ``[n]`` lower bounds.

  Returns:
    ``[n]`` the minimiser.

  Example:
    >>> import jax.numpy as jnp
    >>> solve_box_qp(jnp.eye(2), jnp.array([-1.0, 1.0]),
    ...              jnp.zeros(2)).tolist()
    [1.0, 0.0]
  """
  n = q.shape[0]
  # v = d ⊙ u with d = diag(P)^-½: the same problem in u has a unit diagonal,
  # so one row's scale cannot hide another's violated constraint.
  d = jax.lax.rsqrt(jnp.diagonal(P))
  P = P * d[:, None] * d[None, :]
  q, lower = q * d, lower / d
  # With w = u − lower ≥ 0: min ½ wᵀPw − rᵀw, r = −(q + P lower).
  r = -(q + _dot(P, lower))
  eye = jnp.eye(n, dtype=P.dtype)

  def solve_free(free):
    both = free[:, None] & free[None, :]
    s = jnp.linalg.solve(jnp.where(both, P, eye), jnp.where(free, r, 0.0))
    return jnp.where(free, s, 0.0)

  def infeasible(carry):
    _, free, s, it = carry
    return jnp.any(free & (s <= 0)) & (it < n)

  def step_back(carry):
    # Move from w towards s until a free variable hits 0; that one leaves.
    w, free, s, it = carry
    blocking = free & (s <= 0)
    ratio = jnp.where(blocking, w / jnp.maximum(w - s, 1e-30), jnp.inf)
    alpha = jnp.min(ratio)
    w = w + alpha * (s - w)
    free = free & ~(blocking & (ratio <= alpha)) & (w > 0)
    return jnp.where(free, w, 0.0), free, solve_free(free), it + 1

  def improvable(carry):
    w, free, it = carry
    # Each row's rounding error is relative to the terms of its residual.
    tol = 1e-6 * (jnp.abs(r) + _dot(jnp.abs(P), jnp.abs(w)))
    return jnp.any(~free & (r - _dot(P, w) > tol)) & (it < 3 * n)

  def add_variable(carry):
    w, free, it = carry
    j = jnp.argmax(jnp.where(free, -jnp.inf, r - _dot(P, w)))
    free = free.at[j].set(True)
    w, free, s, _ = jax.lax.while_loop(infeasible, step_back,
                                       (w, free, solve_free(free), 0))
    return jnp.maximum(s, 0.0), free, it + 1

  w, _, _ = jax.lax.while_loop(
      improvable, add_variable, (jnp.zeros_like(q), jnp.zeros(n, bool), 0))
  return d * (lower + w)


def gem_projection(g: jax.Array, G: jax.Array,
                   memory_strength: jax.Array | float,
                   active: jax.Array | None = None) -> jax.Array:
  """GEM's gradient: ``g`` if ``G g ≥ 0``, else ``Gᵀ v* + g`` (Avalanche).

  ``v*`` solves the dual ``min ½ vᵀ P v + (G g)ᵀ v`` s.t. ``v ≥
  memory_strength``, with ``P = G Gᵀ + 10⁻³ I`` (as Avalanche and GEM's code,
  the margin bounds the dual variables).

  Args:
    g: ``[D]`` the gradient of the current batch.
    G: ``[T, D]`` one gradient per past experience.
    memory_strength: The margin.
    active: ``bool[T]``, the rows of ``G`` to use (others are ignored).

  Returns:
    ``[D]`` the projected gradient.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> g = gem_projection(jnp.array([1.0, -1.0]), jnp.array([[0.0, 1.0]]), 0.0)
    >>> np.asarray(g, float).round(4).tolist()
    [1.0, -0.001]
  """
  if active is None:
    active = jnp.ones(G.shape[0], bool)
  G = jnp.where(active[:, None], G, 0.0)
  dots = _dot(G, g)

  def project(_):
    P = _dot(G, G.T)
    P = 0.5 * (P + P.T) + _GEM_EPS * jnp.eye(G.shape[0], dtype=G.dtype)
    v = solve_box_qp(P, dots, jnp.where(active, memory_strength, 0.0))
    return _dot(G.T, v) + g

  return jax.lax.cond(jnp.any(active & (dots < 0)), project, lambda _: g, None)


@flax.struct.dataclass
class GEMState:
  """GEM's state: the per-experience memory and the margin (float32)."""

  memory: ExperienceMemory
  memory_strength: jax.Array


def gem(patterns_per_exp: int = 256, memory_strength: float = 0.5) -> Strategy:
  """Gradient Episodic Memory (Lopez-Paz & Ranzato, 2017), as in Avalanche.

  After each experience ``patterns_per_exp`` of its samples, chosen at
  random, are stored. Every step computes one gradient per past experience on
  all its stored samples (training mode, logits masked as in the loop), stacks
  them as ``G`` and, if the batch gradient ``g`` has ``G g < 0`` for some
  experience, replaces it with :func:`gem_projection`'s ``Gᵀ v* + g``.

  Args:
    patterns_per_exp: Samples stored per experience.
    memory_strength: Margin ``≥ 0``, the lower bound of the dual variables.

  Returns:
    The strategy; its state is a :class:`GEMState`.

  Example:
    >>> gem(patterns_per_exp=256, memory_strength=0.5).name
    'gem'
  """
  patterns = _validation.check_positive_int("patterns_per_exp",
                                            patterns_per_exp)
  # Beyond float32 the QP's bound is inf and the first projection NaN.
  strength = _validation.check_float32_non_negative("memory_strength",
                                                    memory_strength)

  def init(ctx, params, key):
    del params, key
    return GEMState(memory=experience_memory(ctx, patterns),
                    memory_strength=jnp.float32(strength))

  def transform_grads(ctx, grads, state, batch, key):
    del batch
    memory = state.cl_state.memory

    def experience_grad(x, y, task, valid, key):
      rows = {"x": x, "y": y, "task": task, "weight": valid.astype(jnp.float32)}
      return _flat_grad(ctx, state.params, state.model_state,
                        state.seen_classes, rows, True, key)

    G = jax.vmap(experience_grad)(memory.x, memory.y, memory.task,
                                  memory.valid,
                                  jax.random.split(key, ctx.n_experiences))
    g, unravel = ravel_pytree(grads)
    return unravel(gem_projection(g, G, state.cl_state.memory_strength,
                                  memory.stored))

  return Strategy(name="gem", init=init, transform_grads=transform_grads,
                  end_experience=_store)


# --------------------------------------------------------------------- A-GEM


def agem_projection(g: jax.Array, g_ref: jax.Array) -> jax.Array:
  """A-GEM's gradient: ``g − (g·g_ref / g_ref·g_ref) g_ref`` if ``g·g_ref < 0``.

  Example:
    >>> import jax.numpy as jnp
    >>> agem_projection(jnp.array([1.0, -1.0]), jnp.array([0.0, 1.0])).tolist()
    [1.0, 0.0]
  """
  dot = _dot(g, g_ref)
  projected = g - dot / jnp.maximum(_dot(g_ref, g_ref), 1e-30) * g_ref
  return jnp.where(dot < 0, projected, g)


@flax.struct.dataclass
class AGEMState:
  """A-GEM's state: the per-experience memory."""

  memory: ExperienceMemory


def agem(patterns_per_exp: int = 256, sample_size: int = 64) -> Strategy:
  """Averaged GEM (Chaudhry et al., 2019), as in Avalanche.

  After each experience ``patterns_per_exp`` of its samples, chosen at
  random, are stored. Every step draws ``sample_size`` distinct samples
  uniformly from the whole memory (in expectation balanced over experiences
  that all stored ``patterns_per_exp``), computes their mean-loss gradient
  ``g_ref`` (training mode) and, if ``g·g_ref < 0``, projects ``g`` with
  :func:`agem_projection`.

  Args:
    patterns_per_exp: Samples stored per experience.
    sample_size: Memory samples behind each reference gradient.

  Returns:
    The strategy.

  Example:
    >>> agem(patterns_per_exp=250, sample_size=256).name
    'agem'
  """
  patterns = _validation.check_positive_int("patterns_per_exp",
                                            patterns_per_exp)
  sample_size = _validation.check_positive_int("sample_size", sample_size)

  def init(ctx, params, key):
    del params, key
    return AGEMState(memory=experience_memory(ctx, patterns))

  def transform_grads(ctx, grads, state, batch, key):
    del batch
    memory = state.cl_state.memory
    flat = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]),
                        (memory.x, memory.y, memory.task, memory.valid))
    flat = ExperienceMemory(*flat, count=memory.count)
    rows_key, dropout_key = jax.random.split(key)
    rows, real = buffers.random_rows(rows_key, flat.valid,
                                     min(sample_size, flat.valid.shape[0]))
    g_ref = _flat_grad(ctx, state.params, state.model_state,
                       state.seen_classes, _memory_rows(flat, rows, real),
                       True, dropout_key)
    g, unravel = ravel_pytree(grads)
    return unravel(agem_projection(g, g_ref))

  return Strategy(name="agem", init=init, transform_grads=transform_grads,
                  end_experience=_store)


# ---------------------------------------------------------------- GSS-greedy


@flax.struct.dataclass
class GSSState:
  """GSS-greedy's memory.

  Attributes:
    x: ``[mem_size, *input_shape]`` stored raw inputs.
    y: ``[mem_size]`` labels.
    task: ``[mem_size]`` task labels.
    score: ``[mem_size]`` each sample's gradient similarity score.
    count: Number of filled slots (the first ``count``).
    replay: Whether the current experience replays the memory (it held
      samples when the experience began).
  """

  x: jax.Array
  y: jax.Array
  task: jax.Array
  score: jax.Array
  count: jax.Array
  replay: jax.Array


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """Cosine similarity of each row of ``a`` with ``b``."""
  norms = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b)
  return _dot(a, b) / jnp.maximum(norms, 1e-8)


def _gss_update(ctx: StrategyContext, mem: GSSState, state, batch: dict,
                key: jax.Array, mem_strength: int) -> GSSState:
  """One GSS-greedy memory update with the current samples of ``batch``."""
  size = mem.y.shape[0]
  n = min(ctx.batch_size, size)
  current = {k: batch[k][:n] for k in ("x", "y", "task", "weight")}
  real = current["weight"] > 0
  subsets_key, draw_key, coin_key = jax.random.split(key, 3)

  def grad_of(rows):
    # Scores use the model before this step's update, in evaluation mode.
    return _flat_grad(ctx, state.params, state.model_state,
                      state.seen_classes, rows)

  # Gradients of up to `mem_strength` disjoint random subsets of the memory.
  n_subsets = min(mem_strength, size // n)
  filled = jnp.arange(size) < mem.count
  order, _ = buffers.random_rows(subsets_key, filled, n_subsets * n)
  in_subset = jnp.arange(n_subsets * n) < mem.count
  subset_grads = jax.vmap(lambda rows, w: grad_of(_memory_rows(mem, rows, w)))(
      order.reshape(n_subsets, n), in_subset.reshape(n_subsets, n))
  usable = jnp.arange(n_subsets) < jnp.maximum(mem.count // n, 1)

  def similarity(g):
    return jnp.max(jnp.where(usable, _cosine(subset_grads, g), -jnp.inf))

  full = mem.count >= size
  batch_sim = similarity(grad_of(current))

  def sample_sims(_):
    def one(x, y, task):
      return similarity(grad_of({"x": x[None], "y": y[None], "task": task[None],
                                 "weight": jnp.ones(1)}))
    return jax.vmap(one)(current["x"], current["y"], current["task"])

  need = (mem.count > 0) & (~full | (batch_sim < 0))
  sims = jax.lax.cond(need, sample_sims, lambda _: jnp.zeros(n), None)

  def write(slots, score):
    slots = jnp.where(slots >= 0, slots, size)
    return mem.replace(
        x=mem.x.at[slots].set(current["x"].astype(mem.x.dtype), mode="drop"),
        y=mem.y.at[slots].set(current["y"].astype(jnp.int32), mode="drop"),
        task=mem.task.at[slots].set(current["task"].astype(jnp.int32),
                                    mode="drop"),
        score=mem.score.at[slots].set(score, mode="drop"))

  def insert(_):
    slots = mem.count + jnp.cumsum(real) - 1
    ok = real & (slots < size)
    score = jnp.where(mem.count == 0, _GSS_FIRST_SCORE, sims)
    return write(jnp.where(ok, slots, -1), score).replace(
        count=mem.count + jnp.sum(ok))

  def replace(_):
    # Candidates drawn without replacement, more likely when more redundant.
    s = mem.score
    weight = (s - jnp.min(s)) / (jnp.max(s) - jnp.min(s) + 0.01)
    gumbel = jax.random.gumbel(draw_key, weight.shape)
    _, slots = jax.lax.top_k(jnp.log(weight) + gumbel, n)
    new, old = (sims + 1) / 2, (s[slots] + 1) / 2
    swap = jax.random.uniform(coin_key, (n,)) * (new + old) < old
    swap = swap & real & (batch_sim < 0)
    return write(jnp.where(swap, slots, -1), sims)

  return jax.lax.cond(full, replace, insert, None)


def gss_greedy(mem_size: int = 200, mem_strength: int = 1) -> Strategy:
  """GSS-greedy (Aljundi et al., 2019), as Avalanche's ``GSS_greedy``.

  A replay memory of ``mem_size`` samples chosen for diverse gradients. After
  every step the current samples are scored by the largest cosine similarity
  of their gradient with the gradients of ``mem_strength`` random memory
  subsets of batch size (evaluation mode, the parameters before the step).
  While the memory has room they are added with their scores (0.1 for the
  very first batch). Once it is full, and only when the batch gradient's
  score is negative, each current sample challenges a memory sample drawn
  with probability proportional to its min-max normalised score and replaces
  it with probability ``(s_mem + 1) / (s_new + s_mem + 2)``. From the second
  experience on, each step appends ``batch_size`` memory samples to the batch.

  Args:
    mem_size: Memory capacity.
    mem_strength: Number of random memory subsets scored against.

  Returns:
    The strategy; its state is a :class:`GSSState`.

  Example:
    >>> gss_greedy(mem_size=200, mem_strength=5).name
    'gss_greedy'
  """
  mem_size = _validation.check_positive_int("mem_size", mem_size)
  mem_strength = _validation.check_positive_int("mem_strength", mem_strength)

  def init(ctx, params, key):
    del params, key
    return GSSState(
        x=jnp.zeros((mem_size, *ctx.input_shape), ctx.x_dtype),
        y=jnp.zeros(mem_size, jnp.int32), task=jnp.zeros(mem_size, jnp.int32),
        score=jnp.zeros(mem_size, jnp.float32),
        count=jnp.zeros((), jnp.int32), replay=jnp.zeros((), bool))

  def begin_experience(ctx, state, data, key):
    del ctx, data, key
    mem = state.cl_state
    return state.replace(cl_state=mem.replace(replay=mem.count > 0))

  def transform_batch(ctx, mem, batch, key):
    filled = jnp.arange(mem_size) < mem.count
    rows, real = buffers.random_rows(key, filled,
                                     min(ctx.batch_size, mem_size))
    return buffers.concat_batches(
        batch, _memory_rows(mem, rows, real & mem.replay))

  def after_step(ctx, old_state, new_state, grads, batch, key):
    del grads
    return _gss_update(ctx, new_state.cl_state, old_state, batch, key,
                       mem_strength)

  return Strategy(name="gss_greedy", init=init,
                  begin_experience=begin_experience,
                  transform_batch=transform_batch, after_step=after_step)


STRATEGIES = {
    "agem": agem,
    "gem": gem,
    "gss_greedy": gss_greedy,
    "icarl": icarl,
}
