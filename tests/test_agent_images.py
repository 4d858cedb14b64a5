"""The agents image: agent CLIs installed from npm on the host, run offline in a container.

Against the real Docker engine and the real `npm` (the only step that needs a registry: the
first build installs the three packages into this module's own cache folder).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from cli_support import cli, cli_env, json_lines

from sandbox_sessions import DEFAULT_IMAGE, SandboxClient, SandboxOptions
from sandbox_sessions._exceptions import ImageBuildError, InvalidArgument
from sandbox_sessions.sandbox._agent_images import (
    AGENT_CLIS,
    AGENTS_LABEL,
    AgentImageBuild,
    build_agent_image,
    default_cache_dir,
)
from sandbox_sessions.sandbox._engine import Engine
from sandbox_sessions.sandbox._images import BASE_ID_LABEL, CONTENT_HASH_LABEL, IMAGE_LABEL
from sandbox_sessions.sandbox.base import ShellRequest
from sandbox_sessions.sandbox.docker import DockerBackend

pytestmark = pytest.mark.docker

TAG = "sandbox-sessions/test-agents:all"
"""The test's image with the three CLIs (not `AGENTS_IMAGE`: that one stays the user's)."""
SMALL = "sandbox-sessions/test-agents:opencode"
"""The test's image with opencode alone."""
VERSIONS = {"claude": "2.1.332 (Claude Code)", "codex": "codex-cli 0.171.0",
            "opencode": "1.18.33"}
