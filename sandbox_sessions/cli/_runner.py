"""The runner behind `run`: a session, its uploads, the steps in order, the artifacts, the end.

Each step ends the run when it fails, and the exit code says why: the turn's `turn-end`
reason for a prompt or a command (`rejected` 5, `limit` 6, `error` 1), a shell step's exit
code or a failed expectation (8). The whole run has one deadline (`--timeout`, the task's
`timeout`): past it the running turn is aborted (its `turn-end` is stored) and the run exits
7. Ctrl-C does the same and exits 130; a second Ctrl-C leaves at once. Whatever happens, the
artifacts are downloaded when asked and the session is ended unless `--keep`, each with a
bounded wait.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import click

from .._exceptions import CommandFailed, SandboxFileNotFound, SandboxSessionsError
from .._taskfile import (
    CommandStep,
    ExpectArtifactStep,
    ExpectFileStep,
    PromptStep,
    ShellStep,
    TaskFile,
)
from .._taskfile_steps import StepBase
from .._types import (
    Event,
    PermissionReply,
    PermissionRequest,
    QuestionRequest,
    SendResult,
    TurnEndEvent,
)
from ..client import AsyncSandboxClient, SandboxKwargs
from ..client._session import AsyncSessionHandle
from ._app import ExitCode, exit_code
from ._output import Output, clean, count
from ._render import Renderer, describe_permission

__all__ = ["Plan", "Runner", "StepFailed", "glob_regex"]

log: logging.Logger = logging.getLogger("sandbox_sessions.cli")

CLEANUP_SECONDS = 60.0
"""How long the end of a run (abort, artifacts, end) may take after a timeout or Ctrl-C."""
NON_INTERACTIVE_ANSWER = ("The user is not available (a non-interactive run): decide "
                          "yourself and say what you chose.")

_REASON_CODES = {"completed": ExitCode.OK, "error": ExitCode.ERROR,
                 "rejected": ExitCode.REJECTED, "limit": ExitCode.LIMIT,
                 "aborted": ExitCode.ERROR}


@dataclass
class Plan:
    """What `run` was asked to do."""

    task: TaskFile
    artifacts: Path | None
    timeout: float | None
    ask: str
    """How a request is answered without a person: `reject`, `once` or `fail`; or `wait`
    for an answer from elsewhere (`sandbox-sessions reply`, the viewer)."""
    interactive: bool
    """Whether requests are asked at the keyboard (stdin is a terminal, no `--ask`)."""
    keep: bool
    title: str


class StepFailed(Exception):
    """A step failed: why, and the exit code that says so."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass
class _State:
    session: AsyncSessionHandle | None = None
    step: str = ""
    last_seq: int = 0
    turn: str | None = None
    """The assistant message of the turn running (from its first event), for the drain."""
    ended: TurnEndEvent | None = None
    ask_failed: PermissionRequest | None = None
    interrupted: bool = False
    results: list[dict[str, Any]] = field(default_factory=list)


