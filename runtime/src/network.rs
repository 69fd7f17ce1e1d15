//! RUN's private network ([`Network::Private`](crate::Network::Private)):
//! a network namespace of its own whose only way out is a user-mode NAT,
//! slirp4netns, as rootless Docker, Podman and BuildKit have it.
//!
//! The helper creates the namespace (inside the run's user namespace when
//! there is one) and reports it; the caller then starts slirp4netns on the
//! helper's pid, which joins that namespace, creates `tap0` there
//! (10.0.2.100/24, gateway 10.0.2.2, DNS forwarder 10.0.2.3, MTU 65520)
//! and relays its traffic through ordinary sockets of the host. With
//! `--disable-host-loopback` the gateway does not lead to the host's
//! 127.0.0.1: nothing listening on the host's loopback is reachable, and no
//! host port is forwarded in. The container's init waits until slirp4netns
//! says it is ready (`--ready-fd`), so the command starts with its network
//! up. slirp4netns ends with the run, or with kiln (`--exit-fd`: the pipe's
//! other end is kiln's).
//!
//! Whether this is possible is [`probe`]d, never guessed: slirp4netns must
//! be installed and `/dev/net/tun` openable by this user (slirp4netns opens
//! it inside the namespace with the caller's rights on the node).
//!
//! A build keeps its private networks in a [`NetworkPool`] between runs,
//! as BuildKit's CNI provider keeps a pool of network namespaces: a RUN
//! joins a namespace whose slirp4netns is already up, when one is free,
//! instead of making one and waiting for a new slirp4netns (which cost
//! each RUN about 7 ms and most of the spread of a build of many RUNs).
//! A namespace serves one run at a time, so concurrent RUNs never share
//! one; every process of a run is gone when it ends (its PID namespace
//! is). Not kept: a privileged run's namespace, which it may have
//! reconfigured, and one where a TCP socket is left (in TIME_WAIT, or
//! closing: `no_tcp_left`), which could keep the next run from binding a
//! server's port for a minute. A RUN that talked TCP to the outside
//! usually leaves one; a RUN that only works locally does not.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::error::RuntimeError;

/// The DNS forwarder slirp4netns serves inside the namespace (it asks the
/// host's resolvers).
pub const SLIRP_DNS: &str = "10.0.2.3";

/// The tun device slirp4netns opens in the namespace.
const TUN_DEVICE: &str = "/dev/net/tun";

/// How long slirp4netns may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`probe`] found: the private network is available (through this
/// program) or not (and why).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkSupport {
    /// slirp4netns, when it is installed and can work here.
    pub slirp4netns: Option<PathBuf>,
    /// Why not, when it cannot; or the program used.
    pub detail: String,
}

impl NetworkSupport {
    pub fn available(&self) -> bool {
        self.slirp4netns.is_some()
    }
}

/// Whether a private network can be given to a run on this machine: the
/// program is found in `PATH` (or the usual sbin/bin dirs) and the tun
/// device opens read-write for this user.
pub fn probe() -> NetworkSupport {
    let Some(program) = crate::idmap::find_program("slirp4netns") else {
        return NetworkSupport {
            slirp4netns: None,
            detail: "slirp4netns is not installed".into(),
        };
    };
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
    {
        Ok(_) => NetworkSupport {
            detail: format!("slirp4netns ({})", program.display()),
            slirp4netns: Some(program),
        },
        Err(err) => NetworkSupport {
            slirp4netns: None,
            detail: format!("{TUN_DEVICE} cannot be opened: {err}"),
        },
    }
}

/// slirp4netns's program, or the error saying why a private network is
/// not possible here ([`probe`]).
pub(crate) fn slirp4netns_program() -> Result<PathBuf, RuntimeError> {
    let support = probe();
    support
        .slirp4netns
        .ok_or(RuntimeError::Network(support.detail))
}

/// A running slirp4netns serving one run's network namespace; stopped
/// (killed and reaped) when dropped.
pub struct Slirp {
    child: Child,
    /// Killed already (its pid may be someone else's by now).
    stopped: bool,
    /// Closing it (kiln's end of `--exit-fd`) also ends slirp4netns, which
    /// is what happens when kiln dies.
    _exit: OwnedFd,
}

