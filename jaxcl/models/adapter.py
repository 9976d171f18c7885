"""One calling convention for every model: Flax modules or plain functions.

The training loop only sees a :class:`Model`: ``init(key, x, task)`` returns
``(params, model_state)`` and ``apply(params, model_state, x, task, train,
key)`` returns ``(logits, new_model_state)``. ``model_state`` holds Flax's
non-parameter collections (e.g. ``batch_stats``), updated in training and
frozen in evaluation. An ``apply`` that also takes ``batch_stats_mask`` (one
bool per sample) gets, in the training step, the rows that hold samples, so
that batch statistics leave out padding.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxcl.models import MLP
  >>> model = as_model(MLP(num_classes=3, hidden_size=4))
  >>> params, model_state = model.init(jax.random.key(0), jnp.zeros((1, 2)),
  ...                                  jnp.zeros((1,), jnp.int32))
  >>> logits, _ = model.apply(params, model_state, jnp.ones((5, 2)),
  ...                         jnp.zeros((5,), jnp.int32), False, None)
  >>> logits.shape
  (5, 3)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

__all__ = ["Model", "as_model", "batch_stats_rows"]

PyTree = Any


class Model(NamedTuple):
  """A model as two pure functions.

  Attributes:
    init: ``(key, x, task) -> (params, model_state)``.
    apply: ``(params, model_state, x, task, train, key) -> (logits,
      new_model_state)``; ``key`` drives dropout and may be None in evaluation.
      It may take a ``batch_stats_mask`` keyword: the samples that batch
      statistics cover in training (the training step passes it when
      ``apply`` takes it).
  """

  init: Callable[..., tuple[PyTree, PyTree]]
  apply: Callable[..., tuple[jax.Array, PyTree]]


def batch_stats_rows(apply: Callable[..., Any],
                     rows: jax.Array | None) -> dict[str, jax.Array]:
  """``apply``'s ``batch_stats_mask`` keyword for a training-mode call.

  Args:
    apply: A :class:`Model`'s ``apply``.
    rows: ``bool[batch]``, the rows holding samples (None: all).

  Returns:
    ``{"batch_stats_mask": rows}`` if ``apply`` takes it, with every row
    counted when none is (batch norm of no rows is NaN, and would stay in
    its running statistics); else ``{}``.

  Example:
    >>> import jax.numpy as jnp
    >>> f = lambda p, s, x, t, train, key, batch_stats_mask=None: x
    >>> batch_stats_rows(f, jnp.array([False, False]))
    {'batch_stats_mask': Array([ True,  True], dtype=bool)}
  """
  if rows is None or "batch_stats_mask" not in inspect.signature(
      apply).parameters:
    return {}
  return {"batch_stats_mask": rows | ~jnp.any(rows)}


def call_arguments(module: nn.Module, x: Any, offered: dict[str, Any]
                   ) -> tuple[tuple[Any, ...], dict[str, Any]]:
  """``module(x, ...)``'s arguments: those of ``offered`` its ``__call__``
  takes, in their positions where they have one (lifted transforms, e.g.
  ``nn.remat(..., static_argnums=...)`` or ``nn.jit``, see only positional
  arguments).

  Example:
    >>> from jaxcl.models import MLP
    >>> call_arguments(MLP(num_classes=2), "x", {"train": True, "task": 0})
    (('x', True), {})
  """
  signature = inspect.signature(type(module).__call__)
  taken = {k: v for k, v in offered.items() if k in signature.parameters}
  bound = signature.bind_partial(None, x, **taken)  # None: self.
  return bound.args[1:], bound.kwargs


def as_model(model: nn.Module | Model) -> Model:
  """Wraps a Flax linen module (or returns a :class:`Model` unchanged).

  The module's ``__call__`` may take ``train`` (dropout/batch-norm mode),
  ``task`` (per-sample task labels, for multi-head models) and
  ``batch_stats_mask`` (the samples batch statistics cover in training)
  arguments; they are passed
  only when the module accepts them, by position where they have one (so
  ``nn.remat(Module, static_argnums=(2,))`` gets a static ``train``).

  Args:
    model: A ``flax.linen.Module`` or a :class:`Model`.

  Returns:
    The model as a :class:`Model`.
  """
  if isinstance(model, Model):
    return model
  if not isinstance(model, nn.Module):
    raise TypeError(f"model must be a flax.linen.Module or jaxcl.models.Model, "
                    f"got {type(model).__name__}.")
  def arguments(x, task, train, rows=None) -> tuple[tuple[Any, ...],
                                                     dict[str, Any]]:
    offered = {"train": train, "task": task}
    if rows is not None:
      offered["batch_stats_mask"] = rows
    return call_arguments(model, x, offered)

  def init(key, x, task):
    params_key, dropout_key = jax.random.split(key)
    args, kwargs = arguments(x, task, False)
    variables = model.init({"params": params_key, "dropout": dropout_key},
                           *args, **kwargs)
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables

  def apply(params, model_state, x, task, train, key, batch_stats_mask=None):
    variables = {"params": params, **model_state}
    rngs = {"dropout": key} if key is not None else {}
    args, kwargs = arguments(x, task, train, batch_stats_mask)
    if train and model_state:
      logits, updated = model.apply(variables, *args, rngs=rngs,
                                    mutable=list(model_state), **kwargs)
      # Collections that `sow` appends to (auxiliary losses, say) grow at
      # every call: the loop's carried state keeps its init value for them.
      kept = {name: value for name, value in updated.items()
              if jax.tree.structure(value) ==
              jax.tree.structure(model_state[name])}
      return logits, {**model_state, **kept}
    logits = model.apply(variables, *args, rngs=rngs, **kwargs)
    return logits, model_state

  return Model(init=init, apply=apply)
