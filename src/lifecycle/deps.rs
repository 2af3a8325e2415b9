//! What a build needs beyond its own source, as a dkms host would have it: the packages its
//! Debian package depends on (apt installs them beside dkms; ckms layers them into the builder
//! image) and the other modules of the tree (dkms shows them under /usr/src and in its tree).

use super::{Lifecycle, ModuleVersion};
use crate::build::{BuiltView, Sibling, CONTAINER_SOURCES};
use crate::image::Plan;
use crate::pair::inputs::{extra_packages, Extra};
use crate::profile::Profile;
use crate::repo::relation::parse_relation;
use crate::repo::{Index, Package};
use crate::source::{self, Origin};

impl Lifecycle<'_> {
    /// The Debian package `mv` came from: the record made at `add`, else the installed package
    /// owning its dkms.conf in the dpkg database beside the source tree.
    pub fn origin(&self, mv: &ModuleVersion) -> Option<Origin> {
        Origin::read(&self.roots.module_dir(&mv.module, &mv.version))
            .or_else(|| source::installed(&self.roots.source_tree, &format!("{}-{}", mv.module, mv.version), None))
    }

    /// The extra packages for building `mv` on `profile`'s kernels.
    pub fn extra_packages(&self, mv: &ModuleVersion, profile: &Profile, index: &Index) -> Extra {
        let origin = self.origin(mv);
        extra_packages(&self.ctx.config, self.report(), mv, origin.as_ref(), profile, index)
    }

    /// Says which packages `plan` adds to the builder image for `mv` and why, and where the
    /// module sources its package depends on are (or that they are missing).
    pub(super) fn report_extra(&self, mv: &ModuleVersion, extra: &Extra, plan: &Plan, siblings: &[Sibling]) {
        let added: Vec<&str> = plan
            .layers
            .iter()
            .filter(|l| l.name == "extra")
            .flat_map(|l| &l.packages)
            .map(|p| p.name.as_str())
            .collect();
        let in_layer = |root: &String| {
            let name = parse_relation(root).map(|r| r.name).unwrap_or_else(|_| root.clone());
            let named = |p: &&Package| p.name == name || p.provides.iter().any(|r| r.name == name);
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
                Some(s) => {
                    format!("{source} is a module source (visible at {}/{}-{})", CONTAINER_SOURCES, s.module, s.version)
                }
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
            .filter_map(|s| {
                let source = self.source_dir(&s);
                if !source.join("dkms.conf").is_file() {
                    return None;
                }
                let built = self.roots.built_dir(&s.module, &s.version, kernel, arch);
                let built = built.join("module").is_dir().then(|| BuiltView::of_built_dir(&built));
                Some(Sibling { module: s.module, version: s.version, source, built })
            })
            .collect()
    }
}
