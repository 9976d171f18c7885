"""The training loop: evaluation against numpy, one compile, seeds, NaN guard."""

import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_benchmark

import jaxcl
from jaxcl import _hosts
from jaxcl.benchmarks import Experience
from jaxcl.models import Model
from jaxcl.strategies import Strategy, StrategyContext, chain, naive
from jaxcl.strategies.model_utils import MASK_VALUE, visible_classes
from jaxcl.training import (cross_entropy, experience_data, init_state,
                            make_evaluate, make_train_experience,
                            make_train_step, smoothed_cross_entropy,
                            stack_experiences)

# The module, for its private helpers (``jaxcl.training.fit`` is the function).
fit_module = importlib.import_module("jaxcl.training.fit")

# A "model" whose logits are its inputs: evaluation can be checked by hand.
IDENTITY = Model(init=lambda key, x, task: ({"b": jnp.zeros(())}, {}),
                 apply=lambda p, s, x, task, train, key: (x + p["b"], s))


def _ctx(n_classes):
  return StrategyContext(model=IDENTITY, preprocess=lambda x: x,
                         loss=cross_entropy, n_classes=n_classes,
                         n_experiences=2, input_shape=(n_classes,),
                         batch_size=4, experience_size=8)


def test_evaluate_matches_numpy_on_unequal_experiences():
  rng = np.random.default_rng(0)
  n_classes = 6
  exps = []
  for i, n in enumerate([7, 3]):
    exps.append(Experience(x=rng.normal(size=(n, n_classes)).astype(np.float32),
                           y=rng.integers(0, n_classes, n), task=np.zeros(n),
                           index=i, classes=tuple(range(n_classes)),
                           origin="test"))
  ctx = _ctx(n_classes)
  state = init_state(ctx, naive(), optax.sgd(0.1), jax.random.key(0),
                     jnp.zeros((1, n_classes)), jnp.zeros((1,), jnp.int32))
  state = state.replace(seen_classes=jnp.ones(n_classes, bool))
  evaluate = jax.jit(make_evaluate(ctx, naive(), eval_batch_size=2))
  stream = stack_experiences(exps, n_classes)
  counts = jax.device_get(evaluate(state, stream))
  # Labels of a narrower integer type (tfds's uint8) count the same.
  chex.assert_trees_all_equal(jax.device_get(evaluate(
      state, stream.replace(y=stream.y.astype(jnp.uint8)))), counts)
  confusion = np.zeros((n_classes, n_classes), int)
  for j, e in enumerate(exps):
    pred = e.x.argmax(1)
    assert counts.correct[j] == np.sum(pred == e.y)
    assert counts.count[j] == len(e)
    top5 = np.argsort(-e.x, 1)[:, :5]
    assert counts.correct_topk[j] == np.sum((top5 == e.y[:, None]).any(1))
    logp = e.x - np.log(np.exp(e.x).sum(1, keepdims=True))
    np.testing.assert_allclose(counts.loss_sum[j],
                               -logp[np.arange(len(e)), e.y].sum(), rtol=1e-5)
    np.add.at(confusion, (e.y, pred), 1)
  np.testing.assert_array_equal(counts.confusion, confusion)


def _small_experience(ctx, n):
  rng = np.random.default_rng(n)
  return experience_data(Experience(
      x=rng.normal(size=(n, ctx.n_classes)).astype(np.float32),
      y=rng.integers(0, ctx.n_classes, n), task=np.zeros(n), index=1,
      classes=tuple(range(ctx.n_classes)), origin="train"),
      ctx.experience_size, ctx.n_classes)


def test_custom_loop_takes_no_step_on_padding_by_default():
  # An experience of 3 samples padded to 8 rows: batches of 4 give one step
  # of padding alone, which would move Adam's weights and count a step.
  ctx = _ctx(3)
  optimizer = optax.adam(0.1)
  state = init_state(ctx, naive(), optimizer, jax.random.key(0),
                     jnp.zeros((1, 3)), jnp.zeros((1,), jnp.int32))
  data = _small_experience(ctx, 3)
  trained = {}
  for skip in (None, True, False):
    kwargs = {} if skip is None else {"skip_empty_steps": skip}
    train = jax.jit(make_train_experience(ctx, naive(), optimizer, epochs=3,
                                          **kwargs))
    trained[skip], metrics = train(state, data)
    if skip is not False:
      assert int(trained[skip].step) == int(metrics["steps_trained"]) == 3
  assert int(trained[False].step) == 3 + 3  # a padding step per epoch
  chex.assert_trees_all_equal(trained[None], trained[True])
  # Labels of a narrower integer type train the same, guard or not.
  narrow = data.replace(y=data.y.astype(jnp.uint8))
  for skip in (True, False):
    train = jax.jit(make_train_experience(ctx, naive(), optimizer, epochs=3,
                                          skip_empty_steps=skip))
    chex.assert_trees_all_equal(train(state, narrow)[0], trained[skip])


