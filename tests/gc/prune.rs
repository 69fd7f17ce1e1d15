//! `kiln prune`'s flags, each with what it changes, and the scratch it
//! looks at: the owner names by which it tells a live process's from a
//! dead one's, and none at all from a build that ran nothing.

use std::path::PathBuf;

use crate::{
    age, ahead_in_time, assert_du_collectable, assert_untouched, df, image_files, records,
    run_cached, start_time, text, Fixture,
};

const SERIES: &str =
    "FROM busybox\nARG N\nRUN head -c 200000 /dev/urandom > /data && echo $N > /n\n";

/// A store (no automatic collection) with the series built for 1..=n,
/// each tagged `series:latest` in turn; returns the fixture, the context
/// and each build's new cache record.
fn series(n: u32) -> (Fixture, PathBuf, Vec<PathBuf>) {
    let fixture = Fixture::new();
    fixture.policy("[gc]\nenabled = false\n");
    let ctx = fixture.context("ctx", &[("Dockerfile", SERIES)]);
    let mut new = Vec::new();
    for i in 1..=n {
        let before = records(&fixture.root());
        fixture.build(
            &ctx,
            &["-t", "series:latest", "--build-arg", &format!("N={i}")],
        );
        let added: Vec<PathBuf> = records(&fixture.root())
            .into_iter()
            .filter(|r| !before.contains(r))
            .collect();
        assert_eq!(added.len(), 1, "{added:?}");
        new.extend(added);
    }
    (fixture, ctx, new)
}

fn reported(out: &std::process::Output, label: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{label}:")))
        .unwrap_or_else(|| panic!("no {label} in {stdout}"))
        .trim()
        .to_string()
}

#[test]
fn keep_storage_and_until_trim_the_build_cache_least_recently_used_first() {
    crate::require_namespaces!();
    let (fixture, ctx, recs) = series(4);
    // Build 2 is used again: build 1 and 3 are the least recently used.
    fixture.build(&ctx, &["-t", "series:latest", "--build-arg", "N=2"]);
    let out = fixture.ok(&["prune", "--keep-storage", "500kB"]);
    let collectable = df(&fixture)["Collectable"].as_u64().expect("collectable");
    assert!(collectable <= 500 << 10, "{collectable}: {}", text(&out));
    assert_du_collectable(&fixture.root(), collectable, &text(&out));
    assert!(!recs[0].exists() && !recs[2].exists(), "{}", text(&out));
    assert!(recs[1].exists() && recs[3].exists(), "{}", text(&out));

    // until=: only what was unused for longer; without a size limit, all
    // of it.
    age(&recs[3], 7200);
    let out = fixture.ok(&["prune", "--filter", "until=1h"]);
    assert_eq!(
        reported(&out, "cache records"),
        "cache records: 1, 4.10kB (4096 bytes)"
    );
    assert!(!recs[3].exists() && recs[1].exists());
    assert!(run_cached(&fixture.build(&ctx, &["--build-arg", "N=2"])));
    // One until= (buildx: "filters expect only one value"): with two, one
    // would do nothing.
    let out = fixture
        .kiln(&[
            "prune",
            "--dry-run",
            "--filter",
            "until=24h",
            "--filter",
            "until=1s",
        ])
        .output()
        .expect("run kiln");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("filters expect only one value"),
        "{}",
        text(&out)
    );
}

