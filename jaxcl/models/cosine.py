"""Cosine-normalised classifiers (Hou et al., "Learning a Unified Classifier
Incrementally via Rebalancing", CVPR 2019), as Avalanche's ``CosineLinear``
and ``CosineIncrementalClassifier``.

A cosine layer scores class ``c`` by the cosine similarity of the features
and the class's weight vector, scaled by one learnable ``sigma``: no bias,
and no weight norm that grows with the number of a class's samples, which
is what biases a linear layer towards the newest classes.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxcl.models import SimpleCNN
  >>> model = CosineClassifier(SimpleCNN(num_classes=None), num_classes=10)
  >>> x = jnp.zeros((2, 32, 32, 3))
  >>> model.apply(model.init(jax.random.key(0), x), x).shape
  (2, 10)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxcl import _validation
from jaxcl.models.adapter import call_features, check_backbone
from jaxcl.models.mlp import check_sizes

__all__ = ["CosineClassifier", "CosineLinear", "l2_normalize"]


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """Vectors along ``axis`` scaled to unit L2 norm: ``x / max(‖x‖, 1e-12)``
  (PyTorch's ``normalize``).

  A zero vector stays zero, with a zero gradient: ``jnp.linalg.norm``'s is NaN
  there, which would spoil every parameter even at weight 0, and PyTorch's
  is ``1e12`` (a model whose outputs start at zero would take a step of
  that size).

  Example:
    >>> import jax.numpy as jnp
    >>> l2_normalize(jnp.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
  """
  squared = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  nonzero = squared > 0
  # The inner where keeps the masked branch's gradient finite at zero.
  norm = jnp.sqrt(jnp.maximum(jnp.where(nonzero, squared, 1.0), 1e-24))
  return jnp.where(nonzero, x / norm, 0.0)


class CosineLinear(nn.Module):
  """``sigma * cos(features, w_c)`` for every class ``c``.

  ``logits = sigma * normalize(x) @ normalize(kernel)``, each feature vector
  and each class's column scaled to unit L2 norm (by ``max(norm, 1e-12)``,
  PyTorch's ``F.normalize``). The kernel ``[features, classes]`` starts
  from U(-1/sqrt(features), 1/sqrt(features)) and ``sigma`` from 1, as
  Avalanche's.

  Attributes:
    features: Number of outputs (classes).
    sigma: Learn the output scale ``sigma`` (else it is 1: every logit lies
      in [-1, 1], which a softmax cross-entropy can barely separate).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> layer = CosineLinear(3)
    >>> x = jnp.array([[3.0, 4.0]])
    >>> params = layer.init(jax.random.key(0), x)
    >>> bool(jnp.all(jnp.abs(layer.apply(params, x)) <= 1.0 + 1e-6))
    True
  """

  features: int
  sigma: bool = True

  @nn.compact
  def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
    check_sizes(self, "features")
    _validation.check_bool("sigma", self.sigma)
    bound = 1.0 / np.sqrt(inputs.shape[-1])
    kernel = self.param(
        "kernel", lambda key, shape: jax.random.uniform(
            key, shape, jnp.float32, -bound, bound),
        (inputs.shape[-1], self.features))
    logits = l2_normalize(inputs) @ l2_normalize(kernel, axis=0)
    if self.sigma:
      logits = self.param("sigma", nn.initializers.ones, ()) * logits
    return logits


class CosineClassifier(nn.Module):
  """A feature extractor with a :class:`CosineLinear` output layer.

  jaxcl's version of a model whose classifier is Avalanche's
  ``CosineIncrementalClassifier``: the layer holds every class from the
  start (fit masks the classes not seen yet, as that classifier's -1000
  logits do), so shapes never change during a stream.

  Attributes:
    features: A module mapping inputs to features ``[batch, ...]``
      (flattened here), e.g. ``SlimResNet18(num_classes=None)``; it gets
      ``train`` and ``batch_stats_mask`` if its ``__call__`` takes them.
    num_classes: Outputs of the layer.
    sigma: As :class:`CosineLinear`'s.

  Example:
    >>> from jaxcl.models import MLP
    >>> CosineClassifier(MLP(num_classes=None), num_classes=10).num_classes
    10
  """

  features: nn.Module
  num_classes: int
  sigma: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False,
               batch_stats_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    check_backbone(self)
    check_sizes(self, "num_classes")
    _validation.check_bool("sigma", self.sigma)
    h = call_features(self.features, x, train, batch_stats_mask)
    return CosineLinear(self.num_classes, self.sigma, name="head")(h)
