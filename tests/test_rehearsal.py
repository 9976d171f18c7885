"""Rehearsal and data strategies against hand-computed expectations."""

import dataclasses
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (cross_entropy_np, device_experience, log_softmax,
                      make_benchmark)

import jaxcl
from jaxcl.benchmarks import Experience, Stream
from jaxcl.models import MLP, Model
from jaxcl.strategies import (
  StrategyContext,
  buffers,
  chain,
  cumulative,
  der,
  er_ace,
  ewc,
  from_scratch,
  from_spec,
  gdumb,
  joint,
  mir,
  naive,
  replay,
)
from jaxcl.strategies.model_utils import mask_logits
from jaxcl.training import cross_entropy, experience_data, init_state


def _ctx(model, n_classes, dim, batch_size=4, optimizer=None):
  return StrategyContext(model=model, preprocess=lambda x: x,
                         loss=cross_entropy, n_classes=n_classes,
                         n_experiences=3, input_shape=(dim,),
                         batch_size=batch_size, experience_size=8,
                         optimizer=optimizer)


def _state(ctx, strategy, optimizer=None):
  optimizer = optimizer or optax.sgd(0.1)
  dim = ctx.input_shape[0]
  state = jax.jit(lambda: init_state(
      ctx, strategy, optimizer, jax.random.key(0), jnp.zeros((1, dim)),
      jnp.zeros((1,), jnp.int32)))()
  return state.replace(seen_classes=jnp.ones(ctx.n_classes, bool))


def _data(x, y, index, n_classes=4):
  return device_experience(x, y, index, len(y), n_classes)


# A model whose logits are its inputs plus a bias.
IDENTITY = Model(init=lambda key, x, task: ({"b": jnp.zeros(())}, {}),
                 apply=lambda p, s, x, task, train, key: (x + p["b"], s))


def _task_loss(batch, logits):
  """The training loop's task loss: the weighted mean per-sample loss."""
  w = batch["weight"]
  return float(jnp.sum(cross_entropy(logits, batch) * w) / jnp.sum(w))


def test_er_ace_refuses_a_training_batch_its_memory_cannot_replay():
  # batch_size_mem=0 replays a training batch's worth of samples only once
  # that many are stored: with a larger batch than the memory, never.
  strategy = er_ace(mem_size=8, batch_size_mem=0)
  with pytest.raises(ValueError, match=r"er_ace batch_size_mem=0 replays a "
                     r"training batch of 16 memory samples, more than "
                     r"mem_size=8 holds"):
    strategy.init(_ctx(IDENTITY, n_classes=4, dim=4, batch_size=16), None,
                  jax.random.key(0))
  strategy.init(_ctx(IDENTITY, n_classes=4, dim=4, batch_size=8), None,
                jax.random.key(0))


def test_er_ace_restricts_current_classes_only_while_replaying():
  ctx = _ctx(IDENTITY, n_classes=4, dim=4, batch_size=3)
  # Four memory rows against two real current ones: the memory's weights
  # are rescaled so that each part weighs its mean.
  strategy = er_ace(mem_size=4, batch_size_mem=4)
  rng = np.random.default_rng(0)
  mem_x, cur_x = rng.normal(size=(4, 4)), rng.normal(size=(3, 4))
  # Row 2 is padding: its label (2) is not "present" in the batch.
  batch = {"x": jnp.asarray(cur_x, jnp.float32), "y": jnp.array([0, 1, 2]),
           "task": jnp.zeros(3, jnp.int32), "weight": jnp.array([1., 1., 0.])}

  state = _state(ctx, strategy)

  @jax.jit
  def replayed(index):
    data = _data(mem_x, [2, 2, 3, 3], 0)
    begun = strategy.begin_experience(ctx, state, data.replace(index=index),
                                      jax.random.key(1))
    return begun.cl_state, strategy.transform_batch(
        ctx, begun.cl_state, batch, jax.random.key(2))

  first, out = replayed(0)
  assert not first.replaying
  plain = cross_entropy_np(cur_x[:2], [0, 1]).mean()
  assert _task_loss(out, out["x"]) == pytest.approx(plain, rel=1e-5)

  second, out = replayed(1)
  assert second.replaying
  expected = (cross_entropy_np(cur_x[:2], [0, 1], classes=[0, 1]).mean()
              + cross_entropy_np(mem_x, [2, 2, 3, 3]).mean()) / 2
  assert _task_loss(out, out["x"]) == pytest.approx(expected, rel=1e-5)


