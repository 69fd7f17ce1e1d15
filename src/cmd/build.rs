//! `kiln build`: a Dockerfile and its context into an image in the store
//! (and optionally a registry, an OCI layout, a docker-archive or a
//! directory). The build logic lives in kiln-builder; this turns flags into
//! its calls and draws progress.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use kiln_builder::cache::RemoteCache;
use kiln_builder::contexts::{
    ContextSpec, NamedContextSpec, NamedContexts, PrepareOptions, PreparedContext,
};
use kiln_builder::copy::{FetchInfo, UrlFetcher};
use kiln_builder::export::{Archive, ImageFormat, Output};
use kiln_builder::plan::{BuildOptions, LookupError};
use kiln_builder::provenance::ProvenanceRequest;
use kiln_builder::secrets::Secret;
use kiln_builder::session::{
    BuildError, BuildResult, BuildSettings, DockerfileInput, PullPolicy, PushTarget, Remote,
    RemoteError, Session,
};
use kiln_builder::solve::{ImagePuller, SolveError};
use kiln_layers::compressed::LayerForm;
use kiln_layers::{Compression, Descriptor, Digest, Platform, Reference, Reporter, Store};
use kiln_registry::{Client, ClientConfig};
use kiln_runtime::{HelperCommand, Network, HELPER_SUBCOMMAND};

use crate::cmd::limits::LimitArgs;
use crate::cmd::step_flags::StepArgs;
use crate::cmd::system::{collect_after, collection_needed, make_room, GcMode};
use crate::progress::{BuildProgress, ProgressArgs, ProgressMode};
use crate::sandbox::{BuildSandbox, IsolationArg};
use crate::settings::{GlobalSettings, Reads};

#[derive(Debug, Subcommand)]
pub enum BuildCommand {
    /// Build an image from a Dockerfile.
    Build(Box<BuildArgs>),
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
    /// A network namespace of RUN's own with outbound NAT (slirp4netns):
    /// no host loopback, no host ports. Where this machine cannot give
    /// it, the host's, with a warning.
    Default,
    /// The host's network.
    Host,
    /// Only a loopback interface.
    None,
}

/// `--pull`'s values (see [`PullPolicy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PullArg {
    Always,
    Missing,
    Never,
}

