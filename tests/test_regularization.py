"""Regularisation and distillation strategies against hand-computed values.

Most checks run the hooks directly on a linear softmax model, whose gradients
have closed forms in numpy; a few run whole streams through ``jaxcl.fit`` and
``make_train_experience`` (one compile per stream, vmap over λ).
"""

import collections
import functools
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_benchmark

import jaxcl
from jaxcl import cli
from jaxcl.benchmarks import Experience
from jaxcl.models import MLP, MTMLP, Model, as_model
from jaxcl.strategies import regularization
from jaxcl.strategies.model_utils import l2_normalize, penultimate_features
from jaxcl.strategies import (StrategyContext, chain, ewc,
                              feature_distillation, from_spec, lfl, lwf, mas,
                              rwalk, si)
from jaxcl.training import (cross_entropy, experience_data, init_state,
                            make_train_experience)

N_CLASSES, DIM = 3, 2
LINEAR = Model(
    init=lambda key, x, task: ({"w": jnp.zeros((DIM, N_CLASSES)),
                                "b": jnp.zeros(N_CLASSES)}, {}),
    apply=lambda p, s, x, task, train, key: (x @ p["w"] + p["b"], s))


def _ctx(model=LINEAR, batch_size=2, experience_size=5, input_dim=DIM):
  return StrategyContext(model=model, preprocess=lambda x: x,
                         loss=cross_entropy, n_classes=N_CLASSES,
                         n_experiences=3, input_shape=(input_dim,),
                         batch_size=batch_size,
                         experience_size=experience_size)


def _data(seed, n=3, size=5, input_dim=DIM, index=0, labels=(0, 1, 2)):
  rng = np.random.default_rng(seed)
  exp = Experience(x=rng.normal(size=(n, input_dim)).astype(np.float32),
                   y=rng.choice(labels, n), task=np.zeros(n),
                   index=index, classes=tuple(range(N_CLASSES)), origin="train")
  return exp, jax.tree.map(jnp.asarray, experience_data(exp, size, N_CLASSES))


def _params(seed):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.normal(size=(DIM, N_CLASSES)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=N_CLASSES), jnp.float32)}


def _state(strategy, ctx, params, seen=(True,) * N_CLASSES):
  state = init_state(ctx, strategy, optax.sgd(0.1), jax.random.key(0),
                     jnp.zeros((1,) + ctx.input_shape),
                     jnp.zeros((1,), jnp.int32))
  cl_state = strategy.init(ctx, params, jax.random.key(1))
  return state.replace(params=params, cl_state=cl_state,
                       seen_classes=jnp.asarray(seen))


def _ender(strategy, ctx):
  """The strategy's ``end_experience``, jitted once for repeated calls."""
  end = jax.jit(functools.partial(strategy.end_experience, ctx))
  return lambda state, data: end(state, data, jax.random.key(2))


def _end(strategy, ctx, state, data):
  return _ender(strategy, ctx)(state, data)


def _penalty(strategy, ctx, params, cl_state, batch=None, logits=None):
  return float(strategy.penalty(ctx, params, cl_state, batch, logits))


# numpy references for the linear model -------------------------------------


