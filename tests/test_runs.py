"""Many runs in one program: seeds and sweeps equal separate runs."""

import importlib
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcl
from jaxcl.strategies import Strategy, ewc, from_scratch, naive


def test_seeds_equal_separate_runs(tiny_benchmark, tiny_model):
  kwargs = dict(epochs=2, batch_size=5)
  multi = jaxcl.fit(tiny_model, naive(), optax.sgd(0.05), tiny_benchmark,
                    seeds=[0, 3, 7], **kwargs)
  assert multi.labels == (0, 3, 7) and multi.accuracy_matrices.shape == (3, 2, 2)
  np.testing.assert_array_equal(multi.trained_columns, [0, 1])
  for seed, run in zip(multi.labels, multi.runs):
    single = jaxcl.fit(tiny_model, naive(), optax.sgd(0.05), tiny_benchmark,
                       seed=seed, **kwargs)
    np.testing.assert_allclose(run.accuracy_matrix, single.accuracy_matrix)
    chex.assert_trees_all_close(run.state.params, single.state.params,
                                rtol=1e-5, atol=1e-6)
    assert run.metrics["train_loss"] == pytest.approx(
        single.metrics["train_loss"], rel=1e-4)
  values = multi.metrics_per_run["stream_accuracy"]
  assert multi.metrics["stream_accuracy"] == pytest.approx(
      (np.mean(values), np.std(values)))


def test_accelerators_vmapped_evaluation_equals_the_cpus_one_by_one(
    tiny_benchmark, tiny_model, monkeypatch):
  # On a CPU stacked runs are evaluated one after another (lax.map); on GPUs
  # and TPUs vmapped. CI has no accelerator: run the vmapped branch here.
  fit_module = importlib.import_module("jaxcl.training.fit")
  kwargs = dict(seeds=[0, 3], epochs=1, batch_size=5)
  one_by_one = jaxcl.fit(tiny_model, naive(), optax.sgd(0.05), tiny_benchmark,
                         **kwargs)
  monkeypatch.setattr(fit_module, "_runs_one_by_one", lambda: False)
  vmapped = jaxcl.fit(tiny_model, naive(), optax.sgd(0.05), tiny_benchmark,
                      **kwargs)
  np.testing.assert_array_equal(vmapped.accuracy_matrices,
                                one_by_one.accuracy_matrices)
  for a, b in zip(vmapped.runs, one_by_one.runs, strict=True):
    assert a.metrics["stream_loss"] == pytest.approx(b.metrics["stream_loss"],
                                                     rel=1e-6)
    np.testing.assert_array_equal(a.confusion_matrix, b.confusion_matrix)


# from_scratch re-initialises the optimizer at every experience: each run
# must keep its own injected learning rate.
@pytest.mark.parametrize("strategy", [naive(), from_scratch()],
                         ids=["naive", "from_scratch"])
def test_learning_rate_sweep_equals_separate_runs(tiny_benchmark, tiny_model,
                                                  strategy):
  lrs = [0.01, 0.1]
  sgd = optax.inject_hyperparams(optax.sgd)
  multi = jaxcl.sweep(tiny_model, tiny_benchmark, lrs, strategy=strategy,
                      optimizer=lambda lr: sgd(learning_rate=lr), batch_size=5)
  assert multi.labels == (0.01, 0.1)
  for lr, run in zip(lrs, multi.runs):
    single = jaxcl.fit(tiny_model, strategy, sgd(learning_rate=lr),
                       tiny_benchmark, batch_size=5)
    chex.assert_trees_all_close(run.state.params, single.state.params,
                                rtol=1e-5, atol=1e-6)


def test_sweep_refuses_a_value_that_is_not_in_the_state(tiny_benchmark,
                                                        tiny_model):
  def constant_penalty(value):  # Closes over the value: not sweepable.
    return Strategy(name="c", penalty=lambda ctx, p, s, b, logits: jnp.float32(value))
  with pytest.raises(ValueError, match="not stored in the state"):
    jaxcl.sweep(tiny_model, tiny_benchmark, [1.0, 2.0],
                strategy=constant_penalty, optimizer=optax.sgd(0.1))


