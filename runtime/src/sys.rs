//! The one door to the kernel.
//!
//! Every call the container setup makes that changes or inspects kernel state
//! (namespaces, mounts, devices, credentials, capabilities, seccomp, exec)
//! goes through [`Syscalls`]. [`RealSyscalls`] makes the calls;
//! [`RecordingSyscalls`] writes each call down as one line of text, so the
//! whole setup sequence can be asserted exactly in unit tests, without root.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::spec::RlimitResource;

mod bind;
pub use bind::{BindAttrs, Pinned};
use caps::{CapSet, Capability, CapsHashSet};
use seccompiler::BpfProgram;

/// File type and permission bits of a path (`st_mode`), following symlinks.
pub type Mode = u32;

/// Kernel calls made while setting up a container. Paths are absolute.
pub trait Syscalls {
    /// unshare(2) with `CLONE_NEW*` flags.
    fn unshare(&mut self, flags: libc::c_int) -> io::Result<()>;
    /// setns(2): joins the namespace `fd` refers to, of type `nstype`
    /// (a `CLONE_NEW*` flag).
    fn setns(&mut self, fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()>;
    /// mount(2). Empty `source`, `fstype` or `data` mean NULL.
    fn mount(
        &mut self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: libc::c_ulong,
        data: &str,
    ) -> io::Result<()>;
    /// Mounts overlay on `target` through the new mount API (fsopen,
    /// fsconfig with one `lowerdir+` per layer, fsmount, move_mount), for
    /// option strings longer than the page mount(2) accepts. `options` is
    /// what mount(2) would take.
    fn mount_overlay_fsconfig(&mut self, target: &Path, options: &str) -> io::Result<()>;
    /// Moves the caller into a cgroup: writes `0` to `file`, its `tasks`
    /// (v1: the calling thread; refused unless the process has no other) or
    /// `cgroup.procs` (the whole process).
    fn join_cgroup(&mut self, file: &Path) -> io::Result<()>;
    /// umount2(2).
    fn umount(&mut self, target: &Path, flags: libc::c_int) -> io::Result<()>;
    /// pivot_root(2).
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> io::Result<()>;
    /// chdir(2).
    fn chdir(&mut self, dir: &Path) -> io::Result<()>;
    /// chroot(2).
    fn chroot(&mut self, dir: &Path) -> io::Result<()>;
    /// mkdir -p with `mode` for the directories it creates.
    fn mkdir_all(&mut self, dir: &Path, mode: u32) -> io::Result<()>;
    /// mkdir(2): one directory; fails if anything, even a symlink (to a
    /// directory or to nothing), is there. Unlike [`Syscalls::mkdir_all`],
    /// which takes a symlink to a directory as the directory.
    fn mkdir(&mut self, dir: &Path, mode: u32) -> io::Result<()>;
    /// Creates an empty regular file (a mount point); fails if anything,
    /// even a dangling symlink, is there.
    fn create_file(&mut self, path: &Path, mode: u32) -> io::Result<()>;
    /// Creates a regular file holding `content`; fails if anything, even a
    /// dangling symlink, is there.
    fn write_file(&mut self, path: &Path, content: &[u8], mode: u32) -> io::Result<()>;
    /// lchown(2).
    fn chown(&mut self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;
    /// mknod(2) of a character device.
    fn mknod_char(&mut self, path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()>;
    /// mknod(2) of a block device.
    fn mknod_block(&mut self, path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()>;
    /// symlink(2).
    fn symlink(&mut self, target: &str, link: &Path) -> io::Result<()>;
    /// Opens `rel` inside `root` as if `root` were `/` (openat2 with
    /// RESOLVE_IN_ROOT: symlinks in the image, or in a directory another
    /// container shares, cannot point out of it), `O_PATH`; `None` when it
    /// does not exist.
    fn open_in_root(&mut self, root: &Path, rel: &Path) -> io::Result<Option<Pinned>>;
    /// Opens `path` `O_PATH`, following symlinks: a path of the host that
    /// no container can change (`/sys`, a volume given on the command
    /// line, a file of the run's own tmpfs).
    fn open_path(&mut self, path: &Path) -> io::Result<Pinned>;
    /// Binds `source` on `target`, both opened beforehand, without looking
    /// either up again: `open_tree(OPEN_TREE_CLONE)` of the source (with
    /// its submounts when `attrs.recursive`), `mount_setattr(AT_RECURSIVE)`
    /// of `attrs` on that copy, `move_mount` onto the target. Read-only and
    /// nodev so reach every submount, which a remount does not. Where the
    /// kernel has no `mount_setattr` (before 5.12), the copy is attached
    /// first and its top mount remounted by the target's path.
    fn bind(&mut self, source: &Pinned, target: &Pinned, attrs: BindAttrs) -> io::Result<()>;
    /// lstat(2)'s mtime (seconds, nanoseconds).
    fn mtime(&mut self, path: &Path) -> io::Result<(i64, i64)>;
    /// Sets the mtime (not the atime) of `path`, not following a symlink.
    fn set_mtime(&mut self, path: &Path, mtime: (i64, i64)) -> io::Result<()>;
    /// stat(2): the mode, or `None` when nothing is there.
    fn stat_mode(&mut self, path: &Path) -> io::Result<Option<Mode>>;
    /// readlink(2) of `path` itself: its target when it is a symlink,
    /// `None` when it is anything else or nothing.
    fn read_link(&mut self, path: &Path) -> io::Result<Option<PathBuf>>;
    /// The `MS_*` flags of the mount holding `path` that a remount must keep
    /// (nosuid, nodev, noexec, …: locked inside a user namespace).
    fn mount_flags(&mut self, path: &Path) -> io::Result<libc::c_ulong>;
    /// sethostname(2).
    fn sethostname(&mut self, name: &str) -> io::Result<()>;
    /// Brings the loopback interface of the current network namespace up.
    fn loopback_up(&mut self) -> io::Result<()>;
    /// Reads a whole file; `None` when it does not exist.
    fn read_file(&mut self, path: &Path) -> io::Result<Option<String>>;
    /// umask(2).
    fn umask(&mut self, mask: u32);
    /// Every signal back to its default disposition, none blocked.
    fn reset_signals(&mut self) -> io::Result<()>;
    /// setsid(2).
    fn setsid(&mut self) -> io::Result<()>;
    /// Opens a pseudo-terminal from the container's /dev/ptmx, gives its
    /// slave to `uid`, binds it on /dev/console, makes it stdin/stdout/stderr
    /// and the controlling terminal, and sends the master over the unix socket `console` (then
    /// closed) to kiln, which relays it.
    fn open_terminal(&mut self, console: libc::c_int, uid: u32) -> io::Result<()>;
    /// Whether setgroups(2) may be called (`/proc/self/setgroups` is not "deny").
    fn setgroups_allowed(&mut self) -> bool;
    /// setgroups(2).
    fn setgroups(&mut self, gids: &[u32]) -> io::Result<()>;
    /// setresgid(2) with all three ids equal.
    fn setresgid(&mut self, gid: u32) -> io::Result<()>;
    /// setresuid(2) with all three ids equal.
    fn setresuid(&mut self, uid: u32) -> io::Result<()>;
    /// prctl(PR_SET_KEEPCAPS).
    fn set_keep_caps(&mut self, keep: bool) -> io::Result<()>;
    /// prctl(PR_CAPBSET_DROP).
    fn drop_bounding_cap(&mut self, cap: Capability) -> io::Result<()>;
    /// Sets the effective and permitted sets to exactly `caps`, and empties
    /// the inheritable set.
    fn set_caps(&mut self, caps: &[Capability]) -> io::Result<()>;
    /// prctl(PR_SET_NO_NEW_PRIVS).
    fn set_no_new_privs(&mut self) -> io::Result<()>;
    /// setrlimit(2) of `resource`.
    fn set_rlimit(&mut self, resource: RlimitResource, soft: u64, hard: u64) -> io::Result<()>;
    /// prctl(PR_SET_PDEATHSIG).
    fn set_parent_death_signal(&mut self, signal: libc::c_int) -> io::Result<()>;
    /// Installs seccomp filters, in order, with seccomp(2) alone: unlike
    /// `seccompiler::apply_filter` it does not set no_new_privs, so the
    /// kernel asks for CAP_SYS_ADMIN in the caller's user namespace unless
    /// no_new_privs is already set (EACCES otherwise).
    fn apply_seccomp(&mut self, filters: &[BpfProgram]) -> io::Result<()>;
    /// Marks every descriptor above stderr close-on-exec, so that the
    /// command inherits none that kiln or kiln's caller had open.
    fn close_fds_on_exec(&mut self) -> io::Result<()>;
    /// execve(2); returns only on failure.
    fn exec(&mut self, path: &Path, argv: &[String], env: &[String]) -> io::Error;
}

/// openat2(2), again while it fails with EAGAIN: with `RESOLVE_IN_ROOT`
/// or `RESOLVE_BENEATH` a lookup through `..` fails so whenever a rename
/// or a mount happened anywhere meanwhile (as runc and libpathrs, it is
/// tried again; a few hundred times at most).
pub fn openat2_retrying<Fd: AsFd>(
    dir: Fd,
    path: impl AsRef<Path>,
    flags: rustix::fs::OFlags,
    resolve: rustix::fs::ResolveFlags,
) -> rustix::io::Result<OwnedFd> {
    let mut tries = 0;
    loop {
        let opened = rustix::fs::openat2(
            &dir,
            path.as_ref(),
            flags,
            rustix::fs::Mode::empty(),
            resolve,
        );
        match opened {
            Err(rustix::io::Errno::AGAIN) if tries < 256 => tries += 1,
            other => return other,
        }
    }
}

/// Marks every open descriptor from `first` up close-on-exec:
/// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)` (Linux 5.11+), else one
/// `fcntl` per descriptor number below the `RLIMIT_NOFILE` hard limit.
///
/// Async-signal-safe (no allocation, no lock), so it may run between fork
/// and exec of a multi-threaded process. A descriptor kiln's own caller left
/// open (`exec 7</dir; kiln …`) would otherwise reach every process kiln
/// starts, a container's command included: through `/proc/self/fd/7` it
/// could walk the host's filesystem.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range takes only integers; with CLOSE_RANGE_CLOEXEC it
    // closes nothing, it only sets the flag. (rustix has no close_range.)
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) {
        return Err(err);
    }
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let last = limit
        .maximum
        .and_then(|max| libc::c_int::try_from(max).ok())
        .unwrap_or(libc::c_int::MAX);
    for fd in first.min(libc::c_int::MAX as u32) as libc::c_int..last {
        // SAFETY: F_SETFD on a bare descriptor number only sets a flag (or
        // fails with EBADF for one not open); no memory is involved. rustix
        // takes a BorrowedFd, which a number not known to be open is not.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Whether stdout is a pipe (or socket) whose reading end is closed.
pub fn stdout_is_closed() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one pollfd we own, a zero timeout.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready == 1 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Whether `/proc` is of this process's PID namespace: its `NSpid`
/// line there has one pid (a `/proc` of an outer namespace shows one per
/// namespace down to this process's, whose own number may happen to be
/// the same). Else the pids it shows are another namespace's.
fn proc_shows_own_pids() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("NSpid:"))
            .is_some_and(|pids| pids.split_whitespace().count() == 1)
    })
}