def _linear(w):
  """A model whose logits are ``x @ w`` (``w`` is its initial parameter)."""
  return Model(init=lambda key, x, task: ({"w": jnp.asarray(w, jnp.float32)},
                                          {}),
               apply=lambda p, s, x, task, train, key: (x @ p["w"], s))


def test_der_stores_logits_at_insertion_and_replays_them():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(3, 4))
  ctx = _ctx(_linear(w), n_classes=4, dim=3)
  strategy = der(mem_size=8, alpha=0.3, beta=0.5)
  state = _state(ctx, strategy).replace(
      seen_classes=jnp.array([True, True, False, False]))
  x = rng.normal(size=(4, 3))
  batch = {"x": jnp.asarray(x, jnp.float32), "y": jnp.array([0, 1, 0, 1]),
           "task": jnp.zeros(4, jnp.int32), "weight": jnp.array([1., 1, 1, 0])}
  updated = state.replace(params={"w": state.params["w"] + 1.0})
  logits = rng.normal(size=(12, 4))

  @jax.jit
  def step():
    cl_state = strategy.after_step(ctx, state, updated, None, batch,
                                   jax.random.key(2))
    out = strategy.transform_batch(ctx, cl_state, batch, jax.random.key(3))
    return cl_state.buffer, out, strategy.penalty(ctx, updated.params,
                                                  cl_state, out, logits)

  buf, out, got = jax.device_get(step())
  # Rows 0-2 (not the padding row) with the logits before the update.
  stored = buf.x[buf.valid]
  assert sorted(stored[:, 0].tolist()) == sorted(x[:3, 0].astype(np.float32))
  np.testing.assert_allclose(buf.extras["der_logits"][buf.valid], stored @ w,
                             rtol=1e-5)
  assert buf.extras["der_logits_mask"][buf.valid].tolist() == \
      [[True, True, False, False]] * 3

  # Two draws of 4 memory rows, each with the 3 stored samples.
  assert out["y"].shape == (12,) and out["weight"][4:].sum() == 0
  mse_w, ce_w = out["der_mse_weight"], out["der_ce_weight"]
  assert mse_w.tolist() == [0] * 4 + sorted(mse_w[4:8], reverse=True) + [0] * 4
  assert mse_w.sum() == 3 and ce_w.sum() == 3 and ce_w[:8].sum() == 0
  # alpha * mean over rows and 4 classes (the 2 seen at insertion compared)
  # + beta * mean cross-entropy of the second draw.
  mse = ((logits - out["der_logits"])[:, :2] ** 2).sum(1) / 4
  ce = cross_entropy_np(logits, out["y"])
  expected = 0.3 * (mse * mse_w).sum() / 3 + 0.5 * (ce * ce_w).sum() / 3
  assert float(got) == pytest.approx(expected, rel=1e-5)


