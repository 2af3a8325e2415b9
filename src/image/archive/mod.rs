//! The image archive handed to the engine: one tar that is at once an OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/...`) and a docker-archive (`manifest.json`
//! pointing at the same blobs), with uncompressed layers so that blob digest = diff_id and no
//! compression time is spent on a file that is loaded once and thrown away.
//!
//! What the engines do with it (checked by hand with the busybox image the ignored
//! `e2e_archive` test builds; Docker 20.10.24 / API 1.41 and rootless Podman 4.3.1):
//! - Docker reads only `manifest.json`. `docker load` and `POST /images/load` answer
//!   "Loaded image: ckms-test/busybox:e2e", the tag as given. The image ID it reports is the
//!   SHA-256 of the config blob bytes exactly as written, i.e. [`image_id`]; it checks each
//!   layer against the config's diff_ids. Running `/bin/busybox` works through the base
//!   layer's `bin -> usr/bin` symlink.
//! - Podman tries an OCI directory, then an OCI archive, then a docker-archive. With one tag
//!   the OCI-archive step succeeds and names the image from `io.containerd.image.name`,
//!   normalised to `localhost/ckms-test/busybox:e2e` (short names resolve to it, so
//!   `podman run ckms-test/busybox:e2e` works). With several tags that step fails ("more than
//!   one image in oci, choose an image", a debug-level message) and the docker-archive step
//!   loads all tags, also as `localhost/...`. Either way the ID equals Docker's. Its compat
//!   `POST /v1.41/images/load` reports several tags on ONE line: "Loaded image: a,b".
//!   (In this sandbox `podman run` needs `--network none`: slirp4netns cannot open
//!   /dev/net/tun.)
//!
//! Every JSON document is written with its object keys sorted (oci-spec keeps labels and
//! annotations in `HashMap`s, whose order changes from run to run), so the same inputs give
//! the same bytes, the same image ID and the same archive.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, HistoryBuilder, ImageConfiguration, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder,
};
use thiserror::Error;

use super::layer::LayerDigest;
use crate::cache::sha256_hex;
use crate::diagnose::{code, Diagnose};

const WRITE_BUF: usize = 1024 * 1024;

/// Annotation containerd and Docker 25+ use for the full image name; Podman reads it too.
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for the reference (tag) of a manifest in an index.
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("layer {path}: {source}")]
    LayerIo { path: PathBuf, source: io::Error },
    #[error("layer {path} is {actual} bytes but its digest record says {expected}")]
    LayerSize { path: PathBuf, expected: u64, actual: u64 },
    #[error("layer {path}: diff_id {diff_id:?} is not \"sha256:\" and 64 hex digits")]
    BadDigest { path: PathBuf, diff_id: String },
    #[error("the image configuration lists diff_ids {config:?} but the layers are {layers:?}")]
    ConfigMismatch { config: Vec<String>, layers: Vec<String> },
    #[error("image tag {tag:?} is not of the form name:tag with a lowercase name")]
    BadTag { tag: String },
    #[error("image creation time {created:?} is not an RFC 3339 time like 2024-01-01T00:00:00Z")]
    BadCreated { created: String },
    #[error("building the OCI {what} failed: {source}")]
    Spec { what: &'static str, source: oci_spec::OciSpecError },
    #[error("serialising the OCI {what} failed: {source}")]
    Json { what: &'static str, source: serde_json::Error },
    #[error("writing the image archive failed: {source}")]
    Write { source: io::Error },
}

impl Diagnose for ArchiveError {
    fn exit_code(&self) -> i32 {
        code::IO
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            ArchiveError::LayerIo { .. } | ArchiveError::LayerSize { .. } | ArchiveError::BadDigest { .. } => {
                "a cached layer is missing or damaged: remove the cache's layer entries (or use a fresh --cache-dir) so they are rebuilt".into()
            }
            ArchiveError::Write { source } if source.raw_os_error() == Some(28) => {
                "the disk is full: free space where the image archive is written (the cache or TMPDIR)".into()
            }
            ArchiveError::Write { .. } => "check that the output location is writable and has free space".into(),
            ArchiveError::BadTag { .. } | ArchiveError::BadCreated { .. } => {
                "fix the image name or time in the image recipe under images/".into()
            }
            ArchiveError::ConfigMismatch { .. } | ArchiveError::Spec { .. } | ArchiveError::Json { .. } => {
                "this is a bug in ckms; please report it with the command line that failed".into()
            }
        })
    }
}

/// One layer of the image, as a finished uncompressed tar on disk.
#[derive(Debug, Clone)]
pub struct ArchiveLayer {
    /// The uncompressed layer tar.
    pub path: PathBuf,
    pub digest: LayerDigest,
}

