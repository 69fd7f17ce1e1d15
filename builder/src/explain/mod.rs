//! `kiln explain`: what an image built from a Dockerfile will run, and why,
//! without building it.
//!
//! The target stage's config comes from the builder's own plan
//! ([`crate::plan::plan`]: the same ARG/ENV scoping and config assembly a
//! build uses, stages built FROM earlier stages inheriting their config),
//! with base images read through an [`ImageLookup`] (the local store:
//! [`crate::solve::StoreResolver::open_existing`]). On top of it, explain adds:
//! - `argv`: what `docker run [--entrypoint E] IMAGE [ARGS...]` executes,
//!   from [`crate::run_argv::docker_run_command`] (the function `kiln run`
//!   uses); `None` when docker run would fail with "no command specified";
//! - where each value came from (a Dockerfile line, a base image, a stage,
//!   a default);
//! - warnings about the usual CMD/ENTRYPOINT mistakes, with lines;
//! - which cell of the Dockerfile reference's CMD × ENTRYPOINT table the
//!   image is in ([`render::text`] draws it).
//!
//! ```
//! use kiln_builder::explain::{explain, ExplainOptions};
//! use kiln_builder::plan::OfflineResolver;
//! let df = kiln_parser::parse("FROM scratch\nENTRYPOINT [\"/app\"]\nCMD [\"--help\"]\n", "Dockerfile").unwrap();
//! let df = kiln_parser::instructions::from_ast(&df).unwrap();
//! let mut options = ExplainOptions::default();
//! options.args = vec!["serve".into()];
//! let e = explain(&df, &options, &OfflineResolver).unwrap();
//! assert_eq!(e.argv.unwrap(), ["/app", "serve"]);
//! assert_eq!(e.sources["cmd"].line, Some(3));
//! ```

pub mod compose;
pub mod history;
pub mod image;
pub mod kube;
pub mod launch;
pub mod pid1;
pub mod render;
mod yaml;
use std::collections::BTreeMap;

use kiln_layers::oci::ContainerConfig;
use kiln_parser::instructions::{self as ins, CommandLine, Instruction};
use serde::Serialize;

use crate::image::default_shell;
use crate::plan::{
    plan_with, BaseSource, BuildOptions, ImageLookup, NoObserver, Origin, Plan, PlanError,
    PlanErrorKind, StagePlan, WalkOptions,
};
use crate::run_argv::docker_run_command;

/// Why explain could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// A base image is neither in the store nor reachable (without --offline).
    #[error("line {line}: base image {image}: {message} (pull it first, or use --offline to treat it as empty)")]
    UnknownBase {
        line: usize,
        image: String,
        message: String,
    },
    #[error(transparent)]
    Plan(#[from] PlanError),
}

/// What to explain: the build (target, build args, platform) and the
/// `docker run` invocation (`--entrypoint`, arguments).
#[derive(Debug, Clone, Default)]
pub struct ExplainOptions {
    pub build: BuildOptions,
    /// `docker run --entrypoint E` (`Some("")` resets it).
    pub entrypoint: Option<String>,
    /// The arguments after the image name.
    pub args: Vec<String>,
    /// Treat base images the resolver does not know as empty.
    pub offline: bool,
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    /// `line` (a Dockerfile instruction), `onbuild` (an ONBUILD trigger of
    /// the base, run at the FROM on `line`), `base_image`, `default`
    /// (BuildKit's default: PATH, `/` as the working directory of scratch,
    /// the shell), or `reset` (cleared by the instruction on `line`, or by
    /// the `history` entry). Explaining an image: `history` (the entry
    /// that set it), `unknown` (no entry says); where it runs:
    /// `docker_run`, `kubernetes`, `compose` (the field on `line` of `file`).
    pub from: &'static str,
    pub line: Option<usize>,
    /// The instruction as written, for `line` and `reset`.
    pub instruction: Option<String>,
    /// The stage the line is in, when it is not the target stage.
    pub stage: Option<String>,
    /// The base image, for `base_image`.
    pub image: Option<String>,
    /// The image history entry (its index, 0 the oldest), for `history`
    /// (and `base_image`, `reset` when read from an image's history).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<usize>,
    /// That entry's `created_by`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// The Kubernetes manifest or Compose file, for `kubernetes` and
    /// `compose` (`instruction` is then the field, `line` its line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl Source {
    /// A source of kind `from`, nothing else known yet.
    pub fn new(from: &'static str) -> Source {
        Source {
            from,
            line: None,
            instruction: None,
            stage: None,
            image: None,
            history: None,
            created_by: None,
            file: None,
        }
    }
}

