//! `kiln system df` against `du`, and `kiln prune --dry-run` against the
//! prune that follows it.

use std::path::{Path, PathBuf};

use crate::{area, dead_owner, df, du, fill, Fixture};

/// A store with something of every kind: tagged and untagged images, build
/// cache, a cache mount, parked duplicate upper dirs (a --no-cache
/// rebuild), snapshots sharing files (a COPY rerun after one file of its
/// context changed links the others), a resumable download, a dead
/// build's scratch, trash, a loose blob. Collections are off while it is
/// made.
fn every_kind() -> Fixture {
    let fixture = Fixture::new();
    let root = fixture.root();
    fixture.policy("[gc]\nenabled = false\n");
    let ctx = fixture.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nARG N\nRUN --mount=type=cache,id=pkgs,target=/cache \
             head -c 200000 /dev/urandom > /cache/$N && mkdir /many && \
             for i in 1 2 3 4 5 6 7 8 9; do echo $i > /many/$i; done && echo $N > /n\n",
        )],
    );
    fixture.build(&ctx, &["-t", "tagged:1", "--build-arg", "N=1"]);
    fixture.build(&ctx, &["--build-arg", "N=2"]);
    fixture.build(&ctx, &["-t", "tagged:1", "--build-arg", "N=3"]);
    fixture.build(
        &ctx,
        &["--no-cache", "-t", "tagged:1", "--build-arg", "N=3"],
    );
    copies_sharing_files(&fixture);
    let dead = dead_owner();
    std::fs::write(root.join("ingest/abc.partial"), vec![1u8; 9000]).expect("partial");
    std::fs::write(root.join(format!("ingest/def-{dead}-1-2")), vec![1u8; 7000]).expect("ingest");
    fill(
        &root.join(format!("builds/build-{dead}-1-2/step/upper")),
        30,
        5000,
    );
    fill(
        &root.join(format!("trash/snapshot-{dead}-3-4/fs")),
        10,
        3000,
    );
    let loose = root
        .join("blobs/sha256")
        .join(kiln_layers::Digest::of(b"loose").hex());
    std::fs::write(loose, b"loose").expect("loose blob");
    fixture
}

/// Two builds of a COPY from the context, the second after one of its 40
/// files changed: its snapshot links the other 39 to the first's. The
/// first is measured before it is linked from (a prune that removes
/// nothing caches the sizes), so its cached size counts them as its own
/// until it is marked. The second is
/// tagged: pruning the first frees none of the shared files.
fn copies_sharing_files(fixture: &Fixture) {
    let content = "x".repeat(9000);
    let mut files: Vec<(String, &str)> = (0..40)
        .map(|i| (format!("data/f{i}"), content.as_str()))
        .collect();
    files.push(("Dockerfile".into(), "FROM busybox\nCOPY data /data\n"));
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (p.as_str(), *c)).collect();
    let ctx = fixture.context("copied", &files);
    fixture.build(&ctx, &[]);
    fixture.ok(&[
        "prune",
        "--filter",
        "type=cache-mount",
        "--filter",
        "until=10000h",
    ]);
    let sizes = std::fs::read_to_string(fixture.root().join("gc-sizes.json")).expect("sizes");
    assert!(sizes.contains("snapshots/"), "{sizes}");
    std::fs::write(ctx.join("data/f0"), "changed").expect("change a file");
    fixture.build(&ctx, &["-t", "copied:2"]);
    let shared = count_shared(&fixture.root().join("snapshots"));
    assert_eq!(shared, 39, "files linked between the two COPY snapshots");
    // A dead build's upper dir holding a link to one of them (a COPY that
    // failed after linking): the file counts in two areas, once in the
    // total. The snapshot is marked, as such a COPY marks it.
    let root = fixture.root();
    let snapshot = std::fs::read_dir(root.join("snapshots"))
        .expect("snapshots")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("fs/data/f1").is_file())
        .expect("a COPY snapshot");
    let upper = root.join(format!("builds/build-{}-5-6/step/upper", dead_owner()));
    std::fs::create_dir_all(&upper).expect("upper");
    std::fs::hard_link(snapshot.join("fs/data/f1"), upper.join("f1")).expect("link");
    std::fs::File::open(&snapshot)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        .expect("mark");
}

