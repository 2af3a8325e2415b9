#!/usr/bin/env bash
# The reference side of ci/bench/corpus.sh, run INSIDE a container of the kernel's suite (made by
# mmdebstrap from Debian's own packages; for a kernel of another architecture, a chroot of that
# architecture under qemu-user), as root, with the network: a user's machine where
# `apt-get install dkms linux-headers-K linux-image-K <every *-dkms package>` ran, then each
# module is built with `dkms build -m M -v V -k K`, timed.
# usage (in the container, ci/bench mounted at /corpus, the run's directory at OUT):
#   corpus-reference.sh setup KERNEL OUT PACKAGE...   install everything (untimed)
#   corpus-reference.sh build KERNEL OUT PACKAGE      build the package's modules, one after another
# Writes OUT/env (versions), OUT/install.log, and per package OUT/pkgs/<package>/:
#   install   "ok", or "uninstallable" and apt's reason
#   modules   one "<module> <version>" line per /usr/src/<module>-<version>/dkms.conf it ships
#   <module>/ exit, secs, files (module file names, one a line), make.log, out (dkms's output)
set -uo pipefail
# shellcheck source=ci/bench/corpus-lib.sh
. "$(dirname "$0")/corpus-lib.sh"
verb=$1 kernel=$2 out=$3
shift 3
export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -q -y -o Dpkg::Use-Pty=0 "$@"; }

setup() {
  # The packages' postinsts (dkms's common.postinst) would add and build every module for every
  # kernel with headers; this file, which dkms's Debian versions honour, makes them skip that, so
  # that each build is timed on its own. The kernel hooks then find nothing added to build.
  mkdir -p /etc/dkms "$out/pkgs"
  touch /etc/dkms/no-autoinstall
  # Keep the downloaded .debs in the cache volume for the next run.
  echo 'APT::Keep-Downloaded-Packages "true";' >/etc/apt/apt.conf.d/90ckms-corpus-keep
  apt_get update >"$out/install.log" 2>&1 || { tail -n 20 "$out/install.log" >&2; die "apt-get update failed"; }
  # The kernel: its headers to build against, its image so that dkms compresses as its modules are.
  apt_get install "linux-headers-$kernel" "linux-image-$kernel" dkms >>"$out/install.log" 2>&1 ||
    { tail -n 20 "$out/install.log" >&2; die "cannot install kernel $kernel or dkms"; }
  # All packages in one transaction, as `apt install a-dkms b-dkms ...` would; if apt refuses,
  # each on its own, so that one uninstallable package does not hide the others.
  local p one
  if ! apt_get install "$@" >>"$out/install.log" 2>&1; then
    echo "corpus-reference: installing all $# packages at once failed; one by one" >&2
    for p in "$@"; do
      mkdir -p "$out/pkgs/$p"
      one=$out/pkgs/$p/install.log
      apt_get install "$p" >"$one" 2>&1 ||
        { echo uninstallable; grep -E '^(E:| )' "$one" | head -n 12; } >"$out/pkgs/$p/install"
    done
  fi
  for p in "$@"; do
    mkdir -p "$out/pkgs/$p"
    [[ -s $out/pkgs/$p/install ]] && continue
    if installed "$p"; then
      installed_ok "$p"
    else
      # Installed on its own, then removed by a later package that Conflicts with it (dahdi-dkms
      # and osmocom-dahdi-dkms): a user has one or the other. `build` installs it in its turn.
      echo later >"$out/pkgs/$p/install"
    fi
  done
  {
    echo "dkms $(dpkg-query -W -f '${Version}' dkms)"
    echo "linux-headers-$kernel $(dpkg-query -W -f '${Version}' "linux-headers-$kernel")"
    echo "gcc $(readlink -f "$(command -v gcc)")"
    echo "nproc $(nproc)"
    # Modules some postinst built despite no-autoinstall (expected: 0).
    echo "prebuilt $(find /var/lib/dkms -mindepth 3 -maxdepth 3 -name "$kernel" | wc -l)"
  } >"$out/env"
}

installed() { [[ $(dpkg-query -W -f '${Status}' "$1" 2>/dev/null) == 'install ok installed' ]]; }
installed_ok() {
  echo ok >"$out/pkgs/$1/install"
  dpkg-query -L "$1" | grep -E '^/usr/src/[^/]+/dkms\.conf$' | module_versions >"$out/pkgs/$1/modules"
}

build() {
  local p=$1 d m v md t0 rc built f
  d=$out/pkgs/$p
  # Not installed now: it conflicts with a package installed after it (see setup).
  if ! installed "$p"; then
    if apt_get install "$p" >"$d/install.log" 2>&1; then
      installed_ok "$p"
    else
      { echo uninstallable; grep -E '^(E:| )' "$d/install.log" | head -n 12; } >"$d/install"
      return
    fi
  fi
  while read -r m v; do
    md=$d/$m
    mkdir -p "$md"
    # A kept machine (ci/bench/corpus.sh's chroot of another architecture) holds the last run's
    # build, which `dkms build` would refuse to redo: back to "added".
    rm -rf "/var/lib/dkms/$m/$v/$kernel" "/var/lib/dkms/$m/$v/build"
    t0=$(now)
    rc=0
    timeout "${CORPUS_BUILD_TIMEOUT:-3600}" dkms build -m "$m" -v "$v" -k "$kernel" </dev/null >"$md/out" 2>&1 || rc=$?
    elapsed "$t0" >"$md/secs"
    echo "$rc" >"$md/exit"
    built=/var/lib/dkms/$m/$v/$kernel/$(uname -m)
    list_module_files "$built/module" >"$md/files"
    for f in "$built/log/make.log" "/var/lib/dkms/$m/$v/build/make.log"; do
      [[ -f $f ]] && { cp "$f" "$md/make.log"; break; }
    done
  done <"$d/modules"
}

case $verb in
  setup) setup "$@" ;;
  build) build "$1" ;;
  *) die "unknown verb $verb" ;;
esac
