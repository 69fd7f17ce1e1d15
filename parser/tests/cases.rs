//! Data-driven parser and expansion tests over `testdata/parser/`.
//!
//! Each `testdata/parser/<case>/Dockerfile` is parsed; the checker compares:
//! - `buildkit.txt`: the BuildKit AST dump (when parsing succeeds),
//! - `instructions.json`: the typed instructions (when building them succeeds),
//! - `warnings.txt`: parser warnings (when there are any),
//! - `error.txt`: the full error text (when parsing or typing fails).
//!
//! Each `testdata/parser/expand/<group>/` has `words` (one word per line),
//! optional `env` (`K=V` lines) and `escape` (the escape character), and
//! `expected`: for every word, its value, words, and unset/referenced names,
//! or its error.
//!
//! Run with `KILN_BLESS=1` to rewrite the expectations from the current
//! behaviour (then review the diff).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use kiln_parser::expand::Lexer;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/parser")
}

/// Compares (or, when blessing, writes) one expectation file. `None` means
/// the file must not exist.
fn check(path: &Path, actual: Option<&str>, failures: &mut Vec<String>) {
    failures.extend(kiln_testsupport::golden::compare_optional(path, actual));
}

fn case_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn parser_cases() {
    let dirs = case_dirs(&testdata());
    assert!(
        dirs.len() >= 60,
        "expected the parser cases, found {}",
        dirs.len()
    );
    let mut failures = Vec::new();
    for dir in &dirs {
        let bytes = fs::read(dir.join("Dockerfile")).unwrap();
        let mut buildkit = None;
        let mut json = None;
        let mut warnings = None;
        let mut error = None;
        match kiln_parser::parse_bytes(&bytes, "Dockerfile") {
            Err(err) => error = Some(format!("{err}\n")),
            Ok(ast) => {
                buildkit = Some(kiln_parser::dump_buildkit(&ast));
                if !ast.warnings.is_empty() {
                    let mut text = String::new();
                    for w in &ast.warnings {
                        writeln!(text, "line {}: {}: {}", w.line, w.rule, w.message).unwrap();
                    }
                    for node in &ast.nodes {
                        if !node.empty_continuation_lines.is_empty() {
                            writeln!(
                                text,
                                "empty continuation lines of the instruction at line {}: {:?}",
                                node.span.start.line, node.empty_continuation_lines
                            )
                            .unwrap();
                        }
                    }
                    warnings = Some(text);
                }
                match kiln_parser::instructions::from_ast(&ast) {
                    Ok(typed) => json = Some(serde_json::to_string_pretty(&typed).unwrap() + "\n"),
                    Err(err) => error = Some(format!("{err}\n")),
                }
            }
        }
        check(
            &dir.join("buildkit.txt"),
            buildkit.as_deref(),
            &mut failures,
        );
        check(
            &dir.join("instructions.json"),
            json.as_deref(),
            &mut failures,
        );
        check(
            &dir.join("warnings.txt"),
            warnings.as_deref(),
            &mut failures,
        );
        check(&dir.join("error.txt"), error.as_deref(), &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} mismatches (KILN_BLESS=1 regenerates):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn expand_report(words: &str, env: &[(String, String)], escape: char) -> String {
    let lexer = Lexer::new(escape);
    let mut out = String::new();
    for word in words.lines() {
        writeln!(out, "word: {}", kiln_parser::go_quote(word)).unwrap();
        match lexer.expand(word, &env.to_vec()) {
            Ok(e) => {
                writeln!(out, "  value: {}", kiln_parser::go_quote(&e.value)).unwrap();
                let quoted: Vec<String> =
                    e.words.iter().map(|w| kiln_parser::go_quote(w)).collect();
                writeln!(out, "  words: [{}]", quoted.join(", ")).unwrap();
                if !e.referenced.is_empty() {
                    writeln!(out, "  referenced: {:?}", e.referenced).unwrap();
                }
                if !e.unset.is_empty() {
                    writeln!(out, "  unset: {:?}", e.unset).unwrap();
                }
            }
            Err(err) => writeln!(out, "  error: {err}").unwrap(),
        }
    }
    out
}

#[test]
fn expansion_cases() {
    let root = testdata().join("expand");
    let mut groups: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("words").is_file())
        .collect();
    groups.sort();
    assert!(
        groups.len() >= 5,
        "expected the expansion groups, found {}",
        groups.len()
    );
    let mut failures = Vec::new();
    for group in &groups {
        let words = fs::read_to_string(group.join("words")).unwrap();
        let env: Vec<(String, String)> = fs::read_to_string(group.join("env"))
            .unwrap_or_default()
            .lines()
            .map(|l| match l.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (l.to_string(), String::new()),
            })
            .collect();
        let escape = fs::read_to_string(group.join("escape"))
            .ok()
            .and_then(|s| s.trim().chars().next())
            .unwrap_or('\\');
        let report = expand_report(&words, &env, escape);
        check(&group.join("expected"), Some(&report), &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} mismatches (KILN_BLESS=1 regenerates):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
