#!/usr/bin/env bash
# Set everything up, then run the main job: a scripted agent task (examples/task.yaml) in a
# fresh session, offline. The project folder is uploaded, the agent's tool calls write files
# and run the tests in the container (a call the rules ask about, answered by policy with
# `--ask once`), a shell step packs the app, the checks pass, and the artifact is downloaded
# to ./out and run here. Progress and logs go to stderr; at the end it says how to see the
# session in the viewer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SANDBOX_SESSIONS_DB="${SANDBOX_SESSIONS_DB:-$PWD/.state/sessions.db}"
cli=.venv/bin/sandbox-sessions

echo "demo: running examples/task.yaml in a fresh session" >&2
"$cli" run --task examples/task.yaml --ask once --artifacts out
echo "demo: the artifact, run on this machine:" >&2
python3 out/dist/greet.pyz demo

session=$("$cli" --json sessions list --all | .venv/bin/python -c \
  'import json, sys; print(json.loads(sys.stdin.readline())["id"])')
cat >&2 <<EOF
demo: done. To see the session in the viewer, start the server:
  SANDBOX_SESSIONS_DB=$SANDBOX_SESSIONS_DB $cli serve
then open http://127.0.0.1:4096/viewer/#$session and log in with the token in the file it
names. Its events as JSON lines: $cli sessions events $session --json
EOF
