//! `kiln check`: lint rules over a Dockerfile, without building.
//!
//! Two families of rules (see [`rules::ALL`]):
//! - BuildKit's build checks, with BuildKit's names, messages and firing
//!   conditions (`frontend/dockerfile/linter` and where `dockerfile2llb`
//!   calls them). The rules that depend on dispatch (UndefinedVar,
//!   WorkdirRelativePath, MultipleInstructionsDisallowed, …) observe the
//!   planner's own walk ([`crate::plan::observe`]), over every stage as
//!   `docker build --check` does (no target means all stages): they see
//!   each word expanded in the very scope a build expands it in, and
//!   whatever a build would refuse while planning is a check error too;
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

mod static_rules;
mod walk;

use std::collections::BTreeMap;

use kiln_layers::oci::Platform;
use kiln_parser::ast::CheckOptions;
use kiln_parser::instructions::{self as ins, Instruction};
use serde::Serialize;

use crate::dockerignore::PatternMatcher;
use crate::plan::{plan_with, BuildOptions, DispatchObserver, ImageLookup, PlanError, WalkOptions};
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
    /// The line of the instruction whose `# check=` comments apply: its
    /// own, but for MultipleInstructionsDisallowed, reported at the earlier
    /// instruction and checked with the later one's (as BuildKit does).
    #[serde(skip)]
    pub checked_at: usize,
}

/// The rules BuildKit runs with the file's `check` options alone, which a
/// `# check=` comment above an instruction does not change (its
/// validations of the whole file, and the parser's warnings).
const FILE_WIDE: [&str; 6] = [
    "NoEmptyContinuation",
    "ConsistentInstructionCasing",
    "DuplicateStageName",
    "ReservedStageName",
    "InvalidDefaultArgInFrom",
    "InvalidBaseImagePlatform",
];

/// A Dockerfile that does not parse (or has a bad `check` directive).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckError {
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The message as BuildKit words it, where kiln's differs (a parse
    /// error: `dockerfile parse error on line N: …`), for `--call check`.
    #[serde(skip)]
    pub buildkit_message: Option<String>,
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

impl Finding {
    /// The hadolint code of a hadolint rule's finding (`DL3007`): the one
    /// its message names, as a rule may stand for more than one code.
    pub fn hadolint_code(&self) -> Option<&str> {
        if self.origin != RuleOrigin::Hadolint {
            return None;
        }
        let start = self.message.rfind("(hadolint ")? + "(hadolint ".len();
        let code = &self.message[start..];
        code.split(')').next()
    }
}

/// The codes a `hadolint ignore=DL3006,DL3008` comment lists.
fn hadolint_ignored(comment: &str) -> Option<impl Iterator<Item = &str> + '_> {
    let rest = comment.trim().strip_prefix("hadolint")?;
    let codes = rest.trim_start().strip_prefix("ignore=")?;
    Some(codes.split(',').map(str::trim).filter(|c| !c.is_empty()))
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
    /// Check only the stages this one needs (BuildKit's lint with a
    /// target); every stage when `None`.
    pub target: Option<String>,
    /// BuildKit's rules only, as a build checks (kiln's hadolint-style rules
    /// are for `kiln check`).
    pub buildkit_only: bool,
    /// A build's own options (its build platform, named contexts): a
    /// build's `--check` walks as the build would, and a base image that
    /// cannot be found is its error, as in BuildKit's lint. `None` (`kiln
    /// check`): the host's platform, and an image `images` does not know
    /// is empty, with a note.
    pub build: Option<&'a BuildOptions>,
}

impl Default for LintOptions<'_> {
    fn default() -> Self {
        LintOptions {
            build_args: BTreeMap::new(),
            dockerignore: None,
            images: None,
            platform: Platform::host(),
            target: None,
            buildkit_only: false,
            build: None,
        }
    }
}

/// The `check` configuration of a Dockerfile: its `# check=` directive, or
/// the `BUILDKIT_DOCKERFILE_CHECK` build arg, which wins (as in BuildKit).
pub fn check_config(
    ast: &kiln_parser::ast::Dockerfile,
    build_args: &BTreeMap<String, String>,
) -> Result<CheckOptions, CheckError> {
    if let Some(value) = build_args.get("BUILDKIT_DOCKERFILE_CHECK") {
        return CheckOptions::parse(value).map_err(|e| CheckError {
            message: format!("BUILDKIT_DOCKERFILE_CHECK: {e}"),
            ..CheckError::default()
        });
    }
    match ast.directive("check") {
        None => Ok(CheckOptions::default()),
        Some(directive) => directive.check_options().map_err(|e| CheckError {
            message: e.to_string(),
            line: Some(directive.span.start.line),
            column: Some(1),
            buildkit_message: None,
        }),
    }
}

