//! A whole rootless build in one user namespace.
//!
//! A user without root (or root without CAP_SYS_ADMIN) cannot give files
//! other owners, unpack a layer's device nodes as whiteouts, or mount
//! overlay. kiln then runs itself again inside a new user namespace
//! ([`reexec`]): uid and gid 0 there are the user, the user's
//! `/etc/subuid` and `/etc/subgid` ranges follow from 1 (written by
//! newuidmap/newgidmap, see [`crate::idmap`]), and in it kiln holds every
//! capability over what it owns. COPY/ADD ownership, snapshot unpacking,
//! overlay mounts (unprivileged overlay, Linux 5.11+, `userxattr`), cache
//! mounts and layer diffs all happen in there; the store's files belong to
//! the user and the user's subordinate ids, the same on every rootless
//! run. Without subordinate ranges only 0 is mapped: files of other owners
//! cannot be made, and the build says so.
//!
//! How: the outer kiln starts the inner one with `unshare(CLONE_NEWUSER)`
//! between fork and exec; the child then tells its pid on a pipe and waits
//! on another until the outer kiln (a thread of it) has written the id
//! maps, so that the exec happens as uid 0 of the namespace and keeps its
//! capabilities. The outer kiln waits for the inner one and exits with its
//! status. [`INNER_ENV`] marks the inner kiln.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::error::RuntimeError;

/// Set (to `1`) in the environment of the kiln running inside the build's
/// user namespace.
pub const INNER_ENV: &str = "KILN_IN_USERNS";

/// The uid map of the initial user namespace.
const INITIAL_MAP: &str = "0 0 4294967295";

/// Whether this process runs in a user namespace other than the host's
/// (its uid map is not the identity over every id).
pub fn in_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => {
            let lines: Vec<String> = map
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            lines != [INITIAL_MAP]
        }
        // No /proc: nothing says so.
        Err(_) => false,
    }
}

/// The host's uid of this process: itself outside a user namespace, else
/// what uid 0 of the namespace maps to (the user who ran kiln).
pub fn host_uid() -> u32 {
    let own = rustix::process::geteuid().as_raw();
    let Ok(map) = std::fs::read_to_string("/proc/self/uid_map") else {
        return own;
    };
    map.lines()
        .find_map(|line| {
            let fields: Vec<u64> = line
                .split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect();
            match fields.as_slice() {
                [inside, outside, count]
                    if *inside <= u64::from(own) && u64::from(own) < inside + count =>
                {
                    u32::try_from(outside + (u64::from(own) - inside)).ok()
                }
                _ => None,
            }
        })
        .unwrap_or(own)
}

/// Whether this process holds CAP_SYS_ADMIN (mounts and namespaces).
pub fn has_sys_admin() -> bool {
    caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_ADMIN,
    )
    .unwrap_or(false)
}

/// Whether this process holds CAP_SYS_CHROOT (chroot isolation).
pub fn has_sys_chroot() -> bool {
    caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_CHROOT,
    )
    .unwrap_or(false)
}

