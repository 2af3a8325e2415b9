//! A module's `.modinfo` section (`name=`, `depends=`, `vermagic=`...), read from the ELF
//! file itself: the host needs no kmod, and the VM gets exactly the dependencies it needs.

use std::collections::BTreeMap;

/// `key=value` pairs of a module's `.modinfo` section; a key may repeat (`alias=`, `parm=`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ModInfo(pub Vec<(String, String)>);

impl ModInfo {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The modules this one needs loaded first, by name (`depends=a,b`).
    pub fn depends(&self) -> Vec<String> {
        self.get("depends").map(|d| d.split(',').filter(|s| !s.is_empty()).map(canonical).collect()).unwrap_or_default()
    }

    /// The names a `softdep=` line asks modprobe to load first (`pre: a b post: c`): module
    /// names or aliases (`crc32c`), as written.
    pub fn soft_pre(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (_, line) in self.0.iter().filter(|(k, _)| k == "softdep") {
            let mut pre = false;
            for word in line.split_whitespace() {
                match word {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    name if pre => out.push(name.to_string()),
                    _ => {}
                }
            }
        }
        out
    }

    /// The aliases that name the module outright (`crc32c`, `crypto-crc32c`): not the device
    /// patterns (`pci:v...*`), which no softdep names.
    pub fn plain_aliases(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter(|(k, v)| k == "alias" && !v.contains(['*', '?', '[', ':'])).map(|(_, v)| v.as_str())
    }
}

/// Module names treat `-` and `_` alike; the kernel reports them with `_`.
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name a file name stands for: `videobuf2-core.ko.xz` → `videobuf2_core`.
pub fn name_of_file(file_name: &str) -> Option<String> {
    let stem = file_name.split_once(".ko").filter(|(_, rest)| rest.is_empty() || rest.starts_with('.'))?.0;
    Some(canonical(stem))
}

/// Parses the `.modinfo` section of a 64-bit little-endian ELF object (what x86_64 modules are).
pub fn parse(elf: &[u8]) -> Result<ModInfo, String> {
    let section = section(elf, ".modinfo")?.ok_or("it has no .modinfo section: not a kernel module")?;
    let mut pairs = Vec::new();
    for entry in section.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let text = String::from_utf8_lossy(entry);
        if let Some((k, v)) = text.split_once('=') {
            pairs.push((k.to_string(), v.to_string()));
        }
    }
    Ok(ModInfo(pairs))
}

fn section<'a>(elf: &'a [u8], wanted: &str) -> Result<Option<&'a [u8]>, String> {
    for (name, off, len) in sections(elf)? {
        if name == wanted {
            return elf
                .get(off..off.saturating_add(len))
                .map(Some)
                .ok_or_else(|| format!("section {wanted} out of bounds"));
        }
    }
    Ok(None)
}

/// The section holding byte `at` of a module (or its appended signature): where two builds
/// of a module differ, for `farm build --check`.
pub fn section_at(elf: &[u8], at: usize) -> Option<String> {
    let all = sections(elf).ok()?;
    if let Some((name, _, _)) = all.iter().rfind(|(_, off, len)| *len > 0 && (*off..off + len).contains(&at)) {
        return Some(name.clone());
    }
    let end = all.iter().map(|(_, off, len)| off + len).max()?;
    (at >= end).then(|| "after the sections: the section headers or the module signature".to_string())
}

/// Every section's name, offset and size, of a 64-bit little-endian ELF object.
fn sections(elf: &[u8]) -> Result<Vec<(String, usize, usize)>, String> {
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("not an ELF file".into());
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let u64_at =
        |o: usize| elf.get(o..o + 8).and_then(|b| usize::try_from(u64::from_le_bytes(b.try_into().ok()?)).ok());
    let truncated = || "truncated ELF header".to_string();
    let shoff = u64_at(0x28).ok_or_else(truncated)?;
    let shentsize = u16_at(0x3a).ok_or_else(truncated)?;
    let shnum = u16_at(0x3c).ok_or_else(truncated)?;
    let shstrndx = u16_at(0x3e).ok_or_else(truncated)?;
    let header = |i: usize| -> Option<(usize, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((u32_at(h)?, u64_at(h + 0x18)?, u64_at(h + 0x20)?))
    };
    let (_, str_off, str_len) = header(shstrndx).ok_or("bad section string table")?;
    let names = elf.get(str_off..str_off.saturating_add(str_len)).ok_or("section string table out of bounds")?;
    let mut out = Vec::new();
    for i in 0..shnum {
        let (name, off, len) = header(i).ok_or("section header out of bounds")?;
        let name_bytes = names.get(name..).unwrap_or_default();
        let end = name_bytes.iter().position(|b| *b == 0).unwrap_or(name_bytes.len());
        out.push((String::from_utf8_lossy(&name_bytes[..end]).into_owned(), off, len));
    }
    Ok(out)
}

