"""Deep Streaming LDA against a numpy transcription of Avalanche's updates."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import BatchNormMLP, make_benchmark

import jaxcl
from jaxcl import cli
from jaxcl.models import MLP, as_model
from jaxcl.strategies import StrategyContext, streaming_lda
from jaxcl.training import cross_entropy, init_state

N_CLASSES, DIM, HIDDEN = 3, 4, 5


def _ctx():
  return StrategyContext(model=as_model(MLP(N_CLASSES, hidden_size=HIDDEN,
                                            drop_rate=0.0)),
                         preprocess=lambda x: x, loss=cross_entropy,
                         n_classes=N_CLASSES, n_experiences=2,
                         input_shape=(DIM,), batch_size=4, experience_size=8)


def _features(params, x):
  layer = params["TorchLinear_0"]["Dense_0"]
  return np.maximum(x @ np.asarray(layer["kernel"], np.float64)
                    + np.asarray(layer["bias"], np.float64), 0)


class _AvalancheSLDA:
  """Avalanche's StreamingLDA.fit and predict, one sample at a time."""

  def __init__(self, d, shrinkage, update_sigma=True):
    self.mu = np.zeros((N_CLASSES, d))
    self.count = np.zeros(N_CLASSES)
    self.sigma = np.ones((d, d))  # Avalanche's initial covariance.
    self.n, self.shrinkage, self.update_sigma = 0, shrinkage, update_sigma

  def fit(self, h, y):
    centred = h - self.mu[y]
    if self.update_sigma:
      delta = np.outer(centred, centred) * self.n / (self.n + 1)
      self.sigma = (self.n * self.sigma + delta) / (self.n + 1)
    self.mu[y] += centred / (self.count[y] + 1)
    self.count[y] += 1
    self.n += 1

  def predict(self, h):
    precision = np.linalg.pinv((1 - self.shrinkage) * self.sigma
                               + self.shrinkage * np.eye(len(self.sigma)))
    w = precision @ self.mu.T
    return h @ w - 0.5 * np.sum(self.mu.T * w, axis=0)


