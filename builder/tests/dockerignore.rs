//! Data-driven tests of `.dockerignore` matching:
//! `testdata/builder/dockerignore/<case>/` holds `dockerignore` (the file's
//! text), `paths` (slash paths to classify, one a line) and `expected`
//! (`- path` excluded, `+ path` kept). Regenerate with `KILN_BLESS=1`.

mod common;

use kiln_builder::dockerignore::{parse_ignore_file, MatchInfo, PatternMatcher};

fn classify(case: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(case.join("dockerignore")).map_err(|e| e.to_string())?;
    let matcher = PatternMatcher::from_lines("dockerignore", &parse_ignore_file(&text))
        .map_err(|e| e.to_string())?;
    let paths = std::fs::read_to_string(case.join("paths")).map_err(|e| e.to_string())?;
    let mut out = String::new();
    for path in paths.lines().filter(|l| !l.is_empty()) {
        let direct = matcher.matches_or_parent_matches(path);
        // The walker's incremental form must agree with the direct one.
        let mut info = MatchInfo::default();
        let parts: Vec<&str> = path.split('/').collect();
        let mut walked = false;
        for i in 0..parts.len() {
            let (m, next) = matcher.matches_using_parent_results(&parts[..=i].join("/"), &info);
            walked = m;
            info = next;
        }
        if walked != direct {
            return Err(format!("{path}: direct={direct} walked={walked}"));
        }
        out.push_str(if direct { "- " } else { "+ " });
        out.push_str(path);
        out.push('\n');
    }
    Ok(out)
}

#[test]
fn dockerignore_cases() {
    common::run_area("dockerignore", |case| match classify(case) {
        Ok(actual) => common::check_golden(case, "expected", &actual),
        Err(e) => Some(format!("{}: {e}", case.display())),
    });
}
