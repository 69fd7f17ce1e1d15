//! `kiln check`: lint rules over a Dockerfile, without building.
//!
//! Two families of rules (see [`rules::ALL`]):
//! - BuildKit's build checks, with BuildKit's names, messages and firing
//!   conditions (`frontend/dockerfile/linter` and where `dockerfile2llb`
//!   calls them). Rules that depend on dispatch (UndefinedVar, WorkdirRelativePath,
//!   MultipleInstructionsDisallowed, …) are evaluated over every stage with
//!   BuildKit's ARG/ENV scoping, as `docker build --check` does (no target
//!   means all stages);
//! - a few hadolint rules that catch common RUN mistakes (unpinned base,
//!   apt-get hygiene, `cd`, `sudo`, pipes without pipefail, RUNs to merge).
//!
//! The `# check=skip=Rule1,Rule2;error=true` directive works as in BuildKit:
//! skipped rules never fire, and with `error=true` any finding fails the
//! check. A `# check=skip=…` comment right above an instruction skips rules
//! for that instruction only. A rule of severity `error` fails the check on
//! its own.
//!
//! ```
//! use kiln_builder::lint::{check, LintOptions};
//! let report = check("FROM alpine:3.20 as build\nCMD echo hi\n", "Dockerfile", &LintOptions::default());
//! let rules: Vec<&str> = report.findings.iter().map(|f| f.rule).collect();
//! assert_eq!(rules, ["FromAsCasing", "JSONArgsRecommended"]);
//! assert!(!report.fails());
//! ```

pub mod rules;
pub mod shell;

use std::collections::{BTreeMap, BTreeSet};

use kiln_layers::oci::Platform;
use kiln_layers::Reference;
use kiln_parser::ast::CheckOptions;
use kiln_parser::expand::{expand_word, expand_words, Lexer};
use kiln_parser::instructions::{self as ins, CommandLine, Instruction};
use serde::Serialize;

use crate::dockerignore::{go_clean, PatternMatcher};
use crate::plan::{predefined_args, BuildOptions, ImageLookup};
use rules::{Rule, RuleOrigin, Severity};

/// One rule firing at one place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: Severity,
    pub origin: RuleOrigin,
    /// 1-based line and column of the instruction concerned.
    pub line: usize,
    pub column: usize,
    /// The instruction's last line.
    pub end_line: usize,
    /// What is wrong here, in one line (BuildKit's text for its rules).
    pub message: String,
    /// What the rule is about.
    pub description: &'static str,
    /// Where the rule is documented.
    pub url: &'static str,
}

/// A Dockerfile that does not parse (or has a bad `check` directive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckError {
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

/// What `check` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub file: String,
    /// Sorted by line (then in the order the rules ran).
    pub findings: Vec<Finding>,
    /// The Dockerfile could not be read; findings may be incomplete.
    pub error: Option<CheckError>,
    /// `# check=error=true`.
    pub error_on_warning: bool,
    /// Things the checker could not see (unknown base images, …).
    pub notes: Vec<String>,
}

impl Report {
    /// Whether `kiln check` exits non-zero: a parse error, an error-level
    /// finding, or any finding under `error=true` (as BuildKit fails the
    /// build with "lint violation found for rules: …").
    pub fn fails(&self) -> bool {
        self.error.is_some()
            || self
                .findings
                .iter()
                .any(|f| f.severity == Severity::Error || self.error_on_warning)
    }
}

/// What the checker may use beyond the Dockerfile.
pub struct LintOptions<'a> {
    /// `--build-arg` values (they change what FROM lines name).
    pub build_args: BTreeMap<String, String>,
    /// The context's `.dockerignore`, for CopyIgnoredFile.
    pub dockerignore: Option<PatternMatcher>,
    /// Base image configs (their ENV matters to UndefinedVar). An image the
    /// resolver does not know disables UndefinedVar in stages built on it,
    /// rather than report variables the image may well define.
    pub images: Option<&'a dyn ImageLookup>,
    pub platform: Platform,
}

impl Default for LintOptions<'_> {
    fn default() -> Self {
        LintOptions {
            build_args: BTreeMap::new(),
            dockerignore: None,
            images: None,
            platform: Platform::host(),
        }
    }
}

