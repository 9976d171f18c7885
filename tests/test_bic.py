"""BiC against hand-computed hold-outs and numpy transcriptions."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (assert_refuses_online_streams, device_experience,
                      fit_seeds_alone, log_softmax, make_benchmark,
                      tiny_cli_metrics)

import jaxcl
from jaxcl.models import Model
from jaxcl.strategies import StrategyContext, bias_correct, bic, buffers
from jaxcl.strategies.bias_correction import _stage_2
from jaxcl.training import cross_entropy, experience_data, init_state, streaming

N_CLASSES, DIM, SIZE = 4, 4, 12


def _linear(w):
  """A model whose logits are ``x @ w``."""
  return Model(init=lambda key, x, task: ({"w": jnp.asarray(w, jnp.float32)},
                                          {}),
               apply=lambda p, s, x, task, train, key: (x @ p["w"], s))


def _ctx(model, batch_size=4):
  return StrategyContext(model=model, preprocess=lambda x: x,
                         loss=cross_entropy, n_classes=N_CLASSES,
                         n_experiences=2, input_shape=(DIM,),
                         batch_size=batch_size, experience_size=SIZE)


def _data(labels, index, seed=0):
  x = np.random.default_rng(seed).normal(size=(len(labels), DIM))
  return device_experience(x, labels, index, SIZE, N_CLASSES)


def _state(ctx, strategy, seen):
  state = init_state(ctx, strategy, optax.sgd(0.1), jax.random.key(0),
                     jnp.zeros((1, DIM)), jnp.zeros((1,), jnp.int32))
  return state.replace(seen_classes=jnp.asarray(seen))


def test_bic_holds_out_the_first_quota_of_each_class():
  ctx = _ctx(_linear(np.zeros((DIM, N_CLASSES))))
  # val_size = int(0.25 * 20) = 5: 3 for class 0 (the remainder to the
  # lowest id) and 2 for class 1.
  strategy = bic(mem_size=20, val_percentage=0.25, stage_2_epochs=0)
  labels = [1, 0, 0, 1, 0, 1, 0, 0, 1, 1]
  state = _state(ctx, strategy, [True, True, False, False])
  state = jax.jit(lambda s, d: strategy.begin_experience(
      ctx, s, d, jax.random.key(1)))(state, _data(labels, 0))
  held = np.asarray(state.cl_state.held_out)
  np.testing.assert_array_equal(np.flatnonzero(held), [0, 1, 2, 3, 4])
  np.testing.assert_array_equal(
      buffers.group_counts(state.cl_state.validation)[:2], [3, 2])

  # Two new classes: quotas 2, 1, 1, 1; class 0 keeps 2 of its 3.
  state = state.replace(seen_classes=jnp.ones(N_CLASSES, bool))
  state = jax.jit(lambda s, d: strategy.begin_experience(
      ctx, s, d, jax.random.key(2)))(state, _data([3, 2, 2, 3, 2], 1))
  np.testing.assert_array_equal(np.flatnonzero(state.cl_state.held_out),
                                [0, 1])
  np.testing.assert_array_equal(
      buffers.group_counts(state.cl_state.validation), [2, 1, 1, 1])


def test_bic_batches_leave_held_out_rows_out_and_replay_the_memory():
  ctx = _ctx(_linear(np.zeros((DIM, N_CLASSES))), batch_size=3)
  strategy = bic(mem_size=20, batch_size_mem=2, val_percentage=0.25)
  state = _state(ctx, strategy, [True, True, False, False])
  data = _data([0, 1, 0, 1, 0, 1, 0, 1], 0)
  state = strategy.begin_experience(ctx, state, data, jax.random.key(1))
  state = strategy.end_experience(ctx, state, data, jax.random.key(2))
  # Rows 0-4 are held out: never stored, never trained on.
  memory = state.cl_state.memory
  assert int(buffers.size(memory)) == 3
  stored = np.asarray(memory.x)[np.asarray(memory.valid)]
  for row in stored:
    assert np.any(np.all(np.isclose(np.asarray(data.x)[5:8], row), axis=1))
  batch = {"x": data.x[jnp.array([4, 5, 6])], "y": data.y[jnp.array([4, 5, 6])],
           "task": jnp.zeros(3, jnp.int32), "weight": jnp.ones(3),
           "index": jnp.array([4, 5, 6])}
  out = strategy.transform_batch(ctx, state.cl_state, batch, jax.random.key(3))
  np.testing.assert_array_equal(out["weight"], [0, 1, 1, 1, 1])
  with pytest.raises(ValueError, match="bic needs each batch's 'index'"):
    del batch["index"]
    strategy.transform_batch(ctx, state.cl_state, batch, jax.random.key(3))


@pytest.mark.parametrize("lamb", [-1.0, 0.7])
def test_bic_loss_distils_the_corrected_teacher_on_old_classes(lamb):
  rng = np.random.default_rng(0)
  teacher_w, student_w = rng.normal(size=(2, DIM, N_CLASSES))
  ctx = _ctx(_linear(student_w))
  strategy = bic(mem_size=20, temperature=3.0, lamb=lamb, stage_2_epochs=0)
  state = _state(ctx, strategy, [True] * 4)
  old = np.array([True, True, True, False])  # Classes 0-2 came before.
  cl = state.cl_state.replace(
      teacher_params={"w": jnp.asarray(teacher_w, jnp.float32)},
      has_teacher=jnp.ones((), bool), trained_classes=jnp.asarray(old),
      alpha=jnp.float32(0.8), beta=jnp.float32(-0.3),
      corrected=jnp.array([False, False, True, False]))
  state = state.replace(cl_state=cl)
  state = strategy.begin_experience(ctx, state, _data([3, 3, 3], 1),
                                    jax.random.key(0))
  cl = state.cl_state
  x = rng.normal(size=(5, DIM)).astype(np.float32)
  y = np.array([3, 0, 3, 1, 2])
  weight = np.array([1, 1, 1, 1, 0], np.float32)  # The last row is padding.
  batch = {"x": jnp.asarray(x), "y": jnp.asarray(y),
           "task": jnp.zeros(5, jnp.int32), "weight": jnp.asarray(weight)}
  logits = jnp.asarray(x @ student_w, jnp.float32)
  penalty = float(strategy.penalty(ctx, None, cl, batch, logits))

  real = weight > 0
  s = (x @ student_w)[real]
  t = (x @ teacher_w)[real]
  t[:, 2] = 0.8 * t[:, 2] - 0.3
  ce = -log_softmax(s)[np.arange(4), y[real]].mean()
  log_p = log_softmax(t[:, old] / 3.0)
  log_q = log_softmax(s[:, old] / 3.0)
  kd = -(np.exp(log_p) * log_q).sum(1).mean()
  if lamb < 0:
    weight_kd = 3 / 4  # Three old classes of four.
    expected = (1 - weight_kd) * ce + weight_kd * kd
  else:
    expected = ce + lamb * kd
  assert ce + penalty == pytest.approx(expected, rel=1e-5)


def _avalanche_stage_2(logits, labels, classes, epochs, lr0, batches=None):
  """Avalanche's bias_correction_step in numpy: ``batches(epoch)`` lists
  each epoch's batches of row indices (default: all rows in one)."""
  alpha, beta, v = 1.0, 0.0, np.zeros(2)
  for epoch in range(epochs):
    lr = lr0 * 0.1 ** sum(epoch >= m for m in (50, 100, 150))
    for rows in (batches(epoch) if batches else [np.arange(len(labels))]):
      z = np.where(classes, alpha * logits[rows] + beta, logits[rows])
      p = np.exp(log_softmax(z))
      d = (p - np.eye(logits.shape[1])[labels[rows]]) / len(rows)
      grad = np.array([np.sum(d[:, classes] * logits[rows][:, classes]),
                       np.sum(d[:, classes]) + 0.1 * beta])
      v = 0.9 * v + grad
      alpha, beta = alpha - lr * v[0], beta - lr * v[1]
  return alpha, beta


