//! Image references with Docker's normalization (distribution/reference's
//! `ParseNormalizedNamed`): `alpine` → `docker.io/library/alpine:latest`,
//! `host:5000/x/y:tag`, `name@sha256:…` with or without a tag.
//!
//! The store's `index.json` names images by the full form ([`Reference`]'s
//! `Display`); `docker save` archives and messages use the familiar form
//! ([`Reference::familiar`]).

use std::fmt;
use std::str::FromStr;

use crate::{Digest, ReferenceError};

/// The registry name Docker uses for Docker Hub.
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's legacy name, normalized to [`DOCKER_HUB`].
const LEGACY_DOCKER_HUB: &str = "index.docker.io";
/// Official images live under this path on Docker Hub.
const OFFICIAL_PREFIX: &str = "library/";
/// The tag a reference with neither tag nor digest gets.
pub const DEFAULT_TAG: &str = "latest";
/// The longest `registry/path` Docker accepts.
pub const NAME_TOTAL_LENGTH_MAX: usize = 255;
/// A bound on the whole input, so a huge string is refused before any work.
const INPUT_LENGTH_MAX: usize = 4096;

/// A repository within a registry: `docker.io` + `library/alpine`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Repository {
    /// The registry as users name it (`docker.io`, `localhost:5000`, `ghcr.io`).
    pub registry: String,
    /// The repository path (`library/alpine`, `org/app`).
    pub name: String,
}

impl Repository {
    /// The repository in Docker's short form (`alpine`, `org/app`,
    /// `localhost:5000/x`).
    pub fn familiar(&self) -> String {
        if self.registry == DOCKER_HUB {
            self.name
                .strip_prefix(OFFICIAL_PREFIX)
                .filter(|rest| !rest.contains('/'))
                .unwrap_or(&self.name)
                .to_string()
        } else {
            self.to_string()
        }
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.name)
    }
}

