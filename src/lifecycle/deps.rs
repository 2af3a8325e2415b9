//! What a build needs beyond its own source, as a dkms host would have it: the other modules
//! of the tree (dkms shows them under /usr/src and in its tree).

use super::{Lifecycle, ModuleVersion};
use crate::build::Sibling;

impl Lifecycle<'_> {
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
                let built = built.join("module").is_dir().then_some(built);
                Some(Sibling { module: s.module, version: s.version, source, built })
            })
            .collect()
    }
}
