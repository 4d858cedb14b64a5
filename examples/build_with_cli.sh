#!/usr/bin/env bash
# Build the example project in a sandboxed session with the CLI, offline (the scripted model),
# and bring the zipapp home to ./out (or the folder given as the first argument).
#
# The project folder is uploaded (.gitignore respected), the agent writes a test and an entry
# point, and its bash call, which ci-permissions.yaml says to ask about, is allowed by
# `--ask once`. `--json` prints one event per line; the last line is the run's result.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(realpath -m "${1:-out}")"
sandbox-sessions run "Add a test and an entry point, test the app, and pack it as a zipapp" \
  --agent build --script "$here/build_model.yaml" \
  --upload "$here/task_project:/workspace" \
  --permissions "$here/ci-permissions.yaml" --ask once \
  --artifacts "$out" --timeout 10m
python3 "$out/dist/greet.pyz" ci
