"""Every type that crosses a boundary: results, session info, options.

This module is the one home of the wire and store types, so that the client, the service, the
store and (later) the HTTP server share them. What we emit is frozen and forbids extra fields.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "AGENTS_IMAGE",
    "DEFAULT_DISK",
    "DEFAULT_IMAGE",
    "DEFAULT_MAX_OUTPUT",
    "DEFAULT_MAX_READ",
    "MIN_DISK",
    "AgentDefinition",
    "ArtifactDownload",
    "ArtifactEntry",
    "ArtifactInfo",
    "CommandArguments",
    "CommandCall",
    "CommandTemplate",
    "CreateSessionRequest",
    "FileContent",
    "HarnessName",
    "Metadata",
    "PathEntries",
    "PermissionAnswerRequest",
    "SandboxOptions",
    "SessionInfo",
    "SessionStatus",
    "ShellChunk",
    "ShellCommand",
    "ShellDone",
    "ShellOutput",
    "ShellResult",
    "SkippedArtifact",
    "SkippedPath",
    "Subagent",
    "SubagentLike",
    "Todo",
    "TurnRequest",
    "TurnStarted",
    "UpdateSessionRequest",
    "UploadResult",
]

DEFAULT_IMAGE = "sandbox-sessions/sandbox:latest"
"""The image that `sandbox-sessions images build` builds and sessions use by default."""
AGENTS_IMAGE = "sandbox-sessions/agents:latest"
"""The sandbox image plus agent CLIs, that `sandbox-sessions images build --with` builds."""

FileContent = str | bytes | bytearray | memoryview
"""What `put_file` takes: text (written as UTF-8) or bytes-like content."""

DEFAULT_MAX_OUTPUT = 1024 * 1024
"""Bytes of stdout, and separately of stderr, that `shell()` keeps by default (1 MiB each)."""

DEFAULT_MAX_READ = 64 * 1024 * 1024
"""Largest file that `get_file()`, `get_file_bytes()` and the artifact reads take into memory
by default (64 MiB); pass `max_bytes=` for more, or use `download_artifacts()`."""

DEFAULT_DISK = "4g"
"""Writable space of a session's container by default (4 GiB); see `SandboxOptions.disk`."""

MIN_DISK = 16 * 1024 * 1024
"""The smallest `disk` a session may ask for (16 MiB): below it the engine refuses to start
the container, or the session has no room for its own workings (git snapshots, temp files)."""

_SIZE = re.compile(r"(\d+(?:\.\d+)?) ?([kmgtp]?)(?:i?b)?", re.IGNORECASE)


