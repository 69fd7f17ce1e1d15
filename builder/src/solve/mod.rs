//! The back half of a build: executing a [`Plan`] against the store.
//!
//! Each stage starts, on a thread of its own, as soon as the stages it
//! depends on are done (no waiting for unrelated stages);
//! inside a stage the steps run in order. Each step gets an empty upper dir
//! over its parent's snapshots: RUN runs in the embedded runtime on that
//! overlay, COPY/ADD and WORKDIR write into it with [`crate::copy`]. The
//! upper dir is then diffed into a layer blob (overlay whiteouts become OCI
//! ones) and kept as the next snapshot, named by its chain id. A step whose
//! cache key has a record in the store reuses that layer and snapshot
//! without running anything; an upper dir left empty makes the empty
//! layer (a tar of two zero blocks), as BuildKit writes a layer for every
//! RUN, COPY and WORKDIR whether or not it changed anything (its
//! exporter's `normalizeLayersAndHistory` drops none).

mod cache_from;
mod copy_step;
mod copying;
mod events;
mod lazy;
mod mounts;
mod needed;
mod placed;
mod resolve;
mod run;
mod schedule;
mod shared;
mod stage;
mod step;
mod trash;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_layers::oci::{rfc3339, Descriptor, ImageConfig};
use kiln_layers::{Reporter, Store};
use kiln_parser::shorten;
use kiln_runtime::{HelperCommand, Network};

use crate::cache::{CacheSources, StepResult};
use crate::context::BuildContext;
use crate::copy::UrlDownloads;
use crate::plan::{Plan, PlanWarning, Step};
use crate::secrets::Secret;

use copy_step::{execute_copy, execute_workdir};
pub use events::{BuildEvents, NoEvents, StepEvent, StepOutcome};
pub use lazy::{BuildBlobs, ResultContent};
pub(crate) use mounts::secret_id;
use mounts::{mount_image_layers, run_mount, MountFrom, StepMount};
pub use resolve::{ImagePuller, StoreResolver};
use run::execute_run;
pub(crate) use run::{refuse_under_chroot, ChrootGiven};
use schedule::run_stages_when_ready;
pub use shared::SharedSteps;
use stage::{run_stage, StageOutput, StageProgress};
use step::run_step;
use trash::{discard_step_dir, Leftover};

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum SolveError {
    #[error(
        "line {line}: {}: process exited with code {code}{}",
        shorten(instruction),
        tail(last_lines)
    )]
    RunFailed {
        line: usize,
        instruction: String,
        code: i32,
        /// The last lines the process printed.
        last_lines: Vec<String>,
    },
    /// The instruction is shown cut when very long ([`shorten`]).
    #[error("line {line}: {}: {message}", shorten(instruction))]
    Step {
        line: usize,
        instruction: String,
        message: String,
    },
    #[error("store: {0}")]
    Store(#[from] kiln_layers::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("base image {0} was not resolved")]
    Unresolved(String),
    /// A layer the store lacks could not be fetched from where it is.
    #[error("fetching layer {blob}: {message}")]
    Fetch { blob: String, message: String },
    /// A `--cache-from` source failed to give what it had promised (it is
    /// dropped; the solver builds again without it).
    #[error("{0}")]
    CacheSourceFailed(String),
    #[error("stage {0} failed before it finished")]
    StageMissing(usize),
    /// kiln was interrupted ([`kiln_runtime::interrupt::cancel_runs`]):
    /// running containers were killed and no further step started.
    #[error("build canceled")]
    Canceled,
}

/// Whether the build is to stop: kiln was interrupted and its runs
/// canceled ([`kiln_runtime::interrupt`]).
fn canceled() -> bool {
    kiln_runtime::interrupt::runs_canceled()
}

fn tail(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    format!("\nlast output:\n  {}", lines.join("\n  "))
}

/// How many output lines a failed RUN reports.
const TAIL_LINES: usize = 10;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SolveError + '_ {
    move |source| SolveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How to build.
