"""Meta-Experience Replay (MER), as Avalanche's ``MER`` strategy.

Riemer et al., "Learning to Learn without Forgetting by Maximizing Transfer
and Minimizing Interference", ICLR 2019. MER replays memory samples one at
a time inside Reptile's meta-update, so that a step that helps the current
sample and hurts a remembered one is pulled back. Per mini-batch of the
current experience (the whole update is one optimizer step of the loop):

1. ``θ_A ← θ``; then ``n_inner_steps`` times:
   a. draw ``batch_size_mem`` samples of the memory (uniform, without
      replacement; all of them while it holds fewer, none at first);
   b. ``θ_B ← θ``; one optimizer step per sample, in order: the
      mini-batch's samples, then the drawn ones;
   c. ``θ ← θ_B + β (θ − θ_B)`` (within-batch Reptile).
2. ``θ ← θ_A + γ (θ − θ_A)`` (across-batch Reptile).

The optimizer's state carries through every inner step, as the one torch
optimizer's does in Avalanche, and Reptile moves the parameters only (not
batch statistics). After each experience the memory, a reservoir of
``mem_size`` samples (Avalanche's ``ReservoirSamplingBuffer``: the samples
with the highest uniform random priorities among all seen), takes in the
experience. The training loss reported for the step is the mini-batch's
loss under the updated parameters, as in Avalanche.

Avalanche trains MER with mini-batches of 1 (``train_mb_size=1``); with
``batch_size`` B each optimizer step of the loop runs ``n_inner_steps ·
(B + batch_size_mem)`` single-sample steps.
"""

from __future__ import annotations

import jax

from jaxcl import _validation
from jaxcl.strategies import buffers
from jaxcl.strategies.base import Strategy

__all__ = ["mer"]


def _reptile(start, end, rate: float):
  """``start + rate · (end − start)``, leaf by leaf."""
  return jax.tree.map(lambda a, b: a + rate * (b - a), start, end)


def mer(mem_size: int = 200, batch_size_mem: int = 10, n_inner_steps: int = 5,
        beta: float = 0.1, gamma: float = 0.1) -> Strategy:
  """Meta-Experience Replay (Avalanche's ``MER``; see the module docstring).

  Args:
    mem_size: Capacity of the reservoir memory (samples).
    batch_size_mem: Memory samples drawn for each inner iteration.
    n_inner_steps: Inner iterations per mini-batch.
    beta: Within-batch Reptile coefficient.
    gamma: Across-batch Reptile coefficient.

  Returns:
    The strategy; its ``cl_state`` is the memory, a
    :class:`~jaxcl.strategies.buffers.Buffer`. It replaces the optimizer
    step (``Strategy.update``), so ``chain`` adds to it only strategies
    without per-step hooks (EWC, MAS, ...).

  Example:
    >>> mer(mem_size=100, n_inner_steps=2).name
    'mer'
  """
  mem_size = _validation.check_positive_int("mem_size", mem_size)
  batch_size_mem = _validation.check_positive_int("batch_size_mem",
                                                  batch_size_mem)
  n_inner_steps = _validation.check_positive_int("n_inner_steps",
                                                 n_inner_steps)
  beta = _validation.check_float32_positive("beta", beta)
  gamma = _validation.check_float32_positive("gamma", gamma)

  def init(ctx, params, key):
    del params, key
    return buffers.for_context(ctx, mem_size, policy="reservoir")

  def update(ctx, memory, state, batch, key, ops):
    del ctx

    def one_sample(state, inputs):
      row, row_key = inputs
      # Padding and memory slots not yet filled take no step.
      state = jax.lax.cond(row["weight"][0] > 0, ops.step,
                           lambda state, row, row_key: state,
                           state, row, row_key)
      return state, None

    def inner(state, inner_key):
      draw_key, steps_key = jax.random.split(inner_key)
      mixed = buffers.concat_batches(
          batch, buffers.sample(memory, draw_key, batch_size_mem))
      rows = jax.tree.map(lambda a: a[:, None], mixed)
      n_rows = mixed["y"].shape[0]
      end, _ = jax.lax.scan(one_sample, state,
                            (rows, jax.random.split(steps_key, n_rows)))
      return end.replace(params=_reptile(state.params, end.params, beta)), None

    end, _ = jax.lax.scan(inner, state, jax.random.split(key, n_inner_steps))
    return end.replace(params=_reptile(state.params, end.params, gamma)), memory

  def end_experience(ctx, state, data, key):
    del ctx
    return state.replace(
        cl_state=buffers.add_experience(state.cl_state, key, data))

  return Strategy(name="mer", init=init, update=update,
                  end_experience=end_experience)


STRATEGIES = {"mer": mer}
