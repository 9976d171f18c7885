"""TensorBoard event files written in-process, without TensorFlow.

`EventFileWriter` writes the events that clu's `SummaryWriter` (that is,
TensorFlow's `tf.summary`) writes: the same tags, steps, tensors (dtype,
shape, encoding) and plugin metadata, so TensorBoard and other readers see
the same data. It builds them with the protos and plugin helpers of the
`tensorboard` package, which works without TensorFlow, and encodes PNG
(images) and WAV (audio) itself with `zlib` and `struct`. A run thus pays
neither TensorFlow's import (seconds of CPU) nor a child process.
`tests/test_event_file.py` writes the same calls with both writers and
compares the events.

Only local paths are supported: remote file systems (`gs://...`) go through
TensorFlow's file system layer, see `tensorboard_writer`.
"""

import io
import itertools
import os
import pathlib
import socket
import struct
import time
import warnings
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from tensorboard.compat.proto import (event_pb2, summary_pb2, tensor_pb2,
                                      tensor_shape_pb2, types_pb2)
from tensorboard.compat.tensorflow_stub import dtypes
from tensorboard.plugins.audio import metadata as audio_metadata
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.histogram.summary_v2 import DEFAULT_BUCKET_COUNT
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer.record_writer import RecordWriter

from jaxcl.loggers.base import MetricWriter, check_step, is_remote_path

__all__ = ["EventFileWriter", "is_remote_path"]

# The plugin metadata `tf.summary.scalar`, `.image`, ... attach to each value.
_SCALAR = scalar_metadata.create_summary_metadata(display_name=None, description=None)
_IMAGE = image_metadata.create_summary_metadata(display_name=None, description=None)
_TEXT = text_metadata.create_summary_metadata(display_name=None, description=None)
_HISTOGRAM = histogram_metadata.create_summary_metadata(display_name=None, description=None)
_AUDIO = audio_metadata.create_summary_metadata(
    display_name=None, description=None, encoding=audio_metadata.Encoding.Value("WAV")
)
# PNG colour type per channel count: grey, grey + alpha, RGB, RGBA.
_PNG_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}
# Tells apart the event files of several writers created in the same second.
_FILE_COUNTER = itertools.count()


def _is_float(dtype: np.dtype) -> bool:
    """Whether `dtype` is a floating-point type (bfloat16 included)."""
    return dtype.kind not in "biu" and np.can_cast(dtype, np.float64)


def _tensor(array: np.ndarray) -> tensor_pb2.TensorProto:
    """`array` as TensorFlow's summary writer stores it.

    Numbers go as little-endian bytes in `tensor_content`; strings (and
    object arrays of `str` or `bytes`) go in `string_val`, `str` as UTF-8.
    """
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape]
    )
    if array.dtype.kind in "OSU":
        strings = [s.encode() if isinstance(s, str) else s for s in array.flat]
        if not all(isinstance(s, bytes) for s in strings):
            raise ValueError("an object array must hold only str or bytes")
        return tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=strings
        )
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    # tensorboard's dtype table (no TensorFlow) lacks bfloat16.
    dtype = (types_pb2.DT_BFLOAT16 if array.dtype.name == "bfloat16"
             else dtypes.as_dtype(array.dtype).as_datatype_enum)
    return tensor_pb2.TensorProto(
        dtype=dtype,
        tensor_shape=shape,
        tensor_content=array.tobytes(),
    )


def _holds_strings(value: Any) -> bool:
    if isinstance(value, (str, bytes)):
        return True
    return isinstance(value, (list, tuple)) and any(map(_holds_strings, value))


def _as_array(value: Any) -> np.ndarray:
    """`np.asarray(value)`, except that Python strings and bytes (or lists
    of them) become an object array: NumPy's fixed-width string dtypes drop
    trailing NUL characters, which would change the stored bytes."""
    if _holds_strings(value):
        return np.array(value, dtype=object)
    return np.asarray(value)


def _as_converted_by_tf(value: Any) -> np.ndarray:
    """`value` as an array of the dtype `tf.convert_to_tensor` gives it.

    Arrays keep their dtype; Python floats become float32 and Python ints
    int32 where they fit, as in TensorFlow.
    """
    array = _as_array(value)
    if hasattr(value, "__array__"):
        return array
    if array.dtype == np.float64:
        return array.astype(np.float32)
    if array.dtype == np.int64 and np.array_equal(array.astype(np.int32), array):
        return array.astype(np.int32)
    return array


