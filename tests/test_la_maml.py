"""La-MAML against a numpy transcription of Avalanche's ``LaMAML`` (v2),
its meta-gradients taken by finite differences."""

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
from jaxcl.strategies import buffers, chain, la_maml
from jaxcl.training import init_state, make_train_step

N_CLASSES, DIM, CLIP = 3, 4, 0.8


def _ctx():
  return hook_context(nn.Dense(N_CLASSES), n_classes=N_CLASSES, dim=DIM)


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def _loss(w, b, rows):
  x, y, weight = rows
  log_p = np.log(_softmax(x @ w + b))
  return -(weight * log_p[np.arange(len(y)), y]).sum() / max(weight.sum(), 1)


def _grad(w, b, rows):
  x, y, weight = rows
  d = _softmax(x @ w + b)
  d[np.arange(len(y)), y] -= 1.0
  d *= (weight / max(weight.sum(), 1))[:, None]
  return x.T @ d, d.sum(0)


def _meta_loss(theta, alpha, chunks, mixed, held=None, clip=CLIP):
  """Avalanche's meta-loss: inner steps on the chunks with clamped
  gradients and the per-parameter rates, the mixed batch's loss after
  each, averaged. ``held``: the inner gradients, held constant
  (first order)."""
  (w, b), (alpha_w, alpha_b), total = theta, alpha, 0.0
  for k, rows in enumerate(chunks):
    grad_w, grad_b = _grad(w, b, rows) if held is None else held[k]
    w = w - alpha_w * np.clip(grad_w, -clip, clip)
    b = b - alpha_b * np.clip(grad_b, -clip, clip)
    total += _loss(w, b, mixed)
  return total / len(chunks)


def _inner_grads(theta, alpha, chunks, clip=CLIP):
  (w, b), (alpha_w, alpha_b), grads = theta, alpha, []
  for rows in chunks:
    grad_w, grad_b = _grad(w, b, rows)
    grads.append((grad_w, grad_b))
    w = w - alpha_w * np.clip(grad_w, -clip, clip)
    b = b - alpha_b * np.clip(grad_b, -clip, clip)
  return grads


def _numeric_grads(f, leaves, eps=1e-6):
  grads = []
  for i, leaf in enumerate(leaves):
    grad = np.zeros_like(leaf)
    for index in np.ndindex(leaf.shape):
      up = [a.copy() for a in leaves]
      down = [a.copy() for a in leaves]
      up[i][index] += eps
      down[i][index] -= eps
      grad[index] = (f(up) - f(down)) / (2 * eps)
    grads.append(grad)
  return grads


def _clip_global(grads, bound):
  norm = np.sqrt(sum((g ** 2).sum() for g in grads))
  return [g * min(1.0, bound / norm) for g in grads]


