//! A whole build as a library call: a Dockerfile and its context in, an
//! image in the store (tagged, exported, pushed) out.
//!
//! The CLI turns flags into [`BuildSettings`], provides the network side
//! ([`Remote`]: the builder speaks no HTTP) and draws the
//! [`BuildEvents`]; everything between is here, in two halves:
//!
//! - [`Session::plan`]: parse, plan (base images looked up, pulled when
//!   missing), load the context, compute the cache keys (ADD URLs fetched
//!   once). `kiln build --dry-run` stops here and shows the [`Planned`]
//!   plan.
//! - [`Session::build`]: solve, tag, write the outputs, push, and write the
//!   iidfile and the metadata file.
//!
//! A build for several platforms (`--platform p1,p2`) is
//! [`Session::build_platforms`] (`crate::platforms`): the same two halves
//! once per platform ([`Session::plan_for`], `solve_planned`), the solves
//! in parallel, then one index tagged, exported and pushed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use kiln_layers::cleanup::ScratchDir;
use kiln_layers::compressed::LayerForm;
use kiln_layers::{Descriptor, Digest, Lease, Platform, Reference, Reporter, Store};
use kiln_runtime::{HelperCommand, Limits, Network};

use crate::annotations::Annotation;
use crate::cache::{CacheExport, CacheSources, RemoteCache};
use crate::context::{BuildContext, ContextError, EntryKind, StatCache};
use crate::copy::{UrlDownloads, UrlFetcher};
use crate::dockerignore::IgnoreError;
use crate::dockerignore::PatternMatcher;
use crate::export::{ExportError, ImageOptions, Output, WriteSettings};
use crate::frontend::{Frontend, FrontendError};
use crate::lint::{self, Checker, LintOptions};
use crate::plan::{
    compute_cache_keys, plan_with, BuildOptions, Plan, PlanError, PlanErrorKind, PlanWarning,
    RemoteSources, WalkOptions,
};
use crate::secrets::Secret;
use crate::solve::{
    solve, BuildBlobs, BuildEvents, BuiltImage, ImagePuller, ResultContent, SharedSteps,
    SolveError, SolveOptions, StoreResolver,
};
use crate::ssh::SshAgents;

/// The Dockerfile as read: its bytes, the name errors give it, and its path
/// (None for stdin).
#[derive(Debug, Clone)]
pub struct DockerfileInput {
    pub bytes: Vec<u8>,
    pub name: String,
    pub path: Option<PathBuf>,
}

impl DockerfileInput {
    /// The text as the parser sees it: a byte-order mark dropped, invalid
    /// UTF-8 as U+FFFD.
    pub fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        text.strip_prefix('\u{feff}').unwrap_or(&text).to_string()
    }

    /// The file's own name (`Dockerfile` for stdin), as progress shows it.
    pub fn file_name(&self) -> String {
        self.path
            .as_deref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "Dockerfile".into())
    }
}

/// Everything a build is told.
#[derive(Debug)]
pub struct BuildSettings {
    /// The build context's directory: the one named, or the one a remote
    /// context was fetched into ([`crate::contexts::prepare`]).
    pub context_dir: PathBuf,
    /// Where a remote context came from (credentials masked; `-` for
    /// standard input); None for a local directory. A fetched context is
    /// new each build: it is hashed without the stat cache.
    pub context_origin: Option<String>,
    /// `--build-context`s, fetched and hashed
    /// ([`crate::contexts::NamedContexts::prepare`]); `options.named_contexts`
    /// holds what the planner sees of them.
    pub named_contexts: crate::contexts::NamedContexts,
    pub dockerfile: DockerfileInput,
    /// Target, build args, platforms.
    pub options: BuildOptions,
    /// Names to tag the image with; none leaves it untagged (by id).
    pub tags: Vec<Reference>,
    /// The image names as the user wrote them, in order (every `-t`, else
    /// the outputs' `name=`): the metadata file's `image.name` gives them
    /// so, as buildx hands BuildKit the names unnormalized (`app:1`, not
    /// `docker.io/library/app:1`) and BuildKit answers them as given.
    /// Empty: [`BuildSettings::image_names`], normalized.
    pub written_names: Vec<String>,
    /// When base images are pulled.
    pub pull: PullPolicy,
    /// Run every step (results are still cached).
    pub no_cache: bool,
    /// Run every step of these stages (`--no-cache-filter`), by name.
    pub no_cache_stages: Vec<String>,
    /// What the Dockerfile may do only when allowed (`--allow`).
    pub allow: Entitlements,
    /// SOURCE_DATE_EPOCH when no build arg gives one (a `SOURCE_DATE_EPOCH`
    /// build arg wins, as in BuildKit; the CLI makes the environment's
    /// one, as buildx does): the default a global `ARG SOURCE_DATE_EPOCH=…`
    /// of the Dockerfile gives ([`dockerfile_epoch`]), or a library
    /// caller's own.
    pub source_date_epoch: Option<i64>,
    /// The outputs' `source-date-epoch=` ([`crate::export::settle_epoch`]),
    /// which wins over both for what the exporters date (the config, its
    /// history, the layers under `rewrite-timestamp`, the outputs' files),
    /// not for the build arg a RUN sees, as in BuildKit.
    pub exporter_epoch: Option<i64>,
    /// An image output's `rewrite-timestamp=true`: the files of the layers
    /// the build makes get no mtime newer than SOURCE_DATE_EPOCH
    /// ([`BuildSettings::layer_epoch`]).
    pub rewrite_timestamp: bool,
    /// RUN's network unless a RUN says otherwise.
    pub network: Network,
    /// How a RUN's root filesystem is made (`kiln_runtime::Snapshotter::for_store`).
    pub snapshotter: kiln_runtime::Snapshotter,
    /// chroot isolation: see `SolveOptions::chroot`.
    pub chroot: bool,
    /// How layers are compressed when they leave the store: the
    /// compression, an image output's `force-compression=true` (layers
    /// stored compressed otherwise, a base image's, are converted too) and
    /// `compression-level=`.
    pub layer_form: LayerForm,
    pub docker_media_types: bool,
    /// Attestation manifests as OCI artifacts (`oci-artifact=`).
    pub oci_artifact: bool,
    pub secrets: BTreeMap<String, Secret>,
    pub ssh: SshAgents,
    pub limits: Limits,
    pub outputs: Vec<Output>,
    /// `--label K=V`: the target image's config labels, over the
    /// Dockerfile's ([`crate::annotations`]).
    pub labels: BTreeMap<String, String>,
    /// `--annotation`: on the manifest or its descriptor
    /// ([`crate::annotations`]).
    pub annotations: Vec<Annotation>,
    /// `--provenance` / `--attest type=provenance`: an SLSA provenance
    /// attestation in the image's index ([`crate::provenance`]).
    pub provenance: Option<crate::provenance::ProvenanceRequest>,
    /// A Git context's commit.
    pub context_commit: Option<String>,
    /// The Dockerfile was read from this machine (not from a remote
    /// context).
    pub dockerfile_local: bool,
    /// Push every tag to its registry.
    pub push: bool,
    pub iidfile: Option<PathBuf>,
    pub metadata_file: Option<PathBuf>,
    /// The metadata file holds the build's warnings
    /// (`buildx.build.warnings`), as buildx writes them only when
    /// `BUILDX_METADATA_WARNINGS` is true.
    pub metadata_warnings: bool,
    /// How the runtime re-executes kiln as its helper.
    pub helper: HelperCommand,
}

