//! parse/resolve on synthetic JSON, and eval.sh run with the host's bash on real dkms.conf files
//! from Debian's *-dkms packages (production runs it in the builder container).

use super::*;
use crate::diagnose::Diagnose;
use std::path::Path;
use std::process::Command;

const DEBIAN: &str = "/updates/dkms";

fn kernel(config: Option<&str>) -> KernelFacts {
    KernelFacts { release: "6.1.0-56-amd64".into(), arch: "x86_64".into(), config: config.map(String::from) }
}

/// A RawConf from (name, index, value) triples, with the two required directives.
fn raw(entries: &[(&str, u32, &str)]) -> RawConf {
    let mut r = RawConf { origin: "/usr/src/m-1/dkms.conf".into(), ..Default::default() };
    r.context.insert("kernel_source_dir".into(), "/lib/modules/6.1.0-56-amd64/build".into());
    r.context.insert("dkms_tree".into(), "/var/lib/dkms".into());
    for (n, i, v) in [("PACKAGE_NAME", 0, "m"), ("PACKAGE_VERSION", 0, "1")].iter().chain(entries) {
        r.directives.entry(n.to_string()).or_default().insert(*i, v.to_string());
    }
    r
}

fn plan(r: &RawConf) -> BuildPlan {
    match resolve(r, &kernel(None), &DestPolicy::Fallback("/extra".into())).unwrap() {
        Resolved::Build(p) => *p,
        other => panic!("expected a build, got {other:?}"),
    }
}

fn error(r: &RawConf) -> String {
    let e = resolve(r, &kernel(None), &DestPolicy::Fallback("/extra".into())).unwrap_err();
    assert_eq!(e.exit_code(), 8);
    assert!(e.hint().is_some());
    let msg = e.to_string();
    assert!(msg.starts_with("/usr/src/m-1/dkms.conf: "), "{msg}");
    msg
}

#[test]
fn parse_keeps_sparse_arrays_and_context() {
    let json = r#"{"context":{"kernelver":"6.1"},"directives":{"PACKAGE_NAME":{"0":"m"},"BUILT_MODULE_NAME":{"0":"a","5":"b"}}}"#;
    let r = parse(json, "x.conf").unwrap();
    assert_eq!(r.scalar("PACKAGE_NAME"), Some("m"));
    assert_eq!(r.array("BUILT_MODULE_NAME").keys().copied().collect::<Vec<_>>(), vec![0, 5]);
    assert_eq!(r.context["kernelver"], "6.1");
    assert!(matches!(parse("nonsense", "x.conf"), Err(ConfError::Output { .. })));
    let assoc = r#"{"context":{},"directives":{"MAKE":{"x":"make"}}}"#;
    assert!(parse(assoc, "x.conf").unwrap_err().to_string().contains("MAKE"));
}

#[test]
fn defaults() {
    let p = plan(&raw(&[("BUILT_MODULE_NAME", 0, "foo")]));
    assert_eq!(p.make, "make -C /lib/modules/6.1.0-56-amd64/build M=/var/lib/dkms/m/1/build");
    assert_eq!(
        p.make_command(8),
        "make -j8 KERNELRELEASE=6.1.0-56-amd64 -C /lib/modules/6.1.0-56-amd64/build M=/var/lib/dkms/m/1/build"
    );
    assert_eq!(
        p.modules,
        vec![Module {
            index: 0,
            built_name: "foo".into(),
            built_location: "".into(),
            dest_name: "foo".into(),
            dest_location: "/extra".into(),
            strip: true
        }]
    );
    assert!(!p.autoinstall);
    assert!(p.patches.is_empty() && p.notes.is_empty() && p.build_depends.is_empty());
}

#[test]
fn sparse_modules_strip_and_dest_policy() {
    let r = raw(&[
        ("BUILT_MODULE_NAME", 0, "a"),
        ("BUILT_MODULE_NAME", 3, "b"),
        ("DEST_MODULE_NAME", 3, "b2"),
        ("DEST_MODULE_LOCATION", 3, "/kernel/drivers/x"),
        ("BUILT_MODULE_LOCATION", 3, "sub/"),
        ("STRIP", 0, "no"),
        ("STRIP", 3, "yes"),
        ("AUTOINSTALL", 0, "yes"),
    ]);
    let p = plan(&r);
    assert_eq!(p.modules.len(), 2);
    assert_eq!((p.modules[0].strip, p.modules[0].dest_location.as_str()), (false, "/extra"));
    let b = &p.modules[1];
    assert_eq!(
        (b.index, b.dest_name.as_str(), b.built_location.as_str(), b.dest_location.as_str(), b.strip),
        (3, "b2", "sub/", "/kernel/drivers/x", true)
    );
    assert!(p.autoinstall);
    let Resolved::Build(p) = resolve(&r, &kernel(None), &DestPolicy::Override(DEBIAN.into())).unwrap() else {
        panic!()
    };
    assert!(p.modules.iter().all(|m| m.dest_location == DEBIAN));
}