def _setup(strategy, optimizer, n_chunks=2):
  ctx = _ctx()
  state = init_state(ctx, strategy, optimizer, jax.random.key(0),
                     jnp.zeros((1, DIM)), jnp.zeros((1,), jnp.int32))
  state = state.replace(seen_classes=jnp.ones(N_CLASSES, bool))
  rng = np.random.default_rng(3)
  x = rng.normal(size=(6, DIM)).astype(np.float32)
  # Two stored samples, both in every draw of three.
  memory = buffers.add(state.cl_state.memory, jax.random.key(1), x[4:],
                       jnp.array([2, 0]), jnp.zeros(2, jnp.int32))
  state = state.replace(cl_state=state.cl_state._replace(memory=memory))
  # Row 3 is padding: the second chunk's loss is row 2's alone.
  batch = {"x": jnp.asarray(x[:4]), "y": jnp.array([0, 1, 1, 0]),
           "task": jnp.zeros(4, jnp.int32),
           "weight": jnp.array([1.0, 1.0, 1.0, 0.0])}
  x64 = x.astype(np.float64)
  y, weight = np.array([0, 1, 1, 0]), np.array([1.0, 1.0, 1.0, 0.0])
  # Avalanche's chunks of the 3 samples: ceil(3 / n_chunks) rows each.
  size = -(-3 // n_chunks)
  chunks = [(x64[k * size:min((k + 1) * size, 3)],
             y[k * size:min((k + 1) * size, 3)],
             weight[k * size:min((k + 1) * size, 3)])
            for k in range(n_chunks)]
  mixed = (np.concatenate([x64[:4], x64[4:]]),
           np.concatenate([y, [2, 0]]), np.concatenate([weight, [1.0, 1.0]]))
  new, _, _ = jax.jit(make_train_step(ctx, strategy, optimizer))(
      state, batch, jax.random.key(2))
  theta = [np.asarray(state.params[k], np.float64) for k in ("kernel", "bias")]
  alpha = [np.asarray(state.cl_state.alpha[k], np.float64)
           for k in ("kernel", "bias")]
  return new, theta, alpha, chunks, mixed


# The batch holds 3 samples and a padding row: 2 updates cut the samples
# into 2 + 1, 3 into 1 + 1 + 1, and 4 into 1 + 1 + 1 and an empty chunk,
# whose step is none and whose meta-loss term repeats the previous one (with
# a bound that leaves the meta-gradients' scale unclipped).
@pytest.mark.parametrize("second_order, n_chunks, clip", [
    (True, 2, CLIP), (False, 2, CLIP), (True, 3, 100.0), (True, 4, 100.0)])
def test_la_maml_step_is_avalanches_update(second_order, n_chunks, clip):
  strategy = la_maml(mem_size=4, batch_size_mem=3, n_inner_updates=n_chunks,
                     second_order=second_order, grad_clip_norm=clip,
                     lr_alpha=0.3, alpha_init=0.2)
  new, theta, alpha, chunks, mixed = _setup(strategy, optax.sgd(0.1),
                                            n_chunks)
  assert len(chunks[-1][1]) == (0 if n_chunks == 4 else 1)
  held = None if second_order else _inner_grads(theta, alpha, chunks, clip)
  meta = lambda leaves: _meta_loss(leaves[:2], leaves[2:], chunks, mixed,
                                   held, clip)
  grads = _numeric_grads(meta, theta + alpha)
  grad_theta = _clip_global(grads[:2], clip)
  grad_alpha = _clip_global(grads[2:], clip)
  # The rates move first; the parameters then move by the new ones.
  new_alpha = [a - 0.3 * g for a, g in zip(alpha, grad_alpha)]
  expected = [t - g * np.maximum(a, 0) for t, g, a in
              zip(theta, grad_theta, new_alpha)]
  for k, want_alpha, want in zip(("kernel", "bias"), new_alpha, expected):
    np.testing.assert_allclose(new.cl_state.alpha[k], want_alpha, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(new.params[k], want, rtol=1e-4, atol=1e-6)
  assert int(new.step) == 1


def test_sync_update_steps_the_optimizer_and_fixed_rates_stay():
  strategy = la_maml(mem_size=4, batch_size_mem=3, n_inner_updates=2,
                     grad_clip_norm=CLIP, learn_lr=False, sync_update=True,
                     alpha_init=0.2)
  new, theta, alpha, chunks, mixed = _setup(strategy, optax.sgd(0.5))
  meta = lambda leaves: _meta_loss(leaves, alpha, chunks, mixed)
  grad_theta = _clip_global(_numeric_grads(meta, theta), CLIP)
  for k, a, t, g in zip(("kernel", "bias"), alpha, theta, grad_theta):
    np.testing.assert_array_equal(new.cl_state.alpha[k], a)
    np.testing.assert_allclose(new.params[k], t - 0.5 * g, rtol=1e-4,
                               atol=1e-6)


def test_the_batch_and_the_memory_draw_are_augmented_once_per_step():
  # Avalanche's loader transforms the mini-batch once; every inner step and
  # meta-loss sees those inputs.
  sizes = []
  record = lambda n: sizes.append(int(n))

  def augment(x, key):
    jax.debug.callback(record, x.shape[0])
    return x + 0.01 * jax.random.normal(key, x.shape)

  ctx = hook_context(nn.Dense(N_CLASSES), n_classes=N_CLASSES, dim=DIM,
                     augment=augment)
  strategy = la_maml(mem_size=4, batch_size_mem=3, n_inner_updates=2)
  state = init_state(ctx, strategy, optax.sgd(0.1), jax.random.key(0),
                     jnp.zeros((1, DIM)), jnp.zeros((1,), jnp.int32))
  batch = {"x": jnp.ones((4, DIM)), "y": jnp.array([0, 1, 1, 0]),
           "task": jnp.zeros(4, jnp.int32), "weight": jnp.ones(4)}
  jax.block_until_ready(jax.jit(make_train_step(ctx, strategy, optax.sgd(
      0.1)))(state, batch, jax.random.key(2)))
  assert sorted(sizes) == [3, 4]


def test_vmapped_seeds_equal_single_runs_and_it_learns():
  bench = make_benchmark(n_classes=4, n_experiences=2, per_class=12)
  model = jaxcl.models.MLP(num_classes=4, hidden_size=8, drop_rate=0.25)
  alone = fit_seeds_alone(
      model, la_maml(mem_size=8, batch_size_mem=4, n_inner_updates=3), bench,
      epochs=3, batch_size=5)
  # The separable first experience (two classes) is learnt.
  assert all(run.accuracy_matrix[0, 0] == 1.0 for run in alone)


def test_sweeps_over_learn_lr_equal_single_runs():
  # learn_lr lives in the state (a rate of 0), so one program runs both.
  bench = make_benchmark(n_classes=4, n_experiences=2, per_class=6)
  model = jaxcl.models.MLP(num_classes=4, hidden_size=8, drop_rate=0.0)
  strategy = lambda learn: la_maml(mem_size=8, batch_size_mem=4,
                                   n_inner_updates=2, learn_lr=learn)
  swept = jaxcl.sweep(model, bench, [False, True], strategy=strategy,
                      optimizer=optax.sgd(0.1), batch_size=4)
  for learn, run in zip([False, True], swept.runs):
    alone = jaxcl.fit(model, strategy(learn), optax.sgd(0.1), bench,
                      batch_size=4)
    assert_trees_close(run.state.cl_state.alpha, alone.state.cl_state.alpha)
    learnt = [not np.all(a == 0.1)
              for a in jax.tree.leaves(run.state.cl_state.alpha)]
    assert all(learnt) == learn  # Learnt only with learn_lr.
  # Without learn_lr, lr_alpha changes nothing: a sweep over it is refused.
  with pytest.raises(ValueError, match="does not use it"):
    jaxcl.sweep(model, bench, [0.1, 0.3], batch_size=4,
                strategy=lambda lr: la_maml(mem_size=8, batch_size_mem=4,
                                            learn_lr=False, lr_alpha=lr),
                optimizer=optax.sgd(0.1))


def test_chain_refuses_per_step_hooks_and_bad_arguments():
  with pytest.raises(ValueError, match="'la_maml' replaces the optimizer "
                     "step"):
    chain(la_maml(), jaxcl.strategies.lwf())
  for kwargs, message in ((dict(second_order="yes"), "second_order"),
                          (dict(mem_size=5, batch_size_mem=6),
                           "batch_size_mem=6 exceeds mem_size=5"),
                          (dict(grad_clip_norm=0), "grad_clip_norm"),
                          (dict(n_inner_updates=0), "n_inner_updates"),
                          (dict(alpha_init=-0.1), "alpha_init")):
    with pytest.raises((TypeError, ValueError), match=message):
      la_maml(**kwargs)


def test_cli_runs_la_maml(tmp_path):
  assert cli.main(["run", "--n-experiences", "2", "--hidden-size", "16",
                   "--strategy", "la_maml", "--n-inner-updates", "2",
                   "--second-order", "false", "--logdir",
                   str(tmp_path / "la_maml"), "--no-progress",
                   "--no-tensorboard", "--quiet", "--compilation-cache",
                   ""]) == 0