/// A child of another process (the container's init, the runtime
/// helper's child), to signal without ever reaching a process that took
/// its pid after its parent reaped it: a pidfd, or, where the kernel has
/// none (before 5.3, or a seccomp profile that refuses `pidfd_open`), the
/// pid.
#[derive(Debug)]
pub(crate) enum ChildOf {
    Pidfd(OwnedFd),
    Pid(libc::pid_t),
}

impl ChildOf {
    /// `pid`, reported as a child of `parent`: opened as a pidfd, its
    /// parent read, then checked alive (so what was read is of the
    /// process opened). None only when it is known gone: no such process,
    /// or its pid another's already (a thread's, or a process whose parent
    /// is not `parent`, where this process's /proc shows its own PID
    /// namespace). Where the kernel has no pidfd (before 5.3) or a seccomp
    /// profile refuses one of its calls, the pid, as before.
    pub(crate) fn open(pid: libc::pid_t, parent: libc::pid_t) -> Option<ChildOf> {
        let raw = rustix::process::Pid::from_raw(pid)?;
        let fd = match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            // No such process; or (EINVAL) the pid is a thread of another
            // one now.
            Err(rustix::io::Errno::SRCH | rustix::io::Errno::INVAL) => return None,
            Err(_) => return Some(ChildOf::Pid(pid)),
        };
        // Read after the pidfd is opened: a parent other than `parent`
        // means the pid was another process's already.
        let read_parent = kiln_owner::state_and_parent(pid.unsigned_abs()).map(|(_, p)| p);
        if read_parent.is_some_and(|read| read != parent.unsigned_abs()) && proc_shows_own_pids() {
            return None;
        }
        // Alive after that read (or unreaped): what was read, or could not
        // be, was of the process opened.
        let child = ChildOf::Pidfd(fd);
        match child.signal(0) {
            Ok(()) => Some(child),
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => None,
            Err(_) => Some(ChildOf::Pid(pid)),
        }
    }

    /// Sends `signal` (0: none, a check that it is there).
    pub(crate) fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        match self {
            ChildOf::Pidfd(fd) => {
                // SAFETY: pidfd_send_signal(2) with a pidfd we own, no
                // siginfo (null) and no flags.
                let rc = unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        signal,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
                match rc {
                    0 => Ok(()),
                    _ => Err(io::Error::last_os_error()),
                }
            }
            // SAFETY: kill(2) takes integers.
            ChildOf::Pid(pid) => match unsafe { libc::kill(*pid, signal) } {
                0 => Ok(()),
                _ => Err(io::Error::last_os_error()),
            },
        }
    }
}