def size_in_bytes(text: str) -> int:
    """Bytes in a size written in Docker's notation (`"512m"`, `"4g"`, `"1.5GiB"`, `"300M"`);
    units are binary. `ValueError` for anything else."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size (use Docker's notation: 512m, 4g, 300M)")
    number, unit = match.groups()
    return int(float(number) * 1024 ** "_kmgtp".index(unit.lower() or "_"))


class _Frozen(BaseModel):
    """Immutable, and refusing unknown fields: what we emit."""

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True, extra="forbid")


MAX_CPUS = 4096
"""Most cores a container may be given (more is no machine's: the engine's own limit, in
nano-CPUs, would overflow long before)."""
MAX_MEMORY = 1 << 60
"""Largest memory limit accepted (the engine's counts are 64-bit)."""
MAX_PIDS = 1 << 22
"""Most processes a container may be allowed: Linux's own highest `pid_max`."""


class SandboxOptions(_Frozen):
    """How a session's container is made. Every field has a safe default."""

    image: str = DEFAULT_IMAGE
    """The image to run; it must exist locally."""
    network: bool = False
    """Give the container a network (Docker's default bridge). Off by default: `none`."""
    memory: str = "1g"
    """Memory limit, in Docker's notation (`"512m"`, `"2g"`)."""
    cpus: float = Field(default=1.0, gt=0, le=MAX_CPUS)
    """CPU limit, in cores."""
    pids: int = Field(default=512, gt=0, le=MAX_PIDS)
    """Most processes the container may hold at once."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment of the container, and so of every command run in it."""
    workdir: str = "/workspace"
    """Default working folder of shell commands."""
    user: str = "1000:1000"
    """The user commands run as; never root unless asked for."""
    disk: str | None = DEFAULT_DISK
    """Writable space of the container, in Docker's notation (`"4g"`, `"500m"`); at least
    16 MiB. Writing past it fails inside the container with `ENOSPC` or `EDQUOT`, never on the
    host. Where the engine's storage can cap a container (btrfs, zfs, overlay2 on XFS with
    project quotas) the whole writable layer is capped; elsewhere the root filesystem is
    read-only and the workdir, `/artifacts`, `/tmp` and the user's home are tmpfs mounts of
    this size each, whose data is held in (and counted against) `memory` and lost when the
    container stops (see docs/decisions.md). `None` sets no limit at all: unsafe, as a
    session can then fill the engine's disk."""

    @field_validator("memory")
    @classmethod
    def _memory_is_a_size(cls, value: str) -> str:
        if not 0 < size_in_bytes(value) <= MAX_MEMORY:
            raise ValueError(f"memory {value!r} is not between 1 byte and 1 EiB")
        return value

    @field_validator("disk")
    @classmethod
    def _disk_is_a_size(cls, value: str | None) -> str | None:
        if value is not None and size_in_bytes(value) < MIN_DISK:
            raise ValueError(f"disk {value!r} is below the minimum of 16m")
        return value

    @property
    def disk_bytes(self) -> int | None:
        """`disk` in bytes; None for no limit."""
        return None if self.disk is None else size_in_bytes(self.disk)


SessionStatus = Literal["creating", "idle", "busy", "compacting", "error", "ended"]
"""`creating` until the session's container is up (not usable yet, not listed by default);
`busy` while a turn runs; `ended` for good."""
PermissionAction = Literal["allow", "ask", "deny"]
PermissionRules = dict[str, PermissionAction | dict[str, PermissionAction]]
"""Per tool (`"*"` for all): an action, or glob patterns to actions. The last match wins."""


HarnessName = Literal["builtin", "claude-code", "codex", "opencode"]
"""What runs an agent's turns: our loop, or an agent CLI inside the sandbox."""


class AgentConfig(_Frozen):
    """How a session's agent behaves; stored with the session, so it resumes unchanged."""

    model: str | None = None
    """`provider/model`: `openai/gpt-4.1`, `anthropic/claude-sonnet-4-5`, or `scripted`."""
    harness: HarnessName = "builtin"
    """What runs the turns: our loop on the host (`builtin`), or that agent CLI inside the
    sandbox, its model reached through the proxy with the key kept on the host."""
    system: str | None = None
    tools: list[str] = Field(
        default_factory=lambda: ["bash", "read", "write", "edit", "list", "glob", "grep",
                                 "todowrite", "artifact"])
    permissions: PermissionRules = Field(default_factory=dict)
    """The session's rules; `always` replies add to them."""
    script: list[dict[str, Any]] | str | None = None
    """For `scripted`: the entries, or the path of a JSON or YAML file holding them."""
    base_url: str | None = None
    """The provider's API address (OpenAI-compatible servers, proxies)."""
    max_steps: int = Field(default=50, gt=0)
    """Model calls in one turn; a turn that would make one more ends with reason `limit`."""
    token_budget: int | None = Field(default=None, gt=0)
    """Tokens (`Tokens.total`) the session's turns may use in all; a turn that has reached it
    makes no further model call and ends with reason `limit`. `get_info().tokens` is the
    session's usage so far."""
    permission_timeout: float | None = None
    """Seconds a permission request may wait for a reply; None waits for ever."""
    on_timeout: Literal["reject", "allow"] = "reject"
    """What an unanswered request becomes when `permission_timeout` passes (for headless CI)."""
    question_timeout: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """Seconds a question (the `question` tool) may wait for an answer; None waits for ever."""
    on_question_timeout: Literal["error", "first"] = "error"
    """When `question_timeout` passes: the call fails (the model reads that nobody answered),
    or the first option is the answer (`first`; a question without options fails)."""
    context_limit: int | None = Field(default=None, gt=0)
    """Tokens of the model's context window. A turn whose last answer's prompt reached
    `COMPACT_AT` of it is preceded by a compaction (`summarize()`). None: the model's known
    window (see `agent/_compaction.py`), and no automatic compaction for a model not known."""
    max_tool_output: int = Field(default=30_000, gt=0)
    """Characters of a tool's output sent to the model; the whole output stays in the part."""
    tool_timeout: float = Field(default=120.0, gt=0)
    """Default time limit of a bash tool call, in seconds."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Provider-specific extras, passed through (e.g. Anthropic's `thinking`)."""
    subagents: dict[str, Subagent] = Field(default_factory=dict)
    """Agents the `task` tool may hand work to, by name; each runs in a child session of
    its own (its own container)."""
    max_depth: int = Field(default=2, ge=0)
    """How deep child sessions may nest: a session at this depth cannot start a subtask."""
    snapshots: bool = True
    """Snapshot the workspace at each user message and after each step's tool calls (what
    `revert()`, `diff()` and forking at a message need). Each snapshot is a `git add` in a
    shadow repository inside the container: off, turns skip that cost."""
    snapshot_max_file: int = Field(default=2 * 1024 * 1024, gt=0)
    """Bytes above which a file is left out of snapshots (a revert leaves it as it is, and
    says so in `RevertInfo.skipped`)."""


class Subagent(_Frozen):
    """An agent the `task` tool can start in a child session: its config and sandbox."""

    config: AgentConfig
    sandbox: SandboxOptions = Field(default_factory=lambda: SandboxOptions())
    description: str = ""
    """Shown to the model in the `task` tool's description."""


AgentConfig.model_rebuild()


@runtime_checkable
class AgentDefinition(Protocol):
    """What a subagent is made from: an `agent()` of either client (its config and sandbox)."""

    @property
    def config(self) -> AgentConfig: ...

    @property
    def sandbox(self) -> SandboxOptions: ...


SubagentLike = Subagent | AgentDefinition
"""A subagent as `agent(subagents=...)` takes it: a `Subagent`, or an `agent()`."""


MAX_METADATA_KEYS = 64
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 1024
_METADATA_KEY = re.compile(r"[A-Za-z0-9_.:/-]+")


def _check_metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_METADATA_KEYS:
        raise ValueError(f"at most {MAX_METADATA_KEYS} keys")
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY or not _METADATA_KEY.fullmatch(key):
            raise ValueError(f"key {key[:80]!r}: 1 to {MAX_METADATA_KEY} of letters, digits, "
                             "'_', '.', ':', '/', '-'")
        if len(item) > MAX_METADATA_VALUE or "\x00" in item:
            raise ValueError(f"value of {key!r}: at most {MAX_METADATA_VALUE} characters, "
                             "no NUL")
    return value


Metadata = Annotated[dict[str, str], AfterValidator(_check_metadata)]
"""A session's labels for its owner (`{"ci": "123"}`): at most 64 keys of letters, digits
and `_.:/-` (64 at most), values of at most 1024 characters."""


class SessionInfo(_Frozen):
    """What is known of a session without touching its container."""

    id: str
    title: str
    agent: str
    status: SessionStatus
    time_created: datetime
    time_updated: datetime
    container_id: str | None = None
    sandbox: SandboxOptions
    config: AgentConfig = Field(default_factory=AgentConfig)
    archived: bool = False
    """Hidden from `list_sessions()` unless asked for; the session stays usable."""
    pinned: bool = False
    metadata: Metadata = Field(default_factory=dict)
    parent_id: str | None = None
    """The session this one was forked from, or whose `task` call made it (see
    `children()`)."""
    depth: int = 0
    """0, or one more than its parent's for a subtask's child session."""
    tokens: Tokens = Field(default_factory=lambda: Tokens())
    """What the session's ended turns used in all (see `AgentConfig.token_budget`)."""
    cost: float = 0.0
    """What they cost, in USD."""


class ShellResult(_Frozen):
    """The outcome of one shell command.

    `exit_code` is the command's exit status, or 128 + N when signal N ended it. A command
    stopped by its timeout has `timed_out=True` and `exit_code` 124, as with `timeout(1)`.
    `truncated` is true when stdout or stderr went past `max_output` and the rest was dropped.
    """

    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool = False
    truncated: bool = False
    duration: float
    """Seconds from the start of the command to its end, measured in the container."""

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0 and did not time out."""
        return self.exit_code == 0 and not self.timed_out


class Todo(_Frozen):
    """One entry of the agent's todo list."""

    id: str
    content: str
    status: Literal["pending", "in_progress", "completed", "cancelled"] = "pending"
    priority: Literal["high", "medium", "low"] = "medium"


class ArtifactInfo(_Frozen):
    """One artifact: a regular file under `/artifacts`, keyed by its path relative to it."""

    key: str
    size: int


class SkippedArtifact(_Frozen):
    """An entry of `/artifacts` that a download refused to write, and why."""

    key: str
    reason: str


class ArtifactDownload(_Frozen):
    """What `download_artifacts()` (or `download()` of a sandbox path) wrote on the host."""

    destination: str
    files: list[str]
    """Keys written, each under `destination` (for `download()`: paths relative to the path
    downloaded, or the file's name)."""
    bytes: int
    skipped: list[SkippedArtifact] = Field(default_factory=list)
    """Links, special files and unsafe names that were not written."""


class SkippedPath(_Frozen):
    """An entry of an upload's source that was not sent, and why."""

    path: str
    """Relative to the source folder (`/`-separated, shown escaped if not UTF-8)."""
    reason: str


class UploadResult(_Frozen):
    """What `upload()` put in the sandbox."""

    destination: str
    """The sandbox folder the source was unpacked in (absolute)."""
    files: list[str]
    """The regular files sent, relative to `destination` (not-UTF-8 bytes shown escaped)."""
    bytes: int
    """Their bytes in all."""
    skipped: list[SkippedPath] = Field(default_factory=list)
    """Links, special files and files that could not be read whole, not sent."""
    ignored: int = 0
    """Entries left out on purpose: those `.gitignore` files ignore, and `.git` folders."""


# --- messages and parts (opencode's session model) -------------------------------------------


class Tokens(_Frozen):
    """Token counts; `+` adds two of them."""

    input: int = 0
    output: int = 0
    reasoning: int = 0
    cache_read: int = 0
    cache_write: int = 0

    @property
    def total(self) -> int:
        """Every token counted once: the whole prompt and the output (reasoning is part of
        `output`)."""
        return self.input + self.cache_read + self.cache_write + self.output

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(input=self.input + other.input, output=self.output + other.output,
                      reasoning=self.reasoning + other.reasoning,
                      cache_read=self.cache_read + other.cache_read,
                      cache_write=self.cache_write + other.cache_write)


class TextPart(_Frozen):
    """Text of a message."""

    type: Literal["text"] = "text"
    id: str
    text: str


class ReasoningPart(_Frozen):
    """The model's reasoning; `signature` where the provider signs it."""

    type: Literal["reasoning"] = "reasoning"
    id: str
    text: str
    signature: str | None = None


class FilePart(_Frozen):
    """A file attached to a message."""

    type: Literal["file"] = "file"
    id: str
    path: str
    mime: str = "application/octet-stream"


class ToolState(_Frozen):
    """A tool call's state: pending, then running, then completed or error."""

    status: Literal["pending", "running", "completed", "error"]
    input: dict[str, Any] = Field(default_factory=dict)
    output: str | None = None
    """The whole output; the model got at most `AgentConfig.max_tool_output` characters."""
    error: str | None = None
    title: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    time_start: float | None = None
    time_end: float | None = None


class ToolPart(_Frozen):
    """One tool call and its state."""

    type: Literal["tool"] = "tool"
    id: str
    tool: str
    call_id: str
    state: ToolState


class StepStartPart(_Frozen):
    """Where a step (one model call) began."""

    type: Literal["step-start"] = "step-start"
    id: str


class StepFinishPart(_Frozen):
    """Where a step ended: why, and what it cost."""

    type: Literal["step-finish"] = "step-finish"
    id: str
    reason: str
    tokens: Tokens = Field(default_factory=Tokens)
    cost: float = 0.0
    snapshot: str | None = None
    """The workspace as the step's model call left it, before its tool calls ran (a tree of
    the shadow repository); None for a step that called no tool, or when snapshots are off
    or failed."""


class SnapshotPart(_Frozen):
    """The workspace's state when a user message was sent: a tree of the session's shadow
    repository (see `AsyncSessionHandle.revert`)."""

    type: Literal["snapshot"] = "snapshot"
    id: str
    snapshot: str


class PatchPart(_Frozen):
    """The files a step's tool calls changed (created, modified or deleted), against the
    snapshot `hash` taken before they ran."""

    type: Literal["patch"] = "patch"
    id: str
    hash: str
    files: list[str] = Field(default_factory=list)
    truncated: bool = False
    """More files changed than are listed."""


class FileDiff(_Frozen):
    """One file that differs between two states of the workspace."""

    path: str
    status: Literal["added", "modified", "deleted"]
    additions: int = 0
    """Lines added (0 for a binary file)."""
    deletions: int = 0
    """Lines removed (0 for a binary file)."""


class RevertInfo(_Frozen):
    """A revert: the conversation back to before `message_id`, the workspace back to
    `snapshot`."""

    message_id: str
    """The user message reverted to: it and every later message are hidden."""
    snapshot: str
    """The workspace's state restored (the message's `SnapshotPart`)."""
    before: str
    """The workspace's state before the revert, which `unrevert()` restores."""
    files: list[FileDiff] = Field(default_factory=list)
    """What the revert changed in the workspace, as a diff from `before` to `snapshot`."""
    skipped: list[str] = Field(default_factory=list)
    """Files left as they are: over the snapshot size limit (`AgentConfig.snapshot_max_file`)
    and so never snapshotted."""


class SubtaskPart(_Frozen):
    """Work delegated to another agent, with its prompt."""

    type: Literal["subtask"] = "subtask"
    id: str
    agent: str
    prompt: str
    description: str = ""
    session_id: str | None = None
    """The child session doing the work."""


class AgentPart(_Frozen):
    """An agent taking over the message (work delegated to a named agent)."""

    type: Literal["agent"] = "agent"
    id: str
    name: str


class RetryPart(_Frozen):
    """A retried model call: the attempt, the error, the delay."""

    type: Literal["retry"] = "retry"
    id: str
    attempt: int
    error: str
    delay: float


class CompactionPart(_Frozen):
    """The point where the history before it was compacted into `summary`."""

    type: Literal["compaction"] = "compaction"
    id: str
    summary: str = ""


Part = Annotated[
    TextPart | ReasoningPart | FilePart | ToolPart | StepStartPart | StepFinishPart
    | SnapshotPart | PatchPart | SubtaskPart | AgentPart | RetryPart | CompactionPart,
    Field(discriminator="type"),
]


CommandArguments = str | list[str] | dict[str, str] | None
"""A command template's arguments: a string (split into `$1`... as a shell would), words, or
named values (`$name`)."""


class CommandCall(_Frozen):
    """The command template a user message was made from, with its arguments as given."""

    name: str
    arguments: CommandArguments = None
    subtask: str | None = None
    """Set for a `subtask: true` template: the agent that ran the prompt in a child session
    (one of the session's subagents, or its own agent), whose answer is the turn's."""


class CommandTemplate(_Frozen):
    """A prompt template run by name (`run_command`); see `list_commands()`."""

    name: str
    template: str
    """The body, with its placeholders (`$ARGUMENTS`, `$1`, `$name`, `` !`cmd` ``, `@path`)."""
    description: str | None = None
    agent: str | None = None
    """The agent the command is for: running it in another agent's session is refused."""
    model: str | None = None
    """The model of the command's turn, instead of the session's."""
    subtask: bool = False
    """Run the prompt in a child session (of the template's `agent`, one of the session's
    subagents, or by default the session's own agent) and answer with its final text: the
    work and its context stay out of the session's history."""
    source: str | None = None
    """The file it was read from; None when it was registered in code."""


class UserMessage(_Frozen):
    """What the user sent: its text parts."""

    role: Literal["user"] = "user"
    id: str
    session_id: str
    time_created: float
    parts: list[Part] = Field(default_factory=list)
    command: CommandCall | None = None
    """The command template the prompt was made from, if any."""


class AssistantMessage(_Frozen):
    """The agent's answer to one user message: its parts, tokens, cost and how it ended."""

    role: Literal["assistant"] = "assistant"
    id: str
    session_id: str
    parent_id: str
    """The user message this answers."""
    model: str
    time_created: float
    time_completed: float | None = None
    tokens: Tokens = Field(default_factory=Tokens)
    cost: float = 0.0
    finish_reason: str | None = None
    error: str | None = None
    parts: list[Part] = Field(default_factory=list)
    summary: bool = False
    """A compaction's summary (`summarize()`): later turns send it instead of the history
    before it, once it holds a `compaction` part."""
    conversation_id: str | None = None
    """For a harness: the CLI's own conversation (Claude Code's session, Codex's thread,
    opencode's session) this turn ran in, which the next turn continues."""


Message = Annotated[UserMessage | AssistantMessage, Field(discriminator="role")]


class PermissionRequest(_Frozen):
    """A tool call waiting for a reply: `once`, `always` or `reject`."""

    id: str
    session_id: str
    message_id: str
    call_id: str
    tool: str
    patterns: list[str]
    """What the rules matched: the command line, or the path as written and, when it differs,
    as the container resolves it (links followed)."""
    always: list[str]
    """The patterns an `always` reply adds to the session's rules."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    time: float


class QuestionRequest(_Frozen):
    """The agent's question to the user (its `question` tool), waiting for an answer."""

    id: str
    session_id: str
    message_id: str
    call_id: str
    question: str
    options: list[str] = Field(default_factory=list)
    allow_custom: bool = True
    """Whether an answer other than one of `options` is taken (always, without options)."""
    time: float


PermissionReply = Literal["once", "always", "reject"]
TurnEndReason = Literal["completed", "aborted", "error", "rejected", "limit"]


# --- events: the session's log ---------------------------------------------------------------


class EventBase(_Frozen):
    """Fields every event carries."""

    session_id: str
    seq: int
    """Monotonic within the session, from 1, with no gaps. SSE `id:`."""
    time: float
    """Unix time, in seconds."""


class MessageCreatedEvent(EventBase):
    """A user or assistant message began (a user message carries its text)."""

    type: Literal["message-created"] = "message-created"
    message: Message


class MessageUpdatedEvent(EventBase):
    """An assistant message's header changed: tokens, cost, finish reason, completion."""

    type: Literal["message-updated"] = "message-updated"
    message: Message


class TextDeltaEvent(EventBase):
    """A piece of the answer's text; pieces of one part share `part_id`."""

    type: Literal["text-delta"] = "text-delta"
    message_id: str
    part_id: str
    delta: str


class ReasoningDeltaEvent(EventBase):
    """A piece of the model's reasoning; `signature` where the provider signs it."""

    type: Literal["reasoning-delta"] = "reasoning-delta"
    message_id: str
    part_id: str
    delta: str
    signature: str | None = None


class ToolStartEvent(EventBase):
    """The model called a tool (state `pending`)."""

    type: Literal["tool-start"] = "tool-start"
    message_id: str
    part: ToolPart


class ToolRunningEvent(EventBase):
    """The call was allowed and runs (state `running`)."""

    type: Literal["tool-running"] = "tool-running"
    message_id: str
    part: ToolPart


class ToolEndEvent(EventBase):
    """The call ended (state `completed` or `error`)."""

    type: Literal["tool-end"] = "tool-end"
    message_id: str
    part: ToolPart


class StepStartEvent(EventBase):
    """A model call (a step of the turn) began."""

    type: Literal["step-start"] = "step-start"
    message_id: str
    part: StepStartPart


class StepFinishEvent(EventBase):
    """A model call ended, with its tokens and cost."""

    type: Literal["step-finish"] = "step-finish"
    message_id: str
    part: StepFinishPart


class RetryEvent(EventBase):
    """A failed model call is retried after `part.delay` seconds."""

    type: Literal["retry"] = "retry"
    message_id: str
    part: RetryPart


class PermissionAskedEvent(EventBase):
    """A tool call waits for a reply: `once`, `always` or `reject`."""

    type: Literal["permission-asked"] = "permission-asked"
    request: PermissionRequest


class PermissionRepliedEvent(EventBase):
    """A permission request was answered, or timed out."""

    type: Literal["permission-replied"] = "permission-replied"
    request_id: str
    reply: PermissionReply | Literal["timeout"]
    message: str | None = None


class CompactionEvent(EventBase):
    """A summary was made: the history before `message_id` is sent as `part.summary`."""

    type: Literal["compaction"] = "compaction"
    message_id: str
    part: CompactionPart


class SnapshotEvent(EventBase):
    """The workspace was snapshotted for the user message `message_id` (taken while the
    turn's first model call runs, and before any of its tools)."""

    type: Literal["snapshot"] = "snapshot"
    message_id: str
    part: SnapshotPart


class PatchEvent(EventBase):
    """A step's tool calls changed files in the workspace (`part.files`)."""

    type: Literal["patch"] = "patch"
    message_id: str
    part: PatchPart


class RevertedEvent(EventBase):
    """The session was reverted: `revert.message_id` and what follows it are hidden from
    `get_messages()` and the model, and the workspace is back to `revert.snapshot`. The
    hidden messages stay in the log; `unrevert()` brings them back until a new message is
    sent."""

    type: Literal["reverted"] = "reverted"
    revert: RevertInfo


class UnrevertedEvent(EventBase):
    """The last revert was undone: its messages are back, and the workspace is as it was
    before it (`snapshot`)."""

    type: Literal["unreverted"] = "unreverted"
    message_id: str
    snapshot: str


class MessagesHiddenEvent(EventBase):
    """An import hid these messages (`message_ids`, given before it) as a committed revert
    would: they stay in the log, out of `get_messages()` and of what the model is sent, and
    `unrevert()` cannot bring them back. It carries an exported branch into a new session."""

    type: Literal["messages-hidden"] = "messages-hidden"
    message_ids: list[str]


class SubtaskEvent(EventBase):
    """A `task` call started a child session (`part.session_id`)."""

    type: Literal["subtask"] = "subtask"
    message_id: str
    part: SubtaskPart


class QuestionAskedEvent(EventBase):
    """The agent asks the user a question; the turn waits for `reply_to_question()`."""

    type: Literal["question-asked"] = "question-asked"
    request: QuestionRequest


class QuestionRepliedEvent(EventBase):
    """A question was answered (`answer`), or timed out (`timed_out`, and `answer` is what
    the timeout policy gave, None when the call failed instead)."""

    type: Literal["question-replied"] = "question-replied"
    request_id: str
    answer: str | None = None
    timed_out: bool = False


class TodoUpdatedEvent(EventBase):
    """The agent's todo list changed (the whole new list)."""

    type: Literal["todo-updated"] = "todo-updated"
    todos: list[Todo]


class ArtifactCreatedEvent(EventBase):
    """The agent saved an artifact under `/artifacts`."""

    type: Literal["artifact-created"] = "artifact-created"
    artifact: ArtifactInfo


class SessionStatusEvent(EventBase):
    """The session became `busy` (a turn started) or `idle` again."""

    type: Literal["session-status"] = "session-status"
    status: SessionStatus


class SessionUpdatedEvent(EventBase):
    """The session's record changed (title, rules after an `always`)."""

    type: Literal["session-updated"] = "session-updated"
    config: AgentConfig
    title: str
    archived: bool = False
    pinned: bool = False
    metadata: dict[str, str] = Field(default_factory=dict)


class ShellRunEvent(EventBase):
    """A direct `shell()` command ran (not a tool call)."""

    type: Literal["shell-run"] = "shell-run"
    command: str
    exit_code: int
    timed_out: bool
    duration: float


class SandboxRestartedEvent(EventBase):
    """The session's container was found stopped (or paused) and runs again, files intact.

    `reason` says how it was found: `"exited with code 137 (killed)"`, `"oom-killed"`,
    `"paused"`... The call that was running when it stopped got `ContainerDied`; processes
    that ran in it are gone (except after a pause).
    """

    type: Literal["sandbox-restarted"] = "sandbox-restarted"
    reason: str


class TurnEndEvent(EventBase):
    """The one terminal event of every turn."""

    type: Literal["turn-end"] = "turn-end"
    message_id: str
    """The assistant message of the turn."""
    reason: TurnEndReason
    error: str | None = None


class ResetEvent(EventBase):
    """What a reader had of the session is replaced by this state, as of this event's `seq`;
    the events after `seq` follow.

    Sent only to a reader resuming (`events(after=...)`, SSE `Last-Event-ID`, a global cursor)
    from inside a run of text or reasoning deltas that the store has folded since into one
    event (the deltas of a session's turns are folded once a later turn ends): resuming there
    exactly would give part of that text twice. Never stored; a resume from 0 or from any
    other seq gets none.
    """

    type: Literal["reset"] = "reset"
    messages: list[Message]
    """Every message of the session with its parts, as of `seq`."""
    todos: list[Todo]
    """The todo list as of `seq`."""


Event = Annotated[
    MessageCreatedEvent | MessageUpdatedEvent | TextDeltaEvent | ReasoningDeltaEvent
    | ToolStartEvent | ToolRunningEvent | ToolEndEvent | StepStartEvent | StepFinishEvent
    | RetryEvent | CompactionEvent | SubtaskEvent | SnapshotEvent | PatchEvent | RevertedEvent
    | UnrevertedEvent | MessagesHiddenEvent | PermissionAskedEvent
    | PermissionRepliedEvent
    | QuestionAskedEvent
    | QuestionRepliedEvent | TodoUpdatedEvent
    | ArtifactCreatedEvent | SessionStatusEvent | SessionUpdatedEvent | ShellRunEvent
    | SandboxRestartedEvent | TurnEndEvent | ResetEvent,
    Field(discriminator="type"),
]


# --- results ---------------------------------------------------------------------------------


class SendResult(_Frozen):
    """The outcome of one turn, as `send()` returns it."""

    message_id: str
    text: str
    """The assistant's final text: the text parts of its last step."""
    parts: list[Part]
    tokens: Tokens
    cost: float
    reason: TurnEndReason
    error: str | None = None


class Metrics(_Frozen):
    """What a session's log adds up to: counts, per-tool usage, tokens and cost."""

    messages: int
    steps: int
    tool_calls: int
    tool_usage: dict[str, int]
    tokens: Tokens
    cost: float
    subtask_tokens: Tokens = Field(default_factory=lambda: Tokens())
    """What the session's child sessions (subtasks, and theirs in turn) used: not in
    `tokens`, which counts this session's own model calls; `get_info().tokens` has both."""
    subtask_cost: float = 0.0


# --- requests: what a transport carries to the service ---------------------------------------


class _Request(BaseModel):
    """What a caller sends: strict (no `"5"` for a number), frozen, no unknown fields."""

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True, extra="forbid", strict=True)


