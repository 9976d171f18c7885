"""Checkpoints of whole runs with orbax: resume a run exactly where it stopped.

A checkpoint is one orbax step directory per evaluated experience holding two
items: ``arrays`` (for ``fit``, the :class:`~jaxcl.training.TrainState`,
written by orbax's ``StandardCheckpointHandler`` as tensorstore files; PRNG
keys as their raw key data) and ``meta`` (one JSON file: the run's
configuration fingerprint, SHA-256 checksums of the arrays and of the JSON
itself, and, for ``fit``, the accuracy matrix, histories and timings recorded
so far). Nothing is pickled: loading parses JSON and reads raw arrays, it
never executes code from the checkpoint.

orbax writes each step into a temporary directory and renames it when
complete, so a process killed during a save leaves the previous checkpoint
usable. On restore, a checkpoint whose files are unreadable or fail their
checksums is set aside (renamed ``<step>.unusable``) and the previous
one is used; a checkpoint written by a different configuration is refused
with an error listing the differences.

Example:
  >>> import jax.numpy as jnp
  >>> ckpt = Checkpointer("/tmp/jaxcl_doc_ckpt", config={"epochs": 1})
  >>> ckpt.save(1, {"w": jnp.ones(3)}, {"completed": 1})  # doctest: +SKIP
  >>> restored = ckpt.restore({"w": jnp.zeros(3)})  # doctest: +SKIP
  >>> restored.step, restored.meta  # doctest: +SKIP
  (1, {'completed': 1})
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pathlib
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Self

import jax
import jaxlib
import numpy as np

from jaxcl import _hosts, _validation

if TYPE_CHECKING:
  import orbax.checkpoint as ocp

__all__ = ["CheckpointError", "Checkpointer", "Restored", "check_directory",
           "place", "run_config"]

PyTree = Any

# Version of the layout of ``meta``; bumped when it changes incompatibly.
FORMAT = 2


class CheckpointError(ValueError):
  """A checkpoint that cannot be used: unreadable, corrupt or another run's."""


class Restored(NamedTuple):
  """A checkpoint read back.

  Attributes:
    step: The step it was saved at (``fit``: experiences completed).
    arrays: The saved arrays as host numpy arrays, PRNG keys as raw key data
      (:func:`place` turns them back into device arrays and typed keys).
    meta: The JSON-able values given to :meth:`Checkpointer.save`.
  """

  step: int
  arrays: PyTree
  meta: dict[str, Any]


def _is_key(leaf) -> bool:
  return jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)


def _raw(tree: PyTree) -> PyTree:
  """Typed PRNG keys as their uint32 key data: orbax stores plain arrays."""
  return jax.tree.map(lambda a: jax.random.key_data(a) if _is_key(a) else a,
                      tree)


def _restore_target(leaf: Any) -> jax.ShapeDtypeStruct:
  """The saved form of a leaf of ``like``: key data for typed PRNG keys,
  else its shape and its own dtype (numpy's 64-bit types included)."""
  if _is_key(leaf):
    leaf = jax.eval_shape(jax.random.key_data, leaf)
  dtype = leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf)
  return jax.ShapeDtypeStruct(np.shape(leaf), dtype)


def _as_arrays(tree: PyTree) -> PyTree:
  """Python numbers as numpy scalars (arrays and lazy views as they are)."""
  return jax.tree.map(
      lambda a: np.asarray(a) if isinstance(a, (bool, int, float)) else a,
      tree)


def place(arrays: PyTree, like: PyTree) -> PyTree:
  """Puts restored arrays on the devices, shaped and sharded like ``like``.

  Args:
    arrays: :attr:`Restored.arrays` (numpy, keys as key data).
    like: A tree of device arrays with the same structure (e.g. a freshly
      initialised state): gives each leaf's sharding and each key's PRNG
      implementation.

  Returns:
    ``arrays`` as device arrays, with typed keys where ``like`` has them.

  Example:
    >>> state = place(checkpointer.restore(init_state).arrays,
    ...               init_state)  # doctest: +SKIP
  """
  def one(raw, ref):
    raw = _hosts.put(raw, ref.sharding)
    if _is_key(ref):
      raw = jax.random.wrap_key_data(raw, impl=jax.random.key_impl(ref))
    return raw
  return jax.tree.map(one, arrays, like)


