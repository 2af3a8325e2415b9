use std::io::Read;

use super::*;
use crate::diagnose::Diagnose;
use crate::publish::pairs::tests::{arm64, pair};

const K1: &str = "6.1.0-56-amd64";
const K2: &str = "6.12.48+deb13-amd64";

/// Writes a modules.dep naming every module file, as depmod would for modules without
/// dependencies.
struct FakeDepmod;

impl Depmod for FakeDepmod {
    fn index(&self, base: &Path, kernel: &str) -> Result<(), PublishError> {
        let dir = base.join("lib/modules").join(kernel);
        let mut found = Vec::new();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    found.push(format!("{}:\n", p.strip_prefix(&dir).unwrap().display()));
                }
            }
        }
        found.sort();
        std::fs::write(dir.join("modules.dep"), found.concat()).unwrap();
        Ok(())
    }
}

fn pairs(dir: &Path) -> Vec<BuiltPair> {
    vec![
        pair(dir, "v4l2loopback", K1, "v4l2loopback.ko.xz", b"MODULE-1"),
        pair(dir, "v4l2loopback", K2, "v4l2loopback.ko.xz", b"MODULE-2"),
    ]
}

fn userland() -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([("debian-bookworm".to_string(), b"\x7fELF busybox".to_vec())])
}

/// The archive's members: (name, bytes).
fn members(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(File::open(path).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).unwrap();
        out.insert(e.path().unwrap().display().to_string(), bytes);
    }
    out
}

/// Every layer's entries as "path mode [-> target | contents]", in archive order.
fn layer_entries(blobs: &BTreeMap<String, Vec<u8>>, index: &[u8]) -> Vec<Vec<String>> {
    let index: serde_json::Value = serde_json::from_slice(index).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:");
    let manifest: serde_json::Value = serde_json::from_slice(&blobs[&format!("blobs/sha256/{digest}")]).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
            let mut ar = tar::Archive::new(&blobs[&format!("blobs/sha256/{hex}")][..]);
            ar.entries()
                .unwrap()
                .map(|e| {
                    let mut e = e.unwrap();
                    let h = e.header();
                    let mut line =
                        format!("{} {:o} {}", e.path().unwrap().display(), h.mode().unwrap(), h.mtime().unwrap());
                    if let Some(t) = e.link_name().unwrap() {
                        line += &format!(" -> {}", t.display());
                    } else if h.entry_type().is_file() {
                        let mut s = String::new();
                        e.read_to_string(&mut s).unwrap_or_default();
                        line += &format!(" {s:?}");
                    }
                    line
                })
                .collect()
        })
        .collect()
}

#[test]
fn one_image_per_kernel_tagged_with_the_kernel_release() {
    let dir = tempfile::tempdir().unwrap();
    let p = plan(&pairs(dir.path()), None, None).unwrap();
    assert_eq!(p.name, "v4l2loopback");
    assert_eq!(p.module_name, "v4l2loopback");
    let tags: Vec<&str> = p.images.iter().map(|i| i.tag.as_str()).collect();
    // An OCI tag cannot hold `+`.
    assert_eq!(
        tags,
        [format!("localhost/ckms/v4l2loopback:{K1}"), "localhost/ckms/v4l2loopback:6.12.48_deb13-amd64".into()]
    );
    assert_eq!(p.images[0].files[0].0, "updates/dkms/v4l2loopback.ko.xz");
    assert_eq!(p.images[0].arch, "amd64");

    let named = plan(&pairs(dir.path()), Some("Cams"), Some("registry.example.org/kmods/cams")).unwrap();
    assert_eq!(named.images[0].tag, format!("registry.example.org/kmods/cams:{K1}"));
    assert_eq!(named.images[1].archive, format!("cams_{K2}.oci.tar"));
    assert!(matches!(plan(&pairs(dir.path()), None, Some("Upper/Case")), Err(PublishError::BadImageName(_))));
}

