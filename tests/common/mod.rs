//! Helpers for the end-to-end tests: the `kiln` binary, running it (with
//! the host's docker configuration kept out), and a busybox root filesystem
//! tar built from the host's static busybox (`busybox-static`, installed by
//! scripts/setup) by kiln-testsupport.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `kiln` binary cargo built for these tests.
pub fn kiln_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

/// `kiln ARGS…` with `DOCKER_CONFIG` pointing at an empty directory (the
/// host's `~/.docker/config.json` and its credential helpers take no part),
/// no `KILN_ROOT`, `KILN_LOG` or registry timeouts from the environment, and
/// no registry configuration file.
pub fn kiln_command() -> Command {
    let mut command = Command::new(kiln_bin());
    command
        .env("DOCKER_CONFIG", kiln_testsupport::empty_docker_config())
        .env_remove("KILN_ROOT")
        .env_remove("KILN_LOG")
        .env_remove("KILN_REGISTRY_TIMEOUT")
        .env_remove("KILN_REGISTRY_SPEED_LIMIT")
        .env_remove("KILN_REGISTRY_SPEED_TIME")
        // No registry configuration file (not the host's default one).
        .env("KILN_REGISTRY_CONFIG", "");
    command
}

/// `kiln --root ROOT ARGS…`, with progress as plain lines (see [`kiln_command`]).
pub fn kiln(root: &Path, args: &[&str]) -> Output {
    kiln_command()
        .arg("--root")
        .arg(root)
        .args(args)
        .env("KILN_PROGRESS", "plain")
        .output()
        .expect("run kiln")
}

/// Like [`kiln`] but panics, showing stderr, unless it succeeds; returns stdout.
pub fn kiln_ok(root: &Path, args: &[&str]) -> String {
    let out = kiln(root, args);
    assert!(
        out.status.success(),
        "kiln {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and panics with its stderr unless it succeeds; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where the static busybox lives on this machine.
pub fn busybox_path() -> PathBuf {
    kiln_testsupport::busybox_path().unwrap()
}

/// Lays out the busybox root filesystem of [`kiln_testsupport::BusyboxRootfs`]
/// in `dir`, with empty `/proc`, `/sys`, `/dev` and `/usr/bin`.
pub fn busybox_rootfs_dir(dir: &Path) -> Result<(), kiln_testsupport::TestSupportError> {
    kiln_testsupport::BusyboxRootfs::with_mount_points().create_dir(dir)
}

/// Writes that root filesystem as a tar to `path`, deterministically
/// (sorted entries, mtimes 0).
pub fn busybox_rootfs_tar(path: &Path) -> Result<(), kiln_testsupport::TestSupportError> {
    kiln_testsupport::BusyboxRootfs::with_mount_points().write_tar(path)
}
