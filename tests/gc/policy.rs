//! The automatic collection after a build, under each key of `gc.toml`.

use std::path::PathBuf;

use crate::{
    age, assert_du_collectable, assert_untouched, dead_owner, df, fill, image_files, records,
    run_cached, text, Fixture,
};

const SERIES: &str =
    "FROM busybox\nARG N\nRUN head -c 1000000 /dev/urandom > /data && echo $N > /n\n";

/// Builds the series image for `n`, tagged `series:latest` (the tag moves:
/// the previous image's layer is then kept by its cache record alone).
fn series(fixture: &Fixture, ctx: &std::path::Path, n: u32) -> std::process::Output {
    fixture.build(
        ctx,
        &["-t", "series:latest", "--build-arg", &format!("N={n}")],
    )
}

#[test]
fn keep_storage_holds_the_store_under_it_least_recently_used_first() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    let limit: u64 = 5 << 20;
    fixture.policy("[gc]\nkeep-storage = \"5MB\"\n");
    let ctx = fixture.context("ctx", &[("Dockerfile", SERIES)]);
    fixture.build(&ctx, &["-t", "keep:1", "--build-arg", "N=0"]);
    let keep = image_files(&fixture.root(), "keep:1");
    // Each build's layer is about 1 MB, stored twice (blob and snapshot).
    for n in 1..=4 {
        series(&fixture, &ctx, n);
        let collectable = df(&fixture)["Collectable"].as_u64().expect("collectable");
        assert!(collectable <= limit, "after build {n}: {collectable} bytes");
        // The same figure from `du`, without kiln's inventory.
        assert_du_collectable(&fixture.root(), collectable, &format!("after build {n}"));
    }
    // Build 1's record was the least recently used: gone. Build 2's is
    // used again now (a cache hit), so build 3's is the oldest when build
    // 5 pushes the store over the limit.
    assert!(run_cached(&series(&fixture, &ctx, 2)));
    series(&fixture, &ctx, 5);
    let collectable = df(&fixture)["Collectable"].as_u64().expect("collectable");
    assert!(collectable <= limit, "after build 5: {collectable} bytes");
    assert_du_collectable(&fixture.root(), collectable, "after build 5");
    // The tagged image's files were never collected (nor made again).
    assert_untouched(&fixture.root(), "keep:1", &keep);
    for (n, kept) in [(4, true), (2, true), (3, false), (1, false)] {
        let out = series(&fixture, &ctx, n);
        assert_eq!(run_cached(&out), kept, "build {n}: {}", text(&out));
    }
    // The tagged image is whole.
    let out = fixture.ok(&["run", "keep:1", "cat", "/n"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n");
}

/// A build whose outputs are all elsewhere (`-o type=local`) records no
/// image, as buildx makes none: what it leaves is build cache, which the
/// limit holds. And an untagged image (a build without -t), which the
/// default kinds leave alone, keeps what it holds without counting
/// against the limit: the collection meets it instead of failing to.
#[test]
fn builds_to_elsewhere_leave_cache_and_untagged_images_do_not_hold_the_limit() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    fixture.policy("[gc]\nkeep-storage = \"3MB\"\n");
    let ctx = fixture.context("ctx", &[("Dockerfile", SERIES)]);
    fixture.build(&ctx, &["--build-arg", "N=100"]);
    let images = |f: &Fixture| String::from_utf8_lossy(&f.ok(&["images"]).stdout).into_owned();
    assert_eq!(
        images(&fixture).matches("<none>").count(),
        2,
        "{}",
        images(&fixture)
    );
    for n in 1..=4 {
        let dest = fixture.dir(&format!("out-{n}"));
        let output = format!("type=local,dest={}", dest.display());
        fixture.build(&ctx, &["-o", &output, "--build-arg", &format!("N={n}")]);
        assert_eq!(
            std::fs::read_to_string(dest.join("n")).expect("n"),
            format!("{n}\n")
        );
        let listed = images(&fixture);
        assert_eq!(
            listed.matches("<none>").count(),
            2,
            "after build {n}: {listed}"
        );
        // "… collectable data B -> A bytes (the limits keep K bytes)"
        let log = std::fs::read_to_string(fixture.root().join("gc.log")).expect("gc.log");
        let figures: Vec<u64> = log
            .split("collectable data ")
            .nth(1)
            .unwrap_or_else(|| panic!("after build {n}: {log}"))
            .split(|c: char| !c.is_ascii_digit())
            .filter(|w| !w.is_empty())
            .filter_map(|w| w.parse().ok())
            .collect();
        let (after, keep) = (figures[1], figures[2]);
        assert!(after <= keep, "after build {n}: {log}");
        // df's "what keep-storage limits" counts as the collection does.
        let collectable = df(&fixture)["Collectable"].as_u64().expect("collectable");
        assert!(
            collectable <= keep,
            "after build {n}: df {collectable}, {log}"
        );
    }
}

