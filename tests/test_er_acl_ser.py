"""ER-ACL and SER: losses against numpy, task tracking, memories, CLI."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (TwoLayer, check_class_balanced_memory, cross_entropy_np,
                      fit_seeds_alone, hook_context, hook_state,
                      make_benchmark, normal_batch, normal_experience,
                      tiny_cli_metrics, two_layer_numpy)

import jaxcl
from jaxcl.strategies import er_acl, replay, ser
from jaxcl.strategies.model_utils import MASK_VALUE

_MEMORY_LABELS = [0, 0, 1, 1]


def _begin(strategy, ctx, state, labels, index, seed=0):
  return jax.jit(lambda s, d: strategy.begin_experience(
      ctx, s, d, jax.random.key(7)))(
          state, normal_experience(labels, index, seed=seed))


def _assert_plain_cross_entropy(strategy, ctx, state):
  """No memory row weighs in the batch and the penalty is 0: the loss is
  the loop's plain cross-entropy."""
  batch = normal_batch([0, 1, 1], [1.0, 1.0, 1.0])
  out = strategy.transform_batch(ctx, state.cl_state, batch, jax.random.key(3))
  logits = ctx.logits(state.params, state.model_state, out["x"], out["task"])
  assert float(jnp.sum(out["weight"])) == 3.0
  assert float(strategy.penalty(ctx, state.params, state.cl_state, out,
                                logits)) == 0.0


def test_er_acl_tracks_tasks_by_their_classes():
  ctx = hook_context(TwoLayer(), batch_size=2)
  strategy = er_acl(mem_size=8, batch_size_mem=2)
  state = hook_state(ctx, strategy)
  expected = [  # labels, new classes, old classes, replaying
      ([0, 0, 1], [0, 1], [], False),  # The first task.
      ([1, 0], [0, 1], [], False),  # The same task goes on.
      ([2, 3, 3], [2, 3], [0, 1], True),  # A new task.
      ([3, 3], [2, 3], [0, 1], True),  # Its classes again.
  ]
  for index, (labels, new, old, replaying) in enumerate(expected):
    state = _begin(strategy, ctx, state, labels, index, seed=index)
    cl = state.cl_state
    assert np.flatnonzero(cl.new_classes).tolist() == new
    assert np.flatnonzero(cl.old_classes).tolist() == old
    assert bool(cl.replaying) == replaying


def test_er_acl_loss_is_the_task_restricted_plus_the_memory_cross_entropy():
  ctx = hook_context(TwoLayer(), batch_size=3)
  strategy = er_acl(mem_size=4, batch_size_mem=4)
  state = _begin(strategy, ctx, hook_state(ctx, strategy), _MEMORY_LABELS, 0)
  assert not state.cl_state.replaying
  state = _begin(strategy, ctx, state, [2, 3, 2], 1, seed=1)
  assert state.cl_state.replaying
  batch = normal_batch([2, 3, 3], [1.0, 1.0, 0.0])

  def loss(params):
    out = strategy.transform_batch(ctx, state.cl_state, batch,
                                   jax.random.key(3))
    logits = ctx.logits(params, state.model_state, out["x"], out["task"])
    weight = out["weight"]
    task = jnp.sum(ctx.loss(logits, out) * weight) / jnp.sum(weight)
    return task + strategy.penalty(ctx, params, state.cl_state, out, logits), out

  value, out = loss(state.params)
  memory = np.asarray(out["x"][3:])
  # The memory holds the current experience too (stored before training).
  assert sorted(np.asarray(out["y"][3:]).tolist()) == [0, 1, 2, 3]
  _, cur_logits = two_layer_numpy(state.params, batch["x"][:2])
  _, mem_logits = two_layer_numpy(state.params, memory)
  # The current rows over the task's classes {2, 3}, the memory over all:
  # the sum of the two means (ER-ACE halves it).
  current = cross_entropy_np(cur_logits, [2, 3], classes=[2, 3])
  expected = current.mean() + cross_entropy_np(
      mem_logits, np.asarray(out["y"][3:])).mean()
  assert float(value) == pytest.approx(expected, rel=1e-5)


