//! Helpers for the end-to-end tests: the `kiln` binary, running it, and a
//! busybox root filesystem tar built from the host's static busybox
//! (`busybox-static`, installed by scripts/setup).

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `kiln` binary cargo built for these tests.
pub fn kiln_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

/// `kiln --root ROOT ARGS…`, with progress as plain lines.
pub fn kiln(root: &Path, args: &[&str]) -> Output {
    Command::new(kiln_bin())
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
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("busybox not found: run scripts/setup (Debian package busybox-static)");
}

/// Lays out a minimal busybox root filesystem in `dir`: `/bin/busybox` with
/// a symlink per applet, `/etc/passwd`, `/etc/group`, `/tmp`, `/root`, and
/// empty `/proc`, `/sys`, `/dev`.
pub fn busybox_rootfs_dir(dir: &Path) -> std::io::Result<()> {
    let mkdir = |rel: &str, mode: u32| -> std::io::Result<()> {
        let p = dir.join(rel);
        fs::create_dir_all(&p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
    };
    for (rel, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("proc", 0o755),
        ("sys", 0o755),
        ("dev", 0o755),
        ("usr/bin", 0o755),
    ] {
        mkdir(rel, mode)?;
    }
    let busybox = busybox_path();
    fs::copy(&busybox, dir.join("bin/busybox"))?;
    fs::set_permissions(dir.join("bin/busybox"), fs::Permissions::from_mode(0o755))?;
    let list = Command::new(&busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    Ok(())
}

/// Writes a busybox root filesystem tar (see [`busybox_rootfs_dir`]) to
/// `path`, deterministically (sorted entries, mtimes clamped to 0).
pub fn busybox_rootfs_tar(path: &Path) -> std::io::Result<()> {
    let staging = tempfile::tempdir()?;
    busybox_rootfs_dir(staging.path())?;
    let out = fs::File::create(path)?;
    let options = kiln_layers::diff::DiffOptions {
        source_date_epoch: Some(0),
        overlay_whiteouts: false,
    };
    kiln_layers::diff::write_tar(staging.path(), std::io::BufWriter::new(out), &options)
        .map_err(std::io::Error::other)?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
}
