"""The bridge's bearer token, kept in a file of mode 0600: the server makes it, clients read it.

Neutral ground: the client reads the token without importing the server (and its web
framework), the server makes it without importing the client.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ._exceptions import InvalidArgument

__all__ = ["TOKEN_BYTES", "default_token_path", "load_token"]

TOKEN_BYTES = 32
"""Random bytes in a token made by the server (64 hex characters)."""


def default_token_path() -> Path:
    """`$SANDBOX_SESSIONS_TOKEN_FILE`, else `token` in the user's state folder."""
    explicit = os.environ.get("SANDBOX_SESSIONS_TOKEN_FILE")
    if explicit:
        return Path(explicit).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "sandbox-sessions" / "token"


def load_token(path: Path, *, create: bool) -> str:
    """The token kept in `path`; with `create`, a new random one is written there (mode
    0600, created exclusively) when the file is missing. A file others may read, or a token
    too short to be safe, is refused."""
    try:
        return _read_token(path)
    except FileNotFoundError:
        if not create:
            raise InvalidArgument(f"no token file at {path}: start the server first, or "
                                  "pass the token") from None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_hex(TOKEN_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:  # another server made it meanwhile: use theirs
        return _read_token(path)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token


def _read_token(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as exc:  # a link (O_NOFOLLOW), a folder, no permission
        raise InvalidArgument(f"cannot read the token file {path}: {exc.strerror}") from None
    with os.fdopen(fd) as file:
        if os.fstat(file.fileno()).st_mode & 0o077:
            raise InvalidArgument(f"token file {path} may be read by others: chmod 600 it")
        token = file.read().strip()
    if len(token) < 2 * TOKEN_BYTES:
        raise InvalidArgument(f"the token in {path} is shorter than {2 * TOKEN_BYTES} "
                              "characters")
    return token
