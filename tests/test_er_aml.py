"""ER-AML against a numpy transcription of Avalanche's AMLCriterion."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (BatchNormMLP, TwoLayer,
                      assert_refuses_models_without_features,
                      assert_remembers_the_first_experience, device_experience,
                      fit_seeds_alone, hook_context, log_softmax,
                      make_benchmark, tiny_cli_metrics)

from jaxcl.models import MLP
from jaxcl.strategies import buffers, er_aml
from jaxcl.strategies.rehearsal import contrast_partners
from jaxcl.training import cross_entropy, init_state, make_train_step

N_CLASSES, DIM = 4, 3


def _ctx(module, batch_size=4):
  return hook_context(module, n_classes=N_CLASSES, dim=DIM,
                      batch_size=batch_size)


def _data(x, labels, index):
  return device_experience(x, labels, index, 8, N_CLASSES)


def _state(ctx, strategy):
  state = init_state(ctx, strategy, optax.sgd(0.1), jax.random.key(0),
                     jnp.zeros((1, DIM)), jnp.zeros((1,), jnp.int32))
  return state.replace(seen_classes=jnp.ones(N_CLASSES, bool))


def _avalanche_aml(h_in, y_in, h_pos, y_pos, h_neg, y_neg, temp, base_temp):
  """AMLCriterion's contrastive term, as Avalanche writes it (anchors twice)."""
  def scale(h):
    return h / (np.linalg.norm(h, axis=1, keepdims=True) + 1e-5)
  anchors = np.tile(scale(h_in), (2, 1))
  features = scale(np.concatenate([h_pos, h_neg]))
  anchor_y = np.tile(y_in, 2)
  target_y = np.concatenate([y_pos, y_neg])
  pos_mask = (anchor_y[:, None] == target_y[None, :]).astype(np.float64)
  similarity = anchors @ features.T / temp
  similarity -= similarity.max(axis=1, keepdims=True)
  log_prob = similarity - np.log(np.exp(similarity).sum(1, keepdims=True))
  mean_log_prob_pos = (pos_mask * log_prob).sum(1) / pos_mask.sum(1)
  return -(temp / base_temp) * mean_log_prob_pos.mean()


def test_er_aml_loss_is_avalanches_criterion():
  ctx = _ctx(TwoLayer())
  strategy = er_aml(mem_size=8, batch_size_mem=3, temp=0.2, base_temp=0.05)
  rng = np.random.default_rng(0)
  mem_x = rng.normal(size=(8, DIM))
  cur_x = rng.normal(size=(4, DIM))
  # Row 3 is padding (weight 0).
  batch = {"x": jnp.asarray(cur_x, jnp.float32), "y": jnp.array([0, 1, 1, 2]),
           "task": jnp.zeros(4, jnp.int32),
           "weight": jnp.array([1., 1., 1., 0.])}
  state = _state(ctx, strategy)
  stored = _data(mem_x, [0, 0, 1, 1, 2, 2, 3, 3], 0)

  @jax.jit
  def step_inputs(index):
    data = stored.replace(index=index)
    begun = strategy.begin_experience(ctx, state, data, jax.random.key(1))
    out = strategy.transform_batch(ctx, begun.cl_state, batch,
                                   jax.random.key(2))
    logits = ctx.logits(begun.params, begun.model_state, out["x"], out["task"])
    penalty = strategy.penalty(ctx, begun.params, begun.cl_state, out, logits)
    task = jnp.sum(cross_entropy(logits, out) * out["weight"]) / jnp.sum(
        out["weight"])
    return begun.cl_state, out, logits, penalty, task

  cl_state, out, logits, penalty, task = step_inputs(1)
  assert cl_state.replaying
  # Current samples train through the contrastive term alone.
  assert float(task) == 0.0
  np.testing.assert_array_equal(out["aml_anchor"][:4], [1, 1, 1, 0])

  layer = jax.tree.map(np.asarray, state.params["Dense_0"])

  def features(x):
    return np.maximum(np.asarray(x, np.float64) @ layer["kernel"]
                      + layer["bias"], 0.0)

  stored_x = np.asarray(cl_state.buffer.x)
  stored_y = np.asarray(cl_state.buffer.y)
  pos = np.asarray(out["aml_positive"][:3])
  neg = np.asarray(out["aml_negative"][:3])
  y_in = np.array([0, 1, 1])
  np.testing.assert_array_equal(stored_y[pos], y_in)
  assert np.all(stored_y[neg] != y_in)
  contrastive = _avalanche_aml(features(cur_x[:3]), y_in,
                               features(stored_x[pos]), stored_y[pos],
                               features(stored_x[neg]), stored_y[neg],
                               0.2, 0.05)
  memory = out["aml_memory"][4:] > 0
  assert int(memory.sum()) == 3
  memory_ce = -log_softmax(np.asarray(logits[4:], np.float64))[
      np.arange(3), np.asarray(out["y"][4:])][memory].mean()
  assert float(penalty) == pytest.approx(memory_ce + contrastive, rel=1e-5)

  # The first experience does not replay: the plain cross-entropy alone.
  cl_state, out, logits, penalty, task = step_inputs(0)
  assert not cl_state.replaying
  assert float(penalty) == 0.0
  plain = -log_softmax(np.asarray(logits[:3], np.float64))[
      np.arange(3), [0, 1, 1]].mean()
  assert float(task) == pytest.approx(plain, rel=1e-5)


