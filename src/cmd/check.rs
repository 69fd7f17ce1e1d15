//! `kiln check` (lint a Dockerfile) and `kiln explain` (what the image will
//! run, and why): both read the Dockerfile and stop before building.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use kiln_builder::dockerignore::load_for_build;
use kiln_builder::explain::{explain, render, ExplainOptions};
use kiln_builder::lint::{check, LintOptions, Report};
use kiln_builder::plan::{BuildOptions, FoundImage, ImageLookup, LookupError};
use kiln_builder::solve::StoreResolver;
use kiln_layers::oci::Platform;
use kiln_layers::Reference;
use kiln_registry::Client;

use crate::cmd::build::{build_args_of, parse_build_args};
use crate::cmd::explain_image;
use crate::cmd::parse::DockerfileSource;
use crate::cmd::registry::RegistryArgs;
use crate::settings::{GlobalSettings, Reads};

#[derive(Debug, Subcommand)]
pub enum CheckCommand {
    /// Lint a Dockerfile: BuildKit's build checks and common RUN mistakes.
    ///
    /// Exits 1 when the Dockerfile does not parse, when an error-level rule
    /// fires, or when any rule fires under `# check=error=true`.
    Check(CheckArgs),
    /// Show what an image built from a Dockerfile will run (ENTRYPOINT, CMD,
    /// the argv of docker run, SHELL, USER, WORKDIR, ENV, …) and which line
    /// set each value, without building anything; or what an image runs
    /// (--image), in a Pod (--pod) or a Compose service (--compose), which
    /// history entry or manifest line set each value, and which process is
    /// PID 1.
    ///
    /// Exits 1 when docker run would fail for lack of a command.
    #[command(after_long_help = EXPLAIN_EXAMPLES)]
    Explain(ExplainArgs),
}

/// `kiln explain --help`'s examples: one for each question it answers.
const EXPLAIN_EXAMPLES: &str = "\
Examples:
  Why does my container ignore my arguments? (the argv, and the CMD x ENTRYPOINT cell)
    kiln explain . -- --port 8080
  What does this image run, and which history entry set each value?
    kiln explain --image nginx:1.27
  Why does it take 10 s to stop? (PID 1, and whether SIGTERM reaches the app)
    kiln explain --image myapp:1          (see \"PID 1\" and the ShellFormSignals warning)
  What does this image run in my Pod?
    kiln explain --pod deployment.yaml --container web
  What does this Compose service run?
    kiln explain --compose compose.yaml --service api
  Why is this image 1 GB? (what each layer adds, and the bytes later layers waste)
    kiln layers myapp:1 --top 20
    kiln history myapp:1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The Dockerfile (default: CONTEXT/Dockerfile, else CONTEXT/Containerfile; `-` for standard input).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
    /// A build argument (changes what FROM lines name); `K` alone takes
    /// kiln's own environment variable K.
    #[arg(long = "build-arg", value_name = "K=V")]
    build_args: Vec<String>,
    /// Check only the stages this stage needs, as a build of it would
    /// (default: every stage, as `docker build --check` without a target).
    #[arg(long, value_name = "STAGE")]
    target: Option<String>,
    /// The build context (its .dockerignore is checked against COPY/ADD).
    #[arg(value_name = "CONTEXT", default_value = ".")]
    context: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The Dockerfile (default: CONTEXT/Dockerfile, else CONTEXT/Containerfile; `-` for standard input).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// The stage to explain (default: the last one).
    #[arg(long, value_name = "STAGE")]
    target: Option<String>,
    /// A build argument; `K` alone takes kiln's own environment variable K.
    #[arg(long = "build-arg", value_name = "K=V")]
    build_args: Vec<String>,
    /// Target platform (default: this machine's): picks the base image's
    /// manifest and sets TARGETPLATFORM/TARGETOS/TARGETARCH.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
    /// Explain `docker run --entrypoint E` ("" resets the entrypoint).
    #[arg(long, value_name = "E", conflicts_with_all = ["pod", "compose"])]
    entrypoint: Option<String>,
    /// What to explain instead of a Dockerfile: an image, a Pod
    /// container, a Compose service.
    #[command(flatten)]
    runs: Box<RunsArgs>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
    /// Base images missing from the local store are treated as empty,
    /// instead of having their config (only the config) fetched from the
    /// registry.
    #[arg(long)]
    offline: bool,
    #[command(flatten)]
    registry: RegistryArgs,
    /// The build context (only locates the default Dockerfile: nothing is read from it).
    #[arg(value_name = "CONTEXT", default_value = ".")]
    context: PathBuf,
    /// Arguments after the image in `docker run IMAGE ARGS...` (after `--`).
    #[arg(value_name = "ARGS", last = true)]
    args: Vec<String>,
}

