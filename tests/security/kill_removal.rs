//! Issue: kill -9 during `kiln rmi` or `kiln prune` left a half-deleted
//! snapshot in its final place, and later pulls and builds used it: after
//! a killed `rmi`, a re-pulled image had 3373 of 6663 files; after a killed
//! `prune -a`, rebuilt images' RUN steps saw 155–6011 of 20000 files.
//!
//! Each trial kills `rmi` (then pulls the image again from a real
//! registry) or `prune -a` (then rebuilds a COPY of many files and a RUN
//! over it, reproducibly, so that the same snapshot is wanted again) at a
//! random moment within how long the command takes, and checks, from
//! inside a container, that every file is there with its content.
//!
//! `KILN_KILL_TRIALS` sets the number of trials of each kind (default 20),
//! `KILN_KILL_SEED` the seed of the kill times (printed), and
//! `KILN_KILL_DIR` where the store lives (default /dev/shm; a disk takes
//! several times as long). `scripts/kill-trials` runs them.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kiln_testsupport::RegistryServer;

use crate::common::{kiln, kiln_command, kiln_ok};
use crate::{require_root, text, Fixture};

/// Files in the image: enough that deleting its snapshot takes a while.
const FILES: usize = 6000;

/// Lists the files under /data in order, counts them and hashes their
/// contents, inside the container.
const PROBE: &str = "find /data -type f | wc -l; find /data -type f | sort | xargs cat | sha256sum";

fn trials() -> usize {
    std::env::var("KILN_KILL_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// Where the trials' store lives: `KILN_KILL_DIR`, else /dev/shm (a tmpfs:
/// the many files are made and deleted fast, the kills land the same way),
/// else the temp dir.
fn fixture() -> Fixture {
    let dir = std::env::var_os("KILN_KILL_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| Some(std::path::PathBuf::from("/dev/shm")).filter(|d| d.is_dir()))
        .unwrap_or_else(std::env::temp_dir);
    eprintln!("store under {}", dir.display());
    Fixture::new_in(&dir)
}

/// A small xorshift generator: the kill times, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed = std::env::var("KILN_KILL_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("KILN_KILL_SEED={seed}");
        Rng(seed | 1)
    }

    /// Uniform in [0, limit).
    fn below(&mut self, limit: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let nanos = limit.as_nanos().max(1) as u64;
        Duration::from_nanos(self.0 % nanos)
    }
}

/// What the probe prints for the files `data_files` makes.
fn expected_probe() -> String {
    let mut names: Vec<String> = (0..FILES).map(|i| format!("/data/f{i}")).collect();
    names.sort();
    let mut all = Vec::new();
    for name in &names {
        let i = &name["/data/f".len()..];
        all.extend_from_slice(format!("file {i}\n").as_bytes());
    }
    let digest = kiln_layers::Digest::of(&all);
    format!("{FILES}\n{}  -\n", digest.hex())
}

/// A build context with `data/f0`…: the files of [`expected_probe`].
fn data_context(fixture: &Fixture, name: &str, dockerfile: &str) -> std::path::PathBuf {
    let ctx = fixture.context(name, &[("Dockerfile", dockerfile)]);
    let data = ctx.join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    for i in 0..FILES {
        std::fs::write(data.join(format!("f{i}")), format!("file {i}\n")).expect("write");
    }
    ctx
}

/// `kiln ARGS…` killed with SIGKILL after `delay`; returns whether it had
/// already exited by then.
fn kill_after(root: &Path, args: &[&str], delay: Duration) -> bool {
    let mut child = kiln_command()
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kiln");
    std::thread::sleep(delay);
    let finished = child.try_wait().expect("try_wait").is_some();
    let _ = child.kill();
    let _ = child.wait();
    finished
}

/// How long `kiln ARGS…` takes to run to its end.
fn timed(root: &Path, args: &[&str]) -> Duration {
    let start = Instant::now();
    kiln_ok(root, args);
    start.elapsed()
}

fn trash_entries(root: &Path) -> usize {
    trash_names(root).len()
}

fn trash_names(root: &Path) -> BTreeSet<String> {
    std::fs::read_dir(root.join("trash")).map_or_else(
        |_| BTreeSet::new(),
        |d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        },
    )
}

/// Whether the trash holds a snapshot it did not hold `before`: a kill
/// landed after a snapshot left its place and before it was all deleted.
fn cut_snapshot_deletion(root: &Path, before: &BTreeSet<String>) -> bool {
    trash_names(root)
        .difference(before)
        .any(|name| name.starts_with("snapshot-"))
}

