"""GSA and random_resized_crop: against numpy transcriptions, memory task
tags and draws, seeds, CLI, refusals."""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (TwoLayer, device_experience, fit_seeds_alone,
                      hook_context, hook_state, log_softmax, tiny_cli_metrics,
                      two_layer_numpy)

import jaxcl
from jaxcl.benchmarks import augment
from jaxcl.strategies import from_spec, gsa, gsa_cross_entropy

gsa_module = importlib.import_module("jaxcl.strategies.cross_task")

SHAPE = (2, 2, 1)


# --- random_resized_crop -----------------------------------------------------


def _torch_bilinear_axis(n_in, n_out):
  """torch's upsample_bilinear2d (align_corners=False) along one axis:
  ``(low, high, frac)`` per output index."""
  scale = n_in / n_out
  out = []
  for i in range(n_out):
    src = max(scale * (i + 0.5) - 0.5, 0.0)
    low = int(np.floor(src))
    high = low + (1 if low < n_in - 1 else 0)
    out.append((low, high, src - low))
  return out


def _numpy_resized_crop(image, top, left, height, width):
  """torchvision's ``resized_crop``: the window, then a bilinear resize to
  the image's size, written with loops."""
  window = np.asarray(image, np.float64)[top:top + height, left:left + width]
  h, w = image.shape[:2]
  out = np.zeros((h, w, image.shape[2]))
  for i, (y0, y1, fy) in enumerate(_torch_bilinear_axis(height, h)):
    for j, (x0, x1, fx) in enumerate(_torch_bilinear_axis(width, w)):
      out[i, j] = ((1 - fy) * ((1 - fx) * window[y0, x0] + fx * window[y0, x1])
                   + fy * ((1 - fx) * window[y1, x0] + fx * window[y1, x1]))
  return out


@pytest.mark.parametrize("box", [(0, 0, 7, 9), (2, 1, 5, 6), (1, 3, 3, 2),
                                 (0, 0, 7, 9)[:2] + (1, 1)])
def test_resized_crop_matches_torchs_bilinear_resize(box):
  rng = np.random.default_rng(0)
  image = rng.normal(size=(7, 9, 3)).astype(np.float32)
  got = jax.jit(augment._resized_crop)(jnp.asarray(image), jnp.asarray(box))
  np.testing.assert_allclose(got, _numpy_resized_crop(image, *box),
                             rtol=1e-5, atol=1e-5)
  pixels = rng.integers(0, 256, (7, 9, 3)).astype(np.uint8)
  got = augment._resized_crop(jnp.asarray(pixels), jnp.asarray(box))
  assert got.dtype == jnp.uint8
  expected = np.clip(np.round(_numpy_resized_crop(pixels, *box)), 0, 255)
  np.testing.assert_allclose(np.asarray(got, np.float64), expected, atol=1)


def test_random_resized_crop_draws_torchvisions_windows():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6, 6, 3)),
                  jnp.float32)
  # Compiled, as training runs it (eager runs op by op, slower).
  whole = jax.jit(augment.random_resized_crop(scale=(1.0, 1.0),
                                              ratio=(1.0, 1.0)))
  np.testing.assert_allclose(whole(x, jax.random.key(0)), x, atol=1e-6)
  keys = jax.random.split(jax.random.key(2), 500)
  boxes = np.asarray(jax.jit(jax.vmap(lambda k: augment._crop_box(
      k, 28, 20, (0.6, 1.0), (3 / 4, 4 / 3))))(keys))
  top, left, height, width = boxes.T
  assert np.all((top >= 0) & (top + height <= 28))
  assert np.all((left >= 0) & (left + width <= 20))
  # Rounding each side moves the area by under a side's length.
  area = height * width
  assert np.all(area >= 0.6 * 560 - 28) and np.all(area <= 560)
  assert len(set(map(tuple, boxes))) > 100  # Each key its own window.
  # No aspect ratio in (4, 5) fits a square: the central 8 x 2 window.
  box = augment._crop_box(jax.random.key(0), 8, 8, (0.9, 1.0), (4.0, 5.0))
  assert np.asarray(box).tolist() == [3, 0, 2, 8]


