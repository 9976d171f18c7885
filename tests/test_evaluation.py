"""Avalanche's metric suite: reducers, pure metrics, system metrics, fit rows.

Every metric is checked against an independent numpy computation on
hand-made predictions (unequal experience sizes, empty classes, a single
experience); AMCA against a step-by-step transcription of Avalanche's
algorithm.
"""

import collections
import importlib
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_benchmark

import jaxcl
from jaxcl import evaluation as ev
from jaxcl.benchmarks import Experience
from jaxcl.models import Model
from jaxcl.models.adapter import as_model
from jaxcl.strategies import StrategyContext, naive
from jaxcl.training import (cross_entropy, init_state, make_evaluate,
                            stack_experiences)

# A "model" whose logits are its inputs: predictions are chosen by hand.
IDENTITY = Model(init=lambda key, x, task: ({"b": jnp.zeros(())}, {}),
                 apply=lambda p, s, x, task, train, key: (x + p["b"], s))


# Reducers -----------------------------------------------------------------


def test_topk_accuracy_counts_labels_among_the_k_best():
  logits = jnp.array([[0.1, 0.5, 0.4], [0.9, 0.02, 0.08], [0.2, 0.3, 0.5]])
  labels = jnp.array([2, 1, 2], jnp.int32)
  acc = lambda k, mask=None: float(ev.TopKAccuracy.from_model_output(
      logits=logits, labels=labels, k=k, mask=mask).compute())
  assert acc(1) == pytest.approx(1 / 3)  # only the last sample
  assert acc(2) == pytest.approx(2 / 3)
  assert acc(3) == acc(10) == 1.0  # k capped at the number of classes
  assert acc(2, mask=jnp.array([True, False, False])) == 1.0
  merged = ev.TopKAccuracy.from_model_output(
      logits=logits[:1], labels=labels[:1], k=1).merge(
          ev.TopKAccuracy.from_model_output(logits=logits[1:],
                                            labels=labels[1:], k=1))
  assert float(merged.compute()) == pytest.approx(1 / 3)


def test_class_counts_split_by_task_and_class():
  logits = jnp.array([[3.0, 0, 0], [0, 2.0, 0], [1.0, 0, 0], [0, 0, 5.0],
                      [0, 7.0, 0], [0, 7.0, 0], [9.0, 0, 0]])
  labels = jnp.array([0, 1, 2, 2, 1, 1, -1], jnp.int32)
  # Tasks 5 and -1 and label -1 are out of range (-1 must not wrap around).
  task = jnp.array([0, 1, 1, 1, 5, -1, 0], jnp.int32)
  mask = jnp.ones(7, bool)
  m = ev.ClassCounts.from_model_output(logits=logits, labels=labels,
                                       task=task, mask=mask, n_tasks=2)
  np.testing.assert_array_equal(m.count, [[1, 0, 0], [0, 1, 2]])
  np.testing.assert_array_equal(m.correct, [[1, 0, 0], [0, 1, 1]])
  np.testing.assert_allclose(m.score, [[3, 0, 0], [0, 2, 5]])
  np.testing.assert_allclose(m.compute(), [[1, np.nan, np.nan],
                                           [np.nan, 1, 0.5]])
  # One task label: every sample counts, whatever its task.
  single = ev.ClassCounts.from_model_output(logits=logits, labels=labels,
                                            task=task)
  np.testing.assert_array_equal(single.count, [[1, 3, 2]])
  empty = ev.ClassCounts.empty(3, 2)
  chex.assert_trees_all_equal(empty.merge(m), m)
  # Sums in a fixed order: no scatter-add (GPUs scatter with atomic
  # additions, in an order that changes from run to run).
  jaxpr = jax.make_jaxpr(lambda logits: ev.ClassCounts.from_model_output(
      logits=logits, labels=labels, task=task, n_tasks=2))(logits)
  assert "scatter" not in str(jaxpr)
  # A NaN logit spoils only its own class's sums.
  spoiled = ev.ClassCounts.from_model_output(
      logits=logits.at[3, 2].set(jnp.nan), labels=labels, task=task,
      n_tasks=2)
  np.testing.assert_allclose(spoiled.score, [[3, 0, 0], [0, 2, np.nan]])
  # Narrow label and task dtypes: cell 3 * 100 + 99 does not wrap around.
  narrow = ev.ClassCounts.from_model_output(
      logits=jnp.zeros((1, 100)), labels=jnp.array([99], jnp.int8),
      task=jnp.array([3], jnp.int8), n_tasks=4)
  assert narrow.count[3, 99] == 1 and narrow.count.sum() == 1
  assert narrow.count.dtype == jnp.int32


