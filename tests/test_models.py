"""Model zoo: architectures, batch-norm state, per-sample heads, fit on images."""

import functools
import inspect
import re
import zlib

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_benchmark

import jaxcl
from jaxcl.benchmarks import augment, class_incremental, normalizer
from jaxcl.models import (MLP, MODELS, MTMLP, MultiHead, MultiHeadClassifier,
                          ResNet32, SlimResNet18, TorchConv, TorchLinear,
                          as_model)
from jaxcl.strategies import naive

# TorchConv's own gradients serve XLA:CPU alone; elsewhere JAX's rules run.
cpu_convolutions = pytest.mark.skipif(
    jax.default_backend() != "cpu",
    reason="native CPU convolution gradients are used on the CPU only")


def _images(n_classes=4, per_class=6, size=8, seed=0):
  """Class-incremental uint8 images whose mean brightness encodes the class."""
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(n_classes), per_class)
  x = rng.integers(0, 40, (len(y), size, size, 3)) + 50 * y[:, None, None, None]
  return class_incremental(
      (x.astype(np.uint8), y), (x.astype(np.uint8), y), 2,
      fixed_class_order=range(n_classes), preprocess=normalizer(0.5, 0.25),
      augment=augment.compose(augment.random_crop(1), augment.random_flip()))


def _traced_once():
  """naive() whose penalty raises if traced twice: one compile per stream.

  chex counts traces per call site (the calling test), so every test that
  uses this gets its own count.
  """
  def penalty(*args):
    return naive().penalty(*args)

  return naive()._replace(penalty=chex.assert_max_traces(penalty, n=1))


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _slim_resnet18_size(nf, classes, channels=3):
  """Parameter count of GEM's slim ResNet-18, from its definition."""
  def conv(k, i, o):
    return k * k * i * o

  total, width = conv(3, channels, nf) + 2 * nf, nf
  for multiple, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
    out = nf * multiple
    for block in range(2):
      cin = width if block == 0 else out
      total += conv(3, cin, out) + conv(3, out, out) + 4 * out
      if block == 0 and (stride != 1 or cin != out):
        total += conv(1, cin, out) + 2 * out  # Projection shortcut.
    width = out
  return total + 8 * nf * classes + classes


def _resnet32_size(n, classes, channels=3):
  """iCaRL ResNet-32: 3x3 convs, no biases, identity (option A) shortcuts."""
  total, width = 9 * channels * 16 + 2 * 16, 16
  for out in (16, 32, 64):
    for _ in range(n):
      total += 9 * width * out + 9 * out * out + 4 * out
      width = out
  return total + 64 * classes + classes


@pytest.mark.parametrize("model, expected", [
    (SlimResNet18(num_classes=10), _slim_resnet18_size(20, 10)),
    (SlimResNet18(num_classes=100, nf=8), _slim_resnet18_size(8, 100)),
    (ResNet32(num_classes=100), _resnet32_size(5, 100)),
    (ResNet32(num_classes=10, n=3), _resnet32_size(3, 10)),
])
def test_resnet_parameter_counts_match_their_definitions(model, expected):
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, 32, 32, 3)))
  assert _count(variables["params"]) == expected
  # Running mean and variance: as many as batch-norm scales and offsets.
  bn_params = sum(int(np.prod(a.shape)) for path, a in
                  jax.tree_util.tree_leaves_with_path(variables["params"])
                  if "BatchNorm" in jax.tree_util.keystr(path))
  assert _count(variables["batch_stats"]) == bn_params


def _uniform_like_pytorch(leaf, fan_in):
  """``leaf`` is drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)): within the
  bound, with the uniform's std 1/sqrt(3 fan_in) (5 %)."""
  leaf = np.asarray(leaf)
  assert np.abs(leaf).max() <= 1 / np.sqrt(fan_in)
  assert leaf.std() == pytest.approx(1 / np.sqrt(3 * fan_in), rel=0.05)


def test_initial_weights_follow_the_documented_distributions():
  key, x = jax.random.key(0), jnp.ones((1, 784))
  linear = TorchLinear(1024).init(key, x)["params"]
  for leaf in (linear["Dense_0"]["kernel"], linear["Dense_0"]["bias"]):
    _uniform_like_pytorch(leaf, fan_in=784)
  conv = TorchConv(64, 3).init(key, jnp.ones((1, 8, 8, 16)))["params"]
  for leaf in jax.tree.leaves(conv):
    _uniform_like_pytorch(leaf, fan_in=16 * 3 * 3)
  heads = MultiHeadClassifier(512, n_tasks=3).init(
      key, jnp.ones((1, 300)), jnp.zeros((1,), jnp.int32))["params"]
  for leaf in jax.tree.leaves(heads):  # Each head an nn.Linear(300, 512).
    _uniform_like_pytorch(leaf, fan_in=300)
  # ResNet32: Kaiming-normal convolutions (ReLU gain), classifier gain 1.
  params = jax.jit(ResNet32(100, n=1).init)(  # Eager, it runs op by op.
      key, jnp.ones((1, 32, 32, 3)))["params"]
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = jax.tree_util.keystr(path)
    if leaf.ndim == 4:
      fan_in = np.prod(leaf.shape[:3])
      assert np.std(leaf) == pytest.approx(np.sqrt(2 / fan_in), rel=0.1), name
    elif leaf.ndim == 2:
      assert np.std(leaf) == pytest.approx(np.sqrt(1 / leaf.shape[0]),
                                           rel=0.05), name
    elif "bias" in name:
      assert np.all(np.asarray(leaf) == 0), name


