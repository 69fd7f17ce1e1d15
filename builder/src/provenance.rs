//! SLSA provenance v1 for a build (`--provenance`, `--attest
//! type=provenance`), in BuildKit's shape: an in-toto statement whose
//! predicate follows BuildKit's SLSA v1 definitions
//! (`solver/llbsolver/provenance`, `docs/attestations/slsa-definitions.md`),
//! attached to the image as an attestation manifest in its index
//! ([`kiln_layers::index::write_attestation_manifest`]).
//!
//! What the predicate holds:
//!
//! - `buildDefinition.buildType`: BuildKit's (the structure is BuildKit's);
//! - `externalParameters.configSource`: `path` the Dockerfile's name; for
//!   a Git context `uri` (credentials masked) and `digest.sha1` the
//!   commit, for a URL context its `uri`; for a local context `digest.sha256`
//!   is the Dockerfile's digest (BuildKit leaves the digest out there);
//! - `externalParameters.request`: `frontend: dockerfile.v0`, the `locals`
//!   (`context`, `dockerfile` when read from this machine), and `args`:
//!   `target`, and in `mode=max` only, `build-arg:NAME` and `label:NAME`
//!   (a `mode=min` request with such args is marked incomplete, as
//!   BuildKit's `scrubMinRequest`); `mode=max` lists the ids of the
//!   secrets and SSH agents RUN mounts use, never a value;
//! - `resolvedDependencies`: each base image and `COPY --from`/`RUN
//!   --mount=from=` image as a package URL (`pkg:docker/busybox@latest?platform=linux%2Famd64`)
//!   with its digest (the index the tag named when the store has it, else
//!   the platform's manifest), ADD's Git repositories (commit) and URLs
//!   (content digest), and a Git context with its commit;
//! - `runDetails.builder.id`: `builder-id=` when given, else
//!   `pkg:generic/kiln@VERSION` (BuildKit leaves it empty, which the SLSA
//!   schema's URI does not allow); `metadata`: invocation id, start and end
//!   times, `buildkit_completeness`, `buildkit_hermetic` (no local source
//!   and no RUN with a network), `buildkit_reproducible` (`reproducible=`),
//!   `buildkit_metadata.vcs` (a local context in a Git work tree: its
//!   `revision` and `source`, as buildx sends them) and, in `mode=max`,
//!   `buildkit_metadata.source.infos` (the Dockerfile's text).
//!
//! BuildKit's `mode=max` also records its LLB definition
//! (`internalParameters.buildConfig`) and layer mapping; kiln has no LLB
//! and leaves both out. Every URL is shown through
//! [`kiln_reference::redact_credentials`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use kiln_layers::index::Statement;
use kiln_layers::{Descriptor, Digest, Platform, Reference, Store};
use kiln_parser::mount::MountType;
use kiln_reference::redact_credentials;
use serde_json::{json, Value};

use crate::plan::{BaseSource, CopyFrom, MountSource, Plan, StepKind};

/// The in-toto statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The SLSA provenance v1 predicate type.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// BuildKit's build type for its SLSA v1 provenance.
pub const BUILD_TYPE: &str =
    "https://github.com/moby/buildkit/blob/master/docs/attestations/slsa-definitions.md";

/// How much the provenance records (BuildKit's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Min,
    Max,
}

/// A provenance attestation asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvenanceRequest {
    pub mode: Mode,
    /// `builder-id=`: `runDetails.builder.id`.
    pub builder_id: Option<String>,
    /// `reproducible=true`: `buildkit_reproducible`.
    pub reproducible: bool,
    /// `inline-only=true`: only image outputs get it (a root filesystem
    /// output, which BuildKit would give a `provenance.json`, is allowed).
    pub inline_only: bool,
}

impl ProvenanceRequest {
    /// `--provenance VALUE` as buildx reads it: a boolean (`true` sends
    /// no mode, so BuildKit's default, `mode=max`), or BuildKit's
    /// attributes. `None`: no provenance (`false`, `disabled=true`).
    pub fn parse_flag(value: &str) -> Result<Option<ProvenanceRequest>, String> {
        match crate::git::parse_go_bool(value.trim()) {
            Some(true) => {
                return Ok(Some(ProvenanceRequest {
                    mode: Mode::Max,
                    ..ProvenanceRequest::min()
                }))
            }
            Some(false) => return Ok(None),
            None => {}
        }
        Self::parse_attributes(value, "--provenance")
    }

