"""System metrics: peak host and device memory, FLOPs of compiled programs,
disk usage.

Example:
  >>> import jax, jax.numpy as jnp
  >>> lowered = jax.jit(jnp.dot).lower(jnp.ones((4, 8)), jnp.ones((8, 16)))
  >>> flops(lowered)  # 2 * 4 * 8 * 16
  1024.0
  >>> peak_host_memory_mb() > 0
  True
"""

from __future__ import annotations

import os
import resource
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core

__all__ = [
    "DiskUsage",
    "disk_usage_kb",
    "matmul_peak_flops",
    "flops",
    "named_call",
    "named_call_flops",
    "named_call_flops_setting",
    "peak_device_memory_mb",
    "peak_host_memory_mb",
]

_MB = 2.0**20


def matmul_peak_flops(n: int = 2048, chain: int = 1, repeats: int = 5) -> float:
  """Best measured float32 FLOP/s of ``n x n`` matmuls on the default device.

  The scale against which benchmarks report achieved FLOP/s.

  Args:
    n: Matrix size.
    chain: Matmuls per timed call (``a @ a @ ...``; more amortises dispatch).
    repeats: Timed calls; the fastest counts.

  Example:
    >>> matmul_peak_flops(n=64, repeats=1) > 0
    True
  """
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32) / n

  def product(a):
    out = a
    for _ in range(chain):
      out = out @ a
    return out

  f = jax.jit(product)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return chain * 2 * n**3 / best


def peak_host_memory_mb() -> float:
  """Peak resident memory of this process so far, in MB (2**20 bytes).

  ``getrusage``'s ``ru_maxrss``: the high-water mark over the process's life
  (it cannot be reset), so with several runs in one process it is the peak
  of all of them. Avalanche's ``MaxRAMUsage`` samples the resident size in a
  thread instead; both report MB of 2**20 bytes.

  Example:
    >>> peak_host_memory_mb() > 0
    True
  """
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  # Linux reports KiB, macOS bytes.
  return peak / (_MB if sys.platform == "darwin" else 1024.0)


def _path_list(paths) -> list[str]:
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  return [os.path.abspath(os.path.expanduser(os.fspath(p))) for p in paths]


def _tree_size(path: str, skipped: list[str]) -> int:
  """Bytes of the regular files under ``path`` (the file itself when it is
  one); what cannot be read is appended to ``skipped``."""
  def size(name):
    try:
      return 0 if os.path.islink(name) else os.path.getsize(name)
    except FileNotFoundError:  # Removed while walking (a checkpoint).
      return 0
    except OSError:
      skipped.append(name)
      return 0

  def unreadable(error: OSError):
    if not isinstance(error, FileNotFoundError):  # A path not made yet.
      skipped.append(error.filename)

  if os.path.isfile(path):
    return size(path)
  return sum(size(os.path.join(root, name))
             for root, _, names in os.walk(path, onerror=unreadable)
             for name in names)


def disk_usage_kb(paths: str | os.PathLike[str]
                  | Sequence[str | os.PathLike[str]]) -> float:
  """Total size of the files under ``paths``, in KB (1024 bytes).

  Avalanche's ``DiskUsage``: every regular file below each path counts its
  size (a file under two paths counts twice); links below a path are not
  followed, while a path that is itself a link to a folder is walked. A
  path that is a file counts its own size (Avalanche's walk counts 0). A
  path that does not exist counts 0 (a folder the run creates later), as
  do a file removed while the folder is walked (a checkpoint being
  replaced) and what cannot be read (a warning names it).

  Args:
    paths: A path or a list of paths (``~`` is expanded).

  Example:
    >>> import tempfile, pathlib
    >>> folder = tempfile.mkdtemp()
    >>> _ = (pathlib.Path(folder) / "a.bin").write_bytes(bytes(2048))
    >>> disk_usage_kb(folder)
    2.0
  """
  skipped: list[str] = []
  total = sum(_tree_size(path, skipped) for path in _path_list(paths))
  if skipped:
    warnings.warn(f"disk_usage_kb could not read {len(skipped)} files or "
                  f"folders (counted as 0), e.g. {skipped[0]!r}.",
                  stacklevel=2)
  return total / 1024.0


