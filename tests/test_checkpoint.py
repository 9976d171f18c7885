"""Checkpoint and resume: a run killed at any moment resumes to identical numbers.

Run as a script, this file is the worker that the SIGKILL tests start:
``python tests/test_checkpoint.py CHECKPOINT_DIR OUT [--die-in-writer K]
[--die-in-save K] [--sleep S]``.
"""

import argparse
import dataclasses
import hashlib
import importlib
import json
import os
import pathlib
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_benchmark
from jax.experimental.compilation_cache import compilation_cache

import jaxcl
from jaxcl import _hosts, checkpoint, cli
from jaxcl.loggers import MetricWriter
from jaxcl.strategies import REGISTRY, Strategy, from_spec, naive

# One xdist worker runs the module: its module fixtures (the reference run,
# a finished run's checkpoints, the module's compilation cache) are computed
# once.
pytestmark = pytest.mark.xdist_group("test_checkpoint")

# A strategy with a replay buffer, a Fisher/parameter snapshot and λ in its
# state, when those strategies are registered.
SPEC, HPARAMS = (("replay+ewc", {"mem_size": 16})
                 if {"replay", "ewc"} <= REGISTRY.keys() else ("naive", {}))
# Timing, memory and CPU metrics differ between runs; FLOPs cost a lowering.
SETTINGS = dict(epochs=3, batch_size=8, seed=3, metrics=[
    m for m in jaxcl.evaluation.DEFAULT_METRICS
    if m not in ("timing", "memory", "cpu_usage", "flops")])
N_EXP = 4


def _run(checkpoint_dir=None, *, writer=None, lr=0.01, hidden=16,
         strategy=None, **kwargs):
  bench = make_benchmark(n_classes=8, n_experiences=N_EXP, per_class=20)
  # Dropout: the resumed run must continue the same random stream.
  model = jaxcl.models.MLP(num_classes=8, hidden_size=hidden, drop_rate=0.25)
  strategy = strategy or from_spec(SPEC, **HPARAMS)
  return jaxcl.fit(model, strategy, optax.adam(lr), bench,
                   checkpoint_dir=checkpoint_dir, writer=writer,
                   **{**SETTINGS, **kwargs})


def _state_sha256(state) -> str:
  state = state.replace(key=jax.random.key_data(state.key))
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(jax.device_get(state)):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def _summary(result) -> str:
  """Everything a run reports, as JSON text: exact, and NaN compares equal."""
  return json.dumps({
      "accuracy_matrix": result.accuracy_matrix.tolist(),
      "initial": result.initial_accuracies.tolist(),
      "confusion": np.asarray(result.confusion_matrix).tolist(),
      "history": result.history, "metrics": result.metrics,
      "state": _state_sha256(result.state)}, sort_keys=True)


class _Writer(MetricWriter):
  """Records the experiences whose eval metrics it gets; may sleep or die."""

  def __init__(self, die_at: int = -1, sleep: float = 0.0):
    self.die_at, self.sleep, self.steps = die_at, sleep, []

  def write_scalars(self, step, scalars):
    if any(name.startswith("eval/") for name in scalars):
      if step == self.die_at:
        os.kill(os.getpid(), signal.SIGKILL)
      self.steps.append(step)
      time.sleep(self.sleep)


