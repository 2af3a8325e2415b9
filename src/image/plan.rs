//! Which package goes into which layer, and the lock file that records it.
//!
//! Layers are chosen so that images share as much as possible: `base` depends only on the
//! profile, `toolchain` only on the kernel's compiler, `kernel` holds one kernel's own packages.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

use super::layer::FsRules;
use super::ImageError;
use crate::cache::sha256_hex;
use crate::kernel::Kernel;
use crate::profile::{Profile, Recipe};
use crate::repo::{Index, Package, SuiteInfo};

/// Bumped whenever the way layers are written changes, so that cached layers are rebuilt.
const LAYER_FORMAT: u32 = 2;

/// Where an image's packages come from: the kernel's profile and index and, for a kernel of
/// another architecture than the build machine's, the build machine's.
#[derive(Clone, Copy)]
pub struct Sources<'a> {
    pub profile: &'a Profile,
    pub index: &'a Index,
    pub cross: Option<Cross<'a>>,
}

/// A cross build: the image runs the build machine's programs (base, kbuild, a cross compiler)
/// on the kernel's headers.
#[derive(Clone, Copy)]
pub struct Cross<'a> {
    pub build: &'a Profile,
    pub index: &'a Index,
    /// make's `ARCH=` for the kernel's architecture.
    pub kernel_arch: &'a str,
}

impl<'a> Sources<'a> {
    pub fn native(profile: &'a Profile, index: &'a Index) -> Sources<'a> {
        Sources { profile, index, cross: None }
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub recipe: String,
    pub profile: String,
    pub kernel: Kernel,
    /// The compiler version, e.g. "12".
    pub gcc: String,
    /// The image's environment beyond the recipe's: `ARCH` and `CROSS_COMPILE` of a cross build.
    pub env: Vec<String>,
    /// Non-empty layers, bottom first.
    pub layers: Vec<PlannedLayer>,
    pub suites: Vec<SuiteInfo>,
    /// Merged /usr and relocations: how package paths land in the layers.
    pub fs: FsRules,
}

#[derive(Debug, Clone)]
pub struct PlannedLayer {
    pub name: String,
    pub packages: Vec<Package>,
}

