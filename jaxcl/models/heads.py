"""Multi-head classifiers for task-incremental learning.

A multi-head model shares a feature extractor and keeps one linear head per
task; each sample is classified by the head of its task label. Unlike
Avalanche's ``MultiHeadClassifier``, which adds heads as tasks appear, every
head is allocated at initialisation (``n_tasks``), so shapes never change
and a stream compiles once. The head is selected per sample inside the
compiled function (all heads are evaluated and the sample's one is gathered),
so one batch may mix tasks.

Example:
  >>> import jax, jax.numpy as jnp
  >>> model = MTMLP(num_classes=10, n_tasks=5, hidden_size=32)
  >>> x, task = jnp.zeros((3, 28, 28, 1)), jnp.array([0, 4, 2])
  >>> variables = model.init(jax.random.key(0), x, task)
  >>> model.apply(variables, x, task).shape
  (3, 10)
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from jaxcl.models.adapter import call_features, check_backbone
from jaxcl.models.cnn import SimpleCNN
from jaxcl.models.mlp import (TorchLinear, _check_hidden_layers, _dropout,
                              check_sizes,
                              _torch_bias_init)
from jaxcl.models.resnet import SlimResNet18
from jaxcl.models.rnn import SequenceClassifier

__all__ = [
  "MTMLP",
  "MLPFeatures",
  "MultiHead",
  "MultiHeadClassifier",
  "mt_sequence_classifier",
  "mt_simple_cnn",
  "mt_slim_resnet18",
]


class MultiHeadClassifier(nn.Module):
  """``n_tasks`` linear heads on shared features; sample ``i`` uses head ``task[i]``.

  Each head is initialised like PyTorch's ``nn.Linear``. A task label outside
  ``[0, n_tasks)`` yields NaN logits (so a run stops with a non-finite loss
  error instead of silently using another head).

  Attributes:
    num_classes: Outputs of each head.
    n_tasks: Number of heads.
  """

  num_classes: int
  n_tasks: int

  @nn.compact
  def __call__(self, features: jnp.ndarray, task: jnp.ndarray) -> jnp.ndarray:
    check_sizes(self, "num_classes", "n_tasks")
    fan_in = features.shape[-1]
    kernel = self.param(
        "kernel", nn.initializers.variance_scaling(
            1 / 3, "fan_in", "uniform", batch_axis=(0,)),
        (self.n_tasks, fan_in, self.num_classes))
    bias = self.param("bias", _torch_bias_init(fan_in),
                      (self.n_tasks, self.num_classes))
    every = jnp.einsum("bd,tdc->btc", features, kernel) + bias
    task = jnp.asarray(task)
    if not jnp.issubdtype(task.dtype, jnp.integer):
      raise TypeError(f"task labels must be integers, got dtype "
                      f"{task.dtype}.")
    # Compared in int32 or wider (n_tasks could wrap in a narrower type, a
    # wider label could wrap onto a head in int32); negative labels too must
    # miss every head (a gather wraps them).
    if task.dtype.itemsize < 4:
      task = task.astype(jnp.int32)
    task = jnp.where((task >= 0) & (task < self.n_tasks), task,
                     self.n_tasks).astype(jnp.int32)
    index = task.reshape(-1, 1, 1)
    return jnp.take_along_axis(every, index, axis=1, mode="fill",
                               fill_value=jnp.nan)[:, 0]


class MultiHead(nn.Module):
  """Turns a feature extractor into a multi-head classifier.

  Attributes:
    features: A module mapping inputs to features ``[batch, ...]``
      (flattened here), e.g. ``SlimResNet18(num_classes=None)``; it gets
      ``train`` and ``batch_stats_mask`` (the rows batch norm's statistics
      cover) if its ``__call__`` takes them.
    num_classes: Outputs of each head.
    n_tasks: Number of heads (the benchmark's ``n_tasks``).

  Example:
    >>> from jaxcl.models import SimpleCNN
    >>> import jax, jax.numpy as jnp
    >>> model = MultiHead(SimpleCNN(num_classes=None), num_classes=2, n_tasks=3)
    >>> x, task = jnp.zeros((2, 16, 16, 3)), jnp.array([0, 2])
    >>> model.apply(model.init(jax.random.key(0), x, task), x, task).shape
    (2, 2)
  """

  features: nn.Module
  num_classes: int
  n_tasks: int

  @nn.compact
  def __call__(self, x: jnp.ndarray, task: jnp.ndarray,
               train: bool = False,
               batch_stats_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    check_backbone(self)
    h = call_features(self.features, x, train, batch_stats_mask)
    return MultiHeadClassifier(self.num_classes, self.n_tasks,
                               name="heads")(h, task)


class MLPFeatures(nn.Module):
  """[Linear, ReLU, Dropout] x ``hidden_layers``: the MLP's trunk.

  Attributes:
    hidden_size: Width of each hidden layer.
    hidden_layers: Number of hidden layers.
    drop_rate: Dropout probability (training only).
    input_size: Expected features after flattening; None infers them.
  """

  hidden_size: int = 512
  hidden_layers: int = 1
  drop_rate: float = 0.5
  input_size: int | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = x.reshape((x.shape[0], -1))
    if self.input_size is not None and x.shape[-1] != self.input_size:
      raise ValueError(f"input_size={self.input_size} but the inputs have "
                       f"{x.shape[-1]} features per sample after flattening.")
    _check_hidden_layers(self.hidden_layers)
    check_sizes(self, "hidden_size")
    for _ in range(self.hidden_layers):
      x = nn.relu(TorchLinear(self.hidden_size)(x))
      x = _dropout(self.drop_rate, train)(x)
    return x


class MTMLP(nn.Module):
  """Avalanche's ``MTSimpleMLP``: a shared MLP trunk and one head per task.

  Attributes:
    num_classes: Outputs of each head.
    n_tasks: Number of heads.
    input_size: Expected features after flattening; None infers them.
    hidden_size: Width of each hidden layer.
    hidden_layers: Number of hidden layers (1 in Avalanche).
    drop_rate: Dropout probability after each hidden layer.
  """

  num_classes: int
  n_tasks: int
  input_size: int | None = None
  hidden_size: int = 512
  hidden_layers: int = 1
  drop_rate: float = 0.5

  @nn.compact
  def __call__(self, x: jnp.ndarray, task: jnp.ndarray,
               train: bool = False) -> jnp.ndarray:
    h = MLPFeatures(self.hidden_size, self.hidden_layers, self.drop_rate,
                    self.input_size, name="features")(x, train)
    return MultiHeadClassifier(self.num_classes, self.n_tasks,
                               name="heads")(h, task)


def mt_simple_cnn(num_classes: int, n_tasks: int, drop_rate: float = 0.25,
                  native_cpu_gradients: bool = True) -> MultiHead:
  """Avalanche's ``MTSimpleCNN``: :class:`SimpleCNN` features, one head per task.

  ``native_cpu_gradients`` as :class:`SimpleCNN`'s (False for forward mode
  or higher derivatives).

  Example:
    >>> mt_simple_cnn(num_classes=2, n_tasks=5).n_tasks
    5
  """
  return MultiHead(SimpleCNN(num_classes=None, drop_rate=drop_rate,
                             native_cpu_gradients=native_cpu_gradients),
                   num_classes=num_classes, n_tasks=n_tasks)


def mt_slim_resnet18(num_classes: int, n_tasks: int, nf: int = 20,
                     native_cpu_gradients: bool = True) -> MultiHead:
  """Avalanche's ``MTSlimResNet18``: slim ResNet-18 features, one head per task.

  ``native_cpu_gradients`` as :class:`SlimResNet18`'s.

  Example:
    >>> mt_slim_resnet18(num_classes=5, n_tasks=20).num_classes
    5
  """
  return MultiHead(SlimResNet18(num_classes=None, nf=nf,
                                native_cpu_gradients=native_cpu_gradients),
                   num_classes=num_classes, n_tasks=n_tasks)


def mt_sequence_classifier(num_classes: int, n_tasks: int,
                           hidden_size: int = 128,
                           rnn_layers: int = 1) -> MultiHead:
  """Avalanche's ``MTSimpleSequenceClassifier``: an LSTM's last output, one
  head per task (see :class:`jaxcl.models.SequenceClassifier`).

  Example:
    >>> mt_sequence_classifier(num_classes=2, n_tasks=5).features.hidden_size
    128
  """
  return MultiHead(SequenceClassifier(num_classes=None,
                                      hidden_size=hidden_size,
                                      rnn_layers=rnn_layers),
                   num_classes=num_classes, n_tasks=n_tasks)