impl From<PullArg> for PullPolicy {
    fn from(arg: PullArg) -> PullPolicy {
        match arg {
            PullArg::Always => PullPolicy::Always,
            PullArg::Missing => PullPolicy::Missing,
            PullArg::Never => PullPolicy::Never,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    Gzip,
    Zstd,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The build context: a directory, a Git URL (`https://…/repo.git#ref:subdir`,
    /// `git://…`, `git@host:repo`), an `http(s)://` tarball (or Dockerfile), or `-`
    /// (a tar, or a Dockerfile, on standard input).
    #[arg(value_name = "CONTEXT", default_value = ".")]
    context: String,
    /// The Dockerfile (default: CONTEXT/Dockerfile, else CONTEXT/Containerfile; `-` reads
    /// stdin; inside a remote context, a path in it).
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
    /// Target platform (default: DOCKER_DEFAULT_PLATFORM, as buildx reads
    /// it, else this machine's); several (comma-separated or repeated)
    /// build one image each and an index over them.
    #[arg(long, value_name = "PLATFORM", value_delimiter = ',')]
    platform: Vec<String>,
    /// When to pull base images: `--pull` (or `--pull=always`) pulls even
    /// those the store has; `missing` (the default) pulls what the store
    /// lacks; `never` fails on a base the store lacks.
    #[arg(
        long,
        value_enum,
        value_name = "POLICY",
        num_args = 0..=1,
        require_equals = true,
        default_value_t = PullArg::Missing,
        default_missing_value = "always"
    )]
    pull: PullArg,
    /// Do not use the build cache (results are still cached).
    #[arg(long)]
    no_cache: bool,
    /// Do not use the build cache for the steps of this stage (by name;
    /// repeatable); the other stages still use it.
    #[arg(long = "no-cache-filter", value_name = "STAGE", value_delimiter = ',')]
    no_cache_filter: Vec<String>,
    /// Show the plan (stages, steps, cache hits, what runs in parallel) and stop.
    #[arg(long)]
    dry_run: bool,
    /// Only run the build checks (BuildKit's rules over every stage, or
    /// those --target needs, as buildx's `--check`) and print what they
    /// found; exits 1 when they found anything.
    #[arg(long, conflicts_with = "dry_run")]
    check: bool,
    /// Evaluate the build otherwise, as buildx's --call: build (the
    /// default); check (the checks of --check, printed as buildx prints
    /// BuildKit's lint results; exits 1 when they found anything, unless
    /// ignorestatus=true, but for check=error=true); targets (the stages
    /// the Dockerfile can build, with their descriptions). format=json
    /// prints the frontend's JSON instead. outline is not supported.
    #[arg(long, value_name = "FUNC[,format=text|json][,ignorestatus=BOOL]")]
    call: Option<String>,
    /// Format of --dry-run output (text by default), or of --check's
    /// (text or json); refused without either.
    #[arg(long, value_enum)]
    format: Option<PlanFormat>,
    /// RUN's network (a RUN --network flag wins).
    #[arg(long, value_enum, default_value_t = NetworkArg::Default)]
    network: NetworkArg,
    /// How the build is isolated: auto (the strongest this machine
    /// allows, saying so when it is not namespaces), namespaces (root),
    /// rootless (a user namespace), chroot.
    #[arg(long, value_enum, default_value_t = IsolationArg::Auto)]
    isolation: IsolationArg,
    /// How the layers the build made are compressed when they leave the
    /// store (--push, --output type=oci|docker); the store keeps them as
    /// plain tar, as Docker's image store does. Default gzip, or what the
    /// outputs' compression= says (which must agree). Refused when no
    /// layer leaves the store.
    #[arg(long, value_enum)]
    compression: Option<CompressionArg>,
    /// Write the image id (config digest) to this file (refused with a
    /// type=local or type=tar output, as buildx refuses it).
    #[arg(long, value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// Write JSON with the image, manifest and config digests to this file
    /// (none when the build leaves no image: type=local or tar alone,
    /// unnamed); with BUILDX_METADATA_WARNINGS=true, the build's warnings
    /// too, as buildx writes them.
    #[arg(long, value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    /// Also export (repeatable): type=oci[,dest=FILE|-]; type=docker[,dest=FILE] (each a tar;
    /// type=docker without dest loads into the docker daemon, as --load;
    /// tar=false and dest=DIR: a directory; name=REF[,REF…] names the image in it);
    /// type=local,dest=DIR (or just DIR); type=tar[,dest=FILE|-] (or just -, to standard
    /// output); type=image,name=REF[,push=true][,push-by-digest=true][,registry.insecure=true]
    /// [,name-canonical=true][,unpack=true][,store=false];
    /// type=registry,name=REF (pushes). With -t,
    /// image, oci and docker outputs are named by every -t (as buildx names them). Every
    /// output takes source-date-epoch=N.
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    outputs: Vec<String>,
    /// Push every tag to its registry after the build; every type=image output pushes
    /// too (its name= when there is no -t), as buildx's --push makes it.
    #[arg(long)]
    push: bool,
    /// Load the image into the docker daemon (DOCKER_HOST, else the docker context, else
    /// /var/run/docker.sock; a Unix socket, or tcp://HOST:PORT with TLS when
    /// DOCKER_TLS_VERIFY or DOCKER_TLS is set, as the docker CLI), as buildx's --load: shorthand for
    /// --output type=docker (a type=docker output without dest loads so).
    #[arg(long)]
    load: bool,
    /// Export the build cache (repeatable): type=registry,ref=REF, type=local,dest=DIR
    /// (each with mode=min|max, compression=uncompressed|gzip|zstd, compression-level=,
    /// force-compression=, oci-mediatypes=, image-manifest=, ignore-error=; a registry's
    /// also registry.insecure=), or type=inline (in the image's config).
    #[arg(long = "cache-to", value_name = "SPEC")]
    cache_to: Vec<String>,
    /// Take build cache from (repeatable, tried in order): type=registry,ref=REF (a cache,
    /// or an image with inline cache; a bare REF means the same; registry.insecure=), or
    /// type=local,src=DIR.
    #[arg(long = "cache-from", value_name = "SPEC")]
    cache_from: Vec<String>,
    /// An additional named context (repeatable): NAME=DIR, NAME=docker-image://REF,
    /// NAME=oci-layout://DIR[:TAG][@DIGEST], NAME=GIT-URL or NAME=https://… (the
    /// file, named `context`); reached by
    /// `FROM NAME`, `COPY --from=NAME`, `RUN --mount=from=NAME`, and replacing
    /// a stage or image of that name.
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    build_contexts: Vec<String>,
    /// Set a label on the image (repeatable): K=V, over the Dockerfile's LABEL.
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// Add an annotation (repeatable): [TYPE[,TYPE…]:]K=V, TYPE `manifest` (the
    /// default), `manifest-descriptor`, `index` or `index-descriptor`, each
    /// with an optional `[os/arch]`; the index kinds need the image index a
    /// build for several platforms, or with --provenance, writes (refused
    /// for one platform without it).
    #[arg(long = "annotation", value_name = "[TYPE:]K=V")]
    annotations: Vec<String>,
    /// Attach an SLSA provenance v1 attestation (in the image's index, as
    /// BuildKit): `true` (mode=max, BuildKit's default), `false`, or mode=min|max[,builder-id=URI]
    /// [,reproducible=true][,inline-only=true]. Off by default.
    #[arg(long = "provenance", value_name = "true|false|mode=min|max")]
    provenance: Option<String>,
    /// An attestation to attach (buildx's --attest): type=provenance[,mode=…]
    /// as --provenance; other types (sbom) are refused.
    #[arg(long = "attest", value_name = "type=provenance,…")]
    attests: Vec<String>,
    /// A secret for RUN --mount=type=secret: id=ID,src=FILE (or env=VAR).
    #[arg(long = "secret", value_name = "id=ID,src=FILE")]
    secrets: Vec<String>,
    /// Forward an SSH agent to RUN --mount=type=ssh: `default` ($SSH_AUTH_SOCK),
    /// ID=SOCKET, or ID=KEYFILE,... (key files loaded into an ssh-agent kiln starts).
    #[arg(long = "ssh", value_name = "default|ID[=SOCKET|KEY[,KEY]]")]
    ssh: Vec<String>,
    /// Write Docker (schema 2) media types instead of OCI ones (as an
    /// output's oci-mediatypes=false does).
    #[arg(
        long,
        env = "KILN_DOCKER_MEDIATYPES",
        value_parser = clap::builder::BoolishValueParser::new()
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
    step: StepArgs,
    #[command(flatten)]
    progress: ProgressArgs,
}

/// Refuses `kiln build -q` with a `--progress` other than auto or quiet
/// given on the command line, as buildx refuses it ("progress=plain and
/// quiet cannot be used together"): one of the two would do nothing.
/// `KILN_PROGRESS` in the environment is not refused (a CI job sets it for
/// every command); `-q` wins over it.
pub fn refuse_quiet_with_progress(matches: &clap::ArgMatches) -> Result<(), String> {
    let Some(("build", build)) = matches.subcommand() else {
        return Ok(());
    };
    let given = build.value_source("progress") == Some(clap::parser::ValueSource::CommandLine);
    let mode = build.get_one::<ProgressMode>("progress");
    match mode {
        Some(mode) if given && build.get_flag("quiet") => match mode {
            ProgressMode::Auto | ProgressMode::Quiet => Ok(()),
            other => Err(format!(
                "--progress {} and -q (--quiet) cannot be used together",
                other
                    .to_possible_value()
                    .map(|v| v.get_name().to_string())
                    .unwrap_or_default()
            )),
        },
        _ => Ok(()),
    }
}

impl BuildCommand {
    /// The global settings this command reads (see [`Reads`]).
    pub fn reads(&self) -> Reads {
        Reads::BOTH
    }

    /// The `--isolation` asked for.
    pub fn isolation(&self) -> IsolationArg {
        let BuildCommand::Build(args) = self;
        args.isolation
    }

    pub fn run(self, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
        match self {
            BuildCommand::Build(args) => build(*args, settings),
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
                Arc::new(crate::cmd::runtime()?),
                Arc::new(Client::new(self.config.clone())?),
            );
            // Another thread may have made one meanwhile: either will do.
            let _ = self.made.set(made);
        }
        let (runtime, client) = self.made.get().context("registry client not initialized")?;
        Ok((runtime.as_ref(), client))
    }
}

/// `mutex`'s value, also when a thread panicked holding it (what it holds
/// stays whole: every change is one push or insert).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The network side of a build: pulls, ADD URLs and pushes through the
/// registry client (the builder speaks no HTTP).
struct CliRemote<'a> {
    network: LazyClient,
    /// Clients for the registries an output or a cache reaches with
    /// `registry.insecure=true`, by the registries they reach so, made on
    /// first use.
    insecure: std::sync::Mutex<BTreeMap<Vec<String>, Arc<Client>>>,
    /// The registries of the `--cache-from`s read with
    /// `registry.insecure=true`: a layer a step took from one may be
    /// fetched from there by a push or a cache export, as BuildKit fetches
    /// it through that cache's own resolver.
    insecure_sources: std::sync::Mutex<Vec<String>>,
    store: &'a Store,
    reporter: Arc<dyn Reporter>,
    /// The docker daemon `--load` loads into, when an output loads.
    docker: Option<kiln_registry::daemon::Daemon>,
}

