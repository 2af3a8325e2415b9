//! Builds a real image archive for loading into engines by hand, not run by default:
//! `CKMS_E2E_DEB=/tmp/debs/busybox-static_*.deb CKMS_E2E_OUT=/tmp/img.tar cargo test --lib e2e_archive -- --ignored --nocapture`

use super::*;
use crate::deb::data_tar;
use crate::image::layer::{FsRules, LayerWriter};

#[test]
#[ignore]
fn e2e_archive() {
    let debs = std::env::var("CKMS_E2E_DEB").expect("CKMS_E2E_DEB: space-separated .deb paths");
    let out = PathBuf::from(std::env::var("CKMS_E2E_OUT").expect("CKMS_E2E_OUT: archive path"));
    let tags: Vec<String> = std::env::var("CKMS_E2E_TAGS")
        .unwrap_or_else(|_| "ckms-test/busybox:e2e".into())
        .split_whitespace()
        .map(String::from)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let rules = FsRules { usr_merge: ["bin", "sbin", "lib", "lib64"].map(String::from).to_vec(), ..FsRules::default() };

    let base = dir.path().join("base.tar");
    let mut w = LayerWriter::new(File::create(&base).unwrap(), rules.clone());
    for d in ["usr", "usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "tmp", "build"] {
        w.add_dir(d, if d == "tmp" { 0o1777 } else { 0o755 }, 0, 0).unwrap();
    }
    for d in ["bin", "sbin", "lib", "lib64"] {
        w.add_symlink(d, &format!("usr/{d}")).unwrap();
    }
    w.add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nbuild:x:1000:1000::/build:/bin/sh\n", 0o644, 0, 0)
        .unwrap();
    w.add_file("etc/group", b"root:x:0:\nbuild:x:1000:\n", 0o644, 0, 0).unwrap();
    let (_, base_digest) = w.finish().unwrap();

    let pkgs = dir.path().join("pkgs.tar");
    let mut w = LayerWriter::new(File::create(&pkgs).unwrap(), rules);
    for deb in debs.split_whitespace() {
        let data = data_tar(File::open(deb).unwrap(), deb).unwrap();
        w.add_data_tar(data, deb).unwrap();
    }
    let (_, pkgs_digest) = w.finish().unwrap();

    let layers =
        vec![ArchiveLayer { path: base, digest: base_digest }, ArchiveLayer { path: pkgs, digest: pkgs_digest }];
    let meta = ImageMeta {
        user: "root".into(),
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into()],
        workdir: "/build".into(),
        cmd: vec!["/bin/sh".into()],
        labels: [("org.ckms.test".to_string(), "e2e".to_string())].into(),
        created: "2024-01-01T00:00:00Z".into(),
    };
    let config = image_config(&layers, &meta).unwrap();
    write_archive(File::create(&out).unwrap(), &layers, &config, &tags).unwrap();
    println!("id {}", image_id(&config).unwrap());
    for l in &layers {
        println!("layer {} {}", l.digest.diff_id, l.digest.size);
    }
}
