"""Fixtures on real components: the local Docker engine, the built image, SQLite files.

Tests marked `docker` need an engine. Without one they skip on a developer's machine, but with
`SANDBOX_SESSIONS_REQUIRE_DOCKER=1` (as in CI) they fail instead: CI never skips them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from servers import CannedServer

from sandbox_sessions import DEFAULT_IMAGE, AsyncSandboxClient, SandboxClient
from sandbox_sessions._exceptions import SandboxUnavailable
from sandbox_sessions.sandbox._engine import Engine

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


@pytest.fixture
async def client(store_path: Path) -> AsyncIterator[AsyncSandboxClient]:
    async with AsyncSandboxClient(store=store_path) as opened:
        yield opened


@pytest.fixture
def sync_client(store_path: Path) -> Iterator[SandboxClient]:
    with SandboxClient(store=store_path) as opened:
        yield opened
