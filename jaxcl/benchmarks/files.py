"""Benchmarks from image files on disk: lists of paths, Caffe-style file lists.

Avalanche's ``paths_benchmark`` (``create_generic_benchmark_from_paths``)
and ``filelist_benchmark`` (``create_generic_benchmark_from_filelists``):
each train experience is a list of ``(path, label)`` pairs (or a file list
naming them), and so is each test experience, or one test list holds the
whole test set. The images are decoded once on the host (Pillow, in
threads), into one uint8 array per experience; from there they are like
any other benchmark's: put on the device, preprocessed and augmented inside
the compiled step. Folders laid out as ``split/label/image`` are read with
``tfds.ImageFolder`` instead (``split_tiny_imagenet``, ``core50`` without
``run``).

Example:
  >>> bench = paths_benchmark(  # doctest: +SKIP
  ...     [[("cat/1.png", 0), ("dog/1.png", 1)], [("car/1.png", 2)]],
  ...     [[("cat/2.png", 0), ("dog/2.png", 1)], [("car/2.png", 2)]],
  ...     image_size=(32, 32))
"""

from __future__ import annotations

import concurrent.futures
import inspect
import numbers
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxcl import _validation
from jaxcl.benchmarks import generators
from jaxcl.benchmarks.scenario import Augment, Benchmark, Preprocess, normalizer

__all__ = [
    "filelist_benchmark",
    "paths_benchmark",
    "read_filelist",
    "read_images",
]

PathLike = str | os.PathLike
# (path, label) or (path, label, (top, left, height, width)).
FileAndLabel = tuple[PathLike, int] | tuple[PathLike, int, Sequence[int]]
Box = tuple[int, int, int, int]

# Pillow decodes outside the GIL: a few threads read a folder several times
# faster than one.
_READ_THREADS = 8


def read_filelist(filelist: PathLike, *,
                  root: PathLike | None = None) -> list[tuple[Path, int]]:
  """Reads a Caffe-style file list: one ``path label`` pair per line.

  The label is the line's last field, so paths may hold spaces; blank
  lines are skipped.

  Args:
    filelist: The text file.
    root: Folder the paths are relative to (Avalanche's ``root``); ``None``
      keeps them as written (relative to the working directory).

  Returns:
    ``[(path, label), ...]`` in the file's order.

  Example:
    >>> read_filelist("train_0.txt", root="~/data/core50")  # doctest: +SKIP
    [(PosixPath('/home/me/data/core50/s1/o1/C_01_01_000.png'), 0), ...]
  """
  base = None if root is None else Path(root).expanduser()
  entries = []
  path = Path(filelist).expanduser()
  for number, line in enumerate(path.read_text().splitlines(), start=1):
    if not line.strip():
      continue
    fields = line.strip().rsplit(maxsplit=1)
    if len(fields) != 2 or not (fields[1].isascii()
                                and fields[1].isdigit()):
      raise ValueError(f"{path}, line {number}: expected 'path label' with a "
                       f"non-negative integer label, got {line!r}.")
    entries.append((Path(fields[0]) if base is None else base / fields[0],
                    int(fields[1])))
  return entries


def _check_box(name: str, box) -> Box:
  if not (isinstance(box, Sequence) and len(box) == 4 and all(
      isinstance(v, numbers.Integral) and not isinstance(v, bool)
      for v in box)):
    raise ValueError(f"{name} must be a box (top, left, height, width) of 4 "
                     f"integers, got {box!r}.")
  top, left, height, width = (int(v) for v in box)
  if top < 0 or left < 0 or height < 1 or width < 1:
    raise ValueError(f"{name} must have top, left >= 0 and height, width "
                     f">= 1, got {box!r}.")
  return top, left, height, width


def _check_image_size(image_size) -> tuple[int, int] | None:
  if image_size is None:
    return None
  if not (isinstance(image_size, Sequence) and len(image_size) == 2):
    raise ValueError(f"image_size must be (height, width), got "
                     f"{image_size!r}.")
  return tuple(_validation.check_positive_int(f"image_size[{i}]", v)
               for i, v in enumerate(image_size))


