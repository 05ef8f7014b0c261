"""Gradient-inversion attacks. Each is a registered :class:`Attack` run on a payload."""

# Fill the registry (fishing and imprint: a malicious server's attacks).
from fedleak.attacks import analytic, dlg, fishing, imprint, inverting, rog  # noqa: F401
from fedleak.attacks.base import ATTACKS, Attack, AttackerKnowledge, Reconstruction, build_attack

__all__ = ["ATTACKS", "Attack", "AttackerKnowledge", "Reconstruction", "build_attack"]
