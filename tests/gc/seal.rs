//! Snapshots across a reboot: one whose stamp says an earlier boot made
//! it is used only when a seal of that boot (a collection's `syncfs`)
//! came after it; otherwise it is unpacked again from its layer, and the
//! build's cache still holds. And what a build makes durable, in which
//! order (its fsyncs and renames, traced with `strace`).

use std::path::Path;
use std::process::Command;

use crate::{ahead_in_time, run_cached, stamps, text, wrapped, Fixture};

/// A boot id that is not this one.
const EARLIER: &str = "0c1d2e3f-aaaa-4bbb-8ccc-0123456789ab";

/// Rewrites every snapshot's stamp as boot `EARLIER` would have written
/// it at `at` ns of its uptime; returns how many there are.
fn made_in_earlier_boot(root: &Path, at: u64) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(root.join("snapshots")).expect("snapshots") {
        let stamp = entry.expect("entry").path().join("stamp");
        assert!(stamp.is_file(), "{} is missing", stamp.display());
        std::fs::write(&stamp, format!("boot {EARLIER} {at}\n")).expect("stamp");
        count += 1;
    }
    count
}

#[test]
fn after_a_reboot_only_sealed_snapshots_are_used_and_the_cache_holds_either_way() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    let root = fixture.root();
    // No automatic collection: nothing seals behind the test's back.
    fixture.policy("[gc]\nenabled = false\n");
    let ctx = fixture.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN echo made > /made\n")],
    );
    let first = fixture.build(&ctx, &["-t", "seal:1"]);
    let unsealed = "made in an earlier boot that has no seal";

    // Not sealed: every snapshot the build needs is unpacked again, with
    // a warning that says why, and the RUN still comes from the cache.
    assert!(made_in_earlier_boot(&root, 5_000_000_000) >= 2);
    let again = fixture.build(&ctx, &["-t", "seal:1"]);
    assert!(run_cached(&again), "{}", text(&again));
    assert!(text(&again).contains(unsealed), "{}", text(&again));
    assert_eq!(again.stdout, first.stdout, "the same image");
    let out = fixture.ok(&["run", "--rm", "seal:1", "cat", "/made"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "made\n");

    // Sealed after they were made: used as they are.
    made_in_earlier_boot(&root, 5_000_000_000);
    std::fs::write(root.join("sealed"), format!("{EARLIER} 5000000001\n")).expect("sealed");
    let trusted = fixture.build(&ctx, &["-t", "seal:1"]);
    assert!(run_cached(&trusted), "{}", text(&trusted));
    assert!(
        !text(&trusted).contains("incomplete snapshot"),
        "{}",
        text(&trusted)
    );
    assert_eq!(trusted.stdout, first.stdout);

    // `kiln prune` seals this boot first (with the collection off too),
    // keeping the earlier boot's seal.
    fixture.ok(&["prune"]);
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
    let sealed = std::fs::read_to_string(root.join("sealed")).expect("sealed");
    let lines: Vec<&str> = sealed.lines().collect();
    assert_eq!(lines.len(), 2, "{sealed}");
    assert_eq!(lines[0], format!("{EARLIER} 5000000001"));
    assert!(
        lines[1].starts_with(&format!("{} ", boot.trim())),
        "{sealed}"
    );
}

#[test]
fn a_kiln_in_a_time_namespace_stamps_its_snapshots_with_the_hosts_clock() {
    crate::require_root!();
    let fixture = Fixture::new();
    fixture.policy("[gc]\nenabled = false\n");
    let ctx = fixture.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN echo ahead > /ahead\n")],
    );
    // Its boottime runs 1,000,000 s ahead of the host's: were that its
    // stamp, a seal taken on the host would not cover its snapshots after a
    // reboot (and one behind would cover what came after the seal).
    let build = fixture.kiln(&["build", "-t", "ahead:1", ctx.to_str().expect("utf-8")]);
    let out = ahead_in_time(&build).output().expect("run unshare");
    assert!(out.status.success(), "{}", text(&out));
    let uptime = std::fs::read_to_string("/proc/uptime").expect("uptime");
    let now: f64 = uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .expect("uptime seconds");
    let stamped = stamps(&fixture.root());
    for (path, _, at) in &stamped {
        assert!(
            (*at as f64) / 1e9 <= now + 1.0,
            "{}: stamped at {at} ns, the host's uptime is {now} s",
            path.display()
        );
    }
    assert!(stamped.len() >= 2, "{} snapshots", stamped.len());
}