def test_confusion_matrix_counts_the_last_class():
  n = 4
  labels = jnp.array([3, 3, 0, 2], jnp.int32)
  logits = jax.nn.one_hot(jnp.array([3, 1, 0, 3]), n)
  cm = np.asarray(ev.ConfusionMatrix.from_model_output(
      logits=logits, labels=labels).compute())
  expected = np.zeros((n, n), int)
  np.add.at(expected, ([3, 3, 0, 2], [3, 1, 0, 3]), 1)
  np.testing.assert_array_equal(cm, expected)
  assert cm[n - 1, n - 1] == 1 and cm.sum() == 4


def _eval_ctx(n_classes, task_classes):
  return StrategyContext(model=IDENTITY, preprocess=lambda x: x,
                         loss=cross_entropy, n_classes=n_classes,
                         n_experiences=3, input_shape=(n_classes,),
                         batch_size=4, experience_size=8,
                         task_classes=task_classes)


def test_evaluate_gathers_every_count_like_numpy():
  """Unequal experiences (7, 3, 1 samples), an empty class, two task labels."""
  rng = np.random.default_rng(0)
  n_classes, n_tasks = 6, 2
  classes = np.array([0, 1, 2, 3, 5])  # class 4 has no test sample
  exps = []
  for i, n in enumerate([7, 3, 1]):
    y = rng.choice(classes, n)
    x = rng.normal(size=(n, n_classes)).astype(np.float32)
    if i == 2:
      x[0, 5], y[0] = 9.0, 5  # the last class, predicted right
    exps.append(Experience(x=x, y=y, task=rng.integers(0, n_tasks, n),
                           index=i, classes=tuple(np.unique(y)),
                           origin="test"))
  ctx = _eval_ctx(n_classes, np.ones((n_tasks, n_classes), bool))._replace(
      mask_classes=False)
  state = init_state(ctx, naive(), optax.sgd(0.1), jax.random.key(0),
                     jnp.zeros((1, n_classes)), jnp.zeros((1,), jnp.int32))
  evaluate = jax.jit(make_evaluate(ctx, naive(), eval_batch_size=2, top_k=2))
  counts = jax.device_get(evaluate(state, stack_experiences(exps, n_classes)))

  assert counts.top_k == 2
  confusion = np.zeros((n_classes, n_classes), int)
  for j, e in enumerate(exps):
    pred = e.x.argmax(1)
    hit = pred == e.y
    assert counts.correct[j] == hit.sum() and counts.count[j] == len(e)
    top2 = np.argsort(-e.x, 1)[:, :2]
    assert counts.correct_topk[j] == (top2 == e.y[:, None]).any(1).sum()
    logp = e.x - np.log(np.exp(e.x).sum(1, keepdims=True))
    np.testing.assert_allclose(counts.loss_sum[j],
                               -logp[np.arange(len(e)), e.y].sum(), rtol=1e-5)
    np.add.at(confusion, (e.y, pred), 1)
    for name, values in (("class_count", np.ones(len(e))),
                         ("class_correct", hit),
                         ("class_score", e.x[np.arange(len(e)), e.y])):
      expected = np.zeros((n_tasks, n_classes))
      np.add.at(expected, (e.task, e.y), values)
      np.testing.assert_allclose(getattr(counts, name)[j], expected,
                                 rtol=1e-6, err_msg=name)
  np.testing.assert_array_equal(counts.confusion, confusion)
  assert counts.confusion[5, 5] >= 1 and counts.confusion[4].sum() == 0


def test_a_label_the_prediction_masks_is_no_top_k_hit():
  # A strategy's prediction masks classes 0 and 1 (another expert's, or
  # without a mean): masked ties would fill a top-3 by index.
  def predict(ctx, params, model_state, cl_state, x, task):
    return jnp.broadcast_to(jnp.array([-1000.0, -1000.0, 5.0, 4.0]),
                            (x.shape[0], 4))
  strategy = naive()._replace(predict=predict)
  ctx = _eval_ctx(4, None)._replace(mask_classes=False)
  state = init_state(ctx, strategy, optax.sgd(0.1), jax.random.key(0),
                     jnp.zeros((1, 4)), jnp.zeros((1,), jnp.int32))
  labels = np.array([0, 1, 2, 3])
  test = Experience(x=np.zeros((4, 4), np.float32), y=labels,
                    task=np.zeros(4, int), index=0, classes=(0, 1, 2, 3),
                    origin="test")
  evaluate = jax.jit(make_evaluate(ctx, strategy, eval_batch_size=4,
                                   top_k=3))
  counts = jax.device_get(evaluate(state, stack_experiences([test], 4)))
  assert counts.correct_topk[0] == 2 and counts.correct[0] == 1


