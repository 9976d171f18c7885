"""Scenario generators: exact partitions, class timelines, seeds, clear errors."""

import inspect
import tracemalloc

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_benchmark

import jaxcl
from jaxcl import evaluation
from jaxcl.benchmarks import (
  class_incremental,
  data_incremental,
  dataset_per_experience,
  new_instances,
  permuted,
  rotate_images,
  rotated,
  sources,
  split_online,
  task_incremental,
  with_validation,
)


def _data(n_classes=6, per_class=5, offset=0):
  """Column 0 is a unique sample id, column 1 the original label."""
  y = np.repeat(np.arange(n_classes), per_class)
  ids = np.arange(len(y)) + offset
  return np.stack([ids, y], 1).astype(np.float32), y


def _ids(stream):
  return np.concatenate([e.x[:, 0] for e in stream])


def _check_timeline(stream):
  """previous/future classes agree with the classes of the other experiences."""
  for i, e in enumerate(stream):
    before = set().union(*[s.classes for s in stream[:i]])
    after = set().union(*[s.classes for s in stream[i + 1:]])
    assert set(e.previous_classes) == before
    assert set(e.future_classes) == after - before - set(e.classes)
    assert set(e.classes_seen_so_far) == before | set(e.classes)
    assert e.index == i


def test_per_exp_classes_and_remaining_split_evenly():
  x, y = _data(n_classes=7)
  b = class_incremental((x, y), (x, y), 3, per_exp_classes={0: 3}, seed=1)
  assert [len(e.classes) for e in b.train_stream] == [3, 2, 2]
  order = b.class_order
  assert [e.classes for e in b.train_stream] == [
      tuple(sorted(order[:3])), tuple(sorted(order[3:5])),
      tuple(sorted(order[5:]))]
  np.testing.assert_array_equal(np.sort(_ids(b.train_stream)), x[:, 0])
  for e in b.train_stream:
    assert set(np.unique(e.y)) == set(e.classes)
  _check_timeline(b.train_stream)
  _check_timeline(b.test_stream)
  b = class_incremental((x, y), (x, y), 3, per_exp_classes={2: 1},
                        shuffle=False)
  assert [e.classes for e in b.train_stream] == [(0, 1, 2), (3, 4, 5), (6,)]


def test_test_experiences_list_the_classes_their_labels_hold():
  x, y = _data(n_classes=6)
  keep = y != 5  # a partial test set: no sample of class 5
  b = class_incremental((x, y), (x[keep], y[keep]), 3, shuffle=False)
  assert [e.classes for e in b.train_stream] == [(0, 1), (2, 3), (4, 5)]
  assert [e.classes for e in b.test_stream] == [(0, 1), (2, 3), (4,)]
  _check_timeline(b.test_stream)


def test_class_ids_from_zero_in_each_exp():
  x, y = _data(n_classes=6)
  b = class_incremental((x, y), (x, y), 2, per_exp_classes={0: 4},
                        fixed_class_order=[5, 0, 3, 1, 4, 2],
                        class_ids_from_zero_in_each_exp=True,
                        return_task_id=True)
  assert b.n_classes == 4 and b.class_order == (5, 0, 3, 1, 4, 2)
  assert [e.classes for e in b.train_stream] == [(0, 1, 2, 3), (0, 1)]
  # The j-th class of experience i in class order becomes label j.
  mapping = [{5: 0, 0: 1, 3: 2, 1: 3}, {4: 0, 2: 1}]
  for stream in (b.train_stream, b.test_stream):
    for e, m in zip(stream, mapping):
      original = e.x[:, 1].astype(int)
      np.testing.assert_array_equal(e.y, [m[c] for c in original])
      np.testing.assert_array_equal(e.task, e.index)
  assert b.train_stream[1].previous_classes == (0, 1, 2, 3)
  assert b.train_stream[1].future_classes == ()


