"""Expert Gate: autoencoder gate, relatedness, expert selection, LwF."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (TwoLayer, assert_remembers_the_first_experience,
                      assert_trees_close, device_experience,
                      fit_seeds_alone, hook_context, hook_state,
                      make_benchmark, normal_batch, tiny_cli_metrics)

import jaxcl
from jaxcl.strategies import autoencoder_errors, expert_gate
from jaxcl.strategies.experts import _init_autoencoder
from jaxcl.strategies.regularization import distillation_kl

N_CLASSES, DIM = 4, 3


def _ctx(**kwargs):
  return hook_context(TwoLayer(), n_classes=N_CLASSES, dim=DIM,
                      optimizer=optax.sgd(0.1), n_experiences=3, **kwargs)


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _numpy_errors(ae, h):
  ae = {k: np.asarray(v, np.float64) for k, v in ae.items()}
  code = np.maximum(h @ ae["w_enc"] + ae["b_enc"], 0.0)
  return np.sum((_sigmoid(code @ ae["w_dec"] + ae["b_dec"]) - h) ** 2, -1)


def _numpy_gradient(ae, h):
  """Gradient of the summed squared reconstruction error, by hand."""
  ae = {k: np.asarray(v, np.float64) for k, v in ae.items()}
  z1 = h @ ae["w_enc"] + ae["b_enc"]
  code = np.maximum(z1, 0.0)
  r = _sigmoid(code @ ae["w_dec"] + ae["b_dec"])
  dz2 = 2.0 * (r - h) * r * (1.0 - r)
  dz1 = (dz2 @ ae["w_dec"].T) * (z1 > 0)
  return {"w_enc": h.T @ dz1, "b_enc": dz1.sum(0),
          "w_dec": code.T @ dz2, "b_dec": dz2.sum(0)}


def test_autoencoder_errors_are_summed_squared_reconstruction_errors():
  keys = jax.random.split(jax.random.key(0), 2)
  stacked = jax.vmap(lambda k: _init_autoencoder(k, 5, 3))(keys)
  h = np.random.default_rng(0).uniform(size=(4, 5))
  errors = np.asarray(autoencoder_errors(stacked, jnp.asarray(h,
                                                              jnp.float32)))
  for e in range(2):
    expected = _numpy_errors(jax.tree.map(lambda a: a[e], stacked), h)
    np.testing.assert_allclose(errors[:, e], expected, rtol=1e-5)


def test_the_autoencoder_takes_avalanches_sgd_steps_on_the_valid_rows():
  # One epoch of one batch holding the whole experience: one SGD step,
  # whose momentum buffer starts at the gradient (plus weight decay).
  ctx = _ctx()
  lr = 0.05
  strategy = expert_gate(ae_latent_dim=2, ae_train_epochs=1,
                         ae_train_mb_size=8, ae_lr=lr)
  state = hook_state(ctx, strategy)
  x = np.random.default_rng(1).normal(size=(5, DIM))
  data = device_experience(x, [0, 0, 1, 1, 0], 0, 8, N_CLASSES)
  key = jax.random.key(7)
  begun = strategy.begin_experience(ctx, state, data, key)
  initial = _init_autoencoder(jax.random.split(key)[0], DIM, 2)
  h = _sigmoid(x)  # The gate's inputs: preprocessed (identity), squashed.
  grad = _numpy_gradient(initial, h)  # Padding rows 5..7 left out.
  # The steps, compared tightly enough to see the weight decay's share.
  expected = {k: -lr * (grad[k] + 5e-4 * np.asarray(v, np.float64))
              for k, v in initial.items()}
  trained = jax.tree.map(lambda a: a[0], begun.cl_state.autoencoders)
  assert_trees_close(jax.tree.map(lambda a, b: a - b, trained, initial),
                     expected, rtol=2e-5, atol=1e-7)


def _shifted_experience(labels, index, shift, seed):
  x = np.random.default_rng(seed).normal(size=(8, DIM)) * 0.3 + shift
  return device_experience(x, labels, index, 8, N_CLASSES)


def test_a_new_expert_starts_from_the_most_related_one():
  ctx = _ctx()
  strategy = expert_gate(ae_latent_dim=2, ae_train_epochs=20,
                         ae_train_mb_size=4, ae_lr=0.05, rel_thresh=0.5)
  state = hook_state(ctx, strategy)
  experiences = [_shifted_experience([0] * 4 + [1] * 4, 0, 2.0, 0),
                 _shifted_experience([2] * 4 + [3] * 4, 1, -2.0, 1),
                 _shifted_experience([0, 1] * 4, 2, 2.0, 2)]

  @jax.jit
  def run(state):
    states = []
    for i, data in enumerate(experiences):
      state = strategy.begin_experience(ctx, state, data, jax.random.key(i))
      states.append(state)
      # Training moves the parameters: each expert differs.
      state = state.replace(params=jax.tree.map(lambda p: p + i + 1.0,
                                                state.params))
      state = strategy.end_experience(ctx, state, data, jax.random.key(9))
    return states, state

  states, final = run(state)
  first, second, third = (s.cl_state for s in states)
  assert int(first.related) == -1 and not bool(first.use_lwf)
  assert_trees_close(states[0].params, state.params)
  # The third experience looks like the first: its expert starts there.
  assert int(third.related) == 0
  assert_trees_close(states[2].params,
                     jax.tree.map(lambda p: p + 1.0, state.params))
  h = jax.nn.sigmoid(experiences[2].x)
  errors = np.asarray(autoencoder_errors(third.autoencoders, h)).mean(0)
  expected = 1.0 - (errors[0] - errors[2]) / errors[2]
  assert float(third.relatedness) == pytest.approx(expected, rel=1e-4)
  assert bool(third.use_lwf) == (expected > 0.5)
  assert errors[0] < errors[1]
  np.testing.assert_array_equal(final.cl_state.trained, [True] * 3)
  np.testing.assert_array_equal(final.cl_state.expert_classes,
                                [[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0]])

  # Each sample goes to the expert whose autoencoder reconstructs it best,
  # which predicts among its own classes.
  x = jnp.concatenate([experiences[0].x[:2], experiences[1].x[:2]])
  cl = final.cl_state
  logits = strategy.predict(ctx, final.params, final.model_state, cl, x,
                            jnp.zeros(4, jnp.int32))
  choice = np.argmin(np.asarray(autoencoder_errors(cl.autoencoders,
                                                   jax.nn.sigmoid(x))), -1)
  assert choice[2] == choice[3] == 1 and choice[0] in (0, 2)
  for row, e in enumerate(choice):
    expert = jax.tree.map(lambda a: a[e], cl.experts)
    own = ctx.logits(expert, final.model_state, x[row:row + 1],
                     jnp.zeros(1, jnp.int32))[0]
    classes = np.asarray(cl.expert_classes[e])
    np.testing.assert_allclose(np.asarray(logits[row])[classes],
                               np.asarray(own)[classes], rtol=1e-5)
    assert np.all(np.asarray(logits[row])[~classes] <= -1000.0)

  # A diverged autoencoder is never picked: the first experience's samples
  # go to the third expert, which learnt the same inputs.
  broken = cl.replace(autoencoders=jax.tree.map(
      lambda a: a.at[0].set(jnp.nan), cl.autoencoders))
  errors = autoencoder_errors(broken.autoencoders, jax.nn.sigmoid(x[:2]))
  assert np.isnan(np.asarray(errors)[:, 0]).all()
  logits = strategy.predict(ctx, final.params, final.model_state, broken,
                            x[:2], jnp.zeros(2, jnp.int32))
  assert np.isfinite(np.asarray(logits)).all()


def test_a_new_expert_gets_fresh_momentum_but_the_schedule_goes_on():
  schedule = optax.linear_schedule(0.1, 0.0, 100)
  ctx = _ctx()._replace(optimizer=optax.sgd(schedule, momentum=0.9))
  strategy = expert_gate(ae_latent_dim=2)
  state = jaxcl.training.init_state(
      ctx, strategy, ctx.optimizer, jax.random.key(0), jnp.zeros((1, DIM)),
      jnp.zeros((1,), jnp.int32))
  used = state.opt_state
  used = (jax.tree.map(jnp.ones_like, used[0]), used[1]._replace(count=7))
  begun = strategy.begin_experience(
      ctx, state.replace(opt_state=used),
      _shifted_experience([0] * 8, 0, 0.0, 0), jax.random.key(1))
  assert int(begun.opt_state[1].count) == 7
  assert_trees_close(begun.opt_state[0], ctx.optimizer.init(
      begun.params)[0])


@pytest.mark.parametrize("use_lwf", [True, False])
def test_the_lwf_term_distils_the_related_expert(use_lwf):
  ctx = _ctx()
  strategy = expert_gate(lwf_alpha=0.3, lwf_temperature=2.0)
  state = hook_state(ctx, strategy)
  teacher = jax.tree.map(lambda p: p * 1.5, state.params)
  cl = state.cl_state.replace(
      teacher=teacher, teacher_classes=jnp.array([True, True, False, False]),
      use_lwf=jnp.asarray(use_lwf))
  batch = normal_batch([2, 3, 3, 2], [1., 1., 1., 0.])
  logits = ctx.logits(state.params, state.model_state, batch["x"],
                      batch["task"])
  penalty = float(strategy.penalty(ctx, state.params, cl, batch, logits))
  teacher_logits = ctx.logits(teacher, state.model_state, batch["x"],
                              batch["task"])
  expected = 0.3 * float(distillation_kl(
      logits, teacher_logits, cl.teacher_classes, 2.0, batch["weight"]))
  assert penalty == pytest.approx(expected if use_lwf else 0.0, rel=1e-5)
  assert expected > 0


def test_expert_gate_vmapped_seeds_equal_single_runs_and_beat_naive():
  bench = make_benchmark(n_experiences=2)
  model = jaxcl.models.MLP(4, hidden_size=8, drop_rate=0.0)
  strategy = expert_gate(ae_latent_dim=4, ae_train_mb_size=4,
                         ae_train_epochs=20, ae_lr=0.1)
  alone = fit_seeds_alone(model, strategy, bench)
  assert_remembers_the_first_experience(alone[0], model, bench)


def test_expert_gate_refuses_bad_arguments_and_contexts():
  with pytest.raises(ValueError, match="ae_latent_dim must be a positive "
                     "integer, got 0"):
    expert_gate(ae_latent_dim=0)
  with pytest.raises(ValueError, match=r"ae_lr must be in \(0, inf\)"):
    expert_gate(ae_lr=0.0)
  with pytest.raises(ValueError, match=r"lwf_alpha must be in \[0, inf\)"):
    expert_gate(lwf_alpha=-1.0)
  with pytest.raises(ValueError, match="stream with task labels"):
    expert_gate().init(_ctx(task_classes=jnp.ones((2, N_CLASSES), bool)),
                       None, jax.random.key(0))
  with pytest.raises(ValueError, match="needs ctx.optimizer"):
    expert_gate().init(_ctx()._replace(optimizer=None), None,
                       jax.random.key(0))


def test_expert_gate_from_the_command_line(tmp_path):
  metrics = tiny_cli_metrics(tmp_path, "--strategy", "expert_gate",
                             "--ae-train-mb-size", "64", "--rel-thresh",
                             "0.5")
  assert metrics["stream_accuracy"] > 0.5
