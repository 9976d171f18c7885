"""Scenario generators: exact partitions, seeded class orders, clear errors."""

import numpy as np
import pytest

import jaxcl
from jaxcl.benchmarks import Experience, class_incremental


def _data(n_classes=6, per_class=5, dim=3):
  y = np.repeat(np.arange(n_classes), per_class)
  x = np.arange(len(y) * dim, dtype=np.float32).reshape(len(y), dim)
  return x, y


def test_class_incremental_partitions_exactly():
  x, y = _data()
  bench = class_incremental((x, y), (x, y), 3, seed=4)
  seen = np.concatenate([e.x[:, 0] for e in bench.train_stream])
  np.testing.assert_array_equal(np.sort(seen), np.sort(x[:, 0]))  # no loss/dup
  groups = [set(e.classes) for e in bench.train_stream]
  assert set().union(*groups) == set(range(6))
  assert all(len(g) == 2 for g in groups)
  for e in bench.train_stream:
    assert set(np.unique(e.y)) == set(e.classes)
    np.testing.assert_array_equal(e.task, 0)
  assert bench.train_stream[2].previous_classes == tuple(
      sorted(groups[0] | groups[1]))
  assert bench.train_stream[0].future_classes == tuple(sorted(groups[1] | groups[2]))
  assert [e.classes for e in bench.test_stream] == [e.classes for e in bench.train_stream]


def test_class_order_from_seed_and_fixed():
  x, y = _data()
  a = class_incremental((x, y), (x, y), 3, seed=1).class_order
  assert a == class_incremental((x, y), (x, y), 3, seed=1).class_order
  assert a != class_incremental((x, y), (x, y), 3, seed=2).class_order
  fixed = class_incremental((x, y), (x, y), 3, fixed_class_order=[5, 4, 3, 2, 1, 0])
  assert [e.classes for e in fixed.train_stream] == [(4, 5), (2, 3), (0, 1)]


def test_task_labels():
  x, y = _data()
  bench = class_incremental((x, y), (x, y), 3, return_task_id=True)
  assert bench.scenario == "task_incremental" and bench.n_tasks == 3
  for i, e in enumerate(bench.train_stream):
    np.testing.assert_array_equal(e.task, i)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(n_experiences=4), ValueError, "does not divide the 6 classes"),
    (dict(n_experiences=0), ValueError, "n_experiences must be a positive"),
    (dict(n_experiences=2.5), TypeError, "n_experiences must be a positive"),
    (dict(n_experiences=3, fixed_class_order=[0, 1, 2, 3, 4, 4]), ValueError,
     "permutation of the classes"),
])
def test_bad_arguments(kwargs, error, match):
  x, y = _data()
  with pytest.raises(error, match=match):
    class_incremental((x, y), (x, y), **kwargs)


def test_bad_data():
  x, y = _data()
  with pytest.raises(ValueError, match=r"test labels \[9\] are out of range"):
    class_incremental((x, y), (x[:2], np.array([0, 9])), 3)
  with pytest.raises(TypeError, match="labels must be integers"):
    class_incremental((x, y.astype(np.float32)), (x, y), 3)
  with pytest.raises(ValueError, match=r"must be in \[0, 2\*\*31\), got "
                     r"values from 0 to 4294967297"):
    class_incremental((x, np.where(y == 1, 2**32 + 1, y)), (x, y), 3)
  bad = x.copy()
  bad[0, 0] = np.nan
  with pytest.raises(ValueError, match="NaN or infinite"):
    class_incremental((bad, y), (x, y), 3)
  with pytest.raises(ValueError, match="train is empty"):
    class_incremental((x[:0], y[:0]), (x, y), 3)


def test_experiences_refuse_labels_a_cast_would_change():
  make = lambda y, task=None: Experience(
      x=np.zeros((3, 1)), y=y, task=np.zeros(3, int) if task is None else task,
      index=0, classes=(0, 1, 2), origin="train")
  with pytest.raises(TypeError, match=r"Experience 0 of stream 'train': y "
                     r"must be integers, got values of dtype float64"):
    make([0.5, 1.9, 2.99])
  assert make(np.array([0.0, 1.0, 2.0])).y.tolist() == [0, 1, 2]
  with pytest.raises(ValueError, match=r"y must be in \[0, 2\*\*31\)"):
    make(np.array([2**32 + 1, 0, 0]))
  with pytest.raises(ValueError, match=r"task must be a 1-D array, got shape "
                     r"\(3, 1\)"):
    make([0, 1, 0], np.zeros((3, 1), int))
  assert make(np.array([0, 1, 0], np.uint8)).y.dtype == np.int32
  # A label outside the classes would train against a masked logit.
  with pytest.raises(ValueError, match=r"Experience 0 of stream 'train': "
                     r"classes=\(0, 1, 2\) leaves out the labels \[3, 5\] "
                     r"that y holds"):
    make([3, 5, 0])


def test_split_mnist_bundled():
  bench = jaxcl.benchmarks.split_mnist(n_experiences=5, seed=0)
  assert bench.n_classes == 10 and bench.input_shape == (28, 28, 1)
  assert [len(e) for e in bench.train_stream] == [800] * 5
  assert [len(e) for e in bench.test_stream] == [200] * 5
  assert bench.train_stream[0].x.dtype == np.uint8
  x = np.asarray(bench.preprocess(bench.train_stream[0].x[:50]))
  assert x.dtype == np.float32
  # Normalised with MNIST's mean and std: background pixels map to -0.4242.
  assert x.min() == pytest.approx(-0.1307 / 0.3081, abs=1e-5)


def test_split_mnist_class_ids_from_zero_from_first_exp():
  plain = jaxcl.benchmarks.split_mnist(n_experiences=5, seed=3)
  bench = jaxcl.benchmarks.split_mnist(
      n_experiences=5, seed=3, class_ids_from_zero_from_first_exp=True)
  position = np.argsort(plain.class_order)  # digit -> its place in the order
  assert bench.class_order == plain.class_order != tuple(range(10))
  for stream, relabelled in ((plain.train_stream, bench.train_stream),
                             (plain.test_stream, bench.test_stream)):
    for e, r in zip(stream, relabelled):
      np.testing.assert_array_equal(r.x, e.x)
      np.testing.assert_array_equal(r.y, position[e.y])
      assert r.classes == (2 * e.index, 2 * e.index + 1)
