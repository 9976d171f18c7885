"""JAX's persistent compilation cache, set up the way jaxcl's runs use it.

XLA's compile is most of a short run's wall time on a CPU (seconds against
a second of training for the bundled benchmarks). With the persistent cache
a process that builds programs it built before loads them from disk instead;
only tracing and lowering remain (see docs/performance.md for the numbers).
`jaxcl run` enables the cache by default (``--compilation-cache``).
"""

from __future__ import annotations

import os
import pathlib

__all__ = ["DEFAULT_CACHE_DIR", "enable_compilation_cache"]

DEFAULT_CACHE_DIR = pathlib.Path("~/.cache/jaxcl/xla").expanduser()


def enable_compilation_cache(
    folder: str | os.PathLike[str] | None = DEFAULT_CACHE_DIR) -> str | None:
  """Stores every compiled program of this process in ``folder``.

  Sets JAX's ``jax_compilation_cache_dir`` and caches programs of any compile
  time and size (JAX's defaults skip programs that compile in under a second,
  which are most of jaxcl's on an accelerator). A cached program is only
  reused for the same program, shapes, jax/jaxlib version, device kind and
  compiler options, so results do not change (tested bit for bit on CPU,
  docs/reproducibility.md). Call it again to switch folders: JAX opens its
  cache at the first compile, so a new folder resets that.

  Args:
    folder: Cache directory, created by JAX when first written. A local path
      is made absolute (a later ``os.chdir`` does not move the cache); a URL
      such as ``gs://bucket/xla`` is used as given. ``None`` or ``""``
      leaves JAX's configuration untouched.

  Returns:
    The cache location now in use, or ``None`` when ``folder`` is empty.

  Raises:
    ValueError: If ``folder`` exists and is not a directory.

  Example:
    >>> enable_compilation_cache("/tmp/jaxcl_example/xla")
    '/tmp/jaxcl_example/xla'
  """
  if folder is None or os.fspath(folder) == "":
    return None
  # Imported here, so that the CLI's parser can read the default cheaply.
  import jax
  from jax.experimental.compilation_cache import compilation_cache

  location = os.fspath(folder)
  if "://" not in location:
    path = pathlib.Path(location).expanduser()
    if path.exists() and not path.is_dir():
      raise ValueError(
          f"folder must be a directory for the compilation cache, but "
          f"folder={location!r} is an existing file.")
    location = str(path.absolute())
  if jax.config.jax_compilation_cache_dir != location:
    compilation_cache.reset_cache()
  jax.config.update("jax_compilation_cache_dir", location)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return location
