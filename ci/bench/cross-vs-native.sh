#!/usr/bin/env bash
# Cross against native, in the same run: the same module source packages built by `ckms farm
# build` for a kernel of this machine's architecture (default 6.1.0-56-amd64: the kernel's gcc-12)
# and for the same release of another architecture (default 6.1.0-56-arm64: gcc-12-aarch64-linux-gnu
# in an amd64 builder image, make ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-). Issue 22's goal:
# a cross build takes at most GOAL (1.2) times the native one.
#
# First a warm-up `farm build` of every package for both kernels (untimed, its store thrown
# away): it makes the builder images (the kernels' and the extra ones of packages with Depends)
# and checks that every package builds for both. Then RUNS repetitions; in each, per package, one
# `farm build --store NEW -k KERNEL deb:PACKAGE` per kernel, the two kernels in alternating order
# (by repetition and package), each into a new store (nothing comes from a store), one pair at a
# time (make gets all the cores). Per package and kernel: the median of make's own time (the
# driver's, in the container), of the pair's wall time in the farm (container, exchange, signing,
# store) and of the whole command; the ratios cross/native: of the medians, the median of each
# repetition's ratio (the two builds ran back to back, under the same load), and of the
# fastest builds; overall, the ratio of the sums of the medians (the goal's figure: exits 1 when
# it is above GOAL) and of the fastest builds.
#
# usage: ci/bench/cross-vs-native.sh [-n NATIVE] [-c CROSS] [-r RUNS] [-g GOAL] [-e ENGINE] [-o DIR] [PACKAGE...]
#   -n NATIVE   the kernel of this machine's architecture (default 6.1.0-56-amd64)
#   -c CROSS    the kernel of the other one (default 6.1.0-56-arm64)
#   -r RUNS     repetitions (default 5)
#   -g GOAL     the largest acceptable ratio, cross/native (default 1.2)
#   -e ENGINE   podman (default: user ${CKMS_USER:-ckms}'s rootless socket), docker, or unix:///...
#   -o DIR      results (default /var/tmp/ckms-cross/<time>): runs, builds.jsonl, summary.md, the stores
#   PACKAGE     *-dkms packages of both kernels' suites (default: v4l2loopback-dkms digimend-dkms
#               acpi-call-dkms gost-crypto-dkms apfs-dkms xtables-addons-dkms)
# Run as root after ci/setup-engines.sh. Env: CKMS_TEST_CACHE (ckms's cache, default
# target/ckms-test-cache), CKMS_BENCH_BIN (a ckms binary instead of this checkout's release build).
set -euo pipefail
cd "$(dirname "$0")/../.."
bench=$PWD/ci/bench
# shellcheck source=ci/bench/corpus-lib.sh
. "$bench/corpus-lib.sh"

native=6.1.0-56-amd64 cross=6.1.0-56-arm64 runs=5 goal=1.2 engine=podman out=''
while getopts n:c:r:g:e:o:h opt; do
  case $opt in
    n) native=$OPTARG ;;
    c) cross=$OPTARG ;;
    r) runs=$OPTARG ;;
    g) goal=$OPTARG ;;
    e) engine=$OPTARG ;;
    o) out=$OPTARG ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
