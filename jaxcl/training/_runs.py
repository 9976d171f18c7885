"""Conditionals that skip work for every vmapped run at once.

Under ``jax.vmap`` a ``lax.cond`` whose predicate differs between runs turns
into a select that computes both branches for every run, at every call. With
the runs' axis named (``jax.vmap(..., axis_name=RUN_AXIS)``), :func:`cond`
decides once for all runs: it takes ``true_fn`` if any run's predicate holds,
and each run keeps that branch's result only where its own predicate holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# The axis name fit gives its vmap over runs (seeds, swept values).
RUN_AXIS = "runs"


def check_run_axis(run_axis: Any) -> str | None:
  """``run_axis`` if it is None or a non-empty string, else a clear error."""
  if run_axis is not None and (not isinstance(run_axis, str) or not run_axis):
    raise ValueError(f"run_axis must be the axis_name of the jax.vmap over "
                     f"runs (a non-empty string, e.g. {RUN_AXIS!r}) or None, "
                     f"got {run_axis!r}.")
  return run_axis


def cond(pred: jax.Array, true_fn: Callable[..., Any],
         false_fn: Callable[..., Any], *operands: Any,
         run_axis: str | None = None) -> Any:
  """``lax.cond(pred, true_fn, false_fn, *operands)``, decided across runs.

  Args:
    pred: A scalar bool (per run under ``vmap``).
    true_fn: The branch run where ``pred`` holds.
    false_fn: The branch run elsewhere (and by every run when no run's
      ``pred`` holds); both branches return the same structure.
    *operands: Passed to the branch.
    run_axis: The name of the ``vmap`` axis of runs this is traced under, or
      None (not vmapped over runs: a plain ``lax.cond``).

  Returns:
    Each run's branch result.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> twice = lambda x: jax.vmap(
    ...     lambda p, x: cond(p, lambda x: 2 * x, lambda x: x, x,
    ...                       run_axis=RUN_AXIS), axis_name=RUN_AXIS)(
    ...     jnp.array([True, False]), x)
    >>> twice(jnp.array([1.0, 1.0]))
    Array([2., 1.], dtype=float32)
  """
  if run_axis is None:
    return jax.lax.cond(pred, true_fn, false_fn, *operands)

  def per_run(*operands):
    return jax.tree.map(lambda taken, skipped: jax.lax.select_n(
        pred, skipped, taken), true_fn(*operands), false_fn(*operands))

  # A psum over the vmapped axis is the same for every run: the condition
  # stays a cond instead of becoming a select.
  pred = jnp.asarray(pred, bool)
  try:
    anyone = jax.lax.psum(pred.astype(jnp.int32), run_axis) > 0
  except NameError as e:  # JAX's unbound axis name.
    raise ValueError(
        f"run_axis={run_axis!r} names no axis this is traced under; expected "
        f"the axis_name of the jax.vmap over runs (jax.vmap(..., "
        f"axis_name={run_axis!r})), or run_axis=None without one.") from e
  return jax.lax.cond(anyone, per_run, false_fn, *operands)
