"""Prototype-based strategies: CoPE (Continual Prototype Evolution).

De Lange and Tuytelaars, "Continual Prototype Evolution: Learning Online
from Non-Stationary Data Streams", ICCV 2021, as Avalanche's ``CoPEPlugin``.
The model's L2-normalised outputs are the embedding; each class has a unit
prototype in that space, moved by momentum towards the mean
embedding of its samples, and the model predicts the class of the nearest
prototype. The embedding is trained by the pseudo-prototypical proxy loss
(:func:`ppp_loss`) on batches of current and replayed samples.

Example:
  >>> import optax, jaxcl
  >>> strategy = cope(mem_size=2000, alpha=0.99, temperature=0.1)
  >>> strategy.name
  'cope'
  >>> result = jaxcl.fit(jaxcl.models.MLP(10), strategy, optax.sgd(0.01),
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
from jaxcl.strategies.model_utils import (example_inputs, init_model_state,
                                          l2_normalize, own_class_mask,
                                          refuse_task_labels)

__all__ = ["CopeState", "cope", "ppp_loss"]

PyTree = Any


@flax.struct.dataclass
class CopeState:
  """State of :func:`cope`.

  Attributes:
    buffer: Class-balanced memory, updated with each experience after
      training on it.
    prototypes: ``[n_classes, n_features]`` unit prototypes, one per class
      of the benchmark from the start (random until the class is trained).
    sums: ``[n_classes, n_features]`` sums of the embeddings of the samples
      of each class trained on in the current experience.
    counts: ``[n_classes]`` how many samples ``sums`` adds up.
    steps: Optimizer steps taken in the current experience.
    model_state: The current model's state (batch-norm statistics), for the
      embeddings the loss computes.
    alpha: Momentum of the prototype update.
    temperature: Temperature of the loss.
  """

  buffer: buffers.Buffer
  prototypes: jax.Array
  sums: jax.Array
  counts: jax.Array
  steps: jax.Array
  model_state: Any
  alpha: jax.Array
  temperature: jax.Array


def _logsumexp_others(scores: jax.Array) -> jax.Array:
  """``out[i, c] = log Σ_{k≠c} exp(scores[i, k])``, without cancellation.

  Each row is shifted by its largest score ``m`` (column ``a``): for
  ``c ≠ a`` the sum keeps the term ``exp(0) = 1`` and subtracting
  ``exp(scores[i, c] − m) ≤ 1`` from the others loses nothing; for ``c = a``
  the sum is taken directly over the other columns. Needs two columns.
  """
  top = jnp.argmax(scores, axis=-1, keepdims=True)
  is_top = jnp.arange(scores.shape[-1]) == top
  m = jnp.take_along_axis(scores, top, axis=-1)
  shifted = jnp.exp(scores - m)
  rest = jnp.sum(jnp.where(is_top, 0.0, shifted), -1, keepdims=True)
  without_top = jax.nn.logsumexp(jnp.where(is_top, -jnp.inf, scores), -1,
                                 keepdims=True)
  return jnp.where(is_top, without_top,
                   m + jnp.log1p(jnp.maximum(rest - shifted, 0.0)))


def ppp_loss(embeddings: jax.Array, labels: jax.Array, weight: jax.Array,
             prototypes: jax.Array, temperature: jax.Array) -> jax.Array:
  """CoPE's pseudo-prototypical proxy loss (Avalanche's ``PPPloss``).

  With unit embeddings ``x_i`` of labels ``y_i`` (the rows of positive
  ``weight``), prototypes ``p_c`` and ``e(u, v) = exp(u·v / T)``, the
  probability that a proxy ``q`` of class ``c`` (its prototype, or a sample
  of the batch of class ``c`` standing in for it: a pseudo-prototype) claims
  ``x`` is ``P_c(q | x) = e(q, x) / (e(q, x) + Σ_{k≠c} e(p_k, x))``. The loss
  is ``−(A + R) / n`` over the ``n`` rows, with the attractor and the
  repellor::

    A = Σ_i log mean_{q ∈ Q_i} P_{y_i}(q | x_i),
        Q_i = {p_{y_i}} ∪ {x_j : y_j = y_i, j ≠ i}
    R = Σ_{i, j : y_j ≠ y_i}
        log(1 − (P_{y_i}(x_i | x_j) + P_{y_i}(p_{y_i} | x_j)) / 2)

  Every prototype is a constant, and so is each pseudo-prototype: the
  gradient reaches only the sample being claimed (``x_i`` in ``A``, ``x_j``
  in ``R``), as Avalanche detaches them. Computed in log space, so a small
  temperature does not overflow.

  Args:
    embeddings: ``[n, d]`` unit rows.
    labels: ``int[n]``.
    weight: ``[n]``; rows of weight 0 are left out.
    prototypes: ``[n_classes, d]`` unit rows (``n_classes ≥ 2``).
    temperature: ``T > 0``.

  Returns:
    The loss (0 without a row).

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.eye(2)
    >>> round(float(ppp_loss(x, jnp.array([0, 1]), jnp.ones(2), x, 1.0)), 4)
    0.6265
  """
  x = embeddings
  valid = weight > 0
  # Rows left out may carry any label; gathered with one in range, so that
  # an out-of-range one cannot bring NaN into the masked-out gradient.
  labels = jnp.where(valid, labels, 0)
  pseudo = x @ jax.lax.stop_gradient(x).T / temperature
  proto = x @ jax.lax.stop_gradient(prototypes).T / temperature
  others = _logsumexp_others(proto)
  pairs = valid[:, None] & valid[None, :]
  same = labels[:, None] == labels[None, :]

  # Attractor: row i claimed by its own class's proxies.
  own = labels[:, None]
  own_others = jnp.take_along_axis(others, own, -1)
  own_proto = jnp.take_along_axis(proto, own, -1)
  log_claims = jnp.concatenate([
      own_proto - jnp.logaddexp(own_proto, own_others),
      pseudo - jnp.logaddexp(pseudo, own_others)], axis=-1)
  proxies = jnp.concatenate([
      jnp.ones_like(own, bool),
      pairs & same & ~jnp.eye(x.shape[0], dtype=bool)], axis=-1)
  n_proxies = jnp.sum(proxies, -1)
  log_mean = (jax.nn.logsumexp(jnp.where(proxies, log_claims, -jnp.inf), -1)
              - jnp.log(n_proxies))
  attractor = jnp.sum(jnp.where(valid, log_mean, 0.0))

  # Repellor: row j pushed from class y_i's proxies, for every pseudo-
  # prototype x_i of another class (column i).
  rival = others[:, labels]
  rival_proto = proto[:, labels]
  log_unclaimed = jnp.logaddexp(
      rival - jnp.logaddexp(pseudo, rival),
      rival - jnp.logaddexp(rival_proto, rival)) - jnp.log(2.0)
  repellor = jnp.sum(jnp.where(pairs & ~same, log_unclaimed, 0.0))
  return -(attractor + repellor) / jnp.maximum(jnp.sum(valid), 1)


def _embed(ctx: StrategyContext, params: PyTree, model_state: PyTree,
           x: jax.Array, task: jax.Array) -> jax.Array:
  """CoPE's embedding: the model's outputs, unmasked, in evaluation mode,
  scaled to unit norm."""
  return l2_normalize(ctx.logits(params, model_state, x, task)
                      .astype(jnp.float32))


def cope(mem_size: int = 200, alpha: float = 0.99, temperature: float = 0.1,
         max_it_cnt: int = 1) -> Strategy:
  """Continual Prototype Evolution (Avalanche's ``CoPEPlugin``).

  * **Embedding.** The model's outputs scaled to unit norm, as Avalanche
    appends an L2 normalisation to the model's last layer; ``p_size`` is the
    output width. The loop's cross-entropy is zeroed (through
    ``batch["class_mask"]``): ``fit``'s training loss is the PPP loss, and
    its training accuracy the argmax of the raw outputs, not a prediction.
  * **Batches.** Each step appends ``batch_size`` samples drawn uniformly
    from a class-balanced memory of ``mem_size`` samples, which is updated
    with the whole experience after training on it.
  * **Loss.** :func:`ppp_loss` over the current and replayed samples, with
    the prototypes as they were at the experience's start.
  * **Prototypes.** One per class of the benchmark, drawn uniformly in
    ``[−1, 1]^d`` and normalised at the start. The embeddings of the
    samples of each step (before the update) are summed per class; after
    the experience, each class trained on moves to
    ``normalise(alpha · p_c + (1 − alpha) · normalise(mean_c))``.
  * **Steps.** At most ``max_it_cnt`` optimizer steps per experience
    (Avalanche stops training there): CoPE is meant for online streams,
    whose experiences are one batch each. 0 removes the cap.
  * **Prediction** (``predict`` slot): the class whose prototype has the
    largest cosine similarity with the sample's embedding; the logits are
    these similarities (classes never trained on are masked as usual).

  Differences from Avalanche, documented in ``docs/strategies_rehearsal.md``:
  ``p_size`` is the model's output width, which jaxcl's class-incremental
  loop fixes at the benchmark's ``n_classes`` (Avalanche's baseline builds
  its MLP with 32 outputs for SplitMNIST's 10 classes); the embedding is
  computed in evaluation mode (no dropout; batch-norm running statistics),
  as ER-AML's features are; the evaluation logits are the similarities, not
  a one-hot vector.

  Args:
    mem_size: Memory capacity.
    alpha: Momentum of the prototype update, in ``[0, 1]``.
    temperature: Temperature ``T`` of the loss (> 0).
    max_it_cnt: Optimizer steps per experience at most; 0 for no cap.

  Returns:
    The strategy; its ``cl_state`` is a :class:`CopeState`.

  Raises:
    ValueError: Bad arguments; (at ``init``) a stream with task labels or a
      benchmark of one class.

  Example:
    >>> cope(mem_size=2000, max_it_cnt=0).name
    'cope'
  """
  mem_size = _validation.check_positive_int("mem_size", mem_size)
  alpha = _validation.check_in_range("alpha", alpha, low=0.0, high=1.0)
  temperature = _validation.check_float32_positive("temperature", temperature)
  max_it_cnt = _validation.check_non_negative_int("max_it_cnt", max_it_cnt)

  def init(ctx, params, key):
    refuse_task_labels(ctx, "cope keeps one prototype per class and ignores "
                       "task labels, as Avalanche's CoPEPlugin; got a "
                       "stream with task labels (one head per task).")
    if ctx.n_classes < 2:
      raise ValueError(f"cope contrasts each class's prototype with the "
                       f"others'; expected n_classes >= 2, got "
                       f"{ctx.n_classes}.")
    prototype_key, state_key = jax.random.split(key)
    model_state = init_model_state(ctx, state_key)
    x, task = example_inputs(ctx)
    p_size = jax.eval_shape(
        lambda p: ctx.logits(p, model_state, x, task), params).shape[-1]
    width = (ctx.n_classes, p_size)
    return CopeState(
        buffer=buffers.for_context(ctx, mem_size, policy="class_balanced"),
        prototypes=l2_normalize(jax.random.uniform(
            prototype_key, width, jnp.float32, -1.0, 1.0)),
        sums=jnp.zeros(width, jnp.float32),
        counts=jnp.zeros(ctx.n_classes, jnp.float32),
        steps=jnp.zeros((), jnp.int32), model_state=model_state,
        alpha=jnp.float32(alpha), temperature=jnp.float32(temperature))

  def begin_experience(ctx, state, data, key):
    del ctx, data, key
    return state.replace(cl_state=state.cl_state.replace(
        steps=jnp.zeros((), jnp.int32), model_state=state.model_state))

  def transform_batch(ctx, cl, batch, key):
    out = buffers.concat_batches(
        batch, buffers.sample(cl.buffer, key, ctx.batch_size))
    if max_it_cnt:  # Past the cap every row weighs 0: the loop skips.
      out["weight"] = out["weight"] * (cl.steps < max_it_cnt)
    # Rows of weight 0 that a strategy before it appended keep their classes.
    out["class_mask"] = own_class_mask(ctx, out, out["weight"] > 0)
    return out

  def penalty(ctx, params, cl, batch, logits):
    del logits
    h = _embed(ctx, params, cl.model_state, batch["x"], batch["task"])
    return ppp_loss(h, batch["y"], batch["weight"], cl.prototypes,
                    cl.temperature)

  def after_step(ctx, old_state, new_state, grads, batch, key):
    del grads
    cl = new_state.cl_state
    x = batch["x"] if ctx.augment is None else ctx.augment(batch["x"], key)
    h = _embed(ctx, old_state.params, cl.model_state, x, batch["task"])
    members = jax.nn.one_hot(batch["y"], ctx.n_classes) * (
        batch["weight"] > 0)[:, None]
    return cl.replace(sums=cl.sums + members.T @ h,
                      counts=cl.counts + jnp.sum(members, 0),
                      steps=cl.steps + 1, model_state=new_state.model_state)

  def end_experience(ctx, state, data, key):
    del ctx
    cl = state.cl_state
    mean = l2_normalize(cl.sums / jnp.maximum(cl.counts, 1.0)[:, None])
    moved = l2_normalize(cl.alpha * cl.prototypes + (1.0 - cl.alpha) * mean)
    return state.replace(cl_state=cl.replace(
        buffer=buffers.add_experience(cl.buffer, key, data),
        prototypes=jnp.where(cl.counts[:, None] > 0, moved, cl.prototypes),
        sums=jnp.zeros_like(cl.sums), counts=jnp.zeros_like(cl.counts)))

  def predict(ctx, params, model_state, cl, x, task):
    return _embed(ctx, params, model_state, x, task) @ cl.prototypes.T

  return Strategy(name="cope", init=init, begin_experience=begin_experience,
                  transform_batch=transform_batch, penalty=penalty,
                  after_step=after_step, end_experience=end_experience,
                  predict=predict, drops_current_rows=max_it_cnt > 0)


STRATEGIES = {"cope": cope}
