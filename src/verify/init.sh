#!/bin/busybox sh
# PID 1 of ckms's verification VM (the initramfs's /init): load every module listed in
# /ckms/modules ("role name path" lines, dependencies first), or with modprobe those of
# /ckms/modprobe, print what insmod and the kernel
# said about each on the serial console with a "ckms-verify:" prefix, then power off.
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# Kernel messages are read with dmesg after each module, not interleaved on the console.
dmesg -n 1
echo "ckms-verify: kernel $(uname -r)"
dmesg -c >/dev/null
while read -r role name path; do
  if out=$(insmod "$path" 2>&1); then rc=0; else rc=$?; fi
  echo "ckms-verify: $role $name rc=$rc"
  [ -n "$out" ] && echo "$out" | sed 's/^/ckms-verify: insmod: /'
  dmesg -c | sed 's/^/ckms-verify: kernel: /'
done < /ckms/modules
# `ckms verify --tree/--sysext`: a preparation (the extensions' merge), then the
# distribution's modprobe (/ckms/bin: by path, busybox's sh prefers its own applets) for each
# module, as the module's consumer runs it.
[ -x /ckms/prepare ] && { /ckms/prepare 2>&1 || echo "exit status $?"; } | sed 's/^/ckms-verify: prepare: /'
[ -f /ckms/modprobe ] && while read -r name; do
  # shellcheck disable=SC2046 # the arguments are words
  if out=$(/ckms/bin/modprobe -v $(cat /ckms/modprobe.args) "$name" 2>&1); then rc=0; else rc=$?; fi
  echo "ckms-verify: module $name rc=$rc"
  [ -n "$out" ] && echo "$out" | sed 's/^/ckms-verify: insmod: /'
  dmesg -c | sed 's/^/ckms-verify: kernel: /'
done < /ckms/modprobe
echo "ckms-verify: done"
poweroff -f
