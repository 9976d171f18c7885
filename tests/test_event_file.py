"""Tests for jaxcl.loggers.EventFileWriter, TensorBoard files without TensorFlow.

All tests but `test_same_events_as_clu_summary_writer` read the files with
`read_events` below, which needs no TensorFlow (TensorBoard's
`EventAccumulator` imports it when installed, which takes seconds).
"""

import io
import pathlib
import struct
import subprocess
import sys
import wave

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2, types_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

from jaxcl import loggers
from jaxcl.loggers import factory


def read_events(logdir):
    """The events of the one event file in `logdir`, checking each record's CRCs."""
    (path,) = pathlib.Path(logdir).glob("events.out.tfevents.*")
    data, events, offset = path.read_bytes(), [], 0
    while offset < len(data):
        # A record: length (uint64), its CRC, the payload, the payload's CRC.
        length, header_crc = struct.unpack_from("<QI", data, offset)
        payload = data[offset + 12:offset + 12 + length]
        (payload_crc,) = struct.unpack_from("<I", data, offset + 12 + length)
        assert header_crc == masked_crc32c(data[offset:offset + 8])
        assert payload_crc == masked_crc32c(payload)
        events.append(event_pb2.Event.FromString(payload))
        offset += 16 + length
    return events


def run_python(code):
    """Runs `code` in a fresh Python process; returns its stripped output."""
    result = subprocess.run([sys.executable, "-c", code], check=False,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def summaries(logdir):
    """{tag: [(step, plugin name, array), ...]} of the summary events in `logdir`."""
    found = {}
    for event in read_events(logdir)[1:]:
        (value,) = event.summary.value
        found.setdefault(value.tag, []).append(
            (event.step, value.metadata.plugin_data.plugin_name,
             tensor_util.make_ndarray(value.tensor))
        )
    return found


def decode_png(data):
    return np.asarray(Image.open(io.BytesIO(data)))


def write_every_kind(writer):
    """Calls every method that writes, with edge cases, on `writer`."""
    rng = np.random.default_rng(0)
    writer.write_scalars(3, {"train/loss": 0.1, "f64": np.float64(1 / 3), "int": 7,
                             "bool": True, "f16": np.float16(0.3)})
    writer.write_images(4, {
        "rgb": rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8),
        "grey_hwc": rng.random((6, 4, 1)).astype(np.float32),
        "extremes": np.array([[[[-0.5], [0.0], [0.5], [1.0], [2.0], [0.999], [0.001],
                                [np.nan], [np.inf]]]]),
        "half": np.linspace(0, 1, 50).astype(np.float16).reshape(1, 5, 10, 1),
        "rgba": rng.integers(0, 256, (1, 3, 2, 4), dtype=np.uint8),
        "grey_alpha": rng.integers(0, 256, (1, 3, 2, 2), dtype=np.uint8),
        "empty": np.zeros((0, 3, 2, 3), np.uint8),
    })
    writer.write_texts(5, {"note": "héllo **world**"})
    writer.write_histograms(
        6,
        {"normal": rng.normal(size=1000), "range": np.arange(10),
         "constant": np.ones(4), "no_data": np.zeros(0)},
        num_buckets={"range": 5},
    )
    writer.write_audios(7, {"noise": rng.uniform(-1.2, 1.2, (2, 50, 2)).astype(np.float32)},
                        sample_rate=8000)
    writer.write_hparams({"lr": 0.1, "name": "x", "nested": {"a": 1, "b": [1, 2]},
                          "none": None, "flag": False, "np": np.float32(0.5)})
    writer.write_summaries(
        8,
        {"raw": np.arange(6, dtype=np.int32).reshape(2, 3), "py_float": 0.25,
         "py_int": 3, "string": "str", "bytes_metadata": np.ones(2)},
        metadata={"raw": summary_pb2.SummaryMetadata(display_name="R"),
                  "bytes_metadata": summary_pb2.SummaryMetadata(
                      summary_description="d").SerializeToString()},
    )