def _die_while_saving(step: int) -> None:
  """SIGKILLs the process half-way through writing checkpoint ``step``.

  Hooks orbax's JSON writer (a private method) so the process dies with the
  arrays written and the JSON file half written, before orbax's commit.
  """
  import orbax.checkpoint as ocp
  write = ocp.JsonCheckpointHandler._save_fn

  async def save_fn(self, item, directory):
    if directory.parent.name.startswith(f"{step}."):
      text = json.dumps(item)
      (directory / "metadata").write_text(text[:len(text) // 2])
      os.kill(os.getpid(), signal.SIGKILL)
    await write(self, item, directory)

  ocp.JsonCheckpointHandler._save_fn = save_fn


def _worker(argv) -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("checkpoint_dir")
  parser.add_argument("out")
  parser.add_argument("--die-in-writer", type=int, default=-1)
  parser.add_argument("--die-in-save", type=int, default=-1)
  parser.add_argument("--sleep", type=float, default=0.0)
  args = parser.parse_args(argv)
  if args.die_in_save >= 0:
    _die_while_saving(args.die_in_save)
  result = _run(args.checkpoint_dir or None,
                writer=_Writer(args.die_in_writer, args.sleep))
  pathlib.Path(args.out).write_text(_summary(result))


_CACHE_FLAGS = ("jax_compilation_cache_dir",
                "jax_persistent_cache_min_compile_time_secs",
                "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture(scope="module", autouse=True)
def xla_cache(tmp_path_factory):
  """Most runs here compile the same programs: compile each once."""
  folder = str(tmp_path_factory.mktemp("xla_cache"))
  before = {name: getattr(jax.config, name) for name in _CACHE_FLAGS}
  for name, value in zip(_CACHE_FLAGS, (folder, 0, 0)):
    jax.config.update(name, value)
  compilation_cache.reset_cache()
  yield folder
  for name, value in before.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def _start(ckpt, out, *flags, cache=None):
  env = dict(os.environ)
  if cache:
    env.update({name.upper(): str(value)
                for name, value in zip(_CACHE_FLAGS, (cache, 0, 0))})
  return subprocess.Popen([sys.executable, __file__, str(ckpt), str(out),
                           *flags], stderr=subprocess.PIPE, text=True, env=env)


def _finish(process, expect_killed: bool):
  _, err = process.communicate(timeout=240)
  assert process.returncode == (-signal.SIGKILL if expect_killed else 0), err


def _listing(folder: pathlib.Path) -> list[str]:
  return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def reference():
  """The uninterrupted run, in this process, without checkpoints."""
  return _summary(_run())


@pytest.fixture(scope="module")
def finished(tmp_path_factory, reference):
  """The checkpoints of a whole run (a fresh copy per test: see _copy)."""
  folder = tmp_path_factory.mktemp("finished")
  assert _summary(_run(folder)) == reference
  return folder


def _copy(finished, tmp_path) -> pathlib.Path:
  return pathlib.Path(shutil.copytree(finished, tmp_path / "ckpt"))


def test_sigkill_at_several_points_then_resume_is_identical(
    tmp_path, reference, xla_cache):
  ckpt, out = tmp_path / "ckpt", tmp_path / "out.json"
  # 1. Killed after checkpoint 1, while experience 1's metrics are written.
  _finish(_start(ckpt, out, "--die-in-writer", "1", cache=xla_cache),
          expect_killed=True)
  assert _listing(ckpt) == ["1"]
  # 2. Killed from outside as soon as checkpoint 2 is complete (during
  #    experience 2).
  process = _start(ckpt, out, "--sleep", "0.3", cache=xla_cache)
  while not (ckpt / "2").is_dir() and process.poll() is None:
    time.sleep(0.005)
  process.kill()
  _finish(process, expect_killed=True)
  assert "2" in _listing(ckpt)
  # 3. Killed half-way through writing checkpoint 4: 3 is kept.
  _finish(_start(ckpt, out, "--die-in-save", "4", cache=xla_cache),
          expect_killed=True)
  names = _listing(ckpt)
  assert names[:2] == ["2", "3"] and names[2].startswith("4.orbax-checkpoint-tmp")
  # 4. Resumed to the end: exactly the uninterrupted run's numbers.
  _finish(_start(ckpt, out, cache=xla_cache), expect_killed=False)
  assert out.read_text() == reference
  assert _listing(ckpt) == ["3", "4"]


def test_same_seed_bit_identical_across_processes(tmp_path, reference):
  out = tmp_path / "out.json"
  # No shared compilation cache: the other process compiles on its own.
  _finish(_start("", out), expect_killed=False)
  assert out.read_text() == reference


def test_resume_restores_state_metrics_and_position_without_unpickling(
    finished, tmp_path, reference, monkeypatch):
  ckpt = _copy(finished, tmp_path)
  assert _listing(ckpt) == ["3", "4"]  # Pruned to the default keep=2.
  # A finished run resumes to its result without training again, and
  # compiles the initial state's programs alone (the model's and the rest:
  # the checkpoint's arrays are placed like its state), not the training and
  # evaluation programs.
  compiled = []
  compile_ = jax.stages.Lowered.compile
  monkeypatch.setattr(jax.stages.Lowered, "compile", lambda self, *a, **k: (
      compiled.append(self), compile_(self, *a, **k))[1])
  writer = _Writer()
  assert _summary(_run(ckpt, writer=writer)) == reference
  assert writer.steps == []
  assert [c.as_text().split()[1] for c in compiled] == [
      "@jit_init_model", "@jit_init_state"]
  monkeypatch.undo()
  # Resuming after experience 3 trains the last experience only, exactly,
  # and loads the checkpoint without pickle.
  (ckpt / "4").rename(tmp_path / "elsewhere")
  def refuse(*args, **kwargs):
    raise AssertionError("pickle used while loading a checkpoint")
  for name in ("load", "loads", "Unpickler"):
    monkeypatch.setattr(pickle, name, refuse)
  writer = _Writer()
  assert _summary(_run(ckpt, writer=writer)) == reference
  assert writer.steps == [3]
  assert _listing(ckpt) == ["3", "4"]


@pytest.mark.parametrize("keep, steps", [(1, ["4"]), (3, ["2", "3", "4"])])
def test_keep_prunes_older_checkpoints(tmp_path, keep, steps):
  _run(tmp_path, checkpoint_keep=keep)
  assert _listing(tmp_path) == steps


def _truncate_arrays(step_dir: pathlib.Path) -> None:
  for f in (step_dir / "arrays").rglob("*"):
    if f.is_file() and f.stat().st_size > 100:
      f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])


def _flip_a_byte(step_dir: pathlib.Path) -> None:
  data = max((f for f in (step_dir / "arrays").rglob("*") if f.is_file()),
             key=lambda f: f.stat().st_size)
  raw = bytearray(data.read_bytes())
  raw[len(raw) // 2] ^= 0xFF
  data.write_bytes(bytes(raw))


def _garble_metadata(step_dir: pathlib.Path) -> None:
  (step_dir / "meta" / "metadata").write_text('{"format": 1, "conf')


def _edit_a_metric(step_dir: pathlib.Path) -> None:
  path = step_dir / "meta" / "metadata"
  payload = json.loads(path.read_text())
  payload["body"]["meta"]["train_s"] += 1.0
  path.write_text(json.dumps(payload))


@pytest.mark.parametrize("damage", [_truncate_arrays, _flip_a_byte,
                                    _garble_metadata, _edit_a_metric])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(
    finished, tmp_path, reference, damage):
  ckpt = _copy(finished, tmp_path)
  damage(ckpt / "4")
  with pytest.warns(RuntimeWarning, match=r"Resuming from checkpoint 3.*"
                    r"checkpoint 4 is unusable"):
    resumed = _run(ckpt)
  assert _summary(resumed) == reference
  assert _listing(ckpt) == ["3", "4", "4.unusable"]


def _tree_digest(folder: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob("*")) if p.is_file()}


def test_checkpointed_experiences_metrics_are_on_disk(tmp_path, monkeypatch):
  # A run killed after a checkpoint resumes after it and never writes that
  # experience's metrics again: they must be in the files when it is saved.
  logs = tmp_path / "logs"
  writer = jaxcl.loggers.create_writers(str(logs), console=False,
                                        tensorboard=False)
  on_disk = []
  save = checkpoint.Checkpointer.save

  def save_and_look(self, step, arrays, meta):
    lines = (logs / "metrics.jsonl").read_text().splitlines()
    evaluated = {json.loads(line)["step"] for line in lines
                 if "eval/stream/accuracy" in json.loads(line)}
    rows = (logs / "eval_results.csv").read_text().splitlines()
    on_disk.append((step, evaluated, len(rows) > 1))
    save(self, step, arrays, meta)

  monkeypatch.setattr(checkpoint.Checkpointer, "save", save_and_look)
  _run(tmp_path / "ckpt", writer=writer)
  writer.close()
  assert on_disk == [(step, set(range(step)), True)
                     for step in range(1, N_EXP + 1)]


class _MinibatchRows(MetricWriter):
  """Records the minibatch rows written, and how many at each save."""

  def __init__(self):
    self.rows, self.at_save = [], []

  def write_scalars(self, step, scalars):
    if any(name.startswith("minibatch/") for name in scalars):
      self.rows.append((step, dict(scalars)))

  def flush(self):
    pass


def test_runs_that_stop_apart_resume_identically_with_their_minibatch_rows(
    tmp_path, monkeypatch):
  # Six runs stop early at different steps: each step's row (the mean over
  # all runs) is written once, when every run has passed it, with
  # checkpoints or without, and across a resume, which gives the same runs
  # (the vmapped state: every leaf has a leading run axis).
  bench = jaxcl.benchmarks.with_validation(
      make_benchmark(n_classes=8, n_experiences=4, per_class=16), 0.25)
  save = checkpoint.Checkpointer.save
  writer = None

  def save_and_count(self, step, arrays, meta):
    writer.at_save.append(len(writer.rows))
    save(self, step, arrays, meta)

  monkeypatch.setattr(checkpoint.Checkpointer, "save", save_and_count)

  def run(folder):
    nonlocal writer
    writer = _MinibatchRows()
    # Adam: optimizer state of every run to resume too.
    result = jaxcl.fit(
        jaxcl.models.MLP(8, hidden_size=16, drop_rate=0.25), naive(),
        optax.adam(0.01), bench, seeds=list(range(6)), epochs=10,
        batch_size=8, periodic_eval=jaxcl.PeriodicEval(every=1),
        early_stopping=jaxcl.EarlyStopping(patience=2),
        metrics=[*SETTINGS["metrics"], "minibatch"], writer=writer,
        checkpoint_dir=folder)
    return result, writer

  _, alone = run(None)
  full, checkpointed = run(str(tmp_path))
  assert checkpointed.rows == alone.rows
  # Killed after checkpoint 3 (of the two kept): what was written by then,
  # and the resumed run's rows.
  (tmp_path / "4").rename(tmp_path / "gone")
  resumed, after = run(str(tmp_path))
  assert checkpointed.rows[:checkpointed.at_save[2]] + after.rows == (
      alone.rows)
  assert len({step for step, _ in alone.rows}) == len(alone.rows)
  np.testing.assert_array_equal(resumed.accuracy_matrices,
                                full.accuracy_matrices)
  np.testing.assert_equal(resumed.metrics_per_run, full.metrics_per_run)
  assert [_state_sha256(r.state) for r in resumed.runs] == [
      _state_sha256(r.state) for r in full.runs]


def test_no_usable_checkpoint_is_refused_and_left_intact(finished, tmp_path):
  ckpt = _copy(finished, tmp_path)
  _garble_metadata(ckpt / "4")
  _truncate_arrays(ckpt / "3")
  before = _tree_digest(ckpt)
  refused = (r"no usable checkpoint in checkpoint_dir .*"
             r"checkpoint 4: JSONDecodeError.*checkpoint 3: ")
  with pytest.raises(checkpoint.CheckpointError, match=refused) as raised:
    _run(ckpt)
  assert _tree_digest(ckpt) == before
  # Every host compared what it found before this: each raises it.
  assert _hosts._raised_everywhere(raised.value)


@pytest.mark.parametrize("change, named", [
    (dict(epochs=2), "epochs: checkpoint has 3, this run has 2"),
    (dict(batch_size=4), "batch_size: checkpoint has 8, this run has 4"),
    (dict(seed=4), "seeds: checkpoint has [3], this run has [4]"),
    (dict(hidden=32), "hidden_size = 16"),
    (dict(lr=0.02), "programs_sha256.train"),
    (dict(strategy=Strategy(name="other")), "strategy: checkpoint has"),
])
def test_other_configuration_is_refused_and_left_intact(finished, tmp_path,
                                                        monkeypatch, change,
                                                        named):
  ckpt = _copy(finished, tmp_path)
  before = _tree_digest(ckpt)
  compiled = []
  compile_program = jax.stages.Lowered.compile
  monkeypatch.setattr(jax.stages.Lowered, "compile", lambda self, **kw: (
      compiled.append(self), compile_program(self, **kw))[1])
  with pytest.raises(checkpoint.CheckpointError,
                     match="written by a different configuration") as info:
    _run(ckpt, **change)
  assert named in str(info.value) and str(ckpt) in str(info.value)
  assert _tree_digest(ckpt) == before
  assert not compiled  # Refused before any compile.


def test_another_kind_of_device_is_refused(finished, tmp_path, monkeypatch):
  # Same program, other bits: e.g. a run checkpointed on one GPU kind and
  # resumed on another, whose lowerings are the same.
  ckpt = _copy(finished, tmp_path)
  fit_module = importlib.import_module("jaxcl.training.fit")
  used = fit_module._devices_used
  monkeypatch.setattr(fit_module, "_devices_used", lambda place: {
      **used(place), "device_kind": "another kind"})
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'devices\.device_kind: checkpoint has "[^"]+", '
                     r'this run has "another kind"'):
    _run(ckpt)


