//! Pushing a written image archive to a registry over the OCI distribution API: each blob
//! (config, layers) by a monolithic upload (POST, then PUT with its digest) unless the
//! registry has it (HEAD), then the manifest by tag. The archive is read back, so what is
//! pushed is byte for byte what `--out` holds: the same digests, the same image ID.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::OciError;
use crate::cache::sha256_hex;

/// Where and how to push.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// `host[:port]`.
    pub host: String,
    /// Basic authentication.
    pub user: Option<String>,
    pub password: Option<String>,
    /// Plain HTTP (a registry on loopback without TLS).
    pub insecure: bool,
    /// A PEM CA certificate trusted besides the system's.
    pub ca_cert: Option<PathBuf>,
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

impl Registry {
    /// The repository's path in this registry: without its leading `host/` when it names it.
    pub fn path_of<'a>(&self, repository: &'a str) -> &'a str {
        repository.strip_prefix(&format!("{}/", self.host)).unwrap_or(repository)
    }

    fn client(&self) -> Result<reqwest::Client, OciError> {
        let mut b = reqwest::Client::builder();
        if let Some(path) = &self.ca_cert {
            let pem = std::fs::read(path).map_err(OciError::io(path))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| OciError::Registry {
                host: self.host.clone(),
                message: format!("{}: {e}", path.display()),
            })?;
            b = b.add_root_certificate(cert);
        }
        b.build().map_err(|e| OciError::Registry { host: self.host.clone(), message: e.to_string() })
    }

    fn base(&self) -> String {
        format!("{}://{}", if self.insecure { "http" } else { "https" }, self.host)
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.user {
            Some(u) => r.basic_auth(u, self.password.as_deref()),
            None => r,
        }
    }
}

/// The blobs and manifest of a single-image archive.
struct Parts {
    manifest: Vec<u8>,
    /// digest -> bytes (config and layers).
    blobs: BTreeMap<String, Vec<u8>>,
}

fn read_archive(path: &Path) -> Result<Parts, OciError> {
    let bad = |m: String| OciError::Image { tag: path.display().to_string(), message: m };
    let file = std::fs::File::open(path).map_err(OciError::io(path))?;
    let mut members = BTreeMap::new();
    let mut ar = tar::Archive::new(file);
    for e in ar.entries().map_err(OciError::io(path))? {
        let mut e = e.map_err(OciError::io(path))?;
        let name = e.path().map_err(OciError::io(path))?.to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).map_err(OciError::io(path))?;
        members.insert(name, bytes);
    }
    let json = |name: &str| -> Result<serde_json::Value, OciError> {
        let bytes = members.get(name).ok_or_else(|| bad(format!("no {name}")))?;
        serde_json::from_slice(bytes).map_err(|e| bad(format!("{name}: {e}")))
    };
    let blob = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let index = json("index.json")?;
    let digest = index["manifests"][0]["digest"].as_str().ok_or_else(|| bad("index.json names no manifest".into()))?;
    let manifest_name = blob(digest);
    let manifest_json = json(&manifest_name)?;
    let mut wanted = vec![manifest_json["config"]["digest"].as_str().unwrap_or_default().to_string()];
    if let Some(layers) = manifest_json["layers"].as_array() {
        wanted.extend(layers.iter().filter_map(|l| l["digest"].as_str()).map(str::to_string));
    }
    let mut blobs = BTreeMap::new();
    for d in wanted {
        let bytes = members.get(&blob(&d)).ok_or_else(|| bad(format!("no blob {d}")))?;
        blobs.insert(d, bytes.clone());
    }
    let manifest = members.remove(&manifest_name).unwrap_or_default();
    Ok(Parts { manifest, blobs })
}

