"""SplitCIFAR100 (20 experiences, task labels), GEM — published 0.63 (continual-learning-baselines).

Setting: multi-head slim ResNet-18 (nf 20, one head per task), SGD lr 0.1,
1 epoch, batch 10, 256 patterns per experience, memory strength 0.5; 20
experiences of 5 classes, task label = experience, class ids from 0 in each
experience (Avalanche's default with task labels).

--local: CIFAR-100 is not bundled. The stand-in is bundled MNIST digits
zero-padded to 32x32x3, 30 train / 20 test per digit, 5 tasks of 2 digits
(one-digit tasks would be trivial), and 10 patterns per experience: GEM
runs every stored pattern through the network at every step, and the sizes
were set when the slim ResNet-18 trained about 0.13 s per image inside
jaxcl's scanned loop on CPU (before session 4; docs/reproductions.md (d)).
Not comparable with the published number.
"""

import _common


def get_config():
  """The published setting of the row."""
  config = _common.base_config(name="scifar100_task_gem",
                               row="SplitCIFAR100 (20, task labels) / GEM",
                               published=0.63)
  config.benchmark.update(name="split_cifar100", n_experiences=20,
                          return_task_id=True,
                          class_ids_from_zero_in_each_exp=True)
  config.model = {"name": "mt_slim_resnet18", "nf": 20}
  config.optimizer.update(name="sgd", lr=0.1)
  config.strategy.update(name="gem", hparams={"patterns_per_exp": 256,
                                              "memory_strength": 0.5})
  config.update(epochs=1, batch_size=10)
  config.local = {
      "note": "stand-in data: bundled MNIST digits padded to 32x32x3, 30 "
              "train / 20 test per digit, 5 tasks of 2 digits instead of 20 "
              "of 5 classes; 10 patterns per experience instead of 256; not "
              "comparable with the published number",
      "benchmark": {"n_experiences": 5, "train_per_class": 30,
                    "test_per_class": 20},
      "strategy": {"hparams": {"patterns_per_exp": 10}}}
  return config


if __name__ == "__main__":
  _common.main(get_config)
