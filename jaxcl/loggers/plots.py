"""Result plots rendered to RGB arrays, for TensorBoard and PNG files.

Matplotlib is imported inside the functions, so importing this module stays
cheap. Figures are drawn on their own Agg canvas, without `pyplot`, so the
global backend (e.g. a notebook's inline backend) is left untouched.
"""

import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from jaxcl.loggers.base import MetricWriter, is_remote_path
from jaxcl.loggers.formatting import as_matrix, evaluated_rows

__all__ = [
    "plot_accuracy_matrix",
    "plot_accuracy_curves",
    "plot_confusion_matrix",
    "save_png",
    "write_result_images",
]

# Heatmaps larger than this per side get no value annotations and only a few
# labelled ticks: a label per cell would not be readable.
_MAX_LABELLED_SIDE = 20

# Accuracy curves for more test experiences than this get no legend: it would
# crowd out the plot (with 100 lines it leaves the axes no room at all).
_MAX_LEGEND_LINES = 20


def _new_axes(width: float, height: float) -> tuple[Any, Any]:
    """Returns a (figure, axes) pair drawn by its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _render(figure: Any) -> np.ndarray:
    """Draws `figure` and returns it as a uint8 array of shape [H, W, 3]."""
    figure.canvas.draw()
    return np.array(figure.canvas.buffer_rgba())[..., :3]


def _tick_label(
    labels: Sequence[str], position: float, _: int | None
) -> str:
    """Names tick `position` by `labels`; ticks outside the cells get none."""
    index = round(position)
    return labels[index] if 0 <= index < len(labels) else ""


def _heatmap(
    values: np.ndarray,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    xticklabels: Sequence[str],
    yticklabels: Sequence[str],
    vmax: float,
    fmt: str,
) -> np.ndarray:
    """Renders `values` as an annotated heatmap on [0, vmax]; NaN cells are grey."""
    import functools

    import matplotlib
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    side = max(values.shape)
    size = min(12.0, 3.0 + 0.45 * side)
    figure, axes = _new_axes(size + 1.0, size)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = axes.imshow(values, cmap=cmap, vmin=0.0, vmax=vmax)
    figure.colorbar(image, ax=axes, shrink=0.8)
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    rotation = 90 if max(map(len, xticklabels), default=0) > 3 else 0
    if side <= _MAX_LABELLED_SIDE:
        axes.set_xticks(range(values.shape[1]), xticklabels, rotation=rotation)
        axes.set_yticks(range(values.shape[0]), yticklabels)
        for (i, j), value in np.ndenumerate(values):
            if not np.isnan(value):
                color = "white" if value < vmax / 2 else "black"
                axes.text(j, i, format(value, fmt), ha="center", va="center", color=color)
    else:
        # Matplotlib picks the positions, but they must still be named by the
        # labels: rows left out of an accuracy matrix make a row's position
        # differ from its experience index.
        for axis, labels in (
            (axes.xaxis, xticklabels),
            (axes.yaxis, yticklabels),
        ):
            axis.set_major_locator(MaxNLocator(integer=True))
            formatter = functools.partial(_tick_label, list(labels))
            axis.set_major_formatter(FuncFormatter(formatter))
        axes.tick_params(axis="x", labelrotation=rotation)
    return _render(figure)


def plot_accuracy_matrix(matrix: ArrayLike) -> np.ndarray:
    """Plots an accuracy matrix as a heatmap with the values written in.

    Args:
        matrix: Array of shape [num_trained, num_evaluated] with values in
            [0, 1]; row `i` is after training on experience `i`, column `j` the
            experience evaluated. NaN cells (not evaluated) are left blank;
            rows without any value (no evaluation after that experience) are
            left out, the others keep their experience index.

    Returns:
        The plot as a uint8 array of shape [H, W, 3].

    Example:
        >>> image = plot_accuracy_matrix([[0.9, float("nan")], [0.8, 0.95]])
        >>> image.dtype, image.ndim
        (dtype('uint8'), 3)
    """
    matrix = as_matrix(matrix, "matrix")
    rows = evaluated_rows(matrix)
    return _heatmap(
        matrix[rows],
        title="Accuracy matrix",
        xlabel="evaluated on experience",
        ylabel="after training on experience",
        xticklabels=[str(j) for j in range(matrix.shape[1])],
        yticklabels=[str(i) for i in rows],
        vmax=1.0,
        fmt=".2f",
    )


def plot_accuracy_curves(matrix: ArrayLike) -> np.ndarray:
    """Plots the accuracy on each experience as training goes on.

    One line per evaluated experience `j`: its accuracy (column `j` of the
    matrix) against the training experience just finished (the row). Drops in
    a line are forgetting. The legend naming the lines is left out beyond 20
    evaluated experiences.

    Args:
        matrix: Accuracy matrix, as for `plot_accuracy_matrix`.

    Returns:
        The plot as a uint8 array of shape [H, W, 3].

    Example:
        >>> plot_accuracy_curves([[0.9, 0.1], [0.8, 0.95]]).shape[-1]
        3
    """
    from matplotlib.ticker import MaxNLocator

    matrix = as_matrix(matrix, "matrix")
    figure, axes = _new_axes(7.0, 4.0)
    # Lines join the evaluations, over the experiences trained in between.
    trained = evaluated_rows(matrix)
    for j in range(matrix.shape[1]):
        axes.plot(trained, matrix[trained, j], marker="o", label=f"exp {j}")
    axes.set(
        title="Accuracy per experience",
        xlabel="after training on experience",
        ylabel="accuracy",
        ylim=(0.0, 1.05),
    )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if matrix.shape[1] <= _MAX_LEGEND_LINES:
        columns = math.ceil(matrix.shape[1] / 15)
        figure.legend(
            loc="outside right upper", fontsize="small", ncols=columns)
    return _render(figure)


def plot_confusion_matrix(cm: ArrayLike, class_names: Sequence[str] | None = None) -> np.ndarray:
    """Plots a confusion matrix (rows: true class, columns: predicted class).

    Args:
        cm: Array of shape [num_classes, num_classes], counts or rates.
        class_names: Optional tick labels, one per class; class indices are
            used otherwise. Beyond 20 classes, cell values are not drawn and
            only some ticks are labelled. NaN cells (e.g. the row of a class
            absent from the data, once rates are taken) are left blank and
            do not count for the colour scale.

    Returns:
        The plot as a uint8 array of shape [H, W, 3].

    Example:
        >>> plot_confusion_matrix([[5, 1], [0, 6]], ["cat", "dog"]).dtype
        dtype('uint8')
    """
    cm = as_matrix(cm, "cm")
    if cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm must be square, got cm.shape={cm.shape}.")
    if class_names is None:
        class_names = [str(c) for c in range(cm.shape[0])]
    if len(class_names) != cm.shape[0]:
        raise ValueError(
            f"class_names must have one name per class ({cm.shape[0]}), "
            f"got len(class_names)={len(class_names)}."
        )
    # A NaN maximum would make every cell saturate, so NaN cells are ignored.
    finite = cm[np.isfinite(cm)]
    top = float(finite.max()) if finite.size else 1.0
    return _heatmap(
        cm,
        title="Confusion matrix",
        xlabel="predicted class",
        ylabel="true class",
        xticklabels=class_names,
        yticklabels=class_names,
        vmax=max(top, 1e-12),
        fmt=".0f" if np.array_equal(cm, np.round(cm)) else ".2f",
    )


def save_png(image: ArrayLike, path: str | os.PathLike[str]) -> None:
    """Saves a uint8 image of shape [H, W], [H, W, 3] or [H, W, 4] as a PNG.

    Parent directories are created.

    Example:
        >>> save_png(plot_accuracy_matrix([[0.9]]), "/tmp/jaxcl_example/acc.png")
    """
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must have dtype uint8, got image.dtype={image.dtype}.")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")


def write_result_images(
    writer: MetricWriter,
    step: int,
    logdir: str | os.PathLike[str] | None,
    *,
    accuracy_matrix: ArrayLike,
    confusion_matrix: ArrayLike | None = None,
    label: str | None = None,
) -> None:
    """Plots the results, writes them as images and saves them as PNGs.

    The images are `eval/stream/accuracy_matrix`, `eval/stream/accuracy_curves`
    and, if `confusion_matrix` is given, `eval/stream/confusion_matrix`. Each
    goes to `writer.write_images` with a leading batch dimension of 1, and to
    `<logdir>/<last name component>.png`, overwriting the previous PNG (the
    writer keeps the history per step). With a `label` (one run of a sweep,
    `"lr=0.1"`) the names end in `/<label>` and the PNGs in `_<label>`.

    Args:
        writer: Where to write the images, e.g. from `create_writers`.
        step: Step of the images: the index of the training experience just
            finished.
        logdir: Directory for the PNGs; `None` saves none.
        accuracy_matrix: Accuracy matrix, as for `plot_accuracy_matrix`.
        confusion_matrix: Optional confusion matrix on the whole stream.
        label: Optional name of the run the results belong to.

    Example:
        >>> from jaxcl.loggers import create_writers
        >>> writer = create_writers(None, console=False)
        >>> write_result_images(writer, 1, "/tmp/jaxcl_example",
        ...                     accuracy_matrix=[[0.9, 0.1], [0.8, 0.95]])
    """
    if logdir is not None and is_remote_path(logdir):
        raise ValueError(
            f"logdir {os.fspath(logdir)!r} is a remote path; expected a local "
            "folder for the PNGs (or logdir=None: the images still go to the "
            "writer, e.g. a TensorBoard writer on that remote folder).")
    images = {
        "eval/stream/accuracy_matrix": plot_accuracy_matrix(accuracy_matrix),
        "eval/stream/accuracy_curves": plot_accuracy_curves(accuracy_matrix),
    }
    if confusion_matrix is not None:
        images["eval/stream/confusion_matrix"] = plot_confusion_matrix(confusion_matrix)
    tag, suffix = (f"/{label}", f"_{label}") if label else ("", "")
    writer.write_images(step, {name + tag: image[None] for name, image in images.items()})
    if logdir is not None:
        for name, image in images.items():
            save_png(image, pathlib.Path(logdir) / f"{name.rsplit('/', 1)[-1]}{suffix}.png")
