"""Fixtures on real components: the local Docker engine, the built image, SQLite files.

Tests marked `docker` need an engine. Without one they skip on a developer's machine, but with
`SANDBOX_SESSIONS_REQUIRE_DOCKER=1` (as in CI) they fail instead: CI never skips them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from bridge import BridgeServer
from servers import CannedServer

from sandbox_sessions import (
    AGENTS_IMAGE,
    DEFAULT_IMAGE,
    AsyncSandboxClient,
    AsyncSessionHandle,
    SandboxClient,
)
from sandbox_sessions._exceptions import SandboxUnavailable
from sandbox_sessions.sandbox._engine import Engine
from sandbox_sessions.sandbox.docker import DockerSandbox

REQUIRE_DOCKER = os.environ.get("SANDBOX_SESSIONS_REQUIRE_DOCKER") == "1"
IMAGE = os.environ.get("SANDBOX_SESSIONS_TEST_IMAGE", DEFAULT_IMAGE)


def _engine_problem() -> str | None:
    try:
        Engine().ping()
    except SandboxUnavailable as exc:
        return str(exc)
    return None


_PROBLEM = _engine_problem()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _PROBLEM is None or REQUIRE_DOCKER:
        return  # with REQUIRE_DOCKER, `_fail_without_engine` fails each Docker test instead
    for item in items:
        if "docker" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=f"no Docker engine: {_PROBLEM}"))


@pytest.fixture(autouse=True)
def _fail_without_engine(request: pytest.FixtureRequest) -> None:
    if _PROBLEM is not None and REQUIRE_DOCKER and "docker" in request.keywords:
        pytest.fail(f"SANDBOX_SESSIONS_REQUIRE_DOCKER=1 but no Docker engine: {_PROBLEM}")


@pytest.fixture(scope="session")
def image() -> str:
    """The sandbox image; it must have been built (`sandbox-sessions images build`)."""
    labels = Engine().image_labels(IMAGE) if _PROBLEM is None else None
    if labels is None:
        pytest.fail(f"image {IMAGE} is missing: run `sandbox-sessions images build` first")
    return IMAGE


@pytest.fixture(scope="session")
def agents_image() -> str:
    """The image with the agent CLIs (`images build --with claude-code,codex,opencode`,
    which `scripts/setup.sh` runs)."""
    labels = Engine().image_labels(AGENTS_IMAGE) if _PROBLEM is None else None
    if labels is None:
        pytest.fail(f"image {AGENTS_IMAGE} is missing: run `sandbox-sessions images build "
                    "--with claude-code,codex,opencode` first")
    return AGENTS_IMAGE


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def http_server() -> Iterator[CannedServer]:
    """A loopback HTTP server answering from a queue of canned responses (tests/servers.py)."""
    with CannedServer() as server:
        yield server


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """A fresh SQLite store file for one test."""
    return tmp_path / "sessions.db"


CONFORMANCE = frozenset({
    "test_session_api", "test_agent", "test_agent_permissions", "test_agent_lifecycle",
    "test_api_validation", "test_bad_input", "test_bounded_reads", "test_tool_links",
    "test_restarts", "test_deadlines", "test_commands",
    "test_session_records", "test_budgets", "test_questions", "test_export",
    "test_compaction", "test_fork", "test_subtasks", "test_revert", "test_history", "test_transfer",
    "test_harness_api", "test_harness_claude",
})
"""The session API suites: each of their tests runs once per transport, in-process and over
HTTP against a real bridge on a loopback port (the `transport` fixture)."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rpartition(".")[2]
    if "transport" in metafunc.fixturenames:
        kinds = ["inprocess", "http"] if module in CONFORMANCE else ["inprocess"]
        metafunc.parametrize("transport", kinds, scope="function")


@pytest.fixture
def bridge(transport: str, store_path: Path) -> Iterator[BridgeServer | None]:
    """A real bridge over the test's store when the transport is `http`, else None."""
    if transport != "http":
        yield None
        return
    with BridgeServer(store_path) as server:
        yield server


def _client_options(bridge: BridgeServer | None, store_path: Path) -> dict[str, object]:
    if bridge is None:
        return {"store": store_path}
    return {"base_url": bridge.url, "token": bridge.token}


@pytest.fixture
async def client(
    bridge: BridgeServer | None, store_path: Path
) -> AsyncIterator[AsyncSandboxClient]:
    """The client of the session API tests: embedded, or over HTTP (see `CONFORMANCE`)."""
    async with AsyncSandboxClient(**_client_options(bridge, store_path)) as opened:  # type: ignore[arg-type]
        yield opened


@pytest.fixture
def sync_client(bridge: BridgeServer | None, store_path: Path) -> Iterator[SandboxClient]:
    """The blocking twin of `client`, over the same transport."""
    with SandboxClient(**_client_options(bridge, store_path)) as opened:  # type: ignore[arg-type]
        yield opened


@pytest.fixture
async def embedded_client(store_path: Path) -> AsyncIterator[AsyncSandboxClient]:
    """An in-process client, for tests that look behind the API (the service, the backend)."""
    async with AsyncSandboxClient(store=store_path) as opened:
        yield opened


@pytest.fixture
async def sandbox(embedded_client: AsyncSandboxClient, session: AsyncSessionHandle
                  ) -> DockerSandbox:
    """The Docker sandbox behind the module's `session` fixture (an embedded client's)."""
    found = await embedded_client.service.sandbox(session.id)
    assert isinstance(found, DockerSandbox)
    return found
