"""The `jaxcl` command end to end, and its argument errors."""

import argparse
import contextlib
import datetime
import io
import json
import pathlib

import jax
import jax.lib
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import compilation_cache_in, make_benchmark

import jaxcl
from jaxcl import cli
from jaxcl.strategies import cumulative, from_spec, naive


# Two experiences, an MLP of 32 units, batches of 64: the default run's
# flags, and those of the runs that compare with it or load its programs.
_SMALL_RUN = ["--n-experiences", "2", "--epochs", "1", "--batch-size", "64",
              "--hidden-size", "32"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
  """``jaxcl run`` with ``_SMALL_RUN``'s flags and every output:
  ``(logdir, what it printed)``."""
  logdir = tmp_path_factory.mktemp("default_run") / "run"
  with contextlib.redirect_stdout(io.StringIO()) as stdout:
    assert cli.main(["run", *_SMALL_RUN, "--logdir", str(logdir),
                     "--no-progress", "--compilation-cache", ""]) == 0
  return logdir, stdout.getvalue()


@pytest.mark.xdist_group("test_cli-default_run")
def test_run_end_to_end(default_run):
  # In this process: `python -m jaxcl.cli` runs in test_multihost.py.
  logdir, stdout = default_run
  assert "Accuracy matrix" in stdout and "stream_accuracy" in stdout
  results = json.loads((logdir / "results.json").read_text())
  matrix = results["accuracy_matrix"]
  assert len(matrix) == 2 and len(matrix[0]) == 2
  assert 0.0 <= results["metrics"]["stream_accuracy"] <= 1.0
  assert results["metrics"]["forgetting"] >= -1.0
  assert set(results["timings"]) >= {"compile_s", "train_s", "eval_s", "total_s"}
  assert results["config"]["batch_size"] == 64
  assert results["config"]["drop_rate"] == 0.5  # The MLP's own, as used.
  assert results["environment"]["jax"] == jax.__version__
  assert results["environment"]["jaxlib"] == jax.lib.__version__
  assert list(logdir.glob("events.out.tfevents.*")), "no TensorBoard file"
  lines = (logdir / "metrics.jsonl").read_text().splitlines()
  assert any("eval/stream/accuracy" in json.loads(line) for line in lines)
  for name in ("accuracy_matrix", "accuracy_curves", "confusion_matrix"):
    assert (logdir / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def xla_cache(tmp_path_factory):
  """A fresh compilation cache for runs that build the same programs (each
  is compiled once, then loaded); JAX's settings are restored after."""
  with compilation_cache_in(tmp_path_factory.mktemp("xla_cache")) as folder:
    yield folder


def test_values_in_the_strategy_spec_equal_the_flags_and_are_recorded(
    tmp_path, xla_cache):
  def results(*args):
    """results.json and the hparams recorded of a run with ``args``."""
    logdir = tmp_path / str(len(list(tmp_path.iterdir())))
    assert cli.main(["run", "--n-experiences", "2", "--hidden-size", "16",
                     "--epochs", "1", *args, "--logdir", str(logdir),
                     "--quiet", "--no-progress", "--no-tensorboard",
                     "--compilation-cache", xla_cache]) == 0
    first = json.loads((logdir / "metrics.jsonl").read_text().splitlines()[0])
    return json.loads((logdir / "results.json").read_text()), first["hparams"]
  flags, _ = results("--strategy", "replay+lwf", "--mem-size", "40",
                     "--alpha", "2")
  spec, spec_hparams = results("--strategy",
                               "replay(mem_size=40)+lwf(alpha=2)")
  assert spec["accuracy_matrix"] == flags["accuracy_matrix"]
  # Every hyperparameter each strategy was built with, defaults included.
  replay, lwf = spec["config"]["strategy_hyperparameters"]
  assert replay == {"strategy": "replay", "mem_size": 40,
                    "batch_size_mem": 0, "storage": "experience_balanced",
                    "selection": "random"}
  assert lwf == {"strategy": "lwf", "alpha": 2, "temperature": 2.0}
  assert flags["config"]["strategy_hyperparameters"][1]["alpha"] == 2.0
  # Alpha [2, 1]: 1 on the second experience (the first has no teacher).
  other, hparams = results("--strategy", "replay+lwf", "--mem-size", "40",
                           "--alpha", "2,1")
  assert other["accuracy_matrix"] != flags["accuracy_matrix"]
  # The hparams record lists and the strategies' hyperparameters, as set by
  # the spec or the flags: two runs with --alpha 1,2 and --alpha 3,4 had the
  # same hparams.
  assert spec_hparams["strategy/replay/mem_size"] == 40
  assert spec_hparams["strategy/lwf/temperature"] == 2.0
  assert hparams["alpha"] == "2.0,1.0"
  assert hparams["strategy/lwf/alpha"] == "2.0,1.0"


def test_a_diverging_swept_value_is_flagged_and_the_others_reported(tmp_path):
  logdir = tmp_path / "run"
  # The programs of test_sweep_over_learning_rate_reports_each_value's
  # sweep (the rates are in the state), compiled once.
  with pytest.warns(RuntimeWarning, match=r"label 1e\+30"):
    assert cli.main(["run", "--n-experiences", "2", "--hidden-size", "16",
                     "--epochs", "1", "--sweep", "lr=0.05,1e30",
                     "--on-nonfinite", "flag", "--minibatch-metrics",
                     "--logdir", str(logdir), "--quiet", "--no-progress",
                     "--no-tensorboard", "--compilation-cache", ""]) == 0
  results = json.loads((logdir / "results.json").read_text())
  assert results["nonfinite"][0] is None and results["nonfinite"][1][0] == 0
  # NaN is written as null; the mean is the finite run's value.
  assert results["metrics_per_run"]["stream_accuracy"][1] is None
  assert results["metrics"]["stream_accuracy"] == (
      results["metrics_per_run"]["stream_accuracy"][0])
  assert results["accuracy_matrix"] == results["accuracy_matrices"][0]
  assert results["trained_columns"] == [0, 1]
  # The confusion matrix counts the finite run's test samples once.
  tests = jaxcl.benchmarks.split_mnist(n_experiences=2).test_stream
  assert np.sum(results["confusion_matrix"]) == sum(len(e) for e in tests)


@pytest.mark.parametrize("flags, model, drop_rate", [
    ([], "simple_cnn", 0.25), ([], "mlp", 0.5),
    (["--drop-rate", "0.1"], "simple_cnn", 0.1)])
def test_models_keep_their_own_dropout_unless_the_flag_is_given(
    tmp_path, monkeypatch, flags, model, drop_rate):
  # Avalanche's SimpleCNN drops 0.25, its SimpleMLP 0.5.
  built = _built_model(tmp_path, monkeypatch, "--model", model, *flags)
  assert built.drop_rate == drop_rate


def _built_model(tmp_path, monkeypatch, *flags):
  """The model ``jaxcl run`` with ``flags`` hands to fit."""
  built = []

  def fit(model, *args, **kwargs):
    built.append(model)
    raise KeyboardInterrupt  # Stops the run once the model is built.

  monkeypatch.setattr(jaxcl, "fit", fit)
  with pytest.raises(KeyboardInterrupt):
    cli.main(["run", *flags, "--logdir", str(tmp_path / "run"), "--quiet",
              "--no-progress", "--no-tensorboard", "--compilation-cache", ""])
  return built[0]


def test_head_cosine_wraps_the_models_features(tmp_path, monkeypatch):
  model = _built_model(tmp_path, monkeypatch, "--model", "simple_cnn",
                       "--head", "cosine")
  assert isinstance(model, jaxcl.models.CosineClassifier)
  assert model.num_classes == 10 and model.features.num_classes is None
  assert model.features.drop_rate == 0.25


def test_hidden_layers_stack_the_lstm_of_a_sequence_classifier(
    tmp_path, monkeypatch):
  model = _built_model(tmp_path, monkeypatch, "--model",
                       "sequence_classifier", "--hidden-size", "32",
                       "--hidden-layers", "2", "--head", "cosine")
  assert isinstance(model, jaxcl.models.CosineClassifier)
  assert model.num_classes == 10
  assert (model.features.num_classes, model.features.hidden_size,
          model.features.rnn_layers) == (None, 32, 2)


@pytest.mark.parametrize("flags, message", [
    (["--model", "mt_mlp", "--head", "cosine"],
     "--head cosine needs a model with a features-only form to put the cosine "
     "layer on; --model mt_mlp has none. Expected one of mlp, simple_cnn"),
    (["--head", "cos"], "Unknown --head 'cos'"),
    (["--model", "sequence_classifier", "--drop-rate", "0.1"],
     "--drop-rate 0.1 has no effect: --model sequence_classifier does not "
     "use it"),
    (["--strategy", "streaming_lda", "--head", "cosine"],
     "--head cosine has no effect: --strategy streaming_lda trains no "
     "parameter with the optimizer"),
    (["--strategy", "mer", "--lr-schedule", "plateau"],
     "--lr-schedule plateau: --strategy mer makes its own optimizer updates"),
    (["--plateau-patience", "3"], "--plateau-patience 3 has no effect: "
     "--lr-schedule is constant, not plateau"),
    (["--lr-schedule", "plateau", "--plateau-factor", "1"],
     "--plateau-factor must be in (0, 1), got 1.0"),
    (["--lr-schedule", "plateau", "--plateau-patience", "-1"],
     "--plateau-patience must be a non-negative integer, got -1"),
    (["--lr-schedule", "plateau", "--plateau-patience", "2147483647"],
     "--plateau-patience must be at most 2147483646, got 2147483647"),
])
def test_a_head_or_flag_the_model_cannot_take_is_refused(tmp_path, capsys,
                                                         flags, message):
  code = cli.main(["run", *flags, "--logdir", str(tmp_path / "x"),
                   "--no-progress", "--no-tensorboard", "--quiet",
                   "--compilation-cache", ""])
  assert code == 2 and message in capsys.readouterr().err
  assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flags, masked", [([], True),
                                           (["--no-class-masking"], False)])
