#!/usr/bin/env bash
# The farm on issue 10's matrix, in ONE `ckms farm build`: bookworm main's module source packages
# (`*-dkms`) x {6.1.0-56-amd64, the newest 6.12.*+deb12-amd64} and trixie main's x the newest
# 6.12.*+deb13-amd64 (`deb:P` names each kernel's own suite's package: a package only one suite
# has is skipped on the other's kernels). Then the same command again (warm: nothing to build).
# Reports per kernel the pairs built / failed / skipped, both runs' wall time and peak RSS, the
# per-pair overhead (a pair's wall time minus the time its make ran in the container), writes the
# HTML report and a screenshot of it in Debian's chromium. With -c ENGINE: every built pair of
# 6.1.0-56-amd64 rebuilt on that other engine with `farm build --check` (N of M identical).
#
# The store may already hold pairs (ci/bench/corpus.sh -S STORE builds one kernel into it, with
# real dkms beside it): those are cached here, and the counts say how many were.
#
# usage: ci/bench/farm-matrix.sh [-e ENGINE] [-c ENGINE] [-S STORE] [-o DIR]
#   -e ENGINE   the farm's engine: podman (default: user ${CKMS_USER:-ckms}'s rootless socket),
#               docker, or an endpoint (unix:///...)
#   -c ENGINE   also --check the 6.1.0-56-amd64 pairs on this engine (the other one)
#   -S STORE    the store (default /var/tmp/ckms-matrix/store)
#   -o DIR      results (default /var/tmp/ckms-matrix/<time>): summary.md, the runs' JSON events,
#               report.html, report.png, check.json
# Run as root after ci/setup-engines.sh. Env: CKMS_TEST_CACHE (ckms's cache), CKMS_BENCH_BIN (a ckms
# binary to run instead of this checkout's release build, e.g. an older one to fill a store with).
set -euo pipefail
cd "$(dirname "$0")/../.."
bench=$PWD/ci/bench
# shellcheck source=ci/bench/corpus-lib.sh
. "$bench/corpus-lib.sh"

engine=podman check='' store=/var/tmp/ckms-matrix/store out=''
while getopts e:c:S:o:h opt; do
  case $opt in
    e) engine=$OPTARG ;;
    c) check=$OPTARG ;;
    S) store=$OPTARG ;;
    o) out=$OPTARG ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
  esac
done
endpoint() {
  case $1 in
    podman) echo "unix:///run/user/$(id -u "${CKMS_USER:-ckms}")/podman/podman.sock" ;;
    docker) echo unix:///var/run/docker.sock ;;
    *) echo "$1" ;;
  esac
}
engine=$(endpoint "$engine")
[[ -z $check ]] || check=$(endpoint "$check")
export CKMS_TEST_CACHE=${CKMS_TEST_CACHE:-$PWD/target/ckms-test-cache}
export CKMS_DATA_DIR=$PWD
[[ -x /usr/bin/time ]] || apt-get install -y -q time >/dev/null
if [[ -n ${CKMS_BENCH_BIN:-} ]]; then
  ckms_bin=$CKMS_BENCH_BIN
else
  cargo build --quiet --release
  ckms_bin=$PWD/target/release/ckms
