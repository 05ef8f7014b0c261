"""Named attack presets shipped as YAML: the settings of a paper, reachable by name.

A preset name is a name, never a path: anything but lower-case letters, digits, ``-`` and ``_``
(starting with a letter or digit) is refused before any file is looked up, so ``--attack ../../x``
cannot make fedleak read a YAML file outside this package.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from fedleak.config import load_yaml
from fedleak.errors import ConfigError
from fedleak.validate import short

NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


def preset_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files(__package__).iterdir()
                  if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any] | None:
    """The preset's settings (with the attack's ``name``), or ``None`` when there is no such preset;
    a ``name`` that is not a plain name is a :class:`ConfigError`."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"attack {short(name)} is not a name (lower-case letters, digits, '-' and '_'); "
                          f"presets: {', '.join(preset_names())}")
    path = resources.files(__package__) / f"{name}.yaml"
    if not path.is_file():
        return None
    return dict(load_yaml(path.read_text()))
