//! Readiness per kernel: whether every module of the farm's matrix is built, signed and
//! proven to load for a kernel (it is ready), or which are not and why. What `farm status
//! --kernels` shows, what the published outputs carry, and what a host or a cluster upgrade
//! gates on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::report::{first_error, lookups, Cell};
use super::store::{Lookup, Record, Status, Store};

/// Where one module stands for one kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Built, signed, and loaded in a VM running the kernel.
    Ready,
    /// Excluded by its BUILD_EXCLUSIVE rules: a host would not build it either.
    Skipped,
    /// In the matrix, no entry in the store (not built yet, or being built).
    Missing,
    Failed,
    /// Built, not signed: a host that enforces signatures does not load it.
    Unsigned,
    /// Built and signed, its load not proven (`farm build --verify` proves it).
    Unproven,
    /// Did not load in the VM.
    NotLoaded,
    /// The entry's files do not match its record.
    Damaged,
}

impl State {
    /// Whether a kernel may be used with the module in this state.
    pub fn ok(self) -> bool {
        matches!(self, State::Ready | State::Skipped)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string));
        f.write_str(&text.unwrap_or_default())
    }
}

/// One module of a kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleReadiness {
    pub module: String,
    pub version: String,
    pub state: State,
    /// Why it is not ready, in a person's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// One kernel: ready when every module is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelReadiness {
    pub kernel: String,
    pub ready: bool,
    pub modules: Vec<ModuleReadiness>,
}

impl KernelReadiness {
    /// The modules that keep the kernel from being ready.
    pub fn blocking(&self) -> impl Iterator<Item = &ModuleReadiness> {
        self.modules.iter().filter(|m| !m.state.ok())
    }
}

/// The readiness of every kernel of the store's matrix, by kernel release; a failed build
/// says its make.log's first compiler or linker error.
pub fn of_store(store: &Store) -> Vec<KernelReadiness> {
    let cells = lookups(store)
        .into_iter()
        .map(|(cell, lookup)| match lookup {
            Lookup::Found(mut r) if r.status == Status::Failed => {
                if let Some(e) = first_error(store, &r) {
                    r.reason = Some(format!("{}: {e}", r.reason.as_deref().unwrap_or("the build failed")));
                }
                (cell, Lookup::Found(r))
            }
            other => (cell, other),
        })
        .collect();
    of(cells)
}

/// The readiness of every kernel the cells name, from what their lookups found.
pub fn of(cells: Vec<(Cell, Lookup)>) -> Vec<KernelReadiness> {
    let mut kernels: BTreeMap<String, Vec<ModuleReadiness>> = BTreeMap::new();
    for (cell, lookup) in cells {
        let (kernel, module) = match lookup {
            Lookup::Found(r) => (r.kernel.clone(), of_record(&r)),
            Lookup::Missing => (cell.kernel.clone(), named(&cell, State::Missing, "not built yet")),
            Lookup::Damaged(d) => (cell.kernel.clone(), named(&cell, State::Damaged, &d.to_string())),
        };
        // A matrix written before cells named their pair: a missing entry names no kernel.
        if !kernel.is_empty() {
            kernels.entry(kernel).or_default().push(module);
        }
    }
    kernels
        .into_iter()
        .map(|(kernel, mut modules)| {
            modules.sort_by(|a, b| (&a.module, &a.version).cmp(&(&b.module, &b.version)));
            KernelReadiness { kernel, ready: modules.iter().all(|m| m.state.ok()), modules }
        })
        .collect()
}

fn named(cell: &Cell, state: State, why: &str) -> ModuleReadiness {
    ModuleReadiness { module: cell.module.clone(), version: cell.version.clone(), state, why: Some(why.to_string()) }
}

/// Where the pair of `r` stands.
pub fn of_record(r: &Record) -> ModuleReadiness {
    let (state, why) = match (r.status, &r.signer, &r.proof) {
        (Status::Skipped, ..) => (State::Skipped, r.reason.clone()),
        (Status::Failed, ..) => (State::Failed, Some(r.reason.clone().unwrap_or_else(|| "the build failed".into()))),
        (Status::Built, None, _) => (State::Unsigned, Some("built without a signing key".into())),
        (Status::Built, Some(_), None) => (State::Unproven, Some("not proven to load (farm build --verify)".into())),
        (Status::Built, Some(_), Some(p)) if !p.loaded => (State::NotLoaded, Some(p.messages.join("; "))),
        (Status::Built, Some(_), Some(_)) => (State::Ready, None),
    };
    ModuleReadiness { module: r.module.clone(), version: r.version.clone(), state, why }
}

