"""jaxcl.enable_compilation_cache: a second process loads, not compiles."""

import collections
import importlib
import json
import os
import pathlib
import subprocess
import sys

import chex
import jax
import numpy as np
import optax
import pytest
from conftest import make_benchmark
from jax.experimental.compilation_cache import compilation_cache

import jaxcl
from jaxcl.compilation import cached_json
from jaxcl.strategies import naive

# One process: enable the cache, compile a small program, report the cache
# events JAX recorded and the result.
_PROGRAM = """
import json, sys
import jax, jax.numpy as jnp
from jax import monitoring
import jaxcl
events = []
monitoring.register_event_listener(lambda name, **kw: events.append(name))
folder = jaxcl.enable_compilation_cache(sys.argv[1])
value = jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.arange(12.0).reshape(3, 4))
print(json.dumps({"folder": folder,
                  "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses"),
                  "value": value.tolist()}))
"""


def _run(folder):
  out = subprocess.run([sys.executable, "-c", _PROGRAM, str(folder)],
                       check=True, capture_output=True, text=True).stdout
  return json.loads(out.splitlines()[-1])


def test_second_process_loads_the_program_from_the_cache(tmp_path):
  folder = tmp_path / "xla"
  first = _run(folder)
  assert first["folder"] == str(folder)
  assert first["misses"] >= 1 and first["hits"] == 0
  assert any(folder.iterdir()), "nothing was written to the cache"
  second = _run(folder)
  assert second["hits"] >= 1 and second["misses"] == 0
  assert second["value"] == first["value"]


_SWITCH = """
import sys
import jax, jax.numpy as jnp
import jaxcl
jaxcl.enable_compilation_cache(sys.argv[1])
jax.jit(lambda x: x * 2.0)(jnp.ones(3)).block_until_ready()
jaxcl.enable_compilation_cache(sys.argv[2])
jax.jit(lambda x: jnp.cos(x) + 1.0)(jnp.ones(5)).block_until_ready()
"""


def test_switching_folders_takes_effect_after_a_compile(tmp_path):
  first, second = tmp_path / "a", tmp_path / "b"
  subprocess.run([sys.executable, "-c", _SWITCH, str(first), str(second)],
                 check=True, capture_output=True, text=True)
  # Each folder holds the one jitted lambda compiled while it was enabled.
  for folder in (first, second):
    lambdas = [p for p in folder.iterdir() if p.name.startswith("jit__lambda-")]
    assert len(lambdas) == 1, sorted(p.name for p in folder.iterdir())


@pytest.fixture
def restored_cache_config():
  before = jax.config.jax_compilation_cache_dir
  yield
  jax.config.update("jax_compilation_cache_dir", before)
  compilation_cache.reset_cache()


def test_local_folders_become_absolute_and_urls_stay(tmp_path, monkeypatch,
                                                    restored_cache_config):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert jaxcl.enable_compilation_cache("xla") == str(tmp_path / "xla")
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
  home = jaxcl.enable_compilation_cache("~/cache_test")
  assert home == os.path.join(os.path.expanduser("~"), "cache_test")
  assert jaxcl.enable_compilation_cache("gs://bucket/xla") == "gs://bucket/xla"
  assert jax.config.jax_compilation_cache_dir == "gs://bucket/xla"


def test_empty_folder_leaves_jax_configuration_alone():
  before = jax.config.jax_compilation_cache_dir
  assert jaxcl.enable_compilation_cache("") is None
  assert jaxcl.enable_compilation_cache(None) is None
  assert jax.config.jax_compilation_cache_dir == before


def test_folder_that_is_a_file_is_refused(tmp_path):
  file = tmp_path / "cache"
  file.write_text("not a directory")
  before = jax.config.jax_compilation_cache_dir
  with pytest.raises(ValueError, match=r"folder=.*cache.* is a file"):
    jaxcl.enable_compilation_cache(file)
  # Inside a file, no folder can be created: JAX only warned at each compile.
  with pytest.raises(ValueError, match=r"folder=.*cache/xla.* is inside the "
                     r"file '.*cache'"):
    jaxcl.enable_compilation_cache(file / "xla")
  assert jax.config.jax_compilation_cache_dir == before


def test_a_folder_that_cannot_be_created_keeps_the_cache_in_use(
    tmp_path, restored_cache_config):
  in_use = jaxcl.enable_compilation_cache(tmp_path / "xla")
  with pytest.warns(RuntimeWarning, match=r"folder='/proc/jaxcl_xla' cannot "
                    r"hold the compilation cache \(FileNotFoundError.*\); "
                    f"the cache stays at '{in_use}'"):
    assert jaxcl.enable_compilation_cache("/proc/jaxcl_xla") is None
  assert jax.config.jax_compilation_cache_dir == in_use