#[test]
fn make_match_last_match_wins() {
    let r = raw(&[
        ("BUILT_MODULE_NAME", 0, "a"),
        ("MAKE", 0, "make zero"),
        ("MAKE", 1, "make one"),
        ("MAKE_MATCH", 1, "^6\\."),
        ("MAKE", 2, "make two"),
        ("MAKE_MATCH", 2, "^6\\.1"),
        ("MAKE", 3, "make three"),
        ("MAKE_MATCH", 3, "^5\\."),
    ]);
    let p = plan(&r);
    assert_eq!(p.make, "make two");
    let no_make_rewrite = raw(&[("BUILT_MODULE_NAME", 0, "a"), ("MAKE", 0, "sh build.sh")]);
    assert_eq!(plan(&no_make_rewrite).make_command(4), "sh build.sh");
}

#[test]
fn patches_filtered_by_kernel() {
    let r = raw(&[
        ("BUILT_MODULE_NAME", 0, "a"),
        ("PATCH", 0, "all.patch"),
        ("PATCH", 1, "old.patch"),
        ("PATCH_MATCH", 1, "^5\\."),
        ("PATCH", 2, "six.patch"),
        ("PATCH_MATCH", 2, "^6\\."),
    ]);
    assert_eq!(plan(&r).patches, vec!["all.patch", "six.patch"]);
}

#[test]
fn build_exclusive_package_and_module() {
    let skipped = |entries: &[(&str, u32, &str)], config: Option<&str>| {
        let r = raw(&[&[("BUILT_MODULE_NAME", 0, "a")], entries].concat());
        match resolve(&r, &kernel(config), &DestPolicy::Fallback("/extra".into())).unwrap() {
            Resolved::Skipped { reason } => Some(reason),
            Resolved::Build(_) => None,
        }
    };
    assert!(skipped(&[("BUILD_EXCLUSIVE_KERNEL", 0, "^5\\.")], None).unwrap().contains("6.1.0-56-amd64"));
    assert!(skipped(&[("BUILD_EXCLUSIVE_KERNEL", 0, "^6\\.")], None).is_none());
    assert!(skipped(&[("BUILD_EXCLUSIVE_KERNEL_MIN", 0, "5.6")], None).is_none());
    assert!(skipped(&[("BUILD_EXCLUSIVE_KERNEL_MIN", 0, "6.2")], None).is_some());
    assert!(skipped(&[("BUILD_EXCLUSIVE_KERNEL_MAX", 0, "6.1")], None).is_some(), "sort -V: 6.1.0-56 > 6.1");
    assert!(skipped(&[("BUILD_EXCLUSIVE_KERNEL_MAX", 0, "6.1.0-56-amd64")], None).is_none());
    assert!(skipped(&[("OBSOLETE_BY", 0, "5.10")], None).is_some());
    assert!(skipped(&[("BUILD_EXCLUSIVE_ARCH", 0, "^aarch64$")], None).is_some());
    let config = Some("CONFIG_PCI=y\nCONFIG_USB=m\n# CONFIG_FOO is not set\nCONFIG_USB_HID=n\n");
    assert!(skipped(&[("BUILD_EXCLUSIVE_CONFIG", 0, "CONFIG_PCI CONFIG_USB !CONFIG_FOO")], config).is_none());
    assert!(skipped(&[("BUILD_EXCLUSIVE_CONFIG", 0, "CONFIG_USB_HID")], config)
        .unwrap()
        .contains("CONFIG_USB_HID is not enabled"));
    assert!(skipped(&[("BUILD_EXCLUSIVE_CONFIG", 0, "!CONFIG_PCI")], config)
        .unwrap()
        .contains("CONFIG_PCI is enabled"));
    // Without a kernel config the check cannot be made, as in dkms.
    assert!(skipped(&[("BUILD_EXCLUSIVE_CONFIG", 0, "CONFIG_NOPE")], None).is_none());

    // Per module: index 2 is dropped, the package is still built.
    let r = raw(&[("BUILT_MODULE_NAME", 0, "a"), ("BUILT_MODULE_NAME", 2, "b"), ("BUILD_EXCLUSIVE_ARCH", 2, "^arm")]);
    let p = plan(&r);
    assert_eq!(p.modules.iter().map(|m| m.built_name.as_str()).collect::<Vec<_>>(), vec!["a"]);
    assert_eq!(p.excluded_modules[0].0, "b");
    assert!(p.excluded_modules[0].1.contains("BUILD_EXCLUSIVE_ARCH[2]"));
}

