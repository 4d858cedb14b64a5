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
from collections.abc import Mapping
from functools import partial
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from .._exceptions import ContainerDied, ImageNotFound
from .._types import SandboxOptions
from ._channel import HelperChannel
from ._container import HELPER_ARGV, DockerSandbox, death_of, start_attached
from ._engine import Engine
from .base import RestartCallback

__all__ = ["DockerBackend", "DockerSandbox"]

log: logging.Logger = logging.getLogger("sandbox_sessions.docker")

IMAGE_LABEL = "sandbox-sessions.image"
OWN_WORKDIR = "/workspace"
"""The workdir our images make, owned by their sandbox user."""


def _host_config(options: SandboxOptions) -> dict[str, Any]:
    return {
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

    def __init__(self, engine: Engine, *, task_group: anyio.abc.TaskGroup) -> None:
        self.engine = engine
        self._task_group = task_group
        self._image_labels: dict[str, dict[str, str]] = {}

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
        # Our helper is PID 1 (unkillable from inside, and the reaper of orphans); a foreign
        # image's `sleep infinity` needs Docker's init to reap.
        host_config = {**_host_config(options), "init": not attach}
        container = await anyio.to_thread.run_sync(
            partial(self.engine.create_container, options.image,
                    command=[*HELPER_ARGV, "main"] if attach else ["sleep", "infinity"],
                    stdin_open=attach, stdin_once=attach, labels=dict(labels), user=options.user,
                    working_dir=options.workdir, environment=dict(options.env), detach=True,
                    host_config=host_config)
        )
        try:
            channel = await self._start(container, options, attach=attach)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.engine.remove, container)
            raise
        return DockerSandbox(self.engine, container, options, task_group=self._task_group,
                             channel=channel, on_restart=on_restart)

    async def _start(
        self, container: str, options: SandboxOptions, *, attach: bool
    ) -> HelperChannel | None:
        if not attach:  # a foreign image may lack our folders, or own them as root
            archive = _folders_archive(options.user, (options.workdir, "/artifacts"))
            await anyio.to_thread.run_sync(self.engine.put_archive, container, "/", archive)
            await anyio.to_thread.run_sync(self.engine.start, container)
            return None
        if options.workdir != OWN_WORKDIR:  # Docker would make it root-owned: unwritable
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
