#!/usr/bin/env bash
# Peak RSS and wall time of the commands that load Debian's repository indexes, warm cache
# (the first, untimed pass fills it and builds the image), one line per command:
#   1. ckms kernels                      (every profile's index, one after the other)
#   2. ckms kernels --profile debian-bookworm
#   3. ckms image build -k KERNEL        (up to date: index load, resolution, engine check)
#   4. two profiles' indexes held at once, three kernels planned (benches/index_memory.rs:
#      what the prebuild farm does in one process)
#   5. ckms image run --src DIR          (a 64 MB source directory uploaded into a build: streamed
#      from disk, so the peak should not grow with it; the command removes it before /build comes
#      back)
# Wall times move with the machine's load; peak RSS does not.
# usage: ci/bench/memory.sh [RUNS]
# env: CKMS_CACHE_DIR (default: a fresh directory), ENGINE (default unix:///var/run/docker.sock),
#      CKMS_BIN / INDEX_MEMORY_BIN (binaries to measure instead of this tree's release builds),
#      KERNELS (default "6.1.0-56-amd64 6.12.117+deb12-amd64 6.12.117+deb13-amd64")
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
engine=${ENGINE:-unix:///var/run/docker.sock}
read -r -a kernels <<<"${KERNELS:-6.1.0-56-amd64 6.12.117+deb12-amd64 6.12.117+deb13-amd64}"
[ -x /usr/bin/time ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
if [ -z "${CKMS_BIN:-}" ]; then
  cargo build --quiet --release
  CKMS_BIN=$PWD/target/release/ckms
fi
if [ -z "${INDEX_MEMORY_BIN:-}" ]; then
  INDEX_MEMORY_BIN=$(cargo bench --quiet --bench index_memory --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*index_memory[^"]*\)".*/\1/p' | tail -1)
fi
work=$(mktemp -d /var/tmp/ckms-mem.XXXXXX)
trap 'rm -rf "$work"' EXIT
export CKMS_CACHE_DIR=${CKMS_CACHE_DIR:-$work/cache}

# One command, RUNS times: the median wall time and the highest peak RSS.
measure() {
  local label=$1; shift
  local walls=() peak=0
  for _ in $(seq "$runs"); do
    /usr/bin/time -f '%e %M' -o "$work/t" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
    read -r wall rss <"$work/t"
    walls+=("$wall")
    [ "$rss" -gt "$peak" ] && peak=$rss
  done
  local median
  median=$(printf '%s\n' "${walls[@]}" | sort -n | sed -n "$(( (runs + 1) / 2 ))p")
  printf '%-60s peak RSS %6.1f MB   wall %5.2f s (median of %d: %s)\n' "$label" "$(echo "$peak / 1024" | bc -l)" \
    "$median" "$runs" "$(printf '%s ' "${walls[@]}")"
}

# Fill the cache and the engine (untimed).
"$CKMS_BIN" kernels >/dev/null
"$CKMS_BIN" --engine "$engine" image build -k "${kernels[0]}" >/dev/null

measure "ckms kernels" "$CKMS_BIN" kernels
measure "ckms kernels --profile debian-bookworm" "$CKMS_BIN" kernels --profile debian-bookworm
measure "ckms image build -k ${kernels[0]} (up to date)" "$CKMS_BIN" --engine "$engine" image build -k "${kernels[0]}"
measure "bookworm + trixie indexes, ${#kernels[@]} kernels planned" \
  "$INDEX_MEMORY_BIN" debian-bookworm debian-trixie -- "${kernels[@]}"

src=$work/src
mkdir -p "$src/big"
for i in $(seq 64); do head -c 1M /dev/urandom >"$src/big/f$i"; done
measure "ckms image run --src (64 MB of source)" "$CKMS_BIN" --engine "$engine" image run -k "${kernels[0]}" \
  --src "$src" --out "$work/out" -- sh -c 'rm -rf /build/big'
