//! Security suite: one module per way out of a container or into the store
//! that kiln closes (see SECURITY.md for the threat model). Root, real
//! namespaces and overlay mounts; each test says what it probes.

#[path = "../common/mod.rs"]
mod common;

mod devices;
mod fds;
mod image_limits;
mod kill_removal;
mod leftovers;
mod limits;
mod secrets;
mod store_modes;
mod url_credentials;

use std::path::PathBuf;
use std::process::Output;

use common::{busybox_rootfs_tar, kiln_ok};

macro_rules! require_root {
    () => {
        kiln_testsupport::require_root!("real namespaces and overlay mounts")
    };
}
pub(crate) use require_root;

/// Like `require_root!`, for tests whose only need for root is kiln's
/// own (they run rootless in scripts/test-rootless).
macro_rules! require_namespaces {
    () => {
        kiln_testsupport::require_namespaces!("real namespaces and overlay mounts")
    };
}
pub(crate) use require_namespaces;

/// A fresh store with `busybox:latest` (kiln-testsupport's busybox root
/// filesystem) imported, and a scratch directory beside it.
pub(crate) struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) fn new() -> Fixture {
        Fixture::new_in(&std::env::temp_dir())
    }

    /// Like [`Fixture::new`], with the store and scratch under `parent`
    /// (e.g. a tmpfs, where creating and deleting many files is fast).
    pub(crate) fn new_in(parent: &std::path::Path) -> Fixture {
        let dir = tempfile::tempdir_in(parent).expect("tempdir");
        let tar = dir.path().join("busybox.tar");
        busybox_rootfs_tar(&tar).expect("busybox tar");
        let fixture = Fixture { dir };
        kiln_ok(
            &fixture.root(),
            &[
                "import",
                "--change",
                "CMD [\"sh\"]",
                tar.to_str().expect("utf-8 path"),
                "busybox:latest",
            ],
        );
        fixture
    }

    pub(crate) fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// A new directory under the fixture's scratch directory.
    pub(crate) fn dir(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).expect("create dir");
        path
    }

    /// A build context holding `files` (`Dockerfile` among them).
    pub(crate) fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.dir(name);
        for (path, content) in files {
            let path = dir.join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create dir");
            }
            std::fs::write(path, content).expect("write context file");
        }
        dir
    }
}

/// stdout and stderr of `out`, for assertion messages.
pub(crate) fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
