"""Recurrent models: the LSTM against a NumPy one, sequences and images."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcl
from jaxcl.benchmarks import class_incremental
from jaxcl.models import (LSTM, MultiHead, SequenceClassifier, as_model,
                          mt_sequence_classifier)
from jaxcl.strategies import naive


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _numpy_lstm(params, x, hidden, layers):
  """PyTorch's LSTM equations, step by step, gates (i, f, g, o)."""
  for layer in range(layers):
    w_ih, w_hh, b_ih, b_hh = (np.asarray(params[f"{name}_{layer}"], np.float64)
                              for name in ("w_ih", "w_hh", "b_ih", "b_hh"))
    h = np.zeros((x.shape[0], hidden))
    c = np.zeros((x.shape[0], hidden))
    outputs = []
    for t in range(x.shape[1]):
      z = x[:, t] @ w_ih + b_ih + h @ w_hh + b_hh
      i, f, g, o = (z[:, k * hidden:(k + 1) * hidden] for k in range(4))
      c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
      h = _sigmoid(o) * np.tanh(c)
      outputs.append(h)
    x = np.stack(outputs, axis=1)
  return x


@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_matches_the_torch_equations_in_numpy(layers):
  x = np.random.default_rng(0).normal(size=(3, 7, 5)).astype(np.float32)
  lstm = LSTM(hidden_size=4, num_layers=layers)
  params = lstm.init(jax.random.key(0), x)["params"]
  np.testing.assert_allclose(lstm.apply({"params": params}, x),
                             _numpy_lstm(params, x, 4, layers), atol=1e-5)


def test_lstm_weights_start_uniform_in_torch_bounds():
  hidden = 64
  params = LSTM(hidden_size=hidden, num_layers=2).init(
      jax.random.key(0), jnp.zeros((1, 3, 10)))["params"]
  shapes = {k: v.shape for k, v in params.items()}
  assert shapes == {"w_ih_0": (10, 256), "w_hh_0": (64, 256), "b_ih_0": (256,),
                    "b_hh_0": (256,), "w_ih_1": (64, 256),
                    "w_hh_1": (64, 256), "b_ih_1": (256,), "b_hh_1": (256,)}
  bound = 1 / np.sqrt(hidden)
  values = np.concatenate([np.ravel(v) for v in params.values()])
  assert np.all(np.abs(values) <= bound)
  # U(-b, b): standard deviation b / sqrt(3).
  np.testing.assert_allclose(values.std(), bound / np.sqrt(3), rtol=0.02)
  # Each tensor draws its own numbers.
  assert not np.allclose(params["b_ih_0"], params["b_hh_0"])


def test_sequence_classifier_reads_the_last_step_through_a_linear_layer():
  x = np.random.default_rng(1).normal(size=(4, 6, 3)).astype(np.float32)
  model = SequenceClassifier(num_classes=5, hidden_size=8)
  params = model.init(jax.random.key(0), x)["params"]
  last = _numpy_lstm(params["lstm"], x, 8, 1)[:, -1]
  dense = params["TorchLinear_0"]["Dense_0"]
  np.testing.assert_allclose(
      model.apply({"params": params}, x),
      last @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"]),
      atol=1e-5)
  features = SequenceClassifier(num_classes=None, hidden_size=8).apply(
      {"params": {"lstm": params["lstm"]}}, x)
  np.testing.assert_allclose(features, last, atol=1e-5)


def test_images_are_read_row_by_row_and_scalars_as_one_feature():
  model = SequenceClassifier(num_classes=3, hidden_size=6)
  images = np.random.default_rng(2).normal(size=(2, 5, 4, 3)).astype(
      np.float32)
  variables = model.init(jax.random.key(0), images.reshape(2, 5, 12))
  np.testing.assert_array_equal(model.apply(variables, images),
                                model.apply(variables,
                                            images.reshape(2, 5, 12)))
  scalars = images[:, :, 0, 0]
  variables = model.init(jax.random.key(0), scalars)
  np.testing.assert_array_equal(model.apply(variables, scalars),
                                model.apply(variables, scalars[..., None]))


