"""jaxcl.enable_compilation_cache: a second process loads, not compiles."""

import json
import subprocess
import sys

import jax
import pytest

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