def test_an_existing_folder_that_cannot_be_written_is_not_used(
    tmp_path, monkeypatch, restored_cache_config):
  # mkdir accepted it, and JAX then warned at every compile. (The tests may
  # run as root, whom permissions do not stop: os.access answers for them.)
  folder = tmp_path / "read_only"
  folder.mkdir()
  access = os.access
  monkeypatch.setattr(os, "access", lambda path, mode: access(
      path, mode) and pathlib.Path(path) != folder)
  jax.config.update("jax_compilation_cache_dir", None)
  with pytest.warns(RuntimeWarning, match=r"cannot hold the compilation "
                    r"cache \(PermissionError: Permission denied\); "
                    "programs are compiled without it"):
    assert jaxcl.enable_compilation_cache(folder) is None
  assert jax.config.jax_compilation_cache_dir is None
  with pytest.raises(ValueError, match=r"checkpoint_dir '.*read_only' cannot "
                     r"be written: PermissionError: Permission denied; "
                     r"expected a folder this process can write"):
    jaxcl.fit(jaxcl.models.MLP(4, hidden_size=8), naive(), optax.sgd(0.1),
              make_benchmark(), checkpoint_dir=folder)


def test_jaxcl_imports_and_runs_without_a_home_directory():
  # The default cache folder was expanded at import: `import jaxcl.training`
  # raised "Could not determine home directory".
  program = (
      "import os, pwd, warnings\n"
      "pwd.getpwuid = lambda uid: (_ for _ in ()).throw(KeyError(uid))\n"
      "import jaxcl, jaxcl.cli, jaxcl.training\n"
      "with warnings.catch_warnings(record=True) as caught:\n"
      "  warnings.simplefilter('always')\n"
      "  print(jaxcl.enable_compilation_cache())\n"
      "print(caught[0].message)\n")
  env = {k: v for k, v in os.environ.items() if k != "HOME"}
  out = subprocess.run([sys.executable, "-c", program], env=env, check=True,
                       capture_output=True, text=True).stdout.splitlines()
  assert out[-2] == "None"
  assert out[-1] == ("folder='~/.cache/jaxcl/xla' cannot hold the "
                     "compilation cache (RuntimeError: Could not determine "
                     "home directory.); programs are compiled without it.")
  # A log folder under ~ is refused like one that cannot be created.
  cli = subprocess.run(
      [sys.executable, "-c", program.split("import jaxcl")[0]
       + "import sys, jaxcl.cli\nsys.exit(jaxcl.cli.main(['run', "
       "'--logdir', '~/runs', '--no-progress', '--compilation-cache', '']))"],
      env=env, capture_output=True, text=True)
  assert cli.returncode == 2
  assert ("--logdir '~/runs' cannot be created: RuntimeError: Could not "
          "determine home directory.; expected a folder this process can "
          "write.") in cli.stderr


def test_remote_cache_folder_given_as_a_path_stays_remote(
    tmp_path, monkeypatch, restored_cache_config):
  # pathlib turns gs://bucket into gs:/bucket, which was taken for a local
  # folder under the working directory.
  monkeypatch.chdir(tmp_path)
  assert jaxcl.enable_compilation_cache(
      pathlib.Path("gs://bucket/xla")) == "gs://bucket/xla"
  assert not list(tmp_path.iterdir())



def test_cached_json_computes_once_per_key_and_survives_bad_entries(
    tmp_path, restored_cache_config):
  calls = []

  def compute(value):
    def run():
      calls.append(value)
      return {"flops": value}
    return run

  # Without a cache folder every call computes.
  jax.config.update("jax_compilation_cache_dir", None)
  cached_json("t", ["a"], compute(1.0))
  cached_json("t", ["a"], compute(1.0))
  assert calls == [1.0, 1.0]
  calls.clear()
  jaxcl.enable_compilation_cache(tmp_path / "xla")
  computed = cached_json("t", ["a"], compute(float("nan")))
  loaded = cached_json("t", ["a"], compute(2.0))
  assert len(calls) == 1
  # NaN (a backend without cost analysis) round-trips; 2.0 was not computed.
  assert computed["flops"] != computed["flops"] and loaded["flops"] != loaded["flops"]
  assert cached_json("t", ["b"], compute(3.0)) == {"flops": 3.0}
  assert len(calls) == 2
  entries = list((tmp_path / "xla" / "jaxcl_t").iterdir())
  assert len(entries) == 2 and all(e.suffix == ".json" for e in entries)
  # Readable by whoever shares the folder, as the umask allows.
  umask = os.umask(0)
  os.umask(umask)
  assert {e.stat().st_mode & 0o777 for e in entries} == {0o666 & ~umask}
  for entry in entries:
    entry.write_text("{truncated")
  assert cached_json("t", ["b"], compute(4.0)) == {"flops": 4.0}
  assert len(calls) == 3
  # Valid JSON of another form is refused by `check`, computed and rewritten.
  is_counts = lambda value: isinstance(value, dict) and "flops" in value
  for entry in entries:
    entry.write_text("null")
  assert cached_json("t", ["a"], compute(5.0), check=is_counts) == {
      "flops": 5.0}
  assert cached_json("t", ["a"], compute(6.0), check=is_counts) == {
      "flops": 5.0}
  assert len(calls) == 4
  # A key given as a function is built only where there is a cache folder.
  built = []
  jax.config.update("jax_compilation_cache_dir", None)
  cached_json("t", lambda: built.append(1) or ["a"], compute(7.0))
  assert not built


