"""GEM, A-GEM, iCaRL and GSS-greedy against closed forms, scipy and numpy.

The projections and the QP solver are checked on random problems (against
closed forms and ``scipy.optimize``), herding and the nearest-mean rule
against plain numpy, the hooks on tiny linear models by hand, and whole
streams through ``jaxcl.fit`` (memory contents, one compile per stream).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from conftest import assert_refuses_online_streams, make_benchmark
from flax import linen as nn

import jaxcl
from jaxcl import cli
from jaxcl.models import Model, as_model
from jaxcl.strategies import (REGISTRY, Strategy, StrategyContext, agem, chain,
                              from_spec, gem, gss_greedy, icarl, lwf)
from jaxcl.strategies.exemplars import herding
from jaxcl.strategies.model_utils import (MASK_VALUE, mask_logits,
                                         penultimate_features)
from jaxcl.strategies.projection import (agem_projection, gem_projection,
                                         solve_box_qp)
from jaxcl.training import cross_entropy, init_state

N_CLASSES, DIM = 3, 2
# A linear softmax model: per-sample gradients are easy to write by hand.
LINEAR = Model(
    init=lambda key, x, task: ({"w": jnp.zeros((DIM, N_CLASSES)),
                                "b": jnp.zeros(N_CLASSES)}, {}),
    apply=lambda p, s, x, task, train, key: (x @ p["w"] + p["b"], s))


class DenseHead(nn.Module):
  """One Dense layer: its features (the Dense input) are the inputs."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(N_CLASSES)(x)


def _ctx(model, batch_size=4):
  return StrategyContext(model=model, preprocess=lambda x: x,
                         loss=cross_entropy, n_classes=N_CLASSES,
                         n_experiences=2, input_shape=(DIM,),
                         batch_size=batch_size, experience_size=8)


def _state(ctx, strategy):
  state = jax.jit(lambda key: init_state(
      ctx, strategy, optax.sgd(0.1), key, jnp.zeros((1,) + ctx.input_shape),
      jnp.zeros((1,), jnp.int32)))(jax.random.key(0))
  return state.replace(seen_classes=jnp.ones(N_CLASSES, bool))


def _random_params(seed):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.normal(size=(DIM, N_CLASSES)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=N_CLASSES), jnp.float32)}


def _softmax_grad(params, x, y):
  """Gradient of LINEAR's mean cross-entropy, flattened as ravel_pytree does."""
  z = x @ np.asarray(params["w"]) + np.asarray(params["b"])
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  d = (p - np.eye(N_CLASSES)[y]) / len(x)
  return np.concatenate([d.sum(0), (x.T @ d).ravel()])  # keys "b", "w"


# ------------------------------------------------------------ the projections


def test_projections_multiply_in_float32_on_every_backend():
  # GPUs (TF32) and TPUs (bfloat16) lower default-precision dots: every
  # product that decides or computes a projection asks for HIGHEST.
  g, G = jnp.ones(3), jnp.ones((2, 3))
  for fn in (lambda: gem_projection(g, G, 0.5),
             lambda: agem_projection(g, G[0])):
    text = str(jax.make_jaxpr(fn)())
    assert text.count("dot_general") >= 1
    assert text.count("dot_general") == text.count(
        "precision=(Precision.HIGHEST, Precision.HIGHEST)")


def test_agem_projection_closed_form():
  rng = np.random.default_rng(0)
  for _ in range(20):
    g, g_ref = rng.normal(size=(2, 30)).astype(np.float32)
    out = np.asarray(agem_projection(jnp.asarray(g), jnp.asarray(g_ref)))
    if g @ g_ref < 0:
      np.testing.assert_allclose(
          out, g - (g @ g_ref) / (g_ref @ g_ref) * g_ref, rtol=1e-5,
          atol=1e-6)
      assert abs(out @ g_ref) < 1e-4 * np.linalg.norm(g) * np.linalg.norm(g_ref)
    else:
      np.testing.assert_array_equal(out, g)
  # An empty memory gives g_ref = 0: the gradient is left alone.
  np.testing.assert_array_equal(agem_projection(jnp.ones(3), jnp.zeros(3)),
                                np.ones(3))


