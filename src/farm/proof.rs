//! `farm build --verify`: one VM boot per kernel loads every module built for it (with the
//! in-tree modules they depend on), rather than one boot per pair. Each pair's record gets
//! its modules' outcome; `<store>/verify/<kernel>.json` keeps the whole run.

use super::plan::FarmPlan;
use super::store::{Lookup, Proof, Status, Store};
use super::FarmError;
use crate::context::Context;
use crate::engine::Engine;
use crate::verify::modinfo::canonical;
use crate::verify::{self, Subject};

/// What one kernel's boot found: pairs whose modules all loaded, and those that did not.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Booted {
    pub kernel: String,
    pub loaded: usize,
    pub failed: Vec<String>,
    pub seconds: f64,
    /// Every pair was proven by an earlier run: no VM was booted, these are its findings.
    pub earlier: bool,
}

/// Boots each kernel of `plan` that has built pairs in `store` once and loads their modules;
/// a kernel whose every built pair is proven already (loaded or not) is left out.
pub async fn verify(
    ctx: &Context,
    engine: &dyn Engine,
    plan: &FarmPlan,
    store: &Store,
) -> Result<Vec<Booted>, FarmError> {
    let mut out = Vec::new();
    for (ki, kernel) in plan.kernels.iter().enumerate() {
        // The built pairs of this kernel, and their signed modules; one file per module name
        // (a second version of the same module cannot be loaded beside the first).
        let mut files = Vec::new();
        let mut pairs: Vec<(String, Vec<String>)> = Vec::new();
        let mut proofs = Vec::new();
        for pair in plan.pairs.iter().filter(|p| p.kernel == ki) {
            let Lookup::Found(r) = store.get(&pair.key) else { continue };
            if r.status != Status::Built {
                continue;
            }
            let names: Vec<String> = r.modules.iter().map(|m| canonical(&m.name)).collect();
            if names.iter().any(|n| pairs.iter().any(|(_, taken)| taken.contains(n))) {
                ctx.reporter().warn(format!(
                    "{}/{} on {}: a module of the same name is loaded already; not verified",
                    r.module, r.version, r.kernel
                ));
                continue;
            }
            proofs.push(r.proof.clone());
            let dir = store.entry_dir(&r.key);
            files.extend(r.modules.iter().map(|m| dir.join(&m.signed.as_ref().unwrap_or(&m.unsigned).file)));
            pairs.push((r.key.clone(), names));
        }
        if files.is_empty() {
            continue;
        }
        // A proof is of the same bytes on the same kernel: once every pair has one, booting
        // again (each follow cycle, each re-run) would only say it again.
        if let Some(proofs) = proofs.into_iter().collect::<Option<Vec<Proof>>>() {
            let mut booted = Booted { kernel: kernel.release.clone(), earlier: true, ..Booted::default() };
            for p in proofs {
                booted.loaded += usize::from(p.loaded);
                booted.failed.extend(p.messages);
            }
            out.push(booted);
            continue;
        }
        let v = verify::verify(ctx, engine, &kernel.release, Some(&kernel.profile), Subject::Files(&files)).await?;
        let text = serde_json::to_string_pretty(&v).unwrap_or_default();
        store.write_file(&format!("verify/{}.json", kernel.release), format!("{text}\n").as_bytes())?;
        let mut booted = Booted { kernel: kernel.release.clone(), seconds: v.seconds, ..Booted::default() };
        for (key, names) in pairs {
            let mine: Vec<_> = v.modules.iter().filter(|m| names.contains(&m.name)).collect();
            let loaded = !mine.is_empty() && mine.iter().all(|m| m.ok());
            let messages = mine
                .iter()
                .filter(|m| !m.ok())
                .map(|m| format!("{}: {}", m.name, m.reason().unwrap_or_default()))
                .collect::<Vec<_>>();
            if loaded {
                booted.loaded += 1;
            } else {
                booted.failed.extend(messages.iter().cloned());
            }
            store.set_proof(&key, Proof { loaded, messages })?;
        }
        out.push(booted);
    }
    Ok(out)
}
