#!/usr/bin/env bash
# Set up (engine, venv, image), then run the linters, the type checker and the whole test
# suite, Docker and model tests included: without an engine or the served model they fail
# here, they never skip.
#
# The whole suite runs as two pytest processes at once, each with a temp folder of its own:
# the files that mostly wait (fifty sessions made and ended twenty times, deadlines of wedged
# helpers, the real model, the CLI's subprocesses, the model proxy, the agent CLIs in their
# containers) beside everything else,
# which keeps the run well under half an hour on two cores. The library is built for that: processes sharing one engine (and even
# one store) is what parallel CI jobs do. With arguments, one pytest runs them as given.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SANDBOX_SESSIONS_REQUIRE_DOCKER=1
export SANDBOX_SESSIONS_REQUIRE_MODEL=1
echo "test: ruff" >&2
.venv/bin/ruff check .
echo "test: mypy --strict" >&2
.venv/bin/mypy
if [ $# -gt 0 ]; then
  echo "test: pytest $*" >&2
  exec .venv/bin/pytest --durations=25 "$@"
fi

waiting=(tests/test_concurrency.py tests/test_deadlines.py tests/test_real_model.py
         tests/test_cli.py tests/test_cli_run.py tests/test_model_proxy.py
         tests/test_harness_claude.py tests/test_harness_codex.py tests/test_harness_opencode.py)
mkdir -p .state
log=.state/pytest-waiting.log
echo "test: pytest, in two processes: ${waiting[*]} (output in $log, shown at the end), and the rest" >&2
# A job started with `&` in a script ignores SIGINT, and its children inherit that; the CLI's
# tests send SIGINT to the CLI as Ctrl-C does, so the job gets the default disposition back.
.venv/bin/python -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execv(sys.argv[1], sys.argv[1:])' \
  .venv/bin/pytest --durations=10 --basetemp=.state/pytest-waiting "${waiting[@]}" > "$log" 2>&1 &
waiting_pid=$!
rest_status=0
.venv/bin/pytest --durations=25 --basetemp=.state/pytest-rest \
  $(printf -- '--ignore=%s ' "${waiting[@]}") || rest_status=$?
waiting_status=0
wait "$waiting_pid" || waiting_status=$?
echo "test: pytest ${waiting[*]}:" >&2
cat "$log"
if [ "$rest_status" -ne 0 ] || [ "$waiting_status" -ne 0 ]; then
  echo "test: failed (pytest exit codes: $rest_status for the rest, $waiting_status for ${waiting[*]})" >&2
  exit 1
fi
echo "test: all passed" >&2
