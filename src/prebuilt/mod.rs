//! Prebuilt modules from a farm's binary cache (`ckms farm publish --format cache`), looked in
//! before a local build by `install` (and so `autoinstall` and the dkms drop-in).
//!
//! [`Cache`] is the host's [`Substituter`]: it computes the key of the pair it wants exactly as
//! the farm does ([`crate::pair::inputs::kernel_pairs`]): from the module source in its tree, the overrides
//! that apply, the builder image planned from the kernel's signed index, the kernel and arch,
//! and the siblings it declares. No engine, headers or compiler: only the index. A patched
//! source has another digest, so it never matches an entry built from another source.
//!
//! Then, per cache in order: `index.json` and `index.json.asc`, the signature checked against
//! the configured keys, the entry picked by key, its files downloaded and checked against
//! their SHA-256 and size. The caller installs them through the normal path, which checks the
//! module signatures against the host's certificate, as for a local build.
//!
//! A cache that does not answer is passed over (the host builds, unless `--prebuilt-only`); a
//! bad signature, an untrusted signer or a file that does not match the signed index stops
//! the install: a cache serving something else than what its farm signed is an operator's
//! business, not something to paper over with a local build.

pub mod fetch;

use std::path::PathBuf;

use thiserror::Error;

use crate::cache::sha256_hex;
use crate::config::PrebuiltConfig;
use crate::confine;
use crate::context::{Context, ContextError};
use crate::diagnose::{code, Diagnose};
use crate::pair::inputs::{self, Evaluation, KernelAt, Source};
use crate::pair::substitute::{SourceDir, Substitute, SubstituteError, SubstitutedModule, Substituter, Want};
use crate::pair::PairError;
use crate::publish::cache::{self as format, Entry, File, Index};
use crate::publish::signer::ModuleCert;
use crate::repo::release::{self, Keyring};
use crate::repo::RepoError;
use crate::sign::SignError;
use fetch::{join, Fetch, Fetcher, Miss};

