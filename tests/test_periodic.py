"""Periodic evaluation, early stopping and optimizer resets inside the compiled loop."""

import collections
import tempfile

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import compilation_cache_in, make_benchmark

import jaxcl
from jaxcl import EarlyStopping, PeriodicEval
from jaxcl.loggers.base import MetricWriter
from jaxcl.strategies import naive
from jaxcl.training import make_context, make_evaluate, stack_experiences
from jaxcl.training.optim import (one_schedule_step, reset_optimizer_state,
                                  restart_schedules)


def _bench(**kwargs):
  # Overlapping blobs, so that validation accuracy moves from epoch to epoch.
  bench = make_benchmark(n_classes=4, n_experiences=2, per_class=40, dim=6,
                         seed=3, **kwargs)
  return jaxcl.benchmarks.with_validation(bench, 0.25, seed=1)


def _model():
  return jaxcl.models.MLP(num_classes=4, hidden_size=16, drop_rate=0.0)


def _accuracy(bench, state, stream):
  """Pooled accuracy of ``state`` on ``stream``, evaluated anew."""
  ctx = make_context(_model(), bench, optax.sgd(0.1), batch_size=8)
  counts = jax.jit(make_evaluate(ctx, naive(), eval_batch_size=100))(
      state, stack_experiences(list(stream), bench.n_classes))
  return float(np.sum(counts.correct) / np.sum(counts.count))


def _valid_accuracy(bench, state):
  return _accuracy(bench, state, bench.valid_stream)


def _stop_rule(values, patience, margin, sign):
  """Avalanche's rule in numpy: (number of evaluations taken, best index)."""
  best, best_at = sign * values[0], 0
  for tick in range(1, len(values)):
    delta = sign * values[tick] - best
    if delta > 0 and delta >= margin:
      best, best_at = sign * values[tick], tick
    if tick - best_at >= patience:
      return tick + 1, best_at
  return len(values), best_at


