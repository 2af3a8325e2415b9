//! The verification VM's initramfs: busybox, the init script, the modules to load. Written
//! on the host as a `newc` cpio archive (what the kernel unpacks into its rootfs), so no
//! cpio tool or root is needed: the device node the console needs is just a header.

/// The VM's PID 1.
pub const INIT: &str = include_str!("init.sh");

/// Builds an uncompressed `newc` cpio archive.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

const DIR: u32 = 0o040_000;
const FILE: u32 = 0o100_000;
const LINK: u32 = 0o120_000;
const CHAR: u32 = 0o020_000;

impl Cpio {
    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.entry(path, DIR | 0o755, 2, (0, 0), b"")
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.entry(path, FILE | mode, 1, (0, 0), data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(path, LINK | 0o777, 1, (0, 0), target.as_bytes())
    }

    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> &mut Self {
        self.entry(path, CHAR | mode, 1, (major, minor), b"")
    }

    /// The archive, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), b"");
        self.out
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) -> &mut Self {
        self.ino += 1;
        let name = path.trim_start_matches('/');
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: the same input gives the same archive
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
        self
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }
}

/// One module for the VM to load.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    /// "dep" for a module of the kernel's own package, "module" for one being verified.
    pub role: &'static str,
    pub name: String,
    /// Uncompressed module bytes (busybox's insmod reads the file as it is).
    pub bytes: Vec<u8>,
}

/// A file or symlink more, at an absolute path of the VM (its directories are made).
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    File { mode: u32, data: Vec<u8> },
    Symlink(String),
}

/// What else the VM gets: the distribution's tools with their libraries, the consumer's
/// files, the modules to load with modprobe (`/ckms/modprobe`, a name a line) and its
/// arguments (`/ckms/modprobe.args`), and a script to run first (`/ckms/prepare`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Extra {
    pub nodes: std::collections::BTreeMap<String, Node>,
    pub modprobe: Vec<String>,
    pub modprobe_args: String,
    pub prepare: Option<String>,
}

/// The whole initramfs: busybox as every tool, the init script, the modules in load order,
/// and `extra`.
pub fn build(busybox: &[u8], loads: &[Load], extra: &Extra) -> Vec<u8> {
    let mut cpio = Cpio::default();
    let mut dirs = std::collections::BTreeSet::new();
    for d in ["/bin", "/dev", "/proc", "/sys", "/ckms", "/ckms/modules.d"] {
        cpio.dir(d);
        dirs.insert(d.to_string());
    }
    // Without a console the kernel gives init no stdout: nothing would be reported.
    cpio.char_device("/dev/console", 0o600, 5, 1);
    cpio.file("/bin/busybox", 0o755, busybox);
    cpio.symlink("/bin/sh", "busybox");
    cpio.file("/init", 0o755, INIT.as_bytes());
    let mut list = String::new();
    for (i, l) in loads.iter().enumerate() {
        // Numbered: a dependency and a module being verified may share a name.
        let path = format!("/ckms/modules.d/{i:03}-{}.ko", l.name);
        cpio.file(&path, 0o644, &l.bytes);
        list.push_str(&format!("{} {} {path}\n", l.role, l.name));
    }
    cpio.file("/ckms/modules", 0o644, list.as_bytes());
    for (path, node) in &extra.nodes {
        // The kernel's unpacker makes no parent directories.
        let mut parent = String::new();
        for part in path.trim_start_matches('/').split('/').collect::<Vec<_>>().split_last().map_or(&[][..], |(_, p)| p)
        {
            parent = format!("{parent}/{part}");
            if dirs.insert(parent.clone()) {
                cpio.dir(&parent);
            }
        }
        match node {
            Node::File { mode, data } => cpio.file(path, *mode, data),
            Node::Symlink(target) => cpio.symlink(path, target),
        };
    }
    if !extra.modprobe.is_empty() {
        let names: String = extra.modprobe.iter().map(|n| format!("{n}\n")).collect();
        cpio.file("/ckms/modprobe", 0o644, names.as_bytes());
        cpio.file("/ckms/modprobe.args", 0o644, extra.modprobe_args.as_bytes());
    }
    if let Some(script) = &extra.prepare {
        cpio.file("/ckms/prepare", 0o755, script.as_bytes());
    }
    cpio.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads back (name, mode, data) of every entry, checking the layout as the kernel would.
    fn entries(archive: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(&archive[at..at + 6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&archive[at + 6 + 8 * i..at + 14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name_at = at + 110;
            let name = String::from_utf8(archive[name_at..name_at + namesize - 1].to_vec()).unwrap();
            let data_at = (name_at + namesize).next_multiple_of(4);
            let data = archive[data_at..data_at + size].to_vec();
            at = (data_at + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                assert_eq!(at, archive.len());
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn archive_holds_init_busybox_console_and_modules_in_order() {
        let loads = vec![
            Load { role: "dep", name: "videodev".into(), bytes: b"elf1".to_vec() },
            Load { role: "module", name: "v4l2loopback".into(), bytes: b"elf22".to_vec() },
        ];
        let e = entries(&build(b"BUSYBOX", &loads, &Extra::default()));
        let get = |n: &str| e.iter().find(|(name, ..)| name == n).unwrap_or_else(|| panic!("{n} missing"));
        assert_eq!(get("init").1, FILE | 0o755);
        assert_eq!(get("init").2, INIT.as_bytes());
        assert_eq!(get("bin/busybox").2, b"BUSYBOX");
        assert_eq!(get("dev/console").1, CHAR | 0o600);
        assert_eq!(get("bin/sh").2, b"busybox");
        let list = String::from_utf8(get("ckms/modules").2.clone()).unwrap();
        assert_eq!(
            list,
            "dep videodev /ckms/modules.d/000-videodev.ko\nmodule v4l2loopback /ckms/modules.d/001-v4l2loopback.ko\n"
        );
        assert_eq!(get("ckms/modules.d/001-v4l2loopback.ko").2, b"elf22");
    }

    #[test]
    fn the_same_input_gives_the_same_archive() {
        assert_eq!(build(b"x", &[], &Extra::default()), build(b"x", &[], &Extra::default()));
    }
}
