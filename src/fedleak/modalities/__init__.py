"""The modalities a run can be in (:data:`MODALITIES`: image, and text with the ``text`` extra)."""

from fedleak.modalities.base import MODALITIES, Modality, Scored, Target, modality_of
from fedleak.modalities.image import IMAGE, build_target

try:  # optional: the text extra (tokenizers, transformers, rouge-score); without it text datasets don't load
    from fedleak.modalities import text as _text  # noqa: F401  (registers the text modality)
except ImportError:
    pass

__all__ = ["IMAGE", "MODALITIES", "Modality", "Scored", "Target", "build_target", "modality_of"]