def _read_one(path: Path, box: Box | None, size: tuple[int, int] | None,
              mode: str, clip_box: bool = False,
              center_square: bool = False) -> np.ndarray:
  """One image as ``uint8[h, w, c]``: cropped to ``box`` (its part inside
  the image with ``clip_box``), then to its central square with
  ``center_square``, converted to ``mode`` (Pillow's "RGB" or "L"),
  resized to ``size``."""
  from PIL import Image  # Lazy: only file benchmarks decode images.

  try:
    with Image.open(path) as image:
      if box is not None:
        top, left, height, width = box
        if clip_box and top < image.height and left < image.width:
          height = min(height, image.height - top)
          width = min(width, image.width - left)
        if top + height > image.height or left + width > image.width:
          raise ValueError(
              f"The box (top, left, height, width) = {box} of {path} reaches "
              f"outside its {image.height}x{image.width} image.")
        image = image.crop((left, top, left + width, top + height))
      if center_square:
        side = min(image.height, image.width)
        # Where torchvision's CenterCrop puts it (Python's rounding).
        top = int(round((image.height - side) / 2.0))
        left = int(round((image.width - side) / 2.0))
        image = image.crop((left, top, left + side, top + side))
      if image.mode.startswith(("I", "F")):
        # Pillow clips them to 8 bits (a 16-bit image becomes 0 or 255).
        raise ValueError(
            f"{path} has {image.mode!r} pixels (more than 8 bits per "
            "channel), which Pillow clips when it converts them to 8 bits; "
            "convert it to 8-bit RGB or grayscale first.")
      image = image.convert(mode)
      if size is not None and (image.height, image.width) != size:
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
      pixels = np.asarray(image, np.uint8)
  except (OSError, Image.DecompressionBombError) as error:
    raise ValueError(f"Cannot read the image {path}: "
                     f"{type(error).__name__}: {error}") from error
  return pixels.reshape(*pixels.shape[:2], -1)


def local_data_dir(benchmark: str, data_dir: PathLike | None,
                   advice: str) -> Path:
  """The ``data_dir`` of a benchmark whose images Pillow reads: given, on a
  local file system, ``~`` expanded; ``advice`` says how to prepare it."""
  if data_dir is None:
    raise ValueError(f"{benchmark} is not in tfds and not bundled: it needs "
                     f"data_dir (CLI: --data-dir DIR). {advice}")
  from jaxcl.benchmarks import sources  # Lazy: tfds import is not free.
  data_dir = sources.expand_data_dir(data_dir)
  if "://" in data_dir:
    raise ValueError(f"{benchmark} reads its images with Pillow from a "
                     f"local folder, got data_dir={data_dir!r}; expected a "
                     "folder on a local file system.")
  return Path(data_dir)


