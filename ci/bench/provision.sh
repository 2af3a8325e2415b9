#!/usr/bin/env bash
# Benchmarks builder-image provisioning on this machine and prints one line per figure:
#   1. cold: empty cache, image absent from the engine -> image loaded (downloads included)
#   2. warm re-run of the same build (target: under 3 s, nothing downloaded)
#   3. a second kernel of the same release: bytes downloaded, layers shared
#   4. mmdebstrap unpacking the same package set from the same mirror (cold), for comparison
# usage: ci/bench/provision.sh [KERNEL] [SECOND_KERNEL]     (run as root; engines via ci/setup-engines.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
k1=${1:-6.1.0-56-amd64}
k2=${2:-6.1.0-55-amd64}
bash ci/setup-engines.sh >/dev/null
command -v jq >/dev/null && command -v bc >/dev/null && command -v mmdebstrap >/dev/null \
  || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq bc mmdebstrap >/dev/null
cargo build --release --quiet
ckms=$PWD/target/release/ckms
work=$(mktemp -d /var/tmp/ckms-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
export CKMS_CACHE_DIR=$work/cache

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }

"$ckms" image rm "$k1" "$k2" >/dev/null 2>&1 || true
t0=$(now); "$ckms" --json image build -k "$k1" >"$work/cold.json"; t1=$(now)
echo "cold provision $k1: $(secs "$t0" "$t1") s, $(jq -r 'select(.event=="result").result[0] | "\(.fetch.downloaded) packages, \(.fetch.downloaded_bytes) bytes downloaded"' "$work/cold.json")"

for i in 1 2 3; do
  t0=$(now); "$ckms" --json image build -k "$k1" >"$work/warm.json"; t1=$(now)
  echo "warm re-run $i: $(secs "$t0" "$t1") s, $(jq -r 'select(.event=="result").result[0] | "\(.fetch.downloaded_bytes) bytes downloaded, loaded=\(.loaded)"' "$work/warm.json")"
done

t0=$(now); "$ckms" --json image build -k "$k2" >"$work/second.json"; t1=$(now)
echo "second kernel $k2: $(secs "$t0" "$t1") s, $(jq -r 'select(.event=="result").result[0] | "\(.fetch.downloaded) packages, \(.fetch.downloaded_bytes) bytes downloaded, \(.layers_built) layer(s) written"' "$work/second.json")"
ref1=$(jq -r 'select(.event=="result").result[0].reference' "$work/cold.json")
ref2=$(jq -r 'select(.event=="result").result[0].reference' "$work/second.json")
uid=$(id -u "${CKMS_USER:-ckms}")
for ref in "$ref1" "$ref2"; do
  echo "layers of $ref:"
  curl -fsS --unix-socket "/run/user/$uid/podman/podman.sock" "http://d/images/$ref/json" | jq -r '.RootFS.Layers[]' | sed 's/^/  /'
done

# mmdebstrap: same packages (from the lock ckms recorded), same mirrors (the host's apt sources).
pkgs=$(jq -r 'select(.event=="result").result[0].id' "$work/cold.json" | sed 's/^sha256://')
pkgs=$(jq -r '[.lock.layers[].packages[].name] | join(",")' "$CKMS_CACHE_DIR/images/$pkgs.json")
sources=$(ls /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
echo "mmdebstrap: $(echo "$pkgs" | tr ',' '\n' | wc -l) packages from $sources"
t0=$(now)
mmdebstrap --quiet --variant=extract --include="$pkgs" bookworm "$work/rootfs.tar" "$sources" >/dev/null 2>"$work/mmdebstrap.log" \
  || { tail "$work/mmdebstrap.log"; exit 1; }
t1=$(now)
echo "mmdebstrap --variant=extract cold (same packages unpacked, no maintainer scripts, like ckms; to a rootfs tarball, not loaded into any engine): $(secs "$t0" "$t1") s"
