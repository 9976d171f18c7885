"""Host-side decoding and resizing of full-resolution images, by threads.

Writes a small tfds ``imagenet2012`` in ArrayRecord format (``--images``
JPEG files of 500x375 pixels, ImageNet's most common size, with tfds's own
builder) into a temporary folder, then reads it as ``split_imagenet(...,
full_resolution=True)`` does: every image decoded and resized to 256 and
center-cropped to 224 by a :class:`jaxcl.benchmarks.ResizedSource`, with 1,
2, 4, ... worker threads up to the host's cores, then with every core and
``draft=True`` (JPEG files decoded at a reduced scale: ``fast_decode``).
Prints images/s for each, and the rate of the labels' pass (images left
undecoded).

Usage:
  python examples/benchmark_resizing.py [--images 512] [--image-size 224]
"""

import argparse
import io
import os
import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxcl.benchmarks import ResizedSource, resize_center_crop, sources


def write_dataset(data_dir: str, n: int) -> None:
  """tfds's imagenet2012 builder, writing ``n`` 500x375 JPEG photos."""
  rng = np.random.default_rng(0)
  # Smooth colour fields plus noise: JPEG files of a photograph's size.
  rows, cols = np.mgrid[0:375, 0:500]

  def photo(i):
    base = np.stack([(rows * (i + 1) + cols) % 256, (cols * 2 + i) % 256,
                     (rows + cols * (i % 5)) % 256], -1)
    noise = rng.integers(0, 40, base.shape)
    buffer = io.BytesIO()
    Image.fromarray(((base + noise) % 256).astype(np.uint8)).save(
        buffer, "JPEG", quality=90)
    buffer.seek(0)
    return buffer

  class Photos(tfds.builder_cls("imagenet2012"), skip_registration=True):

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": ((i, {"image": photo(i), "label": i % 1000,
                             "file_name": f"{i}.JPEG"}) for i in range(n))}

  Photos.name = "imagenet2012"
  Photos(data_dir=data_dir, file_format="array_record").download_and_prepare()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=512)
  parser.add_argument("--image-size", type=int, default=224)
  args = parser.parse_args()
  cores = os.cpu_count() or 1
  with tempfile.TemporaryDirectory() as data_dir:
    write_dataset(data_dir, args.images)
    source = tfds.builder("imagenet2012", data_dir=data_dir).as_data_source(
        split="train")
    crop = resize_center_crop(args.image_size)
    print(f"{args.images} JPEG images of 500x375 -> {args.image_size}x"
          f"{args.image_size}, {cores} cores")
    counts = sorted({min(2**k, cores) for k in range(cores.bit_length() + 1)})
    for workers, draft in [(w, False) for w in counts] + [(cores, True)]:
      view = sources.RecordArray(ResizedSource(source, crop, workers=workers,
                                               draft=draft))
      start = time.perf_counter()
      np.asarray(view)
      seconds = time.perf_counter() - start
      print(f"workers {workers:2d}{', draft' if draft else '       '}: "
            f"{args.images / seconds:8.1f} images/s")
    start = time.perf_counter()
    sources.read_label_features(ResizedSource(source, crop))
    seconds = time.perf_counter() - start
    print(f"labels' pass (images undecoded): {args.images / seconds:.0f} "
          "records/s")


if __name__ == "__main__":
  main()
