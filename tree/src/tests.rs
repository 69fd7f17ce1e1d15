//! The walker against real trees: what `du` counts, trees that change
//! while deleted, directories without their owner's rights.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::remove_tree;

fn du(path: &Path) -> u64 {
    let out = std::process::Command::new("du")
        .args(["-s", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_removed_tree_frees_what_du_counted_and_shared_links_count_once() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("a/b")).unwrap();
    fs::write(tree.join("a/f"), vec![7u8; 10_000]).unwrap();
    fs::write(tree.join("a/b/g"), vec![1u8; 100_000]).unwrap();
    fs::hard_link(tree.join("a/b/g"), tree.join("link")).unwrap();
    std::os::unix::fs::symlink("a/f", tree.join("sym")).unwrap();
    let measured = du(&tree);
    let freed = remove_tree(&tree).unwrap();
    assert_eq!(freed, measured);
    assert!(!tree.exists());

    // A file linked from outside the tree frees nothing.
    fs::create_dir_all(tree.join("d")).unwrap();
    fs::write(tree.join("d/h"), vec![2u8; 50_000]).unwrap();
    fs::hard_link(tree.join("d/h"), tmp.path().join("outside")).unwrap();
    let dirs_only = du(&tree) - du(&tmp.path().join("outside"));
    let freed = remove_tree(&tree).unwrap();
    assert_eq!(freed, dirs_only);
    assert!(tmp.path().join("outside").is_file());

    // Three links in three trees (unchanged files of three COPY runs),
    // two trees deleted: the file stays, nothing of it
    // is counted; the last tree's deletion frees it.
    let trees: Vec<PathBuf> = ["x", "y", "z"].iter().map(|t| tmp.path().join(t)).collect();
    for t in &trees {
        fs::create_dir_all(t).unwrap();
    }
    fs::write(trees[0].join("f"), vec![3u8; 80_000]).unwrap();
    fs::hard_link(trees[0].join("f"), trees[1].join("f")).unwrap();
    fs::hard_link(trees[0].join("f"), trees[2].join("f")).unwrap();
    let file = fs::metadata(trees[0].join("f")).unwrap().blocks() * 512;
    let dir = |t: &Path| fs::metadata(t).unwrap().blocks() * 512;
    let dirs = dir(&trees[0]) + dir(&trees[1]);
    let last = dir(&trees[2]) + file;
    let freed = remove_tree(&trees[0]).unwrap() + remove_tree(&trees[1]).unwrap();
    assert_eq!(freed, dirs);
    assert_eq!(remove_tree(&trees[2]).unwrap(), last);
}

/// A symlink to a directory outside the tree, inside the tree or as the
/// tree itself, is removed, never followed: the outside directory keeps
/// its file and its mode (read-only: a chmod through the link would show).
#[test]
fn symlinks_are_removed_not_followed() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let (tree, outside) = (tmp.path().join("tree"), tmp.path().join("outside"));
    fs::create_dir_all(tree.join("a/b")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("keep"), "keep").unwrap();
    std::os::unix::fs::symlink(&outside, tree.join("a/link")).unwrap();
    for dir in [tree.join("a/b"), tree.join("a"), outside.clone()] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o500)).unwrap();
    }
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    remove_tree(&link).unwrap();
    remove_tree(&tree).unwrap();
    assert!(!tree.exists() && fs::symlink_metadata(&link).is_err());
    assert!(outside.join("keep").is_file());
    assert_eq!(fs::metadata(&outside).unwrap().mode() & 0o777, 0o500);
}

