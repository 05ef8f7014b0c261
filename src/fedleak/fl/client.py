"""The simulated FL client: private batch in, :class:`Payload` out."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from fedleak.errors import ConfigError, DataError
from fedleak.fl.payload import ClientData, Payload, PublicHyperparameters
from fedleak.fl.protocols import PROTOCOLS
from fedleak.models.batchnorm import batch_norm_layers, batch_statistics

MODEL_MODES = ("eval", "train")
UPDATE_SCALES = ("delta", "delta/lr")


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """[0, 1] images → the model's input space, channel-wise ``(x - mean) / std``."""
    m = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - m) / s


class Client:
    """Holds the global model the server sent and computes its update with ``protocol``.

    ``mean``/``std`` are the normalisation the client applies before the model; ``model_mode`` puts
    batch-norm layers in eval (running statistics) or train (batch statistics) mode.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        protocol: str = "fedsgd",
        model_mode: str = "eval",
        lr: float | None = None,
        local_steps: int = 1,
        local_batch_size: int | None = None,
        shuffle_seed: int | None = None,
        update_scale: str = "delta",
    ) -> None:
        if model_mode not in MODEL_MODES:
            raise ConfigError(f"model mode must be one of {', '.join(MODEL_MODES)}, got {model_mode!r}")
        if update_scale not in UPDATE_SCALES:
            raise ConfigError(f"update scale must be one of {', '.join(UPDATE_SCALES)}, got {update_scale!r}")
        if protocol == "fedavg" and (lr is None or lr <= 0):
            raise ConfigError("fedavg needs a positive local learning rate (client.lr)")
        if local_steps < 1 or (local_batch_size is not None and local_batch_size < 1):
            raise ConfigError("local steps and local batch size must be at least 1")
        self.protocol = PROTOCOLS.get(protocol)
        self.protocol_name = protocol
        self.model = model
        self.mean, self.std = tuple(mean), tuple(std)
        self.model_mode = model_mode
        self.training = dict(lr=lr, local_steps=local_steps, local_batch_size=local_batch_size,
                             shuffle_seed=shuffle_seed, update_scale=update_scale)

    def update(self, data: ClientData) -> Payload:
        """Run one round on ``data`` and return what the server will see."""
        if data.images.ndim != 4 or data.images.shape[1] != len(self.mean):
            raise DataError(
                f"client images must be B×{len(self.mean)}×H×W, got {tuple(data.images.shape)}"
            )
        if data.labels.shape != (data.images.shape[0],):
            raise DataError("client labels must hold one class index per image")
        hyper = PublicHyperparameters(
            protocol=self.protocol_name,
            batch_size=int(data.images.shape[0]),
            model_mode=self.model_mode,
            **self.training,
        )
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        # Work on a copy: the protocol may touch buffers (BN running stats) of the global model.
        local = copy.deepcopy(self.model)
        local.train(self.model_mode == "train")
        update = self.protocol(local, normalize(data.images, self.mean, self.std), data.labels, hyper)
        return Payload(model_state=state, update=update, hyper=hyper)

    def batch_norm_statistics(self, data: ClientData) -> list[tuple[Tensor, Tensor]]:
        """Per-channel mean and variance of the client batch at each batch-norm layer's input.

        Private: a run hands these to the attacker only when it declares that knowledge."""
        local = copy.deepcopy(self.model).train(self.model_mode == "train")
        stats: list[tuple[Tensor, Tensor]] = []
        hooks = [m.register_forward_hook(lambda mod, args, out: stats.append(batch_statistics(args[0].detach())))
                 for m in batch_norm_layers(local)]
        with torch.no_grad():
            local(normalize(data.images, self.mean, self.std))
        for h in hooks:
            h.remove()
        return stats
