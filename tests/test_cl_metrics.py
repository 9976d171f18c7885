"""CL metrics against hand-computed values with Avalanche's definitions."""

import numpy as np
import pytest

from jaxcl.evaluation import (accuracy_on_trained_experiences,
                              experience_forgetting, forward_transfer,
                              stream_accuracy, stream_bwt, stream_forgetting,
                              stream_forward_transfer, trained_columns)

R = np.array([[0.90, 0.10, 0.05],
              [0.60, 0.80, 0.20],
              [0.30, 0.50, 0.70]])


def test_stream_accuracy_is_pooled_not_mean_of_experiences():
  correct, count = np.array([9, 1]), np.array([10, 100])
  assert stream_accuracy(correct, count) == pytest.approx(10 / 110)
  mean_of_exps = np.mean(correct / count)
  assert not np.isclose(stream_accuracy(correct, count), mean_of_exps)


def test_experience_forgetting_after_each_step():
  assert np.all(np.isnan(experience_forgetting(R, 0)))
  f1 = experience_forgetting(R, 1)
  assert f1[0] == pytest.approx(0.30) and np.isnan(f1[1:]).all()
  f2 = experience_forgetting(R, 2)
  np.testing.assert_allclose(f2[:2], [0.60, 0.30])
  assert np.isnan(f2[2])


def test_stream_forgetting_and_bwt():
  assert np.isnan(stream_forgetting(R, 0))
  assert stream_forgetting(R, 2) == pytest.approx((0.60 + 0.30) / 2)
  # BWT after the last experience: 1/(T-1) sum_{i<T} (R[T,i] - R[i,i]).
  expected_bwt = np.mean([R[2, 0] - R[0, 0], R[2, 1] - R[1, 1]])
  assert stream_bwt(R, 2) == pytest.approx(expected_bwt)


def test_forward_transfer_uses_accuracy_before_training():
  initial = np.array([0.25, 0.05, 0.10])
  fwt = forward_transfer(R, initial, 2)
  assert np.isnan(fwt[0])
  np.testing.assert_allclose(fwt[1:], [0.10 - 0.05, 0.20 - 0.10])
  assert stream_forward_transfer(R, initial, 2) == pytest.approx(0.075)
  # After experience 0 only FWT_1 is defined.
  assert stream_forward_transfer(R, initial, 0) == pytest.approx(0.05)


def test_online_stream_columns_map_mini_experiences_to_their_origin():
  # Train experiences 0,1 belong to test experience 0; 2,3 to test experience 1.
  columns = np.array([0, 0, 1, 1])
  R = np.array([[0.5, 0.0], [0.9, 0.0], [0.7, 0.4], [0.6, 0.8]])
  # While training experience 0's second half, nothing is forgotten yet.
  assert np.isnan(stream_forgetting(R, 1, columns))
  # Afterwards, forgetting of test experience 0 is measured from row 1.
  assert stream_forgetting(R, 2, columns) == pytest.approx(0.9 - 0.7)
  assert stream_forgetting(R, 3, columns) == pytest.approx(0.9 - 0.6)
  initial = np.array([0.1, 0.2])
  fwt = forward_transfer(R, initial, 3, columns)
  assert np.isnan(fwt[0]) and fwt[1] == pytest.approx(0.0 - 0.2)


def test_new_instances_single_test_experience():
  # Every train experience trains the one test experience (-1: past its end).
  columns = trained_columns([type("E", (), {"index": i})() for i in range(3)], 1)
  np.testing.assert_array_equal(columns, [0, -1, -1])
  R = np.array([[0.6], [0.7], [0.65]])
  assert stream_forgetting(R, 2, columns) == pytest.approx(0.6 - 0.65)


@pytest.mark.parametrize("metric", [
    lambda current: experience_forgetting(R, current),
    lambda current: stream_bwt(R, current),
    lambda current: stream_forward_transfer(R, np.zeros(3), current),
    lambda current: accuracy_on_trained_experiences(
        [9, 8, 7], [10, 10, 10], current, columns=[0, 1, 2]),
], ids=["forgetting", "bwt", "forward_transfer", "trained_accuracy"])
@pytest.mark.parametrize("current", [-1, 3, 1.0])
def test_current_outside_the_trained_rows_is_refused(metric, current):
  # -1 would slice no row and give NaN; 3 is past the 3 rows.
  with pytest.raises(ValueError, match=rf"current must be the index of the "
                     rf"last trained experience.*got {current!r}"):
    metric(current)


def test_stream_accuracy_refuses_counts_of_another_shape():
  with pytest.raises(ValueError, match=r"correct and count must have the "
                     r"same shape, got \(2,\) and \(1,\)"):
    stream_accuracy([1, 2], [3])