/// A tree that changes while it is deleted (a container still running
/// in it): a thread keeps swapping its directories for symlinks to a
/// directory outside the tree (read-only, holding a file) and back.
/// The deletion may fail on the way, but it never follows a symlink:
/// the outside directory keeps its file and its mode.
#[test]
fn a_tree_swapping_dirs_for_symlinks_is_deleted_without_following_them() {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    for round in 0..60 {
        fs::write(outside.join("keep"), "keep").unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o500)).unwrap();
        let tree = tmp.path().join(format!("tree-{round}"));
        for n in 0..100 {
            let dir = tree.join(format!("d{n}"));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("keep"), "tree").unwrap();
            // Read-only, as an image's can be: the deletion chmods it
            // (and must chmod no symlink's target).
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o500)).unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let (stop, tree, outside) = (stop.clone(), tree.clone(), outside.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (dir, held) = (tree.join(format!("d{n}")), tree.join("held"));
                    if fs::rename(&dir, &held).is_ok() {
                        let _ = std::os::unix::fs::symlink(&outside, &dir);
                        std::thread::yield_now();
                        let _ = fs::remove_file(&dir);
                        let _ = fs::rename(&held, &dir);
                    }
                    n = (n + 1) % 100;
                }
            })
        };
        let _ = remove_tree(&tree);
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        assert!(
            outside.join("keep").is_file(),
            "round {round}: a file outside was deleted"
        );
        let mode = fs::metadata(&outside).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o500, "round {round}: the chmod followed a symlink");
        let _ = remove_tree(&tree);
    }
}

/// Directories without the owner's rights (overlay's `work/work` is
/// 000; an image's can be 0500 or 0300) are chmodded, read and
/// removed. Root is refused nothing whatever the modes, so run as
/// root the test runs itself again as their non-root owner (uid
/// 65534), where it shows that the chmod comes before the read (with
/// the read first: EACCES on the 0300 directory).
#[test]
fn directories_without_the_owners_rights_are_removed() {
    use std::os::unix::fs::PermissionsExt;
    if rustix::process::geteuid().is_root() {
        let name = "directories_without_the_owners_rights_are_removed";
        run_as_nobody(&format!("tests::{name}"));
    }
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    for (dir, mode) in [("none", 0o000), ("rx", 0o500), ("wx", 0o300)] {
        let dir = tree.join(dir);
        fs::create_dir_all(dir.join("inner")).unwrap();
        fs::write(dir.join("inner/f"), "f").unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
    }
    remove_tree(&tree).unwrap();
    assert!(!tree.exists());
}

/// Runs the test `name` of this test binary as uid and gid 65534, and
/// asserts that it ran and passed. The binary is copied into a memfd
/// (mode 0755) and executed through it (`/proc/self/fd/N`): that user
/// may not reach the directory it is in, nor have the right to
/// execute it there.
fn run_as_nobody(name: &str) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let flags = rustix::fs::MemfdFlags::CLOEXEC;
    let exe = fs::File::from(rustix::fs::memfd_create("tests", flags).unwrap());
    let mut binary = fs::File::open(std::env::current_exe().unwrap()).unwrap();
    std::io::copy(&mut binary, &mut &exe).unwrap();
    rustix::fs::fchmod(&exe, rustix::fs::Mode::from_raw_mode(0o755)).unwrap();
    let out = std::process::Command::new(format!("/proc/self/fd/{}", exe.as_raw_fd()))
        .args([name, "--exact", "--test-threads=1"])
        .env("TMPDIR", "/tmp")
        .current_dir("/")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "as uid 65534:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "as uid 65534:\n{stdout}\n{stderr}"
    );
}

/// One descriptor a level: a tree 150 deep goes under an open-file limit
/// of 200 (two a level would need 300). The test runs itself again under
/// `prlimit` (a limit of its own process would reach every test).
#[test]
fn a_deep_tree_goes_within_the_open_file_limit() {
    const HALF: &str = "KILN_TREE_DEEP_HALF";
    if std::env::var_os(HALF).is_none() {
        let name = "tests::a_deep_tree_goes_within_the_open_file_limit";
        let out = std::process::Command::new("prlimit")
            .arg("--nofile=200:200")
            .arg(std::env::current_exe().unwrap())
            .args([name, "--exact", "--test-threads=1"])
            .env(HALF, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "under prlimit:\n{stdout}\n{stderr}");
        assert!(
            stdout.contains("test result: ok. 1 passed"),
            "{stdout}\n{stderr}"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    let deepest: PathBuf = (0..150).fold(tree.clone(), |p, _| p.join("d"));
    fs::create_dir_all(&deepest).unwrap();
    fs::write(deepest.join("f"), "f").unwrap();
    remove_tree(&tree).unwrap();
    assert!(!tree.exists());
}