def _scalar(name: str, value: ArrayLike) -> np.ndarray:
    """A scalar as `tf.summary.scalar` stores it: a float32 scalar tensor."""
    array = np.asarray(value)
    if array.shape != () or not np.can_cast(array.dtype, np.float64):
        raise ValueError(f"scalars[{name!r}] must be a real number, got {value!r}.")
    return array.astype(np.float32)


def _image_batch(name: str, value: ArrayLike) -> np.ndarray:
    """Images as uint8 [N, H, W, C], converted as `tf.summary.image` does.

    Floats in [0, 1] are scaled by 255.5 in their own dtype and clipped to
    [0, 255] before truncation, NaN giving 0, as TensorFlow's saturating
    `convert_image_dtype` does.
    """
    array = np.asarray(value)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] not in _PNG_COLOR_TYPES or 0 in array.shape[1:3]:
        raise ValueError(
            f"images[{name!r}] must have shape [N, H, W, C] or [H, W, C] with "
            f"C in 1..4 and H, W > 0, got shape {array.shape}."
        )
    if array.dtype == np.uint8:
        return array
    if not _is_float(array.dtype):
        raise ValueError(
            f"images[{name!r}] must have dtype uint8, or a float dtype with "
            f"values in [0, 1], got dtype {array.dtype}."
        )
    scaled = np.asarray(array * array.dtype.type(255.5), np.float64)
    return np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(image: np.ndarray) -> bytes:
    """Encodes a uint8 image [H, W, C], C in 1..4, as an 8-bit PNG."""
    height, width, channels = image.shape
    # Each row starts with its filter type, 0 (none).
    rows = np.concatenate(
        [np.zeros((height, 1), np.uint8), image.reshape(height, width * channels)], axis=1
    )
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOR_TYPES[channels], 0, 0, 0)
    return b"".join([
        b"\x89PNG\r\n\x1a\n",
        _png_chunk(b"IHDR", header),
        _png_chunk(b"IDAT", zlib.compress(rows.tobytes())),
        _png_chunk(b"IEND", b""),
    ])


def _image_strings(name: str, value: ArrayLike) -> np.ndarray:
    """`tf.summary.image`'s string tensor: [width, height, png, ...]."""
    batch = _image_batch(name, value)
    strings = [str(batch.shape[2]).encode(), str(batch.shape[1]).encode()]
    return np.array(strings + [_png(image) for image in batch], dtype=object)


def _wav(audio: np.ndarray, sample_rate: int) -> bytes:
    """Encodes float32 audio [T, C] in [-1, 1] as 16-bit PCM, as `tf.audio.encode_wav`.

    A sample is `round(x * 32768)`, halves away from zero, clipped to the
    int16 range; NaN gives 0.
    """
    scaled = np.nan_to_num(audio.astype(np.float64) * 32768.0, nan=0.0)
    rounded = np.trunc(scaled + np.copysign(0.5, scaled))
    samples = np.clip(rounded, -32768, 32767).astype("<i2").tobytes()
    channels = audio.shape[1]
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + len(samples), b"WAVE",
        b"fmt ", 16, 1, channels, sample_rate, sample_rate * 2 * channels, 2 * channels, 16,
        b"data", len(samples),
    )
    return header + samples


def _audio_strings(name: str, value: ArrayLike, sample_rate: int) -> np.ndarray:
    """`tf.summary.audio`'s string tensor [N, 2]: (wav, "") per clip [T, C]."""
    clips = np.asarray(value)
    if clips.ndim != 3 or clips.shape[2] == 0 or not _is_float(clips.dtype):
        raise ValueError(
            f"audios[{name!r}] must be a float array of shape [N, T, C] with "
            f"C > 0 and values in [-1, 1], got shape {clips.shape} and "
            f"dtype {clips.dtype}."
        )
    wavs = [[_wav(clip, sample_rate), b""] for clip in clips.astype(np.float32)]
    return np.array(wavs, dtype=object).reshape(len(wavs), 2)


def _text(name: str, value: ArrayLike) -> np.ndarray:
    """`tf.summary.text`'s string tensor."""
    text = _as_array(value)
    if text.dtype.kind not in "SU" and not (
            text.dtype.kind == "O"
            and all(isinstance(s, (str, bytes)) for s in text.flat)):
        raise ValueError(f"texts[{name!r}] must be a string, got {value!r}.")
    return text


