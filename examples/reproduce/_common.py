"""Shared runner of the reproduction scripts in ``examples/reproduce/``.

Every script in this folder is one row of a published results table (the
continual-learning-baselines table and the Mammoth/DER Seq-CIFAR-10 numbers of
``REFERENCE.md``): a ``get_config()`` returning an ``ml_collections.ConfigDict``
with the published setting, and a call to :func:`main`. This module turns a
config into a benchmark, a model, an optimizer and a strategy, runs
``jaxcl.fit``, prints the stream accuracy and writes a results JSON.

Config fields (see :func:`base_config`):

- ``name``, ``row``, ``published`` (final pooled stream accuracy, 0-1),
  ``source``: what the script reproduces.
- ``benchmark``: a catalogue name (``permuted_mnist``, ``split_mnist``,
  ``split_cifar10``, ``split_cifar100``) and its arguments;
  ``online_experience_size`` > 0 cuts the train stream into online
  mini-experiences; ``normalize`` = ``((mean...), (std...))`` replaces the
  catalogue's normalisation; ``train_per_class`` / ``test_per_class`` (> 0)
  keep that many images per class (local stand-in only).
- ``model``: a ``jaxcl.models.MODELS`` name and its
  keyword arguments.
- ``optimizer``: ``sgd`` or ``adam``, ``lr``, ``momentum``, ``weight_decay``
  (PyTorch-style, added to the gradient), ``lr_milestones`` (epochs of the
  current experience after which the rate is multiplied by ``lr_gamma``;
  the schedule restarts at every experience, as Avalanche's
  ``LRSchedulerPlugin`` does).
- ``strategy``: a registry spec and its hyperparameters;
  ``scale_ce_by_experience`` multiplies the cross-entropy of experience ``e``
  (0-based) by ``1 / (e + 1)`` (the LwF baseline's ``LwFCEPenalty``).
- ``epochs``, ``batch_size``, ``eval_batch_size``, ``mask_unseen_classes``,
  ``reset_optimizer`` (a fresh optimizer state at every experience, as the
  Avalanche releases of the published baselines did), ``seeds``.
- ``local``: overrides applied by ``--local`` (same layout) and ``note``,
  which says how the local run departs from the published setting.

Command line (every script):

  python examples/reproduce/SCRIPT.py --local [--seeds 0,1,2] [--set KEY=VALUE ...]
  python examples/reproduce/SCRIPT.py --data-dir ~/tfds [--set KEY=VALUE ...]

``--set epochs=1 --set strategy.hparams.mem_size=500`` overrides config
fields after the ``--local`` overrides (values are Python literals, else
strings); unknown keys are refused, except new strategy hyperparameters,
which the strategy factory checks.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import math
import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn

import jaxcl
from jaxcl.benchmarks import augment, classic, generators, sources
from jaxcl.loggers import json_safe
from jaxcl.models import MODELS
from jaxcl.strategies import Strategy, chain, from_spec

BASELINES = "continual-learning-baselines (Avalanche), full dataset, single seed"
MAMMOTH = "Mammoth / DER (Buzzega et al., 2020), Seq-CIFAR-10, class-IL"

# Catalogue entries whose data is not bundled: --local builds a stand-in.
_CIFAR_STATS = {
    "split_cifar10": (classic.CIFAR10_MEAN, classic.CIFAR10_STD),
    "split_cifar100": (classic.CIFAR100_MEAN, classic.CIFAR100_STD),
}
# Mammoth's Seq-CIFAR-10 normalisation (its std differs from Avalanche's).
MAMMOTH_NORMALIZE = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2615))


def base_config(*, name: str, row: str, published: float,
                source: str = BASELINES) -> ml_collections.ConfigDict:
  """A config with every field at its default; scripts fill in their row.

  Args:
    name: The script's file name without ``.py``.
    row: The row of the published table.
    published: The published final stream accuracy (0-1).
    source: Where the number comes from.

  Returns:
    An unlocked ``ConfigDict``.
  """
  return ml_collections.ConfigDict({
      "name": name, "row": row, "published": published, "source": source,
      "benchmark": {
          "name": "split_mnist", "n_experiences": 5, "return_task_id": False,
          "seed": 0, "fixed_class_order": None,
          "class_ids_from_zero_in_each_exp": False,
          "online_experience_size": 0, "normalize": None,
          "train_per_class": 0, "test_per_class": 0},
      "model": {"name": "mlp"},
      "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.0,
                    "weight_decay": 0.0, "lr_milestones": [],
                    "lr_gamma": 1.0},
      "strategy": {"name": "naive", "hparams": {},
                   "scale_ce_by_experience": False},
      "epochs": 1, "batch_size": 32, "eval_batch_size": 1000,
      "mask_unseen_classes": True, "reset_optimizer": True, "seeds": [0],
      "local": {"note": "the published setting on the bundled MNIST digits "
                        "(4,000 train / 1,000 test)"},
  })


def task_split_mnist_config(*, name: str, row: str, published: float,
                            strategy: str,
                            hparams: dict[str, Any]) -> ml_collections.ConfigDict:
  """The baselines' task-incremental SplitMNIST setting (SI and RWalk rows).

  Five experiences of two digits in the order 0..9, task label = experience,
  multi-head MLP 784-256-256 with one 10-unit head per task (no dropout),
  Adam lr 0.001, 10 epochs, batch 64.
  """
  config = base_config(name=name, row=row, published=published)
  config.benchmark.update(name="split_mnist", n_experiences=5,
                          return_task_id=True,
                          fixed_class_order=list(range(10)))
  config.model = {"name": "mt_mlp", "hidden_size": 256, "hidden_layers": 2,
                  "drop_rate": 0.0}
  config.optimizer.update(name="adam", lr=0.001)
  config.strategy.update(name=strategy, hparams=hparams)
  config.update(epochs=10, batch_size=64)
  return config


def mammoth_config(*, name: str, row: str, published: float, strategy: str,
                   hparams: dict[str, Any], lr: float,
                   weight_decay: float = 0.0) -> ml_collections.ConfigDict:
  """Mammoth's Seq-CIFAR-10 setting (``utils/best_args.py``) for one method.

  Five class-incremental experiences of two classes in the order 0..9, the
  ResNet-18 of Mammoth (``SlimResNet18(nf=64)``: same architecture), SGD
  without momentum (so no optimizer state to reset), 50 epochs, batch 32,
  Mammoth's normalisation; the unseen classes are not masked (Mammoth trains
  the full 10-way head).
  ``--local`` uses a small padded-digit stand-in (see :func:`cifar_standin`).

  Args:
    name, row, published: As for :func:`base_config`.
    strategy: Registry name.
    hparams: Strategy hyperparameters.
    lr: Learning rate.
    weight_decay: Mammoth's ``optim_wd``.

  Returns:
    The config.
  """
  config = base_config(name=name, row=row, published=published, source=MAMMOTH)
  config.benchmark.update(name="split_cifar10", n_experiences=5,
                          fixed_class_order=list(range(10)),
                          normalize=MAMMOTH_NORMALIZE)
  config.model = {"name": "slim_resnet18", "nf": 64}
  config.optimizer.update(lr=lr, weight_decay=weight_decay)
  config.strategy.update(name=strategy, hparams=hparams)
  config.update(epochs=50, batch_size=32, mask_unseen_classes=False,
                reset_optimizer=False)
  config.local = {
      "note": "stand-in data: bundled MNIST digits padded to 32x32x3, 20 "
              "train / 20 test per digit, 5 experiences of 2 digits (the "
              "buffer holds the whole stand-in); slim ResNet-18 width nf=20 "
              "instead of 64 and 1 epoch instead of 50 (sized when "
              "convolutions trained about 10x slower inside jaxcl's scanned "
              "loop on CPU, kept for comparable rows; see "
              "docs/reproductions.md (d)); not comparable with the published "
              "number",
      "benchmark": {"train_per_class": 20, "test_per_class": 20},
      "model": {"nf": 20}, "epochs": 1}
  return config


def local_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` with its ``local`` overrides applied (a new ConfigDict)."""
  out = ml_collections.ConfigDict(config.to_dict())

  def merge(target, overrides):
    for key, value in overrides.items():
      if key != "note" and key not in target:
        raise ValueError(f"{config.name}: local override {key!r} is not a "
                         "config field.")
      if isinstance(value, ml_collections.ConfigDict):
        merge(target[key], value)
      elif key != "note":
        target[key] = value

  merge(out, config.local)
  return out


