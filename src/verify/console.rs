//! Reads what the VM's init (init.sh) printed on the serial console.

use serde::Serialize;

const PREFIX: &str = "ckms-verify: ";

/// What happened to one module in the VM.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Loaded {
    pub name: String,
    /// "module" (one being verified) or "dep" (from the kernel's own package).
    pub role: String,
    pub loaded: bool,
    /// insmod's complaint, e.g. "can't insert '...': Unknown symbol in module".
    pub insmod: Vec<String>,
    /// The kernel's own messages while the module loaded (dmesg, timestamps removed).
    pub kernel: Vec<String>,
    /// Set when the module was built for another kernel than the VM's (its vermagic), even
    /// if the kernel took it: with CONFIG_MODVERSIONS the kernel compares symbol versions,
    /// not releases, so a module of a neighbouring ABI may load, yet it is not this kernel's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<String>,
}

impl Loaded {
    /// Loaded, and built for this kernel.
    pub fn ok(&self) -> bool {
        self.loaded && self.mismatch.is_none()
    }

    /// Why it is not ok, in one line: the kernel's reason when it gave one, else insmod's.
    pub fn reason(&self) -> Option<String> {
        if self.loaded {
            return self.mismatch.clone();
        }
        let errno = self.insmod.iter().find_map(|l| l.rsplit_once("': ").map(|(_, e)| e.to_string()));
        // Taint notices (out-of-tree, unsigned) come with every load; they are not the reason.
        let kernel = self.kernel.iter().rev().find(|l| !l.contains("taint")).cloned();
        let why = match (kernel, errno) {
            (Some(k), Some(e)) => format!("{e}: {k}"),
            (k, e) => k.or(e).unwrap_or_else(|| "insmod failed without a message".into()),
        };
        Some(match &self.mismatch {
            Some(m) => format!("{why}; {m}"),
            None => why,
        })
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Console {
    /// `uname -r` in the VM.
    pub release: Option<String>,
    pub modules: Vec<Loaded>,
    /// What the preparation (`--sysext`: the merge) printed.
    pub prepare: Vec<String>,
    /// init reached its end (every module was tried).
    pub completed: bool,
}

pub fn parse(log: &str) -> Console {
    let mut c = Console::default();
    for line in log.lines() {
        let Some(rest) = line.trim_end_matches('\r').split_once(PREFIX).map(|(_, r)| r) else {
            continue;
        };
        if let Some(release) = rest.strip_prefix("kernel ") {
            c.release = Some(release.trim().to_string());
        } else if rest == "done" {
            c.completed = true;
        } else if let Some(msg) = rest.strip_prefix("prepare: ") {
            c.prepare.push(msg.to_string());
        } else if let Some(msg) = rest.strip_prefix("insmod: ") {
            if let Some(m) = c.modules.last_mut() {
                m.insmod.push(msg.to_string());
            }
        } else if let Some(msg) = rest.strip_prefix("kernel: ") {
            if let Some(m) = c.modules.last_mut() {
                m.kernel.push(strip_timestamp(msg).to_string());
            }
        } else if let Some((role, name, rc)) = result_line(rest) {
            c.modules.push(Loaded {
                name: name.to_string(),
                role: role.to_string(),
                loaded: rc == "0",
                insmod: Vec::new(),
                kernel: Vec::new(),
                mismatch: None,
            });
        }
    }
    c
}

/// "module v4l2loopback rc=0" → ("module", "v4l2loopback", "0").
fn result_line(rest: &str) -> Option<(&str, &str, &str)> {
    let mut words = rest.split(' ');
    let (role, name, rc) = (words.next()?, words.next()?, words.next()?.strip_prefix("rc=")?);
    (words.next().is_none() && matches!(role, "module" | "dep")).then_some((role, name, rc))
}

/// "[    1.234567] text" → "text".
fn strip_timestamp(line: &str) -> &str {
    match line.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        Some((stamp, text)) if stamp.trim().parse::<f64>().is_ok() => text,
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "SeaBIOS (version 1.16)\r
ckms-verify: kernel 6.1.0-56-amd64\r
ckms-verify: dep mc rc=0\r
ckms-verify: dep videodev rc=0\r
ckms-verify: kernel: [    2.100000] videodev: Linux video capture interface: v2.00\r
ckms-verify: module v4l2loopback rc=0\r
ckms-verify: kernel: [    2.200000] v4l2loopback: loading out-of-tree module taints kernel.\r
ckms-verify: kernel: [    2.210000] v4l2loopback driver version 0.12.7 loaded\r
ckms-verify: module broken rc=1\r
ckms-verify: insmod: insmod: can't insert '/ckms/modules.d/003-broken.ko': No such device\r
ckms-verify: kernel: [    2.300000] broken: init says no\r
ckms-verify: done\r
";

    #[test]
    fn reads_every_module_with_its_messages() {
        let c = parse(LOG);
        assert_eq!(c.release.as_deref(), Some("6.1.0-56-amd64"));
        assert!(c.completed);
        assert_eq!(c.modules.len(), 4);
        let v = &c.modules[2];
        assert!(v.loaded && v.role == "module");
        assert_eq!(
            v.kernel,
            vec![
                "v4l2loopback: loading out-of-tree module taints kernel.",
                "v4l2loopback driver version 0.12.7 loaded"
            ]
        );
        assert_eq!(v.reason(), None);
        let b = &c.modules[3];
        assert!(!b.loaded);
        assert_eq!(b.reason().as_deref(), Some("No such device: broken: init says no"));
    }

    #[test]
    fn a_vm_that_died_early_is_not_completed() {
        let c = parse("ckms-verify: kernel 6.1.0-56-amd64\nKernel panic - not syncing\n");
        assert!(!c.completed);
        assert!(c.modules.is_empty());
    }

    #[test]
    fn reason_without_kernel_words_is_insmods() {
        let l = Loaded {
            name: "x".into(),
            role: "module".into(),
            loaded: false,
            insmod: vec!["insmod: can't insert 'x.ko': Invalid module format".into()],
            kernel: vec![],
            mismatch: None,
        };
        assert_eq!(l.reason().as_deref(), Some("Invalid module format"));
    }
}