def test_batch_norm_state_updates_in_training_and_freezes_in_evaluation():
  model = as_model(SlimResNet18(num_classes=3, nf=4))
  x = jax.random.normal(jax.random.key(1), (6, 8, 8, 3))
  task = jnp.zeros(6, jnp.int32)
  params, state = jax.jit(model.init)(jax.random.key(0), x, task)
  chex.assert_trees_all_equal(state["batch_stats"]["BatchNorm_0"]["mean"],
                              jnp.zeros(4))
  train = jax.jit(lambda p, s, x: model.apply(p, s, x, task, True, None))
  evaluate = jax.jit(lambda p, s, x: model.apply(p, s, x, task, False, None))
  logits, new_state = train(params, state, x)
  assert logits.shape == (6, 3)
  # PyTorch momentum 0.1: running mean = 0.9 * 0 + 0.1 * batch mean of the
  # first convolution's output (3x3, padding 1, no bias).
  kernel = params["TorchConv_0"]["Conv_0"]["kernel"]
  conv = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(new_state["batch_stats"]["BatchNorm_0"]["mean"],
                             0.1 * conv.mean(axis=(0, 1, 2)), rtol=1e-4,
                             atol=1e-6)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state, new_state)
  assert all(jax.tree.leaves(changed))  # Every running statistic moved.
  eval_logits, eval_state = evaluate(params, new_state, x)
  chex.assert_trees_all_equal(eval_state, new_state)  # Frozen in evaluation.
  # Evaluation uses running statistics: a sample's logits do not depend on
  # the rest of the batch; in training, batch statistics make them depend.
  others = x.at[2:].set(x[2:] * 3 + 1)
  np.testing.assert_allclose(evaluate(params, new_state, others)[0][:2],
                             eval_logits[:2], rtol=1e-5, atol=1e-5)
  assert not np.allclose(train(params, state, others)[0][:2], logits[:2],
                         atol=1e-3)


# SlimResNet18 is checked as a backbone: its batch norms all lie before its
# output layer, which is all num_classes adds. The cosine classifier wraps
# the smaller ResNet32: what it adds is passing the mask on.
@pytest.mark.parametrize("module", [
    ResNet32(num_classes=3, n=1),
    MultiHead(SlimResNet18(num_classes=None, nf=4), num_classes=3,
              n_tasks=2),
    jaxcl.models.CosineClassifier(ResNet32(num_classes=None, n=1),
                                  num_classes=3)],
    ids=["resnet32", "multi_head", "cosine"])
def test_batch_norm_statistics_leave_out_masked_rows(module):
  model = as_model(module)
  real = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  padding = 5 * jax.random.normal(jax.random.key(2), (3, 8, 8, 3)) + 2
  task = jnp.zeros(7, jnp.int32)
  params, state = jax.jit(model.init)(jax.random.key(0), real, task[:4])
  train = jax.jit(lambda x, t, mask: model.apply(
      params, state, x, t, True, None, batch_stats_mask=mask))
  mask = jnp.arange(7) < 4
  padded_logits, padded_state = train(jnp.concatenate([real, padding]), task,
                                      mask)
  logits, expected_state = train(real, task[:4], None)
  # The running statistics and the real rows' outputs are those of the
  # real rows alone (Avalanche's smaller last batch, its empty memory).
  chex.assert_trees_all_close(padded_state, expected_state, rtol=1e-4,
                              atol=1e-5)
  np.testing.assert_allclose(padded_logits[:4], logits, rtol=1e-4, atol=1e-4)
  # A mask without a row counts every row, as none does, not none (NaN).
  chex.assert_trees_all_close(train(real, task[:4], jnp.zeros(4, bool)),
                              (logits, expected_state), rtol=1e-5, atol=1e-5)


def test_fit_carries_batch_stats_and_keeps_zero_weight_rows_out():
  """A ResNet's fit returns its batch statistics, moved by training; and
  replay's empty memory rows (weight 0) leave a first experience as naive
  training leaves it, with batch norm too; its last batch is partial (30
  samples in batches of 4), as Avalanche's smaller last batch."""
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(2), 15)
  x = (rng.integers(0, 40, (30, 8, 8, 3)) + 50 * y[:, None, None, None]
       ).astype(np.uint8)
  bench = class_incremental((x, y), (x, y), 1, fixed_class_order=[0, 1],
                            preprocess=normalizer(0.5, 0.25))
  model = ResNet32(num_classes=2, n=1)
  results = [jaxcl.fit(model, strategy, optax.sgd(0.05), bench, epochs=2,
                       batch_size=4)
             for strategy in (naive(), jaxcl.strategies.replay(mem_size=8))]
  stats = results[0].state.model_state["batch_stats"]
  init = jax.eval_shape(as_model(model).init, jax.random.key(0),
                        jnp.zeros((1, 8, 8, 3)), jnp.zeros(1, jnp.int32))[1]
  assert jax.tree.structure(stats) == jax.tree.structure(init["batch_stats"])
  means = [a for p, a in jax.tree_util.tree_leaves_with_path(stats)
           if "mean" in jax.tree_util.keystr(p)]
  assert all(np.abs(m).sum() > 0 for m in means)  # Updated from zero.
  assert np.isfinite(results[0].accuracy_matrix).all()
  chex.assert_trees_all_close(
      *[(r.state.params, r.state.model_state) for r in results], rtol=1e-4,
      atol=1e-5)


def test_batch_norm_counts_the_memory_rows_only_a_penalty_reads():
  """DER's memory rows weigh 0 in the task loss but are samples of the
  joint forward pass (Avalanche concatenates them): batch norm counts them.
  The model records how many rows its batch statistics cover."""
  def apply(params, state, x, task, train, key, batch_stats_mask=None):
    del task, key
    logits = x.reshape(x.shape[0], -1) @ params["w"]
    if train:
      state = {"rows": jnp.sum(batch_stats_mask, dtype=jnp.int32)}
    return logits, state
  model = jaxcl.models.Model(
      init=lambda key, x, task: ({"w": jnp.zeros((3, 4))},
                                 {"rows": jnp.zeros((), jnp.int32)}),
      apply=apply)
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(32, 3)).astype(np.float32), np.repeat(np.arange(4), 8)
  bench = class_incremental((x, y), (x, y), 2, fixed_class_order=range(4))
  counted = lambda strategy: int(jaxcl.fit(
      model, strategy, optax.sgd(0.1), bench, batch_size=8).state
      .model_state["rows"])
  # The 8 current rows, and DER's two draws of 8 from its full memory.
  assert counted(jaxcl.strategies.der(mem_size=8)) == 8 + 2 * 8
  # Replay's memory rows carry loss weight; a naive batch has no others.
  assert counted(jaxcl.strategies.replay(mem_size=8)) == 8 + 8
  assert counted(naive()) == 8