def test_class_ids_from_zero_from_first_exp():
  x, y = _data(n_classes=6)
  y = 2 * y + 1  # original ids 1, 3, ..., 11: relabelling also closes gaps
  b = class_incremental((x, y), (x, y), 3, per_exp_classes={0: 4},
                        fixed_class_order=[9, 1, 5, 11, 3, 7],
                        class_ids_from_zero_from_first_exp=True)
  assert b.n_classes == 6 and b.class_order == (9, 1, 5, 11, 3, 7)
  assert [e.classes for e in b.train_stream] == [(0, 1, 2, 3), (4,), (5,)]
  # class_order[j] becomes label j across the whole stream.
  position = {9: 0, 1: 1, 5: 2, 11: 3, 3: 4, 7: 5}
  for stream in (b.train_stream, b.test_stream):
    for e in stream:
      original = 2 * e.x[:, 1].astype(int) + 1
      np.testing.assert_array_equal(e.y, [position[c] for c in original])
      np.testing.assert_array_equal(e.task, 0)
  assert b.train_stream[2].previous_classes == (0, 1, 2, 3, 4)
  with pytest.raises(ValueError, match="at most one of them"):
    class_incremental((x, y), (x, y), 3, class_ids_from_zero_in_each_exp=True,
                      class_ids_from_zero_from_first_exp=True)


@pytest.mark.parametrize("per_exp, match", [
    ({0: 7}, "leaves -1 of the 6 classes"),
    ({0: 3}, "leaves 3 of the 6 classes for the other 2"),
    ({0: 2, 1: 2, 2: 1}, "leaves 1 of the 6 classes for the other 0"),
    ({3: 2}, "keys must be experience indices"),
    ({0: 0}, "per_exp_classes\\[0\\] must be a positive"),
])
def test_per_exp_classes_errors(per_exp, match):
  x, y = _data()
  with pytest.raises(ValueError, match=match):
    class_incremental((x, y), (x, y), 3, per_exp_classes=per_exp)


def test_new_instances_partition_sizes_and_seed():
  x, y = _data(n_classes=3, per_class=11)
  b = new_instances((x, y), (x[:9], y[:9]), 4, seed=3)
  np.testing.assert_array_equal(np.sort(_ids(b.train_stream)), x[:, 0])
  assert sorted(len(e) for e in b.train_stream) == [8, 8, 8, 9]
  assert len(b.test_stream) == 1 and len(b.test_stream[0]) == 9
  assert b.scenario == "new_instances" and b.n_classes == 3
  for e in b.train_stream:
    np.testing.assert_array_equal(e.y, e.x[:, 1])
    np.testing.assert_array_equal(e.task, 0)
  _check_timeline(b.train_stream)
  again = new_instances((x, y), (x, y), 4, seed=3)
  other = new_instances((x, y), (x, y), 4, seed=4)
  same = [np.array_equal(a.x, c.x) for a, c in zip(b.train_stream,
                                                    again.train_stream)]
  assert all(same)
  assert not all(np.array_equal(a.x, c.x)
                 for a, c in zip(b.train_stream, other.train_stream))
  ordered = new_instances((x, y), (x, y), 3, shuffle=False)
  np.testing.assert_array_equal(ordered.train_stream[0].x[:, 0], np.arange(11))


def test_new_instances_leftovers_go_where_avalanche_puts_them():
  x = np.arange(23, dtype=np.float32)[:, None]
  y = np.arange(23) % 3
  # 23 = 5 * 4 + 3: runs of 4, then samples 20, 21, 22 one each to the
  # first experiences (Avalanche's NIScenario without shuffling).
  ordered = new_instances((x, y), (x, y), 5, shuffle=False)
  assert [e.x[:, 0].astype(int).tolist() for e in ordered.train_stream] == [
      [0, 1, 2, 3, 20], [4, 5, 6, 7, 21], [8, 9, 10, 11, 22],
      [12, 13, 14, 15], [16, 17, 18, 19]]
  # Shuffled, the experiences that get them are drawn from the seed.
  sizes = {tuple(len(e) for e in new_instances(
      (x, y), (x, y), 5, seed=seed).train_stream) for seed in range(10)}
  assert len(sizes) > 1 and all(sorted(s) == [4, 4, 5, 5, 5] for s in sizes)


def test_new_instances_balanced():
  x, y = _data(n_classes=3, per_class=10)
  b = new_instances((x, y), (x, y), 4, balance_experiences=True, seed=0)
  np.testing.assert_array_equal(np.sort(_ids(b.train_stream)), x[:, 0])
  counts = np.array([np.bincount(e.y, minlength=3) for e in b.train_stream])
  np.testing.assert_array_equal(counts.sum(0), [10, 10, 10])
  assert set(counts.ravel()) <= {2, 3}  # 10 = 2 * 4 + 2: off by at most one.


