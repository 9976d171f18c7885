"""On-device training augmentation: jit-compatible ``(x, key) -> x`` functions.

A benchmark's ``augment`` runs inside the compiled training step on each raw
batch ``x`` of images ``[B, H, W, C]`` (before ``preprocess``), with one key
per batch. The functions here split that key into one key per sample and
``vmap`` a per-image transform, so every sample draws its own randomness.
:func:`per_sample` lifts any ``(image, key) -> image`` function the same way,
and :func:`compose` chains augmentations like torchvision's ``Compose``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> aug = compose(random_crop(4), random_flip())  # CIFAR's augmentation.
  >>> aug(jnp.zeros((2, 32, 32, 3), jnp.uint8), jax.random.key(0)).shape
  (2, 32, 32, 3)
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxcl import _validation
from jaxcl.benchmarks.scenario import Augment

__all__ = ["color_jitter", "compose", "gaussian_blur", "per_sample",
           "random_crop", "random_flip", "random_grayscale",
           "random_resized_crop"]

ImageFn = Callable[[jax.Array, jax.Array], jax.Array]


def per_sample(fn: ImageFn) -> Augment:
  """Lifts ``fn(image, key) -> image`` to batches, with one key per sample.

  Args:
    fn: A jit-compatible transform of one image ``[H, W, C]``.

  Returns:
    ``augment(x, key)`` applying ``fn`` to every image of ``x`` ``[B, H, W,
    C]`` with keys ``jax.random.split(key, B)``.

  Example:
    >>> noisy = per_sample(lambda img, k: img + jax.random.normal(k, img.shape))
    >>> noisy(jnp.zeros((3, 2, 2, 1)), jax.random.key(0)).shape
    (3, 2, 2, 1)
  """
  def augment(x: jax.Array, key: jax.Array) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"augmentations expect images [B, H, W, C], got a "
                       f"batch of shape {x.shape}.")
    return jax.vmap(fn)(x, jax.random.split(key, x.shape[0]))

  return augment


def random_crop(padding: int) -> Augment:
  """Random crop of the image's size from the image zero-padded by ``padding``.

  torchvision's ``RandomCrop(size, padding=padding)`` with ``size`` the
  image size: the image gets ``padding`` zero pixels on each side, then a
  window of the original size is cut at an offset drawn uniformly from
  ``{0, ..., 2 * padding}`` in each direction.

  Args:
    padding: Zero pixels added on each side (CIFAR: 4).

  Returns:
    A jit-compatible ``(x, key) -> x`` augmentation.

  Example:
    >>> crop = random_crop(4)
    >>> crop(jnp.ones((2, 8, 8, 1)), jax.random.key(1)).shape
    (2, 8, 8, 1)
  """
  if (isinstance(padding, bool) or not isinstance(padding, numbers.Integral)
      or padding < 0):
    raise ValueError(f"padding must be a non-negative integer, got {padding!r}.")
  padding = int(padding)

  def crop(image: jax.Array, key: jax.Array) -> jax.Array:
    h, w = image.shape[:2]
    padded = jnp.pad(image, [(padding, padding), (padding, padding), (0, 0)])
    dy, dx = jax.random.randint(key, (2,), 0, 2 * padding + 1)
    return jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, image.shape[2]))

  return per_sample(crop)


def random_flip(probability: float = 0.5) -> Augment:
  """Horizontal flip (left-right) of each image with ``probability``.

  torchvision's ``RandomHorizontalFlip(p=probability)``.

  Args:
    probability: Chance that an image is flipped.

  Returns:
    A jit-compatible ``(x, key) -> x`` augmentation.

  Example:
    >>> flip = random_flip(1.0)
    >>> x = jnp.arange(4.0).reshape(1, 1, 4, 1)
    >>> flip(x, jax.random.key(0)).ravel().tolist()
    [3.0, 2.0, 1.0, 0.0]
  """
  probability = _validation.check_in_range("probability", probability, low=0,
                                           high=1)

  def flip(image: jax.Array, key: jax.Array) -> jax.Array:
    return jnp.where(jax.random.bernoulli(key, probability), image[:, ::-1],
                     image)

  return per_sample(flip)


# ITU-R 601-2 luma weights, the ones torchvision's ``rgb_to_grayscale`` uses.
_LUMA = (0.2989, 0.587, 0.114)


def random_grayscale(probability: float = 0.1) -> Augment:
  """Turns each RGB image to grayscale with ``probability``, keeping 3 channels.

  torchvision's ``RandomGrayscale(p=probability)``: the luma
  ``0.2989·R + 0.587·G + 0.114·B`` copied to the three channels, cast back
  to the image's dtype (integer images are truncated, as torchvision's
  tensor path does). Images with one channel are returned unchanged. Each
  image draws its own coin, as torchvision does for one image; given a
  batch tensor, torchvision draws once for the whole batch.

  Args:
    probability: Chance that an image is turned to grayscale.

  Returns:
    A jit-compatible ``(x, key) -> x`` augmentation.

  Example:
    >>> gray = random_grayscale(1.0)
    >>> x = jnp.array([[[[10.0, 20.0, 30.0]]]])
    >>> gray(x, jax.random.key(0)).ravel().tolist()  # doctest: +ELLIPSIS
    [18.1..., 18.1..., 18.1...]
  """
  probability = _validation.check_in_range("probability", probability, low=0,
                                           high=1)

  def grayscale(image: jax.Array, key: jax.Array) -> jax.Array:
    if image.shape[-1] == 1:
      return image
    if image.shape[-1] != 3:
      raise ValueError(f"random_grayscale expects images with 1 or 3 "
                       f"channels, got {image.shape[-1]}.")
    luma = image.astype(jnp.float32) @ jnp.asarray(_LUMA, jnp.float32)
    gray = jnp.broadcast_to(luma[..., None], image.shape).astype(image.dtype)
    return jnp.where(jax.random.bernoulli(key, probability), gray, image)

  return per_sample(grayscale)


def _check_range(name: str, value) -> tuple[float, float]:
  """``value`` as a pair ``0 < low <= high`` of finite floats."""
  try:
    low, high = value
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a pair (low, high), got "
                     f"{value!r}.") from None
  low = _validation.check_in_range(f"{name}[0]", low, low=0,
                                   low_inclusive=False)
  high = _validation.check_in_range(f"{name}[1]", high, low=0,
                                    low_inclusive=False)
  if low > high:
    raise ValueError(f"{name} must be a pair with low <= high, got "
                     f"{value!r}.")
  return low, high


def _bilinear_rows(image: jax.Array, start: jax.Array, length: jax.Array,
                   out: int) -> jax.Array:
  """Rows ``start .. start + length - 1`` of ``image`` resized to ``out``
  rows: torch's bilinear interpolation with ``align_corners=False`` (pixel
  centres, source coordinates clamped to the window's edge rows)."""
  centre = (jnp.arange(out, dtype=jnp.float32) + 0.5) * (length / out) - 0.5
  centre = jnp.maximum(centre, 0.0)
  low = jnp.minimum(jnp.floor(centre).astype(jnp.int32), length - 1)
  high = jnp.minimum(low + 1, length - 1)
  frac = (centre - low)[:, None, None]
  return (image[start + low] * (1.0 - frac) + image[start + high] * frac)