def test_custom_loop_pieces_refuse_bad_arguments_before_compiling():
  ctx = _ctx(3)
  with pytest.raises(ValueError, match=r"mask_classes=False contradicts "
                     r"ctx.mask_classes=True, which strategies' hooks follow"):
    make_train_experience(ctx, naive(), optax.sgd(0.1), epochs=1,
                          mask_classes=False)
  with pytest.raises(ValueError, match=r"mask_classes=True contradicts"):
    make_evaluate(ctx._replace(mask_classes=False), naive(),
                  eval_batch_size=2, mask_classes=True)
  with pytest.raises(ValueError, match=r"Unknown optimizer_reset 'State'.*"
                     r"Did you mean 'state'"):
    make_train_experience(ctx, naive(), optax.sgd(0.1), epochs=1,
                          optimizer_reset="State")
  with pytest.raises(ValueError, match="epochs must be a positive integer"):
    make_train_experience(ctx, naive(), optax.sgd(0.1), epochs=0)
  for name in ("eval_batch_size", "top_k"):
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
      make_evaluate(ctx, naive(), **{"eval_batch_size": 2, name: 0})
  train = make_train_experience(ctx, naive(), optax.sgd(0.1), epochs=1)
  state = init_state(ctx, naive(), optax.sgd(0.1), jax.random.key(0),
                     jnp.zeros((1, 3)), jnp.zeros((1,), jnp.int32))
  data = _small_experience(ctx._replace(experience_size=12), 5)
  with pytest.raises(ValueError, match=r"data holds 12 rows; expected "
                     r"ctx.experience_size=8"):
    jax.jit(train)(state, data)


def test_unseen_classes_are_masked_in_evaluation():
  n_classes = 4
  x = np.array([[0, 0, 0, 5.0], [3.0, 1, 0, 0]], np.float32)
  exp = Experience(x=x, y=[3, 0], task=[0, 0], index=0, classes=(0, 3),
                   origin="test")
  ctx = _ctx(n_classes)
  state = init_state(ctx, naive(), optax.sgd(0.1), jax.random.key(0),
                     jnp.zeros((1, n_classes)), jnp.zeros((1,), jnp.int32))
  state = state.replace(seen_classes=jnp.array([True, True, False, False]))
  counts = make_evaluate(ctx, naive(), eval_batch_size=8)(
      state, stack_experiences([exp], n_classes))
  # Class 3 is masked: the first sample falls back to the best seen class.
  assert int(counts.correct[0]) == 1
  assert int(counts.confusion[3, 0]) == 1
  # Top-3 holds both seen classes and a tied masked one (class 2, the
  # lowest index); the label 3 being masked, it is not a hit either.
  assert int(counts.correct_topk[0]) == 1


def test_top_k_never_counts_masked_labels_when_few_classes_are_seen():
  n_classes = 6
  rng = np.random.default_rng(1)
  x = rng.normal(size=(40, n_classes)).astype(np.float32)
  y = rng.integers(0, n_classes, 40)
  exp = Experience(x=x, y=y, task=np.zeros(40), index=0,
                   classes=tuple(np.unique(y)), origin="test")
  ctx = _ctx(n_classes)
  state = init_state(ctx, naive(), optax.sgd(0.1), jax.random.key(0),
                     jnp.zeros((1, n_classes)), jnp.zeros((1,), jnp.int32))
  seen = np.array([False, False, True, False, True, False])
  counts = make_evaluate(ctx, naive(), eval_batch_size=16, top_k=5)(
      state.replace(seen_classes=jnp.asarray(seen)),
      stack_experiences([exp], n_classes))
  # Both seen classes are always in the top 5: the hits are exactly the
  # samples of seen classes, never those of masked ones tied in the top 5.
  assert int(counts.correct_topk[0]) == int(seen[y].sum())
  assert int(counts.correct[0]) == int(
      (np.where(seen, x, -np.inf).argmax(1) == y).sum())


