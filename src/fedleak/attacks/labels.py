"""Label recovery from the observed update (a lookup table of methods)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from fedleak.errors import FedleakError
from fedleak.fl.payload import Payload
from fedleak.registry import Registry

if TYPE_CHECKING:
    from fedleak.attacks.base import AttackerKnowledge

LabelRecovery = Callable[[Payload, int], Tensor]

LABEL_METHODS: Registry[LabelRecovery] = Registry("label recovery method")


def last_layer_weight_grad(payload: Payload, num_classes: int) -> Tensor:
    """The update of the classifier's weight: the last 2-D tensor with one row per class."""
    for name in reversed(list(payload.update)):
        t = payload.update[name]
        if t.ndim == 2 and t.shape[0] == num_classes:
            return t
    raise FedleakError("label recovery needs a final linear layer with one row per class")


@LABEL_METHODS.register("idlg")
def idlg(payload: Payload, num_classes: int) -> Tensor:
    """iDLG (Zhao et al. 2020), one image: with cross-entropy, only the true class's row of the last
    weight gradient is (p_c − 1)·h ≤ 0 for non-negative features h, so its sum is the smallest."""
    if payload.hyper.observed_images != 1:
        raise FedleakError(
            f"iDLG label recovery works for one image, the batch has {payload.hyper.observed_images}: "
            "set attack.labels=auto|yin|wainakh, or declare the labels known (knowledge.labels=true)"
        )
    grad = last_layer_weight_grad(payload, num_classes)
    return torch.argmin(grad.sum(dim=1)).view(1)


@LABEL_METHODS.register("yin")
def yin(payload: Payload, num_classes: int) -> Tensor:
    """Yin et al. (GradInversion, CVPR 2021): the B classes whose row of the last weight gradient has
    the most negative minimum. Assumes no class repeats in the batch (B ≤ number of classes)."""
    b = payload.hyper.observed_images
    if b > num_classes:
        raise FedleakError(f"Yin et al.'s label recovery needs batch ≤ classes ({b} > {num_classes})")
    row_min = last_layer_weight_grad(payload, num_classes).min(dim=1).values
    return torch.sort(torch.argsort(row_min)[:b]).values


@LABEL_METHODS.register("wainakh")
def wainakh(payload: Payload, num_classes: int) -> Tensor:
    """Wainakh et al. (LLG, PETS 2022), the simple variant: every class whose row sum of the last
    weight gradient is negative is present (the B most negative when more than B are); then, until B
    labels are found, take the class with the most negative remaining sum. Each pick removes one
    sample's estimated impact from that row, so repeated labels are found too."""
    b = payload.hyper.observed_images
    sums = last_layer_weight_grad(payload, num_classes).sum(dim=1).double()
    negative = sums < 0
    if not negative.any():
        raise FedleakError("no class has a negative last-layer gradient; cannot recover labels")
    impact = sums[negative].sum() / b * (1 + 1 / num_classes)  # one sample's (negative) share
    labels: list[int] = []
    present = torch.nonzero(negative).flatten()
    for c in present[torch.argsort(sums[present], stable=True)][:b].tolist():
        labels.append(c)
        sums[c] -= impact
    while len(labels) < b:
        c = int(torch.argmin(sums))
        labels.append(c)
        sums[c] -= impact
    return torch.tensor(sorted(labels), dtype=torch.long, device=sums.device)


def classifier_names(payload: Payload, num_classes: int) -> tuple[str, str | None]:
    """The update names of the classifier's weight (the last 2-D tensor with one row per class) and
    of its bias (``None`` when it has none)."""
    for name in reversed(list(payload.update)):
        if payload.update[name].ndim == 2 and payload.update[name].shape[0] == num_classes:
            bias = name.rsplit(".", 1)[0] + ".bias" if "." in name else "bias"
            found = payload.update.get(bias)
            return name, bias if found is not None and found.shape == (num_classes,) else None
    raise FedleakError("label recovery needs a final linear layer with one row per class")


