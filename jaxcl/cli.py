"""The ``jaxcl`` command: run a strategy on a benchmark and write the results.

Example:
  $ jaxcl run --benchmark split_mnist --strategy naive --epochs 1 --logdir runs/x

``jaxcl run`` shows progress, prints the accuracy matrix and a final metrics
table, and writes into ``--logdir``: TensorBoard event files, ``metrics.jsonl``,
CSV files, a text log and ``results.json``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import inspect
import itertools
import json
import math
import numbers
import pathlib
import re
import shutil
import sys
import time
import warnings
from collections.abc import Collection, Sequence
from typing import Any

from jaxcl import compilation
from jaxcl.loggers.base import ForwardingWriter

__all__ = ["main", "build_parser"]


def _flag(name: str) -> str:
  return "--" + name.replace("_", "-")


def _in_flag_terms(error: Exception, given: dict[str, Any], context: str,
                   names: Sequence[str] = (),
                   switches: Collection[str] = ()) -> Exception:
  """``error`` of a Python API, reworded with the flags the user typed.

  The factories name their parameters (``n_experiences=7``); the CLI user
  typed ``--n-experiences 7``. Multi-word names (of ``given`` and
  ``names``) are replaced wherever they stand alone (they cannot be prose;
  not inside a path or quoted code); a message that names a one-word
  parameter (``Unknown ewc mode 'foo'``) gets ``context`` and the flags
  given as a prefix. Other messages (a host that failed to read) stay as
  they are. ``switches`` name flags typed without a value: their
  ``name=True`` becomes the flag alone.
  """
  message = str(error)
  for name in {*given, *names}:
    if name in switches:
      message = re.sub(rf"(?<![\w\-/.'`(]){name}=True\b", _flag(name),
                       message)
    if "_" in name:
      message = re.sub(rf"(?<![\w\-/.'`(]){name}\b(?![/.'`])", _flag(name),
                       message)
    else:  # An assignment (``subsample=1``) is never prose; a call's
      # keyword (``lwf(alpha=2)``) is code, left as it is.
      message = re.sub(rf"(?<![\w\-/.'`(]){name}=", f"{_flag(name)}=",
                       message)
  named = [name for name in given if "_" not in name
           and re.search(rf"(?<![\w-]){name}\b", message)]
  if named and "--" not in message:
    flags = " ".join(f"{_flag(name)} {_as_typed(value)}"
                     for name, value in given.items())
    message = f"{context} {flags}: {message}"
  try:
    return type(error)(message)
  except Exception:  # An error type built from more than a message.
    return (TypeError if isinstance(error, TypeError) else ValueError)(message)


def _as_typed(value: Any) -> str:
  """A flag's value as it is typed (lists comma-separated)."""
  if isinstance(value, (list, tuple)):
    return ",".join(map(str, value))
  return str(value)


# The benchmark factories' switches: flags typed without a value.
_BENCHMARK_SWITCHES = ("full_resolution", "fast_decode", "shuffle_order",
                       "class_ids_from_zero_in_each_exp",
                       "class_ids_from_zero_from_first_exp")

_BOOLEANS = {"1": True, "true": True, "yes": True,
             "0": False, "false": False, "no": False}


def _flag_value(kind: type, sequence: bool = False):
  """Parses a flag value; for numbers, a comma-separated list gives a list
  (per-experience values such as LwF's ``alpha``), and with ``sequence``
  always a list."""
  def parse_one(text: str):
    if kind is bool:
      if text.lower() not in _BOOLEANS:
        raise argparse.ArgumentTypeError(
            f"invalid bool value: {text!r}; expected one of "
            f"{', '.join(_BOOLEANS)}")
      return _BOOLEANS[text.lower()]
    return kind(text)

  def parse(text: str):
    if sequence or (kind in (int, float) and "," in text):
      return [parse_one(v) for v in text.split(",")]
    return parse_one(text)
  parse.__name__ = kind.__name__  # argparse names the type in its errors.
  return parse


def _value_kind(value: Any) -> type | None:
  """bool, int, float or str for a default (NumPy scalars included)."""
  import numpy as np
  for kind, classes in ((bool, (bool, np.bool_)), (int, numbers.Integral),
                        (float, numbers.Real), (str, str)):
    if isinstance(value, classes):
      return kind
  return None


def _flag_kind(defaults: list[Any]) -> tuple[type, bool] | None:
  """A hyperparameter flag's value type, and whether it takes a list, from
  the factories' defaults (float when none has one); None when they
  disagree or are of other types (no flag: specs can still give it)."""
  sequence = any(isinstance(d, (list, tuple)) for d in defaults)
  values = [v for d in defaults
            for v in (d if isinstance(d, (list, tuple)) else [d])]
  kinds = {_value_kind(v) for v in values}
  if kinds == {int, float}:
    kinds = {float}
  if not kinds:
    return float, sequence
  if len(kinds) > 1 or None in kinds:
    return None
  return kinds.pop(), sequence


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """Shows a flag's default unless it is None or its help already says it
  (``--logdir``'s "default: runs/<timestamp>")."""

  def _get_help_string(self, action: argparse.Action) -> str:
    if action.default is None or "default:" in (action.help or ""):
      return action.help or ""
    return super()._get_help_string(action)


def _strategy_flags(parser: argparse.ArgumentParser) -> None:
  """One flag per hyperparameter of the registered strategies."""
  from jaxcl.strategies import REGISTRY
  group = parser.add_argument_group(
      "strategy hyperparameters",
      "Each applies to every strategy in --strategy that takes it (numbers "
      "may be comma-separated per-experience lists where the strategy allows "
      "it); unset flags keep each strategy's default.")
  defaults: dict[str, dict[str, Any]] = {}
  for entry in REGISTRY.values():
    for name, p in entry.parameters.items():
      defaults.setdefault(name, {})[entry.name] = p.default
  for name, by_strategy in sorted(defaults.items()):
    known = [d for d in by_strategy.values()
             if d is not None and d is not inspect.Parameter.empty]
    kind_and_sequence = _flag_kind(known)
    if kind_and_sequence is None:
      continue
    kind, sequence = kind_and_sequence
    shown = "; ".join(f"{s}: {d}" for s, d in by_strategy.items())
    metavar = kind.__name__.upper()
    try:
      group.add_argument(_flag(name), type=_flag_value(kind, sequence),
                         default=argparse.SUPPRESS,
                         metavar=f"{metavar},..." if sequence else metavar,
                         help=f"defaults: {shown}")
    except argparse.ArgumentError:
      raise ValueError(
          f"hyperparameter {name!r} of strategy {', '.join(by_strategy)} "
          f"would be the flag {_flag(name)}, which jaxcl run has already; "
          "rename the factory's parameter.") from None


def build_parser() -> argparse.ArgumentParser:
  """The argument parser of the ``jaxcl`` command."""
  return _parser(keep_defaults=True)


def _typed_flags(argv: Sequence[str] | None) -> frozenset[str]:
  """The names of the ``jaxcl run`` flags typed in ``argv``, whatever their
  values (a flag typed with its default value is typed too)."""
  return frozenset(vars(_parser(keep_defaults=False).parse_args(argv))) - {
      "command"}