def test_strategies_training_mode_passes_leave_padding_out_of_batch_norm():
  """GEM's, A-GEM's and MAS's own training-mode passes (task_loss,
  ctx.logits) keep zero-weight rows out of batch statistics, as the step."""
  model = as_model(ResNet32(num_classes=4, n=1))  # Batch norm, few layers.
  loss = lambda logits, batch: optax.softmax_cross_entropy_with_integer_labels(
      logits, batch["y"])
  ctx = jaxcl.strategies.StrategyContext(model, lambda x: x, loss, 4, 2,
                                         (8, 8, 3), 4, 8)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  # Compiled: the ResNet's eager init runs op by op (slower than compiling).
  params, state = jax.jit(model.init)(jax.random.key(1), x,
                                      jnp.zeros(2, jnp.int32))
  real = {"x": x, "y": jnp.array([0, 1]), "task": jnp.zeros(2, jnp.int32),
          "weight": jnp.ones(2)}
  padded = {"x": jnp.concatenate([x, jnp.zeros((2, 8, 8, 3))]),
            "y": jnp.array([0, 1, 0, 0]), "task": jnp.zeros(4, jnp.int32),
            "weight": jnp.array([1.0, 1.0, 0.0, 0.0])}
  grad = lambda params, batch: jax.grad(
      lambda p: jaxcl.strategies.model_utils.task_loss(
          ctx, p, state, batch, jnp.ones(4, bool), train=True))(params)
  padded_grad, real_grad = jax.jit(lambda params: (  # One program for both.
      grad(params, padded), grad(params, real)))(params)
  # Batch statistics of two rows amplify rounding (the padded batch sums in
  # another order): 2e-5 apart on some machines. Padding counted in the
  # statistics would move the gradients by their own size.
  chex.assert_trees_all_close(padded_grad, real_grad, rtol=1e-3, atol=1e-4)


def test_mtmlp_selects_the_head_of_each_sample():
  model = MTMLP(num_classes=3, n_tasks=4, hidden_size=5, drop_rate=0.0)
  x = jax.random.normal(jax.random.key(1), (5, 2, 3))
  task = jnp.array([3, 0, 1, 3, 2])
  params = jax.jit(model.init)(jax.random.key(0), x, task)["params"]
  apply = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))
  dense = params["features"]["TorchLinear_0"]["Dense_0"]
  h = np.maximum(np.asarray(x).reshape(5, 6) @ dense["kernel"] + dense["bias"],
                 0)
  kernel, bias = np.asarray(params["heads"]["kernel"]), params["heads"]["bias"]
  expected = np.stack([h[i] @ kernel[t] + bias[t]
                       for i, t in enumerate(task.tolist())])
  np.testing.assert_allclose(apply(params, x, task), expected, rtol=1e-5,
                             atol=1e-6)
  # Heads of tasks absent from the batch get no gradient.
  two = jnp.array([3, 0, 0, 3, 0])
  grads = jax.jit(jax.grad(lambda p: apply(p, x, two).sum()))(params)
  used = np.abs(grads["heads"]["kernel"]).sum(axis=(1, 2))
  assert used[1] == 0 and used[2] == 0 and used[0] > 0 and used[3] > 0
  # A task label without a head gives NaN logits, not another head's.
  bad = apply(params, x, jnp.array([0, 4, -1, 0, 0]))
  assert np.isfinite(bad[0]).all() and np.isnan(bad[1:3]).all()
  # Narrow label types compare in int32 (n_tasks=200 wraps in int8).
  many = MultiHeadClassifier(num_classes=2, n_tasks=200)
  feats = jnp.ones((3, 4))
  head_params = many.init(jax.random.key(0), feats, jnp.zeros(3, jnp.int32))
  labels = jnp.array([0, 1, 2])
  np.testing.assert_array_equal(
      many.apply(head_params, feats, labels.astype(jnp.int8)),
      many.apply(head_params, feats, labels))
  # Float labels would be truncated onto a head.
  with pytest.raises(TypeError, match="task labels must be integers, got "
                     "dtype float32"):
    apply(params, x, jnp.array([0.0, 1.7, 0, 0, 0]))


def test_multi_head_model_learns_a_task_incremental_stream():
  bench = make_benchmark(n_classes=4, n_experiences=2, return_task_id=True,
                         class_ids_from_zero_in_each_exp=True)
  assert bench.n_classes == 2 and bench.n_tasks == 2
  model = MTMLP(num_classes=2, n_tasks=bench.n_tasks, hidden_size=16,
                drop_rate=0.0)
  strategy = _traced_once()
  result = jaxcl.fit(model, strategy, optax.sgd(0.1), bench, epochs=10,
                     batch_size=4)
  assert result.accuracy_matrix[1, 1] == 1.0
  assert result.accuracy_matrix[0, 0] == 1.0


def test_multi_head_cnn_fits_augmented_images_in_one_compile():
  bench = jaxcl.benchmarks.task_incremental(_images(size=12))
  strategy = _traced_once()
  model = jaxcl.models.mt_simple_cnn(num_classes=4, n_tasks=2)
  result = jaxcl.fit(model, strategy, optax.adam(0.01), bench, epochs=3,
                     batch_size=4)
  assert result.accuracy_matrix.shape == (2, 2)
  assert np.isfinite(result.metrics["train_loss"])
  assert result.accuracy_matrix[1, 1] > 0.5  # Brightness is easy to learn.
  assert result.state.params["heads"]["kernel"].shape == (2, 64, 4)


