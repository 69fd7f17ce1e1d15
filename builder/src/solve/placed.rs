//! Mounts under chroot isolation, which can mount nothing: a RUN's cache
//! and tmpfs mounts and its `/dev` are *placed* in the step's copy of the
//! root filesystem ([`super::copying`]) before it runs and taken out
//! after it, before the copy is compared with its layers, so that the
//! layer holds what it would hold with real mounts: nothing of them.
//!
//! Placing a directory at a target (resolved inside the copy, its
//! symlinks followed there):
//!
//! - what the image has there (a directory) is moved out of the copy,
//!   into the step's own directory, where the RUN cannot see it, as a
//!   mount hides it; missing parents are made (mount-point stubs);
//! - a fresh directory takes its place: for a cache mount, with the cache
//!   directory's owner and mode and its entries moved in (renamed: the
//!   store and the copy are on one filesystem); for `type=tmpfs`, empty
//!   and mode 1777; for `/dev`, the standard devices (mknod, skipped
//!   where refused), its links, `shm` and `pts`;
//! - the directories touched keep their mtimes, as the runtime's stubs
//!   keep theirs.
//!
//! Taking out reverses it once every process of the RUN is gone (the
//! runtime kills what a chroot RUN leaves running), by file descriptors
//! beneath the copy and through no symlink (the RUN may have replaced
//! anything there): the fresh directory (still the inode placed, held
//! open meanwhile) is moved out of the copy, a cache's entries then go
//! back into the cache, with its owner and mode, the image's directory
//! back in, the stubs removed when still empty, and each parent keeps the
//! mtime the RUN left it. A RUN that removed or replaced a mount point,
//! which it could not do to a real one, fails its step (and the caches
//! around it keep nothing of it). A file the RUN linked between a cache
//! and the rest of the copy, which a real mount refuses (EXDEV), becomes
//! a copy of its own in the cache: a cache never shares an inode with a
//! snapshot.
//!
//! What differs from real mounts: a cache is held exclusively by the RUN
//! that uses it (`sharing=shared` waits as `locked` does; a RUN takes all
//! its caches at once or none, so two RUNs never wait for each other;
//! one RUN cannot mount one cache twice), a cache's entries are moved, so
//! a build killed while a RUN runs loses them (a cache may always be
//! lost), hard links inside a cache are undone, a tmpfs is a directory
//! of the store's filesystem (on disk, not in memory; `size=` is
//! refused), and `ln` across a mount point works where it would fail.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Timespec, Timestamps};

use crate::rootfs::{clean_rel, resolve, DirTree};

/// What is placed at a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Placement {
    /// A cache mount: the entries of this directory, moved in and back.
    Cache(PathBuf),
    /// `type=tmpfs`: an empty directory, mode 1777, dropped after.
    Empty,
    /// `/dev`: the standard devices, dropped after.
    Dev,
}

/// One directory to place: where in the container, and what.
#[derive(Debug, Clone)]
pub(super) struct PlaceRequest {
    /// Absolute path in the container.
    pub(super) target: String,
    pub(super) what: Placement,
}

/// One placed directory, as taking it out needs it.
struct PlacedDir {
    target: String,
    /// Resolved, relative to the copy's root.
    rel: String,
    what: Placement,
    /// The fresh directory, open while the RUN runs (so its inode cannot
    /// be reused by another): what must still be there after.
    fresh: std::fs::File,
    /// Where the image's directory at `rel` waits (outside the copy).
    hidden: Option<PathBuf>,
    /// Parents made for it, parents first, relative to the root.
    stubs: Vec<PathBuf>,
}

/// The copy's root and the step's aside directory, open while taking out.
struct Fds {
    root: rustix::fd::OwnedFd,
    aside: rustix::fd::OwnedFd,
}

