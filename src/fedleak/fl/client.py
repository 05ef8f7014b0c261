"""The simulated FL client: private batch in, :class:`Payload` out."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from fedleak.device import matmul_precision
from fedleak.defenses import batch_gradient, parse_defense
from fedleak.errors import ConfigError, DataError
from fedleak.fl.aggregation import aggregate_buffers
from fedleak.fl.payload import ClientData, Payload, PublicHyperparameters
from fedleak.fl.protocols import PROTOCOLS
from fedleak.models.batchnorm import batch_norm_layers, batch_statistics

MODEL_MODES = ("eval", "train")
UPDATE_SCALES = ("delta", "delta/lr")


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """[0, 1] images → the model's input space, channel-wise ``(x - mean) / std``."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


class Client:
    """Holds the global model the server sent and computes its update with ``protocol``.

    ``mean``/``std`` are the normalisation the client applies before the model; ``model_mode`` puts
    batch-norm layers in eval (running statistics) or train (batch statistics) mode.
    ``defense_seed`` is the client's private seed: it seeds its defense noise and any other random
    draw of its round, and must not be derivable from anything the attacker is given.
    FedAvg trains with ``torch.optim.SGD`` (``lr``, ``momentum``, ``weight_decay``); ``epochs``, when
    set, makes the round that many passes over the batch (``local_steps`` = epochs × the number of
    minibatches), as a PyTorch client's epoch loop over a data loader does.
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
        defense: str | None = None,
        defense_seed: int = 0,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        epochs: int | None = None,
    ) -> None:
        if model_mode not in MODEL_MODES:
            raise ConfigError(f"model mode must be one of {', '.join(MODEL_MODES)}, got {model_mode!r}")
        if update_scale not in UPDATE_SCALES:
            raise ConfigError(f"update scale must be one of {', '.join(UPDATE_SCALES)}, got {update_scale!r}")
        if protocol == "fedavg" and (lr is None or lr <= 0):
            raise ConfigError("fedavg needs a positive local learning rate (client.lr)")
        if local_steps < 1 or (local_batch_size is not None and local_batch_size < 1):
            raise ConfigError("local steps and local batch size must be at least 1")
        if epochs is not None and epochs < 1:
            raise ConfigError("local epochs must be at least 1")
        if momentum < 0 or weight_decay < 0:
            raise ConfigError("momentum and weight decay must not be negative")
        self.protocol = PROTOCOLS.get(protocol)
        self.protocol_name = protocol
        self.model = model
        self.mean, self.std = tuple(mean), tuple(std)
        self.model_mode = model_mode
        self.training = dict(lr=lr, local_steps=local_steps, local_batch_size=local_batch_size,
                             shuffle_seed=shuffle_seed, update_scale=update_scale, momentum=momentum,
                             weight_decay=weight_decay)
        self.epochs = epochs
        self.defense = parse_defense(defense)
        self.defense_seed = defense_seed

    def update(self, data: ClientData) -> Payload:
        """Run one round on ``data`` and return what the server will see.

        With an ``aggregate:clients=K`` defense, ``data`` holds K equal client batches one after
        another; each client trains on its own and the server sees the mean of their updates. The
        client computes in full fp32 (no TF32 on a CUDA GPU, whatever PyTorch's global settings), so
        the update the attack is measured against is the same on every device up to rounding."""
        with matmul_precision("fp32"):
            return self._update(data)

    def _update(self, data: ClientData) -> Payload:
        if data.images.ndim != 4 or data.images.shape[1] != len(self.mean):
            raise DataError(
                f"client images must be B×{len(self.mean)}×H×W, got {tuple(data.images.shape)}"
            )
        if data.labels.shape != (data.images.shape[0],):
            raise DataError("client labels must hold one class index per image")
        clients = self.defense.clients
        if data.images.shape[0] % clients:
            raise DataError(f"{data.images.shape[0]} images cannot be split among {clients} clients")
        batch = int(data.images.shape[0]) // clients
        training = dict(self.training)
        if self.epochs is not None:  # every epoch walks the whole batch in minibatches
            training["local_steps"] = self.epochs * -(-batch // (training["local_batch_size"] or batch))
        hyper = PublicHyperparameters(
            protocol=self.protocol_name,
            batch_size=batch,
            model_mode=self.model_mode,
            defense=self.defense.spec,
            clients=clients,
            **training,
        )
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        device = data.images.device  # the defense's draws are made where the update lives
        generator = torch.Generator(device=device).manual_seed(self.defense_seed)
        make_gradient = self.defense.gradient
        gradient = make_gradient(generator) if make_gradient is not None else batch_gradient
        inputs = normalize(data.images, self.mean, self.std)
        updates, buffers = [], []
        # Any draw from torch's global generator during the round (e.g. dropout) is the client's
        # private randomness too: seeded from its own seed, never from the run's.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.defense_seed)
            for k in range(clients):
                part = slice(k * hyper.batch_size, (k + 1) * hyper.batch_size)
                # Work on a copy: the protocol may touch buffers (BN running stats) of the global model.
                local = copy.deepcopy(self.model).train(self.model_mode == "train")
                update, sent = self.protocol(local, inputs[part], data.labels[part], hyper, gradient)
                updates.append(self.defense.on_client(update, generator))
                buffers.append(sent)
            mean = {n: torch.stack([u[n] for u in updates]).mean(0) for n in updates[0]}
            update = self.defense.on_server(mean, generator)
        start = {n: b.detach() for n, b in self.model.named_buffers() if n in buffers[0]}
        return Payload(model_state=state, update=update, hyper=hyper,
                       buffers=aggregate_buffers(start, buffers, [1.0] * clients))

    def privacy(self, hyper: PublicHyperparameters) -> dict[str, Any]:
        """What the defense guarantees for this round (DP-SGD's ε), keyed by stage; ``sampling`` tells
        the accountant how the client really draws its minibatches (in order, or reshuffled)."""
        size = hyper.local_batch_size or hyper.batch_size
        sampling = "shuffled" if hyper.shuffle_seed is not None else "fixed"
        return self.defense.summary(sample_rate=min(1.0, size / hyper.batch_size), steps=hyper.local_steps,
                                    sampling=sampling)

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
