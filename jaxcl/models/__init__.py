"""Models for continual learning: Flax linen modules and the model adapter."""

from jaxcl.models.adapter import Model, as_model
from jaxcl.models.mlp import MLP, TorchLinear

MODELS = {"mlp": MLP}
"""Models by name (used by the CLI)."""

__all__ = ["MLP", "MODELS", "Model", "TorchLinear", "as_model"]
