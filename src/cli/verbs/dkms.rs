//! dkms's command line, when the binary is called as `dkms`: options may come before the verb,
//! and every option dkms knows is accepted with every verb (dkms parses them all globally and
//! each action reads those it needs).

use super::VERBS;

/// dkms's options (dkms 3.x's argument parser) and ckms's global ones: name, takes a value.
const DKMS_OPTIONS: &[(&str, bool)] = &[
    ("-m", true),
    ("--module", true),
    ("-v", true),
    ("-k", true),
    ("--kernelver", true),
    ("-a", true),
    ("--arch", true),
    ("-c", true),
    ("-j", true),
    ("--templatekernel", true),
    ("--dkmstree", true),
    ("--sourcetree", true),
    ("--installtree", true),
    ("--config", true),
    ("--archive", true),
    ("--kernelsourcedir", true),
    ("--directive", true),
    ("-q", false),
    ("--quiet", false),
    ("--no-initrd", false),
    ("--no-clean-kernel", false),
    ("--no-prepare-kernel", false),
    ("--binaries-only", false),
    ("--source-only", false),
    ("--force", false),
    ("--force-version-override", false),
    ("--all", false),
    ("--verbose", false),
    ("--rpm_safe_upgrade", false),
    ("--symlink-modules", false),
    ("--no-depmod", false),
    ("--modprobe-on-install", false),
    ("--debug", false),
    // ckms's own, which dkms users may add.
    ("-p", true),
    ("--profile", true),
    ("--package", true),
    ("--root", true),
    ("--engine", true),
    ("--cache-dir", true),
];

/// Rewrites dkms's argv for clap: the first word that is a verb (and not an option's value)
/// moves to the front, and a dkms option the verb has no use for is dropped, as dkms ignores
/// it (`dkms status --force`). `--all` stays: dkms refuses it where it does not apply, and so
/// does clap. Options neither ckms nor dkms knows stay too, for clap to reject.
pub fn dkms_argv(args: Vec<String>, cli: &clap::Command) -> Vec<String> {
    let mut rest: Vec<String> = args.into_iter().skip(1).collect();
    let mut i = 0;
    while i < rest.len() {
        let a = rest[i].as_str();
        if VERBS.contains(&a) {
            let verb = rest.remove(i);
            rest.insert(0, verb);
            break;
        }
        i += if takes_value(a) { 2 } else { 1 };
    }
    let accepted = rest.first().and_then(|verb| cli.find_subcommand(verb)).map(|sub| accepted(cli, sub));
    let Some(accepted) = accepted else {
        return std::iter::once("dkms".to_string()).chain(rest).collect();
    };
    let mut out = vec!["dkms".to_string(), rest[0].clone()];
    let mut words = rest.into_iter().skip(1);
    while let Some(word) = words.next() {
        let name = word.split_once('=').map_or(word.as_str(), |(n, _)| n).to_string();
        let dkms_option = DKMS_OPTIONS.iter().any(|(o, _)| *o == name);
        let drop = dkms_option && name != "--all" && !accepted.contains(&name);
        let value = (takes_value(&name) && !word.contains('=')).then(|| words.next()).flatten();
        if !drop {
            out.push(word);
            out.extend(value);
        }
    }
    out
}

fn takes_value(option: &str) -> bool {
    DKMS_OPTIONS.iter().any(|(o, with_value)| *o == option && *with_value)
}

/// dkms's command line for its man page and completions: the verbs of `ckms` (`cli`) under
/// the names dkms gives them, and the options every command takes.
pub fn dkms_command(cli: &clap::Command) -> clap::Command {
    let dkms = clap::Command::new("dkms")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Dynamic Kernel Module Support, as ckms provides it")
        .long_about(
            "dkms's verbs and options (which may come before the verb), each build in a rootless, \
             sandboxed container whose image holds the kernel's headers and compiler; see ckms(8)",
        )
        .args(cli.get_arguments().filter(|a| a.is_global_set()).cloned());
    cli.get_subcommands().fold(dkms, |dkms, sub| {
        let names: Vec<&str> = std::iter::once(sub.get_name()).chain(sub.get_all_aliases()).collect();
        match VERBS.iter().find(|v| names.contains(v)) {
            Some(&name) if name == sub.get_name() => dkms.subcommand(sub.clone()),
            // ckms names it otherwise (generate-mok, alias generate_mok): the same arguments
            // under dkms's name alone.
            Some(&name) => dkms.subcommand(
                clap::Command::new(name)
                    .about(sub.get_about().cloned().unwrap_or_default())
                    .args(sub.get_arguments().cloned())
                    .groups(sub.get_groups().cloned()),
            ),
            None => dkms,
        }
    })
}

/// `-x` and `--xyz` names `sub` takes, its aliases and the global options of `cli`.
fn accepted(cli: &clap::Command, sub: &clap::Command) -> Vec<String> {
    let mut names = Vec::new();
    for arg in cli.get_arguments().filter(|a| a.is_global_set()).chain(sub.get_arguments()) {
        names.extend(arg.get_short_and_visible_aliases().into_iter().flatten().map(|c| format!("-{c}")));
        names.extend(arg.get_long_and_visible_aliases().into_iter().flatten().map(|l| format!("--{l}")));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::CommandFactory;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn rewrite(s: &str) -> Vec<String> {
        dkms_argv(argv(s), &Cli::command())
    }

    #[test]
    fn dkms_command_line_is_the_verbs_under_dkms_names() {
        let dkms = dkms_command(&Cli::command());
        let names: Vec<&str> = dkms.get_subcommands().map(|s| s.get_name()).collect();
        assert!(names.contains(&"build") && names.contains(&"generate_mok"), "{names:?}");
        assert!(!names.contains(&"farm") && !names.contains(&"generate-mok"), "{names:?}");
        assert_eq!(names.len(), VERBS.len(), "every verb dkms knows: {names:?}");
        assert!(dkms.get_arguments().any(|a| a.get_long() == Some("json")), "ckms's global options");
        dkms.debug_assert();
    }

    #[test]
    fn dkms_options_may_come_before_the_verb() {
        assert_eq!(rewrite("dkms -m x -v 1 build -k k"), argv("dkms build -m x -v 1 -k k"));
        assert_eq!(rewrite("/usr/sbin/dkms status"), argv("dkms status"));
        // A module called like a verb is an option's value, not the verb.
        assert_eq!(rewrite("dkms -m install -v 1 remove --all"), argv("dkms remove -m install -v 1 --all"));
        assert_eq!(rewrite("dkms --kernelver=k -m x/1 mktarball"), argv("dkms mktarball --kernelver=k -m x/1"));
    }

    #[test]
    fn options_the_verb_does_not_use_are_dropped_as_dkms_ignores_them() {
        assert_eq!(rewrite("dkms status --force -j 4 -k k"), argv("dkms status -k k"));
        assert_eq!(rewrite("dkms add -m x -v 1 -k k --verbose"), argv("dkms add -m x -v 1"));
        assert_eq!(
            rewrite("dkms ldtarball --archive=t.tar.gz -k k --all"),
            argv("dkms ldtarball --archive=t.tar.gz --all")
        );
        // Kept: what the verb takes, ckms's global options, dkms's ignored ones (hidden), and
        // options dkms does not know either (clap rejects them).
        assert_eq!(
            rewrite("dkms install x/1 --force --json --no-initrd --rpm_safe_upgrade --bogus"),
            argv("dkms install x/1 --force --json --no-initrd --rpm_safe_upgrade --bogus")
        );
    }
}