def test_sweep_without_checkpoints_builds_no_fingerprint(tiny_benchmark,
                                                         tiny_model,
                                                         monkeypatch):
  # The fingerprint hashes every sample (reading lazy inputs whole); only
  # checkpoints and several hosts need it, sweeps or not.
  def refuse(**kwargs):
    raise AssertionError("built a checkpoint fingerprint")
  monkeypatch.setattr(importlib.import_module("jaxcl.checkpoint"),
                      "run_config", refuse)
  sgd = optax.inject_hyperparams(optax.sgd)
  result = jaxcl.sweep(tiny_model, tiny_benchmark, [0.01, 0.1],
                       strategy=naive(),
                       optimizer=lambda lr: sgd(learning_rate=lr),
                       eval_before_training=False,
                       metrics=jaxcl.evaluation.metrics(top_k=2))
  # Every metric group but no evaluation before training: as metrics=None,
  # forward transfer is NaN rather than refused.
  assert np.isnan(result.metrics["forward_transfer"][0])


def test_sweep_refuses_values_that_reach_nothing_before_compiling_training(
    tiny_benchmark, tiny_model, monkeypatch):
  compiled = []
  compile_ = jax.stages.Lowered.compile
  monkeypatch.setattr(jax.stages.Lowered, "compile", lambda self, *a, **k: (
      compiled.append(self), compile_(self, *a, **k))[1])
  same = ewc(ewc_lambda=1.0)
  # A function that ignores its value: every run would be run 0.
  with pytest.raises(ValueError, match="not stored in the state"):
    jaxcl.sweep(tiny_model, tiny_benchmark, [1.0, 2.0],
                strategy=lambda v: same, optimizer=optax.sgd(0.1))
  # The initial state's programs alone (the model's, then the rest).
  assert [c.as_text().split()[1] for c in compiled] == [
      "@jit_init_model", "@jit_init_state"]
  with pytest.raises(TypeError, match="sweep\\(\\) needs strategy or "
                     "optimizer to be a function of the swept value"):
    jaxcl.sweep(tiny_model, tiny_benchmark, [1.0, 2.0], strategy=same,
                optimizer=optax.sgd(0.1))


@pytest.mark.parametrize("strategy", [
    jaxcl.strategies.streaming_lda(),
    jaxcl.strategies.la_maml(),
    jaxcl.strategies.chain(ewc(), jaxcl.strategies.la_maml()),
], ids=["streaming_lda", "la_maml", "chain_with_la_maml"])
def test_sweep_refuses_an_optimizer_the_strategy_never_uses(
    tiny_benchmark, tiny_model, strategy, no_compiling):
  # The CLI refuses --sweep lr for these; Python's sweep ran identical runs.
  sgd = optax.inject_hyperparams(optax.sgd)
  with pytest.raises(ValueError, match="varies only the optimizer, which "
                     f"strategy '{re.escape(strategy.name)}' never uses"):
    jaxcl.sweep(tiny_model, tiny_benchmark, [0.1, 0.5], strategy=strategy,
                optimizer=lambda lr: sgd(learning_rate=lr))


@pytest.mark.parametrize("strategy", [
    lambda v: from_scratch(),  # Its state holds a key.
    lambda v: jaxcl.strategies.rar(mem_size=8, use_adversarial_replay=v > 0),
    lambda v: jaxcl.strategies.chain(
        ewc(), jaxcl.strategies.rar(mem_size=8,
                                    use_adversarial_replay=v > 0)),
], ids=["key_in_state", "hooks_switched", "hooks_switched_in_a_chain"])
def test_sweep_refuses_values_that_key_or_hooks_hid(tiny_benchmark,
                                                    tiny_model, strategy):
  # Keys compared unequal whatever their data, and a value that switches a
  # hook on made the states differ: both swept runs trained as run 0.
  with pytest.raises(ValueError, match="run 1 of the sweep (has the same "
                     "strategy and optimizer state|builds a strategy with "
                     "other hooks) than run 0|as run 0"):
    jaxcl.sweep(tiny_model, tiny_benchmark, [0.0, 1.0], strategy=strategy,
                optimizer=optax.sgd(0.1))


