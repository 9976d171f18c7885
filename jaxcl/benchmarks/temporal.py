"""Benchmarks whose experiences are periods of time: CLEAR (Lin et al., 2021).

CLEAR-10 and CLEAR-100 hold web images (YFCC100M) of 10 or 100 classes and
a background class, labelled per yearly bucket, so the visual world drifts
from one experience to the next (the domain changes, the classes do not).
Avalanche's ``CLEAR``, read from the unzipped official release.

Example:
  >>> bench = clear("clear10", data_dir="~/data")  # doctest: +SKIP
  >>> len(bench.train_stream), bench.n_classes  # doctest: +SKIP
  (10, 11)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxcl import _validation
from jaxcl.benchmarks import files, generators
from jaxcl.benchmarks.classic import IMAGENET_MEAN, IMAGENET_STD
from jaxcl.benchmarks.scenario import Benchmark, normalizer

__all__ = ["CLEAR_DATASETS", "CLEAR_PROTOCOLS", "clear"]

CLEAR_DATASETS = ("clear10", "clear100")
"""The CLEAR releases :func:`clear` reads (Avalanche's ``data_name``)."""

CLEAR_PROTOCOLS = ("streaming", "iid")
"""CLEAR's evaluation protocols (Avalanche's ``evaluation_protocol``)."""

def _advice(data_name: str) -> str:
  return (f"Download the {data_name} release "
          "(https://clear-benchmark.github.io) and unzip it into "
          f"data_dir/{data_name}, giving data_dir/{data_name}/train/"
          "labeled_metadata.json, train/class_names.txt, the test/ "
          "counterparts and the images they name.")


def _load_json(path: Path, advice: str) -> Any:
  if not path.is_file():
    raise ValueError(f"{path} does not exist. {advice}")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise ValueError(f"{path} is not valid JSON ({error}). "
                     f"{advice}") from error


def _class_names(split: Path, advice: str) -> list[str]:
  path = split / "class_names.txt"
  if not path.is_file():
    raise ValueError(f"{path} does not exist. {advice}")
  names = [line.strip() for line in path.read_text().splitlines()
           if line.strip()]
  if not names:
    raise ValueError(f"{path} names no class. {advice}")
  return names


def _buckets(split: Path, classes: list[str],
             advice: str) -> dict[str, list[tuple]]:
  """A split's ``(image, label)`` pairs by bucket, in the metadata's order:
  class by class (``class_names.txt``'s order gives the labels), each
  class's images in its metadata file's order."""
  index = split / "labeled_metadata.json"
  metadata = _load_json(index, advice)
  if not isinstance(metadata, dict) or not metadata:
    raise ValueError(f"{index} names no bucket; expected "
                     "{bucket: {class name: metadata file}}. " + advice)
  buckets = {}
  for bucket, by_class in metadata.items():
    if not isinstance(by_class, dict):
      raise ValueError(f"{index}: bucket {bucket!r} holds {by_class!r}; "
                       "expected {class name: metadata file}. " + advice)
    missing = sorted(set(classes) - set(by_class))
    if missing:
      raise ValueError(f"{index}: bucket {bucket!r} lacks the classes "
                       f"{missing} of class_names.txt. {advice}")
    pairs = []
    for label, name in enumerate(classes):
      if not isinstance(by_class[name], str):
        raise ValueError(f"{index}: bucket {bucket!r}, class {name!r} names "
                         f"{by_class[name]!r}; expected the path of its "
                         f"metadata file. {advice}")
      path = split / by_class[name]
      images = _load_json(path, advice)
      if not isinstance(images, dict):
        raise ValueError(f"{path} holds a {type(images).__name__}; expected "
                         "{id: {\"IMG_PATH\": path, ...}}. " + advice)
      for key, image in images.items():
        if not (isinstance(image, dict)
                and isinstance(image.get("IMG_PATH"), str)):
          raise ValueError(f"{path}: image {key!r} has no IMG_PATH; "
                           "expected {id: {\"IMG_PATH\": path, ...}}. "
                           + advice)
        pairs.append((split / image["IMG_PATH"], label))
    if not pairs:
      raise ValueError(f"{index}: bucket {bucket!r} names no image. {advice}")
    buckets[str(bucket)] = pairs
  return buckets


@_validation.checks_bool_arguments
def clear(
    data_name: str = "clear10",
    *,
    evaluation_protocol: str = "streaming",
    return_task_id: bool = False,
    image_size: int = 224,
    data_dir: str | os.PathLike | None = None,
) -> Benchmark:
  """CLEAR (Avalanche's ``CLEAR``): one experience per yearly bucket.

  ``data_dir/<data_name>/{train,test}/`` each hold ``class_names.txt``
  (the labels, in order, the background class among them) and
  ``labeled_metadata.json`` (per bucket, per class, a metadata file whose
  entries' ``IMG_PATH`` name the images, relative to the split's folder),
  as the release unzips. CLEAR's protocols (Avalanche's
  ``evaluation_protocol``; docs/benchmarks.md says where its loader
  differs):

  * ``"streaming"``: experience ``i`` trains on all of bucket ``i`` (its
    test images, then its train images), and the test stream is the same
    buckets: CLEAR's "next-domain" accuracy of bucket
    ``i`` is the accuracy matrix's entry ``[i, i + 1]``
    (:func:`jaxcl.evaluation.clear_metrics`).
  * ``"iid"``: experience ``i`` trains on bucket ``i``'s train split and
    test experience ``i`` is its test split (CLEAR's fixed 7:3 split;
    Avalanche's ``seed`` for it selects nothing in this release).

  Images are cropped to their central square and resized to
  ``image_size`` x ``image_size`` on the host (the region of Avalanche's
  example transform, ``Resize(224)`` and ``CenterCrop(224)``), normalised
  with ImageNet's mean and std; no augmentation.

  Args:
    data_name: One of :data:`CLEAR_DATASETS`.
    evaluation_protocol: One of :data:`CLEAR_PROTOCOLS`.
    return_task_id: Task label ``i`` for bucket ``i``, as Avalanche's
      benchmark assigns; by default task label 0 (domain-incremental).
    image_size: Side of the square images.
    data_dir: Folder holding ``<data_name>/``, on a local file system.

  Returns:
    A domain-incremental (or task-incremental) :class:`Benchmark`.

  Example:
    >>> bench = clear("clear100", evaluation_protocol="iid",
    ...               image_size=64, data_dir="~/data")  # doctest: +SKIP
  """
  _validation.check_choice("data_name", data_name, CLEAR_DATASETS)
  _validation.check_choice("evaluation_protocol", evaluation_protocol,
                           CLEAR_PROTOCOLS)
  image_size = _validation.check_positive_int("image_size", image_size)
  advice = _advice(data_name)
  root = files.local_data_dir("clear", data_dir, advice) / data_name
  classes = _class_names(root / "train", advice)
  if _class_names(root / "test", advice) != classes:
    raise ValueError(f"{root / 'test' / 'class_names.txt'} differs from "
                     f"{root / 'train' / 'class_names.txt'}; expected the "
                     f"same classes in the same order. {advice}")
  train, test = (_buckets(root / split, classes, advice)
                 for split in ("train", "test"))
  if list(train) != list(test):
    raise ValueError(f"The train buckets {list(train)} and the test "
                     f"buckets {list(test)} of {root} differ; expected the "
                     f"same buckets. {advice}")
  if evaluation_protocol == "streaming":
    train = {bucket: test[bucket] + pairs for bucket, pairs in train.items()}
  for pairs in (*train.values(), *test.values()):
    absent = [path for path, _ in pairs if not path.is_file()]
    if absent:
      raise ValueError(f"{len(absent)} image(s) the metadata of {root} "
                       f"names are not there (first: {absent[0]}). "
                       f"{advice}")

  def parts(buckets: dict[str, list[tuple]]) -> list[tuple]:
    return [(files.read_images([path for path, _ in pairs],
                               image_size=(image_size, image_size),
                               center_square=True),
             np.array([label for _, label in pairs], np.int32),
             np.full(len(pairs), task if return_task_id else 0, np.int32))
            for task, pairs in enumerate(buckets.values())]

  train_parts = parts(train)
  # Streaming evaluates on the buckets it trains on: one copy of them.
  test_parts = (train_parts if evaluation_protocol == "streaming"
                else parts(test))
  return generators.benchmark_from_parts(
      train_parts, test_parts, task_incremental=return_task_id,
      name=f"{data_name}_{evaluation_protocol}",
      preprocess=normalizer(IMAGENET_MEAN, IMAGENET_STD), augment=None)
