#!/usr/bin/env bash
# What building ckms needs on a fresh Debian machine besides Rust and gcc: OpenSSL's headers
# and pkg-config (the openssl crate links the system libcrypto, which signs modules), and the
# openssl command that tests/sign_file.rs checks signatures with; kmod (depmod); Debian's
# chromium, which tests/farm.rs renders the farm's HTML report in; busybox-static; what
# tests/publish.rs needs (and tests/farm_rotation.rs: gpg); qemu-user-static and arch-test
# (tests/publish_arm64.rs); curl (tests/farm_overlap.rs); kubernetes-validate (PyPI), which tests/kube_manifests.rs checks the
# Kubernetes manifests with; python3's jsonschema and yaml, which tests/kmm_crd.rs checks the
# KMM Module with; SoftHSM2, OpenSC's pkcs11-tool and OpenSSL's pkcs11 provider, which the token
# signing tests (tests/sign_file.rs, tests/farm_token.rs) use; shellcheck, which ci/test runs
# over the shell scripts; grub-editenv, which tests/gate.rs reads GRUB's saved default with;
# man, zsh and fish, which tests/docs.rs checks the package's man pages and completions with.
# Idempotent.
set -euo pipefail
need=()
pkg-config --exists openssl 2>/dev/null || need+=(libssl-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v openssl >/dev/null || need+=(openssl)
# depmod: install tests index modules with the host's own depmod, as dkms does.
command -v depmod >/dev/null || [ -x /sbin/depmod ] || need+=(kmod)
command -v chromium >/dev/null || need+=(chromium)
# The engine tests run a static busybox as their whole image (no image can be pulled).
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
# farm publish (tests/publish.rs): gpg makes the farm's key and gpgv checks the InRelease;
# mmdebstrap makes the clean bookworm that apt installs the packages in; erofs-utils and
# squashfs-tools make (and read back) system extension images.
command -v gpg >/dev/null || need+=(gnupg)
command -v gpgv >/dev/null || need+=(gpgv)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v mkfs.erofs >/dev/null || need+=(erofs-utils)
command -v mksquashfs >/dev/null || need+=(squashfs-tools)
# farm publish of arm64 pairs (tests/publish_arm64.rs): apt installs them in an arm64 Debian that
# mmdebstrap makes (arch-test: it checks that the architecture runs here) and that runs under
# qemu-user; Podman runs the arm64 KMM image under it too.
command -v arch-test >/dev/null || need+=(arch-test)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
# ci/test checks the shell the Debian package ships and the scripts that build and try it.
command -v shellcheck >/dev/null || need+=(shellcheck)
# tests/docs.rs reads the package's man pages with man and parses its completions with each shell.
command -v man >/dev/null || need+=(man-db)
command -v zsh >/dev/null || need+=(zsh)
command -v fish >/dev/null || need+=(fish)
# tests/farm_overlap.rs counts the containers the builds created in the engine's event log.
command -v curl >/dev/null || need+=(curl)
# [gate] keep-default sets GRUB's saved default with grub-editenv (tests/gate.rs).
command -v grub-editenv >/dev/null || need+=(grub-common)
# farm publish --format kmm --registry (tests/publish.rs): a real registry on loopback.
command -v docker-registry >/dev/null || need+=(docker-registry)
# farm kube render (tests/kube_manifests.rs): pip, for kubernetes-validate below.
command -v python3 >/dev/null || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
# farm publish --format kmm (tests/kmm_crd.rs): module.yaml against KMM's CRD schema.
python3 -c 'import jsonschema' 2>/dev/null || need+=(python3-jsonschema)
python3 -c 'import yaml' 2>/dev/null || need+=(python3-yaml)
# PKCS#11 signing: a software token, the tool that makes a key in it, and the provider through
# which sign-file and ckms reach it.
command -v softhsm2-util >/dev/null || need+=(softhsm2)
command -v pkcs11-tool >/dev/null || need+=(opensc)
provider="$(openssl version -m 2>/dev/null | sed -n 's/^MODULESDIR: "\(.*\)"$/\1/p')/pkcs11.so"
[ -f "$provider" ] || need+=(pkcs11-provider)
if [[ " ${need[*]} " == *" pkcs11-provider "* ]] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  if ! apt-cache show pkcs11-provider >/dev/null 2>&1; then
    # Not in bookworm itself, in bookworm-backports: from the mirror this host already uses.
    # shellcheck source=/dev/null
    . /etc/os-release
    # shellcheck disable=SC2016 # apt's own placeholders, not the shell's
    mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Identifier: Packages' |
      awk -v suite="$VERSION_CODENAME" '$2 == suite { print $1; exit }')
    [ -n "$mirror" ] || { echo "setup-build-deps: no apt source for $VERSION_CODENAME to find its backports" >&2; exit 1; }
    echo "[setup-build-deps] adding $VERSION_CODENAME-backports from $mirror for pkcs11-provider"
    printf 'Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main\n' "$mirror" "$VERSION_CODENAME" \
      >/etc/apt/sources.list.d/ckms-backports.sources
  fi
fi
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "setup-build-deps: run as root to install ${need[*]}" >&2; exit 1; }
  echo "[setup-build-deps] installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# qemu-user-static registers its interpreters through binfmt-support or systemd-binfmt; where
# neither ran (a VM or container without systemd), the arm64 one is registered here, with its
# flags (F: the interpreter is opened now, so it also runs in chroots and containers).
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && [ "$(id -u)" = 0 ]; then
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  echo "[setup-build-deps] registering qemu-aarch64 with binfmt_misc"
  grep -v '^#' /usr/lib/binfmt.d/qemu-aarch64.conf >/proc/sys/fs/binfmt_misc/register
fi
# kubernetes-validate, the API's schemas, is on PyPI only. Debian's python3 is externally
# managed (PEP 668): pip installs beside apt's packages, into /usr/local, only when told.
if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  pip_args=(--quiet)
  stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
  [ ! -e "$stdlib/EXTERNALLY-MANAGED" ] || pip_args+=(--break-system-packages)
  echo "[setup-build-deps] installing kubernetes-validate"
  python3 -m pip install "${pip_args[@]}" kubernetes-validate==1.37.0
fi
# A python3 that is not Debian's (e.g. pyenv's first on PATH) does not see apt's modules:
# say so here rather than in a failing test.
python3 -c 'import jsonschema, yaml' || {
  echo "setup-build-deps: $(command -v python3) cannot import jsonschema and yaml (tests/kmm_crd.rs needs them)" >&2
  exit 1
}
