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

use crate::cmd::build::parse_build_args;
use crate::cmd::parse::DockerfileSource;
use crate::cmd::registry::RegistryArgs;
use crate::settings::GlobalSettings;

#[derive(Debug, Subcommand)]
pub enum CheckCommand {
    /// Lint a Dockerfile: BuildKit's build checks and common RUN mistakes.
    ///
    /// Exits 1 when the Dockerfile does not parse, when an error-level rule
    /// fires, or when any rule fires under `# check=error=true`.
    Check(CheckArgs),
    /// Show what an image built from a Dockerfile will run (ENTRYPOINT, CMD,
    /// the argv of docker run, SHELL, USER, WORKDIR, ENV, …) and which line
    /// set each value, without building anything.
    ///
    /// Exits 1 when docker run would fail for lack of a command.
    Explain(ExplainArgs),
}

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
    #[arg(long, value_name = "E")]
    entrypoint: Option<String>,
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

impl CheckCommand {
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
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other.context("writing to standard output")?),
    }
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
        build_args: parse_build_args(&args.build_args),
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
    let source = DockerfileSource::read_or_default(args.file.as_deref(), &args.context)?;
    let ast = source.parse()?;
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
            build_args: parse_build_args(&args.build_args),
            target_platform: match &args.platform {
                Some(p) => Platform::parse(p).with_context(|| format!("--platform {p}"))?,
                None => Platform::host(),
            },
            build_platform: Platform::host(),
            run: Default::default(),
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
            write_stdout(&render::text(&explanation, &invocation))?;
        }
    }
    Ok(if explanation.argv.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
struct RegistryConfigs {
    client: Client,
    runtime: tokio::runtime::Runtime,
    /// Explain asks for a base image more than once (each stage, ONBUILD,
    /// the run argv); the registry is asked once per image and platform.
    fetched: std::sync::Mutex<std::collections::HashMap<(Reference, String), FoundImage>>,
}

impl RegistryConfigs {
    fn new(args: &RegistryArgs, settings: &GlobalSettings) -> anyhow::Result<RegistryConfigs> {
        let client = Client::new(args.client_config(settings))?;
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
fn shell_word(word: &str) -> String {
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
