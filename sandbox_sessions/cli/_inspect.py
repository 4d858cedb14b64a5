"""The commands that look into a session or answer it: `sessions show`, `sessions messages`,
`sessions events`, `command run` and `command list`, `reply` and `answer`.

`sessions events` without `--follow` prints the events stored when it started and exits: it
reads the session's stream until the first event stored after it started, or until the stream
has been quiet for `QUIET` seconds (the stored ones come back at once). With `--follow` it
tails the live events until Ctrl-C, and exits 130 then, as every command stopped by Ctrl-C.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import cast

import anyio
import click

from .._types import (
    ArtifactCreatedEvent,
    AssistantMessage,
    CommandTemplate,
    CompactionPart,
    Event,
    Message,
    MessageCreatedEvent,
    MessageUpdatedEvent,
    Part,
    PatchPart,
    PermissionAskedEvent,
    PermissionRepliedEvent,
    PermissionReply,
    QuestionAskedEvent,
    ReasoningDeltaEvent,
    ReasoningPart,
    RetryPart,
    SessionInfo,
    SessionStatusEvent,
    ShellRunEvent,
    StepFinishEvent,
    StepFinishPart,
    SubtaskPart,
    TextDeltaEvent,
    TextPart,
    ToolEndEvent,
    ToolPart,
    ToolRunningEvent,
    ToolStartEvent,
    TurnEndEvent,
)
from ..client import AsyncSandboxClient
from ..client._commands import COMMAND_TIMEOUT
from ._app import cli, common, open_client, settings
from ._basic import sessions
from ._output import Output, output

__all__ = ["QUIET", "event_line", "info_block", "message_lines"]

QUIET = 1.0
"""Seconds without an event after which `sessions events` (no `--follow`) has read them all."""
TRIM = 400
"""Characters of a tool's input or output shown by `sessions messages` (plain)."""


# --- sessions show ---------------------------------------------------------------------------


def info_block(info: SessionInfo) -> str:
    """A session's record as aligned `name  value` lines."""
    rows = [
        ("id", info.id), ("title", info.title), ("agent", info.agent),
        ("status", info.status), ("created", f"{info.time_created:%Y-%m-%d %H:%M:%S %Z}"),
        ("updated", f"{info.time_updated:%Y-%m-%d %H:%M:%S %Z}"),
        ("model", info.config.model or "-"), ("image", info.sandbox.image),
        ("network", "yes" if info.sandbox.network else "none"),
        ("container", (info.container_id or "-")[:12]),
        ("tokens", f"{info.tokens.input} in, {info.tokens.output} out"),
        ("cost", f"${info.cost:.4f}"),
    ]
    if info.parent_id:
        rows.append(("parent", info.parent_id))
    if info.archived or info.pinned:
        rows.append(("flags", " ".join(f for f, on in (("archived", info.archived),
                                                         ("pinned", info.pinned)) if on)))
    if info.config.permissions:
        rows.append(("permissions", json.dumps(info.config.permissions)))
    rows.extend((f"meta {key}", value) for key, value in sorted(info.metadata.items()))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


@sessions.command("show")
@common
@click.argument("session_id", metavar="SESSION")
def sessions_show(session_id: str) -> None:
    """A session's record: status, agent, model, image, container, usage."""
    out = output()
    with open_client() as client:
        info = client.session(session_id).get_info()
    out.result(info, lambda: info_block(info))


# --- sessions messages -----------------------------------------------------------------------


def _trim(text: str, limit: int = TRIM) -> str:
    text = text.rstrip()
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more)"


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).strftime("%H:%M:%S")


def message_header(message: Message) -> str:
    """A message's first line: role, id, time, and for an answer its model and ending."""
    head = f"── {message.role} {message.id}  {_stamp(message.time_created)}"
    if isinstance(message, AssistantMessage):
        ending = message.error or message.finish_reason or "running"
        head += (f"  {message.model}, {ending}, {message.tokens.input} in / "
                 f"{message.tokens.output} out tokens")
    elif message.command is not None:
        head += f"  (command {message.command.name})"
    return head