/// The directories placed in a copy, until [`Placed::take_out`].
pub(super) struct Placed {
    root: PathBuf,
    /// A directory of the step, outside the copy, on its filesystem.
    aside: PathBuf,
    dirs: Vec<PlacedDir>,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

fn errno_error(what: &str) -> impl Fn(rustix::io::Errno) -> String + '_ {
    move |e| format!("{what}: {}", std::io::Error::from(e))
}

/// A directory's mtime.
fn mtime_of(path: &Path) -> Result<Timespec, String> {
    let meta = std::fs::symlink_metadata(path).map_err(io_error(path))?;
    Ok(Timespec {
        tv_sec: meta.mtime(),
        tv_nsec: meta.mtime_nsec() as _,
    })
}

/// Sets the mtime of the directory open as `dir`, leaving its atime.
fn set_mtime(dir: &impl rustix::fd::AsFd, mtime: Timespec) -> rustix::io::Result<()> {
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: mtime,
    };
    rustix::fs::futimens(dir, &times)
}

/// Runs `change` in the directory `dir`, which keeps its mtime.
fn keeping_mtime<T>(dir: &Path, change: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let mtime = mtime_of(dir)?;
    let out = change()?;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let open = rustix::fs::open(dir, flags, Mode::empty())
        .map_err(errno_error(&dir.display().to_string()))?;
    set_mtime(&open, mtime).map_err(errno_error(&dir.display().to_string()))?;
    Ok(out)
}

impl Placed {
    /// Places `requests`, in order, in the copy at `root`; what they hide
    /// waits in `aside` (made here, outside `root`, on its filesystem).
    /// On an error, what was placed is taken out again.
    pub(super) fn place(
        root: &Path,
        aside: &Path,
        requests: &[PlaceRequest],
    ) -> Result<Placed, String> {
        std::fs::create_dir_all(aside).map_err(io_error(aside))?;
        let mut placed = Placed {
            root: root.to_path_buf(),
            aside: aside.to_path_buf(),
            dirs: Vec::new(),
        };
        for request in requests {
            if let Err(e) = placed.place_one(request) {
                let _ = placed.take_out();
                return Err(e);
            }
        }
        Ok(placed)
    }

