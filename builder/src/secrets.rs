//! The secrets `RUN --mount=type=secret` can mount (`--secret`), with
//! BuildKit's rules.
//!
//! `--secret` takes `id=ID`, then `src=FILE` (or `source=`), `env=VAR` or
//! `type=file|env`; with neither source, the environment variable `ID` if
//! it is set, else the file `ID` (as buildx). A secret is read when the
//! build starts (at most 500 KiB, BuildKit's limit) and kept in kiln's
//! memory only: the runtime writes it to a tmpfs that only the step's
//! container (its own mount namespace) has, bound read-only on the target
//! ([`kiln_runtime::MemoryFile`]), owned and moded as the mount says
//! (`uid`, `gid`, `mode`; 0:0 and 0400 by default, as BuildKit), or puts
//! it in the step's environment (`env=NAME`). Whatever ends kiln (SIGINT,
//! SIGTERM, SIGKILL), nothing is left to clean up: the container and its
//! tmpfs go with it, and no file kiln writes ever holds a secret.
//!
//! ```
//! use kiln_builder::secrets::Secret;
//! std::env::set_var("KILN_DOC_TOKEN", "t0k3n");
//! let (id, secret) = Secret::parse_flag("id=KILN_DOC_TOKEN").unwrap();
//! assert_eq!(id, "KILN_DOC_TOKEN");
//! assert_eq!(format!("{secret:?}"), "Secret(<5 bytes>)");
//! assert!(Secret::parse_flag("id=x,type=socket").is_err());
//! ```

use std::path::PathBuf;

use kiln_runtime::MemoryFile;

/// BuildKit's limit on a secret's size (`MaxSecretSize`, 500 KiB).
pub const MAX_SECRET_SIZE: u64 = 500 * 1024;

/// One `--secret`'s value.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the value.
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

/// A `--secret` flag that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--secret {flag}: {message}")]
pub struct SecretFlagError {
    pub flag: String,
    pub message: String,
}

/// Where a secret mount puts the secret in a RUN step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretUse {
    /// A file, when the mount has a target or no `env=`.
    pub file: Option<MemoryFile>,
    /// An environment variable (`env=NAME`) and its value.
    pub env: Option<(String, String)>,
}

/// How a mount asks for a secret: the fields of `RUN --mount=type=secret`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretRequest {
    /// The file's path in the container (absolute), when one is wanted.
    pub target: Option<PathBuf>,
    pub env: Option<String>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Secret {
    /// `--secret id=ID[,src=FILE|,env=VAR][,type=file|env]`: the id and the
    /// secret, read now.
    pub fn parse_flag(flag: &str) -> Result<(String, Secret), SecretFlagError> {
        let bad = |message: String| SecretFlagError {
            flag: kiln_reference::redact_credentials(flag),
            message,
        };
        let fields = kiln_parser::mount::csv_fields(flag).map_err(|e| bad(e.to_string()))?;
        let (mut id, mut file, mut env, mut kind) = (None, None, None, None);
        for field in fields {
            let Some((key, value)) = field.split_once('=') else {
                return Err(bad(format!(
                    "invalid field '{field}' must be a key=value pair"
                )));
            };
            match key.to_ascii_lowercase().as_str() {
                "type" if value == "file" || value == "env" => kind = Some(value.to_string()),
                "type" => return Err(bad(format!("unsupported secret type {value:?}"))),
                "id" => id = Some(value.to_string()),
                "source" | "src" => file = Some(value.to_string()),
                "env" => env = Some(value.to_string()),
                other => return Err(bad(format!("unexpected key '{other}' in '{field}'"))),
            }
        }
        let id = id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| bad("secret missing ID".into()))?;
        if kind.as_deref() == Some("env") && env.is_none() {
            env = file.take();
        }
        if env.is_none() && file.is_none() {
            // buildx: the variable ID when it is set, else the file ID.
            if std::env::var_os(&id).is_some() {
                env = Some(id.clone());
            } else {
                file = Some(id.clone());
            }
        }
        let value = match (env, file) {
            // An unset variable is an empty secret, as BuildKit's
            // secrets provider reads it (os.Getenv): a job whose token is
            // not set (a fork's pull request) still builds.
            (Some(var), _) => {
                use std::os::unix::ffi::OsStrExt;
                std::env::var_os(&var)
                    .map(|value| value.as_bytes().to_vec())
                    .unwrap_or_default()
            }
            (None, Some(path)) => read_secret_file(&PathBuf::from(path)).map_err(bad)?,
            (None, None) => return Err(bad("secret missing source".into())),
        };
        if value.len() as u64 > MAX_SECRET_SIZE {
            return Err(bad(format!(
                "secret {id} too big. max size {MAX_SECRET_SIZE} bytes"
            )));
        }
        Ok((id, Secret(value)))
    }

    /// A secret holding `value`.
    pub fn from_bytes(value: impl Into<Vec<u8>>) -> Secret {
        Secret(value.into())
    }

    /// How `request` shows the secret: a file (mode 0400, 0:0 unless the
    /// mount says otherwise), and the variable it names.
    pub fn use_for(&self, request: &SecretRequest) -> SecretUse {
        SecretUse {
            file: request.target.as_ref().map(|target| MemoryFile {
                target: target.clone(),
                content: self.0.clone(),
                mode: request.mode.unwrap_or(0o400),
                uid: request.uid.unwrap_or(0),
                gid: request.gid.unwrap_or(0),
            }),
            env: request
                .env
                .as_ref()
                .map(|name| (name.clone(), String::from_utf8_lossy(&self.0).into_owned())),
        }
    }
}

