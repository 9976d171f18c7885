"""Residual networks for 32x32 images: the slim ResNet-18 and iCaRL's ResNet-32.

Both keep batch-norm running statistics in the ``batch_stats`` collection,
which :func:`jaxcl.models.as_model` carries as ``model_state``: updated from
each training batch, used frozen in evaluation. Batch norm follows PyTorch's
defaults (momentum 0.1, i.e. Flax ``momentum=0.9``; epsilon 1e-5), except
that Flax tracks the biased batch variance where PyTorch tracks the
unbiased one. In training, ``batch_stats_mask`` (one bool per sample)
keeps rows out of the batch statistics: the training loop passes the rows
that hold samples, so padding and empty memory slots do not shift them.

Example:
  >>> import jax, jax.numpy as jnp
  >>> model = SlimResNet18(num_classes=10)
  >>> variables = jax.eval_shape(model.init, jax.random.key(0),
  ...                            jnp.zeros((1, 32, 32, 3)))
  >>> sorted(variables)
  ['batch_stats', 'params']
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from flax import linen as nn

from jaxcl.models.cnn import TorchConv
from jaxcl.models.mlp import TorchLinear, check_sizes

__all__ = ["ResNet32", "SlimResNet18"]


def _batch_norm(x: jnp.ndarray, train: bool,
                mask: jnp.ndarray | None) -> jnp.ndarray:
  """PyTorch-default batch norm; in training its statistics cover ``mask``'s
  rows (all rows when None or when it holds none, rather than none at all:
  statistics of no rows are NaN)."""
  if mask is not None:
    mask = mask | ~jnp.any(mask)
    mask = mask.reshape(mask.shape + (1,) * (x.ndim - 1))
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5)(x, mask=mask if train else None)


class _BasicBlock(nn.Module):
  """ResNet basic block with a 1x1 projection shortcut when shapes change."""

  features: int
  strides: int = 1
  native_cpu_gradients: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool,
               batch_stats_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    conv = functools.partial(TorchConv, use_bias=False,
                             native_cpu_gradients=self.native_cpu_gradients)
    norm = functools.partial(_batch_norm, train=train, mask=batch_stats_mask)
    out = nn.relu(norm(conv(self.features, 3, padding=1,
                            strides=self.strides)(x)))
    out = norm(conv(self.features, 3, padding=1)(out))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = norm(conv(self.features, 1, strides=self.strides)(x))
    return nn.relu(out + shortcut)


class SlimResNet18(nn.Module):
  """The slim ResNet-18 of GEM (Lopez-Paz & Ranzato, 2017), as in Avalanche.

  A 3x3 convolution with ``nf`` filters and four stages of two basic blocks
  with ``nf``, ``2nf``, ``4nf``, ``8nf`` filters (strides 1, 2, 2, 2), batch
  norm, global average pooling and a linear classifier. On 32x32 inputs the
  pooling equals Avalanche's ``avg_pool2d(out, 4)``; other sizes work too.

  Attributes:
    num_classes: Width of the output layer; None returns the ``8 * nf``
      pooled features (a backbone for :class:`jaxcl.models.MultiHead`).
    nf: Filters of the first stage (20 in GEM).
    native_cpu_gradients: As :class:`jaxcl.models.TorchConv`'s (False for
      forward-mode differentiation).
  """

  num_classes: int | None = 10
  nf: int = 20
  native_cpu_gradients: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False,
               batch_stats_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    check_sizes(self, "nf", *(() if self.num_classes is None
                              else ("num_classes",)))
    native = self.native_cpu_gradients
    x = TorchConv(self.nf, 3, padding=1, use_bias=False,
                  native_cpu_gradients=native)(x)
    x = nn.relu(_batch_norm(x, train, batch_stats_mask))
    for multiple, strides in ((1, 1), (2, 2), (4, 2), (8, 2)):
      x = _BasicBlock(self.nf * multiple, strides, native)(
          x, train, batch_stats_mask)
      x = _BasicBlock(self.nf * multiple, native_cpu_gradients=native)(
          x, train, batch_stats_mask)
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes is None:
      return x
    return TorchLinear(self.num_classes)(x)


# iCaRL initialises convolutions with Kaiming-normal (fan in, ReLU gain) and
# the classifier with Kaiming-normal (fan in, gain 1), biases zero.
_ICARL_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
_ICARL_LINEAR_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "normal")


class _IcarlBlock(nn.Module):
  """iCaRL's residual block; shortcut option A (subsample, zero channels)."""

  features: int
  increase_dim: bool = False
  last: bool = False
  native_cpu_gradients: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool,
               batch_stats_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    strides = 2 if self.increase_dim else 1
    conv = functools.partial(TorchConv, kernel_size=3, padding=1,
                             use_bias=False, kernel_init=_ICARL_CONV_INIT,
                             native_cpu_gradients=self.native_cpu_gradients)
    norm = functools.partial(_batch_norm, train=train, mask=batch_stats_mask)
    out = nn.relu(norm(conv(self.features, strides=strides)(x)))
    out = norm(conv(self.features)(out))
    shortcut = x
    if self.increase_dim:
      pad = self.features // 4
      shortcut = jnp.pad(x[:, ::2, ::2], [(0, 0)] * 3 + [(pad, pad)])
    out = out + shortcut
    return out if self.last else nn.relu(out)


class ResNet32(nn.Module):
  """iCaRL's ResNet-32 for CIFAR (Rebuffi et al., 2017), as Avalanche's IcarlNet.

  A 3x3 convolution with 16 filters, three stages of ``n`` residual blocks
  with 16, 32, 64 filters (the 2nd and 3rd start with stride 2 and an
  identity shortcut that subsamples and zero-pads channels, option A of He
  et al.), no ReLU after the last block, global average pooling, a linear
  classifier. ``n=5`` gives 32 layers (``6n + 2``; 3 gives ResNet-20).

  Attributes:
    num_classes: Width of the output layer; None returns the 64 pooled
      features.
    n: Residual blocks per stage.
    native_cpu_gradients: As :class:`jaxcl.models.TorchConv`'s (False for
      forward-mode differentiation).
  """

  num_classes: int | None = 100
  n: int = 5
  native_cpu_gradients: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False,
               batch_stats_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    check_sizes(self, "n", *(() if self.num_classes is None
                             else ("num_classes",)))
    x = TorchConv(16, 3, padding=1, use_bias=False,
                  kernel_init=_ICARL_CONV_INIT,
                  native_cpu_gradients=self.native_cpu_gradients)(x)
    x = nn.relu(_batch_norm(x, train, batch_stats_mask))
    for stage, features in enumerate((16, 32, 64)):
      for block in range(self.n):
        last = stage == 2 and block == self.n - 1
        x = _IcarlBlock(features, increase_dim=stage > 0 and block == 0,
                        last=last,
                        native_cpu_gradients=self.native_cpu_gradients)(
                            x, train, batch_stats_mask)
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes is None:
      return x
    return nn.Dense(self.num_classes, kernel_init=_ICARL_LINEAR_INIT,
                    bias_init=nn.initializers.zeros)(x)
