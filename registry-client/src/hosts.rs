//! Where a registry's repositories are pulled from, and how each host is
//! reached: the per-registry settings of a registry configuration file
//! (BuildKit's `[registry."HOST"]` tables, read by [`crate::hosts_file`]),
//! merged with `--insecure-registry` by the [`Client`](crate::Client).
//!
//! A pull of `HOST/NAME` asks HOST's mirrors in the order the file gives
//! them, then HOST itself ([`RegistryHosts::pull_routes`]); a push, a blob
//! check and a login go to HOST only. A mirror `m:5000/proxy` serves
//! `HOST/NAME` as `m:5000/proxy/NAME`. Each host, registry or mirror, is
//! reached with the settings of its own table: over HTTPS, plain HTTP or
//! both ([`Schemes`]), trusting its own CA files, presenting its own client
//! certificate.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::reference::{is_loopback_registry, Repository};

/// The settings of every registry a configuration file names, keyed by
/// registry (`docker.io`, `ghcr.io`, `mirror.example:5000`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryHosts {
    /// The file they were read from (for messages); `None` when built in code.
    pub file: Option<PathBuf>,
    hosts: BTreeMap<String, HostSettings>,
}

/// One `[registry."HOST"]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSettings {
    /// Pulls ask these first, in order (`mirrors`).
    pub mirrors: Vec<Mirror>,
    /// `http`: `Some(true)` plain HTTP, `Some(false)` HTTPS only, `None`
    /// the default (HTTPS; loopback hosts fall back to plain HTTP).
    pub plain_http: Option<bool>,
    /// `insecure`: HTTPS without certificate checks.
    pub insecure: bool,
    /// CA certificates (PEM) trusted for this host besides the system's
    /// (`ca`, and the `*.crt` files of `tlsconfigdir`).
    pub ca_certs: Vec<PathBuf>,
    /// The client certificate to present (`keypair`, or a `*.cert` file
    /// with its `*.key` in `tlsconfigdir`).
    pub client_cert: Option<ClientCert>,
}

impl HostSettings {
    /// True when this host needs TLS settings of its own.
    pub fn has_own_tls(&self) -> bool {
        self.insecure || !self.ca_certs.is_empty() || self.client_cert.is_some()
    }
}

/// A mirror as a `mirrors` entry names it: `host[:port]` and an optional
/// repository path prefix (`mirror.example:5000/proxy.docker.io`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub host: String,
    /// Without leading or trailing '/'; empty when there is none.
    pub prefix: String,
}

/// A client certificate and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where one request for a repository goes: the registry itself or one of
/// its mirrors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The host asked (`docker.io` for Docker Hub itself): whose endpoint,
    /// credentials and tokens the request uses.
    pub host: String,
    /// The repository's name there (a mirror's prefix, then the name).
    pub name: String,
    /// For a mirror, the registry it stands in for: requests carry
    /// `?ns=REGISTRY`, as containerd's do.
    pub mirror_of: Option<String>,
}

impl Route {
    /// The registry itself.
    pub fn origin(repository: &Repository) -> Route {
        Route {
            host: repository.registry.clone(),
            name: repository.name.clone(),
            mirror_of: None,
        }
    }
}

/// Which schemes to try, in order, to reach a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schemes {
    Https,
    Http,
    /// HTTPS, and plain HTTP when HTTPS fails.
    HttpsThenHttp,
}

impl RegistryHosts {
    /// Settings for `host`, replacing what was there.
    pub fn insert(&mut self, host: impl Into<String>, settings: HostSettings) {
        self.hosts.insert(host.into(), settings);
    }