#[test]
fn validation_errors() {
    let mut r = raw(&[("BUILT_MODULE_NAME", 0, "a")]);
    r.directives.remove("PACKAGE_NAME");
    assert!(error(&r).contains("PACKAGE_NAME: is not set"));
    let mut r = raw(&[("BUILT_MODULE_NAME", 0, "a")]);
    r.directives.get_mut("PACKAGE_VERSION").unwrap().insert(0, String::new());
    assert!(error(&r).contains("PACKAGE_VERSION"));
    assert!(error(&raw(&[("BUILT_MODULE_NAME", 1, "")])).contains("BUILT_MODULE_NAME: no module"));
    // As dkms: one module, BUILT_MODULE_NAME left out, named after the package (leds-alix-dkms).
    assert_eq!(plan(&raw(&[("DEST_MODULE_LOCATION", 0, "/kernel/leds")])).modules[0].built_name, "m");
    assert!(error(&raw(&[("BUILT_MODULE_NAME", 1, "a.ko")])).contains("BUILT_MODULE_NAME[1]: 'a.ko' ends in .ko"));
    assert!(
        error(&raw(&[("BUILT_MODULE_NAME", 0, "a"), ("DEST_MODULE_NAME", 0, "b.ko")])).contains("DEST_MODULE_NAME[0]")
    );
    assert!(error(&raw(&[("BUILT_MODULE_NAME", 0, "a"), ("DEST_MODULE_LOCATION", 0, "/lib/foo")]))
        .contains("DEST_MODULE_LOCATION[0]"));
    assert!(error(&raw(&[("BUILT_MODULE_NAME", 0, "a"), ("DEST_MODULE_LOCATION", 0, "/extras")])).contains("/extras"));
    assert!(error(&raw(&[("BUILT_MODULE_NAME", 0, "a"), ("MAKE", 1, "make"), ("MAKE_MATCH", 1, "(")]))
        .contains("MAKE_MATCH[1]: invalid regular expression"));
    assert!(error(&raw(&[("BUILT_MODULE_NAME", 0, "a"), ("BUILD_EXCLUSIVE_KERNEL", 0, "[")]))
        .contains("BUILD_EXCLUSIVE_KERNEL"));
}

#[test]
fn deprecated_directives_are_noted() {
    let p = plan(&raw(&[("BUILT_MODULE_NAME", 0, "a"), ("CLEAN", 0, "make clean"), ("REMAKE_INITRD", 0, "yes")]));
    assert_eq!(p.notes, vec!["CLEAN is deprecated and ignored", "REMAKE_INITRD is deprecated and ignored"]);
}

// ---- eval.sh with the host's bash on real files ----

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/dkms/{name}-dkms.conf", env!("CARGO_MANIFEST_DIR"))
}

const CONFIG: &str = "CONFIG_VIDEO_DEV=m\nCONFIG_PCI=y\nCONFIG_USB=y\nCONFIG_USB_HID=y\n";