def test_rar_sweep_over_attack_steps_equals_runs_alone(tiny_benchmark,
                                                       tiny_model):
  # The number of MI-FGSM steps lives in the state: each run takes its own.
  rar = lambda n: jaxcl.strategies.rar(mem_size=8, iter_fgsm=int(n),
                                       decay_factor_fgsm=0.5)
  settings = dict(batch_size=5, epochs=2)
  swept = jaxcl.sweep(tiny_model, tiny_benchmark, [2, 5], strategy=rar,
                      optimizer=optax.sgd(0.1), **settings)
  for run, n in zip(swept.runs, (2, 5)):
    alone = jaxcl.fit(tiny_model, rar(n), optax.sgd(0.1), tiny_benchmark,
                      **settings)
    chex.assert_trees_all_close(run.state.params, alone.state.params,
                                rtol=1e-5, atol=1e-6)


def test_sweep_refuses_a_value_the_optimizer_recomputes(tiny_benchmark,
                                                        tiny_model):
  # inject_hyperparams stores the schedule's value but recomputes it from
  # run 0's schedule in every update: run 1 would silently train at run 0's.
  def scheduled(lr):
    return optax.inject_hyperparams(optax.sgd)(
        learning_rate=optax.linear_schedule(lr, 0.0, 20))
  with pytest.raises(ValueError, match="run 1 of the sweep would train with "
                     "run 0's optimizer"):
    jaxcl.sweep(tiny_model, tiny_benchmark, [0.05, 0.5], strategy=naive(),
                optimizer=scheduled, batch_size=5)


def test_sweep_values_of_mixed_types_are_promoted(tiny_benchmark, tiny_model):
  sgd = optax.inject_hyperparams(optax.sgd)
  multi = jaxcl.sweep(tiny_model, tiny_benchmark, [1, 0.1], strategy=naive(),
                      optimizer=lambda lr: sgd(learning_rate=lr), batch_size=5)
  single = jaxcl.fit(tiny_model, naive(), sgd(learning_rate=1.0),
                     tiny_benchmark, batch_size=5)
  chex.assert_trees_all_close(multi.runs[0].state.params, single.state.params,
                              rtol=1e-5, atol=1e-6)


def test_sweep_refuses_values_one_program_cannot_serve(tiny_benchmark,
                                                       tiny_model):
  replay = lambda size: jaxcl.strategies.replay(mem_size=int(size))
  with pytest.raises(ValueError, match=r"run 1 of the sweep builds state.* "
                     r"of shape \(8, .*run 0 of \(4, "):
    jaxcl.sweep(tiny_model, tiny_benchmark, [4, 8], strategy=replay,
                optimizer=optax.sgd(0.1), batch_size=5)
  with pytest.raises(ValueError, match=r"values must be distinct.*0\.1 "
                     "repeated"):
    jaxcl.sweep(tiny_model, tiny_benchmark, [0.1, 0.1],
                strategy=lambda v: jaxcl.strategies.ewc(ewc_lambda=v),
                optimizer=optax.sgd(0.1))
  with pytest.raises(ValueError, match=r"seeds must be distinct"):
    jaxcl.fit(tiny_model, naive(), optax.sgd(0.1), tiny_benchmark,
              seeds=[0, 1, 0])
  with pytest.raises(TypeError, match="one seed"):
    jaxcl.sweep(tiny_model, tiny_benchmark, [0.1, 1.0],
                strategy=lambda v: jaxcl.strategies.ewc(ewc_lambda=v),
                optimizer=optax.sgd(0.1), seeds=[0, 1])


def test_mean_and_std_over_runs_leave_out_nan_runs():
  # As the writers' values: a run without a value does not make the
  # summary NaN; only every run's being NaN does.
  mean_std = importlib.import_module("jaxcl.training.fit")._mean_std
  assert mean_std([0.5, float("nan"), 0.7]) == pytest.approx((0.6, 0.1))
  assert all(np.isnan(mean_std([float("nan")] * 2)))
  # The writers get no NaN aggregate: an infinite run's std is left out.
  with_std = importlib.import_module("jaxcl.training.fit")._with_std
  inf = float("inf")
  assert with_std("loss", [inf, 1.0]) == {"loss": inf}
  assert with_std("loss", [inf, -inf]) == {}
  assert with_std("loss", [1.0, float("nan")]) == {"loss": 1.0}
  assert with_std("loss", [1.0, 2.0]) == {"loss": 1.5, "loss_std": 0.5}