class Runner:
    """Runs one `Plan`; `run()` returns the exit code."""

    def __init__(self, plan: Plan, out: Output, *, url: str | None, store: str | None
                 ) -> None:
        self.plan = plan
        self.out = out
        self.render = Renderer(out)
        self._url = url
        self._store = store
        self.state = _State()

    async def run(self) -> int:
        code, message = ExitCode.OK, "completed"
        async with anyio.create_task_group() as group:
            work = anyio.CancelScope()
            group.start_soon(self._watch_interrupt, work)
            try:
                async with AsyncSandboxClient(base_url=self._url, store=self._store,
                                              reap_orphans=False) as client:
                    try:
                        code, message = await self._session(client, work)
                    finally:
                        with anyio.CancelScope(shield=True):
                            await self._finish(code)
            except SandboxSessionsError as error:
                code, message = exit_code(error), str(error)
            finally:
                group.cancel_scope.cancel()
        return self._report(code, message)

    async def _session(self, client: AsyncSandboxClient, work: anyio.CancelScope
                       ) -> tuple[ExitCode, str]:
        """Make the session and run the steps within the deadline: the outcome."""
        spec = self.plan.task.agent
        image: SandboxKwargs = {"image": spec.image} if spec.image is not None else {}
        agent = client.agent(
            spec.name, harness=spec.harness, model=spec.model, system=spec.system, tools=spec.tools,
            permissions=spec.permissions, max_steps=spec.max_steps,
            token_budget=spec.token_budget, **image,
            script=(str(spec.script) if isinstance(spec.script, Path)
                    else [entry.model_dump(exclude_none=True) for entry in spec.script]
                    if spec.script is not None else None),
            config=_timeouts(spec.permission_timeout))
        deadline = anyio.current_time() + self.plan.timeout if self.plan.timeout else None
        with work:
            work.deadline = deadline if deadline is not None else work.deadline
            with self.out.status("starting a session"):
                session = await agent.create_session(title=self.plan.title)
            self.state.session = session
            self.out.log(f"session {session.id}")
            try:
                await self._uploads(session)
                for position, step in enumerate(self.plan.task.steps, 1):
                    await self._step(session, position, step)
            except StepFailed as failed:
                return failed.code, failed.message
        if self.state.interrupted:
            return ExitCode.INTERRUPTED, f"interrupted during {self.state.step or 'setup'}"
        if work.cancelled_caught:
            return ExitCode.TIMEOUT, (f"timed out after {self.plan.timeout:g} s, during "
                                      f"{self.state.step or 'setup'}")
        return ExitCode.OK, "completed"

    # --- steps --------------------------------------------------------------------------------

    async def _uploads(self, session: AsyncSessionHandle) -> None:
        for upload in self.plan.task.upload:
            self.state.step = f"upload {upload.source}"
            if not upload.source.exists():
                raise StepFailed(f"upload: no such host path {upload.source}",
                                 ExitCode.NOT_FOUND)
            with self.out.progress(f"uploading {upload.source}", unit="bytes") as update:
                result = await session.upload(upload.source, upload.destination,
                                              progress=update)
            for skip in result.skipped:
                self.out.log(f"upload skipped {clean(skip.path)}: {skip.reason}")
            ignored = f", {result.ignored} ignored" if result.ignored else ""
            sent = f"{count(len(result.files), 'file')} ({count(result.bytes, 'byte')}{ignored})"
            self.out.log(f"uploaded {sent} to {result.destination}")

    async def _step(self, session: AsyncSessionHandle, position: int, step: StepBase) -> None:
        name = step.name or step.describe(position)
        self.state.step = f"step {position} ({name})"
        self.out.log(f"step {position}/{len(self.plan.task.steps)}: {clean(name)}")
        self.out.emit({"type": "run-step", "index": position, "name": name,
                       "status": "started"})
        try:
            detail = await self._do(session, step)
        except StepFailed as failed:
            self.out.emit({"type": "run-step", "index": position, "name": name,
                           "status": "failed", "exit_code": int(failed.code),
                           "message": failed.message})
            raise StepFailed(f"step {position} ({name}) failed: {failed.message}",
                             failed.code) from None
        self.state.results.append({"index": position, "name": name, **detail})
        self.out.emit({"type": "run-step", "index": position, "name": name,
                       "status": "passed", **detail})

    async def _do(self, session: AsyncSessionHandle, step: StepBase) -> dict[str, Any]:
        if isinstance(step, PromptStep):
            waits = self.plan.ask == "wait"  # answered from elsewhere: `reply`, the viewer
            result = await session.send(step.prompt, on_event=self._on_event,
                                        on_permission=None if waits else self._on_permission,
                                        on_question=None if waits else self._on_question)
            return self._turn_outcome(result.reason, result.error, result)
        if isinstance(step, CommandStep):
            self.state.ended = None
            try:
                text = await session.run_command(
                    step.command.name, step.command.arguments, on_event=self._on_event,
                    on_permission=None if self.plan.ask == "wait" else self._on_permission)
            except CommandFailed as failed:
                ended = self.state.ended
                if ended is None:  # no turn began: a `!cmd` of the template failed
                    raise StepFailed(str(failed), ExitCode.ERROR) from None
                return self._turn_outcome(ended.reason, ended.error, None)
            return {"text": text}
        if isinstance(step, ShellStep):
            return await self._shell(session, step)
        if isinstance(step, ExpectArtifactStep):
            return await self._expect_artifact(session, step)
        if isinstance(step, ExpectFileStep):
            return await self._expect_file(session, step)
        raise AssertionError(f"unknown step {step!r}")  # pragma: no cover

    def _turn_outcome(self, reason: str, error: str | None, result: SendResult | None
                      ) -> dict[str, Any]:
        self.render.newline()
        if self.state.ask_failed is not None:
            raise StepFailed(f"--ask fail: {describe_permission(self.state.ask_failed)}",
                             ExitCode.REJECTED)
        if reason != "completed":
            why = f": {error}" if error else ""
            raise StepFailed(f"the turn ended {reason}{why}", _REASON_CODES[reason])
        if result is None:
            return {}
        return {"message_id": result.message_id, "tokens": result.tokens.model_dump(),
                "cost": result.cost}

    async def _shell(self, session: AsyncSessionHandle, step: ShellStep) -> dict[str, Any]:
        quiet = self.out.json
        result = await session.shell(
            step.shell, timeout=step.timeout,
            on_stdout=None if quiet else self._shell_out,
            on_stderr=None if quiet else self._shell_err)
        self.render.newline()
        detail: dict[str, Any] = {"exit_code": result.exit_code, "timed_out": result.timed_out,
                  "duration": round(result.duration, 3)}
        if quiet:
            detail.update(stdout=result.stdout[-4000:], stderr=result.stderr[-4000:])
        if result.timed_out:
            raise StepFailed(f"the command timed out after {step.timeout:g} s",
                             ExitCode.CHECK_FAILED)
        if result.exit_code != step.expect_exit:
            tail = clean(result.stderr.strip().splitlines()[-1]) if result.stderr.strip() else ""
            raise StepFailed(f"the command exited {result.exit_code}, not {step.expect_exit}"
                             + (f" ({tail})" if tail else ""), ExitCode.CHECK_FAILED)
        return detail

    def _shell_out(self, text: str) -> None:
        self.render.output(text)

    def _shell_err(self, text: str) -> None:
        sys.stderr.write(clean(text))
        sys.stderr.flush()

    async def _expect_artifact(self, session: AsyncSessionHandle, step: ExpectArtifactStep
                               ) -> dict[str, Any]:
        expect = step.expect_artifact
        pattern = glob_regex(expect.glob)
        found = [a for a in await session.list_artifacts() if pattern.fullmatch(a.key)]
        if not found:
            raise StepFailed(f"no artifact matches {expect.glob!r}", ExitCode.CHECK_FAILED)
        for artifact in found:
            if expect.min_bytes is not None and artifact.size < expect.min_bytes:
                raise StepFailed(f"{clean(artifact.key)} is {artifact.size} bytes, under "
                                 f"min_bytes {expect.min_bytes}", ExitCode.CHECK_FAILED)
            if expect.max_bytes is not None and artifact.size > expect.max_bytes:
                raise StepFailed(f"{clean(artifact.key)} is {artifact.size} bytes, over "
                                 f"max_bytes {expect.max_bytes}", ExitCode.CHECK_FAILED)
        return {"artifacts": [a.model_dump() for a in found]}

    async def _expect_file(self, session: AsyncSessionHandle, step: ExpectFileStep
                           ) -> dict[str, Any]:
        expect = step.expect_file
        try:
            data = await session.get_file_bytes(expect.path)
        except SandboxFileNotFound:
            raise StepFailed(f"no file {expect.path}", ExitCode.CHECK_FAILED) from None
        if expect.contains is not None and expect.contains.encode() not in data:
            raise StepFailed(f"{expect.path} does not contain {expect.contains!r}",
                             ExitCode.CHECK_FAILED)
        return {"bytes": len(data)}

    # --- events and requests ------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        self.state.last_seq = max(self.state.last_seq, event.seq)
        if event.type == "message-created" and event.message.role == "assistant":
            self.state.turn = event.message.id
        if event.type == "turn-end":
            self.state.ended = event
        self.render.event(event)
        if self.plan.ask == "wait" and event.type in ("permission-asked", "question-asked"):
            how = ("once|always|reject" if event.type == "permission-asked" else "ANSWER")
            verb = "reply" if event.type == "permission-asked" else "answer"
            self.out.log(f"waiting for: sandbox-sessions {verb} {event.session_id} "
                         f"{event.request.id} {how}")

    async def _on_permission(self, request: PermissionRequest
                             ) -> PermissionReply | tuple[PermissionReply, str]:
        if self.plan.interactive:
            self.render.newline()
            answer = await anyio.to_thread.run_sync(
                _ask_keyboard, f"{describe_permission(request)}. Allow?",
                ["once", "always", "reject"], abandon_on_cancel=True)
            return answer  # type: ignore[return-value]
        if self.plan.ask == "fail":
            self.state.ask_failed = request
            return "reject"
        reply: PermissionReply = "once" if self.plan.ask == "once" else "reject"
        self.out.log(f"{describe_permission(request)}: answered {reply} (--ask {self.plan.ask})")
        return reply

    async def _on_question(self, request: QuestionRequest) -> str:
        if self.plan.interactive:
            self.render.newline()
            choices = request.options if request.options and not request.allow_custom else None
            answer = await anyio.to_thread.run_sync(
                _ask_keyboard, clean(request.question), choices, abandon_on_cancel=True)
            return str(answer)
        if request.allow_custom or not request.options:
            return NON_INTERACTIVE_ANSWER
        return request.options[0]

    # --- the end ------------------------------------------------------------------------------

    async def _watch_interrupt(self, work: anyio.CancelScope) -> None:
        """The first Ctrl-C cancels the work (the turn is aborted); the second leaves."""
        if sys.platform == "win32":  # pragma: no cover
            return
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                if self.state.interrupted:
                    print("sandbox-sessions: interrupted again: leaving now", file=sys.stderr)
                    os._exit(int(ExitCode.INTERRUPTED))
                self.state.interrupted = True
                print("sandbox-sessions: interrupted: aborting the turn (again to leave "
                      "at once)", file=sys.stderr, flush=True)
                work.cancel()

    async def _finish(self, code: ExitCode) -> None:
        """After the steps, whatever happened: the aborted turn's end shown, the artifacts
        downloaded, the session ended (unless `--keep`), each within `CLEANUP_SECONDS`."""
        session = self.state.session
        if session is None:
            return
        with anyio.move_on_after(CLEANUP_SECONDS):
            await self._drain(session)
        if self.plan.artifacts is not None:
            with anyio.move_on_after(CLEANUP_SECONDS * 5):
                await self._download(session, self.plan.artifacts)
        if self.plan.keep:
            self.out.log(f"kept session {session.id} (sandbox-sessions end {session.id})")
            return
        with anyio.move_on_after(CLEANUP_SECONDS), suppress(SandboxSessionsError):
            await session.end()

    async def _drain(self, session: AsyncSessionHandle) -> None:
        """Show the rest of a turn that was cancelled, up to its `turn-end` (an aborted
        turn's end is stored by the abort that `send()` made as it was cancelled)."""
        turn = self.state.turn
        if turn is None or (self.state.ended is not None
                            and self.state.ended.message_id == turn):
            return
        with suppress(SandboxSessionsError):
            async with _closing(session.events(after=self.state.last_seq)) as events:
                async for event in events:
                    self._on_event(event)
                    if event.type == "turn-end" and event.message_id == turn:
                        return

    async def _download(self, session: AsyncSessionHandle, destination: Path) -> None:
        try:
            with self.out.progress("downloading artifacts", unit="files") as update:
                download = await session.download_artifacts(
                    destination, progress=lambda _key, done, total: update(done, total))
        except SandboxSessionsError as error:
            self.out.log(f"artifacts not downloaded: {error}")
            return
        for skip in download.skipped:
            self.out.log(f"artifact skipped {clean(skip.key)}: {skip.reason}")
        got = f"{count(len(download.files), 'artifact')} ({count(download.bytes, 'byte')})"
        self.out.log(f"{got} in {destination}")
        self.state.results.append({"artifacts": download.model_dump(mode="json")})

    def _report(self, code: ExitCode, message: str) -> int:
        session = self.state.session
        self.render.newline()
        result = {"type": "run-result", "status": "passed" if code == ExitCode.OK else "failed",
                  "exit_code": int(code), "message": message,
                  "session_id": session.id if session else None, "kept": self.plan.keep,
                  "steps": self.state.results}
        if self.out.json:
            self.out.emit(result)
        elif session is not None:  # without one, the error line below says it all
            where = f" (session {session.id})"
            self.out.line(f"{'ok' if code == ExitCode.OK else 'failed'}: {message}{where}",
                          style="bold green" if code == ExitCode.OK else "bold red")
        if code != ExitCode.OK:
            print(f"sandbox-sessions: error: {message}", file=sys.stderr, flush=True)
        return int(code)


