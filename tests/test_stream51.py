"""Stream-51 from synthetic metadata and frames laid out as the official zip."""

import json
import random

import numpy as np
import pytest
from conftest import tiny_cli_results
from PIL import Image

from jaxcl.benchmarks import files, videos as stream51

# Three classes of two videos of three frames, in the metadata's order.
_CLASSES, _VIDEOS, _FRAMES = 3, 2, 3
_FRAME_W, _FRAME_H = 20, 16
# The object: columns 4-13, rows 6-15 (reaching the bottom edge), as
# [right, left, bottom, top]; padded by 1.2 its box reaches past the image.
_BOX = [14, 4, 16, 6]
# The test frames' object: 11 x 11 pixels, so the centre (9.5, 7.5) and
# the padded edges are fractional and truncated.
_TEST_BOX = [15, 4, 13, 2]


def _frame_value(label, video, frame):
  return 10 + 50 * label + 10 * video + frame


def _write_frame(path, value, box=tuple(_BOX)):
  """A frame whose object box holds ``value`` and the rest 255."""
  pixels = np.full((_FRAME_H, _FRAME_W, 3), 255, np.uint8)
  right, left, bottom, top = box
  pixels[top:bottom, left:right] = value
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path)


@pytest.fixture(name="stream51_dir")
def _stream51_dir(tmp_path):
  root = tmp_path / "Stream-51"
  train, test = [], []
  for label in range(_CLASSES):
    for video in range(_VIDEOS):
      # Class 2's videos share their ids: only frame 0 starts a video.
      ids = 0 if label == 2 else video
      for frame in range(_FRAMES):
        path = f"train/c{label}/v{video}/{frame}.png"
        _write_frame(root / path, _frame_value(label, video, frame))
        train.append([label, ids, ids, frame, [_FRAME_W, _FRAME_H], _BOX,
                      path])
  # One test frame per class, and a novelty frame (class 51) left out.
  for label in (*range(_CLASSES), 51):
    path = f"test/c{label}.png"
    _write_frame(root / path, 200 + label, _TEST_BOX)
    test.append([label, [_FRAME_W, _FRAME_H], _TEST_BOX, path])
  (root / "Stream-51_meta_train.json").write_text(json.dumps(train))
  (root / "Stream-51_meta_test.json").write_text(json.dumps(test))
  return tmp_path


def _avalanche_order(seed, within="videos"):
  """Frame values in the order of Avalanche's class_instance (shuffling
  ``videos`` within a class) or class_iid (``frames``) ordering: Python's
  global random, seeded before every shuffle."""
  classes = []
  for label in range(_CLASSES):
    videos = [[_frame_value(label, video, frame) for frame in range(_FRAMES)]
              for video in range(_VIDEOS)]
    units = videos if within == "videos" else [[v] for v in sum(videos, [])]
    random.seed(seed)
    random.shuffle(units)
    classes.append(sum(units, []))
  random.seed(seed)
  random.shuffle(classes)
  return sum(classes, [])


def _frames(exp):
  """The object's value in each of an experience's (resized) frames."""
  return exp.x[:, 4, 4, 0].tolist()


