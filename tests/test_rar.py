"""RAR (Retrospective Adversarial Replay) against numpy transcriptions."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (BatchNormMLP, TwoLayer, assert_refuses_models_without_features,
                      assert_trees_close, device_experience, fit_seeds_alone,
                      hook_context, hook_state, log_softmax, make_benchmark,
                      tiny_cli_metrics, two_layer_numpy)

import jaxcl
from jaxcl.strategies import buffers, mi_fgsm, nearest_other_class, rar, replay
from jaxcl.training import cross_entropy

N_CLASSES, DIM = 4, 3


def _softmax(z):
  return np.exp(log_softmax(z))


def _two_layer_grads(params, x, y, weight):
  """Gradients of ``sum_i weight_i CE_i`` of :class:`TwoLayer` in float64:
  ``(parameter gradients, input gradients)``."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  w0, b0 = p["Dense_0"]["kernel"], p["Dense_0"]["bias"]
  w1, b1 = p["Dense_1"]["kernel"], p["Dense_1"]["bias"]
  pre = np.asarray(x, np.float64) @ w0 + b0
  hidden = np.maximum(pre, 0.0)
  d_logits = (_softmax(hidden @ w1 + b1) - np.eye(w1.shape[1])[y]) * (
      np.asarray(weight, np.float64)[:, None])
  d_hidden = d_logits @ w1.T * (pre > 0)
  grads = {"Dense_0": {"kernel": np.asarray(x, np.float64).T @ d_hidden,
                       "bias": d_hidden.sum(0)},
           "Dense_1": {"kernel": hidden.T @ d_logits,
                       "bias": d_logits.sum(0)}}
  return grads, d_hidden @ w0.T


def _mi_fgsm_np(loss_grad, x, epsilon, decay, iterations, low=0.0, high=1.0):
  """Targeted MI-FGSM as documented: ``iterations - 1`` steps of
  ``epsilon / iterations`` down the recomputed gradient, per-row L1
  momentum, clipping, per-row stop beyond ``epsilon``."""
  x = np.asarray(x, np.float64)
  adv, g, done = x.copy(), np.zeros_like(x), np.zeros(len(x), bool)
  for _ in range(iterations - 1):
    d = loss_grad(adv)
    g = decay * g + d / np.abs(d).sum(1, keepdims=True)
    moved = np.clip(adv - epsilon / iterations * np.sign(g), low, high)
    adv = np.where(done[:, None], adv, moved)
    done |= np.abs(adv - x).max(1) > epsilon
  return adv