/// A warning about what the image runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub code: &'static str,
    pub message: String,
    pub line: Option<usize>,
    /// The image history entry concerned (explaining an image).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<usize>,
    /// The manifest or Compose file `line` is in (explaining where it runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// How a command was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    /// Absent or empty.
    None,
    Exec,
    Shell,
}

/// What `docker run` runs for the usual invocations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunExamples {
    /// `docker run IMAGE`.
    pub plain: Option<Vec<String>>,
    /// `docker run IMAGE ARGS...` (the given arguments, else `ARGS`).
    pub with_args: Option<Vec<String>>,
    pub example_args: Vec<String>,
    /// `docker run --entrypoint X IMAGE` (the given entrypoint, else `X`).
    pub with_entrypoint: Option<Vec<String>>,
    pub example_entrypoint: String,
}

/// The answer.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The target stage: its name, or `stage-N`.
    pub target: String,
    /// What the target stage is built on (image reference, `scratch`, or
    /// `stage NAME`).
    pub base: String,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// What `docker run [--entrypoint E] IMAGE [ARGS...]` executes with the
    /// given `--entrypoint` and arguments; `None`: "no command specified".
    pub argv: Option<Vec<String>>,
    /// The shell shell-form instructions use (SHELL, else `/bin/sh -c`).
    pub shell: Vec<String>,
    /// `Config.User` (`None`/empty: root).
    pub user: Option<String>,
    /// `Config.WorkingDir` (`None`/empty: `/`).
    pub workdir: Option<String>,
    pub env: Vec<String>,
    pub exposed_ports: Vec<String>,
    pub volumes: Vec<String>,
    pub healthcheck: Option<serde_json::Value>,
    pub stop_signal: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Field (`entrypoint`, `cmd`, `shell`, `user`, `workdir`, `env.NAME`,
    /// `exposed_ports.P`, `volumes.V`, `healthcheck`, `stop_signal`,
    /// `labels.K`) → where it came from. Unset fields have no entry.
    pub sources: BTreeMap<String, Source>,
    pub warnings: Vec<Warning>,
    pub entrypoint_form: Form,
    pub cmd_form: Form,
    pub run: RunExamples,
    /// What was explained when it is not a Dockerfile: an image, or an
    /// image where it runs (a Kubernetes container, a Compose service).
    /// The values above are then the container's: the runtime's fields
    /// over the image's config.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<Subject>,
    /// The image's own values that the runtime replaced, by field.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub overridden: BTreeMap<String, Overridden>,
    /// Which process is PID 1 and what stopping the container does
    /// (explaining an image or where it runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid1: Option<pid1::Pid1>,
}

/// What an explanation of an image (not a Dockerfile) is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Subject {
    /// `image` (`docker run`), `kubernetes` or `compose`.
    pub kind: &'static str,
    /// The image as named.
    pub image: String,
    /// Its manifest digest, when known.
    pub digest: Option<String>,
    /// The image it was built on, when that can be told (an image in the
    /// store whose layers and history this one's start with).
    pub base: Option<String>,
    /// How many history entries came with that base.
    pub base_history_entries: usize,
    /// The Kubernetes manifest or Compose file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The workload (`Deployment web`) the container is in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// The container or service name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The line the container or service starts on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// The command fields the runtime sets (`command`, `args`; Compose's
    /// `entrypoint`, `command`; docker run's `--entrypoint`, `arguments`).
    pub given: Vec<String>,
}

/// An image value the runtime replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Overridden {
    /// The image's value (a command as a JSON list).
    pub image_value: serde_json::Value,
    /// Where the image's value came from.
    pub image_source: Option<Source>,
}

