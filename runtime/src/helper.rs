//! The helper process: a fresh exec of the kiln binary, single-threaded, that
//! creates the namespaces, forks the container's init (PID 1 of a new PID
//! namespace, born in the run's cgroup v2 directory where there is one and
//! the kernel allows: see `StartInit`) and waits for it. With chroot
//! isolation it creates none, and kills the init's process group once the
//! init has ended, and, as the subreaper of what the init started, every
//! other descendant (those that left its session too).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::init::container_init;
use crate::protocol::{send, CgroupEntry, ContainerConfig, Failure, Report, FDS_ENV};
use crate::spec::{ExitStatus, Network};
use crate::sys::{self, Forked, RealSyscalls, Syscalls};

/// `config,report,sync[,console][,netns]`: distinct descriptors above
/// stdio. The configuration names the optional ones by number.
fn parse_fds(value: &str) -> Option<Vec<RawFd>> {
    let fds: Vec<RawFd> = value
        .split(',')
        .map(|p| p.parse::<RawFd>().ok())
        .collect::<Option<_>>()?;
    let distinct = fds.iter().enumerate().all(|(i, fd)| !fds[..i].contains(fd));
    ((3..=5).contains(&fds.len()) && distinct && fds.iter().all(|fd| *fd > 2)).then_some(fds)
}

/// The helper's parent-death signal: kiln died (or kiln asks the helper to
/// kill a container whose init's pid it does not know yet). The helper
/// then kills the container's init (and so its whole PID namespace) and
/// exits; under chroot isolation it kills the init's process group, then,
/// once the init has ended, every other descendant, and exits. The init's
/// own parent-death signal is not enough: the kernel clears it when a process changes its
/// credentials, which a RUN's command may do (`su`), and a container
/// that outlived its kiln would keep changing a tree the store then
/// takes back.
pub(crate) const CALLER_DIED_SIGNAL: rustix::process::Signal = rustix::process::Signal::USR2;

/// The container's init, once forked (0 before, and again once it has
/// ended); under chroot isolation [`INIT_ENDED`] once it has ended.
static INIT_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// [`INIT_PID`] under chroot isolation once the init has ended: its
/// descendants are being killed, and the helper exits when that is done.
const INIT_ENDED: i32 = -1;

/// Whether the run has chroot isolation: no PID namespace ends what the
/// init started, so kiln's death does not end the helper at once (see
/// [`on_caller_death`]).
static CHROOT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// [`CALLER_DIED_SIGNAL`]'s handler: kills the init and its process
/// group, then exits. Under chroot isolation, once the init is forked, it
/// returns instead: the killed init's wait returns, and the helper then
/// kills every other descendant (those that left the init's session too,
/// which only a walk of `/proc` finds, not something a handler may do)
/// before it exits. Async-signal-safe: atomic loads, kill(2), _exit(2).
extern "C" fn on_caller_death(_signal: libc::c_int) {
    let pid = INIT_PID.load(std::sync::atomic::Ordering::SeqCst);
    // SAFETY: kill and _exit are async-signal-safe and take integers.
    unsafe {
        if pid > 0 {
            libc::kill(pid, libc::SIGKILL);
            libc::kill(-pid, libc::SIGKILL);
        }
        if pid != 0 && CHROOT.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        libc::_exit(137);
    }
}

/// Blocks (`true`) or unblocks [`CALLER_DIED_SIGNAL`].
fn block_caller_death(block: bool) -> io::Result<()> {
    let how = if block {
        libc::SIG_BLOCK
    } else {
        libc::SIG_UNBLOCK
    };
    // SAFETY: a signal set of our own, initialized by sigemptyset before
    // use; sigprocmask copies it.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, CALLER_DIED_SIGNAL.as_raw());
        libc::sigprocmask(how, &set, std::ptr::null_mut())
    };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Installs [`on_caller_death`] for [`CALLER_DIED_SIGNAL`].
fn handle_caller_death() -> io::Result<()> {
    // SAFETY: a zeroed sigaction with a handler of the right signature,
    // no flags, an empty mask; the kernel copies it.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_caller_death as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(CALLER_DIED_SIGNAL.as_raw(), &action, std::ptr::null_mut())
    };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// The entry point of the hidden helper subcommand. Call it before any thread