#[test]
fn keep_duration_removes_what_was_not_used_for_longer() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    fixture.policy("[gc]\nkeep-storage = \"0\"\nmin-free-space = \"0\"\nkeep-duration = \"1h\"\n");
    let ctx = fixture.context("ctx", &[("Dockerfile", SERIES)]);
    let new_record = |n: u32| -> PathBuf {
        let before = records(&fixture.root());
        series(&fixture, &ctx, n);
        let mut new: Vec<PathBuf> = records(&fixture.root())
            .into_iter()
            .filter(|r| !before.contains(r))
            .collect();
        assert_eq!(new.len(), 1, "{new:?}");
        new.remove(0)
    };
    let old = new_record(1);
    let recent = new_record(2);
    age(&old, 2 * 3600);
    series(&fixture, &ctx, 3);
    assert!(!old.exists(), "unused for 2 h: collected");
    assert!(
        recent.exists(),
        "used now: kept, though no size limit is near"
    );
    assert!(run_cached(&series(&fixture, &ctx, 2)));
    assert!(!run_cached(&series(&fixture, &ctx, 1)));
}

#[test]
fn types_choose_what_the_collection_takes() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    let root = fixture.root();
    // Keep one byte, but of scratch only: the build cache stays.
    fixture.policy("[gc]\nkeep-storage = \"1\"\ntypes = [\"scratch\"]\n");
    let ctx = fixture.context("ctx", &[("Dockerfile", SERIES)]);
    series(&fixture, &ctx, 1);
    series(&fixture, &ctx, 2);
    let dead = root.join(format!("trash/snapshot-{}-1-2", dead_owner()));
    fill(&dead.join("fs"), 20, 3000);
    let loose = root
        .join("blobs/sha256")
        .join(kiln_layers::Digest::of(b"loose").hex());
    std::fs::write(&loose, b"loose").expect("loose blob");
    series(&fixture, &ctx, 3);
    assert!(!dead.exists(), "scratch and trash: collected");
    assert!(loose.exists(), "unreferenced blobs are another type");
    assert!(
        run_cached(&series(&fixture, &ctx, 1)),
        "the build cache stays"
    );
}

#[test]
fn a_disabled_collection_leaves_everything() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    let root = fixture.root();
    fixture.policy("# off for now\n[gc]\nenabled = false\n");
    let ctx = fixture.context("ctx", &[("Dockerfile", SERIES)]);
    let dead = root.join(format!("trash/snapshot-{}-1-2", dead_owner()));
    fill(&dead.join("fs"), 5, 100);
    let loose = root
        .join("blobs/sha256")
        .join(kiln_layers::Digest::of(b"loose").hex());
    std::fs::write(&loose, b"loose").expect("loose blob");
    series(&fixture, &ctx, 1);
    assert!(dead.exists() && loose.exists());
    // Detached (the default), a build starts no collector either: it would
    // queue in gc-queue.lock first.
    fixture.build_detached(&ctx, &["--build-arg", "N=2"]);
    assert!(!root.join("gc-queue.lock").exists());
    assert!(dead.exists() && loose.exists());
    // The same with the defaults: both go.
    std::fs::remove_file(root.join("gc.toml")).expect("rm gc.toml");
    series(&fixture, &ctx, 1);
    assert!(!dead.exists() && !loose.exists());
}

#[test]
fn a_policy_file_that_does_not_parse_fails_the_build_naming_file_and_line() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    fixture.policy("[gc]\nkeep-storage = \"5GB\"\nkeep-storag = \"1GB\"\n");
    let ctx = fixture.context("ctx", &[("Dockerfile", SERIES)]);
    let out = fixture
        .kiln(&["build", ctx.to_str().expect("utf-8")])
        .output()
        .expect("run kiln");
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let at = format!(
        "{}:3: unknown key \"keep-storag\"",
        fixture.root().join("gc.toml").display()
    );
    assert!(stderr.contains(&at), "{stderr}");
    // Nor does an unknown KILN_GC go unnoticed.
    fixture.policy("[gc]\n");
    let out = fixture
        .kiln(&["build", ctx.to_str().expect("utf-8")])
        .env("KILN_GC", "sometimes")
        .output()
        .expect("run kiln");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KILN_GC=\"sometimes\""));
}

#[test]
fn reserved_space_keeps_what_min_free_space_would_take() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    // Free space no collection can give: everything collectable would go,
    // but the reserve keeps it.
    fixture.policy(
        "[gc]\nkeep-storage = \"0\"\nmin-free-space = \"100%\"\nreserved-space = \"1GB\"\n",
    );
    let ctx = fixture.context("ctx", &[("Dockerfile", SERIES)]);
    series(&fixture, &ctx, 1);
    series(&fixture, &ctx, 2);
    assert!(
        run_cached(&series(&fixture, &ctx, 1)),
        "kept by the reserve"
    );
    // Without the reserve the next build collects first, and says so.
    fixture.policy("[gc]\nkeep-storage = \"0\"\nmin-free-space = \"100%\"\n");
    let out = series(&fixture, &ctx, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("less than min-free-space"), "{stderr}");
    assert!(!run_cached(&out), "{stderr}");
}