def _parser(keep_defaults: bool) -> argparse.ArgumentParser:
  """The parser; without ``keep_defaults``, flags not typed stay unset."""
  from jaxcl.benchmarks import BENCHMARKS
  from jaxcl.models import BACKBONES, MODELS
  parser = argparse.ArgumentParser(
      prog="jaxcl", description="Continual learning in JAX.")
  sub = parser.add_subparsers(dest="command", required=True)
  run = sub.add_parser(
      "run", help="train a strategy over a benchmark and evaluate it",
      description="Train a strategy over a benchmark's train stream, evaluate "
      "on the test stream after every experience, and write the results.",
      formatter_class=_DefaultsHelpFormatter)
  data = run.add_argument_group("benchmark")
  data.add_argument("--benchmark", default="split_mnist",
                    help=f"one of: {', '.join(sorted(BENCHMARKS))}")
  data.add_argument("--n-experiences", type=int, default=None,
                    help="number of experiences of the stream (default: "
                    "the benchmark factory's own: 5 for split_mnist, 10 for "
                    "permuted_mnist and split_cifar100, 3 for "
                    "concon_disjoint, ...)")
  data.add_argument("--return-task-id", action="store_true",
                    help="give experience i task label i (task-incremental)")
  data.add_argument("--class-ids-from-zero-in-each-exp", action="store_true",
                    help="relabel each experience's classes 0..k-1 (with "
                    "--return-task-id: Avalanche's SplitCIFAR10/100 and "
                    "SplitTinyImageNet default); the split benchmarks "
                    "but split_cub200 and split_cifar110")
  data.add_argument("--class-ids-from-zero-from-first-exp",
                    action="store_true",
                    help="relabel the classes by their position in the "
                    "class order (experience 0 holds 0..k-1, the next the "
                    "following ids); the split benchmarks but split_cub200 "
                    "and split_cifar110")
  data.add_argument("--image-size", type=int, default=None,
                    help="image side of the benchmarks that offer several: "
                    "split_imagenet (8, 16, 32 or 64; default 64; any "
                    "with --full-resolution, default 224), split_cub200, "
                    "split_inaturalist, stream51, clear10 and clear100 "
                    "(resized on the host; default 224), concon_* "
                    "(default: the stored size), openloris "
                    "(default 50)")
  data.add_argument("--full-resolution", action="store_true",
                    help="split_imagenet: read tfds imagenet2012 (prepared "
                    "by hand) and resize its images on the host, as "
                    "Avalanche's SplitImageNet, instead of imagenet_resized "
                    "(--image-size default 224)")
  data.add_argument("--fast-decode", action="store_true",
                    help="split_inaturalist and split_imagenet "
                    "--full-resolution: decode the JPEG files at a reduced "
                    "scale where the images are much larger than "
                    "--image-size (faster; pixels close to, not the same "
                    "as, a full decode's)")
  data.add_argument("--shuffle-order", action="store_true",
                    help="concon_disjoint and concon_strict: shuffle the "
                    "order of the three tasks with --seed, as Avalanche's "
                    "shuffle_order")
  data.add_argument("--super-categories", default=None,
                    help="split_inaturalist's supercategories, "
                    "comma-separated, one experience each (default: "
                    "Avalanche's ten: Amphibia, Animalia, Arachnida, Aves, "
                    "Fungi, Insecta, Mammalia, Mollusca, Plantae, "
                    "Reptilia)")
  data.add_argument("--scenario", default=None,
                    help="core50's scenario: ni, nc, nic, nicv2_79, "
                    "nicv2_196 or nicv2_391 (default ni); stream51's "
                    "ordering: iid, class_iid, instance or class_instance "
                    "(default class_instance)")
  data.add_argument("--factor", default=None,
                    help="openloris's factor: clutter, illumination, "
                    "occlusion, pixel or mixture-iros (default clutter)")
  data.add_argument("--evaluation-protocol", default=None,
                    help="clear10's and clear100's protocol: streaming "
                    "(default) or iid")
  data.add_argument("--run", type=int, default=None,
                    help="core50's official run, 0-9, read from its file "
                    "lists in --data-dir (nic and nicv2_* need one); "
                    "without it ni and nc draw their order from --seed")
  data.add_argument("--data-dir", default=None,
                    help="where the data is: a tfds data directory with the "
                    "dataset prepared (without it the MNIST benchmarks use "
                    "the bundled digits, the other tfds ones tfds's default "
                    "directory); for split_tiny_imagenet, core50, stream51, "
                    "openloris, clear10, clear100 and concon_* the local "
                    "folder holding their files (required)")
  data.add_argument("--lazy", action="store_true",
                    help="leave the images in the tfds ArrayRecord files "
                    "until training reads them (with --distributed, each "
                    "host reads a share; docs/scale.md); benchmarks: "
                    f"{', '.join(_lazy_benchmarks())}")
  data.add_argument("--validation-size", type=float, default=0.0,
                    help="hold out this fraction of every train experience as "
                    "a validation stream (0: none)")
  data.add_argument("--online-size", type=int, default=0,
                    help="cut every train experience into online "
                    "mini-experiences of this many samples, as Avalanche's "
                    "split_online_stream (0: off)")
  model = run.add_argument_group("model")
  model.add_argument("--model", default="mlp",
                     help=f"one of: {', '.join(sorted(MODELS))}")
  model.add_argument("--hidden-size", type=int, default=512,
                     help="width of each hidden layer (MLP models, pnn) or "
                     "of the LSTM's state (sequence_classifier models)")
  model.add_argument("--hidden-layers", type=int, default=1,
                     help="number of hidden layers (LSTM layers of "
                     "sequence_classifier models)")
  model.add_argument("--head", default="linear",
                     help="output layer: linear, or cosine (a cosine "
                     "classifier on the model's features, as Avalanche's "
                     f"CosineLinear; models: {', '.join(BACKBONES)})")
  model.add_argument("--drop-rate", type=float, default=None,
                     help="dropout probability (default: the model's own, "
                     "as Avalanche's: 0.5 for MLPs, 0.25 for SimpleCNN)")
  train = run.add_argument_group("training")
  train.add_argument("--strategy", default="naive",
                     help="strategy name, or names joined by '+' to chain "
                     "them; a name may take values of its own, which win "
                     "over the flags: 'lwf(alpha=2)+mas(alpha=0.5)'")
  train.add_argument("--optimizer", default="sgd", help="sgd or adam")
  train.add_argument("--lr", type=float, default=0.01, help="learning rate")
  train.add_argument("--momentum", type=float, default=0.0,
                     help="SGD momentum")
  train.add_argument("--label-smoothing", type=float, default=0.0,
                     help="smooth the cross-entropy's targets by this much "
                     "(PyTorch's label_smoothing), spread over the classes "
                     "not masked")
  train.add_argument("--epochs", type=int, default=1,
                     help="passes over each experience")
  train.add_argument("--batch-size", type=int, default=32,
                     help="mini-batch size")
  train.add_argument("--eval-batch-size", type=int, default=1000,
                     help="evaluation chunk size")
  train.add_argument("--eval-every", type=int, default=None,
                     help="evaluate after every N-th experience and the last "
                     "(default: every experience; online streams: the end of "
                     "each original experience)")
  train.add_argument("--lr-schedule", default="constant",
                     help="learning-rate schedule: constant, cosine, linear "
                     "(both to 0) or step (x0.1 at 50%% and 75%%), over each "
                     "experience with --reset-schedule, else over the stream; "
                     "or plateau: x --plateau-factor after --plateau-patience "
                     "epochs without a lower training loss (Avalanche's "
                     "ReduceLROnPlateau on train_loss)")
  train.add_argument("--plateau-patience", type=int, default=10,
                     help="epochs without improvement before "
                     "--lr-schedule plateau lowers the rate (PyTorch's 10)")
  train.add_argument("--plateau-factor", type=float, default=0.1,
                     help="what --lr-schedule plateau multiplies the rate by "
                     "(PyTorch's 0.1)")
  train.add_argument("--reset-schedule", action="store_true",
                     help="restart the learning-rate schedule at every "
                     "experience")
  train.add_argument("--reset-optimizer", action="store_true",
                     help="fresh optimizer state at every experience "
                     "(older Avalanche releases' default; Avalanche 0.6, "
                     "like jaxcl, keeps it)")
  train.add_argument("--no-class-masking", action="store_true",
                     help="train and evaluate every logit from the start "
                     "(Avalanche's fixed heads, e.g. SimpleMLP) instead of "
                     "masking classes not seen yet and, with task labels, "
                     "those of other tasks")
  train.add_argument("--seed", type=int, default=0,
                     help="seed of every random choice of the run (and of "
                     "the benchmark's class order; stream51's frame order "
                     "too: --seed 10 for Avalanche's default)")
  watch = run.add_argument_group(
      "periodic evaluation and early stopping (inside each experience)")
  watch.add_argument("--periodic-eval", type=int, default=0, metavar="N",
                     help="evaluate every N epochs (or steps) while training "
                     "(0: off)")
  watch.add_argument("--periodic-unit", default="epoch",
                     help="unit of --periodic-eval: epoch or step")
  watch.add_argument("--periodic-stream", default="valid",
                     help="stream evaluated periodically: valid (needs "
                     "--validation-size) or test")
  watch.add_argument("--early-stopping", type=int, default=0,
                     metavar="PATIENCE",
                     help="stop an experience after PATIENCE epochs (steps) "
                     "without improvement and restore the best parameters "
                     "(0: off; evaluates every epoch unless --periodic-eval)")
  watch.add_argument("--early-stopping-metric", default="accuracy",
                     help="accuracy or loss of the periodic stream")
  watch.add_argument("--early-stopping-mode", default=None,
                     help="max or min (default: max for accuracy, min for "
                     "loss)")
  watch.add_argument("--early-stopping-margin", type=float, default=0.0,
                     help="minimum change counted as an improvement")
  scale = run.add_argument_group("many runs in one program")
  scale.add_argument("--seeds", default=None, metavar="S1,S2,...",
                     help="run these seeds as one vmapped program; metrics "
                     "are reported as mean ± std (the benchmark, and so its "
                     "class order, stays that of --seed)")
  scale.add_argument("--sweep", default=None, metavar="NAME=V1,V2,...",
                     help="run these values of one numeric hyperparameter "
                     "(a strategy hyperparameter such as ewc_lambda, or lr) "
                     "as one vmapped program")
  scale.add_argument("--device-memory-budget-mb", type=float, default=None,
                     metavar="MB",
                     help="device memory an experience's training data may "
                     "take; larger experiences are streamed from the host in "
                     "chunks (docs/streaming.md; default: a quarter of the "
                     "device's memory)")
  scale.add_argument("--on-nonfinite", default="raise",
                     choices=("raise", "flag"),
                     help="a training loss that becomes NaN or infinite "
                     "stops the run (raise) or is flagged: that run's "
                     "metrics are NaN from then on and the other runs of "
                     "--seeds/--sweep finish (flag)")
  hosts = run.add_argument_group(
      "many hosts", "run the same command on every host (docs/scale.md)")
  hosts.add_argument("--distributed", action="store_true",
                     help="join the other hosts with jax.distributed."
                     "initialize and train over all their devices; only "
                     "process 0 writes outputs")
  hosts.add_argument("--coordinator-address", default=None,
                     metavar="HOST:PORT",
                     help="process 0's address (default: from the cluster "
                     "environment, e.g. TPU pods, SLURM)")
  hosts.add_argument("--num-processes", type=int, default=None,
                     help="number of hosts (default: from the cluster)")
  hosts.add_argument("--process-id", type=int, default=None,
                     help="this host's index (default: from the cluster)")
  out = run.add_argument_group("output")
  out.add_argument("--logdir", default=None,
                   help="output folder (default: runs/<timestamp>)")
  out.add_argument("--no-tensorboard", action="store_true",
                   help="do not write TensorBoard event files")
  out.add_argument("--wandb-project", default=None, metavar="PROJECT",
                   help="also log to this Weights & Biases project (needs "
                   "the wandb package; WANDB_MODE=offline logs locally)")
  out.add_argument("--image-samples", action="store_true",
                   help="write an 8x8 grid of sample images of every "
                   "training experience (TensorBoard, W&B)")
  out.add_argument("--minibatch-metrics", action="store_true",
                   help="also record every optimizer step's training loss "
                   "and accuracy (minibatch/loss, minibatch/accuracy: "
                   "TensorBoard, W&B, metrics.jsonl, training_results.csv, "
                   "results.json; not printed)")
  out.add_argument("--disk-usage", nargs="*", default=None, metavar="PATH",
                   help="also record disk_usage_kb after each experience: the "
                   "size of the files under the PATHs (default: the working "
                   "directory), as Avalanche's disk_usage_metrics")
  out.add_argument("--no-progress", action="store_true",
                   help="do not show progress bars")
  out.add_argument("--quiet", action="store_true",
                   help="do not print per-experience metrics")
  out.add_argument("--checkpoint-dir", default=None,
                   help="save the whole run there after every experience and "
                   "resume from it if it holds a checkpoint of the same "
                   "configuration (pass the same --logdir to keep one log)")
  out.add_argument("--checkpoint-keep", type=int, default=2,
                   help="number of newest checkpoints kept")
  out.add_argument("--compilation-cache", default=compilation.DEFAULT_CACHE_DIR,
                   help="JAX persistent compilation cache folder ('' for "
                   "none of jaxcl's: JAX's own JAX_COMPILATION_CACHE_DIR "
                   "still applies)")
  _strategy_flags(run)
  if not keep_defaults:
    for action in run._actions:  # pylint: disable=protected-access
      action.default = argparse.SUPPRESS
  return parser


