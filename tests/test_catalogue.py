"""The benchmark catalogue through tfds's real loading path, and augmentations.

tfds datasets are mocked with ``tfds.testing.mock_data(as_data_source_fn=...)``:
``tfds.builder(name, data_dir=...)`` builds the real builder (features, label
counts) and only ``as_data_source`` is replaced, by records that cover every
class (tfds 4.9.10's default mock returns random labels and its batched
``__getitems__`` is broken, see tests/test_sources.py).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import tiny_cli_results
from PIL import Image

import jaxcl
from jaxcl import cli
from jaxcl.benchmarks import augment, classic, files, sources

# Label ids used by the fake records; Omniglot's 1623 are capped to keep the
# fake data small (its loader relabels the characters present).
_N_LABELS = {"omniglot": 12}
_PER_CLASS = 5


def _fake_source(builder, split, **kwargs):
  """Deterministic records: ``_PER_CLASS`` per class; pixel = record index."""
  del kwargs
  features = builder.info.features
  n_labels = _N_LABELS.get(builder.name, features["label"].num_classes)
  records = []
  for i in range(_PER_CLASS * n_labels):
    shape = [d if d is not None else 6 + i % 3 for d in features["image"].shape]
    image = np.full(shape, (i + (split == "test")) % 256, np.uint8)
    records.append({"image": image, "label": i % n_labels})
  return records


@pytest.fixture
def mock_tfds(tmp_path):
  """A tfds data_dir whose datasets all read the fake records."""
  with tfds.testing.mock_data(as_data_source_fn=_fake_source):
    yield tmp_path


def _normalised_zero(bench):
  return np.asarray(bench.preprocess(jnp.zeros((1,) + bench.input_shape,
                                               jnp.uint8)))[0]


def _check_exact(bench, n_records):
  """Every record of each split is in exactly one experience."""
  assert sum(len(e) for e in bench.train_stream) == n_records
  assert sum(len(e) for e in bench.test_stream) == n_records
  for e in bench.train_stream:
    assert e.x.dtype == np.uint8 and e.x.shape[1:] == bench.input_shape
    assert set(np.unique(e.y)) == set(e.classes)


@pytest.mark.parametrize("factory, kwargs, n_classes, shape, mean, std, aug", [
    ("split_mnist", {}, 10, (28, 28, 1), classic.MNIST_MEAN,
     classic.MNIST_STD, False),
    ("split_fmnist", {}, 10, (28, 28, 1), classic.FMNIST_MEAN,
     classic.FMNIST_STD, False),
    ("split_kmnist", {}, 10, (28, 28, 1), classic.KMNIST_MEAN,
     classic.KMNIST_STD, False),
    ("split_cifar10", {}, 10, (32, 32, 3), classic.CIFAR10_MEAN,
     classic.CIFAR10_STD, True),
    ("split_cifar100", {"n_experiences": 10}, 100, (32, 32, 3),
     classic.CIFAR100_MEAN, classic.CIFAR100_STD, True),
    ("split_svhn", {}, 10, (32, 32, 3), classic.SVHN_MEAN, classic.SVHN_STD,
     False),
    ("split_cub200", {"image_size": 8}, 200, (8, 8, 3), classic.CIFAR10_MEAN,
     classic.CIFAR10_STD, True),
    ("split_imagenet", {"image_size": 8}, 1000, (8, 8, 3),
     classic.IMAGENET_MEAN, classic.IMAGENET_STD, True),
])
def test_class_incremental_entries(mock_tfds, factory, kwargs, n_classes, shape,
                                   mean, std, aug):
  bench = jaxcl.benchmarks.BENCHMARKS[factory](data_dir=mock_tfds, **kwargs)
  assert bench.n_classes == n_classes and bench.input_shape == shape
  assert bench.name == factory and bench.scenario == "class_incremental"
  _check_exact(bench, _PER_CLASS * n_classes)
  np.testing.assert_allclose(_normalised_zero(bench),
                             np.broadcast_to(-np.divide(mean, std), shape),
                             rtol=1e-5)
  assert (bench.augment is not None) == aug


@pytest.mark.parametrize("factory", ["split_mnist", "split_fmnist",
                                     "split_kmnist", "split_cifar10",
                                     "split_cifar100", "split_svhn"])
def test_lazy_entries_hold_views_of_the_same_samples(mock_tfds, factory):
  kwargs = {"data_dir": mock_tfds, "seed": 2}
  eager = jaxcl.benchmarks.BENCHMARKS[factory](**kwargs)
  lazy = jaxcl.benchmarks.BENCHMARKS[factory](lazy=True, **kwargs)
  for stream in ("train_stream", "test_stream"):
    for e, v in zip(getattr(eager, stream), getattr(lazy, stream), strict=True):
      assert isinstance(v.x, sources.RecordArray)
      assert v.classes == e.classes and np.array_equal(v.y, e.y)
      np.testing.assert_array_equal(np.asarray(v.x), e.x)


def test_split_imagenet_reads_the_image_size_asked_lazily(mock_tfds):
  lazy = classic.split_imagenet(5, image_size=16, seed=1, data_dir=mock_tfds)
  eager = classic.split_imagenet(5, image_size=16, seed=1, data_dir=mock_tfds,
                                 lazy=False)
  assert lazy.input_shape == (16, 16, 3)
  assert isinstance(lazy.train_stream[2].x, sources.RecordArray)
  np.testing.assert_array_equal(np.asarray(lazy.train_stream[2].x),
                                eager.train_stream[2].x)
  assert len(lazy.test_stream[4]) == _PER_CLASS * 200
  with pytest.raises(ValueError, match=r"image_size must be one of \(8, 16, "
                     r"32, 64\) \(the sizes of tfds imagenet_resized\), got "
                     r"48"):
    classic.split_imagenet(image_size=48, data_dir=mock_tfds)
  with pytest.raises(ValueError, match=r"image_size must be one of .* got "
                     r"64\.0"):
    classic.split_imagenet(image_size=64.0, data_dir=mock_tfds)


def test_image_size_from_the_command_line(mock_tfds, tmp_path, capsys):
  assert cli.main(["run", "--benchmark", "split_imagenet", "--image-size",
                   "8", "--data-dir", str(mock_tfds), "--n-experiences", "2",
                   "--epochs", "1", "--hidden-size", "8", "--no-progress",
                   "--quiet", "--compilation-cache", "", "--logdir",
                   str(tmp_path / "run")]) == 0
  assert "top5_accuracy" in (tmp_path / "run" / "results.json").read_text()
  assert cli.main(["run", "--benchmark", "split_mnist", "--image-size", "32",
                   "--logdir", str(tmp_path / "other")]) != 0
  assert ("--image-size has no effect on --benchmark split_mnist; it sets "
          "the image side of clear10, clear100, concon_disjoint, "
          "concon_strict, concon_unconfounded, openloris, split_cub200, "
          "split_imagenet, split_inaturalist, stream51.") in (
              capsys.readouterr().err)
  assert cli.main(["run", "--benchmark", "split_imagenet", "--image-size",
                   "48", "--data-dir", str(mock_tfds), "--logdir",
                   str(tmp_path / "other")]) != 0
  assert "--image-size must be one of (8, 16, 32, 64)" in (
      capsys.readouterr().err)
  assert not (tmp_path / "other").exists()


def test_relabelling_from_the_command_line(tmp_path, capsys, monkeypatch):
  results = tiny_cli_results(
      tmp_path / "each", "--benchmark", "split_mnist", "--return-task-id",
      "--class-ids-from-zero-in-each-exp")
  # Every experience's two classes are 0 and 1: a head of two classes.
  assert np.shape(results["confusion_matrix"]) == (2, 2)
  assert results["config"]["class_ids_from_zero_in_each_exp"] is True
  given = []

  @functools.wraps(classic.split_mnist)  # The CLI reads its signature.
  def recorded(**kwargs):
    given.append(kwargs)
    return classic.split_mnist(**kwargs)

  monkeypatch.setitem(jaxcl.benchmarks.BENCHMARKS, "split_mnist", recorded)
  tiny_cli_results(tmp_path / "first", "--benchmark", "split_mnist",
                   "--class-ids-from-zero-from-first-exp")
  assert given[0]["class_ids_from_zero_from_first_exp"] is True
  assert "class_ids_from_zero_in_each_exp" not in given[0]
  assert cli.main(["run", "--benchmark", "split_mnist",
                   "--class-ids-from-zero-in-each-exp",
                   "--class-ids-from-zero-from-first-exp", "--logdir",
                   str(tmp_path / "both")]) != 0
  assert "--class-ids-from-zero-in-each-exp and " in capsys.readouterr().err
  assert cli.main(["run", "--benchmark", "permuted_mnist",
                   "--class-ids-from-zero-in-each-exp", "--logdir",
                   str(tmp_path / "none")]) != 0
  assert ("--class-ids-from-zero-in-each-exp has no effect: --benchmark "
          "permuted_mnist does not use it") in capsys.readouterr().err


@pytest.mark.parametrize("benchmark, flags, expected", [
    ("split_imagenet", ["--full-resolution"], {"full_resolution": True}),
    ("split_inaturalist", ["--fast-decode"], {"fast_decode": True}),
    ("split_inaturalist", ["--super-categories", "Aves, Fungi"],
     {"super_categories": ["Aves", "Fungi"]}),
])
def test_benchmark_flags_reach_the_factory(benchmark, flags, expected,
                                           tmp_path, capsys, monkeypatch):
  given = []
  original = jaxcl.benchmarks.BENCHMARKS[benchmark]

  @functools.wraps(original)  # The CLI reads its signature.
  def recorded(**kwargs):
    given.append(kwargs)
    raise ValueError("recorded")

  monkeypatch.setitem(jaxcl.benchmarks.BENCHMARKS, benchmark, recorded)
  assert cli.main(["run", "--benchmark", benchmark, *flags, "--logdir",
                   str(tmp_path / "run")]) != 0
  assert given[0].items() >= expected.items()
  # Both read lazily by default: the labels' pass is shared between hosts
  # (one process here: not split).
  assert given[0]["lazy"] is True and given[0]["split_over_hosts"] is False
  assert cli.main(["run", "--benchmark", "split_mnist", *flags, "--logdir",
                   str(tmp_path / "none")]) != 0
  assert (f"{flags[0]}" + (f" {flags[1]}" if len(flags) > 1 else "") +
          " has no effect: --benchmark split_mnist does not use it") in (
              capsys.readouterr().err)


def test_full_resolution_is_named_as_a_flag_in_errors(tmp_path, capsys):
  assert cli.main(["run", "--benchmark", "split_imagenet", "--image-size",
                   "48", "--logdir", str(tmp_path / "run")]) != 0
  assert ("--image-size must be one of (8, 16, 32, 64) (the sizes of tfds "
          "imagenet_resized), got 48; any positive size with "
          "--full-resolution.") in capsys.readouterr().err


def test_lazy_bundled_split_mnist_and_split_over_hosts_needs_lazy():
  lazy = classic.split_mnist(5, seed=1, lazy=True)
  eager = classic.split_mnist(5, seed=1)
  assert isinstance(lazy.train_stream[3].x, sources.RecordArray)
  np.testing.assert_array_equal(np.asarray(lazy.train_stream[3].x),
                                eager.train_stream[3].x)
  with pytest.raises(ValueError, match="split_over_hosts=True needs lazy"):
    classic.split_mnist(5, split_over_hosts=True)


def test_entries_read_mocked_data_without_a_data_dir(mock_tfds):
  # An on-disk check of tfds's default data_dir refused what mock_data
  # serves; the read itself decides now (with data_dir it already worked).
  del mock_tfds
  assert len(classic.split_fmnist(n_experiences=2).train_stream) == 2
  assert len(classic.split_cub200(image_size=8).train_stream) == 11


def test_a_missing_dataset_names_the_benchmark_and_data_dir(tmp_path,
                                                             monkeypatch):
  monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path))
  with pytest.raises(ValueError, match=r"split_fmnist reads the tfds dataset "
                     r"'fashion_mnist', which is not bundled with jaxcl, and "
                     r"no data_dir was given: .*it is not prepared there, or "
                     r"tfds has no dataset of that name\. To prepare it.*pass "
                     r"data_dir=DIR \(CLI: --data-dir DIR\)"):
    classic.split_fmnist()
  # Other errors are not taken for a missing dataset.
  with pytest.raises(ValueError, match="needs lazy=True") as info:
    classic.split_cifar10(split_over_hosts=True)
  assert "no data_dir was given" not in str(info.value)


def test_first_experience_with_half_classes_and_cub_default(mock_tfds):
  bench = classic.split_cifar100(6, first_exp_with_half_classes=True, seed=3,
                                 data_dir=mock_tfds)
  assert [len(e.classes) for e in bench.train_stream] == [50] + [10] * 5
  cub = classic.split_cub200(image_size=8, data_dir=mock_tfds)
  assert [len(e.classes) for e in cub.train_stream] == [100] + [10] * 10
  assert cub.train_stream[0].classes == tuple(range(100))  # shuffle=False.
  # One experience may take every class (Avalanche's SplitCUB200 allows it).
  whole = classic.split_cub200(1, classes_first_batch=200, image_size=8,
                               data_dir=mock_tfds)
  assert [len(e.classes) for e in whole.train_stream] == [200]
  fashion = classic.split_fmnist(6, first_batch_with_half_classes=True,
                                 seed=1, data_dir=mock_tfds)
  assert [len(e.classes) for e in fashion.train_stream] == [5] + [1] * 5


def test_split_cifar110(mock_tfds):
  bench = classic.split_cifar110(6, seed=1, data_dir=mock_tfds)
  assert bench.n_classes == 110
  assert bench.train_stream[0].classes == tuple(range(10))
  later = [c for e in bench.train_stream[1:] for c in e.classes]
  assert sorted(later) == list(range(10, 110))
  assert all(len(e.classes) == 20 for e in bench.train_stream[1:])
  _check_exact(bench, _PER_CLASS * 110)
  with pytest.raises(ValueError, match="permutation of the CIFAR-100 classes"):
    classic.split_cifar110(data_dir=mock_tfds, fixed_class_order=[0, 1])


def test_split_omniglot_holds_out_drawings_of_each_class(mock_tfds):
  bench = classic.split_omniglot(4, data_dir=mock_tfds)
  assert bench.n_classes == 12 and bench.input_shape == (105, 105, 1)
  for train, test in zip(bench.train_stream, bench.test_stream):
    assert train.classes == test.classes and len(train.classes) == 3
    # 5 drawings per character: 5 // 5 = 1 to test, 4 to train.
    np.testing.assert_array_equal(np.bincount(test.y)[list(test.classes)], 1)
    np.testing.assert_array_equal(np.bincount(train.y)[list(train.classes)], 4)


def _one_bit_omniglot(page):
  """A data source fn: omniglot records, strokes of 0 on a page of ``page``."""
  def source(builder, split, **kwargs):
    del builder, split, kwargs
    n_labels = _N_LABELS["omniglot"]
    records = []
    for i in range(_PER_CLASS * n_labels):
      image = np.full((105, 105, 3), page, np.uint8)
      image[10:90, i:i + 4] = 0
      records.append({"image": image, "label": i % n_labels})
    return records
  return source


def test_split_omniglot_binarises_both_decodings_of_its_1_bit_pngs(tmp_path):
  # tfds's 1-bit PNGs decode to pages of 1 through PIL (ArrayRecord), of 255
  # through TensorFlow (TFRecord).
  benches = {}
  for page in (1, 255):
    with tfds.testing.mock_data(as_data_source_fn=_one_bit_omniglot(page)):
      benches[page] = classic.split_omniglot(4, data_dir=tmp_path)
  for stream in ("train_stream", "test_stream"):
    for bit, byte in zip(getattr(benches[1], stream),
                         getattr(benches[255], stream), strict=True):
      assert bit.x.dtype == np.uint8
      np.testing.assert_array_equal(bit.x, byte.x)
  x = benches[1].train_stream[0].x
  np.testing.assert_array_equal(np.unique(x), [0, 255])
  normalised = np.asarray(benches[1].preprocess(jnp.asarray(x)))
  np.testing.assert_allclose(
      [normalised.min(), normalised.max()],
      np.subtract([0, 1], classic.OMNIGLOT_MEAN) / classic.OMNIGLOT_STD,
      rtol=1e-5)


def test_five_datasets(mock_tfds):
  bench = classic.five_datasets(return_task_id=True, data_dir=mock_tfds)
  assert bench.input_shape == (32, 32, 3) and bench.n_classes == 50
  assert [e.classes for e in bench.train_stream] == [
      tuple(range(10 * k, 10 * k + 10)) for k in range(5)]
  assert [e.task_label for e in bench.test_stream] == [0, 1, 2, 3, 4]
  mnist = bench.train_stream[0].x
  # 28x28x1 padded by 2 pixels of 0 and repeated to three channels.
  assert (mnist[:, :2] == 0).all() and (mnist[:, -2:] == 0).all()
  np.testing.assert_array_equal(mnist[..., 0], mnist[..., 2])
  assert mnist[1, 2, 2, 0] == 1  # Record 1's pixels, past the padding.
  np.testing.assert_allclose(_normalised_zero(bench), -1.0)


def test_permuted_mnist_from_tfds(mock_tfds):
  bench = classic.permuted_mnist(2, seed=0, data_dir=mock_tfds)
  assert [len(e) for e in bench.train_stream] == [50, 50]  # Mocked mnist.
  assert bench.n_classes == 10 and bench.scenario == "domain_incremental"


def test_rotated_mnist_bundled_without_data_dir():
  bench = classic.rotated_mnist(2, rotations_list=[90, -90])
  assert [len(e) for e in bench.train_stream] == [4000, 4000]
  np.testing.assert_array_equal(
      bench.train_stream[1].x[:5],
      np.rot90(bench.train_stream[0].x[:5], 2, axes=(1, 2)))
  assert bench.train_stream[0].x.dtype == np.uint8


def test_missing_tfds_dataset_says_how_to_prepare(monkeypatch, tmp_path):
  monkeypatch.setattr(sources, "has_tfds_dataset", lambda *args: False)
  for factory, name in [(classic.split_cifar10, "cifar10"),
                        (classic.split_cub200, "caltech_birds2011"),
                        (classic.five_datasets, "mnist")]:
    with pytest.raises(ValueError, match=f"tfds build {name} --data_dir DIR "
                       "--file_format array_record"):
      factory()
  with pytest.raises(ValueError, match="tfds build svhn_cropped"):
    classic.split_svhn(data_dir=tmp_path)  # Not prepared there.


def _prepare_fake_cub(data_dir, file_format):
  """tfds's ``caltech_birds2011`` builder, writing 4 small records a split."""
  class FakeCub(tfds.builder_cls("caltech_birds2011"), skip_registration=True):

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._records(), "test": self._records()}

    def _records(self):
      for i in range(4):  # PIL images: encoding them needs no TensorFlow.
        side = 5 + i
        yield i, {"image": Image.new("RGB", (side, side), (40 * i,) * 3),
                  "image/filename": f"{i}.jpg", "label": i % 2,
                  "label_name": "bird",
                  "bbox": tfds.features.BBox(0., 0., 1., 1.),
                  "segmentation_mask": Image.new("L", (side, side))}

  FakeCub.name = "caltech_birds2011"
  FakeCub(data_dir=data_dir, file_format=file_format).download_and_prepare()