    /// `--attest VALUE`: `type=provenance,…`; any other type is refused.
    pub fn parse_attest(value: &str) -> Result<Option<ProvenanceRequest>, String> {
        let fields =
            kiln_parser::mount::csv_fields(value).map_err(|e| format!("--attest {value}: {e}"))?;
        // The last type= wins, as buildx reads the fields into one struct.
        let kind = fields
            .iter()
            .rev()
            .find_map(|f| f.strip_prefix("type="))
            .ok_or_else(|| format!("--attest {value}: attestation type not specified"))?;
        if kind != "provenance" {
            return Err(format!(
                "--attest {value}: attestation type {kind:?} is not supported: kiln makes \
                 type=provenance only (no SBOM generator)"
            ));
        }
        let rest: Vec<String> = fields
            .iter()
            .filter(|f| !f.starts_with("type="))
            .cloned()
            .collect();
        Self::parse_attributes(&rest.join(","), "--attest")
    }

    /// `--build-arg BUILDKIT_ATTEST_<KIND>=VALUE`, which BuildKit's
    /// frontend reads as `--attest type=<kind>,VALUE`
    /// (`frontend/attestations`): `PROVENANCE` takes the provenance
    /// attributes (an empty value, the defaults: `mode=max`); `SBOM` and
    /// any other kind are refused. `kind` is the name's end, lower-cased.
    pub fn parse_build_arg(kind: &str, value: &str) -> Result<Option<ProvenanceRequest>, String> {
        let flag = format!("--build-arg BUILDKIT_ATTEST_{}", kind.to_uppercase());
        match kind {
            // BuildKit's frontend does not read disabled= (buildx does, from
            // its flags): it would make the provenance anyway.
            "provenance"
                if value
                    .split(',')
                    .any(|f| f.trim_start().starts_with("disabled=")) =>
            {
                Err(format!(
                    "{flag}={value}: disabled= is buildx's, not read here (BuildKit would make \
                     the provenance anyway): leave the build arg out instead"
                ))
            }
            "provenance" => Self::parse_attributes(value, &flag),
            "sbom" => Err(format!(
                "{flag}={value}: attestation type \"sbom\" is not supported: kiln makes \
                 type=provenance only (no SBOM generator)"
            )),
            other => Err(format!(
                "{flag}={value}: unknown attestation type {other:?} (BuildKit's are \
                 provenance and sbom)"
            )),
        }
    }

    fn min() -> ProvenanceRequest {
        ProvenanceRequest {
            mode: Mode::Min,
            builder_id: None,
            reproducible: false,
            inline_only: false,
        }
    }

    /// BuildKit's provenance attributes: `mode=min|max` (BuildKit's default,
    /// when attributes are given without a mode, is `max`), `builder-id`,
    /// `reproducible`, `inline-only`, `version=v1`, `disabled`.
    fn parse_attributes(value: &str, flag: &str) -> Result<Option<ProvenanceRequest>, String> {
        let bad = |why: String| format!("{flag} {value}: {why}");
        let mut request = ProvenanceRequest {
            mode: Mode::Max,
            ..ProvenanceRequest::min()
        };
        let fields = kiln_parser::mount::csv_fields(value).map_err(|e| bad(e.to_string()))?;
        let boolean = |key: &str, v: &str| {
            crate::git::parse_go_bool(v).ok_or_else(|| bad(format!("invalid {key} value {v:?}")))
        };
        for field in fields.iter().filter(|f| !f.is_empty()) {
            let (key, v) = field
                .split_once('=')
                .ok_or_else(|| bad(format!("expected key=value, got {field:?}")))?;
            match key {
                "mode" => {
                    request.mode = match v {
                        "min" => Mode::Min,
                        "max" | "full" => Mode::Max,
                        _ => return Err(bad(format!("invalid mode {v:?} (min or max)"))),
                    }
                }
                "builder-id" => request.builder_id = Some(v.to_string()),
                "reproducible" => request.reproducible = boolean(key, v)?,
                "inline-only" => request.inline_only = boolean(key, v)?,
                "disabled" if boolean(key, v)? => return Ok(None),
                "disabled" => {}
                "version" if v == "v1" => {}
                "version" => {
                    return Err(bad(format!(
                        "provenance version {v:?} is not supported: kiln writes SLSA v1 only"
                    )))
                }
                _ => {
                    return Err(bad(format!(
                        "unknown provenance attribute {key:?} (kiln takes mode, builder-id, \
                         reproducible, inline-only, version=v1, disabled)"
                    )))
                }
            }
        }
        Ok(Some(request))
    }
}