impl BuildSettings {
    /// Whether the image is recorded in the store without a name when it
    /// gets none: a build with no output but the store (as `docker build`
    /// without `-t`), or with an image output, does; one whose outputs are
    /// all elsewhere (`-o type=local|tar|oci|docker`) does not, as buildx
    /// makes no image for them. Its layers stay build cache, which the
    /// collection limits; an untagged image would stay until removed.
    /// An image output with `store=false` keeps nothing there.
    pub fn records_untagged(&self) -> bool {
        self.outputs.is_empty()
            || (self.outputs.iter())
                .any(|o| matches!(o, Output::Image { options, .. } if options.store))
    }

    /// Whether the build shows BuildKit's image exporter (`exporting to
    /// image`): it has no output but the store, or an image output.
    pub fn exports_an_image(&self) -> bool {
        self.outputs.is_empty() || (self.outputs.iter()).any(|o| matches!(o, Output::Image { .. }))
    }

    /// Whether the build makes an image (its id printed, its digest in the
    /// metadata file): in the store (named, or recorded untagged), through
    /// an image output (which BuildKit answers with the image's digest
    /// whether it stores or pushes it or not), or in an OCI or docker
    /// archive. A build to `type=local` or `tar` alone leaves files only:
    /// no id to print (buildx prints none either).
    pub fn leaves_an_image(&self) -> bool {
        self.exports_an_image()
            || (self.outputs.iter()).any(|o| matches!(o, Output::Oci(_) | Output::Docker(_)))
    }

    /// What writing the outputs needs besides the image.
    pub fn write_settings<'r>(
        &self,
        reporter: &'r dyn Reporter,
        docker: Option<&'r dyn crate::export::DockerDaemon>,
    ) -> WriteSettings<'r> {
        WriteSettings {
            layer_form: self.layer_form,
            reporter,
            epoch: self.source_date_epoch(),
            docker,
        }
    }

    /// Every name the image gets in the store: `-t`'s when the store is an
    /// output (no `--output`, or an image output: buildx names only image,
    /// oci and docker exporters by `-t`, so a build to `type=local` or
    /// `tar` alone names nothing), then those of image outputs.
    pub fn all_tags(&self) -> Vec<Reference> {
        let mut tags = if self.records_untagged() {
            self.tags.clone()
        } else {
            Vec::new()
        };
        for output in &self.outputs {
            if let Output::Image { names, options, .. } = output {
                for name in names.iter().filter(|_| options.store) {
                    if !tags.contains(name) {
                        tags.push(name.clone());
                    }
                }
            }
        }
        tags
    }

    /// The names an image output with `name-canonical=true` that does not
    /// push adds in the store besides [`Self::all_tags`]: each of its
    /// names' repository at `digest`, the image's there (BuildKit's
    /// `name@digest`, which keeps a tag the name gives; not in the
    /// metadata file's `image.name`, as in BuildKit). One that pushes
    /// names the image it pushed so (`Session::push`): kiln compresses the
    /// layers on the way out, and BuildKit's image store holds the image
    /// as pushed.
    pub fn canonical_names(&self, digest: &Digest) -> Vec<Reference> {
        let mut canonical: Vec<Reference> = Vec::new();
        for output in &self.outputs {
            if let Output::Image {
                names,
                options,
                push: false,
            } = output
            {
                let names = if names.is_empty() { &self.tags } else { names };
                for name in names.iter().filter(|_| options.canonical && options.store) {
                    let name = name.at_digest(digest.clone());
                    if !canonical.contains(&name) {
                        canonical.push(name);
                    }
                }
            }
        }
        canonical
    }

    /// Every name the build gives its image anywhere: [`Self::all_tags`],
    /// then those of image outputs that keep none in the store
    /// (`store=false`) and the `name=` of OCI and docker outputs (the
    /// metadata file's `image.name`, as BuildKit's exporters answer it).
    pub fn image_names(&self) -> Vec<Reference> {
        let mut names = self.all_tags();
        for output in &self.outputs {
            let given = match output {
                Output::Image { names, options, .. } if !options.store => names,
                Output::Oci(archive) | Output::Docker(archive) => &archive.names,
                _ => continue,
            };
            for name in given {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        names
    }

    /// The image names as the metadata file gives them:
    /// [`BuildSettings::written_names`], else [`BuildSettings::image_names`].
    pub fn image_names_as_written(&self) -> Vec<String> {
        match self.written_names.is_empty() {
            false => self.written_names.clone(),
            true => self
                .image_names()
                .iter()
                .map(Reference::to_string)
                .collect(),
        }
    }

    /// The pushes: every `-t` with `--push` when there is no `--output`
    /// (with one, `--push` made its image outputs push:
    /// [`crate::export::with_tags`]), and each image output's names (its
    /// `-t` names when it has none) when it pushes, in the output's way.
    pub fn push_targets(&self) -> Vec<PushTarget> {
        let mut targets: Vec<PushTarget> = Vec::new();
        let mut add = |reference: &Reference, options: ImageOptions| {
            let target = PushTarget {
                reference: reference.clone(),
                options,
            };
            if !targets.contains(&target) {
                targets.push(target);
            }
        };
        if self.push && self.outputs.is_empty() {
            for tag in &self.tags {
                add(tag, ImageOptions::default());
            }
        }
        for output in &self.outputs {
            if let Output::Image {
                names,
                push: true,
                options,
            } = output
            {
                let names = if names.is_empty() { &self.tags } else { names };
                for name in names {
                    add(name, *options);
                }
            }
        }
        targets
    }

    /// The SOURCE_DATE_EPOCH the build's image and outputs are dated by:
    /// the outputs' `source-date-epoch=`, else the build arg's, else the
    /// environment's (a build arg that is not a number was refused when
    /// the Dockerfile was read, [`crate::frontend::Frontend::from_build`]).
    pub fn source_date_epoch(&self) -> Option<i64> {
        self.exporter_epoch.or_else(|| {
            crate::frontend::source_date_epoch_arg(&self.options.build_args)
                .ok()
                .flatten()
                .or(self.source_date_epoch)
        })
    }

    /// The time no file of the layers the build makes is newer than: the
    /// SOURCE_DATE_EPOCH with `rewrite-timestamp=true`, as BuildKit's
    /// image exporter rewrites the layers after the base image's; without
    /// it they keep their mtimes (SOURCE_DATE_EPOCH then dates only the
    /// config, its history and the local and tar outputs' files).
    pub fn layer_epoch(&self) -> Option<i64> {
        self.source_date_epoch().filter(|_| self.rewrite_timestamp)
    }
}

/// BuildKit's entitlements: what a RUN may do only when the build grants
/// it (`--allow network.host,security.insecure`, as buildx's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entitlements {
    /// `RUN --network=host` (granted by `--network host` as well).
    pub network_host: bool,
    /// `RUN --security=insecure`: every capability, no seccomp, no masked
    /// paths.
    pub security_insecure: bool,
}