/// Ends the process by SIGPIPE, as the default action would have: how a
/// command line tool whose reader went away ends (`kiln images | head`).
pub fn die_of_sigpipe() -> ! {
    // SAFETY: setting a signal's action to the default and raising it take
    // no pointers; the default action of SIGPIPE ends the process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    // Only if SIGPIPE is blocked in this thread.
    std::process::exit(128 + libc::SIGPIPE)
}

/// Sets the mtime of `path` (not following a symlink), leaving its atime.
pub fn set_mtime_of(path: &Path, mtime: (i64, i64)) -> io::Result<()> {
    use rustix::fs::{Timespec, Timestamps, UTIME_OMIT};
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1 as _,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
}

/// Which side of a fork this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// The parent, with the child's pid.
    Parent(libc::pid_t),
    Child,
}

/// The host's first free loop device: `LOOP_CTL_GET_FREE` on
/// `/dev/loop-control`, which makes one when none is free.
pub fn first_free_loop_device() -> io::Result<u32> {
    const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number; the
    // descriptor is open for the call's whole duration.
    let free = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE, 0) };
    u32::try_from(free).map_err(|_| io::Error::last_os_error())
}

/// mknod(2) of a device node of `kind`, numbered (major, minor).
fn mknod(path: &Path, kind: rustix::fs::FileType, mode: u32, dev: (u32, u32)) -> io::Result<()> {
    Ok(rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        kind,
        rustix::fs::Mode::from_raw_mode(mode),
        rustix::fs::makedev(dev.0, dev.1),
    )?)
}

/// `fork`, with the child born in the cgroup v2 directory `dir` (an
/// `O_PATH` descriptor will do) and in new namespaces of the `namespaces`
/// kinds (`CLONE_NEW*` flags, or 0): `clone3` with `CLONE_INTO_CGROUP`
/// (Linux 5.7+). The child then need not write itself into the
/// directory's `cgroup.procs`, a write that takes the kernel's global
/// threadgroup lock for writing and so waits an RCU grace period (about
/// 10 ms) unless another such write came shortly before.
///
/// Fails as `clone3` does, forking nothing: ENOSYS on a kernel without it
/// or under a seccomp profile that refuses it (Docker's), E2BIG on a kernel
/// older than `CLONE_INTO_CGROUP`, and the cgroup's own refusals: EBADF
/// when `dir` is no cgroup2 directory, EACCES or EPERM where its
/// `cgroup.procs` may not be written, EBUSY or EOPNOTSUPP where it may hold
/// no process, EAGAIN at its pids limit, and others. The kernel makes
/// those checks after it has allocated the child's pid: in a PID namespace
/// made beforehand by `unshare` (whose first process the child would have
/// been), that pid is then used up and no process can be made in it any
/// more. Asking for the PID namespace here instead makes it with the
/// child, and it goes with a refused call.
///
/// # Safety
///
/// As `fork`: the caller has no other thread, or the child makes only
/// async-signal-safe calls until it execs or `_exit`s. Unlike libc's
/// `fork`, no `pthread_atfork` handler runs and the child's libc keeps its
/// parent's cached thread id, which a single-threaded program that holds
/// no lock across the call does not depend on.
pub unsafe fn fork_into_cgroup(dir: BorrowedFd<'_>, namespaces: libc::c_int) -> io::Result<Forked> {
    /// The kernel's `struct clone_args` up to `cgroup`
    /// (`CLONE_ARGS_SIZE_VER2`, 88 bytes).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let fd =
        u64::try_from(dir.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    const NAMESPACES: libc::c_int = libc::CLONE_NEWNS
        | libc::CLONE_NEWCGROUP
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET;
    // Namespace kinds only: no other clone flag slips in.
    let namespaces = match u64::try_from(namespaces) {
        Ok(bits) if namespaces & !NAMESPACES == 0 => bits,
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP | namespaces,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: fd,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size passed, alive for
    // the call; with no CLONE_VM and no stack the child runs on a copy of
    // this process's memory, as after fork (the caller's contract covers
    // the rest).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match rc {
        0 => Ok(Forked::Child),
        pid if pid > 0 => Ok(Forked::Parent(pid as libc::pid_t)),
        _ => Err(io::Error::last_os_error()),
    }
}

/// libc's `fork`.
///
/// # Safety
///
/// The caller must have no other thread, so that the child may do anything
/// after it. (rustix's fork is unsafe too, and skips libc's own
/// bookkeeping.)
pub unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller's contract.
    match unsafe { libc::fork() } {
        0 => Ok(Forked::Child),
        pid if pid > 0 => Ok(Forked::Parent(pid)),
        _ => Err(io::Error::last_os_error()),
    }
}

