//! The content store: verified ingest, concurrent writers (threads and
//! processes), kill -9 safety, tagging under a lock, prune and rmi.

mod support;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_layers::oci::{ImageConfig, Index, RootFs};
use kiln_layers::store::{CacheRecord, PruneOptions};
use kiln_layers::{media, Descriptor, Digest, Error, Platform, Reference, Store};
use kiln_testsupport::ChildGuard;

fn blob_data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn ingest_entries(store: &Store) -> usize {
    fs::read_dir(store.root().join("ingest")).unwrap().count()
}

/// Every blob's bytes hash to its name.
fn assert_blobs_match_names(store: &Store) {
    for entry in fs::read_dir(store.root().join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let actual = Digest::of(&fs::read(entry.path()).unwrap());
        assert_eq!(actual.hex(), name, "blob {name} does not match its name");
    }
}

#[test]
fn ingest_verifies_size_and_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let data = blob_data(100_000, 1);
    let desc = Descriptor::new(media::OCI_LAYER, Digest::of(&data), data.len() as u64);

    // Wrong bytes of the right size: refused, named, nothing stored.
    let mut w = store.ingest(Some(desc.clone())).unwrap();
    let mut wrong = data.clone();
    wrong[500] ^= 1;
    w.write_all(&wrong).unwrap();
    let err = w.commit().unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(desc.digest.as_str()), "{err}");
    assert!(!store.has_blob(&desc.digest));
    assert!(!store.has_blob(&Digest::of(&wrong)));
    assert_eq!(ingest_entries(&store), 0);

    // Too short, too long.
    let mut w = store.ingest(Some(desc.clone())).unwrap();
    w.write_all(&data[..10]).unwrap();
    let err = w.commit().unwrap_err().to_string();
    assert!(err.contains("expected 100000 bytes, got 10"), "{err}");
    let mut w = store.ingest(Some(desc.clone())).unwrap();
    w.write_all(&data).unwrap();
    let err = w.write_all(b"extra").unwrap_err().to_string();
    assert!(err.contains(desc.digest.as_str()), "{err}");
    drop(w);
    assert_eq!(
        ingest_entries(&store),
        0,
        "a dropped writer removes its file"
    );

    // A resumed write: continue from offset(); reset() starts over.
    let mut w = store.ingest(Some(desc.clone())).unwrap();
    w.write_all(&data[..4096]).unwrap();
    w.reset().unwrap();
    assert_eq!(w.offset(), 0);
    w.write_all(&data[..50_000]).unwrap();
    assert_eq!(w.offset(), 50_000);
    w.write_all(&data[w.offset() as usize..]).unwrap();
    let stored = w.commit().unwrap();
    assert_eq!(stored, desc);
    assert_eq!(fs::read(store.blob_path(&desc.digest)).unwrap(), data);
    assert_eq!(ingest_entries(&store), 0);
}

#[test]
fn threads_ingesting_the_same_blob_all_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let data = blob_data(3 << 20, 7);
    let desc = Descriptor::new(media::OCI_LAYER_GZIP, Digest::of(&data), data.len() as u64);
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| {
                let mut w = store.ingest(Some(desc.clone())).unwrap();
                for chunk in data.chunks(64 * 1024) {
                    w.write_all(chunk).unwrap();
                }
                w.commit().unwrap()
            });
        }
    });
    assert_eq!(fs::read(store.blob_path(&desc.digest)).unwrap(), data);
    assert_eq!(ingest_entries(&store), 0);
}

const CHILD_ROOT: &str = "KILN_LAYERS_TEST_CHILD_ROOT";
const CHILD_ID: &str = "KILN_LAYERS_TEST_CHILD_ID";
const CHILD_HANG: &str = "KILN_LAYERS_TEST_CHILD_HANG";

/// Not a test on its own: the body of the child processes started by the
/// multi-process tests below (they run this binary with `--ignored --exact`).
#[test]
#[ignore = "helper process for the multi-process store tests"]
fn child_process() {
    let root = std::env::var(CHILD_ROOT).expect("run by a parent test");
    let id = std::env::var(CHILD_ID).unwrap();
    let store = Store::open(&root).unwrap();
    let data = blob_data(4 << 20, 42);
    let desc = Descriptor::new(media::OCI_LAYER, Digest::of(&data), data.len() as u64);
    let mut w = store.ingest(Some(desc.clone())).unwrap();
    for chunk in data.chunks(32 * 1024) {
        w.write_all(chunk).unwrap();
        if std::env::var_os(CHILD_HANG).is_some() && w.offset() >= 1 << 20 {
            w.flush().unwrap();
            // Wait to be killed mid-blob.
            std::thread::sleep(Duration::from_secs(600));
        }
    }
    w.commit().unwrap();
    for i in 0..20 {
        let r = Reference::parse(&format!("example/p{id}:t{i}")).unwrap();
        store.tag(&r, &desc).unwrap();
    }
}

