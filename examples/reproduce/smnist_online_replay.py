"""SplitMNIST (5 experiences), online Replay — published 0.92 (continual-learning-baselines).

Setting: Avalanche's SimpleMLP 784-512-10 with dropout 0.5, SGD lr 0.1,
digits in the order 0..9, every experience cut into online mini-experiences
of 10 samples trained once (batch 10), class-balanced replay memory of 1,000
samples, 10 replayed samples per step; no masking of unseen classes
(SimpleMLP's output layer is a plain 10-way linear layer).

--local: the published setting on the bundled MNIST digits (400
mini-experiences).
"""

import _common


def get_config():
  """The published setting of the row."""
  config = _common.base_config(name="smnist_online_replay",
                               row="SplitMNIST (5) / Online Replay",
                               published=0.92)
  config.benchmark.update(name="split_mnist", n_experiences=5,
                          fixed_class_order=list(range(10)),
                          online_experience_size=10)
  config.model = {"name": "mlp", "hidden_size": 512, "hidden_layers": 1,
                  "drop_rate": 0.5}
  config.optimizer.update(name="sgd", lr=0.1)
  config.strategy.update(name="replay", hparams={
      "mem_size": 1000, "batch_size_mem": 10, "storage": "class_balanced"})
  config.update(epochs=1, batch_size=10, mask_unseen_classes=False)
  return config


if __name__ == "__main__":
  _common.main(get_config)