def test_nothing_seen_yet_predicts_as_the_model_at_initialisation():
  n_classes = 4
  rng = np.random.default_rng(2)
  x = rng.normal(size=(30, n_classes)).astype(np.float32)
  y = rng.integers(0, n_classes, 30)
  task = np.repeat([0, 1], 15)
  exp = Experience(x=x, y=y, task=task, index=0, classes=tuple(np.unique(y)),
                   origin="test")
  task_classes = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], bool)
  ctx = _ctx(n_classes)._replace(task_classes=task_classes)
  state = init_state(ctx, naive(), optax.sgd(0.1), jax.random.key(0),
                     jnp.zeros((1, n_classes)), jnp.zeros((1,), jnp.int32))
  evaluate = make_evaluate(ctx, naive(), eval_batch_size=8)
  data = stack_experiences([exp], n_classes)
  # Nothing seen: every sample is predicted within its task's classes, by
  # the model's own logits (not by a tie between masked ones).
  counts = evaluate(state, data)
  pred = np.where(task_classes[task], x, -np.inf).argmax(1)
  assert int(counts.correct[0]) == int((pred == y).sum())
  # Task 0 trained: its samples see the seen classes of their task; task 1's
  # samples, whose classes are all unseen, still see all of their task's.
  seen = np.array([True, False, False, False])
  counts = evaluate(state.replace(seen_classes=jnp.asarray(seen)), data)
  visible = np.where(task[:, None] == 0, seen & task_classes[0],
                     task_classes[task])
  pred = np.where(visible, x, -np.inf).argmax(1)
  assert int(counts.correct[0]) == int((pred == y).sum())
  np.testing.assert_array_equal(
      np.asarray(visible_classes(jnp.asarray(seen), task_classes,
                                 jnp.asarray(task))), visible)


def _count_traces(strategy):
  """Wraps the penalty so each trace of the training function is counted."""
  calls = []

  def penalty(ctx, params, cl_state, batch, logits):
    calls.append(1)
    return strategy.penalty(ctx, params, cl_state, batch, logits)

  return strategy._replace(penalty=penalty), calls