def _checksum(tree: PyTree) -> str:
  """SHA-256 of every leaf's path, dtype, shape and bytes.

  A lazy view of a tfds dataset counts by its name instead of its bytes
  (:meth:`jaxcl.benchmarks.sources.RecordArray.fingerprint`), so that
  nothing is read to hash it.
  """
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    # Duck-typed: importing the sources module here would import tfds.
    fingerprint = getattr(leaf, "fingerprint", None)
    name = fingerprint() if callable(fingerprint) else None
    if name is not None:
      digest.update(f"{jax.tree_util.keystr(path)}:{name};".encode())
      continue
    leaf = np.ascontiguousarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype.str}"
                  f"{leaf.shape};".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


def _layout(tree: PyTree) -> list[str]:
  """Every leaf's path, dtype and shape, e.g. ``"['w']: float32 (3, 2)"``."""
  return [f"{jax.tree_util.keystr(path)}: {np.dtype(leaf.dtype).name} "
          f"{tuple(leaf.shape)}"
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _json_sha256(value: Any) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _encode(value: Any) -> Any:
  """JSON-able form of ``value``; numpy arrays and scalars keep their dtype."""
  if isinstance(value, Mapping):
    return {str(k): _encode(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_encode(v) for v in value]
  if isinstance(value, np.ndarray):
    return {"__ndarray__": value.tolist(), "dtype": value.dtype.str,
            "shape": list(value.shape)}
  if isinstance(value, np.generic):
    return {"__numpy__": value.item(), "dtype": value.dtype.str}
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  raise TypeError(f"checkpoint metadata must be JSON-able (numbers, strings, "
                  f"lists, dicts, numpy arrays), got {type(value).__name__}.")


def _plain(value: Any) -> Any:
  """``value`` with numpy scalars as Python numbers: in a fingerprint,
  ``np.int64(2)`` and ``2`` are the same setting (``_encode`` would tag the
  first with its dtype)."""
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value.item() if isinstance(value, np.generic) else value


def _decode(value: Any) -> Any:
  if isinstance(value, list):
    return [_decode(v) for v in value]
  if not isinstance(value, dict):
    return value
  if "__ndarray__" in value:
    return np.array(value["__ndarray__"], value["dtype"]).reshape(
        value["shape"])
  if "__numpy__" in value:
    return np.dtype(value["dtype"]).type(value["__numpy__"])
  return {k: _decode(v) for k, v in value.items()}


# What a difference in a field that is only a hash means.
_HINTS = {
    "data_sha256": " (the benchmark's data differ)",
    "programs_sha256": " (the compiled program differs: a hyperparameter held "
                       "as a Python constant, such as the learning rate, or "
                       "the model, strategy or JAX code changed)",
}


def _differences(saved: Any, current: Any, name: str = "") -> list[str]:
  """Human-readable differences between two JSON values, by key path.

  Lists of strings (leaf descriptions) are compared element by element so
  that the first differing leaf is named.
  """
  if isinstance(saved, dict) and isinstance(current, dict):
    return [d for k in sorted(set(saved) | set(current))
            for d in (_differences(saved[k], current[k],
                                   f"{name}.{k}" if name else k)
                      if k in saved and k in current else
                      [_missing(k, saved, name)])]
  if saved == current:
    return []
  if (isinstance(saved, list) and isinstance(current, list)
      and all(isinstance(v, str) for v in saved + current)):
    i = next((i for i, (a, b) in enumerate(zip(saved, current)) if a != b),
             min(len(saved), len(current)))
    saved, current = saved[i:i + 1], current[i:i + 1]
    name = f"{name}[{i}]"
  hint = _HINTS.get(name.split(".")[0], "")
  return [(f"{name}: checkpoint has {_short(saved)}, this run has "
           f"{_short(current)}{hint}")]


def _missing(key: str, saved: dict, name: str) -> str:
  """A field that only one of the two configurations has."""
  path = f"{name}.{key}" if name else key
  if key in saved:
    return f"{path}: only the checkpoint has it (written by a newer jaxcl?)"
  return (f"{path}: the checkpoint has no such field (written by an older "
          "jaxcl, which did not record it)")


def _reason(error: Exception) -> str:
  text = " ".join(str(error).split())
  text = text if len(text) <= 300 else text[:297] + "..."
  return text if isinstance(error, CheckpointError) else (
      f"{type(error).__name__}: {text}")


def _short(value: Any, limit: int = 120) -> str:
  text = " ".join(json.dumps(value).split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _orbax():
  """``orbax.checkpoint``, imported on first use: runs without checkpoints
  (most) do not pay for its import (≈ 0.2 s)."""
  import orbax.checkpoint
  return orbax.checkpoint


def check_directory(directory: Any) -> pathlib.Path:
  """``checkpoint_dir`` as an absolute path, or an error naming what is wrong.

  Example:
    >>> check_directory("~/ckpt") == pathlib.Path.home() / "ckpt"
    True
  """
  if not isinstance(directory, (str, os.PathLike)):
    raise TypeError(f"checkpoint_dir must be a path, got {directory!r} of "
                    f"type {type(directory).__name__}.")
  if not os.fspath(directory).strip():
    # Path("") is the working directory, which would fill with step folders.
    raise ValueError(f"checkpoint_dir {directory!r} names no folder; expected "
                     "a folder path (None: no checkpoints).")
  path = pathlib.Path(directory).expanduser().absolute()
  problem = _validation.folder_problem(path)
  if problem:
    raise ValueError(f"checkpoint_dir {os.fspath(directory)!r} {problem}; "
                     "expected a folder (existing or new).")
  return path


class Checkpointer:
  """Saves and restores the checkpoints of one run in one directory.

  Args:
    directory: The run's checkpoint folder (created on the first save).
    config: JSON-able description of everything that determines the run's
      numbers (see :func:`run_config`); a checkpoint whose config differs is
      refused.
    keep: How many of the newest checkpoints to keep (older ones are
      deleted after each successful save); at least 2 keeps a fallback if
      the newest is damaged.

  Example:
    >>> with Checkpointer("/tmp/ckpt", config={"seed": 0}) as ckpt:  # doctest: +SKIP
    ...   restored = ckpt.restore(state)
    ...   ckpt.save(1, state, {"completed": 1})
  """

  def __init__(self, directory: str | os.PathLike[str], *,
               config: Mapping[str, Any], keep: int = 2):
    self._keep = _validation.check_positive_int("checkpoint_keep", keep)
    self.directory = check_directory(directory)
    # A JSON round trip, so it compares equal to what is read back.
    self.config = json.loads(json.dumps(_encode(config)))
    self._manager: ocp.CheckpointManager | None = None

  def _open(self) -> ocp.CheckpointManager:
    ocp = _orbax()
    if self._manager is None:
      self._manager = ocp.CheckpointManager(
          self.directory, item_names=("arrays", "meta"),
          options=ocp.CheckpointManagerOptions(
              preservation_policy=ocp.checkpoint_managers.LatestN(self._keep),
              # Leftovers of a save that was killed: never a checkpoint.
              cleanup_tmp_directories=True,
              enable_async_checkpointing=False))
    return self._manager

  def steps(self) -> list[int]:
    """The complete checkpoints' steps, oldest first."""
    if not self.directory.is_dir():
      return []
    return sorted(self._open().all_steps())

  def save(self, step: int, arrays: PyTree, meta: Mapping[str, Any]) -> None:
    """Writes checkpoint ``step`` atomically, then prunes old ones.

    Args:
      step: An integer >= 0, larger than every saved step.
      arrays: A pytree of arrays (device or numpy; typed PRNG keys allowed).
      meta: JSON-able values (numbers, strings, lists, dicts, numpy arrays).
    """
    step = _validation.check_non_negative_int("step", step)
    saved = self.steps()
    if saved and step <= saved[-1]:
      raise ValueError(f"checkpoint {step} was not written: checkpoint_dir "
                       f"{str(self.directory)!r} already holds checkpoint "
                       f"{saved[-1]}; expected a larger step.")
    ocp = _orbax()
    host = _as_arrays(_hosts.host_copy(_raw(arrays)))
    body = {"config": self.config, "arrays_sha256": _checksum(host),
            "layout": _layout(host), "meta": _encode(meta)}
    payload = {"format": FORMAT, "sha256": _json_sha256(body), "body": body}
    if not self._open().save(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(payload))):
      raise ValueError(f"checkpoint {step} was not written: checkpoint_dir "
                       f"{str(self.directory)!r} already holds checkpoint "
                       f"{self._open().latest_step()}; expected a larger step.")

  def restore(self, like: PyTree) -> Restored | None:
    """Reads the newest usable checkpoint, or returns None if there is none.

    A damaged newest checkpoint is renamed ``<step>.unusable`` (with a
    warning) and the previous one is used.

    Args:
      like: A pytree of arrays or ``jax.ShapeDtypeStruct`` with the saved
        structure, shapes and dtypes.

    Returns:
      The :class:`Restored` checkpoint, or None for a new run.

    Raises:
      CheckpointError: if the newest readable checkpoint comes from a different
        configuration, or no checkpoint is usable.
    """
    target = jax.tree.map(_restore_target, like)
    # On several hosts orbax reads the folder on process 0 and shares what it
    # finds (a collective), so every host must look at the same folder.
    where = (f"the views of checkpoint_dir {str(self.directory)!r} (one "
             "folder that every host must see)")
    _hosts.check_same_everywhere(where, {
        "folder": str(self.directory), "folder exists": self.directory.is_dir()},
        error=CheckpointError)
    problems, found, refusal = [], None, None
    try:
      found = self._newest_usable(target, problems)
    except Exception as e:  # Raised below, once every host has compared.
      refusal = e
    # Hosts that resumed different runs would wait on each other forever:
    # they must agree, or all stop here.
    _hosts.check_same_everywhere(where, {
        "checkpoint resumed": found and found.step,
        "checkpoints unusable": [step for step, _ in problems],
        "refusal": refusal and str(refusal)}, error=CheckpointError)
    # Past the comparison, every host raises the same error.
    if refusal is not None:
      raise _hosts.raised_on_every_host(refusal)
    if found is not None:
      self._set_aside(problems, fallback=found.step)
      return found
    if problems:
      raise _hosts.raised_on_every_host(CheckpointError(
          f"no usable checkpoint in checkpoint_dir {str(self.directory)!r}: "
          + "; ".join(f"checkpoint {s}: {p}" for s, p in problems) + ". "
          "Delete the folder (or pass another checkpoint_dir) to start the "
          "run over."))
    return None

  def _newest_usable(self, target: PyTree,
                     problems: list[tuple[int, str]]) -> Restored | None:
    """The newest readable step of this configuration; damaged ones go to
    ``problems``."""
    for step in reversed(self.steps()):
      try:
        body = self._read_meta(step)
      except Exception as e:  # Any failure to read means the step is damaged.
        problems.append((step, _reason(e)))
        continue
      self._check_config(step, body["config"])
      self._check_layout(step, body.get("layout"), target)
      try:
        arrays = self._read_arrays(step, target, body["arrays_sha256"])
      except Exception as e:  # As above.
        problems.append((step, _reason(e)))
        continue
      return Restored(step, arrays, _decode(body["meta"]))
    return None

  def _read_meta(self, step: int) -> dict[str, Any]:
    """The checked ``body`` of a step's JSON: config, arrays' hash, meta."""
    ocp = _orbax()
    payload = self._open().restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]
    if not isinstance(payload, dict) or "format" not in payload:
      raise CheckpointError(f"its metadata is not a jaxcl checkpoint of "
                            f"format {FORMAT}")
    if payload["format"] != FORMAT:
      raise CheckpointError(
          f"its metadata is of format {payload['format']!r}, written by "
          f"another jaxcl version; this one reads format {FORMAT}")
    if _json_sha256(payload.get("body")) != payload.get("sha256"):
      raise CheckpointError("its metadata does not match its checksum")
    return payload["body"]

  def _read_arrays(self, step: int, target: PyTree, checksum: str) -> PyTree:
    ocp = _orbax()
    arrays = self._open().restore(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardRestore(target)))["arrays"]
    if jax.tree.structure(arrays) != jax.tree.structure(target):
      raise CheckpointError("its arrays have another structure")
    if _checksum(arrays) != checksum:
      raise CheckpointError("its arrays do not match their checksum")
    return arrays

  def _check_config(self, step: int, config: Any) -> None:
    differences = _differences(config, self.config)
    # The hashes matter only when no readable field explains the difference.
    readable = [d for d in differences if d.split(":")[0].split(".")[0]
                not in _HINTS]
    differences = readable or differences
    if differences:
      raise CheckpointError(
          f"checkpoint {step} in checkpoint_dir {str(self.directory)!r} was "
          "written by a different configuration, so resuming would not "
          "reproduce the run: " + "; ".join(differences) + ". Pass another "
          "checkpoint_dir, or delete this one to start over.")

  def _check_layout(self, step: int, saved: list[str] | None,
                    target: PyTree) -> None:
    """Refuses a ``like`` whose leaves differ in dtype or shape from the
    saved ones (orbax would return the saved shapes, or cast the dtypes and
    fail the checksum as if the files were damaged). Checkpoints written
    before session 13 record no layout."""
    if saved is None:
      return
    expected = _layout(target)
    differences = [f"{s} saved, {e} expected" for s, e in zip(saved, expected)
                   if s != e]
    if len(saved) != len(expected):
      differences.insert(0, f"{len(saved)} arrays saved, {len(expected)} "
                         "expected")
    if differences:
      raise CheckpointError(
          f"checkpoint {step} in checkpoint_dir {str(self.directory)!r} holds "
          "arrays of other dtypes or shapes than `like`: "
          + "; ".join(differences[:5]) + ". Pass a `like` of the saved run's "
          "state, or another checkpoint_dir.")

  def _set_aside(self, problems: Sequence[tuple[int, str]],
                 fallback: int) -> None:
    """Renames damaged steps so that the resumed run can write them again."""
    if not problems:
      return
    # One host renames; the others wait for it (comparing its outcome)
    # before rereading the folder.
    failure = None
    if jax.process_index() == 0:
      try:
        for step, _ in problems:
          names = (f"{step}.unusable" + (f".{i}" if i else "")
                   for i in itertools.count())
          self.directory.joinpath(str(step)).rename(next(
              self.directory / n for n in names
              if not (self.directory / n).exists()))
      except OSError as e:
        failure = e
    try:
      _hosts.check_same_everywhere(
          f"setting unusable checkpoints aside in {str(self.directory)!r}",
          {"renamed": failure is None}, error=CheckpointError)
    except CheckpointError as e:
      raise e from failure
    if failure is not None:
      raise failure
    self._open().reload()
    warnings.warn(
        f"Resuming from checkpoint {fallback} in {str(self.directory)!r}: "
        + "; ".join(f"checkpoint {s} is unusable ({p})" for s, p in problems)
        + "; renamed to '<step>.unusable'.", RuntimeWarning, stacklevel=3)

  def close(self) -> None:
    """Waits for pending writes and releases orbax's resources."""
    if self._manager is not None:
      self._manager.close()
      self._manager = None

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _describe(tree: PyTree) -> list[str]:
  """One ``path: dtype[shape]`` line per leaf."""
  return [f"{jax.tree_util.keystr(path)}: {leaf.dtype}{list(leaf.shape)}"
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _model_text(model) -> str:
  """The model's repr on one line, without memory addresses.

  Addresses (in the reprs of functions) differ between processes.
  """
  text = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(model))
  text = " ".join(text.replace("# attributes", "").split())
  return text.replace("( ", "(").replace(" )", ")")


