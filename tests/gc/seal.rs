//! Snapshots across a reboot: one whose stamp says an earlier boot made
//! it is used only when a seal of that boot (a collection's `syncfs`)
//! came after it; otherwise it is unpacked again from its layer, and the
//! build's cache still holds.

use std::path::Path;

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
