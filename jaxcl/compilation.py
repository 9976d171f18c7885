"""JAX's persistent compilation cache, set up the way jaxcl's runs use it.

XLA's compile is most of a short run's wall time on a CPU (seconds against
a second of training for the bundled benchmarks). With the persistent cache
a process that builds programs it built before loads them from disk instead;
only tracing and lowering remain (see docs/performance.md for the numbers).
`jaxcl run` enables the cache by default (``--compilation-cache``).

Numbers derived from a compiled program, such as its FLOP count, are kept in
the same folder (:func:`cached_json`), so a process that loads its programs
from the cache does not analyse them again either.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["DEFAULT_CACHE_DIR", "cached_json", "enable_compilation_cache"]

# Expanded when used: a process without a home directory can still import
# jaxcl (and run without the cache).
DEFAULT_CACHE_DIR = "~/.cache/jaxcl/xla"


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
    folder: Cache directory. A local one is created here and made absolute
      (a later ``os.chdir`` does not move the cache); a URL such as
      ``gs://bucket/xla`` (also as a ``pathlib.Path``) is used as given.
      ``None`` or ``""`` leaves JAX's configuration untouched.

  Returns:
    The cache location now in use, or ``None`` when ``folder`` is empty or
    cannot be created or written (``~`` without a home directory too; then
    with a ``RuntimeWarning``, and JAX's configuration untouched).

  Raises:
    ValueError: If ``folder`` is a file or lies inside one.

  Example:
    >>> enable_compilation_cache("/tmp/jaxcl_example/xla")
    '/tmp/jaxcl_example/xla'
  """
  if folder is None or os.fspath(folder) == "":
    return None
  # Imported here, so that the CLI's parser can read the default cheaply.
  import jax
  from jax.experimental.compilation_cache import compilation_cache

  from jaxcl import _validation
  from jaxcl.loggers.base import is_remote_path

  location = os.fspath(folder)
  if is_remote_path(location):
    # pathlib collapses gs://bucket to gs:/bucket.
    location = re.sub(r"^([^:/]+):/+", r"\1://", location)
  else:
    problem = _validation.folder_problem(location)
    if problem:
      raise ValueError(f"folder must be a directory for the compilation "
                       f"cache, but folder={location!r} {problem}.")
    try:  # JAX would warn at every compile that it cannot write there.
      path = _validation.create_folder(location)
    except (OSError, RuntimeError) as error:
      # A read-only or missing home (a container, a cluster node) costs the
      # caching, not the run.
      current = jax.config.jax_compilation_cache_dir
      warnings.warn(
          f"folder={location!r} cannot hold the compilation cache "
          f"({_validation.error_reason(error)}); "
          + (f"the cache stays at {current!r}." if current else
             "programs are compiled without it."),
          RuntimeWarning, stacklevel=2)
      return None
    location = str(path.absolute())
  if jax.config.jax_compilation_cache_dir != location:
    compilation_cache.reset_cache()
  jax.config.update("jax_compilation_cache_dir", location)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return location


def cached_json(kind: str, key: Sequence[Any] | Callable[[], Sequence[Any]],
                compute: Callable[[], Any],
                check: Callable[[Any], bool] | None = None) -> Any:
  """``compute()``, remembered in the compilation cache folder under ``key``.

  For values that are a function of programs the persistent cache holds
  (put the programs' text, e.g. ``lowered.as_text()``, in ``key``): a
  process that loads those programs from the cache loads the value too. The
  value is stored as JSON in ``<cache folder>/jaxcl_<kind>/<sha256 of
  key>.json``, written atomically with the umask's permissions (the folder
  may be shared); a missing or unreadable entry, or one ``check`` refuses,
  is computed again and rewritten, and a folder that cannot be written only
  costs the caching. Without a local cache folder (none enabled, or a URL),
  this is ``compute()``.

  Args:
    kind: Name of the value, one subfolder per kind.
    key: Everything the value depends on, or a function returning it (called
      only when there is a cache folder: a key can cost more to build than
      the value). Each item's ``str`` is hashed, along with the jax and
      jaxlib versions and the default backend's platform version and device
      kind.
    compute: Computes the value (JSON-serialisable; NaN allowed).
    check: Whether a loaded value has the form ``compute`` gives (default:
      any JSON value does).

  Returns:
    The value, computed or loaded.

  Example:
    >>> enable_compilation_cache("/tmp/jaxcl_example/xla")
    '/tmp/jaxcl_example/xla'
    >>> cached_json("example", ["program text"], lambda: {"flops": 2.0},
    ...             check=lambda value: isinstance(value, dict))
    {'flops': 2.0}
  """
  import jax
  import jaxlib.version

  from jaxcl.loggers.base import is_remote_path

  location = jax.config.jax_compilation_cache_dir
  if not location or is_remote_path(location):
    return compute()
  if callable(key):
    key = key()
  device = jax.devices()[0]
  digest = hashlib.sha256()
  for item in (jax.__version__, jaxlib.version.__version__,
               device.client.platform_version, device.device_kind, *key):
    digest.update(str(item).encode())
    digest.update(b"\0")
  path = pathlib.Path(location) / f"jaxcl_{kind}" / f"{digest.hexdigest()}.json"
  try:
    value = json.loads(path.read_text())
    if check is None or check(value):
      return value
  except (OSError, ValueError):
    pass
  value = compute()
  text = json.dumps(value)
  # A name of this thread's own, created with the umask's permissions (the
  # folder may be shared), then renamed into place: readers see whole files.
  partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666),
              "w") as file:
      file.write(text)
    os.replace(partial, path)
  except OSError:
    # A read-only folder refuses even the removal of a missing file, and a
    # path through a file fails on every call: neither may end the run.
    with contextlib.suppress(OSError):
      partial.unlink()
  return value
