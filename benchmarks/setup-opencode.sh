#!/bin/sh
# Install opencode (the npm package opencode-ai) for bench_bridge.py, into
# benchmarks/.opencode/ (git-ignored), from npm's configured registry. The benchmark's own
# set-up: the project never needs opencode at run time.
#
#     sh benchmarks/setup-opencode.sh            # the version the figures were taken with
#     OPENCODE_VERSION=latest sh benchmarks/setup-opencode.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
version=${OPENCODE_VERSION:-1.18.33}
mkdir -p "$here/.opencode"
npm install --prefix "$here/.opencode" --no-audit --no-fund "opencode-ai@$version"
"$here/.opencode/node_modules/.bin/opencode" --version
