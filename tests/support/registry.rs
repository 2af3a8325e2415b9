//! Debian's `docker-registry` for tests that push images: started on a free loopback port.
#![allow(dead_code)]

use std::process::Command;

/// Debian's `docker-registry` on a free loopback port, from a config file of the test's own;
/// killed on drop.
pub struct LocalRegistry {
    child: std::process::Child,
    pub host: String,
    _dir: tempfile::TempDir,
}

impl LocalRegistry {
    pub fn start() -> LocalRegistry {
        crate::bookworm::need("docker-registry", "docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        let storage = dir.path().join("data");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n",
                storage.display()
            ),
        )
        .unwrap();
        // Owned by the guard at once, so that every path below kills and reaps it.
        let registry = LocalRegistry {
            child: Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
            host: host.clone(),
            _dir: dir,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(&host).is_ok() {
                return registry;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("docker-registry did not listen on {host}");
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
