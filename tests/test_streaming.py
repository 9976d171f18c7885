"""Streaming experiences that exceed the device-memory budget: same numbers as on device."""

import dataclasses
import os
import threading
import types

import chex
import jax
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from conftest import make_benchmark

import jaxcl
from jaxcl import checkpoint
from jaxcl.benchmarks import class_incremental, normalizer, sources
from jaxcl.strategies import chain, lwf, naive, replay
from jaxcl.training import streaming


def _fit(bench, strategy, budget_mb=None, **kwargs):
  model = jaxcl.models.MLP(num_classes=bench.n_classes, hidden_size=32)
  return jaxcl.fit(model, strategy, optax.sgd(0.05), bench,
                   device_memory_budget_mb=budget_mb, **kwargs)


def _assert_same(a, b):
  np.testing.assert_array_equal(a.accuracy_matrix, b.accuracy_matrix)
  chex.assert_trees_all_close(a.state.params, b.state.params, rtol=1e-6,
                              atol=1e-7)
  assert int(a.state.step) == int(b.state.step)
  for name in ("train_loss", "train_accuracy", "stream_accuracy"):
    assert a.metrics[name] == pytest.approx(b.metrics[name], rel=1e-6)


class _Records(list):
  """``n`` records of ``width``-pixel images; logs the keys of batched reads."""

  def __init__(self, n: int, width: int, n_classes: int):
    super().__init__({"image": np.full((width,), i % 251, np.uint8),
                      "label": i % n_classes} for i in range(n))
    self.reads = []

  def __getitems__(self, keys):
    self.reads.append(list(keys))
    return [self[k] for k in keys]


def test_record_array_views_read_only_what_is_asked():
  records = _Records(10, width=2, n_classes=3)
  reads = records.reads
  split = sources.arrays_from_data_source(records, lazy=True)
  np.testing.assert_array_equal(split.y, [i % 3 for i in range(10)])
  reads.clear()
  view = split.x[split.y == 1][::-1]  # Records 7, 4, 1: nothing read yet.
  assert view.shape == (3, 2) and view.dtype == np.uint8 and not reads
  np.testing.assert_array_equal(np.asarray(view)[:, 0], [7, 4, 1])
  assert reads == [[7, 4, 1]]
  assert int(view[1][0]) == 4
  with pytest.raises(TypeError, match="first axis"):
    view[:, 0]


def test_tfds_views_are_fingerprinted_without_reading():
  reads = []

  class Counted:
    """A tfds data source that counts the records read through it."""

    def __init__(self, source):
      self.source = source

    def __len__(self):
      return len(self.source)

    def __getitems__(self, keys):
      reads.extend(keys)
      return self.source.__getitems__(keys)

    def __getitem__(self, key):
      reads.append(key)
      return self.source[key]

    def __getattr__(self, name):  # dataset_info, split, decoders
      return getattr(self.source, name)

  digits = sources.load_bundled("digits_bundled", "train", lazy=True)
  source = digits.x._source
  x = sources.RecordArray(Counted(source))
  test_split = sources.RecordArray(
      Counted(dataclasses.replace(source, split="test")))
  reads.clear()  # Making a RecordArray reads its first record's shape.
  names = {x.fingerprint(), x[:10].fingerprint(), x[1:11].fingerprint(),
           test_split.fingerprint()}
  assert len(names) == 4 and all("digits_bundled/1.0.0" in n for n in names)
  assert x[np.arange(10)].fingerprint() == x[:10].fingerprint()
  # Any split tfds accepts names the view: a ReadInstruction too.
  builder = tfds.builder_from_directory(
      str(sources.BUNDLED_DATA_DIR / "digits_bundled" / "1.0.0"))
  instruction = tfds.core.ReadInstruction("train", from_=0, to=10, unit="abs")
  named = sources.RecordArray(builder.as_data_source(split=instruction))
  assert "digits_bundled/1.0.0" in named.fingerprint() != x[:10].fingerprint()
  # A checkpoint's data hash names the records instead of reading them.
  first = checkpoint._checksum([x[:10]])
  assert first == checkpoint._checksum([x[np.arange(10)]]) != (
      checkpoint._checksum([x[1:11]]))
  assert not reads
  # Sources without a dataset name (or with custom decoding) are hashed by
  # their bytes.
  records = [{"image": np.zeros(2, np.uint8) + i, "label": i} for i in range(3)]
  assert sources.RecordArray(records).fingerprint() is None
  decoded = dataclasses.replace(
      source, decoders={"image": tfds.decode.SkipDecoding()})
  assert sources.RecordArray(decoded).fingerprint() is None
  plain = sources.RecordArray(records)
  assert checkpoint._checksum([plain]) == checkpoint._checksum(
      [np.asarray(plain)])


