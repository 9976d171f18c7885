"""jaxcl.enable_compilation_cache: a second process loads, not compiles."""

import json
import os
import subprocess
import sys

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

import jaxcl

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
  with pytest.raises(ValueError, match=r"folder=.*cache.* is an existing file"):
    jaxcl.enable_compilation_cache(file)
  assert jax.config.jax_compilation_cache_dir == before

