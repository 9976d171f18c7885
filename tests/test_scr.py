"""SCR against a transcription of Avalanche's SCRLoss and hand-made means."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (TwoLayer, assert_nearest_class_logits,
                      assert_refuses_models_without_features,
                      check_class_balanced_memory, fit_seeds_alone,
                      hook_context, hook_state, make_benchmark, normal_batch,
                      normal_experience, predict_rows, tiny_cli_metrics,
                      two_layer_numpy, unit_rows)

import jaxcl
from jaxcl.models import MLP
from jaxcl.strategies import (REGISTRY, buffers, chain, ewc, from_spec, scr,
                              scr_loss)
from jaxcl.strategies.contrastive import _embed_views
from jaxcl.training import cross_entropy, mask_unseen

N_CLASSES, DIM = 4, 3


def _ctx(model=None, **kwargs):
  return hook_context(model or TwoLayer(), n_classes=N_CLASSES, dim=DIM,
                      n_experiences=3, **kwargs)


def _avalanche_scr(features, labels, temperature, base_temperature=0.07,
                   xp=np, detach=lambda a: a):
  """SCRLoss as Avalanche writes it (``contrast_mode="all"``):
  ``features`` is ``[n, views, d]``, the views stacked view after view;
  the row maxima are subtracted, detached, before the softmax."""
  n, n_views = features.shape[:2]
  contrast = xp.concatenate([features[:, v] for v in range(n_views)], 0)
  logits = contrast @ contrast.T / temperature
  logits = logits - detach(logits.max(1, keepdims=True))
  same = (labels[:, None] == labels[None, :]).astype(np.float32)
  not_self = 1.0 - xp.eye(n * n_views)
  positive = xp.tile(same, (n_views, n_views)) * not_self
  log_prob = logits - xp.log((xp.exp(logits) * not_self).sum(1,
                                                             keepdims=True))
  mean_positive = (positive * log_prob).sum(1) / positive.sum(1)
  return -(temperature / base_temperature) * mean_positive.mean()


def test_scr_loss_matches_avalanche_in_value_and_gradient():
  rng = np.random.default_rng(0)
  # Class 3 has one sample: its only positive is its other view.
  y = np.array([0, 2, 2, 0, 1, 0, 3])
  views = unit_rows(rng.normal(size=(2, 7, 5))).astype(np.float32)
  # Padding rows of weight 0, of a present class and of an id out of
  # range, change nothing.
  padded = np.concatenate(
      [views, unit_rows(rng.normal(size=(2, 2, 5))).astype(np.float32)], 1)
  y_pad, weight = np.r_[y, 2, 99], np.r_[np.ones(7), 0.0, 0.0]
  as_avalanche = np.swapaxes(views, 0, 1).astype(np.float64)
  for temperature in (0.1, 0.5):
    expected = _avalanche_scr(as_avalanche, y, temperature)
    got = jax.jit(scr_loss)(jnp.asarray(padded), jnp.asarray(y_pad),
                            jnp.asarray(weight), temperature)
    assert float(got) == pytest.approx(expected, rel=1e-5)
  reference = jax.jit(jax.grad(lambda h: _avalanche_scr(
      jnp.swapaxes(h, 0, 1), jnp.asarray(y), 0.1, xp=jnp,
      detach=jax.lax.stop_gradient)))(jnp.asarray(views))
  grad = jax.jit(jax.grad(lambda h: scr_loss(
      h, jnp.asarray(y_pad), jnp.asarray(weight), 0.1)))(jnp.asarray(padded))
  np.testing.assert_allclose(grad[:, :7], reference, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(grad[:, 7:], 0.0)
  # No row: 0, with a finite gradient.
  empty = jax.value_and_grad(lambda h: scr_loss(
      h, jnp.asarray(y_pad), jnp.zeros(9), 0.1))(jnp.asarray(padded))
  assert float(empty[0]) == 0.0 and np.all(np.isfinite(empty[1]))


def _replaying_batch(ctx, strategy):
  """A state whose memory holds 3 samples of classes 0 and 1 each, and a
  transformed batch of classes 2 (one padding row) with 4 memory rows."""
  # Jitted as fit runs the hooks: one program compiles in less time than
  # their operations one by one.
  @jax.jit
  def hooks(state, data, batch):
    state = strategy.end_experience(ctx, state, data, jax.random.key(1))
    return state, strategy.transform_batch(ctx, state.cl_state, batch,
                                           jax.random.key(4))

  return hooks(hook_state(ctx, strategy),
               normal_experience([0, 0, 0, 1, 1, 1], 0),
               normal_batch([2, 2, 2, 2], [1.0, 1.0, 1.0, 0.0], dim=DIM))


@pytest.mark.parametrize("augment", [None, lambda x, key: x[:, ::-1] * 2.0])
def test_scr_trains_on_the_loss_of_two_views_of_batch_and_memory(augment):
  ctx = _ctx(augment=augment)
  strategy = scr(mem_size=8, temperature=0.5)
  state, out = _replaying_batch(ctx, strategy)
  # batch_size memory rows follow the current ones.
  assert out["y"].shape == (8,) and int(jnp.sum(out["weight"][4:])) == 4
  assert set(np.asarray(out["y"][4:]).tolist()) <= {0, 1}

  @jax.jit
  def logits_and_penalty(state, batch):
    logits = mask_unseen(ctx.logits(state.params, state.model_state,
                                    batch["x"], batch["task"]),
                         jnp.ones(N_CLASSES, bool))
    return logits, strategy.penalty(ctx, state.params, state.cl_state, batch,
                                    logits)

  logits, penalty = logits_and_penalty(state, out)
  assert float(jnp.sum(cross_entropy(logits, out) * out["weight"])) == 0.0
  used = np.asarray(out["weight"]) > 0
  x = np.asarray(out["x"])[used]
  second = x if augment is None else x[:, ::-1] * 2.0
  views = np.stack([unit_rows(two_layer_numpy(state.params, x)[1]),
                    unit_rows(two_layer_numpy(state.params, second)[1])], 1)
  assert float(penalty) == pytest.approx(
      _avalanche_scr(views, np.asarray(out["y"])[used], 0.5), rel=1e-5)
  # Each step leaves a fresh key for the next one's view and dropout.
  stepped = state.replace(step=state.step + 1)
  cl = strategy.after_step(ctx, state, stepped, None, out, jax.random.key(5))
  assert not np.array_equal(cl.key, state.cl_state.key)


def test_scr_views_go_through_the_model_in_training_mode():
  # Without an augmentation, dropout alone tells the two views apart, as
  # in Avalanche's training forward pass.
  for drop_rate, differ in ((0.5, True), (0.0, False)):
    model = MLP(N_CLASSES, hidden_size=16, drop_rate=drop_rate)
    ctx = _ctx(model)
    strategy = scr(mem_size=8)
    state, out = _replaying_batch(ctx, strategy)
    views = _embed_views(ctx, state.params, state.cl_state, out)
    assert views.shape == (2, 8, N_CLASSES)
    assert (not np.allclose(views[0], views[1])) == differ


def test_scr_class_means_come_from_the_memory_with_momentum():
  ctx = _ctx()
  strategy = scr(mem_size=6)
  state = hook_state(ctx, strategy)
  assert not np.any(state.cl_state.has_mean)
  first = normal_experience([0, 0, 0, 1, 1, 1, 1], 0)
  state = strategy.end_experience(ctx, state, first, jax.random.key(1))
  cl = state.cl_state

  def means_from(cl, params):
    """Per class in the memory: the normalised mean of unit features."""
    stored = np.asarray(cl.buffer.valid)
    h = unit_rows(two_layer_numpy(params,
                                  np.asarray(cl.buffer.x)[stored])[0])
    y = np.asarray(cl.buffer.y)[stored]
    return {c: unit_rows(h[y == c].mean(0)) for c in np.unique(y)}

  expected = means_from(cl, state.params)
  assert sorted(expected) == [0, 1]
  np.testing.assert_array_equal(cl.has_mean, [True, True, False, False])
  for c, mean in expected.items():
    np.testing.assert_allclose(cl.class_means[c], mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(cl.class_means[2:], 0.0)

  # After the second experience (other parameters), old classes move half
  # way to their new mean; new classes take theirs.
  moved = state.replace(params=jax.tree.map(lambda p: p + 0.3, state.params))
  ended = strategy.end_experience(
      ctx, moved, normal_experience([2, 2, 3, 3, 3], 1, 1), jax.random.key(2))
  np.testing.assert_array_equal(buffers.group_counts(ended.cl_state.buffer),
                                [2, 2, 1, 1])
  new = means_from(ended.cl_state, moved.params)
  for c in (0, 1):
    np.testing.assert_allclose(ended.cl_state.class_means[c],
                               0.5 * new[c] + 0.5 * expected[c], rtol=1e-5,
                               atol=1e-6)
  for c in (2, 3):
    np.testing.assert_allclose(ended.cl_state.class_means[c], new[c],
                               rtol=1e-5, atol=1e-6)
  assert np.all(ended.cl_state.has_mean)


def test_scr_predicts_the_nearest_class_mean_never_one_without():
  ctx = _ctx()
  strategy = scr()
  state = hook_state(ctx, strategy)
  rng = np.random.default_rng(7)
  means = unit_rows(rng.normal(size=(N_CLASSES, 5)))
  has_mean = np.array([True, True, False, True])
  cl = state.cl_state.replace(class_means=jnp.asarray(means, jnp.float32),
                              has_mean=jnp.asarray(has_mean))
  x = rng.normal(size=(32, DIM))
  h = unit_rows(two_layer_numpy(state.params, x)[0])
  assert_nearest_class_logits(
      predict_rows(ctx, strategy, state, cl, x),
      np.linalg.norm(h[:, None] - means[None], axis=-1), has_mean)


def test_scr_memory_stays_class_balanced_and_classes_left_out_have_no_mean():
  ctx = _ctx()
  check_class_balanced_memory(ctx, scr(mem_size=6))
  # Three slots for four classes: the last class stored has no mean.
  small = scr(mem_size=3)
  state = hook_state(ctx, small)
  state = small.end_experience(
      ctx, state, normal_experience([0, 1, 2, 3] * 2, 0), jax.random.key(0))
  np.testing.assert_array_equal(state.cl_state.has_mean,
                                [True, True, True, False])


@pytest.fixture(scope="module")
def two_experiences():
  return make_benchmark(n_experiences=2)


def test_scr_vmapped_seeds_and_swept_temperatures_equal_single_runs(
    two_experiences):
  # With dropout, so that the per-step key of each run is checked too.
  model = MLP(4, hidden_size=32, drop_rate=0.1)
  alone = fit_seeds_alone(model, scr(mem_size=8), two_experiences)
  for run in alone:
    np.testing.assert_array_equal(run.accuracy_matrix[-1], [1.0, 1.0])
    assert np.all(run.state.cl_state.has_mean)
  # Seed 0's run alone has the default temperature, 0.1: the sweep's first.
  swept = jaxcl.sweep(model, two_experiences, [0.1, 0.5],
                      strategy=lambda t: scr(mem_size=8, temperature=t),
                      optimizer=optax.sgd(0.1), epochs=2, batch_size=4)
  np.testing.assert_allclose(swept.runs[0].accuracy_matrix,
                             alone[0].accuracy_matrix, atol=1e-6)
  np.testing.assert_allclose(swept.runs[0].state.cl_state.class_means,
                             alone[0].state.cl_state.class_means, atol=1e-5)
  assert not np.allclose(swept.runs[1].state.cl_state.class_means,
                         alone[0].state.cl_state.class_means, atol=1e-5)


def test_scr_in_a_chain_keeps_its_state_and_prediction_rule(two_experiences):
  chained = jaxcl.fit(MLP(4, hidden_size=32, drop_rate=0.0),
                      chain(ewc(ewc_lambda=1.0), scr(mem_size=8)),
                      optax.sgd(0.1), two_experiences, seed=0, epochs=2,
                      batch_size=4)
  assert np.all(np.isfinite(chained.accuracy_matrix))
  scr_state = chained.state.cl_state[1]
  assert int(buffers.size(scr_state.buffer)) == 8
  assert np.all(scr_state.has_mean)


def test_scr_refuses_bad_arguments():
  with pytest.raises(ValueError, match=r"temperature must be in \(0, inf\), "
                     "got 0.0"):
    scr(temperature=0.0)
  with pytest.raises(TypeError, match="temperature must be a real number, "
                     "got 'a'"):
    scr(temperature="a")
  with pytest.raises(ValueError, match=r"temperature / 0.07 = 1e\+38 / 0.07 "
                     "overflows float32"):
    scr(temperature=1e38)
  with pytest.raises(ValueError, match="mem_size must be a positive integer, "
                     "got 0"):
    scr(mem_size=0)
  with pytest.raises(ValueError, match="batch_size_mem=20 exceeds "
                     "mem_size=10"):
    scr(mem_size=10, batch_size_mem=20)
  with pytest.raises(ValueError, match="batch_size_mem must be a positive "
                     "integer, or 0 for the training batch size; got -1"):
    scr(batch_size_mem=-1)
  tasks = _ctx(task_classes=np.eye(2, N_CLASSES, dtype=bool))
  with pytest.raises(ValueError, match="scr keeps one mean per class and "
                     "ignores task labels"):
    scr().init(tasks, None, jax.random.key(0))
  assert_refuses_models_without_features(scr(), _ctx())


def test_scr_is_registered_for_specs():
  assert REGISTRY["scr"].factory is scr
  assert set(REGISTRY["scr"].parameters) == {"mem_size", "temperature",
                                              "batch_size_mem"}
  strategy = from_spec("ewc+scr(temperature=0.2)", mem_size=50)
  assert strategy.name == "ewc+scr" and strategy.predict is not None
  own = hook_state(_ctx(), strategy).cl_state[1]
  assert own.buffer.capacity == 50
  assert float(own.temperature) == pytest.approx(0.2)


def test_scr_from_the_command_line(tmp_path):
  metrics = tiny_cli_metrics(tmp_path, "--strategy", "scr", "--temperature",
                             "0.2", "--mem-size", "50")
  assert metrics["stream_accuracy"] > 0.5


def test_scr_loss_names_its_layout():
  views = jnp.ones((3, 2, 4))  # SCRLoss's [n, V, d] for 3 rows.
  with pytest.raises(ValueError, match=r"scr_loss takes views first: views "
                     r"\[V, n, d\] .*got views \(3, 2, 4\), labels \(3,\)"):
    scr_loss(views, jnp.zeros(3, jnp.int32), jnp.ones(3), 0.1)