pub struct SolveOptions<'a> {
    /// Ignore the build cache (results are still recorded).
    pub no_cache: bool,
    /// Ignore the build cache in these stages only (`--no-cache-filter`).
    pub no_cache_stages: BTreeSet<usize>,
    /// Sets every `created` time (the image's, its history's).
    pub source_date_epoch: Option<i64>,
    /// Clamps the mtimes of the files in the layers the build makes (the
    /// epoch, with an image output's `rewrite-timestamp=true`, as
    /// BuildKit's exporter rewrites them; step keys are keyed by it,
    /// `crate::plan::key_by_layer_epoch`).
    pub layer_epoch: Option<i64>,
    /// RUN's network unless it says `--network=none|host`.
    pub network: Network,
    /// Private networks kept between this solve's RUNs (see
    /// [`kiln_runtime::NetworkPool`]); `None`: a new one for every RUN.
    pub networks: Option<std::sync::Arc<kiln_runtime::NetworkPool>>,
    /// How a RUN's root filesystem is made: overlay, or a copy where
    /// overlay cannot be mounted on the store's filesystem.
    pub snapshotter: kiln_runtime::Snapshotter,
    /// chroot isolation (no namespace can be made): each RUN runs chrooted
    /// into its copied root filesystem (`snapshotter` is then `Copy`),
    /// with nothing mounted; a RUN that needs a mount is refused.
    pub chroot: bool,
    /// How the runtime re-executes kiln as its helper.
    pub helper: HelperCommand,
    /// Where ADD URLs come from: the build's downloads, the same the cache
    /// keys were computed with
    /// ([`crate::plan::compute_cache_keys`] with [`crate::plan::RemoteSources`]), so a URL fetched for
    /// its key is not fetched again. A step served from the cache fetches
    /// nothing.
    pub downloads: Option<&'a UrlDownloads<'a>>,
    pub events: &'a dyn BuildEvents,
    pub reporter: &'a dyn Reporter,
    /// Docker media types (schema 2) instead of OCI ones, for registries
    /// and tools that need them.
    pub docker_media_types: bool,
    /// `--secret id=ID,src=FILE|env=VAR`: what `RUN --mount=type=secret`
    /// can mount, by id (see [`crate::secrets`]). Never part of a cache key.
    pub secrets: BTreeMap<String, Secret>,
    /// `--ssh ID[=...]`: the agent sockets `RUN --mount=type=ssh` can reach
    /// (see [`crate::ssh`]). Never part of a cache key.
    pub ssh: crate::ssh::SshAgents,
    /// The files of `--build-context` named contexts (`COPY --from`,
    /// `RUN --mount=from=`, `FROM`), by name.
    pub named_contexts: Option<&'a crate::contexts::NamedContexts>,
    /// Every RUN's pids and memory limits (`--pids-limit`, `--memory`).
    /// Never part of a cache key.
    pub limits: kiln_runtime::Limits,
    /// The keys this solve shares with the other platforms' solves of a
    /// multi-platform build ([`SharedSteps`]); `None` for a lone solve.
    pub shared: Option<&'a SharedSteps>,
    /// Caches from elsewhere, asked for a step the store has no record of
    /// (`--cache-from`; see [`crate::cache`]).
    pub cache_from: Option<&'a CacheSources<'a>>,
    /// Put the result's steps into the image config (`--cache-to
    /// type=inline`).
    pub inline_cache: bool,
    /// What the result must have in the store (its layers' blobs, unless
    /// it is only pushed; its snapshots for a root filesystem output).
    pub result: ResultContent,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The manifest written to the store (not tagged).
    pub manifest: Descriptor,
    pub config: ImageConfig,
    pub layers: Vec<Descriptor>,
    /// The target stage's snapshots, bottom first (its root filesystem).
    pub snapshots: Vec<PathBuf>,
    /// Every step's result, stage by stage in build order (for cache
    /// exporters).
    pub steps: Vec<StepResult>,
    /// What the steps that ran warned of, in the order they did (a step
    /// taken from the cache warns of nothing).
    pub warnings: Vec<PlanWarning>,
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Runs the plan's needed stages and writes the target's image to the
/// store (untagged: the caller tags it, holding a [`Store::lease`] from
/// before this call until then, or a `prune` may collect the new manifest).
/// Cache keys must have been computed ([`crate::plan::compute_cache_keys`]).
pub fn solve(
    store: &Store,
    plan: &Plan,
    context: &BuildContext,
    resolver: &StoreResolver<'_>,
    opts: &SolveOptions<'_>,
) -> Result<BuiltImage, SolveError> {
    let _lease = store.lease()?;
    // What killed builds left (their scratch, partial blobs, unfinished
    // snapshots) goes to the trash now (renames); the collection that runs
    // after the build deletes it. A concurrent build's scratch is left
    // alone.
    match store.remove_dead_scratch() {
        Ok(freed) if freed.entries > 0 => tracing::info!(
            "moved {} leftovers of killed builds to the trash",
            freed.entries
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("removing leftovers of killed builds: {e}"),
    }
    // Made by the first step that runs (`create_dir_all`), if any.
    let work = store.lazy_scratch_dir("build");
    let build = Build {
        store,
        plan,
        context,
        resolver,
        opts,
        work: work.path(),
        warnings: Mutex::new(Vec::new()),
        context_copies: mounts::ContextCopies::default(),
    };
    let result = solve_needed(&build);
    // The blobs and records the steps left to threads of their own are in
    // place before the build returns, whether it failed or not; one that
    // could not be written fails it.
    let settled = store.settle_writes();
    // Renamed into the trash: this build deletes nothing itself.
    drop(work);
    match (result, settled) {
        (Ok(_), Err(e)) => Err(e.into()),
        (Err(failed), Err(e)) => {
            tracing::warn!("{e}");
            Err(failed)
        }
        (result, Ok(())) => result,
    }
}

/// What every stage and step of one build runs with.
struct Build<'a> {
    store: &'a Store,
    plan: &'a Plan,
    context: &'a BuildContext,
    resolver: &'a StoreResolver<'a>,
    opts: &'a SolveOptions<'a>,
    /// The build's scratch directory: each step's work dir is made in it.
    work: &'a Path,
    /// The steps' warnings so far ([`StepRun::warn`]).
    warnings: Mutex<Vec<PlanWarning>>,
    /// The context as read-only bind mounts show it, copied once a build.
    context_copies: mounts::ContextCopies,
}

