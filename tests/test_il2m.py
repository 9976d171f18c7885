"""IL2M against numpy statistics and a hand-computed rectification."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (assert_refuses_online_streams, assert_trees_close,
                      device_experience, fit_seeds_alone, hook_state,
                      make_benchmark, tiny_cli_metrics)

import jaxcl
from jaxcl.models import Model
from jaxcl.strategies import (StrategyContext, buffers, il2m, il2m_rectify,
                              replay)
from jaxcl.strategies.model_utils import MASK_VALUE
from jaxcl.training import cross_entropy

N_CLASSES, DIM, SIZE = 4, 4, 12


def _affine(w, b):
  """A model whose logits are ``x @ w + b``."""
  params = {"w": jnp.asarray(w, jnp.float32), "b": jnp.asarray(b, jnp.float32)}
  return Model(init=lambda key, x, task: (params, {}),
               apply=lambda p, s, x, task, train, key: (x @ p["w"] + p["b"],
                                                        s))


def _ctx(model, n_classes=N_CLASSES, dim=DIM, batch_size=4):
  return StrategyContext(model=model, preprocess=lambda x: x,
                         loss=cross_entropy, n_classes=n_classes,
                         n_experiences=3, input_shape=(dim,),
                         batch_size=batch_size, experience_size=SIZE)


def _run_experience(ctx, strategy, state, data, seen, seed):
  state = state.replace(seen_classes=jnp.asarray(seen))
  state = strategy.begin_experience(ctx, state, data, jax.random.key(seed))
  return jax.jit(lambda s: strategy.end_experience(
      ctx, s, data, jax.random.key(seed + 1)))(state)


def _class_means(scores, y, n_classes):
  return np.array([scores[y == c, c].mean() if np.any(y == c) else 0.0
                   for c in range(n_classes)])


def _class_counts(y, n_classes):
  return np.bincount(np.asarray(y), minlength=n_classes)


def test_il2m_statistics_after_each_experience_match_numpy():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(DIM, N_CLASSES))
  # Class 3's logit tops every row: only masking keeps it out of the first
  # experience's confidence.
  b = np.array([0.5, -0.2, 0.0, 20.0])
  ctx = _ctx(_affine(w, b))
  strategy = il2m(mem_size=6)
  state = hook_state(ctx, strategy)
  x0 = rng.normal(size=(8, DIM))
  y0 = np.array([0, 1, 0, 1, 0, 0, 1, 1])
  state = _run_experience(ctx, strategy, state,
                          device_experience(x0, y0, 0, SIZE, N_CLASSES),
                          [True, True, False, False], 0)
  cl = state.cl_state
  s0 = np.where([True, True, False, False], x0 @ w + b, MASK_VALUE)
  np.testing.assert_allclose(cl.init_mean, _class_means(s0, y0, 4)[:4]
                             * [1, 1, 0, 0], rtol=1e-5)
  np.testing.assert_array_equal(cl.current_mean, np.zeros(4))
  np.testing.assert_array_equal(cl.init_count, [4, 4, 0, 0])
  np.testing.assert_array_equal(cl.current_count, np.zeros(4))
  assert int(cl.confidence_count) == 8
  conf0 = s0.max(1).mean()
  assert float(cl.confidence) == pytest.approx(conf0, rel=1e-5)
  np.testing.assert_allclose(cl.class_confidence, [conf0, conf0, 0, 0],
                             rtol=1e-5)
  np.testing.assert_array_equal(cl.learnt_in, [0, 0, -1, -1])
  np.testing.assert_array_equal(cl.new_classes, [True, True, False, False])
  np.testing.assert_array_equal(cl.seen, [True, True, False, False])

  # The statistics read the memory as it was before taking experience 1.
  memory = buffers.as_batch(cl.memory)
  real = np.asarray(memory["weight"]) > 0
  assert real.sum() == 6
  xm, ym = np.asarray(memory["x"])[real], np.asarray(memory["y"])[real]
  x1 = rng.normal(size=(10, DIM))
  y1 = np.array([2, 3, 3, 2, 2, 3, 2, 2, 3, 3])
  state = _run_experience(ctx, strategy, state,
                          device_experience(x1, y1, 1, SIZE, N_CLASSES),
                          [True] * 4, 2)
  cl = state.cl_state
  s1, sm = x1 @ w + b, xm @ w + b
  expected_init = _class_means(s0, y0, 4)
  expected_init[2:] = _class_means(s1, y1, 4)[2:]
  np.testing.assert_allclose(cl.init_mean, expected_init, rtol=1e-5)
  np.testing.assert_allclose(cl.current_mean,
                             _class_means(sm, ym, 4) * [1, 1, 0, 0],
                             rtol=1e-5)
  np.testing.assert_array_equal(cl.init_count, [4, 4, 5, 5])
  np.testing.assert_array_equal(cl.current_count,
                                _class_counts(ym, 4) * [1, 1, 0, 0])
  assert int(cl.confidence_count) == 10
  conf1 = s1.max(1).mean()
  assert float(cl.confidence) == pytest.approx(conf1, rel=1e-5)
  np.testing.assert_allclose(cl.class_confidence,
                             [conf0, conf0, conf1, conf1], rtol=1e-5)
  np.testing.assert_array_equal(cl.learnt_in, [0, 0, 1, 1])
  np.testing.assert_array_equal(cl.new_classes, [False, False, True, True])
  np.testing.assert_array_equal(cl.trained, [True] * 4)
  # The memory took the experience afterwards (3 slots per experience).
  np.testing.assert_array_equal(buffers.group_counts(cl.memory)[:2], [3, 3])


def test_il2m_statistics_of_a_recurring_class_and_a_class_without_rows():
  rng = np.random.default_rng(2)
  w = rng.normal(size=(DIM, N_CLASSES))
  ctx = _ctx(_affine(w, np.zeros(N_CLASSES)))
  strategy = il2m(mem_size=4)
  x0 = rng.normal(size=(8, DIM))
  state = _run_experience(ctx, strategy, hook_state(ctx, strategy),
                          device_experience(x0, [0, 1] * 4, 0, SIZE,
                                            N_CLASSES),
                          [True, True, False, False], 0)
  memory = buffers.as_batch(state.cl_state.memory)
  real = np.asarray(memory["weight"]) > 0
  xm, ym = np.asarray(memory["x"])[real], np.asarray(memory["y"])[real]
  # Class 1 comes again with new class 2; class 3 belongs to the experience
  # (its classes_mask) but has no row, as a class that the hooks' subset of
  # a streamed experience missed.
  x1 = rng.normal(size=(8, DIM))
  y1 = np.array([1, 2, 1, 2, 2, 1, 2, 2])
  data = device_experience(x1, y1, 1, SIZE, N_CLASSES)
  data = data.replace(classes_mask=data.classes_mask.at[3].set(True))
  cl = _run_experience(ctx, strategy, state, data, [True] * 4, 2).cl_state
  s1, sm = x1 @ w, xm @ w
  # Class 1's current mean reads the experience's rows and the memory's.
  both = _class_means(np.concatenate([s1, sm]), np.concatenate([y1, ym]), 4)
  np.testing.assert_allclose(cl.current_mean[:2], both[:2], rtol=1e-5)
  np.testing.assert_array_equal(
      cl.current_count, [np.sum(ym == 0), 3 + np.sum(ym == 1), 0, 0])
  np.testing.assert_array_equal(cl.new_classes, [False, False, True, True])
  np.testing.assert_array_equal(cl.init_count, [4, 4, 5, 0])
  np.testing.assert_array_equal(cl.learnt_in, [0, 0, 1, 1])
  np.testing.assert_allclose(cl.init_mean[2],
                             _class_means(s1, y1, 4)[2], rtol=1e-5)
  # The confidence reads class 2's rows alone.
  assert float(cl.confidence) == pytest.approx(s1[y1 == 2].max(1).mean(),
                                               rel=1e-5)
  assert int(cl.confidence_count) == 5


def _hand_state():
  """Five classes: 0 and 1 learnt in experience 0 (confidence 2), 2 in
  experience 1 (confidence 4), 3 in experience 2, the last (confidence 3);
  class 1 has no memory sample, class 4 was never seen."""
  ctx = _ctx(_affine(np.eye(5), np.zeros(5)), n_classes=5, dim=5)
  cl = hook_state(ctx, il2m(mem_size=10)).cl_state.replace(
      seen=jnp.array([True, True, True, True, False]),
      trained=jnp.array([True, True, True, True, False]),
      new_classes=jnp.array([False, False, False, True, False]),
      init_mean=jnp.array([2.0, 3.0, 4.0, 5.0, 0.0]),
      init_count=jnp.array([6, 6, 5, 7, 0]),
      current_mean=jnp.array([4.0, 0.0, 2.0, 0.0, 0.0]),
      current_count=jnp.array([2, 0, 3, 0, 0]),
      learnt_in=jnp.array([0, 0, 1, 2, -1]),
      class_confidence=jnp.array([2.0, 2.0, 4.0, 3.0, 0.0]),
      confidence=jnp.float32(3.0), confidence_count=jnp.int32(7))
  return ctx, cl


def test_il2m_rectifies_past_classes_of_rows_predicted_new():
  ctx, cl = _hand_state()
  x = np.array([
      [1.0, 2.0, 3.0, 6.0, 0.0],    # Top-1 class 3 (new): rectified.
      [9.0, 2.0, 3.0, 6.0, 0.0],    # Top-1 class 0 (past): kept.
      [1.0, -2.0, -3.0, 6.0, 50.0],  # Class 4 is masked: top-1 is 3.
      [1.0, 2.0, 7.0, 6.0, 0.0],    # Top-1 class 2 (past): kept.
  ], np.float32)
  # Class 0: (2 / 4)·(3 / 2) = 0.75; class 2: (4 / 2)·(3 / 4) = 1.5;
  # class 1 has no current mean; class 3 is new, class 4 masked.
  expected = np.where([True] * 4 + [False], x, MASK_VALUE)
  expected[[0, 2]] *= [0.75, 1.0, 1.5, 1.0, 1.0]
  strategy = il2m(mem_size=10)
  out = strategy.predict(ctx, {"w": jnp.eye(5), "b": jnp.zeros(5)}, {}, cl,
                         jnp.asarray(x), jnp.zeros(4, jnp.int32))
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  # A negative logit moves down (raw logits, as Avalanche and FACIL).
  assert float(out[2, 2]) == pytest.approx(-4.5)
  np.testing.assert_allclose(il2m_rectify(jnp.asarray(expected[[1]]), cl),
                             expected[[1]])


def test_il2m_rectifies_only_classes_with_statistics():
  _, cl = _hand_state()
  x = jnp.array([[1.0, 2.0, 3.0, 6.0, 0.0]])  # Top-1 class 3 (new).
  # Class 2's factor is 1.5 (the hand case); class 0 has no learning-time
  # statistics (the samples of its experience were not read), whatever
  # init_mean holds: it keeps its score.
  for mean in (0.0, 2.0):
    out = il2m_rectify(x, cl.replace(init_mean=cl.init_mean.at[0].set(mean),
                                     init_count=cl.init_count.at[0].set(0)))
    np.testing.assert_allclose(out, x * jnp.array([1.0, 1.0, 1.5, 1.0, 1.0]),
                               rtol=1e-6)
  # Nor does class 2 without current rows (the count decides, not the mean).
  out = il2m_rectify(x, cl.replace(current_count=cl.current_count.at[2].set(0)))
  np.testing.assert_allclose(out, x * jnp.array([0.75, 1.0, 1.0, 1.0, 1.0]),
                             rtol=1e-6)
  # The last experience's new classes had no rows, so no confidence:
  # nothing is rectified.
  out = il2m_rectify(x, cl.replace(confidence=jnp.float32(0.0),
                                   confidence_count=jnp.int32(0)))
  np.testing.assert_array_equal(out, x)


def test_il2m_rectifies_nothing_after_the_first_experience():
  rng = np.random.default_rng(1)
  w = rng.normal(size=(DIM, N_CLASSES))
  ctx = _ctx(_affine(w, np.zeros(N_CLASSES)))
  strategy = il2m(mem_size=6)
  state = _run_experience(
      ctx, strategy, hook_state(ctx, strategy),
      device_experience(rng.normal(size=(8, DIM)), [0, 1] * 4, 0, SIZE,
                        N_CLASSES), [True, True, False, False], 0)
  x = rng.normal(size=(16, DIM)).astype(np.float32)
  out = strategy.predict(ctx, state.params, state.model_state,
                         state.cl_state, jnp.asarray(x),
                         jnp.zeros(16, jnp.int32))
  np.testing.assert_allclose(
      out, np.where([True, True, False, False], x @ w, MASK_VALUE),
      rtol=1e-5, atol=1e-6)


def test_il2m_replays_batch_size_mem_memory_rows():
  ctx = _ctx(_affine(np.eye(DIM), np.zeros(DIM)), batch_size=3)
  strategy = il2m(mem_size=6, batch_size_mem=2)
  state = _run_experience(
      ctx, strategy, hook_state(ctx, strategy),
      device_experience(np.ones((8, DIM)), [0, 1] * 4, 0, SIZE, N_CLASSES),
      [True, True, False, False], 0)
  batch = {"x": jnp.zeros((3, DIM)), "y": jnp.full(3, 2),
           "task": jnp.zeros(3, jnp.int32), "weight": jnp.ones(3)}
  out = strategy.transform_batch(ctx, state.cl_state, batch,
                                 jax.random.key(5))
  np.testing.assert_array_equal(out["weight"], np.ones(5))
  assert set(np.asarray(out["y"])[3:].tolist()) <= {0, 1}


def test_il2m_vmapped_seeds_equal_single_runs():
  bench = make_benchmark(n_experiences=2, per_class=20)
  model = jaxcl.models.MLP(4, hidden_size=8, drop_rate=0.0)
  for alone in fit_seeds_alone(model, il2m(mem_size=20), bench):
    cl = alone.state.cl_state
    np.testing.assert_array_equal(cl.learnt_in, [0, 0, 1, 1])
    np.testing.assert_array_equal(cl.new_classes, [False, False, True, True])
    assert np.all(np.asarray(cl.current_mean)[:2] != 0)


def test_il2m_refuses_bad_arguments_and_task_labels():
  with pytest.raises(ValueError, match="mem_size must be a positive "
                     "integer, got 0"):
    il2m(mem_size=0)
  with pytest.raises(ValueError, match=r"batch_size_mem=30 exceeds "
                     r"mem_size=20"):
    il2m(mem_size=20, batch_size_mem=30)
  # A stream with task labels (one head per task), refused before compiling.
  ctx = _ctx(_affine(np.eye(DIM), np.zeros(DIM)))._replace(
      task_classes=np.array([[True, True, False, False],
                             [False, False, True, True]]))
  with pytest.raises(ValueError, match="il2m rectifies the scores of one "
                     "class-incremental head"):
    il2m(mem_size=20).init(ctx, {}, jax.random.key(0))


def test_il2m_equals_replay_without_new_classes():
  # New instances: the later experiences bring no class seen for the first
  # time, so there is nothing to rectify and IL2M evaluates as replay.
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(N_CLASSES), 12)
  x = (rng.normal(0, 1.0, (N_CLASSES, 6))[y]
       + rng.normal(0, 1.0, (len(y), 6))).astype(np.float32)
  bench = jaxcl.benchmarks.new_instances((x, y), (x, y), 3, seed=0)
  model = jaxcl.models.MLP(N_CLASSES, hidden_size=8, drop_rate=0.0)
  runs = [jaxcl.fit(model, s, optax.sgd(0.1), bench, seed=0, epochs=1,
                    batch_size=4) for s in (il2m(mem_size=12),
                                            replay(mem_size=12))]
  cl = runs[0].state.cl_state
  np.testing.assert_array_equal(cl.learnt_in, [0] * N_CLASSES)
  assert not np.any(cl.new_classes) and int(cl.confidence_count) == 0
  assert_trees_close(runs[0].state.params, runs[1].state.params, atol=0)
  np.testing.assert_array_equal(runs[0].accuracy_matrix,
                                runs[1].accuracy_matrix)
  assert ([h["stream_loss"] for h in runs[0].history]
          == [h["stream_loss"] for h in runs[1].history])


def test_il2m_after_cwr_star_reads_the_consolidated_model():
  # CWR* rewrites the output layer at the end of each experience: chained
  # after it, IL2M's statistics read the model that is evaluated.
  bench = make_benchmark()
  model = jaxcl.models.MLP(4, hidden_size=8, drop_rate=0.0)
  run = jaxcl.fit(model, jaxcl.strategies.chain(
      jaxcl.strategies.cwr_star(), il2m(mem_size=8)), optax.sgd(0.1), bench,
                  seed=0, epochs=1, batch_size=4)
  last = bench.train_stream[-1]
  logits, _ = jaxcl.models.as_model(model).apply(
      run.state.params, run.state.model_state, jnp.asarray(last.x),
      jnp.zeros(len(last.y), jnp.int32), False, None)
  # Every class is seen by then: nothing is masked.
  np.testing.assert_allclose(run.state.cl_state[1].init_mean[2:],
                             _class_means(np.asarray(logits), last.y, 4)[2:],
                             rtol=1e-5)


def test_il2m_refuses_online_streams_before_compiling(no_compiling):
  assert_refuses_online_streams(
      il2m(mem_size=8), r"after the last mini-experience of an experience no "
      r"class is new and nothing would be rectified")


def test_il2m_from_the_command_line(tmp_path):
  # Replay's training, another evaluation: the same training loss and new
  # classes' scores, the old classes' true-class scores rectified.
  flags = ("--mem-size", "200", "--seed", "0")
  ours = tiny_cli_metrics(tmp_path / "il2m", "--strategy", "il2m", *flags)
  plain = tiny_cli_metrics(tmp_path / "replay", "--strategy", "replay",
                           *flags)
  assert ours["train_loss"] == plain["train_loss"]
  assert ours["mean_score_new"] == plain["mean_score_new"]
  assert ours["mean_score_old"] != plain["mean_score_old"]
  assert ours["stream_accuracy"] > 0.5
