"""Models for continual learning: Flax linen modules and the model adapter."""

from jaxcl.models.adapter import Model, as_model, stream_keys
from jaxcl.models.cnn import LeNet5, SimpleCNN, TorchConv
from jaxcl.models.cosine import CosineClassifier, CosineLinear
from jaxcl.models.dualnet import DualNet
from jaxcl.models.heads import (
                                MTMLP,
                                MLPFeatures,
                                MultiHead,
                                MultiHeadClassifier,
                                mt_sequence_classifier,
                                mt_simple_cnn,
                                mt_slim_resnet18,
)
from jaxcl.models.mlp import MLP, TorchLinear
from jaxcl.models.pnn import PNN, PNNColumn
from jaxcl.models.resnet import ResNet32, SlimResNet18
from jaxcl.models.rnn import LSTM, SequenceClassifier

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
    "sequence_classifier": SequenceClassifier,
    "mt_sequence_classifier": mt_sequence_classifier,
}
"""Models by name (used by the CLI); construct with the keyword arguments each
accepts (``num_classes`` always, ``n_tasks`` for multi-head ``mt_*`` ones)."""

BACKBONES = ("mlp", "simple_cnn", "lenet5", "slim_resnet18", "resnet32",
             "sequence_classifier")
"""The models of :data:`MODELS` that ``num_classes=None`` turns into feature
extractors (their output layer's inputs, flattened), for
:class:`MultiHead` or :class:`CosineClassifier` (CLI ``--head cosine``)."""

__all__ = [
                                "BACKBONES",
                                "CosineClassifier",
                                "CosineLinear",
                                "DualNet",
                                "LSTM",
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
                                "SequenceClassifier",
                                "SimpleCNN",
                                "SlimResNet18",
                                "TorchConv",
                                "TorchLinear",
                                "as_model",
                                "mt_sequence_classifier",
                                "mt_simple_cnn",
                                "mt_slim_resnet18",
                                "stream_keys",
]