/// Runs eval.sh on `conf` the way the container would, with a kernel source dir holding `config`.
fn eval_with(conf: &Path, config: &str, module: &str, overrides: Option<&Path>) -> Result<RawConf, ConfError> {
    let ksrc = tempfile::tempdir().unwrap();
    std::fs::write(ksrc.path().join(".config"), config).unwrap();
    let ctx = EvalContext {
        conf_path: conf.display().to_string(),
        override_dir: overrides.map(|p| p.display().to_string()),
        kernelver: "6.1.0-56-amd64".into(),
        arch: "x86_64".into(),
        kernel_source_dir: ksrc.path().display().to_string(),
        dkms_tree: "/var/lib/dkms".into(),
        source_tree: "/usr/src".into(),
        install_tree: "/lib/modules".into(),
        module: module.into(),
        module_version: "1".into(),
    };
    let mut cmd = Command::new("/bin/bash");
    cmd.arg("-c").arg(eval_script()).env_clear().env("PATH", "/usr/bin:/bin");
    for kv in eval_env(&ctx) {
        let (k, v) = kv.split_once('=').unwrap();
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    from_output(out.status.code().unwrap_or(-1), &out.stdout, &out.stderr, &ctx.conf_path)
}

fn eval(name: &str, config: &str) -> Resolved {
    let r = eval_with(Path::new(&fixture(name)), config, name, None).unwrap();
    resolve(&r, &kernel(Some(config)), &DestPolicy::Override(DEBIAN.into())).unwrap()
}

fn build(name: &str) -> BuildPlan {
    match eval(name, CONFIG) {
        Resolved::Build(p) => *p,
        other => panic!("{name}: {other:?}"),
    }
}

fn names(p: &BuildPlan) -> Vec<&str> {
    p.modules.iter().map(|m| m.built_name.as_str()).collect()
}

#[test]
fn real_v4l2loopback() {
    let p = build("v4l2loopback");
    assert_eq!((p.package_name.as_str(), p.package_version.as_str()), ("v4l2loopback", "0.12.7"));
    assert_eq!(names(&p), vec!["v4l2loopback"]);
    assert!(p.make.starts_with("make KERNEL_DIR=/") && p.make.ends_with(" all"), "{}", p.make);
    assert!(p.make_command(4).starts_with("make -j4 KERNELRELEASE=6.1.0-56-amd64 KERNEL_DIR="));
    assert!(p.autoinstall);
    assert_eq!(p.notes, vec!["CLEAN is deprecated and ignored"]);
    assert_eq!(p.modules[0].dest_location, DEBIAN);
    // Without CONFIG_VIDEO_DEV the conf itself sets an impossible BUILD_EXCLUSIVE_KERNEL.
    assert!(matches!(eval("v4l2loopback", "CONFIG_PCI=y\n"), Resolved::Skipped { .. }));
}

#[test]
fn real_dahdi() {
    let p = build("dahdi");
    assert_eq!(p.modules.len(), 32);
    assert_eq!(names(&p)[..3], ["dahdi_dummy", "dahdi_dynamic_eth", "dahdi_dynamic"]);
    assert_eq!(p.modules[28].built_location, "drivers/dahdi/voicebus/");
    assert!(p.make.starts_with("(make modules KVERS=6.1.0-56-amd64 "));
    assert_eq!(p.make_command(4), p.make, "a leading '(' is not rewritten");
    // BUILD_EXCLUSIVE_KERNEL requires >= 5.6; BUILD_EXCLUSIVE_CONFIG needs PCI and USB.
    let Resolved::Skipped { reason } = eval("dahdi", "CONFIG_PCI=y\n") else { panic!() };
    assert!(reason.contains("CONFIG_USB"), "{reason}");
    let r = eval_with(Path::new(&fixture("dahdi")), CONFIG, "dahdi", None).unwrap();
    let old = KernelFacts { release: "4.19.0-27-amd64".into(), ..kernel(Some(CONFIG)) };
    assert!(matches!(resolve(&r, &old, &DestPolicy::Override(DEBIAN.into())).unwrap(), Resolved::Skipped { .. }));
}

#[test]
fn real_digimend() {
    assert_eq!(names(&build("digimend")), vec!["hid-kye", "hid-uclogic", "hid-polostar", "hid-viewsonic"]);
    let Resolved::Skipped { reason } = eval("digimend", "CONFIG_PCI=y\n") else { panic!() };
    assert!(reason.contains("REQUIRES CONFIG_USB_HID"), "{reason}");
}

#[test]
fn real_gost_crypto() {
    let p = build("gost-crypto");
    assert_eq!(p.modules.len(), 6);
    assert!(p.make.ends_with(" M=/var/lib/dkms/gost-crypto/0.3.4/build"), "{}", p.make);
}

#[test]
fn real_jool_multiline_make() {
    let p = build("jool");
    assert_eq!(names(&p), vec!["jool_common", "jool", "jool_siit"]);
    assert!(!p.make.contains('\\') && !p.make.contains('\n'), "{}", p.make);
    assert_eq!(p.make.matches("&& make -C ").count(), 2);
    assert!(p.make.contains("M=/var/lib/dkms/jool-dkms/4.1.9/build/src/mod/siit modules"));
    assert_eq!(p.modules[1].built_location, "src/mod/nat64/");
}

#[test]
fn real_xtables_addons_unindexed_make() {
    let r = eval_with(Path::new(&fixture("xtables-addons")), CONFIG, "xtables-addons", None).unwrap();
    assert_eq!(r.array("MAKE").keys().copied().collect::<Vec<_>>(), vec![0]);
    let p = build("xtables-addons");
    assert!(
        p.make.starts_with("make -C /") && p.make.contains("modules ; find /var/lib/dkms/xtables-addons/3.23/build")
    );
    assert_eq!(p.modules.len(), 23);
    assert!(p.modules.iter().all(|m| m.built_location.is_empty()));
}

#[test]
fn crlf_evaluates_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let crlf = dir.path().join("dkms.conf");
    let text = std::fs::read_to_string(fixture("jool")).unwrap();
    std::fs::write(&crlf, text.replace('\n', "\r\n")).unwrap();
    let a = eval_with(Path::new(&fixture("jool")), CONFIG, "jool", None).unwrap();
    let b = eval_with(&crlf, CONFIG, "jool", None).unwrap();
    // Each run gets its own kernel source dir; compare with it masked out.
    let norm = |r: &RawConf| format!("{:?}", r.directives).replace(&r.context["kernel_source_dir"], "KSRC");
    assert!(a.directives.contains_key("MAKE"));
    assert_eq!(norm(&a), norm(&b));
}

