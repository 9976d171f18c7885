"""The opt-in minibatch metrics: every optimizer step's loss and accuracy."""

import io

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_benchmark

import jaxcl
from jaxcl import loggers
from jaxcl.loggers import MetricWriter
from jaxcl.strategies import Strategy, naive

WITH_MINIBATCH = [*jaxcl.evaluation.DEFAULT_METRICS, "minibatch"]
# Experience 0: classes 0 and 1, 24 samples (3 full batches of 8);
# experience 1: classes 2 and 3, 9 samples (8 + 1, and one empty step).
SIZES, BATCH = [12, 12, 7, 2], 8


def _fit(strategy=None, optimizer=None, bench=None, **kwargs):
  return jaxcl.fit(jaxcl.models.MLP(num_classes=4, hidden_size=8,
                                    drop_rate=0.0),
                   strategy or naive(), optimizer or optax.sgd(0.1),
                   bench or make_benchmark(sizes=SIZES),
                   **{"batch_size": BATCH, "epochs": 2,
                      "metrics": WITH_MINIBATCH, **kwargs})


class _Scalars(MetricWriter):
  """Keeps every scalar write."""

  def __init__(self):
    self.writes = []

  def write_scalars(self, step, scalars):
    self.writes.append((step, dict(scalars)))


def _numpy_logits(params, x):
  hidden, out = params["TorchLinear_0"]["Dense_0"], params[
      "TorchLinear_1"]["Dense_0"]
  h = np.maximum(x @ np.asarray(hidden["kernel"]) + np.asarray(hidden["bias"]),
                 0.0)
  return h @ np.asarray(out["kernel"]) + np.asarray(out["bias"])


