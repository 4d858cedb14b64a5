"""Run a command template: a prompt kept in a Markdown file, filled in from the sandbox.

Templates are found in `.sandbox-sessions/commands/` of the current folder (and in the user's
`~/.config/sandbox-sessions/commands/`); this example runs from its own folder, so it finds
`examples/.sandbox-sessions/commands/review.md`:

    Review @$1 for $2. It has !`wc -l < $1` lines. Answer in one sentence.

`@$1` inlines the sandbox file named by the first argument, `$2` is the second argument, and
`` !`wc -l < $1` `` runs in the sandbox (the argument goes in quoted). The same from the CLI:
`sandbox-sessions command run SESSION review greet.py "error handling"`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sandbox_sessions import SandboxClient

HERE = Path(__file__).resolve().parent


def main() -> int:
    os.chdir(HERE)  # where .sandbox-sessions/commands/ is
    with SandboxClient() as client:
        agent = client.agent("reviewer", model="scripted",
                             script=[{"text": "greet() is small and needs no error handling."}])
        with agent.create_session(title="command template") as session:
            session.put_file("greet.py", (HERE / "task_project" / "greet.py").read_text())
            for template in session.list_commands():
                print(f"command {template.name}: {template.description}", file=sys.stderr)
            answer = session.run_command("review", ["greet.py", "error handling"])
            prompt = session.get_messages()[0]
            print("prompt:", " ".join(p.text for p in prompt.parts if p.type == "text"))
            print("answer:", answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
