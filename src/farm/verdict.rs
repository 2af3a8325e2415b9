//! What a farm run comes to, and the exit code that tells it: dkms's codes where dkms has one
//! for the same outcome (docs/exit-codes.md), so that scripts written for dkms read it.

use super::exec::Checked;
use super::plan::FarmPlan;
use super::schedule::Outcome;
use crate::diagnose::code;

/// Some pair failed or could not be built: dkms's "some autoinstalls failed".
pub const SOME_FAILED: i32 = code::AUTOINSTALL_FAILED;
/// Nothing to build, every pair from the store: dkms's "skipped".
pub const NOTHING_TO_DO: i32 = code::SKIPPED;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every pair built (now or before), identical, loaded: 0.
    Done,
    /// A pair failed, was not built or rebuilt, differs, or its result was refused: 11.
    SomeFailed,
    /// A module did not load into its kernel in the VM (`--verify`): 12.
    NotLoaded,
    /// Nothing was to be built: 77.
    NothingToDo,
}

impl Verdict {
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Done => 0,
            Verdict::SomeFailed => SOME_FAILED,
            Verdict::NotLoaded => code::NOT_LOADED,
            Verdict::NothingToDo => NOTHING_TO_DO,
        }
    }
}

/// What a `farm build` run did, as far as its exit code goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildRun {
    /// Pairs of the matrix stored as failed (now or before).
    pub failed: usize,
    /// Pairs the schedule could not build (a dependency failed, an image could not be made).
    pub not_built: usize,
    /// Modules that did not load in the VM.
    pub not_loaded: usize,
    /// Pairs the run set out to build (not in the store).
    pub to_build: usize,
}

impl BuildRun {
    /// A failure outweighs a module that did not load, which outweighs "nothing to do".
    pub fn verdict(&self) -> Verdict {
        if self.failed > 0 || self.not_built > 0 {
            Verdict::SomeFailed
        } else if self.not_loaded > 0 {
            Verdict::NotLoaded
        } else if self.to_build == 0 {
            Verdict::NothingToDo
        } else {
            Verdict::Done
        }
    }
}

/// The pairs of `list` (whose outcomes are `outcomes`, in order) the schedule did not build,
/// each as "<pair>: <why>".
pub fn not_built(plan: &FarmPlan, list: &[usize], outcomes: &[Outcome]) -> Vec<String> {
    list.iter()
        .zip(outcomes)
        .filter_map(|(&i, o)| match o {
            Outcome::NotBuilt(why) => Some(format!("{}: {why}", plan.label(i))),
            Outcome::Done(_) => None,
        })
        .collect()
}

/// `--check`'s findings: identical pairs counted, every difference named.
#[derive(Debug)]
pub struct Findings<'c> {
    /// Pairs whose module files or status differ from the stored ones.
    pub differing: Vec<&'c Checked>,
    /// Stored pairs that could not be rebuilt, each as "<pair>: <why>".
    pub not_rebuilt: Vec<String>,
    /// Module files compared.
    pub files: usize,
    /// Pairs rebuilt identical.
    pub identical: usize,
}

impl<'c> Findings<'c> {
    /// The findings of rebuilding the pairs `stored` of `plan`.
    pub fn of(plan: &FarmPlan, stored: &[usize], outcomes: &[Outcome], checked: &'c [Checked]) -> Findings<'c> {
        let differing: Vec<&Checked> = checked.iter().filter(|c| !c.differs.is_empty() || c.status.is_some()).collect();
        let not_rebuilt = not_built(plan, stored, outcomes);
        let files: usize = checked.iter().map(|c| c.compared).sum();
        let identical = checked.len() - differing.len();
        Findings { differing, not_rebuilt, files, identical }
    }

    /// 11 when a pair differs or could not be rebuilt.
    pub fn verdict(&self) -> Verdict {
        if self.differing.is_empty() && self.not_rebuilt.is_empty() {
            Verdict::Done
        } else {
            Verdict::SomeFailed
        }
    }
}

/// What `farm kube collect` did, as far as its exit code goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct CollectRun {
    /// Results refused (changed, for another pair, not replaying).
    pub refused: usize,
    /// Pairs without a result.
    pub missing: usize,
    /// Pairs stored as failed.
    pub failed: usize,
}

impl CollectRun {
    pub fn verdict(&self) -> Verdict {
        if self.refused > 0 || self.missing > 0 || self.failed > 0 {
            Verdict::SomeFailed
        } else {
            Verdict::Done
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_dkms_s() {
        assert_eq!(Verdict::Done.exit_code(), 0);
        assert_eq!(Verdict::SomeFailed.exit_code(), 11);
        assert_eq!(Verdict::NotLoaded.exit_code(), 12);
        assert_eq!(Verdict::NothingToDo.exit_code(), 77);
    }

    #[test]
    fn a_build_run_s_worst_outcome_decides() {
        let run =
            |failed, not_built, not_loaded, to_build| BuildRun { failed, not_built, not_loaded, to_build }.verdict();
        assert_eq!(run(0, 0, 0, 3), Verdict::Done);
        assert_eq!(run(0, 0, 0, 0), Verdict::NothingToDo);
        assert_eq!(run(1, 0, 0, 0), Verdict::SomeFailed);
        assert_eq!(run(0, 1, 2, 3), Verdict::SomeFailed);
        assert_eq!(run(0, 0, 2, 0), Verdict::NotLoaded);
    }

    #[test]
    fn a_check_fails_on_a_difference_or_a_pair_not_rebuilt() {
        let differs = Checked { pair: 0, differs: vec!["m.ko".into()], compared: 1, status: None };
        let findings = |differing, not_rebuilt| Findings { differing, not_rebuilt, files: 0, identical: 0 };
        assert_eq!(findings(vec![], vec![]).verdict(), Verdict::Done);
        assert_eq!(findings(vec![&differs], vec![]).verdict(), Verdict::SomeFailed);
        assert_eq!(findings(vec![], vec!["m for k: why".into()]).verdict(), Verdict::SomeFailed);
    }

    #[test]
    fn a_collect_fails_on_any_refused_missing_or_failed_pair() {
        assert_eq!(CollectRun::default().verdict(), Verdict::Done);
        for run in [
            CollectRun { refused: 1, ..Default::default() },
            CollectRun { missing: 1, ..Default::default() },
            CollectRun { failed: 1, ..Default::default() },
        ] {
            assert_eq!(run.verdict(), Verdict::SomeFailed);
        }
    }
}
