"""Recurrent classifiers: Avalanche's ``SimpleSequenceClassifier`` (an LSTM).

Inputs are sequences ``[batch, time, features]``. Images ``[batch, height,
width, channels]`` are read row by row (``time = height``, ``features =
width * channels``: "sequential MNIST" when rows are the steps), and
``[batch, time]`` is a sequence of scalars.

Example:
  >>> import jax, jax.numpy as jnp
  >>> model = SequenceClassifier(num_classes=10, hidden_size=16)
  >>> x = jnp.zeros((2, 28, 28, 1))
  >>> model.apply(model.init(jax.random.key(0), x), x).shape
  (2, 10)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxcl.models.mlp import TorchLinear, check_sizes

__all__ = ["LSTM", "SequenceClassifier"]


def _as_sequence(x: jnp.ndarray) -> jnp.ndarray:
  """``x`` as ``[batch, time, features]`` (see the module's docstring)."""
  if x.ndim < 2:
    raise ValueError(f"a sequence model expects inputs [batch, time, ...], "
                     f"got inputs of shape {x.shape}.")
  return x.reshape(x.shape[0], x.shape[1], -1)


class LSTM(nn.Module):
  """A stack of LSTM layers, as PyTorch's ``nn.LSTM(batch_first=True)``.

  Each layer computes, from zero initial states, with the gates in
  PyTorch's order (input, forget, cell, output) and two biases per layer::

    i, f, g, o = split(x_t W_ih + b_ih + h_{t-1} W_hh + b_hh)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)

  Every weight and bias starts from U(-1/sqrt(hidden_size),
  1/sqrt(hidden_size)), as PyTorch's. The input projection of all steps is
  one matrix product before the recurrence, which then carries only the
  ``[batch, hidden] @ [hidden, 4 hidden]`` product.

  Attributes:
    hidden_size: Width of the hidden and cell states.
    num_layers: Stacked layers (each reads the previous one's outputs).

  Returns:
    The last layer's outputs at every step, ``[batch, time, hidden_size]``.
  """

  hidden_size: int
  num_layers: int = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if x.ndim != 3:
      raise ValueError(f"LSTM expects inputs [batch, time, features], got "
                       f"inputs of shape {x.shape}.")
    check_sizes(self, "hidden_size", "num_layers")
    bound = 1.0 / np.sqrt(self.hidden_size)

    def uniform(key, shape, dtype=jnp.float32):
      return jax.random.uniform(key, shape, dtype, -bound, bound)

    gates = 4 * self.hidden_size
    for layer in range(self.num_layers):
      w_ih = self.param(f"w_ih_{layer}", uniform, (x.shape[-1], gates))
      w_hh = self.param(f"w_hh_{layer}", uniform, (self.hidden_size, gates))
      b_ih = self.param(f"b_ih_{layer}", uniform, (gates,))
      b_hh = self.param(f"b_hh_{layer}", uniform, (gates,))
      projected = x @ w_ih + (b_ih + b_hh)

      def step(carry, projected_t, w_hh=w_hh):
        h, c = carry
        i, f, g, o = jnp.split(projected_t + h @ w_hh, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

      zeros = jnp.zeros((x.shape[0], self.hidden_size), projected.dtype)
      _, outputs = jax.lax.scan(step, (zeros, zeros),
                                jnp.swapaxes(projected, 0, 1))
      x = jnp.swapaxes(outputs, 0, 1)
    return x


class SequenceClassifier(nn.Module):
  """Avalanche's ``SimpleSequenceClassifier``: an LSTM, then a linear layer
  on its output at the last step.

  Attributes:
    num_classes: Width of the output layer; None returns the last step's
      LSTM output (a backbone for :class:`jaxcl.models.MultiHead` or
      :class:`jaxcl.models.CosineClassifier`).
    hidden_size: Width of the LSTM's states (Avalanche's ``hidden_size``,
      which has no default there).
    rnn_layers: Stacked LSTM layers (Avalanche's ``rnn_layers``, 1).

  Every sequence of a batch has the same length, as in Avalanche's model
  (which reads the output at the last position, padding or not).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = SequenceClassifier(num_classes=3, hidden_size=8, rnn_layers=2)
    >>> x = jnp.ones((4, 5, 2))   # 4 sequences of 5 steps of 2 features
    >>> model.apply(model.init(jax.random.key(0), x), x).shape
    (4, 3)
  """

  num_classes: int | None
  hidden_size: int = 128
  rnn_layers: int = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    check_sizes(self, "rnn_layers",
                *(() if self.num_classes is None else ("num_classes",)))
    h = LSTM(self.hidden_size, self.rnn_layers, name="lstm")(_as_sequence(x))
    h = h[:, -1]
    if self.num_classes is None:
      return h
    return TorchLinear(self.num_classes)(h)
