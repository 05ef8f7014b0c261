"""The image modality: a batch of [0, 1] images, a zoo (or the user's own) classifier with its
normalisation, batch-norm statistics where declared known, PSNR/SSIM/LPIPS after matching."""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fedleak.attacks import AttackerKnowledge, Reconstruction
from fedleak.config import RunConfig
from fedleak.data import ImageDataset
from fedleak.errors import ConfigError
from fedleak.fl import Client, ClientData
from fedleak.images import image_grid, png_bytes
from fedleak.metrics import Evaluation, evaluate, lpips_scorers
from fedleak.metrics.baselines import no_leak_baselines
from fedleak.metrics.semantic import SemanticScorer, load_semantic
from fedleak.modalities.base import MODALITIES, Modality, Target, check_model_takes
from fedleak.models import create_model
from fedleak.models.checkpoint import CheckpointInfo, load_into
from fedleak.models.external import check_attackable, is_external
from fedleak.models.normalization import Evidence, resolve_normalization


def build_target(config: RunConfig, dataset: ImageDataset, info: CheckpointInfo | None = None,
                 model: nn.Module | None = None) -> Target:
    """The global model: a given module, or the configured architecture (sized for the dataset's real
    height and width), with checkpoint weights; and its normalisation, from the first source that has
    one: the fedleak checkpoint's > ``model.mean``/``model.std`` > a bring-your-own module's declared
    values > the model card's when a torchvision/timm state dict was loaded > the dataset's
    (:func:`fedleak.models.normalization.resolve_normalization`)."""
    c, h, w = dataset.image_shape
    if info is not None and info.num_classes != dataset.num_classes:
        raise ConfigError(
            f"the checkpoint's model has {info.num_classes} classes, dataset {dataset.name} has {dataset.num_classes}"
        )
    if model is not None:
        target = copy.deepcopy(model)
    else:
        check_model_takes(config.model.name, "image", dataset.name)
        seed = config.model.seed if config.model.seed is not None else config.seed
        target = create_model(config.model.name, dataset.num_classes, c, (h, w), width=config.model.width,
                              seed=seed, **config.model.options)
    layout = load_into(target, config.model.checkpoint, config.model.name) if config.model.checkpoint else ""
    own = model is not None or is_external(config.model.name)  # a bring-your-own module
    if own or (config.model.checkpoint and info is None):
        check_attackable(target, dataset.image_shape, dataset.num_classes)
    m = config.model
    norm = resolve_normalization(Evidence(
        channels=c, dataset=(dataset.mean, dataset.std),
        checkpoint=(info.mean, info.std) if info is not None else None,
        configured=(m.mean, m.std) if m.mean is not None and m.std is not None else None,
        module=target if own else None, card_name=m.name if layout and not own else None))
    return Target(target, norm.mean, norm.std, norm.source)


def image_batch(dataset: ImageDataset, indices: Sequence[int], target: Target, device: torch.device) -> ClientData:
    """The images at ``indices`` and their labels, on ``device``."""
    return ClientData(dataset.images(indices).to(device), dataset.label_of(indices).to(device), tuple(indices))


def image_knowledge(config: RunConfig, target: Target, dataset: ImageDataset, truth: ClientData,
                    client: Client) -> AttackerKnowledge:
    """The architecture, input shape, classes and normalisation; the labels and the batch-norm
    statistics of the batch only where the run declares them known."""
    return AttackerKnowledge(
        architecture=copy.deepcopy(target.model),
        input_shape=dataset.image_shape,
        num_classes=dataset.num_classes,
        mean=target.mean,
        std=target.std,
        labels=truth.labels.clone() if config.knowledge.labels else None,
        bn_stats=client.batch_norm_statistics(truth) if config.knowledge.bn_stats else None,
    )


def image_evaluate(config: RunConfig, reconstruction: Reconstruction, truth: ClientData,
                   dataset: ImageDataset) -> tuple[Evaluation, list[str]]:
    """PSNR, SSIM (and ROG's), the configured LPIPS backbones and, with ``metrics.semantic``, the
    semantic overlap after Hungarian matching (:func:`fedleak.metrics.evaluate`), and hints on LPIPS
    weights that are missing."""
    scorers, hints = lpips_scorers(config.metrics.lpips, config.metrics.lpips_weights)
    semantic = None
    if config.metrics.semantic:
        semantic = _semantic(config.metrics.semantic, dataset.num_classes, dataset.image_shape[0],
                             config.metrics.semantic_k)
        semantic.model.to(reconstruction.images.device)
    return evaluate(reconstruction, truth, scorers, semantic), hints


@functools.lru_cache(maxsize=4)
def _semantic(path: str, num_classes: int, channels: int, k: int) -> SemanticScorer:
    return load_semantic(path, num_classes, channels, k)  # once per process: a study scores many runs with it


def image_baselines(truth: ClientData, dataset: ImageDataset) -> dict[str, Any]:
    """The mean-colour and other-image guesses (:func:`fedleak.metrics.baselines.no_leak_baselines`)."""
    return no_leak_baselines(truth.images, dataset, truth.indices)


def image_files(truth: ClientData, reconstruction: Reconstruction, evaluation: Evaluation) -> dict[str, bytes]:
    """Each original and its matched reconstruction as PNG bytes: ``original-<i>.png``, …"""
    matched = reconstruction.images[evaluation.order]
    return {f"{kind}-{i}.png": png_bytes(image_grid([image[None]], pad=0))
            for i in range(len(matched))
            for kind, image in (("original", truth.images[i]), ("reconstruction", matched[i]))}


IMAGE = MODALITIES.register("image")(Modality("image", build_target, image_batch, image_knowledge, image_evaluate,
                                              image_baselines, image_files))
