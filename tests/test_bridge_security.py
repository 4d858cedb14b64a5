"""The bridge locked down: requests without the token, from a foreign host or origin, with a
body over the cap or headers that could be read two ways are refused, and change nothing.

A real server on a loopback port over a real SQLite store, with one real session in it. Each
refused request is one that would change something (create, rename, end a session, run a
command, remove containers); the store's rows are compared before and after, and the
session's container is checked for what the refused command would have left.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from bridge import BridgeServer

from sandbox_sessions import SandboxClient
from sandbox_sessions._exceptions import InvalidArgument
from sandbox_sessions._tokens import TOKEN_BYTES, load_token

pytestmark = pytest.mark.docker

ALLOWED_ORIGIN = "http://app.example:8443"
UPLOAD_CAP = 64 * 1024
MARKER = "/tmp/refused-command-ran"
BODY = b'{"agent": "intruder"}'
"""A body that creates a session, were it let through."""
LENGTH = f"Content-Length: {len(BODY)}\r\nContent-Type: application/json"


@dataclass
class Bridge:
    server: BridgeServer
    store: Path
    session_id: str

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.server.token}", **extra}


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory, image: str) -> Iterator[Bridge]:
    store = tmp_path_factory.mktemp("security") / "sessions.db"
    with BridgeServer(store, allowed_origins=frozenset({ALLOWED_ORIGIN}),
                      max_upload=UPLOAD_CAP) as server:
        with SandboxClient(base_url=server.url, token=server.token) as client:
            session_id = client.agent("guarded", image=image).create_session(title="t").id
        try:
            yield Bridge(server, store, session_id)
        finally:
            with SandboxClient(base_url=server.url, token=server.token) as client:
                client.session(session_id).end()


def _rows(store: Path) -> list[str]:
    """Every row the store holds, read from the file itself once no write is pending (the
    log commits in groups, after the answer)."""
    rows = _read_rows(store)
    for _ in range(40):
        time.sleep(0.25)
        again = _read_rows(store)
        if again == rows:
            return rows
        rows = again
    raise AssertionError("the store never settled")


def _read_rows(store: Path) -> list[str]:
    """Every row the store holds (sorted: some tables have no rowid)."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        tables = [name for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return sorted(repr((table, *row)) for table in tables
                      for row in db.execute(f"SELECT * FROM {table}"))


def _mutations(bridge: Bridge) -> list[tuple[str, str, dict[str, object] | None]]:
    """Requests that would each change something, were they let through."""
    sid = bridge.session_id
    return [
        ("POST", "/sessions", {"agent": "intruder"}),
        ("PATCH", f"/sessions/{sid}", {"title": "changed"}),
        ("POST", f"/sessions/{sid}/shell", {"command": f"touch {MARKER}"}),
        ("DELETE", f"/sessions/{sid}", None),
        ("POST", "/gc", None),
        ("POST", f"/sessions/{sid}/turns", {"prompt": "hello"}),
    ]


def _marker_exists(bridge: Bridge) -> bool:
    with SandboxClient(base_url=bridge.server.url, token=bridge.server.token) as client:
        result = client.session(bridge.session_id).shell(f"test -e {MARKER}")
    return result.exit_code == 0


REFUSALS: dict[str, tuple[int, str, dict[str, str]]] = {
    "no token": (401, "unauthorized", {}),
    "wrong token": (401, "unauthorized", {"Authorization": "Bearer " + "0" * 64}),
    "token without Bearer": (401, "unauthorized", {"Authorization": "TOKEN"}),
    "foreign Host": (403, "request_refused", {"Host": "evil.example", "Authorization": "TOKEN"}),
    "Host on another port": (403, "request_refused",
                             {"Host": "127.0.0.1:1", "Authorization": "TOKEN"}),
    "foreign Origin": (403, "request_refused",
                       {"Origin": "http://evil.example", "Authorization": "TOKEN"}),
}