@pytest.mark.parametrize("kwargs, message", [
    ({"scale": (0.8, 0.2)}, r"scale must be a pair with low <= high"),
    ({"scale": (0.0, 1.0)}, r"scale\[0\] must be in \(0, inf\)"),
    ({"ratio": 1.0}, r"ratio must be a pair \(low, high\), got 1.0"),
])
def test_random_resized_crop_refuses_bad_ranges(kwargs, message):
  with pytest.raises(ValueError, match=message):
    augment.random_resized_crop(**kwargs)


# --- GSA ---------------------------------------------------------------------


def _ctx(batch_size=3):
  return hook_context(TwoLayer(), dim=4, batch_size=batch_size)._replace(
      input_shape=SHAPE, preprocess=lambda x: x.reshape(x.shape[0], -1))


def _experience(labels, index, seed, origin=None):
  x = np.random.default_rng(seed).normal(size=(len(labels), *SHAPE))
  return device_experience(x, labels, index, 8, 4, origin)


def _batch(labels, weight, seed=5):
  x = np.random.default_rng(seed).normal(size=(len(labels), *SHAPE))
  return {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(labels),
          "task": jnp.zeros(len(labels), jnp.int32),
          "weight": jnp.asarray(weight, jnp.float32)}


@functools.cache
def _hooks(strategy, ctx):
  """``strategy``'s compiled begin and end of an experience on ``ctx``,
  made once: every experience of every run reuses their traces."""
  return (jax.jit(lambda s, d: strategy.begin_experience(
      ctx, s, d, jax.random.key(7))),
          jax.jit(lambda s, d, k: strategy.end_experience(ctx, s, d, k)))


def _run(strategy, ctx, state, experiences):
  """Begins and ends each ``(labels, index[, origin])`` experience in turn
  (its inputs drawn with seed ``index``)."""
  begin, end = _hooks(strategy, ctx)
  for labels, index, *origin in experiences:
    data = _experience(labels, index, index, *origin)
    state = end(begin(state, data), data, jax.random.key(index))
  return state


def test_memory_tags_each_sample_with_its_task():
  ctx = _ctx()
  strategy = gsa(mem_size=16, batch_size_mem=4, batch_size_mem_cur=4)
  # Two mini-experiences cut from original experience 0 (one task), then
  # one of original experience 1 (a new task).
  state = _run(strategy, ctx, hook_state(ctx, strategy), [([0, 1, 0], 0, 0)])
  state = state.replace(cl_state=state.cl_state.replace(
      task_steps=jnp.int32(7)))
  state = _run(strategy, ctx, state, [([1, 1], 1, 0)])
  # The same task goes on counting its steps.
  assert int(state.cl_state.task) == 0
  assert int(state.cl_state.task_steps) == 7
  state = _run(strategy, ctx, state, [([2, 3, 3], 2, 1)])
  cl = state.cl_state
  assert int(cl.task) == 1
  assert np.asarray(cl.current).tolist() == [False, False, True, True]
  assert np.asarray(cl.seen).all()
  valid = np.asarray(cl.buffer.valid)
  y, tag = np.asarray(cl.buffer.y)[valid], np.asarray(
      cl.buffer.extras["gsa_task"])[valid]
  assert sorted(y.tolist()) == [0, 0, 1, 1, 1, 2, 3, 3]
  np.testing.assert_array_equal(tag, (y >= 2).astype(int))
  # A new task restarts the step count.
  assert int(cl.task_steps) == 0


def test_a_task_is_an_original_experience_however_small_its_minis():
  ctx = _ctx()
  strategy = gsa(mem_size=16, batch_size_mem=4, batch_size_mem_cur=4)
  # Mini-experiences of one sample: classes change within original
  # experience 0 without starting a task, and original experience 1
  # starts one even though it shares class 1.
  state = _run(strategy, ctx, hook_state(ctx, strategy), [
      ([0], 0, 0), ([1], 1, 0), ([0], 2, 0), ([1], 3, 1), ([2], 4, 1)])
  cl = state.cl_state
  assert int(cl.task) == 1 and int(cl.origin) == 1
  assert np.asarray(cl.current).tolist() == [False, True, True, False]
  valid = np.asarray(cl.buffer.valid)
  np.testing.assert_array_equal(
      np.asarray(cl.buffer.extras["gsa_task"])[valid], [0, 0, 0, 1, 1])
  # Offline, every experience is a task of its own, shared classes or not.
  state = _run(strategy, ctx, hook_state(ctx, strategy),
               [([0, 1], 0), ([1, 2], 1)])
  assert int(state.cl_state.task) == 1
  assert np.asarray(state.cl_state.current).tolist() == [
      False, True, True, False]


