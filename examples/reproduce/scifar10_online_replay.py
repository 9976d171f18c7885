"""SplitCIFAR10 (5 experiences), online Replay — published 0.50 (continual-learning-baselines).

Setting: slim ResNet-18 (nf 20), SGD lr 0.1, classes in the order 0..9,
every experience cut into online mini-experiences of 10 samples trained once
(batch 10), class-balanced replay memory of 1,000 samples, 10 replayed
samples per step; CIFAR-10 normalisation, crop + flip; no masking of
unseen classes (the baseline's ``SlimResNet18(10)`` ends in a plain 10-way
linear layer).

--local: CIFAR-10 is not bundled. The stand-in is bundled MNIST digits
zero-padded to 32x32x3, 50 train / 20 test per digit (50 mini-experiences),
with CIFAR-10's normalisation and augmentation and the published
hyperparameters: the same model and strategy code, a number not comparable
with the published one.
"""

import _common


def get_config():
  """The published setting of the row."""
  config = _common.base_config(name="scifar10_online_replay",
                               row="SplitCIFAR10 (5) / Online Replay",
                               published=0.50)
  config.benchmark.update(name="split_cifar10", n_experiences=5,
                          fixed_class_order=list(range(10)),
                          online_experience_size=10)
  config.model = {"name": "slim_resnet18", "nf": 20}
  config.optimizer.update(name="sgd", lr=0.1)
  config.strategy.update(name="replay", hparams={
      "mem_size": 1000, "batch_size_mem": 10, "storage": "class_balanced"})
  config.update(epochs=1, batch_size=10, mask_unseen_classes=False)
  config.local = {
      "note": "stand-in data: bundled MNIST digits padded to 32x32x3, 50 "
              "train / 20 test per digit, 5 experiences of 2 digits cut into "
              "mini-experiences of 10, published hyperparameters; not "
              "comparable with the published number",
      "benchmark": {"train_per_class": 50, "test_per_class": 20}}
  return config


if __name__ == "__main__":
  _common.main(get_config)