def test_multi_head_passes_train_by_position_to_a_lifted_backbone():
  # nn.remat with a static `train` sees only positional arguments.
  backbone = nn.remat(SlimResNet18, static_argnums=(2,))(num_classes=None,
                                                         nf=2)
  model = as_model(MultiHead(backbone, num_classes=3, n_tasks=2))
  x, task = jnp.zeros((2, 8, 8, 3)), jnp.array([0, 1])
  # Traced only (eval_shape): a keyword `train` fails while tracing.
  params, state = jax.eval_shape(model.init, jax.random.key(0), x, task)
  logits, _ = jax.eval_shape(
      lambda params, state: model.apply(
          params, state, x, task, True, None,
          batch_stats_mask=jnp.array([True, False])), params, state)
  assert logits.shape == (2, 3)


def test_output_layer_inputs_are_found_when_passed_by_keyword():
  class KeywordHeads(nn.Module):
    @nn.compact
    def __call__(self, x, task):
      features = nn.Dense(4)(x)
      return MultiHeadClassifier(2, 3)(features=features, task=task)
  model = as_model(KeywordHeads())
  ctx = jaxcl.strategies.StrategyContext(model, lambda x: x, None, 2, 1, (6,),
                                         3, 3)
  x, task = jnp.ones((3, 6)), jnp.zeros(3, jnp.int32)
  params, state = model.init(jax.random.key(0), x, task)
  path, inputs = jaxcl.strategies.model_utils.output_layer_call(
      ctx, params, state, x, task)
  assert path == ("MultiHeadClassifier_0",) and inputs.shape == (3, 4)


@pytest.mark.parametrize("module, shape", [
    (MLP(5, hidden_size=8, drop_rate=0.0), (6,)),
    (MTMLP(3, n_tasks=2, hidden_size=8, drop_rate=0.0), (6,)),
    (jaxcl.models.SimpleCNN(5), (10, 10, 3))])
def test_output_layer_run_on_its_inputs_gives_the_logits(module, shape):
  model = as_model(module)
  ctx = jaxcl.strategies.StrategyContext(model, lambda x: x, None, 5, 1,
                                         shape, 3, 3)
  x = jax.random.normal(jax.random.key(1), (3, *shape))
  task = jnp.array([0, 1, 1])
  params, state = model.init(jax.random.key(0), x, task)
  utils = jaxcl.strategies.model_utils
  head = utils.output_layer(ctx, params, state)
  path, inputs = utils.output_layer_call(ctx, params, state, x, task)
  assert head.path == path == utils.output_layer_path(ctx, params, state)
  np.testing.assert_allclose(head(params, inputs, task),
                             ctx.logits(params, state, x, task), atol=1e-6)
  # The copy holds no parameters of its own: it runs on those it is given.
  doubled = jax.tree.map(lambda p: 2 * p, params)
  np.testing.assert_allclose(head(doubled, inputs, task),
                             2 * ctx.logits(params, state, x, task),
                             rtol=1e-5, atol=1e-6)


def test_multi_head_wrapper_and_registry():
  x, task = jnp.zeros((2, 32, 32, 3)), jnp.array([0, 2])
  wrapped = MultiHead(SlimResNet18(num_classes=None, nf=4), num_classes=2,
                      n_tasks=3)
  variables = jax.eval_shape(wrapped.init, jax.random.key(0), x, task)
  assert variables["params"]["heads"]["kernel"].shape == (3, 32, 2)
  assert "batch_stats" in variables
  # The CLI passes the keyword arguments each registered model accepts.
  offered = {"num_classes": 7, "n_tasks": 3, "hidden_size": 8,
             "hidden_layers": 1, "drop_rate": 0.0}
  for name, factory in MODELS.items():
    accepted = inspect.signature(factory).parameters
    model = as_model(factory(**{k: v for k, v in offered.items()
                                if k in accepted}))

    def forward(model=model):
      params, state = model.init(jax.random.key(0), x, task)
      return model.apply(params, state, x, task, False, None)[0]

    assert jax.eval_shape(forward).shape == (2, 7), name


def test_mlp_features_are_the_last_hidden_layer_after_dropout():
  x = jax.random.normal(jax.random.key(1), (4, 6))
  module = MLP(None, hidden_size=64, drop_rate=0.5)
  variables = module.init(jax.random.key(0), x)
  assert set(variables["params"]) == {"TorchLinear_0"}
  dense = variables["params"]["TorchLinear_0"]["Dense_0"]
  hidden = np.maximum(x @ dense["kernel"] + dense["bias"], 0)
  np.testing.assert_allclose(module.apply(variables, x), hidden, atol=1e-6)
  dropped = module.apply(variables, x, train=True,
                         rngs={"dropout": jax.random.key(2)})
  # Inverted dropout: each unit zeroed or scaled by 1 / (1 - 0.5).
  kept = np.asarray(dropped) != 0
  assert 0.3 < kept[hidden > 0].mean() < 0.7
  np.testing.assert_allclose(np.asarray(dropped)[kept], 2 * hidden[kept],
                             rtol=1e-5)


@pytest.mark.parametrize("activation, fn", [("relu", lambda h: np.maximum(h, 0)),
                                            ("tanh", np.tanh)])
def test_mlp_activation_matches_numpy(activation, fn):
  model = jaxcl.models.MLP(3, hidden_size=5, drop_rate=0.0,
                           activation=activation)
  x = np.random.default_rng(0).normal(size=(4, 2, 3)).astype(np.float32)
  params = model.init(jax.random.key(0), x)["params"]
  (w1, b1), (w2, b2) = [(np.asarray(p["Dense_0"]["kernel"]),
                         np.asarray(p["Dense_0"]["bias"]))
                        for p in (params["TorchLinear_0"], params["TorchLinear_1"])]
  expected = fn(x.reshape(4, -1) @ w1 + b1) @ w2 + b2
  np.testing.assert_allclose(model.apply({"params": params}, x), expected,
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="activation 'gelu' is unknown"):
    jaxcl.models.MLP(3, activation="gelu").init(jax.random.key(0), x)
  # 0 hidden layers: a linear classifier; negative counts are refused.
  linear = jaxcl.models.MLP(3, hidden_layers=0).init(jax.random.key(0), x)
  assert list(linear["params"]) == ["TorchLinear_0"]
  for model in (jaxcl.models.MLP(3, hidden_layers=-1),
                MTMLP(3, n_tasks=2, hidden_layers=-1)):
    with pytest.raises(ValueError, match="hidden_layers must be a "
                       "non-negative integer, got -1"):
      model.init(jax.random.key(0), x, *([jnp.zeros(4, jnp.int32)]
                                         if isinstance(model, MTMLP) else []))