def test_mir_replays_the_samples_whose_loss_rises_most():
  rng = np.random.default_rng(8)
  w0 = rng.normal(size=(3, 3))
  ctx = _ctx(_linear(w0), n_classes=3, dim=3)
  strategy = mir(mem_size=6, subsample=6, batch_size_mem=2, mir_lr=0.5)
  mem_x, mem_y = rng.normal(size=(6, 3)), np.array([0, 1, 2, 0, 1, 2])
  grad = rng.normal(size=(3, 3))

  @jax.jit
  def replay_grads(state, data, grads):
    state = strategy.end_experience(ctx, state, data, jax.random.key(0))
    return strategy.transform_grads(ctx, grads, state, {}, jax.random.key(1))

  out = replay_grads(_state(ctx, strategy), _data(mem_x, mem_y, 0, 3),
                     {"w": jnp.asarray(grad, jnp.float32)})

  rise = (cross_entropy_np(mem_x @ (w0 - 0.5 * grad), mem_y)
          - cross_entropy_np(mem_x @ w0, mem_y))
  top = np.argsort(rise)[-2:]
  assert np.sort(rise)[-2] - np.sort(rise)[-3] > 0.1  # a clear choice
  # ... that differs from the highest losses before or after the step.
  assert set(top) != set(np.argsort(cross_entropy_np(mem_x @ w0, mem_y))[-2:])
  probs = np.exp(log_softmax(mem_x[top] @ w0))
  replay_grad = mem_x[top].T @ (probs - np.eye(3)[mem_y[top]]) / 2
  np.testing.assert_allclose(out["w"], grad + replay_grad, rtol=1e-4,
                             atol=1e-5)


# Two tasks of two classes each, logits masked to each sample's task.
TASK_CLASSES = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], bool)


def test_der_leaves_its_unused_draw_out_of_batch_statistics():
  # A model whose state is the number of rows batch norm would average.
  def apply(params, state, x, task, train, key, batch_stats_mask=None):
    if train:
      state = {"rows": jnp.sum(batch_stats_mask, dtype=jnp.int32)}
    return x @ params["w"], state
  counting = Model(init=lambda key, x, task: (
      {"w": jnp.zeros((6, 4))}, {"rows": jnp.zeros((), jnp.int32)}),
                   apply=apply)
  bench = make_benchmark()  # 24 samples per experience: full batches of 8.
  for beta, rows in ((0.5, 8 + 8 + 8), (0.0, 8 + 8)):
    run = jaxcl.fit(counting, der(mem_size=8, beta=beta), optax.sgd(0.1),
                    bench, batch_size=8, metrics=["accuracy"])
    # The current rows, the logit draw and (DER++) the label draw.
    assert int(run.state.model_state["rows"]) == rows


def test_der_compares_only_the_logits_training_does_not_mask():
  rng = np.random.default_rng(3)
  ctx = _ctx(_linear(rng.normal(size=(3, 4))), n_classes=4,
             dim=3)._replace(task_classes=TASK_CLASSES)
  strategy = der(mem_size=8, alpha=1.0, beta=0.0)
  state = _state(ctx, strategy)
  batch = {"x": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
           "y": jnp.array([0, 1, 2, 3]), "task": jnp.array([0, 0, 1, 1]),
           "weight": jnp.ones(4)}

  @jax.jit
  def replayed_penalty():
    cl_state = strategy.after_step(ctx, state, state, None, batch,
                                   jax.random.key(0))
    out = strategy.transform_batch(ctx, cl_state, batch, jax.random.key(1))
    logits = mask_logits(ctx, ctx.logits(state.params, state.model_state,
                                         out["x"], out["task"]),
                         state.seen_classes, out["task"])
    return (cl_state.buffer, strategy.penalty(ctx, state.params, cl_state,
                                              out, logits))

  buf, penalty = jax.device_get(replayed_penalty())
  # Each stored row compares the classes of its own task only ...
  np.testing.assert_array_equal(buf.extras["der_logits_mask"][buf.valid],
                                TASK_CLASSES[buf.task[buf.valid]])
  # ... so unchanged parameters give no penalty (not the masked -1000s).
  assert abs(float(penalty)) < 1e-6
  # Without masking (mask_unseen_classes=False) every logit is trained, and
  # compared, as in Avalanche.
  early = state.replace(seen_classes=jnp.array([True, True, False, False]))
  unmasked = strategy.after_step(ctx._replace(mask_classes=False), early,
                                 early, None, batch, jax.random.key(0))
  buf = jax.device_get(unmasked.buffer)
  assert buf.valid.sum() == 4 and buf.extras["der_logits_mask"][buf.valid].all()


