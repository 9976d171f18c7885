"""Replay buffers: uniform reservoir, Avalanche's adaptive quotas, invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl.strategies import buffers


def _offer(buf, key, ids, y=None, valid=None, experience=0, scores=None):
  """Offers samples whose single input feature is their id."""
  ids = jnp.asarray(ids)
  y = jnp.zeros(ids.shape, jnp.int32) if y is None else jnp.asarray(y)
  return buffers.add(buf, key, ids[:, None].astype(jnp.float32), y,
                     jnp.zeros(ids.shape, jnp.int32), valid=valid,
                     experience=experience, scores=scores)


def _stored(buf, field="x"):
  values = np.asarray(getattr(buf, field))
  values = values[:, 0] if values.ndim == 2 else values
  return values[np.asarray(buf.valid)]


def _chi2_critical(dof, z=3.09):
  """Wilson-Hilferty approximation of the chi-square quantile (z=3.09: 0.999)."""
  return dof * (1 - 2 / (9 * dof) + z * np.sqrt(2 / (9 * dof))) ** 3


def test_reservoir_keeps_a_uniform_subset_of_everything_seen():
  capacity, n, runs = 10, 30, 4000
  # Three insertions of 7, 13 and 10 samples, padded to 13 (invalid rows).
  sizes = np.array([7, 13, 10])
  ids = np.full((3, 13), -1)
  for i, (start, size) in enumerate(zip(np.cumsum(sizes) - sizes, sizes)):
    ids[i, :size] = np.arange(start, start + size)

  def one_run(key):
    def insert(buf, chunk):
      i, chunk_ids = chunk
      return _offer(buf, jax.random.fold_in(key, i), chunk_ids,
                    valid=chunk_ids >= 0), None
    buf, _ = jax.lax.scan(insert, buffers.init(capacity, (1,)),
                          (jnp.arange(3), ids))
    counts = jnp.zeros(n).at[buf.x[:, 0].astype(jnp.int32)].add(buf.valid)
    return counts, buf.seen

  counts, seen = jax.jit(jax.vmap(one_run))(
      jax.random.split(jax.random.key(0), runs))
  assert np.all(np.asarray(seen) == n)
  observed = np.asarray(counts).sum(0)
  assert observed.sum() == runs * capacity  # full, and no padding stored
  p = capacity / n
  expected = runs * p
  # Inclusion counts of a without-replacement sample: variance R p (1 - p).
  chi2 = np.sum((observed - expected) ** 2) / (expected * (1 - p))
  assert chi2 < _chi2_critical(n - 1), (chi2, observed)
  # The statistic has power: a sampler that favours late samples fails it.
  biased = observed.copy()
  biased[:5] -= 150
  biased[-5:] += 150
  assert np.sum((biased - expected) ** 2) / (expected * (1 - p)) > \
      _chi2_critical(n - 1)


@pytest.mark.parametrize("policy", ["class_balanced", "experience_balanced"])
def test_adaptive_quotas_match_avalanche(policy):

  @jax.jit
  def history(key):
    """The buffer after each of groups 0-3 (20 samples each), then 4 (1)."""
    def offer(buf, group, count):
      ids = 100 * group + jnp.arange(count)
      labels = jnp.full(count, group)
      buf = _offer(buf, jax.random.fold_in(key, group), ids,
                   y=labels if policy == "class_balanced" else None,
                   experience=group)
      return buf, (buf, buffers.quotas(buf), buffers.group_counts(buf))

    buf = buffers.init(10, (1,), policy=policy, n_groups=5)
    buf, steps = jax.lax.scan(lambda b, g: offer(b, g, 20), buf,
                              jnp.arange(4))
    return (jax.tree.map(lambda a: a[2], steps),
            jax.tree.map(lambda a: a[3], steps), offer(buf, 4, 1)[1])

  (three, q3, c3), (four, _, c4), (five, q5, c5) = jax.device_get(
      history(jax.random.key(0)))
  # Groups 0, 1, 2 with plenty of samples: 10 = 4 + 3 + 3.
  assert q3.tolist() == [4, 3, 3, 0, 0] and c3.tolist() == [4, 3, 3, 0, 0]
  # A fourth group: 10 = 3 + 3 + 2 + 2; shrunk groups keep a subset.
  assert c4.tolist() == [3, 3, 2, 2, 0]
  assert {i for i in _stored(four) if i < 300} <= set(_stored(three))
  # A small group keeps all it has; its unused quota is not given away.
  assert q5.tolist() == [2, 2, 2, 2, 2] and c5.tolist() == [2, 2, 2, 2, 1]
  np.testing.assert_array_equal(_stored(five) // 100, _stored(five, "group"))


def test_class_seen_again_competes_with_its_stored_samples():

  @jax.jit
  def run():
    buf = buffers.init(4, (1,), policy="class_balanced", n_groups=2)
    first = _offer(buf, None, np.array([0, 1, 2, 3, 10, 11]),
                   y=np.array([0, 0, 0, 0, 1, 1]),
                   scores=np.array([0.9, 0.8, 0.1, 0.2, 0.5, 0.6]))
    second = _offer(first, None, np.array([4, 5]), y=np.array([0, 0]),
                    scores=np.array([0.85, 0.95]))
    return first, second, buffers.group_counts(second)

  first, second, counts = jax.device_get(run())
  assert sorted(_stored(first)) == [0, 1, 10, 11]
  assert sorted(_stored(second)) == [0, 5, 10, 11]
  assert counts.tolist() == [2, 2] and second.group_seen.tolist() == [6, 2]


def test_fixed_group_size_and_selection_by_index():
  ids = np.arange(5)

  @jax.jit
  def run():
    buf = buffers.init(6, (1,), policy="experience_balanced", n_groups=3,
                       group_size=2)
    # Offer only rows 1, 3 and 4 (selection by index), ranked by score.
    buf = _offer(buf, None, ids, valid=np.isin(ids, [1, 3, 4]),
                 scores=-np.arange(5.), experience=0)
    # Groups out of range (experience 3 of 3) are ignored like padding.
    return buf, buffers.quotas(buf), _offer(buf, None, ids + 10,
                                            scores=np.ones(5), experience=3)

  buf, quota, ignored = jax.device_get(run())
  assert sorted(_stored(buf)) == [1, 3] and quota.tolist() == [2, 0, 0]
  assert sorted(_stored(ignored)) == [1, 3] and ignored.seen == 3
  with pytest.raises(ValueError, match="needs 8 slots"):
    buffers.init(6, (1,), policy="class_balanced", n_groups=4, group_size=2)


def test_capacity_mask_and_counters_stay_consistent():
  rng = np.random.default_rng(0)
  buf = buffers.init(7, (1,), policy="class_balanced", n_groups=4)
  offered, seen = set(), np.zeros(4, int)

  @jax.jit
  def offer(buf, key, ids, y, valid):
    buf = _offer(buf, key, ids, y, valid)
    return buf, buffers.size(buf), buffers.group_counts(buf), buffers.quotas(buf)

  for step in range(12):
    n = 5
    ids = 10 * step + np.arange(n)
    y = rng.integers(0, 4, n)
    valid = rng.random(n) < 0.7
    buf, stored_size, counts, quota = jax.device_get(
        offer(buf, jax.random.key(step), ids, y, valid))
    offered |= set(ids[valid])
    np.add.at(seen, y[valid], 1)
    stored = _stored(buf)
    assert len(stored) == stored_size <= 7
    assert len(set(stored)) == len(stored) and set(stored) <= offered
    np.testing.assert_array_equal(_stored(buf, "y"), _stored(buf, "group"))
    assert buf.group_seen.tolist() == seen.tolist()
    assert int(buf.seen) == seen.sum()
    # Each class keeps min(quota, everything it offered), Avalanche's rule.
    np.testing.assert_array_equal(counts, np.minimum(quota, seen))


def test_sample_draws_distinct_valid_rows_and_masks_the_rest():

  @jax.jit
  def run():
    buf = buffers.init(5, (1,), extras={
        "z": jax.ShapeDtypeStruct((2,), jnp.float32)})
    buf = buffers.add(buf, jax.random.key(0), jnp.arange(3.)[:, None],
                      jnp.array([0, 1, 2]), jnp.zeros(3, jnp.int32),
                      extras={"z": jnp.arange(6.).reshape(3, 2)})
    rows = buffers.sample(buf, jax.random.key(1), 4)
    only = buffers.sample(buf, jax.random.key(2), 2, where=buf.y == 1)
    idx, mask = jax.vmap(lambda k: buffers.sample_indices(buf, k, 2))(
        jax.random.split(jax.random.key(3), 30))
    return rows, only, buf.x[idx, 0], mask

  rows, only, drawn, mask = jax.device_get(run())
  assert rows["weight"].tolist() == [1.0, 1.0, 1.0, 0.0]
  got = rows["x"][:3, 0].astype(int)
  assert sorted(got) == [0, 1, 2]
  np.testing.assert_array_equal(rows["z"][:3], np.stack([2 * got, 2 * got + 1],
                                                        1))
  assert only["y"][0] == 1 and only["weight"].tolist() == [1.0, 0.0]
  # 30 draws of 2 out of 3: never a repeated row, every pair appears.
  assert mask.all() and np.all(drawn[:, 0] != drawn[:, 1])
  assert {tuple(sorted(p)) for p in drawn.astype(int)} == {(0, 1), (0, 2),
                                                          (1, 2)}


def test_concat_batches_fills_missing_keys():
  current = {"x": jnp.ones((2, 3)), "y": jnp.array([0, 1]),
             "weight": jnp.ones(2), "class_mask": jnp.zeros((2, 4), bool)}
  memory = {"x": jnp.zeros((1, 3)), "y": jnp.array([2]), "weight": jnp.ones(1),
            "extra": jnp.full((1,), 7.0)}
  out = buffers.concat_batches(current, memory)
  assert out["x"].shape == (3, 3) and out["y"].tolist() == [0, 1, 2]
  assert out["extra"].tolist() == [0.0, 0.0, 7.0]
  assert out["class_mask"].tolist()[2] == [True] * 4
  assert not out["class_mask"][:2].any()


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="Did you mean 'reservoir'"):
    buffers.init(5, (1,), policy="reservior")
  with pytest.raises(ValueError, match="capacity must be a positive integer"):
    buffers.init(0, (1,))
  with pytest.raises(ValueError, match="reserved"):
    buffers.init(5, (1,), extras={"y": jax.ShapeDtypeStruct((), jnp.int32)})
  buf = buffers.init(5, (1,), extras={"z": jax.ShapeDtypeStruct((), jnp.int32)})
  with pytest.raises(ValueError, match="expected values for all"):
    _offer(buf, jax.random.key(0), [1, 2])


@pytest.mark.parametrize("change, message", [
    (dict(x=jnp.zeros((2, 3))), r"x has shape \(2, 3\); expected \(4, 3\)"),
    (dict(x=jnp.zeros((4, 1))), r"x has shape \(4, 1\); expected \(4, 3\)"),
    (dict(task=jnp.zeros(3, jnp.int32)), r"task has shape \(3,\)"),
    (dict(valid=jnp.ones(5, bool)), r"valid has shape \(5,\)"),
    (dict(extras={"z": jnp.zeros((4, 1))}),
     r"extras\['z'\] has shape \(4, 1\); expected \(4, 2\)"),
    (dict(y=jnp.array([0.7, 1.0, 0.0, 1.0])), r"y must be integer labels"),
    (dict(y=jnp.int32(1)), r"y must be integer labels of shape \[n\], got "
     r"shape \(\)"),
])
def test_add_refuses_rows_that_do_not_match_the_slots(change, message):
  # JAX would clamp or broadcast them and store samples under wrong labels.
  buf = buffers.init(3, (3,), policy="class_balanced", n_groups=2,
                     extras={"z": jax.ShapeDtypeStruct((2,), jnp.float32)})
  rows = dict(x=jnp.zeros((4, 3)), y=jnp.array([0, 1, 0, 1]),
              task=jnp.zeros(4, jnp.int32), extras={"z": jnp.zeros((4, 2))})
  rows.update(change)
  with pytest.raises(ValueError, match=message):
    buffers.add(buf, jax.random.key(0), rows.pop("x"), rows.pop("y"),
                rows.pop("task"), **rows)


def test_add_takes_labels_given_as_a_list():
  buf = buffers.init(2, (1,))
  buf = buffers.add(buf, jax.random.key(0), jnp.arange(3.0)[:, None],
                    [0, 1, 1], jnp.zeros(3, jnp.int32),
                    scores=jnp.array([0.1, 0.9, 0.5]))
  assert sorted(np.asarray(buf.y).tolist()) == [1, 1] and int(buf.seen) == 3
