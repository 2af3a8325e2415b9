#!/usr/bin/env bash
# The corpus: every module source package (`*-dkms`, depending on dkms) of a kernel's suite,
# built for that kernel by real dkms on a user's machine and by ckms, compared per package
# (the same module files, or both fail) and timed on both sides in the same run.
#
#   dkms: a container of the kernel's suite, made with mmdebstrap from the host's apt sources and
#         `docker import`ed (cached per suite and day); in it, as root with the network, apt
#         installs dkms, linux-headers-K, linux-image-K and all the packages (their Depends too),
#         then `dkms build -m M -v V -k K` per module (ci/bench/corpus-reference.sh). Always Docker:
#         rootless Podman's networking does not reach the mirror here.
#         A kernel of another architecture (6.1.0-56-arm64 on this amd64 machine): the same in a
#         chroot of that architecture (`mmdebstrap --arch`) under qemu-user-static (binfmt_misc),
#         made and set up once, then kept ($CORPUS_CHROOT_CACHE, default /var/tmp/ckms-corpus-chroot);
#         dkms and gcc then run emulated: the times are not comparable with ckms's, the results are.
#   ckms, -m farm (default): once dkms has built every package one after another, one
#         `ckms farm build --store S -k K deb:P1 deb:P2 ...` (the packages through the profile's
#         signed index, their Depends in the images), cold (empty store), timed as a whole;
#         then the same command again (warm: nothing to build), timed.
#   ckms, -m build: `ckms add deb:P` into one source tree per run, then `ckms build -m M -v V
#         -k K` per module, alternating with dkms per package, so that the machine's load hits
#         both alike.
#   ckms, -m dkms: as -m build, through the dkms verbs a package's maintainer script runs: ckms
#         called as `dkms` (speaking the dkms release of the kernel's distribution) adds each
#         package's source from its .deb (`dkms add deb:P`), then `dkms build -m M -v V -k K`.
#
# usage: ci/bench/corpus.sh [-k KERNEL] [-e ENGINE] [-p PACKAGE]... [-o DIR] [-s SIDES] [-m MODE]
#   -k KERNEL   a release (6.1.0-56-amd64, 6.1.0-56-arm64), or one of the issue's four: bookworm (6.1.0-56-amd64),
#               bookworm-6.12, trixie, sid (the newest 6.12.*+deb12, 6.12.*+deb13, 7.*+deb14).
#               Default: bookworm.
#   -e ENGINE   ckms's engine: podman (default, user ${CKMS_USER:-ckms}'s rootless socket),
#               docker, or an endpoint (unix:///...).
#   -p PACKAGE  only these packages (repeatable; default: the whole corpus).
#   -o DIR      where results go (default /var/tmp/ckms-corpus/<kernel>-<time>): results.jsonl,
#               table.md, and per side and package the exit code, module files, make.log, time.
#               The directory of an interrupted run: dkms's side goes on where it stopped.
#   -s SIDES    dkms,ckms (default), or one of them (the other's results are then left out).
#   -m MODE     farm (default), build or dkms: how the ckms side builds (above).
#   -S STORE    the farm's store (default: a new one in DIR): a store shared by several runs,
#               to build a matrix of kernels into one (each run is still cold for its kernel).
# Run as root after ci/setup-engines.sh. Env: CKMS_TEST_CACHE (ckms's cache, default
# target/ckms-test-cache), CORPUS_BUILD_TIMEOUT (seconds per build, default 3600; emulated
# dkms: 14400), CORPUS_CHROOT_CACHE (above).
set -euo pipefail
cd "$(dirname "$0")/../.."
bench=$PWD/ci/bench
# shellcheck source=ci/bench/corpus-lib.sh
. "$bench/corpus-lib.sh"

kernel=bookworm engine=podman out='' sides=dkms,ckms mode=farm store=''
packages=()
while getopts k:e:p:o:s:m:S:h opt; do
  case $opt in
    k) kernel=$OPTARG ;;
    e) engine=$OPTARG ;;
    p) packages+=("$OPTARG") ;;
    o) out=$OPTARG ;;
    s) sides=$OPTARG ;;
    m) mode=$OPTARG ;;
    S) store=$OPTARG ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
  esac
