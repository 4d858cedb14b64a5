#!/usr/bin/env bash
# Set up (engine, venv, image), then run the linters, the type checker and the whole test
# suite, Docker and model tests included: without an engine or the served model they fail
# here, they never skip.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SANDBOX_SESSIONS_REQUIRE_DOCKER=1
export SANDBOX_SESSIONS_REQUIRE_MODEL=1
echo "test: ruff" >&2
.venv/bin/ruff check .
echo "test: mypy --strict" >&2
.venv/bin/mypy
echo "test: pytest" >&2
.venv/bin/pytest --durations=25 "$@"
