//! The front half of a build: typed instructions → a plan, with nothing
//! executed. It does what BuildKit's `dockerfile2llb` does before solving,
//! in one walk over the Dockerfile that every consumer shares — a build,
//! `--dry-run`, `kiln explain`, and `kiln check`, whose rules observe the
//! walk ([`observe`]):
//!
//! - build arguments: predefined platform args, meta ARGs (before the first
//!   FROM, usable in FROM, redeclared inside a stage to be used there),
//!   defaults, `--build-arg` overrides, ENV/ARG shadowing in one ordered
//!   environment ([`env::Env`]), undeclared build args reported;
//! - stages ([`stages`]): target resolution, which stages the target needs
//!   (through `FROM <stage>`, COPY --from, RUN --mount=from), ONBUILD
//!   triggers of the base;
//! - every instruction applied to the image config exactly as BuildKit does
//!   ([`dispatch`]), with the history entries it writes (`created_by`,
//!   `empty_layer`, `comment`); an instruction's words are expanded in the
//!   scope it starts in, as BuildKit expands a command before dispatching
//!   it (`ENV a=1 b=$a` gives `b` the value `a` had before the line);
//! - the filesystem steps (RUN with its typed `--mount`s, COPY/ADD,
//!   WORKDIR's mkdir) with everything they need expanded, ready for the
//!   solver; and, given the build context, a content-addressed cache key
//!   per step ([`keys`]).
//!
//! `kiln build --dry-run` and `kiln explain` stop here.
//!
//! ```
//! use kiln_builder::plan::{plan, BuildOptions, OfflineResolver, StepKind};
//! let ast = kiln_parser::parse("FROM scratch\nENV A=1\nRUN echo $A\n", "Dockerfile").unwrap();
//! let df = kiln_parser::instructions::from_ast(&ast).unwrap();
//! let planned = plan(&df, &BuildOptions::default(), &OfflineResolver).unwrap();
//! let StepKind::Run(run) = &planned.stages[0].steps[0].kind else { panic!() };
//! assert_eq!(run.argv, ["/bin/sh", "-c", "echo $A"]);
//! assert!(run.env.contains(&"A=1".to_string()));
//! ```

pub mod dispatch;
pub mod env;
pub mod keys;
pub mod lookup;
pub mod observe;
pub mod stages;

use std::collections::{BTreeMap, BTreeSet};

use kiln_layers::oci::{ImageConfig, Platform};
use kiln_layers::reference::ReferenceError;
use kiln_layers::{Digest, Reference};
use kiln_parser::instructions::Dockerfile;
use kiln_parser::mount::{Mount, MountError};
use serde::Serialize;

pub use keys::{compute_cache_keys, key_by_layer_epoch, KeySources, RemoteSources};
pub use lookup::{FoundImage, ImageLookup, ImageName, LookupError, OfflineResolver};
pub use observe::{DispatchObserver, NoObserver};

/// Why a Dockerfile cannot be planned: what went wrong, and the 1-based
/// Dockerfile line it is about, when there is one.
#[derive(Debug, thiserror::Error)]
pub struct PlanError {
    pub line: Option<usize>,
    /// Part of this error's own message (not a cause of it).
    pub kind: PlanErrorKind,
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.kind, self.line) {
            (PlanErrorKind::CopySource { path, message }, Some(line)) => {
                write!(f, "COPY source {path:?} (line {line}): {message}")
            }
            (kind, Some(line)) => write!(f, "line {line}: {kind}"),
            (kind, None) => write!(f, "{kind}"),
        }
    }
}

impl PlanError {
    /// `kind`, about Dockerfile line `line` (0: none).
    pub fn at(line: usize, kind: PlanErrorKind) -> PlanError {
        PlanError {
            line: (line > 0).then_some(line),
            kind,
        }
    }

    /// `kind`, about no line in particular.
    pub fn general(kind: PlanErrorKind) -> PlanError {
        PlanError { line: None, kind }
    }

    /// The Dockerfile line (1-based) the error is about, if any.
    pub fn line(&self) -> Option<usize> {
        self.line
    }
}

