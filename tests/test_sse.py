"""Server-sent events over real HTTP: a real bridge on a loopback port (`BridgeServer`), read
with our HTTP client or with plain httpx and no SSE library.

Streams that need a turn run a scripted agent in a real container; the others get their events
from a second writer of the same SQLite store (as another process would write it), which the
bridge picks up from the store.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import pytest
from agent_support import Script, opened, read_log, settled
from bridge import BridgeServer
from sse_support import Frame, frames, proxy, store_writer

from sandbox_sessions import AsyncSandboxClient, Event, InvalidArgument, SandboxClient
from sandbox_sessions._types import TextDeltaEvent, ToolStartEvent
from sandbox_sessions.service._eventlog import CHUNK, LIVE_BUFFER
from sandbox_sessions.store._sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

SLOW_TOOL: Script = [
    {"tool_calls": [{"name": "bash", "input": {"command": "sleep 1; echo halfway"}}]},
    {"text": "done " * 40},
]
"""A turn with a second of quiet in its middle: time to kill a connection mid-turn."""


@pytest.fixture
def server(store_path: Path) -> Iterator[BridgeServer]:
    with BridgeServer(store_path, heartbeat=0.3) as running:
        yield running


def auth(server: BridgeServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


async def stored_log(path: Path, session_id: str) -> list[Event]:
    """The session's log as the store holds it."""
    store = SQLiteStore(path)
    try:
        chunks = await store.read_events(session_id)
    finally:
        await store.aclose()
    return [event for chunk in chunks for event in CHUNK.validate_json(chunk.data)]


async def raw_frames(server: BridgeServer, path: str, count: int, *,
                     headers: dict[str, str] | None = None,
                     params: dict[str, str] | None = None,
                     keep: Callable[[Frame], bool] = lambda frame: frame.event is not None,
                     ) -> list[Frame]:
    """The first `count` frames `keep` accepts of a raw stream, read with plain httpx."""
    taken: list[Frame] = []
    async with httpx.AsyncClient(base_url=server.url) as http:
        with anyio.fail_after(10):
            async with http.stream("GET", path, headers={**auth(server), **(headers or {})},
                                   params=params) as response:
                assert response.status_code == 200, await response.aread()
                assert response.headers["content-type"].startswith("text/event-stream")
                async for frame in frames(response):
                    if keep(frame):
                        taken.append(frame)
                    if len(taken) == count:
                        break
    return taken


async def test_a_session_stream_frames_each_event_with_its_seq_type_and_json(
    server: BridgeServer, store_path: Path
) -> None:
    async with store_writer(store_path) as writer:
        await writer.add_session("framed")
        await writer.write("framed", 3)
    got = await raw_frames(server, "/sessions/framed/events", 3)

    assert [frame.id for frame in got] == ["1", "2", "3"]
    assert [frame.event for frame in got] == ["text-delta"] * 3
    bodies = [frame.json() for frame in got]
    assert [body["seq"] for body in bodies] == [1, 2, 3]
    assert [body["delta"] for body in bodies] == ["x0", "x1", "x2"]
    assert {body["session_id"] for body in bodies} == {"framed"}
    assert {body["type"] for body in bodies} == {"text-delta"}


async def test_last_event_id_and_after_resume_exactly_after_a_seq(
    server: BridgeServer, store_path: Path
) -> None:
    async with store_writer(store_path) as writer:
        await writer.add_session("resumed")
        await writer.write("resumed", 5)
        path = "/sessions/resumed/events"
        by_header = await raw_frames(server, path, 3, headers={"Last-Event-ID": "2"})
        by_query = await raw_frames(server, path, 2, params={"after": "3"})
        # both given: `after` wins
        both = await raw_frames(server, path, 1, headers={"Last-Event-ID": "1"},
                                params={"after": "4"})
        # then live: what is written after the stream opened comes too
        async with anyio.create_task_group() as group:
            group.start_soon(writer.write, "resumed", 2)
            live = await raw_frames(server, path, 2, params={"after": "5"})

    assert [frame.id for frame in by_header] == ["3", "4", "5"]
    assert [frame.id for frame in by_query] == ["4", "5"]
    assert [frame.id for frame in both] == ["5"]
    assert [frame.id for frame in live] == ["6", "7"]