def test_steps_sum_to_the_experience_losses_of_a_fixed_model():
  # With a zero learning rate every step sees the initial model, so over an
  # epoch the steps' losses weighted by their sample counts add up to the
  # cross-entropy summed over the experience, whatever the order; likewise
  # the accuracies to the number of right predictions. The head is masked
  # to the classes seen so far.
  bench = make_benchmark(sizes=SIZES)
  result = _fit(optimizer=optax.sgd(0.0), bench=bench)
  steps = result.minibatch
  seen = np.zeros(4, bool)
  for i, experience in enumerate(bench.train_stream):
    seen[list(experience.classes)] = True
    logits = np.where(seen, _numpy_logits(result.state.params,
                                          np.asarray(experience.x,
                                                     np.float64)), -np.inf)
    log_p = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(
        1, keepdims=True)) - logits.max(1, keepdims=True)
    y = np.asarray(experience.y)
    cross_entropy = -log_p[np.arange(len(y)), y].sum()
    right = (logits.argmax(1) == y).sum()
    n = len(experience)
    counts = [BATCH] * (n // BATCH) + ([n % BATCH] if n % BATCH else [])
    for epoch in range(2):
      here = (steps["experience"] == i) & (steps["epoch"] == epoch)
      np.testing.assert_allclose(steps["loss"][here] @ counts, cross_entropy,
                                 rtol=1e-5)
      np.testing.assert_allclose(steps["accuracy"][here] @ counts, right,
                                 rtol=1e-6)
  # Each epoch draws a new order: the same model, other batches (of the 24
  # samples of experience 0 in batches of 8; experience 1's 9 samples keep
  # their last batch of one with odds of 1 in 9).
  epochs = [steps["loss"][(steps["experience"] == 0) & (steps["epoch"] == e)]
            for e in range(2)]
  assert len(epochs[0]) == 3 and not np.allclose(*epochs)


def test_one_entry_per_step_taken_in_order():
  result = _fit()
  steps = result.minibatch
  # 3 steps per epoch for experience 0, 2 for experience 1 (its third,
  # padding only, is skipped and leaves no entry).
  np.testing.assert_array_equal(steps["experience"], [0] * 6 + [1] * 4)
  np.testing.assert_array_equal(steps["epoch"],
                                [0, 0, 0, 1, 1, 1, 0, 0, 1, 1])
  np.testing.assert_array_equal(steps["step"], np.arange(1, 11))
  assert int(result.state.step) == 10
  assert set(steps) == {"experience", "epoch", "step", "loss", "accuracy"}
  assert all(len(v) == 10 for v in steps.values())
  # The epoch's training loss is the sample-weighted mean of its steps'.
  last = steps["loss"][-2:] @ [8, 1] / 9
  np.testing.assert_allclose(result.metrics["train_loss"], last, rtol=1e-6)


def test_not_recorded_unless_selected():
  writer = _Scalars()
  result = _fit(metrics=None, writer=writer)
  assert result.minibatch is None
  assert not any(name.startswith("minibatch/")
                 for _, scalars in writer.writes for name in scalars)


def test_vmapped_seeds_equal_single_runs():
  both = _fit(seeds=[0, 1])
  for seed, run in zip([0, 1], both.runs):
    alone = _fit(seed=seed).minibatch
    for name, column in alone.items():
      np.testing.assert_allclose(run.minibatch[name], column, rtol=1e-5,
                                 atol=1e-6)


def test_streamed_experiences_give_the_on_device_entries():
  # A budget of 22 samples of 36 bytes streams the experiences of 25 and 9
  # samples in chunks of 2 steps of 1 sample; the last chunk of each epoch
  # of experience 0 ends with a padding step, which leaves no entry.
  setting = dict(bench=make_benchmark(sizes=[13, 12, 7, 2]), batch_size=1)
  on_device = _fit(**setting).minibatch
  streamed = _fit(**setting, device_memory_budget_mb=22 * 36 / 2**20).minibatch
  assert len(on_device["step"]) == 2 * (25 + 9)
  for name, column in on_device.items():
    np.testing.assert_allclose(streamed[name], column, rtol=1e-5, atol=1e-6)


def test_online_blocks_give_the_per_experience_entries():
  # Mini-experiences trained in blocks between evaluations (the default on
  # online streams) and one by one (evaluated after each).
  bench = jaxcl.benchmarks.split_online(make_benchmark(sizes=SIZES), 5)
  blocks = _fit(bench=bench, epochs=1, batch_size=2)
  each = _fit(bench=bench, epochs=1, batch_size=2, eval_every=1)
  n_steps = sum(-(-len(e) // 2) for e in bench.train_stream)
  assert len(blocks.minibatch["step"]) == n_steps
  for name, column in each.minibatch.items():
    np.testing.assert_allclose(blocks.minibatch[name], column, rtol=1e-5,
                               atol=1e-6)


def test_writers_get_the_mean_and_std_over_runs_at_each_step():
  writer = _Scalars()
  result = _fit(seeds=[0, 1], writer=writer)
  written = {step: scalars for step, scalars in writer.writes
             if "minibatch/loss" in scalars}
  assert sorted(written) == list(range(1, 11))
  losses = np.stack([run.minibatch["loss"] for run in result.runs])
  accuracies = np.stack([run.minibatch["accuracy"] for run in result.runs])
  for k, step in enumerate(range(1, 11)):
    assert written[step]["minibatch/loss"] == pytest.approx(
        losses[:, k].mean())
    assert written[step]["minibatch/loss_std"] == pytest.approx(
        losses[:, k].std())
    assert written[step]["minibatch/accuracy"] == pytest.approx(
        accuracies[:, k].mean())


def test_runs_that_stop_early_at_different_steps_write_each_step_once():
  # Early stopping ends each seed's experience 0 after a different number
  # of steps, so a step number falls in experience 0 for one run and in
  # experience 1 for another: it is written once, over all three runs.
  bench = jaxcl.benchmarks.with_validation(
      make_benchmark(sizes=[40, 40, 40, 40], seed=3), 0.3)
  writer = _Scalars()
  result = _fit(bench=bench, epochs=12, seeds=[0, 1, 2],
                optimizer=optax.sgd(0.5), writer=writer,
                periodic_eval=jaxcl.PeriodicEval(every=1, unit="step",
                                                 stream="valid"),
                early_stopping=jaxcl.EarlyStopping(patience=3))
  experiences = {}
  for run in result.runs:
    for step, experience in zip(run.minibatch["step"],
                                run.minibatch["experience"]):
      experiences.setdefault(int(step), set()).add(int(experience))
  assert any(len(e) > 1 for e in experiences.values())
  written = [step for step, scalars in writer.writes
             if "minibatch/loss" in scalars]
  assert sorted(written) == sorted(experiences)  # Each step once.
  for step, scalars in writer.writes:
    if "minibatch/loss" in scalars:
      losses = [run.minibatch["loss"][run.minibatch["step"] == step]
                for run in result.runs]
      assert scalars["minibatch/loss"] == pytest.approx(
          np.mean(np.concatenate(losses)))


def test_a_flagged_run_keeps_the_steps_before_its_nonfinite_loss():
  # NaN penalty from the first step on classes 2 and 3 (experience 1).
  nan_on_1 = Strategy(
      name="nan_on_1", penalty=lambda ctx, p, s, batch, logits: jnp.where(
          jnp.any((batch["y"] >= 2) & (batch["weight"] > 0)), jnp.nan, 0.0))
  with pytest.warns(RuntimeWarning, match="experience 1 at optimizer step 6"):
    result = _fit(strategy=nan_on_1, on_nonfinite="flag")
  assert result.nonfinite == (1, 6)
  steps = result.minibatch
  assert np.isfinite(steps["loss"][:6]).all()
  assert np.isfinite(steps["accuracy"][:6]).all()
  # The bad step keeps its loss; what measures the model after it is NaN.
  assert np.isnan(steps["loss"][6:]).all()
  assert not np.isnan(steps["accuracy"][6])
  assert np.isnan(steps["accuracy"][7:]).all()
  np.testing.assert_array_equal(steps["step"], np.arange(1, 11))


def test_a_resumed_run_keeps_the_entries_before_its_checkpoint(tmp_path):
  ckpt = tmp_path / "ckpt"
  full = _fit(checkpoint_dir=ckpt, seed=1)
  (ckpt / "2").rename(tmp_path / "elsewhere")
  writer = _Scalars()
  resumed = _fit(checkpoint_dir=ckpt, seed=1, writer=writer)
  for name, column in full.minibatch.items():
    np.testing.assert_array_equal(resumed.minibatch[name], column)
  # Only experience 1's steps were trained, and written, again.
  assert sorted(step for step, scalars in writer.writes
                if "minibatch/loss" in scalars) == [7, 8, 9, 10]


def test_line_writers_leave_out_the_per_step_lines_unless_asked(tmp_path):
  out = io.StringIO()
  writer = loggers.ConsoleWriter(out, skip=["minibatch/"])
  writer.write_scalars(3, {"minibatch/loss": 0.5})
  writer.write_scalars(4, {"minibatch/loss": 0.5, "train/loss": 0.25})
  assert out.getvalue() == "step 4 | train/loss 0.2500\n"
  with pytest.raises(TypeError, match="skip must be a sequence of name "
                     "prefixes, got the string 'minibatch/'"):
    loggers.ConsoleWriter(out, skip="minibatch/")
  for bad in (None, [1], [b"minibatch/"]):
    with pytest.raises(TypeError, match=r"skip must be a sequence of name "
                       r"prefixes \(strings\), got"):
      loggers.ConsoleWriter(out, skip=bad)
  with pytest.raises(TypeError, match="skip must be"):
    loggers.TextLogWriter(tmp_path / "refused.txt", skip=[1])
  assert not (tmp_path / "refused.txt").exists()
  with pytest.raises(TypeError, match="minibatch_lines must be True or "
                     "False, got 'no'"):
    loggers.create_writers(None, minibatch_lines="no")
  for lines, expected in ((False, 0), (True, 1)):
    logdir = tmp_path / str(lines)
    writer = loggers.create_writers(logdir, console=False, tensorboard=False,
                                    minibatch_lines=lines)
    writer.write_scalars(1, {"minibatch/loss": 0.5})
    writer.close()
    assert (logdir / "log.txt").read_text().count("minibatch/loss") == expected
    # Avalanche's training CSV holds the per-step values with the epochs'.
    assert "1,minibatch/loss,0.5" in (
        logdir / "training_results.csv").read_text()
    assert "minibatch" not in (logdir / "eval_results.csv").read_text()