/// Refuses what a build with provenance cannot write, naming the flag:
/// Docker media types (BuildKit: "cannot export attestations with
/// oci-mediatypes=false"), a docker-archive (one image, no index), and a
/// root filesystem output, which BuildKit gives a `provenance.json` that
/// kiln does not write, unless `inline-only=true` keeps provenance to the
/// image outputs.
pub fn check_outputs(
    request: &ProvenanceRequest,
    settings: &crate::session::BuildSettings,
) -> Result<(), crate::session::BuildError> {
    use crate::export::Output;
    let refuse = |why: &str| {
        Err(crate::session::BuildError::Invalid(format!(
            "--provenance: {why}"
        )))
    };
    if settings.docker_media_types {
        return refuse(
            "cannot export attestations with Docker media types (oci-mediatypes=false): \
             an attestation goes in an OCI image index",
        );
    }
    for output in &settings.outputs {
        match output {
            Output::Docker(_) => {
                return refuse(
                    "--output type=docker holds one image and no index to attach an attestation \
                     to; use type=oci, or drop --provenance",
                )
            }
            Output::Local(_) | Output::Tar(_) if !request.inline_only => {
                return refuse(
                    "kiln attaches provenance to images only and writes no provenance.json into a \
                     type=local or type=tar output; add inline-only=true, or drop --provenance",
                )
            }
            _ => {}
        }
    }
    Ok(())
}

/// Where the build's context and Dockerfile came from.
#[derive(Debug, Clone, Default)]
pub struct SourceInfo {
    /// A remote context's URL (credentials masked); None for a local one.
    pub context_origin: Option<String>,
    /// A Git context's commit.
    pub context_commit: Option<String>,
    /// The local context directory (for its Git work tree, if any).
    pub context_dir: Option<std::path::PathBuf>,
    /// Whether the Dockerfile was read from this machine (`-f`, stdin, or
    /// a local context).
    pub dockerfile_local: bool,
    /// The Dockerfile's name (`configSource.path`) and bytes.
    pub dockerfile_name: String,
    pub dockerfile_bytes: Vec<u8>,
}

impl SourceInfo {
    /// The context was read from this machine (a directory, or standard
    /// input).
    fn context_local(&self) -> bool {
        self.context_origin.as_deref().is_none_or(|o| o == "-")
    }
}

/// What one platform's provenance is made of.
pub struct Inputs<'a> {
    pub request: &'a ProvenanceRequest,
    pub store: &'a Store,
    pub plan: &'a Plan,
    pub source: &'a SourceInfo,
    pub build_args: &'a BTreeMap<String, String>,
    pub labels: &'a BTreeMap<String, String>,
    pub target: Option<&'a str>,
    /// The build's network for RUN steps that name none is `none`.
    pub network_none: bool,
    /// The image names (the statement's subjects).
    pub names: &'a [Reference],
    /// The manifest the statement is about (as it leaves the store) and
    /// its platform.
    pub subject: &'a Descriptor,
    pub platform: &'a Platform,
    pub invocation: &'a Invocation,
    /// The build's ADD downloads (their digests).
    pub downloads: Option<&'a crate::copy::UrlDownloads<'a>>,
    /// The images the `oci-layout://` named contexts gave: BuildKit's
    /// local image sources, `pkg:oci/…` materials of the digest the value
    /// named (an index's, whichever platform was built).
    pub layout_images: &'a [crate::contexts::named::LayoutContextImage],
}