# Pure metrics ---------------------------------------------------------------


def test_accuracy_on_trained_experiences_pools_the_trained_ones():
  correct, count = np.array([9, 1, 0]), np.array([10, 2, 100])
  assert ev.accuracy_on_trained_experiences(correct, count, 0) == 0.9
  assert ev.accuracy_on_trained_experiences(correct, count, 1) == \
      pytest.approx(10 / 12)
  assert ev.accuracy_on_trained_experiences(correct, count, 2) == \
      pytest.approx(10 / 112)
  assert ev.accuracy_on_trained_experiences([3], [4], 0) == 0.75


def test_class_accuracy_and_mean_class_accuracy():
  correct = np.array([[1.0, 0.0, 3.0, 0.0], [0.0, 2.0, 0.0, 0.0]])
  count = np.array([[2, 0, 4, 1], [0, 2, 0, 0]])
  np.testing.assert_allclose(ev.class_accuracy(correct, count),
                             [[0.5, np.nan, 0.75, 0.0],
                              [np.nan, 1.0, np.nan, np.nan]])
  np.testing.assert_allclose(ev.mean_class_accuracy(correct, count),
                             [(0.5 + 0.75 + 0.0) / 3, 1.0])
  # A tracked class without samples counts as 0; untracked ones are skipped.
  tracked = np.array([[True, True, False, False], [False, False, False, False]])
  np.testing.assert_allclose(ev.mean_class_accuracy(correct, count, tracked),
                             [0.25, np.nan])
  # Avalanche passes class ids; read as a mask, id 0 would drop class 0.
  with pytest.raises(ValueError, match=r"tracked must be a bool mask .* got "
                     r"dtype int64.*np.isin\(np.arange\(4\), ids\)"):
    ev.mean_class_accuracy(correct, count, np.array([0, 1, 2, 3]))
  with pytest.raises(ValueError, match=r"classes has shape \(3,\); expected "
                     r"one broadcastable to \(2, 4\)"):
    ev.amca(correct[None], count[None], np.ones(3, bool))


def _avalanche_amca(phases, classes=None):
  """Avalanche's AverageMeanClassAccuracy, step by step, on label lists."""
  tracked = collections.defaultdict(set)
  for t, cs in (classes or {}).items():
    tracked[t] |= set(cs)
  previous = collections.defaultdict(list)
  out = []
  for labels, predictions, tasks in phases:
    hits = collections.defaultdict(dict)
    for t, cs in tracked.items():
      for c in cs:
        hits[t][c] = [0, 0]
    for y, p, t in zip(labels, predictions, tasks):
      if classes is None:
        tracked[t].add(y)
      elif y not in tracked[t]:
        continue
      h = hits[t].setdefault(y, [0, 0])
      h[0] += int(p == y)
      h[1] += 1
    current = {t: np.mean([c / n if n else 0.0 for c, n in d.values()])
               for t, d in hits.items() if d}
    out.append({t: np.mean(previous[t] + [current.get(t, 0.0)])
                for t in set(previous) | set(current)})
    for t, value in current.items():
      previous[t].append(value)
  return out


def _counts(phases, n_tasks, n_classes):
  correct = np.zeros((len(phases), n_tasks, n_classes))
  count = np.zeros((len(phases), n_tasks, n_classes), int)
  for s, (labels, predictions, tasks) in enumerate(phases):
    np.add.at(count[s], (tasks, labels), 1)
    np.add.at(correct[s], (tasks, labels),
              np.asarray(labels) == np.asarray(predictions))
  return correct, count


