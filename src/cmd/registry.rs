//! Registry commands: `pull`, `push`, `login`, `logout`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use kiln_layers::{Platform, Reporter, Store};
use kiln_registry::{Client, ClientConfig, Credential, DockerConfig, Reference, Repository};
use kiln_transfer::{PullOptions, PushOptions};

use crate::cmd::runtime;
use crate::progress::{human_bytes, ProgressArgs};
use crate::settings::{GlobalSettings, Reads};

/// How to reach registries: TLS trust and plain-HTTP exceptions.
#[derive(Clone, Debug, Default, Args)]
pub struct RegistryArgs {
    /// Allow plain HTTP, and HTTPS without certificate checks, for this
    /// registry (HOST or HOST:PORT; repeatable). Loopback registries need no flag.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// Also trust the CA certificates in this PEM file (repeatable).
    /// `SSL_CERT_FILE` replaces the system roots as usual.
    #[arg(long = "ca-cert", value_name = "FILE")]
    pub ca_certs: Vec<PathBuf>,
}

impl RegistryArgs {
    /// The client's settings: these flags merged with the registry
    /// configuration file's (flags add to the file: a `--ca-cert` is trusted
    /// for every registry, an `--insecure-registry` host gets plain HTTP and
    /// unchecked certificates whatever its table says).
    pub fn client_config(&self, settings: &GlobalSettings) -> anyhow::Result<ClientConfig> {
        Ok(ClientConfig {
            insecure_registries: self.insecure_registries.clone(),
            ca_certs: self.ca_certs.clone(),
            hosts: settings.registry_hosts()?,
            timeouts: settings.timeouts.clone(),
            ..ClientConfig::default()
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Download an image from a registry into the store.
    Pull(PullArgs),
    /// Upload images from the store to the registries their names point at.
    Push(PushArgs),
    /// Check credentials with a registry and store them in Docker's config.json.
    Login(LoginArgs),
    /// Remove a registry's credentials from Docker's config.json.
    Logout {
        /// Registry HOST or HOST:PORT (default: docker.io).
        host: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Platform to pick from a multi-platform image (default:
    /// DOCKER_DEFAULT_PLATFORM, as docker pull, else this machine's); `all`
    /// pulls every platform of the index.
    #[arg(long)]
    platform: Option<String>,
    /// Pull every platform of a multi-platform image (`--platform all`).
    #[arg(long, conflicts_with = "platform")]
    all_platforms: bool,
    /// Blobs downloaded at once (1 or more).
    #[arg(long, default_value_t = 6, value_parser = at_least_one())]
    concurrency: usize,
    reference: String,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    progress: ProgressArgs,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    #[arg(required = true)]
    references: Vec<String>,
    /// Blobs uploaded at once (1 or more).
    #[arg(long, default_value_t = 6, value_parser = at_least_one())]
    concurrency: usize,
    /// Ask the registry to mount blobs from this repository of the same
    /// registry before uploading them.
    #[arg(long, value_name = "REPOSITORY")]
    mount_from: Option<String>,
    /// Upload blobs in PATCH chunks of this many bytes (1 or more)
    /// instead of one PUT each.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    chunk_size: Option<u64>,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    progress: ProgressArgs,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    #[arg(short, long)]
    username: Option<String>,
    /// Password (prefer --password-stdin: command lines are visible to others).
    #[arg(short, long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    password_stdin: bool,
    /// Registry HOST or HOST:PORT (default: docker.io).
    host: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
}
/// `https://host:5000/v1/` or `host:5000` → `host:5000`; Docker Hub's names → `docker.io`.
fn registry_host(host: Option<&str>) -> anyhow::Result<String> {
    let Some(host) = host else {
        return Ok(kiln_registry::reference::DOCKER_HUB.to_string());
    };
    let bare = host
        .strip_prefix("https://")
        .or_else(|| host.strip_prefix("http://"))
        .unwrap_or(host);
    let bare = bare.split('/').next().unwrap_or(bare);
    if bare.is_empty() {
        bail!("invalid registry host {host:?}");
    }
    Ok(match bare {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => {
            kiln_registry::reference::DOCKER_HUB.to_string()
        }
        other => other.to_string(),
    })
}

impl RegistryCommand {
    /// The global settings this command reads (see [`Reads`]).
    pub fn reads(&self) -> Reads {
        match self {
            RegistryCommand::Pull(_) | RegistryCommand::Push(_) => Reads::BOTH,
            // Credentials go to Docker's config.json, not the store.
            RegistryCommand::Login(_) => Reads::REGISTRIES,
            RegistryCommand::Logout { .. } => Reads::NOTHING,
        }
    }

    pub fn run(self, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
        match self {
            RegistryCommand::Pull(args) => pull(args, settings),
            RegistryCommand::Push(args) => push(args, settings),
            RegistryCommand::Login(args) => login(args, settings),
            RegistryCommand::Logout { host } => logout(host.as_deref()),
        }
    }
}

/// `kiln pull`: the image into the store, then what changed.
fn pull(mut args: PullArgs, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
    let reference = Reference::parse(&args.reference)?;
    // docker pull's --platform defaults to DOCKER_DEFAULT_PLATFORM.
    if args.platform.is_none() && !args.all_platforms {
        args.platform = crate::settings::default_platform("kiln pull")?.map(|p| p.to_string());
    }
    let all_platforms = args.all_platforms || args.platform.as_deref() == Some("all");
    let platform = match args.platform.as_deref() {
        Some(p) if p != "all" => Platform::parse(p).with_context(|| format!("--platform {p}"))?,
        _ => Platform::host(),
    };
    let store = Store::open(&settings.root)?;
    let reporter = Arc::new(args.progress.reporter());
    let mut options = PullOptions::new(platform.clone());
    options.concurrency = args.concurrency;
    options.all_platforms = all_platforms;
    let pulled = pull_reporting(
        &store,
        &reference,
        &options,
        &args.registry,
        settings,
        &reporter,
    )?;
    // An image of one platform is pulled whatever --platform asked, as
    // Docker pulls it, with Docker's warning when it is another's.
    if args.platform.is_some() && !all_platforms {
        if let Err(e @ kiln_layers::Error::PlatformMismatch { .. }) =
            store.read_image_for(&pulled.manifest, &platform, &args.reference)
        {
            reporter.println(&format!("WARNING: {e}"));
        }
    }
    if all_platforms {
        let platforms: Vec<String> = pulled
            .manifests
            .iter()
            .map(|d| {
                d.platform
                    .as_ref()
                    .map_or("unknown".into(), |p| p.to_string())
            })
            .collect();
        reporter.println(&format!("Platforms: {}", platforms.join(", ")));
    }
    reporter.println(&pull_status(&reference, &pulled));
    println!("{reference}");
    Ok(ExitCode::SUCCESS)
}

/// Pulls `reference` as `options` say, its progress, first line and
/// digest line on `reporter` (stderr).
fn pull_reporting(
    store: &Store,
    reference: &Reference,
    options: &PullOptions,
    registry: &RegistryArgs,
    settings: &GlobalSettings,
    reporter: &Arc<crate::progress::CliReporter>,
) -> anyhow::Result<kiln_transfer::Pulled> {
    let client = Arc::new(Client::new(registry.client_config(settings)?)?);
    reporter.println(&format!("Pulling {reference}"));
    let shared: Arc<dyn Reporter> = reporter.clone();
    let pulled = runtime()?.block_on(kiln_transfer::pull(
        &client, store, reference, options, shared,
    ))?;
    reporter.println(&format!("Digest: {}", pulled.resolved_digest));
    Ok(pulled)
}

/// Docker's last line of a pull.
fn pull_status(reference: &Reference, pulled: &kiln_transfer::Pulled) -> String {
    if pulled.blobs_fetched == 0 {
        format!("Status: Image is up to date for {reference}")
    } else {
        format!(
            "Status: Downloaded newer image for {reference} ({} blobs, {})",
            pulled.blobs_fetched,
            human_bytes(pulled.bytes_fetched)
        )
    }
}

/// Pulls `reference`'s image for `platform` as `kiln pull` does, with
/// `kiln run`'s registry flags and the registry configuration file's
/// settings, everything on stderr: `kiln run`'s `--pull` (stdout is the
/// container's).
pub(crate) fn pull_for_run(
    reference: &Reference,
    platform: &Platform,
    registry: &RegistryArgs,
    settings: &GlobalSettings,
) -> anyhow::Result<()> {
    let store = Store::open(&settings.root)?;
    let reporter = Arc::new(crate::progress::ProgressArgs::default().reporter());
    let options = PullOptions::new(platform.clone());
    let pulled = pull_reporting(&store, reference, &options, registry, settings, &reporter)?;
    reporter.println(&pull_status(reference, &pulled));
    Ok(())
}

/// `kiln push`: each image to the registry its name points at.
fn push(args: PushArgs, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
    let references = args
        .references
        .iter()
        .map(|r| Reference::parse(r))
        .collect::<Result<Vec<_>, _>>()?;
    let store = Store::open(&settings.root)?;
    let mut config = args.registry.client_config(settings)?;
    config.chunk_size = args.chunk_size;
    let client = Arc::new(Client::new(config)?);
    let reporter = Arc::new(args.progress.reporter());
    let runtime = runtime()?;
    for reference in &references {
        let options = PushOptions {
            concurrency: args.concurrency,
            mount_from: mount_source(args.mount_from.as_deref(), reference)?,
            ..PushOptions::default()
        };
        let shared: Arc<dyn Reporter> = reporter.clone();
        let pushed = runtime.block_on(kiln_transfer::push(
            &client, &store, reference, &options, shared,
        ))?;
        println!(
            "{reference}: digest: {} size: {}",
            pushed.digest, pushed.size
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A count that must be 1 or more (`--concurrency`): 0 would mean
/// nothing moves, so it is refused rather than read as 1.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

/// The repository `--mount-from` names, in `reference`'s registry unless
/// it names a registry itself.
fn mount_source(
    mount_from: Option<&str>,
    reference: &Reference,
) -> anyhow::Result<Option<Repository>> {
    let Some(repo) = mount_from else {
        return Ok(None);
    };
    let named = Reference::parse(&format!("{}/{repo}", reference.registry()))
        .or_else(|_| Reference::parse(repo))
        .with_context(|| format!("--mount-from {repo}"))?;
    Ok(Some(named.repository))
}

/// `kiln login`: checks the credentials with the registry, then stores them.
fn login(args: LoginArgs, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
    let host = registry_host(args.host.as_deref())?;
    let Some(username) = args.username else {
        bail!("kiln login needs -u USERNAME");
    };
    if username.trim().is_empty() {
        bail!("-u: the username is empty");
    }
    let password = read_password(args.password, args.password_stdin)?;
    let mut config = args.registry.client_config(settings)?;
    config.credentials.explicit.insert(
        host.clone(),
        Credential::UsernamePassword {
            username: username.clone(),
            password: password.clone(),
        },
    );
    let client = Client::new(config)?;
    runtime()?
        .block_on(client.check_login(&host))
        .with_context(|| format!("logging in to {host} as {username}"))?;
    DockerConfig::from_env()?.store(&host, &username, &password)?;
    println!("Login Succeeded");
    Ok(ExitCode::SUCCESS)
}

/// The password `-p` gives (with a warning) or standard input holds (less
/// its line ending); an empty one is refused.
fn read_password(flag: Option<String>, from_stdin: bool) -> anyhow::Result<String> {
    let password = match (flag, from_stdin) {
        (Some(p), _) => {
            eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
            p
        }
        (None, true) => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the password from standard input")?;
            text.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => bail!("give the password with --password-stdin (or -p)"),
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password)
}

/// `kiln logout`: forgets the registry's credentials.
fn logout(host: Option<&str>) -> anyhow::Result<ExitCode> {
    let host = registry_host(host)?;
    if DockerConfig::from_env()?.erase(&host)? {
        println!("Removing login credentials for {host}");
    } else {
        println!("Not logged in to {host}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::registry_host;

    #[test]
    fn login_hosts_are_normalized() {
        assert_eq!(registry_host(None).unwrap(), "docker.io");
        assert_eq!(
            registry_host(Some("https://index.docker.io/v1/")).unwrap(),
            "docker.io"
        );
        assert_eq!(
            registry_host(Some("registry-1.docker.io")).unwrap(),
            "docker.io"
        );
        assert_eq!(
            registry_host(Some("localhost:5000")).unwrap(),
            "localhost:5000"
        );
        assert_eq!(
            registry_host(Some("http://127.0.0.1:5000/path")).unwrap(),
            "127.0.0.1:5000"
        );
        assert!(registry_host(Some("https://")).is_err());
    }
}
