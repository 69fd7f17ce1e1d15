//! COPY's times and owners as BuildKit's current Dockerfile frontend gives
//! them, end to end (root, real builds exported as a directory):
//!
//! - times (fsutil's `copy.Copy` over an overlay snapshot): a file keeps
//!   its own mtime; a directory COPY creates for a directory's contents
//!   takes the source directory's (fsutil restores it after copying the
//!   contents; Docker 20.10's older BuildKit left the copy time), as does an
//!   existing one the contents go into; missing parents it creates get the
//!   copy time; an existing directory changes only when an entry is made
//!   in it, never its ancestors (overlayfs copies a directory up with its
//!   times);
//! - `--chown` with a name the image lacks: root, as BuildKit resolves it
//!   (`readUser`: no error there), said in a build warning under the step
//!   and in the metadata file, never in a log line; on a stage with no
//!   files yet (`FROM scratch`) a name is refused, as BuildKit refuses it.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::kiln;

macro_rules! require_root {
    () => {
        if !kiln_testsupport::require_root("real namespaces and overlay mounts") {
            return;
        }
    };
}

/// Like `require_root!`, for tests whose only need for root is kiln's
/// own (they run rootless in scripts/test-rootless).
macro_rules! require_namespaces {
    () => {
        kiln_testsupport::require_namespaces!("real namespaces and overlay mounts")
    };
}

use common::BusyboxStore as Fixture;