/// `kiln explain`'s flags for an image and where it runs.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Explain `docker run --init`: docker-init (tini) as PID 1.
    #[arg(long, conflicts_with_all = ["pod", "compose"])]
    init: bool,
    /// Explain an image instead of a Dockerfile: from the store, else its
    /// manifest and config from the registry. Sources are its history
    /// entries.
    #[arg(long, value_name = "REF", conflicts_with_all = ["file", "target", "build_args", "pod", "compose", "context"])]
    image: Option<String>,
    /// Explain the image a Kubernetes manifest (Pod, Deployment,
    /// StatefulSet, DaemonSet, Job, CronJob) names, as its container runs
    /// it.
    #[arg(long, value_name = "FILE.yaml", conflicts_with_all = ["file", "target", "build_args", "compose", "args", "context"])]
    pod: Option<PathBuf>,
    /// The manifest's container (when it has several).
    #[arg(long, value_name = "NAME", requires = "pod")]
    container: Option<String>,
    /// Explain the image a Compose file's service names, as it runs it.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["file", "target", "build_args", "args", "context"])]
    compose: Option<PathBuf>,
    /// The Compose service (when the file has several).
    #[arg(long, value_name = "NAME", requires = "compose")]
    service: Option<String>,
    /// Fit the text to N columns (default: the terminal's width when
    /// standard output is one, else none; 0: no limit).
    #[arg(long, value_name = "N")]
    width: Option<usize>,
}

impl CheckCommand {
    /// The global settings this command reads (see [`Reads`]).
    pub fn reads(&self) -> Reads {
        match self {
            // Base images are looked up in the store only.
            CheckCommand::Check(_) => Reads::STORE,
            // --offline asks no registry.
            CheckCommand::Explain(args) if args.offline => Reads {
                because: "--offline",
                ..Reads::STORE
            },
            CheckCommand::Explain(_) => Reads::BOTH,
        }
    }

    pub fn run(self, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
        match self {
            CheckCommand::Check(args) => run_check(args, settings),
            CheckCommand::Explain(args) => run_explain(args, settings),
        }
    }
}

/// Prints to standard output; a closed pipe (`| head`) is not an error.
pub(crate) fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A closed pipe goes up as the io error it is: main dies of SIGPIPE
    // then, as every other command's output does (`| head -0`: 141).
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to standard output")
}

