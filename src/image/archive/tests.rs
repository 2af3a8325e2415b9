use super::*;
use crate::image::layer::{FsRules, LayerWriter};
use crate::testutil::tar_entries;
use std::collections::HashMap as Map;

fn meta() -> ImageMeta {
    ImageMeta {
        user: "build".into(),
        env: vec!["PATH=/usr/bin:/bin".into()],
        workdir: "/build".into(),
        cmd: vec!["/bin/sh".into()],
        labels: (0..20).map(|i| (format!("org.ckms.l{i}"), format!("v{i}"))).collect(),
        created: "2024-01-01T00:00:00Z".into(),
    }
}

fn make_layer(dir: &std::path::Path, name: &str, file: &str, contents: &[u8]) -> ArchiveLayer {
    let path = dir.join(name);
    let mut w = LayerWriter::new(File::create(&path).unwrap(), FsRules::default());
    w.add_dir("etc", 0o755, 0, 0).unwrap();
    w.add_file(file, contents, 0o644, 0, 0).unwrap();
    let (_, digest) = w.finish().unwrap();
    ArchiveLayer { path, digest }
}

fn read_tar(bytes: &[u8]) -> Map<String, Vec<u8>> {
    tar_entries(bytes).into_iter().collect()
}

fn blob<'a>(files: &'a Map<String, Vec<u8>>, digest: &str) -> &'a [u8] {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let b = &files[&format!("blobs/sha256/{hex}")];
    assert_eq!(sha256_hex(b), hex, "blob content matches its name");
    b
}

