"""Shared fixtures: small synthetic benchmarks that train in well under a second."""

import contextlib
import gc
import importlib
import json
import os
import subprocess
import sys
import tempfile

# The suite's programs are tiny and mostly run once: compiling them is most
# of its time, and XLA's backend optimisations (LLVM's) about a third of
# that. Without them the programs compute the same (XLA's HLO passes, fusion
# included, still run; rounding may differ in the last place) and the suite
# takes about a third less CPU time. Set before JAX is imported, so that the
# subprocesses of the multi-device, multi-host, notebook and example tests
# inherit it. Tests about compile options turn them back on
# (``optimized_compiles``).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")


def _with_xla_flag(flag: str) -> str | None:
  """``XLA_FLAGS`` with ``flag`` added, if this jaxlib's XLA knows it (an
  unknown flag aborts every process that starts a backend, so a CPU client
  is started with it in a subprocess first: 0.3 s, once per session, as
  the workers inherit the result)."""
  flags = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), flag]))
  probe = subprocess.run(
      [sys.executable, "-c",
       "import jaxlib.xla_client as xc; xc.make_cpu_client()"],
      env={**os.environ, "XLA_FLAGS": flags}, capture_output=True)
  return flags if probe.returncode == 0 else None


# XLA:CPU's older fusion emitters compile the suite's programs in about two
# thirds of the CPU time of its MLIR ones (fit's init program already uses
# them, jaxcl.training.fit._init_compiler_options); their kernels run some
# 10 % slower, which programs that mostly run once do not feel. Also
# inherited by the subprocesses (those that set XLA_FLAGS add theirs to it).
# A jaxlib without the flag compiles with its default.
if "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
  _flags = _with_xla_flag("--xla_cpu_use_fusion_emitters=false")
  if _flags is not None:
    os.environ["XLA_FLAGS"] = _flags

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402

import jaxcl  # noqa: E402

# Tracing and lowering allocate millions of short-lived objects, and every
# 700 of them CPython's default thresholds run a collection; the full ones
# walk the whole heap, which JAX's caches grow over a session (about 5 % of
# a worker's time, measured). Fewer collections, as a long-running JAX
# process would tune them; the suite's results do not depend on when
# garbage is collected.
gc.set_threshold(50_000, 20, 20)


def make_benchmark(n_classes=4, n_experiences=2, per_class=12, dim=6, seed=0,
                   sizes=None, **kwargs):
  """Separable Gaussian blobs, one class-incremental benchmark."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(0, 3, (n_classes, dim))
  counts = sizes or [per_class] * n_classes
  y = np.concatenate([np.full(c, k) for k, c in enumerate(counts)])
  x = (centers[y] + rng.normal(0, 0.5, (len(y), dim))).astype(np.float32)
  return jaxcl.benchmarks.class_incremental(
      (x, y), (x, y), n_experiences, fixed_class_order=range(n_classes),
      **kwargs)


@pytest.fixture(scope="session", autouse=True)
def shared_compilation_cache(tmp_path_factory):
  """One compilation cache for the whole test session, shared by its xdist
  workers: the many runs that build the same programs compile them once.

  The ``jaxcl run`` default folder points there too, so that no test writes
  to the user's home. Tests that need a cache of their own switch to it with
  :func:`compilation_cache_in`, which restores this one.
  """
  from jax.experimental.compilation_cache import compilation_cache

  from jaxcl import compilation
  base = tmp_path_factory.getbasetemp()
  # Under xdist each worker's folder lies in the session's own.
  session = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  folder = session / "xla_cache"
  names = ("jax_compilation_cache_dir",
           "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  before = {name: getattr(jax.config, name) for name in names}
  default = compilation.DEFAULT_CACHE_DIR
  compilation.DEFAULT_CACHE_DIR = jaxcl.enable_compilation_cache(folder)
  yield folder
  compilation.DEFAULT_CACHE_DIR = default
  for name, value in before.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


@pytest.fixture
def optimized_compiles():
  """XLA's backend optimisations on, as users compile (the suite turns them
  off, above)."""
  previous = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture
def fit_with_mlir_emitters(monkeypatch):
  """``fit`` compiles training and evaluation with XLA:CPU's MLIR fusion
  emitters, as it does outside the suite (which turns them off, above): for
  runs whose rounding is amplified into what a test compares."""
  fit_module = importlib.import_module("jaxcl.training.fit")
  compile_ = fit_module._compile
  monkeypatch.setattr(fit_module, "_compile", lambda program, options: compile_(
      program, {"xla_cpu_use_fusion_emitters": True, **(options or {})}))


@pytest.fixture
def tiny_benchmark():
  return make_benchmark()


@pytest.fixture
def no_compiling(monkeypatch):
  """Fails the test at any compile: for input that must be refused first."""
  def compile_(*args, **kwargs):
    raise AssertionError("compiled before refusing the input")
  monkeypatch.setattr(jax.stages.Lowered, "compile", compile_)


@pytest.fixture
def tiny_model():
  return jaxcl.models.MLP(num_classes=4, hidden_size=8, drop_rate=0.0)


class BatchNormMLP(nn.Module):
  """Dense -> BatchNorm -> ReLU -> Dense(4): a model with batch statistics."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.BatchNorm(use_running_average=not train)(nn.Dense(8)(x))
    return nn.Dense(4)(nn.relu(x))