def _lazy_benchmarks() -> list[str]:
  """The benchmarks that can leave their images in the data source."""
  from jaxcl.benchmarks import BENCHMARKS
  return sorted(name for name, factory in BENCHMARKS.items()
                if "lazy" in inspect.signature(factory).parameters)


def _check_wandb(project: str) -> None:
  """``--wandb-project``: a name, and the package to log with."""
  if not project.strip():
    raise ValueError("--wandb-project '' names no project; expected a W&B "
                     "project name.")
  if importlib.util.find_spec("wandb") is None:
    raise ValueError(f"--wandb-project {project} needs the wandb package, "
                     "which jaxcl does not install: pip install wandb.")


def _n_experiences(args: argparse.Namespace) -> int | None:
  """``--n-experiences``, or the benchmark factory's own default (None
  when the factory takes none, or decides from its other arguments).

  Resolved where it is used, not written back into ``args``: a Namespace
  run again with another ``--benchmark`` must not keep this one's count.
  """
  from jaxcl.benchmarks import BENCHMARKS
  if args.n_experiences is not None:
    return args.n_experiences
  own = inspect.signature(BENCHMARKS[args.benchmark]).parameters.get(
      "n_experiences")
  return (own.default if own is not None and isinstance(own.default, int)
          else None)


def _lazy(args: argparse.Namespace) -> bool:
  """Whether the benchmark leaves its images in the tfds files: ``--lazy``,
  or the factory's own default (split_imagenet, split_inaturalist)."""
  from jaxcl.benchmarks import BENCHMARKS
  own = inspect.signature(BENCHMARKS[args.benchmark]).parameters.get("lazy")
  return args.lazy or (own is not None and own.default is True)


def _model(args: argparse.Namespace, benchmark: Any) -> Any:
  """The Flax module ``--model`` and ``--head`` name, sized for
  ``benchmark``, with the model flags it takes."""
  from jaxcl.models import MODELS, CosineClassifier
  cosine = args.head == "cosine"
  offered = dict(num_classes=None if cosine else benchmark.n_classes,
                 n_tasks=benchmark.n_tasks, hidden_size=args.hidden_size,
                 hidden_layers=args.hidden_layers,
                 rnn_layers=args.hidden_layers)
  if args.drop_rate is not None:  # Else each model's own (Avalanche's).
    offered["drop_rate"] = args.drop_rate
  accepted = inspect.signature(MODELS[args.model]).parameters
  model = MODELS[args.model](**{k: v for k, v in offered.items()
                                if k in accepted})
  if cosine:
    model = CosineClassifier(model, num_classes=benchmark.n_classes)
  return model