impl<'a> CliRemote<'a> {
    /// The build's registry side. The client is made on first use; a CA
    /// file that cannot be read is still an error of every build, as it is
    /// of kiln pull.
    fn new(
        args: &BuildArgs,
        global: &GlobalSettings,
        store: &'a Store,
        display: &Display,
    ) -> anyhow::Result<CliRemote<'a>> {
        for ca in &args.ca_certs {
            std::fs::File::open(ca).with_context(|| format!("--ca-cert {}", ca.display()))?;
        }
        Ok(CliRemote {
            network: LazyClient::new(ClientConfig {
                insecure_registries: args.insecure_registries.clone(),
                ca_certs: args.ca_certs.clone(),
                hosts: global.registry_hosts()?,
                timeouts: global.timeouts.clone(),
                ..ClientConfig::default()
            }),
            insecure: Default::default(),
            insecure_sources: Default::default(),
            store,
            reporter: display.reporter.clone(),
            docker: None,
        })
    }

    /// The runtime and the client for one operation that moves layers:
    /// the build's own, or one that reaches some registries over plain
    /// HTTP or HTTPS without certificate checks: `target`'s registry when
    /// the operation said `registry.insecure=true` of it, and with
    /// `fetches` (a push or cache export, which may fetch a layer a step
    /// took from a `--cache-from`; a layer fetched so) every other
    /// registry a `--cache-from` said it of, as BuildKit fetches such a
    /// layer through that cache's own resolver. A target that did not say
    /// it is checked even when a cache read from it did; what is fetched
    /// is checked against its digest either way. A base image is pulled
    /// through [`Self::network`] and checked.
    fn client_for(
        &self,
        target: Option<(&str, bool)>,
        fetches: bool,
    ) -> anyhow::Result<(&tokio::runtime::Runtime, Arc<Client>)> {
        let (runtime, client) = self.network.get()?;
        let target_registry = target.map(|(registry, _)| registry);
        let mut registries: Vec<String> = if fetches {
            (lock(&self.insecure_sources).iter())
                .filter(|r| Some(r.as_str()) != target_registry)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        if let Some((registry, true)) = target {
            registries.push(registry.to_string());
        }
        registries.sort();
        registries.dedup();
        if registries.is_empty() {
            return Ok((runtime, client.clone()));
        }
        let mut made = lock(&self.insecure);
        if let Some(client) = made.get(&registries) {
            return Ok((runtime, client.clone()));
        }
        let mut config = self.network.config.clone();
        config
            .insecure_registries
            .extend(registries.iter().cloned());
        let client = Arc::new(Client::new(config)?);
        made.insert(registries, client.clone());
        Ok((runtime, client))
    }

    /// Notes the registries of the `--cache-from`s read insecurely, before
    /// any step may take a layer from one.
    fn note_insecure_sources(&self, from: &[kiln_cache::spec::CacheFrom]) {
        let mut sources = lock(&self.insecure_sources);
        for spec in from {
            if let kiln_cache::spec::CacheFrom::Registry {
                reference,
                insecure: true,
            } = spec
            {
                sources.push(reference.registry().to_string());
            }
        }
    }
}

impl ImagePuller for CliRemote<'_> {
    /// A base image without its layers: they are fetched when a step needs
    /// them ([`ImagePuller::fetch_blob`]), or mounted by a push to the
    /// same registry, so a build whose steps are all cached downloads none.
    fn pull(&self, reference: &Reference, platform: &Platform) -> Result<Descriptor, LookupError> {
        let (rt, client) = self
            .network
            .get()
            .map_err(|e| LookupError::failed(format!("{e:#}")))?;
        rt.block_on(kiln_transfer::pull_lazily(
            client,
            self.store,
            reference,
            platform,
            self.reporter.clone(),
        ))
        // The caller's message names the image: the detail only.
        .map_err(|e| match e {
            kiln_transfer::TransferError::Registry(kiln_registry::Error::NotFound { .. }) => {
                LookupError::NotFound(e.detail())
            }
            other => LookupError::failed(other.detail()),
        })
    }

    fn fetch_blob(&self, store: &Store, blob: &Descriptor) -> Result<(), LookupError> {
        let (rt, client) = self
            .client_for(None, true)
            .map_err(|e| LookupError::failed(format!("{e:#}")))?;
        rt.block_on(kiln_transfer::fetch_from_origins(
            &client,
            store,
            blob,
            self.reporter.clone(),
        ))
        .map(|_| ())
        .map_err(|e| LookupError::failed(e.to_string()))
    }
}

impl UrlFetcher for CliRemote<'_> {
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

/// `--load`: the daemon found before the build loads the archive.
impl kiln_builder::export::DockerDaemon for CliRemote<'_> {
    fn load(&self, archive: &mut dyn std::io::Read) -> Result<(), String> {
        match &self.docker {
            Some(daemon) => daemon.load(archive).map(drop).map_err(|e| e.to_string()),
            None => Err("no docker daemon was found before the build".into()),
        }
    }
}

impl Remote for CliRemote<'_> {
    fn docker(&self) -> Option<&dyn kiln_builder::export::DockerDaemon> {
        (self.docker.is_some()).then_some(self as &dyn kiln_builder::export::DockerDaemon)
    }

    fn push(
        &self,
        store: &Store,
        image: &Descriptor,
        target: &PushTarget,
        form: LayerForm,
    ) -> Result<(Digest, u64), RemoteError> {
        let options = kiln_transfer::PushOptions {
            compression: form,
            by_digest: target.options.by_digest,
            ..Default::default()
        };
        let registry = target.reference.registry();
        let (rt, client) = (self.client_for(Some((registry, target.options.insecure)), true))
            .map_err(|e| format!("{e:#}"))?;
        let pushed = rt.block_on(kiln_transfer::push_descriptor(
            &client,
            store,
            image,
            &target.reference,
            &options,
            self.reporter.clone(),
        ))?;
        Ok((pushed.digest, pushed.size))
    }
}

