"""tfds images of varying sizes, resized on the host as they are read.

Datasets of photographs (ImageNet, iNaturalist, CUB-200) store each image at
its own size. A :class:`ResizedSource` wraps a random-access tfds data source
so that every record it serves holds an image of one fixed size, resized with
Pillow when the record is read: lazy benchmarks (``RecordArray``) then decode
and resize only the batches a run streams, and their pass over the labels
leaves the images undecoded. Stored image files are decoded and resized on
several threads.

Example:
  >>> records = [{"image": np.zeros((300, 400, 3), np.uint8), "label": 7}]
  >>> source = ResizedSource(records, resize_center_crop(224))
  >>> source[0]["image"].shape, source[0]["label"]
  ((224, 224, 3), 7)
"""

from __future__ import annotations

import concurrent.futures
import io
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxcl import _validation

__all__ = ["ResizedSource", "resize_center_crop", "resize_square"]

Resize = Callable[[np.ndarray], np.ndarray]


def _pil(image: np.ndarray):
  from PIL import Image  # Lazy: only datasets of varying sizes need it.
  squeezed = image[..., 0] if image.shape[-1] == 1 else image
  return Image.fromarray(squeezed)


def _pixels(pil_image, channels: int) -> np.ndarray:
  pixels = np.asarray(pil_image, np.uint8)
  return pixels.reshape(*pixels.shape[:2], channels)


def resize_square(size: int) -> Resize:
  """Stretches each ``uint8[h, w, c]`` image to ``size x size`` (bilinear).

  Args:
    size: Side of the square output.

  Returns:
    A function from one image to its resized copy.

  Example:
    >>> resize_square(4)(np.zeros((2, 6, 1), np.uint8)).shape
    (4, 4, 1)
  """
  size = _validation.check_positive_int("size", size)

  def resize(image: np.ndarray) -> np.ndarray:
    from PIL import Image  # Lazy, as in _pil.
    return _pixels(_pil(image).resize((size, size), Image.Resampling.BILINEAR),
                   image.shape[-1])

  resize.description = f"resize_square({size})"
  resize.draft_size = lambda h, w: (size, size)
  return resize


