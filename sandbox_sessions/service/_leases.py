"""Who holds a lease, and whether that holder is gone.

A lease's owner is a process token: the machine, the pid, the process's start time (so a reused
pid is not mistaken for the owner) and a random nonce per client. On the owner's own machine
(same host, boot and pid namespace) a dead pid proves the owner gone at once; elsewhere only
an expired lease does, so owners renew theirs (`HEARTBEAT`) well before `TURN_LEASE` runs out.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..store.base import Lease, LeaseKind

__all__ = ["CREATE_LEASE", "HEARTBEAT", "TURN_LEASE", "Owner", "is_stale", "new_lease"]

CREATE_LEASE = 300.0
"""Seconds a session may stay `creating` before the reaper may take its container (a creator
on this machine that died is taken at once)."""
TURN_LEASE = 60.0
"""Seconds a turn's lease lasts unless renewed."""
HEARTBEAT = 10.0
"""Seconds between two renewals of a running turn's lease."""


@cache
def _machine() -> str:
    """Equal for two processes exactly when their pids can be compared: same host, same boot,
    same pid namespace (two containers sharing a store are two machines)."""
    parts = [socket.gethostname()]
    for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(Path(source).read_text().strip() if "boot" in source
                         else os.readlink(source))
        except OSError:
            parts.append("")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _started(pid: int) -> str | None:
    """The process's start time (clock ticks since boot); None when it is dead or a zombie,
    "" when this system cannot say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None if Path("/proc/self/stat").exists() else _signal_probe(pid)
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()  # the name, in parentheses, may hold spaces
    if len(fields) < 20:
        return ""
    return None if fields[0] in ("Z", "X") else fields[19]


def _signal_probe(pid: int) -> str | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:  # it exists, but is not ours to signal
        return ""
    return ""


@dataclass(frozen=True, slots=True)
class Owner:
    """A lease owner: one client of one process. `str()` is what the store keeps."""

    machine: str
    pid: int
    started: str
    nonce: str

    @classmethod
    def current(cls) -> Owner:
        """A new owner for this process (each client makes its own)."""
        pid = os.getpid()
        return cls(machine=_machine(), pid=pid, started=_started(pid) or "",
                   nonce=secrets.token_hex(4))

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        """The owner a stored string names; None when it is not one of ours."""
        parts = text.split("/")
        if len(parts) != 4 or not parts[1].isdigit():
            return None
        return cls(machine=parts[0], pid=int(parts[1]), started=parts[2], nonce=parts[3])

    def __str__(self) -> str:
        return f"{self.machine}/{self.pid}/{self.started}/{self.nonce}"

    def gone(self) -> bool:
        """True only when this owner's process provably no longer runs: it ran on this
        machine and its pid is dead, or now names another process."""
        if self.machine != _machine():
            return False
        started = _started(self.pid)
        return started is None or bool(started and self.started and started != self.started)


def is_stale(lease: Lease, *, now: float | None = None) -> bool:
    """Whether the lease's owner is gone: its process died here, or it stopped renewing."""
    owner = Owner.parse(lease.owner)
    if owner is not None and owner.gone():
        return True
    return lease.expires < (time.time() if now is None else now)


def new_lease(
    owner: Owner, session_id: str, kind: LeaseKind, *, holder: str = "", after: int = 0
) -> Lease:
    """A lease of `kind` on the session for `owner`, running for the kind's full term."""
    term = CREATE_LEASE if kind == "create" else TURN_LEASE
    return Lease(session_id=session_id, kind=kind, owner=str(owner),
                 expires=time.time() + term, holder=holder, after=after)