def _buffer(labels, tasks):
  # Room for two slots per sample: every sample stays.
  buffer = buffers.init(2 * len(labels), (1,), policy="class_balanced",
                        n_groups=5)
  return buffers.add(buffer, jax.random.key(0), jnp.zeros((len(labels), 1)),
                     jnp.asarray(labels), jnp.asarray(tasks))


@pytest.mark.parametrize("same_task_neg", [True, False])
def test_er_aml_draws_negative_classes_uniformly(same_task_neg):
  # Class 0: one sample; class 1: three; class 2: two; class 3: two, task 1.
  labels = [0, 1, 1, 1, 2, 2, 3, 3]
  buffer = _buffer(labels, [0, 0, 0, 0, 0, 0, 1, 1])
  draws = 20000
  y = jnp.array([0, 4])  # Class 4 is not stored: no positive.
  pos, neg, found = jax.vmap(
      lambda k: contrast_partners(buffer, k, y, jnp.zeros(2, jnp.int32),
                                  same_task_neg))(
          jax.random.split(jax.random.key(3), draws))
  stored = np.where(buffer.valid, buffer.y, -1)
  np.testing.assert_array_equal(stored[np.asarray(pos[:, 0])], 0)
  assert np.all(found[:, 0]) and not np.any(found[:, 1])
  classes = stored[np.asarray(neg[:, 0])]
  share = np.bincount(classes, minlength=4) / draws
  expected = [0, 1 / 2, 1 / 2, 0] if same_task_neg else [0, 1 / 3, 1 / 3, 1 / 3]
  np.testing.assert_allclose(share, expected, atol=0.015)
  # Within a class, every stored sample is as likely.
  drawn = np.asarray(neg[:, 0])[classes == 1]
  class_1 = np.flatnonzero(stored == 1)
  assert len(class_1) == 3
  np.testing.assert_allclose(
      np.bincount(drawn, minlength=len(stored))[class_1] / len(drawn),
      [1 / 3] * 3, atol=0.03)