#[derive(Debug, Error)]
pub enum PrebuiltError {
    #[error("--prebuilt-only: no cache is configured ([prebuilt] urls in /etc/ckms/config.toml)")]
    NotConfigured,
    #[error("[prebuilt] names caches but no keys to check their index with")]
    NoKeys,
    #[error("the trusted key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("the cache {url} does not answer: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("{url} sent more than {limit} bytes: refused")]
    TooLarge { url: String, limit: u64 },
    #[error("the cache {url} is plain http://, which [prebuilt] does not allow")]
    PlainHttp { url: String },
    #[error("the cache {url} has no index.json")]
    NoIndex { url: String },
    #[error("the index of the cache {url} is not signed by a trusted key: {detail}")]
    Untrusted { url: String, detail: String },
    #[error("the index of the cache {url} does not match its signature by trusted key {signer}: it was changed after signing")]
    TamperedIndex { url: String, signer: String },
    #[error("the index of the cache {url}: {message}")]
    BadIndex { url: String, message: String },
    #[error("{url} ({module} for {kernel}) does not match the signed index: {what}")]
    TamperedFile { url: String, module: String, kernel: String, what: String },
    #[error("{module} for {kernel} is missing from the cache {url} though its index lists it")]
    MissingFile { url: String, module: String, kernel: String },
    #[error("{module} has a {script} script, which needs its dkms.conf evaluated at build time; --prebuilt-only forbids building it here")]
    Scripts { module: String, script: &'static str },
    #[error("no cache has {module} for {kernel} (key {key}); --prebuilt-only forbids building it here")]
    NoEntry { module: String, kernel: String, key: String, urls: Vec<String> },
    #[error("{module} for {kernel} in the cache {url} is signed by the module certificate {signer}, which [prebuilt] module_certs does not name (it names {trusted})")]
    UntrustedSigner { url: String, module: String, kernel: String, signer: String, trusted: String },
    /// A certificate of `[prebuilt] module_certs` that cannot be read.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The pair's key could not be computed (its kernel, its source).
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Pair(#[from] PairError),
}

impl Diagnose for PrebuiltError {
    fn exit_code(&self) -> i32 {
        match self {
            PrebuiltError::NotConfigured | PrebuiltError::NoKeys | PrebuiltError::PlainHttp { .. } => code::USAGE,
            PrebuiltError::TooLarge { .. } => code::CHECKSUM_MISMATCH,
            PrebuiltError::Key { .. } | PrebuiltError::Untrusted { .. } | PrebuiltError::TamperedIndex { .. } => {
                code::BAD_SIGNATURE
            }
            PrebuiltError::TamperedFile { .. } | PrebuiltError::BadIndex { .. } => code::CHECKSUM_MISMATCH,
            PrebuiltError::UntrustedSigner { .. } => code::BAD_MODULE_SIGNATURE,
            PrebuiltError::Sign(e) => e.exit_code(),
            PrebuiltError::Unreachable { .. } | PrebuiltError::NoIndex { .. } | PrebuiltError::MissingFile { .. } => {
                code::MIRROR_UNREACHABLE
            }
            PrebuiltError::NoEntry { .. } | PrebuiltError::Scripts { .. } => code::MODULE_MISSING,
            PrebuiltError::Context(e) => e.exit_code(),
            PrebuiltError::Pair(e) => e.exit_code(),
        }
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            PrebuiltError::Context(e) => return e.hint(),
            PrebuiltError::Pair(e) => return e.hint(),
            PrebuiltError::Sign(e) => return e.hint(),
            PrebuiltError::UntrustedSigner { .. } => "the farm signs with another module key than this host trusts \
                 (a key rotation?): once the new certificate is enrolled (ckms mok enroll --cert FILE), add it to \
                 [prebuilt] module_certs; nothing was installed"
                .into(),
            PrebuiltError::NotConfigured => {
                "add [prebuilt] urls = [\"https://farm.example/cache/\"] and keys = [\"/etc/ckms/farm.pub.asc\"]".into()
            }
            PrebuiltError::NoKeys => {
                "add keys = [\"/etc/ckms/farm.pub.asc\"] under [prebuilt]: the farm's public key, farm.pub.asc in the cache"
                    .into()
            }
            PrebuiltError::PlainHttp { .. } => "use https://; a cache on a network you trust may be allowed with \
                 allow_http = true under [prebuilt] (the index's signature still protects what is installed)"
                .into(),
            PrebuiltError::TooLarge { .. } => "the cache, a proxy or the network sent more than the signed index \
                 allows (or an index larger than any farm writes); nothing was installed"
                .into(),
            PrebuiltError::Key { .. } => "a key file is an OpenPGP public key, armored or binary (gpg --export)".into(),
            PrebuiltError::Unreachable { .. } | PrebuiltError::NoIndex { .. } => {
                "check the URL under [prebuilt] and that the server is up; without --prebuilt-only the module is built here"
                    .into()
            }
            PrebuiltError::Untrusted { .. } => "the cache was signed by another key than [prebuilt] keys names: \
                 check that the cache is the farm's and that keys holds the farm's current public key"
                .into(),
            PrebuiltError::TamperedIndex { .. } | PrebuiltError::TamperedFile { .. } => {
                "the cache, a proxy or the network changed what the farm published; nothing was installed. \
                 Publish the cache again (ckms farm publish --format cache) or remove it from [prebuilt] urls"
                    .into()
            }
            PrebuiltError::BadIndex { .. } | PrebuiltError::MissingFile { .. } => {
                "publish the cache again with ckms farm publish --format cache".into()
            }
            PrebuiltError::Scripts { .. } => "install it without --prebuilt-only: it is built here".into(),
            PrebuiltError::NoEntry { .. } => "build the pair in the farm (ckms farm build) and publish the cache again, \
                 or install without --prebuilt-only to build it here; the key covers the source, its overrides, \
                 the builder image and the kernel: a patched source is never matched"
                .into(),
        })
    }
}

/// An entry found in a cache, its files downloaded and checked against the signed index.
#[derive(Debug, Clone)]
pub struct Found {
    /// The cache's base URL.
    pub url: String,
    pub key: String,
    pub entry: Entry,
    /// Each file as the index lists it, with its bytes.
    pub files: Vec<(File, Vec<u8>)>,
    /// The module certificate the entry is signed with (DER), as the cache publishes it.
    pub certificate: Option<Vec<u8>>,
}

/// The binary caches `[prebuilt]` names, as a dkms tree's substituter.
pub struct Cache<'a> {
    ctx: &'a Context,
    /// `install --prebuilt-only`: a pair no cache has is an error, never built here.
    only: bool,
}

