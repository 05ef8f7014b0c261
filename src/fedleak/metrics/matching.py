"""Order-free scoring of a batch: pair reconstructions with originals before comparing them."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def match_batch(reconstructions: Tensor, originals: Tensor) -> Tensor:
    """Hungarian assignment minimising total MSE: ``order[i]`` is the reconstruction paired with
    original ``i``. A gradient does not reveal the order of a batch, so scoring must not assume it."""
    r = reconstructions.clamp(0, 1).flatten(1).double()
    o = originals.clamp(0, 1).flatten(1).double()
    cost = torch.cdist(o, r).pow(2).cpu().numpy()  # the assignment itself is scipy's, on the host
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(len(rows), dtype=np.int64)
    order[rows] = cols
    return torch.from_numpy(order).to(reconstructions.device)


def label_accuracy(recovered: Tensor, true: Tensor) -> float:
    """Fraction of the batch's labels recovered, as multisets (the order of a batch is unknown)."""
    if true.numel() == 0:
        return float("nan")
    classes = int(max(recovered.max(), true.max())) + 1
    hits = torch.minimum(torch.bincount(recovered, minlength=classes), torch.bincount(true, minlength=classes))
    return float(hits.sum()) / true.numel()