/// `--provenance` and `--attest type=provenance`: one request at most
/// (buildx takes either spelling, not both).
fn provenance_of(args: &BuildArgs) -> anyhow::Result<Option<ProvenanceRequest>> {
    let mut asked: Vec<(String, Option<ProvenanceRequest>)> = Vec::new();
    if let Some(value) = &args.provenance {
        let request = ProvenanceRequest::parse_flag(value).map_err(anyhow::Error::msg)?;
        asked.push((format!("--provenance {value}"), request));
    }
    for value in &args.attests {
        let request = ProvenanceRequest::parse_attest(value).map_err(anyhow::Error::msg)?;
        asked.push((format!("--attest {value}"), request));
    }
    // BuildKit's frontend reads BUILDKIT_ATTEST_<TYPE> as an --attest. A
    // flag that turns provenance off sends BuildKit nothing (buildx drops
    // a disabled attestation), so the build arg then asks alone.
    let mut by_arg = Vec::new();
    for (name, value) in build_args_of(&args.build_args)? {
        let Some(kind) = name.strip_prefix("BUILDKIT_ATTEST_") else {
            continue;
        };
        let request = ProvenanceRequest::parse_build_arg(&kind.to_lowercase(), &value)
            .map_err(anyhow::Error::msg)?;
        by_arg.push((format!("--build-arg {name}={value}"), request));
    }
    if !by_arg.is_empty() && asked.iter().all(|(_, request)| request.is_none()) {
        asked.clear();
    }
    asked.extend(by_arg);
    if asked.len() > 1 {
        let flags: Vec<&str> = asked.iter().map(|(f, _)| f.as_str()).collect();
        anyhow::bail!(
            "provenance is asked for more than once ({}): give one --provenance or --attest type=provenance",
            flags.join(", ")
        );
    }
    Ok(asked.pop().and_then(|(_, request)| request))
}

/// `--platform`'s platforms, normalized, each once, in the order given.
fn target_platforms(flags: &[String]) -> anyhow::Result<Vec<Platform>> {
    let given: Vec<&str> = flags
        .iter()
        .map(|f| f.trim())
        .filter(|f| !f.is_empty())
        .collect();
    if given.is_empty() {
        return crate::settings::default_platforms();
    }
    let mut platforms: Vec<Platform> = Vec::new();
    for flag in given {
        let platform = Platform::parse(flag).with_context(|| format!("--platform {flag}"))?;
        if !platforms.contains(&platform) {
            platforms.push(platform);
        }
    }
    Ok(platforms)
}

/// The build args a build (or its checks) gets: [`parse_build_args`], and
/// as buildx `SOURCE_DATE_EPOCH` from the environment when no flag gives
/// it (refused, naming the environment, when not a number); its value as
/// BuildKit's frontend hands it on, the number's canonical form (`0100`
/// is `100`), an empty one dropped.
pub(crate) fn build_args_of(flags: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    const KEY: &str = "SOURCE_DATE_EPOCH";
    let mut args = parse_build_args(flags)?;
    if !args.contains_key(KEY) {
        if let Some(epoch) = crate::settings::source_date_epoch()? {
            args.insert(KEY.to_string(), epoch.to_string());
        }
    }
    match args
        .get(KEY)
        .map(|v| kiln_builder::frontend::parse_source_date_epoch(v))
    {
        Some(Ok(Some(epoch))) => {
            args.insert(KEY.to_string(), epoch.to_string());
        }
        Some(Ok(None)) => {
            args.remove(KEY);
        }
        // Refused where the build reads it, naming the build arg.
        Some(Err(_)) | None => {}
    }
    Ok(args)
}

/// `--build-arg K=V`, or `K` from kiln's environment (dropped when unset), as
/// the docker CLI does; an empty key is refused, as buildx refuses it.
pub(crate) fn parse_build_args(flags: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut args = BTreeMap::new();
    for flag in flags {
        let (key, value) = match flag.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (flag.as_str(), std::env::var(flag).ok()),
        };
        if key.is_empty() {
            anyhow::bail!("--build-arg {flag:?}: invalid key-value pair: empty key");
        }
        if let Some(value) = value {
            args.insert(key.to_string(), value);
        }
    }
    Ok(args)
}