/// A pipe whose two ends are close-on-exec: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte"))
}

fn cpath(path: &Path) -> io::Result<CString> {
    cstring(path.as_os_str().as_bytes())
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The kernel itself.
#[derive(Debug, Default)]
pub struct RealSyscalls;

impl Syscalls for RealSyscalls {
    fn unshare(&mut self, flags: libc::c_int) -> io::Result<()> {
        // SAFETY: unshare only takes flags; the callers ask for namespaces,
        // never CLONE_FILES (whose descriptor-table split is why rustix's
        // unshare is unsafe too), from a single-threaded process.
        check(unsafe { libc::unshare(flags) })
    }

    fn setns(&mut self, fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
        // SAFETY: setns takes a descriptor, borrowed open for the call,
        // and a namespace type; the helper calls it single-threaded.
        check(unsafe { libc::setns(fd.as_raw_fd(), nstype) })
    }

    fn mount(
        &mut self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: libc::c_ulong,
        data: &str,
    ) -> io::Result<()> {
        // The kernel ignores an empty source or type where none is needed
        // (bind, remount, propagation); rustix passes them as "".
        let data = if data.is_empty() {
            None
        } else {
            Some(cstring(data.as_bytes())?)
        };
        let flags = rustix::mount::MountFlags::from_bits_retain(
            u32::try_from(flags)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mount flags"))?,
        );
        Ok(rustix::mount::mount(
            source,
            target,
            fstype,
            flags,
            data.as_deref(),
        )?)
    }

    fn mount_overlay_fsconfig(&mut self, target: &Path, options: &str) -> io::Result<()> {
        use rustix::mount::{
            fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
            FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags,
        };
        let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
        for option in options.split(',') {
            match option.split_once('=') {
                Some(("lowerdir", layers)) => {
                    for layer in layers.split(':') {
                        fsconfig_set_string(&fs, "lowerdir+", layer)?;
                    }
                }
                Some((key, value)) => fsconfig_set_string(&fs, key, value)?,
                None => fsconfig_set_flag(&fs, option)?,
            }
        }
        fsconfig_create(&fs)?;
        let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())?;
        Ok(move_mount(
            &mnt,
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )?)
    }

    fn join_cgroup(&mut self, file: &Path) -> io::Result<()> {
        use std::io::Write;
        // `tasks` moves the calling thread only: the process goes whole
        // only when that is its one thread.
        if file.file_name() == Some(std::ffi::OsStr::new("tasks")) {
            let threads = std::fs::read_dir("/proc/self/task")?.count();
            if threads != 1 {
                return Err(io::Error::other(format!(
                    "joining through tasks moves one thread, and this process has {threads}"
                )));
            }
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(file)?
            .write_all(b"0")
    }

    fn umount(&mut self, target: &Path, flags: libc::c_int) -> io::Result<()> {
        let flags = rustix::mount::UnmountFlags::from_bits_retain(flags as u32);
        Ok(rustix::mount::unmount(target, flags)?)
    }

    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        Ok(rustix::process::pivot_root(new_root, put_old)?)
    }

    fn chdir(&mut self, dir: &Path) -> io::Result<()> {
        std::env::set_current_dir(dir)
    }

    fn chroot(&mut self, dir: &Path) -> io::Result<()> {
        rustix::process::chroot(dir).map_err(io::Error::from)
    }

    fn mkdir_all(&mut self, dir: &Path, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
    }

    fn mkdir(&mut self, dir: &Path, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(mode).create(dir)
    }

    fn create_file(&mut self, path: &Path, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        // Never through a symlink: a dangling one in an image would
        // otherwise create its target, outside the root.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(mode)
            .open(path)
            .map(drop)
    }

    fn write_file(&mut self, path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(mode)
            .open(path)?
            .write_all(content)
    }

    fn chown(&mut self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        Ok(rustix::fs::chownat(
            rustix::fs::CWD,
            path,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    fn mknod_char(&mut self, path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        mknod(
            path,
            rustix::fs::FileType::CharacterDevice,
            mode,
            (major, minor),
        )
    }

    fn mknod_block(&mut self, path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        mknod(
            path,
            rustix::fs::FileType::BlockDevice,
            mode,
            (major, minor),
        )
    }

    fn symlink(&mut self, target: &str, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn open_in_root(&mut self, root: &Path, rel: &Path) -> io::Result<Option<Pinned>> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let root = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        match openat2_retrying(
            &root,
            rel,
            OFlags::PATH | OFlags::CLOEXEC,
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => Pinned::new(fd).map(Some),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn open_path(&mut self, path: &Path) -> io::Result<Pinned> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Pinned::opened(fd, path))
    }

    fn bind(&mut self, source: &Pinned, target: &Pinned, attrs: BindAttrs) -> io::Result<()> {
        bind::bind(source, target, attrs)
    }

    fn mtime(&mut self, path: &Path) -> io::Result<(i64, i64)> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path)?;
        Ok((meta.mtime(), meta.mtime_nsec()))
    }

    fn read_link(&mut self, path: &Path) -> io::Result<Option<PathBuf>> {
        match std::fs::read_link(path) {
            Ok(target) => Ok(Some(target)),
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::EINVAL | libc::ENOENT | libc::ENOTDIR)
                ) =>
            {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    fn set_mtime(&mut self, path: &Path, mtime: (i64, i64)) -> io::Result<()> {
        set_mtime_of(path, mtime)
    }

    fn stat_mode(&mut self, path: &Path) -> io::Result<Option<Mode>> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(path) {
            Ok(meta) => Ok(Some(meta.mode())),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) if err.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn mount_flags(&mut self, path: &Path) -> io::Result<libc::c_ulong> {
        Ok(bind::mount_flags(path)?)
    }

    fn sethostname(&mut self, name: &str) -> io::Result<()> {
        Ok(rustix::system::sethostname(name.as_bytes())?)
    }

    fn loopback_up(&mut self) -> io::Result<()> {
        use rustix::net::{socket_with, AddressFamily, SocketFlags, SocketType};
        let socket = socket_with(
            AddressFamily::INET,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        // SAFETY: an all-zero ifreq is a valid value (a C struct of
        // integers and arrays).
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own
        // and pass, on the socket we own; rustix has no interface-flags call.
        unsafe {
            check(libc::ioctl(
                socket.as_raw_fd(),
                libc::SIOCGIFFLAGS,
                &mut ifr,
            ))?;
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            check(libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr))
        }
    }

    fn read_file(&mut self, path: &Path) -> io::Result<Option<String>> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn umask(&mut self, mask: u32) {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask));
    }

    fn reset_signals(&mut self) -> io::Result<()> {
        // SAFETY: sigaction/sigprocmask on structs we own, installing only
        // SIG_DFL; invalid signal numbers (SIGKILL, SIGSTOP, the gaps) just
        // fail and are skipped. rustix has no safe sigaction.
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            for signal in 1..=libc::SIGRTMAX() {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
            check(libc::sigprocmask(
                libc::SIG_SETMASK,
                &empty,
                std::ptr::null_mut(),
            ))
        }
    }

    fn setsid(&mut self) -> io::Result<()> {
        rustix::process::setsid()?;
        Ok(())
    }

    fn open_terminal(&mut self, console: libc::c_int, uid: u32) -> io::Result<()> {
        use rustix::fs::{Mode, OFlags};
        use rustix::pty::OpenptFlags;
        // SAFETY: the caller hands over the console socket, which nothing
        // else uses or closes: it is closed when this function returns.
        let console = unsafe { OwnedFd::from_raw_fd(console) };
        let master = rustix::fs::open(
            "/dev/ptmx",
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::pty::unlockpt(&master)?;
        let slave =
            rustix::pty::ioctl_tiocgptpeer(&master, OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
        rustix::fs::fchown(&slave, Some(rustix::fs::Uid::from_raw(uid)), None)?;
        // /dev/console is the terminal too, as with Docker's -t.
        drop(rustix::fs::open(
            "/dev/console",
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?);
        rustix::mount::mount_bind(
            format!("/proc/self/fd/{}", slave.as_raw_fd()),
            "/dev/console",
        )?;
        rustix::stdio::dup2_stdin(&slave)?;
        rustix::stdio::dup2_stdout(&slave)?;
        rustix::stdio::dup2_stderr(&slave)?;
        rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
        send_fd(&console, &master)
    }

    fn setgroups_allowed(&mut self) -> bool {
        std::fs::read_to_string("/proc/self/setgroups").map_or(true, |s| s.trim() != "deny")
    }

    // The container's init is single-threaded: the per-thread calls rustix
    // makes (raw syscalls, not glibc's all-threads wrappers) cover the
    // whole process.

    fn setgroups(&mut self, gids: &[u32]) -> io::Result<()> {
        let gids: Vec<rustix::process::Gid> = gids
            .iter()
            .map(|g| rustix::process::Gid::from_raw(*g))
            .collect();
        Ok(rustix::thread::set_thread_groups(&gids)?)
    }

    fn setresgid(&mut self, gid: u32) -> io::Result<()> {
        let gid = rustix::process::Gid::from_raw(gid);
        Ok(rustix::thread::set_thread_res_gid(gid, gid, gid)?)
    }

    fn setresuid(&mut self, uid: u32) -> io::Result<()> {
        let uid = rustix::process::Uid::from_raw(uid);
        Ok(rustix::thread::set_thread_res_uid(uid, uid, uid)?)
    }

    fn set_keep_caps(&mut self, keep: bool) -> io::Result<()> {
        Ok(rustix::thread::set_keep_capabilities(keep)?)
    }

    fn drop_bounding_cap(&mut self, cap: Capability) -> io::Result<()> {
        caps::drop(None, CapSet::Bounding, cap).map_err(|e| io::Error::other(e.to_string()))
    }

    fn set_caps(&mut self, wanted: &[Capability]) -> io::Result<()> {
        let set: CapsHashSet = wanted.iter().copied().collect();
        let err = |e: caps::errors::CapsError| io::Error::other(e.to_string());
        // Effective first: it must stay a subset of permitted at every step.
        caps::set(None, CapSet::Effective, &set).map_err(err)?;
        caps::set(None, CapSet::Permitted, &set).map_err(err)?;
        // Empty, as Docker has since CVE-2022-24769.
        caps::clear(None, CapSet::Inheritable).map_err(err)
    }

    fn set_no_new_privs(&mut self) -> io::Result<()> {
        Ok(rustix::thread::set_no_new_privs(true)?)
    }

    fn set_rlimit(&mut self, resource: RlimitResource, soft: u64, hard: u64) -> io::Result<()> {
        use rustix::process::Resource;
        // RLIM_INFINITY is rustix's None.
        let finite = |v: u64| (v != libc::RLIM_INFINITY).then_some(v);
        let limit = rustix::process::Rlimit {
            current: finite(soft),
            maximum: finite(hard),
        };
        let resource = match resource {
            RlimitResource::Core => Resource::Core,
            RlimitResource::Cpu => Resource::Cpu,
            RlimitResource::Data => Resource::Data,
            RlimitResource::Fsize => Resource::Fsize,
            RlimitResource::Locks => Resource::Locks,
            RlimitResource::Memlock => Resource::Memlock,
            RlimitResource::Msgqueue => Resource::Msgqueue,
            RlimitResource::Nice => Resource::Nice,
            RlimitResource::Nofile => Resource::Nofile,
            RlimitResource::Nproc => Resource::Nproc,
            RlimitResource::Rss => Resource::Rss,
            RlimitResource::Rtprio => Resource::Rtprio,
            RlimitResource::Rttime => Resource::Rttime,
            RlimitResource::Sigpending => Resource::Sigpending,
            RlimitResource::Stack => Resource::Stack,
        };
        Ok(rustix::process::setrlimit(resource, limit)?)
    }

    fn set_parent_death_signal(&mut self, signal: libc::c_int) -> io::Result<()> {
        let signal = rustix::process::Signal::from_named_raw(signal)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "signal number"))?;
        Ok(rustix::process::set_parent_process_death_signal(Some(
            signal,
        ))?)
    }

    fn apply_seccomp(&mut self, filters: &[BpfProgram]) -> io::Result<()> {
        for filter in filters {
            let instructions: Vec<libc::sock_filter> = filter
                .iter()
                .map(|i| libc::sock_filter {
                    code: i.code,
                    jt: i.jt,
                    jf: i.jf,
                    k: i.k,
                })
                .collect();
            let len = u16::try_from(instructions.len()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a seccomp filter over 65535 instructions",
                )
            })?;
            let program = libc::sock_fprog {
                len,
                filter: instructions.as_ptr().cast_mut(),
            };
            // SAFETY: `program` points at `instructions`, alive and unmoved
            // for the call; the kernel copies the program and keeps no
            // pointer to it. Flags 0: this thread only (the init is
            // single-threaded).
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0 as libc::c_ulong,
                    &program as *const libc::sock_fprog,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    fn close_fds_on_exec(&mut self) -> io::Result<()> {
        cloexec_from(3)
    }

    fn exec(&mut self, path: &Path, argv: &[String], env: &[String]) -> io::Error {
        let to_c = |items: &[String]| -> io::Result<Vec<CString>> {
            items.iter().map(|s| cstring(s.as_bytes())).collect()
        };
        let (path, argv, env) = match (cpath(path), to_c(argv), to_c(env)) {
            (Ok(p), Ok(a), Ok(e)) => (p, a, e),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e,
        };
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        env_ptrs.push(std::ptr::null());
        // SAFETY: NULL-terminated arrays of valid C strings that outlive the
        // call. (rustix's execve is unsafe too, and std's Command would
        // change the process state it inherits.)
        unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
        io::Error::last_os_error()
    }
}

/// Sends descriptor `fd` over the unix socket `socket` (SCM_RIGHTS).
pub fn send_fd(socket: impl AsFd, fd: impl AsFd) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let fds = [fd.as_fd()];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("control buffer too small"));
    }
    rustix::net::sendmsg(
        socket,
        &[io::IoSlice::new(&[0u8])],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}