done
engine=$(engine_url "$engine")
bench_env
command -v mmdebstrap >/dev/null || apt-get install -y -q mmdebstrap >/dev/null
[[ -x /usr/bin/time ]] || apt-get install -y -q time >/dev/null
cargo build --quiet --release
ckms_bin=${CARGO_TARGET_DIR:-$PWD/target}/release/ckms
ckms() { "$ckms_bin" --engine "$engine" --cache-dir "$CKMS_TEST_CACHE" "$@"; }
# The `result` of a `ckms --json` command.
ckms_result() { ckms --json "$@" | python3 -c 'import json,sys
for line in sys.stdin:
    doc = json.loads(line)
    if doc.get("event") == "result": print(json.dumps(doc["result"]))'; }

# The kernel: a release, or the newest one the issue's series names.
case $kernel in
  bookworm) kernel=6.1.0-56-amd64 ;;
  bookworm-6.12) series='^6\.12\.[0-9]+\+deb12-amd64$' ;;
  trixie) series='^6\.12\.[0-9]+\+deb13-amd64$' ;;
  sid) series='^7\.[0-9.]+\+deb14-amd64$' ;;
esac
if [[ -n ${series:-} ]]; then
  kernel=$(ckms_result kernels | python3 -c 'import json,re,sys
found = [k["release"] for k in json.load(sys.stdin) if re.search(sys.argv[1], k["release"])]
print(found[-1] if found else "")' "$series")
  [[ -n $kernel ]] || die "no kernel matches $series (ckms kernels lists what the profiles offer)"
fi
profile=$(ckms_result kernels | python3 -c 'import json,sys
print(next((k["profile"] for k in json.load(sys.stdin) if k["release"] == sys.argv[1]), ""))' "$kernel")
[[ -n $profile ]] || die "no profile offers kernel $kernel (ckms kernels lists them)"
# A profile of another architecture than this machine's is its file's name plus "-<arch>"
# (profiles/architectures.toml); `machine` is that architecture's `uname -m` (dkms's $arch).
host_arch=$(dpkg --print-architecture) arch=$host_arch profile_file=profiles/$profile.toml
if [[ ! -f $profile_file ]]; then arch=${profile##*-} profile_file=profiles/${profile%-*}.toml; fi
machine=$(python3 -c 'import sys,tomllib; print(tomllib.load(open(sys.argv[1], "rb"))[sys.argv[2]]["machine"])' \
  profiles/architectures.toml "$arch") || die "profiles/architectures.toml does not know $arch"
dkms_release=$(sed -n 's/^dkms = "\(.*\)"$/\1/p' "$profile_file")

out=${out:-/var/tmp/ckms-corpus/$kernel-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out/ref" "$out/ckms/bin"
ln -sf "$ckms_bin" "$out/ckms/bin/dkms"
# ckms called as `dkms` (-m dkms): its engine and cache from the environment, speaking the dkms
# release of the kernel's distribution; /etc/dkms and dkms's signing key as on a new system
# (empty directories of the run), whatever this machine's are.
mkdir -p "$out/ckms/etc-dkms" "$out/ckms/mok"
dkms_as=(env "CKMS_ENGINE_HOST=$engine" "CKMS_CACHE_DIR=$CKMS_TEST_CACHE" "CKMS_DKMS_RELEASE=$dkms_release"
  "CKMS_CONF_DIR=$out/ckms/etc-dkms" "CKMS_DKMS_MOK_DIR=$out/ckms/mok" "$out/ckms/bin/dkms")
# Every module source package of the profile's suites, as its signed index lists it.
ckms_result packages --profile "$profile" --dkms -- '-dkms$' >"$out/corpus.json"
mapfile -t corpus < <(python3 -c 'import json,sys
want = set(sys.argv[2:])
for p in json.load(open(sys.argv[1]))["packages"]:
    if not want or p["name"] in want: print(p["name"])' "$out/corpus.json" "${packages[@]}")
((${#corpus[@]})) || die "none of the packages asked for is a module source package of $profile"
suite=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["suites"][0]["suite"])' "$out/corpus.json")
cat >"$out/run.env" <<EOF
kernel=$kernel
profile=$profile
arch=$arch
suite=$suite
engine=$engine
mode=$mode
packages=${#corpus[@]}
host_nproc=$(nproc)
started=$(date -u +%FT%TZ)
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
EOF
echo "corpus: $kernel ($profile): ${#corpus[@]} packages; results in $out" >&2
want_side() { [[ ,$sides, == *,$1,* ]]; }

# ---- the reference machine ---------------------------------------------------------------
# Made by mmdebstrap from the profile's suites with the mirrors ckms resolved (the host's apt
# sources, or ckms's config), and the host's apt settings on index freshness (a mirror that is a
# frozen snapshot needs Check-Valid-Until off), as ckms itself follows them; they stay in the
# machine's apt config.
base_args() {
  mapfile -t sources < <(python3 -c 'import json,sys
for s in json.load(open(sys.argv[1]))["suites"]: print("deb %s %s main" % (s["mirror"], s["suite"]))' "$out/corpus.json")
  mapfile -t aptopts < <(apt-config dump | grep -E '^Acquire::Check-(Valid-Until|Date) ' | sed 's/^/--aptopt=/')
}

# This machine's architecture: a Docker container.
ref_container=ckms-corpus-$$
ref_setup_docker() {
  local image tar sources aptopts
  image=ckms-corpus/$suite:$(date -u +%Y%m%d)
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    base_args
    tar=$(mktemp /var/tmp/ckms-corpus-base.XXXXXX.tar)
    echo "corpus: making $image with mmdebstrap" >&2
    mmdebstrap --quiet --variant=apt --components=main "${aptopts[@]}" "$suite" "$tar" "${sources[@]}" ||
      die "mmdebstrap $suite failed"
    docker import "$tar" "$image" >/dev/null
    rm -f "$tar"
  fi
  docker run -d --name "$ref_container" -v "ckms-corpus-apt-$suite:/var/cache/apt/archives" \
    -v "$bench:/corpus:ro" -v "$out/ref:/out" "$image" sleep infinity >/dev/null
  local t0
  t0=$(now)
  docker exec "$ref_container" bash /corpus/corpus-reference.sh setup "$kernel" /out "${corpus[@]}" ||
    die "the reference machine could not be set up: see $out/ref/install.log"
  echo "setup_secs=$(elapsed "$t0")" >>"$out/ref/env"
}

# Another architecture (an arm64 kernel on this amd64 machine): this machine has no KVM, and
# Docker runs no image of another architecture without more set-up, so the reference is a chroot
# made by `mmdebstrap --arch=ARCH` whose programs run under qemu-user-static through binfmt_misc
# (registered with the F flag: the interpreter is opened at registration, so it runs inside the
# chroot with no copy there). Made once and kept, with everything apt installed, in
# $CORPUS_CHROOT_CACHE (default /var/tmp/ckms-corpus-chroot)/<suite>-<arch>-<kernel>: root/ the
# chroot, setup/ what the setup wrote (copied into each run's ref/; its setup_secs are those of
# the run that installed the packages) and the packages it installed. Delete the directory to
# start again from mmdebstrap.
emu_dir=${CORPUS_CHROOT_CACHE:-/var/tmp/ckms-corpus-chroot}/$suite-$arch-$kernel
emu_root=$emu_dir/root
emu_mounted=()
emu_binfmt() {
  local fmt=/proc/sys/fs/binfmt_misc
  [[ -e $fmt/register ]] || mount -t binfmt_misc binfmt_misc "$fmt" || die "cannot mount binfmt_misc on $fmt"
  [[ -x /usr/bin/qemu-$machine-static ]] || apt-get install -y -q qemu-user-static >/dev/null
  [[ -e $fmt/qemu-$machine ]] || cat "/usr/lib/binfmt.d/qemu-$machine.conf" >"$fmt/register" ||
    die "cannot register qemu-$machine-static with binfmt_misc"
  grep -qx enabled "$fmt/qemu-$machine" || die "binfmt_misc's qemu-$machine is disabled"
  grep -q '^flags: .*F' "$fmt/qemu-$machine" ||
    die "binfmt_misc's qemu-$machine lacks the F flag (a chroot cannot reach its interpreter)"
}
# Mounts into the chroot: emu_mount PATH MOUNT-ARGUMENT...; emu_umount undoes them all.
emu_mount() {
  local at=$emu_root$1
  shift
  mkdir -p "$at"
  mount "$@" "$at" || die "cannot mount $at"
  emu_mounted=("$at" "${emu_mounted[@]}")
}
emu_umount() {
  local at
  for at in "${emu_mounted[@]}"; do umount "$at" 2>/dev/null || umount -l "$at"; done
  emu_mounted=()
}
emu_chroot() {
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
    CORPUS_BUILD_TIMEOUT="${CORPUS_BUILD_TIMEOUT:-14400}" chroot "$emu_root" "$@"
}
emu_run() { emu_chroot bash /corpus/corpus-reference.sh "$@"; }
ref_setup_emulated() {
  local sources aptopts t0 p missing
  emu_binfmt
  if [[ ! -e $emu_dir/base.done ]]; then
    base_args
    rm -rf "$emu_root"
    mkdir -p "$emu_dir"
    echo "corpus: making an $arch $suite chroot in $emu_root with mmdebstrap" >&2
    mmdebstrap --quiet --arch="$arch" --variant=apt --components=main "${aptopts[@]}" "$suite" "$emu_root" "${sources[@]}" ||
      die "mmdebstrap --arch=$arch $suite failed"
    date -u +%FT%TZ >"$emu_dir/base.done"
  fi
  # apt in the chroot reaches the mirror through this machine's network and resolver.
  cp -L /etc/resolv.conf "$emu_root/etc/resolv.conf"
  emu_mount /proc -t proc proc
  emu_mount /corpus --bind -o ro "$bench"
  emu_mount /out --bind "$out/ref"
  # The initramfs has no part in a module build, and update-initramfs takes 20-25 minutes under
  # emulation here (the kernel's postinst runs it, and every trigger of initramfs-tools): a no-op
  # in the chroot, diverted (the package's own goes beside it, .distrib).
  if [[ $(emu_chroot dpkg-divert --listpackage /usr/sbin/update-initramfs) != LOCAL ]]; then
    emu_chroot dpkg-divert --quiet --local --rename --divert /usr/sbin/update-initramfs.distrib \
      --add /usr/sbin/update-initramfs
    printf '#!/bin/sh\n# ci/bench/corpus.sh: no initramfs in the reference chroot\nexit 0\n' >"$emu_root/usr/sbin/update-initramfs"
    chmod 755 "$emu_root/usr/sbin/update-initramfs"
  fi
  mkdir -p "$out/ref/pkgs"
  missing=$(comm -13 <(sort -u "$emu_dir/setup/packages" 2>/dev/null) <(printf '%s\n' "${corpus[@]}" | sort -u))
  if [[ -z $missing ]]; then
    echo "corpus: the $arch chroot has every package already (set up $(cat "$emu_dir/setup/date"))" >&2
    cp "$emu_dir/setup/env" "$emu_dir/setup/install.log" "$out/ref/"
    for p in "${corpus[@]}"; do cp -a "$emu_dir/setup/pkgs/$p" "$out/ref/pkgs/"; done
  else
    t0=$(now)
    emu_run setup "$kernel" /out "${corpus[@]}" ||
      die "the reference chroot could not be set up: see $out/ref/install.log"
    { echo "emulation $(qemu-"$machine"-static --version | head -n1)"; echo "setup_secs=$(elapsed "$t0")"; } >>"$out/ref/env"
    mkdir -p "$emu_dir/setup"
    cp -a "$out/ref/." "$emu_dir/setup/"
    { cat "$emu_dir/setup/packages" 2>/dev/null || true; printf '%s\n' "${corpus[@]}"; } | sort -u >"$emu_dir/setup/packages.new"
    mv "$emu_dir/setup/packages.new" "$emu_dir/setup/packages"
    date -u +%FT%TZ >"$emu_dir/setup/date"
  fi
}

ref_setup() { if [[ $arch == "$host_arch" ]]; then ref_setup_docker; else ref_setup_emulated; fi; }
ref_build() {
  if [[ $arch == "$host_arch" ]]; then
    docker exec "$ref_container" bash /corpus/corpus-reference.sh build "$kernel" /out "$1"
  else
    emu_run build "$kernel" /out "$1"
  fi
}
# Every module of package $1 has a reference result already (an -o DIR of an interrupted run).
ref_done() {
  local m v
  [[ -s $out/ref/pkgs/$1/modules ]] || return 1
  while read -r m v; do [[ -f $out/ref/pkgs/$1/$m/exit ]] || return 1; done <"$out/ref/pkgs/$1/modules"
}

# ---- ckms ----------------------------------------------------------------------------------
src=$out/ckms/src tree=$out/ckms/tree store=${store:-$out/ckms/store}
# Adds PACKAGE from the profile's signed repository (its source, and its Depends for the build);
# writes its "<module> <version>" line to $out/ckms/pkgs/PACKAGE/modules.
ckms_add() {
  local p=$1 d=$out/ckms/pkgs/$1 added
  mkdir -p "$d"
  if [[ $mode == dkms ]]; then
    # dkms's own line names what was added: "Creating symlink <tree>/<m>/<v>/source -> ...".
    if "${dkms_as[@]}" add "deb:$p" --profile "$profile" --sourcetree "$src" --dkmstree "$tree" >"$d/add.log" 2>&1; then
      sed -n 's|^Creating symlink .*/\([^/]*\)/\([^/]*\)/source -> .*|\1 \2|p' "$d/add.log" >"$d/modules"
      echo ok >"$d/install"
    else
      { echo "not added"; tail -n 3 "$d/add.log"; } >"$d/install"
    fi
  elif added=$(ckms_result add "deb:$p" --profile "$profile" --sourcetree "$src" --dkmstree "$tree" 2>"$d/add.log"); then
    python3 -c 'import json,sys; r = json.loads(sys.argv[1]); print(r["module"], r["version"])' "$added" >"$d/modules"
    echo ok >"$d/install"
  else
    { echo "not added"; tail -n 3 "$d/add.log"; } >"$d/install"
  fi
}
ckms_setup() {
  local t0 p
  t0=$(now)
  if [[ $mode == build || $mode == dkms ]]; then
    for p in "${corpus[@]}"; do ckms_add "$p"; done
  fi
  ckms -q image build -k "$kernel" >/dev/null
  echo "setup_secs=$(elapsed "$t0")" >"$out/ckms/env"
}
ckms_build() {
  local p=$1 m v md t0 rc pair
  while read -r m v; do
    md=$out/ckms/pkgs/$p/$m
    mkdir -p "$md"
    t0=$(now)
    rc=0
    if [[ $mode == dkms ]]; then
      timeout "${CORPUS_BUILD_TIMEOUT:-3600}" "${dkms_as[@]}" build -m "$m" -v "$v" -k "$kernel" \
        --sourcetree "$src" --dkmstree "$tree" </dev/null >"$md/out" 2>&1 || rc=$?
    else
      timeout "${CORPUS_BUILD_TIMEOUT:-3600}" "$ckms_bin" --engine "$engine" --cache-dir "$CKMS_TEST_CACHE" \
        build -m "$m" -v "$v" -k "$kernel" --sourcetree "$src" --dkmstree "$tree" </dev/null >"$md/out" 2>&1 || rc=$?
    fi
    elapsed "$t0" >"$md/secs"
    echo "$rc" >"$md/exit"
    pair=$tree/$m/$v
    list_module_files "$pair/$kernel/$machine/module" >"$md/files"
    for f in "$pair/$kernel/$machine/log/make.log" "$pair/build/make.log"; do
      [[ -f $f ]] && { cp "$f" "$md/make.log"; break; }
    done
  done <"$out/ckms/pkgs/$p/modules"
}

cleanup() {
  docker rm -f "$ref_container" >/dev/null 2>&1 || true
  emu_umount
}
trap cleanup EXIT
t_all=$(now)
if want_side dkms; then ref_setup; fi
if want_side ckms; then ckms_setup; fi
for p in "${corpus[@]}"; do
  echo "corpus: $p" >&2
  if want_side dkms && [[ $(head -n1 "$out/ref/pkgs/$p/install") =~ ^(ok|later)$ ]] && ! ref_done "$p"; then
    ref_build "$p"
  fi
  if want_side ckms && [[ $mode != farm ]]; then ckms_build "$p"; fi
done
if want_side ckms && [[ $mode == farm ]]; then
  # Cold (empty store), then warm (nothing changed); then the store read back per package.
  farm_args=(farm build --store "$store" -k "$kernel" --profile "$profile" "${corpus[@]/#/deb:}")
  for run in cold warm; do
    echo "corpus: ckms farm build ($run)" >&2
    t0=$(now)
    rc=0
    /usr/bin/time -f 'peak_rss_kib=%M' -o "$out/ckms/farm-$run.rss" "$ckms_bin" --engine "$engine" \
      --cache-dir "$CKMS_TEST_CACHE" --json "${farm_args[@]}" >"$out/ckms/farm-$run.jsonl" 2>"$out/ckms/farm-$run.err" || rc=$?
    echo "farm_${run}_secs=$(elapsed "$t0")" >>"$out/ckms/env"
    echo "farm_${run}_exit=$rc" >>"$out/ckms/env"
    sed "s/^/farm_${run}_/" "$out/ckms/farm-$run.rss" >>"$out/ckms/env"
  done
fi
cat >>"$out/run.env" <<EOF
finished=$(date -u +%FT%TZ)
load_at_end=$(cut -d' ' -f1-3 /proc/loadavg)
total_secs=$(elapsed "$t_all")
EOF
from_store=()
if want_side ckms && [[ $mode == farm ]]; then from_store=(--from-store "$store"); fi
python3 "$bench/corpus-compare.py" "${from_store[@]}" "$out"
