//! What kiln says when things fail, end to end through the binary (as
//! root): an OS error said once and as what it is (ENOSPC while unpacking
//! a layer), nothing at all when stdout's reader is gone (EPIPE), a RUN
//! line too long for the kernel shown cut with its length, a Dockerfile's
//! control characters escaped in parse errors; settings that would not do
//! what they say refused (`KILN_LOG`, an ignored context). (The heredoc whose `#!`
//! interpreter is missing is a progress snapshot:
//! `testdata/builder/progress/run-heredoc-no-interpreter`.)

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{busybox_rootfs_tar, kiln, kiln_command, kiln_ok, text};

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

/// The `error: ` line of kiln's stderr.
fn error_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line:\n{}", text(out)))
        .to_string()
}

/// A tmpfs mounted by the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        common::run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size}"))
                .arg("tmpfs")
                .arg(&dir),
        );
        Tmpfs(dir)
    }

    fn resize(&self, bytes: u64) {
        common::run_ok(
            Command::new("mount")
                .arg("-o")
                .arg(format!("remount,size={bytes}"))
                .arg(&self.0),
        );
    }

    /// Bytes in use.
    fn used(&self) -> u64 {
        let path = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statvfs fills the zeroed struct we own.
        let st = unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(path.as_ptr(), &mut st), 0);
            st
        };
        (st.f_blocks - st.f_bfree) * st.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A store filled up: unpacking the base image's layer for a build runs
/// out of space. The error names the file and says ENOSPC once, not
/// "reading tar", not "layer layer".
#[test]
fn no_space_left_while_unpacking_is_said_once_as_a_write_error() {
    kiln_testsupport::require_root!("mounts a tmpfs");
    let scratch = Scratch::new();
    let fs = Tmpfs::mount(scratch.path("small"), "64m");
    let root = fs.0.join("store");
    scratch.store(&root);
    // Room for what the store holds now, and half the layer's size more:
    // its unpacked files (the static busybox) do not fit.
    let tar_size = std::fs::metadata(scratch.path("busybox.tar"))
        .unwrap()
        .len();
    fs.resize(fs.used() + tar_size / 2);
    let ctx = scratch.context("ctx", b"FROM busybox\nRUN true\n");
    let out = kiln(&root, &["build", ctx.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    let line = error_line(&out);
    assert_eq!(
        line.matches("No space left on device (os error 28)")
            .count(),
        1,
        "{line}"
    );
    assert!(line.contains("write sha256:"), "{line}");
    assert!(!line.contains("reading tar"), "{line}");
    assert!(!line.contains("layer layer"), "{line}");
}

/// The writing end of a pipe whose reading end is closed already.
fn closed_pipe() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are new and owned by nothing else.
    let (reader, writer) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    drop(reader);
    writer
}

/// `kiln … | head -c0`: stdout is a pipe nobody reads. kiln says nothing
/// and ends by SIGPIPE, as `ls`, `cat` or git do (a shell says 141): for a
/// write that fails with EPIPE (`kiln images`), one through serde_json
/// (`--format json`, `inspect`), the checks' report and `println!` (`kiln
/// build --dry-run`).
#[test]
fn a_closed_stdout_ends_kiln_quietly_by_sigpipe() {
    kiln_testsupport::require_root!("imports an image");
    let scratch = Scratch::new();
    let root = scratch.path("store");
    scratch.store(&root);
    let ctx = scratch.context("ctx", b"FROM busybox\nRUN true\n");
    let dockerfile = ctx.join("Dockerfile");
    for args in [
        vec!["images"],
        vec!["build", "--dry-run", ctx.to_str().unwrap()],
        // JSON written through serde_json, whose error hides the EPIPE.
        vec!["images", "--format", "json"],
        vec!["inspect", "busybox"],
        // The checks' report (it was taken for written).
        vec![
            "check",
            "-f",
            dockerfile.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
    ] {
        let writer = closed_pipe();
        let out = kiln_command()
            .arg("--root")
            .arg(&root)
            .args(&args)
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {}",
            text(&out)
        );
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{args:?}");
    }
    // With a reader, the same commands print and succeed.
    let listed = kiln(&root, &["images"]);
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(String::from_utf8_lossy(&listed.stdout).contains("busybox"));
}

/// A RUN line longer than the kernel takes in one argument (E2BIG): the
/// error shows its start, cut, and its length; nothing echoes it whole.
#[test]
fn a_run_line_over_the_argument_limit_is_shown_cut_with_its_length() {
    kiln_testsupport::require_namespaces!("runs a build");
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

/// Settings that would not do what they say are refused, naming
/// themselves: a `KILN_LOG` that is no log filter (it was taken for the
/// default level), a build context given to `kiln explain --image`,
/// `--pod` or `--compose` (it was ignored).
#[test]
fn a_log_filter_that_is_not_one_and_an_ignored_context_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let with_log = |filter: &str| {
        kiln_command()
            .arg("--root")
            .arg(&root)
            .arg("images")
            .env("KILN_LOG", filter)
            .output()
            .unwrap()
    };
    let out = with_log("kiln=loud");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("KILN_LOG=kiln=loud: not a log filter"),
        "{}",
        text(&out)
    );
    for filter in ["debug", "kiln=trace,warn", ""] {
        let out = with_log(filter);
        assert!(out.status.success(), "KILN_LOG={filter}: {}", text(&out));
    }
    for flag in ["--image", "--pod", "--compose"] {
        let out = kiln(&root, &["explain", flag, "x", "."]);
        assert!(!out.status.success(), "{flag}");
        assert!(
            text(&out).contains("cannot be used with '[CONTEXT]'"),
            "{flag}: {}",
            text(&out)
        );
    }
}