#[test]
fn the_module_name_is_the_file_named_like_the_package() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = pair(dir.path(), "tp_smapi", K1, "hdaps.ko", b"A");
    for f in ["tp_smapi.ko", "thinkpad_ec.ko"] {
        p.files.push(pair(dir.path(), "tp_smapi", K1, f, b"B").files[0].clone());
    }
    assert_eq!(plan(&[p.clone()], None, None).unwrap().module_name, "tp_smapi");
    p.files.remove(1);
    assert_eq!(plan(&[p], None, None).unwrap().module_name, "hdaps");
}

#[test]
fn images_hold_busybox_cp_the_modules_and_their_index_under_opt() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let plan = plan(&pairs(dir.path()), None, None).unwrap();
    let written = write(&out, &plan, &userland(), &FakeDepmod).unwrap();
    assert_eq!(written.len(), 2);
    let blobs = members(&out.join(&written[0].archive));
    let layers = layer_entries(&blobs, &blobs["index.json"]);
    assert_eq!(
        layers[0],
        [
            "bin 755 0",
            "bin/busybox 755 0 \"\\u{7f}ELF busybox\"",
            "bin/cp 777 0 -> busybox",
            "bin/ls 777 0 -> busybox",
            "bin/sh 777 0 -> busybox",
            "bin/modprobe 777 0 -> busybox",
            "tmp 1777 0",
        ]
    );
    let kdir = format!("opt/lib/modules/{K1}");
    assert_eq!(
        layers[1],
        [
            "opt 755 0".to_string(),
            "opt/lib 755 0".into(),
            "opt/lib/modules 755 0".into(),
            format!("{kdir} 755 0"),
            format!("{kdir}/modules.dep 644 0 \"updates/dkms/v4l2loopback.ko.xz:\\n\""),
            format!("{kdir}/updates 755 0"),
            format!("{kdir}/updates/dkms 755 0"),
            format!("{kdir}/updates/dkms/v4l2loopback.ko.xz 644 0 \"MODULE-1\""),
        ]
    );
    // The docker-archive half names the tag too; the config is dated at the build time.
    let docker: serde_json::Value = serde_json::from_slice(&blobs["manifest.json"]).unwrap();
    assert_eq!(docker[0]["RepoTags"][0], format!("localhost/ckms/v4l2loopback:{K1}"));
    let config_hex = written[0].id.trim_start_matches("sha256:");
    let config: serde_json::Value = serde_json::from_slice(&blobs[&format!("blobs/sha256/{config_hex}")]).unwrap();
    assert_eq!(config["created"], "2025-12-05T00:00:00Z");
    assert_eq!(config["config"]["Labels"]["io.ckms.kernel"], K1);
}

#[test]
fn an_arm64_kernels_image_is_an_arm64_image() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let arm = "6.1.0-56-arm64";
    let pairs = [pairs(dir.path()).remove(0), arm64(pair(dir.path(), "v4l2loopback", arm, "v4l2loopback.ko", b"A"))];
    let plan = plan(&pairs, None, None).unwrap();
    let archs: Vec<(&str, &str)> = plan.images.iter().map(|i| (i.kernel.as_str(), i.arch.as_str())).collect();
    assert_eq!(archs, [(K1, "amd64"), (arm, "arm64")]);
    let userland = BTreeMap::from([
        ("debian-bookworm".to_string(), b"amd64 busybox".to_vec()),
        ("debian-bookworm-arm64".to_string(), b"arm64 busybox".to_vec()),
    ]);
    let written = write(&out, &plan, &userland, &FakeDepmod).unwrap();
    for (w, arch) in written.iter().zip(["amd64", "arm64"]) {
        let blobs = members(&out.join(&w.archive));
        let config_hex = w.id.trim_start_matches("sha256:");
        let config: serde_json::Value = serde_json::from_slice(&blobs[&format!("blobs/sha256/{config_hex}")]).unwrap();
        assert_eq!((&config["architecture"], &config["os"]), (&arch.into(), &"linux".into()), "{}", w.tag);
        let index: serde_json::Value = serde_json::from_slice(&blobs["index.json"]).unwrap();
        assert_eq!(index["manifests"][0]["platform"], serde_json::json!({ "architecture": arch, "os": "linux" }));
        // The profile's own userland: the arm64 kernel's image runs the arm64 busybox.
        let layers = layer_entries(&blobs, &blobs["index.json"]);
        assert!(layers[0][1].contains(&format!("{arch} busybox")), "{:?}", layers[0]);
    }
}