class TwoLayer(nn.Module):
  """Dense(5) -> ReLU -> Dense(4): penultimate features are the ReLU's."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    hidden = nn.relu(nn.Dense(5)(x))
    return nn.Dense(4)(hidden)


def hook_context(model, *, n_classes=4, dim=3, batch_size=4,
                 n_experiences=2, **kwargs):
  """A StrategyContext over raw ``dim``-feature inputs and experiences
  padded to 8 rows, for calling strategy hooks directly."""
  return jaxcl.strategies.StrategyContext(
      model=jaxcl.models.as_model(model), preprocess=lambda x: x,
      loss=jaxcl.training.cross_entropy, n_classes=n_classes,
      n_experiences=n_experiences, input_shape=(dim,),
      batch_size=batch_size, experience_size=8, **kwargs)


def log_softmax(z):
  """Row-wise log-softmax in numpy (float64), for reference losses."""
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def cross_entropy_np(logits, y, classes=None):
  """Per-row cross-entropy in numpy over the classes kept (all when None)."""
  logits = np.asarray(logits, np.float64)
  if classes is not None:
    logits = np.where(np.isin(np.arange(logits.shape[1]), classes), logits,
                      -np.inf)
  return -log_softmax(logits)[np.arange(len(y)), y]


def hook_state(ctx, strategy):
  """``strategy``'s initial TrainState on ``ctx`` (SGD 0.1, key 0), for
  calling its hooks directly."""
  return jaxcl.training.init_state(
      ctx, strategy, optax.sgd(0.1), jax.random.key(0),
      jnp.zeros((1, *ctx.input_shape)), jnp.zeros((1,), jnp.int32))


def unit_rows(a):
  """The rows of ``a`` scaled to unit L2 norm (numpy)."""
  return a / np.linalg.norm(a, axis=-1, keepdims=True)


def two_layer_numpy(params, x):
  """:class:`TwoLayer` in float64 numpy: ``(hidden, outputs)``, its
  penultimate ReLU features and its outputs."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  hidden = np.maximum(np.asarray(x, np.float64) @ p["Dense_0"]["kernel"]
                      + p["Dense_0"]["bias"], 0.0)
  return hidden, hidden @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def assert_trees_close(actual, expected, rtol=1e-4, atol=1e-6):
  """Leaf by leaf ``assert_allclose`` of two pytrees of the same structure
  (PRNG keys compared by their data)."""
  def values(leaf):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    return np.asarray(leaf, np.float64)

  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      values(a), values(b), rtol=rtol, atol=atol), actual, expected)