/// Receives one descriptor sent with [`send_fd`]; `None` at end of file.
pub fn recv_fd(socket: impl AsFd) -> io::Result<Option<OwnedFd>> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut byte = [0u8; 1];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        socket,
        &mut [io::IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if received.bytes == 0 {
        return Ok(None);
    }
    let mut fd = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            for received in fds {
                // The first one; any other is closed as it drops.
                fd.get_or_insert(received);
            }
        }
    }
    Ok(fd)
}

/// A fake kernel that writes every call down as one line and answers queries
/// from what the test told it. It never fails unless told to with
/// [`RecordingSyscalls::fail_on`].
#[derive(Debug, Default)]
pub struct RecordingSyscalls {
    /// One line per call, in order.
    pub calls: Vec<String>,
    /// Answers for [`Syscalls::stat_mode`]; absent paths do not exist.
    pub modes: HashMap<PathBuf, Mode>,
    /// Answers for [`Syscalls::read_file`]; absent paths do not exist.
    pub files: HashMap<PathBuf, String>,
    /// Answers for [`Syscalls::read_link`]: symlinks and their targets
    /// (absent from `modes`: [`Syscalls::open_in_root`] resolves none,
    /// as a symlink leading where nothing is).
    pub links: HashMap<PathBuf, PathBuf>,
    /// Whether setgroups is allowed (default: yes).
    pub setgroups_denied: bool,
    /// A call (line prefix) that fails with the errno given.
    pub fail: Option<(String, i32)>,
    /// The caller lacks CAP_SYS_ADMIN: as the kernel does then,
    /// [`Syscalls::apply_seccomp`] fails with EACCES until
    /// [`Syscalls::set_no_new_privs`] has been called.
    pub no_sys_admin: bool,
}

