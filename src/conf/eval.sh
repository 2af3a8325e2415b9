# ckms: evaluate one dkms.conf and print its directives as ONE JSON object on stdout.
#
# Runs inside the sandboxed builder container (never on the host): a dkms.conf is arbitrary
# bash. Pure bash, no jq/sed/tr: the builder image promises bash and little else.
#
# Input (environment): kernelver arch kernel_source_dir dkms_tree source_tree install_tree
# module module_version, plus ckms_conf (the dkms.conf path) and ckms_override_dir (where the
# /etc/dkms/<m>[-<v>[-<kver>[-<arch>]]].conf overrides live; empty = none).
#
# Output: {"context":{...the variables above, as given...},
#          "directives":{"NAME":{"0":"value","3":"value"},...}}
# Every directive is emitted as an index map: in bash a scalar IS element 0 of the array of
# the same name, so MAKE="x" and MAKE[0]="x" are the same thing and sparse arrays survive.
#
# Exit: 0 on success; 3 if a file cannot be read; 4 on a bash syntax error (bash's own message
# on stderr). A non-zero status of the conf's last command is NOT an error: dkms ignores it
# too, and `[ -f x ] && FOO=1` as a last line is common in real files.

__ckms_fail() {
    printf 'ckms: %s\n' "$2" >&2
    exit "$1"
}

# dkms.conf files written on Windows must work: strip every CR into a private copy, then
# syntax-check that copy with a separate bash so a parse error is reported, not half-run.
__ckms_load() {
    local file=$1 text tmp
    [[ -r $file ]] || __ckms_fail 3 "cannot read $file"
    text=$(<"$file") || __ckms_fail 3 "cannot read $file"
    tmp=$(mktemp "${TMPDIR:-/tmp}/ckms-conf.XXXXXX" 2>/dev/null) || tmp="${TMPDIR:-/tmp}/ckms-conf.$$.$RANDOM"
    printf '%s\n' "${text//$'\r'/}" >"$tmp" || __ckms_fail 3 "cannot write $tmp"
    # Errors name the original file, not the temp copy.
    if ! __ckms_err=$("${BASH:-bash}" -n "$tmp" 2>&1); then
        rm -f "$tmp"
        printf '%s\n' "${__ckms_err//"$tmp"/"$file"}" >&2
        exit 4
    fi
    __ckms_src=$tmp
}

__ckms_context=(kernelver arch kernel_source_dir dkms_tree source_tree install_tree module module_version)
declare -A __ckms_ctx=()
for __ckms_v in "${__ckms_context[@]}"; do __ckms_ctx[$__ckms_v]=${!__ckms_v-}; done

__ckms_files=("${ckms_conf:?ckms_conf is not set}")
if [[ -n ${ckms_override_dir-} ]]; then
    for __ckms_v in "$module" "$module-$module_version" "$module-$module_version-$kernelver" \
        "$module-$module_version-$kernelver-$arch"; do
        [[ -e $ckms_override_dir/$__ckms_v.conf ]] && __ckms_files+=("$ckms_override_dir/$__ckms_v.conf")
    done
fi

# The conf's own stdout goes to stderr so that an `echo` in it cannot corrupt the JSON;
# stdin is closed so that a `read` in it cannot hang the build.
exec 3>&1 1>&2 </dev/null
for __ckms_f in "${__ckms_files[@]}"; do
    __ckms_load "$__ckms_f"
    # shellcheck disable=SC1090
    source "$__ckms_src"
    rm -f "$__ckms_src"
done
exec 1>&3 3>&-

# Everything below runs after the conf: functions are (re)defined here so a conf cannot have
# replaced them, and the byte-wise C locale makes the escaping below exact for any bytes.
export LC_ALL=C

__ckms_ctl=()
for ((__ckms_i = 1; __ckms_i < 32; __ckms_i++)); do
    printf -v __ckms_hex '%02x' "$__ckms_i"
    printf -v __ckms_ctl[__ckms_i] "\\x$__ckms_hex"
done

# JSON string escaping: backslash first, then quote, then every control character.
__ckms_json() {
    local s=$1 i
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\t'/\\t}
    s=${s//$'\r'/\\r}
    for ((i = 1; i < 32; i++)); do
        [[ $s == *"${__ckms_ctl[i]}"* ]] || continue
        printf -v __ckms_hex '\\u%04x' "$i"
        s=${s//"${__ckms_ctl[i]}"/$__ckms_hex}
    done
    __ckms_out+="\"$s\""
}

__ckms_names=(
    PACKAGE_NAME PACKAGE_VERSION
    PRE_BUILD POST_BUILD POST_ADD PRE_INSTALL POST_INSTALL POST_REMOVE
    BUILD_EXCLUSIVE_KERNEL BUILD_EXCLUSIVE_KERNEL_MIN BUILD_EXCLUSIVE_KERNEL_MAX
    BUILD_EXCLUSIVE_ARCH BUILD_EXCLUSIVE_CONFIG
    AUTOINSTALL NO_WEAK_MODULES BUILD_DEPENDS_REBUILD
    CLEAN REMAKE_INITRD MODULES_CONF OBSOLETE_BY
    MAKE MAKE_MATCH BUILT_MODULE_NAME BUILT_MODULE_LOCATION DEST_MODULE_NAME DEST_MODULE_LOCATION
    STRIP PATCH PATCH_MATCH BUILD_DEPENDS
    MODULES_CONF_ALIAS_TYPE MODULES_CONF_OBSOLETES MODULES_CONF_OBSOLETE_ONLY
)

__ckms_out='{"context":{'
__ckms_sep=
for __ckms_v in "${__ckms_context[@]}"; do
    __ckms_out+=$__ckms_sep
    __ckms_json "$__ckms_v"
    __ckms_out+=:
    __ckms_json "${__ckms_ctx[$__ckms_v]}"
    __ckms_sep=,
done
__ckms_out+='},"directives":{'
__ckms_sep=
for __ckms_v in "${__ckms_names[@]}"; do
    declare -n __ckms_ref=$__ckms_v
    __ckms_idx=("${!__ckms_ref[@]}")
    if ((${#__ckms_idx[@]})); then
        __ckms_out+=$__ckms_sep
        __ckms_json "$__ckms_v"
        __ckms_out+=':{'
        __ckms_isep=
        for __ckms_i in "${__ckms_idx[@]}"; do
            __ckms_out+=$__ckms_isep
            __ckms_json "$__ckms_i"
            __ckms_out+=:
            __ckms_json "${__ckms_ref[$__ckms_i]}"
            __ckms_isep=,
        done
        __ckms_out+='}'
        __ckms_sep=,
    fi
    unset -n __ckms_ref
done
__ckms_out+='}}'
printf '%s\n' "$__ckms_out"