#[test]
fn the_next_build_removes_what_dead_runs_and_builds_left() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    let root = fixture.root();
    let ctx = fixture.context("ctx", &[("Dockerfile", SERIES)]);
    let dead = dead_owner();
    let build_dir = root.join(format!("builds/build-{dead}-1-2"));
    fill(&build_dir.join("step/upper"), 20, 1000);
    // Run scratch on a tmpfs: the runtime dir kiln is pointed at.
    let xdg = tempfile::Builder::new()
        .prefix("kiln-xdg-")
        .tempdir_in("/dev/shm")
        .expect("tempdir on /dev/shm");
    let base = xdg.path().join("kiln");
    std::fs::create_dir_all(&base).expect("mkdir");
    std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    let run_dir = base.join(format!("{dead}-5-6"));
    fill(&run_dir.join("etc"), 5, 100);
    let out = fixture
        .kiln(&["build", "--build-arg", "N=1", ctx.to_str().expect("utf-8")])
        .env("XDG_RUNTIME_DIR", xdg.path())
        .output()
        .expect("run kiln build");
    assert!(out.status.success(), "{}", text(&out));
    assert!(!build_dir.exists(), "a dead build's scratch");
    assert!(!run_dir.exists(), "a dead run's scratch");
    let trash: Vec<_> = std::fs::read_dir(root.join("trash"))
        .expect("trash")
        .collect();
    assert!(trash.is_empty(), "{trash:?}");
}

/// A collection that scans the store again while it holds it says why in
/// gc.log: here because its first scan passed over scratch whose name says
/// no owner (an older kiln's), which only a scan under the lock takes.
#[test]
fn gc_log_says_why_a_collection_scanned_the_store_again() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    let root = fixture.root();
    let unowned = root.join("builds/build-of-an-older-kiln");
    fill(&unowned, 3, 100);
    let ctx = fixture.context("ctx", &[("Dockerfile", SERIES)]);
    fixture.build(&ctx, &["--build-arg", "N=1"]);
    assert!(!unowned.exists(), "taken under the lock");
    let log = std::fs::read_to_string(root.join("gc.log")).expect("gc.log");
    assert!(
        log.contains(
            "; scanned the store again under the lock (the first scan passed over \
             scratch that only a scan with the lock may take; in "
        ),
        "{log}"
    );
}

#[test]
fn a_build_that_changes_nothing_starts_no_collection_unless_the_last_is_old() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    let root = fixture.root();
    let ctx = fixture.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN echo hi > /hi\n")],
    );
    let log = root.join("gc.log");
    let stamp = || std::fs::metadata(&log).and_then(|m| m.modified()).ok();
    // The first build adds a layer: it is collected after.
    fixture.build(&ctx, &["-t", "hi:1"]);
    let first = stamp().expect("the first build's collection wrote gc.log");
    // All cached, the tag where it was: nothing to collect, none runs.
    fixture.build(&ctx, &["-t", "hi:1"]);
    assert_eq!(stamp(), Some(first), "a collection ran after a no-op build");
    // A policy written since the last collection: one runs.
    fixture.policy("[gc]\nkeep-storage = \"9GB\"\n");
    fixture.build(&ctx, &["-t", "hi:1"]);
    assert_ne!(stamp(), Some(first), "no collection after a new policy");
    // The same build once the last collection is 11 minutes old: one runs.
    age(&log, 660);
    let aged = stamp();
    fixture.build(&ctx, &["-t", "hi:1"]);
    assert_ne!(stamp(), aged, "no collection after 11 minutes");
    // A new tag changes index.json: collected.
    let before = stamp();
    fixture.build(&ctx, &["-t", "hi:2"]);
    assert_ne!(stamp(), before, "no collection after a new tag");
    // A dead build's scratch, moved to the trash by the next build.
    let before = stamp();
    fill(
        &root.join(format!("builds/build-{}-1-2/x", dead_owner())),
        3,
        100,
    );
    fixture.build(&ctx, &["-t", "hi:2"]);
    assert_ne!(
        stamp(),
        before,
        "no collection after scratch went to the trash"
    );
    assert_eq!(
        std::fs::read_dir(root.join("builds"))
            .expect("builds")
            .count(),
        0
    );
}

#[test]
fn a_multi_platform_build_is_collected_after_too() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    let ctx = fixture.context(
        "ctx",
        &[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "f\n")],
    );
    fixture.build(
        &ctx,
        &["--platform", "linux/amd64,linux/arm64", "-t", "two:1"],
    );
    let log = std::fs::read_to_string(fixture.root().join("gc.log")).expect("gc.log");
    assert!(log.contains("automatic collection"), "{log}");
}