async def test_a_reader_that_stops_reading_gets_every_event_later(
    server: BridgeServer, store_path: Path
) -> None:
    total = 12 * 500  # far more than a live queue holds, and than socket buffers
    assert total > 4 * LIVE_BUFFER
    async with store_writer(store_path) as writer:
        await writer.add_session("slow")
    assert server.portal is not None
    assert server.service is not None
    log = server.service.log

    async def emit_on_the_bridge() -> int:
        """Events emitted by the bridge's own log (so they reach its readers live); the most
        it held for one reader meanwhile."""
        backlog = 0
        await log.open("slow")
        for _ in range(12):
            for index in range(500):
                log.emit("slow", TextDeltaEvent, message_id="m", part_id="p",
                         delta=f"{'y' * 2000}{index}")
            await log.flush()
            backlog = max(backlog, log.backlog())
        return backlog

    seqs: list[int] = []
    # a small receive window, so the bridge's socket fills up and its sends wait
    small = httpx.AsyncHTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                                      1 << 18)])
    async with httpx.AsyncClient(base_url=server.url, headers=auth(server),
                                 transport=small) as http:
        with anyio.fail_after(30):
            async with http.stream("GET", "/sessions/slow/events") as response:
                assert response.status_code == 200
                await anyio.sleep(0.3)  # the stream is live on the bridge
                # meanwhile this reader reads nothing
                backlog = await anyio.to_thread.run_sync(server.portal.call, emit_on_the_bridge)
                async for frame in frames(response):
                    if frame.event is not None:
                        seqs.append(frame.json()["seq"])
                    if len(seqs) == total:
                        break

    assert seqs == list(range(1, total + 1))  # everything, in order, once
    assert 0 < backlog <= LIVE_BUFFER  # bounded: the rest was read from the store later


async def test_bad_cursors_and_unknown_sessions_get_our_error_with_a_real_status(
    server: BridgeServer, store_path: Path
) -> None:
    async with store_writer(store_path) as writer:
        await writer.add_session("known")
    async with httpx.AsyncClient(base_url=server.url, headers=auth(server)) as http:
        unknown = await http.get("/sessions/nobody/events")
        bad_header = await http.get("/sessions/known/events", headers={"Last-Event-ID": "x"})
        bad_query = await http.get("/sessions/known/events", params={"after": "-1"})

    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "session_not_found"
    for answer in (bad_header, bad_query):
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "invalid_argument"


async def test_an_idle_stream_gets_heartbeat_comments(
    server: BridgeServer, store_path: Path
) -> None:
    async with store_writer(store_path) as writer:
        await writer.add_session("quiet")
    beats = await raw_frames(server, "/sessions/quiet/events", 2,
                             keep=lambda frame: bool(frame.comments))

    assert [frame.comments for frame in beats] == [["heartbeat"], ["heartbeat"]]
    assert all(frame.id is None and frame.event is None for frame in beats)


async def test_the_global_stream_starts_live_and_resumes_exactly_with_its_cursor(
    server: BridgeServer, store_path: Path
) -> None:
    async with store_writer(store_path) as writer, \
            httpx.AsyncClient(base_url=server.url, headers=auth(server)) as http:
        await writer.add_session("a")
        await writer.add_session("b")
        await writer.write("a", 2, text="before")  # before the stream opens: not in it
        live: list[Frame] = []
        with anyio.fail_after(10):
            async with http.stream("GET", "/events") as response:
                assert response.status_code == 200
                reader = frames(response)
                start = await anext(reader)  # the cursor it starts after, alone
                await writer.write("a", 2)
                await writer.write("b", 3)
                await writer.write("a", 1, text="last")
                async for frame in reader:
                    if frame.event is not None:
                        live.append(frame)
                    if len(live) == 6:
                        break
        assert start.id
        assert start.event is None
        assert not start.data
        cursors = [frame.id or "" for frame in live]
        resumed = await raw_frames(server, "/events", 3, headers={"Last-Event-ID": cursors[2]})
        by_query = await raw_frames(server, "/events", 1, params={"after": cursors[4]},
                                    headers={"Last-Event-ID": cursors[0]})
        from_start = await raw_frames(server, "/events", 6, headers={"Last-Event-ID": start.id})
        bad = await http.get("/events", params={"after": "later"})

    bodies = [frame.json() for frame in live]
    assert [(body["session_id"], body["seq"]) for body in bodies] == [
        ("a", 3), ("a", 4), ("b", 1), ("b", 2), ("b", 3), ("a", 5)]
    assert [frame.event for frame in live] == ["text-delta"] * 6
    assert [body["delta"] for body in bodies][-1] == "last0"
    assert len(set(cursors)) == 6
    assert [frame.json() for frame in resumed] == bodies[3:]  # no gap, no duplicate
    assert [frame.id for frame in resumed] == cursors[3:]
    assert [frame.json() for frame in by_query] == bodies[5:]  # `after` wins
    assert [frame.json() for frame in from_start] == bodies
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_argument"


