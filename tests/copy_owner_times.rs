//! COPY's times as BuildKit's current Dockerfile frontend gives them, end
//! to end (root, real builds exported as a directory), fsutil's
//! `copy.Copy` over an overlay snapshot: a file keeps its own mtime; a
//! directory COPY creates for a directory's contents takes the source
//! directory's (fsutil restores it after copying the contents; Docker
//! 20.10's older BuildKit left the copy time), as does an existing one the
//! contents go into; missing parents it creates get the copy time; an
//! existing directory changes only when an entry is made in it, never its
//! ancestors (overlayfs copies a directory up with its times).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{busybox_rootfs_tar, kiln, kiln_ok};

macro_rules! require_root {
    () => {
        if !kiln_testsupport::require_root("real namespaces and overlay mounts") {
            return;
        }
    };
}

/// A store with `busybox:latest`.
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
            &["import", tar.to_str().unwrap(), "busybox:latest"],
        );
        fixture
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// A context directory `name` holding `files`.
    fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.dir.path().join(name);
        for (path, content) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        dir
    }

    /// Builds `ctx` with `args`, its root filesystem exported to a
    /// directory; returns that directory and kiln's output.
    fn build_rootfs(&self, ctx: &Path, args: &[&str]) -> (PathBuf, Output) {
        let out_dir = ctx.with_extension("rootfs");
        let output = format!("type=local,dest={}", out_dir.display());
        let mut all = vec!["build", "--output", &output];
        all.extend_from_slice(args);
        all.push(ctx.to_str().unwrap());
        let out = kiln(&self.root(), &all);
        assert!(
            out.status.success(),
            "build failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        (out_dir, out)
    }
}

fn set_mtime(path: &Path, seconds: u64) {
    std::fs::File::open(path)
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_secs(seconds))
        .unwrap();
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn copy_times_change_only_what_buildkit_changes() {
    require_root!();
    let fixture = Fixture::new();
    let dockerfile = "FROM busybox:latest\n\
        RUN mkdir -p /usr/local/bin /srv/data && \
            touch -d @1000 /usr /usr/local /usr/local/bin /srv /srv/data\n\
        COPY tool /usr/local/bin/\n\
        COPY conf/ /opt/app/conf/\n\
        COPY conf /srv/data/\n";
    let ctx = fixture.context(
        "times",
        &[
            ("Dockerfile", dockerfile),
            ("tool", "#!/bin/sh\n"),
            ("conf/a.conf", "a=1\n"),
        ],
    );
    set_mtime(&ctx.join("tool"), 3000);
    set_mtime(&ctx.join("conf/a.conf"), 5000);
    set_mtime(&ctx.join("conf"), 4000);
    let before = now();
    let (rootfs, _) = fixture.build_rootfs(&ctx, &[]);
    let after = now();
    let mtime = |path: &str| {
        std::fs::symlink_metadata(rootfs.join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .mtime()
    };
    let copy_time = |path: &str| {
        let t = mtime(path);
        assert!(
            (before..=after).contains(&t),
            "{path}: mtime {t} is not the copy's time ({before}..={after})"
        );
    };
    // A file into an existing directory: only that directory changes.
    assert_eq!(mtime("usr"), 1000, "an ancestor of the new file changed");
    assert_eq!(
        mtime("usr/local"),
        1000,
        "an ancestor of the new file changed"
    );
    copy_time("usr/local/bin");
    assert_eq!(mtime("usr/local/bin/tool"), 3000);
    // A directory's contents into a new directory: the parents COPY made
    // have the copy time, the directory itself the source's.
    copy_time("opt");
    copy_time("opt/app");
    assert_eq!(mtime("opt/app/conf"), 4000);
    assert_eq!(mtime("opt/app/conf/a.conf"), 5000);
    // Into an existing directory: it takes the source's time; its parent,
    // in which nothing was made, keeps its own.
    assert_eq!(mtime("srv/data"), 4000);
    assert_eq!(mtime("srv/data/a.conf"), 5000);
    assert_eq!(mtime("srv"), 1000);
}