def _softmax(z, seen):
  z = np.where(seen, z, -np.inf)
  e = np.exp(z - z.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def _ce_grad(params, x, y, seen):
  """Gradient of the mean cross-entropy of a linear softmax model."""
  w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
  dz = _softmax(x @ w + b, np.asarray(seen)) - np.eye(N_CLASSES)[y]
  return {"w": x.T @ dz / len(y), "b": dz.mean(0)}


def _np_fisher(params, exp, batch_size, seen):
  """Avalanche: mean over DataLoader batches of the squared batch gradient."""
  starts = range(0, len(exp), batch_size)
  grads = [_ce_grad(params, exp.x[s:s + batch_size], exp.y[s:s + batch_size],
                    seen) for s in starts]
  return {k: np.mean([g[k] ** 2 for g in grads], 0) for k in ("w", "b")}


def _np_quadratic(weight, params, anchor):
  return sum(np.sum(np.asarray(weight[k]) * (np.asarray(params[k]) -
                                             np.asarray(anchor[k])) ** 2)
             for k in ("w", "b"))


def _close(tree, expected, rtol=1e-5, atol=1e-7):
  for k in ("w", "b"):
    np.testing.assert_allclose(tree[k], expected[k], rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape", [(), (1,), (2,), (5,), (7, 3), (3, 2, 4)])
def test_quadratic_sum_covers_every_element_once(shape):
  # On a CPU the sum runs over the two halves of the leading axis.
  rng = np.random.default_rng(len(shape))
  weight, params, anchor = (
      {"leaf": rng.normal(size=shape).astype(np.float32)} for _ in range(3))
  expected = np.sum(weight["leaf"] * (params["leaf"] - anchor["leaf"]) ** 2)
  assert float(regularization._quadratic(weight, params, anchor)) == (
      pytest.approx(expected, rel=1e-5))


# EWC -------------------------------------------------------------------------


@pytest.mark.parametrize("seen", [(True, True, True), (True, False, True)])
def test_ewc_fisher_is_mean_squared_minibatch_gradient(seen):
  ctx, strategy = _ctx(), ewc(ewc_lambda=2.0)
  # 3 real rows padded to 5: batches of 2, 1 and 0 real rows.
  exp, data = _data(0, labels=np.flatnonzero(seen))
  params = _params(1)
  state = _end(strategy, ctx, _state(strategy, ctx, params, seen), data)
  expected = _np_fisher(params, exp, 2, seen)
  _close(state.cl_state["importance"], expected)
  if not seen[1]:  # Masked classes get no gradient, hence no importance.
    assert np.all(np.asarray(state.cl_state["importance"]["w"])[:, 1] == 0)
  theta = _params(7)
  assert _penalty(strategy, ctx, theta, state.cl_state) == pytest.approx(
      2.0 * _np_quadratic(expected, theta, params), rel=1e-5)


def test_ewc_per_sample_fisher_is_mean_squared_sample_gradient():
  ctx, strategy = _ctx(), ewc(fisher="empirical_per_sample")
  exp, data = _data(3)
  params = _params(4)
  state = _end(strategy, ctx, _state(strategy, ctx, params), data)
  grads = [_ce_grad(params, exp.x[i:i + 1], exp.y[i:i + 1], [True] * 3)
           for i in range(len(exp))]
  _close(state.cl_state["importance"],
         {k: np.mean([g[k] ** 2 for g in grads], 0) for k in ("w", "b")})


def test_ewc_separate_equals_explicit_sum_over_experiences():
  ctx, strategy = _ctx(), ewc(ewc_lambda=0.5)
  state, end = _state(strategy, ctx, _params(0)), _ender(strategy, ctx)
  terms = []
  for e in range(3):
    exp, data = _data(10 + e, n=2 + e)
    params = {k: v * (1 + e) for k, v in _params(20 + e).items()}
    state = end(state.replace(params=params), data)
    terms.append((_np_fisher(params, exp, 2, [True] * 3), params))
  theta = _params(99)
  explicit = sum(_np_quadratic(f, theta, anchor) for f, anchor in terms)
  assert _penalty(strategy, ctx, theta, state.cl_state) == pytest.approx(
      0.5 * explicit, rel=1e-5)
  # At every past anchor the penalty is the other experiences' terms only.
  at_first = sum(_np_quadratic(f, terms[0][1], a) for f, a in terms[1:])
  assert _penalty(strategy, ctx, terms[0][1], state.cl_state) == pytest.approx(
      0.5 * at_first, rel=1e-4)


def test_online_ewc_decays_importance_and_anchors_last_params():
  ctx, strategy = _ctx(), ewc(ewc_lambda=1.5, mode="online", decay_factor=0.3)
  state, end = _state(strategy, ctx, _params(0)), _ender(strategy, ctx)
  fishers = []
  for e in range(3):
    exp, data = _data(30 + e)
    params = _params(40 + e)
    state = end(state.replace(params=params), data)
    fishers.append(_np_fisher(params, exp, 2, [True] * 3))
  expected = {k: 0.09 * fishers[0][k] + 0.3 * fishers[1][k] + fishers[2][k]
              for k in ("w", "b")}
  _close(state.cl_state["importance"], expected)
  theta = _params(5)
  assert _penalty(strategy, ctx, theta, state.cl_state) == pytest.approx(
      1.5 * _np_quadratic(expected, theta, params), rel=1e-5)


# SI --------------------------------------------------------------------------


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="the update waits for the loss on the CPU only")
def test_penalty_value_leaves_the_parameters_updated_in_place(monkeypatch):
  # EWC's loss reads every parameter (its penalty's value); the update must
  # wait for it, or XLA:CPU copies each parameter in every step first.
  compiled = []
  compile_ = jax.stages.Lowered.compile
  monkeypatch.setattr(jax.stages.Lowered, "compile", lambda self, *a, **k: (
      compiled.append(compile_(self, *a, **k)), compiled[-1])[1])
  jaxcl.fit(MLP(4, hidden_size=40, drop_rate=0.0), ewc(1.0), optax.sgd(0.1),
            make_benchmark(dim=24), epochs=1, batch_size=4, progress=False)
  training, = [c.as_text() for c in compiled
               if c.as_text().split()[1] == "jit_train_experience,"]
  # The 24x40 kernel, copied from the loop's state (its own, the anchor's or
  # the importance's) inside the loop body.
  assert re.findall(r"f32\[24,40\]\{1,0\} copy\(%get-tuple-element",
                    training) == []


def test_si_path_integral_on_two_sgd_steps():
  lr, eps, lam = 0.5, 10.0, 3.0
  ctx = _ctx(batch_size=4, experience_size=4)
  strategy = si(si_lambda=lam, eps=eps)
  exp, data = _data(5, n=4, size=4)
  theta0 = _params(6)
  train = make_train_experience(ctx, strategy, optax.sgd(lr), epochs=2)
  state, _ = jax.jit(train)(_state(strategy, ctx, theta0), data)
  # One batch holds the whole experience: two plain gradient steps.
  thetas, path = [jax.tree.map(np.asarray, theta0)], {"w": 0.0, "b": 0.0}
  for _ in range(2):
    g = _ce_grad(thetas[-1], exp.x, exp.y, [True] * 3)
    thetas.append({k: thetas[-1][k] - lr * g[k] for k in g})
    path = {k: path[k] + g[k] * (thetas[-1][k] - thetas[-2][k]) for k in g}
  cl = state.cl_state
  _close(cl["path"], path, rtol=1e-4)
  _close(state.params, thetas[-1], rtol=1e-5)
  cum = {k: path[k] / ((thetas[2][k] - thetas[0][k]) ** 2 + eps) for k in path}
  importance = {k: np.minimum(-cum[k], 1e-3) for k in cum}
  _close(cl["importance"], importance, rtol=1e-4)
  assert np.any(np.asarray(cl["importance"]["w"]) < 1e-3)  # Not all capped.
  theta = _params(8)
  assert _penalty(strategy, ctx, theta, cl) == pytest.approx(
      lam / 2 * _np_quadratic(importance, theta, thetas[2]), rel=1e-4)


# MAS -------------------------------------------------------------------------


def test_mas_importance_and_alpha_blend():
  ctx, strategy = _ctx(), mas(lambda_reg=2.0, alpha=0.25)

  def np_importance(params, exp):
    w, b = np.asarray(params["w"]), np.asarray(params["b"])
    out = {"w": [], "b": []}
    for s in range(0, len(exp), 2):
      x = exp.x[s:s + 2]
      f = x @ w + b  # d mean_i ||f_i||^2 = 2 f / n.
      out["w"].append(np.abs(x.T @ (2 * f / len(x))))
      out["b"].append(np.abs((2 * f / len(x)).sum(0)))
    return {k: np.mean(v, 0) for k, v in out.items()}

  state, end = _state(strategy, ctx, _params(0)), _ender(strategy, ctx)
  expected = {"w": 0.0, "b": 0.0}
  for e in range(2):
    exp, data = _data(50 + e)
    params = _params(60 + e)
    state = end(state.replace(params=params), data)
    new = np_importance(params, exp)
    # Avalanche takes the first importance whole, then blends.
    expected = new if e == 0 else {
        k: 0.25 * expected[k] + 0.75 * new[k] for k in new}
  _close(state.cl_state["importance"], expected, rtol=1e-5)
  theta = _params(9)
  assert _penalty(strategy, ctx, theta, state.cl_state) == pytest.approx(
      2.0 * _np_quadratic(expected, theta, params), rel=1e-5)


# RWalk -----------------------------------------------------------------------


def test_rwalk_fisher_scores_and_penalty_weights():
  ctx, alpha = _ctx(), 0.75
  strategy = rwalk(ewc_lambda=0.5, ewc_alpha=alpha, delta_t=2)
  exp, _ = _data(70, n=4)
  batch = {"x": jnp.asarray(exp.x), "y": jnp.asarray(exp.y),
           "task": jnp.zeros(4, jnp.int32), "weight": jnp.ones(4)}
  thetas = [_params(71), _params(72), _params(73)]
  state = _state(strategy, ctx, thetas[0])
  after = jax.jit(functools.partial(strategy.after_step, ctx))
  for t in range(2):
    old = state.replace(params=thetas[t], step=jnp.int32(t))
    new = old.replace(params=thetas[t + 1], step=jnp.int32(t + 1))
    state = new.replace(cl_state=after(old, new, None, batch,
                                       jax.random.key(0)))
  g = [_ce_grad(thetas[t], exp.x, exp.y, [True] * 3) for t in range(2)]
  np_theta = [jax.tree.map(np.asarray, t) for t in thetas]
  fisher = {k: alpha * g[1][k] ** 2 + (1 - alpha) * g[0][k] ** 2 for k in "wb"}
  loss = {k: -sum(g[t][k] * (np_theta[t + 1][k] - np_theta[t][k])
                  for t in range(2)) for k in "wb"}
  score = {k: loss[k] / (0.5 * fisher[k] * (np_theta[2][k] - np_theta[0][k])
                         ** 2 + np.finfo(np.float32).eps) for k in "wb"}
  cl = state.cl_state
  _close(cl["fisher"], fisher, rtol=1e-5)
  _close(cl["window_score"], score, rtol=1e-3)  # The window closed at step 2.
  _close(cl["window_loss"], {"w": 0, "b": 0})
  _close(cl["window_start"], np_theta[2])
  state = _end(strategy, ctx, state, None)
  max_f = max(fisher[k].max() for k in "wb")
  max_s = max(score[k].max() for k in "wb")
  weight = {k: fisher[k] / max_f + np.maximum(score[k], 0) / max_s for k in "wb"}
  _close(state.cl_state["importance"], weight, rtol=1e-3)
  theta = _params(74)
  assert _penalty(strategy, ctx, theta, state.cl_state) == pytest.approx(
      0.5 * _np_quadratic(weight, theta, np_theta[2]), rel=1e-3)


# LwF and LFL -----------------------------------------------------------------


def _np_kl(teacher, student, classes, temperature):
  q = _softmax(teacher / temperature, classes)[:, classes]
  p = _softmax(student / temperature, classes)[:, classes]
  return np.mean(np.sum(q * (np.log(q) - np.log(p)), 1))


def test_lwf_distils_only_old_classes_with_per_experience_alpha():
  ctx, strategy = _ctx(), lwf(alpha=[0.0, 2.0, 5.0], temperature=3.0)
  # A stream sliced from its second experience: the values go by position
  # (Avalanche's train_exp_counter), not by the experiences' indices.
  exp, data = _data(80, index=1)
  teacher = _params(81)
  state = _state(strategy, ctx, teacher, seen=(True, False, True))
  begin = jax.jit(functools.partial(strategy.begin_experience, ctx))
  state = begin(state, data, jax.random.key(0))
  assert _penalty(strategy, ctx, teacher, state.cl_state,
                  {"x": exp.x, "task": exp.task, "weight": np.ones(3)},
                  jnp.ones((3, N_CLASSES))) == 0.0  # No teacher yet.
  state = _end(strategy, ctx, state, data)
  _, data1 = _data(82, index=2)
  state = begin(state.replace(seen_classes=jnp.ones(3, bool)), data1,
                jax.random.key(0))
  cl = state.cl_state
  assert int(cl["experience"]) == 1
  np.testing.assert_array_equal(cl["old_classes"], [True, False, True])
  batch = {"x": exp.x, "task": exp.task, "weight": np.ones(3)}
  teacher_logits = exp.x @ np.asarray(teacher["w"]) + np.asarray(teacher["b"])
  assert _penalty(strategy, ctx, teacher, cl, batch, teacher_logits) == (
      pytest.approx(0.0, abs=1e-6))
  student = teacher_logits + np.random.default_rng(0).normal(size=(3, 3))
  value = _penalty(strategy, ctx, teacher, cl, batch, student)
  old = np.array([True, False, True])
  assert value > 0
  assert value == pytest.approx(
      2.0 * _np_kl(teacher_logits, student, old, 3.0), rel=1e-5)
  # Class 1 was not seen before: its logit does not matter.
  student[:, 1] += 5.0
  assert _penalty(strategy, ctx, teacher, cl, batch, student) == (
      pytest.approx(value, rel=1e-6))


# One linear head per task: sample i uses head task[i].
MULTI_HEAD = Model(
    init=lambda key, x, task: ({"w": jnp.zeros((2, DIM, N_CLASSES)),
                                "b": jnp.zeros((2, N_CLASSES))}, {}),
    apply=lambda p, s, x, task, train, key: (
        jnp.einsum("bd,bdc->bc", x, p["w"][task]) + p["b"][task], s))


def test_lwf_with_task_labels_distils_each_past_task_head():
  # Task 0 holds classes {0, 1} (seen before), task 1 class {2} (current).
  ctx = _ctx(model=MULTI_HEAD)._replace(
      task_classes=np.array([[1, 1, 0], [0, 0, 1]], bool))
  strategy = lwf(alpha=1.0, temperature=2.0)
  exp, data = _data(83)
  rng = np.random.default_rng(84)
  teacher, student = ({"w": jnp.asarray(rng.normal(size=(2, DIM, 3)),
                                        jnp.float32),
                       "b": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)}
                      for _ in range(2))
  state = _state(strategy, ctx, teacher, seen=(True, True, False))
  state = _end(strategy, ctx, state, data)
  batch = {"x": exp.x, "task": np.ones(3, np.int32), "weight": np.ones(3)}
  # The trained logits hold task 1's head only (masked): head 0 is recomputed.
  masked = np.full((3, N_CLASSES), -1000.0)
  value = _penalty(strategy, ctx, student, state.cl_state, batch, masked)

  def head0(p):
    return exp.x @ np.asarray(p["w"][0]) + np.asarray(p["b"][0])

  assert value > 0
  assert value == pytest.approx(
      _np_kl(head0(teacher), head0(student), np.array([True, True, False]),
             2.0), rel=1e-5)


