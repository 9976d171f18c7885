"""PermutedMNIST (4 experiences), LFL — published 0.88 (continual-learning-baselines).

Setting: MLP 784-256-10 (no dropout), SGD lr 0.01, 3 epochs, batch 128,
lambda_e 1e-4 (output layer frozen after the first experience, as
Avalanche's LFL does); four pixel permutations, one shared head.

--local: the published setting on the bundled MNIST digits.
"""

import _common


def get_config():
  """The published setting of the row."""
  config = _common.base_config(name="pmnist_lfl", row="PermutedMNIST (4) / LFL",
                               published=0.88)
  config.benchmark.update(name="permuted_mnist", n_experiences=4)
  config.model = {"name": "mlp", "hidden_size": 256, "hidden_layers": 1,
                  "drop_rate": 0.0}
  config.optimizer.update(name="sgd", lr=0.01)
  config.strategy.update(name="lfl", hparams={"lambda_e": 1e-4})
  config.update(epochs=3, batch_size=128)
  return config


if __name__ == "__main__":
  _common.main(get_config)