/// The rules of one Dockerfile, in three parts: those that need no dispatch
/// (run by [`Checker::new`]), those that observe the plan's walk
/// ([`Checker::observer`], handed to [`crate::plan::plan_with`] — by
/// `kiln check`, or by a build, whose walk it then is), and the skip lists
/// and sorting ([`Checker::finish`]).
pub struct Checker<'a> {
    buildkit_only: bool,
    config: CheckOptions,
    rules: walk::Rules<'a>,
    comments: Vec<(usize, Vec<String>)>,
}

impl<'a> Checker<'a> {
    /// Runs the rules that need no dispatch. `ast` gives the parser's
    /// warnings (empty continuation lines), `config` the skip lists.
    pub fn new(
        ast: &kiln_parser::ast::Dockerfile,
        df: &ins::Dockerfile,
        config: CheckOptions,
        options: &'a LintOptions<'a>,
    ) -> Self {
        let mut linter = Linter::default();
        empty_continuations(ast, &mut linter);
        static_rules::run(df, options, &mut linter);
        let comments = comments_of(df);
        Checker {
            buildkit_only: options.buildkit_only,
            config,
            rules: walk::Rules::new(df, options, linter),
            comments,
        }
    }

    /// The dispatch rules, to hand to the plan's walk.
    pub fn observer(&mut self) -> &mut dyn DispatchObserver {
        &mut self.rules
    }

    /// The report: findings skipped as configured, sorted.
    pub fn finish(self, file: &str) -> Report {
        let mut report = Report {
            file: file.to_string(),
            findings: Vec::new(),
            error: None,
            error_on_warning: self.config.error,
            notes: Vec::new(),
        };
        let (mut linter, notes) = self.rules.finish();
        if self.buildkit_only {
            linter.findings.retain(|f| f.origin == RuleOrigin::Buildkit);
        } else {
            report.notes = notes;
        }
        linter.finish(&mut report, &self.config, &self.comments);
        report
    }
}

/// What BuildKit finds before an instruction it cannot read stops it
/// (`dockerfile_check_test.go`'s `testWarningsBeforeError`): the parser's
/// NoEmptyContinuation, and the rules it runs while reading each
/// instruction (StageNameCasing, FromAsCasing, MaintainerDeprecated) of
/// those before the failing one. Nothing is dispatched, and the checks of
/// the whole file (casing, stage names) run only once every instruction
/// reads, so no other rule runs.
pub fn findings_before_error(
    ast: &kiln_parser::ast::Dockerfile,
    file_name: &str,
    config: &CheckOptions,
) -> Report {
    let mut report = Report {
        file: file_name.to_string(),
        findings: Vec::new(),
        error: None,
        error_on_warning: config.error,
        notes: Vec::new(),
    };
    let mut linter = Linter::default();
    empty_continuations(ast, &mut linter);
    // The longest run of instructions that reads: those before the line
    // the error names, fewer if they do not read either.
    let mut read = ast.clone();
    if let Err(e) = ins::from_ast(&read) {
        read.nodes.retain(|node| node.span.start.line < e.line());
    }
    let df = loop {
        match ins::from_ast(&read) {
            Ok(df) => break Some(df),
            Err(_) if read.nodes.pop().is_some() => {}
            Err(_) => break None,
        }
    };
    let comments = match &df {
        Some(df) => {
            static_rules::parse_time_rules(df, &mut linter);
            comments_of(df)
        }
        None => Vec::new(),
    };
    linter.finish(&mut report, config, &comments);
    report
}

/// The comments right above each instruction, by its line.
fn comments_of(df: &ins::Dockerfile) -> Vec<(usize, Vec<String>)> {
    df.stages
        .iter()
        .flat_map(|s| std::iter::once(&s.from).chain(s.instructions.iter().map(Instruction::meta)))
        .chain(df.meta_args.iter().map(|a| &a.meta))
        .map(|m| (m.span.start.line, m.comments.clone()))
        .collect()
}

/// NoEmptyContinuation, from the parser's warnings.
fn empty_continuations(ast: &kiln_parser::ast::Dockerfile, linter: &mut Linter) {
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
}

