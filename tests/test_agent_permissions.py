"""Permissions in real turns: the broker, the rules and the replies, on real containers.

A scripted model calls `bash`; the session's rules decide whether each call runs, is refused,
or waits for `once`, `always` or `reject` from a callback, a `stream()` consumer, or the
timeout policy. Whether a call ran is checked in the container (the file it writes).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from agent_support import opened, read_log, settled

from sandbox_sessions import (
    AgentConfig,
    AssistantMessage,
    AsyncSandboxClient,
    AsyncSessionHandle,
    Event,
    InvalidArgument,
    PermissionAnswer,
    PermissionNotFound,
    PermissionReply,
    PermissionRequest,
    PermissionRules,
    SandboxClient,
    SendResult,
    SessionHandle,
    StepStartPart,
    ToolPart,
)
from sandbox_sessions._types import (
    PermissionAskedEvent,
    PermissionRepliedEvent,
    SessionUpdatedEvent,
    TurnEndEvent,
)

pytestmark = pytest.mark.docker

anyio_test = pytest.mark.anyio

ASK: PermissionRules = {"bash": "ask"}


def bash(*commands: str) -> dict[str, Any]:
    """A script entry calling bash once per command, in order."""
    return {"tool_calls": [{"name": "bash", "input": {"command": c}} for c in commands]}



class Answers:
    """A sync `on_permission` callback that records each request and gives scripted replies
    (the last one repeats)."""

    def __init__(self, *replies: PermissionAnswer) -> None:
        self.replies = list(replies)
        self.requests: list[PermissionRequest] = []

    def __call__(self, request: PermissionRequest) -> PermissionAnswer:
        self.requests.append(request)
        return self.replies[min(len(self.requests), len(self.replies)) - 1]

    @property
    def commands(self) -> list[str]:
        return [pattern for request in self.requests for pattern in request.patterns]


def tools(result: SendResult) -> list[ToolPart]:
    return [part for part in result.parts if isinstance(part, ToolPart)]


def states(result: SendResult) -> list[tuple[str, str | None]]:
    """(status, error) of each tool call of the turn."""
    return [(part.state.status, part.state.error) for part in tools(result)]


async def exists(session: AsyncSessionHandle, path: str) -> bool:
    return (await session.shell(f"test -e {path}")).exit_code == 0



# --- once, always ------------------------------------------------------------------------------


@anyio_test
async def test_once_allows_one_call_and_asks_again_for_the_next(
    client: AsyncSandboxClient, image: str
) -> None:
    script = [bash("echo a > a.txt", "echo b > b.txt"), {"text": "both written"}]
    answers = Answers("once")
    async with opened(client, image, script, permissions=ASK) as session:
        result = await session.send("write two files", on_permission=answers)
        rules = (await session.get_info()).config.permissions
        written = [await exists(session, "a.txt"), await exists(session, "b.txt")]
        log = await read_log(session, settled(1))

    assert answers.commands == ["echo a > a.txt", "echo b > b.txt"]
    assert (result.reason, result.text) == ("completed", "both written")
    assert states(result) == [("completed", None), ("completed", None)]
    assert written == [True, True]
    assert rules == ASK  # `once` adds no rule
    replied = [event for event in log if isinstance(event, PermissionRepliedEvent)]
    assert [(event.reply, event.message) for event in replied] == [("once", None)] * 2
    asked = [event.request.id for event in log if isinstance(event, PermissionAskedEvent)]
    assert [event.request_id for event in replied] == asked
    assert not [event for event in log if isinstance(event, SessionUpdatedEvent)]


@anyio_test
async def test_always_adds_a_visible_rule_that_update_revokes(
    client: AsyncSandboxClient, image: str
) -> None:
    script = [
        bash("echo 1 > one.txt", "echo 2 > two.txt"), {"text": "turn 1"},
        bash("echo 3 > three.txt"), {"text": "turn 2"},
        bash("echo 4 > four.txt"), {"text": "turn 3"},
    ]
    first, second, third = Answers("always"), Answers("once"), Answers("once")
    async with opened(client, image, script, permissions=ASK) as session:
        turn1 = await session.send("1", on_permission=first)
        rules = (await session.get_info()).config.permissions
        turn2 = await session.send("2", on_permission=second)
        revoked = await session.update(permissions=ASK)
        turn3 = await session.send("3", on_permission=third)
        files = [await exists(session, f"{n}.txt") for n in ("one", "two", "three", "four")]
        log = await read_log(session, settled(3))

    [request] = first.requests  # the second echo of turn 1 was not asked
    assert request.patterns == ["echo 1 > one.txt"]
    assert request.always == ["echo *"]
    assert rules == {"bash": {"*": "ask", "echo *": "allow"}}
    assert second.requests == []  # the stored rule allowed turn 2's echo
    assert revoked.config.permissions == ASK
    assert third.commands == ["echo 4 > four.txt"]  # revoked: asked again
    assert [turn1.reason, turn2.reason, turn3.reason] == ["completed"] * 3
    assert files == [True] * 4
    updates = [event for event in log if isinstance(event, SessionUpdatedEvent)]
    assert [event.config.permissions for event in updates] == [rules, ASK]


# --- reject -----------------------------------------------------------------------------------


@anyio_test
async def test_reject_with_a_message_fails_the_call_and_the_turn_goes_on(
    client: AsyncSandboxClient, image: str
) -> None:
    script = [bash("rm -rf /workspace/src"), {"text": "I will leave src alone."}]
    answers = Answers(("reject", "do not delete sources"))
    async with opened(client, image, script, permissions=ASK) as session:
        await session.put_file("src/main.py", "print('hi')\n")
        result = await session.send("clean up", on_permission=answers)
        kept = await session.get_file("src/main.py")

    assert answers.commands == ["rm -rf /workspace/src"]
    [(status, error)] = states(result)
    assert status == "error"
    assert error is not None
    assert "do not delete sources" in error
    assert (result.reason, result.text) == ("completed", "I will leave src alone.")
    assert kept == "print('hi')\n"


@anyio_test
async def test_reject_without_a_message_ends_the_turn_as_rejected(
    client: AsyncSandboxClient, image: str
) -> None:
    script = [bash("touch first.txt", "touch second.txt"), {"text": "for the next turn"}]
    answers = Answers("reject")
    async with opened(client, image, script, permissions=ASK) as session:
        result = await session.send("touch files", on_permission=answers)
        made = [await exists(session, "first.txt"), await exists(session, "second.txt")]
        log = await read_log(session, settled(1))
        later = await session.send("go on")

    assert answers.commands == ["touch first.txt"]  # the second call was never asked
    assert result.reason == "rejected"
    assert result.text == ""
    assert states(result) == [
        ("error", "rejected by the user"),
        ("error", "not run: the user rejected an earlier call"),
    ]
    assert sum(isinstance(part, StepStartPart) for part in result.parts) == 1  # no next step
    assert made == [False, False]
    ends = [event for event in log if isinstance(event, TurnEndEvent)]
    assert [end.reason for end in ends] == ["rejected"]
    assert "for the next turn" not in str(log)  # the rejected turn took no further step
    assert (later.reason, later.text) == ("completed", "for the next turn")


# --- rules ------------------------------------------------------------------------------------


@anyio_test
async def test_deny_rules_fail_the_call_without_asking(
    client: AsyncSandboxClient, image: str
) -> None:
    rules: PermissionRules = {"bash": {"*": "allow", "rm *": "deny"}}
    script = [bash("rm -f keep.txt", "echo allowed > ok.txt"), {"text": "done"}]
    answers = Answers("once")
    async with opened(client, image, script, permissions=rules) as session:
        await session.put_file("keep.txt", "precious\n")
        result = await session.send("tidy", on_permission=answers)
        kept = await session.get_file("keep.txt")
        ok = await session.get_file("ok.txt")
        log = await read_log(session, settled(1))

    assert answers.requests == []
    assert not [event for event in log if isinstance(event, PermissionAskedEvent)]
    (denied, denial), allowed = states(result)
    assert denied == "error"
    assert denial is not None
    assert "denied" in denial
    assert "rm -f keep.txt" in denial
    assert allowed == ("completed", None)
    assert result.reason == "completed"
    assert (kept, ok) == ("precious\n", "allowed\n")


@anyio_test
async def test_the_last_matching_bash_glob_wins(client: AsyncSandboxClient, image: str) -> None:
    rules: PermissionRules = {"bash": {"*": "ask", "echo *": "allow", "echo secret*": "deny"}}
    script = [
        bash("echo hello > hello.txt", "echo secret > secret.txt", "ls -a"), {"text": "1"},
        bash("echo secret > secret.txt"), {"text": "2"},
    ]
    first, second = Answers("once"), Answers("once")
    async with opened(client, image, script, permissions=rules) as session:
        turn1 = await session.send("1", on_permission=first)
        had_secret = await exists(session, "secret.txt")
        # Reordered, `echo *` comes last and wins over `echo secret*`.
        await session.update(permissions={"bash": {"echo secret*": "deny", "echo *": "allow"}})
        turn2 = await session.send("2", on_permission=second)
        secret = await session.get_file("secret.txt")
        hello = await session.get_file("hello.txt")

    assert first.commands == ["ls -a"]  # only the call that matched `*: ask` last
    hello_state, secret_state, ls_state = states(turn1)
    assert hello_state == ("completed", None)
    assert secret_state[0] == "error"
    assert "denied" in (secret_state[1] or "")
    assert ls_state == ("completed", None)
    assert had_secret is False
    assert hello == "hello\n"
    assert second.requests == []
    assert states(turn2) == [("completed", None)]
    assert secret == "secret\n"


# --- the timeout policy -----------------------------------------------------------------------


@anyio_test
async def test_an_unanswered_request_times_out_as_reject_and_the_turn_goes_on(
    client: AsyncSandboxClient, image: str
) -> None:
    config = AgentConfig(permission_timeout=0.5, on_timeout="reject")
    script = [bash("touch late.txt"), {"text": "went on without it"}]
    async with opened(client, image, script, permissions=ASK, config=config) as session:
        result = await session.send("touch it")  # nobody answers
        made = await exists(session, "late.txt")
        log = await read_log(session, settled(1))

    [(status, error)] = states(result)
    assert status == "error"
    assert error is not None
    assert "permission timeout" in error
    assert (result.reason, result.text) == ("completed", "went on without it")
    assert made is False
    [replied] = [event for event in log if isinstance(event, PermissionRepliedEvent)]
    assert replied.reply == "timeout"
    assert replied.message is not None
    assert "reject" in replied.message


@anyio_test
async def test_an_unanswered_request_times_out_as_allow_and_the_call_runs(
    client: AsyncSandboxClient, image: str
) -> None:
    config = AgentConfig(permission_timeout=0.5, on_timeout="allow")
    script = [bash("echo ran > late.txt"), {"text": "ran it"}]
    async with opened(client, image, script, permissions=ASK, config=config) as session:
        result = await session.send("write it")
        written = await session.get_file("late.txt")
        log = await read_log(session, settled(1))

    assert states(result) == [("completed", None)]
    assert (result.reason, result.text) == ("completed", "ran it")
    assert written == "ran\n"
    [replied] = [event for event in log if isinstance(event, PermissionRepliedEvent)]
    assert replied.reply == "timeout"


# --- how replies arrive -----------------------------------------------------------------------


@anyio_test
async def test_on_permission_may_be_sync_or_async(
    client: AsyncSandboxClient, image: str
) -> None:
    script = [bash("echo sync > sync.txt"), {"text": "1"},
              bash("echo async > async.txt"), {"text": "2"}]
    loop_thread = threading.get_ident()
    threads: list[int] = []
    requests: list[PermissionRequest] = []

    def sync_answer(request: PermissionRequest) -> PermissionAnswer:
        threads.append(threading.get_ident())
        requests.append(request)
        return "once"

    async def async_answer(request: PermissionRequest) -> PermissionAnswer:
        await anyio.lowlevel.checkpoint()
        threads.append(threading.get_ident())
        requests.append(request)
        return "once"

    async with opened(client, image, script, permissions=ASK) as session:
        first = await session.send("1", on_permission=sync_answer)
        second = await session.send("2", on_permission=async_answer)
        files = [await session.get_file("sync.txt"), await session.get_file("async.txt")]

    assert threads[0] != loop_thread  # a sync callback runs in a worker thread
    assert threads[1] == loop_thread  # an async one on the event loop
    assert files == ["sync\n", "async\n"]
    for request, result in zip(requests, (first, second), strict=True):
        [part] = tools(result)
        assert request.session_id == session.id
        assert request.message_id == result.message_id
        assert request.call_id == part.call_id
        assert request.tool == "bash"
        assert request.patterns == [part.state.input["command"]]
        assert request.always == ["echo *"]
        assert request.metadata["input"] == part.state.input
        assert result.reason == "completed"


@anyio_test
async def test_a_stream_consumer_replies_and_a_second_reply_is_refused(
    client: AsyncSandboxClient, image: str
) -> None:
    script = [bash("echo streamed > s.txt"), {"text": "streamed it"}]
    refusals: list[Exception] = []
    async with opened(client, image, script, permissions=ASK) as session:
        with pytest.raises(PermissionNotFound) as unknown:
            await session.reply_to_permission("per_does_not_exist", "once")
        events: list[Event] = []
        async for event in session.stream("write it"):
            events.append(event)
            if isinstance(event, PermissionAskedEvent):
                request_id = event.request.id
                with pytest.raises(InvalidArgument):
                    await session.reply_to_permission(request_id, "maybe")  # type: ignore[arg-type]
                await session.reply_to_permission(request_id, "once")
                try:
                    await session.reply_to_permission(request_id, "always")
                except PermissionNotFound as exc:
                    refusals.append(exc)
        late: PermissionReply = "reject"
        with pytest.raises(LookupError):
            await session.reply_to_permission(request_id, late)
        written = await session.get_file("s.txt")
        rules = (await session.get_info()).config.permissions

    assert isinstance(unknown.value, LookupError)
    assert "per_does_not_exist" in str(unknown.value)
    assert len(refusals) == 1  # answered already
    assert request_id in str(refusals[0])
    types = [event.type for event in events]
    assert types.index("permission-asked") < types.index("permission-replied")
    assert types.index("permission-replied") < types.index("tool-running")
    replied = [event for event in events if isinstance(event, PermissionRepliedEvent)]
    assert [(event.request_id, event.reply) for event in replied] == [(request_id, "once")]
    last = events[-1]
    assert isinstance(last, TurnEndEvent)
    assert last.reason == "completed"
    assert written == "streamed\n"
    assert rules == ASK  # neither the refused `always` nor the late `reject` counted


# --- the sync facade --------------------------------------------------------------------------


@pytest.fixture
def sync_session(sync_client: SandboxClient, image: str) -> Iterator[SessionHandle]:
    script = [bash("echo one > one.txt"), {"text": "1"},
              bash("rm -rf /workspace"), {"text": "2: fine, I will not"}]
    agent = sync_client.agent("guarded", model="scripted", script=script, permissions=ASK,
                              image=image)
    with agent.create_session() as session:
        yield session


def test_sync_permission_callback_and_stream_reply(sync_session: SessionHandle) -> None:
    answers = Answers("always")
    first = sync_session.send("1", on_permission=answers)
    rules = sync_session.get_info().config.permissions
    events: list[Event] = []
    for event in sync_session.stream("2"):
        events.append(event)
        if isinstance(event, PermissionAskedEvent):
            sync_session.reply_to_permission(event.request.id, "reject", message="keep it")
    with pytest.raises(PermissionNotFound):
        sync_session.reply_to_permission("per_nope", "once")
    messages = sync_session.get_messages()
    one = sync_session.get_file("one.txt")

    assert answers.commands == ["echo one > one.txt"]
    assert first.reason == "completed"
    assert rules == {"bash": {"*": "ask", "echo *": "allow"}}
    last = events[-1]
    assert isinstance(last, TurnEndEvent)
    assert last.reason == "completed"
    reply = messages[-1]
    assert isinstance(reply, AssistantMessage)
    [part] = [p for p in reply.parts if isinstance(p, ToolPart)]
    assert part.state.status == "error"
    assert "keep it" in (part.state.error or "")
    assert one == "one\n"  # the workspace survived the rejected `rm -rf`


# --- answers from another client of the store ---------------------------------------------------


@anyio_test
async def test_answers_from_another_client_of_the_store_reach_the_turn(
    client: AsyncSandboxClient, image: str, store_path: Path
) -> None:
    """A turn runs in one client (embedded, or behind a server); a second, embedded client on
    the same store answers its permission request and its question: the answers go through
    the store to the broker that waits, which applies them as its own."""
    script = [bash("echo a > a.txt"),
              {"tool_calls": [{"name": "question", "input": {"question": "Colour?"}}]},
              {"text": "done"}]
    results: list[SendResult] = []
    async with opened(client, image, script, permissions=ASK,
                      tools=["bash", "question"]) as session, \
            AsyncSandboxClient(store=store_path) as other:
        elsewhere = other.session(session.id)

        async def asked(kind: str, after: int) -> Any:
            async for event in session.events(after=after):
                if event.type == kind:
                    return event
            raise AssertionError("the log ended")

        async with anyio.create_task_group() as group:
            async def run() -> None:
                results.append(await session.send("go"))

            group.start_soon(run)
            permission = await asked("permission-asked", 0)
            with pytest.raises(PermissionNotFound):  # open nowhere
                await elsewhere.reply_to_permission("per_nosuchrequest", "once")
            await elsewhere.reply_to_permission(permission.request.id, "always")
            question = await asked("question-asked", permission.seq)
            await elsewhere.reply_to_question(question.request.id, "green")
        rules = (await session.get_info()).config.permissions
        written = await exists(session, "a.txt")
        with pytest.raises(PermissionNotFound):  # answered, and the turn is over
            await elsewhere.reply_to_permission(permission.request.id, "once")

    [result] = results
    assert result.reason == "completed"
    assert written
    assert rules["bash"] == {"*": "ask", "echo *": "allow"}  # the always pattern
    assert "green" in (tools(result)[1].state.output or "")
