"""The training loop: state, jit-compiled experience training and evaluation, fit."""

from jaxcl._hosts import stop_all_hosts_on_error
from jaxcl.training.fit import MultiResult, Result, Run, fit, make_context, sweep
from jaxcl.training.loop import (EvalCounts, Loss, TrainMetrics,
                                 cross_entropy, init_state, make_evaluate,
                                 make_train_experience, make_train_step,
                                 mask_unseen, smoothed_cross_entropy)
from jaxcl.training.periodic import EarlyStopping, PeriodicEval
from jaxcl.training.state import (ExperienceData, TrainState, experience_data,
                                  stack_experiences)

__all__ = [
    "EarlyStopping",
    "PeriodicEval",
    "EvalCounts",
    "ExperienceData",
    "Loss",
    "MultiResult",
    "Result",
    "Run",
    "TrainMetrics",
    "TrainState",
    "cross_entropy",
    "experience_data",
    "fit",
    "sweep",
    "init_state",
    "make_evaluate",
    "make_train_experience",
    "make_context",
    "make_train_step",
    "mask_unseen",
    "smoothed_cross_entropy",
    "stack_experiences",
    "stop_all_hosts_on_error",
]