/// Runs the probe in `image` and compares with what the files should be.
fn check(root: &Path, image: &str, trial: usize) {
    let out = kiln(
        root,
        &["run", "--network", "none", image, "sh", "-c", PROBE],
    );
    assert!(out.status.success(), "trial {trial}: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        expected_probe(),
        "trial {trial}: {image} has lost files"
    );
}

/// Counts of what the kills hit, for the log and a sanity check.
#[derive(Default, Debug)]
struct Outcomes {
    finished_before_kill: usize,
    killed_running: usize,
    killed_mid_deletion: usize,
}

fn report(what: &str, outcomes: &Outcomes, started: Instant) {
    eprintln!(
        "{what}: {outcomes:?} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        outcomes.killed_mid_deletion > 0,
        "{what}: no kill landed while a directory was being deleted: {outcomes:?}"
    );
}

#[test]
fn kill_9_during_rmi_then_pull_gives_the_whole_image() {
    crate::require_namespaces!();
    let started = Instant::now();
    let fixture = fixture();
    let root = fixture.root();
    let registry = RegistryServer::start_plain().expect("registry");
    let image = format!("{}/kill/rmi:1", registry.host);
    let ctx = data_context(&fixture, "rmi-ctx", "FROM busybox\nCOPY data /data\n");
    kiln_ok(
        &root,
        &["build", "-t", &image, ctx.to_str().expect("utf-8")],
    );
    kiln_ok(&root, &["push", &image]);
    // Only the tag keeps the image's snapshots now, not the build cache.
    kiln_ok(&root, &["prune", "--all"]);
    check(&root, &image, 0);
    // How long a whole rmi takes, to kill within it.
    let full = timed(&root, &["rmi", &image]);
    kiln_ok(&root, &["pull", &image]);
    check(&root, &image, 0);

    let mut rng = Rng::from_env();
    let mut outcomes = Outcomes::default();
    for trial in 1..=trials() {
        let delay = rng.below(full);
        let before = trash_names(&root);
        if kill_after(&root, &["rmi", &image], delay) {
            outcomes.finished_before_kill += 1;
        } else {
            outcomes.killed_running += 1;
        }
        if cut_snapshot_deletion(&root, &before) {
            outcomes.killed_mid_deletion += 1;
        }
        kiln_ok(&root, &["pull", &image]);
        check(&root, &image, trial);
    }
    report("rmi", &outcomes, started);
    kiln_ok(&root, &["prune"]);
    assert_eq!(trash_entries(&root), 0);
}

#[test]
fn kill_9_during_prune_then_rebuild_sees_every_file() {
    require_root!();
    let started = Instant::now();
    let fixture = fixture();
    let root = fixture.root();
    // The COPY layer comes out the same each time (reproducible times),
    // so a rebuild wants the very snapshot prune was deleting; the RUN
    // over it is what saw a partial tree.
    let ctx = data_context(
        &fixture,
        "prune-ctx",
        &format!("FROM busybox\nCOPY data /data\nRUN ({PROBE}) > /probe\n"),
    );
    let ctx = ctx.to_str().expect("utf-8").to_string();
    let build = |root: &Path| {
        let out = kiln_command()
            .arg("--root")
            .arg(root)
            .args(["build", "-t", "kill/prune:1", &ctx])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .env("KILN_PROGRESS", "plain")
            .output()
            .expect("run kiln build");
        assert!(out.status.success(), "{}", text(&out));
    };
    let check_built = |root: &Path, trial: usize| {
        let out = kiln(
            root,
            &["run", "--network", "none", "kill/prune:1", "cat", "/probe"],
        );
        assert!(out.status.success(), "trial {trial}: {}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            expected_probe(),
            "trial {trial}: the RUN saw a partial /data"
        );
        check(root, "kill/prune:1", trial);
    };
    build(&root);
    check_built(&root, 0);
    kiln_ok(&root, &["rmi", "kill/prune:1"]);
    let full = timed(&root, &["prune", "--all"]);
    build(&root);

    let mut rng = Rng::from_env();
    let mut outcomes = Outcomes::default();
    for trial in 1..=trials() {
        // Untagged, the image's snapshots are kept only by the build cache,
        // which prune --all drops first.
        kiln_ok(&root, &["rmi", "kill/prune:1"]);
        let delay = rng.below(full);
        let before = trash_names(&root);
        if kill_after(&root, &["prune", "--all"], delay) {
            outcomes.finished_before_kill += 1;
        } else {
            outcomes.killed_running += 1;
        }
        if cut_snapshot_deletion(&root, &before) {
            outcomes.killed_mid_deletion += 1;
        }
        build(&root);
        check_built(&root, trial);
    }
    report("prune --all", &outcomes, started);
    kiln_ok(&root, &["prune"]);
    assert_eq!(trash_entries(&root), 0);
}