def test_same_events_as_clu_summary_writer(tmp_path, monkeypatch):
    # The one test that imports TensorFlow: clu's writer and TensorBoard's
    # EventAccumulator (the reader TensorBoard uses) need it.
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    from clu import metric_writers
    from tensorboard.backend.event_processing import event_accumulator

    for name, writer in (("clu", metric_writers.SummaryWriter(str(tmp_path / "clu"))),
                         ("ours", loggers.EventFileWriter(tmp_path / "ours"))):
        write_every_kind(writer)
        writer.close()

    def load(name):
        accumulator = event_accumulator.EventAccumulator(
            str(tmp_path / name), size_guidance={"tensors": 0})
        accumulator.Reload()
        return accumulator

    clu, ours = load("clu"), load("ours")
    tags = clu.Tags()["tensors"]
    assert len(tags) == 24 and ours.Tags()["tensors"] == tags  # Same order, too.
    # Values written without metadata have none.
    assert ours.summary_metadata.keys() == clu.summary_metadata.keys()
    for tag in tags:
        (theirs,), (mine,) = clu.Tensors(tag), ours.Tensors(tag)
        assert mine.step == theirs.step, tag
        metadata, expected = (accumulator.summary_metadata.get(tag, summary_pb2.SummaryMetadata())
                              for accumulator in (ours, clu))
        if metadata.plugin_data.plugin_name == "hparams":
            # Equal but for the start time: the time of the call.
            start = [plugin_data_pb2.HParamsPluginData.FromString(m.plugin_data.content)
                     for m in (metadata, expected)]
            for info in start:
                assert abs(info.session_start_info.start_time_secs - mine.wall_time) < 60
                info.session_start_info.start_time_secs = 0
            assert start[0] == start[1]
            metadata.plugin_data.content = expected.plugin_data.content
        assert metadata == expected, tag
        if metadata.plugin_data.plugin_name == "images":
            # The PNG encoders differ, the dimensions and pixels do not.
            mine_strings = list(mine.tensor_proto.string_val)
            theirs_strings = list(theirs.tensor_proto.string_val)
            assert mine_strings[:2] == theirs_strings[:2], tag
            assert len(mine_strings) == len(theirs_strings), tag
            for a, b in zip(mine_strings[2:], theirs_strings[2:]):
                np.testing.assert_array_equal(decode_png(a), decode_png(b), err_msg=tag)
        else:
            # The same TensorProto: dtype, shape, encoding and bytes.
            assert mine.tensor_proto == theirs.tensor_proto, tag


def test_scalars_texts_and_histograms_read_back(tmp_path):
    writer = loggers.EventFileWriter(tmp_path)
    writer.write_scalars(2, {"train/loss": 0.25, "eval/stream/accuracy": np.float64(0.75)})
    writer.write_scalars(np.int64(3), {"train/loss": True})
    writer.write_texts(2, {"note": "ünïcode"})
    writer.write_histograms(4, {"h": [0.0, 1.0, 2.0, 3.0], "flat": [5, 5, 5]},
                            num_buckets={"h": 2, "flat": 3})
    writer.close()

    found = summaries(tmp_path)
    assert [(step, plugin, float(value)) for step, plugin, value in found["train/loss"]] == [
        (2, "scalars", 0.25), (3, "scalars", 1.0)]
    ((_, _, accuracy),) = found["eval/stream/accuracy"]
    assert accuracy.dtype == np.float32 and accuracy.shape == ()
    assert found["note"] == [(2, "text", np.array("ünïcode".encode(), dtype=object))]
    ((step, plugin, histogram),) = found["h"]
    assert (step, plugin) == (4, "histograms")
    # Two buckets over [0, 3]; 1.5 is the inner edge, the maximum counts last.
    np.testing.assert_array_equal(histogram, [[0.0, 1.5, 2.0], [1.5, 3.0, 2.0]])
    ((_, _, flat),) = found["flat"]
    np.testing.assert_array_equal(flat, [[5, 5, 0], [5, 5, 0], [5, 5, 3]])


