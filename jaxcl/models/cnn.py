"""Convolutional models: Avalanche's ``SimpleCNN`` and a PyTorch-like conv layer.

Images are NHWC (``[batch, height, width, channels]``), the layout of tfds
and of the benchmarks' raw inputs.

Example:
  >>> import jax, jax.numpy as jnp
  >>> model = SimpleCNN(num_classes=10)
  >>> x = jnp.zeros((2, 32, 32, 3))
  >>> jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0],
  ...                x).shape
  (2, 10)
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from flax import linen as nn

from jaxcl.models.mlp import TorchLinear, _torch_bias_init

__all__ = ["SimpleCNN", "TorchConv"]


class TorchConv(nn.Module):
  """A square 2-D convolution initialised like PyTorch's ``nn.Conv2d``.

  Weights and biases are drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
  ``fan_in = in_channels * kernel_size**2`` unless ``kernel_init`` is given.
  Padding is explicit and symmetric, as PyTorch's ``padding=`` (Flax's
  ``"SAME"`` pads strided convolutions asymmetrically).

  Attributes:
    features: Output channels.
    kernel_size: Side of the square kernel.
    strides: Stride in both directions.
    padding: Zero pixels added on each side.
    use_bias: Add a bias.
    kernel_init: Optional weight initialiser replacing PyTorch's default.
  """

  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 0
  use_bias: bool = True
  kernel_init: Callable | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    fan_in = x.shape[-1] * self.kernel_size ** 2
    p = self.padding
    return nn.Conv(
        self.features, (self.kernel_size, self.kernel_size),
        strides=(self.strides, self.strides), padding=((p, p), (p, p)),
        use_bias=self.use_bias,
        kernel_init=self.kernel_init or nn.initializers.variance_scaling(
            1 / 3, "fan_in", "uniform"),
        bias_init=_torch_bias_init(fan_in))(x)


class SimpleCNN(nn.Module):
  """Avalanche's ``SimpleCNN``: four 3x3 convolutions, a 1x1, global max pool.

  conv3x3(32, pad 1)-ReLU, conv3x3(32)-ReLU, maxpool 2, dropout;
  conv3x3(64, pad 1)-ReLU, conv3x3(64)-ReLU, maxpool 2, dropout;
  conv1x1(64)-ReLU, global max pool, dropout, linear. Inputs need at least
  10x10 pixels (32x32x3 in Avalanche; any channel count works here).

  Attributes:
    num_classes: Width of the output layer; None returns the 64 pooled
      features (a backbone for :class:`jaxcl.models.MultiHead`).
    drop_rate: Dropout probability (training only).
  """

  num_classes: int | None = 10
  drop_rate: float = 0.25

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if x.ndim != 4 or min(x.shape[1:3]) < 10:
      raise ValueError(f"SimpleCNN expects images [batch, H, W, C] with H and "
                       f"W >= 10, got inputs of shape {x.shape}.")

    def drop(h):
      return nn.Dropout(self.drop_rate, deterministic=not train)(h)

    for features in (32, 64):
      x = nn.relu(TorchConv(features, 3, padding=1)(x))
      x = nn.relu(TorchConv(features, 3)(x))
      x = drop(nn.max_pool(x, (2, 2), strides=(2, 2)))
    x = nn.relu(TorchConv(64, 1)(x))
    x = drop(jnp.max(x, axis=(1, 2)))
    if self.num_classes is None:
      return x
    return TorchLinear(self.num_classes)(x)
