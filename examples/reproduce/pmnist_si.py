"""PermutedMNIST (10 experiences), SI — published 0.83 (continual-learning-baselines).

Setting: MLP 784-1000-10 (no dropout), Adam lr 0.001, 10 epochs, batch 256,
SI lambda 10, eps 0.1; ten pixel permutations, one shared head.

--local: the published setting on the bundled MNIST digits.
"""

import _common


def get_config():
  """The published setting of the row."""
  config = _common.base_config(name="pmnist_si", row="PermutedMNIST (10) / SI",
                               published=0.83)
  config.benchmark.update(name="permuted_mnist", n_experiences=10)
  config.model = {"name": "mlp", "hidden_size": 1000, "hidden_layers": 1,
                  "drop_rate": 0.0}
  config.optimizer.update(name="adam", lr=0.001)
  config.strategy.update(name="si", hparams={"si_lambda": 10.0, "eps": 0.1})
  config.update(epochs=10, batch_size=256)
  return config


if __name__ == "__main__":
  _common.main(get_config)
