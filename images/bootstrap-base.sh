#!/usr/bin/env bash
# Bootstrap the sandbox's base image without any registry: debootstrap a minimal Debian
# bookworm root filesystem, trim it, and `docker import` it.
#
# Usage: bootstrap-base.sh [--tag TAG] [--mirror URL] [--force] [TAG]
#
#   --tag TAG     the image to create (default: sandbox-sessions/base:bookworm)
#   --mirror URL  the Debian mirror to bootstrap from (default: $SANDBOX_SESSIONS_DEBIAN_MIRROR,
#                 else the mirror this host's apt already uses)
#   --force       bootstrap again even when TAG already exists
#
# Exits 0 at once when TAG exists (unless --force). Needs root, the docker CLI and a reachable
# Debian mirror; installs debootstrap with apt-get when it is missing. Logs go to stderr.
set -euo pipefail

SUITE=bookworm
TAG=sandbox-sessions/base:bookworm
MIRROR=${SANDBOX_SESSIONS_DEBIAN_MIRROR:-}
FORCE=0
PACKAGES=bash,coreutils,git,python3,python3-venv,python-is-python3,ripgrep,grep,ca-certificates,procps

log() { printf 'bootstrap-base: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,13s/^# \{0,1\}//p' "$0" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --tag) [ $# -ge 2 ] || die "--tag needs a value"; TAG=$2; shift 2 ;;
    --tag=*) TAG=${1#--tag=}; shift ;;
    --mirror) [ $# -ge 2 ] || die "--mirror needs a value"; MIRROR=$2; shift 2 ;;
    --mirror=*) MIRROR=${1#--mirror=}; shift ;;
    --force) FORCE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) usage; die "unknown option: $1" ;;
    *) TAG=$1; shift ;;
  esac
done

command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed"
image_exists() { docker image inspect "$TAG" >/dev/null 2>&1; }

if [ "$FORCE" = 0 ] && image_exists; then
  log "$TAG already exists (use --force to bootstrap it again)"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "debootstrap needs root: run this script as root (e.g. with sudo)"

# The mirror of the main archive that this host's apt uses: deb822 sources first (the stanza
# whose Suites name $SUITE itself, not -security or -updates), then one-line sources.
host_mirror() {
  local file
  for file in /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] || continue
    awk -v suite="$SUITE" '
      function flush() { if (deb && match_suite && uri != "") { print uri; found = 1; exit } }
      /^[ \t]*$/ { flush(); deb = 0; match_suite = 0; uri = ""; next }
      /^[ \t]*#/ { next }
      tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
      tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) match_suite = 1 }
      tolower($1) == "uris:" { uri = $2 }
      END { if (!found) flush() }
    ' "$file"
  done
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$file" ] || continue
    # deb [options] URL suite components...
    sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$file" |
      awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2 }'
  done
}

if [ -z "$MIRROR" ]; then
  MIRROR=$(host_mirror | awk 'NR == 1')
fi
[ -n "$MIRROR" ] || die "no Debian mirror found in /etc/apt; set SANDBOX_SESSIONS_DEBIAN_MIRROR"

if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends debootstrap >&2
fi

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/sandbox-sessions-base.XXXXXX")
ROOTFS=$WORK/rootfs

# debootstrap mounts proc, sys and (in a container) binds /dev nodes into the rootfs; a
# failure can leave them mounted. Unmount them, deepest first, before removing anything, and
# never let rm cross into another filesystem.
cleanup() {
  local mounts
  mounts=$(awk -v root="$WORK/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r)
  if [ -n "$mounts" ]; then
    printf '%s\n' "$mounts" | while IFS= read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done
  fi
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
# Make INT and TERM exit through the EXIT trap, so that an interrupted bootstrap cleans up too.
trap 'exit 130' INT
trap 'exit 143' TERM

started=$SECONDS
log "debootstrap $SUITE from $MIRROR into $ROOTFS"
if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >&2; then
  if [ -f "$ROOTFS/debootstrap/debootstrap.log" ]; then
    log "the end of debootstrap.log:"
    tail -n 15 "$ROOTFS/debootstrap/debootstrap.log" >&2
  fi
  die "debootstrap from $MIRROR failed"
fi

log "trimming the root filesystem"
# Keep later installs (if any) as small: no docs, man pages or translations.
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/sandbox-sessions-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
EOF
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin \
  "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/debconf/*-old \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
  "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/* "$ROOTFS"/debootstrap
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 \
  ! -name 'C' ! -name 'C.*' ! -name locale.alias -exec rm -rf {} +
find "$ROOTFS/usr/lib/locale" -mindepth 1 -maxdepth 1 \
  ! -name 'C' ! -name 'C.*' -exec rm -rf {} + 2>/dev/null || true
# An empty machine-id: each container gets its own, not this build's.
: >"$ROOTFS/etc/machine-id"

log "importing the root filesystem as $TAG"
tar --numeric-owner --xattrs -C "$ROOTFS" -c . |
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'LABEL sandbox-sessions.image=base' \
    --change 'CMD ["/bin/bash"]' \
    - "$TAG" >&2 \
  || die "docker import of $TAG failed"

log "built $TAG in $((SECONDS - started)) s"