def parse_value(text: str) -> Any:
  """A ``--set`` value: a Python literal if it parses as one, else the string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: ml_collections.ConfigDict,
                    assignments: Sequence[str]) -> None:
  """Applies ``KEY=VALUE`` assignments (dotted keys) to ``config`` in place.

  Existing keys keep their type (an int may become a float); new keys are
  only accepted under ``strategy.hparams``.

  Raises:
    ValueError: For a malformed assignment or an unknown key.
  """
  for assignment in assignments:
    key, sep, text = assignment.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
      raise ValueError(f"--set expects KEY=VALUE, got {assignment!r}.")
    node = config
    for part in path[:-1]:
      if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
        raise ValueError(f"--set {key}: {part!r} is not a config section.")
      node = node[part]
    if path[-1] not in node and path[:-1] != ["strategy", "hparams"]:
      raise ValueError(f"--set {key}: unknown key; the config has "
                       f"{sorted(node.keys())} there.")
    node[path[-1]] = parse_value(text)


def _per_class(x: np.ndarray, y: np.ndarray, count: int):
  """The first ``count`` samples of each class (all of them if ``count`` is 0)."""
  if not count:
    return x, y
  keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:count]
                                 for c in np.unique(y)]))
  return x[keep], y[keep]


def _rgb32(x: np.ndarray) -> np.ndarray:
  """28x28x1 digits zero-padded to 32x32 and repeated to three channels."""
  return np.repeat(np.pad(x, [(0, 0), (2, 2), (2, 2), (0, 0)]), 3, axis=-1)


def cifar_standin(
    bench_config: ml_collections.ConfigDict) -> jaxcl.benchmarks.Benchmark:
  """The ``--local`` stand-in for a CIFAR row: bundled digits shaped like CIFAR.

  The 5,000 bundled MNIST digits (4,000 train / 1,000 test), optionally cut
  to ``train_per_class`` / ``test_per_class`` per class, zero-padded to 32x32
  and repeated to three channels, split class-incrementally like the row
  (``n_experiences`` must divide the 10 digits), with the CIFAR dataset's
  normalisation and Avalanche's crop + flip training augmentation, so that
  the same model, augmentation and strategy code runs as on CIFAR. A class
  order given for CIFAR keeps its classes below 10.
  """
  (x, y), (xt, yt) = [
      _per_class(split.x, split.y, count) for split, count in (
          (sources.load_bundled("mnist_bundled", "train"),
           bench_config.train_per_class),
          (sources.load_bundled("mnist_bundled", "test"),
           bench_config.test_per_class))]
  order = bench_config.fixed_class_order
  if order is not None:
    order = [c for c in order if c < 10]
  mean, std = _CIFAR_STATS[bench_config.name]
  return generators.class_incremental(
      (_rgb32(x), y), (_rgb32(xt), yt), bench_config.n_experiences,
      fixed_class_order=order, seed=bench_config.seed,
      return_task_id=bench_config.return_task_id,
      class_ids_from_zero_in_each_exp=(
          bench_config.class_ids_from_zero_in_each_exp),
      preprocess=jaxcl.benchmarks.normalizer(mean, std),
      augment=augment.compose(augment.random_crop(4), augment.random_flip()),
      name=f"{bench_config.name}_digits_standin")


def uses_standin(config: ml_collections.ConfigDict, local: bool) -> bool:
  """Whether a run of ``config`` uses :func:`cifar_standin` (local CIFAR rows)."""
  return local and config.benchmark.name in _CIFAR_STATS


def build_benchmark(config: ml_collections.ConfigDict, *, local: bool,
                    data_dir: str | None) -> jaxcl.benchmarks.Benchmark:
  """The config's benchmark: full tfds data, bundled MNIST, or a stand-in.

  Args:
    config: The (resolved) run config.
    local: Use bundled data: the MNIST catalogue entries fall back to the
      bundled digits; CIFAR entries get :func:`cifar_standin`.
    data_dir: tfds data directory of the full dataset (when not local).

  Returns:
    The benchmark, normalised as configured and cut into online
    mini-experiences if ``online_experience_size`` is set.
  """
  b = config.benchmark
  standin = uses_standin(config, local)
  if (b.train_per_class or b.test_per_class) and not standin:
    raise ValueError("benchmark.train_per_class/test_per_class only apply to "
                     "the --local stand-in of a CIFAR row.")
  if standin:
    bench = cifar_standin(b)
  else:
    factory = jaxcl.benchmarks.BENCHMARKS[b.name]
    offered = {
        "n_experiences": b.n_experiences, "seed": b.seed,
        "return_task_id": b.return_task_id,
        "fixed_class_order": b.fixed_class_order,
        "class_ids_from_zero_in_each_exp": b.class_ids_from_zero_in_each_exp,
        "data_dir": None if local else data_dir}
    accepted = inspect.signature(factory).parameters
    bench = factory(**{k: v for k, v in offered.items() if k in accepted})
  if b.normalize is not None:
    bench = dataclasses.replace(
        bench, preprocess=jaxcl.benchmarks.normalizer(*b.normalize))
  if b.online_experience_size:
    bench = generators.split_online(bench, b.online_experience_size,
                                    seed=b.seed)
  return bench


def build_model(model_config: ml_collections.ConfigDict,
                bench: jaxcl.benchmarks.Benchmark) -> nn.Module:
  """The named model, with ``num_classes`` (and ``n_tasks``) from ``bench``."""
  kwargs = {k: v for k, v in model_config.items() if k != "name"}
  factory = MODELS[model_config.name]
  accepted = inspect.signature(factory).parameters
  unknown = set(kwargs) - set(accepted)
  if unknown:
    raise ValueError(f"model {model_config.name!r} takes no {sorted(unknown)}.")
  for key, value in (("num_classes", bench.n_classes),
                     ("n_tasks", bench.n_tasks)):
    if key in accepted:
      kwargs[key] = value
  return factory(**kwargs)


def build_optimizer(opt: ml_collections.ConfigDict,
                    steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD or Adam with optional step decay and weight decay.

  ``lr_milestones`` count epochs: ``fit`` takes ``steps_per_epoch``
  optimizer steps per epoch (the largest train experience over the batch
  size), so step ``k`` of the schedule is in epoch ``k // steps_per_epoch``;
  :func:`run` has ``fit`` restart the schedule at every experience.
  """
  boundaries = jnp.asarray([m * steps_per_epoch for m in opt.lr_milestones],
                           jnp.int32)

  def learning_rate(count):
    return opt.lr * opt.lr_gamma ** jnp.sum(count >= boundaries)

  lr = learning_rate if len(opt.lr_milestones) else opt.lr
  if opt.name == "sgd":
    base = optax.sgd(lr, momentum=opt.momentum or None)
  elif opt.name == "adam":
    base = optax.adam(lr)
  else:
    raise ValueError(f"optimizer.name must be 'sgd' or 'adam', got {opt.name!r}.")
  if opt.weight_decay:
    return optax.chain(optax.add_decayed_weights(opt.weight_decay), base)
  return base


