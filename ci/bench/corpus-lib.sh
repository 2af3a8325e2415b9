# Shell functions both sides of ci/bench/corpus.sh use: the host (ckms) and the reference
# container (dkms, ci/bench/corpus-reference.sh), so that both name modules and time the same way.
# shellcheck shell=bash

die() {
  echo "corpus: $*" >&2
  exit 1
}

now() { date +%s.%N; }

# Seconds since $1 (a `now`), two decimals.
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f\n", b - a }'; }

# Reads paths of .../<module>-<version>/dkms.conf on stdin; prints "<module> <version>" for each.
# The module is dkms.conf's PACKAGE_NAME when the directory starts with it (a version may hold
# '-'), else the directory's name up to its last '-' (as dkms's /usr/src/<m>-<v> layout reads).
module_versions() {
  local conf dir name
  while read -r conf; do
    dir=$(basename "$(dirname "$conf")")
    name=$(sed -nE 's/^[[:space:]]*PACKAGE_NAME=["'\'']?([^"'\'' #]+).*/\1/p' "$conf" | head -n1)
    if [[ -n $name && $dir == "$name"-* ]]; then
      echo "$name ${dir#"$name"-}"
    else
      echo "${dir%-*} ${dir##*-}"
    fi
  done
}

# The module files (.ko, .ko.gz/.xz/.zst) directly in directory $1, one name a line, sorted.
list_module_files() {
  [[ -d $1 ]] || return 0 # a failed build has none
  find "$1" -maxdepth 1 -type f \( -name '*.ko' -o -name '*.ko.gz' -o -name '*.ko.xz' -o -name '*.ko.zst' \) \
    -printf '%f\n' 2>/dev/null | sort
}

# (host only) The `result` of a `ckms --json` command; needs $ckms_bin, $engine, $CKMS_TEST_CACHE.
ckms_result() {
  "$ckms_bin" --engine "$engine" --cache-dir "$CKMS_TEST_CACHE" --json "$@" | python3 -c 'import json,sys
for line in sys.stdin:
    doc = json.loads(line)
    if doc.get("event") == "result": print(json.dumps(doc["result"]))'
}

# (host only) A kernel release for $1: a release as it is, or one of the issue's four series
# (bookworm, bookworm-6.12, trixie, sid) as the newest release of it the profiles offer.
resolve_kernel() {
  local series
  case $1 in
    bookworm) echo 6.1.0-56-amd64; return ;;
    bookworm-6.12) series='^6\.12\.[0-9]+\+deb12-amd64$' ;;
    trixie) series='^6\.12\.[0-9]+\+deb13-amd64$' ;;
    sid) series='^7\.[0-9.]+\+deb14-amd64$' ;;
    *) echo "$1"; return ;;
  esac
  ckms_result kernels | python3 -c 'import json,re,sys
found = [k["release"] for k in json.load(sys.stdin) if re.search(sys.argv[1], k["release"])]
print(found[-1] if found else "")' "$series"
}

# The endpoint of an engine named podman (user ${CKMS_USER:-ckms}'s rootless socket) or docker;
# anything else as given.
engine_url() {
  case $1 in
    podman) echo "unix:///run/user/$(id -u "${CKMS_USER:-ckms}")/podman/podman.sock" ;;
    docker) echo unix:///var/run/docker.sock ;;
    *) echo "$1" ;;
  esac
}

# ckms's download cache (CKMS_TEST_CACHE, made if missing) and this checkout's profiles and
# recipes, whatever an installed ckms left in /etc or /usr/share/ckms.
bench_env() {
  export CKMS_TEST_CACHE=${CKMS_TEST_CACHE:-$PWD/target/ckms-test-cache}
  mkdir -p "$CKMS_TEST_CACHE"
  export CKMS_DATA_DIR=$PWD
}
