"""Generative replay: VAE loss, generated batches, state updates, effect."""

import functools
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcl
from jaxcl.benchmarks import class_incremental, normalizer
from jaxcl.models import MLP, Model
from jaxcl.strategies import (
  MlpVAE,
  StrategyContext,
  from_spec,
  gaussian_kl,
  generate,
  generative_replay,
  naive,
  vae_loss,
)
from jaxcl.training import (
  cross_entropy,
  experience_data,
  init_state,
  make_context,
  make_train_step,
)

MEAN, STD = 0.25, 0.5


def _ctx(model=None, n_classes=4, input_shape=(4,), batch_size=4):
  return StrategyContext(model=model, preprocess=normalizer(MEAN, STD),
                         loss=cross_entropy, n_classes=n_classes,
                         n_experiences=3, input_shape=input_shape,
                         batch_size=batch_size, experience_size=8,
                         x_dtype=np.uint8)


def _sigmoid(z):
  return 1 / (1 + np.exp(-z))


def test_vae_loss_is_reconstruction_plus_closed_form_kl():
  ctx = _ctx(input_shape=(3,))
  vae = MlpVAE(n_features=3, latent_dim=2, hidden=5)
  x = jnp.array([[0, 128, 255], [10, 200, 30]], jnp.uint8)
  key = jax.random.key(3)
  params = jax.jit(vae.init)(jax.random.key(0), jnp.zeros((1, 3)),
                             jnp.zeros((1, 2)))["params"]
  # The network's outputs; the loss's composition is recomputed in numpy.
  normalised = (np.asarray(x, np.float64) / 255 - MEAN) / STD
  (mean, logvar), _ = jax.jit(functools.partial(
      vae.apply, method=MlpVAE.encode, mutable=["batch_stats"]))(
          {"params": params}, jnp.asarray(normalised, jnp.float32))
  mean, logvar = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
  eps = np.asarray(jax.random.normal(key, (2, 2)), np.float64)
  z = mean + np.exp(logvar / 2) * eps
  p = _sigmoid(np.asarray(jax.jit(functools.partial(
      vae.apply, method=MlpVAE.decode))({"params": params},
                                        jnp.asarray(z, jnp.float32)),
                          np.float64))
  kl = 0.5 * np.sum(np.exp(logvar) + mean ** 2 - 1 - logvar, -1)
  target = np.asarray(x, np.float64) / 255
  bce = -np.sum(target * np.log(p) + (1 - target) * np.log(1 - p), -1)
  mse = np.sum(((p - MEAN) / STD - normalised) ** 2, -1)
  loss = jax.jit(functools.partial(vae_loss, ctx, vae), static_argnums=3)
  for kind, expected in (("bce", bce + kl), ("mse", mse + kl)):
    np.testing.assert_allclose(loss(params, x, key, kind), expected,
                               rtol=1e-5)
  # A third row changes the others' losses through the encoder's batch
  # statistics, unless the mask leaves it out.
  masked = jax.jit(lambda x, mask: vae_loss(ctx, vae, params, x, key,
                                            mask=mask))
  batches = [jnp.concatenate([x, jnp.full((1, 3), v, jnp.uint8)])
             for v in (0, 255)]
  for mask, same in ((jnp.array([True, True, False]), True),
                     (jnp.ones(3, bool), False)):
    first, second = (masked(b, mask)[:2] for b in batches)
    assert np.allclose(first, second, rtol=1e-6) == same
  np.testing.assert_allclose(gaussian_kl(jnp.asarray(mean, jnp.float32),
                                         jnp.asarray(logvar, jnp.float32)),
                             kl, rtol=1e-5)


def test_gaussian_kl_matches_a_monte_carlo_estimate():
  mean, logvar = np.array([0.7, -1.2]), np.array([-0.5, 0.8])
  rng = np.random.default_rng(0)
  z = mean + np.exp(logvar / 2) * rng.normal(size=(400_000, 2))
  log_q = -0.5 * (((z - mean) ** 2) / np.exp(logvar) + logvar)
  log_p = -0.5 * z ** 2
  estimate = np.mean(np.sum(log_q - log_p, -1))
  closed = float(gaussian_kl(jnp.asarray(mean, jnp.float32),
                             jnp.asarray(logvar, jnp.float32)))
  assert abs(closed - estimate) < 0.01, (closed, estimate)


