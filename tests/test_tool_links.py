"""File-tool permission rules follow links, judged in real turns on real containers.

A folder `/tmp/secret` is denied to every tool. The workspace holds links into it made every
way a link can hide a path: to the file, to the folder, through an intermediate folder,
dangling, relative, chained, and looping. Each file tool called through them is refused and
the secret is untouched, while the same tools on allowed paths (links included) still work.
"""

from __future__ import annotations

from typing import Any

import pytest
from agent_support import Script, opened, tool_parts

from sandbox_sessions import (
    AsyncSandboxClient,
    AsyncSessionHandle,
    PermissionAnswer,
    PermissionRequest,
    PermissionRules,
    SendResult,
)

pytestmark = [pytest.mark.docker, pytest.mark.anyio]

SECRET = "/tmp/secret"
DENY_SECRET: PermissionRules = {"*": {SECRET: "deny", f"{SECRET}/*": "deny"}}

SETUP = f"""
set -e
mkdir -p {SECRET} /workspace/real
printf 'classified\\n' > {SECRET}/key.txt
printf 'public\\n' > /workspace/real/ok.txt
cd /workspace
ln -s {SECRET}/key.txt to_file
ln -s {SECRET} to_dir
ln -s /tmp to_tmp
ln -s {SECRET}/new.txt dangling
ln -s ../tmp/secret/key.txt relative
ln -s c2 c1; ln -s /workspace/c3 c2; ln -s {SECRET} c3
ln -s loop2 loop1; ln -s loop1 loop2
ln -s "$(printf '{SECRET}/\\377')" not_utf8
ln -s real/ok.txt good
ln -s real good_dir
"""


def call(name: str, **input: Any) -> dict[str, Any]:
    return {"name": name, "input": input}


def file_calls(path: str, key: str) -> list[dict[str, Any]]:
    """Every file tool acting on the file `path` (which holds `classified`)."""
    return [
        call("read", path=path),
        call("write", path=path, content="overwritten\n"),
        call("edit", path=path, old_string="classified", new_string="edited"),
        call("artifact", path=path, key=key),
    ]


def folder_calls(path: str) -> list[dict[str, Any]]:
    """Every tool searching the folder `path`."""
    return [call("list", path=path), call("glob", path=path, pattern="*"),
            call("grep", path=path, pattern="classified")]


async def run(session: AsyncSessionHandle) -> SendResult:
    """Make the links, then run the turn whose script the session was made with."""
    await session.shell(SETUP)
    return await session.send("go")


async def secret_state(session: AsyncSessionHandle) -> str:
    """The secret folder's listing and content, the artifacts, and whether the looping and
    dangling links are still links, in one line each."""
    result = await session.shell(
        f"ls -A {SECRET}; cat {SECRET}/key.txt; ls -A /artifacts | wc -l;"
        " test -L loop1 && test -L dangling && test -L not_utf8 && echo links-intact")
    return result.stdout


UNTOUCHED = "key.txt\nclassified\n0\nlinks-intact\n"

WAYS_IN = {
    "link to the file": (["to_file"], []),
    "link to the folder": (["to_dir/key.txt"], ["to_dir"]),
    "link in an intermediate folder": (["to_tmp/secret/key.txt"], ["to_tmp/secret"]),
    "relative link": (["relative"], []),
    "chain of links": (["c1/key.txt"], ["c1"]),
}


@pytest.mark.parametrize("way_in", list(WAYS_IN))
async def test_every_file_tool_through_a_link_to_a_denied_path_is_denied(
    client: AsyncSandboxClient, image: str, way_in: str
) -> None:
    files, folders = WAYS_IN[way_in]
    calls = [c for i, path in enumerate(files) for c in file_calls(path, f"leak{i}")]
    calls += [c for path in folders for c in folder_calls(path)]
    script: Script = [{"tool_calls": calls}, {"text": "done"}]
    async with opened(client, image, script, permissions=DENY_SECRET) as session:
        result = await run(session)
        state = await secret_state(session)

    parts = tool_parts(result.parts)
    assert [part.tool for part in parts] == [c["name"] for c in calls]
    for part in parts:
        assert part.state.status == "error", (part.tool, part.state.output)
        assert "denied by the session's permission rules" in (part.state.error or "")
        assert f"{part.tool}: {SECRET}" in (part.state.error or "")  # the resolved path
    assert state == UNTOUCHED


