//! Image references and digests, parsed with Docker's rules
//! (`alpine` → `docker.io/library/alpine:latest`).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// The registry name Docker uses for Docker Hub.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves Docker Hub's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
const DEFAULT_TAG: &str = "latest";

/// Why a reference or digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest { input: String, reason: String },
}

/// A content digest. Only `sha256` is supported, which is what every
/// registry and the OCI image spec use for manifests, configs and layers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest {
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// Builds a digest from a finished hasher.
    pub fn from_hasher(hasher: Sha256) -> Digest {
        Digest {
            hex: hex::encode(hasher.finalize()),
        }
    }

    /// The lowercase hex part, without `sha256:`.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Always `sha256`.
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }
}

impl FromStr for Digest {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ReferenceError::InvalidDigest {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let (algorithm, hex) = input
            .split_once(':')
            .ok_or_else(|| err("expected ALGORITHM:HEX"))?;
        if algorithm != "sha256" {
            return Err(err("only sha256 digests are supported"));
        }
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(err("a sha256 digest is 64 lowercase hex characters"));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// A repository within a registry: `docker.io` + `library/alpine`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repository {
    /// The registry as users name it (`docker.io`, `localhost:5000`).
    pub registry: String,
    /// The repository path (`library/alpine`).
    pub name: String,
}

impl Repository {
    /// The host:port that serves the registry API (Docker Hub's differs from its name).
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.name)
    }
}

/// The host:port serving the API of the registry named `registry`.
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_API_HOST
    } else {
        registry
    }
}

/// A fully qualified image reference: registry, repository, and a tag
/// and/or digest (a bare name gets the tag `latest`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub repository: Repository,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses `input` with Docker's normalisation rules.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        input.parse()
    }

    /// The registry name (`docker.io`, `localhost:5000`).
    pub fn registry(&self) -> &str {
        &self.repository.registry
    }

    /// What to ask the registry for: the digest when there is one, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            repository: self.repository.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        }
    }

    /// The same repository and tag pinned to `digest`.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            repository: self.repository.clone(),
            tag: self.tag.clone(),
            digest: Some(digest),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ReferenceError::InvalidReference {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(err("empty reference"));
        }
        if input.len() > 4096 {
            return Err(err("longer than 4096 characters"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest.parse::<Digest>()?)),
            None => (input, None),
        };
        // A tag is a ':' after the last '/', so `host:5000/x` keeps its port.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let colon = last_slash + i;
                (&rest[..colon], Some(&rest[colon + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(err(
                    "a tag is up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'",
                ));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), remainder.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if registry.is_empty() || !valid_registry(&registry) {
            return Err(err("invalid registry host"));
        }
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        let path = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if path.is_empty() {
            return Err(err("missing repository name"));
        }
        for component in path.split('/') {
            if !valid_path_component(component) {
                return Err(err(&format!(
                    "repository path component {component:?} must be lowercase letters and digits separated by '.', '_', '__' or '-'"
                )));
            }
        }
        if registry.len() + 1 + path.len() > 255 {
            return Err(err("repository name longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Reference {
            repository: Repository {
                registry,
                name: path,
            },
            tag,
            digest,
        })
    }
}

fn valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphanumeric() || b == b'_' => {}
        _ => return false,
    }
    tag.len() <= 128
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

fn valid_registry(registry: &str) -> bool {
    // host[:port], host possibly an IPv6 literal in brackets.
    registry
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// True when `registry` (host or host:port) names this machine, where Docker
/// allows plain HTTP without being told.
pub fn is_loopback_registry(registry: &str) -> bool {
    let host = host_of(registry);
    if host == "localhost" {
        return true;
    }
    match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

/// The host part of `host[:port]` (IPv6 literals keep their brackets).
pub fn host_of(registry: &str) -> &str {
    if registry.starts_with('[') {
        return match registry.find(']') {
            Some(end) => &registry[..=end],
            None => registry,
        };
    }
    match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(input: &str) -> String {
        Reference::parse(input).unwrap().to_string()
    }

    #[test]
    fn docker_normalisation() {
        assert_eq!(full("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(full("alpine:3.19"), "docker.io/library/alpine:3.19");
        assert_eq!(full("user/app"), "docker.io/user/app:latest");
        assert_eq!(
            full("index.docker.io/alpine"),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(full("localhost/app"), "localhost/app:latest");
        assert_eq!(full("localhost:5000/a/b:v1"), "localhost:5000/a/b:v1");
        assert_eq!(full("127.0.0.1:5000/x"), "127.0.0.1:5000/x:latest");
        assert_eq!(full("ghcr.io/o/r:t"), "ghcr.io/o/r:t");
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            full(&format!("alpine@{digest}")),
            format!("docker.io/library/alpine@{digest}")
        );
        assert_eq!(
            full(&format!("h:1/x:t@{digest}")),
            format!("h:1/x:t@{digest}")
        );
    }

    #[test]
    fn api_host_for_docker_hub() {
        let r = Reference::parse("alpine").unwrap();
        assert_eq!(r.repository.api_host(), "registry-1.docker.io");
        let r = Reference::parse("localhost:5000/x").unwrap();
        assert_eq!(r.repository.api_host(), "localhost:5000");
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Alpine",
            "alpine:",
            "alpine:-x",
            "a//b",
            "a/b/",
            "alpine@sha256:abc",
            "alpine@md5:aaaa",
            "x..y",
            "x_-y",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_registry("localhost:5000"));
        assert!(is_loopback_registry("127.0.0.1:5000"));
        assert!(is_loopback_registry("[::1]:5000"));
        assert!(!is_loopback_registry("example.com:5000"));
        assert!(!is_loopback_registry("10.0.0.1"));
    }
}