/// One build's run: shared by the provenance of each of its platforms, as
/// BuildKit's invocation id is.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub id: String,
    /// When the solve began.
    pub started: SystemTime,
}

impl Invocation {
    /// A new invocation that started at `started`.
    pub fn new(started: SystemTime) -> Invocation {
        Invocation {
            id: invocation_id(),
            started,
        }
    }
}

/// The in-toto statement (SLSA provenance v1) for `inputs`.
pub fn statement(inputs: &Inputs<'_>) -> Statement {
    let subjects: Vec<Value> = if inputs.names.is_empty() {
        vec![json!({"digest": digest_set(&inputs.subject.digest)})]
    } else {
        inputs
            .names
            .iter()
            .map(|name| {
                json!({
                    "name": purl(name, Some(inputs.platform)),
                    "digest": digest_set(&inputs.subject.digest),
                })
            })
            .collect()
    };
    let doc = json!({
        "_type": STATEMENT_TYPE,
        "predicateType": PREDICATE_TYPE,
        "subject": subjects,
        "predicate": predicate(inputs),
    });
    Statement {
        predicate_type: PREDICATE_TYPE.to_string(),
        bytes: serde_json::to_vec(&doc).unwrap_or_default(),
    }
}

/// The SLSA v1 predicate.
fn predicate(inputs: &Inputs<'_>) -> Value {
    let source = inputs.source;
    let (request, request_complete) = request(inputs);
    let locals_used = source.context_local() || source.dockerfile_local;
    let mut metadata = json!({
        "invocationId": inputs.invocation.id,
        "startedOn": rfc3339(inputs.invocation.started),
        "finishedOn": rfc3339(SystemTime::now()),
        "buildkit_completeness": {
            "request": request_complete,
            "resolvedDependencies": !locals_used,
        },
        "buildkit_metadata": buildkit_metadata(inputs),
    });
    if !locals_used && !network_access(inputs) {
        metadata["buildkit_hermetic"] = json!(true);
    }
    if inputs.request.reproducible {
        metadata["buildkit_reproducible"] = json!(true);
    }
    let builder_id = inputs
        .request
        .builder_id
        .clone()
        .unwrap_or_else(|| format!("pkg:generic/kiln@{}", env!("CARGO_PKG_VERSION")));
    let mut definition = json!({
        "buildType": BUILD_TYPE,
        "externalParameters": {
            "configSource": config_source(source),
            "request": request,
        },
        "internalParameters": {
            "builderPlatform": Platform::host().normalized().to_string(),
        },
    });
    let dependencies = resolved_dependencies(inputs);
    if !dependencies.is_empty() {
        definition["resolvedDependencies"] = Value::Array(dependencies);
    }
    json!({
        "buildDefinition": definition,
        "runDetails": {
            "builder": {"id": builder_id},
            "metadata": metadata,
        },
    })
}

/// `externalParameters.configSource`.
fn config_source(source: &SourceInfo) -> Value {
    let mut out = json!({"path": source.dockerfile_name});
    match (&source.context_origin, &source.context_commit) {
        (Some(uri), Some(commit)) => {
            out["uri"] = json!(redact_credentials(uri));
            out["digest"] = json!({"sha1": commit});
        }
        (Some(uri), None) if uri != "-" => out["uri"] = json!(redact_credentials(uri)),
        _ => {}
    }
    if source.context_commit.is_none() && source.dockerfile_local {
        out["digest"] = digest_set(&Digest::of(&source.dockerfile_bytes));
    }
    out
}

