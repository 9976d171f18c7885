"""SplitMNIST (5 experiences, task labels), RWalk — published 0.99 (continual-learning-baselines).

Setting: multi-head MLP 784-256-256 (one head per task, no dropout), Adam
lr 0.001, 10 epochs, batch 64; digits in the order 0..9, task label =
experience. The table gives no RWalk hyperparameters; the baseline's are
Avalanche's defaults: ewc_lambda 0.1, ewc_alpha 0.9, delta_t 10.

--local: the published setting on the bundled MNIST digits.
"""

import _common


def get_config():
  """The published setting of the row."""
  return _common.task_split_mnist_config(
      name="smnist_task_rwalk", row="SplitMNIST (5, task labels) / RWalk",
      published=0.99, strategy="rwalk",
      hparams={"ewc_lambda": 0.1, "ewc_alpha": 0.9, "delta_t": 10})


if __name__ == "__main__":
  _common.main(get_config)
