//! The front half of a build: typed instructions → a plan, with nothing
//! executed. It does what BuildKit's `dockerfile2llb` does before solving:
//!
//! - build arguments: predefined platform args, meta ARGs (before the first
//!   FROM, usable in FROM, redeclared inside a stage to be used there),
//!   defaults, `--build-arg` overrides, ENV/ARG shadowing in one ordered
//!   environment, undeclared build args reported;
//! - stages: target resolution, which stages the target needs (through
//!   `FROM <stage>`, COPY --from, RUN --mount=from), ONBUILD triggers of the
//!   base;
//! - every instruction applied to the image config exactly as BuildKit does,
//!   with the history entries it writes (`created_by`, `empty_layer`,
//!   `comment`);
//! - the filesystem steps (RUN, COPY/ADD, WORKDIR's mkdir) with everything
//!   they need expanded, ready for the solver; and, given the build context,
//!   a content-addressed cache key per step ([`compute_cache_keys`]).
//!
//! `kiln build --dry-run` and `kiln explain` stop here.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kiln_layers::oci::{ContainerConfig, ImageConfig, Platform};
use kiln_layers::reference::ReferenceError;
use kiln_layers::{Digest, Reference};
use kiln_parser::expand::{expand_word, expand_words};
use kiln_parser::instructions::{self as ins, CommandLine, Dockerfile, Instruction};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::context::BuildContext;
use crate::copy::{dest_path, resolve_wildcards, UrlDownloads};
use crate::image::{
    default_shell, empty_image, get_env, go_list, go_quote_list, healthcheck_history, history,
    parse_ports, valid_signal, DEFAULT_PATH,
};
use crate::rootfs::resolve;

/// Why a Dockerfile cannot be planned. Lines are 1-based Dockerfile lines.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("target stage {0:?} could not be found")]
    UnknownTarget(String),
    #[error("dockerfile contains no stages to build")]
    NoStages,
    #[error("line {line}: base name ({base}) should not be blank")]
    BlankBase { line: usize, base: String },
    #[error("line {line}: {message}")]
    Expand { line: usize, message: String },
    #[error("line {line}: {message}")]
    Invalid { line: usize, message: String },
    #[error("line {line}: cannot copy from stage {from:?}, it needs to be defined before current stage {stage:?}")]
    ForwardReference {
        line: usize,
        from: String,
        stage: String,
    },
    #[error("line {line}: circular dependency detected on stage: {stage}")]
    Circular { line: usize, stage: String },
    /// An image name (FROM, `COPY --from`, `RUN --mount from=`) that is no
    /// reference; the reason names the expanded text.
    #[error("line {line}: {reason}")]
    InvalidReference { line: usize, reason: ReferenceError },
    #[error("line {line}: base image {reference}: {message}")]
    Resolve {
        line: usize,
        reference: String,
        message: String,
    },
    #[error(
        "line {line}: fetching {}: {}",
        kiln_reference::redact_credentials(url),
        kiln_reference::redact_credentials(message)
    )]
    UrlFetch {
        line: usize,
        url: String,
        message: String,
    },
    #[error("line {line}: computing the step's cache key: {message}")]
    CacheKey { line: usize, message: String },
    #[error("line {line}: {source}")]
    Git {
        line: usize,
        #[source]
        source: crate::git::GitError,
    },
    #[error("COPY source {path:?} (line {line}): {message}")]
    CopySource {
        line: usize,
        path: String,
        message: String,
    },
}

impl PlanError {
    /// The Dockerfile line (1-based) the error is about, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            PlanError::UnknownTarget(_) | PlanError::NoStages => None,
            PlanError::BlankBase { line, .. }
            | PlanError::Expand { line, .. }
            | PlanError::Invalid { line, .. }
            | PlanError::ForwardReference { line, .. }
            | PlanError::Circular { line, .. }
            | PlanError::Resolve { line, .. }
            | PlanError::InvalidReference { line, .. }
            | PlanError::CacheKey { line, .. }
            | PlanError::Git { line, .. }
            | PlanError::UrlFetch { line, .. }
            | PlanError::CopySource { line, .. } => (*line > 0).then_some(*line),
        }
    }
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
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            target: None,
            build_args: BTreeMap::new(),
            target_platform: Platform::host(),
            build_platform: Platform::host(),
        }
    }
}

/// A base image as the registry or the store knows it.
#[derive(Debug, Clone)]
pub struct FoundImage {
    /// The reference it was found by (normalized, e.g.
    /// `docker.io/library/alpine:3.20`).
    pub reference: Reference,
    /// The manifest digest, when known.
    pub digest: Option<Digest>,
    pub config: ImageConfig,
}

/// Looks base images up (config only) by their parsed reference; the
/// builder speaks no HTTP itself. The planner parses every image name once,
/// where its Dockerfile line is expanded, and hands the typed value here.
pub trait ImageLookup {
    /// Errors leave the reference out: the caller's message names it.
    fn lookup(&self, reference: &Reference, platform: &Platform) -> Result<FoundImage, String>;
}

/// A resolver for offline analysis: every image is unknown and empty.
#[derive(Debug, Default)]
pub struct OfflineResolver;

impl ImageLookup for OfflineResolver {
    fn lookup(&self, reference: &Reference, platform: &Platform) -> Result<FoundImage, String> {
        Ok(FoundImage {
            reference: reference.clone(),
            digest: None,
            config: ImageConfig {
                architecture: platform.architecture.clone(),
                os: platform.os.clone(),
                variant: platform.variant.clone(),
                ..Default::default()
            },
        })
    }
}

/// An image a Dockerfile names (FROM, `COPY --from`, `RUN --mount from=`),
/// parsed once where its line was expanded. Plans (JSON, progress,
/// history) show it as [`ImageName::shown`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    /// The parsed, normalized reference: what resolvers and the solver get.
    pub reference: Reference,
    /// How the plan shows it: the expanded text as written (`busybox`);
    /// a resolved FROM shows the normalized name it was found by.
    pub shown: String,
}

impl ImageName {
    /// Parses the expanded text `written` of Dockerfile line `line`.
    pub fn parse(written: &str, line: usize) -> Result<ImageName, PlanError> {
        let reference = Reference::parse(written)
            .map_err(|reason| PlanError::InvalidReference { line, reason })?;
        Ok(ImageName {
            reference,
            shown: written.to_string(),
        })
    }

    /// The name of an image a resolver found: shown normalized.
    pub fn found(reference: Reference) -> ImageName {
        ImageName {
            shown: reference.to_string(),
            reference,
        }
    }
}

impl std::fmt::Display for ImageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Serialize for ImageName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.shown)
    }
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
}

