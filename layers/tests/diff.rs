//! The tar writer: the same tree gives the same bytes wherever and whenever
//! it was made (with `SOURCE_DATE_EPOCH`), and what it writes unpacks back
//! to the same tree — long names, long link targets, hardlinks, devices,
//! fifos, xattrs, modes, owners.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use kiln_layers::diff::{write_tar, DiffOptions};
use kiln_layers::unpack::{unpack, UnpackOptions, Whiteouts};
use kiln_layers::Digest;

const LONG_DIR: &str = "a-directory-name-long-enough/that-with-its-children/the-path-passes/the-ustar-limit-of-100-bytes";

/// Builds the same tree; `reverse` creates things in the opposite order so
/// directory listing order and inode numbers differ.
fn build_tree(root: &Path, reverse: bool) {
    let mut steps: Vec<Box<dyn Fn()>> = vec![
        Box::new(|| {
            fs::create_dir_all(root.join(LONG_DIR)).unwrap();
            fs::write(
                root.join(LONG_DIR).join("file-with-a-long-name.txt"),
                "long",
            )
            .unwrap();
        }),
        Box::new(|| {
            fs::create_dir_all(root.join("bin")).unwrap();
            fs::write(root.join("bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
            fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
            fs::hard_link(root.join("bin/tool"), root.join("bin/tool-again")).unwrap();
        }),
        Box::new(|| {
            fs::create_dir_all(root.join("links")).unwrap();
            let target = format!("/{LONG_DIR}/file-with-a-long-name.txt");
            std::os::unix::fs::symlink(target, root.join("links/far")).unwrap();
            std::os::unix::fs::symlink("../bin/tool", root.join("links/near")).unwrap();
        }),
        Box::new(|| {
            fs::create_dir_all(root.join("dev")).unwrap();
            rustix::fs::mknodat(
                rustix::fs::CWD,
                root.join("dev/null"),
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::from_raw_mode(0o666),
                rustix::fs::makedev(1, 3),
            )
            .unwrap();
            rustix::fs::mknodat(
                rustix::fs::CWD,
                root.join("dev/fifo"),
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o600),
                0,
            )
            .unwrap();
        }),
        Box::new(|| {
            fs::create_dir_all(root.join("home/user")).unwrap();
            fs::write(root.join("home/user/notes"), "notes").unwrap();
            rustix::fs::chown(
                root.join("home/user/notes"),
                Some(rustix::fs::Uid::from_raw(1000)),
                Some(rustix::fs::Gid::from_raw(100)),
            )
            .unwrap();
            // An id too large for the ustar field (user namespaces).
            fs::write(root.join("home/user/big-ids"), "ids").unwrap();
            rustix::fs::chown(
                root.join("home/user/big-ids"),
                Some(rustix::fs::Uid::from_raw(100_000_000)),
                Some(rustix::fs::Gid::from_raw(100_000_001)),
            )
            .unwrap();
            rustix::fs::setxattr(
                root.join("home/user/notes"),
                "user.origin",
                b"test",
                rustix::fs::XattrFlags::empty(),
            )
            .unwrap();
        }),
    ];
    if reverse {
        steps.reverse();
    }
    for step in steps {
        step();
    }
    // Every mtime in the future: SOURCE_DATE_EPOCH must clamp them all.
    let future = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 4_000_000_000,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 4_000_000_000,
            tv_nsec: 0,
        },
    };
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &p,
            &future,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
}

#[test]
fn same_tree_same_digest_and_it_unpacks_back() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    build_tree(a.path(), false);
    build_tree(b.path(), true);
    assert_ne!(
        fs::metadata(a.path().join("bin/tool")).unwrap().ino(),
        fs::metadata(b.path().join("bin/tool")).unwrap().ino()
    );
    let options = DiffOptions {
        source_date_epoch: Some(1_000),
        overlay_whiteouts: false,
        write_back: false,
        commit_in_background: false,
    };
    let tar_a = write_tar(a.path(), Vec::new(), &options).unwrap();
    let tar_b = write_tar(b.path(), Vec::new(), &options).unwrap();
    assert_eq!(
        Digest::of(&tar_a),
        Digest::of(&tar_b),
        "same tree, different digest"
    );

    // Header normalization: numeric owners only, no names, clamped times.
    let mut archive = tar::Archive::new(tar_a.as_slice());
    let mut saw_long = false;
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let h = entry.header();
        assert!(h.username_bytes().is_none_or(|u| u.is_empty()));
        assert!(h.groupname_bytes().is_none_or(|g| g.is_empty()));
        assert!(h.mtime().unwrap() <= 1_000);
        if entry.path_bytes().len() > 100 {
            saw_long = true;
        }
    }
    assert!(saw_long, "the long name went through PAX");

    // Round trip: unpack and compare the trees (times clamped to 1000).
    let out = tempfile::tempdir().unwrap();
    let options = UnpackOptions {
        whiteouts: Whiteouts::AsFiles,
        ..UnpackOptions::default()
    };
    unpack(tar_a.as_slice(), out.path(), &options).unwrap();
    let expected = support::listing(a.path()).replace("mtime=now", "mtime=1000");
    let actual = support::listing(out.path());
    // The unpacked root keeps its own metadata (the tar has no root entry).
    let skip_root = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(skip_root(&actual), skip_root(&expected));
}

/// A rootless overlay (mounted with `userxattr`) marks opaque directories with
/// `user.overlay.opaque`; the diff treats it like `trusted.overlay.opaque` and
/// keeps neither xattr in the layer.
#[test]
fn user_overlay_opaque_marks_an_opaque_dir() {
    let upper = tempfile::tempdir().unwrap();
    fs::create_dir(upper.path().join("data")).unwrap();
    fs::write(upper.path().join("data/new"), "new").unwrap();
    rustix::fs::setxattr(
        upper.path().join("data"),
        "user.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let options = DiffOptions {
        source_date_epoch: None,
        overlay_whiteouts: true,
        write_back: false,
        commit_in_background: false,
    };
    let tar = write_tar(upper.path(), Vec::new(), &options).unwrap();
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut names = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        names.push(String::from_utf8_lossy(&entry.path_bytes()).into_owned());
        if let Some(pax) = entry.pax_extensions().unwrap() {
            for ext in pax {
                let key = ext.unwrap().key().unwrap().to_string();
                assert!(!key.contains("overlay"), "overlay xattr kept: {key}");
            }
        }
    }
    assert_eq!(names, ["data/", "data/.wh..wh..opq", "data/new"]);
}
