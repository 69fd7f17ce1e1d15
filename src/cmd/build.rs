//! `kiln build`: a Dockerfile and its context into an image in the store
//! (and optionally a registry, an OCI layout, a docker-archive or a
//! directory). The build logic lives in kiln-builder; this turns flags into
//! its calls and draws progress.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use kiln_builder::context::{BuildContext, StatCache};
use kiln_builder::copy::{CopyOptions, FetchInfo, UrlDownloads, UrlFetcher};
use kiln_builder::dockerignore;
use kiln_builder::plan::{compute_cache_keys, plan, BuildOptions, Plan, RemoteSources, StepKind};
use kiln_builder::rootfs::LayeredRootfs;
use kiln_builder::secrets::Secret;
use kiln_builder::solve::{solve, SolveError, SolveOptions, StoreResolver};
use kiln_layers::archive::{self, Format, SaveItem};
use kiln_layers::compressed::compressed_image;
use kiln_layers::{Compression, Descriptor, Digest, Platform, Reference, Reporter, Store};
use kiln_registry::{Client, ClientConfig};
use kiln_runtime::{HelperCommand, Network};

use crate::cmd::limits::LimitArgs;
use crate::cmd::parse::DockerfileSource;
use crate::cmd::run::HELPER_SUBCOMMAND;
use crate::progress::{BuildProgress, ProgressArgs, ProgressMode};
use crate::settings::GlobalSettings;

#[derive(Debug, Subcommand)]
pub enum BuildCommand {
    /// Build an image from a Dockerfile.
    Build(BuildArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    Text,
    Json,
    /// Graphviz: stages as clusters, steps as nodes, dependencies as edges.
    Dot,
    /// A Mermaid flowchart of the same graph.
    Mermaid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    Host,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    Gzip,
    Zstd,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The build context directory.
    #[arg(value_name = "CONTEXT", default_value = ".")]
    context: PathBuf,
    /// The Dockerfile (default: CONTEXT/Dockerfile; `-` reads stdin).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Name the image (repeatable).
    #[arg(short = 't', long = "tag", value_name = "REF")]
    tags: Vec<String>,
    /// Build this stage (default: the last).
    #[arg(long)]
    target: Option<String>,
    /// A build argument: K=V, or K to take the value of the environment variable K.
    #[arg(long = "build-arg", value_name = "K=V")]
    build_args: Vec<String>,
    /// Target platform (default: this machine's).
    #[arg(long)]
    platform: Option<String>,
    /// Pull base images even when the store has them.
    #[arg(long)]
    pull: bool,
    /// Do not use the build cache (results are still cached).
    #[arg(long)]
    no_cache: bool,
    /// Show the plan (stages, steps, cache hits, what runs in parallel) and stop.
    #[arg(long)]
    dry_run: bool,
    /// Format of --dry-run output.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    format: PlanFormat,
    /// RUN's network (a RUN --network flag wins).
    #[arg(long, value_enum, default_value_t = NetworkArg::Host)]
    network: NetworkArg,
    /// How the layers the build made are compressed when they leave the
    /// store (--push, --output type=oci|docker); the store keeps them as
    /// plain tar, as Docker's image store does.
    #[arg(long, value_enum, default_value_t = CompressionArg::Gzip)]
    compression: CompressionArg,
    /// Write the image id (config digest) to this file.
    #[arg(long, value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// Write JSON with the image, manifest and config digests to this file.
    #[arg(long, value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    /// Also export: type=oci,dest=DIR|FILE.tar, type=docker,dest=FILE.tar or type=local,dest=DIR.
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    outputs: Vec<String>,
    /// Push every tag to its registry after the build.
    #[arg(long)]
    push: bool,
    /// A secret for RUN --mount=type=secret: id=ID,src=FILE (or env=VAR).
    #[arg(long = "secret", value_name = "id=ID,src=FILE")]
    secrets: Vec<String>,
    /// Forward an SSH agent to RUN --mount=type=ssh: `default` ($SSH_AUTH_SOCK),
    /// ID=SOCKET, or ID=KEYFILE,... (key files loaded into an ssh-agent kiln starts).
    #[arg(long = "ssh", value_name = "default|ID[=SOCKET|KEY[,KEY]]")]
    ssh: Vec<String>,
    /// Write Docker (schema 2) media types instead of OCI ones.
    #[arg(
        long,
        env = "KILN_DOCKER_MEDIATYPES",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    docker_mediatypes: bool,
    /// Print only the image id.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Allow plain HTTP (and unverified HTTPS) for this registry (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure_registries: Vec<String>,
    /// Also trust the CA certificates in this PEM file (repeatable).
    #[arg(long = "ca-cert", value_name = "FILE")]
    ca_certs: Vec<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    progress: ProgressArgs,
}

impl BuildCommand {
    pub fn run(self, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
        match self {
            BuildCommand::Build(args) => build(args, settings),
        }
    }
}

/// The layer store's progress during a build: base image pulls are shown;
/// unpacking and packing layers (internal to steps) only with `-v`.
struct BuildReporter {
    inner: crate::progress::CliReporter,
    verbose: bool,
}

impl BuildReporter {
    fn shows(&self, label: &str) -> bool {
        self.verbose || !matches!(label, "unpacking" | "packing")
    }
}

impl Reporter for BuildReporter {
    fn start(&self, id: &str, label: &str, total: Option<u64>) {
        if self.shows(label) {
            self.inner.start(id, label, total);
        }
    }

