use super::*;
use crate::cli::{Cli, Command};
use clap::{CommandFactory, Parser};

const TREES: &[&str] = &["--root", "--sourcetree", "--dkmstree", "--installtree"];
const TARGET: &[&str] = &["-m", "-v", "-k", "-a"];
const BUILD: &[&str] = &["-j", "--verbose", "--profile"];

/// Each verb's own options (besides ckms's global ones and --help).
fn own_options(verb: &str) -> Vec<&'static str> {
    let parts: &[&[&str]] = match verb {
        "add" => &[&["-m", "-v", "--force", "--package", "--profile"], TREES],
        "build" => &[TARGET, TREES, BUILD, &["--force", "--verify"]],
        "install" => &[TARGET, TREES, BUILD, &["--force", "--verify", "--no-depmod", "--prebuilt-only"]],
        "uninstall" | "unbuild" | "remove" => &[TARGET, TREES, &["--all", "--no-depmod"]],
        "status" => &[TARGET, TREES],
        "autoinstall" | "kernel_postinst" => &[&["-k", "-a"], TREES, BUILD, &["--no-depmod"]],
        "match" => &[&["--templatekernel", "-k", "-a"], TREES, BUILD, &["--no-depmod"]],
        "mktarball" => &[TARGET, TREES, &["--source-only", "--binaries-only", "--archive"]],
        "ldtarball" => &[TREES, &["--archive", "--force"]],
        "verify" => &[TARGET, TREES, &["--profile", "--tree", "--sysext", "--modprobe"]],
        "kernel_prerm" => &[&["-k", "-a"], TREES, &["--no-depmod"]],
        "generate_mok" => &[&["--force", "--key", "--cert"]],
        other => panic!("no expectation for verb {other}"),
    };
    parts.concat()
}

/// The name an option is known by in the expectations: its long name if it has one.
fn shown_name(arg: &clap::Arg) -> Option<String> {
    arg.get_long().map(|l| format!("--{l}")).or_else(|| arg.get_short().map(|s| format!("-{s}")))
}

/// How `option` (long or short) is shown: by its long name when it has one.
fn expected_name(option: &str, sub: &clap::Command) -> String {
    let named = |a: &&clap::Arg| {
        a.get_short().is_some_and(|s| format!("-{s}") == option)
            || a.get_long().is_some_and(|l| format!("--{l}") == option)
    };
    sub.get_arguments().find(named).and_then(shown_name).unwrap_or_else(|| option.to_string())
}

#[test]
fn every_verb_shows_only_its_own_options_each_with_a_help_line() {
    let mut cli = Cli::command();
    cli.build();
    let global: Vec<String> = cli.get_arguments().filter(|a| a.is_global_set()).filter_map(shown_name).collect();
    let every_option: std::collections::BTreeSet<String> =
        VERBS.iter().flat_map(|v| own_options(v)).map(str::to_string).collect();
    for verb in VERBS {
        let sub = cli.find_subcommand(verb).unwrap_or_else(|| panic!("no subcommand {verb}"));
        let mut want: Vec<String> = own_options(verb).iter().map(|o| expected_name(o, sub)).collect();
        want.extend(global.iter().cloned());
        want.push("--help".into());
        want.sort();
        let visible: Vec<&clap::Arg> = sub.get_arguments().filter(|a| !a.is_hide_set()).collect();
        let mut shown: Vec<String> =
            visible.iter().filter(|a| !a.is_positional()).filter_map(|a| shown_name(a)).collect();
        shown.sort();
        assert_eq!(shown, want, "the options of `{verb}`");
        for arg in &visible {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(!help.trim().is_empty(), "`{verb}`: {} has no help line", arg.get_id());
        }
        // And the rendered --help: its options are there, other verbs' and dkms's ignored ones are not.
        let text = sub.clone().render_help().to_string();
        for option in &want {
            assert!(text.contains(option.as_str()), "`{verb} --help` lacks {option}:\n{text}");
        }
        let own: Vec<&str> = own_options(verb);
        for other in every_option.iter().filter(|o| o.starts_with("--") && !own.contains(&o.as_str())) {
            assert!(!text.contains(&format!("{other} ")), "`{verb} --help` shows {other}:\n{text}");
        }
        for ignored in
            ["--kernelsourcedir", "--directive", "--rpm_safe_upgrade", "--no-initrd", "--modprobe-on-install"]
        {
            assert!(!text.contains(ignored), "`{verb} --help` shows dkms's ignored {ignored}:\n{text}");
        }
    }
}

#[test]
fn the_clap_definition_is_consistent() {
    Cli::command().debug_assert();
}

fn dkms(line: &str) -> Result<Verb, clap::Error> {
    let argv: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    match Cli::try_parse_from(dkms_argv(argv, &Cli::command()))?.command {
        Command::Verb(v) => Ok(*v),
        _ => panic!("{line} is not a dkms verb"),
    }
}