def test_lwf_with_repeated_class_ids_distils_only_trained_heads():
  # Both tasks use class ids {0, 1}; only task 0 was trained.
  ctx = _ctx(model=MULTI_HEAD)._replace(
      task_classes=np.array([[1, 1, 0], [1, 1, 0]], bool))
  strategy = lwf(alpha=1.0, temperature=2.0)
  exp, data = _data(85, labels=(0, 1))
  teacher = {"w": jnp.asarray(np.random.default_rng(86).normal(
      size=(2, DIM, 3)), jnp.float32), "b": jnp.zeros((2, 3))}
  state = _end(strategy, ctx, _state(strategy, ctx, teacher,
                                     seen=(True, True, False)), data)
  batch = {"x": exp.x, "task": np.ones(3, np.int32), "weight": np.ones(3)}
  masked = np.full((3, N_CLASSES), -1000.0)

  def moved(head):
    return {**teacher, "b": teacher["b"].at[head, 0].add(1.0)}

  # The current task's head is free to move; the trained one is held.
  assert _penalty(strategy, ctx, moved(1), state.cl_state, batch,
                  masked) == 0.0
  head0 = exp.x @ np.asarray(teacher["w"][0])
  assert _penalty(strategy, ctx, moved(0), state.cl_state, batch,
                  masked) == pytest.approx(_np_kl(
                      head0, head0 + [1.0, 0.0, 0.0],
                      np.array([True, True, False]), 2.0), rel=1e-5)