/// The child runs under a guard: killed and reaped if the test fails first.
fn spawn_child(root: &Path, id: &str, hang: bool) -> ChildGuard {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--ignored", "--exact", "child_process", "--test-threads=1"])
        .env(CHILD_ROOT, root)
        .env(CHILD_ID, id)
        .stdout(Stdio::null());
    if hang {
        cmd.env(CHILD_HANG, "1");
    }
    ChildGuard::spawn(&mut cmd).unwrap()
}

#[test]
fn two_processes_ingesting_and_tagging_both_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let children: Vec<_> = ["a", "b"]
        .iter()
        .map(|id| spawn_child(tmp.path(), id, false))
        .collect();
    for mut c in children {
        // A hang guard, not a timing assertion.
        let status = c.wait_timeout(Duration::from_secs(120)).unwrap();
        assert!(status.success(), "a child process failed");
    }
    let data = blob_data(4 << 20, 42);
    assert_eq!(fs::read(store.blob_path(&Digest::of(&data))).unwrap(), data);
    assert_eq!(ingest_entries(&store), 0);
    // No tag lost to a concurrent index.json update.
    let names: Vec<String> = store.list().unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names.len(), 40, "{names:?}");
    for id in ["a", "b"] {
        for i in 0..20 {
            let want = format!("docker.io/example/p{id}:t{i}");
            assert!(names.contains(&want), "{want} missing");
        }
    }
}

#[test]
fn kill_9_mid_ingest_leaves_only_garbage_in_ingest() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let mut child = spawn_child(tmp.path(), "k", true);
    let deadline = Instant::now() + Duration::from_secs(120);
    // Wait until the child has written at least 1 MiB of the blob.
    loop {
        let partial = fs::read_dir(tmp.path().join("ingest"))
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.metadata().map(|m| m.len() >= 1 << 20).unwrap_or(false));
        if partial {
            break;
        }
        assert!(Instant::now() < deadline, "child never wrote its blob");
        assert!(child.try_wait().unwrap().is_none(), "child exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill_and_reap(); // SIGKILL
    let data = blob_data(4 << 20, 42);
    let digest = Digest::of(&data);
    assert!(!store.has_blob(&digest), "a partial blob became visible");
    assert_eq!(ingest_entries(&store), 1);
    assert_blobs_match_names(&store);

    // The next writer completes; prune clears the garbage.
    let desc = Descriptor::new(media::OCI_LAYER, digest.clone(), data.len() as u64);
    let mut w = store.ingest(Some(desc.clone())).unwrap();
    w.write_all(&data).unwrap();
    w.commit().unwrap();
    store
        .tag(&Reference::parse("survivor").unwrap(), &desc)
        .unwrap();
    let report = store.prune(PruneOptions::default()).unwrap();
    assert_eq!(report.ingest_files, 1);
    assert_eq!(ingest_entries(&store), 0);
    assert!(store.has_blob(&digest));
    assert_blobs_match_names(&store);
}

fn small_image(store: &Store, seed: u8) -> (Descriptor, Vec<Digest>) {
    let layer = blob_data(1000, seed);
    let layer_desc = store.put_blob(media::OCI_LAYER, &layer).unwrap();
    let config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![Digest::of(&layer)],
        },
        ..ImageConfig::default()
    };
    let manifest = store
        .write_image(&config, std::slice::from_ref(&layer_desc))
        .unwrap();
    let image = store.read_image(&manifest, &Platform::host()).unwrap();
    (
        manifest.clone(),
        vec![manifest.digest, image.id().clone(), layer_desc.digest],
    )
}

