"""Target models: a registry of architectures behind :func:`create_model`."""

from fedleak.models import convnet, lenet, mlp, resnet  # noqa: F401  (fill the registry)
from fedleak.models.registry import MODELS, create_model

__all__ = ["MODELS", "create_model"]