/// exists (namespaces cannot be unshared by a multi-threaded process) and exit
/// with the code it returns. The descriptors it talks over are named by the
/// `KILN_RUNTIME_FDS` environment variable that [`crate::run`] sets; started
/// any other way it returns 2 with a message on stderr.
pub fn helper_main() -> i32 {
    let Some(fds) = std::env::var(FDS_ENV).ok().as_deref().and_then(parse_fds) else {
        eprintln!("kiln: the runtime helper is started by kiln itself, not by hand");
        return 2;
    };
    // SAFETY: kiln passed these descriptors to this fresh process, open,
    // one each (parse_fds); nothing else in it owns or closes them.
    let mut owned: Vec<OwnedFd> = fds
        .iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) })
        .collect();
    // The container must not inherit any of them.
    for fd in &owned {
        let _ = rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC);
    }
    let extra = owned.split_off(3.min(owned.len()));
    let mut owned = owned.into_iter().map(File::from);
    let (Some(mut config_pipe), Some(mut report), Some(mut sync)) =
        (owned.next(), owned.next(), owned.next())
    else {
        return 2;
    };
    if let Err(err) = handle_caller_death() {
        return fail(&mut report, "handling kiln's death", err.to_string());
    }
    let mut bytes = Vec::new();
    let config: ContainerConfig = match config_pipe
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
    {
        Ok(config) => config,
        Err(reason) => return fail(&mut report, "read configuration", reason),
    };
    drop(config_pipe);
    // The console socket stays open, by number, for the container's init
    // (ContainerConfig::console_fd), which takes it over; the network
    // namespace to join is kept until it is joined; anything else goes.
    let mut netns = None;
    for fd in extra {
        let number = Some(fd.as_raw_fd());
        if number == config.console_fd {
            let _console = fd.into_raw_fd();
        } else if number == config.netns_fd {
            netns = Some(fd);
        }
    }
    // Ctrl-C reaches the whole foreground process group: the helper must
    // survive it (kiln forwards it to the container), and every signal
    // kiln hands on when it does (a Ctrl-Z, a signal to the group); the
    // container's init resets these before exec.
    // But CALLER_DIED_SIGNAL, whose handler ends the container when kiln
    // dies: one sent to the whole group ends it too.
    let mut ignored = vec![libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];
    if config.forwards_signals {
        let caller_died = CALLER_DIED_SIGNAL.as_raw();
        ignored.extend(
            crate::interrupt::forwarded_signals()
                .into_iter()
                .filter(|s| *s != caller_died),
        );
    }
    for signal in ignored {
        // SAFETY: setting a disposition to SIG_IGN has no preconditions
        // (and no safe equivalent in rustix).
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    let mut sys = RealSyscalls;
    if config.new_userns {
        if let Err(err) = sys.unshare(libc::CLONE_NEWUSER) {
            return fail(&mut report, "new user namespace", err.to_string());
        }
        send(&mut report, &Report::UsernsReady);
        let mut go = [0u8; 1];
        if !matches!(sync.read(&mut go), Ok(1)) {
            // The caller could not write the id maps; it says why.
            return 1;
        }
    }
    // A private network from the caller's pool, slirp4netns up on it;
    // where joining it is refused, a namespace of its own as without one.
    let mut joined = false;
    if let Some(netns) = netns {
        match sys.setns(netns.as_fd(), libc::CLONE_NEWNET) {
            Ok(()) => joined = true,
            Err(err) => {
                let reason = err.to_string();
                send(&mut report, &Report::JoinRefused { reason });
            }
        }
    }
    // The PID namespace is made with the init (`StartInit::fork`).
    let mut flags = libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if config.network != Network::Host && !joined {
        flags |= libc::CLONE_NEWNET;
    }
    // chroot isolation: no namespace at all.
    if !config.chroot {
        if let Err(err) = sys.unshare(flags) {
            return fail(&mut report, "new namespaces", err.to_string());
        }
    }
    if config.network == Network::Private && !joined {
        send(&mut report, &Report::NetnsReady);
        let mut go = [0u8; 1];
        if !matches!(sync.read(&mut go), Ok(1)) {
            // The caller could not start the network; it says why.
            return 1;
        }
    }
    drop(sync);
    // chroot isolation: no PID namespace ends what the command leaves
    // running; as the subreaper, this process gets every orphan of it
    // (setsid or not), which it kills once the init has ended.
    if config.chroot {
        CHROOT.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Err(err) = rustix::process::set_child_subreaper(rustix::process::getpid().into()) {
            return fail(&mut report, "becoming a subreaper", err.to_string());
        }
    }
    let start = StartInit {
        cgroup: config.start_in_cgroup.as_deref(),
        new_pid_namespace: !config.chroot,
    };
    // kiln's death waits until the init's pid is known (the init's reset
    // of its signals unblocks it there).
    if let Err(err) = block_caller_death(true) {
        return fail(&mut report, "handling kiln's death", err.to_string());
    }
    // SAFETY: this process is single-threaded (a fresh exec).
    let (forked, cgroup) = match unsafe { start.fork(&mut sys) } {
        Ok(forked) => forked,
        Err(err) => return fail(&mut report, "fork", err.to_string()),
    };
    let Forked::Parent(pid) = forked else {
        let mut config = config;
        if cgroup == Some(CgroupEntry::StartedIn) {
            config.started_in_cgroup();
        }
        let mut child_report = report;
        let failure = container_init(&mut sys, &config, &mut |r| send(&mut child_report, &r));
        let code = match &failure {
            Failure::Exec { code, .. } => *code,
            _ => 1,
        };
        send(&mut child_report, &Report::Failed(failure));
        // SAFETY: leaving the forked child without running the parent's
        // atexit handlers or flushing its copies of buffers: nothing else
        // runs after it.
        unsafe { libc::_exit(code) };
    };
    INIT_PID.store(pid, std::sync::atomic::Ordering::SeqCst);
    if let Err(err) = block_caller_death(false) {
        // SAFETY: kill(2) of the init just forked, by its pid.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        return fail(&mut report, "handling kiln's death", err.to_string());
    }
    send(&mut report, &Report::Started { pid, cgroup });
    // Ended, not yet reaped: its pid is still its own until it is, so
    // kiln's death meanwhile kills nothing else. Under chroot isolation
    // kiln's death from here on leaves the helper to finish killing the
    // init's descendants.
    wait_until_ended(pid);
    let ended = if config.chroot { INIT_ENDED } else { 0 };
    INIT_PID.store(ended, std::sync::atomic::Ordering::SeqCst);
    if config.chroot {
        // No PID namespace ends them: what the command left running in
        // its session (the init's setsid made its process group) goes
        // now, while the unreaped init keeps the group's id its own.
        if let Some(group) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
    let status = wait_for(pid);
    // This process is still in the run's network namespace: whether the
    // next run may have it (see `crate::NetworkPool`).
    if config.network == Network::Private && !crate::network::own_namespace_has_no_tcp_left() {
        send(&mut report, &Report::NetworkHeld);
    }
    if config.chroot {
        // And every other descendant, which holds the output pipe open.
        kill_descendants();
    }
    // Inside a user namespace the container's files may belong to ids only
    // this namespace can remove.
    for path in &config.remove_after_exit {
        remove_tree(path);
    }
    send(&mut report, &Report::Exited(status));
    let _ = report.flush();
    0
}

/// Kills every descendant of this process (a subreaper: orphans of its
/// descendants are its children) and reaps them, until none is left (one
/// may fork while the others die).
fn kill_descendants() {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    for _ in 0..100 {
        let found = descendants_of(me);
        if found.is_empty() {
            return;
        }
        for pid in found {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        // Reap what died (children, and orphans reparented here).
        while let Ok(Some(_)) = rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG)
        {
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The live processes below `root` in the process tree, read from
/// `/proc/*/stat` (parent pids are readable for every process, with no
/// ptrace access to them).
fn descendants_of(root: libc::pid_t) -> Vec<libc::pid_t> {
    let mut parents: Vec<(libc::pid_t, libc::pid_t)> = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Some((state, ppid)) = kiln_owner::state_and_parent(pid) else {
            continue;
        };
        // A zombie is dead already; its parent reaps it.
        if let (false, Ok(pid), Ok(ppid)) = (state == 'Z', pid.try_into(), ppid.try_into()) {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut index = 0;
    while index < found.len() {
        let parent = found[index];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        index += 1;
    }
    found.remove(0);
    found
}

/// How the container's init is forked.
struct StartInit<'a> {
    /// The run's cgroup v2 directory, to start it in where the kernel
    /// allows ([`sys::fork_into_cgroup`]).
    cgroup: Option<&'a Path>,
    /// As PID 1 of a new PID namespace (not with chroot isolation).
    new_pid_namespace: bool,
}

impl StartInit<'_> {
    /// Forks: born in the cgroup v2 directory where the kernel allows,
    /// else by a plain fork, the init then joining that directory as any
    /// other. Returns which side this is, and how the init gets into the
    /// directory.
    ///
    /// The PID namespace is made here, by the call that makes the init, not
    /// by an earlier `unshare`: a `clone3` that the cgroup checks refuse
    /// has already taken the new namespace's first pid, after which that
    /// namespace takes no process (a fork in it fails with ENOMEM). A
    /// namespace made by the refused `clone3` goes with it.
    ///
    /// # Safety
    ///
    /// The caller must have no other thread.
    unsafe fn fork(
        &self,
        sys: &mut impl Syscalls,
    ) -> std::io::Result<(Forked, Option<CgroupEntry>)> {
        let namespace = if self.new_pid_namespace {
            libc::CLONE_NEWPID
        } else {
            0
        };
        let mut entry = None;
        if let Some(dir) = self.cgroup {
            let refused = match rustix::fs::open(
                dir,
                rustix::fs::OFlags::PATH
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            ) {
                // SAFETY: the caller's contract.
                Ok(fd) => match unsafe { sys::fork_into_cgroup(fd.as_fd(), namespace) } {
                    Ok(forked) => return Ok((forked, Some(CgroupEntry::StartedIn))),
                    Err(err) => format!("clone3 into {}: {err}", dir.display()),
                },
                Err(err) => format!("opening {}: {err}", dir.display()),
            };
            entry = Some(CgroupEntry::Joins { refused });
        }
        let context = |err: std::io::Error| match &entry {
            Some(CgroupEntry::Joins { refused }) => {
                std::io::Error::new(err.kind(), format!("{err} (after {refused})"))
            }
            _ => err,
        };
        if namespace != 0 {
            sys.unshare(namespace).map_err(|err| {
                context(std::io::Error::new(
                    err.kind(),
                    format!("new PID namespace: {err}"),
                ))
            })?;
        }
        // SAFETY: the caller's contract.
        let forked = unsafe { sys::fork() }.map_err(context)?;
        Ok((forked, entry))
    }
}

fn fail(report: &mut File, step: &str, reason: String) -> i32 {
    send(
        report,
        &Report::Failed(Failure::Setup {
            step: step.to_string(),
            reason,
        }),
    );
    1
}

/// Waits until the child `pid` has ended, leaving it unreaped (`WNOWAIT`):
/// its pid names no other process until [`wait_for`] reaps it.
fn wait_until_ended(pid: libc::pid_t) {
    use rustix::process::{waitid, Pid, WaitId, WaitIdOptions};
    let Some(pid) = Pid::from_raw(pid) else {
        return;
    };
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
    while let Err(rustix::io::Errno::INTR) = waitid(WaitId::Pid(pid), options) {}
}

fn wait_for(pid: libc::pid_t) -> ExitStatus {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return ExitStatus::exited(255);
    };
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, status))) => {
                if let Some(code) = status.exit_status() {
                    return ExitStatus::exited(code);
                }
                if let Some(signal) = status.terminating_signal() {
                    return ExitStatus::signaled(signal);
                }
            }
            Ok(None) | Err(rustix::io::Errno::INTR) => {}
            // ECHILD: nothing left to wait for; report a generic failure.
            Err(_) => return ExitStatus::exited(255),
        }
    }
}