def test_class_masking_is_fits_unless_turned_off(tmp_path, monkeypatch, flags,
                                                masked):
  given = []

  def fit(*args, **kwargs):
    given.append(kwargs["mask_unseen_classes"])
    raise KeyboardInterrupt  # Stops the run once fit is called.

  monkeypatch.setattr(jaxcl, "fit", fit)
  with pytest.raises(KeyboardInterrupt):
    cli.main(["run", *flags, "--logdir", str(tmp_path / "run"), "--quiet",
              "--no-progress", "--no-tensorboard", "--compilation-cache", ""])
  assert given == [masked]


@pytest.mark.xdist_group("test_cli-default_run")
def test_a_memory_budget_streams_the_same_numbers_with_jax_own_cache(
    tmp_path, xla_cache, default_run):
  # In this process (no interpreter and JAX to start twice), with JAX's own
  # cache in a fresh folder: the two streamed runs share their programs.
  expected = json.loads((default_run[0] / "results.json").read_text())
  results = []
  budget = ("--device-memory-budget-mb", "0.05")
  for flags in (budget, ("--lazy", *budget)):
    logdir = tmp_path / f"run{len(results)}"
    assert cli.main(["run", *_SMALL_RUN, "--logdir", str(logdir),
                     "--no-progress", "--quiet", "--no-tensorboard", *flags,
                     "--compilation-cache", ""]) == 0
    # '' enables no cache of jaxcl's; one set through JAX (its
    # JAX_COMPILATION_CACHE_DIR) stays, as --help and README say.
    assert jax.config.jax_compilation_cache_dir == xla_cache
    results.append(json.loads((logdir / "results.json").read_text()))
  # 0.05 MB is below one experience (≈ 2,000 digits of 796 bytes): streamed,
  # from memory, then from the records (--lazy).
  assert results[0]["config"]["device_memory_budget_mb"] == 0.05
  assert results[1]["config"]["lazy"]
  for streamed in results:
    assert streamed["accuracy_matrix"] == expected["accuracy_matrix"]
    assert streamed["metrics"]["stream_loss"] == (
        expected["metrics"]["stream_loss"])


