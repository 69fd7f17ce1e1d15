//! `kiln build` end to end through the binary, as root: a busybox base
//! imported into a fresh store with `kiln import`, then real builds (RUN in
//! namespaces, overlay snapshots).
//!
//! `progress_plain_snapshots` is data-driven: `testdata/builder/progress/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{busybox_rootfs_tar, kiln, kiln_ok};

/// A store with `busybox:latest` in it.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("busybox.tar");
        busybox_rootfs_tar(&tar).unwrap();
        let fixture = Fixture { dir };
        kiln_ok(
            &fixture.root(),
            &[
                "import",
                "--change",
                "CMD [\"sh\"]",
                tar.to_str().unwrap(),
                "busybox:latest",
            ],
        );
        fixture
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn build(&self, args: &[&str]) -> Output {
        let mut all = vec!["build"];
        all.extend_from_slice(args);
        kiln(&self.root(), &all)
    }
}

fn testdata(area: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/builder")
        .join(area)
}

/// Times and digests out of plain progress, so it can be compared:
/// `DONE 0.3s` → `DONE 0.0s`, `#4 0.012 hi` → `#4 0.000 hi`,
/// `sha256:<64 hex>` → `sha256:<digest>`.
fn normalize(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line = normalize_digests(line);
        let words: Vec<&str> = line.split(' ').collect();
        let mut normalized: Vec<String> = Vec::with_capacity(words.len());
        for (i, word) in words.iter().enumerate() {
            let (word, comma) = match word.strip_suffix(',') {
                Some(w) => (w, ","),
                None => (*word, ""),
            };
            let is_seconds = word
                .strip_suffix('s')
                .is_some_and(|n| n.contains('.') && n.parse::<f64>().is_ok());
            let is_offset = i == 1
                && words[0].starts_with('#')
                && word.contains('.')
                && word.parse::<f64>().is_ok();
            let word = if is_seconds {
                "0.0s"
            } else if is_offset {
                "0.000"
            } else {
                word
            };
            normalized.push(format!("{word}{comma}"));
        }
        out.push_str(&normalized.join(" "));
        out.push('\n');
    }
    out
}

fn normalize_digests(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find("sha256:") {
        out.push_str(&rest[..at + 7]);
        let after = &rest[at + 7..];
        let hex = after.chars().take_while(|c| c.is_ascii_hexdigit()).count();
        if hex == 64 {
            out.push_str("<digest>");
            rest = &after[64..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Compares with the golden file, or writes it with `KILN_BLESS=1`.
fn check_golden(path: &Path, actual: &str) -> Option<String> {
    if std::env::var_os("KILN_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(path, actual).unwrap();
        return None;
    }
    let expected = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with KILN_BLESS=1 to create)", path.display()));
    (expected != actual).then(|| {
        format!(
            "{}: golden mismatch\n--- expected\n{expected}--- actual\n{actual}",
            path.display()
        )
    })
}

#[test]
fn progress_plain_snapshots() {
    let fixture = Fixture::new();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(testdata("progress"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in &cases {
        let context = case.to_str().unwrap();
        // Extra flags for the case, if any (e.g. `-t name`).
        let extra = std::fs::read_to_string(case.join("args")).unwrap_or_default();
        let mut args: Vec<&str> = vec!["--progress", "plain"];
        args.extend(extra.split_whitespace());
        args.push(context);
        let first = fixture.build(&args);
        let second = fixture.build(&args);
        let status = format!(
            "{}\n{}\n",
            first.status.code().unwrap_or(-1),
            second.status.code().unwrap_or(-1)
        );
        for (name, actual) in [
            (
                "plain.txt",
                normalize(&String::from_utf8_lossy(&first.stderr)),
            ),
            (
                "plain-rebuild.txt",
                normalize(&String::from_utf8_lossy(&second.stderr)),
            ),
            ("status", status),
        ] {
            failures.extend(check_golden(&case.join(name), &actual));
        }
        if first.status.success() {
            // Not a terminal: the image id alone on stdout.
            let stdout = String::from_utf8_lossy(&first.stdout);
            assert!(
                stdout.trim().starts_with("sha256:") && stdout.lines().count() == 1,
                "{context}: stdout {stdout:?}"
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn progress_quiet_prints_only_the_id_and_json_one_event_per_line() {
    let fixture = Fixture::new();
    let context = testdata("progress/run-output");
    let context = context.to_str().unwrap();
    let quiet = fixture.build(&["--progress", "quiet", context]);
    assert!(quiet.status.success());
    assert_eq!(String::from_utf8_lossy(&quiet.stderr), "");
    let id = String::from_utf8_lossy(&quiet.stdout).trim().to_string();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id:?}");

    let json = fixture.build(&["--progress", "json", "--no-cache", context]);
    assert!(json.status.success());
    let stderr = String::from_utf8_lossy(&json.stderr);
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "step_started").count(), 3);
    assert_eq!(kinds.iter().filter(|k| **k == "step_done").count(), 3);
    let lines: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "output")
        .filter_map(|e| e["line"].as_str())
        .collect();
    assert_eq!(
        lines,
        ["to stdout", "to stderr", "line 0", "line 1", "line 2"]
    );
    // --no-cache: the RUN steps ran again.
    assert!(events
        .iter()
        .filter(|e| e["event"] == "step_done")
        .skip(1)
        .all(|e| e["status"] == "done"));
    assert!(String::from_utf8_lossy(&json.stdout).starts_with("sha256:"));
}

#[test]
fn normalize_blanks_times_and_digests() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(
        normalize(&format!(
            "#4 0.013 took 1.5s, then\n#4 DONE 12.3s\n#5 writing image {digest} done\n"
        )),
        "#4 0.000 took 0.0s, then\n#4 DONE 0.0s\n#5 writing image sha256:<digest> done\n"
    );
    assert_eq!(normalize("#3 line 0\n"), "#3 line 0\n");
}
