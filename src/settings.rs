//! Settings every command shares, resolved once from flags and environment.

use std::path::PathBuf;
use std::time::Duration;

use kiln_registry::{HostsFileError, RegistryHosts, Timeouts};

/// Where the store lives, how long registry transfers may take, and where
/// the registry configuration is. (`-v` is applied once, to logging, in
/// `main`.)
#[derive(Debug, Clone)]
pub struct GlobalSettings {
    /// The store root (`--root`, `KILN_ROOT`).
    pub root: PathBuf,
    /// Deadlines and the speed cutoff of every registry request and
    /// `ADD <url>` download ([`TransferArgs`]).
    pub timeouts: Timeouts,
    /// The registry configuration file (`--registry-config`,
    /// `KILN_REGISTRY_CONFIG`, or the default place).
    pub registry_config: RegistryConfigFile,
}

impl GlobalSettings {
    pub fn resolve(root: Option<PathBuf>, transfer: &TransferArgs) -> Self {
        GlobalSettings {
            root: root.unwrap_or_else(default_root),
            timeouts: transfer.timeouts(),
            registry_config: RegistryConfigFile::resolve(
                transfer.registry_config.as_deref(),
                default_registry_config(
                    rustix::process::geteuid().is_root(),
                    std::env::var_os("XDG_CONFIG_HOME"),
                    std::env::var_os("HOME"),
                ),
            ),
        }
    }

    /// The registry mirrors and per-registry settings of the registry
    /// configuration file; none when the default file does not exist. Read
    /// when a command is about to talk to registries, so that a file kiln
    /// cannot use fails those commands only.
    pub fn registry_hosts(&self) -> anyhow::Result<RegistryHosts> {
        match &self.registry_config {
            RegistryConfigFile::Given(path) => Ok(RegistryHosts::load(path)?),
            RegistryConfigFile::Default(path) => match RegistryHosts::load(path) {
                Err(HostsFileError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Ok(RegistryHosts::default())
                }
                read => Ok(read?),
            },
            RegistryConfigFile::None => Ok(RegistryHosts::default()),
        }
    }
}

/// Where the registry configuration (buildkitd.toml's `[registry."HOST"]`
/// tables) is read from. This is the one place that decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryConfigFile {
    /// Named by `--registry-config` or `KILN_REGISTRY_CONFIG`: it must exist.
    Given(PathBuf),
    /// The default place ([`default_registry_config`]): read if it exists.
    Default(PathBuf),
    /// An empty `--registry-config ''`: no file.
    None,
}

impl RegistryConfigFile {
    /// The file `given` by the flag or environment, else `default`.
    fn resolve(given: Option<&std::ffi::OsStr>, default: Option<PathBuf>) -> RegistryConfigFile {
        match (given, default) {
            (Some(path), _) if path.is_empty() => RegistryConfigFile::None,
            (Some(path), _) => RegistryConfigFile::Given(PathBuf::from(path)),
            (None, Some(path)) => RegistryConfigFile::Default(path),
            (None, None) => RegistryConfigFile::None,
        }
    }
}

/// `/etc/kiln/registries.toml` for root; `$XDG_CONFIG_HOME/kiln/registries.toml`
/// (or `~/.config/kiln/registries.toml`) otherwise, as buildkitd's own
/// configuration file is found rootless.
fn default_registry_config(
    root: bool,
    xdg_config_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    if root {
        return Some(PathBuf::from("/etc/kiln/registries.toml"));
    }
    if let Some(config) = xdg_config_home.filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(config).join("kiln/registries.toml"));
    }
    home.map(|home| PathBuf::from(home).join(".config/kiln/registries.toml"))
}

/// How long registry requests and `ADD <url>` downloads may take: global
/// flags, each with an environment variable (the flag wins), refused on a
/// command that talks to no registry ([`refuse_unread_flags`]).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Registry transfers (refused by commands that talk to no registry)")]
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
    /// Registry mirrors and per-registry settings: a file of buildkitd.toml's
    /// `[registry."HOST"]` tables (mirrors, http, insecure, ca, keypair,
    /// tlsconfigdir).
    ///
    /// Default: /etc/kiln/registries.toml as root,
    /// $XDG_CONFIG_HOME/kiln/registries.toml (~/.config/kiln/…) otherwise,
    /// read when it exists. An empty value reads no file.
    // An OsString, not a PathBuf: clap refuses an empty path.
    #[arg(long, global = true, env = "KILN_REGISTRY_CONFIG", value_name = "FILE")]
    pub registry_config: Option<std::ffi::OsString>,
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

/// Which of the global settings a command reads. Each command says so
/// (`reads()` on its enum), and a global flag given on the command line to
/// a command that reads nothing it sets is refused
/// ([`refuse_unread_flags`]): `kiln images --registry-timeout 5` would
/// otherwise be accepted and do nothing. Their environment variables are
/// not refused: a CI job sets them once for every command it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reads {
    /// The store (`--root`).
    pub store: bool,
    /// Registries: the transfer limits and the registry configuration file.
    pub registries: bool,
    /// What makes the command read less than it usually does (`--offline`),
    /// said with a refusal.
    pub because: &'static str,
}