/// The flags as the builder's settings. `ssh_agents` keeps the agents
/// started for key files alive for the build.
fn settings_of(
    args: &BuildArgs,
    sandbox: &BuildSandbox,
    context: &PreparedContext,
    named: NamedContexts,
    ssh_agents: &mut Vec<kiln_builder::ssh::ForwardedAgent>,
) -> anyhow::Result<BuildSettings> {
    let platform = target_platforms(&args.platform)?
        .into_iter()
        .next()
        .unwrap_or_else(Platform::host);
    let tags: Vec<Reference> = args
        .tags
        .iter()
        .map(|t| Reference::parse_tag(t).with_context(|| format!("-t {t}")))
        .collect::<anyhow::Result<_>>()?;
    let mut ssh = BTreeMap::new();
    let auth_sock = std::env::var("SSH_AUTH_SOCK").ok();
    for spec in &args.ssh {
        let (id, agent) = kiln_builder::ssh::parse_ssh_flag(spec, auth_sock.as_deref())?;
        ssh.insert(id, agent.socket().to_path_buf());
        ssh_agents.push(agent);
    }
    let parsed = args
        .outputs
        .iter()
        .map(|spec| Output::parse_with_format(spec).map(|(o, f)| (o, (f, spec.as_str()))))
        .collect::<Result<Vec<_>, _>>()?;
    // What the image outputs say of the one image (a root filesystem
    // output says nothing of it).
    let formats: Vec<_> = parsed
        .iter()
        .filter(|(o, _)| o.writes_image())
        .map(|(_, format)| format.clone())
        .collect();
    // kiln's store keeps layers plain and compresses them where they leave
    // it: on an image output that does not push, these would change
    // nothing (BuildKit's image store would hold them compressed).
    for (output, (format, spec)) in &parsed {
        let keeps = matches!(output, Output::Image { push: false, .. }) && !args.push;
        let said = (format.compression.map(|_| "compression="))
            .or(format.level.map(|_| "compression-level="))
            .or(format.force_compression.map(|_| "force-compression="));
        if let (true, Some(key)) = (keeps, said) {
            anyhow::bail!(
                "--output {spec}: {key} has no effect on an image output that does not push: \
                 kiln keeps the store's layers uncompressed and compresses them where they \
                 leave it (push=true, --push, type=oci|docker, kiln push)"
            );
        }
    }
    let said: Vec<(ImageFormat, &str)> = (parsed.iter())
        .map(|(_, (format, spec))| (format.clone(), *spec))
        .collect();
    let exporter_epoch = kiln_builder::export::settle_epoch(&said).map_err(anyhow::Error::msg)?;
    let outputs: Vec<Output> = parsed.into_iter().map(|(o, _)| o).collect();
    let flags = ImageFormat {
        compression: args.compression.map(|c| match c {
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Zstd => Compression::Zstd,
        }),
        force_compression: None,
        level: None,
        oci_media_types: args.docker_mediatypes.then_some(false),
        annotations: args
            .annotations
            .iter()
            .map(|flag| kiln_builder::annotations::Annotation::parse(flag))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .flatten()
            .collect(),
        rewrite_timestamp: None,
        oci_artifact: None,
        source_date_epoch: None,
    };
    let image = ImageFormat::settle(&flags, &formats).map_err(anyhow::Error::msg)?;
    let mut outputs = kiln_builder::export::with_tags(outputs, &tags, args.push);
    check_by_digest_names(args, &outputs)?;
    // buildx adds a type=docker output unless one loads already, after the
    // image output --push adds (with_tags leaves that to the session when
    // there is no output at all, which the load output would change).
    if args.load && !outputs.iter().any(Output::loads_into_docker) {
        if args.push && outputs.is_empty() {
            outputs.push(Output::Image {
                names: tags.clone(),
                push: true,
                options: Default::default(),
            });
        }
        outputs.push(Output::Docker(Archive {
            names: tags.clone(),
            load: true,
            ..Archive::tar("")
        }));
    }
    let leaves = args.push
        || outputs.iter().any(|o| {
            matches!(
                o,
                Output::Image { push: true, .. } | Output::Oci(_) | Output::Docker(_)
            )
        });
    if let (Some(_), false) = (args.compression, leaves) {
        anyhow::bail!(
            "--compression has no effect here: no layer leaves the store in this build (no \
             push, no type=oci|docker output), which keeps them uncompressed; kiln push \
             compresses with gzip"
        );
    }
    let terminal = std::io::stdout().is_terminal();
    for output in &outputs {
        output.check_dest(terminal)?;
    }
    let options = BuildOptions {
        target: args.target.clone(),
        build_args: build_args_of(&args.build_args)?,
        target_platform: platform,
        build_platform: Platform::host(),
        run: args.step.run_defaults(),
        named_contexts: named.sources(),
    };
    // (The environment's is a build arg already.)
    let source_date_epoch = match options.build_args.contains_key("SOURCE_DATE_EPOCH") {
        true => None,
        false => kiln_builder::session::dockerfile_epoch(&context.dockerfile, &options)?,
    };
    Ok(BuildSettings {
        context_dir: context.dir.clone(),
        context_origin: context.origin.clone(),
        dockerfile: context.dockerfile.clone(),
        options,
        named_contexts: named,
        written_names: written_names(args),
        tags,
        pull: args.pull.into(),
        no_cache: args.no_cache,
        no_cache_stages: args.no_cache_filter.clone(),
        allow: args.step.entitlements(args.network == NetworkArg::Host),
        source_date_epoch,
        exporter_epoch,
        rewrite_timestamp: image.rewrite_timestamp,
        network: sandbox.network,
        snapshotter: sandbox.snapshotter,
        chroot: sandbox.chroot,
        layer_form: image.layer_form,
        docker_media_types: image.docker_media_types,
        oci_artifact: image.oci_artifact,
        secrets: args
            .secrets
            .iter()
            .map(|flag| Secret::parse_flag(flag))
            .collect::<Result<_, _>>()?,
        ssh,
        limits: args.limits.limits(),
        outputs,
        labels: args
            .labels
            .iter()
            .map(|flag| kiln_builder::annotations::parse_label(flag).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?,
        annotations: image.annotations,
        provenance: provenance_of(args)?,
        context_commit: context.git_commit.clone(),
        dockerfile_local: context.origin.is_none()
            || args
                .file
                .as_deref()
                .is_some_and(|f| f.as_os_str() == "-" || f.is_absolute()),
        push: args.push,
        iidfile: args.iidfile.clone(),
        metadata_file: args.metadata_file.clone(),
        metadata_warnings: std::env::var("BUILDX_METADATA_WARNINGS")
            .is_ok_and(|v| kiln_builder::git::parse_go_bool(&v) == Some(true)),
        helper: HelperCommand::current_exe(&[HELPER_SUBCOMMAND]),
    })
}

/// The image names as written ([`BuildSettings::written_names`]): every
/// `-t`, which names every image output as buildx has it, else each
/// output's `name=`.
fn written_names(args: &BuildArgs) -> Vec<String> {
    match args.tags.is_empty() {
        false => args.tags.clone(),
        true => (args.outputs.iter())
            .flat_map(|spec| kiln_builder::export::given_names(spec))
            .collect(),
    }
}

/// How a build is shown: the progress printer, the layer reporter, and
/// whether errors come with the Dockerfile around their line.
struct Display {
    mode: ProgressMode,
    printer: BuildProgress,
    reporter: Arc<dyn Reporter>,
    /// Plain or tty progress: Dockerfile excerpts and the summary line.
    shown: bool,
}

impl Display {
    /// The isolation and network fallbacks, as build warnings.
    fn sandbox_warnings(&self, sandbox: &BuildSandbox) {
        for message in &sandbox.warnings {
            let warning = kiln_builder::plan::PlanWarning {
                line: None,
                message: message.clone(),
            };
            kiln_builder::solve::BuildEvents::warning(&self.printer, "", &warning);
        }
    }

    fn new(args: &BuildArgs) -> Self {
        let progress = args.progress.reporter();
        let shared_view = progress.multi();
        let mode = if args.quiet {
            ProgressMode::Quiet
        } else {
            progress.mode()
        };
        // --dry-run and --check print their answer and nothing of a build's
        // progress (--dry-run still its warnings).
        let printer = BuildProgress::new(
            if args.dry_run || args.check {
                ProgressMode::Quiet
            } else {
                mode
            },
            shared_view,
        )
        .show_warnings(mode != ProgressMode::Quiet && !args.check);
        let reporter: Arc<dyn Reporter> = Arc::new(BuildReporter {
            inner: if mode == ProgressMode::Quiet {
                crate::progress::CliReporter::new(ProgressMode::Quiet)
            } else {
                progress
            },
            // `-v` turns on info logs: it also shows layer packing/unpacking.
            verbose: tracing::enabled!(tracing::Level::INFO),
        });
        Display {
            mode,
            printer,
            reporter,
            shown: !matches!(mode, ProgressMode::Quiet | ProgressMode::Json),
        }
    }
}

fn build(mut args: BuildArgs, global: &GlobalSettings) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // `--call build` is a build: as if not given.
    let call = (args.call.as_deref().map(Call::parse).transpose()?)
        .filter(|call| call.name != CallName::Build);
    if let Some(call) = &call {
        call.refuse_beside(&args)?;
        // It only answers, as --check does.
        args.check = true;
    }
    let format = output_format(&args)?;
    let network = match args.network {
        NetworkArg::Default => None,
        NetworkArg::Host => Some(Network::Host),
        NetworkArg::None => Some(Network::None),
    };
    let sandbox =
        BuildSandbox::probe(network, args.isolation, &global.root).map_err(anyhow::Error::msg)?;
    let spec = ContextSpec::parse(&args.context)?;
    let named_specs = args
        .build_contexts
        .iter()
        .map(|flag| NamedContextSpec::parse_flag(flag))
        .collect::<Result<Vec<_>, _>>()?;
    let gc_mode = GcMode::from_env()?;
    let store = Store::open(&global.root)?;
    if !args.dry_run && !args.check {
        // Reads (and checks) the store's gc.toml; collects first when the
        // filesystem has less free than its min-free-space.
        make_room(&store, args.quiet)?;
    }
    let stamp = store.content_stamp();
    let interruption = crate::cmd::interrupt::Interruption::watch();
    let display = Display::new(&args);
    if !args.dry_run && !args.check {
        display.sandbox_warnings(&sandbox);
    }
    let mut remote = CliRemote::new(&args, global, &store, &display)?;
    let build_args = build_args_of(&args.build_args)?;
    // Refused here when not a number, before a Git context is fetched.
    let epoch = kiln_builder::frontend::source_date_epoch_arg(&build_args)
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let prepare = PrepareOptions {
        store: &store,
        fetcher: &remote,
        events: &display.printer,
        keep_git_dir: build_args
            .get("BUILDKIT_CONTEXT_KEEP_GIT_DIR")
            .is_some_and(|v| kiln_builder::git::parse_go_bool(v) == Some(true)),
        mtime_commit: epoch.is_some(),
        file: args.file.as_deref(),
    };
    // A build that fails leaves no image id file rather than an earlier
    // build's, as buildx removes it before building.
    if let (Some(path), false) = (&args.iidfile, args.dry_run) {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(anyhow::Error::new(e).context(format!(
                    "--iidfile {}: removing the earlier file",
                    path.display()
                )));
            }
            _ => {}
        }
    }
    let context = kiln_builder::contexts::prepare(&spec, &mut std::io::stdin().lock(), &prepare)?;
    let named = NamedContexts::prepare(&named_specs, &prepare)?;
    let mut ssh_agents = Vec::new();
    let settings = settings_of(&args, &sandbox, &context, named, &mut ssh_agents)?;
    if let Some(
        call @ Call {
            name: CallName::Targets,
            ..
        },
    ) = &call
    {
        return print_targets(&settings.dockerfile, &settings.options.build_args, call);
    }
    // Asked before the build spends its time, as buildx finds its daemon.
    if settings.outputs.iter().any(Output::loads_into_docker) && !args.dry_run && !args.check {
        let daemon = kiln_registry::daemon::Daemon::from_env()
            .context("--load")?
            .canceled_by(kiln_runtime::interrupt::runs_canceled);
        daemon.ping().context("--load")?;
        remote.docker = Some(daemon);
    }
    let cache = remote_cache(&args, &settings, &remote, &display)?;
    let session = Session {
        store: &store,
        settings: &settings,
        remote: &remote,
        events: &display.printer,
        reporter: display.reporter.as_ref(),
        cache: &cache,
    };
    let show = |e: &BuildError| show_line(&settings, display.shown, e.line());
    let platforms = target_platforms(&args.platform)?;
    // (One platform's index, when BUILDKIT_MULTI_PLATFORM asks for one, is
    // the session's; planning refuses it false with several platforms.)
    // The checks walk for the build platform, whatever --platform says.
    if args.check {
        return match &call {
            // BuildKit's lint request answers every error as its result.
            Some(call) => {
                let report = session
                    .check()
                    .unwrap_or_else(|e| failed_checks(&settings, &e));
                print_lint_results(
                    &report,
                    &settings.dockerfile,
                    &dockerfile_shown(&args),
                    call,
                )
            }
            None => print_checks(&session.check().inspect_err(show)?, format),
        };
    }
    let built = if platforms.len() > 1 {
        if args.dry_run {
            anyhow::bail!(
                "--dry-run shows one platform's build: give one --platform (not {}{})",
                platforms
                    .iter()
                    .map(Platform::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                match args.platform.is_empty() {
                    true => ", from DOCKER_DEFAULT_PLATFORM",
                    false => "",
                }
            );
        }
        session.build_platforms(&platforms)
    } else {
        let planned = session.plan();
        if let Some(canceled) = interruption.canceled() {
            return Ok(canceled);
        }
        let planned = planned.inspect_err(show)?;
        if args.dry_run {
            crate::cmd::plan_view::print_plan(&planned.plan, &store, format)?;
            return Ok(ExitCode::SUCCESS);
        }
        session.build(planned)
    };
    display
        .printer
        .finish(built.is_ok() && interruption.signal().is_none());
    let outcome = match (interruption.canceled(), built) {
        (Some(canceled), _) => Ok(canceled),
        (None, Err(e)) => Err(build_failure(&settings, &display, e)),
        (None, Ok(result)) => {
            report_built(&args, &remote, &settings, &display, &result, started);
            Ok(ExitCode::SUCCESS)
        }
    };
    // The store's automatic collection, once the build holds nothing of it
    // any more (failed and canceled builds too; the named contexts' lease
    // goes with the settings), when the build changed the store or the last
    // one is old: detached, unless KILN_GC=foreground.
    drop(settings);
    if collection_needed(&store, &stamp) {
        collect_after(&store, gc_mode);
    }
    outcome
}