/// Regular files (inodes) under `dir` with more than one link.
fn count_shared(dir: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let mut inodes = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("list").flatten() {
            let meta = entry.metadata().expect("stat");
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && meta.nlink() > 1 {
                inodes.insert(meta.ino());
            }
        }
    }
    inodes.len()
}

/// The layer blobs: every blob that is not a JSON document (a manifest,
/// index or config).
fn layer_blobs(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root.join("blobs/sha256"))
        .expect("blobs")
        .flatten()
        .map(|e| e.path())
        .filter(|p| std::fs::read(p).expect("read blob").first() != Some(&b'{'))
        .collect()
}

#[test]
fn df_shows_what_du_measures_for_each_kind() {
    crate::require_root!();
    let fixture = every_kind();
    let root = fixture.root();
    let usage = df(&fixture);
    let at = |dirs: &[&str]| du(&dirs.iter().map(|d| root.join(d)).collect::<Vec<_>>());
    assert_eq!(
        area(&usage, "layers", "Size"),
        du(&layer_blobs(&root)),
        "{usage}"
    );
    assert_eq!(
        area(&usage, "images", "Size") + area(&usage, "layers", "Size"),
        at(&["blobs"]),
        "{usage}"
    );
    for (name, dirs) in [
        ("snapshots", &["snapshots"][..]),
        ("build cache", &["cache"][..]),
        ("cache mounts", &["cache-mounts"][..]),
        (
            "scratch/trash",
            &["builds", "parked", "trash", "containers"][..],
        ),
        ("ingest partials", &["ingest"][..]),
    ] {
        assert!(at(dirs) > 0, "{name}: nothing to measure");
        assert_eq!(area(&usage, name, "Size"), at(dirs), "{name}: {usage}");
    }
    assert_eq!(
        usage["Total"].as_u64(),
        Some(du(std::slice::from_ref(&root))),
        "{usage}"
    );
    // What is reclaimable there is what `prune --all` then frees.
    let reclaimable = usage["Reclaimable"].as_u64().expect("reclaimable");
    let out = fixture.ok(&["prune", "--all"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!("in the store {reclaimable} bytes)")),
        "df said {reclaimable}:\n{report}"
    );
}

/// Every file under `root` with its size: what a dry run must not change.
fn listing(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("list").flatten() {
            let meta = entry.metadata().expect("stat");
            if meta.is_dir() {
                stack.push(entry.path());
            }
            out.push((entry.path(), meta.len()));
        }
    }
    out.sort();
    out
}