def test_the_two_memory_draws_take_current_and_earlier_tasks():
  ctx = _ctx()
  strategy = gsa(mem_size=16, batch_size_mem=4, batch_size_mem_cur=8)
  state = _run(strategy, ctx, hook_state(ctx, strategy),
               [([0, 1, 0], 0), ([2, 3, 3, 2, 2], 1)])
  cl = state.cl_state.replace(task_steps=jnp.int32(9))
  batch = _batch([2, 3, 2], [1.0, 1.0, 0.0])
  rows = gsa_module._draw(ctx, cl, batch, gsa_module._keys(cl), 4, 8)
  # x_cur: the 2 real current rows, the padding row, the 5 stored rows of
  # task 1 and 3 empty draws.
  w_cur = np.asarray(rows.w_cur)
  assert w_cur.tolist() == [1, 1, 0] + [1] * 5 + [0] * 3
  assert set(np.asarray(rows.y_cur)[3:8].tolist()) <= {2, 3}
  # rate = 2 / 4: int(4 · 0.5) = 2 earlier rows and the first 2 current.
  w_mix = np.asarray(rows.w_mix)
  assert w_mix[:4].tolist() == [1, 1, 0, 0]
  assert set(np.asarray(rows.y_mix)[:2].tolist()) <= {0, 1}
  assert w_mix[4:].tolist() == [1, 1] + [0] * 9


def _numpy_soft_ce(logits, targets, classes):
  """Avalanche's ``cross_entropy_with_oh_targets`` on the columns
  ``classes`` (index_select), in float64."""
  z = np.asarray(logits, np.float64)[:, classes]
  p = np.exp(log_softmax(z))
  return -(np.asarray(targets)[:, classes] * np.log(p + 1e-5)).sum(1).mean()


def _numpy_gsa(params, x_cur, y_cur, x_prev, y_prev, current, seen, stats,
               steps, with_memory=True, by_position=False):
  """GSA's loss and statistics (augmentation off: ``double(x) = [x;
  flip(x)]``), ANT indexed by class id (``by_position``: as Avalanche,
  by position among the seen classes, 1 past their number)."""
  def outputs(x):
    x = np.concatenate([x, x[:, :, ::-1]])
    return two_layer_numpy(params, x.reshape(len(x), -1))[1]

  eye = np.eye(4)
  y2 = np.tile(y_cur, 2)
  loss_p = _numpy_soft_ce(outputs(x_cur), eye[y2], current)
  if not with_memory:
    return loss_p, stats
  logits = outputs(np.concatenate([x_prev, x_cur]))
  y_mix = np.tile(np.concatenate([y_prev, y_cur]), 2)
  p = np.exp(log_softmax(logits))
  count, pos, neg = (np.asarray(s, np.float64).copy() for s in stats)
  for row, y in zip(p, y_mix):
    count[y] += 1
    pos[y] += row[y]
    neg += np.where(np.arange(4) == y, 0.0, row)
  ant = np.ones(4) if steps < 5 else (count - pos) / neg
  if by_position:
    ant = np.r_[ant[seen], np.ones(4)][:4]
  targets = eye[y_mix] * (2 / (1 + np.exp(1 - ant[y_mix])))[:, None]
  loss_n = _numpy_soft_ce(logits, targets, seen)
  return loss_p + 2 * loss_n, (count, pos, neg)


@pytest.fixture
def no_augmentation(monkeypatch):
  monkeypatch.setattr(gsa_module, "_augment", lambda x, key: x)


