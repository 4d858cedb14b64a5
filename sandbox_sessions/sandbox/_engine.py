"""The Docker engine adapter: the only module that imports the `docker` SDK.

Every method is blocking and meant to run in a worker thread (`anyio.to_thread.run_sync`).
Every `docker` and `requests` error is translated here into our own error tree.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import docker
import docker.errors
import docker.utils
import docker.utils.socket
import requests.exceptions

from .._exceptions import (
    ContainerGone,
    ImageBuildError,
    ImageNotFound,
    InvalidArgument,
    SandboxError,
    SandboxFileNotFound,
    SandboxSessionsError,
    SandboxUnavailable,
)

T = TypeVar("T")
_UNAVAILABLE = (requests.exceptions.ConnectionError, ConnectionError, FileNotFoundError)
POOL_SIZE = 64
"""Connections kept to the engine. Each call holds one at a time, from a worker thread, so
this exceeds anyio's default of 40 worker threads: a burst of calls (50 sessions made at
once) never has a connection discarded."""

_CALLERS = ("unable to find user", "unable to find group")
"""Engine errors (a 500 when a container starts) that name a value the caller gave."""


@contextmanager
def translate(not_found: Callable[[], SandboxSessionsError] | None = None) -> Iterator[None]:
    """Turn docker and requests errors raised in the block into our own."""
    try:
        yield
    except SandboxSessionsError:  # already ours (some subclass builtins caught below)
        raise
    except docker.errors.NotFound as exc:
        if not_found is None:
            raise SandboxError(_explain(exc)) from exc
        raise not_found() from exc
    except docker.errors.NullResource as exc:  # an empty image or container name
        raise InvalidArgument(str(exc)) from exc
    except docker.errors.APIError as exc:
        if exc.status_code == 400 or any(text in _explain(exc) for text in _CALLERS):
            # the engine refused values the caller gave (an image reference, a memory size,
            # a user the image lacks): theirs to fix, not a failure of ours
            raise InvalidArgument(f"the Docker engine refused it: {_explain(exc)}") from exc
        raise SandboxError(_explain(exc)) from exc
    except _UNAVAILABLE as exc:
        raise SandboxUnavailable(f"the Docker engine does not answer: {exc}") from exc
    except docker.errors.DockerException as exc:
        if "Connection" in str(exc) or "connect" in str(exc):
            raise SandboxUnavailable(f"the Docker engine does not answer: {exc}") from exc
        raise SandboxError(str(exc)) from exc
    except requests.exceptions.RequestException as exc:
        raise SandboxUnavailable(f"the Docker engine does not answer: {exc}") from exc


def _explain(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc)


class _APIClient(docker.APIClient):
    """docker's client, closed only once no request is in flight, and refusing requests
    after that: a request racing with `close()` would open a pool that nobody closes."""

    def __init__(self, **kwargs: Any) -> None:
        self._gate = threading.Lock()
        self._in_flight = 0
        self._closing = False
        super().__init__(**kwargs)  # asks the engine its API version: the gate must exist

    def send(self, request: Any, **kwargs: Any) -> Any:
        with self._gate:
            if self._closing:
                raise requests.exceptions.ConnectionError("the engine connection is closed")
            self._in_flight += 1
        try:
            return super().send(request, **kwargs)
        finally:
            with self._gate:
                self._in_flight -= 1
                last = self._closing and self._in_flight == 0
            if last:
                super().close()

    def close(self) -> None:
        with self._gate:
            self._closing = True
            idle = self._in_flight == 0
        if idle:
            super().close()


class Engine:
    """A thin, typed face of `docker.APIClient`. Connects lazily, on first use."""

    def __init__(self, base_url: str | None = None, *, timeout: int = 60) -> None:
        self._base_url = base_url
        self._timeout = timeout
        self._client: docker.APIClient | None = None
        self._closed = False

    @property
    def api(self) -> docker.APIClient:
        if self._closed:
            raise SandboxUnavailable("the client is closed: it no longer calls the Docker engine")
        if self._client is None:
            with translate():
                if self._base_url is None:
                    kwargs = docker.utils.kwargs_from_env()
                else:
                    kwargs = {"base_url": self._base_url}
                self._client = _APIClient(version="auto", timeout=self._timeout,
                                          max_pool_size=POOL_SIZE, **kwargs)
        return self._client

    def close(self) -> None:
        """Close the pooled connections to the engine, once the requests in flight are done;
        later calls raise `SandboxUnavailable`."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def ping(self) -> None:
        """Raise `SandboxUnavailable` unless the engine answers."""
        with translate():
            self.api.ping()

    def version(self) -> str:
        """The engine's version (`27.3.1`); `SandboxUnavailable` unless it answers."""
        with translate():
            return str(self.api.version().get("Version", "unknown"))

    def list_images(self) -> list[dict[str, Any]]:
        """Every local image, as the engine lists them (`Id`, `RepoTags`, `Labels`, `Size`,
        `Created`)."""
        with translate():
            return [dict(image) for image in self.api.images()]

    def _inspect_image(self, image: str) -> dict[str, Any] | None:
        try:
            with translate():
                return dict(self.api.inspect_image(image))  # type: ignore[no-untyped-call]
        except SandboxError as exc:
            if isinstance(exc.__cause__, docker.errors.ImageNotFound | docker.errors.NotFound):
                return None
            raise

    def image_labels(self, image: str) -> dict[str, str] | None:
        """The image's labels, or None when no such image exists locally."""
        info = self._inspect_image(image)
        return None if info is None else dict((info.get("Config") or {}).get("Labels") or {})

    def image_id(self, image: str) -> str | None:
        """The image's id (`sha256:...`), or None when no such image exists locally."""
        info = self._inspect_image(image)
        return None if info is None else str(info["Id"])

    def create_container(
        self,
        image: str,
        *,
        host_config: Mapping[str, Any],
        stdin_once: bool = False,
        **options: Any,
    ) -> str:
        """Create (not start) a container; `stdin_once` closes its stdin when the attach ends."""

        def missing() -> SandboxSessionsError:
            return ImageNotFound(
                f"image {image!r} does not exist locally; "
                "build it with `sandbox-sessions images build`"
            )

        with translate(not_found=missing):
            config = self.api.create_container_config(
                image, host_config=self.api.create_host_config(**host_config), **options
            )
            config["StdinOnce"] = stdin_once
            created = self.api.create_container_from_config(config)  # type: ignore[no-untyped-call]
        return str(created["Id"])

    def start(self, container: str) -> None:
        """Start a created or stopped container."""
        with translate(not_found=lambda: ContainerGone(f"container {container[:12]} is gone")):
            self.api.start(container)

    def unpause(self, container: str) -> None:
        """Resume a paused container."""
        with translate(not_found=lambda: ContainerGone(f"container {container[:12]} is gone")):
            self.api.unpause(container)

    def remove(self, container: str) -> None:
        """Remove the container with force (no stop grace); a missing one is not an error."""
        try:
            with translate():
                self.api.remove_container(container, force=True, v=True)
        except SandboxError as exc:
            if not isinstance(exc.__cause__, docker.errors.NotFound) and not _removing(exc):
                raise

    def inspect(self, container: str) -> dict[str, Any] | None:
        """The container's inspect document, or None when it no longer exists."""
        try:
            with translate():
                return dict(self.api.inspect_container(container))
        except SandboxError as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return None
            raise

    def list_containers(self, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Every container, running or not, that carries all of `labels`."""
        filters = {"label": [f"{key}={value}" for key, value in labels.items()]}
        with translate():
            return list(self.api.containers(all=True, filters=filters))

    def exec_socket(
        self, container: str, cmd: list[str], *, user: str, workdir: str | None = None
    ) -> socket.socket:
        """Start `cmd` with stdin attached and return its raw, connected socket (ours to close)."""
        gone = lambda: ContainerGone(f"container {container[:12]} is gone")  # noqa: E731
        with translate(not_found=gone):
            exec_id = self.api.exec_create(
                container, cmd, stdin=True, stdout=True, stderr=True, user=user, workdir=workdir
            )["Id"]
            wrapper = self.api.exec_start(exec_id, socket=True)
        return _own_socket(wrapper)

    def attach_socket(self, container: str) -> socket.socket:
        """Attach to the container's stdin, stdout and stderr; before its start, misses nothing."""
        gone = lambda: ContainerGone(f"container {container[:12]} is gone")  # noqa: E731
        params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
        with translate(not_found=gone):
            wrapper = self.api.attach_socket(container, params=params)
        return _own_socket(wrapper)

    def exec_stream(
        self,
        container: str,
        cmd: list[str],
        *,
        user: str,
        workdir: str | None,
        env: Mapping[str, str],
    ) -> tuple[str, ExecOutput]:
        """Start `cmd` and return its exec id and its output."""
        gone = lambda: ContainerGone(f"container {container[:12]} is gone")  # noqa: E731
        with translate(not_found=gone):
            exec_id = self.api.exec_create(
                container, cmd, user=user, workdir=workdir, environment=dict(env)
            )["Id"]
            # The raw socket, made ours: docker-py's stream would leave its socket unclosed.
            sock = _own_socket(self.api.exec_start(exec_id, socket=True))
        return exec_id, ExecOutput(sock)

    def exec_exit_code(self, exec_id: str) -> int | None:
        """The exit code of a finished exec, or None while it runs."""
        with translate():
            code = self.api.exec_inspect(exec_id).get("ExitCode")
        return None if code is None else int(code)

    def get_archive(self, container: str, path: str) -> Iterator[bytes]:
        """A tar stream of `path` in the container."""
        with translate(not_found=lambda: SandboxFileNotFound(path)):
            chunks, _stat = self.api.get_archive(container, path)
        return _translated_iter(chunks)

    def put_archive(self, container: str, path: str, data: bytes) -> None:
        """Unpack a tar archive into `path` in the container."""
        with translate(not_found=lambda: SandboxFileNotFound(path, "no such folder")):
            self.api.put_archive(container, path, data)

    def build(
        self, context: str, *, tag: str, labels: Mapping[str, str], buildargs: Mapping[str, str]
    ) -> Iterator[dict[str, Any]]:
        """Build an image with no network, yielding the builder's JSON messages as they come."""
        with translate():
            stream = self.api.build(
                path=context,
                tag=tag,
                labels=dict(labels),
                buildargs=dict(buildargs),
                network_mode="none",
                rm=True,
                forcerm=True,
                decode=True,
            )
        for message in _translated_iter(stream):
            if "error" in message:
                raise ImageBuildError(str(message["error"]).strip())
            yield message

    def tag(self, image: str, repository: str, tag: str) -> None:
        """Give `image` the name `repository:tag`."""
        with translate():
            self.api.tag(image, repository, tag)


def _removing(exc: SandboxError) -> bool:
    """Whether the engine refused a removal because another one (another reaper) is under way."""
    cause = exc.__cause__
    return (isinstance(cause, docker.errors.APIError) and cause.status_code == 409
            and "already in progress" in str(cause.explanation))


def _own_socket(wrapper: Any) -> socket.socket:
    """A socket of our own for the connection docker-py hands back wrapped."""
    raw: socket.socket = getattr(wrapper, "_sock", wrapper)
    owned = socket.socket(fileno=os.dup(raw.fileno()))
    wrapper.close()
    # Closing the wrapper leaves docker-py's socket open (and warned about when collected).
    raw.close()
    return owned


class ExecOutput:
    """The (stdout, stderr) chunks of a running exec, read once, in a worker thread."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def __iter__(self) -> Iterator[tuple[bytes | None, bytes | None]]:
        return _demuxed(self._sock)

    def stop(self) -> None:
        """End the output early, from any thread: the reader sees its end at once."""
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)


def _demuxed(sock: socket.socket) -> Iterator[tuple[bytes | None, bytes | None]]:
    """(stdout, stderr) chunks of an exec's multiplexed output; closes `sock` at the end."""
    try:
        with translate():
            frames = docker.utils.socket.frames_iter(sock, tty=False)  # type: ignore[no-untyped-call]
            for stream, data in frames:
                yield (data, None) if stream == docker.utils.socket.STDOUT else (None, data)
    finally:
        sock.close()


def _translated_iter(chunks: Iterator[T]) -> Iterator[T]:
    with translate():
        yield from chunks
