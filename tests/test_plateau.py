"""optax.contrib.reduce_on_plateau driven by fit's training loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_benchmark

import jaxcl
from jaxcl.models import MLP
from jaxcl.strategies import mer, naive
from jaxcl.training import optim


def _plateau(opt_state):
  return [node for node in jax.tree.leaves(
      opt_state, is_leaf=lambda n: isinstance(
          n, optax.contrib.ReduceLROnPlateauState))
          if isinstance(node, optax.contrib.ReduceLROnPlateauState)][0]


def _frozen_fit(n_experiences, epochs, **kwargs):
  """A learning rate of 0: the loss of every epoch is the initial model's,
  so after the first epoch's average no epoch improves on it."""
  benchmark = make_benchmark(n_experiences=n_experiences, per_class=8)
  steps = 32 // n_experiences // 8  # Batches of 8 per epoch.
  optimizer = optax.chain(optax.sgd(0.0), optax.contrib.reduce_on_plateau(
      factor=0.5, patience=1, accumulation_size=steps))
  model = MLP(4, hidden_size=8, drop_rate=0.0)
  result = jaxcl.fit(model, naive(), optimizer, benchmark, epochs=epochs,
                     batch_size=8, seed=0, **kwargs)
  return model, benchmark, result


def test_the_scale_halves_after_every_epoch_without_a_lower_loss():
  model, benchmark, result = _frozen_fit(1, epochs=5)
  plateau = _plateau(result.state.opt_state)
  # The first epoch sets the best loss; each of the 4 others is a plateau
  # of patience 1.
  assert float(plateau.scale) == 0.5 ** 4
  # The loss fit passed is the training loss: the initial model's mean
  # cross-entropy over the experience.
  experience = benchmark.train_stream[0]
  logits = model.apply({"params": result.state.params},
                       jnp.asarray(experience.x, jnp.float32))
  expected = optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.asarray(experience.y)).mean()
  np.testing.assert_allclose(float(plateau.best_value), float(expected),
                             rtol=1e-5)


@pytest.mark.parametrize("reset_schedule", [False, True])
def test_reset_schedule_restarts_the_plateau(reset_schedule):
  _, _, result = _frozen_fit(2, epochs=3, reset_schedule=reset_schedule)
  scale = float(_plateau(result.state.opt_state).scale)
  if reset_schedule:
    # The second experience starts over: its first epoch sets the best
    # loss, the two others halve the scale.
    assert scale == 0.5 ** 2
  else:
    # Two halvings in the first experience, at least two in the second.
    assert scale <= 0.5 ** 4


def test_the_loss_includes_the_strategys_penalty():
  penalised = naive()._replace(
      penalty=lambda ctx, params, cl_state, batch, logits: jnp.asarray(3.0))
  benchmark = make_benchmark(n_experiences=1, per_class=8)
  optimizer = optax.chain(optax.sgd(0.0), optax.contrib.reduce_on_plateau(
      accumulation_size=4))
  result = jaxcl.fit(MLP(4, hidden_size=8, drop_rate=0.0), penalised,
                     optimizer, benchmark, batch_size=8, seed=0)
  _, _, plain = _frozen_fit(1, epochs=1)
  np.testing.assert_allclose(
      float(_plateau(result.state.opt_state).best_value),
      float(_plateau(plain.state.opt_state).best_value) + 3.0, rtol=1e-6)


def test_a_learning_rate_sweep_runs_with_a_plateau_in_one_program():
  make = lambda lr: optax.chain(
      optax.inject_hyperparams(optax.sgd)(learning_rate=lr),
      optax.contrib.reduce_on_plateau(patience=1, factor=0.5,
                                      accumulation_size=2))
  result = jaxcl.sweep(MLP(4, hidden_size=8, drop_rate=0.0),
                       make_benchmark(n_experiences=2, per_class=8),
                       [0.0, 0.5], strategy=naive(), optimizer=make,
                       epochs=3, batch_size=8, reset_schedule=True)
  scales = _plateau(result.runs[0].state.opt_state).scale, _plateau(
      result.runs[1].state.opt_state).scale
  # The frozen run plateaus in the 2 windows after the first of the last
  # experience; the trained one's loss falls at first.
  assert float(scales[0]) == 0.5 ** 2 and float(scales[1]) > 0.5 ** 2


def test_packnet_fine_tunes_with_a_plateau_optimizer():
  benchmark = make_benchmark(n_experiences=2, per_class=8,
                             return_task_id=True)
  optimizer = optax.chain(optax.sgd(0.1), optax.contrib.reduce_on_plateau(
      accumulation_size=2))
  result = jaxcl.fit(MLP(4, hidden_size=8, drop_rate=0.0),
                     jaxcl.strategies.packnet(post_prune_epochs=1),
                     optimizer, benchmark, batch_size=8, seed=0)
  assert np.all(np.isfinite(result.accuracy_matrix))


def test_a_plateau_out_of_reach_of_the_loss_is_refused():
  inner = optax.chain(optax.sgd(0.1), optax.contrib.reduce_on_plateau())
  plain = optax.GradientTransformation(inner.init, inner.update)
  with pytest.raises(ValueError, match="optimizer holds optax.contrib."
                     "reduce_on_plateau, which needs each step's loss, but is "
                     "a GradientTransformation"):
    jaxcl.fit(MLP(4, hidden_size=8), naive(), plain, make_benchmark(),
              batch_size=8)


def test_a_falling_loss_keeps_the_scale():
  benchmark = make_benchmark(n_experiences=1, per_class=32)
  optimizer = optax.chain(optax.sgd(0.1), optax.contrib.reduce_on_plateau(
      factor=0.5, patience=1, accumulation_size=16))
  result = jaxcl.fit(MLP(4, hidden_size=8, drop_rate=0.0), naive(),
                     optimizer, benchmark, epochs=3, batch_size=8, seed=0)
  assert float(_plateau(result.state.opt_state).scale) == 1.0


def test_restart_and_kept_states():
  params = {"w": jnp.ones(3)}
  optimizer = optax.chain(optax.sgd(0.1, momentum=0.9),
                          optax.contrib.reduce_on_plateau())
  state = optimizer.init(params)
  stale = _plateau(state)._replace(
      scale=jnp.asarray(0.01), best_value=jnp.asarray(2.0),
      plateau_count=jnp.asarray(3), count=jnp.asarray(5),
      avg_value=jnp.asarray(1.5))
  state = (state[0], stale)
  restarted = _plateau(optim.restart_schedules(state))
  fresh = _plateau(optimizer.init(params))
  for field in fresh._fields:
    np.testing.assert_array_equal(getattr(restarted, field),
                                  getattr(fresh, field))
  kept = optim.reset_optimizer_state(optimizer, state, params,
                                     keep_schedules=True)
  np.testing.assert_allclose(_plateau(kept).scale, 0.01, rtol=1e-6)
  assert optim.has_plateau(state) and not optim.has_plateau(
      optax.sgd(0.1).init(params))


def test_a_strategy_with_its_own_updates_is_refused():
  optimizer = optax.chain(optax.sgd(0.1), optax.contrib.reduce_on_plateau())
  with pytest.raises(ValueError, match="mer makes its own optimizer updates"):
    jaxcl.fit(MLP(4, hidden_size=8), mer(mem_size=16), optimizer,
              make_benchmark(), batch_size=8)
