//! Errors of [`crate::run`].

use std::path::PathBuf;
use std::time::Duration;

use crate::cgroup::{human_bytes, PIDS_KILL_AFTER};
use crate::spec::ExitStatus;

/// Why a run failed (the container's own non-zero exit is not an error: it is
/// an [`crate::ExitStatus`]).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid run spec: {0}")]
    InvalidSpec(String),
    #[error("volume source {path}: {source}")]
    VolumeSource {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lower dir {path}: {source}")]
    LowerDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting helper {program}: {source}")]
    SpawnHelper {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("user namespace id maps: {0}")]
    IdMap(String),
    #[error(
        "{path} is on an overlay filesystem (a container's own root filesystem?), which \
         overlay cannot use as its upper layer: a run there needs a root directory of its \
         own (the copying snapshotter), or kiln's store (--root, KILN_ROOT) on a volume"
    )]
    UpperOnOverlay { path: PathBuf },
    #[error("unable to find user {user} in image {image}: {reason}")]
    UnknownUser {
        user: String,
        image: String,
        reason: String,
    },
    #[error("exec: {program:?}: {reason}")]
    Exec {
        program: String,
        reason: String,
        exit_code: i32,
    },
    #[error("container setup ({step}): {reason}")]
    Setup { step: String, reason: String },
    #[error("timed out after {0:?}; the container was killed")]
    Timeout(Duration),
    #[error("the runtime helper died without reporting ({0})")]
    HelperDied(String),
    /// The run's private network could not be set up.
    #[error("private network: {0}")]
    Network(String),
    /// The run was canceled ([`crate::interrupt::cancel_runs`]): its
    /// container was killed, or never started.
    #[error("canceled; the container was killed")]
    Canceled,
    #[error("cgroups: {0}")]
    Cgroup(String),
    /// The container reached its pids limit and failed (or, when forks kept
    /// being refused, kiln killed it).
    #[error(
        "the container hit its pids limit of {limit} processes (--pids-limit){}; {status}",
        if *killed {
            format!(" and kiln killed it after forks kept failing for {}s", PIDS_KILL_AFTER.as_secs())
        } else {
            String::new()
        }
    )]
    PidsLimit {
        limit: u64,
        status: ExitStatus,
        killed: bool,
    },
    /// The kernel's OOM killer killed a process of the container at its
    /// memory limit, and the container failed.
    #[error(
        "the container was OOM-killed at its memory limit of {} (--memory): {oom_kills} process(es) killed; {status}",
        human_bytes(*limit)
    )]
    MemoryLimit {
        limit: u64,
        oom_kills: u64,
        status: ExitStatus,
    },
}

impl RuntimeError {
    /// The exit code Docker gives for this failure, where it defines one
    /// (127: executable not found, 126: not executable), or the container's
    /// own code when it failed at a limit (137 for a process the OOM killer
    /// or kiln killed).
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            RuntimeError::Exec { exit_code, .. } => Some(*exit_code),
            RuntimeError::PidsLimit { status, .. } | RuntimeError::MemoryLimit { status, .. } => {
                Some(status.code())
            }
            _ => None,
        }
    }
}