def test_strings_keep_trailing_nul_bytes(tmp_path):
    # NumPy's fixed-width string dtypes would cut them off (raw WAV or proto
    # bytes often end in zeros).
    writer = loggers.EventFileWriter(tmp_path)
    writer.write_texts(1, {"note": "abc\x00", "lines": ["x\x00", "y"]})
    writer.write_summaries(2, {"raw": b"RIFF\x01\x00\x00"})
    writer.close()

    found = summaries(tmp_path)
    assert found["note"][0][2].tolist() == b"abc\x00"
    assert found["lines"][0][2].tolist() == [b"x\x00", b"y"]
    assert found["raw"][0][2].tolist() == b"RIFF\x01\x00\x00"


def test_images_read_back_as_the_same_pixels(tmp_path):
    rgb = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    rgba = np.arange(2 * 2 * 4, dtype=np.uint8).reshape(2, 2, 4) * 7
    floats = np.array([[0.0, 0.5, 0.999, 1.0, 2.0, -1.0, np.nan]], np.float32)[..., None]
    writer = loggers.EventFileWriter(tmp_path)
    writer.write_images(1, {"rgb": rgb, "rgba_hwc": rgba, "floats": floats})
    writer.close()

    found = summaries(tmp_path)
    ((step, plugin, strings),) = found["rgb"]
    assert (step, plugin) == (1, "images")
    assert list(strings[:2]) == [b"4", b"3"]  # Width, height.
    assert len(strings) == 4
    for image, png in zip(rgb, strings[2:]):
        np.testing.assert_array_equal(decode_png(png), image)
    ((_, _, strings),) = found["rgba_hwc"]
    assert list(strings[:2]) == [b"2", b"2"] and len(strings) == 3
    np.testing.assert_array_equal(decode_png(strings[2]), rgba)
    ((_, _, strings),) = found["floats"]
    # x * 255.5, clipped to [0, 255] and truncated; NaN gives 0.
    np.testing.assert_array_equal(decode_png(strings[2]), [[0, 127, 255, 255, 255, 0, 0]])


def test_audio_reads_back_as_16_bit_wav(tmp_path):
    clip = np.array([[0.0, 0.5], [-1.0, 1.0], [2.5 / 32768, -2.5 / 32768]], np.float32)
    writer = loggers.EventFileWriter(tmp_path)
    writer.write_audios(2, {"clip": clip[None]}, sample_rate=16000)
    writer.close()

    ((step, plugin, tensor),) = summaries(tmp_path)["clip"]
    assert (step, plugin, tensor.shape, tensor[0, 1]) == (2, "audio", (1, 2), b"")
    with wave.open(io.BytesIO(tensor[0, 0])) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 16000)
        samples = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, 2)
    # round(x * 32768), halves away from zero, clipped to int16.
    np.testing.assert_array_equal(samples, [[0, 16384], [-32768, 32767], [3, -3]])


