"""SplitMNIST (5 experiences, task labels), SI — published 0.97 (continual-learning-baselines).

Setting: multi-head MLP 784-256-256 (one head per task, no dropout), Adam
lr 0.001, 10 epochs, batch 64, SI lambda 1, eps 0.1; digits in the order
0..9, task label = experience.

--local: the published setting on the bundled MNIST digits.
"""

import _common


def get_config():
  """The published setting of the row."""
  return _common.task_split_mnist_config(
      name="smnist_task_si", row="SplitMNIST (5, task labels) / SI",
      published=0.97, strategy="si", hparams={"si_lambda": 1.0, "eps": 0.1})


if __name__ == "__main__":
  _common.main(get_config)