def test_periodic_eval_every_epoch_records_before_and_after_each_epoch():
  bench = _bench()
  result = jaxcl.fit(_model(), naive(), optax.sgd(0.2), bench, epochs=3,
                     batch_size=8, periodic_eval=PeriodicEval(every=1))
  steps = -(-len(bench.train_stream[0]) // 8)
  # One evaluation before each experience plus one after each epoch.
  assert [p["experience"] for p in result.periodic] == [0] * 4 + [1] * 4
  assert [p["step"] for p in result.periodic] == [
      e * steps for e in range(4)] + [3 * steps + e * steps for e in range(4)]
  # After the last epoch of an experience the periodic evaluation sees the
  # same model as an evaluation of the final state would.
  assert result.periodic[-1]["stream_accuracy"] == pytest.approx(
      _valid_accuracy(bench, result.state))
  for p in result.periodic:
    assert 0.0 <= p["stream_accuracy"] <= 1.0 and np.isfinite(p["stream_loss"])
    assert len(p["experience_accuracy"]) == len(bench.valid_stream)


def test_periodic_eval_by_steps_and_on_the_test_stream():
  bench = _bench()
  result = jaxcl.fit(_model(), naive(), optax.sgd(0.2), bench, epochs=2,
                     batch_size=8,
                     periodic_eval=PeriodicEval(every=5, unit="step",
                                                stream="test"))
  steps = 2 * -(-len(bench.train_stream[0]) // 8)
  assert steps % 5  # the last step is not due: the final state is evaluated
  expected = [s for s in range(0, steps + 1, 5)] + [steps]
  got = [p["step"] for p in result.periodic if p["experience"] == 0]
  assert got == expected
  final = [p for p in result.periodic if p["experience"] == 1][-1]
  assert final["stream_accuracy"] == pytest.approx(
      _accuracy(bench, result.state, bench.test_stream))
  assert len(result.periodic[0]["experience_accuracy"]) == len(bench.test_stream)


_CURVE_SETTINGS = dict(epochs=8, batch_size=8,
                       periodic_eval=PeriodicEval(every=1),
                       eval_before_training=False)


@pytest.fixture(scope="module")
def plain():
  """The run without early stopping whose curves the stopped runs follow."""
  return jaxcl.fit(_model(), naive(), optax.sgd(0.5), _bench(),
                   **_CURVE_SETTINGS)


@pytest.mark.xdist_group("test_periodic-plain")
@pytest.mark.parametrize("metric,mode,margin", [("loss", "min", 0.0),
                                                ("accuracy", "max", 0.02)])
def test_early_stopping_follows_avalanche_rule_and_restores_the_best(
    plain, metric, mode, margin):
  bench = _bench()
  stopped = jaxcl.fit(_model(), naive(), optax.sgd(0.5), bench,
                      **_CURVE_SETTINGS,
                      early_stopping=EarlyStopping(patience=2, metric=metric,
                                                   mode=mode, margin=margin))
  sign = 1.0 if mode == "max" else -1.0
  # Experience 0 starts from the same state in both runs, so the curves agree
  # until the stop, which the numpy rule predicts from the full curve.
  curve = [p[f"stream_{metric}"] for p in plain.periodic if p["experience"] == 0]
  taken, best_at = _stop_rule(np.array(curve), 2, margin, sign)
  got = [p[f"stream_{metric}"] for p in stopped.periodic if p["experience"] == 0]
  np.testing.assert_allclose(got, curve[:taken], rtol=1e-6)
  assert stopped.history[0]["epochs_trained"] == taken - 1
  # The restored parameters are those of the best evaluation: re-evaluating
  # the state after the last experience gives the best value recorded in it.
  last = [p for p in stopped.periodic if p["experience"] == 1]
  values = np.array([p[f"stream_{metric}"] for p in last])
  _, best_last = _stop_rule(values, 2, margin, sign)
  if metric == "accuracy":
    assert _valid_accuracy(bench, stopped.state) == pytest.approx(
        values[best_last])


class _Recorder(MetricWriter):
  """Keeps every scalars row written."""

  def __init__(self):
    self.rows = []

  def write_scalars(self, step, scalars):
    self.rows.append((step, dict(scalars)))


def test_every_experience_writes_its_training_metrics():
  # eval_every=2: experiences 0 and 2 are not evaluated, but trained.
  writer = _Recorder()
  jaxcl.fit(_model(), naive(), optax.sgd(0.1),
            make_benchmark(n_classes=4, n_experiences=4, per_class=12),
            epochs=2, batch_size=4, eval_every=2, writer=writer)
  assert [step for step, row in writer.rows if "train/loss" in row] == list(
      range(8))
  assert [step for step, row in writer.rows
          if "eval/stream/accuracy" in row] == [1, 3]


def test_early_stopping_counts_epochs_of_smaller_experiences():
  bench = make_benchmark(n_classes=4, n_experiences=2, per_class=40, dim=6,
                         sizes=[30, 30, 8, 7])
  result = jaxcl.fit(_model(), naive(), optax.sgd(0.1), bench, epochs=4,
                     batch_size=8, periodic_eval=PeriodicEval(stream="test"),
                     early_stopping=EarlyStopping(patience=100))
  # Experience 1 (15 samples) takes 2 steps an epoch, experience 0 takes 8.
  assert [h["epochs_trained"] for h in result.history] == [4.0, 4.0]


def test_early_stopping_stops_between_evaluations_and_writes_nothing_after():
  # Nothing improves at learning rate 0: the stop comes `patience` epochs
  # after the evaluation before training, between two evaluations.
  writer = _Recorder()
  result = jaxcl.fit(_model(), naive(), optax.sgd(0.0), _bench(), epochs=8,
                     batch_size=8, periodic_eval=PeriodicEval(every=2),
                     early_stopping=EarlyStopping(patience=3), writer=writer)
  assert [h["epochs_trained"] for h in result.history] == [3.0, 3.0]
  # The epochs after the stop write no rows, empty ones neither.
  train_steps = [step for step, row in writer.rows if "train/loss" in row]
  assert train_steps == [0, 1, 2, 8, 9, 10]  # each experience's epochs
  assert all(row for _, row in writer.rows)


def test_early_stopping_weighs_the_epochs_after_the_last_evaluation():
  bench = jaxcl.benchmarks.with_validation(make_benchmark(
      n_classes=4, n_experiences=1, per_class=40, dim=6, seed=3), 0.25, seed=1)
  kwargs = dict(epochs=3, batch_size=8, eval_before_training=False)
  curve = jaxcl.fit(_model(), naive(), optax.sgd(0.05), bench, **kwargs,
                    periodic_eval=PeriodicEval(every=1))
  losses = [p["stream_loss"] for p in curve.periodic]
  assert losses[-1] < min(losses[:-1])  # The final state is the best.
  watched = jaxcl.fit(_model(), naive(), optax.sgd(0.05), bench, **kwargs,
                      periodic_eval=PeriodicEval(every=2),
                      early_stopping=EarlyStopping(patience=100,
                                                   metric="loss", mode="min"))
  # Epoch 3 was not due for evaluation (every 2), yet it is kept.
  chex.assert_trees_all_close(watched.state.params, curve.state.params,
                              rtol=1e-6, atol=1e-7)


def test_a_stop_at_the_last_epoch_still_evaluates_it():
  # Learning rate 0: nothing improves on the evaluation before training, so
  # with patience 3 the stop comes at epoch 3, the last, which every=2 did
  # not make due. It trained: it is evaluated at the end of the experience
  # (and competes for the best), as when no stop comes.
  bench = _bench()
  steps = -(-len(bench.train_stream[0]) // 8)
  result = jaxcl.fit(_model(), naive(), optax.sgd(0.0), bench, epochs=3,
                     batch_size=8, periodic_eval=PeriodicEval(every=2),
                     early_stopping=EarlyStopping(patience=3))
  assert result.history[0]["epochs_trained"] == 3
  assert [p["step"] for p in result.periodic if p["experience"] == 0] == [
      0, 2 * steps, 3 * steps]


def test_reset_schedule_restarts_the_count_at_each_experience():
  bench = _bench()
  steps = 2 * -(-bench.train_stream.max_size // 8)
  schedule = optax.linear_schedule(0.2, 0.0, 1000)
  across = jaxcl.fit(_model(), naive(), optax.sgd(schedule, momentum=0.9),
                     bench, epochs=2, batch_size=8)
  reset = jaxcl.fit(_model(), naive(), optax.sgd(schedule, momentum=0.9),
                    bench, epochs=2, batch_size=8, reset_schedule=True)
  count = lambda r: int(r.state.opt_state[1].count)
  assert count(across) == int(across.state.step) == 2 * steps
  assert count(reset) == steps
  # Momentum is not reset by a schedule restart.
  assert float(jnp.abs(jax.tree.leaves(reset.state.opt_state[0])[0]).sum()) > 0


def test_reset_optimizer_matches_a_fresh_state_and_keeps_swept_lr():
  params = {"w": jnp.arange(3.0)}
  opt = optax.inject_hyperparams(optax.adam)(learning_rate=0.1)
  state = opt.init(params)
  state = state._replace(hyperparams={**state.hyperparams,
                                      "learning_rate": jnp.asarray(0.7)})
  for _ in range(3):
    _, state = opt.update(params, state, params)
  fresh = reset_optimizer_state(opt, state, params)
  expected = opt.init(params)
  assert float(fresh.hyperparams["learning_rate"]) == pytest.approx(0.7)
  chex.assert_trees_all_equal(fresh.inner_state, expected.inner_state)
  assert int(fresh.count) == 0

  bench = _bench()
  result = jaxcl.sweep(
      _model(), bench, [0.05, 0.2],
      strategy=naive(), epochs=2, batch_size=8, reset_optimizer=True,
      optimizer=lambda lr: optax.inject_hyperparams(optax.adam)(
          learning_rate=lr))
  steps = 2 * -(-bench.train_stream.max_size // 8)
  for run, lr in zip(result.runs, [0.05, 0.2]):
    adam = run.state.opt_state.inner_state[0]
    assert int(adam.count) == steps  # The moments restarted at experience 1.
    assert float(run.state.opt_state.hyperparams["learning_rate"]) == (
        pytest.approx(lr))


def test_reset_optimizer_state_can_keep_the_schedules_running():
  opt = optax.sgd(optax.linear_schedule(1.0, 0.0, 10), momentum=0.9)
  params = {"w": jnp.ones(2)}
  state = opt.init(params)
  for _ in range(3):
    _, state = opt.update(params, state, params)
  kept = reset_optimizer_state(opt, state, params, keep_schedules=True)
  # The momentum starts over, the learning rate goes on from step 3.
  chex.assert_trees_all_equal(kept[0], opt.init(params)[0])
  assert int(kept[1].count) == 3
  assert int(reset_optimizer_state(opt, state, params)[1].count) == 0


def test_restart_schedules_leaves_adam_bias_correction_alone():
  opt = optax.adam(optax.cosine_decay_schedule(0.1, 50))
  params = {"w": jnp.ones(2)}
  state = opt.init(params)
  for _ in range(4):
    _, state = opt.update(params, state, params)
  restarted = restart_schedules(state)
  assert int(restarted[0].count) == 4 and int(restarted[1].count) == 0


def test_one_schedule_step_per_batch_whatever_the_updates_in_it():
  # A strategy's own update applied the optimizer 3 times in one batch:
  # schedules (also inside an injected optimizer) advance once, Adam's bias
  # correction thrice.
  opt = optax.inject_hyperparams(
      lambda b1: optax.adam(optax.cosine_decay_schedule(0.1, 50), b1=b1))(
          b1=0.9)
  params = {"w": jnp.ones(2)}
  before = opt.init(params)
  _, before = opt.update(params, before, params)
  after = before
  for _ in range(3):
    _, after = opt.update(params, after, params)
  stepped = one_schedule_step(before, after)
  assert int(stepped.count) == 2  # The injecting wrapper's own count.
  adam, scale = stepped.inner_state
  assert int(adam.count) == 4 and int(scale.count) == 2
  chex.assert_trees_all_equal(adam.mu, after.inner_state[0].mu)


def test_restart_schedules_reaches_the_schedules_inside_injected_optimizers():
  # The learning-rate schedule lives in the wrapped sgd's own state.
  opt = optax.inject_hyperparams(
      lambda momentum: optax.sgd(optax.cosine_decay_schedule(0.1, 50),
                                 momentum=momentum))(momentum=0.9)
  params = {"w": jnp.ones(2)}
  state = opt.init(params)
  for _ in range(5):
    _, state = opt.update(params, state, params)
  counts = lambda tree: [int(n.count) for n in jax.tree.leaves(
      tree, is_leaf=lambda n: isinstance(n, optax.ScaleByScheduleState))
                         if isinstance(n, optax.ScaleByScheduleState)]
  assert counts(state) == [5]
  restarted = restart_schedules(state)
  assert counts(restarted) == [0] and int(restarted.count) == 0
  # The momentum trace is kept.
  np.testing.assert_array_equal(restarted.inner_state[0].trace["w"],
                                state.inner_state[0].trace["w"])


def test_step_schedule_keeps_both_drops_when_they_share_a_step():
  from jaxcl.training.optim import schedule
  # ×0.1 from step 4 (50 % of 8) and again from step 6 (75 %).
  lr = schedule("step", 1.0, 8)
  np.testing.assert_allclose([lr(3), lr(4), lr(5), lr(6), lr(7)],
                             [1.0, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
  # 50 % and 75 % of 2 steps are both step 1: the rate drops by 0.1 twice.
  lr = schedule("step", 1.0, 2)
  np.testing.assert_allclose([lr(0), lr(1)], [1.0, 0.01], rtol=1e-6)


@flax.struct.dataclass
class _Monitored:
  """What the watcher reads of a TrainState: ``params`` is the number of
  correct monitored samples."""
  params: jax.Array
  model_state: dict
  step: jax.Array


def test_a_gain_of_exactly_the_margin_improves():
  # 50 monitored samples, margin 1/50: one more correct sample is a gain of
  # exactly the margin, whatever float32 makes of k/50 − (k−1)/50.
  counts = collections.namedtuple("Counts", "correct count loss_sum")

  def compiled_watcher(margin):
    # Compiled, as in the training loop, and once for all 50 values of k
    # (op by op, each call compiled the watcher's conditional anew).
    watcher = jaxcl.training.periodic.make_watcher(
        PeriodicEval(), EarlyStopping(patience=1, margin=margin),
        lambda state, data: counts(state.params.astype(jnp.int32)[None],
                                   jnp.array([50]), jnp.zeros(1)))
    return jax.jit(watcher.start), jax.jit(watcher.check)

  start, check = compiled_watcher(0.02)
  monitored = lambda k: _Monitored(jnp.float32(k), {}, jnp.int32(0))
  for k in range(1, 51):
    watch, _ = start(monitored(k - 1), None)
    watch, _ = check(monitored(k), watch, 1, None, True)
    assert int(watch.best_at) == 1 and not bool(watch.stopped), k
  # Less than the margin is no improvement: the next tick stops.
  start, check = compiled_watcher(0.03)
  watch, _ = start(monitored(5), None)
  watch, _ = check(monitored(6), watch, 1, None, True)
  assert int(watch.best_at) == 0 and bool(watch.stopped)


def test_validated_settings_hold_python_numbers():
  # A checkpoint's fingerprint records them: np.int64(2) and 2 must be the
  # same run (they were refused as different on resume).
  stopping = EarlyStopping(np.int64(2), margin=np.float32(0.5)).validate()
  periodic = PeriodicEval(every=np.int32(3), stream="test").validate(False)
  assert type(stopping.patience) is int and type(stopping.margin) is float
  assert type(periodic.every) is int
  assert (stopping.patience, stopping.margin, periodic.every) == (2, 0.5, 3)


def test_bad_periodic_settings_are_refused_before_compiling():
  bench = make_benchmark()
  fit = lambda **kw: jaxcl.fit(_model(), naive(), optax.sgd(0.1), bench, **kw)
  with pytest.raises(ValueError, match="valid_stream"):
    fit(periodic_eval=PeriodicEval())
  with pytest.raises(ValueError, match=r"early_stopping monitors the valid "
                     r"stream by default \(periodic_eval=None\), but the "
                     r"benchmark has no valid_stream"):
    fit(early_stopping=EarlyStopping(patience=2))
  with pytest.raises(ValueError, match="periodic_eval.unit 'epochs'.*epoch"):
    fit(periodic_eval=PeriodicEval(unit="epochs", stream="test"))
  with pytest.raises(ValueError, match="early_stopping.mode 'maximum'"):
    fit(early_stopping=EarlyStopping(2, mode="maximum"),
        periodic_eval=PeriodicEval(stream="test"))
  with pytest.raises(ValueError, match="early_stopping.patience"):
    fit(early_stopping=EarlyStopping(0),
        periodic_eval=PeriodicEval(stream="test"))
  with pytest.raises(TypeError, match="early_stopping must be"):
    fit(early_stopping=3)


def test_early_stopping_with_experiences_adapt_data_empties():
  # joint trains everything in experience 0 and leaves the others empty.
  result = jaxcl.fit(_model(), jaxcl.strategies.joint(), optax.sgd(0.1),
                     _bench(), epochs=2, batch_size=8,
                     early_stopping=EarlyStopping(patience=5))
  assert [row["epochs_trained"] for row in result.history] == [2.0, 0.0]


def _counting_model(calls):
  """The MLP, counting each run's training steps and evaluated batches."""
  base = jaxcl.models.as_model(_model())

  def apply(params, model_state, x, task, train, key):
    # An argument that differs between vmapped runs: one call per run.
    probe = jax.tree.leaves(params)[0].ravel()[0]
    jax.debug.callback(lambda _: calls.update(["train" if train else "eval"]),
                       probe)
    return base.apply(params, model_state, x, task, train, key)
  return jaxcl.models.Model(base.init, apply)


def test_vmapped_runs_compile_once_stop_as_alone_and_skip_what_none_needs():
  # Each run stops as it does alone; once every run has stopped, the epochs
  # left train and evaluate nothing, for one run as for two.
  bench = _bench()
  settings = dict(epochs=6, batch_size=8,
                  early_stopping=EarlyStopping(patience=1))
  strategy = naive()._replace(
      penalty=chex.assert_max_traces(naive().penalty, n=1))
  single, vmapped = collections.Counter(), collections.Counter()
  multi = jaxcl.fit(_counting_model(vmapped), strategy, optax.sgd(0.5), bench,
                    seeds=[0, 1], **settings)
  alone = [jaxcl.fit(_counting_model(single), naive(), optax.sgd(0.5), bench,
                     seed=seed, **settings) for seed in (0, 1)]
  jax.effects_barrier()
  for run, one in zip(multi.runs, alone):
    assert [h["epochs_trained"] for h in run.history] == [
        h["epochs_trained"] for h in one.history]
    np.testing.assert_allclose(run.accuracy_matrix, one.accuracy_matrix,
                               atol=1e-6)
  # Both stop before the last epoch: some epochs are left to skip.
  epochs = [h["epochs_trained"] for run in multi.runs for h in run.history]
  assert max(epochs) < 6
  steps = [-(-len(e) // 8) for e in bench.train_stream]
  trained = sum(h["epochs_trained"] * n for run in multi.runs
                for h, n in zip(run.history, steps))
  assert single["train"] == vmapped["train"] == trained
  assert single["eval"] == vmapped["eval"] > 0


def test_vmapped_runs_stop_by_step_as_their_single_runs_on_mnist():
  # Bundled SplitMNIST, evaluations every 10 steps: before session 15 the
  # vmapped runs' evaluations were selects, computed apart from the single
  # run's conditional, and seed 1 stopped experience 4 an epoch later (3.0
  # epochs against 2.0), ending with other parameters.
  bench = jaxcl.benchmarks.with_validation(
      jaxcl.benchmarks.split_mnist(n_experiences=5, seed=0), 0.2, seed=1)
  model = jaxcl.models.MLP(10, hidden_size=256, drop_rate=0.0)
  settings = dict(epochs=3, batch_size=32,
                  early_stopping=EarlyStopping(patience=40),
                  periodic_eval=PeriodicEval(every=10, unit="step"))
  multi = jaxcl.fit(model, naive(), optax.sgd(0.05), bench, seeds=[0, 1],
                    **settings)
  # The runs stop at different steps, and each as it does alone: a run that
  # stopped must not train on while the other does.
  epochs = [[h["epochs_trained"] for h in run.history] for run in multi.runs]
  assert epochs[0] != epochs[1]
  with tempfile.TemporaryDirectory() as folder, compilation_cache_in(folder):
    singles = [jaxcl.fit(model, naive(), optax.sgd(0.05), bench, seed=seed,
                         **settings) for seed in (0, 1)]
  for run, single in zip(multi.runs, singles):
    assert [h["epochs_trained"] for h in run.history] == [
        h["epochs_trained"] for h in single.history]
    # The restored best parameters would hide steps taken after a stop; the
    # step count and the evaluations taken do not.
    assert int(run.state.step) == int(single.state.step)
    assert [(p["experience"], p["step"]) for p in run.periodic] == [
        (p["experience"], p["step"]) for p in single.periodic]
    chex.assert_trees_all_close(run.state.params, single.state.params,
                                atol=1e-6)


def test_run_axis_must_name_the_vmap_over_runs():
  bench = _bench()
  ctx = make_context(_model(), bench, optax.sgd(0.1), batch_size=8)
  with pytest.raises(ValueError, match=r"run_axis must be the axis_name of "
                     r"the jax.vmap over runs .*got 5"):
    jaxcl.training.make_train_experience(ctx, naive(), optax.sgd(0.1),
                                         epochs=1, run_axis=5)
  train = jaxcl.training.make_train_experience(ctx, naive(), optax.sgd(0.1),
                                               epochs=1, run_axis="runs")
  state = jaxcl.training.init_state(
      ctx, naive(), optax.sgd(0.1), jax.random.key(0),
      jnp.asarray(bench.train_stream[0].x[:1]), jnp.zeros((1,), jnp.int32))
  data = jaxcl.training.experience_data(bench.train_stream[0],
                                        ctx.experience_size, bench.n_classes)
  with pytest.raises(ValueError, match=r"run_axis='runs' names no axis this "
                     r"is traced under; expected the axis_name of the "
                     r"jax.vmap over runs"):
    jax.jit(train)(state, data)