/// `farm status --kernels`: a line per kernel, and one per module that keeps it from being ready.
pub fn text(kernels: &[KernelReadiness]) -> String {
    let mut out = String::new();
    for k in kernels {
        let ok = k.modules.iter().filter(|m| m.state.ok()).count();
        let verdict = if k.ready { "ready" } else { "NOT ready" };
        out += &format!("{}: {verdict} ({ok}/{} modules)\n", k.kernel, k.modules.len());
        for m in k.blocking() {
            out += &format!("  {}/{}: {}", m.module, m.version, m.state);
            out += &m.why.as_ref().map(|w| format!(": {w}\n")).unwrap_or_else(|| "\n".into());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::farm::store::tests::record;
    use crate::farm::store::{Proof, SignedBy};

    fn signer() -> Option<SignedBy> {
        Some(SignedBy { fingerprint: "f".into(), subject: "s".into(), hash: "sha256".into() })
    }

    fn pair(module: &str, kernel: &str, status: Status) -> Record {
        let mut r = record(&format!("{module}-{kernel}"), vec![]);
        (r.module, r.version, r.kernel, r.status) = (module.into(), "1".into(), kernel.into(), status);
        r
    }

    fn cell(module: &str, kernel: &str) -> Cell {
        Cell {
            key: format!("{module}-{kernel}"),
            module: module.into(),
            version: "1".into(),
            kernel: kernel.into(),
            ..Cell::default()
        }
    }

    #[test]
    fn a_kernel_is_ready_when_every_module_is_signed_and_loaded_or_skipped() {
        let mut loaded = pair("a", "6.1.0-56-amd64", Status::Built);
        loaded.signer = signer();
        loaded.proof = Some(Proof { loaded: true, messages: vec![] });
        let skipped = pair("b", "6.1.0-56-amd64", Status::Skipped);
        let mut failed = pair("a", "6.12.1-amd64", Status::Failed);
        failed.reason = Some("hello.c:3: error: oops".into());
        let mut unproven = pair("b", "6.12.1-amd64", Status::Built);
        unproven.signer = signer();
        let cells = vec![
            (cell("a", "6.1.0-56-amd64"), Lookup::Found(Box::new(loaded))),
            (cell("b", "6.1.0-56-amd64"), Lookup::Found(Box::new(skipped))),
            (cell("a", "6.12.1-amd64"), Lookup::Found(Box::new(failed))),
            (cell("b", "6.12.1-amd64"), Lookup::Found(Box::new(unproven))),
            (cell("c", "6.12.1-amd64"), Lookup::Missing),
        ];
        let kernels = of(cells);
        assert_eq!(kernels.len(), 2);
        assert!(kernels[0].ready, "{kernels:?}");
        assert!(!kernels[1].ready);
        let states: Vec<State> = kernels[1].modules.iter().map(|m| m.state).collect();
        assert_eq!(states, [State::Failed, State::Unproven, State::Missing]);
        let text = text(&kernels);
        assert!(text.contains("6.1.0-56-amd64: ready (2/2 modules)"), "{text}");
        assert!(text.contains("6.12.1-amd64: NOT ready (0/3 modules)"), "{text}");
        assert!(text.contains("  a/1: failed: hello.c:3: error: oops"), "{text}");
        assert!(text.contains("  c/1: missing: not built yet"), "{text}");
    }

    #[test]
    fn unsigned_and_not_loaded_are_not_ready() {
        let unsigned = pair("a", "k", Status::Built);
        let mut not_loaded = pair("b", "k", Status::Built);
        not_loaded.signer = signer();
        not_loaded.proof = Some(Proof { loaded: false, messages: vec!["b: Unknown symbol x".into()] });
        let kernels = of(vec![
            (cell("a", "k"), Lookup::Found(Box::new(unsigned))),
            (cell("b", "k"), Lookup::Found(Box::new(not_loaded))),
        ]);
        let m = &kernels[0].modules;
        assert_eq!((m[0].state, m[1].state), (State::Unsigned, State::NotLoaded));
        assert_eq!(m[1].why.as_deref(), Some("b: Unknown symbol x"));
        assert_eq!(State::NotLoaded.to_string(), "not-loaded");
    }
}
