"""Target models: a registry of architectures behind :func:`create_model`."""

from fedleak.models import (  # noqa: F401  (fill the registry)
    convnet,
    densenet,
    inception_resnet,
    lenet,
    lenet5,
    mlp,
    resnet,
    text,  # GPT-2/BERT wrappers: transformers and peft (the text extra) are imported only when one is built
    vgg,
    vit,
)
from fedleak.models.cards import ModelCard
from fedleak.models.catalogue import card_of
from fedleak.models.registry import CARDS, MODELS, create_model, register_model

__all__ = ["CARDS", "MODELS", "ModelCard", "card_of", "create_model", "register_model"]
