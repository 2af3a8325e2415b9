//! The reference side of the ckms-vs-dkms comparison: Debian's real `dkms` building a real
//! `*-dkms` package's source for a kernel, inside that kernel's builder image, never on the host.
//!
//! The image is ckms's builder image for the kernel (same base, toolchain, tools and kernel
//! layers, so the same headers and compiler as `ckms build` uses) plus an "extra" layer holding
//! `dkms` and its dependency closure from the same profile's index (`dkms` 3.0.10 for bookworm
//! kernels, trixie's own `dkms` for trixie kernels). It is tagged under its own repository
//! (`localhost/ckms/dkms-reference-<profile>`), so the builder images' tags are left alone.
//!
//! Inside, dkms runs as the image's non-root build user with its trees in the writable build
//! volume: `dkms build -m M -v V -k K --sourcetree /build/src --dkmstree /build/tree`. dkms
//! 3.x allows `build` without root as long as the dkms tree is writable (only `install`,
//! `uninstall`, `autoinstall` and `match` call check_root).
//!
//! Included with `#[path = "support/dkms_reference.rs"]` next to `mod support` and
//! `dkms_packages` (tests/support/dkms_packages.rs).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use ckms::engine::{DockerApi, Engine};
use ckms::report::Silent;

use crate::dkms_packages::{self, DkmsSource};

/// The real Debian packages of the comparison (issue: ckms vs real dkms).
pub const PACKAGES: [&str; 6] =
    ["v4l2loopback-dkms", "xtables-addons-dkms", "dahdi-dkms", "jool-dkms", "gost-crypto-dkms", "digimend-dkms"];

/// The bookworm kernel of the comparison; the trixie one is the newest `6.12.*+deb13-amd64`
/// offered (see [`trixie_kernel`]).
pub const BOOKWORM_KERNEL: &str = "6.1.0-56-amd64";

/// Repository the reference images are tagged under (`<this>-<profile>:<kernel>`).
pub const REFERENCE_REPOSITORY: &str = "localhost/ckms/dkms-reference";

/// How long one dkms build may take before it counts as hung.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Packages added to the builder image for the reference builds, besides those the image has.
/// Only `dkms` (and what it depends on): none of the six packages needed more (their make.logs
/// show no missing tool or header; see docs/dkms-comparison.md).
pub fn reference_packages(_package: &str) -> Vec<String> {
    vec!["dkms".to_string()]
}

/// The newest `6.12.<n>+deb13-amd64` kernel the trixie profile offers.
pub async fn trixie_kernel(ctx: &ckms::context::Context) -> String {
    let p = ctx.catalog.profile("debian-trixie").expect("the debian-trixie profile");
    let index = ctx.index(p).await.unwrap_or_else(|e| panic!("index of debian-trixie: {e}"));
    let re = regex::Regex::new(r"^6\.12\.(\d+)\+deb13-amd64$").unwrap();
    ckms::kernel::list(p, &index)
        .into_iter()
        .filter_map(|k| Some((re.captures(&k.release)?[1].parse::<u32>().ok()?, k.release)))
        .max()
        .map(|(_, release)| release)
        .expect("debian-trixie offers a 6.12.*+deb13-amd64 kernel")
}

/// The reference image for `kernel`: the builder image plus `packages` in an extra layer.
#[derive(Debug, Clone)]
pub struct RefImage {
    /// `localhost/ckms/dkms-reference-<profile>:<kernel>-<id12>`
    pub reference: String,
    pub profile: String,
    /// The compiler the kernel was built with (e.g. `gcc-12`).
    pub compiler: String,
    /// Version of the `dkms` package in the image.
    pub dkms_version: String,
    /// Every package of the extra layer as `name version`.
    pub extra_layer: Vec<String>,
}

/// Assembles (or finds up to date) the reference image for `kernel` with `packages` added.
pub async fn reference_image(
    ctx: &ckms::context::Context,
    engine: &dyn Engine,
    kernel: &str,
    packages: &[String],
) -> RefImage {
    let (profile, index, k) = ctx.find_kernel(kernel, None).await.unwrap_or_else(|e| panic!("kernel {kernel}: {e}"));
    let mut recipe = ctx.catalog.recipe("builder").expect("the builder recipe").clone();
    recipe.repository = REFERENCE_REPOSITORY.to_string();
    recipe.name = "dkms-reference".to_string();
    let plan = ckms::image::plan(ckms::image::Sources::native(profile, &index), &recipe, &k, packages)
        .unwrap_or_else(|e| panic!("planning the reference image for {kernel}: {e}"));
    let extra: Vec<&ckms::repo::Package> =
        plan.layers.iter().filter(|l| l.name == "extra").flat_map(|l| l.packages.iter()).collect();
    let dkms_version = extra
        .iter()
        .find(|p| p.name == "dkms")
        .map(|p| p.version.clone())
        .unwrap_or_else(|| panic!("no dkms in the extra layer of {kernel}'s reference image"));
    let built = ckms::image::build(&ctx.cache, engine, profile, &recipe, &plan, false, &Silent)
        .await
        .unwrap_or_else(|e| panic!("building the reference image for {kernel}: {e}"));
    RefImage {
        reference: built.reference,
        profile: profile.name.clone(),
        compiler: format!("gcc-{}", plan.gcc),
        dkms_version,
        extra_layer: extra.iter().map(|p| format!("{} {}", p.name, p.version)).collect(),
    }
}

