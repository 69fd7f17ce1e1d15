//! The collection off the build's path: a build returns while its
//! collection has not run yet; builds running during a collection keep
//! what they use and succeed with correct images.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{dead_owner, fill, text, Fixture};

/// An exclusive `flock` on `path`, held by this test until dropped.
struct Held {
    _file: std::fs::File,
}

fn open_lock(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Held {
    fn new(path: &Path) -> Held {
        let file = open_lock(path);
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).expect("flock");
        Held { _file: file }
    }
}

/// Whether someone holds a `flock` on `path`.
fn held(path: &Path) -> bool {
    let file = open_lock(path);
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
}

/// Waits (up to 60 s) until `what` holds.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `kiln prune ARGS…` started, its output piped.
fn spawn_prune(fixture: &Fixture, args: &[&str]) -> Child {
    let mut all = vec!["prune"];
    all.extend_from_slice(args);
    fixture
        .kiln(&all)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln prune")
}

/// Runs `kiln prune ARGS…`, which must return (`what`, in the message
/// when it does not) and succeed; its output.
fn prune_returns(fixture: &Fixture, args: &[&str], what: &str) -> Output {
    let mut prune = spawn_prune(fixture, args);
    wait_until(what, || prune.try_wait().expect("wait").is_some());
    let out = prune.wait_with_output().expect("prune output");
    assert!(out.status.success(), "{}", text(&out));
    out
}
/// Waits until no automatic collection is queued or running.
fn wait_for_collections(root: &Path) {
    wait_until("the queued collection started", || {
        !held(&root.join("gc-queue.lock"))
    });
    drop(Held::new(&root.join("gc-run.lock")));
}

/// Builds a one-RUN image with its automatic collection detached (as by
/// default) and returns once the build has returned and its collection
/// waits in the queue.
fn build_with_queued_collection(fixture: &Fixture) {
    let ctx = fixture.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN echo hi > /hi\n")],
    );
    fixture.build_detached(&ctx, &["-t", "hi:1"]);
    wait_until("the build's collection queued", || {
        held(&fixture.root().join("gc-queue.lock"))
    });
}

/// A file's mtime.
fn mtime(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_build_returns_while_its_detached_collection_waits_then_runs() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    let root = fixture.root();
    let dead = root.join(format!("trash/build-{}-1-2", dead_owner()));
    fill(&dead, 10, 1000);
    // A collection is running (this test holds its lock).
    let running = Held::new(&root.join("gc-run.lock"));
    // The build returns; its collection is queued behind the running one,
    // and has removed nothing yet.
    build_with_queued_collection(&fixture);
    assert!(dead.exists());
    drop(running);
    wait_for_collections(&root);
    assert!(!dead.exists(), "collected once its turn came");
    // With no stderr, it says what it did in gc.log, which df shows.
    let log = std::fs::read_to_string(root.join("gc.log")).expect("gc.log");
    assert!(
        log.contains("automatic collection (pid ") && log.contains(": collected "),
        "{log}"
    );
    // And how long it held the store exclusively (what a build waited).
    let held = log
        .trim_end()
        .strip_suffix(" ms")
        .and_then(|l| l.rsplit_once("held the store "))
        .and_then(|(_, ms)| ms.parse::<u64>().ok());
    assert!(held.is_some(), "{log}");
    // And how long it worked from its turn (at least that), of which
    // sealing the snapshots and waiting for the builds took parts.
    let (worked, synced, waited) = log
        .split_once("worked ")
        .and_then(|(_, rest)| {
            rest.split_once(" ms of it for the builds using the store, held the store")
        })
        .and_then(|(figures, _)| figures.split_once(" ms (synced "))
        .and_then(|(worked, rest)| {
            let (synced, waited) = rest.split_once(" ms), waited ")?;
            Some((
                worked.parse::<u64>().ok()?,
                synced.parse::<u64>().ok()?,
                waited.parse::<u64>().ok()?,
            ))
        })
        .unwrap_or_else(|| panic!("no figures in {log}"));
    assert!(Some(worked) >= held && worked >= synced + waited, "{log}");
    // The seal covers every snapshot the build made: each one's stamp
    // is of this boot and no later than the seal.
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
    let sealed = std::fs::read_to_string(root.join("sealed")).expect("sealed");
    let seal: u128 = sealed
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{} ", boot.trim())))
        .and_then(|at| at.parse().ok())
        .unwrap_or_else(|| panic!("this boot is not in {sealed:?}"));
    let stamped = crate::stamps(&root);
    for (path, stamp_boot, at) in &stamped {
        assert_eq!(stamp_boot, boot.trim(), "{}", path.display());
        assert!(
            *at <= seal,
            "{}: {at} after the seal {seal}",
            path.display()
        );
    }
    assert!(stamped.len() >= 2, "the build made its snapshots");
    let out = fixture.ok(&["system", "df"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(&format!("Last automatic collection: {}", log.trim_end())),
        "{shown}"
    );
}

/// The collection after a command finds its store deleted meanwhile (a
/// temporary one): it makes none there, and says nothing.
#[test]
fn a_collection_whose_store_is_gone_makes_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("gone");
    for args in [&["__gc", "--after-build"][..], &["__gc"]] {
        let out = crate::common::kiln_command()
            .arg("--root")
            .arg(&root)
            .args(args)
            .output()
            .expect("run kiln __gc");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!root.exists(), "{args:?} made {}", root.display());
    }
}

