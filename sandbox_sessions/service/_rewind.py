"""Edits of a session's history that are not turns: revert and unrevert (the workspace with
the conversation), diff, and appending an exported history (import).

Each holds the session as a turn would (`Turns.exclusive`: here and, through the turn lease,
in other processes), so none runs while a turn does (`SessionBusy`), and each is recorded in
the event log (`reverted`, `unreverted`, `message-created`, `messages-hidden`): what a revert
hides is a function of the log (`_projection.Reverts`). The workspace's side is
`agent/_snapshots.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .._exceptions import InvalidArgument, MessageNotFound, NotSupported, SnapshotError
from .._types import (
    AssistantMessage,
    FileDiff,
    Message,
    MessageCreatedEvent,
    MessagesHiddenEvent,
    RevertedEvent,
    RevertInfo,
    SnapshotPart,
    UnrevertedEvent,
    UserMessage,
)
from .._validation import check_text
from ..agent._history import new_id
from ._sessions import check_usable
from ._turns import Turns

__all__ = ["MAX_IMPORTED", "Rewind"]


class Rewind:
    """Revert, unrevert, diff and import, for the sessions `Turns` runs."""

    def __init__(self, turns: Turns) -> None:
        self._turns = turns

    async def import_messages(self, session_id: str, messages: Sequence[Message], *,
                              hidden: Sequence[str] = ()) -> int:
        """Append `messages` (an export's history) to the session as `message-created`
        events, under the session's turn lease: not while a turn runs (`SessionBusy`). Each
        gets a new id and this session's id, and a user message loses its snapshot (a tree of
        another container's repository: revert cannot go back into an imported history); an
        assistant message's `parent_id` must name a user message given before it. The given
        ids in `hidden` (an answer always with its prompt) are then hidden for good, by one
        `messages-hidden` event, as the revert that hid them in the source did. A rule broken
        is an `InvalidArgument`, and nothing is added."""
        renamed, ids = _renamed(session_id, messages)
        to_hide = _hidden(messages, hidden, ids)
        async with self._turns.exclusive(session_id):
            for message in renamed:
                self._turns.events.emit(session_id, MessageCreatedEvent, message=message)
            if to_hide:
                self._turns.events.emit(session_id, MessagesHiddenEvent, message_ids=to_hide)
            await self._turns.events.flush()
        return len(renamed)

    async def _check_builtin(self, session_id: str, what: str) -> None:
        """`NotSupported` for a harness's session: its CLI keeps a history of its own, which
        a revert would not change."""
        info = await self._turns.sessions.get_info(session_id)
        if info.config.harness != "builtin":
            raise NotSupported(f"a {info.config.harness} session cannot {what}: its CLI keeps "
                               "its own history in the sandbox, which we cannot rewind")

    async def revert(self, session_id: str, message_id: str) -> RevertInfo:
        """Put the workspace back as it was when the user message `message_id` was sent and
        hide that message and every later one (a `reverted` event; the log keeps them)."""
        check_text(message_id, "message id", empty=False)
        await self._check_builtin(session_id, "revert")
        async with self._turns.exclusive(session_id):
            await self._turns.events.flush()
            view = await self._turns.views.current(session_id)
            target = next((m for m in view.messages() if m.id == message_id), None)
            pending = view.pending_revert()
            if target is None:
                raise MessageNotFound(session_id, message_id)
            if not isinstance(target, UserMessage):
                raise InvalidArgument(f"{message_id!r} is an assistant message: revert takes "
                                      "the id of a user message (the prompt to go back before)")
            snapshot = _snapshot_of(target)
            if snapshot is None:
                raise SnapshotError(f"message {message_id!r} has no snapshot of the workspace "
                                    "(sent with AgentConfig.snapshots off, or it failed)")
            snapshots = await self._turns.snapshots(await self._turns.sessions.get_info(session_id))
            before, files = await snapshots.restore(snapshot)
            revert = RevertInfo(message_id=message_id, snapshot=snapshot,
                                before=before.tree if pending is None else pending.before,
                                files=files, skipped=before.large)
            self._turns.events.emit(session_id, RevertedEvent, revert=revert)
            await self._turns.events.flush()
        return revert

    async def unrevert(self, session_id: str) -> RevertInfo:
        """Undo the pending revert: its messages are shown again and the workspace is put
        back as it was before it. `InvalidArgument` when none is pending (a message sent
        after a revert makes it final)."""
        await self._check_builtin(session_id, "unrevert")
        async with self._turns.exclusive(session_id):
            await self._turns.events.flush()
            pending = (await self._turns.views.current(session_id)).pending_revert()
            if pending is None:
                raise InvalidArgument("nothing to unrevert: no revert is pending (a message "
                                      "sent after a revert makes it final)")
            snapshots = await self._turns.snapshots(await self._turns.sessions.get_info(session_id))
            await snapshots.restore(pending.before)
            self._turns.events.emit(session_id, UnrevertedEvent, message_id=pending.message_id,
                             snapshot=pending.before)
            await self._turns.events.flush()
        return pending

    async def diff(self, session_id: str, message_id: str | None = None) -> list[FileDiff]:
        """The files that differ between the workspace now and when `message_id` (a user
        message) was sent; by default, the session's first snapshot. Empty when the session
        has none yet."""
        info = await self._turns.sessions.get_info(session_id)
        check_usable(info)
        await self._turns.events.flush()
        messages = (await self._turns.views.current(session_id)).messages(hidden=message_id is None)
        if message_id is None:
            since = next((snap for m in messages if (snap := _snapshot_of(m))), None)
            if since is None:
                return []
        else:
            check_text(message_id, "message id", empty=False)
            target = next((m for m in messages if m.id == message_id), None)
            if target is None:
                raise MessageNotFound(session_id, message_id)
            since = _snapshot_of(target)
            if since is None:
                raise SnapshotError(f"message {message_id!r} has no snapshot of the workspace")
        _, diffs = await (await self._turns.snapshots(info)).diff(since)
        return diffs


MAX_IMPORTED = 100_000
"""Messages one import may add."""


def _renamed(session_id: str, messages: Sequence[Message]
             ) -> tuple[list[Message], dict[str, str]]:
    """The messages with new ids, this session's id and their parents mapped; and the map
    from given ids to new ones."""
    if len(messages) > MAX_IMPORTED:
        raise InvalidArgument(f"at most {MAX_IMPORTED} messages are imported at once")
    ids: dict[str, str] = {}
    users: set[str] = set()
    renamed: list[Message] = []
    for message in messages:
        if message.id in ids:
            raise InvalidArgument(f"message id {message.id[:80]!r} is given twice")
        ids[message.id] = new_id("msg")
        changes: dict[str, object] = {"id": ids[message.id], "session_id": session_id}
        if isinstance(message, AssistantMessage):
            parent = ids.get(message.parent_id)
            if parent is None or parent not in users:
                raise InvalidArgument(f"assistant message {message.id[:80]!r} answers no user "
                                      "message given before it")
            changes["parent_id"] = parent
            # a harness's conversation lives in the source's container, not this one
            changes["conversation_id"] = None
        else:
            users.add(ids[message.id])
            # its snapshot is a tree of another container's shadow repository
            changes["parts"] = [p for p in message.parts if not isinstance(p, SnapshotPart)]
        renamed.append(message.model_copy(update=changes))
    return renamed, ids


def _hidden(messages: Sequence[Message], hidden: Sequence[str], ids: Mapping[str, str]
            ) -> list[str]:
    """The new ids of the given messages named in `hidden`, checked: each given, once, and
    an answer hidden exactly when its prompt is (a revert hides a prompt with its answers)."""
    wanted = set(hidden)
    if len(wanted) != len(hidden):
        raise InvalidArgument("a hidden message id is named twice")
    unknown = next((i for i in hidden if i not in ids), None)
    if unknown is not None:
        raise InvalidArgument(f"hidden message id {unknown[:80]!r} is not among the messages "
                              "given")
    for message in messages:
        if isinstance(message, AssistantMessage) and (
                (message.id in wanted) != (message.parent_id in wanted)):
            raise InvalidArgument(f"assistant message {message.id[:80]!r} must be hidden "
                                  "exactly when the user message it answers is")
    return [ids[i] for i in hidden]


def _snapshot_of(message: Message) -> str | None:
    """The workspace's snapshot a user message was sent with, if any."""
    return next((part.snapshot for part in message.parts if isinstance(part, SnapshotPart)),
                None)