def _mlp_teacher_state(strategy, before_teacher):
  """A 4-5-3 MLP whose ``strategy`` took its teacher at ``params`` after one
  experience, and a batch of two real rows and one padding row.

  ``before_teacher(ctx, params, state, batch)`` runs on the first
  experience's state, before the teacher. Returns ``(ctx, params, state,
  batch, exp)``, ``state`` at the beginning of the second experience.
  """
  module = MLP(N_CLASSES, hidden_size=5, drop_rate=0.0)
  ctx = _ctx(model=as_model(module), input_dim=4)
  exp, data = _data(90, input_dim=4)
  params, _ = ctx.model.init(jax.random.key(0), jnp.zeros((1, 4)),
                             jnp.zeros((1,), jnp.int32))
  state = strategy.begin_experience(ctx, _state(strategy, ctx, params), data,
                                    None)
  batch = {"x": jnp.asarray(exp.x), "task": jnp.zeros(3, jnp.int32),
           "weight": jnp.asarray([1.0, 1.0, 0.0])}
  before_teacher(ctx, params, state, batch)
  state = _end(strategy, ctx, state, data)
  state = strategy.begin_experience(ctx, state, data.replace(index=1), None)
  return ctx, params, state, batch, exp


def _mlp_hidden(params, x):
  """The 4-5-3 MLP's penultimate features in numpy."""
  layer = params["TorchLinear_0"]["Dense_0"]
  return np.maximum(x @ np.asarray(layer["kernel"], np.float64)
                    + np.asarray(layer["bias"], np.float64), 0)


