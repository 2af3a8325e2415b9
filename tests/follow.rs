//! `ckms farm follow` on Podman against the profiles' real archive: a module that builds and
//! one that does not, for 6.1.0-56-amd64, proven in a VM and published as a signed cache.
//!
//! - The first cycle publishes the good module; the kernel is marked not ready, naming the
//!   failing module with its first compiler error, in readiness.json and the signed index;
//! - a second `--once` with nothing changed runs no build and publishes nothing;
//! - the archive down (a mirror URL nothing answers): exit 30, counted in the state, said;
//! - as a service, its metrics answer on loopback.
//!
//! Podman, gpg and the archive must be there: a missing one fails the test.
mod support;

#[path = "support/farm.rs"]
mod farm;

use std::path::Path;

use farm::{module, Farm, C, KERNEL};

#[path = "support/bookworm.rs"]
mod bookworm;

fn config(dir: &Path, farm: &Farm, sources: &[&Path], metrics: Option<&str>) -> std::path::PathBuf {
    let key = dir.join("farm.asc");
    if !key.is_file() {
        bookworm::farm_key(dir);
    }
    let sources: Vec<String> = sources.iter().map(|s| format!("{:?}", s.display().to_string())).collect();
    let metrics = metrics.map(|m| format!("metrics = \"{m}\"\n")).unwrap_or_default();
    let text = format!(
        "store = {:?}\ninterval_secs = 1\n{metrics}[build]\nkernel = [\"{KERNEL}\"]\nsources = [{}]\nverify = true\n\
         [[publish]]\nformat = \"cache\"\nout = {:?}\nkey = {:?}\n",
        farm.store().display().to_string(),
        sources.join(", "),
        dir.join("www/cache").display().to_string(),
        key.display().to_string()
    );
    let path = dir.join("follow.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn state(farm: &Farm) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(farm.store().join("follow/state.json")).unwrap()).unwrap()
}

#[test]
fn follow_publishes_what_builds_marks_the_kernel_not_ready_and_survives_the_archive_down() {
    let farm = Farm::new("CKMS_TEST_PODMAN_HOST");
    let dir = farm.dir.path().to_path_buf();
    let good = module(&dir, "fgood", "", "obj-m := fgood.o\n", C);
    let bad = module(&dir, "fbad", "", "obj-m := fbad.o\n", "#include <linux/module.h>\nint x = undeclared_thing;\n");
    let cfg = config(&dir, &farm, &[&good, &bad], None);
    let cfg_s = cfg.display().to_string();

    let first = farm.ckms(&["farm", "follow", "--config", &cfg_s, "--once"]).run();
    first.expect_code(0);
    assert!(first.stderr.contains("cycle done"), "{first}");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("www/cache/index.json")).unwrap()).unwrap();
    let entries = index["entries"].as_object().unwrap();
    assert_eq!(entries.len(), 1, "the module that builds is published: {index}");
    assert_eq!(entries.values().next().unwrap()["loaded"], true, "{index}");
    let kernel = &index["kernels"][0];
    assert_eq!((kernel["kernel"].as_str(), kernel["ready"].as_bool()), (Some(KERNEL), Some(false)), "{index}");
    let modules = kernel["modules"].as_array().unwrap();
    let fbad = modules.iter().find(|m| m["module"] == "fbad").unwrap();
    assert_eq!(fbad["state"], "failed", "{index}");
    assert!(modules.iter().any(|m| m["module"] == "fgood" && m["state"] == "ready"), "{index}");
    let s = state(&farm);
    assert_eq!((s["polls"].as_u64(), s["pending_since"].is_null()), (Some(1), true), "{s}");
    assert!(s["last_latency_seconds"].is_number(), "{s}");

    // Nothing changed: no build, no publication.
    let published = std::fs::metadata(dir.join("www/cache/index.json")).unwrap().modified().unwrap();
    let again = farm.ckms(&["farm", "follow", "--config", &cfg_s, "--once"]).run();
    again.expect_code(0);
    assert!(!again.stderr.contains("cycle done"), "{again}");
    assert_eq!(std::fs::metadata(dir.join("www/cache/index.json")).unwrap().modified().unwrap(), published);
    eprintln!(
        "second poll: {} bytes, {} s CPU",
        state(&farm)["last_poll_bytes"],
        state(&farm)["last_poll_cpu_seconds"]
    );

    // The archive down: said, counted, exit 30; the publication stays.
    let down = farm
        .ckms(&["farm", "follow", "--config", &cfg_s, "--once"])
        .env("CKMS_MIRROR_DEBIAN", "http://127.0.0.1:9/debian")
        .env("CKMS_MIRROR_DEBIAN_SECURITY", "http://127.0.0.1:9/debian-security")
        .run();
    down.expect_code(ckms::diagnose::code::MIRROR_UNREACHABLE);
    assert!(down.stderr.contains("the archive does not answer"), "{down}");
    let s = state(&farm);
    assert_eq!((s["mirror_errors"].as_u64(), s["consecutive_errors"].as_u64()), (Some(1), Some(1)), "{s}");
    assert!(dir.join("www/cache/index.json").is_file());

    // As a service: the metrics on loopback.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let cfg = config(&dir, &farm, &[&good, &bad], Some(&addr));
    let mut service = farm.ckms(&["farm", "follow", "--config", &cfg.display().to_string()]).spawn();
    let mut text = String::new();
    for _ in 0..100 {
        if let Ok(mut sock) = std::net::TcpStream::connect(&addr) {
            use std::io::{Read, Write};
            sock.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            sock.read_to_string(&mut text).unwrap();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = service.kill();
    let _ = service.wait();
    assert!(text.contains("# TYPE ckms_follow_polls_total counter"), "{text}");
    assert!(text.contains(&format!("ckms_follow_kernel_ready{{kernel=\"{KERNEL}\"}} 0")), "{text}");
}