def test_amca_matches_avalanche_step_by_step():
  # Three evaluations: task 1 appears in the second; class 2 of task 0
  # disappears in the third (counts as 0 once tracked); class 3 never has
  # samples (never tracked).
  phases = [([0, 0, 1, 2], [0, 1, 1, 2], [0, 0, 0, 0]),
            ([0, 1, 2, 4, 4, 5], [0, 0, 2, 4, 5, 5], [0, 0, 0, 1, 1, 1]),
            ([0, 1, 1, 4, 5], [1, 1, 1, 4, 4], [0, 0, 0, 1, 1])]
  correct, count = _counts(phases, 2, 6)
  got = ev.amca(correct, count)
  for s, expected in enumerate(_avalanche_amca(phases)):
    for t in range(2):
      if t in expected:
        assert got[s, t] == pytest.approx(expected[t]), (s, t)
      else:
        assert np.isnan(got[s, t])
  # Avalanche's `classes`: tracked from the start, others ignored.
  classes = {0: [0, 1], 1: [4, 5]}
  mask = np.zeros((2, 6), bool)
  mask[0, [0, 1]] = mask[1, [4, 5]] = True
  got = ev.amca(correct, count, mask)
  for s, expected in enumerate(_avalanche_amca(phases, classes)):
    np.testing.assert_allclose(got[s], [expected[0], expected[1]])
  # A single evaluation: AMCA is its mean class accuracy.
  np.testing.assert_allclose(ev.amca(correct[:1], count[:1])[0, 0],
                             ev.mean_class_accuracy(correct[0], count[0])[0])


def test_mean_scores_average_the_true_class_logit_by_group():
  logits = np.array([[2.0, 0.0, 1.0], [1.0, 3.0, 0.0], [0.0, 0.0, -1.0],
                     [4.0, 1.0, 0.0]])
  labels = np.array([0, 1, 2, 0])
  true_score = logits[np.arange(4), labels]
  score = np.bincount(labels, true_score, 3)
  count = np.bincount(labels, minlength=3)
  new = np.array([False, False, True])
  old = np.array([True, True, False])
  got_new, got_old = ev.mean_scores(score, count, new, old)
  assert got_new == pytest.approx(-1.0)
  assert got_old == pytest.approx(np.mean(true_score[labels < 2]))
  assert np.isnan(ev.mean_scores(score, count, new, ~np.ones(3, bool))[1])


def test_labels_repartition_counts_each_experience():
  exps = [Experience(x=np.zeros((n, 1)), y=y, task=t, index=i,
                     classes=tuple(np.unique(y)), origin="train")
          for i, (n, y, t) in enumerate([(5, [0, 0, 1, 1, 1], [0] * 5),
                                         (1, [3], [1])])]
  np.testing.assert_array_equal(ev.labels_repartition(exps, 4),
                                [[2, 3, 0, 0], [0, 0, 0, 1]])
  by_task = ev.labels_repartition(exps, 4, by_task=True)
  assert by_task.shape == (2, 2, 4)
  np.testing.assert_array_equal(by_task[1], [[0, 0, 0, 0], [0, 0, 0, 1]])


# System metrics -------------------------------------------------------------


def test_flops_of_a_dense_layer_are_two_in_out_batch():
  batch, n_in, n_out = 8, 32, 16
  layer = nn.Dense(n_out, use_bias=False)
  x = jnp.ones((batch, n_in))
  params = layer.init(jax.random.key(0), x)
  lowered = jax.jit(layer.apply).lower(params, x)
  assert ev.flops(lowered) == 2 * n_in * n_out * batch
  assert ev.flops(lowered.compile()) == 2 * n_in * n_out * batch
  # A program without arithmetic counts 0, not None (no analysis).
  assert ev.flops(jax.jit(lambda a: a).lower(x)) == 0.0


def test_flops_compile_where_the_backend_analyses_only_compiled_programs(
    monkeypatch):
  # As the GPU backends do: a Lowered's cost analysis is None there.
  monkeypatch.setattr(jax.stages.Lowered, "cost_analysis", lambda self: None)
  x, w = jnp.ones((8, 32)), jnp.ones((32, 16))
  assert ev.flops(jax.jit(jnp.matmul).lower(x, w)) == 2 * 8 * 32 * 16
  step = ev.named_call(lambda b: b @ w, "step")
  traced = jax.jit(lambda xs: jax.lax.map(step, xs)).trace(x[None])
  assert ev.named_call_flops(traced.jaxpr, "step")[0] == 2 * 8 * 32 * 16