impl Entitlements {
    /// A RUN of the needed stages that needs an entitlement not granted is
    /// an error naming its line and the `--allow` that grants it (BuildKit
    /// fails such a build likewise: "network.host is not allowed").
    pub fn check(&self, plan: &Plan) -> Result<(), PlanError> {
        let runs = plan
            .stages
            .iter()
            .filter(|s| s.needed)
            .flat_map(|s| &s.steps)
            .filter_map(|step| match &step.kind {
                crate::plan::StepKind::Run(r) => Some((step.line, r)),
                _ => None,
            });
        for (line, run) in runs {
            let needs = if run.network.as_deref() == Some("host") && !self.network_host {
                ("--network=host", "network.host")
            } else if run.security.as_deref() == Some("insecure") && !self.security_insecure {
                ("--security=insecure", "security.insecure")
            } else {
                continue;
            };
            return Err(PlanError::at(
                line,
                PlanErrorKind::Invalid(format!(
                    "RUN {}: {} is not allowed; grant it with --allow {}",
                    needs.0, needs.1, needs.1
                )),
            ));
        }
        Ok(())
    }
}

/// When a build pulls its base images (`--pull[=always|missing|never]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Pull every base image, even one the store has (a tag may have moved;
    /// `--pull`, as docker's).
    Always,
    /// Pull what the store lacks (the default, as docker's).
    #[default]
    Missing,
    /// Never pull: a base the store lacks is an error.
    Never,
}

/// A failure of the network side, with its cause.
pub type RemoteError = Box<dyn std::error::Error + Send + Sync>;

/// The network side of a build, which the builder does not speak itself:
/// pulling base images, fetching ADD URLs, pushing the result.
pub trait Remote: ImagePuller + UrlFetcher + Sync {
    /// Pushes `image` (a manifest or index in the store: the one the build
    /// made, whatever its name there names by now) to `target.reference`'s
    /// registry, layers in `form`, as `target.options` says; returns the
    /// pushed manifest's digest and size.
    fn push(
        &self,
        store: &Store,
        image: &Descriptor,
        target: &PushTarget,
        form: LayerForm,
    ) -> Result<(Digest, u64), RemoteError>;

    /// The docker daemon `--load` (a `type=docker` output without `dest`)
    /// loads the image into; none by default.
    fn docker(&self) -> Option<&dyn crate::export::DockerDaemon> {
        None
    }
}

/// One push of the build's image: the name it has in the store (and its
/// repository in the registry), and how ([`ImageOptions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    pub reference: Reference,
    pub options: ImageOptions,
}