def test_er_acl_is_plain_cross_entropy_before_it_replays():
  ctx = hook_context(TwoLayer(), batch_size=3)
  strategy = er_acl(mem_size=4, batch_size_mem=4)
  state = _begin(strategy, ctx, hook_state(ctx, strategy), [0, 1, 1], 0)
  _assert_plain_cross_entropy(strategy, ctx, state)


def _ser_after_first_experience(alpha=0.3, beta=0.7):
  """SER's state after one experience of classes 0 and 1 and the beginning
  of the next, the parameters then moved."""
  ctx = hook_context(TwoLayer(), batch_size=3)
  strategy = ser(mem_size=4, batch_size_mem=4, alpha=alpha, beta=beta)
  state = hook_state(ctx, strategy).replace(
      seen_classes=jnp.array([True, True, False, False]))
  first = normal_experience(_MEMORY_LABELS, 0)
  stored = state.params
  state = jax.jit(lambda s: strategy.end_experience(
      ctx, s, first, jax.random.key(1)))(state)
  moved = jax.tree.map(lambda p: p * 1.5 + 0.1, state.params)
  state = state.replace(params=moved,
                        seen_classes=jnp.ones(4, bool))
  state = jax.jit(lambda s: strategy.begin_experience(
      ctx, s, normal_experience([2, 3], 1), jax.random.key(2)))(state)
  return ctx, strategy, state, first, stored


def test_ser_stores_the_trained_models_logits_with_the_classes_seen():
  ctx, strategy, state, first, stored = _ser_after_first_experience()
  buffer = state.cl_state.buffer
  rows = np.flatnonzero(np.asarray(buffer.valid))
  assert len(rows) == 4
  _, logits = two_layer_numpy(stored, buffer.x[rows])
  np.testing.assert_allclose(buffer.extras["ser_logits"][rows], logits,
                             rtol=1e-5, atol=1e-6)
  assert buffer.extras["ser_logits_mask"][rows].tolist() == (
      [[True, True, False, False]] * 4)
  # The teacher is the model as the second experience begins.
  np.testing.assert_array_equal(
      jax.tree.leaves(state.cl_state.teacher_params)[0],
      jax.tree.leaves(state.params)[0])


def test_ser_loss_is_cross_entropy_plus_backward_and_forward_consistency():
  ctx, strategy, state, first, stored = _ser_after_first_experience()
  assert state.cl_state.replaying
  batch = normal_batch([2, 3, 3], [1.0, 1.0, 0.0])
  out = strategy.transform_batch(ctx, state.cl_state, batch, jax.random.key(3))
  trained = jax.tree.map(lambda p: p - 0.2, state.params)
  logits = ctx.logits(trained, state.model_state, out["x"], out["task"])
  got = float(strategy.penalty(ctx, trained, state.cl_state, out, logits))

  x = np.asarray(out["x"])
  _, student = two_layer_numpy(trained, x)
  _, teacher = two_layer_numpy(state.params, x[:2])
  memory = slice(3, 7)
  assert np.asarray(out["ser_mse_weight"][memory]).tolist() == [1.0] * 4
  backward = (((student[memory] - np.asarray(out["ser_logits"][memory]))
               [:, :2]) ** 2).sum(1).mean() / 4
  forward = ((teacher - student[:2]) ** 2).sum(1).mean() / 4
  assert got == pytest.approx(0.3 * backward + 0.7 * forward, rel=1e-5)
  # The memory rows count in the cross-entropy as current rows do.
  assert np.asarray(out["weight"]).tolist() == [1, 1, 0] + [1] * 4


def test_ser_compares_only_the_classes_the_loop_shows():
  ctx, strategy, state, _, _ = _ser_after_first_experience(alpha=0.0,
                                                           beta=1.0)
  batch = normal_batch([2, 2, 2], [1.0, 1.0, 1.0])
  out = strategy.transform_batch(ctx, state.cl_state, batch, jax.random.key(3))
  # The loop masks class 3 (not seen yet): it must not enter the MSE.
  trained = jax.tree.map(lambda p: p + 0.3, state.params)
  logits = ctx.logits(trained, state.model_state, out["x"],
                      out["task"]).at[:, 3].set(MASK_VALUE)
  got = float(strategy.penalty(ctx, trained, state.cl_state, out, logits))
  _, teacher = two_layer_numpy(state.params, np.asarray(out["x"][:3]))
  expected = ((teacher - np.asarray(logits[:3]))[:, :3] ** 2).sum(1).mean() / 4
  assert got == pytest.approx(expected, rel=1e-5)