def test_named_call_flops_counts_one_call_wherever_it_runs():
  w = jnp.ones((5, 7))
  xs = jnp.ones((3, 4, 2, 5))  # 3 epochs of 4 steps of a [2, 5] batch
  step = ev.named_call(lambda b: b @ w, "step")

  def program(w, xs):
    # Another scan of the epochs' length beside the loop, and the step
    # under a conditional: neither confuses the search.
    extra = jax.lax.scan(lambda c, x: (c + x.sum(), None), 0.0, xs)[0]
    steps = lambda x: jax.lax.scan(
        lambda c, b: (c, jax.lax.cond(c > 1, lambda b: b[:, :1] * w[0], step,
                                      b)),
        0.0, x)[1]
    return jax.lax.scan(lambda c, x: (c, steps(x)), 0.0, xs)[1], extra

  traced = jax.jit(program).trace(w, xs)
  per_step = 2 * 2 * 5 * 7
  count, avals = ev.named_call_flops(traced.jaxpr, "step")
  assert count == per_step and avals[0].shape == (2, 5)
  # XLA counts a loop body once: the whole program is not 12 steps' worth.
  assert ev.flops(traced.lower()) < 2 * per_step
  assert ev.named_call_flops(traced.jaxpr, "other") is None
  # Under vmap the call holds every run's batch.
  batched = jax.jit(jax.vmap(program, in_axes=(None, 0))).trace(
      w, jnp.ones((4, 3, 4, 2, 5)))
  count, avals = ev.named_call_flops(batched.jaxpr, "step")
  assert count == 4 * per_step and avals[0].shape == (4, 2, 5)
  # Called twice, the call is ambiguous.
  twice = jax.jit(lambda b: step(step(b) @ w.T)).trace(jnp.ones((2, 5)))
  assert ev.named_call_flops(twice.jaxpr, "step") is None


def test_peak_memory_is_reported():
  assert ev.peak_host_memory_mb() > 0
  # 1 MB on the device: a GPU's or TPU's peak is at least that (a CPU
  # reports none).
  jnp.zeros(2**18, jnp.float32).block_until_ready()
  device = ev.peak_device_memory_mb()
  assert device is None or device >= 1


# Selection and fit ----------------------------------------------------------


def test_metric_selection_validates_names():
  # Every group but the per-step one and the disk walk, which are opt-in.
  assert ev.metrics().names == frozenset(ev.METRICS) - {"minibatch",
                                                        "disk_usage"}
  assert ev.metrics().names == ev.DEFAULT_METRICS
  chosen = ev.metrics(["accuracy", "amca", "topk_accuracy"], top_k=3)
  assert "amca" in chosen and "flops" not in chosen and chosen.top_k == 3
  assert ev.metrics(chosen) is chosen
  assert ev.metrics(chosen, top_k=2) == ev.metrics(
      ["accuracy", "amca", "topk_accuracy"], top_k=2)
  # A k for a metric not chosen would be dropped without a word.
  with pytest.raises(ValueError, match="top_k=3 sets the k of "
                     "'topk_accuracy', which is not selected"):
    ev.metrics(["accuracy", "amca"], top_k=3)
  assert ev.metrics().top_k == 5
  with pytest.raises(ValueError, match="'acuracy'.*accuracy"):
    ev.metrics(["acuracy"])
  with pytest.raises(TypeError, match=r"\['amca'\]"):
    ev.metrics("amca")
  with pytest.raises(ValueError, match="top_k must be a positive integer"):
    ev.metrics(top_k=0)
  # A selection built directly is checked the same (it reached fit as is).
  with pytest.raises(ValueError, match="'acuracy'.*accuracy"):
    ev.MetricSelection(frozenset({"acuracy"}))
  with pytest.raises(ValueError, match="top_k must be a positive integer"):
    ev.MetricSelection(frozenset({"topk_accuracy"}), top_k=0)
  with pytest.raises(TypeError, match="top_k must be a positive integer"):
    ev.MetricSelection(frozenset({"topk_accuracy"}), top_k=2.5)
  with pytest.raises(ValueError, match="top_k must be a positive integer"):
    ev.metrics(chosen, top_k=-1)
  # Names from an iterator are all kept (validation read it once).
  assert ev.MetricSelection(iter(["accuracy", "amca"])).names == {
      "accuracy", "amca"}


