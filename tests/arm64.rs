//! arm64 kernels built on this amd64 machine (issue 22), on Podman (fails when it is missing):
//! - `farm build --verify` of three Debian `*-dkms` packages for bookworm's 6.1.0-56-arm64 and
//!   trixie's newest 6.12 arm64 kernel cross-builds aarch64 modules carrying each kernel's
//!   vermagic, signed, and loads them in an arm64 VM (qemu-system-aarch64, TCG);
//! - the drop-in, on Docker: `add`, `build`, `install --root`, `status` of v4l2loopback for
//!   6.1.0-56-arm64 gives dkms's lines with `aarch64` and an aarch64 module in the root; `-a`
//!   naming another architecture than the kernel's is refused;
//! - an amd64 module offered to the arm64 kernel is refused with the kernel's own reason;
//! - a module's PRE_BUILD script (what a configure step does) sees `uname -m` say aarch64 and
//!   links an aarch64 userland program with `gcc`, as on an arm64 machine.
mod support;

#[path = "support/farm.rs"]
mod farm;

use std::path::Path;

use farm::Farm;

const BOOKWORM: &str = "6.1.0-56-arm64";
const PACKAGES: [&str; 3] = ["deb:v4l2loopback-dkms", "deb:acpi-call-dkms", "deb:digimend-dkms"];
/// ELF e_machine of AArch64 and of x86-64.
const EM_AARCH64: u16 = 183;
const EM_X86_64: u16 = 62;

fn elf_machine(ko: &Path) -> u16 {
    let bytes = std::fs::read(ko).unwrap_or_else(|e| panic!("{}: {e}", ko.display()));
    assert!(bytes.starts_with(b"\x7fELF") && bytes.len() > 20, "{} is no ELF file", ko.display());
    u16::from_le_bytes([bytes[18], bytes[19]])
}

fn vermagic(ko: &Path) -> String {
    let bytes = std::fs::read(ko).unwrap();
    let at = bytes.windows(9).position(|w| w == b"vermagic=").expect("a .modinfo vermagic entry");
    let rest = &bytes[at + 9..];
    String::from_utf8_lossy(&rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())]).into_owned()
}