def _dual_problems(seed, sizes, dim=40, pad=20):
  """GEM problems for random, partly correlated memory gradients.

  Returns ``G`` padded with zero rows to ``pad`` rows (one compile for all),
  the gradients ``g`` and the ``active`` masks.
  """
  rng = np.random.default_rng(seed)
  G = np.zeros((len(sizes), pad, dim))
  g = np.zeros((len(sizes), dim))
  for i, t in enumerate(sizes):
    rows = rng.normal(size=(t, dim)) + rng.uniform(0, 2) * rng.normal(size=dim)
    G[i, :t] = rows * rng.uniform(0.1, 10)
    g[i] = -rng.normal(size=dim) * rng.uniform(0.1, 10)
  return G, g, np.arange(pad) < np.array(sizes)[:, None]


def test_gem_dual_solution_matches_scipy_and_satisfies_kkt():
  G, g, active = _dual_problems(0, [1, 2, 5, 5, 12, 20, 20])
  P = G @ G.transpose(0, 2, 1) + 1e-3 * np.eye(G.shape[1])
  q = np.einsum("itd,id->it", G, g)
  solve = jax.jit(jax.vmap(solve_box_qp))
  for margin in (0.0, 0.5):
    lower = np.where(active, margin, 0.0)
    v = np.asarray(solve(*(jnp.asarray(a, jnp.float32) for a in (P, q, lower))),
                   np.float64)
    for i in range(len(G)):
      t = active[i].sum()
      Pi, qi, vi, li = P[i, :t, :t], q[i, :t], v[i, :t], lower[i, :t]
      np.testing.assert_array_equal(v[i, t:], 0)  # padding stays at 0
      # scipy: the same QP as bounded least squares, ½‖Lᵀv + L⁻¹q‖² (P = LLᵀ).
      L = np.linalg.cholesky(Pi)
      ref = scipy.optimize.lsq_linear(L.T, -np.linalg.solve(L, qi),
                                      bounds=(li, np.inf), method="bvls",
                                      tol=1e-12).x
      # The projected gradients agree (v itself is ill-determined along
      # near-null directions of G Gᵀ).
      Gi = G[i, :t]
      np.testing.assert_allclose(Gi.T @ vi + g[i], Gi.T @ ref + g[i],
                                 rtol=1e-4, atol=1e-4 * np.linalg.norm(g[i]))
      # KKT: feasible, gradient ≥ 0, complementary slackness.
      grad = Pi @ vi + qi
      scale = np.abs(Pi).max() * np.abs(vi).max() + np.abs(qi).max()
      assert np.all(vi >= li - 1e-6)
      assert np.all(grad >= -1e-4 * scale)
      assert np.all(np.abs((vi - li) * grad) <= 1e-4 * scale * (1 + vi))


def test_gem_projection_matches_scipy_primal():
  G, g, active = _dual_problems(1, [1, 3, 8, 20])
  out = np.asarray(jax.jit(jax.vmap(gem_projection, (0, 0, None, 0)))(
      jnp.asarray(g, jnp.float32), jnp.asarray(G, jnp.float32), 0.0,
      jnp.asarray(active)), np.float64)
  for i in range(len(G)):
    Gi, gi = G[i][active[i]], g[i]
    # The primal: the closest vector to g with G x ≥ 0.
    ref = scipy.optimize.minimize(
        lambda x, gi=gi: 0.5 * np.sum((x - gi) ** 2), gi,
        jac=lambda x, gi=gi: x - gi,
        constraints=[{"type": "ineq", "fun": lambda x, Gi=Gi: Gi @ x,
                      "jac": lambda x, Gi=Gi: Gi}],
        method="SLSQP", options={"ftol": 1e-12, "maxiter": 1000}).x
    # GEM's 1e-3 I term relaxes each constraint by 1e-3 times its multiplier.
    np.testing.assert_allclose(out[i], ref, atol=2e-3 * np.linalg.norm(gi))
    assert np.all(Gi @ out[i] >= -2e-3 * np.linalg.norm(Gi, axis=1)
                  * np.linalg.norm(gi))