def test_other_xla_flags_are_refused(finished, tmp_path, monkeypatch):
  # XLA's options change the compiled code, not the lowered programs.
  ckpt = _copy(finished, tmp_path)
  flags = os.environ.get("XLA_FLAGS", "")
  monkeypatch.setenv("XLA_FLAGS", f"{flags} --xla_cpu_max_isa=AVX".strip())
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"xla_flags: checkpoint has .*, this run has "
                     r".*--xla_cpu_max_isa=AVX"):
    _run(ckpt)


def test_a_field_that_older_checkpoints_lack_is_named_as_such():
  # E.g. `devices`, recorded since session 12: an older checkpoint is
  # refused for it, and the message says why rather than showing a null.
  assert checkpoint._differences(
      {"epochs": 1}, {"epochs": 1, "devices": {"platform": "cpu"}}) == [
          "devices: the checkpoint has no such field (written by an older "
          "jaxcl, which did not record it)"]
  assert checkpoint._differences({"a": {"b": 1, "c": 2}}, {"a": {"b": 1}}) == [
      "a.c: only the checkpoint has it (written by a newer jaxcl?)"]


def test_another_validation_stream_is_refused(tmp_path):
  # Periodic evaluation and early stopping read the validation stream: the
  # same train and test streams with other validation samples differ.
  bench = jaxcl.benchmarks.with_validation(
      make_benchmark(n_classes=4, n_experiences=2, per_class=12), 0.25)
  moved = jaxcl.benchmarks.Stream("valid", [
      dataclasses.replace(e, x=e.x + 1.0) for e in bench.valid_stream])
  def run(benchmark):
    return jaxcl.fit(jaxcl.models.MLP(num_classes=4, hidden_size=8), naive(),
                     optax.sgd(0.1), benchmark, batch_size=4,
                     checkpoint_dir=tmp_path, metrics=["accuracy"],
                     periodic_eval=jaxcl.PeriodicEval())
  run(bench)
  with pytest.raises(checkpoint.CheckpointError, match="data_sha256"):
    run(dataclasses.replace(bench, valid_stream=moved))


