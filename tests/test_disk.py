"""A session can't fill the host's disk (issue 6, section 7), on a real engine.

`disk=` caps a session's writable space. Where the engine's storage can (here: btrfs with
quotas), the whole writable layer is capped; the tmpfs mode (read-only root, size-limited
tmpfs folders) is what other engines get, forced here with `DockerBackend(disk_mode="tmpfs")`.
Either way, writing past the cap fails inside the container with ENOSPC or EDQUOT.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from sandbox_sessions import (
    DEFAULT_DISK,
    AsyncSandboxClient,
    InvalidArgument,
    SandboxOptions,
)
from sandbox_sessions._types import size_in_bytes
from sandbox_sessions.client._client import sandbox_options
from sandbox_sessions.sandbox._disk import home_in_passwd, quota_unsupported
from sandbox_sessions.sandbox._engine import Engine
from sandbox_sessions.sandbox.base import Sandbox, ShellRequest
from sandbox_sessions.sandbox.docker import DockerBackend, DockerSandbox

MiB = 1 << 20
# Writes up to `limit` MiB to `path` in 1 MiB chunks, then syncs; prints what it managed and
# the errno that stopped it (null when nothing did).
FILL = """python3 -c '
import json, os, sys
path, limit, written, error = sys.argv[1], int(sys.argv[2]), 0, None
try:
    with open(path, "wb") as f:
        for _ in range(limit):
            f.write(b"x" * (1 << 20))
            f.flush()
            written += 1 << 20
        os.fsync(f.fileno())
except OSError as exc:
    error = exc.errno
os.sync()
print(json.dumps({{"written": written, "errno": error}}))
' {path} {limit}"""
FULL = (errno.ENOSPC, errno.EDQUOT)


async def fill(sandbox: Sandbox, path: str, limit_mib: int) -> dict[str, int | None]:
    result = await sandbox.shell(ShellRequest(command=FILL.format(path=path, limit=limit_mib),
                                              timeout=300))
    assert result.exit_code == 0, result.stderr
    outcome: dict[str, int | None] = json.loads(result.stdout)
    return outcome


def engine_free_bytes() -> int | None:
    """Free bytes of the filesystem holding the engine's data, if it is on this machine."""
    root = Engine().api.info().get("DockerRootDir")
    if not root or not os.path.isdir(root):
        return None
    stats = os.statvfs(root)
    return stats.f_bavail * stats.f_frsize


# --- the quota mode (what this engine supports) -----------------------------------------------


@pytest.mark.anyio
@pytest.mark.docker
async def test_writing_past_disk_fails_inside_and_not_on_the_host(
    client: AsyncSandboxClient, image: str
) -> None:
    agent = client.agent("disk", image=image, disk="64m")
    async with await agent.create_session() as session:
        sandbox = await client.service.sandbox(session.id)
        free_before = engine_free_bytes()

        full = await fill(sandbox, "/workspace/big", 512)
        # The cap is the container's, not one folder's.
        also_full = await fill(sandbox, "/tmp/more", 64)
        free_after = engine_free_bytes()
        removed = await session.shell("rm -f /workspace/big /tmp/more && sync")
        again = await fill(sandbox, "/workspace/again", 16)

    assert full["errno"] in FULL
    written = full["written"]
    assert written is not None
    assert 32 * MiB <= written <= 64 * MiB
    assert also_full["errno"] in FULL
    if free_before is not None and free_after is not None:
        assert free_before - free_after < 256 * MiB  # not the 512 MiB asked for
    assert removed.exit_code == 0, removed.stderr
    assert again == {"written": 16 * MiB, "errno": None}


@pytest.mark.anyio
@pytest.mark.docker
async def test_the_default_disk_is_capped(client: AsyncSandboxClient, image: str) -> None:
    async with await client.agent("disk", image=image).create_session() as session:
        container = (await session.get_info()).container_id
        assert container is not None
        host_config = (await anyio.to_thread.run_sync(Engine().inspect, container) or {})[
            "HostConfig"]
        mode = client.service.backend.disk_mode  # type: ignore[attr-defined]

    size = size_in_bytes(DEFAULT_DISK)
    assert size == 4 << 30
    if mode == "quota":
        assert host_config["StorageOpt"] == {"size": str(size)}
    else:
        assert mode == "tmpfs"
        assert host_config["ReadonlyRootfs"] is True
        assert all(f"size={size}" in opts for opts in host_config["Tmpfs"].values())


@pytest.mark.anyio
@pytest.mark.docker
async def test_the_smallest_disk_and_no_disk_still_make_sessions(
    client: AsyncSandboxClient, image: str
) -> None:
    smallest = client.agent("disk", image=image, disk="16m")
    unlimited = client.agent("disk", sandbox=SandboxOptions(image=image, disk=None))
    configs = []
    for agent in (smallest, unlimited):
        async with await agent.create_session() as session:
            result = await session.shell("echo works > /workspace/f && cat /workspace/f")
            assert (result.exit_code, result.stdout) == (0, "works\n"), result.stderr
            container = (await session.get_info()).container_id
            assert container is not None
            inspected = await anyio.to_thread.run_sync(Engine().inspect, container) or {}
            configs.append(inspected["HostConfig"])

    smallest_config, unlimited_config = configs
    assert (smallest_config.get("StorageOpt") == {"size": str(16 * MiB)}
            or f"size={16 * MiB}" in str(smallest_config.get("Tmpfs")))
    assert not unlimited_config.get("StorageOpt")
    assert not unlimited_config.get("Tmpfs")
    assert not unlimited_config["ReadonlyRootfs"]


