#!/usr/bin/env bash
# What a build costs beyond its make: `ckms build --force` against the same make started directly
# with the engine's own CLI in the same builder image, per engine and module, interleaved
# (ckms, make, ckms, make, ...) so that a change in the machine's load hits both sides.
#   make: `podman run` (rootless, as user $CKMS_USER) or `docker run`: the same image reference,
#         the same user, --network none, the source piped in as a tar and unpacked into the same
#         path (/var/lib/dkms/<m>/<v>/build, on a fresh anonymous volume), then the same make
#         command line ckms printed (same -j), evaluated as ckms's driver evaluates it.
#   ckms: `ckms build -m <m> -v <v> -k KERNEL --force` of the same source (release build), and the
#         engine service's CPU time while it ran (utime+stime of the Podman service of that user,
#         or of dockerd and containerd, from /proc), as a share of the build's wall time.
# The issue's goals: ckms within 1.10x (or 1 s) of make; the engine's CPU under 2% of the build.
# usage: ci/bench/build-vs-make.sh [RUNS] [KERNEL]   (default 5 6.1.0-56-amd64)
# Env: CKMS_BENCH_ENGINES (default "podman docker"), CKMS_BENCH_PACKAGES (default
# "v4l2loopback-dkms dahdi-dkms xtables-addons-dkms": Debian packages from the host's apt sources,
# fetched with apt-get download), CKMS_BENCH_BIN (a ckms binary to measure instead of this
# checkout's release build), CKMS_TEST_CACHE (package cache, default target/ckms-test-cache).
# Run as root after ci/setup-engines.sh, on a bookworm host for the default kernel.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-5}
kernel=${2:-6.1.0-56-amd64}
read -r -a engines <<<"${CKMS_BENCH_ENGINES:-podman docker}"
read -r -a packages <<<"${CKMS_BENCH_PACKAGES:-v4l2loopback-dkms dahdi-dkms xtables-addons-dkms}"
user=${CKMS_USER:-ckms}
uid=$(id -u "$user")
export CKMS_TEST_CACHE=${CKMS_TEST_CACHE:-$PWD/target/ckms-test-cache}
mkdir -p "$CKMS_TEST_CACHE"
# This checkout's profiles and recipes, whatever an installed ckms left in /etc or /usr/share/ckms.
export CKMS_DATA_DIR=$PWD
if [[ -n ${CKMS_BENCH_BIN:-} ]]; then
  bin=$CKMS_BENCH_BIN
else
  cargo build --quiet --release
  bin=$PWD/target/release/ckms
fi
work=$(mktemp -d /var/tmp/ckms-bench-make.XXXXXX)
trap 'rm -rf "$work" "$cli_time"' EXIT
# The build user of the builder image (images/builder.toml), as ckms runs builds.
build_user=$(awk -F' *= *' '/^\[user\]/ { u = 1 } u && $1 == "uid" { id = $2 } u && $1 == "gid" { print id ":" $2; exit }' images/builder.toml)