def _check_args(args: argparse.Namespace,
                typed: Collection[str] | None = None) -> None:
  """Validates names and numbers before anything is loaded or compiled."""
  from jaxcl import _validation
  from jaxcl.benchmarks import BENCHMARKS
  from jaxcl.models import BACKBONES, MODELS
  from jaxcl.strategies import parse_spec
  _validation.check_choice("--benchmark", args.benchmark, BENCHMARKS)
  if args.wandb_project is not None:
    _check_wandb(args.wandb_project)
  if args.image_size is not None and "image_size" not in inspect.signature(
      BENCHMARKS[args.benchmark]).parameters:
    sized = sorted(name for name, factory in BENCHMARKS.items()
                   if "image_size" in inspect.signature(factory).parameters)
    raise ValueError(f"--image-size has no effect on --benchmark "
                     f"{args.benchmark}; it sets the image side of "
                     f"{', '.join(sized)}.")
  if args.image_samples and args.no_tensorboard and not args.wandb_project:
    raise ValueError("--image-samples with --no-tensorboard and no "
                     "--wandb-project writes the grids nowhere; expected "
                     "TensorBoard files or a W&B project for them.")
  _check_seed_range("--seed", args.seed)
  _seeds(args)
  if args.lazy and args.benchmark not in _lazy_benchmarks():
    raise ValueError(f"--lazy: benchmark {args.benchmark!r} reads its images "
                     "into memory (it transforms, resizes or concatenates "
                     "them, or reads image folders); expected one of "
                     f"{_lazy_benchmarks()}.")
  _validation.check_choice("--model", args.model, MODELS)
  _validation.check_choice("--head", args.head, ("linear", "cosine"))
  if args.head == "cosine" and args.model not in BACKBONES:
    raise ValueError(f"--head cosine needs a model with a features-only form "
                     f"to put the cosine layer on; --model {args.model} has "
                     f"none. Expected one of {', '.join(BACKBONES)}.")
  _validation.check_choice("--optimizer", args.optimizer, ("sgd", "adam"))
  names = [name for name, _ in parse_spec(args.strategy)]
  twice = sorted({name for name in names if names.count(name) > 1})
  if twice:
    raise ValueError(f"--strategy {args.strategy!r} names {', '.join(twice)} "
                     "more than once; expected each strategy once.")
  if args.early_stopping_mode is None:  # Recorded resolved in results.json.
    args.early_stopping_mode = ("min" if args.early_stopping_metric == "loss"
                                else "max")
  if args.n_experiences is not None:
    _validation.check_positive_int("--n-experiences", args.n_experiences)
  for name in ("hidden_size", "hidden_layers", "epochs", "batch_size",
               "eval_batch_size"):
    _validation.check_positive_int(_flag(name), getattr(args, name))
  if args.eval_every is not None:
    _validation.check_positive_int("--eval-every", args.eval_every)
  if args.online_size:
    _validation.check_positive_int("--online-size", args.online_size)
  for name in ("periodic_eval", "early_stopping"):
    if getattr(args, name):
      _validation.check_positive_int(_flag(name), getattr(args, name))
  if args.validation_size:
    _validation.check_in_range("--validation-size", args.validation_size,
                               low=0.0, high=1.0, low_inclusive=False,
                               high_inclusive=False)
  # With the flags' names (fit's own checks name PeriodicEval's fields).
  _validation.check_choice("--periodic-unit", args.periodic_unit,
                           ("epoch", "step"))
  _validation.check_choice("--periodic-stream", args.periodic_stream,
                           ("valid", "test"))
  _validation.check_choice("--early-stopping-metric",
                           args.early_stopping_metric, ("accuracy", "loss"))
  _validation.check_choice("--early-stopping-mode", args.early_stopping_mode,
                           ("max", "min"))
  _validation.check_non_negative("--early-stopping-margin",
                                 args.early_stopping_margin)
  watch = _watch_kwargs(args)
  if (watch["periodic_eval"] is not None and args.periodic_stream == "valid"
      and not args.validation_size):
    raise ValueError(
        "--periodic-eval and --early-stopping evaluate --periodic-stream "
        "valid, but there is no validation stream; pass --validation-size "
        "(e.g. 0.1) or --periodic-stream test.")
  if watch["periodic_eval"] is not None:
    watch["periodic_eval"].validate(has_valid_stream=args.validation_size > 0)
  if watch["early_stopping"] is not None:
    watch["early_stopping"].validate()
  from jaxcl.training.optim import SCHEDULES
  _validation.check_choice("--lr-schedule", args.lr_schedule,
                           (*SCHEDULES, "plateau"))
  _validation.check_non_negative_int("--plateau-patience",
                                     args.plateau_patience)
  if args.plateau_patience > _MAX_PLATEAU_PATIENCE:  # optax's int32 count.
    raise ValueError(f"--plateau-patience must be at most "
                     f"{_MAX_PLATEAU_PATIENCE}, got {args.plateau_patience}.")
  _validation.check_in_range("--plateau-factor", args.plateau_factor,
                             low=0.0, high=1.0, low_inclusive=False,
                             high_inclusive=False)
  sweep_name, sweep_values = _sweep(args)
  if sweep_name == "lr":
    if args.lr_schedule not in ("constant", "plateau"):
      raise ValueError(f"--sweep lr=... needs --lr-schedule constant or "
                       f"plateau, got {args.lr_schedule!r}: a swept schedule "
                       "would need one program per value.")
    for value in sweep_values:
      _validation.check_float32_positive("--sweep lr values", value)
  _validation.check_float32_positive("--lr", args.lr)
  _validation.check_in_range("--label-smoothing", args.label_smoothing,
                             low=0.0, high=1.0)
  _validation.check_in_range("--momentum", args.momentum, low=0.0, high=1.0,
                             high_inclusive=False)
  if args.momentum and args.optimizer != "sgd":
    raise ValueError(f"--momentum {args.momentum} applies to --optimizer sgd "
                     f"only, got --optimizer {args.optimizer}.")
  if args.drop_rate is not None:
    _validation.check_in_range("--drop-rate", args.drop_rate, low=0.0,
                               high=1.0, high_inclusive=False)
  _validation.check_positive_int("--checkpoint-keep", args.checkpoint_keep)
  if args.device_memory_budget_mb is not None:
    _validation.check_in_range("--device-memory-budget-mb",
                               args.device_memory_budget_mb, low=0.0,
                               low_inclusive=False)
  _check_host_args(args)
  _check_flags_take_effect(args, typed)
  from jaxcl.loggers.event_file import is_remote_path
  if args.logdir and is_remote_path(args.logdir):
    raise ValueError(
        f"--logdir {args.logdir!r} is a remote path; expected a local folder "
        "(jaxcl run writes results.json, metrics.jsonl and the plots with "
        "local file operations; copy the folder afterwards, or from Python "
        "write TensorBoard files there with jaxcl.loggers.create_writers(..., "
        "jsonl=False, csv=False, text=False)).")
  if args.logdir is not None and not args.logdir.strip():
    raise ValueError(f"--logdir {args.logdir!r} names no folder; expected a "
                     "folder path (leave the flag out for runs/<timestamp>).")
  if args.checkpoint_dir is not None and not args.checkpoint_dir.strip():
    # Path("") is the working directory, which would fill with step folders.
    raise ValueError(f"--checkpoint-dir {args.checkpoint_dir!r} names no "
                     "folder; expected a folder path (leave the flag out to "
                     "run without checkpoints).")


def _check_folders(args: argparse.Namespace, primary: bool) -> None:
  """Refuses a folder flag inside a file. Host-local: run where an error on
  one host stops the others (the log folder only on the host writing it)."""
  from jaxcl import _validation
  from jaxcl.loggers.base import is_remote_path
  for flag, folder in (("--logdir", args.logdir if primary else None),
                       ("--checkpoint-dir", args.checkpoint_dir),
                       ("--compilation-cache", args.compilation_cache)):
    problem = (folder and not is_remote_path(folder)
               and _validation.folder_problem(folder))
    if problem:
      raise ValueError(f"{flag} {folder!r} {problem}; expected a folder "
                       "(existing or new).")