def scale_ce_by_experience() -> Strategy:
  """Scales the cross-entropy of experience ``e`` (0-based) by ``1 / (e + 1)``.

  The LwF baseline (``LwFCEPenalty``, after van de Ven et al., 2019) trains
  ``CE / n_seen + alpha_e * KL``; chained after ``lwf``, this strategy's
  penalty adds ``(1 / (e + 1) - 1) * CE`` to the loop's cross-entropy
  (the same sample-weighted mean over the same masked logits).
  """
  def init(ctx, params, key):
    del ctx, params, key
    return jnp.ones((), jnp.float32)

  def begin_experience(ctx, state, data, key):
    del ctx, data, key
    return state.replace(cl_state=1.0 / (state.experience + 1.0))

  def penalty(ctx, params, scale, batch, logits):
    del params
    weight = batch["weight"]
    ce = jnp.sum(ctx.loss(logits, batch) * weight) / jnp.maximum(
        jnp.sum(weight), 1.0)
    return (scale - 1.0) * ce

  return Strategy(name="scale_ce_by_experience", init=init,
                  begin_experience=begin_experience, penalty=penalty)


def build_strategy(strategy_config: ml_collections.ConfigDict) -> Strategy:
  """The registry strategy, chained with the CE scaling if configured."""
  strategy = from_spec(strategy_config.name, **strategy_config.hparams.to_dict())
  if strategy_config.scale_ce_by_experience:
    return chain(strategy, scale_ce_by_experience())
  return strategy