#[test]
fn where_the_boot_cannot_be_told_snapshots_are_made_durable_unstamped() {
    crate::require_root!();
    let fixture = Fixture::new();
    let ctx = fixture.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN echo blind > /blind\n")],
    );
    // kiln in a mount namespace where the boot id reads empty; its build
    // collects in the foreground there.
    let build = fixture.kiln(&["build", "-t", "blind:1", ctx.to_str().expect("utf-8")]);
    let blind = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        "mount --bind /dev/null /proc/sys/kernel/random/boot_id && exec \"$@\"",
        "sh",
    ];
    let out = wrapped(&blind, &build).output().expect("run unshare");
    assert!(out.status.success(), "{}", text(&out));
    let root = fixture.root();
    let log = std::fs::read_to_string(root.join("gc.log")).expect("gc.log");
    assert!(
        log.contains("(not sealed: the boot id cannot be read)"),
        "{log}"
    );
    // Its snapshots (busybox's layer, unpacked by this build, and its
    // RUN's) have no stamp: they count in any boot, as an older kiln's do.
    let mut count = 0;
    for entry in std::fs::read_dir(root.join("snapshots")).expect("snapshots") {
        let dir = entry.expect("entry").path();
        assert!(dir.join("complete").is_file(), "{}", dir.display());
        assert!(!dir.join("stamp").exists(), "{}", dir.display());
        count += 1;
    }
    assert!(count >= 2, "{count} snapshots");
    let again = fixture.build(&ctx, &["-t", "blind:1"]);
    assert!(run_cached(&again), "{}", text(&again));
    assert!(
        !text(&again).contains("incomplete snapshot"),
        "{}",
        text(&again)
    );
}

/// One syscall of an `strace -f -y` log, the arguments as strace printed
/// them (file descriptors followed by their paths: `9</store/blobs/sha256>`).
#[derive(Debug)]
struct Call {
    name: String,
    args: String,
}

/// The calls of an `strace -f -y` log in the order they returned: a call
/// another thread interrupted ("<unfinished ...>") counts where it
/// resumed.
fn calls(log: &str) -> Vec<Call> {
    let mut pending: std::collections::HashMap<String, String> = Default::default();
    let mut out = Vec::new();
    for line in log.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let full = if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            pending.insert(pid.to_string(), head.to_string());
            continue;
        } else if let Some(tail) = rest.strip_prefix("<... ") {
            let Some((_, tail)) = tail.split_once(" resumed>") else {
                continue;
            };
            format!("{}{tail}", pending.remove(pid).unwrap_or_default())
        } else {
            rest.to_string()
        };
        // Only calls that succeeded. strace pads the return value out to a
        // column, which a resumed call's short line reaches with spaces.
        let Some((call, ret)) = full.rsplit_once('=') else {
            continue;
        };
        if ret.trim() != "0" {
            continue;
        }
        let Some((name, args)) = call.trim_end().split_once('(') else {
            continue;
        };
        out.push(Call {
            name: name.to_string(),
            args: args.to_string(),
        });
    }
    out
}

/// The quoted paths of a rename's arguments: (from, to).
fn renamed(call: &Call) -> Option<(String, String)> {
    let quoted: Vec<&str> = call.args.split('"').skip(1).step_by(2).collect();
    match (call.name.as_str(), quoted.as_slice()) {
        ("rename" | "renameat" | "renameat2", [from, to, ..]) => {
            Some((from.to_string(), to.to_string()))
        }
        _ => None,
    }
}

/// The path an fsync's descriptor names (`9</store/blobs/sha256>`).
fn fsynced(call: &Call) -> Option<String> {
    if call.name != "fsync" {
        return None;
    }
    let (_, path) = call.args.split_once('<')?;
    Some(path.split_once(">)")?.0.to_string())
}

#[test]
fn the_strace_log_reader_joins_interrupted_calls_and_keeps_only_successes() {
    let log = "\
7 fsync(12</s/ingest/a> <unfinished ...>
8 rename(\"/s/x\", \"/s/y\")       = -1 ENOENT (No such file or directory)
7 <... fsync resumed>)                    = 0
7 rename(\"/s/ingest/a\", \"/s/blobs/sha256/a\") = 0
8 +++ exited with 0 +++
";
    let calls = calls(log);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(fsynced(&calls[0]).as_deref(), Some("/s/ingest/a"));
    assert_eq!(
        renamed(&calls[1]),
        Some(("/s/ingest/a".to_string(), "/s/blobs/sha256/a".to_string()))
    );
}

#[test]
fn a_build_fsyncs_each_blob_and_record_and_the_blob_names_once_before_the_tag() {
    crate::require_root!();
    let fixture = Fixture::new();
    fixture.policy("[gc]\nenabled = false\n");
    let ctx = fixture.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM busybox\nRUN echo one > /one\nRUN echo two > /two\nCOPY f /f\n",
            ),
            ("f", "f\n"),
        ],
    );
    let log = fixture.dir("trace").join("strace.log");
    // strace names a descriptor's file by its resolved path, and a rename's
    // as given: the store is given resolved.
    let root = std::fs::canonicalize(fixture.root()).expect("canonical root");
    let mut build = crate::common::kiln_command();
    build
        .arg("--root")
        .arg(&root)
        .args(["build", "-t", "durable:1", ctx.to_str().expect("utf-8")])
        .env("KILN_PROGRESS", "plain");
    let calls = traced(&build, &log);
    let (blob_renames, index_writes) = layout_order(&calls, &root);
    let blobs = root.join("blobs/sha256").display().to_string();
    let cache = root.join("cache").display().to_string();
    let mut records = 0;
    for (i, call) in calls.iter().enumerate() {
        if let Some((from, to)) = renamed(call) {
            if to.starts_with(&format!("{cache}/")) && to.ends_with(".json") {
                // A record is whole whenever it has its name.
                assert!(
                    synced_before(&calls[..i], &from),
                    "{call:?}: {from} not fsynced"
                );
                records += 1;
            }
        }
    }
    // Three layers, a config and a manifest; a record per layer step.
    assert!(blob_renames >= 5, "{blob_renames} blobs renamed");
    assert!(records >= 3, "{records} cache records renamed");
    assert_eq!(index_writes, 1, "index.json written {index_writes} times");
    // Blob names are fsynced once for the tag, not once per blob, and the
    // records' directory not at all (a record lost in a crash is a miss).
    let dir_syncs = |dir: &str| {
        calls
            .iter()
            .filter(|c| fsynced(c).as_deref() == Some(dir))
            .count()
    };
    assert_eq!(dir_syncs(&blobs), index_writes, "fsyncs of {blobs}");
    assert_eq!(dir_syncs(&cache), 0, "fsyncs of {cache}");
}

