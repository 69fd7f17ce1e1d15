//! Golden files: expected outputs kept in the repository, compared with what
//! a test produces, and rewritten from it on request.
//!
//! `KILN_BLESS=1` (that value only) rewrites every golden file a test
//! compares instead of comparing; review the diff before committing it.
//!
//! ```no_run
//! use kiln_testsupport::golden;
//! let actual = "a\nb\n";
//! // In a data-driven test: collect mismatches, fail once with all of them.
//! let mismatch: Option<String> = golden::compare("testdata/x/expected".as_ref(), actual);
//! // In a test with one output: fail at once.
//! golden::check("testdata/x/expected".as_ref(), actual);
//! ```

use std::path::Path;

/// The environment variable that rewrites golden files.
pub const BLESS_VAR: &str = "KILN_BLESS";

/// Whether golden files are being rewritten: `KILN_BLESS=1`, nothing else.
pub fn blessing() -> bool {
    std::env::var_os(BLESS_VAR).is_some_and(|v| v == "1")
}

/// Compares `actual` with the golden file at `path`; when [`blessing`],
/// writes `actual` there instead (creating missing parent directories).
/// Returns a description of the mismatch (both texts), or `None`. A missing
/// golden file is a mismatch.
pub fn compare(path: &Path, actual: &str) -> Option<String> {
    compare_optional(path, Some(actual))
}

/// [`compare`] for an output that may be absent: with `actual` `None` the
/// golden file must not exist (blessing removes it).
pub fn compare_optional(path: &Path, actual: Option<&str>) -> Option<String> {
    if blessing() {
        match actual {
            Some(text) => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
                }
                std::fs::write(path, text)
                    .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            }
            None => match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("removing {}: {e}", path.display()),
            },
        }
        return None;
    }
    let expected = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("reading {}: {e}", path.display()),
    };
    if expected.as_deref() == actual {
        return None;
    }
    Some(format!(
        "{}: golden mismatch ({BLESS_VAR}=1 rewrites it)\n--- expected\n{}\n--- actual\n{}",
        path.display(),
        expected.as_deref().unwrap_or("<no file>"),
        actual.unwrap_or("<no file>"),
    ))
}

/// [`compare`], failing the test at once on a mismatch.
#[track_caller]
pub fn check(path: &Path, actual: &str) {
    if let Some(mismatch) = compare(path, actual) {
        panic!("{mismatch}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_extra_and_different_files_are_mismatches() {
        if blessing() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("expected");
        assert!(compare(&path, "x").unwrap().contains("<no file>"));
        assert_eq!(compare_optional(&path, None), None);
        std::fs::write(&path, "x").unwrap();
        assert_eq!(compare(&path, "x"), None);
        let mismatch = compare(&path, "y").unwrap();
        assert!(
            mismatch.contains("--- expected\nx\n--- actual\ny"),
            "{mismatch}"
        );
        assert!(compare_optional(&path, None).is_some());
    }
}
