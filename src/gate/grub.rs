//! `[gate] on_failure = "keep-default"`: GRUB's saved default pointed at the newest ready
//! kernel: grubenv's `saved_entry`, set with `grub-editenv` as `grub-set-default` sets it
//! (grub-editenv is in grub-common, which every GRUB system has). GRUB boots the saved entry only
//! when GRUB_DEFAULT=saved; ckms does not change the boot loader's configuration itself, and
//! says so when it is not set (docs/gate.md).

use std::path::{Path, PathBuf};

/// What pointing the default at a kernel came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pointed {
    /// `saved_entry` is this entry now.
    Set(String),
    /// GRUB_DEFAULT is not `saved`: the saved entry would not count.
    NotSaved(String),
    /// No `grub-editenv` on this host (another boot loader).
    NoGrub,
    Failed(String),
}

/// A system's GRUB configuration, under `root` (`/` on a host).
pub struct Grub {
    root: PathBuf,
}

impl Grub {
    pub fn new(root: &Path) -> Grub {
        Grub { root: root.to_path_buf() }
    }

    /// Makes `kernel` the entry GRUB boots by default.
    pub fn point_at(&self, kernel: &str) -> Pointed {
        let default = self.grub_default();
        if default.as_deref() != Some("saved") {
            return Pointed::NotSaved(default.unwrap_or_else(|| "0".into()));
        }
        let cfg = std::fs::read_to_string(self.root.join("boot/grub/grub.cfg")).unwrap_or_default();
        let entry = entry_id(&cfg, kernel).unwrap_or_else(|| self.entry_title(kernel));
        let run = std::process::Command::new("grub-editenv")
            .arg(self.root.join("boot/grub/grubenv"))
            .arg("set")
            .arg(format!("saved_entry={entry}"))
            .output();
        match run {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Pointed::NoGrub,
            Err(e) => Pointed::Failed(e.to_string()),
            Ok(o) if o.status.success() => Pointed::Set(entry),
            Ok(o) => Pointed::Failed(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        }
    }

    /// GRUB_DEFAULT as grub-mkconfig reads it: /etc/default/grub, then /etc/default/grub.d/*.cfg.
    fn grub_default(&self) -> Option<String> {
        let etc = self.root.join("etc/default");
        let mut files = vec![etc.join("grub")];
        let mut more: Vec<PathBuf> = std::fs::read_dir(etc.join("grub.d"))
            .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "cfg")).collect())
            .unwrap_or_default();
        more.sort();
        files.extend(more);
        files.iter().rev().filter_map(|f| std::fs::read_to_string(f).ok()).find_map(|t| assigned(&t, "GRUB_DEFAULT"))
    }

    /// The title path grub-mkconfig gives the kernel's entry under "Advanced options".
    fn entry_title(&self, kernel: &str) -> String {
        let text = std::fs::read_to_string(self.root.join("etc/default/grub")).unwrap_or_default();
        let os =
            assigned(&text, "GRUB_DISTRIBUTOR").filter(|d| !d.contains(['$', '`'])).unwrap_or_else(|| "Debian".into());
        format!("Advanced options for {os} GNU/Linux>{os} GNU/Linux, with Linux {kernel}")
    }
}

/// The last value `name` is set to in a shell-style file, unquoted.
fn assigned(text: &str, name: &str) -> Option<String> {
    text.lines()
        .rev()
        .filter_map(|l| l.trim().strip_prefix(name)?.strip_prefix('='))
        .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
        .next()
}

/// `submenu-id>entry-id` of `kernel`'s normal entry under the "Advanced options" submenu of a
/// grub.cfg that grub-mkconfig wrote.
pub fn entry_id(cfg: &str, kernel: &str) -> Option<String> {
    let id = |line: &str| line.split("$menuentry_id_option '").nth(1)?.split('\'').next().map(str::to_string);
    let mut submenu = None;
    for line in cfg.lines().map(str::trim_start) {
        if line.starts_with("submenu ") {
            submenu = id(line);
        } else if line.starts_with("menuentry ") {
            let Some(entry) = id(line) else { continue };
            if entry.starts_with(&format!("gnulinux-{kernel}-advanced-")) {
                return Some(match &submenu {
                    Some(s) => format!("{s}>{entry}"),
                    None => entry,
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "\
menuentry 'Debian GNU/Linux' --class debian $menuentry_id_option 'gnulinux-simple-1234' {
}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-1234' {
\tmenuentry 'Debian GNU/Linux, with Linux 6.12.57+deb12-amd64' --class debian $menuentry_id_option 'gnulinux-6.12.57+deb12-amd64-advanced-1234' {
\t}
\tmenuentry 'Debian GNU/Linux, with Linux 6.12.57+deb12-amd64 (recovery mode)' $menuentry_id_option 'gnulinux-6.12.57+deb12-amd64-recovery-1234' {
\t}
\tmenuentry 'Debian GNU/Linux, with Linux 6.1.0-56-amd64' --class debian $menuentry_id_option 'gnulinux-6.1.0-56-amd64-advanced-1234' {
\t}
}
";

    #[test]
    fn the_advanced_entry_of_a_kernel_by_its_ids() {
        assert_eq!(
            entry_id(CFG, "6.1.0-56-amd64").as_deref(),
            Some("gnulinux-advanced-1234>gnulinux-6.1.0-56-amd64-advanced-1234")
        );
        assert_eq!(entry_id(CFG, "6.1.0-5-amd64"), None);
    }

    #[test]
    fn grub_default_as_grub_mkconfig_reads_it() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc/default");
        std::fs::create_dir_all(etc.join("grub.d")).unwrap();
        std::fs::write(
            etc.join("grub"),
            "GRUB_DEFAULT=0\nGRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`\n",
        )
        .unwrap();
        let grub = Grub::new(root.path());
        assert_eq!(grub.point_at("6.1.0-56-amd64"), Pointed::NotSaved("0".into()));
        std::fs::write(etc.join("grub.d/ckms.cfg"), "GRUB_DEFAULT=\"saved\"\n").unwrap();
        assert_eq!(grub.grub_default().as_deref(), Some("saved"));
        assert_eq!(
            grub.entry_title("6.1.0-56-amd64"),
            "Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux 6.1.0-56-amd64"
        );
    }
}
