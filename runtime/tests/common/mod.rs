//! Shared fixtures: a busybox root filesystem in a temp dir, and running the
//! runtime through the crate's `kiln-runtime-helper` binary.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use kiln_runtime::{ExitStatus, HelperCommand, RunSpec, RuntimeError, Streams};

pub const HELPER_BIN: &str = env!("CARGO_BIN_EXE_kiln-runtime-helper");

/// Root is a prerequisite of these tests (namespaces, overlay, mknod):
/// without it they fail, unless `KILN_TEST_ALLOW_SKIP=1` lets them skip.
#[macro_export]
macro_rules! require_root {
    () => {
        kiln_testsupport::require_root!("real namespaces and overlay mounts")
    };
}

/// The busybox root filesystem of [`kiln_testsupport::BusyboxRootfs`] in
/// `dir/rootfs`: static busybox with a link per applet, /etc/passwd and
/// /etc/group with root, app (1000, in wheel) and nobody, /etc/motd,
/// /tmp (1777), /root, /home/app, /bin/not-executable. No /etc/hosts,
/// /proc, /sys or /dev: the runtime must provide them.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    kiln_testsupport::BusyboxRootfs::default()
        .create_dir(&root)
        .unwrap();
    root
}

pub fn helper() -> HelperCommand {
    HelperCommand::subcommand_of(HELPER_BIN)
}

/// A spec for `argv` in the rootfs, state under `dir/state`, no network.
pub fn spec(dir: &Path, rootfs: &Path, argv: &[&str]) -> RunSpec {
    let mut spec = RunSpec::new(
        vec![rootfs.to_path_buf()],
        dir.join("state"),
        argv.iter().map(|s| s.to_string()).collect(),
    );
    spec.image = "busybox-test".into();
    spec.hostname = "kiln-test".into();
    spec
}

/// Runs `spec` with stdout and stderr captured into files.
pub fn run_captured(
    dir: &Path,
    spec: RunSpec,
) -> (Result<ExitStatus, RuntimeError>, String, String) {
    run_captured_with(dir, spec, &helper())
}

/// [`run_captured`] with another helper command.
pub fn run_captured_with(
    dir: &Path,
    mut spec: RunSpec,
    helper: &HelperCommand,
) -> (Result<ExitStatus, RuntimeError>, String, String) {
    let out_path = dir.join("stdout");
    let err_path = dir.join("stderr");
    let out = fs::File::create(&out_path).unwrap();
    let err = fs::File::create(&err_path).unwrap();
    spec.streams = Streams::Stdio {
        stdin: Stdio::null(),
        stdout: Stdio::from(out),
        stderr: Stdio::from(err),
    };
    let result = kiln_runtime::run(spec, helper);
    let stdout = fs::read_to_string(&out_path).unwrap();
    let stderr = fs::read_to_string(&err_path).unwrap();
    (result, stdout, stderr)
}

/// Runs a shell script in a fresh busybox container; returns code and stdout.
pub fn sh(script: &str) -> (i32, String) {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let (result, out, err) =
        run_captured(tmp.path(), spec(tmp.path(), &rootfs, &["sh", "-c", script]));
    let status = result.unwrap_or_else(|e| panic!("run failed: {e}; stderr: {err}"));
    (status.code(), out)
}
