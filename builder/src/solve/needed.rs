//! Which stages a build runs. A stage that only steps taken from a cache
//! read (`COPY --from`, `RUN --mount=from=`) is not needed: BuildKit does
//! not solve what a cached step would have read, and neither does kiln.
//! A second runner with a cache of the result's steps only (`mode=min`,
//! inline) thus runs none of the stages the result copies from.
//!
//! Whether a step will be taken from a cache is known before it runs: the
//! store has a record for its key, or a `--cache-from` source has it. A
//! stage left out whose steps would all be taken from a cache anyway (as
//! would those of every stage it depends on) is run all the same: it costs
//! nothing and its steps show as `CACHED`, as BuildKit shows them.
//! Should a step expected from a cache run after all (a source that
//! failed), the stage it reads is missing; the solver then builds again
//! with every stage.

use std::collections::BTreeSet;

use crate::plan::{BaseSource, CopyFrom, Step, StepKind};

use super::*;

/// The needed stages (of `plan.order`) the build need not run.
pub(super) fn skippable_stages(build: &Build<'_>) -> BTreeSet<usize> {
    let plan = build.plan;
    let mut needed = BTreeSet::new();
    let mut queue = vec![plan.target];
    while let Some(index) = queue.pop() {
        if !needed.insert(index) {
            continue;
        }
        let stage = &plan.stages[index];
        if let BaseSource::Stage(base) = stage.base {
            queue.push(base);
        }
        for step in stage.steps.iter().filter(|s| !will_hit(build, s)) {
            queue.extend(stages_read(step));
        }
    }
    plan.order
        .iter()
        .copied()
        .filter(|i| !needed.contains(i) && !all_hits(build, *i, &mut BTreeSet::new()))
        .collect()
}

/// Whether every step of stage `index`, and of every stage it depends on,
/// will be taken from a cache.
fn all_hits(build: &Build<'_>, index: usize, seen: &mut BTreeSet<usize>) -> bool {
    if !seen.insert(index) {
        return true;
    }
    let stage = &build.plan.stages[index];
    stage.steps.iter().all(|s| will_hit(build, s))
        && stage.deps.iter().all(|d| all_hits(build, *d, seen))
}

/// The stages a step reads when it runs.
fn stages_read(step: &Step) -> Vec<usize> {
    match &step.kind {
        StepKind::Copy(c) => match c.from {
            CopyFrom::Stage(i) => vec![i],
            _ => Vec::new(),
        },
        StepKind::Run(r) => r.mount_stages().collect(),
        StepKind::Workdir(_) => Vec::new(),
    }
}

/// Whether the step will be taken from a cache: the store's, or a source's.
fn will_hit(build: &Build<'_>, step: &Step) -> bool {
    let opts = build.opts;
    let no_cache = opts.no_cache || opts.no_cache_stages.contains(&step.stage);
    let Some(key) = step.cache_key.as_ref().filter(|_| !no_cache) else {
        return false;
    };
    matches!(build.store.cache_get(key), Ok(Some(_)))
        || opts.cache_from.is_some_and(|s| s.lookup(key).is_some())
}
