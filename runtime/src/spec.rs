//! What the caller asks for: [`RunSpec`], and how to re-execute the kiln
//! binary as the helper: [`HelperCommand`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What happens to the overlay's upper dir (the container's writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpperDir {
    /// Writes land in this directory, which is kept afterwards (the builder
    /// turns it into a layer). Created when missing, and refused when not
    /// empty (what the init made for mount points is removed from it
    /// afterwards: a whiteout left there by an earlier run would go with
    /// it). It must be on the same filesystem as [`RunSpec::state_dir`],
    /// which holds overlay's work dir.
    Keep(PathBuf),
    /// Writes go to a directory under the state dir, removed afterwards.
    Discard,
}

/// The container's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// The host's network namespace.
    Host,
    /// A new network namespace with only `lo`, up.
    None,
    /// A new network namespace with `lo` and `tap0`, whose traffic goes
    /// out through slirp4netns's NAT: outbound connections and DNS work,
    /// the host's loopback and ports are out of reach (see
    /// [`crate::network`]). What `docker build` gives RUN by default.
    Private,
}

/// A host path bind-mounted into the container (`-v HOST:CTR[:ro]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// Host path; must exist.
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub target: PathBuf,
    pub read_only: bool,
    /// A directory `source` is in that a container may change while this
    /// run starts (a cache mount another RUN holds, whose `source=` names
    /// a path in it): the source is then opened from it, resolved inside
    /// it, at the moment it is bound, so a directory on the way swapped
    /// for a symlink to the host's cannot lead there.
    #[serde(default)]
    pub within: Option<PathBuf>,
}

/// An empty tmpfs mounted in the container (`RUN --mount=type=tmpfs`):
/// mode 1777, nosuid, as BuildKit mounts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsMount {
    /// Absolute path inside the container.
    pub target: PathBuf,
    /// Its size limit in bytes; none is the kernel's default (half the RAM).
    pub size: Option<u64>,
    /// Mounted read-only (`ro`/`readonly`), as BuildKit mounts it then: an
    /// empty directory nothing can write to, nor make a mount point in.
    #[serde(default)]
    pub read_only: bool,
}

/// A resource limit (`--ulimit NAME=SOFT[:HARD]`) set on the container's
/// process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: RlimitResource,
    pub soft: u64,
    pub hard: u64,
}

/// The resources `--ulimit` names, as docker's (go-units) list has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RlimitResource {
    Core,
    Cpu,
    Data,
    Fsize,
    Locks,
    Memlock,
    Msgqueue,
    Nice,
    Nofile,
    Nproc,
    Rss,
    Rtprio,
    Rttime,
    Sigpending,
    Stack,
}

impl RlimitResource {
    /// Every resource with its name, in docker's spelling.
    pub const ALL: &'static [(&'static str, RlimitResource)] = &[
        ("core", RlimitResource::Core),
        ("cpu", RlimitResource::Cpu),
        ("data", RlimitResource::Data),
        ("fsize", RlimitResource::Fsize),
        ("locks", RlimitResource::Locks),
        ("memlock", RlimitResource::Memlock),
        ("msgqueue", RlimitResource::Msgqueue),
        ("nice", RlimitResource::Nice),
        ("nofile", RlimitResource::Nofile),
        ("nproc", RlimitResource::Nproc),
        ("rss", RlimitResource::Rss),
        ("rtprio", RlimitResource::Rtprio),
        ("rttime", RlimitResource::Rttime),
        ("sigpending", RlimitResource::Sigpending),
        ("stack", RlimitResource::Stack),
    ];

    /// The resource docker calls `name`.
    pub fn from_name(name: &str) -> Option<RlimitResource> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
    }

    /// Its name, as docker spells it.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, r)| *r == self)
            .map_or("?", |(n, _)| n)
    }
}