#[test]
fn types_all_and_dangling_images() {
    crate::require_namespaces!();
    let (fixture, ctx, recs) = series(1);
    let cache_ctx = fixture.context(
        "cache",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,target=/c echo x > /c/x\n",
        )],
    );
    fixture.build(&cache_ctx, &[]);
    let images = |f: &Fixture| String::from_utf8_lossy(&f.ok(&["images"]).stdout).into_owned();
    assert!(images(&fixture).contains("<none>"), "{}", images(&fixture));
    // BuildKit's record type names: exec.cachemount is cache-mount,
    // regular is cache; source.local has no counterpart here.
    let out = fixture.ok(&["prune", "--dry-run", "--filter", "type=exec.cachemount"]);
    assert!(reported(&out, "cache mounts").starts_with("cache mounts: 1,"));
    assert!(reported(&out, "cache records").starts_with("cache records: 0,"));
    let out = fixture.ok(&["prune", "--dry-run", "--filter", "type=regular"]);
    assert!(reported(&out, "cache mounts").starts_with("cache mounts: 0,"));
    assert!(reported(&out, "cache records").starts_with("cache records: 2,"));
    let out = fixture
        .kiln(&["prune", "--filter", "type=source.local"])
        .output()
        .expect("run kiln");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown type \"source.local\""));
    // type=cache-mount: the cache mount only.
    let out = fixture.ok(&["prune", "--filter", "type=cache-mount"]);
    assert!(reported(&out, "cache mounts").starts_with("cache mounts: 1,"));
    assert_eq!(reported(&out, "dangling images"), "dangling images: 0");
    assert!(recs[0].exists());
    // type=dangling: the untagged image, not the build cache.
    let out = fixture.ok(&["prune", "--filter", "type=dangling"]);
    assert_eq!(reported(&out, "dangling images"), "dangling images: 1");
    assert!(!images(&fixture).contains("<none>"));
    assert!(recs[0].exists());
    // --all: the rest of the build cache too; tagged images stay whole.
    fixture.build(&cache_ctx, &[]);
    let series_files = image_files(&fixture.root(), "series:latest");
    let out = fixture.ok(&["prune", "--all"]);
    assert_eq!(reported(&out, "dangling images"), "dangling images: 1");
    assert!(records(&fixture.root()).is_empty());
    assert_untouched(&fixture.root(), "series:latest", &series_files);
    let out = fixture.ok(&["run", "series:latest", "cat", "/n"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
    assert!(!run_cached(&fixture.build(&ctx, &["--build-arg", "N=1"])));
    let err = fixture
        .kiln(&["prune", "--all", "--filter", "type=cache"])
        .output()
        .expect("run kiln");
    assert!(!err.status.success());
}

#[test]
fn min_free_space_frees_down_to_the_reserve() {
    crate::require_namespaces!();
    let (fixture, _ctx, recs) = series(3);
    // Free space nothing can give: everything collectable would go, but
    // the reserve keeps it all.
    let out = fixture.ok(&[
        "prune",
        "--min-free-space",
        "100%",
        "--reserved-space",
        "1GB",
    ]);
    assert!(
        reported(&out, "cache records").starts_with("cache records: 0,"),
        "{}",
        text(&out)
    );
    assert!(recs.iter().all(|r| r.exists()));
    // A reserve alone is the limit (as buildx's): under it, nothing goes.
    let out = fixture.ok(&["prune", "--reserved-space", "1GB"]);
    assert!(
        reported(&out, "cache records").starts_with("cache records: 0,"),
        "{}",
        text(&out)
    );
    // Without the reserve: all of it.
    let out = fixture.ok(&["prune", "--min-free-space", "100%"]);
    assert!(
        reported(&out, "cache records").starts_with("cache records: 3,"),
        "{}",
        text(&out)
    );
    assert!(recs.iter().all(|r| !r.exists()));
}

/// The size flags as `docker buildx prune` reads them: --max-used-space is
/// a ceiling that --min-free-space lowers; --reserved-space (and its older
/// name --keep-storage) a floor that nothing goes below.
#[test]
fn max_used_space_is_a_ceiling_and_keep_storage_a_floor_as_in_buildx() {
    crate::require_namespaces!();
    let (fixture, _ctx, recs) = series(2);
    // Free space nothing can give: min-free-space asks for everything.
    let dry = |limit: &str| {
        fixture.ok(&[
            "prune",
            "--dry-run",
            "--min-free-space",
            "100%",
            limit,
            "1GB",
        ])
    };
    let out = dry("--max-used-space");
    assert!(
        reported(&out, "cache records").starts_with("cache records: 2,"),
        "{}",
        text(&out)
    );
    for floor in ["--keep-storage", "--reserved-space"] {
        let out = dry(floor);
        assert!(
            reported(&out, "cache records").starts_with("cache records: 0,"),
            "{floor}: {}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("the limits keep 1073741824 bytes"),
            "{floor}: {}",
            text(&out)
        );
    }
    assert!(recs.iter().all(|r| r.exists()), "dry runs");
    let out = fixture
        .kiln(&["prune", "--keep-storage", "1GB", "--reserved-space", "2GB"])
        .output()
        .expect("run kiln");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("older name of --reserved-space"),
        "{}",
        text(&out)
    );
    // --max-used-space alone: least recently used first down to it.
    let out = fixture.ok(&["prune", "--max-used-space", "1"]);
    assert!(
        reported(&out, "cache records").starts_with("cache records: 2,"),
        "{}",
        text(&out)
    );
    assert!(recs.iter().all(|r| !r.exists()));
}

