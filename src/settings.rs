//! Settings every command shares, resolved once from flags and environment.

use std::path::PathBuf;
use std::time::Duration;

use kiln_registry::Timeouts;

/// Where the store lives, and how long registry transfers may take. (`-v`
/// is applied once, to logging, in `main`.)
#[derive(Debug, Clone)]
pub struct GlobalSettings {
    /// The store root (`--root`, `KILN_ROOT`).
    pub root: PathBuf,
    /// Deadlines and the speed cutoff of every registry request and
    /// `ADD <url>` download ([`TransferArgs`]).
    pub timeouts: Timeouts,
}

impl GlobalSettings {
    pub fn resolve(root: Option<PathBuf>, transfer: &TransferArgs) -> Self {
        GlobalSettings {
            root: root.unwrap_or_else(default_root),
            timeouts: transfer.timeouts(),
        }
    }
}

/// How long registry requests and `ADD <url>` downloads may take: flags of
/// every command, each with an environment variable (the flag wins).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Registry transfers")]
pub struct TransferArgs {
    /// Deadline of one registry operation, in seconds.
    ///
    /// A manifest, token or config must arrive within it, retries included.
    /// Of a blob transfer (or an `ADD <url>` download) it bounds the waiting:
    /// a quarter of it to connect, half of it for response headers, and
    /// retries; the body is held to the speed limit instead.
    #[arg(
        long,
        global = true,
        env = "KILN_REGISTRY_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = Timeouts::DEFAULT_TOTAL.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub registry_timeout: u64,
    /// Fail a transfer (download or upload) that averages fewer bytes per
    /// second than this over --registry-speed-time (0: no check).
    #[arg(
        long,
        global = true,
        env = "KILN_REGISTRY_SPEED_LIMIT",
        value_name = "BYTES",
        default_value_t = Timeouts::DEFAULT_SPEED_LIMIT
    )]
    pub registry_speed_limit: u64,
    /// The window, in seconds, that --registry-speed-limit is averaged over.
    #[arg(
        long,
        global = true,
        env = "KILN_REGISTRY_SPEED_TIME",
        value_name = "SECONDS",
        default_value_t = Timeouts::DEFAULT_SPEED_TIME.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub registry_speed_time: u64,
}

impl TransferArgs {
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            speed_limit: self.registry_speed_limit,
            speed_time: Duration::from_secs(self.registry_speed_time),
            ..Timeouts::with_total(Duration::from_secs(self.registry_timeout))
        }
    }
}

/// `/var/lib/kiln` for root; `$XDG_DATA_HOME/kiln` (or `~/.local/share/kiln`) otherwise.
fn default_root() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/kiln");
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(data).join("kiln");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/kiln"),
        None => PathBuf::from(".kiln"),
    }
}

/// `SOURCE_DATE_EPOCH` from the environment: the time reproducible outputs
/// are stamped with (seconds since the epoch).
pub fn source_date_epoch() -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::TransferArgs;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        transfer: TransferArgs,
    }

    fn timeouts(args: &[&str]) -> Result<kiln_registry::Timeouts, clap::Error> {
        let flags = Flags::try_parse_from(std::iter::once("kiln").chain(args.iter().copied()))?;
        Ok(flags.transfer.timeouts())
    }

    #[test]
    fn the_timeout_scales_the_connect_and_header_waits() {
        let set = timeouts(&[
            "--registry-timeout",
            "8",
            "--registry-speed-limit",
            "0",
            "--registry-speed-time",
            "5",
        ])
        .unwrap();
        assert_eq!(set.total, Duration::from_secs(8));
        assert_eq!(set.connect, Duration::from_secs(2));
        assert_eq!(set.response, Duration::from_secs(4));
        assert_eq!(set.speed_limit, 0);
        assert_eq!(set.speed_time, Duration::from_secs(5));
        assert!(timeouts(&["--registry-timeout", "0"]).is_err());
        assert!(timeouts(&["--registry-speed-time", "0"]).is_err());
    }
}