def _grads_kept(strategy, ctx, params, state, batch):
  """Asserts that ``transform_grads`` leaves all-ones gradients as they are."""
  grads = jax.tree.map(jnp.ones_like, params)
  kept = strategy.transform_grads(ctx, grads, state, batch, jax.random.key(0))
  chex.assert_trees_all_equal(kept, grads)


def test_lfl_penalises_penultimate_features_and_freezes_head():
  strategy = lfl(lambda_e=[0.5, 3.0])
  # No teacher: nothing frozen.
  ctx, params, state, batch, exp = _mlp_teacher_state(
      strategy, functools.partial(_grads_kept, strategy))
  moved = jax.tree.map(lambda p: p + 0.1, params)
  expected = 3.0 * np.mean((_mlp_hidden(moved, exp.x[:2])
                            - _mlp_hidden(params, exp.x[:2])) ** 2)
  assert _penalty(strategy, ctx, moved, state.cl_state, batch) == (
      pytest.approx(expected, rel=1e-5))
  assert _penalty(strategy, ctx, params, state.cl_state, batch) == 0.0
  grads = jax.tree.map(jnp.ones_like, params)
  frozen = strategy.transform_grads(ctx, grads, state.replace(params=moved),
                                    batch, jax.random.key(0))
  chex.assert_trees_all_equal(frozen["TorchLinear_0"], grads["TorchLinear_0"])
  assert all(np.all(g == 0) for g in jax.tree.leaves(frozen["TorchLinear_1"]))