def test_disk_paths_go_with_the_disk_usage_group(tmp_path):
  chosen = ev.metrics(["accuracy", "disk_usage"], disk_paths=tmp_path)
  assert chosen.disk_paths == (str(tmp_path),)
  assert ev.metrics(["disk_usage"]).disk_paths is None
  assert ev.metrics(chosen, disk_paths=["a", "b"]).disk_paths == ("a", "b")
  assert ev.metrics(chosen, top_k=None) is chosen
  with pytest.raises(ValueError, match=r"disk_paths=\['a'\] are what "
                     "'disk_usage' measures, which is not selected"):
    ev.metrics(["accuracy"], disk_paths="a")
  with pytest.raises(TypeError, match="disk_paths must be a path or a "
                     "non-empty list of paths .*got 3"):
    ev.metrics(["disk_usage"], disk_paths=["a", 3])
  with pytest.raises(TypeError, match="got 7"):
    ev.MetricSelection(frozenset({"disk_usage"}), disk_paths=7)
  with pytest.raises(TypeError, match=r"got \[\]"):
    ev.metrics(["disk_usage"], disk_paths=[])
  with pytest.raises(TypeError, match="got ''"):
    ev.metrics(["disk_usage"], disk_paths=["a", ""])


def test_disk_usage_sums_regular_files_in_kilobytes(tmp_path, monkeypatch):
  (tmp_path / "a.bin").write_bytes(bytes(1024))
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "b.bin").write_bytes(bytes(3072))
  (tmp_path / "link.bin").symlink_to(tmp_path / "sub" / "b.bin")
  outside = tmp_path.parent / (tmp_path.name + "_other")
  outside.mkdir()
  (outside / "c.bin").write_bytes(bytes(512))
  assert ev.disk_usage_kb([tmp_path]) == 4.0  # The link is not followed.
  assert ev.disk_usage_kb([tmp_path / "sub" / "b.bin"]) == 3.0
  assert ev.disk_usage_kb([tmp_path, outside]) == 4.5
  assert ev.disk_usage_kb([tmp_path / "missing"]) == 0.0
  # One path needs no list; "~" is the home folder.
  assert ev.disk_usage_kb(tmp_path / "sub") == ev.disk_usage_kb(
      str(tmp_path / "sub")) == 3.0
  monkeypatch.setenv("HOME", str(tmp_path))
  assert ev.disk_usage_kb("~/sub") == 3.0


def test_disk_usage_counts_what_it_cannot_read_as_zero_and_says_so(
    tmp_path, monkeypatch):
  (tmp_path / "a.bin").write_bytes(bytes(1024))
  (tmp_path / "locked.bin").write_bytes(bytes(2048))
  real = os.path.getsize

  def getsize(name):
    if name.endswith("locked.bin"):
      raise PermissionError(13, "Permission denied", name)
    return real(name)

  monkeypatch.setattr(os.path, "getsize", getsize)
  with pytest.warns(UserWarning, match="could not read 1 files or folders "
                    r"\(counted as 0\), e.g. '.*locked.bin'"):
    assert ev.disk_usage_kb(tmp_path) == 1.0


def test_disk_usage_resolves_its_paths_once(tmp_path, monkeypatch):
  (tmp_path / "watched").mkdir()
  (tmp_path / "watched" / "a.bin").write_bytes(bytes(1024))
  monkeypatch.chdir(tmp_path)
  usage = ev.DiskUsage(["watched", "later"])
  monkeypatch.chdir(tmp_path / "watched")  # Relative paths stay put.
  assert usage() == 1.0
  assert usage.never_found() == [str(tmp_path / "later")]
  (tmp_path / "later").mkdir()
  usage()
  assert usage.never_found() == []
  assert ev.DiskUsage().paths == [str(tmp_path / "watched")]


def test_fit_records_the_disk_usage_after_each_experience(
    tiny_benchmark, tiny_model, tmp_path, monkeypatch):
  watched = tmp_path / "watched"
  watched.mkdir()
  (watched / "fixed.bin").write_bytes(bytes(5 * 1024))
  chosen = ev.metrics(["accuracy", "disk_usage"], disk_paths=[watched])
  result = jaxcl.fit(tiny_model, naive(), optax.sgd(0.1), tiny_benchmark,
                     batch_size=5, metrics=chosen,
                     checkpoint_dir=str(watched / "ckpt"))
  usage = [row["disk_usage_kb"] for row in result.history]
  # The checkpoints written after each experience show in the next value.
  assert usage[0] == 5.0 and usage[-1] > usage[0]
  assert result.metrics["disk_usage_kb"] == usage[-1]
  # The default is the working directory.
  monkeypatch.chdir(watched)
  alone = jaxcl.fit(tiny_model, naive(), optax.sgd(0.1), tiny_benchmark,
                    batch_size=5, seeds=[0, 1],
                    metrics=["accuracy", "disk_usage"])
  expected = ev.disk_usage_kb([watched])
  assert expected > 5.0
  assert [run.metrics["disk_usage_kb"] for run in alone.runs] == [expected] * 2


