//! Whiteouts both ways on a real overlay mount: a change made through an
//! overlay becomes a tar layer (overlay whiteouts → `.wh.` entries, opaque
//! dirs → `.wh..wh..opq`), and that layer unpacked as a snapshot and stacked
//! on the same lower shows exactly what the mount showed. Needs root.

mod support;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_layers::diff::{write_layer, write_tar, DiffOptions};
use kiln_layers::snapshot::overlay_lowerdir;
use kiln_layers::unpack::{unpack, UnpackOptions};
use kiln_layers::{chain_ids, Compression, Digest, NoProgress, Store};

const BASE: &str = r#"
dir etc mode=0755
file etc/passwd = root:x:0:0 mode=0644
file etc/hosts = localhost mode=0644
dir opt/app mode=0755
file opt/app/a = a
file opt/app/b = b
dir keep mode=0755
file keep/k = k mode=0644
file rm-me = bye
"#;

/// Unmounts on drop, so a failing assertion does not leave a mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_overlay(lowerdir: &str, upper_work: Option<(&Path, &Path)>, target: &Path) -> Mount {
    let mut opts = format!("lowerdir={lowerdir}");
    if let Some((upper, work)) = upper_work {
        opts.push_str(&format!(
            ",upperdir={},workdir={}",
            upper.display(),
            work.display()
        ));
    }
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(target)
        .status()
        .expect("run mount");
    assert!(status.success(), "mount -t overlay -o {opts} failed");
    Mount(target.to_path_buf())
}

fn dirs(root: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| {
            let p = root.join(n);
            fs::create_dir(&p).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
            p
        })
        .collect()
}

fn tar_entries(tar: &[u8]) -> Vec<(String, tar::EntryType, u64, Vec<String>)> {
    let mut archive = tar::Archive::new(tar);
    let mut out = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let kind = e.header().entry_type();
        let mtime = e.header().mtime().unwrap();
        let mut pax = Vec::new();
        if let Some(exts) = e.pax_extensions().unwrap() {
            for ext in exts {
                pax.push(ext.unwrap().key().unwrap().to_string());
            }
        }
        out.push((path, kind, mtime, pax));
    }
    out
}

