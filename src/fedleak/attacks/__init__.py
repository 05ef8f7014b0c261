"""Gradient-inversion attacks. Each is a registered :class:`Attack` run on a payload."""

from fedleak.attacks import analytic, dlg, inverting, rog  # noqa: F401  (fill the registry)
from fedleak.attacks import fishing, imprint  # noqa: F401  (a malicious server's attacks)
from fedleak.attacks.base import ATTACKS, Attack, AttackerKnowledge, Reconstruction, build_attack

__all__ = ["ATTACKS", "Attack", "AttackerKnowledge", "Reconstruction", "build_attack"]