#[test]
fn a_detached_collection_waits_a_minute_after_the_last_one() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    let root = fixture.root();
    // The last automatic collection ended 50 s ago.
    let log = root.join("gc.log");
    std::fs::write(&log, "an earlier collection\n").expect("gc.log");
    crate::age(&log, 50);
    let last = mtime(&log);
    let dead = root.join(format!("trash/build-{}-1-2", dead_owner()));
    fill(&dead, 10, 1000);
    // The build returns; its collection waits (about 10 s more), and has
    // removed nothing.
    build_with_queued_collection(&fixture);
    assert!(dead.exists());
    wait_for_collections(&root);
    assert!(!dead.exists(), "collected once the minute was over");
    let ran = mtime(&log);
    // (File times come from the kernel's coarse clock: a tick behind.)
    let after = ran.duration_since(last).unwrap_or_default();
    assert!(
        after >= Duration::from_millis(59_950),
        "the collection ran {after:?} after the last one"
    );
}

#[test]
fn a_prune_tells_a_running_containers_state_from_a_dead_ones_without_waiting() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    let root = fixture.root();
    let containers = root.join("containers");
    let dead = containers.join(format!("0123abcd-{}-1-2", dead_owner()));
    fill(&dead.join("work"), 3, 100);
    // A container that runs until the test stops it (it holds a lease);
    // it says when its shell handles SIGTERM.
    let sync = fixture.context("sync", &[]);
    let volume = format!("{}:/sync", sync.display());
    let run = fixture
        .kiln(&[
            "run",
            "-v",
            &volume,
            "busybox",
            "sh",
            "-c",
            "trap 'exit 0' TERM; touch /sync/ready; sleep 600 & wait",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln run");
    let live = || -> Vec<PathBuf> {
        std::fs::read_dir(&containers)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| *p != dead)
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_until("the container runs", || sync.join("ready").exists());
    let state = live();
    // Scratch with nothing to remove but what a dead process left: the
    // running container's state is seen as its own, so the prune needs
    // the lock only for the dead one's. Without it first: no waiting.
    std::fs::remove_dir_all(&dead).expect("remove the dead state");
    prune_returns(
        &fixture,
        &["--filter", "type=scratch"],
        "the prune returned while the container ran",
    );
    assert!(
        state.iter().all(|p| p.exists()),
        "the running container's state"
    );
    // Stop the container (kiln run forwards SIGTERM to its shell, which
    // as pid 1 has only the handler it sets); its state goes with it.
    let pid = rustix::process::Pid::from_raw(run.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("kill");
    let _ = run.wait_with_output().expect("wait for kiln run");
    assert!(live().is_empty(), "{:?}", live());
    // A dead process's container state is collected.
    fill(&dead.join("work"), 3, 100);
    fixture.ok(&["prune", "--filter", "type=scratch"]);
    assert!(!dead.exists());
}

/// A Dockerfile whose first RUN (cached from `base`) is the lower of a RUN
/// that signals `/sync/started-NAME`, waits for `/sync/go-NAME`, then
/// copies what the first wrote.
fn waiting(name: &str) -> String {
    format!(
        "FROM busybox\nRUN head -c 300000 /dev/urandom > /r && echo x > /x\n\
         RUN --mount=type=cache,id=sync,target=/sync touch /sync/started-{name} && \
         i=0; while [ ! -e /sync/go-{name} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \
         cat /x > /y && md5sum /r > /r.md5\n"
    )
}

/// Whether the first RUN of [`waiting`] came from the cache, in plain
/// progress.
fn first_run_cached(out: &Output) -> bool {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let step = stderr
        .lines()
        .find(|l| l.starts_with('#') && l.contains("] RUN head -c 300000"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no first RUN in\n{stderr}"));
    stderr.lines().any(|l| l == format!("{step} CACHED"))
}

fn sync_dir(root: &Path) -> PathBuf {
    root.join("cache-mounts")
        .join(kiln_layers::Digest::of(b"sync").hex())
}

fn spawn_build(fixture: &Fixture, tag: &str, ctx: &Path) -> Child {
    fixture
        .kiln(&["build", "-t", tag, ctx.to_str().expect("utf-8")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln build")
}

/// Checks the image `tag` made by [`waiting`]: `/y` is what the first RUN
/// wrote, `/r` what it hashed.
fn check_image(fixture: &Fixture, tag: &str) {
    let out = fixture.ok(&["run", tag, "sh", "-c", "cat /y && md5sum -c /r.md5"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "x\n/r: OK\n");
}

#[test]
fn a_collection_waits_for_a_running_build_that_uses_what_it_would_remove() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    let root = fixture.root();
    // The first RUN's record, and nothing tags its layer.
    let base = fixture.context(
        "base",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN head -c 300000 /dev/urandom > /r && echo x > /x\n",
        )],
    );
    fixture.build(&base, &["-t", "base:1"]);
    fixture.ok(&["rmi", "base:1"]);
    let chains: Vec<PathBuf> = std::fs::read_dir(root.join("snapshots"))
        .expect("snapshots")
        .flatten()
        .map(|e| e.path())
        .collect();
    // A build that reuses that record and waits in its second RUN.
    let ctx = fixture.context("ctx", &[("Dockerfile", &waiting("a"))]);
    let build = spawn_build(&fixture, "a:1", &ctx);
    wait_until("the build's RUN started", || {
        sync_dir(&root).join("started-a").exists()
    });
    // A collection that keeps nothing: it waits for the build.
    fixture.policy("[gc]\nkeep-storage = \"1\"\nmin-free-space = \"0\"\n");
    let mut collector = fixture
        .kiln(&["__gc"])
        .env("KILN_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln __gc");
    wait_until("the collection took its turn", || {
        held(&root.join("gc-run.lock"))
    });
    // The build holds the store a second longer; the collection's first
    // scan runs meanwhile, and removes nothing under it.
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(
        collector.try_wait().expect("collector").is_none(),
        "the collection ended while the build ran"
    );
    assert!(
        chains.iter().all(|c| c.exists()),
        "something was removed under the build"
    );
    std::fs::write(sync_dir(&root).join("go-a"), "").expect("go");
    let out = build.wait_with_output().expect("wait for build");
    assert!(out.status.success(), "{}", text(&out));
    let out = collector.wait_with_output().expect("wait for collector");
    assert!(out.status.success(), "{}", text(&out));
    check_image(&fixture, "a:1");
    // Its line (gc.log's, which the build's own collection may have
    // replaced since) says how long it waited for the build: at least
    // most of that second (its first scan ran meanwhile).
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let waited = log
        .split_once(", waited ")
        .and_then(|(_, rest)| rest.split_once(" ms of it for the builds using the store"))
        .and_then(|(ms, _)| ms.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no wait in {log}"));
    assert!(waited >= 500, "{log}");
    // Then the collection did its work: the records are gone (the image
    // keeps its own layers).
    assert!(
        crate::records(&root).is_empty(),
        "{:?}",
        crate::records(&root)
    );
}

#[test]
fn builds_started_during_a_collection_succeed_with_correct_images() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    let root = fixture.root();
    let base = fixture.context(
        "base",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN head -c 300000 /dev/urandom > /r && echo x > /x\n",
        )],
    );
    fixture.build(&base, &["-t", "base:1"]);
    fixture.ok(&["rmi", "base:1"]);
    // Much to delete (a dead build's 20,000 files), and a policy that keeps
    // no build cache: the collection removes the record the builds use.
    let dead = root.join(format!("trash/build-{}-1-2", dead_owner()));
    for d in 0..20 {
        fill(&dead.join(format!("d{d}")), 1000, 10);
    }
    fixture.policy("[gc]\nkeep-storage = \"1\"\nmin-free-space = \"0\"\n");
    // A hold on the store as a build's (this test's), so that the
    // collection is still at work when the builds start: it waits for it.
    let lease = open_lock(&root.join("gc.lock"));
    rustix::fs::flock(&lease, rustix::fs::FlockOperation::LockShared).expect("flock");
    let mut collector = fixture
        .kiln(&["__gc"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln __gc");
    wait_until("the collection took its turn", || {
        held(&root.join("gc-run.lock"))
    });
    // Builds that start now, reuse the record the collection would remove,
    // and wait in their second RUN.
    let mut builds = Vec::new();
    for name in ["b", "c"] {
        let ctx = fixture.context(name, &[("Dockerfile", &waiting(name))]);
        builds.push((name, spawn_build(&fixture, &format!("{name}:1"), &ctx)));
    }
    wait_until("both builds' RUNs started", || {
        ["b", "c"]
            .iter()
            .all(|name| sync_dir(&root).join(format!("started-{name}")).exists())
    });
    assert!(
        collector.try_wait().expect("collector").is_none(),
        "the collection ended before the builds ran"
    );
    // The test's hold goes: the collection now waits for the builds alone.
    drop(lease);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        collector.try_wait().expect("collector").is_none(),
        "the collection did not wait for the builds"
    );
    for name in ["b", "c"] {
        std::fs::write(sync_dir(&root).join(format!("go-{name}")), "").expect("go");
    }
    for (name, build) in builds {
        let out = build.wait_with_output().expect("wait for build");
        assert!(out.status.success(), "build {name}: {}", text(&out));
        assert!(
            first_run_cached(&out),
            "build {name} did not reuse the record: {}",
            text(&out)
        );
        check_image(&fixture, &format!("{name}:1"));
    }
    let out = collector.wait_with_output().expect("wait for collector");
    assert!(out.status.success(), "{}", text(&out));
    // Then it did its work: the dead build's files and the records are
    // gone (the images keep their own layers).
    assert!(!dead.exists());
    assert!(
        crate::records(&root).is_empty(),
        "{:?}",
        crate::records(&root)
    );
}

/// A store with `hi:1` built (automatic collection off) and a build in
/// flight: a shared hold on the store's collection lock, held until the
/// returned file is dropped.
fn built_and_leased() -> (Fixture, std::fs::File) {
    let fixture = Fixture::new();
    fixture.policy("[gc]\nenabled = false\n");
    let ctx = fixture.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN echo hi > /hi\n")],
    );
    fixture.build(&ctx, &["-t", "hi:1"]);
    let lease = open_lock(&fixture.root().join("gc.lock"));
    rustix::fs::flock(&lease, rustix::fs::FlockOperation::LockShared).expect("flock");
    (fixture, lease)
}

/// Runs `kiln prune ARGS…`, which must wait while `lease` is held and
/// succeed once it is dropped; its output.
fn prune_waits_for(fixture: &Fixture, args: &[&str], lease: std::fs::File) -> Output {
    let mut prune = spawn_prune(fixture, args);
    std::thread::sleep(Duration::from_millis(500));
    assert!(prune.try_wait().expect("wait").is_none(), "did not wait");
    drop(lease);
    let out = prune.wait_with_output().expect("prune output");
    assert!(out.status.success(), "{}", text(&out));
    out
}

#[test]
fn a_collection_with_nothing_to_remove_does_not_wait_for_running_builds() {
    crate::require_namespaces!();
    let (fixture, lease) = built_and_leased();
    // Nothing is older than that: it returns without the lock. (A prune
    // that had something to remove would wait for the hold to go.)
    let out = prune_returns(
        &fixture,
        &["--filter", "until=10000h", "--filter", "type=cache"],
        "the prune returned while a build held the store",
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cache records: 0,"),
        "{}",
        text(&out)
    );
    // With something to remove, it waits for the build.
    let out = prune_waits_for(&fixture, &["--filter", "type=cache"], lease);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("cache records: 0,"));
}

#[test]
fn a_collection_that_only_empties_the_trash_does_not_wait_for_running_builds() {
    crate::require_namespaces!();
    let (fixture, lease) = built_and_leased();
    let root = fixture.root();
    // What a killed deletion left in the trash.
    let dead = root.join(format!("trash/build-{}-1-2", dead_owner()));
    fill(&dead, 10, 1000);
    // All the scratch there is is in the trash (the build's abandoned
    // step dirs, the dead deletion's): deleted without waiting.
    let out = prune_returns(
        &fixture,
        &["--filter", "type=scratch"],
        "the prune returned while a build held the store",
    );
    assert!(!dead.exists(), "{}", text(&out));
    assert_eq!(
        std::fs::read_dir(root.join("trash"))
            .expect("trash")
            .count(),
        0,
        "{}",
        text(&out)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("trash entries: 0,"),
        "{}",
        text(&out)
    );
    // Scratch outside the trash whose owner is unknown (an older kiln's
    // build dir) needs the lock: that prune waits for the build.
    fill(&root.join("builds/build-old"), 1, 10);
    let out = prune_waits_for(&fixture, &["--filter", "type=scratch"], lease);
    assert!(!root.join("builds/build-old").exists(), "{}", text(&out));
}
