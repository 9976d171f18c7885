"""Progressive Neural Networks against a numpy transcription of Avalanche's."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_benchmark

import jaxcl
from jaxcl import cli
from jaxcl.models import PNN, PNNColumn

N_TASKS, DIM, HIDDEN, CLASSES = 3, 5, 4, 2


def _dense(p, x):
  return x @ np.asarray(p["Dense_0"]["kernel"], np.float64) + np.asarray(
      p["Dense_0"]["bias"], np.float64)


def _avalanche_forward(params, x, task, layers, adapter):
  """Avalanche's PNN.forward_single_task for one task label, in numpy."""
  relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
  hs = [np.asarray(x, np.float64)] * (task + 1)
  for layer in range(layers):
    kind = "mlp" if layer == 0 else adapter
    out = []
    for k in range(task + 1):
      p = params[f"layer_{layer}_column_{k}"]
      h = _dense(p["itoh"], hs[k])
      if k and kind == "mlp":
        scaled = np.concatenate([a * v for a, v in zip(
            np.asarray(p["alphas"], np.float64), hs[:k])], axis=1)
        h = h + _dense(p["U"], relu(_dense(p["V"], scaled)))
      elif k:
        h = h + sum(_dense(p[f"lateral_{i}"], v) for i, v in enumerate(hs[:k]))
      out.append(relu(h))
    hs = out
  heads = params["heads"]
  return hs[task] @ np.asarray(heads["kernel"][task], np.float64) + np.asarray(
      heads["bias"][task], np.float64)


@pytest.mark.parametrize("layers,adapter", [(1, "mlp"), (2, "mlp"),
                                            (3, "linear")])
def test_pnn_forward_is_avalanches_per_task(layers, adapter):
  model = PNN(CLASSES, N_TASKS, hidden_size=HIDDEN, hidden_layers=layers,
              adapter=adapter)
  x = np.random.default_rng(0).normal(size=(6, DIM)).astype(np.float32)
  task = jnp.array([0, 1, 2, 2, 1, 0])
  variables = model.init(jax.random.key(1), x, task)
  logits = model.apply(variables, x, task)
  for i, t in enumerate(task.tolist()):
    expected = _avalanche_forward(variables["params"], x[i:i + 1], t, layers,
                                  adapter)
    np.testing.assert_allclose(logits[i:i + 1], expected, rtol=1e-5,
                               atol=1e-6)


def test_pnn_trains_only_the_column_and_head_of_the_samples_task():
  model = PNN(CLASSES, N_TASKS, hidden_size=HIDDEN, hidden_layers=2)
  x = np.random.default_rng(2).normal(size=(4, DIM)).astype(np.float32)
  task = jnp.full((4,), 1)
  params = model.init(jax.random.key(0), x, task)["params"]

  def loss(params):
    logits = model.apply({"params": params}, x, task)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.array([0, 1, 0, 1])).mean()

  grads = jax.grad(loss)(params)
  for name, grad in grads.items():
    if name == "heads":
      norms = np.linalg.norm(np.asarray(grad["kernel"]).reshape(N_TASKS, -1),
                             axis=1)
      assert norms[1] > 0 and norms[0] == 0 and norms[2] == 0
      continue
    moved = any(np.any(g != 0) for g in jax.tree.leaves(grad))
    assert moved == name.endswith("column_1"), name


def test_pnn_in_fit_keeps_earlier_columns_and_never_forgets():
  bench = make_benchmark(n_experiences=2, return_task_id=True)
  # Two layers: column 1's second layer reads column 0's first.
  model = PNN(bench.n_classes, 2, hidden_size=8, hidden_layers=2)
  one = dataclasses.replace(bench, train_stream=bench.train_stream[:1])
  first, both = (jaxcl.fit(model, jaxcl.strategies.naive(), optax.sgd(0.1),
                           b, epochs=3, batch_size=4, seed=0)
                 for b in (one, bench))
  for name in ("layer_0_column_0", "layer_1_column_0"):
    chex.assert_trees_all_equal(both.state.params[name],
                                first.state.params[name])
  np.testing.assert_array_equal(both.state.params["heads"]["kernel"][0],
                                first.state.params["heads"]["kernel"][0])
  matrix = both.accuracy_matrix
  assert matrix[-1, 0] == matrix[0, 0] > 0.8
  assert matrix[-1, 1] > 0.8


def test_pnn_takes_one_task_label_for_the_whole_batch():
  model = PNN(CLASSES, N_TASKS, hidden_size=HIDDEN, hidden_layers=2)
  x = np.random.default_rng(4).normal(size=(3, DIM)).astype(np.float32)
  variables = model.init(jax.random.key(0), x, jnp.zeros(3, jnp.int32))
  np.testing.assert_array_equal(model.apply(variables, x, 2),
                                model.apply(variables, x, jnp.full(3, 2)))


def test_pnn_refuses_bad_configurations():
  x, task = jnp.zeros((1, DIM)), jnp.zeros((1,), jnp.int32)
  with pytest.raises(ValueError, match="adapter 'conv'"):
    PNN(CLASSES, N_TASKS, adapter="conv").init(jax.random.key(0), x, task)
  with pytest.raises(ValueError, match="hidden_layers must be a positive "
                     "integer, got 0"):
    PNN(CLASSES, N_TASKS, hidden_layers=0).init(jax.random.key(0), x, task)
  with pytest.raises(ValueError, match="adapter 'Linear'"):
    PNNColumn(4, adapter="Linear").init(jax.random.key(0), [x], x)
  with pytest.raises(ValueError, match="PNN input_size=4 but the inputs have "
                     "5 features"):
    PNN(CLASSES, N_TASKS, input_size=4).init(jax.random.key(0), x, task)


def test_pnn_from_the_command_line(tmp_path):
  args = ["run", "--model", "pnn", "--return-task-id", "--n-experiences", "2",
          "--epochs", "1", "--hidden-size", "16", "--no-progress",
          "--compilation-cache", "", "--logdir", str(tmp_path)]
  assert cli.main(args) == 0
