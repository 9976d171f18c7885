"""Seq-CIFAR-10 (Mammoth), iCaRL, buffer 200 — published 0.490 (Mammoth, Buzzega et al., 2020).

Setting: Mammoth's Seq-CIFAR-10 (5 class-incremental experiences of 2
classes, in the order 0..9; crop + flip; Mammoth's normalisation), ResNet-18
(jaxcl's SlimResNet18 with nf 64, the same architecture), SGD without
momentum, 50 epochs, batch 32, Mammoth's best hyperparameters for this
buffer: lr 0.1, weight decay 1e-5, 200 exemplars (fixed memory). Unlike the
other Mammoth rows the head is masked to the classes seen so far, which is
what iCaRL's loss and nearest-mean classifier use.

--local: see `_common.mammoth_config`: a small padded-digit stand-in, nf 20,
1 epoch; not comparable with the published number.
"""

import _common


def get_config():
  """The published setting of the row."""
  config = _common.mammoth_config(
      name="mammoth_icarl_200",
      row="Seq-CIFAR-10 (Mammoth), iCaRL, buffer 200",
      published=0.490,
      strategy="icarl", lr=0.1, weight_decay=1e-5,
      hparams={"memory_size": 200, "fixed_memory": True})
  config.mask_unseen_classes = True
  return config


if __name__ == "__main__":
  _common.main(get_config)
