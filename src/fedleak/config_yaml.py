"""Reading settings: YAML documents with safe limits, config files, and ``--set a.b=c`` overrides.

Every file fedleak reads settings from (a run config, a study's settings, a preset) goes through
:func:`load_yaml`: plain data only, and a bounded number of values, so a small hostile file can make
neither validation nor an error message walk billions of values.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fedleak.errors import ConfigError
from fedleak.validate import short


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string; accept exponents without a decimal point as floats. Nodes
    are counted as they are composed: a document of more than :data:`MAX_YAML_NODES` is refused
    while it is read, before it is built."""

    _nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:
            raise ConfigError(f"YAML holds more than {MAX_YAML_NODES:,} values")
        return super().compose_node(parent, index)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


MAX_YAML_NODES = 100_000  # a config's size with every alias expanded (a "billion laughs" file is refused)
MAX_CONFIG_BYTES = 1 << 20  # a config or settings file larger than 1 MiB is refused before it is parsed
MAX_KEY_DEPTH = 16  # dotted keys (--set a.b.c=…, grid keys) of at most this many parts


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """How many nodes ``node`` stands for once every alias (a shared node) is written out in full."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise ConfigError("YAML holds a recursive alias (a node that contains itself)")
    open_.add(key)
    children = node.value if isinstance(node, yaml.SequenceNode) else \
        [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, open_)
        if total > MAX_YAML_NODES:
            raise ConfigError(f"YAML expands to more than {MAX_YAML_NODES:,} values (aliases repeating aliases?)")
    open_.discard(key)
    sizes[key] = total
    return total


def load_yaml(text: str) -> Any:
    """Read YAML safely: plain data only (no tags that build objects), and at most
    :data:`MAX_YAML_NODES` values once aliases are expanded, so a small hostile file cannot make
    validation walk (or an error message print) billions of values."""
    loader = _Loader(text)  # a SafeLoader subclass
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set())
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError("YAML nests too deeply") from None
    finally:
        loader.dispose()


def cut(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis marks the cut): keys and values echoed in errors."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` → (["a", "b"], c) with ``c`` read as YAML (numbers, booleans, lists)."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not key.strip() or any(not p for p in parts):
        raise ConfigError(f"malformed --set {short(text)}: expected key.path=value")
    if len(parts) > MAX_KEY_DEPTH:
        raise ConfigError(f"--set {cut(key.strip())}: the key has {len(parts):,} parts; "
                          f"config keys have at most {MAX_KEY_DEPTH}")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"malformed --set {short(text)}: the value is not valid YAML") from None
    except ConfigError as exc:
        raise ConfigError(f"--set {cut(key.strip())}: {exc}") from None
    return parts, value


def apply_override(tree: dict[str, Any], parts: list[str], value: Any) -> None:
    if len(parts) > MAX_KEY_DEPTH:
        raise ConfigError(f"config key {cut('.'.join(parts))} has {len(parts):,} parts; "
                          f"config keys have at most {MAX_KEY_DEPTH}")
    node = tree
    for i, p in enumerate(parts[:-1]):
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(parts)}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # never more than the limit, whatever the file claims
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {p} is larger than {MAX_CONFIG_BYTES // (1 << 20)} MiB; "
                          "a config holds settings, not data")
    try:
        data = load_yaml(raw.decode("utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {cut(str(exc).splitlines()[0], 200)}") from None
    except ConfigError as exc:
        raise ConfigError(f"config file {p}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections")
    return data


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line naming the first offending key and what is wrong with it; keys and echoed values
    are cut to a short prefix (a hostile file's value could be megabytes long)."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    key = cut(f"{prefix}{key}" if key else prefix.rstrip("."))
    if err["type"] == "extra_forbidden":
        return f"unknown config key {key!r}"
    if err["type"] == "value_error":
        return f"config{' ' + key if key else ''}: {cut(str(err['ctx']['error']), 300)}"  # no key: the whole config
    got = f" (got {short(err['input'])})" if "input" in err and not isinstance(err["input"], dict) else ""
    return f"config {key}: {err['msg']}{got}"
