//! Turning a [`Plan`] into an image in the engine, with every expensive step cached:
//! packages by digest, layers by the digest of what goes into them, images by ID.

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::BufWriter;

use super::archive::{self, ArchiveLayer, ImageMeta};
use super::layer::{FsRules, LayerDigest, LayerWriter};
use super::{label, ImageError, Plan, PlannedLayer};
use crate::cache::{io_err, sha256_hex, Cache};
use crate::deb::data_tar;
use crate::engine::Images;
use crate::profile::{Profile, Recipe};
use crate::repo::{self, FetchStats};
use crate::report::Reporter;

type Result<T> = std::result::Result<T, ImageError>;

/// What `build` did.
#[derive(Debug, Clone, Serialize)]
pub struct Built {
    /// `<repository>-<profile>:<kernel>-<id12>`: names exactly this content.
    pub reference: String,
    pub tags: Vec<String>,
    pub id: String,
    pub layers: Vec<(String, LayerDigest)>,
    pub fetch: FetchStats,
    /// Layers written this time (the others came from the cache).
    pub layers_built: usize,
    /// False when the engine had the image already.
    pub loaded: bool,
}

/// Kept in the cache per image ID, so that `prune` knows what an image used.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    lock: super::Lock,
    layers: Vec<String>,
}

pub async fn build(
    cache: &Cache,
    engine: &dyn Images,
    profile: &Profile,
    recipe: &Recipe,
    plan: &Plan,
    force: bool,
    report: &dyn Reporter,
) -> Result<Built> {
    let prepared = prepare(cache, profile, recipe, plan)?;
    let Prepared { digests, config_layer, meta, repository, kernel_tag, lock, .. } = &prepared;
    if !force {
        if let Some(known) = digests.iter().cloned().collect::<Option<Vec<_>>>() {
            let Identity { id, tags, .. } = identity(cache, &known, config_layer, meta, repository, kernel_tag)?;
            if engine.image_id(&tags[1]).await?.as_deref() == Some(id.as_str()) {
                return Ok(Built {
                    reference: tags[1].clone(),
                    tags,
                    id,
                    layers: named(plan, &known),
                    fetch: FetchStats::default(),
                    layers_built: 0,
                    loaded: false,
                });
            }
        }
    }

    let lock = lock.clone();
    let config_layer = config_layer.clone();
    let Assembled { id, tags, layers: archive_layers, config, known, fetch, layers_built, .. } =
        layers(cache, plan, prepared, report).await?;
    let tmp = tempfile::NamedTempFile::new_in(cache.dir("tmp")?).map_err(|e| io_err(cache.root())(e))?;
    {
        let mut out = BufWriter::with_capacity(1 << 20, tmp.as_file());
        archive::write_archive(&mut out, &archive_layers, &config, &tags)?;
        std::io::Write::flush(&mut out).map_err(|e| io_err(tmp.path())(e))?;
    }
    report.detail(format!("loading {} into the engine", tags[1]));
    engine.load_image(tmp.path()).await?;
    match engine.image_id(&tags[1]).await? {
        Some(actual) if actual == id => {}
        actual => {
            return Err(ImageError::Mismatch {
                reference: tags[1].clone(),
                expected: id,
                actual: actual.unwrap_or_else(|| "absent".into()),
            })
        }
    }
    let mut layer_ids: Vec<String> = known.iter().map(|d| d.diff_id.clone()).collect();
    layer_ids.push(config_layer.diff_id.clone());
    save_record(cache, &id, &Record { lock, layers: layer_ids })?;
    Ok(Built { reference: tags[1].clone(), tags, id, layers: named(plan, &known), fetch, layers_built, loaded: true })
}

/// A builder image's content, written into the cache but not loaded anywhere: what `farm kube
/// render` pushes to a registry.
#[derive(Debug, Clone)]
pub struct Assembled {
    pub id: String,
    pub tags: Vec<String>,
    pub layers: Vec<ArchiveLayer>,
    pub config: oci_spec::image::ImageConfiguration,
    pub meta: ImageMeta,
    known: Vec<LayerDigest>,
    fetch: FetchStats,
    layers_built: usize,
}

