#!/usr/bin/env bash
# Two ckms binaries (an older one and this change's) on the same machine in the same run, for a
# change that must not move keys, speed or memory:
#   reuse  a store filled by OLD (ci/bench/farm-matrix.sh with CKMS_BENCH_BIN=OLD) read by NEW for
#          bookworm's *-dkms x 6.1.0-56-amd64, on each engine: pairs built now (must be 0) and the
#          containers the engine created meanwhile (its own event log; must be 0);
#   warm   the whole matrix of farm-matrix.sh again on that store, OLD and NEW interleaved: wall
#          time and peak RSS (/usr/bin/time);
#   pair   one small pair (gost-crypto-dkms on 6.1.0-56-amd64) in a new store, OLD and NEW
#          interleaved: the pair's wall time beyond make (its record), and the command's.
# usage: ci/bench/before-after.sh OLD NEW [reuse|warm|pair|all] [RUNS]
# Env: STORE (default /var/tmp/ckms-matrix/store, as farm-matrix.sh fills it), CKMS_TEST_CACHE.
# Run as root after ci/setup-engines.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
old=${1:?usage: before-after.sh OLD NEW [part] [runs]} new=${2:?NEW binary}
part=${3:-all} runs=${4:-5}
store=${STORE:-/var/tmp/ckms-matrix/store}
cache=${CKMS_TEST_CACHE:-$PWD/target/ckms-test-cache}
user=${CKMS_USER:-ckms}
uid=$(id -u "$user")
podman=unix:///run/user/$uid/podman/podman.sock docker=unix:///var/run/docker.sock
work=$(mktemp -d /var/tmp/ckms-before-after.XXXXXX)
trap 'rm -rf "$work"' EXIT
[[ -x /usr/bin/time ]] || apt-get install -y -q time >/dev/null

# The module sources of a profile, as farm-matrix.sh lists them (deb:NAME).
corpus() {
  "$new" --cache-dir "$cache" --json packages --profile "$1" --dkms -- '-dkms$' | python3 -c 'import json,sys
for line in sys.stdin:
    doc = json.loads(line)
    if doc.get("event") == "result":
        for p in doc["result"]["packages"]: print("deb:" + p["name"])'
}
mapfile -t bookworm < <(corpus debian-bookworm)
mapfile -t all < <({ corpus debian-bookworm; corpus debian-trixie; } | sort -u)
created() { # ENGINE SINCE UNTIL: containers the engine created in that time (Podman's log has no --until)
  if [[ $1 == podman ]]; then
    (cd / && runuser -u "$user" -- env XDG_RUNTIME_DIR="/run/user/$uid" HOME="$(getent passwd "$user" | cut -d: -f6)" \
      podman events --since "$2" --stream=false --filter type=container --filter event=create --format '{{.ID}}' | wc -l)
  else
    docker -H "$docker" events --since "$2" --until "$3" --filter type=container --filter event=create \
      --format '{{.ID}}' | wc -l
  fi
}
result() { python3 -c 'import json,sys
for line in open(sys.argv[1]):
    doc = json.loads(line)
    if doc.get("event") == "result": print(doc["result"][sys.argv[2]])' "$@"; }

if [[ $part == all || $part == reuse ]]; then
  for e in podman docker; do
    endpoint=$podman; [[ $e == docker ]] && endpoint=$docker
    rm -rf "$work/reuse"; cp -a "$store" "$work/reuse"
    since=$(date +%s)
    "$new" --engine "$endpoint" --cache-dir "$cache" --json farm build --store "$work/reuse" \
      -k 6.1.0-56-amd64 "${bookworm[@]}" >"$work/reuse.jsonl" 2>/dev/null || true
    sleep 2
    echo "reuse on $e: ${#bookworm[@]} pairs, built now $(result "$work/reuse.jsonl" built_now)," \
      "containers created $(created "$e" "$since" "$(date +%s)")"
  done
fi
if [[ $part == all || $part == warm ]]; then
  args=(farm build --store "$store" -k 6.1.0-56-amd64 -k 6.12.118+deb12-amd64 -k 6.12.118+deb13-amd64 "${all[@]}")
  for i in $(seq "$runs"); do
    for side in old new; do
      bin=$old; [[ $side == new ]] && bin=$new
      sync; sleep 2
      /usr/bin/time -f "warm $side %e s %M KB" -o "$work/t" "$bin" --engine "$podman" --cache-dir "$cache" --json \
        "${args[@]}" >/dev/null 2>&1 || true
      cat "$work/t" | tail -n1
    done
  done
fi
if [[ $part == all || $part == pair ]]; then
  for i in $(seq "$runs"); do
    for side in old new; do
      bin=$old; [[ $side == new ]] && bin=$new
      rm -rf "$work/pair"
      /usr/bin/time -f "%e %M" -o "$work/t" "$bin" --engine "$podman" --cache-dir "$cache" --json farm build \
        --store "$work/pair" -k 6.1.0-56-amd64 deb:gost-crypto-dkms >/dev/null 2>&1 || true
      read -r wall rss < <(tail -n1 "$work/t")
      python3 - "$work/pair" "$side" "$wall" "$rss" <<'EOF'
import glob, json, sys
for f in glob.glob(sys.argv[1] + "/pairs/*/result.json"):
    r = json.load(open(f))
    make = r.get("make_seconds") or 0
    print("pair %s: beyond make %.3f s (make %.2f s), command %s s, %s KB" % (sys.argv[2], r["seconds"] - make, make, sys.argv[3], sys.argv[4]))
EOF
    done
  done
fi
