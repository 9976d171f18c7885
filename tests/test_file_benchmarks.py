"""Benchmarks from image files: paths_benchmark, filelist_benchmark."""

import numpy as np
import optax
import pytest
from PIL import Image

import jaxcl
from jaxcl.benchmarks import files

# Per class, the colour its images scatter around.
COLOURS = np.array([[220, 30, 30], [30, 220, 30], [30, 30, 220],
                    [220, 220, 30]])


def write(folder, name, pixels):
  """Saves ``uint8`` pixels as a lossless PNG; returns its path."""
  path = folder / name
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path)
  return path


def random_pixels(seed, shape=(5, 7, 3)):
  return np.random.default_rng(seed).integers(0, 256, shape, np.uint8)


@pytest.fixture(scope="module")
def coloured(tmp_path_factory):
  """Per class 0..3, eight train and four test 6x6 RGB images of noisy
  class colours: ``{"train": [(path, label, pixels), ...], "test": ...}``."""
  folder = tmp_path_factory.mktemp("coloured")
  rng = np.random.default_rng(0)
  images = {"train": [], "test": []}
  for split, count in (("train", 8), ("test", 4)):
    for label, colour in enumerate(COLOURS):
      for i in range(count):
        pixels = np.clip(colour + rng.normal(0, 25, (6, 6, 3)), 0,
                         255).astype(np.uint8)
        path = write(folder, f"{split}/{label}/{i}.png", pixels)
        images[split].append((path, label, pixels))
  return images


def by_experience(entries, groups):
  """``(path, label)`` lists, one per group of labels."""
  return [[(p, y) for p, y, _ in entries if y in group] for group in groups]


def test_read_images_gives_the_written_pixels_cropped_and_in_order(tmp_path):
  written = [random_pixels(seed) for seed in range(3)]
  paths = [write(tmp_path, f"{k}.png", p) for k, p in enumerate(written)]
  np.testing.assert_array_equal(files.read_images(paths), np.stack(written))
  # Boxes are (top, left, height, width); None keeps the whole image.
  x = files.read_images(paths[:2], boxes=[(1, 2, 3, 4), None],
                        image_size=(3, 4))
  np.testing.assert_array_equal(x[0], written[0][1:4, 2:6])
  assert x.shape == (2, 3, 4, 3)
  # A box flush with the image's edges is the whole image.
  x = files.read_images(paths[:1], boxes=[(0, 0, 5, 7)])
  np.testing.assert_array_equal(x[0], written[0])
  # A box reaching past the bottom and right edges: refused, or clipped.
  with pytest.raises(ValueError, match=r"The box \(top, left, height, "
                     r"width\) = \(3, 4, 4, 5\) of .*0.png reaches outside "
                     r"its 5x7 image"):
    files.read_images(paths[:1], boxes=[(3, 4, 4, 5)])
  x = files.read_images(paths[:1], boxes=[(3, 4, 4, 5)], clip_boxes=True)
  np.testing.assert_array_equal(x[0], written[0][3:, 4:])


def test_channels_one_is_the_luma_of_the_rgb_pixels(tmp_path):
  rgb = random_pixels(4)
  x = files.read_images([write(tmp_path, "rgb.png", rgb)], channels=1)
  # ITU-R 601-2 luma, Pillow's "L" conversion.
  luma = rgb.astype(np.float64) @ [0.299, 0.587, 0.114]
  assert x.shape == (1, 5, 7, 1)
  np.testing.assert_allclose(x[0, ..., 0], luma, atol=1.0)
  # A grayscale file read as RGB repeats its one channel.
  gray = random_pixels(5, (4, 4))
  x = files.read_images([write(tmp_path, "gray.png", gray)])
  np.testing.assert_array_equal(x[0], np.repeat(gray[..., None], 3, -1))


