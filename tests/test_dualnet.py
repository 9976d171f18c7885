"""DualNet: the model's gating against numpy, Barlow Twins and the fast loss
against numpy transcriptions of Avalanche, the slow update's interpolation,
the memory's logits, seeds, the CLI and the refusals."""

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (TwoLayer, assert_trees_close, device_experience,
                      fit_seeds_alone,
                      hook_context, log_softmax)

import jaxcl
from jaxcl import cli
from jaxcl.models import DualNet
from jaxcl.strategies import (StrategyContext, UpdateOps, barlow_twins_loss,
                              buffers, distillation_loss, dual_net)
from jaxcl.training import cross_entropy

N_CLASSES, SIDE = 3, 5
TINY = dict(num_classes=N_CLASSES, nf=2, blocks=(1, 1, 1, 1),
            projector_hidden=4)


@pytest.fixture(scope="module")
def tiny(updating):
  """The model, its initial variables (the update tests' state's: one
  compiled init for the module) and two inputs."""
  _, _, state, _ = updating
  variables = {"params": state.params, **state.model_state}
  x = jax.random.normal(jax.random.key(1), (2, SIDE, SIDE, 3))
  return DualNet(**TINY), variables, x


def _conv3x3(x, kernel, bias):
  """numpy 3x3 convolution, stride 1, zero padding 1, NHWC."""
  padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
  h, w = x.shape[1:3]
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
  for dy in range(3):
    for dx in range(3):
      out += padded[:, dy:dy + h, dx:dx + w] @ kernel[dy, dx]
  return out + bias


def _eval_bn(x, bn, stats):
  return ((x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * bn["scale"]
          + bn["bias"])


def _ceil_pool(x):
  """Max-pool 2x2 stride 2 with PyTorch's ceil_mode (odd sides padded)."""
  h, w = x.shape[1:3]
  x = np.pad(x, [(0, 0), (0, h % 2), (0, w % 2), (0, 0)],
             constant_values=-np.inf)
  n, hh, ww, c = x.shape
  return x.reshape(n, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))


@pytest.mark.xdist_group("dualnet-updating")
def test_model_gates_the_slow_stages_with_the_fast_convolutions(tiny):
  model, variables, x = tiny
  params, stats = variables["params"], variables["batch_stats"]
  assert sorted(params) == ["fast", "slow"]
  assert sorted(params["slow"]) == ["projector", "trunk"]
  assert sorted(params["fast"]) == (
      [f"BatchNorm_{i}" for i in range(4)]
      + [f"TorchConv_{i}" for i in range(4)] + ["TorchLinear_0"])
  stages = model.apply(variables, x,
                       method=lambda m, x: m.slow(x, False, None))
  # A 5x5 input: the slow stages are 3x3, 2x2, 1x1, 1x1, as the fast
  # learner's ceil-mode pooling gives.
  assert [s.shape[1] for s in stages] == [3, 2, 1, 1]
  m = np.asarray(x, np.float64)
  for k, h in enumerate(stages):
    conv = params["fast"][f"TorchConv_{k}"]["Conv_0"]
    f = _conv3x3(m, np.asarray(conv["kernel"]), np.asarray(conv["bias"]))
    f = _eval_bn(f, params["fast"][f"BatchNorm_{k}"],
                 stats["fast"][f"BatchNorm_{k}"])
    m = _ceil_pool(np.maximum(f, 0)) * np.asarray(h)
  head = params["fast"]["TorchLinear_0"]["Dense_0"]
  expected = m.mean(axis=(1, 2)) @ head["kernel"] + head["bias"]
  np.testing.assert_allclose(model.apply(variables, x), expected, rtol=1e-5,
                             atol=1e-6)


