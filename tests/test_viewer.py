"""The session viewer over HTTP: its page and assets, the login form and its cookie, and the
Guard's rules for that cookie, against a real bridge on a loopback port.

Each refusal is checked by its status and our error code; a request the Guard lets through
is told by the route's own answer (a session that does not exist is a 404 from the service,
not a 401 or a 403 from the Guard).
"""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from bridge import BridgeServer

pytestmark = pytest.mark.docker

COOKIE = "sandbox_sessions_token"
ALLOWED_ORIGIN = "http://app.example:8443"
MISSING = "/sessions/no-such-session"
"""A session that does not exist: a request the Guard lets through gets the service's 404."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeServer]:
    store = tmp_path_factory.mktemp("viewer") / "sessions.db"
    with BridgeServer(store, allowed_origins=frozenset({ALLOWED_ORIGIN})) as running:
        yield running


@pytest.fixture
def http(server: BridgeServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30, follow_redirects=False) as client:
        yield client


def own(server: BridgeServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def cookie(value: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={value}"}


def assert_page_headers(response: httpx.Response) -> None:
    policy = response.headers["content-security-policy"]
    directives = {part.strip().split()[0]: part.strip().split()[1:]
                  for part in policy.split(";") if part.strip()}
    assert directives["default-src"] == ["'self'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    # same-origin, not no-referrer: with no-referrer a form's POST says `Origin: null`
    assert response.headers["referrer-policy"] == "same-origin"
    assert response.headers["x-frame-options"] == "DENY"


class _Markup(HTMLParser):
    """What a page loads and runs: scripts (with their inline text), links, handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline: list[str] = []
        self.urls: list[str] = []
        self.handlers: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handlers += [name for name, _ in attrs if name.startswith("on")]
        self.urls += [value or "" for name, value in attrs if name in ("src", "href", "action")]
        if tag == "script":
            self.scripts.append(dict(attrs))
            self._in_script = True
        if tag == "style" or any(name == "style" for name, _ in attrs):
            self.inline.append(f"<{tag} style>")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(data)


def test_the_page_and_its_assets_are_served_without_a_token_with_strict_headers(
    http: httpx.Client,
) -> None:
    kinds = {"/viewer/": "text/html", "/viewer/login": "text/html",
             "/viewer/viewer.js": "text/javascript", "/viewer/viewer.css": "text/css"}
    for path, kind in kinds.items():
        response = http.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(kind), path
        assert_page_headers(response)
    for path in ("/viewer/", "/viewer/login"):
        markup = _Markup()
        markup.feed(http.get(path).text)
        assert markup.inline == [], path  # nothing inline to run
        assert markup.handlers == [], path
        assert all(url.startswith("/viewer/") for url in markup.urls), markup.urls
    assert [script.get("src") for script in _scripts(http)] == ["/viewer/viewer.js"]
    for short in ("/viewer", "/"):  # what a person types is sent to the page
        redirect = http.get(short)
        assert redirect.status_code == 308
        assert redirect.headers["location"] == "/viewer/"


def _scripts(http: httpx.Client) -> list[dict[str, str | None]]:
    markup = _Markup()
    markup.feed(http.get("/viewer/").text)
    return markup.scripts


def test_only_the_page_s_shell_is_public(http: httpx.Client, server: BridgeServer) -> None:
    for path in ("/viewer/other.js", "/viewer/index.html", "/sessions", "/openapi.json"):
        response = http.get(path)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "unauthorized"
    # the API's own answers let nothing run, were one opened in the browser
    api = http.get("/sessions", headers={"Authorization": f"Bearer {server.token}"})
    assert api.status_code == 200
    assert api.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in api.headers["content-security-policy"]
    assert "sandbox" in api.headers["content-security-policy"]


def test_a_wrong_token_gets_the_form_again_with_401_and_no_cookie(
    http: httpx.Client, server: BridgeServer,
) -> None:
    origin = {"Origin": own(server)}
    for form in ({"token": "0" * 64}, {"token": server.token[:-1]}, {"other": server.token},
                 {}):
        response = http.post("/viewer/login", data=form, headers=origin)
        assert response.status_code == 401, form
        assert "set-cookie" not in response.headers
        assert 'action="/viewer/login"' in response.text
        assert "not this server's token" in response.text
        assert server.token not in response.text
        assert_page_headers(response)
    many = "&".join(f"f{n}=1" for n in range(50)) + f"&token={server.token}"
    crowded = http.post("/viewer/login", content=many, headers={
        **origin, "Content-Type": "application/x-www-form-urlencoded"})
    assert crowded.status_code == 401
    assert "set-cookie" not in crowded.headers


def _login(http: httpx.Client, server: BridgeServer) -> httpx.Response:
    return http.post("/viewer/login", data={"token": server.token},
                     headers={"Origin": own(server)})


