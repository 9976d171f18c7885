"""Full-resolution tfds benchmarks: host-side resizing, SplitInaturalist and
SplitImageNet's ``full_resolution``, on small datasets written by tfds's own
builders (ArrayRecord files, images of varying sizes)."""

import io

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import tiny_cli_results
from PIL import Image

from jaxcl import cli
from jaxcl.benchmarks import classic, resizing, sources


def _random_image(h, w, seed):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def test_resize_center_crop_keeps_the_central_window_without_resampling():
  # A shorter side already at 256 is not resampled: the crop is a window of
  # the image, placed with Python's rounding ((259 - 224) / 2 = 17.5 -> 18).
  image = _random_image(256, 259, 0)
  out = resizing.resize_center_crop(224)(image)
  np.testing.assert_array_equal(out, image[16:240, 18:242])
  portrait = _random_image(261, 256, 1)  # (261 - 224) / 2 = 18.5 -> 18.
  np.testing.assert_array_equal(resizing.resize_center_crop(224)(portrait),
                                portrait[18:242, 16:240])


def test_resize_center_crop_scales_the_shorter_side():
  # Left half black, right half white, 100 x 300: the shorter side becomes
  # 10 (resize_to) and the longer 30; the central 10 x 10 window of that
  # straddles the edge at column 15, so it holds both colours.
  image = np.zeros((100, 300, 1), np.uint8)
  image[:, 150:] = 255
  out = resizing.resize_center_crop(10, resize_to=10)(image)
  assert out.shape == (10, 10, 1) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[:, :4], 0)
  np.testing.assert_array_equal(out[:, 6:], 255)
  assert resizing.resize_center_crop(224)(
      _random_image(375, 500, 2)).shape == (224, 224, 3)
  # Upscaling a constant image keeps it constant.
  flat = np.full((7, 5, 3), 90, np.uint8)
  np.testing.assert_array_equal(resizing.resize_center_crop(16)(flat), 90)


def test_resize_arguments_are_checked():
  with pytest.raises(ValueError, match="resize_to=10 is smaller than "
                     "size=16; expected the shorter side to cover the crop"):
    resizing.resize_center_crop(16, resize_to=10)
  with pytest.raises(ValueError, match="size"):
    resizing.resize_square(0)
  assert resizing.resize_square(3)(np.zeros((2, 9, 3), np.uint8)).shape == (
      3, 3, 3)


def test_read_label_features_reads_columns_and_checks_its_arguments():
  records = [{"label": 4, "group": 1, "image": None},
             {"label": 2, "group": 0, "image": None}]
  np.testing.assert_array_equal(
      sources.read_label_features(records, ("group", "label")),
      [[1, 4], [0, 2]])
  for bad in ("label", (), [1]):
    with pytest.raises(ValueError, match="features must be a non-empty "
                       "sequence of record entry names"):
      sources.read_label_features(records, bad)
  with pytest.raises(TypeError, match="the records' 'group' entries must be "
                     "integers"):
    sources.read_label_features([{"group": 0.5}], ("group",))


# Records of the fake iNaturalist: (label, supercategory, height, width).
# Colour = 10 * record index, so that every image can be told apart after
# resizing (a constant image stays constant).
_INAT_TRAIN = [(5, "Aves", 30, 40), (7, "Aves", 41, 20), (2, "Insecta", 25, 25),
               (9, "Fungi", 50, 33), (2, "Insecta", 60, 44), (5, "Aves", 20,
                                                              70)]
_INAT_VALIDATION = [(7, "Aves", 33, 33), (2, "Insecta", 21, 45),
                    (9, "Fungi", 40, 40)]


def _prepare_fake_builder(name, data_dir, splits, extra, file_format):
  """tfds's builder ``name``, writing the given small records."""

  class Fake(tfds.builder_cls(name), skip_registration=True):

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._records(rows) for split, rows in splits.items()}

    def _records(self, rows):
      for i, (label, *more, h, w) in enumerate(rows):
        # PIL images: encoding them needs no TensorFlow.
        yield i, {"image": Image.new("RGB", (w, h), (10 * i,) * 3),
                  "label": label, **extra(i, *more)}

  Fake.name = name
  Fake(data_dir=data_dir, file_format=file_format).download_and_prepare()


