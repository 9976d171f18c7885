"""Several hosts (``jax.distributed``) running one ``fit``: reads and checks.

After ``jax.distributed.initialize`` a mesh spans the devices of every
process, and an array split over it (runs sharded over devices) has parts on
other hosts that ``jax.device_get`` cannot fetch. Every process runs the same
code, so they gather such arrays together; on one host these functions cost
nothing extra.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

__all__ = ["addressable", "check_same_everywhere", "gather_shares",
           "host_copy", "put", "put_parts", "raised_on_every_host",
           "read_together", "share_of", "stop_all_hosts_on_error"]


def _addressable_leaf(leaf: Any) -> Any:
  # A replicated array is readable from this host's copy as it is.
  if (not isinstance(leaf, jax.Array) or leaf.is_fully_addressable
      or leaf.is_fully_replicated):
    return leaf
  if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    data = multihost_utils.process_allgather(jax.random.key_data(leaf),
                                             tiled=True)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
  return multihost_utils.process_allgather(leaf, tiled=True)


def addressable(tree: Any) -> Any:
  """``tree`` with every array split over other hosts' devices gathered.

  Such an array comes back as a numpy array on this host (typed PRNG keys as
  keys on its default device); the others, replicated ones included, are
  left as they are. Every process must call it with the same tree:
  gathering is collective.
  """
  return jax.tree.map(_addressable_leaf, tree)


def host_copy(tree: Any) -> Any:
  """``jax.device_get(tree)``, gathering arrays that span other hosts.

  Example:
    >>> host_copy({"w": jax.numpy.ones(2)})
    {'w': array([1., 1.], dtype=float32)}
  """
  return jax.device_get(addressable(tree))


def put(tree: Any, sharding: Any) -> Any:
  """``jax.device_put(tree, sharding)`` of host data every process holds alike.

  On several hosts ``jax.device_put`` first checks that every process passes
  equal data, a collective; it must not run beside the training programs'
  own collectives (the streaming trainer puts batches from a thread).
  ``fit`` compares the data's hash once instead, so each host here places
  its devices' parts without communicating.
  """
  if sharding is None or sharding.is_fully_addressable:
    return jax.device_put(tree, sharding)

  def one(leaf):
    leaf = np.asarray(leaf)
    return jax.make_array_from_callback(leaf.shape, sharding,
                                        lambda index: leaf[index])
  return jax.tree.map(one, tree)


def put_parts(shape: tuple[int, ...], sharding: Any,
              read: Callable[[tuple[slice, ...]], np.ndarray]) -> jax.Array:
  """An array of ``shape`` whose parts this host reads, for its devices only.

  ``read(index)`` returns the block ``array[index]`` (a tuple of slices, one
  per axis); it is called once per distinct block held by this host's
  devices, so a host reads only its share of data split over several hosts.
  A ``sharding`` of None means the default device, as in ``jax.device_put``.

  Example:
    >>> rows = np.arange(6.0)
    >>> put_parts((6,), jax.sharding.SingleDeviceSharding(jax.devices()[0]),
    ...           lambda index: rows[index]).tolist()
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
  """
  if sharding is None:  # The default device.
    return jax.device_put(read((slice(None),) * len(shape)))
  blocks: dict[str, np.ndarray] = {}

  def block(index):
    # Replicas of a block (devices of a mesh axis that does not split it)
    # share one read.
    key = repr(index)
    if key not in blocks:
      blocks[key] = read(index)
    return blocks[key]
  return jax.make_array_from_callback(shape, sharding, block)


_T = TypeVar("_T")
_E = TypeVar("_E", bound=BaseException)
# Set on an exception that read_together raised on every host at once.
_RAISED_EVERYWHERE = "_jaxcl_raised_on_every_host"


def read_together(what: str, read: Callable[[], _T], in_flight: Any = None) -> _T:
  """``read()`` on every host; if it fails on any of them, all of them raise.

  A host whose read fails (a damaged record, an I/O error) cannot simply
  raise: the other hosts would wait for it in their next collective until
  JAX's coordination service aborts them, minutes later. So the hosts tell
  each other whether they read their data, and all raise together: a host
  that failed its own error, the others a ``ValueError`` naming the failed
  processes. A collective on several hosts (every process must call it);
  on one host just ``read()``. An error that a nested ``read_together``
  already raised on every host (or one raised from it) passes through
  without another exchange.

  Args:
    what: What is read, for the message, e.g. ``"a streamed chunk"``.
    read: Reads this host's data and returns it.
    in_flight: Outputs of programs that may still be running, waited for
      first: the exchange is a small program with a collective, which must
      not run beside theirs (it could pair with their collectives in another
      order on each host).

  Returns:
    What ``read()`` returned.

  Example:
    >>> read_together("the labels", lambda: [0, 1])
    [0, 1]
  """
  if jax.process_count() == 1:
    return read()
  try:
    value, failure = read(), None
  except Exception as error:  # Re-raised after the exchange.
    if _raised_everywhere(error):
      raise  # A nested exchange already stopped every host.
    value, failure = None, error
  jax.block_until_ready(in_flight)
  mine = np.array([jax.process_index(), failure is not None], np.int32)
  # A copy: a view would keep the device buffer, and with it the backend,
  # alive in the raised error's traceback past JAX's shutdown at exit.
  everyone = np.array(multihost_utils.process_allgather(mine))
  failed = sorted(everyone[everyone[:, 1] == 1, 0].tolist())
  if failed:
    if failure is None:
      failure = ValueError(f"processes {failed} failed to read their share "
                           f"of {what} (their own errors say why).")
    raise raised_on_every_host(failure)
  return value


def raised_on_every_host(error: _E) -> _E:
  """Marks ``error`` as raised by every host at once, and returns it.

  For errors that follow from what every host sees alike (an exchange
  between them, values replicated over them): :func:`read_together` lets
  them pass without another exchange, and :func:`stop_all_hosts_on_error`
  lets each host raise its own instead of stopping the others.
  """
  setattr(error, _RAISED_EVERYWHERE, True)
  return error


def _raised_everywhere(error: BaseException | None) -> bool:
  """Whether ``error``, or one it was raised from, stopped every host.

  Only explicit causes (``raise ... from``) count: an error merely raised
  while handling an agreed one (a retry in an ``except`` block) is new.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    if getattr(error, _RAISED_EVERYWHERE, False):
      return True
    seen.add(id(error))
    error = error.__cause__
  return False