@pytest.mark.parametrize("rate", [-0.5, 1.0, float("nan")])
def test_dropout_rates_outside_zero_one_are_refused(rate):
  # Flax scales by 1/(1 - rate) whatever the rate: -0.5 silently scaled
  # activations by 2/3, 1.0 and NaN zeroed them.
  x, task = jnp.ones((2, 12, 12, 3)), jnp.zeros(2, jnp.int32)
  for model in (jaxcl.models.MLP(3, drop_rate=rate), MTMLP(3, n_tasks=2,
                                                           drop_rate=rate),
                jaxcl.models.SimpleCNN(3, drop_rate=rate)):
    with pytest.raises(ValueError, match=r"drop_rate must be in \[0, 1\)"):
      model.init(jax.random.key(0), x, *([task] if isinstance(model, MTMLP)
                                         else []))


@cpu_convolutions
@pytest.mark.parametrize("kernel_size,strides,padding,size", [
    (3, 1, 1, 9), (3, 1, 0, 8), (3, 2, 1, 9), (3, 2, 1, 8), (1, 1, 0, 5),
    (5, 2, 2, 11), (3, 3, 0, 10)])
def test_torch_conv_native_cpu_gradients_equal_jax_rules(kernel_size, strides,
                                                          padding, size):
  # The custom VJP must give JAX's own gradients for every stride, padding
  # and size whose last window does not reach the edge exactly.
  x = jax.random.normal(jax.random.key(0), (3, size, size, 2))
  convs = {native: TorchConv(5, kernel_size, strides=strides, padding=padding,
                             native_cpu_gradients=native)
           for native in (True, False)}
  params = convs[True].init(jax.random.key(1), x)

  def loss(native, params, x):
    return jnp.sum(jnp.sin(convs[native].apply(params, x)))

  def gradient_norm(native, params):
    grad = jax.grad(loss, 1)(native, params, x)
    return sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grad))

  def stacked(n_seeds):
    return jax.tree.map(
        lambda a: a * jnp.arange(1, n_seeds + 1).reshape(-1, *[1] * a.ndim),
        params)

  def gradients(native):
    """Every gradient compared below, for one choice of rules."""
    return {
        "grads": jax.grad(loss, (1, 2))(native, params, x),
        # A gradient of the gradient (La-MAML's second-order step) too.
        "second": jax.grad(gradient_norm, 1)(native, params),
        # Seeds vmapped over stacked parameters, and per-sample gradients,
        # with few (unrolled) and many (looped) kernels under vmap.
        "seeds": [jax.vmap(jax.grad(loss, 1), (None, 0, None))(
            native, stacked(n_seeds), x) for n_seeds in (2, 9)],
        "per_sample": [jax.vmap(jax.grad(loss, 1), (None, None, 0))(
            native, params, samples[:, None])
                       for samples in (x, jnp.tile(x, (4, 1, 1, 1)))]}

  # One compiled program for all (eager runs op by op; each program
  # compiles on its own).
  native, rules = jax.jit(lambda: (gradients(True), gradients(False)))()
  chex.assert_trees_all_close(native["grads"], rules["grads"], rtol=1e-5,
                              atol=1e-5)
  chex.assert_trees_all_close(native["second"], rules["second"], rtol=1e-4,
                              atol=1e-4)
  # Kernels up to 9x larger give gradients up to ~10: the rounding of
  # their sums reaches 1e-5 where terms cancel.
  chex.assert_trees_all_close(native["seeds"], rules["seeds"], rtol=1e-5,
                              atol=1e-4)
  chex.assert_trees_all_close(native["per_sample"], rules["per_sample"],
                              rtol=1e-5, atol=1e-5)


@cpu_convolutions
def test_torch_conv_gradients_in_a_scan_use_only_native_cpu_convolutions():
  # What makes them fast: XLA:CPU's Eigen kernels take convolutions labelled
  # b01f_01io->b01f; JAX's own rules leave permuted labels inside a scan.
  model = jaxcl.models.SimpleCNN(3)
  x = jnp.zeros((4, 6, 12, 12, 1))
  params = model.init(jax.random.key(0), x[0])

  def train(params, xs):
    def step(params, x):
      grads = jax.grad(lambda p: jnp.sum(model.apply(p, x)))(params)
      return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), None
    return jax.lax.scan(step, params, xs)[0]

  hlo = jax.jit(train).lower(params, x).compile().as_text()
  labels = re.findall(r"convolution\(.*?dim_labels=(\S+?),", hlo)
  # Five convolutions, their kernel gradients, the input gradients of all
  # but the first (the images are not differentiated).
  assert len(labels) == 5 + 5 + 4
  assert set(labels) == {"b01f_01io->b01f"}


@pytest.mark.parametrize("make", [
    lambda native: jaxcl.models.SimpleCNN(3, native_cpu_gradients=native),
    lambda native: SlimResNet18(3, nf=4, native_cpu_gradients=native),
    lambda native: ResNet32(3, n=1, native_cpu_gradients=native)])
def test_conv_models_train_the_same_with_native_cpu_gradients(make):
  models = {native: as_model(make(native)) for native in (True, False)}
  x = jax.random.normal(jax.random.key(0), (4, 12, 12, 3))
  task = jnp.zeros(4, jnp.int32)
  # Compiled rather than eager, which runs the ResNets op by op (slower).
  params, state = jax.jit(models[True].init)(jax.random.key(1), x, task)

  def loss(native, params):
    logits, _ = models[native].apply(params, state, x, task, True,
                                      jax.random.key(2))
    return jnp.sum(logits ** 2)

  native, rules = jax.jit(lambda params: (  # One program for both.
      jax.grad(loss, 1)(True, params), jax.grad(loss, 1)(False, params)))(
          params)
  chex.assert_trees_all_close(native, rules, rtol=1e-4, atol=1e-5)