    fn place_one(&mut self, request: &PlaceRequest) -> Result<(), String> {
        let target = &request.target;
        let tree = DirTree::new(&self.root);
        let rel = resolve(&tree, &clean_rel(target), true).map_err(|e| e.to_string())?;
        if rel.is_empty() {
            return Err(format!("invalid mount target {target:?}"));
        }
        // The runtime's rule for real mounts, runc's: nothing on /proc or
        // below it but a few files (`kiln_runtime`'s init); what is placed
        // is a directory, so nothing there.
        if rel == "proc" || rel.starts_with("proc/") {
            return Err(format!(
                "{target} cannot be mounted because it is inside /proc (as runc refuses it)"
            ));
        }
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel.as_str()));
        let stubs = self.make_parents(target, parent)?;
        let parent_dir = self.root.join(parent);
        let path = parent_dir.join(name);
        let index = self.dirs.len();
        let hidden = keeping_mtime(&parent_dir, || {
            let hidden = match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {
                    let hidden = self.aside.join(format!("hidden-{index}"));
                    std::fs::rename(&path, &hidden).map_err(io_error(&path))?;
                    Some(hidden)
                }
                Ok(_) => return Err(format!("mount target {target} is not a directory")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_error(&path)(e)),
            };
            std::fs::create_dir(&path).map_err(io_error(&path))?;
            Ok(hidden)
        })?;
        let fresh = std::fs::File::open(&path).map_err(io_error(&path))?;
        self.dirs.push(PlacedDir {
            target: target.clone(),
            rel: rel.clone(),
            what: request.what.clone(),
            fresh,
            hidden,
            stubs,
        });
        fill(&path, &request.what)
    }

    /// Makes the missing directories of `parent` (relative to the root),
    /// each parent keeping its mtime; returns those made, parents first.
    fn make_parents(&self, target: &str, parent: &str) -> Result<Vec<PathBuf>, String> {
        let mut made = Vec::new();
        let mut at = PathBuf::new();
        for part in parent.split('/').filter(|p| !p.is_empty()) {
            let above = self.root.join(&at);
            at.push(part);
            let path = self.root.join(&at);
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => continue,
                Ok(_) => {
                    return Err(format!(
                        "mount target {target}: /{} is not a directory",
                        at.display()
                    ))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&path)(e)),
            }
            keeping_mtime(&above, || {
                std::fs::create_dir(&path).map_err(io_error(&path))?;
                crate::rootfs::set_mode(&path, 0o755).map_err(|e| e.to_string())
            })?;
            made.push(at.clone());
        }
        Ok(made)
    }

    /// Takes every placed directory out, last placed first; every one is
    /// tried, the first error is returned. Once one failed (the RUN moved
    /// a mount point away), the caches placed around it keep nothing of
    /// this RUN: what is in them may be another placement's.
    pub(super) fn take_out(mut self) -> Result<(), String> {
        let open = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root = rustix::fs::open(&self.root, open, Mode::empty())
            .map_err(errno_error(&self.root.display().to_string()))?;
        let aside = rustix::fs::open(&self.aside, open, Mode::empty())
            .map_err(errno_error(&self.aside.display().to_string()))?;
        let fds = Fds { root, aside };
        let mut first_error = None;
        let dirs = std::mem::take(&mut self.dirs);
        for (index, dir) in dirs.into_iter().enumerate().rev() {
            let keep = first_error.is_none();
            if let Err(e) = self.take_out_one(&fds, index, &dir, keep) {
                first_error.get_or_insert(e);
            }
            kiln_runtime::parent::remove_stubs(
                &self.root,
                &dir.stubs,
                kiln_runtime::parent::StubsIn::RootDir,
            );
        }
        first_error.map_or(Ok(()), Err)
    }

    fn take_out_one(
        &self,
        fds: &Fds,
        index: usize,
        dir: &PlacedDir,
        keep: bool,
    ) -> Result<(), String> {
        let target = &dir.target;
        let (parent, name) = dir.rel.rsplit_once('/').unwrap_or((".", dir.rel.as_str()));
        let open = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        // Beneath the copy and through no symlink: a directory the RUN
        // replaced by a symlink to the host's is not followed.
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let parent_fd = rustix::fs::openat2(&fds.root, parent, open, Mode::empty(), resolve)
            .map_err(|e| {
                format!("the RUN replaced a directory above its mount point {target}: {e}")
            })?;
        let stat = rustix::fs::fstat(&parent_fd).map_err(errno_error(target))?;
        let parent_mtime = Timespec {
            tv_sec: stat.st_mtime,
            tv_nsec: stat.st_mtime_nsec as _,
        };
        let fresh = dir.fresh.metadata().map_err(io_error(Path::new(target)))?;
        let still = rustix::fs::statat(&parent_fd, name, AtFlags::SYMLINK_NOFOLLOW);
        let ours = still.is_ok_and(|st| {
            rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir()
                && st.st_ino == fresh.ino()
                && st.st_dev == fresh.dev()
        });
        // Out of the copy first, then dealt with where the RUN cannot reach.
        let out = self.aside.join(format!("placed-{index}"));
        if ours {
            rustix::fs::renameat(&parent_fd, name, &fds.aside, format!("placed-{index}"))
                .map_err(errno_error(target))?;
        }
        if let Some(hidden) = &dir.hidden {
            // What the image had there comes back (over whatever the RUN
            // put in the mount point's place, when it did).
            let hidden_name = hidden.file_name().unwrap_or_default();
            if !ours {
                let _ = rustix::fs::unlinkat(&parent_fd, name, AtFlags::REMOVEDIR);
            }
            rustix::fs::renameat(&fds.aside, hidden_name, &parent_fd, name)
                .map_err(errno_error(target))?;
        }
        set_mtime(&parent_fd, parent_mtime).map_err(errno_error(target))?;
        if !ours {
            return Err(format!(
                "the RUN removed or replaced its mount point {target}, which a mount point \
                 cannot be"
            ));
        }
        // The RUN's processes are all gone (the runtime kills what a
        // chroot RUN leaves): nothing changes `out` or the cache now.
        match &dir.what {
            Placement::Cache(source) if keep => return_to_cache(&out, source),
            // The step's directory, `out` with it, is removed with the step.
            Placement::Cache(_) | Placement::Empty | Placement::Dev => Ok(()),
        }
    }
}

