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
  find "$1" -maxdepth 1 -type f \( -name '*.ko' -o -name '*.ko.gz' -o -name '*.ko.xz' -o -name '*.ko.zst' \) \
    -printf '%f\n' 2>/dev/null | sort
}