    /// The settings of `host`'s table, if the file has one.
    pub fn get(&self, host: &str) -> Option<&HostSettings> {
        self.hosts.get(host)
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Where a pull of `repository` asks, in order: each mirror of its
    /// registry, then the registry. Never empty; the registry is last.
    pub fn pull_routes(&self, repository: &Repository) -> Vec<Route> {
        let mirrors = self
            .get(&repository.registry)
            .map(|settings| settings.mirrors.as_slice())
            .unwrap_or_default();
        let mut routes: Vec<Route> = mirrors
            .iter()
            .map(|mirror| Route {
                host: mirror.host.clone(),
                name: if mirror.prefix.is_empty() {
                    repository.name.clone()
                } else {
                    format!("{}/{}", mirror.prefix, repository.name)
                },
                mirror_of: Some(repository.registry.clone()),
            })
            .collect();
        routes.push(Route::origin(repository));
        routes
    }

    /// How to reach `host`. `flagged` says `--insecure-registry` names it:
    /// HTTPS without certificate checks and plain HTTP, whatever the file
    /// says. Otherwise the table's `http` decides (with `insecure`, HTTPS
    /// is tried first, as BuildKit does), and without one, loopback hosts
    /// are tried over HTTPS then plain HTTP and others over HTTPS.
    pub fn schemes(&self, host: &str, flagged: bool) -> Schemes {
        let settings = self.get(host);
        if flagged {
            return Schemes::HttpsThenHttp;
        }
        match settings.and_then(|s| s.plain_http) {
            Some(true) if settings.is_some_and(|s| s.insecure) => Schemes::HttpsThenHttp,
            Some(true) => Schemes::Http,
            Some(false) => Schemes::Https,
            None if is_loopback_registry(host) => Schemes::HttpsThenHttp,
            None => Schemes::Https,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repository(registry: &str, name: &str) -> Repository {
        Repository {
            registry: registry.into(),
            name: name.into(),
        }
    }

    fn with_table(host: &str, settings: HostSettings) -> RegistryHosts {
        let mut hosts = RegistryHosts::default();
        hosts.insert(host, settings);
        hosts
    }

    #[test]
    fn pulls_ask_the_mirrors_in_order_then_the_registry() {
        let hosts = with_table(
            "docker.io",
            HostSettings {
                mirrors: vec![
                    Mirror {
                        host: "mirror.example:5000".into(),
                        prefix: "proxy.docker.io".into(),
                    },
                    Mirror {
                        host: "mirror.gcr.io".into(),
                        prefix: String::new(),
                    },
                ],
                ..HostSettings::default()
            },
        );
        let routes = hosts.pull_routes(&repository("docker.io", "library/alpine"));
        let asked: Vec<(&str, &str, Option<&str>)> = routes
            .iter()
            .map(|r| (r.host.as_str(), r.name.as_str(), r.mirror_of.as_deref()))
            .collect();
        assert_eq!(
            asked,
            [
                (
                    "mirror.example:5000",
                    "proxy.docker.io/library/alpine",
                    Some("docker.io")
                ),
                ("mirror.gcr.io", "library/alpine", Some("docker.io")),
                ("docker.io", "library/alpine", None),
            ]
        );
        // Another registry has no mirrors: only itself.
        assert_eq!(
            hosts.pull_routes(&repository("ghcr.io", "org/app")),
            [Route::origin(&repository("ghcr.io", "org/app"))]
        );
    }

    #[test]
    fn schemes_follow_http_insecure_loopback_and_the_flag() {
        let table = |plain_http, insecure| {
            with_table(
                "reg.example:5000",
                HostSettings {
                    plain_http,
                    insecure,
                    ..HostSettings::default()
                },
            )
        };
        let host = "reg.example:5000";
        assert_eq!(table(Some(true), false).schemes(host, false), Schemes::Http);
        assert_eq!(
            table(Some(true), true).schemes(host, false),
            Schemes::HttpsThenHttp
        );
        assert_eq!(
            table(Some(false), true).schemes(host, false),
            Schemes::Https
        );
        assert_eq!(table(None, true).schemes(host, false), Schemes::Https);
        assert_eq!(table(None, false).schemes(host, false), Schemes::Https);
        assert_eq!(
            table(Some(false), false).schemes(host, true),
            Schemes::HttpsThenHttp
        );
        let none = RegistryHosts::default();
        assert_eq!(
            none.schemes("127.0.0.1:5000", false),
            Schemes::HttpsThenHttp
        );
        assert_eq!(none.schemes("ghcr.io", false), Schemes::Https);
        let loopback_https_only = with_table(
            "localhost:5000",
            HostSettings {
                plain_http: Some(false),
                ..HostSettings::default()
            },
        );
        assert_eq!(
            loopback_https_only.schemes("localhost:5000", false),
            Schemes::Https
        );
    }
}