@functools.cache
def _replayed():
  """``(ctx, strategy, state)`` after task 0 of classes 0 and 3, then task
  1 of class 1 (one run for the module: the hooks leave the augmentation
  alone)."""
  ctx = _ctx()
  # The mixed batch (B = 16, rate 1/3) takes every row: the 5 earlier
  # ones stored (of at most 10) and x_cur's 4 (of at most 5).
  strategy = gsa(mem_size=16, batch_size_mem=16, batch_size_mem_cur=4)
  return ctx, strategy, _run(strategy, ctx, hook_state(ctx, strategy),
                             [([0, 3, 0, 3, 3], 0), ([1, 1], 1)])


def _replaying(steps):
  """Task 0 of classes 0 and 3, then task 1 of class 1 (seen {0, 1, 3}:
  class 3 is at position 2 among them), with running sums set."""
  ctx, strategy, state = _replayed()
  moved = jax.tree.map(lambda p: p * 1.5 - 0.1, state.params)
  cl = state.cl_state.replace(
      task_steps=jnp.int32(steps), count=jnp.array([30., 20., 0., 10.]),
      positive=jnp.array([12., 5., 0., 7.]),
      negative=jnp.array([9., 4., 3., 1.]))
  return ctx, strategy, state.replace(params=moved, cl_state=cl)


def _penalty(ctx, strategy, params, cl, batch):
  """``strategy``'s loss, compiled (eager runs it op by op). Traced anew
  for the augmentation of the moment; the state and batch are arguments,
  so that the same program compiles once."""
  return jax.jit(lambda params, cl, batch: strategy.penalty(
      ctx, params, cl, batch, None))(params, cl, batch)


def _stored(cl, where):
  valid = np.asarray(cl.buffer.valid & where(cl.buffer.extras["gsa_task"]))
  return np.asarray(cl.buffer.x)[valid], np.asarray(cl.buffer.y)[valid]


@pytest.mark.parametrize("steps", [2, 7], ids=["warm-up", "ant"])
@pytest.mark.xdist_group("gsa-replayed")
def test_loss_and_statistics_match_numpy(no_augmentation, steps):
  ctx, strategy, state = _replaying(steps)
  cl = state.cl_state
  batch = _batch([1, 1, 1], [1.0, 1.0, 0.0])
  out = strategy.transform_batch(ctx, cl, batch, jax.random.key(3))
  logits = ctx.logits(state.params, state.model_state, out["x"], out["task"])
  # The loop's own cross-entropy is 0 on the real current rows.
  np.testing.assert_allclose(ctx.loss(logits, out) * out["weight"], 0.0,
                             atol=1e-6)
  got = jax.jit(lambda p: strategy.penalty(ctx, p, cl, out, logits))(
      state.params)

  x_mem, y_mem = _stored(cl, lambda t: t == 1)
  x_prev, y_prev = _stored(cl, lambda t: t == 0)
  x_cur = np.concatenate([np.asarray(batch["x"][:2]), x_mem])
  y_cur = np.concatenate([[1, 1], y_mem])
  expected, stats = _numpy_gsa(state.params, x_cur, y_cur, x_prev, y_prev,
                               [1], [0, 1, 3], (cl.count, cl.positive,
                                                cl.negative), steps)
  assert float(got) == pytest.approx(expected, rel=1e-5)

  new = state.replace(params=jax.tree.map(lambda p: p + 1.0, state.params))
  after = jax.jit(lambda o, n, b: strategy.after_step(
      ctx, o, n, None, b, jax.random.key(4)))(state, new, out)
  for got_stat, want in zip((after.count, after.positive, after.negative),
                            stats):
    np.testing.assert_allclose(got_stat, want, rtol=1e-5)
  assert int(after.task_steps) == steps + 1
  assert not np.array_equal(after.key, cl.key)