def test_the_right_token_sets_an_httponly_strict_cookie_and_never_a_url(
    http: httpx.Client, server: BridgeServer,
) -> None:
    response = _login(http, server)
    assert response.status_code == 303
    assert response.headers["location"] == "/viewer/"
    assert server.token not in response.headers["location"]
    name_value, *attributes = [part.strip() for part in
                               response.headers["set-cookie"].split(";")]
    assert name_value == f"{COOKIE}={server.token}"
    assert {attribute.lower() for attribute in attributes} >= {
        "httponly", "samesite=strict", "path=/"}
    followed = http.get(response.headers["location"])
    assert followed.status_code == 200
    assert server.token not in str(followed.url)
    assert server.token not in followed.text


def test_the_api_and_its_event_stream_take_the_cookie(
    http: httpx.Client, server: BridgeServer,
) -> None:
    listed = http.get("/sessions", headers=cookie(server.token))
    assert listed.status_code == 200
    assert isinstance(listed.json(), list)
    stream = http.get(f"{MISSING}/events", headers=cookie(server.token))
    assert stream.status_code == 404  # through the Guard: the service says it does not exist
    assert stream.json()["error"]["code"] == "session_not_found"
    for wrong in ("0" * 64, "", server.token + "0"):
        refused = http.get("/sessions", headers=cookie(wrong))
        assert refused.status_code == 401, wrong
    # a right cookie never makes up for a wrong bearer header
    mixed = http.get("/sessions", headers={**cookie(server.token),
                                           "Authorization": "Bearer " + "0" * 64})
    assert mixed.status_code == 401
    # a cookie of this name set by another port of this host cannot hide the right one
    tossed = http.get("/sessions",
                      headers={"Cookie": f"{COOKIE}=planted; {COOKIE}={server.token}"})
    assert tossed.status_code == 200


def test_a_cookie_request_that_changes_something_needs_this_server_s_origin(
    http: httpx.Client, server: BridgeServer,
) -> None:
    path = f"{MISSING}/abort"
    refused: dict[str, dict[str, str]] = {
        "no Origin": {},
        "foreign Origin": {"Origin": "http://evil.example"},
        "another port of this host": {"Origin": "http://127.0.0.1:1"},
        "https": {"Origin": f"https://127.0.0.1:{server.port}"},
        "null": {"Origin": "null"},
    }
    for why, given in refused.items():
        response = http.post(path, headers={**cookie(server.token), **given})
        assert response.status_code == 403, why
        assert response.json()["error"]["code"] == "request_refused"
    for origin in (own(server), ALLOWED_ORIGIN):
        let_through = http.post(path, headers={**cookie(server.token), "Origin": origin})
        assert let_through.status_code == 404, origin
        assert let_through.json()["error"]["code"] == "session_not_found"
    by_name = http.post(path, headers={**cookie(server.token), "Host": f"localhost:{server.port}",
                                       "Origin": f"http://localhost:{server.port}"})
    assert by_name.status_code == 404
    # the bearer header needs no Origin: it is no browser's ambient credential
    bearer = http.post(path, headers={"Authorization": f"Bearer {server.token}"})
    assert bearer.status_code == 404


def test_a_foreign_host_is_refused_even_with_the_cookie(
    http: httpx.Client, server: BridgeServer,
) -> None:
    evil = {"Host": "evil.example", "Origin": "http://evil.example"}
    requests = [("GET", "/sessions", cookie(server.token)),
                ("GET", "/viewer/", {}),
                ("GET", "/viewer/viewer.js", {}),
                ("POST", "/viewer/login", {}),
                ("POST", f"{MISSING}/abort", cookie(server.token))]
    for method, path, headers in requests:
        for host in ({"Host": "evil.example"}, evil, {"Host": f"127.0.0.1:{server.port + 1}"}):
            response = http.request(method, path, data={"token": server.token}
                                    if path == "/viewer/login" else None,
                                    headers={**headers, **host})
            assert response.status_code == 403, (method, path, host)
            assert "set-cookie" not in response.headers


def test_login_and_logout_need_this_server_s_origin(
    http: httpx.Client, server: BridgeServer,
) -> None:
    for origin in ({}, {"Origin": "http://evil.example"}, {"Origin": "null"}):
        login = http.post("/viewer/login", data={"token": server.token}, headers=origin)
        assert login.status_code == 403, origin
        assert "set-cookie" not in login.headers
        assert http.post("/viewer/logout", headers=origin).status_code == 403
    logout = http.post("/viewer/logout", headers={"Origin": own(server)})
    assert logout.status_code == 303
    assert logout.headers["location"] == "/viewer/login"
    cleared = [part.strip().lower() for part in logout.headers["set-cookie"].split(";")]
    assert cleared[0] == f"{COOKIE}="
    assert "max-age=0" in cleared
    assert "httponly" in cleared


def test_the_page_is_shipped_in_the_package() -> None:
    import sandbox_sessions.server as package

    folder = Path(package.__file__).parent / "viewer"
    assert sorted(path.name for path in folder.iterdir()) == [
        "index.html", "login.html", "viewer.css", "viewer.js"]
    for path in folder.iterdir():
        text = path.read_text()
        for banned in ("http://", "https://",  # nothing from outside
                       "innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
            assert banned not in text, (path, banned)
