"""The session viewer in a real browser: headless Chromium (Debian's `chromium`, driven by
Playwright with `executable_path`; no browser is ever downloaded) against a real bridge, a
real container and the scripted model.

The test logs in through the form, opens the session from the list, sends the prompt from
the page, sees the streamed text, clicks "once" on the permission request, sees the turn end,
downloads the artifact through its link, and checks a screenshot for real content. Without
Chromium or Playwright it skips on a developer's machine, and fails with
`SANDBOX_SESSIONS_REQUIRE_DOCKER=1` (as in CI), as the Docker tests do.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from bridge import BridgeServer

from sandbox_sessions import SandboxClient, ToolPart

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.docker

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]
WAIT = 30_000
"""Milliseconds a page waits for what a turn shows (a container runs the tools)."""
COMMAND = "echo viewer-ok > report.txt && cat report.txt"
SCRIPT: list[dict[str, Any]] = [
    {"reasoning": "The user wants a report.",
     "text": "Writing the report in the workspace first.",
     "tool_calls": [
         {"name": "todowrite", "input": {"todos": [
             {"content": "Write the report", "status": "in_progress"}]}},
         {"name": "bash", "input": {"command": COMMAND}}]},
    {"tool_calls": [{"name": "artifact", "input": {"path": "report.txt"}}]},
    {"text": "All done: the report is saved as an artifact."},
]
"""The first step streams text, then its bash call asks (every bash line does here)."""


def _browser_problem() -> str | None:
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")):
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright's Python package is missing (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    problem = _browser_problem()
    if problem is not None:
        if os.environ.get("SANDBOX_SESSIONS_REQUIRE_DOCKER") == "1":
            pytest.fail(f"SANDBOX_SESSIONS_REQUIRE_DOCKER=1 but {problem}")
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


def _log_in(page: Page, server: BridgeServer) -> None:
    page.goto(f"{server.url}/viewer/")
    page.wait_for_url(f"{server.url}/viewer/login")  # the page found no cookie
    page.fill("#token", "0" * 64)
    page.click("#login-submit")
    from playwright.sync_api import expect

    expect(page.locator("#login-error")).to_contain_text("not this server's token")
    page.fill("#token", server.token)
    page.click("#login-submit")
    page.wait_for_url(f"{server.url}/viewer/")


def test_a_live_session_is_watched_and_answered_in_chromium(
    browser: Browser, image: str, tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    with BridgeServer(tmp_path / "sessions.db") as server, \
            SandboxClient(base_url=server.url, token=server.token) as client:
        session = client.agent("viewer", model="scripted", script=SCRIPT, image=image,
                               permissions={"bash": {"*": "ask"}}
                               ).create_session(title="watched in chromium")
        context = browser.new_context(viewport={"width": 1280, "height": 860},
                                      accept_downloads=True)
        problems: list[str] = []
        seen: list[str] = []
        failed: list[str] = []
        try:
            page = context.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error"
                    and not m.text.startswith("Failed to load resource") else None)
            page.on("response", lambda response: failed.append(
                f"{response.status} {response.url}") if response.status >= 400 else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("request", lambda request: seen.append(request.url))
            _log_in(page, server)
            cookies = {c["name"]: c for c in context.cookies()}
            assert cookies["sandbox_sessions_token"]["httpOnly"] is True
            assert cookies["sandbox_sessions_token"]["sameSite"] == "Strict"
            assert page.evaluate("document.cookie") == ""  # out of the script's reach

            page.click(f".session-item[data-session-id='{session.id}']")
            expect(page.locator("#session-title")).to_have_text("watched in chromium")
            expect(page.locator("#connection")).to_have_text("live", timeout=WAIT)
            page.fill("#prompt", "Please write the report")
            page.click("#send")

            expect(page.locator(".message-user .part-text")).to_have_text(
                "Please write the report", timeout=WAIT)
            expect(page.locator(".message-assistant .part-text").first).to_have_text(
                "Writing the report in the workspace first.", timeout=WAIT)
            expect(page.locator(".part-reasoning")).to_contain_text("The user wants a report.")
            expect(page.locator("#todos")).to_contain_text("Write the report", timeout=WAIT)
            request = page.locator(".request.permission")
            expect(request).to_have_count(1, timeout=WAIT)
            expect(request.locator(".patterns")).to_contain_text(COMMAND)
            expect(page.locator(".turn-end")).to_have_count(0)  # it waits for the reply

            request.locator("button.reply-once").click()

            expect(page.locator(".turn-end")).to_have_text("turn-end: completed", timeout=WAIT)
            expect(page.locator(".request")).to_have_count(0)
            expect(page.locator("#session-status")).to_have_text("idle", timeout=WAIT)
            expect(page.locator(f".session-item[data-session-id='{session.id}'] .status")
                   ).to_have_text("idle")
            expect(page.locator(".message-assistant .part-text").last).to_have_text(
                "All done: the report is saved as an artifact.")
            bash = page.locator(".part-tool", has_text=COMMAND)
            expect(bash.locator(".tool-status")).to_have_text("completed")
            expect(bash.locator(".tool-output")).to_contain_text("viewer-ok")
            expect(page.locator("#activity")).to_contain_text(": once")

            with page.expect_download(timeout=WAIT) as download:
                page.locator("#artifacts a", has_text="report.txt").click(timeout=WAIT)
            saved = download.value.path()
            assert Path(saved).read_text() == "viewer-ok\n"

            _assert_real_content(page.screenshot(full_page=False))
            assert problems == [], problems  # no script error, no CSP violation
            # refused: the page's first look before the login, and the wrong token
            assert failed == [f"401 {server.url}/sessions", f"401 {server.url}/viewer/login"]
        finally:
            context.close()
            answered = [part for message in session.get_messages()
                        for part in message.parts if isinstance(part, ToolPart)]
            session.end()
        assert [(part.tool, part.state.status) for part in answered] == [
            ("todowrite", "completed"), ("bash", "completed"), ("artifact", "completed")]
        assert all(server.token not in url for url in seen)
        assert any("/events" in url for url in seen)


HOSTILE = '<img src=x onerror="document.title=1"><script>document.title=2</script>'
"""Markup a model might write: the page must show it as text, never build it."""


def test_a_question_is_answered_in_chromium_and_hostile_text_stays_text(
    browser: Browser, image: str, tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    script: list[dict[str, Any]] = [{"text": HOSTILE, "tool_calls": [{"name": "question", "input": {
        "question": f"Which colour? {HOSTILE}", "options": ["red", "blue"]}}]},
        {"text": "Blue it is."}]
    with BridgeServer(tmp_path / "sessions.db") as server, \
            SandboxClient(base_url=server.url, token=server.token) as client:
        session = client.agent("asker", model="scripted", script=script, image=image,
                               tools=["question"]).create_session(title=HOSTILE)
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        try:
            page = context.new_page()
            _log_in(page, server)
            page.goto(f"{server.url}/viewer/#{session.id}")
            expect(page.locator("#connection")).to_have_text("live", timeout=WAIT)
            started = httpx.post(f"{server.url}/sessions/{session.id}/turns",
                                 json={"prompt": "Pick a colour"}, timeout=30,
                                 headers={"Authorization": f"Bearer {server.token}"})
            assert started.status_code == 202  # from Python this time: the page follows
            question = page.locator(".request.question")
            expect(question.locator(".question-text")).to_have_text(
                f"Which colour? {HOSTILE}", timeout=WAIT)
            expect(page.locator(".message-assistant .part-text").first).to_have_text(HOSTILE)
            expect(page.locator("#session-title")).to_have_text(HOSTILE)
            question.locator("button.option", has_text="blue").click()
            expect(page.locator(".turn-end")).to_have_text("turn-end: completed", timeout=WAIT)
            expect(page.locator(".tool-output")).to_contain_text("blue")
            expect(page.locator(".request")).to_have_count(0)
            assert page.locator("img").count() == 0
            assert page.locator("script").count() == 1  # the page's own
            assert page.title() == "sandbox_sessions viewer"
        finally:
            context.close()
            session.end()


# --- a screenshot has real content: a PNG decoded with the standard library ----------------


def _assert_real_content(png: bytes) -> None:
    width, height, pixels = _decode_png(png)
    assert (width, height) == (1280, 860)
    counts = Counter(pixels)
    dominant = counts.most_common(1)[0][1] / len(pixels)
    dark = sum(n for colour, n in counts.items() if sum(colour[:3]) < 3 * 110)
    assert len(counts) > 50, f"only {len(counts)} colours"  # text is anti-aliased
    assert dominant < 0.9, f"one colour covers {dominant:.0%} of the page"
    assert dark > 2000, f"only {dark} dark pixels: no text drawn"


def _decode_png(data: bytes) -> tuple[int, int, list[tuple[int, ...]]]:
    """Width, height and pixels of an 8-bit RGB or RGBA PNG, as Chromium writes them."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, idat = 8, b""
    chunks: dict[bytes, bytes] = {}
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        offset += 12 + length
        if kind == b"IDAT":
            idat += body
        chunks.setdefault(kind, body)
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert depth == 8, depth
    assert colour in (2, 6), colour
    assert interlace == 0, interlace
    channels = 3 if colour == 2 else 4
    rows = _unfiltered(zlib.decompress(idat), width * channels, height, channels)
    pixels = [tuple(row[x:x + channels]) for row in rows
              for x in range(0, width * channels, channels)]
    return width, height, pixels


