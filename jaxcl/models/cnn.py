"""Convolutional models: Avalanche's ``SimpleCNN`` and ``LeNet5``, and a
PyTorch-like conv layer.

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

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from jaxcl import _validation
from jaxcl.models.mlp import (TorchLinear, _dropout, _torch_bias_init,
                              check_sizes)

__all__ = ["LeNet5", "SimpleCNN", "TorchConv"]


_NHWC = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], tuple[int, int]]


# Up to this many kernels under `vmap` (seeds, sweeps) are convolved one by
# one in the program; more go through a loop, which compiles to one body.
_UNROLLED_KERNELS = 8


@functools.lru_cache(maxsize=None)
def _native_conv(strides: tuple[int, int], padding: Padding,
                 lhs_dilation: tuple[int, int] = (1, 1),
                 rhs_dilation: tuple[int, int] = (1, 1)) -> Callable:
  """An NHWC/HWIO convolution that stays NHWC/HWIO convolutions under `vmap`.

  JAX batches a convolution whose kernel is vmapped (one kernel per seed)
  into a grouped convolution, which XLA:CPU runs outside its Eigen kernels,
  20-25x slower; this one convolves each kernel separately instead, and
  folds a vmapped axis of the images alone into their batch.
  """

  def conv(x, kernel):
    return lax.conv_general_dilated(
        x, kernel, strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=_NHWC)

  native = jax.custom_batching.custom_vmap(conv)

  @native.def_vmap
  def _vmapped(axis_size, in_batched, x, kernel):
    x_batched, kernel_batched = in_batched
    if not kernel_batched:
      y = native(x.reshape(-1, *x.shape[2:]), kernel)
      return y.reshape(axis_size, -1, *y.shape[1:]), True
    image = lambda i: x[i] if x_batched else x
    if axis_size <= _UNROLLED_KERNELS:
      return jnp.stack([native(image(i), kernel[i])
                        for i in range(axis_size)]), True
    if x_batched:
      return lax.map(lambda pair: native(*pair), (x, kernel)), True
    return lax.map(lambda k: native(x, k), kernel), True

  # JAX cannot differentiate a custom_vmap function, and the gradients of
  # _conv are made of this one: a gradient of a gradient (La-MAML's
  # second-order step) differentiates them. The convolution is bilinear, so
  # its tangent is two plain convolutions, which JAX differentiates further.
  differentiable = jax.custom_jvp(native)

  @differentiable.defjvp
  def _tangent(primals, tangents):
    (x, kernel), (dx, dkernel) = primals, tangents
    return native(x, kernel), conv(dx, kernel) + conv(x, dkernel)

  return differentiable


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
          padding: Padding) -> jax.Array:
  """An NHWC/HWIO convolution whose gradients are NHWC/HWIO convolutions too.

  JAX's own transpose rules express the gradients as convolutions with
  permuted dimension labels. Inside a ``lax.scan`` XLA:CPU leaves those as
  they are and runs them through its generic loop emitter instead of its
  Eigen kernels, 10-25x slower (jax-ml/jax#12868). The gradients below are
  the same sums, written with explicit transposes around convolutions in the
  layout XLA:CPU runs natively, and all three keep that layout under `vmap`
  (:func:`_native_conv`).
  """
  return _native_conv(strides, padding)(x, kernel)


def _conv_fwd(x, kernel, strides, padding):
  return _conv(x, kernel, strides, padding), (x, kernel)


def _conv_bwd(strides, padding, residuals, dy):
  x, kernel = residuals
  spatial = list(zip(kernel.shape[:2], padding, x.shape[1:3], dy.shape[1:3],
                     strides))
  # dx: dy spread out by the strides (lhs dilation), convolved with the
  # kernel flipped in space and with its input and output channels swapped.
  dx = _native_conv((1, 1), tuple(
      (k - 1 - low, size - 1 - (out - 1) * s + low)
      for k, (low, _), size, out, s in spatial), lhs_dilation=strides)(
          dy, jnp.flip(kernel, (0, 1)).swapaxes(2, 3))
  # dkernel: a convolution over the images with dy as the kernel (dilated
  # by the strides), the batch as the summed channel axis and the input
  # channels as the batch axis.
  dkernel = _native_conv((1, 1), tuple(
      (low, k + (out - 1) * s - size - low)
      for k, (low, _), size, out, s in spatial), rhs_dilation=strides)(
          x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3))
  return dx, dkernel.transpose(1, 2, 0, 3)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _conv_with_native_gradients(
    lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
    padding: Sequence[tuple[int, int]], **unused) -> jax.Array:
  """``nn.Conv``'s convolution call, routed to :func:`_conv`.

  Only :class:`TorchConv` passes it, with what it always uses: NHWC inputs,
  HWIO kernels, no dilation, one feature group, default precision.
  """
  del unused
  return _conv(lhs, rhs, tuple(window_strides),
               tuple(tuple(pad) for pad in padding))


class TorchConv(nn.Module):
  """A square 2-D convolution initialised like PyTorch's ``nn.Conv2d``.

  Weights and biases are drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
  ``fan_in = in_channels * kernel_size**2`` unless ``kernel_init`` is given.
  Padding is explicit and symmetric, as PyTorch's ``padding=`` (Flax's
  ``"SAME"`` pads strided convolutions asymmetrically).

  On the CPU backend the gradients are computed by a custom VJP with
  convolutions in the layout XLA:CPU runs natively: the same values, 10-25x
  faster inside jaxcl's scanned training loop (jax-ml/jax#12868). JAX
  differentiates a custom VJP in reverse mode only: for forward mode
  (``jax.jvp``, ``jax.hessian``) set ``native_cpu_gradients=False``. Other
  backends always use JAX's own rules.

  Attributes:
    features: Output channels.
    kernel_size: Side of the square kernel.
    strides: Stride in both directions.
    padding: Zero pixels added on each side.
    use_bias: Add a bias.
    kernel_init: Optional weight initialiser replacing PyTorch's default.
    native_cpu_gradients: On the CPU backend, use the fast custom VJP above.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> conv = TorchConv(8, 3, strides=2, padding=1)
    >>> x = jnp.ones((2, 9, 9, 3))
    >>> params = conv.init(jax.random.key(0), x)
    >>> conv.apply(params, x).shape
    (2, 5, 5, 8)
  """

  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 0
  use_bias: bool = True
  kernel_init: Callable | None = None
  native_cpu_gradients: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    check_sizes(self, "features", "kernel_size", "strides")
    _validation.check_non_negative_int("padding", self.padding)
    _validation.check_bool("native_cpu_gradients", self.native_cpu_gradients)
    fan_in = x.shape[-1] * self.kernel_size ** 2
    p = self.padding
    native = self.native_cpu_gradients and jax.default_backend() == "cpu"
    return nn.Conv(
        self.features, (self.kernel_size, self.kernel_size),
        strides=(self.strides, self.strides), padding=((p, p), (p, p)),
        use_bias=self.use_bias,
        conv_general_dilated=(_conv_with_native_gradients if native
                              else lax.conv_general_dilated),
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
    native_cpu_gradients: As :class:`TorchConv`'s (False for forward mode).
  """

  num_classes: int | None = 10
  drop_rate: float = 0.25
  native_cpu_gradients: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if x.ndim != 4 or min(x.shape[1:3]) < 10:
      raise ValueError(f"SimpleCNN expects images [batch, H, W, C] with H and "
                       f"W >= 10, got inputs of shape {x.shape}.")
    if self.num_classes is not None:  # None: the pooled features.
      check_sizes(self, "num_classes")

    def drop(h):
      return _dropout(self.drop_rate, train)(h)

    conv = functools.partial(TorchConv,
                             native_cpu_gradients=self.native_cpu_gradients)
    for features in (32, 64):
      x = nn.relu(conv(features, 3, padding=1)(x))
      x = nn.relu(conv(features, 3)(x))
      x = drop(nn.max_pool(x, (2, 2), strides=(2, 2)))
    x = nn.relu(conv(64, 1)(x))
    x = drop(jnp.max(x, axis=(1, 2)))
    if self.num_classes is None:
      return x
    return TorchLinear(self.num_classes)(x)


