"""PermutedMNIST (17 experiences), GEM — published 0.80 (continual-learning-baselines).

Setting: MLP 784-100-100-10 (no dropout), SGD lr 0.1, 1 epoch, batch 10,
1000 patterns per experience, memory strength 0.5; seventeen pixel
permutations, one shared head.

--local: the bundled MNIST digits with 64 patterns per experience instead
of 1,000 (1.6% of an experience, as 1,000 is of the full 60,000): GEM
computes a gradient on every stored pattern of all 17 experiences at every
step, about 1 s per step here with 1,000, 2 hours for the stream.
"""

import _common


def get_config():
  """The published setting of the row."""
  config = _common.base_config(name="pmnist_gem", row="PermutedMNIST (17) / GEM",
                               published=0.80)
  config.benchmark.update(name="permuted_mnist", n_experiences=17)
  config.model = {"name": "mlp", "hidden_size": 100, "hidden_layers": 2,
                  "drop_rate": 0.0}
  config.optimizer.update(name="sgd", lr=0.1)
  config.strategy.update(name="gem", hparams={"patterns_per_exp": 1000,
                                              "memory_strength": 0.5})
  config.update(epochs=1, batch_size=10)
  config.local = {
      "note": "bundled MNIST digits; 64 patterns per experience instead of "
              "1,000 (the same 1.6% of an experience)",
      "strategy": {"hparams": {"patterns_per_exp": 64}}}
  return config


if __name__ == "__main__":
  _common.main(get_config)
