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
3. While it is not ≈ 0, up to ``rounds`` refinements: the full update's residual
   ``R = u − Σ_b ∂z_b[y_b]/∂θ`` (one backward pass) ranks every token again by ``⟨∂z_b[v]/∂θ, R⟩``
   (one more forward-mode pass) — large at the true token of a sequence that got a wrong one —
   the shortlists gain the new top tokens and the descent runs again. (Measured on GPT-2 small's
   shape, B = 16, T = 32: the first ranking missed 2 of 16 true tokens at 25 candidates, at ranks 62
   and 219, and the descent settled on 4 wrong digits; the truth's residual is 3e-7.)
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
    """One recovered last token per prefix, the relative residual of the fit (0: exact) and the
    update's scale the fit used (read off the head where the update has it, else the given one)."""

    tokens: list[int]
    residual: float
    scale: float = 1.0  # the update's size relative to one gradient, as the fit used it


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
            pad_id: int, tied: bool) -> Tensor | None:
    """Each sequence's best candidate from the output-embedding rows of u: a row v that is no input
    token of the batch receives only head terms, ``u_W[v] = Σ_{b: y_b = v} h_b``, so its least-squares
    coefficients on the head inputs H (m×d) are 1 for the sequences ending in v and 0 elsewhere;
    per sequence, the row whose coefficient is nearest 1 (rows of input tokens are left out where the
    head is tied to the input embedding, GPT-2's case). None when the update lacks W."""
    name = next((n for n, p in params.items() if p is head.weight), None)
    if name is None:
        return None
    rows = u[name].double()
    inputs = torch.zeros(rows.shape[0], dtype=torch.bool)
    inputs[pad_id] = True
    if tied:  # the head is the input embedding: its rows of input tokens also hold their input gradients
        inputs[x.flatten()] = True
    coefficients = rows @ torch.linalg.pinv(h.double())  # V×m
    coefficients[inputs] = float("inf")
    return (coefficients - 1).abs().argmin(dim=0)


def recover_last(model: nn.Module, prefixes: list[list[int]], update: Mapping[str, Tensor], pad_id: int,
                 shortlist: int, budget: int, scale: float = 1.0, rounds: int = 3) -> LastTokens:
    """The last token of each of ``prefixes`` (each a sequence without it) that explains ``update``
    (divided by ``scale``, the update's size relative to one gradient, unless the head gives it:
    :func:`_factor`)."""
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
    tied = head.weight is cast(Any, model).hf.get_input_embeddings().weight
    factor = _factor(head, params, dict(zip(names, grads)), update, x, pad_id, tied)
    if factor is None:
        factor = 1.0 / scale
    u = {n: n_scored * (g.detach() - factor * update[n].to(g.dtype)) for n, g in zip(names, grads)}

    def z(*values: Tensor) -> Tensor:
        out = torch.func.functional_call(model, dict(zip(names, values)), (x,))
        return out[rows, :, at]

    def along(direction: Mapping[str, Tensor]) -> Tensor:  # ⟨∂z_b[v]/∂θ, direction⟩ for every b, v: m×V
        with torch.no_grad():
            return torch.func.jvp(z, tuple(params[n].detach() for n in names),
                                  tuple(direction[n] for n in names))[1]

    dz = along(u)
    shortlist = min(shortlist, dz.shape[1])
    short = dz.topk(shortlist, dim=1).indices  # m×k
    direct = _direct(head, params, u, hidden[0][rows, at].detach(), x, pad_id, tied)
    if direct is not None:
        short = torch.cat([direct.view(-1, 1), short], dim=1)
    skip = {id(head.weight)}
    # tensors the update moved (LoRA's A gets no gradient while B = 0: fitting on it fits nothing)
    rest = [n for n in names if id(params[n]) not in skip and bool(update[n].abs().max() > 0)] \
        or [n for n in names if id(params[n]) not in skip]
    # every tensor above the budget (LoRA matrices at a large rank): the smallest one alone
    part = _slice(rest, params, budget) or [min(rest, key=lambda n: params[n].numel())]
    target = torch.cat([u[n].flatten() for n in part]).double()
    heads: list[Tensor] = []
    for b in range(len(prefixes)):  # each sequence's head input h_b, with its graph: z_b[v] = W[v]·h_b
        hidden.clear()
        hook = head.register_forward_pre_hook(lambda module, args: hidden.append(args[0]))
        try:
            model(x[b : b + 1])
        finally:
            hook.remove()
        heads.append(hidden[0][0, at[b]])

    def columns(b: int, tokens: Tensor) -> Tensor:  # c_b(v) on the slice, k directions in one backward
        g = torch.autograd.grad(heads[b], [params[n] for n in part], grad_outputs=head.weight.detach()[tokens],
                                is_grads_batched=True, allow_unused=True, retain_graph=True)
        return torch.cat([(gi if gi is not None else torch.zeros(len(tokens), *params[n].shape)).flatten(1)
                          for gi, n in zip(g, part)], dim=1).double()

    cands = [short[b] for b in range(len(prefixes))]
    cols = [columns(b, cands[b]) for b in range(len(prefixes))]
    # Start from the direct candidates (column 0) where there are some: greedy picks from nothing can
    # settle on two sequences' tokens swapped, a local minimum of single-token moves.
    choice = [0] * len(prefixes)
    rel = _descend(target, cols, choice, fresh=direct is None)
    for _ in range(rounds):
        if not rel > 1e-4:  # exact, or nothing to fit (nan)
            break
        # Refine: the full update's residual R = u − Σ_b ∂z_b[y_b]/∂θ; a sequence whose token is wrong
        # by c_b(true) − c_b(chosen) makes ⟨∂z_b[v]/∂θ, R⟩ large at its true token, so each sequence's
        # shortlist gains the tokens ranked highest along R, and the descent runs again.
        chosen = torch.stack([cands[b][c] for b, c in enumerate(choice)])
        picked = model(x)[rows, :, at][rows, chosen].sum()
        fit = torch.autograd.grad(picked, [params[n] for n in names])
        residual = {n: u[n] - g.detach() for n, g in zip(names, fit)}
        ranked = along(residual).topk(shortlist, dim=1).indices
        for b in range(len(prefixes)):
            new = ranked[b][~torch.isin(ranked[b], cands[b])]
            if new.numel():
                cands[b] = torch.cat([cands[b], new])
                cols[b] = torch.cat([cols[b], columns(b, new)])
        rel = _descend(target, cols, choice, fresh=False)
    return LastTokens([int(cands[b][c]) for b, c in enumerate(choice)], rel, 1.0 / factor)