def _prepare_fake_inaturalist(data_dir, train=_INAT_TRAIN,
                              file_format="array_record"):
  _prepare_fake_builder(
      "i_naturalist2018", data_dir,
      {"train": train, "validation": _INAT_VALIDATION},
      lambda i, supercategory: {"id": str(i), "supercategory": supercategory},
      file_format)


@pytest.fixture(scope="module")
def inaturalist_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("inat")
  _prepare_fake_inaturalist(data_dir)
  return data_dir


def _colours(exp):
  x = np.asarray(exp.x)
  # Every resized image is constant: one colour per sample.
  np.testing.assert_array_equal(x, x[:, :1, :1, :1] * np.ones_like(x))
  # tfds stores records in an order of its own: compare them as sets.
  return sorted((x[:, 0, 0, 0] // 10).tolist())


def test_split_inaturalist_one_experience_per_supercategory(inaturalist_dir):
  bench = classic.split_inaturalist(["Insecta", "Aves"], image_size=8,
                                    data_dir=inaturalist_dir)
  assert bench.name == "split_inaturalist"
  assert [e.classes for e in bench.train_stream] == [(2,), (5, 7)]
  assert bench.class_order == (2, 5, 7) and bench.n_classes == 8
  # Records by index (their colour): Fungi's are left out.
  assert [_colours(e) for e in bench.train_stream] == [[2, 4], [0, 1, 5]]
  assert [_colours(e) for e in bench.test_stream] == [[1], [0]]
  assert [sorted(e.y.tolist()) for e in bench.train_stream] == [[2, 2],
                                                                [5, 5, 7]]
  assert bench.train_stream[0].x.shape == (2, 8, 8, 3)
  assert isinstance(bench.train_stream[0].x, sources.RecordArray)
  assert bench.augment is None and bench.n_tasks == 1


def test_split_inaturalist_relabels_and_reads_eagerly(inaturalist_dir):
  bench = classic.split_inaturalist(
      ["Aves", "Fungi"], image_size=4, return_task_id=True, lazy=False,
      class_ids_from_zero_from_first_exp=True, data_dir=inaturalist_dir)
  assert [e.classes for e in bench.train_stream] == [(0, 1), (2,)]
  assert [sorted(e.y.tolist()) for e in bench.train_stream] == [[0, 0, 1],
                                                                [2]]
  assert [e.task_labels for e in bench.test_stream] == [(0,), (1,)]
  assert isinstance(bench.train_stream[1].x, np.ndarray)
  assert _colours(bench.train_stream[1]) == [3]


@pytest.mark.parametrize("super_categories, message", [
    ("Aves", "super_categories must be a non-empty sequence of names"),
    ([], "super_categories must be a non-empty sequence of names"),
    (["Aves", "Dragons"], r"\['Dragons'\] are not supercategories of "
     "iNaturalist 2018"),
    (["Aves", "Fungi", "Aves"], r"names \['Aves'\] more than once"),
])
def test_split_inaturalist_refuses_bad_super_categories(
    super_categories, message, tmp_path):
  # Refused before any data is looked for (tmp_path holds none).
  with pytest.raises(ValueError, match=message):
    classic.split_inaturalist(super_categories, data_dir=tmp_path)


def test_split_inaturalist_refuses_empty_or_shared_supercategories(
    inaturalist_dir, tmp_path):
  # The default ten include Amphibia, which has no image here.
  with pytest.raises(ValueError, match="super_categories 'Amphibia' has no "
                     "training image; its experience would be empty"):
    classic.split_inaturalist(data_dir=inaturalist_dir)
  with pytest.raises(ValueError, match=r"the 'train' split has no image "
                     r"of the super_categories \['Mammalia'\]"):
    classic.split_inaturalist(["Mammalia"], data_dir=inaturalist_dir)
  _prepare_fake_inaturalist(tmp_path, _INAT_TRAIN + [(2, "Aves", 9, 9)])
  with pytest.raises(ValueError, match=r"classes \[2\] have training images "
                     "of both 'Aves' and 'Insecta'"):
    classic.split_inaturalist(["Aves", "Insecta"], data_dir=tmp_path)


def test_split_inaturalist_needs_array_record(tmp_path):
  _prepare_fake_inaturalist(tmp_path, file_format="tfrecord")
  with pytest.raises(ValueError, match="split_inaturalist, which resizes its "
                     "images one by one, needs it in ArrayRecord format"):
    classic.split_inaturalist(["Aves"], data_dir=tmp_path)


def test_resized_source_labels_pass_leaves_images_undecoded(inaturalist_dir):
  source = tfds.builder("i_naturalist2018", data_dir=inaturalist_dir
                        ).as_data_source(split="validation")
  resized = resizing.ResizedSource(source, resizing.resize_square(3))
  assert isinstance(sources.without_images(resized)[0]["image"], bytes)
  assert [r["image"].shape for r in resized.__getitems__([0, 2])] == [
      (3, 3, 3)] * 2
  columns = sources.read_label_features(resized, ("label", "supercategory"))
  # tfds's supercategory ids (Aves 4, Insecta 11, Fungi 0), in its order.
  assert sorted(columns.tolist()) == [[2, 11], [7, 4], [9, 0]]


def test_split_imagenet_full_resolution_reads_imagenet2012(tmp_path):
  # 4 classes in 2 experiences (in label order).
  train = [(0, 18, 21), (1, 30, 50), (2, 64, 40), (3, 19, 19), (0, 25, 30)]
  _prepare_fake_builder(
      "imagenet2012", tmp_path,
      {"train": train, "validation": [(3, 40, 41), (1, 18, 18), (0, 20, 22)]},
      lambda i: {"file_name": f"{i}.JPEG"}, "array_record")
  bench = classic.split_imagenet(2, full_resolution=True, image_size=16,
                                 shuffle=False, data_dir=tmp_path)
  assert [e.classes for e in bench.train_stream] == [(0, 1), (2, 3)]
  assert [_colours(e) for e in bench.train_stream] == [[0, 1, 4], [2, 3]]
  assert [_colours(e) for e in bench.test_stream] == [[1, 2], [0]]
  assert bench.train_stream[0].x.shape == (3, 16, 16, 3)
  assert bench.augment is None  # Avalanche's transform has no augmentation.
  with pytest.raises(ValueError, match=r"image_size must be one of \(8, 16, "
                     r"32, 64\) \(the sizes of tfds imagenet_resized\), got "
                     "224; any positive size with full_resolution=True"):
    classic.split_imagenet(image_size=224, data_dir=tmp_path)
  # Avalanche's per_exp_classes: the first experience takes one class.
  uneven = classic.split_imagenet(2, per_exp_classes={0: 1},
                                  full_resolution=True, image_size=16,
                                  shuffle=False, data_dir=tmp_path)
  assert [e.classes for e in uneven.train_stream] == [(0,), (1, 2, 3)]
  with pytest.raises(ValueError, match=r"per_exp_classes=\{0: 1001\} leaves "
                     r"-1 of the 1000 classes"):
    classic.split_imagenet(2, per_exp_classes={0: 1001},
                           data_dir=tmp_path / "nothing")


def test_split_imagenet_full_resolution_defaults_to_224(tmp_path, monkeypatch):
  crops = []
  monkeypatch.setattr(resizing, "resize_center_crop",
                      lambda size: crops.append(size) or (lambda x: x))
  with pytest.raises(ValueError, match="imagenet2012"):
    classic.split_imagenet(full_resolution=True, data_dir=tmp_path)
  assert crops == [224]


def test_split_inaturalist_from_the_command_line(inaturalist_dir, tmp_path,
                                                 capsys):
  results = tiny_cli_results(
      tmp_path / "run", "--benchmark", "split_inaturalist",
      "--super-categories", "Insecta, Aves", "--image-size", "8",
      "--data-dir", str(inaturalist_dir))
  # Two experiences (Insecta, then Aves): a 2 x 2 accuracy matrix.
  assert np.shape(results["accuracy_matrix"]) == (2, 2)
  assert results["config"]["super_categories"] == "Insecta, Aves"
  # Read lazily by default, recorded as the benchmark was built.
  assert results["config"]["lazy"] is True
  assert cli.main(["run", "--benchmark", "split_inaturalist",
                   "--super-categories", "Aves,Birds", "--data-dir",
                   str(inaturalist_dir), "--logdir", str(tmp_path / "bad")
                   ]) != 0
  assert "['Birds'] are not supercategories" in capsys.readouterr().err
  assert cli.main(["run", "--benchmark", "split_mnist", "--full-resolution",
                   "--logdir", str(tmp_path / "bad2")]) != 0
  assert ("--full-resolution has no effect: --benchmark split_mnist does "
          "not use it") in capsys.readouterr().err


def test_resized_source_decodes_as_tfds_on_every_thread_count(
    inaturalist_dir):
  source = tfds.builder("i_naturalist2018", data_dir=inaturalist_dir
                        ).as_data_source(split="train")
  crop = resizing.resize_center_crop(12)
  keys = list(range(len(source)))
  # tfds decodes each image, then the crop: what ResizedSource must give
  # from the undecoded files, one by one or on threads.
  expected = [crop(np.asarray(r["image"])) for r in source.__getitems__(keys)]
  for workers in (1, 3):
    read = resizing.ResizedSource(source, crop, workers=workers)
    got = read.__getitems__(keys)
    for want, record, stored in zip(expected, got, source.__getitems__(keys)):
      np.testing.assert_array_equal(record["image"], want)
      assert record["label"] == stored["label"]
  np.testing.assert_array_equal(
      resizing.ResizedSource(source, crop)[3]["image"], expected[3])
  with pytest.raises(ValueError, match="workers must be a positive integer"):
    resizing.ResizedSource(source, crop, workers=0)


def test_resized_sources_are_fingerprinted_by_dataset_and_resize(
    inaturalist_dir):
  source = tfds.builder("i_naturalist2018", data_dir=inaturalist_dir
                        ).as_data_source(split="train")

  def fingerprint(resize, of=source):
    return sources.RecordArray(resizing.ResizedSource(of, resize)
                               )[np.array([0, 2])].fingerprint()

  crop = fingerprint(resizing.resize_center_crop(12))
  assert "i_naturalist2018/1.0.0|train|" in crop
  assert "resize_center_crop(12, resize_to=14)" in crop
  assert crop == fingerprint(resizing.resize_center_crop(12))
  assert crop != fingerprint(resizing.resize_center_crop(12, resize_to=20))
  assert crop != fingerprint(resizing.resize_square(12))
  # An unnamed resize or a source without a name: hashed by their bytes.
  assert fingerprint(lambda image: image[:4, :4]) is None
  records = [{"image": np.zeros((5, 5, 3), np.uint8), "label": 0}] * 3
  assert fingerprint(resizing.resize_square(2), records) is None


def test_stored_grayscale_and_cmyk_jpegs_become_rgb_as_avalanche_reads_them(
    tmp_path):
  # Random-pixel JPEG files in Pillow's L, CMYK and RGB modes, stored as
  # they are; Avalanche's loader is Image.open(path).convert("RGB").
  rng = np.random.default_rng(0)
  files = []
  for mode, channels, (h, w) in [("L", 1, (30, 41)), ("CMYK", 4, (37, 22)),
                                 ("RGB", 3, (25, 25))]:
    pixels = rng.integers(0, 256, (h, w, channels), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(
        buffer, "JPEG")
    files.append(buffer.getvalue())

  class Jpegs(tfds.builder_cls("i_naturalist2018"), skip_registration=True):

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": ((i, {"image": io.BytesIO(data), "label": i, "id":
                             str(i), "supercategory": "Aves"})
                        for i, data in enumerate(files))}

  Jpegs.name = "i_naturalist2018"
  Jpegs(data_dir=tmp_path, file_format="array_record").download_and_prepare()
  source = tfds.builder("i_naturalist2018", data_dir=tmp_path
                        ).as_data_source(split="train")
  crop = resizing.resize_center_crop(16)
  read = resizing.ResizedSource(source, crop, workers=2)
  got = read.__getitems__(list(range(3)))
  for record in got:
    with Image.open(io.BytesIO(files[record["label"]])) as image:
      expected = crop(np.asarray(image.convert("RGB")))
    assert record["image"].shape == (16, 16, 3)
    np.testing.assert_array_equal(record["image"], expected)