def test_cached_json_only_computes_where_it_cannot_write(tmp_path,
                                                        restored_cache_config):
  # The entries' folder is a file: writing, and removing the partial file,
  # fail with NotADirectoryError; the value is still returned.
  jaxcl.enable_compilation_cache(tmp_path / "xla")
  (tmp_path / "xla").mkdir(exist_ok=True)
  (tmp_path / "xla" / "jaxcl_t").write_text("a file, not a folder")
  assert cached_json("t", ["a"], lambda: {"flops": 5.0}) == {"flops": 5.0}
  # So does a cache folder under a file (set without enable's checks).
  (tmp_path / "file").write_text("")
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "file" / "x"))
  assert cached_json("t", ["a"], lambda: {"flops": 6.0}) == {"flops": 6.0}


def test_fit_loads_its_flop_counts_with_cached_programs(tmp_path, monkeypatch,
                                                        restored_cache_config):
  fit_module = importlib.import_module("jaxcl.training.fit")
  analysed = []
  analyse = fit_module._program_flops
  monkeypatch.setattr(fit_module, "_program_flops",
                      lambda *a, **k: analysed.append(1) or analyse(*a, **k))
  jaxcl.enable_compilation_cache(tmp_path / "xla")
  bench = make_benchmark()

  def run(hidden):
    return jaxcl.fit(jaxcl.models.MLP(4, hidden_size=hidden), naive(),
                     optax.sgd(0.1), bench, batch_size=4)

  first, second = run(8), run(8)
  assert analysed == [1]
  assert second.metrics["train_flops"] == first.metrics["train_flops"] > 0
  assert second.metrics["eval_flops"] == first.metrics["eval_flops"] > 0
  # Another program is analysed: a wider layer costs more per step.
  wider = run(16)
  assert analysed == [1, 1]
  assert wider.metrics["train_flops"] > first.metrics["train_flops"]


def test_fit_reanalyses_a_cached_flop_entry_of_another_form(
    tmp_path, restored_cache_config):
  # `null` in the entry raised a TypeError after experience 0 had trained.
  jaxcl.enable_compilation_cache(tmp_path / "xla")
  run = lambda: jaxcl.fit(jaxcl.models.MLP(4, hidden_size=8), naive(),
                          optax.sgd(0.1), make_benchmark(), batch_size=4)
  first = run()
  (entry,) = (tmp_path / "xla" / "jaxcl_flops").iterdir()
  entry.write_text("null")
  assert run().metrics["train_flops"] == first.metrics["train_flops"] > 0
  assert json.loads(entry.read_text())["train_flops"] == first.metrics[
      "train_flops"]


def test_runs_of_other_strategies_load_the_models_init_from_the_cache(
    tmp_path, restored_cache_config):
  # The model's initialisation is a program of its own, the same for every
  # strategy and optimizer: a run with another strategy and optimizer loads
  # it from the cache, and compiles the rest of its initial state anew.
  folder = tmp_path / "xla"
  jaxcl.enable_compilation_cache(folder)
  bench, model = make_benchmark(), jaxcl.models.MLP(4, hidden_size=8)

  def programs(name):
    return sorted(p.name for p in folder.iterdir()
                  if p.name.startswith(f"jit_{name}-"))

  jaxcl.fit(model, naive(), optax.sgd(0.1), bench, batch_size=4)
  models, states = programs("init_model"), programs("init_state")
  assert models and states
  jaxcl.fit(model, jaxcl.strategies.ewc(), optax.adam(0.01), bench,
            batch_size=4)
  assert programs("init_model") == models
  assert len(programs("init_state")) == 2 * len(states)