def test_target_is_the_nearest_current_sample_of_another_class():
  features = jnp.array([[0.0, 0.0], [3.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
  y = jnp.array([0, 1, 2, 3])
  candidates = jnp.array([[0.5, 0.0], [1.0, 0.0], [3.0, 0.5], [0.0, 4.0],
                          [9.0, 9.0]])
  candidate_y = jnp.array([0, 1, 2, 3, 2])
  valid = jnp.array([True, True, True, False, True])
  target, found = jax.device_get(nearest_other_class(
      features, y, candidates, candidate_y, valid))
  # Row 0: its own class's candidate (0.5 away) is skipped, class 1 (1 away)
  # wins over class 2 (3.04 away) and the farthest (class 2 at (9, 9)).
  # Row 1: class 2 at 0.5. Row 2: class 3 at (0, 4) is padding; class 0 at
  # (0.5, 0) is nearest. Row 3: class 1 at (1, 0).
  np.testing.assert_array_equal(target, [1, 2, 0, 1])
  assert found.all()
  # A row whose class is every valid candidate's has no target.
  _, found = nearest_other_class(features[:1], y[:1], candidates[:1],
                                 candidate_y[:1], valid[:1])
  assert not bool(found[0])


def test_mi_fgsm_matches_a_numpy_transcription():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(3, 4))
  x = rng.uniform(0.1, 0.9, size=(4, 3))
  x[3, 0] = 1.6  # Outside the range: the first step's clip moves it 0.6.
  target = np.array([2, 0, 3, 1])

  def loss_grad_np(v):
    return (_softmax(v @ w) - np.eye(4)[target]) @ w.T

  def loss_grad(v):
    return jax.grad(lambda v: jnp.sum(cross_entropy(
        v @ jnp.asarray(w, jnp.float32), {"y": jnp.asarray(target)})))(v)

  out = np.asarray(jax.jit(lambda x: mi_fgsm(loss_grad, x, 0.3, 0.7, 4))(
      jnp.asarray(x, jnp.float32)))
  expected = _mi_fgsm_np(loss_grad_np, x, 0.3, 0.7, 4)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  # Three steps of 0.075 move the first rows by 0.225, within 0.3 ...
  np.testing.assert_allclose(np.abs(out - x)[:3].max(1), 0.225, atol=1e-5)
  # ... and the clipped row stopped after its first step.
  np.testing.assert_allclose(out[3], np.clip(
      x[3] - 0.075 * np.sign(loss_grad_np(x)[3]), 0.0, 1.0), atol=1e-6)
  # The attack moves towards the target: its cross-entropy falls.
  ce = lambda v: -log_softmax(v @ w)[np.arange(3), target[:3]]
  assert (ce(out[:3]) < ce(x[:3])).all()
  # iter_fgsm=1 takes no step.
  np.testing.assert_array_equal(mi_fgsm(loss_grad, jnp.asarray(x), 0.3,
                                        0.7, 1), x.astype(np.float32))


def test_mi_fgsm_momentum_adds_unit_l1_gradients():
  """A gradient field of two values: ``d1`` at the start, ``d2`` once the
  first coordinate falls below 0.45. With ``g2 = 0.1 · d1/‖d1‖₁ +
  d2/‖d2‖₁`` every sign is negative, so the second step undoes the first;
  without the decay (``d1/3 + d2/10``) or the L1 scaling (``0.1 · d1 +
  d2``) the middle coordinate's sign turns."""
  d1 = np.array([10.0, 10.0, 10.0])
  d2 = np.array([-6.0, -0.5, -3.5])
  x = np.full((1, 3), 0.5)

  def field(v, where):
    return where(v[:, :1] > 0.45, d1, d2)

  out = mi_fgsm(lambda v: field(v, jnp.where), jnp.asarray(x), 0.225, 0.1,
                3)
  np.testing.assert_allclose(out, x, atol=1e-6)
  np.testing.assert_allclose(
      out, _mi_fgsm_np(lambda v: field(v, np.where), x, 0.225, 0.1, 3),
      atol=1e-6)


def _after_first_experience(strategy, ctx, mem_x, mem_y):
  state = hook_state(ctx, strategy).replace(
      seen_classes=jnp.ones(N_CLASSES, bool))
  data = device_experience(mem_x, mem_y, 0, len(mem_y), N_CLASSES)
  return jax.jit(lambda s: strategy.end_experience(ctx, s, data,
                                                   jax.random.key(1)))(state)


def _nearest_targets(params, mem_x, mem_y, cur_x, cur_y, cur_valid):
  """``(nearest, farthest)``: each memory row's label of the nearest (and
  the farthest) valid current row of another class, by TwoLayer's
  penultimate features under ``params`` (numpy)."""
  h_mem, _ = two_layer_numpy(params, mem_x)
  h_cur, _ = two_layer_numpy(params, cur_x)
  dist = ((h_mem[:, None] - h_cur[None]) ** 2).sum(-1)
  dist = np.where((cur_y[None] != mem_y[:, None]) & cur_valid, dist, np.inf)
  return cur_y[dist.argmin(1)], cur_y[np.where(np.isinf(dist), -1,
                                               dist).argmax(1)]


def _expected_grads(params, grads, mem_x, mem_y, cur_x, cur_y, cur_valid,
                    lr, beta, decay, eps, iters):
  """RAR's gradient by hand (numpy, TwoLayer): ``grads`` plus ``beta``
  times the mean over the memory rows of the cross-entropy's gradient at
  their MI-FGSM perturbation towards the nearest target under the
  look-ahead parameters. Returns ``(gradient, look-ahead, x_adv)``."""
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  look = jax.tree.map(lambda p, g: p - lr * np.asarray(g, np.float64),
                      params, grads)
  target, _ = _nearest_targets(look, mem_x, mem_y, cur_x, cur_y, cur_valid)
  ones = np.ones(len(mem_y))
  x_adv = _mi_fgsm_np(lambda v: _two_layer_grads(look, v, target, ones)[1],
                      mem_x, eps, decay, iters)
  adversarial, _ = _two_layer_grads(params, x_adv, mem_y, ones / len(mem_y))
  expected = jax.tree.map(lambda g, a: np.asarray(g, np.float64) + beta * a,
                          grads, adversarial)
  return expected, look, x_adv


def _current_batch(x, y, weight=None):
  n = len(y)
  return {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y),
          "task": jnp.zeros(n, jnp.int32),
          "weight": jnp.ones(n) if weight is None else jnp.asarray(weight)}


def _random_grads(rng, params):
  return jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)


