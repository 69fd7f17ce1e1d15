//! The forms an OCI whiteout takes in a snapshot or an upper dir, and
//! opaque directories.
//!
//! A whiteout is overlay's: a 0/0 character device, which needs no
//! CAP_MKNOD (Linux 5.8+). Where the filesystem refuses to make one (an
//! overlayfs, which keeps whiteouts for itself: a store on a container's
//! own root filesystem), it is overlay's other form, an empty regular
//! file with the xattr `user.overlay.whiteout` (Linux 6.7's "xattr
//! whiteouts", in the namespace a `userxattr` overlay reads). A store on
//! overlayfs never mounts overlay (the copying snapshotter), so only kiln
//! reads them: [`is_whiteout`] is the one test, used by the tar writer,
//! the extractor's look into lower layers and the builder's merged view.
//!
//! An opaque directory has `trusted.overlay.opaque=y`, or
//! `user.overlay.opaque=y` where the trusted namespace is refused
//! ([`set_opaque`]).

use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, XattrFlags};
use rustix::io::Errno;

/// The xattr that makes an empty file a whiteout (set to `y`).
pub const WHITEOUT_XATTR: &str = "user.overlay.whiteout";
/// overlay's opaque marker, and what a rootless overlay reads instead.
const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

/// Whether `path` (whose `lstat` is `meta`) is a whiteout in either form.
pub fn is_whiteout(path: &Path, meta: &std::fs::Metadata) -> bool {
    if meta.file_type().is_char_device() {
        return meta.rdev() == 0;
    }
    meta.is_file() && meta.len() == 0 && has_whiteout_xattr(path)
}

/// Whether `path` carries [`WHITEOUT_XATTR`] (or its trusted twin).
pub fn has_whiteout_xattr(path: &Path) -> bool {
    [WHITEOUT_XATTR, "trusted.overlay.whiteout"]
        .iter()
        .any(|name| rustix::fs::lgetxattr(path, *name, &mut [0u8; 4][..]).is_ok())
}

/// Makes a whiteout named `name` in the directory `dir` (nothing may be
/// there): the character device, else the xattr form.
pub fn make_whiteout_at(dir: impl AsFd, name: &std::ffi::OsStr) -> Result<(), Errno> {
    let dir = dir.as_fd();
    match rustix::fs::mknodat(
        dir,
        name,
        FileType::CharacterDevice,
        Mode::empty(),
        rustix::fs::makedev(0, 0),
    ) {
        Err(Errno::PERM | Errno::OPNOTSUPP | Errno::INVAL) => {
            let file = rustix::fs::openat(
                dir,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            rustix::fs::fsetxattr(&file, WHITEOUT_XATTR, b"y", XattrFlags::empty())
        }
        other => other,
    }
}

/// Marks the directory `dir` (symlinks followed: a `/proc/self/fd/N` path
/// names an open directory) opaque: `trusted.overlay.opaque=y`, or, where
/// that is refused (no CAP_SYS_ADMIN over the filesystem: a user
/// namespace, a container without it; an overlayfs, which keeps
/// `trusted.overlay.*` for itself), `user.overlay.opaque=y`, what a
/// rootless overlay reads. Every reader of snapshots and upper dirs
/// (`diff`, the builder's merged view) reads both.
pub fn set_opaque(dir: &Path) -> Result<(), Errno> {
    match rustix::fs::setxattr(dir, OPAQUE_XATTRS[0], b"y", XattrFlags::empty()) {
        Err(Errno::PERM | Errno::OPNOTSUPP | Errno::ACCESS) => {
            rustix::fs::setxattr(dir, OPAQUE_XATTRS[1], b"y", XattrFlags::empty())
        }
        other => other,
    }
}

/// Whether the directory `dir` is opaque (either xattr is `y`).
pub fn is_opaque(dir: &Path) -> bool {
    OPAQUE_XATTRS.iter().any(|name| {
        let mut value = [0u8; 4];
        matches!(rustix::fs::lgetxattr(dir, *name, &mut value[..]), Ok(1)) && value[0] == b'y'
    })
}
