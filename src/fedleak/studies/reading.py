"""The reading side of a study folder: :func:`load_study` re-creates the study from its
``study.json`` and picks its planned runs' records from the database — what ``fedleak report`` and
``fedleak runs`` read, without the runner. A database written before run keys left ``data.root``
out is read as it is (:func:`legacy_keys`); the runner gives its runs their new keys when the study
next runs (:func:`fedleak.studies.runner.run_study`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from fedleak.config import describe_validation_error
from fedleak.errors import ConfigError
from fedleak.identity import identity
from fedleak.store import ResultsDB, RunRecord, run_key
from fedleak.studies.base import STUDIES, Study
from fedleak.studies.folder import DB_NAME, STUDY_FILE, read_meta
from fedleak.studies.planning import Planned, plan


def load_study(folder: Path) -> tuple[Study, str, list[Planned], list[RunRecord]]:
    """Re-create a study from its folder and pick its planned runs' records from the database, in
    plan order (whatever order a backend finished them in). The folder is read as a file someone
    else made: anything damaged is one :class:`FedleakError`."""
    if not (folder / STUDY_FILE).is_file() or not (folder / DB_NAME).is_file():
        raise ConfigError(f"{str(folder)!r} is not a study folder (no {STUDY_FILE} and {DB_NAME})")
    meta = read_meta(folder)
    cls = STUDIES.get(meta["study"])
    try:
        study = cls(cls.Settings.model_validate(meta["settings"], strict=True))  # as written: no "1" for 1
    except ValidationError as exc:
        raise ConfigError(f"{folder / STUDY_FILE}: {describe_validation_error(exc, prefix='settings.')}") from None
    study.factories = frozenset()  # a folder names no code to import: read, never run (run_study refuses it)
    planned = plan(study)
    with ResultsDB(folder / DB_NAME, create=False) as db:
        stored = db.records(study.name)
    by_key = {r.key: r for r in stored}
    for old_key, p in legacy_keys(stored, study, planned).items():  # an older database, read as it is
        by_key.setdefault(p.key, by_key[old_key])
    records = [by_key[p.key] for p in planned if p.key in by_key]
    return study, meta["preset"], planned, records


def legacy_keys(records: list[RunRecord], study: Study, planned: list[Planned]) -> dict[str, Planned]:
    """Old key → planned run, for the records of a database written before keys left ``data.root``
    out. A record is matched only when its stored config, with its own data root put back into the
    plan's, hashes to its old key exactly."""
    known = {p.key for p in planned}
    by_name = {p.run.name: p for p in planned}
    found = {}
    for record in records:
        p = by_name.get(record.name)
        if record.key in known or p is None:
            continue
        stored = record.config.get("data")
        root = stored.get("root") if isinstance(stored, dict) else None
        config = identity(p.spec.config, {"data.root": root})  # keyed as then: the device in, its own root
        if run_key(study.name, {"kind": p.spec.kind, "config": config, "extra": p.spec.extra}) == record.key:
            found[record.key] = p
    return found