#[test]
fn prune_removes_only_what_nothing_references() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let (kept, kept_blobs) = small_image(&store, 1);
    let (_, loose_blobs) = small_image(&store, 2);
    let (cached, cached_blobs) = small_image(&store, 3);
    store
        .tag(&Reference::parse("kept:1").unwrap(), &kept)
        .unwrap();
    store
        .cache_put(
            &Digest::of(b"step"),
            &CacheRecord {
                blobs: cached_blobs.clone(),
                chain_id: None,
                data: serde_json::json!({"note": "test"}),
            },
        )
        .unwrap();
    let _ = cached;
    fs::write(store.root().join("ingest/leftover"), b"junk").unwrap();
    fs::write(store.root().join(".index.json.tmp-1-2-3"), b"{").unwrap();
    fs::create_dir(store.root().join("snapshots/.tmp-leftover")).unwrap();

    let report = store.prune(PruneOptions::default()).unwrap();
    for d in &kept_blobs {
        assert!(store.has_blob(d), "referenced blob {d} was removed");
    }
    for d in &cached_blobs {
        assert!(store.has_blob(d), "cache-referenced blob {d} was removed");
    }
    for d in &loose_blobs {
        assert!(!store.has_blob(d), "unreferenced blob {d} survived");
    }
    let mut removed = report.blobs.clone();
    removed.sort();
    let mut loose = loose_blobs.clone();
    loose.sort();
    assert_eq!(removed, loose);
    assert_eq!(report.ingest_files, 2);
    assert!(!store.root().join(".index.json.tmp-1-2-3").exists());
    assert_eq!(report.snapshots, vec![".tmp-leftover".to_string()]);

    // Dropping the build cache lets its blobs go.
    let report = store.prune(PruneOptions { build_cache: true }).unwrap();
    assert_eq!(report.cache_records, 1);
    for d in &cached_blobs {
        assert!(!store.has_blob(d));
    }
    for d in &kept_blobs {
        assert!(store.has_blob(d));
    }
}

#[test]
fn rmi_removes_what_only_that_image_used() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let (img, blobs) = small_image(&store, 9);
    let a = Reference::parse("a:1").unwrap();
    let b = Reference::parse("localhost:5000/b:2").unwrap();
    store.tag(&a, &img).unwrap();
    store.tag(&b, &img).unwrap();
    let (_, removed) = store.remove_image(&a).unwrap().unwrap();
    assert!(removed.is_empty(), "still tagged as b: nothing removed");
    assert_eq!(store.resolve(&b).unwrap().unwrap().digest, img.digest);
    let (_, removed) = store.remove_image(&b).unwrap().unwrap();
    let mut removed = removed;
    removed.sort();
    let mut want = blobs.clone();
    want.sort();
    assert_eq!(removed, want);
    assert!(store.remove_image(&b).unwrap().is_none());
}

#[test]
fn find_by_reference_id_and_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let (img, blobs) = small_image(&store, 5);
    store
        .tag(&Reference::parse("x/y:z").unwrap(), &img)
        .unwrap();
    let host = Platform::host();
    assert_eq!(store.find("x/y:z", &host).unwrap().len(), 1);
    let id = &blobs[1];
    assert_eq!(
        store.find(&id.hex()[..8], &host).unwrap()[0]
            .descriptor
            .digest,
        img.digest
    );
    assert_eq!(
        store.find(id.as_str(), &host).unwrap()[0].descriptor.digest,
        img.digest
    );
    let err = store.find("nothere:1", &host).unwrap_err().to_string();
    assert!(err.contains("nothere:1"), "{err}");
}

#[test]
fn index_platform_selection_and_canonical_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let (amd, _) = small_image(&store, 11);
    let (again, _) = small_image(&store, 11);
    assert_eq!(amd.digest, again.digest, "same image, same manifest digest");
    let mut arm = small_image(&store, 12).0;
    arm.platform = Some(Platform::parse("linux/arm64").unwrap());
    let index = Index {
        manifests: vec![arm.clone(), amd.clone()],
        ..Index::empty()
    };
    let index_desc = store.put_json(media::OCI_INDEX, &index).unwrap();
    let picked = store
        .read_image(&index_desc, &Platform::parse("linux/amd64").unwrap())
        .unwrap();
    assert_eq!(picked.manifest_descriptor.digest, amd.digest);
    let picked = store
        .read_image(&index_desc, &Platform::parse("linux/arm64/v8").unwrap())
        .unwrap();
    assert_eq!(picked.manifest_descriptor.digest, arm.digest);
    let err = store
        .read_image(&index_desc, &Platform::parse("linux/s390x").unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("linux/s390x") && err.contains("linux/arm64"),
        "{err}"
    );
    // The store's own files are canonical JSON.
    let raw = fs::read_to_string(store.root().join("index.json")).unwrap();
    assert!(raw.starts_with("{\"manifests\":"), "{raw}");
}