def test_new_instances_fixed_assignment_and_errors():
  x, y = _data(n_classes=2, per_class=3)
  b = new_instances((x, y), (x, y), 2, fixed_exp_assignment=[[5, 0], [2]])
  assert [e.x[:, 0].tolist() for e in b.train_stream] == [[5.0, 0.0], [2.0]]
  with pytest.raises(ValueError, match="disjoint"):
    new_instances((x, y), (x, y), 2, fixed_exp_assignment=[[0, 1], [1]])
  with pytest.raises(ValueError, match="outside"):
    new_instances((x, y), (x, y), 2, fixed_exp_assignment=[[0], [6]])
  with pytest.raises(ValueError, match="one per experience"):
    new_instances((x, y), (x, y), 3, fixed_exp_assignment=[[0], [1]])
  with pytest.raises(ValueError, match="exceeds the 6 training samples"):
    new_instances((x, y), (x, y), 7)


def test_dataset_per_experience_offsets_and_tasks():
  a = _data(n_classes=2, per_class=3)
  b = _data(n_classes=3, per_class=2, offset=100)
  bench = dataset_per_experience([(a, a), (b, b)], offset_class_ids=True,
                                 return_task_id=True)
  assert [e.classes for e in bench.train_stream] == [(0, 1), (2, 3, 4)]
  assert bench.n_classes == 5 and bench.n_tasks == 2
  assert bench.scenario == "task_incremental"
  for stream in (bench.train_stream, bench.test_stream):
    np.testing.assert_array_equal(stream[1].y, b[1] + 2)
    np.testing.assert_array_equal(stream[1].x, b[0])
    np.testing.assert_array_equal(stream[1].task, 1)
  _check_timeline(bench.train_stream)
  shared = dataset_per_experience([(a, a), (b, b)])
  assert [e.classes for e in shared.train_stream] == [(0, 1), (0, 1, 2)]
  assert shared.scenario == "domain_incremental" and shared.n_classes == 3
  assert shared.train_stream[1].future_classes == ()
  wide = (np.zeros((6, 3), np.float32), a[1])
  with pytest.raises(ValueError, match="datasets\\[1\\] has inputs of sample "
                     "shape \\(3,\\)"):
    dataset_per_experience([(a, a), (wide, wide)])
  with pytest.raises(ValueError, match="non-empty sequence"):
    dataset_per_experience([])


def test_task_incremental_relabels_every_stream():
  x, y = _data()
  b = with_validation(class_incremental((x, y), (x, y), 3), 0.4)
  t = task_incremental(b)
  assert t.scenario == "task_incremental" and t.n_tasks == 3
  for stream in (t.train_stream, t.test_stream, t.valid_stream):
    for e in stream:
      np.testing.assert_array_equal(e.task, e.index)
  online = task_incremental(split_online(b, 4))
  for e in online.train_stream:
    np.testing.assert_array_equal(e.task, e.origin_experience)
  with pytest.raises(ValueError, match="one test experience per task"):
    task_incremental(new_instances((x, y), (x, y), 3))


def _pixels(n=4, h=3, w=4):
  x = np.arange(n * h * w, dtype=np.uint8).reshape(n, h, w, 1)
  return x, np.arange(n) % 2