def test_resizing_keeps_a_uniform_image_uniform(tmp_path):
  pixels = np.broadcast_to(np.uint8([10, 200, 90]), (9, 13, 3)).copy()
  path = write(tmp_path, "flat.png", pixels)
  for size in ((4, 5), (20, 3)):
    x = files.read_images([path], image_size=size)
    assert x.shape == (1, *size, 3)
    np.testing.assert_array_equal(x[0], np.broadcast_to(pixels[0, 0],
                                                        (*size, 3)))


def test_shrinking_averages_neighbouring_pixels(tmp_path):
  # A one-pixel checkerboard shrunk 4x: a smoothing filter gives its mean
  # grey, where sampling (nearest neighbour) would keep black or white.
  board = np.where(np.add.outer(np.arange(8), np.arange(8)) % 2 == 0,
                   np.uint8(255), np.uint8(0))
  x = files.read_images([write(tmp_path, "board.png", board)],
                        image_size=(2, 2), channels=1)
  assert np.all(np.abs(x.astype(int) - 127.5) <= 1), x[0, ..., 0]


def test_images_of_several_sizes_need_an_image_size(tmp_path):
  small = write(tmp_path, "small.png", random_pixels(0, (4, 4, 3)))
  large = write(tmp_path, "large.png", random_pixels(1, (6, 4, 3)))
  with pytest.raises(ValueError, match=r"large.png is 6x4 but .*small.png is "
                     r"4x4; pass image_size=\(height, width\)"):
    files.read_images([small, large])
  assert files.read_images([small, large], image_size=(4, 4)).shape == (
      2, 4, 4, 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"paths": ["missing.png"]}, "Cannot read the image missing.png: "
     "FileNotFoundError"),
    ({"paths": ["{png}"], "boxes": [(2, 0, 4, 1)]},
     r"box \(top, left, height, width\) = \(2, 0, 4, 1\) of .*a.png reaches "
     "outside its 5x7 image"),
    ({"paths": ["{png}"], "boxes": [(0, 0, 0, 1)]},
     r"boxes\[0\] must have top, left >= 0 and height, width >= 1"),
    ({"paths": ["{png}"], "boxes": []}, "boxes has 0 entries for 1 paths"),
    ({"paths": ["{png}"], "channels": 4}, "channels must be 1 .* or 3 .*, "
     "got 4"),
    ({"paths": ["{png}"], "image_size": (0, 3)},
     "image_size\\[0\\] must be a positive integer"),
    ({"paths": ["{text}"]}, "Cannot read the image .*a.txt: "
     "UnidentifiedImageError"),
    ({"paths": []}, "paths is empty"),
    ({"paths": ["{png}"], "channels": True}, "channels must be 1"),
    ({"paths": ["{wide}"]}, r"wide.png has 'I;16' pixels \(more than 8 bits "
     r"per channel\), which Pillow clips"),
])
def test_read_images_refuses_clearly(tmp_path, kwargs, message):
  png = write(tmp_path, "a.png", random_pixels(0))
  text = tmp_path / "a.txt"
  text.write_text("not an image")
  wide = write(tmp_path, "wide.png", np.full((3, 3), 40000, np.uint16))
  paths = [str(p).format(png=png, text=text, wide=wide)
           for p in kwargs.pop("paths")]
  with pytest.raises(ValueError, match=message):
    files.read_images(paths, **kwargs)


def test_read_filelist_takes_the_last_field_as_the_label(tmp_path):
  listing = tmp_path / "list.txt"
  listing.write_text("a/b c.png 3\n\n  d.png\t0  \n")
  assert files.read_filelist(listing) == [(files.Path("a/b c.png"), 3),
                                          (files.Path("d.png"), 0)]
  assert files.read_filelist(listing, root=tmp_path)[1] == (
      tmp_path / "d.png", 0)
  for label in ("cat", "\u00b2"):  # A superscript two is a digit too.
    listing.write_text(f"a.png 1\nb.png {label}\n")
    with pytest.raises(ValueError, match=r"list.txt, line 2: expected 'path "
                       f"label' .* got 'b.png {label}'"):
      files.read_filelist(listing)


