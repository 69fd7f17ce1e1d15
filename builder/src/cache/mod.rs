//! Build cache that travels (`--cache-from`, `--cache-to`): the seams
//! through which the solver consults caches from elsewhere when the store
//! has no record for a step, and through which a finished build hands its
//! steps' results to cache exporters.
//!
//! Where such a cache lives — a registry, an OCI layout, an image's config
//! — is the concern of the kiln-cache crate, which implements
//! [`CacheSource`] and [`CacheExporter`]; what it holds is [`mod@format`]
//! (docs/cache.md). The solver's side:
//!
//! - A step whose key has no usable record in the store is looked up in
//!   each source in turn ([`CacheSources`]); a hit makes the step's layer
//!   the source's blob (a compressed one, usually) without running it.
//! - A source that fails (a blob missing or damaged, a registry down) is
//!   dropped for the rest of the build with one warning, and the build
//!   goes on without it: the step is run, or found in the next source.
//!   Everything a source provides is verified as the store verifies a
//!   pull (blob digests, diff ids of the unpacked content), so a broken
//!   cache costs time, never a wrong image.
//! - Every step's result (its key, when its layer was made, the layer) is
//!   collected ([`StepResult`]) for the exporters ([`CacheExport`]):
//!   `mode=min` exports the steps whose layers are in the result, `max`
//!   every step of every stage built.
//!
//! Cache mounts (`RUN --mount=type=cache`) stay in the store: they are
//! never exported or imported, as in BuildKit.

pub mod format;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use kiln_layers::oci::Descriptor;
use kiln_layers::{Digest, Reporter, Store};

use crate::plan::{BaseSource, Plan};
use crate::session::RemoteError;
use crate::solve::BuildEvents;

/// A step's result as a cache from elsewhere has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedStep {
    /// When the step's layer was first made (seconds since the epoch).
    pub created: i64,
    /// None: the step changed no file.
    pub layer: Option<CachedLayer>,
}

/// A layer in a cache: the blob as the cache holds it and its diff id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedLayer {
    pub blob: Descriptor,
    pub diff_id: Digest,
}

/// A cache to take step results from (`--cache-from`).
pub trait CacheSource: Sync {
    /// The cache as messages name it (`registry cache REF`).
    fn name(&self) -> String;
    /// The result of the step with `key`, if the cache has one.
    fn lookup(&self, key: &Digest) -> Option<CachedStep>;
    /// Puts the blob of a layer [`CacheSource::lookup`] gave into the store
    /// (verified there, as every blob is), reporting progress its own way.
    fn fetch(&self, store: &Store, blob: &Descriptor) -> Result<(), RemoteError>;
    /// The blob of a layer this source gave is part of an image that is
    /// only pushed, and stays where it is: make sure it is there, and
    /// note where, so that the push mounts it (a registry source). An
    /// error drops the source. By default the blob is fetched.
    fn keep_lazy(&self, store: &Store, blob: &Descriptor) -> Result<(), RemoteError> {
        self.fetch(store, blob)
    }
    /// A layer of this source's was taken, its content left where it is:
    /// note where, if that helps a later push (a registry source records
    /// the blob's repository, which a push to that registry mounts from).
    /// Nothing by default.
    fn taken(&self, _store: &Store, _blob: &Descriptor) {}
}

/// Where a blob the store lacks comes from: a layer taken from a cache, or
/// one of an image pulled without its layers.
pub trait BlobProvider {
    /// Puts `blob` into the store.
    fn provide(&self, store: &Store, blob: &Descriptor) -> Result<(), RemoteError>;
}

/// The sources of one build, tried in order; a source that failed is
/// skipped from then on, after one warning.
pub struct CacheSources<'a> {
    sources: &'a [Box<dyn CacheSource>],
    failed: Vec<AtomicBool>,
    events: &'a dyn BuildEvents,
    /// Layer blobs taken from a source without their content: blob
    /// digest → source.
    taken: Mutex<BTreeMap<Digest, usize>>,
}

impl<'a> CacheSources<'a> {
    pub fn new(sources: &'a [Box<dyn CacheSource>], events: &'a dyn BuildEvents) -> Self {
        CacheSources {
            sources,
            failed: sources.iter().map(|_| AtomicBool::new(false)).collect(),
            events,
            taken: Mutex::new(BTreeMap::new()),
        }
    }

    /// Notes that `blob` was taken from source `index`, its content left
    /// there until needed.
    pub(crate) fn note_taken(&self, blob: &Digest, index: usize) {
        if let Ok(mut taken) = self.taken.lock() {
            taken.entry(blob.clone()).or_insert(index);
        }
    }

