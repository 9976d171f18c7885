"""Evaluation: continual-learning metrics with Avalanche's definitions."""

from jaxcl.evaluation.cl_metrics import (experience_forgetting, forward_transfer,
                                         stream_accuracy, stream_bwt,
                                         stream_forgetting,
                                         stream_forward_transfer)

__all__ = [
    "experience_forgetting",
    "forward_transfer",
    "stream_accuracy",
    "stream_bwt",
    "stream_forgetting",
    "stream_forward_transfer",
]