#[test]
fn in_tree_dependencies_are_indexed_behind_the_host_link_and_not_shipped() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let videodev = dir.path().join("videodev.ko");
    std::fs::write(&videodev, b"IN-TREE").unwrap();
    let mut plan = plan(&pairs(dir.path()), None, None).unwrap();
    plan.images[0].in_tree = vec![("kernel/drivers/media/v4l2-core/videodev.ko".into(), videodev)];
    let written = write(&out, &plan, &userland(), &FakeDepmod).unwrap();
    let blobs = members(&out.join(&written[0].archive));
    let layers = layer_entries(&blobs, &blobs["index.json"]);
    let kdir = format!("opt/lib/modules/{K1}");
    // depmod saw the kernel's module behind the link; the image has the link only.
    let dep = layers[1].iter().find(|e| e.starts_with(&format!("{kdir}/modules.dep "))).unwrap();
    assert!(dep.contains("host/kernel/drivers/media/v4l2-core/videodev.ko:"), "{dep}");
    assert!(layers[1].contains(&format!("{kdir}/host 777 0 -> /lib/modules/{K1}")), "{:#?}", layers[1]);
    assert!(!layers[1].iter().any(|e| e.contains("IN-TREE")), "{:#?}", layers[1]);
}

#[test]
fn publishing_twice_gives_the_same_images() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(&pairs(dir.path()), None, None).unwrap();
    let mut runs = Vec::new();
    for run in ["a", "b"] {
        let out = dir.path().join(run);
        std::fs::create_dir(&out).unwrap();
        let written = write(&out, &plan, &userland(), &FakeDepmod).unwrap();
        let bytes: Vec<Vec<u8>> = written.iter().map(|w| std::fs::read(out.join(&w.archive)).unwrap()).collect();
        runs.push((written, bytes, std::fs::read(out.join("module.yaml")).unwrap()));
    }
    assert_eq!(runs[0], runs[1]);
    assert_ne!(runs[0].0[0].id, runs[0].0[1].id, "each kernel has its own image");
}

#[test]
fn the_module_maps_each_kernel_to_its_tag() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let plan = plan(&pairs(dir.path()), None, Some("registry.example.org/kmods/v4l2loopback")).unwrap();
    write(&out, &plan, &userland(), &FakeDepmod).unwrap();
    let yaml = std::fs::read_to_string(out.join("module.yaml")).unwrap();
    let image = "\"registry.example.org/kmods/v4l2loopback:${KERNEL_FULL_VERSION}\"";
    assert_eq!(
        yaml,
        format!(
            "apiVersion: \"kmm.sigs.x-k8s.io/v1beta1\"\nkind: \"Module\"\nmetadata:\n  name: \"v4l2loopback\"\n\
             spec:\n  moduleLoader:\n    container:\n      kernelMappings:\n        - containerImage: {image}\n          \
             literal: \"{K1}\"\n        - containerImage: \"registry.example.org/kmods/v4l2loopback:6.12.48_deb13-amd64\"\n          \
             literal: \"{K2}\"\n      modprobe:\n        \
             moduleName: \"v4l2loopback\"\n  selector:\n    \"kubernetes.io/os\": \"linux\"\n"
        )
    );
    let insecure = KmmImages { insecure_registry: true, ..plan };
    assert_eq!(manifest::module(&insecure)["spec"]["moduleLoader"]["container"]["registryTLS"]["insecure"], true);
}

#[test]
fn a_profile_without_userland_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(&pairs(dir.path()), None, None).unwrap();
    let err = write(dir.path(), &plan, &BTreeMap::new(), &FakeDepmod).unwrap_err();
    assert!(err.to_string().contains(K1), "{err}");
    assert!(err.hint().unwrap().contains("busybox-static"));
}