endpoint() {
  case $1 in
    podman) echo "unix:///run/user/$uid/podman/podman.sock" ;;
    docker) echo "unix:///var/run/docker.sock" ;;
  esac
}
engine_cli() {
  local engine=$1
  shift
  # Podman's CLI does the engine's work itself (no service): its own CPU time is counted, as
  # user+system seconds written to $cli_time.
  case $engine in
    podman) (cd / && runuser -u "$user" -- env XDG_RUNTIME_DIR="/run/user/$uid" \
      /usr/bin/time -o "$cli_time" -f '%U %S' podman "$@") ;;
    docker) docker -H unix:///var/run/docker.sock "$@" ;;
  esac
}
cli_time=$(mktemp /tmp/ckms-bench-cli.XXXXXX)
chmod 666 "$cli_time"
# The engine service's CPU time so far, in clock ticks: the Podman service of $user (the
# processes of `podman system service`; conmon and the OCI runtime are per container, as with
# the CLI) or dockerd and containerd (the shims are per container).
service_ticks() {
  local pids p total=0 stat fields
  case $1 in
    podman) pids=$(pgrep -u "$user" -f '^podman system service' || true) ;;
    docker) pids="$(pgrep -x dockerd || true) $(pgrep -x containerd || true)" ;;
  esac
  for p in $pids; do
    stat=$(<"/proc/$p/stat") || continue
    read -r -a fields <<<"${stat##*) }"
    # utime stime cutime cstime (fields 14-17 of stat; 12-15 after the command name)
    total=$((total + fields[11] + fields[12] + fields[13] + fields[14]))
  done
  echo "$total"
}
hz=$(getconf CLK_TCK)
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# The sources: each package's /usr/src/<module>-<version>, unpacked from the .deb.
mkdir -p "$work/debs" "$work/root"
# As root into a directory _apt cannot enter: no sandbox user for the download.
(cd "$work/debs" && apt-get -q=2 -o APT::Sandbox::User=root download "${packages[@]}")
for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
src=$work/root/usr/src
declare -A module version
for p in "${packages[@]}"; do
  dir=$(dpkg-deb -c "$work"/debs/"${p}"_*.deb | awk '$6 ~ /^\.\/usr\/src\/[^/]+\/dkms\.conf$/ { split($6, a, "/"); print a[4] }' | head -n1)
  [[ -n $dir ]] || {
    echo "$p holds no usr/src/<module>-<version>/dkms.conf" >&2
    exit 1
  }
  module[$p]=${dir%-*}
  version[$p]=${dir##*-}
done

ckms_build() { # engine package run
  "$bin" --engine "$(endpoint "$1")" --cache-dir "$CKMS_TEST_CACHE" build -m "${module[$2]}" -v "${version[$2]}" \
    -k "$kernel" --sourcetree "$src" --dkmstree "$work/tree-$1" --force
}

# Untimed: the builder image on each engine, then one build per pair, which tells the image
# reference and the make command line (the first line after "Building module" that is not a
# note about the conf or an excluded module).
declare -A image make_line
echo "kernel $kernel; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); ckms $("$bin" --version | awk '{ print $2 }')"
for e in "${engines[@]}"; do
  "$bin" --engine "$(endpoint "$e")" --cache-dir "$CKMS_TEST_CACHE" -q image build -k "$kernel" >/dev/null
  for p in "${packages[@]}"; do
    out=$(ckms_build "$e" "$p" 2>&1) || {
      echo "$out" >&2
      echo "ckms could not build ${module[$p]}/${version[$p]} on $e" >&2
      exit 1
    }
    image[$e]=$(awk '/^Building module / { print $NF; exit }' <<<"$out")
    make_line[$e/$p]=$(awk '/^Building module / { b = 1; next } b && !/dkms\.conf: / && !/ is not built for / { print; exit }' <<<"$out")
    echo "$e ${image[$e]}: ${module[$p]}/${version[$p]}: ${make_line[$e/$p]}"
  done
done

# One side once; prints `name=value ...`.
side_ckms() { # engine package run
  local t0 c0 rc=0 secs cpu
  c0=$(service_ticks "$1")
  t0=$(now)
  ckms_build "$1" "$2" >"$work/ckms-$1-$2-$3.log" 2>&1 || rc=$?
  secs=$(since "$t0")
  cpu=$(awk -v t="$(($(service_ticks "$1") - c0))" -v hz="$hz" 'BEGIN { printf "%.2f", t / hz }')
  echo "exit=$rc secs=$secs engine_cpu=$cpu"
}
side_make() { # engine package run
  local t0 c0 rc=0 secs cpu build=/var/lib/dkms/${module[$2]}/${version[$2]}/build
  : >"$cli_time"
  c0=$(service_ticks "$1")
  t0=$(now)
  # shellcheck disable=SC2016 # expanded by the container's bash
  tar -C "$src/${module[$2]}-${version[$2]}" -c . |
    engine_cli "$1" run -i --rm --network none --user "$build_user" -v /var/lib/dkms "${image[$1]}" \
      bash -c 'mkdir -p "$1" && tar -x -C "$1" && cd "$1" && eval "$2"' bash "$build" "${make_line[$1/$2]}" \
      >"$work/make-$1-$2-$3.log" 2>&1 || rc=$?
  secs=$(since "$t0")
  # The service's CPU, plus Podman's CLI's own.
  cpu=$(awk -v t="$(($(service_ticks "$1") - c0))" -v hz="$hz" -v cli="$(tail -n1 "$cli_time")" \
    'BEGIN { split(cli, c, " "); printf "%.2f", t / hz + c[1] + c[2] }')
  echo "exit=$rc secs=$secs engine_cpu=$cpu"
}

declare -A figures
for i in $(seq "$runs"); do
  for e in "${engines[@]}"; do
    for p in "${packages[@]}"; do
      for side in ckms make; do
        line=$("side_$side" "$e" "$p" "$i")
        echo "  run $i $e ${module[$p]} $side: $line"
        for kv in $line; do
          figures[$e/$p/$side/${kv%%=*}]+="${kv#*=} "
        done
      done
    done
  done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
echo "median of $runs run(s), load now $(cut -d' ' -f1-3 /proc/loadavg):"
printf '%-7s %-15s %8s %8s %7s %-11s %11s %7s %11s %7s\n' engine module make_s ckms_s ratio goal engine_cpu_s share make_cpu_s share
for e in "${engines[@]}"; do
  for p in "${packages[@]}"; do
    k=$e/$p
    fails=$(echo "${figures[$k/ckms/exit]} ${figures[$k/make/exit]}" | tr ' ' '\n' | grep -cv '^0\?$' || true)
    m=$(echo "${figures[$k/make/secs]}" | median)
    c=$(echo "${figures[$k/ckms/secs]}" | median)
    cpu=$(echo "${figures[$k/ckms/engine_cpu]}" | median)
    mcpu=$(echo "${figures[$k/make/engine_cpu]}" | median)
    awk -v e="$e" -v p="${module[$p]}" -v m="$m" -v c="$c" -v cpu="$cpu" -v mcpu="$mcpu" -v f="$fails" 'BEGIN {
      goal = (c <= m * 1.10 || c - m <= 1) ? "within" : "NOT within";
      if (f > 0) goal = f " failed";
      printf "%-7s %-15s %8.2f %8.2f %7.2f %-11s %11.2f %6.1f%% %11.2f %6.1f%%\n", e, p, m, c, c / m, goal, cpu, cpu / c * 100, mcpu, mcpu / m * 100 }'
  done
done
echo "goal: ckms within 1.10x or 1 s of make; engine CPU during ckms under 2% of its wall time."
echo "make_cpu_s: the engine's CPU during the direct run: dockerd and containerd; for Podman its CLI's own"
echo "(user+system), which does there what the service does for ckms, plus the service's (idle) CPU."
