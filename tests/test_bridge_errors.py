"""Errors across the bridge: what schemathesis found as 500s, pinned down as our errors with
a real status, and a failure of ours as a 500 in our body with no traceback in it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bridge import BridgeServer

from sandbox_sessions import SandboxClient
from sandbox_sessions.server import ServerConfig
from sandbox_sessions.server._app import MAX_SEQ, create_app
from sandbox_sessions.service import open_service

pytestmark = pytest.mark.docker

NAPPER: list[dict[str, Any]] = [
    {"tool_calls": [{"name": "bash", "input": {"command": "echo hi"}}]},
    {"text": "done"},
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, image: str
           ) -> Iterator[tuple[httpx.Client, str]]:
    """An authorized HTTP client on a bridge, and a session that ran one turn."""
    store = tmp_path_factory.mktemp("errors") / "sessions.db"
    with BridgeServer(store) as server:
        with SandboxClient(base_url=server.url, token=server.token) as client:
            session = client.agent("errors", model="scripted", script=NAPPER,
                                   image=image).create_session()
            session.send("go")
        headers = {"Authorization": f"Bearer {server.token}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
            try:
                yield http, session.id
            finally:
                http.delete(f"/sessions/{session.id}")


@pytest.mark.parametrize("sandbox", [
    {"image": ""},
    {"image": "Not A Reference!"},
    {"user": "nosuchuser"},
    {"cpus": 1e17},
    {"pids": 1 << 40},
    {"memory": "lots"},
    {"memory": "99999999p"},
], ids=repr)
def test_sandbox_options_the_engine_refuses_are_invalid_arguments(
    served: tuple[httpx.Client, str], image: str, sandbox: dict[str, Any]
) -> None:
    http, _ = served
    response = http.post("/sessions", json={"agent": "a", "sandbox": {"image": image,
                                                                       **sandbox}})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_argument"


@pytest.mark.parametrize("config", [
    {"harness": "claude-code", "model": "openai/gpt-5"},
    {"harness": "codex", "model": "anthropic/claude-sonnet-4-5"},
    {"harness": "opencode", "model": "scripted"},
    {"harness": "aider", "model": "openai/gpt-5"},
], ids=repr)
def test_a_harness_with_a_model_its_cli_cannot_use_is_an_invalid_argument(
    served: tuple[httpx.Client, str], image: str, config: dict[str, Any]
) -> None:
    """A raw request is checked by the service, as `agent()` checks it in the client."""
    http, _ = served
    response = http.post("/sessions", json={"agent": "a", "sandbox": {"image": image},
                                            "config": config})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_argument"
    assert "harness" in response.json()["error"]["message"]


def test_messages_after_any_seq_and_out_of_range_seqs(served: tuple[httpx.Client, str]) -> None:
    http, session_id = served
    assert len(http.get(f"/sessions/{session_id}/messages").json()) >= 2
    for after in range(12):  # some fall inside a message: its later events have no start
        response = http.get(f"/sessions/{session_id}/messages", params={"after": after})
        assert response.status_code == 200, (after, response.text)
    too_far = http.get(f"/sessions/{session_id}/messages", params={"after": MAX_SEQ + 1})
    assert too_far.status_code == 400
    assert too_far.json()["error"]["code"] == "invalid_argument"
    for cursor in ("\u00b2".encode("latin-1"), str(MAX_SEQ + 1).encode()):
        response = http.get(f"/sessions/{session_id}/events",
                            headers={b"Last-Event-ID": cursor})  # "²" is a digit to str
        assert response.status_code == 400, cursor
        assert response.json()["error"]["code"] == "invalid_argument"


@pytest.mark.anyio
async def test_a_failure_of_ours_is_a_500_in_our_body_logged_not_sent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = ServerConfig(token="t" * 64)
    async with open_service(store=tmp_path / "sessions.db", reap_orphans=False) as service:
        guard, bridge = create_app(service, config)

        @bridge.app.get("/boom")
        async def boom() -> None:
            raise RuntimeError("a secret detail")

        transport = httpx.ASGITransport(app=guard, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:4096",
                                     headers={"Authorization": f"Bearer {config.token}"}
                                     ) as http:
            with caplog.at_level(logging.ERROR, logger="sandbox_sessions.server"):
                response = await http.get("/boom")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "internal_error"
    assert error["retryable"] is False
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    assert "a secret detail" in caplog.text  # the traceback is in the server's log