/// What went wrong while planning.
#[derive(Debug, thiserror::Error)]
pub enum PlanErrorKind {
    #[error("target stage {0:?} could not be found")]
    UnknownTarget(String),
    #[error("dockerfile contains no stages to build")]
    NoStages,
    #[error("base name ({0}) should not be blank")]
    BlankBase(String),
    #[error("{0}")]
    Expand(#[from] kiln_parser::expand::ExpandError),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "cannot copy from stage {from:?}, it needs to be defined before current stage {stage:?}"
    )]
    ForwardReference { from: String, stage: String },
    #[error(
        "cannot mount from stage {from:?} to {target:?}, stage needs to be defined before current command"
    )]
    MountForwardReference { from: String, target: String },
    #[error("circular dependency detected on stage: {0}")]
    Circular(String),
    /// An image name (FROM, `COPY --from`, `RUN --mount from=`) that is no
    /// reference; the reason names the expanded text.
    #[error("{0}")]
    InvalidReference(#[source] ReferenceError),
    #[error("base image {reference}: {source}")]
    Resolve {
        reference: String,
        #[source]
        source: LookupError,
    },
    #[error(
        "fetching {}: {}",
        kiln_reference::redact_credentials(url),
        kiln_reference::redact_credentials(message)
    )]
    UrlFetch { url: String, message: String },
    #[error("computing the step's cache key: {0}")]
    CacheKey(String),
    #[error("{0}")]
    Git(#[source] crate::git::GitError),
    #[error("{message}")]
    CopySource { path: String, message: String },
    #[error("{0}")]
    Mount(#[source] MountError),
}

/// What the caller knows about the build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// `--target`; the last stage when `None`.
    pub target: Option<String>,
    /// `--build-arg NAME=value`.
    pub build_args: BTreeMap<String, String>,
    pub target_platform: Platform,
    pub build_platform: Platform,
    /// What every RUN gets from the build's flags.
    pub run: RunDefaults,
    /// `--build-context NAME=…`, by normalized name
    /// ([`crate::contexts::named`]).
    pub named_contexts: BTreeMap<String, NamedSource>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            target: None,
            build_args: BTreeMap::new(),
            target_platform: Platform::host(),
            build_platform: Platform::host(),
            run: RunDefaults::default(),
            named_contexts: BTreeMap::new(),
        }
    }
}

/// A named context as the planner sees it: an image to use by reference,
/// nothing, or a tree of files known by its content digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedSource {
    Image(Reference),
    /// `docker-image://scratch`: no files; `digest` is its empty tree's.
    Scratch {
        digest: String,
    },
    /// A directory, Git checkout or download: its content digest, and
    /// what history calls it.
    Tree {
        digest: String,
        description: String,
    },
}

impl BuildOptions {
    /// The named context an image or stage name `name` means, if any
    /// (compared as BuildKit does:
    /// [`crate::contexts::named::normalize_name`]).
    pub fn named_context(&self, name: &str) -> Option<(String, &NamedSource)> {
        if self.named_contexts.is_empty() {
            return None;
        }
        let normalized = crate::contexts::named::normalize_name(name)?;
        self.named_contexts
            .get(&normalized)
            .map(|source| (normalized, source))
    }
}

/// The build flags BuildKit puts on every RUN (its exec ops' meta, so they
/// are part of every RUN's cache key): `--add-host`, `--shm-size`,
/// `--ulimit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunDefaults {
    /// (name, address) lines for /etc/hosts.
    pub extra_hosts: Vec<(String, String)>,
    /// /dev/shm's size in bytes (64 MiB when unset).
    pub shm_size: Option<u64>,
    pub ulimits: Vec<kiln_runtime::Rlimit>,
}

/// How far the walk goes: a build dispatches the stages its target needs
/// and fails on an image it cannot find; an analysis may dispatch every
/// stage (BuildKit's lint does, when no target is given) and take an image
/// that is nowhere to be found as empty.
#[derive(Debug, Clone, Copy, Default)]
pub struct WalkOptions {
    /// Dispatch every stage, not only those the target needs.
    pub all_stages: bool,
    /// An image the lookup does not find ([`LookupError::NotFound`]) is
    /// taken as empty and listed in [`Plan::unknown_images`]; a lookup that
    /// fails otherwise is still an error.
    pub unknown_images_empty: bool,
}

/// Where a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BaseSource {
    Scratch,
    Image {
        reference: ImageName,
        digest: Option<Digest>,
    },
    Stage(usize),
    /// A named context's files (`--build-context NAME=DIR|GIT|URL`): a
    /// scratch stage whose first step copies them in.
    NamedContext {
        name: String,
        digest: String,
    },
}