def test_periodic_eval_early_stopping_and_schedule_flags(tmp_path):
  logdir = tmp_path / "watch"
  code = cli.main(["run", "--n-experiences", "2", "--hidden-size", "16",
                   "--batch-size", "64", "--epochs", "5", "--lr", "0.1",
                   "--validation-size", "0.2", "--early-stopping", "1",
                   "--lr-schedule", "cosine", "--reset-schedule", "--logdir",
                   str(logdir), "--no-progress", "--no-tensorboard", "--quiet",
                   "--compilation-cache", ""])
  assert code == 0
  results = json.loads((logdir / "results.json").read_text())
  periodic = results["periodic"]
  # Evaluated before each experience and after every epoch that trained.
  trained = [h["epochs_trained"] for h in results["history"]]
  assert [p["experience"] for p in periodic].count(1) == trained[1] + 1
  assert all(1 <= t <= 5 for t in trained)
  lines = [json.loads(line) for line in
           (logdir / "metrics.jsonl").read_text().splitlines()]
  assert any("periodic/valid/accuracy" in line for line in lines)


def test_online_size_cuts_experiences_and_evaluates_at_their_ends(tmp_path):
  logdir = tmp_path / "online"
  code = cli.main(["run", "--n-experiences", "2", "--hidden-size", "16",
                   "--online-size", "500", "--batch-size", "10",
                   "--strategy", "replay", "--mem-size", "20", "--logdir",
                   str(logdir), "--no-progress", "--no-tensorboard", "--quiet",
                   "--compilation-cache", ""])
  assert code == 0
  results = json.loads((logdir / "results.json").read_text())
  # 4,000 bundled digits in 2 experiences of 2,000: 4 mini-experiences each.
  matrix = results["accuracy_matrix"]
  assert len(matrix) == 8 and len(matrix[0]) == 2
  evaluated = [i for i, row in enumerate(matrix) if row[0] is not None]
  assert evaluated == [3, 7]  # The last mini-experience of each experience.
  assert matrix[3][1] == 0.0  # Experience 1's classes are masked until seen.
  assert results["trained_columns"] == [0] * 4 + [1] * 4
  assert results["config"]["online_size"] == 500


def test_online_size_after_validation_split_with_eval_every(tmp_path):
  logdir = tmp_path / "online_valid"
  code = cli.main(["run", "--n-experiences", "2", "--hidden-size", "16",
                   "--validation-size", "0.2", "--online-size", "500",
                   "--eval-every", "3", "--batch-size", "10", "--logdir",
                   str(logdir), "--no-progress", "--no-tensorboard", "--quiet",
                   "--compilation-cache", ""])
  assert code == 0
  matrix = json.loads((logdir / "results.json").read_text())["accuracy_matrix"]
  # 2,000 digits per experience, 1,600 after the validation split: 500, 500,
  # 500 and 100 per experience; every third and the last are evaluated.
  assert len(matrix) == 8
  assert [i for i, row in enumerate(matrix) if row[0] is not None] == [2, 5, 7]


