"""Feature replay against a direct transcription of Avalanche's criterion."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (TwoLayer, assert_refuses_models_without_features,
                      assert_remembers_the_first_experience, assert_trees_close,
                      cross_entropy_np, device_experience, fit_seeds_alone,
                      hook_context, make_benchmark, tiny_cli_metrics)

from jaxcl.models import MLP, MTMLP
from jaxcl.strategies import feature_replay
from jaxcl.training import cross_entropy, init_state

N_CLASSES, DIM = 4, 3


def _ctx(module=None, batch_size=4, **kwargs):
  return hook_context(module or TwoLayer(), n_classes=N_CLASSES, dim=DIM,
                      batch_size=batch_size, **kwargs)


def _ce(logits, y, classes=None):
  return cross_entropy_np(logits, y, classes).mean()


def _two_experiences(criterion_mask):
  """Stores experience 0 (classes 0, 1), perturbs the parameters, begins
  experience 1 (classes 2, 3); returns what one step of it sees."""
  ctx = _ctx()
  strategy = feature_replay(mem_size=4, batch_size_mem=4,
                            criterion_mask=criterion_mask)
  rng = np.random.default_rng(0)
  mem_x = rng.normal(size=(4, DIM))
  cur_x = rng.normal(size=(4, DIM))
  state = init_state(ctx, strategy, optax.sgd(0.1), jax.random.key(0),
                     jnp.zeros((1, DIM)), jnp.zeros((1,), jnp.int32))
  state = state.replace(seen_classes=jnp.ones(N_CLASSES, bool))
  first = device_experience(mem_x, [0, 0, 1, 1], 0, 8, N_CLASSES)
  second = device_experience(cur_x, [2, 2, 3, 3], 1, 8, N_CLASSES)
  # Row 3 is padding (weight 0).
  batch = {"x": jnp.asarray(cur_x, jnp.float32), "y": jnp.array([2, 3, 3, 2]),
           "task": jnp.zeros(4, jnp.int32),
           "weight": jnp.array([1., 1., 1., 0.])}

  @jax.jit
  def run(state):
    begun = strategy.begin_experience(ctx, state, first, jax.random.key(1))
    stored = strategy.end_experience(ctx, begun, first, jax.random.key(2))
    # Training goes on: stored features keep the parameters they came from.
    moved = stored.replace(params=jax.tree.map(
        lambda p: p + 0.3 * jnp.sin(jnp.arange(p.size).reshape(p.shape)),
        stored.params))
    now = strategy.begin_experience(ctx, moved, second, jax.random.key(3))
    out = strategy.transform_batch(ctx, now.cl_state, batch,
                                   jax.random.key(4))

    def loss(params):
      logits = ctx.logits(params, now.model_state, out["x"], out["task"],
                          train=True)
      task = jnp.sum(cross_entropy(logits, out) * out["weight"]) / jnp.sum(
          out["weight"])
      return task, strategy.penalty(ctx, params, now.cl_state, out, logits)

    task, penalty = loss(now.params)
    grads = jax.grad(lambda p: sum(loss(p)))(now.params)
    return begun, stored, now, task, penalty, grads

  return ctx, strategy, mem_x, cur_x, batch, state, run(state)


@pytest.mark.parametrize("criterion_mask", ["seen", "new"])
def test_feature_replay_loss_is_pr_ace(criterion_mask):
  ctx, _, mem_x, cur_x, batch, state, out = _two_experiences(criterion_mask)
  begun, stored, now, task, penalty, grads = out
  assert not bool(begun.cl_state.replaying) and bool(now.cl_state.replaying)
  assert float(now.cl_state.current_weight) == 0.5

  def features(params, x):
    layer = jax.tree.map(np.asarray, params["Dense_0"])
    return np.maximum(np.asarray(x, np.float64) @ layer["kernel"]
                      + layer["bias"], 0.0)

  def head(params, h):
    layer = jax.tree.map(np.asarray, params["Dense_1"])
    return h @ layer["kernel"] + layer["bias"]

  # The memory holds the first experience's features under the parameters
  # that experience ended with, with their labels.
  buffer = now.cl_state.buffer
  assert int(buffer.valid.sum()) == 4
  h_mem = features(state.params, mem_x)
  order = np.argsort(np.asarray(buffer.y) * 10 + np.asarray(buffer.x)[:, 0])
  expected = np.argsort(np.array([0, 0, 1, 1]) * 10 + h_mem[:, 0])
  np.testing.assert_allclose(np.asarray(buffer.x)[order], h_mem[expected],
                             rtol=1e-5, atol=1e-6)

  params = now.params
  y, real = np.array([2, 3, 3]), slice(0, 3)
  h_cur = features(params, cur_x[real])
  masked = _ce(head(params, h_cur), y,
               [2, 3] if criterion_mask == "new" else None)
  replayed = _ce(head(params, h_mem), np.array([0, 0, 1, 1]))
  current = _ce(head(params, h_cur), y)
  expected_loss = 0.5 * masked + 0.5 * (0.5 * replayed + 0.5 * current)
  assert float(task + penalty) == pytest.approx(expected_loss, rel=1e-5)

  # The replayed terms train the output layer alone: the hidden layer's
  # gradient is half that of the masked cross-entropy.
  def masked_ce(params):
    logits = ctx.logits(params, now.model_state, batch["x"], batch["task"])
    if criterion_mask == "new":
      logits = jnp.where(jnp.isin(jnp.arange(N_CLASSES), jnp.array([2, 3])),
                         logits, -1e9)
    return jnp.sum(cross_entropy(logits, batch) * batch["weight"]) / 3.0

  assert_trees_close(grads["Dense_0"],
                     jax.tree.map(lambda g: 0.5 * g,
                                  jax.grad(masked_ce)(params)["Dense_0"]),
                     atol=1e-6)
  assert np.abs(np.asarray(grads["Dense_1"]["kernel"])).max() > 0


def test_feature_replay_first_experience_trains_on_the_masked_loss_alone():
  ctx, strategy, _, cur_x, batch, state, _ = _two_experiences("new")
  first = device_experience(cur_x, [2, 2, 3, 3], 0, 8, N_CLASSES)
  begun = strategy.begin_experience(ctx, state, first, jax.random.key(1))
  out = strategy.transform_batch(ctx, begun.cl_state, batch, jax.random.key(2))
  logits = ctx.logits(begun.params, begun.model_state, out["x"], out["task"])
  assert float(strategy.penalty(ctx, begun.params, begun.cl_state, out,
                                logits)) == 0.0
  task = jnp.sum(cross_entropy(logits, out) * out["weight"]) / 3.0
  assert float(task) == pytest.approx(
      _ce(logits[:3], np.array([2, 3, 3]), [2, 3]), rel=1e-5)


def test_feature_replay_draws_anew_each_step():
  ctx, _, mem_x, cur_x, batch, state, _ = _two_experiences("seen")
  strategy = feature_replay(mem_size=8, batch_size_mem=2)
  state = init_state(ctx, strategy, optax.sgd(0.1), jax.random.key(0),
                     jnp.zeros((1, DIM)), jnp.zeros((1,), jnp.int32))
  x = np.concatenate([mem_x, cur_x])
  data = device_experience(x, [0, 0, 1, 1, 2, 2, 3, 3], 0, 8, N_CLASSES)
  state = strategy.end_experience(ctx, state, data, jax.random.key(1))
  state = strategy.begin_experience(
      ctx, state, data.replace(index=1), jax.random.key(2))
  logits = ctx.logits(state.params, state.model_state, batch["x"],
                      batch["task"])

  @jax.jit
  def penalty(cl):
    return strategy.penalty(ctx, state.params, cl, batch, logits)

  values, cl = [], state.cl_state
  for step in range(8):
    values.append(float(penalty(cl)))
    assert float(penalty(cl)) == values[-1]  # A step's draw is fixed.
    cl = strategy.after_step(ctx, state, state.replace(cl_state=cl), None,
                             batch, None)
    assert int(cl.step) == step + 1
  # Two of eight stored features per step: the draws differ.
  assert len(set(values)) > 3


@pytest.mark.parametrize("criterion_mask, loop_masks", [
    ("new", True), ("seen", True), ("seen", False)])
def test_feature_replay_restricts_only_the_current_samples(criterion_mask,
                                                           loop_masks):
  ctx = _ctx()._replace(mask_classes=loop_masks)
  strategy = feature_replay(mem_size=4, batch_size_mem=4,
                            criterion_mask=criterion_mask)
  cl = strategy.init(ctx, TwoLayer().init(jax.random.key(0),
                                          jnp.zeros((1, DIM)))["params"],
                     jax.random.key(0))
  cl = cl.replace(seen=jnp.array([True, True, True, False]),
                  current=jnp.array([False, True, True, False]))
  # Rows 4 and 5 are a memory that replay, before it in a chain, appended;
  # row 3 is padding.
  batch = {"x": jnp.zeros((6, DIM)), "y": jnp.array([1, 2, 2, 0, 0, 3]),
           "task": jnp.zeros(6, jnp.int32),
           "weight": jnp.array([1., 1., 1., 0., 1., 1.])}
  mask = np.asarray(strategy.transform_batch(ctx, cl, batch,
                                             jax.random.key(1))["class_mask"])
  allowed = np.asarray(cl.current if criterion_mask == "new" else cl.seen)
  np.testing.assert_array_equal(mask[:3], np.tile(allowed, (3, 1)))
  assert mask[3:].all()


def test_feature_replay_adds_plain_cross_entropy_whatever_the_task_loss():
  ctx, strategy, _, _, batch, state, out = _two_experiences("new")
  now = out[2]
  out_batch = strategy.transform_batch(ctx, now.cl_state, batch,
                                       jax.random.key(4))
  logits = ctx.logits(now.params, now.model_state, batch["x"], batch["task"])

  def penalty_and_task(loss):
    custom = ctx._replace(loss=loss)
    task = jnp.sum(loss(logits, out_batch) * out_batch["weight"]) / 3.0
    return strategy.penalty(custom, now.params, now.cl_state, out_batch,
                            logits), task

  # A task loss that reads other keys of the batch, scaled by 2: only the
  # half of it that the penalty takes back changes.
  doubled = lambda z, b: 2.0 * cross_entropy(z, b) + 0.0 * b["task"]
  plain_penalty, plain_task = penalty_and_task(cross_entropy)
  doubled_penalty, doubled_task = penalty_and_task(doubled)
  assert float(doubled_penalty - plain_penalty) == pytest.approx(
      -0.5 * float(doubled_task - plain_task), rel=1e-5)


class _PooledHead(nn.Module):
  """Its output layer runs on [batch, 2, 5] and the logits average over 2."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    hidden = nn.relu(nn.Dense(10)(x)).reshape(x.shape[0], 2, 5)
    return nn.Dense(N_CLASSES)(hidden).mean(1)


