"""Grids of sample images per experience (Avalanche's `images_samples_metrics`).

Avalanche's `ImagesSamplePlugin` logs a grid of images drawn from each
training experience before it trains (and, with `on_eval=True`, from each
evaluation experience). Here `write_image_samples` writes those grids for a
whole benchmark at once, before `fit`, as `samples/train_exp_<iii>` and
`samples/test_exp_<jjj>` (step: the experience's index), drawn from the
run's seed and sorted by task and label, as the plugin's `group=True` does.
The raw stored images are shown, as they are before normalisation and
augmentation. Defaults are `images_samples_metrics`'s: 8 x 8 grids of the
training experiences.

Example:
    >>> import jaxcl
    >>> writer = jaxcl.loggers.create_writers(None, console=False)
    >>> write_image_samples(writer, jaxcl.benchmarks.split_mnist(), seed=0)
"""

from __future__ import annotations

import numpy as np

from jaxcl import _validation
from jaxcl.loggers.base import MetricWriter

__all__ = ["image_grid", "write_image_samples"]

_PADDING = 2  # Pixels between images, as torchvision's make_grid.


def image_grid(images: np.ndarray, n_cols: int) -> np.ndarray:
    """Tiles ``[N, H, W, C]`` images into one ``[H', W', C]`` image, row-major.

    Images are separated by 2 black pixels (and framed by them), as
    torchvision's `make_grid` does: `min(n_cols, N)` columns, missing tiles
    of the last row black. The grid keeps the images' dtype.

    Example:
        >>> image_grid(np.ones((3, 2, 2, 1), np.uint8), n_cols=2).shape
        (10, 10, 1)
    """
    n_cols = _validation.check_positive_int("n_cols", n_cols)
    images = np.asarray(images)
    if images.ndim != 4 or not len(images):
        raise ValueError(f"images must be [N, height, width, channels] with "
                         f"N >= 1, got shape {images.shape}.")
    n, h, w, c = images.shape
    n_cols = min(n_cols, n)
    rows = -(-n // n_cols)
    grid = np.zeros((_PADDING + rows * (h + _PADDING),
                     _PADDING + n_cols * (w + _PADDING), c), images.dtype)
    for i, image in enumerate(images):
        top = _PADDING + (i // n_cols) * (h + _PADDING)
        left = _PADDING + (i % n_cols) * (w + _PADDING)
        grid[top:top + h, left:left + w] = image
    return grid


def _as_displayable(x: np.ndarray) -> np.ndarray:
    """uint8 as is; other types scaled to [0, 1] over the samples shown."""
    if x.dtype == np.uint8:
        return x
    x = x.astype(np.float32)
    low, high = float(x.min()), float(x.max())
    return (x - low) / (high - low) if high > low else np.zeros_like(x)


def _samples(experience, rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` samples (fewer if it holds fewer), sorted by task and label."""
    n = len(experience)
    rows = np.sort(rng.permutation(n)[:min(count, n)])
    order = np.lexsort((experience.y[rows], experience.task[rows]))
    return np.asarray(experience.x[rows[order]])


def write_image_samples(writer: MetricWriter, benchmark, *, n_rows: int = 8,
                        n_cols: int = 8, seed: int = 0,
                        mode: str = "train") -> None:
    """Writes a grid of sample images of every experience.

    Args:
        writer: Where the grids go (`write_images`).
        benchmark: A :class:`jaxcl.benchmarks.Benchmark` of images
            (``input_shape`` ``[H, W, C]`` with 1, 3 or 4 channels).
        n_rows: Rows of each grid (Avalanche's default 8).
        n_cols: Columns of each grid (8).
        seed: Seed of the samples drawn.
        mode: ``"train"`` (Avalanche's default, ``on_train=True``),
            ``"test"`` (its ``on_eval``) or ``"both"`` streams.

    Raises:
        ValueError: If the inputs are not images, or an argument is invalid.
    """
    if not callable(getattr(writer, "write_images", None)):
        raise TypeError(f"writer must have a write_images method (a clu "
                        f"MetricWriter), got {type(writer).__name__}.")
    n_rows = _validation.check_positive_int("n_rows", n_rows)
    n_cols = _validation.check_positive_int("n_cols", n_cols)
    seed = _validation.check_seed("seed", seed)
    mode = _validation.check_choice("mode", mode, ("train", "test", "both"))
    shape = tuple(benchmark.input_shape)
    if len(shape) != 3 or shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"write_image_samples shows images [height, width, channels] "
            f"with 1, 3 or 4 channels; {benchmark.name!r} has inputs of "
            f"shape {shape}.")
    streams = {"train": benchmark.train_stream, "test": benchmark.test_stream}
    for name in (("train", "test") if mode == "both" else (mode,)):
        for i, experience in enumerate(streams[name]):
            # One generator per experience: the same draw whatever the mode.
            rng = np.random.default_rng([seed, i, name == "test"])
            x = _samples(experience, rng, n_rows * n_cols)
            if not len(x):
                continue
            grid = image_grid(_as_displayable(x), n_cols)
            writer.write_images(i, {f"samples/{name}_exp_{i:03d}": grid[None]})