@pytest.mark.xdist_group("dualnet-updating")
def test_projection_is_the_projector_on_the_pooled_slow_trunk(tiny):
  model, variables, x = tiny
  stages = model.apply(variables, x,
                       method=lambda m, x: m.slow(x, False, None))
  features = np.asarray(stages[-1]).mean(axis=(1, 2))
  np.testing.assert_allclose(
      model.apply(variables, x, method=DualNet.slow_features), features,
      rtol=1e-6)
  proj = variables["params"]["slow"]["projector"]
  hidden = _eval_bn(features @ proj["Dense_0"]["kernel"], proj["BatchNorm_0"],
                    variables["batch_stats"]["slow"]["projector"]["BatchNorm_0"])
  expected = np.maximum(hidden, 0) @ proj["Dense_1"]["kernel"]
  np.testing.assert_allclose(
      model.apply(variables, x, method=DualNet.projection), expected,
      rtol=1e-5, atol=1e-6)


def _barlow_twins_np(z1, z2):
  """Avalanche's MaskNet.BarlowTwins on projections (torch's std is the
  unbiased one)."""
  za = (z1 - z1.mean(0)) / z1.std(0, ddof=1)
  zb = (z2 - z2.mean(0)) / z2.std(0, ddof=1)
  c = za.T @ zb / len(z1)
  diff = (c - np.eye(c.shape[0])) ** 2
  off = ~np.eye(c.shape[0], dtype=bool)
  diff[off] *= 2e-3
  return diff.sum()


def test_barlow_twins_loss_is_avalanches_over_the_real_rows():
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(2, 7, 4))
  weight = np.array([1, 1, 0, 1, 1, 1, 0], np.float32)
  real = weight > 0
  np.testing.assert_allclose(
      barlow_twins_loss(jnp.asarray(z1), jnp.asarray(z2), jnp.asarray(weight)),
      _barlow_twins_np(z1[real], z2[real]), rtol=1e-5)


def _softmax(z):
  return np.exp(log_softmax(z))


def test_distillation_loss_is_avalanches_kl_div():
  rng = np.random.default_rng(1)
  logits, stored = rng.normal(size=(2, 4, 5))
  weight = np.array([1, 1, 1, 0], np.float32)
  t = 2.0
  # F.kl_div(log_softmax(y1/T), softmax(y2/T), reduce=True) * y1.shape[0]
  # on the 3 drawn rows: the elementwise mean times the rows.
  p = _softmax(stored[:3] / t)
  elementwise = p * (np.log(p) - log_softmax(logits[:3] / t))
  expected = elementwise.mean() * 3
  np.testing.assert_allclose(
      distillation_loss(jnp.asarray(logits), jnp.asarray(stored),
                        jnp.asarray(weight), t), expected, rtol=1e-5)


def _image_ctx(model):
  return StrategyContext(
      model=jaxcl.models.as_model(model), preprocess=lambda x: x,
      loss=cross_entropy, n_classes=N_CLASSES, n_experiences=2,
      input_shape=(SIDE, SIDE, 3), batch_size=4, experience_size=8)


def _ops(ctx, optimizer):
  """The loop's ``UpdateOps`` for a plain task loss and no augmentation."""
  def loss(params, state, batch, key):
    logits = ctx.logits(params, state.model_state, batch["x"], batch["task"],
                        True, key, weight=batch["weight"])
    return (jnp.sum(cross_entropy(logits, batch) * batch["weight"])
            / jnp.sum(batch["weight"]))

  def apply(state, grads):
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.params)
    return state.replace(params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state)

  return UpdateOps(loss=loss, step=None, apply=apply,
                   augment=lambda x, key: x)


# One strategy and one compiled update for the update tests: beta lives in
# the strategy's state and the learning rate in the optimizer's.
LR, T, STRENGTH = 0.05, 2.0, 10.0
OPTIMIZER = optax.inject_hyperparams(optax.sgd)(learning_rate=LR)


def _start(strategy):
  ctx = _image_ctx(DualNet(**TINY))
  # Compiled: the ResNet's eager init runs op by op (40 s on a busy CPU).
  state = jax.jit(lambda key: jaxcl.training.init_state(
      ctx, strategy, OPTIMIZER, key, jnp.zeros((1, SIDE, SIDE, 3)),
      jnp.zeros((1,), jnp.int32)))(jax.random.key(0))
  return ctx, state.replace(seen_classes=jnp.ones(N_CLASSES, bool))