impl<'a> Cache<'a> {
    pub fn new(ctx: &'a Context, only: bool) -> Cache<'a> {
        Cache { ctx, only }
    }
}

#[async_trait::async_trait]
impl Substituter for Cache<'_> {
    async fn substitute(&self, want: &Want) -> Result<Option<Substitute>, SubstituteError> {
        let found = find(self.ctx, want, self.only).await.map_err(|e| SubstituteError(Box::new(e)))?;
        let Some(found) = found else { return Ok(None) };
        let modules = found
            .files
            .into_iter()
            .map(|(file, bytes)| {
                // The index was checked: its paths are plain relative ones with a file name.
                let file_name = std::path::Path::new(&file.path).file_name().unwrap_or_default();
                let file_name = file_name.to_string_lossy().into_owned();
                SubstitutedModule { name: file.name, dest: file.dest, file_name, bytes }
            })
            .collect();
        Ok(Some(Substitute {
            from: format!("prebuilt {} {}", found.url, found.key),
            profile: found.entry.profile,
            modules,
            signed_by: found.entry.signer.map(|s| s.fingerprint),
            certificate: found.certificate,
        }))
    }
}

/// Looks for the pair `want` in the configured caches. `None`: no cache has it (or none
/// answers) and the caller may build; with `only`, that is an error instead.
async fn find(ctx: &Context, want: &Want, only: bool) -> Result<Option<Found>, PrebuiltError> {
    let (mv, release) = (&want.module.mv, want.kernel.as_str());
    let cfg = &ctx.config.prebuilt;
    if cfg.urls.is_empty() {
        return if only { Err(PrebuiltError::NotConfigured) } else { Ok(None) };
    }
    let report = ctx.reporter();
    let conf = std::fs::read_to_string(want.module.dir.join("dkms.conf")).unwrap_or_default();
    if let Some(script) = install_script(&conf) {
        if only {
            return Err(PrebuiltError::Scripts { module: mv.to_string(), script });
        }
        report.info(format!("{mv} has a {script} script: built here, where its dkms.conf is evaluated"));
        return Ok(None);
    }
    plain_http_allowed(cfg)?;
    let keyring = keyring(&cfg.keys)?;
    let key = key_of(ctx, want).await?;
    let fetcher = Fetcher::new().map_err(|m| not_answering("(HTTP client)", m))?;
    // A cache that does not answer may hold the entry: with --prebuilt-only, that is the error.
    let mut silent = None;
    for url in &cfg.urls {
        match lookup(&fetcher, url, &keyring, &key).await {
            Ok(Some(found)) => {
                let found = pinned(&cfg.module_certs, found)?;
                report.detail(format!("{mv} for {release}: prebuilt in {url} (key {key})"));
                return Ok(Some(found));
            }
            Ok(None) => {}
            // With --prebuilt-only the first silent cache is the error: said once, not twice.
            Err(e @ (PrebuiltError::Unreachable { .. } | PrebuiltError::NoIndex { .. })) => {
                if only && silent.is_none() {
                    silent = Some(e);
                } else {
                    // Once: autoinstall asks the same cache for every module.
                    report.warn_once(e.to_string());
                }
            }
            Err(e) => return Err(e),
        }
    }
    if only {
        if let Some(e) = silent {
            return Err(e);
        }
        let (module, kernel, urls) = (mv.to_string(), release.to_string(), cfg.urls.clone());
        return Err(PrebuiltError::NoEntry { module, kernel, key, urls });
    }
    report.detail(format!("{mv} for {release}: in no cache (key {key}); building it here"));
    Ok(None)
}

/// The install-time script a dkms.conf sets, if any. Such scripts are known only when the conf
/// is evaluated, which a build does and a cache's entry does not record: those modules are
/// built here.
fn install_script(conf: &str) -> Option<&'static str> {
    ["PRE_INSTALL", "POST_INSTALL", "POST_REMOVE"]
        .into_iter()
        .find(|w| conf.lines().any(|l| l.trim_start().strip_prefix(w).is_some_and(|r| r.starts_with('='))))
}

/// Refuses a plain http:// cache unless `allow_http` says so.
fn plain_http_allowed(cfg: &PrebuiltConfig) -> Result<(), PrebuiltError> {
    match cfg.urls.iter().find(|u| u.starts_with("http://")) {
        Some(url) if !cfg.allow_http => Err(PrebuiltError::PlainHttp { url: url.clone() }),
        _ => Ok(()),
    }
}

/// The trusted keys, every file of `paths`.
fn keyring(paths: &[PathBuf]) -> Result<Keyring, PrebuiltError> {
    if paths.is_empty() {
        return Err(PrebuiltError::NoKeys);
    }
    let mut keys = Vec::new();
    for path in paths {
        let bad = |message: String| PrebuiltError::Key { path: path.clone(), message };
        let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        keys.extend(release::parse_keys(&bytes, path).map_err(|e| bad(e.to_string()))?);
    }
    Ok(Keyring::from_keys(keys))
}