@pytest.mark.parametrize("seed", [10, 3])
def test_class_instance_orders_and_cuts_as_avalanche(stream51_dir, seed):
  bench = stream51.stream51(scenario="class_instance", seed=seed,
                            eval_num=2, ratio=1.0, image_size=8,
                            data_dir=stream51_dir)
  expected = _avalanche_order(seed)
  per_class = _VIDEOS * _FRAMES
  # Two classes, then the third; the crop keeps the object only.
  assert [len(e) for e in bench.train_stream] == [2 * per_class, per_class]
  assert _frames(bench.train_stream[0]) + _frames(
      bench.train_stream[1]) == expected
  assert (bench.train_stream[0].x[..., 1] != 255).all()
  classes = [(value - 10) // 50 for value in expected[::per_class]]
  assert [e.classes for e in bench.train_stream] == [
      tuple(sorted(classes[:2])), (classes[2],)]
  # Cumulative test sets; the novelty frame is in none.
  assert [sorted(e.y.tolist()) for e in bench.test_stream] == [
      sorted(classes[:2]), [0, 1, 2]]
  assert sorted(_frames(bench.test_stream[1])) == [200, 201, 202]
  assert bench.n_classes == 3 and bench.name == "stream51_class_instance"
  assert bench.scenario == "class_incremental"


@pytest.mark.parametrize("seed", [10, 3])
def test_class_iid_shuffles_frames_within_classes(stream51_dir, seed):
  bench = stream51.stream51(scenario="class_iid", seed=seed, eval_num=3,
                            ratio=1.0, image_size=8, data_dir=stream51_dir)
  assert _frames(bench.train_stream[0]) == _avalanche_order(seed, "frames")


def test_instance_and_iid_orderings(stream51_dir):
  bench = stream51.stream51(scenario="instance", eval_num=4, ratio=1.0,
                            image_size=8, data_dir=stream51_dir)
  videos = [(label, video) for label in range(_CLASSES)
            for video in range(_VIDEOS)]  # Class 2's: split at frame 0.
  random.seed(10)
  random.shuffle(videos)
  expected = [_frame_value(label, video, frame)
              for label, video in videos for frame in range(_FRAMES)]
  assert [len(e) for e in bench.train_stream] == [4, 4, 4, 4, 2]
  assert sum((_frames(e) for e in bench.train_stream), []) == expected
  assert len(bench.test_stream) == 1
  assert sorted(bench.test_stream[0].y.tolist()) == [0, 1, 2]
  iid = stream51.stream51(scenario="iid", eval_num=18, ratio=1.0,
                          image_size=8, data_dir=stream51_dir)
  frames = [_frame_value(label, video, frame) for label in range(_CLASSES)
            for video in range(_VIDEOS) for frame in range(_FRAMES)]
  random.seed(10)
  random.shuffle(frames)
  assert _frames(iid.train_stream[0]) == frames


def test_padded_boxes_are_clipped_to_the_frame(stream51_dir):
  # Padded by 1.2 around the object's centre (9, 11), the box spans columns
  # 3-14 and rows 5-16, one row past the 16-row frame: rows 5-15 are kept.
  bench = stream51.stream51(eval_num=3, ratio=1.2, image_size=32,
                            data_dir=stream51_dir)
  x = np.concatenate([e.x for e in bench.train_stream])
  first = x[x[:, 16, 16, 0] == _frame_value(0, 0, 0)]
  expected = files.read_images(
      [stream51_dir / "Stream-51" / "train/c0/v0/0.png"],
      boxes=[(5, 3, 11, 12)], image_size=(32, 32))
  np.testing.assert_array_equal(first, expected)
  assert (first[0, :, 0] == 255).all()  # The padding's white left column.
  unpadded = stream51.stream51(eval_num=3, ratio=1.0, image_size=32,
                               data_dir=stream51_dir)
  assert (unpadded.train_stream[0].x != 255).all()
  whole = stream51.stream51(eval_num=3, bbox_crop=False, image_size=16,
                            data_dir=stream51_dir)
  assert (whole.train_stream[0].x[:, 0, 0] == 255).all()
  # The 11 x 11 test object, centred at int(4 + 5.5) = 9, int(2 + 5.5) = 7
  # and padded by 1.1 (6.05 each side): columns int(2.95) = 2 to
  # int(15.05) = 15, rows int(0.95) = 0 to int(13.05) = 13.
  padded = stream51.stream51(eval_num=3, image_size=32,
                             data_dir=stream51_dir)
  np.testing.assert_array_equal(
      padded.test_stream[0].x[:1],
      files.read_images([stream51_dir / "Stream-51" / "test/c0.png"],
                        boxes=[(0, 2, 13, 13)], image_size=(32, 32)))


@pytest.mark.parametrize("kwargs, message", [
    ({"scenario": "class"}, r"Unknown scenario 'class'; expected one of "
     r"class_iid, class_instance, iid, instance"),
    ({"eval_num": 0}, r"eval_num must be a positive integer, got 0"),
    ({"ratio": 0.9}, r"ratio must be in \[1, inf\), got 0.9"),
    ({"image_size": 0}, r"image_size must be a positive integer, got 0"),
])
def test_refusals_before_reading(kwargs, message):
  with pytest.raises(ValueError, match=message):
    stream51.stream51(**{"data_dir": "/nonexistent", **kwargs})


def test_missing_or_malformed_metadata(tmp_path):
  with pytest.raises(ValueError, match=r"Stream-51_meta_train.json does not "
                     r"exist. Download Stream-51.zip"):
    stream51.stream51(data_dir=tmp_path)
  root = tmp_path / "Stream-51"
  root.mkdir()
  train = root / "Stream-51_meta_train.json"
  train.write_text('[[0, 0, 0, 0, [4, 4]')
  with pytest.raises(ValueError, match=r"Stream-51_meta_train.json is not "
                     r"valid JSON \(Expecting"):
    stream51.stream51(data_dir=tmp_path)
  expected = (r"row 0: expected \[class \(an integer >= 0\), clip, video, "
              r"frame \(integers\), shape \(2 integers\), box \(4 "
              r"numbers\), path\], got ")
  for row in ([0, 0, 0, 0, [4, 4], [2, 0, 2, 0]],  # No path.
              [-1, 0, 0, 0, [4, 4], [2, 0, 2, 0], "a.png"],
              [0, 0, 0, "0", [4, 4], [2, 0, 2, 0], "a.png"],
              [0, 0, 0, 0, [4, 4], [2, 0, "2", 0], "a.png"]):
    train.write_text(json.dumps([row]))
    with pytest.raises(ValueError, match=expected):
      stream51.stream51(data_dir=tmp_path)
  train.write_text("[]")
  with pytest.raises(ValueError, match=r"Stream-51_meta_train.json names no "
                     r"frame; expected the official metadata"):
    stream51.stream51(data_dir=tmp_path)


def test_missing_frames_are_refused_before_decoding(stream51_dir,
                                                   monkeypatch):
  (stream51_dir / "Stream-51" / "test" / "c1.png").unlink()
  monkeypatch.setattr(files, "read_images", None)  # Never reached.
  with pytest.raises(ValueError, match=r"1 of the 21 frames the metadata "
                     r"names are not under .*Stream-51 \(first: "
                     r"test/c1.png\)"):
    stream51.stream51(data_dir=stream51_dir)


def test_from_the_command_line(stream51_dir, tmp_path):
  results = tiny_cli_results(
      tmp_path / "run", "--benchmark", "stream51", "--scenario", "class_iid",
      "--image-size", "8", "--data-dir", str(stream51_dir))
  # Three classes, ten per experience: one experience, one test set.
  assert np.shape(results["accuracy_matrix"]) == (1, 1)