impl RecordingSyscalls {
    /// Makes every call whose recorded line starts with `prefix` fail with `errno`.
    pub fn fail_on(&mut self, prefix: &str, errno: i32) {
        self.fail = Some((prefix.to_string(), errno));
    }

    fn record(&mut self, line: String) -> io::Result<()> {
        let failing = matches!(&self.fail, Some((prefix, _)) if line.starts_with(prefix.as_str()));
        self.calls.push(line);
        match (&self.fail, failing) {
            (Some((_, errno)), true) => Err(io::Error::from_raw_os_error(*errno)),
            _ => Ok(()),
        }
    }
}

/// `MS_*` flags as `A|B` text, so recorded mount calls read like the man page.
pub fn mount_flags_text(flags: libc::c_ulong) -> String {
    const NAMES: &[(libc::c_ulong, &str)] = &[
        (libc::MS_RDONLY, "RDONLY"),
        (libc::MS_NOSUID, "NOSUID"),
        (libc::MS_NODEV, "NODEV"),
        (libc::MS_NOEXEC, "NOEXEC"),
        (libc::MS_REMOUNT, "REMOUNT"),
        (libc::MS_BIND, "BIND"),
        (libc::MS_REC, "REC"),
        (libc::MS_PRIVATE, "PRIVATE"),
        (libc::MS_STRICTATIME, "STRICTATIME"),
        (libc::MS_RELATIME, "RELATIME"),
        (libc::MS_NOATIME, "NOATIME"),
        (libc::MS_NODIRATIME, "NODIRATIME"),
    ];
    let mut names: Vec<&str> = Vec::new();
    let mut rest = flags;
    for (bit, name) in NAMES {
        if flags & bit != 0 {
            names.push(name);
            rest &= !bit;
        }
    }
    let mut text = names.join("|");
    if rest != 0 {
        if !text.is_empty() {
            text.push('|');
        }
        text.push_str(&format!("{rest:#x}"));
    }
    if text.is_empty() {
        text.push('0');
    }
    text
}