def resize_center_crop(size: int, resize_to: int | None = None) -> Resize:
  """torchvision's ``Resize(resize_to)`` then ``CenterCrop(size)``.

  The shorter side is scaled to ``resize_to`` and the longer one in
  proportion (truncated, as torchvision computes it; bilinear with Pillow's
  antialiasing), then the central ``size x size`` window is kept, placed
  with Python's rounding as torchvision places it. The default
  ``resize_to`` keeps ImageNet's ratio 256 / 224, so ``size=224`` is the
  usual evaluation transform ``Resize(256)``, ``CenterCrop(224)``.

  Args:
    size: Side of the square output.
    resize_to: Length of the shorter side before cropping, at least
      ``size`` (default ``round(size * 256 / 224)``).

  Returns:
    A function from one ``uint8[h, w, c]`` image to its ``[size, size, c]``
    crop.

  Example:
    >>> crop = resize_center_crop(224)
    >>> crop(np.zeros((375, 500, 3), np.uint8)).shape
    (224, 224, 3)
  """
  size = _validation.check_positive_int("size", size)
  if resize_to is None:
    resize_to = round(size * 256 / 224)
  resize_to = _validation.check_positive_int("resize_to", resize_to)
  if resize_to < size:
    raise ValueError(f"resize_to={resize_to} is smaller than size={size}; "
                     "expected the shorter side to cover the crop.")

  def resize(image: np.ndarray) -> np.ndarray:
    from PIL import Image  # Lazy, as in _pil.
    h, w = image.shape[:2]
    if h <= w:
      new_h, new_w = resize_to, int(resize_to * w / h)
    else:
      new_h, new_w = int(resize_to * h / w), resize_to
    scaled = _pil(image).resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return _pixels(scaled.crop((left, top, left + size, top + size)),
                   image.shape[-1])

  def draft_size(h: int, w: int) -> tuple[int, int]:
    """The smallest (width, height) the resize needs: the shorter side at
    ``resize_to``, the longer in proportion (rounded up)."""
    short = min(h, w)
    return (-(-resize_to * w // short), -(-resize_to * h // short))

  resize.description = f"resize_center_crop({size}, resize_to={resize_to})"
  resize.draft_size = draft_size
  return resize


class ResizedSource(Sequence):
  """A data source whose records' images are resized when read.

  Serves ``{"image": resize(image), "label": label}`` records, one by one
  or in batches (``__getitems__``), so it can stand wherever a tfds data
  source does: in :class:`~jaxcl.benchmarks.sources.RecordArray` and
  :func:`~jaxcl.benchmarks.sources.arrays_from_data_source`. It reads the
  wrapped source's records with their images undecoded where it can (a tfds
  source) and decodes (Pillow) and resizes a batch's images on ``workers``
  threads: Pillow releases Python's lock while it decodes and resizes, so
  the threads use as many cores. The pass over the labels reads no image.

  Args:
    source: A tfds random-access data source (``tfds.data_source(...)``) or
      any sequence of ``{"image", "label"}`` records with ``uint8[h, w, c]``
      images.
    resize: What each image goes through, e.g. :func:`resize_center_crop`.
    workers: Threads that decode and resize a batch (default: the host's
      cores, at most 32).
    draft: Decode JPEG files at a reduced scale (1/2, 1/4 or 1/8, libjpeg's
      DCT scaling, the largest that keeps the image at least as large as
      ``resize`` needs: its ``draft_size``, which :func:`resize_center_crop`
      and :func:`resize_square` give) before resizing: several times faster
      for outputs much smaller than the stored images, with pixels close
      to, but not the same as, a full decode's (Avalanche's).

  Example:
    >>> records = [{"image": np.zeros((5, 3, 3), np.uint8), "label": 1}]
    >>> ResizedSource(records, resize_square(2))[0]["image"].shape
    (2, 2, 3)
  """

  def __init__(self, source: Sequence[Mapping[str, Any]], resize: Resize, *,
               workers: int | None = None, draft: bool = False):
    if not isinstance(draft, bool):
      raise TypeError(f"draft must be True or False, got {draft!r} of type "
                      f"{type(draft).__name__}.")
    draft_size = getattr(resize, "draft_size", None)
    if draft and draft_size is None:
      raise ValueError("draft=True needs the resize's draft_size(height, "
                       "width), the smallest (width, height) it reads (as "
                       "resize_center_crop and resize_square give); expected "
                       "one, or draft=False.")
    self._source, self._resize = source, resize
    self._draft_size = draft_size if draft else None
    self._workers = (min(32, os.cpu_count() or 1) if workers is None else
                     _validation.check_positive_int("workers", workers))
    info = getattr(source, "dataset_info", None)
    # The mode Pillow decodes stored image files to: the feature's channels.
    channels = info.features["image"].shape[-1] if info is not None else 3
    self._mode = "L" if channels == 1 else "RGB"
    self._undecoded: Sequence[Mapping[str, Any]] | None = None

  @property
  def source(self) -> Sequence[Mapping[str, Any]]:
    """The wrapped data source (e.g. for its ``dataset_info``)."""
    return self._source

  def __len__(self) -> int:
    return len(self._source)

  def fingerprint(self) -> str | None:
    """What identifies the resized records without reading them, or None.

    The wrapped source's fingerprint (see
    :meth:`~jaxcl.benchmarks.sources.RecordArray.fingerprint`), the resize
    (the ``description`` that :func:`resize_center_crop` and
    :func:`resize_square` give their functions) and Pillow's version,
    which decodes and resizes; None if either of the first two is unknown.
    """
    from PIL import __version__ as pillow  # Lazy, as in _pil.

    from jaxcl.benchmarks import sources  # Lazy: tfds import is not free.
    source = sources.source_fingerprint(self._source)
    description = getattr(self._resize, "description", None)
    if source is None or description is None:
      return None
    draft = "|draft" if self._draft_size is not None else ""
    return f"{source}|{description}{draft}|{self._mode}|pillow {pillow}"

  def without_images(self) -> Sequence[Mapping[str, Any]]:
    """The wrapped source's records, its images left undecoded if it can."""
    if self._undecoded is None:
      from jaxcl.benchmarks import sources  # Lazy: tfds import is not free.
      self._undecoded = sources.without_images(self._source)
    return self._undecoded

  def _image(self, stored: Any) -> np.ndarray:
    """One record's image (an encoded file's bytes or pixels), resized."""
    if isinstance(stored, bytes):
      from PIL import Image  # Lazy, as in _pil.
      with Image.open(io.BytesIO(stored)) as image:
        if self._draft_size is not None:  # JPEG only; others ignore it.
          image.draft(None, self._draft_size(image.height, image.width))
        stored = _pixels(image.convert(self._mode),
                         1 if self._mode == "L" else 3)
    return self._resize(np.asarray(stored))

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = self.without_images()[index]
    return {"image": self._image(record["image"]), "label": record["label"]}

  def __getitems__(self, keys: Sequence[int]) -> list[dict[str, Any]]:
    source = self.without_images()
    get_items = getattr(source, "__getitems__", None)
    records = (get_items(keys) if get_items is not None
               else [source[k] for k in keys])
    stored = [record["image"] for record in records]
    if self._workers == 1 or len(stored) == 1:
      images = [self._image(image) for image in stored]
    else:
      with concurrent.futures.ThreadPoolExecutor(self._workers) as pool:
        images = list(pool.map(self._image, stored))
    return [{"image": image, "label": record["label"]}
            for image, record in zip(images, records)]