/// Removes a tree (a run's state, work or discarded upper dir) with
/// `kiln_tree`: by descriptor, never through a symlink a process still
/// running there may put in, directories without their owner's rights
/// (overlay's work dir holds a mode-000 one) made writable on the way. A
/// failure is logged: the run's outcome does not depend on it.
pub(crate) fn remove_tree(path: &Path) {
    if let Err(err) = kiln_tree::remove_tree(path) {
        tracing::warn!("removing {}: {err}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::{remove_cgroup, Layout};

    /// [`StartInit::fork`] in a child of the test process (so the PID
    /// namespace it makes is that child's): the init is PID 1 of a new PID
    /// namespace both when the kernel starts it in its cgroup2 directory
    /// and when it refuses (a directory that is no cgroup2 one, EBADF,
    /// refused after the kernel took the child's pid): the refused `clone3`
    /// leaves no used-up namespace behind, and the plain fork after it
    /// works.
    #[test]
    fn the_init_is_pid_1_whether_or_not_it_starts_in_its_cgroup() {
        kiln_testsupport::require_root!("making cgroups and PID namespaces");
        let Some(unified) = Layout::probe().unified else {
            eprintln!("skipped: no cgroup2 hierarchy is mounted");
            return;
        };
        let not_a_cgroup = std::env::temp_dir();
        let dir = unified.join(format!("kiln-test-{}-start", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let wait = |pid: libc::pid_t| {
            let mut status = 0;
            // SAFETY: waiting for our own child, into a local.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            match libc::WIFEXITED(status) {
                true => libc::WEXITSTATUS(status),
                false => 255,
            }
        };
        let mut codes = Vec::new();
        let cases = [(dir.as_path(), true), (not_a_cgroup.as_path(), false)];
        for (cgroup, started_in) in cases {
            // SAFETY: glibc's fork leaves malloc usable in the child, which
            // touches nothing else another thread of the test harness may
            // hold (no stdout, no lock of std) before its _exit.
            let code = match unsafe { sys::fork() }.unwrap() {
                Forked::Parent(pid) => wait(pid),
                Forked::Child => {
                    let start = StartInit {
                        cgroup: Some(cgroup),
                        new_pid_namespace: true,
                    };
                    // SAFETY: this child of a fork has one thread.
                    let code = match unsafe { start.fork(&mut RealSyscalls) } {
                        Err(_) => 10,
                        Ok((Forked::Child, _)) => {
                            match rustix::process::getpid().as_raw_nonzero().get() {
                                1 => 0,
                                _ => 11,
                            }
                        }
                        Ok((Forked::Parent(pid), entry)) => match (wait(pid), entry, started_in) {
                            (0, Some(CgroupEntry::StartedIn), true) => 0,
                            // No clone3 (ENOSYS), or none with a cgroup (E2BIG).
                            (0, Some(CgroupEntry::Joins { refused }), true)
                                if refused.ends_with("(os error 38)")
                                    || refused.ends_with("(os error 7)") =>
                            {
                                13
                            }
                            (0, Some(CgroupEntry::Joins { .. }), false) => 0,
                            (0, _, _) => 12,
                            (code, _, _) => code,
                        },
                    };
                    // SAFETY: _exit ends this child; nothing of it is flushed.
                    unsafe { libc::_exit(code) }
                }
            };
            codes.push((cgroup.to_path_buf(), code));
        }
        remove_cgroup(&dir, std::time::Duration::from_secs(5)).unwrap();
        if codes.first().is_some_and(|(_, code)| *code == 13) {
            eprintln!("skipped: this kernel (or a seccomp profile) has no clone3 into a cgroup");
            return;
        }
        // 10: forking failed; 11: the init was not PID 1; 12: the wrong way
        // into the cgroup.
        assert!(codes.iter().all(|(_, code)| *code == 0), "{codes:?}");
    }

    #[test]
    fn fds_env_is_three_to_five_descriptors_above_stdio() {
        assert_eq!(parse_fds("3,4,5"), Some(vec![3, 4, 5]));
        assert_eq!(parse_fds("3,4,5,9"), Some(vec![3, 4, 5, 9]));
        assert_eq!(parse_fds("3,4,5,9,10"), Some(vec![3, 4, 5, 9, 10]));
        assert_eq!(parse_fds("3,4"), None);
        assert_eq!(parse_fds("3,4,5,6,7,8"), None);
        assert_eq!(parse_fds("1,4,5"), None);
        assert_eq!(parse_fds("a,4,5"), None);
        assert_eq!(parse_fds("3,4,3"), None);
    }
}