/// A normalized image reference: registry, repository, and a tag and/or
/// digest (a reference with neither gets the tag `latest`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub repository: Repository,
    /// Absent only when a digest is given without a tag.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalizes `input` with Docker's rules.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let err = |reason: &str| ReferenceError::InvalidReference {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(err("empty reference"));
        }
        if input.len() > INPUT_LENGTH_MAX {
            return Err(err(&format!("longer than {INPUT_LENGTH_MAX} characters")));
        }
        if input.len() == 64
            && input
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            // An image id, which Docker refuses as a repository name.
            return Err(err("cannot specify 64-byte hexadecimal strings"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                let digest = Digest::parse(digest).map_err(|e| err(&e.to_string()))?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        // A tag follows a ':' after the last '/', so `host:5000/x` keeps its port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let colon = last_slash + i;
                (&rest[..colon], Some(&rest[colon + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(err(&format!(
                    "invalid tag {tag:?}: a tag is 1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
                )));
            }
        }
        let (registry, path) = split_registry(name);
        if !valid_registry(registry) {
            return Err(err(&format!(
                "invalid registry {registry:?}: expected a host name or [IPv6] address and an optional :port"
            )));
        }
        let registry = if registry == LEGACY_DOCKER_HUB {
            DOCKER_HUB
        } else {
            registry
        };
        let path = if registry == DOCKER_HUB && !path.contains('/') {
            format!("{OFFICIAL_PREFIX}{path}")
        } else {
            path.to_string()
        };
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(err(&format!("repository name ({path}) must be lowercase")));
        }
        for component in path.split('/') {
            if !valid_path_component(component) {
                return Err(err(&format!(
                    "repository path component {component:?} must be lowercase letters and digits separated by '.', '_', '__' or '-'"
                )));
            }
        }
        if registry.len() + 1 + path.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(err(&format!(
                "repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"
            )));
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Reference {
            repository: Repository {
                registry: registry.to_string(),
                name: path,
            },
            tag,
            digest,
        })
    }

    /// Parses `input` as a name to give an image (`kiln tag`, `build -t`,
    /// an output's `name=`, `import`): a tag, never a digest, which names
    /// content already and cannot be pointed elsewhere, as Docker refuses
    /// it ("refusing to create a tag with a digest reference").
    pub fn parse_tag(input: &str) -> Result<Reference, ReferenceError> {
        let reference = Reference::parse(input)?;
        if reference.digest.is_some() {
            return Err(ReferenceError::InvalidReference {
                input: input.to_string(),
                reason: "refusing to create a tag with a digest reference".to_string(),
            });
        }
        Ok(reference)
    }

    /// The registry name (`docker.io`, `localhost:5000`).
    pub fn registry(&self) -> &str {
        &self.repository.registry
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        self.repository.to_string()
    }

    /// The short form Docker prints: `alpine:latest`, `org/app:1`,
    /// `localhost:5000/x:y`, `alpine@sha256:…`.
    pub fn familiar(&self) -> String {
        let mut out = self.repository.familiar();
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(digest.as_str());
        }
        out
    }

    /// The repository in Docker's short form (`alpine`, `org/app`, `host/x`).
    pub fn familiar_name(&self) -> String {
        self.repository.familiar()
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

    /// The repository at `digest`, without a tag: `registry/repo@sha256:…`
    /// (what a push by digest leaves, a canonical name).
    pub fn at_digest(&self, digest: Digest) -> Reference {
        Reference {
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
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

/// True when `registry` is a valid registry name: a host name (dot-separated
/// labels of letters, digits and inner '-') or a bracketed IPv6 literal, with
/// an optional `:port`. Whether it would be taken for a registry at the
/// front of a reference (it needs a '.', a ':' or `localhost` there) is not
/// asked.
pub fn is_valid_registry(registry: &str) -> bool {
    valid_registry(registry)
}

/// True when `path` is a valid repository path: '/'-separated components of
/// lowercase letters and digits joined by '.', '_', '__' or dashes.
pub fn is_valid_repository_path(path: &str) -> bool {
    path.len() < NAME_TOTAL_LENGTH_MAX && path.split('/').all(valid_path_component)
}

/// Docker's `splitDockerDomain`: the part before the first '/' is a registry
/// when it has a '.' or a ':', is `localhost`, or has an uppercase letter
/// (repository paths are lowercase); otherwise the name is on Docker Hub.
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, name),
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphanumeric() || b == b'_' => {}
        _ => return false,
    }
    tag.len() <= 128 && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `host[:port]`: host is dot-separated labels of letters, digits and inner
/// '-', or an IPv6 literal in brackets; port is digits.
fn valid_registry(registry: &str) -> bool {
    let (host, port) = if let Some(bracketed) = registry.strip_prefix('[') {
        let Some((inside, after)) = bracketed.split_once(']') else {
            return false;
        };
        if inside.is_empty() || !inside.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("", port),
                None => return false,
            },
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, port),
            None => (registry, "1"),
        }
    };
    let valid_label = |label: &str| {
        let b = label.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    };
    let host_ok = registry.starts_with('[') || host.split('.').all(valid_label);
    host_ok && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
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
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
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
        Reference::parse(input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (input, full form, familiar form); `@D` stands for a valid digest.
    const NORMALIZED: &[(&str, &str, &str)] = &[
        ("alpine", "docker.io/library/alpine:latest", "alpine:latest"),
        (
            "alpine:3.19",
            "docker.io/library/alpine:3.19",
            "alpine:3.19",
        ),
        ("user/app", "docker.io/user/app:latest", "user/app:latest"),
        ("org/app:1", "docker.io/org/app:1", "org/app:1"),
        (
            "docker.io/alpine",
            "docker.io/library/alpine:latest",
            "alpine:latest",
        ),
        (
            "docker.io/library/foo/bar",
            "docker.io/library/foo/bar:latest",
            "library/foo/bar:latest",
        ),
        (
            "index.docker.io/alpine",
            "docker.io/library/alpine:latest",
            "alpine:latest",
        ),
        (
            "index.docker.io/library/busybox",
            "docker.io/library/busybox:latest",
            "busybox:latest",
        ),
        // Docker normalizes only index.docker.io; the API host is a registry like any other.
        (
            "registry-1.docker.io/alpine",
            "registry-1.docker.io/alpine:latest",
            "registry-1.docker.io/alpine:latest",
        ),
        (
            "localhost/app",
            "localhost/app:latest",
            "localhost/app:latest",
        ),
        // Without a '/', `localhost` is a repository on Docker Hub and `:5000` its tag.
        (
            "localhost",
            "docker.io/library/localhost:latest",
            "localhost:latest",
        ),
        (
            "localhost:5000",
            "docker.io/library/localhost:5000",
            "localhost:5000",
        ),
        (
            "localhost:5000/x/y",
            "localhost:5000/x/y:latest",
            "localhost:5000/x/y:latest",
        ),
        (
            "localhost:5000/a/b:v1",
            "localhost:5000/a/b:v1",
            "localhost:5000/a/b:v1",
        ),
        (
            "127.0.0.1:5000/app:v1.2",
            "127.0.0.1:5000/app:v1.2",
            "127.0.0.1:5000/app:v1.2",
        ),
        (
            "127.0.0.1:5000/x",
            "127.0.0.1:5000/x:latest",
            "127.0.0.1:5000/x:latest",
        ),
        ("[::1]:5000/x:t", "[::1]:5000/x:t", "[::1]:5000/x:t"),
        ("[fe80::1]/x", "[fe80::1]/x:latest", "[fe80::1]/x:latest"),
        (
            "myhost:5000/x",
            "myhost:5000/x:latest",
            "myhost:5000/x:latest",
        ),
        ("ghcr.io/o/r:t", "ghcr.io/o/r:t", "ghcr.io/o/r:t"),
        // An uppercase first component is a registry (repository paths are lowercase).
        (
            "Example.com/app",
            "Example.com/app:latest",
            "Example.com/app:latest",
        ),
        ("Foo/bar", "Foo/bar:latest", "Foo/bar:latest"),
        (
            "a/b__c.d-e--f:Tag_1.x-",
            "docker.io/a/b__c.d-e--f:Tag_1.x-",
            "a/b__c.d-e--f:Tag_1.x-",
        ),
        ("alpine@D", "docker.io/library/alpine@D", "alpine@D"),
        ("alpine:3@D", "docker.io/library/alpine:3@D", "alpine:3@D"),
        ("h:1/x:t@D", "h:1/x:t@D", "h:1/x:t@D"),
        (
            "localhost:5000/x@D",
            "localhost:5000/x@D",
            "localhost:5000/x@D",
        ),
    ];

    /// (input, what the error must say).
    const REJECTED: &[(&str, &str)] = &[
        ("", "empty"),
        ("Alpine", "must be lowercase"),
        ("UPPER", "must be lowercase"),
        ("org/App", "must be lowercase"),
        ("localhost:5000/App", "must be lowercase"),
        ("alpine:", "invalid tag"),
        ("a:", "invalid tag"),
        ("alpine:-x", "invalid tag"),
        ("a:.x", "invalid tag"),
        ("a:b c", "invalid tag"),
        ("a//b", "component \"\""),
        ("a/b/", "component \"\""),
        ("/a", "component \"\""),
        ("-a", "component \"-a\""),
        ("a b", "component \"a b\""),
        ("a/b_/c", "component \"b_\""),
        ("a..b", "component \"a..b\""),
        ("x..y", "component \"x..y\""),
        ("x_-y", "component \"x_-y\""),
        ("a___b", "component \"a___b\""),
        ("alpine@sha256:abc", "64 lowercase hex"),
        ("a@sha256:zz", "64 lowercase hex"),
        ("alpine@md5:aaaa", "only sha256"),
        ("alpine@", "expected sha256"),
        ("alpine@D@D", "64 lowercase hex"),
        ("a:b/c", "invalid registry \"a:b\""),
        ("host:/x", "invalid registry \"host:\""),
        ("-host.com/x", "invalid registry \"-host.com\""),
        ("host..com/x", "invalid registry \"host..com\""),
        ("ho_st.com/x", "invalid registry \"ho_st.com\""),
        ("[::1/x", "invalid registry \"[::1\""),
        ("[]:5000/x", "invalid registry \"[]:5000\""),
        ("[::1]x/y", "invalid registry \"[::1]x\""),
        (
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "64-byte hexadecimal",
        ),
    ];

    fn digest() -> Digest {
        Digest::of(b"x")
    }

    fn with_digest(s: &str) -> String {
        s.replace("@D", &format!("@{}", digest()))
    }

    #[test]
    fn normalizes_like_docker() {
        for (input, full, familiar) in NORMALIZED {
            let input = with_digest(input);
            let r = Reference::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), with_digest(full), "{input}");
            assert_eq!(r.familiar(), with_digest(familiar), "{input}");
            // The full form is a fixed point.
            assert_eq!(Reference::parse(&r.to_string()).unwrap(), r, "{input}");
        }
    }

    #[test]
    fn a_tag_to_give_has_no_digest() {
        let tagged = Reference::parse_tag("app:1").unwrap();
        assert_eq!(tagged.to_string(), "docker.io/library/app:1");
        for input in ["app@D", "app:1@D", "localhost:5000/app@D"] {
            let input = with_digest(input);
            let err = Reference::parse_tag(&input).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "invalid reference {input:?}: refusing to create a tag with a digest reference"
                )
            );
        }
    }

    #[test]
    fn rejects_and_names_the_input() {
        for (input, why) in REJECTED {
            let input = with_digest(input);
            let err = Reference::parse(&input)
                .err()
                .unwrap_or_else(|| panic!("{input:?} was accepted"))
                .to_string();
            assert!(err.contains(&format!("{input:?}")), "{err} names {input:?}");
            assert!(err.contains(why), "{input:?}: {err} should say {why:?}");
        }
    }

    #[test]
    fn tag_and_digest_parts() {
        let r = Reference::parse(&with_digest("busybox@D")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest, Some(digest()));
        assert_eq!(r.manifest_reference(), digest().to_string());
        let r = Reference::parse(&with_digest("busybox:1@D")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.manifest_reference(), digest().to_string());
        let r = Reference::parse("localhost:5000/a/b:v1").unwrap();
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.repository.name, "a/b");
        assert_eq!(r.name(), "localhost:5000/a/b");
        assert_eq!(r.familiar_name(), "localhost:5000/a/b");
        assert_eq!(r.manifest_reference(), "v1");
        assert_eq!(r.with_tag("v2").to_string(), "localhost:5000/a/b:v2");
        assert_eq!(
            r.with_digest(digest()).to_string(),
            format!("localhost:5000/a/b:v1@{}", digest())
        );
    }

    #[test]
    fn length_limits() {
        // registry/path up to 255 characters; the tag up to 128.
        let path = "a".repeat(NAME_TOTAL_LENGTH_MAX - "example.com/".len());
        assert!(Reference::parse(&format!("example.com/{path}")).is_ok());
        let err = Reference::parse(&format!("example.com/{path}a")).unwrap_err();
        assert!(err.to_string().contains("not be more than 255"), "{err}");
        // Docker Hub's implicit `docker.io/library/` counts.
        let short = "a".repeat(NAME_TOTAL_LENGTH_MAX - "docker.io/library/".len());
        assert!(Reference::parse(&short).is_ok());
        assert!(Reference::parse(&format!("{short}a")).is_err());
        assert!(Reference::parse(&format!("a:{}", "t".repeat(128))).is_ok());
        let err = Reference::parse(&format!("a:{}", "t".repeat(129))).unwrap_err();
        assert!(err.to_string().contains("invalid tag"), "{err}");
        let err = Reference::parse(&"a".repeat(5000)).unwrap_err();
        assert!(err.to_string().contains("longer than 4096"), "{err}");
    }

    #[test]
    fn registries_and_repository_paths_alone() {
        for good in [
            "docker.io",
            "localhost",
            "mirror:5000",
            "[::1]:5000",
            "a-b.example",
        ] {
            assert!(is_valid_registry(good), "{good}");
        }
        for bad in [
            "",
            "https://docker.io",
            "mirror:",
            "-a.example",
            "a_b.example",
            "m/x",
        ] {
            assert!(!is_valid_registry(bad), "{bad}");
        }
        for good in ["proxy", "proxy.docker.io/library", "a__b/c-d"] {
            assert!(is_valid_repository_path(good), "{good}");
        }
        for bad in ["", "Proxy", "a//b", "a/", "/a", "a:b"] {
            assert!(!is_valid_repository_path(bad), "{bad}");
        }
    }
}