/// Every layer of `plan`'s image in the cache (fetched and written as needed), and its identity.
pub async fn assemble(
    cache: &Cache,
    profile: &Profile,
    recipe: &Recipe,
    plan: &Plan,
    report: &dyn Reporter,
) -> Result<Assembled> {
    layers(cache, plan, prepare(cache, profile, recipe, plan)?, report).await
}

/// What names an image before any layer is written: the layers' keys and those the cache has.
struct Prepared {
    keys: Vec<String>,
    digests: Vec<Option<LayerDigest>>,
    config_layer: LayerDigest,
    meta: ImageMeta,
    repository: String,
    kernel_tag: String,
    lock: super::Lock,
}

fn prepare(cache: &Cache, profile: &Profile, recipe: &Recipe, plan: &Plan) -> Result<Prepared> {
    let keys: Vec<String> = plan.layers.iter().map(|l| l.key(&plan.fs)).collect();
    let digests = keys.iter().map(|k| cached_layer(cache, k)).collect();
    let lock = plan.lock();
    let config_layer = config_layer(cache, profile, recipe, plan, &lock)?;
    let meta = image_meta(recipe, plan, &lock);
    let (repository, kernel_tag) = names(recipe, plan);
    Ok(Prepared { keys, digests, config_layer, meta, repository, kernel_tag, lock })
}

async fn layers(cache: &Cache, plan: &Plan, prepared: Prepared, report: &dyn Reporter) -> Result<Assembled> {
    let Prepared { keys, mut digests, config_layer, meta, repository, kernel_tag, .. } = prepared;
    let layers_dir = cache.dir("layers")?;
    // A cached layer that no longer hashes to its name is dropped and built again.
    for (slot, layer) in digests.iter_mut().zip(&plan.layers) {
        if let Some(d) = slot {
            if !cache.check_blob(hex_of(&d.diff_id))? {
                report.warn(format!("cached layer {} ({}) was corrupt; building it again", layer.name, d.diff_id));
                *slot = None;
            }
        }
    }

    let missing: Vec<(usize, &PlannedLayer)> =
        plan.layers.iter().enumerate().filter(|(i, _)| digests[*i].is_none()).collect();
    let needed: Vec<repo::Package> = missing.iter().flat_map(|(_, l)| l.packages.iter().cloned()).collect();
    let fetch = repo::fetch_packages(cache, &needed, report).await?;

    // No more layer writers than cores: each holds an xz dictionary (8 MiB, dpkg's default) and
    // 3.5 MiB of buffers for CPU-bound work, so more only add memory (five held 42 MB of
    // dictionaries). `buffered` spawns a task when a slot frees; futures collected first as in
    // `repo::fetch_packages` (rust-lang/rust#102211).
    let writers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, missing.len().max(1));
    let tasks: Vec<_> = missing
        .iter()
        .map(|(i, layer)| {
            let (i, cache, layer, rules) = (*i, cache.clone(), (*layer).clone(), plan.fs.clone());
            async move { (i, tokio::task::spawn_blocking(move || write_layer(&cache, &layer, rules)).await) }
        })
        .collect();
    let layers_built = tasks.len();
    let mut tasks = futures_util::stream::iter(tasks).buffered(writers);
    while let Some((i, task)) = tasks.next().await {
        let digest = task.map_err(|e| ImageError::Task(e.to_string()))??;
        save_layer_meta(&layers_dir, &keys[i], &digest)?;
        report
            .done(&format!("layer {}", plan.layers[i].name), format!("{} ({} MB)", digest.diff_id, digest.size >> 20));
        digests[i] = Some(digest);
    }
    let known: Vec<LayerDigest> = digests.into_iter().flatten().collect();
    let Identity { id, tags, layers, config } =
        identity(cache, &known, &config_layer, &meta, &repository, &kernel_tag)?;
    Ok(Assembled { id, tags, layers, config, meta, known, fetch, layers_built })
}

fn named(plan: &Plan, digests: &[LayerDigest]) -> Vec<(String, LayerDigest)> {
    plan.layers.iter().map(|l| l.name.clone()).zip(digests.iter().cloned()).collect()
}