@pytest.mark.parametrize("online", [False, True], ids=["uneven", "online"])
def test_each_program_compiles_once_whatever_the_stream_length(
    online, restored_cache_config):
  # Counts the programs handed to XLA (compiled, or loaded from a cache,
  # which records the same event), not traces: a second compile of the
  # same program went unnoticed.
  jax.config.update("jax_compilation_cache_dir", None)
  compiled = []

  def listener(event, seconds, **kwargs):
    del seconds
    if event == "/jax/core/compile/backend_compile_duration":
      compiled.append(kwargs.get("fun_name"))

  def fit(n_experiences):
    bench = make_benchmark(n_classes=2 * n_experiences,
                           n_experiences=n_experiences,
                           sizes=[3, 17] * n_experiences)
    if online:
      bench = jaxcl.benchmarks.split_online(bench, 6)
    compiled.clear()
    jaxcl.fit(jaxcl.models.MLP(2 * n_experiences, hidden_size=8), naive(),
              optax.sgd(0.1), bench, epochs=2, batch_size=4)
    return collections.Counter(compiled)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    short = fit(2)  # Also compiles what any fit compiles once per process.
    long = fit(4)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  # Online, the experiences between two evaluations train as one block.
  train = "jit(train_block)" if online else "jit(train_experience)"
  assert long[train] == 1 and long["jit(evaluate)"] == 1
  assert max(long.values()) == 1, long
  assert sum(long.values()) <= sum(short.values()), (short, long)


@pytest.mark.parametrize("model", [
    jaxcl.models.MLP(num_classes=4, hidden_size=16),
    jaxcl.models.SimpleCNN(num_classes=4),
], ids=["mlp", "simple_cnn"])
def test_init_compiled_for_speed_builds_the_same_state(model,
                                                       optimized_compiles):
  """Init's compile-time options change no value by more than rounding.

  XLA's optimisation level 0 rounds a few initial weights differently from
  a default compile (by one unit in the last place of the layer's scale;
  docs/reproducibility.md); the older fusion emitters must add nothing.
  """
  fit_module = importlib.import_module("jaxcl.training.fit")
  images = np.random.default_rng(0).normal(size=(8, 12, 12, 3)).astype(np.float32)
  labels = np.arange(8) % 4
  benchmark = jaxcl.benchmarks.class_incremental(
      (images, labels), (images, labels), 2, fixed_class_order=range(4))
  ctx = jaxcl.training.make_context(model, benchmark, optax.sgd(0.1),
                                    batch_size=4)
  lowered = jax.jit(lambda key: jaxcl.training.init_state(
      ctx, naive(), optax.adam(0.1), key, images[:1],
      np.zeros(1, np.int32))).lower(jax.random.key(3))
  options = fit_module._init_compiler_options()
  if jax.default_backend() == "cpu":
    assert options["xla_cpu_use_fusion_emitters"] is False
  # The suite compiles with the older emitters (conftest.py): the default
  # and level 0 alone are asked for with the MLIR ones.
  default = ({"xla_cpu_use_fusion_emitters": True}
             if jax.default_backend() == "cpu" else {})
  level_0 = {**default, "xla_backend_optimization_level": 0}
  fast, default, only_level_0 = (
      jax.device_get(lowered.compile(compiler_options=opts or None)(
          jax.random.key(3))) for opts in (options, default, level_0))
  assert len(jax.tree.leaves(fast)) > 4
  chex.assert_trees_all_equal_structs(fast, default)
  def values(tree):
    return [jax.random.key_data(leaf) if jax.dtypes.issubdtype(
        leaf.dtype, jax.dtypes.prng_key) else leaf
            for leaf in jax.tree.leaves(tree)]
  for a, b, c in zip(*map(values, (fast, default, only_level_0))):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == c.tobytes()
    scale = np.abs(b).max(initial=0) if np.issubdtype(a.dtype, np.floating) else 0
    np.testing.assert_allclose(a, b, rtol=0, atol=np.spacing(scale))


def test_compile_drops_options_this_jaxlib_does_not_know():
  fit_module = importlib.import_module("jaxcl.training.fit")
  lowered = jax.jit(lambda x: x * 2).lower(np.arange(3.0))
  with pytest.raises(Exception, match="xla_cpu_no_such_option"):
    lowered.compile(compiler_options={"xla_cpu_no_such_option": False})
  compiled = fit_module._compile(lowered, {
      "xla_backend_optimization_level": 0, "xla_cpu_no_such_option": False,
      "xla_cpu_nor_this_one": 1})
  np.testing.assert_array_equal(compiled(np.arange(3.0)), [0.0, 2.0, 4.0])
  # A bad value of a known option is an error, not an option to drop.
  with pytest.raises(Exception, match="xla_backend_optimization_level"):
    fit_module._compile(lowered, {"xla_backend_optimization_level": "high"})