class _NoFirstRecord(list):
  """Records whose first cannot be read."""

  def __getitem__(self, index):
    if index == 0:
      raise AssertionError("record 0 was read")
    return super().__getitem__(index)


def test_a_view_of_selected_records_reads_none_outside_them():
  records = _NoFirstRecord({"image": np.full((2, 2), i, np.uint8),
                            "label": i} for i in range(4))
  view = sources.RecordArray(records, indices=np.array([3, 1]))
  assert view.shape == (2, 2, 2)
  assert np.asarray(view)[:, 0, 0].tolist() == [3, 1]


def _smooth_jpeg(h, w):
  """A photograph-like JPEG file: smooth colour gradients."""
  rows, cols = np.mgrid[0:h, 0:w]
  pixels = np.stack([rows * 255 // h, cols * 255 // w,
                     (rows + cols) * 255 // (h + w)], -1).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
  return buffer.getvalue()


def test_draft_decodes_jpegs_at_a_reduced_scale_close_to_a_full_decode():
  records = [{"image": _smooth_jpeg(300, 400), "label": 0}]
  crop = resizing.resize_center_crop(32)  # Shorter side to 37 first.
  seen = []

  def spy(image):
    seen.append(image.shape)
    return crop(image)

  spy.draft_size, spy.description = crop.draft_size, crop.description
  exact = resizing.ResizedSource(records, spy)[0]["image"]
  fast = resizing.ResizedSource(records, spy, draft=True)[0]["image"]
  # libjpeg's largest scale that keeps the shorter side at least 37 and
  # the longer at least ceil(37 * 400 / 300) = 50: 1/8, so 38 x 50.
  assert seen == [(300, 400, 3), (38, 50, 3)]
  assert fast.shape == exact.shape == (32, 32, 3)
  difference = np.abs(fast.astype(int) - exact.astype(int))
  assert 0 < difference.max() and difference.mean() < 3
  with pytest.raises(ValueError, match="draft=True needs the resize's "
                     "draft_size"):
    resizing.ResizedSource(records, lambda image: image, draft=True)
  with pytest.raises(TypeError, match="draft must be True or False"):
    resizing.ResizedSource(records, crop, draft="yes")


def test_draft_is_part_of_the_fingerprint(inaturalist_dir):
  source = tfds.builder("i_naturalist2018", data_dir=inaturalist_dir
                        ).as_data_source(split="train")
  crop = resizing.resize_center_crop(12)
  exact = resizing.ResizedSource(source, crop).fingerprint()
  fast = resizing.ResizedSource(source, crop, draft=True).fingerprint()
  assert exact != fast and "resize_center_crop(12, resize_to=14)|draft" in fast


def test_fast_decode_reads_the_same_benchmark_from_png_files(inaturalist_dir,
                                                              tmp_path):
  # The fake dataset stores PNG files, which have no reduced-scale decode.
  exact = classic.split_inaturalist(["Aves"], image_size=8,
                                    data_dir=inaturalist_dir)
  fast = classic.split_inaturalist(["Aves"], image_size=8, fast_decode=True,
                                   data_dir=inaturalist_dir)
  np.testing.assert_array_equal(np.asarray(fast.train_stream[0].x),
                                np.asarray(exact.train_stream[0].x))
  with pytest.raises(ValueError, match="fast_decode=True decodes "
                     "full-resolution JPEG files, but imagenet_resized "
                     "stores small decoded images; expected "
                     "full_resolution=True"):
    classic.split_imagenet(fast_decode=True, data_dir=tmp_path)
