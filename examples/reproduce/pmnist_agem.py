"""PermutedMNIST (17 experiences), A-GEM — published 0.81 (continual-learning-baselines).

Setting: MLP 784-256-256-10 (no dropout), SGD lr 0.1, 1 epoch, batch 10,
250 patterns per experience, reference sample of 256; seventeen pixel
permutations, one shared head.

--local: the published setting on the bundled MNIST digits.
"""

import _common


def get_config():
  """The published setting of the row."""
  config = _common.base_config(name="pmnist_agem",
                               row="PermutedMNIST (17) / A-GEM", published=0.81)
  config.benchmark.update(name="permuted_mnist", n_experiences=17)
  config.model = {"name": "mlp", "hidden_size": 256, "hidden_layers": 2,
                  "drop_rate": 0.0}
  config.optimizer.update(name="sgd", lr=0.1)
  config.strategy.update(name="agem", hparams={"patterns_per_exp": 250,
                                               "sample_size": 256})
  config.update(epochs=1, batch_size=10)
  return config


if __name__ == "__main__":
  _common.main(get_config)
