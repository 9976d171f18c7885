"""Benchmarks: the data model, scenario generators and the classic catalogue."""

from jaxcl.benchmarks.classic import MNIST_MEAN, MNIST_STD, split_mnist
from jaxcl.benchmarks.generators import as_arrays, class_incremental
from jaxcl.benchmarks.scenario import (Augment, Benchmark, Experience,
                                       Preprocess, Stream, normalizer)

BENCHMARKS = {"split_mnist": split_mnist}
"""The catalogue by name (used by the CLI)."""

__all__ = [
    "BENCHMARKS",
    "MNIST_MEAN",
    "MNIST_STD",
    "Augment",
    "Benchmark",
    "Experience",
    "Preprocess",
    "Stream",
    "as_arrays",
    "class_incremental",
    "normalizer",
    "split_mnist",
]