/// `("localhost/ckms/builder-debian-bookworm", "6.1.0-56-amd64")`; a tag may not hold '+'.
/// An image with an extra layer is tagged `<kernel>-extra-<12 hex of that layer's key>`: images
/// of one kernel with different extra packages do not take each other's tag, images with the
/// same ones are one image.
fn names(recipe: &Recipe, plan: &Plan) -> (String, String) {
    let mut tag: String = plan
        .kernel
        .release
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .collect();
    if let Some(extra) = extra_layer(plan) {
        tag = format!("{tag}-extra-{}", extra.key(&plan.fs).get(..12).unwrap_or_default());
    }
    (format!("{}-{}", recipe.repository, plan.profile), tag)
}

fn extra_layer(plan: &Plan) -> Option<&PlannedLayer> {
    plan.layers.iter().find(|l| l.name == "extra")
}

/// What names an image: its ID (the digest of its configuration) and tags, with the layers
/// and configuration they were derived from.
struct Identity {
    id: String,
    tags: Vec<String>,
    layers: Vec<ArchiveLayer>,
    config: oci_spec::image::ImageConfiguration,
}

fn identity(
    cache: &Cache,
    layers: &[LayerDigest],
    config_layer: &LayerDigest,
    meta: &ImageMeta,
    repository: &str,
    kernel_tag: &str,
) -> Result<Identity> {
    let layers = archive_layers(cache, layers, config_layer);
    let config = archive::image_config(&layers, meta)?;
    let id = archive::image_id(&config)?;
    let short = id.trim_start_matches("sha256:").get(..12).unwrap_or_default().to_string();
    let tags = vec![format!("{repository}:{kernel_tag}"), format!("{repository}:{kernel_tag}-{short}")];
    Ok(Identity { id, tags, layers, config })
}

fn archive_layers(cache: &Cache, layers: &[LayerDigest], config_layer: &LayerDigest) -> Vec<ArchiveLayer> {
    layers
        .iter()
        .chain(std::iter::once(config_layer))
        .map(|d| ArchiveLayer { path: cache.blob_path(hex_of(&d.diff_id)), digest: d.clone() })
        .collect()
}

fn hex_of(diff_id: &str) -> &str {
    diff_id.trim_start_matches("sha256:")
}

fn image_meta(recipe: &Recipe, plan: &Plan, lock: &super::Lock) -> ImageMeta {
    let lock_digest = sha256_hex(&serde_json::to_vec(lock).unwrap_or_default());
    let mut labels = BTreeMap::from([
        (label::RECIPE.to_string(), recipe.name.clone()),
        (label::PROFILE.to_string(), plan.profile.clone()),
        (label::KERNEL.to_string(), plan.kernel.release.clone()),
        (label::COMPILER.to_string(), format!("gcc-{}", plan.gcc)),
        (label::LOCK.to_string(), format!("sha256:{lock_digest}")),
    ]);
    if let Some(extra) = extra_layer(plan) {
        let names: Vec<&str> = extra.packages.iter().map(|p| p.name.as_str()).collect();
        labels.insert(label::EXTRA.to_string(), names.join(" "));
    }
    ImageMeta {
        user: format!("{}:{}", recipe.user.uid, recipe.user.gid),
        env: recipe.config.env.iter().chain(&plan.env).cloned().collect(),
        workdir: recipe.config.workdir.clone(),
        cmd: recipe.config.cmd.clone(),
        labels,
        created: created(plan),
    }
}

/// The newest index date: the image is as old as the package set it holds, which keeps the
/// configuration (and so the image ID) the same for the same packages.
fn created(plan: &Plan) -> String {
    plan.suites
        .iter()
        .filter_map(|s| rfc2822_to_rfc3339(&s.date))
        .max()
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// "Sat, 11 Jul 2026 10:16:37 UTC" -> "2026-07-11T10:16:37Z"
fn rfc2822_to_rfc3339(date: &str) -> Option<String> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let mut it = date.split_whitespace().skip(1);
    let (day, month, year, time) = (it.next()?, it.next()?, it.next()?, it.next()?);
    let month = MONTHS.iter().position(|m| *m == month)? + 1;
    let day: u32 = day.parse().ok()?;
    Some(format!("{year}-{month:02}-{day:02}T{time}Z"))
}

fn cached_layer(cache: &Cache, key: &str) -> Option<LayerDigest> {
    let path = cache.root().join("layers").join(format!("{key}.json"));
    let digest: LayerDigest = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    cache.blob_path(hex_of(&digest.diff_id)).exists().then_some(digest)
}

