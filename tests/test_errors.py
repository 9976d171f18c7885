"""The bad-input catalogue: every refusal names the argument, the value and
what was expected, comes before anything is compiled, and leaves an existing
checkpoint (and log folder) as it was. docs/errors.md lists the same cases.
"""

import contextlib
import dataclasses
import hashlib
import io
import pathlib
import shutil
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
import optax
import pytest
from conftest import make_benchmark

import jaxcl
from jaxcl import checkpoint, cli
from jaxcl.benchmarks import class_incremental, sources
from jaxcl.strategies import REGISTRY, Strategy, chain, from_spec, naive


class Paths(NamedTuple):
  ckpt: pathlib.Path  # A good checkpoint of the standard run of _fit.
  tmp: pathlib.Path


class Case(NamedTuple):
  name: str
  call: Callable[[Paths], object]
  error: type
  match: str  # A regular expression the message must contain.
  prepare: Callable[[Paths], None] | None = None


class CliExit(Exception):
  """The command exited with status 2; the message is its stderr."""


def _fit(paths: Paths, *, model=None, strategy=None, optimizer=None,
         benchmark=None, **kwargs):
  """The standard tiny run, with one argument replaced."""
  return jaxcl.fit(
      model or jaxcl.models.MLP(num_classes=4, hidden_size=8, drop_rate=0.0),
      strategy or naive(), optimizer or optax.sgd(0.1),
      benchmark or make_benchmark(), **{"checkpoint_dir": paths.ckpt, **kwargs})


def _with_train_inputs(benchmark, index: int, change):
  """``benchmark`` with ``change`` applied to train experience ``index``'s
  inputs."""
  stream = list(benchmark.train_stream)
  stream[index] = dataclasses.replace(stream[index],
                                      x=change(stream[index].x))
  return dataclasses.replace(
      benchmark, train_stream=jaxcl.benchmarks.Stream("train", stream))


def _too_few_heads(heads: int, n_tasks: int):
  """A fit of an MTMLP with ``heads`` heads on a benchmark whose experiences
  carry task labels 0 and 1 and that counts ``n_tasks``."""
  return lambda p: _fit(
      p, model=jaxcl.models.MTMLP(num_classes=4, n_tasks=heads),
      benchmark=dataclasses.replace(make_benchmark(return_task_id=True),
                                    n_tasks=n_tasks))


def _cli(paths: Paths, *args: str):
  """Runs ``jaxcl run ARGS``; raises CliExit(stderr) if it exits with 2."""
  logdir = paths.tmp / "logdir"
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    try:
      # The last occurrence of a flag wins: ARGS override these defaults.
      code = cli.main(["run", "--logdir", str(logdir), "--no-progress",
                       "--no-tensorboard", "--quiet", "--compilation-cache",
                       "", "--checkpoint-dir", str(paths.ckpt), *args])
    except SystemExit as e:  # argparse's own refusals.
      code = e.code
  assert not logdir.exists(), "the log folder was created"
  if code == 2:
    raise CliExit(err.getvalue())
  return code


def _fit_in_64_bits(paths: Paths):
  """The standard run with ``jax_enable_x64`` on."""
  jax.config.update("jax_enable_x64", True)
  try:
    return _fit(paths)
  finally:
    jax.config.update("jax_enable_x64", False)


def _data():
  """Two classes of samples: (x, y)."""
  first = make_benchmark().train_stream[0]
  return first.x, first.y


def _with_nan():
  x, y = _data()
  x = x.copy()
  x[1, 2] = np.nan
  return class_incremental((x, y), (x, y), 2)


def _damage_all(paths: Paths) -> None:
  for meta in paths.ckpt.glob("*/meta/metadata"):
    meta.write_text("{truncated")


def _file(paths: Paths) -> pathlib.Path:
  target = paths.tmp / "a_file"
  target.write_text("keep me")
  return target


