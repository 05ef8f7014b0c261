"""Who may do a run: a process *claims* it before it starts (a row in ``claims`` naming the owner's
host, pid and a token). Others skip a claimed run; a claim whose owner died (its pid is gone on this
host) or that is older than ``stale_after`` seconds may be taken over, so a killed study never blocks
the next one."""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

STALE_AFTER = 24 * 3600.0  # a claim older than this is taken over even when its owner cannot be checked


@dataclass(frozen=True)
class Owner:
    """Who holds a claim: a process on a host, with a token unique to this study invocation and the
    time the invocation started (failures recorded since then are not retried by it)."""

    host: str
    pid: int
    token: str
    started: float = field(default_factory=time.time, compare=False)

    @classmethod
    def me(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex)


class Claim(Enum):
    """What :meth:`ResultsDB.claim` found: the run is finished, now ours, another's, or failed
    during this invocation (this one or another process sharing the folder tried it)."""

    DONE = "done"
    MINE = "mine"
    BUSY = "busy"
    FAILED = "failed"


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host (a zombie — dead but not yet reaped — counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS): trust the signal check
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def owner_alive(host: str, pid: int, token: str, me: Owner) -> bool:
    if host != me.host:
        return True  # cannot be checked from here: only ``stale_after`` frees it
    if pid == me.pid:
        return token == me.token  # an earlier, finished study call of this same process is gone
    return _process_alive(pid)