/// A cache's entries back from `out` (the mount point, moved out of the
/// copy) into the cache dir `source`, which takes the mount point's owner
/// and mode as a mounted one would. A file linked (`ln`) between the
/// cache and the copy, which a real mount refuses (EXDEV), would join the
/// cache to the step's snapshot: every regular file of the cache with
/// more than one link becomes a copy of its own.
fn return_to_cache(out: &Path, source: &Path) -> Result<(), String> {
    move_entries(out, source)?;
    copy_owner_and_mode(out, source)?;
    unlink_files(source)
}

/// Gives the directory `to` the owner and permission bits of `from`.
fn copy_owner_and_mode(from: &Path, to: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(from).map_err(io_error(from))?;
    crate::rootfs::set_owner(to, meta.uid(), meta.gid())
        .and_then(|()| crate::rootfs::set_mode(to, meta.mode() & 0o7777))
        .map_err(|e| e.to_string())
}

/// Replaces every regular file under `dir` with more than one link by a
/// copy (bytes, owner, mode, xattrs, times), renamed over it.
fn unlink_files(dir: &Path) -> Result<(), String> {
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io_error(&path))?;
        if meta.is_dir() {
            unlink_files(&path)?;
        } else if meta.is_file() && meta.nlink() > 1 {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let copy = dir.join(format!(".kiln-unlinking-{name}"));
            let xattrs = crate::rootfs::host_xattrs(&path);
            let info = crate::rootfs::NewFileInfo {
                uid: meta.uid(),
                gid: meta.gid(),
                mode: meta.mode(),
                xattrs: &xattrs,
                atime: (meta.atime(), meta.atime_nsec()),
                mtime: (meta.mtime(), meta.mtime_nsec()),
            };
            crate::rootfs::create_file_copy(&path, &copy, &info).map_err(|e| e.to_string())?;
            std::fs::rename(&copy, &path).map_err(io_error(&path))?;
        }
    }
    Ok(())
}

/// Fills the fresh directory `path` with what is placed there.
fn fill(path: &Path, what: &Placement) -> Result<(), String> {
    match what {
        Placement::Cache(source) => {
            copy_owner_and_mode(source, path)?;
            move_entries(source, path)
        }
        Placement::Empty => crate::rootfs::set_mode(path, 0o1777).map_err(|e| e.to_string()),
        Placement::Dev => fill_dev(path),
    }
}

