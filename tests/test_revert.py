"""Workspace snapshots, revert, unrevert and diff: the conversation and the container's
workdir go back together. Real containers, the scripted model, both transports (see
conftest.py)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from agent_support import start_busy

from sandbox_sessions import (
    AgentConfig,
    AsyncSandboxClient,
    AsyncSessionHandle,
    FileDiff,
    InvalidArgument,
    Message,
    MessageNotFound,
    PatchPart,
    SessionBusy,
    SnapshotError,
    SnapshotPart,
    StepFinishPart,
)

pytestmark = [pytest.mark.docker, pytest.mark.anyio]

CHANGE = ("printf 'changed\\n' > keep.txt && rm gone.txt && mkdir -p new/deep "
          "&& printf 'a\\nb\\n' > new/deep/made.txt && printf 'x\\n' > 'we*ird [1].txt'")
SCRIPT: list[dict[str, Any]] = [
    {"text": "first answer"},
    {"tool_calls": [{"name": "bash", "input": {"command": CHANGE}}]},
    {"text": "changed them"},
    {"text": "after the revert"},
]


async def _session(client: AsyncSandboxClient, image: str,
                   script: list[dict[str, Any]] = SCRIPT, **config: Any
                   ) -> AsyncSessionHandle:
    agent = client.agent("snap", model="scripted", image=image, permissions={"*": "allow"},
                         config=AgentConfig(script=script, **config))
    session = await agent.create_session()
    await session.put_file("keep.txt", "original\n")
    await session.put_file("gone.txt", "to be deleted\n")
    return session


async def _two_turns(session: AsyncSessionHandle) -> tuple[str, list[Message]]:
    """Send a prompt, then one that changes the files: the workdir after, and the messages."""
    await session.send("one")
    await session.send("change the files")
    return await _tree(session), await session.get_messages()


async def _tree(session: AsyncSessionHandle) -> str:
    listed = await session.shell("find . -path ./.git -prune -o -type f -print | sort "
                                 "| while read -r f; do echo \"$f=$(cat \"$f\")\"; done")
    return listed.stdout


async def test_a_revert_restores_created_modified_and_deleted_files(
    client: AsyncSandboxClient, image: str
) -> None:
    async with await _session(client, image) as session:
        await session.send("one")
        original = await _tree(session)
        second = await session.send("change the files")
        changed = await _tree(session)
        messages = await session.get_messages()
        prompt = messages[2]
        diff = await session.diff()
        revert = await session.revert(prompt.id)
        reverted = await _tree(session)
        shown = await session.get_messages()
        again = await session.diff()
        events = [e.type async for e in _history(session)]
    assert prompt.role == "user"
    assert isinstance(prompt.parts[-1], SnapshotPart)
    patches = [p for p in second.parts if isinstance(p, PatchPart)]
    assert [sorted(p.files) for p in patches] == [
        ["gone.txt", "keep.txt", "new/deep/made.txt", "we*ird [1].txt"]]
    finish = next(p for p in second.parts if isinstance(p, StepFinishPart) and p.snapshot)
    assert finish.snapshot == patches[0].hash == prompt.parts[-1].snapshot
    assert "./new/deep/made.txt=a" in changed
    assert "gone.txt" not in changed
    assert sorted(diff, key=lambda d: d.path) == [
        FileDiff(path="gone.txt", status="deleted", additions=0, deletions=1),
        FileDiff(path="keep.txt", status="modified", additions=1, deletions=1),
        FileDiff(path="new/deep/made.txt", status="added", additions=2, deletions=0),
        FileDiff(path="we*ird [1].txt", status="added", additions=1, deletions=0)]
    assert reverted == original == "./gone.txt=to be deleted\n./keep.txt=original\n"
    assert revert.message_id == prompt.id
    assert revert.skipped == []
    assert {d.path: d.status for d in revert.files} == {
        "gone.txt": "added", "keep.txt": "modified", "new/deep/made.txt": "deleted",
        "we*ird [1].txt": "deleted"}
    assert [m.id for m in shown] == [m.id for m in messages[:2]]
    assert again == []
    assert "reverted" in events
    assert "patch" in events


async def _history(session: AsyncSessionHandle) -> Any:
    async for event in session.events(after=0):
        yield event
        if event.type == "reverted":
            return


async def test_unrevert_brings_back_messages_and_files_until_a_new_message(
    client: AsyncSandboxClient, image: str
) -> None:
    async with await _session(client, image) as session:
        changed, messages = await _two_turns(session)
        await session.revert(messages[2].id)
        await session.put_file("during-revert.txt", "lost on unrevert")
        back = await session.unrevert()
        restored = await _tree(session)
        shown = await session.get_messages()
        with pytest.raises(InvalidArgument, match="nothing to unrevert"):
            await session.unrevert()
        await session.revert(messages[2].id)
        answer = await session.send("go on")
        final = await session.get_messages()
        with pytest.raises(InvalidArgument, match="nothing to unrevert"):
            await session.unrevert()
    assert back.message_id == messages[2].id
    assert restored == changed
    assert [m.id for m in shown] == [m.id for m in messages]
    assert answer.text == "after the revert"
    assert [m.role for m in final] == ["user", "assistant"] * 2
    assert [m.id for m in final[:2]] == [m.id for m in messages[:2]]


async def test_the_model_is_not_sent_what_a_revert_hid(
    client: AsyncSandboxClient, image: str
) -> None:
    script = [{"text": "one"}, {"text": "two"}, {"text": "three"}]
    async with await _session(client, image, script) as session:
        await session.send("alpha")
        await session.send("beta")
        beta = (await session.get_messages())[2]
        await session.revert(beta.id)
        await session.send("gamma")
        messages = await session.get_messages()
    texts = ["".join(getattr(p, "text", "") for p in m.parts) for m in messages]
    assert texts == ["alpha", "one", "gamma", "three"]


async def test_revert_errors(client: AsyncSandboxClient, image: str) -> None:
    script: list[dict[str, Any]] = [{"text": "one"}, {"tool_calls": [{"name": "bash",
                                                "input": {"command": "sleep 60"}}]}]
    async with await _session(client, image, script) as session, \
            anyio.create_task_group() as group:
        await session.send("alpha")
        user, assistant = await session.get_messages()
        with pytest.raises(MessageNotFound) as unknown:
            await session.revert("msg_unknown")
        with pytest.raises(InvalidArgument, match="user message"):
            await session.revert(assistant.id)
        with pytest.raises(MessageNotFound):
            await session.diff("msg_unknown")
        with pytest.raises(InvalidArgument, match="nothing to unrevert"):
            await session.unrevert()
        await start_busy(session, group, "sleep")
        with pytest.raises(SessionBusy):
            await session.revert(user.id)
        with pytest.raises(SessionBusy):
            await session.unrevert()
        await session.abort()
        still = await session.get_messages()
    assert unknown.value.code == "message_not_found"
    assert [m.role for m in still] == ["user", "assistant"] * 2


async def test_large_files_are_left_out_and_reported(
    client: AsyncSandboxClient, image: str
) -> None:
    script: list[dict[str, Any]] = [{"tool_calls": [{"name": "bash", "input": {
        "command": "head -c 5000 /dev/zero > big.bin && echo small > small.txt"}}]},
        {"text": "made them"}]
    async with await _session(client, image, script, snapshot_max_file=4096) as session:
        result = await session.send("make files")
        user = (await session.get_messages())[0]
        revert = await session.revert(user.id)
        left = await session.shell("ls")
    patch = next(p for p in result.parts if isinstance(p, PatchPart))
    assert patch.files == ["small.txt"]
    assert revert.skipped == ["big.bin"]
    assert left.stdout.split() == ["big.bin", "gone.txt", "keep.txt"]


async def test_snapshots_off_leave_nothing_to_revert(
    client: AsyncSandboxClient, image: str
) -> None:
    async with await _session(client, image, snapshots=False) as session:
        await session.send("one")
        user = (await session.get_messages())[0]
        with pytest.raises(SnapshotError, match="no snapshot"):
            await session.revert(user.id)
        diff = await session.diff()
        repo = await session.shell("ls -d /tmp/.sandbox-sessions-snapshots 2>&1 || true")
    assert not any(isinstance(p, SnapshotPart) for p in user.parts)
    assert diff == []
    assert "No such file" in repo.stdout


async def test_the_users_own_git_repository_is_untouched(
    client: AsyncSandboxClient, image: str
) -> None:
    async with await _session(client, image) as session:
        await session.shell("git init -q && git -c user.name=u -c user.email=u@x add -A "
                            "&& git -c user.name=u -c user.email=u@x commit -qm init "
                            "&& git status --porcelain")
        state = ("find .git -type f | sort | xargs md5sum; git status --porcelain; "
                 "git log --format=%s")
        before = await session.shell(state)
        await session.send("one")
        await session.send("change the files")
        prompt = (await session.get_messages())[2]
        await session.revert(prompt.id)
        after = await session.shell(state)
    assert before.exit_code == 0
    assert "init" in before.stdout
    assert after.stdout == before.stdout


async def test_a_spoiled_shadow_repository_is_a_clear_error(
    client: AsyncSandboxClient, image: str
) -> None:
    async with await _session(client, image) as session:
        await session.send("one")
        user = (await session.get_messages())[0]
        await session.shell("rm -rf /tmp/.sandbox-sessions-snapshots && echo x > keep.txt")
        with pytest.raises(SnapshotError, match="does not hold that snapshot"):
            await session.revert(user.id)
        shown = await session.get_messages()
    assert len(shown) == 2


async def test_a_fork_at_a_message_takes_the_workspace_as_it_was_then(
    client: AsyncSandboxClient, image: str
) -> None:
    async with await _session(client, image) as parent:
        changed, messages = await _two_turns(parent)
        second = messages[2]
        async with await parent.fork(second.id) as child:
            forked = await _tree(child)
            history = await child.get_messages()
            await child.put_file("child.txt", "c")
            child_diff = await child.diff()
        untouched = await _tree(parent)
        async with await parent.fork(messages[1].id) as at_answer:
            answered = await _tree(at_answer)
    assert forked == "./gone.txt=to be deleted\n./keep.txt=original\n"
    assert [m.role for m in history] == ["user", "assistant"]
    assert untouched == changed
    assert answered == forked  # an answer's turn began from its prompt's snapshot
    assert [d.path for d in child_diff] == []  # the child has no snapshot of its own yet


async def test_a_second_revert_while_one_is_pending_unreverts_to_before_both(
    client: AsyncSandboxClient, image: str
) -> None:
    script: list[dict[str, Any]] = [
        {"tool_calls": [{"name": "bash", "input": {"command": "echo 1 > one.txt"}}]},
        {"text": "made one"},
        {"tool_calls": [{"name": "bash", "input": {"command": "echo 2 > two.txt"}}]},
        {"text": "made two"},
    ]
    async with await _session(client, image, script) as session:
        await session.send("make one")
        await session.send("make two")
        latest = await _tree(session)
        messages = await session.get_messages()
        await session.revert(messages[2].id)
        middle = await _tree(session)
        await session.revert(messages[0].id)
        start = await _tree(session)
        hidden = await session.get_messages()
        with pytest.raises(MessageNotFound):
            await session.revert(messages[2].id)  # hidden now
        back = await session.unrevert()
        restored = await _tree(session)
        shown = await session.get_messages()
    assert "./one.txt" in middle
    assert "./two.txt" not in middle
    assert "./one.txt" not in start
    assert hidden == []
    assert back.message_id == messages[0].id
    assert restored == latest
    assert [m.id for m in shown] == [m.id for m in messages]


async def test_a_snapshot_killed_half_way_does_not_stop_the_next(
    client: AsyncSandboxClient, image: str
) -> None:
    async with await _session(client, image) as session:
        await session.send("one")
        # what an aborted `git add` leaves behind: the index's lock file
        await session.shell("touch /tmp/.sandbox-sessions-snapshots/index.lock")
        second = await session.send("change the files")
        prompt = (await session.get_messages())[2]
        revert = await session.revert(prompt.id)
    assert [p.type for p in second.parts].count("patch") == 1
    assert revert.message_id == prompt.id