#[test]
fn threads_preparing_the_same_snapshots_all_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    // Two real layers: a file, then a change on top.
    let layer_tar = |name: &str, body: &[u8]| {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, body).unwrap();
        b.into_inner().unwrap()
    };
    let tars = [layer_tar("a", b"one"), layer_tar("b", b"two")];
    let layers: Vec<Descriptor> = tars
        .iter()
        .map(|t| store.put_blob(media::OCI_LAYER, t).unwrap())
        .collect();
    let config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: tars.iter().map(|t| Digest::of(t)).collect(),
        },
        ..ImageConfig::default()
    };
    let manifest = store.write_image(&config, &layers).unwrap();
    let image = store.read_image(&manifest, &Platform::host()).unwrap();
    let results: Vec<Vec<std::path::PathBuf>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    store
                        .prepare_snapshots(&image, &kiln_layers::NoProgress)
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        assert_eq!(r, &results[0]);
    }
    assert_eq!(fs::read_to_string(results[0][0].join("a")).unwrap(), "one");
    assert_eq!(fs::read_to_string(results[0][1].join("b")).unwrap(), "two");
    let entries: Vec<String> = fs::read_dir(tmp.path().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries.len(), 2, "no temp dirs left: {entries:?}");
    // Snapshots of a tagged image survive prune; untagged, they go.
    store
        .tag(&Reference::parse("snap:1").unwrap(), &manifest)
        .unwrap();
    assert!(store
        .prune(PruneOptions::default())
        .unwrap()
        .snapshots
        .is_empty());
    store.untag(&Reference::parse("snap:1").unwrap()).unwrap();
    assert_eq!(
        store
            .prune(PruneOptions::default())
            .unwrap()
            .snapshots
            .len(),
        2
    );
}

#[test]
fn a_snapshot_without_its_completion_marker_is_unpacked_again_not_used() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let image = support::many_file_image(&store, 50);
    let chain = image.chain_ids()[0].clone();
    let lower = store
        .prepare_snapshots(&image, &kiln_layers::NoProgress)
        .unwrap()
        .remove(0);
    assert!(store.has_snapshot(&chain));
    let snapshot_dir = lower.parent().unwrap().to_path_buf();
    let marker = snapshot_dir.join("complete");
    assert_eq!(
        fs::read_to_string(&marker).unwrap(),
        format!("{chain}\n"),
        "the marker names the chain id"
    );
    assert_eq!(fs::read_dir(&lower).unwrap().count(), 50);

    // Half deleted, marker first (as a killed older kiln could leave it).
    fs::remove_file(&marker).unwrap();
    for i in 0..25 {
        fs::remove_file(lower.join(format!("f{i}"))).unwrap();
    }
    assert!(!store.has_snapshot(&chain));
    let again = store
        .prepare_snapshots(&image, &kiln_layers::NoProgress)
        .unwrap();
    assert_eq!(again, vec![lower.clone()]);
    assert!(store.has_snapshot(&chain));
    assert_eq!(fs::read_dir(&lower).unwrap().count(), 50);
    assert_eq!(fs::read_to_string(lower.join("f3")).unwrap(), "file 3\n");

    // A marker naming another chain does not count; nor does a snapshot
    // of the older layout (the tree where `fs/` now is, no marker).
    fs::write(&marker, format!("{}\n", Digest::of(b"other"))).unwrap();
    assert!(!store.has_snapshot(&chain));
    fs::remove_dir_all(&snapshot_dir).unwrap();
    fs::create_dir_all(&snapshot_dir).unwrap();
    fs::write(snapshot_dir.join("f0"), "old layout").unwrap();
    assert!(!store.has_snapshot(&chain));
    store
        .prepare_snapshots(&image, &kiln_layers::NoProgress)
        .unwrap();
    assert_eq!(fs::read_dir(&lower).unwrap().count(), 50);
    assert!(!snapshot_dir.join("f0").exists());
    // What was replaced went to the trash (twice), for the collection.
    assert_eq!(fs::read_dir(tmp.path().join("trash")).unwrap().count(), 2);
    store.prune(PruneOptions::default()).unwrap();
    assert_eq!(fs::read_dir(tmp.path().join("trash")).unwrap().count(), 0);
}

