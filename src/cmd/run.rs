//! `kiln run`: a command in a new container from an image in the local store;
//! and the hidden subcommand kiln re-executes itself into to set up a
//! container (the runtime's helper, which must start before any thread).
//!
//! Container state lives in `<root>/containers/<id>-<owner>-<nanos>-<n>/`
//! while the container runs (the owner token names this process, so that a
//! collection tells a running container's state from a dead one's without
//! the store's lock) and is always removed when it exits: kiln keeps no
//! stopped containers, so `--rm` is accepted and changes nothing.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use kiln_builder::run_argv::docker_run_command;
use kiln_layers::store::{Image, TaggedImage};
use kiln_layers::{NoProgress, Platform, Reference, Store};
use kiln_runtime::{BindMount, HelperCommand, Network, RunSpec, Streams};

use crate::cmd::build::PullArg;
use crate::cmd::limits::LimitArgs;
use crate::cmd::registry::RegistryArgs;
use crate::cmd::system::{collect_after, GcMode};
use crate::settings::{GlobalSettings, Reads};

/// The hidden subcommand the runtime re-executes kiln into (the runtime's
/// constant, re-exported for the commands that start runs).
use kiln_runtime::HELPER_SUBCOMMAND;

/// Docker's exit code when the container could not be created or started.
const EXIT_RUN_FAILED: u8 = 125;

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Run a command in a new container from a local image.
    // `-h` is --hostname, as in docker run; --help stays.
    #[command(disable_help_flag = true)]
    Run(Box<RunArgs>),
    /// Internal: the runtime's helper process (started by kiln itself).
    #[command(name = HELPER_SUBCOMMAND, hide = true)]
    RuntimeHelper,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkMode {
    /// The host's network.
    Host,
    /// A network namespace with only the loopback interface.
    None,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Remove the container when it exits (always done: kiln keeps no
    /// stopped containers).
    #[arg(long)]
    rm: bool,
    /// Set an environment variable; `K` alone passes kiln's own value of K.
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside the container (created when missing).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// User: name, uid, name:group or uid:gid, from the image's /etc/passwd.
    #[arg(short = 'u', long = "user", value_name = "USER")]
    user: Option<String>,
    /// Override the image's ENTRYPOINT (one word; "" resets it).
    #[arg(long, value_name = "CMD")]
    entrypoint: Option<String>,
    /// Network: the host's, or none (only loopback).
    #[arg(long, value_enum, default_value_t = NetworkMode::Host)]
    network: NetworkMode,
    /// Bind-mount a host path: HOST:CONTAINER[:ro|rw] (HOST absolute, existing).
    #[arg(short = 'v', long = "volume", value_name = "HOST:CTR[:ro]")]
    volumes: Vec<String>,
    /// More output. Here only `--verbose`: as in `docker run`, `-v` is a volume.
    // Same id as the global flag, so clap does not propagate the global
    // `-v` into `run` and the value still reaches the global settings.
    #[arg(long = "verbose", id = "verbose", action = clap::ArgAction::Count)]
    verbose: u8,
    /// Container host name (default: the first 12 digits of its id, or the
    /// host's name with --network host).
    #[arg(short = 'h', long, value_name = "NAME")]
    hostname: Option<String>,
    /// Print help (`-h` is --hostname, as in docker run).
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Keep standard input open (pass it to the container).
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Kill the container after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Security options; `seccomp=unconfined` turns the default seccomp
    /// profile off.
    #[arg(long = "security-opt", value_name = "OPT")]
    security_opt: Vec<String>,
    #[command(flatten)]
    limits: LimitArgs,
    /// The platform's image of a multi-platform image (os/arch[/variant];
    /// default: DOCKER_DEFAULT_PLATFORM, as docker run, else this machine's
    /// when the store holds it, else the one it holds). A foreign one runs
    /// through binfmt_misc's emulator.
    #[arg(long, value_name = "PLATFORM")]
    platform: Option<String>,
    /// Pull the image before running it: `missing` (when the store lacks
    /// it), `always` or `never`, as `docker run --pull`.
    #[arg(long, value_enum, default_value_t = PullArg::Missing, value_name = "POLICY")]
    pull: PullArg,
    /// How `--pull` reaches the registry, as `kiln pull`'s flags.
    #[command(flatten)]
    registry: RegistryArgs,
    /// The image: a tag in the local store (pulled when missing, see
    /// --pull), or an image id (prefix).
    #[arg(value_name = "IMAGE")]
    image: String,
    /// The command and its arguments (replace the image's CMD).
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        num_args = 0..
    )]
    args: Vec<String>,
}