def test_nonfinite_loss_keeps_the_last_good_checkpoint(tmp_path):
  # NaN penalty on experience 2's classes (4 and 5) only.
  nan_on_2 = Strategy(name="nan_on_2", penalty=lambda ctx, p, s, batch, logits:
                      jnp.where(jnp.any((batch["y"] >= 4) & (batch["weight"] > 0)),
                                jnp.nan, 0.0))
  with pytest.raises(FloatingPointError, match="experience 2"):
    _run(tmp_path, strategy=nan_on_2)
  assert _listing(tmp_path) == ["1", "2"]
  ckpt = checkpoint.Checkpointer(tmp_path, config={})
  assert ckpt.steps() == [1, 2]


def test_a_flagged_nonfinite_loss_is_remembered_on_resume(tmp_path):
  nan_on_2 = Strategy(name="nan_on_2", penalty=lambda ctx, p, s, batch, logits:
                      jnp.where(jnp.any((batch["y"] >= 4) & (batch["weight"] > 0)),
                                jnp.nan, 0.0))
  run = lambda: _run(tmp_path, strategy=nan_on_2, on_nonfinite="flag")
  with pytest.warns(RuntimeWarning, match="experience 2"):
    full = run()
  (tmp_path / "4").rename(tmp_path / "elsewhere")
  resumed = run()  # From checkpoint 3, after the flag was raised.
  assert full.nonfinite[0] == 2 and resumed.nonfinite == full.nonfinite
  np.testing.assert_array_equal(resumed.accuracy_matrix, full.accuracy_matrix)
  assert np.isnan(full.accuracy_matrix[2:]).all()
  assert not np.isnan(full.accuracy_matrix[:2]).any()


