"""Export and import: one JSON Lines file carries a session's history and workspace into a new
session; torn, foreign and hostile files. Real containers, both transports (conftest.py)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import tarfile
from pathlib import Path
from typing import Any

import pytest

from sandbox_sessions import (
    AsyncSandboxClient,
    AsyncSessionHandle,
    InvalidArgument,
    Message,
    SandboxError,
)
from sandbox_sessions._types import ImportMessagesRequest

pytestmark = [pytest.mark.docker, pytest.mark.anyio]

SCRIPT: list[dict[str, Any]] = [
    {"text": "I'll write it.",
     "tool_calls": [{"name": "bash", "input": {"command": "echo made > made.txt"}}],
     "usage": {"input": 10, "output": 2}},
    {"text": "Done."},
    {"text": "Second answer."},
    {"text": "After the import."},
]


async def _made(client: AsyncSandboxClient, image: str) -> AsyncSessionHandle:
    agent = client.agent("build", model="scripted", script=SCRIPT, image=image,
                         permissions={"bash": {"*": "allow"}})
    session = await agent.create_session(title="original", metadata={"ci": "7"})
    await session.send("make a file")
    await session.send("and answer")
    await session.put_file("src/run.sh", "#!/bin/sh\necho run\n", mode=0o755)
    await session.put_file("notes/ü nicode.txt", "ünïcode\n")
    return session


def _shape(messages: list[Message]) -> list[tuple[str, list[tuple[str, object]]]]:
    """The messages without their ids: role, and each part's type and text or tool."""
    return [(m.role, [(p.type, getattr(p, "text", None) or getattr(p, "tool", ""))
                      for p in m.parts]) for m in messages]


def _snapshotless(messages: list[Message]) -> list[Message]:
    """The messages as an import makes them: without snapshots (trees of another
    container)."""
    return [m.model_copy(update={"parts": [p for p in m.parts if p.type != "snapshot"]})
            for m in messages]


def _texts(messages: list[Message]) -> list[str]:
    return ["".join(getattr(p, "text", "") for p in m.parts) for m in messages]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path: Path, entries: list[dict[str, Any]], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries) + tail)
    return path


async def test_a_session_travels_whole_into_a_new_one(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    async with await _made(client, image) as session:
        path = await session.export(tmp_path / "s.jsonl")
        original = await session.get_messages()
        source = await session.get_info()

    entries = _lines(path)
    assert (entries[0]["format"], entries[0]["version"]) == ("sandbox-sessions.session", 1)
    kinds = [e.get("type") for e in entries[1:]]
    assert kinds[:4] == ["message"] * 4
    assert kinds[-1] == "workspace-end"
    parents = [(e["message"]["role"], e["parent_id"]) for e in entries[1:5]]
    ids = [e["id"] for e in entries[1:5]]
    assert parents == [("user", None), ("assistant", ids[0]), ("user", ids[1]),
                       ("assistant", ids[2])]
    assert not (tmp_path / ".s.jsonl.partial").exists()

    async with await client.import_session(path) as imported:
        info = await imported.get_info()
        messages = await imported.get_messages()
        files = await imported.shell("cat made.txt; ./src/run.sh; cat 'notes/ü nicode.txt'")
        later = await imported.send("go on")
    assert imported.id != source.id
    assert (info.title, info.agent, info.metadata) == ("original", "build", {"ci": "7"})
    assert info.config == source.config
    assert _shape(messages) == _shape(_snapshotless(original)) != _shape(original)
    assert {m.id for m in messages}.isdisjoint({m.id for m in original})
    assert all(m.session_id == imported.id for m in messages)
    assert files.stdout == "made\nrun\nünïcode\n"
    assert later.text == "After the import."  # the script goes on after its imported calls


async def test_without_the_workspace_and_with_a_title(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    async with await _made(client, image) as session:
        path = await session.export(tmp_path / "s.jsonl", workspace=False)
    assert all(e.get("type") in (None, "message") for e in _lines(path))
    async with await client.import_session(path, title="copy") as imported:
        assert (await imported.get_info()).title == "copy"
        assert (await imported.shell("ls -A")).stdout == ""
        assert len(await imported.get_messages()) == 4


async def test_a_torn_last_line_is_left_out_with_a_warning(
    client: AsyncSandboxClient, image: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with await _made(client, image) as session:
        path = await session.export(tmp_path / "s.jsonl")
    text = path.read_bytes()
    torn_end = _cut(tmp_path / "a.jsonl", text, keep_lines=len(text.splitlines()) - 1)
    messages_only = _write(tmp_path / "b.jsonl", _lines(path)[:4], tail='{"type": "mess')

    with caplog.at_level(logging.WARNING, logger="sandbox_sessions.export"):
        async with await client.import_session(torn_end) as first:
            assert len(await first.get_messages()) == 4
            assert (await first.shell("ls -A")).stdout == ""  # incomplete: not restored
        async with await client.import_session(messages_only) as second:
            assert len(await second.get_messages()) == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert any("torn" in w for w in warnings)
    assert any("workspace is incomplete" in w for w in warnings)


def _cut(path: Path, text: bytes, *, keep_lines: int) -> Path:
    lines = text.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:keep_lines]) + lines[keep_lines][:40])
    return path