    /// The source `blob` was taken from, if it was.
    pub(crate) fn taken_from(&self, blob: &Digest) -> Option<usize> {
        self.taken.lock().ok().and_then(|t| t.get(blob).copied())
    }

    /// The first source (not failed) with a result for `key`: its index
    /// and the result.
    pub(crate) fn lookup(&self, key: &Digest) -> Option<(usize, CachedStep)> {
        self.sources
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.has_failed(*i))
            .find_map(|(i, source)| source.lookup(key).map(|step| (i, step)))
    }

    /// How many sources there are.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// Whether there is no source.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    pub(crate) fn has_failed(&self, index: usize) -> bool {
        self.failed
            .get(index)
            .is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// Source `index`, unless it failed.
    pub(crate) fn source(&self, index: usize) -> Option<&dyn CacheSource> {
        (!self.has_failed(index))
            .then(|| self.sources.get(index).map(|s| s.as_ref()))
            .flatten()
    }

    /// Drops source `index` for the rest of the build; the first failure
    /// of each source is a warning.
    pub(crate) fn fail(&self, index: usize, why: &str) {
        let Some(flag) = self.failed.get(index) else {
            return;
        };
        if !flag.swap(true, Ordering::SeqCst) {
            let name = self.sources[index].name();
            let message = format!("{name}: {why}; building without it");
            tracing::warn!("{message}");
            self.events.build_warning(&message);
        }
    }
}

/// What one step of a build left, as a cache exporter takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepResult {
    /// The stage's index in the plan.
    pub stage: usize,
    pub key: Digest,
    /// When its layer was first made (seconds since the epoch).
    pub created: i64,
    /// The layer as the store names it (a plain tar when built here; as it
    /// came when taken from elsewhere) and its diff id; none when the step
    /// changed no file.
    pub layer: Option<(Descriptor, Digest)>,
}

/// `mode=` of a cache export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// The steps whose layers make up the result (BuildKit's default).
    #[default]
    Min,
    /// Every step of every stage built.
    Max,
}

/// The results of a finished build, for its exporters.
#[derive(Debug, Clone, Default)]
pub struct CacheExport {
    /// Every step built, in build order, each with whether its stage is
    /// one of the result's: the target and the stages it is built `FROM`,
    /// transitively (what `mode=min` exports).
    steps: Vec<(StepResult, bool)>,
}

impl CacheExport {
    pub fn new(plan: &Plan, steps: Vec<StepResult>) -> CacheExport {
        let result = result_stages(plan);
        CacheExport {
            steps: steps
                .into_iter()
                .map(|step| {
                    let in_result = result.contains(&step.stage);
                    (step, in_result)
                })
                .collect(),
        }
    }

    /// The exports of a build's platforms as one cache, as BuildKit exports
    /// a build for several platforms: each platform's steps in turn (their
    /// keys differ where the platform matters); a step several platforms
    /// share (one key: a `FROM --platform=$BUILDPLATFORM` stage's) once,
    /// in the result when it is in any platform's.
    pub fn merged(parts: Vec<CacheExport>) -> CacheExport {
        let mut steps: Vec<(StepResult, bool)> = Vec::new();
        let mut at: BTreeMap<Digest, usize> = BTreeMap::new();
        for (step, in_result) in parts.into_iter().flat_map(|part| part.steps) {
            match at.get(&step.key) {
                Some(&index) => steps[index].1 |= in_result,
                None => {
                    at.insert(step.key.clone(), steps.len());
                    steps.push((step, in_result));
                }
            }
        }
        CacheExport { steps }
    }

    /// The steps `mode` exports, in build order.
    pub fn select(&self, mode: CacheMode) -> Vec<&StepResult> {
        self.steps
            .iter()
            .filter(|(_, in_result)| mode == CacheMode::Max || *in_result)
            .map(|(step, _)| step)
            .collect()
    }
}

/// The target stage and the stages it is built from (`FROM <stage>`).
pub fn result_stages(plan: &Plan) -> BTreeSet<usize> {
    let mut stages = BTreeSet::new();
    let mut current = Some(plan.target);
    while let Some(index) = current.filter(|i| stages.insert(*i)) {
        current = match plan.stages.get(index).map(|s| &s.base) {
            Some(BaseSource::Stage(base)) => Some(*base),
            _ => None,
        };
    }
    stages
}