def test_er_ace_after_der_leaves_ders_memory_rows_unrestricted():
  rng = np.random.default_rng(5)
  ctx = _ctx(_linear(rng.normal(size=(3, 4))), n_classes=4, dim=3)
  strategy = chain(der(mem_size=8, alpha=0.0, beta=1.0, batch_size_mem=4),
                   er_ace(mem_size=8, batch_size_mem=4))
  state = _state(ctx, strategy)
  x = rng.normal(size=(4, 3))
  batch = lambda y: {"x": jnp.asarray(x, jnp.float32), "y": jnp.array(y),
                     "task": jnp.zeros(4, jnp.int32), "weight": jnp.ones(4)}
  key = jax.random.key(1)
  state = strategy.begin_experience(ctx, state, _data(x, [0, 1, 0, 1], 0), key)
  state = state.replace(cl_state=strategy.after_step(
      ctx, state, state, None, batch([0, 1, 0, 1]), key))
  state = strategy.begin_experience(ctx, state, _data(x, [2, 3, 2, 3], 1), key)
  out = jax.device_get(strategy.transform_batch(
      ctx, state.cl_state, batch([2, 3, 2, 3]), jax.random.key(2)))
  mask = out["class_mask"]
  # ER-ACE's current rows see only the classes present in the batch ...
  np.testing.assert_array_equal(mask[:4], [[0, 0, 1, 1]] * 4)
  # ... while DER's memory rows (weight 0, for DER's penalty) keep every
  # class: restricted, their old labels' logits were -1000 (CE ~ 1000).
  der_rows = out["der_ce_weight"] > 0
  assert der_rows.sum() == 4 and set(out["y"][der_rows]) <= {0, 1}
  assert mask[der_rows].all()


def test_mir_scores_memory_with_the_loops_task_masking():
  rng = np.random.default_rng(8)
  w0 = rng.normal(size=(3, 4))
  ctx = _ctx(_linear(w0), n_classes=4, dim=3)._replace(
      task_classes=TASK_CLASSES)
  strategy = mir(mem_size=6, subsample=6, batch_size_mem=2, mir_lr=0.5)
  mem_x = rng.normal(size=(6, 3))
  mem_y, mem_task = np.array([0, 1, 0, 2, 3, 2]), np.array([0, 0, 0, 1, 1, 1])
  grad = rng.normal(size=(3, 4))
  exp = Experience(x=np.asarray(mem_x, np.float32), y=mem_y, task=mem_task,
                   index=0, classes=(0, 1, 2, 3), origin="train")
  data = jax.tree.map(jnp.asarray, experience_data(exp, 6, 4))

  @jax.jit
  def replay_grads(state, data, grads):
    state = strategy.end_experience(ctx, state, data, jax.random.key(0))
    return strategy.transform_grads(ctx, grads, state, {}, jax.random.key(1))

  out = replay_grads(_state(ctx, strategy), data,
                     {"w": jnp.asarray(grad, jnp.float32)})

  def task_ce(w, rows):
    logits = np.where(TASK_CLASSES[mem_task[rows]], mem_x[rows] @ w, -np.inf)
    return -log_softmax(logits)[np.arange(len(rows)), mem_y[rows]]

  rows = np.arange(6)
  rise = task_ce(w0 - 0.5 * grad, rows) - task_ce(w0, rows)
  top = np.argsort(rise)[-2:]
  assert np.sort(rise)[-2] - np.sort(rise)[-3] > 0.05  # a clear choice
  probs = np.exp(log_softmax(np.where(TASK_CLASSES[mem_task[top]],
                                       mem_x[top] @ w0, -np.inf)))
  replay_grad = mem_x[top].T @ (probs - np.eye(4)[mem_y[top]]) / 2
  np.testing.assert_allclose(out["w"], grad + replay_grad, rtol=1e-4,
                             atol=1e-5)


