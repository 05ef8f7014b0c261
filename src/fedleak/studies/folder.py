"""A study folder: ``study.json`` (the study, preset and settings that made it), ``results.sqlite``
(one row per finished run), ``runs/`` (their images) and the report.

A folder holds one grid. Running a study into a folder made with other settings is refused, naming
the first setting that differs, unless the user passes ``--force``: then the folder takes the new
settings and keeps only the finished runs that belong to the new grid. Folders are read as files
other people made: a damaged or hand-edited ``study.json`` is one clear error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fedleak.errors import ConfigError, FedleakError
from fedleak.identity import identity
from fedleak.store import check_writable_parent, write_atomically, write_text_atomically
from fedleak.validate import check_fields, mapping, short, text

DB_NAME = "results.sqlite"
STUDY_FILE = "study.json"
META_FIELDS = {"study": text(), "preset": text(), "settings": mapping()}


def study_meta(name: str, preset: str, settings: dict[str, Any]) -> dict[str, Any]:
    """What ``study.json`` holds, as JSON would give it back."""
    return json.loads(json.dumps({"study": name, "preset": preset, "settings": settings}))


MAX_META_BYTES = 16 << 20  # a study.json of a sweep over 100,000 images is well under 2 MiB


def read_meta(folder: Path) -> dict[str, Any]:
    """``folder``'s ``study.json``, checked: an object with the study's name, preset and settings."""
    path = folder / STUDY_FILE
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_META_BYTES + 1)  # never more than the limit, whatever the file holds
        if len(raw) > MAX_META_BYTES:
            raise FedleakError(f"{path} is larger than {MAX_META_BYTES >> 20} MiB: not a study.json fedleak wrote")
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FedleakError(f"{path} is not valid JSON ({str(exc)[:80]})") from None
    except RecursionError:
        raise FedleakError(f"{path} nests too deeply") from None
    return check_fields(data, META_FIELDS, META_FIELDS, str(path))


def first_difference(old: Any, new: Any, key: str = "") -> tuple[str, Any, Any] | None:
    """The first dotted key (in ``new``'s order, then ``old``'s) whose values differ, with both."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in dict.fromkeys([*new, *old]):
            found = first_difference(old.get(k), new.get(k), f"{key}.{k}" if key else str(k))
            if found:
                return found
        return None
    return None if old == new else (key, old, new)


def grid_of(meta: dict[str, Any], locations: Iterable[str]) -> dict[str, Any]:
    """``meta`` as folders compare it: its settings without their ``locations``."""
    return {**meta, "settings": identity(meta.get("settings") or {}, locations)}


def prepare(out: Path, meta: dict[str, Any], force: bool, locations: Iterable[str] = ()) -> bool:
    """Check ``out`` before any work: a new folder, or one made by this grid (another grid, or a
    non-empty folder that is no study, only with ``force``). Returns whether ``out`` is new.
    Settings that only say where things lie or run (``locations``, :attr:`Study.locations
    <fedleak.studies.base.Study.locations>`: the data root, the device) are no part of the grid
    (:mod:`fedleak.identity`): the same grid on moved data is the same grid."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"study folder {str(out)!r} exists and is not a folder")
    if not out.exists():
        check_writable_parent(out)
        return True
    if not os.access(out, os.W_OK):
        raise ConfigError(f"study folder {str(out)!r} is not writable")
    hint = "choose another --out or pass --force (which keeps only the runs of the new settings)"
    if (out / STUDY_FILE).exists():
        try:
            old = read_meta(out)
        except FedleakError as exc:
            if force:
                return False
            raise FedleakError(f"{exc}; {hint}") from None
        diff = first_difference(grid_of(old, locations), grid_of(meta, locations))
        if diff and not force:
            key, was, now = diff
            raise ConfigError(f"study folder {str(out)!r} holds another grid ({key} is {short(was)} there, "
                              f"{short(now)} now); {hint}")
    elif any(not p.name.startswith(f".{STUDY_FILE}.") for p in out.iterdir()) and not force:
        raise ConfigError(f"folder {str(out)!r} is not empty and holds no {STUDY_FILE}; {hint}")
    return False


def create(out: Path, meta: dict[str, Any]) -> bool:
    """Make ``out`` with its ``study.json`` in one step (a filled temporary sibling renamed into
    place), so another process never sees a study folder without its settings. ``False`` when
    another process made ``out`` first."""
    def fill(tmp: Path) -> None:
        write_meta(tmp, meta)

    try:
        write_atomically(out, fill, replace=False)
    except FileExistsError:
        return False
    return True


def write_meta(out: Path, meta: dict[str, Any]) -> None:
    write_text_atomically(out / STUDY_FILE, json.dumps(meta, indent=2))
