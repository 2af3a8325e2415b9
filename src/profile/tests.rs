use super::catalog::check_relocations;
use super::*;

fn builtin() -> Catalog {
    Catalog::load(&[]).unwrap()
}

#[test]
fn builtin_profiles_load() {
    let c = builtin();
    let names: Vec<_> = c.profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "debian-bookworm",
            "debian-bookworm-arm64",
            "debian-sid",
            "debian-sid-arm64",
            "debian-trixie",
            "debian-trixie-arm64"
        ]
    );
    assert!(c.recipe("builder").is_ok());
}

#[test]
fn a_file_is_one_profile_per_architecture() {
    let c = builtin();
    let arm = c.profile("debian-bookworm-arm64").unwrap();
    assert_eq!((arm.family.as_str(), arm.arch.as_str(), arm.machine.as_str()), ("debian-bookworm", "arm64", "aarch64"));
    assert_eq!(arm.description, "Debian 12 (bookworm), arm64");
    assert_eq!(arm.os.as_ref().unwrap().architecture, "arm64");
    assert_eq!(arm.kernel_of_headers("linux-headers-6.1.0-56-arm64"), Some("6.1.0-56-arm64"));
    assert_eq!(arm.kernel_of_headers("linux-headers-6.1.0-56-amd64"), None);
    assert_eq!(arm.cross_compiler("12").as_deref(), Some("gcc-12-aarch64-linux-gnu"));
    let amd = c.profile("debian-bookworm").unwrap();
    assert_eq!(amd.cross_compiler("12").as_deref(), Some("gcc-12-x86-64-linux-gnu"));
    assert!(
        arm.is_build_machine_package("linux-kbuild-6.1")
            && !arm.is_build_machine_package("linux-headers-6.1.0-56-common")
    );
    // The build machine's architecture keeps the file's name, and answers to the long one.
    let native = c.profile("debian-bookworm").unwrap();
    assert!(native.is_native() && !arm.is_native());
    assert_eq!(c.profile("debian-bookworm-amd64").unwrap().name, "debian-bookworm");
    assert_eq!(c.build_machine(arm).unwrap().unwrap().name, "debian-bookworm");
    assert!(c.build_machine(native).unwrap().is_none());
    // An arm64 host keying pairs as an amd64 farm cross-builds them, and the reverse.
    assert_eq!(c.build_machine_on(arm, Some("amd64")).unwrap().unwrap().name, "debian-bookworm");
    assert_eq!(c.build_machine_on(native, Some("arm64")).unwrap().unwrap().name, "debian-bookworm-arm64");
    assert!(c.build_machine_on(arm, Some("arm64")).unwrap().is_none());
    assert!(c.build_machine_on(arm, Some("riscv64")).is_err());
    assert_eq!(c.architecture(arm).unwrap().qemu.binary, "qemu-system-aarch64");
    let os_release = "ID=debian\nVERSION_CODENAME=bookworm\n";
    assert_eq!(c.of_os_release(os_release).unwrap().name, "debian-bookworm", "the host's own architecture");
}

#[test]
fn an_architecture_nobody_describes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("profiles")).unwrap();
    let shipped = include_str!("../../profiles/debian-sid.toml").replace("\"arm64\"]", "\"riscv64\"]");
    std::fs::write(dir.path().join("profiles/debian-sid.toml"), shipped).unwrap();
    let err = Catalog::load(&[dir.path().to_path_buf()]).unwrap_err();
    assert!(err.to_string().contains("architecture 'riscv64' is not in profiles/architectures.toml"), "{err}");
}

#[test]
fn kernel_release_from_headers_package() {
    let c = builtin();
    let p = c.profile("debian-bookworm").unwrap();
    assert_eq!(p.kernel_of_headers("linux-headers-6.1.0-56-amd64"), Some("6.1.0-56-amd64"));
    assert_eq!(p.kernel_of_headers("linux-headers-6.12.117+deb12-rt-amd64"), Some("6.12.117+deb12-rt-amd64"));
    assert_eq!(p.kernel_of_headers("linux-headers-6.1.0-56-common"), None);
    assert_eq!(p.kernel_of_headers("linux-headers-6.12-amd64"), None, "a meta package is no kernel");
    assert_eq!(p.kernel_of_headers("linux-headers-amd64"), None);
}

#[test]
fn compiler_and_kernel_packages() {
    let c = builtin();
    let p = c.profile("debian-sid").unwrap();
    assert_eq!(p.compiler_of("gcc-16-for-host"), Some("16"));
    assert_eq!(p.compiler_of("gcc-12"), Some("12"));
    assert_eq!(p.compiler_of("gcc-12-base"), None);
    assert!(p.is_kernel_package("linux-kbuild-6.1"));
    assert!(!p.is_kernel_package("gcc-12"));
}

#[test]
fn releases_point_at_one_profile() {
    let c = builtin();
    let offering =
        |k: &str| -> Vec<&str> { c.profiles.iter().filter(|p| p.may_offer(k)).map(|p| p.name.as_str()).collect() };
    assert_eq!(offering("6.1.0-56-amd64"), ["debian-bookworm"]);
    assert_eq!(offering("6.1.0-56-arm64"), ["debian-bookworm-arm64"]);
    assert_eq!(offering("6.12.117+deb13-rt-arm64"), ["debian-trixie-arm64"]);
    assert_eq!(offering("6.12.117+deb12-rt-amd64"), ["debian-bookworm"]);
    assert_eq!(offering("6.12.115+deb13.1-amd64"), ["debian-trixie"]);
    assert_eq!(offering("7.2.13+deb14-cloud-amd64"), ["debian-sid"]);
    assert!(offering("6.18.44-fc-custom").is_empty());
}