/// One step being run: the build, the finished stages it may read, the
/// step, and its progress line.
struct StepRun<'a> {
    build: &'a Build<'a>,
    deps: &'a BTreeMap<usize, StageOutput>,
    step: &'a Step,
    event: &'a StepEvent<'a>,
}

impl StepRun<'_> {
    /// An error of this step, naming its line and instruction.
    fn error(&self, message: String) -> SolveError {
        SolveError::Step {
            line: self.step.line,
            instruction: self.step.instruction.clone(),
            message,
        }
    }

    /// A warning about this step: shown with its progress, and kept for
    /// the build's result (the metadata file's `buildx.build.warnings`).
    fn warn(&self, message: String) {
        self.build.opts.events.step_warning(self.event, &message);
        let warning = PlanWarning {
            line: Some(self.step.line),
            message,
        };
        if let Ok(mut warnings) = self.build.warnings.lock() {
            warnings.push(warning);
        }
    }
}

/// Runs the stages the build needs ([`needed`]); should a stage left out
/// be needed after all (a step expected from a cache was not), builds
/// again with every stage (what ran is in the store's cache by then).
fn solve_needed(build: &Build<'_>) -> Result<BuiltImage, SolveError> {
    let mut skipping = true;
    // Each failure drops a source: one more attempt than there are.
    let mut attempts_left = build.opts.cache_from.map_or(0, |s| s.len()) + 1;
    loop {
        let skip = match skipping {
            true => needed::skippable_stages(build),
            false => BTreeSet::new(),
        };
        if !skip.is_empty() {
            tracing::info!("stages {skip:?}: only steps taken from a cache read them; not run");
        }
        match solve_in(build, &skip) {
            Err(SolveError::StageMissing(index)) if skip.contains(&index) => {
                tracing::info!(
                    "stage {index} is needed after all; building again with every stage"
                );
                skipping = false;
            }
            Err(SolveError::CacheSourceFailed(why)) if attempts_left > 0 => {
                tracing::info!("{why}; building again without that cache");
                attempts_left -= 1;
            }
            other => return other,
        }
    }
}