#[test]
fn copy_shape_records_go_with_their_snapshot() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    fixture.policy("[gc]\nenabled = false\n");
    let ctx = fixture.context(
        "copy",
        &[("Dockerfile", "FROM busybox\nCOPY f /f\n"), ("f", "f\n")],
    );
    fixture.build(&ctx, &[]);
    let shapes = fixture.root().join("cache/copy-shapes");
    let live: Vec<PathBuf> = std::fs::read_dir(&shapes)
        .expect("copy shape records")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(live.len(), 1, "{live:?}");
    // A record naming a snapshot that is not there: nothing can link from
    // it, a plain prune removes it.
    let record = std::fs::read_to_string(&live[0]).expect("read record");
    let (_, files) = record.split_once('\n').expect("head line");
    let orphan = shapes.join(format!("{}.json", "0".repeat(64)));
    std::fs::write(&orphan, format!("sha256:{}\n{files}", "1".repeat(64))).expect("write");
    let out = fixture.ok(&["prune"]);
    assert!(!orphan.exists(), "{}", text(&out));
    assert!(live[0].exists(), "its snapshot is there: kept");
    assert!(reported(&out, "cache records").starts_with("cache records: 1,"));
    // With the build cache, the record goes too.
    fixture.ok(&["prune", "--all"]);
    assert!(!live[0].exists());
}

#[test]
fn a_build_in_another_time_namespace_names_its_scratch_as_the_host_sees_it() {
    crate::require_root!();
    let fixture = Fixture::new();
    fixture.policy("[gc]\nenabled = false\n");
    let ctx = fixture.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN sleep 2 && echo late > /late\n",
        )],
    );
    // In its time namespace, /proc shows the build's start time 1,000,000
    // s later than a kiln outside sees it. The owner token in its scratch
    // names must be what a kiln outside reads, or that kiln's prune takes
    // the running build for dead and removes its scratch.
    let build = fixture.kiln(&["build", "-t", "late:1", ctx.to_str().expect("utf-8")]);
    let running = ahead_in_time(&build)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the build");
    let builds = fixture.root().join("builds");
    let started = std::time::Instant::now();
    let name = loop {
        let found = std::fs::read_dir(&builds).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|n| n.starts_with("build-"))
        });
        if let Some(name) = found {
            break name;
        }
        assert!(
            started.elapsed().as_secs() < 30,
            "the build made no scratch"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // build-<pid>.<start>-<nanos>-<n>
    let token = name["build-".len()..].split('-').next().expect("token");
    let (pid, start) = token.split_once('.').expect("pid.start");
    let seen = start_time(pid);
    assert_eq!(start, seen, "{name}: /proc/{pid}/stat says {seen}");
    let out = running.wait_with_output().expect("wait for the build");
    assert!(out.status.success(), "{}", text(&out));
    let out = fixture.ok(&["run", "--rm", "late:1", "cat", "/late"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "late\n");
}

#[test]
fn a_build_whose_steps_are_all_cached_makes_nothing_in_builds() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    fixture.policy("[gc]\nenabled = false\n");
    let ctx = fixture.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN echo once > /once\n")],
    );
    fixture.build(&ctx, &["-t", "once:1"]);
    let builds = fixture.root().join("builds");
    let changed = || {
        std::fs::metadata(&builds)
            .and_then(|m| m.modified())
            .expect("builds/")
    };
    let before = changed();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = fixture.build(&ctx, &["-t", "once:1"]);
    assert!(run_cached(&out), "{}", text(&out));
    // No scratch directory was made and removed there (after a collection
    // deleted many files, making one can take milliseconds).
    assert_eq!(changed(), before, "builds/ was written");
    assert_eq!(std::fs::read_dir(&builds).expect("builds/").count(), 0);
}

/// A trash entry that cannot be deleted (here a file made immutable, as
/// a deeper tree than the open-file limit or a foreign mount could be) is
/// said and left for the next prune; every other entry goes, and the
/// prune succeeds: one entry would otherwise keep every later prune and
/// collection from freeing anything.
#[test]
fn an_entry_that_cannot_be_deleted_is_left_and_the_rest_go() {
    crate::require_root!();
    let fixture = Fixture::new();
    fixture.policy("[gc]\nenabled = false\n");
    let root = fixture.root();
    let dead = crate::dead_owner();
    let stuck = root.join(format!("trash/snapshot-{dead}-1-2"));
    let other = root.join(format!("trash/snapshot-{dead}-3-4"));
    crate::fill(&stuck, 2, 100);
    crate::fill(&other, 3, 100);
    let immutable = stuck.join("f0");
    let status = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&immutable)
        .status()
        .expect("run chattr");
    assert!(status.success(), "chattr +i");
    let out = fixture.kiln(&["prune"]).output().expect("run kiln");
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&immutable)
        .status();
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("left in the trash") && stderr.contains(&immutable.display().to_string()),
        "{stderr}"
    );
    assert!(immutable.exists() && !other.exists(), "{}", text(&out));
    // Deletable again: the next prune takes it.
    fixture.ok(&["prune"]);
    assert!(!stuck.exists());
}