async def test_the_global_stream_is_the_same_over_http_as_in_process(
    server: BridgeServer, store_path: Path
) -> None:
    async with store_writer(store_path) as writer:
        for session_id in ("a", "b"):
            await writer.add_session(session_id)
        for _ in range(3):
            await writer.write("a", 2)
            await writer.write("b", 1)

    async def first(client: AsyncSandboxClient, count: int, after: str
                    ) -> list[tuple[str, Event]]:
        taken: list[tuple[str, Event]] = []
        with anyio.fail_after(10):
            async for item in client.events(after=after):
                taken.append(item)
                if len(taken) == count:
                    break
        return taken

    async with AsyncSandboxClient(base_url=server.url, token=server.token) as remote:
        over_http = await first(remote, 9, "0")
        resumed_http = await first(remote, 4, over_http[4][0])
    async with AsyncSandboxClient(store=store_path) as local:
        in_process = await first(local, 9, "0")
        resumed_local = await first(local, 4, in_process[4][0])

    assert over_http == in_process
    assert resumed_http == resumed_local == in_process[5:]
    assert [(event.session_id, event.seq) for _, event in in_process] == [
        ("a", 1), ("a", 2), ("b", 1), ("a", 3), ("a", 4), ("b", 2), ("a", 5), ("a", 6),
        ("b", 3)]


async def test_a_bad_global_cursor_is_invalid_argument_over_both_transports(
    server: BridgeServer, store_path: Path
) -> None:
    async with AsyncSandboxClient(base_url=server.url, token=server.token) as remote, \
            AsyncSandboxClient(store=store_path) as local:
        for client in (remote, local):
            for cursor in ("", "later", "-1", "1-", "1.5"):
                with pytest.raises(InvalidArgument):
                    client.events(after=cursor)


def test_the_blocking_client_reads_the_global_stream(
    server: BridgeServer, store_path: Path
) -> None:
    async def seed() -> None:
        async with store_writer(store_path) as writer:
            await writer.add_session("a")
            await writer.write("a", 3)

    anyio.run(seed)
    with SandboxClient(base_url=server.url, token=server.token) as client:
        with closing(client.events(after="0")) as events:  # type: ignore[type-var]
            taken = [next(events) for _ in range(3)]
        with closing(client.events(after=taken[0][0])) as events:  # type: ignore[type-var]
            resumed = next(events)

    assert [event.seq for _, event in taken] == [1, 2, 3]
    assert resumed == taken[1]


async def test_a_dropped_global_stream_is_resumed_by_the_client_from_its_cursor(
    server: BridgeServer, store_path: Path
) -> None:
    seen: list[tuple[str, Event]] = []
    async with store_writer(store_path) as writer, proxy(server.port) as path, \
            AsyncSandboxClient(base_url=path.url, token=server.token) as client:
        await writer.add_session("a")
        await writer.add_session("b")
        await writer.write("a", 2)
        with anyio.fail_after(10):
            async for item in client.events(after="0"):
                seen.append(item)
                if len(seen) == 2:
                    cut = await path.cut()
                    await writer.write("b", 2)  # while the reader is away
                    await writer.write("a", 1)
                if len(seen) == 5:
                    break
        connections = path.accepted

    assert cut == 1
    assert connections > 1
    assert [(event.session_id, event.seq) for _, event in seen] == [
        ("a", 1), ("a", 2), ("b", 1), ("b", 2), ("a", 3)]
    assert len({cursor for cursor, _ in seen}) == 5


@pytest.mark.docker
async def test_a_stream_killed_mid_turn_resumes_with_no_gap_and_no_duplicate(
    server: BridgeServer, store_path: Path, image: str
) -> None:
    async with proxy(server.port) as path, \
            AsyncSandboxClient(base_url=path.url, token=server.token) as client, \
            opened(client, image, SLOW_TOOL, permissions={"bash": "allow"}) as session:
        seen: list[Event] = []
        cut = 0
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                group.start_soon(session.send, "go")
                async for event in session.events():
                    seen.append(event)
                    if isinstance(event, ToolStartEvent) and not cut:
                        cut = await path.cut()  # the tool sleeps: the turn is mid-way
                    if settled(1)(seen):
                        break
        connections = path.accepted
        stored = await stored_log(store_path, session.id)

    assert cut >= 1
    assert connections > 1  # the reader came back on a new connection
    assert [event.seq for event in seen] == list(range(1, len(seen) + 1))
    assert seen == stored[:len(seen)]


@pytest.mark.docker
async def test_two_watchers_of_one_session_see_the_same_events(
    server: BridgeServer, store_path: Path, image: str
) -> None:
    async with AsyncSandboxClient(base_url=server.url, token=server.token) as client, \
            opened(client, image, SLOW_TOOL, permissions={"bash": "allow"}) as session:
        watched: list[list[Event]] = [[], []]

        async def watch(into: list[Event]) -> None:
            into.extend(await read_log(session, settled(1), within=30))

        async with anyio.create_task_group() as group:
            group.start_soon(watch, watched[0])
            group.start_soon(watch, watched[1])
            await session.send("go")
        stored = await stored_log(store_path, session.id)

    assert watched[0] == watched[1]
    assert settled(1)(watched[0])
    assert watched[0] == stored[:len(watched[0])]