def _batch(seed=2, rows=4):
  rng = np.random.default_rng(seed)
  return {"x": jnp.asarray(rng.uniform(0, 1, (rows, SIDE, SIDE, 3)),
                           jnp.float32),
          "y": jnp.asarray(rng.integers(0, N_CLASSES, rows), jnp.int32),
          "task": jnp.zeros(rows, jnp.int32),
          "weight": jnp.ones(rows, jnp.float32)}


@pytest.fixture(scope="module")
def updating():
  """``(strategy, ctx, state, update)``: a fresh state and the compiled
  batch update (its tests share an xdist group: one worker compiles it)."""
  strategy = dual_net(inner_steps=2, n_outer=1, mem_size=8, batch_size_mem=3,
                      temperature=T, memory_strength=STRENGTH, slow_lr=0.5,
                      ssl_batch_size=4)
  ctx, state = _start(strategy)
  update = jax.jit(lambda s, k: strategy.update(
      ctx, s.cl_state, s, _batch(), k, _ops(ctx, OPTIMIZER)))
  return strategy, ctx, state, update


def _with(state, beta, lr):
  opt_state = state.opt_state
  opt_state.hyperparams["learning_rate"] = jnp.float32(lr)
  return state.replace(cl_state=state.cl_state._replace(
      beta=jnp.float32(beta)), opt_state=opt_state)


@pytest.mark.xdist_group("dualnet-updating")
def test_slow_update_keeps_beta_of_the_change_of_slow_weights_and_stats(
    updating):
  _, _, before, update = updating
  # The main optimizer's rate 0: the fast update moves nothing (and the
  # memory is empty: the Barlow-Twins batch is the current one).
  full, _ = update(_with(before, 1.0, 0.0), jax.random.key(3))
  part, _ = update(_with(before, 0.3, 0.0), jax.random.key(3))
  for name in ("params", "model_state"):
    b, f, p = (getattr(s, name) for s in (before, full, part))
    assert_trees_close(p, jax.tree.map(lambda a, c: a + 0.3 * (c - a), b, f),
                       atol=1e-6)
  # The Barlow-Twins steps move the slow learner and its statistics and
  # leave the fast learner's parameters and statistics alone.
  kernel = lambda s: s.params["slow"]["projector"]["Dense_1"]["kernel"]
  assert not np.allclose(kernel(full), kernel(before))
  mean = lambda s: s.model_state["batch_stats"]["slow"]["trunk"][
      "BatchNorm_0"]["mean"]
  assert not np.allclose(mean(full), mean(before))
  assert_trees_close(full.params["fast"], before.params["fast"], atol=0)
  assert_trees_close(full.model_state["batch_stats"]["fast"],
                     before.model_state["batch_stats"]["fast"], atol=0)


@pytest.mark.xdist_group("dualnet-updating")
def test_fast_update_steps_on_avalanches_loss(updating):
  _, ctx, state, update = updating
  # Three samples in the memory: each step draws them all.
  memory = _batch(seed=5, rows=3)
  stored = jnp.asarray(np.random.default_rng(6).normal(size=(3, N_CLASSES)),
                       jnp.float32)
  own = state.cl_state._replace(memory=buffers.add(
      state.cl_state.memory, jax.random.key(4), memory["x"], memory["y"],
      memory["task"], extras={"dualnet_logits": stored}))
  # beta = 0: the slow update leaves the weights as they were.
  state = _with(state.replace(cl_state=own), 0.0, LR)
  new, _ = update(state, jax.random.key(3))
  batch = _batch()

  def loss(params):
    """CE(batch) + CE(memory) + strength * KL / classes."""
    def logits(x):
      return ctx.model.apply(params, state.model_state, x,
                             jnp.zeros(len(x), jnp.int32), True, None)[0]
    current, replay = logits(batch["x"]), logits(memory["x"])
    ce = lambda z, y: -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(len(y)), y])
    p = jax.nn.softmax(stored / T)
    kl = jnp.sum(p * (jnp.log(p) - jax.nn.log_softmax(replay / T)))
    return (ce(current, batch["y"]) + ce(replay, memory["y"])
            + STRENGTH * kl / N_CLASSES)

  @jax.jit  # One step compiled, run twice: half the program of two.
  def step(params):
    return jax.tree.map(lambda p, g: p - LR * g, params,
                        jax.grad(loss)(params))

  # Two inner steps; the batch statistics in the reference stay at the
  # state's, which training-mode forward passes do not read.
  expected = step(step(state.params))
  # float32 through batch norm over 3 rows of 1x1 maps is ill-conditioned:
  # the update agrees to a small fraction of its size (in float64, 1e-6).
  flat = lambda tree: jnp.concatenate([a.ravel() for a in
                                       jax.tree.leaves(tree)])
  moved = flat(expected) - flat(state.params)
  error = flat(new.params) - flat(expected)
  assert float(jnp.linalg.norm(error)) < 0.01 * float(jnp.linalg.norm(moved))
  bias = lambda s: s["slow"]["trunk"]["BatchNorm_0"]["bias"]
  assert not np.allclose(bias(new.params), bias(state.params))