def test_paths_benchmark_keeps_experiences_labels_and_pixels(coloured):
  groups = ((0, 1), (2, 3))
  bench = jaxcl.benchmarks.paths_benchmark(
      by_experience(coloured["train"], groups),
      by_experience(coloured["test"], groups))
  assert bench.scenario == "class_incremental" and bench.n_tasks == 1
  assert (bench.n_classes, bench.input_shape) == (4, (6, 6, 3))
  assert [e.classes for e in bench.test_stream] == [(0, 1), (2, 3)]
  assert bench.train_stream[1].previous_classes == (0, 1)
  for exp, group in zip(bench.train_stream, groups):
    kept = [(y, p) for _, y, p in coloured["train"] if y in group]
    np.testing.assert_array_equal(exp.y, [y for y, _ in kept])
    np.testing.assert_array_equal(exp.x, np.stack([p for _, p in kept]))
    np.testing.assert_array_equal(exp.task, 0)
  # By default uint8 pixels become [0, 1] floats (torchvision's ToTensor).
  np.testing.assert_allclose(
      bench.preprocess(bench.train_stream[0].x[:2]),
      bench.train_stream[0].x[:2] / np.float32(255), rtol=1e-6)


def test_task_labels_make_a_task_incremental_benchmark(coloured):
  groups = ((0, 1), (2, 3))
  train, test = (by_experience(coloured[s], groups) for s in ("train", "test"))
  bench = jaxcl.benchmarks.paths_benchmark(train, test,
                                           task_labels=np.array([0, 1]))
  assert bench.scenario == "task_incremental" and bench.n_tasks == 2
  for stream in (bench.train_stream, bench.test_stream):
    np.testing.assert_array_equal([np.unique(e.task) for e in stream],
                                  [[0], [1]])
  # One task for every experience (Avalanche's way to ask for none).
  bench = jaxcl.benchmarks.paths_benchmark(train, test, task_labels=[0, 0])
  assert bench.scenario == "class_incremental" and bench.n_tasks == 1


def test_a_complete_test_set_trains_and_evaluates_in_one_column(coloured):
  train = by_experience(coloured["train"], ((0, 1), (2, 3)))
  test = [[(p, y, (1, 1, 4, 4)) for p, y, _ in coloured["test"]]]
  bench = jaxcl.benchmarks.paths_benchmark(
      train, test, complete_test_set_only=True, image_size=(4, 4))
  assert len(bench.test_stream) == 1 and bench.input_shape == (4, 4, 3)
  np.testing.assert_array_equal(bench.test_stream[0].x[0],
                                coloured["test"][0][2][1:5, 1:5])
  result = jaxcl.fit(jaxcl.models.MLP(4, hidden_size=16, drop_rate=0.0),
                     jaxcl.strategies.replay(mem_size=16), optax.sgd(0.1),
                     bench, epochs=8, batch_size=8, seed=0)
  assert result.accuracy_matrix.shape == (2, 1)
  # The colours separate the classes: replay ends knowing all four.
  assert result.accuracy_matrix[-1, 0] > 0.9, result.accuracy_matrix


def test_filelist_benchmark_reads_what_paths_benchmark_reads(coloured,
                                                             tmp_path):
  root = coloured["train"][0][0].parents[2]
  listings = []
  for name, entries in (("train", coloured["train"]),
                        ("test", coloured["test"])):
    listing = tmp_path / f"{name}.txt"
    listing.write_text("".join(f"{p.relative_to(root)} {y}\n"
                               for p, y, _ in entries))
    listings.append(listing)
  from_lists = jaxcl.benchmarks.filelist_benchmark(
      root, [listings[0]], listings[1], complete_test_set_only=True,
      channels=1)
  from_paths = jaxcl.benchmarks.paths_benchmark(
      [[(p, y) for p, y, _ in coloured["train"]]],
      [[(p, y) for p, y, _ in coloured["test"]]], channels=1)
  for a, b in zip([*from_lists.train_stream, *from_lists.test_stream],
                  [*from_paths.train_stream, *from_paths.test_stream]):
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
  assert from_lists.input_shape == (6, 6, 1)


