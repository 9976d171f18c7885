"""The reproduction scripts of ``examples/reproduce/``: configs and a tiny run.

The expected numbers below are copied from REFERENCE.md's reference table
(continual-learning-baselines) and its Mammoth/DER Seq-CIFAR-10 numbers, and
from Mammoth's best hyperparameters for the rows the table only names; they
are written here independently of the scripts' configs.
"""

import dataclasses
import importlib
import json
import pathlib
import sys
import types

import jax.numpy as jnp
import ml_collections
import optax
import pytest

REPRODUCE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "reproduce"
sys.path.insert(0, str(REPRODUCE))

import _common  # The scripts' shared runner, on the path above.

_MLP = "mlp"
_MAMMOTH = {"benchmark": "split_cifar10", "n_experiences": 5,
            "task_labels": False, "model": "slim_resnet18", "nf": 64,
            "optimizer": "sgd", "momentum": 0.0, "epochs": 50, "batch_size": 32}


def _row(published, benchmark, n_experiences, task_labels, model, optimizer,
         lr, strategy, hparams, **others):
  """One row's expectations (``others``: further config values to check)."""
  return {"published": published, "benchmark": benchmark,
          "n_experiences": n_experiences, "task_labels": task_labels,
          "model": model, "optimizer": optimizer, "lr": lr,
          "strategy": strategy, "hparams": hparams, **others}


def _mammoth(published, lr, strategy, hparams):
  return {**_MAMMOTH, "published": published, "lr": lr, "strategy": strategy,
          "hparams": hparams}


# script -> the row's published accuracy and key hyperparameters.
EXPECTED = {
    "pmnist_ewc": _row(
        0.83, "permuted_mnist", 10, False, _MLP, "sgd", 0.001, "ewc",
        {"ewc_lambda": 1.0, "mode": "separate"},
        hidden_size=512, hidden_layers=1, epochs=10, batch_size=256),
    "pmnist_si": _row(
        0.83, "permuted_mnist", 10, False, _MLP, "adam", 0.001, "si",
        {"si_lambda": 10.0, "eps": 0.1},
        hidden_size=1000, hidden_layers=1, epochs=10, batch_size=256),
    "pmnist_agem": _row(
        0.81, "permuted_mnist", 17, False, _MLP, "sgd", 0.1, "agem",
        {"patterns_per_exp": 250, "sample_size": 256},
        hidden_size=256, hidden_layers=2, epochs=1, batch_size=10),
    "pmnist_gem": _row(
        0.80, "permuted_mnist", 17, False, _MLP, "sgd", 0.1, "gem",
        {"patterns_per_exp": 1000, "memory_strength": 0.5},
        hidden_size=100, hidden_layers=2, epochs=1, batch_size=10),
    "pmnist_lfl": _row(
        0.88, "permuted_mnist", 4, False, _MLP, "sgd", 0.01, "lfl",
        {"lambda_e": 1e-4},
        hidden_size=256, hidden_layers=1, epochs=3, batch_size=128),
    "smnist_task_si": _row(
        0.97, "split_mnist", 5, True, "mt_mlp", "adam", 0.001, "si",
        {"si_lambda": 1.0, "eps": 0.1},
        hidden_size=256, hidden_layers=2, epochs=10, batch_size=64),
    "smnist_task_rwalk": _row(
        0.99, "split_mnist", 5, True, "mt_mlp", "adam", 0.001, "rwalk", {},
        hidden_size=256, hidden_layers=2, epochs=10, batch_size=64),
    "smnist_gdumb": _row(
        0.97, "split_mnist", 5, False, _MLP, "sgd", 0.1, "gdumb",
        {"mem_size": 4400},
        hidden_size=400, hidden_layers=2, epochs=10, batch_size=16),
    "smnist_lwf": _row(
        0.23, "split_mnist", 5, False, _MLP, "sgd", 0.001, "lwf",
        {"alpha": [0, 0.5, 1.33333, 2.25, 3.2], "temperature": 2.0},
        hidden_size=200, hidden_layers=1, epochs=21, batch_size=128,
        activation="tanh"),
    "smnist_generative_replay": _row(
        0.75, "split_mnist", 5, False, _MLP, "adam", 0.001,
        "generative_replay", {},
        hidden_size=400, hidden_layers=2, epochs=10, batch_size=16),
    "smnist_online_replay": _row(
        0.92, "split_mnist", 5, False, _MLP, "sgd", 0.1, "replay",
        {"mem_size": 1000, "storage": "class_balanced"},
        hidden_size=512, drop_rate=0.5, online_experience_size=10),
    "scifar10_er_ace": _row(
        0.45, "split_cifar10", 5, False, "slim_resnet18", "sgd", 0.1,
        "er_ace", {"mem_size": 1000}, epochs=1, batch_size=10),
    "scifar10_online_replay": _row(
        0.50, "split_cifar10", 5, False, "slim_resnet18", "sgd", 0.1,
        "replay", {"mem_size": 1000}, online_experience_size=10),
    "scifar100_icarl": _row(
        0.48, "split_cifar100", 10, False, "resnet32", "sgd", 2.0, "icarl",
        {"memory_size": 2000}, momentum=0.9, epochs=70, batch_size=128),
    "scifar100_replay": _row(
        0.32, "split_cifar100", 20, False, "resnet32", "sgd", 0.1, "replay",
        {"mem_size": 2000, "storage": "class_balanced"},
        momentum=0.9, epochs=200),
    "scifar100_task_gem": _row(
        0.63, "split_cifar100", 20, True, "mt_slim_resnet18", "sgd", 0.1,
        "gem", {"patterns_per_exp": 256}, epochs=1, batch_size=10),
    "mammoth_er_200": _mammoth(0.448, 0.1, "replay",
                               {"mem_size": 200, "batch_size_mem": 32}),
    "mammoth_er_500": _mammoth(0.577, 0.1, "replay",
                               {"mem_size": 500, "batch_size_mem": 32}),
    "mammoth_der_200": _mammoth(
        0.619, 0.03, "der", {"mem_size": 200, "alpha": 0.3, "beta": 0.0}),
    "mammoth_der_500": _mammoth(
        0.705, 0.03, "der", {"mem_size": 500, "alpha": 0.3, "beta": 0.0}),
    "mammoth_derpp_200": _mammoth(
        0.649, 0.03, "der", {"mem_size": 200, "alpha": 0.1, "beta": 0.5}),
    "mammoth_derpp_500": _mammoth(
        0.727, 0.03, "der", {"mem_size": 500, "alpha": 0.2, "beta": 0.5}),
    "mammoth_icarl_200": _mammoth(0.490, 0.1, "icarl", {"memory_size": 200}),
}
SCRIPTS = sorted(p.stem for p in REPRODUCE.glob("*.py")
                 if not p.stem.startswith("_"))