#[test]
fn syntax_error_is_a_conf_error() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("dkms.conf");
    std::fs::write(&conf, "PACKAGE_NAME=x\nif then\n").unwrap();
    let e = eval_with(&conf, CONFIG, "x", None).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("syntax error near unexpected token"), "{msg}");
    assert!(msg.contains(&conf.display().to_string()) && !msg.contains("ckms-conf."), "names the real file: {msg}");
    assert_eq!(e.exit_code(), 8);
    let missing = eval_with(&dir.path().join("nope.conf"), CONFIG, "x", None).unwrap_err();
    assert!(missing.to_string().contains("cannot read"), "{missing}");
}

#[test]
fn awkward_values_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("dkms.conf");
    let value = "q\"uo'te \\back\\\\slash\nnew\tline \u{1}\u{1f} $x `y` é";
    // Written with printf %q-free single quotes: every ' becomes '\''.
    let quoted = format!("'{}'", value.replace('\'', "'\\''"));
    std::fs::write(&conf, format!("PACKAGE_NAME={quoted}\nPOST_BUILD={quoted}\necho chatter\nMAKE[7]=x\n")).unwrap();
    let r = eval_with(&conf, CONFIG, "x", None).unwrap();
    assert_eq!(r.scalar("PACKAGE_NAME"), Some(value));
    assert_eq!(r.scalar("POST_BUILD"), Some(value));
    assert_eq!(r.array("MAKE").keys().copied().collect::<Vec<_>>(), vec![7]);
}

#[test]
fn override_files_apply_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("dkms.conf");
    std::fs::write(&conf, "PACKAGE_NAME=m\nPACKAGE_VERSION=1\nMAKE=base\nSTRIP=yes\n").unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(etc.join("m.conf"), "MAKE=by-module\nSTRIP=no\n").unwrap();
    std::fs::write(etc.join("m-1-6.1.0-56-amd64-x86_64.conf"), "MAKE=by-arch\n").unwrap();
    let r = eval_with(&conf, CONFIG, "m", Some(&etc)).unwrap();
    assert_eq!(r.scalar("MAKE"), Some("by-arch"));
    assert_eq!(r.scalar("STRIP"), Some("no"));
}

#[test]
fn names_that_would_leave_their_directory_are_refused() {
    for (directive, value) in
        [("BUILT_MODULE_NAME", "../../../../etc/passwd"), ("BUILT_MODULE_NAME", "sub/m"), ("DEST_MODULE_NAME", "../m")]
    {
        let msg = error(&raw(&[("BUILT_MODULE_NAME", 0, "m"), (directive, 0, value)]));
        assert!(msg.contains(&format!("{directive}[0]")) && msg.contains("not a plain name"), "{msg}");
    }
    let mut r = raw(&[("BUILT_MODULE_NAME", 0, "m")]);
    r.directives.get_mut("PACKAGE_NAME").unwrap().insert(0, "../../tmp/x".into());
    assert!(error(&r).contains("PACKAGE_NAME"));
}

#[test]
fn a_conf_without_module_records_builds_none_and_one_record_defaults_to_the_package() {
    assert!(plan(&raw(&[])).modules.is_empty(), "dkms: Zero modules specified");
    let one = plan(&raw(&[("DEST_MODULE_LOCATION", 0, "/updates")]));
    assert_eq!(one.modules.iter().map(|m| m.built_name.as_str()).collect::<Vec<_>>(), ["m"]);
}