def _timeouts(permission_timeout: float | None) -> Any:
    from .._types import AgentConfig

    if permission_timeout is None:
        return None
    return AgentConfig(permission_timeout=permission_timeout, on_timeout="reject")


def _ask_keyboard(question: str, choices: list[str] | None) -> str:
    kind = click.Choice(choices) if choices else click.STRING
    return str(click.prompt(question, type=kind, err=True))


@asynccontextmanager
async def _closing(events: AsyncIterator[Event]) -> AsyncIterator[AsyncIterator[Event]]:
    try:
        yield events
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()


def glob_regex(glob: str) -> re.Pattern[str]:
    """An artifact glob as a regex: `*` and `?` stay within a folder, `**` crosses them."""
    parts: list[str] = []
    index = 0
    while index < len(glob):
        char = glob[index]
        if glob.startswith("**/", index):
            parts.append("(?:.*/)?")
            index += 3
            continue
        if glob.startswith("**", index):
            parts.append(".*")
            index += 2
            continue
        if char == "*":
            parts.append("[^/]*")
        elif char == "?":
            parts.append("[^/]")
        elif char == "[":
            end = glob.find("]", index + 1)
            if end == -1:
                parts.append(re.escape(char))
            else:
                body = glob[index + 1:end].replace("\\", "\\\\")
                parts.append(f"[^{body[1:]}]" if body.startswith("!") else f"[{body}]")
                index = end
        else:
            parts.append(re.escape(char))
        index += 1
    return re.compile("".join(parts), re.DOTALL)