#[test]
fn symlinks_are_filled_in() {
    let c = builtin();
    let links = c.profile("debian-trixie").unwrap().symlinks("14");
    assert!(links.iter().any(|l| l.path == "/usr/bin/gcc" && l.target == "x86_64-linux-gnu-gcc-14"));
}

#[test]
fn a_directory_overrides_the_builtin_copy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("profiles")).unwrap();
    std::fs::write(dir.path().join("profiles/debian-sid.toml"), "name = 'debian-sid'\n").unwrap();
    let err = Catalog::load(&[dir.path().to_path_buf()]).unwrap_err();
    assert!(err.to_string().contains("profiles/debian-sid.toml"), "{err}");
}

#[test]
fn relocations_keep_their_depth() {
    let c = builtin();
    for p in &c.profiles {
        assert_eq!(p.relocated("/usr/src"), Some("/usr/ckms-src"), "{}", p.name);
    }
    let mut p = c.profile("debian-sid").unwrap().clone();
    p.filesystem.relocate = vec![Relocate { from: "/usr/src".into(), to: "/srv".into() }];
    assert!(check_relocations(&p).unwrap_err().to_string().contains("as many components"));
}

#[test]
fn unknown_profile_lists_known_ones() {
    let err = builtin().profile("fedora").unwrap_err();
    assert!(err.to_string().contains("debian-bookworm"));
}

mod dialect_tests {
    use super::Catalog;
    use crate::diagnose::Said;
    use crate::dialect::{choose, Dialect, KEYS};
    use std::collections::BTreeMap;

    fn dialects() -> BTreeMap<String, Dialect> {
        Catalog::load(&[]).unwrap().dialects
    }

    #[test]
    fn every_dialect_has_every_line_and_each_renders() {
        let all = dialects();
        assert!(all.contains_key("3.0.10") && all.contains_key("3.2.2"), "{:?}", all.keys());
        for d in all.values() {
            for key in KEYS {
                assert!(d.lines.contains_key(*key), "{} has no {key}", d.release);
            }
            for (key, template) in &d.lines {
                assert!(KEYS.contains(&key.as_str()), "{}: {key} is printed by nothing", d.release);
                minijinja::Environment::new().template_from_str(template).unwrap_or_else(|e| panic!("{key}: {e}"));
            }
        }
    }

    #[test]
    fn lines_are_dkms_s_own() {
        let all = dialects();
        let mv = serde_json::json!({ "module": "m", "version": "1.0", "kernel": "6.1.0-56-amd64", "arch": "x86_64" });
        assert_eq!(
            all["3.2.2"].line("not_built", &mv),
            "Module m/1.0 is not built for kernel 6.1.0-56-amd64 (x86_64). Skipping..."
        );
        assert_eq!(
            all["3.0.10"].line("not_built", &mv),
            "Module m 1.0 is not built for kernel 6.1.0-56-amd64 (x86_64). Skipping..."
        );
        let said = Said { key: "in_tree", values: mv };
        assert_eq!(
            all["3.2.2"].error(Some(&said), "", None),
            "\nError! DKMS tree already contains: m/1.0\nYou cannot add the same module/version combo more than once."
        );
        assert_eq!(all["3.0.10"].error(None, "boom", Some("fix it")), "Error! boom\nfix it");
        let sign = |binary: bool, missing: Option<&str>| serde_json::json!({ "facility": true, "command": "c", "binary": binary, "key": "k", "cert": "p", "missing": missing });
        assert_eq!(
            all["3.2.2"].said("sign_prologue", sign(true, None)).unwrap(),
            "Sign command: c\nSigning key: k\nPublic certificate (MOK): p\n"
        );
        assert_eq!(
            all["3.2.2"].said("sign_prologue", sign(false, None)).unwrap(),
            "Sign command: c\nBinary c not found, modules won't be signed\n"
        );
        assert_eq!(
            all["3.2.2"].said("sign_prologue", sign(true, Some("cert"))).unwrap(),
            "Sign command: c\nSigning key: k\nPublic certificate (MOK): p\n\
             Certificate file p not found and can't be generated, modules won't be signed\n"
        );
        assert_eq!(
            all["3.2.2"].said("sign_prologue", serde_json::json!({ "facility": false })).unwrap(),
            "The kernel is built without module signing facility, modules won't be signed\n"
        );
        assert_eq!(
            all["3.0.10"].said("sign_prologue", sign(true, Some("key"))).unwrap(),
            "Sign command: c\nSigning key: k\nPublic certificate (MOK): p\n\
             Key file k not found and can't be generated, modules won't be signed"
        );
    }

    #[test]
    fn the_release_is_asked_for_else_the_host_s_else_the_newest() {
        let all = dialects();
        assert_eq!(choose(&all, Some("3.0.10"), Some("3.2.2")).release, "3.0.10");
        assert_eq!(choose(&all, Some("9.9"), Some("3.0.10")).release, "3.0.10");
        assert_eq!(choose(&all, None, None).release, "3.2.2");
    }
}
