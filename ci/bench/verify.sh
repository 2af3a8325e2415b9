#!/usr/bin/env bash
# Wall time of `ckms verify` (proof of load) for the hello fixture and Debian's v4l2loopback
# on a kernel: median of RUNS runs each, after one untimed run that fetches the kernel's
# linux-image package and assembles the verifier image. The issue's goal: under 15 s each.
# usage: ci/bench/verify.sh [KERNEL] [RUNS]   (default 6.1.0-56-amd64 5)
# Run as root after ci/setup-engines.sh. Env: CKMS_BENCH_ENGINE (default: user ${CKMS_USER:-ckms}'s
# rootless Podman socket), CKMS_TEST_CACHE (package cache, default target/ckms-test-cache).
set -euo pipefail
cd "$(dirname "$0")/../.."
kernel=${1:-6.1.0-56-amd64}
runs=${2:-5}
uid=$(id -u "${CKMS_USER:-ckms}")
engine=${CKMS_BENCH_ENGINE:-unix:///run/user/$uid/podman/podman.sock}
cache=${CKMS_TEST_CACHE:-$PWD/target/ckms-test-cache}
export CKMS_DATA_DIR=$PWD
cargo build --quiet --release
ckms() { target/release/ckms --engine "$engine" --cache-dir "$cache" "$@"; }
root=$(mktemp -d /var/tmp/ckms-bench-verify.XXXXXX)
trap 'rm -rf "$root"' EXIT

# v4l2loopback as the host's apt offers it (on Debian 12: 0.12.7, which builds for 6.1 kernels).
ckms -q add tests/fixtures/hello-dkms --root "$root" >/dev/null
(cd "$root" && apt-get download -q v4l2loopback-dkms >/dev/null 2>&1) || true
deb=$(find "$root" -maxdepth 1 -name 'v4l2loopback-dkms_*.deb' | head -1)
[ -n "$deb" ] || { echo "apt-get download v4l2loopback-dkms failed: check the host's apt sources" >&2; exit 1; }
dpkg-deb -x "$deb" "$root/x"
v4l=$(basename "$(ls -d "$root"/x/usr/src/v4l2loopback-*)")
ckms -q add "$root/x/usr/src/$v4l" --root "$root" >/dev/null
echo "ckms verify on $kernel, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
for mv in hello/1.0 "v4l2loopback/${v4l#v4l2loopback-}"; do
  ckms -q build "$mv" -k "$kernel" --root "$root" >/dev/null 2>&1
  ckms -q verify "$mv" -k "$kernel" --root "$root" >/dev/null 2>&1   # untimed: downloads, image
  times=()
  for _ in $(seq "$runs"); do
    s=$(date +%s.%N)
    ckms -q verify "$mv" -k "$kernel" --root "$root" >/dev/null 2>&1
    times+=("$(echo "$(date +%s.%N) - $s" | bc)")
  done
  sorted=$(printf '%s\n' "${times[@]}" | sort -n)
  median=$(echo "$sorted" | sed -n "$(( (runs + 1) / 2 ))p")
  printf '%-28s median %.2f s   runs: %s\n' "$mv" "$median" "$(printf '%.2f ' "${times[@]}")"
done