def test_penultimate_features_are_the_last_lstm_output():
  module = SequenceClassifier(num_classes=4, hidden_size=5)
  model = as_model(module)
  ctx = jaxcl.strategies.StrategyContext(model, lambda x: x, None, 4, 1,
                                         (6, 2), 3, 1)
  x = jax.random.normal(jax.random.key(1), (3, 6, 2))
  params, state = model.init(jax.random.key(0), x, None)
  features = jaxcl.strategies.model_utils.penultimate_features(
      ctx, params, state, x, jnp.zeros(3, jnp.int32))
  np.testing.assert_allclose(
      features, _numpy_lstm(params["lstm"], np.asarray(x), 5, 1)[:, -1],
      atol=1e-5)


def test_mt_sequence_classifier_gives_each_task_its_head():
  model = mt_sequence_classifier(num_classes=2, n_tasks=3, hidden_size=4,
                                 rnn_layers=2)
  assert isinstance(model, MultiHead)
  x = jax.random.normal(jax.random.key(1), (3, 5, 2))
  task = jnp.array([0, 2, 1])
  variables = model.init(jax.random.key(0), x, task)
  params = variables["params"]
  assert set(params["features"]["lstm"]) >= {"w_ih_1", "w_hh_1"}
  features = SequenceClassifier(None, 4, 2).apply(
      {"params": params["features"]}, x)
  heads = params["heads"]
  expected = [features[i] @ heads["kernel"][t] + heads["bias"][t]
              for i, t in enumerate(task.tolist())]
  np.testing.assert_allclose(model.apply(variables, x, task),
                             np.stack(expected), atol=1e-5)


def _spike_sequences(per_class, seed):
  """Class ``c``: a spike at step ``2c + 1`` of 8, in noise. Every class has
  the same values, so only the order of the steps tells them apart."""
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(4), per_class)
  x = rng.normal(0, 0.1, (len(y), 8, 1)).astype(np.float32)
  x[np.arange(len(y)), 2 * y + 1, 0] += 3.0
  return x, y


def test_fit_learns_the_order_of_a_sequence_in_one_compile():
  benchmark = class_incremental(_spike_sequences(64, 0),
                                _spike_sequences(16, 1), 2,
                                fixed_class_order=range(4))
  traced = naive()._replace(
      penalty=chex.assert_max_traces(naive().penalty, n=1))
  result = jaxcl.fit(SequenceClassifier(num_classes=4, hidden_size=16),
                     traced, optax.adam(0.01), benchmark, epochs=8,
                     batch_size=16, seed=0)
  # Naive forgets the first experience; the last one is learnt.
  assert float(result.accuracy_matrix[-1, 1]) >= 0.95


@pytest.mark.parametrize("module, shape, error, message", [
    (SequenceClassifier(3, rnn_layers=0), (2, 4, 1), ValueError,
     "rnn_layers must be a positive integer, got 0"),
    (SequenceClassifier(3, hidden_size=0), (2, 4, 1), ValueError,
     "hidden_size must be a positive integer, got 0"),
    (SequenceClassifier(0), (2, 4, 1), ValueError,
     "num_classes must be a positive integer, got 0"),
    (SequenceClassifier(3), (4,), ValueError,
     r"expects inputs \[batch, time, ...\], got inputs of shape \(4,\)"),
    (LSTM(2), (8, 3), ValueError, r"LSTM expects inputs \[batch, time, "
     r"features\], got inputs of shape \(8, 3\)"),
    (LSTM(2), (2, 5, 4, 3), ValueError, r"got inputs of shape \(2, 5, 4, 3\)"),
], ids=["rnn_layers", "hidden_size", "num_classes", "rank", "lstm_2d",
        "lstm_4d"])
def test_bad_sizes_and_inputs_are_named(module, shape, error, message):
  with pytest.raises(error, match=message):
    module.init(jax.random.key(0), jnp.ones(shape))
