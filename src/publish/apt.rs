//! `--format apt`: one Debian package per (module, kernel) and a signed apt repository of them,
//! what dkms's removed mkdeb/mkbmdeb made for one host, here for a whole fleet.
//!
//! ```text
//! <out>/ckms-archive-keyring.gpg                 the farm's public key (apt's signed-by), .asc too
//! <out>/pool/main/<m>/<module>/<package>_<version>_<arch>.deb
//! <out>/dists/<suite>/main/binary-<arch>/Packages, Packages.gz
//! <out>/dists/<suite>/Release, InRelease, Release.gpg
//! ```
//!
//! A package `v4l2loopback-modules-6.1.0-56-amd64` holds the store's module files (signed,
//! compressed as the kernel's own) in `/lib/modules/<kver>/updates/dkms`, depends on the
//! kernel's image package, and runs depmod for that kernel after it is installed and after it
//! is removed. Its version is the module's with the store entry's build time as revision, so
//! that a rebuild of the same version (another builder image, another signing key) upgrades.
//! Suites are the kernels' profiles' (bookworm kernels in `bookworm`, trixie's in `trixie`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use super::deb::{self, Entry};
use super::openpgp::RepoSigner;
use super::pairs::BuiltPair;
use super::{write_file, PublishError};
use crate::cache::sha256_hex;

pub const KEYRING: &str = "ckms-archive-keyring.gpg";
const COMPONENT: &str = "main";

/// Writes the repository of `pairs` into `out` (empty); what a host adds to its sources.
pub fn write(out: &Path, pairs: &[BuiltPair], signer: &dyn RepoSigner) -> Result<Vec<String>, PublishError> {
    let maintainer = signer.user_id().unwrap_or_else(|| "ckms farm <root@localhost>".into());
    // (suite, arch) -> Packages stanzas, in package order.
    let mut indexes: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut epochs: BTreeMap<String, u64> = BTreeMap::new();
    for pair in pairs {
        let (control, scripts) = control(pair, &maintainer)?;
        let files: Vec<(String, Vec<u8>)> = pair
            .files
            .iter()
            .map(|f| {
                let data = std::fs::read(&f.path).map_err(PublishError::io(&f.path))?;
                Ok((format!("lib/modules/{}{}/{}", pair.kernel, slash(&f.dest), f.file_name), data))
            })
            .collect::<Result<_, PublishError>>()?;
        let entries: Vec<Entry> =
            files.iter().map(|(path, data)| Entry { path: path.clone(), mode: 0o644, data }).collect();
        let text = render(&control);
        let bytes = deb::build(&text, &scripts, &entries, pair.epoch)
            .map_err(|e| PublishError::Io { path: out.join("pool"), source: e })?;
        let (name, version, arch) = (&control[0].1, &control[1].1, &control[2].1);
        let first = name.chars().next().unwrap_or('_');
        let filename = format!("pool/{COMPONENT}/{first}/{name}/{name}_{version}_{arch}.deb");
        write_file(out, &filename, &bytes)?;
        let stanza = format!("{text}Filename: {filename}\nSize: {}\nSHA256: {}\n", bytes.len(), sha256_hex(&bytes));
        indexes.entry((pair.target.suite.clone(), arch.clone())).or_default().push(stanza);
        let e = epochs.entry(pair.target.suite.clone()).or_default();
        *e = (*e).max(pair.epoch);
    }

    let mut notes = Vec::new();
    for (suite, epoch) in &epochs {
        let mut sums = Vec::new();
        let archs: Vec<&str> = indexes.keys().filter(|(s, _)| s == suite).map(|(_, a)| a.as_str()).collect();
        for arch in &archs {
            let packages = indexes[&(suite.clone(), arch.to_string())].join("\n");
            let dir = format!("{COMPONENT}/binary-{arch}");
            for (name, bytes) in
                [("Packages", packages.as_bytes().to_vec()), ("Packages.gz", gzip(packages.as_bytes())?)]
            {
                write_file(out, &format!("dists/{suite}/{dir}/{name}"), &bytes)?;
                sums.push(format!(" {} {:>8} {dir}/{name}", sha256_hex(&bytes), bytes.len()));
            }
        }
        let release = format!(
            "Origin: ckms\nLabel: ckms farm\nSuite: {suite}\nCodename: {suite}\nDate: {}\nArchitectures: {}\n\
             Components: {COMPONENT}\nDescription: kernel modules built by the ckms farm\nSHA256:\n{}\n",
            release_date(*epoch),
            archs.join(" "),
            sums.join("\n")
        );
        write_file(out, &format!("dists/{suite}/Release"), release.as_bytes())?;
        write_file(out, &format!("dists/{suite}/InRelease"), signer.clearsign(&release, *epoch)?.as_bytes())?;
        write_file(
            out,
            &format!("dists/{suite}/Release.gpg"),
            signer.detached(release.as_bytes(), *epoch)?.as_bytes(),
        )?;
        notes.push(format!("deb [signed-by=/usr/share/keyrings/{KEYRING}] URL {suite} {COMPONENT}"));
    }
    write_file(out, KEYRING, &signer.public_key()?)?;
    write_file(out, &KEYRING.replace(".gpg", ".asc"), signer.public_key_armored()?.as_bytes())?;
    notes.insert(0, format!("on each host: {KEYRING} into /usr/share/keyrings/, and a sources line (URL: where this directory is served, or file:DIR):"));
    Ok(notes)
}