@pytest.mark.xdist_group("dualnet-updating")
def test_memory_stores_the_experience_with_its_eval_mode_logits(updating):
  strategy, ctx, state, _ = updating
  batch = _batch(seed=7, rows=6)
  # Five samples padded to six rows.
  data = device_experience(np.asarray(batch["x"][:5]), [0, 1, 2, 0, 1], 0, 6,
                           N_CLASSES)
  # Compiled: eager, the ResNet runs op by op (slower).
  new = jax.jit(lambda state, data: strategy.end_experience(
      ctx, state, data, jax.random.key(0)))(state, data)
  memory = new.cl_state.memory
  assert int(buffers.size(memory)) == 5
  logits, _ = ctx.model.apply(state.params, state.model_state, batch["x"],
                              batch["task"], False, None)
  slots = np.flatnonzero(memory.valid)
  order = [int(np.flatnonzero(np.all(np.asarray(batch["x"]) ==
                                     np.asarray(memory.x[s]), axis=(1, 2, 3)))[0])
           for s in slots]
  assert sorted(order) == [0, 1, 2, 3, 4]
  np.testing.assert_allclose(memory.extras["dualnet_logits"][slots],
                             np.asarray(logits)[order], rtol=1e-6)


class _SlowMLP(flax.linen.Module):
  """A dense slow learner and its projector (made at init as well)."""

  @flax.linen.compact
  def __call__(self, x, project=False):
    h = flax.linen.relu(flax.linen.Dense(8)(x.reshape(x.shape[0], -1)))
    projector = flax.linen.Dense(8, use_bias=False, name="projector")
    if project or self.is_initializing():
      z = projector(h)
      if project:
        return z
    return h


class _SlowFastMLP(flax.linen.Module):
  """The slow/fast split without batch norm (DualNet's chaotic batch
  statistics over a few rows aside, seeds together equal seeds alone)."""

  def setup(self):
    self.slow = _SlowMLP()
    self.fast = flax.linen.Dense(N_CLASSES)

  def __call__(self, x, train=False):
    return self.fast(self.slow(x))

  def projection(self, x, train=False):
    return self.slow(x, project=True)


def test_seeds_together_equal_seeds_alone_without_batch_norm(
    fit_with_mlir_emitters):
  # These runs amplify rounding (the Barlow-Twins loss over 4 rows): a
  # single run compiled with XLA:CPU's older emitters ends 0.2 away from
  # the same run with the MLIR ones, its accuracies 1.0 apart. With the
  # older ones the vmapped and single programs round differently (the
  # parameters end 1e-3 and 0.25 apart); with the MLIR ones, 1e-7 and 3e-6.
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(N_CLASSES), 6)
  x = np.clip(rng.uniform(0, 1, (N_CLASSES, 6, 6, 3))[y]
              + rng.normal(0, 0.1, (len(y), 6, 6, 3)), 0, 1).astype(np.float32)
  bench = jaxcl.benchmarks.class_incremental(
      (x, y), (x, y), 3, fixed_class_order=range(N_CLASSES))
  alone = fit_seeds_alone(_SlowFastMLP(), dual_net(
      inner_steps=2, n_outer=2, mem_size=8, batch_size_mem=4,
      ssl_batch_size=4), bench)
  # The memory filled and replayed (its stored logits differ per seed).
  memory = alone[0].state.cl_state.memory
  assert int(buffers.size(memory)) == 8