packages=("$@")
((${#packages[@]})) || packages=(v4l2loopback-dkms digimend-dkms acpi-call-dkms gost-crypto-dkms apfs-dkms xtables-addons-dkms)
engine=$(engine_url "$engine")
bench_env
if [[ -n ${CKMS_BENCH_BIN:-} ]]; then
  ckms_bin=$CKMS_BENCH_BIN
else
  cargo build --quiet --release
  ckms_bin=${CARGO_TARGET_DIR:-$PWD/target}/release/ckms
fi
out=${out:-/var/tmp/ckms-cross/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out/stores"
: >"$out/runs"
cat >"$out/run.env" <<EOF
native=$native
cross=$cross
packages=${packages[*]}
runs=$runs
engine=$engine
host_nproc=$(nproc)
started=$(date -u +%FT%TZ)
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
EOF
echo "cross-vs-native: $cross against $native, ${#packages[@]} packages, $runs runs; results in $out" >&2

# One `ckms farm build` into store $1 (NAME under $out/stores) for kernels and sources; a line
# "<name> <seconds> <exit> <1-minute load at the start>" in $out/runs.
farm() {
  local name=$1 t0 rc=0 load
  shift
  load=$(cut -d' ' -f1 /proc/loadavg)
  t0=$(now)
  "$ckms_bin" --engine "$engine" --cache-dir "$CKMS_TEST_CACHE" --json farm build --store "$out/stores/$name" "$@" \
    >"$out/stores/$name.jsonl" 2>"$out/stores/$name.err" || rc=$?
  echo "$name $(elapsed "$t0") $rc $load" >>"$out/runs"
}

echo "cross-vs-native: warm-up (builder images; every package for both kernels)" >&2
farm warmup -k "$native" -k "$cross" "${packages[@]/#/deb:}"
python3 - "$out/stores/warmup" "$native" "$cross" "${packages[@]}" <<'EOF' || die "not every package builds for both kernels: see $out/stores/warmup.err"
import json, sys
from pathlib import Path
store, kernels, packages = Path(sys.argv[1]), sys.argv[2:4], sys.argv[4:]
built = set()
for cell in json.loads((store / "matrix.json").read_text()):
    r = json.loads((store / "pairs" / cell["key"] / "result.json").read_text())
    package = r["source"].get("package") or r["source"]["given"].removeprefix("deb:")
    if r["status"] == "built":
        built.add((package, r["kernel"]))
    else:
        print("cross-vs-native: %s on %s: %s" % (package, r["kernel"], r["status"]), file=sys.stderr)
missing = [(p, k) for p in packages for k in kernels if (p, k) not in built]
sys.exit(1 if missing else 0)
EOF
rm -rf "$out/stores/warmup"

for ((run = 1; run <= runs; run++)); do
  i=0
  for p in "${packages[@]}"; do
    if (((run + i) % 2)); then order=("$native" "$cross"); else order=("$cross" "$native"); fi
    for k in "${order[@]}"; do
      echo "cross-vs-native: run $run, $p on $k" >&2
      farm "$run:$p:$k" -k "$k" "deb:$p"
    done
    i=$((i + 1))
  done
done
echo "finished=$(date -u +%FT%TZ)" >>"$out/run.env"
echo "load_at_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/run.env"

python3 - "$out" "$native" "$cross" "$goal" <<'EOF' | tee "$out/summary.md"
import json, statistics, sys
from pathlib import Path
out, native, cross, goal = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
run_env = dict(l.split("=", 1) for l in (out / "run.env").read_text().splitlines() if "=" in l)
builds = []
for line in (out / "runs").read_text().splitlines():
    name, wall, rc, load = line.split()
    if name == "warmup":
        continue
    run, package, kernel = name.split(":")
    store = out / "stores" / name
    for cell in json.loads((store / "matrix.json").read_text()):
        r = json.loads((store / "pairs" / cell["key"] / "result.json").read_text())
        builds.append({"run": int(run), "package": package, "kernel": kernel, "module": r["module"],
                       "version": r["version"], "status": r["status"], "pair": r["seconds"],
                       "make": r.get("make_seconds"), "command": float(wall), "exit": int(rc),
                       "load": float(load)})
with open(out / "builds.jsonl", "w") as f:
    for b in builds:
        f.write(json.dumps(b) + "\n")
bad = [b for b in builds if b["status"] != "built" or b["make"] is None]
for b in bad:
    print("- run %d, %s on %s: %s (no make time)" % (b["run"], b["package"], b["kernel"], b["status"]))

def med(package, kernel, what):
    xs = [b[what] for b in builds if b["package"] == package and b["kernel"] == kernel and b not in bad]
    return (statistics.median(xs), min(xs), max(xs), len(xs)) if xs else None

def fmt(m):
    return "%.2f s (%.2f–%.2f)" % m[:3] if m else "-"

def paired(package):
    """Each repetition's cross/native make ratio (its two builds ran back to back)."""
    out = []
    for run in sorted({b["run"] for b in builds}):
        m = {b["kernel"]: b["make"] for b in builds if b["package"] == package and b["run"] == run and b not in bad}
        if native in m and cross in m:
            out.append(m[cross] / m[native])
    return out

packages = list(dict.fromkeys(b["package"] for b in builds))
loads = [b["load"] for b in builds]
print("Cross `%s` against native `%s`, %s runs, %s CPUs, engine %s, %s to %s; 1-minute load at the builds' "
      "start: median %.2f (%.2f–%.2f)."
      % (cross, native, run_env["runs"], run_env["host_nproc"], run_env["engine"], run_env["started"],
         run_env.get("finished"), statistics.median(loads), min(loads), max(loads)))
print()
print("| package | module | make, native | make, cross | **ratio of medians** | median of paired ratios | ratio of fastest | pair, native | pair, cross | ratio |")
print("|---|---|---|---|---|---|---|---|---|---|")
sums = {k: {"make": 0.0, "pair": 0.0, "fastest": 0.0} for k in (native, cross)}
ratios, all_paired = [], []
for p in packages:
    ms = {k: {w: med(p, k, w) for w in ("make", "pair")} for k in (native, cross)}
    if not all(ms[k][w] for k in ms for w in ms[k]):
        print("| %s | | not built on both | | | | | | | |" % p)
        continue
    for k in ms:
        sums[k]["make"] += ms[k]["make"][0]
        sums[k]["pair"] += ms[k]["pair"][0]
        sums[k]["fastest"] += ms[k]["make"][1]
    ratio = ms[cross]["make"][0] / ms[native]["make"][0]
    ratios.append(ratio)
    pr = paired(p)
    all_paired += pr
    module = next(b["module"] for b in builds if b["package"] == p)
    print("| %s | %s | %s | %s | **%.2f×** | %.2f× | %.2f× | %s | %s | %.2f× |" % (
        p, module, fmt(ms[native]["make"]), fmt(ms[cross]["make"]), ratio, statistics.median(pr),
        ms[cross]["make"][1] / ms[native]["make"][1], fmt(ms[native]["pair"]), fmt(ms[cross]["pair"]),
        ms[cross]["pair"][0] / ms[native]["pair"][0]))
overall = sums[cross]["make"] / sums[native]["make"] if sums[native]["make"] else float("nan")
print("| **all** (sums) | | %.2f s | %.2f s | **%.2f×** | %.2f× | %.2f× | %.2f s | %.2f s | %.2f× |" % (
    sums[native]["make"], sums[cross]["make"], overall, statistics.median(all_paired),
    sums[cross]["fastest"] / sums[native]["fastest"], sums[native]["pair"], sums[cross]["pair"],
    sums[cross]["pair"] / sums[native]["pair"]))
print()
print("Geometric mean of the per-package ratios of medians: %.2f×; %d of %d packages within %.2f×."
      % (statistics.geometric_mean(ratios), sum(r <= goal for r in ratios), len(ratios), goal))
print()
print("%s: cross/native make time %.2f× %s %.2f× overall (sum of the medians)" % (
    "GOAL MET" if overall <= goal else "GOAL MISSED", overall, "<=" if overall <= goal else ">", goal))
sys.exit(0 if overall <= goal and not bad else 1)
EOF