#[test]
fn overlay_changes_round_trip_through_a_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let [base, upper, work, merged, snap1, view] = <[PathBuf; 6]>::try_from(dirs(
        tmp.path(),
        &["base", "upper", "work", "merged", "snap1", "view"],
    ))
    .unwrap();
    let base_tar = support::raw_tar(&support::parse_spec(BASE).layers[0]);
    unpack(base_tar.as_slice(), &base, &UnpackOptions::default()).unwrap();

    // Change things through a real overlay mount.
    let expected_view = {
        let _m = mount_overlay(&base.display().to_string(), Some((&upper, &work)), &merged);
        fs::remove_file(merged.join("rm-me")).unwrap();
        fs::remove_dir_all(merged.join("opt/app")).unwrap();
        fs::create_dir(merged.join("opt/app")).unwrap();
        fs::write(merged.join("opt/app/new"), "new").unwrap();
        fs::write(merged.join("etc/hosts"), "changed").unwrap();
        fs::create_dir(merged.join("data")).unwrap();
        fs::write(merged.join("data/x"), "x").unwrap();
        fs::hard_link(merged.join("data/x"), merged.join("data/x2")).unwrap();
        std::os::unix::fs::symlink("etc/passwd", merged.join("link")).unwrap();
        fs::set_permissions(merged.join("keep/k"), fs::Permissions::from_mode(0o600)).unwrap();
        rustix::fs::setxattr(
            merged.join("data/x"),
            "user.kiln",
            b"yes",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        support::listing(&merged)
    };

    let options = DiffOptions {
        source_date_epoch: None,
        overlay_whiteouts: true,
        write_back: false,
        commit_in_background: false,
    };
    let tar = write_tar(&upper, Vec::new(), &options).unwrap();
    let entries = tar_entries(&tar);
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert!(
        !names.contains(&"rm-me"),
        "a deleted file is not in the layer: {names:?}"
    );
    assert!(
        !names.contains(&"opt/app/a"),
        "an opaque dir drops the lower's files: {names:?}"
    );
    assert!(names.contains(&".wh.rm-me"), "no whiteout entry: {names:?}");
    assert!(
        names.contains(&"opt/app/.wh..wh..opq"),
        "no opaque marker: {names:?}"
    );
    assert!(names.contains(&"opt/app/new"), "{names:?}");
    let link = entries.iter().find(|e| e.0 == "data/x2").unwrap();
    assert_eq!(
        link.1,
        tar::EntryType::Link,
        "second name of an inode is a hardlink"
    );
    let x = entries.iter().find(|e| e.0 == "data/x").unwrap();
    assert_eq!(x.3, vec!["SCHILY.xattr.user.kiln".to_string()]);
    assert!(
        entries
            .iter()
            .all(|e| e.3.iter().all(|k| !k.contains("trusted.overlay"))),
        "overlay xattrs leaked into the layer"
    );
    let trimmed: Vec<&str> = names.iter().map(|n| n.trim_end_matches('/')).collect();
    let mut sorted = trimmed.clone();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(trimmed, sorted, "entries are sorted by path");

    // Deterministic: same input, same bytes; and SOURCE_DATE_EPOCH clamps.
    assert_eq!(tar, write_tar(&upper, Vec::new(), &options).unwrap());
    let clamped = write_tar(
        &upper,
        Vec::new(),
        &DiffOptions {
            source_date_epoch: Some(100),
            overlay_whiteouts: true,
            write_back: false,
            commit_in_background: false,
        },
    )
    .unwrap();
    assert!(tar_entries(&clamped).iter().all(|e| e.2 <= 100));
    assert_ne!(Digest::of(&clamped), Digest::of(&tar));

    // Back: unpack the layer as a snapshot over the same base, mount
    // read-only, and the view matches what the writable mount showed.
    unpack(
        tar.as_slice(),
        &snap1,
        &UnpackOptions {
            lowers: vec![base.clone()],
            ..UnpackOptions::default()
        },
    )
    .unwrap();
    {
        let _m = mount_overlay(
            &overlay_lowerdir(&[base.clone(), snap1.clone()]),
            None,
            &view,
        );
        assert_eq!(support::listing(&view), expected_view);
    }

    // The same through the store: compressed blob, verified diff id.
    for compression in [Compression::Gzip, Compression::Zstd] {
        let store = Store::open(tmp.path().join(format!("store-{compression:?}"))).unwrap();
        let base_blob = store
            .put_blob(kiln_layers::media::OCI_LAYER, &base_tar)
            .unwrap();
        let layer = write_layer(&store, &upper, compression, &options, &NoProgress).unwrap();
        assert_eq!(layer.diff_id, Digest::of(&tar));
        let mut head = [0u8; 4];
        store
            .open_blob(&layer.descriptor.digest)
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
        assert_eq!(Compression::sniff(&head), compression);
        let diffs = [Digest::of(&base_tar), layer.diff_id.clone()];
        let chains = chain_ids(&diffs);
        let s0 = store
            .unpack_snapshot(&base_blob, &diffs[0], &chains[0], vec![], &NoProgress)
            .unwrap();
        let s1 = store
            .unpack_snapshot(
                &layer.descriptor,
                &diffs[1],
                &chains[1],
                vec![s0.clone()],
                &NoProgress,
            )
            .unwrap();
        let target = tmp.path().join(format!("view-{compression:?}"));
        fs::create_dir(&target).unwrap();
        let _m = mount_overlay(&overlay_lowerdir(&[s0, s1]), None, &target);
        assert_eq!(support::listing(&target), expected_view, "{compression:?}");
    }
}

#[test]
fn a_layer_whose_content_does_not_match_its_diff_id_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let tar = support::raw_tar(&support::parse_spec("file a = a").layers[0]);
    let blob = store.put_blob(kiln_layers::media::OCI_LAYER, &tar).unwrap();
    let wrong = Digest::of(b"something else");
    let err = store
        .unpack_snapshot(&blob, &wrong, &wrong, vec![], &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(blob.digest.as_str()) && err.contains(wrong.as_str()),
        "{err}"
    );
    assert!(!store.snapshot_path(&wrong).exists());
    assert_eq!(
        fs::read_dir(tmp.path().join("snapshots")).unwrap().count(),
        0,
        "temp dir left behind"
    );
}
