//! Shared fixtures: a busybox root filesystem in a temp dir, and running the
//! runtime through the crate's `kiln-runtime-helper` binary.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use kiln_runtime::{ExitStatus, HelperCommand, RunSpec, RuntimeError, Streams};

pub const HELPER_BIN: &str = env!("CARGO_BIN_EXE_kiln-runtime-helper");

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Root is a prerequisite of these tests (namespaces, overlay, mknod):
/// without it they say so and pass trivially.
#[macro_export]
macro_rules! require_root {
    () => {
        if !common::is_root() {
            eprintln!("SKIPPED: needs root (real namespaces and overlay mounts)");
            return;
        }
    };
}

pub fn busybox_path() -> PathBuf {
    for candidate in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(candidate).is_file() {
            return PathBuf::from(candidate);
        }
    }
    panic!("busybox is missing: scripts/setup installs busybox-static");
}

/// A root filesystem: static busybox with a link per applet, /etc/passwd
/// and /etc/group with root and app (1000), /tmp (1777), /etc/motd. No
/// /etc/hosts, /proc, /sys or /dev: the runtime must provide them.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::create_dir_all(root.join("home/app")).unwrap();
    std::os::unix::fs::chown(root.join("home/app"), Some(1000), Some(1000)).ok();
    let busybox = root.join("bin/busybox");
    fs::copy(busybox_path(), &busybox).unwrap();
    fs::set_permissions(&busybox, fs::Permissions::from_mode(0o755)).unwrap();
    // The host's copy: running the fresh one could fail with ETXTBSY while
    // another test thread's fork still holds it open for writing.
    let list = std::process::Command::new(busybox_path())
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.contains('/') {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/group"),
        "root:x:0:\nwheel:x:10:app\napp:x:1000:\n",
    )
    .unwrap();
    fs::write(root.join("etc/motd"), "welcome\n").unwrap();
    fs::write(root.join("bin/not-executable"), "#!/bin/sh\necho no\n").unwrap();
    root
}

pub fn helper() -> HelperCommand {
    HelperCommand {
        program: PathBuf::from(HELPER_BIN),
        args: vec!["__runtime-helper".into()],
    }
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
    mut spec: RunSpec,
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
    let result = kiln_runtime::run(spec, &helper());
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