/// Runs `program args` (kiln itself) in a new user namespace whose maps
/// the caller writes ([`crate::idmap::write_id_maps`]), with `env` added
/// and [`INNER_ENV`] set, and waits for it: its exit code, 128 + N for
/// death by signal N. Signals sent to this process are handed on to it
/// ([`crate::interrupt::forwarded_signals`]); those of the terminal reach
/// it as its foreground process group. Call it before any thread exists.
pub fn reexec(
    program: &std::path::Path,
    args: &[std::ffi::OsString],
    env: &[(String, std::ffi::OsString)],
) -> Result<i32, RuntimeError> {
    let io = |what: &'static str| move |source| RuntimeError::Io { what, source };
    let (pid_read, pid_write) = crate::sys::pipe().map_err(io("pipe"))?;
    let (go_read, go_write) = crate::sys::pipe().map_err(io("pipe"))?;
    let mut command = Command::new(program);
    // A process group of its own: a signal meant for kiln reaches it once,
    // from this process (see `Forwarding`), or from the terminal, whose
    // foreground it becomes.
    command.args(args).env(INNER_ENV, "1").process_group(0);
    for (key, value) in env {
        command.env(key, value);
    }
    let (tell, wait) = (pid_write.as_raw_fd(), go_read.as_raw_fd());
    // The mapper's ends, which the child inherits: it closes them, so that
    // its wait ends (EOF) when the mapper gives up without a byte.
    let (mapper_read, mapper_go) = (pid_read.as_raw_fd(), go_write.as_raw_fd());
    let outer = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: between fork and exec the closure makes only async-signal-
    // safe calls (close, unshare, getpid, write, read, prctl, getppid) on descriptors this
    // function owns until the command is dropped (the mapper's two stay
    // open in this process until the child has read or written on them,
    // which is after the fork); no allocation.
    unsafe {
        command.pre_exec(move || {
            libc::close(mapper_read);
            libc::close(mapper_go);
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let pid = libc::getpid().to_ne_bytes();
            if libc::write(tell, pid.as_ptr().cast(), pid.len()) != pid.len() as isize {
                return Err(std::io::Error::last_os_error());
            }
            let mut go = 0u8;
            if libc::read(wait, (&mut go as *mut u8).cast(), 1) != 1 {
                // The maps could not be written: the outer kiln says why.
                return Err(std::io::Error::from_raw_os_error(libc::ECANCELED));
            }
            // The inner kiln dies with this one, as a killed kiln run by
            // root does (kill -9 of the kiln a CI job started must not leave
            // a build running). Set here, after unshare: gaining the new
            // namespace's capabilities clears the parent-death signal.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != outer {
                // This kiln died before the signal was armed.
                return Err(std::io::Error::from_raw_os_error(libc::ECANCELED));
            }
            Ok(())
        });
    }
    let mapper = std::thread::spawn(move || write_maps_when_told(pid_read, go_write));
    // Caught before the spawn (handlers, unlike ignored signals, are not
    // inherited across exec), forwarded once the child exists.
    let interrupts =
        crate::interrupt::Interrupts::install_for(&crate::interrupt::forwarded_signals());
    let spawned = command.spawn();
    // Only the child's copies of these may stay open: once it has exec'd
    // or died, the mapper's wait ends.
    drop(command);
    drop(pid_write);
    drop(go_read);
    // This kiln writes to the terminal it handed to the inner one; a
    // hangup or quit from the terminal reaches the inner kiln, the
    // terminal's foreground, and one sent to this kiln is handed on.
    // (Set after the spawn: ignored dispositions are inherited.)
    // SAFETY: setting a disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGTTOU, libc::SIG_IGN) };
    let mapped = mapper
        .join()
        .unwrap_or_else(|_| Err(RuntimeError::IdMap("the id map writer panicked".into())));
    let mut child = match (spawned, mapped) {
        (Ok(child), Ok(())) => child,
        (Ok(mut child), Err(err)) => {
            let _ = child.wait();
            return Err(err);
        }
        (Err(_), Err(err)) => return Err(err),
        (Err(source), Ok(())) => {
            return Err(RuntimeError::SpawnHelper {
                program: program.to_path_buf(),
                source,
            })
        }
    };
    let inner = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap_or(-1));
    let _terminal = inner.and_then(Terminal::hand_to);
    if let (Ok(interrupts), Some(inner)) = (interrupts, inner) {
        std::thread::spawn(move || forward(&interrupts, inner));
    }
    let status = child
        .wait()
        .map_err(io("wait for kiln in the user namespace"))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// The signals sent to this kiln (`kill PID`, a CI runner's cancel,
/// Ctrl-C before the terminal was handed over) go to the inner one, as
/// `kiln run` hands them to its container
/// ([`crate::interrupt::forwarded_signals`]): SIGINT and SIGTERM cancel a
/// build, the others reach a run's container; a signal sent to the inner
/// kiln's group reaches it directly and not through here, so each arrives
/// once.
fn forward(interrupts: &crate::interrupt::Interrupts, inner: rustix::process::Pid) {
    while let Some(signal) = interrupts.wait() {
        // SAFETY: kill(2) of a pid we started and still wait for, with a
        // signal number the kernel gave us; rustix names no real-time ones.
        unsafe { libc::kill(inner.as_raw_nonzero().get(), signal) };
    }
}

