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
//! without running anything; an upper dir left empty makes no layer (its
//! history entry says `empty_layer`, as BuildKit's exporter does).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_layers::diff::{write_layer, DiffOptions};
use kiln_layers::oci::{parse_rfc3339, rfc3339, Descriptor, ImageConfig, Platform};
use kiln_layers::store::{CacheRecord, Image};
use kiln_layers::{Compression, Digest, Reference, Reporter, Store};
use kiln_parser::shorten;
use kiln_runtime::{BindMount, HelperCommand, MemoryFile, Network, RunSpec, UpperDir};

use crate::context::BuildContext;
use crate::copy::{self, CopyOptions, UrlDownloads};
use crate::modes::Chmod;
use crate::plan::{
    BaseSource, CopyFrom, CopyStep, FoundImage, ImageLookup, ImageName, LookupError, MountImage,
    MountSource, Plan, RunMount, RunStep, Step, StepKind,
};
use crate::rootfs::{DirTree, LayeredRootfs, SourceTree};
use crate::secrets::{Secret, SecretMount};
use crate::users::ChownSpec;
use kiln_parser::mount::MountType;

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
    #[error("stage {0} failed before it finished")]
    StageMissing(usize),
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

/// Pulls an image the store lacks; returns its manifest (or index)
/// descriptor. The CLI provides it (the builder speaks no HTTP).
pub type PullFn<'a> = dyn Fn(&Reference, &Platform) -> Result<Descriptor, String> + Sync + 'a;

/// Resolves base images to their config through the store's tags
/// (`index.json`), following an index to the platform's manifest, and
/// (given a [`PullFn`]) pulling what is missing. A stored image of another
/// platform than the one wanted is not used: it is pulled for that platform
/// (moby's builder checks the local image's platform the same way), or
/// refused when nothing can be pulled. Images resolved once are remembered
/// for the rest of the build, per reference and platform; the solver finds
/// them again by the manifest digest the plan recorded.
pub struct StoreResolver<'a> {
    /// None: no store exists (see [`StoreResolver::open_existing`]).
    store: Option<Store>,
    pull: Option<&'a PullFn<'a>>,
    /// Pull even when the store has the tag (`--pull`).
    always_pull: bool,
    /// Use a stored image whatever its platform (analysis only: explain
    /// and check report what the store has, and the
    /// InvalidBaseImagePlatform lint says when it is another platform).
    any_stored_platform: bool,
    /// (reference, normalized platform) → image.
    images: Mutex<HashMap<(Reference, String), Image>>,
}

impl<'a> StoreResolver<'a> {
    pub fn new(store: &Store, pull: Option<&'a PullFn<'a>>) -> Self {
        StoreResolver {
            store: Some(store.clone()),
            pull,
            always_pull: false,
            any_stored_platform: false,
            images: Mutex::new(HashMap::new()),
        }
    }

    /// Reads the store at `root`, if one exists there, and never pulls;
    /// without a store every image is unknown, and nothing is created
    /// (explain and check write nothing). A stored image is used whatever
    /// its platform.
    pub fn open_existing(root: &Path) -> Result<StoreResolver<'static>, kiln_layers::Error> {
        let store = if root.join("index.json").is_file() {
            Some(Store::open(root)?)
        } else {
            None
        };
        Ok(StoreResolver {
            store,
            pull: None,
            always_pull: false,
            any_stored_platform: true,
            images: Mutex::new(HashMap::new()),
        })
    }

    /// Pull base images even when the store has them (a tag may have moved).
    pub fn always_pull(mut self, yes: bool) -> Self {
        self.always_pull = yes;
        self
    }

    /// The image this resolver resolved to the manifest `digest` (what the
    /// plan recorded for a FROM, `COPY --from` or `RUN --mount from=`).
    fn resolved(&self, name: &ImageName, digest: Option<&Digest>) -> Result<Image, SolveError> {
        let unresolved = || SolveError::Unresolved(name.to_string());
        let digest = digest.ok_or_else(unresolved)?;
        let images = self.images.lock().map_err(|_| unresolved())?;
        images
            .values()
            .find(|image| &image.manifest_descriptor.digest == digest)
            .cloned()
            .ok_or_else(unresolved)
    }

    /// The stored image `reference` names, for `platform`: `Ok(None)` when
    /// the store lacks it or (unless [`Self::any_stored_platform`]) has it
    /// for another platform only, with the reason in `mismatch`.
    fn stored(
        &self,
        store: &Store,
        reference: &Reference,
        platform: &Platform,
        mismatch: &mut Option<String>,
    ) -> Result<Option<Image>, LookupError> {
        let Some(desc) = store.resolve(reference).map_err(LookupError::failed)? else {
            return Ok(None);
        };
        let image = match store.read_image(&desc, platform) {
            Ok(image) => image,
            Err(e @ kiln_layers::Error::NoMatchingPlatform { .. }) if !self.any_stored_platform => {
                *mismatch = Some(e.to_string());
                return Ok(None);
            }
            Err(e) => return Err(LookupError::failed(e)),
        };
        let config = &image.config;
        let stored = Platform {
            architecture: config.architecture.clone(),
            os: config.os.clone(),
            os_version: None,
            os_features: None,
            variant: config.variant.clone(),
        };
        // A config without an architecture says nothing to check against.
        let matches = config.architecture.is_empty() || platform.compatible_rank(&stored).is_some();
        if matches || self.any_stored_platform {
            return Ok(Some(image));
        }
        *mismatch = Some(format!(
            "the local store has it for platform {}, not {platform}",
            stored.normalized()
        ));
        Ok(None)
    }
}

impl ImageLookup for StoreResolver<'_> {
    /// Errors leave the reference out: the caller's message names it.
    fn lookup(&self, parsed: &Reference, platform: &Platform) -> Result<FoundImage, LookupError> {
        let platform = platform.normalized();
        let key = (parsed.clone(), platform.to_string());
        let remembered = self.images.lock().ok().and_then(|m| m.get(&key).cloned());
        let image = match remembered {
            // Already resolved in this build (another stage, COPY --from).
            Some(image) => image,
            None => {
                let Some(store) = &self.store else {
                    return Err(LookupError::NotFound("not in the local store".into()));
                };
                let mut mismatch = None;
                let local = if self.always_pull && self.pull.is_some() {
                    None
                } else {
                    self.stored(store, parsed, &platform, &mut mismatch)?
                };
                let image = match (local, self.pull) {
                    (Some(image), _) => image,
                    (None, Some(pull)) => {
                        let desc = pull(parsed, &platform).map_err(|e| {
                            LookupError::failed(match &mismatch {
                                Some(stored) => format!("{e} ({stored})"),
                                None => e,
                            })
                        })?;
                        store
                            .read_image(&desc, &platform)
                            .map_err(LookupError::failed)?
                    }
                    (None, None) => {
                        return Err(LookupError::NotFound(
                            mismatch.unwrap_or_else(|| "not in the local store".into()),
                        ))
                    }
                };
                if let Ok(mut images) = self.images.lock() {
                    images.insert(key, image.clone());
                }
                image
            }
        };
        Ok(FoundImage {
            reference: parsed.clone(),
            digest: Some(image.manifest_descriptor.digest),
            config: image.config,
        })
    }
}

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
}

