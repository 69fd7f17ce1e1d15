//! What the caller and the helper tell each other: the container's
//! configuration (JSON, caller → helper, on a pipe) and reports (JSON lines,
//! helper and container init → caller, on another pipe).

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::spec::{
    BindMount, ExitStatus, MemoryFile, Network, Rlimit, TmpfsMount, DEFAULT_SHM_SIZE,
};

fn default_shm_size() -> u64 {
    DEFAULT_SHM_SIZE
}

/// The environment variable naming the helper's descriptors:
/// `config,report,sync[,console]` (see [`crate::helper_main`]).
pub const FDS_ENV: &str = "KILN_RUNTIME_FDS";

/// Everything the helper and the container's init need, resolved by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// Without the host's root: kiln is not root, or runs in a user
    /// namespace of its own (a rootless build): unprivileged overlay
    /// (`userxattr`), devices bound rather than made, no cgroups.
    pub rootless: bool,
    /// The helper makes a new user namespace (kiln is not root where it
    /// runs) and the caller writes its id maps.
    #[serde(default)]
    pub new_userns: bool,
    /// Overlay mount point (host path, under the state dir).
    pub rootfs: PathBuf,
    /// overlay mount options: lowerdir, upperdir, workdir (and userxattr).
    pub overlay_options: String,
    /// Host directory holding `hosts`, `resolv.conf` and `hostname`.
    pub etc_dir: PathBuf,
    pub image: String,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub hostname: String,
    pub network: Network,
    pub mounts: Vec<BindMount>,
    /// Written to a tmpfs the init mounts on `memory_dir` (an empty host
    /// directory) in its own mount namespace, then bound on their targets.
    pub memory_files: Vec<MemoryFile>,
    pub memory_dir: PathBuf,
    pub terminal: bool,
    /// The caller hands signals on to the container
    /// ([`crate::interrupt::forwarded_signals`]): the helper, in the
    /// caller's process group, ignores them (a Ctrl-Z or a signal to the
    /// whole group would stop or kill it otherwise).
    #[serde(default)]
    pub forwards_signals: bool,
    /// With a terminal: the unix socket (a descriptor inherited by the
    /// helper) on which the init sends the pty master to kiln.
    pub console_fd: Option<i32>,
    /// A network namespace to join (a descriptor inherited by the helper)
    /// instead of making one: a private network from the caller's pool,
    /// its slirp4netns already up. The helper closes it once joined.
    #[serde(default)]
    pub netns_fd: Option<i32>,
    pub seccomp: bool,
    pub nofile: (u64, u64),
    /// Resource limits besides nofile, set before the uid change.
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// Empty tmpfs mounts (with the bind mounts, shallowest first).
    #[serde(default)]
    pub tmpfs: Vec<TmpfsMount>,
    /// /dev/shm's size in bytes.
    #[serde(default = "default_shm_size")]
    pub shm_size: u64,
    /// Keep every capability, no masked paths (seccomp is off as well:
    /// `seccomp` is false then).
    #[serde(default)]
    pub privileged: bool,
    /// Privileged, with the host's root: how many loop device nodes
    /// (`/dev/loop0` on) the init makes beside BuildKit's other insecure
    /// devices; the host's first free loop device plus 8, as BuildKit.
    #[serde(default)]
    pub loop_devices: u32,
    /// Removed by the helper once the container is gone (a discarded upper
    /// dir, overlay's work dir), from inside the user namespace if any.
    pub remove_after_exit: Vec<PathBuf>,
    /// Files the init writes `0` into first to join the run's cgroups
    /// (`tasks` on v1, `cgroup.procs` on v2), so that the run's limits and
    /// device restriction hold for everything it does.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// The run's cgroup v2 directory, whose join file is in `cgroups`: the
    /// helper starts the init in it where the kernel allows
    /// ([`crate::sys::fork_into_cgroup`]), and the init then does not write
    /// that file.
    #[serde(default)]
    pub start_in_cgroup: Option<PathBuf>,
    /// No device cgroup restricts the container: mount its root, volumes
    /// and /dev `nodev` (the standard nodes are then bound from the host).
    #[serde(default)]
    pub nodev: bool,
    /// A plain directory bound as the root instead of the overlay (see
    /// `RunSpec::root_dir`); mount points made in it keep their parents'
    /// mtimes.
    #[serde(default)]
    pub root_dir: Option<PathBuf>,
    /// No namespaces: chroot into `root_dir` (see `RunSpec::chroot`).
    #[serde(default)]
    pub chroot: bool,
}

impl ContainerConfig {
    /// The init was started in [`Self::start_in_cgroup`]: it does not
    /// write that directory's join file.
    pub fn started_in_cgroup(&mut self) {
        if let Some(dir) = &self.start_in_cgroup {
            self.cgroups
                .retain(|file| file.parent() != Some(dir.as_path()));
        }
    }
}

/// Why a container did not start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// The user or group is not in the image.
    UnknownUser { user: String, reason: String },
    /// The executable could not be started: `code` is Docker's (127 not
    /// found, 126 not executable).
    Exec {
        program: String,
        reason: String,
        code: i32,
    },
    /// A setup step failed (mount, namespace, credentials…).
    Setup { step: String, reason: String },
}

/// One line on the report pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Report {
    /// The helper has its user namespace; the caller writes the id maps and
    /// then one byte on the sync pipe.
    UsernsReady,
    /// The helper has its new network namespace (a private network it was
    /// given none to join for): the caller starts slirp4netns on it and
    /// then writes one byte on the sync pipe.
    NetnsReady,
    /// Joining the private network it was given was refused (a seccomp
    /// profile or LSM that allows `unshare` but not `setns`): the helper
    /// makes a namespace of its own instead and sends
    /// [`Report::NetnsReady`] next, as when it is given none.
    JoinRefused {
        reason: String,
    },
    /// The container's init process exists, with this pid on the host.
    Started {
        pid: i32,
        /// How it got into the run's cgroup v2 directory, if there is one.
        #[serde(default)]
        cgroup: Option<CgroupEntry>,
    },
    /// The container's init had to create this entry for a mount point (a
    /// path relative to the root, resolved: no symlink on the way), in the
    /// upper or root dir; reported parents first. The caller removes it
    /// afterwards if it is still empty.
    StubCreated {
        path: PathBuf,
    },
    /// The container got something weaker than usual (a bound /proc),
    /// and why.
    Fallback {
        what: String,
    },
    Failed(Failure),
    /// The run's private network namespace still holds a TCP socket (in
    /// TIME_WAIT, or closing): it is not given to another run, which could
    /// not bind that port for a minute. Sent before [`Report::Exited`].
    NetworkHeld,
    Exited(ExitStatus),
}

/// How the container's init got into the run's cgroup v2 directory
/// ([`ContainerConfig::start_in_cgroup`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupEntry {
    /// Started in it (`clone3`'s `CLONE_INTO_CGROUP`).
    StartedIn,
    /// The kernel refused that (why): the init joins it through
    /// `cgroup.procs`.
    Joins { refused: String },
}

/// Writes one report as one `write(2)` so lines from two processes never mix.
pub fn send(out: &mut impl Write, report: &Report) {
    if let Ok(mut line) = serde_json::to_vec(report) {
        line.push(b'\n');
        // Nobody to tell if the caller is gone: it then tears everything down.
        let _ = out.write_all(&line);
    }
}