/// The control fields (Package, Version, Architecture first) and maintainer scripts of a pair's package.
#[allow(clippy::type_complexity)]
fn control(
    pair: &BuiltPair,
    maintainer: &str,
) -> Result<(Vec<(&'static str, String)>, Vec<(&'static str, String)>), PublishError> {
    let mut sizes = 0u64;
    for f in &pair.files {
        sizes += std::fs::metadata(&f.path).map_err(PublishError::io(&f.path))?.len();
    }
    let names: Vec<&str> = pair.files.iter().map(|f| f.file_name.split('.').next().unwrap_or(&f.file_name)).collect();
    let mut fields = vec![
        ("Package", package_name(&pair.module, &pair.kernel)),
        ("Version", format!("{}-ckms{}", debian_version(&pair.version), pair.epoch)),
        ("Architecture", pair.target.deb_arch.clone()),
        ("Maintainer", maintainer.to_string()),
        ("Installed-Size", sizes.div_ceil(1024).to_string()),
        ("Depends", pair.target.image_package.clone()),
    ];
    // The -dkms package would build the same file into the same place.
    if let Some(p) = pair.source_package.as_ref().filter(|p| p.ends_with("-dkms")) {
        fields.push(("Conflicts", p.clone()));
    }
    let signed = pair.signer.as_ref().map(|s| format!(", signed by \"{}\"", s.subject)).unwrap_or_default();
    fields.extend([
        ("Section", "kernel".to_string()),
        ("Priority", "optional".to_string()),
        (
            "Description",
            format!(
                "{} {} modules for Linux {}\n Modules {}, built by the ckms farm{signed} (store entry {}).",
                pair.module,
                pair.version,
                pair.kernel,
                names.join(", "),
                &pair.key[..pair.key.len().min(16)]
            ),
        ),
    ]);
    let k = &pair.kernel;
    let postinst = format!(
        "#!/bin/sh\n# ckms: the kernel's module index must name the modules just installed.\nset -e\n\
         if [ \"$1\" = configure ]; then\n    depmod -a {k}\nfi\n"
    );
    // On removal the kernel may be going too (then there is nothing to index).
    let postrm = format!(
        "#!/bin/sh\n# ckms: the kernel's module index must forget the modules just removed.\nset -e\n\
         if [ \"$1\" = remove ] && [ -d /lib/modules/{k}/kernel ]; then\n    depmod -a {k}\nfi\n"
    );
    Ok((fields, vec![("postinst", postinst), ("postrm", postrm)]))
}

fn render(fields: &[(&str, String)]) -> String {
    fields.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
}

/// `<module>-modules-<kernel>` in the characters Debian allows in a package name.
pub fn package_name(module: &str, kernel: &str) -> String {
    let raw = format!("{module}-modules-{kernel}").to_lowercase();
    raw.chars().map(|c| if c.is_ascii_alphanumeric() || "+-.".contains(c) { c } else { '-' }).collect()
}

/// A module version as a Debian upstream version: Debian's characters, starting with a digit.
fn debian_version(v: &str) -> String {
    let clean: String =
        v.chars().map(|c| if c.is_ascii_alphanumeric() || "+.~-".contains(c) { c } else { '.' }).collect();
    if clean.starts_with(|c: char| c.is_ascii_digit()) {
        clean
    } else {
        format!("0+{clean}")
    }
}

fn slash(dest: &str) -> String {
    let d = dest.trim_matches('/');
    if d.is_empty() {
        String::new()
    } else {
        format!("/{d}")
    }
}

/// gzip without a name or a time in its header.
fn gzip(bytes: &[u8]) -> Result<Vec<u8>, PublishError> {
    let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes)
        .and_then(|()| gz.finish())
        .map_err(|e| PublishError::Io { path: "Packages.gz".into(), source: e })
}

