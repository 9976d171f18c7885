"""Tests for jaxcl.loggers."""

import csv
import io
import json
import math
import multiprocessing
import pathlib
import struct
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from jaxcl import loggers
from jaxcl.loggers.base import MetricWriter
from jaxcl.loggers.formatting import evaluated_rows

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ACCURACY = np.array([[0.9, np.nan, np.nan], [0.8, 0.95, np.nan], [0.7, 0.85, 0.925]])


class RecordingWriter(MetricWriter):
    """Keeps the images it is given."""

    def __init__(self):
        self.images = []

    def write_images(self, step, images):
        self.images.append((step, dict(images)))


def png_size(path):
    """Returns (width, height) from a PNG's IHDR chunk, checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def is_running(pid):
    """Whether process `pid` exists and is not a zombie (Linux)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_import_does_not_import_tensorflow_or_matplotlib():
    code = (
        "import sys, jaxcl.loggers; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'matplotlib'})"
        " + sorted(m for m in sys.modules if m.startswith('clu.metric_writers')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_jsonl_writer_round_trip(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = loggers.JsonlWriter(path)
    writer.write_hparams({"lr": 0.1, "seed": np.int64(3), "strategy": "ewc"})
    writer.write_scalars(7, {"train/loss": np.float32(0.5), "train/accuracy": 0.25})
    writer.write_texts(7, {"eval/stream/note": "done"})
    writer.write_images(7, {"eval/stream/accuracy_matrix": np.zeros((1, 2, 2, 3), np.uint8)})
    writer.close()
    # A second writer appends to the same file.
    writer = loggers.JsonlWriter(path)
    writer.write_scalars(0, {"eval/stream/accuracy": float("nan")})
    writer.close()

    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[:3] == [
        {"hparams": {"lr": 0.1, "seed": 3, "strategy": "ewc"}},
        {"step": 7, "train/loss": 0.5, "train/accuracy": 0.25},
        {"step": 7, "eval/stream/note": "done"},
    ]
    assert len(records) == 4 and records[3]["step"] == 0
    assert math.isnan(records[3]["eval/stream/accuracy"])


def test_csv_writer_splits_train_and_eval(tmp_path):
    writer = loggers.CsvWriter(tmp_path)
    writer.write_scalars(10, {"train/loss": 0.125, "train/accuracy": 0.5})
    writer.write_scalars(0, {"eval/exp_000/accuracy": 0.9, "eval/stream/accuracy": 0.875})
    writer.close()
    loggers.CsvWriter(tmp_path).close()  # Reopening must not repeat the header.

    assert read_csv(tmp_path / "training_results.csv") == [
        ["step", "metric", "value"],
        ["10", "train/loss", "0.125"],
        ["10", "train/accuracy", "0.5"],
    ]
    assert read_csv(tmp_path / "eval_results.csv") == [
        ["step", "metric", "value"],
        ["0", "eval/exp_000/accuracy", "0.9"],
        ["0", "eval/stream/accuracy", "0.875"],
    ]


def test_file_writers_put_each_call_on_disk_before_returning(tmp_path):
    # A run killed (SIGTERM, a host stopped with os._exit) never closes its
    # writers: what they were given must already be in the files.
    jsonl = loggers.JsonlWriter(tmp_path / "m.jsonl")
    table = loggers.CsvWriter(tmp_path)
    jsonl.write_scalars(1, {"eval/stream/accuracy": 0.5})
    table.write_scalars(1, {"train/loss": 0.25, "eval/stream/accuracy": 0.5})
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {
        "step": 1, "eval/stream/accuracy": 0.5}
    assert read_csv(tmp_path / "training_results.csv")[1:] == [
        ["1", "train/loss", "0.25"]]
    assert read_csv(tmp_path / "eval_results.csv")[1:] == [
        ["1", "eval/stream/accuracy", "0.5"]]
    jsonl.close()
    table.close()


def test_console_and_text_log_write_the_same_lines(tmp_path, capsys):
    stream = io.StringIO()
    path = tmp_path / "log.txt"
    writers = [loggers.ConsoleWriter(), loggers.ConsoleWriter(stream), loggers.TextLogWriter(path)]
    writer = loggers.MultiWriter(writers)
    writer.write_hparams({"lr": 0.1})
    writer.write_scalars(3, {"eval/stream/accuracy": np.float32(0.912), "train/step": 40})
    writer.write_texts(3, {"note": "hello"})
    writer.close()

    expected = (
        "hparams | lr 0.1\n"
        "step 3 | eval/stream/accuracy 0.9120 | train/step 40\n"
        "step 3 | note: hello\n"
    )
    assert capsys.readouterr().out == expected
    assert stream.getvalue() == expected
    assert path.read_text() == expected


def test_async_writer_writes_in_background_and_reraises(tmp_path):
    writer = loggers.create_writers(
        tmp_path, console=False, tensorboard=False, csv=False, text=False, asynchronous=True
    )
    writer.write_scalars(1, {"eval/stream/accuracy": 0.5})
    writer.flush()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {
        "step": 1,
        "eval/stream/accuracy": 0.5,
    }
    writer.close()

    class FullDisk(MetricWriter):
        def write_scalars(self, step, scalars):
            raise OSError("No space left on device")

    failing = loggers.AsyncWriter(FullDisk())
    failing.write_scalars(2, {"eval/stream/accuracy": 0.5})
    with pytest.raises(Exception, match="No space left on device"):
        failing.close()


def test_async_writers_close_twice_like_the_others(tmp_path):
    for asynchronous in (False, True):
        writer = loggers.create_writers(tmp_path / str(asynchronous), console=False,
                                        asynchronous=asynchronous)
        writer.write_scalars(0, {"train/loss": 0.5})
        writer.close()
        writer.close()


def test_a_value_that_is_not_a_scalar_reaches_no_writer(tmp_path):
    # The console would print a 1-element array that TensorBoard refuses:
    # the set refuses it before any writer writes, naming the metric.
    out = io.StringIO()
    writer = loggers.MultiWriter([loggers.ConsoleWriter(out),
                                  loggers.JsonlWriter(tmp_path / "m.jsonl")])
    for bad in (np.array([0.5]), np.array([0.5, 0.6]), "0.5"):
        with pytest.raises(ValueError, match=r"scalars\['eval/x'\] must be a real "
                           r"number \(a scalar\)"):
            writer.write_scalars(0, {"eval/ok": 1.0, "eval/x": bad})
    writer.write_scalars(1, {"eval/x": np.float32(0.5)})
    writer.close()
    assert out.getvalue() == "step 1 | eval/x 0.5000\n"
    assert (tmp_path / "m.jsonl").read_text().count("\n") == 1


def test_jsonl_hparams_keep_nested_mappings(tmp_path):
    import types

    writer = loggers.JsonlWriter(tmp_path / "m.jsonl")
    writer.write_hparams({"opt": types.MappingProxyType({"lr": 0.1}), "d": {"n": 2}})
    writer.close()
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {
        "hparams": {"opt": {"lr": 0.1}, "d": {"n": 2}}}


def test_create_writers_rejects_a_file_as_logdir(tmp_path):
    path = tmp_path / "run"
    path.write_text("")
    with pytest.raises(ValueError, match="logdir") as error:
        loggers.create_writers(path)
    assert str(path) in str(error.value)


def test_create_writers_without_logdir_only_prints(capsys):
    writer = loggers.create_writers(None)
    writer.write_scalars(0, {"eval/stream/accuracy": 1.0})
    writer.close()
    assert capsys.readouterr().out == "step 0 | eval/stream/accuracy 1.0000\n"


def test_tensorboard_round_trip_through_create_writers(tmp_path, capfd):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    writer = loggers.create_writers(tmp_path, console=False)
    writer.write_scalars(5, {"train/loss": 0.25})
    writer.write_scalars(2, {"eval/exp_001/accuracy": 0.75, "eval/stream/accuracy": 0.5})
    loggers.write_result_images(writer, 2, tmp_path, accuracy_matrix=ACCURACY)
    # In-process EventFileWriter: no child process, nothing printed.
    assert not multiprocessing.active_children()
    writer.close()
    writer.close()  # Idempotent.
    assert capfd.readouterr() == ("", "")

    accumulator = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags()["tensors"])
    assert {
        "train/loss",
        "eval/exp_001/accuracy",
        "eval/stream/accuracy",
        "eval/stream/accuracy_matrix",
        "eval/stream/accuracy_curves",
    } <= tags

    def only_event(tag):
        (event,) = accumulator.Tensors(tag)
        return event.step, tensor_util.make_ndarray(event.tensor_proto)

    assert only_event("train/loss") == (5, pytest.approx(0.25))
    assert only_event("eval/exp_001/accuracy") == (2, pytest.approx(0.75))
    step, image = only_event("eval/stream/accuracy_matrix")
    # Image summaries hold [width, height, png bytes...] as strings.
    assert step == 2 and image[2][:8] == PNG_SIGNATURE
    assert (int(image[0]), int(image[1])) == png_size(tmp_path / "accuracy_matrix.png")
    for name in ("metrics.jsonl", "training_results.csv", "eval_results.csv", "log.txt"):
        assert (tmp_path / name).stat().st_size > 0