@pytest.mark.parametrize("update_sigma", [True, False])
def test_streaming_lda_fits_and_predicts_as_avalanche(update_sigma):
  ctx, strategy = _ctx(), streaming_lda(0.1, update_sigma)
  state = init_state(ctx, strategy, optax.sgd(0.1), jax.random.key(0),
                     jnp.zeros((1, DIM)), jnp.zeros((1,), jnp.int32))
  after = jax.jit(functools.partial(strategy.after_step, ctx))
  reference = _AvalancheSLDA(HIDDEN, 0.1, update_sigma)
  rng = np.random.default_rng(0)
  # Classes repeat within a batch: a later sample sees the mean that the
  # earlier ones moved. A padding row (weight 0) sits among the real ones.
  for y, weight in [([1, 1, 0, 2], [1, 1, 1, 0]), ([0, 2, 2, 1], [1, 0, 1, 1]),
                    ([2, 2, 2, 0], [1, 1, 1, 0])]:
    y, weight = np.array(y), np.array(weight, np.float32)
    x = rng.normal(size=(4, DIM)).astype(np.float32)
    batch = {"x": jnp.asarray(x), "y": jnp.asarray(y),
             "task": jnp.zeros(4, jnp.int32), "weight": jnp.asarray(weight)}
    state = state.replace(cl_state=after(state, state, None, batch,
                                         jax.random.key(1)))
    for h, label, w in zip(_features(state.params, x), y, weight):
      if w:
        reference.fit(h, label)
  cl = state.cl_state
  assert float(cl["updates"]) == 9
  np.testing.assert_allclose(cl["means"], reference.mu, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(cl["counts"], reference.count)
  np.testing.assert_allclose(cl["covariance"], reference.sigma, rtol=1e-4,
                             atol=1e-6)
  x = rng.normal(size=(6, DIM)).astype(np.float32)
  scores = strategy.predict(ctx, state.params, state.model_state, cl,
                            jnp.asarray(x), jnp.zeros(6, jnp.int32))
  np.testing.assert_allclose(
      scores, reference.predict(_features(state.params, x)), rtol=1e-3,
      atol=1e-3)


def test_streaming_lda_fits_the_features_of_augmented_inputs():
  # Avalanche fits its transformed mini-batch.
  ctx = _ctx()._replace(augment=lambda x, key: x + 100.0)
  strategy = streaming_lda()
  state = init_state(ctx, strategy, optax.sgd(0.1), jax.random.key(0),
                     jnp.zeros((1, DIM)), jnp.zeros((1,), jnp.int32))
  x = np.random.default_rng(3).normal(size=(4, DIM)).astype(np.float32)
  batch = {"x": jnp.asarray(x), "y": jnp.zeros(4, jnp.int32),
           "task": jnp.zeros(4, jnp.int32), "weight": jnp.ones(4)}
  cl = strategy.after_step(ctx, state, state, None, batch, jax.random.key(1))
  np.testing.assert_allclose(cl["means"][0],
                             _features(state.params, x + 100.0).mean(0),
                             rtol=1e-5)


def test_streaming_lda_keeps_batch_norm_statistics_its_fit_used():
  # Training steps moved the statistics; the means were fitted with others.
  bench = make_benchmark(n_experiences=2)
  result = jaxcl.fit(BatchNormMLP(), streaming_lda(), optax.sgd(0.1), bench,
                     batch_size=4, seed=0)
  stats = result.state.model_state["batch_stats"]["BatchNorm_0"]
  np.testing.assert_array_equal(stats["mean"], 0.0)
  np.testing.assert_array_equal(stats["var"], 1.0)
  # The stored class means are those of the evaluation's features.
  params, model_state = result.state.params, result.state.model_state
  first = bench.train_stream[0]
  hidden = {}

  def keep(next_fun, args, kwargs, context):
    if context.module.name == "Dense_1":
      hidden["h"] = args[0]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(keep):
    BatchNormMLP().apply({"params": params, **model_state}, first.x)
  for c in first.classes:
    np.testing.assert_allclose(result.state.cl_state["means"][c],
                               hidden["h"][first.y == c].mean(0), rtol=1e-4,
                               atol=1e-5)


def test_streaming_lda_trains_no_parameter():
  ctx, strategy = _ctx(), streaming_lda()
  grads = {"w": jnp.ones((2, 3)), "b": {"c": jnp.full(3, 2.0)}}
  zeroed = strategy.transform_grads(ctx, grads, None, None, None)
  assert all(np.all(g == 0) for g in jax.tree.leaves(zeroed))


def test_streaming_lda_in_fit_classifies_separable_classes():
  bench = make_benchmark(n_experiences=2)
  model = MLP(4, hidden_size=16, drop_rate=0.0)
  result = jaxcl.fit(model, streaming_lda(), optax.sgd(0.1), bench,
                     batch_size=4, seed=0)
  # Blobs 6 units apart through a random ReLU layer: LDA separates them,
  # old classes included (nothing about them changes after their fit).
  assert result.accuracy_matrix[-1].min() > 0.9
  assert float(result.state.cl_state["updates"]) == sum(
      len(e) for e in bench.train_stream)
  batched = jaxcl.fit(model, streaming_lda(), optax.sgd(0.1), bench,
                      batch_size=4, seeds=[0, 1])
  np.testing.assert_allclose(batched.runs[0].accuracy_matrix,
                             result.accuracy_matrix, atol=1e-6)


def test_streaming_lda_refuses_bad_arguments():
  with pytest.raises(ValueError, match=r"shrinkage_param must be in \(0, 1\], "
                     "got 1.5"):
    streaming_lda(shrinkage_param=1.5)
  with pytest.raises(TypeError, match="streaming_update_sigma must be True "
                     "or False, got 'no'"):
    streaming_lda(streaming_update_sigma="no")
  with pytest.raises(ValueError, match=r"shrinkage_param must be in \(0, 1\], "
                     "got 0.0"):
    streaming_lda(0.0)


def test_streaming_lda_from_the_command_line(tmp_path):
  assert cli.main(["run", "--strategy", "streaming_lda", "--shrinkage-param",
                   "0.01", "--n-experiences", "2", "--epochs", "1",
                   "--hidden-size", "16", "--no-progress",
                   "--compilation-cache", "", "--logdir",
                   str(tmp_path)]) == 0
