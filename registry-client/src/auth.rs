//! Authentication: `WWW-Authenticate` challenges, credentials from Docker's
//! `config.json` (with `credHelpers` and `credsStore`), and writing that file
//! for `kiln login` / `kiln logout`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;

use crate::reference::DOCKER_HUB;

/// The key Docker uses for Docker Hub in `config.json`.
pub const DOCKER_HUB_CONFIG_KEY: &str = "https://index.docker.io/v1/";

/// What a registry asked for in `WWW-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic {
        realm: Option<String>,
    },
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parses one `WWW-Authenticate` header value. Unknown schemes give `None`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header
            .split_once(char::is_whitespace)
            .unwrap_or((header, ""));
        let params = parse_auth_params(rest);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Challenge::Basic {
                realm: params.get("realm").cloned(),
            }),
            "bearer" => Some(Challenge::Bearer {
                realm: params.get("realm")?.clone(),
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            }),
            _ => None,
        }
    }
}

/// `key="quoted, value", key2=token` → map (keys lowercased).
fn parse_auth_params(input: &str) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    let mut chars = input.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                value.push(escaped);
                            }
                        }
                        '"' => break,
                        _ => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    params
}

/// A credential for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    UsernamePassword {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken` in `config.json`).
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::UsernamePassword { username, .. } => {
                write!(f, "UsernamePassword({username:?}, <redacted>)")
            }
            Credential::IdentityToken(_) => write!(f, "IdentityToken(<redacted>)"),
        }
    }
}

impl Credential {
    /// `Basic base64(user:pass)`, for basic auth and for token requests.
    pub fn basic_header(&self) -> Option<String> {
        match self {
            Credential::UsernamePassword { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            Credential::IdentityToken(_) => None,
        }
    }
}

/// Failures reading or writing Docker's credential configuration.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("reading {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path} is not valid JSON: {cause}")]
    Parse {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("writing {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("credentials for {registry} in {path}: {reason}")]
    Lookup {
        registry: String,
        path: PathBuf,
        reason: String,
    },
    #[error("credential helper docker-credential-{helper} for {registry}: {reason}")]
    Helper {
        helper: String,
        registry: String,
        reason: String,
    },
    #[error("no home directory: set DOCKER_CONFIG or HOME")]
    NoConfigDir,
}

/// Docker's client configuration directory: `$DOCKER_CONFIG`, else `~/.docker`.
pub fn default_config_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker"))
}

/// The key under which `registry`'s credentials live in `config.json`.
pub fn config_key(registry: &str) -> &str {
    if registry == DOCKER_HUB || registry == "index.docker.io" || registry == "registry-1.docker.io"
    {
        DOCKER_HUB_CONFIG_KEY
    } else {
        registry
    }
}

/// Docker's `config.json` in one directory: reads credentials (directly or
/// through `credHelpers` / `credsStore`) and stores them for login/logout.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    dir: PathBuf,
}

impl DockerConfig {
    /// The configuration in `dir` (which need not exist yet).
    pub fn new(dir: impl Into<PathBuf>) -> DockerConfig {
        DockerConfig { dir: dir.into() }
    }

    /// The configuration in `$DOCKER_CONFIG` or `~/.docker`.
    pub fn from_env() -> Result<DockerConfig, CredentialError> {
        default_config_dir()
            .map(DockerConfig::new)
            .ok_or(CredentialError::NoConfigDir)
    }