# Where failing hosts post their errors in the coordination service's
# key-value store: one key per process, shared by every use of
# stop_all_hosts_on_error, so that hosts in different blocks see each other.
_STOP_FOLDER = "jaxcl/stop/"
# Polls of the store that may fail in a row before a watcher gives up (the
# service is gone, and JAX's own error handling stops the process).
_POLL_FAILURES = 10
# Whether a stop_all_hosts_on_error block is running: blocks inside it (a
# script's around fit's own) leave the watching and posting to it.
_watching = False


@contextlib.contextmanager
def stop_all_hosts_on_error(exit_code: int = 1,
                            poll_s: float = 0.2) -> Iterator[None]:
  """Runs the block; if it raises on one host, every host stops in seconds.

  Without it, a host whose code raises outside :func:`read_together` (a
  logdir it cannot write, a failed compile, a script's own bug) leaves the
  others waiting for it in their next collective, and itself waiting for
  them in JAX's shutdown barrier at exit, until JAX's coordination service
  aborts them all five minutes later. Inside the block, a host that raises
  posts its error to the coordination service's key-value store and waits
  in that shutdown barrier; a thread on every other host, which polls the
  store, prints the error ("jaxcl: error: process 1 failed: ..."), joins the
  barrier and ends its process with ``exit_code`` (whatever it was doing,
  as its next collective could never complete). The failing host then
  raises its error as usual. ``fit`` and ``sweep`` run inside such a block
  of their own (with the default ``exit_code``); a block inside another
  one leaves the watching to the outer one. Errors that every host raised
  together
  (:func:`read_together`'s, :func:`raised_on_every_host`) and
  ``sys.exit(0)`` end every host normally. On one host (or without
  ``jax.distributed``) the block just runs.

  Put every collective of the job inside the block: a host that has left it
  no longer watches, so a collective after it would wait for a host that
  failed later (until JAX's timeout).

  Args:
    exit_code: The other hosts' exit status.
    poll_s: How often the other hosts look for a failure, in seconds.

  Example:
    >>> with stop_all_hosts_on_error():
    ...   pass  # Every host runs its part of the job here.
  """
  global _watching
  client = _coordination_client()
  # The client first: process_count() starts JAX's backend, after which
  # jax.distributed.initialize() could no longer run.
  if _watching or client is None or jax.process_count() == 1:
    yield
    return
  # Held by whichever stops the process: the host's own failure, or the
  # watcher reacting to another host's.
  stopping = threading.Lock()
  done = threading.Event()
  watcher = threading.Thread(
      target=_stop_on_failure_elsewhere, name="jaxcl-stop-watcher",
      args=(client, stopping, done, exit_code, poll_s), daemon=True)
  watcher.start()
  _watching = True
  try:
    yield
  except BaseException as error:
    if not (_raised_everywhere(error) or _exits_normally(error)):
      stopping.acquire()  # Blocks for good if the watcher is stopping us.
      _post_failure(client, error)
    raise
  finally:
    _watching = False
    done.set()
    watcher.join()


def _coordination_client() -> Any:
  """JAX's client of the coordination service, or None (no ``jax.distributed``)."""
  from jax._src import distributed  # No public accessor in jax 0.10.
  return getattr(distributed.global_state, "client", None)