/// Runs the stages but those in `skip`, then writes the target stage's
/// image.
fn solve_in(build: &Build<'_>, skip: &BTreeSet<usize>) -> Result<BuiltImage, SolveError> {
    let (store, plan, opts) = (build.store, build.plan, build.opts);
    let outputs: Mutex<BTreeMap<usize, StageOutput>> = Mutex::new(BTreeMap::new());
    let results: Mutex<BTreeMap<usize, Vec<StepResult>>> = Mutex::new(BTreeMap::new());
    run_stages_when_ready(plan, skip, |index| {
        let deps: BTreeMap<usize, StageOutput> =
            outputs.lock().map(|o| o.clone()).unwrap_or_default();
        let (out, steps) = run_stage(build, index, &deps)?;
        if let Ok(mut o) = outputs.lock() {
            o.insert(index, out);
        }
        if let Ok(mut r) = results.lock() {
            r.insert(index, steps);
        }
        Ok(())
    })?;
    let outputs = outputs.into_inner().unwrap_or_default();
    let mut results = results.into_inner().unwrap_or_default();
    let steps: Vec<StepResult> = plan
        .order
        .iter()
        .filter_map(|i| results.remove(i))
        .flatten()
        .collect();
    let target = outputs
        .get(&plan.target)
        .ok_or(SolveError::StageMissing(plan.target))?;
    lazy::complete_result(build, target)?;
    let sp = &plan.stages[plan.target];
    let mut config = sp.image.clone();
    config.rootfs.diff_ids = target.layers.iter().map(|(_, d)| d.clone()).collect();
    config.history = target.history.clone();
    config.created = Some(match opts.source_date_epoch {
        Some(epoch) => rfc3339(epoch),
        None => config
            .history
            .last()
            .and_then(|h| h.created.clone())
            .unwrap_or_else(|| rfc3339(now_secs())),
    });
    // Every layer gets the family's media type (a base image pulled with
    // the other family's types included), as BuildKit's exporter does.
    let layers: Vec<Descriptor> = target
        .layers
        .iter()
        .map(|(d, _)| {
            let mut d = d.clone();
            d.media_type = layer_media_type(&d.media_type, opts.docker_media_types).to_string();
            d
        })
        .collect();
    if opts.inline_cache {
        let image: Vec<(Descriptor, kiln_layers::Digest)> = layers
            .iter()
            .cloned()
            .zip(config.rootfs.diff_ids.iter().cloned())
            .collect();
        config.extra.insert(
            crate::cache::format::INLINE_KEY.to_string(),
            crate::cache::inline_metadata(plan, &steps, &image),
        );
    }
    let manifest = if opts.docker_media_types {
        write_docker_image(store, &config, &layers)?
    } else {
        store.write_image(&config, &layers)?
    };
    Ok(BuiltImage {
        manifest,
        config,
        layers,
        snapshots: target.snapshots.clone(),
        steps,
        warnings: build.warnings.lock().map(|w| w.clone()).unwrap_or_default(),
    })
}

fn layer_media_type(current: &str, docker: bool) -> &str {
    use kiln_layers::media::*;
    match (current, docker) {
        (OCI_LAYER, true) => DOCKER_LAYER,
        (OCI_LAYER_GZIP, true) => DOCKER_LAYER_GZIP,
        (OCI_LAYER_ZSTD, true) => DOCKER_LAYER_ZSTD,
        (DOCKER_LAYER, false) => OCI_LAYER,
        (DOCKER_LAYER_GZIP, false) => OCI_LAYER_GZIP,
        (DOCKER_LAYER_ZSTD, false) => OCI_LAYER_ZSTD,
        (other, _) => other,
    }
}

/// A Docker schema 2 manifest and config for the image.
fn write_docker_image(
    store: &Store,
    config: &ImageConfig,
    layers: &[Descriptor],
) -> Result<Descriptor, SolveError> {
    use kiln_layers::media::{DOCKER_CONFIG, DOCKER_MANIFEST};
    Ok(store.write_config_and_manifest((DOCKER_CONFIG, DOCKER_MANIFEST), config, layers)?)
}
