#!/usr/bin/env bash
# `ckms farm follow` ahead of the kernel, at the issue's size: tests/follow_archive.rs with
# five real *-dkms packages. A loopback archive (the host mirror's bookworm indexes, re-signed
# by a test key) gains the newest 6.1 kernel; follow (Podman, --verify) publishes its modules
# as a signed cache, an apt repository and KMM images in a loopback registry; consumers get
# them. Prints the test's MEASURED lines and checks the goal: from the index change to all
# three publications, signed and proven to load, within GOAL seconds (default 300).
# usage: ci/bench/follow.sh [GOAL]
# Run as root after ci/setup-engines.sh and ci/setup-build-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
goal=${1:-300}
uid=$(id -u "${CKMS_USER:-ckms}")
export CKMS_TEST_PODMAN_HOST="unix:///run/user/$uid/podman/podman.sock"
export CKMS_TEST_DOCKER_HOST="unix:///var/run/docker.sock"
export CKMS_TEST_CACHE="${CKMS_TEST_CACHE:-$PWD/target/ckms-test-cache}"
export CKMS_FOLLOW_MODULES="v4l2loopback-dkms digimend-dkms acpi-call-dkms adv-17v35x-dkms openvpn-dco-dkms"
log=$(mktemp /tmp/ckms-bench-follow.XXXXXX)
echo "follow bench: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); log $log"
if ! cargo test --quiet --test follow_archive -- --nocapture >"$log" 2>&1; then
  tail -50 "$log"
  echo "the follow test failed: see $log" >&2
  exit 1
fi
grep -E '^MEASURED|^the archive offers' "$log"
took=$(sed -n 's/^MEASURED index change to publication of [^ ]* ([^)]*): \([0-9]*\) s.*/\1/p' "$log")
[ -n "$took" ] || { echo "no measurement in $log" >&2; exit 1; }
if [ "$took" -le "$goal" ]; then
  echo "GOAL MET: ${took} s <= ${goal} s from the index change to the publications"
else
  echo "GOAL MISSED: ${took} s > ${goal} s from the index change to the publications"
  exit 1
fi