fn run_check(args: CheckArgs, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
    let source = DockerfileSource::read_or_default(args.file.as_deref(), &args.context)?;
    let (text, name) = (source.text(), source.name);
    let dockerfile_path = args.file.clone().filter(|f| f.as_os_str() != "-");
    let dockerignore = load_for_build(&args.context, dockerfile_path.as_deref())
        .context("reading .dockerignore")?;
    let images = StoreResolver::open_existing(&settings.root)
        .with_context(|| format!("opening the store at {}", settings.root.display()))?;
    let options = LintOptions {
        build_args: build_args_of(&args.build_args)?,
        dockerignore: Some(dockerignore),
        images: Some(&images),
        target: args.target.clone(),
        ..LintOptions::default()
    };
    let report = check(&text, &name, &options);
    match args.format {
        OutputFormat::Json => {
            let mut value = serde_json::to_value(&report)?;
            if let Some(map) = value.as_object_mut() {
                map.insert("fails".into(), serde_json::Value::Bool(report.fails()));
            }
            write_stdout(&(serde_json::to_string_pretty(&value)? + "\n"))?;
        }
        OutputFormat::Text => write_stdout(&check_text(&report))?,
    }
    Ok(if report.fails() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `file:line:column: severity: Rule: message`, one finding a line.
pub(crate) fn check_text(report: &Report) -> String {
    let mut out = String::new();
    if let Some(error) = &report.error {
        match (error.line, error.column) {
            // Parser errors already start with file:line:column.
            _ if error.message.starts_with(&format!("{}:", report.file)) => {
                out.push_str(&format!("error: {}\n", error.message))
            }
            (Some(line), Some(column)) => out.push_str(&format!(
                "{}:{line}:{column}: error: {}\n",
                report.file, error.message
            )),
            _ => out.push_str(&format!("error: {}\n", error.message)),
        }
    }
    for f in &report.findings {
        out.push_str(&format!(
            "{}:{}:{}: {}: {}: {}\n",
            report.file,
            f.line,
            f.column,
            f.severity.as_str(),
            f.rule,
            f.message
        ));
    }
    for note in &report.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    let count = |s: kiln_builder::lint::rules::Severity| {
        report.findings.iter().filter(|f| f.severity == s).count()
    };
    use kiln_builder::lint::rules::Severity;
    if report.findings.is_empty() && report.error.is_none() {
        out.push_str("no problems found\n");
    } else {
        out.push_str(&format!(
            "{} error(s), {} warning(s), {} info\n",
            // A Dockerfile that does not parse counts as an error.
            count(Severity::Error) + usize::from(report.error.is_some()),
            count(Severity::Warning),
            count(Severity::Info)
        ));
    }
    if report.error_on_warning && !report.findings.is_empty() {
        out.push_str("check=error=true: every finding fails the check\n");
    }
    out
}

fn run_explain(args: ExplainArgs, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
    if args.offline
        && !(args.registry.insecure_registries.is_empty() && args.registry.ca_certs.is_empty())
    {
        anyhow::bail!("--insecure-registry and --ca-cert have no effect with --offline, which asks no registry");
    }
    if matches!(args.format, OutputFormat::Json) && args.runs.width.is_some() {
        anyhow::bail!("--width fits the text to N columns; --format json is never cut");
    }
    // clap's `requires` is waived when an argument conflicting with the
    // required one is given (a CONTEXT, --image): said here instead.
    if args.runs.container.is_some() && args.runs.pod.is_none() {
        anyhow::bail!("--container picks a container of --pod's manifest: give --pod FILE.yaml");
    }
    if args.runs.service.is_some() && args.runs.compose.is_none() {
        anyhow::bail!("--service picks a service of --compose's file: give --compose FILE");
    }
    if let Some(target) = image_target(&args) {
        let platform = match &args.platform {
            Some(p) => Platform::parse(p).with_context(|| format!("--platform {p}"))?,
            None => Platform::host(),
        };
        let request = explain_image::Request {
            target,
            entrypoint: args.entrypoint.clone(),
            args: args.args.clone(),
            init: args.runs.init,
            platform,
            platform_asked: args.platform.is_some(),
            offline: args.offline,
            format: args.format,
            width: text_width(args.runs.width),
            registry: &args.registry,
        };
        return explain_image::run(request, settings);
    }
    if args.runs.init {
        anyhow::bail!("--init explains an image's PID 1: use it with --image");
    }
    let source = DockerfileSource::read_or_default(args.file.as_deref(), &args.context)?;
    let ast = source.parse()?;
    let build_args = parse_build_args(&args.build_args)?;
    kiln_builder::frontend::Frontend::refuse_foreign_syntax(&ast, &build_args).map_err(
        |e| match e.line {
            Some(line) => anyhow::anyhow!("{}:{line}: {}", source.name, e.message),
            None => anyhow::anyhow!("{}: {}", source.name, e.message),
        },
    )?;
    let df = kiln_parser::instructions::from_ast(&ast)?;
    let store = StoreResolver::open_existing(&settings.root)
        .with_context(|| format!("opening the store at {}", settings.root.display()))?;
    let registry = if args.offline {
        None
    } else {
        Some(RegistryConfigs::new(&args.registry, settings)?)
    };
    let images = StoreThenRegistry {
        store: &store,
        registry: registry.as_ref(),
    };
    let options = ExplainOptions {
        build: BuildOptions {
            target: args.target.clone(),
            build_args,
            // As the build would: --platform, else DOCKER_DEFAULT_PLATFORM,
            // else this machine's.
            target_platform: match &args.platform {
                Some(p) => Platform::parse(p).with_context(|| format!("--platform {p}"))?,
                None => crate::settings::default_platform("kiln explain")?
                    .unwrap_or_else(Platform::host),
            },
            build_platform: Platform::host(),
            run: Default::default(),
            named_contexts: Default::default(),
        },
        entrypoint: args.entrypoint.clone(),
        args: args.args.clone(),
        offline: args.offline,
    };
    let explanation = explain(&df, &options, &images)?;
    match args.format {
        OutputFormat::Json => write_stdout(&(serde_json::to_string_pretty(&explanation)? + "\n"))?,
        OutputFormat::Text => {
            let mut invocation = String::from("docker run");
            if let Some(e) = &args.entrypoint {
                invocation.push_str(&format!(" --entrypoint {}", shell_word(e)));
            }
            invocation.push_str(" IMAGE");
            for a in &args.args {
                invocation.push(' ');
                invocation.push_str(&shell_word(a));
            }
            write_stdout(&render::text_width(
                &explanation,
                &invocation,
                text_width(args.runs.width),
            ))?;
        }
    }
    Ok(if explanation.argv.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The image, Pod container or Compose service to explain, if any.
fn image_target(args: &ExplainArgs) -> Option<explain_image::Target> {
    if let Some(image) = &args.runs.image {
        return Some(explain_image::Target::Image(image.clone()));
    }
    if let Some(file) = &args.runs.pod {
        return Some(explain_image::Target::Pod {
            file: file.clone(),
            container: args.runs.container.clone(),
        });
    }
    args.runs
        .compose
        .as_ref()
        .map(|file| explain_image::Target::Compose {
            file: file.clone(),
            service: args.runs.service.clone(),
        })
}

/// The width text output is fitted to: `--width` (0: none), else the
/// terminal's when standard output is one.
fn text_width(flag: Option<usize>) -> Option<usize> {
    match flag {
        Some(0) => None,
        Some(n) => Some(n),
        None => {
            let stdout = std::io::stdout();
            if !std::io::IsTerminal::is_terminal(&stdout) {
                return None;
            }
            rustix::termios::tcgetwinsize(&stdout)
                .ok()
                .map(|w| usize::from(w.ws_col))
                .filter(|w| *w > 0)
        }
    }
}

/// Base images from the store, else (not under `--offline`) their config
/// from the registry.
struct StoreThenRegistry<'a> {
    store: &'a StoreResolver<'a>,
    registry: Option<&'a RegistryConfigs>,
}

impl ImageLookup for StoreThenRegistry<'_> {
    /// The registry is asked only when the store does not have the image:
    /// a store that fails to answer (a damaged index, say) is an error.
    fn lookup(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<FoundImage, LookupError> {
        match (self.store.lookup(reference, platform), self.registry) {
            (Err(e), Some(registry)) if e.is_not_found() => registry.lookup(reference, platform),
            (result, _) => result,
        }
    }
}

/// An image's config from its registry ([`kiln_transfer::fetch_config`]):
/// no layer is downloaded and nothing is stored.
pub(crate) struct RegistryConfigs {
    client: Client,
    runtime: tokio::runtime::Runtime,
    /// Explain asks for a base image more than once (each stage, ONBUILD,
    /// the run argv); the registry is asked once per image and platform.
    fetched: std::sync::Mutex<std::collections::HashMap<(Reference, String), FoundImage>>,
}

impl RegistryConfigs {
    pub(crate) fn new(
        args: &RegistryArgs,
        settings: &GlobalSettings,
    ) -> anyhow::Result<RegistryConfigs> {
        let client = Client::new(args.client_config(settings)?)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        Ok(RegistryConfigs {
            client,
            runtime,
            fetched: Default::default(),
        })
    }
}

impl ImageLookup for RegistryConfigs {
    fn lookup(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<FoundImage, LookupError> {
        let key = (reference.clone(), platform.normalized().to_string());
        if let Some(known) = self.fetched.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(known);
        }
        let fetched = self
            .runtime
            .block_on(kiln_transfer::fetch_config(
                &self.client,
                reference,
                platform,
            ))
            .map_err(|e| {
                let message =
                    format!("not in the local store, and its config could not be fetched: {e}");
                match e {
                    kiln_transfer::TransferError::Registry(kiln_registry::Error::NotFound {
                        ..
                    }) => LookupError::NotFound(message),
                    _ => LookupError::failed(message),
                }
            })?;
        let resolved = FoundImage {
            reference: reference.clone(),
            // The platform's manifest, as the store resolver gives it.
            digest: Some(fetched.manifest.digest),
            config: fetched.config,
        };
        if let Ok(mut known) = self.fetched.lock() {
            known.insert(key, resolved.clone());
        }
        Ok(resolved)
    }
}

/// A word quoted for a POSIX shell when it needs it.
pub(crate) fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}