impl Rlimit {
    /// Parses docker's `NAME=SOFT[:HARD]` (`-1` is unlimited; one value
    /// sets both).
    pub fn parse(spec: &str) -> Result<Rlimit, String> {
        let (name, values) = spec
            .split_once('=')
            .ok_or_else(|| format!("invalid ulimit {spec:?}: expected NAME=SOFT[:HARD]"))?;
        let resource = RlimitResource::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = RlimitResource::ALL.iter().map(|(n, _)| *n).collect();
            format!(
                "invalid ulimit {spec:?}: unknown resource {name:?} (one of {})",
                names.join(", ")
            )
        })?;
        let value = |v: &str| -> Result<u64, String> {
            if v == "-1" {
                return Ok(libc::RLIM_INFINITY);
            }
            v.parse::<u64>()
                .map_err(|_| format!("invalid ulimit {spec:?}: {v:?} is not a number"))
        };
        let (soft, hard) = match values.split_once(':') {
            Some((soft, hard)) => (value(soft)?, value(hard)?),
            None => (value(values)?, value(values)?),
        };
        if soft > hard {
            return Err(format!(
                "invalid ulimit {spec:?}: the soft limit is above the hard one"
            ));
        }
        Ok(Rlimit {
            resource,
            soft,
            hard,
        })
    }
}

/// A read-only file whose content only kiln holds (a build secret). The
/// container's init writes it to a tmpfs mounted in the container's own
/// mount namespace, then binds it on `target`: no filesystem the host can
/// see ever has it, and it is gone with the container, however kiln ends.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryFile {
    /// Absolute path inside the container.
    pub target: PathBuf,
    pub content: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
    /// Owner (user, group) in the container.
    pub uid: u32,
    pub gid: u32,
}

impl std::fmt::Debug for MemoryFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the content: specs and configs get logged.
        f.debug_struct("MemoryFile")
            .field("target", &self.target)
            .field("content", &format_args!("<{} bytes>", self.content.len()))
            .field("mode", &format_args!("{:o}", self.mode))
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .finish()
    }
}

/// The container's standard streams.
#[derive(Debug)]
pub enum Streams {
    /// Each stream as given: inherited, null, or one end of a pipe/file the
    /// caller owns (to capture a RUN step's log, pass a pipe's write end).
    Stdio {
        stdin: Stdio,
        stdout: Stdio,
        stderr: Stdio,
    },
    /// A new pseudo-terminal is the container's stdin, stdout and stderr and
    /// its controlling terminal; kiln copies it to its own stdout, and its
    /// own stdin to it when `forward_stdin` (`-i`). When kiln's stdin is a
    /// terminal it is put in raw mode meanwhile.
    Terminal { forward_stdin: bool },
}

impl Default for Streams {
    fn default() -> Self {
        Streams::Stdio {
            stdin: Stdio::null(),
            stdout: Stdio::inherit(),
            stderr: Stdio::inherit(),
        }
    }
}

/// One resource limit of a run, as the caller asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Limit {
    /// kiln's default (see [`crate::cgroup::DEFAULT_PIDS_LIMIT`] and
    /// [`crate::cgroup::default_memory_limit`]): applied where cgroups
    /// allow, left out (and said so by `kiln info`) where they do not.
    #[default]
    Default,
    /// No limit.
    Unlimited,
    /// This value (processes, or bytes); the run fails when it cannot be
    /// enforced.
    Max(u64),
}

impl Limit {
    /// Whether the caller named a value (a limit that must be enforced).
    pub fn is_explicit(&self) -> bool {
        matches!(self, Limit::Max(_))
    }
}

/// The cgroup limits of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Limits {
    /// Processes and threads in the container (`pids.max`).
    pub pids: Limit,
    /// Memory in bytes (`memory.limit_in_bytes` / `memory.max`); swap is
    /// not allowed on top of it.
    pub memory: Limit,
}

/// How a build step's root filesystem is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Snapshotter {
    /// Overlay: the lower layers stacked under an upper dir that gets the
    /// step's writes.
    #[default]
    Overlay,
    /// BuildKit's "native", buildah's vfs: the lower layers copied into a
    /// scratch directory, the step's changes found by comparing it with
    /// them afterwards. Where overlay cannot be mounted (the store on
    /// overlayfs).
    Copy,
}

