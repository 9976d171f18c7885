"""Plain-text formatting of metrics, shared by the text writers and the CLI."""

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "format_value",
    "format_swept_value",
    "format_scalars",
    "format_accuracy_matrix",
    "format_metrics_table",
    "as_matrix",
    "evaluated_rows",
    "json_safe",
]


def json_safe(value: Any) -> Any:
    """numpy (and JAX) values made JSON-serialisable; NaN and infinities
    become null.

    Example:
        >>> json_safe({"a": np.array([1.0, np.nan]), "b": np.int64(2),
        ...            "c": np.bool_(True)})
        {'a': [1.0, None], 'b': 2, 'c': True}
    """
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray) or (
            hasattr(value, "__array__") and not isinstance(value, np.generic)):
        # A JAX array too (device values reach results through user code).
        return json_safe(np.asarray(value).tolist())
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def format_value(value: ArrayLike) -> str:
    """Formats one scalar: integers as is, floats with 4 decimals.

    Floats too small or too large for 4 decimals use scientific notation.

    Example:
        >>> format_value(0.912), format_value(3), format_value(2.5e-5)
        ('0.9120', '3', '2.5000e-05')
    """
    value = np.asarray(value).item()
    if isinstance(value, int):  # Includes bool.
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        return f"{value:.4f}"
    return f"{value:.4e}"


def format_swept_value(value: Any) -> str:
    """Names a swept value in scalar names and file names, exactly.

    Integers as they are, other numbers by their shortest exact text
    (`repr`), so that two distinct values never share a name (`%g` keeps 6
    digits: 1234567 and 1234568 would both be `1.23457e+06`).

    Example:
        >>> format_swept_value(0.01), format_swept_value(5), format_swept_value(1e-05)
        ('0.01', '5', '1e-05')
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return repr(float(value))
    return str(value)


def format_scalars(step: int, scalars: Mapping[str, ArrayLike]) -> str:
    """Formats one `write_scalars` call as a single human-readable line.

    Example:
        >>> format_scalars(3, {"eval/stream/accuracy": 0.912, "eval/stream/loss": 0.3})
        'step 3 | eval/stream/accuracy 0.9120 | eval/stream/loss 0.3000'
    """
    fields = [f"{name} {format_value(value)}" for name, value in scalars.items()]
    return " | ".join([f"step {step}", *fields])


def as_matrix(matrix: ArrayLike, name: str = "matrix") -> np.ndarray:
    """Returns `matrix` as a 2-D float array, or raises `ValueError`.

    Example:
        >>> as_matrix([[1, 0], [0, 1]]).dtype
        dtype('float64')
    """
    array = np.asarray(matrix, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got {name}.shape={array.shape}.")
    return array


def evaluated_rows(matrix: np.ndarray) -> np.ndarray:
    """Indices of the rows of an accuracy matrix that hold a value.

    A row is all NaN when nothing was evaluated after that experience (an
    online stream's mini-experiences between two evaluations, or
    ``eval_every > 1``). When no row holds a value, all rows are returned.

    Example:
        >>> nan = float("nan")
        >>> evaluated_rows(np.array([[nan, nan], [0.8, nan], [nan, nan], [0.7, 0.9]]))
        array([1, 3])
    """
    rows = np.flatnonzero(~np.isnan(matrix).all(axis=1))
    return rows if rows.size else np.arange(len(matrix))


def format_accuracy_matrix(matrix: ArrayLike) -> str:
    """Formats an accuracy matrix as an aligned text table.

    Row `i` holds the accuracy on every experience after training on
    experience `i`; column `j` is the experience evaluated. Values have 4
    decimals; NaN (not evaluated) is shown as "-". Rows without any value
    (no evaluation after that experience, see `evaluated_rows`) are left out.

    Args:
        matrix: Array of shape [num_trained, num_evaluated].

    Returns:
        The table, one line per shown row plus a header line, without a
        trailing newline.

    Example:
        >>> nan = float("nan")
        >>> print(format_accuracy_matrix([[0.9, nan], [nan, nan], [0.8, 0.95]]))
                      exp 0   exp 1
        after exp 0  0.9000       -
        after exp 2  0.8000  0.9500
    """
    matrix = as_matrix(matrix, "matrix")
    rows = evaluated_rows(matrix)
    cells = [[("-" if np.isnan(v) else f"{v:.4f}") for v in matrix[i]] for i in rows]
    header = [f"exp {j}" for j in range(matrix.shape[1])]
    labels = [f"after exp {i}" for i in rows]
    label_width = max(map(len, labels), default=0)
    cell_width = max(map(len, header + [c for row in cells for c in row]), default=0)

    def line(label: str, row: Sequence[str]) -> str:
        return "  ".join([label.ljust(label_width), *(c.rjust(cell_width) for c in row)])

    return "\n".join(
        [line("", header)] + [line(label, row) for label, row in zip(labels, cells, strict=True)]
    )


def _format_entry(value: float | None | Sequence[float]) -> str:
    # NaN marks a metric that is undefined or that the platform cannot report.
    if value is None or (np.ndim(value) == 0 and np.isnan(float(value))):
        return "n/a"
    if np.ndim(value) == 0:
        return format_value(value)
    mean, std = float(value[0]), float(value[1])
    if np.isnan(mean):
        return "n/a"
    # Both in the mean's notation: 3 decimals, or 3 significant digits for
    # means too small or too large for them.
    spec = ".3f" if mean == 0 or 1e-3 <= abs(mean) < 1e6 else ".3e"
    if np.isnan(std):  # One run with a value: no spread to show.
        return f"{mean:{spec}} ± n/a"
    return f"{mean:{spec}} ± {std:{spec}}"


def format_metrics_table(metrics: Mapping[str, float | None | Sequence[float]]) -> str:
    """Formats named results as two aligned columns.

    Args:
        metrics: Metric name to value: a number, `None` (shown as "n/a", e.g.
            forgetting after a single experience), or a `(mean, std)` pair
            (e.g. over seeds), shown as "0.912 ± 0.010".

    Returns:
        One line per metric, names left-aligned and values right-aligned,
        without a trailing newline.

    Example:
        >>> print(format_metrics_table({"accuracy": (0.912, 0.01), "forgetting": None}))
        accuracy    0.912 ± 0.010
        forgetting            n/a
    """
    entries = {name: _format_entry(value) for name, value in metrics.items()}
    name_width = max(map(len, entries), default=0)
    value_width = max(map(len, entries.values()), default=0)
    return "\n".join(
        f"{name.ljust(name_width)}  {entry.rjust(value_width)}" for name, entry in entries.items()
    )