/// Refuses a name that gives a tag to an image output that pushes by
/// digest: its own `name=`, or the `-t` names that replaced them (`outputs`
/// as [`kiln_builder::export::with_tags`] made them from `args.outputs`:
/// in their order, one added at the end only, never by digest). As
/// BuildKit, only when the output pushes.
fn check_by_digest_names(args: &BuildArgs, outputs: &[Output]) -> anyhow::Result<()> {
    for (output, spec) in outputs.iter().zip(&args.outputs) {
        if !matches!(output, Output::Image { push: true, options, .. } if options.by_digest) {
            continue;
        }
        let given = if args.tags.is_empty() {
            let names = kiln_builder::export::given_names(spec);
            names
                .into_iter()
                .map(|n| (n, spec.as_str(), "--output"))
                .collect()
        } else {
            (args.tags.iter())
                .map(|t| (t.clone(), t.as_str(), "-t"))
                .collect::<Vec<_>>()
        };
        for (name, context, flag) in &given {
            kiln_builder::export::check_untagged(name)
                .map_err(|why| anyhow::anyhow!("{flag} {context}: {why}"))?;
        }
    }
    Ok(())
}

/// `--cache-from` (loaded now: a cache that cannot be read is a warning)
/// and `--cache-to`, refused at once when a value is.
fn remote_cache(
    args: &BuildArgs,
    settings: &BuildSettings,
    remote: &CliRemote<'_>,
    display: &Display,
) -> anyhow::Result<RemoteCache> {
    // An empty value is skipped, as buildx skips it (a CI template's
    // `--cache-from "$CACHE"` with nothing set).
    let to = (args.cache_to.iter())
        .filter(|spec| !spec.trim().is_empty())
        .map(|spec| kiln_cache::spec::parse_cache_to(spec))
        .collect::<Result<Vec<_>, _>>()?;
    let from = (args.cache_from.iter())
        .filter(|spec| !spec.trim().is_empty())
        .map(|spec| kiln_cache::spec::parse_cache_from(spec))
        .collect::<Result<Vec<_>, _>>()?;
    let net = |on: kiln_cache::NetFor<'_>| -> Result<kiln_cache::Net, RemoteError> {
        let (runtime, client) = (remote.client_for(Some((on.registry, on.insecure)), on.export))
            .map_err(|e| format!("{e:#}"))?;
        Ok(kiln_cache::Net {
            runtime: runtime.handle().clone(),
            client,
            reporter: display.reporter.clone(),
        })
    };
    remote.note_insecure_sources(&from);
    let (exporters, mut inline) =
        kiln_cache::exporters(&to, &net).map_err(|e| anyhow::anyhow!("{e}"))?;
    // `--build-arg BUILDKIT_INLINE_CACHE=1` is `--cache-to type=inline`,
    // as buildx reads it.
    inline |= kiln_builder::frontend::inline_cache(&settings.options.build_args)
        .map_err(|e| anyhow::anyhow!(e.message))?;
    if args.dry_run || args.check {
        return Ok(RemoteCache::default());
    }
    // Each target platform's inline cache when a --cache-from is an
    // index of images.
    let mut platforms = target_platforms(&args.platform)?;
    if platforms.is_empty() {
        platforms.push(settings.options.target_platform.clone());
    }
    let sources = kiln_cache::open_sources(&from, &platforms, &net, &display.printer);
    Ok(RemoteCache {
        sources,
        exporters,
        inline,
    })
}

