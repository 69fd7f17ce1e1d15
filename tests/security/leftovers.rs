//! Issue: leftovers of killed processes stayed, and prune did not say what
//! it freed. `/dev/shm/kiln-<uid>/<pid>-…` of killed runs was never
//! removed; `prune` reported only blob bytes ("10.2kB" after removing
//! 635 MB of build dirs and ingest files); after a killed build, `builds/`
//! kept 504 MB and `ingest/` 131 MB until a manual prune.
//!
//! Prune's report is compared with what `du` measured before and after;
//! the run scratch of a dead process is removed by prune and a live one's
//! kept; a killed build's scratch is removed when the next build starts,
//! while a concurrent build that is still running keeps its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::{kiln_command, kiln_ok};
use crate::{cache_mount_dir, require_root, text, Fixture};

/// `du -s -B1` of `paths`, together (an inode counted once).
fn du(paths: &[&Path]) -> u64 {
    let out = std::process::Command::new("du")
        .args(["-s", "-c", "-B1"])
        .args(paths)
        .output()
        .expect("run du");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let total = stdout.lines().last().expect("du total");
    total
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("du said {stdout}"))
}

/// The number after `label` in prune's report: `  label: N, 1.2kB (BYTES bytes)`
/// gives (N, BYTES).
fn reported(report: &str, label: &str) -> (u64, u64) {
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{label}:")))
        .unwrap_or_else(|| panic!("no {label} in\n{report}"));
    let count = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    let bytes = line
        .rsplit('(')
        .next()
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    (count, bytes)
}

/// An owner token, `<pid>.<start>`, of a process that has exited.
fn dead_owner() -> String {
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).expect("stat");
    child.wait().expect("wait");
    let start = stat[stat.rfind(')').expect("stat") + 1..]
        .split_whitespace()
        .nth(19)
        .expect("start time")
        .to_string();
    format!("{}.{start}", child.id())
}

/// This test process's owner token.
fn own_owner() -> String {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    let start = stat[stat.rfind(')').expect("stat") + 1..]
        .split_whitespace()
        .nth(19)
        .expect("start time")
        .to_string();
    format!("{}.{start}", std::process::id())
}

fn fill(dir: &Path, files: usize, size: usize) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for i in 0..files {
        std::fs::write(dir.join(format!("f{i}")), vec![b'x'; size]).expect("write");
    }
}