def test_gradient_is_replay_plus_beta_times_the_adversarial_cross_entropy():
  ctx = hook_context(TwoLayer(), n_classes=N_CLASSES, dim=DIM)
  lr, beta, decay, eps, iters = 0.5, 0.7, 0.5, 0.2, 3
  strategy = rar(batch_size_mem=4, mem_size=4, opt_lr=lr, beta_coef=beta,
                 decay_factor_fgsm=decay, epsilon_fgsm=eps, iter_fgsm=iters)
  rng = np.random.default_rng(27)
  mem_x, mem_y = rng.uniform(size=(4, DIM)), np.array([0, 1, 0, 1])
  state = _after_first_experience(strategy, ctx, mem_x, mem_y)
  cur_x, cur_y = rng.uniform(size=(4, DIM)), np.array([2, 3, 0, 1])
  batch = _current_batch(cur_x, cur_y, [1.0, 1.0, 1.0, 0.0])
  grads = _random_grads(rng, state.params)

  @jax.jit
  def replay_grads(state, batch, grads):
    batch = strategy.transform_batch(ctx, state.cl_state, batch,
                                     jax.random.key(2))
    return batch, strategy.transform_grads(ctx, grads, state, batch,
                                           jax.random.key(3))

  out_batch, out = replay_grads(state, batch, grads)
  # The replayed batch is replay's: the current rows, then the memory.
  assert out_batch["y"].shape == (8,)
  np.testing.assert_array_equal(np.sort(out_batch["y"][4:]), [0, 0, 1, 1])

  valid = np.arange(4) < 3  # current row 3 is padding
  expected, look, x_adv = _expected_grads(
      state.params, grads, mem_x, mem_y, cur_x, cur_y, valid, lr, beta,
      decay, eps, iters)
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), state.params)
  target, farthest = _nearest_targets(look, mem_x, mem_y, cur_x, cur_y,
                                      valid)
  # The test tells the look-ahead model from the model, nearest from
  # farthest, and the current samples from the padding.
  assert (target != _nearest_targets(params, mem_x, mem_y, cur_x, cur_y,
                                     valid)[0]).any()
  assert (target != farthest).any()
  assert (target != _nearest_targets(look, mem_x, mem_y, cur_x, cur_y,
                                     np.ones(4, bool))[0]).any()
  assert np.abs(x_adv - mem_x).max() > 0.1
  assert_trees_close(out, expected, rtol=1e-4, atol=1e-5)


def test_a_partly_filled_memory_averages_over_its_stored_samples():
  """Two samples stored, four drawn: the two empty rows (weight 0) are
  left out of the attack and of the mean."""
  ctx = hook_context(TwoLayer(), n_classes=N_CLASSES, dim=DIM)
  lr, beta, decay, eps, iters = 0.5, 0.7, 0.5, 0.2, 3
  strategy = rar(batch_size_mem=4, mem_size=4, opt_lr=lr, beta_coef=beta,
                 decay_factor_fgsm=decay, epsilon_fgsm=eps, iter_fgsm=iters)
  rng = np.random.default_rng(8)
  mem_x, mem_y = rng.uniform(size=(2, DIM)), np.array([0, 1])
  state = _after_first_experience(strategy, ctx, mem_x, mem_y)
  cur_x, cur_y = rng.uniform(size=(4, DIM)), np.array([2, 3, 2, 3])
  grads = _random_grads(rng, state.params)
  out = jax.jit(lambda s: strategy.transform_grads(
      ctx, grads, s, _current_batch(cur_x, cur_y), jax.random.key(3)))(state)
  expected, _, x_adv = _expected_grads(
      state.params, grads, mem_x, mem_y, cur_x, cur_y, np.ones(4, bool), lr,
      beta, decay, eps, iters)
  assert np.abs(x_adv - mem_x).max() > 0.1
  assert_trees_close(out, expected, rtol=1e-4, atol=1e-5)


