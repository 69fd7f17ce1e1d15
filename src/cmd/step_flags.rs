//! The build flags that shape every RUN's sandbox, as buildx has them:
//! `--add-host`, `--shm-size`, `--ulimit`, and the entitlements `--allow`
//! grants (`network.host`, `security.insecure`).

use clap::{Args, ValueEnum};
use kiln_builder::plan::RunDefaults;
use kiln_builder::session::Entitlements;
use kiln_runtime::Rlimit;

#[derive(Debug, Clone, Args)]
pub struct StepArgs {
    /// A line for every RUN's /etc/hosts: HOST:IP (or HOST=IP; repeatable,
    /// or comma-separated, as buildx's string slice).
    #[arg(
        long = "add-host",
        value_name = "HOST:IP",
        value_parser = parse_add_host,
        value_delimiter = ','
    )]
    add_hosts: Vec<(String, String)>,
    /// The size of /dev/shm in every RUN: bytes, or a number with k, m, g
    /// (default 64m).
    #[arg(long = "shm-size", value_name = "BYTES", value_parser = parse_shm_size)]
    shm_size: Option<u64>,
    /// A resource limit of every RUN: NAME=SOFT[:HARD] with docker's names
    /// (nofile, nproc, core, stack, memlock, …; -1 for unlimited;
    /// repeatable).
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]", value_parser = Rlimit::parse)]
    ulimits: Vec<Rlimit>,
    /// Grant an entitlement (repeatable, or comma-separated):
    /// `network.host` lets `RUN --network=host` share the host's network;
    /// `security.insecure` lets `RUN --security=insecure` run with every
    /// capability, no seccomp filter and no masked paths.
    #[arg(
        long = "allow",
        value_enum,
        value_name = "ENTITLEMENT",
        value_delimiter = ','
    )]
    allow: Vec<Entitlement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Entitlement {
    #[value(name = "network.host")]
    NetworkHost,
    #[value(name = "security.insecure")]
    SecurityInsecure,
}

impl StepArgs {
    /// What every RUN gets.
    pub fn run_defaults(&self) -> RunDefaults {
        RunDefaults {
            extra_hosts: self.add_hosts.clone(),
            shm_size: self.shm_size,
            ulimits: self.ulimits.clone(),
        }
    }

    /// The entitlements granted; `--network host` grants `network.host`,
    /// as buildx's does.
    pub fn entitlements(&self, host_network: bool) -> Entitlements {
        Entitlements {
            network_host: host_network || self.allow.contains(&Entitlement::NetworkHost),
            security_insecure: self.allow.contains(&Entitlement::SecurityInsecure),
        }
    }
}

/// Docker's `--add-host`: `HOST:IP` (split at the first `:`, so the
/// address may be IPv6) or `HOST=IP`; the address must be an IP address.
fn parse_add_host(text: &str) -> Result<(String, String), String> {
    let (host, address) = text
        .split_once('=')
        .or_else(|| text.split_once(':'))
        .ok_or_else(|| format!("invalid --add-host {text:?}: expected HOST:IP"))?;
    if host.is_empty() {
        return Err(format!("invalid --add-host {text:?}: no host name"));
    }
    if address == "host-gateway" {
        return Err(format!(
            "invalid --add-host {text:?}: host-gateway is the docker daemon's bridge address, \
             and kiln has no daemon; give an IP address"
        ));
    }
    // `[::1]` is accepted as docker accepts it.
    let bare = address.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = bare
        .parse()
        .map_err(|_| format!("invalid --add-host {text:?}: {address:?} is not an IP address"))?;
    Ok((host.to_string(), ip.to_string()))
}

/// `--shm-size`: Docker's size syntax, more than zero.
fn parse_shm_size(text: &str) -> Result<u64, String> {
    match kiln_parser::mount::ram_in_bytes(text.trim()) {
        Some(0) | None => Err(format!(
            "invalid --shm-size {text:?}: expected a size above zero (e.g. 128m, 1g)"
        )),
        Some(bytes) => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_host_forms() {
        let ok = |s: &str| parse_add_host(s).unwrap();
        assert_eq!(ok("db:10.0.0.2"), ("db".into(), "10.0.0.2".into()));
        assert_eq!(ok("db=10.0.0.2"), ("db".into(), "10.0.0.2".into()));
        assert_eq!(ok("v6:2001:db8::1"), ("v6".into(), "2001:db8::1".into()));
        assert_eq!(ok("v6=[::1]"), ("v6".into(), "::1".into()));
        for bad in ["db", ":1.2.3.4", "db:not-an-ip", "db:host-gateway"] {
            assert!(parse_add_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shm_size_and_ulimits() {
        assert_eq!(parse_shm_size("128m"), Ok(128 << 20));
        assert!(parse_shm_size("0").is_err());
        assert!(parse_shm_size("lots").is_err());
        let l = Rlimit::parse("nofile=1024:2048").unwrap();
        assert_eq!((l.soft, l.hard), (1024, 2048));
        let l = Rlimit::parse("core=-1").unwrap();
        assert_eq!(l.soft, libc::RLIM_INFINITY);
        for bad in ["nofile", "files=1", "nofile=2:1", "nofile=x"] {
            assert!(Rlimit::parse(bad).is_err(), "{bad}");
        }
    }
}