impl PushTarget {
    /// What the registry then holds: the tag, or with `push-by-digest` the
    /// repository at `digest`.
    pub fn pushed_as(&self, digest: &Digest) -> Reference {
        if self.options.by_digest {
            self.reference.at_digest(digest.clone())
        } else {
            self.reference.clone()
        }
    }
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Parse(#[from] kiln_parser::ParseError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Frontend(#[from] FrontendError),
    #[error(transparent)]
    Ignore(#[from] IgnoreError),
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Solve(#[from] SolveError),
    #[error(transparent)]
    Store(#[from] kiln_layers::Error),
    #[error(transparent)]
    Export(#[from] ExportError),
    /// A platform whose RUN steps cannot run here (no emulator).
    #[error(transparent)]
    Emulator(#[from] kiln_runtime::binfmt::BinfmtError),
    #[error("push {reference}: {source}")]
    Push {
        reference: Reference,
        #[source]
        source: RemoteError,
    },
    /// A `--cache-to` failed (and was not told `ignore-error=true`).
    #[error("{name}: {source}")]
    CacheExport {
        name: String,
        #[source]
        source: RemoteError,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The build checks failed it (`# check=error=true`, or a finding of
    /// severity error), as BuildKit's "lint violation found for rules".
    #[error("lint violation found for rules: {}", violated_rules(.0))]
    Checks(Box<lint::Report>),
    #[error("{0}")]
    Invalid(String),
}

/// Each rule a finding broke, once, in the order first found.
fn violated_rules(report: &lint::Report) -> String {
    let mut seen = std::collections::HashSet::new();
    let rules: Vec<&str> = (report.findings.iter())
        .map(|f| f.rule)
        .filter(|rule| seen.insert(*rule))
        .collect();
    rules.join(", ")
}

/// The stages whose steps `--no-cache-filter` runs again, by index: the
/// named ones (an unknown name is an error), and every stage that uses
/// one of them. BuildKit keys a `COPY --from` by the content it copies, so
/// a named stage that makes new content reruns its users; kiln keys by
/// the source stage's steps, so its users rerun with it, or they would
/// copy the old content from the cache.
fn no_cache_stages(
    plan: &Plan,
    names: &[String],
) -> Result<std::collections::BTreeSet<usize>, BuildError> {
    let mut stages = names
        .iter()
        .map(|name| {
            let lower = name.to_ascii_lowercase();
            plan.stages
                .iter()
                .find(|s| s.name.as_deref() == Some(lower.as_str()))
                .map(|s| s.index)
                .ok_or_else(|| {
                    BuildError::Invalid(format!("--no-cache-filter {name}: no stage is named so"))
                })
        })
        .collect::<Result<std::collections::BTreeSet<usize>, BuildError>>()?;
    loop {
        let users: Vec<usize> = plan
            .stages
            .iter()
            .filter(|s| !stages.contains(&s.index) && !s.deps.is_disjoint(&stages))
            .map(|s| s.index)
            .collect();
        if users.is_empty() {
            return Ok(stages);
        }
        stages.extend(users);
    }
}

/// What the result must have in the store: its root filesystem for a
/// `local` or `tar` output or an image output's `unpack=true`; its
/// layers' blobs for an archive output, when nothing is pushed (the store
/// then holds the image whole) or when `force-compression=true` may have
/// to convert them (as BuildKit fetches a lazy layer before converting
/// it); else, for an image that is only pushed, the layers stay where a
/// cache or a registry holds them (the push mounts them), as BuildKit's
/// lazy layers.
fn result_content(settings: &BuildSettings) -> ResultContent {
    let outputs = &settings.outputs;
    let unpacked = |o: &Output| match o {
        Output::Local(_) | Output::Tar(_) => true,
        Output::Image { options, .. } => options.unpack && options.store,
        _ => false,
    };
    if outputs.iter().any(unpacked) {
        ResultContent::Snapshots
    } else if settings.push_targets().is_empty()
        || settings.layer_form.force
        || outputs
            .iter()
            .any(|o| matches!(o, Output::Oci(_) | Output::Docker(_)))
    {
        ResultContent::Blobs
    } else {
        ResultContent::Lazy
    }
}

/// `--label`s on the target stage's config, over its LABELs: only the
/// final image's config changes (no history entry, no cache key).
fn apply_labels(plan: &mut Plan, labels: &BTreeMap<String, String>) {
    if labels.is_empty() {
        return;
    }
    let target = plan.target;
    let config = plan.stages[target]
        .image
        .config
        .get_or_insert_with(Default::default);
    config
        .labels
        .get_or_insert_with(BTreeMap::new)
        .extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
}

/// A check's finding as a build warning: `Rule: message`.
fn finding_warning(finding: &lint::Finding) -> PlanWarning {
    PlanWarning {
        line: Some(finding.line),
        message: format!("{}: {}", finding.rule, finding.message),
    }
}

impl BuildError {
    /// The Dockerfile line the error is about, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            BuildError::Plan(e) => e.line(),
            BuildError::Frontend(e) => e.line,
            BuildError::Checks(report) => report.findings.first().map(|f| f.line),
            BuildError::Solve(
                SolveError::RunFailed { line, .. } | SolveError::Step { line, .. },
            ) if *line > 0 => Some(*line),
            _ => None,
        }
    }
}

/// One build: where it stores, what it was told, and who it tells.
pub struct Session<'a> {
    pub store: &'a Store,
    pub settings: &'a BuildSettings,
    pub remote: &'a dyn Remote,
    pub events: &'a dyn BuildEvents,
    /// Pulls, unpacking and compression.
    pub reporter: &'a dyn Reporter,
    /// `--cache-from` and `--cache-to` ([`crate::cache`]).
    pub cache: &'a RemoteCache,
}

/// The first half of a build: the plan with its cache keys, and what the
/// second half runs with.
pub struct Planned<'a> {
    pub plan: Plan,
    /// The build checks' findings (none failed the build).
    pub checks: lint::Report,
    /// The `# syntax` and `BUILDKIT_*` options.
    pub frontend: Frontend,
    context: BuildContext,
    pub(crate) resolver: StoreResolver<'a>,
    downloads: UrlDownloads<'a>,
    /// Holds the downloads (under the store's `builds/`) until the build ends.
    _urls: ScratchDir,
    /// Keeps a `kiln prune` off what the build makes until it is tagged.
    _lease: Lease,
}

impl<'a> Planned<'a> {
    /// The build's ADD downloads (each URL fetched once).
    pub(crate) fn downloads(&self) -> &UrlDownloads<'a> {
        &self.downloads
    }
}

/// The SOURCE_DATE_EPOCH a global `ARG SOURCE_DATE_EPOCH=…` of the
/// Dockerfile gives (its build arg's value when `options` has one), as
/// BuildKit's frontend reads the meta args for it ("the Dockerfile may
/// define a default in the global scope"); a value that is not a number
/// is refused, naming the file. A Dockerfile that does not parse gives
/// none here: planning says what is wrong with it.
pub fn dockerfile_epoch(
    dockerfile: &DockerfileInput,
    options: &BuildOptions,
) -> Result<Option<i64>, BuildError> {
    let Ok(ast) = kiln_parser::parse_bytes(&dockerfile.bytes, &dockerfile.name) else {
        return Ok(None);
    };
    let Ok(typed) = kiln_parser::instructions::from_ast(&ast) else {
        return Ok(None);
    };
    let Ok(Some(value)) = crate::plan::meta_arg(&typed, options, "SOURCE_DATE_EPOCH") else {
        return Ok(None);
    };
    crate::frontend::parse_source_date_epoch(&value)
        .map_err(|e| BuildError::Invalid(format!("{}: ARG {e}", dockerfile.file_name())))
}

/// What a build produced.
#[derive(Debug)]
pub struct BuildResult {
    /// The config digest (a multi-platform build's: the index digest).
    pub image_id: Digest,
    pub built: BuiltImage,
    /// The manifest that left the store (compressed layers, as an output or
    /// a push made it) when one did, else the stored one: what the
    /// metadata file names, as BuildKit reports.
    pub reported: Descriptor,
    /// Each tag pushed, with the manifest digest the registry has.
    pub pushed: Vec<(Reference, Digest)>,
    /// The build checks' findings.
    pub checks: Vec<lint::Finding>,
    /// A multi-platform build's index (as stored), and each platform's
    /// image (`built` is the first).
    pub index: Option<(Descriptor, Vec<BuiltImage>)>,
}

impl BuildResult {
    /// The `--metadata-file` JSON, with BuildKit's keys. A build that
    /// leaves no image (`-o type=local|tar` alone, unnamed) has no image
    /// keys: BuildKit's local and tar exporters answer none, and buildx
    /// writes what they answer. With `warnings_of` (buildx's
    /// `BUILDX_METADATA_WARNINGS`), the build's warnings about that
    /// Dockerfile too, when there are some.
    pub fn metadata(
        &self,
        names: &[String],
        leaves_an_image: bool,
        warnings_of: Option<&DockerfileInput>,
    ) -> serde_json::Value {
        let mut meta = match leaves_an_image {
            false => serde_json::json!({}),
            true => serde_json::json!({
                "containerimage.digest": self.reported.digest.to_string(),
                "containerimage.config.digest": self.image_id.to_string(),
                "containerimage.descriptor": self.reported_descriptor(),
                "image.name": names.join(","),
            }),
        };
        let warnings = warnings_of.map(|dockerfile| self.warnings(dockerfile));
        if let Some(warnings) = warnings.filter(|w| !w.is_empty()) {
            meta["buildx.build.warnings"] = serde_json::Value::Array(warnings);
        }
        if !leaves_an_image {
            return meta;
        }
        // BuildKit answers no name when the image has none.
        if names.is_empty() {
            if let Some(map) = meta.as_object_mut() {
                map.remove("image.name");
            }
        }
        // An index has no config of its own (buildx writes none).
        if self.index.is_some() {
            if let Some(map) = meta.as_object_mut() {
                map.remove("containerimage.config.digest");
            }
        }
        meta
    }

    /// The build checks' findings, then what steps warned of as they ran,
    /// as buildx writes them: BuildKit's `VertexWarning`s (level 1, the
    /// `short` text, each `detail` and the Dockerfile in `sourceInfo` in
    /// base64, `range` the lines), with no `vertex` (kiln makes no LLB
    /// graph). A finding's `short` is BuildKit's linter's, `RULE: message
    /// (line N)`, its `detail` the rule's description.
    fn warnings(&self, dockerfile: &DockerfileInput) -> Vec<serde_json::Value> {
        use base64::Engine as _;
        let base64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let source = serde_json::json!({
            "filename": dockerfile.file_name(),
            "data": base64(&dockerfile.bytes),
            "language": "Dockerfile",
        });
        let warning =
            |short: &str, detail: Option<&str>, url: &str, lines: Option<(usize, usize)>| {
                let mut warning =
                    serde_json::json!({ "level": 1, "short": base64(short.as_bytes()) });
                if let Some(detail) = detail {
                    warning["detail"] = serde_json::json!([base64(detail.as_bytes())]);
                }
                if !url.is_empty() {
                    warning["url"] = url.into();
                }
                if let Some((start, end)) = lines {
                    warning["sourceInfo"] = source.clone();
                    warning["range"] = serde_json::json!([
                        { "start": { "line": start }, "end": { "line": end } }
                    ]);
                }
                warning
            };
        let checks = self.checks.iter().map(|f| {
            let (short, lines) = match f.line {
                0 => (format!("{}: {}", f.rule, f.message), None),
                line => (
                    format!("{}: {} (line {line})", f.rule, f.message),
                    Some((line, f.end_line.max(line))),
                ),
            };
            warning(&short, Some(f.description), f.url, lines)
        });
        // Each platform's steps; a warning several platforms' steps gave, once.
        let mut seen = std::collections::HashSet::new();
        let steps = self
            .images()
            .iter()
            .flat_map(|image| &image.warnings)
            .filter(|w| seen.insert((w.line, w.message.clone())))
            .map(|w| warning(&w.message, None, "", w.line.map(|line| (line, line))))
            .collect::<Vec<_>>();
        checks.chain(steps).collect()
    }
}

impl BuildResult {
    /// Every platform's image: a multi-platform build's, else the one.
    fn images(&self) -> &[BuiltImage] {
        match &self.index {
            Some((_, images)) => images,
            None => std::slice::from_ref(&self.built),
        }
    }

    /// The reported manifest's descriptor as the metadata file has it
    /// (annotations when `--annotation manifest-descriptor:` gave some).
    fn reported_descriptor(&self) -> serde_json::Value {
        let mut descriptor = serde_json::json!({
            "mediaType": self.reported.media_type,
            "digest": self.reported.digest.to_string(),
            "size": self.reported.size,
        });
        let annotations: BTreeMap<&String, &String> = self
            .reported
            .annotations
            .iter()
            .filter(|(k, _)| k.as_str() != kiln_layers::oci::ANNOTATION_REF_NAME)
            .collect();
        if !annotations.is_empty() {
            descriptor["annotations"] = serde_json::json!(annotations);
        }
        descriptor
    }
}

/// The walk over the Dockerfile: its plan and what the build checks found.
struct Walked<'a> {
    frontend: Frontend,
    plan: Plan,
    checks: lint::Report,
    resolver: StoreResolver<'a>,
    ignore: PatternMatcher,
}

impl<'a> Session<'a> {
    /// Only the build checks (`kiln build --check`, buildx's
    /// `--call=check`), nothing run: BuildKit's rules over every stage (only those the target
    /// needs when one is given, as BuildKit's lint), base images resolved
    /// as the build would; what they found before an error is reported
    /// with it, as BuildKit reports it. The walk is for the build
    /// platform whatever `--platform` says, as BuildKit's lint request
    /// walks (its convert options carry no target platform then, and the
    /// target platform is the first build platform): one check for a build
    /// of several platforms.
    pub fn check(&self) -> Result<lint::Report, BuildError> {
        let settings = self.settings;
        let options = &BuildOptions {
            target_platform: settings.options.build_platform.clone(),
            ..settings.options.clone()
        };
        let dockerfile = &settings.dockerfile;
        let ast = kiln_parser::parse_bytes(&dockerfile.bytes, &dockerfile.name)?;
        Frontend::from_build(&ast, &options.build_args, settings.context_commit.is_some())?;
        let resolver = self.resolver();
        let ignore = crate::dockerignore::load_for_build(
            &settings.context_dir,
            settings.dockerfile.path.as_deref(),
        )?;
        let lint_options = LintOptions {
            build_args: options.build_args.clone(),
            dockerignore: Some(ignore),
            images: Some(&resolver),
            platform: options.target_platform.clone(),
            target: options.target.clone(),
            buildkit_only: true,
            build: Some(options),
        };
        Ok(lint::check_ast(&ast, &dockerfile.name, &lint_options))
    }

    /// What looks base images up, pulling as `--pull` says.
    fn resolver(&self) -> StoreResolver<'a> {
        let puller: &'a dyn ImagePuller = self.remote;
        let resolver = match self.settings.pull {
            PullPolicy::Never => StoreResolver::new(self.store, None),
            PullPolicy::Missing => StoreResolver::new(self.store, Some(puller)),
            PullPolicy::Always => StoreResolver::new(self.store, Some(puller)).always_pull(true),
        };
        resolver.with_images(self.settings.named_contexts.images())
    }

    /// Parses the Dockerfile and walks it, the build checks observing;
    /// their findings and the plan's warnings are reported as warnings.
    fn walk(&self, options: &BuildOptions) -> Result<Walked<'a>, BuildError> {
        let settings = self.settings;
        let started = Instant::now();
        let dockerfile = &settings.dockerfile;
        let ast = kiln_parser::parse_bytes(&dockerfile.bytes, &dockerfile.name)?;
        let typed = kiln_parser::instructions::from_ast(&ast)?;
        let frontend =
            Frontend::from_build(&ast, &options.build_args, settings.context_commit.is_some())?;
        self.events.internal(
            &format!(
                "[internal] load build definition from {}",
                dockerfile.file_name()
            ),
            &[format!(
                "transferring dockerfile: {} done",
                human_bytes(dockerfile.bytes.len() as u64)
            )],
            started.elapsed().as_secs_f64(),
        );
        let resolver = self.resolver();
        let ignore = crate::dockerignore::load_for_build(
            &settings.context_dir,
            settings.dockerfile.path.as_deref(),
        )?;
        // The build checks observe the build's own walk (BuildKit's lint
        // runs inside its dispatch): the stages the target needs.
        let check_config = lint::check_config(&ast, &options.build_args)
            .map_err(|e| BuildError::Invalid(e.message))?;
        let lint_options = LintOptions {
            build_args: options.build_args.clone(),
            dockerignore: Some(ignore.clone()),
            images: None,
            platform: options.target_platform.clone(),
            target: options.target.clone(),
            buildkit_only: true,
            build: Some(options),
        };
        let mut checker = Checker::new(&ast, &typed, check_config, &lint_options);
        let plan = plan_with(
            &typed,
            options,
            &resolver,
            WalkOptions::default(),
            checker.observer(),
        )?;
        let checks = checker.finish(&dockerfile.name);
        for warning in frontend.warnings.iter().chain(&plan.warnings) {
            self.events.warning(&dockerfile.name, warning);
        }
        for finding in &checks.findings {
            self.events
                .warning(&dockerfile.name, &finding_warning(finding));
        }
        Ok(Walked {
            frontend,
            plan,
            checks,
            resolver,
            ignore,
        })
    }