#[test]
fn a_snapshot_of_an_earlier_boot_is_used_only_when_a_seal_covers_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let image = support::many_file_image(&store, 20);
    let chain = image.chain_ids()[0].clone();
    let lower = store
        .prepare_snapshots(&image, &kiln_layers::NoProgress)
        .unwrap()
        .remove(0);
    let stamp = lower.parent().unwrap().join("stamp");
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let boot = boot.trim();
    let text = fs::read_to_string(&stamp).unwrap();
    assert!(
        text.starts_with(&format!("boot {boot} ")),
        "made in this boot: {text:?}"
    );
    assert!(store.has_snapshot(&chain));

    // The same snapshot, as an earlier boot made it at 5 s of its uptime.
    let earlier = "0c1d2e3f-aaaa-4bbb-8ccc-0123456789ab";
    fs::write(&stamp, format!("boot {earlier} 5000000000\n")).unwrap();
    let sealed = tmp.path().join("sealed");
    assert!(!store.has_snapshot(&chain), "no seal: not trusted");
    fs::write(&sealed, format!("{earlier} 4999999999\n")).unwrap();
    assert!(!store.has_snapshot(&chain), "sealed before it was made");
    fs::write(&sealed, format!("ffff 9000000000\n{earlier} 5000000000\n")).unwrap();
    assert!(store.has_snapshot(&chain), "sealed after it was made");
    // A stamp that is not one does not count, nor one that is not text
    // (what a crash may leave in it).
    fs::write(&stamp, "booted earlier\n").unwrap();
    assert!(!store.has_snapshot(&chain));
    fs::write(&stamp, b"boot \xff\xfe 1\n").unwrap();
    assert!(!store.has_snapshot(&chain));
    // No stamp (an older kiln's snapshot) counts as it always did.
    fs::remove_file(&stamp).unwrap();
    assert!(store.has_snapshot(&chain));
    // Where the seals cannot be read, trust does not shrink: what a build
    // may be using is not taken for incomplete.
    fs::write(&stamp, format!("boot {earlier} 6000000000\n")).unwrap();
    fs::remove_file(&sealed).unwrap();
    fs::create_dir(&sealed).unwrap();
    assert!(store.has_snapshot(&chain));
    fs::remove_dir(&sealed).unwrap();
    fs::write(&sealed, format!("ffff 9000000000\n{earlier} 5000000000\n")).unwrap();

    // Sealing adds this boot and keeps every earlier boot's seal, however
    // many there are.
    let many: String = (0..20).map(|i| format!("{i:04x} {i}\n")).collect();
    fs::write(&sealed, &many).unwrap();
    let seal = store.seal().unwrap().expect("a boot id");
    assert_eq!(
        fs::read_to_string(&sealed).unwrap(),
        format!("{many}{boot} {}\n", seal.at)
    );
    fs::write(&sealed, format!("ffff 9000000000\n{earlier} 5000000000\n")).unwrap();
    let seal = store.seal().unwrap().expect("a boot id");
    assert_eq!(seal.boot, boot);
    assert_eq!(
        fs::read_to_string(&sealed).unwrap(),
        format!(
            "ffff 9000000000\n{earlier} 5000000000\n{boot} {}\n",
            seal.at
        )
    );
    // A later seal of this boot (a concurrent one) is not moved back.
    fs::write(&sealed, format!("{boot} {}\n", seal.at + 1_000_000_000_000)).unwrap();
    store.seal().unwrap();
    assert_eq!(
        fs::read_to_string(&sealed).unwrap(),
        format!("{boot} {}\n", seal.at + 1_000_000_000_000)
    );
    fs::write(&sealed, format!("ffff 9000000000\n{earlier} 5000000000\n")).unwrap();

    // Not covered (stamped at 6 s, sealed at 5 s): moved to the trash and
    // unpacked again, whole, from the layer, with this boot's stamp.
    fs::remove_file(lower.join("f7")).unwrap();
    fs::write(lower.join("f3"), "").unwrap();
    assert!(!store.has_snapshot(&chain));
    store
        .prepare_snapshots(&image, &kiln_layers::NoProgress)
        .unwrap();
    assert!(store.has_snapshot(&chain));
    assert_eq!(fs::read_dir(&lower).unwrap().count(), 20);
    assert_eq!(fs::read_to_string(lower.join("f3")).unwrap(), "file 3\n");
    assert!(fs::read_to_string(&stamp)
        .unwrap()
        .starts_with(&format!("boot {boot} ")));
    assert_eq!(fs::read_dir(tmp.path().join("trash")).unwrap().count(), 1);
}