@pytest.mark.xdist_group("gsa-replayed")
def test_ant_is_read_by_class_id(no_augmentation):
  # Seen {0, 1, 3}: Avalanche reads class 3's ANT at index 3 of the seen
  # classes' ANT, past its end, and does not scale class 3's target.
  ctx, strategy, state = _replaying(7)
  cl = state.cl_state.replace(count=jnp.array([30., 20., 0., 1.]),
                              positive=jnp.array([12., 5., 0., 0.]),
                              negative=jnp.array([9., 4., 3., 1e4]))
  batch = _batch([1, 1, 1], [1.0, 1.0, 0.0])
  got = _penalty(ctx, strategy, state.params, cl, batch)
  x_mem, y_mem = _stored(cl, lambda t: t == 1)
  x_prev, y_prev = _stored(cl, lambda t: t == 0)
  expected = [_numpy_gsa(
      state.params, np.concatenate([np.asarray(batch["x"][:2]), x_mem]),
      np.concatenate([[1, 1], y_mem]), x_prev, y_prev, [1], [0, 1, 3],
      (cl.count, cl.positive, cl.negative), 7, by_position=position)[0]
      for position in (False, True)]
  assert float(got) == pytest.approx(expected[0], rel=1e-5)
  assert expected[0] != pytest.approx(expected[1], rel=1e-2)


def test_first_task_without_memory_is_the_current_classes_loss(
    no_augmentation):
  ctx = _ctx()
  strategy = gsa(mem_size=8, batch_size_mem=4, batch_size_mem_cur=2)
  state = hook_state(ctx, strategy)
  state = jax.jit(lambda s, d: strategy.begin_experience(
      ctx, s, d, jax.random.key(7)))(state, _experience([0, 2, 2], 0, 0))
  cl = state.cl_state
  batch = _batch([0, 2, 2], [1.0, 1.0, 1.0])
  # Compiled: eager, the loss and the sums run op by op (slower).
  got, after = jax.jit(lambda state: (
      strategy.penalty(ctx, state.params, cl, batch, None),
      strategy.after_step(ctx, state, state, None, batch,
                          jax.random.key(1))))(state)
  expected, _ = _numpy_gsa(state.params, np.asarray(batch["x"]), [0, 2, 2],
                           None, None, [0, 2], [0, 2], None, 0,
                           with_memory=False)
  assert float(got) == pytest.approx(expected, rel=1e-5)
  assert not np.any(np.asarray(after.count)) and int(after.task_steps) == 1


@pytest.mark.xdist_group("gsa-replayed")
def test_the_augmentation_changes_the_loss_not_its_finiteness(monkeypatch):
  ctx, strategy, state = _replaying(7)
  batch = _batch([1, 1, 1], [1.0, 1.0, 0.0])
  augmented, grads = jax.jit(jax.value_and_grad(
      lambda p: strategy.penalty(ctx, p, state.cl_state, batch, None)))(
          state.params)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  monkeypatch.setattr(gsa_module, "_augment", lambda x, key: x)
  plain = _penalty(ctx, strategy, state.params, state.cl_state, batch)
  assert float(augmented) != pytest.approx(float(plain), rel=1e-3)


def test_gsa_cross_entropy_keeps_avalanches_eps():
  logits = jnp.array([[30.0, 0.0, -5.0], [0.5, 1.0, 2.0]])
  targets = jnp.array([[0.0, 1.5, 1.0], [1.0, 0.0, 0.0]])
  classes = jnp.array([True, True, False])
  got = gsa_cross_entropy(logits, targets, classes, jnp.ones(2))
  assert float(got) == pytest.approx(
      _numpy_soft_ce(logits, targets, [0, 1]), rel=1e-5)
  # Saturated: log(p + eps) bounds the loss near -log(1e-5) · 1.5.
  assert float(gsa_cross_entropy(logits[:1], targets[:1], classes,
                                 jnp.ones(1))) < 1.5 * 11.6


def _image_benchmark():
  rng = np.random.default_rng(0)
  centers = rng.normal(0, 3, (4, 4))
  y = np.repeat(np.arange(4), 12)
  x = (centers[y] + rng.normal(0, 0.5, (48, 4))).astype(np.float32)
  return jaxcl.benchmarks.class_incremental(
      (x.reshape(48, *SHAPE), y), (x.reshape(48, *SHAPE), y), 2,
      fixed_class_order=range(4))


