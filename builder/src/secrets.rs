//! The secrets `RUN --mount=type=secret` can mount (`--secret`).
//!
//! A secret whose value kiln holds (`--secret id=X,env=VAR`) is never
//! written to a filesystem by kiln: the value stays in kiln's memory, and
//! the runtime writes it to a tmpfs that only the step's container (its own
//! mount namespace) has, bound read-only on the target
//! ([`kiln_runtime::MemoryFile`]). Whatever ends kiln (SIGINT, SIGTERM,
//! SIGKILL), nothing is left to clean up: the container and its tmpfs go
//! with it. A secret read from a file (`src=PATH`) is a bind of that file:
//! it is already on disk, and kiln makes no copy of it.

use std::path::PathBuf;

use kiln_runtime::{BindMount, MemoryFile};

/// One `--secret`, ready to be mounted.
#[derive(Clone)]
pub struct Secret(Source);

#[derive(Clone)]
enum Source {
    /// The user's file, bind-mounted as it is.
    File(PathBuf),
    /// The value itself.
    Memory(Vec<u8>),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the value.
        match &self.0 {
            Source::File(path) => f.debug_tuple("Secret::File").field(path).finish(),
            Source::Memory(value) => write!(f, "Secret::Memory(<{} bytes>)", value.len()),
        }
    }
}

/// How a secret reaches a RUN step's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretMount {
    Bind(BindMount),
    Memory(MemoryFile),
}

/// A `--secret` flag that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--secret {flag}: {message}")]
pub struct SecretFlagError {
    pub flag: String,
    pub message: String,
}

impl Secret {
    /// `--secret id=ID,src=FILE` or `id=ID,env=VAR`: the id and the secret.
    /// An env secret's value stays in kiln's memory (see the module docs).
    pub fn parse_flag(flag: &str) -> Result<(String, Secret), SecretFlagError> {
        let bad = |message: String| SecretFlagError {
            flag: flag.to_string(),
            message,
        };
        let fields: std::collections::BTreeMap<&str, &str> = flag
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let id = fields
            .get("id")
            .ok_or_else(|| bad("id= is required".into()))?;
        let secret = match (
            fields.get("src").or_else(|| fields.get("source")),
            fields.get("env"),
        ) {
            (Some(src), _) => {
                let path = PathBuf::from(src);
                if !path.is_file() {
                    return Err(bad(format!("{} is not a file", path.display())));
                }
                Secret::file(path)
            }
            (None, Some(var)) => {
                use std::os::unix::ffi::OsStrExt;
                let value =
                    std::env::var_os(var).ok_or_else(|| bad(format!("${var} is not set")))?;
                Secret::from_bytes(value.as_bytes())
            }
            (None, None) => return Err(bad("src= or env= is required".into())),
        };
        Ok((id.to_string(), secret))
    }

    /// A secret read from `path` (`--secret id=X,src=PATH`).
    pub fn file(path: impl Into<PathBuf>) -> Secret {
        Secret(Source::File(path.into()))
    }

    /// A secret holding `value` in memory only (`--secret id=X,env=VAR`).
    pub fn from_bytes(value: impl Into<Vec<u8>>) -> Secret {
        Secret(Source::Memory(value.into()))
    }

    /// The read-only mount that shows the secret at `target` (absolute, in
    /// the container). A secret held in memory is mode 0600, as the file
    /// kiln used to write for it was.
    pub fn mount_at(&self, target: PathBuf) -> SecretMount {
        match &self.0 {
            Source::File(path) => SecretMount::Bind(BindMount {
                source: path.clone(),
                target,
                read_only: true,
            }),
            Source::Memory(value) => SecretMount::Memory(MemoryFile {
                target,
                content: value.clone(),
                mode: 0o600,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_and_debug() {
        let memory = Secret::from_bytes("value");
        assert_eq!(format!("{memory:?}"), "Secret::Memory(<5 bytes>)");
        assert_eq!(
            memory.mount_at("/run/secrets/tok".into()),
            SecretMount::Memory(MemoryFile {
                target: "/run/secrets/tok".into(),
                content: b"value".to_vec(),
                mode: 0o600,
            })
        );
        let file = Secret::file("/some/where");
        assert_eq!(
            file.mount_at("/t".into()),
            SecretMount::Bind(BindMount {
                source: "/some/where".into(),
                target: "/t".into(),
                read_only: true,
            })
        );
    }
}
