"""CLEAR from a synthetic release laid out as the official one, and CLEAR's
metrics of the accuracy matrix."""

import json

import numpy as np
import pytest
from conftest import tiny_cli_results
from PIL import Image

from jaxcl.benchmarks import files, temporal
from jaxcl.evaluation import clear_metrics

# In class_names.txt's order (the labels), which is not sorted; each
# bucket's metadata lists the classes sorted. Bucket keys in file order,
# which sorting them as strings would swap.
_CLASSES = ("bus", "BACKGROUND", "baseball")
_BUCKETS = ("9", "10")
_PER_CLASS = {"train": 2, "test": 1}


def _value(split, bucket, label, k):
  return (10 + 100 * (split == "test") + 40 * _BUCKETS.index(bucket)
          + 10 * label + k)


def _write_image(path, value, wide):
  """A 12 x 8 (``wide``) or 8 x 12 image: its central 8 x 8 square holds
  ``value``, the two 2-pixel margins 255."""
  shape = (8, 12, 3) if wide else (12, 8, 3)
  pixels = np.full(shape, 255, np.uint8)
  if wide:
    pixels[:, 2:10] = value
  else:
    pixels[2:10] = value
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path)


@pytest.fixture(name="clear_dir")
def _clear_dir(tmp_path):
  root = tmp_path / "clear10"
  for split, count in _PER_CLASS.items():
    folder = root / split
    folder.mkdir(parents=True)
    (folder / "class_names.txt").write_text("\n".join(_CLASSES))
    index = {}
    for bucket in _BUCKETS:
      index[bucket] = {}
      for name in sorted(_CLASSES):
        label = _CLASSES.index(name)
        entries = {}
        for k in range(count):
          image = f"labeled_images/{bucket}/{name}/{k}.png"
          _write_image(folder / image, _value(split, bucket, label, k),
                       wide=(k + label) % 2 == 0)
          entries[f"id{k}"] = {"IMG_PATH": image, "YEAR": 2004 + int(bucket)}
        meta = f"labeled_metadata/{bucket}/{name}.json"
        (folder / meta).parent.mkdir(parents=True, exist_ok=True)
        (folder / meta).write_text(json.dumps(entries))
        index[bucket][name] = meta
    (folder / "labeled_metadata.json").write_text(json.dumps(index))
  return tmp_path


def _listed(split, bucket):
  """(value, label) in the metadata's order: class by class."""
  return [(_value(split, bucket, label, k), label)
          for label in range(len(_CLASSES))
          for k in range(_PER_CLASS[split])]


def _seen(exp):
  return list(zip(exp.x[:, 2, 2, 0].tolist(), exp.y.tolist()))


def test_streaming_trains_and_tests_on_each_bucket(clear_dir):
  bench = temporal.clear(image_size=4, data_dir=clear_dir)
  assert bench.name == "clear10_streaming" and bench.n_classes == 3
  assert bench.scenario == "domain_incremental" and bench.n_tasks == 1
  for bucket, exp, test in zip(_BUCKETS, bench.train_stream,
                               bench.test_stream, strict=True):
    # The bucket's test images, then its train images.
    assert _seen(exp) == _listed("test", bucket) + _listed("train", bucket)
    assert test.x is exp.x  # One copy of the images.
  # The central square only: the white margins are cropped away.
  assert (bench.train_stream[0].x != 255).all()
  tasks = temporal.clear(image_size=4, return_task_id=True,
                         data_dir=clear_dir)
  assert tasks.scenario == "task_incremental"
  assert [e.task.tolist() for e in tasks.train_stream][1] == [1] * 9
  assert [e.task.tolist() for e in tasks.test_stream][0] == [0] * 9


def test_iid_trains_on_train_splits_and_tests_on_test_splits(clear_dir):
  bench = temporal.clear(evaluation_protocol="iid", image_size=4,
                         data_dir=clear_dir)
  assert bench.name == "clear10_iid"
  assert [_seen(e) for e in bench.train_stream] == [
      _listed("train", b) for b in _BUCKETS]
  assert [_seen(e) for e in bench.test_stream] == [
      _listed("test", b) for b in _BUCKETS]


def test_center_square_matches_a_hand_placed_box(clear_dir):
  wide = clear_dir / "clear10/train/labeled_images/9/BACKGROUND/1.png"
  tall = clear_dir / "clear10/train/labeled_images/9/BACKGROUND/0.png"
  np.testing.assert_array_equal(
      files.read_images([wide, tall], image_size=(4, 4), center_square=True),
      files.read_images([wide, tall], boxes=[(0, 2, 8, 8), (2, 0, 8, 8)],
                        image_size=(4, 4)))


@pytest.mark.parametrize("kwargs, message", [
    ({"data_name": "clear1000"}, r"Unknown data_name 'clear1000'; expected "
     r"one of clear10, clear100"),
    ({"evaluation_protocol": "online"}, r"Unknown evaluation_protocol "
     r"'online'; expected one of iid, streaming"),
    ({"image_size": 0}, r"image_size must be a positive integer, got 0"),
    ({}, r"/nonexistent/clear10/train/class_names.txt does not exist. "
     r"Download the clear10 release"),
    ({"data_name": "clear100"}, r"clear100/train/class_names.txt does not "
     r"exist. Download the clear100 release .* giving data_dir/clear100/"),
])
def test_refusals_before_reading(kwargs, message):
  with pytest.raises(ValueError, match=message):
    temporal.clear(**{"data_dir": "/nonexistent", **kwargs})


