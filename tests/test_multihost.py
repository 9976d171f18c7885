"""Two processes joined by jax.distributed train as one run over their devices.

Each process is a "host" with 2 simulated CPU devices; the mesh spans all 4
and XLA's CPU collectives (gloo) carry the all-reduces between processes.
"""

import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxcl import _hosts

# One host: join the others, then make runs over the 4 global devices, which
# the test compares with the same runs on one device (one of this host's, or
# the test's own: _runs_on_one_device).
WORKER = r"""
import faulthandler, gc, json, pathlib, shutil, sys, threading
# A host stuck in a collective prints every thread's stack and exits.
faulthandler.dump_traceback_later(540, exit=True)
process_id, port, tests, checkpoints, cache = sys.argv[1:]
import jax
from jax.experimental import multihost_utils
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{port}", num_processes=2,
                           process_id=int(process_id))
import numpy as np, optax, tensorflow_datasets as tfds
sys.path.insert(0, tests)
from conftest import make_benchmark
from test_multihost import summary
import jaxcl
from jaxcl import _hosts

# Fits that build the same programs as an earlier one (the resumed run,
# the damaged stream's, FIT_STOPPER's) load them from the cache instead of
# compiling them again: XLA's compiles are most of a fit's time here. (JAX
# caches process 0's programs only: host 1 compiles its own.)
jaxcl.enable_compilation_cache(cache)

assert len(jax.devices()) == 4 and len(jax.local_devices()) == 2
bench = make_benchmark(n_classes=4, n_experiences=2, per_class=20)
online = jaxcl.benchmarks.split_online(bench, 8)
model = jaxcl.models.MLP(4, hidden_size=16, drop_rate=0.0)


def fit(name="naive", benchmark=bench, model=model, batch_size=8, **kwargs):
  return jaxcl.fit(model, jaxcl.strategies.from_spec(name), optax.sgd(0.1),
                   benchmark, batch_size=batch_size, **kwargs)


# Replay's run over both hosts' devices writes the checkpoints that a run
# resumes from at the end. (Naive's would place, all-reduce and read back
# as replay's, without the memory; naive's runs over them are the lazy
# digits' below.)
whole = fit("replay", epochs=2, data_parallel=True,
            checkpoint_dir=checkpoints)
out = {"replay": summary(whole),
       "online": summary(fit(benchmark=online, data_parallel=True))}


class Counted:
  # The digits' tfds data source, counting the records read through it.

  def __init__(self, source):
    self.source, self.reads = source, 0

  def __len__(self):
    return len(self.source)

  def __getitem__(self, key):
    self.reads += 1
    return self.source[key]

  def __getitems__(self, keys):
    self.reads += len(keys)
    return self.source.__getitems__(keys)

  def __getattr__(self, name):  # dataset_info, split: its fingerprint.
    return getattr(self.source, name)


# Each host reads half of the labels, the images of its devices' half of
# every batch streamed from the host in chunks (put on the devices from a
# thread while the previous chunk's all-reduces run), and its devices' half
# of the test stream.
sources = jaxcl.benchmarks.sources
records = [Counted(tfds.builder_from_directory(
    str(sources.BUNDLED_DATA_DIR / "digits_bundled" / "1.0.0")
).as_data_source(split=split)) for split in ("train", "test")]
train, test = [sources.arrays_from_data_source(r, lazy=True,
                                               split_over_hosts=True)
               for r in records]
reads = {"records": [len(r) for r in records],
         "labels": [r.reads for r in records]}
digits = jaxcl.benchmarks.class_incremental(train, test, 5, seed=0)
out["lazy"] = []
for p, name in ((True, "split"), (False, "whole")):
  for r in records:
    r.reads = 0
  out["lazy"].append(summary(fit(
      benchmark=digits, model=jaxcl.models.MLP(10, hidden_size=16),
      device_memory_budget_mb=0.02, data_parallel=p)))
  reads[name] = [r.reads for r in records]
# EWC's importance pass reads a subset of each experience: half on each host.
for r in records:
  r.reads = 0
out["ewc"] = summary(fit("ewc", benchmark=digits,
                         model=jaxcl.models.MLP(10, hidden_size=16),
                         device_memory_budget_mb=0.02))
reads["ewc"] = [r.reads for r in records]
reads["sizes"] = [len(e) for e in digits.train_stream]
# On the devices (no budget), seeds split over the devices: every device
# holds whole training experiences and the whole test stream, read in shares
# (the batches that data parallelism splits read them so too; its split
# test stream is read as the streamed run's above).
for r in records:
  r.reads = 0
result = fit(benchmark=digits, model=jaxcl.models.MLP(10, hidden_size=16),
             seeds=[3, 1, 0, 2])
reads["seeds"] = [r.reads for r in records]
# Run 2, on host 1's devices, is seed 0's: the run of seed 0 alone on one
# device (streamed there, the same numbers: test_streaming.py).
out["seeds"] = [summary(result.runs[2]), out["lazy"][1]]
out["reads"] = reads


class Unreadable(Counted):
  # Host 1 cannot read its share of the labels.

  def __getitems__(self, keys):
    if jax.process_index() == 1:
      raise OSError("record unreadable")
    return super().__getitems__(keys)


# The agreed error holds no device buffer (in its traceback's reference
# cycles): one would keep JAX's backend alive past its shutdown at exit.
gc.disable()
arrays_before = len(jax.live_arrays())
try:
  sources.arrays_from_data_source(Unreadable(records[1].source), lazy=True,
                                  split_over_hosts=True)
except Exception as e:
  out["unreadable"] = f"{type(e).__name__}: {e}"
out["arrays_kept_by_error"] = len(jax.live_arrays()) - arrays_before
gc.enable()
# A host whose records lack the labels stops every host before the count.
try:
  sources.arrays_from_data_source(
      records[1].source if process_id == "0" else [{"image": 0}], lazy=True,
      split_over_hosts=True)
except ValueError as e:
  out["no_labels"] = str(e)
# Hosts whose copies of the split differ in length stop too.
try:
  sources.arrays_from_data_source(
      records[1].source if process_id == "0" else records[0].source,
      lazy=True, split_over_hosts=True)
except ValueError as e:
  out["lengths"] = str(e)



class UnreadableInThread(Counted):
  # Host 1 cannot read the images of a streamed chunk (read in a thread).

  def __getitems__(self, keys):
    if (jax.process_index() == 1 and
        threading.current_thread() is not threading.main_thread()):
      raise OSError("chunk unreadable")
    return super().__getitems__(keys)


damaged = sources.arrays_from_data_source(UnreadableInThread(records[0].source),
                                          lazy=True, split_over_hosts=True)
try:
  fit(benchmark=jaxcl.benchmarks.class_incremental(damaged, test, 5, seed=0),
      model=jaxcl.models.MLP(10, hidden_size=16), device_memory_budget_mb=0.02)
except Exception as e:
  out["chunk_unreadable"] = f"{type(e).__name__}: {e}"

# Resume after the first experience: the newest checkpoint is damaged, and
# is set aside once.
if jax.process_index() == 0:
  (pathlib.Path(checkpoints) / "2" / "meta" / "metadata").write_text("{")
multihost_utils.sync_global_devices("checkpoint 2 damaged")
out["checkpoint"] = [
    summary(fit("replay", epochs=2, checkpoint_dir=checkpoints)),
    summary(whole)]
# A folder of its own on each host: orbax writes and lists on process 0
# only, so the hosts would resume different runs; they stop instead.
try:
  fit(epochs=2, checkpoint_dir=f"{checkpoints}-of-host-{process_id}")
except jaxcl.checkpoint.CheckpointError as e:
  out["unshared_checkpoints"] = (
      "differ between the 2 processes in: folder" in str(e))
# Hosts whose streams differ in layout stop before they exchange any data.
try:
  fit(benchmark=jaxcl.benchmarks.class_incremental(
      train, test, 5 if process_id == "0" else 2, seed=0),
      model=jaxcl.models.MLP(10, hidden_size=16))
except ValueError as e:
  out["layout"] = str(e)
# Hosts that disagree are stopped before anything compiles.
try:
  fit(epochs=2, seed=int(process_id))
except ValueError as e:
  out["disagreement"] = str(e)
  # Each host raises it: none stops the other.
  out["disagreement_on_every_host"] = _hosts._raised_everywhere(e)
print(json.dumps(out))
"""


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _on_two_hosts(command, folder, succeed=True, exit_codes=(2, 2)):
  """Runs ``command(process_id)`` as two processes; returns their stdouts.

  Output goes to files (a full pipe would block a host inside a collective),
  and when one host fails the other, left waiting for it, is stopped. With
  ``succeed=False`` both hosts must exit with ``exit_codes`` within two
  minutes; returns their stderrs.
  """
  # faulthandler prints every thread's stack when a host that hangs is
  # stopped with SIGABRT, so that a failure says where it hung.
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONFAULTHANDLER": "1",
         "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") +
         " --xla_force_host_platform_device_count=2"}
  logs = [(folder / f"host{i}.out", folder / f"host{i}.err") for i in range(2)]
  hosts = []
  for i, (out, err) in enumerate(logs):
    with open(out, "w") as stdout, open(err, "w") as stderr:
      hosts.append(subprocess.Popen(command(i), env=env, stdout=stdout,
                                    stderr=stderr))
  deadline = time.monotonic() + (600 if succeed else 120)
  try:
    while any(host.poll() is None for host in hosts):
      failed = [h for h in hosts if h.poll() not in (None, 0)] if succeed else []
      if failed or time.monotonic() > deadline:
        hung = [h for h in hosts if h.poll() is None]
        for host in hung:
          host.send_signal(signal.SIGABRT)
        for host in hung:
          with contextlib.suppress(subprocess.TimeoutExpired):
            host.wait(10)
        pytest.fail("\n".join(
            f"host {i} {'still running' if h in hung else f'exited with {h.poll()}'}"
            f":\n{err.read_text()[-6000:]}"
            for i, (h, (_, err)) in enumerate(zip(hosts, logs))))
      time.sleep(0.2)
  finally:
    for host in hosts:
      host.kill()
  if not succeed:
    errors = [err.read_text() for _, err in logs]
    assert [host.returncode for host in hosts] == list(exit_codes), [
        error[-3000:] for error in errors]
    return errors
  for i, (host, (_, err)) in enumerate(zip(hosts, logs)):
    assert host.returncode == 0, f"host {i}: {err.read_text()[-3000:]}"
  return [out.read_text() for out, _ in logs]


