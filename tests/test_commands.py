"""Command templates: files and frontmatter, every placeholder, each error, on real sessions.

The session tests run once per transport (see `CONFORMANCE` in conftest.py): templates are
found and rendered on the client's side, and the turn, with its `command`, goes through the
transport like any other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbox_sessions import (
    AgentConfig,
    AsyncSandboxClient,
    AsyncSessionHandle,
    CommandCall,
    CommandFailed,
    CommandNotFound,
    InvalidArgument,
    SandboxClient,
    SandboxFileNotFound,
    SubtaskPart,
    Tokens,
    UserMessage,
)
from sandbox_sessions.client._commands import MAX_TEMPLATE_BYTES, CommandRegistry, parse_template

SCRIPT = [{"text": f"answer {n}"} for n in range(1, 9)]


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The user's and the project's commands folders (empty), with cwd in the project."""
    config, project = tmp_path / "config", tmp_path / "project"
    user_dir = config / "sandbox-sessions" / "commands"
    project_dir = project / ".sandbox-sessions" / "commands"
    user_dir.mkdir(parents=True)
    project_dir.mkdir(parents=True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.chdir(project)
    return user_dir, project_dir


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- files and frontmatter (no container) -----------------------------------------------------


def test_frontmatter_and_body_are_read() -> None:
    text = ("---\ndescription: Review a file\nagent: build\nmodel: scripted/reviewer\n"
            "subtask: false\nextra: ignored\n---\nReview $1.\n")
    template = parse_template("review", text, source="/x/review.md")
    assert (template.description, template.agent, template.model, template.subtask) == (
        "Review a file", "build", "scripted/reviewer", False)
    assert template.template == "Review $1.\n"
    assert template.source == "/x/review.md"
    assert parse_template("plain", "No frontmatter: ---\n").template == "No frontmatter: ---\n"
    assert parse_template("empty", "---\n---\nbody").template == "body"


@pytest.mark.parametrize(("text", "error"), [
    ("---\ndescription: x\nbody without an end\n", "no closing '---'"),
    ("---\n- a list\n---\nbody", "must be a mapping"),
    ("---\ndescription: [unclosed\n---\nbody", "not YAML"),
    ("---\nsubtask: yes please\n---\nbody", "subtask must be a bool"),
    ("---\ndescription: 12\n---\nbody", "description must be a str"),
    ("---\nmodel: {a: b}\n---\nbody", "model must be a str"),
    ("body with a NUL \x00", "NUL"),
])
def test_a_malformed_template_is_a_clear_error(text: str, error: str) -> None:
    with pytest.raises(InvalidArgument, match=error):
        parse_template("bad", text)


def test_templates_are_found_by_folder_with_precedence(folders: tuple[Path, Path]) -> None:
    user_dir, project_dir = folders
    _write(user_dir, "hello", "user's hello")
    _write(user_dir, "mine", "only the user's")
    _write(project_dir, "hello", "project's hello")
    _write(project_dir, "team/review", "---\ndescription: team review\n---\nreview")
    (project_dir / "notes.txt").write_text("not a template")
    _write(project_dir, "bad name!", "skipped")
    registry = CommandRegistry()

    found = {t.name: t for t in registry.list()}
    assert sorted(found) == ["hello", "mine", "team/review"]
    assert found["hello"].template == "project's hello"
    assert found["hello"].source == str(project_dir / "hello.md")
    assert found["team/review"].description == "team review"

    registry.add(parse_template("hello", "code's hello"))
    assert registry.get("hello").template == "code's hello"
    assert registry.get("hello").source is None
    with pytest.raises(CommandNotFound, match="'nope'"):
        registry.get("nope")
    with pytest.raises(InvalidArgument, match="command name"):
        registry.get("../etc/passwd")


def test_an_edited_file_counts_at_once(folders: tuple[Path, Path]) -> None:
    _, project_dir = folders
    registry = CommandRegistry()
    _write(project_dir, "x", "first")
    assert registry.get("x").template == "first"
    _write(project_dir, "x", "second")
    assert registry.get("x").template == "second"


def test_links_fifos_and_oversized_files_in_the_project_are_not_read(
    folders: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    user_dir, project_dir = folders
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    (project_dir / "leak.md").symlink_to(secret)
    (tmp_path / "elsewhere").mkdir()
    _write(tmp_path / "elsewhere", "inner", "behind a linked folder")
    (project_dir / "linked").symlink_to(tmp_path / "elsewhere")
    os.mkfifo(project_dir / "fifo.md")
    (project_dir / "big.md").write_text("a" * (MAX_TEMPLATE_BYTES + 1))
    (project_dir / "latin.md").write_bytes(b"caf\xe9")
    registry = CommandRegistry()

    with caplog.at_level(logging.WARNING, logger="sandbox_sessions.commands"):
        assert registry.list() == []  # each left out, none hangs (the FIFO has no writer)
    assert len(caplog.records) == 4
    with pytest.raises(InvalidArgument, match="a link, not read"):
        registry.get("leak")
    with pytest.raises(InvalidArgument, match="not a regular file"):
        registry.get("fifo")
    with pytest.raises(InvalidArgument, match="over"):
        registry.get("big")
    with pytest.raises(InvalidArgument, match="not UTF-8"):
        registry.get("latin")
    with pytest.raises(CommandNotFound):
        registry.get("linked/inner")

    # The user's own folder follows links (dotfile managers put them there).
    (user_dir / "mine.md").symlink_to(secret)
    assert registry.get("mine").template == "host secret"


def test_a_project_folder_that_is_a_link_is_not_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    _write(elsewhere / "commands", "x", "outside the project")
    project = tmp_path / "project"
    project.mkdir()
    (project / ".sandbox-sessions").symlink_to(elsewhere)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(project)
    with pytest.raises(CommandNotFound):
        CommandRegistry().get("x")


# --- running them in sessions (both transports) ------------------------------------------------


@pytest.fixture
async def session(
    client: AsyncSandboxClient, image: str, folders: tuple[Path, Path]
) -> AsyncIterator[AsyncSessionHandle]:
    agent = client.agent("build", model="scripted", script=SCRIPT, image=image)
    async with await agent.create_session() as handle:
        yield handle


async def _user_messages(session: AsyncSessionHandle) -> list[UserMessage]:
    return [m for m in await session.get_messages() if isinstance(m, UserMessage)]


@pytest.mark.docker
@pytest.mark.anyio
async def test_every_placeholder_is_filled_once_and_the_call_recorded(
    client: AsyncSandboxClient, session: AsyncSessionHandle, folders: tuple[Path, Path]
) -> None:
    _, project_dir = folders
    await session.put_file("notes.txt", "!`touch owned-by-file` $ARGUMENTS @other\n")
    await session.shell("echo hi > other")
    _write(project_dir, "review", (
        "All: $ARGUMENTS\nFirst: $1; second: $2; third: [$3]; cost $$5; home $HOME.\n"
        "Out: !`printf '<%s>' $1 $ARGUMENTS`\nAs a command, $$$$: !`echo '$$$$'`\n"
        "File @notes.txt, then mail a@b.example and @@handle.\n"))
    arguments = "'two words' 'x; touch owned-by-arg'"

    answer = await session.run_command("review", arguments)

    assert answer == "answer 1"
    user = (await _user_messages(session))[-1]
    assert user.command == CommandCall(name="review", arguments=arguments)
    assert user.parts[0].text == (  # type: ignore[union-attr]
        "All: 'two words' 'x; touch owned-by-arg'\n"
        "First: two words; second: x; touch owned-by-arg; third: []; cost $5; home $HOME.\n"
        "Out: <two words><two words><x; touch owned-by-arg>\nAs a command, $$: $$\n"
        "File notes.txt:\n```\n!`touch owned-by-file` $ARGUMENTS @other\n```\n, then mail "
        "a@b.example and @handle.\n")
    listing = await session.shell("ls")
    assert "owned" not in listing.stdout  # neither the argument nor the file ran anything


@pytest.mark.docker
@pytest.mark.anyio
async def test_named_and_listed_arguments(
    client: AsyncSandboxClient, session: AsyncSessionHandle
) -> None:
    client.add_command("test", "Test $path in $mode mode: !`ls $path`; all: $ARGUMENTS")
    client.add_command("words", "1=$1 2=$2 all=$ARGUMENTS @$2")
    await session.shell("mkdir -p 'my src' && touch 'my src/a.py' && echo C > c")

    await session.run_command("test", {"path": "my src", "mode": "fast"})
    await session.run_command("words", ["a b", "c"])

    first, second = [m.parts[0].text for m in (await _user_messages(session))]  # type: ignore[union-attr]
    assert first == "Test my src in fast mode: a.py; all: 'path=my src' mode=fast"
    assert second == "1=a b 2=c all='a b' c c:\n```\nC\n```\n"


@pytest.mark.docker
@pytest.mark.anyio
async def test_each_template_error_is_ours_and_starts_no_turn(
    client: AsyncSandboxClient, session: AsyncSessionHandle
) -> None:
    client.add_command("named", "Fix $path and $other")
    client.add_command("fails", "Before !`echo oops >&2; exit 3` after")
    client.add_command("slow", "!`sleep 30`")
    client.add_command("missing-file", "See @nowhere.txt")
    client.add_command("quotes", "$1")
    client.add_command("elsewhere", "x", agent="deploy")
    client.add_command("empty-path", "See @$1.")

    with pytest.raises(CommandNotFound, match="'nope'"):
        await session.run_command("nope")
    with pytest.raises(InvalidArgument, match="other, path"):
        await session.run_command("named", {"unrelated": "x"})
    with pytest.raises(CommandFailed, match="exited with code 3: oops") as failed:
        await session.run_command("fails")
    assert failed.value.name == "fails"
    with pytest.raises(CommandFailed, match="timed out after 1 s"):
        await session.run_command("slow", timeout=1)
    with pytest.raises(SandboxFileNotFound):
        await session.run_command("missing-file")
    with pytest.raises(InvalidArgument, match="split into words"):
        await session.run_command("quotes", "'unclosed")
    with pytest.raises(InvalidArgument, match="names no file"):
        await session.run_command("empty-path")
    with pytest.raises(InvalidArgument, match="for agent 'deploy'"):
        await session.run_command("elsewhere")
    with pytest.raises(InvalidArgument, match="argument"):
        await session.run_command("quotes", {"a": 1})  # type: ignore[dict-item]

    assert await session.get_messages() == []


@pytest.mark.docker
@pytest.mark.anyio
async def test_a_subtask_command_runs_in_a_child_session(
    client: AsyncSandboxClient, image: str, folders: tuple[Path, Path]
) -> None:
    reviewer = client.agent("reviewer", model="scripted", image=image, tools=["bash"],
                            permissions={"bash": {"*": "allow"}}, script=[
        {"tool_calls": [{"name": "bash", "input": {"command": "cat /etc/hostname > c.txt"}}],
         "usage": {"input": 40, "output": 4}},
        {"text": "reviewed in the child", "usage": {"input": 60, "output": 6}}])
    agent = client.agent("build", model="scripted", image=image, subagents={
        "reviewer": reviewer}, script=[{"text": "own agent's child", "usage": {
            "input": 7, "output": 1}}])
    _write(folders[1], "review", "---\nsubtask: true\nagent: reviewer\n---\nReview $1")
    _write(folders[1], "alone", "---\nsubtask: true\n---\nThink about $ARGUMENTS")
    async with await agent.create_session() as session:
        reviewed = await session.run_command("review", "parser.py")
        alone = await session.run_command("alone", "x y")
        messages = await session.get_messages()
        children = await client.list_sessions(parent_id=session.id, include_ended=True)
        metrics = await session.get_metrics()
        files = await session.shell("ls c.txt 2>&1 || true")
    users = [m for m in messages if isinstance(m, UserMessage)]
    answers = [m for m in messages if not isinstance(m, UserMessage)]
    subtasks = [p for m in answers for p in m.parts if isinstance(p, SubtaskPart)]
    assert (reviewed, alone) == ("reviewed in the child", "own agent's child")
    assert [u.command for u in users] == [
        CommandCall(name="review", arguments="parser.py", subtask="reviewer"),
        CommandCall(name="alone", arguments="x y", subtask="build")]
    assert [(p.agent, p.prompt, p.description) for p in subtasks] == [
        ("reviewer", "Review parser.py", "/review"), ("build", "Think about x y", "/alone")]
    assert sorted(c.id for c in children) == sorted(p.session_id or "" for p in subtasks)
    assert all(c.status == "ended" and c.depth == 1 for c in children)
    assert metrics.subtask_tokens == Tokens(input=107, output=11)
    assert metrics.tokens == Tokens()  # the parent called no model itself
    assert "No such file" in files.stdout  # the work happened in the child's container


@pytest.mark.docker
@pytest.mark.anyio
async def test_a_subtask_command_for_an_unknown_agent_or_too_deep_is_refused(
    client: AsyncSandboxClient, image: str, folders: tuple[Path, Path]
) -> None:
    _write(folders[1], "elsewhere", "---\nsubtask: true\nagent: nobody\n---\nDo it")
    _write(folders[1], "alone", "---\nsubtask: true\n---\nDo it")
    agent = client.agent("build", model="scripted", image=image, script=[],
                         config=AgentConfig(max_depth=0))
    async with await agent.create_session() as session:
        with pytest.raises(InvalidArgument, match="no agent 'nobody'"):
            await session.run_command("elsewhere")
        with pytest.raises(InvalidArgument, match="nest 0 deep"):
            await session.run_command("alone")
        messages = await session.get_messages()
    assert messages == []


@pytest.mark.docker
@pytest.mark.anyio
async def test_the_model_of_a_template_runs_its_turn_only(
    client: AsyncSandboxClient, session: AsyncSessionHandle
) -> None:
    client.add_command("cheap", "quick question", model="scripted/reviewer")

    assert await session.run_command("cheap") == "answer 1"
    await session.send("and now")

    models = [m.model for m in await session.get_messages() if m.role == "assistant"]
    assert models == ["scripted/reviewer", "scripted"]

    client.add_command("unknown", "x", model="nosuch/model")
    with pytest.raises(InvalidArgument, match="unknown provider 'nosuch'"):
        await session.run_command("unknown")
    assert len(await session.get_messages()) == 4  # the refused turn left nothing


@pytest.mark.docker
@pytest.mark.anyio
async def test_a_turn_that_does_not_complete_is_a_command_failure(
    client: AsyncSandboxClient, image: str, folders: tuple[Path, Path]
) -> None:
    client.add_command("go", "go")
    script = [{"error": {"message": "the model fell over"}}]
    agent = client.agent("build", model="scripted", script=script, image=image)
    async with await agent.create_session() as session:
        with pytest.raises(CommandFailed, match="its turn ended error"):
            await session.run_command("go")


@pytest.mark.docker
@pytest.mark.anyio
async def test_list_commands_from_client_and_session(
    client: AsyncSandboxClient, session: AsyncSessionHandle, folders: tuple[Path, Path]
) -> None:
    _write(folders[1], "team/review", "---\ndescription: Review\n---\nbody")
    client.add_command("inline", "x", description="registered")

    listed = [(t.name, t.description) for t in await client.list_commands()]
    assert listed == [("inline", "registered"), ("team/review", "Review")]
    assert [t.name for t in await session.list_commands()] == ["inline", "team/review"]
    assert [t.name for t in await client.session(session.id).list_commands()] == [
        "inline", "team/review"]


@pytest.mark.docker
def test_the_blocking_twin(sync_client: SandboxClient, image: str,
                           folders: tuple[Path, Path]) -> None:
    sync_client.add_command("hello", "Hello $1 from !`echo box`")
    agent = sync_client.agent("build", model="scripted", script=SCRIPT, image=image)
    with agent.create_session() as session:
        assert [t.name for t in session.list_commands()] == ["hello"]
        assert [t.name for t in sync_client.list_commands()] == ["hello"]
        assert session.run_command("hello", "you") == "answer 1"
        user = session.get_messages()[0]
        assert user.parts[0].text == "Hello you from box"  # type: ignore[union-attr]
