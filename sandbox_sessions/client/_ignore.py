"""Which entries of an upload's source its `.gitignore` files leave out, as git would.

Each folder's `.gitignore` applies to the entries below that folder, with patterns relative to
it; the deepest file with a pattern that matches decides (within a file, the last matching
pattern: a `!pattern` re-includes). A folder that is ignored is not walked at all, so nothing
below it can be re-included, as in git. Patterns are parsed by `pathspec.GitIgnoreSpec`, git's
own semantics, so this works outside a git repository. Only `.gitignore` files are read (not
`.git/info/exclude`, nor the user's global excludes file), and never through a link.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pathspec import GitIgnoreSpec

__all__ = ["MAX_GITIGNORE", "IgnoreRules"]

MAX_GITIGNORE = 1024 * 1024
"""Bytes of a `.gitignore` file read (1 MiB); the rest of a larger one is not."""
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class IgnoreRules:
    """The `.gitignore` files in force in one folder of the walk, from the root down."""

    def __init__(self, specs: tuple[tuple[str, GitIgnoreSpec], ...] = ()) -> None:
        self._specs = specs

    def entering(self, folder: Path, name: str) -> IgnoreRules:
        """The rules inside `folder` (`name`: its path relative to the root, "" for the root):
        these, and its own `.gitignore` if it has one."""
        text = _read_gitignore(folder / ".gitignore")
        if text is None:
            return self
        spec = GitIgnoreSpec.from_lines(text.splitlines())
        return IgnoreRules((*self._specs, (name, spec)))

    def ignores(self, name: str, *, folder: bool) -> bool:
        """Whether the entry `name` (relative to the root, `/`-separated) is ignored."""
        for base, spec in reversed(self._specs):
            relative = name[len(base) + 1:] if base else name
            result = spec.check_file(relative + "/" if folder else relative)
            if result.include is not None:
                return bool(result.include)
        return False


def _read_gitignore(path: Path) -> str | None:
    """The text of a `.gitignore` that is a regular file (not a link), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, MAX_GITIGNORE)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data.decode("utf-8", "surrogateescape")
