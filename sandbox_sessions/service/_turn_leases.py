"""Turn leases: one turn per session at a time across processes, and every turn ends.

A turn runs under a `turn` lease in the store, renewed every `HEARTBEAT` seconds by the client
that runs it and released once the turn's closing events are stored. A lease whose owner is
gone (its process died on this machine, or it stopped renewing) marks an interrupted turn. The
first client to notice it (opening the session, listing sessions, starting a turn) takes the
lease over by compare-and-swap, so exactly one closes the turn: `tool-end` (error
`interrupted`) for its open tool parts, `message-updated`, `turn-end` with reason `error`,
`session-status: idle`, appended through the event log like any other events.

The command an interrupted turn was running dies with its process: the helper in the container
kills what it runs when its host connection closes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

import anyio
import anyio.abc

from .._exceptions import SessionBusy, StoreError
from .._types import (
    AssistantMessage,
    MessageUpdatedEvent,
    SessionStatusEvent,
    StepFinishPart,
    Tokens,
    ToolEndEvent,
    ToolPart,
    TurnEndEvent,
)
from ..store.base import Lease, Store
from ._eventlog import EventLog
from ._leases import HEARTBEAT, TURN_LEASE, Owner, is_stale, new_lease
from ._projection import project

__all__ = ["INTERRUPTED", "Hold", "TurnLeases"]

log: logging.Logger = logging.getLogger("sandbox_sessions.turns")

INTERRUPTED = "interrupted: the process running this turn is gone"
"""The error of a turn closed because its process died."""
RELEASE_RETRY = 2.0
"""Seconds between two attempts to release a lease whose last events are not stored yet."""


class Hold:
    """A lease this client holds and renews until it is released (or lost)."""

    def __init__(self, lease: Lease, on_lost: Callable[[], object]) -> None:
        self.lease = lease
        self.lost = False
        """Another client took the lease over (it thought this one gone)."""
        self.over = False
        """The work is done: release once its events are stored."""
        self._on_lost = on_lost
        self.scope = anyio.CancelScope()

    def lose(self) -> None:
        self.lost = True
        self._on_lost()


class TurnLeases:
    """The turn leases of one client: taking, renewing, releasing, and closing the turns of
    owners that are gone."""

    def __init__(self, store: Store, events: EventLog, task_group: anyio.abc.TaskGroup) -> None:
        self._store = store
        self._events = events
        self._task_group = task_group
        self.owner: Owner = Owner.current()
        self._held: dict[str, Hold] = {}
        self._settled: set[str] = set()

    def creation(self, session_id: str) -> Lease:
        """A fresh `create` lease on a new session, owned by this client."""
        return new_lease(self.owner, session_id, "create")

    def stale(self, lease: Lease) -> bool:
        """Whether `lease` marks work nobody does any more."""
        if lease.owner == str(self.owner):  # ours: alive exactly while we hold it
            hold = self._held.get(lease.session_id)
            return hold is None or hold.lease.holder != lease.holder
        return is_stale(lease)

    async def running_elsewhere(self, session_id: str) -> bool:
        """Whether another client (of this process or another) runs a turn of the session."""
        lease = await self._store.get_lease(session_id)
        return (lease is not None and lease.kind == "turn" and lease.owner != str(self.owner)
                and not self.stale(lease))

    async def acquire(
        self, session_id: str, *, message_id: str, after: int, on_lost: Callable[[], object]
    ) -> Hold:
        """Take the session's turn lease for the turn `message_id`, closing first an interrupted
        turn that holds it; `SessionBusy` when a live turn (here or elsewhere) or the session's
        creation holds it. `on_lost` is called if the lease is ever taken over."""
        held = self._held.get(session_id)
        if held is not None and held.over and await self._released(held):
            held.scope.cancel()  # the last turn's events are stored now: its lease is free
        if session_id in self._held:
            raise SessionBusy(session_id)
        lease = new_lease(self.owner, session_id, "turn", holder=message_id, after=after)
        for _ in range(3):
            current = await self._store.take_lease(lease)
            if current is None:
                return self._hold(lease, on_lost)
            if current.kind == "create":
                raise SessionBusy(session_id, reason="is still being created")
            if not self.stale(current):
                raise SessionBusy(session_id)
            await self._recover(current)
        raise SessionBusy(session_id)

    async def release(self, hold: Hold, *, stored: bool = True) -> None:
        """Release the lease once every event emitted so far is stored. Never raises: while the
        store fails (or, with `stored=False`, is known to be failing), the lease is kept (and
        renewed) and released in the background."""
        if hold.lost:
            return
        hold.over = True
        if stored and await self._released(hold):
            hold.scope.cancel()

    async def settle(self, session_id: str) -> None:
        """On a session's first use by this client: close its turn if its owner is gone.

        A store failure is logged, not raised: the session is looked at again next time.
        """
        if session_id in self._settled:
            return
        try:
            lease = await self._store.get_lease(session_id)
            if lease is not None and lease.kind == "turn":
                if not self.stale(lease):
                    if lease.owner != str(self.owner):
                        return  # alive elsewhere: look again next time
                else:
                    await self._recover(lease)
        except StoreError as exc:
            log.warning("session %s: could not close an interrupted turn: %s", session_id, exc)
            return
        self._settled.add(session_id)

    async def settle_all(self) -> None:
        """Close every turn of the store whose owner is gone (when sessions are listed)."""
        for lease in await self._store.list_leases():
            if lease.kind == "turn" and self.stale(lease):
                try:
                    await self._recover(lease)
                except StoreError as exc:
                    log.warning("session %s: could not close an interrupted turn: %s",
                                lease.session_id, exc)

    async def aclose(self) -> None:
        """Stop renewing; release what can be released now. A lease left behind expires."""
        with anyio.CancelScope(shield=True):
            for hold in list(self._held.values()):
                hold.scope.cancel()
                if hold.over:
                    with anyio.move_on_after(15):
                        await self._released(hold)  # else the lease is left to expire
            self._held.clear()

    def _hold(self, lease: Lease, on_lost: Callable[[], object]) -> Hold:
        hold = self._held[lease.session_id] = Hold(lease, on_lost)
        self._task_group.start_soon(self._keep, hold)
        return hold

    def _drop(self, hold: Hold) -> None:
        if self._held.get(hold.lease.session_id) is hold:
            del self._held[hold.lease.session_id]

    async def _keep(self, hold: Hold) -> None:
        """Renew the lease until it is released, or lost; release it once its events are
        stored."""
        with hold.scope:
            while True:
                await anyio.sleep(RELEASE_RETRY if hold.over else HEARTBEAT)
                if hold.over and await self._released(hold):
                    return
                if not await self._renewed(hold):
                    return

    async def _released(self, hold: Hold) -> bool:
        try:
            await self._events.flush()
            await self._store.release_lease(hold.lease)
        except StoreError as exc:
            log.warning("session %s: lease kept until its events are stored: %s",
                        hold.lease.session_id, exc)
            return False
        self._drop(hold)
        return True

    async def _renewed(self, hold: Hold) -> bool:
        """Renew the lease; False once it is lost (taken over by another client)."""
        renewed = replace(hold.lease, expires=time.time() + TURN_LEASE)
        try:
            held = await self._store.renew_lease(renewed)
        except StoreError as exc:
            log.warning("session %s: lease not renewed: %s", hold.lease.session_id, exc)
            return True
        if held:
            hold.lease = renewed
            return True
        log.warning("session %s: turn lease taken over by another client",
                    hold.lease.session_id)
        self._drop(hold)
        hold.lose()
        return False

    async def _recover(self, stale: Lease) -> None:
        """Take the lease over from its gone owner and close its turn, unless another client
        got there first."""
        takeover = replace(stale, owner=str(self.owner), expires=time.time() + TURN_LEASE)
        if await self._store.take_lease(takeover, replacing=stale) is not None:
            return  # another client is on it, or the lease moved on
        log.warning("session %s: closing turn %s, whose process is gone", stale.session_id,
                    stale.holder)
        hold = self._hold(takeover, lambda: None)
        try:
            await close_turn(self._events, stale)
        except BaseException:
            # Keep the lease unreleased: it expires, and someone tries again.
            hold.scope.cancel()
            self._drop(hold)
            raise
        with anyio.CancelScope(shield=True):
            await self.release(hold)


async def close_turn(events: EventLog, lease: Lease) -> None:
    """Emit the closing events of the interrupted turn `lease` names, unless its `turn-end`
    is already stored (a previous closer died after writing it) or nothing of it was."""
    session_id = lease.session_id
    await events.refresh(session_id)
    history = await events.history(session_id, after=lease.after)
    if any(isinstance(e, TurnEndEvent) and e.message_id == lease.holder for e in history):
        return
    message = next((m for m in project(history) if m.id == lease.holder), None)
    if not isinstance(message, AssistantMessage):
        return  # its start was never stored: nobody saw this turn begin
    now = time.time()
    tokens, cost = Tokens(), 0.0
    for part in message.parts:
        if isinstance(part, StepFinishPart):
            tokens, cost = tokens + part.tokens, cost + part.cost
        if isinstance(part, ToolPart) and part.state.status in ("pending", "running"):
            state = part.state.model_copy(
                update={"status": "error", "error": "interrupted", "time_end": now})
            events.emit(session_id, ToolEndEvent, message_id=message.id,
                        part=part.model_copy(update={"state": state}))
    header = message.model_copy(update={"parts": [], "time_completed": now, "tokens": tokens,
                                        "cost": cost, "error": INTERRUPTED})
    events.emit(session_id, MessageUpdatedEvent, message=header)
    events.emit(session_id, TurnEndEvent, message_id=message.id, reason="error",
                error=INTERRUPTED)
    events.emit(session_id, SessionStatusEvent, status="idle")
