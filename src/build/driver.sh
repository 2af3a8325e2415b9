# ckms: build one module package for one kernel, the way dkms's actual_build does, inside the
# sandboxed builder container (non-root, no network, read-only root; writable: two volumes,
# the dkms tree and the source tree, and the tmpfs). One container does it all, in two phases:
#   1. evaluate dkms.conf with eval.sh (bash, a separate process) into $ckms_dir/conf.json,
#      then wait for the host, which resolves the directives for this kernel and writes its
#      plan into $ckms_dir/plan/ (one value per file, `ready` last; `abort` = nothing to do);
#   2. run the plan.
#
# Input (environment): dkms's variables (kernelver arch module module_version ...), eval.sh's
# (ckms_conf ckms_override_dir), and
#   ckms_dir         ckms's directory in the volume (driver, eval.sh, conf, plan, out)
#   ckms_build_dir   the build directory, $dkms_tree/<m>/<v>/build (empty: the source is copied
#                    into it first, as dkms does)
#   ckms_source      the module's source, $source_tree/<m>-<v> (the build user's to change)
#   ckms_volumes     the writable volumes (the dkms tree, the source tree), space-separated
#   ckms_image_sources, ckms_image_sources_link   where the image keeps what its packages put
#                    in /usr/src (the kernel headers) and the relative link prefix to it: each
#                    entry there is linked back into the source tree volume
#   ckms_out         where results go (copied back to the host): make.log and the modules
#   ckms_space_kib   disk space the build may use (KiB): no file may grow past it (ulimit -f),
#                    and a watchdog stops the build when the volumes as a whole do
#   ckms_verbose     non-empty: make's output also goes to stdout (streamed by the host)
# The plan: make (the command line, run with eval like dkms does), patches (one per line),
# post_add pre_build post_build (script names), modules ("<location>/<name>.ko<TAB>yes|no"
# per line: the file and whether to strip it), header (make.log's first line).
# Exit: 0 built (or aborted by the host); 8 the conf could not be evaluated; 6 a patch failed; 10 make (or a PRE_/POST_BUILD script) failed; 7 a module
# named in BUILT_MODULE_NAME was not produced; 17 a module is a symbolic link (refused);
# 34 the build used more disk than ckms_space_kib. Messages on stderr name the step.
#
# This script runs as the container's PID 1: the build runs in a child process, and this
# process watches its disk use. The build runs as the same uid, but inside the container's PID
# namespace nothing can kill PID 1, and its exit status is the container's: a build can stop
# its own steps, not the watchdog, nor forge its verdict.

# Inputs come from the environment (see above).
# shellcheck disable=SC2154
set -u
mkdir -p "$ckms_out" || exit 10

fail() {
    printf 'ckms: %s\n' "$2" >&2
    exit "$1"
}