def test_bic_stage_2_means_the_short_last_batch_over_its_samples():
  # Six slots, five held-out samples (slot 3 is empty), batches of four:
  # each epoch is a batch of four and a batch of one, as a DataLoader's.
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(6, N_CLASSES)).astype(np.float32)
  labels = np.array([0, 2, 3, 1, 2, 3])
  weight = np.array([1, 1, 1, 0, 1, 1], np.float32)
  classes = np.array([False, False, True, True])
  ctx = _ctx(_linear(np.zeros((DIM, N_CLASSES))), batch_size=4)
  cl = bic(stage_2_lr=0.5).init(ctx, {"w": jnp.zeros((DIM, N_CLASSES))},
                                jax.random.key(0))
  key = jax.random.key(7)
  alpha, beta = _stage_2(ctx, cl, jnp.asarray(logits), jnp.asarray(labels),
                         jnp.asarray(weight), jnp.asarray(classes), 3, key)

  def batches(epoch):  # The same shuffled order as the strategy's.
    rank = np.where(weight > 0, np.asarray(jax.random.uniform(
        jax.random.split(key, 3)[epoch], (6,))), 2.0)
    order = np.argsort(rank, kind="stable")[:5]
    return [order[:4], order[4:]]

  expected = _avalanche_stage_2(logits.astype(np.float64), labels, classes,
                                3, 0.5, batches)
  np.testing.assert_allclose([float(alpha), float(beta)], expected,
                             rtol=1e-4, atol=1e-6)


