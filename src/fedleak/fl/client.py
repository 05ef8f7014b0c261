"""The simulated FL client: private batch in, :class:`Payload` out."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from fedleak.data.normalization import Normalization, normalize  # noqa: F401  (fedleak.fl's)
from fedleak.data.tokens import InputEncoding
from fedleak.defenses import batch_gradient, parse_defense
from fedleak.device import matmul_precision
from fedleak.errors import DataError
from fedleak.fl.aggregation import aggregate_buffers
from fedleak.fl.payload import ClientData, ClientTraining, Payload, PublicHyperparameters
from fedleak.fl.protocols import PROTOCOLS, regularized_gradient
from fedleak.models.batchnorm import batch_norm_layers, batch_statistics
from fedleak.models.precode import has_extra_loss


class Client:
    """Holds the global model the server sent and computes its update as ``training`` says.

    ``normalization`` is what the client applies to its inputs before the model: the images'
    :class:`Normalization`, or a text model's :class:`~fedleak.data.tokens.TokenEncoding` (any
    :class:`~fedleak.data.tokens.InputEncoding`: it also checks the batch's form);
    ``defense`` the obfuscation spec of its update. ``seed`` is the client's private seed: it seeds
    its defense noise and any other random draw of its round, and must not be derivable from
    anything the attacker is given.
    """

    def __init__(self, model: nn.Module, normalization: InputEncoding,
                 training: ClientTraining = ClientTraining(), defense: str | None = None, seed: int = 0) -> None:
        self.protocol = PROTOCOLS.get(training.protocol)
        self.model = model
        self.normalization = normalization
        self.training = training
        self.defense = parse_defense(defense)
        self.seed = seed

    def update(self, data: ClientData) -> Payload:
        """Run one round on ``data`` and return what the server will see.

        With an ``aggregate:clients=K`` defense, ``data`` holds K equal client batches one after
        another; each client trains on its own and the server sees the mean of their updates. The
        client computes in full fp32 (no TF32 on a CUDA GPU, whatever PyTorch's global settings), so
        the update the attack is measured against is the same on every device up to rounding."""
        with matmul_precision("fp32"):
            return self._update(data)

    def _update(self, data: ClientData) -> Payload:
        self.normalization.check(data.images, data.labels)
        clients = self.defense.clients
        if data.images.shape[0] % clients:
            raise DataError(f"{data.images.shape[0]} images cannot be split among {clients} clients")
        hyper = self.training.public(int(data.images.shape[0]) // clients, clients, self.defense.spec)
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        device = data.images.device  # the defense's draws are made where the update lives
        generator = torch.Generator(device=device).manual_seed(self.seed)
        make_gradient = self.defense.gradient
        # A model that adds a term to its training loss (PRECODE's KL) trains with it.
        plain = regularized_gradient if has_extra_loss(self.model) else batch_gradient
        gradient = make_gradient(generator) if make_gradient is not None else plain
        inputs = self.normalization.to_input(data.images)
        order = torch.Generator().manual_seed(self.seed)  # a private data order (shuffle without a public seed)
        updates, buffers = [], []
        # Any draw from torch's global generator during the round (e.g. dropout) is the client's
        # private randomness too: seeded from its own seed, never from the run's.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            for k in range(clients):
                part = slice(k * hyper.batch_size, (k + 1) * hyper.batch_size)
                # Work on a copy: the protocol may touch buffers (BN running stats) of the global model.
                local = copy.deepcopy(self.model).train(self.training.model_mode == "train")
                update, sent = self.protocol(local, inputs[part], data.labels[part], hyper, gradient, order)
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
        local = copy.deepcopy(self.model).train(self.training.model_mode == "train")
        stats: list[tuple[Tensor, Tensor]] = []
        hooks = [m.register_forward_hook(lambda mod, args, out: stats.append(batch_statistics(args[0].detach())))
                 for m in batch_norm_layers(local)]
        with torch.no_grad():
            local(self.normalization.to_input(data.images))
        for h in hooks:
            h.remove()
        return stats