@pytest.mark.parametrize("args, message", [
    (["--early-stopping", "2"], "there is no validation stream; pass "
     "--validation-size"),
    (["--optimizer", "adam", "--momentum", "0.9"],
     "--momentum 0.9 applies to --optimizer sgd only"),
    (["--device-memory-budget-mb", "0.05", "--validation-size", "0.1",
      "--periodic-eval", "1"], "need the on-device path"),
    (["--strategy", "generative_replay", "--return-task-id", "--model",
      "mt_mlp"], "generative_replay needs a stream with one task label"),
    (["--periodic-eval", "1", "--periodic-unit", "epochs"], "Did you mean 'epoch'"),
    (["--lr-schedule", "cosin"], "Did you mean 'cosine'"),
    (["--label-smoothing", "1.5"], "--label-smoothing must be in [0, 1], "
     "got 1.5"),
    (["--validation-size", "1.5"], "--validation-size must be in (0, 1)"),
    (["--sweep", "lr=0.1,0.2", "--lr-schedule", "cosine"], "needs --lr-schedule"),
    (["--sweep", " lr =0.1,0.2", "--lr-schedule", "cosine"],
     "needs --lr-schedule"),
    (["--sweep", "lr=0.1,-0.1"], "--sweep lr values must be in (0, inf), got "
     "-0.1"),
    (["--sweep", "lr=0.1,nan"], "--sweep lr values must be in (0, inf)"),
    (["--sweep", "lr=0.1,0.1"], "values must be distinct"),
    (["--strategy", "replay", "--sweep", "mem_size=100,200"],
     "--sweep mem_size: an integer hyperparameter of replay"),
    (["--strategy", "ewc", "--sweep", "mode=1,2"],
     "--sweep mode: a switch or a choice of ewc, not a number"),
    (["--strategy", "ewc", "--sweep", "decay_factor=0.5,0.9"],
     "--sweep decay_factor=0.5: ewc decay_factor=0.5 only applies to "
     "mode='online'"),
])
def test_bad_watch_arguments_exit_2(tmp_path, capsys, args, message):
  code = cli.main(["run", "--n-experiences", "2", *args, "--logdir",
                   str(tmp_path / "x"), "--no-progress", "--no-tensorboard",
                   "--quiet", "--compilation-cache", ""])
  assert code == 2 and message in capsys.readouterr().err
  assert not (tmp_path / "x").exists()


def test_a_mistyped_boolean_flag_is_refused(capsys):
  with pytest.raises(SystemExit) as exited:
    cli.build_parser().parse_args(["run", "--strategy", "lfl",
                                   "--freeze-head", "ture"])
  assert exited.value.code == 2
  assert "--freeze-head: invalid bool value: 'ture'" in capsys.readouterr().err
  args = cli.build_parser().parse_args(["run", "--freeze-head", "No"])
  assert args.freeze_head is False


@pytest.mark.parametrize("benchmark, expected", [
    ("split_mnist", 5), ("permuted_mnist", 10), ("split_cifar100", 10),
    ("split_cub200", 11), ("split_omniglot", 4), ("concon_disjoint", None)])
def test_n_experiences_defaults_to_the_benchmarks_own(benchmark, expected):
  # The factories' own defaults, from their signatures (None: the factory
  # decides from its other arguments).
  args = cli.build_parser().parse_args(["run", "--benchmark", benchmark])
  cli._check_args(args)
  assert cli._n_experiences(args) == expected
  # Resolved where used, not stored: the same Namespace with another
  # benchmark gets that one's default.
  assert args.n_experiences is None
  args.benchmark = "permuted_mnist"
  assert cli._n_experiences(args) == 10
  typed = cli.build_parser().parse_args(["run", "--benchmark", benchmark,
                                         "--n-experiences", "2"])
  cli._check_args(typed)
  assert cli._n_experiences(typed) == 2


def test_n_experiences_is_refused_where_the_benchmark_has_no_such_number():
  args = cli.build_parser().parse_args(["run", "--benchmark", "core50"])
  cli._check_args(args)
  assert cli._n_experiences(args) is None
  typed = cli.build_parser().parse_args(["run", "--benchmark", "core50",
                                         "--n-experiences", "2"])
  with pytest.raises(ValueError, match="--n-experiences 2 has no effect: "
                     "--benchmark core50 does not use it"):
    cli._check_args(typed)
  # A results.json config of before session 28 records the default of
  # then, 5, for every benchmark: checked again (no typed flags), accepted.
  legacy = cli.build_parser().parse_args(["run", "--benchmark", "core50"])
  legacy.n_experiences = 5
  cli._check_args(legacy)
  with pytest.raises(ValueError, match="--n-experiences 5 has no effect"):
    cli._check_args(legacy, typed={"n_experiences"})


