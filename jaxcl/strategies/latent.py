"""Latent replay: memories of features replayed through the output layer.

The pieces feature replay and AR1 share. A feature memory is a
:class:`~jaxcl.strategies.buffers.Buffer` whose ``x`` holds the inputs of
the model's output layer (evaluation mode, float32); replaying draws rows
from it and runs the output layer alone on them
(:class:`~jaxcl.strategies.model_utils.OutputLayer`), so a replayed row
costs one product with the output layer instead of a pass through the
model. The output layer must end the model: :func:`feature_memory` refuses,
before compiling, a model whose last ``Dense`` is followed by anything that
changes the shape of its outputs, and a multi-head classifier.

Example:
  >>> memory = feature_memory("ar1", ctx, params, model_state, 1500,
  ...                         policy="experience_balanced")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcl.models import MultiHeadClassifier
from jaxcl.strategies import buffers
from jaxcl.strategies.base import StrategyContext
from jaxcl.strategies.model_utils import (example_inputs, in_chunks,
                                          mask_logits, output_layer,
                                          output_layer_call)

__all__ = ["feature_memory", "replayed_logits", "store_features"]

PyTree = Any


def feature_memory(name: str, ctx: StrategyContext, params: PyTree,
                   model_state: PyTree, capacity: int, *,
                   policy: str) -> buffers.Buffer:
  """An empty memory of ``capacity`` output-layer inputs.

  Args:
    name: The strategy's name, for errors.
    ctx: Strategy context.
    params: Model parameters (shapes are traced, nothing is computed).
    model_state: Model state.
    capacity: Number of slots.
    policy: A :data:`~jaxcl.strategies.buffers.POLICIES` name (groups are
      the stream's experiences or the benchmark's classes).

  Raises:
    ValueError: For a multi-head output layer, or one whose outputs are not
      the model's logits in shape.
  """
  x, task = example_inputs(ctx)
  head = output_layer(ctx, params, model_state, x, task)
  if isinstance(head.module, MultiHeadClassifier):
    raise ValueError(f"{name} needs a model whose output layer is a "
                     "flax.linen.Dense (one head for every class), got a "
                     "jaxcl.models.MultiHeadClassifier.")
  features = jax.eval_shape(
      lambda p: output_layer_call(ctx, p, model_state, x, task)[1], params)
  outputs = jax.eval_shape(lambda p, h: head(p, h), params, features)
  logits = jax.eval_shape(
      lambda p: ctx.logits(p, model_state, x, task), params)
  if outputs.shape != logits.shape:
    raise ValueError(
        f"{name} runs the model's output layer (at {'/'.join(head.path)}) "
        f"on stored features, so its outputs must be the model's logits; got "
        f"outputs of shape {outputs.shape} for logits of shape "
        f"{logits.shape}: expected nothing to follow the last Dense the "
        f"model calls.")
  return buffers.init(capacity, features.shape[1:], jnp.float32,
                      policy=policy,
                      n_groups=buffers.context_groups(ctx, policy, capacity))


def store_features(ctx: StrategyContext, state, buffer: buffers.Buffer,
                   data, key: jax.Array) -> buffers.Buffer:
  """Offers the experience's output-layer inputs (evaluation mode, under
  ``state``'s parameters) to ``buffer``."""
  def features(x, task):
    return output_layer_call(ctx, state.params, state.model_state, x,
                             task)[1].astype(jnp.float32)

  return buffers.add(buffer, key, in_chunks(features, data.x, data.task),
                     data.y, data.task, valid=data.valid,
                     experience=data.index)


def replayed_logits(ctx: StrategyContext, params: PyTree, model_state: PyTree,
                    buffer: buffers.Buffer, key: jax.Array, n: int,
                    seen: jax.Array) -> tuple[jax.Array, dict]:
  """The output layer's logits on ``n`` features drawn from ``buffer``.

  Args:
    ctx: Strategy context.
    params: Model parameters (the output layer's are used).
    model_state: Model state (to find the output layer).
    buffer: A :func:`feature_memory`.
    key: PRNG key of the draw.
    n: Rows drawn (distinct; empty slots weigh 0).
    seen: ``bool[n_classes]``, the classes the logits may predict.

  Returns:
    ``(logits, rows)``: the logits masked as the loop masks them
    (``seen``), and the drawn rows (``y``, ``task``, ``weight``, ...).
  """
  head = output_layer(ctx, params, model_state)
  rows = buffers.sample(buffer, key, n)
  return mask_logits(ctx, head(params, rows["x"]), seen, rows["task"]), rows
