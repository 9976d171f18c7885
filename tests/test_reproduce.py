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

_ORDER_10 = list(range(10))
_MAMMOTH_NORMALIZE = [[0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2615]]


def _mlp(hidden_size, hidden_layers, drop_rate=0.0, name="mlp", **others):
  return {"name": name, "hidden_size": hidden_size,
          "hidden_layers": hidden_layers, "drop_rate": drop_rate, **others}


def _opt(name, lr, momentum=0.0, weight_decay=0.0, lr_milestones=(),
         lr_gamma=1.0):
  return {"name": name, "lr": lr, "momentum": momentum,
          "weight_decay": weight_decay, "lr_milestones": list(lr_milestones),
          "lr_gamma": lr_gamma}


def _row(published, benchmark, n_experiences, model, optimizer, strategy,
         hparams, epochs, batch_size, *, task_labels=False, order=None,
         normalize=None, online=0, ids_from_zero=False, mask=True,
         reset=True, scale_ce=False):
  """One row's whole setting: every section is compared in full."""
  return {"published": published,
          "benchmark": {"name": benchmark, "n_experiences": n_experiences,
                        "return_task_id": task_labels,
                        "fixed_class_order": order, "normalize": normalize,
                        "online_experience_size": online,
                        "class_ids_from_zero_in_each_exp": ids_from_zero},
          "model": model, "optimizer": optimizer,
          "strategy": {"name": strategy, "hparams": hparams,
                       "scale_ce_by_experience": scale_ce},
          "epochs": epochs, "batch_size": batch_size,
          "mask_unseen_classes": mask, "reset_optimizer": reset}


def _mammoth(published, lr, strategy, hparams, weight_decay=0.0, mask=False):
  """Mammoth's best_args for seq-cifar10: ResNet-18 (nf 64), SGD, 50 epochs
  of batch 32, classes 0..9, its own normalisation, no optimizer reset."""
  return _row(published, "split_cifar10", 5,
              {"name": "slim_resnet18", "nf": 64},
              _opt("sgd", lr, weight_decay=weight_decay), strategy, hparams,
              50, 32, order=_ORDER_10, normalize=_MAMMOTH_NORMALIZE,
              mask=mask, reset=False)