def test_tilde_in_data_dir_is_the_home_directory(tmp_path, monkeypatch):
  home = tmp_path / "home"
  _prepare_fake_cub(home / "tfds", "array_record")
  source = home / "tiny-imagenet-200"
  _write_images(source / "train" / "n01" / "images", 1, 4, 0)
  _write_images(source / "val" / "images", 1, 4, 0)
  (source / "val" / "val_annotations.txt").write_text("0.png\tn01\n")
  (tmp_path / "cwd").mkdir()
  monkeypatch.setenv("HOME", str(home))
  monkeypatch.chdir(tmp_path / "cwd")
  cub = classic.split_cub200(1, classes_first_batch=None, image_size=4,
                             data_dir="~/tfds")
  assert cub.n_classes == 2 and [len(e) for e in cub.train_stream] == [4]
  target = classic.prepare_tiny_imagenet("~/tiny-imagenet-200", "~/data")
  assert target == home / "data" / "tiny_imagenet"
  assert (target / "train" / "n01" / "0.png").is_file()
  assert (target / "test" / "n01" / "0.png").is_file()
  assert not (tmp_path / "cwd" / "~").exists()


def test_split_cub200_on_tfrecord_says_to_prepare_array_record(tmp_path):
  _prepare_fake_cub(tmp_path, "tfrecord")
  with pytest.raises(ValueError) as info:
    classic.split_cub200(data_dir=tmp_path)
  message = str(info.value)
  assert message.startswith(
      f"Cannot load split 'train' of tfds dataset 'caltech_birds2011' from "
      f"{tmp_path}: split_cub200, which resizes its images one by one, needs "
      "it in ArrayRecord format (random access), but it is prepared there as "
      "tfrecord only. Prepare it again with `--file_format array_record`")
  assert (f"tfds build caltech_birds2011 --data_dir {tmp_path} --file_format "
          "array_record") in message
  assert "damaged" not in message and "TFRecord format works" not in message


