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

#[derive(Debug, Clone)]
pub struct Plan {
    pub recipe: String,
    pub profile: String,
    pub kernel: Kernel,
    /// The compiler version, e.g. "12".
    pub gcc: String,
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

pub fn plan(
    profile: &Profile,
    recipe: &Recipe,
    index: &Index,
    kernel: &Kernel,
    extra: &[String],
) -> Result<Plan, ImageError> {
    let exclude = &profile.packages.exclude;
    let resolve = |roots: &[String]| {
        index.resolve(roots, exclude).map_err(|source| ImageError::Resolve { kernel: kernel.release.clone(), source })
    };
    let base = resolve(&profile.packages.base)?;
    let mut roots = profile.packages.base.clone();
    roots.push(kernel.headers_package.clone());
    let with_kernel = resolve(&roots)?;
    roots.extend(extra.iter().cloned());
    roots.extend(recipe.packages.iter().cloned());
    let full = if extra.is_empty() && recipe.packages.is_empty() { with_kernel.clone() } else { resolve(&roots)? };
    // The recipe's own packages on top of base (the verifier's qemu): resolved without the
    // kernel's, so that the layer holds everything they need beyond base.
    let in_recipe: BTreeSet<String> = if recipe.packages.is_empty() {
        BTreeSet::new()
    } else {
        let mut r = profile.packages.base.clone();
        r.extend(recipe.packages.iter().cloned());
        resolve(&r)?.into_iter().map(|p| p.name).collect()
    };

    let (compiler, gcc) = with_kernel
        .iter()
        .find_map(|p| Some((p.name.clone(), profile.compiler_of(&p.name)?.to_string())))
        .ok_or_else(|| ImageError::NoCompiler { kernel: kernel.release.clone(), profile: profile.name.clone() })?;
    // The compiler's own closure, apart from what else the kernel's packages need (pahole,
    // libelf...): kernels built with the same compiler share it even when their tools differ.
    let mut compiler_roots = profile.packages.base.clone();
    compiler_roots.push(compiler);
    let with_compiler = resolve(&compiler_roots)?;

    let names = |ps: &[Package]| ps.iter().map(|p| p.name.clone()).collect::<BTreeSet<_>>();
    let (in_base, in_compiler, in_with_kernel) = (names(&base), names(&with_compiler), names(&with_kernel));
    let select = |name: &str| -> Result<Vec<Package>, ImageError> {
        let pick: Box<dyn Fn(&Package) -> bool> = match name {
            "base" => Box::new(|p| in_base.contains(&p.name)),
            "toolchain" => Box::new(|p| in_compiler.contains(&p.name) && !in_base.contains(&p.name)),
            "tools" => Box::new(|p| {
                in_with_kernel.contains(&p.name)
                    && !in_compiler.contains(&p.name)
                    && !profile.is_kernel_package(&p.name)
            }),
            "kernel" => Box::new(|p| {
                in_with_kernel.contains(&p.name) && !in_compiler.contains(&p.name) && profile.is_kernel_package(&p.name)
            }),
            "extra" => Box::new(|p| !in_with_kernel.contains(&p.name) && !in_recipe.contains(&p.name)),
            "packages" => Box::new(|p| in_recipe.contains(&p.name) && !in_base.contains(&p.name)),
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
    Ok(Plan {
        recipe: recipe.name.clone(),
        profile: profile.name.clone(),
        kernel: kernel.clone(),
        gcc,
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

    fn fixture(headers_deps: &str) -> (Profile, Recipe, Index, Kernel) {
        let mut text = String::new();
        for b in [
            "bash",
            "coreutils",
            "dash",
            "diffutils",
            "dpkg-dev",
            "findutils",
            "grep",
            "gzip",
            "kmod",
            "make",
            "mawk",
            "patch",
            "sed",
            "tar",
            "xz-utils",
        ] {
            text += &pkg(b, "libc6");
        }
        text += &pkg("libc6", "");
        text += &pkg("libc6-dev", "libc6");
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
        let plan = plan(&p, &r, &idx, &k, &[]).unwrap();
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
        let plain = plan(&p, &r, &idx, &k, &[]).unwrap();
        let extra = plan(&p, &r, &idx, &k, &["pkg-config".to_string()]).unwrap();
        assert_eq!(layer_names(&extra, "extra"), ["pkg-config"]);
        for (a, b) in plain.layers.iter().zip(&extra.layers) {
            assert_eq!(a.key(&plain.fs), b.key(&extra.fs), "layer {} unchanged", a.name);
        }
    }

    #[test]
    fn no_compiler_is_an_error() {
        let (p, r, idx, k) = fixture("");
        assert!(matches!(plan(&p, &r, &idx, &k, &[]), Err(ImageError::NoCompiler { .. })));
    }
}