#[test]
fn a_collection_seals_as_told_and_the_automatic_one_at_most_so_often() {
    use kiln_layers::gc::{CollectOptions, LockWait, SealFirst};
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let sealed = tmp.path().join("sealed");
    let policy = PruneOptions::default().policy();
    let collect = |seal| {
        let options = CollectOptions {
            dry_run: false,
            wait: LockWait::Block,
            seal,
        };
        store.collect(&policy, &options).unwrap().unwrap()
    };
    let read = || fs::read_to_string(&sealed).unwrap_or_default();
    // Never: nothing; the report says why.
    let report = collect(SealFirst::Never);
    assert_eq!(read(), "");
    assert!(report.unsealed.is_some());
    // Due (no seal yet): sealed.
    let every = Duration::from_millis(500);
    let report = collect(SealFirst::IfOlderThan(every));
    assert_eq!(report.unsealed, None);
    let first = read();
    assert_eq!(first.lines().count(), 1, "{first}");
    // Not due: left as it was, and said why.
    let report = collect(SealFirst::IfOlderThan(every));
    assert!(
        report
            .unsealed
            .as_deref()
            .is_some_and(|w| w.contains(" s ago")),
        "{:?}",
        report.unsealed
    );
    assert_eq!(read(), first);
    assert!(store.last_seal_age().expect("an age") < every);
    // Due again, and always for `prune`: a later time.
    std::thread::sleep(every);
    collect(SealFirst::IfOlderThan(every));
    let second = read();
    assert_ne!(second, first);
    collect(SealFirst::Always);
    assert_ne!(read(), second);
}

#[test]
fn adopting_a_directory_as_a_snapshot_keeps_a_complete_one() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let chain = Digest::of(b"chain");
    let upper = tmp.path().join("builds/upper");
    fs::create_dir_all(&upper).unwrap();
    fs::write(upper.join("x"), "x").unwrap();
    assert!(store.adopt_snapshot(&upper, &chain).unwrap());
    assert!(!upper.exists());
    assert!(store.has_snapshot(&chain));
    assert_eq!(
        fs::read_to_string(store.snapshot_path(&chain).join("x")).unwrap(),
        "x"
    );
    // A second copy of the same snapshot is left where it is.
    fs::create_dir_all(&upper).unwrap();
    fs::write(upper.join("x"), "y").unwrap();
    assert!(!store.adopt_snapshot(&upper, &chain).unwrap());
    assert!(upper.join("x").is_file());
    assert_eq!(
        fs::read_to_string(store.snapshot_path(&chain).join("x")).unwrap(),
        "x"
    );
}

#[test]
fn resumable_ingest_continues_where_the_last_attempt_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let data = blob_data(2 << 20, 3);
    let desc = Descriptor::new(media::OCI_LAYER, Digest::of(&data), data.len() as u64);

    // First attempt: a connection drops after 700 kB; the writer is dropped.
    let mut w = store.ingest_resumable(desc.clone()).unwrap();
    assert_eq!(w.offset(), 0);
    w.write_all(&data[..700_000]).unwrap();
    // Meanwhile a second writer of the same blob cannot take the partial
    // file and starts its own.
    let other = store.ingest_resumable(desc.clone()).unwrap();
    assert_eq!(other.offset(), 0);
    drop(other);
    drop(w);
    assert!(!store.has_blob(&desc.digest));

    // Second attempt resumes at 700 kB and completes.
    let mut w = store.ingest_resumable(desc.clone()).unwrap();
    assert_eq!(w.offset(), 700_000);
    w.write_all(&data[700_000..]).unwrap();
    assert_eq!(w.commit().unwrap(), desc);
    assert_eq!(fs::read(store.blob_path(&desc.digest)).unwrap(), data);
    assert_eq!(ingest_entries(&store), 0);

    // A partial file with wrong bytes is caught at commit and removed.
    let data2 = blob_data(100_000, 4);
    let desc2 = Descriptor::new(media::OCI_LAYER, Digest::of(&data2), data2.len() as u64);
    let mut w = store.ingest_resumable(desc2.clone()).unwrap();
    w.write_all(&blob_data(50_000, 99)).unwrap();
    drop(w);
    let mut w = store.ingest_resumable(desc2.clone()).unwrap();
    assert_eq!(w.offset(), 50_000);
    w.write_all(&data2[50_000..]).unwrap();
    let err = w.commit().unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert_eq!(ingest_entries(&store), 0);
    let mut w = store.ingest_resumable(desc2.clone()).unwrap();
    assert_eq!(w.offset(), 0);
    w.write_all(&data2).unwrap();
    w.commit().unwrap();
}
