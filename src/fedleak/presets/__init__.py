"""Named attack presets shipped as YAML: the settings of a paper, reachable by name."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fedleak.config import load_yaml


def preset_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files(__package__).iterdir()
                  if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any] | None:
    """The preset's settings (with the attack's ``name``), or ``None`` when there is no such preset."""
    path = resources.files(__package__) / f"{name}.yaml"
    if not path.is_file():
        return None
    return dict(load_yaml(path.read_text()))
