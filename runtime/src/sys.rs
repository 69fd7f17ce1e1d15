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
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use seccompiler::BpfProgram;

/// File type and permission bits of a path (`st_mode`), following symlinks.
pub type Mode = u32;

/// Kernel calls made while setting up a container. Paths are absolute.
pub trait Syscalls {
    /// unshare(2) with `CLONE_NEW*` flags.
    fn unshare(&mut self, flags: libc::c_int) -> io::Result<()>;
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
    /// Moves the calling process into a cgroup: writes `0` to its
    /// `cgroup.procs` file `procs`.
    fn join_cgroup(&mut self, procs: &Path) -> io::Result<()>;
    /// umount2(2).
    fn umount(&mut self, target: &Path, flags: libc::c_int) -> io::Result<()>;
    /// pivot_root(2).
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> io::Result<()>;
    /// chdir(2).
    fn chdir(&mut self, dir: &Path) -> io::Result<()>;
    /// mkdir -p with `mode` for the directories it creates.
    fn mkdir_all(&mut self, dir: &Path, mode: u32) -> io::Result<()>;
    /// Creates an empty regular file (a mount point); fails if anything,
    /// even a dangling symlink, is there.
    fn create_file(&mut self, path: &Path, mode: u32) -> io::Result<()>;
    /// mknod(2) of a character device.
    fn mknod_char(&mut self, path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()>;
    /// symlink(2).
    fn symlink(&mut self, target: &str, link: &Path) -> io::Result<()>;
    /// Resolves `rel` inside `root` as if `root` were `/` (openat2 with
    /// RESOLVE_IN_ROOT: symlinks in the image cannot point out of it);
    /// `None` when it does not exist.
    fn resolve_in_root(&mut self, root: &Path, rel: &Path) -> io::Result<Option<PathBuf>>;
    /// stat(2): the mode, or `None` when nothing is there.
    fn stat_mode(&mut self, path: &Path) -> io::Result<Option<Mode>>;
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
    /// setrlimit(RLIMIT_NOFILE).
    fn set_nofile_limit(&mut self, soft: u64, hard: u64) -> io::Result<()>;
    /// prctl(PR_SET_PDEATHSIG).
    fn set_parent_death_signal(&mut self, signal: libc::c_int) -> io::Result<()>;
    /// Installs seccomp filters, in order.
    fn apply_seccomp(&mut self, filters: &[BpfProgram]) -> io::Result<()>;
    /// Marks every descriptor above stderr close-on-exec, so that the
    /// command inherits none that kiln or kiln's caller had open.
    fn close_fds_on_exec(&mut self) -> io::Result<()>;
    /// execve(2); returns only on failure.
    fn exec(&mut self, path: &Path, argv: &[String], env: &[String]) -> io::Error;
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
    // closes nothing, it only sets the flag.
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
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    let last = libc::c_int::try_from(limit.rlim_max).unwrap_or(libc::c_int::MAX);
    for fd in first.min(libc::c_int::MAX as u32) as libc::c_int..last {
        // SAFETY: fcntl on a descriptor number; EBADF for one not open.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
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
        // SAFETY: unshare only takes flags.
        check(unsafe { libc::unshare(flags) })
    }

    fn mount(
        &mut self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: libc::c_ulong,
        data: &str,
    ) -> io::Result<()> {
        let opt = |s: &str| -> io::Result<Option<CString>> {
            if s.is_empty() {
                Ok(None)
            } else {
                cstring(s.as_bytes()).map(Some)
            }
        };
        let (source, fstype, data) = (opt(source)?, opt(fstype)?, opt(data)?);
        let target = cpath(target)?;
        let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: every pointer is NULL or a valid NUL-terminated string that
        // outlives the call.
        check(unsafe {
            libc::mount(
                ptr(&source),
                target.as_ptr(),
                ptr(&fstype),
                flags,
                ptr(&data).cast(),
            )
        })
    }

    fn mount_overlay_fsconfig(&mut self, target: &Path, options: &str) -> io::Result<()> {
        const FSOPEN_CLOEXEC: libc::c_uint = 1;
        const FSCONFIG_SET_FLAG: libc::c_uint = 0;
        const FSCONFIG_SET_STRING: libc::c_uint = 1;
        const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
        const FSMOUNT_CLOEXEC: libc::c_uint = 1;
        const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
        let target = cpath(target)?;
        // SAFETY: raw syscalls with valid C strings that outlive each call,
        // on descriptors this function opens and closes.
        unsafe {
            let fs =
                libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), FSOPEN_CLOEXEC) as libc::c_int;
            if fs < 0 {
                return Err(io::Error::last_os_error());
            }
            let set = |key: &str, value: Option<&str>| -> io::Result<()> {
                let key = cstring(key.as_bytes())?;
                let value = value.map(|v| cstring(v.as_bytes())).transpose()?;
                let (cmd, value_ptr) = match &value {
                    Some(v) => (FSCONFIG_SET_STRING, v.as_ptr()),
                    None => (FSCONFIG_SET_FLAG, std::ptr::null()),
                };
                let rc = libc::syscall(libc::SYS_fsconfig, fs, cmd, key.as_ptr(), value_ptr, 0);
                check(rc as libc::c_int)
            };
            let result = (|| {
                for option in options.split(',') {
                    match option.split_once('=') {
                        Some(("lowerdir", layers)) => {
                            for layer in layers.split(':') {
                                set("lowerdir+", Some(layer))?;
                            }
                        }
                        Some((key, value)) => set(key, Some(value))?,
                        None => set(option, None)?,
                    }
                }
                let rc = libc::syscall(
                    libc::SYS_fsconfig,
                    fs,
                    FSCONFIG_CMD_CREATE,
                    std::ptr::null::<libc::c_char>(),
                    std::ptr::null::<libc::c_char>(),
                    0,
                );
                check(rc as libc::c_int)?;
                let mnt = libc::syscall(libc::SYS_fsmount, fs, FSMOUNT_CLOEXEC, 0) as libc::c_int;
                if mnt < 0 {
                    return Err(io::Error::last_os_error());
                }
                let rc = libc::syscall(
                    libc::SYS_move_mount,
                    mnt,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    target.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                );
                libc::close(mnt);
                check(rc as libc::c_int)
            })();
            libc::close(fs);
            result
        }
    }

    fn join_cgroup(&mut self, procs: &Path) -> io::Result<()> {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .open(procs)?
            .write_all(b"0")
    }

    fn umount(&mut self, target: &Path, flags: libc::c_int) -> io::Result<()> {
        let target = cpath(target)?;
        // SAFETY: valid C string.
        check(unsafe { libc::umount2(target.as_ptr(), flags) })
    }

    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        let (new_root, put_old) = (cpath(new_root)?, cpath(put_old)?);
        // SAFETY: valid C strings; pivot_root has no libc wrapper.
        let rc =
            unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
        check(rc as libc::c_int)
    }

    fn chdir(&mut self, dir: &Path) -> io::Result<()> {
        std::env::set_current_dir(dir)
    }

    fn mkdir_all(&mut self, dir: &Path, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
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

    fn mknod_char(&mut self, path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        let path = cpath(path)?;
        // SAFETY: valid C string; makedev is a pure computation.
        check(unsafe {
            libc::mknod(
                path.as_ptr(),
                libc::S_IFCHR | mode,
                libc::makedev(major, minor),
            )
        })
    }

    fn symlink(&mut self, target: &str, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn resolve_in_root(&mut self, root: &Path, rel: &Path) -> io::Result<Option<PathBuf>> {
        let root_c = cpath(root)?;
        let rel_c = cpath(rel)?;
        // SAFETY: open/openat2/close on descriptors this function owns; the
        // open_how struct is zeroed then filled.
        unsafe {
            let root_fd = libc::open(
                root_c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            );
            if root_fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut how: libc::open_how = std::mem::zeroed();
            how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
            how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
            let fd = libc::syscall(
                libc::SYS_openat2,
                root_fd,
                rel_c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            ) as libc::c_int;
            let result = if fd < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::ENOENT) | Some(libc::ENOTDIR) => Ok(None),
                    _ => Err(err),
                }
            } else {
                let resolved = std::fs::read_link(format!("/proc/self/fd/{fd}"));
                libc::close(fd);
                resolved.map(Some)
            };
            libc::close(root_fd);
            result
        }
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
        let cpath = cpath(path)?;
        // SAFETY: statvfs writes into the zeroed struct we own.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        check(unsafe { libc::statvfs(cpath.as_ptr(), &mut st) })?;
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
            .filter(|(st_flag, _)| st.f_flag & *st_flag != 0)
            .fold(0, |acc, (_, ms)| acc | ms))
    }

    fn sethostname(&mut self, name: &str) -> io::Result<()> {
        // SAFETY: pointer and length describe `name`.
        check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
    }

    fn loopback_up(&mut self) -> io::Result<()> {
        // SAFETY: plain socket/ioctl calls on a zeroed ifreq we own; the fd is
        // closed on every path.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut ifr: libc::ifreq = std::mem::zeroed();
            for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
                *dst = *src as libc::c_char;
            }
            let result = (|| {
                check(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr))?;
                ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
                check(libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr))
            })();
            libc::close(fd);
            result
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
        // SAFETY: umask cannot fail.
        unsafe { libc::umask(mask as libc::mode_t) };
    }

    fn reset_signals(&mut self) -> io::Result<()> {
        // SAFETY: sigaction/sigprocmask on structs we own; invalid signal
        // numbers (SIGKILL, SIGSTOP, the gaps) just fail and are skipped.
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            for signal in 1..libc::SIGRTMAX() {
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
        // SAFETY: no arguments.
        check(unsafe { libc::setsid() })
    }

    fn open_terminal(&mut self, console: libc::c_int, uid: u32) -> io::Result<()> {
        // SAFETY: plain descriptor calls on descriptors this function opens
        // (closed on every path) and the console socket it was given.
        unsafe {
            let master = libc::open(
                c"/dev/ptmx".as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            if master < 0 {
                return Err(io::Error::last_os_error());
            }
            let result = (|| {
                let unlock: libc::c_int = 0;
                check(libc::ioctl(master, libc::TIOCSPTLCK, &unlock))?;
                let slave = libc::ioctl(master, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY);
                if slave < 0 {
                    return Err(io::Error::last_os_error());
                }
                let result = (|| {
                    check(libc::fchown(slave, uid, u32::MAX))?;
                    // /dev/console is the terminal too, as with Docker's -t.
                    let console_path = c"/dev/console";
                    let file = libc::open(
                        console_path.as_ptr(),
                        libc::O_WRONLY
                            | libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        0o600,
                    );
                    if file < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    libc::close(file);
                    let source = cstring(format!("/proc/self/fd/{slave}").as_bytes())?;
                    check(libc::mount(
                        source.as_ptr(),
                        console_path.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ))?;
                    for fd in 0..3 {
                        check(libc::dup2(slave, fd))?;
                    }
                    check(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
                    send_fd(console, master)
                })();
                libc::close(slave);
                result
            })();
            libc::close(master);
            libc::close(console);
            result
        }
    }

    fn setgroups_allowed(&mut self) -> bool {
        std::fs::read_to_string("/proc/self/setgroups").map_or(true, |s| s.trim() != "deny")
    }

    fn setgroups(&mut self, gids: &[u32]) -> io::Result<()> {
        // SAFETY: pointer and length describe `gids`.
        check(unsafe { libc::setgroups(gids.len(), gids.as_ptr()) })
    }

    fn setresgid(&mut self, gid: u32) -> io::Result<()> {
        // SAFETY: plain ids.
        check(unsafe { libc::setresgid(gid, gid, gid) })
    }

    fn setresuid(&mut self, uid: u32) -> io::Result<()> {
        // SAFETY: plain ids.
        check(unsafe { libc::setresuid(uid, uid, uid) })
    }

    fn set_keep_caps(&mut self, keep: bool) -> io::Result<()> {
        // SAFETY: prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, keep as libc::c_ulong, 0, 0, 0) })
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
        // SAFETY: prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
    }

    fn set_nofile_limit(&mut self, soft: u64, hard: u64) -> io::Result<()> {
        let limit = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: pointer to a struct we own.
        check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) })
    }

    fn set_parent_death_signal(&mut self, signal: libc::c_int) -> io::Result<()> {
        // SAFETY: prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) })
    }

    fn apply_seccomp(&mut self, filters: &[BpfProgram]) -> io::Result<()> {
        for filter in filters {
            seccompiler::apply_filter(filter).map_err(|e| io::Error::other(e.to_string()))?;
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
        // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
        unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
        io::Error::last_os_error()
    }
}

