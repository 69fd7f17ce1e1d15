//! Deleting a directory tree by descriptor: the one tree walker that
//! deletes, shared by the store (its trash, dead scratch) and the runtime
//! (a run's state and work dirs).
//!
//! [`remove_tree`] opens each directory with `O_NOFOLLOW` from its
//! parent's descriptor and empties it through that descriptor, so a tree
//! that a container may still change (a RUN that outlived its kiln, a
//! run's upper dir) cannot swap a directory for a symlink and have the
//! deletion, or a chmod, follow it out of the tree. Directories without
//! their owner's rights (overlay's `work/work` is mode 000; an image's
//! directories can be 0500, seen by a rootless kiln) are given 0700 on
//! the way. Entries that vanish meanwhile (another process deleting the
//! same tree) are not errors.
//!
//! What it returns is what the deletion freed, counted as `du` counts:
//! allocated blocks, a file with other links left (anywhere) freeing
//! nothing, its last link freeing it.
//!
//! ```
//! let tmp = tempfile::tempdir().unwrap();
//! let tree = tmp.path().join("tree");
//! std::fs::create_dir_all(tree.join("a/b")).unwrap();
//! std::fs::write(tree.join("a/b/f"), vec![0u8; 8192]).unwrap();
//! let freed = kiln_tree::remove_tree(&tree).unwrap();
//! assert!(freed >= 8192);
//! assert!(!tree.exists());
//! // Nothing there: nothing freed, no error.
//! assert_eq!(kiln_tree::remove_tree(&tree).unwrap(), 0);
//! ```

use std::ffi::OsStr;
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

/// A step of a deletion that failed: what it was doing, where.
#[derive(Debug)]
pub struct Error {
    /// `stat`, `open`, `list` or `remove`.
    pub op: &'static str,
    /// The entry, as `path` given to [`remove_tree`] joined with the names
    /// below it.
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.op, self.path.display(), self.source)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Deletes `path`, a file or a whole tree (the last name of `path` is not
/// followed either), and returns the bytes that freed (see the crate
/// doc). A `path` that does not exist frees nothing.
pub fn remove_tree(path: &Path) -> Result<u64, Error> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error {
            op: "remove",
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a removable path"),
        });
    };
    let parent = match parent.as_os_str().is_empty() {
        true => Path::new("."),
        false => parent,
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let dir = match rustix::fs::open(parent, flags, Mode::empty()) {
        Ok(dir) => dir,
        Err(Errno::NOENT) => return Ok(0),
        Err(e) => {
            return Err(Error {
                op: "open",
                path: parent.to_path_buf(),
                source: e.into(),
            })
        }
    };
    remove_at(&dir, Path::new(name), path)
}

/// Deletes the entry `name` of the directory `dir` (shown as `shown`).
fn remove_at(dir: &OwnedFd, name: &Path, shown: &Path) -> Result<u64, Error> {
    let failed = |op: &'static str| {
        move |e: Errno| Error {
            op,
            path: shown.to_path_buf(),
            source: e.into(),
        }
    };
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(0),
        Err(e) => return Err(failed("stat")(e)),
    };
    let unlink_file = || match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => Ok(freed_by(&st)),
        Err(Errno::NOENT) => Ok(0),
        Err(e) => Err(failed("remove")(e)),
    };
    if !FileType::from_raw_mode(st.st_mode).is_dir() {
        return unlink_file();
    }
    // O_PATH first: a directory without read permission for its owner
    // (overlay's `work/work`) can be opened so, chmodded, then read.
    let pinned = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let pinned = match rustix::fs::openat(dir, name, pinned, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(0),
        // No longer a directory: a symlink (or a file) put in its place
        // meanwhile, removed itself, never followed.
        Err(Errno::LOOP | Errno::NOTDIR) => return unlink_file(),
        Err(e) => return Err(failed("open")(e)),
    };
    if st.st_mode & 0o700 != 0o700 {
        // Through the descriptor's own path (fchmod takes no O_PATH one).
        let own = format!("/proc/self/fd/{}", pinned.as_raw_fd());
        let _ = rustix::fs::chmod(own, Mode::from_raw_mode(0o700));
    }
    let read = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let sub = rustix::fs::openat(&pinned, ".", read, Mode::empty()).map_err(failed("open"))?;
    // One descriptor a level, as std's remove_dir_all holds: a tree as
    // deep as the open-file limit allows goes.
    drop(pinned);
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&sub).map_err(failed("list"))? {
        let entry = entry.map_err(failed("list"))?;
        let entry_name = entry.file_name().to_bytes();
        if entry_name != b"." && entry_name != b".." {
            names.push(OsStr::from_bytes(entry_name).to_os_string());
        }
    }
    let mut bytes = 0;
    for entry_name in names {
        let entry_name = Path::new(&entry_name);
        bytes += remove_at(&sub, entry_name, &shown.join(entry_name))?;
    }
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) => Ok(bytes + freed_by(&st)),
        Err(Errno::NOENT) => Ok(bytes),
        Err(e) => Err(failed("remove")(e)),
    }
}

/// What deleting the entry `st` describes (read just before) frees: all
/// of a directory's or a file's with no other link, none of a file whose
/// other links remain (wherever they are).
fn freed_by(st: &Stat) -> u64 {
    let dir = FileType::from_raw_mode(st.st_mode).is_dir();
    if dir || st.st_nlink <= 1 {
        u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512)
    } else {
        0
    }
}

#[cfg(test)]
mod tests;