/// `--format`, which only `--dry-run` and `--check` print in: a build
/// prints no plan and no report to format. `--check` has no graph to
/// draw, so it takes text or json only.
fn output_format(args: &BuildArgs) -> anyhow::Result<PlanFormat> {
    let Some(format) = args.format else {
        return Ok(PlanFormat::Text);
    };
    let name = format
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string());
    if !args.dry_run && !args.check {
        anyhow::bail!(
            "--format {name} formats the output of --dry-run (text, json, dot, mermaid) \
             or --check (text, json); a build prints neither"
        );
    }
    if args.check && matches!(format, PlanFormat::Dot | PlanFormat::Mermaid) {
        anyhow::bail!(
            "--check prints its report as text or json, not {name} (a graph is --dry-run's)"
        );
    }
    Ok(format)
}

/// What `--call` asks for instead of a build, as buildx reads it
/// (`buildflags.ParseCallFunc`): a function and its options.
#[derive(Debug, PartialEq)]
struct Call {
    name: CallName,
    /// `format=json`: the frontend's JSON instead of buildx's text.
    json: bool,
    /// `ignorestatus=true`: exit 0 whatever the checks found.
    ignore_status: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CallName {
    Build,
    Check,
    Targets,
}

impl CallName {
    fn as_str(self) -> &'static str {
        match self {
            CallName::Build => "build",
            CallName::Check => "check",
            CallName::Targets => "targets",
        }
    }
}

impl Call {
    /// Reads the value as buildx's `ParseCallFunc`: CSV fields, a function
    /// and `key=value` options; an empty value is a build.
    fn parse(value: &str) -> anyhow::Result<Call> {
        let mut name = None;
        let mut json = false;
        let mut ignore_status = false;
        let mut options = Vec::new();
        let fields = kiln_parser::mount::csv_fields(value)
            .map_err(|e| anyhow::anyhow!("--call {value}: {e}"))?;
        for field in fields.iter().filter(|f| !f.is_empty()) {
            let option = field.split_once('=');
            if let Some((key, _)) = option {
                options.push(key);
            }
            match option {
                Some(("format", "json")) => json = true,
                Some(("format", "text")) => json = false,
                Some(("format", other)) => {
                    anyhow::bail!("--call {value}: format={other}: kiln prints text or json")
                }
                Some(("ignorestatus", v)) => {
                    ignore_status = kiln_builder::git::parse_go_bool(v).ok_or_else(|| {
                        anyhow::anyhow!("--call {value}: ignorestatus={v} is not a boolean")
                    })?
                }
                Some((key, _)) => {
                    anyhow::bail!("--call {value}: unknown option {key:?} (format=, ignorestatus=)")
                }
                None if name.is_some() => {
                    anyhow::bail!("--call {value}: one function only")
                }
                None => {
                    name = Some(match field.as_str() {
                        "build" => CallName::Build,
                        // buildx's older name for it.
                        "check" | "lint" => CallName::Check,
                        "targets" => CallName::Targets,
                        "outline" => anyhow::bail!(
                            "--call outline is not supported yet; kiln answers --call build, \
                             check and targets (kiln explain shows a Dockerfile's build args)"
                        ),
                        other => anyhow::bail!(
                            "--call {other}: unknown function; kiln answers build, check and \
                             targets"
                        ),
                    })
                }
            }
        }
        let name = match name {
            Some(name) => name,
            None if value.trim().is_empty() => CallName::Build,
            None => anyhow::bail!("--call {value}: names no function (build, check, targets)"),
        };
        // What the function would take and do nothing with.
        let unused = match name {
            CallName::Build => options.first(),
            CallName::Targets => options.iter().find(|key| **key == "ignorestatus"),
            CallName::Check => None,
        };
        if let Some(key) = unused {
            anyhow::bail!(
                "--call {value}: {key}= does nothing for {} (format= and ignorestatus= are \
                 for check, format= for targets)",
                name.as_str()
            );
        }
        Ok(Call {
            name,
            json,
            ignore_status,
        })
    }