/// Sends descriptor `fd` over the unix socket `socket` (SCM_RIGHTS).
pub fn send_fd(socket: libc::c_int, fd: libc::c_int) -> io::Result<()> {
    // SAFETY: the control buffer is sized with CMSG_SPACE for one int and
    // aligned for cmsghdr; every pointer refers to locals that outlive sendmsg.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let space = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
        if libc::sendmsg(socket, &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Receives one descriptor sent with [`send_fd`]; `None` at end of file.
pub fn recv_fd(socket: libc::c_int) -> io::Result<Option<std::os::fd::OwnedFd>> {
    use std::os::fd::FromRawFd;
    // SAFETY: as in send_fd; a received descriptor is new and ours.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let space = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let n = libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if n == 0 || cmsg.is_null() {
            return Ok(None);
        }
        if (*cmsg).cmsg_level != libc::SOL_SOCKET || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Ok(None);
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
        Ok(Some(std::os::fd::OwnedFd::from_raw_fd(fd)))
    }
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
    /// Whether setgroups is allowed (default: yes).
    pub setgroups_denied: bool,
    /// A call (line prefix) that fails with the errno given.
    pub fail: Option<(String, i32)>,
}

impl RecordingSyscalls {
    /// Makes the first call whose recorded line starts with `prefix` fail with `errno`.
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