def test_feature_replay_vmapped_seeds_equal_single_runs_and_beat_naive():
  bench = make_benchmark(n_experiences=2)
  model = MLP(4, hidden_size=8, drop_rate=0.0)
  alone = fit_seeds_alone(
      model, feature_replay(mem_size=8, batch_size_mem=4), bench)
  # The first experience's classes survive only through the replayed
  # features.
  assert_remembers_the_first_experience(alone[0], model, bench)


def test_feature_replay_refuses_bad_arguments_and_unsuited_models():
  with pytest.raises(ValueError, match="Unknown feature_replay criterion_mask "
                     "'old'; expected one of new, seen"):
    feature_replay(criterion_mask="old")
  with pytest.raises(ValueError, match="batch_size_mem=20 exceeds "
                     "mem_size=10"):
    feature_replay(mem_size=10, batch_size_mem=20)
  with pytest.raises(ValueError, match=r"feature_replay batch_size_mem=0 "
                     r"replays a training batch of 16 memory samples"):
    feature_replay(mem_size=8, batch_size_mem=0).init(
        _ctx(batch_size=16), None, jax.random.key(0))
  tasks = _ctx(task_classes=jnp.ones((2, N_CLASSES), bool))
  with pytest.raises(ValueError, match="stream with task labels"):
    feature_replay().init(tasks, None, jax.random.key(0))
  heads = MTMLP(N_CLASSES, n_tasks=2, hidden_size=4)
  ctx = _ctx(heads)
  params = ctx.model.init(jax.random.key(0), jnp.zeros((1, DIM)),
                          jnp.zeros((1,), jnp.int32))[0]
  with pytest.raises(ValueError, match="got a jaxcl.models."
                     "MultiHeadClassifier"):
    feature_replay(mem_size=20).init(ctx, params, jax.random.key(0))
  pooled = _ctx(_PooledHead())
  params = pooled.model.init(jax.random.key(0), jnp.zeros((1, DIM)),
                             jnp.zeros((1,), jnp.int32))[0]
  with pytest.raises(ValueError, match=r"got outputs of shape \(1, 2, 4\) "
                     r"for logits of shape \(1, 4\): expected nothing to "
                     "follow the last Dense"):
    feature_replay().init(pooled, params, jax.random.key(0))
  assert_refuses_models_without_features(feature_replay(), _ctx())


def test_feature_replay_from_the_command_line(tmp_path):
  # Exits with 0 (asserted inside).
  tiny_cli_metrics(tmp_path, "--strategy", "feature_replay",
                   "--criterion-mask", "seen", "--mem-size", "50")