/// A Release file's Date: RFC 2822 in UTC, as Debian's archive writes it.
fn release_date(epoch: u64) -> String {
    let t = i64::try_from(epoch).ok().and_then(|e| time::OffsetDateTime::from_unix_timestamp(e).ok());
    let format = time::format_description::parse_borrowed::<2>(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] UTC",
    );
    match (t, format) {
        (Some(t), Ok(f)) => t.format(&f).unwrap_or_default(),
        _ => "Thu, 01 Jan 1970 00:00:00 UTC".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deb::{control_fields, data_tar};
    use crate::publish::openpgp::{tests::key_file, Key};
    use crate::publish::pairs::tests::{arm64, pair};
    use crate::repo::release::{parse_keys, verify_inrelease, Keyring};
    use crate::testutil::tar_entries;

    #[test]
    fn names_and_versions_are_debians() {
        assert_eq!(package_name("tp_smapi", "6.1.0-56-amd64"), "tp-smapi-modules-6.1.0-56-amd64");
        assert_eq!(package_name("V4L", "6.12.57+deb13-amd64"), "v4l-modules-6.12.57+deb13-amd64");
        assert_eq!(debian_version("0.12.7"), "0.12.7");
        assert_eq!(debian_version("v1_2"), "0+v1.2");
        assert_eq!(release_date(1_764_892_800), "Fri, 05 Dec 2025 00:00:00 UTC");
    }

    #[test]
    fn repository_layout_fields_signature_and_reproducibility() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::load(&key_file(dir.path())).unwrap();
        let pairs = vec![
            pair(dir.path(), "hello", "6.1.0-56-amd64", "hello.ko", b"\x7fELF hello"),
            pair(dir.path(), "tp_smapi", "6.1.0-56-amd64", "tp_smapi.ko", b"\x7fELF smapi"),
        ];
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let notes = write(&a, &pairs, &key).unwrap();
        write(&b, &pairs, &key).unwrap();
        assert!(
            notes.iter().any(|n| n.contains("signed-by=/usr/share/keyrings/ckms-archive-keyring.gpg")),
            "{notes:?}"
        );

        let deb = "pool/main/h/hello-modules-6.1.0-56-amd64/hello-modules-6.1.0-56-amd64_1.0-ckms1764892800_amd64.deb";
        for f in [
            deb,
            "dists/bookworm/InRelease",
            "dists/bookworm/Release.gpg",
            "dists/bookworm/main/binary-amd64/Packages.gz",
            KEYRING,
        ] {
            assert_eq!(
                std::fs::read(a.join(f)).unwrap(),
                std::fs::read(b.join(f)).unwrap(),
                "{f} differs between publishes"
            );
        }
        let bytes = std::fs::read(a.join(deb)).unwrap();
        let fields: BTreeMap<String, String> = control_fields(bytes.as_slice(), deb).unwrap().into_iter().collect();
        assert_eq!(fields["Depends"], "linux-image-6.1.0-56-amd64");
        assert_eq!(fields["Conflicts"], "hello-dkms");
        assert_eq!(fields["Maintainer"], "ckms farm <farm@example.invalid>");
        let data = tar_entries(data_tar(std::io::Cursor::new(bytes.clone()), deb).unwrap());
        assert!(
            data.contains(&("./lib/modules/6.1.0-56-amd64/updates/dkms/hello.ko".into(), b"\x7fELF hello".to_vec())),
            "{data:?}"
        );

        let packages = std::fs::read_to_string(a.join("dists/bookworm/main/binary-amd64/Packages")).unwrap();
        assert!(packages.contains(&format!("Filename: {deb}\n")));
        assert!(packages.contains(&format!("SHA256: {}\n", sha256_hex(&bytes))));
        assert_eq!(packages.matches("Package: ").count(), 2);

        let public = parse_keys(&std::fs::read(a.join(KEYRING)).unwrap(), Path::new("k")).unwrap();
        let inrelease = std::fs::read_to_string(a.join("dists/bookworm/InRelease")).unwrap();
        let text = verify_inrelease(&inrelease, &Keyring::from_keys(public), "t").unwrap();
        assert_eq!(text, std::fs::read_to_string(a.join("dists/bookworm/Release")).unwrap());
        assert!(text.contains(&sha256_hex(packages.as_bytes())));
    }

    #[test]
    fn each_architecture_has_its_own_index_in_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::load(&key_file(dir.path())).unwrap();
        let pairs = vec![
            pair(dir.path(), "hello", "6.1.0-56-amd64", "hello.ko", b"\x7fELF amd64"),
            arm64(pair(dir.path(), "hello", "6.1.0-56-arm64", "hello.ko", b"\x7fELF arm64")),
        ];
        let out = dir.path().join("out");
        write(&out, &pairs, &key).unwrap();
        for (arch, kernel) in [("amd64", "6.1.0-56-amd64"), ("arm64", "6.1.0-56-arm64")] {
            let packages =
                std::fs::read_to_string(out.join(format!("dists/bookworm/main/binary-{arch}/Packages"))).unwrap();
            assert_eq!(packages.matches("Package: ").count(), 1, "{packages}");
            assert!(packages.contains(&format!("Package: hello-modules-{kernel}\n")), "{packages}");
            assert!(packages.contains(&format!("Architecture: {arch}\n")), "{packages}");
            let deb =
                format!("pool/main/h/hello-modules-{kernel}/hello-modules-{kernel}_1.0-ckms1764892800_{arch}.deb");
            assert!(packages.contains(&format!("Filename: {deb}\n")), "{packages}");
            let bytes = std::fs::read(out.join(&deb)).unwrap();
            let fields: BTreeMap<String, String> =
                control_fields(bytes.as_slice(), &deb).unwrap().into_iter().collect();
            assert_eq!(fields["Architecture"], arch);
            assert_eq!(fields["Depends"], format!("linux-image-{kernel}"));
        }
        let release = std::fs::read_to_string(out.join("dists/bookworm/Release")).unwrap();
        assert!(release.contains("Architectures: amd64 arm64\n"), "{release}");
        assert!(release.contains(" main/binary-arm64/Packages.gz\n"), "{release}");
    }
}