def ilrg_condition(payload: Payload, num_classes: int) -> str | None:
    """Why iLRG does not apply to ``payload`` (one clause), or ``None`` where it does: a single FedSGD
    gradient; a final linear layer with a bias, in the update and in the global model; the
    softmax cross-entropy signature, Σ_c ∂L/∂b_c = 0 with ∂L/∂b ≠ 0 (every column of P − Y sums to 0);
    and the low rank of ∂L/∂W = (1/B)·(P − Y)·Hᵀ, at most min(B, C − 1) (``torch.linalg.matrix_rank``,
    its float tolerance). A noised, sparsified or sign-compressed update fails the last two."""
    hyper = payload.hyper
    if hyper.protocol != "fedsgd":
        return f"it needs a single FedSGD gradient (client.protocol=fedsgd), this round ran {hyper.protocol}"
    weight, bias = classifier_names(payload, num_classes)
    if bias is None or weight not in payload.model_state or bias not in payload.model_state:
        return "it needs a final linear layer with a bias, in the update and in the global model's state"
    gw, gb = payload.update[weight], payload.update[bias]
    if not (torch.isfinite(gw).all() and torch.isfinite(gb).all()) or not gb.abs().sum() > 0:
        return "the classifier's bias gradient is zero or not finite"
    if gb.double().sum().abs() > 1e-3 * gb.double().abs().sum():
        return "the bias gradient does not sum to 0 over the classes (not a softmax cross-entropy gradient)"
    b, rank = hyper.observed_images, int(torch.linalg.matrix_rank(gw))
    if rank > min(b, num_classes - 1):
        return (f"the classifier's weight gradient has rank {rank} > min(B, C − 1) = {min(b, num_classes - 1)}"
                " (not one batch's softmax cross-entropy gradient)")
    return None


def _solve_counts(posteriors: Tensor, bias_grad: Tensor, b: int) -> Tensor:
    """iLRG's linear system: B·∂L/∂b = Σ_c n_c (p̂_c − e_c) = (P̂ − I)·n with Σ_c n_c = B, solved by the
    Moore–Penrose pseudoinverse (P̂'s column c: the posterior of class c's instances); negatives clipped."""
    c = len(bias_grad)
    system = torch.cat([posteriors - torch.eye(c, dtype=posteriors.dtype, device=posteriors.device), posteriors.new_ones(1, c)])
    return (torch.linalg.pinv(system) @ torch.cat([b * bias_grad, bias_grad.new_tensor([float(b)])])).clamp(min=0)


def _class_embeddings(weight_grad: Tensor, posteriors: Tensor, counts: Tensor, present: Tensor, b: int,
                      weight: Tensor) -> Tensor:
    """The class-wise embeddings Ĥ (one row per class with n_c > 0) that explain the weight gradient,
    B·∂L/∂W = (P̂ − I)·diag(n)·Ĥ: the least-squares solution, and, along the null space of
    D = (P̂ − I)·diag(n) (one direction when every class is present: 1ᵀD = 0), the one whose
    class embeddings are closest to their count-weighted mean (an untrained model maps every image
    to nearly the same embedding)."""
    d = (posteriors - torch.eye(len(present), dtype=posteriors.dtype, device=posteriors.device)[:, present]) * counts
    u, s, vh = torch.linalg.svd(d, full_matrices=True)
    r = int((s > s[0] * 1e-4).sum())
    h = vh[:r].T @ ((u[:, :r].T @ (b * weight_grad)) / s[:r, None])
    null = vh[r:].T
    if null.shape[1]:
        w = (counts / counts.sum()).unsqueeze(1)
        spread, root = null - (w.T @ null), w.sqrt()
        logits = (h - w.T @ h) @ weight.T  # the spread that matters: the class logits' (W·ĥ)
        shift = torch.linalg.lstsq(root * spread, -root * logits).solution  # (W·w)ᵀ per null direction
        h = h + null @ torch.linalg.lstsq(weight, shift.T).solution.T
    return h


