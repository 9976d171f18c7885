"""Avalanche 0.6's side of examples/benchmark_avalanche.py (needs avalanche-lib).

Runs one of issue 7's settings with avalanche-lib 0.6 on PyTorch's CPU (or,
with --device cuda, on a GPU), on the digits that
`benchmark_avalanche.py --avalanche-python` exports from jaxcl's bundled
MNIST, and prints one JSON line with the seconds spent in
imports, building the benchmark, training and evaluation, and the final
stream accuracy. It does not import jaxcl (Avalanche lives in its own
virtual environment):

  python3 -m venv /tmp/ava
  /tmp/ava/bin/pip install torch==2.14.1 torchvision==0.29.1 avalanche-lib==0.6.0
  python examples/benchmark_avalanche.py --avalanche-python /tmp/ava/bin/python

Avalanche's own builders run unchanged: `PermutedMNIST` and `SplitMNIST`
with their default transforms, `split_online_stream` for the online setting;
only the MNIST loader is pointed at the exported digits (Avalanche would
download MNIST). Avalanche is given its fastest reasonable configuration:
no loggers, accuracy metrics only, evaluation in batches of 1,000 (as
jaxcl's default), two torch threads on the 2-core machine.

Usage (inside the Avalanche environment):
  python examples/avalanche_reference.py --setting naive --digits D.npz
      [--device cuda]
"""

import argparse
import json
import time

_START = time.perf_counter()

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import torch
from avalanche.benchmarks.classic import cmnist
from avalanche.benchmarks.datasets.external_datasets.mnist import TensorMNIST
from avalanche.benchmarks.scenarios.online import split_online_stream
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.models import SimpleMLP
from avalanche.training import EWC, Naive
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from avalanche.training.plugins.evaluation import default_evaluator

_IMPORTS_S = time.perf_counter() - _START

# Issue 7's settings, as in benchmark_avalanche.py.
SETTINGS = {
    "naive": {"benchmark": "permuted", "epochs": 2, "batch_size": 32,
              "strategy": "naive"},
    "ewc": {"benchmark": "permuted", "epochs": 2, "batch_size": 32,
            "strategy": "ewc"},
    "online": {"benchmark": "online", "epochs": 1, "batch_size": 10,
               "strategy": "replay"},
}


def _mnist_from(arrays: dict, split: str) -> TensorMNIST:
  """Avalanche's MNIST dataset class holding the exported digits of `split`."""
  dataset = TensorMNIST.__new__(TensorMNIST)
  # What torchvision's VisionDataset and MNIST constructors would set,
  # without their download check.
  dataset.root, dataset.train = "", split == "train"
  dataset.transform = dataset.target_transform = dataset.transforms = None
  dataset.data = torch.from_numpy(arrays[f"{split}_x"].reshape(-1, 28, 28))
  dataset.targets = torch.from_numpy(arrays[f"{split}_y"].astype(np.int64))
  return dataset


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--setting", required=True, choices=sorted(SETTINGS))
  parser.add_argument("--digits", required=True,
                      help="the .npz written by benchmark_avalanche.py")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--device", default="cpu",
                      help="PyTorch device to train and evaluate on "
                      "(cpu, cuda)")
  parser.add_argument("--default-evaluator", action="store_true",
                      help="Avalanche's default evaluator (accuracy and loss "
                      "per epoch, experience and stream; interactive logger) "
                      "instead of stream accuracy alone, without loggers")
  args = parser.parse_args()
  setting = SETTINGS[args.setting]
  torch.set_num_threads(2)
  torch.manual_seed(args.seed)

  start = time.perf_counter()
  arrays = dict(np.load(args.digits))
  splits = (_mnist_from(arrays, "train"), _mnist_from(arrays, "test"))
  cmnist.get_mnist_dataset = lambda dataset_root: splits
  if setting["benchmark"] == "permuted":
    bench = cmnist.PermutedMNIST(5, seed=args.seed)
    train_stream = list(bench.train_stream)
    # Evaluate after every experience, as jaxcl's default.
    eval_after = set(range(len(train_stream)))
  else:
    bench = cmnist.SplitMNIST(5, seed=args.seed)
    train_stream, eval_after = [], set()
    for experience in bench.train_stream:
      train_stream.extend(split_online_stream([experience], 10,
                                              seed=args.seed))
      # jaxcl's default for online streams: evaluate at the end of each
      # original experience.
      eval_after.add(len(train_stream) - 1)
  build_s = time.perf_counter() - start

  model = SimpleMLP(num_classes=10, input_size=784, hidden_size=512,
                    hidden_layers=1, drop_rate=0.5)
  common = dict(
      optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
      criterion=torch.nn.CrossEntropyLoss(),
      train_mb_size=setting["batch_size"], train_epochs=setting["epochs"],
      eval_mb_size=1000, device=args.device,
      evaluator=(default_evaluator() if args.default_evaluator else
                 EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])))
  if setting["strategy"] == "ewc":
    strategy = EWC(model, ewc_lambda=1.0, mode="separate", **common)
  elif setting["strategy"] == "replay":
    strategy = Naive(model, plugins=[ReplayPlugin(mem_size=200)], **common)
  else:
    strategy = Naive(model, **common)

  if args.device.startswith("cuda"):
    # CUDA's context and first kernels load outside the timed training, as
    # jaxcl's backend starts before its train_s (Avalanche moves the model
    # to the device inside train()).
    model.to(args.device)
    (torch.ones(8, 8, device=args.device) @ torch.ones(8, 8,
                                                       device=args.device)).sum()
    torch.cuda.synchronize(args.device)
  train_s = eval_s = 0.0
  results = {}
  for index, experience in enumerate(train_stream):
    start = time.perf_counter()
    strategy.train(experience)
    if args.device.startswith("cuda"):  # CUDA kernels run asynchronously.
      torch.cuda.synchronize(args.device)
    train_s += time.perf_counter() - start
    if index in eval_after:
      start = time.perf_counter()
      results = strategy.eval(bench.test_stream)
      eval_s += time.perf_counter() - start
  accuracy = next(value for name, value in results.items()
                  if name.startswith("Top1_Acc_Stream"))
  print(json.dumps({
      "setting": args.setting, "imports_s": _IMPORTS_S, "build_s": build_s,
      "train_s": train_s, "eval_s": eval_s, "eval_passes": len(eval_after),
      "experiences": len(train_stream), "stream_accuracy": accuracy,
      "torch": torch.__version__, "device": args.device}))


if __name__ == "__main__":
  main()
