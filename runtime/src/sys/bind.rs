//! Bind mounts by descriptor: [`Pinned`] files (opened `O_PATH`) and the
//! real half of [`Syscalls::bind`](super::Syscalls::bind).
//!
//! A bind made by path looks the path up when it mounts: a container that
//! shares a directory on that path (a cache mount another RUN holds) could
//! have swapped a directory for a symlink to the host's since it was
//! checked. Here the source and the target are opened first, and the bind
//! joins the two files, looked up never again:
//!
//! 1. `open_tree(OPEN_TREE_CLONE)` copies the source's mount (with its
//!    submounts when recursive), detached; `mount_setattr(AT_RECURSIVE)`
//!    makes the copy read-only and nodev, every submount included;
//!    `move_mount` attaches it on the target ([`Way::Tree`]).
//! 2. Without `mount_setattr` (Linux before 5.12) the copy is attached
//!    first and its top mount remounted through the copy's descriptor
//!    (`/proc/self/fd/N`): submounts stay as they were
//!    ([`Way::TreeThenRemount`]).
//! 3. Without `open_tree` (before 5.2, or a seccomp profile that refuses
//!    the new mount API): mount(2) from `/proc/self/fd/S` onto
//!    `/proc/self/fd/T`, still by descriptor, then the top mount
//!    remounted by the target's path, as runc does ([`Way::Mount`]).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// A file opened `O_PATH` ([`Syscalls::open_in_root`](super::Syscalls::open_in_root),
/// [`Syscalls::open_path`](super::Syscalls::open_path)). Mount calls take
/// it instead of a path, which another container sharing a directory on
/// it could change between its lookup and the mount (swap a directory for
/// a symlink to the host's). Closed when dropped.
#[derive(Debug)]
pub struct Pinned {
    /// None in the recording fake.
    fd: Option<OwnedFd>,
    /// What it was opened as, resolved: for messages, and for what needs
    /// the path after something was mounted on it.
    shown: PathBuf,
}

impl Pinned {
    /// `fd`, shown as the path the kernel gives for it.
    pub(super) fn new(fd: OwnedFd) -> io::Result<Pinned> {
        let shown = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        Ok(Pinned {
            fd: Some(fd),
            shown,
        })
    }

    /// `fd`, opened as `path`.
    pub(super) fn opened(fd: OwnedFd, path: &Path) -> Pinned {
        Pinned {
            fd: Some(fd),
            shown: path.to_path_buf(),
        }
    }

    /// The recording fake's: no descriptor, the path as asked.
    pub(super) fn fake(path: &Path) -> Pinned {
        Pinned {
            fd: None,
            shown: path.to_path_buf(),
        }
    }

    /// The path it was found at, resolved (the fake: as asked).
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// A path that reaches exactly this file, for calls that take a path:
    /// `/proc/self/fd/N` (the fake: [`Pinned::shown`]). mount(2) onto it
    /// mounts on this file (over what is mounted there already); a path
    /// walked through it (`/proc/self/fd/N/name`) goes into the directory
    /// as opened, under anything mounted on it since.
    pub fn path(&self) -> PathBuf {
        match &self.fd {
            Some(fd) => PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            None => self.shown.clone(),
        }
    }

    /// [`Pinned::path`] for calls that do not follow a last symlink (lstat,
    /// utimensat with `AT_SYMLINK_NOFOLLOW`) on the directory opened:
    /// `/proc/self/fd/N/.` (the fake: [`Pinned::shown`]).
    pub fn dir_path(&self) -> PathBuf {
        match &self.fd {
            Some(_) => self.path().join("."),
            None => self.shown.clone(),
        }
    }

    fn fd(&self) -> Result<BorrowedFd<'_>, BindError> {
        self.fd.as_ref().map(|fd| fd.as_fd()).ok_or(BindError {
            call: "bind",
            errno: libc::EBADF,
            message: Some(format!("{} is not opened", self.shown.display())),
        })
    }
}

/// How [`Syscalls::bind`](super::Syscalls::bind) binds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindAttrs {
    /// The source's submounts too (`MS_REC`).
    pub recursive: bool,
    /// Read-only, submounts included.
    pub read_only: bool,
    /// nodev, submounts included.
    pub nodev: bool,
}

impl BindAttrs {
    /// The `MOUNT_ATTR_*` bits to set.
    fn mount_attrs(self) -> u64 {
        let mut set = 0;
        if self.read_only {
            set |= MOUNT_ATTR_RDONLY;
        }
        if self.nodev {
            set |= MOUNT_ATTR_NODEV;
        }
        set
    }

    /// The `MS_*` bits a remount adds.
    fn remount_flags(self) -> libc::c_ulong {
        let mut flags = 0;
        if self.read_only {
            flags |= libc::MS_RDONLY;
        }
        if self.nodev {
            flags |= libc::MS_NODEV;
        }
        flags
    }
}

/// The ways to bind, best first (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Way {
    Tree,
    TreeThenRemount,
    Mount,
}

/// Binds `source` on `target` the best way this kernel allows.
pub(super) fn bind(source: &Pinned, target: &Pinned, attrs: BindAttrs) -> io::Result<()> {
    let bound = match bind_by(Way::Tree, source, target, attrs) {
        Err(e) if (e.call, e.errno) == ("mount_setattr", libc::ENOSYS) => {
            bind_by(Way::TreeThenRemount, source, target, attrs)
        }
        Err(e) if is_refused(&e) => bind_by(Way::Mount, source, target, attrs),
        other => other,
    };
    Ok(bound?)
}

