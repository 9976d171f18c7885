"""PackNet: pruning by magnitude, frozen task weights, per-task prediction."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (BatchNormMLP, assert_trees_close, fit_seeds_alone,
                      make_benchmark, tiny_cli_metrics)

import jaxcl
from jaxcl.models import MLP, MTMLP
from jaxcl.strategies import packnet, prune_smallest, task_weights
from jaxcl.training import (init_state, make_context, make_train_experience,
                            stack_experiences)

# Three tasks of two classes, 12 samples each.
_BENCH = make_benchmark(n_classes=6, n_experiences=3, return_task_id=True)
_MODEL = MLP(6, hidden_size=8, drop_rate=0.0)


@pytest.mark.parametrize("n, proportion, share, seed", [
    (10, 0.7, 0.6, 0), (37, 0.5, 0.6, 1), (64, 0.0, 0.6, 2),
    (64, 1.0, 0.6, 3),
    # float32's 300 · 0.21 is 62.99999: still 63 entries.
    (100, 0.21, 1.0, 4),
    # 1,100,001 entries of 2,200,002: no entry more.
    (733334, 0.5, 1.0, 5)])
def test_prunes_the_smallest_magnitudes_among_candidates(n, proportion, share,
                                                         seed):
  rng = np.random.default_rng(seed)
  kernel = rng.normal(size=(n, 3)).astype(np.float32)
  candidates = rng.random((n, 3)) < share
  pruned = np.asarray(prune_smallest(jnp.asarray(kernel),
                                     jnp.asarray(candidates), proportion))
  # Python's int(n * p) in float64, as Avalanche counts (0.7 · 10 is 7).
  count = int(candidates.sum() * proportion)
  assert pruned.sum() == count and not np.any(pruned & ~candidates)
  kept = np.abs(kernel[candidates & ~pruned])
  if count and kept.size:
    assert np.abs(kernel[pruned]).max() <= kept.min()


def test_each_head_of_a_multi_head_model_is_its_tasks_alone():
  model = MTMLP(6, n_tasks=3, hidden_size=8, drop_rate=0.0)
  strategy = packnet(prune_proportion=0.5)
  ctx, data, state = _start(strategy, model)
  train = jax.jit(make_train_experience(ctx, strategy, optax.sgd(0.1),
                                        epochs=2))

  def head_leaves(tree):  # The heads' kernel [3, d, 6] and biases [3, 6].
    leaves = {**_kernels(tree), **_kernels(tree, "bias")}
    return {name: leaf for name, leaf in leaves.items()
            if leaf.ndim >= 2 and leaf.shape[0] == 3}

  heads = [head_leaves(state.params)]
  for exp in data:
    state, _ = train(state, exp)
    heads.append(head_leaves(state.params))
  owner = head_leaves(state.cl_state.owner)
  assert len(owner) == 2
  for name, own in owner.items():
    for task in range(3):
      assert np.all(own[task] == task)  # Never pruned nor handed on.
      moved = [not np.array_equal(heads[e + 1][name][task],
                                  heads[e][name][task]) for e in range(3)]
      assert moved == [e == task for e in range(3)]


def test_task_weights_hide_the_kernel_entries_of_later_tasks():
  params = {"Dense": {"kernel": jnp.arange(1.0, 7.0).reshape(2, 3),
                      "bias": jnp.ones(3)}}
  owner = {"Dense": {"kernel": jnp.array([[0, 1, 2], [2, 1, 0]]),
                     "bias": jnp.zeros((), jnp.int32)}}
  seen = task_weights(params, owner, jnp.int32(1))
  np.testing.assert_array_equal(seen["Dense"]["kernel"],
                                [[1, 2, 0], [0, 5, 6]])
  np.testing.assert_array_equal(seen["Dense"]["bias"], np.ones(3))


def _start(strategy, model=_MODEL, optimizer=optax.sgd(0.1)):
  """The context, each train experience on the device and the initial
  state of ``strategy`` on ``model`` and ``_BENCH``."""
  ctx = make_context(model, _BENCH, optimizer, batch_size=4)
  stacked = jax.device_put(stack_experiences(
      _BENCH.train_stream, _BENCH.n_classes, ctx.experience_size))
  data = [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(3)]
  state = init_state(ctx, strategy, optimizer, jax.random.key(0),
                     jnp.zeros((1,) + ctx.input_shape),
                     jnp.zeros((1,), jnp.int32))
  return ctx, data, state


def _train_stream(strategy):
  """The state after each experience of ``_BENCH``, trained one by one."""
  ctx, data, state = _start(strategy)
  train = jax.jit(make_train_experience(ctx, strategy, optax.sgd(0.1),
                                        epochs=2))
  states = []
  for exp in data:
    state, _ = train(state, exp)
    states.append(state)
  return ctx, states


def _kernels(tree, kind="kernel"):
  """The ``kind`` leaves ("kernel" or "bias") of ``tree`` by path."""
  return {jax.tree_util.keystr(p): np.asarray(leaf)
          for p, leaf in jax.tree_util.tree_leaves_with_path(tree)
          if jax.tree_util.keystr(p).endswith(f"['{kind}']")}


def test_each_task_keeps_its_weights_and_hands_the_pruned_ones_on():
  strategy = packnet(post_prune_epochs=1, prune_proportion=[0.5, 0.25])
  ctx, states = _train_stream(strategy)
  first, last = states[0], states[-1]
  owner = _kernels(last.cl_state.owner)
  assert int(last.cl_state.done) == 3
  for name, own in owner.items():
    n = own.size
    # Task 0 kept half of all entries, task 1 three quarters of the rest,
    # task 2 three quarters of what task 1 released (int(n · p) each time).
    released_0 = int(n * 0.5)
    released_1 = int(released_0 * 0.25)
    released_2 = int(released_1 * 0.25)
    assert np.sum(own == 0) == n - released_0
    assert np.sum(own == 1) == released_0 - released_1
    assert np.sum(own == 2) == released_1 - released_2
    assert np.sum(own == 3) == released_2
  # Frozen: task 0's entries never move again, and it sees what it saw.
  for when in states[1:]:
    for name, kernel in _kernels(when.params).items():
      own0 = owner[name] == 0
      np.testing.assert_array_equal(kernel[own0],
                                    _kernels(first.params)[name][own0])
  # Biases train in the first experience only.
  for name, bias in _kernels(last.params, "bias").items():
    np.testing.assert_array_equal(bias, _kernels(first.params, "bias")[name])


def test_pruned_entries_are_zero_while_fine_tuning_and_return_after():
  strategy = packnet(post_prune_epochs=2, prune_proportion=0.5)
  ctx, data, state = _start(strategy, optimizer=optax.sgd(
      optax.linear_schedule(0.1, 0.0, 100)))
  end = jax.jit(functools.partial(strategy.end_experience, ctx))
  after = end(state, data[0], jax.random.key(1))
  before_k, after_k = _kernels(state.params), _kernels(after.params)
  changed_somewhere = False
  for name, own in _kernels(after.cl_state.owner).items():
    released = own == 1
    # Released entries keep their values from before pruning (Avalanche only
    # hides them); the kept ones were fine-tuned.
    np.testing.assert_array_equal(after_k[name][released],
                                  before_k[name][released])
    changed_somewhere |= not np.array_equal(after_k[name][~released],
                                            before_k[name][~released])
    # The pruned set is the smaller half of the magnitudes before pruning.
    assert (np.abs(before_k[name][released]).max()
            <= np.abs(before_k[name][~released]).min())
  assert changed_somewhere
  # The fine-tuning's steps stay out of the schedules' counts.
  assert_trees_close(after.opt_state, state.opt_state, atol=0)
  # With no fine-tuning epoch nothing moves, only ownership changes.
  untuned = jax.jit(functools.partial(
      packnet(post_prune_epochs=0).end_experience, ctx))(
          state, data[0], jax.random.key(1))
  assert_trees_close(untuned.params, state.params, atol=0)


def test_gradients_reach_only_the_current_task_and_first_biases():
  strategy = packnet()
  ctx, states = _train_stream(strategy)
  state = states[0]
  grads = jax.tree.map(jnp.ones_like, state.params)
  masked = strategy.transform_grads(ctx, grads, state, None, None)
  for name, own in _kernels(state.cl_state.owner).items():
    np.testing.assert_array_equal(_kernels(masked)[name], own == 1)
  assert all(np.all(bias == 0) for bias in _kernels(masked, "bias").values())


def test_predicts_each_sample_with_the_weights_of_its_task():
  strategy = packnet()
  ctx, states = _train_stream(strategy)
  state = states[1]  # Tasks 0 and 1 frozen, task 2 not trained.
  x = jnp.asarray(np.concatenate([e.x[:2] for e in _BENCH.test_stream]))
  task = jnp.repeat(jnp.arange(3), 2)
  got = strategy.predict(ctx, state.params, state.model_state,
                         state.cl_state, x, task)
  owner = _kernels(state.cl_state.owner)
  for t in range(3):
    visible = {name: np.where(own <= t, _kernels(state.params)[name], 0.0)
               for name, own in owner.items()}
    params = jax.tree_util.tree_map_with_path(
        lambda p, leaf: visible.get(jax.tree_util.keystr(p), leaf),
        state.params)
    expected = ctx.logits(params, state.model_state, x, task)
    np.testing.assert_allclose(got[task == t], expected[task == t],
                               rtol=1e-5, atol=1e-6)
  plain = ctx.logits(state.params, state.model_state, x, task)
  assert not np.allclose(got[task == 0], plain[task == 0], atol=1e-3)
  np.testing.assert_allclose(got[task == 2], plain[task == 2], rtol=1e-5)


def test_accuracy_of_a_trained_task_never_changes():
  run = jaxcl.fit(_MODEL, packnet(), optax.sgd(0.1), _BENCH, epochs=2,
                  batch_size=4)
  matrix = run.accuracy_matrix
  for task in range(3):
    np.testing.assert_array_equal(matrix[task:, task], matrix[task, task])
  assert matrix[-1].mean() > 0.9


def test_vmapped_seeds_equal_single_runs():
  alone = fit_seeds_alone(_MODEL, packnet(prune_proportion=0.75), _BENCH)
  assert not np.allclose(jax.tree.leaves(alone[0].state.params)[1],
                         jax.tree.leaves(alone[1].state.params)[1])


@pytest.mark.parametrize("build, bench, model, message", [
    (lambda: packnet(prune_proportion=1.5), None, None,
     r"prune_proportion must be in \[0, 1\], got 1.5"),
    (lambda: packnet(prune_proportion=[0.5, -0.1]), None, None,
     r"prune_proportion\[1\] must be in \[0, 1\], got -0.1"),
    (lambda: packnet(prune_proportion=[]), None, None, "non-empty list"),
    (lambda: packnet(post_prune_epochs=-1), None, None,
     "post_prune_epochs must be a non-negative integer"),
    (packnet, make_benchmark(), _MODEL, "packnet needs task labels"),
    (packnet, dataclasses.replace(
        _BENCH, train_stream=_BENCH.train_stream[1:],
        test_stream=_BENCH.test_stream[1:]), _MODEL,
     r"experience 0 of the stream carries task labels \[1\], expected \[0\]"),
    (packnet, make_benchmark(return_task_id=True), BatchNormMLP(),
     "packnet needs a model without state"),
])
def test_refuses_bad_arguments_before_compiling(build, bench, model,
                                                message):
  with pytest.raises(ValueError, match=message):
    strategy = build()
    jaxcl.fit(model, strategy, optax.sgd(0.1), bench, epochs=1)


def test_from_the_command_line(tmp_path):
  metrics = tiny_cli_metrics(tmp_path, "--strategy", "packnet",
                             "--return-task-id", "--prune-proportion", "0.6")
  assert metrics["stream_accuracy"] > 0.7 and metrics["forgetting"] == 0