/// Prune's report with the words that differ between a dry run and a
/// prune made the same, and without what concerns the run scratch outside
/// the store (shared with every other kiln on the machine): the total is
/// reduced to the store's part.
fn normalized(report: &[u8]) -> String {
    String::from_utf8_lossy(report)
        .lines()
        .filter(|l| !l.trim_start().starts_with("dead run dirs:"))
        .map(|l| match l.split_once("in the store ") {
            Some((_, store)) if l.contains("reclaim") => format!("store: {store}"),
            _ => l.replace("would delete:", "deleted:"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_dry_run_deletes_nothing_and_predicts_what_prune_frees() {
    crate::require_root!();
    let fixture = every_kind();
    let root = fixture.root();
    for flags in [
        &[][..],
        &["--filter", "type=cache-mount"][..],
        // Below what the default kinds hold (the untagged image of N=2,
        // not among them, counts for nothing).
        &["--keep-storage", "40kB"][..],
        &["--all"][..],
    ] {
        let before = listing(&root);
        let mut args = vec!["prune", "--dry-run"];
        args.extend_from_slice(flags);
        let predicted = fixture.ok(&args);
        assert_eq!(
            listing(&root),
            before,
            "--dry-run {flags:?} changed the store"
        );
        let mut args = vec!["prune"];
        args.extend_from_slice(flags);
        // What `du` counts in the store, but for the notes builds leave
        // for the collection (`gc-notes/`), which a prune takes in and
        // removes: bookkeeping, not what its report speaks of.
        let measured = || du(std::slice::from_ref(&root)) - du(&[root.join("gc-notes")]);
        let du_before = measured();
        let done = fixture.ok(&args);
        let freed = du_before - measured();
        let (predicted, done) = (normalized(&predicted.stdout), normalized(&done.stdout));
        assert_eq!(predicted, done, "prune {flags:?}");
        let store_bytes = predicted
            .lines()
            .find_map(|l| l.strip_prefix("store: "))
            .and_then(|rest| rest.strip_suffix(" bytes)"))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no store bytes in {predicted}"));
        assert!(
            store_bytes > 0,
            "prune {flags:?} had nothing to free: {predicted}"
        );
        assert_eq!(store_bytes, freed, "prune {flags:?}: {predicted}");
    }
}

/// The notes builds appended to `gc-notes/notes`: (path, bytes as `du`
/// counts them).
fn notes(root: &Path) -> Vec<(PathBuf, u64)> {
    let text = std::fs::read_to_string(root.join("gc-notes/notes")).unwrap_or_default();
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let note: serde_json::Value = serde_json::from_str(line).expect("a note");
            let shared: u64 = note["shared"]
                .as_array()
                .map(|runs| {
                    runs.iter()
                        .map(|r| r[1].as_u64().unwrap_or(0) * r[2].as_u64().unwrap_or(0))
                        .sum()
                })
                .unwrap_or(0);
            let bytes = note["bytes"].as_u64().expect("bytes") + shared;
            (root.join(note["key"].as_str().expect("key")), bytes)
        })
        .collect()
}

#[test]
fn the_trees_a_build_writes_are_noted_as_du_measures_them_and_a_collection_takes_the_notes() {
    crate::require_root!();
    let fixture = Fixture::new();
    let root = fixture.root();
    fixture.policy("[gc]\nenabled = false\n");
    let ctx = fixture.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN mkdir /many && for i in $(seq 40); do \
             yes $i | head -c 3000 > /many/$i; done && ln /many/1 /many/one\n",
        )],
    );
    // Files' times clamped (rewrite-timestamp=true), so that the same RUN
    // a second later makes the same layer.
    let build = |args: &[&str]| {
        let mut args = args.to_vec();
        args.extend(["--output", "type=image,rewrite-timestamp=true"]);
        let out = fixture
            .kiln(&crate::build_args(&ctx, &args))
            .env("SOURCE_DATE_EPOCH", "0")
            .output()
            .expect("run kiln build");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    build(&[]);
    // The same RUN again, in another second: a duplicate upper dir, parked.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    build(&["--no-cache"]);
    let noted = notes(&root);
    let kinds = |prefix: &str| {
        noted
            .iter()
            .filter(|(p, _)| p.starts_with(root.join(prefix)))
            .count()
    };
    assert_eq!(kinds("snapshots"), 1, "{noted:?}");
    assert_eq!(kinds("parked"), 1, "{noted:?}");
    for (path, bytes) in &noted {
        assert_eq!(*bytes, du(std::slice::from_ref(path)), "{}", path.display());
    }
    // They are what is counted, not a walk: a note that says a megabyte
    // more for the parked dir (a later line wins) shows in `system df`.
    let scratch = || area(&df(&fixture), "scratch/trash", "Size");
    let before = scratch();
    let notes_file = root.join("gc-notes/notes");
    let text = std::fs::read_to_string(&notes_file).expect("notes");
    let parked_note = text
        .lines()
        .find(|l| l.contains("\"key\":\"parked/"))
        .expect("the parked dir's note");
    let mut note: serde_json::Value = serde_json::from_str(parked_note).expect("note");
    note["bytes"] = (note["bytes"].as_u64().expect("bytes") + 1_000_000).into();
    std::fs::write(&notes_file, format!("{text}\n{note}\n")).expect("plant");
    assert_eq!(scratch(), before + 1_000_000);
    std::fs::write(&notes_file, &text).expect("unplant");
    // A collection that removes nothing takes the notes in.
    fixture.ok(&[
        "prune",
        "--filter",
        "type=cache-mount",
        "--filter",
        "until=10000h",
    ]);
    let left: Vec<_> = std::fs::read_dir(root.join("gc-notes"))
        .expect("gc-notes")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let sizes = std::fs::read_to_string(root.join("gc-sizes.json")).expect("sizes");
    for (path, _) in &noted {
        let key = path.strip_prefix(&root).expect("in the store");
        assert!(sizes.contains(&*key.to_string_lossy()), "{sizes}");
    }
}
