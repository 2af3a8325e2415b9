#!/usr/bin/env bash
# The store after kill -9: a small `ckms farm build` (M generated modules x one kernel) into a
# new store, killed with SIGKILL at a random moment, N times. After each kill: `farm status` must
# find no damaged entry (exit 0: nothing half-visible) and tmp/ may hold only what the killed
# writer staged; then the same command again must finish (exit 0) with every pair present and
# built, tmp/ empty (the rerun cleaned what the dead writer left), and a second `status` clean.
# Prints per run: when it was killed, the pairs visible after the kill, the rerun's exit code and
# pairs; and the counts.
#
# usage: ci/bench/store-kill9.sh [-e ENGINE] [-n RUNS] [-m MODULES] [-k KERNEL] [-o DIR]
#   -e ENGINE   podman (default: user ${CKMS_USER:-ckms}'s rootless socket), docker, or unix:///...
#   -n RUNS     kills (default 20)
#   -m MODULES  modules per build (default 4)
#   -k KERNEL   the kernel (default 6.1.0-56-amd64)
#   -o DIR      work directory (default /var/tmp/ckms-kill9/<time>): stores, logs, summary
# Run as root after ci/setup-engines.sh. Env: CKMS_TEST_CACHE (ckms's cache), CKMS_BENCH_BIN (a
# ckms binary; default: this checkout's debug build), KILL_MAX (the latest kill, seconds; default
# the first full build's time).
set -euo pipefail
cd "$(dirname "$0")/../.."

engine=podman runs=20 modules=4 kernel=6.1.0-56-amd64 out=''
while getopts e:n:m:k:o:h opt; do
  case $opt in
    e) engine=$OPTARG ;;
    n) runs=$OPTARG ;;
    m) modules=$OPTARG ;;
    k) kernel=$OPTARG ;;
    o) out=$OPTARG ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
  esac
done
case $engine in
  podman) engine="unix:///run/user/$(id -u "${CKMS_USER:-ckms}")/podman/podman.sock" ;;
  docker) engine=unix:///var/run/docker.sock ;;
esac
export CKMS_TEST_CACHE=${CKMS_TEST_CACHE:-$PWD/target/ckms-test-cache}
export CKMS_DATA_DIR=$PWD
if [[ -n ${CKMS_BENCH_BIN:-} ]]; then
  ckms_bin=$CKMS_BENCH_BIN
else
  cargo build --quiet
  ckms_bin=${CARGO_TARGET_DIR:-$PWD/target}/debug/ckms
fi
out=${out:-/var/tmp/ckms-kill9/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out/src"
ckms() { "$ckms_bin" --engine "$engine" --cache-dir "$CKMS_TEST_CACHE" "$@"; }
die() {
  echo "kill9: $*" >&2
  exit 1
}

# M modules, each one C file: distinct pairs of one kernel.
sources=()
for i in $(seq 1 "$modules"); do
  d=$out/src/k9m$i
  mkdir -p "$d"
  printf 'PACKAGE_NAME="k9m%s"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="k9m%s"\nDEST_MODULE_LOCATION[0]="/updates/dkms"\n' \
    "$i" "$i" >"$d/dkms.conf"
  echo "obj-m := k9m$i.o" >"$d/Kbuild"
  printf '#include <linux/module.h>\nstatic int __init i(void) { return %s - %s; }\nmodule_init(i);\nMODULE_LICENSE("GPL");\n' \
    "$i" "$i" >"$d/k9m$i.c"
  sources+=("$d")
done
ckms generate-mok --key "$out/mok.key" --cert "$out/mok.pub" >/dev/null
build_args() { echo farm build --store "$1" -k "$kernel" --jobs 2 --key "$out/mok.key" --cert "$out/mok.pub" "${sources[@]}"; }

# Pairs `farm status` lists as built in store $1; exits non-zero (and says why) when status does.
built_pairs() {
  local rc=0
  ckms --json farm status --store "$1" >"$1.status" 2>"$1.status.err" || rc=$?
  ((rc == 0)) || { echo "status exit $rc: $(cat "$1.status.err")" >&2; return "$rc"; }
  jq -s '[.[] | select(.status == "built")] | length' "$1.status"
}

# The engine's containers of a killed ckms (they are named ckms-run-<pid>-...): removed.
reap() {
  local sock=${engine#unix://} ids
  ids=$(curl -sf --unix-socket "$sock" "http://d/containers/json?all=1" |
    jq -r --arg p "/ckms-run-$1-" '.[] | select(any(.Names[]; startswith($p))) | .Id')
  for id in $ids; do curl -sf -X DELETE --unix-socket "$sock" "http://d/containers/$id?force=1&v=1" >/dev/null || true; done
}

# The first build, whole: how long a build takes (kills fall within it), and the images warm.
t0=$(date +%s.%N)
# shellcheck disable=SC2046
ckms $(build_args "$out/store0") >"$out/store0.log" 2>&1 || die "the first build failed: $out/store0.log"
full=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
max=${KILL_MAX:-$full}
echo "kill9: a whole build of $modules pair(s): $full s; kills within 0-$max s" >&2

ok=0 bad=0 seen_partial=0
printf 'run killed_at visible_after_kill staged_after_kill rerun_exit built_after_rerun tmp_after_rerun verdict\n' >"$out/summary"
for run in $(seq 1 "$runs"); do
  store=$out/store$run
  at=$(awk -v m="$max" -v r="$RANDOM" 'BEGIN { printf "%.2f", m * r / 32768 }')
  # shellcheck disable=SC2046
  "$ckms_bin" --engine "$engine" --cache-dir "$CKMS_TEST_CACHE" $(build_args "$store") >"$store.kill.log" 2>&1 &
  pid=$!
  sleep "$at"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  reap "$pid"
  verdict=ok
  visible=$(built_pairs "$store") || { visible=damaged; verdict=bad; }
  staged=$(find "$store/tmp" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  rc=0
  # shellcheck disable=SC2046
  ckms $(build_args "$store") >"$store.rerun.log" 2>&1 || rc=$?
  after=$(built_pairs "$store") || { after=damaged; verdict=bad; }
  left=$(find "$store/tmp" -mindepth 1 -maxdepth 1 | wc -l)
  # 77: the killed run had stored every pair already.
  [[ $rc == 0 || $rc == 77 ]] || verdict=bad
  [[ $after == "$modules" && $left == 0 ]] || verdict=bad
  [[ $visible == damaged || $visible == 0 || $visible == "$modules" ]] || seen_partial=$((seen_partial + 1))
  [[ $verdict == ok ]] && ok=$((ok + 1)) || bad=$((bad + 1))
  echo "$run $at $visible $staged $rc $after $left $verdict" | tee -a "$out/summary"
done
echo "kill9: $runs kills: $ok clean (rerun complete, nothing lost or half-visible), $bad not; $seen_partial killed with some pairs stored; details in $out" >&2
((bad == 0))
