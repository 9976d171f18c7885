"""Regularisation and distillation strategies: EWC, SI, MAS, RWalk, LwF, LFL,
feature distillation.

Each strategy keeps what it knows of past experiences in a fixed-size
``cl_state`` (a dict of arrays allocated in ``init``) and adds a penalty to the
task loss. Numeric hyperparameters live in that dict as float32 arrays, so a
``jax.vmap`` over copies of the state with different values trains several
settings at once; the formulas follow Avalanche (see
``docs/strategies_regularization.md``):

=========  ============================================  =======================
strategy   penalty                                       importance / teacher
=========  ============================================  =======================
``ewc``    ``λ Σ_e Σ F_e (θ − θ_e)²`` (separate) or      squared loss gradient,
           ``λ Σ F̃ (θ − θ*)²`` (online)                  after each experience
``si``     ``(λ/2) Σ Ω (θ − θ*)²``                       path integral per step
``mas``    ``λ Σ Ω (θ − θ*)²``                           ``|∂ ‖f(x)‖² / ∂θ|``
``rwalk``  ``λ Σ (F̂ + ŝ) (θ − θ*)²``                     EWC++ and path scores
``lwf``    ``α KL(softmax(t/T) ‖ softmax(s/T))``         model copy, old classes
``lfl``    ``λ_e mean (h(x) − h*(x))²``                  model copy, features
=========  ============================================  =======================

``feature_distillation`` adds ``α (1 − mean cos(h(x), h*(x)))`` (or LFL's
squared distance) against the same model copy as LFL, without freezing.

Work over a whole experience (importance estimation) is one ``lax.scan`` over
its mini-batches, in data order, with padding rows weighted out. Logits are
masked to the classes seen so far, as the training loop masks them, so the
importances belong to the loss that was trained.

Example:
  >>> import optax, jaxcl
  >>> strategy = jaxcl.strategies.chain(ewc(ewc_lambda=10.0), lwf(alpha=1.0))
  >>> strategy.name
  'ewc+lwf'
  >>> result = jaxcl.fit(jaxcl.models.MLP(num_classes=10), strategy,
  ...                    optax.sgd(0.01), jaxcl.benchmarks.split_mnist())  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcl import _validation
from jaxcl.strategies.base import Strategy, StrategyContext
from jaxcl.strategies.model_utils import (init_model_state, l2_normalize,
                                          mask_logits, output_layer_path,
                                          penultimate_features, task_loss,
                                          weighted_mean)

__all__ = ["distillation_kl", "ewc", "feature_distillation", "lfl", "lwf",
           "mas", "rwalk", "si"]

PyTree = Any

# Logit of classes left out of a distillation softmax: exp() of it is 0.
_EXCLUDED = -1e9
# Avalanche caps SI's importance at this value (``clip_to``).
_SI_CLIP = 1e-3
# RWalk's damping of the path score (Avalanche: torch.finfo(float32).eps).
_RWALK_EPS = float(np.finfo(np.float32).eps)


# --------------------------------------------------------------- shared pieces


def _tree_sum(fn: Callable[..., jax.Array], *trees: PyTree) -> jax.Array:
  """``Σ_leaves jnp.sum(fn(*leaves))`` over trees of one structure."""
  leaves = zip(*(jax.tree.leaves(t) for t in trees))
  return sum((_sum_in_halves(fn(*ls)) for ls in leaves),
             jnp.zeros((), jnp.float32))


def _sum_in_halves(x: jax.Array) -> jax.Array:
  """``jnp.sum(x)``; on a CPU, as the sums of the leading axis's two halves.

  The penalties' value is a sum over every parameter, every step. Summed in
  halves, XLA:CPU (jax 0.10) runs the large leaves' two reductions side by
  side and folds the small leaves' sums into the step's other loops: EWC's
  bare step went from 1.40–1.42× to 1.30–1.32× a naive step on two cores
  (``examples/benchmark_bare_step.py --penalty``); splitting only the large
  leaves, or into four parts, did not help. Sums in at least float32.
  """
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  if jax.default_backend() != "cpu" or x.ndim == 0 or x.shape[0] < 2:
    return jnp.sum(x, dtype=dtype)
  half = x.shape[0] // 2
  return jnp.sum(x[:half], dtype=dtype) + jnp.sum(x[half:], dtype=dtype)


def _tree_max(tree: PyTree) -> jax.Array:
  return jnp.max(jnp.stack([jnp.max(leaf) for leaf in jax.tree.leaves(tree)]))


def _quadratic(weight: PyTree, params: PyTree, anchor: PyTree) -> jax.Array:
  """``Σ weight ⊙ (params − anchor)²`` over every parameter."""
  return _tree_sum(lambda w, p, a: w * jnp.square(p - a), weight, params,
                   anchor)


def _quadratic_penalty(lambda_name: str) -> Callable:
  """``penalty`` hook ``λ Σ importance ⊙ (θ − anchor)²``, λ = cl_state[name]."""
  def penalty(ctx, params, cl_state, batch, logits):
    del ctx, batch, logits
    return cl_state[lambda_name] * _quadratic(
        cl_state["importance"], params, cl_state["anchor"])
  return penalty


def _zeros_like(tree: PyTree) -> PyTree:
  return jax.tree.map(jnp.zeros_like, tree)


def _scale(tree: PyTree, factor: jax.Array) -> PyTree:
  return jax.tree.map(lambda leaf: leaf * factor, tree)


def _safe_divide(x: jax.Array, y: jax.Array) -> jax.Array:
  """``x / y`` where ``y > 0``, else 0 (empty importances stay zero)."""
  return jnp.where(y > 0, x / jnp.where(y > 0, y, 1.0), 0.0)


def _sum_over_batches(ctx: StrategyContext, data,
                      fn: Callable[[dict, jax.Array], PyTree],
                      key: jax.Array) -> PyTree:
  """``Σ_b fn(batch_b, key_b)`` over an experience's mini-batches, in order.

  Batches hold ``ctx.batch_size`` consecutive rows of ``data`` (like a PyTorch
  DataLoader without shuffling). Rows past ``data.size`` get weight 0, so
  ``fn`` must weight its per-sample terms: then batches made only of padding
  add nothing.
  """
  rows = data.y.shape[0]
  steps = math.ceil(rows / ctx.batch_size)
  offsets = jnp.arange(ctx.batch_size)

  def batch_at(i):
    idx = i * ctx.batch_size + offsets
    take = jnp.minimum(idx, rows - 1)
    return {"x": data.x[take], "y": data.y[take], "task": data.task[take],
            "weight": (idx < data.size).astype(jnp.float32)}

  def body(total, i):
    value = fn(batch_at(i), jax.random.fold_in(key, i))
    return jax.tree.map(jnp.add, total, value), None

  shapes = jax.eval_shape(fn, batch_at(0), key)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  total, _ = jax.lax.scan(body, zeros, jnp.arange(steps))
  return total


def _n_batches(ctx: StrategyContext, data) -> jax.Array:
  """Mini-batches holding real rows (a DataLoader's ``len``), at least 1."""
  return jnp.maximum(jnp.ceil(data.size / ctx.batch_size), 1.0)


def _check_schedule(name: str, value: float | Sequence[float]
                    ) -> tuple[float, ...]:
  """A non-negative number or a non-empty list of them (one per experience)."""
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()  # A NumPy scalar array is one number.
  if isinstance(value, (list, tuple, np.ndarray)):
    if len(value) == 0:
      raise ValueError(f"{name} must be a non-negative number or a non-empty "
                       f"list of them (one per experience), got {value!r}.")
    return tuple(_validation.check_float32_non_negative(f"{name}[{i}]", v)
                 for i, v in enumerate(value))
  return (_validation.check_float32_non_negative(name, value),)


def _schedule_array(values: tuple[float, ...], n_experiences: int) -> jax.Array:
  """One value per experience: ``values`` cut, or extended with its last one."""
  padded = list(values) + [values[-1]] * n_experiences
  return jnp.asarray(padded[:n_experiences], jnp.float32)


def _record_experience(ctx, state, data, key):
  """``begin_experience`` that counts the experiences begun, from 0 (the
  position of per-experience values, as Avalanche's ``train_exp_counter``:
  a sliced stream's first experience keeps its index, not its position)."""
  del ctx, data, key
  return state.replace(cl_state={**state.cl_state,
                                 "experience": state.cl_state["experience"] + 1})


def _no_experience_yet() -> jax.Array:
  """The count :func:`_record_experience` starts from."""
  return jnp.full((), -1, jnp.int32)


# ------------------------------------------------------------------------ EWC

_EWC_MODES = ("online", "separate")


def _fisher_minibatch(ctx, state, data, key) -> PyTree:
  """Mean over mini-batches of the squared mini-batch gradient (Avalanche)."""
  def squared_grad(batch, key):
    del key
    grads = jax.grad(lambda p: task_loss(
        ctx, p, state.model_state, batch, state.seen_classes))(state.params)
    return jax.tree.map(jnp.square, grads)
  total = _sum_over_batches(ctx, data, squared_grad, key)
  return _scale(total, 1.0 / _n_batches(ctx, data))


def _fisher_per_sample(ctx, state, data, key) -> PyTree:
  """Mean over samples of the squared per-sample gradient (empirical Fisher)."""
  def sample_loss(params, x, y, task):
    batch = {"x": x[None], "y": y[None], "task": task[None],
             "weight": jnp.ones((1,), jnp.float32)}
    return task_loss(ctx, params, state.model_state, batch,
                      state.seen_classes)

  def summed_squares(batch, key):
    del key
    grads = jax.vmap(jax.grad(sample_loss), in_axes=(None, 0, 0, 0))(
        state.params, batch["x"], batch["y"], batch["task"])
    return jax.tree.map(
        lambda g: jnp.tensordot(batch["weight"], jnp.square(g), axes=1), grads)
  total = _sum_over_batches(ctx, data, summed_squares, key)
  return _scale(total, 1.0 / jnp.maximum(data.size, 1).astype(jnp.float32))


_FISHERS = {"minibatch": _fisher_minibatch,
            "empirical_per_sample": _fisher_per_sample}


def _add_quadratic(weight: PyTree, anchor: PyTree, residual: jax.Array,
                   new_weight: PyTree, new_anchor: PyTree) -> dict:
  """Folds ``Σ w'(θ − a')²`` into ``Σ w(θ − a)² + r`` exactly.

  ``Σ_e F_e (θ − θ_e)² = A (θ − μ)² + R`` with ``A = Σ_e F_e``, ``μ`` the
  ``F``-weighted mean of the anchors and ``R = Σ_e F_e (θ_e − μ)²``; adding a
  term updates the three like a parallel variance merge, without the
  cancellation of expanding the squares.
  """
  total = jax.tree.map(jnp.add, weight, new_weight)

  def merged_anchor(a, nw, na, t):
    share = jnp.where(t > 0, nw / jnp.where(t > 0, t, 1.0), 1.0)
    return a + share * (na - a)

  mean = jax.tree.map(merged_anchor, anchor, new_weight, new_anchor, total)
  residual = residual + _tree_sum(
      lambda w, a, nw, na, m: w * jnp.square(a - m) + nw * jnp.square(na - m),
      weight, anchor, new_weight, new_anchor, mean)
  return {"importance": total, "anchor": mean, "residual": residual}


def ewc(ewc_lambda: float = 1.0, mode: str = "separate",
        decay_factor: float | None = None,
        fisher: str = "minibatch") -> Strategy:
  """Elastic Weight Consolidation (Kirkpatrick et al., 2017), as in Avalanche.

  After each experience the importance ``F`` of every parameter is estimated
  on that experience with the model in evaluation mode. The penalty is
  ``λ Σ_e Σ F_e (θ − θ_e)²`` over past experiences ``e`` (``"separate"``) or
  ``λ Σ F̃ (θ − θ*)²`` with ``F̃ ← decay_factor · F̃ + F`` and ``θ*`` the
  parameters after the last experience (``"online"``); there is no ½ factor.
  ``"separate"`` keeps fixed-size sums instead of one copy per experience.

  Args:
    ewc_lambda: Penalty weight λ (≥ 0).
    mode: ``"separate"`` or ``"online"``.
    decay_factor: Decay of the accumulated importance, in [0, 1]; required by
      ``"online"`` and refused by ``"separate"`` (as in Avalanche).
    fisher: ``"minibatch"``: mean over mini-batches of the squared gradient of
      the mini-batch loss (Avalanche's estimate); ``"empirical_per_sample"``:
      mean over samples of the squared per-sample gradient (the textbook
      empirical Fisher, computed with ``vmap(grad)``).

  Returns:
    The strategy. Its state holds ``ewc_lambda`` (and ``decay_factor``),
    ``importance``, ``anchor`` and ``residual`` (the constant part of the
    separate penalty).

  Example:
    >>> ewc(ewc_lambda=0.4, mode="online", decay_factor=0.9).name
    'ewc'
  """
  ewc_lambda = _validation.check_float32_non_negative("ewc_lambda",
                                                      ewc_lambda)
  mode = _validation.check_choice("ewc mode", mode, _EWC_MODES)
  estimate = _FISHERS[_validation.check_choice("fisher", fisher, _FISHERS)]
  online = mode == "online"
  if online and decay_factor is None:
    raise ValueError("ewc mode='online' needs decay_factor, a number in "
                     "[0, 1], got None.")
  if online:
    decay_factor = _validation.check_in_range("decay_factor", decay_factor,
                                              low=0.0, high=1.0)
  elif decay_factor is not None:
    raise ValueError(f"ewc decay_factor={decay_factor!r} only applies to "
                     "mode='online'; leave it unset with mode='separate'.")

  def init(ctx, params, key):
    del ctx, key
    state = {"ewc_lambda": jnp.float32(ewc_lambda),
             "importance": _zeros_like(params), "anchor": params,
             "residual": jnp.zeros((), jnp.float32)}
    if online:
      state["decay_factor"] = jnp.float32(decay_factor)
    return state

  def end_experience(ctx, state, data, key):
    cl = state.cl_state
    new = estimate(ctx, state, data, key)
    if online:
      importance = jax.tree.map(lambda old, f: cl["decay_factor"] * old + f,
                                cl["importance"], new)
      cl = {**cl, "importance": importance, "anchor": state.params}
    else:
      cl = {**cl, **_add_quadratic(cl["importance"], cl["anchor"],
                                   cl["residual"], new, state.params)}
    return state.replace(cl_state=cl)

  def penalty(ctx, params, cl_state, batch, logits):
    del ctx, batch, logits
    return cl_state["ewc_lambda"] * (
        _quadratic(cl_state["importance"], params, cl_state["anchor"]) +
        cl_state["residual"])

  return Strategy(name="ewc", init=init, penalty=penalty,
                  end_experience=end_experience)


# ------------------------------------------------------------------------- SI


def si(si_lambda: float | Sequence[float] = 1.0, eps: float = 1e-7) -> Strategy:
  """Synaptic Intelligence (Zenke et al., 2017), as in Avalanche.

  Each step adds ``g ⊙ (θ_new − θ_old)`` to the path integral ``ω`` (``g`` is
  the gradient of the total loss). After an experience,
  ``cum += ω / ((θ_end − θ_start)² + eps)``, the importance is
  ``Ω = min(−cum, 0.001)`` (Avalanche's cap) and ``θ* = θ_end``; ``ω`` restarts
  at zero with every experience. The penalty is ``(λ/2) Σ Ω (θ − θ*)²``.

  Args:
    si_lambda: λ (≥ 0), or one λ per experience (the last one repeats).
    eps: Damping of the denominator (> 0).

  Returns:
    The strategy. Its state holds ``si_lambda`` (one value per experience),
    ``eps``, ``importance``, ``anchor``, ``path`` and ``cumulative``.

  Example:
    >>> si(si_lambda=[0.0, 1.0], eps=0.1).name
    'si'
  """
  lambdas = _check_schedule("si_lambda", si_lambda)
  eps = _validation.check_in_range("eps", eps, low=0.0, low_inclusive=False)

  def init(ctx, params, key):
    del key
    zeros = _zeros_like(params)
    return {"si_lambda": _schedule_array(lambdas, ctx.n_experiences),
            "eps": jnp.float32(eps), "experience": _no_experience_yet(),
            "importance": zeros, "anchor": params, "path": zeros,
            "cumulative": zeros}

  def begin_experience(ctx, state, data, key):
    state = _record_experience(ctx, state, data, key)
    return state.replace(cl_state={**state.cl_state, "anchor": state.params,
                                   "path": _zeros_like(state.params)})

  def after_step(ctx, old_state, new_state, grads, batch, key):
    del ctx, batch, key
    cl = new_state.cl_state
    path = jax.tree.map(lambda w, g, new, old: w + g * (new - old), cl["path"],
                        grads, new_state.params, old_state.params)
    return {**cl, "path": path}

  def end_experience(ctx, state, data, key):
    del ctx, data, key
    cl = state.cl_state
    cumulative = jax.tree.map(
        lambda c, w, end, start: c + w / (jnp.square(end - start) + cl["eps"]),
        cl["cumulative"], cl["path"], state.params, cl["anchor"])
    importance = jax.tree.map(lambda c: jnp.minimum(-c, _SI_CLIP), cumulative)
    return state.replace(cl_state={**cl, "cumulative": cumulative,
                                   "importance": importance,
                                   "anchor": state.params})

  def penalty(ctx, params, cl_state, batch, logits):
    del ctx, batch, logits
    lam = cl_state["si_lambda"][cl_state["experience"]]
    return lam / 2 * _quadratic(cl_state["importance"], params,
                                cl_state["anchor"])

  return Strategy(name="si", init=init, begin_experience=begin_experience,
                  penalty=penalty, after_step=after_step,
                  end_experience=end_experience)


# ------------------------------------------------------------------------ MAS


def mas(lambda_reg: float = 1.0, alpha: float = 0.5) -> Strategy:
  """Memory Aware Synapses (Aljundi et al., 2018), as in Avalanche.

  After each experience the importance of a parameter is the mean over
  mini-batches of ``|∂ mean_i ‖f(x_i)‖²₂ / ∂θ|`` (``f`` the logits, model in
  training mode); the first experience's is kept whole, later ones are
  blended as ``Ω ← α Ω + (1 − α) Ω_new`` (as Avalanche's ``MASPlugin``),
  and the anchor ``θ*`` becomes the current parameters. The penalty is
  ``λ Σ Ω (θ − θ*)²``.

  Args:
    lambda_reg: Penalty weight λ (≥ 0).
    alpha: Weight of the previous importance, in [0, 1].

  Returns:
    The strategy. Its state holds ``lambda_reg``, ``alpha``, ``importance``,
    ``anchor`` and ``has_importance``.

  Example:
    >>> mas(lambda_reg=1.0, alpha=0.5).name
    'mas'
  """
  lambda_reg = _validation.check_float32_non_negative("lambda_reg",
                                                      lambda_reg)
  alpha = _validation.check_in_range("alpha", alpha, low=0.0, high=1.0)

  def init(ctx, params, key):
    del ctx, key
    return {"lambda_reg": jnp.float32(lambda_reg), "alpha": jnp.float32(alpha),
            "importance": _zeros_like(params), "anchor": params,
            "has_importance": jnp.bool_(False)}

  def end_experience(ctx, state, data, key):
    def abs_grad(batch, key):
      def output_norm(params):
        logits = ctx.logits(params, state.model_state, batch["x"],
                            batch["task"], True, key, weight=batch["weight"])
        logits = mask_logits(ctx, logits, state.seen_classes, batch["task"])
        return weighted_mean(jnp.sum(jnp.square(logits), -1), batch["weight"])
      return jax.tree.map(jnp.abs, jax.grad(output_norm)(state.params))

    cl = state.cl_state
    new = _scale(_sum_over_batches(ctx, data, abs_grad, key),
                 1.0 / _n_batches(ctx, data))
    # As Avalanche: the first experience's importance is taken whole.
    alpha = jnp.where(cl["has_importance"], cl["alpha"], 0.0)
    importance = jax.tree.map(lambda old, n: alpha * old + (1 - alpha) * n,
                              cl["importance"], new)
    return state.replace(cl_state={**cl, "importance": importance,
                                   "anchor": state.params,
                                   "has_importance": jnp.bool_(True)})

  return Strategy(name="mas", init=init,
                  penalty=_quadratic_penalty("lambda_reg"),
                  end_experience=end_experience)


# ---------------------------------------------------------------------- RWalk


def rwalk(ewc_lambda: float = 0.1, ewc_alpha: float = 0.9,
          delta_t: int = 10) -> Strategy:
  """Riemannian Walk (Chaudhry et al., 2018), as in Avalanche.

  Before every step, the gradient ``g`` of the task loss (no penalty, model in
  evaluation mode) updates the EWC++ Fisher ``F ← α g² + (1 − α) F`` (``F = g²``
  at the first step). After the step, the loss change ``−g ⊙ Δθ`` accumulates
  over windows of ``delta_t`` steps; at the end of a window the score grows by
  ``Σ_window(−g ⊙ Δθ) / (½ F (θ − θ_window_start)² + ε)``. After an experience
  the scores are averaged with the previous experience's (``s ← ½ (s + s_new)``)
  and the weight of the penalty ``λ Σ P (θ − θ*)²`` becomes
  ``P = F / max F + relu(s) / max s``.

  Args:
    ewc_lambda: Penalty weight λ (≥ 0).
    ewc_alpha: Weight of the newest squared gradient in the Fisher moving
      average, in [0, 1].
    delta_t: Steps per score window (a static integer ≥ 1); windows count the
      global optimizer step, so they may span two experiences (as in
      Avalanche).

  Returns:
    The strategy. Its state holds ``ewc_lambda``, ``ewc_alpha``, the running
    ``fisher``, the window's ``window_loss``, ``window_start`` and
    ``window_score``, the experience-level ``score``, ``importance`` (``P``)
    and ``anchor``.

  Example:
    >>> rwalk(ewc_lambda=0.1, ewc_alpha=0.9, delta_t=10).name
    'rwalk'
  """
  ewc_lambda = _validation.check_float32_non_negative("ewc_lambda",
                                                      ewc_lambda)
  ewc_alpha = _validation.check_in_range("ewc_alpha", ewc_alpha, low=0.0,
                                         high=1.0)
  delta_t = _validation.check_positive_int("delta_t", delta_t)

  def init(ctx, params, key):
    del ctx, key
    zeros = _zeros_like(params)
    return {"ewc_lambda": jnp.float32(ewc_lambda),
            "ewc_alpha": jnp.float32(ewc_alpha),
            "fisher": zeros, "has_fisher": jnp.zeros((), bool),
            "window_loss": zeros, "window_start": params,
            "window_score": zeros, "score": zeros,
            "has_score": jnp.zeros((), bool), "importance": zeros,
            "anchor": params}

  def after_step(ctx, old_state, new_state, grads, batch, key):
    del grads, key
    cl = new_state.cl_state
    task_grads = jax.grad(lambda p: task_loss(
        ctx, p, old_state.model_state, batch, old_state.seen_classes))(
            old_state.params)
    a = cl["ewc_alpha"]
    fisher = jax.tree.map(
        lambda f, g: jnp.where(cl["has_fisher"], a * g**2 + (1 - a) * f, g**2),
        cl["fisher"], task_grads)
    loss = jax.tree.map(lambda acc, g, new, old: acc - g * (new - old),
                        cl["window_loss"], task_grads, new_state.params,
                        old_state.params)
    score = jax.tree.map(
        lambda s, change, f, new, start: s + change / (
            0.5 * f * jnp.square(new - start) + _RWALK_EPS),
        cl["window_score"], loss, fisher, new_state.params, cl["window_start"])
    closes = new_state.step % delta_t == 0

    def at_close(closed, running):
      return jax.tree.map(lambda c, r: jnp.where(closes, c, r), closed, running)

    return {**cl, "fisher": fisher, "has_fisher": jnp.ones((), bool),
            "window_loss": at_close(_zeros_like(loss), loss),
            "window_start": at_close(new_state.params, cl["window_start"]),
            "window_score": at_close(score, cl["window_score"])}

  def end_experience(ctx, state, data, key):
    del ctx, data, key
    cl = state.cl_state
    score = jax.tree.map(
        lambda s, w: jnp.where(cl["has_score"], 0.5 * (s + w), w),
        cl["score"], cl["window_score"])
    max_fisher, max_score = _tree_max(cl["fisher"]), _tree_max(score)
    importance = jax.tree.map(
        lambda f, s: _safe_divide(f, max_fisher) +
        _safe_divide(jax.nn.relu(s), max_score), cl["fisher"], score)
    return state.replace(cl_state={
        **cl, "score": score, "has_score": jnp.ones((), bool),
        "window_score": _zeros_like(score), "importance": importance,
        "anchor": state.params})

  return Strategy(name="rwalk", init=init,
                  penalty=_quadratic_penalty("ewc_lambda"),
                  after_step=after_step, end_experience=end_experience)


# ------------------------------------------------- distillation (LwF and LFL)


def _init_teacher(ctx: StrategyContext, params: PyTree, key: jax.Array) -> dict:
  """Room for a copy of the model after the last experience.

  ``penalty`` gets no model_state, so the state also keeps a copy of the
  current model's (e.g. batch-norm statistics), refreshed by
  :func:`_begin_distillation` and :func:`_track_model_state`, for the
  penalties that run the current model again.
  """
  model_state = init_model_state(ctx, key)
  return {"teacher_params": params, "teacher_model_state": model_state,
          "model_state": model_state,
          "old_classes": jnp.zeros((ctx.n_classes,), bool),
          "old_task_classes": jnp.zeros((len(_task_classes(ctx)),
                                         ctx.n_classes), bool),
          "has_teacher": jnp.zeros((), bool),
          "experience": _no_experience_yet()}


def _task_classes(ctx: StrategyContext) -> np.ndarray:
  """``bool[n_tasks, n_classes]``: each task's classes (one task: all)."""
  if ctx.task_classes is None:
    return np.ones((1, ctx.n_classes), bool)
  return np.asarray(ctx.task_classes, bool)


def _begin_distillation(ctx, state, data, key):
  """``begin_experience``: notes the experience and the model state."""
  state = _record_experience(ctx, state, data, key)
  return state.replace(cl_state={**state.cl_state,
                                 "model_state": state.model_state})


def _track_model_state(ctx, old_state, new_state, grads, batch, key):
  """``after_step``: the model state the next penalty will see."""
  del ctx, old_state, grads, batch, key
  return {**new_state.cl_state, "model_state": new_state.model_state}


def _snapshot_teacher(ctx, state, data, key):
  """``end_experience``: the teacher becomes a copy of the trained model.

  ``state.seen_classes`` already includes this experience's classes (the loop
  adds them before ``begin_experience``), so it is the set of classes seen
  before the next experience.
  """
  del key
  # The (task, class) units trained so far: each task seen in an experience,
  # with its classes seen so far. Class ids may repeat across tasks (ids from
  # zero in each experience), so old_classes alone does not tell the heads
  # of past tasks from those of the current and future ones.
  task_classes = _task_classes(ctx)
  # One task: its one row, whatever the stream's label is.
  rows = data.task if ctx.task_classes is not None else jnp.zeros_like(
      data.task)
  trained = jnp.zeros(len(task_classes), jnp.int32).at[rows].add(
      data.valid.astype(jnp.int32), mode="drop") > 0
  units = trained[:, None] & state.seen_classes & jnp.asarray(task_classes)
  cl = state.cl_state
  return state.replace(cl_state={
      **cl, "teacher_params": state.params,
      "teacher_model_state": state.model_state,
      "old_classes": state.seen_classes,
      "old_task_classes": cl["old_task_classes"] | units,
      "has_teacher": jnp.ones((), bool)})


def distillation_kl(student: jax.Array, teacher: jax.Array,
                    classes: jax.Array, temperature: jax.Array,
                    weight: jax.Array) -> jax.Array:
  """Batch mean of ``KL(softmax(teacher/T) ‖ softmax(student/T))`` on ``classes``.

  LwF's distillation term (without a ``T²`` factor, as Avalanche's). Both
  softmaxes run over ``classes`` only; with no class the result is 0.

  Args:
    student: ``[n, C]`` logits being trained.
    teacher: ``[n, C]`` the teacher's logits.
    classes: ``bool[C]``, the classes distilled.
    temperature: ``T > 0``.
    weight: ``[n]``; rows of weight 0 are left out.

  Example:
    >>> import jax.numpy as jnp
    >>> z = jnp.array([[1.0, 2.0, 3.0]])
    >>> float(distillation_kl(z, z, jnp.ones(3, bool), 2.0, jnp.ones(1)))
    0.0
  """
  def log_softmax(logits):
    return jax.nn.log_softmax(
        jnp.where(classes, logits / temperature, _EXCLUDED), axis=-1)
  log_q, log_p = log_softmax(teacher), log_softmax(student)
  kl = jnp.sum(jnp.where(classes, jnp.exp(log_q) * (log_q - log_p), 0.0), -1)
  return weighted_mean(kl, weight)


def lwf(alpha: float | Sequence[float] = 1.0,
        temperature: float = 2.0) -> Strategy:
  """Learning without Forgetting (Li & Hoiem, 2016), as in Avalanche.

  The teacher is a copy of the model (parameters and model state) taken after
  each experience. The penalty is ``α_t · KL(softmax(t/T) ‖ softmax(s/T))``,
  averaged over the real samples of the batch, where ``s`` are the logits being
  trained, ``t`` the teacher's (evaluation mode) and both softmaxes run only
  over the classes seen before the current experience; there is no ``T²``
  factor. With task labels (``ctx.task_classes``, one head per task) the KL is
  summed over the heads of all tasks, each on the current inputs and
  restricted to its classes seen before in an experience of that task (so
  only past tasks' heads count, also when class ids repeat across tasks),
  with the current model's heads computed again in evaluation mode (the
  trained logits hold the current task's head only). A shared head whose
  tasks repeat class ids adds the same term once per past task.

  Args:
    alpha: Distillation weight (≥ 0), or one per experience (the last one
      repeats), e.g. Avalanche's ``[0, 0.5, 1.33, 2.25, 3.2]``.
    temperature: Softmax temperature ``T`` (> 0).

  Returns:
    The strategy. Its state holds ``alpha`` (one value per experience),
    ``temperature``, ``teacher_params``, ``teacher_model_state``,
    ``model_state`` (the current model's), ``old_classes``,
    ``old_task_classes``, ``has_teacher`` and ``experience``.

  Example:
    >>> lwf(alpha=[0.0, 0.5, 1.33, 2.25, 3.2], temperature=2.0).name
    'lwf'
  """
  alphas = _check_schedule("alpha", alpha)
  temperature = _validation.check_in_range("temperature", temperature,
                                           low=0.0, low_inclusive=False)

  def init(ctx, params, key):
    return {**_init_teacher(ctx, params, key),
            "alpha": _schedule_array(alphas, ctx.n_experiences),
            "temperature": jnp.float32(temperature)}

  def penalty(ctx, params, cl_state, batch, logits):
    x = batch["x"]

    def distil(student, task, classes):
      teacher = ctx.logits(cl_state["teacher_params"],
                           cl_state["teacher_model_state"], x, task)
      return distillation_kl(student, teacher, classes,
                           cl_state["temperature"], batch["weight"])

    old = cl_state["old_classes"]
    if ctx.task_classes is None:
      kl = distil(logits, batch["task"], old)
    else:
      # Every past task's head on the current inputs, as Avalanche does for
      # multi-task models; the trained logits only hold the current head.
      def head(task_id, classes):
        task = jnp.full(x.shape[:1], task_id, jnp.int32)
        student = ctx.logits(params, cl_state["model_state"], x, task)
        return distil(student, task, classes)
      old_heads = cl_state["old_task_classes"]
      kl = jnp.sum(jax.vmap(head)(jnp.arange(old_heads.shape[0]), old_heads))
    return cl_state["alpha"][cl_state["experience"]] * kl

  return Strategy(name="lwf", init=init, begin_experience=_begin_distillation,
                  penalty=penalty, after_step=_track_model_state,
                  end_experience=_snapshot_teacher)


def _squared_distance(current: jax.Array, previous: jax.Array) -> jax.Array:
  """Per row, the mean over units of the squared difference (``mse_loss``)."""
  return jnp.mean(jnp.square(current - previous), -1)


def _cosine_distance(current: jax.Array, previous: jax.Array) -> jax.Array:
  """Per row, ``1 − cos(current, previous)``; a zero row's cosine is 0, as
  PyTorch's ``cosine_similarity`` gives (with a zero gradient, not NaN)."""
  return 1.0 - jnp.sum(l2_normalize(current) * l2_normalize(previous), -1)


_FEATURE_DISTANCES = {"cosine": _cosine_distance, "mse": _squared_distance}


def _feature_penalty(weight_name: str,
                     distance: Callable[[jax.Array, jax.Array], jax.Array]
                     ) -> Callable:
  """``penalty``: ``w_t · mean_i distance(h(x_i), h*(x_i))`` over real rows.

  ``h`` and ``h*`` are the current model's and the teacher's penultimate
  features, both in evaluation mode; ``w_t`` is ``cl_state[weight_name]`` of
  the current experience. Zero until there is a teacher.
  """
  def penalty(ctx, params, cl_state, batch, logits):
    del logits
    current = penultimate_features(ctx, params, cl_state["model_state"],
                                   batch["x"], batch["task"])
    previous = penultimate_features(ctx, cl_state["teacher_params"],
                                    cl_state["teacher_model_state"],
                                    batch["x"], batch["task"])
    # Without a teacher, a zero difference: masking the penalty alone would
    # still send NaN gradients through non-finite placeholder features.
    previous = jnp.where(cl_state["has_teacher"], previous,
                         jax.lax.stop_gradient(current))
    mean = weighted_mean(distance(current, previous), batch["weight"])
    weight = cl_state[weight_name][cl_state["experience"]]
    return jnp.where(cl_state["has_teacher"], weight * mean, 0.0)
  return penalty


def _freeze_trained_units(grads: PyTree, path: tuple[str, ...],
                          classes: jax.Array, units: jax.Array) -> PyTree:
  """Zeroes the output layer's gradient for the output units trained so far.

  The layer under ``path`` is a ``Dense`` (kernel ``[d, C]``, bias ``[C]``)
  or a cosine layer (kernel ``[d, C]``, a scalar ``sigma``, frozen with the
  first trained unit), whose units are ``classes`` (``bool[C]``), or a
  multi-head classifier
  (kernel ``[T, d, C]``, bias ``[T, C]``), whose units are ``units``
  (``bool[T, C]``). jaxcl's heads hold every class and task from the start,
  so the units of classes and tasks not trained yet stay trainable, as
  Avalanche's growing heads add them trainable.
  """
  layer = grads
  for key in path:
    layer = layer[key]
  trained = classes
  if layer["kernel"].ndim == 3 and units.shape[0] == 1:
    # A stream of one task trains the head of its label, whichever it is:
    # the same units of every head (the others never train).
    trained = jnp.broadcast_to(units, (layer["kernel"].shape[0],)
                               + units.shape[1:])
  elif layer["kernel"].ndim == 3:
    # A model may hold more heads than the benchmark has tasks: those past
    # the task table were never trained.
    heads, known = layer["kernel"].shape[0], min(layer["kernel"].shape[0],
                                                 units.shape[0])
    trained = jnp.zeros((heads,) + units.shape[1:], bool).at[:known].set(
        units[:known])

  def visit(key_path, leaf):
    keys = tuple(getattr(k, "key", k) for k in key_path)
    if keys[:len(path)] != path:
      return leaf
    if leaf.ndim == 0:
      # A scale shared by every unit (a cosine layer's sigma) moves the
      # trained units' outputs too.
      return jnp.where(jnp.any(trained), jnp.zeros_like(leaf), leaf)
    mask = trained if leaf.ndim == trained.ndim else trained[..., None, :]
    return jnp.where(mask, jnp.zeros_like(leaf), leaf)
  return jax.tree_util.tree_map_with_path(visit, grads)


def lfl(lambda_e: float | Sequence[float] = 1e-4,
        freeze_head: bool = True) -> Strategy:
  """Less-Forgetful Learning (Jung et al., 2016), as in Avalanche.

  The teacher is a copy of the model taken after each experience. The penalty
  is ``λ_e · mean (h(x) − h*(x))²``, the mean squared difference (over real
  samples and feature units) between the current and the teacher's
  penultimate features, both computed in evaluation mode. Features are the
  inputs of the model's output layer, the last ``flax.linen.Dense`` (or
  :class:`jaxcl.models.MultiHeadClassifier` or
  :class:`jaxcl.models.CosineLinear`) it calls, found with
  ``flax.linen.intercept_methods``. The output units trained in earlier
  experiences are frozen: their gradient is zeroed (with plain SGD that
  freezes them; optimizers with momentum or weight decay still move them,
  use ``optax.masked`` for those). Avalanche freezes its whole last linear
  layer, which a growing head replaces by a new, trainable one when classes
  arrive (docs/strategies_regularization.md compares the two); jaxcl's
  heads hold every class and task from the start, so the units of classes
  (of a multi-head model: of task heads) not trained yet stay trainable.

  Args:
    lambda_e: Penalty weight (≥ 0), or one per experience (the last one
      repeats).
    freeze_head: Zero the gradient of the output units trained before.

  Returns:
    The strategy. Its state holds ``lambda_e`` (one value per experience),
    ``teacher_params``, ``teacher_model_state``, ``model_state`` (the
    current model's), ``old_classes``, ``old_task_classes``, ``has_teacher``
    and ``experience``.

  Example:
    >>> lfl(lambda_e=1e-4).name
    'lfl'
  """
  lambdas = _check_schedule("lambda_e", lambda_e)
  if not isinstance(freeze_head, (bool, np.bool_)):
    raise TypeError(f"freeze_head must be a bool, got {freeze_head!r}.")

  def init(ctx, params, key):
    return {**_init_teacher(ctx, params, key),
            "lambda_e": _schedule_array(lambdas, ctx.n_experiences)}

  def transform_grads(ctx, grads, state, batch, key):
    del key
    path = output_layer_path(ctx, state.params, state.model_state,
                             batch["x"], batch["task"])
    cl = state.cl_state
    return _freeze_trained_units(grads, path, cl["old_classes"],
                                 cl["old_task_classes"])

  return Strategy(
      name="lfl", init=init, begin_experience=_begin_distillation,
      penalty=_feature_penalty("lambda_e", _squared_distance),
      after_step=_track_model_state,
      end_experience=_snapshot_teacher,
      **({"transform_grads": transform_grads} if freeze_head else {}))


def feature_distillation(alpha: float | Sequence[float] = 1.0,
                         mode: str = "cosine") -> Strategy:
  """Feature distillation, as Avalanche's ``FeatureDistillationPlugin``.

  The teacher is a copy of the model taken after each experience (as for
  :func:`lwf`). The penalty pulls the current penultimate features ``h(x)``
  towards the teacher's ``h*(x)`` on the current inputs, both in evaluation
  mode:

  - ``mode="cosine"``: ``α_t · (1 − mean_i cos(h(x_i), h*(x_i)))``;
  - ``mode="mse"``: ``α_t · mean_i mean_u (h_u(x_i) − h*_u(x_i))²``, LFL's
    penalty without its frozen head.

  Features are the inputs of the model's output layer (see :func:`lfl`).

  Args:
    alpha: Distillation weight (≥ 0), or one per experience (the last one
      repeats).
    mode: ``"cosine"`` (Avalanche's default) or ``"mse"``.

  Returns:
    The strategy. Its state holds ``alpha`` (one value per experience),
    ``teacher_params``, ``teacher_model_state``, ``model_state`` (the
    current model's), ``old_classes``, ``old_task_classes``,
    ``has_teacher`` and ``experience``.

  Example:
    >>> feature_distillation(alpha=[0.0, 2.0], mode="mse").name
    'feature_distillation'
  """
  alphas = _check_schedule("alpha", alpha)
  mode = _validation.check_choice("mode", mode, tuple(_FEATURE_DISTANCES))

  def init(ctx, params, key):
    return {**_init_teacher(ctx, params, key),
            "alpha": _schedule_array(alphas, ctx.n_experiences)}

  return Strategy(name="feature_distillation", init=init,
                  begin_experience=_begin_distillation,
                  penalty=_feature_penalty("alpha", _FEATURE_DISTANCES[mode]),
                  after_step=_track_model_state,
                  end_experience=_snapshot_teacher)


STRATEGIES = {"ewc": ewc, "feature_distillation": feature_distillation,
              "lfl": lfl, "lwf": lwf, "mas": mas, "rwalk": rwalk, "si": si}
