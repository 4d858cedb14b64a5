"""A session's writable space, capped at `SandboxOptions.disk`, in one of two ways.

- **quota**: the engine caps the container's writable layer (`storage_opt size`). Storage
  drivers that can: btrfs (with quotas on), zfs, overlay2 on XFS mounted with `pquota`.
  Writes past the cap fail inside the container with `EDQUOT` or `ENOSPC`.
- **tmpfs**: for engines that cannot (overlay2 on ext4, the common default), the root
  filesystem is read-only and the workdir, `/artifacts`, `/tmp` and the user's home are tmpfs
  mounts of `disk` bytes each: writes past one fail with `ENOSPC`. Their data lives in memory,
  is charged to the container's memory limit, and is lost when the container stops.

`DockerBackend` learns which applies from the engine itself: it asks for a quota, and the
first create that the engine refuses for it switches that backend to tmpfs for good.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from .._exceptions import SandboxError
from .._types import SandboxOptions
from ._archive import iter_tar_files
from ._engine import Engine

__all__ = ["DiskMode", "disk_host_config", "find_home", "quota_unsupported"]

DiskMode = Literal["auto", "quota", "tmpfs"]
"""How sessions' writable space is capped: `auto` tries a quota, then falls back to tmpfs."""

_ARTIFACTS = "/artifacts"
_PASSWD_CAP = 1 << 20
# The engine's words when its storage cannot cap a container (overlay2 without XFS project
# quotas, vfs, fuse-overlayfs, ...): they name the option, or say quotas are unsupported.
# "disk quota exceeded" (a size too small for the container's own files) is not one of them.
_UNSUPPORTED = re.compile(
    r"storage.?opt|quota.*not (supported|enabled)|not support.*quota", re.IGNORECASE
)


def quota_unsupported(message: str) -> bool:
    """Whether an engine's refusal to create a container says it cannot cap its disk."""
    return _UNSUPPORTED.search(message) is not None


def disk_host_config(
    options: SandboxOptions, mode: Literal["quota", "tmpfs"], *, home: str | None
) -> dict[str, Any]:
    """The host-config entries that cap the container's writable space (none for no `disk`)."""
    size = options.disk_bytes
    if size is None:
        return {}
    if mode == "quota":
        return {"storage_opt": {"size": str(size)}}
    return {"read_only": True, "tmpfs": _tmpfs_mounts(options, size, home)}


def _tmpfs_mounts(options: SandboxOptions, size: int, home: str | None) -> dict[str, str]:
    """Each writable folder's tmpfs options: executable, no devices or setuid, owned by the
    sandbox user when it is numeric (else world-writable and sticky, like /tmp)."""
    uid, _, gid = options.user.partition(":")
    owner = (f"mode=0755,uid={uid},gid={gid or uid}" if uid.isdigit() and (gid or uid).isdigit()
             else "mode=1777")
    mounts = {folder: f"rw,exec,nosuid,nodev,size={size},{owner}"
              for folder in (options.workdir, _ARTIFACTS, home) if folder is not None}
    mounts["/tmp"] = f"rw,exec,nosuid,nodev,size={size},mode=1777"
    return mounts


def find_home(engine: Engine, image: str, user: str, labels: Mapping[str, str]) -> str | None:
    """The sandbox user's home folder in `image`, read from its `/etc/passwd`, or None when
    unknown. Blocking: it creates (never starts) a throwaway container, labelled as the
    session's so the reaper removes it should this process die meanwhile."""
    try:
        probe = engine.create_container(
            image, command=["true"], labels=dict(labels), user=user, detach=True,
            host_config={"network_mode": "none", "log_config": {"type": "none", "config": {}}})
    except SandboxError:
        return None
    try:
        passwd = _read_small(engine.get_archive(probe, "/etc/passwd"))
    except SandboxError:
        passwd = None
    finally:
        engine.remove(probe)
    return None if passwd is None else home_in_passwd(passwd, user)


def _read_small(chunks: Iterator[bytes]) -> bytes | None:
    for _key, kind, member, handle in iter_tar_files(chunks):
        if kind == "file" and handle is not None and member.size <= _PASSWD_CAP:
            return handle.read()
        return None
    return None


def home_in_passwd(passwd: bytes, user: str) -> str | None:
    """The home folder that `passwd` gives `user` (`name` or `uid[:gid]`), if it is a folder
    a tmpfs may go on: absolute, and not `/` nor one of the session's other mounts."""
    who = user.partition(":")[0]
    for line in passwd.decode("utf-8", "replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and who in (fields[0], fields[2]):
            home = posixpath.normpath(fields[5]) if fields[5].startswith("/") else None
            return None if home in (None, "/", "/tmp", _ARTIFACTS) else home
    return None
