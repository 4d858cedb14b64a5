"""Events as a person reads them: streamed text, tool calls with their status and output,
permission and question requests, todos, artifacts, the turn's end.

What is shown comes from the model and the container, so it is untrusted: every control
character but newline and tab (terminal escapes, carriage returns that would overwrite a
line, bells) is shown as a visible `\\xNN` escape, never sent to the terminal as is.
"""

from __future__ import annotations

import json
from typing import Any

from .._types import Event, PermissionRequest, QuestionRequest, ToolPart
from ._output import Output, clean

__all__ = ["Renderer", "describe_permission"]

OUTPUT_LINES = 8
"""Lines of a tool's output shown under it (the rest is counted)."""
LINE_WIDTH = 200


def _short(text: str, width: int = LINE_WIDTH) -> str:
    """`text` cleaned, on one line, at most `width` characters."""
    text = clean(text.strip().replace("\r\n", "\n").replace("\n", " ⏎ "))
    return text if len(text) <= width else text[: width - 1] + "…"


def summary(tool: str, data: dict[str, Any]) -> str:
    """A tool call's input in a few words: the command, the path, or compact JSON."""
    for key in ("command", "path", "pattern", "key", "description"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return _short(value, 120)
    return _short(json.dumps(data, ensure_ascii=False, sort_keys=True), 120)


def describe_permission(request: PermissionRequest) -> str:
    """`bash wants to run: rm -rf build` and the like."""
    what = ", ".join(_short(pattern, 120) for pattern in request.patterns) or "(no pattern)"
    return f"{clean(request.tool)} asks permission for: {what}"


def describe_question(request: QuestionRequest) -> str:
    options = f" [{' / '.join(_short(o, 60) for o in request.options)}]" if request.options else ""
    return f"the agent asks: {_short(request.question, 400)}{options}"


class Renderer:
    """Prints events to an `Output`: JSON lines with `--json`, else readable text."""

    def __init__(self, out: Output, *, show_prompts: bool = False) -> None:
        self.out = out
        self.show_prompts = show_prompts
        self._mid_line = False  # streamed text left the cursor inside a line
        self._last_part: str | None = None

    def event(self, event: Event) -> None:
        if self.out.json:
            self.out.emit(event)
            return
        handler = getattr(self, "_" + event.type.replace("-", "_"), None)
        if handler is not None:
            handler(event)

    def newline(self) -> None:
        """End a line that streamed text left open."""
        if self._mid_line:
            self.out.write("\n")
            self._mid_line = False

    def output(self, text: str) -> None:
        """A command's output as it streams (cleaned), on its own lines."""
        if self._last_part != "output":
            self.newline()
            self._last_part = "output"
        text = clean(text)
        self.out.write(text)
        if text:
            self._mid_line = not text.endswith("\n")

    def _line(self, text: str, style: str | None = None) -> None:
        self.newline()
        self.out.line(text, style=style)

    def _stream(self, part_id: str, delta: str, style: str | None) -> None:
        if part_id != self._last_part:
            self.newline()
            self._last_part = part_id
        text = clean(delta)
        self.out.write(text, style=style)
        if text:
            self._mid_line = not text.endswith("\n")

    def _text_delta(self, event: Any) -> None:
        self._stream(event.part_id, event.delta, None)

    def _reasoning_delta(self, event: Any) -> None:
        if self.out.rich:  # a terminal shows the thinking, dimmed; a log keeps the answer
            self._stream(event.part_id, event.delta, "dim italic")

    def _message_created(self, event: Any) -> None:
        message = event.message
        if self.show_prompts and message.role == "user":
            text = " ".join(p.text for p in message.parts if p.type == "text")
            self._line(f"> {_short(text, 400)}", "bold")

    def _tool_start(self, event: Any) -> None:
        part: ToolPart = event.part
        self._line(f"[tool] {clean(part.tool)}: {summary(part.tool, part.state.input)}", "cyan")

    def _tool_end(self, event: Any) -> None:
        part: ToolPart = event.part
        state = part.state
        if state.status == "error":
            self._line(f"[error] {clean(part.tool)}: {_short(state.error or '?', 400)}", "red")
            return
        title = f": {_short(state.title, 120)}" if state.title else ""
        self._line(f"[done] {clean(part.tool)}{title}", "green")
        lines = (state.output or "").splitlines()
        for text in lines[:OUTPUT_LINES]:
            self.out.line(f"    {_short(text)}", style="dim")
        if len(lines) > OUTPUT_LINES:
            self.out.line(f"    … {len(lines) - OUTPUT_LINES} more lines", style="dim")

    def _permission_asked(self, event: Any) -> None:
        self._line(f"[permission] {describe_permission(event.request)} "
                   f"(request {event.request.id})", "yellow")

    def _permission_replied(self, event: Any) -> None:
        why = f": {_short(event.message, 200)}" if event.message else ""
        self._line(f"[permission] answered {event.reply}{why}", "yellow")

    def _question_asked(self, event: Any) -> None:
        self._line(f"[question] {describe_question(event.request)} "
                   f"(request {event.request.id})", "yellow")

    def _question_replied(self, event: Any) -> None:
        answer = "timed out" if event.timed_out else _short(event.answer or "", 200)
        self._line(f"[question] answered: {answer}", "yellow")

    def _todo_updated(self, event: Any) -> None:
        marks = {"completed": "x", "in_progress": ">", "cancelled": "-", "pending": " "}
        self._line("[todos] " + "  ".join(f"[{marks[t.status]}] {_short(t.content, 80)}"
                                          for t in event.todos), "magenta")

    def _artifact_created(self, event: Any) -> None:
        artifact = event.artifact
        self._line(f"[artifact] {clean(artifact.key)} ({artifact.size} bytes)", "blue")

    def _retry(self, event: Any) -> None:
        self._line(f"[retry] in {event.part.delay:.1f} s: {_short(event.part.error, 200)}",
                   "yellow")

    def _compaction(self, event: Any) -> None:
        self._line("[compaction] the history was summarized", "dim")

    def _subtask(self, event: Any) -> None:
        self._line(f"[subtask] session {event.part.session_id}", "dim")

    def _sandbox_restarted(self, event: Any) -> None:
        self._line(f"[sandbox] restarted: {_short(event.reason, 200)}", "yellow")

    def _turn_end(self, event: Any) -> None:
        error = f": {_short(event.error, 400)}" if event.error else ""
        style = "green" if event.reason == "completed" else "red"
        self._line(f"[turn-end] {event.reason}{error}", style)