def test_hparams_and_raw_summaries_read_back(tmp_path):
    writer = loggers.EventFileWriter(tmp_path)
    writer.write_hparams({"lr": 0.1, "optimizer": {"name": "sgd", "betas": (0.9, 0.99)},
                          "decay": None, "nesterov": True})
    writer.write_summaries(5, {"raw": np.eye(2, dtype=np.int64)},
                           metadata={"raw": summary_pb2.SummaryMetadata(display_name="R")})
    writer.write_summaries(6, {"half": jnp.array([0.5, -2.0], jnp.bfloat16)})
    writer.close()

    hparams_event, raw_event, half_event = read_events(tmp_path)[1:]
    (half,) = half_event.summary.value
    assert half.tensor.dtype == types_pb2.DT_BFLOAT16  # As TensorFlow writes it.
    assert np.frombuffer(half.tensor.tensor_content, jnp.bfloat16).tolist() == [0.5, -2.0]
    (value,) = hparams_event.summary.value
    assert (hparams_event.step, value.tag) == (0, "_hparams_/session_start_info")
    assert value.metadata.plugin_data.plugin_name == "hparams"
    info = plugin_data_pb2.HParamsPluginData.FromString(
        value.metadata.plugin_data.content).session_start_info
    assert {name: getattr(v, v.WhichOneof("kind")) for name, v in info.hparams.items()} == {
        "lr": 0.1, "optimizer.name": "sgd", "optimizer.betas.0": 0.9,
        "optimizer.betas.1": 0.99, "decay": "", "nesterov": True}
    (value,) = raw_event.summary.value
    assert (raw_event.step, value.tag, value.metadata.display_name) == (5, "raw", "R")
    array = tensor_util.make_ndarray(value.tensor)
    assert array.dtype == np.int64
    np.testing.assert_array_equal(array, np.eye(2))


@pytest.mark.parametrize("method, args, message", [
    ("write_images", (0, {"ok": np.zeros((1, 2, 2, 3), np.uint8), "eval/bad": np.zeros(3)}),
     "images['eval/bad'] must have shape [N, H, W, C] or [H, W, C] with C in 1..4 "
     "and H, W > 0, got shape (3,)"),
    ("write_images", (0, {"bad": np.zeros((1, 2, 2, 5), np.uint8)}), "got shape (1, 2, 2, 5)"),
    ("write_images", (0, {"bad": np.zeros((2, 2, 3), np.int32)}),
     "images['bad'] must have dtype uint8, or a float dtype with values in [0, 1], "
     "got dtype int32"),
    ("write_scalars", (0, {"ok": 1.0, "bad": "high"}),
     "scalars['bad'] must be a real number, got 'high'"),
    ("write_scalars", (0, {"bad": np.ones(2)}), "scalars['bad'] must be a real number"),
    ("write_scalars", (1.5, {"ok": 1.0}), "step must be an integer, got 1.5"),
    ("write_texts", (0, {"bad": 3}), "texts['bad'] must be a string, got 3"),
    ("write_histograms", (0, {"bad": [1.0, np.nan]}), "arrays['bad'] must be finite"),
    ("write_histograms", (0, {"wide": [-1e308, 1e308]}),
     "arrays['wide'] spans [-1e+308, 1e+308]: its bucket width overflows or underflows"),
    ("write_histograms", (0, {"narrow": [0.0, 5e-324]}),
     "arrays['narrow'] spans [0.0, 5e-324]: its bucket width"),
    ("write_histograms", (0, {"h": [1.0]}, {"h": 0}),
     "num_buckets['h'] must be a positive integer, got 0"),
    ("write_audios", (0, {"bad": np.zeros((5, 2))}),
     "audios['bad'] must be a float array of shape [N, T, C]"),
    ("write_summaries", (0, {"bad": np.array([1, "a"], dtype=object)}),
     "values['bad'] cannot be stored"),
])
def test_bad_input_raises_before_anything_is_written(tmp_path, method, args, message):
    writer = loggers.EventFileWriter(tmp_path)
    kwargs = {"sample_rate": 8000} if method == "write_audios" else {}
    with pytest.raises(ValueError) as error:
        getattr(writer, method)(*args, **kwargs)
    assert message in str(error.value)
    writer.close()
    assert len(read_events(tmp_path)) == 1  # The file version only.


def test_unsupported_calls_warn_or_raise_clear_errors(tmp_path):
    writer = loggers.EventFileWriter(tmp_path)
    with pytest.warns(UserWarning, match=r"dropped \['clip'\]: TensorBoard has no video"):
        writer.write_videos(0, {"clip": np.zeros((1, 2, 4, 4, 3), np.uint8)})
    with pytest.raises(ValueError, match="sample_rate must be a positive integer, got 0"):
        writer.write_audios(0, {"a": np.zeros((1, 4, 1))}, sample_rate=0)
    with pytest.raises(ValueError, match="use jaxcl.loggers.tensorboard_writer"):
        loggers.EventFileWriter("gs://bucket/run")
    writer.close()


