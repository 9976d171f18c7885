"""SplitCIFAR100 (20 experiences), Replay — published 0.32 (continual-learning-baselines).

Setting: ResNet-32, SGD lr 0.1, momentum 0.9, weight decay 2e-4, learning
rate multiplied by 0.3 every 66 epochs of every experience, 200 epochs,
batch 128, class-balanced replay memory of 2,000 samples, 128 replayed
samples per step; classes in the order 0..99, 20 experiences of 5 classes.

--local: CIFAR-100 is not bundled. The stand-in is bundled MNIST digits
zero-padded to 32x32x3, 20 train / 10 test per digit, 10 experiences of one
digit (ten digits cannot make 20), 1 epoch (the milestones are not reached),
batch 16 with 16 replayed samples, and a 100-sample memory (2,000 would hold
the whole stand-in). Sized when ResNet-32 trained about 0.26 s per image
inside jaxcl's scanned loop on CPU (before session 4; docs/reproductions.md
(d)). Not comparable with the published number.
"""

import _common


def get_config():
  """The published setting of the row."""
  config = _common.base_config(name="scifar100_replay",
                               row="SplitCIFAR100 (20) / Replay", published=0.32)
  config.benchmark.update(name="split_cifar100", n_experiences=20,
                          fixed_class_order=list(range(100)))
  config.model = {"name": "resnet32"}
  config.optimizer.update(name="sgd", lr=0.1, momentum=0.9, weight_decay=2e-4,
                          lr_milestones=[66, 132, 198], lr_gamma=0.3)
  config.strategy.update(name="replay", hparams={
      "mem_size": 2000, "batch_size_mem": 128, "storage": "class_balanced"})
  config.update(epochs=200, batch_size=128)
  config.local = {
      "note": "stand-in data: bundled MNIST digits padded to 32x32x3, 20 "
              "train / 10 test per digit, 10 experiences of 1 digit instead "
              "of 20; 1 epoch instead of 200, batch 16 + 16 replayed instead "
              "of 128 + 128, memory 100 instead of 2,000; not comparable with "
              "the published number",
      "benchmark": {"n_experiences": 10, "train_per_class": 20,
                    "test_per_class": 10},
      "strategy": {"hparams": {"mem_size": 100, "batch_size_mem": 16}},
      "epochs": 1, "batch_size": 16}
  return config


if __name__ == "__main__":
  _common.main(get_config)