/// `externalParameters.request` and whether it is complete (`mode=min`
/// leaves build args and labels out).
fn request(inputs: &Inputs<'_>) -> (Value, bool) {
    let max = inputs.request.mode == Mode::Max;
    let mut args = BTreeMap::new();
    if let Some(target) = inputs.target {
        args.insert("target".to_string(), target.to_string());
    }
    let scrubbed = !inputs.build_args.is_empty() || !inputs.labels.is_empty();
    if max {
        for (k, v) in inputs.build_args {
            args.insert(format!("build-arg:{k}"), redact_credentials(v));
        }
        for (k, v) in inputs.labels {
            args.insert(format!("label:{k}"), redact_credentials(v));
        }
    }
    let mut out = json!({"frontend": "dockerfile.v0"});
    if !args.is_empty() {
        out["args"] = json!(args);
    }
    let source = inputs.source;
    let mut locals = Vec::new();
    if source.context_local() {
        locals.push(json!({"name": "context"}));
    }
    if source.dockerfile_local {
        locals.push(json!({"name": "dockerfile"}));
    }
    if !locals.is_empty() {
        out["locals"] = Value::Array(locals);
    }
    if max {
        let (secrets, ssh) = mounted_ids(inputs.plan);
        if !secrets.is_empty() {
            out["secrets"] = json!(secrets
                .iter()
                .map(|(id, optional)| id_entry(id, *optional))
                .collect::<Vec<_>>());
        }
        if !ssh.is_empty() {
            out["ssh"] = json!(ssh
                .iter()
                .map(|(id, optional)| id_entry(id, *optional))
                .collect::<Vec<_>>());
        }
    }
    (out, max || !scrubbed)
}

fn id_entry(id: &str, optional: bool) -> Value {
    if optional {
        json!({"id": id, "optional": true})
    } else {
        json!({"id": id})
    }
}

/// The secret and SSH ids the needed stages' RUN steps mount, each with
/// whether it is optional (`required=false`, the default).
type MountIds = BTreeMap<String, bool>;

fn mounted_ids(plan: &Plan) -> (MountIds, MountIds) {
    let (mut secrets, mut ssh) = (MountIds::new(), MountIds::new());
    for step in needed_steps(plan) {
        let StepKind::Run(run) = &step.kind else {
            continue;
        };
        for mount in &run.mounts {
            let spec = &mount.spec;
            let (ids, id) = match spec.mount_type {
                MountType::Secret => match crate::solve::secret_id(spec) {
                    Some(id) => (&mut secrets, id),
                    None => continue,
                },
                MountType::Ssh => (
                    &mut ssh,
                    spec.id
                        .clone()
                        .filter(|id| !id.is_empty())
                        .unwrap_or_else(|| "default".into()),
                ),
                _ => continue,
            };
            let optional = !spec.required;
            let entry = ids.entry(id).or_insert(optional);
            *entry &= optional;
        }
    }
    (secrets, ssh)
}

fn needed_steps(plan: &Plan) -> impl Iterator<Item = &crate::plan::Step> {
    plan.stages
        .iter()
        .filter(|s| s.needed && !s.replaced)
        .flat_map(|s| &s.steps)
}

/// Whether a RUN step may reach a network.
fn network_access(inputs: &Inputs<'_>) -> bool {
    needed_steps(inputs.plan).any(|step| match &step.kind {
        StepKind::Run(run) => match run.network.as_deref() {
            Some(network) => network != "none",
            None => !inputs.network_none,
        },
        _ => false,
    })
}

/// `buildkit_metadata`: the local context's Git revision and source
/// (buildx's `vcs:` options) and, in `mode=max`, the Dockerfile's text.
fn buildkit_metadata(inputs: &Inputs<'_>) -> Value {
    let mut out = json!({});
    if let Some(vcs) = inputs.source.context_dir.as_deref().and_then(local_vcs) {
        out["vcs"] = vcs;
    }
    if inputs.request.mode == Mode::Max {
        use base64::Engine as _;
        out["source"] = json!({"infos": [{
            "filename": inputs.source.dockerfile_name,
            "language": "Dockerfile",
            "data": base64::engine::general_purpose::STANDARD.encode(&inputs.source.dockerfile_bytes),
        }]});
    }
    out
}