# script -> the row's published accuracy and whole setting.
EXPECTED = {
    "pmnist_ewc": _row(
        0.83, "permuted_mnist", 10, _mlp(512, 1), _opt("sgd", 0.001), "ewc",
        {"ewc_lambda": 1.0, "mode": "separate"}, 10, 256),
    "pmnist_si": _row(
        0.83, "permuted_mnist", 10, _mlp(1000, 1), _opt("adam", 0.001), "si",
        {"si_lambda": 10.0, "eps": 0.1}, 10, 256),
    "pmnist_agem": _row(
        0.81, "permuted_mnist", 17, _mlp(256, 2), _opt("sgd", 0.1), "agem",
        {"patterns_per_exp": 250, "sample_size": 256}, 1, 10),
    "pmnist_gem": _row(
        0.80, "permuted_mnist", 17, _mlp(100, 2), _opt("sgd", 0.1), "gem",
        {"patterns_per_exp": 1000, "memory_strength": 0.5}, 1, 10),
    "pmnist_lfl": _row(
        0.88, "permuted_mnist", 4, _mlp(256, 1), _opt("sgd", 0.01), "lfl",
        {"lambda_e": 1e-4}, 3, 128),
    "smnist_task_si": _row(
        0.97, "split_mnist", 5, _mlp(256, 2, name="mt_mlp"),
        _opt("adam", 0.001), "si", {"si_lambda": 1.0, "eps": 0.1}, 10, 64,
        task_labels=True, order=_ORDER_10),
    "smnist_task_rwalk": _row(
        0.99, "split_mnist", 5, _mlp(256, 2, name="mt_mlp"),
        _opt("adam", 0.001), "rwalk",
        {"ewc_lambda": 0.1, "ewc_alpha": 0.9, "delta_t": 10}, 10, 64,
        task_labels=True, order=_ORDER_10),
    # The baselines' MLP and SimpleMLP end in a plain 10-way linear layer.
    "smnist_gdumb": _row(
        0.97, "split_mnist", 5, _mlp(400, 2), _opt("sgd", 0.1), "gdumb",
        {"mem_size": 4400}, 10, 16, mask=False),
    "smnist_lwf": _row(
        0.23, "split_mnist", 5, _mlp(200, 1, activation="tanh"),
        _opt("sgd", 0.001), "lwf",
        {"alpha": [0.0, 0.5, 1.33333, 2.25, 3.2], "temperature": 2.0}, 21, 128,
        mask=False, scale_ce=True),
    # Avalanche's default generator: Adam 0.01, weight decay 1e-4.
    "smnist_generative_replay": _row(
        0.75, "split_mnist", 5, _mlp(400, 2), _opt("adam", 0.001),
        "generative_replay",
        {"latent_dim": 2, "generator_lr": 0.01, "generator_weight_decay": 1e-4,
         "reset_generator_optimizer": True, "replay_size": 100}, 10, 16,
        mask=False),
    "smnist_online_replay": _row(
        0.92, "split_mnist", 5, _mlp(512, 1, drop_rate=0.5),
        _opt("sgd", 0.1), "replay",
        {"mem_size": 1000, "batch_size_mem": 10, "storage": "class_balanced"},
        1, 10, order=_ORDER_10, online=10, mask=False),
    # IncrementalClassifier: classes not seen yet have no output.
    "scifar10_er_ace": _row(
        0.45, "split_cifar10", 5, {"name": "slim_resnet18", "nf": 20},
        _opt("sgd", 0.1), "er_ace", {"mem_size": 1000, "batch_size_mem": 10},
        1, 10, order=_ORDER_10),
    "scifar10_online_replay": _row(
        0.50, "split_cifar10", 5, {"name": "slim_resnet18", "nf": 20},
        _opt("sgd", 0.1), "replay",
        {"mem_size": 1000, "batch_size_mem": 10, "storage": "class_balanced"},
        1, 10, order=_ORDER_10, online=10, mask=False),
    # ToTensor alone: inputs in [0, 1], no normalisation.
    "scifar100_icarl": _row(
        0.48, "split_cifar100", 10, {"name": "resnet32"},
        _opt("sgd", 2.0, momentum=0.9, weight_decay=1e-5,
             lr_milestones=[49, 63], lr_gamma=0.2), "icarl",
        {"memory_size": 2000, "fixed_memory": True}, 70, 128,
        normalize=[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]),
    "scifar100_replay": _row(
        0.32, "split_cifar100", 20, {"name": "resnet32"},
        _opt("sgd", 0.1, momentum=0.9, weight_decay=2e-4,
             lr_milestones=[66, 132, 198], lr_gamma=0.3), "replay",
        {"mem_size": 2000, "batch_size_mem": 128, "storage": "class_balanced"},
        200, 128, order=list(range(100))),
    "scifar100_task_gem": _row(
        0.63, "split_cifar100", 20, {"name": "mt_slim_resnet18", "nf": 20},
        _opt("sgd", 0.1), "gem",
        {"patterns_per_exp": 256, "memory_strength": 0.5}, 1, 10,
        task_labels=True, ids_from_zero=True),
    "mammoth_er_200": _mammoth(
        0.448, 0.1, "replay",
        {"mem_size": 200, "batch_size_mem": 32, "storage": "reservoir"}),
    "mammoth_er_500": _mammoth(
        0.577, 0.1, "replay",
        {"mem_size": 500, "batch_size_mem": 32, "storage": "reservoir"}),
    "mammoth_der_200": _mammoth(
        0.619, 0.03, "der",
        {"mem_size": 200, "batch_size_mem": 32, "alpha": 0.3, "beta": 0.0}),
    "mammoth_der_500": _mammoth(
        0.705, 0.03, "der",
        {"mem_size": 500, "batch_size_mem": 32, "alpha": 0.3, "beta": 0.0}),
    "mammoth_derpp_200": _mammoth(
        0.649, 0.03, "der",
        {"mem_size": 200, "batch_size_mem": 32, "alpha": 0.1, "beta": 0.5}),
    "mammoth_derpp_500": _mammoth(
        0.727, 0.03, "der",
        {"mem_size": 500, "batch_size_mem": 32, "alpha": 0.2, "beta": 0.5}),
    # iCaRL's loss and nearest-mean classifier use the classes seen so far.
    "mammoth_icarl_200": _mammoth(
        0.490, 0.1, "icarl", {"memory_size": 200, "fixed_memory": True},
        weight_decay=1e-5, mask=True),
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


def _same(got, want) -> bool:
  """Equal values, floats to 1e-9 relative, tuples and lists alike."""
  if isinstance(want, dict):
    return (isinstance(got, dict) and set(got) == set(want)
            and all(_same(got[k], want[k]) for k in want))
  if isinstance(want, (list, tuple)):
    return (isinstance(got, (list, tuple)) and len(got) == len(want)
            and all(_same(g, w) for g, w in zip(got, want)))
  if isinstance(want, float) and not isinstance(got, bool):
    return got == pytest.approx(want, rel=1e-9)
  return type(got) is type(want) and got == want


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_matches_the_published_row(name):
  config, want = _config(name).to_dict(), EXPECTED[name]
  for key, value in want.items():
    got = config[key]
    if key == "benchmark":
      got = {k: got[k] for k in value}
    assert _same(got, value), (key, got, value)


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