@pytest.mark.parametrize("heads", [None, 2, 3, "one task labelled 1"])
def test_lfl_freezes_only_the_output_units_trained_before(heads):
  multi_head = heads is not None
  one_task = heads == "one task labelled 1"
  if one_task:  # Classes {0, 1} trained under label 1, the stream's only.
    module = MTMLP(N_CLASSES, n_tasks=2, hidden_size=5, drop_rate=0.0)
    ctx = _ctx(model=as_model(module), input_dim=4)
  elif multi_head:  # Task 0: classes {0, 1}, trained; task 1: {2}, not yet.
    # A third head (a model with more heads than tasks) is never trained.
    module = MTMLP(N_CLASSES, n_tasks=heads, hidden_size=5, drop_rate=0.0)
    ctx = _ctx(model=as_model(module), input_dim=4)._replace(
        task_classes=np.array([[1, 1, 0], [0, 0, 1]], bool))
  else:  # One head: classes {0, 1} trained, class 2 not yet.
    module = MLP(N_CLASSES, hidden_size=5, drop_rate=0.0)
    ctx = _ctx(model=as_model(module), input_dim=4)
  strategy = lfl(lambda_e=1.0)
  exp, data = _data(91, input_dim=4, labels=(0, 1))
  if one_task:
    data = data.replace(task=jnp.ones_like(data.task))
  params, _ = ctx.model.init(jax.random.key(0), jnp.zeros((1, 4)),
                             jnp.zeros((1,), jnp.int32))
  state = _end(strategy, ctx, _state(strategy, ctx, params,
                                     seen=(True, True, False)), data)
  grads = jax.tree.map(jnp.ones_like, params)
  batch = {"x": jnp.asarray(exp.x), "task": jnp.ones(3, jnp.int32),
           "weight": jnp.ones(3)}
  frozen = jax.jit(functools.partial(strategy.transform_grads, ctx))(
      grads, state, batch, jax.random.key(0))
  head = jax.tree.leaves(frozen[max(frozen)])  # the output layer: bias, kernel
  trained = np.array([True, True, False])
  for leaf in map(np.asarray, head):
    # One task (head 1 trained them): every head's classes 0 and 1 frozen.
    if multi_head and not one_task:  # Head 0's classes 0 and 1 frozen.
      leaf, others = leaf[0], leaf[1:]
      assert np.all(others == 1)
    assert np.all(leaf[..., trained] == 0) and np.all(leaf[..., ~trained] == 1)
  # The features below the head keep their gradient.
  below = [g for k, g in frozen.items() if k != max(frozen)]
  assert all(np.all(leaf == 1) for leaf in jax.tree.leaves(below))


def _np_cosine(a, b):
  """PyTorch's cosine_similarity per row (a zero row: 0)."""
  norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
  return np.where(norms > 0, np.sum(a * b, 1) / np.maximum(norms, 1e-30), 0.0)


@pytest.mark.parametrize("mode", ["cosine", "mse"])
def test_feature_distillation_penalises_distance_to_teacher_features(mode):
  strategy = feature_distillation(alpha=[0.5, 3.0], mode=mode)

  def no_penalty_yet(ctx, params, state, batch):
    moved = jax.tree.map(lambda p: p + 0.1, params)
    assert _penalty(strategy, ctx, moved, state.cl_state, batch) == 0.0

  ctx, params, state, batch, exp = _mlp_teacher_state(strategy,
                                                      no_penalty_yet)
  moved = jax.tree.map(lambda p: p + 0.1, params)
  moved["TorchLinear_0"]["Dense_0"]["kernel"] = (
      moved["TorchLinear_0"]["Dense_0"]["kernel"].at[:, 1].multiply(-2.0))
  new, old = _mlp_hidden(moved, exp.x[:2]), _mlp_hidden(params, exp.x[:2])
  if mode == "cosine":
    expected = 3.0 * (1.0 - np.mean(_np_cosine(new, old)))
  else:
    expected = 3.0 * np.mean((new - old) ** 2)
  assert expected > 1e-3
  assert _penalty(strategy, ctx, moved, state.cl_state, batch) == (
      pytest.approx(expected, rel=1e-5))
  assert _penalty(strategy, ctx, params, state.cl_state, batch) == (
      pytest.approx(0.0, abs=1e-6))
  # Unlike LFL, the output layer keeps its gradient.
  _grads_kept(strategy, ctx, params, state, batch)


def test_feature_distillation_cosine_of_a_zero_feature_row_is_zero():
  # Every hidden unit off for the current model: cos is 0 (PyTorch's value),
  # the penalty alpha * 1, and the gradient finite (the norm's is NaN at 0).
  strategy = feature_distillation(alpha=2.0)
  ctx, params, state, batch, exp = _mlp_teacher_state(strategy,
                                                      lambda *args: None)
  dead = jax.tree.map(lambda p: p, params)
  dead["TorchLinear_0"]["Dense_0"]["bias"] = jnp.full(5, -1e3)
  assert np.all(_mlp_hidden(dead, exp.x) == 0)
  assert np.any(_mlp_hidden(params, exp.x[:2]) > 0)
  value, grads = jax.value_and_grad(
      lambda p: strategy.penalty(ctx, p, state.cl_state, batch, None))(dead)
  assert float(value) == pytest.approx(2.0)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  # ReLU's gradient blocks a NaN above; a zero row of features that are not
  # ReLU outputs must give a finite gradient too.
  zero_row = jnp.zeros((1, 5))
  grad = jax.grad(lambda h: regularization._cosine_distance(
      h, jnp.ones((1, 5))).sum())(zero_row)
  assert np.all(np.isfinite(grad))


