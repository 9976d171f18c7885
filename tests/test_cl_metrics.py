"""CL metrics against hand-computed values with Avalanche's definitions."""

import numpy as np
import pytest

from jaxcl.evaluation import (experience_forgetting, forward_transfer,
                              stream_accuracy, stream_bwt, stream_forgetting,
                              stream_forward_transfer)

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