def run(config: ml_collections.ConfigDict, *, local: bool,
        data_dir: str | None) -> dict[str, Any]:
  """Runs a resolved config; returns the results as a JSON-ready dict.

  Every seed of ``config.seeds`` runs (several as one vmapped program);
  the benchmark (class order, permutations) is drawn from
  ``benchmark.seed`` and shared by the seeds.
  """
  start = time.perf_counter()
  bench = build_benchmark(config, local=local, data_dir=data_dir)
  steps_per_epoch = math.ceil(bench.train_stream.max_size / config.batch_size)
  optimizer = build_optimizer(config.optimizer, steps_per_epoch)
  seeds = list(config.seeds)
  result = jaxcl.fit(
      build_model(config.model, bench), build_strategy(config.strategy),
      optimizer, bench, epochs=config.epochs, batch_size=config.batch_size,
      eval_batch_size=config.eval_batch_size,
      mask_unseen_classes=config.mask_unseen_classes,
      reset_optimizer=config.reset_optimizer,
      reset_schedule=bool(len(config.optimizer.lr_milestones)),
      eval_before_training=False,
      metrics=("accuracy", "forgetting", "bwt", "timing"),
      **({"seed": seeds[0]} if len(seeds) == 1 else {"seeds": seeds}))
  runs = getattr(result, "runs", [result])
  accuracy = [r.metrics["stream_accuracy"] for r in runs]
  return {
      "name": config.name, "row": config.row, "source": config.source,
      "published": config.published,
      "data": ("local stand-in (bundled digits), not comparable"
               if uses_standin(config, local)
               else "bundled MNIST (5,000 digits), indicative" if local
               else f"full dataset from {data_dir}"),
      "note": config.local.note if local else "",
      "seeds": seeds,
      "stream_accuracy": {"mean": float(np.mean(accuracy)),
                          "std": float(np.std(accuracy)),
                          "per_seed": accuracy},
      "forgetting": [r.metrics["forgetting"] for r in runs],
      "accuracy_matrix": np.mean([r.accuracy_matrix for r in runs], 0),
      "timings": {**result.timings, "wall_s": time.perf_counter() - start},
      "config": config.to_dict(),
      "environment": {"jax": jax.__version__, "jaxcl": jaxcl.__version__,
                      "backend": jax.default_backend(),
                      "device": jax.devices()[0].device_kind,
                      "cpu_count": os.cpu_count(),
                      "python": platform.python_version()},
  }