/// Lints `source` (the Dockerfile text; `file_name` names it in the report).
pub fn check(source: &str, file_name: &str, options: &LintOptions) -> Report {
    let mut report = Report {
        file: file_name.to_string(),
        findings: Vec::new(),
        error: None,
        error_on_warning: false,
        notes: Vec::new(),
    };
    let parse_error = |e: &kiln_parser::ParseError| CheckError {
        message: e.to_string(),
        line: Some(e.line()),
        column: Some(e.column()),
    };
    let ast = match kiln_parser::parse(source, file_name) {
        Ok(ast) => ast,
        Err(e) => {
            report.error = Some(parse_error(&e));
            return report;
        }
    };
    let mut config = CheckOptions::default();
    if let Some(directive) = ast.directive("check") {
        match directive.check_options() {
            Ok(c) => config = c,
            Err(e) => {
                report.error = Some(CheckError {
                    message: e.to_string(),
                    line: Some(directive.span.start.line),
                    column: Some(1),
                });
                return report;
            }
        }
    }
    report.error_on_warning = config.error;
    let mut linter = Linter::default();
    for warning in &ast.warnings {
        if warning.rule == rules::NO_EMPTY_CONTINUATION.name {
            linter.fire_at(
                &rules::NO_EMPTY_CONTINUATION,
                warning.line,
                1,
                warning.line,
                "Empty continuation line".into(),
            );
        }
    }
    let df = match ins::from_ast(&ast) {
        Ok(df) => df,
        Err(e) => {
            report.error = Some(parse_error(&e));
            linter.finish(&mut report, &config, &[]);
            return report;
        }
    };
    let mut walk = Walk {
        df: &df,
        options,
        linter,
        notes: Vec::new(),
    };
    if let Err(error) = walk.run() {
        report.error = Some(error);
    }
    let comments: Vec<(usize, Vec<String>)> = df
        .stages
        .iter()
        .flat_map(|s| std::iter::once(&s.from).chain(s.instructions.iter().map(Instruction::meta)))
        .chain(df.meta_args.iter().map(|a| &a.meta))
        .map(|m| (m.span.start.line, m.comments.clone()))
        .collect();
    report.notes = walk.notes;
    walk.linter.finish(&mut report, &config, &comments);
    report
}

#[derive(Default)]
struct Linter {
    findings: Vec<Finding>,
}

impl Linter {
    fn fire(&mut self, rule: &Rule, meta: &ins::Meta, message: String) {
        self.fire_at(
            rule,
            meta.span.start.line,
            meta.span.start.column,
            meta.span.end.line,
            message,
        );
    }

    fn fire_at(
        &mut self,
        rule: &Rule,
        line: usize,
        column: usize,
        end_line: usize,
        message: String,
    ) {
        self.findings.push(Finding {
            rule: rule.name,
            severity: rule.severity,
            origin: rule.origin,
            line,
            column,
            end_line,
            message,
            description: rule.description,
            url: rule.reference,
        });
    }

    /// Applies the skip lists (file-wide and per instruction), dedups, sorts.
    fn finish(self, report: &mut Report, config: &CheckOptions, comments: &[(usize, Vec<String>)]) {
        let skipped_here = |f: &Finding| -> bool {
            comments
                .iter()
                .filter(|(line, _)| *line == f.line)
                .flat_map(|(_, c)| c.iter())
                .filter_map(|c| {
                    let (name, value) = c.split_once('=')?;
                    (name.trim().eq_ignore_ascii_case("check")).then_some(value)
                })
                .filter_map(|v| CheckOptions::parse(v.split(' ').next().unwrap_or("")).ok())
                .any(|o| o.skip_all || o.skip.iter().any(|s| s == f.rule))
        };
        let mut findings: Vec<Finding> = Vec::new();
        for f in self.findings {
            if config.skip_all || config.skip.iter().any(|s| s == f.rule) || skipped_here(&f) {
                continue;
            }
            if !findings.contains(&f) {
                findings.push(f);
            }
        }
        findings.sort_by_key(|f| f.line);
        report.findings = findings;
    }
}

/// Per-stage state, as BuildKit's `dispatchState` keeps what the rules need.
#[derive(Clone, Default)]
struct StageState {
    /// The LLB state's environment: image ENV and ARG values, in order.
    env: Vec<(String, String)>,
    /// Whether the base's environment is known (unknown images disable
    /// UndefinedVar).
    env_known: bool,
    /// ARG names declared in the stage (and its base stages).
    declared: BTreeSet<String>,
    workdir_set: bool,
    /// The SHELL in effect (empty: the default `/bin/sh -c`).
    shell: Vec<String>,
}

struct Walk<'a> {
    df: &'a ins::Dockerfile,
    options: &'a LintOptions<'a>,
    linter: Linter,
    notes: Vec<String>,
}

/// The args FROM lines see, and every meta ARG name.
type GlobalArgs = (Vec<(String, String)>, BTreeSet<String>);

/// Build-time args that never reach the environment.
const NON_ENV_ARGS: &[&str] = &["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

fn env_set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value.to_string(),
        None => env.push((key.to_string(), value.to_string())),
    }
}

fn check_error(meta: &ins::Meta, message: String) -> CheckError {
    CheckError {
        message,
        line: Some(meta.span.start.line),
        column: Some(meta.span.start.column),
    }
}

