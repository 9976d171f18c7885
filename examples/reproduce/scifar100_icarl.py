"""SplitCIFAR100 (10 experiences), iCaRL — published 0.48 (continual-learning-baselines).

Setting: iCaRL's ResNet-32, SGD lr 2.0, momentum 0.9, weight decay 1e-5,
learning rate divided by 5 after epochs 49 and 63 of every experience, 70
epochs, batch 128, 2,000 exemplars (fixed memory); 10 experiences of 10
classes, inputs scaled to [0, 1] without normalisation (the baseline's
``ToTensor`` alone), crop + flip.

--local: CIFAR-100 is not bundled. The stand-in is bundled MNIST digits
zero-padded to 32x32x3, 20 train / 10 test per digit, 10 experiences of one
digit, 1 epoch (the milestones are not reached), batch 16 and 100 exemplars
(10 per class at the end; 2,000 would hold the whole stand-in). Sized when
ResNet-32 trained about 0.26 s per image inside jaxcl's scanned loop on
CPU (before session 4; docs/reproductions.md (d)). Not comparable with the
published number.
"""

import _common


def get_config():
  """The published setting of the row."""
  config = _common.base_config(name="scifar100_icarl",
                               row="SplitCIFAR100 (10) / iCaRL", published=0.48)
  config.benchmark.update(name="split_cifar100", n_experiences=10,
                          normalize=((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
  config.model = {"name": "resnet32"}
  config.optimizer.update(name="sgd", lr=2.0, momentum=0.9, weight_decay=1e-5,
                          lr_milestones=[49, 63], lr_gamma=0.2)
  config.strategy.update(name="icarl", hparams={"memory_size": 2000,
                                                "fixed_memory": True})
  config.update(epochs=70, batch_size=128)
  config.local = {
      "note": "stand-in data: bundled MNIST digits padded to 32x32x3, 20 "
              "train / 10 test per digit, 10 experiences of 1 digit; 1 epoch "
              "instead of 70, batch 16 instead of 128, 100 exemplars instead "
              "of 2,000; not comparable with the published number",
      "benchmark": {"train_per_class": 20, "test_per_class": 10},
      "strategy": {"hparams": {"memory_size": 100}},
      "epochs": 1, "batch_size": 16}
  return config


if __name__ == "__main__":
  _common.main(get_config)