def test_an_empty_memory_leaves_the_gradient_exactly_replays():
  ctx = hook_context(TwoLayer(), n_classes=N_CLASSES, dim=DIM)
  strategy = rar(batch_size_mem=4, mem_size=4, beta_coef=1.0,
                 epsilon_fgsm=0.2, iter_fgsm=3)
  state = hook_state(ctx, strategy).replace(
      seen_classes=jnp.ones(N_CLASSES, bool))
  rng = np.random.default_rng(9)
  grads = _random_grads(rng, state.params)
  batch = _current_batch(rng.uniform(size=(4, DIM)), np.array([2, 3, 2, 3]))
  out = jax.jit(lambda s: strategy.transform_grads(
      ctx, grads, s, batch, jax.random.key(3)))(state)
  assert_trees_close(out, grads, rtol=0, atol=0)


def test_the_adversarial_term_runs_the_model_in_training_mode():
  """BatchNorm normalises by the batch in training mode: the term's
  gradient is the cross-entropy's with the memory rows' batch statistics
  (one MI-FGSM iteration leaves the rows unperturbed)."""
  model = BatchNormMLP()
  ctx = hook_context(model, n_classes=N_CLASSES, dim=DIM)
  beta = 0.7
  strategy = rar(batch_size_mem=4, mem_size=4, beta_coef=beta, iter_fgsm=1)
  rng = np.random.default_rng(10)
  mem_x, mem_y = rng.uniform(size=(4, DIM)), np.array([0, 1, 0, 1])
  state = _after_first_experience(strategy, ctx, mem_x, mem_y)
  grads = _random_grads(rng, state.params)
  batch = _current_batch(rng.uniform(size=(4, DIM)), np.array([2, 3, 2, 3]))
  out = jax.jit(lambda s: strategy.transform_grads(
      ctx, grads, s, batch, jax.random.key(3)))(state)

  def term(params, train):
    logits, _ = model.apply({"params": params, **state.model_state},
                            jnp.asarray(mem_x, jnp.float32), train,
                            mutable=["batch_stats"])
    return beta * jnp.mean(-jnp.take_along_axis(
        jax.nn.log_softmax(logits), jnp.asarray(mem_y)[:, None], 1))

  grad = jax.jit(jax.grad(term), static_argnums=1)
  expected, evaluation = (
      jax.tree.map(jnp.add, grads, grad(state.params, train))
      for train in (True, False))
  assert_trees_close(out, expected, rtol=1e-4, atol=1e-6)
  with pytest.raises(AssertionError):
    assert_trees_close(out, evaluation, rtol=1e-4, atol=1e-6)


def test_raw_integer_pixels_are_perturbed_in_units_of_their_range():
  """uint8 pixels scaled on the device give the gradient that the same
  pixels given as floats in [0, 1] give: epsilon and the clip scale with
  the dtype's range."""
  rng = np.random.default_rng(5)
  pixels = rng.integers(0, 256, size=(8, DIM)).astype(np.uint8)
  y = np.array([0, 1, 0, 1, 2, 3, 2, 3])
  strategy = rar(batch_size_mem=4, mem_size=4, epsilon_fgsm=0.3, iter_fgsm=3)
  float_ctx = hook_context(TwoLayer(), n_classes=N_CLASSES, dim=DIM)
  uint8_ctx = float_ctx._replace(
      preprocess=lambda x: x.astype(jnp.float32) / 255.0, x_dtype=jnp.uint8)

  def grads(ctx, x):
    state = hook_state(ctx, strategy).replace(
        seen_classes=jnp.ones(N_CLASSES, bool))
    exp = jaxcl.benchmarks.Experience(x=x[:4], y=y[:4], task=np.zeros(4),
                                      index=0, classes=(0, 1),
                                      origin="train")
    data = jax.tree.map(jnp.asarray,
                        jaxcl.training.experience_data(exp, 4, N_CLASSES))
    batch = {"x": jnp.asarray(x[4:]), "y": jnp.asarray(y[4:]),
             "task": jnp.zeros(4, jnp.int32), "weight": jnp.ones(4)}
    zeros = jax.tree.map(jnp.zeros_like, state.params)

    @jax.jit
    def run(state):
      state = strategy.end_experience(ctx, state, data, jax.random.key(1))
      return strategy.transform_grads(ctx, zeros, state, batch,
                                      jax.random.key(2))

    return run(state)

  assert_trees_close(grads(uint8_ctx, pixels),
                     grads(float_ctx, pixels.astype(np.float32) / 255.0),
                     rtol=1e-4, atol=1e-6)