def test_vmapped_seeds_equal_single_runs():
  model = jaxcl.models.MLP(4, hidden_size=8, drop_rate=0.0)
  alone = fit_seeds_alone(model, gsa(mem_size=8, batch_size_mem=6,
                                     batch_size_mem_cur=3), _image_benchmark())
  cl = alone[0].state.cl_state
  assert int(cl.task) == 1 and float(jnp.sum(cl.count)) > 0


def test_from_the_command_line(tmp_path):
  metrics = tiny_cli_metrics(tmp_path, "--strategy", "gsa", "--mem-size",
                             "50", "--batch-size-mem", "20",
                             "--batch-size-mem-cur", "10")
  assert metrics["stream_accuracy"] > 0.5
  assert from_spec("gsa(batch_size_mem_cur=5)").name == "gsa"


@pytest.mark.parametrize("kwargs, message", [
    ({"mem_size": 0}, "mem_size must be a positive integer, got 0"),
    ({"batch_size_mem": 0}, "batch_size_mem must be a positive integer"),
    ({"batch_size_mem_cur": -1},
     "batch_size_mem_cur must be a positive integer, got -1"),
    ({"mem_size": 50}, "batch_size_mem=64 exceeds mem_size=50"),
    ({"mem_size": 50, "batch_size_mem": 8, "batch_size_mem_cur": 51},
     "batch_size_mem_cur=51 exceeds mem_size=50"),
])
def test_refuses_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    gsa(**kwargs)


@pytest.mark.parametrize("changes, message", [
    ({"input_shape": (4,)}, r"expected inputs of shape \[H, W, C\] with C = "
     r"1 or 3, got input_shape \(4,\)"),
    ({"input_shape": (2, 1, 2)}, r"got input_shape \(2, 1, 2\)"),
    ({"task_classes": jnp.ones((2, 4), bool)}, "got a stream with task "
     "labels"),
])
def test_refuses_streams_it_cannot_serve(changes, message):
  ctx = _ctx()._replace(**changes)
  with pytest.raises(ValueError, match=message):
    gsa().init(ctx, None, jax.random.key(0))


# --- Review follow-ups: tests that a plausible slip fails ---------------------


def test_after_step_sums_are_the_losss_with_augmentation_and_draws():
  # The memory holds 12 rows and each step draws 4 earlier and 2 current
  # ones, each doubled with the augmentation on: the sums depend on the
  # keys, so after_step must reuse those the loss used.
  ctx = _ctx()
  strategy = gsa(mem_size=16, batch_size_mem=4, batch_size_mem_cur=2)
  state = _run(strategy, ctx, hook_state(ctx, strategy),
               [([0, 3, 0, 3, 3, 0, 3], 0), ([1, 1, 2, 2, 1], 1)])
  cl = state.cl_state.replace(task_steps=jnp.int32(9))
  state = state.replace(cl_state=cl)
  batch = strategy.transform_batch(ctx, cl, _batch([1, 2, 1], [1.0] * 3),
                                   jax.random.key(3))
  statistics = gsa_module._statistics

  def loss_statistics(params, cl):
    seen = []

    def spy(*args):
      seen.append(statistics(*args))
      return seen[-1]

    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(gsa_module, "_statistics", spy)
      strategy.penalty(ctx, params, cl, batch, None)
    return seen[0]

  other = jax.random.key_data(jax.random.fold_in(
      jax.random.wrap_key_data(cl.key), 99))

  @jax.jit
  def step(state):
    new = state.replace(params=jax.tree.map(lambda p: p + 1.0, state.params))
    after = strategy.after_step(ctx, state, new, None, batch,
                                jax.random.key(4))
    return (after, loss_statistics(state.params, state.cl_state),
            loss_statistics(state.params, state.cl_state.replace(key=other)))

  after, want, moved = step(state)
  for got, expected in zip((after.count, after.positive, after.negative),
                           want):
    np.testing.assert_allclose(got, expected, rtol=1e-6)
  # The check has teeth: the loss's sums under other keys differ.
  assert not np.allclose(moved[1], want[1], rtol=1e-3)