impl Reads {
    /// Neither: `parse`, `debug`, `logout`.
    pub const NOTHING: Reads = Reads {
        store: false,
        registries: false,
        because: "",
    };
    /// The store only.
    pub const STORE: Reads = Reads {
        store: true,
        registries: false,
        because: "",
    };
    /// Registries only: `login`.
    pub const REGISTRIES: Reads = Reads {
        store: false,
        registries: true,
        because: "",
    };
    /// Both: every command that may fetch or push.
    pub const BOTH: Reads = Reads {
        store: true,
        registries: true,
        because: "",
    };
}

/// The global flags that set the store, by clap id and spelling.
const STORE_FLAGS: &[(&str, &str)] = &[("root", "--root")];

/// The global flags that set how registries are reached, by clap id and
/// spelling ([`TransferArgs`]'s fields).
const REGISTRY_FLAGS: &[(&str, &str)] = &[
    ("registry_timeout", "--registry-timeout"),
    ("registry_speed_limit", "--registry-speed-limit"),
    ("registry_speed_time", "--registry-speed-time"),
    ("registry_config", "--registry-config"),
];

/// Refuses a global flag given on the command line (not through its
/// environment variable) to a command that `reads` nothing it sets, naming
/// the flag and the command (`matches`' subcommands, `manifest inspect`).
pub fn refuse_unread_flags(matches: &clap::ArgMatches, reads: Reads) -> Result<(), String> {
    let given = |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    let unread = STORE_FLAGS
        .iter()
        .filter(|_| !reads.store)
        .map(|flag| (flag, "uses no store"))
        .chain(
            REGISTRY_FLAGS
                .iter()
                .filter(|_| !reads.registries)
                .map(|flag| (flag, "talks to no registry")),
        )
        .find(|((id, _), _)| given(id));
    let Some(((_, spelling), why)) = unread else {
        return Ok(());
    };
    let mut command = vec!["kiln"];
    let mut level = matches;
    while let Some((name, sub)) = level.subcommand() {
        command.push(name);
        level = sub;
    }
    let because = match reads.because {
        "" => String::new(),
        because => format!(" ({because})"),
    };
    Err(format!(
        "{spelling} has no effect on `{}`, which {why}{because}",
        command.join(" ")
    ))
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

/// `DOCKER_DEFAULT_PLATFORM` for a command that takes one platform
/// (`kiln run`, `kiln pull`, as docker's CLI reads it for `docker run` and
/// `docker pull`; `kiln explain`, as the build it explains): `None` when
/// it is unset or empty.
pub fn default_platform(command: &str) -> anyhow::Result<Option<kiln_layers::Platform>> {
    match default_platforms()?.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        several => anyhow::bail!(
            "{command} takes one platform: DOCKER_DEFAULT_PLATFORM names {}; give --platform",
            several.len()
        ),
    }
}

/// `DOCKER_DEFAULT_PLATFORM`, the platforms a build makes when no
/// `--platform` says (buildx's default); empty when it is unset or empty
/// (this machine's then).
pub fn default_platforms() -> anyhow::Result<Vec<kiln_layers::Platform>> {
    let value = std::env::var("DOCKER_DEFAULT_PLATFORM").unwrap_or_default();
    let mut platforms: Vec<kiln_layers::Platform> = Vec::new();
    for word in value.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let platform = kiln_layers::Platform::parse(word)
            .map_err(|e| anyhow::anyhow!("DOCKER_DEFAULT_PLATFORM={value}: {word}: {e}"))?;
        if !platforms.contains(&platform) {
            platforms.push(platform);
        }
    }
    Ok(platforms)
}

/// `SOURCE_DATE_EPOCH` from the environment: the time reproducible outputs
/// are stamped with (seconds since the epoch); unset or empty is none, a
/// value that is not a number is refused, as BuildKit refuses it.
pub fn source_date_epoch() -> anyhow::Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => kiln_builder::frontend::parse_source_date_epoch(&value)
            .map_err(|e| anyhow::anyhow!("{e} (in the environment)")),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!("SOURCE_DATE_EPOCH in the environment is not UTF-8")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use clap::Parser;

    use super::{default_registry_config, RegistryConfigFile, TransferArgs};

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

    #[test]
    fn the_registry_config_is_the_flag_or_variable_else_the_default_place() {
        let given = |args: &[&str]| {
            let flags =
                Flags::try_parse_from(std::iter::once("kiln").chain(args.iter().copied())).unwrap();
            let default = Some(PathBuf::from("/etc/kiln/registries.toml"));
            RegistryConfigFile::resolve(flags.transfer.registry_config.as_deref(), default)
        };
        assert_eq!(
            given(&["--registry-config", "/srv/registries.toml"]),
            RegistryConfigFile::Given(PathBuf::from("/srv/registries.toml"))
        );
        assert_eq!(given(&["--registry-config", ""]), RegistryConfigFile::None);
        assert_eq!(
            given(&[]),
            RegistryConfigFile::Default(PathBuf::from("/etc/kiln/registries.toml"))
        );
        let os = |s: &str| Some(std::ffi::OsString::from(s));
        assert_eq!(
            default_registry_config(true, os("/x"), os("/home/u")),
            Some(PathBuf::from("/etc/kiln/registries.toml"))
        );
        assert_eq!(
            default_registry_config(false, os("/x"), os("/home/u")),
            Some(PathBuf::from("/x/kiln/registries.toml"))
        );
        assert_eq!(
            default_registry_config(false, os(""), os("/home/u")),
            Some(PathBuf::from("/home/u/.config/kiln/registries.toml"))
        );
        assert_eq!(default_registry_config(false, None, None), None);
    }
}
