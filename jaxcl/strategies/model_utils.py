"""Running the model inside strategy hooks: masked losses and features.

Strategies that run the model on their own (importance estimation, memory
gradients, distillation, exemplar features) must see the logits the loop
trains on, so :func:`mask_logits` masks them the same way and
:func:`task_loss` is the loop's task loss averaged over the real rows.
Penultimate features are, by convention, the inputs of the model's output
layer (the last ``flax.linen.Dense``, ``DenseGeneral``,
:class:`jaxcl.models.MultiHeadClassifier` or
:class:`jaxcl.models.CosineLinear` it calls), captured with
``flax.linen.intercept_methods`` (:func:`penultimate_features`).

Example:
  >>> import jax.numpy as jnp
  >>> float(weighted_mean(jnp.array([1.0, 3.0, 9.0]),
  ...                     jnp.array([1.0, 1.0, 0.0])))
  2.0
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxcl.models import CosineLinear, MultiHeadClassifier
from jaxcl.models.cosine import l2_normalize
from jaxcl.strategies.base import StrategyContext

__all__ = [
    "FAR_LOGIT",
    "MASK_VALUE",
    "OutputLayer",
    "example_inputs",
    "feature_size",
    "in_chunks",
    "init_model_state",
    "l2_normalize",
    "mask_logits",
    "output_layer",
    "output_layer_call",
    "output_layer_path",
    "own_class_mask",
    "penultimate_features",
    "refuse_task_labels",
    "require_optimizer",
    "restrict_current_classes",
    "shuffled_batches",
    "task_loss",
    "visible_classes",
    "weighted_mean",
]

PyTree = Any

MASK_VALUE = -1000.0
"""Logit of classes that cannot be predicted (Avalanche's incremental head)."""

FAR_LOGIT = MASK_VALUE / 2 + 1.0
"""Lowest logit a distance-based classifier gives a class that has
statistics: the evaluation counts a logit at or below ``MASK_VALUE / 2`` as
a masked class, so a far class must stay above it (and above masked ones)."""

# Output layers whose first input is the penultimate features.
_OUTPUT_LAYERS = (nn.Dense, nn.DenseGeneral, MultiHeadClassifier,
                  CosineLinear)

# Rows per forward pass when a strategy featurises a whole experience.
_CHUNK = 512


def weighted_mean(values: jax.Array, weight: jax.Array) -> jax.Array:
  """Mean over the real rows of a batch (``weight`` is 0 on padding).

  An all-padding batch gives 0.

  Example:
    >>> import jax.numpy as jnp
    >>> float(weighted_mean(jnp.array([2.0, 4.0]), jnp.array([1.0, 0.0])))
    2.0
  """
  return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def refuse_task_labels(ctx: StrategyContext, reason: str) -> None:
  """Raises ``ValueError(reason)`` for a stream with task labels (one head
  per task), which a strategy built for one head cannot serve.

  Example:
    >>> refuse_task_labels(ctx, "x keeps one head.")  # doctest: +SKIP
  """
  if ctx.task_classes is not None:
    raise ValueError(reason)


def refuse_online_streams(reason: str, instead: str
                          ) -> Callable[[Any, Any, Any], Any]:
  """An ``adapt_data`` that refuses the mini-experiences of online streams
  (``split_online``) before anything compiles, for strategies whose
  per-experience work needs whole experiences.

  Args:
    reason: What the strategy does that mini-experiences break (a sentence
      without its final full stop).
    instead: What to train online with instead.

  Example:
    >>> adapt = refuse_online_streams("x needs whole experiences",
    ...                               "replay for online training")
  """
  def adapt_data(experience, stream, seed):
    del stream, seed
    origin = getattr(experience, "origin_experience", None)
    if origin is not None:
      raise ValueError(
          f"{reason}; got train experience {experience.index}, a "
          f"mini-experience of experience {origin} of an online stream "
          f"(split_online): expected the stream before split_online (no "
          f"--online-size), or {instead}.")
    return experience
  return adapt_data


def own_class_mask(ctx: StrategyContext, batch: dict,
                   rows: jax.Array) -> jax.Array:
  """``batch``'s class mask with ``rows`` restricted to their own class.

  A row's cross-entropy over its own class alone is exactly 0: a strategy
  whose penalty replaces the loop's task loss on some rows zeroes it there
  while the rows keep their weight, so the loop's metrics and other
  strategies' penalties still count them. The other rows keep the mask
  they had (every class without one).

  Args:
    ctx: Strategy context.
    batch: A batch with ``y`` and, optionally, ``class_mask``.
    rows: ``bool[batch]``, the rows to restrict.

  Returns:
    ``bool[batch, n_classes]``, the new ``batch["class_mask"]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxcl.strategies.base import StrategyContext
    >>> ctx = StrategyContext(None, None, None, 3, 1, (2,), 1, 1)
    >>> own_class_mask(ctx, {"y": jnp.array([2, 0])},
    ...                jnp.array([True, False])).tolist()
    [[False, False, True], [True, True, True]]
  """
  shape = (batch["y"].shape[0], ctx.n_classes)
  before = jnp.broadcast_to(batch.get("class_mask", True), shape)
  own = jax.nn.one_hot(batch["y"], ctx.n_classes, dtype=bool)
  return jnp.where(rows[:, None], own, before)


def require_optimizer(ctx: StrategyContext, what: str) -> None:
  """Raises ``ValueError`` when ``ctx`` lacks the optax optimizer, which a
  strategy that resets the optimizer state (``what`` it does) needs.

  Example:
    >>> require_optimizer(ctx, "ar1 resets the optimizer state")  # doctest: +SKIP
  """
  if ctx.optimizer is None:
    raise ValueError(f"{what} and needs ctx.optimizer (the optax "
                     f"optimizer), got None.")


def restrict_current_classes(ctx: StrategyContext, batch: dict,
                             allowed: jax.Array) -> dict:
  """Restricts the cross-entropy of the current samples to ``allowed``.

  The current samples are the first ``ctx.batch_size`` rows of positive
  weight; rows a strategy before it in a chain appended (a replay memory)
  keep their classes. Avalanche's ``MaskedCrossEntropy("new")`` and task
  experts train this way.

  Args:
    ctx: Strategy context.
    batch: The batch (its ``class_mask``, if any, is narrowed).
    allowed: ``bool[n_classes]``.

  Returns:
    The batch with ``class_mask``.

  Example:
    >>> out = restrict_current_classes(ctx, batch, classes)  # doctest: +SKIP
  """
  rows = batch["y"].shape[0]
  before = jnp.broadcast_to(batch.get("class_mask", True),
                            (rows, ctx.n_classes))
  current = ((batch["weight"] > 0)
             & (jnp.arange(rows) < ctx.batch_size))[:, None]
  return {**batch, "class_mask": jnp.where(current, before & allowed,
                                           before)}


def mask_logits(ctx: StrategyContext, logits: jax.Array, seen: jax.Array,
                task: jax.Array) -> jax.Array:
  """Masks logits as the training loop does, with ``MASK_VALUE``.

  Classes not seen so far are masked and, with ``ctx.task_classes``, so are
  the classes outside each sample's task. With ``ctx.mask_classes`` off the
  logits are returned unchanged.

  Args:
    ctx: Strategy context.
    logits: ``[batch, n_classes]``.
    seen: ``bool[n_classes]``, the classes seen so far.
    task: ``[batch]`` task labels.

  Returns:
    The masked logits.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxcl.strategies.base import StrategyContext
    >>> ctx = StrategyContext(None, None, None, 3, 1, (2,), 1, 1)
    >>> mask_logits(ctx, jnp.zeros((1, 3)), jnp.array([True, False, True]),
    ...             jnp.zeros(1, int)).tolist()
    [[0.0, -1000.0, 0.0]]
  """
  if not ctx.mask_classes:
    return logits
  return jnp.where(visible_classes(seen, ctx.task_classes, task), logits,
                   MASK_VALUE)


def visible_classes(seen: jax.Array, task_classes: Any = None,
                    task: jax.Array | None = None) -> jax.Array:
  """The classes a masked prediction may output, per sample.

  Those seen so far and, with ``task_classes``, of the sample's task. A
  sample none of whose classes was seen yet (before any training, or of a
  task not trained yet) keeps all of them (its task's): it is predicted as
  the model at initialisation predicts, as a fixed head without masking
  would, instead of by a tie between masked logits.

  Args:
    seen: ``bool[n_classes]``, the classes seen so far.
    task_classes: Optional ``bool[n_tasks, n_classes]``, each task's classes.
    task: ``int[batch]`` task labels, needed with ``task_classes``.

  Returns:
    ``bool[n_classes]``, or ``bool[batch, n_classes]`` with ``task_classes``.

  Example:
    >>> import jax.numpy as jnp
    >>> visible_classes(jnp.array([True, False, True])).tolist()
    [True, False, True]
    >>> visible_classes(jnp.zeros(3, bool)).tolist()  # Nothing seen yet.
    [True, True, True]
  """
  if task_classes is None:
    visible, fallback = seen, jnp.ones_like(seen)
  else:
    fallback = jnp.asarray(task_classes)[task]
    visible = seen & fallback
  return jnp.where(jnp.any(visible, -1, keepdims=True), visible, fallback)


def task_loss(ctx: StrategyContext, params: PyTree, model_state: PyTree,
              batch: dict, seen: jax.Array, train: bool = False,
              key: jax.Array | None = None) -> jax.Array:
  """Mean task loss over the real rows of ``batch``, logits masked as the loop.

  Args:
    ctx: Strategy context.
    params: Model parameters.
    model_state: Model state.
    batch: ``x``, ``y``, ``task`` and ``weight`` (0 on padding).
    seen: ``bool[n_classes]``, the classes seen so far.
    train: Run the model in training mode.
    key: PRNG key of the model in training mode (dropout).

  Returns:
    A scalar.

  Example:
    >>> loss = task_loss(ctx, params, state, batch, seen)  # doctest: +SKIP
  """
  logits = ctx.logits(params, model_state, batch["x"], batch["task"], train,
                      key, weight=batch["weight"])
  logits = mask_logits(ctx, logits, seen, batch["task"])
  return weighted_mean(ctx.loss(logits, batch), batch["weight"])


def example_inputs(ctx: StrategyContext) -> tuple[jax.Array, jax.Array]:
  """One all-zero raw input and its task label, to initialise or trace.

  Example:
    >>> from jaxcl.strategies.base import StrategyContext
    >>> ctx = StrategyContext(None, None, None, 3, 1, (2,), 1, 1)
    >>> [a.shape for a in example_inputs(ctx)]
    [(1, 2), (1,)]
  """
  return (jnp.zeros((1, *ctx.input_shape), ctx.x_dtype),
          jnp.zeros((1,), jnp.int32))


def init_model_state(ctx: StrategyContext, key: jax.Array) -> PyTree:
  """The model's initial state (e.g. batch-norm statistics: mean 0, var 1).

  The ``init`` hook gets the parameters but no model state. Placeholders
  for a teacher's state start from this rather than zeros: a zero variance
  scales each batch-norm layer's output by ``1/sqrt(eps)``, which a deep
  network overflows even where the result is masked out (its gradient is
  then NaN).

  Example:
    >>> model_state = init_model_state(ctx, key)  # doctest: +SKIP
  """
  x, task = example_inputs(ctx)
  return ctx.model.init(key, ctx.preprocess(x), task)[1]


class OutputLayer(NamedTuple):
  """The model's output layer, to run on features of one's own.

  Attributes:
    path: Where its parameters sit in the model's ``params``.
    module: An unbound copy of the layer (same attributes).

  Example:
    >>> head = output_layer(ctx, params, model_state)  # doctest: +SKIP
    >>> logits = head(params, features, task)  # doctest: +SKIP
  """

  path: tuple[str, ...]
  module: nn.Module

  def __call__(self, params: PyTree, features: jax.Array,
               task: jax.Array | None = None) -> jax.Array:
    """The layer's outputs on ``features`` with the model's ``params``
    (``task`` selects the head of a multi-head classifier)."""
    layer = params
    for key in self.path:
      layer = layer[key]
    extra = (task,) if isinstance(self.module, MultiHeadClassifier) else ()
    return self.module.apply({"params": layer}, features, *extra)


def _last_output_call(ctx: StrategyContext, params: PyTree,
                      model_state: PyTree, x: jax.Array, task: jax.Array
                      ) -> tuple[tuple[str, ...], nn.Module, jax.Array]:
  """The path, an unbound copy and the inputs of the output layer's call."""
  calls = []

  def record(next_fun, args, kwargs, context):
    if (isinstance(context.module, _OUTPUT_LAYERS)
        and context.method_name == "__call__"):
      # The first argument after self, however it was passed (Dense names
      # it `inputs`, MultiHeadClassifier `features`).
      bound = inspect.signature(type(context.module).__call__).bind(
          context.module, *args, **kwargs)
      inputs = list(bound.arguments.values())[1]
      calls.append((tuple(context.module.scope.path),
                    context.module.clone(parent=None), inputs))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    ctx.logits(params, model_state, x, task)
  if not calls:
    raise ValueError(
        "penultimate features need a Flax model whose output layer is a "
        "flax.linen.Dense, jaxcl.models.MultiHeadClassifier or CosineLinear "
        "(such as jaxcl.models.MLP or MTMLP): its features are that layer's inputs.")
  return calls[-1]


def output_layer_call(ctx: StrategyContext, params: PyTree,
                      model_state: PyTree, x: jax.Array, task: jax.Array
                      ) -> tuple[tuple[str, ...], jax.Array]:
  """The scope path and the inputs of the model's output layer.

  The output layer is the last ``flax.linen.Dense``, ``DenseGeneral``,
  :class:`jaxcl.models.MultiHeadClassifier` or
  :class:`jaxcl.models.CosineLinear` the model calls (evaluation
  mode). The path is where its parameters sit in ``params``.

  Args:
    ctx: Strategy context (holds the model and preprocessing).
    params: Model parameters.
    model_state: Model state.
    x: Raw inputs ``[batch, *input_shape]``.
    task: Task labels ``[batch]``.

  Returns:
    ``(path, inputs)``.

  Raises:
    ValueError: If the model calls no such layer (or is not a Flax module).

  Example:
    >>> path, x = output_layer_call(ctx, params, state, x, task)  # doctest: +SKIP
    >>> path  # doctest: +SKIP
    ('TorchLinear_1', 'Dense_0')
  """
  path, _, inputs = _last_output_call(ctx, params, model_state, x, task)
  return path, inputs


def output_layer(ctx: StrategyContext, params: PyTree, model_state: PyTree,
                 x: jax.Array | None = None,
                 task: jax.Array | None = None) -> OutputLayer:
  """The model's output layer (static; found by tracing abstractly).

  Traced on ``x`` and ``task`` or, when they are None, on
  :func:`example_inputs`. Running it on :func:`output_layer_call`'s inputs
  gives the layer's outputs, which are the model's logits when nothing
  follows the layer (as in ``jaxcl.models``).

  Raises:
    ValueError: If the model has no output layer that
      :func:`output_layer_call` recognises.

  Example:
    >>> output_layer(ctx, params, model_state).path  # doctest: +SKIP
    ('TorchLinear_1', 'Dense_0')
  """
  if x is None:
    x, task = example_inputs(ctx)
  found = []

  def probe(params):
    path, module, inputs = _last_output_call(ctx, params, model_state, x,
                                             task)
    found.append(OutputLayer(path, module))
    return inputs

  jax.eval_shape(probe, params)
  return found[0]


def output_layer_path(ctx: StrategyContext, params: PyTree,
                      model_state: PyTree, x: jax.Array | None = None,
                      task: jax.Array | None = None) -> tuple[str, ...]:
  """Where the output layer's parameters sit in ``params`` (static).

  Example:
    >>> output_layer_path(ctx, params, model_state)  # doctest: +SKIP
    ('TorchLinear_1', 'Dense_0')
  """
  return output_layer(ctx, params, model_state, x, task).path


def penultimate_features(ctx: StrategyContext, params: PyTree,
                         model_state: PyTree, x: jax.Array,
                         task: jax.Array) -> jax.Array:
  """The model's penultimate activations, in evaluation mode.

  The inputs of the output layer, flattened per sample; for
  :class:`jaxcl.models.MLP` that is the last hidden layer.

  Args:
    ctx, params, model_state, x, task: As for :func:`output_layer_call`.

  Returns:
    ``[batch, n_features]``.

  Raises:
    ValueError: If the model has no output layer that
      :func:`output_layer_call` recognises.

  Example:
    >>> f = penultimate_features(ctx, params, state, x, task)  # doctest: +SKIP
  """
  inputs = output_layer_call(ctx, params, model_state, x, task)[1]
  return inputs.reshape(inputs.shape[0], -1)


def feature_size(ctx: StrategyContext, params: PyTree,
                 model_state: PyTree) -> int:
  """The width of :func:`penultimate_features` (static, traced abstractly).

  Example:
    >>> feature_size(ctx, params, model_state)  # doctest: +SKIP
    512
  """
  x, task = example_inputs(ctx)
  return jax.eval_shape(
      lambda p: penultimate_features(ctx, p, model_state, x, task),
      params).shape[-1]


def in_chunks(fn: Callable[..., jax.Array], *arrays: jax.Array) -> jax.Array:
  """``fn`` over row chunks of ``arrays``: one compiled body, bounded memory.

  For featurising a whole padded experience (or a memory) at once: a
  ``lax.map`` over chunks of 512 rows (the last padded), so the memory a
  forward pass needs does not grow with the experience.

  Example:
    >>> import jax.numpy as jnp
    >>> in_chunks(lambda a: 2 * a, jnp.arange(3.0)).tolist()
    [0.0, 2.0, 4.0]
  """
  n = arrays[0].shape[0]
  chunk = min(_CHUNK, n)
  count = -(-n // chunk)

  def split(a):
    a = jnp.pad(a, [(0, count * chunk - n)] + [(0, 0)] * (a.ndim - 1))
    return a.reshape((count, chunk) + a.shape[1:])

  out = jax.lax.map(lambda args: fn(*args), tuple(split(a) for a in arrays))
  return out.reshape((count * chunk,) + out.shape[2:])[:n]


def shuffled_batches(key: jax.Array, valid: jax.Array, batch_size: int
                     ) -> tuple[jax.Array, jax.Array]:
  """One epoch's mini-batches: the ``valid`` rows in a random order.

  For strategies that train something of their own over an experience (a
  PyTorch ``DataLoader(shuffle=True)``): the valid rows first, shuffled,
  then the rest; the last batch is padded.

  Args:
    key: The epoch's PRNG key.
    valid: ``bool[n]``, the rows to draw (real samples).
    batch_size: Rows per batch.

  Returns:
    ``(rows, weight)``, ``[steps, batch_size]`` each with ``steps =
    ceil(n / batch_size)``: row indices and 1.0 for valid rows, else 0.0.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> rows, weight = shuffled_batches(jax.random.key(0),
    ...                                 jnp.array([True, False, True]), 2)
    >>> weight.tolist()
    [[1.0, 1.0], [0.0, 0.0]]
  """
  n = valid.shape[0]
  steps = -(-n // batch_size)
  order = jnp.argsort(jnp.where(valid, jax.random.uniform(key, (n,)), 2.0))
  rows = jnp.pad(order, (0, steps * batch_size - n))
  weight = (jnp.arange(steps * batch_size) < n) & valid[rows]
  return (rows.reshape(steps, batch_size),
          weight.astype(jnp.float32).reshape(steps, batch_size))