@pytest.mark.parametrize("kwargs, message", [
    ({"inner_steps": 0}, "inner_steps"),
    ({"n_outer": 0}, "n_outer"),
    ({"mem_size": 0}, "mem_size"),
    ({"batch_size_mem": 20, "mem_size": 10}, "batch_size_mem=20 exceeds"),
    ({"ssl_batch_size": 0}, "ssl_batch_size"),
    ({"memory_strength": -1.0}, "memory_strength"),
    ({"temperature": 0.0}, "temperature"),
    ({"beta": 1.5}, "beta"),
    ({"slow_lr": -0.1}, "slow_lr"),
])
def test_refuses_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    dual_net(**kwargs)


def test_refuses_models_without_the_slow_fast_split():
  ctx = hook_context(TwoLayer())
  params, _ = ctx.model.init(jax.random.key(0), jnp.zeros((1, 3)),
                             jnp.zeros((1,), jnp.int32))
  with pytest.raises(ValueError, match=r"'slow' and 'fast'.*DualNet"):
    dual_net().init(ctx, params, jax.random.key(0))


def test_cli_refuses_a_model_without_the_split(tmp_path, capsys):
  assert cli.main(["run", "--strategy", "dual_net", "--model", "mlp",
                   "--n-experiences", "2", "--epochs", "1", "--no-progress",
                   "--compilation-cache", "", "--logdir", str(tmp_path)]) != 0
  assert "'slow' and 'fast'" in capsys.readouterr().err


# The augmentations of the views, against numpy transcriptions of
# torchvision's tensor code.
def _images(seed=0, n=6, side=4, channels=3):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, side, side, channels)).astype(np.uint8)


def _gray_np(x):
  return (x.astype(np.float64) @ np.array([0.2989, 0.587, 0.114])).astype(
      np.float32).astype(x.dtype).astype(np.float64)[..., None]


def _blend_np(a, b, ratio):
  return np.clip(ratio * a + (1 - ratio) * b, 0, 255).astype(np.uint8)


def _hue_np(x, shift):
  import colorsys
  out = np.empty(x.shape)
  for idx in np.ndindex(x.shape[:-1]):
    h, s, v = colorsys.rgb_to_hsv(*(x[idx] / 255.0))
    out[idx] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
  return (out * (255 + 1 - 1e-3)).astype(np.uint8)


@pytest.mark.parametrize("kwargs, expected", [
    ({"brightness": (1.5, 1.5)}, lambda x: _blend_np(x, 0.0, 1.5)),
    ({"contrast": (0.5, 0.5)},
     lambda x: _blend_np(x, _gray_np(x).mean(axis=(1, 2, 3), keepdims=True),
                         0.5)),
    ({"saturation": (0.3, 0.3)}, lambda x: _blend_np(x, _gray_np(x), 0.3)),
    ({"hue": (0.2, 0.2)}, lambda x: _hue_np(x, 0.2)),
])
def test_color_jitter_adjustments_are_torchvisions(kwargs, expected):
  x = _images()
  out = jax.jit(jaxcl.benchmarks.augment.color_jitter(**kwargs))(
      jnp.asarray(x), jax.random.key(0))
  # Truncation after float32 rounding may differ by one level.
  np.testing.assert_allclose(np.asarray(out, float), expected(x), atol=1)
  assert np.mean(np.asarray(out) == expected(x)) > 0.95


