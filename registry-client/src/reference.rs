//! Image references and digests (kiln-reference's types, shared with the
//! store, parsed with Docker's rules: `alpine` →
//! `docker.io/library/alpine:latest`), and where a registry is served from.

pub use kiln_reference::{
    is_valid_registry, is_valid_repository_path, Digest, Reference, ReferenceError, Repository,
    DEFAULT_TAG, DOCKER_HUB,
};

/// The host that actually serves Docker Hub's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";

/// The host:port serving the API of the registry named `registry`.
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_API_HOST
    } else {
        registry
    }
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

    #[test]
    fn api_host_for_docker_hub() {
        let r = Reference::parse("alpine").unwrap();
        assert_eq!(api_host(r.registry()), "registry-1.docker.io");
        let r = Reference::parse("localhost:5000/x").unwrap();
        assert_eq!(api_host(r.registry()), "localhost:5000");
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_registry("localhost:5000"));
        assert!(is_loopback_registry("localhost"));
        assert!(is_loopback_registry("127.0.0.1:5000"));
        assert!(is_loopback_registry("[::1]:5000"));
        assert!(!is_loopback_registry("example.com:5000"));
        assert!(!is_loopback_registry("10.0.0.1"));
    }

    #[test]
    fn host_without_port() {
        assert_eq!(host_of("localhost:5000"), "localhost");
        assert_eq!(host_of("[::1]:5000"), "[::1]");
        assert_eq!(host_of("ghcr.io"), "ghcr.io");
    }
}