async def test_foreign_and_malformed_files_are_refused_and_make_nothing(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    async with await _made(client, image) as session:
        path = await session.export(tmp_path / "s.jsonl", workspace=False)
    header, *rest = _lines(path)
    user = rest[0]
    orphan = {**rest[1], "message": {**rest[1]["message"], "parent_id": "msg_nowhere"}}
    cases = {
        "empty": (_write(tmp_path / "1", []), "empty"),
        "format": (_write(tmp_path / "2", [{**header, "format": "other"}]), "not a sandbox"),
        "version": (_write(tmp_path / "3", [{**header, "version": 2}]), "version 2"),
        "not json": (_write(tmp_path / "4", [header], "garbage\n" + json.dumps(user) + "\n"),
                     "line 2 is not JSON"),
        "bad entry": (_write(tmp_path / "5", [header, {"type": "message", "id": "x"}]),
                      "line 2 is not a valid entry"),
        "unknown type": (_write(tmp_path / "6", [header, {"type": "mystery"}]), "unknown"),
        "orphan": (_write(tmp_path / "7", [header, user, orphan]), "answers no user message"),
        "half hidden": (_write(tmp_path / "9", [header, {**user, "hidden": True}, rest[1]]),
                        "line 3: the assistant message is hidden"),
        "bad base64": (_write(tmp_path / "8", [header, {"type": "workspace", "index": 0,
                                                        "data": "!!"}]), "not a valid entry"),
    }
    before = await client.list_sessions(include_ended=True, archived=None)
    for name, (file, error) in cases.items():
        with pytest.raises(InvalidArgument, match=error):
            await client.import_session(file)
        assert await client.list_sessions(include_ended=True, archived=None) == before, name


def _with_workspace(path: Path, entries: list[dict[str, Any]], names: list[str]) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in names:
            member = tarfile.TarInfo(name)
            member.size = 2
            tar.addfile(member, io.BytesIO(b"x\n"))
    data = buffer.getvalue()
    return _write(path, [
        *entries, {"type": "workspace", "index": 0, "data": base64.b64encode(data).decode()},
        {"type": "workspace-end", "chunks": 1, "bytes": len(data),
         "sha256": hashlib.sha256(data).hexdigest()}])


async def test_a_hostile_workspace_stays_in_the_container(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    async with await _made(client, image) as session:
        entries = _lines(await session.export(tmp_path / "s.jsonl", workspace=False))
    absolute = _with_workspace(tmp_path / "a.jsonl", entries, ["/etc/owned.txt", "fine.txt"])
    climbing = _with_workspace(tmp_path / "b.jsonl", entries, ["../../tmp/escaped.txt"])
    before = await client.list_sessions()

    async with await client.import_session(absolute) as imported:
        found = await imported.shell("ls /etc/owned.txt 2>&1; find . -type f | sort")
    with pytest.raises(SandboxError, match=r"Member name contains '\.\.'"):
        await client.import_session(climbing)

    assert found.stdout.endswith("No such file or directory\n./etc/owned.txt\n./fine.txt\n")
    assert await client.list_sessions() == before  # the refused import's session is ended


BRANCHED: list[dict[str, Any]] = [
    {"text": "one"}, {"text": "two"}, {"text": "three"}, {"text": "four"}, {"text": "five"}]


async def test_the_branch_a_revert_left_travels_and_stays_hidden(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    agent = client.agent("branchy", model="scripted", script=BRANCHED, image=image)
    async with await agent.create_session() as session:
        await session.send("first")
        await session.send("second, " * 40)
        await session.send("third, " * 40)
        second = (await session.get_messages())[2]
        await session.revert(second.id)
        await session.send("fourth")
        path = await session.export(tmp_path / "b.jsonl", workspace=False)
        shown = await session.get_messages()
        every = await session.get_messages(hidden=True)
        then = await session.send("go on")

    entries = [e for e in _lines(path) if e.get("type") == "message"]
    ids = [e["id"] for e in entries]
    p1, a1, p2, a2, p3, _, p4, a4 = ids
    assert ids == [m.id for m in every]
    assert [m.id for m in shown] == [p1, a1, p4, a4]
    assert [e["hidden"] for e in entries] == [False, False, True, True, True, True, False, False]
    assert [e["parent_id"] for e in entries] == [None, p1, a1, p2, a2, p3, a1, p4]

    async with await client.import_session(path) as imported:
        copied = await imported.get_messages()
        whole = await imported.get_messages(hidden=True)
        later = await imported.send("go on")
        after = await imported.get_messages()
    assert _shape(copied) == _shape(_snapshotless(shown))
    assert _shape(whole) == _shape(_snapshotless(every))
    assert later.text == then.text == "five"  # the script skips the hidden runs' calls too
    assert later.tokens.input == then.tokens.input  # the same history sent: no hidden run
    assert _texts(after) == ["first", "one", "fourth", "four", "go on", "five"]


async def test_an_import_hides_only_messages_it_gives_with_their_answers(
    client: AsyncSandboxClient, image: str
) -> None:
    async with await _made(client, image) as source:
        given = await source.get_messages()
        agent = client.agent("build", model="scripted", script=SCRIPT, image=image)
        async with await agent.create_session() as target:
            transport = client._opened()
            for hidden, error in [(["msg_elsewhere"], "not among the messages given"),
                                  ([given[3].id], "hidden exactly when"),
                                  ([given[2].id], "hidden exactly when"),
                                  ([given[2].id, given[3].id, given[2].id], "named twice")]:
                with pytest.raises(InvalidArgument, match=error):
                    await transport.import_messages(target.id, ImportMessagesRequest(
                        messages=given, hidden=hidden))
            untouched = await target.get_messages(hidden=True)
            await transport.import_messages(target.id, ImportMessagesRequest(
                messages=given, hidden=[given[2].id, given[3].id]))
            shown = await target.get_messages()
            every = await target.get_messages(hidden=True)
    assert untouched == []
    assert _shape(shown) == _shape(_snapshotless(given[:2]))
    assert _shape(every) == _shape(_snapshotless(given))


async def test_a_large_history_is_sent_in_batches_that_keep_each_turn_whole(
    client: AsyncSandboxClient, image: str, tmp_path: Path
) -> None:
    async with await _made(client, image) as session:
        header, *entries = _lines(await session.export(tmp_path / "s.jsonl", workspace=False))
    big = [{**e, "message": {**e["message"], "parts": [
        {"type": "text", "id": f"prt_big{i}", "text": "x" * 300_000}]}}
        if e["message"]["role"] == "assistant" else e for i, e in enumerate(entries)]
    async with await client.import_session(_write(tmp_path / "big.jsonl",
                                                  [header, *big])) as imported:
        messages = await imported.get_messages()
    assert [len(t) for t in _texts(messages)] == [11, 300_000, 10, 300_000]