#[test]
fn dkms_command_lines() {
    let Verb::Mktarball(a) = dkms("dkms -m hello -v 1.0 -k 6.1.0-56-amd64 mktarball --binaries-only").unwrap() else {
        panic!("mktarball")
    };
    assert!(a.binaries_only && !a.source_only);
    assert_eq!(a.target.kernels.kernels, ["6.1.0-56-amd64"]);
    let Verb::Ldtarball(a) = dkms("dkms ldtarball --archive=/tmp/h.dkms.tar.gz --force").unwrap() else {
        panic!("ldtarball")
    };
    assert_eq!(a.archive, Some(PathBuf::from("/tmp/h.dkms.tar.gz")));
    assert!(a.force && a.file.is_none());
    let Verb::Ldtarball(a) = dkms("dkms ldtarball h.dkms.tar.gz -k 6.1.0-56-amd64").unwrap() else {
        panic!("ldtarball")
    };
    assert_eq!(a.file, Some(PathBuf::from("h.dkms.tar.gz")));
    let Verb::Install(a) =
        dkms("dkms install --module=hello/1.0 --kernelver=k/x86_64 --no-initrd --no-depmod").unwrap()
    else {
        panic!("install")
    };
    assert_eq!(a.target.select.module.as_deref(), Some("hello/1.0"));
    assert!(a.target.compat.no_initrd && a.depmod.no_depmod);
    assert_eq!(a.target.compat.notes(), ["Deprecated feature: --no-initrd"]);
    let Verb::Status(a) = dkms("dkms status hello --force -j 2 -k k").unwrap() else { panic!("status") };
    assert_eq!((a.what.as_deref(), a.kernels.as_slice()), (Some("hello"), &["k".to_string()][..]));
    let Verb::Remove(a) = dkms("dkms remove -m hello -v 1.0 --all --rpm_safe_upgrade").unwrap() else {
        panic!("remove")
    };
    assert!(a.all && a.target.compat.rpm_safe_upgrade && a.target.compat.notes().is_empty());
    let Verb::KernelPostinst(_) = dkms("dkms kernel_postinst --kernelver 6.1.0-56-amd64").unwrap() else {
        panic!("kernel_postinst")
    };
    // What dkms refuses, clap refuses.
    assert!(dkms("dkms mktarball hello/1.0 --source-only --binaries-only").is_err());
    assert!(dkms("dkms build hello/1.0 --all").is_err());
    assert!(dkms("dkms match -k k").is_err(), "match needs --templatekernel");
    assert!(dkms("dkms ldtarball").is_err(), "ldtarball needs a tarball");
}

#[test]
fn ckms_keeps_its_verbs_strict() {
    let parse = |line: &str| Cli::try_parse_from(line.split_whitespace());
    assert!(parse("ckms status --force").is_err());
    assert!(parse("ckms mktarball hello/1.0 --templatekernel k").is_err());
    assert!(parse("ckms build hello/1.0 --kernelsourcedir /usr/src/linux").is_ok(), "dkms's ignored options");
}

#[test]
fn ignored_options_say_so_where_dkms_users_expect_an_effect() {
    let compat = DkmsCompat {
        kernelsourcedir: Some("/usr/src/linux".into()),
        modprobe_on_install: true,
        rpm_safe_upgrade: true,
        no_prepare_kernel: true,
        ..DkmsCompat::default()
    };
    let notes = compat.notes();
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert!(notes[0].starts_with("--kernelsourcedir is ignored: "), "{notes:?}");
    assert!(notes[1].starts_with("--modprobe-on-install is ignored: "), "{notes:?}");
    assert_eq!(notes[2], "Deprecated feature: --no-prepare-kernel");
}

#[test]
fn kernels_with_and_without_arch() {
    let k = Kernels { kernels: vec!["6.1.0-56-amd64/x86_64".into(), "7.2.13+deb14-amd64".into()], arch: None };
    let t = targets(&k).unwrap();
    assert_eq!(t[0], KernelTarget { release: "6.1.0-56-amd64".into(), arch: Some("x86_64".into()) });
    assert_eq!(t[1], KernelTarget { release: "7.2.13+deb14-amd64".into(), arch: None });
}

#[test]
fn module_and_version_in_one_word() {
    assert_eq!(split("hello/1.0", None), ("hello".to_string(), Some("1.0".to_string())));
    assert_eq!(split("hello", Some("2")), ("hello".to_string(), Some("2".to_string())));
}

#[test]
fn a_host_that_never_builds_installs_from_caches_only() {
    let never = ckms::config::GateConfig { prebuilt_only: Some(true), ..Default::default() };
    let default = ckms::config::GateConfig::default();
    assert!(prebuilt_only(&never, false), "[gate] prebuilt_only holds without the flag");
    assert!(prebuilt_only(&default, true));
    assert!(!prebuilt_only(&default, false));
}
