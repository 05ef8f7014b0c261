"""Threat models: what an attacker is granted, by letter, and the one-line refusal of a run that
needs more.

A *capability* is one thing an attacker may have beyond the global model and the client's update
(the payload every attacker sees). A *threat model* is a named set of capabilities; a run grants one
(``threat`` in the run config, ``--threat`` on the command line; default ``B``) and everything the
run would use — the knowledge it declares, the server's modification, the protocol it attacks, the
attack's own settings — must be granted, or the run is refused before it computes anything
(:func:`check`). Every result records the letter it ran under and what it used.

The letters follow the structure of Carletti et al.'s systematisation (SoK: Gradient Inversion
Attacks in Federated Learning, USENIX Security 2025): ordered by attacker capability, an honest-
but-curious server first, a malicious (active) server last. The capability set behind each letter
is fedleak's, stated in :data:`THREAT_MODELS` and in the README; it was written without the paper's
table at hand, so compare the descriptions — not only the letters — when you place a result beside
the paper's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fedleak.errors import ConfigError

CAPABILITIES: Mapping[str, str] = {
    "settings": "the client's local training settings (learning rate, epochs, batch size, optimizer)",
    "labels": "the client's labels",
    "bn_stats": "the client batch's batch-norm statistics",
    "surrogate_data": "public data from the client's distribution",
    "model_manipulation": "sending the client a modified model",
}
"""Each capability an attacker may be granted, with what it means."""


@dataclass(frozen=True)
class ThreatModel:
    letter: str
    name: str
    grants: frozenset[str]

    def describe(self) -> str:
        granted = ", ".join(sorted(self.grants)) or "nothing beyond the model and the update"
        return f"{self.letter} ({self.name}; grants {granted})"


def _model(letter: str, name: str, *grants: str) -> ThreatModel:
    unknown = set(grants) - set(CAPABILITIES)
    assert not unknown, unknown
    return ThreatModel(letter, name, frozenset(grants))


THREAT_MODELS: Mapping[str, ThreatModel] = {m.letter: m for m in (
    _model("A", "honest-but-curious server, the update only"),
    _model("B", "honest-but-curious server, public training settings", "settings"),
    _model("C", "B with the client's labels", "settings", "labels"),
    _model("D", "B with the batch-norm statistics", "settings", "bn_stats"),
    _model("E", "B with surrogate data", "settings", "surrogate_data"),
    _model("F", "the strongest honest-but-curious server", "settings", "labels", "bn_stats", "surrogate_data"),
    _model("G", "malicious server", "settings", "surrogate_data", "model_manipulation"),
    _model("H", "malicious server with every capability", *CAPABILITIES),
)}
"""The threat models by letter, weakest first."""

DEFAULT_THREAT = "B"


def threat_model(letter: str) -> ThreatModel:
    """The threat model named by ``letter`` (case-insensitive)."""
    found = THREAT_MODELS.get(letter.strip().upper())
    if found is None:
        raise ConfigError(f"unknown threat model {letter!r}: choose one of {', '.join(THREAT_MODELS)}")
    return found


def letters_granting(capabilities: Iterable[str]) -> list[str]:
    """Every threat model that grants all of ``capabilities``, weakest first."""
    needed = set(capabilities)
    return [m.letter for m in THREAT_MODELS.values() if needed <= m.grants]


def smallest(capabilities: Iterable[str]) -> str:
    """The weakest threat model that grants all of ``capabilities`` (``H`` grants every one)."""
    return letters_granting(capabilities)[0]


def check(letter: str, needs: Mapping[str, str]) -> None:
    """Refuse, with one line, a run granted ``letter`` that needs a capability it does not grant;
    ``needs`` maps each capability the run uses to what in the run uses it."""
    granted = threat_model(letter)
    missing = [c for c in needs if c not in granted.grants]
    if missing:
        c = missing[0]
        raise ConfigError(f"{needs[c]} needs {CAPABILITIES[c]} ({c}), which threat model {granted.describe()} "
                          f"does not grant: grant it with --threat {smallest(needs)} (or one of "
                          f"{', '.join(letters_granting(needs))})")