/// What the image's lock file says: every package by version and digest, and the index
/// it came from. Mirror URLs are left out so that the same packages give the same image
/// whichever mirror served them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Lock {
    pub recipe: String,
    pub profile: String,
    pub kernel: String,
    pub compiler: String,
    pub suites: Vec<LockedSuite>,
    pub layers: Vec<LockedLayer>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockedSuite {
    pub suite: String,
    pub date: String,
    pub inrelease_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockedLayer {
    pub name: String,
    pub packages: Vec<LockedPackage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
}

/// What the kernel brings into an image: the packages to resolve with the build machine's and
/// those of the kernel's own architecture, taken as they are (a cross build's headers).
struct KernelSide {
    roots: Vec<String>,
    own: Vec<Package>,
    /// A cross build's compiler package and version.
    cross: Option<(String, String)>,
}

/// A cross build's kernel side: the headers from the kernel's architecture; kbuild (whose
/// programs run here) and the cross compiler of the kernel's gcc version from the build machine's.
fn cross_side(sources: &Sources, cross: &Cross, kernel: &Kernel) -> Result<KernelSide, ImageError> {
    let target = sources.profile;
    let closure = sources
        .index
        .resolve(std::slice::from_ref(&kernel.headers_package), &target.packages.exclude)
        .map_err(|source| ImageError::Resolve { kernel: kernel.release.clone(), source })?;
    let no_compiler = || ImageError::NoCompiler { kernel: kernel.release.clone(), profile: target.name.clone() };
    let gcc = closure.iter().find_map(|p| target.compiler_of(&p.name)).ok_or_else(no_compiler)?.to_string();
    let compiler = target.cross_compiler(&gcc).ok_or_else(no_compiler)?;
    let mut roots = vec![compiler.clone()];
    let mut own = Vec::new();
    for p in closure.into_iter().filter(|p| target.is_kernel_package(&p.name)) {
        if !target.is_build_machine_package(&p.name) {
            own.push(p);
            continue;
        }
        // Same source, same version on both architectures, or the tools do not fit the headers.
        let here = cross.index.candidate(&p.name).map(|c| c.version().to_string());
        if here.as_deref() != Some(p.version.as_str()) {
            let found = here.map_or("has none".to_string(), |v| format!("is {v}"));
            return Err(ImageError::CrossMismatch {
                kernel: kernel.release.clone(),
                package: p.name.clone(),
                detail: format!("is version {}, the build machine's ({}) {found}", p.version, cross.build.arch),
            });
        }
        roots.push(p.name);
    }
    Ok(KernelSide { roots, own, cross: Some((compiler, gcc)) })
}

/// A cross build's packages of the kernel's architecture beyond its headers, which the cross
/// compiler builds userland programs with as the kernel's own machine would: the profile's
/// `cross_target` (shared by the profile's cross images) and, apart, the libraries and headers
/// among the module's `extra` packages; of each closure only what is Multi-Arch: same (what
/// runs stays the build machine's). An extra package the architecture lacks is left out.
fn target_side(sources: &Sources, kernel: &Kernel, extra: &[String]) -> Result<[Vec<Package>; 2], ImageError> {
    let (target, index) = (sources.profile, sources.index);
    let co_installable = |roots: &[String]| -> Result<Vec<Package>, ImageError> {
        let closure = index
            .resolve(roots, &target.packages.exclude)
            .map_err(|source| ImageError::Resolve { kernel: kernel.release.clone(), source })?;
        Ok(closure.into_iter().filter(|p| p.multi_arch_same).collect())
    };
    let shared = co_installable(&target.packages.cross_target)?;
    let roots: Vec<String> = extra.iter().filter(|e| index.candidate(e).is_some()).cloned().collect();
    let more = if roots.is_empty() { Vec::new() } else { co_installable(&roots)? };
    let in_shared: BTreeSet<&str> = shared.iter().map(|p| p.name.as_str()).collect();
    let more = more.into_iter().filter(|p| !in_shared.contains(p.name.as_str())).collect();
    Ok([shared, more])
}

pub fn plan(sources: Sources, recipe: &Recipe, kernel: &Kernel, extra: &[String]) -> Result<Plan, ImageError> {
    let profile = sources.profile;
    let (host, index) = sources.cross.map_or((profile, sources.index), |c| (c.build, c.index));
    let exclude = &host.packages.exclude;
    let resolve = |roots: &[String]| {
        index.resolve(roots, exclude).map_err(|source| ImageError::Resolve { kernel: kernel.release.clone(), source })
    };
    let side = match &sources.cross {
        None => KernelSide { roots: vec![kernel.headers_package.clone()], own: Vec::new(), cross: None },
        Some(cross) => cross_side(&sources, cross, kernel)?,
    };
    let base = resolve(&host.packages.base)?;
    let mut roots = host.packages.base.clone();
    roots.extend(side.roots.iter().cloned());
    let mut with_kernel = resolve(&roots)?;
    roots.extend(extra.iter().cloned());
    roots.extend(recipe.packages.iter().cloned());
    let mut full = if extra.is_empty() && recipe.packages.is_empty() { with_kernel.clone() } else { resolve(&roots)? };
    with_kernel.extend(side.own.iter().cloned());
    full.extend(side.own.iter().cloned());
    let [target, target_extra] = match sources.cross {
        Some(_) => target_side(&sources, kernel, extra)?,
        None => Default::default(),
    };
    full.extend(target.iter().chain(&target_extra).cloned());
    full.sort_by(|a, b| a.name.cmp(&b.name));
    // The recipe's own packages on top of base (the verifier's qemu): resolved without the
    // kernel's, so that the layer holds everything they need beyond base.
    let recipe_closure = if recipe.packages.is_empty() {
        Vec::new()
    } else {
        let mut r = host.packages.base.clone();
        r.extend(recipe.packages.iter().cloned());
        resolve(&r)?
    };

    let native_compiler =
        || with_kernel.iter().find_map(|p| Some((p.name.clone(), profile.compiler_of(&p.name)?.to_string())));
    let (compiler, gcc) = side
        .cross
        .clone()
        .or_else(native_compiler)
        .ok_or_else(|| ImageError::NoCompiler { kernel: kernel.release.clone(), profile: profile.name.clone() })?;
    // The compiler's own closure, apart from what else the kernel's packages need (pahole,
    // libelf...): kernels built with the same compiler share it even when their tools differ.
    let mut compiler_roots = host.packages.base.clone();
    compiler_roots.push(compiler);
    let with_compiler = resolve(&compiler_roots)?;

    // Packages by name and architecture: a cross image holds some names of both.
    fn key(p: &Package) -> (&str, &str) {
        (&p.name, &p.architecture)
    }
    fn keys(ps: &[Package]) -> BTreeSet<(&str, &str)> {
        ps.iter().map(key).collect()
    }
    let (in_base, in_compiler, in_with_kernel) = (keys(&base), keys(&with_compiler), keys(&with_kernel));
    let (in_target, in_recipe) = (keys(&target), keys(&recipe_closure));
    let select = |name: &str| -> Result<Vec<Package>, ImageError> {
        let pick: Box<dyn Fn(&Package) -> bool> = match name {
            "base" => Box::new(|p| in_base.contains(&key(p))),
            "toolchain" => Box::new(|p| in_compiler.contains(&key(p)) && !in_base.contains(&key(p))),
            "tools" => Box::new(|p| {
                in_with_kernel.contains(&key(p))
                    && !in_compiler.contains(&key(p))
                    && !profile.is_kernel_package(&p.name)
            }),
            "kernel" => Box::new(|p| {
                in_with_kernel.contains(&key(p)) && !in_compiler.contains(&key(p)) && profile.is_kernel_package(&p.name)
            }),
            "target" => Box::new(|p| in_target.contains(&key(p))),
            "extra" => Box::new(|p| {
                !in_with_kernel.contains(&key(p)) && !in_target.contains(&key(p)) && !in_recipe.contains(&key(p))
            }),
            "packages" => Box::new(|p| in_recipe.contains(&key(p)) && !in_base.contains(&key(p))),
            other => return Err(ImageError::UnknownLayer { recipe: recipe.name.clone(), layer: other.to_string() }),
        };
        Ok(full.iter().filter(|p| pick(p)).cloned().collect())
    };
    let mut layers = Vec::new();
    for name in &recipe.layers {
        let packages = select(name)?;
        if !packages.is_empty() {
            layers.push(PlannedLayer { name: name.clone(), packages });
        }
    }
    let env = match sources.cross {
        None => Vec::new(),
        Some(c) => vec![format!("ARCH={}", c.kernel_arch), format!("CROSS_COMPILE={}-", profile.triplet)],
    };
    Ok(Plan {
        recipe: recipe.name.clone(),
        profile: profile.name.clone(),
        kernel: kernel.clone(),
        gcc,
        env,
        layers,
        suites: index.suites().to_vec(),
        fs: FsRules::from_profile(profile),
    })
}

impl Plan {
    pub fn lock(&self) -> Lock {
        Lock {
            recipe: self.recipe.clone(),
            profile: self.profile.clone(),
            kernel: self.kernel.release.clone(),
            compiler: format!("gcc-{}", self.gcc),
            suites: self
                .suites
                .iter()
                .map(|s| LockedSuite {
                    suite: s.suite.clone(),
                    date: s.date.clone(),
                    inrelease_sha256: s.inrelease_sha256.clone(),
                })
                .collect(),
            layers: self
                .layers
                .iter()
                .map(|l| LockedLayer {
                    name: l.name.clone(),
                    packages: l.packages.iter().map(LockedPackage::from).collect(),
                })
                .collect(),
        }
    }

    /// Every package of every layer.
    pub fn packages(&self) -> impl Iterator<Item = &Package> {
        self.layers.iter().flat_map(|l| l.packages.iter())
    }
}

impl PlannedLayer {
    /// A digest of everything that determines this layer's bytes: the cache key for it.
    pub fn key(&self, fs: &FsRules) -> String {
        let packages: Vec<(&str, &str)> = self.packages.iter().map(|p| (p.name.as_str(), p.sha256.as_str())).collect();
        let ident = serde_json::json!({
            "format": LAYER_FORMAT,
            "layer": self.name,
            "fs": fs,
            "packages": packages,
        });
        sha256_hex(ident.to_string().as_bytes())
    }
}

impl From<&Package> for LockedPackage {
    fn from(p: &Package) -> Self {
        LockedPackage {
            name: p.name.clone(),
            version: p.version.clone(),
            architecture: p.architecture.clone(),
            filename: p.filename.clone(),
            size: p.size,
            sha256: p.sha256.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Catalog;

    fn pkg(name: &str, depends: &str) -> String {
        let dep = if depends.is_empty() { String::new() } else { format!("Depends: {depends}\n") };
        format!(
            "Package: {name}\nVersion: 1\nArchitecture: amd64\n{dep}Filename: pool/{name}.deb\nSize: 1\nSHA256: {}\n\n",
            sha256_hex(name.as_bytes())
        )
    }

    /// The profile's base packages, each depending on libc6, and libc6.
    fn base_text() -> String {
        let catalog = Catalog::load(&[]).unwrap();
        let base = &catalog.profile("debian-bookworm").unwrap().packages.base;
        let mut text: String = base.iter().map(|b| pkg(b, "libc6")).collect();
        text += &pkg("libc6", "");
        text
    }

    fn fixture(headers_deps: &str) -> (Profile, Recipe, Index, Kernel) {
        let mut text = base_text();
        text += &pkg("linux-headers-6.1.0-56-amd64", headers_deps);
        text += &pkg("linux-headers-6.1.0-56-common", "");
        text += &pkg("linux-compiler-gcc-12-x86", "gcc-12");
        text += &pkg("linux-kbuild-6.1", "libelf1");
        text += &pkg("libelf1", "libc6");
        text += &pkg("gcc-12", "cpp-12, libc6");
        text += &pkg("cpp-12", "");
        text += &pkg("pkg-config", "libc6");
        text += &pkg("linux-image-6.1.0-56-amd64", "");
        let index = Index::parse(&text, "http://mirror.test/debian", "bookworm").unwrap();
        let catalog = Catalog::load(&[]).unwrap();
        let profile = catalog.profile("debian-bookworm").unwrap().clone();
        let recipe = catalog.recipe("builder").unwrap().clone();
        let kernel = crate::kernel::find(&profile, &index, "6.1.0-56-amd64").unwrap();
        (profile, recipe, index, kernel)
    }

    fn layer_names(plan: &Plan, layer: &str) -> Vec<String> {
        plan.layers
            .iter()
            .find(|l| l.name == layer)
            .map(|l| l.packages.iter().map(|p| p.name.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn packages_split_into_base_toolchain_kernel() {
        let (p, r, idx, k) =
            fixture("linux-headers-6.1.0-56-common, linux-compiler-gcc-12-x86, linux-image-6.1.0-56-amd64");
        let plan = plan(Sources::native(&p, &idx), &r, &k, &[]).unwrap();
        assert_eq!(plan.gcc, "12");
        assert!(layer_names(&plan, "base").contains(&"libc6".to_string()));
        assert_eq!(layer_names(&plan, "toolchain"), ["cpp-12", "gcc-12"]);
        assert_eq!(
            layer_names(&plan, "kernel"),
            ["linux-compiler-gcc-12-x86", "linux-headers-6.1.0-56-amd64", "linux-headers-6.1.0-56-common"]
        );
        assert!(plan.layers.iter().all(|l| l.name != "extra"), "no extra layer without extra packages");
        assert!(plan.packages().all(|p| !p.name.starts_with("linux-image")), "excluded by the profile");
    }

    #[test]
    fn extra_packages_get_their_own_layer_and_leave_others_alone() {
        let (p, r, idx, k) = fixture("linux-compiler-gcc-12-x86");
        let plain = plan(Sources::native(&p, &idx), &r, &k, &[]).unwrap();
        let extra = plan(Sources::native(&p, &idx), &r, &k, &["pkg-config".to_string()]).unwrap();
        assert_eq!(layer_names(&extra, "extra"), ["pkg-config"]);
        for (a, b) in plain.layers.iter().zip(&extra.layers) {
            assert_eq!(a.key(&plain.fs), b.key(&extra.fs), "layer {} unchanged", a.name);
        }
    }

    /// bookworm on arm64, seen from an amd64 build machine: (profile, its index, the build
    /// machine's profile and index with `kbuild_version` of linux-kbuild-6.1).
    fn cross_fixture(kbuild_version: &str) -> (Profile, Index, Profile, Index) {
        let arm = |name: &str, depends: &str| pkg(name, depends).replace("Architecture: amd64", "Architecture: arm64");
        let mut text = arm("linux-headers-6.1.0-56-arm64", "linux-headers-6.1.0-56-common, linux-kbuild-6.1, gcc-12");
        text += &pkg("linux-headers-6.1.0-56-common", "");
        text += &arm("linux-kbuild-6.1", "libelf1");
        text += &arm("libelf1", "libc6");
        text += &arm("gcc-12", "cpp-12, libc6");
        text += &arm("cpp-12", "");
        // What a cross compiler links userland programs with, and a module's library.
        let same = |t: String| t.replacen("Architecture:", "Multi-Arch: same\nArchitecture:", 1);
        text += &same(arm("libc6", ""));
        text += &same(arm("libc6-dev", "libc6, linux-libc-dev, rpcsvc-proto"));
        text += &same(arm("linux-libc-dev", ""));
        text += &arm("rpcsvc-proto", "libc6");
        text += &same(arm("libxtables-dev", "libxtables12"));
        text += &same(arm("libxtables12", "libc6"));
        text += &arm("pkg-config", "libc6");
        let target_index = Index::parse(&text, "http://mirror.test/debian", "bookworm").unwrap();
        let mut host = base_text();
        host += &pkg("libelf1", "libc6");
        host += &pkg("gcc-12-aarch64-linux-gnu", "binutils-aarch64-linux-gnu, libc6");
        host += &pkg("binutils-aarch64-linux-gnu", "libc6");
        host += &pkg("libxtables-dev", "libxtables12");
        host += &pkg("libxtables12", "libc6");
        host += &pkg("pkg-config", "libc6");
        host += &pkg("linux-kbuild-6.1", "libelf1").replace("Version: 1\n", &format!("Version: {kbuild_version}\n"));
        let build_index = Index::parse(&host, "http://mirror.test/debian", "bookworm").unwrap();
        let catalog = Catalog::load(&[]).unwrap();
        let target = catalog.profile("debian-bookworm-arm64").unwrap().clone();
        (target, target_index, catalog.profile("debian-bookworm").unwrap().clone(), build_index)
    }

    /// The builder plan of 6.1.0-56-arm64 from [`cross_fixture`].
    fn cross_plan(kbuild_version: &str, extra: &[&str]) -> Result<Plan, ImageError> {
        let (target, target_index, build, build_index) = cross_fixture(kbuild_version);
        let recipe = Catalog::load(&[]).unwrap().recipe("builder").unwrap().clone();
        let kernel = crate::kernel::find(&target, &target_index, "6.1.0-56-arm64").unwrap();
        let cross = Cross { build: &build, index: &build_index, kernel_arch: "arm64" };
        let extra: Vec<String> = extra.iter().map(|e| e.to_string()).collect();
        plan(Sources { profile: &target, index: &target_index, cross: Some(cross) }, &recipe, &kernel, &extra)
    }

    #[test]
    fn a_cross_image_runs_the_build_machine_s_tools_on_the_kernel_s_headers() {
        let plan = cross_plan("1", &[]).unwrap();
        assert_eq!(plan.gcc, "12");
        assert_eq!(plan.env, ["ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"]);
        assert_eq!(layer_names(&plan, "toolchain"), ["binutils-aarch64-linux-gnu", "gcc-12-aarch64-linux-gnu"]);
        let arch = |name: &str| plan.packages().find(|p| p.name == name).map(|p| p.architecture.clone());
        assert_eq!(
            layer_names(&plan, "kernel"),
            ["linux-headers-6.1.0-56-arm64", "linux-headers-6.1.0-56-common", "linux-kbuild-6.1"]
        );
        assert_eq!(arch("linux-headers-6.1.0-56-arm64").as_deref(), Some("arm64"));
        assert_eq!(arch("linux-kbuild-6.1").as_deref(), Some("amd64"), "kbuild's programs run here");
        assert!(plan.packages().all(|p| p.name != "gcc-12" && p.name != "cpp-12"), "no arm64 compiler");
        // The kernel's C library, for userland programs: its libraries and headers only.
        assert_eq!(layer_names(&plan, "target"), ["libc6", "libc6-dev", "linux-libc-dev"]);
        assert!(plan
            .layers
            .iter()
            .find(|l| l.name == "target")
            .unwrap()
            .packages
            .iter()
            .all(|p| p.architecture == "arm64"));
        let arm64: Vec<_> = plan.packages().filter(|p| p.architecture == "arm64").map(|p| p.name.as_str()).collect();
        assert!(arm64
            .iter()
            .all(|n| n.starts_with("linux-headers-") || ["libc6", "libc6-dev", "linux-libc-dev"].contains(n)));
    }

    #[test]
    fn a_cross_image_takes_a_module_s_libraries_of_the_kernel_s_architecture_and_tools_of_its_own() {
        let plan = cross_plan("1", &["libxtables-dev", "pkg-config", "ghost-tool"]);
        let plan = plan.unwrap_err();
        assert!(plan.to_string().contains("ghost-tool"), "{plan}");
        let plan = cross_plan("1", &["libxtables-dev", "pkg-config"]).unwrap();
        let extra: Vec<_> = plan
            .layers
            .iter()
            .find(|l| l.name == "extra")
            .unwrap()
            .packages
            .iter()
            .map(|p| format!("{}:{}", p.name, p.architecture))
            .collect();
        assert_eq!(
            extra,
            [
                "libxtables-dev:amd64",
                "libxtables-dev:arm64",
                "libxtables12:amd64",
                "libxtables12:arm64",
                "pkg-config:amd64"
            ]
        );
        // The shared target layer is the same whatever the module needs.
        let plain = cross_plan("1", &[]).unwrap();
        let target = |p: &Plan| p.layers.iter().find(|l| l.name == "target").map(|l| l.key(&p.fs));
        assert_eq!(target(&plan), target(&plain));
    }

    #[test]
    fn a_cross_image_refuses_kbuild_of_another_version() {
        let err = cross_plan("2", &[]).unwrap_err();
        assert!(matches!(&err, ImageError::CrossMismatch { package, .. } if package == "linux-kbuild-6.1"), "{err}");
        assert!(err.to_string().contains("is version 1, the build machine's (amd64) is 2"), "{err}");
    }

    #[test]
    fn no_compiler_is_an_error() {
        let (p, r, idx, k) = fixture("");
        assert!(matches!(plan(Sources::native(&p, &idx), &r, &k, &[]), Err(ImageError::NoCompiler { .. })));
    }
}