fn clone_flags_text(flags: libc::c_int) -> String {
    const NAMES: &[(libc::c_int, &str)] = &[
        (libc::CLONE_NEWUSER, "NEWUSER"),
        (libc::CLONE_NEWNS, "NEWNS"),
        (libc::CLONE_NEWPID, "NEWPID"),
        (libc::CLONE_NEWUTS, "NEWUTS"),
        (libc::CLONE_NEWIPC, "NEWIPC"),
        (libc::CLONE_NEWNET, "NEWNET"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join("|")
}

impl Syscalls for RecordingSyscalls {
    fn unshare(&mut self, flags: libc::c_int) -> io::Result<()> {
        self.record(format!("unshare {}", clone_flags_text(flags)))
    }

    fn setns(&mut self, fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
        self.record(format!(
            "setns {} {}",
            fd.as_raw_fd(),
            clone_flags_text(nstype)
        ))
    }

    fn mount(
        &mut self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: libc::c_ulong,
        data: &str,
    ) -> io::Result<()> {
        let mut line = format!(
            "mount {} {} {} {}",
            if source.is_empty() { "-" } else { source },
            target.display(),
            if fstype.is_empty() { "-" } else { fstype },
            mount_flags_text(flags)
        );
        if !data.is_empty() {
            line.push(' ');
            line.push_str(data);
        }
        self.record(line)
    }

    fn mount_overlay_fsconfig(&mut self, target: &Path, options: &str) -> io::Result<()> {
        let layers = options
            .split(',')
            .find_map(|o| o.strip_prefix("lowerdir="))
            .map_or(0, |l| l.split(':').count());
        self.record(format!(
            "mount_overlay_fsconfig {} ({layers} lower dirs)",
            target.display()
        ))
    }

    fn join_cgroup(&mut self, file: &Path) -> io::Result<()> {
        self.record(format!("join_cgroup {}", file.display()))
    }

    fn umount(&mut self, target: &Path, flags: libc::c_int) -> io::Result<()> {
        let how = if flags & libc::MNT_DETACH != 0 {
            " DETACH"
        } else {
            ""
        };
        self.record(format!("umount {}{how}", target.display()))
    }

    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        self.record(format!(
            "pivot_root {} {}",
            new_root.display(),
            put_old.display()
        ))
    }

    fn chdir(&mut self, dir: &Path) -> io::Result<()> {
        self.record(format!("chdir {}", dir.display()))
    }

    fn chroot(&mut self, dir: &Path) -> io::Result<()> {
        self.record(format!("chroot {}", dir.display()))
    }

    fn mkdir_all(&mut self, dir: &Path, mode: u32) -> io::Result<()> {
        self.record(format!("mkdir_all {} {mode:o}", dir.display()))
    }

    fn mkdir(&mut self, dir: &Path, mode: u32) -> io::Result<()> {
        self.record(format!("mkdir {} {mode:o}", dir.display()))?;
        // There from now on, for the lookups that follow.
        self.modes.insert(dir.to_path_buf(), libc::S_IFDIR | mode);
        Ok(())
    }

    fn create_file(&mut self, path: &Path, mode: u32) -> io::Result<()> {
        self.record(format!("create_file {} {mode:o}", path.display()))?;
        self.modes.insert(path.to_path_buf(), libc::S_IFREG | mode);
        Ok(())
    }

    fn write_file(&mut self, path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
        // The length only: what is written may be a secret.
        self.record(format!(
            "write_file {} {mode:o} ({} bytes)",
            path.display(),
            content.len()
        ))
    }

    fn chown(&mut self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.record(format!("chown {} {uid}:{gid}", path.display()))
    }

    fn mknod_char(&mut self, path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.record(format!(
            "mknod {} c {major} {minor} {mode:o}",
            path.display()
        ))
    }

    fn mknod_block(&mut self, path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.record(format!(
            "mknod {} b {major} {minor} {mode:o}",
            path.display()
        ))
    }

    fn symlink(&mut self, target: &str, link: &Path) -> io::Result<()> {
        self.record(format!("symlink {} -> {target}", link.display()))
    }

    fn open_in_root(&mut self, root: &Path, rel: &Path) -> io::Result<Option<Pinned>> {
        // `..` as RESOLVE_IN_ROOT takes it, stopping at the root (which is
        // always there); no symlink is followed.
        let mut path = root.to_path_buf();
        for component in rel.components() {
            match component {
                std::path::Component::Normal(name) => path.push(name),
                std::path::Component::ParentDir if path != root => {
                    path.pop();
                }
                _ => {}
            }
        }
        let found = path == root || self.modes.contains_key(&path);
        Ok(found.then(|| Pinned::fake(&path)))
    }

    fn open_path(&mut self, path: &Path) -> io::Result<Pinned> {
        Ok(Pinned::fake(path))
    }

    fn bind(&mut self, source: &Pinned, target: &Pinned, attrs: BindAttrs) -> io::Result<()> {
        let mut flags = Vec::new();
        for (set, name) in [
            (attrs.recursive, "REC"),
            (attrs.read_only, "RDONLY"),
            (attrs.nodev, "NODEV"),
        ] {
            if set {
                flags.push(name);
            }
        }
        self.record(format!(
            "bind {} on {} {}",
            source.shown().display(),
            target.shown().display(),
            if flags.is_empty() {
                "-".to_string()
            } else {
                flags.join("|")
            }
        ))
    }

    fn mtime(&mut self, path: &Path) -> io::Result<(i64, i64)> {
        self.record(format!("mtime {}", path.display()))?;
        Ok((0, 0))
    }

    fn read_link(&mut self, path: &Path) -> io::Result<Option<PathBuf>> {
        self.record(format!("read_link {}", path.display()))?;
        Ok(self.links.get(path).cloned())
    }

    fn set_mtime(&mut self, path: &Path, mtime: (i64, i64)) -> io::Result<()> {
        self.record(format!(
            "set_mtime {} {}.{:09}",
            path.display(),
            mtime.0,
            mtime.1
        ))
    }

    fn stat_mode(&mut self, path: &Path) -> io::Result<Option<Mode>> {
        Ok(self.modes.get(path).copied())
    }

    fn mount_flags(&mut self, _path: &Path) -> io::Result<libc::c_ulong> {
        Ok(libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC)
    }

    fn sethostname(&mut self, name: &str) -> io::Result<()> {
        self.record(format!("sethostname {name}"))
    }

    fn loopback_up(&mut self) -> io::Result<()> {
        self.record("loopback_up".to_string())
    }

    fn read_file(&mut self, path: &Path) -> io::Result<Option<String>> {
        Ok(self.files.get(path).cloned())
    }

    fn umask(&mut self, mask: u32) {
        self.calls.push(format!("umask {mask:03o}"));
    }

    fn reset_signals(&mut self) -> io::Result<()> {
        self.record("reset_signals".to_string())
    }

    fn setsid(&mut self) -> io::Result<()> {
        self.record("setsid".to_string())
    }

    fn open_terminal(&mut self, console: libc::c_int, uid: u32) -> io::Result<()> {
        self.record(format!("open_terminal console={console} uid={uid}"))
    }

    fn setgroups_allowed(&mut self) -> bool {
        self.calls.push("read /proc/self/setgroups".to_string());
        !self.setgroups_denied
    }

    fn setgroups(&mut self, gids: &[u32]) -> io::Result<()> {
        self.record(format!("setgroups {gids:?}"))
    }

    fn setresgid(&mut self, gid: u32) -> io::Result<()> {
        self.record(format!("setresgid {gid}"))
    }

    fn setresuid(&mut self, uid: u32) -> io::Result<()> {
        self.record(format!("setresuid {uid}"))
    }

    fn set_keep_caps(&mut self, keep: bool) -> io::Result<()> {
        self.record(format!("keep_caps {keep}"))
    }

    fn drop_bounding_cap(&mut self, cap: Capability) -> io::Result<()> {
        self.record(format!("capbset_drop {cap}"))
    }

    fn set_caps(&mut self, caps: &[Capability]) -> io::Result<()> {
        let names: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
        self.record(format!("set_caps {}", names.join(",")))
    }

    fn set_no_new_privs(&mut self) -> io::Result<()> {
        self.record("no_new_privs".to_string())
    }

    fn set_rlimit(&mut self, resource: RlimitResource, soft: u64, hard: u64) -> io::Result<()> {
        let name = resource.name().to_ascii_uppercase();
        self.record(format!("rlimit {name} {soft} {hard}"))
    }

    fn set_parent_death_signal(&mut self, signal: libc::c_int) -> io::Result<()> {
        self.record(format!("pdeathsig {signal}"))
    }

    fn apply_seccomp(&mut self, filters: &[BpfProgram]) -> io::Result<()> {
        self.record(format!("seccomp {} filters", filters.len()))?;
        if self.no_sys_admin && !self.calls.iter().any(|c| c == "no_new_privs") {
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        Ok(())
    }

    fn close_fds_on_exec(&mut self) -> io::Result<()> {
        self.record("cloexec fds 3..".to_string())
    }

    fn exec(&mut self, path: &Path, argv: &[String], env: &[String]) -> io::Error {
        match self.record(format!("exec {} {argv:?} {env:?}", path.display())) {
            Err(err) => err,
            // A fake cannot replace the process: report that as the failure.
            Ok(()) => io::Error::other("recorded exec"),
        }
    }
}

#[cfg(test)]
mod tests;
