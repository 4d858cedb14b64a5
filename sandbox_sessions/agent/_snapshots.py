"""Workspace snapshots: a shadow git repository inside the session's container.

The repository lives at `SNAPSHOT_DIR` (under `/tmp`, which every sandbox can write, outside
the workdir), with the workdir as its work tree, so the user's own `.git` is never touched.
A snapshot is a tree object: `git add -A` into the shadow index, then `git write-tree`. No
commit, no branch; `gc.auto` is off so nothing is pruned while the container lives.

- `track()` snapshots the workdir now and, given an earlier tree, lists the files changed
  since (a step's `patch` part).
- `diff()` compares two trees file by file (status, lines added and removed).
- `restore()` first snapshots the workdir (so that `unrevert()` can come back), then
  `git read-tree --reset -u`: files of the tree are written back, files it lacks are removed.

What is left out: files over `max_file` bytes (found with `find -size`, excluded with
literal pathspecs, reported by `restore()`), and whatever the user's `.gitignore` files
ignore, as `git add` does (an ignored file is neither restored nor removed); a folder that is
a git repository of its own is recorded as a link to its commit, not its files.

Everything runs as the sandbox user, so the agent can reach the repository too: a hostile
agent can spoil its own session's snapshots, and nothing more. What comes back is parsed as
hostile (hashes checked, lists and numbers bounded); a failure is a `SnapshotError`.
"""

from __future__ import annotations

import re
import shlex
from typing import Literal

from .._exceptions import SnapshotError
from .._types import FileDiff
from ..sandbox.base import Sandbox, ShellRequest

__all__ = ["MAX_LISTED", "SNAPSHOT_DIR", "Snapshots", "Track", "archive_command"]

SNAPSHOT_DIR = "/tmp/.sandbox-sessions-snapshots"
"""The shadow repository's git folder inside the container."""
MAX_LISTED = 1000
"""Files listed at most in one patch, diff or list of skipped files."""
TIMEOUT = 300.0
"""Seconds one snapshot operation may take (a first `git add` of a large workspace)."""
_HASH = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")

_PRELUDE = f"""
set -u
export GIT_DIR={SNAPSHOT_DIR} GIT_WORK_TREE="$SNAP_WORKDIR" GIT_CONFIG_NOSYSTEM=1 \\
    GIT_CONFIG_GLOBAL=/dev/null GIT_TERMINAL_PROMPT=0 LC_ALL=C
g() {{ git -c core.autocrlf=false -c core.safecrlf=false -c core.quotepath=false \\
    -c gc.auto=0 -c core.hooksPath=/dev/null -c core.fsmonitor=false \\
    -c core.untrackedCache=true "$@"; }}
command -v git >/dev/null || {{ echo "git is not installed in the sandbox image" >&2; exit 90; }}
cd "$GIT_WORK_TREE" || exit 91
[ -f "$GIT_DIR/HEAD" ] || g init -q >&2 || exit 92
if command -v flock >/dev/null; then
    exec 9>"$GIT_DIR/snapshots.lock" && flock -w {int(TIMEOUT)} 9 || exit 93
    rm -f "$GIT_DIR/index.lock"  # ours to hold: one left is stale (a killed snapshot)
fi
large="$GIT_DIR/large.$$"
find . -path ./.git -prune -o -type f -size +"$SNAP_MAX"c -print0 > "$large" || exit 94
if [ -s "$large" ]; then
    {{ printf '.\\0'; sed -z 's|^\\./|:(exclude,literal)|' "$large"; }} \\
        | g add -A --pathspec-from-file=- --pathspec-file-nul >&2 || exit 95
else
    g add -A >&2 || exit 95
fi
tree=$(g write-tree) || exit 96
printf '%s\\n' "$tree"
[ ! -s "$large" ] || sed -z 's|^\\./||' "$large" | head -z -n {MAX_LISTED}
printf '\\0'
rm -f "$large"
"""
"""Snapshot the workdir: prints the tree, then the large files left out (NUL-terminated,
then an empty record)."""

_CHANGED = """
[ -z "${SNAP_SINCE:-}" ] || g diff-tree -r --no-renames --name-only -z "$SNAP_SINCE" "$tree" \\
    | head -z -n @MORE@ || exit 97
""".replace("@MORE@", str(MAX_LISTED + 1))

_DIFF = """
g cat-file -e "$SNAP_FROM^{tree}" 2>/dev/null || exit 98
g diff-tree -r --no-renames --name-status -z "$SNAP_FROM" "$tree" | head -z -n @PAIRS@
printf '\\0'
g diff-tree -r --no-renames --numstat -z "$SNAP_FROM" "$tree" | head -z -n @LIST@
"""

_RESTORE = """
g cat-file -e "$SNAP_TO^{tree}" 2>/dev/null || exit 98
g diff-tree -r --no-renames --name-status -z "$tree" "$SNAP_TO" | head -z -n @PAIRS@
printf '\\0'
g diff-tree -r --no-renames --numstat -z "$tree" "$SNAP_TO" | head -z -n @LIST@
printf '\\0'
g read-tree --reset -u "$SNAP_TO" >&2 || exit 99
"""