@pytest.mark.parametrize("kwargs, message", [
    ({"test": "two lists"}, "test_lists_of_files has 2 lists; expected 1: "
     "complete_test_set_only=True"),
    ({"complete_test_set_only": False, "test": "one list"},
     "test_lists_of_files has 1 lists; expected 2: one per train experience"),
    ({"task_labels": [0, 1]}, r"complete_test_set_only=True gives the test "
     r"samples no task label of their own, but task_labels is \[0, 1\]"),
    ({"task_labels": [0]}, "task_labels must hold one task label per train "
     "experience \\(2\\)"),
    ({"label": -1}, r"train_lists_of_files\[0\]\[0\] has label -1; expected "
     "a non-negative integer"),
    ({"label": 9}, r"test_lists_of_files has labels \[9\] that no train "
     "experience has"),
    ({"train": []}, "train_lists_of_files must be a non-empty sequence"),
    ({"complete_test_set_only": "yes"}, "complete_test_set_only must be "
     "True or False, got 'yes'"),
])
def test_paths_benchmark_refuses_clearly(coloured, kwargs, message):
  train = by_experience(coloured["train"], ((0, 1), (2, 3)))
  test = [[(p, y) for p, y, _ in coloured["test"]]]
  label = kwargs.pop("label", None)
  if label is not None:
    side = train if label < 0 else test
    side[0][0] = (side[0][0][0], label)
  train = kwargs.pop("train", train)
  test = {"two lists": test * 2, "one list": test, None: test}[
      kwargs.pop("test", None)]
  kwargs = {"complete_test_set_only": True, **kwargs}
  with pytest.raises((ValueError, TypeError), match=message):
    jaxcl.benchmarks.paths_benchmark(train, test, **kwargs)


def test_labels_are_checked_before_any_image_is_read(coloured, tmp_path):
  train = [[(p, y, None) for p, y, _ in coloured["train"]]]
  with pytest.raises(ValueError, match=r"test_lists_of_files has labels "
                     r"\[7\] that no train experience has"):
    jaxcl.benchmarks.paths_benchmark(train, [[(tmp_path / "none.png", 7)]])


def test_filelist_benchmark_errors_name_its_arguments(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("\n")
  with pytest.raises(ValueError, match="empty.txt \\(train_file_lists\\) "
                     "names no image"):
    jaxcl.benchmarks.filelist_benchmark(None, [empty], empty)
  listing = tmp_path / "list.txt"
  listing.write_text("a.png 0\n")
  with pytest.raises(ValueError, match="test_file_lists has 1 lists; "
                     "expected 2"):
    jaxcl.benchmarks.filelist_benchmark(None, [listing] * 2, listing)
  with pytest.raises(TypeError, match=r"filelist_benchmark got unexpected "
                     r"keyword arguments \['size'\]"):
    jaxcl.benchmarks.filelist_benchmark(None, [listing], listing, size=2)
  with pytest.raises(TypeError, match="complete_test_set_only must be True "
                     "or False"):
    jaxcl.benchmarks.filelist_benchmark(None, [listing], listing,
                                        complete_test_set_only="yes")


@pytest.mark.parametrize("name", ["stream51", "openloris", "clear", "concon"])
def test_benchmarks_read_with_pillow_need_a_local_data_dir(name):
  factory = getattr(jaxcl.benchmarks, name)
  with pytest.raises(ValueError, match=rf"^{name} is not in tfds and not "
                     r"bundled: it needs data_dir \(CLI: --data-dir DIR\)\. "
                     r"Download "):
    factory()
  with pytest.raises(ValueError, match=rf"^{name} reads its images with "
                     r"Pillow from a local folder, got data_dir='gs://b/d'; "
                     r"expected a folder on a local file system\.$"):
    factory(data_dir="gs://b/d")
