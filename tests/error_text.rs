//! What kiln says when things fail, end to end through the binary (as
//! root): a RUN line too long for the kernel shown cut with its length, a
//! Dockerfile's control characters escaped in parse errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{busybox_rootfs_tar, kiln, kiln_ok};

/// A scratch directory with the busybox root filesystem tar in it.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        busybox_rootfs_tar(&dir.path().join("busybox.tar")).unwrap();
        Scratch { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn tar(&self) -> String {
        self.path("busybox.tar").display().to_string()
    }

    /// A store at `root` with `busybox:latest` imported.
    fn store(&self, root: &Path) {
        kiln_ok(root, &["import", &self.tar(), "busybox:latest"]);
    }

    /// A context directory holding `dockerfile`.
    fn context(&self, name: &str, dockerfile: &[u8]) -> PathBuf {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
        dir
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `error: ` line of kiln's stderr.
fn error_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line:\n{}", text(out)))
        .to_string()
}

/// A RUN line longer than the kernel takes in one argument (E2BIG): the
/// error shows its start, cut, and its length; nothing echoes it whole.
#[test]
fn a_run_line_over_the_argument_limit_is_shown_cut_with_its_length() {
    kiln_testsupport::require_root!("runs a build");
    let scratch = Scratch::new();
    let root = scratch.path("store");
    scratch.store(&root);
    // MAX_ARG_STRLEN is 128 KiB: `sh -c` gets this line as one argument.
    let line = format!("RUN echo {}", "x".repeat(300_000));
    let ctx = scratch.context("ctx", format!("FROM busybox\n{line}\n").as_bytes());
    let out = kiln(&root, &["build", ctx.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    let error = error_line(&out);
    assert!(error.contains("Argument list too long"), "{error}");
    assert!(
        error.contains(&format!(
            "RUN echo {}… ({} bytes)",
            "x".repeat(kiln_parser::SHORTENED_TO - "RUN echo ".len()),
            line.len()
        )),
        "{error}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let longest = stderr.lines().map(str::len).max().unwrap_or(0);
    assert!(
        longest < 1000,
        "a stderr line of {longest} bytes: the RUN line was echoed"
    );
}

/// Escape sequences in a Dockerfile reach the terminal escaped (`\x1b`)
/// in a parse error, never as the bytes.
#[test]
fn control_characters_of_a_dockerfile_are_escaped_in_its_errors() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    std::fs::write(
        dir.join("Dockerfile"),
        b"FROM busybox\n\x1b[2J\x1b]0;title\x07BOGUS foo\n",
    )
    .unwrap();
    let out = kiln(
        &dir.join("store"),
        &["build", "--dry-run", dir.to_str().unwrap()],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        !out.stderr.iter().any(|b| *b == 0x1b || *b == 0x07),
        "raw control characters: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown instruction: \\x1b[2J\\x1b]0;title\\x07BOGUS"),
        "{stderr}"
    );
    assert!(
        stderr.contains(" 2 | \\x1b[2J\\x1b]0;title\\x07BOGUS foo"),
        "{stderr}"
    );
}