def test_tensorboard_import_error_surfaces_in_parent(tmp_path, monkeypatch):
    # The child gets the parent's sys.path, so this stub shadows TensorFlow
    # there: a quick, reliable failure while creating the writer.
    stub = tmp_path / "stub" / "tensorflow"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('no TensorFlow here')\n")
    monkeypatch.syspath_prepend(str(stub.parent))
    logdir = tmp_path / "tb"
    writer = loggers.tensorboard_writer(logdir)  # Must not raise yet.
    writer.write_scalars(0, {"train/loss": 1.0})  # Queued; the child is still starting.
    with pytest.raises(RuntimeError, match="TensorBoard writer for logdir=") as error:
        writer.flush()
    message = str(error.value)
    assert str(logdir) in message
    # The child's traceback.
    assert "Traceback (most recent call last)" in message
    assert "ImportError: no TensorFlow here" in message
    with pytest.raises(RuntimeError, match="failed in its child process"):
        writer.write_scalars(1, {"train/loss": 1.0})
    writer.close()  # The error was raised already: close just cleans up,
    writer.close()  # and closing again does nothing.
    with pytest.raises(RuntimeError, match="is closed"):
        writer.write_scalars(2, {"train/loss": 1.0})


def test_tensorboard_write_error_surfaces_and_keeps_earlier_events(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    writer = loggers.tensorboard_writer(tmp_path)
    writer.write_scalars(0, {"train/loss": 0.5})
    writer.write_images(0, {"eval/bad": np.zeros(3, np.uint8)})  # Not [N, H, W, C].
    writer.write_scalars(1, {"train/loss": 0.25})  # Never runs.
    with pytest.raises(RuntimeError, match="in write_images") as error:
        writer.close()  # An error not raised yet is raised by close.
    assert str(tmp_path) in str(error.value)
    writer.close()

    accumulator = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    accumulator.Reload()
    assert [event.step for event in accumulator.Tensors("train/loss")] == [0]


def test_tensorboard_parent_never_imports_tensorflow_and_orphans_exit(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    # The parent dies (os._exit: no atexit, no close) right after a flush; its
    # orphaned child must notice and exit on its own, and the flushed event
    # must be on disk.
    code = (
        "import multiprocessing, os, sys\n"
        "from jaxcl import loggers\n"
        f"writer = loggers.tensorboard_writer({str(tmp_path)!r})\n"
        "writer.write_scalars(0, {'train/loss': 0.5})\n"
        "writer.flush()\n"
        "(child,) = multiprocessing.active_children()\n"
        "print('tensorflow' in sys.modules, child.pid, flush=True)\n"
        "os._exit(0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    imported, pid = result.stdout.split()
    assert imported == "False"
    deadline = time.monotonic() + 30
    while is_running(int(pid)):
        assert time.monotonic() < deadline, "orphaned TensorBoard child did not exit"
        time.sleep(0.1)
    accumulator = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    accumulator.Reload()
    assert [event.step for event in accumulator.Tensors("train/loss")] == [0]


def test_our_writers_work_inside_clu_writers(tmp_path):
    from clu import metric_writers

    writer = metric_writers.AsyncWriter(
        metric_writers.MultiWriter([loggers.JsonlWriter(tmp_path / "m.jsonl")])
    )
    writer.write_scalars(4, {"eval/stream/bwt": -0.5})
    writer.close()
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {"step": 4, "eval/stream/bwt": -0.5}


def test_plots_are_rgb_uint8():
    cm = np.array([[5, 1, 0], [2, 6, 1], [0, 0, 9]])
    images = [
        loggers.plot_accuracy_matrix(ACCURACY),
        loggers.plot_accuracy_curves(ACCURACY),
        loggers.plot_confusion_matrix(cm, ["cat", "dog", "bird"]),
        loggers.plot_confusion_matrix(cm / cm.sum(axis=1, keepdims=True)),
    ]
    for image in images:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
        assert image.min() < image.max()  # Something was drawn.
    with pytest.raises(ValueError, match="class_names"):
        loggers.plot_confusion_matrix(cm, ["cat"])


def test_write_result_images_batches_and_saves_pngs(tmp_path):
    writer = RecordingWriter()
    cm = np.eye(3, dtype=np.int32) * 4
    loggers.write_result_images(writer, 2, tmp_path, accuracy_matrix=ACCURACY, confusion_matrix=cm)

    ((step, images),) = writer.images
    assert step == 2
    assert sorted(images) == [
        "eval/stream/accuracy_curves",
        "eval/stream/accuracy_matrix",
        "eval/stream/confusion_matrix",
    ]
    for name, batch in images.items():
        assert batch.dtype == np.uint8 and batch.ndim == 4 and batch.shape[0] == 1
        height, width = batch.shape[1:3]
        assert png_size(tmp_path / f"{name.rsplit('/', 1)[-1]}.png") == (width, height)


def test_save_png_rejects_float_images(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        loggers.save_png(np.zeros((2, 2, 3)), tmp_path / "x.png")


def test_format_accuracy_matrix():
    lines = loggers.format_accuracy_matrix(ACCURACY).splitlines()
    assert lines[0].split() == ["exp", "0", "exp", "1", "exp", "2"]
    assert lines[1].split() == ["after", "exp", "0", "0.9000", "-", "-"]
    assert lines[3].split() == ["after", "exp", "2", "0.7000", "0.8500", "0.9250"]
    assert len({len(line) for line in lines}) == 1  # Aligned columns.
    with pytest.raises(ValueError, match="2-D"):
        loggers.format_accuracy_matrix(np.zeros(3))


def _online_matrix():
    """ACCURACY's rows after experiences 3, 7 and 11 of 12; NaN rows between."""
    matrix = np.full((12, 3), np.nan)
    matrix[[3, 7, 11]] = ACCURACY
    return matrix


def test_rows_without_evaluation_are_left_out_of_table_and_plots():
    online = _online_matrix()
    np.testing.assert_array_equal(evaluated_rows(online), [3, 7, 11])
    np.testing.assert_array_equal(evaluated_rows(np.full((2, 2), np.nan)), [0, 1])
    lines = loggers.format_accuracy_matrix(online).splitlines()
    assert [line.split()[2] for line in lines[1:]] == ["3", "7", "11"]
    assert [line.split()[3:] for line in lines[1:]] == [
        line.split()[3:] for line in loggers.format_accuracy_matrix(ACCURACY).splitlines()[1:]]
    # The heatmap has ACCURACY's 3 rows (same figure size), not 12.
    assert loggers.plot_accuracy_matrix(online).shape == (
        loggers.plot_accuracy_matrix(ACCURACY).shape)
    assert loggers.plot_accuracy_matrix(np.full((12, 3), 0.5)).shape != (
        loggers.plot_accuracy_matrix(ACCURACY).shape)


@pytest.fixture
def drawn_figures(monkeypatch):
    """Collects the matplotlib figures the plot functions render, in order."""
    from jaxcl.loggers import plots

    figures = []
    render = plots._render

    def record(figure):
        figures.append(figure)
        return render(figure)

    monkeypatch.setattr(plots, "_render", record)
    return figures


def test_confusion_matrix_colour_scale_ignores_nan(drawn_figures):
    # Row-normalised counts of a class absent from the data: a NaN row.
    loggers.plot_confusion_matrix([[0.9, 0.1], [np.nan, np.nan]])
    loggers.plot_confusion_matrix(np.full((2, 2), np.nan))
    loggers.plot_confusion_matrix([[0, np.nan], [0, 0]])
    limits = [figure.axes[0].images[0].get_clim() for figure in drawn_figures]
    assert limits == [(0.0, 0.9), (0.0, 1.0), (0.0, 1e-12)]


def test_large_accuracy_heatmap_names_rows_by_experience(drawn_figures):
    # 50 experiences evaluated after every other one (eval_every=2).
    matrix = np.full((50, 50), np.nan)
    for i in range(1, 50, 2):
        matrix[i, :i + 1] = 0.5
    loggers.plot_accuracy_matrix(matrix)
    (figure,) = drawn_figures
    axes = figure.axes[0]
    assert len(axes.images[0].get_array()) == 25
    assert not axes.texts  # No cell values above 20 per side.
    shown = [(label.get_position()[1], label.get_text())
             for label in axes.get_yticklabels() if label.get_text()]
    assert len(shown) >= 3
    # Row `position` of the heatmap is experience 2 * position + 1.
    assert all(text == str(2 * round(position) + 1)
               for position, text in shown), shown
    assert {text for _, text in shown} <= {str(i) for i in range(1, 50, 2)}
    columns = [(label.get_position()[0], label.get_text())
               for label in axes.get_xticklabels() if label.get_text()]
    assert columns and all(text == str(round(position))
                           for position, text in columns), columns


def test_accuracy_curves_legend_only_up_to_20_experiences(drawn_figures):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. constrained_layout not applied.
        for n in (3, 20, 21, 100):
            loggers.plot_accuracy_curves(
                np.tril(np.random.default_rng(n).random((n, n))))
    legends = [figure.legends for figure in drawn_figures]
    assert [len(legend) for legend in legends] == [1, 1, 0, 0]
    assert [text.get_text() for text in legends[0][0].get_texts()] == [
        "exp 0", "exp 1", "exp 2"]
    assert len(legends[1][0].get_texts()) == 20
    assert len(drawn_figures[3].axes[0].get_lines()) == 100


def test_swept_values_keep_distinct_names():
    # %g keeps 6 digits: these pairs shared a scalar name, one value's curve
    # overwriting the other's.
    for pair in ([1234567.0, 1234568.0], [0.1, 0.10000001]):
        names = {loggers.format_swept_value(v) for v in pair}
        assert len(names) == 2, names
    assert [loggers.format_swept_value(v) for v in (0.01, 5, 1e-05)] == [
        "0.01", "5", "1e-05"]


def test_format_metrics_table():
    table = loggers.format_metrics_table(
        {"eval/stream/accuracy": (0.912, 0.0101), "eval/stream/forgetting": None, "bwt": -0.05}
    )
    assert table.splitlines() == [
        "eval/stream/accuracy    0.912 ± 0.010",
        "eval/stream/forgetting            n/a",
        "bwt                           -0.0500",
    ]
    # Means too small or too large for 3 decimals keep 3 significant digits.
    assert loggers.format_metrics_table(
        {"train_loss": (4.2e-4, 1e-5), "train_flops": (54029311.0, 0.0)}
    ).splitlines() == [
        "train_loss   4.200e-04 ± 1.000e-05",
        "train_flops  5.403e+07 ± 0.000e+00",
    ]
    undefined = loggers.format_metrics_table({"peak_device_memory_mb": float("nan"),
                                              "forgetting": (float("nan"), 0.0)})
    assert [line.split()[-1] for line in undefined.splitlines()] == ["n/a", "n/a"]


def test_a_bad_step_or_name_reaches_no_writer(tmp_path):
    out = io.StringIO()
    writer = loggers.MultiWriter([loggers.ConsoleWriter(out),
                                  loggers.JsonlWriter(tmp_path / "m.jsonl"),
                                  loggers.CsvWriter(tmp_path)])
    for step in (2.7, "4"):
        with pytest.raises(ValueError, match=f"step must be an integer, got {step!r}"):
            writer.write_scalars(step, {"eval/x": 1.0})
    with pytest.raises(ValueError, match="must not be named 'step'"):
        writer.write_scalars(3, {"step": 0.5})
    with pytest.raises(ValueError, match="must not be named 'step'"):
        writer.write_texts(3, {"step": "hello"})
    writer.write_scalars(np.int64(5), {"eval/x": 1.0})
    writer.close()
    assert out.getvalue() == "step 5 | eval/x 1.0000\n"
    assert [json.loads(line) for line in
            (tmp_path / "m.jsonl").read_text().splitlines()] == [
                {"step": 5, "eval/x": 1.0}]
    assert (tmp_path / "eval_results.csv").read_text().splitlines() == [
        "step,metric,value", "5,eval/x,1.0"]


def test_async_writer_refuses_writes_after_close_and_bad_values_at_once(tmp_path):
    writer = loggers.create_writers(tmp_path, console=False, tensorboard=False,
                                    asynchronous=True)
    with pytest.raises(ValueError, match=r"scalars\['eval/x'\] must be a real"):
        writer.write_scalars(0, {"eval/x": [0.5]})
    writer.write_scalars(1, {"eval/x": 0.5})
    writer.close()
    with pytest.raises(RuntimeError, match="write_scalars after close"):
        writer.write_scalars(2, {"eval/x": 0.5})
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {
        "step": 1, "eval/x": 0.5}


def test_json_safe_takes_numpy_bools_and_jax_arrays():
    import jax.numpy as jnp
    value = {"a": np.bool_(True), "b": jnp.array([1.0, jnp.inf]),
             "c": jnp.int32(3)}
    assert json.dumps(loggers.json_safe(value)) == (
        '{"a": true, "b": [1.0, null], "c": 3}')


def test_remote_logdirs_are_refused_for_local_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    writer = loggers.create_writers(None, console=False)
    with pytest.raises(ValueError, match=r"logdir 'gs://bucket/run' is a "
                       r"remote path; expected a local folder for the PNGs"):
        loggers.write_result_images(writer, 0, "gs://bucket/run",
                                    accuracy_matrix=[[0.5]])
    # A pathlib.Path collapses "gs://" to "gs:/": still remote.
    with pytest.raises(ValueError, match="remote"):
        loggers.create_writers(pathlib.Path("gs://bucket/run"), console=False)
    assert not list(tmp_path.iterdir())