def test_resized_crop_rounds_integer_images_exactly():
  # torchvision's tensor resize casts uint8 to float32, interpolates and
  # rounds (half to even) back; truncating is one off on most pixels.
  rng = np.random.default_rng(3)
  pixels = rng.integers(0, 256, (7, 9, 3)).astype(np.uint8)
  crop = jax.jit(augment._resized_crop)
  for box in [(0, 0, 7, 9), (2, 1, 5, 6), (1, 3, 3, 2), (0, 0, 1, 1),
              (3, 2, 4, 7)]:
    got = np.asarray(crop(jnp.asarray(pixels), jnp.asarray(box)))
    assert got.dtype == np.uint8
    exact = _numpy_resized_crop(pixels, *box)
    # Within float32's error of a half either neighbour is torch's answer.
    tie = np.abs(exact - np.floor(exact) - 0.5) < 1e-4
    assert np.mean(tie) < 0.1
    np.testing.assert_array_equal(got[~tie], np.round(exact[~tie]))
    np.testing.assert_array_less(np.abs(got[tie] - exact[tie]), 0.5 + 1e-4)


def _numpy_crop_boxes(rng, n, h, w, scale, ratio):
  """``n`` boxes ``(top, left, height, width)`` of torchvision's
  ``RandomResizedCrop.get_params``, vectorised: the first of 10 draws (area
  uniform in ``scale·h·w``, log-ratio uniform) that fits, placed uniformly,
  else the central crop of the ratio nearest the image's."""
  area = h * w * rng.uniform(*scale, size=(n, 10))
  aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), (n, 10)))
  widths = np.round(np.sqrt(area * aspect)).astype(int)
  heights = np.round(np.sqrt(area / aspect)).astype(int)
  fits = (widths > 0) & (widths <= w) & (heights > 0) & (heights <= h)
  first = np.argmax(fits, axis=1)
  found = fits[np.arange(n), first]
  if w / h < ratio[0]:
    fall = (round(w / ratio[0]), w)
  elif w / h > ratio[1]:
    fall = (h, round(h * ratio[1]))
  else:
    fall = (h, w)
  height = np.where(found, heights[np.arange(n), first], fall[0])
  width = np.where(found, widths[np.arange(n), first], fall[1])
  top = np.where(found, rng.integers(0, h - height + 1), (h - fall[0]) // 2)
  left = np.where(found, rng.integers(0, w - width + 1), (w - fall[1]) // 2)
  return np.stack([top, left, height, width], axis=1)


@pytest.mark.parametrize("h, w, scale, ratio", [
    (28, 20, (0.6, 1.0), (3 / 4, 4 / 3)),
    (32, 32, (0.08, 1.0), (3 / 4, 4 / 3)),
    (5, 9, (0.9, 1.0), (2.0, 3.0)),
])
def test_crop_boxes_follow_torchvisions_distribution(h, w, scale, ratio):
  n = 50_000
  want = _numpy_crop_boxes(np.random.default_rng(0), n, h, w, scale, ratio)
  got = np.asarray(jax.jit(jax.vmap(lambda k: augment._crop_box(
      k, h, w, scale, ratio)))(jax.random.split(jax.random.key(0), n)))
  # Means of the log aspect ratio, the area and the placement, each within
  # 6 standard errors of the difference of two independent samples (the
  # seeds are fixed; a uniform aspect ratio moves the first by > 10).
  for stat in (lambda b: np.log(b[:, 3] / b[:, 2]),
               lambda b: b[:, 2] * b[:, 3] / (h * w),
               lambda b: b[:, 0] / h, lambda b: b[:, 1] / w):
    a, b = stat(want), stat(got)
    bound = 6 * np.sqrt((a.var() + b.var()) / n) + 1e-9
    assert abs(a.mean() - b.mean()) < bound, (a.mean(), b.mean(), bound)
  # The sign of the aspect: wide, square and tall windows as often.
  for side in (-1, 0, 1):
    p = np.mean(np.sign(want[:, 3] - want[:, 2]) == side)
    q = np.mean(np.sign(got[:, 3] - got[:, 2]) == side)
    assert abs(p - q) < 6 * np.sqrt(2 * p * (1 - p) / n) + 1e-9