@pytest.mark.parametrize("factory", [gdumb, from_scratch])
def test_model_and_optimizer_are_reinitialised(factory):
  optimizer = optax.adam(0.1)
  model = Model(
      init=lambda key, x, task: ({"w": jax.random.normal(key, (3, 4))},
                                 {"count": jnp.zeros(())}),
      apply=lambda p, s, x, task, train, key: (x @ p["w"], s))
  ctx = _ctx(model, n_classes=4, dim=3, optimizer=optimizer)
  strategy = factory()
  data = _data(np.zeros((2, 3)), [0, 1], 1)

  @jax.jit
  def run(state):
    grads = jax.tree.map(jnp.ones_like, state.params)
    _, trained_opt = optimizer.update(grads, state.opt_state, state.params)
    trained = state.replace(params=jax.tree.map(lambda p: p + 1, state.params),
                            model_state={"count": jnp.ones(())},
                            opt_state=trained_opt)
    after = strategy.begin_experience(ctx, trained, data, jax.random.key(5))
    again = strategy.begin_experience(ctx, after, data, jax.random.key(6))
    fresh, _ = model.init(state.cl_state, jnp.zeros((1, 3)),
                          jnp.zeros((1,), jnp.int32))
    return after, again, fresh, optimizer.init(fresh)

  after, again, fresh, fresh_opt = run(_state(ctx, strategy, optimizer))
  chex.assert_trees_all_equal(after.params, fresh)
  chex.assert_trees_all_equal(after.opt_state, fresh_opt)
  assert float(after.model_state["count"]) == 0.0
  # The same weights at every experience, whatever the key of the call.
  chex.assert_trees_all_equal(again.params, fresh)


def _stream(groups):
  """A stream whose samples' single feature is a unique id."""
  experiences, start = [], 0
  for i, labels in enumerate(groups):
    y = np.asarray(labels)
    experiences.append(Experience(
        x=np.arange(start, start + len(y), dtype=np.float32)[:, None], y=y,
        task=np.zeros(len(y)), index=i, classes=tuple(sorted(set(labels))),
        origin="train"))
    start += len(y)
  return Stream("train", experiences)


def test_gdumb_memory_is_greedy_class_balanced():
  stream = _stream([[0] * 10 + [1] * 2, [2] * 10, [3]])
  memories = [gdumb(mem_size=6).adapt_data(e, stream, 0) for e in stream]
  counts = [np.bincount(m.y, minlength=4).tolist() for m in memories]
  assert counts == [[4, 2, 0, 0], [2, 2, 2, 0], [1, 2, 2, 1]]
  everything = np.concatenate([e.x[:, 0] for e in stream])
  labels = np.concatenate([e.y for e in stream])
  for i, m in enumerate(memories):
    assert m.index == i and m.classes == tuple(np.unique(m.y))
    np.testing.assert_array_equal(labels[m.x[:, 0].astype(int)], m.y)
    assert set(m.x[:, 0]) <= set(everything)
  # Deterministic in the seed, whatever the order of the calls.
  other = gdumb(mem_size=6)
  late = other.adapt_data(stream[2], stream, 0)
  np.testing.assert_array_equal(np.sort(late.x[:, 0]),
                                np.sort(memories[2].x[:, 0]))
  reseeded = gdumb(mem_size=6).adapt_data(stream[0], stream, 1)
  assert set(reseeded.x[:, 0]) != set(memories[0].x[:, 0])


def test_cumulative_and_joint_data():
  stream = _stream([[0, 0, 1], [2, 3], [1, 4, 4, 4]])
  sizes = [len(cumulative().adapt_data(e, stream, 0)) for e in stream]
  assert sizes == [3, 5, 9]
  last = cumulative().adapt_data(stream[2], stream, 0)
  assert last.x[:, 0].tolist() == list(range(9)) and last.classes == (0, 1, 2,
                                                                         3, 4)
  adapted = [joint().adapt_data(e, stream, 0) for e in stream]
  assert [len(e) for e in adapted] == [9, 0, 0]
  assert adapted[0].classes == (0, 1, 2, 3, 4) and adapted[1].x.shape == (0, 1)


def test_two_data_replacing_strategies_cannot_be_chained():
  with pytest.raises(ValueError, match="adapt_data"):
    chain(gdumb(), cumulative())
  with pytest.raises(ValueError, match="adapt_data"):
    from_spec("joint+gdumb")