@pytest.mark.parametrize("args, message", [
    (["--benchmark", "split_mnst"], "Did you mean 'split_mnist'"),
    (["--strategy", "naiv"], "Did you mean 'naive'"),
    (["--n-experiences", "3"], "does not divide the 10 classes"),
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--lr", "-1"], "--lr must be in (0"),
    (["--lazy", "--benchmark", "permuted_mnist"],
     "--lazy: benchmark 'permuted_mnist' reads its images into memory"),
    (["--seed", str(2**32)], "--seed values must be in [0, 2**32), got 4294967296"),
    (["--seeds", "1,-1"], "--seeds values must be in [0, 2**32), got -1"),
])
def test_bad_arguments_exit_2_with_clear_message(tmp_path, capsys, args, message):
  logdir = tmp_path / "never"
  code = cli.main(["run", *args, "--logdir", str(logdir), "--no-progress",
                   "--no-tensorboard", "--compilation-cache", ""])
  assert code == 2
  assert message in capsys.readouterr().err
  assert not logdir.exists()


def test_a_diverging_run_ends_with_a_clear_error_and_leaves_no_folder(
    tmp_path, capsys):
  # The checkpoint folder inside the new log folder made it look old.
  logdir = tmp_path / "x"
  code = cli.main(["run", "--n-experiences", "2", "--hidden-size", "8",
                   "--lr", "1e9", "--logdir", str(logdir), "--checkpoint-dir",
                   str(logdir / "ckpt"), "--no-progress", "--quiet",
                   "--compilation-cache", ""])
  assert code == 2
  err = capsys.readouterr().err
  assert "jaxcl: error: The training loss became NaN or infinite" in err
  assert "other runs" not in err  # A single run has none to let finish.
  assert not logdir.exists()
  assert cli.main(["run", "--n-experiences", "2", "--hidden-size", "8",
                   "--lr", "1e9", "--seeds", "0,1", "--logdir",
                   str(tmp_path / "y"), "--no-progress", "--no-tensorboard",
                   "--quiet", "--compilation-cache", ""]) == 2
  assert ("(or pass --on-nonfinite flag to let the other runs finish)"
          in capsys.readouterr().err)


def test_logdir_that_is_a_file_is_refused(tmp_path, capsys):
  target = tmp_path / "file"
  target.write_text("keep me")
  assert cli.main(["run", "--logdir", str(target)]) == 2
  assert "is a file" in capsys.readouterr().err
  assert target.read_text() == "keep me"


def test_remote_logdir_is_refused(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cli.main(["run", "--logdir", "gs://bucket/runs/x"]) == 2
  assert ("--logdir 'gs://bucket/runs/x' is a remote path; expected a local "
          "folder" in capsys.readouterr().err)
  assert not list(tmp_path.iterdir())  # no local "gs:" folder


def test_a_registered_parameter_clashing_with_a_flag_is_a_clear_error(capsys):
  from jaxcl.strategies import REGISTRY, register
  register("with_lr", lambda lr=0.1: naive())
  try:
    assert cli.main(["run", "--strategy", "naive"]) == 2
  finally:
    del REGISTRY["with_lr"]
  assert ("hyperparameter 'lr' of strategy with_lr would be the flag --lr, "
          "which jaxcl run has already" in capsys.readouterr().err)


def test_a_registered_list_default_takes_a_comma_separated_flag():
  from jaxcl.strategies import REGISTRY, register
  register("weighted", lambda weights=(0.5, 1.0): naive())
  try:
    parse = cli.build_parser().parse_args
    # The flag's type was tuple: "1,2" became ('1', ',', '2').
    assert parse(["run", "--weights", "1,2"]).weights == [1.0, 2.0]
    assert parse(["run", "--weights", "0.25"]).weights == [0.25]
  finally:
    del REGISTRY["weighted"]
  # A NumPy default is a number; a default of another type, or defaults
  # that disagree with a built-in's (replay's storage is a string), give no
  # flag (a spec can still set them) and leave every other flag alone.
  register("odd", lambda shape=object(), storage=0, rate=np.float64(0.5),
           on=np.bool_(True): naive())
  try:
    args = cli.build_parser().parse_args(["run", "--rate", "0.1", "--on",
                                          "no"])
    assert (args.rate, args.on) == (0.1, False)
    for flag in ("--shape", "--storage"):
      with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", flag, "1"])
    assert from_spec("odd(storage=1)").name == "naive"
  finally:
    del REGISTRY["odd"]


def test_default_logdirs_of_runs_started_together_differ(tmp_path,
                                                         monkeypatch):
  class Frozen(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
      return cls(2026, 1, 2, 3, 4, 5)

  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(cli.datetime, "datetime", Frozen)
  # Two runs in the same second wrote into one folder.
  folders = [cli._new_default_logdir() for _ in range(3)]
  assert [str(f) for f in folders] == [
      "runs/20260102-030405", "runs/20260102-030405-1",
      "runs/20260102-030405-2"]
  assert all(f.is_dir() for f in folders)


def test_a_sweep_gives_a_hyperparameter_without_a_default(tmp_path, capsys):
  from jaxcl.strategies import REGISTRY, register
  def needs_strength(strength):  # Kept in the state, so it can be swept.
    if strength < 0:
      raise ValueError(f"strength must be >= 0, got {strength}.")
    return naive()._replace(
        name="needs_strength",
        init=lambda ctx, params, key: {"strength": np.float32(strength)})
  register("needs_strength", needs_strength)
  try:
    assert cli.main(["run", "--strategy", "needs_strength", "--sweep",
                     "strength=0.1,0.2", "--n-experiences", "2",
                     "--hidden-size", "8", "--logdir", str(tmp_path / "s"),
                     "--no-progress", "--quiet", "--no-tensorboard",
                     "--compilation-cache", ""]) == 0
    # A bad first value is the sweep's, not a flag's.
    assert cli.main(["run", "--strategy", "needs_strength", "--sweep",
                     "strength=-1,0.2", "--logdir", str(tmp_path / "t"),
                     "--compilation-cache", ""]) == 2
    assert ("--sweep strength=-1: strength must be >= 0, got -1.0."
            in capsys.readouterr().err)
  finally:
    del REGISTRY["needs_strength"]


@pytest.mark.parametrize("logdir", ["deep/a/b", None])
def test_a_refusal_inside_fit_leaves_no_folders_it_created(
    tmp_path, monkeypatch, capsys, logdir):
  # Patience longer than the evaluations allow is refused inside fit, after
  # the log folder exists; its new parents (or runs/) were left behind.
  monkeypatch.chdir(tmp_path)
  (tmp_path / "runs_elsewhere").mkdir()
  where = ["--logdir", logdir] if logdir else []
  code = cli.main(["run", "--early-stopping", "2", "--periodic-eval", "5",
                   "--validation-size", "0.1", "--n-experiences", "2",
                   "--no-progress", "--no-tensorboard", "--quiet",
                   "--compilation-cache", "", *where])
  assert code == 2 and "patience" in capsys.readouterr().err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["runs_elsewhere"]


def test_sweeps_a_value_the_strategy_needs_once_another_is_set(tmp_path):
  # Online EWC needs decay_factor: the check built ewc(mode='online')
  # without the swept value and refused what Python's sweep runs.
  out = tmp_path / "sweep"
  assert cli.main(["run", "--strategy", "ewc", "--mode", "online", "--sweep",
                   "decay_factor=0.5,0.9", "--n-experiences", "2",
                   "--epochs", "1", "--hidden-size", "8", "--no-progress",
                   "--quiet", "--no-tensorboard", "--logdir", str(out),
                   "--compilation-cache", ""]) == 0
  results = json.loads((out / "results.json").read_text())
  (ewc,) = results["config"]["strategy_hyperparameters"]
  assert ewc["mode"] == "online" and ewc["decay_factor"] is None  # Swept.
  assert len(results["labels"]) == len(results["accuracy_matrices"]) == 2


def test_an_unwritable_default_cache_folder_only_costs_the_caching(
    tmp_path, monkeypatch, capsys):
  # A read-only or missing home stopped every run.
  monkeypatch.setattr(cli.compilation, "DEFAULT_CACHE_DIR",
                      "/proc/jaxcl_no_home/xla")
  before = jax.config.jax_compilation_cache_dir
  # The default run's flags: its programs, compiled once in the suite's cache.
  args = ["run", *_SMALL_RUN, "--no-progress", "--quiet", "--no-tensorboard"]
  with pytest.warns(RuntimeWarning, match="--compilation-cache "
                    "'/proc/jaxcl_no_home/xla' cannot hold the compilation "
                    "cache"):
    assert cli.main([*args, "--logdir", str(tmp_path / "a")]) == 0
  assert jax.config.jax_compilation_cache_dir == before
  # Named by the user, the folder must work.
  assert cli.main([*args, "--logdir", str(tmp_path / "b"),
                   "--compilation-cache", "/proc/jaxcl_no_home/xla"]) == 2
  assert ("--compilation-cache '/proc/jaxcl_no_home/xla' cannot be created: "
          "FileNotFoundError: No such file or directory; expected a folder "
          "this process can write." in capsys.readouterr().err)


def test_opt_in_metric_flags_record_every_step_and_the_disk_usage(tmp_path):
  logdir, watched = tmp_path / "mb", tmp_path / "watched"
  watched.mkdir()
  (watched / "a.bin").write_bytes(bytes(3 * 1024))
  code = cli.main(["run", "--n-experiences", "2", "--hidden-size", "16",
                   "--minibatch-metrics", "--disk-usage", str(watched),
                   str(watched / "a.bin"), "--logdir", str(logdir),
                   "--no-progress", "--no-tensorboard", "--compilation-cache",
                   ""])
  assert code == 0
  results = json.loads((logdir / "results.json").read_text())
  assert results["metrics"]["disk_usage_kb"] == 6.0  # Counted per path.
  steps = json.loads((logdir / "results.json").read_text())["minibatch"]
  # 4,000 bundled digits in 2 experiences of 2,000: 63 batches of 32 each.
  assert steps["step"] == list(range(1, 127))
  assert steps["experience"] == [0] * 63 + [1] * 63
  csv_rows = (logdir / "training_results.csv").read_text().splitlines()
  assert sum(",minibatch/loss," in row for row in csv_rows) == 126
  # Written to the files, not printed.
  assert "minibatch/loss" not in (logdir / "log.txt").read_text()


def test_help_documents_every_flag():
  text = cli.build_parser()._subparsers._group_actions[0].choices["run"].format_help()
  for flag in ("--benchmark", "--strategy", "--epochs", "--batch-size", "--lr",
               "--seed", "--logdir"):
    assert flag in text


def test_readme_test_command_is_what_ci_runs():
  root = pathlib.Path(__file__).resolve().parents[1]
  ci = (root / ".ci" / "run").read_text().strip().splitlines()[-1]
  assert ci in (root / "README.md").read_text()


def test_factory_errors_are_reworded_only_where_they_name_parameters():
  error = cli._in_flag_terms(
      ValueError("from /data/n_experiences: n_experiences=3 does not divide "
                 "`tfds build x --data_dir /d/n_experiences`"),
      {"n_experiences": 3}, "--benchmark x")
  assert str(error) == ("from /data/n_experiences: --n-experiences=3 does not "
                        "divide `tfds build x --data_dir /d/n_experiences`")
  # An error type built from more than a message keeps its text.
  import json
  try:
    json.loads("{bad")
  except json.JSONDecodeError as bad:
    error = cli._in_flag_terms(bad, {"schedule": "{bad"}, "--strategy s")
  assert type(error) is ValueError and "Expecting property name" in str(error)


def test_arguments_checked_twice_stay_valid():
  # _check_args records the resolved early-stopping mode in the Namespace
  # (results.json's config keeps it): a second check (cli.run in a loop)
  # must not take it for a flag the user changed.
  for argv in (["run"], ["run", "--early-stopping", "2", "--validation-size",
                         "0.1", "--early-stopping-metric", "loss"]):
    args = cli.build_parser().parse_args(argv)
    cli._check_args(args)
    mode = args.early_stopping_mode
    cli._check_args(args)
    assert args.early_stopping_mode == mode


def test_sweep_over_learning_rate_reports_each_value(tmp_path, capsys):
  logdir = tmp_path / "sweep"
  code = cli.main(["run", "--n-experiences", "2", "--hidden-size", "16",
                   "--epochs", "1", "--sweep", "lr=0.01,0.1", "--logdir",
                   str(logdir), "--no-progress", "--no-tensorboard",
                   "--minibatch-metrics", "--compilation-cache", ""])
  assert code == 0
  results = json.loads((logdir / "results.json").read_text())
  assert results["labels"] == [0.01, 0.1]
  assert results["config"]["lr"] is None  # The labels hold the swept ones.
  # Each run's accuracies before training (one per test experience).
  assert [len(a) for a in results["initial_accuracies"]] == [2, 2]
  per_run = results["metrics_per_run"]["stream_accuracy"]
  assert len(per_run) == 2 and per_run[0] != per_run[1]
  assert results["metrics"]["stream_accuracy"] == pytest.approx(sum(per_run) / 2)
  assert len(results["accuracy_matrices"]) == 2
  # Both runs' final confusion counts, summed: each counts the 1,000 test
  # digits once.
  confusion = np.array(results["confusion_matrix"])
  assert confusion.shape == (10, 10) and confusion.sum() == 2 * 1000
  # The logs keep the values apart: each one's stream accuracy after the
  # last experience, no mean over learning rates.
  last = [json.loads(line) for line in
          (logdir / "metrics.jsonl").read_text().splitlines()
          if '"eval/stream/accuracy' in line][-1]
  assert [last[f"eval/stream/accuracy/value={v}"] for v in ("0.01", "0.1")] \
      == pytest.approx(per_run)
  assert "eval/stream/accuracy" not in last
  assert "eval/stream/accuracy_std" not in last
  step_rows = [json.loads(line) for line in
               (logdir / "metrics.jsonl").read_text().splitlines()
               if '"minibatch/loss' in line]
  assert set(step_rows[0]) == {"step"} | {
      f"minibatch/{name}/value={v}" for name in ("loss", "accuracy")
      for v in ("0.01", "0.1")}
  for value in ("lr=0.01", "lr=0.1"):
    assert (logdir / f"accuracy_matrix_{value}.png").is_file()
    assert (logdir / f"confusion_matrix_{value}.png").is_file()
  # The console prints each value's matrix and metrics.
  printed = capsys.readouterr().out
  for value, accuracy in zip(("lr=0.01", "lr=0.1"), per_run):
    table = printed.split(f"test experience j), {value}\n")[1].split(
        "Accuracy matrix")[0]
    shown = dict(line.split() for line in table.splitlines()
                 if line.startswith("stream_accuracy "))
    assert float(shown["stream_accuracy"]) == pytest.approx(accuracy,
                                                             abs=1e-4)


def test_seeds_and_sweep_together_are_refused(tmp_path, capsys):
  code = cli.main(["run", "--seeds", "0,1", "--sweep", "lr=0.1,0.2",
                   "--logdir", str(tmp_path / "x")])
  assert code == 2 and "cannot be combined" in capsys.readouterr().err
  # A hyperparameter both set and swept: the record would name the wrong one.
  code = cli.main(["run", "--strategy", "ewc", "--sweep", "ewc_lambda=1,2",
                   "--ewc-lambda", "5", "--logdir", str(tmp_path / "y")])
  assert code == 2 and ("--ewc-lambda 5.0 and --sweep ewc_lambda=... both "
                        "set ewc_lambda") in capsys.readouterr().err


def test_early_stopping_mode_follows_the_metric():
  def mode(*flags):
    args = cli.build_parser().parse_args(
        ["run", "--periodic-stream", "test", *flags])
    cli._check_args(args)
    return cli._watch_kwargs(args)["early_stopping"].mode

  assert mode("--early-stopping", "2") == "max"
  assert mode("--early-stopping", "2", "--early-stopping-metric", "loss") == (
      "min")
  assert mode("--early-stopping", "2", "--early-stopping-metric", "loss",
              "--early-stopping-mode", "max") == "max"


def test_lr_schedule_spans_the_steps_the_strategy_trains():
  bench = make_benchmark(n_classes=4, n_experiences=2, per_class=12)

  def length(strategy, reset):
    args = argparse.Namespace(lr_schedule="linear", lr=1.0, epochs=1,
                              batch_size=8, seed=0, reset_schedule=reset,
                              reset_optimizer=False)
    lr = cli._learning_rate(args, strategy, bench)
    return next(t for t in range(100) if float(lr(t)) == 0.0)
  # 24 samples per experience, batch 8: 3 steps each; cumulative trains
  # 24 then 48 samples: 3 then 6 steps.
  assert length(naive(), reset=False) == 6
  assert length(cumulative(), reset=False) == 9
  assert length(cumulative(), reset=True) == 6


@pytest.mark.parametrize("strategy", ["naive", "cumulative"])
def test_lr_schedule_plateau_chains_reduce_on_plateau_over_an_epoch(
    tmp_path, monkeypatch, strategy):
  given = []

  def fit(model, strategy, optimizer, *args, **kwargs):
    given.append(optimizer)
    raise KeyboardInterrupt  # Stops the run once fit is called.

  monkeypatch.setattr(jaxcl, "fit", fit)
  with pytest.raises(KeyboardInterrupt):
    cli.main(["run", "--n-experiences", "2", "--lr-schedule", "plateau",
              "--plateau-patience", "0", "--plateau-factor", "0.5",
              "--strategy", strategy, "--batch-size", "100", "--lr", "0.1",
              "--logdir", str(tmp_path / "run"), "--quiet", "--no-progress",
              "--no-tensorboard", "--compilation-cache", ""])
  params = {"w": jnp.ones(2)}
  optimizer = given[0]
  state = optimizer.init(params)
  assert isinstance(state[-1], optax.contrib.ReduceLROnPlateauState)
  # An epoch of the larger experience as the strategy trains it, in
  # batches of 100 (cumulative's second holds both).
  sizes = [len(e) for e in jaxcl.benchmarks.split_mnist(
      n_experiences=2).train_stream]
  epoch = -(-(sum(sizes) if strategy == "cumulative" else max(sizes)) // 100)
  grads = {"w": jnp.ones(2)}
  update = jax.jit(optimizer.update)  # As fit runs it; one compile.
  # Window 1 sets the best loss; window 2 beats it by 2e-4, more than
  # PyTorch's relative threshold of 1e-4; window 3 does not, a plateau of
  # patience 0 that halves the scale once the window closes.
  for step in range(3 * epoch):
    value = 1.0 if step < epoch else 1.0 - 2e-4
    updates, state = update(grads, state, params, value=value)
    assert float(state[-1].scale) == (0.5 if step == 3 * epoch - 1 else 1.0)
  np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * np.ones(2))


def test_the_mean_accuracy_matrix_covers_the_runs_that_stayed_finite():
  run = lambda matrix, nonfinite: argparse.Namespace(
      accuracy_matrix=np.array(matrix), nonfinite=nonfinite)
  runs = [run([[1.0, 0.0], [0.4, 1.0]], None),
          run([[0.5, 0.0], [np.nan, np.nan]], (1, 6)),
          run([[0.8, 0.2], [0.6, 0.9]], None)]
  result = argparse.Namespace(
      runs=runs, accuracy_matrices=np.stack([r.accuracy_matrix for r in runs]))
  # Every row over runs 0 and 2, including the row before run 1 diverged.
  np.testing.assert_allclose(cli._accuracy_matrix(result),
                             [[0.9, 0.1], [0.5, 0.95]])
  for r in runs:
    r.nonfinite = (0, 0)
  assert np.isnan(cli._accuracy_matrix(result)).all()