# The source tree as a dkms host shows it: the image's headers (/usr/src/linux-headers-*, what
# /lib/modules/<kver>/build points to) back in the volume mounted over /usr/src, beside the
# module sources; then the build directory gets its copy of the source, as dkms makes it.
if [[ -n ${ckms_image_sources-} ]]; then
    for entry in "$ckms_image_sources"/*; do
        [[ -e $entry || -L $entry ]] || continue
        ln -sfn "$ckms_image_sources_link/${entry##*/}" "$source_tree/${entry##*/}" ||
            fail 10 "cannot link ${entry##*/} into $source_tree"
    done
fi
cp -a "$ckms_source/." "$ckms_build_dir/" || fail 10 "cannot copy $ckms_source into $ckms_build_dir"
read -ra volumes <<<"$ckms_volumes"

# A cross build (dkms's $arch is not this machine's): `uname -m` and `arch` answer the kernel's
# machine, as they would on the machine the module is for; config.guess (openafs's configure
# picks its sysname so) and Makefiles that choose flags by `uname -m` read it. The rest of uname
# stays this machine's, as on a dkms host, whose kernel is not the target's either. Shims in
# ckms's directory of the volume (the engines mount /tmp noexec), ahead on PATH for the conf's
# evaluation and the build.
target_machine() {
    local real here bin=$ckms_dir/bin
    real=$(command -v uname) || return 0
    here=$("$real" -m)
    [[ -n ${arch-} && $arch != "$here" ]] || return 0
    mkdir -p "$bin" || fail 10 "cannot create $bin"
    printf '%s\n' '#!/bin/bash' 'set -o pipefail' "$real \"\$@\" | sed 's/\\<$here\\>/$arch/g'" >"$bin/uname"
    printf '%s\n' '#!/bin/sh' 'exec uname -m' >"$bin/arch"
    chmod 755 "$bin/uname" "$bin/arch"
    export PATH=$bin:$PATH
}
target_machine

# Phase 1. The conf is the module author's bash: it runs in its own process, bounded like the
# build (no file past the space limit; the container's timeout).
if ! (ulimit -f "$ckms_space_kib" && exec bash "$ckms_dir/eval.sh") >"$ckms_dir/conf.tmp" 2>"$ckms_out/eval.err"; then
    exit 8
fi
mv "$ckms_dir/conf.tmp" "$ckms_dir/conf.json"
until [[ -e $ckms_dir/plan/ready || -e $ckms_dir/plan/abort ]]; do sleep 0.02; done
[[ -e $ckms_dir/plan/abort ]] && exit 0
for v in make patches post_add pre_build post_build modules header; do
    printf -v "ckms_$v" '%s' "$(<"$ckms_dir/plan/$v")"
done

# Phase 2.
log=$ckms_out/make.log
printf '%s\n%s\n' "$ckms_header" "$(date)" >"$log"

# dkms's invoke_command with a log file: the step's description, the command, its output, its
# exit code and time, then a rule. Runs the command with eval (so `;`, `&&` and subshells in
# MAKE work); with --verbose its output also goes to the container's output, which the host
# streams.
logged() { # description, command
    local status started=$SECONDS
    printf '\n%s\n# command: %s\n' "$1" "$2" >>"$log"
    if [[ -n ${ckms_verbose-} ]]; then
        (eval "$2") 2>&1 </dev/null | tee -a "$log"
        status=${PIPESTATUS[0]}
    else
        (eval "$2") >>"$log" 2>&1 </dev/null
        status=$?
    fi
    printf '\n# exit code: %d\n# elapsed time: %s\n%s\n' "$status" \
        "$(date -u -d "@$((SECONDS - started))" +%T)" \
        ---------------------------------------------------------------- >>"$log"
    return "$status"
}

cd "$ckms_build_dir" || fail 10 "cannot enter $ckms_build_dir"

# dkms's run_build_script: the script is named relative to the build directory and may carry
# arguments; a script that is not executable is a warning, a failing one is fatal. Its output
# goes to make.log (in the volume, where the disk limit holds), not to the container's log.
run_script() {
    local what=$1 script=$2
    [[ -n $script ]] || return 0
    local run="$ckms_build_dir/$script"
    if [[ -x ${run%% *} ]]; then
        logged "Running the $what script" "cd $ckms_build_dir/ && $run" ||
            fail 10 "the $what script ($script) failed with status $?"
    else
        printf 'Warning: the %s script is not executable: %s\n' "$what" "$script" >&2
    fi
}

# Module BTF the same on every run: kernels pass pahole -j (6.12: -j$(JOBS)), and pahole
# before 1.27 (bookworm has 1.24) orders types differently from run to run when it encodes in
# parallel: 4 of 210 module files of a 60-pair 6.12 run differed in .BTF. The kernel's Makefile
# runs `pahole` by PATH; a shim ahead of it drops the job options, one thread giving the same
# bytes every time. It lives in ckms's directory of the volume: the engines mount /tmp noexec.
serial_pahole() {
    local real bin=$ckms_dir/bin
    real=$(command -v pahole) || return 0
    mkdir -p "$bin"
    printf '%s\n' '#!/bin/bash' 'args=()' \
        'for a in "$@"; do case $a in -j | -j[0-9]* | --jobs | --jobs=*) ;; *) args+=("$a") ;; esac; done' \
        "exec $real \"\${args[@]}\"" >"$bin/pahole"
    chmod 755 "$bin/pahole"
    PATH=$bin:$PATH
}

# Everything the module's own code runs. Runs in a child process (see the top).
build() {
    serial_pahole
    # The watchdog's timer is not the build's business.
    exec {tick_fd}>&-
    # The volume is on the host's disk: no single file may grow past the limit.
    ulimit -f "$ckms_space_kib"

    run_script post_add "${ckms_post_add-}"

    while IFS= read -r patch; do
        [[ -n $patch ]] || continue
        logged "Applying patch $patch" "patch -p1 < ./patches/$patch" || fail 6 "applying patch $patch failed (see make.log)"
    done <<<"${ckms_patches-}"

    run_script pre_build "${ckms_pre_build-}"

    printf 'Building module(s): %s\n' "$ckms_make"
    local status started=${EPOCHREALTIME//[!0-9]/}
    logged "Building module(s)" "$ckms_make"
    status=$?
    # How long make itself ran, in microseconds: the farm reports the rest as its overhead.
    echo $((${EPOCHREALTIME//[!0-9]/} - started)) >"$ckms_out/make.us"
    ((status == 0)) || fail 10 "make returned $status"

    local missing=0 linked=0 ko strip
    while IFS=$'\t' read -r ko strip; do
        [[ -n $ko ]] || continue
        if [[ -L $ko ]]; then
            # dkms would copy what it points to; in the sandbox that is the container's file,
            # but a module is a file the build made, never a link to one.
            printf 'ckms: %s is a symbolic link (to %s), not a module: refused\n' "$ko" "$(readlink -- "$ko")" |
                tee -a "$log" >&2
            linked=1
        elif [[ ! -f $ko ]]; then
            printf 'ckms: %s was not built\n' "$ko" | tee -a "$log" >&2
            missing=1
        fi
    done <<<"$ckms_modules"
    ((linked == 0)) || exit 17
    ((missing == 0)) || exit 7

    run_script post_build "${ckms_post_build-}"

    # dkms strips each module with `strip -g` unless STRIP[#] says no, before signing and
    # compression (which ckms does on the host, where the key lives). The build may have
    # planted links in the output directory: they are removed, and the host refuses any
    # that come back anyway.
    rm -rf "$ckms_out/modules" && mkdir -p "$ckms_out/modules" || exit 10
    while IFS=$'\t' read -r ko strip; do
        [[ -n $ko ]] || continue
        local out=$ckms_out/modules/${ko##*/}
        cp --remove-destination -- "$ko" "$out" || fail 10 "cannot copy $ko"
        if [[ $strip == yes ]]; then
            # A cross build's modules need the target's binutils (the image sets CROSS_COMPILE).
            "${CROSS_COMPILE:-}strip" -g "$out" || fail 10 "${CROSS_COMPILE:-}strip -g $ko failed"
        fi
    done <<<"$ckms_modules"
    exit 0
}

# True when the volumes hold more than the limit. du prints its total even when it fails; it
# fails on files that vanished meanwhile (common in builds) and on directories it cannot read,
# which would hide their files: then everything gets its owner's permissions back (the build
# user owns all but the other modules' read-only copies) and du counts again. Sets pause: how
# long until the next look.
over_space() {
    local used start=${EPOCHREALTIME//[!0-9]/}
    if ! used=$(du -skxc -- "${volumes[@]}" 2>/dev/null); then
        chmod -R u+rwX -- "${volumes[@]}" 2>/dev/null
        used=$(du -skxc -- "${volumes[@]}" 2>/dev/null)
    fi
    used=${used##*$'\n'}
    # A look costs what du costs, which grows with the tree (tens of thousands of files in a
    # big build): the pause is 50 times the look, so that the watchdog takes about 2% of a core,
    # at least 1 s and at most 5 s (`ulimit -f` bounds each file meanwhile).
    local us=$(((${EPOCHREALTIME//[!0-9]/} - start) * 50))
    ((us < 1000000)) && us=1000000
    ((us > 5000000)) && us=5000000
    printf -v pause '%d.%06d' $((us / 1000000)) $((us % 1000000))
    used=${used%%[[:space:]]*}
    [[ $used =~ ^[0-9]+$ ]] && ((used > ckms_space_kib))
}

stop_for_space() {
    printf 'ckms: the build used more than %d MiB of disk; stopped\n' $((ckms_space_kib / 1024)) |
        tee -a "$log" >&2
    exit 34
}

# A sleep that needs no fork (a fork bomb may have used every process): read with a timeout
# from a FIFO nobody writes to. Outside the volume, so it is not copied back.
tick=$(mktemp -u /tmp/ckms-tick.XXXXXX) && mkfifo -m 600 "$tick" && exec {tick_fd}<>"$tick" && rm -f "$tick" ||
    fail 10 "cannot create the watchdog's timer"

# The build says when it ends (a line on the timer's FIFO), so that its result is not held back
# until the watchdog's next look (a second or more).
# build closes the timer in a subshell of its own, so that the trap still has it.
{
    trap 'echo >&"$tick_fd"' EXIT
    (build)
} &
pid=$!
# Inside its PID namespace nothing can SIGKILL or SIGSTOP PID 1, and signals it has no handler
# for are dropped; but bash has handlers for the terminating ones, and as PID 1 it exits on
# them. A trap keeps this process alive; the build child was forked before, with the defaults.
trap : HUP INT QUIT ABRT BUS FPE SEGV USR1 USR2 PIPE ALRM TERM XCPU XFSZ VTALRM PROF SYS
pause=1
while kill -0 "$pid" 2>/dev/null; do
    read -r -t "$pause" -u "$tick_fd" _
    if over_space; then
        # Every process of the build user except this one (PID 1 is never signalled by -1).
        kill -KILL -1 2>/dev/null
        wait "$pid"
        stop_for_space
    fi
done
wait "$pid"
status=$?
# A file that hit `ulimit -f` (SIGXFSZ) failed the build before the next round of checks.
if ((status != 0)) && over_space; then
    stop_for_space
fi
exit "$status"