def _histogram(name: str, value: ArrayLike, buckets: int) -> np.ndarray:
    """`tf.summary.histogram`'s float64 [buckets, 3]: left edge, right edge, count.

    `buckets` equal buckets span [min, max]; a value on an inner edge counts
    in the bucket to its right, the maximum in the last bucket. Without data
    every row is 0; when all values are equal, every edge is that value and
    the last bucket counts them all.
    """
    array = np.asarray(value)
    if not np.can_cast(array.dtype, np.float64):
        raise ValueError(f"arrays[{name!r}] must hold real numbers, got dtype {array.dtype}.")
    data = array.astype(np.float64).reshape(-1)
    if not np.isfinite(data).all():
        raise ValueError(f"arrays[{name!r}] must be finite, but it holds NaN or infinity.")
    if data.size == 0:
        return np.zeros((buckets, 3))
    low, high = data.min(), data.max()
    if low == high:
        counts = np.zeros(buckets)
        counts[-1] = data.size
        return np.stack([np.full(buckets, high), np.full(buckets, high), counts], axis=1)
    with np.errstate(over="ignore", under="ignore"):
        width = (high - low) / buckets
    if not (np.isfinite(width) and width > 0):
        raise ValueError(
            f"arrays[{name!r}] spans [{float(low)!r}, {float(high)!r}]: its bucket width "
            f"overflows or underflows float64; expected a narrower or wider range."
        )
    index = np.floor((data - low) / width).astype(np.int64)
    counts = np.bincount(np.minimum(index, buckets - 1), minlength=buckets)
    edges = np.linspace(low, high, buckets + 1)
    return np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _flatten(hparams: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested hyperparameters as clu's `SummaryWriter` flattens them.

    Nested mappings and sequences give dotted names (`optimizer.lr`,
    `layers.0`), and None becomes "".
    """
    flat = {}
    for key, value in hparams.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) or hasattr(value, "items"):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat.update(_flatten(dict(enumerate(value)), f"{name}."))
        else:
            flat[name] = "" if value is None else value
    return flat


class EventFileWriter(MetricWriter):
    """Writes TensorBoard event files in this process, without TensorFlow.

    The events are those clu's `SummaryWriter` writes (one event per value,
    v2 tensor summaries with the plugin metadata of `tf.summary.*`), in a new
    file `events.out.tfevents.<time>.<host>.<pid>.<n>.v2` in `logdir`.
    Every call validates all its values before writing any, and hands its
    events to the operating system before returning, so TensorBoard sees
    them at once; `flush` has nothing left to do and `close` closes the
    file. Writing after `close` raises `RuntimeError`; closing again does
    nothing.

    What each method writes, as `tf.summary.*` does:

    * `write_scalars`: a float32 scalar per name ("scalars" plugin).
    * `write_images`: uint8 images, or floats in [0, 1] scaled to uint8
      (shape [N, H, W, C] or [H, W, C], C in 1..4), as a string tensor
      [width, height, png, ...] ("images" plugin).
    * `write_audios`: float clips [N, T, C] in [-1, 1] as 16-bit WAV, a string
      tensor [N, 2] of (wav, "") ("audio" plugin).
    * `write_texts`: a string tensor ("text" plugin).
    * `write_histograms`: float64 [k, 3] rows (left edge, right edge, count),
      k = `num_buckets[name]` or 30 ("histograms" plugin).
    * `write_hparams`: the HPARAMS tab's session start info, nested values
      flattened to dotted names as clu does.
    * `write_summaries`: raw tensors with the given `SummaryMetadata`.
    * `write_videos`: TensorBoard has no video summaries; it warns and
      writes nothing, as clu's `SummaryWriter` does.

    Args:
        logdir: Local directory for the event file (created if missing).

    Raises:
        ValueError: If `logdir` is remote (`gs://...`): use `tensorboard_writer`.

    Example:
        >>> import numpy as np
        >>> writer = EventFileWriter("/tmp/jaxcl_example/events")
        >>> writer.write_scalars(0, {"train/loss": 0.5})
        >>> writer.write_images(0, {"eval/stream/sample": np.zeros((8, 8, 3), np.uint8)})
        >>> writer.close()
    """

    def __init__(self, logdir: str | os.PathLike[str]):
        if is_remote_path(logdir):
            raise ValueError(
                f"EventFileWriter writes local files only, got logdir="
                f"{os.fspath(logdir)!r}; use jaxcl.loggers.tensorboard_writer "
                f"for remote file systems."
            )
        self._logdir = os.fspath(logdir)
        directory = pathlib.Path(logdir)
        directory.mkdir(parents=True, exist_ok=True)
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_FILE_COUNTER)}.v2"
        )
        # Unbuffered: `_write_events` sees every short write and can undo it.
        self._file = open(directory / name, "xb", buffering=0)
        self._write_events([
            event_pb2.Event(
                wall_time=time.time(),
                file_version="brain.Event:2",
                source_metadata=event_pb2.SourceMetadata(writer="jaxcl.loggers.EventFileWriter"),
            )
        ])

    def _write_events(self, events: list[event_pb2.Event]) -> None:
        """Appends the events' records, all of them or (on an error) none.

        Readers stop at the first damaged record, so a record cut short by a
        full disk would hide every event written after it: on an error the
        file is cut back to where this call started, then the error is raised.
        """
        if self._file.closed:
            raise RuntimeError(f"The EventFileWriter for logdir={self._logdir!r} is closed.")
        encoded = io.BytesIO()
        records = RecordWriter(encoded)
        for event in events:
            records.write(event.SerializeToString())
        data = memoryview(encoded.getvalue())
        start = self._file.tell()
        try:
            while data:
                data = data[self._file.write(data):]
        except OSError:
            self._file.truncate(start)
            self._file.seek(start)
            raise

    def _write(self, step: int, values: list[summary_pb2.Summary.Value]) -> None:
        """Writes one event per summary value, all at `step`."""
        step = check_step(step)
        self._write_events([
            event_pb2.Event(
                wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=[value])
            )
            for value in values
        ])

    def write_summaries(
        self,
        step: int,
        values: Mapping[str, ArrayLike],
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Writes raw tensors; `metadata[name]` is a `SummaryMetadata` or its bytes."""
        summaries = []
        for name, value in values.items():
            try:
                tensor = _tensor(_as_converted_by_tf(value))
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"values[{name!r}] cannot be stored as a tensor: {error}"
                ) from error
            summary = summary_pb2.Summary.Value(tag=name, tensor=tensor)
            md = None if metadata is None else metadata.get(name)
            serialized = md if md is None or isinstance(md, bytes) else md.SerializeToString()
            if serialized:  # TensorFlow leaves empty metadata out.
                summary.metadata.ParseFromString(serialized)
            summaries.append(summary)
        self._write(step, summaries)

    def _write_plugin(
        self,
        step: int,
        metadata: summary_pb2.SummaryMetadata,
        encode: Callable[[str, Any], np.ndarray],
        values: Mapping[str, Any],
    ) -> None:
        """Writes the tensor `encode(name, value)` of each value with `metadata`."""
        self._write(step, [
            summary_pb2.Summary.Value(
                tag=name, metadata=metadata, tensor=_tensor(encode(name, value))
            )
            for name, value in values.items()
        ])

    def write_scalars(self, step: int, scalars: Mapping[str, ArrayLike]) -> None:
        self._write_plugin(step, _SCALAR, _scalar, scalars)

    def write_images(self, step: int, images: Mapping[str, ArrayLike]) -> None:
        self._write_plugin(step, _IMAGE, _image_strings, images)

    def write_videos(self, step: int, videos: Mapping[str, ArrayLike]) -> None:
        """Warns and writes nothing: TensorBoard has no video summaries."""
        del step
        # A warning, as clu's SummaryWriter gives: raising would stop a
        # MultiWriter before the writers after this one.
        warnings.warn(
            f"EventFileWriter.write_videos dropped {sorted(videos)}: TensorBoard "
            f"has no video summaries. Write frames with write_images instead.",
            stacklevel=2,
        )

    def write_audios(
        self, step: int, audios: Mapping[str, ArrayLike], *, sample_rate: int
    ) -> None:
        sample_rate = _positive_int("sample_rate", sample_rate)
        self._write_plugin(
            step, _AUDIO, lambda name, value: _audio_strings(name, value, sample_rate), audios
        )

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        self._write_plugin(step, _TEXT, _text, texts)

    def write_histograms(
        self,
        step: int,
        arrays: Mapping[str, ArrayLike],
        num_buckets: Mapping[str, int] | None = None,
    ) -> None:
        def encode(name: str, value: ArrayLike) -> np.ndarray:
            buckets = (num_buckets or {}).get(name, DEFAULT_BUCKET_COUNT)
            return _histogram(name, value, _positive_int(f"num_buckets[{name!r}]", buckets))

        self._write_plugin(step, _HISTOGRAM, encode, arrays)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        """Writes the HPARAMS tab's data: bool, number and string values (None as "")."""
        summary = hparams_summary.hparams_pb(_flatten(hparams))
        self._write(0, list(summary.value))

    def flush(self) -> None:
        """Checks that the writer is open: every call has written its events already."""
        self._write_events([])

    def close(self) -> None:
        self._file.close()
