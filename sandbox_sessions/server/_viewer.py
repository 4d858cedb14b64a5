"""The session viewer: one page (plain HTML, JS and CSS from `viewer/`, no build step, nothing
from the internet) that lists the sessions and follows one live over the event stream.

Logging in posts the token in a form (never in a URL that is kept: history, logs, the
`Referer`); a right one sets it as an HttpOnly, SameSite=Strict cookie that the `Guard`
takes in place of the bearer header, a wrong one gets the form again with 401 and no cookie.
Only the page's static files, the login form and logout are served without a credential;
they still pass the Guard's Host and Origin checks. Every response here carries a strict
Content-Security-Policy (no inline script), so a hostile text that slipped into the DOM could
run nothing; the page itself writes every text of a session with `textContent`.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Final
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ._config import ServerConfig

__all__ = ["COOKIE", "PUBLIC", "viewer_routes"]

COOKIE: Final = "sandbox_sessions_token"
"""The cookie that carries the token for the page (and its event streams: a browser's
`EventSource` cannot send a header)."""
PAGE: Final = "/viewer/"
LOGIN: Final = "/viewer/login"
LOGOUT: Final = "/viewer/logout"
ASSETS: Final = {"viewer.js": "text/javascript; charset=utf-8",
                 "viewer.css": "text/css; charset=utf-8"}
PUBLIC: Final = frozenset({
    ("GET", "/"), ("GET", "/viewer"), ("GET", PAGE), ("GET", LOGIN), ("POST", LOGIN),
    ("POST", LOGOUT),
    *(("GET", PAGE + name) for name in ASSETS)})
"""(method, path) served without a credential: the page's static shell, its login form and
logout, and `/`, which sends a browser to the page. Nothing in them comes from a session."""

CSP: Final = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
              "connect-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; "
              "frame-ancestors 'none'")
HEADERS: Final = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    # not `no-referrer`: with it a browser sends `Origin: null` on a form's POST (the Fetch
    # standard), and the Guard could no longer tell the login and logout forms from another
    # site's. Same-origin sends no referrer elsewhere, and no URL here holds a secret.
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
WRONG_TOKEN: Final = "That is not this server's token."
MAX_FIELDS: Final = 8


def _asset(name: str) -> str:
    return (resources.files(__package__) / "viewer" / name).read_text(encoding="utf-8")


def _cookie(value: str, *, max_age: int | None = None) -> str:
    # No `Secure`: the bridge serves plain http on loopback, where a browser would then never
    # send the cookie back. SameSite=Strict keeps it off requests started by other sites; the
    # Guard's Origin check covers other ports of this host (the same site to a browser).
    age = "" if max_age is None else f"; Max-Age={max_age}"
    return f"{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/{age}"


def viewer_routes(app: FastAPI, config: ServerConfig) -> None:
    """Add the page, its assets, login and logout to `app` (left out of the OpenAPI
    document: they are for a browser, not for the HTTP transport)."""
    page, login = _asset("index.html"), _asset("login.html")
    assets = {name: _asset(name) for name in ASSETS}
    token = config.token.encode()

    def html(text: str, status: int = 200) -> Response:
        return Response(text, status_code=status, media_type="text/html; charset=utf-8",
                        headers=HEADERS)

    def see_other(location: str, cookie: str) -> Response:
        return Response(status_code=303, headers={**HEADERS, "location": location,
                                                  "set-cookie": cookie})

    @app.get("/", include_in_schema=False)
    @app.get("/viewer", include_in_schema=False)
    async def viewer_root() -> Response:
        return Response(status_code=308, headers={**HEADERS, "location": PAGE})

    @app.get(PAGE, include_in_schema=False)
    async def viewer_page() -> Response:
        return html(page)

    for name, media in ASSETS.items():
        app.add_api_route(PAGE + name, _serving(assets[name], media), methods=["GET"],
                          include_in_schema=False)

    @app.get(LOGIN, include_in_schema=False)
    async def viewer_login_form() -> Response:
        return html(login.replace("<!--error-->", ""))

    @app.post(LOGIN, include_in_schema=False)
    async def viewer_login(request: Request) -> Response:
        given = _submitted(await request.body())
        if not hmac.compare_digest(given.encode(), token):
            return html(login.replace("<!--error-->", WRONG_TOKEN), status=401)
        return see_other(PAGE, _cookie(config.token))

    @app.post(LOGOUT, include_in_schema=False)
    async def viewer_logout() -> Response:
        return see_other(LOGIN, _cookie("", max_age=0))


def _serving(text: str, media: str) -> Callable[[], Awaitable[Response]]:
    async def asset() -> Response:
        return Response(text, media_type=media, headers=HEADERS)

    return asset


def _submitted(body: bytes) -> str:
    """The form's `token` field ("" when there is none, or the form is not one)."""
    try:
        fields = parse_qsl(body.decode("utf-8", "replace"), max_num_fields=MAX_FIELDS)
    except ValueError:  # more fields than a login form has
        return ""
    return next((value for name, value in fields if name == "token"), "").strip()