def test_online_stream_trained_in_blocks_resumes_identically(tmp_path):
  # Two origin experiences cut into 5 mini-experiences each; evaluations and
  # checkpoints after mini-experiences 4 and 9, each span one block.
  bench = jaxcl.benchmarks.split_online(make_benchmark(), 5)
  run = lambda writer=None: jaxcl.fit(
      jaxcl.models.MLP(4, hidden_size=8, drop_rate=0.25),
      from_spec("replay", mem_size=6), optax.sgd(0.1), bench,
      checkpoint_dir=tmp_path, writer=writer,
      **{**SETTINGS, "epochs": 1, "batch_size": 2})
  full = run()
  assert _listing(tmp_path) == ["10", "5"]
  (tmp_path / "10").rename(tmp_path.parent / "elsewhere")
  writer = _Writer()
  resumed = run(writer)
  assert writer.steps == [9]  # Only the second span was trained again.
  assert _summary(resumed) == _summary(full)
  assert _state_sha256(resumed.state) == _state_sha256(full.state)


def test_checkpointer_round_trips_keys_and_metadata_types(tmp_path):
  like = {"w": jnp.zeros(3), "key": jax.random.key(1)}
  folder = tmp_path / "new"
  ckpt = checkpoint.Checkpointer(folder, config={"a": 1})
  assert ckpt.restore(like) is None and not folder.exists()
  ckpt.save(5, {"w": jnp.arange(3.0), "key": jax.random.key(7)},
            {"x": np.arange(4, dtype=np.int16), "y": np.float32(0.5),
             "z": [1, float("nan")], "t": (2, "s")})
  with pytest.raises(ValueError, match="already holds checkpoint 5"):
    ckpt.save(3, like, {})
  restored = checkpoint.Checkpointer(folder, config={"a": 1}).restore(like)
  assert restored.step == 5
  placed = checkpoint.place(restored.arrays, like)
  np.testing.assert_array_equal(placed["w"], [0.0, 1.0, 2.0])
  np.testing.assert_array_equal(jax.random.key_data(placed["key"]),
                                jax.random.key_data(jax.random.key(7)))
  meta = restored.meta
  assert meta["x"].dtype == np.int16 and meta["x"].tolist() == [0, 1, 2, 3]
  assert type(meta["y"]) is np.float32 and meta["y"] == 0.5
  assert meta["z"][0] == 1 and np.isnan(meta["z"][1]) and meta["t"] == [2, "s"]
  with pytest.raises(checkpoint.CheckpointError, match=r"a: checkpoint has 1, "
                     "this run has 2"):
    checkpoint.Checkpointer(folder, config={"a": 2}).restore(like)
  # A `like` of other shapes or dtypes is refused as such: orbax returned
  # the saved shapes silently, and a cast dtype failed the checksum as if
  # the files were damaged.
  for other, message in (
      ({"w": jnp.zeros(4), "key": like["key"]},
       r"\['w'\]: float32 \(3,\) saved, \['w'\]: float32 \(4,\) expected"),
      ({"w": jnp.zeros(3, jnp.float16), "key": like["key"]},
       r"\['w'\]: float32 \(3,\) saved, \['w'\]: float16 \(3,\) expected")):
    with pytest.raises(checkpoint.CheckpointError, match=message):
      checkpoint.Checkpointer(folder, config={"a": 1}).restore(other)
  assert checkpoint.Checkpointer(folder, config={"a": 1}).steps() == [5]