def part_lines(part: Part) -> list[tuple[str, str | None]]:
    """A part as lines with their style (None: plain)."""
    if isinstance(part, TextPart):
        return [(part.text, None)]
    if isinstance(part, ReasoningPart):
        return [(f"  (reasoning) {line}", "dim") for line in part.text.splitlines()]
    if isinstance(part, ToolPart):
        return _tool_lines(part)
    if isinstance(part, StepFinishPart):
        return [(f"  · step: {part.reason}, {part.tokens.input} in / {part.tokens.output} "
                 "out tokens", "dim")]
    if isinstance(part, PatchPart):
        return [(f"  · files changed: {', '.join(part.files)}", "dim")]
    if isinstance(part, CompactionPart):
        return [(f"  · summary: {_trim(part.summary)}", "dim")]
    if isinstance(part, SubtaskPart):
        return [(f"  · subtask ({part.agent}) {part.session_id or ''}: {_trim(part.prompt)}",
                 None)]
    if isinstance(part, RetryPart):
        return [(f"  · retry {part.attempt} in {part.delay:.1f} s: {part.error}", "yellow")]
    return []  # step-start, snapshot, file, agent: nothing a reader needs


def _tool_lines(part: ToolPart) -> list[tuple[str, str | None]]:
    state = part.state
    style = {"completed": "green", "error": "red"}.get(state.status, "yellow")
    lines: list[tuple[str, str | None]] = [
        (f"  ⚙ {part.tool} {_trim(json.dumps(state.input, ensure_ascii=False))} "
         f"[{state.status}]", style)]
    shown = state.error if state.status == "error" else state.output
    lines.extend((f"    {line}", "dim") for line in _trim(shown or "").splitlines())
    return lines


def message_lines(message: Message) -> list[tuple[str, str | None]]:
    """A message as styled lines: its header, then its parts."""
    lines: list[tuple[str, str | None]] = [(message_header(message), "bold")]
    for part in message.parts:
        lines.extend(part_lines(part))
    return lines


@sessions.command("messages")
@common
@click.argument("session_id", metavar="SESSION")
@click.option("--hidden", is_flag=True, help="Include the messages a revert hides.")
def sessions_messages(session_id: str, hidden: bool) -> None:
    """A session's messages with their parts: text, reasoning, tool calls and results."""
    out = output()
    with open_client() as client:
        messages = client.session(session_id).get_messages(hidden=hidden)
    for message in messages:
        if out.json:
            out.emit(message)
            continue
        for text, style in message_lines(message):
            out.line(text, style=style)


# --- sessions events -------------------------------------------------------------------------


def event_line(event: Event) -> str:
    """An event as one line: seq, time, type and what it says."""
    return f"{event.seq:>6}  {_stamp(event.time)}  {event.type:<18}  {_event_detail(event)}"


def _event_detail(event: Event) -> str:
    if isinstance(event, TextDeltaEvent | ReasoningDeltaEvent):
        return json.dumps(_trim(event.delta, 120), ensure_ascii=False)
    if isinstance(event, ToolStartEvent | ToolRunningEvent | ToolEndEvent):
        return f"{event.part.tool} {event.part.call_id} {event.part.state.status}"
    if isinstance(event, MessageCreatedEvent | MessageUpdatedEvent):
        return f"{event.message.role} {event.message.id}"
    if isinstance(event, PermissionAskedEvent):
        return f"{event.request.id} {event.request.tool}: {' | '.join(event.request.patterns)}"
    if isinstance(event, PermissionRepliedEvent):
        return f"{event.request_id} {event.reply}" + (f": {event.message}"
                                                      if event.message else "")
    if isinstance(event, QuestionAskedEvent):
        return f"{event.request.id}: {event.request.question}"
    if isinstance(event, TurnEndEvent):
        return event.reason + (f": {event.error}" if event.error else "")
    if isinstance(event, SessionStatusEvent):
        return event.status
    if isinstance(event, ShellRunEvent):
        return f"exit {event.exit_code}: {_trim(event.command, 120)}"
    if isinstance(event, ArtifactCreatedEvent):
        return f"{event.artifact.key} ({event.artifact.size} bytes)"
    if isinstance(event, StepFinishEvent):
        return (f"{event.part.reason}, {event.part.tokens.input} in / "
                f"{event.part.tokens.output} out tokens")
    return ""


def _show_event(out: Output, event: Event) -> None:
    if out.json:
        out.emit(event)
    else:
        out.line(event_line(event))


async def _read_events(out: Output, session_id: str, after: int, follow: bool) -> None:
    opts = settings()
    started = time.time()
    async with AsyncSandboxClient(base_url=opts.url, store=opts.store,
                                  reap_orphans=False) as client:
        handle = client.session(session_id)
        await handle.get_info()  # an unknown session fails here, not in the stream
        events = handle.events(after=after)
        try:
            if follow:
                async for event in events:
                    _show_event(out, event)
            else:
                await _stored(out, events, started)
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()


