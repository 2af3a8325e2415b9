//! Nix's evaluation for the farm: the plan of sources × kernels, and what the store already
//! holds of it. `farm build` and `farm kube render|collect` start from the same evaluation, so
//! a pair has the same key wherever it is built.

use std::path::Path;

use super::plan::{self, FarmPlan, Work};
use super::report::Cell;
use super::select::Selector;
use super::store::{Lookup, Status, Store};
use super::FarmError;
use crate::context::Context;

/// A farm plan and what its store holds.
pub struct Evaluated {
    pub store: Store,
    pub work: Work,
    pub plan: FarmPlan,
    /// Pairs to build.
    pub todo: Vec<usize>,
    /// Pairs stored as built.
    pub built: Vec<usize>,
}

/// The plan of `sources` × `kernels` against the store at `store`: Nix's evaluation.
pub async fn evaluate(
    ctx: &Context,
    store: &Path,
    kernels: &[String],
    sources: &[String],
    profile: Option<&str>,
    retry_failed: bool,
) -> Result<Evaluated, FarmError> {
    // Read only: a plan (a dry run, a render) deletes nothing; writers clean up after the dead.
    let store = Store::open(store)?;
    let selectors = kernels.iter().map(|s| Selector::parse(s)).collect::<Result<Vec<_>, _>>()?;
    // Unknown kernels fail here, before any source is fetched or anything built.
    let kernels = plan::kernels(ctx, &selectors, profile).await?;
    let work = Work::for_store(ctx, store.root());
    let sources = plan::sources(ctx, &work, sources, &kernels).await?;
    let plan = plan::pairs(ctx, sources, kernels).await?;

    // What the store already has (each entry read and checked once): `todo` to build, and
    // the built ones, which --check rebuilds.
    let (mut todo, mut built) = (Vec::new(), Vec::new());
    for (i, pair) in plan.pairs.iter().enumerate() {
        match store.get(&pair.key) {
            Lookup::Found(r) if !(retry_failed && r.status == Status::Failed) => {
                if r.status == Status::Built {
                    built.push(i);
                }
            }
            Lookup::Damaged(d) => {
                ctx.reporter().warn(format!(
                    "{}: damaged store entry {}, built again: {}",
                    plan.label(i),
                    d.key,
                    d.why
                ));
                todo.push(i);
            }
            _ => todo.push(i),
        }
    }
    Ok(Evaluated { store, work, plan, todo, built })
}

/// The matrix of a run that built `todo`: every pair of `plan`, the others from the store.
pub fn cells(plan: &FarmPlan, todo: &[usize]) -> Vec<Cell> {
    let to_build = in_list(plan.pairs.len(), todo);
    (0..plan.pairs.len()).map(|i| plan.cell(i, !to_build[i])).collect()
}

/// For each of `n` pairs, whether `list` holds it.
pub fn in_list(n: usize, list: &[usize]) -> Vec<bool> {
    let mut marked = vec![false; n];
    for &i in list {
        marked[i] = true;
    }
    marked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_list_marks_the_listed_pairs() {
        assert_eq!(in_list(4, &[3, 1]), [false, true, false, true]);
        assert_eq!(in_list(2, &[]), [false, false]);
    }
}
