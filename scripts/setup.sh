#!/usr/bin/env bash
# Set up a fresh machine: a Docker engine, the virtualenv (.venv) with the project and its
# development tools, and the sandbox image (built offline). Safe to run again: each step
# skips what is already done. Logs go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-docker.sh

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  python3 -m venv .venv
fi
echo "setup: installing the project and its dev tools into .venv" >&2
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]" >&2

echo "setup: building the sandbox image (bootstraps a Debian base the first time, ~1 min)" >&2
.venv/bin/sandbox-sessions images build >&2