impl Slirp {
    /// Starts `program` on the network namespace of process `pid` (joining
    /// its user namespace first when `userns`: the one the helper made)
    /// and waits until it is ready. Its messages go to `log`, which a
    /// failure quotes.
    pub fn start(
        program: &Path,
        pid: libc::pid_t,
        userns: bool,
        log: &Path,
    ) -> Result<Slirp, RuntimeError> {
        let fail = |reason: String| RuntimeError::Network(reason);
        let (ready_read, ready_write) = crate::sys::pipe().map_err(|e| fail(e.to_string()))?;
        let (exit_read, exit_write) = crate::sys::pipe().map_err(|e| fail(e.to_string()))?;
        let log_file = File::create(log).map_err(|e| fail(format!("{}: {e}", log.display())))?;
        let mut command = Command::new(program);
        command
            .arg("--configure")
            .arg("--mtu=65520")
            .arg("--disable-host-loopback")
            .arg(format!("--ready-fd={}", ready_write.as_raw_fd()))
            .arg(format!("--exit-fd={}", exit_read.as_raw_fd()))
            .args(userns.then(|| format!("--userns-path=/proc/{pid}/ns/user")))
            .arg(pid.to_string())
            .arg("tap0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        let inherited = [ready_write.as_raw_fd(), exit_read.as_raw_fd()];
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe calls (fcntl) on the two descriptors this
        // function owns until the command is dropped.
        unsafe {
            command.pre_exec(move || {
                for fd in inherited {
                    let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| fail(format!("starting {}: {e}", program.display())))?;
        drop(command);
        drop(ready_write);
        drop(exit_read);
        let mut slirp = Slirp {
            child,
            stopped: false,
            _exit: exit_write,
        };
        if let Err(reason) = wait_ready(&ready_read) {
            slirp.stop();
            let said = std::fs::read_to_string(log).unwrap_or_default();
            let said = said
                .lines()
                .filter(|l| !l.starts_with("sent tapfd") && !l.starts_with("received tapfd"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(fail(format!("slirp4netns {reason}: {said}")));
        }
        Ok(slirp)
    }

    /// Whether slirp4netns has not exited (nor been stopped). One that has
    /// exited is reaped here, and counts as stopped: its pid may be
    /// another process's by now, which `stop` must not wait for.
    fn running(&mut self) -> bool {
        if !self.stopped && !matches!(self.child.try_wait(), Ok(None)) {
            self.stopped = true;
        }
        !self.stopped
    }

    /// Kills slirp4netns and reaps it on a thread of its own: its exit
    /// takes the tap device and the namespace down with it, which waits
    /// for the kernel's network teardown (about 20 ms here), time the run
    /// need not spend.
    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let _ = self.child.kill();
        let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) else {
            return;
        };
        let reaped = std::thread::Builder::new()
            .name("slirp4netns-reaper".into())
            .spawn(move || {
                let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
            });
        if reaped.is_err() {
            let _ = self.child.wait();
        }
    }
}

impl Drop for Slirp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private network ready for a run: the namespace (an open
/// descriptor keeps it alive) and the slirp4netns serving it.
pub(crate) struct PooledNetwork {
    pub(crate) netns: OwnedFd,
    pub(crate) slirp: Slirp,
}

/// Private networks that runs have finished with, for the next runs of
/// the same caller (a build) to join. Dropping the pool stops their
/// slirp4netns and lets the namespaces go.
#[derive(Default)]
pub struct NetworkPool {
    free: Mutex<Vec<PooledNetwork>>,
    /// A run was refused joining one ([`NetworkPool::refuse`]).
    refused: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for NetworkPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkPool")
            .field("free", &self.free())
            .field("refused", &self.refused())
            .finish()
    }
}

impl NetworkPool {
    pub fn new() -> NetworkPool {
        NetworkPool::default()
    }

    /// A free network whose slirp4netns still runs (the others are
    /// dropped), taken out of the pool.
    pub(crate) fn take(&self) -> Option<PooledNetwork> {
        if self.refused() {
            return None;
        }
        let mut free = self.free.lock().ok()?;
        while let Some(mut network) = free.pop() {
            if network.slirp.running() {
                return Some(network);
            }
        }
        None
    }

    /// Gives back a network a run has finished with (dropped, once the
    /// pool is refused).
    pub(crate) fn give_back(&self, network: PooledNetwork) {
        if self.refused() {
            return;
        }
        if let Ok(mut free) = self.free.lock() {
            free.push(network);
        }
    }

    /// A run could not join a network of the pool (`setns` refused where
    /// `unshare` is not): the pool lets its networks go and takes none
    /// back, so that every later run makes its own at once.
    pub(crate) fn refuse(&self) {
        self.refused
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut free) = self.free.lock() {
            free.clear();
        }
    }

    /// Whether a run was refused joining one of its networks.
    pub fn refused(&self) -> bool {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many networks wait in the pool.
    pub fn free(&self) -> usize {
        self.free.lock().map(|free| free.len()).unwrap_or(0)
    }

    /// The pids of the waiting networks' slirp4netns (for tests).
    #[doc(hidden)]
    pub fn slirp_pids(&self) -> Vec<u32> {
        self.free
            .lock()
            .map(|free| free.iter().map(|n| n.slirp.child.id()).collect())
            .unwrap_or_default()
    }
}

/// Whether `sockstat` (a network namespace's `/proc/net/sockstat`) says
/// no TCP socket is left: none in use, none closing (orphaned), none in
/// TIME_WAIT. Once a run's processes are gone, a connection left there
/// could keep the next run from binding a server's port for a minute, or
/// show in its `/proc/net/tcp`. (Read there, not from `/proc/net/tcp`,
/// which walks the host's whole connection table: about 10 ms a read.)
pub(crate) fn no_tcp_left(sockstat: &str) -> bool {
    let Some(tcp) = sockstat.lines().find_map(|l| l.strip_prefix("TCP:")) else {
        return false;
    };
    let fields: Vec<&str> = tcp.split_whitespace().collect();
    let count = |name: &str| {
        fields
            .windows(2)
            .find(|pair| pair[0] == name)
            .and_then(|pair| pair[1].parse::<u64>().ok())
    };
    ["inuse", "orphan", "tw"]
        .iter()
        .all(|name| count(name) == Some(0))
}

/// [`no_tcp_left`] for the calling process's network namespace; an
/// unreadable table counts as a socket left (the namespace is then simply
/// not kept).
pub(crate) fn own_namespace_has_no_tcp_left() -> bool {
    std::fs::read_to_string("/proc/self/net/sockstat").is_ok_and(|text| no_tcp_left(&text))
}

/// Waits for slirp4netns's ready byte on `ready`.
fn wait_ready(ready: &OwnedFd) -> Result<(), String> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let timeout = Timespec {
        tv_sec: READY_TIMEOUT.as_secs() as i64,
        tv_nsec: 0,
    };
    loop {
        let mut fds = [PollFd::new(ready, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) => return Err(format!("was not ready after {READY_TIMEOUT:?}")),
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(err) => return Err(format!("poll: {err}")),
        }
    }
    let mut byte = [0u8; 1];
    match rustix::io::read(ready.as_fd(), &mut byte) {
        Ok(1) => Ok(()),
        Ok(_) => Err("exited before it was ready".into()),
        Err(err) => Err(format!("ready pipe: {err}")),
    }
}

/// The container's resolv.conf on a private network: slirp4netns's DNS
/// forwarder, with the host's search domains and options.
pub fn private_resolv_conf(host: &str) -> String {
    let mut out: String = host
        .lines()
        .filter(|line| {
            let word = line.split_whitespace().next().unwrap_or("");
            matches!(word, "search" | "domain" | "options")
        })
        .map(|line| format!("{line}\n"))
        .collect();
    out.push_str(&format!("nameserver {SLIRP_DNS}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_with_a_tcp_socket_left_is_not_idle() {
        let idle =
            "sockets: used 0\nTCP: inuse 0 orphan 0 tw 0 alloc 1 mem 100\nUDP: inuse 0 mem 0\n";
        assert!(no_tcp_left(idle));
        for busy in [
            "TCP: inuse 0 orphan 0 tw 1 alloc 1 mem 100\n",
            "TCP: inuse 1 orphan 0 tw 0 alloc 1 mem 100\n",
            "TCP: inuse 0 orphan 2 tw 0 alloc 1 mem 100\n",
            "TCP: inuse 0 tw 0\n",
            "UDP: inuse 0 mem 0\n",
            "",
        ] {
            assert!(!no_tcp_left(busy), "{busy}");
        }
    }

    #[test]
    fn private_resolv_conf_keeps_search_and_options_and_uses_slirps_dns() {
        let host = "# comment\nnameserver 127.0.0.53\nsearch example.org\noptions ndots:2\n";
        assert_eq!(
            private_resolv_conf(host),
            "search example.org\noptions ndots:2\nnameserver 10.0.2.3\n"
        );
        assert_eq!(private_resolv_conf(""), "nameserver 10.0.2.3\n");
    }
}
