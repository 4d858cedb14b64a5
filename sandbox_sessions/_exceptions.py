"""The error tree of sandbox_sessions.

Every error the library raises is a `SandboxSessionsError`. Each carries a stable `code` (the
same string crosses HTTP later) and `retryable`, which says whether the same call may succeed
if tried again unchanged. Each class also subclasses the nearest builtin, so
`except LookupError` or `except TimeoutError` keep working.

    SandboxSessionsError                               error
    ├── InvalidArgument            (ValueError)        invalid_argument
    ├── SessionError                                   session_error
    │   ├── SessionNotFound        (LookupError)       session_not_found
    │   ├── SessionEnded           (RuntimeError)      session_ended
    │   ├── SessionBusy            (RuntimeError)      session_busy          retryable
    │   ├── PermissionNotFound     (LookupError)       permission_not_found
    │   ├── QuestionNotFound       (LookupError)       question_not_found
    │   ├── MessageNotFound        (LookupError)       message_not_found
    │   └── NotSupported           (RuntimeError)      not_supported
    ├── SandboxError                                   sandbox_error
    │   ├── SandboxUnavailable     (ConnectionError)   sandbox_unavailable   retryable
    │   ├── ContainerGone          (RuntimeError)      container_gone
    │   │   └── ContainerDied                          container_died
    │   ├── ImageNotFound          (LookupError)       image_not_found
    │   ├── ImageBuildError        (RuntimeError)      image_build_failed
    │   ├── SandboxFileNotFound    (FileNotFoundError) file_not_found
    │   ├── SandboxPermissionError (PermissionError)   permission_denied
    │   ├── FileTooLarge           (ValueError)        file_too_large
    │   ├── FileDecodeError        (ValueError)        file_not_text
    │   ├── UnsafeArchive          (ValueError)        unsafe_archive
    │   ├── SnapshotError          (RuntimeError)      snapshot_failed
    │   ├── OperationTimeout       (TimeoutError)      operation_timeout     retryable
    │   └── ProtocolError          (RuntimeError)      protocol_error
    ├── CommandError                                   command_error
    │   ├── CommandNotFound        (LookupError)       command_not_found
    │   └── CommandFailed          (RuntimeError)      command_failed
    ├── ProviderError              (RuntimeError)      provider_error        (per call)
    ├── ToolError                  (ValueError)        tool_error
    ├── StoreError                 (RuntimeError)      store_error           (per call)
    └── BridgeError                                    bridge_error
        ├── BridgeUnavailable      (ConnectionError)   bridge_unavailable    retryable
        ├── Unauthorized           (PermissionError)   unauthorized
        ├── RequestRefused         (PermissionError)   request_refused
        └── RequestTooLarge        (ValueError)        request_too_large

Across HTTP, an error travels as `{"error": {"code", "message", "retryable"}}` with a real HTTP
status (`to_wire`, `HTTP_STATUS`), and the HTTP transport raises the class of that `code`
again (`from_wire`): the same classes whichever transport carried the call.

`docker`, `requests` and `sqlite3` errors are wrapped where they are caught, with the original
as `__cause__`; none of them reaches the user.

Expected endings of a turn (an abort, a rejection, a provider failure) are `turn-end` events,
not exceptions: `ProviderError` and `ToolError` reach the user only where a provider or tool
is called directly.

A shell command that runs past its timeout is not an error: `shell()` returns a `ShellResult`
with `timed_out=True`.
"""

from __future__ import annotations

__all__ = [
    "HTTP_STATUS",
    "BridgeError",
    "BridgeUnavailable",
    "CommandError",
    "CommandFailed",
    "CommandNotFound",
    "ContainerDied",
    "ContainerGone",
    "FileDecodeError",
    "FileTooLarge",
    "ImageBuildError",
    "ImageNotFound",
    "InvalidArgument",
    "MessageNotFound",
    "NotSupported",
    "OperationTimeout",
    "PermissionNotFound",
    "ProtocolError",
    "ProviderError",
    "QuestionNotFound",
    "RequestRefused",
    "RequestTooLarge",
    "SandboxError",
    "SandboxFileNotFound",
    "SandboxPermissionError",
    "SandboxSessionsError",
    "SandboxUnavailable",
    "SessionBusy",
    "SessionEnded",
    "SessionError",
    "SessionNotFound",
    "SnapshotError",
    "StoreError",
    "ToolError",
    "Unauthorized",
    "UnsafeArchive",
    "from_wire",
    "to_wire",
]