class LeNet5(nn.Module):
  """Avalanche's ``LeNet5``: three 5x5 convolutions with tanh, two dense layers.

  conv5x5(6)-tanh, average pool 2; conv5x5(16)-tanh, average pool 2;
  conv5x5(120)-tanh; flatten; linear(84)-tanh; linear. Inputs need at least
  32x32 pixels (Avalanche's takes exactly 32x32; larger images give more
  than 120 features to the first dense layer here). No dropout.

  Attributes:
    num_classes: Width of the output layer; None returns the 84 features of
      the last hidden layer (a backbone for :class:`jaxcl.models.MultiHead`).
    native_cpu_gradients: As :class:`TorchConv`'s.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> x = jnp.zeros((2, 32, 32, 3))
    >>> jax.eval_shape(lambda x: LeNet5(10).init_with_output(
    ...     jax.random.key(0), x)[0], x).shape
    (2, 10)
  """

  num_classes: int | None = 10
  native_cpu_gradients: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train  # No dropout or batch statistics.
    if x.ndim != 4 or min(x.shape[1:3]) < 32:
      raise ValueError(f"LeNet5 expects images [batch, H, W, C] with H and W "
                       f">= 32 (pad 28x28 digits to 32x32), got inputs of "
                       f"shape {x.shape}.")
    if self.num_classes is not None:
      check_sizes(self, "num_classes")
    conv = functools.partial(TorchConv,
                             native_cpu_gradients=self.native_cpu_gradients)
    for features in (6, 16):
      x = nn.avg_pool(jnp.tanh(conv(features, 5)(x)), (2, 2), strides=(2, 2))
    x = jnp.tanh(conv(120, 5)(x))
    x = jnp.tanh(TorchLinear(84)(x.reshape(x.shape[0], -1)))
    if self.num_classes is None:
      return x
    return TorchLinear(self.num_classes)(x)