fi
out=${out:-/var/tmp/ckms-matrix/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out" "$store"

kernels=(6.1.0-56-amd64 "$(resolve_kernel bookworm-6.12)" "$(resolve_kernel trixie)")
for k in "${kernels[@]}"; do [[ -n $k ]] || die "a kernel series of the matrix has no release in the profiles"; done
corpus() { ckms_result packages --profile "$1" --dkms -- '-dkms$' | python3 -c 'import json,sys
for p in json.load(sys.stdin)["packages"]: print(p["name"])'; }
mapfile -t bookworm < <(corpus debian-bookworm)
mapfile -t trixie < <(corpus debian-trixie)
mapfile -t sources < <(printf 'deb:%s\n' "${bookworm[@]}" "${trixie[@]}" | sort -u)
echo "matrix: ${#bookworm[@]} bookworm + ${#trixie[@]} trixie packages (${#sources[@]} names) x ${kernels[*]}" >&2

args=(farm build --store "$store")
for k in "${kernels[@]}"; do args+=(-k "$k"); done
args+=("${sources[@]}")
for run in first warm; do
  echo "matrix: ckms farm build ($run)" >&2
  t0=$(now)
  rc=0
  /usr/bin/time -f '%M' -o "$out/$run.rss" "$ckms_bin" --engine "$engine" --cache-dir "$CKMS_TEST_CACHE" --json \
    "${args[@]}" >"$out/$run.jsonl" 2>"$out/$run.err" || rc=$?
  # time(1) writes "Command exited with non-zero status N" above the figure when N is not 0.
  echo "$run $(elapsed "$t0") $rc $(tail -n1 "$out/$run.rss")" >>"$out/runs"
done
"$ckms_bin" --cache-dir "$CKMS_TEST_CACHE" farm report --store "$store" -o "$out/report.html"
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,1100 \
  --screenshot="$out/report.png" "file://$out/report.html" >/dev/null 2>&1 || echo "matrix: no screenshot (chromium)" >&2

if [[ -n $check ]]; then
  echo "matrix: ckms farm build --check of 6.1.0-56-amd64 on $check" >&2
  t0=$(now)
  rc=0
  "$ckms_bin" --engine "$check" --cache-dir "$CKMS_TEST_CACHE" --json farm build --store "$store" --check \
    -k 6.1.0-56-amd64 --profile debian-bookworm "${bookworm[@]/#/deb:}" >"$out/check.jsonl" 2>"$out/check.err" || rc=$?
  echo "check $(elapsed "$t0") $rc" >>"$out/runs"
fi

python3 - "$store" "$out" "${kernels[@]}" <<'EOF' | tee "$out/summary.md"
import collections, json, statistics, sys
from pathlib import Path
store, out, kernels = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
cells = json.loads((store / "matrix.json").read_text())
counts = collections.defaultdict(collections.Counter)
overhead = []
for cell in cells:
    r = json.loads((store / "pairs" / cell["key"] / "result.json").read_text())
    counts[r["kernel"]][r["status"]] += 1
    if r["status"] == "built" and r.get("make_seconds") is not None:
        overhead.append(r["seconds"] - r["make_seconds"])
# Pairs the first run built (or failed) itself, rather than found in the store.
for line in (out / "first.jsonl").read_text().splitlines():
    doc = json.loads(line)
    if doc.get("event") == "finished":
        counts[doc["pair"].rsplit(" on ", 1)[1]]["(ran)"] += 1
print("| kernel | built | failed | skipped | of which the first run built (the rest were in the store) |")
print("|---|---|---|---|---|")
for k in kernels:
    c = counts[k]
    print("| %s | %d | %d | %d | %d |" % (k, c["built"], c["failed"], c["skipped"], c["(ran)"]))
print()
for line in (out / "runs").read_text().splitlines():
    what, secs, rc, *rss = line.split()
    print("- %s: %s s, exit %s%s" % (what, secs, rc, ", peak RSS %d MB" % (int(rss[0]) // 1024) if rss else ""))
if overhead:
    q = statistics.quantiles(overhead, n=10)
    print("- per built pair, wall time minus make's: median %.2f s (p10 %.2f, p90 %.2f, %d pairs)"
          % (statistics.median(overhead), q[0], q[-1], len(overhead)))
check = out / "check.jsonl"
if check.exists():
    for line in check.read_text().splitlines():
        doc = json.loads(line)
        if doc.get("event") == "result":
            r = doc["result"]
            print("- --check: %d of %d stored pairs identical (%d module files, unsigned and signed)"
                  % (r["identical"], r["pairs"], r["files"]))
            for d in r["differing"]:
                print("  - differs: %s: %s" % (d["pair"], "; ".join(d["differs"] + ([d["status"]] if d["status"] else []))))
            for n in r["not_rebuilt"]:
                print("  - not rebuilt: %s" % n)
EOF