def summary(result):
  """A run's parameters, the devices that hold them and its accuracy
  matrix, as JSON (runs split over several hosts' devices come back
  gathered in host memory: "host")."""
  params = jax.tree.leaves(result.state.params)
  where = (len(params[0].sharding.device_set)
           if isinstance(params[0], jax.Array) else "host")
  return {"params": [np.asarray(p).tolist() for p in params],
          "devices": where, "accuracy": result.accuracy_matrix.tolist()}


def _runs_on_one_device():
  """WORKER's runs over both hosts' devices, made on this process's device,
  by name (their summaries): the numbers of a host's own device, made once
  instead of on each host."""
  import optax
  import tensorflow_datasets as tfds
  from conftest import make_benchmark

  import jaxcl
  from jaxcl.benchmarks import sources

  def fit(name, benchmark, model, **kwargs):
    return summary(jaxcl.fit(model, jaxcl.strategies.from_spec(name),
                             optax.sgd(0.1), benchmark, batch_size=8,
                             **kwargs))

  bench = make_benchmark(n_classes=4, n_experiences=2, per_class=20)
  model = jaxcl.models.MLP(4, hidden_size=16, drop_rate=0.0)
  folder = sources.BUNDLED_DATA_DIR / "digits_bundled" / "1.0.0"
  train, test = [sources.arrays_from_data_source(
      tfds.builder_from_directory(str(folder)).as_data_source(split=split),
      lazy=True) for split in ("train", "test")]
  return {"replay": fit("replay", bench, model, epochs=2),
          "online": fit("naive", jaxcl.benchmarks.split_online(bench, 8),
                        model),
          "ewc": fit("ewc", jaxcl.benchmarks.class_incremental(
              train, test, 5, seed=0), jaxcl.models.MLP(10, hidden_size=16),
                     device_memory_budget_mb=0.02)}