def _check_flags_take_effect(args: argparse.Namespace,
                             typed: Collection[str] | None) -> None:
  """Refuses flags typed (or, without ``typed``, changed from their
  defaults) that nothing would read.

  A silently ignored flag is a wrong experiment the user believes they ran.
  """
  from jaxcl.benchmarks import BENCHMARKS
  from jaxcl.models import MODELS
  defaults = vars(build_parser().parse_args(["run"]))
  # The mode as _check_args resolves it from the metric: a Namespace
  # checked before (cli.run in a loop, a results.json config) holds it.
  defaults["early_stopping_mode"] = ("min" if args.early_stopping_metric
                                     == "loss" else "max")
  changed = ({name for name in typed if name in defaults}
             if typed is not None else
             {name for name, value in vars(args).items()
              if name in defaults and value != defaults[name]})
  if (typed is None and args.n_experiences == 5 and "n_experiences" not in
      inspect.signature(BENCHMARKS[args.benchmark]).parameters):
    # results.json configs written before session 28 record the CLI's
    # default of then, 5, for every benchmark.
    changed.discard("n_experiences")

  def refuse(name: str, reason: str) -> None:
    if name in changed:
      value = getattr(args, name)
      shown = "" if isinstance(value, bool) else f" {value}"
      raise ValueError(f"{_flag(name)}{shown} has no effect: {reason}; "
                       "expected to leave it out.")

  for component, flag, factory, names in (
      ("model", "--model", MODELS[args.model],
       ("hidden_size", "hidden_layers", "drop_rate")),
      ("benchmark", "--benchmark", BENCHMARKS[args.benchmark],
       ("n_experiences", "return_task_id", "scenario", "factor",
        "evaluation_protocol", "run", "super_categories",
        *_BENCHMARK_SWITCHES))):
    takes = set(inspect.signature(factory).parameters)
    if "rnn_layers" in takes:  # --hidden-layers sets an LSTM's layers.
      takes.add("hidden_layers")
    for name in names:
      if name not in takes:
        refuse(name, f"{flag} {getattr(args, component)} does not use it")
  if args.lr_schedule == "constant":
    refuse("reset_schedule", "--lr-schedule is constant")
  if args.lr_schedule != "plateau":
    for name in ("plateau_patience", "plateau_factor"):
      refuse(name, f"--lr-schedule is {args.lr_schedule}, not plateau")
  if args.sweep is not None and args.sweep.partition("=")[0].strip() == "lr":
    refuse("lr", "--sweep lr=... sets the learning rates")
  from jaxcl.strategies import (REGISTRY, from_spec, open_parameters,
                                parse_spec)
  takes = open_parameters(args.strategy)
  unused = sorted(set(_strategy_hparams(args)) - takes)
  if unused:
    flags = ", ".join(_flag(p) for p in sorted(takes)) or "none"
    set_in_spec = any(unused[0] in REGISTRY[name].parameters
                      for name, _ in parse_spec(args.strategy))
    raise ValueError(
        f"{_flag(unused[0])} {_as_typed(getattr(args, unused[0]))} has no "
        f"effect: --strategy {args.strategy} "
        + (f"sets {unused[0]} itself" if set_in_spec else "does not use it")
        + f"; expected to leave it out (its flags: {flags}).")
  try:
    built = from_spec(args.strategy, **_strategy_hparams(args))
  except (ValueError, TypeError):
    built = None  # Refused later, with its own message.
  trains = built is None or built.trains_with_optimizer
  if built is not None and built.update is not None and (
      args.lr_schedule == "plateau"):
    raise ValueError(
        f"--lr-schedule plateau: --strategy {args.strategy} makes its own "
        "optimizer updates (several per batch, without the batch's loss), "
        "which the plateau schedule needs for each; expected another "
        "--lr-schedule.")
  if not trains:
    for name in ("lr", "optimizer", "momentum", "lr_schedule",
                 "reset_optimizer", "reset_schedule", "head",
                 "plateau_patience", "plateau_factor"):
      refuse(name, f"--strategy {args.strategy} trains no parameter with "
             "the optimizer")
    if args.sweep is not None and args.sweep.partition("=")[0].strip() == "lr":
      raise ValueError(f"--sweep {args.sweep} has no effect: --strategy "
                       f"{args.strategy} trains no parameter with the "
                       "optimizer, so every value gives the same run; "
                       "expected to leave it out.")
  if not args.checkpoint_dir:
    refuse("checkpoint_keep", "no --checkpoint-dir is given")
  if not (args.periodic_eval or args.early_stopping):
    for name in ("periodic_unit", "periodic_stream"):
      refuse(name, "neither --periodic-eval nor --early-stopping is given")
  if not args.early_stopping:
    for name in ("early_stopping_metric", "early_stopping_mode",
                 "early_stopping_margin"):
      refuse(name, "--early-stopping is not given")


def _check_host_args(args: argparse.Namespace) -> None:
  from jaxcl import _validation
  given = [_flag(name) for name in ("coordinator_address", "num_processes",
                                    "process_id")
           if getattr(args, name) is not None]
  if given and not args.distributed:
    raise ValueError(f"{', '.join(given)} given without --distributed; "
                     "expected --distributed to join the other hosts.")
  address = args.coordinator_address
  if address is not None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise ValueError(f"--coordinator-address must be HOST:PORT with a port "
                       f"in [1, 65535], got {address!r}.")
  if args.num_processes is not None:
    _validation.check_positive_int("--num-processes", args.num_processes)
  if args.process_id is not None:
    limit = args.num_processes
    if args.process_id < 0 or (limit is not None and args.process_id >= limit):
      raise ValueError(f"--process-id must be in [0, {limit or 'processes'}), "
                       f"got {args.process_id}.")


def _join_hosts(args: argparse.Namespace) -> None:
  """``jax.distributed.initialize`` with the flags (None: auto-detected)."""
  import jax
  # XLA's CPU client needs it for collectives between processes; GPU and
  # TPU clients ignore it.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address=args.coordinator_address,
                               num_processes=args.num_processes,
                               process_id=args.process_id)
  except (ValueError, RuntimeError) as error:
    flags = " ".join(f"{_flag(name)} {getattr(args, name)}"
                     for name in ("coordinator_address", "num_processes",
                                  "process_id")
                     if getattr(args, name) is not None)
    # JAX names its own parameters (coordinator_address should be defined).
    message = str(error).splitlines()[0] if str(error) else ""
    for name in ("coordinator_address", "num_processes", "process_id"):
      message = re.sub(rf"\b{name}\b", _flag(name), message)
    raise ValueError(
        f"--distributed {flags or '(nothing given: read from the cluster)'} "
        f"could not join the other hosts: {type(error).__name__}: {message} "
        "(without a cluster environment, give --coordinator-address "
        "HOST:PORT, --num-processes and --process-id).") from error


def _strategy_hparams(args: argparse.Namespace) -> dict[str, Any]:
  from jaxcl.strategies import REGISTRY
  names = {p for e in REGISTRY.values() for p in e.parameters}
  return {n: getattr(args, n) for n in names if hasattr(args, n)}