def test_gem_projection_solves_rows_of_very_different_norms():
  # A tolerance shared by all rows scaled with the largest memory gradient
  # left the small one's violated constraint unprojected.
  # Compiled, as in a training step: one compile per number of rows, where
  # op by op the solver's loops compiled at every call.
  project = jax.jit(gem_projection)
  G = np.array([[1000.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  g = np.array([0.01, -0.5, 0.5])
  out = np.asarray(project(jnp.asarray(g, jnp.float32),
                           jnp.asarray(G, jnp.float32), 0.0), np.float64)
  # By hand: only row 1 binds; v1 = 0.5 / (1 + 1e-3), x = g + v1 G1.
  np.testing.assert_allclose(out, [0.01, -0.5 + 0.5 / 1.001, 0.5], rtol=1e-5,
                             atol=1e-7)
  rng = np.random.default_rng(3)
  for _ in range(20):
    t, dim = rng.integers(2, 9), 50
    base = rng.normal(size=dim)
    G = (0.9 * base + 0.1 * rng.normal(size=(t, dim))) * np.exp(
        rng.uniform(np.log(0.01), np.log(100), size=(t, 1)))
    g = -base * rng.uniform(0.1, 10) + rng.normal(size=dim)
    P = G @ G.T + 1e-3 * np.eye(t)
    L = np.linalg.cholesky(P)
    v = scipy.optimize.lsq_linear(L.T, -np.linalg.solve(L, G @ g),
                                  bounds=(0, np.inf), method="bvls",
                                  tol=1e-12).x
    out = np.asarray(project(jnp.asarray(g, jnp.float32),
                             jnp.asarray(G, jnp.float32), 0.0), np.float64)
    np.testing.assert_allclose(out, G.T @ v + g, rtol=1e-3,
                               atol=1e-3 * np.linalg.norm(g))


def test_gem_projection_ignores_inactive_rows_and_satisfied_constraints():
  project = jax.jit(gem_projection)
  g = jnp.array([1.0, -1.0, 0.5])
  G = jnp.array([[1.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
  # Only the violated row is inactive: no projection.
  np.testing.assert_array_equal(project(g, G, 0.5, jnp.array([True, False])),
                                g)
  # Active: the result has G x̃ ≥ 0 (margin 0), up to the 1e-3 relaxation.
  out = project(g, G, 0.0, jnp.array([True, True]))
  assert float((G @ out)[1]) >= -1e-2 and float((G @ out)[0]) > 0
  # Avalanche's margin bounds the dual variables: v ≥ 0.5 on every row.
  strong = project(g, G, 0.5, jnp.array([True, True]))
  v = np.linalg.lstsq(np.asarray(G).T, np.asarray(strong - g), rcond=None)[0]
  assert np.all(v >= 0.5 - 1e-4)


def _flat(tree):
  return np.concatenate([np.ravel(tree["b"]), np.ravel(tree["w"])])


def _unflat(v):
  return {"b": jnp.asarray(v[:N_CLASSES], jnp.float32),
          "w": jnp.asarray(v[N_CLASSES:].reshape(DIM, N_CLASSES), jnp.float32)}


def _projection_hook(strategy, params):
  """The jitted ``transform_grads`` on flat vectors, with a filled memory.

  The memory holds 3 + 2 samples of two past experiences.
  """
  ctx = _ctx(LINEAR)
  rng = np.random.default_rng(2)
  state = _state(ctx, strategy).replace(params=params)
  memory = state.cl_state.memory.replace(
      x=jnp.asarray(rng.normal(size=(2, 3, DIM)), jnp.float32),
      y=jnp.asarray(rng.integers(0, N_CLASSES, (2, 3))),
      valid=jnp.array([[True, True, True], [True, False, True]]),
      count=jnp.int32(2))
  state = state.replace(cl_state=state.cl_state.replace(memory=memory))
  hook = jax.jit(lambda g: strategy.transform_grads(ctx, g, state, {},
                                                    jax.random.key(0)))
  return (lambda g: _flat(hook(_unflat(g)))), jax.device_get(memory)


def test_gem_and_agem_hooks_project_on_memory_gradients():
  params = _random_params(3)
  # GEM: one gradient per past experience, on all its stored samples.
  hook, memory = _projection_hook(gem(patterns_per_exp=3), params)
  G = np.stack([_softmax_grad(params, memory.x[t][memory.valid[t]],
                              memory.y[t][memory.valid[t]]) for t in (0, 1)])
  g = -G[0] + 0.1 * G[1]
  out = hook(g)
  np.testing.assert_allclose(
      out, gem_projection(jnp.asarray(g), jnp.asarray(G), 0.5), rtol=1e-4,
      atol=1e-5)
  assert not np.allclose(out, g)
  # A-GEM: sample_size covers the memory, so g_ref uses all 5 samples.
  hook, memory = _projection_hook(agem(patterns_per_exp=3, sample_size=6),
                                  params)
  valid = memory.valid.ravel()
  g_ref = _softmax_grad(params, memory.x.reshape(-1, DIM)[valid],
                        memory.y.ravel()[valid])
  g = -g_ref + np.roll(g_ref, 1)
  np.testing.assert_allclose(
      hook(g), g - (g @ g_ref) / (g_ref @ g_ref) * g_ref, rtol=1e-4,
      atol=1e-5)


# ------------------------------------------------ memories through jaxcl.fit


def _sample_rows(bench):
  """Each training sample as a tuple, mapped to its experience index."""
  return {tuple(np.round(x, 5)): e.index for e in bench.train_stream
          for x in e.x}


def test_memories_hold_patterns_per_experience_and_compile_once():
  # Experience sizes 20, 5, 16: the second is smaller than patterns_per_exp.
  bench = make_benchmark(n_classes=6, n_experiences=3,
                         sizes=[10, 10, 3, 2, 8, 8])
  parts = [gem(patterns_per_exp=8, memory_strength=0.5),
           agem(patterns_per_exp=8, sample_size=6), lwf(alpha=1.0)]
  parts = [s._replace(transform_grads=chex.assert_max_traces(
      s.transform_grads, n=1)) for s in parts]
  result = jaxcl.fit(jaxcl.models.MLP(6, hidden_size=8, drop_rate=0.0),
                     chain(*parts), optax.sgd(0.1), bench, epochs=2,
                     batch_size=4)
  origin = _sample_rows(bench)
  for cl in result.state.cl_state[:2]:
    memory = cl.memory
    np.testing.assert_array_equal(memory.valid.sum(1), [8, 5, 8])
    assert int(memory.count) == 3
    for i, exp in enumerate(bench.train_stream):
      valid = np.asarray(memory.valid[i])
      stored = [tuple(np.round(x, 5)) for x in np.asarray(memory.x[i])[valid]]
      assert len(set(stored)) == valid.sum()  # distinct samples
      assert all(origin[s] == i for s in stored)
      assert set(np.asarray(memory.y[i])[valid]) <= set(exp.classes)


# -------------------------------------------------------------------- iCaRL


def _numpy_herding(features, member, n):
  phi = features / np.linalg.norm(features, axis=1, keepdims=True)
  rows = np.flatnonzero(member)
  mu = phi[rows].mean(0)
  picked = []
  for k in range(1, n + 1):
    best, best_dist = None, np.inf
    for i in rows:
      if i in picked:
        continue
      dist = np.linalg.norm(mu - (phi[picked].sum(0) + phi[i]) / k)
      if dist < best_dist:
        best, best_dist = i, dist
    picked.append(best)
  rank = np.zeros(len(features), int)
  rank[picked] = np.arange(1, n + 1)
  return rank


def test_herding_matches_numpy_reference():
  rng = np.random.default_rng(0)
  select = jax.jit(herding)
  for n in (1, 4, 9):
    features = rng.normal(size=(40, 6)).astype(np.float32)
    member = rng.random(40) < 0.4
    np.testing.assert_array_equal(
        select(jnp.asarray(features), jnp.asarray(member), n),
        _numpy_herding(features, member, n))


@pytest.fixture(scope="module")
def icarl_setup():
  """iCaRL on a single Dense layer (its features are its 2-d inputs)."""
  ctx = _ctx(as_model(DenseHead()), batch_size=4)
  strategy = icarl(memory_size=6)
  return ctx, strategy, _state(ctx, strategy)


def test_nearest_mean_prediction_hand_made(icarl_setup):
  ctx, strategy, state = icarl_setup
  means = np.array([[1, 0], [0, 1], [0, 0]], np.float32)
  state = state.replace(cl_state=state.cl_state.replace(
      class_means=jnp.asarray(means), has_mean=jnp.array([True, True, False])))
  x = np.array([[2.0, 0.0], [0.3, 0.4], [0.0, -5.0]], np.float32)
  logits = jax.jit(lambda s, x: strategy.predict(
      ctx, s.params, s.model_state, s.cl_state, x, jnp.zeros(3, int)))(
          state, jnp.asarray(x))
  # Nearest mean, not largest dot product: [0.6, 0.8] is nearer to e_2.
  expected = [[0.0, -np.sqrt(2)],
              [-np.sqrt(0.4 ** 2 + 0.8 ** 2), -np.sqrt(0.6 ** 2 + 0.2 ** 2)],
              [-np.sqrt(2), -2.0]]
  np.testing.assert_allclose(logits[:, :2], expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(logits[:, 2], MASK_VALUE)
  np.testing.assert_array_equal(np.argmax(logits, 1), [0, 1, 0])


def test_icarl_loss_is_bce_with_previous_model_targets(icarl_setup):
  ctx, strategy, state = icarl_setup
  teacher = jax.tree.map(lambda a: a + 0.7, state.params)
  state = state.replace(cl_state=state.cl_state.replace(
      teacher_params=teacher, old_classes=jnp.array([True, False, False]),
      seen_classes=jnp.array([True, True, False])))
  x = jnp.array([[1.0, -2.0], [0.5, 0.5], [3.0, 1.0]])
  batch = {"x": x, "y": jnp.array([1, 0, 1]), "task": jnp.zeros(3, int),
           "weight": jnp.array([1.0, 2.0, 0.0])}
  logits = ctx.logits(state.params, state.model_state, x, batch["task"])
  logits = jnp.where(state.cl_state.seen_classes, logits, MASK_VALUE)
  # What the loop minimises: its weighted cross-entropy plus the penalty.
  w = np.asarray(batch["weight"])
  ce = np.sum(np.asarray(cross_entropy(logits, batch)) * w) / w.sum()
  penalty = jax.jit(lambda s, b, z: strategy.penalty(ctx, s.params,
                                                      s.cl_state, b, z))
  total = ce + float(penalty(state, batch, logits))
  z = np.asarray(logits[:, :2], np.float64)
  old = np.asarray(ctx.logits(teacher, {}, x, batch["task"]))[:, 0]
  targets = np.eye(N_CLASSES)[np.asarray(batch["y"])][:, :2]
  targets[:, 0] = 1 / (1 + np.exp(-old))
  p = 1 / (1 + np.exp(-z))
  bce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean(1)
  assert total == pytest.approx(np.sum(bce * w) / w.sum(), rel=1e-5)


def test_icarl_leaves_out_the_bce_of_classes_training_masks(icarl_setup):
  ctx, strategy, state = icarl_setup
  task_classes = np.array([[1, 1, 0], [0, 0, 1]], bool)
  ctx = ctx._replace(task_classes=task_classes)
  teacher = jax.tree.map(lambda a: a + 0.7, state.params)
  seen = jnp.ones(N_CLASSES, bool)
  state = state.replace(seen_classes=seen, cl_state=state.cl_state.replace(
      teacher_params=teacher, old_classes=jnp.array([True, False, True]),
      seen_classes=seen))
  x = jnp.array([[1.0, -2.0], [0.5, 0.5], [3.0, 1.0]])
  task = np.array([0, 1, 0])
  batch = {"x": x, "y": jnp.array([1, 2, 0]), "task": jnp.asarray(task),
           "weight": jnp.array([1.0, 2.0, 1.0])}
  logits = mask_logits(ctx, ctx.logits(state.params, state.model_state, x,
                                       batch["task"]), seen, batch["task"])
  w = np.asarray(batch["weight"])
  ce = np.sum(np.asarray(cross_entropy(logits, batch)) * w) / w.sum()
  total = ce + float(jax.jit(lambda s, b, z: strategy.penalty(
      ctx, s.params, s.cl_state, b, z))(state, batch, logits))
  # The BCE of each sample's task's classes, over the 3 seen classes.
  z = np.asarray(ctx.logits(state.params, state.model_state, x, task),
                 np.float64)
  old = np.asarray(ctx.logits(teacher, {}, x, task), np.float64)
  targets = np.where([True, False, True], 1 / (1 + np.exp(-old)),
                     np.eye(N_CLASSES)[np.asarray(batch["y"])])
  p = 1 / (1 + np.exp(-z))
  bce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
  per_sample = (bce * task_classes[task]).sum(1) / N_CLASSES
  assert total == pytest.approx(np.sum(per_sample * w) / w.sum(), rel=1e-5)


def test_icarl_replays_exemplars_in_proportion(icarl_setup):
  ctx, strategy, state = icarl_setup
  cl = state.cl_state
  rank = jnp.zeros_like(cl.rank).at[jnp.array([1, 4, 6])].set(1)
  cl = cl.replace(rank=rank, y=jnp.arange(rank.shape[0]) % N_CLASSES,
                  n_current=jnp.float32(12.0))
  batch = {"x": jnp.ones((4, DIM)), "y": jnp.zeros(4, int),
           "task": jnp.zeros(4, int), "weight": jnp.array([1.0, 1, 1, 0])}
  out = jax.jit(lambda c, b, k: strategy.transform_batch(ctx, c, b, k))(
      cl, batch, jax.random.key(0))
  # 3 exemplars vs 12 samples: together they weigh 3/12 of the 3 real rows.
  weight = np.asarray(out["weight"][4:])
  np.testing.assert_allclose(np.sort(weight), [0, 0.25, 0.25, 0.25])
  replayed = np.asarray(out["y"][4:])[weight > 0]
  np.testing.assert_array_equal(np.sort(replayed), [0, 1, 1])


def test_icarl_keeps_ceil_memory_per_class_and_compiles_once():
  bench = make_benchmark(n_classes=6, n_experiences=3, per_class=12)
  strategy = icarl(memory_size=10)
  traced = {}

  def end_experience(ctx, *args):
    traced.update(ctx=ctx, args=jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args))
    return strategy.end_experience(ctx, *args)

  hooked = strategy._replace(end_experience=chex.assert_max_traces(
      end_experience, n=1))
  model = jaxcl.models.MLP(6, hidden_size=16, drop_rate=0.0)
  result = jaxcl.fit(model, hooked, optax.sgd(0.1), bench, epochs=3,
                     batch_size=8)
  cl = result.state.cl_state
  rank, y = np.asarray(cl.rank), np.asarray(cl.y)
  # ceil(10 / 6) = 2 exemplars per class (Avalanche's rounding), the first
  # two herding picks of each class.
  for c in range(6):
    assert sorted(rank[(rank > 0) & (y == c)].tolist()) == [1, 2]
  origin = {tuple(np.round(x, 5)): label for e in bench.train_stream
            for x, label in zip(e.x, e.y, strict=True)}
  for x, label in zip(np.asarray(cl.x)[rank > 0], y[rank > 0], strict=True):
    assert origin[tuple(np.round(x, 5))] == label
  assert np.all(cl.has_mean)
  np.testing.assert_allclose(np.linalg.norm(cl.class_means, axis=1), 1,
                             rtol=1e-5)
  # Class sums in a fixed order: no scatter-add (GPUs scatter with atomic
  # additions, in an order that changes from run to run).
  jaxpr = jax.make_jaxpr(lambda *args: strategy.end_experience(
      traced["ctx"], *args))(*traced["args"])
  assert "scatter-add" not in str(jaxpr)
  # Each mean: the normalised mean of its exemplars' normalised features.
  ctx = jaxcl.training.make_context(model, bench, optax.sgd(0.1),
                                    batch_size=8)
  phi = np.array(penultimate_features(
      ctx, result.state.params, result.state.model_state, cl.x, cl.task))
  phi /= np.linalg.norm(phi, axis=1, keepdims=True)
  for c in range(6):
    mean = phi[(rank > 0) & (y == c)].mean(0)
    np.testing.assert_allclose(cl.class_means[c], mean / np.linalg.norm(mean),
                               rtol=1e-5, atol=1e-6)
  assert result.metrics["stream_accuracy"] > 0.8


def test_icarl_needs_a_dense_output_layer(tiny_benchmark):
  plain = Model(init=lambda key, x, task: ({"w": jnp.zeros((6, 4))}, {}),
                apply=lambda p, s, x, task, train, key: (x @ p["w"], s))
  with pytest.raises(ValueError, match="flax.linen.Dense"):
    jaxcl.fit(plain, icarl(), optax.sgd(0.1), tiny_benchmark)


def test_icarl_refuses_online_streams_before_compiling(no_compiling):
  assert_refuses_online_streams(
      icarl(memory_size=8), r"icarl picks each class's exemplars by herding "
      r".* distil its own classes as old ones")


# --------------------------------------------------------------- GSS-greedy


def test_gss_inserts_with_gradient_similarity_scores():
  ctx = _ctx(LINEAR, batch_size=4)
  strategy = gss_greedy(mem_size=10, mem_strength=1)
  state = _state(ctx, strategy)
  state = state.replace(params=_random_params(1))
  rng = np.random.default_rng(0)

  def batch(weight):
    return {"x": jnp.asarray(rng.normal(size=(4, DIM)), jnp.float32),
            "y": jnp.asarray(rng.integers(0, N_CLASSES, 4)),
            "task": jnp.zeros(4, int), "weight": jnp.asarray(weight)}

  update = jax.jit(lambda s, b, k: strategy.after_step(ctx, s, s, None, b, k))
  first = batch([1.0, 1, 1, 0])
  mem = update(state, first, jax.random.key(0))
  assert int(mem.count) == 3
  np.testing.assert_array_equal(mem.x[:3], first["x"][:3])
  np.testing.assert_allclose(mem.score[:3], 0.1)

  second = batch([1.0, 1, 1, 1])
  mem2 = update(state.replace(cl_state=mem), second, jax.random.key(1))
  assert int(mem2.count) == 7
  np.testing.assert_array_equal(mem2.x[3:7], second["x"])

  # By hand: the only memory subset is the 3 samples stored first.
  ref = _softmax_grad(state.params, np.asarray(first["x"][:3]),
                      np.asarray(first["y"][:3]))
  for i in range(4):
    g = _softmax_grad(state.params, np.asarray(second["x"][i:i + 1]),
                      np.asarray(second["y"][i:i + 1]))
    cos = g @ ref / np.linalg.norm(g) / np.linalg.norm(ref)
    assert float(mem2.score[3 + i]) == pytest.approx(cos, abs=1e-5)


def test_gss_fills_memory_replays_and_compiles_once():
  bench = make_benchmark(n_classes=4, n_experiences=2, per_class=12)
  strategy = gss_greedy(mem_size=10, mem_strength=2)
  hooked = strategy._replace(after_step=chex.assert_max_traces(
      strategy.after_step, n=1))
  result = jaxcl.fit(jaxcl.models.MLP(4, hidden_size=8, drop_rate=0.0),
                     hooked, optax.sgd(0.1), bench, epochs=3, batch_size=4)
  mem = result.state.cl_state
  assert int(mem.count) == 10 and bool(mem.replay)
  origin = _sample_rows(bench)
  assert all(tuple(np.round(x, 5)) in origin for x in np.asarray(mem.x))
  score = np.asarray(mem.score)
  assert np.all((score >= -1 - 1e-6) & (score <= 1 + 1e-6))
  # With replay the first experience is not forgotten entirely.
  assert result.accuracy_matrix[-1, 0] > 0


# ------------------------------------------------------ registry, CLI, errors


def test_registered_for_from_spec_and_cli():
  for name in ("gem", "agem", "icarl", "gss_greedy"):
    assert name in REGISTRY
  strategy = from_spec("agem+lwf", patterns_per_exp=5, sample_size=3)
  assert strategy.name == "agem+lwf"
  args = cli.build_parser().parse_args(
      ["run", "--strategy", "gem", "--patterns-per-exp", "7",
       "--memory-strength", "0.2", "--memory-size", "30", "--fixed-memory",
       "false", "--mem-strength", "3"])
  assert (args.patterns_per_exp, args.memory_strength) == (7, 0.2)
  assert (args.memory_size, args.fixed_memory, args.mem_strength) == (
      30, False, 3)
  # Two prediction rules cannot be chained.
  with pytest.raises(ValueError, match="predict"):
    chain(icarl(), Strategy(name="ncm", predict=lambda *a: None))


@pytest.mark.parametrize("make, error, message", [
    (lambda: gem(patterns_per_exp=0), ValueError, "patterns_per_exp"),
    (lambda: gem(memory_strength=-0.1), ValueError, "memory_strength"),
    (lambda: gem(memory_strength=1e39), ValueError, "memory_strength=1e"),
    (lambda: agem(sample_size=2.5), TypeError, "sample_size"),
    (lambda: icarl(memory_size=0), ValueError, "memory_size"),
    (lambda: icarl(fixed_memory="yes"), TypeError, "fixed_memory"),
    (lambda: gss_greedy(mem_strength=0), ValueError, "mem_strength"),
])
def test_bad_hyperparameters_fail_in_the_factory(make, error, message):
  with pytest.raises(error, match=message):
    make()