/// A secret file's bytes, refused over [`MAX_SECRET_SIZE`] before reading.
fn read_secret_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    if meta.len() > MAX_SECRET_SIZE {
        return Err(format!(
            "{} is too big for a secret ({} bytes; at most {MAX_SECRET_SIZE})",
            path.display(),
            meta.len()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_gives_a_file_an_env_var_or_both() {
        let secret = Secret::from_bytes("value");
        let file_only = secret.use_for(&SecretRequest {
            target: Some("/run/secrets/tok".into()),
            ..Default::default()
        });
        assert_eq!(
            file_only.file,
            Some(MemoryFile {
                target: "/run/secrets/tok".into(),
                content: b"value".to_vec(),
                mode: 0o400,
                uid: 0,
                gid: 0,
            })
        );
        assert_eq!(file_only.env, None);
        let both = secret.use_for(&SecretRequest {
            target: Some("/t".into()),
            env: Some("TOKEN".into()),
            mode: Some(0o440),
            uid: Some(1000),
            gid: Some(1001),
        });
        let file = both.file.expect("a file");
        assert_eq!((file.mode, file.uid, file.gid), (0o440, 1000, 1001));
        assert_eq!(both.env, Some(("TOKEN".into(), "value".into())));
    }

    #[test]
    fn flags_follow_buildkit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "from a file").unwrap();
        let (id, secret) = Secret::parse_flag(&format!("id=a,src={}", path.display())).unwrap();
        assert_eq!(
            (id.as_str(), secret.0.as_slice()),
            ("a", &b"from a file"[..])
        );
        std::env::set_var("KILN_SECRET_TEST_VAR", "from env");
        for flag in [
            "id=b,env=KILN_SECRET_TEST_VAR",
            "id=b,type=env,src=KILN_SECRET_TEST_VAR",
            "id=KILN_SECRET_TEST_VAR",
        ] {
            let (_, secret) = Secret::parse_flag(flag).unwrap();
            assert_eq!(secret.0, b"from env", "{flag}");
        }
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_SECRET_SIZE as usize + 1]).unwrap();
        for bad in [
            "src=/x".to_string(),
            "id=c,type=ssh".to_string(),
            "id=c,src=/no/such/file".to_string(),
            "id=c,bogus=1".to_string(),
            "id=c,novalue".to_string(),
            format!("id=c,src={}", big.display()),
        ] {
            assert!(Secret::parse_flag(&bad).is_err(), "{bad}");
        }
    }
}
