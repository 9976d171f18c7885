"""NCM and FeCAM against numpy transcriptions of Avalanche's classifiers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (TwoLayer, assert_nearest_class_logits,
                      assert_refuses_models_without_features,
                      assert_trees_close, check_class_balanced_memory, device_experience,
                      fit_seeds_alone, hook_context, hook_state,
                      make_benchmark, normal_experience, predict_rows,
                      tiny_cli_metrics, two_layer_numpy, unit_rows)

import jaxcl
from jaxcl.models import MLP
from jaxcl.strategies import (REGISTRY, buffers, chain, fecam, from_spec,
                              icarl, naive, ncm, shrink_covariance,
                              tukey_transform)
from jaxcl.strategies.classifiers import _pinv, mahalanobis_logits
from jaxcl.strategies.model_utils import MASK_VALUE

N_CLASSES, DIM = 4, 3


def _ctx(model=None, **kwargs):
  return hook_context(model or TwoLayer(), n_classes=N_CLASSES, dim=DIM,
                      n_experiences=3, **kwargs)


def _features(params, x):
  """TwoLayer's penultimate (ReLU) features in float64."""
  return two_layer_numpy(params, np.asarray(x))[0]


def _ncm_means(h, y, normalize=True):
  """Avalanche's compute_class_means: {class: mean}."""
  out = {}
  for c in np.unique(y):
    rows = h[y == c]
    out[c] = (unit_rows(unit_rows(rows).mean(0)) if normalize
              else rows.mean(0))
  return out


def _shrink(cov, s1=1.0, s2=1.0):
  """Avalanche's FeCAMClassifier._shrink_cov in numpy."""
  off = cov.copy()
  np.fill_diagonal(off, 0.0)
  mask = off != 0.0
  off_mean = (off * mask).sum() / mask.sum()
  eye = np.eye(len(cov))
  return cov + s1 * np.mean(np.diag(cov)) * eye + s2 * off_mean * (1 - eye)


def _fecam_stats(h, y, power=0.5, s1=1.0, s2=1.0):
  """Avalanche's _gather_means_and_cov with its default transforms:
  {class: (mean, covariance)} of the Tukey-transformed features, the
  covariance shrunk twice, then normalised; classes of two rows or
  more."""
  t = h ** power
  out = {}
  for c in np.unique(y):
    rows = t[y == c]
    if len(rows) < 2:
      continue
    cov = _shrink(_shrink(np.cov(rows.T), s1, s2), s1, s2)
    sd = np.sqrt(np.diag(cov))
    out[c] = rows.mean(0), cov / np.outer(sd, sd)
  return out


def _stored(cl):
  """The rows in a strategy's buffer: (x, y)."""
  valid = np.asarray(cl.buffer.valid)
  return np.asarray(cl.buffer.x)[valid], np.asarray(cl.buffer.y)[valid]


def _moved(state):
  """``state`` with other parameters (as after training on more data)."""
  return state.replace(params=jax.tree.map(lambda p: p + 0.3, state.params))


def _positive_experience(labels, index, seed=0):
  """A padded experience of positive inputs (TwoLayer features mostly
  non-zero) and its inputs."""
  x = np.abs(np.random.default_rng(seed).normal(size=(len(labels), DIM)))
  return device_experience(x, labels, index, 8, N_CLASSES), x


def test_fecam_covariance_pieces_match_avalanche():
  rng = np.random.default_rng(0)
  # Avalanche's x ** 0.5 on non-negative features, odd-symmetric below 0.
  np.testing.assert_allclose(
      tukey_transform(jnp.array([4.0, 0.0, 0.25, -9.0]), 0.5),
      [2.0, 0.0, 0.5, -3.0])
  # A zero off-diagonal entry stays out of the off-diagonal mean.
  cov = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, -0.5], [1.0, -0.5, 4.0]])
  np.testing.assert_allclose(shrink_covariance(jnp.asarray(cov), 0.7, 0.2),
                             _shrink(cov, 0.7, 0.2), rtol=1e-6)
  h = np.abs(rng.normal(size=(9, 4)))
  y = np.array([0, 0, 0, 2, 2, 2, 2, 1, 0])
  valid = np.r_[np.ones(8, bool), False]  # the last row is padding
  means, covs, counts = jaxcl.strategies.class_covariances(
      jnp.asarray(h), jnp.asarray(y), jnp.asarray(valid), 4)
  np.testing.assert_array_equal(counts, [3, 1, 4, 0])
  for c in (0, 2):
    rows = h[:8][y[:8] == c]
    np.testing.assert_allclose(means[c], rows.mean(0), rtol=1e-6)
    np.testing.assert_allclose(covs[c], np.cov(rows.T), rtol=1e-5,
                               atol=1e-7)
  np.testing.assert_array_equal(covs[1], 0.0)  # one row: no covariance


