//! Errors of [`crate::run`].

use std::path::PathBuf;
use std::time::Duration;

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
}

impl RuntimeError {
    /// The exit code Docker gives for this failure, where it defines one
    /// (127: executable not found, 126: not executable).
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            RuntimeError::Exec { exit_code, .. } => Some(*exit_code),
            _ => None,
        }
    }
}