/// What real dkms did for one (kernel, package) pair.
#[derive(Debug, Clone)]
pub struct RefResult {
    pub kernel: String,
    pub package: String,
    pub package_version: String,
    pub module: String,
    pub version: String,
    pub image: String,
    pub dkms_version: String,
    /// dkms's exit code (0 built; 10 make failed; 7 a BUILT_MODULE_NAME missing; 77 skipped by
    /// BUILD_EXCLUSIVE_*), or -1 if the container did not report one.
    pub exit_code: i64,
    /// Module files under `<dkmstree>/<m>/<v>/<kernel>/x86_64/module/` (`.ko`, `.ko.xz`, ...).
    pub kos: BTreeSet<String>,
    /// Other files dkms left there (dkms 3.2 keeps a copy of `Module.symvers`).
    pub other_files: BTreeSet<String>,
    /// The make.log dkms kept (`<kernel>/x86_64/log/make.log` after a build, `build/make.log`
    /// after a failed one), empty if make never ran.
    pub make_log: String,
    /// dkms's own output (stdout and stderr).
    pub dkms_log: String,
    /// Wall time of the `dkms build` command, measured inside the container.
    pub dkms_secs: f64,
    /// Wall time of the whole container run seen from the host: create, upload the sources,
    /// start, dkms, wait, copy the results back, remove.
    pub container_secs: f64,
}

impl RefResult {
    /// Module names without `.ko` and compression suffix.
    pub fn modules(&self) -> BTreeSet<String> {
        self.kos.iter().map(|k| module_stem(k).to_string()).collect()
    }
}

/// `foo.ko`, `foo.ko.gz`, `foo.ko.xz`, `foo.ko.zst`
pub fn is_module_file(name: &str) -> bool {
    [".ko", ".ko.gz", ".ko.xz", ".ko.zst"].iter().any(|s| name.ends_with(s))
}

/// `foo.ko.xz` -> `foo`
pub fn module_stem(file: &str) -> &str {
    file.find(".ko").map(|i| &file[..i]).unwrap_or(file)
}

/// The script run in the container: `dkms build` timed from inside, then its results gathered
/// in /build/out. Arguments: module, version, kernel.
///
/// `--installtree /build/install` stands in for the installed kernel, which the image does not
/// hold (it has the headers, not `linux-image-*`): dkms 3.2 decides the compression of what it
/// builds by looking for `*.ko.{gz,xz,zst}` under `<installtree>/<kernel>/`, so one empty marker
/// with the suffix the kernel's own modules have (its CONFIG_MODULE_COMPRESS_*) makes it
/// compress as on a system running that kernel. `<installtree>/<kernel>/build` points at the
/// headers, and `--kernelsourcedir` keeps `$kernel_source_dir` at the usual
/// `/lib/modules/<kernel>/build`. dkms 3.0 reads `/lib/modules/<kernel>/modules.dep` instead,
/// which cannot be provided; its kernel here (6.1.0-56) has uncompressed modules anyway.
const SCRIPT: &str = r#"set -u
m=$1 v=$2 k=$3
out=/build/out
mkdir -p "$out" /build/tree "/build/install/$k/kernel"
ln -s "/lib/modules/$k/build" "/build/install/$k/build"
cfg="/lib/modules/$k/build/.config"
for c in GZIP:gz XZ:xz ZSTD:zst; do
    grep -q "^CONFIG_MODULE_COMPRESS_${c%%:*}=y" "$cfg" && : >"/build/install/$k/kernel/ckms-reference-marker.ko.${c#*:}"
done
t0=$(date +%s.%N)
dkms build -m "$m" -v "$v" -k "$k" --sourcetree /build/src --dkmstree /build/tree --installtree /build/install \
    --kernelsourcedir "/lib/modules/$k/build" >"$out/dkms.log" 2>&1
rc=$?
t1=$(date +%s.%N)
echo "$rc" >"$out/exit-code"
echo "$t0 $t1" >"$out/times"
base="/build/tree/$m/$v/$k/$(uname -m)"
if [ -f "$base/log/make.log" ]; then cp "$base/log/make.log" "$out/make.log"
elif [ -f "/build/tree/$m/$v/build/make.log" ]; then cp "/build/tree/$m/$v/build/make.log" "$out/make.log"
fi
[ -d "$base/module" ] && ls -1 "$base/module" >"$out/modules"
cat "$out/dkms.log"
exit 0
"#;

