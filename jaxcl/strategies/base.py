"""The strategy protocol: optax-like NamedTuples of pure functions, and ``chain``.

A :class:`Strategy` has one slot per moment of the training loop. Every slot
has a no-op default, so a strategy only fills the slots it needs, and
``chain(a, b, ...)`` composes strategies the way ``optax.chain`` composes
gradient transformations: the strategy state is a tuple with one entry per
strategy, batch and gradient transforms apply in order, penalties add up.

Every hook receives a static :class:`StrategyContext` first (the model, the
on-device preprocessing, the task loss and the stream's sizes), so hooks that
must run the model can do so. Hooks that run on the device are traced once per
stream: they must keep shapes fixed (pre-allocate state at full size in
``init``).

Slots (``ctx`` is the context, ``state`` a :class:`jaxcl.training.TrainState`
whose ``cl_state`` is this strategy's own state):

| slot | signature |
|---|---|
| ``init`` | ``(ctx, params, key) -> cl_state`` |
| ``adapt_data`` | ``(experience, stream, seed) -> experience`` (host side) |
| ``begin_experience`` | ``(ctx, state, data, key) -> state`` |
| ``transform_batch`` | ``(ctx, cl_state, batch, key) -> batch`` |
| ``penalty`` | ``(ctx, params, cl_state, batch, logits) -> scalar`` |
| ``transform_grads`` | ``(ctx, grads, state, batch, key) -> grads`` |
| ``after_step`` | ``(ctx, old_state, new_state, grads, batch, key) -> cl_state`` |
| ``end_experience`` | ``(ctx, state, data, key) -> state`` |
| ``predict`` | ``(ctx, params, model_state, cl_state, x, task) -> logits`` |
| ``update`` | ``(ctx, cl_state, state, batch, key, ops) -> (state, cl_state)`` |

A ``batch`` is a dict with at least ``x`` (raw inputs), ``y``, ``task`` and
``weight`` (1 for real samples, 0 for padding); the training loops also give
``index``, each row's position in the experience (padding rows repeat a
position and weigh 0). Strategies may add keys (the task loss honours an
optional ``class_mask`` of shape ``[batch, n_classes]``).
With a benchmark augmentation, ``penalty`` gets the batch with ``x``
augmented as the model sees it (a teacher's logits on the same crops);
``transform_grads`` and ``after_step`` get it as drawn (what memories store).
``data`` is a :class:`jaxcl.training.ExperienceData`: the experience padded to
the stream's largest size, on the device. ``adapt_data`` is the one host-side
slot: ``fit`` calls it for every experience before compiling (with the whole
train stream and the run's seed), so that the padded size is known; it serves
strategies that change what is trained on (cumulative, joint, GDumb).

``update`` (None by default) replaces the loop's optimizer step with the
strategy's own, for meta-learning strategies (MER, LaMAML) that take inner
steps per mini-batch. ``ops`` is an :class:`UpdateOps` (the loop's training
loss, one plain optimizer step and the optimizer's update for given
gradients); it
returns the new state, whose ``cl_state`` it leaves as given, and its own
new ``cl_state``. The loop counts the whole ``update`` as one step and
measures it by the training loss of the batch under the updated
parameters, a forward pass in training mode whose batch statistics the
state keeps. ``after_step`` gets no gradient to see there, so a strategy
that fills ``update`` leaves ``after_step`` empty, and ``chain`` refuses to
add strategies with per-step hooks to it.

Example:
  >>> import jax.numpy as jnp
  >>> import jax
  >>> def l2(ctx, params, cl_state, batch, logits):
  ...   return 1e-4 * sum(jnp.sum(p ** 2) for p in jax.tree.leaves(params))
  >>> weight_decay = Strategy(name="l2", penalty=l2)
  >>> strategy = chain(naive(), weight_decay)
  >>> strategy.name
  'naive+l2'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcl.models.adapter import batch_stats_rows

__all__ = [
    "Strategy",
    "StrategyContext",
    "UpdateOps",
    "chain",
    "check_update_hooks",
    "naive",
]

PyTree = Any


class StrategyContext(NamedTuple):
  """Static facts and functions that strategy hooks may use.

  Attributes:
    model: The :class:`jaxcl.models.Model` being trained.
    preprocess: On-device preprocessing of raw inputs.
    loss: ``(logits, batch) -> [batch]`` per-sample task loss (cross-entropy
      honouring ``batch["class_mask"]`` if present).
    n_classes: Width of the classifier.
    n_experiences: Length of the training stream.
    input_shape: Shape of one raw input sample.
    batch_size: Training mini-batch size (of current-experience samples).
    experience_size: Padded size of every training experience on the device.
    x_dtype: Dtype of the raw inputs (buffers store raw inputs).
    optimizer: The optax optimizer (to re-initialise its state).
    augment: The benchmark's training augmentation ``(x, key) -> x`` or None.
    task_classes: ``bool[n_tasks, n_classes]`` classes of each task when the
      stream has several tasks (predictions are restricted to the sample's
      task), else None.
    batch_sharding: With data parallelism, the ``jax.sharding.Sharding`` that
      splits a batch's leading axis over the devices; else None.
    mask_classes: Whether the loop masks never-seen classes (strategies that
      run the model on their own should do the same).
  """

  model: Any
  preprocess: Callable[[jax.Array], jax.Array]
  loss: Callable[[jax.Array, dict], jax.Array]
  n_classes: int
  n_experiences: int
  input_shape: tuple[int, ...]
  batch_size: int
  experience_size: int
  x_dtype: Any = jnp.float32
  optimizer: Any = None
  augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None
  task_classes: Any = None
  batch_sharding: Any = None
  mask_classes: bool = True

  def logits(self, params: PyTree, model_state: PyTree, x: jax.Array,
             task: jax.Array, train: bool = False,
             key: jax.Array | None = None,
             weight: jax.Array | None = None) -> jax.Array:
    """Runs the model on raw inputs (preprocessed here); returns the logits.

    In training mode, batch statistics cover the rows of positive
    ``weight`` (padding and empty memory slots left out, as in the loop's
    step; all rows when ``weight`` is None).
    """
    rows = batch_stats_rows(self.model.apply,
                            None if weight is None or not train
                            else weight > 0)
    out, _ = self.model.apply(params, model_state, self.preprocess(x), task,
                              train, key, **rows)
    return out


class UpdateOps(NamedTuple):
  """What the loop hands a strategy's own ``update``.

  Attributes:
    loss: ``loss(params, state, batch, key) -> scalar``: the training loss
      of ``batch`` under ``params`` (the task loss over the weighted rows,
      with the training mode's class masking, plus every ``penalty`` of the
      chain), differentiable in ``params``.
    step: ``step(state, batch, key) -> state``: one optimizer step on
      ``batch``: the gradient of ``loss``, ``transform_grads``, the optax
      update; not counted and without ``after_step``.
    apply: ``apply(state, grads) -> state``: the optax update with the
      given gradients (parameters and optimizer state). ``step`` and
      ``apply`` hold learning-rate schedules at the batch's step; the loop
      advances them once after ``update``, however many updates it made.
    augment: ``augment(x, key) -> x``: the benchmark's training
      augmentation (the identity without one). The loop augments the
      batch once before ``update``, and ``loss`` and ``step`` do not
      augment, so the inner steps see the same inputs; rows the strategy
      draws itself (a memory) are its to augment.
  """

  loss: Callable
  step: Callable
  apply: Callable
  augment: Callable


def _init_empty(ctx, params, key):
  del ctx, params, key
  return ()


def _keep_experience(experience, stream, seed):
  del stream, seed
  return experience


def _keep_state(ctx, state, data, key):
  del ctx, data, key
  return state


def _keep_batch(ctx, cl_state, batch, key):
  del ctx, cl_state, key
  return batch


def _no_penalty(ctx, params, cl_state, batch, logits):
  del ctx, params, cl_state, batch, logits
  return jnp.zeros((), jnp.float32)


def _keep_grads(ctx, grads, state, batch, key):
  del ctx, state, batch, key
  return grads


def _keep_cl_state(ctx, old_state, new_state, grads, batch, key):
  del ctx, old_state, grads, batch, key
  return new_state.cl_state


class Strategy(NamedTuple):
  """A continual-learning strategy as a NamedTuple of pure functions.

  Every slot defaults to a no-op; see the module docstring for signatures.
  ``predict`` is None unless the strategy replaces the prediction rule, and
  ``update`` unless it replaces the optimizer step.
  ``drops_current_rows`` says that ``transform_batch`` may weigh every
  current row 0 (BiC's held-out samples): the loop then checks every step
  for a sample to train on, after the transform, and skips the update
  (optimizer state included) without one. ``members`` are the strategies a
  :func:`chain` composed (empty otherwise): what its hooks are made of.
  ``trains_with_optimizer`` is False for a strategy whose parameters the
  optimizer never moves (StreamingLDA zeroes every gradient; La-MAML
  without ``sync_update`` steps by its own rates): the command line then
  refuses optimizer flags, which would change nothing.
  """

  name: str = "naive"
  init: Callable = _init_empty
  adapt_data: Callable = _keep_experience
  begin_experience: Callable = _keep_state
  transform_batch: Callable = _keep_batch
  penalty: Callable = _no_penalty
  transform_grads: Callable = _keep_grads
  after_step: Callable = _keep_cl_state
  end_experience: Callable = _keep_state
  predict: Callable | None = None
  drops_current_rows: bool = False
  update: Callable | None = None
  members: tuple[Strategy, ...] = ()
  trains_with_optimizer: bool = True


def naive() -> Strategy:
  """Plain fine-tuning: train on each experience in turn, nothing else.

  Example:
    >>> naive().name
    'naive'
  """
  return Strategy(name="naive")


def _exclusive_slot(strategies: Sequence[Strategy], slot: str,
                    default: Any) -> Strategy | None:
  owners = [s for s in strategies if getattr(s, slot) is not default]
  if len(owners) > 1:
    raise ValueError(
        f"chain: strategies {[s.name for s in owners]} all replace "
        f"`{slot}`; at most one strategy in a chain may do so.")
  return owners[0] if owners else None


_PER_STEP = {"transform_batch": _keep_batch, "transform_grads": _keep_grads,
             "after_step": _keep_cl_state}


def check_update_hooks(strategy: Strategy) -> None:
  """Refuses a strategy that replaces the optimizer step (``update``) but
  also fills ``after_step``, which that step would never call."""
  if strategy.update is not None and strategy.after_step is not _keep_cl_state:
    raise ValueError(
        f"strategy {strategy.name!r} replaces the optimizer step (update) "
        "and fills after_step, which gets no gradient there; expected one "
        "of the two.")


def _check_update_company(strategies: Sequence[Strategy],
                          owner: Strategy) -> None:
  """Refuses per-step hooks beside a strategy that replaces the step: its
  inner steps would run them on its own batches, or not at all."""
  check_update_hooks(owner)
  for s in strategies:
    hooks = [slot for slot, default in _PER_STEP.items()
             if s is not owner and getattr(s, slot) is not default]
    if hooks:
      raise ValueError(
          f"chain: {owner.name!r} replaces the optimizer step (update), and "
          f"{s.name!r} has per-step hooks ({', '.join(hooks)}); expected "
          "only strategies that add a penalty or act between experiences "
          "beside it (EWC, MAS, ...).")


def chain(*strategies: Strategy) -> Strategy:
  """Composes strategies into one, as ``optax.chain`` composes transforms.

  The combined state is a tuple of the strategies' states. Batch and gradient
  transforms and the experience hooks apply in order, penalties add up. At most
  one strategy may replace the training data (``adapt_data``), at most one
  the prediction rule (``predict``) and at most one the optimizer step
  (``update``), which then takes only strategies without per-step hooks
  (``transform_batch``, ``transform_grads``, ``after_step``) beside it;
  otherwise a ``ValueError`` is raised.

  Args:
    *strategies: The strategies to combine, in order.

  Returns:
    A :class:`Strategy` named ``"a+b+..."``.

  Example:
    >>> chain(naive(), naive()).name
    'naive+naive'
  """
  if not strategies:
    raise ValueError("chain needs at least one strategy, got none.")
  for i, s in enumerate(strategies):
    if not isinstance(s, Strategy):
      raise TypeError(f"chain argument {i} must be a jaxcl Strategy, got "
                      f"{type(s).__name__}.")
  data_owner = _exclusive_slot(strategies, "adapt_data", _keep_experience)
  predict_owner = _exclusive_slot(strategies, "predict", None)
  update_owner = _exclusive_slot(strategies, "update", None)
  if update_owner is not None:
    _check_update_company(strategies, update_owner)
  indexed = tuple(enumerate(strategies))

  def view(state, i):
    return state.replace(cl_state=state.cl_state[i])

  def merged(state, i, new):
    """``new`` (a view of strategy i) with the full tuple of states."""
    states = list(state.cl_state)
    states[i] = new.cl_state
    return new.replace(cl_state=tuple(states))

  def init(ctx, params, key):
    keys = jax.random.split(key, len(strategies))
    return tuple(s.init(ctx, params, k) for (_, s), k in zip(indexed, keys))

  def adapt_data(experience, stream, seed):
    return data_owner.adapt_data(experience, stream, seed)

  def state_hook(slot):
    def hook(ctx, state, data, key):
      keys = jax.random.split(key, len(strategies))
      for (i, s), k in zip(indexed, keys):
        state = merged(state, i, getattr(s, slot)(ctx, view(state, i), data, k))
      return state
    return hook

  def transform_batch(ctx, cl_state, batch, key):
    keys = jax.random.split(key, len(strategies))
    for (i, s), k in zip(indexed, keys):
      batch = s.transform_batch(ctx, cl_state[i], batch, k)
    return batch

  def penalty(ctx, params, cl_state, batch, logits):
    return sum(s.penalty(ctx, params, cl_state[i], batch, logits)
               for i, s in indexed)

  def transform_grads(ctx, grads, state, batch, key):
    keys = jax.random.split(key, len(strategies))
    for (i, s), k in zip(indexed, keys):
      grads = s.transform_grads(ctx, grads, view(state, i), batch, k)
    return grads

  def after_step(ctx, old_state, new_state, grads, batch, key):
    keys = jax.random.split(key, len(strategies))
    return tuple(
        s.after_step(ctx, view(old_state, i), view(new_state, i), grads, batch, k)
        for (i, s), k in zip(indexed, keys))

  def predict(ctx, params, model_state, cl_state, x, task):
    i = strategies.index(predict_owner)
    return predict_owner.predict(ctx, params, model_state, cl_state[i], x, task)

  def update(ctx, cl_state, state, batch, key, ops):
    i = strategies.index(update_owner)
    state, own = update_owner.update(ctx, cl_state[i], state, batch, key, ops)
    return state, cl_state[:i] + (own,) + cl_state[i + 1:]

  def filled(slot, hook, default):
    """``hook`` if a strategy fills ``slot``, else the default: a chain of
    strategies without per-step hooks has none either (so that it may be
    chained beside an ``update`` owner)."""
    return hook if any(getattr(s, slot) is not default
                       for s in strategies) else default

  return Strategy(
      name="+".join(s.name for s in strategies),
      init=init,
      adapt_data=adapt_data if data_owner else _keep_experience,
      begin_experience=filled("begin_experience",
                              state_hook("begin_experience"), _keep_state),
      transform_batch=filled("transform_batch", transform_batch, _keep_batch),
      penalty=filled("penalty", penalty, _no_penalty),
      transform_grads=filled("transform_grads", transform_grads, _keep_grads),
      after_step=filled("after_step", after_step, _keep_cl_state),
      end_experience=filled("end_experience", state_hook("end_experience"),
                            _keep_state),
      predict=predict if predict_owner else None,
      drops_current_rows=any(s.drops_current_rows for s in strategies),
      update=update if update_owner else None,
      members=tuple(strategies),
      # Zeroed gradients, or an update that skips the optimizer, hold for
      # the whole chain.
      trains_with_optimizer=all(s.trains_with_optimizer for s in strategies),
  )