/// Builds the explanation for `options.build.target` (the last stage when
/// unset).
pub fn explain(
    df: &ins::Dockerfile,
    options: &ExplainOptions,
    images: &dyn ImageLookup,
) -> Result<Explanation, ExplainError> {
    let plan = plan_target(df, options, images)?;
    let target = Target::new(df, &plan, options, images);
    let sources = sources(&target);
    let commands = &target.commands;
    let argv = commands.argv(options.entrypoint.as_deref(), &options.args);
    let warnings = warnings(&target, &sources, argv.is_none());
    let run = run_examples(commands, options);
    let config = &target.config;
    Ok(Explanation {
        target: stage_label(df, plan.target),
        base: base_label(df, &plan.stages[plan.target]),
        entrypoint: commands.entrypoint.clone(),
        cmd: commands.cmd.clone(),
        argv,
        shell: commands.shell.clone(),
        user: config.user.clone(),
        workdir: config.working_dir.clone(),
        env: config.env.clone().unwrap_or_default(),
        exposed_ports: config
            .exposed_ports
            .as_ref()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
        volumes: config
            .volumes
            .as_ref()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
        healthcheck: config.healthcheck.clone(),
        stop_signal: config.stop_signal.clone(),
        labels: config.labels.clone().unwrap_or_default(),
        sources,
        warnings,
        entrypoint_form: commands.entrypoint_form,
        cmd_form: commands.cmd_form,
        run,
        subject: None,
        overridden: BTreeMap::new(),
        pid1: None,
    })
}

/// Plans the stages the target needs; a base image nothing knows (without
/// `--offline`) is an [`ExplainError::UnknownBase`].
fn plan_target(
    df: &ins::Dockerfile,
    options: &ExplainOptions,
    images: &dyn ImageLookup,
) -> Result<Plan, ExplainError> {
    let walk = WalkOptions {
        all_stages: false,
        unknown_images_empty: options.offline,
    };
    plan_with(df, &options.build, images, walk, &mut NoObserver).map_err(|e| match e {
        PlanError {
            line: Some(line),
            kind: PlanErrorKind::Resolve { reference, source },
        } if source.is_not_found() => ExplainError::UnknownBase {
            line,
            image: reference,
            message: source.to_string(),
        },
        other => ExplainError::Plan(other),
    })
}

/// The target stage as planned: its final config, and what the stages it
/// is built on did to CMD and ENTRYPOINT.
struct Target<'a> {
    df: &'a ins::Dockerfile,
    plan: &'a Plan,
    config: ContainerConfig,
    history: CommandHistory,
    commands: Commands,
    /// The image the chain of stages starts from, and its config.
    base: Option<(String, ContainerConfig)>,
}

impl<'a> Target<'a> {
    fn new(
        df: &'a ins::Dockerfile,
        plan: &'a Plan,
        options: &ExplainOptions,
        images: &dyn ImageLookup,
    ) -> Target<'a> {
        let config = plan.stages[plan.target]
            .image
            .config
            .clone()
            .unwrap_or_default();
        let chain = stage_chain(plan);
        let base = base_image_config(&plan.stages[chain[0]], options, images);
        let history = command_history(df, &chain, &plan.stages, base.as_ref());
        let commands = Commands::new(&config, &history);
        let base = base.map(|c| (base_label(df, &plan.stages[chain[0]]), c));
        Target {
            df,
            plan,
            config,
            history,
            commands,
            base,
        }
    }
}

/// The chain of stages the target is built on, root first.
fn stage_chain(plan: &Plan) -> Vec<usize> {
    let mut chain = vec![plan.target];
    while let Some(&first) = chain.first() {
        match plan.stages[first].base {
            BaseSource::Stage(i) => chain.insert(0, i),
            _ => break,
        }
    }
    chain
}

/// The config of the image the `root` stage is built on, when the lookup
/// knows it.
fn base_image_config(
    root: &StagePlan,
    options: &ExplainOptions,
    images: &dyn ImageLookup,
) -> Option<ContainerConfig> {
    match &root.base {
        BaseSource::Image { reference, .. } => images
            .lookup(&reference.reference, &options.build.target_platform)
            .ok()
            .and_then(|r| r.config.config),
        _ => None,
    }
}

