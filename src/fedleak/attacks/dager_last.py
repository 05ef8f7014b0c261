"""The last token of each sequence under a next-token loss, which no attention span holds.

Under a language-model loss a sequence's last real token ``y`` is only a *target* (of position
L−2): its own position predicts padding (ignored), so its inputs get no gradient and it is in no
layer's input span — the paper's decoder search recovers tokens 0…L−2 of a length-L sequence.
fedleak (beyond the paper) reads ``y`` off the rest of the update. With the prefixes known, the
mean cross-entropy over the N scored positions splits into a part the attacker computes,
``F = (Σ_known CE + Σ_b logsumexp z_b) / N`` (``z_b``: sequence b's logits at L_b−2), and
``−Σ_b z_b[y_b] / N``; so ``u = N·(∂F/∂θ − update) = Σ_b ∂z_b[y_b]/∂θ`` (FedSGD: exactly).

1. A forward-mode product (``torch.func.jvp`` along u) gives ``⟨∂z_b[v]/∂θ, u⟩`` for every token v
   of every sequence at once; the ``shortlist`` highest per sequence are kept.
2. On a slice of the parameters (the trainable tensors nearest the output, ``budget`` entries in
   all), each shortlisted ``c_b(v) = ∂z_b[v]/∂θ`` is computed by a backward pass, and the tokens are
   chosen by coordinate descent on ``‖u − Σ_b c_b(y_b)‖``; its relative value is the certificate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedleak.models.text import lm_targets


@dataclass
class LastTokens:
    """One recovered last token per prefix and the relative residual of the fit (0: exact)."""

    tokens: list[int]
    residual: float


def _batch(prefixes: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """The prefixes with one unknown (pad) position appended, right-padded; and each one's L−2."""
    width = max(len(p) for p in prefixes) + 1
    x = torch.full((len(prefixes), width), pad_id, dtype=torch.long)
    for i, p in enumerate(prefixes):
        x[i, : len(p)] = torch.tensor(p)
    return x, torch.tensor([len(p) - 1 for p in prefixes])


def _slice(names: list[str], params: Mapping[str, Tensor], budget: int) -> list[str]:
    """Trainable tensors from the output backwards, ``budget`` entries at most (larger ones skipped)."""
    chosen: list[str] = []
    left = budget
    for n in reversed(names):
        if params[n].numel() <= left:
            chosen.append(n)
            left -= params[n].numel()
    return chosen


def _direct(head: nn.Linear, params: Mapping[str, Tensor], u: Mapping[str, Tensor], h: Tensor, x: Tensor,
            pad_id: int) -> Tensor | None:
    """Each sequence's best candidate from the output-embedding rows of u: a row v that is no input
    token of the batch receives only head terms, ``u_W[v] = Σ_{b: y_b = v} h_b``, so its least-squares
    coefficients on the head inputs H (m×d) are 1 for the sequences ending in v and 0 elsewhere;
    per sequence, the row whose coefficient is nearest 1. None when the update lacks W."""
    name = next((n for n, p in params.items() if p is head.weight), None)
    if name is None:
        return None
    rows = u[name].double()
    inputs = torch.zeros(rows.shape[0], dtype=torch.bool)
    inputs[x.flatten()] = True
    inputs[pad_id] = True
    coefficients = rows @ torch.linalg.pinv(h.double())  # V×m
    coefficients[inputs] = float("inf")
    return (coefficients - 1).abs().argmin(dim=0)


def recover_last(model: nn.Module, prefixes: list[list[int]], update: Mapping[str, Tensor], pad_id: int,
                 shortlist: int, budget: int, scale: float = 1.0) -> LastTokens:
    """The last token of each of ``prefixes`` (each a sequence without it) that explains ``update``
    (divided by ``scale``: the update's size relative to one gradient)."""
    named = [(n, p) for n, p in model.named_parameters() if n in update]  # what the client trained
    head = cast(nn.Linear, cast(Any, model).hf.get_output_embeddings())
    names = [n for n, p in named]
    params = {n: p for n, p in named}
    x, at = _batch(prefixes, pad_id)
    rows = torch.arange(len(prefixes))
    targets = lm_targets(x, pad_id)
    n_scored = int((targets != -100).sum()) + len(prefixes)
    hidden: list[Tensor] = []
    hook = head.register_forward_pre_hook(lambda module, args: hidden.append(args[0]))
    try:
        logits = model(x)  # B×V×(T−1)
    finally:
        hook.remove()
    free = (F.cross_entropy(logits, targets, reduction="sum") + torch.logsumexp(logits[rows, :, at], dim=1).sum())
    grads = torch.autograd.grad(free / n_scored, [params[n] for n in names])
    u = {n: (n_scored * (g.detach() - update[n].to(g.dtype) / scale)) for n, g in zip(names, grads)}

    def z(*values: Tensor) -> Tensor:
        out = torch.func.functional_call(model, dict(zip(names, values)), (x,))
        return out[rows, :, at]

    with torch.no_grad():
        dz = torch.func.jvp(z, tuple(params[n].detach() for n in names), tuple(u[n] for n in names))[1]
    short = dz.topk(min(shortlist, dz.shape[1]), dim=1).indices  # m×k
    direct = _direct(head, params, u, hidden[0][rows, at].detach(), x, pad_id)
    if direct is not None:
        short = torch.cat([direct.view(-1, 1), short], dim=1)
    skip = {id(head.weight)}
    rest = [n for n in names if id(params[n]) not in skip]
    # every tensor above the budget (LoRA matrices at a large rank): the smallest one alone
    part = _slice(rest, params, budget) or [min(rest, key=lambda n: params[n].numel())]
    target = torch.cat([u[n].flatten() for n in part]).double()
    k = short.shape[1]
    columns = torch.zeros(len(prefixes), k, target.numel(), dtype=torch.float64)
    for b in range(len(prefixes)):  # c_b(v) = ∂(W[v]·h_b)/∂θ: one sequence's backward, k directions at once
        hidden.clear()
        hook = head.register_forward_pre_hook(lambda module, args: hidden.append(args[0]))
        try:
            model(x[b : b + 1])
        finally:
            hook.remove()
        h = hidden[0][0, at[b]]  # d: the head's input; z_b[v] = W[v]·h_b
        g = torch.autograd.grad(h, [params[n] for n in part], grad_outputs=head.weight.detach()[short[b]],
                                is_grads_batched=True, allow_unused=True)
        columns[b] = torch.cat([(gi if gi is not None else torch.zeros(k, *params[n].shape)).flatten(1)
                                for gi, n in zip(g, part)], dim=1).double()
    # Start from the direct candidates (column 0) where there are some: greedy picks from nothing can
    # settle on two sequences' tokens swapped, a local minimum of single-token moves.
    choice = [0 if direct is not None else -1] * len(prefixes)
    residual = target - columns[:, 0].sum(dim=0) if direct is not None else target.clone()
    for _ in range(3):
        for b in range(len(prefixes)):
            if choice[b] >= 0:
                residual += columns[b, choice[b]]
            errors = (residual.unsqueeze(0) - columns[b]).norm(dim=1)
            choice[b] = int(errors.argmin())
            residual -= columns[b, choice[b]]
    rel = float(residual.norm() / target.norm().clamp_min(torch.finfo(torch.float64).tiny))
    return LastTokens([int(short[b, c]) for b, c in enumerate(choice)], rel)