def _programs_sha256(programs: Sequence[jax.stages.Lowered]) -> dict[str, Any]:
  """Hashes of ``[init, *train, evaluate]``: one train program, or a list."""
  digests = [hashlib.sha256(p.as_text().encode()).hexdigest() for p in programs]
  train = digests[1:-1]
  return {"init": digests[0], "train": train[0] if len(train) == 1 else train,
          "evaluate": digests[-1]}


def run_config(*, benchmark, train_stream, model, strategy_name: str,
               seeds: Sequence[int], labels: Sequence[Any], state: PyTree,
               programs: Sequence[jax.stages.Lowered],
               settings: Mapping[str, Any]) -> dict[str, Any]:
  """What determines a ``fit`` run's numbers, as a JSON-able fingerprint.

  Readable fields (benchmark, model, strategy, seeds, settings, the state's
  leaf shapes) say what differs; hashes of the data and of the lowered
  programs (which hold every hyperparameter that is a Python constant, such
  as a learning rate) catch the rest.

  Args:
    benchmark: The :class:`jaxcl.benchmarks.Benchmark`.
    train_stream: The train stream as trained on (after ``adapt_data``).
    model: The model given to ``fit``.
    strategy_name: The strategy's name.
    seeds: One seed per run.
    labels: What distinguishes the runs (seeds or swept values).
    state: The (abstract) initial state.
    programs: The lowered init, train and evaluation programs.
    settings: Other arguments of ``fit`` that change numbers.

  Returns:
    A dict of JSON values.

  Example:
    >>> config = run_config(benchmark=bench, train_stream=bench.train_stream,
    ...                     model=model, strategy_name="naive", seeds=[0],
    ...                     labels=[], state=state, programs=lowered,
    ...                     settings={"epochs": 1})  # doctest: +SKIP
  """
  def sizes(stream):
    return [len(e) for e in stream]
  return {
      "benchmark": {
          "name": benchmark.name, "scenario": benchmark.scenario,
          "n_classes": benchmark.n_classes, "n_tasks": benchmark.n_tasks,
          "class_order": list(benchmark.class_order),
          "input_shape": list(benchmark.input_shape),
          "train_sizes": sizes(train_stream),
          "test_sizes": sizes(benchmark.test_stream),
          "valid_sizes": sizes(benchmark.valid_stream or []),
      },
      # The validation stream too: periodic evaluation and early stopping
      # read it.
      "data_sha256": _checksum([(e.x, e.y, e.task) for stream in
                                (train_stream, benchmark.test_stream,
                                 benchmark.valid_stream or [])
                                for e in stream]),
      "model": _model_text(model),
      "strategy": strategy_name,
      "seeds": [int(s) for s in seeds],
      "labels": _plain(list(labels)),
      **_plain(dict(settings)),
      "state": _describe(state),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      # XLA's options change the compiled code, not the lowered programs.
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "programs_sha256": _programs_sha256(programs),
  }