/// `[prebuilt] module_certs`: when the host names the module certificates it trusts, an entry
/// signed by another (by its certificate's SHA-256, as the signed index gives it) is refused,
/// and the modules are verified with the host's copy of the certificate, not the cache's. An
/// unsigned entry passes: whether that may be installed is the host's kernel's decision.
pub(crate) fn pinned(certs: &[PathBuf], mut found: Found) -> Result<Found, PrebuiltError> {
    let Some(signer) = found.entry.signer.as_ref().filter(|_| !certs.is_empty()) else { return Ok(found) };
    let mut trusted = Vec::new();
    for path in certs {
        let cert = ModuleCert::load(path)?;
        if cert.fingerprint == signer.fingerprint {
            found.certificate = Some(cert.der);
            return Ok(found);
        }
        trusted.push(format!("{} ({})", path.display(), cert.fingerprint));
    }
    Err(PrebuiltError::UntrustedSigner {
        url: found.url,
        module: format!("{}/{}", found.entry.module, found.entry.version),
        kernel: found.entry.kernel,
        signer: format!("{} ({})", signer.fingerprint, signer.subject),
        trusted: trusted.join(", "),
    })
}

/// The key the farm gives the pair `want` when its inputs are this host's: the module's source,
/// and the siblings it declares among the tree's other modules.
pub async fn key_of(ctx: &Context, want: &Want) -> Result<String, PrebuiltError> {
    let (profile, index, kernel) = ctx.find_kernel(&want.kernel, want.profile.as_deref()).await?;
    let source = |s: &SourceDir| Source::of(&s.dir, &s.mv.to_string(), &profile.name, s.mv.clone(), s.origin.clone());
    let mut sources = vec![source(&want.module)?];
    for sibling in &want.siblings {
        sources.push(source(sibling)?);
    }
    let recipe = inputs::recipe_digest(ctx)?;
    // The farm's build machine, not necessarily this one: its cross builds have their own keys.
    let build = ctx.build_machine_on(profile, ctx.config.prebuilt.built_on.as_deref()).await?;
    let at = KernelAt { profile, index: &index, cross: build.as_ref().map(|b| b.cross()), kernel: &kernel, number: 0 };
    let mut evaluation = Evaluation::default();
    inputs::kernel_pairs(ctx, &at, &sources, &recipe, &mut evaluation)?;
    let pair = evaluation.pairs.iter().find(|p| p.source == 0);
    Ok(pair.map(|p| p.key.clone()).unwrap_or_default())
}

/// The most an index.json may hold: far beyond any farm's (about 1 KiB a pair), far below
/// what would exhaust a host. Read before its signature is checked, so it is bounded first.
const INDEX_LIMIT: u64 = 64 << 20;
/// The most an index.json.asc may hold (a detached signature is a few hundred bytes).
const SIGNATURE_LIMIT: u64 = 64 << 10;

fn not_answering(url: &str, miss: Miss) -> PrebuiltError {
    let detail = match miss {
        Miss::NotFound => "not found".into(),
        Miss::Unreachable(d) => d,
        Miss::TooLarge(limit) => return PrebuiltError::TooLarge { url: url.to_string(), limit },
    };
    PrebuiltError::Unreachable { url: url.to_string(), detail }
}

/// A cache's entry as its signed index lists it, its files not fetched: what `ckms ready`
/// answers from.
#[derive(Debug, Clone)]
pub struct Listed {
    pub url: String,
    pub key: String,
    pub entry: Entry,
}