/// Where a COPY takes its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyFrom {
    Context,
    Stage(usize),
    Image(ImageName),
    /// A named context's files, by name and content digest.
    NamedContext {
        name: String,
        digest: String,
    },
}

/// A source written inline (heredoc), expanded if it asked to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InlineFile {
    pub name: String,
    pub data: String,
    /// The Dockerfile line where the body starts, for error messages (not
    /// part of the cache key); 0 when unknown.
    #[serde(skip)]
    pub line: usize,
}

/// A RUN, ready for the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunStep {
    pub argv: Vec<String>,
    /// The process environment: the stage's env (image ENV and ARGs in
    /// scope), then proxy build args (both cases).
    pub env: Vec<String>,
    pub user: String,
    pub workdir: String,
    pub network: Option<String>,
    pub security: Option<String>,
    /// The container's hostname (`buildkitsandbox`, or the
    /// `BUILDKIT_SANDBOX_HOSTNAME` build arg).
    pub hostname: String,
    /// `BUILDKIT_CACHE_MOUNT_NS`: put in front of every cache mount's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_namespace: Option<String>,
    /// `--mount`s, parsed and expanded once, here (CSV first, then each
    /// value expanded, as BuildKit reads them).
    pub mounts: Vec<RunMount>,
    /// A heredoc with a shebang becomes a script file (mode 0755).
    pub script: Option<InlineFile>,
    /// `--add-host` lines: (name, address).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<(String, String)>,
    /// `--shm-size` in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<u64>,
    /// `--ulimit`s.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<kiln_runtime::Rlimit>,
}

/// One `RUN --mount`: the typed spec and where its `from=` points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunMount {
    #[serde(flatten)]
    pub spec: Mount,
    /// What `from=` names, resolved while planning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_resolved: Option<MountSource>,
}

/// The filesystem a mount's `from=` names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MountSource {
    /// An earlier stage, by index.
    Stage(usize),
    /// An image, resolved while planning so that its manifest digest is
    /// part of the step's cache key (a moved tag runs the step again).
    Image(MountImage),
    /// A named context's files, by name and content digest.
    NamedContext { name: String, digest: String },
}

/// An image a `RUN --mount=...,from=<image>` names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountImage {
    /// As written in `from=` (expanded), parsed.
    pub reference: ImageName,
    /// The manifest digest, when the resolver knows it.
    pub digest: Option<Digest>,
}

impl RunStep {
    /// The stages the step's mounts read from.
    pub fn mount_stages(&self) -> impl Iterator<Item = usize> + '_ {
        self.mounts.iter().filter_map(|m| match m.from_resolved {
            Some(MountSource::Stage(i)) => Some(i),
            _ => None,
        })
    }
}

/// A COPY or ADD, ready for [`crate::copy`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyStep {
    pub is_add: bool,
    pub from: CopyFrom,
    /// Source paths (or URLs), expanded.
    pub sources: Vec<String>,
    pub inline: Vec<InlineFile>,
    /// The destination, relative paths joined to the workdir, trailing `/`
    /// kept.
    pub dest: String,
    /// The destination as written, expanded (what history shows).
    pub dest_as_written: String,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub exclude: Vec<String>,
    pub checksum: Option<String>,
    pub unpack: Option<bool>,
    /// `COPY --parents`: keep the sources' directories.
    pub parents: bool,
    /// For `--from=<image>`: the image's manifest digest, when known.
    pub from_digest: Option<Digest>,
    /// `ADD --keep-git-dir` (a Git source's `?keep-git-dir=` wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_git_dir: Option<bool>,
    /// Git sources, by source index: the commit their ref resolved to when
    /// the cache key was computed (the solver checks out that commit).
    #[serde(skip)]
    pub git_commits: BTreeMap<usize, crate::git::ResolvedCommit>,
}

/// WORKDIR creates its directory (owned by the current USER).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkdirStep {
    pub path: String,
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum StepKind {
    Run(RunStep),
    Copy(CopyStep),
    Workdir(WorkdirStep),
}

/// One filesystem-changing step (a layer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub stage: usize,
    /// The Dockerfile line.
    pub line: usize,
    /// The instruction as written (logical line), as it may be shown: an
    /// ADD's URL credentials masked ([`kiln_reference::redact_credentials`]).
    pub instruction: String,
    #[serde(flatten)]
    pub kind: StepKind,
    /// Index of this step's entry in the stage's `image.history`.
    pub history_index: usize,
    /// Set by [`compute_cache_keys`].
    pub cache_key: Option<Digest>,
}

