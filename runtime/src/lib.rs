//! kiln-runtime: run one process in an isolated root filesystem.
//!
//! Owns namespaces, the overlay root, pivot_root, /proc /dev /sys, hosts and
//! resolv.conf, users and groups, capabilities, rlimits, the run's cgroups
//! (pids and memory limits, the device allow list: [`cgroup`], [`devices`])
//! and the exit status.
//! It is never called from inside a multi-threaded process: the kiln binary
//! re-executes itself as a helper before any thread exists.
//!
//! # How a run goes
//!
//! [`run`] (in the caller, which may have threads) makes the run's cgroups
//! ([`cgroup::setup`]), prepares a state dir, starts the helper —
//! `HelperCommand::program` with its args, i.e. kiln's hidden subcommand,
//! whose entry point calls [`helper_main`] — and sends it the container's
//! configuration as JSON on a pipe. The helper (a fresh, single-threaded
//! exec) creates a user namespace when kiln is not root (the caller then
//! writes the id maps, through newuidmap/newgidmap when the user has
//! subordinate ids), new PID, UTS, IPC and (for [`Network::None`] and
//! [`Network::Private`]) network namespaces (for a private one the caller
//! then starts slirp4netns on it: [`network`]), and forks the container's init, PID 1, which joins the run's
//! cgroups, creates its own mount namespace, mounts the overlay root and the
//! rest (see [`init`]), pivots into it, drops privileges and execs the
//! command. The helper waits for it and reports its exit status, which
//! [`run`] returns (death by signal N gives 128+N; a failure at a pids or
//! memory limit is an error naming the limit). The cgroups are removed
//! afterwards. [`interrupt::cancel_runs`] (an interrupted kiln) kills every
//! running container and refuses new runs: each ends with
//! [`RuntimeError::Canceled`].
//!
//! Mount points the image lacks (/proc, /etc/hosts, volume targets…) come
//! from a bottom lower layer kiln writes in the state dir, so bind mounts
//! never leave empty files in the upper dir. The working directory, when
//! missing, is created in the upper dir, as BuildKit does for RUN.
//!
//! # Where things go
//!
//! - `RunSpec::state_dir` (caller's, e.g. `<root>/containers/<id>-<owner>-…`): overlay's
//!   work dir and, with [`UpperDir::Discard`], the upper dir. Created, and
//!   removed when the run ends (a non-empty one is refused, left as it is).
//! - A private directory on a tmpfs (`/run/kiln`, `$XDG_RUNTIME_DIR/kiln` or
//!   `/dev/shm/kiln-<uid>`, else the state dir): the overlay mount point, the
//!   mount-point layer and the hosts/resolv.conf/hostname files. Creating
//!   and deleting these on a slow disk was most of the cost of a short run.
//!   Named with the owning process; [`remove_dead_scratch`] removes those
//!   of killed runs.
//! - [`MemoryFile`]s (build secrets): written by the container's init to a
//!   tmpfs it mounts in its own mount namespace (on an empty directory of
//!   the scratch dir, which the host sees empty), then bound read-only on
//!   their targets. They exist nowhere else and go with the container.
//! - A kept upper dir is mounted `volatile` (no syncfs at unmount: the
//!   builder reads it back at once and fsyncs the layer it makes).
//!
//! More layers than fit one page of mount options go through the new mount
//! API (`fsconfig` `lowerdir+`, Linux 6.8+); overlay's limit is 500.
//!
//! # Example
//!
//! ```no_run
//! use kiln_runtime::{run, HelperCommand, RunSpec, UpperDir, HELPER_SUBCOMMAND};
//! # fn main() -> Result<(), kiln_runtime::RuntimeError> {
//! let mut spec = RunSpec::new(
//!     vec!["/var/lib/kiln/snapshots/sha256-abc".into()],
//!     "/var/lib/kiln/containers/1234".into(),
//!     vec!["/bin/sh".into(), "-c".into(), "echo hi > /greeting".into()],
//! );
//! spec.upper = UpperDir::Keep("/var/lib/kiln/containers-upper/1234".into());
//! // The kiln binary's hidden subcommand calls kiln_runtime::helper_main().
//! let status = run(spec, &HelperCommand::current_exe(&[HELPER_SUBCOMMAND]))?;
//! assert_eq!(status.code(), 0);
//! # Ok(())
//! # }
//! ```

// Unsafe code only in the modules that say why at each block: what rustix
// has no safe call for (fork, exec, signal dispositions, unshare, bpf,
// close_range, an interface-flags ioctl, descriptors handed over by
// number).
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod binfmt;
pub mod cgroup;
#[allow(unsafe_code)]
pub mod devices;
pub mod error;
#[allow(unsafe_code)]
pub mod helper;
pub mod idmap;
pub mod init;
#[allow(unsafe_code)]
pub mod interrupt;
#[allow(unsafe_code)]
pub mod network;
#[allow(unsafe_code)]
pub mod parent;
pub mod protocol;
pub mod scratch;
pub mod security;
pub mod spec;
#[allow(unsafe_code)]
pub mod sys;
pub mod user;
#[allow(unsafe_code)]
pub mod userns;

pub use error::RuntimeError;
pub use helper::helper_main;
pub use network::NetworkPool;
pub use parent::{run, upper_dir_support, MAX_LOWER_DIRS};
pub use scratch::{dead_scratch, remove_dead_scratch, RemovedScratch};
pub use spec::{
    BindMount, ExitStatus, HelperCommand, Limit, Limits, MemoryFile, Network, Rlimit,
    RlimitResource, RunSpec, Snapshotter, Streams, TmpfsMount, UpperDir, DEFAULT_SHM_SIZE,
    HELPER_SUBCOMMAND,
};
pub use sys::pipe;