def test_memory_samples_without_a_target_are_left_out():
  """Memory and current samples of one class: no sample has a target, so
  the gradient is replay's alone."""
  ctx = hook_context(TwoLayer(), n_classes=N_CLASSES, dim=DIM)
  strategy = rar(batch_size_mem=4, mem_size=4, beta_coef=1.0)
  rng = np.random.default_rng(6)
  state = _after_first_experience(strategy, ctx, rng.uniform(size=(4, DIM)),
                                  np.zeros(4, int))
  batch = {"x": jnp.asarray(rng.uniform(size=(4, DIM)), jnp.float32),
           "y": jnp.zeros(4, jnp.int32), "task": jnp.zeros(4, jnp.int32),
           "weight": jnp.ones(4)}
  grads = jax.tree.map(jnp.ones_like, state.params)
  out = jax.jit(lambda s: strategy.transform_grads(ctx, grads, s, batch,
                                                   jax.random.key(3)))(state)
  assert_trees_close(out, grads, rtol=0, atol=0)


def test_the_adversarial_term_alone_sets_it_apart_from_reservoir_replay():
  bench = make_benchmark(n_experiences=2)
  model = jaxcl.models.MLP(num_classes=4, hidden_size=8, drop_rate=0.0)
  fit = lambda s: jaxcl.fit(model, s, optax.sgd(0.1), bench, seed=0,
                            epochs=2, batch_size=4)
  theirs = fit(replay(mem_size=8, batch_size_mem=3, storage="reservoir"))
  # Without the term's hooks, and with them at a weight of 0: replay.
  without, weightless = (fit(rar(batch_size_mem=3, mem_size=8, **kwargs))
                         for kwargs in ({"use_adversarial_replay": False},
                                        {"beta_coef": 0.0}))
  for ours in (without, weightless):
    np.testing.assert_allclose(ours.accuracy_matrix, theirs.accuracy_matrix)
    assert_trees_close(ours.state.params, theirs.state.params, atol=1e-6)
    assert_trees_close(ours.state.cl_state.buffer, theirs.state.cl_state)
    # The reservoir holds 8 of the 48 samples seen.
    buffer = jax.device_get(ours.state.cl_state.buffer)
    assert int(buffers.size(buffer)) == 8 and int(buffer.seen) == 48
  # The term changes training (the program of beta_coef=0, loaded).
  on = fit(rar(batch_size_mem=3, mem_size=8, beta_coef=1.0))
  diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                      on.state.params, weightless.state.params)
  assert max(jax.tree.leaves(diff)) > 1e-3


def test_seeds_together_equal_seeds_alone():
  fit_seeds_alone(jaxcl.models.MLP(num_classes=4, hidden_size=8,
                                   drop_rate=0.0),
                  rar(batch_size_mem=4, mem_size=8, epsilon_fgsm=0.1),
                  make_benchmark())


def test_cli_runs_rar(tmp_path):
  metrics = tiny_cli_metrics(tmp_path, "--strategy", "rar", "--mem-size",
                             "50", "--batch-size-mem", "10", "--beta-coef",
                             "0.5", "--lr", "0.1")
  assert metrics["stream_accuracy"] > 0.5


