"""Feature-based exemplar selection in replay's memory (Avalanche's
``ParametricBuffer`` with ``HerdingSelectionStrategy`` and
``ClosestToCenterSelectionStrategy``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (TwoLayer, assert_refuses_models_without_features,
                      assert_remembers_the_first_experience, fit_seeds_alone,
                      hook_context, hook_state, make_benchmark,
                      normal_experience, two_layer_numpy)

import jaxcl
from jaxcl.strategies import buffers, exemplars, replay


def _avalanche_order(phi, selection):
  """Avalanche's ``make_sorted_indices_from_features``, transcribed."""
  center = phi.mean(axis=0)
  if selection == "closest_to_center":
    return np.argsort(((phi - center) ** 2).sum(axis=1), kind="stable")
  selected, current = [], np.zeros_like(center)
  for i in range(len(phi)):
    candidates = current * i / (i + 1) + phi / (i + 1)
    distances = ((candidates - center) ** 2).sum(axis=1)
    distances[selected] = np.inf
    selected.append(int(distances.argmin()))
    current = candidates[selected[-1]]
  return np.array(selected)


def _group_lengths(capacity, n_groups):
  """Avalanche's ``get_group_lengths`` (adaptive sizes)."""
  return [capacity // n_groups + (i < capacity % n_groups)
          for i in range(n_groups)]


def _avalanche_buffer(experiences, features, capacity, storage, selection):
  """Sample ids per group that Avalanche's ``ParametricBuffer`` keeps.

  ``experiences``: ``(ids, labels)`` per experience; ``features[t]``: every
  sample's features under the model at the end of experience ``t``.
  """
  kept, size, seen = {}, {}, set()
  for t, (ids, labels) in enumerate(experiences):
    if storage == "class_balanced":
      new = {int(c): ids[labels == c] for c in np.unique(labels)}
    else:
      new = {t if storage == "experience_balanced" else 0: ids}
    seen |= set(new)
    length = dict(zip(sorted(seen), _group_lengths(capacity, len(seen))))

    def resize(group, n):
      members = np.asarray(kept[group])
      order = _avalanche_order(features[t][members], selection)
      kept[group], size[group] = members[order[:n]], n

    for group, rows in new.items():
      if group in kept:  # update_from_dataset: cut to the old size first.
        kept[group] = np.concatenate([kept[group], rows])
        resize(group, size[group])
      else:
        kept[group] = rows
      resize(group, length[group])
    for group in kept:
      resize(group, length[group])
  return {group: set(rows.tolist()) for group, rows in kept.items()}


NEW_CLASSES = [[0] * 4 + [1] * 4, [2] * 4 + [3] * 4, [0, 1, 2, 3] * 2]
# Class 1 comes back while class 2 is new: its stored and new samples are
# cut to its old size (3), then to its new one (2).
CLASS_RETURNS = [[0] * 4 + [1] * 4, [1] * 4 + [2] * 4,
                 [0, 1, 2, 3, 3, 3, 0, 1]]


@pytest.mark.parametrize("storage, selection, labels", [
    *[(storage, selection, NEW_CLASSES) for storage in buffers.POLICIES
      for selection in ("herding", "closest_to_center")],
    *[("class_balanced", selection, CLASS_RETURNS)
      for selection in ("herding", "closest_to_center")]])
def test_memory_matches_avalanches_parametric_buffer(storage, selection,
                                                     labels):
  # Three experiences; the parameters move between experiences, so stored
  # exemplars are chosen again by the features of the current model. With
  # 7 slots no group is ever cut from 2 samples to 1, which both rules
  # leave to a tie.
  ctx = hook_context(TwoLayer(), n_experiences=3)
  strategy = replay(mem_size=7, storage=storage, selection=selection)
  state = hook_state(ctx, strategy)
  rng = np.random.default_rng(3)
  x = np.concatenate([np.random.default_rng(i).normal(size=(8, 3))
                      for i in range(3)])
  features = []
  for i, y in enumerate(labels):
    state = state.replace(params=jax.tree.map(
        lambda a: a + 0.5 * rng.normal(size=a.shape).astype(a.dtype),
        state.params))
    state = strategy.end_experience(ctx, state,
                                    normal_experience(y, i, seed=i),
                                    jax.random.key(i))
    features.append(two_layer_numpy(state.params, x)[0])
  memory = state.cl_state
  experiences = [(np.arange(8 * i, 8 * i + 8), np.array(y))
                 for i, y in enumerate(labels)]
  expected = _avalanche_buffer(experiences, features, 7, storage, selection)
  stored = np.flatnonzero(memory.valid)
  # Each stored input is one of the 24 offered rows.
  ids = np.abs(np.asarray(memory.x)[stored, None] - x[None]).sum(-1).argmin(1)
  got = {}
  for slot, sample in zip(stored, ids):
    got.setdefault(int(memory.group[slot]), set()).add(int(sample))
  assert got == expected


def test_herding_scores_order_each_groups_picks():
  rng = np.random.default_rng(0)
  phi = rng.normal(size=(12, 4))
  group = np.array([0, 1, 2] * 4)
  group[-1] = 3  # Not a candidate: no group below quota's length.
  quota = np.array([4, 2, 0])
  scores = np.asarray(exemplars.selection_scores(
      jnp.asarray(phi, jnp.float32), jnp.asarray(group), jnp.asarray(quota),
      "herding"))
  for g, n in enumerate(quota):
    members = np.flatnonzero(group == g)
    by_score = members[np.argsort(-scores[members], kind="stable")]
    np.testing.assert_array_equal(
        by_score[:n], members[_avalanche_order(phi[members], "herding")[:n]])
    # Rows not picked rank below every pick.
    assert np.all(scores[by_score[n:]] < scores[by_score[:n]].min(initial=0))


def test_selection_replay_trains_and_vmaps():
  bench = make_benchmark(n_experiences=2)
  model = jaxcl.models.MLP(num_classes=4, hidden_size=8, drop_rate=0.0)
  strategy = replay(mem_size=8, storage="class_balanced", selection="herding")
  run = fit_seeds_alone(model, strategy, bench)[0]
  assert int(buffers.size(run.state.cl_state)) == 8
  assert_remembers_the_first_experience(run, model, bench)


def test_validates_selection_and_refuses_models_without_features():
  with pytest.raises(ValueError, match="Unknown selection 'kmeans'; expected "
                     "one of closest_to_center, herding, random"):
    replay(selection="kmeans")
  assert_refuses_models_without_features(replay(selection="herding"),
                                         hook_context(TwoLayer()))