/// Where a COPY takes its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyFrom {
    Context,
    Stage(usize),
    Image(ImageName),
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
    /// `--mount` specs, expanded, as written.
    pub mounts: Vec<String>,
    /// For each mount, the stage its `from=` names, if any.
    pub mount_stages: Vec<Option<usize>>,
    /// Mounts whose `from=` names an image (not a stage), by mount index:
    /// resolved while planning, so the manifest digest is part of the
    /// step's cache key (a moved tag runs the step again).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mount_images: BTreeMap<usize, MountImage>,
    /// A heredoc with a shebang becomes a script file (mode 0755).
    pub script: Option<InlineFile>,
}

/// An image a `RUN --mount=...,from=<image>` names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountImage {
    /// As written in `from=` (expanded), parsed.
    pub reference: ImageName,
    /// The manifest digest, when the resolver knows it.
    pub digest: Option<Digest>,
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

/// An ordered environment where setting a name replaces it in place.
fn env_set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value.to_string(),
        None => env.push((key.to_string(), value.to_string())),
    }
}

fn env_get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A stage's environment (BuildKit's LLB state env): `NAME=value` pairs in
/// order, with each name's position indexed, so that a Dockerfile of N ENV
/// lines is planned in O(N), not O(N²). It behaves as the plain list it
/// replaces: [`OrderedEnv::set`] replaces a name's first pair in place (or
/// appends one), a lookup finds its last pair (a base image's env may name
/// a variable twice).
#[derive(Clone, Default)]
struct OrderedEnv {
    pairs: Vec<(String, String)>,
    /// Name → positions of its first and last pair in `pairs`.
    at: HashMap<String, (usize, usize)>,
}

impl OrderedEnv {
    fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        let mut at: HashMap<String, (usize, usize)> = HashMap::with_capacity(pairs.len());
        for (i, (key, _)) in pairs.iter().enumerate() {
            at.entry(key.clone())
                .and_modify(|(_, last)| *last = i)
                .or_insert((i, i));
        }
        OrderedEnv { pairs, at }
    }

    fn set(&mut self, key: &str, value: &str) {
        match self.at.get(key) {
            Some(&(first, _)) => self.pairs[first].1 = value.to_string(),
            None => {
                let i = self.pairs.len();
                self.pairs.push((key.to_string(), value.to_string()));
                self.at.insert(key.to_string(), (i, i));
            }
        }
    }

    /// The value of `key`'s last pair (what expansion sees).
    fn get(&self, key: &str) -> Option<&str> {
        self.at
            .get(key)
            .map(|&(_, last)| self.pairs[last].1.as_str())
    }

    /// The value of `key`'s first pair (the one [`OrderedEnv::set`] replaces).
    fn first(&self, key: &str) -> Option<&str> {
        self.at
            .get(key)
            .map(|&(first, _)| self.pairs[first].1.as_str())
    }

    fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }
}

impl kiln_parser::expand::Env for OrderedEnv {
    fn lookup(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_string)
    }
}

/// The image config's `Env` list with each name's first entry indexed:
/// [`ConfigEnv::set`] is `set_env` (replace the first `NAME=` entry, else
/// append) in O(1).
#[derive(Clone, Default)]
struct ConfigEnv {
    at: HashMap<String, usize>,
}

impl ConfigEnv {
    fn index(list: &[String]) -> Self {
        let mut at = HashMap::with_capacity(list.len());
        for (i, entry) in list.iter().enumerate() {
            at.entry(crate::image::split_env(entry).0.to_string())
                .or_insert(i);
        }
        ConfigEnv { at }
    }

    fn set(&mut self, list: &mut Vec<String>, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        match self.at.get(key) {
            Some(&i) => list[i] = entry,
            None => {
                self.at.insert(key.to_string(), list.len());
                list.push(entry);
            }
        }
    }
}

/// Per-stage dispatch state (BuildKit's `dispatchState`).
#[derive(Clone)]
struct State {
    image: ImageConfig,
    /// The LLB state's env: image ENV and ARG values, in order.
    env: OrderedEnv,
    /// Where each name is in `image.config.env` (kept in step with it).
    config_env: ConfigEnv,
    /// ARGs declared (for RUN's history prefix), inherited from a base stage.
    build_args: Vec<(String, Option<String>)>,
    cmd_set: bool,
    provenance: BTreeMap<String, Origin>,
}

impl State {
    fn config(&mut self) -> &mut ContainerConfig {
        self.image
            .config
            .get_or_insert_with(ContainerConfig::default)
    }

    fn workdir(&self) -> String {
        self.image
            .config
            .as_ref()
            .and_then(|c| c.working_dir.clone())
            .unwrap_or_default()
    }

    fn user(&self) -> String {
        self.image
            .config
            .as_ref()
            .and_then(|c| c.user.clone())
            .unwrap_or_default()
    }

    fn shell(&self) -> Vec<String> {
        match self.image.config.as_ref().and_then(|c| c.shell.clone()) {
            Some(s) if !s.is_empty() => s,
            _ => default_shell(),
        }
    }
}

struct Planner<'a> {
    df: &'a Dockerfile,
    opts: &'a BuildOptions,
    resolver: &'a dyn ImageLookup,
    global: Vec<(String, String)>,
    /// Build-arg names some ARG consumed.
    used_args: BTreeSet<String>,
    warnings: Vec<PlanWarning>,
}

fn line_of(meta: &ins::Meta) -> usize {
    meta.span.start_line()
}

fn stage_by_name(df: &Dockerfile, name: &str) -> Option<usize> {
    let lower = name.to_ascii_lowercase();
    df.stages
        .iter()
        .find(|s| s.name.as_deref() == Some(lower.as_str()))
        .map(|s| s.index)
}

/// Looks the image `name` (on Dockerfile line `line`) up; a failure names
/// the image as written.
fn look_up(
    resolver: &dyn ImageLookup,
    name: &ImageName,
    platform: &Platform,
    line: usize,
) -> Result<FoundImage, PlanError> {
    resolver
        .lookup(&name.reference, platform)
        .map_err(|message| PlanError::Resolve {
            line,
            reference: name.shown.clone(),
            message,
        })
}

/// `--mount=...,from=X,...` → X.
fn mount_from(spec: &str) -> Option<String> {
    spec.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("from")).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Plans a Dockerfile.