/// What a stage is built on: `scratch`, an image reference, `stage NAME`.
fn base_label(df: &ins::Dockerfile, stage: &StagePlan) -> String {
    match &stage.base {
        BaseSource::Scratch => "scratch".to_string(),
        BaseSource::Image { reference, .. } => reference.to_string(),
        BaseSource::Stage(i) => format!("stage {}", stage_label(df, *i)),
        BaseSource::NamedContext { name, .. } => format!("context {name}"),
    }
}

/// The final ENTRYPOINT and CMD (empty ones dropped), the shell, and how
/// each command was written.
pub(crate) struct Commands {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    shell: Vec<String>,
    entrypoint_form: Form,
    cmd_form: Form,
}

impl Commands {
    fn new(config: &ContainerConfig, history: &CommandHistory) -> Commands {
        let shell = match config.shell.clone() {
            Some(s) if !s.is_empty() => s,
            _ => default_shell(),
        };
        let entrypoint = config.entrypoint.clone().filter(|v| !v.is_empty());
        let cmd = config.cmd.clone().filter(|v| !v.is_empty());
        Commands {
            entrypoint_form: form_of(entrypoint.as_deref(), history.entrypoint.as_ref(), &shell),
            cmd_form: form_of(cmd.as_deref(), history.cmd.as_ref(), &shell),
            entrypoint,
            cmd,
            shell,
        }
    }

    /// What `docker run [--entrypoint E] IMAGE [ARGS...]` executes; `None`:
    /// "no command specified".
    fn argv(&self, entrypoint: Option<&str>, args: &[String]) -> Option<Vec<String>> {
        docker_run_command(
            self.entrypoint.as_deref(),
            self.cmd.as_deref(),
            entrypoint,
            args,
        )
        .ok()
        .map(|r| r.argv())
    }
}

/// Where each field came from: the plan's provenance, then what it does
/// not record (a CMD an ENTRYPOINT reset, the default shell, the values
/// the stage started with).
fn sources(target: &Target<'_>) -> BTreeMap<String, Source> {
    let (df, plan, config) = (target.df, target.plan, &target.config);
    let mut sources = BTreeMap::new();
    for (key, origin) in &plan.stages[plan.target].provenance {
        let field = field_name(key);
        sources.insert(
            field,
            resolve_origin(df, &plan.stages, key, origin, plan.target, 0),
        );
    }
    if let Some(reset) = &target.history.cmd_reset {
        if target.commands.cmd.is_none() {
            sources.insert(
                "cmd".to_string(),
                Source {
                    line: Some(reset.line),
                    instruction: Some(reset.text.clone()),
                    stage: other_stage(df, reset.stage, plan.target),
                    ..Source::new("reset")
                },
            );
        }
    }
    if config.shell.as_ref().is_none_or(Vec::is_empty) {
        sources.insert("shell".to_string(), default_source());
    }
    // Values nothing claims came with the stage's starting config (scratch's
    // PATH and working directory).
    for entry in config.env.iter().flatten() {
        let key = format!("env.{}", crate::image::split_env(entry).0);
        sources.entry(key).or_insert_with(default_source);
    }
    if config.working_dir.as_deref().is_some_and(|w| !w.is_empty()) {
        sources
            .entry("workdir".to_string())
            .or_insert_with(default_source);
    }
    if let Some((image, base)) = &target.base {
        inherited_sources(&mut sources, config, base, image);
    }
    sources
}

/// Labels, exposed ports and volumes no line set that the base image has:
/// they came with it (the plan records only the base's commands, user,
/// workdir and env).
fn inherited_sources(
    sources: &mut BTreeMap<String, Source>,
    config: &ContainerConfig,
    base: &ContainerConfig,
    image: &str,
) {
    let keys = |m: Option<&BTreeMap<String, serde_json::Value>>| -> Vec<String> {
        m.map(|m| m.keys().cloned().collect()).unwrap_or_default()
    };
    let base_labels: Vec<String> = base.labels.iter().flat_map(|l| l.keys().cloned()).collect();
    let fields = [
        (
            "labels",
            config
                .labels
                .iter()
                .flat_map(|l| l.keys().cloned())
                .collect::<Vec<_>>(),
            base_labels,
        ),
        (
            "exposed_ports",
            keys(config.exposed_ports.as_ref()),
            keys(base.exposed_ports.as_ref()),
        ),
        (
            "volumes",
            keys(config.volumes.as_ref()),
            keys(base.volumes.as_ref()),
        ),
    ];
    for (field, present, inherited) in fields {
        for key in present.iter().filter(|k| inherited.contains(k)) {
            sources
                .entry(format!("{field}.{key}"))
                .or_insert_with(|| Source {
                    image: Some(image.to_string()),
                    ..Source::new("base_image")
                });
        }
    }
}