CASES = [
    # fit: arguments.
    Case("fit batch_size=0", lambda p: _fit(p, batch_size=0), ValueError,
         r"batch_size must be a positive integer, got 0\."),
    Case("fit epochs=1.5", lambda p: _fit(p, epochs=1.5), TypeError,
         r"epochs must be a positive integer, got 1\.5 of type float"),
    Case("fit epochs=0", lambda p: _fit(p, epochs=0), ValueError,
         r"epochs must be a positive integer, got 0\."),
    Case("fit with jax_enable_x64", _fit_in_64_bits, ValueError,
         r"jax_enable_x64=True: jaxcl runs its programs with 32-bit integers "
         r"and floats; expected jax_enable_x64=False"),
    Case("fit eval_batch_size=-4", lambda p: _fit(p, eval_batch_size=-4),
         ValueError, r"eval_batch_size must be a positive integer, got -4"),
    Case("fit reset_optimizer='no'", lambda p: _fit(p, reset_optimizer="no"),
         TypeError, r"reset_optimizer must be True or False, got 'no'"),
    Case("fit writer='logs'", lambda p: _fit(p, writer="logs"), TypeError,
         r"writer must be a clu MetricWriter .* got 'logs', which lacks "
         r"write_scalars, flush"),
    Case("fit train experiences of two input dtypes",
         lambda p: _fit(p, benchmark=_with_train_inputs(
             make_benchmark(), 1, lambda x: x.astype(np.float16))),
         ValueError, r"experience 1 of the train stream has inputs of dtype "
         r"float16; expected float32, the dtype of the first train "
         r"experience \(the programs compile for one\)"),
    Case("fit multi-head model with too few heads", _too_few_heads(1, 2),
         ValueError, r"model has n_tasks=1 heads but the benchmark needs 2 "
         r"\(its experiences carry task labels up to 1\); expected "
         r"n_tasks >= 2\.$"),
    Case("fit multi-head model on task labels the benchmark does not count",
         _too_few_heads(1, 1), ValueError,
         r"model has n_tasks=1 heads but the benchmark needs 2 "
         r"\(its experiences carry task labels up to 1\)"),
    Case("fit multi-head model with fewer heads than Benchmark.n_tasks",
         _too_few_heads(2, 3), ValueError,
         r"model has n_tasks=2 heads but the benchmark needs 3 "
         r"\(it has n_tasks=3\)"),
    Case("fit forward_transfer without the evaluation before training",
         lambda p: _fit(p, metrics=["forward_transfer"],
                        eval_before_training=False),
         ValueError, r"metrics selects 'forward_transfer', .* but "
         r"eval_before_training=False"),
    Case("fit seeds=5", lambda p: _fit(p, seeds=5), TypeError,
         r"seeds must be a sequence of ints such as \[0, 1, 2\], got 5"),
    Case("fit seed='0'", lambda p: _fit(p, seed="0"), TypeError,
         r"seed must be an integer in \[0, 2\*\*32\), got '0'"),
    Case("fit seeds=[0, 1.5]", lambda p: _fit(p, seeds=[0, 1.5]), TypeError,
         r"seeds\[1\] must be an integer in \[0, 2\*\*32\), got 1.5"),
    Case("sweep values='0.1,1'", lambda p: jaxcl.sweep(
        jaxcl.models.MLP(4), make_benchmark(), "0.1,1",
        strategy=lambda v: naive(), optimizer=optax.sgd(0.1)), TypeError,
         r"values must be a sequence of the values to run, such as "
         r"\[0.1, 1.0\], got '0.1,1'"),
    Case("sweep values=0.1", lambda p: jaxcl.sweep(
        jaxcl.models.MLP(4), make_benchmark(), 0.1,
        strategy=lambda v: naive(), optimizer=optax.sgd(0.1)), TypeError,
         r"values must be a sequence .*got 0.1"),
    Case("fit seeds=[]", lambda p: _fit(p, seeds=[]), ValueError,
         r"seeds must hold at least one seed, got \[\]"),
    Case("fit optimizer=0.1", lambda p: _fit(p, optimizer=0.1), TypeError,
         r"optimizer must be an optax.GradientTransformation .*got float"),
    Case("fit strategy='ewc'", lambda p: _fit(p, strategy="ewc"), TypeError,
         r"strategy must be a jaxcl Strategy .*got str"),
    Case("fit empty test stream",
         lambda p: _fit(p, benchmark=dataclasses.replace(
             make_benchmark(), test_stream=jaxcl.benchmarks.Stream("test", []))),
         ValueError, r"benchmark\.test_stream is empty; expected experiences"),
    Case("fit benchmark=arrays", lambda p: _fit(p, benchmark=_data()),
         TypeError, r"benchmark must be a jaxcl Benchmark, got tuple"),
    Case("fit model='mlp'", lambda p: _fit(p, model="mlp"), TypeError,
         r"model must be a flax.linen.Module or jaxcl.models.Model, got str"),
    Case("fit model with 3 outputs for 4 classes",
         lambda p: _fit(p, model=jaxcl.models.MLP(3, hidden_size=4)),
         ValueError, r"logits of shape \(3,\) per sample; expected \(4,\)"),
    Case("fit MLP input_size=5 on 6 features",
         lambda p: _fit(p, model=jaxcl.models.MLP(4, input_size=5)),
         ValueError, r"inputs of shape \(6,\).*input_size=5 but the inputs "
         r"have 6 features"),
    Case("fit CNN on flat inputs (wrong image shape)",
         lambda p: _fit(p, model=jaxcl.models.MODELS["simple_cnn"](4)),
         ValueError, r"inputs of shape \(6,\).*expects images"),
    Case("fit metrics=['acuracy']", lambda p: _fit(p, metrics=["acuracy"]),
         ValueError, r"Unknown metric 'acuracy'; expected one of .*Did you "
         r"mean 'accuracy'\?"),
    Case("fit periodic_eval on a missing valid stream",
         lambda p: _fit(p, periodic_eval=jaxcl.PeriodicEval()), ValueError,
         r"periodic_eval.stream='valid' but the benchmark has no valid_stream"),
    Case("fit periodic_eval unit='epochs'",
         lambda p: _fit(p, periodic_eval=jaxcl.PeriodicEval(
             unit="epochs", stream="test")), ValueError,
         r"Unknown periodic_eval.unit 'epochs'.*Did you mean 'epoch'\?"),
    Case("fit early_stopping patience=0",
         lambda p: _fit(p, early_stopping=jaxcl.EarlyStopping(0),
                        periodic_eval=jaxcl.PeriodicEval(stream="test")),
         ValueError, r"early_stopping.patience must be a positive integer"),
    Case("fit early_stopping margin=-1",
         lambda p: _fit(p, early_stopping=jaxcl.EarlyStopping(2, margin=-1.0),
                        periodic_eval=jaxcl.PeriodicEval(stream="test")),
         ValueError, r"early_stopping.margin must be in \[0, inf\), got -1\.0"),
    Case("fit early_stopping patience below periodic_eval every",
         lambda p: _fit(p, early_stopping=jaxcl.EarlyStopping(2),
                        periodic_eval=jaxcl.PeriodicEval(every=5,
                                                         stream="test")),
         ValueError, r"early_stopping's patience=2 is below periodic_eval's "
         r"every=5: every experience would stop after 2 epoch\(s\), before "
         r"its first evaluation; expected patience >= every"),
    Case("fit device_memory_budget_mb=0",
         lambda p: _fit(p, device_memory_budget_mb=0), ValueError,
         r"device_memory_budget_mb must be in \(0, inf\), got 0"),
    Case("fit streamed stream with early stopping",
         lambda p: _fit(p, device_memory_budget_mb=1e-4,
                        early_stopping=jaxcl.EarlyStopping(2),
                        periodic_eval=jaxcl.PeriodicEval(stream="test")),
         ValueError, r"exceeds device_memory_budget_mb=.*periodic evaluation"),
    # fit: checkpoints.
    Case("fit checkpoint_dir is a file",
         lambda p: _fit(p, checkpoint_dir=_file(p)), ValueError,
         r"checkpoint_dir '.*a_file' is a file; expected a folder"),
    Case("fit checkpoint_dir inside a file",
         lambda p: _fit(p, checkpoint_dir=_file(p) / "ckpt"), ValueError,
         r"checkpoint_dir '.*a_file/ckpt' is inside the file '.*a_file'; "
         r"expected a folder"),
    Case("fit checkpoint_keep=0", lambda p: _fit(p, checkpoint_keep=0),
         ValueError, r"checkpoint_keep must be a positive integer, got 0"),
    Case("fit checkpoint of another configuration",
         lambda p: _fit(p, epochs=2), checkpoint.CheckpointError,
         r"checkpoint 2 in checkpoint_dir '.*' was written by a different "
         r"configuration.*epochs: checkpoint has 1, this run has 2"),
    Case("fit corrupt checkpoints", _fit, checkpoint.CheckpointError,
         r"no usable checkpoint in checkpoint_dir '.*': checkpoint 2: "
         r"JSONDecodeError.*checkpoint 1: JSONDecodeError", _damage_all),
    # Benchmarks and data.
    Case("class_incremental NaN inputs", lambda p: _with_nan(), ValueError,
         r"NaN or infinite values; expected finite inputs"),
    Case("class_incremental n_experiences=3 for 2 classes",
         lambda p: class_incremental(_data(), _data(), 3), ValueError,
         r"n_experiences=3 does not divide the 2 classes"),
    Case("class_incremental n_experiences=2.5",
         lambda p: class_incremental(_data(), _data(), 2.5), TypeError,
         r"n_experiences must be a positive integer, got 2\.5"),
    Case("class_incremental fixed_class_order=[0, 0]",
         lambda p: class_incremental(_data(), _data(), 2,
                                     fixed_class_order=[0, 0]),
         ValueError, r"fixed_class_order.*permutation of the classes"),
    Case("class_incremental float labels",
         lambda p: class_incremental((_data()[0], _data()[1] * 1.0), _data(),
                                     2),
         TypeError, r"labels must be integers"),
    Case("class_incremental test label out of range",
         lambda p: class_incremental(_data(), (_data()[0][:1], [9]), 2),
         ValueError, r"test labels \[9\] are out of range"),
    Case("split_mnist data_dir empty",
         lambda p: jaxcl.benchmarks.split_mnist(data_dir=p.tmp), ValueError,
         r"Cannot load split 'train' of tfds dataset 'mnist' from .*: it is "
         r"not prepared there.*tfds build mnist --data_dir"),
    Case("load_bundled unknown name",
         lambda p: sources.load_bundled("cifar_bundled", "train"), ValueError,
         r"cifar_bundled.*digits_bundled.*mnist_bundled"),
    Case("enable_compilation_cache on a file",
         lambda p: jaxcl.enable_compilation_cache(_file(p)), ValueError,
         r"folder must be a directory for the compilation cache, but "
         r"folder='.*a_file' is a file"),
    # Strategies.
    Case("from_spec unknown name", lambda p: from_spec("naiv"), ValueError,
         r"Unknown strategy 'naiv'; expected one of .*Did you mean 'naive'"),
    Case("from_spec unused hyperparameter",
         lambda p: from_spec("naive", mem_size=3), ValueError,
         r"hyperparameters \['mem_size'\] are not used by strategy 'naive'; "
         r"it takes \[\]\.$"),
    Case("from_spec value that is not a literal",
         lambda p: from_spec("lwf(alpha=x)"), ValueError,
         r"strategy spec 'lwf\(alpha=x\)': cannot read 'lwf\(alpha=x\)' "
         r"\(the value of alpha, 'x', is not a Python literal\); expected "
         r"strategy names joined by '\+'"),
    Case("from_spec values after a second pair of parentheses",
         lambda p: from_spec("lwf(alpha=2)(temperature=3)"), ValueError,
         r"cannot read 'lwf\(alpha=2\)\(temperature=3\)' \(expected one "
         r"pair of parentheses holding PARAM=VALUE pairs\)"),
    Case("from_spec own value of a parameter the strategy lacks",
         lambda p: from_spec("lwf(beta=1)+mas"), ValueError,
         r"strategy spec 'lwf\(beta=1\)\+mas': lwf takes no beta; expected "
         r"one of \['alpha', 'temperature'\]"),
    Case("from_spec invalid own value",
         lambda p: from_spec("lwf(alpha=-1)+mas", alpha=0.5), ValueError,
         r"lwf\(alpha=-1\): alpha must be in \[0, inf\), got -1"),
    Case("from_spec shared value every strategy sets itself",
         lambda p: from_spec("lwf(alpha=2)", alpha=0.5), ValueError,
         r"hyperparameters \['alpha'\] are not used by strategy "
         r"'lwf\(alpha=2\)'; it takes \['temperature'\] \(values the spec "
         r"gives a strategy itself win\)"),
    Case("replay batch_size_mem > mem_size",
         lambda p: from_spec("replay", mem_size=50, batch_size_mem=5000),
         ValueError, r"batch_size_mem=5000 exceeds mem_size=50; expected at "
         r"most the memory's capacity"),
    Case("chain of a non-strategy", lambda p: chain(naive(), "ewc"),
         TypeError, r"chain argument 1"),
    Case("chain of two prediction rules",
         lambda p: chain(Strategy(name="a", predict=lambda *a: None),
                         Strategy(name="b", predict=lambda *a: None)),
         ValueError, r"\['a', 'b'\] all replace `predict`"),
    # The command line.
    Case("cli --benchmark split_mnst", lambda p: _cli(p, "--benchmark",
                                                       "split_mnst"),
         CliExit, r"Unknown --benchmark 'split_mnst'.*Did you mean "
         r"'split_mnist'"),
    Case("cli --periodic-stream train",
         lambda p: _cli(p, "--periodic-eval", "1", "--periodic-stream",
                        "train"),
         CliExit, r"Unknown --periodic-stream 'train'; expected one of test, "
         "valid"),
    Case("cli --early-stopping-metric f1",
         lambda p: _cli(p, "--early-stopping", "1", "--periodic-stream",
                        "test", "--early-stopping-metric", "f1"),
         CliExit, r"Unknown --early-stopping-metric 'f1'"),
    Case("cli --early-stopping-margin -1",
         lambda p: _cli(p, "--early-stopping", "1", "--periodic-stream",
                        "test", "--early-stopping-margin", "-1"),
         CliExit, r"--early-stopping-margin must be in \[0, inf\), got -1"),
    # Beyond float32 they trained into a NaN loss after compiling.
    Case("cli --lr 1e40", lambda p: _cli(p, "--lr", "1e40"), CliExit,
         r"--lr=1e\+40 is outside float32's range, in which jaxcl keeps it; "
         r"expected a value between 1.18e-38 and 3.4e\+38"),
    Case("cli --ewc-lambda 1e40",
         lambda p: _cli(p, "--strategy", "ewc", "--ewc-lambda", "1e40"),
         CliExit, r"--ewc-lambda=1e\+40 is outside float32's range"),
    Case("fit lwf alpha list beyond float32",
         lambda p: _fit(p, strategy=jaxcl.strategies.lwf(alpha=[1, 1e40])),
         ValueError, r"alpha\[1\]=1e\+40 is outside float32's range"),
    # 0 was dropped from the rewording: the message named image_size.
    Case("cli --image-size 0",
         lambda p: _cli(p, "--benchmark", "split_imagenet", "--image-size",
                        "0"),
         CliExit, r"error: --image-size must be one of \(8, 16, 32, 64\)"),
    # Nothing trains with the optimizer: the flags changed nothing.
    Case("cli --lr with streaming_lda",
         lambda p: _cli(p, "--strategy", "streaming_lda+replay", "--lr",
                        "0.5"),
         CliExit, r"--lr 0.5 has no effect: --strategy streaming_lda\+replay "
         r"trains no parameter with the optimizer"),
    Case("cli --sweep lr with la_maml",
         lambda p: _cli(p, "--strategy", "la_maml", "--sweep", "lr=0.1,0.2"),
         CliExit, r"--sweep lr=0.1,0.2 has no effect: --strategy la_maml "
         r"trains no parameter with the optimizer, so every value gives the "
         r"same run"),
    Case("cli --model mpl", lambda p: _cli(p, "--model", "mpl"), CliExit,
         r"Unknown --model 'mpl'; expected one of .*Did you mean 'mlp'"),
    Case("cli --strategy naiv", lambda p: _cli(p, "--strategy", "naiv"),
         CliExit, r"Unknown strategy 'naiv'"),
    Case("cli --n-experiences 3", lambda p: _cli(p, "--n-experiences", "3"),
         CliExit, r"error: --n-experiences=3 does not divide the 10 classes"),
    Case("cli --strategy ewc --mode foo",
         lambda p: _cli(p, "--strategy", "ewc", "--mode", "foo"), CliExit,
         r"error: --strategy ewc --mode foo: Unknown ewc mode 'foo'"),
    Case("cli --strategy naive --ewc-lambda 5",
         lambda p: _cli(p, "--ewc-lambda", "5"), CliExit,
         r"--ewc-lambda 5.0 has no effect: --strategy naive does not "
         r"use it; expected to leave it out \(its flags: none\)"),
    Case("cli --alpha that the spec sets itself",
         lambda p: _cli(p, "--strategy", "lwf(alpha=2)", "--alpha", "0.5"),
         CliExit, r"--alpha 0.5 has no effect: --strategy lwf\(alpha=2\) sets "
         r"alpha itself; expected to leave it out \(its flags: "
         r"--temperature\)"),
    Case("cli --strategy with a bad value of its own",
         lambda p: _cli(p, "--strategy", "replay(mem_size=0)"), CliExit,
         r"error: replay\(mem_size=0\): mem_size must be a positive integer, "
         r"got 0"),
    Case("cli --strategy with a bad value of its own and the flag for another",
         lambda p: _cli(p, "--strategy", "replay+der(mem_size=0)",
                        "--mem-size", "100"), CliExit,
         r"error: der\(mem_size=0\): mem_size must be a positive integer, "
         r"got 0"),
    Case("cli --sweep of a value the spec sets itself",
         lambda p: _cli(p, "--strategy", "lwf(alpha=2)+mas(alpha=0.4)",
                        "--sweep", "alpha=0.1,1"), CliExit,
         r"--sweep alpha=... has no effect: --strategy "
         r"lwf\(alpha=2\)\+mas\(alpha=0.4\) sets alpha itself; expected a "
         r"hyperparameter it leaves open \(one of lambda_reg, lr, "
         r"temperature\)"),
    Case("cli --sweep with a bad later value",
         lambda p: _cli(p, "--strategy", "ewc", "--sweep",
                        "ewc_lambda=1,-1"), CliExit,
         r"--sweep ewc_lambda=-1: ewc_lambda must be in \[0, inf\)"),
    Case("cli --lr with --sweep lr",
         lambda p: _cli(p, "--lr", "0.5", "--sweep", "lr=0.01,0.1"), CliExit,
         r"--lr 0.5 has no effect: --sweep lr=... sets the learning rates"),
    Case("cli --strategy ewc+ewc",
         lambda p: _cli(p, "--strategy", "ewc+ewc"), CliExit,
         r"--strategy 'ewc\+ewc' names ewc more than once"),
    Case("cli --model simple_cnn --hidden-size 64",
         lambda p: _cli(p, "--model", "simple_cnn", "--hidden-size", "64"),
         CliExit, r"--hidden-size 64 has no effect: --model simple_cnn does "
         r"not use it; expected to leave it out"),
    Case("cli --benchmark core50 --n-experiences 3",
         lambda p: _cli(p, "--benchmark", "core50", "--n-experiences", "3"),
         CliExit, r"--n-experiences 3 has no effect: --benchmark core50 does "
         r"not use it"),
    Case("cli --run for a benchmark without official runs",
         lambda p: _cli(p, "--run", "2"), CliExit,
         r"--run 2 has no effect: --benchmark split_mnist does not use it; "
         r"expected to leave it out"),
    Case("cli --factor for a benchmark without factors",
         lambda p: _cli(p, "--benchmark", "core50", "--factor", "pixel"),
         CliExit, r"--factor pixel has no effect: --benchmark core50 does "
         r"not use it; expected to leave it out"),
    Case("cli core50 --scenario nicv2_391 without --run",
         lambda p: _cli(p, "--benchmark", "core50", "--scenario",
                        "nicv2_391", "--data-dir", str(p.tmp)), CliExit,
         r"--scenario='nicv2_391' needs --run=0\.\.9: it exists only as "
         r"CORe50's official file lists; expected a run, or "
         r"--scenario='ni' or 'nc'"),
    Case("cli core50 --run 12",
         lambda p: _cli(p, "--benchmark", "core50", "--run", "12",
                        "--data-dir", str(p.tmp)), CliExit,
         r"--benchmark core50 --run 12: run must be one of CORe50's ten "
         r"official runs, 0\.\.9, got 12"),
    Case("cli --reset-schedule with a constant schedule",
         lambda p: _cli(p, "--reset-schedule"), CliExit,
         r"--reset-schedule has no effect: --lr-schedule is constant"),
    Case("cli --checkpoint-keep without --checkpoint-dir",
         lambda p: _cli(p, "--checkpoint-dir", "", "--checkpoint-keep", "3"),
         CliExit,
         r"--checkpoint-keep 3 has no effect: no --checkpoint-dir is given"),
    Case("cli --early-stopping-metric without --early-stopping",
         lambda p: _cli(p, "--early-stopping-metric", "loss"), CliExit,
         r"--early-stopping-metric loss has no effect: --early-stopping is "
         r"not given"),
    Case("cli --periodic-unit without --periodic-eval",
         lambda p: _cli(p, "--periodic-unit", "step"), CliExit,
         r"--periodic-unit step has no effect: neither --periodic-eval nor "
         r"--early-stopping is given"),
    Case("cli --epochs 1.5", lambda p: _cli(p, "--epochs", "1.5"), CliExit,
         r"argument --epochs: invalid int value: '1\.5'"),
    Case("cli --epochs 0", lambda p: _cli(p, "--epochs", "0"), CliExit,
         r"--epochs must be a positive integer, got 0"),
    Case("cli --batch-size 0", lambda p: _cli(p, "--batch-size", "0"),
         CliExit, r"--batch-size must be a positive integer, got 0"),
    Case("cli --lr -1", lambda p: _cli(p, "--lr", "-1"), CliExit,
         r"--lr must be in \(0, inf\), got -1\.0"),
    Case("cli --momentum 1.5", lambda p: _cli(p, "--momentum", "1.5"),
         CliExit, r"--momentum must be in \[0, 1\), got 1\.5"),
    Case("cli --drop-rate 1", lambda p: _cli(p, "--drop-rate", "1"), CliExit,
         r"--drop-rate must be in \[0, 1\), got 1\.0"),
    Case("cli --logdir is a file",
         lambda p: _cli(p, "--logdir", str(_file(p))), CliExit,
         r"--logdir '.*a_file' is a file; expected a folder"),
    Case("cli --logdir inside a file",
         lambda p: _cli(p, "--logdir", str(_file(p) / "run")), CliExit,
         r"--logdir '.*a_file/run' is inside the file '.*a_file'; expected"),
    Case("cli --logdir ''", lambda p: _cli(p, "--logdir", ""), CliExit,
         r"--logdir '' names no folder; expected a folder path \(leave the "
         r"flag out for runs/<timestamp>\)"),
    Case("cli --checkpoint-dir that cannot be created",
         lambda p: _cli(p, "--checkpoint-dir", "/proc/jaxcl_no_folder"),
         CliExit, r"--checkpoint-dir '/proc/jaxcl_no_folder' cannot be "
         r"created: .*Error"),
    Case("cli --coordinator-address without a port",
         lambda p: _cli(p, "--distributed", "--coordinator-address", "host"),
         CliExit, r"--coordinator-address must be HOST:PORT with a port in "
         r"\[1, 65535\], got 'host'"),
    Case("cli --n-experiences typed for core50 (which takes none)",
         lambda p: _cli(p, "--benchmark", "core50", "--n-experiences", "5"),
         CliExit, r"--n-experiences 5 has no effect: --benchmark core50 "
         r"does not use it; expected to leave it out"),
    Case("cli --compilation-cache that cannot be created",
         lambda p: _cli(p, "--compilation-cache", "/proc/jaxcl_no_cache"),
         CliExit, r"--compilation-cache '/proc/jaxcl_no_cache' cannot be "
         r"created: .*Error"),
    Case("cli mir --batch-size-mem above --subsample",
         lambda p: _cli(p, "--strategy", "mir", "--subsample", "1",
                        "--batch-size-mem", "5"), CliExit,
         r"--batch-size-mem=5 must be at most --subsample=1"),
    Case("cli --checkpoint-dir is a file",
         lambda p: _cli(p, "--checkpoint-dir", str(_file(p))), CliExit,
         r"--checkpoint-dir '.*a_file' is a file; expected a folder"),
    Case("cli --checkpoint-dir ''", lambda p: _cli(p, "--checkpoint-dir", ""),
         CliExit, r"--checkpoint-dir '' names no folder; expected a folder "
         r"path \(leave the flag out"),
    Case("cli --compilation-cache is a file",
         lambda p: _cli(p, "--compilation-cache", str(_file(p))), CliExit,
         r"--compilation-cache '.*a_file' is a file; expected a folder"),
    Case("cli --online-size -1", lambda p: _cli(p, "--online-size", "-1"),
         CliExit, r"--online-size must be a positive integer, got -1"),
    Case("cli --checkpoint-keep 0", lambda p: _cli(p, "--checkpoint-keep", "0"),
         CliExit, r"--checkpoint-keep must be a positive integer, got 0"),
    Case("cli --device-memory-budget-mb 0",
         lambda p: _cli(p, "--device-memory-budget-mb", "0"), CliExit,
         r"--device-memory-budget-mb must be in \(0, inf\), got 0.0"),
    Case("cli --seeds 0,x", lambda p: _cli(p, "--seeds", "0,x"), CliExit,
         r"--seeds must be a comma-separated list of int values, got '0,x'"),
    Case("cli --sweep lr", lambda p: _cli(p, "--sweep", "lr"), CliExit,
         r"--sweep must look like NAME=V1,V2,\.\.\., got 'lr'"),
    Case("cli --sweep with --seeds",
         lambda p: _cli(p, "--sweep", "lr=0.1,0.2", "--seeds", "0,1"),
         CliExit, r"--sweep and --seeds cannot be combined"),
    Case("cli --early-stopping without --validation-size",
         lambda p: _cli(p, "--early-stopping", "2"), CliExit,
         r"--periodic-stream valid, but there is no validation stream; pass "
         r"--validation-size"),
    Case("cli --lr-schedule cosin", lambda p: _cli(p, "--lr-schedule", "cosin"),
         CliExit, r"Unknown --lr-schedule 'cosin'.*Did you mean 'cosine'\?"),
    Case("cli --data-dir empty", lambda p: _cli(p, "--data-dir", str(p.tmp)),
         CliExit, r"tfds dataset 'mnist' from .*: it is not prepared there"),
]


