"""The Docker implementation of the `Sandbox` protocol.

A session's container runs `sleep infinity` under Docker's init, hardened: a non-root user,
every capability dropped, `no-new-privileges`, pids, memory and CPU limits, and no network
unless asked for. Commands and files go through a helper process (`_helper.py`) started once
per connection over an attached `docker exec`, which answers in well under a millisecond where
a `docker exec` costs about 40 ms. Images without python3 fall back to `docker exec` and the
archive API.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import socket
import tarfile
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.to_thread

from .._exceptions import ContainerDied, ContainerGone, ImageNotFound, ProtocolError, SandboxError
from .._types import SandboxOptions, ShellResult
from ._channel import ChannelClosed, HelperChannel
from ._disk import DiskMode, disk_host_config, find_home, quota_unsupported
from ._engine import Engine
from ._exec_runtime import ExecRuntime
from ._runtime import HelperRuntime
from .base import FileEntry, ShellRequest

__all__ = ["DockerBackend", "DockerSandbox"]

log: logging.Logger = logging.getLogger("sandbox_sessions.docker")

HELPER_SOURCE = resources.files(__package__).joinpath("_helper.py").read_bytes()
# A short command line that reads the helper's source from stdin, so `ps` stays readable.
_STUB = (
    "import os\nn={size};s=b''\nwhile len(s)<n:s+=os.read(0,n-len(s)) or exit(1)\n"
    "exec(compile(s,'sandbox-sessions-helper','exec'))"
)
HELPER_ARGV = ["python3", "-c", _STUB.format(size=len(HELPER_SOURCE))]
IMAGE_LABEL = "sandbox-sessions.image"
OWN_WORKDIR = "/workspace"
"""The workdir our images make, owned by their sandbox user."""
HELLO_TIMEOUT = 15.0


class _Runtime(Protocol):
    async def shell(self, request: ShellRequest) -> ShellResult: ...

    def stream_file(self, path: str, *, max_bytes: int | None) -> AsyncIterator[bytes]: ...

    async def write_file(self, path: str, data: bytes, *, mode: int | None) -> None: ...

    async def walk(self, root: str) -> list[FileEntry]: ...

    async def aclose(self) -> None: ...


async def open_channel(sock: socket.socket, task_group: anyio.abc.TaskGroup) -> HelperChannel:
    """Send the helper its source over `sock`, start reading, and wait for its greeting.

    Raises `ChannelClosed` or `TimeoutError` when no helper answers (no python3 in the image).
    """
    stream = await anyio.abc.SocketStream.from_socket(sock)
    channel = HelperChannel(stream)
    task_group.start_soon(channel.run)
    try:
        await stream.send(HELPER_SOURCE)
        with anyio.fail_after(HELLO_TIMEOUT):
            await channel.wait_ready()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await channel.aclose()
        raise
    return channel


def death_of(state: Mapping[str, Any] | None) -> SandboxError | None:
    """The error for a container in this inspect state, or None when it is running."""
    if state is None:
        return ContainerGone("the session's container is gone (removed outside the library)")
    status = state.get("State") or {}
    if status.get("Running") and not status.get("Paused"):
        return None
    if status.get("OOMKilled"):
        reason = "oom-killed"
    elif status.get("Paused"):
        reason = "paused"
    else:
        code = status.get("ExitCode")
        reason = f"exited with code {code}" + (" (killed)" if code == 137 else "")
    return ContainerDied(f"the session's container stopped: {reason}", reason=reason)


class DockerSandbox:
    """One session's container. Connects to it lazily, on the first command or file call."""

    def __init__(
        self,
        engine: Engine,
        container_id: str,
        options: SandboxOptions,
        *,
        task_group: anyio.abc.TaskGroup,
        channel: HelperChannel | None = None,
    ) -> None:
        self._engine = engine
        self._container_id = container_id
        self._options = options
        self._task_group = task_group
        self._runtime: _Runtime | None = None if channel is None else HelperRuntime(channel)
        self._connect_lock = anyio.Lock()

    @property
    def id(self) -> str:
        return self._container_id

    async def _ensure_runtime(self) -> _Runtime:
        async with self._connect_lock:
            if self._runtime is None:
                self._runtime = await self._connect()
            return self._runtime

    async def _connect(self) -> _Runtime:
        sock = await anyio.to_thread.run_sync(
            partial(self._engine.exec_socket, self._container_id, HELPER_ARGV,
                    user=self._options.user)
        )
        try:
            return HelperRuntime(await open_channel(sock, self._task_group))
        except (ChannelClosed, TimeoutError):
            await self._raise_if_dead()
            log.info("no python3 helper in %s; using docker exec", self._container_id[:12])
            return ExecRuntime(self._engine, self._container_id, self._options)

    async def _raise_if_dead(self) -> None:
        # The engine may report the container running for a moment after its processes died.
        for _ in range(10):
            state = await anyio.to_thread.run_sync(self._engine.inspect, self._container_id)
            error = death_of(state)
            if error is not None:
                raise error
            await anyio.sleep(0.1)

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[_Runtime]:
        """Yield the runtime; turn a dropped connection into the reason the container died."""
        try:
            yield await self._ensure_runtime()
        except ChannelClosed:
            await self.aclose()  # the dropped connection's socket is still ours to close
            await self._raise_if_dead()
            raise ProtocolError("the connection to the sandbox helper dropped") from None
        except SandboxError as exc:
            if type(exc) is not SandboxError:  # a subclass already names what went wrong
                raise
            # An unnamed engine error (an exec into a stopped container is a 409 "is not
            # running"): say that the container died, where it did.
            state = await anyio.to_thread.run_sync(self._engine.inspect, self._container_id)
            error = death_of(state)
            if error is None:
                raise
            raise error from exc

    async def shell(self, request: ShellRequest) -> ShellResult:
        """See `Sandbox.shell`."""
        if request.cwd is None:
            request = dataclasses.replace(request, cwd=self._options.workdir)
        async with self._guard() as runtime:
            return await runtime.shell(request)

    async def stream_file(self, path: str, *, max_bytes: int | None) -> AsyncIterator[bytes]:
        """See `Sandbox.stream_file`."""
        async with self._guard() as runtime:
            async for chunk in runtime.stream_file(path, max_bytes=max_bytes):
                yield chunk

    async def write_file(self, path: str, data: bytes, *, mode: int | None) -> None:
        """See `Sandbox.write_file`."""
        async with self._guard() as runtime:
            await runtime.write_file(path, data, mode=mode)

    async def walk(self, root: str) -> list[FileEntry]:
        """See `Sandbox.walk`."""
        async with self._guard() as runtime:
            return await runtime.walk(root)

    async def aclose(self) -> None:
        """See `Sandbox.aclose`."""
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            await runtime.aclose()