def test_checkpointer_round_trips_numpy_64_bit_leaves_and_numbers(tmp_path):
  # A custom loop's state: numpy float64 and int64 arrays and Python
  # numbers come back with their own dtypes (JAX's 32-bit defaults had the
  # saved layout refused).
  state = {"w": np.arange(3.0), "epoch": np.int64(4), "seen": 7, "lr": 0.5}
  ckpt = checkpoint.Checkpointer(tmp_path / "c", config={})
  ckpt.save(1, state, {})
  for like in (state, jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype),
      state)):
    arrays = checkpoint.Checkpointer(tmp_path / "c", config={}).restore(
        like).arrays
    assert {k: (np.asarray(v).dtype, np.asarray(v).tolist())
            for k, v in arrays.items()} == {
                "w": (np.float64, [0.0, 1.0, 2.0]), "epoch": (np.int64, 4),
                "seen": (np.int64, 7), "lr": (np.float64, 0.5)}


def test_cli_resumes_from_checkpoint_dir(tmp_path, capsys):
  def run(logdir):
    assert cli.main([
        "run", "--n-experiences", "2", "--hidden-size", "16", "--batch-size",
        "64", "--checkpoint-dir", str(tmp_path / "ckpt"), "--logdir",
        str(logdir), "--no-progress", "--no-tensorboard", "--quiet",
        "--compilation-cache", ""]) == 0
    results = json.loads((logdir / "results.json").read_text())
    return results["accuracy_matrix"], {
        k: results["metrics"][k] for k in ("stream_accuracy", "stream_loss",
                                           "forgetting", "train_loss")}
  full = run(tmp_path / "a")
  assert _listing(tmp_path / "ckpt") == ["1", "2"]
  (tmp_path / "ckpt" / "2").rename(tmp_path / "elsewhere")
  assert run(tmp_path / "b") == full
  assert _listing(tmp_path / "ckpt") == ["1", "2"]
  # Another configuration is refused, and its new logdir is not left behind.
  code = cli.main([
      "run", "--n-experiences", "2", "--hidden-size", "16", "--batch-size",
      "64", "--lr", "0.5", "--checkpoint-dir", str(tmp_path / "ckpt"),
      "--logdir", str(tmp_path / "c"), "--no-progress", "--no-tensorboard",
      "--quiet", "--compilation-cache", ""])
  assert code == 2 and not (tmp_path / "c").exists()
  # The checkpointer's advice in the command line's words.
  err = capsys.readouterr().err
  assert re.search(r"checkpoint 2 in --checkpoint-dir '.*' was written by a "
                   r"different configuration.*Pass another --checkpoint-dir",
                   err), err
  assert _listing(tmp_path / "ckpt") == ["1", "2"]


