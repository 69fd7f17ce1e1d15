//! min-free-space on a small filesystem of the test's own (a loop-mounted
//! ext4 image): a build that would run out of space collects first.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{text, Fixture};

/// A 100 MB ext4 filesystem (no reserved blocks) mounted for the test;
/// unmounted when dropped.
struct LoopFs {
    _dir: tempfile::TempDir,
    mount: PathBuf,
}

impl LoopFs {
    fn new() -> LoopFs {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("fs.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).expect("mkdir");
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("run");
            assert!(out.status.success(), "{cmd:?}: {}", text(&out));
        };
        run(Command::new("truncate").args(["-s", "100M"]).arg(&image));
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount));
        LoopFs { _dir: dir, mount }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

/// Free bytes on the filesystem of `path` (`df`'s Avail).
fn free(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .expect("run df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("{}", text(&out)))
}

const BIG: &str =
    "FROM busybox\nARG N\nRUN head -c 20000000 /dev/urandom > /data && echo $N > /n\n";

/// Builds 20 MB (40 MB in the store: the layer blob and its snapshot),
/// fills the filesystem with ballast until 24 MB are free, then builds
/// another 20 MB: returns that build's output.
fn fill_then_build(fixture: &Fixture, fs: &LoopFs) -> std::process::Output {
    let ctx = fixture.context("ctx", &[("Dockerfile", BIG)]);
    fixture.build(&ctx, &["-t", "first:1", "--build-arg", "N=1"]);
    // Its layer is kept by the build cache alone.
    fixture.ok(&["rmi", "first:1"]);
    let have = free(&fs.mount);
    let ballast = have.checked_sub(24 << 20).expect("room for the ballast");
    std::fs::write(fs.mount.join("ballast"), vec![0u8; ballast as usize]).expect("ballast");
    fixture
        .kiln(&["build", "-t", "second:1", "--build-arg", "N=2"])
        .arg(&ctx)
        .output()
        .expect("run kiln build")
}

#[test]
fn min_free_space_makes_the_next_build_collect_before_it_runs_out() {
    crate::require_root!();
    // Without a collection the second build runs out of space...
    let fs = LoopFs::new();
    let fixture = Fixture::new_in(&fs.mount);
    fixture.policy("[gc]\nenabled = false\n");
    let out = fill_then_build(&fixture, &fs);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No space left on device"),
        "{}",
        text(&out)
    );
    drop(fixture);
    drop(fs);

    // ... with min-free-space 30 MB, it collects the first build's cache
    // first, says so, and succeeds.
    let fs = LoopFs::new();
    let fixture = Fixture::new_in(&fs.mount);
    fixture.policy("[gc]\nkeep-storage = \"0\"\nmin-free-space = \"30MB\"\n");
    let out = fill_then_build(&fixture, &fs);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("less than min-free-space 31.5MB: collected"),
        "{stderr}"
    );
    let out = fixture.ok(&["run", "second:1", "cat", "/n"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2\n");
}