def test_one_compile_per_stream_with_unequal_experiences(tiny_model):
  bench = make_benchmark(n_classes=6, n_experiences=3, sizes=[3, 30, 10, 10, 2, 9])
  strategy = naive()._replace(
      penalty=chex.assert_max_traces(naive().penalty, n=1))
  result = jaxcl.fit(jaxcl.models.MLP(6, hidden_size=8), strategy,
                     optax.sgd(0.1), bench, epochs=2, batch_size=4)
  assert result.accuracy_matrix.shape == (3, 3)
  # Steps actually taken: empty padded steps are skipped.
  expected = 2 * sum(-(-len(e) // 4) for e in bench.train_stream)
  assert int(result.state.step) == expected


def _plain_fit(seed, lr=0.05, **kwargs):
  """Two epochs of naive fine-tuning of the conftest's tiny model on its
  tiny benchmark, with SGD at ``lr`` in batches of 5 (the last padded)."""
  return jaxcl.fit(jaxcl.models.MLP(num_classes=4, hidden_size=8,
                                    drop_rate=0.0), naive(), optax.sgd(lr),
                   make_benchmark(), epochs=2, batch_size=5, seed=seed,
                   **kwargs)


@pytest.fixture(scope="module")
def plain_fit():
  """:func:`_plain_fit` of seed 0."""
  return _plain_fit(0)


@pytest.mark.xdist_group("test_training-plain_fit")
def test_same_seed_same_numbers_different_seed_different(plain_fit):
  a, b, c = plain_fit, _plain_fit(0), _plain_fit(1)
  np.testing.assert_array_equal(a.accuracy_matrix, b.accuracy_matrix)
  chex.assert_trees_all_equal(a.state.params, b.state.params)
  assert not np.allclose(
      jax.tree.leaves(a.state.params)[0], jax.tree.leaves(c.state.params)[0])


def test_fit_learns_and_forgets_without_a_strategy(tiny_benchmark, tiny_model):
  result = jaxcl.fit(tiny_model, naive(), optax.sgd(0.1), tiny_benchmark,
                     epochs=20, batch_size=4)
  R = result.accuracy_matrix
  assert R[0, 0] == 1.0 and R[1, 1] == 1.0
  # Masked head: the untrained second experience is unreachable after exp 0.
  assert R[0, 1] == 0.0
  assert result.metrics["forgetting"] == pytest.approx(R[0, 0] - R[1, 0])
  assert result.metrics["bwt"] == pytest.approx(-result.metrics["forgetting"])
  assert set(result.timings) == {"compile_s", "train_s", "eval_s", "total_s"}


def test_nonfinite_loss_names_experience_and_step(tiny_benchmark, tiny_model):
  bad = Strategy(name="bad",
                 penalty=lambda ctx, p, s, batch, logits: jnp.float32(jnp.nan))
  with pytest.raises(FloatingPointError,
                     match=r"experience 0 at optimizer step 0") as raised:
    jaxcl.fit(tiny_model, bad, optax.sgd(0.1), tiny_benchmark, batch_size=4)
  # Every host reads back the same losses, so each raises it on its own
  # (stop_all_hosts_on_error does not stop the others for it).
  assert _hosts._raised_everywhere(raised.value)


def test_a_flagged_nonfinite_loss_trains_on_with_nan_metrics(tiny_benchmark,
                                                              tiny_model):
  bad = Strategy(name="bad",
                 penalty=lambda ctx, p, s, batch, logits: jnp.float32(jnp.nan))
  with pytest.warns(RuntimeWarning, match=r"experience 0 at optimizer step 0; "
                    r"training goes on \(on_nonfinite='flag'\)"):
    result = jaxcl.fit(tiny_model, bad, optax.sgd(0.1), tiny_benchmark,
                       batch_size=4, on_nonfinite="flag", epochs=3,
                       early_stopping=jaxcl.EarlyStopping(patience=1),
                       periodic_eval=jaxcl.PeriodicEval(stream="test"))
  assert result.nonfinite == (0, 0)
  # Its early stop was decided on NaN values: not a measure either.
  assert all(np.isnan(h["epochs_trained"]) for h in result.history)
  assert np.isnan(result.accuracy_matrix).all()
  assert np.isnan(result.metrics["stream_accuracy"])
  assert result.metrics["train_time_s"] >= 0  # Measured all the same.
  assert [h["experience"] for h in result.history] == [0, 1]


def test_a_diverging_swept_value_leaves_the_other_runs_to_finish(
    tiny_benchmark, tiny_model):
  optimizer = lambda lr: optax.inject_hyperparams(optax.sgd)(learning_rate=lr)
  # The same programs flagged and raised (on_nonfinite is the host's).
  kwargs = dict(strategy=naive(), optimizer=optimizer, batch_size=4, epochs=2,
                periodic_eval=jaxcl.PeriodicEval(every=1, stream="test"))
  with pytest.warns(RuntimeWarning, match=r"experience 0 .*\(run 1, label "
                    r"1e\+30\); training goes on"):
    swept = jaxcl.sweep(tiny_model, tiny_benchmark, [0.1, 1e30],
                        on_nonfinite="flag", **kwargs)
  alone = jaxcl.fit(tiny_model, naive(), optimizer(0.1), tiny_benchmark,
                    batch_size=4, epochs=2,
                    periodic_eval=jaxcl.PeriodicEval(every=1, stream="test"))
  assert swept.runs[0].nonfinite is None and swept.runs[1].nonfinite[0] == 0
  np.testing.assert_array_equal(swept.runs[0].accuracy_matrix,
                                alone.accuracy_matrix)
  assert np.isnan(swept.runs[1].accuracy_matrix).all()
  # Everything else that measures the diverged model is NaN too. (The
  # vmapped and the single program may round the loss apart.)
  for point, expected in zip(swept.runs[0].periodic, alone.periodic,
                             strict=True):
    assert point.keys() == expected.keys()
    for name in point:
      np.testing.assert_allclose(point[name], expected[name], rtol=1e-6)
  assert all(np.isnan(p["stream_accuracy"]) and np.isnan(
      p["experience_accuracy"]).all() for p in swept.runs[1].periodic)
  assert [p["step"] for p in swept.runs[1].periodic] == [
      p["step"] for p in alone.periodic]
  for field in ("confusion_matrix", "class_accuracy", "task_class_accuracy"):
    np.testing.assert_array_equal(getattr(swept.runs[0], field),
                                  getattr(alone, field))
    assert getattr(swept.runs[0], field).dtype == getattr(alone, field).dtype
    assert np.isnan(getattr(swept.runs[1], field)).all()
  # The mean ± std over runs leaves the diverged one out: one value, no std.
  mean, std = swept.metrics["stream_accuracy"]
  assert mean == alone.metrics["stream_accuracy"] and np.isnan(std)
  with pytest.raises(FloatingPointError, match=r"\(run 1, label 1e\+30\).*"
                     r"on_nonfinite='flag'"):
    jaxcl.sweep(tiny_model, tiny_benchmark, [0.1, 1e30], **kwargs)
  with pytest.raises(ValueError, match="Unknown on_nonfinite 'warn'; expected "
                     "one of flag, raise"):
    jaxcl.fit(tiny_model, naive(), optax.sgd(0.1), tiny_benchmark,
              on_nonfinite="warn")


def test_penalty_and_model_see_the_same_augmented_inputs():
  n_classes = 3
  # The penalty is the mean input it is given (the loss reports it); the
  # strategy state keeps the inputs after_step is given.
  probe = Strategy(
      name="probe", init=lambda ctx, p, k: jnp.zeros((4, n_classes)),
      penalty=lambda ctx, p, s, batch, logits: jnp.mean(batch["x"]),
      after_step=lambda ctx, old, new, grads, batch, key: batch["x"])
  ctx = _ctx(n_classes)._replace(augment=lambda x, key: x + 10.0)
  state = init_state(ctx, probe, optax.sgd(0.0), jax.random.key(0),
                     jnp.zeros((1, n_classes)), jnp.zeros((1,), jnp.int32))
  state = state.replace(seen_classes=jnp.ones(n_classes, bool))
  x = np.arange(12, dtype=np.float32).reshape(4, n_classes)
  batch = {"x": jnp.asarray(x), "y": jnp.array([0, 1, 2, 0]),
           "task": jnp.zeros(4, jnp.int32), "weight": jnp.ones(4)}
  step = jax.jit(make_train_step(ctx, probe, optax.sgd(0.0)))
  new_state, _, loss = step(state, batch, jax.random.key(1))
  logits = x + 10.0  # IDENTITY's logits on the augmented inputs
  ce = -(logits - np.log(np.exp(logits).sum(1, keepdims=True)))[
      np.arange(4), [0, 1, 2, 0]].mean()
  assert float(loss) == pytest.approx(ce + x.mean() + 10.0, rel=1e-5)
  # after_step still gets the batch as drawn (what memories store).
  np.testing.assert_array_equal(new_state.cl_state, x)


def test_chain_adds_penalties_and_threads_states():
  def constant(value, name):
    return Strategy(name=name, init=lambda ctx, p, k: jnp.float32(value),
                    penalty=lambda ctx, p, s, b, logits: s)
  strategy = chain(constant(1.5, "a"), constant(2.0, "b"))
  state = strategy.init(None, {}, jax.random.key(0))
  assert state == (1.5, 2.0)
  assert float(strategy.penalty(None, {}, state, {}, None)) == 3.5


def test_chain_refuses_two_prediction_rules():
  predictor = Strategy(name="ncm", predict=lambda *a: None)
  with pytest.raises(ValueError, match="predict"):
    chain(predictor, predictor._replace(name="icarl"))
  with pytest.raises(TypeError, match="chain argument 1"):
    chain(naive(), "ewc")


def test_bad_arguments_fail_before_compiling(tiny_benchmark, tiny_model):
  with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
    jaxcl.fit(tiny_model, naive(), optax.sgd(0.1), tiny_benchmark, batch_size=0)
  with pytest.raises(TypeError, match="optimizer must be an optax"):
    jaxcl.fit(tiny_model, naive(), 0.1, tiny_benchmark)
  with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32\), got -1"):
    jaxcl.fit(tiny_model, naive(), optax.sgd(0.1), tiny_benchmark, seed=-1)
  with pytest.raises(ValueError, match=r"logits of shape \(3,\)"):
    jaxcl.fit(jaxcl.models.MLP(3, hidden_size=4), naive(), optax.sgd(0.1),
              tiny_benchmark)
  with pytest.raises(ValueError, match="input_size=5"):
    jaxcl.fit(jaxcl.models.MLP(4, input_size=5), naive(), optax.sgd(0.1),
              tiny_benchmark)


def test_smoothed_cross_entropy_spreads_over_the_visible_classes():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 5)).astype(np.float32)
  logits[:, 4] = MASK_VALUE  # A class not seen yet.
  y = np.array([0, 3, 1, 2])
  class_mask = np.ones((4, 5), bool)
  class_mask[1, 0] = False  # A strategy's restriction of row 1.
  batch = {"y": jnp.asarray(y), "class_mask": jnp.asarray(class_mask)}
  for eps in (0.0, 0.1, 1.0):
    got = smoothed_cross_entropy(eps)(jnp.asarray(logits), batch)
    expected = []
    for row, label, allowed in zip(logits, y, class_mask):
      visible = allowed & (row > MASK_VALUE)
      z = row[visible]
      log_p = z - np.log(np.sum(np.exp(z - z.max()))) - z.max()
      target = np.full(visible.sum(), eps / visible.sum())
      target[np.flatnonzero(visible) == label] += 1 - eps
      expected.append(-np.sum(target * log_p))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
  # A row with every class masked (a task not seen yet) spreads over all.
  blind = jnp.full((1, 5), MASK_VALUE)
  np.testing.assert_allclose(
      smoothed_cross_entropy(0.1)(blind, {"y": jnp.array([2])}), np.log(5),
      rtol=1e-6)
  assert smoothed_cross_entropy(0.0) is cross_entropy
  with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\], "
                     "got 1.5"):
    smoothed_cross_entropy(1.5)