def ilrg_counts(payload: Payload, num_classes: int, iterations: int = 20) -> Tensor:
    """iLRG (Ma et al., ICLR 2023): the class counts (int64, summing to B) of a FedSGD gradient from
    the classifier z = W·h + b, its gradient and the global model's W and b (see :func:`ilrg`)."""
    reason = ilrg_condition(payload, num_classes)
    if reason is not None:
        raise FedleakError(f"iLRG label recovery does not apply: {reason}; set attack.labels=auto|wainakh")
    weight, bias = classifier_names(payload, num_classes)
    assert bias is not None  # ilrg_condition checked it
    gw, gb = payload.update[weight].double(), payload.update[bias].double()
    w, bb = (payload.model_state[n].double().to(gw.device) for n in (weight, bias))
    b = payload.hyper.observed_images
    mean = gw.T @ gb / (gb @ gb)  # ∂L/∂W ≈ ∂L/∂b · h̄ᵀ, exact when every image has the same embedding
    posteriors = torch.softmax(w @ mean + bb, 0).unsqueeze(1).repeat(1, num_classes)
    counts = _solve_counts(posteriors, gb, b)
    for _ in range(iterations):
        present = counts > 0.5
        embeddings = _class_embeddings(gw, posteriors[:, present], counts[present], present, b, w)
        posteriors[:, present] = torch.softmax(embeddings @ w.T + bb, 1).T
        previous, counts = counts, _solve_counts(posteriors, gb, b)
        if (counts - previous).abs().max() < 1e-6:
            break
    return integer_counts(counts.cpu(), b).to(counts.device)


def integer_counts(raw: np.ndarray | Tensor, total: int) -> Tensor:
    """Non-negative integer counts summing to ``total`` closest to ``raw``: negatives clipped, the
    rest scaled to ``total``, floored, the remainder given to the largest fractional parts."""
    r = np.clip(np.asarray(raw, dtype=np.float64), 0, None)
    if not np.isfinite(r).all():
        raise FedleakError("the update gives non-finite label counts (is it finite?)")
    r = r / r.sum() * total if r.sum() > 0 else np.full(len(r), total / len(r))
    counts = np.floor(r).astype(np.int64)
    order = np.argsort(-(r - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return torch.from_numpy(counts)


@LABEL_METHODS.register("ilrg")
def ilrg(payload: Payload, num_classes: int) -> Tensor:
    """iLRG (Ma et al., "Instance-wise batch label restoration via gradients in federated learning",
    ICLR 2023): counts of repeated labels from a FedSGD gradient and the global model's classifier.

    With softmax cross-entropy, B·∂L/∂b = Σ_i (p_i − e_{y_i}) and B·∂L/∂W = Σ_i (p_i − e_{y_i})·h_iᵀ.
    Taking every instance of class c to share one embedding ĥ_c (nearly so in an untrained model),
    hence one posterior p̂_c = softmax(W·ĥ_c + b), these are B·∂L/∂b = (P̂ − I)·n and
    B·∂L/∂W = (P̂ − I)·diag(n)·Ĥ. Starting from the mean embedding (the least-squares fit
    ∂L/∂W ≈ ∂L/∂b·h̄ᵀ), it alternates the counts n (the pseudoinverse solution, Σ n = B) with the
    class embeddings Ĥ (:func:`_class_embeddings`) and their posteriors, then rounds n to integers.
    Exact when all images share an embedding, whatever W and b; the conditions it checks are
    :func:`ilrg_condition`'s. Not the paper's code: a reading of its method."""
    counts = ilrg_counts(payload, num_classes)
    return torch.repeat_interleave(torch.arange(num_classes, device=counts.device), counts)


def ilrg_applies(payload: Payload, num_classes: int) -> bool:
    """Where ``auto`` picks iLRG: :func:`ilrg_condition` holds, an honest server sent the model, and
    the classifier's input width d is at least B (the embeddings can be distinct)."""
    if payload.hyper.server != "honest" or ilrg_condition(payload, num_classes) is not None:
        return False
    weight, _ = classifier_names(payload, num_classes)
    return payload.update[weight].shape[1] >= payload.hyper.observed_images


@LABEL_METHODS.register("auto")
def auto(payload: Payload, num_classes: int) -> Tensor:
    """iDLG when the update stands for one image (exact there); iLRG where it applies
    (:func:`ilrg_applies`); else Wainakh et al.'s batch method, which also finds repeated labels."""
    b = payload.hyper.observed_images
    method = "idlg" if b == 1 else "ilrg" if ilrg_applies(payload, num_classes) else "wainakh"
    return LABEL_METHODS.get(method)(payload, num_classes)


def recover_labels(payload: Payload, knowledge: AttackerKnowledge, method: str) -> Tensor:
    """The labels an attack uses: the true ones when the run declares them known, else ``method``."""
    if knowledge.labels is not None:
        return knowledge.labels
    return LABEL_METHODS.get(method)(payload, knowledge.num_classes)