@_validation.checks_bool_arguments
def read_images(paths: Sequence[PathLike], *,
                boxes: Sequence[Box | None] | None = None,
                image_size: tuple[int, int] | None = None,
                channels: int = 3, clip_boxes: bool = False,
                center_square: bool = False) -> np.ndarray:
  """Decodes image files into one ``uint8[n, height, width, channels]`` array.

  Args:
    paths: The image files (any format Pillow reads: PNG, JPEG, ...).
    boxes: Per image, ``None`` or a crop box ``(top, left, height, width)``
      applied first (Avalanche's third tuple element).
    clip_boxes: Crop to the part of a box inside its image (a box that
      starts inside it but reaches past its bottom or right edge, such as
      Stream-51's padded object boxes); otherwise such a box is an error.
    center_square: Crop every image (after its box) to its central square
      before resizing: torchvision's ``Resize(s)`` then ``CenterCrop(s)``
      keep the same region (they resample before cropping).
    image_size: ``(height, width)`` to resize every image to (Pillow's
      bilinear filter, which smooths when shrinking, like torchvision's
      ``Resize``); ``None`` keeps their size, which must then be the same
      for every image.
    channels: 3 (RGB, Avalanche's default loader) or 1 (grayscale).

  As with Avalanche's loader, an alpha channel is dropped and EXIF
  orientation is not applied. Images of more than 8 bits per channel
  (16-bit, float) are refused: Pillow would clip them to 8 bits.

  Returns:
    The images, in the order of ``paths``.

  Example:
    >>> x = read_images(["a.png", "b.jpg"],  # doctest: +SKIP
    ...                 image_size=(32, 32))
    >>> x.shape, x.dtype  # doctest: +SKIP
    ((2, 32, 32, 3), dtype('uint8'))
  """
  if isinstance(paths, (str, os.PathLike)) or not isinstance(paths, Sequence):
    raise TypeError(f"paths must be a sequence of image paths, got "
                    f"{type(paths).__name__}.")
  if not paths:
    raise ValueError("paths is empty; expected at least one image.")
  if boxes is None:
    boxes = [None] * len(paths)
  if len(boxes) != len(paths):
    raise ValueError(f"boxes has {len(boxes)} entries for {len(paths)} "
                     "paths; expected one per path (None for no crop).")
  boxes = [None if b is None else _check_box(f"boxes[{i}]", b)
           for i, b in enumerate(boxes)]
  size = _check_image_size(image_size)
  if isinstance(channels, bool) or channels not in (1, 3):
    raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got "
                     f"{channels!r}.")
  mode = "RGB" if channels == 3 else "L"
  paths = [Path(p).expanduser() for p in paths]
  first = _read_one(paths[0], boxes[0], size, mode, clip_boxes,
                    center_square)
  # Filled in place: a list of images and its stack would double the peak.
  images = np.empty((len(paths), *first.shape), np.uint8)
  images[0] = first

  def fill(k: int) -> None:
    image = _read_one(paths[k], boxes[k], size, mode, clip_boxes,
                      center_square)
    if image.shape != first.shape:
      raise ValueError(
          f"{paths[k]} is {image.shape[0]}x{image.shape[1]} but {paths[0]} "
          f"is {first.shape[0]}x{first.shape[1]}; pass image_size=(height, "
          "width) to resize every image to one size.")
    images[k] = image

  with concurrent.futures.ThreadPoolExecutor(_READ_THREADS) as pool:
    for done in pool.map(fill, range(1, len(paths))):
      del done  # map re-raises the first failure, in order.
  return images


def _check_lists(name: str, lists) -> list[list[tuple]]:
  """``lists`` as a list (per experience) of lists of checked tuples."""
  if isinstance(lists, (str, os.PathLike)) or not isinstance(lists, Sequence) \
      or not lists:
    raise ValueError(f"{name} must be a non-empty sequence with one list of "
                     f"(path, label) pairs per experience, got {lists!r}.")
  checked = []
  for k, files in enumerate(lists):
    if isinstance(files, (str, os.PathLike)) or not isinstance(
        files, Sequence) or not files:
      raise ValueError(f"{name}[{k}] must be a non-empty list of (path, "
                       f"label) pairs, got {files!r}.")
    entries = []
    for i, entry in enumerate(files):
      where = f"{name}[{k}][{i}]"
      if not (isinstance(entry, Sequence) and len(entry) in (2, 3)
              and isinstance(entry[0], (str, os.PathLike))):
        raise ValueError(f"{where} must be (path, label) or (path, label, "
                         f"(top, left, height, width)), got {entry!r}.")
      label = entry[1]
      if (isinstance(label, bool) or not isinstance(label, numbers.Integral)
          or label < 0):
        raise ValueError(f"{where} has label {label!r}; expected a "
                         "non-negative integer class id.")
      box = (None if len(entry) == 2 or entry[2] is None
             else _check_box(f"{where}'s box", entry[2]))
      entries.append((entry[0], int(label), box))
    checked.append(entries)
  return checked


