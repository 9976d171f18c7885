"""WandbWriter against a stand-in `wandb` module (jaxcl does not install it)."""

import importlib.machinery
import json
import sys
import types

import numpy as np
import pytest

from jaxcl import cli, loggers


class _Config:
    """A run's config: `update` needs allow_val_change, as jaxcl passes."""

    def __init__(self, values):
        self.values = dict(values or {})

    def update(self, values, allow_val_change=False):
        assert allow_val_change
        self.values.update(values)


class _Run:
    """Records what a W&B run is asked to do."""

    def __init__(self, **init):
        self.init, self.defined, self.logged = init, [], []
        self.config, self.finished = _Config(init.get("config")), False

    def define_metric(self, name, step_metric=None):
        self.defined.append((name, step_metric))

    def log(self, values):
        self.logged.append(dict(values))

    def finish(self):
        self.finished = True


class _Media:
    def __init__(self, data=None, **kwargs):
        self.data, self.kwargs = data, kwargs


@pytest.fixture
def fake_wandb(monkeypatch):
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    module.runs = []

    def init(**kwargs):
        run = _Run(**kwargs)
        module.runs.append(run)
        return run

    module.init = init
    for name in ("Image", "Video", "Audio", "Histogram"):
        setattr(module, name, type(name, (_Media,), {}))
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def test_each_metric_family_is_logged_on_its_own_step(fake_wandb):
    writer = loggers.WandbWriter(project="cl", name="run-1", mode="offline",
                                 config={"lr": 0.1}, group="g")
    (run,) = fake_wandb.runs
    assert run.init == {"project": "cl", "name": "run-1", "dir": None,
                        "config": {"lr": 0.1}, "mode": "offline",
                        "group": "g"}
    writer.write_scalars(3, {"train/loss": 0.5, "eval/stream/accuracy": 0.9,
                             "lr": 0.01})
    writer.write_scalars(1, {"eval/exp_000/accuracy": np.float32(0.75)})
    assert run.logged == [
        {"train/step": 3, "train/loss": 0.5},
        {"eval/step": 3, "eval/stream/accuracy": 0.9},
        {"step": 3, "lr": 0.01},
        {"eval/step": 1, "eval/exp_000/accuracy": 0.75}]
    assert run.defined == [("train/step", None), ("train/*", "train/step"),
                           ("eval/step", None), ("eval/*", "eval/step"),
                           ("step", None), ("lr", "step")]
    assert all(type(v) is float for row in run.logged for k, v in row.items()
               if not k.endswith("step"))
    writer.write_hparams({"strategy": "ewc"})
    assert run.config.values == {"lr": 0.1, "strategy": "ewc"}
    writer.close()
    assert run.finished


def test_media_are_converted_to_wandb_objects(fake_wandb):
    writer = loggers.WandbWriter(project="cl")
    (run,) = fake_wandb.runs
    batch = np.zeros((2, 4, 5, 3), np.uint8)
    writer.write_images(0, {"eval/stream/accuracy_matrix": batch[0],
                            "eval/samples": batch})
    single, several = (run.logged[0]["eval/stream/accuracy_matrix"],
                       run.logged[0]["eval/samples"])
    assert isinstance(single, fake_wandb.Image)
    assert single.data.shape == (4, 5, 3)
    assert [type(i) for i in several] == [fake_wandb.Image] * 2
    writer.write_videos(1, {"train/video": np.full((6, 4, 5, 3), 0.8)})
    video = run.logged[1]["train/video"].data
    assert video.shape == (6, 3, 4, 5)
    assert video.dtype == np.uint8 and video.max() == 204  # 0.8 of 255.
    writer.write_audios(2, {"train/sound": np.zeros((2, 100, 1))},
                        sample_rate=8000)
    clips = run.logged[2]["train/sound"]
    assert len(clips) == 2 and clips[0].kwargs == {"sample_rate": 8000}
    values = np.arange(10.0)
    writer.write_histograms(3, {"train/w": values}, {"train/w": 5})
    counts, edges = run.logged[3]["train/w"].kwargs["np_histogram"]
    np.testing.assert_array_equal(counts, [2, 2, 2, 2, 2])
    assert len(edges) == 6
    with pytest.raises(ValueError, match=r"num_buckets\['train/w'\]=600: "
                       "W&B histograms take 1 to 512 buckets"):
        writer.write_histograms(3, {"train/w": values}, {"train/w": 600})
    writer.write_texts(4, {"train/note": "hello"})
    assert run.logged[4] == {"train/step": 4, "train/note": "hello"}


def test_an_existing_run_is_left_open(fake_wandb):
    run = _Run()
    writer = loggers.WandbWriter(run=run)
    writer.write_scalars(0, {"train/loss": 1.0})
    writer.close()
    assert run.logged and not run.finished and not fake_wandb.runs


def test_without_wandb_the_writer_and_the_flag_say_what_to_install(
        monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match="WandbWriter needs the wandb "
                       "package, which jaxcl does not install"):
        loggers.WandbWriter(project="cl")
    assert cli.main(["run", "--wandb-project", "cl", "--logdir",
                     str(tmp_path / "run")]) != 0
    assert ("--wandb-project cl needs the wandb package, which jaxcl does not "
            "install: pip install wandb.") in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # Refused before any output.


def test_a_refused_wandb_run_leaves_no_log_folder(fake_wandb, tmp_path):
    def refuse(**kwargs):
        raise RuntimeError("api_key not configured")

    fake_wandb.init = refuse
    logdir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="api_key not configured"):
        cli.main(["run", "--n-experiences", "2", "--no-progress",
                  "--compilation-cache", "", "--wandb-project", "cl",
                  "--logdir", str(logdir)])
    assert not logdir.exists()


def test_the_command_line_logs_to_wandb(fake_wandb, tmp_path):
    logdir = tmp_path / "run"
    assert cli.main(["run", "--n-experiences", "2", "--hidden-size", "16",
                     "--epochs", "1", "--no-progress", "--quiet",
                     "--compilation-cache", "", "--wandb-project", "cl",
                     "--logdir", str(logdir)]) == 0
    (run,) = fake_wandb.runs
    assert run.init["project"] == "cl" and run.init["name"] == "run"
    assert run.config.values["strategy"] == "naive" and run.finished
    final = [row for row in run.logged if "eval/stream/accuracy" in row][-1]
    results = json.loads((logdir / "results.json").read_text())
    assert final["eval/step"] == 1
    assert final["eval/stream/accuracy"] == pytest.approx(
        results["metrics"]["stream_accuracy"])
