"""Gradient-inversion attacks. Each is a registered :class:`Attack` run on a payload."""

# Fill the registry (fishing and imprint: a malicious server's attacks).
import fedleak.attacks.april  # noqa: F401  (APRIL: vision transformers)
import fedleak.attacks.label_counts  # noqa: F401  (the "counts" label method, for multi-step FedAvg)
from fedleak.attacks import (  # noqa: F401
    analytic,
    dlg,
    fedavg_orders,
    fishing,
    imprint,
    inverting,
    rog,
    spear,  # noqa: F401  (SPEAR: exact batches through a fully connected ReLU layer)
    trap,
)

try:  # optional: the text extra (transformers); without it the text attacks are not registered
    from fedleak.attacks import (
        dager,  # noqa: F401  (DAGER: exact text batches from transformer gradients)
        tag,  # noqa: F401  (TAG: text by gradient matching, the optimisation baseline)
    )
except ImportError:
    pass

from fedleak.attacks.base import ATTACKS, Attack, AttackerKnowledge, Reconstruction, build_attack

__all__ = ["ATTACKS", "Attack", "AttackerKnowledge", "Reconstruction", "build_attack"]