def test_permuted_is_seeded_per_experience_permutation():
  x, y = _pixels()
  b = permuted((x, y), (x[:2], y[:2]), 3, seed=7)
  assert b.scenario == "domain_incremental" and b.n_tasks == 1
  perms = []
  for train, test in zip(b.train_stream, b.test_stream):
    flat, out = x.reshape(4, -1), train.x.reshape(4, -1)
    perm = np.argsort(flat[0])[np.searchsorted(np.sort(flat[0]), out[0])]
    np.testing.assert_array_equal(out, flat[:, perm])  # Same for all samples.
    np.testing.assert_array_equal(test.x.reshape(2, -1), flat[:2, perm])
    np.testing.assert_array_equal(train.y, y)
    assert train.classes == (0, 1)
    perms.append(perm)
  assert not np.array_equal(perms[0], np.arange(12))  # Avalanche: exp 0 too.
  assert len({p.tobytes() for p in perms}) == 3
  again = permuted((x, y), (x, y), 3, seed=7)
  other = permuted((x, y), (x, y), 3, seed=8)
  assert all(np.array_equal(a.x, c.x)
             for a, c in zip(b.train_stream, again.train_stream))
  assert not np.array_equal(b.train_stream[0].x, other.train_stream[0].x)
  tasks = permuted((x, y), (x, y), 2, return_task_id=True)
  assert tasks.n_tasks == 2 and tasks.test_stream[1].task_label == 1
  with pytest.raises(ValueError, match="train inputs have dtype uint8 but "
                     "test inputs have float32; expected both integer or both "
                     "floating point"):
    permuted((x, y), (x.astype(np.float32), y), 2)
  # Same kind, other width: accepted (the preprocess casts both).
  permuted((x.astype(np.float64), y), (x.astype(np.float32), y), 2)


def test_permuted_and_rotated_read_lazy_inputs():
  train, test = (sources.load_bundled("mnist_bundled", split, lazy=True)
                 for split in ("train", "test"))
  assert isinstance(train.x, sources.RecordArray)
  eager = (sources.load_bundled("mnist_bundled", "train"), test)
  for make in (permuted, rotated):
    lazy_bench, eager_bench = (make(data, test, 2, seed=1)
                               for data in (train, eager[0]))
    np.testing.assert_array_equal(lazy_bench.train_stream[1].x,
                                  eager_bench.train_stream[1].x)


def test_rotate_images_matches_rot90_and_flips():
  img = np.arange(2 * 5 * 5 * 2).reshape(2, 5, 5, 2)
  np.testing.assert_array_equal(rotate_images(img, 0), img)
  np.testing.assert_array_equal(rotate_images(img, 360), img)
  np.testing.assert_array_equal(rotate_images(img, 90),
                                np.rot90(img, 1, axes=(1, 2)))
  np.testing.assert_array_equal(rotate_images(img, -90),
                                np.rot90(img, -1, axes=(1, 2)))
  np.testing.assert_array_equal(rotate_images(img, 180), img[:, ::-1, ::-1])
  # 45 degrees on a 5x5 image: the centre stays, corners fall outside (0).
  out = rotate_images(np.ones((1, 5, 5), np.uint8), 45)
  assert out[0, 2, 2] == 1 and out[0, 0, 0] == 0 and out[0, 4, 4] == 0
  with pytest.raises(ValueError, match="images"):
    rotate_images(np.zeros((4, 4)), 10)


def test_rotated_angles_from_seed_or_list():
  x, y = _pixels(h=5, w=5)
  b = rotated((x, y), (x, y), 3, angles=[90, 0, -180])
  np.testing.assert_array_equal(b.train_stream[0].x, np.rot90(x, axes=(1, 2)))
  np.testing.assert_array_equal(b.train_stream[1].x, x)
  np.testing.assert_array_equal(b.test_stream[2].x, x[:, ::-1, ::-1])
  seeded = [rotated((x, y), (x, y), 4, seed=s) for s in (0, 0, 1)]
  rng = np.random.default_rng(0)
  for e, angle in zip(seeded[0].train_stream, rng.integers(-180, 181, 4)):
    np.testing.assert_array_equal(e.x, rotate_images(x, angle))
  assert all(np.array_equal(a.x, c.x) for a, c in
             zip(seeded[0].train_stream, seeded[1].train_stream))
  assert not all(np.array_equal(a.x, c.x) for a, c in
                 zip(seeded[0].train_stream, seeded[2].train_stream))
  with pytest.raises(ValueError, match="one per experience"):
    rotated((x, y), (x, y), 3, angles=[0, 90])
  with pytest.raises(ValueError, match=r"angles\[1\] must be in \[-180, 180\]"):
    rotated((x, y), (x, y), 2, angles=[0, 190])