def test_lazy_labels_are_read_without_decoding_images():
  eager = sources.load_bundled("digits_bundled", "test")
  lazy = sources.load_bundled("digits_bundled", "test", lazy=True,
                              split_over_hosts=True)  # One host: all labels.
  np.testing.assert_array_equal(lazy.y, eager.y)
  np.testing.assert_array_equal(np.asarray(lazy.x), eager.x)
  undecoded = sources.without_images(lazy.x._source)
  assert isinstance(undecoded[0]["image"], bytes)
  assert undecoded[0]["label"] == eager.y[0]
  with pytest.raises(ValueError, match="split_over_hosts=True needs lazy"):
    sources.load_bundled("digits_bundled", "test", split_over_hosts=True)


def test_streaming_equals_on_device_on_lazy_bundled_mnist():
  # A tfds data source read lazily, a budget far below one experience (~630
  # KB), chunks that do not divide the epoch: the numbers must not change.
  train = sources.load_bundled("mnist_bundled", "train[:1000]", lazy=True)
  test = sources.load_bundled("mnist_bundled", "test[:300]")
  bench = class_incremental(train, test, 2, seed=0,
                            preprocess=normalizer(0.1307, 0.3081))
  assert isinstance(bench.train_stream[0].x, sources.RecordArray)
  on_device = _fit(bench, naive(), epochs=2, batch_size=32)
  streamed = _fit(bench, naive(), budget_mb=0.25, epochs=2, batch_size=32)
  _assert_same(on_device, streamed)


def test_leaving_a_streamed_experience_early_stops_the_reader(monkeypatch):
  # Another host fails to read the second chunk (as `read_together` reports
  # it here): fit raises, and the reader thread, which reads ahead, stops
  # instead of waiting forever on its full queue.
  read_together = streaming._hosts.read_together
  chunks = []

  def another_host_fails(what, read, in_flight=None):
    value = read_together(what, read, in_flight)
    chunks.append(what)
    if chunks.count("a streamed chunk") == 2:
      raise ValueError("processes [1] failed to read their share")
    return value

  monkeypatch.setattr(streaming._hosts, "read_together", another_host_fails)
  bench = make_benchmark(n_classes=2, n_experiences=1, per_class=200, dim=6)
  before = set(threading.enumerate())
  with pytest.raises(ValueError, match=r"processes \[1\] failed") as error:
    _fit(bench, naive(), budget_mb=0.002, batch_size=16, epochs=3)
  # Even while the error (its traceback refers to the reader) is kept.
  assert error.value.__traceback__ is not None
  # fit's background FLOP analysis may still be finishing (with a cache
  # folder it prints the programs first); a reader stuck on its queue
  # would never end.
  for thread in set(threading.enumerate()) - before:
    thread.join(timeout=60)
  assert set(threading.enumerate()) <= before