    /// Path of `config.json`.
    pub fn path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// The credential stored for `registry`, if any. Runs a credential
    /// helper when the configuration names one (this blocks).
    pub fn credential(&self, registry: &str) -> Result<Option<Credential>, CredentialError> {
        let path = self.path();
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(cause) => return Err(CredentialError::Read { path, cause }),
        };
        let key = config_key(registry);
        match docker_credential::get_credential_from_reader(std::io::BufReader::new(file), key) {
            Ok(docker_credential::DockerCredential::UsernamePassword(username, password)) => {
                Ok(Some(Credential::UsernamePassword { username, password }))
            }
            Ok(docker_credential::DockerCredential::IdentityToken(token)) => {
                Ok(Some(Credential::IdentityToken(token)))
            }
            Err(docker_credential::CredentialRetrievalError::NoCredentialConfigured) => Ok(None),
            // A helper that does not know the server answers "credentials not found".
            Err(docker_credential::CredentialRetrievalError::HelperFailure { stdout, .. })
                if stdout.contains("credentials not found") =>
            {
                Ok(None)
            }
            Err(err) => Err(CredentialError::Lookup {
                registry: registry.to_string(),
                path,
                reason: err.to_string(),
            }),
        }
    }

    fn load(&self) -> Result<serde_json::Map<String, serde_json::Value>, CredentialError> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Default::default()),
            Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(serde_json::Value::Object(map)) => Ok(map),
                Ok(_) => Err(CredentialError::Lookup {
                    registry: String::new(),
                    path,
                    reason: "top level is not a JSON object".into(),
                }),
                Err(cause) => Err(CredentialError::Parse { path, cause }),
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(cause) => Err(CredentialError::Read { path, cause }),
        }
    }

    /// Writes atomically with mode 0600, keeping every other setting.
    fn save(
        &self,
        config: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), CredentialError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.path();
        let write_err = |cause| CredentialError::Write {
            path: path.clone(),
            cause,
        };
        std::fs::create_dir_all(&self.dir).map_err(write_err)?;
        let tmp = self
            .dir
            .join(format!(".config.json.{}.tmp", std::process::id()));
        let mut bytes = serde_json::to_vec_pretty(config).map_err(|e| write_err(e.into()))?;
        bytes.push(b'\n');
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_err)?;
        file.write_all(&bytes).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        std::fs::rename(&tmp, &path).map_err(write_err)?;
        Ok(())
    }

    /// The helper configured for `key` (`credHelpers`, then `credsStore`).
    fn helper_for(
        config: &serde_json::Map<String, serde_json::Value>,
        key: &str,
    ) -> Option<String> {
        let helpers = config
            .get("credHelpers")
            .and_then(|h| h.get(key))
            .and_then(|h| h.as_str());
        let store = config.get("credsStore").and_then(|s| s.as_str());
        helpers
            .or(store)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
    }

    /// Stores `username`/`password` for `registry`, through its credential
    /// helper when one is configured, else in `auths` of `config.json`.
    pub fn store(
        &self,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<(), CredentialError> {
        let key = config_key(registry);
        let mut config = self.load()?;
        if let Some(helper) = Self::helper_for(&config, key) {
            let input =
                serde_json::json!({"ServerURL": key, "Username": username, "Secret": password});
            return run_helper(&helper, "store", &input.to_string(), registry);
        }
        let auth =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        let auths = config
            .entry("auths")
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        if !auths.is_object() {
            *auths = serde_json::Value::Object(Default::default());
        }
        if let Some(auths) = auths.as_object_mut() {
            auths.insert(key.to_string(), serde_json::json!({ "auth": auth }));
        }
        self.save(&config)
    }

    /// Removes `registry`'s credentials. Returns false when there were none.
    pub fn erase(&self, registry: &str) -> Result<bool, CredentialError> {
        let key = config_key(registry);
        let mut config = self.load()?;
        // A helper's erase, then the `auths` entries too (docker's native
        // store erases its file entry as well; a lookup reads `auths`
        // before the helper, so a leftover there would still be used).
        let helper = Self::helper_for(&config, key);
        if let Some(helper) = &helper {
            run_helper(helper, "erase", key, registry)?;
        }
        // As `docker logout`, and then some: every key a lookup of the
        // host finds (with a scheme or a path, as older logins saved it),
        // not only the four forms docker tries.
        let host = |k: &str| -> String {
            let bare = (k.strip_prefix("https://"))
                .or_else(|| k.strip_prefix("http://"))
                .unwrap_or(k);
            bare.split_once('/')
                .map_or(bare, |(host, _)| host)
                .to_string()
        };
        let wanted = host(key);
        let removed = config
            .get_mut("auths")
            .and_then(|a| a.as_object_mut())
            .map(|auths| {
                let before = auths.len();
                auths.retain(|k, _| k != key && host(k) != wanted);
                auths.len() < before
            })
            .unwrap_or(false);
        if removed {
            self.save(&config)?;
        }
        Ok(removed || helper.is_some())
    }
}