class SandboxSessionsError(Exception):
    """The base of every error this library raises."""

    code: str = "error"
    """A stable, machine-readable name for the error."""
    retryable: bool = False
    """Whether the same call may succeed if made again unchanged."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(SandboxSessionsError, ValueError):
    """An argument is malformed or out of range. Nothing was changed."""

    code = "invalid_argument"


class SessionError(SandboxSessionsError):
    """Base of the errors about a session as a whole."""

    code = "session_error"


class SessionNotFound(SessionError, LookupError):
    """No session with that id exists in the store."""

    code = "session_not_found"

    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session with id {session_id!r}")
        self.session_id = session_id


class SessionEnded(SessionError, RuntimeError):
    """The session was ended; its container is gone and it takes no more calls."""

    code = "session_ended"

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} has ended")
        self.session_id = session_id


class SessionBusy(SessionError, RuntimeError):
    """A turn is already running in the session (in this process or another one); wait for
    its `turn-end`, or abort it. Also raised while the session is still being created."""

    code = "session_busy"
    retryable = True

    def __init__(self, session_id: str, *, reason: str = "is busy with a turn") -> None:
        super().__init__(f"session {session_id!r} {reason}")
        self.session_id = session_id


class PermissionNotFound(SessionError, LookupError):
    """No pending permission request has that id (unknown, or already answered)."""

    code = "permission_not_found"

    def __init__(self, request_id: str) -> None:
        super().__init__(f"no pending permission request {request_id!r}")
        self.request_id = request_id


class CommandError(SandboxSessionsError):
    """Base of the errors about running a command template (`run_command`)."""

    code = "command_error"


class CommandNotFound(CommandError, LookupError):
    """No command template has that name (see `list_commands()`)."""

    code = "command_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"no command template named {name!r} (see list_commands())")
        self.name = name


class CommandFailed(CommandError, RuntimeError):
    """A command template did not give its answer: a `` !`cmd` `` in it failed or timed out
    in the sandbox, or its turn ended otherwise than completed (`reason` says how)."""

    code = "command_failed"

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"command {name!r}: {reason}")
        self.name = name
        self.reason = reason


class QuestionNotFound(SessionError, LookupError):
    """No pending question has that id (unknown, answered, or timed out)."""

    code = "question_not_found"

    def __init__(self, request_id: str) -> None:
        super().__init__(f"no pending question {request_id!r}")
        self.request_id = request_id


class MessageNotFound(SessionError, LookupError):
    """The session shows no message with that id (unknown, or hidden by a revert)."""

    code = "message_not_found"

    def __init__(self, session_id: str, message_id: str) -> None:
        super().__init__(f"session {session_id!r} has no message {message_id[:80]!r}")
        self.session_id = session_id
        self.message_id = message_id


class NotSupported(SessionError, RuntimeError):
    """The session's agent cannot do that: a harness (an agent CLI in the sandbox) cannot
    revert, summarize or fork, for its CLI keeps its own history. Nothing was changed."""

    code = "not_supported"


class ProviderError(SandboxSessionsError, RuntimeError):
    """The model's API failed or answered something we cannot read.

    `status` is the HTTP status when there was one. `retryable` is true for 429, 5xx and
    connection failures: the agent loop retries those with backoff before any output arrived.
    """

    code = "provider_error"

    def __init__(
        self, message: str, *, status: int | None = None, retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class ToolError(SandboxSessionsError, ValueError):
    """A tool call that cannot be carried out as asked (bad input, no unique match, ...).

    Its message goes back to the model as the tool's error output; the turn goes on.
    """

    code = "tool_error"


class SandboxError(SandboxSessionsError):
    """Base of the errors raised by the sandbox (container) layer; raised as is for an engine
    failure that no subclass names."""

    code = "sandbox_error"


class SandboxUnavailable(SandboxError, ConnectionError):
    """The container engine does not answer (not running, or not reachable)."""

    code = "sandbox_unavailable"
    retryable = True


class ContainerGone(SandboxError, RuntimeError):
    """The session's container no longer exists, though the session was not ended."""

    code = "container_gone"


class ContainerDied(ContainerGone):
    """The session's container stopped (killed, out of memory, its main process exited) or was
    paused while a call ran. Only that call fails: the next one starts (or unpauses) the
    container again, with its files, and logs a `sandbox-restarted` event.

    `reason` says which, as far as the engine knows (`"oom-killed"`, `"exited with code 137"`,
    `"paused"`).
    """

    code = "container_died"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ImageNotFound(SandboxError, LookupError):
    """The sandbox image does not exist locally (build it with `sandbox-sessions images build`)."""

    code = "image_not_found"


class ImageBuildError(SandboxError, RuntimeError):
    """Building or bootstrapping an image failed; the message carries the builder's words."""

    code = "image_build_failed"


class SandboxFileNotFound(SandboxError, FileNotFoundError):
    """The path does not exist in the sandbox (or is not a regular file)."""

    code = "file_not_found"

    def __init__(self, path: str, detail: str = "no such file") -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path