@pytest.mark.xdist_group("test_training-plain_fit")
def test_fit_trains_evaluates_and_checkpoints_with_the_given_loss(
    plain_fit, tmp_path):
  # SGD on twice the loss is SGD at twice the rate: the same parameters,
  # and the evaluation's loss, the same criterion, twice as large.
  twice = lambda logits, batch: 2 * cross_entropy(logits, batch)
  doubled = _plain_fit(0, 0.025, loss=twice)
  chex.assert_trees_all_close(doubled.state.params, plain_fit.state.params,
                              rtol=1e-6)
  np.testing.assert_allclose([r["stream_loss"] for r in doubled.history],
                             [2 * r["stream_loss"] for r in plain_fit.history],
                             rtol=1e-6)
  # Another loss trains otherwise, and the checkpoint names it: resuming
  # with another is refused.
  smoothed = _plain_fit(0, loss=smoothed_cross_entropy(0.1),
                        checkpoint_dir=tmp_path)
  assert not np.allclose(jax.tree.leaves(smoothed.state.params)[0],
                         jax.tree.leaves(plain_fit.state.params)[0])
  with pytest.raises(jaxcl.checkpoint.CheckpointError,
                     match=r"smoothed_cross_entropy\(0\.1\).*"
                     r"smoothed_cross_entropy\(0\.2\)"):
    _plain_fit(0, loss=smoothed_cross_entropy(0.2), checkpoint_dir=tmp_path)


