"""Cosine classifiers: the layer against NumPy, the wrapper, strategies."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_benchmark

import jaxcl
from jaxcl.models import (BACKBONES, MLP, MODELS, CosineClassifier,
                          CosineLinear, SlimResNet18, as_model)
from jaxcl.strategies import cwr_star, lfl, naive


def _numpy_cosine(x, kernel, sigma):
  x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  rows = x / np.linalg.norm(x, axis=1, keepdims=True)
  columns = kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
  return sigma * rows @ columns


def test_cosine_linear_is_sigma_times_the_cosine_similarity():
  x = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
  layer = CosineLinear(3)
  params = layer.init(jax.random.key(0), x)["params"]
  assert params["sigma"] == 1.0
  params = {**params, "sigma": jnp.asarray(4.0)}
  np.testing.assert_allclose(layer.apply({"params": params}, x),
                             _numpy_cosine(x, params["kernel"], 4.0),
                             rtol=1e-5)


def test_cosine_logits_ignore_the_scale_of_features_and_weights():
  x = jax.random.normal(jax.random.key(1), (4, 6))
  layer = CosineLinear(3, sigma=False)
  params = layer.init(jax.random.key(0), x)["params"]
  assert set(params) == {"kernel"}
  logits = layer.apply({"params": params}, x)
  assert np.all(np.abs(logits) <= 1 + 1e-6)
  scaled = {"kernel": params["kernel"] * jnp.array([1.0, 50.0, 0.02])}
  np.testing.assert_allclose(
      layer.apply({"params": scaled}, x * jnp.array([[3.0], [0.1], [7.0],
                                                     [1.0]])),
      logits, rtol=1e-5, atol=1e-6)


def test_cosine_kernel_starts_like_avalanches():
  fan_in = 256
  kernel = CosineLinear(100).init(jax.random.key(0), jnp.ones((1, fan_in)))[
      "params"]["kernel"]
  bound = 1 / np.sqrt(fan_in)
  assert kernel.shape == (fan_in, 100) and np.all(np.abs(kernel) <= bound)
  np.testing.assert_allclose(np.std(kernel), bound / np.sqrt(3), rtol=0.02)


def test_a_zero_feature_row_gives_zero_logits_and_finite_gradients():
  x = jnp.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
  layer = CosineLinear(2)
  params = layer.init(jax.random.key(0), x)

  def loss(params, x):
    return jnp.sum(layer.apply(params, x) ** 2)

  np.testing.assert_array_equal(layer.apply(params, x)[0], [0.0, 0.0])
  grads = jax.grad(loss, argnums=(0, 1))(params, x)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("module, error, message", [
    (CosineClassifier(MLP(None, hidden_size=4), num_classes=0), ValueError,
     "num_classes must be a positive integer, got 0"),
    (CosineClassifier(MLP(None, hidden_size=4), 3, sigma="no"), TypeError,
     "sigma must be True or False, got 'no'"),
    (CosineLinear(3, sigma=None), TypeError,
     "sigma must be True or False, got None"),
    (CosineClassifier(MLP(10), num_classes=10), ValueError,
     "CosineClassifier needs a backbone built with num_classes=None "
     r"\(its features\), got MLP with num_classes=10"),
    (jaxcl.models.MultiHead(MLP(10), num_classes=2, n_tasks=2), ValueError,
     "MultiHead needs a backbone built with num_classes=None"),
], ids=["num_classes", "sigma", "layer_sigma", "cosine_backbone",
        "multi_head_backbone"])
def test_bad_arguments_are_named(module, error, message):
  x = jnp.ones((2, 6))
  task = ((jnp.zeros(2, jnp.int32),)
          if isinstance(module, jaxcl.models.MultiHead) else ())
  with pytest.raises(error, match=message):
    module.init(jax.random.key(0), x, *task)


def test_cosine_classifier_runs_the_backbone_in_training_mode():
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  model = as_model(CosineClassifier(SlimResNet18(num_classes=None, nf=4),
                                    num_classes=5))
  params, state = model.init(jax.random.key(0), x, None)
  assert set(params) == {"features", "head"}
  assert params["head"]["kernel"].shape == (32, 5)
  _, trained = model.apply(params, state, x, None, True, jax.random.key(2))
  _, evaluated = model.apply(params, state, x, None, False, None)
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), trained, state)
  assert any(jax.tree.leaves(changed))
  chex_equal = jax.tree.map(np.array_equal, evaluated, state)
  assert all(jax.tree.leaves(chex_equal))


def test_every_backbone_takes_a_cosine_head():
  x = jnp.zeros((2, 32, 32, 3))
  for name in BACKBONES:
    model = CosineClassifier(MODELS[name](num_classes=None), num_classes=7)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    assert shapes["params"]["head"]["kernel"].shape[-1] == 7, name
    assert jax.eval_shape(model.apply, shapes, x).shape == (2, 7), name


def test_output_layer_and_features_of_a_cosine_classifier():
  module = CosineClassifier(MLP(None, hidden_size=8, drop_rate=0.0), 5)
  model = as_model(module)
  ctx = jaxcl.strategies.StrategyContext(model, lambda x: x, None, 5, 1,
                                         (6,), 3, 1)
  x = jax.random.normal(jax.random.key(1), (3, 6))
  task = jnp.zeros(3, jnp.int32)
  params, state = model.init(jax.random.key(0), x, task)
  utils = jaxcl.strategies.model_utils
  head = utils.output_layer(ctx, params, state)
  assert head.path == ("head",) and isinstance(head.module, CosineLinear)
  features = utils.penultimate_features(ctx, params, state, x, task)
  dense = params["features"]["TorchLinear_0"]["Dense_0"]
  np.testing.assert_allclose(
      features, np.maximum(x @ dense["kernel"] + dense["bias"], 0), atol=1e-6)
  np.testing.assert_allclose(head(params, features),
                             ctx.logits(params, state, x, task), atol=1e-6)


def test_fit_learns_with_a_cosine_head():
  benchmark = make_benchmark(n_experiences=1, per_class=30)
  result = jaxcl.fit(CosineClassifier(MLP(None, hidden_size=16), 4), naive(),
                     optax.sgd(0.5), benchmark, epochs=5, batch_size=8,
                     seed=0)
  assert float(result.accuracy_matrix[-1, 0]) >= 0.95


def test_lfl_freezes_sigma_once_units_are_trained():
  benchmark = make_benchmark(per_class=16)
  sigmas = []

  def record(ctx, old, new, grads, batch, key):
    jax.debug.callback(lambda s: sigmas.append(float(s)),
                       new.params["head"]["sigma"], ordered=True)
    return new.cl_state

  watched = jaxcl.strategies.chain(lfl(), naive()._replace(after_step=record))
  jaxcl.fit(CosineClassifier(MLP(None, hidden_size=8), 4), watched,
            optax.sgd(0.5), benchmark, epochs=1, batch_size=8, seed=0)
  sigmas = np.asarray(sigmas)
  steps = len(sigmas) // 2  # Two experiences of the same size.
  assert np.ptp(sigmas[:steps]) > 0  # Trained in the first experience,
  np.testing.assert_array_equal(sigmas[steps:], sigmas[steps - 1])  # frozen.


def test_cwr_star_refuses_a_cosine_head():
  with pytest.raises(ValueError, match=r"cwr_star and ar1 reset the output "
                     r"layer's columns to zero, which a cosine output layer "
                     r"\(\('head',\)\) cannot train from"):
    jaxcl.fit(CosineClassifier(MLP(None, hidden_size=8), 4), cwr_star(),
              optax.sgd(0.1), make_benchmark(), batch_size=8)
