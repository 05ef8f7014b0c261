"""What a run uses beyond the payload, checked against the threat model it grants.

:func:`run_needs` collects, for one run config and its built attack, each capability
(:data:`fedleak.threats.CAPABILITIES`) the run would use and what uses it: the knowledge it declares
(``knowledge.labels``, ``knowledge.bn_stats``), a malicious server's modification (sending a modified
model, and what the server used to make it), a protocol whose update the attacker must simulate
(FedAvg's local training settings) or a defense it must model, and the attack's own settings
(:meth:`fedleak.attacks.base.Attack.needs`). :func:`check_run` refuses the run with one line when its
granted threat model lacks one; :func:`granted` is the letter a run runs under.
"""

from __future__ import annotations

from typing import Any

from fedleak.attacks.base import Attack
from fedleak.config import RunConfig
from fedleak.fl.server import parse_modification
from fedleak.threats import DEFAULT_THREAT, check, letters_granting, smallest


def run_needs(config: RunConfig, attack: Attack[Any]) -> dict[str, str]:
    """Capability → what in the run uses it (the first user named), for ``config`` attacked by ``attack``."""
    needs: dict[str, str] = {}

    def need(capability: str, why: str) -> None:
        needs.setdefault(capability, why)

    if config.knowledge.labels:
        need("labels", "knowledge.labels=true")
    if config.knowledge.bn_stats:
        need("bn_stats", "knowledge.bn_stats=true")
    if config.server.modification is not None:
        modification = parse_modification(config.server.modification)
        need("model_manipulation", f"server modification {modification.name}")
        for capability, why in modification.requires.items():
            need(capability, f"server modification {modification.name} ({why})")
    if config.client.protocol != "fedsgd":
        need("settings", f"attacking a {config.client.protocol} update (the attacker replays the local training)")
    if config.client.defense:
        need("settings", f"modelling the client's defense {config.client.defense}")
    for capability, why in attack.needs().items():
        need(capability, why)
    return needs


def granted(config: RunConfig) -> str:
    """The threat model ``config`` runs under: its ``threat``, else the default (B)."""
    return config.threat or DEFAULT_THREAT


def check_run(config: RunConfig, attack: Attack[Any]) -> dict[str, Any]:
    """Refuse ``config`` (one line) if it needs a capability its threat model does not grant; else
    what the results record: the letter granted, the capabilities used (with what used each) and
    the weakest letter(s) that would have been enough."""
    needs = run_needs(config, attack)
    letter = granted(config)
    check(letter, needs)
    return {"granted": letter, "needs": needs, "smallest": smallest(needs), "enough": letters_granting(needs)}