def test_training_without_checkpoints_does_not_import_orbax():
  code = ("import sys, jaxcl.training, jaxcl.checkpoint\n"
          "print(sorted(m for m in sys.modules if m.startswith('orbax')))")
  out = subprocess.run([sys.executable, "-c", code], check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == "[]"


if __name__ == "__main__":
  _worker(sys.argv[1:])


def test_numpy_numbers_resume_the_run_python_numbers_wrote(finished, tmp_path,
                                                           reference,
                                                           monkeypatch):
  # np.int64(3) and 3 compile the same programs: the same run.
  resumed = _run(_copy(finished, tmp_path), epochs=np.int64(3),
                 batch_size=np.int64(8), eval_before_training=np.bool_(True))
  assert _summary(resumed) == reference
  # A sweep's values too (sweep(values=np.array([...])) gives numpy labels).
  bench = make_benchmark()
  monkeypatch.setattr(checkpoint, "_programs_sha256", lambda programs: {})
  config = checkpoint.run_config(
      benchmark=bench, train_stream=bench.train_stream,
      model=jaxcl.models.MLP(4), strategy_name="s", seeds=[0, 0],
      labels=list(np.array([0.5, 2.0])), state={}, programs=[],
      settings={"epochs": np.int64(2)})
  assert config["labels"] == [0.5, 2.0] and type(config["labels"][0]) is float
  assert type(config["epochs"]) is int


@pytest.mark.parametrize("arguments, error, message", [
    (dict(checkpoint_dir=""), ValueError,
     "checkpoint_dir '' names no folder; expected a folder path"),
    (dict(checkpoint_dir="  "), ValueError, "names no folder"),
    (dict(checkpoint_dir=7), TypeError, "checkpoint_dir must be a path, got 7"),
    (dict(checkpoint_dir="/proc/jaxcl_ckpt"), ValueError,
     "checkpoint_dir '/proc/jaxcl_ckpt' cannot be created: FileNotFoundError"),
    (dict(checkpoint_keep=0), ValueError,
     "checkpoint_keep must be a positive integer, got 0"),
    (dict(checkpoint_keep="two"), TypeError, "checkpoint_keep must be"),
])
def test_bad_checkpoint_arguments_are_refused_before_compiling(
    tmp_path, monkeypatch, arguments, error, message):
  monkeypatch.chdir(tmp_path)
  lowered = []
  monkeypatch.setattr(jax.stages.Traced, "lower", lambda self, *a, **k: (
      lowered.append(self), pytest.fail("lowered a program")))
  with pytest.raises(error, match=message):
    jaxcl.fit(jaxcl.models.MLP(4, hidden_size=4), naive(), optax.sgd(0.1),
              make_benchmark(), batch_size=8, **arguments)
  assert not lowered and not list(tmp_path.iterdir())


def test_checkpointer_refuses_steps_that_are_not_new_integers(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "c", config={})
  arrays = {"w": jnp.zeros(2)}
  for step in (1.5, True, -2, "3"):
    with pytest.raises(ValueError, match=f"step must be a non-negative "
                       f"integer, got {step!r}"):
      ckpt.save(step, arrays, {})
  ckpt.save(2, arrays, {})
  with pytest.raises(ValueError, match="already holds checkpoint 2; expected "
                     "a larger step"):
    ckpt.save(2, arrays, {})
  assert ckpt.steps() == [2]