def test_fecam_statistics_after_an_experience_match_numpy():
  ctx = _ctx()
  strategy = fecam(shrink1=0.5, shrink2=2.0, tukey1=0.7)
  state = hook_state(ctx, strategy)
  data, x = _positive_experience([0, 0, 0, 1, 1, 1, 2], 0)
  state = strategy.end_experience(ctx, state, data, jax.random.key(1))
  cl = state.cl_state
  y = np.array([0, 0, 0, 1, 1, 1, 2])
  expected = _fecam_stats(_features(state.params, x), y, 0.7, 0.5, 2.0)
  # Class 2 has one sample: no covariance, no statistics.
  np.testing.assert_array_equal(cl.has_stats, [True, True, False, False])
  for c in (0, 1):
    mean, cov = expected[c]
    np.testing.assert_allclose(cl.class_means[c], mean, rtol=1e-5)
    np.testing.assert_allclose(cl.class_covs[c], cov, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cl.precisions[c], np.linalg.pinv(cov),
                               rtol=1e-3, atol=1e-4)
  np.testing.assert_array_equal(cl.precisions[2:], 0.0)
  # Without the transforms: raw means and unbiased covariances.
  plain = fecam(tukey=False, shrinkage=False, covnorm=False)
  state = plain.end_experience(ctx, hook_state(ctx, plain), data,
                               jax.random.key(1))
  h = _features(state.params, x)
  np.testing.assert_allclose(state.cl_state.class_means[1],
                             h[y == 1].mean(0), rtol=1e-5)
  np.testing.assert_allclose(state.cl_state.class_covs[1],
                             np.cov(h[y == 1].T), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_ncm_means_after_an_experience_match_avalanche(normalize):
  ctx = _ctx()
  strategy = ncm(normalize=normalize)
  state = hook_state(ctx, strategy)
  assert not np.any(state.cl_state.has_mean)
  data = normal_experience([0, 0, 1, 1, 1, 0], 0)
  state = strategy.end_experience(ctx, state, data, jax.random.key(1))
  y = np.array([0, 0, 1, 1, 1, 0])
  expected = _ncm_means(_features(state.params, data.x[:6]), y, normalize)
  np.testing.assert_array_equal(state.cl_state.has_mean,
                                [True, True, False, False])
  for c, mean in expected.items():
    np.testing.assert_allclose(state.cl_state.class_means[c], mean,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_ncm_predicts_the_nearest_mean_never_a_class_without(normalize):
  ctx = _ctx()
  strategy = ncm(normalize=normalize)
  state = hook_state(ctx, strategy)
  rng = np.random.default_rng(7)
  means = rng.normal(size=(N_CLASSES, 5))
  has_mean = np.array([True, True, False, True])
  cl = state.cl_state.replace(class_means=jnp.asarray(means, jnp.float32),
                              has_mean=jnp.asarray(has_mean))
  x = rng.normal(size=(32, DIM))
  h = _features(state.params, x)
  h = unit_rows(h) if normalize else h
  assert_nearest_class_logits(
      predict_rows(ctx, strategy, state, cl, x),
      np.linalg.norm(h[:, None] - means[None], axis=-1), has_mean,
      atol=1e-5)
  # A mean very far away (unnormalised features of a large scale) stays
  # above the masked classes and is not counted as masked.
  far = cl.replace(class_means=cl.class_means * 1e4)
  logits = predict_rows(ctx, strategy, state, far, x)
  assert np.all(logits[:, has_mean] > MASK_VALUE / 2)
  np.testing.assert_array_equal(logits[:, ~has_mean], MASK_VALUE)


def test_fecam_predicts_the_nearest_class_by_mahalanobis_distance():
  ctx = _ctx()
  strategy = fecam()
  state = hook_state(ctx, strategy)
  rng = np.random.default_rng(3)
  means = np.abs(rng.normal(size=(N_CLASSES, 5)))
  a = rng.normal(size=(N_CLASSES, 5, 5))
  precisions = a @ np.swapaxes(a, 1, 2) + np.eye(5)
  has_stats = np.array([True, False, True, True])
  cl = state.cl_state.replace(
      class_means=jnp.asarray(means, jnp.float32),
      precisions=jnp.asarray(precisions, jnp.float32),
      has_stats=jnp.asarray(has_stats))
  x = rng.normal(size=(32, DIM))
  d = unit_rows(_features(state.params, x) ** 0.5)[:, None] - unit_rows(
      means)[None]
  assert_nearest_class_logits(
      predict_rows(ctx, strategy, state, cl, x),
      np.einsum("bcf,cfg,bcg->bc", d, precisions, d), has_stats, rtol=1e-4,
      atol=1e-4)
  # A class very far away stays above the masked ones.
  far = cl.replace(precisions=cl.precisions * 1e6)
  logits = predict_rows(ctx, strategy, state, far, x)
  assert np.all(logits[:, has_stats] > MASK_VALUE / 2)


def test_mahalanobis_logits_in_blocks_of_classes_match_numpy():
  rng = np.random.default_rng(4)
  n_classes, batch, width = 37, 64, 8  # 37: two blocks of 16 and a rest
  x = rng.normal(size=(batch, width))
  means = rng.normal(size=(n_classes, width))
  a = rng.normal(size=(n_classes, width, width))
  precisions = a @ np.swapaxes(a, 1, 2)
  has_stats = rng.random(n_classes) < 0.8
  d = unit_rows(x)[:, None] - unit_rows(means)[None]
  expected = np.einsum("bcf,cfg,bcg->bc", d, precisions, d)
  logits = np.asarray(mahalanobis_logits(
      jnp.asarray(x, jnp.float32), jnp.asarray(means, jnp.float32),
      jnp.asarray(precisions, jnp.float32), jnp.asarray(has_stats)))
  np.testing.assert_allclose(logits[:, has_stats], -expected[:, has_stats],
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(logits[:, ~has_stats], MASK_VALUE)
  # The [batch, classes, F] differences are not held for all classes.
  n_classes, batch, width = 256, 512, 64
  compiled = jax.jit(mahalanobis_logits).lower(
      jax.ShapeDtypeStruct((batch, width), jnp.float32),
      jax.ShapeDtypeStruct((n_classes, width), jnp.float32),
      jax.ShapeDtypeStruct((n_classes, width, width), jnp.float32),
      jax.ShapeDtypeStruct((n_classes,), bool)).compile()
  one_full = batch * n_classes * width * 4
  # 16 classes at a time: 6 MiB of temporaries; all at once: 96 MiB.
  assert compiled.memory_analysis().temp_size_in_bytes < one_full / 3


def test_pseudo_inverse_cutoff_is_torchs():
  # torch.linalg.pinv (Avalanche) drops eigenvalues under F * eps of the
  # largest; JAX's default cut-off, 10 F eps, would drop 5 F eps too.
  eps = np.finfo(np.float32).eps
  cov = np.diag([1.0, 0.5, 5 * 4 * eps, 0.5 * 4 * eps]).astype(np.float32)
  np.testing.assert_allclose(_pinv(jnp.asarray(cov)),
                             np.diag([1.0, 2.0, 1 / (20 * eps), 0.0]),
                             rtol=1e-5)
  rng = np.random.default_rng(2)
  a = rng.normal(size=(3, 6, 4))
  covs = a @ np.swapaxes(a, 1, 2)  # rank 4 of 6
  np.testing.assert_allclose(_pinv(jnp.asarray(covs, jnp.float32)),
                             np.linalg.pinv(covs, rcond=1e-5), rtol=1e-3,
                             atol=1e-4)


def test_current_update_moves_old_classes_half_way_as_avalanche():
  ctx = _ctx()
  y1, y2 = [0, 0, 0, 1, 1, 1], [1, 1, 1, 2, 2, 2]
  for strategy in (ncm(), fecam()):
    state = hook_state(ctx, strategy)
    first, x1 = _positive_experience(y1, 0, seed=1)
    state = strategy.end_experience(ctx, state, first, jax.random.key(1))
    before = state.cl_state
    assert before.buffer is None
    moved = _moved(state)
    second, x2 = _positive_experience(y2, 1, seed=2)
    after = strategy.end_experience(ctx, moved, second,
                                    jax.random.key(2)).cl_state
    h = _features(moved.params, x2)
    if strategy.name == "ncm":
      new = _ncm_means(h, np.array(y2))
      got, old, has = after.class_means, before.class_means, after.has_mean
    else:
      new = {c: np.concatenate([m[None], v]) for c, (m, v)
             in _fecam_stats(h, np.array(y2)).items()}
      got, old = (np.concatenate([s.class_means[:, None], s.class_covs], 1)
                  for s in (after, before))
      has = after.has_stats
    np.testing.assert_array_equal(has, [True, True, True, False])
    np.testing.assert_allclose(got[0], old[0], rtol=1e-6)  # kept
    np.testing.assert_allclose(got[1], 0.5 * new[1] + 0.5 * old[1],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[2], new[2], rtol=1e-4, atol=1e-5)


def test_memory_update_keeps_a_class_balanced_memory_and_replaces():
  ctx = _ctx()
  # FeCAM's memory is the same (and needs 2 samples per class: 8).
  check_class_balanced_memory(ctx, ncm(update="memory", mem_size=6))
  for strategy in (ncm(update="memory", mem_size=6),
                   fecam(update="memory", mem_size=8, tukey=False)):
    state = hook_state(ctx, strategy)
    state = strategy.end_experience(
        ctx, state, normal_experience([0, 0, 0, 1, 1, 1], 0),
        jax.random.key(1))
    moved = _moved(state)
    ended = strategy.end_experience(
        ctx, moved, normal_experience([2, 2, 2, 3, 3, 3, 3], 1, 1),
        jax.random.key(2)).cl_state
    # Every class's statistics come from the memory alone, under the new
    # parameters: classes 0 and 1 are not averaged with their old ones.
    x, y = _stored(ended)
    h = _features(moved.params, x)
    if strategy.name == "ncm":
      np.testing.assert_array_equal(np.bincount(y), [2, 2, 1, 1])
      expected = _ncm_means(h, y)
      for c in range(N_CLASSES):
        np.testing.assert_allclose(ended.class_means[c], expected[c],
                                   rtol=1e-5, atol=1e-6)
    else:
      np.testing.assert_array_equal(np.bincount(y), [2, 2, 2, 2])
      np.testing.assert_array_equal(ended.has_stats, True)
      for c in range(N_CLASSES):
        np.testing.assert_allclose(ended.class_means[c],
                                   h[y == c].mean(0), rtol=1e-5, atol=1e-6)


def test_oracle_update_equals_statistics_over_all_data_seen():
  ctx = _ctx()
  y1, y2 = [0, 0, 0, 1, 1, 1, 2], [1, 1, 2, 2, 3, 3, 3, 3]
  for strategy in (ncm(update="oracle"), fecam(update="oracle")):
    state = hook_state(ctx, strategy)
    # Room for every sample of the stream.
    assert state.cl_state.buffer.capacity == 3 * 8
    first, x1 = _positive_experience(y1, 0, seed=1)
    state = strategy.end_experience(ctx, state, first, jax.random.key(1))
    moved = _moved(state)
    second, x2 = _positive_experience(y2, 1, seed=2)
    ended = strategy.end_experience(ctx, moved, second,
                                    jax.random.key(2)).cl_state
    h = _features(moved.params, np.concatenate([x1, x2]))
    y = np.array(y1 + y2)
    if strategy.name == "ncm":
      for c, mean in _ncm_means(h, y).items():
        np.testing.assert_allclose(ended.class_means[c], mean, rtol=1e-5,
                                   atol=1e-6)
    else:
      for c, (mean, cov) in _fecam_stats(h, y).items():
        np.testing.assert_allclose(ended.class_means[c], mean, rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(ended.precisions[c], np.linalg.pinv(cov),
                                   rtol=1e-3, atol=1e-4)
      # Recomputed each time: no covariances kept (F x F per class).
      assert ended.class_covs is None


@pytest.fixture(scope="module")
def two_experiences():
  return make_benchmark(n_experiences=2)


def _fit_unmasked(strategy, bench):
  """One epoch of plain fine-tuning on ``bench`` whose predictions
  ``strategy`` makes, without the loop's own masking of unseen classes."""
  return jaxcl.fit(MLP(4, hidden_size=16, drop_rate=0.0),
                   chain(naive(), strategy), optax.sgd(0.1), bench, seed=0,
                   epochs=1, batch_size=4, mask_unseen_classes=False)


@pytest.fixture(scope="module")
def unmasked_fecam(two_experiences):
  """:func:`_fit_unmasked` of ``fecam()``."""
  return _fit_unmasked(fecam(), two_experiences)


@pytest.mark.xdist_group("test_classifiers-unmasked_fecam")
def test_classes_not_seen_yet_are_never_predicted(two_experiences,
                                                   unmasked_fecam):
  ctx = _ctx()
  x = jnp.asarray(np.random.default_rng(5).normal(size=(64, DIM)),
                  jnp.float32)
  for strategy in (ncm(), fecam()):
    state = hook_state(ctx, strategy)
    state = strategy.end_experience(
        ctx, state, normal_experience([0, 0, 0, 1, 1, 1], 0),
        jax.random.key(1))
    logits = predict_rows(ctx, strategy, state, state.cl_state, x)
    assert set(np.argmax(logits, 1).tolist()) <= {0, 1}
    np.testing.assert_array_equal(logits[:, 2:], MASK_VALUE)
  # Without the loop's own masking of unseen classes, the classifier's
  # alone keeps the first experience's classes after it.
  for result in (_fit_unmasked(ncm(), two_experiences), unmasked_fecam):
    assert result.accuracy_matrix[0, 0] > 0.9
    assert result.accuracy_matrix[-1].min() > 0.5


def test_vmapped_seeds_equal_single_runs(two_experiences):
  # The memory's random draws and dropout depend on the seed.
  model = MLP(4, hidden_size=16, drop_rate=0.1)
  strategy = chain(naive(), fecam(update="memory", mem_size=8))
  for alone in fit_seeds_alone(model, strategy, two_experiences):
    assert alone.accuracy_matrix[-1].min() > 0.5


@pytest.mark.parametrize("update", ["memory", "oracle"])
def test_fecam_without_kept_covariances_checkpoints_and_resumes(
    two_experiences, tmp_path, update):
  def run():
    return jaxcl.fit(MLP(4, hidden_size=16, drop_rate=0.0),
                     chain(naive(), fecam(update=update, mem_size=8)),
                     optax.sgd(0.1), two_experiences, seed=0, epochs=1,
                     batch_size=4, checkpoint_dir=str(tmp_path))
  first = run()
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit())
  resumed = run()  # From the finished run's last checkpoint.
  np.testing.assert_array_equal(resumed.accuracy_matrix, first.accuracy_matrix)
  assert_trees_close(resumed.state.cl_state, first.state.cl_state, atol=0)


@pytest.mark.xdist_group("test_classifiers-unmasked_fecam")
def test_sweeps_shrinkage_as_single_runs(two_experiences, unmasked_fecam):
  # The second run has fecam's default shrink1, that of unmasked_fecam.
  swept = jaxcl.sweep(MLP(4, hidden_size=16, drop_rate=0.0), two_experiences,
                      [3.0, 1.0],
                      strategy=lambda s: chain(naive(), fecam(shrink1=s)),
                      optimizer=optax.sgd(0.1), epochs=1, batch_size=4,
                      mask_unseen_classes=False)
  alone = unmasked_fecam.state.cl_state[1].class_covs
  np.testing.assert_allclose(swept.runs[1].state.cl_state[1].class_covs,
                             alone, atol=1e-5)
  assert not np.allclose(swept.runs[0].state.cl_state[1].class_covs, alone,
                         atol=1e-5)


def test_chains_refuse_a_second_prediction_rule():
  with pytest.raises(ValueError, match=r"\['icarl', 'ncm'\] all replace "
                     "`predict`"):
    chain(icarl(), ncm())
  with pytest.raises(ValueError, match=r"\['ncm', 'fecam'\] all replace"):
    from_spec("naive+ncm+fecam")


def test_refuses_bad_arguments():
  for factory in (ncm, fecam):
    with pytest.raises(ValueError, match="Unknown update 'all'; expected "
                       "one of current, memory, oracle"):
      factory(update="all")
    with pytest.raises(ValueError, match="mem_size must be a positive "
                       "integer, got 0"):
      factory(mem_size=0)
    tasks = _ctx(task_classes=np.eye(2, N_CLASSES, dtype=bool))
    with pytest.raises(ValueError, match=f"{factory.__name__} keeps one set "
                       "of statistics per class and ignores task labels"):
      factory().init(tasks, None, jax.random.key(0))
    assert_refuses_models_without_features(factory(), _ctx())
  # Two samples per class for a covariance: 2 x 4 classes at least.
  with pytest.raises(ValueError, match=r"fecam\(update='memory'\) needs "
                     r"mem_size >= 2 x n_classes = 8 \(two samples per "
                     r"class for a covariance\), got mem_size=7"):
    fecam(update="memory", mem_size=7).init(_ctx(), None, jax.random.key(0))
  for strategy in (fecam(update="memory", mem_size=8),
                   fecam(update="current", mem_size=1), ncm(update="memory",
                                                            mem_size=4)):
    hook_state(_ctx(), strategy)


@pytest.mark.parametrize("build, error, message", [
    (lambda: ncm(normalize="no"), TypeError,
     "normalize must be True or False, got 'no'"),
    (lambda: fecam(tukey1=0.0), ValueError,
     r"tukey1 must be in \(0, inf\), got 0.0"),
    (lambda: fecam(shrink2=-1.0), ValueError,
     r"shrink2 must be in \[0, inf\), got -1.0"),
    (lambda: fecam(covnorm=1), TypeError, "covnorm must be True or False"),
])
def test_factories_refuse_bad_hyperparameters(build, error, message):
  with pytest.raises(error, match=message):
    build()


def test_registered_for_specs_with_avalanches_defaults():
  assert REGISTRY["ncm"].factory is ncm
  assert set(REGISTRY["ncm"].parameters) == {"update", "mem_size",
                                             "normalize"}
  defaults = {k: p.default for k, p in REGISTRY["fecam"].parameters.items()}
  assert defaults == {"update": "current", "mem_size": 2000, "tukey": True,
                      "shrinkage": True, "shrink1": 1.0, "shrink2": 1.0,
                      "tukey1": 0.5, "covnorm": True}
  strategy = from_spec("replay+ncm(update='memory')", mem_size=50)
  assert strategy.name == "replay+ncm" and strategy.predict is not None
  own = hook_state(_ctx(), strategy).cl_state[1]
  assert own.buffer.capacity == 50
  assert buffers.size(own.buffer) == 0


def test_from_the_command_line(tmp_path):
  # FeCAM alone: plain fine-tuning whose predictions FeCAM makes (the
  # 16 features of one epoch keep some of the first experience).
  metrics = tiny_cli_metrics(tmp_path / "fecam", "--strategy", "fecam")
  assert metrics["stream_accuracy"] > 0.4
  metrics = tiny_cli_metrics(tmp_path / "ncm", "--strategy",
                             "naive+ncm(update='memory')", "--mem-size",
                             "50")
  assert metrics["stream_accuracy"] > 0.5
