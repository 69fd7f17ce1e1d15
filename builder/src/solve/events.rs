//! Build progress as the library reports it ([`BuildEvents`]); only the CLI
//! draws.

/// One step of a build as progress shows it: BuildKit's `[stage n/total]`
/// prefix. `number` counts the stage's FROM as 1 (BuildKit's numbering), so
/// a stage's first RUN/COPY/WORKDIR is 2.
#[derive(Debug, Clone)]
pub struct StepEvent<'a> {
    /// Index of the stage in the Dockerfile.
    pub stage_index: usize,
    /// The stage's name, `stage-N` for an unnamed stage of a multi-stage
    /// Dockerfile, empty for a single unnamed stage (BuildKit prints `[2/3]`).
    pub stage: &'a str,
    pub number: usize,
    pub total: usize,
    /// The Dockerfile line (1-based), 0 for none.
    pub line: usize,
    pub instruction: &'a str,
}

impl StepEvent<'_> {
    /// `[build 2/3]` or `[2/3]`, with the index padded to the total's width
    /// as BuildKit does (`[ 2/12]`).
    pub fn prefix(&self) -> String {
        let width = self.total.to_string().len();
        if self.stage.is_empty() {
            format!("[{:>width$}/{}]", self.number, self.total)
        } else {
            format!("[{} {:>width$}/{}]", self.stage, self.number, self.total)
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// Ran (or, for FROM, prepared) now.
    Done,
    /// Reused from the build cache (for FROM: already unpacked).
    Cached,
    /// Failed with this message.
    Failed(String),
    /// Stopped, or never finished, because kiln was interrupted
    /// (BuildKit's `CANCELED`).
    Canceled,
}

/// Build progress, for the CLI to draw. Steps of different stages may
/// interleave (stages run in parallel); within a stage they are in order.
pub trait BuildEvents: Sync {
    fn step_started(&self, step: &StepEvent<'_>);
    fn step_done(&self, step: &StepEvent<'_>, outcome: &StepOutcome);
    /// A line a RUN step printed (stdout and stderr, interleaved). Ignored
    /// unless the implementor draws it: the library itself never prints.
    fn step_output(&self, _step: &StepEvent<'_>, _line: &str) {}
    /// A step of the build's own (BuildKit's `[internal] load build
    /// context`, `exporting to image`): what it did, and how long it took.
    fn internal(&self, _name: &str, _lines: &[String], _seconds: f64) {}
    /// A warning about the Dockerfile `file` (an unused build arg, …).
    fn warning(&self, _file: &str, _warning: &crate::plan::PlanWarning) {}
    /// A warning about the build itself, not a Dockerfile line (a cache
    /// that cannot be used).
    fn build_warning(&self, _message: &str) {}
    /// A warning about a step as it runs (`COPY --chown` naming a user the
    /// image lacks): BuildKit's warning on a vertex.
    fn step_warning(&self, _step: &StepEvent<'_>, _message: &str) {}
}

/// Prints nothing.
pub struct NoEvents;

impl BuildEvents for NoEvents {
    fn step_started(&self, _: &StepEvent<'_>) {}
    fn step_done(&self, _: &StepEvent<'_>, _: &StepOutcome) {}
    fn step_output(&self, _: &StepEvent<'_>, _: &str) {}
}