impl Fixture {
    /// Builds `ctx` with `args`, its root filesystem exported to a
    /// directory; returns that directory and kiln's output.
    fn build_rootfs(&self, ctx: &Path, args: &[&str]) -> (PathBuf, Output) {
        let out_dir = ctx.with_extension("rootfs");
        let output = format!("type=local,dest={}", out_dir.display());
        let mut all = vec!["build", "--output", &output];
        all.extend_from_slice(args);
        all.push(ctx.to_str().unwrap());
        let out = common::kiln_with_metadata_warnings(&self.root(), &all);
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
    require_namespaces!();
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

#[test]
fn chown_to_a_user_the_image_lacks_is_root_and_a_build_warning() {
    require_root!();
    let fixture = Fixture::new();
    let dockerfile = "FROM busybox:latest\n\
        COPY --chown=nosuchuser f /f1\n\
        COPY --chown=app:nosuchgroup f /f2\n\
        COPY --chown=app f /f3\n\
        USER ghost\n\
        WORKDIR /w\n";
    let ctx = fixture.context("chown", &[("Dockerfile", dockerfile), ("f", "x\n")]);
    let meta = fixture.dir.path().join("chown-meta.json");
    let (rootfs, out) = fixture.build_rootfs(&ctx, &["--metadata-file", meta.to_str().unwrap()]);
    let owner = |path: &str| {
        let m = std::fs::symlink_metadata(rootfs.join(path)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner("f1"), (0, 0));
    assert_eq!(owner("f2"), (1000, 1000));
    assert_eq!(owner("f3"), (1000, 1000));
    assert_eq!(owner("w"), (0, 0));

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("kiln_builder"), "a log line:\n{stderr}");
    let warned = |text: &str| {
        stderr
            .lines()
            .any(|l| l.starts_with('#') && l.contains(" WARN: ") && l.ends_with(text))
    };
    assert!(
        warned(
            "--chown=nosuchuser: user \"nosuchuser\" is not in /etc/passwd of the image; \
             owned by 0:0, as BuildKit does"
        ),
        "{stderr}"
    );
    assert!(
        warned(
            "--chown=app:nosuchgroup: group \"nosuchgroup\" is not in /etc/group of the \
             image; owned by 1000:1000, as BuildKit does"
        ),
        "{stderr}"
    );
    assert!(
        warned(
            "USER ghost: user \"ghost\" is not in /etc/passwd of the image; \
             owned by 0:0, as BuildKit does"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.matches(" WARN: ").count(), 3, "{stderr}");

    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let warnings = common::metadata_warnings(&meta, dockerfile);
    let lines: Vec<Option<u64>> = warnings.iter().map(|(line, _)| *line).collect();
    assert_eq!(lines, [Some(2), Some(3), Some(6)], "{warnings:?}");
    assert!(
        warnings[0].1.starts_with("--chown=nosuchuser: user"),
        "{warnings:?}"
    );
}

/// A user or group name on a stage with no files yet (`FROM scratch`) is
/// refused, as BuildKit refuses it (its file op's owner has no input to
/// read `/etc/passwd` from: "invalid user index -1"); ids and root are
/// taken, and once the stage has a layer a missing name is root again.
#[test]
fn a_name_on_a_stage_without_files_is_refused() {
    // Owners as the host sees them: not rootless (ids mapped).
    require_root!();
    let fixture = Fixture::new();
    let refused = [
        (
            "FROM scratch\nCOPY --chown=nobody f /f\n",
            2,
            "--chown=nobody",
        ),
        (
            "FROM scratch\nCOPY --chown=1:nogroup f /f\n",
            2,
            "--chown=1:nogroup",
        ),
        ("FROM scratch\nUSER app\nWORKDIR /w\n", 3, "USER app"),
        (
            "FROM scratch AS empty\nFROM empty\nADD --chown=app f /f\n",
            3,
            "--chown=app",
        ),
    ];
    for (n, (dockerfile, line, what)) in refused.iter().enumerate() {
        let ctx = fixture.context(
            &format!("refused{n}"),
            &[("Dockerfile", dockerfile), ("f", "x\n")],
        );
        let out = kiln(&fixture.root(), &["build", ctx.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{dockerfile} built:\n{stderr}");
        let expected = format!(
            "line {line}: {}: {what}: the stage has no files yet (FROM scratch), so there is no \
             /etc/passwd or /etc/group",
            dockerfile.lines().nth(line - 1).unwrap()
        );
        assert!(
            stderr.contains(&expected),
            "{dockerfile}: {expected}\n{stderr}"
        );
    }

    let dockerfile = "FROM scratch\n\
        COPY --chown=root:5 f /a\n\
        COPY --chown=7 f /b\n\
        COPY --chown=nobody f /c\n";
    let ctx = fixture.context("taken", &[("Dockerfile", dockerfile), ("f", "x\n")]);
    let (rootfs, _) = fixture.build_rootfs(&ctx, &[]);
    let owner = |path: &str| {
        let m = std::fs::symlink_metadata(rootfs.join(path)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(
        (owner("a"), owner("b"), owner("c")),
        ((0, 5), (7, 7), (0, 0))
    );
}

/// ADD of a local tar with `--chown`: the entries and the destination
/// directory ADD makes take the owner, while the directories the archive
/// implies without listing them are root's, as BuildKit's untar makes them
/// (go-archive's `MkdirAllAndChown` with the root pair, 0755).
#[test]
fn add_chown_of_a_tar_leaves_the_directories_it_implies_to_root() {
    // Owners as the host sees them: not rootless (ids mapped).
    require_root!();
    let fixture = Fixture::new();
    let ctx = fixture.context(
        "addtar",
        &[(
            "Dockerfile",
            "FROM busybox:latest\nADD --chown=7:8 t.tar /dest/\n",
        )],
    );
    let src = fixture.dir("addtar-src");
    std::fs::create_dir_all(src.join("top/sub")).unwrap();
    std::fs::create_dir_all(src.join("explicit")).unwrap();
    std::fs::write(src.join("top/sub/file"), "f\n").unwrap();
    std::fs::write(src.join("explicit/f"), "f\n").unwrap();
    // Only the listed names: `top` and `top/sub` are implied.
    let tarred = std::process::Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(ctx.join("t.tar"))
        .args(["--no-recursion", "top/sub/file", "explicit", "explicit/f"])
        .status()
        .expect("run tar");
    assert!(tarred.success());

    let (rootfs, _) = fixture.build_rootfs(&ctx, &[]);
    let meta = |path: &str| {
        let m = std::fs::symlink_metadata(rootfs.join(path)).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    assert_eq!(meta("dest"), (7, 8, 0o755));
    assert_eq!(meta("dest/top"), (0, 0, 0o755));
    assert_eq!(meta("dest/top/sub"), (0, 0, 0o755));
    assert_eq!(meta("dest/top/sub/file").0, 7);
    assert_eq!(meta("dest/explicit").0, 7);
    assert_eq!(meta("dest/explicit/f").1, 8);
}