pub fn plan(
    df: &Dockerfile,
    opts: &BuildOptions,
    resolver: &dyn ImageLookup,
) -> Result<Plan, PlanError> {
    if df.stages.is_empty() {
        return Err(PlanError::NoStages);
    }
    let target = match &opts.target {
        None => df.stages.len() - 1,
        Some(t) => stage_by_name(df, t).ok_or_else(|| PlanError::UnknownTarget(t.clone()))?,
    };
    let target_name = df.stages[target].name.clone().unwrap_or_default();
    // Every image is resolved, and every scratch stage configured, for the
    // normalized platform (one spelling per platform).
    let opts = &BuildOptions {
        target_platform: opts.target_platform.normalized(),
        build_platform: opts.build_platform.normalized(),
        ..opts.clone()
    };
    let mut planner = Planner {
        df,
        opts,
        resolver,
        global: predefined_args(opts, &target_name),
        used_args: BTreeSet::new(),
        warnings: Vec::new(),
    };
    planner.meta_args()?;

    // Bases and FROM-level dependencies.
    let mut bases = Vec::new();
    for stage in &df.stages {
        let line = line_of(&stage.from);
        let base = planner.expand_global(&stage.base, line)?;
        if base.is_empty() {
            return Err(PlanError::BlankBase {
                line,
                base: stage.base.clone(),
            });
        }
        let source = match stage_by_name(df, &base) {
            Some(i) if i < stage.index => BaseSource::Stage(i),
            _ if base.eq_ignore_ascii_case("scratch") => BaseSource::Scratch,
            _ => BaseSource::Image {
                reference: ImageName::parse(&base, line)?,
                digest: None,
            },
        };
        bases.push(source);
    }

    // Dependencies through COPY --from and RUN --mount=from (and the base).
    let mut deps: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); df.stages.len()];
    for stage in &df.stages {
        if let BaseSource::Stage(i) = bases[stage.index] {
            deps[stage.index].insert(i);
        }
        for instruction in &stage.instructions {
            for dep in instruction_stage_refs(df, instruction) {
                if dep == stage.index {
                    return Err(PlanError::Circular {
                        line: line_of(instruction.meta()),
                        stage: stage
                            .name
                            .clone()
                            .unwrap_or_else(|| format!("stage-{}", stage.index)),
                    });
                }
                deps[stage.index].insert(dep);
            }
        }
    }
    // The stages the target needs; a base image's ONBUILD triggers may name
    // more (COPY --from), so look at those and repeat until nothing new.
    let mut needed;
    let mut triggers_seen: BTreeSet<usize> = BTreeSet::new();
    loop {
        needed = BTreeSet::new();
        let mut stack = vec![target];
        while let Some(s) = stack.pop() {
            if needed.insert(s) {
                stack.extend(deps[s].iter().copied());
            }
        }
        let mut grew = false;
        for &s in &needed {
            let BaseSource::Image { reference, .. } = &bases[s] else {
                continue;
            };
            if !triggers_seen.insert(s) {
                continue;
            }
            let stage = &df.stages[s];
            let line = line_of(&stage.from);
            let platform = planner.stage_platform(stage)?;
            let resolved = look_up(resolver, reference, &platform, line)?;
            let triggers = resolved
                .config
                .config
                .as_ref()
                .and_then(|c| c.on_build.clone())
                .unwrap_or_default();
            for trigger in triggers {
                let Ok(instruction) = parse_trigger(&trigger) else {
                    continue; // reported when the stage is dispatched
                };
                for dep in instruction_stage_refs(df, &instruction) {
                    if dep < s && deps[s].insert(dep) {
                        grew = true;
                    }
                }
            }
        }
        if !grew {
            break;
        }
    }

    // Dispatch every needed stage in file order (a dependency always comes
    // first; a forward one is an error, as in BuildKit).
    let mut stages: Vec<StagePlan> = Vec::new();
    let mut finals: Vec<Option<State>> = vec![None; df.stages.len()];
    for stage in &df.stages {
        let is_needed = needed.contains(&stage.index);
        let mut sp = StagePlan {
            index: stage.index,
            name: stage.name.clone(),
            base: bases[stage.index].clone(),
            line: line_of(&stage.from),
            needed: is_needed,
            image: ImageConfig::default(),
            base_history: 0,
            steps: Vec::new(),
            deps: deps[stage.index].clone(),
            provenance: BTreeMap::new(),
        };
        if is_needed {
            let state = planner.dispatch_stage(stage, &mut sp, &finals)?;
            sp.image = state.image.clone();
            sp.provenance = state.provenance.clone();
            finals[stage.index] = Some(state);
        }
        stages.push(sp);
    }

    // Build args nobody declared (one warning, as docker prints it).
    let unused: Vec<&str> = opts
        .build_args
        .keys()
        .filter(|key| {
            let predefined = planner.global.iter().any(|(k, _)| k == *key);
            !planner.used_args.contains(*key) && !PROXY_ARGS.contains(&key.as_str()) && !predefined
        })
        .map(String::as_str)
        .collect();
    if !unused.is_empty() {
        planner.warnings.push(PlanWarning {
            line: None,
            message: format!(
                "One or more build-args [{}] were not consumed",
                unused.join(" ")
            ),
        });
    }
    let order: Vec<usize> = needed.iter().copied().collect();
    Ok(Plan {
        stages,
        target,
        order,
        global_args: planner.global,
        warnings: planner.warnings,
    })
}

/// Parses an ONBUILD trigger (one instruction) on its own.
fn parse_trigger(trigger: &str) -> Result<Instruction, String> {
    let text = format!("FROM scratch\n{trigger}\n");
    let parsed = kiln_parser::parse(&text, "ONBUILD")
        .and_then(|ast| ins::from_ast(&ast))
        .map_err(|e| e.to_string())?;
    match parsed.stages.first().map(|s| s.instructions.as_slice()) {
        Some([one]) => Ok(one.clone()),
        _ => Err("onbuild trigger should be a single expression".into()),
    }
}

/// Stages an instruction refers to (COPY --from, RUN --mount=from).
fn instruction_stage_refs(df: &Dockerfile, instruction: &Instruction) -> Vec<usize> {
    let lookup = |name: &str| -> Option<usize> {
        match name.parse::<usize>() {
            Ok(i) if i < df.stages.len() => Some(i),
            Ok(_) => None,
            Err(_) => stage_by_name(df, name),
        }
    };
    match instruction {
        Instruction::Copy(c) => c.from.as_deref().and_then(lookup).into_iter().collect(),
        Instruction::Run(r) => r
            .mounts
            .iter()
            .filter_map(|m| mount_from(m))
            .filter_map(|n| lookup(&n))
            .collect(),
        Instruction::Onbuild(o) => instruction_stage_refs(df, &o.trigger),
        _ => Vec::new(),
    }
}

