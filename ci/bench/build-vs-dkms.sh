#!/usr/bin/env bash
# Wall time of building one (kernel, package) pair, median of RUNS runs per side:
#   dkms: Debian's own dkms in the kernel's builder image plus a dkms layer (the reference side of
#         tests/dkms_compare.rs), on the source of the real *-dkms package of the kernel's suite;
#         figures: dkms_secs (the `dkms build` command, timed inside the container) and
#         container_secs (the whole container run: create, upload, dkms, copy back, remove).
#   ckms: `ckms build` of the same source for the same kernel (one container: conf, then make).
# The issue's goal: ckms's wall time within 15% (or 1 s) of real dkms building the same pair.
# usage: ci/bench/build-vs-dkms.sh [KERNEL] [PACKAGE] [RUNS]   (default 6.1.0-56-amd64 v4l2loopback-dkms 3)
# Run as root after ci/setup-engines.sh. Env: CKMS_BENCH_ENGINE (default: user ${CKMS_USER:-ckms}'s
# rootless Podman socket), CKMS_TEST_CACHE (package cache, default target/ckms-test-cache).
# Nothing is built on the host: dkms and make run in the builder image only.
set -euo pipefail
cd "$(dirname "$0")/../.."
kernel=${1:-6.1.0-56-amd64}
package=${2:-v4l2loopback-dkms}
runs=${3:-3}
uid=$(id -u "${CKMS_USER:-ckms}")
export CKMS_BENCH_ENGINE=${CKMS_BENCH_ENGINE:-unix:///run/user/$uid/podman/podman.sock}
export CKMS_TEST_CACHE=${CKMS_TEST_CACHE:-$PWD/target/ckms-test-cache}
mkdir -p "$CKMS_TEST_CACHE"
# This checkout's profiles and recipes, whatever an installed ckms left in /etc or /usr/share/ckms.
export CKMS_DATA_DIR=$PWD

# Release builds of the helper (benches/build_vs_dkms.rs) and of the ckms binary.
cargo bench --quiet --bench build_vs_dkms --no-run
cargo build --quiet --release
helper() { cargo bench --quiet --bench build_vs_dkms -- "$@"; }
ckms=$PWD/target/release/ckms
ckms() { "$ckms" --engine "$CKMS_BENCH_ENGINE" --cache-dir "$CKMS_TEST_CACHE" "$@"; }
work=$(mktemp -d /var/tmp/ckms-bench-dkms.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Untimed: the source as a --sourcetree ($work/src/<module>-<version>), the reference image,
# and ckms's builder image, so that no run pays for assembling an image.
module= version= package_version= image= dkms_version=
eval "$(helper prepare "$kernel" "$package" "$work/src")"
ckms -q image build -k "$kernel" >/dev/null
echo "$package $package_version ($module/$version) on $kernel; dkms $dkms_version in $image; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# One function per side: builds the pair once (run number in $1) and prints `name=value ...`
# on one line; every name ending in _secs gets a median.
side_dkms() {
  helper dkms "$kernel" "$package" | tail -n1
}
side_ckms() {
  local t0 rc=0
  t0=$(now)
  ckms -q build -m "$module" -v "$version" -k "$kernel" --sourcetree "$work/src" --dkmstree "$work/ckms-tree-$1" \
    >"$work/ckms-$1.log" 2>&1 || rc=$?
  echo "exit=$rc kos=$(find "$work/ckms-tree-$1/$module/$version/$kernel" -name '*.ko*' 2>/dev/null | wc -l) ckms_secs=$(elapsed "$t0")"
}
sides=(dkms ckms)

# Interleaved (dkms, ckms, dkms, ...), so that a change in the machine's load hits both sides.
declare -A figures
for i in $(seq "$runs"); do
  for side in "${sides[@]}"; do
    line=$("side_$side" "$i")
    echo "  $side run $i: $line"
    for kv in $line; do
      [[ ${kv%%=*} == *_secs ]] && figures["${kv%%=*}"]+="${kv#*=} "
    done
  done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
declare -A med
echo "median of $runs run(s):"
for name in $(printf '%s\n' "${!figures[@]}" | sort); do
  med[$name]=$(echo "${figures[$name]}" | median)
  printf '  %-15s %6s s   (%s)\n' "$name" "${med[$name]}" "${figures[$name]% }"
done
if [[ -n ${med[ckms_secs]:-} ]]; then
  for ref in dkms_secs container_secs; do
    awk -v c="${med[ckms_secs]}" -v d="${med[$ref]}" -v r="$ref" 'BEGIN {
      ok = (c <= d * 1.15 || c - d <= 1) ? "within" : "NOT within";
      printf "  ckms vs %s: %+.2f s (%+.0f%%), %s 15%% or 1 s\n", r, c - d, (c - d) / d * 100, ok }'
  done
fi
