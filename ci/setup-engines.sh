#!/usr/bin/env bash
# Installs and starts the container engines ckms runs on: rootless Podman (as the
# unprivileged user $CKMS_USER, default "ckms") and Docker Engine. Idempotent: safe to
# run again; it only starts what is not answering yet.
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
  if ! id "$CKMS_USER" >/dev/null 2>&1; then
    log "adding unprivileged user $CKMS_USER (with subordinate uid/gid ranges)"
    useradd --create-home --shell /usr/sbin/nologin "$CKMS_USER"
  fi
  local uid home run sock remapped=
  uid=$(id -u "$CKMS_USER"); home=$(getent passwd "$CKMS_USER" | cut -d: -f6)
  if ! grep -q "^$CKMS_USER:" /etc/subuid; then
    usermod --add-subuids 200000-265535 --add-subgids 200000-265535 "$CKMS_USER"
    remapped=1
  fi
  run=/run/user/$uid; sock=$run/podman/podman.sock
  install -d -o "$CKMS_USER" -g "$CKMS_USER" -m 0700 "$run" "$run/podman"
  # crun fails on this kind of machine (cgroups hybrid, rlimits): runc + cgroupfs + file events.
  install -d -o "$CKMS_USER" -g "$CKMS_USER" "$home/.config" "$home/.config/containers"
  cat >"$home/.config/containers/containers.conf" <<CONF
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
  # Native rootless overlay (kernel >= 5.13): without this setting Podman 4.3 may fall back to
  # vfs, which stores every layer as a full copy (GBs per builder image, slow loads).
  printf '[storage]\ndriver = "overlay"\n' >"$home/.config/containers/storage.conf"
  chown "$CKMS_USER:" "$home/.config/containers/containers.conf" "$home/.config/containers/storage.conf"
  # Storage written under other subordinate ids (or with vfs) is unusable: files show up as
  # nobody:nogroup. Start it afresh.
  if [ -n "$remapped" ] || [ -d "$home/.local/share/containers/storage/vfs" ]; then
    log "resetting $CKMS_USER's Podman storage (new id mapping or vfs driver; removes its images)"
    (cd / && runuser -u "$CKMS_USER" -- env XDG_RUNTIME_DIR="$run" HOME="$home" podman system reset -f >/dev/null 2>&1) || true
  fi
  if curl -fsS --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; then
    log "podman already answers on $sock"; return
  fi
  log "starting rootless podman system service as $CKMS_USER on $sock"
  # setsid -f: the service outlives this script and holds none of its file descriptors.
  (cd / && setsid -f runuser -u "$CKMS_USER" -- env XDG_RUNTIME_DIR="$run" HOME="$home" \
      podman system service --time=0 "unix://$sock" </dev/null >>"$run/podman-service.log" 2>&1)
  wait_for_socket "$sock" "rootless podman" || { cat "$run/podman-service.log" >&2; return 1; }
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