/// The standard devices (where mknod is allowed), links, `shm` and `pts`.
fn fill_dev(dev: &Path) -> Result<(), String> {
    crate::rootfs::set_mode(dev, 0o755).map_err(|e| e.to_string())?;
    for (name, major, minor) in kiln_runtime::init::DEVICES {
        let path = dev.join(name);
        let made = rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(*major, *minor),
        );
        match made {
            // mknod needs CAP_MKNOD: without it the node is missing (a
            // write to it makes a file in this /dev, which is dropped).
            Err(rustix::io::Errno::PERM) => continue,
            Err(e) => return Err(errno_error(&path.display().to_string())(e)),
            // The umask is not the mode.
            Ok(()) => crate::rootfs::set_mode(&path, 0o666).map_err(|e| e.to_string())?,
        }
    }
    for (name, target) in kiln_runtime::init::DEV_LINKS {
        let path = dev.join(name);
        std::os::unix::fs::symlink(target, &path).map_err(io_error(&path))?;
    }
    for (name, mode) in [("shm", 0o1777), ("pts", 0o755)] {
        let path = dev.join(name);
        std::fs::create_dir(&path).map_err(io_error(&path))?;
        crate::rootfs::set_mode(&path, mode).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Renames every entry of `from` into `to` (on the same filesystem).
fn move_entries(from: &Path, to: &Path) -> Result<(), String> {
    for entry in std::fs::read_dir(from).map_err(io_error(from))? {
        let entry = entry.map_err(io_error(from))?;
        let (old, new) = (entry.path(), to.join(entry.file_name()));
        std::fs::rename(&old, &new).map_err(|e| {
            format!(
                "moving {} to {} (the cache and the step's copy must be on one filesystem): {e}",
                old.display(),
                new.display()
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn mtime(path: &Path) -> (i64, i64) {
        let meta = std::fs::symlink_metadata(path).unwrap();
        (meta.mtime(), meta.mtime_nsec())
    }

    /// A cache placed over an image directory (through an image symlink)
    /// and at a missing path: the RUN sees the cache's entries and not
    /// the image's; after, the cache has what the RUN wrote, the copy is
    /// as before, its directories' mtimes kept.
    #[test]
    fn a_cache_is_placed_and_taken_out() {
        let work = tempfile::tempdir().unwrap();
        let (root, cache, aside) = (
            work.path().join("root"),
            work.path().join("cache"),
            work.path().join("aside"),
        );
        write(&root.join("var/cache/apt/image-file"), "image");
        std::os::unix::fs::symlink("/var/cache", root.join("link")).unwrap();
        write(&cache.join("old"), "old");
        let (var_mtime, cache_mtime) = (mtime(&root.join("var")), mtime(&root.join("var/cache")));
        let root_mtime = mtime(&root);
        let requests = [
            PlaceRequest {
                target: "/link/apt".into(),
                what: Placement::Cache(cache.clone()),
            },
            PlaceRequest {
                target: "/new/dir".into(),
                what: Placement::Empty,
            },
        ];
        let placed = Placed::place(&root, &aside, &requests).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("var/cache/apt/old")).unwrap(),
            "old"
        );
        assert!(!root.join("var/cache/apt/image-file").exists());
        assert!(root.join("new/dir").is_dir());
        assert_eq!(mtime(&root.join("var/cache")), cache_mtime);
        assert_eq!(mtime(&root), root_mtime);
        // The RUN.
        write(&root.join("var/cache/apt/new"), "new");
        placed.take_out().unwrap();
        assert_eq!(std::fs::read_to_string(cache.join("new")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(cache.join("old")).unwrap(), "old");
        assert_eq!(
            std::fs::read_to_string(root.join("var/cache/apt/image-file")).unwrap(),
            "image"
        );
        assert!(!root.join("var/cache/apt/new").exists());
        assert!(!root.join("new").exists(), "a stub stayed");
        assert_eq!(mtime(&root.join("var/cache")), cache_mtime);
        assert_eq!(mtime(&root.join("var")), var_mtime);
        assert_eq!(mtime(&root), root_mtime);
    }

    /// runc's rule, as the runtime applies it to real mounts: nothing is
    /// placed on /proc or below it, written so or reached through an
    /// image's symlink; nothing of the first request stays.
    #[test]
    fn nothing_is_placed_inside_proc() {
        let work = tempfile::tempdir().unwrap();
        let (root, aside) = (work.path().join("root"), work.path().join("aside"));
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::os::unix::fs::symlink("/proc", root.join("alias")).unwrap();
        for target in ["/proc", "/proc/x", "/alias/sys"] {
            let requests = [
                PlaceRequest {
                    target: "/first".into(),
                    what: Placement::Empty,
                },
                PlaceRequest {
                    target: target.into(),
                    what: Placement::Empty,
                },
            ];
            let Err(err) = Placed::place(&root, &aside, &requests) else {
                panic!("{target} placed");
            };
            assert!(err.contains("inside /proc"), "{err}");
            assert!(!root.join("first").exists(), "{target}");
            assert_eq!(std::fs::read_dir(root.join("proc")).unwrap().count(), 0);
        }
    }

    /// A file the RUN linked between the cache and the copy: the cache
    /// gets a file of its own (same bytes), the copy keeps the inode.
    #[test]
    fn a_link_between_cache_and_copy_is_undone_in_the_cache() {
        let work = tempfile::tempdir().unwrap();
        let (root, cache, aside) = (
            work.path().join("root"),
            work.path().join("cache"),
            work.path().join("aside"),
        );
        write(&root.join("etc/passwd"), "root");
        write(&cache.join("sub/f"), "cached");
        let requests = [PlaceRequest {
            target: "/c".into(),
            what: Placement::Cache(cache.clone()),
        }];
        let placed = Placed::place(&root, &aside, &requests).unwrap();
        std::fs::hard_link(root.join("c/sub/f"), root.join("usr-f")).unwrap();
        std::fs::hard_link(root.join("etc/passwd"), root.join("c/p")).unwrap();
        placed.take_out().unwrap();
        for (in_cache, in_copy) in [("sub/f", "usr-f"), ("p", "etc/passwd")] {
            let (a, b) = (cache.join(in_cache), root.join(in_copy));
            assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
            let (a, b) = (
                std::fs::metadata(&a).unwrap(),
                std::fs::metadata(&b).unwrap(),
            );
            assert_ne!(a.ino(), b.ino(), "{in_cache} is still linked to {in_copy}");
            assert_eq!(a.nlink(), 1);
        }
        assert!(!cache.join("sub").read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".kiln")));
    }

    /// A RUN that replaced a directory above its mount point by a symlink
    /// to a directory outside the copy: taking out follows no symlink,
    /// touches nothing outside and fails.
    #[test]
    fn taking_out_follows_no_symlink_the_run_made() {
        let work = tempfile::tempdir().unwrap();
        let (root, cache, aside, outside) = (
            work.path().join("root"),
            work.path().join("cache"),
            work.path().join("aside"),
            work.path().join("outside"),
        );
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(&cache).unwrap();
        write(&outside.join("b/keep"), "keep");
        let requests = [PlaceRequest {
            target: "/a/b".into(),
            what: Placement::Cache(cache.clone()),
        }];
        let placed = Placed::place(&root, &aside, &requests).unwrap();
        std::fs::remove_dir_all(root.join("a")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a")).unwrap();
        let err = placed.take_out().unwrap_err();
        assert!(
            err.contains("replaced a directory above its mount point /a/b"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(outside.join("b/keep")).unwrap(),
            "keep"
        );
    }

    /// `/dev`: the devices where mknod is allowed (root here), its links;
    /// the image's /dev back after, what the RUN wrote there gone.
    #[test]
    fn dev_is_placed_and_dropped() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: mknod needs root");
            return;
        }
        let work = tempfile::tempdir().unwrap();
        let (root, aside) = (work.path().join("root"), work.path().join("aside"));
        write(&root.join("dev/image-node"), "");
        let requests = [PlaceRequest {
            target: "/dev".into(),
            what: Placement::Dev,
        }];
        let placed = Placed::place(&root, &aside, &requests).unwrap();
        let null = std::fs::symlink_metadata(root.join("dev/null")).unwrap();
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
        assert!(!root.join("dev/image-node").exists());
        std::fs::write(root.join("dev/null"), "dropped").unwrap();
        write(&root.join("dev/written"), "x");
        placed.take_out().unwrap();
        assert!(root.join("dev/image-node").exists());
        assert!(!root.join("dev/written").exists());
        assert!(!root.join("dev/null").exists());
    }
}