def _numbers(flag: str, text: str, kind: type) -> list:
  try:
    values = [kind(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise ValueError(f"{flag} must be a comma-separated list of "
                     f"{kind.__name__} values, got {text!r}.") from None
  if not values:
    raise ValueError(f"{flag} must list at least one value, got {text!r}.")
  repeated = sorted({v for v in values if values.count(v) > 1})
  if repeated:
    raise ValueError(f"{flag} values must be distinct (each is a run), got "
                     f"{text!r}: {', '.join(map(str, repeated))} repeated.")
  return values


def _seeds(args: argparse.Namespace) -> list[int] | None:
  if args.seeds is None:
    return None
  seeds = _numbers("--seeds", args.seeds, int)
  for seed in seeds:
    _check_seed_range("--seeds", seed)
  return seeds


def _check_seed_range(flag: str, seed: int) -> None:
  if not 0 <= seed < 2**32:
    raise ValueError(f"{flag} values must be in [0, 2**32), got {seed}.")


def _sweep(args: argparse.Namespace) -> tuple[str | None, list[float]]:
  """Parses ``--sweep name=v1,v2`` and checks the name can be swept."""
  if args.sweep is None:
    return None, []
  if args.seeds is not None:
    raise ValueError("--sweep and --seeds cannot be combined; got both.")
  name, sep, values = args.sweep.partition("=")
  name = name.strip().replace("-", "_")
  if not sep:
    raise ValueError(f"--sweep must look like NAME=V1,V2,..., got {args.sweep!r}.")
  from jaxcl import _validation
  from jaxcl.strategies import REGISTRY, open_parameters, parse_spec
  entries = [REGISTRY[n] for n, own in parse_spec(args.strategy)
             if name not in own]
  takes = open_parameters(args.strategy)
  if name not in takes and name in {
      k for _, own in parse_spec(args.strategy) for k in own}:
    raise ValueError(
        f"--sweep {name}=... has no effect: --strategy {args.strategy} sets "
        f"{name} itself; expected a hyperparameter it leaves open (one of "
        f"{', '.join(sorted(takes | {'lr'}))}).")
  _validation.check_choice("--sweep hyperparameter", name, takes | {"lr"})
  if name != "lr" and hasattr(args, name):  # Strategy flags exist if given.
    raise ValueError(
        f"--{name.replace('_', '-')} {getattr(args, name)} and --sweep "
        f"{name}=... both set {name}; expected one of them.")
  defaults = [(e.name, e.parameters[name].default) for e in entries
              if name in e.parameters]
  integral = [n for n, d in defaults if isinstance(d, int)
              and not isinstance(d, bool)]
  if integral:
    raise ValueError(
        f"--sweep {name}: an integer hyperparameter of {', '.join(integral)} "
        "(a size or a count) fixes shapes or loop lengths of the compiled "
        "program, so its values cannot share one; run them as separate "
        "jaxcl run commands.")
  choices = [n for n, d in defaults if isinstance(d, (bool, str))]
  if choices:
    raise ValueError(
        f"--sweep {name}: a switch or a choice of {', '.join(choices)}, not "
        "a number; --sweep varies numeric hyperparameters (run the choices "
        "as separate jaxcl run commands).")
  return name, _numbers("--sweep", values, float)


# optax counts a plateau's epochs in int32, up to patience + 1.
_MAX_PLATEAU_PATIENCE = 2**31 - 2


def _optimizer(args: argparse.Namespace, lr: Any, optax, epoch_steps: int,
               inject: bool = False):
  """The optimizer of ``--optimizer``; ``inject`` puts lr in its state.

  ``lr`` is a number or an optax schedule. With ``--lr-schedule plateau``
  the updates are scaled by ``optax.contrib.reduce_on_plateau`` on the
  training loss averaged over ``epoch_steps`` steps (an epoch).
  """
  if args.optimizer == "sgd":
    make = lambda learning_rate: optax.sgd(learning_rate,
                                           momentum=args.momentum or None)
  else:
    make = optax.adam
  optimizer = (optax.inject_hyperparams(make)(learning_rate=lr) if inject
               else make(lr))
  if args.lr_schedule != "plateau":
    return optimizer
  # PyTorch's ReduceLROnPlateau defaults: relative threshold 1e-4, no
  # cooldown, no floor. It lowers the rate after `patience` + 1 epochs
  # without improvement, optax's after `patience`.
  return optax.chain(optimizer, optax.contrib.reduce_on_plateau(
      factor=args.plateau_factor, patience=args.plateau_patience + 1,
      rtol=1e-4, accumulation_size=epoch_steps))


def _metric_selection(args):
  """The default metric groups plus the opt-in ones the flags ask for."""
  import jaxcl  # Lazy, as in run: `jaxcl --help` does not load JAX.
  groups = [*jaxcl.evaluation.DEFAULT_METRICS]
  groups += ["minibatch"] * args.minibatch_metrics
  groups += ["disk_usage"] * (args.disk_usage is not None)
  return jaxcl.evaluation.metrics(groups,
                                  disk_paths=args.disk_usage or None)


def _learning_rate(args: argparse.Namespace, strategy, benchmark) -> Any:
  """``--lr``, or the ``--lr-schedule`` starting from it.

  The schedule spans the optimizer steps of the experiences as the strategy
  trains them (cumulative and joint enlarge them): the largest experience's
  when it restarts at every experience, else the whole stream's.
  """
  if args.lr_schedule in ("constant", "plateau"):
    return args.lr
  from jaxcl.training.optim import schedule
  steps = [args.epochs * epoch
           for epoch in _steps_per_epoch(args, strategy, benchmark)]
  restarts = args.reset_schedule or args.reset_optimizer
  return schedule(args.lr_schedule, args.lr,
                  max(steps) if restarts else sum(steps))


def _steps_per_epoch(args: argparse.Namespace, strategy,
                     benchmark) -> list[int]:
  """Each experience's optimizer steps per epoch, as the strategy trains it
  (cumulative and joint enlarge the experiences)."""
  stream = benchmark.train_stream
  return [math.ceil(len(strategy.adapt_data(e, stream, args.seed))
                    / args.batch_size) for e in stream]


def _watch_kwargs(args: argparse.Namespace) -> dict[str, Any]:
  """``fit``'s ``periodic_eval`` and ``early_stopping`` from the flags."""
  from jaxcl import EarlyStopping, PeriodicEval
  periodic = None
  if args.periodic_eval or args.early_stopping:
    periodic = PeriodicEval(every=args.periodic_eval or 1,
                            unit=args.periodic_unit,
                            stream=args.periodic_stream)
  stopping = None
  if args.early_stopping:
    stopping = EarlyStopping(patience=args.early_stopping,
                             metric=args.early_stopping_metric,
                             mode=args.early_stopping_mode,
                             margin=args.early_stopping_margin)
  return {"periodic_eval": periodic, "early_stopping": stopping}


def _write_images(writer, logdir: pathlib.Path, result,
                  sweep_name: str | None) -> None:
  """Accuracy matrix, curves and confusion matrix to TensorBoard and PNGs:
  one set, or with --sweep one per swept value."""
  from jaxcl import loggers
  for label, one in _reported(result, sweep_name):
    matrix = _accuracy_matrix(one)
    loggers.write_result_images(writer, len(matrix) - 1, logdir,
                                accuracy_matrix=matrix,
                                confusion_matrix=_confusion_matrix(one),
                                label=label)


def _reported(result, sweep_name: str | None) -> list[tuple[str | None, Any]]:
  """What the outputs show: the result (seeds: their mean), or with --sweep
  each swept value's run, labelled ``name=value``: a mean over other
  hyperparameters measures nothing."""
  if sweep_name is None:
    return [(None, result)]
  from jaxcl.loggers import format_swept_value
  return [(f"{sweep_name}={format_swept_value(value)}", run)
          for value, run in zip(result.labels, result.runs)]


def _accuracy_matrix(result) -> Any:
  """The accuracy matrix; several runs' mean, leaving out the NaN entries of
  runs whose loss became NaN/inf (``--on-nonfinite flag``)."""
  import numpy as np
  if not hasattr(result, "runs"):
    return result.accuracy_matrix
  finite = [run.accuracy_matrix for run in result.runs if run.nonfinite is None]
  if not finite:
    return np.full_like(result.accuracy_matrices[0], np.nan)
  with warnings.catch_warnings():  # Entries no run evaluated stay NaN.
    warnings.simplefilter("ignore", RuntimeWarning)
    return np.nanmean(finite, 0)


def _confusion_matrix(result):
  """The final confusion matrix; several runs' counts summed (None without
  one)."""
  if not hasattr(result, "runs"):
    return result.confusion_matrix if result.nonfinite is None else None
  # Runs whose loss became NaN/inf (--on-nonfinite flag) have NaN counts.
  confusions = [r.confusion_matrix for r in result.runs if r.nonfinite is None]
  if not confusions or confusions[0] is None:
    return None
  return sum(confusions)


class _Tracked(ForwardingWriter):
  """Forwards to ``writer``; remembers whether any scalar was written."""

  def __init__(self, writer):
    self.writer, self.wrote_scalars = writer, False

  def _forward(self, method: str, *args: Any, **kwargs: Any) -> None:
    self.wrote_scalars |= method == "write_scalars"
    getattr(self.writer, method)(*args, **kwargs)


def _result_fields(result) -> dict[str, Any]:
  """The results.json fields of a Result or a MultiResult."""
  if not hasattr(result, "runs"):
    return {"accuracy_matrix": result.accuracy_matrix,
            "metrics": result.metrics,
            "history": result.history,
            "initial_accuracies": result.initial_accuracies,
            "confusion_matrix": result.confusion_matrix,
            "periodic": result.periodic, "nonfinite": result.nonfinite,
            "minibatch": result.minibatch,
            "trained_columns": result.trained_columns}
  return {
      "labels": list(result.labels),
      "accuracy_matrix": _accuracy_matrix(result),
      "accuracy_matrices": result.accuracy_matrices,
      "confusion_matrix": _confusion_matrix(result),
      "metrics": {k: mean for k, (mean, _) in result.metrics.items()},
      "metrics_std": {k: std for k, (_, std) in result.metrics.items()},
      "metrics_per_run": result.metrics_per_run,
      "history": [run.history for run in result.runs],
      "periodic": [run.periodic for run in result.runs],
      "initial_accuracies": [run.initial_accuracies for run in result.runs],
      "nonfinite": [run.nonfinite for run in result.runs],
      "minibatch": [run.minibatch for run in result.runs],
      "trained_columns": result.trained_columns,
  }


def _resolved_hyperparameters(spec: str, given: dict[str, Any],
                              swept: str | None) -> list[dict[str, Any]]:
  """Each strategy of ``spec`` with every hyperparameter it was built with:
  its default, the flag's value or the spec's own (None: swept)."""
  from jaxcl.strategies import REGISTRY, parse_spec
  resolved = []
  for name, own in parse_spec(spec):
    parameters = REGISTRY[name].parameters
    values = {k: p.default for k, p in parameters.items()
              if p.default is not inspect.Parameter.empty}
    values.update({k: v for k, v in given.items()
                   if k in parameters and v is not None})
    values.update(own)
    if swept in parameters and swept not in own:
      values[swept] = None
    resolved.append({"strategy": name, **values})
  return resolved


def _hparams_record(config: dict[str, Any]) -> dict[str, Any]:
  """The run's config as the writers' hparams take it: numbers, strings and
  bools; lists joined with commas (``--alpha 1,2``); each strategy's
  resolved hyperparameters as ``strategy/<name>/<parameter>``; None (a
  swept value, an unset flag) left out."""
  def scalar(value):
    if isinstance(value, (list, tuple)):
      return ",".join(str(v) for v in value)
    return value

  flat = dict(config)
  for strategy in flat.pop("strategy_hyperparameters", []):
    name = strategy["strategy"]
    flat.update({f"strategy/{name}/{k}": v for k, v in strategy.items()
                 if k != "strategy"})
  return {k: scalar(v) for k, v in flat.items()
          if isinstance(scalar(v), (int, float, str, bool))}


def _load_benchmark(args: argparse.Namespace):
  """The benchmark ``args`` name, with its validation and online splits."""
  import jax

  import jaxcl
  from jaxcl.benchmarks import BENCHMARKS
  factory = BENCHMARKS[args.benchmark]
  bench_kwargs = {"seed": args.seed,
                  "return_task_id": args.return_task_id,
                  "data_dir": args.data_dir}
  n_experiences = _n_experiences(args)
  if n_experiences is not None:
    bench_kwargs["n_experiences"] = n_experiences
  for name in ("image_size", "scenario", "factor", "evaluation_protocol",
               "run"):
    if getattr(args, name) is not None:
      bench_kwargs[name] = getattr(args, name)
  for switch in _BENCHMARK_SWITCHES:
    if getattr(args, switch):
      bench_kwargs[switch] = True
  if args.super_categories is not None:
    bench_kwargs["super_categories"] = [
        name.strip() for name in args.super_categories.split(",")]
  accepted = inspect.signature(factory).parameters
  if _lazy(args):
    # Every host loads: sharing the labels' pass is collective.
    bench_kwargs.update(lazy=True, split_over_hosts=jax.process_count() > 1)
  # Not --data-dir: tfds's messages show Python calls with data_dir=.
  shown = {"n_experiences": n_experiences, "scenario": args.scenario,
           "factor": args.factor, "run": args.run,
           "evaluation_protocol": args.evaluation_protocol,
           "image_size": args.image_size,
           "super_categories": args.super_categories,
           **{switch: True for switch in _BENCHMARK_SWITCHES
              if getattr(args, switch)},
           "validation_size": args.validation_size or None,
           "online_size": args.online_size or None}
  given = {k: v for k, v in shown.items() if v is not None
           and (k in accepted or k not in bench_kwargs)}
  try:
    benchmark = factory(**{k: v for k, v in bench_kwargs.items()
                           if k in accepted})
    if args.validation_size:
      benchmark = jaxcl.benchmarks.with_validation(
          benchmark, args.validation_size, seed=args.seed)
    if args.online_size:
      benchmark = jaxcl.benchmarks.split_online(benchmark, args.online_size,
                                                seed=args.seed)
  except (ValueError, TypeError) as error:
    raise _in_flag_terms(error, given, f"--benchmark {args.benchmark}",
                         names=("run", *_BENCHMARK_SWITCHES),
                         switches=_BENCHMARK_SWITCHES) from error
  return benchmark


def run(args: argparse.Namespace,
        typed: Collection[str] | None = None) -> dict[str, Any]:
  """Runs ``jaxcl run`` with parsed arguments; returns the results dict.

  ``typed`` names the flags the user typed (flags with no effect are
  refused even at their default values); None: those whose values differ
  from the defaults.
  """
  start = time.perf_counter()
  _check_args(args, typed)
  import jax

  from jaxcl import _hosts
  if args.distributed:
    _join_hosts(args)
  # An error on one host (say, a logdir it cannot write) stops the others
  # in seconds instead of leaving them waiting for it in a collective, or
  # in jax.distributed.initialize.
  with _hosts.stop_all_hosts_on_error(exit_code=2):
    _check_folders(args, primary=jax.process_index() == 0)
    _enable_cache(args, typed)
    return _run_on_joined_hosts(args, start)


def _enable_cache(args: argparse.Namespace,
                  typed: Collection[str] | None) -> None:
  """The compilation cache of ``--compilation-cache``. A folder the user
  named that cannot be created or written stops the run; the default one
  (under a read-only home, say) only costs the caching, with a warning;
  ``''`` enables none (JAX's own setting, if any, stays)."""
  from jaxcl import _validation, compilation
  from jaxcl.loggers.base import is_remote_path
  folder = args.compilation_cache
  if not folder:  # JAX's own setting (JAX_COMPILATION_CACHE_DIR) stays.
    return
  named = ("compilation_cache" in typed if typed is not None
           else folder != compilation.DEFAULT_CACHE_DIR)
  if named and not is_remote_path(folder):
    _validation.make_folder("--compilation-cache", folder)
  in_flag_terms = lambda message: message.replace(
      f"folder={folder!r}", f"--compilation-cache {folder!r}")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", RuntimeWarning)
    try:
      compilation.enable_compilation_cache(folder)
    except ValueError as error:
      raise ValueError(in_flag_terms(str(error))) from error
  for warning in caught:
    warnings.warn(in_flag_terms(str(warning.message)), warning.category,
                  stacklevel=2)


def _topmost_missing(path: pathlib.Path) -> pathlib.Path | None:
  """The highest of ``path`` and its parents that does not exist, or None."""
  missing = None
  for folder in (path, *path.parents):
    if folder.exists():
      return missing
    missing = folder
  return missing


def _remove_created(logdir: pathlib.Path,
                    created: pathlib.Path | None) -> None:
  """Removes ``logdir`` and its parents up to ``created`` (the topmost one
  this run created; None: none), parents only while empty: a run started
  beside this one may have put its own folder there."""
  if created is None:
    return
  shutil.rmtree(logdir, ignore_errors=True)
  for folder in logdir.parents:
    if folder == created.parent:
      break
    try:
      folder.rmdir()
    except OSError:
      break


def _new_default_logdir() -> pathlib.Path:
  """``runs/<timestamp>``, created here; ``-1``, ``-2``, ... appended when
  another run took the name (runs started in the same second)."""
  base = pathlib.Path("runs") / datetime.datetime.now().strftime(
      "%Y%m%d-%H%M%S")
  base.parent.mkdir(parents=True, exist_ok=True)
  for attempt in itertools.count():
    logdir = base.with_name(f"{base.name}-{attempt}" if attempt else base.name)
    try:
      logdir.mkdir()  # Atomic: one of two racing runs gets each name.
    except FileExistsError:
      continue
    return logdir


def _run_on_joined_hosts(args: argparse.Namespace,
                         start: float) -> dict[str, Any]:
  """``run`` once the hosts (if several) have joined: train, write, report."""
  import jax
  import optax

  import jaxcl
  from jaxcl import _hosts, _validation, loggers
  # Every host trains; one writes the outputs.
  primary = jax.process_index() == 0
  # Everything that can reject the arguments runs before the logdir exists;
  # a swept hyperparameter is checked with its first value.
  sweep_name, sweep_values = _sweep(args)
  hparams = _strategy_hparams(args)
  from jaxcl.strategies import REGISTRY
  names = {p for e in REGISTRY.values() for p in e.parameters}
  # A swept hyperparameter is checked with its first value here (one may
  # need it, as online EWC's decay_factor); the others with each value
  # below.
  first = ({sweep_name: sweep_values[0]} if sweep_name not in (None, "lr")
           else {})
  try:
    strategy = jaxcl.strategies.from_spec(args.strategy, **hparams, **first)
  except (ValueError, TypeError) as error:
    if first:
      raise ValueError(
          f"--sweep {sweep_name}={sweep_values[0]:g}: {error}") from error
    if getattr(error, "spec_term", None):
      raise  # A value the spec sets: named as the user typed it.
    raise _in_flag_terms(error, hparams, f"--strategy {args.strategy}",
                         names) from error
  if sweep_name not in (None, "lr"):
    for value in sweep_values:  # Each swept value, before any output.
      try:
        jaxcl.strategies.from_spec(args.strategy,
                                   **{**hparams, sweep_name: value})
      except (ValueError, TypeError) as error:
        raise ValueError(f"--sweep {sweep_name}={value:g}: {error}") from error
  # A host that cannot load the data (a missing data_dir) makes every host
  # raise, rather than leave the others waiting for it in fit.
  benchmark = _hosts.read_together("the benchmark",
                                   lambda: _load_benchmark(args))
  model = _model(args, benchmark)
  if args.drop_rate is None:  # Recorded as used: the model's own.
    args.drop_rate = getattr(model, "drop_rate", getattr(
        getattr(model, "features", None), "drop_rate", None))
  seeds = _seeds(args)
  # The topmost folder this run creates for its logs (None: the log folder
  # exists): a run refused before writing anything removes what it created.
  # Before the checkpoint folder, which may lie inside it.
  logdir = (_validation.expanded_folder("--logdir", args.logdir)
            if args.logdir else None)
  created = _topmost_missing(logdir or pathlib.Path("runs"))
  if args.checkpoint_dir:
    _validation.make_folder("--checkpoint-dir", args.checkpoint_dir)
  if logdir is not None:
    if primary:
      _validation.make_folder("--logdir", args.logdir)
  else:  # Only the primary host writes: the others make no folder.
    logdir = _new_default_logdir() if primary else pathlib.Path("runs")
    created = created or logdir
  writer = None
  if primary:
    writers = []
    if args.wandb_project is not None:  # First: wandb.init may refuse.
      try:
        writers.append(loggers.WandbWriter(
            project=args.wandb_project, name=logdir.name, dir=str(logdir)))
      except Exception:
        _remove_created(logdir, created)
        raise
    writer = _Tracked(loggers.MultiWriter([loggers.create_writers(
        str(logdir), console=not args.quiet,
        tensorboard=not args.no_tensorboard), *writers]))
  config = {k: v for k, v in vars(args).items() if k != "command"}
  # As the benchmark got them.
  config.update(n_experiences=_n_experiences(args), lazy=_lazy(args))
  config["strategy_name"] = strategy.name
  if sweep_name == "lr":  # Each run's is in the labels, not the flag's.
    config["lr"] = None
  config["strategy_hyperparameters"] = _resolved_hyperparameters(
      args.strategy, _strategy_hparams(args), sweep_name)
  if writer is not None:
    writer.write_hparams(_hparams_record(config))
  fit_kwargs = dict(epochs=args.epochs, batch_size=args.batch_size,
                    eval_batch_size=args.eval_batch_size,
                    eval_every=args.eval_every, writer=writer,
                    **_watch_kwargs(args),
                    reset_optimizer=args.reset_optimizer,
                    reset_schedule=args.reset_schedule,
                    mask_unseen_classes=not args.no_class_masking,
                    progress=primary and not args.no_progress,
                    checkpoint_dir=args.checkpoint_dir,
                    checkpoint_keep=args.checkpoint_keep,
                    device_memory_budget_mb=args.device_memory_budget_mb,
                    on_nonfinite=args.on_nonfinite,
                    metrics=_metric_selection(args),
                    loss=jaxcl.training.smoothed_cross_entropy(
                        args.label_smoothing))
  lr = _learning_rate(args, strategy, benchmark)
  # reduce_on_plateau averages the loss over the largest experience's epoch.
  epoch_steps = (max(_steps_per_epoch(args, strategy, benchmark))
                 if args.lr_schedule == "plateau" else 1)
  try:
    if writer is not None and args.image_samples:
      loggers.write_image_samples(writer, benchmark, seed=args.seed)
    if sweep_name is None:
      result = jaxcl.fit(model, strategy,
                         _optimizer(args, lr, optax, epoch_steps),
                         benchmark, seed=args.seed, seeds=seeds, **fit_kwargs)
    else:
      hparams = _strategy_hparams(args)
      result = jaxcl.sweep(
          model, benchmark, sweep_values, seed=args.seed,
          strategy=(strategy if sweep_name == "lr" else lambda v:
                    jaxcl.strategies.from_spec(args.strategy,
                                               **{**hparams, sweep_name: v})),
          optimizer=(lambda v: _optimizer(args, v, optax, epoch_steps,
                                          inject=True))
          if sweep_name == "lr" else _optimizer(args, lr, optax, epoch_steps),
          **fit_kwargs)
    if writer is not None:
      _write_images(writer, logdir, result, sweep_name)
  except Exception:
    # Refused before any result (arguments fit checks, another run's
    # checkpoint): a folder this run created holds nothing of it.
    if writer is not None and not writer.wrote_scalars:
      writer.close()
      _remove_created(logdir, created)
    raise
  finally:
    if writer is not None:
      writer.close()
  results = {
      **_result_fields(result),
      "timings": {**result.timings,
                  "process_s": time.perf_counter() - start},
      "config": config,
      "environment": {"jax": jax.__version__,
                      "jaxlib": jax.lib.__version__,
                      "jaxcl": jaxcl.__version__,
                      "device": str(jax.devices()[0].device_kind),
                      "platform": jax.default_backend(),
                      "processes": jax.process_count(),
                      "devices": jax.device_count()},
  }
  # CLEAR's summaries need one test period per trained one (an online
  # split trains several rows per period); linear in the entries, so those
  # of the seeds' mean matrix are the mean of the seeds'.
  clear = (args.benchmark in ("clear10", "clear100") and not args.online_size
           and sweep_name is None)
  if clear:
    results["clear_metrics"] = jaxcl.evaluation.clear_metrics(
        _accuracy_matrix(result))
  if not primary:
    return results
  (logdir / "results.json").write_text(json.dumps(loggers.json_safe(results), indent=2))
  for label, one in _reported(result, sweep_name):
    print("\nAccuracy matrix (row: after training experience i; column: "
          "test experience j)" + (f", {label}" if label else ""))
    if label is None and hasattr(result, "runs"):
      finite = sum(run.nonfinite is None for run in result.runs)
      left_out = (f" ({len(result.runs) - finite} left out: their loss "
                  "became NaN or infinite)" if finite < len(result.runs)
                  else "")
      print(f"mean over {len(result.runs)} runs {list(result.labels)}"
            f"{left_out}:")
    print(loggers.format_accuracy_matrix(_accuracy_matrix(one)))
    print()
    # The timings are the whole program's, once after the last table.
    timings = result.timings if one is result else {}
    print(loggers.format_metrics_table({**one.metrics, **timings}))
  if sweep_name is not None:
    print()
    print(loggers.format_metrics_table(result.timings))
  if clear:
    print("\nCLEAR's metrics of the accuracy matrix:")
    print(loggers.format_metrics_table(results["clear_metrics"]))
  print(f"\nResults written to {logdir}")
  return results


# fit's and the checkpointer's words for what a flag sets.
_FLAGS_OF_FIT_TERMS = ((r"\bon_nonfinite='flag'", "--on-nonfinite flag"),
                       (r"\bcheckpoint_dir\b", "--checkpoint-dir"))


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of the ``jaxcl`` console script."""
  try:
    args = build_parser().parse_args(argv)
    run(args, _typed_flags(argv))
  except (ValueError, TypeError, OSError, FloatingPointError) as e:
    # fit's advice, in the command line's terms.
    message = str(e)
    for python, flag in _FLAGS_OF_FIT_TERMS:
      message = re.sub(python, flag, message)
    print(f"jaxcl: error: {message}", file=sys.stderr)
  else:
    return 0
  # On several hosts, the error's traceback may hold device arrays in
  # reference cycles, freed only at Python's next collection: JAX destroys
  # its backend at exit, before the hosts' shutdown barrier, only if no array
  # keeps it alive. One process skips the full collection, whose cost grows
  # with the heap (up to a second in a long session that calls main).
  if _joined_other_hosts():
    gc.collect()
  return 2


def _joined_other_hosts() -> bool:
  """Whether this process joined others with ``jax.distributed`` (without
  importing JAX)."""
  distributed = sys.modules.get("jax._src.distributed")
  state = getattr(distributed, "global_state", None)
  return getattr(state, "client", None) is not None


if __name__ == "__main__":
  sys.exit(main())