fn run_helper(
    helper: &str,
    verb: &str,
    input: &str,
    registry: &str,
) -> Result<(), CredentialError> {
    let err = |reason: String| CredentialError::Helper {
        helper: helper.to_string(),
        registry: registry.to_string(),
        reason,
    };
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg(verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        match stdin.write_all(input.as_bytes()) {
            // A helper may exit without reading its input (an `erase` that
            // needs none): its exit status says whether it worked.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => return Err(err(format!("writing to it: {e}"))),
            Ok(()) => {}
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|e| err(format!("waiting for it: {e}")))?;
    if !output.status.success() {
        return Err(err(format!(
            "{verb} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

/// Where to look up credentials for a registry.
#[derive(Debug, Clone, Default)]
pub struct CredentialSource {
    /// Credentials given directly (by `kiln login` before it stores them, or tests), by registry name.
    pub explicit: BTreeMap<String, Credential>,
    /// Docker's configuration directory; `None` means `$DOCKER_CONFIG` or `~/.docker`.
    pub docker_config_dir: Option<PathBuf>,
    /// Skip `config.json` entirely.
    pub ignore_docker_config: bool,
}

impl CredentialSource {
    /// Looks up `registry` (this may run a credential helper, so it blocks).
    pub fn lookup(&self, registry: &str) -> Result<Option<Credential>, CredentialError> {
        if let Some(credential) = self.explicit.get(registry) {
            return Ok(Some(credential.clone()));
        }
        if self.ignore_docker_config {
            return Ok(None);
        }
        let dir = match &self.docker_config_dir {
            Some(dir) => dir.clone(),
            None => match default_config_dir() {
                Some(dir) => dir,
                None => return Ok(None),
            },
        };
        DockerConfig::new(dir).credential(registry)
    }

    /// The configured Docker directory, if it was given.
    pub fn config_dir(&self) -> Option<&Path> {
        self.docker_config_dir.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
    }

    #[test]
    fn parses_basic_challenge() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic {
                realm: Some("Registry Realm".into())
            })
        );
        assert_eq!(Challenge::parse("Negotiate abc"), None);
    }

    #[test]
    fn store_read_and_erase_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"psFormat": "x"}"#).unwrap();
        let config = DockerConfig::new(dir.path());
        config.store("localhost:5000", "alice", "s3cr:et").unwrap();
        assert_eq!(
            config.credential("localhost:5000").unwrap(),
            Some(Credential::UsernamePassword {
                username: "alice".into(),
                password: "s3cr:et".into()
            })
        );
        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        assert!(text.contains("psFormat"), "other settings kept: {text}");
        assert!(config.erase("localhost:5000").unwrap());
        assert_eq!(config.credential("localhost:5000").unwrap(), None);
        assert!(!config.erase("localhost:5000").unwrap());
    }

    /// A login saved under a scheme (`https://host`, as older clients
    /// wrote it) is found for the host, so logging out of the host
    /// removes it, as `docker logout` does; another host's stays.
    #[test]
    fn erase_removes_the_forms_a_lookup_finds() {
        let dir = tempfile::tempdir().unwrap();
        let auth = "YWxpY2U6cHc="; // alice:pw
        std::fs::write(
            dir.path().join("config.json"),
            format!(
                r#"{{"auths": {{"https://127.0.0.1:5078": {{"auth": "{auth}"}},
                    "http://127.0.0.1:5078/v2/": {{"auth": "{auth}"}},
                    "other.example": {{"auth": "{auth}"}}}}}}"#
            ),
        )
        .unwrap();
        let config = DockerConfig::new(dir.path());
        assert!(config.credential("127.0.0.1:5078").unwrap().is_some());
        assert!(config.erase("127.0.0.1:5078").unwrap());
        assert_eq!(config.credential("127.0.0.1:5078").unwrap(), None);
        assert!(config.credential("other.example").unwrap().is_some());
    }
}