def test_fit_measures_the_disk_once_per_evaluation_and_warns_of_typos(
    tiny_benchmark, tiny_model, tmp_path, monkeypatch):
  calls = []
  measure = ev.DiskUsage.__call__
  monkeypatch.setattr(ev.DiskUsage, "__call__",
                      lambda self: calls.append(1) or measure(self))
  chosen = ev.metrics(["accuracy", "disk_usage"],
                      disk_paths=[tmp_path, tmp_path / "typo"])
  with pytest.warns(UserWarning, match="never existed during the run "
                    r"\(counted 0\): \[.*typo'\]"):
    result = jaxcl.fit(tiny_model, naive(), optax.sgd(0.1), tiny_benchmark,
                       batch_size=5, seeds=[0, 1, 2], metrics=chosen)
  # Two evaluations, three runs: two walks, one value for all runs.
  assert len(calls) == 2
  assert result.metrics["disk_usage_kb"][1] == 0.0


def _traced_once_strategy():
  """Naive with the penalty and prediction hooks asserted to trace once."""
  def predict(ctx, params, model_state, cl_state, x, task):
    return ctx.logits(params, model_state, x, task)
  return naive()._replace(
      penalty=chex.assert_max_traces(naive().penalty, n=1),
      predict=chex.assert_max_traces(predict, n=1))


def test_fit_records_every_metric_with_one_compile_per_stream():
  bench = make_benchmark(n_classes=6, n_experiences=3,
                         sizes=[3, 20, 10, 10, 2, 9])
  model = jaxcl.models.MLP(6, hidden_size=8, drop_rate=0.0)
  batch_size = 4
  result = jaxcl.fit(model, _traced_once_strategy(), optax.sgd(0.1), bench,
                     epochs=3, batch_size=batch_size)
  m, R = result.metrics, result.accuracy_matrix
  assert set(m) >= {"stream_accuracy", "forgetting", "bwt", "forward_transfer",
                    "amca", "top5_accuracy", "train_flops", "eval_flops",
                    "peak_host_memory_mb", "peak_device_memory_mb",
                    "accuracy_on_trained_experiences", "mean_score_new",
                    "mean_score_old", "train_time_s", "eval_time_s",
                    "train_cpu_usage", "eval_cpu_usage"}
  n = np.array([len(e) for e in bench.test_stream])
  assert m["stream_accuracy"] == pytest.approx(R[-1] @ n / n.sum())
  for i, row in enumerate(result.history):
    assert row["accuracy_on_trained_experiences"] == pytest.approx(
        R[i, :i + 1] @ n[:i + 1] / n[:i + 1].sum())
  # Per-class accuracy from the confusion matrix; AMCA from each evaluation.
  cm = result.confusion_matrix
  np.testing.assert_allclose(result.class_accuracy, np.diag(cm) / cm.sum(1))
  assert m["mean_class_accuracy"] == pytest.approx(
      np.mean(result.class_accuracy))
  assert m["amca"] == pytest.approx(
      np.mean([row["mean_class_accuracy"] for row in result.history]))
  np.testing.assert_array_equal(
      result.labels_repartition,
      [np.bincount(e.y, minlength=6) for e in bench.train_stream])
  # Mean scores recomputed from the final model's logits on the test stream.
  x = np.concatenate([e.x for e in bench.test_stream])
  y = np.concatenate([e.y for e in bench.test_stream])
  logits, _ = as_model(model).apply(result.state.params,
                                    result.state.model_state,
                                    bench.preprocess(x), jnp.zeros(len(y)),
                                    False, None)
  true_score = np.asarray(logits)[np.arange(len(y)), y]
  new = np.isin(y, bench.train_stream[-1].classes)
  assert m["mean_score_new"] == pytest.approx(true_score[new].mean(), rel=1e-5)
  assert m["mean_score_old"] == pytest.approx(true_score[~new].mean(), rel=1e-5)
  # Timings split per experience; memory; FLOPs of one step / one sample.
  assert sum(r["train_time_s"] for r in result.history) == pytest.approx(
      result.timings["train_s"])
  assert all(r["eval_time_s"] > 0 for r in result.history)
  # CPU time over wall time: positive, and at most every core busy (with
  # slack for the two clocks being read a moment apart).
  for row in result.history:
    for name in ("train_cpu_usage", "eval_cpu_usage"):
      assert 0 < row[name] <= 150 * os.cpu_count(), (name, row[name])
  assert m["peak_host_memory_mb"] > 0
  device = m["peak_device_memory_mb"]
  assert np.isnan(device) or device > 0
  forward = 2 * (6 * 8 + 8 * 6)  # the two dense layers, one sample
  assert forward <= m["eval_flops"] < 10 * forward
  batch_forward = forward * batch_size
  assert 2 * batch_forward <= m["train_flops"] < 10 * batch_forward