def test_bic_takes_no_step_on_batches_it_held_out_entirely():
  # Validation room for 10 samples per class, 6 per class in the stream:
  # everything is held out, the memory stays empty, no step is taken (with
  # weight decay, a step on nothing would still move the weights).
  bench = make_benchmark(n_classes=2, n_experiences=1, per_class=6)
  model = jaxcl.models.MLP(2, hidden_size=8, drop_rate=0.0)
  result = jaxcl.fit(model, bic(mem_size=40, val_percentage=0.5),
                     optax.adamw(0.1, weight_decay=0.5), bench, epochs=2,
                     batch_size=4)
  assert int(result.state.step) == 0
  assert int(buffers.size(result.state.cl_state.memory)) == 0
  # A custom loop that turns the guard off keeps it for BiC.
  ctx = jaxcl.training.make_context(
      jaxcl.models.as_model(model), bench, optax.sgd(0.1), batch_size=4)
  parts = jaxcl.training.loop.make_experience_parts(
      ctx, bic(mem_size=40, val_percentage=0.5), optax.sgd(0.1),
      skip_empty_steps=False)
  state = jaxcl.training.init_state(
      ctx, bic(mem_size=40, val_percentage=0.5), optax.sgd(0.1),
      jax.random.key(0), jnp.zeros((1, 6)), jnp.zeros((1,), jnp.int32))
  data = jax.tree.map(jnp.asarray, experience_data(
      bench.train_stream[0], ctx.experience_size, 2))
  state, _, _ = parts.begin(state, data)
  batch = {"x": data.x[:4], "y": data.y[:4], "task": data.task[:4],
           "weight": jnp.ones(4), "index": jnp.arange(4)}
  carry = (state, jaxcl.training.TrainMetrics.empty(), jnp.int32(-1),
           jnp.int32(0), None)
  (state, *_), _ = parts.step(carry, batch, jax.random.key(1), None)
  assert int(state.step) == 0
  np.testing.assert_array_equal(
      buffers.group_counts(result.state.cl_state.validation)[:2], [6, 6])


def test_bic_corrects_only_classes_it_trained_on():
  ctx = _ctx(_linear(np.zeros((DIM, N_CLASSES))))
  # Quota 3 per class after the second experience: class 3's two samples
  # are all held out, class 2 keeps training samples.
  strategy = bic(mem_size=12, val_percentage=1.0, stage_2_epochs=1)
  state = _state(ctx, strategy, [True, True, False, False])
  first = _data([0, 1] * 6, 0)
  state = strategy.end_experience(
      ctx, strategy.begin_experience(ctx, state, first, jax.random.key(0)),
      first, jax.random.key(1))
  state = state.replace(seen_classes=jnp.ones(N_CLASSES, bool))
  second = _data([2, 3, 2, 3, 2, 2, 2, 2], 1)
  state = strategy.begin_experience(ctx, state, second, jax.random.key(2))
  state = strategy.end_experience(ctx, state, second, jax.random.key(3))
  np.testing.assert_array_equal(state.cl_state.corrected,
                                [False, False, True, False])