def test_hooks_subset_inputs_are_read_only_when_the_hooks_use_them():
  records = _Records(400, width=6, n_classes=2)
  train = sources.arrays_from_data_source(records, lazy=True)
  bench = class_incremental(train, (np.zeros((4, 6), np.uint8),
                                    np.array([0, 1, 0, 1])), 1, seed=0)
  counts = {}
  for strategy in (naive(), jaxcl.strategies.ewc()):
    records.reads.clear()
    _fit(bench, strategy, budget_mb=0.002, batch_size=16, epochs=2)
    counts[strategy.name] = sum(map(len, records.reads))
  # Naive's hooks read no inputs: each epoch reads every sample once, plus
  # sample 0 for a chunk that the order's padding fills with it.
  assert 2 * 400 <= counts["naive"] <= 2 * 400 + 2
  # EWC's importance pass reads the seeded subset (half of the 2 KB budget
  # in samples of 6 + 12 bytes), once per experience.
  assert counts["ewc"] - counts["naive"] == (2 * 2**20 // 1000) // 18 // 2


def test_streaming_equals_on_device_for_vmapped_seeds_and_a_teacher():
  bench = make_benchmark(n_classes=4, n_experiences=2, per_class=30, dim=6,
                         sizes=[30, 30, 20, 30])
  strategy = chain(naive(), lwf(alpha=1.0))
  kwargs = dict(epochs=2, batch_size=8, seeds=[0, 1])
  on_device = _fit(bench, strategy, **kwargs)
  budget = 8 * 3 * streaming.sample_nbytes(bench.train_stream[0]) / 2**20
  streamed = _fit(bench, strategy, budget_mb=budget, **kwargs)
  for a, b in zip(on_device.runs, streamed.runs):
    _assert_same(a, b)


def test_streaming_hooks_see_a_subset_within_the_budget():
  bench = make_benchmark(n_classes=4, n_experiences=2, per_class=40)
  sample = streaming.sample_nbytes(bench.train_stream[0])
  budget_rows = 24
  result = _fit(bench, replay(mem_size=16), budget_mb=budget_rows * sample / 2**20,
                epochs=1, batch_size=4)
  buffer = result.state.cl_state
  stored = np.asarray(jax.tree.leaves(buffer)[0])
  assert stored.shape[0] == 16  # The buffer keeps its capacity.
  assert np.isfinite(result.metrics["stream_accuracy"])


@pytest.mark.parametrize("seeds", [None, [0, 1, 2, 3]])
def test_chunks_in_flight_stay_within_half_the_budget(monkeypatch, seeds):
  bench = make_benchmark(n_classes=4, n_experiences=2, per_class=400, dim=6)
  sample = streaming.sample_nbytes(bench.train_stream[0])
  budget_rows, batch_size = 640, 4
  trainers = []
  original = streaming.StreamingTrainer.__init__

  def record(self, *args, **kwargs):
    original(self, *args, **kwargs)
    trainers.append(self)

  monkeypatch.setattr(streaming.StreamingTrainer, "__init__", record)
  _fit(bench, naive(), budget_mb=budget_rows * sample / 2**20, epochs=1,
       batch_size=batch_size, seeds=seeds)
  (trainer,) = trainers
  # Each chunk holds every run's batches, each row with its int32 position:
  # the two chunks dispatched last, the two queued and the one being read
  # (5 in all) fit in half the budget, in bytes.
  runs = len(seeds or [0])
  assert trainer.chunk_steps > 1
  assert (5 * trainer.chunk_steps * batch_size * runs * (sample + 4)
          <= budget_rows * sample / 2)


def test_dispatch_waits_so_at_most_five_chunks_are_on_the_devices(
    monkeypatch):
  # A wide model on tiny inputs: the device is slower than the reader, so
  # without a wait the host would dispatch chunk after chunk ahead.
  bench = make_benchmark(n_classes=2, n_experiences=1, per_class=256, dim=4)
  model = jaxcl.models.MLP(2, hidden_size=1024, hidden_layers=2,
                           drop_rate=0.0)
  outputs, running, alive, puts = [], [], [], []
  bind = streaming.StreamingTrainer.bind
  put_batches = streaming.StreamingTrainer._put_batches

  def unfinished(dispatched):
    return sum(not jax.tree.leaves(m)[0].is_ready() for m in dispatched)

  def counting_bind(self, executables):
    begin, orders, chunk, end = executables

    def counted(*args):
      out = chunk(*args)
      outputs.append(out[1])
      running.append(unfinished(outputs))
      return out
    return bind(self, (begin, orders, counted, end))

  def counting_put(self, *args):
    # In the reader thread, as a chunk starts: the chunks read but not yet
    # dispatched (this one included) and the dispatched ones still running.
    puts.append(None)
    dispatched = outputs[:len(outputs)]
    alive.append(len(puts) - len(dispatched) + unfinished(dispatched))
    return put_batches(self, *args)

  monkeypatch.setattr(streaming.StreamingTrainer, "bind", counting_bind)
  monkeypatch.setattr(streaming.StreamingTrainer, "_put_batches", counting_put)
  jaxcl.fit(model, naive(), optax.sgd(0.01), bench, epochs=2, batch_size=16,
            device_memory_budget_mb=0.01, metrics=["accuracy"])
  assert len(running) > 10 and max(running) <= streaming._DISPATCHED
  # The budget's count: two queued, one being read, two dispatched.
  assert max(alive) <= streaming._CHUNKS_ALIVE == 5
  assert max(alive) >= 3  # The reader does run ahead of the devices.


def test_icarl_weighs_exemplars_by_the_whole_streamed_experience():
  bench = make_benchmark(n_classes=4, n_experiences=2, per_class=40)
  sample = streaming.sample_nbytes(bench.train_stream[0])
  result = _fit(bench, jaxcl.strategies.icarl(memory_size=8),
                budget_mb=24 * sample / 2**20, epochs=1, batch_size=4)
  # The hooks saw a subset of 12 samples; the exemplars' share of each batch
  # counts the experience's 80.
  assert len(bench.train_stream[1]) == 80
  assert float(result.state.cl_state.n_current) == 80.0


def test_streamed_cwr_star_counts_classes_on_the_whole_experience():
  # New instances: every class comes back in every experience, so CWR*'s
  # consolidation weights √(past / current) depend on the exact counts;
  # the hooks see a 20-row subset of each 80-sample experience.
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(4), [90, 30, 60, 60])
  x = (rng.normal(0, 3, (4, 6))[y]
       + rng.normal(0, 0.5, (len(y), 6))).astype(np.float32)
  bench = jaxcl.benchmarks.new_instances((x, y), (x, y), 3, seed=0)
  budget = 40 * streaming.sample_nbytes(bench.train_stream[0]) / 2**20
  on_device, streamed = (
      _fit(bench, jaxcl.strategies.cwr_star(), budget_mb=b, epochs=1,
           batch_size=4) for b in (None, budget))
  np.testing.assert_array_equal(streamed.state.cl_state["past_counts"],
                                [90, 30, 60, 60])
  _assert_same(streamed, on_device)