/// Where a config value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Set by the Dockerfile line.
    Line(usize),
    /// Inherited from the base image.
    BaseImage(String),
    /// Inherited from an earlier stage.
    Stage(String),
    /// BuildKit's default (PATH, the working directory of scratch).
    Default,
}

/// A non-fatal finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanWarning {
    pub line: Option<usize>,
    pub message: String,
}

/// One stage after dispatch.
#[derive(Debug, Clone, Serialize)]
pub struct StagePlan {
    pub index: usize,
    pub name: Option<String>,
    pub base: BaseSource,
    pub line: usize,
    /// Whether the target needs this stage.
    pub needed: bool,
    /// `FROM … AS NAME` with a named context NAME: the stage is that
    /// context, its instructions are not run (as BuildKit).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replaced: bool,
    /// The config after every instruction (history included; the base's
    /// `rootfs.diff_ids` as they were).
    pub image: ImageConfig,
    /// How many history entries the base brought.
    pub base_history: usize,
    pub steps: Vec<Step>,
    /// Stages this one needs first.
    pub deps: BTreeSet<usize>,
    /// Config field (`Cmd`, `Entrypoint`, `Env.NAME`, …) → where it came from.
    pub provenance: BTreeMap<String, Origin>,
}

/// The whole plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub stages: Vec<StagePlan>,
    pub target: usize,
    /// Needed stages in the order they are dispatched (dependencies first).
    pub order: Vec<usize>,
    /// Meta ARGs and predefined args as FROM lines see them.
    pub global_args: Vec<(String, String)>,
    pub warnings: Vec<PlanWarning>,
    /// Images taken as empty because nothing knew them
    /// ([`WalkOptions::unknown_images_empty`]), with the first line naming
    /// each.
    #[serde(skip)]
    pub unknown_images: Vec<(Reference, usize)>,
}

impl Plan {
    /// The needed stages grouped by dependency depth, in dispatch order
    /// within a group: every stage of a wave depends only on stages of
    /// earlier waves, so a wave's stages can run in parallel. (The solver
    /// does not wait for a whole wave: a stage starts as soon as its own
    /// dependencies are done.) Stages whose dependencies never become ready
    /// are left out.
    pub fn waves(&self) -> Vec<Vec<usize>> {
        let mut waves: Vec<Vec<usize>> = Vec::new();
        let mut done: BTreeSet<usize> = BTreeSet::new();
        let mut remaining = self.order.clone();
        while !remaining.is_empty() {
            let (ready, rest): (Vec<usize>, Vec<usize>) = remaining
                .iter()
                .partition(|s| self.stages[**s].deps.iter().all(|d| done.contains(d)));
            if ready.is_empty() {
                break;
            }
            done.extend(&ready);
            waves.push(ready);
            remaining = rest;
        }
        waves
    }
}

