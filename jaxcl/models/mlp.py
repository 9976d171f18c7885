"""Multi-layer perceptrons (Avalanche's ``SimpleMLP``) in Flax linen.

Example:
  >>> import jax, jax.numpy as jnp
  >>> model = MLP(num_classes=10)
  >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  >>> model.apply(variables, jnp.zeros((2, 28, 28, 1))).shape
  (2, 10)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from jaxcl import _validation

__all__ = ["MLP", "TorchLinear"]


def _torch_bias_init(fan_in: int):
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


@jax.custom_jvp
def _matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """``x @ kernel``, differentiated into products XLA:CPU's YNNPACK takes.

  JAX's rules give the kernel's gradient as a product that contracts the
  leading (sample) axis of both the inputs and the output's cotangent.
  XLA:CPU (jax 0.10) runs only products contracting the left operand's last
  axis with YNNPACK and hands this one to Eigen: the 784x512 gradient of a
  batch of 32 took 223 us against YNNPACK's 200, the 512x10 one of the
  output layer 35 us against 10. The tangent below multiplies by a
  materialised transpose of the inputs (the barrier keeps XLA from folding
  the two transposes away), which reverse mode turns into a product that
  contracts its left operand's last axis. Same values, in forward and
  reverse mode, under `vmap` and to any order.
  """
  return x @ kernel


@_matmul.defjvp
def _matmul_tangent(primals, tangents):
  (x, kernel), (dx, dkernel) = primals, tangents
  rows = x.reshape(-1, x.shape[-1])
  inputs = lax.optimization_barrier(rows.T).T
  dy = (inputs @ dkernel).reshape(*x.shape[:-1], kernel.shape[-1])
  return _matmul(x, kernel), dx @ kernel + dy


def _dense_product_for_cpu(lhs: jax.Array, rhs: jax.Array, dimension_numbers,
                           precision=None, **unused) -> jax.Array:
  """``nn.Dense``'s product call, routed to :func:`_matmul`.

  Only :class:`TorchLinear` passes it, with what ``nn.Dense`` always asks
  for: ``lhs``'s last axis contracted with ``rhs``'s first, default
  precision.
  """
  del dimension_numbers, precision, unused
  return _matmul(lhs, rhs)


class TorchLinear(nn.Module):
  """A dense layer initialised like PyTorch's ``nn.Linear``.

  Weights and biases are drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), so
  models start from the same distribution as Avalanche's. On the CPU
  backend its product has a custom tangent rule whose gradients XLA:CPU
  runs as YNNPACK matrix products (:func:`_matmul`: the same values; a
  training step of a 784-512-10 MLP at batch 32 runs 5-10 % faster).
  """

  features: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    fan_in = x.shape[-1]
    on_cpu = jax.default_backend() == "cpu"
    return nn.Dense(
        self.features,
        kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
        bias_init=_torch_bias_init(fan_in),
        dot_general=_dense_product_for_cpu if on_cpu else None)(x)


# Hidden-layer activations by name (ReLU is SimpleMLP's; tanh is the
# continual-learning-baselines' ``MLP(relu_act=False)``).
ACTIVATIONS = {"relu": nn.relu, "tanh": nn.tanh}


def _check_hidden_layers(hidden_layers) -> None:
  """Refuses a negative or non-integer number of hidden layers.

  0 gives a linear classifier; Avalanche's ``SimpleMLP`` always has at
  least one hidden layer.
  """
  _validation.check_non_negative_int("hidden_layers", hidden_layers)


def check_sizes(module: nn.Module, *names: str) -> None:
  """Refuses a size attribute of ``module`` that is not a positive integer
  (a zero size would divide by zero in the init, None fail in a shape)."""
  for name in names:
    _validation.check_positive_int(name, getattr(module, name))


def _dropout(rate, train: bool) -> nn.Dropout:
  """``nn.Dropout(rate)`` in training mode, for a rate in [0, 1) (Flax takes
  a negative rate or NaN without a word, and drops everything at 1)."""
  _validation.check_in_range("drop_rate", rate, low=0.0, high=1.0,
                             high_inclusive=False)
  return nn.Dropout(rate, deterministic=not train)


class MLP(nn.Module):
  """Avalanche's ``SimpleMLP``: [Linear, ReLU, Dropout] x hidden_layers + Linear.

  Attributes:
    num_classes: Width of the output layer; None returns the last hidden
      layer's activations (a backbone for :class:`jaxcl.models.MultiHead`
      or :class:`jaxcl.models.CosineClassifier`).
    input_size: Expected number of input features after flattening; ``None``
      infers it from the data. A mismatch raises a ``ValueError``.
    hidden_size: Width of each hidden layer.
    hidden_layers: Number of hidden layers (0: a linear classifier, which
      Avalanche's ``SimpleMLP`` cannot be).
    drop_rate: Dropout probability after each hidden layer (training only).
    activation: Hidden-layer activation, ``"relu"`` (default) or ``"tanh"``.
  """

  num_classes: int | None
  input_size: int | None = None
  hidden_size: int = 512
  hidden_layers: int = 1
  drop_rate: float = 0.5
  activation: str = "relu"

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = x.reshape((x.shape[0], -1))
    if self.input_size is not None and x.shape[-1] != self.input_size:
      raise ValueError(f"MLP input_size={self.input_size} but the inputs have "
                       f"{x.shape[-1]} features per sample after flattening.")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"MLP activation {self.activation!r} is unknown; "
                       f"expected one of {sorted(ACTIVATIONS)}.")
    _check_hidden_layers(self.hidden_layers)
    check_sizes(self, "hidden_size",
                *(() if self.num_classes is None else ("num_classes",)))
    for _ in range(self.hidden_layers):
      x = ACTIVATIONS[self.activation](TorchLinear(self.hidden_size)(x))
      x = _dropout(self.drop_rate, train)(x)
    if self.num_classes is None:
      return x
    return TorchLinear(self.num_classes)(x)