impl RunCommand {
    /// The global settings this command reads (see [`Reads`]).
    pub fn reads(&self) -> Reads {
        match self {
            // Layers a build left in a registry are fetched first.
            RunCommand::Run(_) => Reads::BOTH,
            // Started by kiln, which passes it no global flag.
            RunCommand::RuntimeHelper => Reads::NOTHING,
        }
    }

    /// Whether this is the runtime's helper (started by kiln itself).
    pub fn is_helper(&self) -> bool {
        matches!(self, RunCommand::RuntimeHelper)
    }

    pub fn run(self, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
        match self {
            RunCommand::RuntimeHelper => {
                let code = kiln_runtime::helper_main();
                std::process::exit(code)
            }
            RunCommand::Run(args) => {
                let gc_mode = GcMode::from_env()?;
                let code = exit_code(run_container(*args, settings));
                // What killed runs and builds left, and the store's policy:
                // collected once the container is gone (detached by default).
                // A store that cannot be opened holds nothing to collect (and
                // the run has said why).
                match Store::open(&settings.root) {
                    Ok(store) => collect_after(&store, gc_mode),
                    Err(e) => tracing::debug!("no collection after the run: {e}"),
                }
                Ok(code)
            }
        }
    }
}

/// The exit code of `kiln run`: the container's, or Docker's for a run
/// that failed (after saying why).
fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            let code = err
                .downcast_ref::<kiln_runtime::RuntimeError>()
                .and_then(|e| e.exit_code())
                .and_then(|c| u8::try_from(c).ok())
                .unwrap_or(EXIT_RUN_FAILED);
            ExitCode::from(code)
        }
    }
}

/// `--pull`: the image pulled first when asked (`always`), or when the
/// store has nothing of that name (`missing`, with docker's line), for
/// `--platform` or this machine's platform. An image the store finds by
/// its id only is never pulled: an id names nothing in a registry.
fn pull_as_asked(store: &Store, args: &RunArgs, settings: &GlobalSettings) -> anyhow::Result<()> {
    let Ok(reference) = Reference::parse(&args.image) else {
        return Ok(());
    };
    let wanted = match &args.platform {
        Some(p) => Platform::parse(p).with_context(|| format!("--platform {p}"))?,
        None => Platform::host(),
    };
    let by_name = store.resolve_with_digests(&reference)?.is_some();
    let found = by_name
        || store
            .find(&args.image, &wanted)
            .is_ok_and(|f| !f.is_empty());
    // With --platform, a name's image for that platform must be held:
    // docker's image store answers "not found" for another one, and the
    // CLI pulls it (an id, which names nothing in a registry, is not).
    let found =
        found && (args.platform.is_none() || !by_name || holds(store, &args.image, &wanted));
    let pull = match args.pull {
        PullArg::Always => by_name || !found,
        PullArg::Missing if !found => {
            eprintln!("Unable to find image '{}' locally", args.image);
            true
        }
        PullArg::Missing | PullArg::Never => false,
    };
    if !pull {
        return Ok(());
    }
    crate::cmd::registry::pull_for_run(&reference, &wanted, &args.registry, settings)
        .with_context(|| format!("pulling {reference}"))
}

/// Whether the store holds `name`'s image for `platform`.
fn holds(store: &Store, name: &str, platform: &Platform) -> bool {
    let found = store
        .find(name, platform)
        .ok()
        .and_then(|f| f.into_iter().next());
    found.is_some_and(|tagged| (store.read_image_for(&tagged.descriptor, platform, name)).is_ok())
}

/// The image `args` name, for `--platform` (which must be held), or
/// this machine's platform when held, else the platform the store holds
/// (with Docker's warning that it does not match the host).
fn select_image(store: &Store, args: &RunArgs) -> anyhow::Result<(TaggedImage, Image)> {
    let host = Platform::host();
    let wanted = match &args.platform {
        Some(p) => Platform::parse(p).with_context(|| format!("--platform {p}"))?,
        None => host.clone(),
    };
    let tagged = store
        .find(&args.image, &wanted)
        .with_context(|| format!("unable to find image {:?} locally", args.image))?;
    let Some(tagged) = tagged.into_iter().next() else {
        bail!("unable to find image {:?} locally", args.image);
    };
    let image = match &args.platform {
        Some(_) => store
            .read_image_for(&tagged.descriptor, &wanted, &args.image)
            .with_context(|| format!("image {} for --platform {wanted}", args.image))?,
        None => store.read_image_or_held(&tagged.descriptor, &host)?,
    };
    let platform = image.config.platform().normalized();
    let foreign = !platform.architecture.is_empty() && host.compatible_rank(&platform).is_none();
    if args.platform.is_none() && foreign {
        eprintln!(
            "WARNING: The requested image's platform ({platform}) does not match the \
             detected host platform ({host}) and no specific platform was requested"
        );
    }
    Ok((tagged, image))
}

