"""Drive a session from Python and answer each permission request in code.

The agent (the scripted model, offline) lists the workspace, writes a note and then tries to
delete everything. The rules allow `ls`, ask about every other command, and the callback
decides: a write is allowed once, a delete is rejected with a reason the model reads (so the
turn goes on). Run it with `.venv/bin/python examples/permission_callbacks.py`.
"""

from __future__ import annotations

import sys
from typing import Any

from sandbox_sessions import PermissionReply, PermissionRequest, SandboxClient

SCRIPT: list[dict[str, Any]] = [
    {"text": "Let me look.", "tool_calls": [{"name": "bash", "input": {"command": "ls -a"}}]},
    {"text": "I'll leave a note.",
     "tool_calls": [{"name": "bash", "input": {"command": "echo tidy > notes.txt"}}]},
    {"text": "And clear the rest.",
     "tool_calls": [{"name": "bash", "input": {"command": "rm -rf /workspace/*"}}]},
    {"text": "Understood: I left the files in place."},
]


def decide(request: PermissionRequest) -> PermissionReply | tuple[PermissionReply, str]:
    """The policy: anything that deletes is refused, with a reason; the rest runs once."""
    command = request.patterns[0]
    if command.startswith("rm "):
        print(f"rejected: {command}")
        return "reject", "do not delete files in this workspace"
    print(f"allowed once: {command}")
    return "once"


def main() -> int:
    with SandboxClient() as client:
        agent = client.agent("careful", model="scripted", script=SCRIPT,
                             permissions={"bash": {"*": "ask", "ls *": "allow"}})
        with agent.create_session(title="permission callbacks") as session:
            result = session.send("Tidy the workspace", on_permission=decide,
                                  on_text=lambda text: print(text, end="", file=sys.stderr))
            print(f"\nturn ended {result.reason}: {result.text}")
            print(f"notes.txt: {session.get_file('notes.txt').strip()}")
    return 0 if result.reason == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