"""What each CLI's `--version` prints, for the pinned versions."""


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = Engine()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def xdg_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An `XDG_CACHE_HOME` of the module's own: npm installs into it once, on the first
    build."""
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture(scope="module")
def cache(xdg_cache: Path, monkeypatch_module: pytest.MonkeyPatch) -> Path:
    monkeypatch_module.setenv("XDG_CACHE_HOME", str(xdg_cache))
    return default_cache_dir()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def first(engine: Engine, image: str, cache: Path) -> tuple[AgentImageBuild, list[str]]:
    """The three CLIs installed with npm into an empty cache, and the image built (forced:
    an image left by an earlier run is built again)."""
    lines: list[str] = []
    build = build_agent_image(engine, agents=list(AGENT_CLIS), tag=TAG, base=image,
                              force=True, cache_dir=cache, progress=lines.append)
    return build, lines


def test_first_build_installs_with_npm_and_builds(
    engine: Engine, first: tuple[AgentImageBuild, list[str]], cache: Path
) -> None:
    build, lines = first

    assert build.built is True
    assert build.tag == TAG
    assert engine.image_id(TAG) == build.image_id
    assert [agent.name for agent in build.agents] == ["claude-code", "codex", "opencode"]
    for cli_ in AGENT_CLIS.values():
        assert f"npm install {cli_.package}@{cli_.version}" in lines
        assert (cache / cli_.name / cli_.version / "node_modules" / cli_.native
                / cli_.program).is_file()
    assert any(line.startswith("Step ") for line in lines), lines


def test_image_carries_its_labels(
    engine: Engine, first: tuple[AgentImageBuild, list[str]], image: str
) -> None:
    build, _ = first
    labels = engine.image_labels(TAG)

    assert labels is not None
    assert labels[IMAGE_LABEL] == "agents"
    assert labels[BASE_ID_LABEL] == build.base_id == engine.image_id(image)
    assert labels[CONTENT_HASH_LABEL] == build.content_hash
    recorded = json.loads(labels[AGENTS_LABEL])
    assert [(item["name"], item["version"]) for item in recorded] == [
        (cli_.name, cli_.version) for cli_ in AGENT_CLIS.values()]
    assert all(len(item["sha256"]) == 64 for item in recorded)


def test_each_cli_runs_offline_as_uid_1000(
    first: tuple[AgentImageBuild, list[str]], tmp_path: Path
) -> None:
    with SandboxClient(store=tmp_path / "sessions.db") as client:
        session = client.agent("agents", image=TAG).create_session()
        try:
            who = session.shell("id -u; ls /sys/class/net; test -w \"$HOME\" && echo writable")
            versions = {command: session.shell(f"{command} --version")
                        for command in VERSIONS}
        finally:
            session.end()

    assert who.exit_code == 0, who.stderr
    assert who.stdout.split() == ["1000", "lo", "writable"]  # no network but loopback
    for command, expected in VERSIONS.items():
        run = versions[command]
        assert run.exit_code == 0, (command, run.stdout, run.stderr)
        assert run.stdout.strip() == expected, command


@pytest.fixture
async def tmpfs_backend(tmp_path: Path) -> AsyncIterator[tuple[DockerBackend, dict[str, str]]]:
    """A backend giving its containers a read-only root with tmpfs folders (the home among
    them), as engines without disk quotas do; labels naming a store file, for `gc`."""
    store = tmp_path / "store.db"
    store.touch()
    labels = {"sandbox-sessions": "1", "sandbox-sessions.session": "ses_test_agents",
              "sandbox-sessions.owner": "test-agents", "sandbox-sessions.store": str(store)}
    async with anyio.create_task_group() as task_group:
        yield DockerBackend(Engine(), task_group=task_group, disk_mode="tmpfs"), labels
        task_group.cancel_scope.cancel()


@pytest.mark.anyio
async def test_each_cli_runs_on_a_read_only_root(
    first: tuple[AgentImageBuild, list[str]],
    tmpfs_backend: tuple[DockerBackend, dict[str, str]],
) -> None:
    backend, labels = tmpfs_backend
    sandbox = await backend.create(SandboxOptions(image=TAG), labels=labels)
    try:
        runs = {command: await sandbox.shell(ShellRequest(command=f"{command} --version"))
                for command in VERSIONS}
        root = await sandbox.shell(ShellRequest(command="touch /opt/x"))
    finally:
        with anyio.CancelScope(shield=True):
            await sandbox.aclose()
            await backend.destroy(sandbox.id)

    assert root.exit_code != 0  # the root is read-only: the CLIs wrote to the tmpfs home
    for command, expected in VERSIONS.items():
        assert runs[command].exit_code == 0, (command, runs[command].stderr)
        assert runs[command].stdout.strip() == expected, command


def test_second_build_is_up_to_date_without_npm_or_cache(
    engine: Engine, first: tuple[AgentImageBuild, list[str]], image: str, tmp_path: Path
) -> None:
    build, _ = first
    empty = tmp_path / "no-cache"
    lines: list[str] = []

    again = build_agent_image(engine, agents=["claude-code", "codex", "opencode"], tag=TAG,
                              base=image, cache_dir=empty, progress=lines.append)

    assert again.built is False
    assert again.image_id == build.image_id
    assert again.agents == build.agents
    assert again.content_hash == build.content_hash
    assert not empty.exists()  # the labels decided: npm never ran, the cache was not read
    assert not any("npm" in line for line in lines), lines
    assert any("up to date" in line for line in lines), lines


def test_other_agents_build_from_the_cache_and_force_builds_again(
    engine: Engine, first: tuple[AgentImageBuild, list[str]], image: str, cache: Path
) -> None:
    lines: list[str] = []
    small = build_agent_image(engine, agents=["opencode"], tag=SMALL, base=image,
                              cache_dir=cache, progress=lines.append)
    up_to_date = build_agent_image(engine, agents=["opencode"], tag=SMALL, base=image,
                                   cache_dir=cache)
    forced_lines: list[str] = []
    forced = build_agent_image(engine, agents=["opencode"], tag=SMALL, base=image,
                               cache_dir=cache, force=True, progress=forced_lines.append)

    assert [agent.name for agent in small.agents] == ["opencode"]
    assert small.content_hash != first[0].content_hash
    assert not any(line.startswith("npm install") for line in lines + forced_lines)
    assert up_to_date.built is False
    assert forced.built is True
    assert any(line.startswith("Step ") for line in forced_lines), forced_lines
    assert engine.image_id(SMALL) == forced.image_id


def test_unknown_agent_is_refused_by_name(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"unknown agent 'aider'.*claude-code"):
        build_agent_image(engine, agents=["codex", "aider"], tag=SMALL, cache_dir=tmp_path)

    assert list(tmp_path.iterdir()) == []


def test_failed_npm_raises_with_its_output_and_leaves_no_cache_entry(
    engine: Engine, image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Port 9 (discard) on loopback refuses at once: npm fails fast, as with no registry.
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    cache = tmp_path / "cache"
    stale = cache / "opencode" / AGENT_CLIS["opencode"].version
    stale.mkdir(parents=True)  # an entry without its program: not to be trusted
    lines: list[str] = []

    with pytest.raises(ImageBuildError, match=r"npm install opencode-ai@.* failed") as caught:
        build_agent_image(engine, agents=["opencode"], tag=SMALL, base=image, force=True,
                          cache_dir=cache, progress=lines.append)

    assert lines
    assert lines[-1] in str(caught.value)
    assert list((cache / "opencode").iterdir()) == []


def test_cli_refuses_an_unknown_agent_with_exit_2(tmp_path: Path) -> None:
    done = cli(tmp_path, "images", "build", "--with", "codex,nope")

    assert done.returncode == 2, done.stderr
    assert "unknown agent 'nope'" in done.stderr
    assert "claude-code, codex, opencode" in done.stderr


def test_cli_builds_with_and_prints_the_result(
    first: tuple[AgentImageBuild, list[str]], xdg_cache: Path, tmp_path: Path
) -> None:
    env = cli_env(tmp_path / "sessions.db", XDG_CACHE_HOME=str(xdg_cache))
    done = cli(tmp_path, "images", "build", "--with", " opencode ", "--agents-tag", SMALL,
               "--json", env=env, timeout=600)

    assert done.returncode == 0, done.stderr
    (result,) = json_lines(done.stdout)
    assert result["tag"] == SMALL
    assert [agent["command"] for agent in result["agents"]] == ["opencode"]
    assert result["base"] == DEFAULT_IMAGE
    assert "npm install" not in done.stderr  # in the cache since the first build
    listed = cli(tmp_path, "images", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert SMALL in listed.stdout

