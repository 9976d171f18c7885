"""SplitMNIST (5 experiences), Generative Replay — published 0.75 (continual-learning-baselines).

Setting: MLP 784-400-400-10 (no dropout), Adam lr 0.001, 10 epochs, batch
16, no masking of unseen classes (the baseline's MLP has a plain 10-way
output layer); the generator is Avalanche's default MlpVAE (latent
dimension 2) trained on the same batches with Avalanche's default
optimizer for it, Adam lr 0.01 with weight decay 1e-4, reset at every
experience as the releases of the published baselines reset their
trainers' optimizers; 100 generated samples replayed per step (the
baseline's ``replay_size=100``; the table gives no value).

--local: the published setting on the bundled MNIST digits.
"""

import _common


def get_config():
  """The published setting of the row."""
  config = _common.base_config(name="smnist_generative_replay",
                               row="SplitMNIST (5) / Generative Replay",
                               published=0.75)
  config.benchmark.update(name="split_mnist", n_experiences=5)
  config.model = {"name": "mlp", "hidden_size": 400, "hidden_layers": 2,
                  "drop_rate": 0.0}
  config.optimizer.update(name="adam", lr=0.001)
  config.strategy.update(name="generative_replay", hparams={
      "latent_dim": 2, "generator_lr": 0.01, "generator_weight_decay": 1e-4,
      "reset_generator_optimizer": True, "replay_size": 100})
  config.update(epochs=10, batch_size=16, mask_unseen_classes=False)
  return config


if __name__ == "__main__":
  _common.main(get_config)