impl Snapshotter {
    /// The name `kiln info` and the warnings use.
    pub fn name(self) -> &'static str {
        match self {
            Snapshotter::Overlay => "overlay",
            Snapshotter::Copy => "copy",
        }
    }

    /// The snapshotter for a store at `root`: overlay where it can keep
    /// upper dirs there ([`crate::upper_dir_support`]), else copy, with
    /// the reason.
    pub fn for_store(root: &std::path::Path) -> (Snapshotter, Result<String, String>) {
        match crate::upper_dir_support(root) {
            Ok(why) => (Snapshotter::Overlay, Ok(why)),
            Err(why) => (Snapshotter::Copy, Err(why)),
        }
    }
}

/// /dev/shm's size unless a run says otherwise (Docker's and BuildKit's
/// 64 MiB).
pub const DEFAULT_SHM_SIZE: u64 = 64 * 1024 * 1024;

/// Everything needed to run one process in a container.
#[derive(Debug)]
pub struct RunSpec {
    /// The image's layers, bottom (base layer) first, as overlay lower dirs.
    /// May be empty (`FROM scratch`).
    pub lower_dirs: Vec<PathBuf>,
    /// Where the container's writes go.
    pub upper: UpperDir,
    /// A directory for this run's state (the overlay mount point, work dir,
    /// the hosts/resolv.conf/hostname files, …). Created if missing, must be
    /// empty, and is removed when the run ends. In the store this is
    /// `<root>/containers/<id>-<owner>-<nanos>-<n>` (the owner: `kiln run`).
    pub state_dir: PathBuf,
    /// The image's name, for error messages ("no user x in image busybox").
    pub image: String,
    /// The command, as Docker computes it from Entrypoint and Cmd. A first
    /// word without '/' is looked up in the container's `PATH`.
    pub argv: Vec<String>,
    /// `KEY=value` pairs. `PATH` and `HOME` get Docker's defaults when absent.
    pub env: Vec<String>,
    /// Working directory inside the container; created (as root, mode 0755,
    /// in the upper dir) when missing. Empty means "/".
    pub cwd: String,
    /// `USER`: "" (root), `name`, `uid`, `name:group`, `uid:gid`…, resolved
    /// in the image's /etc/passwd and /etc/group.
    pub user: String,
    pub hostname: String,
    pub network: Network,
    /// Where a [`Network::Private`] run takes a network that is already up
    /// and gives it back when it ends (see [`crate::NetworkPool`]); `None`:
    /// a new one each run. Not used when the run makes a user namespace
    /// of its own (a namespace owned by another could not be joined).
    pub networks: Option<std::sync::Arc<crate::NetworkPool>>,
    pub mounts: Vec<BindMount>,
    /// Files mounted from memory, after [`RunSpec::mounts`].
    pub memory_files: Vec<MemoryFile>,
    /// Empty tmpfs mounts; with the bind mounts, mounted shallowest first.
    pub tmpfs: Vec<TmpfsMount>,
    /// The size of /dev/shm in bytes (Docker's default: 64 MiB).
    pub shm_size: u64,
    /// More `/etc/hosts` lines: (name, address), as `--add-host`.
    pub extra_hosts: Vec<(String, String)>,
    /// Resource limits (an `nofile` one replaces [`RunSpec::nofile`]).
    pub rlimits: Vec<Rlimit>,
    /// BuildKit's `security.insecure` (Docker's privileged, as far as a
    /// step goes): every capability the bounding set has is kept, no
    /// seccomp filter, no masked or read-only paths.
    pub privileged: bool,
    pub streams: Streams,
    /// Killed (SIGKILL) when it runs longer; the run then fails with
    /// [`crate::RuntimeError::Timeout`].
    pub timeout: Option<Duration>,
    /// Install the default seccomp profile (Docker's `--security-opt
    /// seccomp=unconfined` is `false`).
    pub seccomp: bool,
    /// RLIMIT_NOFILE (soft and hard). Without privileges it is capped to
    /// kiln's own hard limit.
    pub nofile: u64,
    /// Hand the signals this process receives on to the container while it
    /// runs ([`crate::interrupt::forwarded_signals`]), and follow SIGWINCH
    /// with a terminal (installs process-wide handlers for the duration:
    /// meant for `kiln run`, not for a multi-threaded builder).
    pub forward_signals: bool,
    /// pids and memory limits, enforced through cgroups (see
    /// [`crate::cgroup`]).
    pub limits: Limits,
    /// A plain directory to run in instead of an overlay of
    /// [`RunSpec::lower_dirs`] and [`RunSpec::upper`] (the copying
    /// snapshotter, where overlay cannot be mounted): bound as the root,
    /// written in place. Mount points the init has to create in it are
    /// removed afterwards, their parents' mtimes kept, so that the
    /// directory differs from before only by what the command did.
    pub root_dir: Option<PathBuf>,
    /// No namespaces at all (`--isolation chroot`, where none can be
    /// made): the command runs chrooted into [`RunSpec::root_dir`] (which
    /// it needs), as the step's user, sharing the caller's network, PID
    /// space and mounts; nothing is mounted (no /proc, /dev, hosts or
    /// volumes: a spec with mounts, tmpfs, files from memory or a network
    /// other than the host's is refused). Its process group is killed
    /// when it ends.
    pub chroot: bool,
}