class CreateSessionRequest(_Request):
    """A session to create: the agent's name and config, and the sandbox it runs in."""

    agent: str
    title: str | None = None
    sandbox: SandboxOptions = Field(default_factory=SandboxOptions)
    config: AgentConfig = Field(default_factory=AgentConfig)
    metadata: Metadata = Field(default_factory=dict)
    parent_id: str | None = None


class UpdateSessionRequest(_Request):
    """What `update()` changes; fields left None stay as they are."""

    title: str | None = None
    permissions: PermissionRules | None = None
    archived: bool | None = None
    pinned: bool | None = None
    metadata: Metadata | None = None
    """Replaces the whole metadata."""


class ShellCommand(_Request):
    """One shell command: see `AsyncSessionHandle.shell` for each field's meaning."""

    command: str
    timeout: float | None = None
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    max_output: int = DEFAULT_MAX_OUTPUT


class TurnRequest(_Request):
    """A prompt that starts a turn: with `model`, the turn's model instead of the session's;
    `command` records the template the prompt was made from."""

    prompt: str
    model: str | None = None
    command: CommandCall | None = None


class ImportMessagesRequest(BaseModel):
    """Messages of an exported history to append to a session (`import_session`)."""

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True, extra="forbid")
    messages: list[Message]
    hidden: list[str] = Field(default_factory=list)
    """Ids of given messages to hide again (a revert's dead branch in the export), each with
    its answers; they are imported, in order, then hidden for good."""


