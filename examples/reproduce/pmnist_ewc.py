"""PermutedMNIST (10 experiences), EWC — published 0.83 (continual-learning-baselines).

Setting: MLP 784-512-10 (no dropout), SGD lr 0.001, 10 epochs, batch 256,
EWC lambda 1, separate mode; ten pixel permutations of MNIST, one shared
head (domain-incremental).

--local: the published setting on the bundled MNIST digits.
"""

import _common


def get_config():
  """The published setting of the row."""
  config = _common.base_config(name="pmnist_ewc", row="PermutedMNIST (10) / EWC",
                               published=0.83)
  config.benchmark.update(name="permuted_mnist", n_experiences=10)
  config.model = {"name": "mlp", "hidden_size": 512, "hidden_layers": 1,
                  "drop_rate": 0.0}
  config.optimizer.update(name="sgd", lr=0.001)
  config.strategy.update(name="ewc", hparams={"ewc_lambda": 1.0,
                                              "mode": "separate"})
  config.update(epochs=10, batch_size=256)
  return config


if __name__ == "__main__":
  _common.main(get_config)