impl RunSpec {
    /// A spec with Docker's defaults: root, "/", network none, seccomp on,
    /// nofile 1048576, discarded upper dir, stdin null, output inherited,
    /// kiln's default pids and memory limits.
    pub fn new(lower_dirs: Vec<PathBuf>, state_dir: PathBuf, argv: Vec<String>) -> Self {
        RunSpec {
            lower_dirs,
            upper: UpperDir::Discard,
            state_dir,
            image: String::new(),
            argv,
            env: Vec::new(),
            cwd: String::new(),
            user: String::new(),
            hostname: "kiln".to_string(),
            network: Network::None,
            networks: None,
            mounts: Vec::new(),
            memory_files: Vec::new(),
            tmpfs: Vec::new(),
            shm_size: DEFAULT_SHM_SIZE,
            extra_hosts: Vec::new(),
            rlimits: Vec::new(),
            privileged: false,
            streams: Streams::default(),
            timeout: None,
            seccomp: true,
            nofile: 1_048_576,
            forward_signals: false,
            limits: Limits::default(),
            root_dir: None,
            chroot: false,
        }
    }
}

/// The first argument that makes a binary the runtime's helper: kiln's
/// hidden subcommand, which the test helper binaries take too. Their entry
/// point calls [`crate::helper_main`] when they see it.
pub const HELPER_SUBCOMMAND: &str = "__runtime-helper";

/// How to start the helper: the kiln binary (or any binary whose entry point
/// calls [`crate::helper_main`] for these arguments, before any thread exists).
#[derive(Debug, Clone)]
pub struct HelperCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl HelperCommand {
    /// `program` [`HELPER_SUBCOMMAND`].
    pub fn subcommand_of(program: impl Into<PathBuf>) -> Self {
        HelperCommand {
            program: program.into(),
            args: vec![OsString::from(HELPER_SUBCOMMAND)],
        }
    }

    /// The running executable (`/proc/self/exe`) with `args`, e.g. the
    /// hidden subcommand's name.
    pub fn current_exe(args: &[&str]) -> Self {
        HelperCommand {
            program: PathBuf::from("/proc/self/exe"),
            args: args.iter().map(OsString::from).collect(),
        }
    }
}

/// How the container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    code: i32,
    signal: Option<i32>,
}

impl ExitStatus {
    /// Exited with `code`.
    pub fn exited(code: i32) -> Self {
        ExitStatus { code, signal: None }
    }

    /// Killed by `signal`: the code is 128 + signal, as in a shell or Docker.
    pub fn signaled(signal: i32) -> Self {
        ExitStatus {
            code: 128 + signal,
            signal: Some(signal),
        }
    }

    /// The exit code; 128 + N for death by signal N.
    pub fn code(&self) -> i32 {
        self.code
    }

    /// The signal that killed it, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.signal
    }

    pub fn success(&self) -> bool {
        self.code == 0 && self.signal.is_none()
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.signal {
            Some(signal) => write!(f, "killed by signal {signal} (exit code {})", self.code),
            None => write!(f, "exit code {}", self.code),
        }
    }
}
