"""DualNet's network: a slow ResNet learner masked by a fast convolutional one.

Pham, Liu and Hoi, "DualNet: Continual Learning, Fast and Slow", NeurIPS
2021, as Avalanche's ``MaskNet18``. The **slow learner** is a ResNet trunk
(a 3x3 convolution, batch norm, ReLU, a 3x3 max-pool of stride 2, then four
stages of basic blocks with ``nf``, ``2nf``, ``4nf``, ``8nf`` filters,
strides 1, 2, 2, 2) and the Barlow-Twins projector ``8nf -> hidden -> 8nf``
(linear layers without bias, batch norm and ReLU between them), trained by
self-supervision (:func:`jaxcl.strategies.dual_net`). The **fast learner**
has four 3x3 convolutions (with bias), each followed by batch norm, ReLU
and a 2x2 max-pool of stride 2 (ceil mode), whose outputs gate the slow
trunk's stage outputs ``h_k``:

    m_0 = x,   m_k = f_k(m_{k-1}) * h_k   (k = 1..4)

then global average pooling of ``m_4`` and the linear classifier (part of
the fast learner, as in Avalanche). The parameters (and the batch-norm
statistics) split into the top-level subtrees ``slow`` and ``fast``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> model = DualNet(num_classes=3, nf=2, blocks=(1, 1, 1, 1),
  ...                 projector_hidden=4)
  >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  >>> sorted(variables["params"])
  ['fast', 'slow']
  >>> model.apply(variables, jnp.zeros((2, 8, 8, 3))).shape
  (2, 3)
  >>> model.apply(variables, jnp.zeros((2, 8, 8, 3)),
  ...             method=DualNet.projection).shape
  (2, 16)
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from jaxcl import _validation
from jaxcl.models.cnn import TorchConv
from jaxcl.models.mlp import TorchLinear, check_sizes
from jaxcl.models.resnet import _BasicBlock, _batch_norm

__all__ = ["DualNet"]

Mask = jnp.ndarray | None

_STAGES = ((1, 1), (2, 2), (4, 2), (8, 2))  # (width multiple, stride).


def _ceil_max_pool(x: jnp.ndarray) -> jnp.ndarray:
  """PyTorch's ``MaxPool2d(2, 2, ceil_mode=True)``: an odd side keeps its
  last row (column) as a window of its own."""
  h, w = x.shape[1:3]
  return nn.max_pool(x, (2, 2), strides=(2, 2),
                     padding=((0, h % 2), (0, w % 2)))


class _SlowTrunk(nn.Module):
  """The slow learner's ResNet trunk; returns the four stage outputs."""

  nf: int
  blocks: tuple[int, ...]
  native_cpu_gradients: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool,
               mask: Mask) -> tuple[jnp.ndarray, ...]:
    native = self.native_cpu_gradients
    x = TorchConv(self.nf, 3, padding=1, use_bias=False,
                  native_cpu_gradients=native)(x)
    x = nn.relu(_batch_norm(x, train, mask))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    stages = []
    for (multiple, strides), n in zip(_STAGES, self.blocks):
      for i in range(n):
        x = _BasicBlock(self.nf * multiple, strides if i == 0 else 1,
                        native)(x, train, mask)
      stages.append(x)
    return tuple(stages)


class _Projector(nn.Module):
  """Barlow Twins' projector: linear (no bias), BN, ReLU, linear (no bias)."""

  hidden: int
  features: int

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool, mask: Mask) -> jnp.ndarray:
    x = nn.Dense(self.hidden, use_bias=False)(x)
    x = nn.relu(_batch_norm(x, train, mask))
    return nn.Dense(self.features, use_bias=False)(x)


