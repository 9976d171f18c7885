"""Optimizer state between experiences: restart schedules or the whole state.

Avalanche re-creates the optimizer state at every experience
(``reset_optimizer``) and its ``LRSchedulerPlugin`` can restart the schedule
(``reset_scheduler``) and the learning rate (``reset_lr``) there. In jaxcl a
schedule is part of the optax optimizer (any ``optax.Schedule`` as its
learning rate); these pure functions do the resets inside the compiled
experience, so they cost no extra compile.

Example:
  >>> import optax, jax.numpy as jnp
  >>> opt = optax.sgd(optax.cosine_decay_schedule(0.1, decay_steps=100))
  >>> params = {"w": jnp.ones(3)}
  >>> state = opt.init(params)
  >>> _, state = opt.update(params, state, params)
  >>> int(restart_schedules(state)[1].count)  # the schedule's step count
  0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxcl import _validation

__all__ = ["SCHEDULES", "has_plateau", "loss_arguments", "one_schedule_step",
           "reset_optimizer_state", "restart_schedules", "schedule"]

# Optimizer states whose `count` drives a schedule (not Adam's bias correction).
_SCHEDULE_STATES = (optax.ScaleByScheduleState, optax.InjectHyperparamsState,
                    optax.InjectStatefulHyperparamsState)
_INJECT_STATES = (optax.InjectHyperparamsState,
                  optax.InjectStatefulHyperparamsState)


# optax.contrib.reduce_on_plateau: a learning-rate scale driven by the loss.
_PLATEAU_STATES = (optax.contrib.ReduceLROnPlateauState,)


def _is_schedule_state(node: Any) -> bool:
  return isinstance(node, _SCHEDULE_STATES)


def _is_node(node: Any) -> bool:
  return isinstance(node, _SCHEDULE_STATES + _PLATEAU_STATES)


def loss_arguments(optimizer: optax.GradientTransformation,
                   loss: Any) -> dict[str, Any]:
  """The extra arguments of ``optimizer.update`` for a step of ``loss``.

  Optimizers that take extra arguments (``optax.GradientTransformation
  ExtraArgs``, which ``optax.chain`` and optax's own optimizers are) get the
  step's training loss as ``value``, which
  ``optax.contrib.reduce_on_plateau`` reads and the others ignore.

  Example:
    >>> import optax
    >>> loss_arguments(optax.sgd(0.1), 0.5)
    {'value': 0.5}
  """
  if isinstance(optimizer, optax.GradientTransformationExtraArgs):
    return {"value": loss}
  return {}


def has_plateau(opt_state: optax.OptState) -> bool:
  """Whether ``opt_state`` holds an ``optax.contrib.reduce_on_plateau``
  state (works on shapes from ``jax.eval_shape`` too).

  Example:
    >>> import optax, jax.numpy as jnp
    >>> opt = optax.chain(optax.sgd(0.1), optax.contrib.reduce_on_plateau())
    >>> has_plateau(opt.init({"w": jnp.ones(2)}))
    True
  """
  return any(isinstance(node, _PLATEAU_STATES) for node in jax.tree.leaves(
      opt_state, is_leaf=lambda n: isinstance(n, _PLATEAU_STATES)))


def restart_schedules(opt_state: optax.OptState) -> optax.OptState:
  """Sets the step count of every schedule in ``opt_state`` back to zero.

  Momentum, Adam moments and bias-correction counts are kept; only the
  learning-rate (or any injected hyperparameter) schedules start over, as
  Avalanche's ``LRSchedulerPlugin(reset_scheduler=True, reset_lr=True)``.
  An ``optax.contrib.reduce_on_plateau`` starts over too: scale 1, no best
  loss, no plateau (Avalanche's ``ReduceLROnPlateau`` rebuilt).

  Args:
    opt_state: The state of an optax optimizer.

  Returns:
    The same state with its schedules at step 0.
  """
  def restart(node):
    if isinstance(node, _PLATEAU_STATES):
      return node._replace(
          scale=jnp.ones_like(node.scale),
          best_value=jnp.full_like(node.best_value, jnp.inf),
          **{name: jnp.zeros_like(getattr(node, name)) for name in (
              "plateau_count", "cooldown_count", "count", "avg_value")})
    if not _is_schedule_state(node):
      return node
    node = node._replace(count=node.count * 0)
    if isinstance(node, optax.InjectStatefulHyperparamsState):
      # The states of its schedules are step counts (optax's wrapped plain
      # schedules): all start over.
      node = node._replace(hyperparams_states=jax.tree.map(
          lambda a: a * 0, node.hyperparams_states))
    if isinstance(node, _INJECT_STATES):
      # The walk stops at this node: the wrapped optimizer's own schedules.
      node = node._replace(inner_state=_map_nodes(restart, node.inner_state))
    return node
  return _map_nodes(restart, opt_state)


def one_schedule_step(before: optax.OptState,
                      after: optax.OptState) -> optax.OptState:
  """``after`` with every schedule one step past ``before``.

  A strategy that replaces the optimizer step may apply the optimizer
  several times per batch (MER once per sample and inner step, DualNet
  ``inner_steps`` times); its schedules still advance once per batch, as
  Avalanche's ``LRSchedulerPlugin`` steps per iteration or epoch, never per
  inner update. Momentum, Adam's moments and bias-correction counts keep
  every update.

  Args:
    before: The optimizer state before the batch.
    after: The state after the strategy's updates.

  Returns:
    ``after`` with the schedules' step counts at ``before``'s plus one.
  """
  return _schedules_past(before, after, 1)


def hold_schedules(before: optax.OptState,
                   after: optax.OptState) -> optax.OptState:
  """``after`` with every schedule's step count back at ``before``'s.

  The inner updates of a strategy's own update hold the schedules, so that
  all of a batch's updates use the batch's learning rate (the rate of
  schedule step ``b`` for batch ``b``); :func:`one_schedule_step` then
  advances them once for the batch.

  Args:
    before: The optimizer state before an update.
    after: The state after it.

  Returns:
    ``after`` with the schedules' step counts at ``before``'s.
  """
  return _schedules_past(before, after, 0)


def _schedules_past(before: optax.OptState, after: optax.OptState,
                    steps: int) -> optax.OptState:
  def past(new, old):
    if not _is_schedule_state(new):
      return new
    new = new._replace(count=old.count + steps)
    if isinstance(new, optax.InjectStatefulHyperparamsState):
      # Its schedules' states are step counts (optax's wrapped plain
      # schedules), as restart_schedules assumes.
      new = new._replace(hyperparams_states=jax.tree.map(
          lambda count: count + steps, old.hyperparams_states))
    if isinstance(new, _INJECT_STATES):
      new = new._replace(inner_state=_map_nodes(
          past, new.inner_state, old.inner_state))
    return new
  return _map_nodes(past, after, before)


def reset_optimizer_state(optimizer: optax.GradientTransformation,
                          opt_state: optax.OptState,
                          params: optax.Params, *,
                          keep_schedules: bool = False) -> optax.OptState:
  """A fresh ``optimizer.init(params)`` that keeps injected hyperparameters.

  Avalanche's ``make_optimizer(reset_optimizer_state=True)`` (older
  releases' default between experiences). Hyperparameters injected with
  ``optax.inject_hyperparams`` are kept from ``opt_state``, so a learning
  rate swept over vmapped runs (:func:`jaxcl.sweep`) survives the reset.

  Args:
    optimizer: The optimizer whose state is reset.
    opt_state: Its current state.
    params: The parameters the new state is built for.
    keep_schedules: Also keep the schedules' step counts and
      ``reduce_on_plateau``'s state (momentum and Adam's moments still
      start over), as a strategy that builds a new
      optimizer for a new model keeps the learning rate where it was
      (Avalanche's ``make_optimizer``).

  Returns:
    The new optimizer state.
  """
  fresh = optimizer.init(params)

  def keep_hyperparams(new, old):
    if isinstance(new, _INJECT_STATES):
      return new._replace(hyperparams=old.hyperparams)
    return new

  def keep_counts(new, old):
    if isinstance(new, _PLATEAU_STATES):
      return old
    if not _is_schedule_state(new):
      return new
    new = new._replace(count=old.count)
    if isinstance(new, optax.InjectStatefulHyperparamsState):
      new = new._replace(hyperparams_states=old.hyperparams_states)
    if isinstance(new, _INJECT_STATES):
      new = new._replace(inner_state=_map_nodes(
          keep_counts, new.inner_state, old.inner_state))
    return new

  reset = _map_nodes(keep_hyperparams, fresh, opt_state)
  return _map_nodes(keep_counts, reset, opt_state) if keep_schedules else reset


def _map_nodes(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
  """Applies ``fn`` to the schedule/inject/plateau state nodes of ``tree``."""
  return jax.tree.map(fn, tree, *rest, is_leaf=_is_node)


def _multi_step(learning_rate: float, steps: int,
                fractions: Sequence[float], factor: float) -> optax.Schedule:
  """``learning_rate`` times ``factor`` after each fraction of ``steps``."""
  scales: dict[int, float] = {}
  for fraction in fractions:
    # Milestones that fall on one step (short schedules) multiply.
    boundary = int(steps * fraction)
    scales[boundary] = scales.get(boundary, 1.0) * factor
  return optax.piecewise_constant_schedule(learning_rate, scales)


SCHEDULES: dict[str, Callable[[float, int], optax.Schedule]] = {
    "constant": lambda lr, steps: optax.constant_schedule(lr),
    "cosine": lambda lr, steps: optax.cosine_decay_schedule(lr, steps),
    "linear": lambda lr, steps: optax.linear_schedule(lr, 0.0, steps),
    # Avalanche's examples use MultiStepLR at 50% and 75% of training.
    "step": lambda lr, steps: _multi_step(lr, steps, (0.5, 0.75), 0.1),
}


def schedule(name: str, learning_rate: float, steps: int) -> optax.Schedule:
  """A named learning-rate schedule over ``steps`` optimizer steps.

  Args:
    name: One of :data:`SCHEDULES`: ``constant``, ``cosine`` (to 0),
      ``linear`` (to 0) or ``step`` (×0.1 at 50 % and 75 % of ``steps``).
    learning_rate: The initial learning rate.
    steps: Length of the schedule, e.g. the steps of one experience when it
      restarts at every experience.

  Returns:
    An ``optax.Schedule``.
  """
  _validation.check_choice("lr schedule", name, SCHEDULES)
  return SCHEDULES[name](learning_rate, max(int(steps), 1))
