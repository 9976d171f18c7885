"""Streaming: train on experiences larger than a device-memory budget.

The on-device path uploads a whole experience and runs all its epochs in one
compiled call. When the largest experience of a stream does not fit the
budget, ``fit`` streams instead: the same pieces of the experience
(:func:`jaxcl.training.loop.make_experience_parts`) run as four compiled
programs — ``begin``, the epochs' sample ``orders`` (drawn on the device from
the same keys), a ``chunk`` of steps (a ``lax.scan`` over batches the host
prepared) and ``end`` — while a background thread gathers the next chunks'
samples from the host data (numpy arrays, memory maps, or
:class:`jaxcl.benchmarks.sources.RecordArray` views of a tfds data source)
and puts them on the device. Batches, keys and steps are those of the
on-device path, so a seed gives the same numbers.

The strategy's ``begin_experience``/``end_experience`` hooks see a random
subset of the experience that fits the budget (``hook_rows`` samples):
importance passes (EWC, MAS) and buffer insertion (replay) use that subset.
Its inputs are read only if the compiled ``begin`` or ``end`` uses them.

Example:
  >>> result = jaxcl.fit(model, strategy, optax.sgd(0.1), bench,
  ...                    device_memory_budget_mb=256)  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcl import _hosts
from jaxcl.benchmarks.scenario import Experience
from jaxcl.training import _runs, loop
from jaxcl.training.state import (TrainState, class_counts,
                                  experience_data)

__all__ = ["StreamingTrainer", "default_budget_bytes", "sample_nbytes"]

# Chunks gathered ahead of the one training.
_PREFETCH = 2
# Chunks dispatched and possibly still running (dispatch is asynchronous):
# the next waits for the oldest.
_DISPATCHED = 2
# Chunks whose batches can be on the devices at once: the queue's, the one
# the reader is putting while the queue is full, and the dispatched ones.
_CHUNKS_ALIVE = _PREFETCH + 1 + _DISPATCHED


# A streamed chunk's rows also carry their position in the experience.
_INDEX_NBYTES = 4


def sample_nbytes(experience: Experience) -> int:
  """Device bytes of one sample: its input, label, task label and weight
  (a streamed chunk's rows carry an int32 position besides)."""
  x = experience.x
  return int(np.prod(x.shape[1:], dtype=np.int64)) * np.dtype(x.dtype).itemsize + 12


# The budget on an accelerator that reports no memory limit (a GPU with
# XLA_PYTHON_CLIENT_ALLOCATOR=platform, some plugins): its memory is not the
# host's, so the host's RAM says nothing about it.
_UNKNOWN_DEVICE_BUDGET = 2**30


def default_budget_bytes() -> int:
  """A quarter of the first device's memory limit, or of the host's RAM (CPU).

  An accelerator that reports no limit gets 1 GiB.
  """
  device = jax.local_devices()[0]
  stats = device.memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"]) // 4
  if device.platform != "cpu":
    return _UNKNOWN_DEVICE_BUDGET
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


class StreamingTrainer:
  """Trains experiences chunk by chunk from host data (see the module doc).

  Args:
    ctx: The strategy context (its ``experience_size`` is the padded size).
    parts: The experience's pieces, built with ``skip_empty_steps=True`` so
      that the padding steps of a last chunk change nothing (and, for
      ``batched`` runs, with ``run_axis="runs"``, the axis name the chunk
      program's ``vmap`` gets, so that a step no run needs is skipped).
    epochs: Passes over each experience.
    budget_bytes: Device bytes the experience data may take.
    sample_bytes: Bytes of one sample (:func:`sample_nbytes`).
    batched: The state has a leading run axis (vmapped runs).
    runs: The number of vmapped runs (1 without): each chunk holds every
      run's batches, since each run has its own sample order.
    n_classes: Classes of the benchmark.
    seed: Seed of the hooks' random subset.
    place: Shardings of the state and the data (``fit``'s placement).
  """

  def __init__(self, ctx, parts: loop.ExperienceParts, *, epochs: int,
               budget_bytes: int, sample_bytes: int, batched: bool,
               n_classes: int, seed: int, place: Any, runs: int = 1):
    self.parts, self.epochs, self.batched = parts, epochs, batched
    self.n_classes, self.seed, self.place = n_classes, seed, place
    self.batch_size = ctx.batch_size
    budget_rows = max(budget_bytes // sample_bytes, 1)
    self.hook_rows = int(min(ctx.experience_size, max(budget_rows // 2, 1)))
    steps = parts.steps_per_epoch
    # The chunks alive at once share the other half.
    per_chunk = budget_bytes // (2 * _CHUNKS_ALIVE * self.batch_size * runs
                                 * (sample_bytes + _INDEX_NBYTES))
    self.chunk_steps = int(min(steps, max(per_chunk, 1)))
    self.chunks_per_epoch = math.ceil(steps / self.chunk_steps)
    self.executables: tuple[Callable, ...] = ()
    self.chunk_jaxpr = None  # Set by `lower` (for the FLOP count of a step).
    # Set by `lower`: whether begin/end read the subset's inputs (EWC's
    # importance, buffer insertion) or only its labels, or nothing (naive).
    self.hooks_read_inputs = True
    self.batches_sharding = _batches_sharding(place, batched)

  def _functions(self):
    parts, chunk_steps = self.parts, self.chunk_steps

    def orders(epochs_key, size):
      keys = jax.random.split(epochs_key, self.epochs)
      return jax.vmap(parts.epoch_order, in_axes=(0, None))(keys, size)

    def chunk(state, batches, steps_key, first_step, first_bad, trained):
      def body(carry, inputs):
        batch, i = inputs
        batch = loop._shard(batch, parts_sharding)
        return parts.step(carry, batch, jax.random.fold_in(steps_key, i), None)
      carry = (state, loop.TrainMetrics.empty(), first_bad, trained, None)
      (state, metrics, first_bad, trained, _), (_, steps) = jax.lax.scan(
          body, carry, (batches, first_step + jnp.arange(chunk_steps)))
      return state, (metrics, steps), first_bad, trained

    parts_sharding = self.place.batch
    functions = (parts.begin, orders, chunk, parts.end)
    if not self.batched:
      return functions
    return (jax.vmap(parts.begin, in_axes=(0, None)),
            jax.vmap(orders, in_axes=(0, None)),
            jax.vmap(chunk, in_axes=(0, 0, 0, None, 0, 0),
                     axis_name=_runs.RUN_AXIS),
            jax.vmap(parts.end, in_axes=(0, None, 0)))

  def lower(self, state_shape: Any, experience: Experience) -> list[Any]:
    """Lowers the four programs for ``state_shape`` (compile them once)."""
    begin, orders, chunk, end = self._functions()
    hooks = self._hook_data(experience, np.zeros(0, np.int64))
    s = self.place.state
    _, epochs_key, end_key = jax.eval_shape(begin, state_shape, hooks)
    size = jax.ShapeDtypeStruct((), jnp.int32)
    _, _, steps_keys = jax.eval_shape(orders, epochs_key, size)
    runs = (state_shape.step.shape[0],) if self.batched else ()
    shape = runs + (self.chunk_steps, self.batch_size)
    batches = {
        "x": jax.ShapeDtypeStruct(shape + tuple(experience.x.shape[1:]),
                                  np.dtype(experience.x.dtype)),
        "y": jax.ShapeDtypeStruct(shape, jnp.int32),
        "task": jax.ShapeDtypeStruct(shape, jnp.int32),
        "weight": jax.ShapeDtypeStruct(shape, jnp.float32),
        "index": jax.ShapeDtypeStruct(shape, jnp.int32)}
    counter = jax.ShapeDtypeStruct(runs, jnp.int32)
    steps_key = jax.ShapeDtypeStruct(runs, steps_keys.dtype)
    chunk_traced = jax.jit(
        chunk, donate_argnums=0,
        in_shardings=(s, self.batches_sharding, s, self.place.data, s, s),
        out_shardings=s).trace(
            state_shape, batches, steps_key,
            jax.ShapeDtypeStruct((), jnp.int32), counter, counter)
    self.chunk_jaxpr = chunk_traced.jaxpr
    begin_traced = jax.jit(
        begin, donate_argnums=0, in_shardings=(s, self.place.data),
        out_shardings=s).trace(state_shape, hooks)
    end_traced = jax.jit(
        end, donate_argnums=0, in_shardings=(s, self.place.data, s),
        out_shardings=s).trace(state_shape, hooks, end_key)
    self.hooks_read_inputs = (
        _reads(begin_traced.jaxpr, (state_shape, hooks), hooks.x) or
        _reads(end_traced.jaxpr, (state_shape, hooks, end_key), hooks.x))
    return [
        begin_traced.lower(),
        jax.jit(orders, in_shardings=(s, None), out_shardings=s).lower(
            epochs_key, size),
        chunk_traced.lower(),
        end_traced.lower(),
    ]

  def bind(self, executables: tuple[Callable, ...]) -> StreamingTrainer:
    """Uses the compiled ``executables`` (in :meth:`lower`'s order)."""
    self.executables = tuple(executables)
    return self

  def _hook_subset(self, experience: Experience) -> np.ndarray:
    """The hooks' samples: a seeded random subset of ``hook_rows`` indices."""
    rng = np.random.default_rng([self.seed, experience.index])
    return np.sort(rng.permutation(len(experience))[:self.hook_rows])

  def _hook_data(self, experience: Experience, keep: np.ndarray,
                 x: np.ndarray | None = None):
    """The hooks' view: samples ``keep`` of ``experience``, padded.

    ``x`` holds their inputs; None gives zeros (hooks that do not read
    inputs, and lowering, with no samples).
    """
    if x is None:
      x = np.zeros((len(keep), *experience.x.shape[1:]), experience.x.dtype)
    subset = Experience(
        x=x, y=experience.y[keep],
        task=experience.task[keep], index=experience.index,
        classes=experience.classes, origin=experience.origin,
        origin_experience=experience.origin_experience)
    # The subset's Experience keeps the whole one's classes (classes_mask);
    # the class counts too come from the whole experience.
    return experience_data(subset, self.hook_rows, self.n_classes).replace(
        class_counts=class_counts(experience, self.n_classes))

  def _chunks(self, experience: Experience, order: np.ndarray,
              valid: np.ndarray) -> Iterator[dict]:
    """Yields the device batches of every chunk, gathered in a thread."""
    steps, k = self.parts.steps_per_epoch, self.chunk_steps
    pad = self.chunks_per_epoch * k - steps
    widths = [(0, 0)] * (order.ndim - 3) + [(0, 0), (0, pad), (0, 0)]
    order, valid = np.pad(order, widths), np.pad(valid, widths)
    out: queue.Queue = queue.Queue(_PREFETCH)
    stop = threading.Event()

    def produce():
      try:
        for e in range(self.epochs):
          for c in range(self.chunks_per_epoch):
            if stop.is_set():
              return
            steps = (..., e, slice(c * k, (c + 1) * k), slice(None))
            out.put(self._put_batches(experience, order[steps], valid[steps]))
      except BaseException as error:  # Re-raised in the consumer.
        out.put(error)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
      for _ in range(self.epochs * self.chunks_per_epoch):
        item = out.get()
        if isinstance(item, BaseException):
          raise item
        yield item
    finally:
      # Left early (an error here or on another host): the reader stops
      # after its current chunk instead of waiting forever on a full queue.
      stop.set()
      while thread.is_alive():
        with contextlib.suppress(queue.Empty):
          out.get(timeout=0.05)

  def _put_batches(self, experience: Experience, idx: np.ndarray,
                   valid: np.ndarray) -> dict[str, jax.Array]:
    """The chunk's batches of sample indices ``idx``, on the devices.

    Each host reads only the samples of its devices' parts of the batches.
    Rows past the experience are the on-device path's zero padding.
    """
    inside = idx < len(experience)

    def samples(values):
      def read(index):
        rows, keep = idx[index[:idx.ndim]], inside[index[:idx.ndim]]
        # A sample repeated in the block (the order's padding repeats
        # sample 0) is read once.
        unique, where = np.unique(rows[keep], return_inverse=True)
        picked = np.asarray(values[unique])
        block = np.zeros(rows.shape + picked.shape[1:], picked.dtype)
        block[keep] = picked[where]
        return block[(Ellipsis, *index[idx.ndim:])]
      return _hosts.put_parts(idx.shape + tuple(values.shape[1:]),
                              self.batches_sharding, read)
    return {"x": samples(experience.x), "y": samples(experience.y),
            "task": samples(experience.task),
            "weight": _hosts.put(valid.astype(np.float32),
                                 self.batches_sharding),
            "index": _hosts.put(idx.astype(np.int32), self.batches_sharding)}

  def __call__(self, state: TrainState, experience: Experience,
               eval_data: Any = None) -> tuple[TrainState, dict]:
    """Trains one experience; returns what the on-device program returns."""
    del eval_data  # Periodic evaluation is refused with streaming.
    begin, orders, chunk, end = self.executables
    # Reads are agreed between hosts (a host that fails alone would leave
    # the others waiting in the next all-reduce), after the programs still
    # running: the previous experience's end, then the previous chunk.
    keep, x = self._hook_subset(experience), None
    if self.hooks_read_inputs:
      # Each host reads a share of the subset; the hosts exchange them.
      mine = keep[_hosts.share_of(len(keep))]
      x = _hosts.gather_shares(_hosts.read_together(
          "the hooks' subset", lambda: np.asarray(experience.x[mine]),
          in_flight=state), len(keep))
    hooks = _hosts.put(self._hook_data(experience, keep, x), self.place.data)
    state, epochs_key, end_key = begin(state, hooks)
    # Host values are placed explicitly: on several hosts an implicit
    # placement compares them between hosts, a collective that could run
    # beside the previous chunk's all-reduces (_hosts.put).
    scalar = lambda value: _hosts.put(np.int32(value), self.place.data)
    order, valid, steps_keys = orders(epochs_key, scalar(len(experience)))
    order, valid = _hosts.host_copy((order, valid))
    runs = (state.step.shape[0],) if self.batched else ()
    first_bad = _hosts.put(np.full(runs, -1, np.int32), self.place.state)
    trained = _hosts.put(np.zeros(runs, np.int32), self.place.state)
    epoch_metrics, metrics, minibatch = [], None, []
    chunks = self._chunks(experience, order, valid)
    dispatched: collections.deque = collections.deque()
    try:
      for n in range(self.epochs * self.chunks_per_epoch):
        if len(dispatched) == _DISPATCHED:
          # Dispatch is asynchronous: without a wait, a fast reader would
          # put more chunks on the devices than the budget counts. The wait
          # comes before the next chunk is taken, whose slot in the queue
          # the reader would fill at once.
          jax.block_until_ready(dispatched.popleft())
        batches = _hosts.read_together("a streamed chunk",
                                       functools.partial(next, chunks),
                                       in_flight=state)
        e, c = divmod(n, self.chunks_per_epoch)
        state, (chunk_metrics, steps), first_bad, trained = chunk(
            state, batches, steps_keys[..., e], scalar(c * self.chunk_steps),
            first_bad, trained)
        dispatched.append(chunk_metrics)
        metrics = chunk_metrics if c == 0 else metrics.merge(chunk_metrics)
        minibatch.append(steps)
        if c == self.chunks_per_epoch - 1:
          compute = lambda m: m.compute()
          epoch_metrics.append(jax.vmap(compute)(metrics) if self.batched
                               else compute(metrics))
    finally:
      # Stops the reader now, even if an error (kept with its traceback)
      # still refers to the generator.
      chunks.close()
    state = end(state, hooks, end_key)
    stacked = jax.tree.map(lambda *a: jnp.stack(a, axis=-1), *epoch_metrics)
    out = {**stacked, "first_nonfinite_step": first_bad,
           "steps_trained": trained}
    if minibatch[0] is not None:
      out["minibatch"] = self._epoch_steps(minibatch)
    return state, out

  def _epoch_steps(self, chunks: list[dict]) -> dict:
    """The chunks' minibatch entries as the on-device program gives them,
    ``[runs?, epochs, steps_per_epoch]`` (the last chunk's padding cut)."""
    def join(*values):
      steps = jnp.concatenate(values, axis=-1)
      steps = steps.reshape(steps.shape[:-1] + (self.epochs, -1))
      return steps[..., :self.parts.steps_per_epoch]
    return jax.tree.map(join, *chunks)


def _reads(jaxpr: Any, args: Any, leaf: Any) -> bool:
  """Whether the program ``jaxpr`` traced from ``args`` uses the argument ``leaf``.

  ``leaf`` is found in ``args`` by identity. Conservative: an input passed
  on to an inner program counts as used.
  """
  index = next(i for i, a in enumerate(jax.tree.leaves(args)) if a is leaf)
  var = jaxpr.jaxpr.invars[index]
  return var in jaxpr.jaxpr.outvars or any(
      var in eqn.invars for eqn in jaxpr.jaxpr.eqns)


def _batches_sharding(place: Any, batched: bool) -> Any:
  """Where a chunk's batches ``[runs?, steps, batch, ...]`` live.

  Split over the devices as the training step splits them (the batch axis,
  or the runs with the state), so that each host reads only the samples
  its own devices train on.
  """
  if place.batch is not None:
    leading = (None,) * (2 if batched else 1)
    return jax.sharding.NamedSharding(
        place.batch.mesh, jax.sharding.PartitionSpec(*leading, *place.batch.spec))
  return place.state if batched else place.data