def test_torch_conv_forward_mode_needs_jax_rules():
  conv = TorchConv(2, 3, native_cpu_gradients=False)
  x = jnp.ones((1, 5, 5, 1))
  params = conv.init(jax.random.key(0), x)
  _, tangent = jax.jvp(lambda x: conv.apply(params, x), (x,), (x,))
  np.testing.assert_allclose(tangent, conv.apply(params, x)
                             - params["params"]["Conv_0"]["bias"], rtol=1e-5)
  if jax.default_backend() == "cpu":  # Elsewhere JAX's rules run anyway.
    native = TorchConv(2, 3)
    with pytest.raises(TypeError, match="custom_vjp"):
      jax.jvp(lambda x: native.apply(params, x), (x,), (x,))
  # The rest is lowered, not run: forward mode through a custom VJP fails
  # while lowering (not while tracing), and only structures are checked.
  model = jaxcl.models.SimpleCNN(2, native_cpu_gradients=False)
  images = jnp.ones((1, 10, 10, 1))
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  # A Hessian-vector product, forward over reverse.
  loss = lambda v: jnp.sum(model.apply(v, images) ** 2)
  hvp = jax.jit(lambda v: jax.jvp(jax.grad(loss), (v,), (v,))[1]).trace(
      variables)
  hvp.lower()
  assert jax.tree.structure(hvp.out_info) == jax.tree.structure(variables)
  # The multi-head factories pass the choice on to their backbones.
  task = jnp.zeros(1, jnp.int32)
  for make in (jaxcl.models.mt_simple_cnn,
               functools.partial(jaxcl.models.mt_slim_resnet18, nf=2)):
    multi_head = make(2, n_tasks=2, native_cpu_gradients=False)
    variables = jax.eval_shape(multi_head.init, jax.random.key(0), images,
                               task)
    jax.jit(lambda v, m=multi_head: jax.jvp(
        lambda x: m.apply(v, x, task), (images,), (images,))).lower(variables)


def _plain_mlp(params, x):
  """MLP(3, hidden_layers=2, drop_rate=0) written with plain ``@``: JAX's own
  differentiation rules, for the custom tangent of TorchLinear to match."""
  layers = [params["params"][f"TorchLinear_{i}"]["Dense_0"] for i in range(3)]
  h = x.reshape(x.shape[0], -1)
  for layer in layers[:-1]:
    h = jax.nn.relu(h @ layer["kernel"] + layer["bias"])
  return h @ layers[-1]["kernel"] + layers[-1]["bias"]


def test_torch_linear_derivatives_equal_jax_rules():
  # On the CPU TorchLinear's product has its own tangent rule; every kind of
  # derivative jaxcl and its users take must equal JAX's rules for `@`.
  model = MLP(3, hidden_size=6, hidden_layers=2, drop_rate=0.0)
  x = jax.random.normal(jax.random.key(0), (5, 2, 2))
  params = model.init(jax.random.key(1), x)
  forwards = {"torch_linear": model.apply, "plain": _plain_mlp}

  def loss(forward, params, x):
    return jnp.sum(jnp.sin(forwards[forward](params, x)))

  def derivatives(forward):
    grads = jax.grad(loss, (1, 2))
    seeds = jax.tree.map(lambda a: a * jnp.arange(1.0, 4.0).reshape(
        -1, *[1] * a.ndim), params)
    return {
        "grads": grads(forward, params, x),
        # La-MAML's second-order step: a gradient of a gradient.
        "second": jax.grad(lambda p: sum(
            jnp.sum(g ** 2) for g in jax.tree.leaves(
                grads(forward, p, x))))(params),
        # Forward mode, and forward over reverse (Hessian-vector products).
        "jvp": jax.jvp(lambda p: loss(forward, p, x), (params,), (params,)),
        "hvp": jax.jvp(lambda p: jax.grad(loss, 1)(forward, p, x),
                       (params,), (params,))[1],
        # Seeds vmapped over stacked parameters; per-sample gradients.
        "seeds": jax.vmap(grads, (None, 0, None))(forward, seeds, x),
        "per_sample": jax.vmap(grads, (None, None, 0))(forward, params,
                                                       x[:, None])}

  torch_linear, plain = jax.jit(lambda: (derivatives("torch_linear"),
                                         derivatives("plain")))()
  chex.assert_trees_all_close(torch_linear, plain, rtol=1e-5, atol=1e-5)
  # Inputs with more than one leading axis (a sequence of feature vectors).
  layer = TorchLinear(4)
  sequences = jax.random.normal(jax.random.key(2), (2, 3, 5))
  variables = layer.init(jax.random.key(3), sequences)
  dense = variables["params"]["Dense_0"]
  chex.assert_trees_all_close(
      jax.grad(lambda v: jnp.sum(jnp.sin(layer.apply(v, sequences))))(
          variables)["params"]["Dense_0"],
      jax.grad(lambda d: jnp.sum(jnp.sin(sequences @ d["kernel"]
                                         + d["bias"])))(dense),
      rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="TorchLinear's own tangent rule serves the CPU only")
def test_torch_linear_gradients_in_a_scan_contract_the_left_last_axis():
  # What makes them fast: XLA:CPU's YNNPACK products take only a left
  # operand contracted over its last axis; JAX's rules give the kernels'
  # gradients as products contracting the leading (sample) axis of both.
  model = MLP(10, drop_rate=0.0)
  xs = jnp.zeros((3, 32, 784))
  ys = jnp.zeros((3, 32), jnp.int32)
  params = model.init(jax.random.key(0), xs[0])

  def train(params, xs, ys):
    def step(params, batch):
      grads = jax.grad(lambda p: jnp.mean(
          optax.softmax_cross_entropy_with_integer_labels(
              model.apply(p, batch[0]), batch[1])))(params)
      return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), None
    return jax.lax.scan(step, params, (xs, ys))[0]

  hlo = jax.jit(train).lower(params, xs, ys).compile().as_text()
  contracted = re.findall(r" dot\(.*?lhs_contracting_dims=\{(\d+)\}", hlo)
  # Two products forward, both kernels' gradients, the hidden layer's input
  # gradient (the images are not differentiated).
  assert len(contracted) == 5
  assert set(contracted) == {"1"}


