"""CWR* against a numpy transcription of Avalanche's per-class loop."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (BatchNormMLP, device_experience, fit_seeds_alone,
                      make_benchmark)

import jaxcl
from jaxcl import cli
from jaxcl.models import MLP, MTMLP, as_model
from jaxcl.strategies import StrategyContext, cwr_star
from jaxcl.training import cross_entropy, init_state

N_CLASSES, DIM = 3, 4
HEAD = "TorchLinear_1"  # MLP's output layer


def _ctx(module):
  return StrategyContext(model=as_model(module), preprocess=lambda x: x,
                         loss=cross_entropy, n_classes=N_CLASSES,
                         n_experiences=3, input_shape=(DIM,), batch_size=2,
                         experience_size=8)


def _data(labels, index=0):
  x = np.random.default_rng(index).normal(size=(len(labels), DIM))
  return device_experience(x, labels, index, 8, N_CLASSES)


def _state(strategy, ctx):
  state = init_state(ctx, strategy, optax.sgd(0.1), jax.random.key(0),
                     jnp.zeros((1, DIM)), jnp.zeros((1,), jnp.int32))
  return state.replace(seen_classes=jnp.ones(N_CLASSES, bool))


def _head(params):
  return params[HEAD]["Dense_0"]


def _set_head(state, kernel, bias):
  params = {**state.params, HEAD: {"Dense_0": {"kernel": jnp.asarray(kernel),
                                               "bias": jnp.asarray(bias)}}}
  return state.replace(params=params)


class _AvalancheCWR:
  """Avalanche's CWRStarPlugin bookkeeping, in numpy, weights as [C, d]."""

  def __init__(self):
    self.saved, self.past = {}, {}

  def before(self, weight, labels):
    self.cur = {c: int(np.sum(labels == c)) for c in set(labels.tolist())}
    weight = np.zeros_like(weight)
    for c in self.cur:
      if c in self.saved:
        weight[c] = self.saved[c]
    return weight

  def after(self, weight):
    classes = sorted(self.cur)
    average = np.average(weight[classes])
    for c in classes:
      new = weight[c] - average
      if c in self.saved:
        w_past = np.sqrt(self.past[c] / self.cur[c])
        self.saved[c] = (self.saved[c] * w_past + new) / (w_past + 1)
        self.past[c] += self.cur[c]
      else:
        self.saved[c] = new
        self.past[c] = self.cur[c]
    weight = weight.copy()
    for c, w in self.saved.items():
      weight[c] = w
    return weight


