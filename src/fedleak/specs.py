"""Spec strings ``name`` or ``name:key=value,…`` (defenses, server modifications): one parser.

The name picks a class from a :class:`~fedleak.registry.Registry`; the settings are validated by that
class's pydantic ``Config``. Every problem is one :class:`~fedleak.errors.ConfigError` naming the kind,
the name and the setting, with echoed values cut short.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from fedleak.errors import ConfigError
from fedleak.registry import Registry
from fedleak.validate import short


def parse_settings(kind: str, name: str, body: str) -> dict[str, str]:
    """``key=value,…`` → a dict of strings; malformed or repeated items are errors."""
    settings: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ConfigError(f"{kind} {name!r}: expected key=value, got {short(item)}")
        if key.strip() in settings:
            raise ConfigError(f"{kind} {name!r}: {key.strip()!r} is given twice")
        settings[key.strip()] = value.strip()
    return settings


def parse_spec(text: str, registry: Registry[Any], kind: str) -> Any:
    """Build ``registry[name](Config(settings))`` from ``name[:key=value,…]``."""
    name, _, body = text.strip().partition(":")
    name = name.strip()
    if not name:
        raise ConfigError(f"{kind} spec has an empty name in {short(text)}")
    cls = registry.get(name)
    settings = parse_settings(kind, name, body)
    try:
        return cls(cls.Config.model_validate(settings))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            known = ", ".join(cls.Config.model_fields) or "none"
            raise ConfigError(f"{kind} {name!r} has no setting {key!r} (settings: {known})") from None
        msg = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
        raise ConfigError(f"{kind} {name!r}: {key}: {msg} (got {short(err.get('input'))})") from None
