"""CoPE against a transcription of Avalanche's PPPloss and hand-made updates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (TwoLayer, check_class_balanced_memory, fit_seeds_alone,
                      hook_context, hook_state, make_benchmark, normal_batch,
                      normal_experience, tiny_cli_metrics, two_layer_numpy,
                      unit_rows)

import jaxcl
from jaxcl.models import MLP
from jaxcl.strategies import (REGISTRY, buffers, chain, cope, ewc,
                              from_spec, ppp_loss)
from jaxcl.strategies.model_utils import l2_normalize
from jaxcl.strategies.prototypes import _logsumexp_others
from jaxcl.training import cross_entropy, make_train_experience, mask_unseen

N_CLASSES, DIM = 4, 3


def _ctx(n_classes=N_CLASSES, **kwargs):
  # The embedding is TwoLayer's 4 outputs.
  return hook_context(TwoLayer(), n_classes=n_classes, dim=DIM,
                      n_experiences=3, **kwargs)


def _avalanche_ppp(x, y, prototypes, temperature, xp=np,
                   detach=lambda a: a):
  """PPPloss as Avalanche writes it: a loop over the batch's classes, in
  probability space, with the proxies detached (``detach``)."""
  loss = 0.0
  for c in np.unique(y):
    same, other = x[y == c], x[y != c]
    pc = prototypes[c:c + 1]
    pk = xp.concatenate([prototypes[:c], prototypes[c + 1:]])
    proxies = detach(xp.concatenate([same, pc, pk]))
    first_pk = proxies.shape[0] - pk.shape[0]
    # Attractor: columns are the class's samples, self-products removed.
    d = xp.exp(proxies @ same.T / temperature)
    d = xp.where(np.eye(*d.shape, dtype=bool), 0.0, d)
    num, den = d[:first_pk], d[first_pk:].sum(0)
    expected = (num / (num + den)).sum(0) / same.shape[0]
    loss = loss - xp.log(expected).sum()
    # Repellor: columns are the other classes' samples.
    d = xp.exp(proxies @ other.T / temperature)
    num, den = d[:first_pk], d[first_pk:].sum(0)[None]
    p = num / (num + den)
    loss = loss - xp.log(1 - (p[:-1] + p[-1][None]) / 2).sum()
  return loss / x.shape[0]


def test_ppp_loss_matches_avalanche_in_value_and_gradient():
  rng = np.random.default_rng(0)
  # Class 3 has one sample (no pseudo-prototype); class 1 none in the batch.
  y = np.array([0, 2, 2, 0, 2, 0, 3])
  x = unit_rows(rng.normal(size=(7, 5))).astype(np.float32)
  prototypes = unit_rows(rng.normal(size=(N_CLASSES, 5))).astype(np.float32)
  # A padding row of weight 0, of a present class, changes nothing.
  x_pad = np.r_[x, unit_rows(rng.normal(size=(1, 5))).astype(np.float32)]
  y_pad, weight = np.r_[y, 2], np.r_[np.ones(7), 0.0]
  for temperature in (0.1, 0.5):
    expected = _avalanche_ppp(x.astype(np.float64), y,
                              prototypes.astype(np.float64), temperature)
    got = jax.jit(ppp_loss)(jnp.asarray(x_pad), jnp.asarray(y_pad),
                            jnp.asarray(weight), jnp.asarray(prototypes),
                            temperature)
    assert float(got) == pytest.approx(expected, rel=1e-5)
  # Gradients reach only the samples being claimed, as Avalanche detaches
  # every proxy.
  reference = jax.jit(jax.grad(lambda h: _avalanche_ppp(
      h, y, jnp.asarray(prototypes), 0.1, jnp, jax.lax.stop_gradient)))(
          jnp.asarray(x))
  grad = jax.jit(jax.grad(lambda h: ppp_loss(
      h, jnp.asarray(y_pad), jnp.asarray(weight), jnp.asarray(prototypes),
      0.1)))(jnp.asarray(x_pad))
  np.testing.assert_allclose(grad[:7], reference, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(grad[7], 0.0)


def test_ppp_loss_stays_finite_at_small_temperatures():
  scores = np.array([[1000.0, -1000.0, 999.0, 0.0],
                     [3.0, 3.0, -2000.0, 1.0]])
  brute = [[np.logaddexp.reduce(np.delete(row, c)) for c in range(4)]
           for row in scores]
  np.testing.assert_allclose(_logsumexp_others(jnp.asarray(scores)), brute,
                             rtol=1e-6)
  rng = np.random.default_rng(1)
  x = jnp.asarray(unit_rows(rng.normal(size=(6, 4))), jnp.float32)
  y = jnp.array([0, 0, 1, 1, 2, 3])
  prototypes = jnp.asarray(unit_rows(rng.normal(size=(4, 4))), jnp.float32)
  loss, grad = jax.jit(jax.value_and_grad(ppp_loss))(
      x, y, jnp.ones(6), prototypes, 1e-3)
  assert np.isfinite(float(loss)) and np.all(np.isfinite(grad))


def test_cope_trains_on_ppp_alone_and_moves_prototypes_by_momentum():
  ctx = _ctx()
  strategy = cope(mem_size=8, alpha=0.7, temperature=0.5, max_it_cnt=0)
  state = hook_state(ctx, strategy)
  initial = np.asarray(state.cl_state.prototypes)
  np.testing.assert_allclose(np.linalg.norm(initial, axis=1), 1.0, rtol=1e-6)
  # The first experience (classes 0 and 1) only fills the memory.
  state = strategy.end_experience(
      ctx, state, normal_experience([0, 0, 0, 1, 1, 1], 0), jax.random.key(1))
  np.testing.assert_array_equal(state.cl_state.prototypes, initial)
  state = strategy.begin_experience(
      ctx, state.replace(seen_classes=jnp.array([True, True, True, False])),
      normal_experience([2, 2, 2, 2], 1), jax.random.key(2))
  batch = normal_batch([2, 2, 2, 2], [1.0, 1.0, 1.0, 0.0], dim=DIM)
  out = strategy.transform_batch(ctx, state.cl_state, batch,
                                 jax.random.key(4))
  # batch_size memory rows follow the current ones; 6 are stored.
  assert out["y"].shape == (8,) and int(jnp.sum(out["weight"][4:])) == 4
  assert set(np.asarray(out["y"][4:]).tolist()) <= {0, 1}
  logits = mask_unseen(ctx.logits(state.params, state.model_state, out["x"],
                                  out["task"]), state.seen_classes)
  task_loss = jnp.sum(cross_entropy(logits, out) * out["weight"])
  assert float(task_loss) == 0.0
  used = np.asarray(out["weight"]) > 0
  h = unit_rows(two_layer_numpy(state.params, out["x"])[1])
  y = np.asarray(out["y"])
  penalty = strategy.penalty(ctx, state.params, state.cl_state, out, logits)
  assert float(penalty) == pytest.approx(
      _avalanche_ppp(h[used], y[used], initial, 0.5), rel=1e-5)

  # The prototypes move with the embeddings before the step's update.
  moved = state.replace(params=jax.tree.map(lambda p: p + 1.0, state.params))
  cl_state = strategy.after_step(ctx, state, moved, None, out,
                                 jax.random.key(5))
  ended = strategy.end_experience(
      ctx, moved.replace(cl_state=cl_state),
      normal_experience([2, 2, 2, 2], 1), jax.random.key(6))
  expected = initial.copy()
  for c in np.unique(y[used]):
    mean = unit_rows(h[used & (y == c)].sum(0))
    expected[c] = unit_rows(0.7 * initial[c] + 0.3 * mean)
  np.testing.assert_allclose(ended.cl_state.prototypes, expected, rtol=1e-5,
                             atol=1e-6)
  assert not np.any(ended.cl_state.counts)
  np.testing.assert_array_equal(
      buffers.group_counts(ended.cl_state.buffer), [3, 3, 2, 0])


def test_cope_predicts_the_nearest_prototype():
  ctx = _ctx()
  strategy = cope()
  state = hook_state(ctx, strategy)
  prototypes = unit_rows(np.random.default_rng(7).normal(size=(N_CLASSES,
                                                           N_CLASSES)))
  cl_state = state.cl_state.replace(prototypes=jnp.asarray(prototypes,
                                                           jnp.float32))
  x = np.random.default_rng(8).normal(size=(16, DIM))
  logits = strategy.predict(ctx, state.params, state.model_state, cl_state,
                            jnp.asarray(x, jnp.float32),
                            jnp.zeros(16, jnp.int32))
  h = unit_rows(two_layer_numpy(state.params, x)[1])
  distance = np.linalg.norm(h[:, None] - prototypes[None], axis=-1)
  np.testing.assert_allclose(logits, h @ prototypes.T, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.argmax(logits, 1), np.argmin(distance, 1))


def test_cope_memory_stays_class_balanced():
  check_class_balanced_memory(_ctx(), cope(mem_size=6))


@pytest.mark.parametrize("max_it_cnt,steps", [(2, 2), (0, 6)])
def test_cope_takes_at_most_max_it_cnt_steps_per_experience(max_it_cnt,
                                                            steps):
  ctx = _ctx()
  strategy = cope(mem_size=8, max_it_cnt=max_it_cnt)
  train = jax.jit(make_train_experience(ctx, strategy, optax.sgd(0.1),
                                        epochs=3))
  state = hook_state(ctx, strategy)
  for index in (0, 1):  # The count starts over at each experience.
    state, metrics = train(state, normal_experience([0, 1, 2, 3] * 2, index))
    assert int(metrics["steps_trained"]) == steps
    assert int(state.step) == steps * (index + 1)
    assert int(jnp.sum(state.cl_state.counts)) == 0


def test_cope_vmapped_seeds_equal_single_runs_and_learn():
  bench = make_benchmark(n_experiences=2)
  model = MLP(4, hidden_size=32, drop_rate=0.0)
  strategy = cope(mem_size=8, max_it_cnt=0)
  for alone in fit_seeds_alone(model, strategy, bench):
    # Both experiences' classes are told apart by their prototypes.
    np.testing.assert_array_equal(alone.accuracy_matrix[-1], [1.0, 1.0])
  # In a chain, CoPE keeps its state and its prediction rule.
  chained = jaxcl.fit(model, chain(ewc(ewc_lambda=1.0), strategy),
                      optax.sgd(0.1), bench, seed=0, epochs=2, batch_size=4)
  assert np.all(np.isfinite(chained.accuracy_matrix))
  cope_state = chained.state.cl_state[1]
  assert int(buffers.size(cope_state.buffer)) == 8
  np.testing.assert_allclose(
      np.linalg.norm(cope_state.prototypes, axis=1), 1.0, rtol=1e-5)



def test_cope_refuses_bad_arguments():
  with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
    cope(alpha=1.5)
  with pytest.raises(ValueError, match=r"temperature must be in \(0, inf\)"):
    cope(temperature=0.0)
  with pytest.raises(ValueError, match="max_it_cnt must be a non-negative "
                     "integer, got -1"):
    cope(max_it_cnt=-1)
  with pytest.raises(ValueError, match="max_it_cnt must be a non-negative "
                     "integer, got 1.5"):
    cope(max_it_cnt=1.5)
  with pytest.raises(ValueError, match="mem_size must be a positive integer"):
    cope(mem_size=0)
  tasks = _ctx(task_classes=np.eye(2, N_CLASSES, dtype=bool))
  with pytest.raises(ValueError, match="cope keeps one prototype per class "
                     "and ignores task labels"):
    cope().init(tasks, None, jax.random.key(0))
  with pytest.raises(ValueError, match="expected n_classes >= 2, got 1"):
    cope().init(_ctx(n_classes=1), None, jax.random.key(0))


def test_cope_is_registered_for_specs():
  assert REGISTRY["cope"].factory is cope
  strategy = from_spec("cope(temperature=0.2)+ewc", mem_size=50)
  assert strategy.name == "cope+ewc" and strategy.predict is not None
  with pytest.raises(ValueError, match="cope takes no T"):
    from_spec("cope(T=0.1)")


def test_cope_from_the_command_line(tmp_path):
  metrics = tiny_cli_metrics(tmp_path, "--strategy", "cope", "--alpha", "0.9",
                             "--temperature", "0.2", "--max-it-cnt", "0",
                             "--mem-size", "50")
  assert metrics["stream_accuracy"] > 0.5


def test_left_out_rows_and_zero_rows_give_finite_zero_gradients():
  # A weight-0 row's label may be anything (padding from a custom loop).
  loss = lambda e: ppp_loss(e, jnp.array([0, 1, 99]), jnp.array([1., 1., 0.]),
                            jnp.eye(3), 0.5)
  grads = jax.grad(loss)(jnp.eye(3))
  assert bool(jnp.all(jnp.isfinite(grads)))
  np.testing.assert_array_equal(grads[2], 0.0)
  # A zero embedding (a head that starts at zero) stays zero, without the
  # 1e12 gradient of PyTorch's normalize.
  jacobian = jax.jacobian(lambda v: l2_normalize(v[None])[0])(jnp.zeros(3))
  np.testing.assert_array_equal(jacobian, np.zeros((3, 3)))
  np.testing.assert_allclose(l2_normalize(jnp.array([[3.0, 4.0]])),
                             [[0.6, 0.8]], rtol=1e-6)