def test_flush_makes_data_visible_and_close_is_final(tmp_path):
    writer = loggers.EventFileWriter(tmp_path)
    writer.write_scalars(0, {"train/loss": 0.5})
    writer.flush()
    assert [step for step, _, _ in summaries(tmp_path)["train/loss"]] == [0]
    writer.close()
    writer.close()  # Idempotent.
    for call in (lambda: writer.write_scalars(1, {"train/loss": 0.25}), writer.flush):
        with pytest.raises(RuntimeError, match=f"logdir={str(tmp_path)!r} is closed"):
            call()
    assert len(read_events(tmp_path)) == 2


def test_a_write_cut_short_by_a_full_disk_leaves_only_whole_records(tmp_path):
    # A file size limit stands in for a full disk: the image's record is cut
    # short (EFBIG); the writer must remove the partial record, so that the
    # events before and after it stay readable.
    code = (
        "import errno, pathlib, resource, signal\n"
        "import numpy as np\n"
        "from jaxcl import loggers\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"writer = loggers.EventFileWriter({str(tmp_path)!r})\n"
        "writer.write_scalars(0, {'loss': 0.5})\n"
        f"(path,) = pathlib.Path({str(tmp_path)!r}).glob('events.out.tfevents.*')\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 1000, hard))\n"
        "noise = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), np.uint8)\n"
        "try:\n"
        "    writer.write_images(1, {'noise': noise})\n"
        "except OSError as error:\n"
        "    print(errno.errorcode[error.errno])\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))\n"
        "writer.write_scalars(2, {'loss': 0.25})\n"
        "writer.close()\n"
    )
    assert run_python(code) == "EFBIG"
    found = summaries(tmp_path)
    assert sorted(found) == ["loss"]
    assert [(step, float(value)) for step, _, value in found["loss"]] == [(0, 0.5), (2, 0.25)]


def test_writers_in_one_folder_write_separate_files(tmp_path):
    first, second = loggers.EventFileWriter(tmp_path), loggers.EventFileWriter(tmp_path)
    first.close()
    second.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*.v2"))) == 2


def test_create_writers_never_imports_tensorflow(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from jaxcl import loggers\n"
        f"writer = loggers.create_writers({str(tmp_path)!r}, console=False)\n"
        "writer.write_hparams({'lr': 0.1})\n"
        "writer.write_scalars(0, {'train/loss': 0.5})\n"
        "writer.write_images(0, {'eval/image': np.zeros((1, 2, 2, 3), np.uint8)})\n"
        "writer.write_histograms(0, {'weights': np.arange(5.0)})\n"
        "writer.write_texts(0, {'note': 'hi'})\n"
        "writer.close()\n"
        "print('tensorflow' in sys.modules)\n"
    )
    assert run_python(code) == "False"
    assert sorted(summaries(tmp_path)) == [
        "_hparams_/session_start_info", "eval/image", "note", "train/loss", "weights"]


def test_create_writers_sends_remote_logdirs_to_the_child_process_writer(monkeypatch):
    created = []
    monkeypatch.setattr(factory, "tensorboard_writer",
                        lambda logdir: created.append(logdir) or loggers.MultiWriter([]))
    with pytest.raises(ValueError, match="pass jsonl=False, csv=False, text=False"):
        loggers.create_writers("gs://bucket/run")
    writer = loggers.create_writers("gs://bucket/run", console=False, jsonl=False,
                                    csv=False, text=False)
    writer.close()
    assert created == ["gs://bucket/run"]
    assert not pathlib.Path("gs:").exists()