/// Parses `-v HOST:CTR[:ro|rw]`.
pub fn parse_volume(spec: &str) -> anyhow::Result<BindMount> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (host, target, read_only) = match parts.as_slice() {
        [host, target] => (*host, *target, false),
        [host, target, "ro"] => (*host, *target, true),
        [host, target, "rw"] => (*host, *target, false),
        [_, _, mode] => bail!("volume {spec:?}: unknown mode {mode:?} (ro or rw)"),
        _ => bail!("volume {spec:?}: expected HOST:CONTAINER[:ro|rw]"),
    };
    if !host.starts_with('/') {
        bail!("volume {spec:?}: the host path must be absolute (named volumes are not supported)");
    }
    if !target.starts_with('/') {
        bail!("volume {spec:?}: the container path must be absolute");
    }
    if Path::new(target).parent().is_none() {
        bail!("volume {spec:?}: the container path cannot be / (Docker refuses it too)");
    }
    let source = PathBuf::from(host);
    if !source.exists() {
        bail!("volume {spec:?}: host path {host} does not exist");
    }
    Ok(BindMount {
        source,
        target: PathBuf::from(target),
        read_only,
        within: None,
    })
}

/// Docker's container environment: PATH, HOSTNAME (and TERM with a tty)
/// first, then the image's and the user's variables replacing or appending.
pub fn container_env(
    image_env: &[String],
    user_env: &[String],
    hostname: &str,
    tty: bool,
) -> Vec<String> {
    let mut env = vec![
        format!("PATH={}", kiln_runtime::init::DEFAULT_PATH),
        format!("HOSTNAME={hostname}"),
    ];
    if tty {
        env.push("TERM=xterm".to_string());
    }
    let key = |entry: &str| entry.split('=').next().unwrap_or("").to_string();
    for entry in image_env.iter().chain(user_env) {
        let k = key(entry);
        match env.iter_mut().find(|e| key(e) == k) {
            Some(existing) => *existing = entry.clone(),
            None => env.push(entry.clone()),
        }
    }
    env
}

/// `-e K=V` as given; `-e K` takes kiln's own K, or is dropped when unset.
/// An entry with no name (`-e =V`, `-e ""`) is refused, as by docker.
fn user_env(flags: &[String]) -> anyhow::Result<Vec<String>> {
    let mut env = Vec::new();
    for flag in flags {
        if flag.is_empty() || flag.starts_with('=') {
            bail!("-e {flag:?}: invalid environment variable (no name)");
        }
        if flag.contains('=') {
            env.push(flag.clone());
        } else if let Ok(value) = std::env::var(flag) {
            env.push(format!("{flag}={value}"));
        }
    }
    Ok(env)
}

fn new_container_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for a container id")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