impl Planner<'_> {
    fn escape(&self) -> char {
        self.df.escape
    }

    /// The stage's `--platform`, expanded, or the target platform.
    fn stage_platform(&self, stage: &ins::Stage) -> Result<Platform, PlanError> {
        let line = line_of(&stage.from);
        match &stage.platform {
            Some(p) => {
                let text = self.expand_global(p, line)?;
                Platform::parse(&text).map_err(|e| PlanError::Invalid {
                    line,
                    message: format!("failed to parse platform {text}: {e}"),
                })
            }
            None => Ok(self.opts.target_platform.clone()),
        }
    }

    fn expand_global(&self, word: &str, line: usize) -> Result<String, PlanError> {
        expand_word(word, &self.global, self.escape())
            .map(|e| e.value)
            .map_err(|e| PlanError::Expand {
                line,
                message: e.to_string(),
            })
    }

    /// `buildMetaArgs`: each meta ARG takes its build-arg value or its
    /// expanded default and joins the global args (when it has a value).
    fn meta_args(&mut self) -> Result<(), PlanError> {
        for arg in &self.df.meta_args {
            let line = line_of(&arg.meta);
            for def in &arg.args {
                let value = match self.opts.build_args.get(&def.key) {
                    Some(v) => {
                        self.used_args.insert(def.key.clone());
                        Some(v.clone())
                    }
                    None => match &def.value {
                        Some(d) => Some(self.expand_global(d, line)?),
                        None => None,
                    },
                };
                if let Some(v) = value {
                    env_set(&mut self.global, &def.key, &v);
                }
            }
        }
        Ok(())
    }

    fn expand(&self, word: &str, env: &OrderedEnv, line: usize) -> Result<String, PlanError> {
        expand_word(word, env, self.escape())
            .map(|e| e.value)
            .map_err(|e| PlanError::Expand {
                line,
                message: e.to_string(),
            })
    }

    fn expand_all(
        &self,
        word: &str,
        env: &OrderedEnv,
        line: usize,
    ) -> Result<Vec<String>, PlanError> {
        expand_words(word, env, self.escape()).map_err(|e| PlanError::Expand {
            line,
            message: e.to_string(),
        })
    }

    fn initial_state(
        &mut self,
        stage: &ins::Stage,
        sp: &mut StagePlan,
        finals: &[Option<State>],
    ) -> Result<(State, Vec<String>), PlanError> {
        let line = sp.line;
        let platform = self.stage_platform(stage)?;
        let mut onbuild: Vec<String> = Vec::new();
        let mut state = match &sp.base {
            BaseSource::Scratch => {
                let mut s = State {
                    image: empty_image(
                        &platform.architecture,
                        &platform.os,
                        platform.variant.as_deref(),
                    ),
                    env: OrderedEnv::default(),
                    config_env: ConfigEnv::default(),
                    build_args: Vec::new(),
                    cmd_set: false,
                    provenance: BTreeMap::new(),
                };
                s.provenance.insert("WorkingDir".into(), Origin::Default);
                s
            }
            BaseSource::Stage(i) => {
                let base = finals[*i].clone().ok_or_else(|| PlanError::Invalid {
                    line,
                    message: format!("stage {i} was not dispatched"),
                })?;
                let base_name = self.df.stages[*i]
                    .name
                    .clone()
                    .unwrap_or_else(|| i.to_string());
                if let Some(ins) = self.df.stages.get(*i) {
                    for instruction in &ins.instructions {
                        if let Instruction::Onbuild(o) = instruction {
                            onbuild.push(o.expression.clone());
                        }
                    }
                }
                let mut image = base.image.clone();
                if let Some(c) = image.config.as_mut() {
                    c.on_build = None;
                }
                State {
                    image,
                    env: base.env.clone(),
                    config_env: ConfigEnv::default(),
                    build_args: base.build_args.clone(),
                    cmd_set: false,
                    provenance: base
                        .provenance
                        .keys()
                        .map(|k| (k.clone(), Origin::Stage(base_name.clone())))
                        .collect(),
                }
            }
            BaseSource::Image { reference, .. } => {
                let resolved = look_up(self.resolver, reference, &platform, line)?;
                sp.base = BaseSource::Image {
                    reference: ImageName::found(resolved.reference.clone()),
                    digest: resolved.digest.clone(),
                };
                let mut image = resolved.config;
                image.created = None;
                if let Some(c) = image.config.as_mut() {
                    onbuild = c.on_build.take().unwrap_or_default();
                }
                let mut provenance = BTreeMap::new();
                if let Some(c) = &image.config {
                    let origin = Origin::BaseImage(resolved.reference.to_string());
                    for (field, set) in [
                        ("Cmd", c.cmd.is_some()),
                        ("Entrypoint", c.entrypoint.is_some()),
                        ("Shell", c.shell.is_some()),
                        ("User", c.user.as_deref().is_some_and(|u| !u.is_empty())),
                        (
                            "WorkingDir",
                            c.working_dir.as_deref().is_some_and(|w| !w.is_empty()),
                        ),
                        ("Healthcheck", c.healthcheck.is_some()),
                        ("StopSignal", c.stop_signal.is_some()),
                    ] {
                        if set {
                            provenance.insert(field.to_string(), origin.clone());
                        }
                    }
                    for e in c.env.iter().flatten() {
                        provenance.insert(
                            format!("Env.{}", crate::image::split_env(e).0),
                            origin.clone(),
                        );
                    }
                }
                State {
                    image,
                    env: OrderedEnv::default(),
                    config_env: ConfigEnv::default(),
                    build_args: Vec::new(),
                    cmd_set: false,
                    provenance,
                }
            }
        };
        sp.base_history = state.image.history.len();
        if !matches!(sp.base, BaseSource::Stage(_)) {
            // The stage's env starts from the image's ENV, with a PATH.
            let mut env = state.config().env.clone().unwrap_or_default();
            if get_env(&env, "PATH").is_none() {
                env.push(format!("PATH={DEFAULT_PATH}"));
                state.provenance.insert("Env.PATH".into(), Origin::Default);
            }
            state.config().env = Some(env.clone());
            state.env = OrderedEnv::from_pairs(
                env.iter()
                    .map(|e| {
                        let (k, v) = crate::image::split_env(e);
                        (k.to_string(), v.to_string())
                    })
                    .collect(),
            );
        }
        state.config_env = ConfigEnv::index(
            state
                .image
                .config
                .as_ref()
                .and_then(|c| c.env.as_deref())
                .unwrap_or_default(),
        );
        Ok((state, onbuild))
    }

    fn dispatch_stage(
        &mut self,
        stage: &ins::Stage,
        sp: &mut StagePlan,
        finals: &[Option<State>],
    ) -> Result<State, PlanError> {
        let (mut state, onbuild) = self.initial_state(stage, sp, finals)?;
        // ONBUILD triggers of the base run first, located at the FROM line.
        let mut instructions: Vec<(Instruction, bool)> = Vec::new();
        for trigger in &onbuild {
            let one = parse_trigger(trigger).map_err(|message| PlanError::Invalid {
                line: sp.line,
                message: format!("ONBUILD {trigger}: {message}"),
            })?;
            instructions.push((one, true));
        }
        for i in &stage.instructions {
            instructions.push((i.clone(), false));
        }
        for (instruction, from_onbuild) in &instructions {
            let line = if *from_onbuild {
                sp.line
            } else {
                line_of(instruction.meta())
            };
            self.dispatch(instruction, line, &mut state, sp)?;
        }
        Ok(state)
    }

    fn stage_ref(
        &self,
        name: &str,
        current: usize,
        line: usize,
    ) -> Result<Option<usize>, PlanError> {
        let found = match name.parse::<usize>() {
            Ok(i) => {
                if i >= self.df.stages.len() {
                    return Err(PlanError::Invalid {
                        line,
                        message: format!("invalid stage index {i}"),
                    });
                }
                Some(i)
            }
            Err(_) => stage_by_name(self.df, name),
        };
        if let Some(i) = found {
            if i >= current {
                return Err(PlanError::ForwardReference {
                    line,
                    from: name.to_string(),
                    stage: self.df.stages[current]
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("stage-{current}")),
                });
            }
        }
        Ok(found)
    }

    fn commit(
        &self,
        state: &mut State,
        created_by: String,
        with_layer: bool,
        buildkit: bool,
    ) -> usize {
        state
            .image
            .history
            .push(history(&created_by, with_layer, buildkit, None));
        state.image.history.len() - 1
    }

    fn dispatch(
        &mut self,
        instruction: &Instruction,
        line: usize,
        state: &mut State,
        sp: &mut StagePlan,
    ) -> Result<(), PlanError> {
        let meta = instruction.meta();
        let origin = Origin::Line(line);
        let invalid = |message: String| PlanError::Invalid { line, message };
        match instruction {
            Instruction::Maintainer(m) => {
                state.image.author = Some(m.name.clone());
                self.commit(state, format!("MAINTAINER {}", m.name), false, false);
            }
            Instruction::Env(e) => {
                let mut msg = String::from("ENV");
                for kv in &e.pairs {
                    let key = self.expand(&kv.key, &state.env, line)?;
                    let value = self.expand(&kv.value, &state.env, line)?;
                    msg.push_str(&format!(" {key}={value}"));
                    state.env.set(&key, &value);
                    let mut list = state.config().env.take().unwrap_or_default();
                    state.config_env.set(&mut list, &key, &value);
                    state.config().env = Some(list);
                    state
                        .provenance
                        .insert(format!("Env.{key}"), origin.clone());
                }
                self.commit(state, msg, false, false);
            }
            Instruction::Label(l) => {
                let mut msg = String::from("LABEL");
                for kv in &l.pairs {
                    let key = self.expand(&kv.key, &state.env, line)?;
                    let value = self.expand(&kv.value, &state.env, line)?;
                    msg.push_str(&format!(" {key}={value}"));
                    state
                        .config()
                        .labels
                        .get_or_insert_with(BTreeMap::new)
                        .insert(key.clone(), value);
                    state
                        .provenance
                        .insert(format!("Labels.{key}"), origin.clone());
                }
                self.commit(state, msg, false, false);
            }
            Instruction::Arg(a) => {
                let mut parts = Vec::new();
                for def in &a.args {
                    let has_build_value = self.opts.build_args.contains_key(&def.key);
                    let mut value: Option<String> = None;
                    if def.value.is_none() && !has_build_value {
                        value = env_get(&self.global, &def.key).map(str::to_string);
                    }
                    if has_build_value {
                        self.used_args.insert(def.key.clone());
                        value = self.opts.build_args.get(&def.key).cloned();
                    } else if let Some(d) = &def.value {
                        value = Some(self.expand(d, &state.env, line)?);
                    }
                    if let Some(v) = &value {
                        state.env.set(&def.key, v);
                    }
                    state.build_args.push((def.key.clone(), value.clone()));
                    parts.push(match &value {
                        Some(v) => format!("{}={v}", def.key),
                        None => def.key.clone(),
                    });
                }
                self.commit(state, format!("ARG {}", parts.join(" ")), false, false);
            }
            Instruction::Workdir(w) => {
                let path = self.expand(&w.path, &state.env, line)?;
                let wd = normalize_workdir(&state.workdir(), &path);
                state.config().working_dir = Some(wd.clone());
                state.provenance.insert("WorkingDir".into(), origin.clone());
                let with_layer = wd != "/";
                let index = self.commit(state, format!("WORKDIR {wd}"), with_layer, false);
                if with_layer {
                    let user = state.user();
                    sp.steps.push(Step {
                        stage: sp.index,
                        line,
                        instruction: meta.original.clone(),
                        kind: StepKind::Workdir(WorkdirStep {
                            path: wd,
                            user: (!user.is_empty()).then_some(user),
                        }),
                        history_index: index,
                        cache_key: None,
                    });
                }
            }
            Instruction::User(u) => {
                let user = self.expand(&u.user, &state.env, line)?;
                state.config().user = Some(user.clone());
                state.provenance.insert("User".into(), origin.clone());
                self.commit(state, format!("USER {user}"), false, false);
            }
            Instruction::Expose(e) => {
                let mut words = Vec::new();
                for p in &e.ports {
                    words.extend(self.expand_all(p, &state.env, line)?);
                }
                let ports = parse_ports(&words).map_err(|e| invalid(e.to_string()))?;
                let map = state
                    .config()
                    .exposed_ports
                    .get_or_insert_with(BTreeMap::new);
                for p in &ports {
                    map.insert(p.clone(), serde_json::json!({}));
                }
                for p in &ports {
                    state
                        .provenance
                        .insert(format!("ExposedPorts.{p}"), origin.clone());
                }
                self.commit(state, format!("EXPOSE {}", go_list(&ports)), false, false);
            }
            Instruction::Volume(v) => {
                let mut vols = Vec::new();
                for raw in &v.volumes {
                    let vol = self.expand(raw, &state.env, line)?;
                    if vol.is_empty() {
                        return Err(invalid(
                            "VOLUME specified can not be an empty string".into(),
                        ));
                    }
                    vols.push(vol);
                }
                let map = state.config().volumes.get_or_insert_with(BTreeMap::new);
                for vol in &vols {
                    map.insert(vol.clone(), serde_json::json!({}));
                }
                for vol in &vols {
                    state
                        .provenance
                        .insert(format!("Volumes.{vol}"), origin.clone());
                }
                self.commit(state, format!("VOLUME {}", go_list(&vols)), false, false);
            }
            Instruction::Stopsignal(s) => {
                let signal = self.expand(&s.signal, &state.env, line)?;
                if !valid_signal(&signal) {
                    return Err(invalid(format!("Invalid signal: {signal}")));
                }
                state.config().stop_signal = Some(signal.clone());
                state.provenance.insert("StopSignal".into(), origin.clone());
                self.commit(state, format!("STOPSIGNAL {signal}"), false, false);
            }
            Instruction::Shell(s) => {
                state.config().shell = Some(s.shell.clone());
                state.provenance.insert("Shell".into(), origin.clone());
                self.commit(state, format!("SHELL {}", go_list(&s.shell)), false, false);
            }
            Instruction::Onbuild(o) => {
                state
                    .config()
                    .on_build
                    .get_or_insert_with(Vec::new)
                    .push(o.expression.clone());
                state.provenance.insert("OnBuild".into(), origin.clone());
            }
            Instruction::Cmd(c) => {
                let args = match &c.command {
                    CommandLine::Exec(v) => v.clone(),
                    CommandLine::Shell(s) => with_shell(state.shell(), s),
                };
                let config = state.config();
                config.cmd = Some(args.clone());
                config.args_escaped = Some(true);
                state.cmd_set = true;
                state.provenance.insert("Cmd".into(), origin.clone());
                self.commit(state, format!("CMD {}", go_quote_list(&args)), false, false);
            }
            Instruction::Entrypoint(e) => {
                let args = match &e.command {
                    CommandLine::Exec(v) => v.clone(),
                    CommandLine::Shell(s) => with_shell(state.shell(), s),
                };
                let cmd_set = state.cmd_set;
                let config = state.config();
                config.entrypoint = Some(args.clone());
                if !cmd_set {
                    config.cmd = None;
                    state.provenance.remove("Cmd");
                }
                state.provenance.insert("Entrypoint".into(), origin.clone());
                self.commit(
                    state,
                    format!("ENTRYPOINT {}", go_quote_list(&args)),
                    false,
                    false,
                );
            }
            Instruction::Healthcheck(h) => {
                let mut value = serde_json::Map::new();
                value.insert("Test".into(), serde_json::json!(h.test));
                for (key, v) in [
                    ("Interval", h.interval_ns),
                    ("Timeout", h.timeout_ns),
                    ("StartPeriod", h.start_period_ns),
                    ("StartInterval", h.start_interval_ns),
                ] {
                    if let Some(ns) = v.filter(|n| *n > 0) {
                        value.insert(key.into(), serde_json::json!(ns));
                    }
                }
                if let Some(r) = h.retries.filter(|r| *r > 0) {
                    value.insert("Retries".into(), serde_json::json!(r));
                }
                state.config().healthcheck = Some(serde_json::Value::Object(value));
                state
                    .provenance
                    .insert("Healthcheck".into(), origin.clone());
                let text = healthcheck_history(
                    &h.test,
                    h.interval_ns.unwrap_or(0),
                    h.timeout_ns.unwrap_or(0),
                    h.start_period_ns.unwrap_or(0),
                    h.start_interval_ns.unwrap_or(0),
                    h.retries.unwrap_or(0),
                );
                self.commit(state, text, false, false);
            }
            Instruction::Run(r) => {
                let step = self.run_step(r, line, state, sp.index)?;
                let text = run_history(&step.argv, &state.build_args, &state.env);
                let index = self.commit(state, format!("RUN {text}"), true, true);
                sp.steps.push(Step {
                    stage: sp.index,
                    line,
                    instruction: meta.original.clone(),
                    kind: StepKind::Run(step),
                    history_index: index,
                    cache_key: None,
                });
            }
            Instruction::Copy(c) => {
                let from = match &c.from {
                    None => CopyFrom::Context,
                    Some(name) => match self.stage_ref(name, sp.index, line)? {
                        Some(i) => CopyFrom::Stage(i),
                        None => CopyFrom::Image(ImageName::parse(name, line)?),
                    },
                };
                let step = self.copy_step(
                    false,
                    from,
                    &c.paths,
                    c.chown.as_deref(),
                    c.chmod.as_deref(),
                    None,
                    line,
                    state,
                )?;
                if step.from == CopyFrom::Context {
                    for src in &step.sources {
                        let git = crate::git::parse_git_source(src)
                            .map_err(|source| PlanError::Git { line, source })?;
                        if git.is_some() {
                            return Err(PlanError::Invalid {
                                line,
                                message: "source can't be a git ref for COPY".into(),
                            });
                        }
                    }
                }
                // An image source is resolved now, so that its digest is part
                // of the step's cache key (a moved tag invalidates it).
                let from_digest = match &step.from {
                    CopyFrom::Image(reference) => {
                        look_up(self.resolver, reference, &self.opts.target_platform, line)?.digest
                    }
                    _ => None,
                };
                let step = CopyStep {
                    link: c.link,
                    exclude: c.exclude.clone(),
                    parents: c.parents,
                    from_digest,
                    ..step
                };
                let msg = copy_history("COPY", c.parents, &step);
                let index = self.commit(state, msg, true, true);
                sp.steps.push(Step {
                    stage: sp.index,
                    line,
                    instruction: meta.original.clone(),
                    kind: StepKind::Copy(step),
                    history_index: index,
                    cache_key: None,
                });
            }
            Instruction::Add(a) => {
                let step = self.copy_step(
                    true,
                    CopyFrom::Context,
                    &a.paths,
                    a.chown.as_deref(),
                    a.chmod.as_deref(),
                    a.checksum.as_deref(),
                    line,
                    state,
                )?;
                let mut any_git = false;
                for src in &step.sources {
                    let git = crate::git::parse_git_source(src)
                        .map_err(|source| PlanError::Git { line, source })?;
                    let Some(git) = git else { continue };
                    any_git = true;
                    if let (Some(flag), Some(query)) = (a.keep_git_dir, git.keep_git_dir) {
                        if flag != query {
                            return Err(invalid("inconsistent keep-git-dir configuration".into()));
                        }
                    }
                    if let (Some(flag), Some(query)) = (&step.checksum, &git.checksum) {
                        if flag != query {
                            return Err(invalid(format!(
                                "checksum mismatch {flag:?} != {query:?}"
                            )));
                        }
                    }
                }
                if step.checksum.is_some() {
                    if step.sources.len() != 1 {
                        return Err(invalid(
                            "checksum can't be specified for multiple sources".into(),
                        ));
                    }
                    let url = step.sources[0].starts_with("http://")
                        || step.sources[0].starts_with("https://");
                    if !url && !any_git {
                        return Err(invalid("checksum requires HTTP(S) or Git sources".into()));
                    }
                }
                let step = CopyStep {
                    link: a.link,
                    exclude: a.exclude.clone(),
                    unpack: a.unpack,
                    keep_git_dir: if any_git { a.keep_git_dir } else { None },
                    ..step
                };
                // A URL's credentials are masked in what is shown and
                // recorded (BuildKit masks them in provenance only; its
                // history and progress show them).
                let msg = kiln_reference::redact_credentials(&copy_history("ADD", false, &step));
                let index = self.commit(state, msg, true, true);
                sp.steps.push(Step {
                    stage: sp.index,
                    line,
                    instruction: kiln_reference::redact_credentials(&meta.original),
                    kind: StepKind::Copy(step),
                    history_index: index,
                    cache_key: None,
                });
            }
        }
        Ok(())
    }

    fn run_step(
        &self,
        r: &ins::Run,
        line: usize,
        state: &State,
        current: usize,
    ) -> Result<RunStep, PlanError> {
        let mut script = None;
        let argv = match &r.command {
            CommandLine::Exec(v) => v.clone(),
            CommandLine::Shell(s) => {
                let mut cmdline = s.clone();
                if let [doc] = r.heredocs.as_slice() {
                    // A single heredoc: a shebang makes it a script, else
                    // its body is the shell command.
                    let data = if doc.chomp {
                        doc.data
                            .lines()
                            .map(|l| l.trim_start_matches('\t'))
                            .collect::<Vec<_>>()
                            .join("\n")
                            + if doc.data.ends_with('\n') { "\n" } else { "" }
                    } else {
                        doc.data.clone()
                    };
                    if cmdline.trim_start().starts_with("<<")
                        && cmdline.split_whitespace().count() == 1
                    {
                        if data.starts_with("#!") {
                            script = Some(InlineFile {
                                name: doc.name.clone(),
                                data,
                                // An ONBUILD trigger's lines are not the
                                // Dockerfile's: its RUN's (the FROM) line.
                                line: if r.meta.span.start_line() == line {
                                    doc.line
                                } else {
                                    line
                                },
                            });
                            return Ok(RunStep {
                                argv: vec![format!("/dev/pipes/{}", doc.name)],
                                ..self.run_common(r, line, state, current, script)?
                            });
                        }
                        return Ok(RunStep {
                            argv: with_shell(state.shell(), &data),
                            ..self.run_common(r, line, state, current, None)?
                        });
                    }
                }
                for doc in &r.heredocs {
                    cmdline.push('\n');
                    cmdline.push_str(&doc.data);
                    cmdline.push_str(&doc.name);
                }
                with_shell(state.shell(), &cmdline)
            }
        };
        Ok(RunStep {
            argv,
            ..self.run_common(r, line, state, current, script)?
        })
    }

    fn run_common(
        &self,
        r: &ins::Run,
        line: usize,
        state: &State,
        current: usize,
        script: Option<InlineFile>,
    ) -> Result<RunStep, PlanError> {
        let mut env: Vec<String> = state
            .env
            .pairs()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        // Proxy build args reach RUN without an ARG, in both spellings.
        for (k, v) in &self.opts.build_args {
            let lower = k.to_ascii_lowercase();
            if PROXY_ARGS.contains(&k.as_str()) {
                for name in [lower.to_ascii_uppercase(), lower.clone()] {
                    if !env.iter().any(|e| crate::image::split_env(e).0 == name) {
                        env.push(format!("{name}={v}"));
                    }
                }
            }
        }
        let mut mounts = Vec::new();
        let mut mount_stages = Vec::new();
        let mut mount_images = BTreeMap::new();
        for m in &r.mounts {
            let expanded = self.expand(m, &state.env, line)?;
            let stage = match mount_from(&expanded) {
                Some(from) => {
                    let stage = self.stage_ref(&from, current, line)?;
                    if stage.is_none() {
                        // Not a stage: an image, as BuildKit takes it.
                        let reference = ImageName::parse(&from, line)?;
                        let resolved =
                            look_up(self.resolver, &reference, &self.opts.target_platform, line)?;
                        mount_images.insert(
                            mounts.len(),
                            MountImage {
                                reference,
                                digest: resolved.digest,
                            },
                        );
                    }
                    stage
                }
                None => None,
            };
            mount_stages.push(stage);
            mounts.push(expanded);
        }
        Ok(RunStep {
            argv: Vec::new(),
            env,
            user: state.user(),
            workdir: {
                let w = state.workdir();
                if w.is_empty() {
                    "/".to_string()
                } else {
                    w
                }
            },
            network: r.network.clone(),
            security: r.security.clone(),
            mounts,
            mount_stages,
            mount_images,
            script,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_step(
        &self,
        is_add: bool,
        from: CopyFrom,
        paths: &ins::SourcesAndDest,
        chown: Option<&str>,
        chmod: Option<&str>,
        checksum: Option<&str>,
        line: usize,
        state: &State,
    ) -> Result<CopyStep, PlanError> {
        let env = &state.env;
        let mut sources = Vec::new();
        for s in &paths.sources {
            sources.push(self.expand(s, env, line)?);
        }
        let mut inline = Vec::new();
        for doc in &paths.inline_sources {
            let data = if doc.expand {
                // Raw expansion: quotes are data in a heredoc body.
                let lexer = kiln_parser::expand::Lexer {
                    skip_process_quotes: true,
                    ..kiln_parser::expand::Lexer::new('\\')
                };
                lexer
                    .expand(&doc.data, env)
                    .map(|e| e.value)
                    .map_err(|e| PlanError::Expand {
                        line,
                        message: e.to_string(),
                    })?
            } else {
                doc.data.clone()
            };
            inline.push(InlineFile {
                name: doc.name.clone(),
                data,
                line: 0,
            });
        }
        let dest_raw = self.expand(&paths.dest, env, line)?;
        let dest = dest_path(&state.workdir(), &dest_raw);
        let opt = |v: Option<&str>| -> Result<Option<String>, PlanError> {
            match v {
                None => Ok(None),
                Some(v) => {
                    let e = self.expand(v, env, line)?;
                    Ok((!e.is_empty()).then_some(e))
                }
            }
        };
        let chmod = opt(chmod)?;
        if let Some(c) = &chmod {
            crate::modes::Chmod::parse(c).map_err(|e| PlanError::Invalid {
                line,
                message: e.to_string(),
            })?;
        }
        Ok(CopyStep {
            is_add,
            from,
            sources,
            inline,
            dest,
            dest_as_written: dest_raw,
            chown: opt(chown)?,
            chmod,
            link: false,
            exclude: Vec::new(),
            checksum: opt(checksum)?,
            unpack: None,
            parents: false,
            from_digest: None,
            keep_git_dir: None,
            git_commits: BTreeMap::new(),
        })
    }
}

/// `withShell`: the shell words plus the command line as one argument.
fn with_shell(mut shell: Vec<String>, cmdline: &str) -> Vec<String> {
    shell.push(cmdline.to_string());
    shell
}

/// `runCommandString`: `|N K=V ... argv...` when ARGs are in scope.
fn run_history(argv: &[String], args: &[(String, Option<String>)], env: &OrderedEnv) -> String {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (key, value) in args {
        let v = env
            .first(key)
            .map(str::to_string)
            .unwrap_or_else(|| value.clone().unwrap_or_default());
        match pairs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = v,
            None => pairs.push((key.clone(), v)),
        }
    }
    let mut words: Vec<String> = Vec::new();
    if !pairs.is_empty() {
        words.push(format!("|{}", pairs.len()));
        words.extend(pairs.into_iter().map(|(k, v)| format!("{k}={v}")));
    }
    words.extend(argv.iter().cloned());
    words.join(" ")
}

fn copy_history(verb: &str, parents: bool, step: &CopyStep) -> String {
    let mut msg = verb.to_string();
    if parents {
        msg.push_str(" --parents");
    }
    if let Some(c) = &step.chown {
        msg.push_str(&format!(" --chown={c}"));
    }
    if let Some(c) = &step.chmod {
        msg.push_str(&format!(" --chmod={c}"));
    }
    for s in &step.sources {
        msg.push(' ');
        msg.push_str(s);
    }
    for doc in &step.inline {
        msg.push_str(&format!(" <<{}", doc.name));
    }
    msg.push(' ');
    msg.push_str(&step.dest_as_written);
    msg
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

/// Computes each needed step's cache key: a digest over the parent's key
/// (or the base's identity), the expanded instruction, the environment
/// and args reaching it, and for COPY/ADD the content selected in the
/// context (or the source stage's key). An ADD URL is keyed by the URL and
/// its `--checksum` only: without one, use [`compute_cache_keys_fetching`].
/// An ADD of a Git repository is keyed by the commit its ref names now
/// (`git ls-remote`, see [`crate::git`]); the commit is kept in the step
/// for the solver to check out.
pub fn compute_cache_keys(
    plan: &mut Plan,
    context: Option<&BuildContext>,
) -> Result<(), PlanError> {
    compute_cache_keys_fetching(plan, context, None)
}

/// [`compute_cache_keys`], with an ADD URL that has no `--checksum` keyed
/// on its content as `downloads` has it now (the content digest and
/// Last-Modified), as BuildKit keys on content: a changed file at the same
/// URL misses the cache. The download stays in `downloads` for the solver
/// ([`crate::solve::SolveOptions::downloads`]), so a build fetches each URL
/// once.
pub fn compute_cache_keys_fetching(
    plan: &mut Plan,
    context: Option<&BuildContext>,
    downloads: Option<&UrlDownloads<'_>>,
) -> Result<(), PlanError> {
    let mut git_commits: BTreeMap<String, crate::git::ResolvedCommit> = BTreeMap::new();
    let mut finals: BTreeMap<usize, String> = BTreeMap::new();
    let order = plan.order.clone();
    for &index in &order {
        let base_key = {
            let sp = &plan.stages[index];
            match &sp.base {
                BaseSource::Scratch => format!("scratch/{}", plan_platform(&sp.image)),
                BaseSource::Image { reference, digest } => {
                    format!(
                        "image/{}/{}",
                        digest
                            .as_ref()
                            .map_or(reference.shown.as_str(), Digest::as_str),
                        plan_platform(&sp.image)
                    )
                }
                BaseSource::Stage(i) => finals.get(i).cloned().unwrap_or_default(),
            }
        };
        let mut parent = base_key;
        let steps_len = plan.stages[index].steps.len();
        for n in 0..steps_len {
            let step = plan.stages[index].steps[n].clone();
            let mut h = Sha256::new();
            h.update(b"kiln-step-v1\0");
            h.update(parent.as_bytes());
            h.update(b"\0");
            let body = serde_json::to_string(&step.kind).map_err(|e| PlanError::CacheKey {
                line: step.line,
                message: e.to_string(),
            })?;
            h.update(body.as_bytes());
            h.update(b"\0");
            let mut resolved_git = BTreeMap::new();
            match &step.kind {
                StepKind::Copy(c) => match &c.from {
                    CopyFrom::Context => {
                        for (source_index, src) in c.sources.iter().enumerate() {
                            let git = match c.is_add {
                                true => crate::git::parse_git_source(src).map_err(|source| {
                                    PlanError::Git {
                                        line: step.line,
                                        source,
                                    }
                                })?,
                                false => None,
                            };
                            if let Some(git) = git {
                                let git = git.with_checksum_flag(c.checksum.as_deref());
                                // Keyed on the commit the ref names now (the
                                // URL, ref and subdir are in the body).
                                let resolved = match git_commits.get(src) {
                                    Some(r) => r.clone(),
                                    None => {
                                        let r =
                                            crate::git::resolve_commit(&git).map_err(|source| {
                                                PlanError::Git {
                                                    line: step.line,
                                                    source,
                                                }
                                            })?;
                                        git_commits.insert(src.clone(), r.clone());
                                        r
                                    }
                                };
                                h.update(format!("git:{}\0", resolved.commit).as_bytes());
                                resolved_git.insert(source_index, resolved);
                                continue;
                            }
                            if src.starts_with("http://") || src.starts_with("https://") {
                                h.update(format!("url:{src}\0").as_bytes());
                                if let (None, Some(downloads)) = (&c.checksum, downloads) {
                                    h.update(
                                        url_content_key(downloads, src, step.line)?.as_bytes(),
                                    );
                                }
                                continue;
                            }
                            h.update(context_selection(context, src, step.line)?.as_bytes());
                        }
                    }
                    CopyFrom::Stage(i) => {
                        h.update(finals.get(i).map(String::as_str).unwrap_or("").as_bytes());
                    }
                    CopyFrom::Image(r) => h.update(format!("image:{r}\0").as_bytes()),
                },
                StepKind::Run(r) => {
                    for i in r.mount_stages.iter().flatten() {
                        h.update(finals.get(i).map(String::as_str).unwrap_or("").as_bytes());
                    }
                }
                StepKind::Workdir(_) => {}
            }
            let key = Digest::from_hash(&h.finalize());
            if let StepKind::Copy(c) = &mut plan.stages[index].steps[n].kind {
                if !resolved_git.is_empty() {
                    c.git_commits = resolved_git;
                }
            }
            parent = key.to_string();
            plan.stages[index].steps[n].cache_key = Some(key);
        }
        finals.insert(index, parent);
    }
    Ok(())
}

/// What an ADD URL's cache key takes from the download: the content's
/// digest and the Last-Modified time (it becomes the file's mtime).
fn url_content_key(
    downloads: &UrlDownloads<'_>,
    url: &str,
    line: usize,
) -> Result<String, PlanError> {
    let downloaded = downloads.get(url).map_err(|e| PlanError::UrlFetch {
        line,
        url: url.to_string(),
        message: match e {
            crate::copy::CopyError::Fetch { message, .. } => message,
            other => other.to_string(),
        },
    })?;
    Ok(format!(
        "content:{}\0mtime:{:?}\0",
        downloaded.digest, downloaded.last_modified
    ))
}

fn plan_platform(image: &ImageConfig) -> String {
    format!("{}/{}", image.os, image.architecture)
}

/// What a COPY source selects in the context, as a digest string.
fn context_selection(
    context: Option<&BuildContext>,
    src: &str,
    line: usize,
) -> Result<String, PlanError> {
    let Some(ctx) = context else {
        return Ok(format!("unhashed:{src}\0"));
    };
    let matches = resolve_wildcards(ctx, src, true).map_err(|e| PlanError::CopySource {
        line,
        path: src.to_string(),
        message: e.to_string(),
    })?;
    let mut out = String::new();
    for m in matches {
        let followed = resolve(ctx, &m, true).map_err(|e| PlanError::CopySource {
            line,
            path: src.to_string(),
            message: e.to_string(),
        })?;
        let digest = ctx
            .tree_digest(&followed)
            .ok_or_else(|| PlanError::CopySource {
                line,
                path: src.to_string(),
                message: format!("\"/{m}\": not found"),
            })?;
        out.push_str(&format!("{m}={digest}\0"));
    }
    Ok(out)
}