class _SowsAuxiliaryLoss(nn.Module):
  """Batch norm plus an auxiliary value sown into its own collection."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.BatchNorm(use_running_average=not train)(nn.Dense(8)(x))
    self.sow("losses", "l2", jnp.sum(h ** 2))
    return nn.Dense(4)(nn.relu(h))


def test_a_model_sowing_into_its_own_collection_trains():
  bench = make_benchmark()
  result = jaxcl.fit(_SowsAuxiliaryLoss(), naive(), optax.sgd(0.1), bench,
                     batch_size=8)
  model_state = result.state.model_state
  # The sown collection keeps its init value; batch norm's statistics move.
  assert jax.tree.structure(model_state["losses"]) == jax.tree.structure(
      {"l2": (0.0,)})
  assert float(jnp.abs(model_state["batch_stats"]["BatchNorm_0"]["mean"]).sum()) > 0


def test_lifted_modules_get_train_by_position():
  # nn.remat's static_argnums (self, x, train) and nn.jit see positional
  # arguments only: the adapter passes `train` in its position.
  for lifted in (nn.remat(_SowsAuxiliaryLoss, static_argnums=(2,)),
                 nn.jit(_SowsAuxiliaryLoss, static_argnums=2)):
    model = as_model(lifted())
    x = jax.random.normal(jax.random.key(1), (6, 5))
    params, state = model.init(jax.random.key(0), x, jnp.zeros(6, jnp.int32))
    _, trained = model.apply(params, state, x, None, True, None)
    mean = trained["batch_stats"]["BatchNorm_0"]["mean"]
    np.testing.assert_allclose(  # Flax's default momentum, 0.99.
        mean, 0.01 * (x @ params["Dense_0"]["kernel"]
                     + params["Dense_0"]["bias"]).mean(0), rtol=1e-5,
        atol=1e-6)


class _ReturnsFeaturesToo(nn.Module):

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(8)(x)
    return nn.Dense(4)(h), h


def test_a_model_returning_more_than_logits_is_a_clear_error():
  with pytest.raises(ValueError, match=r"model returns \(\(1, 4\), \(1, 8\)\); "
                     r"expected one array of logits, \(4,\) per sample"):
    jaxcl.fit(_ReturnsFeaturesToo(), naive(), optax.sgd(0.1), make_benchmark(),
              batch_size=8)


@pytest.mark.parametrize("module, shape, error, message", [
    (MLP(10, hidden_size=0), (2, 4), ValueError,
     "hidden_size must be a positive integer, got 0"),
    (MLP(0), (2, 4), ValueError, "num_classes must be a positive integer"),
    (MLP(3, hidden_size=4.0), (2, 4), TypeError,
     "hidden_size must be a positive integer, got 4.0 of type float"),
    (MTMLP(3, n_tasks=0), (2, 4), ValueError,
     "n_tasks must be a positive integer, got 0"),
    (SlimResNet18(nf=0), (1, 8, 8, 3), ValueError,
     "nf must be a positive integer, got 0"),
    (ResNet32(n=True), (1, 8, 8, 3), TypeError,
     "n must be a positive integer, got True of type bool"),
    (TorchConv(4, 3, padding=-1), (1, 8, 8, 3), ValueError,
     "padding must be a non-negative integer, got -1"),
    (TorchConv(4, 3, strides=0), (1, 8, 8, 3), ValueError,
     "strides must be a positive integer, got 0"),
    (TorchConv(4, 3, native_cpu_gradients="False"), (1, 8, 8, 3), TypeError,
     "native_cpu_gradients must be True or False"),
], ids=["hidden_size", "num_classes", "float", "n_tasks", "nf", "n", "padding",
        "strides", "native_cpu_gradients"])
def test_sizes_and_switches_are_checked_with_their_names(module, shape, error,
                                                         message):
  # A zero size divided by zero in the init; a negative padding cropped.
  task = (jnp.zeros(shape[0], jnp.int32),) if isinstance(module, MTMLP) else ()
  with pytest.raises(error, match=message):
    module.init(jax.random.key(0), jnp.ones(shape), *task)


class _NoisyHidden(nn.Module):
  """Gaussian noise from its own random stream, then dropout, in training."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Dense(8)(x.reshape((x.shape[0], -1)))
    if train:
      h = h + jax.random.normal(self.make_rng("noise"), h.shape)
    h = nn.Dropout(0.5, deterministic=not train)(h)
    return nn.Dense(4)(h)


def test_extra_random_streams_draw_from_keys_folded_from_the_step_key():
  model = as_model(_NoisyHidden(), rng_streams=("dropout", "noise"))
  x = jax.random.normal(jax.random.key(1), (5, 3))
  params, state = model.init(jax.random.key(0), x, None)
  key = jax.random.key(7)
  logits, _ = model.apply(params, state, x, None, True, key)
  # Flax's own apply, given the keys as documented: dropout the step key
  # itself, any other stream the step key folded with crc32 of its name.
  noise_key = jax.random.fold_in(key, zlib.crc32(b"noise") & 0x7FFFFFFF)
  expected = _NoisyHidden().apply({"params": params}, x, True,
                                  rngs={"dropout": key, "noise": noise_key})
  np.testing.assert_array_equal(logits, expected)
  # And each stream's numbers matter: another noise key changes the logits.
  other = _NoisyHidden().apply({"params": params}, x, True,
                               rngs={"dropout": key, "noise": key})
  assert not np.allclose(logits, other)