@contextlib.contextmanager
def compilation_cache_in(folder):
  """Caches this process's compiled programs in ``folder`` (runs that build
  the same programs, e.g. seeds alone, compile them once and load them
  after: the same executables), then restores JAX's cache settings."""
  from jax.experimental.compilation_cache import compilation_cache
  names = ("jax_compilation_cache_dir",
           "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  before = {name: getattr(jax.config, name) for name in names}
  jaxcl.enable_compilation_cache(folder)
  try:
    yield str(folder)
  finally:
    for name, value in before.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()


def fit_seeds_alone(model, strategy, bench, seeds=(0, 1), epochs=2,
                    batch_size=4):
  """Fits ``seeds`` together (vmapped) and each alone with SGD 0.1, checks
  that they give the same accuracy matrices, parameters and strategy
  states, and returns the single runs."""
  kwargs = {"epochs": epochs, "batch_size": batch_size}
  batched = jaxcl.fit(model, strategy, optax.sgd(0.1), bench,
                      seeds=list(seeds), **kwargs)
  # The runs alone differ by their seed only: one compiles, the others load.
  with tempfile.TemporaryDirectory() as folder, compilation_cache_in(folder):
    alone = [jaxcl.fit(model, strategy, optax.sgd(0.1), bench, seed=seed,
                       **kwargs) for seed in seeds]
  for together, single in zip(batched.runs, alone):
    np.testing.assert_allclose(together.accuracy_matrix,
                               single.accuracy_matrix, atol=1e-6)
    assert_trees_close(together.state.params, single.state.params,
                       atol=1e-5)
    assert_trees_close(together.state.cl_state, single.state.cl_state,
                       atol=1e-5)
  return alone


def assert_remembers_the_first_experience(run, model, bench, margin=0.2):
  """``run`` keeps the first experience's accuracy ``margin`` above naive
  fine-tuning with ``fit_seeds_alone``'s settings (which forgets it)."""
  naive = jaxcl.fit(model, jaxcl.strategies.naive(), optax.sgd(0.1), bench,
                    seed=0, epochs=2, batch_size=4)
  assert run.accuracy_matrix[-1, 0] > naive.accuracy_matrix[-1, 0] + margin


def assert_refuses_online_streams(strategy, match):
  """``fit`` refuses ``strategy`` on an online stream (mini-experiences of
  8 samples) with a ``ValueError`` matching ``match`` that names the first
  mini-experience and says what to do (with the ``no_compiling`` fixture:
  before compiling)."""
  online = jaxcl.benchmarks.split_online(make_benchmark(), 8)
  with pytest.raises(ValueError, match=(
      match + r"; got train experience 0, a mini-experience of experience 0 "
      r"of an online stream \(split_online\): expected the stream before "
      r"split_online \(no --online-size\), or ")):
    jaxcl.fit(jaxcl.models.MLP(4, hidden_size=8), strategy, optax.sgd(0.1),
              online, seed=0)


def assert_refuses_models_without_features(strategy, ctx):
  """``strategy.init`` refuses a model that is not Flax (no output layer to
  take penultimate features from), before compiling."""
  dim, n_classes = ctx.input_shape[0], ctx.n_classes
  params = {"w": jnp.ones((dim, n_classes))}
  linear = jaxcl.models.Model(
      init=lambda key, x, task: (params, {}),
      apply=lambda p, s, x, task, train, key: (x @ p["w"], s))
  with pytest.raises(ValueError, match="penultimate features need a Flax "
                     "model"):
    strategy.init(ctx._replace(model=linear), params, jax.random.key(0))


def device_experience(x, labels, index, size, n_classes, origin=None):
  """A one-task training experience of ``x`` padded to ``size`` rows and put
  on the device, as strategy hooks receive it (``origin``: the original
  experience of an online mini-experience)."""
  labels = np.asarray(labels)
  exp = jaxcl.benchmarks.Experience(
      x=np.asarray(x, np.float32), y=labels, task=np.zeros(len(labels)),
      index=index, classes=tuple(sorted(set(labels.tolist()))),
      origin="train", origin_experience=origin)
  return jax.tree.map(jnp.asarray,
                      jaxcl.training.experience_data(exp, size, n_classes))


def normal_experience(labels, index, seed=0, dim=3, n_classes=4):
  """:func:`device_experience` of standard-normal ``dim``-feature inputs
  with ``labels``, padded to 8 rows."""
  x = np.random.default_rng(seed).normal(size=(len(labels), dim))
  return device_experience(x, labels, index, 8, n_classes)


def check_class_balanced_memory(ctx, strategy):
  """Ends three experiences of ``strategy`` (built with ``mem_size=6``) on
  ``ctx``'s four classes and checks that its ``cl_state.buffer`` holds 3
  samples of classes 0 and 1, then 2, 2, 1, 1 of the four, twice."""
  state = hook_state(ctx, strategy)
  expected = [[3, 3, 0, 0], [2, 2, 1, 1], [2, 2, 1, 1]]
  for i, labels in enumerate([[0] * 4 + [1] * 4, [2] * 4 + [3] * 4,
                              [0, 1, 2, 3] * 2]):
    state = strategy.end_experience(
        ctx, state, normal_experience(labels, i, seed=i), jax.random.key(i))
    buffer = state.cl_state.buffer
    np.testing.assert_array_equal(
        jaxcl.strategies.buffers.group_counts(buffer), expected[i])
    assert int(jaxcl.strategies.buffers.size(buffer)) == 6


def tiny_cli_metrics(tmp_path, *flags):
  """Runs ``jaxcl run`` with ``flags`` on two experiences of the bundled
  SplitMNIST (one epoch, a 16-unit MLP) and returns results.json's
  metrics."""
  from jaxcl import cli
  args = ["run", *flags, "--n-experiences", "2", "--epochs", "1",
          "--hidden-size", "16", "--no-progress", "--compilation-cache", "",
          "--logdir", str(tmp_path)]
  assert cli.main(args) == 0
  return json.loads((tmp_path / "results.json").read_text())["metrics"]


def tiny_cli_results(logdir, *flags):
  """Runs ``jaxcl run`` with ``flags`` for one epoch of a 4-unit MLP, with
  nothing printed, and returns results.json."""
  from jaxcl import cli
  assert cli.main(["run", *flags, "--epochs", "1", "--hidden-size", "4",
                   "--no-progress", "--quiet", "--no-tensorboard",
                   "--compilation-cache", "", "--logdir", str(logdir)]) == 0
  return json.loads((logdir / "results.json").read_text())


def normal_batch(labels, weight, seed=3, dim=3):
  """A training batch of standard-normal ``dim``-feature inputs with
  ``labels`` and ``weight`` (0 on padding rows), task 0."""
  n = len(labels)
  x = np.random.default_rng(seed).normal(size=(n, dim))
  return {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(labels),
          "task": jnp.zeros(n, jnp.int32),
          "weight": jnp.asarray(weight, jnp.float32)}


def predict_rows(ctx, strategy, state, cl_state, x):
  """``strategy.predict`` on the rows ``x`` (task 0) with ``state``'s
  parameters and the strategy state ``cl_state``."""
  return strategy.predict(ctx, state.params, state.model_state, cl_state,
                          jnp.asarray(x, jnp.float32),
                          jnp.zeros(len(x), jnp.int32))


def assert_nearest_class_logits(logits, distance, has_stats, rtol=1e-5,
                                atol=1e-6):
  """``logits`` are ``-distance`` for the classes with statistics, the
  masked value for the others, and their argmax the nearest class."""
  from jaxcl.strategies.model_utils import MASK_VALUE
  np.testing.assert_allclose(logits[:, has_stats], -distance[:, has_stats],
                             rtol=rtol, atol=atol)
  np.testing.assert_array_equal(logits[:, ~has_stats], MASK_VALUE)
  np.testing.assert_array_equal(
      np.argmax(logits, 1),
      np.argmin(np.where(has_stats, distance, np.inf), 1))