fn save_layer_meta(dir: &std::path::Path, key: &str, digest: &LayerDigest) -> Result<()> {
    let path = dir.join(format!("{key}.json"));
    write_atomically(&path, &serde_json::to_vec(digest).unwrap_or_default())
}

fn save_record(cache: &Cache, id: &str, record: &Record) -> Result<()> {
    let path = cache.dir("images")?.join(format!("{}.json", hex_of(id)));
    write_atomically(&path, &serde_json::to_vec_pretty(record).unwrap_or_default())
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let io = |e| ImageError::Cache(io_err(path)(e));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    std::io::Write::write_all(&mut tmp, bytes).map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Writes one layer into the cache from its packages (already fetched).
fn write_layer(cache: &Cache, layer: &PlannedLayer, rules: FsRules) -> Result<LayerDigest> {
    let skeleton = layer.name == "base";
    let usr_merge = rules.usr_merge.clone();
    let mut w = LayerWriter::new(BufWriter::with_capacity(1 << 20, cache.writer()?), rules);
    if skeleton {
        write_skeleton(&mut w, &usr_merge)?;
    }
    for p in &layer.packages {
        let deb = File::open(cache.blob_path(&p.sha256)).map_err(|e| io_err(&cache.blob_path(&p.sha256))(e))?;
        let data = data_tar(std::io::BufReader::with_capacity(1 << 20, deb), &p.name)?;
        w.add_data_tar(data, &p.name)?;
    }
    let (out, digest) = w.finish()?;
    let blob = out.into_inner().map_err(|e| io_err(cache.root())(e.into_error()))?;
    let (hex, _) = blob.commit(Some(hex_of(&digest.diff_id)))?;
    debug_assert_eq!(hex, hex_of(&digest.diff_id));
    Ok(digest)
}

/// What a Debian root file system has before any package: the merged-/usr links and the
/// directories that base-files and the installer would create.
fn write_skeleton<W: std::io::Write>(w: &mut LayerWriter<W>, usr_merge: &[String]) -> Result<()> {
    for (dir, mode) in [
        ("usr", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("var", 0o755),
        ("var/tmp", 0o1777),
        ("run", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
    ] {
        w.add_dir(dir, mode, 0, 0)?;
    }
    for d in usr_merge {
        w.add_dir(&format!("usr/{d}"), 0o755, 0, 0)?;
        w.add_symlink(d, &format!("usr/{d}"))?;
    }
    Ok(())
}

/// The last, small layer: build user, symlinks, owned directories, lock file.
fn config_layer(
    cache: &Cache,
    profile: &Profile,
    recipe: &Recipe,
    plan: &Plan,
    lock: &super::Lock,
) -> Result<LayerDigest> {
    let u = &recipe.user;
    let mut w = LayerWriter::new(cache.writer()?, plan.fs.clone());
    let passwd = format!(
        "root:x:0:0:root:/root:/bin/bash\n{}:x:{}:{}:ckms build user:{}:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        u.name, u.uid, u.gid, u.home
    );
    let group = format!("root:x:0:\n{}:x:{}:\nnogroup:x:65534:\n", u.name, u.gid);
    w.add_file("etc/passwd", passwd.as_bytes(), 0o644, 0, 0)?;
    w.add_file("etc/group", group.as_bytes(), 0o644, 0, 0)?;
    let mut owned: BTreeSet<&str> = recipe.dirs.iter().map(|d| d.path.as_str()).collect();
    owned.insert(&u.home);
    for dir in owned {
        // Parents first, root-owned; the directory itself belongs to the build user.
        let rel = dir.trim_start_matches('/');
        let mut parent = String::new();
        for part in rel.split('/').collect::<Vec<_>>().split_last().map(|(_, p)| p.to_vec()).unwrap_or_default() {
            parent = if parent.is_empty() { part.to_string() } else { format!("{parent}/{part}") };
            w.add_dir(&parent, 0o755, 0, 0)?;
        }
        w.add_dir(rel, 0o755, u64::from(u.uid), u64::from(u.gid))?;
    }
    for link in profile.symlinks(&plan.gcc) {
        w.add_symlink(link.path.trim_start_matches('/'), &link.target)?;
    }
    let lock_json = serde_json::to_vec_pretty(lock).unwrap_or_default();
    w.add_file(recipe.lock_path.trim_start_matches('/'), &lock_json, 0o644, 0, 0)?;
    let (blob, digest) = w.finish()?;
    blob.commit(Some(hex_of(&digest.diff_id)))?;
    Ok(digest)
}

/// One row of `ckms image ls`.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRow {
    /// "builder" or "verifier" (images/*.toml).
    pub recipe: String,
    pub profile: String,
    pub kernel: String,
    pub compiler: String,
    /// The packages of its extra layer (space-separated), if it has one.
    pub extra: String,
    pub reference: String,
    pub id: String,
    pub size: u64,
    pub created: i64,
}

pub async fn list(engine: &dyn Images) -> Result<Vec<ImageRow>> {
    let mut rows: Vec<ImageRow> = engine
        .list_images(label::RECIPE)
        .await?
        .into_iter()
        .map(|i| {
            let get = |k: &str| i.labels.get(k).cloned().unwrap_or_default();
            let reference = i.tags.iter().max_by_key(|t| t.len()).cloned().unwrap_or_default();
            ImageRow {
                recipe: get(label::RECIPE),
                profile: get(label::PROFILE),
                kernel: get(label::KERNEL),
                compiler: get(label::COMPILER),
                extra: get(label::EXTRA),
                reference,
                id: i.id,
                size: i.size,
                created: i.created,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        (&a.recipe, &a.profile, &a.kernel, &a.extra, b.created)
            .cmp(&(&b.recipe, &b.profile, &b.kernel, &b.extra, a.created))
    });
    Ok(rows)
}

/// Removes every ckms image whose kernel, tag or ID (prefix) is `what`.
pub async fn remove(engine: &dyn Images, what: &str) -> Result<Vec<ImageRow>> {
    let bare = |id: &str| id.trim_start_matches("sha256:").to_string();
    let matching: Vec<ImageRow> = list(engine)
        .await?
        .into_iter()
        .filter(|r| {
            r.kernel == what
                || r.reference == what
                || r.reference.ends_with(&format!(":{what}"))
                || (what.len() >= 6 && bare(&r.id).starts_with(&bare(what)))
        })
        .collect();
    if matching.is_empty() {
        return Err(ImageError::NotFound(what.to_string()));
    }
    for r in &matching {
        engine.remove_image(&r.id).await?;
    }
    Ok(matching)
}

/// Removes images superseded by a newer one of the same recipe, profile, kernel and extra
/// packages (all of them with `all`), then the cached packages and layers that only removed
/// images used.
pub async fn prune(engine: &dyn Images, cache: &Cache, all: bool) -> Result<(Vec<ImageRow>, usize)> {
    let rows = list(engine).await?;
    let mut seen = BTreeSet::new();
    let (mut keep, mut drop) = (Vec::new(), Vec::new());
    for r in rows {
        // `list` sorts newest first within a (recipe, profile, kernel, extra): a kernel's
        // verifier image does not supersede its builder image, nor one module's image another's.
        if !all && seen.insert((r.recipe.clone(), r.profile.clone(), r.kernel.clone(), r.extra.clone())) {
            keep.push(r);
        } else {
            drop.push(r);
        }
    }
    for r in &drop {
        engine.remove_image(&r.id).await?;
    }
    let records = |rows: &[ImageRow]| -> BTreeSet<String> {
        rows.iter()
            .filter_map(|r| {
                let path = cache.root().join("images").join(format!("{}.json", hex_of(&r.id)));
                serde_json::from_slice::<Record>(&std::fs::read(path).ok()?).ok()
            })
            .flat_map(|rec| {
                let debs = rec.lock.layers.into_iter().flat_map(|l| l.packages).map(|p| p.sha256);
                debs.chain(rec.layers.iter().map(|d| hex_of(d).to_string()).collect::<Vec<_>>()).collect::<Vec<_>>()
            })
            .collect()
    };
    let still_used = records(&keep);
    let mut freed = 0;
    for blob in records(&drop).difference(&still_used) {
        if std::fs::remove_file(cache.blob_path(blob)).is_ok() {
            freed += 1;
        }
    }
    for r in &drop {
        let _ = std::fs::remove_file(cache.root().join("images").join(format!("{}.json", hex_of(&r.id))));
    }
    Ok((drop, freed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::{FakeEngine, FakeImage};
    use crate::image::{Lock, LockedLayer, LockedPackage};

    fn image(id: &str, profile: &str, kernel: &str, created: i64) -> FakeImage {
        recipe_image("builder", id, profile, kernel, created)
    }

    fn recipe_image(recipe: &str, id: &str, profile: &str, kernel: &str, created: i64) -> FakeImage {
        FakeImage {
            id: format!("sha256:{id}"),
            tags: vec![format!("localhost/ckms/{recipe}-{profile}:{kernel}-{id}")],
            labels: [(label::RECIPE, recipe), (label::PROFILE, profile), (label::KERNEL, kernel)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created,
            ..FakeImage::default()
        }
    }

    fn record(cache: &Cache, id: &str, deb: &str, layer: &str) {
        let package = LockedPackage {
            name: "p".into(),
            version: "1".into(),
            architecture: "amd64".into(),
            filename: "pool/p.deb".into(),
            size: 1,
            sha256: deb.into(),
        };
        let lock = Lock {
            recipe: "builder".into(),
            profile: "x".into(),
            kernel: "k".into(),
            compiler: "gcc-12".into(),
            suites: vec![],
            layers: vec![LockedLayer { name: "base".into(), packages: vec![package] }],
        };
        save_record(cache, &format!("sha256:{id}"), &Record { lock, layers: vec![format!("sha256:{layer}")] }).unwrap();
        for blob in [deb, layer] {
            std::fs::write(cache.blob_path(blob), b"x").unwrap();
        }
    }

    #[tokio::test]
    async fn prune_keeps_the_newest_per_kernel_and_frees_what_only_old_ones_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let engine = FakeEngine::new();
        engine.add_image(image("old", "debian-bookworm", "6.1.0-56-amd64", 100));
        engine.add_image(image("new", "debian-bookworm", "6.1.0-56-amd64", 200));
        engine.add_image(image("other", "debian-trixie", "6.12.117+deb13-amd64", 50));
        engine.add_image(recipe_image("verifier", "vm", "debian-bookworm", "6.1.0-56-amd64", 300));
        let mut extra = image("extra", "debian-bookworm", "6.1.0-56-amd64", 10);
        extra.labels.insert(label::EXTRA.into(), "bzip2".into());
        engine.add_image(extra);
        record(&cache, "old", "deb1", "layerold");
        record(&cache, "new", "deb1", "layernew");

        let (removed, freed) = prune(&engine, &cache, false).await.unwrap();
        assert_eq!(removed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["sha256:old"]);
        assert_eq!(freed, 1, "only the old image's own layer goes");
        assert!(cache.blob_path("deb1").exists(), "still used by the newer image");
        assert!(!cache.blob_path("layerold").exists());
        assert_eq!(
            engine.images().len(),
            4,
            "the kernel's verifier image supersedes no builder image, nor its image without extra packages one with"
        );

        let (removed, _) = prune(&engine, &cache, true).await.unwrap();
        assert_eq!(removed.len(), 4, "--all removes every ckms image");
        assert!(!cache.blob_path("deb1").exists());
    }

    #[tokio::test]
    async fn remove_by_kernel_and_unknown_names() {
        let engine = FakeEngine::new();
        engine.add_image(image("abcdef123456", "debian-sid", "7.2.13+deb14-amd64", 1));
        assert!(matches!(remove(&engine, "6.1.0-1-amd64").await, Err(ImageError::NotFound(_))));
        let gone = remove(&engine, "7.2.13+deb14-amd64").await.unwrap();
        assert_eq!(gone.len(), 1);
        assert!(engine.images().is_empty());
    }

    #[test]
    fn index_dates_become_rfc3339() {
        assert_eq!(rfc2822_to_rfc3339("Sat, 11 Jul 2026 10:16:37 UTC").as_deref(), Some("2026-07-11T10:16:37Z"));
        assert_eq!(rfc2822_to_rfc3339("Fri, 3 Oct 2026 08:08:01 UTC").as_deref(), Some("2026-10-03T08:08:01Z"));
        assert_eq!(rfc2822_to_rfc3339("garbage"), None);
    }
}