#[test]
fn arm64_modules_cross_built_signed_and_loaded_in_an_arm64_vm() {
    let farm = Farm::new("CKMS_TEST_PODMAN_HOST");
    let trixie = support::newest_trixie_of(&farm.engine, "debian-trixie-arm64", "arm64");
    let (key, cert) = farm.key_pair("mok");
    let store = farm.store();
    let mut args = vec!["farm", "build", "--store", store.to_str().unwrap(), "-k", BOOKWORM, "-k", &trixie];
    args.extend(["--jobs", "2", "--verify", "--key", key.to_str().unwrap(), "--cert", cert.to_str().unwrap()]);
    args.extend(PACKAGES);
    let run = farm.run(&args);
    run.expect_code(0);
    let status = farm.status();
    assert_eq!(status.len(), 6, "{status:?}{run}");
    let mut loaded = 0;
    for pair in &status {
        let kernel = pair["kernel"].as_str().unwrap();
        assert_eq!(pair["arch"], "aarch64", "{pair}");
        if pair["status"] == "skipped" {
            continue;
        }
        assert_eq!(pair["status"], "built", "{pair}{run}");
        assert_eq!(pair["loaded"], true, "not loaded in the arm64 VM: {pair}{run}");
        loaded += 1;
        let unsigned = store.join("pairs").join(pair["key"].as_str().unwrap()).join("unsigned");
        for ko in support::entries(&unsigned) {
            let ko = unsigned.join(ko);
            assert_eq!(elf_machine(&ko), EM_AARCH64, "{}", ko.display());
            let magic = vermagic(&ko);
            assert!(magic.starts_with(&format!("{kernel} ")) && magic.ends_with(" aarch64"), "{magic}");
        }
    }
    assert!(loaded >= 5, "v4l2loopback, acpi-call and digimend for both kernels (one may be excluded){run}");
    let report = farm.run(&["farm", "status", "--store", store.to_str().unwrap(), "--kernels"]);
    report.expect_code(0);
    for kernel in [BOOKWORM, trixie.as_str()] {
        assert!(report.stdout.lines().any(|l| l.starts_with(kernel) && l.contains("ready")), "{report}");
    }

    // The amd64 build of the same module, offered to the arm64 kernel: the kernel says why not.
    let amd64 = farm.dir.path().join("amd64");
    let x86 = farm.run(&["farm", "build", "--store", amd64.to_str().unwrap(), "-k", "6.1.0-56-amd64", PACKAGES[0]]);
    x86.expect_code(0);
    let ko = walk(&amd64.join("pairs")).into_iter().find(|p| p.ends_with("unsigned/v4l2loopback.ko")).unwrap();
    assert_eq!(elf_machine(&ko), EM_X86_64);
    let refused = farm.run(&["verify", "-k", BOOKWORM, ko.to_str().unwrap()]);
    refused.expect_code(12);
    assert!(refused.stderr.contains("Invalid architecture in ELF header: 62"), "the kernel's reason{refused}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn the_drop_in_builds_and_installs_an_arm64_module_into_a_root() {
    let farm = Farm::new("CKMS_TEST_DOCKER_HOST");
    let root = farm.dir.path().join("root");
    let r = root.to_str().unwrap();
    farm.run(&["add", "deb:v4l2loopback-dkms", "--root", r]).expect_code(0);
    let mv = support::entries(&root.join("var/lib/ckms/v4l2loopback")).into_iter().next().unwrap();
    let mv = format!("v4l2loopback/{mv}");
    // dkms's -a naming another architecture than the kernel's is refused, nothing built.
    let wrong = farm.run(&["build", &mv, "-k", BOOKWORM, "-a", "x86_64", "--root", r]);
    wrong.expect_code(2);
    assert!(wrong.stderr.contains("is an aarch64 kernel"), "{wrong}");
    assert!(!root.join(format!("var/lib/ckms/{mv}/{BOOKWORM}")).exists(), "{wrong}");
    let built = farm.run(&["build", &mv, "-k", BOOKWORM, "--root", r]);
    built.expect_code(0);
    let said = format!("{}{}", built.stdout, built.stderr);
    assert!(said.contains(&format!("for kernel {BOOKWORM} (aarch64)")), "{built}");
    farm.run(&["install", &mv, "-k", BOOKWORM, "--root", r]).expect_code(0);
    let status = farm.run(&["status", "--root", r]);
    status.expect_code(0);
    assert!(status.stdout.contains(&format!("{}, {BOOKWORM}, aarch64: installed", mv)), "{status}");
    let ko = root.join(format!("lib/modules/{BOOKWORM}/updates/dkms/v4l2loopback.ko"));
    assert_eq!(elf_machine(&ko), EM_AARCH64);
    assert!(vermagic(&ko).starts_with(&format!("{BOOKWORM} ")));
    assert!(root.join(format!("lib/modules/{BOOKWORM}/modules.dep")).exists(), "depmod ran for the arm64 kernel");

    // What a configure script sees: the kernel's machine, and its C library to link with.
    let src = root.join("usr/src/hello-1.0");
    farm::copy_dir(&farm::fixture("hello-dkms"), &src);
    let conf = std::fs::read_to_string(src.join("dkms.conf")).unwrap();
    std::fs::write(src.join("dkms.conf"), format!("{conf}PRE_BUILD=\"probe.sh\"\n")).unwrap();
    let probe = src.join("probe.sh");
    std::fs::write(
        &probe,
        "#!/bin/sh\necho \"probe: machine=$(uname -m) arch=$(arch)\"\n\
         printf 'int main(void) { return 0; }\\n' >probe.c && gcc probe.c -o probe &&\n\
         echo \"probe: linked e_machine=$(od -An -j18 -N2 -tu2 probe | tr -d ' ')\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&probe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    farm.run(&["add", "hello/1.0", "--root", r]).expect_code(0);
    farm.run(&["build", "hello/1.0", "-k", BOOKWORM, "--root", r]).expect_code(0);
    let log =
        std::fs::read_to_string(root.join(format!("var/lib/ckms/hello/1.0/{BOOKWORM}/aarch64/log/make.log"))).unwrap();
    assert!(log.contains("probe: machine=aarch64 arch=aarch64"), "{log}");
    assert!(log.contains(&format!("probe: linked e_machine={EM_AARCH64}")), "{log}");
}