def _resized_crop(image: jax.Array, box: jax.Array) -> jax.Array:
  """The window ``box = (top, left, height, width)`` of ``image`` resized
  bilinearly to the image's size; integer images are rounded back."""
  h, w = image.shape[:2]
  top, left, height, width = box
  pixels = image.astype(jnp.float32)
  rows = _bilinear_rows(pixels, top, height, h)
  out = jnp.swapaxes(_bilinear_rows(jnp.swapaxes(rows, 0, 1), left, width,
                                    w), 0, 1)
  if jnp.issubdtype(image.dtype, jnp.integer):
    info = jnp.iinfo(image.dtype)
    out = jnp.clip(jnp.round(out), info.min, info.max)
  return out.astype(image.dtype)


# Draws before RandomResizedCrop falls back to the central crop.
_CROP_TRIES = 10


def _crop_box(key: jax.Array, h: int, w: int, scale: tuple[float, float],
              ratio: tuple[float, float]) -> jax.Array:
  """torchvision's ``RandomResizedCrop.get_params``: ``(top, left, height,
  width)`` of the first of 10 draws (area fraction uniform in ``scale``,
  aspect ratio log-uniform in ``ratio``) that fits, else the central crop
  of the aspect ratio nearest the image's."""
  area_key, ratio_key, top_key, left_key = jax.random.split(key, 4)
  area = h * w * jax.random.uniform(area_key, (_CROP_TRIES,), minval=scale[0],
                                    maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(
      ratio_key, (_CROP_TRIES,), minval=math.log(ratio[0]),
      maxval=math.log(ratio[1])))
  widths = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  heights = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (widths > 0) & (widths <= w) & (heights > 0) & (heights <= h)
  first = jnp.argmax(fits)
  # The central fallback, fixed by the image's shape.
  if w / h < ratio[0]:
    fall_w, fall_h = w, int(round(w / ratio[0]))
  elif w / h > ratio[1]:
    fall_w, fall_h = int(round(h * ratio[1])), h
  else:
    fall_w, fall_h = w, h
  found = fits[first]
  height = jnp.where(found, heights[first], fall_h)
  width = jnp.where(found, widths[first], fall_w)
  top = jnp.where(found, jax.random.randint(top_key, (), 0, h - height + 1),
                  (h - fall_h) // 2)
  left = jnp.where(found, jax.random.randint(left_key, (), 0, w - width + 1),
                   (w - fall_w) // 2)
  return jnp.stack([top, left, height, width]).astype(jnp.int32)


def random_resized_crop(scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)
                        ) -> Augment:
  """A random window of each image, resized back to the image's size.

  torchvision's ``RandomResizedCrop(size, scale, ratio)`` with ``size`` the
  image size: the window's area is a fraction of the image's drawn
  uniformly in ``scale`` and its aspect ratio (width / height) is drawn
  log-uniformly in ``ratio``; the first of 10 such draws that fits in the
  image is placed uniformly at random, and when none fits the central
  window of the aspect ratio nearest the image's is taken. The window is
  resized with bilinear interpolation (torch's ``align_corners=False``);
  integer images are rounded back to their dtype. Unlike torchvision on a
  batch tensor, which crops every image of the batch at the same window,
  each image draws its own.

  Args:
    scale: ``(low, high)`` bounds of the window's area fraction
      (``0 < low <= high``).
    ratio: ``(low, high)`` bounds of the window's aspect ratio
      (``0 < low <= high``).

  Returns:
    A jit-compatible ``(x, key) -> x`` augmentation.

  Example:
    >>> crop = random_resized_crop(scale=(0.6, 1.0))
    >>> crop(jnp.ones((2, 8, 8, 3)), jax.random.key(0)).shape
    (2, 8, 8, 3)
  """
  scale = _check_range("scale", scale)
  ratio = _check_range("ratio", ratio)

  def crop(image: jax.Array, key: jax.Array) -> jax.Array:
    h, w = image.shape[:2]
    return _resized_crop(image, _crop_box(key, h, w, scale, ratio))

  return per_sample(crop)


def compose(*augmentations: Augment) -> Augment:
  """Applies augmentations in order, each with its own key.

  Args:
    *augmentations: ``(x, key) -> x`` functions (from this module or the
      user's own).

  Returns:
    Their composition, an ``(x, key) -> x`` function.

  Example:
    >>> aug = compose(random_crop(2), random_flip())
    >>> aug(jnp.ones((1, 4, 4, 3)), jax.random.key(0)).shape
    (1, 4, 4, 3)
  """
  if not augmentations:
    raise ValueError("compose needs at least one augmentation.")
  for i, fn in enumerate(augmentations):
    if not callable(fn):
      raise TypeError(f"augmentation {i} must be a callable (x, key) -> x, "
                      f"got {type(fn).__name__}.")

  def augment(x: jax.Array, key: jax.Array) -> jax.Array:
    for fn, k in zip(augmentations,
                     jax.random.split(key, len(augmentations))):
      x = fn(x, k)
    return x

  return augment


def _value_bound(dtype) -> float:
  """The brightest value of an image dtype: 255 for integers, 1 for floats
  (torchvision's convention)."""
  return 255.0 if jnp.issubdtype(dtype, jnp.integer) else 1.0


def _blend(a: jax.Array, b: jax.Array, ratio: jax.Array, dtype) -> jax.Array:
  """torchvision's ``_blend``: ``ratio·a + (1 − ratio)·b`` clamped to the
  dtype's range, back in ``dtype`` (integers truncated)."""
  out = jnp.clip(ratio * a + (1.0 - ratio) * b, 0.0, _value_bound(dtype))
  return out.astype(dtype).astype(jnp.float32)


def _gray(image: jax.Array, dtype) -> jax.Array:
  """torchvision's ``rgb_to_grayscale`` of a float copy of an image of
  ``dtype`` (the luma truncated for integer dtypes), one channel."""
  luma = image @ jnp.asarray(_LUMA, jnp.float32)
  return luma.astype(dtype).astype(jnp.float32)[..., None]


def _rgb_to_hsv(rgb: jax.Array) -> jax.Array:
  """RGB in [0, 1] to HSV in [0, 1] (the hexcone model, as torchvision)."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  top, bottom = jnp.max(rgb, -1), jnp.min(rgb, -1)
  spread = top - bottom
  flat = spread == 0
  saturation = spread / jnp.where(flat, 1.0, top)
  divisor = jnp.where(flat, 1.0, spread)
  rc, gc, bc = ((top - c) / divisor for c in (r, g, b))
  hue = jnp.where(top == r, bc - gc,
                  jnp.where(top == g, 2.0 + rc - bc, 4.0 + gc - rc))
  hue = jnp.where(flat, 0.0, hue)
  return jnp.stack([jnp.mod(hue / 6.0 + 1.0, 1.0), saturation, top], -1)


def _hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  """Inverse of :func:`_rgb_to_hsv`."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  sector = jnp.floor(h * 6.0)
  f = h * 6.0 - sector
  p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
  q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  sector = jnp.mod(sector.astype(jnp.int32), 6)
  # (r, g, b) in each of the six sectors of the hue circle.
  table = jnp.stack([jnp.stack([v, q, p, p, t, v], -1),
                     jnp.stack([t, v, v, q, p, p], -1),
                     jnp.stack([p, p, t, v, v, q], -1)], -1)
  return jnp.take_along_axis(table, sector[..., None, None], -2)[..., 0, :]


def _jitter_range(name: str, value, center: float, low: float | None
                  ) -> tuple[float, float] | None:
  """ColorJitter's factor range: ``[center − v, center + v]`` (floored at
  ``low``) for a number ``v``, or a given ``(min, max)``; None for 0."""
  if isinstance(value, numbers.Number) and not isinstance(value, bool):
    value = _validation.check_non_negative(name, value)
    if value == 0:
      return None
    lo, hi = center - value, center + value
    return (lo if low is None else max(low, lo)), hi
  if (isinstance(value, (tuple, list)) and len(value) == 2
      and all(isinstance(v, numbers.Number) and not isinstance(v, bool)
              for v in value) and value[0] <= value[1]
      and (low is None or value[0] >= low)):
    return float(value[0]), float(value[1])
  raise ValueError(f"{name} must be a non-negative number or a (min, max) "
                   f"pair with min <= max, got {value!r}.")


def color_jitter(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0,
                 probability: float = 1.0) -> Augment:
  """torchvision's ``ColorJitter``, applied to each image with ``probability``.

  Each image draws a brightness factor ``b`` from ``[max(0, 1 − brightness),
  1 + brightness]``, contrast ``c`` and saturation ``s`` likewise and a hue
  shift ``h`` from ``[−hue, hue]`` (each may also be a ``(min, max)``
  pair; 0 leaves the adjustment out), and applies the four adjustments in
  a random order:

  * brightness: ``b·x``;
  * contrast: ``c·x + (1 − c)·mean(gray(x))``;
  * saturation: ``s·x + (1 − s)·gray(x)``;
  * hue: ``h`` added (mod 1) to the hue of the image in HSV.

  Every result is clamped to the dtype's range (255 for integers, 1 for
  floats) and cast back after each step, integers truncated, as
  torchvision's tensor path does; ``gray`` is the luma of
  :func:`random_grayscale`. On images with one channel saturation and hue
  leave the image unchanged (torchvision's behaviour), and contrast uses
  the image's own mean. ``RandomApply([ColorJitter(...)], p=probability)``
  in torchvision terms.

  Args:
    brightness: Brightness jitter.
    contrast: Contrast jitter.
    saturation: Saturation jitter.
    hue: Hue jitter, at most 0.5.
    probability: Chance that an image is jittered at all.

  Returns:
    A jit-compatible ``(x, key) -> x`` augmentation.

  Example:
    >>> jitter = color_jitter(brightness=(2.0, 2.0))
    >>> x = jnp.array([[[[10, 20, 200]]]], jnp.uint8)
    >>> jitter(x, jax.random.key(0)).ravel().tolist()
    [20, 40, 255]
  """
  ranges = (_jitter_range("brightness", brightness, 1.0, 0.0),
            _jitter_range("contrast", contrast, 1.0, 0.0),
            _jitter_range("saturation", saturation, 1.0, 0.0),
            _jitter_range("hue", hue, 0.0, None))
  if ranges[3] is not None and not -0.5 <= ranges[3][0] <= ranges[3][1] <= 0.5:
    raise ValueError(f"hue must lie within [-0.5, 0.5], got {hue!r}.")
  probability = _validation.check_in_range("probability", probability, low=0,
                                           high=1)
  # Unused adjustments draw factor 1 (hue 0), which they never apply.
  lows = jnp.asarray([r[0] if r else (0.0 if i == 3 else 1.0)
                      for i, r in enumerate(ranges)], jnp.float32)
  highs = jnp.asarray([r[1] if r else (0.0 if i == 3 else 1.0)
                       for i, r in enumerate(ranges)], jnp.float32)

  def jitter(image: jax.Array, key: jax.Array) -> jax.Array:
    dtype, channels = image.dtype, image.shape[-1]
    if channels not in (1, 3):
      raise ValueError(f"color_jitter expects images with 1 or 3 channels, "
                       f"got {channels}.")
    gray = ((lambda x: _gray(x, dtype)) if channels == 3 else (lambda x: x))

    def adjust_brightness(x, factor):
      return _blend(x, 0.0, factor, dtype)

    def adjust_contrast(x, factor):
      return _blend(x, jnp.mean(gray(x)), factor, dtype)

    def adjust_saturation(x, factor):
      return x if channels == 1 else _blend(x, gray(x), factor, dtype)

    def adjust_hue(x, factor):
      if channels == 1:
        return x
      bound = _value_bound(dtype)
      hsv = _rgb_to_hsv(x / bound)
      hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + factor, 1.0))
      rgb = _hsv_to_rgb(hsv)
      if jnp.issubdtype(dtype, jnp.integer):
        # torchvision's convert_image_dtype from float to integers.
        return (rgb * (bound + 1.0 - 1e-3)).astype(dtype).astype(jnp.float32)
      return rgb.astype(dtype).astype(jnp.float32)

    adjustments = (adjust_brightness, adjust_contrast, adjust_saturation,
                   adjust_hue)
    apply_key, order_key, factor_key = jax.random.split(key, 3)
    factors = jax.random.uniform(factor_key, (4,), minval=lows, maxval=highs)
    order = jax.random.permutation(order_key, 4)
    out = image.astype(jnp.float32)
    # torchvision skips the adjustments it was not given (no clamp, no
    # HSV round trip), keeping their places in the random order.
    branches = [
        functools.partial(lambda fn, i, x: fn(x, factors[i]), fn, i)
        if ranges[i] is not None else (lambda x: x)
        for i, fn in enumerate(adjustments)]
    for step in range(4):
      out = jax.lax.switch(order[step], branches, out)
    return jnp.where(jax.random.bernoulli(apply_key, probability),
                     out.astype(dtype), image)

  return per_sample(jitter)