/// Lints `source` (the Dockerfile text; `file_name` names it in the report).
pub fn check(source: &str, file_name: &str, options: &LintOptions) -> Report {
    match kiln_parser::parse(source, file_name) {
        Ok(ast) => check_ast(&ast, file_name, options),
        Err(e) => failed_report(file_name, parse_error(&e)),
    }
}

/// A report of nothing but `error` (a check that could not run; also
/// `kiln build --call check`'s answer to a build error).
pub fn failed_report(file_name: &str, error: CheckError) -> Report {
    Report {
        file: file_name.to_string(),
        findings: Vec::new(),
        error: Some(error),
        error_on_warning: false,
        notes: Vec::new(),
    }
}

/// A parse error as the report has it.
fn parse_error(e: &kiln_parser::ParseError) -> CheckError {
    CheckError {
        message: e.to_string(),
        line: Some(e.line()),
        column: Some(e.column()),
        buildkit_message: Some(format!(
            "dockerfile parse error on line {}: {}",
            e.line(),
            e.kind()
        )),
    }
}

/// Lints a parsed Dockerfile ([`check`] past the parser; a build's
/// `--check`, whose options name its images and target).
pub fn check_ast(
    ast: &kiln_parser::ast::Dockerfile,
    file_name: &str,
    options: &LintOptions,
) -> Report {
    let config = match check_config(ast, &options.build_args) {
        Ok(config) => config,
        Err(e) => return failed_report(file_name, e),
    };
    if let Err(e) = crate::frontend::Frontend::refuse_foreign_syntax(ast, &options.build_args) {
        let error = CheckError {
            column: e.line.map(|_| 1),
            line: e.line,
            message: e.message,
            buildkit_message: None,
        };
        return failed_report(file_name, error);
    }
    let df = match ins::from_ast(ast) {
        Ok(df) => df,
        Err(e) => {
            let mut report = findings_before_error(ast, file_name, &config);
            report.error = Some(parse_error(&e));
            return report;
        }
    };
    let mut checker = Checker::new(ast, &df, config, options);
    let own;
    let build = match options.build {
        Some(build) => build,
        None => {
            own = BuildOptions {
                build_args: options.build_args.clone(),
                target_platform: options.platform.clone(),
                build_platform: options.platform.clone(),
                target: options.target.clone(),
                run: Default::default(),
                named_contexts: Default::default(),
            };
            &own
        }
    };
    let walk_options = WalkOptions {
        all_stages: options.target.is_none(),
        unknown_images_empty: options.build.is_none(),
    };
    let images: &dyn ImageLookup = options.images.unwrap_or(&walk::NoImages);
    let planned = plan_with(&df, build, images, walk_options, checker.observer());
    let mut report = checker.finish(file_name);
    if let Err(error) = planned {
        report.error = Some(plan_error(&df, &error));
    }
    report
}

/// A planning error as `check` reports it: the message without the line,
/// which goes with the column of the instruction it is about.
pub fn plan_error(df: &ins::Dockerfile, error: &PlanError) -> CheckError {
    let column = error.line.and_then(|line| {
        df.stages
            .iter()
            .flat_map(|s| {
                std::iter::once(&s.from).chain(s.instructions.iter().map(Instruction::meta))
            })
            .chain(df.meta_args.iter().map(|a| &a.meta))
            .find(|m| m.span.start.line == line)
            .map(|m| m.span.start.column)
    });
    CheckError {
        message: error.kind.to_string(),
        line: error.line,
        column: column.or(error.line.map(|_| 1)),
        buildkit_message: None,
    }
}

#[derive(Default)]
pub(crate) struct Linter {
    findings: Vec<Finding>,
}

impl Linter {
    pub(crate) fn fire(&mut self, rule: &Rule, meta: &ins::Meta, message: String) {
        self.fire_at(
            rule,
            meta.span.start.line,
            meta.span.start.column,
            meta.span.end.line,
            message,
        );
    }