@pytest.mark.parametrize(
    ("disk", "words"),
    [("1m", "minimum of 16m"), ("15m", "minimum of 16m"), ("lots", "not a size"),
     ("-4g", "not a size"), ("4x", "not a size")],
)
def test_bad_disk_values_are_invalid(disk: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        sandbox_options(None, {"disk": disk})


@pytest.mark.anyio
@pytest.mark.docker
async def test_bad_disk_through_agent(client: AsyncSandboxClient) -> None:
    with pytest.raises(InvalidArgument, match="invalid sandbox options") as caught:
        client.agent("bad", disk="1k")

    assert "below the minimum of 16m" in str(caught.value)


# --- the tmpfs mode, forced ------------------------------------------------------------------


@pytest.fixture
async def tmpfs_backend(tmp_path: Path) -> AsyncIterator[tuple[DockerBackend, dict[str, str]]]:
    """A backend that caps disks with tmpfs, and labels for its containers. The labels name a
    store file that exists while the test runs, so a crash leaves containers `gc` reaps."""
    store = tmp_path / "store.db"
    store.touch()
    labels = {"sandbox-sessions": "1", "sandbox-sessions.session": "ses_test_disk",
              "sandbox-sessions.owner": "test-disk", "sandbox-sessions.store": str(store)}
    async with anyio.create_task_group() as task_group:
        yield DockerBackend(Engine(), task_group=task_group, disk_mode="tmpfs"), labels
        task_group.cancel_scope.cancel()
    store.unlink()


@asynccontextmanager
async def created(
    backend: DockerBackend, labels: dict[str, str], options: SandboxOptions
) -> AsyncIterator[DockerSandbox]:
    """A sandbox of `backend`, removed on exit."""
    sandbox = await backend.create(options, labels=labels)
    try:
        yield sandbox
    finally:
        with anyio.CancelScope(shield=True):
            await sandbox.aclose()
            await backend.destroy(sandbox.id)


@pytest.mark.anyio
@pytest.mark.docker
async def test_tmpfs_mode_caps_each_writable_folder_and_makes_root_read_only(
    tmpfs_backend: tuple[DockerBackend, dict[str, str]], image: str
) -> None:
    backend, labels = tmpfs_backend
    options = SandboxOptions(image=image, disk="32m")
    async with created(backend, labels, options) as sandbox:
        fills = {folder: await fill(sandbox, f"{folder}/big", 64)
                 for folder in ("/workspace", "/artifacts", "/tmp", "/home/sandbox")}
        root = await fill(sandbox, "/big", 1)
        shape = await sandbox.shell(ShellRequest(command=(
            "rm /workspace/big && stat -c '%U %a' /workspace /artifacts /home/sandbox /tmp"
            " && printf '#!/bin/sh\\necho ran\\n' > /workspace/s && chmod +x /workspace/s"
            " && /workspace/s && echo back > /workspace/big")))
        read_back = b"".join([chunk async for chunk in sandbox.stream_file(
            "/workspace/big", max_bytes=100)])

    assert backend.disk_mode == "tmpfs"
    for folder, outcome in fills.items():
        assert outcome["errno"] == errno.ENOSPC, folder
        assert outcome["written"] == 32 * MiB, folder
    assert root == {"written": 0, "errno": errno.EROFS}
    assert shape.exit_code == 0, shape.stderr
    assert shape.stdout.splitlines() == ["sandbox 755", "sandbox 755", "sandbox 755",
                                         "root 1777", "ran"]
    assert read_back == b"back\n"


@pytest.mark.anyio
@pytest.mark.docker
async def test_tmpfs_mode_in_an_image_that_is_not_ours(
    tmpfs_backend: tuple[DockerBackend, dict[str, str]], image: str
) -> None:
    backend, labels = tmpfs_backend
    # The base image: no sandbox user, no /workspace; its helper starts through docker exec.
    base = "sandbox-sessions/base:bookworm"
    if Engine().image_labels(base) is None:
        pytest.fail(f"image {base} is missing: run `sandbox-sessions images build` first")
    options = SandboxOptions(image=base, disk="16m", workdir="/work")
    async with created(backend, labels, options) as sandbox:
        made = await sandbox.shell(ShellRequest(
            command="pwd && stat -c '%u %a' /work /artifacts && echo hi > /artifacts/a"))
        full = await fill(sandbox, "/work/big", 32)

    assert made.exit_code == 0, made.stderr
    assert made.stdout.splitlines() == ["/work", "1000 755", "1000 755"]
    assert full["errno"] == errno.ENOSPC


# --- pure logic ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "unsupported"),
    [
        ("--storage-opt is supported only for overlay over xfs with 'pquota' mount option", True),
        ("storage-opt is supported only for overlay over xfs with 'pquota' mount option", True),
        ("Filesystem does not support, or has not enabled quotas", True),
        ("--storage-opt is not supported for aufs", True),
        ("Failed to limit qgroup for &{}: disk quota exceeded", False),
        ("No such image: sandbox-sessions/sandbox:latest", False),
        ("invalid mount config for type tmpfs", False),
    ],
)
def test_engine_refusals_that_mean_no_quota(message: str, unsupported: bool) -> None:
    assert quota_unsupported(message) is unsupported


PASSWD = b"""root:x:0:0:root:/root:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
sandbox:x:1000:1000::/home/sandbox:/bin/bash
rooted:x:1001:1001::/:/bin/sh
tmp:x:1002:1002::/tmp:/bin/sh
broken line
"""


@pytest.mark.parametrize(
    ("user", "home"),
    [("1000:1000", "/home/sandbox"), ("1000", "/home/sandbox"), ("sandbox", "/home/sandbox"),
     ("0", "/root"), ("1001", None), ("1002", None), ("4242", None), ("ghost", None)],
)
def test_home_folder_from_passwd(user: str, home: str | None) -> None:
    assert home_in_passwd(PASSWD, user) == home