_REQUIRED = ("name", "row", "published", "source", "benchmark.name",
             "benchmark.n_experiences", "benchmark.return_task_id",
             "model.name", "optimizer.name", "optimizer.lr", "strategy.name",
             "strategy.hparams", "epochs", "batch_size", "seeds", "local.note")


def _config(name: str) -> ml_collections.ConfigDict:
  return importlib.import_module(name).get_config()


def _get(config, dotted: str):
  for part in dotted.split("."):
    config = config[part]
  return config


def test_every_row_has_a_script():
  assert set(SCRIPTS) == set(EXPECTED)


@pytest.mark.parametrize("name", SCRIPTS)
def test_config_has_required_keys(name):
  config = _config(name)
  for key in _REQUIRED:
    _get(config, key)
  assert config.name == name
  assert 0 < config.published < 1
  assert list(config.seeds) == [0]
  assert config.local.note
  _common.local_config(config)  # Local overrides name existing fields.


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_matches_the_published_row(name):
  config, want = _config(name), EXPECTED[name]
  assert config.published == pytest.approx(want["published"])
  assert config.benchmark.name == want["benchmark"]
  assert config.benchmark.n_experiences == want["n_experiences"]
  assert config.benchmark.return_task_id == want["task_labels"]
  assert config.model.name == want["model"]
  for key in ("hidden_size", "hidden_layers", "drop_rate", "nf", "activation"):
    if key in want:
      assert config.model[key] == want[key], key
  assert config.optimizer.name == want["optimizer"]
  assert config.optimizer.lr == pytest.approx(want["lr"])
  assert config.optimizer.momentum == pytest.approx(want.get("momentum", 0.0))
  for key in ("epochs", "batch_size"):
    if key in want:
      assert config[key] == want[key], key
  assert (config.benchmark.online_experience_size
          == want.get("online_experience_size", 0))
  assert config.strategy.name == want["strategy"]
  for key, value in want["hparams"].items():
    got = config.strategy.hparams[key]
    assert got == (value if isinstance(value, str) else pytest.approx(value)), key