    /// Parse, plan, load the context and compute the cache keys.
    pub fn plan(&self) -> Result<Planned<'a>, BuildError> {
        let options = &self.settings.options;
        self.plan_for(options, std::slice::from_ref(&options.target_platform))
    }

    /// [`Session::plan`] with other build options (one platform of a
    /// multi-platform build); `platforms` are every platform the build
    /// makes (what `--annotation`s are checked against).
    pub fn plan_for(
        &self,
        options: &BuildOptions,
        platforms: &[Platform],
    ) -> Result<Planned<'a>, BuildError> {
        // Held until the image is tagged and exported: solve's own lease
        // ends when it returns, and a `kiln prune` waiting for it would
        // otherwise remove the new, not yet tagged manifest and config.
        let lease = self.store.lease()?;
        let walked = self.walk(options)?;
        let (mut planned, checks, resolver, ignore, frontend) = (
            walked.plan,
            walked.checks,
            walked.resolver,
            walked.ignore,
            walked.frontend,
        );
        if checks.fails() {
            return Err(BuildError::Checks(Box::new(checks)));
        }
        let writes_index = self.settings.provenance.is_some()
            || crate::frontend::makes_index(&options.build_args, platforms.len())?;
        crate::annotations::check(
            &self.settings.annotations,
            platforms,
            self.settings.docker_media_types,
            writes_index,
        )
        .map_err(BuildError::Invalid)?;
        apply_labels(&mut planned, &self.settings.labels);
        let context = self.load_context(&ignore)?;
        // Each ADD URL is downloaded once: for its cache key, or by the
        // step that adds it. The files live in a scratch dir under builds/
        // (the lease keeps a `kiln prune` off them, its name tells a later
        // build when this one was killed) until the build is over.
        // Made by the first download (`create_dir_all`), if any.
        let urls = self.store.lazy_scratch_dir("urls");
        let fetcher: &'a (dyn UrlFetcher + Sync) = self.remote;
        let downloads = UrlDownloads::new(fetcher, urls.path().join("downloads"));
        let sources = RemoteSources {
            downloads: Some(&downloads),
        };
        compute_cache_keys(&mut planned, Some(&context), &sources)?;
        crate::plan::key_by_layer_epoch(&mut planned, self.settings.layer_epoch());
        Ok(Planned {
            plan: planned,
            checks,
            frontend,
            context,
            resolver,
            downloads,
            _urls: urls,
            _lease: lease,
        })
    }

    /// The build context, hashed (through the store's stat cache).
    fn load_context(&self, ignore: &PatternMatcher) -> Result<BuildContext, BuildError> {
        let started = Instant::now();
        let settings = self.settings;
        let mut stat_cache = match settings.context_origin {
            None => Some(StatCache::open_in(self.store, &settings.context_dir)?),
            Some(_) => None,
        };
        let context = BuildContext::load(&settings.context_dir, ignore, stat_cache.as_mut())?;
        let bytes: u64 = context
            .entries()
            .values()
            .filter(|e| matches!(e.kind, EntryKind::File))
            .map(|e| e.size)
            .sum();
        self.events.internal(
            "[internal] load build context",
            &[format!("transferring context: {} done", human_bytes(bytes))],
            started.elapsed().as_secs_f64(),
        );
        if let Some(Err(e)) = stat_cache.as_mut().map(StatCache::save) {
            tracing::warn!("{e}");
        }
        Ok(context)
    }

    /// Runs the plan, then tags, exports and pushes the image (with
    /// `--provenance`, an index of the image and its attestation; with
    /// `BUILDKIT_MULTI_PLATFORM`, an index of the image).
    pub fn build(&self, planned: Planned<'a>) -> Result<BuildResult, BuildError> {
        self.check_requests()?;
        self.check_before_steps(&[&planned])?;
        let cache_from = CacheSources::new(&self.cache.sources, self.events);
        let started = std::time::SystemTime::now();
        let built = self.solve_planned(&planned, None, self.events, &cache_from)?;
        if self.settings.provenance.is_some() || self.index_asked() {
            let built = std::slice::from_ref(&built);
            let result = self.finish_index(&[&planned], built, started)?;
            let blobs = BuildBlobs {
                sources: &cache_from,
                resolver: &planned.resolver,
            };
            self.export_cache(&[&planned], built, &blobs)?;
            self.write_files(&result)?;
            return Ok(result);
        }
        let image_id = self.tag(&built)?;
        let mut result = BuildResult {
            image_id,
            reported: built.manifest.clone(),
            built,
            pushed: Vec::new(),
            checks: planned.checks.findings.clone(),
            index: None,
        };
        self.outputs(&mut result)?;
        self.push(&mut result)?;
        let blobs = BuildBlobs {
            sources: &cache_from,
            resolver: &planned.resolver,
        };
        self.export_cache(&[&planned], std::slice::from_ref(&result.built), &blobs)?;
        self.write_files(&result)?;
        Ok(result)
    }

    /// Refuses what the settings ask that cannot be done, before anything
    /// runs, and warns once of what will do nothing.
    pub(crate) fn check_requests(&self) -> Result<(), BuildError> {
        let settings = self.settings;
        if settings.rewrite_timestamp && settings.source_date_epoch().is_none() {
            let message = "rewrite-timestamp is specified, but no source-date-epoch was found: \
                           the layers keep their files' times (set SOURCE_DATE_EPOCH)";
            self.events.build_warning(message);
        }
        let pushes = settings.push
            || settings
                .outputs
                .iter()
                .any(|o| matches!(o, Output::Image { push: true, .. }));
        if pushes && settings.push_targets().is_empty() {
            return Err(BuildError::Invalid(
                "--push (or an output with push=true) needs a name: -t or name=".into(),
            ));
        }
        // buildx's words: a root filesystem has no image id to write.
        if settings.iidfile.is_some()
            && (settings.outputs.iter()).any(|o| matches!(o, Output::Local(_) | Output::Tar(_)))
        {
            return Err(BuildError::Invalid(
                "--iidfile: local and tar exporters are incompatible with image ID file".into(),
            ));
        }
        if settings.outputs.iter().filter(|o| o.to_stdout()).count() > 1 {
            return Err(BuildError::Invalid(
                "only one output can go to standard output".into(),
            ));
        }
        if let Some(request) = &settings.provenance {
            crate::provenance::check_outputs(request, settings)?;
        }
        if self.index_asked() {
            let platform = [settings.options.target_platform.clone()];
            for output in &settings.outputs {
                output.check_platforms(&platform)?;
            }
        }
        Ok(())
    }

    /// `BUILDKIT_MULTI_PLATFORM` asks a one-platform build for an index
    /// (its value was checked by the walk; a build for several platforms
    /// makes one whatever it says).
    pub(crate) fn index_asked(&self) -> bool {
        crate::frontend::makes_index(&self.settings.options.build_args, 1).unwrap_or(false)
    }

    /// Before any step of the plans runs: the entitlements their RUN steps
    /// need are granted, chroot isolation can run them as asked, and every
    /// platform whose RUN steps will run can run here
    /// ([`crate::emulation`]).
    pub(crate) fn check_before_steps(&self, plans: &[&Planned<'a>]) -> Result<(), BuildError> {
        let mut platforms = BTreeMap::new();
        for planned in plans {
            self.settings.allow.check(&planned.plan)?;
            if self.settings.chroot {
                let given = crate::solve::ChrootGiven {
                    secrets: &self.settings.secrets,
                    ssh: &self.settings.ssh,
                };
                crate::solve::refuse_under_chroot(&planned.plan, &given)?;
            }
            let no_cache_stages = no_cache_stages(&planned.plan, &self.settings.no_cache_stages)?;
            platforms.extend(crate::emulation::platforms_that_run(
                &planned.plan,
                self.store,
                self.settings.no_cache,
                &no_cache_stages,
            ));
        }
        crate::emulation::check_emulators(
            &mut kiln_runtime::binfmt::RealBinfmt::default(),
            &platforms,
        )?;
        Ok(())
    }

    /// Runs the plan: the image in the store, untagged. `shared` lets the
    /// solves of one multi-platform build run a step they share once;
    /// `cache_from` are the build's `--cache-from` sources.
    pub(crate) fn solve_planned(
        &self,
        planned: &Planned<'a>,
        shared: Option<&SharedSteps>,
        events: &dyn BuildEvents,
        cache_from: &CacheSources<'_>,
    ) -> Result<BuiltImage, BuildError> {
        let settings = self.settings;
        let no_cache_stages = no_cache_stages(&planned.plan, &settings.no_cache_stages)?;
        let options = SolveOptions {
            no_cache: settings.no_cache,
            no_cache_stages,
            source_date_epoch: settings.source_date_epoch(),
            layer_epoch: settings.layer_epoch(),
            network: settings.network,
            networks: Some(std::sync::Arc::new(kiln_runtime::NetworkPool::new())),
            snapshotter: settings.snapshotter,
            chroot: settings.chroot,
            helper: settings.helper.clone(),
            downloads: Some(&planned.downloads),
            events,
            reporter: self.reporter,
            docker_media_types: settings.docker_media_types,
            secrets: settings.secrets.clone(),
            ssh: settings.ssh.clone(),
            limits: settings.limits,
            shared,
            cache_from: Some(cache_from),
            inline_cache: self.cache.inline,
            result: result_content(settings),
            named_contexts: Some(&settings.named_contexts),
        };
        let built = solve(
            self.store,
            &planned.plan,
            &planned.context,
            &planned.resolver,
            &options,
        )?;
        // Interrupted as the last step ended: nothing is tagged or sent.
        if kiln_runtime::interrupt::runs_canceled() {
            return Err(SolveError::Canceled.into());
        }
        let mut built = built;
        built.manifest = crate::annotations::annotate(
            self.store,
            &built.manifest,
            &built.platform(),
            &settings.annotations,
        )?;
        Ok(built)
    }

    /// Runs each `--cache-to` exporter on the steps of `images` (one per
    /// plan: a build for several platforms exports one cache of every
    /// platform's steps, as BuildKit does); a failure fails the build
    /// unless it said `ignore-error=true` (then it is a warning), as in
    /// BuildKit.
    pub(crate) fn export_cache(
        &self,
        plans: &[&Planned<'a>],
        images: &[BuiltImage],
        blobs: &BuildBlobs<'_>,
    ) -> Result<(), BuildError> {
        if self.cache.exporters.is_empty() {
            return Ok(());
        }
        let export = CacheExport::merged(
            plans
                .iter()
                .zip(images)
                .map(|(planned, image)| CacheExport::new(&planned.plan, image.steps.clone()))
                .collect(),
        );
        for exporter in &self.cache.exporters {
            let started = Instant::now();
            match exporter.export(self.store, &export, blobs, self.reporter) {
                Ok(lines) => {
                    self.events
                        .internal(&exporter.name(), &lines, started.elapsed().as_secs_f64())
                }
                Err(source) if exporter.ignore_error() => {
                    // A build warning only: printed once, at the end
                    // with the others, not also through the log.
                    let message = format!("{}: {source} (ignore-error=true)", exporter.name());
                    self.events.build_warning(&message);
                }
                Err(source) => {
                    return Err(BuildError::CacheExport {
                        name: exporter.name(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Tags the image (or records it untagged); returns its id.
    fn tag(&self, built: &BuiltImage) -> Result<Digest, BuildError> {
        let started = Instant::now();
        let image = self.store.read_image(&built.manifest, &built.platform())?;
        let image_id = image.id().clone();
        let tags = &self.settings.all_tags();
        if tags.is_empty() && self.settings.records_untagged() {
            self.store.add_untagged(&built.manifest)?;
        }
        for t in tags {
            self.store.tag(t, &built.manifest)?;
        }
        for name in self.settings.canonical_names(&built.manifest.digest) {
            self.store.tag(&name, &built.manifest)?;
        }
        // Shown when the store is an output, as BuildKit shows its image
        // exporter only when asked for it (the layers stay build cache).
        if self.settings.exports_an_image() {
            let mut lines = vec![
                format!("writing image {image_id} done"),
                format!("writing manifest {} done", built.manifest.digest),
            ];
            lines.extend(tags.iter().map(|t| format!("naming to {t} done")));
            self.events.internal(
                "exporting to image",
                &lines,
                started.elapsed().as_secs_f64(),
            );
        }
        Ok(image_id)
    }

    fn outputs(&self, result: &mut BuildResult) -> Result<(), BuildError> {
        let settings = self.settings;
        let write = settings.write_settings(self.reporter, self.remote.docker());
        // The metadata file's descriptor is the last output's, as BuildKit
        // merges its exporters' answers (an image output's is the store's,
        // undated; buildx puts the image output `--push` adds last).
        for output in &settings.outputs {
            let started = Instant::now();
            let written = output.write(self.store, &result.built, &write)?;
            self.exported(output, started);
            if let Some(manifest) = written {
                result.reported = manifest;
            } else if matches!(output, Output::Image { .. }) {
                result.reported = result.built.manifest.clone();
            }
        }
        Ok(())
    }

    /// Shows the vertex of `output`'s exporter, as BuildKit's, timed from
    /// `started` (none for the store, whose vertex comes with tagging).
    pub(crate) fn exported(&self, output: &Output, started: Instant) {
        if let Some((vertex, line)) = output.progress_vertex() {
            let took = started.elapsed().as_secs_f64();
            self.events.internal(vertex, &[line.to_string()], took);
        }
    }

    pub(crate) fn push(&self, result: &mut BuildResult) -> Result<(), BuildError> {
        let settings = self.settings;
        // What the build made, not what its tag names when the push
        // starts: another process may have moved the tag meanwhile.
        let image = match &result.index {
            Some((index, _)) => index.clone(),
            None => result.built.manifest.clone(),
        };
        for target in &settings.push_targets() {
            let (digest, size) = self
                .remote
                .push(self.store, &image, target, settings.layer_form)
                .map_err(|source| BuildError::Push {
                    reference: target.reference.clone(),
                    source,
                })?;
            if target.options.canonical && target.options.store {
                // The pushed manifest (or index) is in the store: the push
                // wrote it there, its layers compressed.
                let pushed = Descriptor {
                    annotations: image.annotations.clone(),
                    ..Descriptor::new(image.media_type.clone(), digest.clone(), size)
                };
                (self.store).tag(&target.reference.at_digest(digest.clone()), &pushed)?;
            }
            result
                .pushed
                .push((target.pushed_as(&digest), digest.clone()));
            result.reported.digest = digest;
            result.reported.size = size;
        }
        Ok(())
    }

    pub(crate) fn write_files(&self, result: &BuildResult) -> Result<(), BuildError> {
        let write = |path: &PathBuf, bytes: Vec<u8>| {
            std::fs::write(path, bytes).map_err(|source| BuildError::Write {
                path: path.clone(),
                source,
            })
        };
        if let Some(path) = &self.settings.iidfile {
            write(path, result.image_id.to_string().into_bytes())?;
        }
        if let Some(path) = &self.settings.metadata_file {
            let meta = result.metadata(
                &self.settings.image_names_as_written(),
                self.settings.leaves_an_image(),
                (self.settings.metadata_warnings).then_some(&self.settings.dockerfile),
            );
            let bytes = serde_json::to_vec_pretty(&meta)
                .map_err(|e| BuildError::Invalid(format!("metadata file: {e}")))?;
            write(path, bytes)?;
        }
        Ok(())
    }
}

/// Sizes as BuildKit's progress shows them: decimal units, three
/// significant digits, like docker's `units.HumanSize` (`12.3MB`).
///
/// ```
/// use kiln_builder::session::human_bytes;
/// assert_eq!(human_bytes(999), "999B");
/// assert_eq!(human_bytes(4_260_000), "4.26MB");
/// assert_eq!(human_bytes(12_345_678), "12.3MB");
/// assert_eq!(human_bytes(123_456_789_012), "123GB");
/// ```
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        return format!("{n}B");
    }
    let decimals = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.decimals$}{}", UNITS[unit])
}