/// A local context in a Git work tree: `revision` (HEAD, `-dirty` when
/// the tree has changes, as buildx) and `source` (the `origin` remote,
/// credentials masked), when git answers.
fn local_vcs(dir: &Path) -> Option<Value> {
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !text.is_empty()).then_some(text)
    };
    if git(&["rev-parse", "--is-inside-work-tree"]).as_deref() != Some("true") {
        return None;
    }
    let mut revision = git(&["rev-parse", "HEAD"])?;
    if git(&["status", "--porcelain", "--ignored=no"]).is_some() {
        revision.push_str("-dirty");
    }
    let mut vcs = json!({"revision": revision});
    if let Some(source) = git(&["remote", "get-url", "origin"]) {
        vcs["source"] = json!(redact_credentials(&source));
    }
    Some(vcs)
}

/// Every image the build read (bases, `COPY --from`, `RUN --mount=from=`)
/// as a package URL with its digest, and a Git context with its commit.
fn resolved_dependencies(inputs: &Inputs<'_>) -> Vec<Value> {
    let mut images: Vec<(Reference, Platform, Option<Digest>)> = Vec::new();
    for stage in inputs
        .plan
        .stages
        .iter()
        .filter(|s| s.needed && !s.replaced)
    {
        let image = &stage.image;
        let platform = Platform {
            architecture: image.architecture.clone(),
            os: image.os.clone(),
            os_version: None,
            os_features: None,
            variant: image.variant.clone(),
        };
        if let BaseSource::Image { reference, digest } = &stage.base {
            images.push((
                reference.reference.clone(),
                platform.clone(),
                digest.clone(),
            ));
        }
        for step in &stage.steps {
            match &step.kind {
                StepKind::Copy(copy) => {
                    if let CopyFrom::Image(name) = &copy.from {
                        images.push((
                            name.reference.clone(),
                            platform.clone(),
                            copy.from_digest.clone(),
                        ));
                    }
                }
                StepKind::Run(run) => {
                    for mount in &run.mounts {
                        if let Some(MountSource::Image(image)) = &mount.from_resolved {
                            images.push((
                                image.reference.reference.clone(),
                                platform.clone(),
                                image.digest.clone(),
                            ));
                        }
                    }
                }
                StepKind::Workdir(_) => {}
            }
        }
    }
    let mut out: Vec<Value> = Vec::new();
    for (reference, platform, manifest) in images {
        let layout = (inputs.layout_images.iter()).find(|l| l.reference == reference);
        let digest = match layout {
            Some(layout) => layout.root.digest.clone(),
            None => match image_digest(inputs.store, &reference, manifest.as_ref()) {
                Some(digest) => digest,
                None => continue,
            },
        };
        let kind = match layout {
            Some(_) => PurlType::Oci,
            None => PurlType::Docker,
        };
        let entry = json!({
            "uri": purl_of(kind, &reference, Some(&platform)),
            "digest": digest_set(&digest),
        });
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    for entry in add_sources(inputs) {
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    let source = inputs.source;
    if let (Some(uri), Some(commit)) = (&source.context_origin, &source.context_commit) {
        out.push(json!({"uri": redact_credentials(uri), "digest": {"sha1": commit}}));
    }
    out
}

/// ADD's remote sources: a Git repository with the commit its ref resolved
/// to, a URL with its content's digest (`--checksum`'s, else the download's
/// made for the cache key; none is made here).
fn add_sources(inputs: &Inputs<'_>) -> Vec<Value> {
    let mut out = Vec::new();
    for step in needed_steps(inputs.plan) {
        let StepKind::Copy(copy) = &step.kind else {
            continue;
        };
        if !copy.is_add {
            continue;
        }
        for (index, src) in copy.sources.iter().enumerate() {
            let uri = redact_credentials(src);
            if let Some(resolved) = copy.git_commits.get(&index) {
                out.push(json!({"uri": uri, "digest": {"sha1": resolved.commit}}));
                continue;
            }
            if !(src.starts_with("http://") || src.starts_with("https://")) {
                continue;
            }
            let digest = match (&copy.checksum, inputs.downloads) {
                (Some(checksum), _) => checksum.split_once(':').map(|(a, h)| json!({a: h})),
                (None, Some(downloads)) => downloads
                    .get(src)
                    .ok()
                    .and_then(|d| d.digest.split_once(':').map(|(a, h)| json!({a: h}))),
                (None, None) => None,
            };
            if let Some(digest) = digest {
                out.push(json!({"uri": uri, "digest": digest}));
            }
        }
    }
    out
}

/// The digest an image reference resolved to: the index the store holds
/// under the name when it lists `manifest` (BuildKit records what the
/// registry resolved the name to), else the manifest itself; for a name
/// without a recorded manifest, whatever the store holds under it.
fn image_digest(store: &Store, reference: &Reference, manifest: Option<&Digest>) -> Option<Digest> {
    let tagged = store.resolve(reference).ok().flatten();
    match (tagged, manifest) {
        (Some(tagged), Some(manifest)) => {
            let lists = match store.read_manifest(&tagged) {
                Ok(kiln_layers::oci::ManifestKind::Index(index)) => {
                    index.manifests.iter().any(|m| &m.digest == manifest)
                }
                _ => false,
            };
            Some(if lists || &tagged.digest == manifest {
                tagged.digest
            } else {
                manifest.clone()
            })
        }
        (None, Some(manifest)) => Some(manifest.clone()),
        (Some(tagged), None) => Some(tagged.digest),
        (None, None) => reference.digest.clone(),
    }
}

fn digest_set(digest: &Digest) -> Value {
    json!({digest.algorithm(): digest.hex()})
}

/// A package URL for an image reference, as BuildKit's `purl.RefToPURL`
/// writes it: `pkg:docker/NAMESPACE/NAME@TAG?digest=…&platform=…` (the
/// familiar name; each part percent-encoded as packageurl-go does).
///
/// ```
/// use kiln_builder::provenance::purl;
/// use kiln_layers::{Platform, Reference};
/// let r = Reference::parse("busybox").unwrap();
/// let p = Platform::parse("linux/amd64").unwrap();
/// assert_eq!(purl(&r, Some(&p)), "pkg:docker/busybox@latest?platform=linux%2Famd64");
/// let r = Reference::parse("localhost:5000/team/app:1.0").unwrap();
/// assert_eq!(purl(&r, None), "pkg:docker/localhost%3A5000/team/app@1.0");
/// ```
pub fn purl(reference: &Reference, platform: Option<&Platform>) -> String {
    purl_of(PurlType::Docker, reference, platform)
}

/// The package URL types BuildKit gives images: `docker` for a
/// registry's, `oci` for a local one (an OCI layout's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurlType {
    Docker,
    Oci,
}

/// [`purl`] of either type: `pkg:oci/…` names a local image as BuildKit
/// names an `oci-layout://` source.
///
/// ```
/// use kiln_builder::provenance::{purl_of, PurlType};
/// use kiln_layers::Reference;
/// let r = Reference::parse(&format!("base@sha256:{}", "a".repeat(64))).unwrap();
/// assert_eq!(
///     purl_of(PurlType::Oci, &r, None),
///     format!("pkg:oci/base?digest=sha256:{}", "a".repeat(64))
/// );
/// ```
pub fn purl_of(kind: PurlType, reference: &Reference, platform: Option<&Platform>) -> String {
    let familiar = reference.repository.familiar();
    let (namespace, name) = match familiar.rsplit_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, familiar.as_str()),
    };
    let mut out = String::from(match kind {
        PurlType::Docker => "pkg:docker/",
        PurlType::Oci => "pkg:oci/",
    });
    if let Some(ns) = namespace {
        let parts: Vec<String> = ns.split('/').map(query_escape).collect();
        out.push_str(&parts.join("/"));
        out.push('/');
    }
    out.push_str(&query_escape(name));
    let tag = match (&reference.tag, &reference.digest) {
        (Some(tag), _) => Some(tag.as_str()),
        (None, Some(_)) => None,
        (None, None) => Some("latest"),
    };
    if let Some(tag) = tag {
        out.push('@');
        out.push_str(&path_escape(tag));
    }
    let mut qualifiers = Vec::new();
    if let Some(digest) = &reference.digest {
        qualifiers.push(format!("digest={}", path_escape(digest.as_str())));
    }
    if let Some(platform) = platform {
        let shown = platform.normalized().to_string();
        qualifiers.push(format!("platform={}", path_escape(&shown)));
    }
    if !qualifiers.is_empty() {
        out.push('?');
        out.push_str(&qualifiers.join("&"));
    }
    out
}