/// `command` run under `strace -f -y` (fsyncs and renames), which must
/// succeed; its calls.
fn traced(command: &Command, log: &Path) -> Vec<Call> {
    if Command::new("strace").arg("-V").output().is_err() {
        panic!("strace is missing: scripts/setup installs it");
    }
    let trace = [
        "strace",
        "-f",
        "-y",
        "-e",
        "trace=fsync,rename,renameat,renameat2",
        "-o",
        log.to_str().expect("utf-8"),
        "--",
    ];
    let out = wrapped(&trace, command).output().expect("run strace");
    assert!(out.status.success(), "{}", text(&out));
    calls(&std::fs::read_to_string(log).expect("strace log"))
}

/// Checks, for the OCI layout at `dir`, that every blob renamed into it was
/// fsynced first and that `index.json` was renamed into place only after
/// an fsync of `blobs/sha256` that followed the last blob's rename; returns
/// how many blobs and index writes there were.
fn layout_order(calls: &[Call], dir: &Path) -> (usize, usize) {
    let blobs = dir.join("blobs/sha256").display().to_string();
    let index = dir.join("index.json").display().to_string();
    let (mut blob_renames, mut index_writes, mut last_blob) = (0, 0, None);
    for (i, call) in calls.iter().enumerate() {
        let Some((from, to)) = renamed(call) else {
            continue;
        };
        if to.starts_with(&format!("{blobs}/")) {
            // Its bytes are on disk before they have a blob's name.
            assert!(
                synced_before(&calls[..i], &from),
                "{call:?}: {from} not fsynced"
            );
            blob_renames += 1;
            last_blob = Some(i);
        } else if to == index {
            // The index names blobs whose names are on disk first.
            let since = last_blob.map_or(0, |b| b + 1);
            assert!(
                synced_before(&calls[since..i], &blobs),
                "no fsync of {blobs} between the last blob's rename and {call:?}"
            );
            index_writes += 1;
        }
    }
    (blob_renames, index_writes)
}

/// Whether one of `calls` fsynced `path`.
fn synced_before(calls: &[Call], path: &str) -> bool {
    calls.iter().any(|c| fsynced(c).as_deref() == Some(path))
}

#[test]
fn a_local_cache_export_and_a_saved_layout_name_only_blobs_whose_names_are_on_disk() {
    crate::require_root!();
    let fixture = Fixture::new();
    fixture.policy("[gc]\nenabled = false\n");
    let ctx = fixture.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN echo out > /out\n")],
    );
    // Resolved: strace names a descriptor's file by its resolved path.
    let out = std::fs::canonicalize(fixture.dir("out")).expect("canonical");
    let (cache, saved) = (out.join("cache"), out.join("saved"));
    let mut build = fixture.kiln(&["build", "-t", "exported:1"]);
    build
        .arg("--cache-to")
        .arg(format!("type=local,dest={}", cache.display()))
        .arg(&ctx);
    let calls = traced(&build, &out.join("build.log"));
    let (blobs, indexes) = layout_order(&calls, &cache);
    assert!(blobs >= 2, "{blobs} blobs renamed into the cache");
    assert_eq!(indexes, 1, "the cache's index.json written {indexes} times");

    let mut save = fixture.kiln(&["save", "--format", "oci", "-o"]);
    save.arg(&saved).arg("exported:1");
    let calls = traced(&save, &out.join("save.log"));
    let (blobs, indexes) = layout_order(&calls, &saved);
    assert!(blobs >= 3, "{blobs} blobs renamed into the saved layout");
    assert_eq!(indexes, 1, "the saved index.json written {indexes} times");
}
