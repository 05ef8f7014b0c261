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
    vit,
)
from fedleak.models.cards import ModelCard
from fedleak.models.catalogue import card_of
from fedleak.models.registry import CARDS, MODELS, create_model, register_model

__all__ = ["CARDS", "MODELS", "ModelCard", "card_of", "create_model", "register_model"]