def test_every_caller_gives_the_loss_the_whole_batch(tiny_benchmark,
                                                     tiny_model):
  seen = []

  def recording(logits, batch):
    seen.append(set(batch))  # At tracing: one entry per call site.
    return cross_entropy(logits, batch)
  # MIR scores memory rows with the loss too.
  jaxcl.fit(tiny_model, jaxcl.strategies.mir(mem_size=8, subsample=4,
                                             batch_size_mem=2),
            optax.sgd(0.1), tiny_benchmark, batch_size=4, loss=recording)
  assert len(seen) > 2 and all(
      keys >= {"x", "y", "task", "weight"} for keys in seen), seen


@pytest.mark.parametrize("loss, error, message", [
    (0.1, TypeError, "loss must be a callable"),
    (lambda logits, batch: jnp.mean(cross_entropy(logits, batch)),
     ValueError, r"returned \(\) for a batch of 2; expected one loss per "
     "sample"),
    (lambda logits, batch: batch["soft_labels"] * logits,
     ValueError, "failed on logits of shape \\(2, 4\\).*KeyError"),
])
def test_a_bad_loss_is_refused_before_compiling(tiny_benchmark, tiny_model,
                                                loss, error, message):
  with pytest.raises(error, match=message):
    jaxcl.fit(tiny_model, naive(), optax.sgd(0.1), tiny_benchmark, loss=loss)


def test_task_incremental_predictions_stay_within_the_task():
  bench = make_benchmark(n_classes=4, n_experiences=2, return_task_id=True)
  result = jaxcl.fit(jaxcl.models.MLP(4, hidden_size=8, drop_rate=0.0), naive(),
                     optax.sgd(0.1), bench, epochs=10, batch_size=4)
  # Task labels at test time: a sample can only be confused within its task,
  # so the confusion matrix is block-diagonal over the two tasks' classes.
  cm = result.confusion_matrix
  assert cm[:2, 2:].sum() == 0 and cm[2:, :2].sum() == 0
  assert cm.sum() == sum(len(e) for e in bench.test_stream)


def test_eval_every_skips_rows_and_metrics_use_evaluated_rows(tiny_model):
  bench = make_benchmark(n_classes=6, n_experiences=3)
  result = jaxcl.fit(jaxcl.models.MLP(6, hidden_size=8), naive(),
                     optax.sgd(0.1), bench, epochs=3, batch_size=4, eval_every=2)
  R = result.accuracy_matrix
  # Evaluated after experience 1 (every 2nd) and after the last one only.
  assert np.isnan(R[0]).all() and not np.isnan(R[1]).any() and not np.isnan(R[2]).any()
  assert [row["experience"] for row in result.history] == [1, 2]
  # Experience 0's forgetting is measured from the first evaluation after it.
  expected = np.mean([R[1, 0] - R[2, 0], R[1, 1] - R[2, 1]])
  assert result.metrics["forgetting"] == pytest.approx(expected)


def test_blocks_cut_at_evaluations_and_at_their_length():
  cut = fit_module._blocks
  assert cut(range(7), {2, 6}, 2) == [[0, 1], [2], [3, 4], [5, 6]]
  assert cut(range(3, 7), {6}, 10) == [[3, 4, 5, 6]]
  assert cut(range(4), {0, 1, 2, 3}, 3) == [[0], [1], [2], [3]]
  assert cut(range(5), {1}, 10) == [[0, 1], [2, 3, 4]]