/// Build progress, for the CLI to draw. Steps of different stages may
/// interleave (stages run in parallel); within a stage they are in order.
pub trait BuildEvents: Sync {
    fn step_started(&self, step: &StepEvent<'_>);
    fn step_done(&self, step: &StepEvent<'_>, outcome: &StepOutcome);
    /// A line a RUN step printed (stdout and stderr, interleaved). Ignored
    /// unless the implementor draws it: the library itself never prints.
    fn step_output(&self, _step: &StepEvent<'_>, _line: &str) {}
}

/// Prints nothing.
pub struct NoEvents;

impl BuildEvents for NoEvents {
    fn step_started(&self, _: &StepEvent<'_>) {}
    fn step_done(&self, _: &StepEvent<'_>, _: &StepOutcome) {}
    fn step_output(&self, _: &StepEvent<'_>, _: &str) {}
}

/// How to build.
pub struct SolveOptions<'a> {
    /// Ignore the build cache (results are still recorded).
    pub no_cache: bool,
    /// Clamps file mtimes in layers and sets every `created` time.
    pub source_date_epoch: Option<i64>,
    /// RUN's network unless it says `--network=none|host`.
    pub network: Network,
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
    /// Every RUN's pids and memory limits (`--pids-limit`, `--memory`).
    /// Never part of a cache key.
    pub limits: kiln_runtime::Limits,
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
}

#[derive(Debug, Clone)]
struct StageOutput {
    layers: Vec<(Descriptor, Digest)>,
    /// Bottom first.
    snapshots: Vec<PathBuf>,
    /// History with `created` and `empty_layer` settled.
    history: Vec<kiln_layers::oci::History>,
}

impl StageOutput {
    fn chain(&self) -> Option<Digest> {
        let diff_ids: Vec<Digest> = self.layers.iter().map(|(_, d)| d.clone()).collect();
        kiln_layers::chain_ids(&diff_ids).pop()
    }

    fn lowers_top_first(&self) -> Vec<PathBuf> {
        self.snapshots.iter().rev().cloned().collect()
    }
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
    // snapshots) goes to the trash now, and the trash is emptied while
    // this build runs; a concurrent build's scratch is left alone.
    match store.remove_dead_scratch() {
        Ok(freed) if freed.entries > 0 => tracing::info!(
            "moved {} leftovers of killed builds to the trash",
            freed.entries
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("removing leftovers of killed builds: {e}"),
    }
    let emptying = store.empty_trash_in_background();
    let work = store.scratch_dir("build")?;
    let result = solve_in(store, plan, context, resolver, opts, work.path());
    drop(work);
    empty_old_trash(store);
    let _ = emptying.join();
    result
}

/// Runs `run` for each of the plan's needed stages, on its own thread, as
/// soon as every stage it depends on has finished (a ready queue: a stage
/// never waits for unrelated slower ones). After the first failure no new
/// stage starts; the ones running are waited for and that error returned.
fn run_stages_when_ready<F>(plan: &Plan, run: F) -> Result<(), SolveError>
where
    F: Fn(usize) -> Result<(), SolveError> + Sync,
{
    let (finished_tx, finished_rx) = mpsc::channel::<(usize, Result<(), SolveError>)>();
    let mut pending: Vec<usize> = plan.order.clone();
    let mut done: BTreeSet<usize> = BTreeSet::new();
    let mut running = 0usize;
    let mut first_error: Option<SolveError> = None;
    std::thread::scope(|scope| {
        loop {
            if first_error.is_none() {
                let (ready, waiting): (Vec<usize>, Vec<usize>) = pending
                    .iter()
                    .partition(|s| plan.stages[**s].deps.iter().all(|d| done.contains(d)));
                pending = waiting;
                for index in ready {
                    running += 1;
                    let finished_tx = finished_tx.clone();
                    let run = &run;
                    scope.spawn(move || {
                        // A panic must still report, or the loop below would
                        // wait for this stage forever.
                        let result = std::panic::catch_unwind(AssertUnwindSafe(|| run(index)))
                            .unwrap_or_else(|_| {
                                Err(SolveError::Step {
                                    line: plan.stages[index].line,
                                    instruction: String::new(),
                                    message: "a build thread panicked".into(),
                                })
                            });
                        let _ = finished_tx.send((index, result));
                    });
                }
            }
            if running == 0 {
                break;
            }
            let Ok((index, result)) = finished_rx.recv() else {
                break;
            };
            running -= 1;
            match result {
                Ok(()) => {
                    done.insert(index);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    match pending.first() {
        Some(&stuck) => Err(SolveError::StageMissing(stuck)),
        None => Ok(()),
    }
}

fn solve_in(
    store: &Store,
    plan: &Plan,
    context: &BuildContext,
    resolver: &StoreResolver<'_>,
    opts: &SolveOptions<'_>,
    work: &Path,
) -> Result<BuiltImage, SolveError> {
    let outputs: Mutex<BTreeMap<usize, StageOutput>> = Mutex::new(BTreeMap::new());
    run_stages_when_ready(plan, |index| {
        let deps: BTreeMap<usize, StageOutput> =
            outputs.lock().map(|o| o.clone()).unwrap_or_default();
        let out = run_stage(store, plan, index, context, resolver, opts, work, &deps)?;
        if let Ok(mut o) = outputs.lock() {
            o.insert(index, out);
        }
        Ok(())
    })?;
    let outputs = outputs.into_inner().unwrap_or_default();
    let target = outputs
        .get(&plan.target)
        .ok_or(SolveError::StageMissing(plan.target))?;
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
    let config_desc = store.put_json(DOCKER_CONFIG, config)?;
    let manifest = kiln_layers::Manifest {
        schema_version: 2,
        media_type: Some(DOCKER_MANIFEST.to_string()),
        artifact_type: None,
        config: config_desc,
        layers: layers.to_vec(),
        subject: None,
        annotations: BTreeMap::new(),
    };
    let mut desc = store.put_json(DOCKER_MANIFEST, &manifest)?;
    desc.platform = Some(Platform {
        architecture: config.architecture.clone(),
        os: config.os.clone(),
        os_version: config.os_version.clone(),
        os_features: None,
        variant: config.variant.clone(),
    });
    Ok(desc)
}

/// The stage's name in progress lines, as BuildKit prints it: its `AS`
/// name, `stage-N` when unnamed in a multi-stage Dockerfile, else nothing.
fn stage_label(plan: &Plan, index: usize) -> String {
    let sp = &plan.stages[index];
    match &sp.name {
        Some(n) => n.clone(),
        None if plan.stages.len() > 1 => format!("stage-{index}"),
        None => String::new(),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_stage(
    store: &Store,
    plan: &Plan,
    index: usize,
    context: &BuildContext,
    resolver: &StoreResolver<'_>,
    opts: &SolveOptions<'_>,
    work: &Path,
    deps: &BTreeMap<usize, StageOutput>,
) -> Result<StageOutput, SolveError> {
    let sp = &plan.stages[index];
    let label = stage_label(plan, index);
    // BuildKit counts FROM as the stage's first command.
    let total = sp.steps.len() + 1;
    let mut out = match &sp.base {
        BaseSource::Scratch => StageOutput {
            layers: Vec::new(),
            snapshots: Vec::new(),
            history: Vec::new(),
        },
        BaseSource::Stage(i) => deps.get(i).cloned().ok_or(SolveError::StageMissing(*i))?,
        BaseSource::Image { reference, digest } => {
            let image = resolver.resolved(reference, digest.as_ref())?;
            let instruction = format!("FROM {reference}@{}", image.manifest_descriptor.digest);
            let event = StepEvent {
                stage_index: index,
                stage: &label,
                number: 1,
                total,
                line: sp.line,
                instruction: &instruction,
            };
            opts.events.step_started(&event);
            let layers = image.layers()?;
            let diff_ids: Vec<Digest> = layers.iter().map(|(_, d)| d.clone()).collect();
            let unpacked = kiln_layers::chain_ids(&diff_ids)
                .iter()
                .all(|c| store.has_snapshot(c));
            let snapshots = match store.prepare_snapshots(&image, opts.reporter) {
                Ok(s) => s,
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
            StageOutput {
                layers,
                snapshots,
                history: image.config.history.clone(),
            }
        }
    };
    // The plan's history from here on: entries after the base's.
    let planned_history = &sp.image.history;
    let mut history = out.history.clone();
    history.truncate(sp.base_history);
    let mut empty_steps: Vec<usize> = Vec::new();
    let mut step_times: BTreeMap<usize, i64> = BTreeMap::new();
    for (n, step) in sp.steps.iter().enumerate() {
        let event = StepEvent {
            stage_index: index,
            stage: &label,
            number: n + 2,
            total,
            line: step.line,
            instruction: &step.instruction,
        };
        opts.events.step_started(&event);
        let result = run_step(
            store,
            step,
            &event,
            context,
            resolver,
            opts,
            work,
            deps,
            &mut out,
            &mut empty_steps,
            &mut step_times,
        );
        let outcome = match &result {
            Ok(true) => StepOutcome::Cached,
            Ok(false) => StepOutcome::Done,
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
        };
        opts.events.step_done(&event, &outcome);
        result?;
    }
    // Times come from when each layer was first made (kept in the cache
    // record), so a fully cached rebuild gives the same config and image
    // id; an entry without a layer takes the time of the step before it
    // (or, before any step, the first step's; else the base's).
    let base_time = history
        .iter()
        .rev()
        .find_map(|h| h.created.as_deref().and_then(parse_rfc3339));
    let mut current = step_times
        .values()
        .next()
        .copied()
        .or(base_time)
        .unwrap_or_else(now_secs);
    for (i, entry) in planned_history.iter().enumerate().skip(sp.base_history) {
        let mut entry = entry.clone();
        if let Some(t) = step_times.get(&i) {
            current = *t;
        }
        if entry.created.is_none() {
            entry.created = Some(rfc3339(opts.source_date_epoch.unwrap_or(current)));
        }
        if empty_steps.contains(&i) {
            entry.empty_layer = Some(true);
        }
        history.push(entry);
    }
    out.history = history;
    Ok(out)
}

/// Runs (or reuses) one step; returns whether it came from the cache.
#[allow(clippy::too_many_arguments)]
fn run_step(
    store: &Store,
    step: &Step,
    event: &StepEvent<'_>,
    context: &BuildContext,
    resolver: &StoreResolver<'_>,
    opts: &SolveOptions<'_>,
    work: &Path,
    deps: &BTreeMap<usize, StageOutput>,
    out: &mut StageOutput,
    empty_steps: &mut Vec<usize>,
    step_times: &mut BTreeMap<usize, i64>,
) -> Result<bool, SolveError> {
    let step_err = |message: String| SolveError::Step {
        line: step.line,
        instruction: step.instruction.clone(),
        message,
    };
    let key = step.cache_key.clone();
    if let (Some(key), false) = (&key, opts.no_cache) {
        if let Some(record) = store.cache_get(key)? {
            if reuse(store, &record, out, opts, step.history_index, empty_steps)? {
                let created = record
                    .data
                    .get("created")
                    .and_then(|v| v.as_i64())
                    .unwrap_or_else(now_secs);
                step_times.insert(step.history_index, created);
                tracing::info!("line {}: CACHED {}", step.line, shorten(&step.instruction));
                return Ok(true);
            }
            tracing::info!("line {}: cache record unusable, running", step.line);
        }
    }
    let why = match (&key, opts.no_cache) {
        (None, _) => "no cache key".to_string(),
        (Some(_), true) => "--no-cache".to_string(),
        (Some(key), false) => format!("cache miss {key}"),
    };
    tracing::info!("line {}: {why}: {}", step.line, shorten(&step.instruction));
    let dir = work.join(unique_name("step"));
    let upper = dir.join("upper");
    std::fs::create_dir_all(&upper).map_err(io_err(&upper))?;
    let rootfs = LayeredRootfs::new(&upper, out.lowers_top_first());
    match &step.kind {
        StepKind::Run(r) => execute_run(
            store, resolver, event, step, r, &rootfs, context, opts, &dir, deps,
        )?,
        StepKind::Copy(c) => {
            execute_copy(store, step, c, &rootfs, context, resolver, opts, &dir, deps)?
        }
        StepKind::Workdir(w) => {
            let owner = match &w.user {
                Some(u) => Some(
                    ChownSpec::parse(u)
                        .resolve(&rootfs)
                        .map_err(|e| step_err(e.to_string()))?,
                ),
                None => None,
            };
            copy::mkdir_all(&rootfs, &w.path, 0o755, owner, None)
                .map_err(|e| step_err(e.to_string()))?;
        }
    }
    tracing::debug!("line {}: step finished, packing its layer", step.line);
    let now = now_secs();
    step_times.insert(step.history_index, now);
    let is_empty = std::fs::read_dir(&upper)
        .map_err(io_err(&upper))?
        .next()
        .is_none();
    // What a duplicate of this step's upper dir would hold on disk if it is
    // parked: the tar's bytes plus a block and an inode's worth an entry.
    let mut parked_bytes = 0;
    let record = if is_empty {
        empty_steps.push(step.history_index);
        CacheRecord {
            blobs: Vec::new(),
            chain_id: out.chain(),
            data: serde_json::json!({ "empty": true, "created": now }),
        }
    } else {
        let diff_options = DiffOptions {
            source_date_epoch: opts.source_date_epoch,
            overlay_whiteouts: true,
        };
        // Packing is part of the step's own progress line: no separate item.
        // Layers are stored as plain tar (the digest is the diff id); they
        // are compressed when they leave the store (`kiln_layers::compressed`).
        let blob = write_layer(
            store,
            &upper,
            Compression::None,
            &diff_options,
            &kiln_layers::NoProgress,
        )?;
        parked_bytes = blob
            .descriptor
            .size
            .saturating_add(blob.entries.saturating_mul(4096));
        let chain = match out.chain() {
            None => blob.diff_id.clone(),
            Some(parent) => Digest::of(format!("{parent} {}", blob.diff_id).as_bytes()),
        };
        let snapshot = store.snapshot_path(&chain);
        if !store.has_snapshot(&chain) {
            // The upper dir already has overlay whiteouts: it is the
            // snapshot. Should moving it fail, the layer is unpacked.
            if let Err(e) = store.adopt_snapshot(&upper, &chain) {
                tracing::debug!("{}: {e}; unpacking the layer instead", upper.display());
                store.unpack_snapshot(
                    &blob.descriptor,
                    &blob.diff_id,
                    &chain,
                    out.lowers_top_first(),
                    opts.reporter,
                )?;
            }
        }
        out.layers
            .push((blob.descriptor.clone(), blob.diff_id.clone()));
        out.snapshots.push(snapshot);
        CacheRecord {
            blobs: vec![blob.descriptor.digest.clone()],
            chain_id: Some(chain),
            data: serde_json::json!({
                "created": now,
                "diff_id": blob.diff_id.to_string(),
                "media_type": blob.descriptor.media_type,
                "size": blob.descriptor.size,
            }),
        }
    };
    discard_step_dir(store, &dir, &upper, parked_bytes);
    if let Some(key) = key {
        store.cache_put(&key, &record)?;
    }
    Ok(false)
}

/// How many bytes of duplicate upper dirs the store's trash (see
/// [`discard_step_dir`]) keeps; a build's end removes the oldest beyond it.
const TRASH_KEEP_BYTES: u64 = 1 << 30;
const TRASH_PREFIX: &str = "trash-";

/// Removes a step's work dir. An upper dir still there is a duplicate of a
/// snapshot that already existed (a `--no-cache` rerun that produced the
/// same chain id): it is renamed into `builds/trash-<secs>-<bytes>-…`
/// instead of being deleted now. Deleting a 20,000-file tree frees 20,000
/// inodes at once, and on ext4 without a journal every file created while
/// their inode table blocks stay cached then skips the freed inodes one by
/// one (`recently_deleted()`): a rerun of a 20,000-file COPY went from 4.6 s
/// to 12 s and more, growing with each rerun. So, like BuildKit's cache GC
/// with its keep-storage limit, kiln keeps the trash until it exceeds
/// [`TRASH_KEEP_BYTES`] (checked at the end of a build) or `kiln prune`
/// runs (it lives under `builds/`). `bytes` estimates its disk use, so
/// that many small files count for their blocks and inodes.
fn discard_step_dir(store: &Store, dir: &Path, upper: &Path, bytes: u64) {
    let leftover = std::fs::read_dir(upper)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    if leftover {
        let trash = store.builds_dir().join(unique_name(&format!(
            "{TRASH_PREFIX}{}-{bytes}",
            now_secs()
        )));
        if let Err(e) = std::fs::rename(upper, &trash) {
            tracing::debug!("parking {} in the trash: {e}", upper.display());
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Removes the oldest trash entries (see [`discard_step_dir`]) until the
/// rest holds at most [`TRASH_KEEP_BYTES`]; entries whose name carries no
/// time and size are left to `kiln prune`.
fn empty_old_trash(store: &Store) {
    let builds = store.builds_dir();
    let Ok(entries) = std::fs::read_dir(&builds) else {
        return;
    };
    let mut parked: Vec<(i64, Option<u64>, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let fields: Vec<&str> = name.strip_prefix(TRASH_PREFIX)?.split('-').collect();
            let secs = fields.first()?.parse::<i64>().ok()?;
            // `<secs>-<bytes>-<pid>-<n>-<nanos>`; an older kiln's names had
            // no size (`<secs>-<pid>-<n>-<nanos>`): those just go.
            let bytes = match fields.len() {
                5 => Some(fields[1].parse::<u64>().ok()?),
                4 => None,
                _ => return None,
            };
            Some((secs, bytes, entry.path()))
        })
        .collect();
    parked.sort_by_key(|p| std::cmp::Reverse(p.0));
    let mut kept: u64 = 0;
    for (_, bytes, path) in parked {
        let over = match bytes {
            Some(bytes) => {
                kept = kept.saturating_add(bytes);
                kept > TRASH_KEEP_BYTES
            }
            None => true,
        };
        if over {
            // A concurrent build may be removing the same entry: ignore.
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// Applies a cache record; false if it cannot be used (then the step runs).
fn reuse(
    store: &Store,
    record: &CacheRecord,
    out: &mut StageOutput,
    opts: &SolveOptions<'_>,
    history_index: usize,
    empty_steps: &mut Vec<usize>,
) -> Result<bool, SolveError> {
    if record.data.get("empty").and_then(|v| v.as_bool()) == Some(true) {
        empty_steps.push(history_index);
        return Ok(true);
    }
    let (Some(layer), Some(diff_id), Some(media_type), Some(size)) = (
        record.blobs.first(),
        record.data.get("diff_id").and_then(|v| v.as_str()),
        record.data.get("media_type").and_then(|v| v.as_str()),
        record.data.get("size").and_then(|v| v.as_u64()),
    ) else {
        return Ok(false);
    };
    let Ok(diff_id) = Digest::parse(diff_id) else {
        return Ok(false);
    };
    let descriptor = Descriptor::new(media_type, layer.clone(), size);
    let chain = match out.chain() {
        None => diff_id.clone(),
        Some(parent) => Digest::of(format!("{parent} {diff_id}").as_bytes()),
    };
    let snapshot = store.snapshot_path(&chain);
    if !store.has_snapshot(&chain) {
        store.unpack_snapshot(
            &descriptor,
            &diff_id,
            &chain,
            out.lowers_top_first(),
            opts.reporter,
        )?;
    }
    out.layers.push((descriptor, diff_id));
    out.snapshots.push(snapshot);
    Ok(true)
}

#[allow(clippy::too_many_arguments)]
fn execute_run(
    store: &Store,
    resolver: &StoreResolver<'_>,
    event: &StepEvent<'_>,
    step: &Step,
    r: &RunStep,
    rootfs: &LayeredRootfs,
    context: &BuildContext,
    opts: &SolveOptions<'_>,
    dir: &Path,
    deps: &BTreeMap<usize, StageOutput>,
) -> Result<(), SolveError> {
    let step_err = |message: String| SolveError::Step {
        line: step.line,
        instruction: step.instruction.clone(),
        message,
    };
    let mut mounts = Vec::new();
    let mut memory_files = Vec::new();
    if let Some(script) = &r.script {
        let pipes = dir.join("pipes");
        std::fs::create_dir_all(&pipes).map_err(io_err(&pipes))?;
        let path = pipes.join(&script.name);
        std::fs::write(&path, &script.data).map_err(io_err(&path))?;
        crate::rootfs::set_mode(&path, 0o755).map_err(|e| step_err(e.to_string()))?;
        mounts.push(BindMount {
            source: path,
            target: PathBuf::from(format!("/dev/pipes/{}", script.name)),
            read_only: true,
        });
    }
    // Relays for ssh mounts: they serve until the RUN is over (dropped
    // when this function returns).
    let mut ssh_relays = Vec::new();
    let mut first_ssh_target = None;
    let mut ssh_index = 0;
    for (n, mount) in r.mounts.iter().enumerate() {
        if mount.spec.mount_type == MountType::Ssh {
            let ssh = crate::ssh::SshMount::new(&mount.spec, ssh_index)
                .map_err(|e| step_err(e.to_string()))?;
            ssh_index += 1;
            let target = crate::plan::normalize_workdir(&r.workdir, &ssh.target);
            first_ssh_target.get_or_insert_with(|| target.clone());
            match opts.ssh.get(&ssh.id) {
                Some(agent) => {
                    let relay = crate::ssh::AgentRelay::start(agent, &ssh)
                        .map_err(|e| step_err(e.to_string()))?;
                    mounts.push(BindMount {
                        source: relay.socket().to_path_buf(),
                        target: PathBuf::from(target),
                        read_only: false,
                    });
                    ssh_relays.push(relay);
                }
                None if ssh.required => {
                    return Err(step_err(
                        crate::ssh::SshError::Required { id: ssh.id }.to_string(),
                    ))
                }
                // Not forwarded and not required: skipped, as BuildKit does.
                None => {}
            }
            continue;
        }
        let from = match &mount.from_resolved {
            Some(MountSource::Stage(i)) => {
                let stage = deps.get(i).ok_or(SolveError::StageMissing(*i))?;
                Some(MountFrom {
                    lowers: stage.lowers_top_first(),
                    identity: stage
                        .chain()
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| "scratch".to_string()),
                })
            }
            Some(MountSource::Image(image)) => {
                Some(mount_image_layers(store, image, resolver, opts)?)
            }
            None => None,
        };
        let scratch = dir.join(format!("mount-{n}"));
        match run_mount(
            store,
            mount,
            context,
            &r.workdir,
            from.as_ref(),
            &scratch,
            &opts.secrets,
        )
        .map_err(step_err)?
        {
            Some(StepMount::Bind(bind)) => mounts.push(bind),
            Some(StepMount::Memory(file)) => memory_files.push(file),
            None => {}
        }
    }
    let network = match r.network.as_deref() {
        Some("none") => Network::None,
        Some("host") => Network::Host,
        _ => opts.network,
    };
    let mut spec = RunSpec::new(
        rootfs.lowers().iter().rev().cloned().collect(),
        dir.join("state"),
        r.argv.clone(),
    );
    spec.upper = UpperDir::Keep(rootfs.upper().to_path_buf());
    spec.env = r.env.clone();
    if let Some(target) = first_ssh_target {
        // BuildKit points SSH_AUTH_SOCK at the first ssh mount unless the
        // environment already sets it.
        if !spec.env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
            spec.env.push(format!("SSH_AUTH_SOCK={target}"));
        }
    }
    spec.cwd = r.workdir.clone();
    spec.user = r.user.clone();
    spec.hostname = "buildkitsandbox".to_string();
    spec.network = network;
    spec.mounts = mounts;
    spec.memory_files = memory_files;
    spec.image = format!("stage {}", step.stage);
    spec.limits = opts.limits;
    // Output goes through a pipe: shown as it comes, its tail kept for the
    // error message.
    let (reader, writer) = output_pipe().map_err(|e| step_err(format!("creating a pipe: {e}")))?;
    let writer_err = writer
        .try_clone()
        .map_err(|e| step_err(format!("creating a pipe: {e}")))?;
    spec.streams = kiln_runtime::Streams::Stdio {
        stdin: std::process::Stdio::null(),
        stdout: std::process::Stdio::from(writer),
        stderr: std::process::Stdio::from(writer_err),
    };
    let (status, last_lines) = std::thread::scope(|scope| {
        let collector = scope.spawn(|| {
            use std::io::BufRead;
            let mut last: std::collections::VecDeque<String> = std::collections::VecDeque::new();
            for line in std::io::BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                opts.events.step_output(event, &line);
                if last.len() == TAIL_LINES {
                    last.pop_front();
                }
                last.push_back(line);
            }
            last.into_iter().collect::<Vec<String>>()
        });
        // `spec` owns the write ends; they close when run() returns.
        let status = kiln_runtime::run(spec, &opts.helper);
        let last = collector.join().unwrap_or_default();
        (status, last)
    });
    // A step that failed at a limit is an error that names it; its output
    // still tells what was running. A heredoc script whose interpreter is
    // missing names it and its line.
    let status = status.map_err(|e| {
        step_err(match (&r.script, &e) {
            (
                Some(script),
                kiln_runtime::RuntimeError::Exec {
                    program, reason, ..
                },
            ) if *program == format!("/dev/pipes/{}", script.name) => {
                script_exec_error(script, reason)
            }
            _ => format!("{e}{}", tail(&last_lines)),
        })
    })?;
    if !status.success() {
        return Err(SolveError::RunFailed {
            line: step.line,
            instruction: step.instruction.clone(),
            code: status.code(),
            last_lines,
        });
    }
    Ok(())
}

/// Why a heredoc script (`RUN <<EOF` whose body starts with `#!`) did not
/// start. kiln mounted the script itself, so the kernel's error is about the
/// interpreter its `#!` line names: the message names it and that line,
/// not the script's path (`/dev/pipes/EOF`).
fn script_exec_error(script: &crate::plan::InlineFile, reason: &str) -> String {
    let shebang = script.data.lines().next().unwrap_or("");
    let interpreter = shebang
        .trim_start_matches("#!")
        .trim_start_matches([' ', '\t'])
        .split([' ', '\t'])
        .next()
        .unwrap_or("");
    let line = match script.line {
        0 => String::new(),
        n => format!(" (line {n})"),
    };
    format!(
        "heredoc {}: its #! line{line} names the interpreter {interpreter:?}: {reason}",
        script.name
    )
}

/// A pipe for a RUN's output: (read end, write end).
fn output_pipe() -> std::io::Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nothing else.
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    })
}

/// The filesystem a mount's `from=` names: a stage's or an image's layers.
struct MountFrom {
    /// Snapshot dirs, top first.
    lowers: Vec<PathBuf>,
    /// What identifies that content (a chain id, a manifest digest): a
    /// cache mount seeded from it is kept apart from one seeded from other
    /// content, as BuildKit keys a cache dir on its base.
    identity: String,
}

/// The layers of the image a `RUN --mount=...,from=<image>` names: the
/// manifest the plan resolved (and pulled when missing) for the build's
/// target platform, as for `COPY --from=<image>`.
fn mount_image_layers(
    store: &Store,
    image: &MountImage,
    resolver: &StoreResolver<'_>,
    opts: &SolveOptions<'_>,
) -> Result<MountFrom, SolveError> {
    let found = resolver.resolved(&image.reference, image.digest.as_ref())?;
    let snapshots = store.prepare_snapshots(&found, opts.reporter)?;
    Ok(MountFrom {
        lowers: snapshots.into_iter().rev().collect(),
        identity: found.manifest_descriptor.digest.to_string(),
    })
}

/// What one `RUN --mount` gives the runtime.
enum StepMount {
    Bind(BindMount),
    Memory(MemoryFile),
}

/// `RUN --mount=...`. Supported: `type=cache` (a persistent directory in
/// the store, seeded from `from=` when given), `type=bind` from the
/// context, a stage or an image, `type=tmpfs` (an empty scratch
/// directory), `type=secret` (given with `--secret`). `None` for an
/// optional secret that was not given. The target is relative to the
/// working directory, as BuildKit joins it; `/` itself cannot be mounted on.
fn run_mount(
    store: &Store,
    mount: &RunMount,
    context: &BuildContext,
    workdir: &str,
    from: Option<&MountFrom>,
    scratch: &Path,
    secrets: &BTreeMap<String, Secret>,
) -> Result<Option<StepMount>, String> {
    let spec = &mount.spec;
    let set = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    if spec.mount_type == MountType::Secret {
        // BuildKit's dispatchSecret: the id is `source=`, `id=`, or the
        // target's base name; the target defaults to /run/secrets/<id>.
        let base_name = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
        let id = set(&spec.source)
            .or_else(|| set(&spec.id))
            .or_else(|| (!spec.target.is_empty()).then(|| base_name(&spec.target)))
            .ok_or_else(|| "one of source, target required".to_string())?;
        let target = if spec.target.is_empty() {
            format!("/run/secrets/{}", base_name(&id))
        } else {
            spec.target.clone()
        };
        let target = PathBuf::from(crate::plan::normalize_workdir(workdir, &target));
        return match secrets.get(&id) {
            Some(secret) => Ok(Some(match secret.mount_at(target) {
                SecretMount::Bind(bind) => StepMount::Bind(bind),
                SecretMount::Memory(file) => StepMount::Memory(file),
            })),
            None if spec.required => Err(format!(
                "secret {id} is required but was not given (--secret id={id},src=FILE)"
            )),
            None => Ok(None),
        };
    }
    let target = crate::plan::normalize_workdir(workdir, &spec.target);
    if target == "/" {
        return Err(format!("invalid mount target {target:?}"));
    }
    let target = PathBuf::from(target);
    let mkdir =
        |path: &Path| std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()));
    let source = spec.source.clone().unwrap_or_default();
    let rel = crate::rootfs::clean_rel(&source);
    let read_only = spec.read_only;
    match spec.mount_type {
        MountType::Cache => {
            // BuildKit's default id: the target as written, cleaned.
            let id = set(&spec.id).unwrap_or_else(|| crate::dockerignore::go_clean(&spec.target));
            // A cache seeded from `from=` is its own dir per seed content;
            // a plain one keeps the name it always had.
            let key = match from {
                None => id,
                Some(from) => format!("{id}\0{}", from.identity),
            };
            let name = crate::context::hex(&<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()));
            let dir = store.cache_mounts_dir().join(name);
            if let (Some(from), false) = (from, dir.is_dir()) {
                seed_cache_dir(store, &dir, from, scratch)?;
            }
            mkdir(&dir)?;
            // `source=` picks a subdirectory of the cache (of the seed),
            // its symlinks resolved inside the cache dir.
            let inside = crate::rootfs::resolve(&DirTree::new(&dir), &rel, true)
                .map_err(|e| e.to_string())?;
            let source = dir.join(inside);
            mkdir(&source)?;
            Ok(Some(StepMount::Bind(BindMount {
                source,
                target,
                read_only,
            })))
        }
        MountType::Tmpfs => {
            mkdir(scratch)?;
            Ok(Some(StepMount::Bind(BindMount {
                source: scratch.to_path_buf(),
                target,
                read_only: false,
            })))
        }
        MountType::Bind => bind_mount(context, &rel, target, read_only, from, scratch)
            .map(|bind| Some(StepMount::Bind(bind))),
        MountType::Secret | MountType::Ssh => Err(format!(
            "--mount type={} is handled elsewhere",
            spec.mount_type.as_str()
        )),
    }
}

/// `type=bind`: the source tree is the context, or a stage's or an
/// image's snapshots seen through an empty upper dir.
fn bind_mount(
    context: &BuildContext,
    rel: &str,
    target: PathBuf,
    read_only: bool,
    from: Option<&MountFrom>,
    scratch: &Path,
) -> Result<BindMount, String> {
    let mkdir =
        |path: &Path| std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()));
    mkdir(scratch)?;
    let layered;
    let tree: &dyn SourceTree = match from {
        None => context,
        Some(from) => {
            let empty = scratch.join("upper");
            mkdir(&empty)?;
            layered = LayeredRootfs::new(&empty, from.lowers.clone());
            &layered
        }
    };
    let resolved = crate::rootfs::resolve(tree, rel, true).map_err(|e| e.to_string())?;
    if from.is_none() && !context.contains(&resolved) {
        return Err(format!("/{rel} is not in the build context"));
    }
    let meta = tree
        .stat(&resolved)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("/{rel} not found"))?;
    // Bound where it lies only when read-only (a context dir, any file). A
    // stack of snapshots is merged into a copy, and a writable mount is a
    // copy whose writes are dropped, as in BuildKit: neither the context
    // nor a snapshot may change.
    let copy_of = |dest: &Path| -> Result<(), String> {
        mkdir(dest)?;
        let target_view = LayeredRootfs::new(dest, Vec::new());
        let mut o = CopyOptions::dockerfile_copy(false);
        o.allow_wildcard = false;
        copy::copy(tree, &resolved, &target_view, "/", &o)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let source = match (meta.is_dir(), read_only) {
        (true, true) if from.is_none() => context.host_path(&resolved),
        (false, true) => tree.host_file(&resolved).map_err(|e| e.to_string())?,
        (true, _) => {
            let merged = scratch.join("merged");
            copy_of(&merged)?;
            merged
        }
        (false, false) => {
            let dir = scratch.join("file");
            copy_of(&dir)?;
            let name = resolved.rsplit('/').next().unwrap_or(&resolved);
            dir.join(name)
        }
    };
    Ok(BindMount {
        source,
        target,
        read_only,
    })
}

/// Fills a new cache mount dir with the root filesystem of its `from=`
/// (BuildKit's cache mount starts as a copy of its base). Written beside
/// the dir and renamed into place, so a concurrent build sees it whole or
/// not at all.
fn seed_cache_dir(
    store: &Store,
    dir: &Path,
    from: &MountFrom,
    scratch: &Path,
) -> Result<(), String> {
    let mkdir =
        |path: &Path| std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()));
    let parent = dir
        .parent()
        .ok_or_else(|| format!("{}: no parent directory", dir.display()))?;
    mkdir(parent)?;
    // Named with its owner: a killed build's half-seeded copy is removed
    // by the next build (`Store::remove_dead_scratch`).
    let seeding = parent.join(format!("seeding-{}", kiln_layers::store::unique_suffix()));
    mkdir(&seeding)?;
    let empty = scratch.join("seed-upper");
    mkdir(&empty)?;
    let view = LayeredRootfs::new(&empty, from.lowers.clone());
    let target_view = LayeredRootfs::new(&seeding, Vec::new());
    let mut o = CopyOptions::dockerfile_copy(false);
    o.allow_wildcard = false;
    let copied = copy::copy(&view, "", &target_view, "/", &o).map_err(|e| e.to_string());
    let placed = copied.and_then(|_| match std::fs::rename(&seeding, dir) {
        Ok(()) => Ok(()),
        // Another build seeded it first: theirs is as good.
        Err(_) if dir.is_dir() => Ok(()),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    });
    if seeding.exists() {
        let _ = store.discard(&seeding, "cache-mount");
    }
    placed
}

#[allow(clippy::too_many_arguments)]
fn execute_copy(
    store: &Store,
    step: &Step,
    c: &CopyStep,
    rootfs: &LayeredRootfs,
    context: &BuildContext,
    resolver: &StoreResolver<'_>,
    opts: &SolveOptions<'_>,
    dir: &Path,
    deps: &BTreeMap<usize, StageOutput>,
) -> Result<(), SolveError> {
    let step_err = |message: String| SolveError::Step {
        line: step.line,
        instruction: step.instruction.clone(),
        message,
    };
    let chown = match &c.chown {
        Some(spec) => Some(
            ChownSpec::parse(spec)
                .resolve(rootfs)
                .map_err(|e| step_err(e.to_string()))?,
        ),
        None => None,
    };
    // COPY --link copies onto an empty directory, as BuildKit does: the
    // layer stands alone, so nothing of the base (a symlink on the
    // destination path, say) is seen or followed. Owners named in --chown
    // still come from the base's /etc/passwd and /etc/group.
    let linked;
    let rootfs: &LayeredRootfs = if c.link {
        linked = LayeredRootfs::new(rootfs.upper(), Vec::new());
        &linked
    } else {
        rootfs
    };
    let chmod = match &c.chmod {
        Some(text) => Some(Chmod::parse(text).map_err(|e| step_err(e.to_string()))?),
        None => None,
    };
    let empty_upper = dir.join("source-upper");
    std::fs::create_dir_all(&empty_upper).map_err(io_err(&empty_upper))?;
    let stage_tree;
    let image_tree;
    let source: &dyn SourceTree = match &c.from {
        CopyFrom::Context => context,
        CopyFrom::Stage(i) => {
            let output = deps.get(i).ok_or(SolveError::StageMissing(*i))?;
            stage_tree = LayeredRootfs::new(&empty_upper, output.lowers_top_first());
            &stage_tree
        }
        CopyFrom::Image(reference) => {
            // The manifest the plan resolved for the build's target platform.
            let image = resolver.resolved(reference, c.from_digest.as_ref())?;
            let snapshots = store.prepare_snapshots(&image, opts.reporter)?;
            image_tree = LayeredRootfs::new(&empty_upper, snapshots.into_iter().rev().collect());
            &image_tree
        }
    };
    for (n, src) in c.sources.iter().enumerate() {
        let git = match (c.is_add, &c.from) {
            (true, CopyFrom::Context) => {
                crate::git::parse_git_source(src).map_err(|e| step_err(e.to_string()))?
            }
            _ => None,
        };
        if let Some(git) = git {
            let git = git.with_checksum_flag(c.checksum.as_deref());
            // BuildKit copies the checkout's root (or subdir) like a
            // directory source: its contents into the destination, never
            // unpacked.
            let work = dir.join(format!("git-{n}"));
            let tree = crate::git::fetch_tree(&git, c.git_commits.get(&n), c.keep_git_dir, &work)
                .map_err(|e| step_err(e.to_string()))?;
            let mut o = CopyOptions::dockerfile_copy(false);
            o.allow_wildcard = false;
            o.chown = chown;
            o.chmod = chmod.clone();
            o.exclude_patterns = c.exclude.clone();
            copy::copy(&DirTree::new(&tree), "", rootfs, &c.dest, &o)
                .map_err(|e| step_err(e.to_string()))?;
            continue;
        }
        if src.starts_with("http://") || src.starts_with("https://") {
            if !c.is_add {
                return Err(step_err("source can't be a URL for COPY".into()));
            }
            let downloads = opts
                .downloads
                .ok_or_else(|| step_err(format!("{src}: no URL fetcher configured")))?;
            // Copied from the build's download (the one its cache key was
            // computed on, if it has no --checksum): read only, so a second
            // ADD of the same URL copies the same file.
            let downloaded = downloads.get(src).map_err(|e| step_err(e.to_string()))?;
            if let Some(checksum) = &c.checksum {
                downloaded
                    .verify(checksum)
                    .map_err(|e| step_err(e.to_string()))?;
            }
            let mut o = CopyOptions::single_file();
            o.chown = chown;
            o.chmod = chmod.clone();
            o.attempt_unpack = c.unpack.unwrap_or(false);
            copy::copy(
                &DirTree::new(&downloaded.dir),
                &downloaded.name,
                rootfs,
                &c.dest,
                &o,
            )
            .map_err(|e| step_err(e.to_string()))?;
            continue;
        }
        let mut o = CopyOptions::dockerfile_copy(c.is_add);
        o.attempt_unpack = c.is_add && c.unpack.unwrap_or(true);
        o.chown = chown;
        o.chmod = chmod.clone();
        o.exclude_patterns = c.exclude.clone();
        let copied = if c.parents {
            copy::copy_parents(source, src, rootfs, &c.dest, &o)
        } else {
            copy::copy(source, src, rootfs, &c.dest, &o)
        };
        copied.map_err(|e| step_err(e.to_string()))?;
    }
    for (n, doc) in c.inline.iter().enumerate() {
        let doc_dir = dir.join(format!("heredoc-{n}"));
        std::fs::create_dir_all(&doc_dir).map_err(io_err(&doc_dir))?;
        copy::write_heredoc(&doc_dir, &doc.name, &doc.data).map_err(|e| step_err(e.to_string()))?;
        let mut o = CopyOptions::single_file();
        o.chown = chown;
        o.chmod = chmod.clone();
        copy::copy(&DirTree::new(&doc_dir), &doc.name, rootfs, &c.dest, &o)
            .map_err(|e| step_err(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod scheduler_tests {
    use super::*;
    use crate::plan::{plan, BuildOptions, OfflineResolver};
    use std::time::Duration;

    fn plan_of(dockerfile: &str) -> Plan {
        let ast = kiln_parser::parse(dockerfile, "Dockerfile").unwrap();
        let typed = kiln_parser::instructions::from_ast(&ast).unwrap();
        plan(&typed, &BuildOptions::default(), &OfflineResolver).unwrap()
    }

    // `slow` and `quick` have no dependencies; `after` needs only `quick`.
    const DOCKERFILE: &str = "FROM scratch AS slow\n\
        FROM scratch AS quick\n\
        FROM scratch AS after\n\
        COPY --from=quick / /\n\
        FROM scratch\n\
        COPY --from=slow / /\n\
        COPY --from=after / /\n";

    #[test]
    fn waves_group_stages_by_dependency_depth() {
        let planned = plan_of(DOCKERFILE);
        assert_eq!(planned.waves(), vec![vec![0, 1], vec![2], vec![3]]);
    }

    /// `slow` finishes only once `after` has started: a scheduler that waits
    /// for the whole first wave (`slow` and `quick`) before starting `after`
    /// can never finish `slow`, which then reports a failure.
    #[test]
    fn a_stage_starts_when_its_own_dependencies_are_done() {
        let planned = plan_of(DOCKERFILE);
        let (after_started_tx, after_started_rx) = mpsc::channel::<()>();
        let after_started_rx = Mutex::new(after_started_rx);
        let started = Mutex::new(Vec::new());
        run_stages_when_ready(&planned, |index| {
            started.lock().unwrap().push(index);
            match index {
                0 => after_started_rx
                    .lock()
                    .unwrap()
                    // A hang guard, not a timing assertion.
                    .recv_timeout(Duration::from_secs(120))
                    .map_err(|_| SolveError::StageMissing(2)),
                2 => {
                    after_started_tx.send(()).unwrap();
                    Ok(())
                }
                _ => Ok(()),
            }
        })
        .unwrap();
        let started = started.into_inner().unwrap();
        assert_eq!(started.len(), 4);
        assert_eq!(started.last(), Some(&3), "the target starts last");
    }

    #[test]
    fn the_first_failure_stops_later_stages() {
        let planned = plan_of(DOCKERFILE);
        let started = Mutex::new(Vec::new());
        let result = run_stages_when_ready(&planned, |index| {
            started.lock().unwrap().push(index);
            if index == 1 {
                return Err(SolveError::StageMissing(1));
            }
            Ok(())
        });
        assert!(matches!(result, Err(SolveError::StageMissing(1))));
        let started = started.into_inner().unwrap();
        assert!(!started.contains(&2) && !started.contains(&3));
    }
}

#[cfg(test)]
mod trash_tests {
    use super::*;

    #[test]
    fn duplicate_uppers_are_parked_then_the_oldest_beyond_the_budget_removed() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let builds = root.path().join("builds");
        // A step dir whose upper was not renamed into a snapshot.
        let dir = builds.join("build-1").join("step-1");
        let upper = dir.join("upper");
        std::fs::create_dir_all(upper.join("ctx")).unwrap();
        std::fs::write(upper.join("ctx/f"), "data").unwrap();
        discard_step_dir(&store, &dir, &upper, 4);
        assert!(!dir.exists());
        let parked: Vec<PathBuf> = std::fs::read_dir(&builds)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(TRASH_PREFIX)
            })
            .collect();
        assert_eq!(parked.len(), 1, "{parked:?}");
        assert_eq!(
            std::fs::read_to_string(parked[0].join("ctx/f")).unwrap(),
            "data"
        );

        // Within the budget everything stays. Beyond it the oldest go
        // first, whatever the order of the names; other entries (a running
        // build's work dir, a name without a size) are never touched.
        let now = now_secs();
        let half = TRASH_KEEP_BYTES / 2;
        let entry = |age: i64, bytes: u64| {
            let p = builds.join(format!("{TRASH_PREFIX}{}-{bytes}-1-2-3", now - age));
            std::fs::create_dir_all(p.join("d")).unwrap();
            p
        };
        let older = entry(100, half);
        empty_old_trash(&store);
        assert!(parked[0].is_dir() && older.is_dir());
        let oldest = entry(900, half);
        let middle = entry(500, half);
        let other = builds.join("build-2");
        let no_size = builds.join(format!("{TRASH_PREFIX}{}", now - 1000));
        // An older kiln's name (no size): removed first.
        let older_kiln = builds.join(format!("{TRASH_PREFIX}{}-77-1-2", now - 1));
        std::fs::create_dir_all(&other).unwrap();
        std::fs::create_dir_all(&no_size).unwrap();
        std::fs::create_dir_all(&older_kiln).unwrap();
        empty_old_trash(&store);
        assert!(parked[0].is_dir() && older.is_dir());
        assert!(!middle.exists() && !oldest.exists());
        assert!(other.is_dir() && no_size.is_dir());
        assert!(!older_kiln.exists());
    }

    #[test]
    fn an_empty_or_renamed_upper_leaves_no_trash() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let builds = root.path().join("builds");
        let dir = builds.join("build-1").join("step-1");
        let upper = dir.join("upper");
        std::fs::create_dir_all(&upper).unwrap();
        discard_step_dir(&store, &dir, &upper, 0);
        let dir2 = builds.join("build-1").join("step-2");
        std::fs::create_dir_all(&dir2).unwrap();
        discard_step_dir(&store, &dir2, &dir2.join("upper"), 0);
        assert!(!dir.exists() && !dir2.exists());
        let names: Vec<String> = std::fs::read_dir(&builds)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["build-1".to_string()]);
    }
}