def test_streaming_refuses_periodic_evaluation_before_compiling():
  bench = jaxcl.benchmarks.with_validation(make_benchmark(), 0.25)
  with pytest.raises(ValueError, match="streamed.*periodic"):
    _fit(bench, naive(), budget_mb=1e-4,
         periodic_eval=jaxcl.PeriodicEval(every=1))
  with pytest.raises(ValueError, match="device_memory_budget_mb"):
    _fit(bench, naive(), budget_mb=-1.0)


@pytest.mark.parametrize("platform,stats,expected", [
    ("gpu", {"bytes_limit": 80 * 2**30}, 20 * 2**30),
    ("gpu", None, 2**30),  # No limit reported: not the host's RAM.
    ("cpu", None,
     os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4),
])
def test_default_budget_is_a_quarter_of_the_devices_memory(
    monkeypatch, platform, stats, expected):
  device = types.SimpleNamespace(platform=platform, memory_stats=lambda: stats)
  monkeypatch.setattr(jax, "local_devices", lambda: [device])
  assert streaming.default_budget_bytes() == expected


def _counting_rows():
  """A strategy counting, per position, the weight its rows trained with."""
  def init(ctx, params, key):
    return jax.numpy.zeros(ctx.experience_size)

  def after_step(ctx, old_state, new_state, grads, batch, key):
    return new_state.cl_state.at[batch["index"]].add(batch["weight"])

  return jaxcl.strategies.Strategy(name="count", init=init,
                                   after_step=after_step)


@pytest.mark.parametrize("budget_rows", [None, 24])
def test_batches_carry_each_rows_position_in_the_experience(budget_rows):
  # Experiences of 10 and 7 samples: an epoch visits each real position of
  # an experience once, padding positions never. Two epochs of each: 4
  # visits of the first 7 positions, 2 of the last 3.
  bench = make_benchmark(n_classes=2, n_experiences=2, sizes=[10, 7])
  sample = streaming.sample_nbytes(bench.train_stream[0])
  budget = None if budget_rows is None else budget_rows * sample / 2**20
  both = _fit(bench, _counting_rows(), budget_mb=budget, epochs=2,
              batch_size=3)
  np.testing.assert_array_equal(both.state.cl_state, [4] * 7 + [2] * 3)
