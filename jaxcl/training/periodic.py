"""Periodic evaluation and early stopping inside a compiled experience.

Avalanche's ``eval_every`` (periodic evaluation every N epochs or
iterations) and ``EarlyStoppingPlugin`` run as part of the jitted training
loop: the evaluation of the monitored stream is a ``lax.cond`` between
epochs (or steps), the best parameters are carried in the loop state, and
once the monitored metric has not improved for ``patience`` epochs (steps)
the remaining steps of the experience are skipped. Nothing leaves the
device until the experience is over, and the program still compiles once
per stream.

Example:
  >>> import jaxcl, optax
  >>> bench = jaxcl.benchmarks.with_validation(
  ...     jaxcl.benchmarks.split_mnist(n_experiences=5), 0.1)
  >>> result = jaxcl.fit(jaxcl.models.MLP(10), jaxcl.strategies.naive(),
  ...                    optax.sgd(0.05), bench, epochs=10,
  ...                    periodic_eval=PeriodicEval(every=1, stream="valid"),
  ...                    early_stopping=EarlyStopping(patience=2))
  >>> result.history[0]["epochs_trained"]  # doctest: +SKIP
  3.0

  ``Result.history`` has one row per evaluation of the test stream, its
  experience in ``row["experience"]``: with ``fit(eval_every=...)`` or on an
  online stream, row ``i`` is not experience ``i``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from jaxcl import _validation
from jaxcl.training import _runs
from jaxcl.training.state import ExperienceData, TrainState

__all__ = ["EarlyStopping", "PeriodicEval", "Watcher", "make_watcher"]

_UNITS = ("epoch", "step")
_STREAMS = ("valid", "test")
_METRICS = ("accuracy", "loss")
_MODES = ("max", "min")


class PeriodicEval(NamedTuple):
  """Evaluate a stream while an experience trains (Avalanche's ``eval_every``).

  Attributes:
    every: Evaluate after every ``every`` epochs (or steps) of each
      experience, plus once before its first step and once after its last
      if that one was not due.
    unit: ``"epoch"`` or ``"step"`` (Avalanche's ``peval_mode``
      ``"epoch"``/``"iteration"``).
    stream: ``"valid"`` (the benchmark's ``valid_stream``, see
      :func:`jaxcl.benchmarks.with_validation`) or ``"test"``.
  """

  every: int = 1
  unit: str = "epoch"
  stream: str = "valid"

  def validate(self, has_valid_stream: bool,
               implied_by_early_stopping: bool = False) -> PeriodicEval:
    """Checks the fields; raises ``ValueError`` naming the bad one.

    Returns:
      The settings with Python numbers (a checkpoint's fingerprint compares
      them; ``np.int64(2)`` and ``2`` are the same run).
    """
    every = _validation.check_positive_int("periodic_eval.every", self.every)
    _validation.check_choice("periodic_eval.unit", self.unit, _UNITS)
    _validation.check_choice("periodic_eval.stream", self.stream, _STREAMS)
    if self.stream == "valid" and not has_valid_stream:
      given = ("early_stopping monitors the valid stream by default "
               "(periodic_eval=None)," if implied_by_early_stopping
               else "periodic_eval.stream='valid'")
      raise ValueError(
          f"{given} but the benchmark has no valid_stream; build one with "
          "jaxcl.benchmarks.with_validation(benchmark, ...) or pass "
          "periodic_eval=PeriodicEval(stream='test').")
    return self._replace(every=int(every))


class EarlyStopping(NamedTuple):
  """Stop an experience when a metric stops improving (Avalanche's ``EarlyStoppingPlugin``).

  The monitored value is a metric of the periodic evaluation's stream, pooled
  over all of its experiences as Avalanche's ``Top1_Acc_Stream`` is. A value
  improves on the best so far when it moves in ``mode``'s direction by more
  than zero and by at least ``margin``. When ``patience`` epochs (or steps,
  the unit of :class:`PeriodicEval`) have passed since the best value, the
  rest of the experience is skipped. At the end of every experience the
  parameters (and model state) of the best evaluation are restored, as
  Avalanche loads its best checkpoint after training. Optimizer and strategy
  state are not rolled back (Avalanche neither).

  Attributes:
    patience: Epochs (steps) without improvement before stopping.
    metric: ``"accuracy"`` or ``"loss"`` of the monitored stream.
    mode: ``"max"`` or ``"min"``.
    margin: Minimum change that counts as an improvement.
  """

  patience: int
  metric: str = "accuracy"
  mode: str = "max"
  margin: float = 0.0

  def validate(self) -> EarlyStopping:
    """Checks the fields; raises ``ValueError`` naming the bad one.

    Returns:
      The settings with Python numbers, as :meth:`PeriodicEval.validate`.
    """
    patience = _validation.check_positive_int("early_stopping.patience",
                                              self.patience)
    _validation.check_choice("early_stopping.metric", self.metric, _METRICS)
    _validation.check_choice("early_stopping.mode", self.mode, _MODES)
    _validation.check_non_negative("early_stopping.margin", self.margin)
    return self._replace(patience=int(patience), margin=float(self.margin))


@flax.struct.dataclass
class Watch:
  """What the loop carries for periodic evaluation and early stopping.

  Attributes:
    stopped: The experience has stopped early.
    best: Best monitored value so far (in ``mode``'s sign: higher is better).
    best_at: Tick (epoch or step of the experience) of the best value.
    best_params: Parameters of the best evaluation.
    best_model_state: Model state of the best evaluation.
    evaluated: The state as it is now was evaluated (the last tick was due).
  """

  stopped: jax.Array
  best: jax.Array
  best_at: jax.Array
  best_params: Any
  best_model_state: Any
  evaluated: jax.Array


class Watcher(NamedTuple):
  """The pure functions :func:`make_watcher` builds (used by the train loop).

  Attributes:
    unit: ``"epoch"`` or ``"step"``.
    can_stop: Early stopping is on.
    start: ``start(state, eval_data) -> (watch, record)``: the evaluation
      before the experience's first step.
    check: ``check(state, watch, tick, eval_data, ran) -> (watch, record)``:
      evaluates if ``tick`` (epochs/steps done in this experience) is due and
      ``ran`` (the step just taken trained, a traced bool) holds.
    finish: ``finish(state, watch, eval_data) -> (state, record)``: the
      evaluation of the final state if its tick was not due, and, with early
      stopping, the best parameters restored.
    active: ``active(watch) -> bool``: training goes on.
  """

  unit: str
  can_stop: bool
  start: Callable[[TrainState, ExperienceData], tuple[Watch, dict]]
  check: Callable[..., tuple[Watch, dict]]
  finish: Callable[[TrainState, Watch, ExperienceData],
                   tuple[TrainState, dict]]
  active: Callable[[Watch], jax.Array]


def make_watcher(periodic: PeriodicEval,
                 early_stopping: EarlyStopping | None,
                 evaluate: Callable[[TrainState, ExperienceData], Any],
                 run_axis: str | None = None) -> Watcher:
  """Builds the in-loop periodic evaluation (and early stopping).

  Args:
    periodic: When to evaluate.
    early_stopping: Optional stopping rule on the evaluated metric.
    evaluate: ``evaluate(state, stream) -> EvalCounts`` (from
      :func:`jaxcl.training.loop.make_evaluate`).
    run_axis: The ``vmap`` axis name of runs trained together (as
      :func:`jaxcl.training.loop.make_train_experience` takes it): an
      evaluation then runs when any run's is due (only those runs keep it),
      instead of at every tick for all runs.

  Returns:
    A :class:`Watcher`. Each ``record`` holds the evaluation's per-experience
    ``correct``, ``count`` and ``loss_sum`` (zeros when none was due, so the
    host keeps the points with a nonzero count) and the optimizer ``step``.
  """
  sign = 1.0 if early_stopping is None or early_stopping.mode == "max" else -1.0
  _runs.check_run_axis(run_axis)

  def measure(state, eval_data):
    counts = evaluate(state, eval_data)
    total = jnp.maximum(jnp.sum(counts.count), 1)
    record = {"correct": counts.correct, "count": counts.count,
              "loss_sum": counts.loss_sum, "step": state.step}
    if early_stopping is None:
      return record, jnp.zeros(())
    value = (jnp.sum(counts.correct) if early_stopping.metric == "accuracy"
             else jnp.sum(counts.loss_sum)) / total
    return record, sign * value

  def start(state, eval_data):
    record, value = measure(state, eval_data)
    watch = Watch(stopped=jnp.zeros((), bool), best=value,
                  best_at=jnp.zeros((), jnp.int32),
                  best_params=state.params if early_stopping else None,
                  best_model_state=state.model_state if early_stopping else None,
                  evaluated=jnp.ones((), bool))
    return watch, record

  def update(state, watch, tick, value):
    delta = value - watch.best
    # A gain of exactly `margin` counts; the float32 values' rounding (6/50 −
    # 5/50 = 0.019999996) must not turn it away.
    rounding = 1e-6 * jnp.maximum(jnp.abs(value), jnp.abs(watch.best))
    improved = (delta > 0) & (delta >= early_stopping.margin - rounding)
    pick = lambda new, old: jax.tree.map(
        lambda a, b: jnp.where(improved, a, b), new, old)
    return watch.replace(
        best=jnp.where(improved, value, watch.best),
        best_at=jnp.where(improved, tick, watch.best_at),
        best_params=pick(state.params, watch.best_params),
        best_model_state=pick(state.model_state, watch.best_model_state))

  def evaluate_if(due, state, watch, tick, eval_data):
    """``(watch, record)``: ``state`` evaluated at ``tick`` if ``due``."""
    def evaluate_now(watch):
      record, value = measure(state, eval_data)
      if early_stopping is not None:
        watch = update(state, watch, tick, value)
      return watch, record

    def skip(watch):
      # Zero counts: the host drops the record.
      return watch, jax.tree.map(
          jnp.zeros_like, jax.eval_shape(measure, state, eval_data)[0])

    return _runs.cond(due, evaluate_now, skip, watch, run_axis=run_axis)

  def check(state, watch, tick, eval_data, ran):
    # After a stop the ticks still come but train nothing: the state, and
    # whether it was evaluated, stay those of the tick that stopped.
    trained = jnp.asarray(ran, bool) & ~watch.stopped
    due = trained & (tick % periodic.every == 0)
    watch, record = evaluate_if(due, state, watch, tick, eval_data)
    watch = watch.replace(evaluated=due | (watch.evaluated & ~trained))
    if early_stopping is not None:
      # Checked at every tick, as Avalanche does before every epoch (step),
      # not only at the evaluations: the stop does not wait for the next one.
      watch = watch.replace(stopped=watch.stopped | (
          trained & (tick - watch.best_at >= early_stopping.patience)))
    return watch, record

  def finish(state, watch, eval_data):
    # The state training ended with is evaluated unless its tick was due, as
    # Avalanche evaluates at the end of an experience; with early stopping it
    # competes for the best. A stop freezes the state at the tick that set
    # it, so a stop at a tick that was not due (the experience's last one,
    # say) leaves that state to be evaluated here too.
    watch, record = evaluate_if(~watch.evaluated, state, watch,
                                watch.best_at, eval_data)
    if early_stopping is not None:
      state = state.replace(params=watch.best_params,
                            model_state=watch.best_model_state)
    return state, record

  def active(watch):
    return ~watch.stopped

  return Watcher(periodic.unit, early_stopping is not None, start, check,
                 finish, active)