class _SlowLearner(nn.Module):
  """Trunk and projector under one name (the ``slow`` subtree)."""

  nf: int
  blocks: tuple[int, ...]
  projector_hidden: int
  native_cpu_gradients: bool = True

  def setup(self):
    self.trunk = _SlowTrunk(self.nf, self.blocks, self.native_cpu_gradients)
    self.projector = _Projector(self.projector_hidden, 8 * self.nf)

  def __call__(self, x, train: bool, mask: Mask) -> tuple[jnp.ndarray, ...]:
    return self.trunk(x, train, mask)

  def project(self, features: jnp.ndarray, train: bool,
              mask: Mask) -> jnp.ndarray:
    return self.projector(features, train, mask)


class _FastLearner(nn.Module):
  """The four gating convolutions and the classifier (``fast`` subtree)."""

  nf: int
  num_classes: int
  native_cpu_gradients: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray, stages: tuple[jnp.ndarray, ...],
               train: bool, mask: Mask) -> jnp.ndarray:
    m = x
    for (multiple, _), h in zip(_STAGES, stages):
      f = TorchConv(self.nf * multiple, 3, padding=1,
                    native_cpu_gradients=self.native_cpu_gradients)(m)
      m = _ceil_max_pool(nn.relu(_batch_norm(f, train, mask))) * h
    return TorchLinear(self.num_classes)(jnp.mean(m, axis=(1, 2)))


class DualNet(nn.Module):
  """DualNet's slow/fast network (Avalanche's ``MaskNet18``).

  ``__call__`` returns the logits of the fast learner gating the slow
  trunk; :meth:`slow_features` returns the slow trunk's pooled features and
  :meth:`projection` their Barlow-Twins projection (call them with
  ``model.apply(variables, x, method=DualNet.projection)``). Batch norm is
  PyTorch's (see :mod:`jaxcl.models.resnet`), with ``batch_stats_mask``.

  Attributes:
    num_classes: Width of the classifier.
    nf: Filters of the first stage (20 in Avalanche's default, 64 in its
      CIFAR-100 example).
    blocks: Basic blocks per stage (four stages; ``(2, 2, 2, 2)`` is
      ResNet-18).
    projector_hidden: Hidden width of the projector (256 in Avalanche).
    native_cpu_gradients: As :class:`jaxcl.models.TorchConv`'s.

  Example:
    >>> DualNet(num_classes=10).nf
    20
  """

  num_classes: int = 10
  nf: int = 20
  blocks: tuple[int, ...] = (2, 2, 2, 2)
  projector_hidden: int = 256
  native_cpu_gradients: bool = True

  def setup(self):
    check_sizes(self, "num_classes", "nf", "projector_hidden")
    if len(self.blocks) != len(_STAGES):
      raise ValueError(f"blocks must give the basic blocks of each of the "
                       f"{len(_STAGES)} stages, got {self.blocks!r}.")
    for n in self.blocks:
      _validation.check_positive_int("blocks", n)
    self.slow = _SlowLearner(self.nf, tuple(self.blocks),
                             self.projector_hidden, self.native_cpu_gradients)
    self.fast = _FastLearner(self.nf, self.num_classes,
                             self.native_cpu_gradients)

  def __call__(self, x: jnp.ndarray, train: bool = False,
               batch_stats_mask: Mask = None) -> jnp.ndarray:
    stages = self.slow(x, train, batch_stats_mask)
    if self.is_initializing():  # The projector's variables exist from init.
      self.slow.project(jnp.mean(stages[-1], axis=(1, 2)), train,
                        batch_stats_mask)
    return self.fast(x, stages, train, batch_stats_mask)

  def slow_features(self, x: jnp.ndarray, train: bool = False,
                    batch_stats_mask: Mask = None) -> jnp.ndarray:
    """The slow trunk's globally pooled last stage, ``[batch, 8 * nf]``."""
    stages = self.slow(x, train, batch_stats_mask)
    return jnp.mean(stages[-1], axis=(1, 2))

  def projection(self, x: jnp.ndarray, train: bool = False,
                 batch_stats_mask: Mask = None) -> jnp.ndarray:
    """The projector's output on :meth:`slow_features`, ``[batch, 8 * nf]``."""
    return self.slow.project(self.slow_features(x, train, batch_stats_mask),
                             train, batch_stats_mask)