def test_inconsistent_or_incomplete_releases(clear_dir, monkeypatch):
  monkeypatch.setattr(files, "_read_one", None)  # Never reached.
  root = clear_dir / "clear10"
  (root / "test/labeled_images/10/bus/0.png").unlink()
  with pytest.raises(ValueError, match=r"1 image\(s\) the metadata of "
                     r".*clear10 names are not there \(first: .*test/"
                     r"labeled_images/10/bus/0.png\)"):
    temporal.clear(data_dir=clear_dir)
  index = json.loads((root / "test/labeled_metadata.json").read_text())
  bus = index["10"].pop("bus")
  (root / "test/labeled_metadata.json").write_text(json.dumps(index))
  with pytest.raises(ValueError, match=r"bucket '10' lacks the classes "
                     r"\['bus'\] of class_names.txt"):
    temporal.clear(data_dir=clear_dir)
  index["10"]["bus"] = 3
  (root / "test/labeled_metadata.json").write_text(json.dumps(index))
  with pytest.raises(ValueError, match=r"bucket '10', class 'bus' names 3; "
                     r"expected the path of its metadata file"):
    temporal.clear(data_dir=clear_dir)
  index["10"]["bus"] = bus
  for name in _CLASSES:
    (root / "test" / index["10"][name]).write_text("{}")
  (root / "test/labeled_metadata.json").write_text(json.dumps(index))
  with pytest.raises(ValueError, match=r"bucket '10' names no image"):
    temporal.clear(data_dir=clear_dir)
  (root / "test" / bus).write_text("[]")
  with pytest.raises(ValueError, match=r"bus.json holds a list; expected "
                     r"\{id: \{\"IMG_PATH\": path"):
    temporal.clear(data_dir=clear_dir)
  del index["10"]
  (root / "test/labeled_metadata.json").write_text(json.dumps(index))
  with pytest.raises(ValueError, match=r"The train buckets \['9', '10'\] and "
                     r"the test buckets \['9'\] of .*clear10 differ"):
    temporal.clear(data_dir=clear_dir)
  (root / "test/class_names.txt").write_text("\n".join(sorted(_CLASSES)))
  with pytest.raises(ValueError, match=r"test/class_names.txt differs from "
                     r".*train/class_names.txt"):
    temporal.clear(data_dir=clear_dir)
  meta = root / "train/labeled_metadata/9/bus.json"
  meta.write_text(json.dumps({"id0": {"PATH": "x.png"}}))
  (root / "test/class_names.txt").write_text("\n".join(_CLASSES))
  with pytest.raises(ValueError, match=r"bus.json: image 'id0' has no "
                     r"IMG_PATH"):
    temporal.clear(data_dir=clear_dir)
  meta.write_text("{")
  with pytest.raises(ValueError, match=r"bus.json is not valid JSON"):
    temporal.clear(data_dir=clear_dir)


def test_from_the_command_line(clear_dir, tmp_path):
  results = tiny_cli_results(
      tmp_path / "run", "--benchmark", "clear10", "--evaluation-protocol",
      "iid", "--image-size", "4", "--data-dir", str(clear_dir))
  assert results["config"]["evaluation_protocol"] == "iid"
  R = np.array(results["accuracy_matrix"])
  assert R.shape == (2, 2)
  assert results["clear_metrics"]["next_domain"] == pytest.approx(R[0, 1])
  assert results["clear_metrics"]["backward_transfer"] == pytest.approx(
      R[1, 0])
  assert results["clear_metrics"]["in_domain"] == pytest.approx(
      (R[0, 0] + R[1, 1]) / 2)


def test_clear_metrics_by_hand():
  R = np.array([[0.5, 0.2, 0.1],
                [0.4, 0.6, 0.3],
                [0.35, 0.45, 0.7]])
  m = clear_metrics(R)
  assert m["in_domain"] == pytest.approx((0.5 + 0.6 + 0.7) / 3)
  assert m["next_domain"] == pytest.approx((0.2 + 0.3) / 2)
  assert m["accuracy"] == pytest.approx(
      (0.5 + 0.4 + 0.6 + 0.35 + 0.45 + 0.7) / 6)
  assert m["backward_transfer"] == pytest.approx((0.4 + 0.35 + 0.45) / 3)
  assert m["forward_transfer"] == pytest.approx((0.2 + 0.1 + 0.3) / 3)
  one = clear_metrics([[0.9]])
  assert one["in_domain"] == 0.9 and np.isnan(one["next_domain"])
  with pytest.raises(ValueError, match=r"R must be a square accuracy "
                     r"matrix .* got shape \(2, 3\)"):
    clear_metrics(np.zeros((2, 3)))