    fn join_cgroup(&mut self, procs: &Path) -> io::Result<()> {
        self.record(format!("join_cgroup {}", procs.display()))
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

    fn mkdir_all(&mut self, dir: &Path, mode: u32) -> io::Result<()> {
        self.record(format!("mkdir_all {} {mode:o}", dir.display()))
    }

    fn create_file(&mut self, path: &Path, mode: u32) -> io::Result<()> {
        self.record(format!("create_file {} {mode:o}", path.display()))
    }

    fn mknod_char(&mut self, path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.record(format!(
            "mknod {} c {major} {minor} {mode:o}",
            path.display()
        ))
    }

    fn symlink(&mut self, target: &str, link: &Path) -> io::Result<()> {
        self.record(format!("symlink {} -> {target}", link.display()))
    }

    fn resolve_in_root(&mut self, root: &Path, rel: &Path) -> io::Result<Option<PathBuf>> {
        let path = root.join(rel);
        Ok(self.modes.contains_key(&path).then_some(path))
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

    fn set_nofile_limit(&mut self, soft: u64, hard: u64) -> io::Result<()> {
        self.record(format!("rlimit NOFILE {soft} {hard}"))
    }

    fn set_parent_death_signal(&mut self, signal: libc::c_int) -> io::Result<()> {
        self.record(format!("pdeathsig {signal}"))
    }

    fn apply_seccomp(&mut self, filters: &[BpfProgram]) -> io::Result<()> {
        self.record(format!("seccomp {} filters", filters.len()))
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
