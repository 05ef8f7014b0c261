"""Target models: a registry of architectures behind :func:`create_model`."""

from fedleak.models import (  # noqa: F401  (fill the registry)
    convnet,
    densenet,
    inception_resnet,
    lenet,
    lenet5,
    mlp,
    resnet,
    vgg,
)
from fedleak.models.registry import MODELS, create_model

__all__ = ["MODELS", "create_model"]