def test_adding_a_random_stream_leaves_dropout_numbers_unchanged():
  x = jax.random.normal(jax.random.key(1), (6, 5))
  outputs = []
  for streams in (("dropout",), ("dropout", "noise"), ("noise", "dropout")):
    model = as_model(MLP(3, hidden_size=16), rng_streams=streams)
    params, state = model.init(jax.random.key(0), x, None)
    outputs.append(model.apply(params, state, x, None, True,
                               jax.random.key(2))[0])
  np.testing.assert_array_equal(outputs[0], outputs[1])
  np.testing.assert_array_equal(outputs[0], outputs[2])


def test_fit_trains_a_model_with_its_own_random_stream_reproducibly():
  bench = make_benchmark()
  runs = [jaxcl.fit(as_model(_NoisyHidden(), rng_streams=("dropout", "noise")),
                    naive(), optax.sgd(0.1), bench, batch_size=8, seed=3)
          for _ in range(2)]
  chex.assert_trees_all_equal(runs[0].state.params, runs[1].state.params)
  assert np.isfinite(runs[0].accuracy_matrix).all()


def test_a_random_stream_the_model_is_not_given_is_a_clear_error():
  with pytest.raises(
      ValueError, match=r"the model draws random numbers from the 'noise' "
      r"stream .*rng_streams=\('dropout',\) does not hold; expected "
      r".*rng_streams=\('dropout', 'noise'\)"):
    jaxcl.fit(_NoisyHidden(), naive(), optax.sgd(0.1), make_benchmark(),
              batch_size=8)


@pytest.mark.parametrize("streams, message", [
    ("dropout", "must be a sequence of stream names, got 'dropout'"),
    (("params",), "other than 'params'.*got 'params'"),
    (("dropout", ""), "other than 'params'.*got ''"),
    (("noise", "noise"), "names a stream twice"),
])
def test_bad_random_streams_are_refused(streams, message):
  with pytest.raises(ValueError, match=message):
    as_model(_NoisyHidden(), rng_streams=streams)


def test_random_streams_are_refused_for_a_model_of_functions():
  model = as_model(MLP(3))
  with pytest.raises(ValueError, match="applies to Flax modules"):
    as_model(model, rng_streams=("noise",))


class _NoisyAlways(nn.Module):
  """Draws noise whether or not it trains."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Dense(4)(x.reshape((x.shape[0], -1)))
    return h + jax.random.normal(self.make_rng("noise"), h.shape)


def test_a_stream_drawn_in_evaluation_is_named_as_such():
  # Listed or not, a stream drawn without a key (evaluation) is named so:
  # adding it to rng_streams would not help.
  for streams in (("dropout", "noise"), ("dropout",)):
    with pytest.raises(ValueError, match=r"draws random numbers from the "
                       r"'noise' stream \(make_rng\('noise'\)\) in a call "
                       r"without a random key, as in evaluation"):
      jaxcl.fit(as_model(_NoisyAlways(), rng_streams=streams), naive(),
                optax.sgd(0.1), make_benchmark(), batch_size=8)


@pytest.mark.parametrize("n, batch_size", [(7, 3), (8, 4), (5, 8)])
def test_shuffled_batches_draw_each_valid_row_once_per_epoch(n, batch_size):
  shuffled = jaxcl.strategies.model_utils.shuffled_batches
  valid = np.random.default_rng(n).random(n) < 0.7
  orders = []
  for seed in range(4):
    rows, weight = map(np.asarray, shuffled(jax.random.key(seed),
                                            jnp.asarray(valid), batch_size))
    assert rows.shape == weight.shape == (-(-n // batch_size), batch_size)
    drawn = rows[weight > 0]
    np.testing.assert_array_equal(np.sort(drawn), np.flatnonzero(valid))
    orders.append(tuple(drawn))
  assert len(set(orders)) > 1  # The order changes with the key.


def _np_lenet5(params, x):
  """LeNet5's forward pass in numpy: valid 5x5 convolutions as sums over
  sliding windows, 2x2 average pools."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])

  def conv(h, layer):
    kernel, bias = layer["Conv_0"]["kernel"], layer["Conv_0"]["bias"]
    windows = np.lib.stride_tricks.sliding_window_view(h, (5, 5), axis=(1, 2))
    return np.einsum("nhwcij,ijco->nhwo", windows, kernel) + bias

  def pool(h):
    n, height, width, c = h.shape
    return h.reshape(n, height // 2, 2, width // 2, 2, c).mean((2, 4))

  def dense(h, layer):
    return h @ layer["Dense_0"]["kernel"] + layer["Dense_0"]["bias"]

  h = pool(np.tanh(conv(x, p["TorchConv_0"])))
  h = pool(np.tanh(conv(h, p["TorchConv_1"])))
  h = np.tanh(conv(h, p["TorchConv_2"])).reshape(len(x), -1)
  return dense(np.tanh(dense(h, p["TorchLinear_0"])), p["TorchLinear_1"])


@pytest.mark.parametrize("channels, size", [(1, 32), (3, 36)])
def test_lenet5_matches_a_numpy_forward_pass(channels, size):
  from jaxcl.models import LeNet5
  x = np.random.default_rng(channels).normal(
      size=(2, size, size, channels)).astype(np.float32)
  params = LeNet5(10).init(jax.random.key(0), jnp.asarray(x))
  np.testing.assert_allclose(LeNet5(10).apply(params, jnp.asarray(x)),
                             _np_lenet5(params, x), rtol=1e-4, atol=1e-5)
  # PyTorch's LeNet5 parameter count (61,706 on one channel).
  spatial = ((size - 4) // 2 - 4) // 2 - 4
  expected = (6 * (25 * channels + 1) + 16 * (150 + 1) + 120 * (400 + 1)
              + 84 * (120 * spatial ** 2 + 1) + 10 * (84 + 1))
  assert sum(a.size for a in jax.tree.leaves(params)) == expected
  with pytest.raises(ValueError, match=r"H and W >= 32 .* \(2, 28, 28, 1\)"):
    LeNet5(10).init(jax.random.key(0), jnp.zeros((2, 28, 28, 1)))
