"""Seq-CIFAR-10 (Mammoth), ER, buffer 500 — published 0.577 (Mammoth, Buzzega et al., 2020).

The setting of `mammoth_er_200.py` with a 500-sample buffer and Mammoth's
best hyperparameters for it (lr 0.1).
"""

import _common
import mammoth_er_200


def get_config():
  """The published setting of the row."""
  config = mammoth_er_200.get_config()
  config.update(name="mammoth_er_500",
                row="Seq-CIFAR-10 (Mammoth), ER, buffer 500",
                published=0.577)
  config.strategy.hparams.update({'mem_size': 500})
  return config


if __name__ == "__main__":
  _common.main(get_config)
