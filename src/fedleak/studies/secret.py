"""Each study folder's client secret, and the private client seeds of its runs.

A client's seed decides which images it draws and the noise its defense adds; an attacker who can
compute it regenerates the noise and recovers the images. So no client seed of a study or sweep is
computable from anything public — the study's settings (``study.json``), a run's flags or key, the
payload's hyperparameters, the run seed. Each folder holds a secret (:data:`SECRET_FILE`, 256 bits
from :mod:`secrets`, readable by its owner only: mode 0600), drawn once when the first study runs
into the folder and kept with the auditor's records (``results.sqlite``); it never enters
``study.json``, a run's config before it executes, or a payload. A run's client seed is an
HMAC-SHA256 of the secret over the study's ``client_seed`` setting (still a user setting, mixed in)
and the run's seed scope (:attr:`~fedleak.run_unit.PlannedRun.seed_scope`, by default the run's
key). The driver derives it and it travels with the run (:attr:`fedleak.run_unit.RunSpec.client_seed`,
no part of the run's key), so a Ray worker never reads the folder; the run records the seed it used
(``metrics.client_seed`` and the stored config), so it repeats exactly.

Resuming a folder reuses its secret: the same seeds, nothing redone. Copy the secret with the folder
(or into a new folder with its ``study.json``) to repeat its runs elsewhere; whoever holds it can
compute every client seed of the folder, so share it as you would the client data.

Folders written before the secret existed get one drawn when a study next runs into them. Their
finished runs whose keys held no client seed (studies without ``client_seed``: each run drew its own
from OS entropy) are kept; runs whose key held a seed derived from public settings (``client_seed``
set, e.g. the secure-aggregation presets, ``fedleak sweep --client-seed``) no longer match the plan
and are done again with secret seeds; their old rows stay in the database, unreported (``--force``
removes them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import Any

from fedleak.errors import FedleakError
from fedleak.store.folders import write_private_once
from fedleak.studies.base import Study
from fedleak.studies.planning import Planned

SECRET_FILE = "client-secret"
SECRET_BYTES = 32


def read_secret(folder: Path) -> bytes | None:
    """The folder's client secret, ``None`` when it has none yet; a damaged one is an error."""
    path = Path(folder) / SECRET_FILE
    try:
        text = path.read_bytes()[: 4 * SECRET_BYTES].decode("ascii").strip()
        secret = bytes.fromhex(text)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError):
        secret = b""
    if len(secret) != SECRET_BYTES:
        raise FedleakError(f"{path} is damaged (not {SECRET_BYTES} hex-encoded bytes): restore it from a copy, "
                           "or remove it to give the runs not yet finished new client seeds")
    return secret


def folder_secret(folder: Path, new: bytes | None = None) -> bytes:
    """The folder's client secret, drawn now (or ``new``, to repeat another folder's runs) when it has
    none; several processes starting on one folder at once agree on one."""
    secret = read_secret(folder)
    if secret is not None:
        if new is not None and new != secret:
            raise FedleakError(f"{Path(folder) / SECRET_FILE} holds another client secret than the one given")
        return secret
    chosen = new if new is not None else secrets.token_bytes(SECRET_BYTES)
    if len(chosen) != SECRET_BYTES:
        raise FedleakError(f"a client secret is {SECRET_BYTES} bytes, got {len(chosen)}")
    write_private_once(Path(folder) / SECRET_FILE, chosen.hex() + "\n")
    return read_secret(folder) or chosen  # whoever wrote first


def client_seed(secret: bytes, root: int | None, scope: dict[str, Any]) -> int:
    """A 63-bit private client seed: HMAC-SHA256 of the secret over ``root`` (the ``client_seed``
    setting) and ``scope`` (the run's seed scope)."""
    text = json.dumps([root, scope], sort_keys=True, default=str)
    return int.from_bytes(hmac.new(secret, text.encode(), hashlib.sha256).digest()[:8], "big") >> 1


def seed_runs(study: Study, planned: list[Planned], secret: bytes) -> None:
    """Give every planned run its private client seed (on its spec, which the run records): a run
    whose config names a client seed itself (``client.seed`` set by the user) keeps that one."""
    root = getattr(study.settings, "client_seed", None)
    for p in planned:
        if p.config.client.seed is not None:
            continue
        scope = p.run.seed_scope if p.run.seed_scope is not None else {"key": p.key}
        p.spec = dataclasses.replace(p.spec, client_seed=client_seed(secret, root, scope))