def test_er_aml_penalty_reads_the_model_state_the_step_left():
  ctx = _ctx(BatchNormMLP())
  strategy = er_aml(mem_size=8, batch_size_mem=2)
  rng = np.random.default_rng(1)
  data = _data(rng.normal(size=(8, DIM)) * 3, [0, 0, 1, 1, 2, 2, 3, 3], 1)
  batch = {"x": jnp.asarray(rng.normal(size=(4, DIM)), jnp.float32),
           "y": jnp.array([0, 1, 2, 3]), "task": jnp.zeros(4, jnp.int32),
           "weight": jnp.ones(4)}
  step = jax.jit(make_train_step(ctx, strategy, optax.sgd(0.1)))
  state = strategy.begin_experience(ctx, _state(ctx, strategy), data,
                                    jax.random.key(0))
  new_state, _, loss = step(state, batch, jax.random.key(1))
  assert np.isfinite(float(loss))
  chex.assert_trees_all_equal(new_state.cl_state.model_state,
                              new_state.model_state)
  assert not np.allclose(
      new_state.model_state["batch_stats"]["BatchNorm_0"]["mean"],
      state.model_state["batch_stats"]["BatchNorm_0"]["mean"])


class _TanhNoBias(nn.Module):
  """Features tanh(x W): exactly zero for a zero input row."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    hidden = jnp.tanh(nn.Dense(5, use_bias=False)(x))
    return nn.Dense(N_CLASSES)(hidden)


def test_er_aml_zero_features_give_finite_gradients():
  # A padding row of zeros has zero features; the norm's gradient there
  # must not turn every parameter into NaN.
  ctx = _ctx(_TanhNoBias())
  strategy = er_aml(mem_size=8, batch_size_mem=2)
  rng = np.random.default_rng(1)
  data = _data(rng.normal(size=(8, DIM)), [0, 0, 1, 1, 2, 2, 3, 3], 1)
  x = np.r_[rng.normal(size=(3, DIM)), np.zeros((1, DIM))]
  batch = {"x": jnp.asarray(x, jnp.float32),
           "y": jnp.array([0, 1, 2, 0]), "task": jnp.zeros(4, jnp.int32),
           "weight": jnp.array([1., 1., 1., 0.])}
  step = jax.jit(make_train_step(ctx, strategy, optax.sgd(0.1)))
  state = strategy.begin_experience(ctx, _state(ctx, strategy), data,
                                    jax.random.key(0))
  new_state, _, loss = step(state, batch, jax.random.key(1))
  assert np.isfinite(float(loss))
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(new_state.params))


def test_er_aml_vmapped_seeds_equal_single_runs_and_beat_naive():
  bench = make_benchmark(n_experiences=2)
  model = MLP(4, hidden_size=8, drop_rate=0.0)
  alone = fit_seeds_alone(model, er_aml(mem_size=8, batch_size_mem=4), bench)
  # The first experience's classes survive only with the memory.
  assert_remembers_the_first_experience(alone[0], model, bench)


def test_er_aml_refuses_bad_arguments_and_models_without_features():
  with pytest.raises(ValueError, match=r"temp must be in \(0, inf\), got 0.0"):
    er_aml(temp=0.0)
  with pytest.raises(ValueError, match=r"base_temp must be in \(0, inf\)"):
    er_aml(base_temp=-1.0)
  with pytest.raises(ValueError, match=r"temp=1e-46 is outside float32's range"):
    er_aml(temp=1e-46)
  with pytest.raises(ValueError, match=r"temp / base_temp = 1e\+30 / 1e-30 "
                     "overflows float32"):
    er_aml(temp=1e30, base_temp=1e-30)
  with pytest.raises(TypeError, match="same_task_neg must be True or False"):
    er_aml(same_task_neg="no")
  with pytest.raises(ValueError, match=r"er_aml batch_size_mem=0 replays a "
                     r"training batch of 16 memory samples"):
    er_aml(mem_size=8, batch_size_mem=0).init(
        _ctx(TwoLayer(), batch_size=16), None, jax.random.key(0))
  assert_refuses_models_without_features(er_aml(), _ctx(TwoLayer()))


def test_er_aml_from_the_command_line(tmp_path):
  tiny_cli_metrics(tmp_path, "--strategy", "er_aml", "--temp",
                   "0.2", "--same-task-neg", "false", "--mem-size",
                   "50")  # Exits with 0.