# A linear solver whose bias makes class 2 win everywhere.
SOLVER = {"w": jnp.array([[1.0, -1.0, 0.0, 0.0], [0.0, 1.0, 0.0, -1.0],
                          [-1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]]),
          "b": jnp.array([0.0, 0.0, 10.0, 0.0])}
LINEAR = Model(init=lambda key, x, task: (SOLVER, {}),
               apply=lambda p, s, x, task, train, key: (x @ p["w"] + p["b"],
                                                        s))


def _strategy(**kwargs):
  return generative_replay(latent_dim=2, generator_hidden=8, **kwargs)


@functools.cache
def _initial_state():
  """The initial state of every :func:`_strategy` (one compile for all; its
  tests share an xdist group, so that one worker compiles it)."""
  return jax.jit(lambda: _strategy().init(_ctx(LINEAR), SOLVER,
                                          jax.random.key(0)))()


def _replay_state(experiences, seen=(True, True, False, True)):
  return _initial_state().replace(old_seen=jnp.array(seen),
                                  experiences=jnp.float32(experiences))


def _batch(weight=(1.0, 1.0, 1.0, 0.0)):
  return {"x": jnp.arange(16, dtype=jnp.uint8).reshape(4, 4),
          "y": jnp.array([0, 1, 1, 0]), "task": jnp.zeros(4, jnp.int32),
          "weight": jnp.array(weight)}


def _jitted_transform(strategy, ctx):
  return jax.jit(lambda cl_state, batch, key: strategy.transform_batch(
      ctx, cl_state, batch, key))


@pytest.mark.xdist_group("generative-initial-state")
def test_generated_samples_are_labelled_by_the_old_solver_over_seen_classes():
  ctx = _ctx(LINEAR)
  strategy = _strategy()
  cl_state = _replay_state(experiences=1)
  # A sharper random generator, so that samples (and labels) vary.
  cl_state = cl_state.replace(old_generator=jax.tree.map(
      lambda a: 4 * a, cl_state.old_generator))
  transform = _jitted_transform(strategy, ctx)
  labels = []
  for i in range(5):
    out = transform(cl_state, _batch(), jax.random.key(i))
    x, y = np.asarray(out["x"][4:]), np.asarray(out["y"][4:])
    assert out["x"].dtype == jnp.uint8
    # The old solver's argmax over the seen classes 0, 1, 3 (never class 2,
    # whose logit is the largest everywhere).
    logits = ((x / 255 - MEAN) / STD) @ np.asarray(SOLVER["w"]) + np.asarray(
        SOLVER["b"])
    logits = np.where([True, True, False, True], logits, -np.inf)
    np.testing.assert_array_equal(y, np.argmax(logits, -1))
    labels.extend(y.tolist())
  assert set(labels) <= {0, 1, 3} and len(set(labels)) > 1


@pytest.mark.parametrize(
    "kwargs, experiences, rows, replay_weight",
    [({}, 0, 4, 0.0),                     # first experience: no replay
     ({}, 1, 4, 3 / 4),                   # replay weighs as much as real rows
     ({}, 3, 4, 3 / 4),
     ({"increasing_replay_size": True}, 3, 4, 3 * 3 / 4),  # 3x the real rows
     ({"replay_size": 6}, 2, 6, 1.0)])    # one mean over every row
@pytest.mark.xdist_group("generative-initial-state")
def test_batch_composition_and_replay_weights(kwargs, experiences, rows,
                                              replay_weight):
  ctx = _ctx(LINEAR)
  strategy = _strategy(**kwargs)
  batch = _batch()
  out = _jitted_transform(strategy, ctx)(
      _replay_state(experiences), batch, jax.random.key(0))
  assert out["y"].shape == (4 + rows,)
  for name in batch:   # The current rows come first, unchanged.
    np.testing.assert_array_equal(out[name][:4], batch[name])
  np.testing.assert_allclose(out["weight"][4:], replay_weight, rtol=1e-6)
  np.testing.assert_array_equal(out["task"][4:], 0)
  if kwargs.get("increasing_replay_size"):
    # The new experience's share of the loss is 1 / (experiences + 1).
    share = 3 / float(jnp.sum(out["weight"]))
    assert share == pytest.approx(1 / (experiences + 1))


