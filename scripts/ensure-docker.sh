#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine.
#
# Where none does and we are root on Debian or Ubuntu, install Debian's docker.io and start
# dockerd in the background, then wait for its socket. Elsewhere, fail with what to do.
# Logs go to stderr; exit 0 means `docker info` answers.
set -euo pipefail

log() { printf 'ensure-docker: %s\n' "$*" >&2; }
engine_up() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_up; then
  log "engine already answers"
  exit 0
fi

if [ "$(id -u)" != 0 ] || [ ! -f /etc/debian_version ]; then
  log "no Docker engine answers. Start one (e.g. 'sudo systemctl start docker'), or run this script as root on Debian/Ubuntu to install docker.io."
  exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
  log "installing docker.io from the Debian archive"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq docker.io >&2
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
  log "starting dockerd in the background (log: /var/log/dockerd.log)"
  nohup dockerd >/var/log/dockerd.log 2>&1 &
fi

for _ in $(seq 1 120); do
  if engine_up; then
    log "engine is up"
    exit 0
  fi
  sleep 0.5
done
log "dockerd did not answer within 60 s; see /var/log/dockerd.log"
exit 1