@pytest.mark.parametrize("refusal", list(REFUSALS))
def test_a_refused_request_changes_nothing(bridge: Bridge, refusal: str) -> None:
    status, code, given = REFUSALS[refusal]
    headers = {name: value.replace("TOKEN", f"Bearer {bridge.server.token}")
               for name, value in given.items()}
    if refusal == "token without Bearer":
        headers["Authorization"] = bridge.server.token
    before = _rows(bridge.store)
    with httpx.Client(base_url=bridge.server.url, timeout=30) as http:
        for method, path, body in _mutations(bridge):
            response = http.request(method, path, json=body, headers=headers)
            assert response.status_code == status, (method, path, response.text)
            assert response.json()["error"]["code"] == code
            assert response.headers.get("access-control-allow-origin") is None
    assert _rows(bridge.store) == before
    assert not _marker_exists(bridge)


def test_every_route_needs_the_token_the_openapi_document_too(bridge: Bridge) -> None:
    with httpx.Client(base_url=bridge.server.url, timeout=30) as http:
        for path in ("/openapi.json", "/sessions", f"/sessions/{bridge.session_id}",
                     f"/sessions/{bridge.session_id}/events", "/no-such-route"):
            response = http.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
        assert http.get("/openapi.json", headers=bridge.headers()).status_code == 200