def _traced_once(strategy, *slots):
  """The strategy with ``slots`` wrapped to fail on a second trace."""
  return strategy._replace(**{
      slot: chex.assert_max_traces(getattr(strategy, slot), n=1)
      for slot in slots})


@pytest.fixture(scope="module")
def unequal_benchmark():
  return make_benchmark(n_classes=6, n_experiences=3,
                        sizes=[3, 30, 10, 10, 2, 9])


def _fit(strategy, benchmark, epochs=8):
  return jaxcl.fit(jaxcl.models.MLP(6, hidden_size=16, drop_rate=0.0),
                   strategy, optax.sgd(0.1), benchmark, epochs=epochs,
                   batch_size=4)


def test_experience_balanced_memory_warns_when_experiences_outnumber_slots():
  ctx = _ctx(IDENTITY, n_classes=4, dim=4)  # 3 train experiences.
  with pytest.warns(RuntimeWarning, match=r"An experience-balanced memory of "
                    r"2 slots over 3 train experiences gives experiences 2 "
                    r"to 2 no slot: from there on it stops changing"):
    replay(mem_size=2).init(ctx, None, jax.random.key(0))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    for strategy in (replay(mem_size=3), replay(mem_size=2,
                                                storage="class_balanced")):
      strategy.init(ctx, None, jax.random.key(0))


def test_replay_family_compiles_once_and_keeps_old_classes(unequal_benchmark):
  # Naive fine-tuning ends with R[2, 0] = 0 on this stream: the masked head
  # forgets the first experience entirely.
  strategy = chain(
      _traced_once(replay(mem_size=12, storage="class_balanced"),
                   "transform_batch", "end_experience"),
      _traced_once(der(mem_size=12), "penalty", "after_step"),
      _traced_once(er_ace(mem_size=12, batch_size_mem=4), "begin_experience"),
      _traced_once(mir(mem_size=12, subsample=8, batch_size_mem=4),
                   "transform_grads"),
      ewc(ewc_lambda=1.0))
  result = _fit(strategy, unequal_benchmark)
  assert result.accuracy_matrix[2, 0] >= 0.5, result.accuracy_matrix
  replay_buffer, der_state, ace_state, mir_state, _ = result.state.cl_state
  assert int(buffers.size(replay_buffer)) == 12
  # DER inserts online: it has seen every sample of every epoch.
  assert int(der_state.buffer.seen) == 8 * 64
  assert int(ace_state.buffer.seen) == int(mir_state.buffer.seen) == 64


def test_gdumb_compiles_once_and_trains_on_memory_only(unequal_benchmark):
  strategy = _traced_once(gdumb(mem_size=12), "begin_experience")
  result = _fit(strategy, unequal_benchmark)
  stream = unequal_benchmark.train_stream
  assert [len(strategy.adapt_data(e, stream, 0)) for e in stream] == [12] * 3
  # Steps = epochs x ceil(12 / 4) per experience: the memory, nothing else.
  assert int(result.state.step) == 8 * 3 * 3
  assert result.accuracy_matrix[2].mean() > 0.5


def test_seeds_trained_together_warn_when_gdumb_draws_per_seed_memories():
  bench = make_benchmark(n_experiences=2)
  model = MLP(4, hidden_size=8, drop_rate=0.0)
  with pytest.warns(UserWarning, match=r"strategy 'gdumb' draws its training "
                    r"data on the host from the seed .* share the first "
                    r"seed's \(0\) data"):
    jaxcl.fit(model, gdumb(mem_size=6), optax.sgd(0.1), bench, batch_size=4,
              seeds=[0, 1])
  # One class per experience: the same labels for every seed, other samples.
  one_class = make_benchmark(n_experiences=4, per_class=12)
  with pytest.warns(UserWarning, match="strategy 'gdumb' draws"):
    jaxcl.fit(model, gdumb(mem_size=6), optax.sgd(0.1), one_class,
              batch_size=4, seeds=[0, 1])
  # Data that does not depend on the seed (cumulative) is shared as it is.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    jaxcl.fit(model, cumulative(), optax.sgd(0.1), bench, batch_size=4,
              seeds=[0, 1])


