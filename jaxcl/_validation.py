"""Argument checks shared by the public API: clear errors before any compile.

Every error names the argument, the value received and what was expected.
"""

from __future__ import annotations

import difflib
import errno
import functools
import inspect
import numbers
import os
import pathlib
from collections.abc import Callable, Iterable

import numpy as np

__all__ = [
    "check_bool",
    "check_choice",
    "check_finite",
    "check_float32_non_negative",
    "check_float32_positive",
    "check_in_range",
    "check_labels",
    "check_non_negative",
    "check_positive_int",
    "check_seed",
]


def check_bool(name: str, value) -> bool:
  """Returns ``value`` if it is a bool (NumPy's included), else raises: a
  truthy string such as ``"no"`` would switch the option on."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be True or False, got {value!r} of type "
                    f"{type(value).__name__}.")
  return bool(value)


def checks_bool_arguments(function: Callable) -> Callable:
  """Decorates ``function`` to refuse, before it runs, a non-bool given to
  any parameter annotated ``bool`` (a config's ``"False"`` is truthy)."""
  signature = inspect.signature(function)
  switches = [name for name, parameter in signature.parameters.items()
              if parameter.annotation in (bool, "bool")]

  @functools.wraps(function)
  def checked(*args, **kwargs):
    try:
      given = signature.bind(*args, **kwargs).arguments
    except TypeError:  # Python's own message names the function.
      return function(*args, **kwargs)
    for name in switches:
      if name in given:
        check_bool(name, given[name])
    return function(*args, **kwargs)
  return checked


def check_positive_int(name: str, value) -> int:
  """Returns ``value`` if it is an integer >= 1, else raises a clear error."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be a positive integer, got {value!r} "
                    f"of type {type(value).__name__}.")
  if value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}.")
  return int(value)


def check_non_negative_int(name: str, value) -> int:
  """Returns ``value`` if it is an integer >= 0, else raises a clear error."""
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
      or value < 0):
    raise ValueError(f"{name} must be a non-negative integer, got "
                     f"{value!r}.")
  return int(value)


def check_seed(name: str, value) -> int:
  """Returns ``value`` if it is an integer in ``[0, 2**32)``, else raises.

  JAX's and NumPy's generators both accept such seeds; None (a random seed)
  is refused, since the same seed must give the same numbers.
  """
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be an integer in [0, 2**32), got "
                    f"{value!r} of type {type(value).__name__}.")
  if not 0 <= value < 2**32:
    raise ValueError(f"{name} must be an integer in [0, 2**32), got {value}.")
  return int(value)


def check_non_negative(name: str, value) -> float:
  """Returns ``value`` as a float if it is a finite number >= 0."""
  return check_in_range(name, value, low=0.0)


def check_in_range(name: str, value, *, low: float | None = None,
                   high: float | None = None, low_inclusive: bool = True,
                   high_inclusive: bool = True) -> float:
  """Returns ``value`` as a float if it is a finite number within the bounds."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f"{name} must be a real number, got {value!r} of type "
                    f"{type(value).__name__}.")
  value = float(value)
  below = low is not None and (value < low if low_inclusive else value <= low)
  above = high is not None and (value > high if high_inclusive else value >= high)
  if not np.isfinite(value) or below or above:
    lo = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
    hi = "inf)" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
    raise ValueError(f"{name} must be in {lo}, {hi}, got {value!r}.")
  return value


def check_float32_positive(name: str, value) -> float:
  """A number > 0 that float32 (the type strategy states keep hyperparameters
  in) holds as a normal number: neither rounded to 0 nor to inf."""
  value = check_in_range(name, value, low=0.0, low_inclusive=False)
  return _check_float32_normal(name, value, "")


def check_float32_non_negative(name: str, value) -> float:
  """A number >= 0 that float32 holds: 0, or a normal float32 number (as
  :func:`check_float32_positive` checks)."""
  value = check_non_negative(name, value)
  if value == 0.0:
    return value
  return _check_float32_normal(name, value, "0 or ")


def _check_float32_normal(name: str, value: float, zero: str) -> float:
  """``value`` if float32 holds it as a normal number, else raises; the
  message's expectation starts with ``zero``."""
  low, high = (float(np.finfo(np.float32).tiny),
               float(np.finfo(np.float32).max))
  if not low <= value <= high:
    raise ValueError(f"{name}={value!r} is outside float32's range, in "
                     f"which jaxcl keeps it; expected {zero}a value between "
                     f"{low:.3g} and {high:.3g}.")
  return value