def _unfiltered(raw: bytes, stride: int, height: int, step: int) -> list[bytes]:
    """The scanlines with PNG's per-line filters undone (None, Sub, Up, Average, Paeth)."""
    rows: list[bytes] = []
    previous = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
        elif kind in (1, 3, 4):
            _undo(kind, line, previous, step)
        elif kind != 0:
            raise AssertionError(f"unknown PNG filter {kind}")
        rows.append(bytes(line))
        previous = rows[-1]
    return rows


def _undo(kind: int, line: bytearray, previous: bytes, step: int) -> None:
    """Undo a Sub (1), Average (3) or Paeth (4) filter in place."""
    for x in range(len(line)):
        left = line[x - step] if x >= step else 0
        if kind == 1:
            guess = left
        elif kind == 3:
            guess = (left + previous[x]) >> 1
        else:
            guess = _paeth(left, previous[x], previous[x - step] if x >= step else 0)
        line[x] = (line[x] + guess) & 0xFF


def _paeth(left: int, up: int, corner: int) -> int:
    estimate = left + up - corner
    near_left, near_up, near_corner = (abs(estimate - left), abs(estimate - up),
                                       abs(estimate - corner))
    if near_left <= near_up and near_left <= near_corner:
        return left
    return up if near_up <= near_corner else corner


def _png(width: int, height: int, pixel: bytes, filters: bytes = b"\x00") -> bytes:
    """A flat RGB PNG, each line with the filters given in turn."""
    lines = b"".join(filters[y % len(filters):][:1] + pixel * width for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(lines)) + chunk(b"IEND", b""))


def test_the_screenshot_check_refuses_a_blank_page() -> None:
    width, height, pixels = _decode_png(_png(1280, 860, b"\xff\xff\xff"))
    assert (width, height) == (1280, 860)
    assert set(pixels) == {(255, 255, 255)}
    with pytest.raises(AssertionError, match="colours"):
        _assert_real_content(_png(1280, 860, b"\xf6\xf7\xf9"))
    # Sub, Up, Average and Paeth lines of raw zero deltas decode to what they predict
    _, _, filtered = _decode_png(_png(4, 4, b"\x00\x00\x00", filters=b"\x01\x02\x03\x04"))
    assert set(filtered) == {(0, 0, 0)}