def test_cors_echoes_an_allowed_origin_and_never_a_wildcard(bridge: Bridge) -> None:
    with httpx.Client(base_url=bridge.server.url, timeout=30) as http:
        allowed = http.get("/sessions", headers=bridge.headers(Origin=ALLOWED_ORIGIN))
        refused_with_origin = http.get("/sessions", headers={"Origin": ALLOWED_ORIGIN})
        plain = http.get("/sessions", headers=bridge.headers())
        preflight = http.options("/sessions", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert allowed.headers["vary"] == "Origin"
    assert refused_with_origin.status_code == 401
    assert plain.headers.get("access-control-allow-origin") is None
    assert preflight.status_code == 403
    for response in (allowed, refused_with_origin, plain, preflight):
        assert response.headers.get("access-control-allow-origin") != "*"


def test_an_allowed_origin_s_preflight_is_answered_without_the_token(bridge: Bridge) -> None:
    before = _rows(bridge.store)
    asking = {"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST",
              "Access-Control-Request-Headers": "authorization, content-type"}
    with httpx.Client(base_url=bridge.server.url, timeout=30) as http:
        allowed = http.options("/sessions", headers=asking)
        foreign_host = http.options("/sessions", headers={**asking, "Host": "evil.example"})
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"]
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert foreign_host.status_code == 403
    assert _rows(bridge.store) == before


def _exchange(port: int, head: bytes, body: bytes = b"") -> bytes:
    """What the server answers `head` (then `body`), read until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # answered, closed
            sock.sendall(head + body)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:  # it answered, then dropped a body it would not read
            pass
    return answer


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _head(bridge: Bridge, request_line: str, *lines: str) -> bytes:
    return "\r\n".join([request_line, *lines, "Connection: close", "", ""]).encode("latin-1")


@pytest.mark.parametrize("path", ["/sessions", "/sessions/{sid}/files?path=big"])
def test_a_1_tb_declared_body_is_refused_at_once(bridge: Bridge, path: str) -> None:
    before = _rows(bridge.store)
    method = "PUT" if "files" in path else "POST"
    head = _head(bridge, f"{method} {path.format(sid=bridge.session_id)} HTTP/1.1",
                 f"Host: {bridge.host}", f"Authorization: Bearer {bridge.server.token}",
                 "Content-Type: application/json", f"Content-Length: {10**12}")
    answer = _exchange(bridge.server.port, head)  # not a byte of the body is sent
    assert _status(answer) == 413
    assert b'"request_too_large"' in answer
    assert _rows(bridge.store) == before


def _chunked(size: int) -> bytes:
    piece = b"x" * 65536
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(size // len(piece))) \
        + b"0\r\n\r\n"


def test_a_chunked_json_body_over_the_cap_is_refused(bridge: Bridge) -> None:
    before = _rows(bridge.store)
    head = _head(bridge, "POST /sessions HTTP/1.1", f"Host: {bridge.host}",
                 f"Authorization: Bearer {bridge.server.token}",
                 "Content-Type: application/json", "Transfer-Encoding: chunked")
    answer = _exchange(bridge.server.port, head, _chunked(2 << 20))
    assert _status(answer) == 413
    assert b'"request_too_large"' in answer
    assert _rows(bridge.store) == before


def test_a_chunked_upload_over_its_cap_is_refused_and_leaves_no_file(bridge: Bridge) -> None:
    head = _head(bridge, f"PUT /sessions/{bridge.session_id}/files?path=/tmp/big HTTP/1.1",
                 f"Host: {bridge.host}", f"Authorization: Bearer {bridge.server.token}",
                 "Transfer-Encoding: chunked")
    answer = _exchange(bridge.server.port, head, _chunked(4 * UPLOAD_CAP))
    assert _status(answer) == 413
    assert b'"request_too_large"' in answer
    with SandboxClient(base_url=bridge.server.url, token=bridge.server.token) as client:
        left = client.session(bridge.session_id).shell("ls -A /tmp")
    assert "big" not in left.stdout


def _edge_cases(bridge: Bridge) -> dict[str, bytes]:
    host, auth = f"Host: {bridge.host}", f"Authorization: Bearer {bridge.server.token}"
    post = "POST /sessions HTTP/1.1"
    return {
        "two Host headers, foreign first": _head(bridge, post, "Host: evil.example", host, auth,
                                                 LENGTH),
        "two Host headers, foreign last": _head(bridge, post, host, "Host: evil.example", auth,
                                                LENGTH),
        "no Host (HTTP/1.0)": _head(bridge, "POST /sessions HTTP/1.0", auth,
                                    LENGTH),
        "no Host (HTTP/1.1)": _head(bridge, post, auth, LENGTH),
        "absolute-form target": _head(bridge, "POST http://evil.example/sessions HTTP/1.1",
                                      host, auth, LENGTH),
        "two Authorization headers": _head(bridge, post, host, "Authorization: Bearer x", auth,
                                           LENGTH),
        "two Content-Length headers": _head(bridge, post, host, auth, LENGTH,
                                            f"Content-Length: {10**12}"),
        "non-numeric Content-Length": _head(bridge, post, host, auth, "Content-Length: 2x"),
        "negative Content-Length": _head(bridge, post, host, auth, "Content-Length: -2"),
        "huge header value": _head(bridge, post, host, auth, LENGTH,
                                   "X-Filler: " + "a" * 200_000),
    }


def test_header_edge_cases_are_refused_and_change_nothing(bridge: Bridge) -> None:
    before = _rows(bridge.store)
    for name, head in _edge_cases(bridge).items():
        answer = _exchange(bridge.server.port, head, BODY)
        assert 400 <= _status(answer) < 500, (name, answer[:300])
    assert _rows(bridge.store) == before
    control = _head(bridge, "POST /sessions HTTP/1.1", f"Host: {bridge.host}",
                    f"Authorization: Bearer {bridge.server.token}", LENGTH)
    answer = _exchange(bridge.server.port, control, BODY)  # the same, well formed: it creates
    assert _status(answer) == 201, answer[:300]
    with SandboxClient(base_url=bridge.server.url, token=bridge.server.token) as client:
        client.session(json.loads(answer.partition(b"\r\n\r\n")[2])["id"]).end()


def test_no_route_and_a_wrong_method_answer_in_our_error_body(bridge: Bridge) -> None:
    with httpx.Client(base_url=bridge.server.url, headers=bridge.headers(), timeout=30) as http:
        missing = http.get("/no-such-route")
        wrong_method = http.put("/sessions")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "invalid_argument"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "invalid_argument"


def test_the_token_file_is_made_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "token"
    token = load_token(path, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 2 * TOKEN_BYTES
    int(token, 16)  # hex: 32 random bytes
    assert load_token(path, create=True) == token
    assert load_token(path, create=False) == token


def test_a_token_file_others_may_read_or_a_short_token_is_refused(tmp_path: Path) -> None:
    readable = tmp_path / "readable"
    load_token(readable, create=True)
    readable.chmod(0o640)
    with pytest.raises(InvalidArgument, match="read by others"):
        load_token(readable, create=True)
    short = tmp_path / "short"
    short.write_text("abc123\n")
    short.chmod(0o600)
    with pytest.raises(InvalidArgument, match="shorter"):
        load_token(short, create=True)
    link = tmp_path / "link"
    link.symlink_to(readable)
    with pytest.raises(InvalidArgument, match="cannot read"):
        load_token(link, create=True)
    with pytest.raises(InvalidArgument, match="no token file"):
        load_token(tmp_path / "missing", create=False)
