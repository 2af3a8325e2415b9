# ckms: build one module package for one kernel, the way dkms's actual_build does, inside the
# sandboxed builder container (non-root, no network, read-only root; only the dkms tree volume
# is writable). The host resolved dkms.conf already; this script only runs what it decided.
#
# Input (environment):
#   ckms_build_dir   the build directory, $dkms_tree/<m>/<v>/build, holding a copy of the source
#   ckms_out         where results go (copied back to the host): make.log and the modules
#   ckms_space_kib   disk space the build may use (KiB): no file may grow past it (ulimit -f),
#                    and a watchdog stops the build when the tree as a whole does
#   ckms_make        the make command line, run with eval like dkms does
#   ckms_patches     patch file names under patches/, one per line, in order
#   ckms_post_add ckms_pre_build ckms_post_build   script names from the conf (may be empty)
#   ckms_modules     one line per module: "<built location>/<built name>.ko<TAB><strip yes|no>"
#   ckms_header      the first line of make.log
# Exit: 0 built; 6 a patch failed; 10 make (or a PRE_/POST_BUILD script) failed; 7 a module
# named in BUILT_MODULE_NAME was not produced; 17 a module is a symbolic link (refused);
# 34 the build used more disk than ckms_space_kib. Messages on stderr name the step.
#
# This script runs as the container's PID 1: the build runs in a child process, and this
# process watches its disk use. The build runs as the same uid, but inside the container's PID
# namespace nothing can kill PID 1, and its exit status is the container's: a build can stop
# its own steps, not the watchdog, nor forge its verdict.

set -u
log=$ckms_out/make.log
mkdir -p "$ckms_out" || exit 10
printf '%s\n%s\n\n' "$ckms_header" "$(date)" >"$log"

fail() {
    printf 'ckms: %s\n' "$2" >&2
    exit "$1"
}

cd "$ckms_build_dir" || fail 10 "cannot enter $ckms_build_dir"
ln -s build ../source 2>/dev/null
tree=${ckms_build_dir%/*/*/*}

# dkms's run_build_script: the script is named relative to the build directory and may carry
# arguments; a script that is not executable is a warning, a failing one is fatal. Its output
# goes to make.log (in the volume, where the disk limit holds), not to the container's log.
run_script() {
    local what=$1 script=$2
    [[ -n $script ]] || return 0
    local run="$ckms_build_dir/$script"
    if [[ -x ${run%% *} ]]; then
        printf '\nRunning the %s script:\n' "$what" >>"$log"
        # shellcheck disable=SC2086
        (cd "$ckms_build_dir" && exec $run) >>"$log" 2>&1 </dev/null ||
            fail 10 "the $what script ($script) failed with status $?"
    else
        printf 'Warning: the %s script is not executable: %s\n' "$what" "$script" >&2
    fi
}

# Everything the module's own code runs. Runs in a child process (see the top).
build() {
    # The watchdog's timer is not the build's business.
    exec {tick_fd}>&-
    # The volume is on the host's disk: no single file may grow past the limit.
    ulimit -f "$ckms_space_kib"

    run_script post_add "${ckms_post_add-}"

    while IFS= read -r patch; do
        [[ -n $patch ]] || continue
        printf 'Applying patch %s\n' "$patch" >>"$log"
        patch -p1 <"patches/$patch" >>"$log" 2>&1 || fail 6 "applying patch $patch failed (see make.log)"
    done <<<"${ckms_patches-}"

    run_script pre_build "${ckms_pre_build-}"

    printf 'Building module(s): %s\n' "$ckms_make"
    # dkms evals the command (so `;`, `&&` and subshells in MAKE work) with output to make.log.
    (eval "$ckms_make") >>"$log" 2>&1 </dev/null
    local status=$?
    if ((status != 0)); then
        printf 'ckms: make returned %d\n' "$status" >>"$log"
        fail 10 "make returned $status"
    fi

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
            strip -g "$out" || fail 10 "strip -g $ko failed"
        fi
    done <<<"$ckms_modules"
    exit 0
}

# True when the tree holds more than the limit. du prints its total even when it fails; it
# fails on files that vanished meanwhile (common in builds) and on directories it cannot read,
# which would hide their files: then everything gets its owner's permissions back (the build
# user owns the whole tree) and du counts again.
over_space() {
    local used
    if ! used=$(du -skx -- "$tree" 2>/dev/null); then
        chmod -R u+rwX -- "$tree" 2>/dev/null
        used=$(du -skx -- "$tree" 2>/dev/null)
    fi
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

build &
pid=$!
# Inside its PID namespace nothing can SIGKILL or SIGSTOP PID 1, and signals it has no handler
# for are dropped; but bash has handlers for the terminating ones, and as PID 1 it exits on
# them. A trap keeps this process alive; the build child was forked before, with the defaults.
trap : HUP INT QUIT ABRT BUS FPE SEGV USR1 USR2 PIPE ALRM TERM XCPU XFSZ VTALRM PROF SYS
while kill -0 "$pid" 2>/dev/null; do
    read -r -t 1 -u "$tick_fd" _
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
