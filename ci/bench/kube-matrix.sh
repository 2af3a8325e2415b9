#!/usr/bin/env bash
# The farm on Kubernetes on a larger matrix than CI's: bookworm main's module source packages
# (`*-dkms`) x {6.1.0-56-amd64, the newest 6.12.*+deb12-amd64}, through `farm kube render`, the
# rendered pods run as written on one engine (tests/support/kube_pods.rs), `farm kube collect`,
# then `farm build` of the same matrix on the same engine in the same run: the test
# (tests/kube.rs, larger_matrix) checks the same keys, the same statuses and byte-identical
# modules, and prints the times.
#
# usage: ci/bench/kube-matrix.sh [-e podman|docker] [-p PARALLELISM] [-n PACKAGES]
#   -e    the engine the pods and the local build run on (default podman)
#   -p    pods of a Job at once (default 2, the machine's cores)
#   -n    only the first N packages (default all)
# Run as root after ci/setup-engines.sh and ci/setup-build-deps.sh. Env: CKMS_TEST_CACHE.
set -euo pipefail
cd "$(dirname "$0")/../.."
bench=$PWD/ci/bench
# shellcheck source=ci/bench/corpus-lib.sh
. "$bench/corpus-lib.sh"

kind=podman parallelism=2 limit=0
while getopts e:p:n:h opt; do
  case $opt in
    e) kind=$OPTARG ;;
    p) parallelism=$OPTARG ;;
    n) limit=$OPTARG ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
  esac
done
uid=$(id -u "${CKMS_USER:-ckms}")
export CKMS_TEST_PODMAN_HOST="unix:///run/user/$uid/podman/podman.sock"
export CKMS_TEST_DOCKER_HOST="unix:///var/run/docker.sock"
export CKMS_TEST_CACHE=${CKMS_TEST_CACHE:-$PWD/target/ckms-test-cache}
engine=$CKMS_TEST_PODMAN_HOST
[[ $kind == docker ]] && engine=$CKMS_TEST_DOCKER_HOST
cargo build --quiet
ckms_bin=$PWD/target/debug/ckms

kernels=(6.1.0-56-amd64 "$(resolve_kernel bookworm-6.12)")
for k in "${kernels[@]}"; do [[ -n $k ]] || die "a kernel series of the matrix has no release in the profiles"; done
mapfile -t packages < <(ckms_result packages --profile debian-bookworm --dkms -- '-dkms$' | python3 -c 'import json,sys
for p in json.load(sys.stdin)["packages"]: print(p["name"])')
((limit == 0)) || packages=("${packages[@]:0:limit}")
echo "kube-matrix: ${#packages[@]} packages x ${kernels[*]} on $kind, parallelism $parallelism" >&2

export CKMS_KUBE_ENGINE=$kind CKMS_KUBE_PARALLELISM=$parallelism
CKMS_KUBE_KERNELS="${kernels[*]}"
CKMS_KUBE_SOURCES="$(printf 'deb:%s ' "${packages[@]}")"
export CKMS_KUBE_KERNELS CKMS_KUBE_SOURCES
t0=$(now)
cargo test --quiet --test kube larger_matrix -- --ignored --nocapture 2>&1 | grep -E -A4 '^kube on|test result|panicked' | grep -v '^ *[0-9]*: \|^ *at ' || true
echo "kube-matrix: $(elapsed "$t0") s in all" >&2
