#!/usr/bin/env bash
# Installs and starts the container engines ckms runs on: rootless Podman (as the
# unprivileged user $CKMS_USER, default "ckms", set up by src/hooks/setup-engine, which the
# ckms Debian package runs too) and Docker Engine. Idempotent: safe to run again; it only
# starts what is not answering yet.
# Prints nothing but progress; the sockets are:
#   podman: unix:///run/user/<uid of $CKMS_USER>/podman/podman.sock
#   docker: unix:///var/run/docker.sock
set -euo pipefail

CKMS_USER=${CKMS_USER:-ckms}
ENGINES=${CKMS_ENGINES:-podman docker}
log() { printf '[setup-engines] %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "setup-engines: run as root (it installs packages and adds the user $CKMS_USER)" >&2; exit 1; }

need=()
for want in $ENGINES; do
  case $want in
    podman) command -v podman >/dev/null && command -v runc >/dev/null && command -v newuidmap >/dev/null \
              || need+=(podman runc uidmap slirp4netns) ;;
    docker) command -v dockerd >/dev/null || need+=(docker.io) ;;
  esac
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # docker.io's postinst tries to start a service; there is no init here, which is fine.
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

wait_for_socket() { # path, what
  for _ in $(seq 1 100); do
    curl -fsS --unix-socket "$1" http://d/_ping >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "setup-engines: $2 did not answer on $1; see its log above" >&2
  return 1
}

start_podman() {
  # The same setup the ckms package's postinst does (/usr/lib/ckms/setup-engine).
  CKMS_USER=$CKMS_USER bash "$(dirname "$0")/../src/hooks/setup-engine"
}

start_docker() {
  local sock=/var/run/docker.sock
  if curl -fsS --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; then
    log "docker already answers on $sock"; return
  fi
  log "starting dockerd on $sock"
  mkdir -p /var/log/ckms
  (cd / && setsid -f dockerd -H "unix://$sock" </dev/null >/var/log/ckms/dockerd.log 2>&1)
  wait_for_socket "$sock" "dockerd" || { tail -20 /var/log/ckms/dockerd.log >&2; return 1; }
}

for want in $ENGINES; do "start_$want"; done
log "engines ready: $ENGINES"