def test_feature_distillation_keeps_old_features_closer_than_naive():
  model = as_model(MLP(N_CLASSES, hidden_size=16, drop_rate=0.0))
  ctx = _ctx(model=model, batch_size=8, experience_size=40, input_dim=4)
  (first, data0), (_, data1) = (_data(seed, n=40, size=40, input_dim=4,
                                      index=index)
                                for index, seed in enumerate((5, 6)))
  params, _ = model.init(jax.random.key(0), jnp.zeros((1, 4)),
                         jnp.zeros((1,), jnp.int32))

  def drift(strategy):
    """1 − cos of the first experience's features before and after the
    second experience."""
    train = jax.jit(make_train_experience(ctx, strategy, optax.sgd(0.5),
                                          epochs=3))
    state, _ = train(_state(strategy, ctx, params), data0)
    after, _ = train(state, data1)
    before, after = (penultimate_features(ctx, s.params, s.model_state,
                                          jnp.asarray(first.x),
                                          jnp.zeros(40, jnp.int32))
                     for s in (state, after))
    return float(jnp.mean(1 - jnp.sum(l2_normalize(before)
                                      * l2_normalize(after), -1)))

  naive_drift = drift(jaxcl.strategies.naive())
  assert naive_drift > 0.01
  assert drift(feature_distillation(alpha=50.0)) < 0.5 * naive_drift


