"""Progressive Neural Networks (Rusu et al., 2016), as Avalanche's ``PNN``.

Each task has a column: a stack of hidden layers of its own. Column ``k``
also reads, at every layer, the previous layer's activations of columns
``0..k-1`` through an adapter (the lateral connections), and its last
activations feed task ``k``'s linear head. Avalanche adds a column when a
new task arrives and freezes the existing ones; here all ``n_tasks``
columns exist from the start (shapes stay fixed, so a stream compiles once)
and the laterals pass no gradient back, so a column only learns from
samples of its own task: for streams with one task per experience, that is
Avalanche's freezing.

Example:
  >>> import jax, jax.numpy as jnp
  >>> model = PNN(num_classes=2, n_tasks=3, hidden_size=8)
  >>> x, task = jnp.zeros((4, 6)), jnp.array([0, 1, 2, 1])
  >>> model.apply(model.init(jax.random.key(0), x, task), x, task).shape
  (4, 2)
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxcl import _validation
from jaxcl.models.heads import MultiHeadClassifier
from jaxcl.models.mlp import TorchLinear, check_sizes

__all__ = ["PNN", "PNNColumn"]

ADAPTERS = ("mlp", "linear")


class PNNColumn(nn.Module):
  """One column's layer: its own linear map plus the lateral adapter.

  ``adapter="mlp"`` is Rusu et al.'s Eq. 2: ``U relu(V [a₁h₁; …; a_kh_k])``
  with one learnt scale ``aᵢ`` per earlier column (drawn from N(0, 1), as
  Avalanche's ``MLPAdapter``). ``adapter="linear"`` is Eq. 1: one linear
  map per earlier column, summed (Avalanche's ``LinearAdapter``).

  Attributes:
    features: Width of the output.
    adapter: ``"mlp"`` or ``"linear"``.
  """

  features: int
  adapter: str = "mlp"

  @nn.compact
  def __call__(self, lateral: Sequence[jnp.ndarray],
               own: jnp.ndarray) -> jnp.ndarray:
    check_sizes(self, "features")
    _validation.check_choice("adapter", self.adapter, ADAPTERS)
    h = TorchLinear(self.features, name="itoh")(own)
    if not lateral:  # The first column has no earlier ones.
      return h
    if self.adapter == "linear":
      return h + sum(TorchLinear(self.features, name=f"lateral_{i}")(x)
                     for i, x in enumerate(lateral))
    alphas = self.param("alphas", nn.initializers.normal(1.0),
                        (len(lateral),))
    scaled = jnp.concatenate([a * x for a, x in zip(alphas, lateral)], -1)
    return h + TorchLinear(self.features, name="U")(
        nn.relu(TorchLinear(self.features, name="V")(scaled)))


class PNN(nn.Module):
  """Avalanche's ``PNN``: one column of hidden layers per task, with laterals.

  Sample ``i`` is classified by column ``task[i]`` and head ``task[i]``
  (:class:`~jaxcl.models.MultiHeadClassifier`); every column is evaluated,
  so a batch may mix tasks. Column ``k`` reads the earlier columns'
  activations through ``jax.lax.stop_gradient``: training task ``k`` gives
  columns ``0..k-1`` zero gradients (with plain SGD they stay as they are,
  as Avalanche's frozen columns; see ``docs/models.md`` for momentum and
  weight decay).

  Differences from Avalanche: the column of task label ``t`` is column
  ``t`` (Avalanche numbers columns in the order tasks first appear, the
  same for the usual streams whose tasks come as 0, 1, 2, ...); a task that
  comes back trains its column again (Avalanche keeps it frozen), as do
  replayed samples of earlier tasks; the first layer's adapter is an MLP
  adapter whatever ``adapter`` says, as in Avalanche, and the linear
  adapter works (Avalanche's ``LinearAdapter`` fails on its first call).

  Attributes:
    num_classes: Outputs of each head.
    n_tasks: Number of columns and heads.
    hidden_size: Width of every column's hidden layers (Avalanche's
      ``hidden_features_per_column``, default 100).
    hidden_layers: Hidden layers per column (Avalanche's ``num_layers``, at
      least 1).
    adapter: Lateral adapter of the layers after the first, ``"mlp"`` or
      ``"linear"``.
    input_size: Expected features after flattening; None infers them.
  """

  num_classes: int
  n_tasks: int
  hidden_size: int = 100
  hidden_layers: int = 1
  adapter: str = "mlp"
  input_size: int | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, task: jnp.ndarray,
               train: bool = False) -> jnp.ndarray:
    del train  # No dropout or batch norm.
    check_sizes(self, "num_classes", "n_tasks", "hidden_size",
                "hidden_layers")
    _validation.check_choice("adapter", self.adapter, ADAPTERS)
    x = x.reshape((x.shape[0], -1))
    if self.input_size is not None and x.shape[-1] != self.input_size:
      raise ValueError(f"PNN input_size={self.input_size} but the inputs "
                       f"have {x.shape[-1]} features per sample after "
                       "flattening.")
    columns = [x] * self.n_tasks
    for layer in range(self.hidden_layers):
      adapter = "mlp" if layer == 0 else self.adapter
      # Earlier columns are read, never trained, through the laterals.
      frozen = [jax.lax.stop_gradient(h) for h in columns]
      columns = [nn.relu(PNNColumn(self.hidden_size, adapter,
                                   name=f"layer_{layer}_column_{k}")(
                                       frozen[:k], columns[k]))
                 for k in range(self.n_tasks)]
    every = jnp.stack(columns, axis=1)
    # One label for the batch, as the heads take it, or one per sample. A
    # label outside [0, n_tasks) gets column 0 here; its head gives NaN.
    task = jnp.broadcast_to(jnp.asarray(task), (x.shape[0],))
    own = jnp.clip(task.astype(jnp.int32), 0, self.n_tasks - 1)
    features = jnp.take_along_axis(every, own[:, None, None], axis=1)[:, 0]
    return MultiHeadClassifier(self.num_classes, self.n_tasks,
                               name="heads")(features, task)
