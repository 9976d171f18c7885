"""Seq-CIFAR-10 (Mammoth), DER++, buffer 500 — published 0.727 (Mammoth, Buzzega et al., 2020).

The setting of `mammoth_derpp_200.py` with a 500-sample buffer and Mammoth's
best hyperparameters for it (alpha 0.2 (0.1 at 200), beta 0.5).
"""

import _common
import mammoth_derpp_200


def get_config():
  """The published setting of the row."""
  config = mammoth_derpp_200.get_config()
  config.update(name="mammoth_derpp_500",
                row="Seq-CIFAR-10 (Mammoth), DER++, buffer 500",
                published=0.727)
  config.strategy.hparams.update({'mem_size': 500, 'alpha': 0.2})
  return config


if __name__ == "__main__":
  _common.main(get_config)
