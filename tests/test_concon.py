"""ConCon (Avalanche's ConConDisjoint / ConConStrict / ConConUnconfounded)
read from folders laid out as the official archives unzip."""

import dataclasses
import functools
import random

import numpy as np
import optax
import pytest
from conftest import tiny_cli_results
from PIL import Image

import jaxcl
from jaxcl import cli
from jaxcl.benchmarks import concon
from jaxcl.strategies import naive

# Images per (split, task, class); every image's pixels hold its identity
# (task, class, index), so each one can be traced into the benchmark.
_COUNTS = {"train": 3, "test": 2}
# The official class folders, created in reverse order so that the order
# a file system lists them in need not be the sorted one.
_CLASSES = ("1", "0")


def _write_variant(data_dir, folder, n_tasks, size=(6, 8), mode="RGBA"):
  for split, count in _COUNTS.items():
    for task in range(n_tasks):
      for name in _CLASSES:
        label = int(name)
        target = (data_dir / "concon" / folder / split / "images" /
                  f"t{task}" / name)
        target.mkdir(parents=True)
        for i in range(count):
          pixels = np.zeros((*size, 4), np.uint8)
          pixels[..., :3] = (10 * task + 1, 10 * label + 2, 10 * i + 3)
          pixels[..., 3] = 128  # Alpha, dropped as convert("RGB") drops it.
          Image.fromarray(pixels, "RGBA").convert(mode).save(
              target / f"img{i}.png")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("concon_data")
  _write_variant(root, "case_disjoint_main", 3)
  _write_variant(root, "case_strict_main", 3)
  _write_variant(root, "unconfounded", 1)
  return root


