"""A run's server threat model applied to the run: the model its server sends and what its payload
records about that server.

The modifications themselves (and their spec strings) are :mod:`fedleak.fl.server`'s, below the run
config; this module reads a :class:`~fedleak.config.RunConfig`'s ``server`` and ``data`` sections,
so it sits in the composition layer, beside the config, where the pipeline and ``fedleak inspect``
call it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol, TypeVar

from torch import nn

from fedleak.config import RunConfig
from fedleak.data import ImageDataset
from fedleak.fl.payload import Payload
from fedleak.fl.server import HONEST, ServerContext, describe, parse_modification


class Sent(Protocol):
    """What the server sends and the clients' normalisation (the pipeline's ``Target`` dataclass)."""

    model: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]


T = TypeVar("T", bound=Sent)


def apply_server(config: RunConfig, target: T, dataset: ImageDataset, loader: Callable[..., ImageDataset]) -> T:
    """The model the run's server sends: ``target`` (a pipeline ``Target``: model, mean, std) as it is
    for an honest server, else with its model replaced by the modified one. ``dataset`` gives the
    public input shape and class count; ``loader`` loads the server's public images (a split of the
    run's dataset, with the run's data settings). The modification is built on the device of
    ``target.model``, the public images moved there."""
    s = config.server
    if s.threat == HONEST or not s.modification:
        return target
    d = config.data
    context = ServerContext(
        input_shape=dataset.image_shape, num_classes=dataset.num_classes,
        mean=tuple(target.mean), std=tuple(target.std), seed=config.seed,
        public=lambda split: loader(d.name, d.root, split=split, image_size=d.image_size, channels=d.channels,
                                    **d.options),
    )
    modified = parse_modification(s.modification).modify(target.model, context)
    return dataclasses.replace(target, model=modified)  # type: ignore[type-var]


def record_server(payload: Payload, config: RunConfig) -> Payload:
    """``payload`` with the server threat model in its public hyperparameters (the server knows what
    it sent)."""
    server = describe(config.server.threat, config.server.modification)
    return dataclasses.replace(payload, hyper=dataclasses.replace(payload.hyper, server=server))