/// Build args that need no ARG declaration and never reach history.
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// ARGs that are build settings, never part of a RUN's environment
/// (BuildKit's `nonEnvArgs`).
pub const NON_ENV_ARGS: &[&str] = &["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

fn platform_string(p: &Platform) -> String {
    match &p.variant {
        Some(v) if !v.is_empty() => format!("{}/{}/{v}", p.os, p.architecture),
        _ => format!("{}/{}", p.os, p.architecture),
    }
}

/// The predefined args, as `defaultArgs` builds them (build args override).
pub fn predefined_args(opts: &BuildOptions, target_stage: &str) -> Vec<(String, String)> {
    // Normalized as BuildKit does: `--platform linux/arm64/v8` gives
    // TARGETPLATFORM=linux/arm64 and an empty TARGETVARIANT.
    let b = &opts.build_platform.normalized();
    let t = &opts.target_platform.normalized();
    let pairs = [
        ("BUILDPLATFORM", platform_string(b)),
        ("BUILDOS", b.os.clone()),
        ("BUILDOSVERSION", b.os_version.clone().unwrap_or_default()),
        ("BUILDARCH", b.architecture.clone()),
        ("BUILDVARIANT", b.variant.clone().unwrap_or_default()),
        ("TARGETPLATFORM", platform_string(t)),
        ("TARGETOS", t.os.clone()),
        ("TARGETOSVERSION", t.os_version.clone().unwrap_or_default()),
        ("TARGETARCH", t.architecture.clone()),
        ("TARGETVARIANT", t.variant.clone().unwrap_or_default()),
        (
            "TARGETSTAGE",
            if target_stage.is_empty() {
                "default".to_string()
            } else {
                target_stage.to_string()
            },
        ),
    ];
    pairs
        .into_iter()
        .map(|(k, v)| {
            let v = opts.build_args.get(k).cloned().unwrap_or(v);
            (k.to_string(), v)
        })
        .collect()
}

/// Plans a Dockerfile for a build: the stages the target needs, every
/// image found or an error.
/// The value the meta ARGs (those before the first FROM) give `name`:
/// its build arg's, else its default expanded with the global args, as a
/// plan sets the global args (BuildKit's `buildMetaArgs`). None when no
/// meta ARG gives it a value.
pub fn meta_arg(
    df: &Dockerfile,
    opts: &BuildOptions,
    name: &str,
) -> Result<Option<String>, PlanError> {
    let declared = (df.meta_args.iter()).any(|arg| arg.args.iter().any(|def| def.key == name));
    if !declared {
        return Ok(None);
    }
    let global = stages::StageGraph::global_args(df, opts)?;
    Ok(global.get(name).map(str::to_string))
}

pub fn plan(
    df: &Dockerfile,
    opts: &BuildOptions,
    resolver: &dyn ImageLookup,
) -> Result<Plan, PlanError> {
    plan_with(df, opts, resolver, WalkOptions::default(), &mut NoObserver)
}

/// Plans a Dockerfile as [`WalkOptions`] say, showing the walk to
/// `observer`.
pub fn plan_with(
    df: &Dockerfile,
    opts: &BuildOptions,
    resolver: &dyn ImageLookup,
    walk: WalkOptions,
    observer: &mut dyn DispatchObserver,
) -> Result<Plan, PlanError> {
    // Every image is resolved, and every scratch stage configured, for the
    // normalized platform (one spelling per platform).
    let opts = &BuildOptions {
        target_platform: opts.target_platform.normalized(),
        build_platform: opts.build_platform.normalized(),
        ..opts.clone()
    };
    let graph = stages::StageGraph::new(df, opts, walk, resolver, observer)?;
    let mut planner = dispatch::Planner::new(df, opts, walk, resolver, graph.global.clone());
    planner.used_args = graph.used_args.clone();
    let mut stages_out: Vec<StagePlan> = Vec::new();
    for stage in &df.stages {
        let index = stage.index;
        let needed = graph.needed.contains(&index);
        let mut sp = StagePlan {
            index,
            name: stage.name.clone(),
            base: graph.bases[index].clone(),
            line: stage.from.span.start_line(),
            needed,
            replaced: graph.replaced.contains(&index),
            image: ImageConfig::default(),
            base_history: 0,
            steps: Vec::new(),
            deps: graph.deps[index].clone(),
            provenance: BTreeMap::new(),
        };
        if needed || walk.all_stages {
            planner.dispatch_stage(stage, &graph.platforms[index], &mut sp, observer)?;
        }
        stages_out.push(sp);
    }
    let unused = planner.unused_build_args_warning();
    let warnings = std::mem::take(&mut planner.warnings)
        .into_iter()
        .chain(unused)
        .collect();
    Ok(Plan {
        stages: stages_out,
        target: graph.target,
        order: graph.needed.iter().copied().collect(),
        global_args: planner.global.pairs().to_vec(),
        warnings,
        unknown_images: planner.unknown_images,
    })
}

/// `WORKDIR`'s value as BuildKit's `NormalizeWorkdir` makes it: an
/// absolute path as written (`/app/` stays `/app/`), a relative one joined
/// to the current one and cleaned, an empty one the current one.
pub fn workdir_value(current: &str, path: &str) -> String {
    match path {
        p if p.starts_with('/') => p.to_string(),
        "" if current.starts_with('/') => current.to_string(),
        p => normalize_workdir(current, p),
    }
}

/// `NormalizeWorkdir`: relative paths join the current one; the result is
/// clean and absolute.
pub fn normalize_workdir(current: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        let base = if current.is_empty() { "/" } else { current };
        format!("{base}/{path}")
    };
    let cleaned = crate::dockerignore::go_clean(&joined);
    if cleaned.starts_with('/') {
        cleaned
    } else {
        format!("/{cleaned}")
    }
}
