"""Benchmarks of video frames: Stream-51 (Roady et al., 2020).

51 classes of objects filmed in short videos; the training frames come in
temporal order, so consecutive samples are highly correlated. Avalanche's
``CLStream51``: the frames are ordered by ``scenario`` (with Python's
``random``, seeded as Avalanche seeds it, so a seed gives Avalanche's
order), cut into experiences every ``eval_num`` classes (class orderings)
or samples (instance orderings), cropped to their object's bounding box
padded by ``ratio`` and resized on the host.

Example:
  >>> bench = stream51(scenario="class_instance", image_size=64,
  ...                  data_dir="~/data")  # doctest: +SKIP
  >>> len(bench.train_stream)  # doctest: +SKIP
  6
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxcl import _validation
from jaxcl.benchmarks import files, generators
from jaxcl.benchmarks.classic import IMAGENET_MEAN, IMAGENET_STD
from jaxcl.benchmarks.scenario import Benchmark, normalizer

__all__ = ["STREAM51_ORDERINGS", "stream51"]

STREAM51_ORDERINGS = ("iid", "class_iid", "instance", "class_instance")
"""Stream-51's orderings of the training frames (``scenario``)."""

_ADVICE = (
    "Download Stream-51.zip from https://tyler-hayes.github.io/stream51 and "
    "unzip it into data_dir, giving data_dir/Stream-51/"
    "Stream-51_meta_train.json, Stream-51_meta_test.json and the frames "
    "they name.")

# A metadata row: train [class, clip, video, frame, shape, box, path], test
# [class, shape, box, path]; a box is [right, left, bottom, top] in pixels,
# a shape [width, height].
Row = list[Any]


def _by_video(rows: Sequence[Row]) -> list[list[Row]]:
  """Consecutive train rows grouped into videos (a video starts at frame 0)."""
  videos: list[list[Row]] = []
  for row in rows:
    if row[3] == 0 or not videos:
      videos.append([])
    videos[-1].append(row)
  return videos


def _shuffled(items: list, seed: int) -> list:
  """``items`` shuffled as ``random.seed(seed); random.shuffle(items)``."""
  items = list(items)
  random.Random(seed).shuffle(items)
  return items


def _order(rows: Sequence[Row], ordering: str, seed: int) -> list[Row]:
  """The train rows in Stream-51's ``ordering``, as Avalanche orders them.

  ``iid``: all frames shuffled; ``instance``: whole videos shuffled;
  ``class_*``: the classes shuffled, each one's frames (``class_iid``) or
  videos (``class_instance``) shuffled within it.
  """
  if ordering == "iid":
    return _shuffled(rows, seed)
  if ordering == "instance":
    return [row for video in _shuffled(_by_video(rows), seed) for row in video]
  classes = []
  for label in sorted({row[0] for row in rows}):
    own = [row for row in rows if row[0] == label]
    classes.append(_order(own, ordering.removeprefix("class_"), seed))
  return [row for rows_of in _shuffled(classes, seed) for row in rows_of]


def _box(row: Row, ratio: float) -> tuple[int, int, int, int]:
  """The row's object box, padded by ``ratio`` around its centre, as
  ``(top, left, height, width)`` (Avalanche's arithmetic; the reader clips
  the bottom and right edges to the image)."""
  right, left, bottom, top = row[-2]
  width, height = right - left, bottom - top
  centre_x, centre_y = int(left + width / 2), int(top + height / 2)
  x0 = max(int(centre_x - width * ratio / 2), 0)
  y0 = max(int(centre_y - height * ratio / 2), 0)
  x1 = int(centre_x + width * ratio / 2)
  y1 = int(centre_y + height * ratio / 2)
  return y0, x0, max(y1 - y0, 1), max(x1 - x0, 1)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_row(row: Any, counters: int) -> bool:
  """Whether ``row`` is ``[class, *counters ints, ..., shape, box, path]``
  (the fields Avalanche reads; any others are not used)."""
  def numbers(value, n, kind):
    return (isinstance(value, list) and len(value) == n
            and all(kind(v) for v in value))

  return (isinstance(row, list) and len(row) >= counters + 4
          and _is_int(row[0]) and row[0] >= 0
          and all(_is_int(v) for v in row[1:1 + counters])
          and numbers(row[-3], 2, _is_int)
          and numbers(row[-2], 4, lambda v: _is_int(v) or isinstance(
              v, float))
          and isinstance(row[-1], str))


def _read_rows(root: Path, split: str) -> list[Row]:
  """The checked rows of a split's metadata file."""
  path = root / f"Stream-51_meta_{split}.json"
  if not path.is_file():
    raise ValueError(f"{path} does not exist. {_ADVICE}")
  try:
    rows = json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise ValueError(f"{path} is not valid JSON ({error}); expected the "
                     f"official metadata. {_ADVICE}") from error
  if not isinstance(rows, list) or not rows:
    raise ValueError(f"{path} names no frame; expected the official "
                     f"metadata. {_ADVICE}")
  counters = 3 if split == "train" else 0
  for number, row in enumerate(rows):
    if not _is_row(row, counters):
      raise ValueError(
          f"{path}, row {number}: expected [class (an integer >= 0), "
          + ("clip, video, frame (integers), " if counters else "")
          + "shape (2 integers), box (4 numbers), path], got "
          f"{row!r}.")
  return rows


def _check_frames(root: Path, rows: Sequence[Row]) -> None:
  """Refuses missing frames before any is decoded."""
  missing = [row[-1] for row in rows if not (root / row[-1]).is_file()]
  if missing:
    raise ValueError(f"{len(missing)} of the {len(rows)} frames the "
                     f"metadata names are not under {root} (first: "
                     f"{', '.join(missing[:3])}). {_ADVICE}")


