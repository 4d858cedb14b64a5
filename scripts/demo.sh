#!/usr/bin/env bash
# Set everything up, then run the main job: examples/build_artifact.py builds a small app in a
# sandboxed session and downloads its artifacts to ./out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SANDBOX_SESSIONS_DB="${SANDBOX_SESSIONS_DB:-$PWD/.state/sessions.db}"
.venv/bin/python examples/build_artifact.py out