@pytest.mark.xdist_group("generative-initial-state")
def test_replay_weight_counts_the_current_rows_only():
  # Chained after a memory (say replay), the batch already holds 2 memory
  # rows behind the 4 current ones: the generated rows weigh as much as the
  # 3 real current rows, as without them.
  ctx = _ctx(LINEAR)
  batch = _batch()
  with_memory = {name: jnp.concatenate([value, value[:2]])
                 for name, value in batch.items()}
  out = _jitted_transform(_strategy(), ctx)(
      _replay_state(1), with_memory, jax.random.key(0))
  np.testing.assert_allclose(out["weight"][6:], 3 / 4, rtol=1e-6)


def _uint8_benchmark(n_classes=6, n_experiences=3, per_class=8, seed=0,
                     **kwargs):
  """Class-specific 4x4 uint8 patterns with noise, MNIST-like preprocessing."""
  rng = np.random.default_rng(seed)
  patterns = rng.integers(0, 256, (n_classes, 4, 4, 1))
  y = np.repeat(np.arange(n_classes), per_class)
  x = np.clip(patterns[y] + rng.normal(0, 20, (len(y), 4, 4, 1)), 0, 255)
  data = (x.astype(np.uint8), y)
  return class_incremental(data, data, n_experiences,
                           fixed_class_order=range(n_classes),
                           preprocess=normalizer(MEAN, STD), **kwargs)


def _equal(a, b):
  return all(jax.tree.leaves(jax.tree.map(
      lambda u, v: bool(jnp.array_equal(u, v)), a, b)))


def test_generator_trains_every_step_and_copies_freeze_at_boundaries():
  bench = _uint8_benchmark()
  model = MLP(num_classes=6, hidden_size=8, drop_rate=0.0)
  optimizer = optax.sgd(0.1)
  ctx = make_context(model, bench, optimizer, batch_size=4)
  strategy = generative_replay(latent_dim=2, generator_hidden=8,
                               generator_lr=0.01)
  state = jax.jit(lambda: init_state(
      ctx, strategy, optimizer, jax.random.key(0), jnp.zeros((1, 4, 4, 1),
                                                             jnp.uint8),
      jnp.zeros((1,), jnp.int32)))()
  data = jax.tree.map(jnp.asarray, experience_data(
      bench.train_stream[0], bench.train_stream.max_size, 6))
  state = state.replace(seen_classes=data.classes_mask)
  step = jax.jit(make_train_step(ctx, strategy, optimizer))
  frozen = state.cl_state
  for i in range(3):
    rows = jnp.arange(4 * i, 4 * i + 4)
    batch = {"x": data.x[rows], "y": data.y[rows], "task": data.task[rows],
             "weight": jnp.ones(4)}
    before = state.cl_state.generator
    state = step(state, batch, jax.random.key(i))[0]
    cl = state.cl_state
    assert not _equal(cl.generator, before)
    for name in ("old_generator", "old_params", "old_model_state", "old_seen",
                 "experiences"):
      assert _equal(getattr(cl, name), getattr(frozen, name)), name
  state = jax.jit(lambda s: strategy.end_experience(ctx, s, data,
                                                    jax.random.key(9)))(state)
  cl = state.cl_state
  assert _equal(cl.old_generator, cl.generator)
  assert _equal(cl.old_params, state.params)
  np.testing.assert_array_equal(cl.old_seen, data.classes_mask)
  assert float(cl.experiences) == 1.0