def gaussian_blur(kernel_size: int = 3, sigma=(0.1, 2.0),
                  probability: float = 1.0) -> Augment:
  """torchvision's ``GaussianBlur``, applied to each image with ``probability``.

  Each image draws ``σ`` uniformly from ``sigma = (min, max)`` (or takes a
  fixed number) and is convolved, channel by channel, with the
  ``kernel_size x kernel_size`` kernel ``g gᵀ``, ``g_i ∝ exp(−i² / 2σ²)``
  for ``i = −k//2 … k//2`` (normalised to sum 1), the image reflect-padded
  by ``k//2`` (without repeating the edge). Integer images are rounded
  back. ``RandomApply([GaussianBlur(k, sigma)], p=probability)``.

  Args:
    kernel_size: Odd side of the square kernel.
    sigma: Standard deviation, or the ``(min, max)`` it is drawn from.
    probability: Chance that an image is blurred.

  Returns:
    A jit-compatible ``(x, key) -> x`` augmentation.

  Example:
    >>> blur = gaussian_blur(3, sigma=1.0)
    >>> x = jnp.zeros((1, 3, 3, 1)).at[0, 1, 1, 0].set(1.0)
    >>> round(float(blur(x, jax.random.key(0))[0, 1, 1, 0]), 4)
    0.2042
  """
  kernel_size = _validation.check_positive_int("kernel_size", kernel_size)
  if kernel_size % 2 == 0:
    raise ValueError(f"kernel_size must be odd, got {kernel_size}.")
  if isinstance(sigma, numbers.Number) and not isinstance(sigma, bool):
    sigma = (sigma, sigma)
  if (not isinstance(sigma, (tuple, list)) or len(sigma) != 2
      or not all(isinstance(s, numbers.Number) and not isinstance(s, bool)
                 and s > 0 for s in sigma) or sigma[0] > sigma[1]):
    raise ValueError(f"sigma must be a positive number or a (min, max) pair "
                     f"with 0 < min <= max, got {sigma!r}.")
  low, high = float(sigma[0]), float(sigma[1])
  probability = _validation.check_in_range("probability", probability, low=0,
                                           high=1)
  half = kernel_size // 2
  offsets = jnp.arange(kernel_size, dtype=jnp.float32) - half

  def blur(image: jax.Array, key: jax.Array) -> jax.Array:
    h, w = image.shape[:2]
    if half >= min(h, w):
      raise ValueError(f"gaussian_blur(kernel_size={kernel_size}) needs "
                       f"images larger than {half} pixels a side, got "
                       f"{h}x{w}.")
    apply_key, sigma_key = jax.random.split(key)
    s = jax.random.uniform(sigma_key, (), minval=low, maxval=high)
    g = jnp.exp(-0.5 * jnp.square(offsets / s))
    g = g / jnp.sum(g)
    padded = jnp.pad(image.astype(jnp.float32),
                     [(half, half), (half, half), (0, 0)], mode="reflect")
    rows = sum(g[i] * padded[i:i + h] for i in range(kernel_size))
    out = sum(g[i] * rows[:, i:i + w] for i in range(kernel_size))
    if jnp.issubdtype(image.dtype, jnp.integer):
      out = jnp.round(out)
    return jnp.where(jax.random.bernoulli(apply_key, probability),
                     out.astype(image.dtype), image)

  return per_sample(blur)
