//! One stage: its base, then its steps in order, then its history with
//! times and empty layers settled.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_layers::oci::{parse_rfc3339, rfc3339, Descriptor};
use kiln_layers::Digest;
use kiln_parser::shorten;

use crate::plan::{BaseSource, Plan, Step, StepKind};

use super::*;

#[derive(Debug, Clone)]
pub(super) struct StageOutput {
    pub(super) layers: Vec<(Descriptor, Digest)>,
    /// Bottom first.
    pub(super) snapshots: Vec<PathBuf>,
    /// History with `created` and `empty_layer` settled.
    pub(super) history: Vec<kiln_layers::oci::History>,
}

impl StageOutput {
    pub(super) fn chain(&self) -> Option<Digest> {
        let diff_ids: Vec<Digest> = self.layers.iter().map(|(_, d)| d.clone()).collect();
        kiln_layers::chain_ids(&diff_ids).pop()
    }

    pub(super) fn lowers_top_first(&self) -> Vec<PathBuf> {
        self.snapshots.iter().rev().cloned().collect()
    }
}

/// The stage's name in progress lines, as BuildKit prints it: its `AS`
/// name, `stage-N` when unnamed in a multi-stage Dockerfile, else nothing.
pub(super) fn stage_label(plan: &Plan, index: usize) -> String {
    let sp = &plan.stages[index];
    match &sp.name {
        Some(n) => n.clone(),
        None if plan.stages.len() > 1 => format!("stage-{index}"),
        None => String::new(),
    }
}

/// What a stage's steps record as they go: its layers and snapshots so far,
/// and when each layer was made.
pub(super) struct StageProgress {
    pub(super) out: StageOutput,
    /// History index → when the step's layer was first made.
    pub(super) step_times: BTreeMap<usize, i64>,
    /// Each step's result so far (for cache exporters).
    pub(super) results: Vec<StepResult>,
}

impl StageProgress {
    /// Notes `step`'s result: the layer it added after the first
    /// `layers_before`, if any, and when that was made.
    pub(super) fn record_result(&mut self, step: &Step, layers_before: usize) {
        let Some(key) = &step.cache_key else {
            return;
        };
        let created = self
            .step_times
            .get(&step.history_index)
            .copied()
            .unwrap_or_else(now_secs);
        let layer = match self.out.layers.len() > layers_before {
            true => self.out.layers.last().cloned(),
            false => None,
        };
        self.results.push(StepResult {
            stage: step.stage,
            key: key.clone(),
            created,
            layer,
        });
    }
}

/// Runs one stage: its base, then each step in order; returns its output
/// and its steps' results.
pub(super) fn run_stage(
    build: &Build<'_>,
    index: usize,
    deps: &BTreeMap<usize, StageOutput>,
) -> Result<(StageOutput, Vec<StepResult>), SolveError> {
    let sp = &build.plan.stages[index];
    let label = stage_label(build.plan, index);
    // BuildKit counts FROM as the stage's first command.
    let total = sp.steps.len() + 1;
    let from = StepEvent {
        stage_index: index,
        stage: &label,
        number: 1,
        total,
        line: sp.line,
        instruction: "",
    };
    let mut progress = StageProgress {
        out: stage_base(build, sp, &from, deps)?,
        step_times: BTreeMap::new(),
        results: Vec::new(),
    };
    for (n, step) in sp.steps.iter().enumerate() {
        if canceled() {
            return Err(SolveError::Canceled);
        }
        let event = StepEvent {
            number: n + 2,
            line: step.line,
            instruction: &step.instruction,
            ..from.clone()
        };
        build.opts.events.step_started(&event);
        let run = StepRun {
            build,
            deps,
            step,
            event: &event,
        };
        let result = run_step(&run, &mut progress);
        build
            .opts
            .events
            .step_done(&event, &step_outcome(step, &result));
        result?;
    }
    let history = settled_history(build, sp, &progress.out.history, &progress);
    let results = std::mem::take(&mut progress.results);
    Ok((
        StageOutput {
            history,
            ..progress.out
        },
        results,
    ))
}