def test_task_class_accuracy_keys_the_classes_by_task():
  # Both tasks relabel their classes from 0: task 0 has classes 0..3, task 1
  # classes 0..1, so the pooled per-class accuracy mixes the two tasks.
  bench = make_benchmark(n_classes=6, n_experiences=2, per_class=15,
                         per_exp_classes={0: 4}, return_task_id=True,
                         class_ids_from_zero_in_each_exp=True)
  model = jaxcl.models.MLP(4, hidden_size=4, drop_rate=0.0)
  result = jaxcl.fit(model, naive(), optax.sgd(0.02), bench, epochs=1,
                     batch_size=8, metrics=["accuracy", "class_accuracy"])
  x, y, task = (np.concatenate([getattr(e, f) for e in bench.test_stream])
                for f in ("x", "y", "task"))
  logits, _ = as_model(model).apply(result.state.params,
                                    result.state.model_state,
                                    bench.preprocess(x), task, False, None)
  task_classes = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
  predicted = np.where(task_classes[task], logits, -np.inf).argmax(1)
  correct, count = np.zeros((2, 4)), np.zeros((2, 4))
  np.add.at(correct, (task, y), predicted == y)
  np.add.at(count, (task, y), 1)
  with np.errstate(invalid="ignore"):
    expected = correct / count
  assert np.nanmin(expected) < 1  # a model that is not yet perfect
  np.testing.assert_allclose(result.task_class_accuracy, expected)
  np.testing.assert_allclose(result.class_accuracy,
                             correct.sum(0) / count.sum(0))


def test_train_flops_count_one_step_whatever_else_the_program_runs():
  bench = make_benchmark(per_class=6)  # 12 samples: 3 steps of 4 per epoch
  model = jaxcl.models.MLP(4, hidden_size=8, drop_rate=0.0)

  def train_flops(strategy, epochs, **kwargs):
    return jaxcl.fit(model, strategy, optax.sgd(0.1), bench, epochs=epochs,
                     batch_size=4, metrics=["flops"],
                     **kwargs).metrics["train_flops"]

  # EWC's importance pass scans the experience's 3 batches beside the epoch
  # loop, which with 3 epochs has the same length.
  ewc = jaxcl.strategies.ewc(ewc_lambda=1.0)
  ewc_step = train_flops(ewc, 2)  # Fitted once: each fit compiles anew.
  assert np.isfinite(ewc_step)
  assert train_flops(ewc, 3) == ewc_step
  # A periodic evaluation by steps sits in the step loop but is no step.
  step = train_flops(naive(), 2)
  assert step < ewc_step
  periodic = jaxcl.training.PeriodicEval(every=1, unit="step", stream="test")
  assert train_flops(naive(), 2, periodic_eval=periodic) == step


def test_fit_records_only_the_selected_metrics(tiny_benchmark, tiny_model,
                                               monkeypatch):
  chosen = ev.metrics(["accuracy", "topk_accuracy", "flops"], top_k=2)
  # One run alone does not batch runs: one reference for both layouts.
  single = jaxcl.fit(tiny_model, naive(), optax.sgd(0.1), tiny_benchmark,
                     batch_size=5, metrics=chosen)
  fit_module = importlib.import_module("jaxcl.training.fit")
  # Evaluated one run after the other (CPUs) or vmapped (accelerators).
  for runs_one_by_one in (True, False):
    monkeypatch.setattr(fit_module, "_runs_one_by_one",
                        lambda: runs_one_by_one)
    multi = jaxcl.fit(tiny_model, naive(), optax.sgd(0.1), tiny_benchmark,
                      batch_size=5, seeds=[0, 1], metrics=chosen)
    assert set(multi.metrics) == {"stream_accuracy", "train_accuracy",
                                  "top2_accuracy", "train_flops",
                                  "eval_flops"}, runs_one_by_one
    run = multi.runs[0]
    assert run.confusion_matrix is None and run.class_accuracy is None
    # FLOPs are per run, whether or not runs are batched.
    for name in ("train_flops", "eval_flops"):
      assert multi.metrics[name][0] == pytest.approx(single.metrics[name],
                                                     rel=0.1), runs_one_by_one