def test_split_online_sizes_origins_and_boundaries():
  x, y = _data(n_classes=4, per_class=5)
  base = class_incremental((x, y), (x, y), 2, fixed_class_order=range(4))
  b = split_online(base, 4, seed=1, access_task_boundaries=True)
  assert [len(e) for e in b.train_stream] == [4, 4, 2, 4, 4, 2]
  assert [e.origin_experience for e in b.train_stream] == [0, 0, 0, 1, 1, 1]
  assert [e.is_first_subexp for e in b.train_stream] == [True, False, False] * 2
  assert [e.is_last_subexp for e in b.train_stream] == [False, False, True] * 2
  for origin in range(2):
    minis = [e for e in b.train_stream if e.origin_experience == origin]
    np.testing.assert_array_equal(np.sort(_ids(minis)),
                                  np.sort(base.train_stream[origin].x[:, 0]))
  assert b.test_stream is base.test_stream and b.name == "class_incremental_online"
  _check_timeline(b.train_stream)
  hidden = split_online(base, 4)
  assert {e.is_first_subexp for e in hidden.train_stream} == {None}
  assert {e.origin_experience for e in hidden.train_stream} == {0, 1}
  dropped = split_online(base, 4, drop_last=True)
  assert [len(e) for e in dropped.train_stream] == [4, 4, 4, 4]
  ordered = split_online(base, 3, shuffle=False)
  np.testing.assert_array_equal(_ids(ordered.train_stream), _ids(base.train_stream))
  with pytest.raises(ValueError, match="drops every sample"):
    split_online(base, 11, drop_last=True)
  with pytest.raises(ValueError, match="experience_size must be a positive"):
    split_online(base, 0)
  # Split again, the mini-experiences keep the experiences they came from,
  # and the boundaries of those.
  twice = split_online(b, 2, shuffle=False, access_task_boundaries=True)
  assert [len(e) for e in twice.train_stream] == [2, 2, 2, 2, 2] * 2
  assert [e.origin_experience for e in twice.train_stream] == [0] * 5 + [1] * 5
  assert [e.is_first_subexp for e in twice.train_stream] == (
      [True, False, False, False, False] * 2)
  assert [e.is_last_subexp for e in twice.train_stream] == (
      [False, False, False, False, True] * 2)
  assert task_incremental(twice).n_tasks == 2
  # The same when the first split hid the boundaries, and when the last
  # mini-experiences of an origin are dropped.
  hidden_twice = split_online(hidden, 2, shuffle=False,
                              access_task_boundaries=True)
  assert [e.is_first_subexp for e in hidden_twice.train_stream] == (
      [e.is_first_subexp for e in twice.train_stream])
  assert [e.is_last_subexp for e in hidden_twice.train_stream] == (
      [e.is_last_subexp for e in twice.train_stream])
  kept = split_online(b, 4, drop_last=True, access_task_boundaries=True)
  assert [e.is_last_subexp for e in kept.train_stream] == [False, True] * 2


def test_data_incremental_consecutive_chunks():
  x, y = _data(n_classes=4, per_class=5)
  base = class_incremental((x, y), (x, y), 2, seed=2)
  b = data_incremental(base, 3)
  assert [len(e) for e in b.train_stream] == [7, 7, 6]
  np.testing.assert_array_equal(_ids(b.train_stream), _ids(base.train_stream))
  assert b.test_stream is base.test_stream
  _check_timeline(b.train_stream)
  shuffled = data_incremental(base, 2, shuffle=True, seed=0)
  # Shuffled within each original experience only: halves keep their samples.
  for new, old in zip(shuffled.train_stream, base.train_stream):
    np.testing.assert_array_equal(np.sort(new.x[:, 0]), np.sort(old.x[:, 0]))
  with pytest.raises(ValueError, match="exceeds the 20 training samples"):
    data_incremental(base, 21)
  # Task labels first, then the re-split: each sample keeps its task.
  tasks = data_incremental(task_incremental(base), 3)
  np.testing.assert_array_equal(
      np.concatenate([e.task for e in tasks.train_stream]),
      np.repeat([0, 1], 10))
  # The other way round, chunk 1 would hold experience 0's classes as task 1.
  uneven = class_incremental((x, y), (x, y), 2, per_exp_classes={0: 3},
                             shuffle=False)
  with pytest.raises(ValueError, match=r"train experience 1 \(task 1\) "
                     r"holds classes \[2\] of other tasks"):
    task_incremental(data_incremental(uneven, 2))
  # Tasks sharing class ids (one dataset each, ids from 0): a test set that
  # lacks a class is no sign of mixed experiences.
  lacking = (x[y != 3], y[y != 3])
  shared = dataset_per_experience([((x, y), (x, y)), ((x, y), lacking)],
                                  offset_class_ids=False)
  assert task_incremental(shared).n_tasks == 2


