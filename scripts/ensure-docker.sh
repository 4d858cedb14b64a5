#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine.
#
# Where none does and we are root on Debian or Ubuntu, install Debian's docker.io and start
# dockerd in the background, then wait for its socket. Elsewhere, fail with what to do.
#
# An engine we start ourselves keeps its data on a btrfs filesystem (a sparse loop file,
# mounted with `discard=async`, so freed space goes back to the host), so that each session's
# writable space can be capped: btrfs is the storage driver that honours `--storage-opt size`
# on a kernel without XFS or ext4 quota support, as this one is. Where that cannot be set up
# (no loop device, no btrfs in the kernel, SANDBOX_SESSIONS_DOCKER_PLAIN=1, or an
# /etc/docker/daemon.json of the user's), dockerd starts with its defaults and the library caps
# sessions with size-limited tmpfs mounts instead (docs/security.md). An engine that already
# answers is left as it is.
#
# Logs go to stderr; exit 0 means `docker info` answers.
set -euo pipefail

log() { printf 'ensure-docker: %s\n' "$*" >&2; }
engine_up() { docker info >/dev/null 2>&1; }

STATE=/var/lib/sandbox-sessions
IMAGE_FILE=$STATE/docker-btrfs.img
DATA_ROOT=$STATE/docker

if command -v docker >/dev/null 2>&1 && engine_up; then
  log "engine already answers"
  exit 0
fi

if [ "$(id -u)" != 0 ] || [ ! -f /etc/debian_version ]; then
  log "no Docker engine answers. Start one (e.g. 'sudo systemctl start docker'), or run this script as root on Debian/Ubuntu to install docker.io."
  exit 1
fi

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "$@" >&2 || { apt-get update -qq >&2 && apt-get install -y -qq "$@" >&2; }
}

if ! command -v dockerd >/dev/null 2>&1; then
  log "installing docker.io from the Debian archive"
  apt_install docker.io
fi

# Turn on btrfs quotas: "simple" quotas (kernel 6.7+), which count what each container writes
# and cost little; else full qgroups, which count shared data too and make every container
# create and remove several times slower. Debian 12's btrfs-progs predates simple quotas, so
# the ioctl is made directly (BTRFS_IOC_QUOTA_CTL; ENABLE_SIMPLE_QUOTA = 4, ENABLE = 1).
# Enabling quotas that are already on changes nothing.
enable_quotas() {
  python3 - "$1" <<'PY' >&2 || log "btrfs quotas could not be enabled: sessions get tmpfs caps"
import fcntl, os, struct, sys
QUOTA_CTL = (3 << 30) | (16 << 16) | (0x94 << 8) | 40
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    fcntl.ioctl(fd, QUOTA_CTL, bytearray(struct.pack("QQ", 4, 0)))
except OSError:
    fcntl.ioctl(fd, QUOTA_CTL, bytearray(struct.pack("QQ", 1, 0)))
    print("ensure-docker: simple btrfs quotas unsupported here; using full qgroups (slower)")
PY
}

# A btrfs data root for dockerd; prints the dockerd options that use it, or nothing.
btrfs_data_root() {
  [ "${SANDBOX_SESSIONS_DOCKER_PLAIN:-0}" = 1 ] && return 0
  [ -f /etc/docker/daemon.json ] && { log "keeping the storage set in /etc/docker/daemon.json"; return 0; }
  grep -qw btrfs /proc/filesystems || { log "no btrfs in this kernel: default storage"; return 0; }
  if ! mountpoint -q "$DATA_ROOT"; then
    command -v mkfs.btrfs >/dev/null 2>&1 || apt_install btrfs-progs || return 0
    mkdir -p "$STATE" "$DATA_ROOT"
    if [ ! -f "$IMAGE_FILE" ]; then
      # Sparse: it takes only what is written. At most 3/4 of the free space, so the engine
      # (and every session in it) fills this file, never the host's disk.
      local free_kb size_gb
      free_kb=$(df -Pk "$STATE" | awk 'NR==2 {print $4}')
      size_gb=$(( free_kb * 3 / 4 / 1024 / 1024 ))
      [ "$size_gb" -gt 128 ] && size_gb=128
      if [ "$size_gb" -lt 8 ]; then
        log "only ${size_gb} GiB free: default storage"
        return 0
      fi
      log "making a ${size_gb} GiB btrfs data root for dockerd in $IMAGE_FILE"
      truncate -s "${size_gb}G" "$IMAGE_FILE"
      mkfs.btrfs -q "$IMAGE_FILE" >/dev/null || { rm -f "$IMAGE_FILE"; return 0; }
    fi
    mount -o loop,discard=async "$IMAGE_FILE" "$DATA_ROOT" >&2 || { log "cannot mount $IMAGE_FILE: default storage"; return 0; }
  fi
  enable_quotas "$DATA_ROOT"
  echo "--data-root $DATA_ROOT --storage-driver btrfs"
}

if ! pgrep -x dockerd >/dev/null 2>&1; then
  options=$(btrfs_data_root)
  log "starting dockerd ${options:+($options) }in the background (log: /var/log/dockerd.log)"
  # shellcheck disable=SC2086 # the options are words
  nohup dockerd $options >/var/log/dockerd.log 2>&1 &
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
