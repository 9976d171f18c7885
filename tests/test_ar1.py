"""AR1 with latent replay at the output layer's input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (TwoLayer, assert_remembers_the_first_experience,
                      assert_trees_close, cross_entropy_np,
                      device_experience, fit_seeds_alone, hook_context,
                      make_benchmark, normal_batch,
                      tiny_cli_metrics, two_layer_numpy)

import jaxcl
from jaxcl.strategies import ar1
from jaxcl.training import cross_entropy

N_CLASSES, DIM = 4, 3


def _ctx(**kwargs):
  return hook_context(TwoLayer(), n_classes=N_CLASSES, dim=DIM,
                      optimizer=optax.sgd(0.1, momentum=0.9), **kwargs)


def _two_experiences():
  """Ends experience 0 (classes 0, 1) with moved parameters and begins
  experience 1 (classes 2, 3) with moved parameters again."""
  ctx = _ctx()
  strategy = ar1(rm_sz=4, latent_mb_size=4)
  state = jaxcl.training.init_state(
      ctx, strategy, ctx.optimizer, jax.random.key(0), jnp.zeros((1, DIM)),
      jnp.zeros((1,), jnp.int32)).replace(
          seen_classes=jnp.ones(N_CLASSES, bool))
  rng = np.random.default_rng(0)
  first_x = rng.normal(size=(4, DIM))
  first = device_experience(first_x, [0, 0, 1, 1], 0, 8, N_CLASSES)
  second = device_experience(rng.normal(size=(4, DIM)), [2, 2, 3, 3], 1, 8,
                             N_CLASSES)
  moved = lambda s, c: s.replace(params=jax.tree.map(
      lambda p: p + c * jnp.cos(jnp.arange(p.size).reshape(p.shape)),
      s.params))

  @jax.jit
  def run(state):
    begun = strategy.begin_experience(ctx, state, first, jax.random.key(1))
    ended = strategy.end_experience(ctx, moved(begun, 0.3), first,
                                    jax.random.key(2))
    # A momentum that a fresh optimizer state must forget.
    ended = ended.replace(opt_state=jax.tree.map(jnp.ones_like,
                                                 ended.opt_state))
    now = strategy.begin_experience(ctx, ended, second, jax.random.key(3))
    return begun, ended, now

  return ctx, strategy, first_x, run(state)


def test_ar1_averages_the_loss_over_current_and_latent_rows():
  ctx, strategy, first_x, (begun, ended, now) = _two_experiences()
  cl = now.cl_state
  # The memory holds the first experience's features under the parameters
  # it ended with (the ones every later experience keeps below the head).
  hidden, _ = two_layer_numpy(ended.params, first_x)
  stored = np.asarray(cl.memory.x)[np.asarray(cl.memory.valid)]
  np.testing.assert_allclose(np.sort(stored, 0), np.sort(hidden, 0),
                             rtol=1e-5, atol=1e-6)
  # CWR*'s counts: the experience's samples plus the memory's.
  np.testing.assert_array_equal(cl.cwr["counts"], [2, 2, 2, 2])

  batch = normal_batch([2, 3, 3, 2], [1., 1., 1., 0.])
  logits = ctx.logits(now.params, now.model_state, batch["x"], batch["task"])
  task = float(jnp.sum(cross_entropy(logits, batch) * batch["weight"]) / 3)
  penalty = float(strategy.penalty(ctx, now.params, cl, batch, logits))
  head = jax.tree.map(lambda a: np.asarray(a, np.float64),
                      now.params["Dense_1"])
  latent_logits = hidden @ head["kernel"] + head["bias"]
  expected = np.mean(np.concatenate([
      cross_entropy_np(np.asarray(logits)[:3], [2, 3, 3]),
      cross_entropy_np(latent_logits, [0, 0, 1, 1])]))
  assert task + penalty == pytest.approx(expected, rel=1e-5)
  # The frozen layers run in evaluation mode: the loop's (training-mode)
  # logits of the current samples do not count.
  shifted = logits + jnp.arange(4.0) * 3.0
  task_shifted = float(jnp.sum(cross_entropy(shifted, batch)
                               * batch["weight"]) / 3)
  assert task_shifted + float(strategy.penalty(
      ctx, now.params, cl, batch, shifted)) == pytest.approx(expected,
                                                             rel=1e-5)


def test_ar1_resets_the_optimizer_and_freezes_below_the_head_later():
  ctx, strategy, _, (begun, ended, now) = _two_experiences()
  fresh = ctx.optimizer.init(now.params)
  assert_trees_close(now.opt_state, fresh)
  assert_trees_close(begun.opt_state, ctx.optimizer.init(begun.params))
  grads = jax.tree.map(jnp.ones_like, now.params)
  for state, frozen in ((begun, False), (now, True)):
    out = strategy.transform_grads(ctx, grads, state, None, None)
    assert float(jnp.abs(out["Dense_0"]["kernel"]).sum()) == (
        0.0 if frozen else 15.0)
    assert float(jnp.abs(out["Dense_1"]["kernel"]).sum()) == 20.0


def test_ar1_vmapped_seeds_equal_single_runs_and_beat_naive():
  bench = make_benchmark(n_experiences=2)
  model = jaxcl.models.MLP(4, hidden_size=8, drop_rate=0.0)
  alone = fit_seeds_alone(model, ar1(rm_sz=12, latent_mb_size=8), bench)
  assert_remembers_the_first_experience(alone[0], model, bench)


def test_ar1_refuses_bad_arguments_and_contexts():
  with pytest.raises(ValueError, match="rm_sz must be a positive integer"):
    ar1(rm_sz=0)
  with pytest.raises(ValueError, match="latent_mb_size must be a "
                     "non-negative integer"):
    ar1(latent_mb_size=-1)
  with pytest.raises(ValueError, match="latent_mb_size=20 exceeds rm_sz=10"):
    ar1(rm_sz=10, latent_mb_size=20)
  heads = hook_context(jaxcl.models.MTMLP(N_CLASSES, n_tasks=2,
                                          hidden_size=4),
                       n_classes=N_CLASSES, dim=DIM,
                       optimizer=optax.sgd(0.1))
  params = heads.model.init(jax.random.key(0), jnp.zeros((1, DIM)),
                            jnp.zeros((1,), jnp.int32))[0]
  with pytest.raises(ValueError, match="^ar1 needs a model whose output "
                     "layer is a flax.linen.Dense"):
    ar1().init(heads, params, jax.random.key(0))
  with pytest.raises(ValueError, match="stream with task labels"):
    ar1().init(_ctx(task_classes=jnp.ones((2, N_CLASSES), bool)), None,
               jax.random.key(0))
  with pytest.raises(ValueError, match="needs ctx.optimizer"):
    ar1().init(_ctx()._replace(optimizer=None), None, jax.random.key(0))


def test_ar1_from_the_command_line(tmp_path):
  metrics = tiny_cli_metrics(tmp_path, "--strategy", "ar1", "--rm-sz", "500",
                             "--lr", "0.1")
  assert metrics["stream_accuracy"] > 0.5