/// The first configured cache whose signed index lists the pair `want`. `None`: none does (a
/// cache that does not answer is warned about and passed over).
pub async fn listed(ctx: &Context, want: &Want) -> Result<Option<Listed>, PrebuiltError> {
    let cfg = &ctx.config.prebuilt;
    if cfg.urls.is_empty() {
        return Err(PrebuiltError::NotConfigured);
    }
    plain_http_allowed(cfg)?;
    let keyring = keyring(&cfg.keys)?;
    let key = key_of(ctx, want).await?;
    let fetcher = Fetcher::new().map_err(|m| not_answering("(HTTP client)", m))?;
    for url in &cfg.urls {
        match signed_index(&fetcher, url, &keyring).await {
            Ok(index) => {
                if let Some(entry) = index.entries.get(&key) {
                    return Ok(Some(Listed { url: url.clone(), key, entry: entry.clone() }));
                }
            }
            Err(e @ (PrebuiltError::Unreachable { .. } | PrebuiltError::NoIndex { .. })) => {
                ctx.reporter().warn(e.to_string())
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// A cache's index, read only once its signature by a trusted key is checked.
async fn signed_index(f: &impl Fetch, url: &str, keyring: &Keyring) -> Result<Index, PrebuiltError> {
    let index_url = join(url, format::INDEX);
    let text = match f.get(&index_url, INDEX_LIMIT).await {
        Ok(t) => t,
        Err(Miss::NotFound) => return Err(PrebuiltError::NoIndex { url: url.to_string() }),
        Err(m) => return Err(not_answering(url, m)),
    };
    let signature = f.get(&join(url, format::SIGNATURE), SIGNATURE_LIMIT).await.map_err(|m| match m {
        Miss::NotFound => PrebuiltError::Untrusted { url: url.to_string(), detail: "index.json.asc is missing".into() },
        m => not_answering(url, m),
    })?;
    let signature = String::from_utf8_lossy(&signature);
    release::verify_detached(&text, &signature, keyring, &index_url).map_err(|e| match e {
        RepoError::Tampered { signer, .. } => PrebuiltError::TamperedIndex { url: url.to_string(), signer },
        RepoError::BadSignature { detail, .. } => PrebuiltError::Untrusted { url: url.to_string(), detail },
        other => PrebuiltError::Untrusted { url: url.to_string(), detail: other.to_string() },
    })?;
    // Only now, signed by a trusted key, is the index read.
    let bad = |message: String| PrebuiltError::BadIndex { url: url.to_string(), message };
    let index: Index = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    if index.format != format::FORMAT {
        return Err(bad(format!("format {} (this ckms reads {})", index.format, format::FORMAT)));
    }
    Ok(index)
}

/// One cache: its signed index, and the entry `key` with its files checked.
pub(crate) async fn lookup(
    f: &impl Fetch,
    url: &str,
    keyring: &Keyring,
    key: &str,
) -> Result<Option<Found>, PrebuiltError> {
    let index = signed_index(f, url, keyring).await?;
    let bad = |message: String| PrebuiltError::BadIndex { url: url.to_string(), message };
    let Some(entry) = index.entries.get(key) else { return Ok(None) };
    let mut files = Vec::new();
    for file in &entry.files {
        if confine::plain_relative(&file.path).is_none() || file.name.is_empty() {
            return Err(bad(format!("entry {key} names the file {:?}", file.path)));
        }
        let file_url = join(url, &file.path);
        let tampered = |what: String| PrebuiltError::TamperedFile {
            url: file_url.clone(),
            module: format!("{}/{}", entry.module, entry.version),
            kernel: entry.kernel.clone(),
            what,
        };
        // No more than the signed index says: a larger answer is refused while it arrives.
        let bytes = f.get(&file_url, file.size).await.map_err(|m| match m {
            Miss::NotFound => PrebuiltError::MissingFile {
                url: file_url.clone(),
                module: entry.module.clone(),
                kernel: entry.kernel.clone(),
            },
            m => not_answering(url, m),
        })?;
        if bytes.len() as u64 != file.size {
            return Err(tampered(format!("{} bytes, the index says {}", bytes.len(), file.size)));
        }
        let sha = sha256_hex(&bytes);
        if sha != file.sha256 {
            return Err(tampered(format!("SHA-256 {sha}, the index says {}", file.sha256)));
        }
        files.push((file.clone(), bytes));
    }
    let certificate = match (&entry.signer, &index.certificate) {
        (Some(signer), Some(published)) if *published == signer.fingerprint => {
            Some(certificate(f, url, published).await?)
        }
        // Older caches publish none: the host's own certificate must verify the modules.
        _ => None,
    };
    Ok(Some(Found { url: url.to_string(), key: key.to_string(), entry: entry.clone(), files, certificate }))
}

/// The most a module certificate may hold (a MOK certificate is about 1 KiB).
const CERT_LIMIT: u64 = 64 << 10;

/// The certificate of SHA-256 `fingerprint` (named in the signed index), checked against it.
async fn certificate(f: &impl Fetch, url: &str, fingerprint: &str) -> Result<Vec<u8>, PrebuiltError> {
    let cert_url = join(url, &format::cert_path(fingerprint));
    let der = f.get(&cert_url, CERT_LIMIT).await.map_err(|m| match m {
        Miss::NotFound => PrebuiltError::BadIndex { url: url.to_string(), message: format!("{cert_url} is missing") },
        m => not_answering(url, m),
    })?;
    let sha = sha256_hex(&der);
    if sha != fingerprint {
        let what = format!("SHA-256 {sha}, the index says {fingerprint}");
        return Err(PrebuiltError::TamperedFile {
            url: cert_url,
            module: "the module certificate".into(),
            kernel: "every kernel".into(),
            what,
        });
    }
    Ok(der)
}

#[cfg(test)]
mod tests;
