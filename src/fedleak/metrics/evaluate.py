"""Scoring a reconstruction against the client's private batch — the only place ground truth enters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fedleak.attacks.base import Reconstruction
from fedleak.errors import FedleakError
from fedleak.fl.payload import ClientData
from fedleak.metrics.image import psnr, ssim, ssim_rog
from fedleak.metrics.lpips import LPIPS
from fedleak.metrics.matching import label_accuracy, match_batch


@dataclass(frozen=True)
class ImageScore:
    position: int  # place of the original in the client batch
    dataset_index: int | None
    matched: int  # reconstruction paired with it
    label: int
    recovered_label: int
    psnr: float
    ssim: float
    lpips: dict[str, float | None] = field(default_factory=dict)  # per backbone; None = n/a
    ssim_rog: float | None = None  # the ROG paper's global YCrCb SSIM (metrics.image.ssim_rog)
    semantic: float | None = None  # Jaccard of an independent classifier's top-k label sets (metrics.semantic)


@dataclass(frozen=True)
class Evaluation:
    psnr: float
    ssim: float
    label_accuracy: float
    images: list[ImageScore]
    order: list[int]
    lpips: dict[str, float | None] = field(default_factory=dict)
    ssim_rog: float | None = None
    semantic: float | None = None

    def summary(self) -> dict[str, Any]:
        """What ``metrics.json`` and the results database hold of it: the mean PSNR, SSIM and LPIPS
        (also one ``lpips_<net>`` key per backbone), ROG's SSIM (``ssim_rog``), label accuracy and the
        per-image scores."""
        return {"psnr": self.psnr, "ssim": self.ssim, "ssim_rog": self.ssim_rog, "semantic": self.semantic,
                "lpips": self.lpips,
                **{f"lpips_{net}": v for net, v in self.lpips.items()},
                "label_accuracy": self.label_accuracy, "images": [vars(s) for s in self.images]}


def evaluate(reconstruction: Reconstruction, truth: ClientData,
             lpips: dict[str, LPIPS | None] | None = None,
             semantic: Callable[[Tensor, Tensor], list[float]] | None = None) -> Evaluation:
    """Match reconstructions to originals (Hungarian on MSE), then score each pair. ``lpips`` maps
    backbone names to loaded scorers; a ``None`` scorer scores n/a (its weights are missing);
    ``semantic`` (:class:`fedleak.metrics.semantic.SemanticScorer`) scores each pair's label overlap.
    Everything is computed on the reconstruction's device (the truth is moved there: an auditor's
    batch may come from the host) and comes back as Python numbers."""
    rec, orig = reconstruction.images, truth.images.to(reconstruction.images.device)
    true = truth.labels.to(reconstruction.labels.device)
    if rec.shape != orig.shape:
        raise FedleakError(f"reconstruction shape {tuple(rec.shape)} differs from the batch {tuple(orig.shape)}")
    order = match_batch(rec, orig)
    paired = rec[order]
    p, s = psnr(paired, orig), ssim(paired, orig)
    rog = ssim_rog(paired, orig) if orig.shape[1] in (1, 3) else None
    overlap = semantic(paired, orig) if semantic is not None else [None] * len(orig)
    with torch.no_grad():
        perceptual = {net: (m.to(paired.device)(paired, orig).tolist() if m is not None else None)
                      for net, m in (lpips or {}).items()}
    indices: list[int | None] = list(truth.indices) or [None] * len(orig)
    rec_labels = reconstruction.labels[order].tolist() if reconstruction.labels.numel() == len(orig) else None
    # Back to Python numbers once, at the end (one host transfer per tensor, not one per image).
    p_list, s_list, order_list, true_labels = p.tolist(), s.tolist(), order.tolist(), true.tolist()
    rog_list = rog.tolist() if rog is not None else [None] * len(orig)
    scores = [
        ImageScore(
            position=i,
            dataset_index=indices[i],
            matched=int(order_list[i]),
            label=int(true_labels[i]),
            recovered_label=int(rec_labels[i]) if rec_labels is not None else -1,
            psnr=float(p_list[i]),
            ssim=float(s_list[i]),
            lpips={net: (v[i] if v is not None else None) for net, v in perceptual.items()},
            ssim_rog=rog_list[i],
            semantic=overlap[i],
        )
        for i in range(len(orig))
    ]
    return Evaluation(
        psnr=float(p.mean()),
        ssim=float(s.mean()),
        label_accuracy=label_accuracy(reconstruction.labels, true),
        images=scores,
        order=order_list,
        lpips={net: (sum(v) / len(v) if v is not None else None) for net, v in perceptual.items()},
        ssim_rog=float(rog.mean()) if rog is not None else None,
        semantic=sum(overlap) / len(overlap) if semantic is not None and overlap else None,  # type: ignore[arg-type]
    )