def test_bic_stage_2_fits_alpha_and_beta_as_avalanche():
  rng = np.random.default_rng(1)
  w = rng.normal(size=(DIM, N_CLASSES))
  ctx = _ctx(_linear(w), batch_size=8)  # One batch holds the whole set.
  strategy = bic(mem_size=16, val_percentage=0.5, stage_2_epochs=160,
                 stage_2_lr=0.05)
  state = _state(ctx, strategy, [True, True, False, False])
  first = _data([0, 1] * 6, 0, seed=1)
  state = strategy.begin_experience(ctx, state, first, jax.random.key(0))
  state = strategy.end_experience(ctx, state, first, jax.random.key(1))
  assert not bool(np.any(state.cl_state.corrected))  # None after the first.
  assert float(state.cl_state.alpha) == 1.0

  state = state.replace(seen_classes=jnp.ones(N_CLASSES, bool))
  second = _data([2, 3] * 6, 1, seed=2)
  state = strategy.begin_experience(ctx, state, second, jax.random.key(2))
  state = jax.jit(lambda s: strategy.end_experience(
      ctx, s, second, jax.random.key(3)))(state)
  cl = state.cl_state
  val = buffers.as_batch(cl.validation)
  real = np.asarray(val["weight"]) > 0
  assert real.sum() == 8
  logits = np.asarray(val["x"], np.float64)[real] @ w
  classes = np.array([False, False, True, True])
  alpha, beta = _avalanche_stage_2(logits, np.asarray(val["y"])[real],
                                   classes, 160, 0.05)
  np.testing.assert_array_equal(cl.corrected, classes)
  assert float(cl.alpha) == pytest.approx(alpha, rel=1e-4)
  assert float(cl.beta) == pytest.approx(beta, rel=1e-4, abs=1e-5)
  assert abs(beta) > 1e-3  # The fit moved.
  x = jnp.asarray(rng.normal(size=(3, DIM)), jnp.float32)
  np.testing.assert_allclose(
      strategy.predict(ctx, {"w": jnp.asarray(w, jnp.float32)}, {}, cl, x,
                       jnp.zeros(3, jnp.int32)),
      bias_correct(x @ w, alpha, beta, classes), rtol=1e-4, atol=1e-5)


def test_bic_vmapped_seeds_equal_single_runs_and_correct_the_bias():
  bench = make_benchmark(n_experiences=2, per_class=20)
  model = jaxcl.models.MLP(4, hidden_size=8, drop_rate=0.0)
  strategy = bic(mem_size=20, val_percentage=0.4, stage_2_epochs=20)
  for alone in fit_seeds_alone(model, strategy, bench):
    cl = alone.state.cl_state
    np.testing.assert_array_equal(cl.corrected, [False, False, True, True])
    assert float(cl.alpha) != 1.0


def test_bic_refuses_bad_arguments_task_labels_and_streaming():
  with pytest.raises(ValueError, match=r"val_percentage=0.001 of "
                     r"mem_size=200 holds no validation sample"):
    bic(mem_size=200, val_percentage=0.001)
  with pytest.raises(ValueError, match=r"lamb must be -1 \(old / all "
                     r"classes\) or >= 0, got -0.5"):
    bic(lamb=-0.5)
  with pytest.raises(ValueError, match=r"stage_2_lr must be in \(0, inf\)"):
    bic(stage_2_lr=0.0)
  with pytest.raises(ValueError, match=r"stage_2_lr=1e\+39 is outside "
                     r"float32's range"):
    bic(stage_2_lr=1e39)
  with pytest.raises(ValueError, match=r"temperature=1e-40 is outside "
                     r"float32's range"):
    bic(temperature=1e-40)
  with pytest.raises(ValueError, match=r"lamb must be in \[-1, 3\.4"):
    bic(lamb=1e39)
  with pytest.raises(ValueError, match=r"batch_size_mem=30 exceeds "
                     r"mem_size=20"):
    bic(mem_size=20, batch_size_mem=30)
  bench = make_benchmark(n_experiences=2, return_task_id=True)
  model = jaxcl.models.MLP(4, hidden_size=8, drop_rate=0.0)
  with pytest.raises(ValueError, match="bic corrects the bias of one "
                     "class-incremental head"):
    jaxcl.fit(model, bic(mem_size=20), optax.sgd(0.1), bench)
  bench = make_benchmark(n_experiences=2, per_class=40)
  sample = streaming.sample_nbytes(bench.train_stream[0])
  with pytest.raises(ValueError, match="cannot run on experiences streamed "
                     "from the host"):
    jaxcl.fit(model, bic(mem_size=20), optax.sgd(0.1), bench, batch_size=4,
              device_memory_budget_mb=24 * sample / 2**20)


def test_bic_from_the_command_line(tmp_path):
  tiny_cli_metrics(tmp_path, "--strategy", "bic", "--mem-size",
                   "200", "--stage-2-epochs", "5")  # Exits with 0.


def test_bic_refuses_online_streams_before_compiling(no_compiling):
  assert_refuses_online_streams(
      bic(mem_size=20), r"a mini-experience's few samples would mostly or "
      r"all go to validation, leaving little or nothing to train on or to "
      r"store")
