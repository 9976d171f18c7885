"""Benchmarks: the data model, scenario generators, augmentations, the catalogue."""

import functools

from jaxcl.benchmarks import (augment, classic, confounders, files,
                              generators, resizing, scenario, temporal, videos)
from jaxcl.benchmarks.classic import *  # noqa: F403
from jaxcl.benchmarks.confounders import *  # noqa: F403
from jaxcl.benchmarks.files import *  # noqa: F403
from jaxcl.benchmarks.generators import *  # noqa: F403
from jaxcl.benchmarks.resizing import *  # noqa: F403
from jaxcl.benchmarks.scenario import *  # noqa: F403
from jaxcl.benchmarks.temporal import *  # noqa: F403
from jaxcl.benchmarks.videos import *  # noqa: F403

BENCHMARKS = {
    **{name: getattr(classic, name)
       for name in ("split_mnist", "permuted_mnist", "rotated_mnist",
                    "split_fmnist", "split_kmnist", "split_cifar10",
                    "split_cifar100", "split_cifar110", "split_svhn",
                    "split_omniglot", "split_cub200", "five_datasets",
                    "split_tiny_imagenet", "split_imagenet",
                    "split_inaturalist", "core50",
                    "openloris")},
    "stream51": videos.stream51,
    "clear10": functools.partial(temporal.clear, "clear10"),
    "clear100": functools.partial(temporal.clear, "clear100"),
    **{f"concon_{variant}": functools.partial(confounders.concon, variant)
       for variant in confounders.CONCON_VARIANTS},
}
"""The catalogue by name (used by the CLI)."""

__all__ = [
    "BENCHMARKS",
    "augment",
    *classic.__all__,
    *confounders.__all__,
    *files.__all__,
    *generators.__all__,
    *resizing.__all__,
    *scenario.__all__,
    *temporal.__all__,
    *videos.__all__,
]