#[test]
fn prune_reports_what_it_freed_as_du_measures_it_and_removes_dead_run_scratch() {
    require_root!();
    let fixture = Fixture::new();
    let root = fixture.root();
    // Something of every kind prune removes.
    let ctx = fixture.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,id=c,target=/c \
             dd if=/dev/zero of=/c/big bs=1k count=300 && mkdir /d && echo d > /d/f\n",
        )],
    );
    kiln_ok(
        &root,
        &["build", "-t", "gone:1", ctx.to_str().expect("utf-8")],
    );
    kiln_ok(&root, &["rmi", "gone:1"]);
    let dead = dead_owner();
    fill(
        &root.join(format!("builds/build-{dead}-1-2/step/upper")),
        40,
        5000,
    );
    fill(&root.join("containers/0123abcd/work"), 3, 100);
    std::fs::write(
        root.join(format!("ingest/abc-{dead}-1-2")),
        vec![1u8; 70_000],
    )
    .expect("ingest");
    std::fs::write(root.join("ingest/def.partial"), vec![2u8; 9000]).expect("ingest");
    fill(
        &root.join(format!("trash/snapshot-{dead}-1-2/fs/x")),
        20,
        3000,
    );
    std::fs::write(
        root.join("blobs/sha256")
            .join(kiln_layers::Digest::of(b"loose").hex()),
        b"loose",
    )
    .expect("loose blob");
    // Run scratch on a tmpfs (the runtime dir this test points kiln at):
    // a dead process's, and a live one's (this test's own).
    let xdg = tempfile::Builder::new()
        .prefix("kiln-xdg-")
        .tempdir_in("/dev/shm")
        .expect("tempdir on /dev/shm");
    let base = xdg.path().join("kiln");
    std::fs::create_dir_all(&base).expect("mkdir");
    std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    let dead_run = base.join(format!("{dead}-5-6"));
    fill(&dead_run.join("etc"), 5, 2000);
    let live_run = base.join(format!("{}-5-6", own_owner()));
    fill(&live_run.join("etc"), 1, 10);

    kiln_ok(&root, &["images", "-q"]);
    let before = du(&[&root]);
    let run_before = du(&[&dead_run]);
    let out = kiln_command()
        .arg("--root")
        .arg(&root)
        .args(["prune", "--all"])
        .env("XDG_RUNTIME_DIR", xdg.path())
        .output()
        .expect("run kiln prune");
    assert!(out.status.success(), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let after = du(&[&root]);

    let total_line = report
        .lines()
        .find(|l| l.starts_with("Total reclaimed space:"))
        .unwrap_or_else(|| panic!("{report}"));
    let in_store: u64 = Some(total_line)
        .and_then(|l| l.split("in the store ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(in_store, before - after, "du measured otherwise:\n{report}");
    let kinds = [
        "blobs",
        "snapshots",
        "partial writes",
        "cache records",
        "leftover build dirs",
        "cache mounts",
        "trash entries",
        "variant records",
    ];
    let sum: u64 = kinds.iter().map(|k| reported(&report, k).1).sum();
    assert_eq!(sum, in_store, "{report}");
    for (kind, at_least) in [
        ("blobs", 1),
        ("snapshots", 1),
        ("partial writes", 2),
        ("cache records", 1),
        ("leftover build dirs", 2),
        ("cache mounts", 1),
        ("trash entries", 1),
    ] {
        let (count, bytes) = reported(&report, kind);
        assert!(count >= at_least && bytes > 0, "{kind}:\n{report}");
    }
    // The cache mount held 300 kB, the dead build 40 files of 5000 bytes.
    assert!(
        reported(&report, "cache mounts").1 >= 300 * 1024,
        "{report}"
    );
    assert!(
        reported(&report, "leftover build dirs").1 >= 40 * 5000,
        "{report}"
    );
    let (runs, run_bytes) = reported(&report, "dead run dirs");
    assert!(runs >= 1 && run_bytes >= run_before, "{report}");
    assert!(!dead_run.exists(), "a dead run's scratch is removed");
    assert!(live_run.join("etc/f0").is_file(), "a live run's is kept");
    let total: u64 = Some(total_line)
        .and_then(|l| l.split('(').nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(total, in_store + run_bytes, "{report}");
    assert_eq!(kiln_ok(&root, &["images", "-q"]).lines().count(), 1);
}

/// Starts `kiln build` of a Dockerfile whose RUN touches `/sync/<name>`
/// (a cache mount shared with the test), writes `files` files, and waits
/// (up to 60 s) for `/sync/go-<name>`.
fn start_waiting_build(fixture: &Fixture, name: &str, files: usize) -> Child {
    let dockerfile = format!(
        "FROM busybox\nRUN --mount=type=cache,id=sync,target=/sync \
         mkdir /many && i=0; while [ $i -lt {files} ]; do echo $i > /many/f$i; i=$((i+1)); done; \
         touch /sync/{name}; i=0; while [ ! -e /sync/go-{name} ] && [ $i -lt 600 ]; \
         do sleep 0.1; i=$((i+1)); done; echo {name} > /result\n"
    );
    let ctx = fixture.context(&format!("ctx-{name}"), &[("Dockerfile", &dockerfile)]);
    kiln_command()
        .arg("--root")
        .arg(fixture.root())
        .args(["build", "--progress", "plain", "-t", &format!("{name}:1")])
        .arg(ctx)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln build")
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The build scratch dirs of process `pid` under `builds/`.
fn scratch_of(root: &Path, pid: u32) -> Vec<PathBuf> {
    let prefix = format!("{pid}.");
    std::fs::read_dir(root.join("builds"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.split_once('-')
                        .is_some_and(|(_, rest)| rest.starts_with(&prefix))
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_killed_builds_scratch_goes_at_the_next_build_start_and_a_live_ones_stays() {
    require_root!();
    let fixture = Fixture::new();
    let root = fixture.root();
    let sync = cache_mount_dir(&root, "sync");
    // A build that is killed in the middle of its RUN.
    let mut killed = start_waiting_build(&fixture, "killed", 2000);
    wait_for(&sync.join("killed"));
    let killed_scratch = scratch_of(&root, killed.id());
    assert!(!killed_scratch.is_empty(), "the build has scratch");
    killed.kill().expect("kill -9");
    killed.wait().expect("reap");
    assert!(killed_scratch.iter().all(|p| p.exists()), "left behind");
    // A build that is running (waiting in its RUN) when the next starts.
    let live = start_waiting_build(&fixture, "live", 10);
    wait_for(&sync.join("live"));
    let live_scratch = scratch_of(&root, live.id());
    assert!(!live_scratch.is_empty());

    // The next build starts, and finishes; its collection, detached (as
    // by default), waits for the live build to release the store.
    let ctx = fixture.context("ctx-next", &[("Dockerfile", "FROM busybox\nRUN true\n")]);
    let out = kiln_command()
        .arg("--root")
        .arg(&root)
        .args(["build", "-t", "next:1"])
        .arg(&ctx)
        .env("KILN_GC", "detached")
        .output()
        .expect("run kiln build");
    assert!(out.status.success(), "{}", text(&out));
    for path in &killed_scratch {
        assert!(!path.exists(), "{} of the killed build", path.display());
    }
    assert!(
        live_scratch.iter().all(|p| p.exists()),
        "the live build's scratch"
    );
    // The live build goes on undisturbed; once it is done, its own
    // collection (in its process, unpaced: it does not wait for the
    // detached one's second) runs, and the trash is empty: what the killed
    // build left included.
    std::fs::write(sync.join("go-live"), "").expect("go");
    let out = live.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", text(&out));
    let left: Vec<_> = std::fs::read_dir(root.join("trash"))
        .expect("trash")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "still in the trash: {left:?}");
    let out = kiln_ok(&root, &["run", "live:1", "cat", "/result"]);
    assert_eq!(out, "live\n");
    assert!(
        live_scratch.iter().all(|p| !p.exists()),
        "removed at its end"
    );
}

/// Issue: a RUN's command that changed its user (`su`) lost the
/// parent-death signal the init had set (the kernel clears it with the
/// credentials), and outlived a killed kiln: still running, with its
/// cache's lock and its build's lease gone, in a tree the store then
/// collects. Now the runtime helper, whose parent-death signal stays, kills
/// the container when kiln dies. Checked: kiln killed (SIGKILL) while the
/// command, `su` to `app`, sleeps; no process of the container is left.
#[test]
fn a_container_whose_command_changed_user_dies_with_its_kiln() {
    require_root!();
    let fixture = Fixture::new();
    // A sleep no other run of this test shares.
    let marker = (100_000 + std::process::id()).to_string();
    let dockerfile = format!(
        "FROM busybox\nRUN --mount=type=cache,id=orphan,target=/sync \
         touch /sync/started && exec su -s /bin/sh app -c 'exec sleep {marker}'\n"
    );
    let ctx = fixture.context("ctx-orphan", &[("Dockerfile", &dockerfile)]);
    let mut build = kiln_command();
    build
        .arg("--root")
        .arg(fixture.root())
        .args(["build", "--progress", "plain", "--no-cache"])
        .arg(ctx);
    nothing_outlives_kiln_killed_during(build, &marker);
}

/// Issue: under chroot isolation no PID namespace ends a RUN, and kiln's
/// death killed only the init's process group: a command that left it
/// (`setsid`, as util-linux `su -c` does) kept running after kiln was
/// killed. Now the helper, the subreaper of the RUN, kills every
/// descendant then too. Checked: kiln killed (SIGKILL) while a `setsid`
/// sleep runs; it is gone.
#[test]
fn a_chroot_run_that_left_its_session_dies_with_its_kiln() {
    require_root!();
    let fixture = Fixture::new();
    let marker = (200_000 + std::process::id()).to_string();
    let dockerfile = format!("FROM busybox\nRUN setsid sleep {marker} & wait\n");
    let ctx = fixture.context("ctx-chroot-orphan", &[("Dockerfile", &dockerfile)]);
    let mut build = kiln_command();
    build
        .arg("--root")
        .arg(fixture.root())
        .args(["build", "--isolation", "chroot", "--progress", "plain"])
        .args(["--no-cache"])
        .arg(ctx);
    nothing_outlives_kiln_killed_during(build, &marker);
}

/// Starts `build`, waits until exactly one process has `marker` as an
/// argument (a `sleep marker` of the build's RUN), kills kiln (SIGKILL)
/// and asserts that the process is gone within 5 s.
fn nothing_outlives_kiln_killed_during(mut build: std::process::Command, marker: &str) {
    /// Kills kiln, and what is left of the container, when the test ends
    /// (even by a panic).
    struct Killed<'a>(Child, &'a str);
    impl Drop for Killed<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::process::Command::new("pkill")
                .args(["-9", "-f", &format!("sleep {}", self.1)])
                .status();
        }
    }
    let build = build
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kiln build");
    let mut build = Killed(build, marker);
    let deadline = Instant::now() + Duration::from_secs(30);
    let sleeping = loop {
        let found = crate::common::processes_with_argument(marker);
        if !found.is_empty() || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(sleeping.len(), 1, "{sleeping:?}");
    build.0.kill().expect("kill kiln");
    build.0.wait().expect("reap kiln");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = crate::common::processes_with_argument(marker);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the container outlived its kiln: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