def _check_task_labels(task_labels, n_experiences: int) -> list[int]:
  if task_labels is None:
    return [0] * n_experiences
  if isinstance(task_labels, np.ndarray) and task_labels.ndim == 1:
    task_labels = task_labels.tolist()
  if not isinstance(task_labels, Sequence) or len(task_labels) != n_experiences:
    raise ValueError(f"task_labels must hold one task label per train "
                     f"experience ({n_experiences}), got {task_labels!r}.")
  return [_validation.check_non_negative_int(f"task_labels[{k}]", t)
          for k, t in enumerate(task_labels)]


@_validation.checks_bool_arguments
def paths_benchmark(
    train_lists_of_files: Sequence[Sequence[FileAndLabel]],
    test_lists_of_files: Sequence[Sequence[FileAndLabel]],
    *,
    task_labels: Sequence[int] | None = None,
    complete_test_set_only: bool = False,
    image_size: tuple[int, int] | None = None,
    channels: int = 3,
    preprocess: Preprocess | None = None,
    augment: Augment | None = None,
    name: str = "paths_benchmark",
) -> Benchmark:
  """One experience per list of image files (Avalanche's ``paths_benchmark``).

  Labels are kept as given (``n_classes`` is the largest plus one).

  Args:
    train_lists_of_files: Per train experience, its ``(path, label)`` or
      ``(path, label, (top, left, height, width))`` tuples; the box crops
      the image before anything else.
    test_lists_of_files: The same per test experience: one list per train
      experience, or a single list with ``complete_test_set_only``.
    task_labels: One task label per experience (the train experience and its
      test experience); ``None``: all 0 (Avalanche requires them).
    complete_test_set_only: The test stream is one experience holding the
      whole test set (the accuracy matrix has one column).
    image_size: ``(height, width)`` to resize every image to; ``None``
      keeps their size, which must be the same for every image.
    channels: 3 (RGB, Avalanche's default loader) or 1 (grayscale).
    preprocess: On-device preprocessing of the uint8 images; by default
      ``x / 255`` (torchvision's ``ToTensor``). Pass
      ``jaxcl.benchmarks.normalizer(mean, std)`` to normalise.
    augment: On-device training augmentation ``(x, key) -> x``.
    name: Name of the benchmark for logs.

  Returns:
    A :class:`Benchmark`, task-incremental when ``task_labels`` holds
    several distinct labels.

  Example:
    >>> bench = paths_benchmark(  # doctest: +SKIP
    ...     [[("a0.png", 0), ("a1.png", 1)], [("b0.png", 2)]],
    ...     [[("t0.png", 0), ("t1.png", 1), ("t2.png", 2)]],
    ...     complete_test_set_only=True, image_size=(32, 32))
  """
  return _benchmark(train_lists_of_files, test_lists_of_files,
                    ("train_lists_of_files", "test_lists_of_files"),
                    task_labels=task_labels,
                    complete_test_set_only=complete_test_set_only,
                    image_size=image_size, channels=channels,
                    preprocess=preprocess, augment=augment, name=name)