/// Whether `open_tree` was refused as a call (ENOSYS: too old a kernel;
/// EPERM: a seccomp profile without the new mount API, where mount(2)
/// may still be allowed).
fn is_refused(e: &BindError) -> bool {
    e.call == "open_tree" && matches!(e.errno, libc::ENOSYS | libc::EPERM)
}

/// A call of a bind that failed, and how.
#[derive(Debug)]
pub(super) struct BindError {
    call: &'static str,
    errno: i32,
    message: Option<String>,
}

impl From<BindError> for io::Error {
    fn from(e: BindError) -> io::Error {
        let os = io::Error::from_raw_os_error(e.errno);
        let text = e.message.unwrap_or_else(|| os.to_string());
        io::Error::new(os.kind(), format!("{}: {text}", e.call))
    }
}

fn failed(call: &'static str) -> impl Fn(rustix::io::Errno) -> BindError {
    move |e| BindError {
        call,
        errno: e.raw_os_error(),
        message: None,
    }
}

/// Binds one way; errors name the call that failed.
pub(super) fn bind_by(
    way: Way,
    source: &Pinned,
    target: &Pinned,
    attrs: BindAttrs,
) -> Result<(), BindError> {
    let (source_fd, target_fd) = (source.fd()?, target.fd()?);
    match way {
        Way::Tree | Way::TreeThenRemount => {
            use rustix::mount::{open_tree, OpenTreeFlags};
            let mut flags = OpenTreeFlags::OPEN_TREE_CLONE
                | OpenTreeFlags::OPEN_TREE_CLOEXEC
                | OpenTreeFlags::AT_EMPTY_PATH;
            if attrs.recursive {
                flags |= OpenTreeFlags::AT_RECURSIVE;
            }
            let tree = open_tree(source_fd, "", flags).map_err(failed("open_tree"))?;
            let set = attrs.mount_attrs();
            if way == Way::Tree && set != 0 {
                mount_setattr_recursive(tree.as_fd(), set)?;
            }
            move_mount(tree.as_fd(), source_fd, target_fd)?;
            if way == Way::TreeThenRemount && set != 0 {
                let copy = PathBuf::from(format!("/proc/self/fd/{}", tree.as_raw_fd()));
                remount(&copy, attrs)?;
            }
            Ok(())
        }
        Way::Mount => {
            let mut flags = libc::MS_BIND;
            if attrs.recursive {
                flags |= libc::MS_REC;
            }
            mount(&source.path(), &target.path(), flags)?;
            if attrs.mount_attrs() != 0 {
                // The new mount is on the target's file, which its
                // descriptor reaches under it: by the path.
                remount(target.shown(), attrs)?;
            }
            Ok(())
        }
    }
}

/// `move_mount` of the detached `tree` onto `target`; a directory on a
/// file (or the reverse), the usual EINVAL, said so.
fn move_mount(
    tree: BorrowedFd<'_>,
    source: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
) -> Result<(), BindError> {
    use rustix::mount::MoveMountFlags;
    let flags = MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH;
    rustix::mount::move_mount(tree, "", target, "", flags).map_err(|e| {
        let mut error = failed("move_mount")(e);
        let (from, to) = (is_dir(source), is_dir(target));
        if e == rustix::io::Errno::INVAL && from != to {
            // The source changed kind after its mount point was made.
            error.message = Some(format!("{} cannot be bound on {}", kind(from), kind(to)));
        }
        error
    })
}

/// mount(2) with no type or data.
fn mount(source: &Path, target: &Path, flags: libc::c_ulong) -> Result<(), BindError> {
    let flags = rustix::mount::MountFlags::from_bits_retain(flags as u32);
    rustix::mount::mount(source, target, "", flags, None).map_err(failed("mount"))
}

/// A bind remount of the mount at `path` (its top mount only) with
/// `attrs` added to the flags it has (those must be repeated: locked in a
/// user namespace).
fn remount(path: &Path, attrs: BindAttrs) -> Result<(), BindError> {
    let kept = mount_flags(path).map_err(failed("statvfs"))?;
    let flags = libc::MS_BIND | libc::MS_REMOUNT | kept | attrs.remount_flags();
    let flags = rustix::mount::MountFlags::from_bits_retain(flags as u32);
    rustix::mount::mount("", path, "", flags, None).map_err(failed("mount"))
}

/// The `MS_*` flags of the mount holding `path` that a remount must keep.
pub(super) fn mount_flags(path: &Path) -> rustix::io::Result<libc::c_ulong> {
    let flags = rustix::fs::statvfs(path)?.f_flag.bits();
    let pairs = [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ];
    Ok(pairs
        .iter()
        .filter(|(st, _)| flags & *st != 0)
        .fold(0, |acc, (_, ms)| acc | ms))
}

/// Whether `fd` is a directory (false when fstat fails).
fn is_dir(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir())
}

fn kind(dir: bool) -> &'static str {
    match dir {
        true => "a directory",
        false => "a file",
    }
}

/// `MOUNT_ATTR_RDONLY` of `<linux/mount.h>`.
const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// `MOUNT_ATTR_NODEV` of `<linux/mount.h>`.
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// `struct mount_attr` of `<linux/mount.h>` (`MOUNT_ATTR_SIZE_VER0`).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// mount_setattr(2) of `set` on the mount `fd` is and every mount below
/// it (`AT_RECURSIVE`). Linux 5.12+; ENOSYS before.
fn mount_setattr_recursive(fd: BorrowedFd<'_>, set: u64) -> Result<(), BindError> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the path is a NUL-terminated empty string and `attr` a live
    // `struct mount_attr` whose size is passed with it; the kernel only
    // reads both during the call. (rustix has no mount_setattr.)
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(BindError {
            call: "mount_setattr",
            errno: io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
            message: None,
        }),
    }
}