/// What `docker run` runs plainly, with arguments (the given ones, else
/// `ARGS`) and with `--entrypoint` (the given one, else `X`).
fn run_examples(commands: &Commands, options: &ExplainOptions) -> RunExamples {
    let example_args = if options.args.is_empty() {
        vec!["ARGS".to_string()]
    } else {
        options.args.clone()
    };
    let example_entrypoint = options
        .entrypoint
        .clone()
        .unwrap_or_else(|| "X".to_string());
    RunExamples {
        plain: commands.argv(None, &[]),
        with_args: commands.argv(None, &example_args),
        example_args,
        with_entrypoint: commands.argv(Some(&example_entrypoint), &[]),
        example_entrypoint,
    }
}

/// Every warning, in order: base images taken as empty, the CMD and
/// ENTRYPOINT mistakes, no command (when `no_command`), unused build
/// arguments.
fn warnings(
    target: &Target<'_>,
    sources: &BTreeMap<String, Source>,
    no_command: bool,
) -> Vec<Warning> {
    let mut warnings = Vec::new();
    for (image, line) in &target.plan.unknown_images {
        warnings.push(Warning {
            code: "BaseImageUnknown",
            message: format!(
                "base image {image} is not in the local store; --offline treats it as empty, so whatever it sets (CMD, ENTRYPOINT, ENV, USER, …) is missing here"
            ),
            line: Some(*line),
            ..Default::default()
        });
    }
    instruction_warnings(&mut warnings, &target.history, target.commands.cmd_form);
    shell_form_warnings(&mut warnings, &target.commands, sources);
    if no_command {
        let commands = &target.commands;
        let message = if commands.entrypoint.is_none() && commands.cmd.is_none() {
            "the image has neither ENTRYPOINT nor CMD: `docker run IMAGE` fails with \"no command specified\" unless a command is given".to_string()
        } else {
            "with this --entrypoint and no arguments, docker run has no command and fails with \"no command specified\"".to_string()
        };
        warnings.push(Warning {
            code: "NoCommand",
            message,
            line: None,
            ..Default::default()
        });
    }
    for w in &target.plan.warnings {
        warnings.push(Warning {
            code: "UnusedBuildArg",
            message: w.message.clone(),
            line: w.line,
            ..Default::default()
        });
    }
    warnings
}

fn stage_label(df: &ins::Dockerfile, index: usize) -> String {
    df.stages
        .get(index)
        .and_then(|s| s.name.clone())
        .unwrap_or_else(|| format!("stage-{index}"))
}

fn other_stage(df: &ins::Dockerfile, stage: usize, target: usize) -> Option<String> {
    (stage != target).then(|| stage_label(df, stage))
}

fn default_source() -> Source {
    Source::new("default")
}

/// The plan's provenance key (`Cmd`, `Env.PATH`, …) as explain names it.
fn field_name(key: &str) -> String {
    let (head, rest) = match key.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (key, None),
    };
    let head = match head {
        "Cmd" => "cmd",
        "Entrypoint" => "entrypoint",
        "Shell" => "shell",
        "User" => "user",
        "WorkingDir" => "workdir",
        "Env" => "env",
        "ExposedPorts" => "exposed_ports",
        "Volumes" => "volumes",
        "Healthcheck" => "healthcheck",
        "StopSignal" => "stop_signal",
        "Labels" => "labels",
        "OnBuild" => "onbuild",
        other => other,
    };
    match rest {
        Some(r) => format!("{head}.{r}"),
        None => head.to_string(),
    }
}

