"""Seq-CIFAR-10 (Mammoth), DER, buffer 500 — published 0.705 (Mammoth, Buzzega et al., 2020).

The setting of `mammoth_der_200.py` with a 500-sample buffer and Mammoth's
best hyperparameters for it (alpha 0.3 (beta 0: DER)).
"""

import _common
import mammoth_der_200


def get_config():
  """The published setting of the row."""
  config = mammoth_der_200.get_config()
  config.update(name="mammoth_der_500",
                row="Seq-CIFAR-10 (Mammoth), DER, buffer 500",
                published=0.705)
  config.strategy.hparams.update({'mem_size': 500})
  return config


if __name__ == "__main__":
  _common.main(get_config)