def _factor(head: nn.Linear, params: Mapping[str, Tensor], free: Mapping[str, Tensor], update: Mapping[str, Tensor],
            x: Tensor, pad_id: int, tied: bool) -> float | None:
    """The factor λ with ``update ≈ gradient / λ``, read off the head: a head row v that is no
    sequence's last token (nor, for a tied head, an input token) gets only ∂F/∂W[v] = λ·update[v]
    (every one of its terms is known), so λ is the median over those rows of their least-squares
    ratio. This makes the fit scale-free — an update clipped to a norm, or scaled by an unknown
    learning rate, gives the same tokens. None when the update lacks the head or no row moved."""
    name = next((n for n, p in params.items() if p is head.weight), None)
    if name is None:
        return None
    a, w = free[name].detach().double(), update[name].double()
    keep = torch.ones(a.shape[0], dtype=torch.bool)
    keep[pad_id] = False
    if tied:
        keep[x.flatten()] = False
    a, w = a[keep], w[keep]
    norm = (w * w).sum(dim=1)
    moved = norm > 0
    if not bool(moved.any()):
        return None
    return float(((a * w).sum(dim=1)[moved] / norm[moved]).median())


def _descend(target: Tensor, cols: list[Tensor], choice: list[int], fresh: bool, sweeps: int = 4) -> float:
    """Coordinate descent on ``‖target − Σ_b cols[b][choice[b]]‖`` (``choice`` updated in place; with
    ``fresh`` the sequences start unassigned), then pair moves — two sequences' tokens changed at once,
    which frees two sequences stuck on each other's tokens (measured: digits 0/1/: swapped between
    phone-number sentences) — while they lower it. Returns the relative residual."""
    residual = target.clone()
    if not fresh:
        for b, c in enumerate(choice):
            residual -= cols[b][c]
    assigned = [not fresh] * len(cols)
    for _ in range(sweeps):
        moved = False
        for b in range(len(cols)):
            if assigned[b]:
                residual += cols[b][choice[b]]
            best = int((residual.unsqueeze(0) - cols[b]).norm(dim=1).argmin())
            moved = moved or best != choice[b] or not assigned[b]
            choice[b], assigned[b] = best, True
            residual -= cols[b][best]
        if not moved:
            break
    for _ in range(sweeps):
        moved = False
        for b in range(len(cols)):
            for c in range(b + 1, len(cols)):
                r0 = residual + cols[b][choice[b]] + cols[c][choice[c]]
                # ‖r0 − x_i − y_j‖² − ‖r0‖² over all pairs (i, j), from inner products
                x, y = cols[b], cols[c]
                cost = ((x * x).sum(1) - 2 * (x @ r0)).unsqueeze(1) + ((y * y).sum(1) - 2 * (y @ r0)).unsqueeze(0) \
                    + 2 * (x @ y.T)
                i, j = divmod(int(cost.argmin()), cost.shape[1])
                if (i, j) != (choice[b], choice[c]) and float(cost[i, j]) < float(cost[choice[b], choice[c]]) - 1e-12 * float(r0 @ r0):
                    choice[b], choice[c] = i, j
                    moved = True
                residual = r0 - x[choice[b]] - y[choice[c]]
        if not moved:
            break
    if float(target.norm()) == 0.0:
        return float("nan")  # nothing to fit: the choice is the ranking's, uncertified
    return float(residual.norm() / target.norm())