/// Follows `Stage` origins back to the line (or image) that set the value.
fn resolve_origin(
    df: &ins::Dockerfile,
    stages: &[StagePlan],
    key: &str,
    origin: &Origin,
    target: usize,
    depth: usize,
) -> Source {
    match origin {
        Origin::Line(line) => Source {
            // The planner places the base's ONBUILD triggers at the FROM line.
            from: if df.stages.iter().any(|s| s.from.span.start.line == *line) {
                "onbuild"
            } else {
                "line"
            },
            line: Some(*line),
            instruction: instruction_at(df, *line),
            stage: stage_of_line(df, *line).and_then(|s| other_stage(df, s, target)),
            ..Source::new("line")
        },
        Origin::BaseImage(image) => Source {
            image: Some(image.clone()),
            ..Source::new("base_image")
        },
        Origin::Default => default_source(),
        Origin::Stage(name) => {
            let found = stages
                .iter()
                .find(|s| s.name.as_deref() == Some(name.as_str()) || s.index.to_string() == *name);
            match found.and_then(|s| s.provenance.get(key)) {
                Some(inner) if depth < stages.len() => {
                    resolve_origin(df, stages, key, inner, target, depth + 1)
                }
                _ => Source {
                    stage: Some(name.clone()),
                    ..Source::new("stage")
                },
            }
        }
    }
}

fn all_instructions(df: &ins::Dockerfile) -> impl Iterator<Item = (usize, &ins::Meta)> {
    df.stages.iter().flat_map(|s| {
        std::iter::once((s.index, &s.from))
            .chain(s.instructions.iter().map(move |i| (s.index, i.meta())))
    })
}

fn instruction_at(df: &ins::Dockerfile, line: usize) -> Option<String> {
    all_instructions(df)
        .find(|(_, m)| m.span.start.line == line)
        .map(|(_, m)| m.original.trim().to_string())
}

fn stage_of_line(df: &ins::Dockerfile, line: usize) -> Option<usize> {
    all_instructions(df)
        .find(|(_, m)| m.span.start.line == line)
        .map(|(s, _)| s)
}

/// A CMD or ENTRYPOINT instruction in the target's stage chain.
#[derive(Debug, Clone)]
struct CommandSite {
    stage: usize,
    line: usize,
    text: String,
    form: Form,
    /// Exec-form words that contain `$` (not expanded by anything).
    literal_variables: Vec<String>,
}