class ImportedMessages(_Frozen):
    """How many messages an import added."""

    imported: int


class RevertRequest(_Request):
    """Which user message to revert the session to."""

    message_id: str


class QuestionAnswerRequest(_Request):
    """An answer to a pending question."""

    answer: str


class PermissionAnswerRequest(_Request):
    """A reply to a pending permission request."""

    reply: PermissionReply
    message: str | None = None


# --- what the service streams back ------------------------------------------------------------


class ShellOutput(_Frozen):
    """A piece of a running command's output, decoded, as it arrives."""

    type: Literal["output"] = "output"
    stream: Literal["stdout", "stderr"]
    text: str


class ShellDone(_Frozen):
    """The end of a streamed command: its result."""

    type: Literal["result"] = "result"
    result: ShellResult


ShellChunk = Annotated[ShellOutput | ShellDone, Field(discriminator="type")]
"""One line of a streamed command: output as it comes, then exactly one result."""


class ArtifactEntry(_Frozen):
    """One entry under `/artifacts`, for a download: `refused` says why it is not copied
    (an unsafe or non-UTF-8 name, shown escaped in `key`)."""

    key: str
    kind: Literal["file", "dir", "link", "other"]
    size: int
    refused: str | None = None


class PathEntries(_Frozen):
    """A sandbox path, for a download: a folder and every entry below it (keys relative to
    it), or a regular file as one entry named after it."""

    path: str
    """The path, absolute."""
    kind: Literal["file", "dir"]
    entries: list[ArtifactEntry]


class TurnStarted(_Frozen):
    """A turn just started: its events are those of the session after seq `after`; it ends
    with the `turn-end` whose `message_id` is `message_id`."""

    user_message_id: str
    message_id: str
    after: int
