"""The Docker implementation of the `Sandbox` protocol.

A session's container is hardened: a non-root user, every capability dropped,
`no-new-privileges`, pids, memory and CPU limits, and no network unless asked for. Commands and
files go through a helper process (`_helper.py`), which answers in well under a millisecond
where a `docker exec` costs about 40 ms. In our own image the helper is the container's main
process (PID 1, with no Docker init: see `docs/decisions.md`); other images run
`sleep infinity` under Docker's init and get their helper through `docker exec`, or fall back
to `docker exec` and the archive API without python3. `DockerSandbox` (in `_container.py`)
keeps a session going through stops, pauses and mute helpers.
"""

from __future__ import annotations

import io
import logging
import tarfile
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from functools import partial
from typing import Any, Self

import anyio
import anyio.abc
import anyio.to_thread

from .._exceptions import ContainerDied, ImageNotFound, InvalidArgument, SandboxError
from .._types import SandboxOptions, size_in_bytes
from ._channel import HelperChannel
from ._container import HELPER_ARGV, DockerSandbox, death_of, start_attached
from ._disk import DiskMode, disk_host_config, find_home, quota_unsupported
from ._engine import Engine
from .base import RestartCallback

__all__ = ["DockerBackend", "DockerSandbox"]

log: logging.Logger = logging.getLogger("sandbox_sessions.docker")

IMAGE_LABEL = "sandbox-sessions.image"
OWN_WORKDIR = "/workspace"
"""The workdir our images make, owned by their sandbox user."""


def _host_config(
    options: SandboxOptions, *, disk: Mapping[str, Any], attach: bool
) -> dict[str, Any]:
    """The hardening of every session container, plus `disk`: its writable-space cap."""
    return {**disk,
        # With `attach` our helper is PID 1: unkillable from inside, and the reaper of
        # orphans. A foreign image's `sleep infinity` needs Docker's init to reap.
        "init": not attach,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "network_mode": "bridge" if options.network else "none",
        "pids_limit": options.pids,
        "mem_limit": size_in_bytes(options.memory),  # our notation, wider than docker-py's
        "memswap_limit": size_in_bytes(options.memory),
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
        self,
        engine: Engine | None = None,
        *,
        docker_url: str | None = None,
        task_group: anyio.abc.TaskGroup | None = None,
        disk_mode: DiskMode = "auto",
    ) -> None:
        """`engine` (default: one on `docker_url`, else `$DOCKER_HOST` or the local socket).
        `task_group` runs the helpers' readers; without one, use the backend as an async
        context manager, which runs its own and closes the engine it made.

        `disk_mode` is how `SandboxOptions.disk` is enforced (see `sandbox._disk`): `auto`
        asks the engine for a quota and falls back to tmpfs folders if it refuses; `quota`
        or `tmpfs` forces one (`quota` then fails where the engine cannot)."""
        self._owns_engine = engine is None
        self.engine = engine if engine is not None else Engine(docker_url)
        self._given_group = task_group
        self._stack: AsyncExitStack | None = None
        self._image_labels: dict[str, dict[str, str]] = {}
        self._disk_mode: DiskMode = disk_mode
        self._homes: dict[tuple[str, str], str | None] = {}

    @property
    def _task_group(self) -> anyio.abc.TaskGroup:
        if self._given_group is None:
            raise SandboxError("the backend is not open: use `async with DockerBackend()`")
        return self._given_group

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            if self._owns_engine:
                stack.callback(self.engine.close)  # after the task group: no call uses it
            if self._given_group is None:
                group = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(group.cancel_scope.cancel)  # stops the helpers' readers
                self._given_group = group
                stack.callback(setattr, self, "_given_group", None)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the helpers' readers and close the engine this backend made; the containers
        keep running. Call it from the task that opened the backend."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

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

    async def create(
        self,
        options: SandboxOptions,
        *,
        labels: Mapping[str, str],
        on_restart: RestartCallback | None = None,
    ) -> DockerSandbox:
        """Create and start a container; nothing is left behind if that fails.

        In our own images the helper is the container's main process, attached before the
        start, so the first command costs no `docker exec`. Other images run `sleep infinity`
        and get their helper (or the exec fallback) on first use. See
        `SandboxBackend.create` for `on_restart`.
        """
        # Only the sandbox image itself: the base image carries the label too (`base`), and
        # so does every image built FROM it, python3, user and folders or not.
        ours = (await self._labels_of(options.image)).get(IMAGE_LABEL) == "sandbox"
        if ours:
            try:
                return await self._create(options, labels, on_restart, attach=True)
            except ContainerDied as exc:
                # An image derived from ours without python3: its helper cannot be the main
                # process. Start it plainly; its commands then take the exec fallback.
                log.info("built-in helper did not start (%s); retrying without it", exc.reason)
        return await self._create(options, labels, on_restart, attach=False)

    async def _create(
        self,
        options: SandboxOptions,
        labels: Mapping[str, str],
        on_restart: RestartCallback | None,
        *,
        attach: bool,
    ) -> DockerSandbox:
        container, on_tmpfs = await self._create_container(options, labels, attach=attach)
        try:
            channel = await self._start(container, options, attach=attach, on_tmpfs=on_tmpfs)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.engine.remove, container)
            raise
        return DockerSandbox(self.engine, container, options, task_group=self._task_group,
                             channel=channel, on_restart=on_restart)

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
            return await self._run(create, _host_config(options, disk={}, attach=attach)), False
        if self._disk_mode != "tmpfs":
            quota = _host_config(options, disk=disk_host_config(options, "quota", home=None),
                                 attach=attach)
            try:
                container = await self._run(create, quota)
            except (SandboxError, InvalidArgument) as exc:  # an engine's 400 is the latter
                if self._disk_mode == "quota" or not quota_unsupported(str(exc)):
                    raise
                log.warning("the engine cannot cap a container's disk (%s): sessions get a "
                            "read-only root and tmpfs folders instead", exc)
                self._disk_mode = "tmpfs"
            else:
                self._disk_mode = "quota"
                return container, False
        home = await self._home_of(options, labels)
        tmpfs = _host_config(options, disk=disk_host_config(options, "tmpfs", home=home),
                             attach=attach)
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
        return await start_attached(self.engine, container, self._task_group)

    async def attach(
        self, sandbox_id: str, options: SandboxOptions, *, on_restart: RestartCallback | None = None
    ) -> DockerSandbox:
        """See `SandboxBackend.attach`: a stopped container is started by its first call."""
        state = await anyio.to_thread.run_sync(self.engine.inspect, sandbox_id)
        error = death_of(state)
        if error is not None and not isinstance(error, ContainerDied):
            raise error
        return DockerSandbox(self.engine, sandbox_id, options, task_group=self._task_group,
                             on_restart=on_restart)

    async def destroy(self, sandbox_id: str) -> None:
        """See `SandboxBackend.destroy`."""
        await anyio.to_thread.run_sync(self.engine.remove, sandbox_id)

    async def list_labelled(self, labels: Mapping[str, str]) -> list[dict[str, str]]:
        """See `SandboxBackend.list_labelled`."""
        found = await anyio.to_thread.run_sync(self.engine.list_containers, labels)
        return [{**(c.get("Labels") or {}), "id": str(c["Id"])} for c in found]