def _host_config(options: SandboxOptions, *, disk: Mapping[str, Any]) -> dict[str, Any]:
    """The hardening of every session container, plus `disk`: its writable-space cap."""
    return {**disk,
        "init": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "network_mode": "bridge" if options.network else "none",
        "pids_limit": options.pids,
        "mem_limit": options.memory,
        "memswap_limit": options.memory,
        "nano_cpus": int(options.cpus * 1e9),
        # The helper's traffic goes over the attach stream; it must not also fill a log file.
        "log_config": {"type": "none", "config": {}},
    }


def _folders_archive(user: str, folders: tuple[str, ...]) -> bytes:
    """A tar of empty folders owned by `user` (numeric `uid[:gid]`, else root-owned)."""
    uid, _, gid = user.partition(":")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for folder in folders:
            member = tarfile.TarInfo(folder.strip("/"))
            member.type, member.mode = tarfile.DIRTYPE, 0o755
            member.uid = int(uid) if uid.isdigit() else 0
            member.gid = int(gid) if gid.isdigit() else member.uid
            archive.addfile(member)
    return buffer.getvalue()


class DockerBackend:
    """Creates, attaches to and removes session containers on one Docker engine."""

    def __init__(
        self, engine: Engine, *, task_group: anyio.abc.TaskGroup, disk_mode: DiskMode = "auto"
    ) -> None:
        """`disk_mode` is how `SandboxOptions.disk` is enforced (see `sandbox._disk`): `auto`
        asks the engine for a quota and falls back to tmpfs folders if it refuses; `quota`
        or `tmpfs` forces one (`quota` then fails where the engine cannot)."""
        self.engine = engine
        self._task_group = task_group
        self._image_labels: dict[str, dict[str, str]] = {}
        self._disk_mode: DiskMode = disk_mode
        self._homes: dict[tuple[str, str], str | None] = {}

    @property
    def disk_mode(self) -> DiskMode:
        """How disks are capped: `auto` until the first capped create tells `quota` or
        `tmpfs` apart, then that."""
        return self._disk_mode

    async def _labels_of(self, image: str) -> dict[str, str]:
        if image not in self._image_labels:
            labels = await anyio.to_thread.run_sync(self.engine.image_labels, image)
            if labels is None:
                raise ImageNotFound(
                    f"image {image!r} does not exist locally; "
                    "build it with `sandbox-sessions images build`"
                )
            self._image_labels[image] = labels
        return self._image_labels[image]

    async def create(self, options: SandboxOptions, *, labels: Mapping[str, str]) -> DockerSandbox:
        """Create and start a container; nothing is left behind if that fails.

        In our own images the helper is the container's main process, attached before the
        start, so the first command costs no `docker exec`. Other images run `sleep infinity`
        and get their helper (or the exec fallback) on first use.
        """
        # Only the sandbox image itself: the base image carries the label too (`base`), and
        # so does every image built FROM it, python3, user and folders or not.
        ours = (await self._labels_of(options.image)).get(IMAGE_LABEL) == "sandbox"
        if ours:
            try:
                return await self._create(options, labels, attach=True)
            except ContainerDied as exc:
                # An image derived from ours without python3: its helper cannot be the main
                # process. Start it plainly; its commands then take the exec fallback.
                log.info("built-in helper did not start (%s); retrying without it", exc.reason)
        return await self._create(options, labels, attach=False)

    async def _create(
        self, options: SandboxOptions, labels: Mapping[str, str], *, attach: bool
    ) -> DockerSandbox:
        container, on_tmpfs = await self._create_container(options, labels, attach=attach)
        try:
            channel = await self._start(container, options, attach=attach, on_tmpfs=on_tmpfs)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.engine.remove, container)
            raise
        return DockerSandbox(
            self.engine, container, options, task_group=self._task_group, channel=channel
        )

    async def _create_container(
        self, options: SandboxOptions, labels: Mapping[str, str], *, attach: bool
    ) -> tuple[str, bool]:
        """Create the container with its disk capped; return its id and whether its writable
        folders are tmpfs mounts (on a read-only root, which nothing may be copied into)."""
        create = partial(
            self.engine.create_container, options.image,
            command=[*HELPER_ARGV, "main"] if attach else ["sleep", "infinity"],
            stdin_open=attach, stdin_once=attach, labels=dict(labels), user=options.user,
            working_dir=options.workdir, environment=dict(options.env), detach=True)
        if options.disk_bytes is None:
            return await self._run(create, _host_config(options, disk={})), False
        if self._disk_mode != "tmpfs":
            quota = _host_config(options, disk=disk_host_config(options, "quota", home=None))
            try:
                container = await self._run(create, quota)
            except SandboxError as exc:
                if self._disk_mode == "quota" or not quota_unsupported(str(exc)):
                    raise
                log.warning("the engine cannot cap a container's disk (%s): sessions get a "
                            "read-only root and tmpfs folders instead", exc)
                self._disk_mode = "tmpfs"
            else:
                self._disk_mode = "quota"
                return container, False
        home = await self._home_of(options, labels)
        tmpfs = _host_config(options, disk=disk_host_config(options, "tmpfs", home=home))
        return await self._run(create, tmpfs), True

    async def _run(self, create: Callable[..., str], host_config: dict[str, Any]) -> str:
        return await anyio.to_thread.run_sync(partial(create, host_config=host_config))

    async def _home_of(self, options: SandboxOptions, labels: Mapping[str, str]) -> str | None:
        key = (options.image, options.user)
        if key not in self._homes:
            self._homes[key] = await anyio.to_thread.run_sync(
                find_home, self.engine, options.image, options.user, labels)
        return self._homes[key]

    async def _start(
        self, container: str, options: SandboxOptions, *, attach: bool, on_tmpfs: bool
    ) -> HelperChannel | None:
        if not attach:  # a foreign image may lack our folders, or own them as root
            if not on_tmpfs:  # else the tmpfs mounts make them, owned by the user
                archive = _folders_archive(options.user, (options.workdir, "/artifacts"))
                await anyio.to_thread.run_sync(self.engine.put_archive, container, "/", archive)
            await anyio.to_thread.run_sync(self.engine.start, container)
            return None
        if options.workdir != OWN_WORKDIR and not on_tmpfs:  # Docker would make it root's
            archive = _folders_archive(options.user, (options.workdir,))
            await anyio.to_thread.run_sync(self.engine.put_archive, container, "/", archive)
        sock = await anyio.to_thread.run_sync(self.engine.attach_socket, container)
        try:
            await anyio.to_thread.run_sync(self.engine.start, container)
        except BaseException:
            sock.close()
            raise
        try:
            return await open_channel(sock, self._task_group)
        except (ChannelClosed, TimeoutError):
            state = await anyio.to_thread.run_sync(self.engine.inspect, container)
            raise death_of(state) or ProtocolError("the sandbox helper did not start") from None

    async def attach(self, sandbox_id: str, options: SandboxOptions) -> DockerSandbox:
        """See `SandboxBackend.attach`."""
        state = await anyio.to_thread.run_sync(self.engine.inspect, sandbox_id)
        error = death_of(state)
        if error is not None:
            raise error
        return DockerSandbox(self.engine, sandbox_id, options, task_group=self._task_group)

    async def destroy(self, sandbox_id: str) -> None:
        """See `SandboxBackend.destroy`."""
        await anyio.to_thread.run_sync(self.engine.remove, sandbox_id)

    async def list_labelled(self, labels: Mapping[str, str]) -> list[dict[str, str]]:
        """See `SandboxBackend.list_labelled`."""
        found = await anyio.to_thread.run_sync(self.engine.list_containers, labels)
        return [{**(c.get("Labels") or {}), "id": str(c["Id"])} for c in found]