impl Walk<'_> {
    fn run(&mut self) -> Result<(), CheckError> {
        let df = self.df;
        if df.stages.is_empty() {
            return Err(CheckError {
                message: "dockerfile contains no stages to build".into(),
                line: None,
                column: None,
            });
        }
        self.parse_time_rules();
        self.stage_name_rules();
        self.casing_rule();

        let build_options = BuildOptions {
            build_args: self.options.build_args.clone(),
            target_platform: self.options.platform.clone(),
            build_platform: self.options.platform.clone(),
            target: None,
        };
        let target_name = df
            .stages
            .last()
            .and_then(|s| s.name.clone())
            .unwrap_or_default();
        let predefined = predefined_args(&build_options, &target_name);
        self.invalid_default_args(&predefined);
        let (global, meta_keys) = self.meta_args(predefined, &self.options.build_args)?;

        let mut finals: Vec<StageState> = Vec::new();
        for stage in &df.stages {
            let state = self.stage(stage, &global, &meta_keys, &finals)?;
            finals.push(state);
        }
        Ok(())
    }

    /// MaintainerDeprecated, StageNameCasing, FromAsCasing (BuildKit runs
    /// them while parsing instructions).
    fn parse_time_rules(&mut self) {
        for stage in &self.df.stages {
            if let Some(name) = &stage.name_as_written {
                if *name != name.to_lowercase() {
                    self.linter.fire(
                        &rules::STAGE_NAME_CASING,
                        &stage.from,
                        format!("Stage name '{name}' should be lowercase"),
                    );
                }
            }
            if let Some(as_keyword) = &stage.as_keyword {
                let from = &stage.from.keyword;
                let from_lower = *from == from.to_lowercase();
                let from_upper = *from == from.to_uppercase();
                let mismatch = (from_lower && *as_keyword != as_keyword.to_lowercase())
                    || (!from_lower && from_upper && *as_keyword != as_keyword.to_uppercase());
                if mismatch {
                    self.linter.fire(
                        &rules::FROM_AS_CASING,
                        &stage.from,
                        format!("'{as_keyword}' and '{from}' keywords' casing do not match"),
                    );
                }
            }
            for instruction in &stage.instructions {
                if let Instruction::Maintainer(m) = instruction {
                    self.linter.fire(
                        &rules::MAINTAINER_DEPRECATED,
                        &m.meta,
                        "Maintainer instruction is deprecated in favor of using label".into(),
                    );
                }
            }
        }
    }

    fn stage_name_rules(&mut self) {
        let mut seen = BTreeSet::new();
        for stage in &self.df.stages {
            let Some(name) = &stage.name else { continue };
            if name == "context" || name == "scratch" {
                self.linter.fire(
                    &rules::RESERVED_STAGE_NAME,
                    &stage.from,
                    format!("Stage name should not use the same name as reserved stage {name:?}"),
                );
            }
            if !seen.insert(name.clone()) {
                self.linter.fire(
                    &rules::DUPLICATE_STAGE_NAME,
                    &stage.from,
                    format!("Duplicate stage name {name:?}, stage names should be unique"),
                );
            }
        }
    }

    /// ConsistentInstructionCasing: the majority casing over FROM lines and
    /// stage instructions (meta ARGs do not count); ties go to upper case.
    fn casing_rule(&mut self) {
        let metas: Vec<&ins::Meta> = self
            .df
            .stages
            .iter()
            .flat_map(|s| {
                std::iter::once(&s.from).chain(s.instructions.iter().map(Instruction::meta))
            })
            .collect();
        let (mut lower, mut upper) = (0, 0);
        for m in &metas {
            if m.keyword == m.keyword.to_lowercase() {
                lower += 1;
            } else if m.keyword == m.keyword.to_uppercase() {
                upper += 1;
            }
        }
        let majority_lower = lower > upper;
        for m in metas {
            let wrong = if majority_lower {
                (m.keyword != m.keyword.to_lowercase()).then_some("lowercase")
            } else {
                (m.keyword != m.keyword.to_uppercase()).then_some("uppercase")
            };
            if let Some(casing) = wrong {
                self.linter.fire(
                    &rules::CONSISTENT_INSTRUCTION_CASING,
                    m,
                    format!(
                        "Command '{}' should match the case of the command majority ({casing})",
                        m.keyword
                    ),
                );
            }
        }
    }

    /// `buildMetaArgs`: the global args FROM lines see, and every meta ARG
    /// name (declared with or without a value).
    fn meta_args(
        &self,
        mut global: Vec<(String, String)>,
        build_args: &BTreeMap<String, String>,
    ) -> Result<GlobalArgs, CheckError> {
        let mut keys = BTreeSet::new();
        for arg in &self.df.meta_args {
            for def in &arg.args {
                keys.insert(def.key.clone());
                let value = match build_args.get(&def.key) {
                    Some(v) => Some(v.clone()),
                    None => match &def.value {
                        Some(d) => Some(
                            expand_word(d, &global, self.df.escape)
                                .map_err(|e| check_error(&arg.meta, e.to_string()))?
                                .value,
                        ),
                        None => None,
                    },
                };
                if let Some(v) = value {
                    env_set(&mut global, &def.key, &v);
                }
            }
        }
        Ok((global, keys))
    }

    /// InvalidDefaultArgInFrom: with no build args at all, every FROM must
    /// still name a valid image.
    fn invalid_default_args(&mut self, predefined: &[(String, String)]) {
        let Ok((defaults, _)) = self.meta_args(predefined.to_vec(), &BTreeMap::new()) else {
            return;
        };
        for stage in &self.df.stages {
            let Ok(expanded) = expand_word(&stage.base, &defaults, self.df.escape) else {
                return;
            };
            if Reference::parse(&expanded.value).is_err() {
                self.linter.fire(
                    &rules::INVALID_DEFAULT_ARG_IN_FROM,
                    &stage.from,
                    format!(
                        "Default value for ARG {} results in empty or invalid base image name",
                        stage.base
                    ),
                );
            }
        }
    }

    fn stage(
        &mut self,
        stage: &ins::Stage,
        global: &[(String, String)],
        meta_keys: &BTreeSet<String>,
        finals: &[StageState],
    ) -> Result<StageState, CheckError> {
        let escape = self.df.escape;
        let mut from_words = vec![stage.base.clone()];
        from_words.extend(stage.platform.clone());
        let mut base = String::new();
        // `Env` is implemented for the owned list.
        let global_env: Vec<(String, String)> = global.to_vec();
        for (i, word) in from_words.iter().enumerate() {
            let expansion = expand_word(word, &global_env, escape)
                .map_err(|e| check_error(&stage.from, e.to_string()))?;
            let known: Vec<String> = meta_keys
                .iter()
                .cloned()
                .chain(global.iter().map(|(k, _)| k.clone()))
                .collect();
            for name in &expansion.unset {
                if known.contains(name) {
                    continue;
                }
                let message = match suggest(name, &known) {
                    Some(s) => {
                        format!("FROM argument '{name}' is not declared (did you mean {s}?)")
                    }
                    None => format!("FROM argument '{name}' is not declared"),
                };
                self.linter
                    .fire(&rules::UNDEFINED_ARG_IN_FROM, &stage.from, message);
            }
            if i == 0 {
                base = expansion.value;
            } else {
                self.platform_rules(stage, word, &expansion, &global_env);
            }
        }
        if base.is_empty() {
            return Err(check_error(
                &stage.from,
                format!("base name ({}) should not be blank", stage.base),
            ));
        }

        let earlier = self.df.stages[..stage.index]
            .iter()
            .rev()
            .find(|s| s.name.as_deref() == Some(base.as_str()))
            .map(|s| s.index);
        let mut state = match earlier {
            // A stage built on an earlier one continues its state (env,
            // declared ARGs, workdir, shell), as BuildKit's `init` does.
            Some(i) => finals[i].clone(),
            None => {
                self.unpinned_base(stage, &base);
                let platform = stage
                    .platform
                    .as_ref()
                    .and_then(|p| expand_word(p, &global_env, escape).ok())
                    .and_then(|p| Platform::parse(&p.value).ok())
                    .unwrap_or_else(|| self.options.platform.clone());
                self.base_state(stage, &base, &platform)
            }
        };

        let mut cmd_at: Option<&ins::Meta> = None;
        let mut entrypoint_at: Option<&ins::Meta> = None;
        let mut healthcheck_at: Option<&ins::Meta> = None;
        let mut previous_run: Option<&ins::Run> = None;
        for instruction in &stage.instructions {
            let meta = instruction.meta();
            match instruction {
                Instruction::Env(e) => {
                    let mut pairs = Vec::new();
                    for kv in &e.pairs {
                        let key = self.expand(&state, &kv.key, meta)?;
                        let value = self.expand(&state, &kv.value, meta)?;
                        pairs.push((key, value, kv.legacy));
                    }
                    for (key, value, legacy) in pairs {
                        if legacy {
                            self.legacy_key_value(meta);
                        }
                        self.secrets("ENV", &key, meta);
                        env_set(&mut state.env, &key, &value);
                    }
                }
                Instruction::Label(l) => {
                    for kv in &l.pairs {
                        self.expand(&state, &kv.key, meta)?;
                        self.expand(&state, &kv.value, meta)?;
                        if kv.legacy {
                            self.legacy_key_value(meta);
                        }
                    }
                }
                Instruction::Arg(a) => {
                    for def in &a.args {
                        self.secrets("ARG", &def.key, meta);
                        let given = self.options.build_args.get(&def.key);
                        let mut value = None;
                        if def.value.is_none() && given.is_none() {
                            value = global
                                .iter()
                                .find(|(k, _)| *k == def.key)
                                .map(|(_, v)| v.clone());
                        }
                        if let Some(v) = given {
                            value = Some(v.clone());
                        } else if let Some(d) = &def.value {
                            value = Some(self.expand(&state, d, meta)?);
                        }
                        if let Some(v) = value {
                            if !NON_ENV_ARGS.contains(&def.key.as_str()) {
                                env_set(&mut state.env, &def.key, &v);
                            }
                        }
                        state.declared.insert(def.key.clone());
                    }
                }
                Instruction::Workdir(w) => {
                    let path = self.expand(&state, &w.path, meta)?;
                    if !state.workdir_set && !path.starts_with('/') {
                        self.linter.fire(
                            &rules::WORKDIR_RELATIVE_PATH,
                            meta,
                            format!("Relative workdir {path:?} can have unexpected results if the base image changes"),
                        );
                    }
                    state.workdir_set = true;
                }
                Instruction::User(u) => {
                    self.expand(&state, &u.user, meta)?;
                }
                Instruction::Volume(v) => {
                    for vol in &v.volumes {
                        self.expand(&state, vol, meta)?;
                    }
                }
                Instruction::Stopsignal(s) => {
                    self.expand(&state, &s.signal, meta)?;
                }
                Instruction::Expose(e) => {
                    for port in &e.ports {
                        let words = expand_words(port, &state.env, escape)
                            .map_err(|err| check_error(meta, err.to_string()))?;
                        for word in words {
                            self.expose_port(&word, meta);
                        }
                    }
                }
                Instruction::Cmd(c) => {
                    self.used_once(&mut cmd_at, meta);
                    self.json_args(&c.command, &state, meta);
                }
                Instruction::Entrypoint(e) => {
                    self.used_once(&mut entrypoint_at, meta);
                    self.json_args(&e.command, &state, meta);
                }
                Instruction::Healthcheck(_) => self.used_once(&mut healthcheck_at, meta),
                Instruction::Shell(s) => state.shell = s.shell.clone(),
                Instruction::Run(r) => {
                    for mount in &r.mounts {
                        self.expand(&state, mount, meta)?;
                    }
                    self.run_rules(r, &state, previous_run);
                }
                Instruction::Copy(c) => {
                    for word in [&c.chown, &c.chmod].into_iter().flatten() {
                        self.expand(&state, word, meta)?;
                    }
                    let sources = self.copy_paths(&state, &c.paths, meta)?;
                    if c.from.is_none() {
                        self.ignored_sources("Copy", &sources, meta);
                    }
                }
                Instruction::Add(a) => {
                    for word in [&a.chown, &a.chmod, &a.checksum].into_iter().flatten() {
                        self.expand(&state, word, meta)?;
                    }
                    let sources: Vec<String> = self
                        .copy_paths(&state, &a.paths, meta)?
                        .into_iter()
                        .filter(|s| !is_remote(s))
                        .collect();
                    self.ignored_sources("Add", &sources, meta);
                }
                Instruction::Maintainer(_) | Instruction::Onbuild(_) => {}
            }
            previous_run = match instruction {
                Instruction::Run(r) => Some(r),
                _ => None,
            };
        }
        Ok(state)
    }

    /// RedundantTargetPlatform and FromPlatformFlagConstDisallowed, on the
    /// `--platform` of a FROM (`written`, and its expansion).
    fn platform_rules(
        &mut self,
        stage: &ins::Stage,
        written: &str,
        expansion: &kiln_parser::expand::Expansion,
        global: &[(String, String)],
    ) {
        let target = global
            .iter()
            .find(|(k, _)| k == "TARGETPLATFORM")
            .map(|(_, v)| v.as_str());
        if expansion.referenced.len() == 1
            && expansion.unset.is_empty()
            && expansion.referenced.contains("TARGETPLATFORM")
            && target == Some(expansion.value.as_str())
        {
            self.linter.fire(
                &rules::REDUNDANT_TARGET_PLATFORM,
                &stage.from,
                format!("Setting platform to predefined {written} in FROM is redundant as this is the default behavior"),
            );
        }
        if !expansion.referenced.is_empty() || !expansion.unset.is_empty() {
            return;
        }
        let Ok(platform) = Platform::parse(&expansion.value) else {
            return;
        };
        let name = stage.name.as_deref().unwrap_or("");
        if name.contains(&platform.os) || name.contains(&platform.architecture) {
            return;
        }
        self.linter.fire(
            &rules::FROM_PLATFORM_FLAG_CONST_DISALLOWED,
            &stage.from,
            format!(
                "FROM --platform flag should not use constant value {:?}",
                expansion.value
            ),
        );
    }

    /// A stage's starting state from a base image (or scratch).
    fn base_state(&mut self, stage: &ins::Stage, base: &str, platform: &Platform) -> StageState {
        let default_path = ("PATH".to_string(), crate::image::DEFAULT_PATH.to_string());
        if base.eq_ignore_ascii_case("scratch") {
            return StageState {
                env: vec![default_path],
                env_known: true,
                ..Default::default()
            };
        }
        let resolved = self.options.images.map(|images| {
            // A name that does not parse is an unknown base here; the
            // build reports it with its line.
            kiln_layers::Reference::parse(base)
                .map_err(|e| e.to_string())
                .and_then(|reference| images.lookup(&reference, platform))
        });
        match resolved {
            Some(Ok(image)) => {
                let actual = Platform {
                    os: image.config.os.clone(),
                    architecture: image.config.architecture.clone(),
                    variant: image.config.variant.clone(),
                    ..platform.clone()
                };
                if actual.os != platform.os || actual.architecture != platform.architecture {
                    self.linter.fire(
                        &rules::INVALID_BASE_IMAGE_PLATFORM,
                        &stage.from,
                        format!(
                            "Base image {base} was pulled with platform {:?}, expected {:?} for current build",
                            normalized(&actual).to_string(),
                            normalized(platform).to_string()
                        ),
                    );
                }
                let config = image.config.config.unwrap_or_default();
                let mut env: Vec<(String, String)> = config
                    .env
                    .unwrap_or_default()
                    .iter()
                    .map(|e| {
                        let (k, v) = crate::image::split_env(e);
                        (k.to_string(), v.to_string())
                    })
                    .collect();
                if !env.iter().any(|(k, _)| k == "PATH") {
                    env.push(default_path);
                }
                StageState {
                    env,
                    env_known: true,
                    shell: config.shell.unwrap_or_default(),
                    ..Default::default()
                }
            }
            _ => {
                let note = format!(
                    "base image {base} is not in the local store: UndefinedVar is not checked in stages built on it"
                );
                if !self.notes.contains(&note) {
                    self.notes.push(note);
                }
                StageState {
                    env: vec![default_path],
                    env_known: false,
                    ..Default::default()
                }
            }
        }
    }

    /// Expands `word` in the stage's environment, reporting UndefinedVar
    /// for names neither set nor declared as ARG.
    fn expand(
        &mut self,
        state: &StageState,
        word: &str,
        meta: &ins::Meta,
    ) -> Result<String, CheckError> {
        let expansion = expand_word(word, &state.env, self.df.escape)
            .map_err(|e| check_error(meta, e.to_string()))?;
        self.report_unset(state, &expansion.unset, meta);
        Ok(expansion.value)
    }

    fn report_unset(&mut self, state: &StageState, unset: &BTreeSet<String>, meta: &ins::Meta) {
        if !state.env_known {
            return;
        }
        let keys: Vec<String> = state.env.iter().map(|(k, _)| k.clone()).collect();
        for name in unset {
            if state.declared.contains(name) || NON_ENV_ARGS.contains(&name.as_str()) {
                continue;
            }
            let message = match suggest(name, &keys) {
                Some(s) => format!("Usage of undefined variable '${name}' (did you mean ${s}?)"),
                None => format!("Usage of undefined variable '${name}'"),
            };
            self.linter.fire(&rules::UNDEFINED_VAR, meta, message);
        }
    }

    /// COPY/ADD sources and destination expanded (heredoc bodies too, with
    /// BuildKit's raw lexer); returns the sources.
    fn copy_paths(
        &mut self,
        state: &StageState,
        paths: &ins::SourcesAndDest,
        meta: &ins::Meta,
    ) -> Result<Vec<String>, CheckError> {
        let mut sources = Vec::new();
        for src in &paths.sources {
            sources.push(self.expand(state, src, meta)?);
        }
        self.expand(state, &paths.dest, meta)?;
        let mut raw = Lexer::new('\\');
        raw.skip_process_quotes = true;
        for inline in paths.inline_sources.iter().filter(|s| s.expand) {
            let expansion = raw
                .expand(&inline.data, &state.env)
                .map_err(|e| check_error(meta, e.to_string()))?;
            self.report_unset(state, &expansion.unset, meta);
        }
        Ok(sources)
    }

    fn legacy_key_value(&mut self, meta: &ins::Meta) {
        let name = &meta.keyword;
        self.linter.fire(
            &rules::LEGACY_KEY_VALUE_FORMAT,
            meta,
            format!(
                "\"{name} key=value\" should be used instead of legacy \"{name} key value\" format"
            ),
        );
    }

    fn secrets(&mut self, instruction: &str, key: &str, meta: &ins::Meta) {
        const DENY: &[&str] = &[
            "apikey",
            "auth",
            "credential",
            "credentials",
            "key",
            "password",
            "pword",
            "passwd",
            "secret",
            "token",
        ];
        const ALLOW: &[&str] = &["public", "file", "version"];
        let has_token = |tokens: &[&str]| {
            let lower = key.to_lowercase();
            let parts: Vec<&str> = lower.split('_').collect();
            // `(?:_|^)token(?:_|$)`: a whole `_`-separated part.
            parts.iter().any(|p| tokens.contains(p))
        };
        if has_token(DENY) && !has_token(ALLOW) {
            self.linter.fire(
                &rules::SECRETS_USED_IN_ARG_OR_ENV,
                meta,
                format!(
                    "Do not use ARG or ENV instructions for sensitive data ({instruction} {key:?})"
                ),
            );
        }
    }

    /// ExposeProtoCasing and ExposeInvalidFormat, with BuildKit's split of
    /// `[ip:][hostPort:]containerPort[/proto]`.
    fn expose_port(&mut self, raw: &str, meta: &ins::Meta) {
        let parts: Vec<&str> = raw.split(':').collect();
        let (ip, host, container) = match parts.as_slice() {
            [c] => ("", "", *c),
            [h, c] => ("", *h, *c),
            [i, h, c] => (*i, *h, *c),
            _ => (raw, parts[parts.len() - 2], parts[parts.len() - 1]),
        };
        let proto = container.split_once('/').map(|(_, p)| p).unwrap_or("");
        if proto != proto.to_lowercase() {
            self.linter.fire(
                &rules::EXPOSE_PROTO_CASING,
                meta,
                format!("Defined protocol '{raw}' in EXPOSE instruction should be lowercase"),
            );
        }
        if !ip.is_empty() || !host.is_empty() {
            self.linter.fire(
                &rules::EXPOSE_INVALID_FORMAT,
                meta,
                format!("EXPOSE instruction should not define an IP address or host-port mapping, found '{raw}'"),
            );
        }
    }

    /// MultipleInstructionsDisallowed, reported at the earlier instruction
    /// (the one that is ignored), as BuildKit does.
    fn used_once<'m>(&mut self, previous: &mut Option<&'m ins::Meta>, meta: &'m ins::Meta) {
        if let Some(prev) = previous {
            self.linter.fire(
                &rules::MULTIPLE_INSTRUCTIONS_DISALLOWED,
                prev,
                format!(
                    "Multiple {} instructions should not be used in the same stage because only the last one will be used",
                    meta.keyword
                ),
            );
        }
        *previous = Some(meta);
    }

    fn json_args(&mut self, command: &CommandLine, state: &StageState, meta: &ins::Meta) {
        if matches!(command, CommandLine::Shell(_)) && state.shell.is_empty() {
            self.linter.fire(
                &rules::JSON_ARGS_RECOMMENDED,
                meta,
                format!(
                    "JSON arguments recommended for {} to prevent unintended behavior related to OS signals",
                    meta.keyword
                ),
            );
        }
    }

    /// CopyIgnoredFile: only with a .dockerignore that has no `!` exceptions
    /// (BuildKit cannot tell statically what those let through).
    fn ignored_sources(&mut self, verb: &str, sources: &[String], meta: &ins::Meta) {
        let Some(matcher) = &self.options.dockerignore else {
            return;
        };
        if matcher.is_empty() || matcher.has_exclusions() {
            return;
        }
        let mut hits = Vec::new();
        for src in sources {
            let cleaned = go_clean(src);
            let cleaned = cleaned.trim_start_matches('/');
            let cleaned = if cleaned.is_empty() { "." } else { cleaned };
            let ignored = if cleaned == "." {
                matcher
                    .patterns()
                    .iter()
                    .any(|p| !p.is_exclusion() && matches!(p.as_str(), "*" | "**" | "**/*"))
            } else {
                matcher.matches_or_parent_matches(cleaned)
            };
            if ignored {
                hits.push(go_clean(src));
            }
        }
        for src in hits {
            self.linter.fire(
                &rules::COPY_IGNORED_FILE,
                meta,
                format!("Attempting to {verb} file {src:?} that is excluded by .dockerignore"),
            );
        }
    }

    /// Hadolint DL3006/DL3007.
    fn unpinned_base(&mut self, stage: &ins::Stage, base: &str) {
        if base.eq_ignore_ascii_case("scratch") || base.contains('@') || base.contains('$') {
            return;
        }
        let last = base.rsplit('/').next().unwrap_or(base);
        let message = match last.split_once(':') {
            None => format!("Base image '{base}' has no tag: pin a version (hadolint DL3006)"),
            Some((_, "latest")) => {
                format!("Base image '{base}' uses the latest tag: pin a version (hadolint DL3007)")
            }
            Some(_) => return,
        };
        self.linter
            .fire(&rules::UNPINNED_BASE_IMAGE, &stage.from, message);
    }

    /// The hadolint-style RUN rules.
    fn run_rules(&mut self, run: &ins::Run, state: &StageState, previous: Option<&ins::Run>) {
        let meta = &run.meta;
        if let Some(prev) = previous {
            if prev.meta.flags == meta.flags {
                self.linter.fire(
                    &rules::CONSECUTIVE_RUN,
                    meta,
                    format!(
                        "RUN follows the RUN on line {}: consider merging them into one layer (hadolint DL3059)",
                        prev.meta.span.start.line
                    ),
                );
            }
        }
        let text = match &run.command {
            CommandLine::Shell(s) => {
                let mut text = s.clone();
                for doc in &run.heredocs {
                    text.push('\n');
                    text.push_str(&doc.data);
                }
                text
            }
            CommandLine::Exec(_) => return,
        };
        let commands = shell::simple_commands(&text);
        let programs: Vec<&str> = commands.iter().filter_map(|c| c.program()).collect();
        if programs.contains(&"sudo") {
            self.linter.fire(
                &rules::SUDO_IN_RUN,
                meta,
                "Do not use sudo in RUN: switch users with USER instead (hadolint DL3004)".into(),
            );
        }
        if programs.contains(&"cd") {
            self.linter.fire(
                &rules::CD_IN_RUN,
                meta,
                "Use WORKDIR to switch to a directory instead of 'cd' in RUN (hadolint DL3003)"
                    .into(),
            );
        }
        // `sudo apt-get …` counts as apt-get.
        let apt: Vec<&[String]> = commands
            .iter()
            .map(|c| match c.program() {
                Some("sudo") => c.args(),
                _ => &c.words[..],
            })
            .filter(|w| {
                w.first()
                    .is_some_and(|p| p == "apt-get" || p.ends_with("/apt-get"))
            })
            .collect();
        let installs: Vec<&&[String]> = apt
            .iter()
            .filter(|w| w.iter().any(|a| a == "install"))
            .collect();
        if installs.iter().any(|w| {
            !w.iter().any(|a| {
                a == "--no-install-recommends" || a.contains("APT::Install-Recommends=false")
            })
        }) {
            self.linter.fire(
                &rules::APT_NO_INSTALL_RECOMMENDS,
                meta,
                "apt-get install without --no-install-recommends (hadolint DL3015)".into(),
            );
        }
        let cleans_lists = commands.iter().any(|c| {
            c.program() == Some("rm")
                && c.args().iter().any(|a| a.starts_with("/var/lib/apt/lists"))
        });
        let cache_mount = run
            .mounts
            .iter()
            .any(|m| m.contains("type=cache") && m.contains("/var/lib/apt"));
        if !installs.is_empty() && !cleans_lists && !cache_mount {
            self.linter.fire(
                &rules::APT_LISTS_NOT_CLEANED,
                meta,
                "apt-get lists are not removed in the same RUN: add `rm -rf /var/lib/apt/lists/*` (hadolint DL3009)".into(),
            );
        }
        let piped = commands.iter().any(|c| c.piped);
        let sets_pipefail = commands
            .iter()
            .any(|c| c.program() == Some("set") && c.args().iter().any(|a| a.contains("pipefail")));
        if piped && !sets_pipefail && !shell_has_pipefail(&state.shell) {
            self.linter.fire(
                &rules::PIPE_WITHOUT_PIPEFAIL,
                meta,
                "RUN with a pipe but no `-o pipefail` in SHELL: only the last command's failure fails the step (hadolint DL4006)".into(),
            );
        }
    }
}

