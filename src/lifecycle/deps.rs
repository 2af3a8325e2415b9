//! What a build needs beyond its own source, as a dkms host would have it: the packages its
//! Debian package depends on (apt installs them beside dkms; ckms layers them into the builder
//! image) and the other modules of the tree (dkms shows them under /usr/src and in its tree).

use super::{Lifecycle, ModuleVersion};
use crate::build::Sibling;
use crate::profile::Profile;
use crate::repo::Index;
use crate::source::Origin;

/// The extra packages of one build, and why each is there.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// Roots for the image's extra layer: the config's `[modules.<m>] packages`, then the
    /// package's Depends.
    pub packages: Vec<String>,
    /// What to say about them once the image plan shows what is really added.
    origin: Option<Origin>,
    from_package: Vec<String>,
    from_config: Vec<String>,
    /// Other module packages it depends on: module sources.
    pub sources: Vec<String>,
}

impl Lifecycle<'_> {
    /// The Debian package `mv` came from: the record made at `add`, else the installed package
    /// owning its dkms.conf in the dpkg database beside the source tree.
    pub fn origin(&self, mv: &ModuleVersion) -> Option<Origin> {
        Origin::read(&self.roots.module_dir(&mv.module, &mv.version)).or_else(|| {
            crate::source::installed(&self.roots.source_tree, &format!("{}-{}", mv.module, mv.version), None)
        })
    }

    /// The extra packages for building `mv` on `profile`'s kernels.
    pub fn extra_packages(&self, mv: &ModuleVersion, profile: &Profile, index: &Index) -> Extra {
        let from_config = self.ctx.config.module_packages(&mv.module);
        let mut extra = Extra { packages: from_config.clone(), from_config, ..Extra::default() };
        let Some(origin) = self.origin(mv) else { return extra };
        let groups = match origin.relations() {
            Ok(groups) => groups,
            Err(e) => {
                self.report().warn(format!("{mv}: {e}: its dependencies are left out of the builder image"));
                return extra;
            }
        };
        let deps = crate::source::build_deps(&groups, profile, index);
        for missing in &deps.unavailable {
            self.report().warn(format!(
                "{mv}: {missing} (from {}'s Depends) is not in {}'s repository: left out of the builder image",
                origin.package, profile.name
            ));
        }
        for p in &deps.packages {
            if !extra.packages.contains(p) {
                extra.packages.push(p.clone());
                extra.from_package.push(p.clone());
            }
        }
        extra.sources = deps.sources;
        extra.origin = Some(origin);
        extra
    }

    /// Says which packages `plan` adds to the builder image for `mv` and why, and where the
    /// module sources its package depends on are (or that they are missing).
    pub(super) fn report_extra(
        &self,
        mv: &ModuleVersion,
        extra: &Extra,
        plan: &crate::image::Plan,
        siblings: &[Sibling],
    ) {
        let added: Vec<&str> = plan
            .layers
            .iter()
            .filter(|l| l.name == "extra")
            .flat_map(|l| &l.packages)
            .map(|p| p.name.as_str())
            .collect();
        let in_layer = |root: &String| {
            let name = crate::repo::relation::parse_relation(root).map(|r| r.name).unwrap_or_else(|_| root.clone());
            let named = |p: &&crate::repo::Package| p.name == name || p.provides.iter().any(|r| r.name == name);
            plan.layers.iter().filter(|l| l.name == "extra").flat_map(|l| &l.packages).any(|p| named(&p))
        };
        let mut why = Vec::new();
        let from_package: Vec<&str> = extra.from_package.iter().filter(|r| in_layer(r)).map(String::as_str).collect();
        if let (Some(origin), false) = (&extra.origin, from_package.is_empty()) {
            why.push(format!("{} (from {}'s Depends)", from_package.join(" "), origin.package));
        }
        let from_config: Vec<&str> = extra.from_config.iter().filter(|r| in_layer(r)).map(String::as_str).collect();
        if !from_config.is_empty() {
            why.push(format!("{} (from [modules.{}] packages in ckms's config)", from_config.join(" "), mv.module));
        }
        let mut said = Vec::new();
        if !why.is_empty() {
            said.push(format!(
                "adding {} to the builder image ({} package(s) with their dependencies)",
                why.join(" and "),
                added.len()
            ));
        }
        for source in &extra.sources {
            let module = source.strip_suffix("-dkms").unwrap_or(source);
            let found = siblings.iter().find(|s| {
                s.module == module
                    || Origin::read(&self.roots.module_dir(&s.module, &s.version)).is_some_and(|o| o.package == *source)
            });
            said.push(match found {
                Some(s) => format!(
                    "{source} is a module source (visible at {}/{}-{})",
                    crate::build::CONTAINER_SOURCES,
                    s.module,
                    s.version
                ),
                None => format!("{source} is a module source, but not in the tree: the build will not see it"),
            });
        }
        if !said.is_empty() {
            self.report().info(format!("{mv}: {}", said.join("; ")));
        }
    }

    /// Every other module version in the tree whose source is there, with its built tree for
    /// `kernel` when there is one: what a dkms host shows a build.
    pub(super) fn siblings(&self, mv: &ModuleVersion, kernel: &str, arch: &str) -> Vec<Sibling> {
        self.all()
            .into_iter()
            .filter(|s| s != mv)
            .filter(|s| self.opts.visible.as_ref().is_none_or(|v| v.contains(s)))
            .filter_map(|s| {
                let source = self.source_dir(&s);
                if !source.join("dkms.conf").is_file() {
                    return None;
                }
                let built = self.roots.built_dir(&s.module, &s.version, kernel, arch);
                let built = built.join("module").is_dir().then_some(built);
                Some(Sibling { module: s.module, version: s.version, source, built })
            })
            .collect()
    }
}