    pub(crate) fn fire_at(
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
            checked_at: line,
        });
    }

    /// Like [`Linter::fire`], but checked against the `# check=` comments
    /// of the instruction `checked` (MultipleInstructionsDisallowed).
    pub(crate) fn fire_checked_at(
        &mut self,
        rule: &Rule,
        meta: &ins::Meta,
        checked: &ins::Meta,
        message: String,
    ) {
        self.fire(rule, meta, message);
        if let Some(last) = self.findings.last_mut() {
            last.checked_at = checked.span.start.line;
        }
    }

    /// Applies the skip lists (file-wide, and per instruction: a
    /// `# check=skip=…` comment, or hadolint's `# hadolint ignore=DL…`,
    /// right above it), sorts.
    fn finish(self, report: &mut Report, config: &CheckOptions, comments: &[(usize, Vec<String>)]) {
        // The comments right above the finding's instruction.
        let comments_at = |line: usize| {
            comments
                .iter()
                .filter(move |(at, _)| *at == line)
                .flat_map(|(_, c)| c.iter())
        };
        // Their `# check=…` options, as BuildKit merges them.
        let checks_at =
            |line: usize| CheckOptions::of_comments(comments_at(line).map(String::as_str));
        let skipped_here = |f: &Finding| -> bool {
            if FILE_WIDE.contains(&f.rule) {
                return false;
            }
            checks_at(f.checked_at)
                .is_some_and(|o| o.skip_all || o.skip.iter().any(|s| s == f.rule))
                || comments_at(f.checked_at)
                    .filter_map(|c| hadolint_ignored(c))
                    .flatten()
                    .any(|code| f.hadolint_code() == Some(code))
        };
        // An experimental rule runs only where `experimental=` asks for it
        // (file-wide or in a `# check=` comment right above), and then
        // whatever `skip=` says.
        let experimental_here = |f: &Finding| -> bool {
            let asks =
                |o: &CheckOptions| o.experimental_all || o.experimental.iter().any(|r| r == f.rule);
            asks(config) || checks_at(f.checked_at).is_some_and(|o| asks(&o))
        };
        let mut findings: Vec<Finding> = Vec::new();
        for f in self.findings {
            let kept = if rules::EXPERIMENTAL.contains(&f.rule) {
                experimental_here(&f)
            } else {
                !(config.skip_all || config.skip.iter().any(|s| s == f.rule) || skipped_here(&f))
            };
            if !kept {
                continue;
            }
            findings.push(f);
        }
        findings.sort_by_key(|f| f.line);
        report.findings = findings;
    }
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

    /// A rule fires once per word, key or port, as BuildKit's does: the
    /// same finding twice is reported twice.
    #[test]
    fn findings_are_not_merged() {
        assert_eq!(
            rules_of("FROM scratch\nEXPOSE 80/TCP 80/TCP\n"),
            ["ExposeProtoCasing", "ExposeProtoCasing"]
        );
    }

    /// As BuildKit: a rule it runs over the whole file is not skipped by a
    /// comment above an instruction; MultipleInstructionsDisallowed is
    /// skipped by the later instruction's comment, though reported at the
    /// earlier one.
    #[test]
    fn comments_above_skip_what_buildkit_lets_them_skip() {
        assert_eq!(
            rules_of(
                "FROM scratch\n# check=skip=ConsistentInstructionCasing\ncopy a b\nCOPY c d\n"
            ),
            ["ConsistentInstructionCasing"]
        );
        assert_eq!(
            rules_of("FROM scratch\nCMD [\"a\"]\n# check=skip=MultipleInstructionsDisallowed\nCMD [\"b\"]\n"),
            Vec::<&str>::new()
        );
        assert_eq!(
            rules_of("FROM scratch\n# check=skip=MultipleInstructionsDisallowed\nCMD [\"a\"]\nCMD [\"b\"]\n"),
            ["MultipleInstructionsDisallowed"]
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

    /// `testWarningsBeforeError`: the rules BuildKit runs while reading
    /// the instructions before the one it cannot read still report.
    #[test]
    fn findings_before_an_error_are_kept() {
        let r = check(
            "# check=error=false\nFROM scratch AS BadStageName\nMAINTAINER me@example.org\nBADCMD\n",
            "Dockerfile",
            &LintOptions::default(),
        );
        assert_eq!(r.error.as_ref().and_then(|e| e.line), Some(4));
        let found: Vec<(&str, usize)> = r.findings.iter().map(|f| (f.rule, f.line)).collect();
        assert_eq!(found, [("StageNameCasing", 2), ("MaintainerDeprecated", 3)]);
        // The casing of the whole file is checked only once it all reads.
        let r = check(
            "FROM scratch\nrun x\nBADCMD\n",
            "Dockerfile",
            &LintOptions::default(),
        );
        assert!(r.findings.is_empty(), "{:?}", r.findings);
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