/// What the instructions of the stage chain did to CMD and ENTRYPOINT.
#[derive(Debug, Default)]
struct CommandHistory {
    /// The instruction that set the final value (None: inherited from the
    /// base image, or never set).
    entrypoint: Option<CommandSite>,
    cmd: Option<CommandSite>,
    /// The ENTRYPOINT that cleared a non-empty inherited CMD, when nothing
    /// set CMD after it; with the CMD it dropped.
    cmd_reset: Option<CommandSite>,
    dropped_cmd: Vec<String>,
    /// Instructions overridden by a later one of the same kind in the same stage.
    overridden: Vec<(CommandSite, CommandSite, &'static str)>,
}

fn command_history(
    df: &ins::Dockerfile,
    chain: &[usize],
    stages: &[StagePlan],
    base: Option<&ContainerConfig>,
) -> CommandHistory {
    let mut h = CommandHistory::default();
    for (position, &index) in chain.iter().enumerate() {
        let Some(stage) = df.stages.get(index) else {
            continue;
        };
        // The CMD this stage starts with: the base image's, or the previous
        // stage's final one.
        let incoming: Vec<String> = match position {
            0 => base.and_then(|c| c.cmd.clone()),
            _ => stages
                .get(chain[position - 1])
                .and_then(|s| s.image.config.as_ref())
                .and_then(|c| c.cmd.clone()),
        }
        .unwrap_or_default();
        let mut cmd_in_stage: Option<CommandSite> = None;
        let mut entrypoint_in_stage: Option<CommandSite> = None;
        for instruction in &stage.instructions {
            let (command, is_cmd) = match instruction {
                Instruction::Cmd(c) => (&c.command, true),
                Instruction::Entrypoint(e) => (&e.command, false),
                _ => continue,
            };
            let meta = instruction.meta();
            let site = CommandSite {
                stage: index,
                line: meta.span.start.line,
                text: meta.original.trim().to_string(),
                form: match command {
                    CommandLine::Exec(v) if v.is_empty() => Form::None,
                    CommandLine::Exec(_) => Form::Exec,
                    CommandLine::Shell(s) if s.is_empty() => Form::None,
                    CommandLine::Shell(_) => Form::Shell,
                },
                literal_variables: match command {
                    CommandLine::Exec(v) => v.iter().filter(|w| w.contains('$')).cloned().collect(),
                    CommandLine::Shell(_) => Vec::new(),
                },
            };
            if is_cmd {
                if let Some(prev) = cmd_in_stage.replace(site.clone()) {
                    h.overridden.push((prev, site.clone(), "MultipleCmd"));
                }
                h.cmd = Some(site);
                h.cmd_reset = None;
            } else {
                if let Some(prev) = entrypoint_in_stage.replace(site.clone()) {
                    h.overridden
                        .push((prev, site.clone(), "MultipleEntrypoint"));
                }
                h.entrypoint = Some(site.clone());
                // BuildKit: an ENTRYPOINT clears Cmd unless this stage set one.
                if cmd_in_stage.is_none() {
                    h.cmd = None;
                    if incoming.is_empty() {
                        h.cmd_reset = None;
                    } else {
                        h.cmd_reset = Some(site);
                        h.dropped_cmd = incoming.clone();
                    }
                }
            }
        }
    }
    h
}

/// The form of a final command: from the instruction that set it, else
/// (inherited from an image) recognized by its shell prefix.
fn form_of(value: Option<&[String]>, site: Option<&CommandSite>, shell: &[String]) -> Form {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Form::None;
    };
    if let Some(site) = site {
        return site.form;
    }
    let default = default_shell();
    let shell_prefixed =
        |prefix: &[String]| value.len() == prefix.len() + 1 && value.starts_with(prefix);
    if shell_prefixed(shell) || shell_prefixed(&default) {
        Form::Shell
    } else {
        Form::Exec
    }
}