class SandboxPermissionError(SandboxError, PermissionError):
    """The sandbox user may not read or write that path."""

    code = "permission_denied"


class FileTooLarge(SandboxError, ValueError):
    """A file or a download is larger than the cap that was asked for."""

    code = "file_too_large"


class FileDecodeError(SandboxError, ValueError):
    """A file read as text is not valid in that encoding; read it as bytes instead."""

    code = "file_not_text"


class UnsafeArchive(SandboxError, ValueError):
    """Content read out of a container tried to escape its destination or broke a cap."""

    code = "unsafe_archive"


class SnapshotError(SandboxError, RuntimeError):
    """A workspace snapshot could not be taken, read or restored: git failed in the
    container, its shadow repository lacks the snapshot, or the message has none (taken
    before snapshots, or with `AgentConfig.snapshots` off)."""

    code = "snapshot_failed"


class OperationTimeout(SandboxError, TimeoutError):
    """An operation on the sandbox (not a shell command) did not finish in time."""

    code = "operation_timeout"
    retryable = True


class ProtocolError(SandboxError, RuntimeError):
    """The in-container helper sent something that does not follow the protocol."""

    code = "protocol_error"


class StoreError(SandboxSessionsError, RuntimeError):
    """The session store could not be read or written."""

    code = "store_error"


class BridgeError(SandboxSessionsError):
    """Base of the errors of the HTTP bridge itself (not of the call it carried)."""

    code = "bridge_error"


class BridgeUnavailable(BridgeError, ConnectionError):
    """The server does not answer, or the connection broke before the call completed."""

    code = "bridge_unavailable"
    retryable = True


class Unauthorized(BridgeError, PermissionError):
    """The request carried no bearer token, or the wrong one."""

    code = "unauthorized"


class RequestRefused(BridgeError, PermissionError):
    """The server refused the request as it came: a foreign `Host` or `Origin`."""

    code = "request_refused"


class RequestTooLarge(BridgeError, ValueError):
    """A request body over the server's cap; nothing of it was read or changed."""

    code = "request_too_large"


def _tree(base: type[SandboxSessionsError]) -> list[type[SandboxSessionsError]]:
    return [base, *(cls for sub in base.__subclasses__() for cls in _tree(sub))]


_BY_CODE: dict[str, type[SandboxSessionsError]] = {cls.code: cls for cls in _tree(
    SandboxSessionsError)}

HTTP_STATUS: dict[str, int] = {
    "invalid_argument": 400, "tool_error": 400, "unsafe_archive": 400,
    "file_not_text": 400, "unauthorized": 401, "request_refused": 403,
    "permission_denied": 403, "session_not_found": 404, "permission_not_found": 404,
    "question_not_found": 404, "message_not_found": 404, "file_not_found": 404,
    "image_not_found": 404, "command_not_found": 404,
    "command_failed": 422, "snapshot_failed": 422, "session_ended": 409,
    "session_busy": 409, "not_supported": 409,
    "container_gone": 410, "container_died": 410, "file_too_large": 413,
    "request_too_large": 413, "sandbox_unavailable": 503, "store_error": 503,
    "bridge_unavailable": 503, "provider_error": 502, "operation_timeout": 504,
}
"""The HTTP status of each error code; any other code is a 500."""


_DETAILS = ("session_id", "request_id", "message_id", "path", "reason", "status", "name")
"""Attributes some errors carry beside their message; they cross HTTP under `details`."""


def to_wire(error: SandboxSessionsError) -> dict[str, dict[str, object]]:
    """The error as it crosses HTTP: `{"error": {"code", "message", "retryable"}}`, with
    `details` when the error carries any (`session_id`, `reason`, ...)."""
    body: dict[str, object] = {"code": error.code, "message": error.message,
                               "retryable": error.retryable}
    details = {name: getattr(error, name) for name in _DETAILS
               if isinstance(getattr(error, name, None), str | int)}
    if details:
        body["details"] = details
    return {"error": body}


def from_wire(body: object, *, status: int) -> SandboxSessionsError:
    """The error an HTTP error body stands for, of the class its `code` names (a body that
    is not ours gives a `BridgeError` saying what came)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        return BridgeError(f"the server answered {status} without an error of ours: "
                           f"{str(body)[:200]}")
    message = str(error.get("message", ""))
    kind = _BY_CODE.get(error["code"], SandboxSessionsError)
    made = kind.__new__(kind)  # not __init__: subclasses take their own arguments
    Exception.__init__(made, message)
    made.message = message
    made.code = error["code"]
    made.retryable = bool(error.get("retryable", kind.retryable))
    details = error.get("details")
    for name in _DETAILS:
        value = details.get(name) if isinstance(details, dict) else None
        if isinstance(value, str | int):
            setattr(made, name, value)
    return made