/// A place to export a build's cache to (`--cache-to`).
pub trait CacheExporter: Sync {
    /// What it does, as progress shows it (`exporting cache to registry REF`).
    fn name(&self) -> String;
    /// `ignore-error=true`: a failed export is a warning, not a failed build.
    fn ignore_error(&self) -> bool;
    /// Exports the steps it selects; returns the lines progress shows. A
    /// layer blob the store lacks (taken from a cache, or of a base pulled
    /// without its layers) comes from `blobs` when the export needs it.
    fn export(
        &self,
        store: &Store,
        cache: &CacheExport,
        blobs: &dyn BlobProvider,
        reporter: &dyn Reporter,
    ) -> Result<Vec<String>, RemoteError>;
}

/// A build's cache from and to elsewhere.
#[derive(Default)]
pub struct RemoteCache {
    /// `--cache-from`, in order, each loaded already (one that could not
    /// be is left out, with a warning).
    pub sources: Vec<Box<dyn CacheSource>>,
    /// `--cache-to` other than inline.
    pub exporters: Vec<Box<dyn CacheExporter>>,
    /// `--cache-to type=inline`: the result's steps in the image config
    /// ([`format::INLINE_KEY`]).
    pub inline: bool,
}

/// The inline cache metadata of an image whose layers are `image`: its
/// result stages' steps, as a JSON value for the config.
pub(crate) fn inline_metadata(
    plan: &Plan,
    steps: &[StepResult],
    image: format::ImageLayers<'_>,
) -> serde_json::Value {
    let export = CacheExport::new(plan, steps.to_vec());
    let config = format::CacheConfig::inline(export.select(CacheMode::Min), image);
    serde_json::to_value(&config).unwrap_or(serde_json::Value::Null)
}

/// Steps by key, as a source built from a cache config keeps them.
pub type StepsByKey = BTreeMap<Digest, CachedStep>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{plan, BuildOptions, OfflineResolver};

    fn plan_of(dockerfile: &str) -> Plan {
        let ast = kiln_parser::parse(dockerfile, "Dockerfile").unwrap();
        let typed = kiln_parser::instructions::from_ast(&ast).unwrap();
        plan(&typed, &BuildOptions::default(), &OfflineResolver).unwrap()
    }

    fn step(stage: usize, name: &str) -> StepResult {
        StepResult {
            stage,
            key: Digest::of(name.as_bytes()),
            created: 1,
            layer: None,
        }
    }

    #[test]
    fn min_takes_the_target_and_the_stages_it_is_built_from() {
        // 0: tools (copied from), 1: base, 2: app FROM base (target).
        let plan = plan_of(
            "FROM scratch AS tools\nCOPY a /a\nFROM scratch AS base\nCOPY b /b\n\
             FROM base AS app\nCOPY --from=tools /a /a\n",
        );
        assert_eq!(result_stages(&plan), BTreeSet::from([1, 2]));
        let export = CacheExport::new(&plan, vec![step(0, "t"), step(1, "b"), step(2, "a")]);
        let keys =
            |mode| -> Vec<Digest> { export.select(mode).iter().map(|s| s.key.clone()).collect() };
        assert_eq!(keys(CacheMode::Min), [Digest::of(b"b"), Digest::of(b"a")]);
        assert_eq!(keys(CacheMode::Max).len(), 3);
    }

    /// Two platforms' exports as one: each platform's steps, a shared key
    /// once, in the result when it is in either platform's.
    #[test]
    fn merged_exports_keep_every_platform_and_a_shared_step_once() {
        let plan = plan_of(
            "FROM scratch AS tools\nCOPY a /a\nFROM scratch AS base\nCOPY b /b\n\
             FROM base AS app\nCOPY --from=tools /a /a\n",
        );
        // "t" (stage 0, not the result's) is shared; the other steps are
        // each platform's own. In the second, "t" is the result's, as if
        // that platform's target were built FROM it. "u" (stage 0 too) is
        // in neither platform's result.
        let amd64 = CacheExport::new(&plan, vec![step(0, "t"), step(0, "u"), step(1, "b-amd64")]);
        let mut arm64 = CacheExport::new(&plan, vec![step(0, "t"), step(2, "a-arm64")]);
        arm64.steps[0].1 = true;
        let merged = CacheExport::merged(vec![amd64, arm64]);
        let keys =
            |mode| -> Vec<Digest> { merged.select(mode).iter().map(|s| s.key.clone()).collect() };
        let digests = |names: &[&str]| -> Vec<Digest> {
            names.iter().map(|n| Digest::of(n.as_bytes())).collect()
        };
        assert_eq!(
            keys(CacheMode::Max),
            digests(&["t", "u", "b-amd64", "a-arm64"])
        );
        assert_eq!(keys(CacheMode::Min), digests(&["t", "b-amd64", "a-arm64"]));
    }
}