/// Real dkms building `package` (a `*-dkms` package name) for `kernel`: the package of the suite
/// that ships the kernel, in the kernel's reference image (assembled if needed). The source
/// is unpacked into a temporary directory; use [`reference_build_source`] to keep it (e.g. to
/// build the same tree with ckms).
pub async fn reference_build(engine_host: &str, kernel: &str, package: &str) -> RefResult {
    let ctx = dkms_packages::context();
    let profile = dkms_packages::profile_of(&ctx, kernel).await;
    let index = dkms_packages::index(&ctx, &profile).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let source = dkms_packages::fetch_source(&ctx, &index, package, dir.path()).await;
    reference_build_source(engine_host, kernel, &source).await
}

/// Real dkms building `source` for `kernel` in the kernel's reference image (assembled if
/// needed).
pub async fn reference_build_source(engine_host: &str, kernel: &str, source: &DkmsSource) -> RefResult {
    let ctx = dkms_packages::context();
    let engine = DockerApi::connect(engine_host, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("engine {engine_host} does not answer: {e}"));
    let image = reference_image(&ctx, &engine, kernel, &reference_packages(&source.package)).await;
    let recipe = ctx.catalog.recipe("builder").expect("the builder recipe");
    run_dkms(&engine, recipe, &image, kernel, source).await
}

/// One `dkms build` in `image` (see [`reference_build`]).
pub async fn run_dkms(
    engine: &dyn Engine,
    recipe: &ckms::profile::Recipe,
    image: &RefImage,
    kernel: &str,
    source: &DkmsSource,
) -> RefResult {
    let input = input_tar(source).unwrap_or_else(|e| panic!("packing {}: {e}", source.dir.display()));
    let cmd = vec![
        "bash".into(),
        "-c".into(),
        SCRIPT.into(),
        "ckms-dkms-reference".into(),
        source.module.clone(),
        source.version.clone(),
        kernel.into(),
    ];
    let mut spec = ckms::image::run_spec(recipe, &image.reference, cmd, Some(input.into()), BUILD_TIMEOUT);
    spec.outputs = vec!["/build/out".into()];
    let started = Instant::now();
    let outcome =
        engine.run(&spec).await.unwrap_or_else(|e| panic!("running dkms for {} on {kernel}: {e}", source.package));
    let container_secs = started.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&outcome.log).into_owned();
    assert!(!outcome.timed_out, "dkms for {} on {kernel} timed out after {BUILD_TIMEOUT:?}:\n{log}", source.package);
    assert_eq!(outcome.exit_code, 0, "the reference script itself failed:\n{log}");
    let files =
        outcome.outputs.iter().find(|(p, _)| p == "/build/out").map(|(_, tar)| read_files(tar)).unwrap_or_default();
    let text = |name: &str| files.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone()).unwrap_or_default();
    let listed: Vec<String> = text("modules").lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
    let times: Vec<f64> = text("times").split_whitespace().filter_map(|t| t.parse().ok()).collect();
    RefResult {
        kernel: kernel.to_string(),
        package: source.package.clone(),
        package_version: source.package_version.clone(),
        module: source.module.clone(),
        version: source.version.clone(),
        image: image.reference.clone(),
        dkms_version: image.dkms_version.clone(),
        exit_code: text("exit-code").trim().parse().unwrap_or(-1),
        kos: listed.iter().filter(|f| is_module_file(f)).cloned().collect(),
        other_files: listed.iter().filter(|f| !is_module_file(f)).cloned().collect(),
        make_log: text("make.log"),
        dkms_log: text("dkms.log"),
        dkms_secs: if times.len() == 2 { times[1] - times[0] } else { f64::NAN },
        container_secs,
    }
}

/// The source tree as `src/<module>-<version>/...`, symlinks kept as symlinks.
fn input_tar(source: &DkmsSource) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    let mut src = tar::Header::new_gnu();
    src.set_entry_type(tar::EntryType::Directory);
    src.set_mode(0o755);
    src.set_size(0);
    b.append_data(&mut src, "src", std::io::empty())?;
    b.append_dir_all(Path::new("src").join(format!("{}-{}", source.module, source.version)), &source.dir)?;
    b.into_inner()
}

/// (relative path, text) of every regular file in a tar.
fn read_files(tar: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().expect("the results tar") {
        let mut entry = entry.expect("a results tar entry");
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().expect("an entry path").to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("reading a results tar entry");
        out.push((name, String::from_utf8_lossy(&bytes).into_owned()));
    }
    out
}