def test_cwr_star_resets_and_consolidates_the_head_as_avalanche():
  ctx = _ctx(MLP(N_CLASSES, hidden_size=5, drop_rate=0.0))
  strategy = cwr_star()
  begin = jax.jit(functools.partial(strategy.begin_experience, ctx))
  end = jax.jit(functools.partial(strategy.end_experience, ctx))
  state = _state(strategy, ctx)
  reference = _AvalancheCWR()
  rng = np.random.default_rng(7)
  # Experience 0: classes 0 and 1; experience 1: class 1 again (a quarter
  # of the samples, so its past column weighs sqrt(4) = 2) and class 2.
  for index, labels in enumerate([[0, 0, 1, 1, 1, 1], [1, 2, 2, 2]]):
    labels = np.asarray(labels)
    data = _data(labels, index)
    expected = reference.before(np.asarray(_head(state.params)["kernel"]).T,
                                labels)
    state = begin(state, data, jax.random.key(0))
    np.testing.assert_allclose(_head(state.params)["kernel"], expected.T,
                               rtol=1e-6)
    # "Training": any kernel and bias; the bias is neither reset nor merged.
    kernel = rng.normal(size=(5, N_CLASSES)).astype(np.float32)
    bias = rng.normal(size=N_CLASSES).astype(np.float32)
    state = end(_set_head(state, kernel, bias), data, jax.random.key(0))
    head = _head(state.params)
    np.testing.assert_allclose(head["kernel"], reference.after(kernel.T).T,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(head["bias"], bias)
  assert reference.past == {0: 2, 1: 5, 2: 3}
  np.testing.assert_array_equal(state.cl_state["past_counts"], [2, 5, 3])


def test_cwr_star_freezes_everything_but_the_head_after_the_first_experience():
  ctx = _ctx(MLP(N_CLASSES, hidden_size=5, drop_rate=0.0))
  strategy = cwr_star()
  freeze = jax.jit(functools.partial(strategy.transform_grads, ctx))
  state = _state(strategy, ctx)
  grads = jax.tree.map(jnp.ones_like, state.params)
  batch, key = {"x": jnp.zeros((2, DIM))}, jax.random.key(0)
  chex.assert_trees_all_equal(freeze(grads, state, batch, key), grads)
  data = _data([0, 1])
  state = strategy.end_experience(
      ctx, strategy.begin_experience(ctx, state, data, key), data, key)
  frozen = freeze(grads, state, batch, key)
  chex.assert_trees_all_equal(frozen[HEAD], grads[HEAD])
  below = [g for k, g in frozen.items() if k != HEAD]
  assert below and all(np.all(g == 0) for g in jax.tree.leaves(below))
  # Without the freeze, nothing is touched.
  assert cwr_star(freeze_remaining_model=False).transform_grads is (
      jaxcl.strategies.naive().transform_grads)


def test_cwr_star_keeps_the_kernel_dtype():
  # A bfloat16 head came back float32, and the next call recompiled.
  ctx = _ctx(MLP(N_CLASSES, hidden_size=5, drop_rate=0.0))
  strategy = cwr_star()
  state = _state(strategy, ctx)
  bf16 = lambda tree: jax.tree.map(lambda a: a.astype(jnp.bfloat16), tree)
  state = state.replace(params=bf16(state.params), cl_state={
      **state.cl_state,
      "consolidated": bf16(state.cl_state["consolidated"])})
  data = _data([0, 1, 1])
  state = strategy.end_experience(
      ctx, strategy.begin_experience(ctx, state, data, None), data, None)
  assert _head(state.params)["kernel"].dtype == jnp.bfloat16
  assert state.cl_state["consolidated"].dtype == jnp.bfloat16


def test_cwr_star_counts_the_whole_experience_not_the_hooks_rows():
  # The hooks of a streamed experience see a subset of its rows; the counts
  # are the whole experience's, and a class the subset missed is still
  # consolidated.
  ctx = _ctx(MLP(N_CLASSES, hidden_size=5, drop_rate=0.0))
  strategy = cwr_star()
  data = _data([0, 0, 1]).replace(
      classes_mask=jnp.array([True, True, True]),
      class_counts=jnp.array([17, 9, 4], jnp.int32))
  assert int(data.experience_size) == 30
  state = strategy.begin_experience(ctx, _state(strategy, ctx), data, None)
  np.testing.assert_array_equal(state.cl_state["counts"], [17.0, 9.0, 4.0])
  state = strategy.end_experience(ctx, state, data, None)
  assert np.all(state.cl_state["has_consolidated"])


def test_cwr_star_in_fit_keeps_the_backbone_and_its_statistics():
  bench = make_benchmark(n_experiences=2)
  one_experience = dataclasses.replace(bench,
                                       train_stream=bench.train_stream[:1])
  results = [jaxcl.fit(BatchNormMLP(), cwr_star(), optax.sgd(0.1), b,
                       epochs=2, batch_size=4, seed=3)
             for b in (one_experience, bench)]
  first, both = (r.state for r in results)
  backbone = ("Dense_0", "BatchNorm_0")
  for name in backbone:
    chex.assert_trees_all_equal(both.params[name], first.params[name])
  chex.assert_trees_all_equal(both.model_state, first.model_state)
  # The head did train: classes 2 and 3 (the second experience) have
  # columns, consolidated to zero mean over both classes' entries.
  kernel = np.asarray(both.params["Dense_1"]["kernel"])
  assert np.all(np.abs(kernel[:, 2:]) > 0)
  assert np.mean(kernel[:, 2:]) == pytest.approx(0.0, abs=1e-6)
  np.testing.assert_array_equal(kernel[:, :2],
                                first.params["Dense_1"]["kernel"][:, :2])
  assert results[1].accuracy_matrix[-1, 1] > 0.5


def test_cwr_star_vmapped_seeds_equal_single_runs():
  bench = make_benchmark(n_experiences=2)
  model = MLP(4, hidden_size=8, drop_rate=0.0)
  fit_seeds_alone(model, cwr_star(), bench)


def test_cwr_star_refuses_multi_head_models_and_bad_arguments():
  with pytest.raises(TypeError, match="freeze_remaining_model must be a bool"):
    cwr_star(freeze_remaining_model="yes")
  ctx = _ctx(MTMLP(N_CLASSES, n_tasks=2, hidden_size=5, drop_rate=0.0))
  params = ctx.model.init(jax.random.key(0), jnp.zeros((1, DIM)),
                          jnp.zeros((1,), jnp.int32))[0]
  with pytest.raises(ValueError, match=r"cwr_star needs a single output layer"
                     r".*kernel shape \(2, 5, 3\).*multi-head"):
    cwr_star().init(ctx, params, jax.random.key(0))


def test_cwr_star_from_the_command_line(tmp_path):
  args = ["run", "--strategy", "cwr_star", "--freeze-remaining-model", "false",
          "--n-experiences", "2", "--epochs", "1", "--hidden-size", "16",
          "--no-progress", "--compilation-cache", "", "--logdir",
          str(tmp_path)]
  assert cli.main(args) == 0