/// What a stage starts from: nothing, an earlier stage's output, or an
/// image's snapshots (unpacked now if they are not yet: the FROM step).
fn stage_base(
    build: &Build<'_>,
    sp: &crate::plan::StagePlan,
    from: &StepEvent<'_>,
    deps: &BTreeMap<usize, StageOutput>,
) -> Result<StageOutput, SolveError> {
    let (reference, digest) = match &sp.base {
        // A named context's files come in through the stage's first step.
        BaseSource::Scratch | BaseSource::NamedContext { .. } => {
            return Ok(StageOutput {
                layers: Vec::new(),
                snapshots: Vec::new(),
                history: Vec::new(),
            })
        }
        BaseSource::Stage(i) => return deps.get(i).cloned().ok_or(SolveError::StageMissing(*i)),
        BaseSource::Image { reference, digest } => (reference, digest),
    };
    if canceled() {
        return Err(SolveError::Canceled);
    }
    let (store, opts) = (build.store, build.opts);
    let image = build.resolver.resolved(reference, digest.as_ref())?;
    // As BuildKit names it: the reference with the digest it resolved to;
    // one that names a digest already is shown as it is.
    let instruction = match &reference.reference.digest {
        Some(_) => format!("FROM {}", reference.reference),
        None => format!("FROM {reference}@{}", image.manifest_descriptor.digest),
    };
    let event = StepEvent {
        instruction: &instruction,
        ..from.clone()
    };
    opts.events.step_started(&event);
    let layers = image.layers()?;
    let diff_ids: Vec<Digest> = layers.iter().map(|(_, d)| d.clone()).collect();
    let chains = kiln_layers::chain_ids(&diff_ids);
    let unpacked = chains.iter().all(|c| store.has_snapshot(c));
    if !unpacked && layers.iter().any(|(l, _)| !store.has_blob(&l.digest)) {
        // Pulled without its layers: they are fetched when needed.
        opts.events.step_done(&event, &StepOutcome::Done);
        return Ok(StageOutput {
            layers,
            snapshots: chains.iter().map(|c| store.snapshot_path(c)).collect(),
            history: image.config.history.clone(),
        });
    }
    let snapshots = match store.prepare_snapshots(&image, opts.reporter) {
        Ok(s) => s,
        Err(e) if canceled() => {
            opts.events.step_done(&event, &StepOutcome::Canceled);
            return Err(e.into());
        }
        Err(e) => {
            opts.events
                .step_done(&event, &StepOutcome::Failed(e.to_string()));
            return Err(e.into());
        }
    };
    let outcome = if unpacked {
        StepOutcome::Cached
    } else {
        StepOutcome::Done
    };
    opts.events.step_done(&event, &outcome);
    Ok(StageOutput {
        layers,
        snapshots,
        history: image.config.history.clone(),
    })
}

/// How a step's progress line ends (a step that failed once kiln was
/// interrupted was canceled: its failure is the interruption's doing).
fn step_outcome(step: &Step, result: &Result<bool, SolveError>) -> StepOutcome {
    match result {
        Ok(true) => StepOutcome::Cached,
        Ok(false) => StepOutcome::Done,
        Err(SolveError::Canceled) => StepOutcome::Canceled,
        Err(_) if canceled() => StepOutcome::Canceled,
        Err(SolveError::RunFailed { code, .. }) => {
            let command = match &step.kind {
                StepKind::Run(r) => r.argv.join(" "),
                _ => step.instruction.clone(),
            };
            StepOutcome::Failed(format!(
                "process \"{}\" did not complete successfully: exit code: {code}",
                shorten(&command)
            ))
        }
        Err(e) => StepOutcome::Failed(e.to_string()),
    }
}

/// The stage's history: the base's entries, then the plan's with times
/// settled. Times come from when each layer was first made
/// (kept in the cache record), so a fully cached rebuild gives the same
/// config and image id; an entry without a layer takes the time of the step
/// before it (or, before any step, the first step's; else the base's).
fn settled_history(
    build: &Build<'_>,
    sp: &crate::plan::StagePlan,
    base: &[kiln_layers::oci::History],
    progress: &StageProgress,
) -> Vec<kiln_layers::oci::History> {
    let mut history = base.to_vec();
    history.truncate(sp.base_history);
    let base_time = history
        .iter()
        .rev()
        .find_map(|h| h.created.as_deref().and_then(parse_rfc3339));
    let mut current = progress
        .step_times
        .values()
        .next()
        .copied()
        .or(base_time)
        .unwrap_or_else(now_secs);
    for (i, entry) in sp.image.history.iter().enumerate().skip(sp.base_history) {
        let mut entry = entry.clone();
        if let Some(t) = progress.step_times.get(&i) {
            current = *t;
        }
        if entry.created.is_none() {
            entry.created = Some(rfc3339(build.opts.source_date_epoch.unwrap_or(current)));
        }
        history.push(entry);
    }
    history
}
