//! The rules that observe the planner's walk (BuildKit runs them inside
//! dispatch): they see each FROM word, where each stage starts, every word
//! expanded in its scope, and each instruction with its expanded values.

use std::collections::BTreeSet;

use kiln_layers::oci::Platform;
use kiln_layers::Reference;
use kiln_parser::expand::Expansion;
use kiln_parser::instructions::{self as ins, CommandLine, Instruction};
use kiln_parser::mount::MountType;
use kiln_parser::suggest::suggest;

use super::{rules, shell, LintOptions, Linter};
use crate::dockerignore::go_clean;
use crate::plan::observe::{
    DispatchObserver, Expanded, FromWord, InstructionEvent, Scope, StageStart,
};
use crate::plan::{FoundImage, ImageLookup, LookupError, RunStep, NON_ENV_ARGS};

/// A lookup that knows no image (`kiln check` without a store).
pub(super) struct NoImages;

impl ImageLookup for NoImages {
    fn lookup(&self, _: &Reference, _: &Platform) -> Result<FoundImage, LookupError> {
        Err(LookupError::NotFound("not in the local store".into()))
    }
}

/// What the rules remember within one stage.
#[derive(Default)]
struct StageRules {
    cmd_at: Option<ins::Meta>,
    entrypoint_at: Option<ins::Meta>,
    healthcheck_at: Option<ins::Meta>,
    /// The RUN right before the current instruction: its line and flags.
    previous_run: Option<(usize, Vec<String>)>,
}

/// The dispatch rules, as an observer of the plan walk.
pub(super) struct Rules<'a> {
    options: &'a LintOptions<'a>,
    linter: Linter,
    notes: Vec<String>,
    /// Every meta ARG name, with or without a value.
    meta_keys: BTreeSet<String>,
    stage: StageRules,
}

impl<'a> Rules<'a> {
    pub fn new(df: &ins::Dockerfile, options: &'a LintOptions<'a>, linter: Linter) -> Self {
        let meta_keys = df
            .meta_args
            .iter()
            .flat_map(|a| a.args.iter().map(|d| d.key.clone()))
            .collect();
        Rules {
            options,
            linter,
            notes: Vec::new(),
            meta_keys,
            stage: StageRules::default(),
        }
    }

    /// The findings, and the notes on what could not be checked.
    pub fn finish(self) -> (Linter, Vec<String>) {
        (self.linter, self.notes)
    }
}

impl DispatchObserver for Rules<'_> {
    /// UndefinedArgInFrom; on `--platform`, RedundantTargetPlatform and
    /// FromPlatformFlagConstDisallowed.
    fn stage_from_word(&mut self, stage: &ins::Stage, word: &FromWord<'_>) {
        let known: Vec<&str> = self
            .meta_keys
            .iter()
            .map(String::as_str)
            .chain(word.global.keys())
            .collect();
        for name in &word.expansion.unset {
            if known.contains(&name.as_str()) {
                continue;
            }
            let message = match suggest(name, &known, true) {
                Some(s) => format!("FROM argument '{name}' is not declared (did you mean {s}?)"),
                None => format!("FROM argument '{name}' is not declared"),
            };
            self.linter
                .fire(&rules::UNDEFINED_ARG_IN_FROM, &stage.from, message);
        }
        if word.is_platform {
            self.platform_rules(stage, word);
        }
    }

    /// UnpinnedBaseImage and InvalidBaseImagePlatform; a note when the
    /// base is unknown (UndefinedVar is then not checked on it).
    fn stage(&mut self, stage: &ins::Stage, start: &StageStart<'_>) {
        self.stage = StageRules::default();
        match start {
            StageStart::Stage(_) => {}
            StageStart::Scratch => self.unpinned_base(&stage.from, &stage.base),
            StageStart::Image {
                name,
                platform,
                found,
            } => {
                self.unpinned_base(&stage.from, name);
                match found {
                    Some(image) => self.base_platform(stage, name, platform, image),
                    None => {
                        let note = format!(
                            "base image {name} is not in the local store: UndefinedVar is not checked in stages built on it"
                        );
                        if !self.notes.contains(&note) {
                            self.notes.push(note);
                        }
                    }
                }
            }
        }
    }

    /// UndefinedVar: names neither set nor declared as ARG.
    fn expanded(&mut self, meta: &ins::Meta, expansion: &Expansion, scope: &Scope<'_>) {
        if !scope.env_known {
            return;
        }
        let keys: Vec<&str> = scope.env.keys().collect();
        for name in &expansion.unset {
            if scope.declared.contains(name) || NON_ENV_ARGS.contains(&name.as_str()) {
                continue;
            }
            let message = match suggest(name, &keys, true) {
                Some(s) => format!("Usage of undefined variable '${name}' (did you mean ${s}?)"),
                None => format!("Usage of undefined variable '${name}'"),
            };
            self.linter.fire(&rules::UNDEFINED_VAR, meta, message);
        }
    }

    fn instruction(&mut self, event: &InstructionEvent<'_>) {
        let instruction = event.instruction;
        let meta = instruction.meta();
        let shell = event.scope.shell.unwrap_or(&[]);
        match (instruction, event.expanded) {
            (Instruction::Env(e), Expanded::Env(pairs)) => {
                for (written, (key, _)) in e.pairs.iter().zip(pairs) {
                    if written.legacy {
                        self.legacy_key_value(meta);
                    }
                    self.secrets("ENV", key, meta);
                }
            }
            (Instruction::Label(l), _) if l.pairs.iter().any(|kv| kv.legacy) => {
                self.legacy_key_value(meta);
            }
            (Instruction::Arg(a), _) => {
                for def in &a.args {
                    self.secrets("ARG", &def.key, meta);
                }
            }
            (Instruction::Workdir(_), Expanded::Workdir(path))
                if !event.scope.workdir_set && !path.starts_with('/') =>
            {
                self.linter.fire(
                    &rules::WORKDIR_RELATIVE_PATH,
                    meta,
                    format!("Relative workdir {path:?} can have unexpected results if the base image changes"),
                );
            }
            (Instruction::Expose(_), Expanded::Ports(ports)) => {
                for port in ports {
                    self.expose_port(port, meta);
                }
            }
            (Instruction::Cmd(c), _) => {
                let previous = self.stage.cmd_at.replace(meta.clone());
                self.used_once(previous, meta);
                self.json_args(&c.command, shell, meta);
            }
            (Instruction::Entrypoint(e), _) => {
                let previous = self.stage.entrypoint_at.replace(meta.clone());
                self.used_once(previous, meta);
                self.json_args(&e.command, shell, meta);
            }
            (Instruction::Healthcheck(_), _) => {
                let previous = self.stage.healthcheck_at.replace(meta.clone());
                self.used_once(previous, meta);
            }
            (Instruction::Run(r), Expanded::Run(step)) => self.run_rules(r, step, shell),
            (Instruction::Copy(c), Expanded::Copy(step)) if c.from.is_none() => {
                self.ignored_sources("Copy", &step.sources, meta);
            }
            (Instruction::Add(_), Expanded::Copy(step)) => {
                let local: Vec<String> = step
                    .sources
                    .iter()
                    .filter(|s| !is_remote(s))
                    .cloned()
                    .collect();
                self.ignored_sources("Add", &local, meta);
            }
            _ => {}
        }
        self.stage.previous_run = match instruction {
            Instruction::Run(r) => Some((r.meta.span.start.line, r.meta.flags.clone())),
            _ => None,
        };
    }
}