def test_cumulative_from_scratch_and_joint_compile_once(unequal_benchmark):
  strategy = chain(_traced_once(cumulative(), "begin_experience"),
                   _traced_once(from_scratch(), "begin_experience"))
  R = _fit(strategy, unequal_benchmark, epochs=4).accuracy_matrix
  # Retrained from scratch on everything seen: no forgetting at any step.
  assert np.all(R[np.tril_indices(3)] >= 0.8), R
  result = _fit(_traced_once(joint(), "transform_batch"), unequal_benchmark,
                epochs=4)
  assert int(result.state.step) == 4 * 64 // 4
  R = result.accuracy_matrix
  assert np.all(R == R[0]) and R[0].min() >= 0.8, R


def test_factories_validate_and_register():
  with pytest.raises(ValueError, match="mem_size must be a positive integer"):
    replay(mem_size=0)
  with pytest.raises(ValueError, match="Did you mean 'class_balanced'"):
    replay(storage="class_balance")
  with pytest.raises(ValueError, match="batch_size_mem must be a positive "
                     "integer, or 0"):
    der(batch_size_mem=-1)
  with pytest.raises(ValueError, match="at most subsample=5"):
    mir(subsample=5, batch_size_mem=10)
  with pytest.raises(ValueError, match="mir_lr must be in"):
    mir(mir_lr=0.0)
  with pytest.raises(ValueError, match="alpha must be in"):
    der(alpha=-1.0)
  strategy = from_spec("replay+der", mem_size=50, batch_size_mem=5)
  assert strategy.name == "replay+der"
  assert naive().name == "naive"


@pytest.mark.parametrize("name, factory, message", [
    ("my+plus", lambda strength=1.0: naive(), "no '\\+', parentheses"),
    (" spaced ", lambda strength=1.0: naive(), "quotes or spaces"),
    ("my(paren", lambda strength=1.0: naive(), "no '\\+', parentheses"),
    # A quote opens a string in a spec: "o'neil+naive" was one term.
    ("o'neil", lambda strength=1.0: naive(), "parentheses, quotes"),
    ("2nd", lambda strength=1.0: naive(), "not starting with a digit"),
    ("replay", lambda strength=1.0: naive(), "'replay' is already registered"),
    ("kw", lambda **kwargs: naive(), "named parameters.*\\['kwargs'\\]"),
    ("sp", lambda spec=1: naive(), "named parameters.*\\['spec'\\]"),
])
def test_register_refuses_names_and_factories_specs_cannot_reach(
    name, factory, message):
  from jaxcl.strategies import REGISTRY, register
  before = dict(REGISTRY)
  with pytest.raises(ValueError, match=message):
    register(name, factory)
  assert REGISTRY == before


def test_from_spec_names_what_a_registered_factory_lacks_or_returns():
  from jaxcl.strategies import REGISTRY, register
  before = dict(REGISTRY)
  register("needs_a", lambda a: naive())
  register("not_a_strategy", lambda scale=1.0: 5)
  register("positive", lambda size=1, mem_size=1: (
      naive() if size > 0 < mem_size else _refuse(size, mem_size)))
  try:
    with pytest.raises(ValueError, match=r"strategy 'needs_a' needs \['a'\]"
                       r".*needs_a\(a=\.\.\.\)"):
      from_spec("needs_a")
    assert from_spec("needs_a(a=1)").name == "naive"
    with pytest.raises(TypeError, match="strategy 'not_a_strategy' returned "
                       "int; expected a jaxcl Strategy"):
      from_spec("not_a_strategy")
    # The bad value is the one given by name, not the spec's own.
    with pytest.raises(ValueError) as info:
      from_spec("positive(size=2)", mem_size=-1)
    assert not hasattr(info.value, "spec_term")
    with pytest.raises(ValueError) as info:
      from_spec("positive(size=-2)", mem_size=1)
    assert info.value.spec_term == "positive(size=-2)"
    # A value given by name that the spec overrides never reaches the
    # factory: the spec's own value is the bad one.
    register("takes_any_size", lambda mem_size=1: naive())
    with pytest.raises(ValueError) as info:
      from_spec("positive(mem_size=1, size=-2)+takes_any_size", mem_size=-1)
    assert info.value.spec_term == "positive(mem_size=1, size=-2)"
  finally:
    REGISTRY.clear()
    REGISTRY.update(before)