    /// What asks for another answer, or for what an answer does not make.
    fn refuse_beside(&self, args: &BuildArgs) -> anyhow::Result<()> {
        let call = self.name.as_str();
        let other = [
            (args.check, "--check"),
            (args.dry_run, "--dry-run"),
            (args.format.is_some(), "--format"),
            (args.iidfile.is_some(), "--iidfile"),
            (args.metadata_file.is_some(), "--metadata-file"),
        ];
        match other.iter().find(|(given, _)| *given) {
            Some((_, "--format")) => anyhow::bail!(
                "--format formats --dry-run and --check; with --call, give the format in \
                 its value (--call {call},format=json)"
            ),
            Some((_, flag @ ("--check" | "--dry-run"))) => {
                anyhow::bail!("--call {call} and {flag} ask for two different answers: give one")
            }
            Some((_, flag)) => anyhow::bail!(
                "--call {call} builds no image: {flag} has nothing to write (kiln refuses \
                 it where buildx writes an empty id or its answer)"
            ),
            None => Ok(()),
        }
    }
}

/// The Dockerfile's name in buildx's excerpts (`DockerfileMappingSrc`):
/// `-f` as given, `stdin` for `-f -`, else the context's path joined with
/// `Dockerfile`.
fn dockerfile_shown(args: &BuildArgs) -> String {
    match args.file.as_deref() {
        Some(file) if file == std::path::Path::new("-") => "stdin".into(),
        Some(file) => file.display().to_string(),
        None => std::path::Path::new(&args.context)
            .join("Dockerfile")
            .display()
            .to_string(),
    }
}

/// `--call targets`: the Dockerfile's stages, as buildx prints them (a
/// `# syntax=` naming another frontend refused, as for a build).
fn print_targets(
    dockerfile: &DockerfileInput,
    build_args: &BTreeMap<String, String>,
    call: &Call,
) -> anyhow::Result<ExitCode> {
    let ast = kiln_parser::parse_bytes(&dockerfile.bytes, &dockerfile.name)?;
    kiln_builder::frontend::Frontend::refuse_foreign_syntax(&ast, build_args)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let list = kiln_builder::subrequests::targets(&ast, &dockerfile.bytes)?;
    let text = match call.json {
        true => list.json() + "\n",
        false => list.text(),
    };
    crate::cmd::check::write_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// `--call check`: the checks' report as BuildKit's lint results, printed
/// as buildx prints them; exit 1 when they found anything (unless
/// `ignorestatus`), and an error when the Dockerfile failed them outright
/// (it does not parse, or `# check=error=true`), whatever `ignorestatus`.
fn print_lint_results(
    report: &kiln_builder::lint::Report,
    dockerfile: &DockerfileInput,
    shown: &str,
    call: &Call,
) -> anyhow::Result<ExitCode> {
    let results = kiln_builder::subrequests::LintResults::of(
        report,
        &dockerfile.bytes,
        &dockerfile.file_name(),
        shown,
    );
    let text = match call.json {
        true => results.json() + "\n",
        false => results.text(),
    };
    crate::cmd::check::write_stdout(&text)?;
    if let Some(error) = results.error_text() {
        if !call.json && results.has_warnings() {
            crate::cmd::check::write_stdout("\n")?;
        }
        eprintln!("ERROR: {error}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(match results.found_anything() && !call.ignore_status {
        true => ExitCode::FAILURE,
        false => ExitCode::SUCCESS,
    })
}

/// A check that could not run (the Dockerfile does not parse, names a
/// frontend kiln cannot run): a report of that error alone.
fn failed_checks(settings: &BuildSettings, error: &BuildError) -> kiln_builder::lint::Report {
    let error = kiln_builder::lint::CheckError {
        message: error.to_string(),
        line: error.line(),
        ..Default::default()
    };
    kiln_builder::lint::failed_report(&settings.dockerfile.name, error)
}

/// `--check`: the checks' report, as `kiln check` prints it (or JSON);
/// failure when they found anything, as buildx's `--check`.
fn print_checks(
    report: &kiln_builder::lint::Report,
    format: PlanFormat,
) -> anyhow::Result<ExitCode> {
    let text = match format {
        PlanFormat::Json => serde_json::to_string_pretty(report)? + "\n",
        PlanFormat::Text | PlanFormat::Dot | PlanFormat::Mermaid => {
            crate::cmd::check::check_text(report)
        }
    };
    crate::cmd::check::write_stdout(&text)?;
    let clean = report.findings.is_empty() && report.error.is_none();
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What a finished build says: the pushes, the summary line, and the
/// image id on stdout for scripts (`id=$(kiln build -q .)`; on a terminal
/// the summary already said it).
fn report_built(
    args: &BuildArgs,
    remote: &CliRemote<'_>,
    settings: &BuildSettings,
    display: &Display,
    result: &BuildResult,
    started: Instant,
) {
    if display.mode != ProgressMode::Quiet {
        for (reference, digest) in &result.pushed {
            eprintln!("pushed {reference}: {digest}");
        }
        for line in (remote.docker.iter()).flat_map(kiln_registry::daemon::Daemon::loaded) {
            eprintln!("docker: {line}");
        }
    }
    let image_id = &result.image_id;
    if display.shown {
        let tags = settings.all_tags();
        let tagged = if tags.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = tags.iter().map(|t| t.familiar()).collect();
            format!(", tagged {}", names.join(", "))
        };
        eprintln!(
            "built {image_id} in {:.1}s{tagged}",
            started.elapsed().as_secs_f64()
        );
    }
    // Not when an output is the tar on stdout, nor when the build left no
    // image its id would find.
    let stdout_taken = settings.outputs.iter().any(Output::to_stdout);
    let wanted =
        args.quiet || display.mode == ProgressMode::Quiet || !std::io::stdout().is_terminal();
    if wanted && !stdout_taken && settings.leaves_an_image() {
        println!("{image_id}");
    }
}

/// BuildKit shows the Dockerfile around the line an error is about.
fn show_line(settings: &BuildSettings, shown: bool, line: Option<usize>) {
    if let (Some(line), true) = (line, shown) {
        let dockerfile = &settings.dockerfile;
        eprint!(
            "{}",
            kiln_builder::subrequests::excerpt(
                &dockerfile.file_name(),
                &dockerfile.text(),
                &kiln_builder::subrequests::Location::lines(line, line)
            )
        );
    }
}

/// A failed build as BuildKit reports it: for a failed RUN, the step's
/// last output, the Dockerfile around it, then the error without repeating
/// the output.
fn build_failure(settings: &BuildSettings, display: &Display, error: BuildError) -> anyhow::Error {
    let shown = display.shown;
    if let (
        BuildError::Solve(SolveError::RunFailed { last_lines, .. }),
        Some((step, message)),
        true,
    ) = (&error, display.printer.failure(), shown)
    {
        eprintln!("------\n > {step}:");
        for line in last_lines {
            eprintln!("{line}");
        }
        eprintln!("------");
        show_line(settings, shown, error.line());
        return anyhow::anyhow!("failed to solve: {message}");
    }
    show_line(settings, shown, error.line());
    error.into()
}
