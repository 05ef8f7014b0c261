"""TAG (Deng et al., Findings of EMNLP 2021, "TAG: Gradient Attack on Transformer-based Language
Models"): text recovered by optimising continuous inputs whose update matches the observed one.

The dummy batch is B sequences of T positions, relaxed one of two ways (``relax``):

- ``softmax``: free logits A (B×T×V); the model reads the embeddings ``softmax(A) E`` (E: the token
  embedding matrix), the recovered tokens are ``argmax A``;
- ``embeddings`` (TAG's own): free input embeddings X (B×T×d), recovered as the token whose
  embedding is nearest in cosine.

A language model's targets are the relaxation's own next-position distributions (``softmax(A)`` at
t+1, or ``softmax(X E^T)``: the dummy batch predicts itself, as the client's does); a classifier's
labels are the known ones or :func:`~fedleak.attacks.labels.recover_labels`'s. Adam minimises
TAG's distance between the dummy gradient g' and the update g over every tensor of the update,
``Σ ‖g' − g‖² + alpha · Σ ‖g' − g‖₁``; the lowest distance seen wins.

What the attacker is assumed to know: the batch size B (public hyperparameters) and the sequence
length T — ``length``, or else read off the update: the position-embedding gradient is zero at every
position no sequence reaches (and, under a next-token loss, at each sequence's last token), so T is
one past (two past, for a language model) its last non-zero row. The update is treated as one
gradient (FedSGD); a FedAvg update is matched as it is (a note says so).
"""

from __future__ import annotations

import time
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from fedleak.attacks.base import (
    Attack,
    AttackConfig,
    AttackerKnowledge,
    Reconstruction,
    check_update,
    register_attack,
    target_model,
)
from fedleak.attacks.labels import recover_labels
from fedleak.errors import FedleakError
from fedleak.fl.payload import Payload
from fedleak.models.text import CausalLM, TextModel


class TagConfig(AttackConfig):
    iterations: int = Field(300, ge=0, description="optimisation steps")
    lr: float = Field(0.05, gt=0, description="Adam's learning rate")
    alpha: float = Field(0.01, ge=0, description="weight of the L1 term of the gradient distance")
    relax: Literal["softmax", "embeddings"] = Field("softmax", description="what is optimised: logits over the "
                                                    "vocabulary (softmax) or input embeddings (TAG's)")
    length: int | None = Field(None, ge=1, description="tokens per sequence (default: read off the update's "
                               "position-embedding gradient)")


def position_gradient(model: TextModel, payload: Payload) -> Tensor | None:
    """The update of the model's position-embedding table (P×d), if the update holds it."""
    base = model.hf.get_base_model() if hasattr(model.hf, "get_base_model") else model.hf
    table = getattr(getattr(base, "transformer", None), "wpe", None)
    if table is None:
        table = getattr(getattr(getattr(base, "bert", None), "embeddings", None), "position_embeddings", None)
    if table is None:
        return None
    for name, p in model.named_parameters():
        if p is table.weight:
            return payload.update.get(name)
    return None


def sequence_length(model: TextModel, payload: Payload, wanted: int | None) -> int:
    """T as :class:`TagConfig` says: ``wanted``, or read off the position-embedding gradient."""
    if wanted is not None:
        return min(wanted, model.max_length)
    grad = position_gradient(model, payload)
    if grad is None:
        raise FedleakError("TAG needs the sequence length: the update holds no position-embedding gradient "
                           "(set attack.length)")
    used = torch.nonzero(grad.abs().amax(dim=1) > 0).flatten()
    if not used.numel():
        raise FedleakError("the update's position-embedding gradient is zero: set attack.length")
    return min(int(used[-1]) + (2 if isinstance(model, CausalLM) else 1), model.max_length)


@register_attack("tag")
class Tag(Attack[TagConfig]):
    """TAG: token sequences by gradient matching over relaxed inputs, L2 + α·L1 distance."""

    def run(self, payload: Payload, knowledge: AttackerKnowledge, seed: int = 0, progress: bool = False) -> Reconstruction:
        start = time.perf_counter()
        cfg = self.config
        model = target_model(payload, knowledge)
        if not isinstance(model, TextModel):
            raise FedleakError(f"TAG attacks text models (fedleak's text wrappers), not {type(model).__name__}")
        check_update(payload, dict(model.named_parameters()))
        batch = payload.hyper.observed_images
        length = sequence_length(model, payload, cfg.length)
        names = list(payload.update)
        params = dict(model.named_parameters())
        for p in model.parameters():
            p.requires_grad_(False)
        for n in names:
            params[n].requires_grad_(True)
        table = model.embeddings().detach()
        lm = isinstance(model, CausalLM)
        labels = None if lm else recover_labels(payload, knowledge, "auto").to(torch.long)[:batch]
        g = torch.Generator().manual_seed(seed)
        if cfg.relax == "softmax":
            free = torch.randn(batch, length, table.shape[0], generator=g)
        else:
            free = torch.randn(batch, length, table.shape[1], generator=g) * table.std()
        free.requires_grad_(True)
        observed = [payload.update[n] for n in names]
        optimizer = torch.optim.Adam([free], lr=cfg.lr)
        mask = torch.ones(batch, length, dtype=torch.long)

        def distance() -> Tensor:
            if cfg.relax == "softmax":
                probs = free.softmax(dim=-1)
                embeds = probs @ table
            else:
                embeds = free
                probs = (free @ table.T).softmax(dim=-1)
            logits = model.hf(inputs_embeds=embeds, attention_mask=mask).logits
            if lm:
                loss = torch.sum(-probs[:, 1:] * logits[:, :-1].log_softmax(dim=-1), dim=-1).mean()
            else:
                assert labels is not None
                loss = F.cross_entropy(logits, labels)
            dummy = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
            return torch.stack([((d - o) ** 2).sum() + cfg.alpha * (d - o).abs().sum()
                                for d, o in zip(dummy, observed)]).sum()

        def decode() -> Tensor:
            with torch.no_grad():
                scores = free.clone() if cfg.relax == "softmax" else F.normalize(free, dim=-1) @ F.normalize(table, dim=-1).T
                scores[..., model.pad_id] = -float("inf")  # the output is right-padded: padding is no token
                return scores.argmax(dim=-1)

        best, best_tokens, trace = float("inf"), decode(), []
        for step in range(cfg.iterations + 1):
            optimizer.zero_grad()
            value = distance()
            if float(value.detach()) < best:
                best, best_tokens = float(value.detach()), decode()
            if step % 50 == 0 or step == cfg.iterations:
                trace.append({"iteration": float(step), "loss": float(value.detach())})
            if step < cfg.iterations:
                value.backward()
                optimizer.step()
        source = "given" if cfg.length else "read off the position-embedding gradient"
        notes = [f"tag: {batch} sequences of {length} tokens ({source}), relaxation {cfg.relax}, "
                 f"L2 + {cfg.alpha:g}·L1 distance {trace[0]['loss']:.3g} → {best:.3g}"]
        if payload.hyper.protocol == "fedavg":
            notes.append("tag: a FedAvg update is matched as if it were one gradient")
        return Reconstruction(images=best_tokens.to(torch.long),
                              labels=torch.zeros(batch, dtype=torch.long) if labels is None else labels,
                              matching_loss=best, restart_losses=[best], iterations=cfg.iterations,
                              seconds=time.perf_counter() - start, trace=trace, notes=notes)