def check_choice(name: str, value, choices: Iterable[str]) -> str:
  """Returns ``value`` if it is one of ``choices``; suggests the closest one."""
  choices = sorted(choices)
  if value in choices:
    return value
  hint = difflib.get_close_matches(str(value), choices, n=1)
  did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
  raise ValueError(f"Unknown {name} {value!r}; expected one of "
                   f"{', '.join(choices)}.{did_you_mean}")


def check_finite(name: str, x: np.ndarray) -> None:
  """Raises if a floating-point array holds NaN or infinite values."""
  if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    raise ValueError(f"{name} contains {bad} NaN or infinite values; expected "
                     "finite inputs.")


def check_labels(name: str, values, *, integer_dtype: bool = True
                 ) -> np.ndarray:
  """``values`` as int32 labels if they are 1-D non-negative integers that
  fit int32; else raises (casting would truncate 0.9 to 0 or wrap 2**32+1
  to 1 silently). With ``integer_dtype=False``, floats holding whole
  numbers (``np.zeros(n)``) pass too."""
  labels = np.asarray(values)
  if labels.size == 0 and labels.ndim == 1:  # [] is float64 to NumPy.
    return labels.astype(np.int32)
  whole_floats = (not integer_dtype and np.issubdtype(labels.dtype, np.floating)
                  and np.all(np.isfinite(labels))
                  and np.array_equal(labels, np.round(labels)))
  if labels.dtype == bool or not (np.issubdtype(labels.dtype, np.integer)
                                  or whole_floats):
    kind = "dtype" if integer_dtype else "values of dtype"
    raise TypeError(f"{name} must be integers, got {kind} {labels.dtype}.")
  if labels.ndim != 1:
    raise ValueError(f"{name} must be a 1-D array, got shape {labels.shape}.")
  if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
    raise ValueError(f"{name} must be in [0, 2**31), got values from "
                     f"{labels.min()} to {labels.max()}.")
  return labels.astype(np.int32)


def folder_problem(folder: str | os.PathLike[str]) -> str | None:
  """Why no local folder can be at ``folder`` (``~`` expanded), or None.

  The folder need not exist; the nearest existing path at or above it
  must be a directory. A ``~`` that cannot be expanded (no home directory)
  is left to :func:`create_folder`, which says so.
  """
  try:
    path = pathlib.Path(folder).expanduser()
  except RuntimeError:
    return None
  for existing in (path, *path.parents):
    if existing.exists():
      if existing.is_dir():
        return None
      return ("is a file" if existing == path
              else f"is inside the file {str(existing)!r}")
  return None


class NotWritableError(PermissionError):
  """An existing folder this process cannot write in."""


def create_folder(folder: str | os.PathLike[str]) -> pathlib.Path:
  """Creates ``folder`` (``~`` expanded) if need be and checks that this
  process can write in it.

  Returns:
    The folder's path.

  Raises:
    OSError: It cannot be created, or (:class:`NotWritableError`) written.
    RuntimeError: ``~`` without a home directory.
  """
  path = pathlib.Path(folder).expanduser()
  path.mkdir(parents=True, exist_ok=True)
  # mkdir accepts an existing folder that this process cannot write in.
  if not os.access(path, os.W_OK | os.X_OK):
    raise NotWritableError(errno.EACCES, os.strerror(errno.EACCES), str(path))
  return path


def error_reason(error: Exception) -> str:
  """``<type>: <reason>`` of an error from :func:`create_folder`."""
  kind = ("PermissionError" if isinstance(error, NotWritableError)
          else type(error).__name__)
  return f"{kind}: {getattr(error, 'strerror', None) or error}"


def expanded_folder(name: str,
                    folder: str | os.PathLike[str]) -> pathlib.Path:
  """``folder`` with ``~`` expanded; a ``ValueError`` naming ``name`` when
  there is no home directory to expand it to."""
  try:
    return pathlib.Path(folder).expanduser()
  except RuntimeError as error:
    raise ValueError(f"{name} {os.fspath(folder)!r} cannot be created: "
                     f"{error_reason(error)}; expected a folder this "
                     "process can write.") from error


def make_folder(name: str, folder: str | os.PathLike[str]) -> None:
  """Creates ``folder`` now, so that one that cannot be made stops a run
  before it compiles and trains, not at its first write."""
  try:
    create_folder(folder)
  except (OSError, RuntimeError) as error:
    verb = "written" if isinstance(error, NotWritableError) else "created"
    raise ValueError(f"{name} {os.fspath(folder)!r} cannot be {verb}: "
                     f"{error_reason(error)}; expected a folder this "
                     "process can write.") from error