async def _stored(out: Output, events: AsyncIterator[Event], started: float) -> None:
    """The events stored before `started`: up to the first later one, or a quiet stream."""
    while True:
        with anyio.move_on_after(QUIET):
            event = await anext(events)
            if event.time > started:
                return
            _show_event(out, event)
            continue
        return


@sessions.command("events")
@common
@click.argument("session_id", metavar="SESSION")
@click.option("--after", type=click.IntRange(min=0), default=0, metavar="SEQ",
              help="Only the events after this seq (resume where you left off).")
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing live events until Ctrl-C (exit 130).")
def sessions_events(session_id: str, after: int, follow: bool) -> None:
    """A session's event log, one event per line (`--json`: each event as the API has it).

    Without `--follow`, the events stored when the command started, then it exits.
    """
    anyio.run(_read_events, output(), session_id, after, follow)


# --- command run / list ----------------------------------------------------------------------


@cli.group(cls=click.Group)
def command() -> None:
    """Run and list command templates (.sandbox-sessions/commands/*.md)."""


@command.command("run", context_settings={"ignore_unknown_options": True})
@common
@click.argument("session_id", metavar="SESSION")
@click.argument("name")
@click.argument("arguments", nargs=-1, metavar="[ARGS]...")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds each !`cmd` of the template may run.")
def command_run(session_id: str, name: str, arguments: tuple[str, ...],
                timeout: float | None) -> None:
    """Run the command template NAME in a session as one turn; print its answer.

    The text streams to stdout as it comes (on a terminal); the final text follows. Exit 1
    when the turn does not complete, 3 for an unknown template or session.
    """
    out = output()
    streamed: list[str] = []

    def on_text(delta: str) -> None:
        if out.rich:
            streamed.append(delta)
            out.write(delta)

    with open_client() as client:
        handle = client.session(session_id)
        text = handle.run_command(name, list(arguments), on_text=on_text,
                                  timeout=COMMAND_TIMEOUT if timeout is None else timeout)
    if streamed:
        out.line("")
        return
    out.result({"command": name, "session_id": session_id, "text": text}, text)


def template_line(template: CommandTemplate) -> str:
    """A command template as one line: name, agent, description."""
    where = f"  [{template.agent}]" if template.agent else ""
    return f"{template.name:<20}{where}  {template.description or ''}".rstrip()


@command.command("list")
@common
@click.argument("session_id", metavar="[SESSION]", required=False)
def command_list(session_id: str | None) -> None:
    """The command templates (the project's, the user's), by name."""
    out = output()
    with open_client() as client:
        if session_id is None:
            found = client.list_commands()
        else:
            handle = client.session(session_id)
            handle.get_info()  # an unknown session: exit 3
            found = handle.list_commands()
    for template in found:
        if out.json:
            out.emit(template)
        else:
            out.line(template_line(template))


# --- reply / answer --------------------------------------------------------------------------


@cli.command()
@common
@click.argument("session_id", metavar="SESSION")
@click.argument("request_id", metavar="REQUEST_ID")
@click.argument("reply_word", metavar="once|always|reject",
                type=click.Choice(["once", "always", "reject"]))
@click.option("--message", default=None, metavar="TEXT",
              help="With reject: guidance the model gets; the turn goes on.")
def reply(session_id: str, request_id: str, reply_word: str, message: str | None) -> None:
    """Answer a pending permission request (see `sessions events`: permission-asked)."""
    out = output()
    with open_client() as client:
        client.session(session_id).reply_to_permission(
            request_id, cast(PermissionReply, reply_word), message=message)
    out.result({"session_id": session_id, "request_id": request_id, "reply": reply_word,
                "message": message}, f"{request_id}: {reply_word}")


@cli.command()
@common
@click.argument("session_id", metavar="SESSION")
@click.argument("request_id", metavar="REQUEST_ID")
@click.argument("text")
def answer(session_id: str, request_id: str, text: str) -> None:
    """Answer a pending question of the agent (see `sessions events`: question-asked)."""
    out = output()
    with open_client() as client:
        client.session(session_id).reply_to_question(request_id, text)
    out.result({"session_id": session_id, "request_id": request_id, "answer": text},
               f"{request_id}: answered")
