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
use crate::plan::{plan_with, BuildOptions, ImageLookup, PlanError, WalkOptions};
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
    static_rules::run(&df, options, &mut linter);
    let mut observer = walk::Rules::new(&df, options, linter);
    let build = BuildOptions {
        build_args: options.build_args.clone(),
        target_platform: options.platform.clone(),
        build_platform: options.platform.clone(),
        target: None,
    };
    let every_stage = WalkOptions {
        all_stages: true,
        unknown_images_empty: true,
    };
    let images: &dyn ImageLookup = options.images.unwrap_or(&walk::NoImages);
    if let Err(error) = plan_with(&df, &build, images, every_stage, &mut observer) {
        report.error = Some(plan_error(&df, &error));
    }
    let (linter, notes) = observer.finish();
    let comments: Vec<(usize, Vec<String>)> = df
        .stages
        .iter()
        .flat_map(|s| std::iter::once(&s.from).chain(s.instructions.iter().map(Instruction::meta)))
        .chain(df.meta_args.iter().map(|a| &a.meta))
        .map(|m| (m.span.start.line, m.comments.clone()))
        .collect();
    report.notes = notes;
    linter.finish(&mut report, &config, &comments);
    report
}

/// A planning error as `check` reports it: the message without the line,
/// which goes with the column of the instruction it is about.
fn plan_error(df: &ins::Dockerfile, error: &PlanError) -> CheckError {
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