def _exits_normally(error: BaseException) -> bool:
  return isinstance(error, SystemExit) and error.code in (None, 0)


def _post_failure(client: Any, error: BaseException) -> None:
  """Tells the other hosts why this one stops, then shuts ``jax.distributed``."""
  me = jax.process_index()
  try:
    message = f"{type(error).__name__}: {error}"[:2000]
  except Exception:  # An exception whose str() fails.
    message = type(error).__name__
  try:
    # Said before the barrier, in case a host that left its block never
    # joins it and JAX aborts this process before the error is raised.
    print(f"jaxcl: process {me} stops every host: {message}",
          file=sys.stderr, flush=True)
    client.key_value_set(f"{_STOP_FOLDER}{me}", message)
    # Returns once every host is in the barrier: the others have read the
    # message, and nobody is left waiting for this host at exit.
    jax.distributed.shutdown()
  except Exception:  # The service is gone; JAX's own error handling stops us.
    pass


def _stop_on_failure_elsewhere(client: Any, stopping: threading.Lock,
                               done: threading.Event, exit_code: int,
                               poll_s: float) -> None:
  """Polls for another host's failure; on one, ends this process."""
  me = str(jax.process_index())
  failed_polls = 0
  while not done.wait(poll_s):
    try:
      posted, failed_polls = client.key_value_dir_get(_STOP_FOLDER), 0
    except Exception:  # A passing network error, or the service is gone.
      failed_polls += 1
      if failed_polls == _POLL_FAILURES:
        return
      continue
    failures = sorted((key.rsplit("/", 1)[-1], message)
                      for key, message in posted
                      if key.rsplit("/", 1)[-1] != me)
    if not failures or not stopping.acquire(blocking=False):
      continue  # Nothing posted, or this host is posting its own failure.
    try:
      for process, message in failures:
        print(f"jaxcl: error: process {process} failed: {message}; process "
              f"{me} stops too.", file=sys.stderr, flush=True)
      jax.distributed.shutdown()
    finally:
      with contextlib.suppress(Exception):
        sys.stdout.flush()
      os._exit(exit_code)


def share_of(n: int) -> slice:
  """This host's contiguous share of ``n`` items (shares of equal length).

  Example:
    >>> share_of(10)  # On one host: everything.
    slice(0, 10, None)
  """
  size = -(-n // jax.process_count())
  start = min(jax.process_index() * size, n)
  return slice(start, min(start + size, n))


def gather_shares(share: np.ndarray, n: int) -> np.ndarray:
  """The ``n`` items whose :func:`share_of` every host holds, on every host.

  A collective on several hosts (every process calls it, with nothing in
  flight, see :func:`read_together`); on one host ``share`` itself.

  Args:
    share: This host's share (rows ``share_of(n)`` of the whole).
    n: The number of rows of the whole.

  Example:
    >>> gather_shares(np.arange(3), 3).tolist()
    [0, 1, 2]
  """
  hosts = jax.process_count()
  if hosts == 1:
    return share
  size = -(-n // hosts)
  padded = np.zeros((size, *share.shape[1:]), share.dtype)
  padded[:len(share)] = share
  index, everyone = multihost_utils.process_allgather(
      (np.int32(jax.process_index()), padded))
  # Rows follow the devices' order; the shares follow the process index.
  return np.concatenate(np.asarray(everyone)[np.argsort(index)])[:n]


# Digests compared per field; a fixed number of rows, so that hosts running
# different code still take part in the same collective (and are told).
_FIELDS = 64


def _digest(value: Any) -> np.ndarray:
  text = json.dumps(value, sort_keys=True, default=repr)
  return np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)


def check_same_everywhere(what: str, fields: Mapping[str, Any],
                          error: type[Exception] = ValueError) -> None:
  """Raises ``error`` naming the ``fields`` whose values differ between hosts.

  A collective on several hosts (every process must call it); nothing on one.

  Args:
    what: What the fields describe, for the message.
    fields: JSON-able values (others are compared by ``repr``).
    error: The exception class to raise.
  """
  if jax.process_count() == 1:
    return
  names = list(fields)[:_FIELDS - 1]
  mine = np.zeros((_FIELDS, 32), np.uint8)
  mine[0] = _digest(names)
  for i, name in enumerate(names, 1):
    mine[i] = _digest(fields[name])
  everyone = multihost_utils.process_allgather(mine)
  if (everyone[:, 0] != everyone[0, 0]).any():
    raise raised_on_every_host(error(
        f"{what}: the processes compare different fields, so they run "
        "different jaxcl versions; expected the same everywhere."))
  differ = [name for i, name in enumerate(names, 1)
            if (everyone[:, i] != everyone[0, i]).any()]
  if differ:
    raise raised_on_every_host(error(
        f"{what} differ between the {jax.process_count()} processes in: "
        f"{', '.join(differ)}; expected the same on every host "
        "(docs/scale.md, many hosts)."))
