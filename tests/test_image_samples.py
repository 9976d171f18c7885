"""Grids of sample images per experience, against hand-placed tiles."""

import numpy as np
import pytest

import jaxcl
from jaxcl import cli, loggers
from jaxcl.loggers.base import MetricWriter


class _Images(MetricWriter):
    def __init__(self):
        self.written = []

    def write_images(self, step, images):
        self.written.extend((step, name, np.asarray(image))
                            for name, image in images.items())


def test_image_grid_places_tiles_row_major_with_padding():
    images = np.arange(1, 4, dtype=np.uint8)[:, None, None, None] * np.ones(
        (3, 2, 3, 1), np.uint8)
    grid = loggers.image_grid(images, n_cols=2)
    assert grid.shape == (2 + 2 * 4, 2 + 2 * 5, 1)
    np.testing.assert_array_equal(grid[2:4, 2:5, 0], 1)
    np.testing.assert_array_equal(grid[2:4, 7:10, 0], 2)
    np.testing.assert_array_equal(grid[6:8, 2:5, 0], 3)
    assert grid.sum() == (1 + 2 + 3) * 6  # Padding and the empty tile: 0.
    # Fewer images than columns: as many columns as images.
    assert loggers.image_grid(images[:1], n_cols=5).shape == (6, 7, 1)
    with pytest.raises(ValueError, match="n_cols must be a positive integer"):
        loggers.image_grid(images, n_cols=0)
    with pytest.raises(ValueError, match=r"images must be \[N, height, width, "
                       r"channels\] with N >= 1, got shape \(3, 2, 3\)"):
        loggers.image_grid(images[..., 0], n_cols=2)


def _benchmark(n_classes=3, per_class=12):
    y = np.repeat(np.arange(n_classes), per_class)
    ids = np.arange(len(y))
    x = (ids[:, None, None, None] * np.ones((1, 4, 4, 1))).astype(np.uint8)
    return jaxcl.benchmarks.class_incremental(
        (x, y), (x, y), n_classes, fixed_class_order=range(n_classes))


def test_samples_are_drawn_per_experience_sorted_and_seeded():
    bench = _benchmark()
    writer = _Images()
    loggers.write_image_samples(writer, bench, n_rows=2, n_cols=5, seed=3,
                                mode="both")
    names = [name for _, name, _ in writer.written]
    assert names == [f"samples/{s}_exp_{i:03d}" for s in ("train", "test")
                     for i in range(3)]
    assert [step for step, _, _ in writer.written] == [0, 1, 2, 0, 1, 2]
    for step, name, batch in writer.written:
        assert batch.shape == (1, 2 + 2 * 6, 2 + 5 * 6, 1)
        tiles = batch[0, 2::6, 2::6, 0].ravel()[:10]
        # Ten distinct samples of the experience's class (ids 12k..12k+11).
        assert len(set(tiles.tolist())) == 10
        assert all(12 * step <= t < 12 * step + 12 for t in tiles)
    again = _Images()
    loggers.write_image_samples(again, bench, n_rows=2, n_cols=5, seed=3,
                                mode="train")
    assert len(again.written) == 3
    for (_, _, a), (_, _, b) in zip(again.written, writer.written):
        np.testing.assert_array_equal(a, b)


def test_samples_of_several_classes_are_grouped_by_label():
    y = np.array([2, 0, 1, 2, 0, 1, 1])
    x = (np.arange(7)[:, None, None, None] * np.ones((1, 3, 3, 3))).astype(
        np.uint8)
    bench = jaxcl.benchmarks.class_incremental((x, y), (x, y), 1)
    writer = _Images()
    loggers.write_image_samples(writer, bench, n_rows=3, n_cols=3,
                                mode="train")
    (_, _, batch), = writer.written
    ids = batch[0, 2::5, 2::5, 0].ravel()[:7]
    assert sorted(ids.tolist()) == list(range(7))
    assert list(y[ids]) == sorted(y)


def test_samples_need_images():
    bench = jaxcl.benchmarks.class_incremental(
        (np.zeros((4, 6), np.float32), np.array([0, 1, 0, 1])),
        (np.zeros((4, 6), np.float32), np.array([0, 1, 0, 1])), 2)
    with pytest.raises(ValueError, match=r"inputs of shape \(6,\)"):
        loggers.write_image_samples(_Images(), bench)
    with pytest.raises(ValueError, match="n_rows must be a positive integer"):
        loggers.write_image_samples(_Images(), _benchmark(), n_rows=0)
    with pytest.raises(TypeError, match="writer must have a write_images "
                       "method"):
        loggers.write_image_samples(None, _benchmark())


def test_the_command_line_refuses_samples_with_nowhere_to_show_them(
        tmp_path, capsys):
    assert cli.main(["run", "--image-samples", "--no-tensorboard",
                     "--logdir", str(tmp_path / "run")]) != 0
    assert "--image-samples with --no-tensorboard and no --wandb-project" in (
        capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_the_command_line_writes_samples(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(loggers, "write_image_samples",
                        lambda writer, bench, seed: calls.append(
                            (bench.name, seed)))
    assert cli.main(["run", "--n-experiences", "2", "--hidden-size", "16",
                     "--epochs", "1", "--no-progress", "--quiet",
                     "--compilation-cache", "", "--image-samples",
                     "--seed", "4", "--logdir", str(tmp_path)]) == 0
    assert calls == [("split_mnist", 4)]