def summary(results: dict[str, Any]) -> str:
  """The lines printed at the end of a run."""
  acc, t = results["stream_accuracy"], results["timings"]
  over = (f"{acc['mean']:.3f} (seed {results['seeds'][0]})"
          if len(results["seeds"]) == 1 else
          f"{acc['mean']:.3f} ± {acc['std']:.3f} over seeds {results['seeds']}")
  lines = [f"{results['row']}",
           f"  stream accuracy: {over}",
           f"  published: {results['published']:.3f} ({results['source']})",
           f"  data: {results['data']}",
           (f"  wall time: {t['wall_s']:.1f} s (compile {t['compile_s']:.1f} s, "
           f"train {t['train_s']:.1f} s, eval {t['eval_s']:.1f} s)")]
  if results["note"]:
    lines.append(f"  local run: {results['note']}")
  return "\n".join(lines)


def parse_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
  """The command line shared by every reproduction script."""
  parser = argparse.ArgumentParser(
      description=description,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  where = parser.add_mutually_exclusive_group(required=True)
  where.add_argument("--local", action="store_true",
                     help="run on the bundled data with the config's local "
                     "overrides (offline, minutes on a CPU)")
  where.add_argument("--data-dir", help="tfds data directory holding the "
                     "full dataset (tfds build NAME --data_dir DIR)")
  parser.add_argument("--seeds", help="comma-separated seeds (default: the "
                      "config's, one seed)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      dest="overrides", help="override a config field, e.g. "
                      "--set epochs=1 --set strategy.hparams.mem_size=500")
  parser.add_argument("--out", help="results JSON path (default: "
                      "runs/reproduce/NAME-local.json or NAME-full.json)")
  parser.add_argument("--print-config", action="store_true",
                      help="print the resolved config and exit")
  return parser.parse_args(argv)


def resolve(config: ml_collections.ConfigDict, args: argparse.Namespace
            ) -> ml_collections.ConfigDict:
  """The config a run uses: local overrides, then ``--seeds`` and ``--set``."""
  config = local_config(config) if args.local else ml_collections.ConfigDict(
      config.to_dict())
  if args.seeds:
    config.seeds = [int(s) for s in args.seeds.split(",")]
  config.lock()
  with config.strategy.hparams.unlocked():
    apply_overrides(config, args.overrides)
  return config


def main(get_config: Callable[[], ml_collections.ConfigDict],
         argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Parses the command line, runs the row and writes its results JSON.

  A ``ValueError`` or ``TypeError`` (bad override, missing dataset, invalid
  hyperparameter) ends the process with its message and exit status 2.
  """
  module = sys.modules[get_config.__module__]
  args = parse_args(argv, module.__doc__)
  try:
    config = resolve(get_config(), args)
    if args.print_config:
      print(config)
      return {}
    results = run(config, local=args.local, data_dir=args.data_dir)
  except (ValueError, TypeError) as error:
    print(f"{pathlib.Path(module.__file__).name}: error: {error}",
          file=sys.stderr)
    raise SystemExit(2) from error
  mode = "local" if args.local else "full"
  out = pathlib.Path(args.out or f"runs/reproduce/{config.name}-{mode}.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(json_safe(results), indent=2))
  print(summary(results))
  print(f"  results: {out}")
  return results
