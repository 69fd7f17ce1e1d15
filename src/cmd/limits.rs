//! `--memory` and `--pids-limit`, shared by `kiln build` (every RUN step)
//! and `kiln run` (the container), in Docker's syntax. The defaults and why
//! they are what they are: kiln_runtime::cgroup.

use clap::Args;
use kiln_runtime::cgroup::{human_bytes, MIN_MEMORY_LIMIT};
use kiln_runtime::{Limit, Limits};

#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Memory limit of each container (every RUN step of a build): bytes,
    /// or a number with b, k, m, g (1024-based, as Docker: 512m, 1.5g); 0 for
    /// none; at least 6m. Swap is not allowed on top. Default: 3/4 of the
    /// machine's RAM (Docker and BuildKit set none; kiln keeps one runaway
    /// step from taking the host's memory). Needs cgroups (see kiln info).
    #[arg(short = 'm', long, value_name = "BYTES", value_parser = parse_memory)]
    memory: Option<Limit>,
    /// Process (and thread) limit of each container (every RUN step of a
    /// build); 0 or -1 for none. Default: 4096 (Docker and BuildKit set
    /// none; kiln stops a fork bomb before it reaches the host's limit). A
    /// container whose forks keep failing at the limit for 2s is killed.
    /// Needs cgroups (see kiln info).
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = parse_pids_limit
    )]
    pids_limit: Option<Limit>,
}

impl LimitArgs {
    /// The limits for the runtime: what was given, kiln's defaults for the rest.
    pub fn limits(&self) -> Limits {
        Limits {
            pids: self.pids_limit.unwrap_or_default(),
            memory: self.memory.unwrap_or_default(),
        }
    }
}

/// Docker's memory syntax (`RAMInBytes`): a number, optionally with a
/// fraction, then an optional unit b, k, m, g, t or p (1024-based) with an
/// optional `i` and `b` (`512m`, `512MiB`, `2g`, `1.5g`, `1048576`). `0` is
/// no limit.
pub fn parse_memory(text: &str) -> Result<Limit, String> {
    let invalid = || {
        format!("invalid size {text:?}: expected bytes or a number with b, k, m, g (e.g. 512m, 2g)")
    };
    let bytes = kiln_parser::mount::ram_in_bytes(text.trim()).ok_or_else(invalid)?;
    if bytes == 0 {
        return Ok(Limit::Unlimited);
    }
    if bytes < MIN_MEMORY_LIMIT {
        return Err(format!(
            "memory limit {text:?} is below the minimum of {}",
            human_bytes(MIN_MEMORY_LIMIT)
        ));
    }
    Ok(Limit::Max(bytes))
}

/// `--pids-limit`: a number of processes; 0 or -1 for none (as Docker).
pub fn parse_pids_limit(text: &str) -> Result<Limit, String> {
    let value: i64 = text.trim().parse().map_err(|_| {
        format!("invalid pids limit {text:?}: expected a number (0 or -1 for none)")
    })?;
    match value {
        -1 | 0 => Ok(Limit::Unlimited),
        n if n < -1 => Err(format!(
            "invalid pids limit {text:?}: expected a positive number, or 0 or -1 for none"
        )),
        n => Ok(Limit::Max(n as u64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_in_dockers_syntax() {
        let max = |s: &str| match parse_memory(s) {
            Ok(Limit::Max(b)) => b,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(max("512m"), 512 << 20);
        assert_eq!(max("512M"), 512 << 20);
        assert_eq!(max("512MiB"), 512 << 20);
        assert_eq!(max("512mb"), 512 << 20);
        assert_eq!(max("2g"), 2 << 30);
        assert_eq!(max("1.5g"), 3 << 29);
        assert_eq!(max("10485760"), 10 << 20);
        assert_eq!(max("10485760b"), 10 << 20);
        assert_eq!(max("8192k"), 8 << 20);
        assert_eq!(parse_memory("0"), Ok(Limit::Unlimited));
        for bad in [
            "", "m", "-1", "-512m", "1x", "1.2.3g", ".5g", "5.g", "12 mm", "1e9", "inf",
        ] {
            assert!(parse_memory(bad).is_err(), "{bad:?} accepted");
        }
        let err = parse_memory("4m").unwrap_err();
        assert!(err.contains("below the minimum of 6MiB"), "{err}");
        assert!(parse_memory("99999999999p").is_err());
    }

    #[test]
    fn pids_limits_as_docker() {
        assert_eq!(parse_pids_limit("100"), Ok(Limit::Max(100)));
        assert_eq!(parse_pids_limit("0"), Ok(Limit::Unlimited));
        assert_eq!(parse_pids_limit("-1"), Ok(Limit::Unlimited));
        assert!(parse_pids_limit("-2").is_err());
        assert!(parse_pids_limit("ten").is_err());
        assert!(parse_pids_limit("1.5").is_err());
    }
}