def test_block_length_is_the_longest_span_within_the_byte_budgets(monkeypatch):
  # Two origin experiences of 24 samples: mini-experiences of 5, 5, 5, 5, 4.
  bench = jaxcl.benchmarks.split_online(make_benchmark(), 5)
  length = lambda points, budget=2**30: fit_module._block_length(
      bench.train_stream, points, budget)
  points = fit_module._eval_points(bench.train_stream, None)
  assert sorted(points) == [4, 9]
  assert length(points) == 5
  assert length({1, 9}) == 8
  assert length(set(range(len(bench.train_stream)))) == 1
  per_experience = 5 * (6 * 4 + 12)  # Samples times input, label, task, weight.
  # The device memory budget caps a block; spans are cut into near-equal
  # blocks: 5 experiences within room for 4 make blocks of 3 and 2, not 4 and 1.
  assert length(points, 4 * per_experience) == 3
  assert length({1, 9}, 3 * per_experience) == 3  # 8 -> 3, 3, 2.
  assert length(points, per_experience - 1) == 1
  monkeypatch.setattr(fit_module, "_BLOCK_BYTES", 2 * per_experience)
  assert length(points) == 2  # 5 -> 2, 2, 1.


@pytest.mark.parametrize("seeds, periodic", [(None, None), ([0, 1], None),
                                             (None, "step")])
def test_blocks_of_experiences_train_as_one_call_per_experience(
    monkeypatch, seeds, periodic):
  bench = jaxcl.benchmarks.split_online(make_benchmark(), 5)
  per_experience = 5 * (6 * 4 + 12)
  periodic_eval = periodic and jaxcl.PeriodicEval(every=2, unit=periodic,
                                                  stream="test")

  def run(block):
    monkeypatch.setattr(fit_module, "_BLOCK_BYTES", block * per_experience)
    strategy, traces = _count_traces(jaxcl.strategies.replay(mem_size=6))
    result = jaxcl.fit(jaxcl.models.MLP(4, hidden_size=8), strategy,
                       optax.sgd(0.1), bench, batch_size=2, seed=0, seeds=seeds,
                       periodic_eval=periodic_eval)
    # Traced once even when blocked: the block reuses the experience's trace.
    assert len(traces) == 1
    return result

  # 1: one call per experience; 3: blocks of 3, 2, 3, 2 (the last of each
  # span padded and skipped), so full and padded blocks, two read back at
  # each evaluation (one block per span, 5, takes the same paths).
  one, blocked = run(1), run(3)
  runs = lambda result: result.runs if seeds else [result]
  for a, b in zip(runs(blocked), runs(one), strict=True):
    np.testing.assert_allclose(a.accuracy_matrix, b.accuracy_matrix)
    chex.assert_trees_all_close(a.state.params, b.state.params, rtol=1e-6,
                                atol=1e-6)
    chex.assert_trees_all_equal(a.state.cl_state, b.state.cl_state)
    chex.assert_trees_all_equal(a.state.step, b.state.step)
    np.testing.assert_allclose([h["train_loss"] for h in a.history],
                               [h["train_loss"] for h in b.history],
                               rtol=1e-6)
    # Periodic evaluations inside each experience, besides the one before
    # training: one at step 2, and for the 8 experiences of 5 samples (3
    # steps at batch 2; the 2 of 4 samples take 2) one of the final state.
    assert len(a.periodic) == len(b.periodic) == (28 if periodic else 0)
    for p, q in zip(a.periodic, b.periodic):
      assert (p["experience"], p["step"]) == (q["experience"], q["step"])
      np.testing.assert_allclose(p["stream_accuracy"], q["stream_accuracy"])


@pytest.mark.parametrize("block", [1, 5])
def test_nonfinite_loss_inside_a_block_names_its_mini_experience(monkeypatch,
                                                                 block):
  bench = jaxcl.benchmarks.split_online(make_benchmark(), 5, shuffle=False)
  monkeypatch.setattr(fit_module, "_BLOCK_BYTES", block * 5 * (6 * 4 + 12))
  # NaN as soon as a batch holds class 3, which only the second origin
  # experience has: the first mini-experience with a 3 is the culprit.
  first = next(i for i, e in enumerate(bench.train_stream) if 3 in e.y)
  assert first > 5  # Inside the second block, not at its start.
  nan_on_3 = Strategy(name="nan_on_3", penalty=lambda ctx, p, s, batch, logits:
                      jnp.where(jnp.any((batch["y"] == 3) & (batch["weight"] > 0)),
                                jnp.nan, 0.0))
  with pytest.raises(FloatingPointError,
                     match=rf"in experience {first} at optimizer step"):
    jaxcl.fit(jaxcl.models.MLP(4, hidden_size=8), nan_on_3, optax.sgd(0.1),
              bench, batch_size=2)