def _experiences(rows: Sequence[Row], ordering: str,
                 eval_num: int) -> list[list[Row]]:
  """Train experiences: every ``eval_num`` frames (``iid``, ``instance``)
  or every ``eval_num`` classes in order of appearance (``class_*``)."""
  if not ordering.startswith("class_"):
    return [list(rows[i:i + eval_num]) for i in range(0, len(rows), eval_num)]
  starts = [0] + [i for i in range(1, len(rows))
                  if rows[i][0] != rows[i - 1][0]]
  return [list(rows[starts[i]:(starts[i + eval_num]
                               if i + eval_num < len(starts) else len(rows))])
          for i in range(0, len(starts), eval_num)]


@_validation.checks_bool_arguments
def stream51(
    *,
    scenario: str = "class_instance",
    seed: int = 10,
    eval_num: int | None = None,
    bbox_crop: bool = True,
    ratio: float = 1.1,
    image_size: int = 224,
    data_dir: str | os.PathLike | None = None,
) -> Benchmark:
  """Stream-51 by Avalanche's ``CLStream51``, read from the official files.

  The train frames are put in ``scenario``'s order with ``seed`` and cut
  into experiences:

  * ``"class_instance"`` (Avalanche's default), ``"class_iid"``: every
    ``eval_num`` classes (default 10: 6 experiences, the last with the
    51st class), the classes in a seeded order and, within a class, its
    videos (``class_instance``) or its frames (``class_iid``) shuffled.
    Test experience ``i`` holds the test frames of every class seen up to
    train experience ``i`` (Avalanche's cumulative test sets).
  * ``"instance"``, ``"iid"``: every ``eval_num`` frames (default 30,000),
    whole videos (``instance``) or single frames (``iid``) shuffled; one
    test experience, the whole test set.

  Avalanche offers only ``class_instance`` and ``instance``; ``iid`` and
  ``class_iid`` are its dataset's other two orderings, cut the same way.
  The test set's novelty frames (classes 51 and up, for open-set
  recognition) are left out; Avalanche's ``instance`` test set keeps them
  (counted as errors). Frames are cropped to their object's bounding box
  padded by ``ratio`` (``bbox_crop``), resized to ``image_size`` x
  ``image_size`` on the host (Pillow's bilinear filter; Avalanche's
  default transform resizes to 224) and normalised with ImageNet's mean
  and std; no augmentation. At 224 pixels the 150,736 train frames take
  22.7 GB of host memory; ``image_size=64`` takes 1.9 GB. The metadata is
  checked, and the frames it names looked for, before any is decoded.

  Args:
    scenario: One of :data:`STREAM51_ORDERINGS`.
    seed: Seed of the ordering (Avalanche's default, 10).
    eval_num: Classes (class orderings) or frames (the others) per
      experience; ``None``: 10 classes or 30,000 frames.
    bbox_crop: Crop the frames to their object's box.
    ratio: Padding of the box around its centre (at least 1).
    image_size: Side of the square images.
    data_dir: Folder holding the unzipped ``Stream-51/`` (the two metadata
      files and the frames they name), on a local file system.

  Returns:
    A class-incremental (class orderings) or domain-incremental
    :class:`Benchmark` over 51 classes, task label 0.

  Example:
    >>> bench = stream51(scenario="instance", eval_num=10_000,
    ...                  image_size=64, data_dir="~/data")  # doctest: +SKIP
  """
  _validation.check_choice("scenario", scenario, STREAM51_ORDERINGS)
  seed = _validation.check_seed("seed", seed)
  if eval_num is None:
    eval_num = 10 if scenario.startswith("class_") else 30_000
  eval_num = _validation.check_positive_int("eval_num", eval_num)
  ratio = _validation.check_in_range("ratio", ratio, low=1.0)
  image_size = _validation.check_positive_int("image_size", image_size)
  root = files.local_data_dir("stream51", data_dir, _ADVICE) / "Stream-51"
  train_rows = _order(_read_rows(root, "train"), scenario, seed)
  known = {row[0] for row in train_rows}
  test_rows = [row for row in _read_rows(root, "test") if row[0] in known]
  _check_frames(root, train_rows + test_rows)
  streams = _experiences(train_rows, scenario, eval_num)

  def images(rows: Sequence[Row]) -> np.ndarray:
    return files.read_images(
        [root / row[-1] for row in rows],
        boxes=[_box(row, ratio) for row in rows] if bbox_crop else None,
        image_size=(image_size, image_size), clip_boxes=True)

  def part(x: np.ndarray, rows: Sequence[Row]):
    y = np.array([row[0] for row in rows], np.int32)
    return x, y, np.zeros(len(rows), np.int32)

  train = [part(images(rows), rows) for rows in streams]
  test_x = images(test_rows)
  if scenario.startswith("class_"):
    test_labels = np.array([row[0] for row in test_rows])
    seen: set[int] = set()
    test = []
    for rows in streams:
      seen |= {row[0] for row in rows}
      keep = np.flatnonzero(np.isin(test_labels, sorted(seen)))
      test.append(part(test_x[keep], [test_rows[k] for k in keep]))
  else:
    test = [part(test_x, test_rows)]
  return generators.benchmark_from_parts(
      train, test, task_incremental=False, name=f"stream51_{scenario}",
      preprocess=normalizer(IMAGENET_MEAN, IMAGENET_STD), augment=None)