def _registry_cases():
  """Sizes <= 0 and negative λ for every registered strategy taking them."""
  for name, entry in sorted(REGISTRY.items()):
    for param in sorted(entry.parameters):
      if param in ("mem_size", "memory_size", "patterns_per_exp"):
        yield Case(f"from_spec({name!r}, {param}=0)",
                   lambda p, n=name, k=param: from_spec(n, **{k: 0}),
                   ValueError, rf"{param} must be a positive integer, got 0")
      elif "lambda" in param:
        yield Case(f"from_spec({name!r}, {param}=-1)",
                   lambda p, n=name, k=param: from_spec(n, **{k: -1.0}),
                   ValueError, rf"{param} must be in \[0, inf\), got -1\.0")
  if {"gdumb", "cumulative"} <= REGISTRY.keys():
    yield Case("from_spec('gdumb+cumulative'): two data rules",
               lambda p: from_spec("gdumb+cumulative"), ValueError,
               r"\['gdumb', 'cumulative'\] all replace `adapt_data`")
  if "replay" in REGISTRY:
    yield Case("cli --strategy replay --mem-size 0",
               lambda p: _cli(p, "--strategy", "replay", "--mem-size", "0"),
               CliExit, r"error: --mem-size must be a positive integer, got 0")


CASES += list(_registry_cases())


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
  folder = tmp_path_factory.mktemp("good")
  paths = Paths(folder / "ckpt", folder)
  _fit(paths)
  return paths.ckpt


def _digest(folder: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob("*")) if p.is_file()}


def test_catalogue_has_at_least_25_cases_with_unique_names():
  assert len(CASES) >= 25
  assert len({c.name for c in CASES}) == len(CASES)


def test_the_compile_guard_catches_a_valid_run(tmp_path, no_compiling):
  with pytest.raises(AssertionError, match="compiled before"):
    _fit(Paths(tmp_path / "new", tmp_path))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_is_refused_clearly_before_compiling(case, good_checkpoint,
                                                       tmp_path, no_compiling):
  paths = Paths(pathlib.Path(shutil.copytree(good_checkpoint,
                                             tmp_path / "ckpt")),
                tmp_path / "work")
  paths.tmp.mkdir()
  if case.prepare is not None:
    case.prepare(paths)
  before = _digest(paths.ckpt)
  with pytest.raises(case.error, match=case.match):
    case.call(paths)
  assert _digest(paths.ckpt) == before, "the checkpoint was changed"
  for f in paths.tmp.glob("a_file"):
    assert f.read_text() == "keep me"