/// The warnings the CMD and ENTRYPOINT instructions earn: overridden in
/// their stage, a CMD an ENTRYPOINT reset (when no CMD is left, `cmd_form`
/// none), variables exec form leaves unexpanded.
fn instruction_warnings(warnings: &mut Vec<Warning>, h: &CommandHistory, cmd_form: Form) {
    for (prev, next, code) in &h.overridden {
        let kind = if *code == "MultipleCmd" {
            "CMD"
        } else {
            "ENTRYPOINT"
        };
        warnings.push(Warning {
            code,
            message: format!(
                "{kind} on line {} is overridden by the {kind} on line {}: only the last {kind} of a stage counts",
                prev.line, next.line
            ),
            line: Some(prev.line),
            ..Default::default()
        });
    }
    if let Some(reset) = &h.cmd_reset {
        if cmd_form == Form::None {
            warnings.push(Warning {
                code: "EntrypointResetsCmd",
                message: format!(
                    "ENTRYPOINT on line {} resets the inherited CMD {}: the image has no CMD unless a CMD follows the ENTRYPOINT",
                    reset.line,
                    json_list(&h.dropped_cmd)
                ),
                line: Some(reset.line),
                ..Default::default()
            });
        }
    }
    for (field, site) in [("ENTRYPOINT", &h.entrypoint), ("CMD", &h.cmd)] {
        let Some(site) = site else { continue };
        if site.literal_variables.is_empty() {
            continue;
        }
        warnings.push(Warning {
            code: "ExecFormVariables",
            message: format!(
                "{field} is in exec form, which no shell runs: {} reach the process literally, unexpanded (use shell form, or [\"sh\", \"-c\", \"…\"])",
                site.literal_variables
                    .iter()
                    .map(|w| format!("{w:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            line: Some(site.line),
            ..Default::default()
        });
    }
}

/// The warnings about shell forms: an ENTRYPOINT that drops arguments, a
/// CMD passed to an exec-form ENTRYPOINT as a shell command, a shell as
/// PID 1 that does not forward signals.
fn shell_form_warnings(
    warnings: &mut Vec<Warning>,
    commands: &Commands,
    sources: &BTreeMap<String, Source>,
) {
    let Commands {
        entrypoint,
        cmd,
        shell,
        entrypoint_form,
        cmd_form,
    } = commands;
    let (entrypoint, cmd) = (entrypoint.as_ref(), cmd.as_ref());
    let (entrypoint_form, cmd_form) = (*entrypoint_form, *cmd_form);
    let line_of = |field: &str| sources.get(field).and_then(|s| s.line);
    let history_of = |field: &str| sources.get(field).and_then(|s| s.history);
    let shell_text = shell.join(" ");
    if entrypoint_form == Form::Shell {
        warnings.push(Warning {
            code: "ShellEntrypointIgnoresArgs",
            message: format!(
                "ENTRYPOINT is in shell form: `{shell_text} '…'` ignores CMD and docker run arguments (they only become $0, $1, … of the shell)"
            ),
            line: line_of("entrypoint"),
            history: history_of("entrypoint"),
            ..Default::default()
        });
    }
    if entrypoint_form == Form::Exec && cmd_form == Form::Shell {
        warnings.push(Warning {
            code: "ShellCmdAsEntrypointArgs",
            message: format!(
                "CMD is in shell form, so the exec-form ENTRYPOINT gets `{shell_text} '…'` as its arguments; write CMD in exec form to pass plain arguments"
            ),
            line: line_of("cmd"),
            history: history_of("cmd"),
            ..Default::default()
        });
    }
    let pid1 = match (entrypoint_form, cmd_form) {
        (Form::Shell, _) => Some("entrypoint"),
        (Form::None, Form::Shell) => Some("cmd"),
        _ => None,
    };
    // `exec cmd` in shell form replaces the shell: the command is PID 1.
    let execs = |value: Option<&Vec<String>>| {
        value
            .and_then(|v| v.last())
            .is_some_and(|text| text.trim_start().starts_with("exec "))
    };
    let pid1 = pid1.filter(|field| {
        !execs(if *field == "entrypoint" {
            entrypoint
        } else {
            cmd
        })
    });
    if let Some(field) = pid1 {
        let program = shell.first().cloned().unwrap_or_default();
        warnings.push(Warning {
            code: "ShellFormSignals",
            message: format!(
                "{} is in shell form: {program} runs as PID 1 and does not forward SIGTERM, so docker stop waits for its timeout and then kills (use exec form, or `exec` the command)",
                field.to_uppercase()
            ),
            line: line_of(field),
            history: history_of(field),
            ..Default::default()
        });
    }
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::OfflineResolver;

    fn explain_text(source: &str, options: &ExplainOptions) -> Explanation {
        let df = kiln_parser::parse(source, "Dockerfile").unwrap();
        let df = ins::from_ast(&df).unwrap();
        explain(&df, options, &OfflineResolver).unwrap()
    }

    #[test]
    fn inherited_cmd_reset_by_entrypoint() {
        let e = explain_text(
            "FROM scratch AS base\nCMD [\"sh\"]\nFROM base\nENTRYPOINT [\"/app\"]\n",
            &ExplainOptions::default(),
        );
        assert_eq!(e.cmd, None);
        assert_eq!(e.argv.unwrap(), ["/app"]);
        assert_eq!(e.sources["cmd"].from, "reset");
        assert!(e
            .warnings
            .iter()
            .any(|w| w.code == "EntrypointResetsCmd" && w.line == Some(4)));
    }

    #[test]
    fn cmd_before_entrypoint_in_same_stage_is_kept() {
        let e = explain_text(
            "FROM scratch\nCMD [\"-x\"]\nENTRYPOINT [\"/app\"]\n",
            &ExplainOptions::default(),
        );
        assert_eq!(e.argv.unwrap(), ["/app", "-x"]);
        assert!(e.warnings.iter().all(|w| w.code != "EntrypointResetsCmd"));
    }

    #[test]
    fn nothing_to_run() {
        let e = explain_text("FROM scratch\n", &ExplainOptions::default());
        assert_eq!(e.argv, None);
        assert!(e.warnings.iter().any(|w| w.code == "NoCommand"));
    }
}