def _identities(exp):
  """(task, class, image index) of every sample, from its pixels; checks
  that its label is the class of the folder it came from."""
  x = np.asarray(exp.x)
  found = [tuple(int(v) // 10 for v in x[k, 0, 0]) for k in range(len(x))]
  assert [c for _, c, _ in found] == exp.y.tolist()
  return sorted(found)


def test_one_experience_per_task_with_both_classes(data_dir):
  bench = concon("disjoint", data_dir=data_dir)
  assert bench.name == "concon_disjoint" and bench.n_classes == 2
  assert bench.scenario == "domain_incremental"
  assert [len(e) for e in bench.train_stream] == [6, 6, 6]
  assert [len(e) for e in bench.test_stream] == [4, 4, 4]
  for task, (train, test) in enumerate(zip(bench.train_stream,
                                           bench.test_stream)):
    assert _identities(train) == [(task, c, i) for c in (0, 1)
                                  for i in range(3)]
    assert _identities(test) == [(task, c, i) for c in (0, 1)
                                 for i in range(2)]
    assert train.classes == (0, 1) and set(train.task_labels) == {0}
  # The stored pixels, RGB without alpha; scaled to [-1, 1].
  assert bench.train_stream[0].x.shape == (6, 6, 8, 3)
  np.testing.assert_allclose(
      np.asarray(bench.preprocess(np.array([[0, 255]], np.uint8))),
      [[-1.0, 1.0]])


def test_shuffled_task_order_is_avalanche_random_order(data_dir):
  for seed in range(6):
    bench = concon("strict", seed=seed, shuffle_order=True,
                   data_dir=data_dir)
    # Avalanche: random.seed(seed); random.shuffle(list of 3 datasets).
    expected = [0, 1, 2]
    random.seed(seed)
    random.shuffle(expected)
    assert [_identities(e)[0][0] for e in bench.train_stream] == expected
    assert [_identities(e)[0][0] for e in bench.test_stream] == expected


def test_one_experience_concatenates_the_tasks(data_dir):
  bench = concon("disjoint", 1, image_size=4,
                 data_dir=data_dir)
  assert [len(e) for e in bench.train_stream] == [18]
  assert {t for t, _, _ in _identities(bench.train_stream[0])} == {0, 1, 2}
  assert bench.train_stream[0].x.shape == (18, 4, 4, 3)
  unconfounded = concon("unconfounded", data_dir=data_dir)
  assert [len(e) for e in unconfounded.train_stream] == [6]


@pytest.mark.parametrize("args, kwargs, message", [
    (("loose",), {}, r"Unknown variant 'loose'; expected one of disjoint, "
     r"strict, unconfounded"),
    (("disjoint", 2), {}, r"n_experiences must be 3 or 1 for ConCon disjoint "
     r"\(3 tasks\), got 2"),
    (("unconfounded", 3), {}, r"n_experiences must be 1 for ConCon "
     r"unconfounded \(1 task\), got 3"),
    (("strict",), {"image_size": 0}, "image_size must be a positive integer"),
    (("strict",), {"seed": -1}, r"seed must be an integer in \[0, 2\*\*32\)"),
    (("strict", 1), {"shuffle_order": True}, r"shuffle_order=True orders "
     r"the tasks' experiences, but ConCon strict with n_experiences=1 has one "
     r"experience; expected shuffle_order=False"),
    (("unconfounded",), {"shuffle_order": True}, r"ConCon unconfounded with "
     r"n_experiences=1 has one experience"),
])
def test_arguments_are_refused_before_reading(args, kwargs, message,
                                              tmp_path):
  with pytest.raises(ValueError, match=message):
    concon(*args, data_dir=tmp_path, **kwargs)  # tmp_path holds no data.


def test_missing_or_inconsistent_files_are_named(tmp_path):
  with pytest.raises(ValueError, match=r"concon/case_strict_main/train/images"
                     r"/t0 is missing: ConCon's files are not complete there\. "
                     r"Download case_disjoint_main\.zip"):
    concon("strict", data_dir=tmp_path)
  _write_variant(tmp_path, "case_disjoint_main", 3)
  odd = tmp_path / "concon/case_disjoint_main/test/images/t2/neutral"
  odd.mkdir()
  with pytest.raises(ValueError, match=r"t2 holds the class folders "
                     r"\['0', '1', 'neutral'\], another task or "
                     r"split \['0', '1'\]"):
    concon("disjoint", data_dir=tmp_path)
  odd.rmdir()
  # Hidden entries are not data.
  (odd.parent / ".ipynb_checkpoints").mkdir()
  (odd.parent / "0" / ".DS_Store").write_bytes(b"\0")
  assert [len(e) for e in concon("disjoint", data_dir=tmp_path
                                 ).test_stream] == [4, 4, 4]
  for image in (tmp_path / "concon/case_disjoint_main/train/images/t1/"
                "1").iterdir():
    image.unlink()
  with pytest.raises(ValueError, match=r"t1/1 holds no image"):
    concon("disjoint", data_dir=tmp_path)


def test_concon_from_the_command_line(data_dir, tmp_path):
  # Without --n-experiences, each variant's own number of tasks.
  for variant, n in (("strict", 3), ("unconfounded", 1)):
    results = tiny_cli_results(
        tmp_path / variant, "--benchmark", f"concon_{variant}", "--data-dir",
        str(data_dir), "--batch-size", "2")
    assert np.shape(results["accuracy_matrix"]) == (n, n)
  results = tiny_cli_results(
      tmp_path / "one", "--benchmark", "concon_strict", "--n-experiences",
      "1", "--data-dir", str(data_dir), "--batch-size", "2")
  assert np.shape(results["accuracy_matrix"]) == (1, 1)


def test_the_unconfounded_test_set_after_each_confounded_task(data_dir):
  confounded = concon("disjoint", data_dir=data_dir)
  clean = concon("unconfounded", data_dir=data_dir)
  bench = dataclasses.replace(confounded, test_stream=clean.test_stream)
  result = jaxcl.fit(jaxcl.models.MLP(2, hidden_size=4), naive(),
                     optax.sgd(0.1), bench, epochs=1, batch_size=2)
  assert np.shape(result.accuracy_matrix) == (3, 1)
  # Accuracy on the 4 unconfounded test images: a multiple of 1/4.
  np.testing.assert_allclose(np.asarray(result.accuracy_matrix) * 4 % 1, 0,
                             atol=1e-6)


def test_shuffle_order_from_the_command_line(data_dir, tmp_path, capsys,
                                            monkeypatch):
  built = []
  original = jaxcl.benchmarks.BENCHMARKS["concon_strict"]

  @functools.wraps(original)  # The CLI reads its signature.
  def recorded(**kwargs):
    built.append(original(**kwargs))
    return built[-1]

  monkeypatch.setitem(jaxcl.benchmarks.BENCHMARKS, "concon_strict", recorded)
  results = tiny_cli_results(
      tmp_path / "run", "--benchmark", "concon_strict", "--shuffle-order",
      "--seed", "3", "--data-dir", str(data_dir), "--batch-size", "2")
  assert results["config"]["shuffle_order"] is True
  # Seed 3's order of the tasks, as Python's random draws it.
  expected = [0, 1, 2]
  random.Random(3).shuffle(expected)
  assert expected != [0, 1, 2]
  assert [_identities(e)[0][0] for e in built[0].train_stream] == expected
  assert cli.main(["run", "--benchmark", "concon_unconfounded",
                   "--shuffle-order", "--data-dir", str(data_dir),
                   "--logdir", str(tmp_path / "one")]) != 0
  assert ("--shuffle-order orders the tasks' experiences, but ConCon "
          "unconfounded with n_experiences=1 has one experience") in (
              capsys.readouterr().err)
  assert cli.main(["run", "--benchmark", "split_mnist", "--shuffle-order",
                   "--logdir", str(tmp_path / "none")]) != 0
  assert ("--shuffle-order has no effect: --benchmark split_mnist does not "
          "use it") in capsys.readouterr().err
