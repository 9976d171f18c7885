"""SplitMNIST (5 experiences), GDumb — published 0.97 (continual-learning-baselines).

Setting: MLP 784-400-400-10 (no dropout), SGD lr 0.1, 10 epochs over the
memory, batch 16, class-balanced greedy memory of 4,400 samples, no masking of
unseen classes (the baseline's MLP has a plain 10-way output layer); the model
is re-initialised at every experience and trained on the memory only.

--local: the published setting on the bundled MNIST digits (the 4,000
bundled training digits all fit in the 4,400-sample memory, so the last
experience trains on every digit seen).
"""

import _common


def get_config():
  """The published setting of the row."""
  config = _common.base_config(name="smnist_gdumb", row="SplitMNIST (5) / GDumb",
                               published=0.97)
  config.benchmark.update(name="split_mnist", n_experiences=5)
  config.model = {"name": "mlp", "hidden_size": 400, "hidden_layers": 2,
                  "drop_rate": 0.0}
  config.optimizer.update(name="sgd", lr=0.1)
  config.strategy.update(name="gdumb", hparams={"mem_size": 4400})
  config.update(epochs=10, batch_size=16, mask_unseen_classes=False)
  return config


if __name__ == "__main__":
  _common.main(get_config)