@pytest.fixture(scope="module")
def host_cache(tmp_path_factory):
  """The hosts' compilation cache, shared by this module's tests: a later
  test's host 0 loads the programs that an earlier one's compiled."""
  return tmp_path_factory.mktemp("host_cache")


@pytest.mark.xdist_group("test_multihost-host_cache")
def test_two_hosts_train_as_one_run(tmp_path, host_cache):
  args = [str(_free_port()), str(pathlib.Path(__file__).parent),
          str(tmp_path / "checkpoints"), str(host_cache)]
  outputs = [json.loads([line for line in stdout.splitlines()
                         if line.startswith("{")][-1])
             for stdout in _on_two_hosts(
                 lambda i: [sys.executable, "-c", WORKER, str(i), *args],
                 tmp_path)]
  reads = [out.pop("reads") for out in outputs]
  assert [out.pop("lengths") for out in outputs] == [
      "The data source has [355, 1442] records on the processes; "
      "split_over_hosts needs the same records on every host."] * 2
  # A host that cannot read its share of the labels raises its own error,
  # and the others name it, instead of waiting for it.
  # Both hosts stop at the chunk that one of them cannot read.
  assert [out.pop("chunk_unreadable") for out in outputs] == [
      "ValueError: processes [1] failed to read their share of a streamed "
      "chunk (their own errors say why).", "OSError: chunk unreadable"]
  assert [out.pop("no_labels") for out in outputs] == [
      "processes [1] failed to read their share of the data source's first "
      "record (their own errors say why).",
      "Records need 'image' and 'label' entries, got ['image']."]
  assert [out.pop("unreadable") for out in outputs] == [
      "ValueError: processes [1] failed to read their share of the labels "
      "(their own errors say why).", "OSError: record unreadable"]
  assert [out.pop("arrays_kept_by_error") for out in outputs] == [0, 0]
  # Both hosts hold every number of every run.
  assert outputs[0] == outputs[1]
  # Each host read the labels of half of the records (and twice the first
  # record: for its entries, and the images' shape).
  for n, labels in zip(reads[0]["records"], zip(*(r["labels"] for r in reads))):
    assert list(labels) == [-(-n // 2) + 2, n // 2 + 2]
  # Alone, each host reads every training sample, plus a few samples for
  # shapes and padding (naive's hooks read no inputs, so their subset is
  # not read). Together, each sample is read by one host, half by each, give
  # or take the padding of the 5 experiences' last batches (it repeats
  # sample 0, read again by each host's block).
  n, n_test = reads[0]["records"]
  extra = reads[0]["whole"][0] - n
  assert reads[1]["whole"][0] == reads[0]["whole"][0] and 0 < extra <= 2 * 5
  split = [r["split"][0] - extra for r in reads]
  assert 0 <= sum(split) - n <= 4 * 5 and abs(split[0] - split[1]) <= 8 * 5, (
      split)
  # EWC reads the same chunks, and its hooks' subset of every experience
  # (half the 0.02 MB budget in digits of 64 + 12 bytes), half on each host.
  hooks = [r["ewc"][0] - r["split"][0] for r in reads]
  subset = sum(min(size, int(0.02 * 2**20) // 76 // 2)
               for size in reads[0]["sizes"])
  assert sum(hooks) == subset and abs(hooks[0] - hooks[1]) <= 5, hooks
  # Lazy inputs that every device holds whole are read once over the hosts
  # (and a couple of training samples by each, for shapes).
  for split, total in zip(zip(*(r["seeds"] for r in reads)), (n, n_test)):
    assert total <= sum(split) <= total + 4 and (
        abs(split[0] - split[1]) <= 2 * 5), split
  # The test stream, split over the devices with the batches or whole on
  # each host's device without data parallelism: read once over both hosts.
  for name in ("split", "whole"):
    split = [r[name][1] for r in reads]
    assert sum(split) == n_test and abs(split[0] - split[1]) <= 2 * 5, split
  out = outputs[0]
  assert out.pop("layout").startswith(
      "fit's data layout differ between the 2 processes in: train_stream, "
      "test_stream;")
  assert out.pop("unshared_checkpoints") is True
  assert "fit's arguments differ between the 2 processes in: seeds;" in (
      out.pop("disagreement"))
  assert out.pop("disagreement_on_every_host") is True
  alone = _runs_on_one_device()
  assert set(out) == {*alone, "seeds", "lazy", "checkpoint"}
  pairs = {name: [out.pop(name), run] for name, run in alone.items()}
  expected_devices = {"seeds": ("host", 1), "checkpoint": (4, 4)}
  for name, (spread, single) in {**pairs, **out}.items():
    assert (spread["devices"], single["devices"]) == expected_devices.get(
        name, (4, 1)), name
    np.testing.assert_array_equal(spread["accuracy"], single["accuracy"],
                                  err_msg=name)
    for a, b in zip(spread["params"], single["params"], strict=True):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=name)
  # The damaged checkpoint was set aside once; the resumed run wrote it again.
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()
                if p.name[0].isdigit()) == ["1", "2", "2.unusable"]


def test_cli_on_two_hosts_writes_one_set_of_outputs(tmp_path, monkeypatch):
  from jaxcl import cli
  port = _free_port()
  logdirs = [tmp_path / "host0", tmp_path / "host1"]
  # Each host reads half of the labels and of the streamed chunks (of one
  # step each). Batches of 64: few steps, each an all-reduce between the
  # hosts.
  run = ["run", "--n-experiences", "2", "--batch-size", "64",
         "--hidden-size", "32", "--quiet", "--no-progress",
         "--compilation-cache", "", "--lazy", "--device-memory-budget-mb",
         "0.5"]
  _on_two_hosts(lambda i: [
      sys.executable, "-m", "jaxcl.cli", *run, "--distributed",
      "--coordinator-address", f"localhost:{port}", "--num-processes", "2",
      "--process-id", str(i), "--logdir", str(logdirs[i])], tmp_path)
  # The same run alone, in this process (on its one device).
  monkeypatch.chdir(tmp_path)
  assert cli.main([*run, "--logdir", str(tmp_path / "alone")]) == 0
  results = json.loads((logdirs[0] / "results.json").read_text())
  assert results["config"]["lazy"]
  assert results["accuracy_matrix"] == json.loads(
      (tmp_path / "alone" / "results.json").read_text())["accuracy_matrix"]
  assert results["environment"]["processes"] == 2
  assert results["environment"]["devices"] == 4
  assert len(results["accuracy_matrix"]) == 2
  assert not logdirs[1].exists()


@pytest.mark.parametrize("lazy", [False, True])
def test_cli_hosts_stop_together_when_one_cannot_load_the_data(tmp_path, lazy):
  port = _free_port()
  missing = tmp_path / "no_tfds_data"
  errors = _on_two_hosts(lambda i: [
      sys.executable, "-m", "jaxcl.cli", "run", "--quiet", "--no-progress",
      "--compilation-cache", "", *(["--lazy"] if lazy else []),
      *(["--data-dir", str(missing)] if i == 1 else []),
      "--distributed", "--coordinator-address", f"localhost:{port}",
      "--num-processes", "2", "--process-id", str(i),
      "--logdir", str(tmp_path / f"host{i}")], tmp_path, succeed=False)
  assert "jaxcl: error: Cannot load split 'train' of tfds dataset" in (
      errors[1]) and str(missing) in errors[1], errors[1]
  what = "the dataset" if lazy else "the benchmark"
  assert (f"jaxcl: error: processes [1] failed to read their share of {what}"
          in errors[0]), errors[0]


# One host raises inside stop_all_hosts_on_error while the other waits for
# it in a collective, is busy with work of its own, or has gone on to the
# next block; or every host leaves its block with sys.exit(0).
STOPPER = r"""
import sys, time
process_id, port, failing, other_waits_in = sys.argv[1:]
import jax, numpy as np
from jax.experimental import multihost_utils
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{port}", num_processes=2,
                           process_id=int(process_id))
from jaxcl.training import stop_all_hosts_on_error
try:
  with stop_all_hosts_on_error(exit_code=2):
    multihost_utils.process_allgather(np.int32(0))  # Both hosts are here.
    if process_id == failing:
      time.sleep(1)  # The other host leaves its block first.
      raise RuntimeError("a bug in host code")
    if other_waits_in == "exit":
      sys.exit(0)
    if other_waits_in == "collective":
      multihost_utils.process_allgather(np.int32(0))
    if other_waits_in == "work":
      time.sleep(600)
  with stop_all_hosts_on_error(exit_code=2):
    time.sleep(600)
except RuntimeError as error:
  print(f"raised {error}", file=sys.stderr)
  sys.exit(2)
"""


def test_hosts_that_exit_normally_inside_the_block_are_not_stopped(tmp_path):
  port = str(_free_port())
  _on_two_hosts(lambda i: [sys.executable, "-c", STOPPER, str(i), port, "",
                           "exit"], tmp_path)


@pytest.mark.parametrize("failing, other_waits_in",
                         [("0", "collective"), ("1", "work"),
                          ("1", "next block")])
def test_a_host_that_raises_stops_the_others(tmp_path, failing,
                                             other_waits_in):
  port = str(_free_port())
  start = time.monotonic()
  errors = _on_two_hosts(lambda i: [
      sys.executable, "-c", STOPPER, str(i), port, failing, other_waits_in],
      tmp_path, succeed=False)
  # Without it: until the coordination service's 5-minute shutdown timeout.
  assert time.monotonic() - start < 60
  other = 1 - int(failing)
  assert "raised a bug in host code" in errors[int(failing)]
  assert (f"jaxcl: error: process {failing} failed: RuntimeError: a bug in "
          f"host code; process {other} stops too.") in errors[other], (
              errors[other])


# Inside fit, which watches on its own: host 1's writer fails (a full disk)
# after the first evaluation, while host 0 goes on to the next experience.
# The run is WORKER's first, whose programs host 0 loads from the cache when
# that test ran before.
FIT_STOPPER = r"""
import sys
process_id, port, tests, cache = sys.argv[1:]
import jax, optax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{port}", num_processes=2,
                           process_id=int(process_id))
sys.path.insert(0, tests)
from conftest import make_benchmark
import jaxcl

jaxcl.enable_compilation_cache(cache)


class FullDisk(jaxcl.loggers.MetricWriter):
  def write_scalars(self, step, scalars):
    raise OSError("no space left on device")

bench = make_benchmark(n_classes=4, n_experiences=2, per_class=20)
try:
  jaxcl.fit(jaxcl.models.MLP(4, hidden_size=16, drop_rate=0.0),
            jaxcl.strategies.from_spec("replay"), optax.sgd(0.1), bench,
            batch_size=8, epochs=2,
            writer=FullDisk() if process_id == "1" else None)
except OSError as error:
  print(f"raised {error}", file=sys.stderr)
  sys.exit(2)
"""


@pytest.mark.xdist_group("test_multihost-host_cache")
def test_a_host_failing_inside_fit_stops_the_others(tmp_path, host_cache):
  port = str(_free_port())
  errors = _on_two_hosts(lambda i: [
      sys.executable, "-c", FIT_STOPPER, str(i), port,
      str(pathlib.Path(__file__).parent), str(host_cache)], tmp_path,
      succeed=False, exit_codes=[1, 2])
  assert "raised no space left on device" in errors[1], errors[1]
  assert ("jaxcl: error: process 1 failed: OSError: no space left on device; "
          "process 0 stops too.") in errors[0], errors[0]


@pytest.mark.parametrize("inside_a_file", [False, True])
def test_cli_hosts_stop_together_when_one_cannot_write_its_logdir(
    tmp_path, inside_a_file):
  port = _free_port()
  (tmp_path / "a_file").touch()
  # A folder inside a file (refused by the host writing it, after the hosts
  # joined: refused before, host 1 waited in jax.distributed.initialize),
  # or one that passes that check and still cannot be created.
  folder = ((lambda i: str(tmp_path / "a_file" / f"host{i}")) if inside_a_file
            else (lambda i: f"/proc/jaxcl_host{i}"))
  errors = _on_two_hosts(lambda i: [
      sys.executable, "-m", "jaxcl.cli", "run", "--quiet", "--no-progress",
      "--compilation-cache", "", "--n-experiences", "2",
      "--distributed", "--coordinator-address", f"localhost:{port}",
      "--num-processes", "2", "--process-id", str(i),
      "--logdir", folder(i)], tmp_path, succeed=False)
  # Only host 0 writes; host 1 went on and waited for it.
  refusal = (f"--logdir '{folder(0)}' is inside the file" if inside_a_file
             else f"--logdir '{folder(0)}' cannot be created: "
             "FileNotFoundError")
  assert f"jaxcl: error: {refusal}" in errors[0], errors[0]
  assert (f"jaxcl: error: process 0 failed: ValueError: {refusal}"
          in errors[1]), errors[1]


def test_one_host_runs_the_block_as_is():
  with pytest.raises(KeyError, match="raised as usual"):
    with _hosts.stop_all_hosts_on_error():
      raise KeyError("raised as usual")


def test_only_explicit_causes_carry_an_agreed_error():
  agreed = ValueError("stopped every host")
  setattr(agreed, _hosts._RAISED_EVERYWHERE, True)
  try:
    raise OSError("wrapped") from agreed
  except OSError as wrapped:
    assert _hosts._raised_everywhere(wrapped)
  try:  # A retry after an agreed failure fails anew: not agreed.
    try:
      raise agreed
    except ValueError:
      raise OSError("retry failed")
  except OSError as retry:
    assert retry.__context__ is agreed
    assert not _hosts._raised_everywhere(retry)
  looped = ValueError("its own cause")
  looped.__cause__ = looped
  assert not _hosts._raised_everywhere(looped)