def test_the_generator_keeps_modelling_old_experiences():
  # Experience 0 holds dark 4x4 images, experience 1 bright ones. Trained on
  # the extended batches, the final generator still draws dark samples
  # beside bright ones; one trained on the real rows alone (replayed rows
  # dropped from its loss) draws bright samples only.
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(2), 64)
  x = np.clip(np.where(y == 0, 40, 215)[:, None, None, None]
              + rng.normal(0, 10, (128, 4, 4, 1)), 0, 255).astype(np.uint8)
  bench = class_incremental((x, y), (x, y), 2, fixed_class_order=range(2),
                            preprocess=normalizer(0.5, 0.5))
  model = MLP(num_classes=2, hidden_size=8, drop_rate=0.0)
  result = jaxcl.fit(
      model, generative_replay(latent_dim=2, generator_hidden=16,
                               generator_lr=1e-2, reconstruction="bce"),
      optax.sgd(0.1), bench, epochs=5, batch_size=8, seed=0)
  ctx = make_context(model, bench, optax.sgd(0.1), batch_size=8)
  samples = generate(ctx, MlpVAE(16, 2, 16),
                     result.state.cl_state.generator, jax.random.key(0), 1000)
  brightness = np.asarray(samples, np.float64).reshape(1000, -1).mean(axis=1)
  dark = np.mean(brightness < 128)
  assert 0.2 < dark < 0.8, dark


@pytest.mark.xdist_group("generative-initial-state")
def test_rows_that_weigh_nothing_cannot_poison_the_generator():
  # An encoder whose log-variance explodes (exp overflows) on bright inputs:
  # the bright row weighs 0, so it must not turn the update into NaN.
  ctx = _ctx(LINEAR)
  strategy = _strategy()
  cl_state = _replay_state(experiences=0)
  generator = {name: jax.tree.map(
      lambda a: jnp.ones_like(a) if a.ndim == 2 else jnp.zeros_like(a), layer)
               if name.startswith(("encoder", "logvar")) else layer
               for name, layer in cl_state.generator.items()}
  cl_state = cl_state.replace(generator=generator)
  batch = {"x": jnp.array([[0] * 4, [0] * 4, [255] * 4], jnp.uint8),
           "y": jnp.zeros(3, jnp.int32), "task": jnp.zeros(3, jnp.int32),
           "weight": jnp.array([1.0, 1.0, 0.0])}
  loss = jax.jit(lambda p, x, k: vae_loss(ctx, MlpVAE(4, 2, 8), p, x, k))
  assert not np.isfinite(loss(generator, batch["x"], jax.random.key(1))[2])
  new = jax.jit(lambda cl, b, k: strategy.after_step(
      ctx, None, types.SimpleNamespace(cl_state=cl), None, b, k))(
          cl_state, batch, jax.random.key(1))
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(new.generator))
  assert not _equal(new.generator, generator)


def _traced_once(strategy, *slots):
  return strategy._replace(**{
      slot: chex.assert_max_traces(getattr(strategy, slot), n=1)
      for slot in slots})


def test_generator_weight_decay_is_pytorch_adams():
  # PyTorch's Adam(weight_decay=wd) adds wd * theta to the gradient before
  # the moments (L2, not AdamW): three steps on 0.5 |theta - c|^2, in numpy.
  from jaxcl.strategies.generative import _generator_adam
  lr, wd, b1, b2, eps = 0.1, 0.3, 0.9, 0.999, 1e-8
  c = np.array([1.0, -2.0, 0.5])
  theta, m, v = np.zeros(3), np.zeros(3), np.zeros(3)
  optimizer = _generator_adam(lr, wd)
  params = jnp.zeros(3)
  opt_state = optimizer.init(params)
  for t in range(1, 4):
    g = (theta - c) + wd * theta
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
    theta = theta - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    updates, opt_state = optimizer.update(params - c, opt_state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params, theta, rtol=1e-5)