async def test_a_write_through_a_dangling_link_to_a_denied_path_is_denied(
    client: AsyncSandboxClient, image: str
) -> None:
    calls = [call("write", path="dangling", content="planted\n"),
             call("write", path="to_dir/new.txt", content="planted\n")]
    script: Script = [{"tool_calls": calls}, {"text": "done"}]
    async with opened(client, image, script, permissions=DENY_SECRET) as session:
        result = await run(session)
        state = await secret_state(session)

    for part in tool_parts(result.parts):
        assert part.state.status == "error"
        assert f"({part.tool}: {SECRET}/new.txt)" in (part.state.error or "")
    assert state == UNTOUCHED  # no new.txt, and `dangling` is still a link


async def test_links_that_do_not_resolve_are_refused_and_left_alone(
    client: AsyncSandboxClient, image: str
) -> None:
    """A loop, and a link to a name that is not UTF-8 (no path we could judge exactly)."""
    calls = [call("read", path="loop1"), call("write", path="loop1", content="x"),
             call("list", path="loop2"), call("artifact", path="loop1/key.txt", key="l"),
             call("write", path="not_utf8", content="x")]
    script: Script = [{"tool_calls": calls}, {"text": "done"}]
    async with opened(client, image, script, permissions=DENY_SECRET) as session:
        result = await run(session)
        state = await secret_state(session)

    *loops, not_utf8 = tool_parts(result.parts)
    for part in loops:
        assert part.state.status == "error"
        assert "is a link that does not resolve" in (part.state.error or "")
    assert not_utf8.state.status == "error"
    assert "cannot resolve /workspace/not_utf8" in (not_utf8.state.error or "")
    assert state == UNTOUCHED  # the writes did not replace the links with files


async def test_the_same_tools_on_allowed_paths_and_links_still_work(
    client: AsyncSandboxClient, image: str
) -> None:
    calls = [
        call("read", path="good"),
        call("edit", path="good", old_string="public", new_string="edited"),
        call("write", path="good_dir/new.txt", content="new\n"),
        call("list", path="good_dir"),
        call("glob", path="good_dir", pattern="*.txt"),
        call("grep", path="good_dir", pattern="edited"),
        call("artifact", path="good", key="out.txt"),
        # The workspace holds links to the secret: searching it does not follow them.
        call("grep", path=".", pattern="classified"),
        call("glob", path=".", pattern="**/key.txt"),
    ]
    script: Script = [{"tool_calls": calls}, {"text": "done"}]
    async with opened(client, image, script, permissions=DENY_SECRET) as session:
        result = await run(session)
        edited = await session.get_file("real/ok.txt")
        created = await session.get_file("real/new.txt")
        artifact = await session.get_artifact("out.txt")
        still_links = (await session.shell("test -L good && test -L good_dir")).exit_code

    parts = tool_parts(result.parts)
    assert [part.state.status for part in parts] == ["completed"] * len(calls)
    read, _, _, listing, globbed, grepped, _, searched, walked = (
        part.state.output for part in parts)
    assert (searched, walked) == ("no matches", "no files match")
    assert read == "     1\tpublic"
    assert listing == "new.txt\nok.txt"
    assert globbed == "/workspace/real/new.txt\n/workspace/real/ok.txt"
    assert grepped == "/workspace/real/ok.txt:1:edited"
    assert (edited, created, artifact, still_links) == ("edited\n", "new\n", "edited\n", 0)


async def test_a_request_names_both_paths_and_the_call_acts_on_the_one_judged(
    client: AsyncSandboxClient, image: str
) -> None:
    """The link is switched to the secret while the request waits: the read still reads the
    file that was judged, and `always` allows both forms of the path."""
    rules: PermissionRules = {**DENY_SECRET, "read": {"/workspace/*": "ask"}}
    script: Script = [{"tool_calls": [call("read", path="switch")]}, {"text": "done"}]
    requests: list[PermissionRequest] = []

    async with opened(client, image, script, permissions=rules) as session:

        async def switch_then_allow(request: PermissionRequest) -> PermissionAnswer:
            requests.append(request)
            await session.shell(f"ln -sfn {SECRET}/key.txt switch")
            return "always"

        await session.shell(SETUP + "ln -s real/ok.txt switch\n")
        result = await session.send("go", on_permission=switch_then_allow)
        info = await session.get_info()

    [request] = requests
    assert request.patterns == ["/workspace/switch", "/workspace/real/ok.txt"]
    assert request.always == ["/workspace/switch", "/workspace/real/ok.txt"]
    [part] = tool_parts(result.parts)
    assert part.state.status == "completed"
    assert part.state.output == "     1\tpublic"
    assert info.config.permissions["read"] == {
        "/workspace/*": "ask", "/workspace/switch": "allow", "/workspace/real/ok.txt": "allow"}