@pytest.mark.parametrize("name", SCRIPTS)
def test_cifar_local_runs_are_labelled_not_comparable(name):
  config = _config(name)
  if "cifar" in config.benchmark.name:
    assert "not comparable" in config.local.note


def test_overrides_keep_types_and_refuse_unknown_keys():
  config = _config("pmnist_ewc")
  config.lock()
  with config.strategy.hparams.unlocked():
    _common.apply_overrides(config, ["epochs=2", "optimizer.lr=1",
                                     "strategy.hparams.decay_factor=None"])
  assert config.epochs == 2 and config.optimizer.lr == 1.0
  assert isinstance(config.optimizer.lr, float)
  with pytest.raises(ValueError, match="unknown key"):
    _common.apply_overrides(config, ["epoch=2"])
  with pytest.raises(ValueError, match="KEY=VALUE"):
    _common.apply_overrides(config, ["epochs"])


def test_step_decay_counts_epochs():
  opt = ml_collections.ConfigDict({
      "name": "sgd", "lr": 1.0, "momentum": 0.0, "weight_decay": 0.0,
      "lr_milestones": [1, 2], "lr_gamma": 0.5})
  params = {"w": jnp.ones(())}
  optimizer = _common.build_optimizer(opt, steps_per_epoch=2)
  state = optimizer.init(params)
  steps = []
  for _ in range(6):  # Two steps per epoch.
    updates, state = optimizer.update({"w": jnp.ones(())}, state, params)
    steps.append(-float(updates["w"]))
  assert steps == [1, 1, 0.5, 0.5, 0.25, 0.25]


def test_avalanche_rows_reset_the_optimizer_at_every_experience():
  for name in SCRIPTS:
    assert _config(name).reset_optimizer == (not name.startswith("mammoth")), name


def test_scale_ce_by_experience_penalty():
  @dataclasses.dataclass
  class State:
    experience: jnp.ndarray
    cl_state: object = None

    def replace(self, **changes):
      return dataclasses.replace(self, **changes)

  strategy = _common.scale_ce_by_experience()
  ctx = types.SimpleNamespace(
      loss=lambda logits, batch: optax.softmax_cross_entropy_with_integer_labels(
          logits, batch["y"]))
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
  batch = {"y": jnp.array([0, 0]), "weight": jnp.array([1.0, 0.0])}
  state = strategy.begin_experience(ctx, State(jnp.int32(2)), None, None)
  ce = float(ctx.loss(logits, batch)[0])  # The padded row has weight 0.
  assert float(strategy.penalty(ctx, None, state.cl_state, batch, logits)) == (
      pytest.approx((1 / 3 - 1) * ce))


def test_cifar_standin_is_shaped_like_cifar():
  config = _common.local_config(_config("scifar100_task_gem"))
  bench = _common.build_benchmark(config, local=True, data_dir=None)
  assert tuple(bench.input_shape) == (32, 32, 3)
  assert len(bench.train_stream) == 5 and bench.n_tasks == 5
  assert [len(e) for e in bench.train_stream] == [60] * 5
  assert sum(len(e) for e in bench.test_stream) == 200


def test_script_runs_end_to_end(tmp_path):
  """The LwF row (tanh MLP, CE scaling, per-experience alpha), two seeds, 1 epoch."""
  out = tmp_path / "lwf.json"
  results = _common.main(importlib.import_module("smnist_lwf").get_config,
                         ["--local", "--seeds", "0,1", "--out", str(out),
                          "--set", "epochs=1"])
  saved = json.loads(out.read_text())
  accuracy = saved["stream_accuracy"]
  assert accuracy["mean"] == pytest.approx(results["stream_accuracy"]["mean"])
  assert len(accuracy["per_seed"]) == 2 and saved["seeds"] == [0, 1]
  assert all(0.0 < a <= 1.0 for a in accuracy["per_seed"])
  assert saved["config"]["epochs"] == 1
  assert saved["data"].startswith("bundled MNIST")
  assert len(saved["accuracy_matrix"]) == 5
