"""Models for continual learning: Flax linen modules and the model adapter."""

from jaxcl.models.adapter import Model, as_model, stream_keys
from jaxcl.models.cnn import LeNet5, SimpleCNN, TorchConv
from jaxcl.models.dualnet import DualNet
from jaxcl.models.heads import (
                                MTMLP,
                                MLPFeatures,
                                MultiHead,
                                MultiHeadClassifier,
                                mt_simple_cnn,
                                mt_slim_resnet18,
)
from jaxcl.models.mlp import MLP, TorchLinear
from jaxcl.models.pnn import PNN, PNNColumn
from jaxcl.models.resnet import ResNet32, SlimResNet18

MODELS = {
    "mlp": MLP,
    "mt_mlp": MTMLP,
    "simple_cnn": SimpleCNN,
    "lenet5": LeNet5,
    "mt_simple_cnn": mt_simple_cnn,
    "slim_resnet18": SlimResNet18,
    "mt_slim_resnet18": mt_slim_resnet18,
    "pnn": PNN,
    "resnet32": ResNet32,
    "dualnet": DualNet,
}
"""Models by name (used by the CLI); construct with the keyword arguments each
accepts (``num_classes`` always, ``n_tasks`` for multi-head ``mt_*`` ones)."""

__all__ = [
                                "DualNet",
                                "LeNet5",
                                "MLP",
                                "MODELS",
                                "MTMLP",
                                "MLPFeatures",
                                "Model",
                                "MultiHead",
                                "MultiHeadClassifier",
                                "PNN",
                                "PNNColumn",
                                "ResNet32",
                                "SimpleCNN",
                                "SlimResNet18",
                                "TorchConv",
                                "TorchLinear",
                                "as_model",
                                "mt_simple_cnn",
                                "mt_slim_resnet18",
                                "stream_keys",
]