#[test]
fn archive_is_oci_layout_and_docker_archive() {
    let dir = tempfile::tempdir().unwrap();
    let layers =
        vec![make_layer(dir.path(), "a.tar", "etc/a", b"aaa"), make_layer(dir.path(), "b.tar", "etc/b", &[7u8; 5000])];
    let config = image_config(&layers, &meta()).unwrap();
    let id = image_id(&config).unwrap();
    let tags = vec!["ckms/builder:debian-12".to_string(), "localhost:5000/x/y:t1".to_string()];
    let mut out = Vec::new();
    write_archive(&mut out, &layers, &config, &tags).unwrap();
    let files = read_tar(&out);

    assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
    // Docker's view.
    let dm: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let dm = &dm[0];
    let config_path = dm["Config"].as_str().unwrap();
    assert_eq!(format!("sha256:{}", sha256_hex(&files[config_path])), id);
    assert_eq!(dm["RepoTags"], serde_json::json!(tags));
    let cfg: serde_json::Value = serde_json::from_slice(&files[config_path]).unwrap();
    let diff_ids: Vec<&str> =
        cfg["rootfs"]["diff_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(diff_ids, [layers[0].digest.diff_id.as_str(), layers[1].digest.diff_id.as_str()]);
    for (p, l) in dm["Layers"].as_array().unwrap().iter().zip(&layers) {
        let bytes = &files[p.as_str().unwrap()];
        assert_eq!(format!("sha256:{}", sha256_hex(bytes)), l.digest.diff_id);
        assert_eq!(bytes, &std::fs::read(&l.path).unwrap());
    }
    assert_eq!(cfg["config"]["User"], "build");
    assert_eq!(cfg["config"]["Labels"]["org.ckms.l7"], "v7");
    assert_eq!(cfg["architecture"], host_arch());
    assert_eq!(cfg["history"].as_array().unwrap().len(), 2);

    // The OCI view: index -> manifest -> config and layers.
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let ms = index["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 2);
    assert_eq!(ms[0]["annotations"]["io.containerd.image.name"], "ckms/builder:debian-12");
    assert_eq!(ms[0]["annotations"]["org.opencontainers.image.ref.name"], "debian-12");
    assert_eq!(ms[1]["annotations"]["org.opencontainers.image.ref.name"], "t1");
    for m in ms {
        assert_eq!(m["platform"], serde_json::json!({ "architecture": host_arch(), "os": "linux" }), "{m}");
    }
    let m: serde_json::Value = serde_json::from_slice(blob(&files, ms[0]["digest"].as_str().unwrap())).unwrap();
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(m["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
    assert_eq!(m["config"]["digest"], id.as_str());
    blob(&files, &id);
    for (d, l) in m["layers"].as_array().unwrap().iter().zip(&layers) {
        assert_eq!(d["mediaType"], "application/vnd.oci.image.layer.v1.tar");
        assert_eq!(d["digest"], l.digest.diff_id.as_str());
        assert_eq!(d["size"], l.digest.size);
        blob(&files, &l.digest.diff_id);
    }
}

#[test]
fn deterministic_config_id_and_archive() {
    let dir = tempfile::tempdir().unwrap();
    let layers = vec![make_layer(dir.path(), "a.tar", "etc/a", b"aaa")];
    let mut ids = HashSet::new();
    let mut archives = HashSet::new();
    for _ in 0..5 {
        // A fresh config each time: labels go through a HashMap with a new random seed.
        let config = image_config(&layers, &meta()).unwrap();
        ids.insert(image_id(&config).unwrap());
        let mut out = Vec::new();
        write_archive(&mut out, &layers, &config, &["a/b:c".to_string()]).unwrap();
        archives.insert(out);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(archives.len(), 1);
    let json = String::from_utf8(config_json(&image_config(&layers, &meta()).unwrap()).unwrap()).unwrap();
    assert!(json.find("org.ckms.l0").unwrap() < json.find("org.ckms.l1").unwrap());
    assert!(json.starts_with(r#"{"architecture":"#), "{json}");
}

#[test]
fn repeated_layer_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let l = make_layer(dir.path(), "a.tar", "etc/a", b"aaa");
    let layers = vec![l.clone(), l];
    let config = image_config(&layers, &meta()).unwrap();
    let mut out = Vec::new();
    write_archive(&mut out, &layers, &config, &[]).unwrap();
    let mut a = tar::Archive::new(out.as_slice());
    let blobs =
        a.entries().unwrap().filter(|e| e.as_ref().unwrap().path().unwrap().starts_with("blobs/sha256/")).count();
    assert_eq!(blobs, 1 + 1 + 2, "dirs are counted too: config, manifest, one layer, and blobs/sha256/ itself");
}

#[test]
fn errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = make_layer(dir.path(), "a.tar", "etc/a", b"aaa");
    let config = image_config(std::slice::from_ref(&good), &meta()).unwrap();

    let mut short = good.clone();
    short.digest.size += 1;
    let e = write_archive(Vec::new(), &[short], &config, &[]).unwrap_err();
    assert!(matches!(e, ArchiveError::LayerSize { .. }), "{e}");

    let mut missing = good.clone();
    missing.path = dir.path().join("nope.tar");
    let e = write_archive(Vec::new(), &[missing], &config, &[]).unwrap_err();
    assert!(matches!(e, ArchiveError::LayerIo { .. }), "{e}");
    assert!(e.to_string().contains("nope.tar"));

    let other = make_layer(dir.path(), "b.tar", "etc/b", b"bbb");
    let e = write_archive(Vec::new(), &[other], &config, &[]).unwrap_err();
    assert!(matches!(e, ArchiveError::ConfigMismatch { .. }), "{e}");

    for tag in ["noTag", "Upper/case:x", "a/b:", "a/b:-x", "a//b:x"] {
        let e = write_archive(Vec::new(), std::slice::from_ref(&good), &config, &[tag.into()]).unwrap_err();
        assert!(matches!(e, ArchiveError::BadTag { .. }), "{tag}: {e}");
    }
    for tag in ["a:b", "ckms/builder:debian-12_6.1", "localhost:5000/a/b:1.0", "Registry.Example.com/a:b"] {
        check_tag(tag).unwrap();
    }

    for created in ["2024-01-01", "2024-01-01 00:00:00Z", "2024-01-01T00:00:00", "2024-01-01T00:00:00.Z"] {
        let m = ImageMeta { created: created.into(), ..meta() };
        assert!(matches!(image_config(&[], &m), Err(ArchiveError::BadCreated { .. })), "{created}");
    }
    for created in ["2024-01-01T00:00:00Z", "2024-01-01T00:00:00.123+02:00"] {
        image_config(&[], &ImageMeta { created: created.into(), ..meta() }).unwrap();
    }
}