def test_color_jitter_orders_at_random_and_applies_with_probability():
  augment = jaxcl.benchmarks.augment
  x = _images(n=64)
  # Each augmentation compiled, as training runs it (eager is slower).
  out = np.asarray(jax.jit(augment.color_jitter(brightness=(2.0, 2.0),
                                                contrast=(0.5, 0.5)))(
      jnp.asarray(x), jax.random.key(1)))
  bright_first = _blend_np(
      _blend_np(x, 0, 2.0),
      _gray_np(_blend_np(x, 0, 2.0)).mean(axis=(1, 2, 3), keepdims=True), 0.5)
  contrast_first = _blend_np(
      _blend_np(x, _gray_np(x).mean(axis=(1, 2, 3), keepdims=True), 0.5),
      0, 2.0)
  first = np.all(np.abs(out.astype(int) - bright_first) <= 1, axis=(1, 2, 3))
  second = np.all(np.abs(out.astype(int) - contrast_first) <= 1,
                  axis=(1, 2, 3))
  assert np.all(first | second) and first.any() and second.any()
  # One channel: saturation and hue leave the image as it is.
  gray = _images(channels=1)
  np.testing.assert_array_equal(
      jax.jit(augment.color_jitter(saturation=0.5, hue=0.5))(
          jnp.asarray(gray), jax.random.key(2)), gray)
  kept = jax.jit(augment.color_jitter(brightness=(2.0, 2.0),
                                      probability=0.5))(
      jnp.asarray(x), jax.random.key(3))
  unchanged = np.all(np.asarray(kept) == x, axis=(1, 2, 3))
  assert 0.25 < unchanged.mean() < 0.75
  # Adjustments not given are skipped, not applied as identities: no clamp
  # to [0, 1], no HSV round trip (torchvision's ColorJitter() is a no-op).
  outside = jnp.asarray([[[[1.5, -0.2, 0.3]]]], jnp.float32)
  np.testing.assert_array_equal(
      jax.jit(augment.color_jitter())(outside, jax.random.key(0)), outside)
  np.testing.assert_allclose(
      jax.jit(augment.color_jitter(brightness=(1.0, 1.0)))(
          outside, jax.random.key(0)), [[[[1.0, 0.0, 0.3]]]], rtol=1e-6)


def _blur_np(x, k, sigma):
  offsets = np.arange(k) - k // 2
  g = np.exp(-0.5 * (offsets / sigma) ** 2)
  kernel = np.outer(g, g) / g.sum() ** 2
  half = k // 2
  padded = np.pad(x.astype(np.float64),
                  [(0, 0), (half, half), (half, half), (0, 0)], mode="reflect")
  h, w = x.shape[1:3]
  return sum(kernel[i, j] * padded[:, i:i + h, j:j + w]
             for i in range(k) for j in range(k))


def test_gaussian_blur_is_torchvisions():
  augment = jaxcl.benchmarks.augment
  x = np.random.default_rng(4).uniform(0, 1, (3, 6, 5, 2)).astype(np.float32)
  # Each blur compiled, as training runs it (eager is slower).
  np.testing.assert_allclose(
      jax.jit(augment.gaussian_blur(5, sigma=0.8))(jnp.asarray(x),
                                                   jax.random.key(0)),
      _blur_np(x, 5, 0.8), rtol=1e-5, atol=1e-6)
  ints = _images(channels=3)
  np.testing.assert_allclose(
      jax.jit(augment.gaussian_blur(3, sigma=(1.3, 1.3)))(jnp.asarray(ints),
                                                          jax.random.key(0)),
      np.round(_blur_np(ints, 3, 1.3)), atol=1)
  # sigma drawn per image from its range: two images blur differently.
  same = np.ones((2, 5, 5, 1), np.float32) * np.arange(5.0)[:, None]
  out = np.asarray(jax.jit(augment.gaussian_blur(3, (0.1, 2.0)))(
      jnp.asarray(same), jax.random.key(5)))
  assert not np.allclose(out[0], out[1])
  with pytest.raises(ValueError, match="kernel_size must be odd"):
    augment.gaussian_blur(4)
  with pytest.raises(ValueError, match="sigma"):
    augment.gaussian_blur(3, sigma=(2.0, 1.0))
  with pytest.raises(ValueError, match="hue"):
    augment.color_jitter(hue=0.7)