/// The run-time settings and metadata of the image.
#[derive(Debug, Clone)]
pub struct ImageMeta {
    pub user: String,
    pub env: Vec<String>,
    pub workdir: String,
    pub cmd: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// RFC 3339, fixed for determinism.
    pub created: String,
}

/// The OCI name of the architecture ckms runs on, which is the one its images are for.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        "mips64" if cfg!(target_endian = "little") => "mips64le",
        other => other, // s390x, riscv64 are spelled the same in both worlds.
    }
}

/// The OCI image configuration for these layers, for the host's architecture;
/// deterministic for the same inputs.
pub fn image_config(layers: &[ArchiveLayer], meta: &ImageMeta) -> Result<ImageConfiguration, ArchiveError> {
    image_config_for_arch(layers, meta, host_arch())
}

/// [`image_config`] for an explicit OCI architecture name ("amd64", "arm64", ...).
pub fn image_config_for_arch(
    layers: &[ArchiveLayer],
    meta: &ImageMeta,
    arch: &str,
) -> Result<ImageConfiguration, ArchiveError> {
    check_created(&meta.created)?;
    let spec = |what| move |source| ArchiveError::Spec { what, source };
    // Empty settings are left out rather than written as "" or [], as docker build does.
    let mut config = ConfigBuilder::default();
    if !meta.user.is_empty() {
        config = config.user(meta.user.clone());
    }
    if !meta.env.is_empty() {
        config = config.env(meta.env.clone());
    }
    if !meta.workdir.is_empty() {
        config = config.working_dir(meta.workdir.clone());
    }
    if !meta.cmd.is_empty() {
        config = config.cmd(meta.cmd.clone());
    }
    if !meta.labels.is_empty() {
        config = config.labels(meta.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>());
    }
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(layers.iter().map(|l| l.digest.diff_id.clone()).collect::<Vec<_>>())
        .build()
        .map_err(spec("rootfs"))?;
    // One history entry per layer keeps `docker history` and tools that pair history with
    // layers happy.
    let history = layers
        .iter()
        .map(|l| {
            HistoryBuilder::default()
                .created(meta.created.clone())
                .created_by(format!("ckms: layer {}", l.digest.diff_id))
                .build()
                .map_err(spec("history"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    ImageConfigurationBuilder::default()
        .created(meta.created.clone())
        .architecture(Arch::from(arch))
        .os(Os::Linux)
        .config(config.build().map_err(spec("config"))?)
        .rootfs(rootfs)
        .history(history)
        .build()
        .map_err(spec("image configuration"))
}

/// The image ID engines will report: "sha256:<hex of the config JSON bytes exactly as written>".
pub fn image_id(config: &ImageConfiguration) -> Result<String, ArchiveError> {
    Ok(format!("sha256:{}", sha256_hex(&config_json(config)?)))
}

/// The config blob exactly as [`write_archive`] writes it.
pub fn config_json(config: &ImageConfiguration) -> Result<Vec<u8>, ArchiveError> {
    canonical_json(config, "image configuration")
}

/// Compact JSON with every object's keys sorted, whatever map types the value uses.
fn canonical_json<T: serde::Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, ArchiveError> {
    let json = |source| ArchiveError::Json { what, source };
    let mut v = serde_json::to_value(value).map_err(json)?;
    sort_keys(&mut v);
    serde_json::to_vec(&v).map_err(json)
}

fn sort_keys(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            // Rebuilding in sorted order also works when serde_json's preserve_order
            // feature (insertion-ordered maps) gets enabled by some other crate.
            let mut entries: Vec<_> = std::mem::take(map).into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (k, mut val) in entries {
                sort_keys(&mut val);
                map.insert(k, val);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(sort_keys),
        _ => {}
    }
}

/// The entry of Docker's `manifest.json`.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest<'a> {
    config: String,
    repo_tags: &'a [String],
    layers: Vec<String>,
}

fn blob_path(hex: &str) -> String {
    format!("blobs/sha256/{hex}")
}

/// Writes ONE tar that is both an OCI image layout (oci-layout, index.json, blobs/sha256/...)
/// and a docker-archive (manifest.json with Config/RepoTags/Layers pointing at the same
/// blobs), layers uncompressed. Layers are streamed from their files, never read whole.
///
/// `index.json` gets one manifest entry per tag, annotated with the full name
/// (`io.containerd.image.name`) and the tag (`org.opencontainers.image.ref.name`), which is
/// the shape `docker save` writes since Docker 25.
///
/// The small JSON documents come first so that a reader streaming the tar meets them before
/// the layers. A layer used twice is stored once.
pub fn write_archive(
    out: impl Write,
    layers: &[ArchiveLayer],
    config: &ImageConfiguration,
    tags: &[String],
) -> Result<(), ArchiveError> {
    for tag in tags {
        check_tag(tag)?;
    }
    let layer_hex = layers
        .iter()
        .map(|l| match l.digest.diff_id.strip_prefix("sha256:") {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => Ok(h),
            _ => Err(ArchiveError::BadDigest { path: l.path.clone(), diff_id: l.digest.diff_id.clone() }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let layer_ids: Vec<String> = layers.iter().map(|l| l.digest.diff_id.clone()).collect();
    if config.rootfs().diff_ids() != &layer_ids {
        return Err(ArchiveError::ConfigMismatch { config: config.rootfs().diff_ids().clone(), layers: layer_ids });
    }
    // Open every layer and check its size before writing anything, so that a missing layer
    // fails fast instead of after hundreds of megabytes.
    let mut files = Vec::with_capacity(layers.len());
    for l in layers {
        let io_err = |source| ArchiveError::LayerIo { path: l.path.clone(), source };
        let f = File::open(&l.path).map_err(io_err)?;
        let actual = f.metadata().map_err(io_err)?.len();
        if actual != l.digest.size {
            return Err(ArchiveError::LayerSize { path: l.path.clone(), expected: l.digest.size, actual });
        }
        files.push(f);
    }

    let spec = |what| move |source| ArchiveError::Spec { what, source };
    let config_bytes = config_json(config)?;
    let config_hex = sha256_hex(&config_bytes);
    let config_desc = descriptor(MediaType::ImageConfig, config_bytes.len() as u64, &config_hex)?;
    let layer_descs = layers
        .iter()
        .zip(&layer_hex)
        .map(|(l, hex)| descriptor(MediaType::ImageLayer, l.digest.size, hex))
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_desc)
        .layers(layer_descs)
        .build()
        .map_err(spec("manifest"))?;
    let manifest_bytes = canonical_json(&manifest, "manifest")?;
    let manifest_hex = sha256_hex(&manifest_bytes);

    // The index names the image's platform, as a multi-platform index does: a reader of the
    // layout (skopeo, containerd) picks or refuses it by architecture without its config.
    let platform = PlatformBuilder::default()
        .architecture(config.architecture().clone())
        .os(config.os().clone())
        .build()
        .map_err(spec("platform"))?;
    let manifest_entry = || -> Result<Descriptor, ArchiveError> {
        let mut d = descriptor(MediaType::ImageManifest, manifest_bytes.len() as u64, &manifest_hex)?;
        d.set_platform(Some(platform.clone()));
        Ok(d)
    };
    let mut entries = Vec::new();
    for tag in tags {
        let annotations = HashMap::from([
            (ANNOTATION_IMAGE_NAME.to_string(), tag.clone()),
            (ANNOTATION_REF_NAME.to_string(), tag_part(tag).to_string()),
        ]);
        let mut d = manifest_entry()?;
        d.set_annotations(Some(annotations));
        entries.push(d);
    }
    if entries.is_empty() {
        entries.push(manifest_entry()?);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(entries)
        .build()
        .map_err(spec("index"))?;
    let index_bytes = canonical_json(&index, "index")?;
    let docker = [DockerManifest {
        config: blob_path(&config_hex),
        repo_tags: tags,
        layers: layer_hex.iter().map(|h| blob_path(h)).collect(),
    }];
    let docker_bytes = canonical_json(&docker, "docker manifest")?;

    let mut w = TarOut { out: BufWriter::with_capacity(WRITE_BUF, out) };
    let wr = |source| ArchiveError::Write { source };
    w.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(wr)?;
    w.file("index.json", &index_bytes).map_err(wr)?;
    w.file("manifest.json", &docker_bytes).map_err(wr)?;
    w.dir("blobs/").map_err(wr)?;
    w.dir("blobs/sha256/").map_err(wr)?;
    w.file(&blob_path(&config_hex), &config_bytes).map_err(wr)?;
    w.file(&blob_path(&manifest_hex), &manifest_bytes).map_err(wr)?;
    let mut written: HashSet<&str> = HashSet::new();
    for ((l, hex), f) in layers.iter().zip(&layer_hex).zip(files) {
        if written.insert(hex) {
            w.stream(&blob_path(hex), f, l.digest.size).map_err(|e| match e {
                Streamed::Read(source) => ArchiveError::LayerIo { path: l.path.clone(), source },
                Streamed::Write(source) => ArchiveError::Write { source },
            })?;
        }
    }
    w.finish().map_err(wr)
}

fn descriptor(media_type: MediaType, size: u64, hex: &str) -> Result<Descriptor, ArchiveError> {
    let spec = |source| ArchiveError::Spec { what: "descriptor", source };
    let digest: oci_spec::image::Digest = format!("sha256:{hex}").parse().map_err(spec)?;
    DescriptorBuilder::default().media_type(media_type).size(size).digest(digest).build().map_err(spec)
}

/// The tag of "registry:5000/name:tag" ("tag").
fn tag_part(tag: &str) -> &str {
    let last = tag.rsplit('/').next().unwrap_or(tag);
    last.rsplit_once(':').map_or(last, |(_, t)| t)
}

/// A light check of the rules Docker applies to RepoTags, so that a bad name fails here
/// with a clear message rather than halfway through an engine load.
fn check_tag(tag: &str) -> Result<(), ArchiveError> {
    let bad = || ArchiveError::BadTag { tag: tag.into() };
    let last_slash = tag.rfind('/').map_or(0, |i| i + 1);
    let (name, t) = match tag[last_slash..].rsplit_once(':') {
        Some((_, t)) => (&tag[..tag.len() - t.len() - 1], t),
        None => return Err(bad()),
    };
    let tag_ok = !t.is_empty()
        && t.len() <= 128
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !t.starts_with(['.', '-']);
    // The path part must be lowercase; a registry host (first component with '.' or ':')
    // may contain a port.
    let path = match name.split_once('/') {
        Some((host, rest)) if host.contains(['.', ':']) || host == "localhost" => rest,
        _ => name,
    };
    let name_ok = !path.is_empty()
        && path.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        });
    if tag_ok && name_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Shape check for "YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)"; Docker refuses a config whose
/// `created` Go's time parser rejects.
fn check_created(created: &str) -> Result<(), ArchiveError> {
    let b = created.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let mut ok = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if ok {
        let mut rest = &created[19..];
        if let Some(frac) = rest.strip_prefix('.') {
            let n = frac.bytes().take_while(u8::is_ascii_digit).count();
            ok = n > 0;
            rest = &frac[n..];
        }
        let rb = rest.as_bytes();
        ok = ok
            && (rest == "Z"
                || (rb.len() == 6
                    && (rb[0] == b'+' || rb[0] == b'-')
                    && rb[1..3].iter().all(u8::is_ascii_digit)
                    && rb[3] == b':'
                    && rb[4..6].iter().all(u8::is_ascii_digit)));
    }
    if ok {
        Ok(())
    } else {
        Err(ArchiveError::BadCreated { created: created.into() })
    }
}

enum Streamed {
    Read(io::Error),
    Write(io::Error),
}

/// A minimal tar writer for the archive: a handful of short, fixed names, so headers are
/// written directly and layer data goes through `io::copy`, which reads straight into the
/// 1 MiB `BufWriter` buffer (no intermediate copy, few syscalls).
struct TarOut<W: Write> {
    out: BufWriter<W>,
}

impl<W: Write> TarOut<W> {
    fn header(&mut self, path: &str, kind: tar::EntryType, mode: u32, size: u64) -> io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_path(path)?;
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h.set_cksum();
        self.out.write_all(h.as_bytes())
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % 512) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; 512][..512 - rem])?;
        }
        Ok(())
    }

    fn dir(&mut self, path: &str) -> io::Result<()> {
        self.header(path, tar::EntryType::Directory, 0o755, 0)
    }

    fn file(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        self.header(path, tar::EntryType::Regular, 0o644, data.len() as u64)?;
        self.out.write_all(data)?;
        self.pad(data.len() as u64)
    }

    fn stream(&mut self, path: &str, file: File, size: u64) -> Result<(), Streamed> {
        self.header(path, tar::EntryType::Regular, 0o644, size).map_err(Streamed::Write)?;
        let mut src = Tracked { inner: file.take(size), err: None };
        let copied = match io::copy(&mut src, &mut self.out) {
            Ok(n) => n,
            Err(e) => return Err(src.err.take().map_or(Streamed::Write(e), Streamed::Read)),
        };
        if copied != size {
            // The file shrank after its size was checked: the tar would be corrupt.
            return Err(Streamed::Read(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("layer changed while being written: {copied} of {size} bytes"),
            )));
        }
        self.pad(size).map_err(Streamed::Write)
    }

    fn finish(mut self) -> io::Result<()> {
        self.out.write_all(&[0u8; 1024])?;
        self.out.flush()
    }
}

/// Keeps a read error apart from a write error in `io::copy`.
struct Tracked<R> {
    inner: R,
    err: Option<io::Error>,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            let copy = io::Error::new(e.kind(), e.to_string());
            self.err = Some(e);
            copy
        })
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod e2e;
