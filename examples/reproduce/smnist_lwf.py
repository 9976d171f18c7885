"""SplitMNIST (5 experiences, class-incremental), LwF — published 0.23 (continual-learning-baselines).

Setting: MLP 784-200-10 with tanh (no dropout), SGD lr 0.001, 21 epochs,
batch 128, LwF alpha per experience [0, 0.5, 1.33333, 2.25, 3.2],
temperature 2, no masking of unseen classes (the baseline's
MLP has a plain 10-way output layer). As in the baseline (``LwFCEPenalty``, after van de Ven et
al., 2019), the cross-entropy of experience e is scaled by 1 / (e + 1), so
the loss is CE / n_seen + alpha_e * KL.

--local: the published setting on the bundled MNIST digits.
"""

import _common


def get_config():
  """The published setting of the row."""
  config = _common.base_config(name="smnist_lwf", row="SplitMNIST (5) / LwF",
                               published=0.23)
  config.benchmark.update(name="split_mnist", n_experiences=5)
  config.model = {"name": "mlp", "activation": "tanh", "hidden_size": 200,
                  "hidden_layers": 1, "drop_rate": 0.0}
  config.optimizer.update(name="sgd", lr=0.001)
  config.strategy.update(
      name="lwf", scale_ce_by_experience=True,
      hparams={"alpha": [0.0, 0.5, 1.33333, 2.25, 3.2], "temperature": 2.0})
  config.update(epochs=21, batch_size=128, mask_unseen_classes=False)
  return config


if __name__ == "__main__":
  _common.main(get_config)