def test_rar_refuses_bad_arguments_and_contexts():
  for name, value, message in [
      ("mem_size", 0, "mem_size must be a positive integer, got 0"),
      ("opt_lr", -0.1, r"opt_lr must be in \[0, inf\), got -0.1"),
      ("beta_coef", float("nan"), r"beta_coef must be in \[0, inf\), got nan"),
      ("decay_factor_fgsm", -1.0, "decay_factor_fgsm must be in"),
      ("epsilon_fgsm", -0.5, r"epsilon_fgsm must be in \[0, inf\), got -0.5"),
      ("iter_fgsm", 0, "iter_fgsm must be a positive integer, got 0")]:
    with pytest.raises(ValueError, match=message):
      rar(**{name: value})
  with pytest.raises(ValueError, match="batch_size_mem=20 exceeds "
                     "mem_size=10"):
    rar(batch_size_mem=20, mem_size=10)
  with pytest.raises(TypeError, match="use_adversarial_replay must be True "
                     "or False, got 'no'"):
    rar(use_adversarial_replay="no")
  ctx = hook_context(TwoLayer(), n_classes=N_CLASSES, dim=DIM)
  tasks = ctx._replace(task_classes=np.array([[1, 1, 0, 0], [0, 0, 1, 1]],
                                             bool))
  with pytest.raises(ValueError, match="rar .* stream with task labels"):
    rar().init(tasks, {}, jax.random.key(0))
  # Plain reservoir replay serves task labels.
  params = hook_state(ctx, rar()).params
  rar(use_adversarial_replay=False).init(tasks, params, jax.random.key(0))
  for dtype in (jnp.int8, jnp.int32):
    with pytest.raises(ValueError, match="rar perturbs raw inputs clipped "
                       rf"to \[0, max\] .* got inputs of dtype {dtype.dtype}"):
      rar().init(ctx._replace(x_dtype=dtype), params, jax.random.key(0))
  rar(use_adversarial_replay=False).init(ctx._replace(x_dtype=jnp.int8),
                                         params, jax.random.key(0))
  assert_refuses_models_without_features(rar(), ctx)


@pytest.mark.parametrize("name", ["opt_lr", "beta_coef", "decay_factor_fgsm",
                                  "epsilon_fgsm"])
def test_rar_refuses_values_float32_cannot_hold(name):
  for value in (1e39, 1e-39):
    with pytest.raises(ValueError, match=re.escape(f"{name}={value!r}")
                       + " is outside float32's range, .* expected 0 or a "
                       "value between"):
      rar(**{name: value})
  assert rar(**{name: 0.0}).name == "rar"


def test_values_the_configuration_does_not_read_are_stored_as_zero():
  ctx = hook_context(TwoLayer(), n_classes=N_CLASSES, dim=DIM)
  given = dict(opt_lr=0.5, beta_coef=0.7, decay_factor_fgsm=0.3,
               epsilon_fgsm=0.2)
  names = list(given)
  for kwargs, stored in [
      (dict(iter_fgsm=3), [0.5, 0.7, 0.3, 0.2]),
      (dict(iter_fgsm=2), [0.5, 0.7, 0.0, 0.2]),
      (dict(iter_fgsm=1), [0.0, 0.7, 0.0, 0.0]),
      (dict(iter_fgsm=3, use_adversarial_replay=False), [0.0] * 4)]:
    cl_state = hook_state(ctx, rar(**given, **kwargs)).cl_state
    np.testing.assert_allclose([getattr(cl_state, n) for n in names], stored,
                               rtol=1e-6, err_msg=str(kwargs))
  # So the runs of a sweep over such a value start from the same state
  # (fit compares them whole) ...
  for name, kwargs in [("beta_coef", dict(use_adversarial_replay=False)),
                       ("decay_factor_fgsm", dict(iter_fgsm=2)),
                       ("epsilon_fgsm", dict(iter_fgsm=1))]:
    runs = [hook_state(ctx, rar(**{name: v}, **kwargs)).cl_state
            for v in (0.1, 0.3)]
    assert_trees_close(*runs, rtol=0, atol=0)
  # ... and fit refuses it, as La-MAML's lr_alpha.
  bench = make_benchmark(n_classes=4, n_experiences=2, per_class=6)
  model = jaxcl.models.MLP(num_classes=4, hidden_size=8, drop_rate=0.0)
  with pytest.raises(ValueError, match="does not use it"):
    jaxcl.sweep(model, bench, [0.1, 0.3], batch_size=4,
                strategy=lambda v: rar(mem_size=8, batch_size_mem=4,
                                       epsilon_fgsm=v, iter_fgsm=1),
                optimizer=optax.sgd(0.1))