def _write_images(folder, count, size, value):
  folder.mkdir(parents=True)
  for i in range(count):
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(
        folder / f"{i}.png")


def test_core50_from_image_folders(tmp_path, monkeypatch):
  # Both scenarios read the same folders: read them once (TensorFlow is slow).
  monkeypatch.setattr(classic, "_image_folder",
                      functools.cache(classic._image_folder))
  root = tmp_path / "core50_32x32"
  objects = range(1, 50, 5)  # One object of each of the 10 categories.
  for session in range(1, 12):
    for obj in objects:
      _write_images(root / f"s{session}" / f"o{obj}", 1, 32, obj)
  ni = classic.core50(scenario="ni", mini=True, seed=1, data_dir=tmp_path)
  assert len(ni.train_stream) == 8 and len(ni.test_stream) == 1
  assert len(ni.test_stream[0]) == 30 and ni.input_shape == (32, 32, 3)
  for e in ni.train_stream:  # Pixel value = object number = label + 1.
    np.testing.assert_array_equal(e.x[:, 0, 0, 0], e.y + 1)
    assert e.classes == tuple(o - 1 for o in objects)
  nc = classic.core50(scenario="nc", mini=True, object_lvl=False,
                      data_dir=tmp_path)
  assert nc.n_classes == 10 and [len(e.classes) for e in nc.train_stream] == (
      [2] + [1] * 8)
  for e in nc.train_stream:
    np.testing.assert_array_equal(e.y, (e.x[:, 0, 0, 0] - 1) // 5)
  with pytest.raises(ValueError, match="core50_128x128.zip"):
    classic.core50(data_dir=tmp_path)
  with pytest.raises(ValueError, match="needs data_dir"):
    classic.core50()


def _write_core50_run(data_dir, folder, n_experiences, run, size=32,
                      renumber=False):
  """Images of objects 1..50 (pixel value = object number) and a run's file
  lists: experience k holds objects k % 50 + 1 and (k + 7) % 50 + 1 of
  session 1, the test list one image of session 3 of each of those
  objects. Labelled object - 1, or (``renumber``, as the nc lists) by the
  objects' order of appearance."""
  images = data_dir / f"core50_{size}x{size}"
  for session in (1, 3):
    for obj in range(1, 51):
      if not (images / f"s{session}" / f"o{obj}").exists():
        _write_images(images / f"s{session}" / f"o{obj}", 1, size, obj)
  expected = [[k % 50 + 1, (k + 7) % 50 + 1] for k in range(n_experiences)]
  appearance = list(dict.fromkeys(sum(expected, [])))
  label = appearance.index if renumber else (lambda o: o - 1)
  lists = data_dir / folder / f"run{run}"
  lists.mkdir(parents=True)
  for k, objects in enumerate(expected):
    (lists / f"train_batch_{k:02d}_filelist.txt").write_text("".join(
        f"s1/o{o}/0.png {label(o)}\n" for o in objects))
  (lists / "test_filelist.txt").write_text("".join(
      f"s3/o{o}/0.png {label(o)}\n" for o in sorted(appearance)))
  return expected


def test_core50_official_runs_from_file_lists(tmp_path):
  expected = _write_core50_run(tmp_path, "batches_filelists/NI_inc", 8, 3)
  ni = classic.core50(scenario="ni", run=3, mini=True, data_dir=tmp_path)
  # The classes are the labels seen (all 50 objects in a real run).
  assert ni.name == "core50_ni" and ni.n_classes == 15
  assert len(ni.train_stream) == 8 and len(ni.test_stream) == 1
  for exp, objects in zip(ni.train_stream, expected, strict=True):
    # The lists' order and labels; the pixels show which file was read.
    assert exp.y.tolist() == [o - 1 for o in objects]
    np.testing.assert_array_equal(exp.x[:, 5, 5, 0], objects)
  test, seen = ni.test_stream[0], sorted({*sum(expected, [])})
  assert test.y.tolist() == [o - 1 for o in seen] and len(seen) == 15
  np.testing.assert_array_equal(test.x[:, 0, 0, 1], seen)
  categories = classic.core50(scenario="ni", run=3, mini=True,
                              object_lvl=False, data_dir=tmp_path)
  assert categories.n_classes == 3  # Objects 1-15: categories 0-2.
  assert categories.train_stream[2].y.tolist() == [(3 - 1) // 5,
                                                   (10 - 1) // 5]
  (tmp_path / "batches_filelists/NI_inc/run3/train_batch_05_filelist.txt"
   ).write_text("\n")
  with pytest.raises(ValueError, match=r"The file list .*NI_inc/run3/"
                     r"train_batch_05_filelist.txt names no image"):
    classic.core50(scenario="ni", run=3, mini=True, data_dir=tmp_path)
  (tmp_path / "core50_32x32/s1/o3/0.png").unlink()
  with pytest.raises(ValueError, match=r"1 of the 2 images the file list "
                     r".*train_batch_02_filelist.txt names are not under "
                     r".*core50_32x32 \(first: .*s1/o3/0.png\). Download "
                     r"core50_128x128.zip"):
    classic.core50(scenario="ni", run=3, mini=True, data_dir=tmp_path)


def test_core50_nc_lists_number_objects_by_appearance(tmp_path):
  expected = _write_core50_run(tmp_path, "batches_filelists/NC_inc", 9, 0,
                               renumber=True)
  order = list(dict.fromkeys(sum(expected, [])))
  objects = classic.core50(scenario="nc", run=0, mini=True,
                           data_dir=tmp_path)
  assert objects.train_stream[4].y.tolist() == [order.index(o)
                                                for o in expected[4]]
  # Categories come from the object folders, not from the labels.
  categories = classic.core50(scenario="nc", run=0, mini=True,
                              object_lvl=False, data_dir=tmp_path)
  for exp, objs in zip(categories.train_stream, expected, strict=True):
    assert exp.y.tolist() == [(o - 1) // 5 for o in objs]
  assert categories.test_stream[0].y.tolist() == [
      (o - 1) // 5 for o in sorted(order)]
  lists = tmp_path / "batches_filelists/NC_inc/run0"
  _write_images(tmp_path / "core50_32x32/s3/x1", 1, 32, 1)
  (lists / "test_filelist.txt").write_text("s3/x1/0.png 0\n")
  with pytest.raises(ValueError, match=r"test_filelist.txt lists .*s3/x1/"
                     r"0.png, which is not in an object folder o1..o50"):
    classic.core50(scenario="nc", run=0, mini=True, object_lvl=False,
                   data_dir=tmp_path)


@pytest.mark.parametrize("scenario, folder, n_experiences", [
    ("ni", "batches_filelists/NI_inc", 8),
    ("nc", "batches_filelists/NC_inc", 9),
    ("nic", "batches_filelists/NIC_inc", 79),
    ("nicv2_79", "NIC_v2_79", 79),
    ("nicv2_196", "NIC_v2_196", 196),
    ("nicv2_391", "NIC_v2_391", 391),
])
def test_core50_reads_each_scenario_s_lists(tmp_path, scenario, folder,
                                            n_experiences):
  # NICv2 lists sit beside the images' folder, not in batches_filelists;
  # experiences 100 and up are numbered with three digits.
  expected = _write_core50_run(tmp_path, folder, n_experiences, 7)
  bench = classic.core50(scenario=scenario, run=7, mini=True,
                         data_dir=tmp_path)
  assert len(bench.train_stream) == n_experiences
  assert len(bench.test_stream) == 1
  np.testing.assert_array_equal(bench.train_stream[-1].x[:, 5, 5, 0],
                                expected[-1])
  last = tmp_path / folder / "run7" / (
      f"train_batch_{n_experiences - 1:02d}_filelist.txt")
  last.unlink()
  with pytest.raises(ValueError, match=rf"lacks 1 of the "
                     rf"{n_experiences + 1} file lists of CORe50 {scenario} "
                     rf"run 7 \({last.name}\).*batches_filelists"):
    classic.core50(scenario=scenario, run=7, mini=True, data_dir=tmp_path)


def test_core50_official_run_from_the_command_line(tmp_path):
  _write_core50_run(tmp_path, "batches_filelists/NI_inc", 8, 2, size=128)
  results = tiny_cli_results(
      tmp_path / "run", "--benchmark", "core50", "--scenario", "ni", "--run",
      "2", "--data-dir", str(tmp_path), "--batch-size", "2")
  assert results["config"]["scenario"] == "ni"
  assert results["config"]["run"] == 2
  # Eight experiences, one test experience: the whole test set.
  assert np.shape(results["accuracy_matrix"]) == (8, 1)


@pytest.mark.parametrize("kwargs, message", [
    ({"scenario": "nicv2_391"}, r"scenario='nicv2_391' needs run=0..9: it "
     r"exists only as CORe50's official file lists; expected a run, or "
     r"scenario='ni' or 'nc' \(drawn from the seed\)"),
    ({"scenario": "nic", "run": 10}, r"run must be one of CORe50's ten "
     r"official runs, 0..9, got 10"),
    ({"run": -1}, r"run must be a non-negative integer, got -1"),
    ({"scenario": "nicv3"}, r"Unknown scenario 'nicv3'; expected one of nc, "
     r"ni, nic, nicv2_196, nicv2_391, nicv2_79"),
    ({"run": 0, "data_dir": "gs://bucket/data"}, r"core50 with run=0 reads "
     r"its images with Pillow from a local folder, got gs://bucket/data/"
     r"core50_128x128"),
])
def test_core50_refuses_runs_it_cannot_read(kwargs, message):
  with pytest.raises(ValueError, match=message):
    classic.core50(**{"data_dir": "/nonexistent", **kwargs})


def _write_openloris(data_dir, folder, n_experiences, sizes=(6,)):
  """OpenLORIS lists of ``folder``: experience k holds one image of object
  k % 4 with pixel value 10 * (k % 4) + k, of side sizes[k % len(sizes)];
  the test list one image of each object."""
  root = data_dir / "openloris"
  lists = root / "batches_filelists" / "domain" / folder
  lists.mkdir(parents=True)
  values = []
  for k in range(n_experiences):
    obj, side = k % 4, sizes[k % len(sizes)]
    path = root / "train" / f"{k}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side, 3), 10 * obj + k, np.uint8)).save(
        path)
    (lists / f"train_batch_{k:02d}.txt").write_text(f"train/{k}.png {obj}\n")
    values.append(10 * obj + k)
  test = root / "test"
  test.mkdir(exist_ok=True)
  for obj in range(4):
    Image.fromarray(np.full((sizes[0],) * 2 + (3,), 200 + obj,
                            np.uint8)).save(test / f"{obj}.png")
  (lists / "test.txt").write_text("".join(f"test/{obj}.png {obj}\n"
                                          for obj in range(4)))
  return values


@pytest.mark.parametrize("factor, folder, n_experiences", [
    ("clutter", "clutter", 9), ("illumination", "illumination", 9),
    ("occlusion", "occlusion", 9), ("pixel", "pixel", 9),
    ("mixture-iros", "iros", 12)])
def test_openloris_factors_from_the_official_lists(tmp_path, factor, folder,
                                                   n_experiences):
  values = _write_openloris(tmp_path, folder, n_experiences)
  bench = classic.openloris(factor=factor, data_dir=tmp_path)
  assert bench.name == f"openloris_{factor}"
  assert [e.x[0, 0, 0, 0] for e in bench.train_stream] == values
  assert [e.y.tolist() for e in bench.train_stream] == [
      [k % 4] for k in range(n_experiences)]
  assert len(bench.test_stream) == 1
  assert bench.test_stream[0].y.tolist() == [0, 1, 2, 3]
  assert bench.scenario == "domain_incremental" and bench.n_classes == 4
  assert bench.input_shape == (50, 50, 3)  # The default size.
  # x / 255 on the device, as Avalanche's ToTensor.
  np.testing.assert_allclose(bench.preprocess(bench.test_stream[0].x[:1]),
                             200 / 255, rtol=1e-6)


def test_openloris_resizes_images_of_several_sizes(tmp_path):
  _write_openloris(tmp_path, "occlusion", 9, sizes=(6, 9))
  with pytest.raises(ValueError, match=r"is 9x9 but .* is 6x6; pass "
                     r"image_size"):
    classic.openloris(factor="occlusion", image_size=None, data_dir=tmp_path)
  bench = classic.openloris(factor="occlusion", image_size=4,
                            data_dir=tmp_path)
  assert bench.input_shape == (4, 4, 3)
  lists = tmp_path / "openloris/batches_filelists/domain/occlusion"
  with open(lists / "test.txt", "a") as test:
    test.write("test/0.png 7\n")
  with pytest.raises(ValueError, match=r"The test list .*occlusion/test.txt "
                     r"has labels \[7\] that no train list of OpenLORIS "
                     r"occlusion has"):
    classic.openloris(factor="occlusion", data_dir=tmp_path)
  (lists / "test.txt").unlink()
  with pytest.raises(ValueError, match=r"lacks 1 of the 10 file lists of "
                     r"OpenLORIS occlusion \(test.txt\).*batches_filelists"
                     r".zip"):
    classic.openloris(factor="occlusion", data_dir=tmp_path)


def test_official_lists_naming_absent_images_are_refused_before_decoding(
    tmp_path, monkeypatch):
  _write_openloris(tmp_path, "pixel", 9)
  (tmp_path / "openloris" / "test" / "2.png").unlink()
  (tmp_path / "openloris" / "test" / "3.png").unlink()
  monkeypatch.setattr(files, "_read_one", None)  # Never reached.
  with pytest.raises(ValueError, match=r"2 of the 4 images the file list "
                     r".*pixel/test.txt names are not under .*openloris "
                     r"\(first: .*test/2.png\). Download the image "
                     r"archives"):
    classic.openloris(factor="pixel", data_dir=tmp_path)


def test_openloris_from_the_command_line(tmp_path):
  _write_openloris(tmp_path, "iros", 12, sizes=(6, 9))
  results = tiny_cli_results(
      tmp_path / "run", "--benchmark", "openloris", "--factor",
      "mixture-iros", "--image-size", "4", "--data-dir", str(tmp_path))
  assert results["config"]["factor"] == "mixture-iros"
  assert np.shape(results["accuracy_matrix"]) == (12, 1)


@pytest.mark.parametrize("kwargs, message", [
    ({"factor": "lighting"}, r"Unknown factor 'lighting'; expected one of "
     r"clutter, illumination, mixture-iros, occlusion, pixel"),
    ({"image_size": 0}, r"image_size must be a positive integer, got 0"),
    ({}, r"/nonexistent/openloris is not a folder. Download the image "
     r"archives"),
])
def test_openloris_refusals(kwargs, message):
  with pytest.raises(ValueError, match=message):
    classic.openloris(**{"data_dir": "/nonexistent", **kwargs})


def test_tiny_imagenet_prepared_from_the_official_layout(tmp_path):
  source = tmp_path / "tiny-imagenet-200"
  wnids = ["n02", "n01", "n03", "n04"]
  for k, wnid in enumerate(wnids):
    _write_images(source / "train" / wnid / "images", 2, 64, 10 * k)
  _write_images(source / "val" / "images", 4, 64, 0)
  annotations = source / "val" / "val_annotations.txt"
  annotations.write_text("1.png\n")
  with pytest.raises(ValueError, match=r"val_annotations.txt, line 1: "
                     r"expected '<image name>\\t<wnid>"):
    classic.prepare_tiny_imagenet(source, tmp_path / "data")
  # A blank line (a trailing one, say) is skipped.
  annotations.write_text("".join(
      f"{i}.png\t{wnid}\t0\t0\t63\t63\n" for i, wnid in enumerate(wnids))
      + "\n")
  with pytest.raises(ValueError, match="prepare_tiny_imagenet"):
    classic.split_tiny_imagenet(data_dir=tmp_path / "data")
  classic.prepare_tiny_imagenet(source, tmp_path / "data")
  bench = classic.split_tiny_imagenet(2, shuffle=False,
                                      data_dir=tmp_path / "data")
  assert bench.n_classes == 4 and bench.input_shape == (64, 64, 3)
  # Labels are the sorted wnids' positions: n01 -> 0, n02 -> 1, ...
  train = {int(y): int(x[0, 0, 0]) for e in bench.train_stream
           for x, y in zip(e.x, e.y)}
  assert train == {0: 10, 1: 0, 2: 20, 3: 30}
  assert [len(e) for e in bench.test_stream] == [2, 2]


# Augmentations (the catalogue's defaults are built from them).


def test_random_crop_is_a_window_of_the_zero_padded_image():
  x = jnp.arange(4 * 5 * 6 * 2, dtype=jnp.float32).reshape(4, 5, 6, 2) + 1
  out = np.asarray(jax.jit(augment.random_crop(2))(x, jax.random.key(0)))
  assert out.shape == x.shape
  padded = np.pad(np.asarray(x), [(0, 0), (2, 2), (2, 2), (0, 0)])
  offsets = []
  for image, pad in zip(out, padded):
    hits = [(dy, dx) for dy in range(5) for dx in range(5)
            if np.array_equal(image, pad[dy:dy + 5, dx:dx + 6])]
    assert len(hits) == 1
    offsets.append(hits[0])
  assert len(set(offsets)) > 1  # Each sample draws its own offset.
  again = augment.random_crop(2)(x, jax.random.key(0))
  np.testing.assert_array_equal(out, again)
  np.testing.assert_array_equal(augment.random_crop(0)(x, jax.random.key(3)), x)
  np.testing.assert_array_equal(
      augment.random_crop(np.int64(2))(x, jax.random.key(0)), out)


def test_normalizer_checks_its_constants_and_channels():
  f = jaxcl.benchmarks.normalizer([0.5, 0.25], [0.5, 0.25], scale=1.0)
  np.testing.assert_allclose(f(jnp.array([[1.0, 0.5]])), [[1.0, 1.0]])
  with pytest.raises(ValueError, match="std must be positive, got 0.0"):
    jaxcl.benchmarks.normalizer(0.5, 0.0)
  with pytest.raises(ValueError, match="mean must be finite"):
    jaxcl.benchmarks.normalizer(float("nan"), 1.0)
  with pytest.raises(ValueError, match=r"normalizer's mean has shape \(2,\), "
                     r"which does not broadcast to the samples' shape "
                     r"\(4, 4, 3\)"):
    f(jnp.ones((1, 4, 4, 3)))
  # Per-pixel constants (a mean image) broadcast as well.
  mean_image = np.full((4, 4, 1), 0.5, np.float32)
  per_pixel = jaxcl.benchmarks.normalizer(mean_image, 0.5, scale=1.0)
  np.testing.assert_allclose(per_pixel(jnp.ones((2, 4, 4, 3))), 1.0)


def test_random_flip_flips_left_right_per_sample():
  x = jnp.arange(16 * 2 * 3, dtype=jnp.int32).reshape(16, 2, 3, 1)
  out = np.asarray(jax.jit(augment.random_flip())(x, jax.random.key(1)))
  flipped = [np.array_equal(o, np.asarray(i)[:, ::-1]) for o, i in zip(out, x)]
  kept = [np.array_equal(o, i) for o, i in zip(out, x)]
  assert all(f != k for f, k in zip(flipped, kept))  # Each is one or other.
  assert 0 < sum(flipped) < 16
  np.testing.assert_array_equal(augment.random_flip(0.0)(x, jax.random.key(1)), x)


def test_random_grayscale_is_the_luma_on_three_channels_per_sample():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (32, 3, 2, 3)).astype(np.uint8)
  out = np.asarray(jax.jit(augment.random_grayscale(0.5))(
      jnp.asarray(x), jax.random.key(2)))
  assert out.dtype == np.uint8
  luma = (0.2989 * x[..., 0] + 0.587 * x[..., 1]
          + 0.114 * x[..., 2]).astype(np.float32)
  gray = np.repeat(np.floor(luma)[..., None], 3, axis=-1).astype(np.uint8)
  turned = [np.array_equal(o, g) for o, g in zip(out, gray)]
  kept = [np.array_equal(o, i) for o, i in zip(out, x)]
  assert all(t or k for t, k in zip(turned, kept))
  assert 0 < sum(turned) < 32 and 0 < sum(kept) < 32
  np.testing.assert_array_equal(
      augment.random_grayscale(0.0)(jnp.asarray(x), jax.random.key(2)), x)
  one_channel = jnp.asarray(x[..., :1])
  np.testing.assert_array_equal(
      augment.random_grayscale(1.0)(one_channel, jax.random.key(2)),
      one_channel)
  with pytest.raises(ValueError, match="1 or 3 channels, got 2"):
    augment.random_grayscale()(jnp.ones((1, 2, 2, 2)), jax.random.key(0))
  with pytest.raises(ValueError, match="probability"):
    augment.random_grayscale(1.5)


def test_compose_uses_one_key_per_augmentation():
  x = jnp.ones((3, 4, 4, 1))
  shift = augment.per_sample(lambda img, key: img + jax.random.uniform(key))
  both = augment.compose(shift, shift)(x, jax.random.key(0))
  k1, k2 = jax.random.split(jax.random.key(0))
  expected = shift(shift(x, k1), k2)
  np.testing.assert_allclose(both, expected)
  with pytest.raises(ValueError, match="at least one"):
    augment.compose()
  with pytest.raises(ValueError, match="padding must be a non-negative"):
    augment.random_crop(-1)
  with pytest.raises(ValueError, match="expect images"):
    augment.random_flip()(jnp.ones((2, 3)), jax.random.key(0))


@pytest.mark.parametrize("make,message", [
    (lambda d: classic.split_cifar10(3, data_dir=d),
     r"n_experiences=3 does not divide the 10 classes; expected one of "
     r"\[1, 2, 5, 10\]"),
    (lambda d: classic.split_cifar10(1, first_exp_with_half_classes=True,
                                     data_dir=d),
     "n_experiences=1 with first_exp_with_half_classes=True: the first "
     "experience takes 5 of the 10 classes, leaving 5 for 0 more"),
    (lambda d: classic.split_cub200(classes_first_batch=0, data_dir=d),
     "classes_first_batch must be a positive integer, got 0"),
    (lambda d: classic.split_cub200(4, classes_first_batch=100, data_dir=d),
     "n_experiences=4 with classes_first_batch=100"),
    (lambda d: classic.split_cub200(2, classes_first_batch=200, data_dir=d),
     "n_experiences=2 with classes_first_batch=200: the first experience "
     "takes 200 of the 200 classes, leaving 0 for 1 more"),
    (lambda d: classic.split_fmnist(4, first_batch_with_half_classes=True,
                                    data_dir=d),
     "n_experiences=4 with first_batch_with_half_classes=True"),
    (lambda d: classic.rotated_mnist(3, rotations_list=[0, 90], data_dir=d),
     r"rotations_list has 2 entries; expected one per experience \(3\)"),
    (lambda d: classic.split_tiny_imagenet(7, data_dir=d),
     "n_experiences=7 does not divide the 200 classes"),
    (lambda d: classic.permuted_mnist(2, seed=-1, data_dir=d),
     r"seed must be an integer in \[0, 2\*\*32\), got -1"),
    (lambda d: classic.rotated_mnist(2, seed=-1, data_dir=d),
     r"seed must be an integer in \[0, 2\*\*32\), got -1"),
    (lambda d: classic.rotated_mnist(2, rotations_list=[0, 270], data_dir=d),
     r"rotations_list\[1\] must be in \[-180, 180\], got 270"),
    (lambda d: classic.rotated_mnist(1, rotations_list=90, data_dir=d),
     r"rotations_list must be a sequence of angles \(one per experience\), "
     r"got 90"),
    (lambda d: classic.split_cifar100(fixed_class_order=[0, 1], data_dir=d),
     r"fixed_class_order must be a permutation of the classes 0..99, got "
     r"\[0, 1\]"),
    (lambda d: classic.split_mnist(class_ids_from_zero_in_each_exp=True,
                                   class_ids_from_zero_from_first_exp=True,
                                   data_dir=d),
     "relabel the classes in two different ways"),
    (lambda d: classic.split_cifar110(4, data_dir=d),
     "n_experiences=4 with CIFAR-10 as the first experience: the first "
     "experience takes 10 of the 110 classes, leaving 100 for 3 more"),
    (lambda d: classic.split_cifar110(fixed_class_order=[0.5] * 100,
                                      data_dir=d),
     "fixed_class_order must hold integer class ids, got dtype float64"),
])
def test_catalogue_arguments_are_checked_before_any_data_is_read(
    tmp_path, make, message):
  # The folder holds no dataset: an argument error must come first, and
  # name the factory's own argument.
  with pytest.raises((ValueError, TypeError), match=message):
    make(tmp_path)


def test_remote_data_dirs_keep_their_double_slash(monkeypatch):
  # pathlib turned gs://bucket into gs:/bucket, a local folder.
  seen = []

  def builder(name, data_dir=None, **kwargs):
    seen.append(data_dir)
    raise FileNotFoundError(name)

  monkeypatch.setattr(tfds, "builder", builder)
  with pytest.raises(ValueError, match="gs://bucket/tfds"):
    classic.split_cub200(data_dir="gs://bucket/tfds")
  assert seen[0] == "gs://bucket/tfds"
  root = classic._folder_root("core50", "gs://bucket/data", "core50_32x32",
                              "")
  assert str(root) == "gs://bucket/data/core50_32x32"