@_validation.checks_bool_arguments
def _benchmark(train_lists, test_lists, names: tuple[str, str], *,
               task_labels, complete_test_set_only: bool, image_size,
               channels: int, preprocess: Preprocess | None,
               augment: Augment | None, name: str) -> Benchmark:
  """:func:`paths_benchmark`, with errors naming the caller's ``names`` of
  the train and test lists; everything is checked before a file is read."""
  train_name, test_name = names
  train = _check_lists(train_name, train_lists)
  test = _check_lists(test_name, test_lists)
  tasks = _check_task_labels(task_labels, len(train))
  expected = 1 if complete_test_set_only else len(train)
  if len(test) != expected:
    why = ("complete_test_set_only=True" if complete_test_set_only else
           f"one per train experience ({len(train)}); complete_test_set_only"
           "=True takes one list holding the whole test set")
    raise ValueError(f"{test_name} has {len(test)} lists; expected "
                     f"{expected}: {why}.")
  if complete_test_set_only and len(set(tasks)) > 1:
    raise ValueError(
        f"complete_test_set_only=True gives the test samples no task label "
        f"of their own, but task_labels is {list(tasks)}; give one test list "
        "per train experience instead.")
  labels = [np.array([label for _, label, _ in files], np.int32)
            for files in train + test]
  unknown = np.setdiff1d(np.concatenate(labels[len(train):]),
                         np.concatenate(labels[:len(train)]))
  if unknown.size:
    raise ValueError(f"{test_name} has labels {unknown.tolist()} that no "
                     "train experience has; expected test classes among the "
                     "train classes.")
  _check_image_size(image_size)
  entries = [entry for files in train + test for entry in files]
  x = read_images([p for p, _, _ in entries], boxes=[b for _, _, b in entries],
                  image_size=image_size, channels=channels)
  ends = np.cumsum([len(y) for y in labels])
  parts = [(x_k, y, np.full(len(y), task, np.int32))
           for x_k, y, task in zip(np.split(x, ends[:-1]), labels,
                                   tasks + tasks[:len(test)])]
  return generators.benchmark_from_parts(
      parts[:len(train)], parts[len(train):],
      task_incremental=len(set(tasks)) > 1, name=name,
      preprocess=normalizer(0.0, 1.0) if preprocess is None else preprocess,
      augment=augment)


def filelist_benchmark(
    root: PathLike | None,
    train_file_lists: Sequence[PathLike],
    test_file_lists: Sequence[PathLike] | PathLike,
    **options,
) -> Benchmark:
  """One experience per Caffe-style file list (Avalanche's
  ``filelist_benchmark``).

  Each file list names an experience's images, one ``path label`` per line
  (:func:`read_filelist`); the rest is :func:`paths_benchmark`.

  Args:
    root: Folder the listed paths are relative to; ``None`` keeps them as
      written.
    train_file_lists: One file list per train experience.
    test_file_lists: One file list per test experience, or (with
      ``complete_test_set_only``) one file list, given alone or in a list.
    **options: :func:`paths_benchmark`'s keyword arguments
      (``task_labels``, ``complete_test_set_only``, ``image_size``,
      ``channels``, ``preprocess``, ``augment``, ``name``; ``name``
      defaults to ``"filelist_benchmark"``).

  Returns:
    A :class:`Benchmark`.

  Example:
    >>> bench = filelist_benchmark(  # doctest: +SKIP
    ...     "~/data/core50", ["train_0.txt", "train_1.txt"], "test.txt",
    ...     complete_test_set_only=True, image_size=(64, 64))
  """
  if isinstance(test_file_lists, (str, os.PathLike)):
    test_file_lists = [test_file_lists]
  names = ("train_file_lists", "test_file_lists")
  lists = []
  for argument, file_lists in zip(names, (train_file_lists, test_file_lists)):
    if isinstance(file_lists, (str, os.PathLike)) or not isinstance(
        file_lists, Sequence) or not file_lists:
      raise ValueError(f"{argument} must be a non-empty sequence of file "
                       f"lists, one per experience, got {file_lists!r}.")
    experiences = [read_filelist(f, root=root) for f in file_lists]
    for f, entries in zip(file_lists, experiences):
      if not entries:
        raise ValueError(f"The file list {f} ({argument}) names no image; "
                         "expected one 'path label' line per image.")
    lists.append(experiences)
  # paths_benchmark's keyword arguments and defaults, but for the name.
  defaults = {k: p.default for k, p in
              inspect.signature(paths_benchmark).parameters.items()
              if p.kind is p.KEYWORD_ONLY}
  unknown = sorted(set(options) - set(defaults))
  if unknown:
    raise TypeError(f"filelist_benchmark got unexpected keyword arguments "
                    f"{unknown}; expected some of {sorted(defaults)}.")
  return _benchmark(*lists, names, **{**defaults, "name": "filelist_benchmark",
                                      **options})
