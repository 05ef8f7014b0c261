"""Datasets: images in [0, 1] as C×H×W tensors, labels, class names and normalisation constants."""

from fedleak.data import cifar, folder, mnist, samples  # noqa: F401  (fill the registry)
from fedleak.data.base import ImageDataset
from fedleak.data.registry import DATASETS, load_dataset
from fedleak.data.select import pick_indices

__all__ = ["DATASETS", "ImageDataset", "load_dataset", "pick_indices"]