fn run_container(mut args: RunArgs, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
    // docker run's --platform defaults to DOCKER_DEFAULT_PLATFORM.
    if args.platform.is_none() {
        args.platform = crate::settings::default_platform("kiln run")?.map(|p| p.to_string());
    }
    // As docker run: a terminal's input must be one (piped input would
    // never reach the terminal's end of file); exit code 1, as docker's
    // CLI refuses it (not 125: nothing was asked of the runtime).
    if args.tty && args.interactive && !std::io::stdin().is_terminal() {
        eprintln!(
            "error: cannot attach stdin to a TTY-enabled container because stdin is not a \
             terminal"
        );
        return Ok(ExitCode::FAILURE);
    }
    let volumes = args
        .volumes
        .iter()
        .map(|v| parse_volume(v))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut seccomp = true;
    for opt in &args.security_opt {
        match opt.as_str() {
            "seccomp=unconfined" | "seccomp:unconfined" => seccomp = false,
            other => bail!("unsupported --security-opt {other:?} (only seccomp=unconfined)"),
        }
    }

    let store = Store::open(&settings.root)
        .with_context(|| format!("opening the store at {}", settings.root.display()))?;
    let _lease = store.lease()?;
    pull_as_asked(&store, &args, settings)?;
    let (tagged, image) = select_image(&store, &args)?;
    let platform = image.config.platform().normalized();
    if !platform.architecture.is_empty() {
        kiln_runtime::binfmt::ensure_emulator(
            &mut kiln_runtime::binfmt::RealBinfmt::default(),
            &platform.to_string(),
            &platform.architecture,
        )?;
    }
    // Refused before anything is unpacked: each layer is a lower dir, and
    // the runtime adds one of its own (the mount points).
    let layers = image.manifest.layers.len();
    if layers + 1 > kiln_runtime::MAX_LOWER_DIRS {
        bail!(
            "image {} has {layers} layers: overlay stacks at most {} lower dirs and the \
             runtime adds one, so at most {} layers can run",
            tagged.name,
            kiln_runtime::MAX_LOWER_DIRS,
            kiln_runtime::MAX_LOWER_DIRS - 1
        );
    }
    crate::cmd::fetch_missing_layers(&store, &image, settings)?;
    let lower_dirs = store.prepare_snapshots(&image, &NoProgress)?;
    let config = image.config.config.clone().unwrap_or_default();

    let command = docker_run_command(
        config.entrypoint.as_deref(),
        config.cmd.as_deref(),
        args.entrypoint.as_deref(),
        &args.args,
    )
    .with_context(|| format!("image {}", tagged.name))?;

    let id = new_container_id()?;
    // An empty -u, -w or --hostname is not given, as with docker: the
    // image's user and working directory, the default host name.
    let hostname = match (
        args.hostname.as_ref().filter(|h| !h.is_empty()),
        args.network,
    ) {
        (Some(name), _) => name.clone(),
        (None, NetworkMode::Host) => host_name(),
        (None, NetworkMode::None) => id[..12].to_string(),
    };
    let containers = store.containers_dir();
    std::fs::create_dir_all(&containers)
        .with_context(|| format!("creating {}", containers.display()))?;

    let state = containers.join(format!("{id}-{}", kiln_layers::store::unique_suffix()));
    let mut spec = RunSpec::new(lower_dirs, state, command.argv());
    spec.image = tagged.name.clone();
    spec.env = container_env(
        config.env.as_deref().unwrap_or_default(),
        &user_env(&args.env)?,
        &hostname,
        args.tty,
    );
    spec.cwd = args
        .workdir
        .clone()
        .filter(|w| !w.is_empty())
        .or(config.working_dir.clone())
        .unwrap_or_default();
    spec.user = args
        .user
        .clone()
        .filter(|u| !u.is_empty())
        .or(config.user.clone())
        .unwrap_or_default();
    spec.hostname = hostname;
    spec.network = match args.network {
        NetworkMode::Host => Network::Host,
        NetworkMode::None => Network::None,
    };
    spec.mounts = volumes;
    spec.streams = if args.tty {
        Streams::Terminal {
            forward_stdin: args.interactive,
        }
    } else {
        Streams::Stdio {
            stdin: if args.interactive {
                std::process::Stdio::inherit()
            } else {
                std::process::Stdio::null()
            },
            stdout: std::process::Stdio::inherit(),
            stderr: std::process::Stdio::inherit(),
        }
    };
    spec.timeout = args.timeout.map(Duration::from_secs);
    spec.seccomp = seccomp;
    spec.forward_signals = true;
    spec.limits = args.limits.limits();

    tracing::info!(image = %spec.image, argv = ?spec.argv, "running");
    let status = kiln_runtime::run(spec, &HelperCommand::current_exe(&[HELPER_SUBCOMMAND]))?;
    Ok(ExitCode::from((status.code() & 0xff) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_specs() {
        let tmp = std::env::temp_dir();
        let host = tmp.to_string_lossy();
        let m = parse_volume(&format!("{host}:/data:ro")).unwrap();
        assert_eq!((m.target, m.read_only), (PathBuf::from("/data"), true));
        assert!(!parse_volume(&format!("{host}:/data")).unwrap().read_only);
        assert!(parse_volume("rel:/data").is_err());
        assert!(parse_volume(&format!("{host}:rel")).is_err());
        assert!(parse_volume(&format!("{host}:/d:xx")).is_err());
        for root in ["/", "//", "/."] {
            let err = parse_volume(&format!("{host}:{root}")).unwrap_err();
            assert!(err.to_string().contains("cannot be /"), "{root}: {err}");
        }
        let err = parse_volume("/no/such/dir/kiln:/d")
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn env_order_follows_docker() {
        let env = container_env(
            &["PATH=/img".into(), "A=1".into()],
            &["A=2".into(), "B=3".into()],
            "h",
            true,
        );
        assert_eq!(env, ["PATH=/img", "HOSTNAME=h", "TERM=xterm", "A=2", "B=3"]);
    }
}