_FAILURES = {
    90: "git is not installed in the sandbox image",
    91: "the workdir is missing",
    92: "the shadow repository could not be made",
    93: "another snapshot operation holds the shadow repository",
    94: "the workdir could not be listed",
    95: "git add failed",
    96: "git write-tree failed",
    97: "git diff-tree failed",
    98: "the shadow repository does not hold that snapshot (the container was replaced, or "
        "the repository was removed)",
    99: "git read-tree failed",
}


class Track:
    """A snapshot just taken: its tree, the large files left out, and (given `since`) the
    files changed since then."""

    def __init__(self, tree: str, large: list[str], changed: list[str]) -> None:
        self.tree = tree
        self.large = large
        self.changed = changed[:MAX_LISTED]
        self.truncated = len(changed) > MAX_LISTED


class Snapshots:
    """The snapshot operations of one session's sandbox."""

    def __init__(self, sandbox: Sandbox, workdir: str, *, max_file: int) -> None:
        self._sandbox = sandbox
        self._workdir = workdir
        self._max_file = max_file

    async def track(self, since: str | None = None) -> Track:
        """Snapshot the workdir; with `since` (a tree), also the files changed since it."""
        records = await self._run(_CHANGED, SNAP_SINCE=_checked(since) if since else "")
        tree, large, rest = _head(records)
        return Track(tree, large, [r for r in rest if r])

    async def diff(self, since: str) -> tuple[str, list[FileDiff]]:
        """Snapshot the workdir now; the tree, and each file that differs from `since`."""
        records = await self._run(_DIFF, SNAP_FROM=_checked(since))
        tree, _, rest = _head(records)
        return tree, _file_diffs(rest)

    async def restore(self, tree: str) -> tuple[Track, list[FileDiff]]:
        """Put the workdir back as `tree` holds it; the snapshot taken just before (with the
        large files, left as they are) and what changed, as a diff from it to `tree`."""
        records = await self._run(_RESTORE, SNAP_TO=_checked(tree))
        before, large, rest = _head(records)
        return Track(before, large, []), _file_diffs(rest)

    async def _run(self, script: str, **env: str) -> list[str]:
        script = script.replace("@PAIRS@", str(2 * MAX_LISTED)).replace("@LIST@",
                                                                          str(MAX_LISTED))
        result = await self._sandbox.shell(ShellRequest(
            command=_PRELUDE + script, timeout=TIMEOUT, cwd="/", max_output=4 * 1024 * 1024,
            env={"SNAP_WORKDIR": self._workdir, "SNAP_MAX": str(self._max_file), **env}))
        if result.timed_out:
            raise SnapshotError(f"a snapshot took longer than {TIMEOUT:.0f} s")
        if result.exit_code != 0:
            reason = _FAILURES.get(result.exit_code, f"exit code {result.exit_code}")
            detail = result.stderr.strip()[-300:]
            raise SnapshotError(f"workspace snapshot failed: {reason}"
                                + (f" ({detail})" if detail else ""))
        if result.truncated:
            raise SnapshotError("workspace snapshot failed: git said more than expected")
        return result.stdout.split("\0")


def _checked(tree: str) -> str:
    if not _HASH.fullmatch(tree):
        raise SnapshotError(f"{tree[:80]!r} is not a snapshot id")
    return tree


def _head(records: list[str]) -> tuple[str, list[str], list[str]]:
    """The tree line, the large files (up to the empty record), and the records after."""
    first, _, name = records[0].partition("\n")
    tree = _checked(first.strip())
    large: list[str] = []
    index = 0
    rest = [name, *records[1:]]
    while index < len(rest) and rest[index]:
        large.append(rest[index])
        index += 1
    return tree, large[:MAX_LISTED], rest[index + 1:]


def _file_diffs(records: list[str]) -> list[FileDiff]:
    """`--name-status -z` records, an empty record, then `--numstat -z` ones, as diffs."""
    split = records.index("") if "" in records else len(records)
    status, numstat = records[:split], records[split + 1:]
    diffs: dict[str, FileDiff] = {}
    for code, path in zip(status[::2], status[1::2], strict=False):
        if path and len(diffs) < MAX_LISTED:
            kind: Literal["added", "modified", "deleted"] = (
                "added" if code == "A" else "deleted" if code == "D" else "modified")
            diffs[path] = FileDiff(path=path, status=kind)
    for record in numstat:  # "<added>\t<deleted>\t<path>" ("-" for a binary file)
        added, deleted, path = [*record.split("\t", 2), "", ""][:3]
        known = diffs.get(path)
        if known is not None:
            diffs[path] = known.model_copy(update={"additions": _count(added),
                                                   "deletions": _count(deleted)})
    return list(diffs.values())


def _count(text: str) -> int:
    return min(int(text), 1 << 31) if text.isdigit() and len(text) < 12 else 0


def archive_command(tree: str, workdir: str, output: str) -> str:
    """A shell command writing `tree`'s files as a tar to `output` (to copy a workspace as it
    was at a snapshot into another session)."""
    return (f"GIT_DIR={SNAPSHOT_DIR} GIT_WORK_TREE={shlex.quote(workdir)} "
            "GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null "
            f"git archive --format=tar -o {shlex.quote(output)} {_checked(tree)}")