    fn progress(&self, id: &str, bytes: u64) {
        // Unknown ids (hidden items) are ignored by the inner reporter.
        self.inner.progress(id, bytes);
    }

    fn done(&self, id: &str, outcome: kiln_layers::Outcome) {
        self.inner.done(id, outcome);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The registry client and its async runtime, made on first use: a build
/// whose base images are all in the store and that adds no URL needs
/// neither, and loading the system's CA certificates alone took a good part
/// of a fully cached rebuild.
struct LazyClient {
    config: ClientConfig,
    made: std::sync::OnceLock<(Arc<tokio::runtime::Runtime>, Arc<Client>)>,
}

impl LazyClient {
    fn new(config: ClientConfig) -> Self {
        LazyClient {
            config,
            made: std::sync::OnceLock::new(),
        }
    }

    fn get(&self) -> anyhow::Result<(&tokio::runtime::Runtime, &Arc<Client>)> {
        if self.made.get().is_none() {
            let made = (
                Arc::new(runtime()?),
                Arc::new(Client::new(self.config.clone())?),
            );
            // Another thread may have made one meanwhile: either will do.
            let _ = self.made.set(made);
        }
        let (runtime, client) = self.made.get().context("registry client not initialized")?;
        Ok((runtime.as_ref(), client))
    }
}

/// Fetches ADD URLs through the registry client on the async runtime (the
/// builder itself speaks no HTTP).
struct HttpFetcher<'a> {
    network: &'a LazyClient,
}

impl UrlFetcher for HttpFetcher<'_> {
    fn fetch(&self, url: &str, out: &mut dyn std::io::Write) -> Result<FetchInfo, String> {
        let (runtime, client) = self.network.get().map_err(|e| format!("{e:#}"))?;
        let downloaded = runtime
            .block_on(client.download(url, out))
            .map_err(|e| e.to_string())?;
        Ok(FetchInfo {
            last_modified: downloaded.last_modified,
        })
    }
}

/// `--build-arg K=V`, or `K` from kiln's environment (dropped when unset), as
/// the docker CLI does.
pub(crate) fn parse_build_args(flags: &[String]) -> BTreeMap<String, String> {
    flags
        .iter()
        .filter_map(|flag| match flag.split_once('=') {
            Some((k, v)) => Some((k.to_string(), v.to_string())),
            None => std::env::var(flag).ok().map(|v| (flag.clone(), v)),
        })
        .collect()
}

/// `--secret id=ID,src=FILE` or `id=ID,env=VAR`. An env secret's value
/// stays in kiln's memory (see [`kiln_builder::secrets`]): no file kiln
/// writes holds it, so no interruption can leave one behind.
fn parse_secrets(raw: &[String]) -> anyhow::Result<BTreeMap<String, Secret>> {
    let mut out = BTreeMap::new();
    for item in raw {
        let fields: BTreeMap<&str, &str> = item
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let id = fields
            .get("id")
            .with_context(|| format!("--secret {item}: id= is required"))?;
        let secret = match (
            fields.get("src").or_else(|| fields.get("source")),
            fields.get("env"),
        ) {
            (Some(src), _) => {
                let path = PathBuf::from(src);
                if !path.is_file() {
                    bail!("--secret {item}: {} is not a file", path.display());
                }
                Secret::file(path)
            }
            (None, Some(var)) => {
                use std::os::unix::ffi::OsStrExt;
                let value = std::env::var_os(var)
                    .with_context(|| format!("--secret {item}: ${var} is not set"))?;
                Secret::from_bytes(value.as_bytes())
            }
            (None, None) => bail!("--secret {item}: src= or env= is required"),
        };
        out.insert(id.to_string(), secret);
    }
    Ok(out)
}

fn build(args: BuildArgs, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let source = DockerfileSource::read_or_default(args.file.as_deref(), &args.context)?;
    let text = source.text();
    let name = &source.name;
    let dockerfile_path = source.path.clone();
    let ast = source.parse()?;
    let typed = kiln_parser::instructions::from_ast(&ast)?;
    let platform = match &args.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    let options = BuildOptions {
        target: args.target.clone(),
        build_args: parse_build_args(&args.build_args),
        target_platform: platform.clone(),
        build_platform: Platform::host(),
    };
    let source_date_epoch = options
        .build_args
        .get("SOURCE_DATE_EPOCH")
        .and_then(|v| v.trim().parse::<i64>().ok())
        .or_else(crate::settings::source_date_epoch);
    let tags: Vec<Reference> = args
        .tags
        .iter()
        .map(|t| Reference::parse(t).with_context(|| format!("-t {t}")))
        .collect::<anyhow::Result<_>>()?;

    let store = Store::open(&settings.root)?;
    // Held until the image is tagged and exported: solve's own lease ends
    // when it returns, and a `kiln prune` waiting for it would otherwise
    // remove the new, not yet tagged manifest and config.
    let _lease = store.lease()?;
    let progress = args.progress.reporter();
    let shared_view = progress.multi();
    let mode = if args.quiet {
        ProgressMode::Quiet
    } else {
        progress.mode()
    };
    // --dry-run prints the plan and nothing of a build's progress.
    let printer = BuildProgress::new(
        if args.dry_run {
            ProgressMode::Quiet
        } else {
            mode
        },
        shared_view,
    );
    printer.vertex(
        &format!(
            "[internal] load build definition from {}",
            dockerfile_path
                .as_deref()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "Dockerfile".into())
        ),
        &[format!(
            "transferring dockerfile: {} done",
            crate::progress::human_bytes(source.bytes.len() as u64)
        )],
        started.elapsed().as_secs_f64(),
    );
    let reporter: Arc<dyn Reporter> = Arc::new(BuildReporter {
        inner: if mode == ProgressMode::Quiet {
            crate::progress::CliReporter::new(ProgressMode::Quiet)
        } else {
            progress
        },
        // `-v` turns on info logs: it also shows layer packing/unpacking.
        verbose: tracing::enabled!(tracing::Level::INFO),
    });
    // The client is made on first use; a CA file that cannot be read is
    // still an error of every build, as it is of kiln pull.
    for ca in &args.ca_certs {
        std::fs::File::open(ca).with_context(|| format!("--ca-cert {}", ca.display()))?;
    }
    let network = LazyClient::new(ClientConfig {
        insecure_registries: args.insecure_registries.clone(),
        ca_certs: args.ca_certs.clone(),
        timeouts: settings.timeouts.clone(),
        ..ClientConfig::default()
    });
    let pull = {
        let network = &network;
        let store = &store;
        let reporter = reporter.clone();
        move |reference: &Reference, platform: &Platform| -> Result<Descriptor, String> {
            let options = kiln_transfer::PullOptions::new(platform.clone());
            let (rt, client) = network.get().map_err(|e| format!("{e:#}"))?;
            let pulled = rt
                .block_on(kiln_transfer::pull(
                    client,
                    store,
                    reference,
                    &options,
                    reporter.clone(),
                ))
                .map_err(|e| {
                    // The caller's message names the image already
                    // ("base image X: …"); transfer errors start with it too.
                    let text = e.to_string();
                    match text.strip_prefix(&format!("{reference}: ")) {
                        Some(rest) => rest.to_string(),
                        None => text,
                    }
                })?;
            Ok(pulled.manifest)
        }
    };
    let resolver = StoreResolver::new(&store, Some(&pull)).always_pull(args.pull);
    // BuildKit shows the Dockerfile around the line an error is about.
    let show_line = |line: Option<usize>| {
        let shown = !matches!(mode, ProgressMode::Quiet | ProgressMode::Json);
        if let (Some(line), true) = (line, shown) {
            let short = dockerfile_path
                .as_deref()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "Dockerfile".into());
            eprint!("{}", dockerfile_excerpt(&short, &text, line));
        }
    };
    let mut planned = plan(&typed, &options, &resolver).inspect_err(|e| show_line(e.line()))?;
    for w in &planned.warnings {
        if mode != ProgressMode::Quiet {
            match w.line {
                Some(l) => eprintln!("WARNING: {name}:{l}: {}", w.message),
                None => eprintln!("WARNING: {}", w.message),
            }
        }
    }

    let loading_context = Instant::now();
    let ignore = dockerignore::load_for_build(&args.context, dockerfile_path.as_deref())?;
    let mut stat_cache = StatCache::open(store.root(), &args.context)?;
    let context = BuildContext::load(&args.context, &ignore, Some(&mut stat_cache))?;
    let context_bytes: u64 = context
        .entries()
        .values()
        .filter(|e| matches!(e.kind, kiln_builder::context::EntryKind::File))
        .map(|e| e.size)
        .sum();
    printer.vertex(
        "[internal] load build context",
        &[format!(
            "transferring context: {} done",
            crate::progress::human_bytes(context_bytes)
        )],
        loading_context.elapsed().as_secs_f64(),
    );
    if let Err(e) = stat_cache.save() {
        tracing::warn!("{e}");
    }
    let fetcher = HttpFetcher { network: &network };
    // Each ADD URL is downloaded once: for its cache key, or by the step
    // that adds it. The files live in a scratch dir under builds/ (the
    // lease above keeps a `kiln prune` off them, its name tells a later
    // build when this one was killed) until the build is over.
    let urls_scratch = store.scratch_dir("urls")?;
    let downloads = UrlDownloads::new(&fetcher, urls_scratch.path().join("downloads"));
    let sources = RemoteSources {
        downloads: Some(&downloads),
    };
    compute_cache_keys(&mut planned, Some(&context), &sources)
        .inspect_err(|e| show_line(e.line()))?;

    if args.dry_run {
        print_plan(&planned, &store, args.format)?;
        return Ok(ExitCode::SUCCESS);
    }

    // Agents started for key files live until the build is over.
    let mut ssh_agents = Vec::new();
    let mut ssh = BTreeMap::new();
    let auth_sock = std::env::var("SSH_AUTH_SOCK").ok();
    for spec in &args.ssh {
        let (id, agent) = kiln_builder::ssh::parse_ssh_flag(spec, auth_sock.as_deref())?;
        ssh.insert(id, agent.socket().to_path_buf());
        ssh_agents.push(agent);
    }
    let compression = match args.compression {
        CompressionArg::Gzip => Compression::Gzip,
        CompressionArg::Zstd => Compression::Zstd,
    };
    let solve_options = SolveOptions {
        no_cache: args.no_cache,
        source_date_epoch,
        network: match args.network {
            NetworkArg::Host => Network::Host,
            NetworkArg::None => Network::None,
        },
        helper: HelperCommand::current_exe(&[HELPER_SUBCOMMAND]),
        downloads: Some(&downloads),
        events: &printer,
        reporter: reporter.as_ref(),
        docker_media_types: args.docker_mediatypes,
        secrets: parse_secrets(&args.secrets)?,
        ssh,
        limits: args.limits.limits(),
    };
    let built = match solve(&store, &planned, &context, &resolver, &solve_options) {
        Ok(built) => built,
        Err(e) => {
            printer.finish();
            if let (SolveError::RunFailed { last_lines, .. }, Some((step, message)), false) = (
                &e,
                printer.failure(),
                matches!(mode, ProgressMode::Quiet | ProgressMode::Json),
            ) {
                // BuildKit's summary: the step's last output, the
                // Dockerfile around it, then the error without repeating
                // the output.
                eprintln!("------\n > {step}:");
                for line in last_lines {
                    eprintln!("{line}");
                }
                eprintln!("------");
                show_line(failed_line(&e));
                bail!("failed to solve: {message}");
            }
            show_line(failed_line(&e));
            return Err(e.into());
        }
    };
    let exporting = Instant::now();
    let image = store.read_image(&built.manifest, &platform_of(&built))?;
    let image_id = image.id().clone();
    if tags.is_empty() {
        store.add_untagged(&built.manifest)?;
    }
    for t in &tags {
        store.tag(t, &built.manifest)?;
    }
    let mut export_lines = vec![
        format!("writing image {image_id} done"),
        format!("writing manifest {} done", built.manifest.digest),
    ];
    export_lines.extend(tags.iter().map(|t| format!("naming to {t} done")));
    printer.vertex(
        "exporting to image",
        &export_lines,
        exporting.elapsed().as_secs_f64(),
    );
    // What the metadata file names: the manifest that left the store (its
    // layers compressed; a push and an oci or docker output make the same
    // one) when one did, as BuildKit reports; else the local one.
    let mut reported = built.manifest.clone();
    for spec in &args.outputs {
        if let Some(exported) = export(&store, spec, &tags, &built, compression, reporter.as_ref())?
        {
            reported = exported;
        }
    }
    if args.push {
        if tags.is_empty() {
            bail!("--push needs at least one -t");
        }
        for t in &tags {
            let options = kiln_transfer::PushOptions {
                compression,
                ..Default::default()
            };
            let (rt, client) = network.get()?;
            let pushed = rt.block_on(kiln_transfer::push(
                client,
                &store,
                t,
                &options,
                reporter.clone(),
            ))?;
            if mode != ProgressMode::Quiet {
                eprintln!("pushed {t}: {}", pushed.digest);
            }
            reported.digest = pushed.digest;
            reported.size = pushed.size;
        }
    }
    if let Some(path) = &args.iidfile {
        std::fs::write(path, image_id.to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.metadata_file {
        let meta = serde_json::json!({
            "containerimage.digest": reported.digest.to_string(),
            "containerimage.config.digest": image_id.to_string(),
            "containerimage.descriptor": {
                "mediaType": reported.media_type,
                "digest": reported.digest.to_string(),
                "size": reported.size,
            },
            "image.name": args.tags.join(","),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&meta)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    printer.finish();
    if mode != ProgressMode::Quiet && mode != ProgressMode::Json {
        eprintln!(
            "built {image_id} in {:.1}s{}",
            started.elapsed().as_secs_f64(),
            if tags.is_empty() {
                String::new()
            } else {
                format!(
                    ", tagged {}",
                    tags.iter()
                        .map(|t| t.familiar())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    // The id on stdout for scripts (`id=$(kiln build -q .)`); on a terminal
    // the line above already said it.
    if args.quiet || mode == ProgressMode::Quiet || !std::io::stdout().is_terminal() {
        println!("{image_id}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The Dockerfile line a build error is about, if any.
fn failed_line(error: &SolveError) -> Option<usize> {
    match error {
        SolveError::RunFailed { line, .. } | SolveError::Step { line, .. } if *line > 0 => {
            Some(*line)
        }
        _ => None,
    }
}

/// BuildKit's error context: the failing line, marked, between its
/// neighbours.
///
/// ```text
/// Dockerfile:3
/// --------------------
///    2 |     WORKDIR /src
///    3 | >>> RUN make
///    4 |     CMD ["app"]
/// --------------------
/// ```
fn dockerfile_excerpt(name: &str, text: &str, line: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let first = line.saturating_sub(2).max(1);
    let last = (line + 2).min(lines.len());
    let mut out = format!("{name}:{line}\n--------------------\n");
    for n in first..=last {
        let marker = if n == line { ">>>" } else { "   " };
        // As the step names show them: URL credentials masked, a very
        // long line cut, control characters escaped.
        let content = kiln_reference::redact_credentials(lines.get(n - 1).copied().unwrap_or(""));
        let content = kiln_parser::escape_control(&kiln_parser::shorten(&content)).into_owned();
        out.push_str(&format!(" {n:>3} | {marker} {content}\n"));
    }
    out.push_str("--------------------\n");
    out
}

fn platform_of(built: &kiln_builder::solve::BuiltImage) -> Platform {
    Platform {
        architecture: built.config.architecture.clone(),
        os: built.config.os.clone(),
        os_version: built.config.os_version.clone(),
        os_features: None,
        variant: built.config.variant.clone(),
    }
}

fn export(
    store: &Store,
    spec: &str,
    tags: &[Reference],
    built: &kiln_builder::solve::BuiltImage,
    compression: Compression,
    reporter: &dyn Reporter,
) -> anyhow::Result<Option<Descriptor>> {
    let fields: BTreeMap<String, String> = spec
        .split(',')
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let kind = fields.get("type").map(String::as_str).unwrap_or("local");
    let dest = fields
        .get("dest")
        .map(PathBuf::from)
        .with_context(|| format!("--output {spec}: dest= is required"))?;
    let reference = match tags.first() {
        Some(t) => t.clone(),
        None => Reference::parse("kiln-build:latest")?,
    };
    match kind {
        "oci" | "docker" => {
            let format = if kind == "oci" {
                Format::Oci
            } else {
                Format::Docker
            };
            // As BuildKit's oci and docker exporters: layers compressed.
            let manifest = compressed_image(store, &built.manifest, compression, reporter)?;
            let item = SaveItem {
                reference,
                image: store.read_image(&manifest, &platform_of(built))?,
            };
            archive::save(store, &[item], format, &dest)?;
            Ok(Some(manifest))
        }
        "local" => {
            export_local(&built.snapshots, &dest)?;
            Ok(None)
        }
        other => bail!("--output type={other} is not supported (oci, docker, local)"),
    }
}

/// The final root filesystem, merged from the snapshots, into `dest`.
fn export_local(snapshots_bottom_first: &[PathBuf], dest: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    // The source view needs an (empty) upper dir of its own.
    let scratch = std::env::temp_dir().join(format!("kiln-export-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let source = LayeredRootfs::new(
        &scratch,
        snapshots_bottom_first.iter().rev().cloned().collect(),
    );
    let target = LayeredRootfs::new(dest, Vec::new());
    let mut options = CopyOptions::dockerfile_copy(false);
    options.allow_wildcard = false;
    let result = kiln_builder::copy::copy(&source, "/", &target, "/", &options);
    let _ = std::fs::remove_dir(&scratch);
    result?;
    Ok(())
}

/// The step graph as Graphviz or Mermaid text: each needed stage's steps in
/// order, from its base (image, scratch or stage), with COPY --from and RUN
/// --mount=from edges between stages.
fn plan_graph(planned: &Plan, dot: bool, hit: &dyn Fn(&Option<Digest>) -> bool) -> String {
    use kiln_builder::plan::{BaseSource, CopyFrom};
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut nodes: Vec<(String, String)> = Vec::new();
    let mut edges: Vec<(String, String)> = Vec::new();
    let stage_out = |i: usize| -> String {
        let s = &planned.stages[i];
        match s.steps.last() {
            Some(_) => format!("s{}_{}", i, s.steps.len() - 1),
            None => format!("s{i}_base"),
        }
    };
    for &i in &planned.order {
        let s = &planned.stages[i];
        let base_id = format!("s{i}_base");
        let base_label = match &s.base {
            BaseSource::Scratch => "FROM scratch".to_string(),
            BaseSource::Image { reference, .. } => format!("FROM {reference}"),
            BaseSource::Stage(j) => format!("FROM stage {j}"),
        };
        nodes.push((base_id.clone(), base_label));
        if let BaseSource::Stage(j) = s.base {
            edges.push((stage_out(j), base_id.clone()));
        }
        let mut prev = base_id;
        for (n, st) in s.steps.iter().enumerate() {
            let id = format!("s{i}_{n}");
            let mark = if hit(&st.cache_key) { " (cached)" } else { "" };
            nodes.push((id.clone(), format!("{}: {}{mark}", st.line, st.instruction)));
            edges.push((prev.clone(), id.clone()));
            match &st.kind {
                StepKind::Copy(c) => {
                    if let CopyFrom::Stage(j) = c.from {
                        edges.push((stage_out(j), id.clone()));
                    }
                }
                StepKind::Run(r) => {
                    for j in r.mount_stages() {
                        edges.push((stage_out(j), id.clone()));
                    }
                }
                StepKind::Workdir(_) => {}
            }
            prev = id;
        }
    }
    let mut out = String::new();
    if dot {
        out.push_str("digraph plan {\n  rankdir=TB;\n  node [shape=box];\n");
        for (id, label) in &nodes {
            out.push_str(&format!("  {id} [label=\"{}\"];\n", quote(label)));
        }
        for (a, b) in &edges {
            out.push_str(&format!("  {a} -> {b};\n"));
        }
        out.push_str("}\n");
    } else {
        out.push_str("flowchart TD\n");
        for (id, label) in &nodes {
            out.push_str(&format!("  {id}[\"{}\"]\n", label.replace('"', "#quot;")));
        }
        for (a, b) in &edges {
            out.push_str(&format!("  {a} --> {b}\n"));
        }
    }
    out
}

fn print_plan(planned: &Plan, store: &Store, format: PlanFormat) -> anyhow::Result<()> {
    let hit = |key: &Option<Digest>| -> bool {
        key.as_ref()
            .and_then(|d| store.cache_get(d).ok().flatten())
            .is_some()
    };
    // Stages in waves: each wave's stages can run in parallel.
    let waves = planned.waves();
    match format {
        PlanFormat::Json => {
            let stages: Vec<serde_json::Value> = planned
                .stages
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "index": s.index,
                        "name": s.name,
                        "needed": s.needed,
                        "base": s.base,
                        "deps": s.deps,
                        "steps": s.steps.iter().map(|st| serde_json::json!({
                            "line": st.line,
                            "instruction": st.instruction,
                            "cache_key": st.cache_key,
                            "cached": hit(&st.cache_key),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let out = serde_json::json!({
                "target": planned.target,
                "stages": stages,
                "parallel": waves,
                "warnings": planned.warnings,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        PlanFormat::Dot | PlanFormat::Mermaid => {
            print!("{}", plan_graph(planned, format == PlanFormat::Dot, &hit));
        }
        PlanFormat::Text => {
            for s in &planned.stages {
                let label = s
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("stage-{}", s.index));
                if !s.needed {
                    println!(
                        "stage {} ({label}): skipped, the target does not need it",
                        s.index
                    );
                    continue;
                }
                let base = match &s.base {
                    kiln_builder::plan::BaseSource::Scratch => "scratch".to_string(),
                    kiln_builder::plan::BaseSource::Image { reference, .. } => {
                        reference.to_string()
                    }
                    kiln_builder::plan::BaseSource::Stage(i) => format!("stage {i}"),
                };
                println!("stage {} ({label}) FROM {base}", s.index);
                for st in &s.steps {
                    let kind = match &st.kind {
                        StepKind::Run(_) => "run",
                        StepKind::Copy(_) => "copy",
                        StepKind::Workdir(_) => "mkdir",
                    };
                    println!(
                        "  line {:>3} {:<5} {:<6} {}",
                        st.line,
                        kind,
                        if hit(&st.cache_key) { "CACHED" } else { "" },
                        st.instruction
                    );
                }
            }
            for (i, wave) in waves.iter().enumerate() {
                println!(
                    "wave {}: {}",
                    i + 1,
                    wave.iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    Ok(())
}
