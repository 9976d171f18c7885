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
import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import errors as flax_errors
from flax import linen as nn

__all__ = ["Model", "as_model", "batch_stats_rows", "stream_keys"]

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


def call_features(features: nn.Module, x: Any, train: bool,
                  batch_stats_mask: jax.Array | None) -> jax.Array:
  """A backbone's features ``[batch, n]``, flattened per sample: the module
  called with those of ``train`` and ``batch_stats_mask`` it takes.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxcl.models import MLP
    >>> from flax import linen as nn
    >>> class Backbone(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     return call_features(MLP(None, hidden_size=3), x, False, None)
    >>> x = jnp.ones((2, 4, 4))
    >>> Backbone().apply(Backbone().init(jax.random.key(0), x), x).shape
    (2, 3)
  """
  offered = {"train": train}
  if batch_stats_mask is not None:
    offered["batch_stats_mask"] = batch_stats_mask
  args, kwargs = call_arguments(features, x, offered)
  h = features(*args, **kwargs)
  return h.reshape((h.shape[0], -1))


def check_backbone(wrapper: nn.Module) -> None:
  """Refuses a ``wrapper.features`` backbone that still has its output
  layer (``num_classes`` set): the wrapper would classify its logits.

  Example:
    >>> from jaxcl.models import MLP, MultiHead
    >>> check_backbone(MultiHead(MLP(None), num_classes=2, n_tasks=2))
  """
  classes = getattr(wrapper.features, "num_classes", None)
  if classes is not None:
    raise ValueError(
        f"{type(wrapper).__name__} needs a backbone built with "
        f"num_classes=None (its features), got "
        f"{type(wrapper.features).__name__} with num_classes={classes!r}.")


def stream_keys(key: jax.Array, streams: Sequence[str]
                ) -> dict[str, jax.Array]:
  """One key per random stream: ``dropout`` gets ``key`` itself, any other
  stream a key folded from ``key`` and the stream's name.

  Example:
    >>> import jax
    >>> keys = stream_keys(jax.random.key(0), ("dropout", "noise"))
    >>> sorted(keys), bool((jax.random.key_data(keys["dropout"]) ==
    ...                     jax.random.key_data(jax.random.key(0))).all())
    (['dropout', 'noise'], True)
  """
  # Folding in a hash of the name, rather than splitting, leaves a stream's
  # numbers unchanged when other streams are added or reordered.
  return {name: key if name == "dropout" else
          jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)
          for name in streams}


def check_rng_streams(rng_streams: Any) -> tuple[str, ...]:
  """``rng_streams`` as a tuple, or a ``ValueError`` naming what is wrong."""
  if isinstance(rng_streams, str) or not isinstance(rng_streams, Sequence):
    raise ValueError(
        f"rng_streams must be a sequence of stream names, got "
        f"{rng_streams!r}; expected e.g. ('dropout', 'noise').")
  streams = tuple(rng_streams)
  for name in streams:
    if not isinstance(name, str) or not name or name == "params":
      raise ValueError(
          f"rng_streams must name random streams other than 'params' "
          f"(which only init uses), got {name!r} in {rng_streams!r}.")
  if len(set(streams)) != len(streams):
    raise ValueError(f"rng_streams names a stream twice: {rng_streams!r}; "
                     "expected distinct names.")
  return streams


def as_model(model: nn.Module | Model,
             rng_streams: Sequence[str] = ("dropout",)) -> Model:
  """Wraps a Flax linen module (or returns a :class:`Model` unchanged).

  The module's ``__call__`` may take ``train`` (dropout/batch-norm mode),
  ``task`` (per-sample task labels, for multi-head models) and
  ``batch_stats_mask`` (the samples batch statistics cover in training)
  arguments; they are passed
  only when the module accepts them, by position where they have one (so
  ``nn.remat(Module, static_argnums=(2,))`` gets a static ``train``).

  Args:
    model: A ``flax.linen.Module`` or a :class:`Model`.
    rng_streams: The random streams the module draws from in training
      (``self.make_rng(name)``), each keyed from the step's key by
      :func:`stream_keys`; ``dropout`` (Flax's ``nn.Dropout``) by default.

  Returns:
    The model as a :class:`Model`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import linen as nn
    >>> class Noisy(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x, train=False):
    ...     x = nn.Dense(2)(x)
    ...     if train:
    ...       x = x + jax.random.normal(self.make_rng("noise"), x.shape)
    ...     return x
    >>> model = as_model(Noisy(), rng_streams=("dropout", "noise"))
    >>> params, state = model.init(jax.random.key(0), jnp.ones((1, 3)), None)
    >>> model.apply(params, state, jnp.ones((4, 3)), None, True,
    ...             jax.random.key(1))[0].shape
    (4, 2)
  """
  streams = check_rng_streams(rng_streams)
  if isinstance(model, Model):
    if streams != ("dropout",):
      raise ValueError(
          f"rng_streams={rng_streams!r} applies to Flax modules; a Model's "
          "apply draws from its key itself.")
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

  def apply_module(variables, args, kwargs, rngs, **options):
    try:
      return model.apply(variables, *args, rngs=rngs, **options, **kwargs)
    except flax_errors.InvalidRngError as e:
      named = re.search(r'PRNG for "([^"]+)"', str(e))
      if named is None:
        raise
      name = named.group(1)
      if not rngs:  # jaxcl gives no key in evaluation.
        raise ValueError(
            f"the model draws random numbers from the {name!r} stream "
            f"(make_rng({name!r})) in a call without a random key, as in "
            "evaluation (train=False); expected a model that draws only when "
            "train=True (e.g. nn.Dropout(deterministic=not train)).") from e
      raise ValueError(
          f"the model draws random numbers from the {name!r} stream "
          f"(make_rng({name!r})), which rng_streams={streams!r} does not "
          f"hold; expected the model given as jaxcl.models.as_model(model, "
          f"rng_streams={streams + (name,)!r}).") from e

  def init(key, x, task):
    params_key, stream_key = jax.random.split(key)
    args, kwargs = arguments(x, task, False)
    variables = model.init({"params": params_key,
                            **stream_keys(stream_key, streams)},
                           *args, **kwargs)
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables

  def apply(params, model_state, x, task, train, key, batch_stats_mask=None):
    variables = {"params": params, **model_state}
    rngs = stream_keys(key, streams) if key is not None else {}
    args, kwargs = arguments(x, task, train, batch_stats_mask)
    if train and model_state:
      logits, updated = apply_module(variables, args, kwargs, rngs,
                                     mutable=list(model_state))
      # Collections that `sow` appends to (auxiliary losses, say) grow at
      # every call: the loop's carried state keeps its init value for them.
      kept = {name: value for name, value in updated.items()
              if jax.tree.structure(value) ==
              jax.tree.structure(model_state[name])}
      return logits, {**model_state, **kept}
    logits = apply_module(variables, args, kwargs, rngs)
    return logits, model_state

  return Model(init=init, apply=apply)