def test_online_streams_evaluate_at_the_end_of_each_origin_experience():
  bench = jaxcl.benchmarks.split_online(make_benchmark(n_classes=4, n_experiences=2), 8)
  origins = [e.origin_experience for e in bench.train_stream]
  result = jaxcl.fit(jaxcl.models.MLP(4, hidden_size=8), naive(),
                     optax.sgd(0.1), bench, batch_size=8)
  R = result.accuracy_matrix
  last_of_0 = origins.index(1) - 1
  evaluated = [i for i in range(len(origins)) if not np.isnan(R[i]).all()]
  assert evaluated == [last_of_0, len(origins) - 1]
  # Mini-experiences train their origin's column; with it, the pure
  # functions give fit's numbers (row i is not column i here).
  np.testing.assert_array_equal(result.trained_columns, origins)
  assert result.metrics["forgetting"] == pytest.approx(
      R[last_of_0, 0] - R[-1, 0])
  assert jaxcl.evaluation.stream_forgetting(
      R, len(origins) - 1, result.trained_columns) == pytest.approx(
          result.metrics["forgetting"])


def test_device_experiences_carry_their_original_experience():
  bench = jaxcl.benchmarks.split_online(make_benchmark(), 8)
  origins = [e.origin_experience for e in bench.train_stream]
  assert set(origins) == {0, 1}
  stacked = stack_experiences(list(bench.train_stream), 4)
  np.testing.assert_array_equal(stacked.origin_experience, origins)
  assert [int(experience_data(e, 8, 4).origin_experience)
          for e in bench.train_stream] == origins
  # Offline, an experience is its own origin.
  offline = make_benchmark(n_experiences=2).train_stream
  np.testing.assert_array_equal(
      stack_experiences(list(offline), 4).origin_experience, [0, 1])


def test_experiences_between_evaluations_wait_for_the_one_before(monkeypatch):
  # Eight experiences and one evaluation at the end. Before reading (and
  # uploading) an experience, everything dispatched before the experience
  # now training has finished: at most two experiences' data are on the
  # device. Without the wait all eight were uploaded at once (in ~5 ms of
  # 0.25 s of training here).
  fit_module = importlib.import_module("jaxcl.training.fit")
  real_read, real_call = fit_module.experience_data, jax.stages.Compiled.__call__
  outputs, unfinished = [], []

  def call(self, *args, **kwargs):
    outputs.append(real_call(self, *args, **kwargs))
    return outputs[-1]

  def read(*args, **kwargs):
    unfinished.append(sum(
        not leaf.is_ready() for out in outputs[:-1]
        for leaf in jax.tree.leaves(out) if not leaf.is_deleted()))
    return real_read(*args, **kwargs)

  monkeypatch.setattr(jax.stages.Compiled, "__call__", call)
  monkeypatch.setattr(fit_module, "experience_data", read)
  bench = make_benchmark(n_classes=8, n_experiences=8, per_class=500,
                         dim=1000)
  # A budget of one experience (2 MB): one call per experience.
  jaxcl.fit(jaxcl.models.MLP(8, hidden_size=128, drop_rate=0.0), naive(),
            optax.sgd(0.01), bench, epochs=4, batch_size=32, eval_every=8,
            device_memory_budget_mb=3, metrics=["accuracy"])
  assert len(unfinished) == 8 and unfinished == [0] * 8


def test_padding_helpers_refuse_sizes_their_experiences_do_not_fit():
  exp = Experience(x=np.ones((5, 2), np.float32), y=[0, 1, 1, 0, 2],
                   task=[0] * 5, index=0, classes=(0, 1, 2), origin="train")
  for make in (lambda: experience_data(exp, 3, 3),
               lambda: stack_experiences([exp], 3, size=3),
               lambda: jaxcl.training.state.put_experiences(
                   [exp], 3, 3, samples_sharding=None, sharding=None)):
    with pytest.raises(ValueError, match=r"size=3 is below the 5 samples of "
                       r"the longest experience; expected size >= 5"):
      make()
  with pytest.raises(ValueError, match=r"n_classes=2 leaves out class 2 of "
                     r"the experiences; expected n_classes > 2"):
    experience_data(exp, 5, 2)
  with pytest.raises(ValueError, match=r"length=1 is below the 2 experiences "
                     r"given; expected length >= 2"):
    stack_experiences([exp, exp], 3, length=1)
  with pytest.raises(ValueError, match="at least one experience, got none"):
    stack_experiences([], 3)