def test_data_incremental_chunks_train_their_first_samples_experience():
  # Experiences of 10 samples (2 classes each) cut into chunks of 7, 7, 6:
  # chunk 1 holds the end of experience 0, which it is the last to train.
  x, y = _data(n_classes=4, per_class=5)
  base = class_incremental((x, y), (x, y), 2, seed=2)
  chunks = data_incremental(base, 3)
  assert [e.test_experience for e in chunks.train_stream] == [0, 0, 1]
  np.testing.assert_array_equal(
      evaluation.trained_columns(chunks.train_stream, 2), [0, 0, 1])
  # Re-split again (online, or a validation part held out), the pieces keep
  # their chunk's test experience.
  online = split_online(chunks, 4, shuffle=False)
  assert [e.test_experience for e in online.train_stream] == [0, 0, 0, 0,
                                                              1, 1]
  valid = with_validation(chunks, 2, seed=0)
  assert [e.test_experience for e in valid.train_stream] == [0, 0, 1]
  # In fit, forgetting after the last chunk compares experience 0's
  # accuracy when chunk 1 ended its training with its accuracy now.
  blobs = make_benchmark(n_classes=4, n_experiences=2, per_class=12)
  result = jaxcl.fit(jaxcl.models.MLP(4, hidden_size=8, drop_rate=0.0),
                     jaxcl.strategies.naive(), optax.sgd(0.1),
                     data_incremental(blobs, 3), epochs=2, batch_size=4,
                     seed=0)
  R = result.accuracy_matrix
  assert R.shape == (3, 2)
  np.testing.assert_allclose(result.metrics["forgetting"], R[1, 0] - R[2, 0])
  np.testing.assert_allclose(result.history[1]["accuracy_on_trained_"
                                               "experiences"], R[1, 0])


def test_with_validation_partition_and_class_balance():
  y = np.concatenate([np.zeros(10, int), np.ones(30, int)])
  x = np.stack([np.arange(40), y], 1).astype(np.float32)
  base = new_instances((x, y), (x, y), 2, shuffle=False)
  b = with_validation(base, 0.25, class_balanced=True, seed=0)
  for train, valid, old in zip(b.train_stream, b.valid_stream,
                               base.train_stream):
    np.testing.assert_array_equal(
        np.sort(np.concatenate([train.x[:, 0], valid.x[:, 0]])),
        np.sort(old.x[:, 0]))
    counts = np.bincount(old.y, minlength=2)
    np.testing.assert_array_equal(np.bincount(valid.y, minlength=2),
                                  (counts * 0.25).astype(int))
    assert valid.origin == "valid" and valid.index == old.index
  assert b.test_stream is base.test_stream
  fixed = with_validation(base, 3, seed=1)
  assert [len(e) for e in fixed.valid_stream] == [3, 3]
  assert [len(e) for e in fixed.train_stream] == [17, 17]
  with pytest.raises(ValueError, match="needs validation_size as a fraction"):
    with_validation(base, 3, class_balanced=True)
  with pytest.raises(ValueError, match=r"must be in \(0, 1\)"):
    with_validation(base, 1.0)
  with pytest.raises(ValueError, match="leaves 20 of the 20 samples"):
    with_validation(base, 20)
  # A second split would drop the first one's samples from both streams.
  with pytest.raises(ValueError, match="has a validation stream already"):
    with_validation(b, 0.25)


@pytest.mark.parametrize("seed,error", [(None, TypeError), (-1, ValueError),
                                        (1.5, TypeError), (True, TypeError),
                                        (2**32, ValueError)])
def test_seeds_must_be_integers_that_fix_the_benchmark(seed, error):
  x, y = _data()
  base = class_incremental((x, y), (x, y), 3)
  message = rf"seed must be an integer in \[0, 2\*\*32\), got {seed!r}"
  for make in (lambda: class_incremental((x, y), (x, y), 3, seed=seed),
               lambda: with_validation(base, 0.2, seed=seed),
               lambda: split_online(base, 2, seed=seed),
               lambda: permuted((x, y), (x, y), 2, seed=seed)):
    with pytest.raises(error, match=message):
      make()


