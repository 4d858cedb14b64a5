"""Build something in a sandboxed session and bring the artifact home.

A small Python app is written into the session's container, its tests run there, it is
packed into a zipapp under /artifacts, and every artifact is downloaded to ./out (or the
folder given as the first argument). Run it with `bash scripts/demo.sh` on a fresh machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sandbox_sessions import SandboxClient

APP = '''\
def greet(name: str) -> str:
    return f"hello, {name}"


def main() -> None:
    import sys
    print(greet(sys.argv[1] if len(sys.argv) > 1 else "world"))
'''

TEST = '''\
import unittest
from app import greet


class GreetTest(unittest.TestCase):
    def test_greet(self) -> None:
        self.assertEqual(greet("ci"), "hello, ci")


if __name__ == "__main__":
    unittest.main()
'''

BUILD = """
set -eu
python3 -m unittest -v test_app
mkdir -p /artifacts/dist
mkdir -p build && cp app.py build/ && printf 'import app\\napp.main()\\n' > build/__main__.py
python3 -m zipapp build -o /artifacts/dist/greet.pyz -p '/usr/bin/env python3'
python3 /artifacts/dist/greet.pyz sandbox | tee /artifacts/report.txt
"""


def log(text: str) -> None:
    print(text, end="", file=sys.stderr, flush=True)


def main() -> int:
    destination = Path(sys.argv[1] if len(sys.argv) > 1 else "out")
    with SandboxClient() as client, client.agent("build").create_session(title="demo") as session:
        print(f"session {session.id} is ready", file=sys.stderr)
        session.put_file("app.py", APP)
        session.put_file("test_app.py", TEST)
        result = session.shell(BUILD, timeout=120, on_stderr=log)
        if not result.ok:
            print(f"build failed with exit code {result.exit_code}", file=sys.stderr)
            return 1
        for artifact in session.list_artifacts():
            print(f"artifact {artifact.key} ({artifact.size} bytes)", file=sys.stderr)
        download = session.download_artifacts(
            destination, progress=lambda key, n, total: log(f"[{n}/{total}] {key}\n")
        )
        print(f"report: {session.get_artifact('report.txt').strip()}")
    print(f"downloaded {len(download.files)} artifacts to {download.destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