def test_ser_adds_nothing_before_the_memory_fills():
  ctx = hook_context(TwoLayer(), batch_size=3)
  strategy = ser(mem_size=4, batch_size_mem=4)
  # Two samples stored, fewer than a draw of 4.
  state = jax.jit(lambda s: strategy.end_experience(
      ctx, s, normal_experience([0, 1], 0), jax.random.key(1)))(
          hook_state(ctx, strategy))
  state = _begin(strategy, ctx, state, [2, 3], 1)
  assert int(jaxcl.strategies.buffers.size(state.cl_state.buffer)) == 2
  assert not state.cl_state.replaying
  _assert_plain_cross_entropy(strategy, ctx, state)


def test_ser_memory_is_class_balanced():
  check_class_balanced_memory(hook_context(TwoLayer()), ser(mem_size=6))


@pytest.mark.parametrize("strategy", [er_acl(mem_size=8, batch_size_mem=4),
                                      ser(mem_size=8, batch_size_mem=4)],
                         ids=["er_acl", "ser"])
def test_vmapped_seeds_equal_single_runs(strategy):
  bench = make_benchmark(n_classes=4, n_experiences=2)
  model = jaxcl.models.MLP(4, hidden_size=8, drop_rate=0.0)
  alone = fit_seeds_alone(model, strategy, bench)
  assert alone[0].accuracy_matrix[-1, 0] > 0.5  # Replay keeps exp 0.


@pytest.mark.parametrize("name", ["er_acl", "ser"])
def test_from_the_command_line(tmp_path, name):
  metrics = tiny_cli_metrics(tmp_path, "--strategy", name, "--mem-size",
                             "50")
  assert metrics["stream_accuracy"] > 0.5


@pytest.mark.parametrize("build, message", [
    (lambda: er_acl(mem_size=0), "mem_size must be a positive integer"),
    (lambda: er_acl(mem_size=4, batch_size_mem=5), "batch_size_mem"),
    (lambda: ser(alpha=-1.0), r"alpha must be in \[0, inf\), got -1.0"),
    (lambda: ser(beta=-0.5), r"beta must be in \[0, inf\), got -0.5"),
])
def test_refuses_bad_arguments(build, message):
  with pytest.raises(ValueError, match=message):
    build()


def test_er_acl_after_replay_restricts_only_its_current_rows():
  # replay's memory rows are of an earlier task: ER-ACL leaves their classes
  # (a loss near 1000 otherwise) and does not add their loss a second time.
  ctx = hook_context(TwoLayer(), batch_size=3)
  first, second = replay(mem_size=4, batch_size_mem=2), er_acl(
      mem_size=4, batch_size_mem=2)
  strategy = jaxcl.strategies.chain(first, second)
  state = hook_state(ctx, strategy)
  for index, labels in enumerate([[0, 1, 0, 1], [2, 3, 2]]):
    state = jax.jit(lambda s, d: strategy.begin_experience(
        ctx, s, d, jax.random.key(7)))(state, normal_experience(
            labels, index, seed=index))
    if index == 0:
      state = jax.jit(lambda s, d: strategy.end_experience(
          ctx, s, d, jax.random.key(8)))(state, normal_experience(
              labels, index, seed=index))
  batch = normal_batch([2, 3, 3], [1.0, 1.0, 1.0])
  out = strategy.transform_batch(ctx, state.cl_state, batch, jax.random.key(3))
  logits = ctx.logits(state.params, state.model_state, out["x"], out["task"])
  losses = np.asarray(ctx.loss(logits, out))
  weight = np.asarray(out["weight"])
  replayed = slice(3, 5)
  assert np.all(np.asarray(out["y"][replayed]) < 2) and np.all(
      weight[replayed] == 1)
  assert np.all(losses[replayed] < 20)  # Not restricted to {2, 3}.
  own = np.asarray(out["asymmetric_weight"])
  assert np.all(own[replayed] == 0) and np.all(own[:3] == 1)
  expected = (losses * own).sum() / weight.sum()
  assert float(strategy.penalty(ctx, state.params, state.cl_state, out,
                                logits)) == pytest.approx(expected, rel=1e-5)