/// Modules to load before `roots`, dependencies first, each once: `depends` maps a module
/// name to its `depends=`. Names missing from the map are returned in `missing`.
pub fn load_order(roots: &[String], depends: &BTreeMap<String, Vec<String>>) -> (Vec<String>, Vec<String>) {
    fn visit(
        name: &str,
        depends: &BTreeMap<String, Vec<String>>,
        seen: &mut Vec<String>,
        order: &mut Vec<String>,
        missing: &mut Vec<String>,
    ) {
        if seen.iter().any(|s| s == name) {
            return;
        }
        seen.push(name.to_string());
        match depends.get(name) {
            Some(deps) => {
                for d in deps {
                    visit(d, depends, seen, order, missing);
                }
                order.push(name.to_string());
            }
            None => missing.push(name.to_string()),
        }
    }
    let (mut seen, mut order, mut missing) = (Vec::new(), Vec::new(), Vec::new());
    for r in roots {
        visit(r, depends, &mut seen, &mut order, &mut missing);
    }
    (order, missing)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 with a .shstrtab and a .modinfo section.
    pub(crate) fn tiny_module(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        let str_off = elf.len();
        elf.extend_from_slice(shstrtab);
        let info_off = elf.len();
        elf.extend_from_slice(modinfo);
        let shoff = elf.len();
        let mut sh = |name: u32, off: usize, len: usize| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(len as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, str_off, shstrtab.len());
        sh(11, info_off, modinfo.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    #[test]
    fn reads_depends_and_vermagic() {
        let elf = tiny_module(b"license=GPL\0depends=videodev,v4l2-common\0vermagic=6.1.0-56-amd64 SMP\0\0");
        let info = parse(&elf).unwrap();
        assert_eq!(info.depends(), vec!["videodev", "v4l2_common"]);
        assert_eq!(info.get("vermagic"), Some("6.1.0-56-amd64 SMP"));
        assert!(parse(&tiny_module(b"depends=\0")).unwrap().depends().is_empty());
    }

    #[test]
    fn reads_pre_softdeps_and_plain_aliases() {
        let elf = tiny_module(
            b"softdep=pre: crc32c post: ghost\0softdep=pre: a b\0alias=crypto-crc32c\0alias=pci:v*d*\0alias=crc32c\0",
        );
        let info = parse(&elf).unwrap();
        assert_eq!(info.soft_pre(), ["crc32c", "a", "b"]);
        assert_eq!(info.plain_aliases().collect::<Vec<_>>(), ["crypto-crc32c", "crc32c"]);
        assert!(parse(&tiny_module(b"license=GPL\0")).unwrap().soft_pre().is_empty());
    }

    #[test]
    fn refuses_what_is_not_a_module() {
        assert!(parse(b"hello").unwrap_err().contains("not an ELF"));
        let mut elf = tiny_module(b"x=y\0");
        elf.truncate(70);
        assert!(parse(&elf).is_err());
    }

    #[test]
    fn names_from_file_names() {
        assert_eq!(name_of_file("videobuf2-core.ko.xz").as_deref(), Some("videobuf2_core"));
        assert_eq!(name_of_file("hello.ko").as_deref(), Some("hello"));
        assert_eq!(name_of_file("hello.kox"), None);
        assert_eq!(name_of_file("modules.dep"), None);
    }

    #[test]
    fn dependencies_load_first_once() {
        let deps: BTreeMap<String, Vec<String>> = [
            ("v4l2loopback", vec!["videodev"]),
            ("videodev", vec!["mc"]),
            ("mc", vec![]),
            ("other", vec!["mc", "ghost"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
        let (order, missing) = load_order(&["v4l2loopback".into(), "other".into()], &deps);
        assert_eq!(order, vec!["mc", "videodev", "v4l2loopback", "other"]);
        assert_eq!(missing, vec!["ghost"]);
    }
}
