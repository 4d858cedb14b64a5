"""`cp`: files between the host and a session's container, one side written `SESSION:PATH`.

Like `cp -r SRC/. DST`: a folder's contents land in the destination folder (made if missing),
a file lands in it under its own name. Uploads leave out what `.gitignore` files ignore
(unless `--no-gitignore`) and every `.git`; links and special files are never sent nor
written, and are listed as skipped on stderr. Downloads go through the same safe writer as
artifacts.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from ._app import ExitCode, cli, common, fail, open_client
from ._output import clean, count, output

__all__ = ["split_remote"]

_REMOTE = re.compile(r"^(?P<session>[A-Za-z0-9][A-Za-z0-9_-]*):(?P<path>.*)$")


def split_remote(argument: str) -> tuple[str, str] | None:
    """`(session, path)` for `SESSION:PATH`, None for a host path (`./a:b` is one)."""
    found = _REMOTE.match(argument)
    if found is None:
        return None
    return found["session"], found["path"] or "."


@cli.command()
@common
@click.argument("source", metavar="SRC")
@click.argument("destination", metavar="DST")
@click.option("--no-gitignore", "no_gitignore", is_flag=True,
              help="Upload what .gitignore files ignore as well (.git is still left out).")
def cp(source: str, destination: str, no_gitignore: bool) -> None:
    """Copy a file or folder into a session (`cp ./src ses_1:/workspace/src`) or out of it
    (`cp ses_1:/workspace/out ./out`).

    A folder's contents go into DST (made if missing); a file goes into DST under its name.
    A relative sandbox path starts at the session's workdir.
    """
    remote_source, remote_destination = split_remote(source), split_remote(destination)
    if (remote_source is None) == (remote_destination is None):
        fail("cp needs exactly one side written SESSION:PATH, as in "
             "`cp ./src ses_1:/workspace/src` or `cp ses_1:/workspace/out ./out`")
    if remote_destination is not None:
        _upload(Path(source), *remote_destination, gitignore=not no_gitignore)
    elif remote_source is not None:
        if no_gitignore:
            fail("--no-gitignore is for uploads: a download copies what the sandbox has")
        _download(*remote_source, Path(destination))


def _upload(source: Path, session_id: str, path: str, *, gitignore: bool) -> None:
    out = output()
    if not source.exists():
        fail(f"no such file or folder on the host: {source}", code=ExitCode.NOT_FOUND)
    with open_client() as client:
        handle = client.session(session_id)
        handle.get_info()  # an unknown session fails before the archive is made
        with out.progress(f"uploading {source}", unit="bytes") as update:
            result = handle.upload(source, path, gitignore=gitignore,
                                   progress=lambda done, total: update(done, total))
    for skip in result.skipped:
        out.log(f"skipped {skip.path}: {skip.reason}")
    ignored = f", {result.ignored} ignored" if result.ignored else ""
    sent = f"{count(len(result.files), 'file')}, {count(result.bytes, 'byte')}"
    out.result(result, f"{sent} uploaded to {session_id}:{result.destination}{ignored}")


def _download(session_id: str, path: str, destination: Path) -> None:
    out = output()
    with open_client() as client:
        handle = client.session(session_id)
        with out.progress(f"downloading {path}", unit="bytes") as update:
            result = handle.download(path, destination,
                                     progress=lambda done, total: update(done, total))
    for skip in result.skipped:
        out.log(f"skipped {clean(skip.key)}: {clean(skip.reason)}")
    got = f"{count(len(result.files), 'file')}, {count(result.bytes, 'byte')}"
    out.result(result, f"{got} downloaded to {destination}")

