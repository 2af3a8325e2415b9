#!/usr/bin/env bash
# Reproducibility on one kernel: bookworm main's module source packages (`*-dkms`) built for
# KERNEL on Podman into a fresh store, then every built pair rebuilt with `farm build --check` on
# Podman and on Docker and compared file by file (every module file, unsigned and signed,
# missing and extra ones too). Prints "N of M stored pairs rebuilt identical" per engine.
#
# usage: ci/bench/check-reproducible.sh [KERNEL] [OUT]
#   KERNEL  default: the newest 6.12.*+deb12-amd64 (module BTF is encoded there: see
#           src/build/driver.sh, serial_pahole)
#   OUT     default /var/tmp/ckms-check/<time>: the store, each run's output
# Run as root after ci/setup-engines.sh. Env: CKMS_TEST_CACHE (ckms's cache), CKMS_BENCH_BIN.
set -euo pipefail
cd "$(dirname "$0")/../.."
bench=$PWD/ci/bench
# shellcheck source=ci/bench/corpus-lib.sh
. "$bench/corpus-lib.sh"
export CKMS_TEST_CACHE=${CKMS_TEST_CACHE:-$PWD/target/ckms-test-cache}
export CKMS_DATA_DIR=$PWD
if [[ -n ${CKMS_BENCH_BIN:-} ]]; then
  ckms_bin=$CKMS_BENCH_BIN
else
  cargo build --quiet --release
  ckms_bin=$PWD/target/release/ckms
fi
podman="unix:///run/user/$(id -u "${CKMS_USER:-ckms}")/podman/podman.sock"
docker=unix:///var/run/docker.sock
engine=$podman
kernel=$(resolve_kernel "${1:-bookworm-6.12}")
[[ -n $kernel ]] || die "no 6.12.*+deb12-amd64 kernel in the profiles"
out=${2:-/var/tmp/ckms-check/$(date -u +%Y%m%dT%H%M%SZ)}
store=$out/store
mkdir -p "$out"
mapfile -t sources < <(ckms_result packages --profile debian-bookworm --dkms -- '-dkms$' | python3 -c 'import json,sys
for p in json.load(sys.stdin)["packages"]: print("deb:" + p["name"])')
echo "check: ${#sources[@]} bookworm packages x $kernel, store $store" >&2
run() { # NAME ENGINE ARGS...
  local name=$1 on=$2 t0 rc=0
  shift 2
  t0=$(now)
  "$ckms_bin" --engine "$on" --cache-dir "$CKMS_TEST_CACHE" farm build --store "$store" -k "$kernel" \
    --profile debian-bookworm "$@" "${sources[@]}" >"$out/$name.out" 2>"$out/$name.err" || rc=$?
  echo "$name: exit $rc, $(elapsed "$t0") s: $(tail -n1 "$out/$name.out")"
}
run build "$podman"
run check-podman "$podman" --check
run check-docker "$docker" --check
grep -h '^differs\|^  \|^not rebuilt' "$out"/check-*.out || true