class DiskUsage:
  """Measures the same paths again and again (a run's ``disk_usage``).

  The paths are resolved once, when it is built (``~`` expanded, relative
  paths against the working directory then; no path: the working
  directory), so a later change of directory does not move them.

  Example:
    >>> import tempfile
    >>> usage = DiskUsage([tempfile.mkdtemp()])
    >>> usage(), usage.never_found()
    (0.0, [])
  """

  def __init__(self, paths: Sequence[str | os.PathLike[str]] | None = None):
    self.paths = _path_list(paths or [os.getcwd()])
    self._found: set[str] = set()

  def __call__(self) -> float:
    """The size of the files under the paths now, in KB."""
    self._found.update(p for p in self.paths if os.path.exists(p))
    return disk_usage_kb(self.paths)

  def never_found(self) -> list[str]:
    """The paths that did not exist at any measurement."""
    return [p for p in self.paths if p not in self._found]


def peak_device_memory_mb(
    devices: Sequence[jax.Device] | None = None) -> float | None:
  """Peak memory in use on the busiest device so far, in MB (2**20 bytes).

  The runtime's ``memory_stats()["peak_bytes_in_use"]`` (GPU, TPU), as
  Avalanche's ``MaxGPU<n>Usage`` reports per GPU; the maximum over
  ``devices``.

  Args:
    devices: Devices to look at (default: the local devices).

  Returns:
    The peak in MB, or None where the platform does not report it (CPU).

  Example:
    >>> peak = peak_device_memory_mb()  # None on CPU
  """
  peaks = []
  for device in jax.local_devices() if devices is None else devices:
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      peaks.append(stats["peak_bytes_in_use"] / _MB)
  return max(peaks) if peaks else None


def flops(stage: Any) -> float | None:
  """Floating-point operations of a lowered or compiled JAX program.

  XLA's cost analysis (``stage.cost_analysis()["flops"]``). XLA counts the
  body of a loop (``lax.scan``, ``fori_loop``, ``while_loop``) once, not
  once per iteration: lower the function of one step (or one sample) to get
  per-step (per-sample) FLOPs. On the CPU a ``jax.stages.Lowered`` is
  analysed without compiling (on an MLP's naive step its count is within
  0.1% of the compiled one, on EWC's and SI's about 2 % below, as XLA's
  optimised program counts some elementwise work differently); backends that analyse only compiled programs (GPUs, through
  their PJRT plugin) compile it.

  Args:
    stage: A ``jax.stages.Lowered`` or ``jax.stages.Compiled``.

  Returns:
    The FLOPs, or None where the backend gives no cost analysis.

  Example:
    >>> f = jax.jit(lambda w, x: x @ w)
    >>> flops(f.lower(jax.numpy.ones((3, 5)), jax.numpy.ones((2, 3))))
    60.0
  """
  cost = _cost(stage)
  if not cost and isinstance(stage, jax.stages.Lowered):
    cost = _cost(stage.compile())
  if cost is None:
    return None
  # An analysis without a "flops" entry counted none (a copy, say).
  return float(cost.get("flops", 0.0))


def _cost(stage: Any) -> dict[str, float] | None:
  cost = stage.cost_analysis()
  if isinstance(cost, (list, tuple)):  # One entry per program in older JAX.
    cost = cost[0] if cost else None
  return cost


def named_call(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
  """``fn`` as a nested ``jax.jit`` call that :func:`named_call_flops` finds.

  Inside a jitted program the call is a ``jit`` equation named ``name`` in
  the jaxpr; XLA inlines it, so the compiled program is unchanged. Use a
  name no other function of the program has.

  Args:
    fn: The function whose FLOPs are wanted (positional arguments only).
    name: Its name in the program's jaxpr.

  Returns:
    The jitted function.
  """
  def call(*args):
    return fn(*args)
  call.__name__ = call.__qualname__ = name
  return jax.jit(call)


def _named_calls(jaxpr: Any, name: str) -> Iterator[Any]:
  """The ``jit`` equations named ``name``, at any depth of ``jaxpr``."""
  for eqn in jaxpr.eqns:
    if eqn.params.get("name") == name and "jaxpr" in eqn.params:
      yield eqn
      continue
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jax_core.ClosedJaxpr):
          yield from _named_calls(sub.jaxpr, name)
        elif isinstance(sub, jax_core.Jaxpr):
          yield from _named_calls(sub, name)