@pytest.mark.parametrize("reset", [False, True])
def test_one_compile_per_stream_and_generator_optimizer_sweeps_and_resets(
    reset):
  # chex counts traces per call site, which both cases share: count anew.
  chex.clear_trace_counter()
  bench = _uint8_benchmark()  # Three experiences of 16 samples.
  values = [1e-3, 1e-2]
  result = jaxcl.sweep(
      MLP(num_classes=6, hidden_size=8, drop_rate=0.0), bench, values,
      strategy=lambda lr: _traced_once(
          generative_replay(latent_dim=2, generator_hidden=8,
                            generator_lr=lr, generator_weight_decay=1e-4,
                            reset_generator_optimizer=reset),
          "transform_batch", "after_step", "end_experience"),
      optimizer=optax.sgd(0.1), epochs=2, batch_size=4)
  for run, lr in zip(result.runs, values):
    cl = run.state.cl_state
    assert float(cl.experiences) == 3.0
    opt_state = cl.generator_opt_state
    adam = opt_state.inner_state[1][0]
    # 2 epochs of 4 steps per experience: the count starts over at each.
    assert int(adam.count) == (8 if reset else 24)
    # The swept rate lives in the state and survives the reset.
    assert float(opt_state.hyperparams["learning_rate"]) == pytest.approx(lr)
    assert float(opt_state.hyperparams["weight_decay"]) == pytest.approx(1e-4)
  generators = [r.state.cl_state.generator for r in result.runs]
  assert not _equal(*generators)


def test_beats_naive_on_split_mnist():
  # Bundled class-incremental SplitMNIST (4,000 training digits), 2 epochs:
  # naive fine-tuning only predicts the last two digits (stream accuracy
  # about 0.2); replayed samples keep the old classes alive.
  bench = jaxcl.benchmarks.split_mnist(n_experiences=5, seed=0)
  settings = {"epochs": 2, "batch_size": 32, "seed": 0}
  model = MLP(num_classes=10)
  baseline = jaxcl.fit(model, naive(), optax.adam(1e-3), bench, **settings)
  result = jaxcl.fit(model, generative_replay(), optax.adam(1e-3), bench,
                     **settings)
  naive_acc = baseline.metrics["stream_accuracy"]
  acc = result.metrics["stream_accuracy"]
  assert naive_acc < 0.25 and acc > naive_acc + 0.1, (naive_acc, acc)
  # Old experiences are still recognised after the last one.
  assert result.accuracy_matrix[-1, :-1].mean() > \
      baseline.accuracy_matrix[-1, :-1].mean() + 0.1


def test_validates_and_registers():
  with pytest.raises(ValueError, match="latent_dim must be a positive"):
    generative_replay(latent_dim=0)
  with pytest.raises(ValueError, match="Did you mean 'bce'"):
    generative_replay(reconstruction="bc")
  with pytest.raises(ValueError, match="only with replay_size=0"):
    generative_replay(replay_size=8, increasing_replay_size=True)
  for size in (False, 0.0, -1):  # False and 0.0 equal 0 but are not sizes.
    with pytest.raises(ValueError, match=r"replay_size \(0: the training "
                       rf"batch size\) must be a non-negative integer, got "
                       rf"{size!r}"):
      generative_replay(replay_size=size)
  with pytest.raises(TypeError, match="increasing_replay_size must be a bool, "
                     "got 'false'"):
    generative_replay(increasing_replay_size="false")
  with pytest.raises(ValueError, match="generator_lr must be in"):
    generative_replay(generator_lr=0.0)
  with pytest.raises(ValueError, match="generator_weight_decay must be in"):
    generative_replay(generator_weight_decay=-1e-4)
  with pytest.raises(TypeError, match="reset_generator_optimizer must be"):
    generative_replay(reset_generator_optimizer="yes")
  strategy = from_spec("generative_replay", latent_dim=4, reconstruction="bce")
  assert strategy.name == "generative_replay"
  with pytest.raises(ValueError, match="one task label"):
    jaxcl.fit(MLP(num_classes=6, hidden_size=8), generative_replay(),
              optax.sgd(0.1), _uint8_benchmark(return_task_id=True),
              epochs=1, batch_size=4)
  # int32 pixels' maximum is no intensity: generated values reached 7.8e7.
  with pytest.raises(ValueError, match=r"got inputs of dtype int32, whose "
                     r"maximum \(2147483647\) is no pixel's intensity"):
    generative_replay().init(_ctx()._replace(x_dtype=np.int32), None,
                             jax.random.key(0))