/// The controlling terminal while the inner kiln is its foreground
/// process group (Ctrl-C, window changes and terminal reads go to it);
/// given back to this kiln's group when dropped.
struct Terminal {
    fd: std::os::fd::BorrowedFd<'static>,
    ours: rustix::process::Pid,
}

impl Terminal {
    /// When this kiln's group is the foreground of the terminal on stdin,
    /// stdout or stderr: that terminal, now `inner`'s.
    fn hand_to(inner: rustix::process::Pid) -> Option<Terminal> {
        let ours = rustix::process::getpgrp();
        let fd = [
            rustix::stdio::stdin(),
            rustix::stdio::stdout(),
            rustix::stdio::stderr(),
        ]
        .into_iter()
        .find(|fd| {
            rustix::termios::isatty(fd) && rustix::termios::tcgetpgrp(fd).ok() == Some(ours)
        })?;
        rustix::termios::tcsetpgrp(fd, inner).ok()?;
        Some(Terminal { fd, ours })
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // SIGTTOU is ignored: a background group may take the terminal back.
        let _ = rustix::termios::tcsetpgrp(self.fd, self.ours);
    }
}

/// Reads the child's pid from `pid_pipe`, writes its id maps, and lets it
/// go on by a byte on `go` (closed without one on failure).
fn write_maps_when_told(pid_pipe: OwnedFd, go: OwnedFd) -> Result<(), RuntimeError> {
    let mut bytes = [0u8; std::mem::size_of::<libc::pid_t>()];
    let mut pid_pipe = std::fs::File::from(pid_pipe);
    pid_pipe.read_exact(&mut bytes).map_err(|e| {
        RuntimeError::IdMap(format!(
            "no new user namespace was made (unshare refused?): {e}"
        ))
    })?;
    let pid = libc::pid_t::from_ne_bytes(bytes);
    crate::idmap::write_id_maps(pid)?;
    let mut go = std::fs::File::from(go);
    go.write_all(&[1]).map_err(|source| RuntimeError::Io {
        what: "resume kiln in the user namespace",
        source,
    })
}

/// Whether this process may make a user namespace: tried, by a forked
/// child that makes one and exits (a seccomp filter or a sysctl may refuse
/// it). `Err` says why not. No program is started: a child that only
/// calls unshare(2) costs a fork, where starting kiln again to try it cost
/// milliseconds on every build.
pub fn probe_new() -> Result<(), String> {
    // SAFETY: the child calls only unshare(2) and _exit(2), both
    // async-signal-safe, so forking a process that may have threads is
    // sound; the parent waits for it below.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let err = std::io::Error::last_os_error();
        return Err(format!("fork to try unshare(CLONE_NEWUSER): {err}"));
    }
    if pid == 0 {
        // SAFETY: see above; the child ends here, with errno as its code.
        unsafe {
            let code = match libc::unshare(libc::CLONE_NEWUSER) {
                0 => 0,
                _ => *libc::__errno_location() & 0xff,
            };
            libc::_exit(code)
        }
    }
    let status = loop {
        let mut status = 0;
        // SAFETY: waits for the child forked above, writing its status into
        // a local.
        match unsafe { libc::waitpid(pid, &mut status, 0) } {
            -1 if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
                continue
            }
            -1 => {
                return Err(format!(
                    "waiting for the unshare(CLONE_NEWUSER) try: {}",
                    std::io::Error::last_os_error()
                ))
            }
            _ => break status,
        }
    };
    match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
        (true, 0) => Ok(()),
        (true, errno) => Err(format!(
            "unshare(CLONE_NEWUSER): {}",
            std::io::Error::from_raw_os_error(errno)
        )),
        _ => Err("unshare(CLONE_NEWUSER): the child trying it was killed".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe answers as unshare(2) does here: it agrees with a
    /// child made with `unshare --user` (util-linux).
    #[test]
    fn probe_agrees_with_unshare() {
        let tool = Command::new("unshare")
            .args(["--user", "true"])
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success());
        let Ok(tool) = tool else {
            eprintln!("SKIPPED: no unshare(1)");
            return;
        };
        assert_eq!(probe_new().is_ok(), tool, "{:?}", probe_new());
    }

    #[test]
    fn host_uid_outside_a_namespace_is_our_own() {
        if !in_user_namespace() {
            assert_eq!(host_uid(), rustix::process::geteuid().as_raw());
        }
    }
}