def _refuse(size, mem_size):
  raise ValueError(f"sizes must be positive, got {size}, {mem_size}.")


def test_register_override_replaces_a_strategy_on_request():
  from jaxcl.strategies import REGISTRY, register
  original = REGISTRY["naive"].factory
  register("naive", lambda: naive()._replace(name="mine"), override=True)
  try:
    assert from_spec("naive").name == "mine"
  finally:
    register("naive", original, override=True)
  assert from_spec("naive").name == "naive"


def test_a_spec_gives_chained_strategies_values_of_their_own():
  from jaxcl.strategies import REGISTRY, parse_spec, register
  before = dict(REGISTRY)
  # Two strategies sharing a hyperparameter's name, named by its value.
  register("probe_a", lambda alpha=1.0: naive()._replace(name=f"a{alpha:g}"))
  register("probe_b", lambda alpha=1.0: naive()._replace(name=f"b{alpha:g}"))
  try:
    assert from_spec("probe_a+probe_b", alpha=0.5).name == "a0.5+b0.5"
    assert from_spec("probe_a(alpha=2)+probe_b", alpha=0.5).name == "a2+b0.5"
    assert from_spec("probe_a(alpha=2) + probe_b(alpha=1e+3)").name == (
        "a2+b1000")
    assert from_spec(" probe_a ( alpha = 3 ) ").name == "a3"
    assert parse_spec("probe_a(alpha='x+y)')+probe_b()") == [
        ("probe_a", {"alpha": "x+y)"}), ("probe_b", {})]
  finally:
    REGISTRY.clear()
    REGISTRY.update(before)


@pytest.mark.parametrize("make", [cumulative, lambda: gdumb(mem_size=6)])
def test_rewritten_online_streams_are_evaluated_at_their_origins_ends(make):
  # adapt_data rebuilds the experiences; the stream stays an online one,
  # evaluated when an original experience is complete.
  bench = jaxcl.benchmarks.split_online(
      make_benchmark(n_classes=4, n_experiences=2, per_class=6), 4,
      shuffle=False)
  origins = [e.origin_experience for e in bench.train_stream]
  ends = [i for i in range(len(origins))
          if i == len(origins) - 1 or origins[i + 1] != origins[i]]
  result = jaxcl.fit(jaxcl.models.MLP(4, hidden_size=8), make(),
                     optax.sgd(0.1), bench, batch_size=4,
                     metrics=["accuracy"])
  assert len(origins) > 2 * len(ends) == 4
  assert [row["experience"] for row in result.history] == ends


def test_a_sliced_stream_fills_every_experience_group_of_the_memory():
  # train_stream[2:] keeps indices 2, 3, 4; the memory's three experience
  # groups count the experiences trained (0, 1, 2), as Avalanche's
  # ExperienceBalancedBuffer counts them.
  bench = make_benchmark(n_classes=10, n_experiences=5, per_class=12)
  sliced = dataclasses.replace(bench, train_stream=bench.train_stream[2:])
  assert [e.index for e in sliced.train_stream] == [2, 3, 4]
  result = jaxcl.fit(jaxcl.models.MLP(10, hidden_size=8, drop_rate=0.0),
                     replay(mem_size=30), optax.sgd(0.1), sliced, batch_size=8)
  memory = result.state.cl_state
  kept = np.asarray(memory.valid)
  assert kept.sum() == 30
  # Ten samples of each trained experience, each of the classes 4..9.
  np.testing.assert_array_equal(
      np.bincount(np.asarray(memory.group)[kept], minlength=3), [10, 10, 10])
  assert set(np.asarray(memory.y)[kept].tolist()) == set(range(4, 10))