impl Rules<'_> {
    /// RedundantTargetPlatform and FromPlatformFlagConstDisallowed, on the
    /// `--platform` of a FROM.
    fn platform_rules(&mut self, stage: &ins::Stage, word: &FromWord<'_>) {
        let expansion = word.expansion;
        let target = word.global.get("TARGETPLATFORM");
        if expansion.referenced.len() == 1
            && expansion.unset.is_empty()
            && expansion.referenced.contains("TARGETPLATFORM")
            && target == Some(expansion.value.as_str())
        {
            self.linter.fire(
                &rules::REDUNDANT_TARGET_PLATFORM,
                &stage.from,
                format!(
                    "Setting platform to predefined {} in FROM is redundant as this is the default behavior",
                    word.written
                ),
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

    /// InvalidBaseImagePlatform.
    fn base_platform(
        &mut self,
        stage: &ins::Stage,
        name: &str,
        platform: &Platform,
        image: &FoundImage,
    ) {
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
                    "Base image {name} was pulled with platform {:?}, expected {:?} for current build",
                    actual.normalized().to_string(),
                    platform.normalized().to_string()
                ),
            );
        }
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
    fn used_once(&mut self, previous: Option<ins::Meta>, meta: &ins::Meta) {
        if let Some(prev) = previous {
            self.linter.fire_checked_at(
                &rules::MULTIPLE_INSTRUCTIONS_DISALLOWED,
                &prev,
                meta,
                format!(
                    "Multiple {} instructions should not be used in the same stage because only the last one will be used",
                    meta.keyword
                ),
            );
        }
    }

    fn json_args(&mut self, command: &CommandLine, shell: &[String], meta: &ins::Meta) {
        if matches!(command, CommandLine::Shell(_)) && shell.is_empty() {
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
    fn unpinned_base(&mut self, from: &ins::Meta, base: &str) {
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
        self.linter.fire(&rules::UNPINNED_BASE_IMAGE, from, message);
    }

    /// The hadolint-style RUN rules.
    fn run_rules(&mut self, run: &ins::Run, step: &RunStep, shell: &[String]) {
        let meta = &run.meta;
        if let Some((prev_line, prev_flags)) = &self.stage.previous_run {
            if *prev_flags == meta.flags {
                self.linter.fire(
                    &rules::CONSECUTIVE_RUN,
                    meta,
                    format!(
                        "RUN follows the RUN on line {}: consider merging them into one layer (hadolint DL3059)",
                        prev_line
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
        let cache_mount = step.mounts.iter().any(|m| {
            m.spec.mount_type == MountType::Cache && m.spec.target.contains("/var/lib/apt")
        });
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
        if piped && !sets_pipefail && !shell_has_pipefail(shell) {
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
fn is_remote(src: &str) -> bool {
    src.starts_with("http://") || src.starts_with("https://") || src.starts_with("git@")
}