/// Whether the SHELL in effect sets pipefail, or is not a POSIX shell at
/// all (pwsh, cmd), where the rule does not apply. The default `/bin/sh -c`
/// does not.
fn shell_has_pipefail(shell: &[String]) -> bool {
    let Some(program) = shell.first() else {
        return false;
    };
    let program = program.rsplit('/').next().unwrap_or(program);
    let posix = matches!(
        program,
        "sh" | "bash" | "ash" | "dash" | "zsh" | "ksh" | "mksh"
    );
    !posix || shell.iter().any(|w| w.contains("pipefail"))
}

/// containerd's `platforms.Normalize` for the variants that have a default.
fn normalized(platform: &Platform) -> Platform {
    let mut p = platform.clone();
    if p.variant.is_none() {
        p.variant = match p.architecture.as_str() {
            "arm64" => Some("v8".into()),
            "arm" => Some("v7".into()),
            _ => None,
        };
    }
    p
}

fn is_remote(src: &str) -> bool {
    src.starts_with("http://") || src.starts_with("https://") || src.starts_with("git@")
}

/// BuildKit's `suggest.Search` (case-sensitive): the nearest name with an
/// edit distance below 3; none for an exact match.
fn suggest(value: &str, options: &[String]) -> Option<String> {
    let mut best = None;
    let mut min = 3;
    for option in options {
        if option == value {
            return None;
        }
        let d = edit_distance(value, option);
        if d < min {
            min = d;
            best = Some(option.clone());
        }
    }
    best
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) >= 3 {
        return 3;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules_of(source: &str) -> Vec<&'static str> {
        check(source, "Dockerfile", &LintOptions::default())
            .findings
            .iter()
            .map(|f| f.rule)
            .collect()
    }

    #[test]
    fn suggestions_need_distance_below_three() {
        let options = vec!["PATH".to_string(), "HOME".to_string()];
        assert_eq!(suggest("PAHT", &options).as_deref(), Some("PATH"));
        assert_eq!(suggest("XYZW", &options), None);
        assert_eq!(suggest("PATH", &options), None);
    }

    #[test]
    fn skip_directive_and_comment() {
        assert_eq!(
            rules_of("# check=skip=JSONArgsRecommended\nFROM scratch\nCMD x\n"),
            Vec::<&str>::new()
        );
        assert_eq!(
            rules_of("FROM scratch\n# check=skip=JSONArgsRecommended\nCMD x\nENTRYPOINT y\n"),
            ["JSONArgsRecommended"]
        );
    }

    #[test]
    fn error_true_fails_on_warnings() {
        let r = check(
            "# check=error=true\nFROM scratch\nCMD x\n",
            "Dockerfile",
            &LintOptions::default(),
        );
        assert!(r.fails());
        let r = check(
            "FROM scratch\nCMD x\n",
            "Dockerfile",
            &LintOptions::default(),
        );
        assert!(!r.fails());
    }

    #[test]
    fn parse_errors_fail() {
        let r = check(
            "FROM scratch\nNOPE x\n",
            "Dockerfile",
            &LintOptions::default(),
        );
        assert!(r.fails());
        assert_eq!(r.error.as_ref().and_then(|e| e.line), Some(2));
    }
}