def named_call_flops(jaxpr: jax_core.ClosedJaxpr, name: str
                     ) -> tuple[float, tuple[Any, ...]] | None:
  """FLOPs of one execution of the :func:`named_call` ``name`` in a program.

  The call is found at any depth (inside scans, conditionals, ``vmap`` and
  ``shard_map``), lowered on its own from the jaxpr (so no Python function
  is traced again) and analysed by XLA. This gives, e.g., per-step FLOPs of
  a program that runs its steps in a scan, which :func:`flops` of the whole
  program cannot (XLA counts a loop body once).

  Args:
    jaxpr: The program, e.g. ``jax.jit(f).trace(*args).jaxpr``.
    name: The name given to :func:`named_call`.

  Returns:
    ``(flops, input avals)`` of the call (the avals give its batch shapes,
    after ``vmap``, per device inside ``shard_map``), or None if the program
    holds no such call, or more than one, or the backend has no cost
    analysis.

  Example:
    >>> import jax.numpy as jnp
    >>> w = jnp.ones((5, 7))
    >>> step = named_call(lambda b: b @ w, "step")
    >>> def f(xs):  # xs: [epochs=3, steps=4, batch=2, 5]
    ...   steps = lambda x: jax.lax.scan(lambda c, b: (c, step(b)), 0.0, x)[1]
    ...   return jax.lax.scan(lambda c, x: (c, steps(x)), 0.0, xs)[1]
    >>> traced = jax.jit(f).trace(jnp.ones((3, 4, 2, 5)))
    >>> count, avals = named_call_flops(traced.jaxpr, "step")
    >>> count, avals[0].shape  # 2 * 2 * 5 * 7
    (140.0, (2, 5))
  """
  found = list(_named_calls(jaxpr.jaxpr, name))
  if len(found) != 1:
    return None
  body = found[0].params["jaxpr"]
  avals = tuple(v.aval for v in body.jaxpr.invars)
  count = flops(_lowered_for_analysis(jax_core.jaxpr_as_fun(body), avals))
  return None if count is None else (count, avals)


def _analysis_cpu() -> jax.Device | None:
  """The CPU device programs are lowered on for analysis, or None."""
  try:
    return jax.local_devices(backend="cpu")[0]
  except RuntimeError:  # JAX_PLATFORMS leaves the CPU out.
    return None


def named_call_flops_setting() -> tuple[str, str]:
  """What :func:`named_call_flops` counts with besides the program: the
  platform lowered for (a CPU when there is one, else the default backend,
  whose compiled program XLA analyses) and ``XLA_FLAGS``, which a compiled
  program's count may depend on. Part of a cached count's key."""
  cpu = _analysis_cpu()
  return (cpu.platform if cpu is not None else jax.default_backend(),
          os.environ.get("XLA_FLAGS", ""))


def _lowered_for_analysis(fn: Callable[..., Any],
                          avals: Sequence[Any]) -> jax.stages.Lowered:
  """``fn`` lowered for the CPU where possible: XLA analyses that lowering
  without compiling (a GPU's only after compiling), and counts the same on
  every machine."""
  def lower(device):
    sharding = None if device is None else jax.sharding.SingleDeviceSharding(
        device)
    return jax.jit(fn).lower(*(
        jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding,
                             weak_type=getattr(a, "weak_type", False))
        for a in avals))

  cpu = _analysis_cpu()
  if cpu is None:
    return lower(None)
  try:
    return lower(cpu)
  except Exception:  # pylint: disable=broad-except
    # An operation with no CPU lowering (a GPU-only kernel): the default
    # backend's lowering, which flops() compiles if it must.
    return lower(None)
