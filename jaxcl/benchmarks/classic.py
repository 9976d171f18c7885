"""The classic benchmark catalogue, by Avalanche's names.

Each benchmark reads its real dataset through tfds. With ``data_dir`` it reads
the prepared tfds dataset there (``tfds build NAME --data_dir DIR
--file_format array_record``); without it, the MNIST benchmarks fall back to
the real MNIST digits bundled in ``benchmarks_data/`` (no network needed) and
the others use tfds's default data directory if the dataset is prepared
there, else raise a ``ValueError`` saying how to prepare it. A leading ``~``
in ``data_dir`` is expanded. Tiny ImageNet, CORe50 and OpenLORIS are not in
tfds: Tiny ImageNet and CORe50's seeded scenarios are read from prepared
image folders with ``tfds.ImageFolder``; CORe50's official runs (``run=``)
and OpenLORIS from their official file lists, with Pillow
(:mod:`jaxcl.benchmarks.files`), from a local ``data_dir``.

Images stay in their stored dtype (uint8) on the host and on the device;
each benchmark normalises them in ``preprocess`` and augments training batches
in ``augment``, both inside the compiled step, with Avalanche's constants and
default training transforms (the downsampled ``split_imagenet``'s crop and
flip are jaxcl's: Avalanche center-crops full-size images without
augmentation, as ``split_imagenet(full_resolution=True)`` and
``split_inaturalist`` do). Those two and ``split_cub200`` read photographs
of varying sizes, which are resized on the host as they are read
(:mod:`jaxcl.benchmarks.resizing`).

Example:
  >>> bench = split_mnist(n_experiences=5, seed=0)  # doctest: +SKIP
  >>> bench.n_classes, len(bench.train_stream)      # doctest: +SKIP
  (10, 5)
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxcl import _hosts, _validation
from jaxcl.benchmarks import augment, files, generators, resizing
from jaxcl.benchmarks.scenario import Augment, Benchmark, normalizer

__all__ = [
  "CIFAR10_MEAN",
  "CIFAR10_STD",
  "CIFAR100_MEAN",
  "CIFAR100_STD",
  "CORE50_MEAN",
  "CORE50_STD",
  "FIVE_DATASETS",
  "FMNIST_MEAN",
  "FMNIST_STD",
  "IMAGENET_MEAN",
  "IMAGENET_STD",
  "INATURALIST_SUPERCATEGORIES",
  "KMNIST_MEAN",
  "KMNIST_STD",
  "MNIST_MEAN",
  "MNIST_STD",
  "OMNIGLOT_MEAN",
  "OMNIGLOT_STD",
  "SVHN_MEAN",
  "SVHN_STD",
  "core50",
  "five_datasets",
  "openloris",
  "permuted_mnist",
  "prepare_tiny_imagenet",
  "rotated_mnist",
  "split_imagenet",
  "split_inaturalist",
  "split_cifar10",
  "split_cifar100",
  "split_cifar110",
  "split_cub200",
  "split_fmnist",
  "split_kmnist",
  "split_mnist",
  "split_omniglot",
  "split_svhn",
  "split_tiny_imagenet",
]

PathLike = str | os.PathLike

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
KMNIST_MEAN, KMNIST_STD = 0.1918, 0.3483
OMNIGLOT_MEAN, OMNIGLOT_STD = 0.9221, 0.2681
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CORE50_MEAN, CORE50_STD = IMAGENET_MEAN, IMAGENET_STD

# Avalanche's default training transforms, as on-device augmentations.
_CROP_FLIP = augment.compose(augment.random_crop(4), augment.random_flip())
_FLIP = augment.random_flip()

# CORe50's sessions: 8 for training, 3 for testing (Lomonaco & Maltoni, 2017).
_CORE50_TRAIN = (1, 2, 4, 5, 6, 8, 9, 11)
_CORE50_TEST = (3, 7, 10)


@contextlib.contextmanager
def _reading(benchmark: str, tfds_name: str, data_dir: PathLike | None):
  """Names the benchmark and the ``data_dir`` flag in a failed read.

  The read itself decides whether the data is there (an on-disk check
  beforehand refused what ``tfds.testing.mock_data`` serves).
  """
  from jaxcl.benchmarks import sources  # Lazy: tfds import is not free.
  try:
    yield
  except sources.DatasetUnavailableError as error:
    if data_dir is not None:
      raise
    raise sources.DatasetUnavailableError(
        f"{benchmark} reads the tfds dataset {tfds_name!r}, which is not "
        f"bundled with jaxcl, and no data_dir was given: {error} Then pass "
        "data_dir=DIR (CLI: --data-dir DIR).") from error


def _load(benchmark: str, tfds_name: str, data_dir: PathLike | None,
          splits: Sequence[str] = ("train", "test"), *, lazy: bool = False,
          split_over_hosts: bool = False) -> list[Any]:
  """Reads tfds splits as arrays, with a clear error when they are missing.

  ``lazy`` and ``split_over_hosts`` as in
  :func:`jaxcl.benchmarks.sources.load_tfds_split`.
  """
  from jaxcl.benchmarks import sources  # Lazy: tfds import is not free.
  with _reading(benchmark, tfds_name, data_dir):
    return [sources.load_tfds_split(tfds_name, s, data_dir=data_dir,
                                    lazy=lazy,
                                    split_over_hosts=split_over_hosts)
            for s in splits]


def _mnist(benchmark: str, data_dir: PathLike | None, *, lazy: bool = False,
           split_over_hosts: bool = False) -> list[Any]:
  from jaxcl.benchmarks import sources  # Lazy: tfds import is not free.
  if data_dir is None:
    return [sources.load_bundled("mnist_bundled", s, lazy=lazy,
                                 split_over_hosts=split_over_hosts)
            for s in ("train", "test")]
  return _load(benchmark, "mnist", data_dir, lazy=lazy,
               split_over_hosts=split_over_hosts)


def _check_split(n_classes: int, n_experiences: int, seed: int, *,
                 first_classes: int | None = None, first_arg: str = "",
                 fixed_class_order: Sequence[int] | None = None,
                 relabelling: tuple[bool, bool] = (False, False),
                 per_exp_classes: Mapping[int, int] | None = None) -> None:
  """A split factory's own arguments, checked before any data is read.

  ``relabelling``: its ``class_ids_from_zero_in_each_exp`` and
  ``class_ids_from_zero_from_first_exp``.
  """
  n_experiences = _validation.check_positive_int("n_experiences",
                                                 n_experiences)
  _validation.check_seed("seed", seed)
  generators.check_relabelling(*relabelling)
  generators.check_class_order(n_classes, fixed_class_order)
  if per_exp_classes is not None:
    generators.class_group_sizes(n_classes, n_experiences, per_exp_classes)
    return
  if first_classes is None:
    if n_classes % n_experiences:
      raise ValueError(
          f"n_experiences={n_experiences} does not divide the {n_classes} "
          f"classes; expected one of "
          f"{[d for d in range(1, n_classes + 1) if n_classes % d == 0]}.")
    return
  rest, others = n_classes - first_classes, n_experiences - 1
  # One experience may take every class; otherwise each other experience
  # takes an equal, positive share of the rest.
  one_takes_all = others == 0 and rest == 0
  if not one_takes_all and (others < 1 or rest < others or rest % others):
    raise ValueError(
        f"n_experiences={n_experiences} with {first_arg}: "
        f"the first experience takes {first_classes} of the {n_classes} "
        f"classes, leaving {rest} for {others} more experiences; expected "
        "a positive number of them that divides the rest evenly.")


def _split(name: str, splits: Sequence[Any], n_experiences: int, mean, std,
           augmentation: Augment | None = None, **kwargs) -> Benchmark:
  """A class-incremental catalogue entry with its normalisation."""
  train, test = splits
  return generators.class_incremental(
      train, test, n_experiences, preprocess=normalizer(mean, std),
      augment=augmentation, name=name, **kwargs)


@_validation.checks_bool_arguments
def split_mnist(
    n_experiences: int = 5,
    *,
    return_task_id: bool = False,
    seed: int = 0,
    fixed_class_order: Sequence[int] | None = None,
    shuffle: bool = True,
    class_ids_from_zero_in_each_exp: bool = False,
    class_ids_from_zero_from_first_exp: bool = False,
    data_dir: PathLike | None = None,
    lazy: bool = False,
    split_over_hosts: bool = False,
) -> Benchmark:
  """SplitMNIST: the ten digits split into ``n_experiences`` groups of classes.

  Args:
    n_experiences: Number of experiences (a divisor of 10).
    return_task_id: Task label ``i`` for experience ``i`` (task-incremental).
    seed: Seed of the class order.
    fixed_class_order: Explicit class order instead of a seeded permutation.
    shuffle: Draw the class order from ``seed`` (else 0, 1, ..., 9).
    class_ids_from_zero_in_each_exp: Relabel each experience's classes
      ``0..k-1`` (see :func:`jaxcl.benchmarks.class_incremental`).
    class_ids_from_zero_from_first_exp: Relabel the classes by their position
      in the class order: experience 0 holds ``0..k-1``, experience 1 the next
      ids, and so on (at most one of the two relabellings).
    data_dir: A tfds data directory holding the prepared ``mnist`` dataset
      (70,000 digits). Without it, the 5,000 real MNIST digits bundled with
      jaxcl are used (4,000 train / 1,000 test).
    lazy: Leave the images in the dataset's ArrayRecord files (lazy
      :class:`~jaxcl.benchmarks.sources.RecordArray` views, only labels in
      memory): ``fit`` reads an experience's images when it puts them on the
      devices, or a chunk's when it streams them (docs/streaming.md).
    split_over_hosts: With ``lazy`` on several processes, each reads the
      labels of its share of the records and the processes exchange them (a
      collective: every process calls it; docs/scale.md).

  Returns:
    A class-incremental (or task-incremental) :class:`Benchmark`, inputs
    normalised with MNIST's mean 0.1307 and std 0.3081 on the device, no
    augmentation.

  Example:
    >>> bench = split_mnist(n_experiences=5, seed=0)
    >>> bench.n_classes, [len(e) for e in bench.train_stream]
    (10, [800, 800, 800, 800, 800])
  """
  _check_split(10, n_experiences, seed,
               fixed_class_order=fixed_class_order,
               relabelling=(class_ids_from_zero_in_each_exp,
                            class_ids_from_zero_from_first_exp))
  splits = _mnist("split_mnist", data_dir, lazy=lazy,
                  split_over_hosts=split_over_hosts)
  return _split("split_mnist", splits, n_experiences, MNIST_MEAN, MNIST_STD,
                return_task_id=return_task_id, seed=seed,
                fixed_class_order=fixed_class_order, shuffle=shuffle,
                class_ids_from_zero_in_each_exp=class_ids_from_zero_in_each_exp,
                class_ids_from_zero_from_first_exp=(
                    class_ids_from_zero_from_first_exp))


@_validation.checks_bool_arguments
def split_fmnist(
    n_experiences: int = 5,
    *,
    first_batch_with_half_classes: bool = False,
    return_task_id: bool = False,
    seed: int = 0,
    fixed_class_order: Sequence[int] | None = None,
    shuffle: bool = True,
    class_ids_from_zero_in_each_exp: bool = False,
    class_ids_from_zero_from_first_exp: bool = False,
    data_dir: PathLike | None = None,
    lazy: bool = False,
    split_over_hosts: bool = False,
) -> Benchmark:
  """SplitFashionMNIST: tfds ``fashion_mnist`` split by classes.

  Arguments as :func:`split_mnist`, plus Avalanche's
  ``first_batch_with_half_classes`` (a first experience with 5 classes, the
  others split evenly over the other experiences); ``data_dir`` must hold
  the prepared ``fashion_mnist`` (no bundled fallback). Normalised with mean
  0.2860, std 0.3530; no augmentation.

  Example:
    >>> bench = split_fmnist(5, data_dir="~/tfds")  # doctest: +SKIP
  """
  _check_split(10, n_experiences, seed,
               first_classes=5 if first_batch_with_half_classes else None,
               first_arg="first_batch_with_half_classes=True",
               fixed_class_order=fixed_class_order,
               relabelling=(class_ids_from_zero_in_each_exp,
                            class_ids_from_zero_from_first_exp))
  splits = _load("split_fmnist", "fashion_mnist", data_dir, lazy=lazy,
                 split_over_hosts=split_over_hosts)
  return _split("split_fmnist", splits, n_experiences, FMNIST_MEAN, FMNIST_STD,
                per_exp_classes=(
                    {0: 5} if first_batch_with_half_classes else None),
                return_task_id=return_task_id, seed=seed,
                fixed_class_order=fixed_class_order, shuffle=shuffle,
                class_ids_from_zero_in_each_exp=class_ids_from_zero_in_each_exp,
                class_ids_from_zero_from_first_exp=(
                    class_ids_from_zero_from_first_exp))


@_validation.checks_bool_arguments
def split_kmnist(
    n_experiences: int = 5,
    *,
    return_task_id: bool = False,
    seed: int = 0,
    fixed_class_order: Sequence[int] | None = None,
    shuffle: bool = True,
    class_ids_from_zero_in_each_exp: bool = False,
    class_ids_from_zero_from_first_exp: bool = False,
    data_dir: PathLike | None = None,
    lazy: bool = False,
    split_over_hosts: bool = False,
) -> Benchmark:
  """SplitKMNIST: tfds ``kmnist`` (Kuzushiji-MNIST) split by classes.

  Arguments as :func:`split_mnist`; ``data_dir`` must hold the prepared
  ``kmnist``. Normalised with mean 0.1918, std 0.3483; no augmentation.

  Example:
    >>> bench = split_kmnist(5, data_dir="~/tfds")  # doctest: +SKIP
  """
  _check_split(10, n_experiences, seed,
               fixed_class_order=fixed_class_order,
               relabelling=(class_ids_from_zero_in_each_exp,
                            class_ids_from_zero_from_first_exp))
  splits = _load("split_kmnist", "kmnist", data_dir, lazy=lazy,
                 split_over_hosts=split_over_hosts)
  return _split("split_kmnist", splits, n_experiences, KMNIST_MEAN, KMNIST_STD,
                return_task_id=return_task_id, seed=seed,
                fixed_class_order=fixed_class_order, shuffle=shuffle,
                class_ids_from_zero_in_each_exp=class_ids_from_zero_in_each_exp,
                class_ids_from_zero_from_first_exp=(
                    class_ids_from_zero_from_first_exp))


@_validation.checks_bool_arguments
def split_cifar10(
    n_experiences: int = 5,
    *,
    first_exp_with_half_classes: bool = False,
    return_task_id: bool = False,
    seed: int = 0,
    fixed_class_order: Sequence[int] | None = None,
    shuffle: bool = True,
    class_ids_from_zero_in_each_exp: bool = False,
    class_ids_from_zero_from_first_exp: bool = False,
    data_dir: PathLike | None = None,
    lazy: bool = False,
    split_over_hosts: bool = False,
) -> Benchmark:
  """SplitCIFAR10: tfds ``cifar10`` split by classes.

  Arguments as :func:`split_mnist`, plus ``first_exp_with_half_classes``
  (a first experience with 5 classes, the others split evenly over the other
  experiences). Normalised with CIFAR-10's mean (0.4914, 0.4822, 0.4465) and
  std (0.2023, 0.1994, 0.2010); training batches get Avalanche's random crop
  (32, padding 4) and horizontal flip.

  Example:
    >>> bench = split_cifar10(5, data_dir="~/tfds")  # doctest: +SKIP
  """
  _check_split(10, n_experiences, seed,
               first_classes=5 if first_exp_with_half_classes else None,
               first_arg="first_exp_with_half_classes=True",
               fixed_class_order=fixed_class_order,
               relabelling=(class_ids_from_zero_in_each_exp,
                            class_ids_from_zero_from_first_exp))
  splits = _load("split_cifar10", "cifar10", data_dir, lazy=lazy,
                 split_over_hosts=split_over_hosts)
  return _split("split_cifar10", splits, n_experiences, CIFAR10_MEAN, CIFAR10_STD, _CROP_FLIP,
                per_exp_classes={0: 5} if first_exp_with_half_classes else None,
                return_task_id=return_task_id, seed=seed,
                fixed_class_order=fixed_class_order, shuffle=shuffle,
                class_ids_from_zero_in_each_exp=class_ids_from_zero_in_each_exp,
                class_ids_from_zero_from_first_exp=(
                    class_ids_from_zero_from_first_exp))


@_validation.checks_bool_arguments
def split_cifar100(
    n_experiences: int = 10,
    *,
    first_exp_with_half_classes: bool = False,
    return_task_id: bool = False,
    seed: int = 0,
    fixed_class_order: Sequence[int] | None = None,
    shuffle: bool = True,
    class_ids_from_zero_in_each_exp: bool = False,
    class_ids_from_zero_from_first_exp: bool = False,
    data_dir: PathLike | None = None,
    lazy: bool = False,
    split_over_hosts: bool = False,
) -> Benchmark:
  """SplitCIFAR100: tfds ``cifar100`` (fine labels) split by classes.

  Arguments as :func:`split_cifar10` (``first_exp_with_half_classes``: 50
  classes first). Normalised with CIFAR-100's mean (0.5071, 0.4865, 0.4409)
  and std (0.2673, 0.2564, 0.2762); random crop (padding 4) and horizontal
  flip in training.

  Example:
    >>> bench = split_cifar100(10, data_dir="~/tfds")  # doctest: +SKIP
  """
  _check_split(100, n_experiences, seed,
               first_classes=50 if first_exp_with_half_classes else None,
               first_arg="first_exp_with_half_classes=True",
               fixed_class_order=fixed_class_order,
               relabelling=(class_ids_from_zero_in_each_exp,
                            class_ids_from_zero_from_first_exp))
  splits = _load("split_cifar100", "cifar100", data_dir, lazy=lazy,
                 split_over_hosts=split_over_hosts)
  return _split("split_cifar100", splits, n_experiences, CIFAR100_MEAN, CIFAR100_STD, _CROP_FLIP,
                per_exp_classes={0: 50} if first_exp_with_half_classes else None,
                return_task_id=return_task_id, seed=seed,
                fixed_class_order=fixed_class_order, shuffle=shuffle,
                class_ids_from_zero_in_each_exp=class_ids_from_zero_in_each_exp,
                class_ids_from_zero_from_first_exp=(
                    class_ids_from_zero_from_first_exp))


def split_cifar110(
    n_experiences: int = 11,
    *,
    seed: int = 0,
    fixed_class_order: Sequence[int] | None = None,
    data_dir: PathLike | None = None,
) -> Benchmark:
  """SplitCIFAR110: all of CIFAR-10 first, then CIFAR-100 split by classes.

  As Avalanche's ``SplitCIFAR110``: CIFAR-10 (labels 0-9) is the first
  experience; CIFAR-100's classes (labels 10-109) follow in
  ``fixed_class_order`` (a permutation of 0..99) or a seeded order, split
  evenly over the other ``n_experiences - 1`` experiences. Task label 0,
  CIFAR-100's normalisation, random crop and flip in training.

  Args:
    n_experiences: Number of experiences; ``n_experiences - 1`` must divide
      100.
    seed: Seed of the CIFAR-100 class order.
    fixed_class_order: Order of the CIFAR-100 classes (0..99).
    data_dir: tfds data directory with ``cifar10`` and ``cifar100``.

  Returns:
    A class-incremental :class:`Benchmark` over 110 classes.

  Example:
    >>> bench = split_cifar110(11, data_dir="~/tfds")  # doctest: +SKIP
  """
  n_experiences = _validation.check_positive_int("n_experiences", n_experiences)
  if n_experiences < 2:
    raise ValueError(f"n_experiences must be at least 2 (CIFAR-10, then "
                     f"CIFAR-100), got {n_experiences}.")
  _check_split(110, n_experiences, seed, first_classes=10,
               first_arg="CIFAR-10 as the first experience")
  generators.check_class_order(100, fixed_class_order, "the CIFAR-100 classes")
  if fixed_class_order is None:
    order100 = np.random.default_rng(seed).permutation(100)
  else:
    order100 = np.asarray(fixed_class_order)
  c10 = _load("split_cifar110", "cifar10", data_dir)
  c100 = _load("split_cifar110", "cifar100", data_dir)
  train, test = [(np.concatenate([a.x, b.x]), np.concatenate([a.y, b.y + 10]))
                 for a, b in zip(c10, c100)]
  return _split("split_cifar110", (train, test), n_experiences, CIFAR100_MEAN,
                CIFAR100_STD, _CROP_FLIP, per_exp_classes={0: 10},
                fixed_class_order=[*range(10), *(order100 + 10)])


@_validation.checks_bool_arguments
def split_svhn(
    n_experiences: int = 5,
    *,
    return_task_id: bool = False,
    seed: int = 0,
    fixed_class_order: Sequence[int] | None = None,
    shuffle: bool = True,
    class_ids_from_zero_in_each_exp: bool = False,
    class_ids_from_zero_from_first_exp: bool = False,
    data_dir: PathLike | None = None,
    lazy: bool = False,
    split_over_hosts: bool = False,
) -> Benchmark:
  """SplitSVHN: tfds ``svhn_cropped`` (train / test, no extra) split by classes.

  Arguments as :func:`split_mnist`. Not in Avalanche's catalogue; normalised
  with SVHN's mean (0.4377, 0.4438, 0.4728) and std (0.1980, 0.2010,
  0.1970); no augmentation (a flipped digit is another digit).

  Example:
    >>> bench = split_svhn(5, data_dir="~/tfds")  # doctest: +SKIP
  """
  _check_split(10, n_experiences, seed,
               fixed_class_order=fixed_class_order,
               relabelling=(class_ids_from_zero_in_each_exp,
                            class_ids_from_zero_from_first_exp))
  splits = _load("split_svhn", "svhn_cropped", data_dir, lazy=lazy,
                 split_over_hosts=split_over_hosts)
  return _split("split_svhn", splits, n_experiences, SVHN_MEAN, SVHN_STD,
                return_task_id=return_task_id, seed=seed,
                fixed_class_order=fixed_class_order, shuffle=shuffle,
                class_ids_from_zero_in_each_exp=class_ids_from_zero_in_each_exp,
                class_ids_from_zero_from_first_exp=(
                    class_ids_from_zero_from_first_exp))


@_validation.checks_bool_arguments
def split_omniglot(
    n_experiences: int = 4,
    *,
    return_task_id: bool = False,
    seed: int = 0,
    fixed_class_order: Sequence[int] | None = None,
    shuffle: bool = True,
    class_ids_from_zero_in_each_exp: bool = False,
    class_ids_from_zero_from_first_exp: bool = False,
    data_dir: PathLike | None = None,
) -> Benchmark:
  """SplitOmniglot: the 964 characters of Omniglot's background set by classes.

  tfds ``omniglot``'s ``train`` split (the background alphabets, 964
  characters of 20 drawings each), as in Avalanche. Avalanche tests on the
  evaluation alphabets, whose characters are other classes; jaxcl instead
  holds out 4 of the 20 drawings of every character as the test set
  (:func:`jaxcl.benchmarks.builders.stratified_split`, seed 0), so test
  classes are train classes. Characters are relabelled ``0..963`` in tfds
  label order; images are 105x105x1 (one channel of tfds's RGB copy),
  binarised to 0 (strokes) and 255 (background) whichever way tfds decoded
  them, normalised with mean 0.9221, std 0.2681; no augmentation.

  Arguments as :func:`split_mnist` (``n_experiences`` divides 964: 1, 2, 4,
  241, 482 or 964).

  Example:
    >>> bench = split_omniglot(4, data_dir="~/tfds")  # doctest: +SKIP
  """
  _check_split(964, n_experiences, seed,
               fixed_class_order=fixed_class_order,
               relabelling=(class_ids_from_zero_in_each_exp,
                            class_ids_from_zero_from_first_exp))
  from jaxcl.benchmarks import builders  # Lazy: tfds import is not free.
  (full,) = _load("split_omniglot", "omniglot", data_dir, splits=("train",))
  _, y = np.unique(full.y, return_inverse=True)
  # tfds stores Omniglot's 1-bit PNGs: decoded by PIL (ArrayRecord) their
  # pixels are 0/1, by TensorFlow (TFRecord) 0/255; the normalisation
  # constants are those of 0/255 images.
  x = np.where(full.x[..., :1] > 0, np.uint8(255), np.uint8(0))
  train, test = builders.stratified_split(y)
  return _split("split_omniglot", ((x[train], y[train]), (x[test], y[test])),
                n_experiences, OMNIGLOT_MEAN, OMNIGLOT_STD,
                return_task_id=return_task_id, seed=seed,
                fixed_class_order=fixed_class_order, shuffle=shuffle,
                class_ids_from_zero_in_each_exp=class_ids_from_zero_in_each_exp,
                class_ids_from_zero_from_first_exp=(
                    class_ids_from_zero_from_first_exp))


def _open_resized(benchmark: str, tfds_name: str, data_dir: PathLike | None,
                  split: str, resize: resizing.Resize, *,
                  split_over_hosts: bool = False,
                  fast_decode: bool = False) -> resizing.ResizedSource:
  """A tfds split of images of varying sizes, resized as they are read.

  Needs random access (ArrayRecord): the images are resized one by one.
  With ``split_over_hosts`` the hosts agree on the opening, so that a host
  that cannot open it makes the others raise too.
  """
  import tensorflow_datasets as tfds  # Lazy: tfds import is not free.

  from jaxcl.benchmarks import sources
  data_dir = sources.expand_data_dir(data_dir)

  def open_split() -> resizing.ResizedSource:
    with _reading(benchmark, tfds_name, data_dir):
      try:
        source = tfds.builder(tfds_name, data_dir=data_dir).as_data_source(
            split=split)
      except Exception as error:  # Re-raised with the preparation advice.
        raise sources.DatasetUnavailableError(
            sources._tfds_load_error(  # pylint: disable=protected-access
                tfds_name, split, data_dir, error,
                needs_random_access=f"{benchmark}, which resizes its images "
                "one by one,")) from error
    return resizing.ResizedSource(source, resize, draft=fast_decode)

  if split_over_hosts:
    return _hosts.read_together(f"{benchmark}'s {split!r} split", open_split)
  return open_split()


@_validation.checks_bool_arguments
def split_cub200(
    n_experiences: int = 11,
    *,
    classes_first_batch: int | None = 100,
    return_task_id: bool = False,
    seed: int = 0,
    fixed_class_order: Sequence[int] | None = None,
    shuffle: bool = False,
    image_size: int = 224,
    data_dir: PathLike | None = None,
) -> Benchmark:
  """SplitCUB200: tfds ``caltech_birds2011`` (200 bird species) by classes.

  As Avalanche's ``SplitCUB200``: 11 experiences by default, the first with
  ``classes_first_batch`` classes and the others splitting the rest evenly;
  classes in label order unless ``shuffle``. The images (of varying sizes)
  are resized on the host to ``image_size`` x ``image_size`` (bilinear;
  Avalanche leaves sizing to the user's transforms); normalised with
  CIFAR-10's constants and flipped horizontally in training, as in
  Avalanche. Needs the dataset prepared in ArrayRecord format.

  Args:
    n_experiences: Number of experiences.
    classes_first_batch: Classes of the first experience (None: all equal).
    return_task_id: Task label ``i`` for experience ``i``.
    seed: Seed of the class order (with ``shuffle``).
    fixed_class_order: Explicit class order.
    shuffle: Draw the class order from ``seed``.
    image_size: Side of the resized square images.
    data_dir: tfds data directory with ``caltech_birds2011``.

  Returns:
    A class-incremental :class:`Benchmark` over 200 classes.

  Example:
    >>> bench = split_cub200(data_dir="~/tfds")  # doctest: +SKIP
  """
  if classes_first_batch is not None:
    _validation.check_positive_int("classes_first_batch", classes_first_batch)
  _check_split(200, n_experiences, seed, first_classes=classes_first_batch,
               first_arg=f"classes_first_batch={classes_first_batch}",
               fixed_class_order=fixed_class_order)
  image_size = _validation.check_positive_int("image_size", image_size)
  per_exp = None if classes_first_batch is None else {0: classes_first_batch}
  from jaxcl.benchmarks import sources  # Lazy: tfds import is not free.
  splits = [sources.arrays_from_data_source(_open_resized(
      "split_cub200", "caltech_birds2011", data_dir, split,
      resizing.resize_square(image_size))) for split in ("train", "test")]
  return _split("split_cub200", splits, n_experiences, CIFAR10_MEAN,
                CIFAR10_STD, _FLIP, per_exp_classes=per_exp,
                return_task_id=return_task_id, seed=seed,
                fixed_class_order=fixed_class_order, shuffle=shuffle)


def _rgb32(x: np.ndarray) -> np.ndarray:
  """Zero-pads images to 32x32 and repeats a single channel to three."""
  h, w = x.shape[1:3]
  if h > 32 or w > 32:
    raise ValueError(f"five_datasets expects images of at most 32x32, got "
                     f"{h}x{w}.")
  top, left = (32 - h) // 2, (32 - w) // 2
  x = np.pad(x, [(0, 0), (top, 32 - h - top), (left, 32 - w - left), (0, 0)])
  return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


FIVE_DATASETS = ("mnist", "kmnist", "fashion_mnist", "cifar10", "svhn_cropped")
"""The tfds datasets of :func:`five_datasets`, in experience order."""


@_validation.checks_bool_arguments
def five_datasets(
    *,
    return_task_id: bool = False,
    offset_class_ids: bool = True,
    data_dir: PathLike | None = None,
) -> Benchmark:
  """5-datasets (Ebrahimi et al., 2020): one dataset per experience.

  MNIST, notMNIST, Fashion-MNIST, CIFAR-10 and SVHN in the original; notMNIST
  is not in tfds, so jaxcl uses KMNIST (ten classes of 28x28 handwritten
  Japanese characters) in its place. Each is one experience
  (:func:`jaxcl.benchmarks.dataset_per_experience`); 28x28x1 images are
  zero-padded to 32x32 and repeated to three channels on the host. All
  experiences share one normalisation, ``(x / 255 - 0.5) / 0.5`` (the
  original normalises each dataset with its own statistics, which one
  on-device ``preprocess`` cannot do); no augmentation.

  Args:
    return_task_id: Task label ``k`` for dataset ``k`` (the usual
      task-incremental protocol).
    offset_class_ids: Labels ``10k..10k+9`` for dataset ``k`` (50 classes);
      if False every dataset keeps labels 0-9 (10 shared classes).
    data_dir: tfds data directory with the five datasets
      (:data:`FIVE_DATASETS`).

  Returns:
    A :class:`Benchmark` with five 32x32x3 experiences.

  Example:
    >>> bench = five_datasets(return_task_id=True, data_dir="~/tfds")  # doctest: +SKIP
  """
  pairs = []
  for name in FIVE_DATASETS:
    train, test = _load("five_datasets", name, data_dir)
    pairs.append(((_rgb32(train.x), train.y), (_rgb32(test.x), test.y)))
  return generators.dataset_per_experience(
      pairs, offset_class_ids=offset_class_ids, return_task_id=return_task_id,
      preprocess=normalizer(0.5, 0.5), name="five_datasets")


@_validation.checks_bool_arguments
def permuted_mnist(
    n_experiences: int = 10,
    *,
    return_task_id: bool = False,
    seed: int = 0,
    data_dir: PathLike | None = None,
) -> Benchmark:
  """PermutedMNIST: one fixed pixel permutation of MNIST per experience.

  See :func:`jaxcl.benchmarks.permuted`: every experience (the first one
  too, as in Avalanche) has its own permutation drawn from ``seed``; labels
  0-9 everywhere, task label 0 (one shared head) unless ``return_task_id``.
  MNIST normalisation, no augmentation. ``data_dir`` and the bundled
  fallback as in :func:`split_mnist`.

  Example:
    >>> bench = permuted_mnist(3, seed=0)
    >>> bench.scenario, [e.classes == tuple(range(10)) for e in bench.train_stream]
    ('domain_incremental', [True, True, True])
  """
  _validation.check_positive_int("n_experiences", n_experiences)
  _validation.check_seed("seed", seed)
  train, test = _mnist("permuted_mnist", data_dir)
  return generators.permuted(
      train, test, n_experiences, seed=seed, return_task_id=return_task_id,
      preprocess=normalizer(MNIST_MEAN, MNIST_STD), name="permuted_mnist")


@_validation.checks_bool_arguments
def rotated_mnist(
    n_experiences: int = 10,
    *,
    return_task_id: bool = False,
    seed: int = 0,
    rotations_list: Sequence[float] | None = None,
    data_dir: PathLike | None = None,
) -> Benchmark:
  """RotatedMNIST: one fixed rotation of MNIST per experience.

  See :func:`jaxcl.benchmarks.rotated`: integer angles in [-180, 180] drawn
  from ``seed`` unless ``rotations_list`` gives them (Avalanche's
  parameter name). MNIST normalisation; ``data_dir`` and the bundled fallback
  as in :func:`split_mnist`.

  Example:
    >>> bench = rotated_mnist(2, rotations_list=[0, 90])
    >>> bench.input_shape
    (28, 28, 1)
  """
  n_experiences = _validation.check_positive_int("n_experiences",
                                                 n_experiences)
  _validation.check_seed("seed", seed)
  if rotations_list is not None:
    rotations_list = generators.check_angles("rotations_list", rotations_list,
                                             n_experiences)
  train, test = _mnist("rotated_mnist", data_dir)
  return generators.rotated(
      train, test, n_experiences, seed=seed, angles=rotations_list,
      return_task_id=return_task_id,
      preprocess=normalizer(MNIST_MEAN, MNIST_STD), name="rotated_mnist")


def _image_folder(root: Path, splits: Sequence[str],
                  shape: tuple[int, int, int], advice: str):
  """Reads splits of a ``root/split/label/image`` folder with tfds.ImageFolder.

  Returns:
    The splits' arrays and the sorted label names (label ``i`` is the
    ``i``-th name).
  """
  import tensorflow_datasets as tfds  # Lazy: tfds import is not free.

  from jaxcl.benchmarks import sources
  missing = [s for s in splits if not (root / s).is_dir()]
  if missing:
    raise ValueError(f"{root} lacks the image folders {missing}. {advice}")
  builder = tfds.ImageFolder(str(root), shape=shape)
  try:
    arrays = [sources._read_with_tensorflow(builder, s)  # pylint: disable=protected-access
              for s in splits]
  except Exception as error:  # TensorFlow's decoding errors, for one.
    raise ValueError(f"Cannot read the images under {root} as {shape} images "
                     f"({type(error).__name__}). {advice}") from error
  return arrays, builder.info.features["label"].names


_TINY_IMAGENET_ADVICE = (
    "Prepare Tiny ImageNet once: download and unzip "
    "http://cs231n.stanford.edu/tiny-imagenet-200.zip, then run "
    "`jaxcl.benchmarks.prepare_tiny_imagenet('tiny-imagenet-200', DIR)`, which "
    "links the images into DIR/tiny_imagenet/{train,test}/<wnid>/ (the "
    "validation images become the test split), and pass data_dir=DIR.")


@_validation.checks_bool_arguments
def prepare_tiny_imagenet(source_dir: PathLike, data_dir: PathLike, *,
                          link: bool = True) -> Path:
  """Lays the official Tiny ImageNet out as a ``tfds.ImageFolder`` directory.

  Args:
    source_dir: The unzipped ``tiny-imagenet-200`` (``train/<wnid>/images``,
      ``val/images`` and ``val/val_annotations.txt``); ``~`` is expanded.
    data_dir: Where to write ``tiny_imagenet/{train,test}/<wnid>/`` (``~``
      is expanded).
    link: Symlink the images (else copy them).

  Returns:
    The ``data_dir/tiny_imagenet`` folder.

  Example:
    >>> prepare_tiny_imagenet("tiny-imagenet-200", "data")  # doctest: +SKIP
    PosixPath('data/tiny_imagenet')
  """
  source = Path(source_dir).expanduser()
  target = Path(data_dir).expanduser() / "tiny_imagenet"
  annotations = source / "val" / "val_annotations.txt"
  if not (source / "train").is_dir() or not annotations.is_file():
    raise ValueError(f"{source} is not an unzipped tiny-imagenet-200 folder: "
                     "expected train/<wnid>/images/ and val/val_annotations.txt.")
  place = os.symlink if link else shutil.copy2
  files = [(path, target / "train" / path.parent.parent.name / path.name)
           for path in sorted((source / "train").glob("*/images/*"))]
  for number, line in enumerate(annotations.read_text().splitlines(), 1):
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) < 2:
      raise ValueError(f"{annotations}, line {number}: expected "
                       f"'<image name>\\t<wnid>\\t...', got {line!r}.")
    name, wnid = fields[:2]
    files.append((source / "val" / "images" / name,
                  target / "test" / wnid / name))
  for src, dst in files:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
      place(src.resolve(), dst)
  return target


def _folder_root(benchmark: str, data_dir: PathLike | None, folder: str,
                 advice: str) -> Any:
  if data_dir is None:
    raise ValueError(f"{benchmark} is not in tfds and not bundled: it needs "
                     f"data_dir (CLI: --data-dir DIR), a directory holding "
                     f"{folder}/. {advice}")
  from etils import epath  # Lazy, as tfds: keeps gs:// paths whole.

  from jaxcl.benchmarks import sources
  return epath.Path(sources.expand_data_dir(data_dir)) / folder


@_validation.checks_bool_arguments
def split_tiny_imagenet(
    n_experiences: int = 10,
    *,
    return_task_id: bool = False,
    seed: int = 0,
    fixed_class_order: Sequence[int] | None = None,
    shuffle: bool = True,
    class_ids_from_zero_in_each_exp: bool = False,
    class_ids_from_zero_from_first_exp: bool = False,
    data_dir: PathLike | None = None,
) -> Benchmark:
  """SplitTinyImageNet: Tiny ImageNet's 200 classes (64x64x3) split by classes.

  Tiny ImageNet is not in tfds: it is read with ``tfds.ImageFolder`` from
  ``data_dir/tiny_imagenet/{train,test}/<wnid>/*.JPEG`` (see
  :func:`prepare_tiny_imagenet`; the official validation set is the test
  set). Labels are the wnids' sorted positions. Normalised with CIFAR-10's
  constants and flipped horizontally in training, as in Avalanche. Reading
  the JPEGs imports TensorFlow (kept off the accelerators).

  Arguments as :func:`split_mnist`.

  Example:
    >>> bench = split_tiny_imagenet(10, data_dir="data")  # doctest: +SKIP
  """
  _check_split(200, n_experiences, seed,
               fixed_class_order=fixed_class_order,
               relabelling=(class_ids_from_zero_in_each_exp,
                            class_ids_from_zero_from_first_exp))
  root = _folder_root("split_tiny_imagenet", data_dir, "tiny_imagenet",
                      _TINY_IMAGENET_ADVICE)
  splits, _ = _image_folder(root, ("train", "test"), (64, 64, 3),
                            _TINY_IMAGENET_ADVICE)
  return _split("split_tiny_imagenet", splits, n_experiences, CIFAR10_MEAN,
                CIFAR10_STD, _FLIP, return_task_id=return_task_id, seed=seed,
                fixed_class_order=fixed_class_order, shuffle=shuffle,
                class_ids_from_zero_in_each_exp=class_ids_from_zero_in_each_exp,
                class_ids_from_zero_from_first_exp=(
                    class_ids_from_zero_from_first_exp))


_IMAGENET_SIZES = (8, 16, 32, 64)


@_validation.checks_bool_arguments
def split_imagenet(
    n_experiences: int = 10,
    *,
    per_exp_classes: Mapping[int, int] | None = None,
    image_size: int | None = None,
    full_resolution: bool = False,
    fast_decode: bool = False,
    return_task_id: bool = False,
    seed: int = 0,
    fixed_class_order: Sequence[int] | None = None,
    shuffle: bool = True,
    class_ids_from_zero_in_each_exp: bool = False,
    class_ids_from_zero_from_first_exp: bool = False,
    data_dir: PathLike | None = None,
    lazy: bool = True,
    split_over_hosts: bool = False,
) -> Benchmark:
  """SplitImageNet: ImageNet's 1,000 classes split by classes.

  Two sources of the same 1.28 million training images and 50,000
  validation images (the test set here):

  * ``full_resolution=False`` (default): tfds
    ``imagenet_resized/<image_size>x<image_size>`` (Chrabaszcz et al., "A
    downsampled variant of ImageNet as an alternative to the CIFAR
    datasets", 2017: box-resized to 8, 16, 32 or 64 pixels, default 64).
    Its labels are that dataset's (they do not follow ``imagenet2012``'s
    order). Training batches get a random crop (padding 4) and a horizontal
    flip, jaxcl's choice for such small images.
  * ``full_resolution=True``: tfds ``imagenet2012`` (which tfds builds from
    the official archives, downloaded by hand), as Avalanche's
    ``SplitImageNet``: every image is resized on the host as it is read,
    its shorter side to ``round(image_size * 256 / 224)`` and its central
    ``image_size`` square kept (default 224: Avalanche's ``Resize(256)``,
    ``CenterCrop(224)``, for training and test alike, without
    augmentation). Labels follow the sorted WordNet ids, as torchvision's.
    Needs the dataset prepared in ArrayRecord format.

  Normalised with ImageNet's mean and std. The images stay in the tfds
  files until an experience reads them (``lazy=True``, the default here:
  the 64-pixel training set is 15.7 GB in memory, the 224-pixel one
  193 GB), so a run decodes (and resizes) only the batches it trains on.

  ``fast_decode=True`` (with ``full_resolution``) decodes the JPEG files at
  a reduced scale where the output is much smaller than the stored image
  (``ResizedSource(draft=True)``: several times faster at small
  ``image_size``, pixels close to but not the same as Avalanche's).

  Arguments as :func:`split_cifar10`, plus ``image_size``,
  ``full_resolution``, ``fast_decode`` and, as Avalanche's,
  ``per_exp_classes``
  (``{experience index: number of classes}`` for some experiences, the
  other classes split evenly over the others).

  Example:
    >>> bench = split_imagenet(10, image_size=32,
    ...                        data_dir="~/tfds")  # doctest: +SKIP
    >>> bench = split_imagenet(10, full_resolution=True,
    ...                        data_dir="~/tfds")  # doctest: +SKIP
  """
  if fast_decode and not full_resolution:
    raise ValueError("fast_decode=True decodes full-resolution JPEG files, "
                     "but imagenet_resized stores small decoded images; "
                     "expected full_resolution=True with it.")
  if full_resolution:
    image_size = _validation.check_positive_int(
        "image_size", 224 if image_size is None else image_size)
  elif image_size is None:
    image_size = 64
  elif (isinstance(image_size, bool)
        or not isinstance(image_size, (int, np.integer))
        or image_size not in _IMAGENET_SIZES):
    raise ValueError(f"image_size must be one of {_IMAGENET_SIZES} "
                     f"(the sizes of tfds imagenet_resized), got "
                     f"{image_size!r}; any positive size with "
                     "full_resolution=True.")
  _check_split(1000, n_experiences, seed,
               fixed_class_order=fixed_class_order,
               relabelling=(class_ids_from_zero_in_each_exp,
                            class_ids_from_zero_from_first_exp),
               per_exp_classes=per_exp_classes)
  if full_resolution:
    from jaxcl.benchmarks import sources  # Lazy: tfds import is not free.
    sources.check_split_over_hosts(lazy, split_over_hosts)
    crop = resizing.resize_center_crop(image_size)
    splits = [sources.arrays_from_data_source(
        _open_resized("split_imagenet", "imagenet2012", data_dir, split, crop,
                      split_over_hosts=split_over_hosts,
                      fast_decode=fast_decode),
        lazy=lazy, split_over_hosts=split_over_hosts)
              for split in ("train", "validation")]
  else:
    splits = _load("split_imagenet", f"imagenet_resized/{image_size}x"
                   f"{image_size}", data_dir, ("train", "validation"),
                   lazy=lazy, split_over_hosts=split_over_hosts)
  return _split("split_imagenet", splits, n_experiences, IMAGENET_MEAN,
                IMAGENET_STD, None if full_resolution else _CROP_FLIP,
                per_exp_classes=per_exp_classes,
                return_task_id=return_task_id, seed=seed,
                fixed_class_order=fixed_class_order, shuffle=shuffle,
                class_ids_from_zero_in_each_exp=class_ids_from_zero_in_each_exp,
                class_ids_from_zero_from_first_exp=(
                    class_ids_from_zero_from_first_exp))


# tfds i_naturalist2018's supercategories, and the ten Avalanche's
# SplitInaturalist takes by default (those with over 100 images).
INATURALIST_SUPERCATEGORIES = (
    "Fungi", "Plantae", "Chromista", "Reptilia", "Aves", "Amphibia",
    "Actinopterygii", "Bacteria", "Animalia", "Protozoa", "Mammalia",
    "Insecta", "Arachnida", "Mollusca")
_INATURALIST_DEFAULT = ("Amphibia", "Animalia", "Arachnida", "Aves", "Fungi",
                        "Insecta", "Mammalia", "Mollusca", "Plantae",
                        "Reptilia")


def _check_super_categories(super_categories: Any) -> tuple[str, ...]:
  if super_categories is None:
    return _INATURALIST_DEFAULT
  if (isinstance(super_categories, str)
      or not isinstance(super_categories, Sequence) or not super_categories):
    raise ValueError(f"super_categories must be a non-empty sequence of "
                     f"names, e.g. ('Aves', 'Insecta'), got "
                     f"{super_categories!r}.")
  unknown = [c for c in super_categories
             if c not in INATURALIST_SUPERCATEGORIES]
  if unknown:
    raise ValueError(f"super_categories: {unknown!r} are not supercategories "
                     f"of iNaturalist 2018; expected names among "
                     f"{INATURALIST_SUPERCATEGORIES}.")
  twice = sorted({c for c in super_categories
                  if list(super_categories).count(c) > 1})
  if twice:
    raise ValueError(f"super_categories names {twice} more than once; "
                     "expected each supercategory once (one experience "
                     "each).")
  return tuple(super_categories)


def _supercategory_split(source: resizing.ResizedSource, names: Sequence[str],
                         chosen: Sequence[str], split: str, lazy: bool,
                         split_over_hosts: bool) -> tuple[Any, np.ndarray,
                                                          np.ndarray]:
  """The records of the ``chosen`` supercategories: images (a lazy view or
  read), labels and their supercategory's position in ``chosen``."""
  from jaxcl.benchmarks import sources  # Lazy: tfds import is not free.
  columns = sources.read_label_features(
      source, ("label", "supercategory"), split_over_hosts=split_over_hosts)
  position = np.full(len(names), -1)
  position[[names.index(c) for c in chosen]] = np.arange(len(chosen))
  group = position[columns[:, 1]]
  keep = np.flatnonzero(group >= 0)
  if keep.size == 0:
    raise ValueError(f"split_inaturalist: the {split!r} split has no image of "
                     f"the super_categories {list(chosen)}.")
  def view() -> sources.RecordArray:
    return sources.RecordArray(source, indices=keep)

  # The view reads its first image: agreed between the hosts, so that one
  # that fails makes the others raise rather than wait in a collective.
  images = (_hosts.read_together(f"split_inaturalist's {split!r} images",
                                 view) if split_over_hosts else view())
  return (images if lazy else np.asarray(images)), columns[keep, 0], group[keep]


def _classes_by_group(labels: np.ndarray, group: np.ndarray,
                      chosen: Sequence[str]) -> list[np.ndarray]:
  """Each chosen supercategory's classes (sorted), checked to be disjoint."""
  classes = [np.unique(labels[group == g]) for g in range(len(chosen))]
  for g, own in enumerate(classes):
    if own.size == 0:
      raise ValueError(f"split_inaturalist: super_categories {chosen[g]!r} "
                       "has no training image; its experience would be "
                       "empty.")
    for h in range(g):
      shared = np.intersect1d(own, classes[h])
      if shared.size:
        raise ValueError(
            f"split_inaturalist: classes {shared[:5].tolist()} have training "
            f"images of both {chosen[h]!r} and {chosen[g]!r}; every class "
            "must belong to one supercategory.")
  return classes


@_validation.checks_bool_arguments
def split_inaturalist(
    super_categories: Sequence[str] | None = None,
    *,
    image_size: int = 224,
    fast_decode: bool = False,
    return_task_id: bool = False,
    class_ids_from_zero_in_each_exp: bool = False,
    class_ids_from_zero_from_first_exp: bool = False,
    data_dir: PathLike | None = None,
    lazy: bool = True,
    split_over_hosts: bool = False,
) -> Benchmark:
  """SplitInaturalist: iNaturalist 2018, one supercategory per experience.

  As Avalanche's ``SplitInaturalist``: experience ``i`` holds every image
  of the classes (species) of ``super_categories[i]``, the test stream the
  validation images of the same classes; labels are tfds
  ``i_naturalist2018``'s species ids (0 to 8,141; the head spans them up
  to the largest chosen one) unless relabelled (older Avalanche versions
  relabelled each experience's classes from 0 with ``return_task_id``:
  ``class_ids_from_zero_in_each_exp=True`` here). The supercategories
  differ widely in size (Plantae and Insecta hold most of the 8,142
  species, Aves the most of the 437,513 training images; Mammalia has 234
  species). Within an experience, classes are in
  id order (Avalanche's follow a Python set).

  Every image is resized on the host as it is read, its shorter side to
  ``round(image_size * 256 / 224)`` and its central ``image_size`` square
  kept (default 224: Avalanche's ``Resize(256)``, ``CenterCrop(224)``,
  for training and test alike, without augmentation), and normalised with
  ImageNet's mean and std. Reading the labels takes one pass over the
  records with the images undecoded; the images stay in the tfds files
  until an experience reads them (``lazy=True``, the default: the default
  training set is 65 GB at 224 pixels). Needs the dataset prepared in
  ArrayRecord format.

  Args:
    super_categories: The supercategories, one experience each, in stream
      order (default: Avalanche's ten with over 100 images, Amphibia,
      Animalia, Arachnida, Aves, Fungi, Insecta, Mammalia, Mollusca,
      Plantae, Reptilia); names from
      :data:`INATURALIST_SUPERCATEGORIES`.
    image_size: Side of the square crops.
    fast_decode: Decode the JPEG files at a reduced scale where the crop is
      much smaller than the stored image (``ResizedSource(draft=True)``:
      several times faster at small ``image_size``, pixels close to but not
      the same as Avalanche's).
    return_task_id: Task label ``i`` for experience ``i``.
    class_ids_from_zero_in_each_exp: Relabel each experience's classes
      ``0..k-1``.
    class_ids_from_zero_from_first_exp: Relabel the classes by their
      position in the stream.
    data_dir: tfds data directory with ``i_naturalist2018``.
    lazy: Leave the images in the tfds files until read.
    split_over_hosts: With ``lazy`` on several processes, each reads a
      share of the labels (a collective).

  Returns:
    A class-incremental :class:`Benchmark`, one experience per
    supercategory.

  Raises:
    ValueError: If ``super_categories`` names an unknown supercategory or
      one twice, or one has no training image; or the dataset is missing.

  Example:
    >>> bench = split_inaturalist(["Aves", "Insecta"], image_size=128,
    ...                           data_dir="~/tfds")  # doctest: +SKIP
  """
  chosen = _check_super_categories(super_categories)
  image_size = _validation.check_positive_int("image_size", image_size)
  generators.check_relabelling(class_ids_from_zero_in_each_exp,
                               class_ids_from_zero_from_first_exp)
  from jaxcl.benchmarks import sources  # Lazy: tfds import is not free.
  sources.check_split_over_hosts(lazy, split_over_hosts)
  crop = resizing.resize_center_crop(image_size)
  import tensorflow_datasets as tfds  # Lazy: tfds import is not free.
  splits = []
  for split in ("train", "validation"):
    source = _open_resized("split_inaturalist", "i_naturalist2018", data_dir,
                           split, crop, split_over_hosts=split_over_hosts,
                           fast_decode=fast_decode)
    # The ids' names, from the builder (a data source may not carry them).
    names = list(tfds.builder("i_naturalist2018", data_dir=sources
                              .expand_data_dir(data_dir)).info.features[
                                  "supercategory"].names)
    splits.append(_supercategory_split(source, names, chosen, split, lazy,
                                       split_over_hosts))
  (x_train, y_train, group), (x_test, y_test, _) = splits
  classes = _classes_by_group(y_train, group, chosen)
  return generators.class_incremental(
      (x_train, y_train), (x_test, y_test), len(chosen),
      per_exp_classes={i: len(c) for i, c in enumerate(classes)},
      fixed_class_order=np.concatenate(classes).tolist(),
      return_task_id=return_task_id,
      class_ids_from_zero_in_each_exp=class_ids_from_zero_in_each_exp,
      class_ids_from_zero_from_first_exp=class_ids_from_zero_from_first_exp,
      preprocess=normalizer(IMAGENET_MEAN, IMAGENET_STD),
      name="split_inaturalist")


_CORE50_ADVICE = (
    "Download core50_128x128.zip (or core50_32x32.zip for mini=True) from "
    "https://vlomonaco.github.io/core50/ and unzip it into data_dir, giving "
    "data_dir/core50_128x128/s1..s11/o1..o50/*.png.")

# Avalanche's CORe50 scenarios: where the official zips unpack each one's
# file lists (relative to data_dir), and its number of train experiences.
_CORE50_RUNS = {
    "ni": ("batches_filelists/NI_inc", 8),
    "nc": ("batches_filelists/NC_inc", 9),
    "nic": ("batches_filelists/NIC_inc", 79),
    "nicv2_79": ("NIC_v2_79", 79),
    "nicv2_196": ("NIC_v2_196", 196),
    "nicv2_391": ("NIC_v2_391", 391),
}
_CORE50_RUNS_ADVICE = (
    "Download batches_filelists.zip (ni, nc, nic) or "
    "batches_filelists_NICv2.zip (nicv2_*) from "
    "https://vlomonaco.github.io/core50/data/ and unzip them into data_dir, "
    "giving data_dir/batches_filelists/NI_inc/run0/ ... and "
    "data_dir/NIC_v2_391/run0/ ...")


@_validation.checks_bool_arguments
def core50(
    *,
    scenario: str = "ni",
    run: int | None = None,
    seed: int = 0,
    object_lvl: bool = True,
    mini: bool = False,
    data_dir: PathLike | None = None,
) -> Benchmark:
  """CORe50 (Lomonaco & Maltoni, 2017): 50 objects in 11 sessions.

  The images are read from the official folders
  (``data_dir/core50_128x128/s<session>/o<object>/*.png``; sessions 3, 7
  and 10 are the test set). Scenarios, as Avalanche's ``CORe50``:

  * ``"ni"``: 8 experiences, one per training session; one test experience
    with all test sessions.
  * ``"nc"``: 9 experiences: 10 objects then 5 per experience (with
    ``object_lvl=False``, seeded: 2 categories then 1; an official run's
    first 10 objects are one of each category).
  * ``"nic"``, ``"nicv2_79"``, ``"nicv2_196"``, ``"nicv2_391"``: 79, 79, 196
    or 391 experiences of new instances and new classes (only with
    ``run``).

  With ``run`` (0-9), the experiences are those of Avalanche's fixed run:
  the official file lists (``batches_filelists.zip`` for ni, nc and nic,
  ``batches_filelists_NICv2.zip`` for the NICv2 scenarios, unzipped into
  ``data_dir``), with one test experience holding the whole test set, as
  in Avalanche; ``seed`` is not used then. The labels are the lists' (the
  nc lists number the objects in order of appearance), the categories
  those of the images' object folders. Without it, ``"ni"`` and
  ``"nc"`` draw the session or class order from ``seed``, read with
  ``tfds.ImageFolder``, and ``"nc"`` has one test experience per training
  experience (its classes). Normalised with ImageNet's mean and std,
  flipped horizontally in training, as in Avalanche.

  Args:
    scenario: ``"ni"``, ``"nc"``, ``"nic"``, ``"nicv2_79"``,
      ``"nicv2_196"`` or ``"nicv2_391"``.
    run: Avalanche's run, 0-9 (the official file lists; Avalanche's
      default is 0); ``None`` draws the order from ``seed`` (``"ni"`` and
      ``"nc"`` only).
    seed: Seed of the session or class order, without ``run``.
    object_lvl: 50 object classes (else the 10 categories: objects 1-5
      are category 0, 6-10 category 1, and so on).
    mini: Use the 32x32 images (``core50_32x32``) instead of 128x128.
    data_dir: Directory holding ``core50_128x128`` (or ``core50_32x32``),
      and the file lists for ``run``.

  Returns:
    A :class:`Benchmark` (``new_instances`` or ``class_incremental``
    without ``run``).

  Example:
    >>> bench = core50(scenario="nicv2_391", run=0,
    ...                data_dir="data")  # doctest: +SKIP
    >>> len(bench.train_stream), len(bench.test_stream)  # doctest: +SKIP
    (391, 1)
  """
  _validation.check_choice("scenario", scenario, _CORE50_RUNS)
  if run is None and scenario not in ("ni", "nc"):
    raise ValueError(f"scenario={scenario!r} needs run=0..9: it exists only "
                     "as CORe50's official file lists; expected a run, or "
                     "scenario='ni' or 'nc' (drawn from the seed).")
  if run is not None and _validation.check_non_negative_int("run", run) > 9:
    raise ValueError(f"run must be one of CORe50's ten official runs, "
                     f"0..9, got {run}.")
  seed = _validation.check_seed("seed", seed)
  size = 32 if mini else 128
  folder = f"core50_{size}x{size}"
  root = _folder_root("core50", data_dir, folder, _CORE50_ADVICE)
  common = {"preprocess": normalizer(CORE50_MEAN, CORE50_STD),
            "augment": _FLIP, "name": f"core50_{scenario}"}
  if run is not None:
    return _core50_run(root, scenario, run, object_lvl, common)
  sessions = _CORE50_TRAIN + _CORE50_TEST
  arrays, names = _image_folder(root, tuple(f"s{s}" for s in sessions),
                                (size, size, 3), _CORE50_ADVICE)
  objects = np.array([int(n.removeprefix("o")) - 1 for n in names])
  labels = [objects[a.y] if object_lvl else objects[a.y] // 5 for a in arrays]
  n_train = len(_CORE50_TRAIN)

  def pooled(parts):
    return (np.concatenate([arrays[i].x for i in parts]),
            np.concatenate([labels[i] for i in parts]))

  train = pooled(range(n_train))
  test = pooled(range(n_train, len(sessions)))
  if scenario == "ni":
    bounds = np.cumsum([0] + [len(labels[i]) for i in range(n_train)])
    order = np.random.default_rng(seed).permutation(n_train)
    assignment = [np.arange(bounds[i], bounds[i + 1]) for i in order]
    return generators.new_instances(train, test, n_train,
                                    fixed_exp_assignment=assignment, **common)
  return generators.class_incremental(
      train, test, 9, per_exp_classes={0: 10 if object_lvl else 2}, seed=seed,
      **common)


def _core50_run(images: Any, scenario: str, run: int, object_lvl: bool,
                common: dict[str, Any]) -> Benchmark:
  """CORe50's official run ``run`` of ``scenario``, from its file lists."""
  images = _local_folder(images, f"core50 with run={run}", _CORE50_ADVICE)
  lists_folder, n_experiences = _CORE50_RUNS[scenario]
  names = [f"train_batch_{k:02d}_filelist.txt" for k in range(n_experiences)]
  return _from_official_lists(
      images, images.parent / lists_folder / f"run{run}",
      [*names, "test_filelist.txt"], f"CORe50 {scenario} run {run}",
      _CORE50_RUNS_ADVICE, common,
      relabel=None if object_lvl else _core50_category,
      images_advice=_CORE50_ADVICE)


def _local_folder(folder: Any, what: str, advice: str) -> Path:
  """``folder`` (from :func:`_folder_root`) as a local path that exists."""
  if "://" in str(folder):
    raise ValueError(f"{what} reads its images with Pillow from a local "
                     f"folder, got {folder}; expected data_dir on a local "
                     "file system.")
  folder = Path(str(folder))
  if not folder.is_dir():
    raise ValueError(f"{folder} is not a folder. {advice}")
  return folder


def _from_official_lists(
    images: Path, lists: Path, names: Sequence[str], what: str, advice: str,
    common: dict[str, Any],
    relabel: Callable[[Path, Path], int] | None = None,
    images_advice: str | None = None,
) -> Benchmark:
  """A benchmark's official train file lists and its one test list (the
  last of ``names``, in ``lists``; the images' paths relative to
  ``images``); ``relabel(image, file_list)`` replaces the lists' labels.
  Everything the lists name is checked before any image is decoded; the
  errors end with ``advice`` (``images_advice`` for absent images)."""
  missing = [name for name in names if not (lists / name).is_file()]
  if missing:
    shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    raise ValueError(f"{lists} lacks {len(missing)} of the {len(names)} file "
                     f"lists of {what} ({shown}). {advice}")
  experiences = []
  for name in names:
    entries = files.read_filelist(lists / name, root=images)
    if not entries:
      raise ValueError(f"The file list {lists / name} names no image; "
                       f"expected the official lists. {advice}")
    absent = [path for path, _ in entries if not path.is_file()]
    if absent:
      raise ValueError(f"{len(absent)} of the {len(entries)} images the file "
                       f"list {lists / name} names are not under {images} "
                       f"(first: {absent[0]}). {images_advice or advice}")
    experiences.append([(path, label if relabel is None
                         else relabel(path, lists / name))
                        for path, label in entries])
  trained = {label for entries in experiences[:-1] for _, label in entries}
  unknown = sorted({label for _, label in experiences[-1]} - trained)
  if unknown:
    raise ValueError(f"The test list {lists / names[-1]} has labels "
                     f"{unknown} that no train list of {what} has; expected "
                     "the official lists.")
  return files.paths_benchmark(experiences[:-1], experiences[-1:],
                               complete_test_set_only=True, **common)


def _core50_category(image: Path, filelist: Path) -> int:
  """The category of a listed image, from its object folder ``o<1..50>``
  (the nc lists renumber the objects, so their labels do not give it)."""
  folder = image.parent.name
  if not (folder.startswith("o") and folder[1:].isdigit()
          and 1 <= int(folder[1:]) <= 50):
    raise ValueError(f"{filelist} lists {image}, which is not in an object "
                     "folder o1..o50; expected CORe50's s<session>/o<object>/"
                     "<image> paths.")
  return (int(folder[1:]) - 1) // 5


# OpenLORIS-Object's factors: their file lists' folder (under
# batches_filelists/domain/, as batches_filelists.zip unpacks) and number of
# train experiences.
_OPENLORIS_FACTORS = {"clutter": ("clutter", 9),
                      "illumination": ("illumination", 9),
                      "occlusion": ("occlusion", 9), "pixel": ("pixel", 9),
                      "mixture-iros": ("iros", 12)}
_OPENLORIS_ADVICE = (
    "Download the image archives (train, validation, test) and "
    "batches_filelists.zip of OpenLORIS-Object "
    "(https://lifelong-robotic-vision.github.io/dataset/object) and unzip "
    "them into data_dir/openloris, giving data_dir/openloris/"
    "batches_filelists/domain/<factor>/train_batch_00.txt (the folder iros "
    "for mixture-iros) and the images those lists name.")


@_validation.checks_bool_arguments
def openloris(
    *,
    factor: str = "clutter",
    image_size: int | None = 50,
    data_dir: PathLike | None = None,
) -> Benchmark:
  """OpenLORIS-Object (She et al., 2020): a robot's views of 69 objects.

  Avalanche's ``OpenLORIS``: one experience per official file list of
  ``factor`` (``batches_filelists/domain/<factor>/train_batch_XX.txt``), one
  test experience holding the factor's ``test.txt``, labels as listed, task
  label 0. The factors are the environment's variations: ``"clutter"``,
  ``"illumination"``, ``"occlusion"``, ``"pixel"`` (9 experiences each,
  the ICRA 2020 paper's) and ``"mixture-iros"`` (12, the IROS 2019
  lifelong robotic vision competition's). The object crops come in many
  sizes (the pixel factor is their size); they are decoded with Pillow on
  the host, resized to ``image_size`` x ``image_size`` (50, as the
  dataset's own benchmark code; Avalanche applies no transform by default)
  and scaled to ``x / 255`` on the device, as Avalanche with
  ``ToTensor``; no augmentation.

  Args:
    factor: ``"clutter"``, ``"illumination"``, ``"occlusion"``, ``"pixel"``
      or ``"mixture-iros"``.
    image_size: Side to resize every image to (bilinear); ``None`` keeps
      their size, which must then be the same for every image (they are
      not, in the released dataset).
    data_dir: Directory holding ``openloris/`` (the unzipped official
      archives), on a local file system.

  Returns:
    A domain-incremental :class:`Benchmark` (every experience holds the
    same objects).

  Example:
    >>> bench = openloris(factor="illumination",
    ...                   data_dir="~/data")  # doctest: +SKIP
    >>> len(bench.train_stream), len(bench.test_stream)  # doctest: +SKIP
    (9, 1)
  """
  _validation.check_choice("factor", factor, _OPENLORIS_FACTORS)
  if image_size is not None:
    image_size = _validation.check_positive_int("image_size", image_size)
  root = files.local_data_dir("openloris", data_dir,
                              _OPENLORIS_ADVICE) / "openloris"
  if not root.is_dir():
    raise ValueError(f"{root} is not a folder. {_OPENLORIS_ADVICE}")
  folder, n_experiences = _OPENLORIS_FACTORS[factor]
  names = [f"train_batch_{k:02d}.txt" for k in range(n_experiences)]
  return _from_official_lists(
      root, root / "batches_filelists" / "domain" / folder,
      [*names, "test.txt"], f"OpenLORIS {factor}", _OPENLORIS_ADVICE,
      {"image_size": None if image_size is None else (image_size,) * 2,
       "name": f"openloris_{factor}"})


