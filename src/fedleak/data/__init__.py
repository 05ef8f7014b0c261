"""Datasets: images in [0, 1] as C×H×W tensors, labels, class names and normalisation constants; and,
with the text extra installed (``tokenizers``), token-sequence datasets (:mod:`fedleak.data.text`)."""

from fedleak.data import cifar, folder, mnist, samples  # noqa: F401  (fill the registry)
from fedleak.data.base import ImageDataset
from fedleak.data.registry import DATASETS, load_dataset
from fedleak.data.select import pick_indices

try:  # optional: the text extra (tokenizers; Faker and datasets are imported by their loaders when used)
    from fedleak.data import text as _text  # noqa: F401  registers the text, pii and hf-disk datasets
except ImportError as exc:  # without the extra only the image datasets are registered; any other failure shows
    if exc.name != "tokenizers":
        raise

__all__ = ["DATASETS", "ImageDataset", "load_dataset", "pick_indices"]
