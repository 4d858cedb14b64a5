"""The HTTP client's use of its connections, seen from a TCP proxy between it and a real
bridge on a loopback port."""

from __future__ import annotations

from pathlib import Path

import pytest
from bridge import BridgeServer
from sse_support import proxy

from sandbox_sessions import AsyncSandboxClient

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def test_commands_in_a_row_reuse_one_connection(store_path: Path, image: str) -> None:
    """A command's streamed response is read to its end, so the connection is kept for the
    next call instead of a new TCP connection per command."""
    lines: list[str] = []
    with BridgeServer(store_path) as server:
        async with proxy(server.port) as path, \
                AsyncSandboxClient(base_url=path.url, token=server.token) as client:
            session = await client.agent("conn", image=image).create_session()
            try:
                results = [await session.shell(f"echo {n}", on_stdout=lines.append)
                           for n in range(5)]
                results.append(await session.shell("true"))
            finally:
                await session.end()
            accepted = path.accepted

    assert [result.stdout for result in results] == [f"{n}\n" for n in range(5)] + [""]
    assert "".join(lines) == "".join(f"{n}\n" for n in range(5))
    assert accepted == 1