class _DeepBatchNorm(nn.Module):
  """24 Dense + BatchNorm layers: a zero running variance in eval mode
  scales each by 1/sqrt(eps), which overflows float32."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    for _ in range(24):
      x = nn.BatchNorm(use_running_average=not train)(nn.Dense(8)(x))
    return nn.Dense(4)(x)


def test_lfl_trains_a_deep_batch_norm_network_from_its_first_experience():
  # Before there is a teacher, its placeholder state is the model's initial
  # one (variance 1), and the penalty's gradient is zero, not NaN.
  result = jaxcl.fit(_DeepBatchNorm(), lfl(freeze_head=False),
                     optax.sgd(0.01), make_benchmark(), epochs=1,
                     batch_size=4, metrics=["accuracy"])
  assert all(np.isfinite(leaf).all()
             for leaf in jax.tree.leaves(result.state.params))
  initial = regularization.init_model_state(
      _ctx(model=as_model(_DeepBatchNorm())), jax.random.key(0))
  variances = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(
      initial) if "var" in jax.tree_util.keystr(path)]
  assert variances and all(np.all(np.asarray(v) == 1) for v in variances)


def test_lfl_refuses_models_without_a_dense_output_layer():
  strategy = lfl()
  state = _state(strategy, _ctx(), _params(0))
  with pytest.raises(ValueError, match="flax.linen.Dense"):
    strategy.penalty(_ctx(), _params(0), state.cl_state,
                     {"x": jnp.ones((2, DIM)), "task": jnp.zeros(2, jnp.int32),
                      "weight": jnp.ones(2)}, None)


# Composition, compilation, vmap ---------------------------------------------


def test_chain_penalty_is_the_sum_of_penalties():
  ctx = _ctx()
  parts = (ewc(ewc_lambda=2.0), lwf(alpha=1.5), mas(lambda_reg=0.7))
  combined = chain(*parts)
  exp, data = _data(100)
  state = _end(combined, ctx, _state(combined, ctx, _params(101)), data)
  theta = _params(102)
  batch = {"x": exp.x, "task": exp.task, "weight": np.ones(3)}
  logits = np.random.default_rng(1).normal(size=(3, N_CLASSES))
  values = [_penalty(s, ctx, theta, cl, batch, logits)
            for s, cl in zip(parts, state.cl_state)]
  assert all(v > 0 for v in values)
  assert _penalty(combined, ctx, theta, state.cl_state, batch, logits) == (
      pytest.approx(sum(values), rel=1e-6))


def _counting(strategy, calls):
  """Counts Python calls of two hooks: under jit, one call is one trace."""
  def penalty(*args):
    calls[strategy.name, "penalty"] += 1
    return strategy.penalty(*args)

  def end_experience(*args):
    calls[strategy.name, "end_experience"] += 1
    return strategy.end_experience(*args)

  return strategy._replace(penalty=penalty, end_experience=end_experience)


def test_every_strategy_compiles_once_per_stream_in_fit():
  bench = make_benchmark(n_classes=6, n_experiences=3,
                         sizes=[3, 30, 10, 10, 2, 9])
  strategies = [ewc(), si(), mas(), rwalk(delta_t=3), lwf(), lfl(),
                feature_distillation()]
  calls = collections.Counter()
  strategy = chain(*(_counting(s, calls) for s in strategies))
  result = jaxcl.fit(MLP(6, hidden_size=8, drop_rate=0.0), strategy,
                     optax.sgd(0.05), bench, epochs=2, batch_size=4)
  assert np.all(np.isfinite(result.accuracy_matrix))
  assert calls == {(s.name, hook): 1 for s in strategies
                   for hook in ("penalty", "end_experience")}
  ewc_state, si_state, *_ = result.state.cl_state
  assert float(jax.tree.leaves(ewc_state["importance"])[0].sum()) > 0
  assert int(si_state["experience"]) == 2


def test_vmap_over_hyperparameters_matches_separate_runs():
  ctx, optimizer = _ctx(), optax.sgd(0.5)
  strategy = chain(ewc(), lwf(alpha=[1.0, 1.0]))
  train = jax.jit(make_train_experience(ctx, strategy, optimizer, epochs=2))
  (_, first), (_, second) = _data(110), _data(111, n=5, index=1)
  state, _ = train(_state(strategy, ctx, _params(112)), first)
  # Three settings of (ewc_lambda, lwf alpha per experience).
  copies = [state.replace(cl_state=(
      {**state.cl_state[0], "ewc_lambda": jnp.float32(lam)},
      {**state.cl_state[1], "alpha": jnp.full(3, alpha, jnp.float32)}))
            for lam, alpha in [(0.0, 0.0), (1.0, 2.0), (30.0, 9.0)]]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *copies)
  batched, _ = jax.jit(jax.vmap(train, in_axes=(0, None)))(stacked, second)
  finals = [train(c, second)[0].params for c in copies]
  for i, params in enumerate(finals):
    chex.assert_trees_all_close({k: v[i] for k, v in batched.params.items()},
                                params, rtol=1e-5, atol=1e-6)
  # The values matter: the three runs end in different places.
  assert not np.allclose(finals[0]["w"], finals[2]["w"], atol=1e-3)


# Construction ----------------------------------------------------------------


@pytest.mark.parametrize("build, error, message", [
    (lambda: ewc(ewc_lambda=-1.0), ValueError, "ewc_lambda must be in"),
    (lambda: ewc(mode="offline"), ValueError, "Unknown ewc mode 'offline'"),
    (lambda: ewc(mode="online"), ValueError, "needs decay_factor"),
    (lambda: ewc(mode="online", decay_factor=1.5), ValueError,
     r"decay_factor must be in \[0, 1\], got 1.5"),
    (lambda: ewc(decay_factor=0.5), ValueError, "only applies to mode='online'"),
    (lambda: ewc(fisher="exact"), ValueError, "Unknown fisher 'exact'"),
    (lambda: si(si_lambda=-0.1), ValueError, "si_lambda must be in"),
    (lambda: si(si_lambda=[1.0, -2.0]), ValueError, r"si_lambda\[1\]"),
    (lambda: si(eps=0.0), ValueError, r"eps must be in \(0, inf\), got 0.0"),
    (lambda: mas(lambda_reg=-2), ValueError, "lambda_reg must be in"),
    (lambda: mas(alpha=1.2), ValueError, r"alpha must be in \[0, 1\]"),
    (lambda: rwalk(ewc_alpha=-0.1), ValueError, "ewc_alpha must be in"),
    (lambda: rwalk(delta_t=0), ValueError, "delta_t must be a positive"),
    (lambda: lwf(temperature=0.0), ValueError, "temperature must be in"),
    (lambda: lwf(alpha=[]), ValueError, "non-empty list"),
    (lambda: lwf(alpha="big"), TypeError, "alpha must be a real number"),
    # A NumPy scalar array is one value (it had no len()).
    (lambda: lwf(alpha=np.array(-0.5)), ValueError,
     r"alpha must be in \[0, inf\), got -0.5"),
    (lambda: lfl(lambda_e=-1e-4), ValueError, "lambda_e must be in"),
    (lambda: lfl(freeze_head="yes"), TypeError, "freeze_head must be a bool"),
    (lambda: feature_distillation(alpha=-1.0), ValueError,
     r"alpha must be in \[0, inf\), got -1.0"),
    (lambda: feature_distillation(mode="l1"), ValueError,
     "Unknown mode 'l1'; expected one of cosine, mse"),
])
def test_factories_reject_bad_hyperparameters(build, error, message):
  with pytest.raises(error, match=message):
    build()


def test_cli_flags_come_from_factory_signatures():
  args = cli.build_parser().parse_args([
      "run", "--strategy", "ewc+lwf", "--ewc-lambda", "3", "--mode", "online",
      "--decay-factor", "0.5", "--temperature", "4"])
  strategy = from_spec(args.strategy, **cli._strategy_hparams(args))
  assert strategy.name == "ewc+lwf"
  ewc_state, lwf_state = strategy.init(_ctx(), _params(0), jax.random.key(0))
  assert float(ewc_state["ewc_lambda"]) == 3.0
  assert float(ewc_state["decay_factor"]) == 0.5
  assert float(lwf_state["temperature"]) == 4.0
  with pytest.raises(ValueError, match="not used by strategy 'naive'"):
    from_spec("naive", ewc_lambda=1.0)
  args = cli.build_parser().parse_args([
      "run", "--strategy", "feature_distillation", "--mode", "mse",
      "--alpha", "0.5,2"])
  strategy = from_spec(args.strategy, **cli._strategy_hparams(args))
  distilled = strategy.init(_ctx(), _params(0), jax.random.key(0))
  np.testing.assert_array_equal(distilled["alpha"], [0.5, 2.0, 2.0])
