//! `ckms generate-docs DIR` (hidden): the man pages and shell completions of `ckms` and of
//! `dkms` (this binary under dkms's name), made from the clap definitions themselves, so that
//! they never drift from the command line. DIR is laid out as /usr/share is: ci/package-deb
//! runs this into the package.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

use super::error::Error;
use super::{verbs, Cli, Output};

/// The man pages' directory under DIR: section 8, as dkms's own page.
const MAN: &str = "man/man8";

/// Each shell's completions: the directory under DIR, and the file name around the command's.
const COMPLETIONS: [(Shell, &str, &str, &str); 3] = [
    (Shell::Bash, "bash-completion/completions", "", ""),
    (Shell::Zsh, "zsh/vendor-completions", "_", ""),
    (Shell::Fish, "fish/vendor_completions.d", "", ".fish"),
];

/// Writes every page and completion file under `dir`; the files written.
pub fn generate(out: &Output, dir: &Path) -> Result<i32, Error> {
    let failed = |path: &Path, e: std::io::Error| Error::usage(format!("{}: {e}", path.display()), None);
    let ckms = Cli::command();
    let dkms = verbs::dkms_command(&ckms);
    let mut written = Vec::new();
    for cmd in [ckms, dkms] {
        let man = dir.join(MAN);
        std::fs::create_dir_all(&man).map_err(|e| failed(&man, e))?;
        let mut root = cmd.clone().disable_help_subcommand(true);
        root.build();
        pages(root, &man, &mut written).map_err(|e| failed(&man, e))?;
        let name = cmd.get_name().to_string();
        for (shell, sub, prefix, suffix) in COMPLETIONS {
            let path = dir.join(sub).join(format!("{prefix}{name}{suffix}"));
            completion(&cmd, shell, &path).map_err(|e| failed(&path, e))?;
            written.push(path);
        }
    }
    out.result(&written, || written.iter().map(|p| format!("{}\n", p.display())).collect());
    Ok(0)
}

/// The page of `cmd` (built) and of each of its visible subcommands, `ckms-farm-build.8` and
/// so on, as git and cargo ship theirs.
fn pages(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages(sub.clone(), dir, written)?;
    }
    let man =
        clap_mangen::Man::new(cmd).section("8").source(format!("ckms {}", env!("CARGO_PKG_VERSION"))).manual("ckms");
    written.push(man.generate_to(dir)?);
    Ok(())
}

fn completion(cmd: &clap::Command, shell: Shell, path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut bytes = Vec::new();
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd.clone(), name, &mut bytes);
    std::fs::write(path, bytes)
}