/// Go's `url.QueryEscape` (a space as `+`).
fn query_escape(text: &str) -> String {
    escape(
        text,
        |b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b),
        true,
    )
}

/// Go's `url.PathEscape` (a path segment: `/`, `;`, `,`, `?` escaped).
fn path_escape(text: &str) -> String {
    escape(
        text,
        |b| b.is_ascii_alphanumeric() || b"-_.~$&+:=@!'()*".contains(&b),
        false,
    )
}

fn escape(text: &str, keep: impl Fn(u8) -> bool, space_plus: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if keep(b) {
            out.push(b as char);
        } else if b == b' ' && space_plus {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A time as RFC 3339 in UTC with nanoseconds, as Go's `time.Time`
/// marshals it.
fn rfc3339(time: SystemTime) -> String {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let nanos = since.subsec_nanos();
    let fraction = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_string()
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{fraction}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil-date algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A unique invocation id (BuildKit's is 25 random base-36 characters).
fn invocation_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = format!("{}-{nanos}", std::process::id());
    Digest::of(seed.as_bytes()).hex()[..25].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_as_buildx_reads_them() {
        let err =
            ProvenanceRequest::parse_build_arg("provenance", "mode=min,disabled=true").unwrap_err();
        assert!(err.contains("disabled= is buildx's"), "{err}");
        let arg = ProvenanceRequest::parse_build_arg("provenance", "").unwrap();
        assert_eq!(arg.map(|r| r.mode), Some(Mode::Max));
        assert!(ProvenanceRequest::parse_build_arg("sbom", "").is_err());
        let yes = ProvenanceRequest::parse_flag("true").unwrap().unwrap();
        assert_eq!(yes.mode, Mode::Max, "buildx sends no mode: BuildKit's max");
        assert_eq!(ProvenanceRequest::parse_flag("false").unwrap(), None);
        let max = ProvenanceRequest::parse_flag("mode=max,builder-id=https://ci/1")
            .unwrap()
            .unwrap();
        assert_eq!(max.mode, Mode::Max);
        assert_eq!(max.builder_id.as_deref(), Some("https://ci/1"));
        let bare = ProvenanceRequest::parse_flag("reproducible=true")
            .unwrap()
            .unwrap();
        assert_eq!(bare.mode, Mode::Max, "BuildKit's default mode");
        assert!(bare.reproducible);
        assert_eq!(
            ProvenanceRequest::parse_flag("mode=max,disabled=true").unwrap(),
            None
        );
        for (flag, wanted) in [
            ("mode=full-ish", "invalid mode"),
            ("version=v0.2", "SLSA v1 only"),
            (
                "filename=p.json",
                "unknown provenance attribute \"filename\"",
            ),
            ("junk", "expected key=value"),
        ] {
            let err = ProvenanceRequest::parse_flag(flag).unwrap_err();
            assert!(err.contains(wanted), "{flag}: {err}");
        }
        let attest = ProvenanceRequest::parse_attest("type=provenance,mode=min")
            .unwrap()
            .unwrap();
        assert_eq!(attest.mode, Mode::Min);
        let err = ProvenanceRequest::parse_attest("type=sbom").unwrap_err();
        assert!(err.contains("\"sbom\" is not supported"), "{err}");
        let err = ProvenanceRequest::parse_attest("mode=min").unwrap_err();
        assert!(err.contains("type not specified"), "{err}");
    }

    #[test]
    fn package_urls_and_times() {
        let p = Platform::parse("linux/arm/v7").unwrap();
        let r = Reference::parse(
            "ghcr.io/o/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        )
        .unwrap();
        assert_eq!(
            purl(&r, Some(&p)),
            "pkg:docker/ghcr.io/o/app?digest=sha256:0000000000000000000000000000000000000000000000000000000000000000&platform=linux%2Farm%2Fv7"
        );
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 500_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.5Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(invocation_id().len(), 25);
    }
}
