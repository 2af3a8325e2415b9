# ckms: build one module package for one kernel, the way dkms's actual_build does, inside the
# sandboxed builder container (non-root, no network, read-only root; only the dkms tree volume
# is writable). One container does it all, in two phases:
#   1. evaluate dkms.conf with eval.sh (bash, a separate process) into $ckms_dir/conf.json,
#      then wait for the host, which resolves the directives for this kernel and writes its
#      plan into $ckms_dir/plan/ (one value per file, `ready` last; `abort` = nothing to do);
#   2. run the plan.
#
# Input (environment): dkms's variables (kernelver arch module module_version ...), eval.sh's
# (ckms_conf ckms_override_dir), and
#   ckms_dir         ckms's directory in the volume (driver, eval.sh, conf, plan, out)
#   ckms_build_dir   the build directory, $dkms_tree/<m>/<v>/build, holding the source
#   ckms_out         where results go (copied back to the host): make.log and the modules
#   ckms_space_kib   disk space the build may use (KiB): no file may grow past it (ulimit -f),
#                    and a watchdog stops the build when the tree as a whole does
#   ckms_verbose     non-empty: make's output also goes to stdout (streamed by the host)
# The plan: make (the command line, run with eval like dkms does), patches (one per line),
# post_add pre_build post_build (script names), modules ("<location>/<name>.ko<TAB>yes|no"
# per line: the file and whether to strip it), header (make.log's first line).
# Exit: 0 built (or aborted by the host); 8 the conf could not be evaluated; 6 a patch failed;
# 10 make (or a PRE_/POST_BUILD script) failed; 7 a module named in BUILT_MODULE_NAME was not
# produced. Messages on stderr name the step.

set -u
mkdir -p "$ckms_out" || exit 10

if ! bash "$ckms_dir/eval.sh" >"$ckms_dir/conf.tmp" 2>"$ckms_out/eval.err"; then
    exit 8
fi
mv "$ckms_dir/conf.tmp" "$ckms_dir/conf.json"
until [[ -e $ckms_dir/plan/ready || -e $ckms_dir/plan/abort ]]; do sleep 0.05; done
[[ -e $ckms_dir/plan/abort ]] && exit 0
for v in make patches post_add pre_build post_build modules header; do
    printf -v "ckms_$v" '%s' "$(<"$ckms_dir/plan/$v")"
done

log=$ckms_out/make.log
printf '%s\n%s\n\n' "$ckms_header" "$(date)" >"$log"

fail() {
    printf 'ckms: %s\n' "$2" >&2
    exit "$1"
}

cd "$ckms_build_dir" || fail 10 "cannot enter $ckms_build_dir"
ln -s build ../source 2>/dev/null

# The volume is on the host's disk: bound what the build can write. The watchdog leaves a
# marker the host reads, then kills every process of the build user (itself included).
ulimit -f "$ckms_space_kib"
tree=${ckms_build_dir%/*/*/*}
(
    while sleep 1; do
        used=$(du -skx "$tree" 2>/dev/null) || continue
        if ((${used%%[[:space:]]*} > ckms_space_kib)); then
            printf 'ckms: the build used more than %d MiB of disk; stopped\n' $((ckms_space_kib / 1024)) >>"$log"
            : >"$ckms_out/space-exceeded"
            kill -KILL -1
        fi
    done
) </dev/null >/dev/null 2>&1 &

# dkms's run_build_script: the script is named relative to the build directory and may carry
# arguments; a script that is not executable is a warning, a failing one is fatal.
run_script() {
    local what=$1 script=$2
    [[ -n $script ]] || return 0
    local run="$ckms_build_dir/$script"
    if [[ -x ${run%% *} ]]; then
        printf '\nRunning the %s script:\n' "$what"
        # shellcheck disable=SC2086
        (cd "$ckms_build_dir" && exec $run) || fail 10 "the $what script ($script) failed with status $?"
    else
        printf 'Warning: the %s script is not executable: %s\n' "$what" "$script" >&2
    fi
}

run_script post_add "${ckms_post_add-}"

while IFS= read -r patch; do
    [[ -n $patch ]] || continue
    printf 'Applying patch %s\n' "$patch" | tee -a "$log"
    patch -p1 <"patches/$patch" >>"$log" 2>&1 || fail 6 "applying patch $patch failed (see make.log)"
done <<<"${ckms_patches-}"

run_script pre_build "${ckms_pre_build-}"

printf 'Building module(s): %s\n' "$ckms_make"
# dkms evals the command (so `;`, `&&` and subshells in MAKE work) with output to make.log;
# with --verbose it also goes to the container's output, which the host streams.
if [[ -n ${ckms_verbose-} ]]; then
    ( eval "$ckms_make" ) 2>&1 </dev/null | tee -a "$log"
    status=${PIPESTATUS[0]}
else
    ( eval "$ckms_make" ) >>"$log" 2>&1 </dev/null
    status=$?
fi
if ((status != 0)); then
    printf 'ckms: make returned %d\n' "$status" >>"$log"
    fail 10 "make returned $status"
fi

missing=0
while IFS=$'\t' read -r ko strip; do
    [[ -n $ko ]] || continue
    if [[ ! -f $ko || -L $ko ]]; then
        printf 'ckms: %s was not built\n' "$ko" | tee -a "$log" >&2
        missing=1
    fi
done <<<"$ckms_modules"
((missing == 0)) || exit 7

run_script post_build "${ckms_post_build-}"

# dkms strips each module with `strip -g` unless STRIP[#] says no, before signing and
# compression (which ckms does on the host, where the key lives).
mkdir -p "$ckms_out/modules" || exit 10
while IFS=$'\t' read -r ko strip; do
    [[ -n $ko ]] || continue
    out=$ckms_out/modules/${ko##*/}
    cp -- "$ko" "$out" || fail 10 "cannot copy $ko"
    if [[ $strip == yes ]]; then
        strip -g "$out" || fail 10 "strip -g $ko failed"
    fi
done <<<"$ckms_modules"
exit 0
