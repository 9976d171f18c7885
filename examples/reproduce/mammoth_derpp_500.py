"""Seq-CIFAR-10 (Mammoth), DER++, buffer 500 — published 0.727 (Mammoth, Buzzega et al., 2020).

Setting: Mammoth's Seq-CIFAR-10 (5 class-incremental experiences of 2
classes, in the order 0..9; crop + flip; Mammoth's normalisation), ResNet-18
(jaxcl's SlimResNet18 with nf 64, the same architecture), SGD without
momentum, 50 epochs, batch 32, Mammoth's best hyperparameters for this
buffer: lr 0.03, alpha 0.2, beta 0.5, 32 replayed samples per step.

--local: see `_common.mammoth_config`: a small padded-digit stand-in, nf 20,
1 epoch; not comparable with the published number.
"""

import _common


def get_config():
  """The published setting of the row."""
  return _common.mammoth_config(
      name="mammoth_derpp_500",
      row="Seq-CIFAR-10 (Mammoth), DER++, buffer 500",
      published=0.727,
      strategy="der", lr=0.03,
      hparams={"mem_size": 500, "alpha": 0.2, "beta": 0.5, "batch_size_mem": 32})


if __name__ == "__main__":
  _common.main(get_config)
