//! dkms's framework configuration: `<conf_dir>/framework.conf`, then
//! `framework.conf.d/*.conf` (sorted; later ones win). dkms sources these files; ckms reads
//! them without running them: `NAME=value` lines, quotes removed, and `$kernelver` (or
//! `${kernelver}`) expanded where dkms would expand it.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The settings the files give, by name (the last file that sets one wins).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Framework {
    values: BTreeMap<String, String>,
}

/// The most of one file ckms reads: a settings file, not data.
const MAX_FILE: u64 = 1 << 20;

impl Framework {
    /// Reads the files under `conf_dir`; missing or unreadable ones are skipped, as dkms does.
    pub fn read(conf_dir: &Path) -> Framework {
        let mut files = vec![conf_dir.join("framework.conf")];
        if let Ok(dir) = std::fs::read_dir(conf_dir.join("framework.conf.d")) {
            let mut more: Vec<PathBuf> = dir
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .collect();
            more.sort();
            files.extend(more);
        }
        let mut out = Framework::default();
        for file in files {
            let mut text = Vec::new();
            let read = std::fs::File::open(&file).and_then(|f| f.take(MAX_FILE).read_to_end(&mut text));
            if read.is_ok() {
                out.parse(&String::from_utf8_lossy(&text));
            }
        }
        out
    }

    /// Takes the `NAME=value` lines of `text`; anything else (comments, functions, commands)
    /// is not run and not read.
    pub fn parse(&mut self, text: &str) {
        for line in text.lines() {
            let line = line.trim();
            let Some((name, value)) = line.split_once('=') else { continue };
            let name = name.trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let value = value.trim();
            let value = ['"', '\'']
                .iter()
                .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
                .unwrap_or(value);
            self.values.insert(name.to_string(), value.to_string());
        }
    }

    /// The setting `name`, unless unset or empty (dkms tests `[[ ! $name ]]`).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// The setting `name` with the kernel's release put for `$kernelver`, when one is known.
    pub fn expanded(&self, name: &str, kernel: Option<&str>) -> Option<String> {
        let value = self.get(name)?;
        Some(match kernel {
            Some(k) => value.replace("${kernelver}", k).replace("$kernelver", k),
            None => value.to_string(),
        })
    }

    /// [`Framework::expanded`] as a path.
    pub fn path(&self, name: &str, kernel: Option<&str>) -> Option<PathBuf> {
        self.expanded(name, kernel).map(PathBuf::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_read_not_run() {
        let mut f = Framework::default();
        f.parse("# comment\nmok_signing_key=\"/k/my key.pem\"\nmok_certificate='/k/c.der'\n$(touch /tmp/x)\n");
        f.parse("do_status() {\n\techo hijacked\n}\nsign_file=\nx y=1\n");
        assert_eq!(f.get("mok_signing_key"), Some("/k/my key.pem"));
        assert_eq!(f.get("mok_certificate"), Some("/k/c.der"));
        assert_eq!(f.get("sign_file"), None, "empty is unset");
        assert_eq!(f.get("x y"), None);
    }

    #[test]
    fn later_files_win_and_kernelver_expands() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("framework.conf"), "sign_file=/a\npost_transaction=\"echo $kernelver\"\n")
            .unwrap();
        std::fs::create_dir(dir.path().join("framework.conf.d")).unwrap();
        std::fs::write(dir.path().join("framework.conf.d/b.conf"), "sign_file=/b/${kernelver}/sign-file\n").unwrap();
        std::fs::write(dir.path().join("framework.conf.d/a.conf"), "sign_file=/never\n").unwrap();
        std::fs::write(dir.path().join("framework.conf.d/c.txt"), "sign_file=/never\n").unwrap();
        let f = Framework::read(dir.path());
        assert_eq!(f.path("sign_file", Some("6.1.0-1-amd64")), Some(PathBuf::from("/b/6.1.0-1-amd64/sign-file")));
        assert_eq!(f.expanded("post_transaction", Some("k")).as_deref(), Some("echo k"));
        assert_eq!(Framework::read(&dir.path().join("none")), Framework::default());
    }
}