def test_class_ids_and_assignments_must_be_integers():
  x, y = _data()
  with pytest.raises(TypeError, match="fixed_class_order must hold integer "
                     "class ids, got dtype float64"):
    class_incremental((x, y), (x, y), 3,
                      fixed_class_order=[0.9, 1, 2, 3, 4, 5.7])
  # Any integer array will do, a JAX one too.
  in_jax = class_incremental((x, y), (x, y), 3,
                             fixed_class_order=jnp.arange(5, -1, -1))
  assert in_jax.class_order == (5, 4, 3, 2, 1, 0)
  # Grouped ids are no order (they were flattened).
  with pytest.raises(ValueError, match=r"fixed_class_order must be a flat "
                     r"sequence of class ids, got shape \(3, 2\)"):
    class_incremental((x, y), (x, y), 3,
                      fixed_class_order=[[0, 1], [2, 3], [4, 5]])
  with pytest.raises(TypeError, match=r"per_exp_classes must map experience "
                     r"indices to class counts \(e.g. \{0: 5\}\), got "
                     r"\[4, 1, 1\] of type list"):
    class_incremental((x, y), (x, y), 3, per_exp_classes=[4, 1, 1])
  with pytest.raises(TypeError, match=r"fixed_exp_assignment\[0\] must hold "
                     "integer sample indices, got dtype float64"):
    new_instances((x, y), (x, y), 2,
                  fixed_exp_assignment=[[0.7, 1.2], list(range(2, 30))])
  # A list [x, y] is a pair as a tuple is.
  as_list = class_incremental([x, y], [x, y], 3, seed=1)
  as_tuple = class_incremental((x, y), (x, y), 3, seed=1)
  np.testing.assert_array_equal(as_list.train_stream[2].x,
                                as_tuple.train_stream[2].x)


def _switches():
  """(factory, bool parameter) of every public benchmark function."""
  import jaxcl.benchmarks as benchmarks
  functions = [getattr(benchmarks, n) for n in benchmarks.__all__] + [
      sources.arrays_from_data_source, sources.load_tfds_split,
      sources.load_bundled]
  return [pytest.param(f, name, id=f"{f.__name__}-{name}")
          for f in functions if inspect.isfunction(f)
          for name, p in inspect.signature(f).parameters.items()
          if p.annotation in (bool, "bool")]


def test_a_mistyped_argument_names_the_function():
  # The switch check binds the arguments first; Python's message stays.
  x, y = _data()
  with pytest.raises(TypeError, match=r"^class_incremental\(\) got an "
                     r"unexpected keyword argument 'shufle'$"):
    class_incremental((x, y), (x, y), 3, shufle=False)


@pytest.mark.parametrize("factory, name", _switches())
def test_switches_refuse_what_is_not_a_bool_before_reading(factory, name):
  # A config's "False" is truthy: it would switch the option on.
  required = {p: None for p, v in inspect.signature(factory).parameters.items()
              if v.default is inspect.Parameter.empty}
  with pytest.raises(TypeError, match=rf"^{name} must be True or False, got "
                     r"'False' of type str\.$"):
    factory(**required, **{name: "False"})


def test_sparse_class_ids_relabel_without_a_table_of_every_id():
  # Ids up to 2**26: a lookup table over every id would take 256 MB.
  big = 2**26
  x = np.arange(6, dtype=np.float32)[:, None]
  y = np.array([0, 0, 7, 7, big, big])
  tracemalloc.start()
  try:
    b = class_incremental((x, y), (x, y), 3, fixed_class_order=[big, 0, 7],
                          class_ids_from_zero_from_first_exp=True)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 2**25, peak
  assert b.n_classes == 3
  assert [e.classes for e in b.train_stream] == [(0,), (1,), (2,)]
  assert [e.y.tolist() for e in b.test_stream] == [[0, 0], [1, 1], [2, 2]]
  each = class_incremental((x, y), (x, y), 1, fixed_class_order=[7, big, 0],
                           class_ids_from_zero_in_each_exp=True)
  np.testing.assert_array_equal(each.train_stream[0].y, [2, 2, 0, 0, 1, 1])
