"""MER against a numpy transcription of Avalanche's inner and outer updates."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (assert_trees_close, fit_seeds_alone, hook_context,
                      make_benchmark)

import jaxcl
from jaxcl import cli
from jaxcl.strategies import Strategy, buffers, chain, mer
from jaxcl.training import init_state, make_train_step

N_CLASSES, DIM = 3, 4


def _ctx():
  return hook_context(nn.Dense(N_CLASSES), n_classes=N_CLASSES, dim=DIM)


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def _avalanche_mer(w, b, samples, n_inner_steps, beta, gamma, lr):
  """MER's update with plain SGD on a linear model, as Avalanche runs it:
  one step per sample (the batch's, then the memory's), Reptile within the
  batch with beta, across batches with gamma."""
  w_before, b_before = w.copy(), b.copy()
  for _ in range(n_inner_steps):
    w_inner, b_inner = w.copy(), b.copy()
    for x, y in samples:
      grad = _softmax(x @ w + b)
      grad[y] -= 1.0
      w, b = w - lr * np.outer(x, grad), b - lr * grad
    w, b = w_inner + beta * (w - w_inner), b_inner + beta * (b - b_inner)
  return w_before + gamma * (w - w_before), b_before + gamma * (b - b_before)


def test_mer_step_is_avalanches_update():
  ctx, lr = _ctx(), 0.5
  strategy = mer(mem_size=5, batch_size_mem=3, n_inner_steps=2, beta=0.3,
                 gamma=0.6)
  state = init_state(ctx, strategy, optax.sgd(lr), jax.random.key(0),
                     jnp.zeros((1, DIM)), jnp.zeros((1,), jnp.int32))
  state = state.replace(seen_classes=jnp.ones(N_CLASSES, bool))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, DIM)).astype(np.float32)
  # One stored sample: every draw puts it first, the empty slots after it.
  memory = buffers.add(state.cl_state.memory, jax.random.key(1), x[4:],
                       jnp.array([2]),
                       jnp.zeros(1, jnp.int32))
  state = state.replace(cl_state=state.cl_state._replace(memory=memory))
  # Row 3 is padding: it takes no step.
  batch = {"x": jnp.asarray(x[:4]), "y": jnp.array([0, 1, 1, 0]),
           "task": jnp.zeros(4, jnp.int32),
           "weight": jnp.array([1.0, 1.0, 1.0, 0.0])}
  new, _, loss = jax.jit(make_train_step(ctx, strategy, optax.sgd(lr)))(
      state, batch, jax.random.key(2))

  params = state.params
  w, b = _avalanche_mer(
      np.asarray(params["kernel"], np.float64),
      np.asarray(params["bias"], np.float64),
      [(x[0], 0), (x[1], 1), (x[2], 1), (x[4], 2)], 2, 0.3, 0.6, lr)
  np.testing.assert_allclose(new.params["kernel"], w, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(new.params["bias"], b, rtol=1e-5,
                             atol=1e-6)
  # Reported: the batch's loss under the updated parameters.
  log_p = np.log(_softmax(x[:3].astype(np.float64) @ w + b))
  np.testing.assert_allclose(loss, -log_p[[0, 1, 2], [0, 1, 1]].mean(),
                             rtol=1e-5)
  assert int(new.step) == 1  # The whole update is one step of the loop.


def test_one_inner_step_without_reptile_is_training_sample_by_sample():
  # With beta = gamma = 1, one inner step and an empty memory (a single
  # experience), MER takes the batch's steps one sample at a time: naive
  # training with batches of 1 in the same order, momentum carried over.
  bench = make_benchmark(n_classes=2, n_experiences=1, per_class=12)
  model = jaxcl.models.MLP(num_classes=2, hidden_size=8, drop_rate=0.0)
  optimizer = optax.sgd(0.1, momentum=0.9)
  merged = jaxcl.fit(model, mer(n_inner_steps=1, beta=1.0, gamma=1.0),
                     optimizer, bench, batch_size=5, epochs=2)
  alone = jaxcl.fit(model, jaxcl.strategies.naive(), optimizer, bench,
                    batch_size=1, epochs=2)
  assert int(merged.state.step) == 2 * 5 and int(alone.state.step) == 2 * 24
  assert_trees_close(merged.state.params, alone.state.params)
  np.testing.assert_array_equal(merged.accuracy_matrix, alone.accuracy_matrix)


def test_schedules_advance_once_per_batch():
  # MER applies the optimizer once per sample and inner step; a schedule
  # sized in batches (the CLI's --lr-schedule) must not run out early.
  bench = make_benchmark(n_classes=2, n_experiences=1, per_class=12)
  model = jaxcl.models.MLP(num_classes=2, hidden_size=8, drop_rate=0.0)
  run = jaxcl.fit(model, mer(n_inner_steps=2),
                  optax.sgd(optax.linear_schedule(0.1, 0.0, 10)), bench,
                  batch_size=5, epochs=2, metrics=["accuracy"])
  counts = [int(node.count) for node in jax.tree.leaves(
      run.state.opt_state,
      is_leaf=lambda n: isinstance(n, optax.ScaleByScheduleState))
            if isinstance(node, optax.ScaleByScheduleState)]
  assert counts == [2 * 5]  # 24 samples in batches of 5, twice.


def test_every_update_of_a_batch_uses_the_batchs_learning_rate():
  # A rate of 0.5 at batch 0 and 0 from batch 1 on: all of batch 0's
  # single-sample updates take 0.5, as with a constant 0.5 (Avalanche's
  # scheduler never steps inside a batch); the schedule then counts 1.
  ctx = _ctx()
  strategy = mer(mem_size=5, batch_size_mem=1, n_inner_steps=2)
  x = np.random.default_rng(0).normal(size=(4, DIM)).astype(np.float32)
  batch = {"x": jnp.asarray(x), "y": jnp.array([0, 1, 2, 0]),
           "task": jnp.zeros(4, jnp.int32), "weight": jnp.ones(4)}

  def one_batch(rate):
    opt = optax.sgd(rate)
    state = init_state(ctx, strategy, opt, jax.random.key(0),
                       jnp.zeros((1, DIM)), jnp.zeros((1,), jnp.int32))
    state = state.replace(seen_classes=jnp.ones(N_CLASSES, bool))
    return jax.jit(make_train_step(ctx, strategy, opt))(
        state, batch, jax.random.key(2))[0]

  scheduled = one_batch(optax.piecewise_constant_schedule(0.5, {1: 0.0}))
  assert_trees_close(scheduled.params, one_batch(0.5).params, atol=1e-7)
  assert int(scheduled.opt_state[-1].count) == 1


def test_memory_is_a_reservoir_of_the_stream():
  bench = make_benchmark(n_classes=4, n_experiences=2, per_class=6)
  model = jaxcl.models.MLP(num_classes=4, hidden_size=8, drop_rate=0.0)
  # Room for every sample: all 24 are kept once.
  full = jaxcl.fit(model, mer(mem_size=30, n_inner_steps=1), optax.sgd(0.05),
                   bench, batch_size=4).state.cl_state.memory
  assert int(buffers.size(full)) == 24
  stored = np.asarray(full.x)[np.asarray(full.valid)]
  everything = np.concatenate([e.x for e in bench.train_stream])
  assert sorted(map(tuple, stored.round(5))) == sorted(
      map(tuple, everything.round(5)))
  # Ten slots: a uniform sample of both experiences' 24.
  small = jaxcl.fit(model, mer(mem_size=10, n_inner_steps=1),
                    optax.sgd(0.05), bench, batch_size=4).state.cl_state.memory
  assert int(buffers.size(small)) == 10 and int(small.seen) == 24


def test_vmapped_seeds_equal_single_runs():
  bench = make_benchmark(n_classes=4, n_experiences=2, per_class=6)
  model = jaxcl.models.MLP(num_classes=4, hidden_size=8, drop_rate=0.25)
  fit_seeds_alone(model, mer(mem_size=8, batch_size_mem=3, n_inner_steps=2),
                  bench, epochs=1)


def test_sweeps_over_the_reptile_coefficients_equal_single_runs():
  bench = make_benchmark(n_classes=4, n_experiences=2, per_class=6)
  model = jaxcl.models.MLP(num_classes=4, hidden_size=8, drop_rate=0.0)
  swept = jaxcl.sweep(model, bench, [0.2, 0.7], batch_size=4,
                      strategy=lambda gamma: mer(n_inner_steps=2, gamma=gamma),
                      optimizer=optax.sgd(0.1))
  for gamma, run in zip([0.2, 0.7], swept.runs):
    alone = jaxcl.fit(model, mer(n_inner_steps=2, gamma=gamma),
                      optax.sgd(0.1), bench, batch_size=4)
    assert_trees_close(run.state.params, alone.state.params)


def test_chain_takes_penalties_but_refuses_per_step_hooks():
  # A chained penalty enters every single-sample step: with the setting of
  # the test above, MER with weight decay as a penalty is naive training
  # with it, sample by sample.
  bench = make_benchmark(n_classes=2, n_experiences=1, per_class=12)
  model = jaxcl.models.MLP(num_classes=2, hidden_size=8, drop_rate=0.0)
  decay = Strategy(name="l2", penalty=lambda ctx, params, s, batch, logits:
                   0.05 * sum(jnp.sum(p ** 2)
                              for p in jax.tree.leaves(params)))
  merged = jaxcl.fit(model, chain(mer(n_inner_steps=1, beta=1.0, gamma=1.0),
                                  decay), optax.sgd(0.1), bench, batch_size=5)
  alone = jaxcl.fit(model, decay, optax.sgd(0.1), bench, batch_size=1)
  plain = jaxcl.fit(model, mer(n_inner_steps=1, beta=1.0, gamma=1.0),
                    optax.sgd(0.1), bench, batch_size=5)
  assert_trees_close(merged.state.params, alone.state.params)
  for a, c in zip(jax.tree.leaves(merged.state.params),
                  jax.tree.leaves(plain.state.params)):
    assert not np.allclose(a, c, atol=1e-3)
  with pytest.raises(ValueError, match="'mer' replaces the optimizer step "
                     r"\(update\), and 'replay' has per-step hooks "
                     r"\(transform_batch\)"):
    chain(mer(), jaxcl.strategies.replay())
  with pytest.raises(ValueError, match=r"'si' has per-step hooks "
                     r"\(after_step\)"):
    chain(jaxcl.strategies.si(), mer())
  with pytest.raises(ValueError, match="at most one strategy in a chain"):
    chain(mer(), mer())
  # Penalty-only strategies are welcome nested too.
  assert chain(mer(), chain(jaxcl.strategies.ewc(),
                            jaxcl.strategies.mas())).update is not None
  # A hand-built strategy with both is refused before anything compiles.
  both = mer()._replace(name="both", after_step=lambda *args: ())
  with pytest.raises(ValueError, match="strategy 'both' replaces the "
                     "optimizer step"):
    jaxcl.fit(model, both, optax.sgd(0.1), bench)


@pytest.mark.parametrize("kwargs, message", [
    (dict(beta=0.0), r"beta must be in \(0, inf\), got 0.0"),
    (dict(gamma=-1), r"gamma must be in \(0, inf\), got -1"),
    (dict(n_inner_steps=0), "n_inner_steps must be a positive"),
    (dict(batch_size_mem=0), "batch_size_mem must be a positive"),
    (dict(mem_size=1.5), "mem_size must be"),
])
def test_bad_arguments_are_refused(kwargs, message):
  with pytest.raises((ValueError, TypeError), match=message):
    mer(**kwargs)


def test_cli_runs_mer(tmp_path):
  assert cli.main(["run", "--n-experiences", "2", "--hidden-size", "16",
                   "--strategy", "mer", "--n-inner-steps", "1",
                   "--mem-size", "50", "--logdir", str(tmp_path / "mer"),
                   "--no-progress", "--no-tensorboard", "--quiet",
                   "--compilation-cache", ""]) == 0