/// Pushes the archive at `archive` as `<path>:<tag>`; returns the manifest's digest.
pub async fn push(registry: &Registry, archive: &Path, path: &str, tag: &str) -> Result<String, OciError> {
    let parts = read_archive(archive)?;
    let client = registry.client()?;
    let base = registry.base();
    let failed = |what: String| OciError::Registry { host: registry.host.clone(), message: what };
    let send = |r: reqwest::RequestBuilder, what: String| async move {
        registry.auth(r).send().await.map_err(|e| failed(format!("{what}: {e}")))
    };
    for (digest, bytes) in &parts.blobs {
        let head = send(client.head(format!("{base}/v2/{path}/blobs/{digest}")), format!("HEAD blob {digest}")).await?;
        if head.status().is_success() {
            continue;
        }
        let started =
            send(client.post(format!("{base}/v2/{path}/blobs/uploads/")), format!("starting the upload of {digest}"))
                .await?;
        if started.status() != reqwest::StatusCode::ACCEPTED {
            return Err(failed(format!("starting the upload of {digest}: HTTP {}", started.status())));
        }
        let location = started
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .ok_or_else(|| failed(format!("the upload of {digest} got no Location")))?;
        let mut url = if location.starts_with("http") { location.to_string() } else { format!("{base}{location}") };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={digest}"));
        let put = client.put(url).header(reqwest::header::CONTENT_TYPE, "application/octet-stream").body(bytes.clone());
        let done = send(put, format!("uploading {digest}")).await?;
        if done.status() != reqwest::StatusCode::CREATED {
            return Err(failed(format!("uploading {digest}: HTTP {}", done.status())));
        }
    }
    let put = client
        .put(format!("{base}/v2/{path}/manifests/{tag}"))
        .header(reqwest::header::CONTENT_TYPE, MANIFEST)
        .body(parts.manifest.clone());
    let done = send(put, format!("the manifest of {path}:{tag}")).await?;
    if done.status() != reqwest::StatusCode::CREATED {
        let status = done.status();
        let text = done.text().await.unwrap_or_default();
        return Err(failed(format!("the manifest of {path}:{tag}: HTTP {status} {}", text.trim())));
    }
    Ok(format!("sha256:{}", sha256_hex(&parts.manifest)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::archive::{self, ImageMeta};
    use crate::oci::layer::layer;

    #[test]
    fn the_path_in_the_registry_drops_its_host() {
        let r = Registry { host: "127.0.0.1:5000".into(), ..Registry::default() };
        assert_eq!(r.path_of("127.0.0.1:5000/ckms/v4l2loopback"), "ckms/v4l2loopback");
        assert_eq!(r.path_of("kmods/v4l2loopback"), "kmods/v4l2loopback");
        assert_eq!(r.base(), "https://127.0.0.1:5000");
        assert_eq!(Registry { insecure: true, ..r }.base(), "http://127.0.0.1:5000");
    }

    #[test]
    fn an_archive_gives_its_manifest_config_and_layers() {
        let dir = tempfile::tempdir().unwrap();
        let layers = vec![
            layer(dir.path().join("a.tar"), |w| w.add_file("a", b"A", 0o644, 0, 0)).unwrap(),
            layer(dir.path().join("b.tar"), |w| w.add_file("b", b"B", 0o644, 0, 0)).unwrap(),
        ];
        let meta = ImageMeta {
            user: String::new(),
            env: vec![],
            workdir: String::new(),
            cmd: vec!["/bin/sh".into()],
            labels: BTreeMap::new(),
            created: "1970-01-01T00:00:00Z".into(),
        };
        let config = archive::image_config(&layers, &meta).unwrap();
        let id = archive::image_id(&config).unwrap();
        let path = dir.path().join("image.tar");
        let mut out = std::fs::File::create(&path).unwrap();
        archive::write_archive(&mut out, &layers, &config, &["localhost/ckms/m:1".to_string()]).unwrap();
        let parts = read_archive(&path).unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&parts.manifest).unwrap();
        assert_eq!(manifest["mediaType"], MANIFEST);
        assert_eq!(parts.blobs.len(), 3, "the config and two layers");
        assert!(parts.blobs.contains_key(&id), "the config is the image ID's blob");
        for (digest, bytes) in &parts.blobs {
            assert_eq!(digest, &format!("sha256:{}", sha256_hex(bytes)));
        }
    }
}
