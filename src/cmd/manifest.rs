//! `kiln manifest`: image indexes, for assembling a multi-platform image
//! from per-architecture builds (as `docker manifest` and `docker buildx
//! imagetools` do).
//!
//! - `inspect REF [--raw]`: the index `create` or `annotate` made under
//!   the name, else the registry's document (as `docker manifest
//!   inspect`); raw bytes, or a summary with every entry.
//! - `create [--amend] TARGET SOURCE…`: an index over images as their
//!   registries have them (each source an image, or an index whose
//!   entries are taken), stored under TARGET; no layer is downloaded.
//!   `--amend` adds to the index TARGET names, replacing the entries of a
//!   source given again.
//! - `annotate TARGET MANIFEST --os/--arch/--variant/--os-version/
//!   --os-features/--annotation`: changes an entry of the stored index.
//! - `push TARGET [DEST]`: every manifest, then the index; the layers are
//!   mounted from the repositories they are in (same registry) or copied.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use kiln_layers::index::{annotate_entry, EntryChange, IndexSources};
use kiln_layers::oci::{media, parse_manifest, ManifestKind};
use kiln_layers::{Digest, Reporter, Store};
use kiln_registry::{Client, Reference};
use kiln_transfer::PushOptions;

use crate::cmd::registry::RegistryArgs;
use crate::cmd::runtime;
use crate::progress::ProgressArgs;
use crate::settings::{GlobalSettings, Reads};

#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Image indexes (multi-platform images): inspect, create, annotate, push.
    #[command(subcommand)]
    Manifest(ManifestAction),
}

#[derive(Debug, Subcommand)]
pub enum ManifestAction {
    /// Show a manifest or index: a list create or annotate made, else the registry's.
    Inspect(InspectArgs),
    /// Make an index over images in registries, stored under TARGET.
    Create(CreateArgs),
    /// Change an entry of a stored index: its platform, annotations.
    Annotate(AnnotateArgs),
    /// Push a stored index: every manifest it lists, then the index.
    Push(PushArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    reference: String,
    /// The bytes as stored or served, not a summary.
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The index's name.
    target: String,
    /// Images (or indexes) in registries, one entry each (an index: each
    /// of its entries).
    #[arg(required = true)]
    sources: Vec<String>,
    /// Add to the index TARGET already names: a source given again has its
    /// entries replaced, the others stay (`docker manifest create --amend`).
    #[arg(short, long)]
    amend: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct AnnotateArgs {
    /// The stored index.
    target: String,
    /// The entry: its digest, NAME@DIGEST, or NAME:TAG (resolved at its registry).
    manifest: String,
    /// Set the entry's operating system.
    #[arg(long)]
    os: Option<String>,
    /// Set the entry's architecture.
    #[arg(long)]
    arch: Option<String>,
    /// Set the entry's variant ("" removes it).
    #[arg(long)]
    variant: Option<String>,
    /// Set the entry's os.version ("" removes it).
    #[arg(long)]
    os_version: Option<String>,
    /// Set the entry's os.features (comma-separated; "" removes them).
    #[arg(long, value_name = "FEATURES")]
    os_features: Option<String>,
    /// Add an annotation to the entry (repeatable; OCI indexes only).
    #[arg(long = "annotation", value_name = "K=V")]
    annotations: Vec<String>,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The stored index.
    target: String,
    /// Where to push it (default: TARGET).
    dest: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    progress: ProgressArgs,
}

impl ManifestCommand {
    /// The global settings this command reads (see [`Reads`]).
    pub fn reads(&self) -> Reads {
        Reads::BOTH
    }

    pub fn run(self, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
        let ManifestCommand::Manifest(action) = self;
        match action {
            ManifestAction::Inspect(args) => inspect(args, settings),
            ManifestAction::Create(args) => create(args, settings),
            ManifestAction::Annotate(args) => annotate(args, settings),
            ManifestAction::Push(args) => push(args, settings),
        }
    }
}

/// A manifest or index as read: its bytes, media type and digest.
struct Document {
    bytes: Vec<u8>,
    media_type: String,
    digest: Digest,
}

/// `kiln manifest inspect`: the store's document under the name (no
/// store is created to look), else the registry's.
fn inspect(args: InspectArgs, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
    let reference = Reference::parse(&args.reference)?;
    // As `docker manifest inspect`: a list `manifest create` or `annotate`
    // made under that name, else the registry's document. Not a built or
    // pulled image of the store: a pushed image's layers are compressed
    // on the way, so the registry's manifest is not the store's.
    let stored = match Store::exists_at(&settings.root) {
        true => {
            let store = Store::open(&settings.root)?;
            let name = reference.to_string();
            match store.resolve(&reference)? {
                Some(desc) if IndexSources::read(&store, &name, &desc.digest)?.is_some() => {
                    Some(Document {
                        bytes: store.read_blob(&desc.digest)?,
                        media_type: desc.media_type,
                        digest: desc.digest,
                    })
                }
                _ => None,
            }
        }
        false => None,
    };
    let document = match stored {
        Some(d) => d,
        None => {
            let client = Client::new(args.registry.client_config(settings)?)?;
            let fetched = runtime()?.block_on(client.fetch_manifest(&reference))?;
            Document {
                media_type: fetched.media_type,
                digest: fetched.digest,
                bytes: fetched.bytes,
            }
        }
    };
    let mut stdout = std::io::stdout().lock();
    if args.raw {
        stdout.write_all(&document.bytes)?;
        return Ok(ExitCode::SUCCESS);
    }
    stdout.write_all(summary(&reference, &document)?.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// What `inspect` shows without `--raw`, as `docker buildx imagetools
/// inspect` lays it out: the document, then each entry of an index.
fn summary(reference: &Reference, document: &Document) -> anyhow::Result<String> {
    let kind = parse_manifest(
        &document.bytes,
        &document.media_type,
        &format!("manifest {}", document.digest),
    )?;
    let media_type = match (&kind, document.media_type.as_str()) {
        (_, m) if media::is_manifest(m) || media::is_index(m) => m.to_string(),
        (ManifestKind::Image(m), _) => m.media_type.clone().unwrap_or_default(),
        (ManifestKind::Index(i), _) => i.media_type.clone().unwrap_or_default(),
    };
    let mut out = format!(
        "Name:      {reference}\nMediaType: {media_type}\nDigest:    {}\n",
        document.digest
    );
    let ManifestKind::Index(index) = kind else {
        return Ok(out);
    };
    out.push_str("\nManifests:\n");
    let name = reference.repository.to_string();
    for (n, entry) in index.manifests.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        out.push_str(&format!("  Name:        {name}@{}\n", entry.digest));
        out.push_str(&format!("  MediaType:   {}\n", entry.media_type));
        let platform = entry
            .platform
            .as_ref()
            .map_or("unknown".to_string(), |p| p.to_string());
        out.push_str(&format!("  Platform:    {platform}\n"));
        if let Some(features) = entry.platform.as_ref().and_then(|p| p.os_features.as_ref()) {
            out.push_str(&format!("  OSFeatures:  {}\n", features.join(", ")));
        }
        if let Some(version) = entry.platform.as_ref().and_then(|p| p.os_version.as_ref()) {
            out.push_str(&format!("  OSVersion:   {version}\n"));
        }
        if !entry.annotations.is_empty() {
            out.push_str("  Annotations:\n");
            let width = entry
                .annotations
                .keys()
                .map(|k| k.len() + 1)
                .max()
                .unwrap_or(0);
            for (key, value) in &entry.annotations {
                out.push_str(&format!("    {:<width$} {value}\n", format!("{key}:")));
            }
        }
    }
    Ok(out)
}

/// `kiln manifest create`: the index stored and tagged; prints its digest.
fn create(args: CreateArgs, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
    let target = Reference::parse_tag(&args.target)?;
    let sources = args
        .sources
        .iter()
        .map(|s| Reference::parse(s).with_context(|| format!("source {s}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let store = Store::open(&settings.root)?;
    // `docker manifest create` refuses to amend an existing list without
    // --amend; here the name may also be any image's tag, which a new
    // index would take from it.
    let base = store.resolve(&target)?;
    match &base {
        Some(existing) if !args.amend => bail!(
            "{target} already names {} in the store: refusing to replace it without \
             --amend (or kiln rmi {target} first, or give the index another name)",
            existing.digest
        ),
        Some(existing) if !media::is_index(&existing.media_type) => bail!(
            "{target} names the image manifest {} in the store, not an index: \
             --amend adds to an index",
            existing.digest
        ),
        _ => {}
    }
    let client = Client::new(args.registry.client_config(settings)?)?;
    let created = runtime()?.block_on(kiln_transfer::create_index(
        &client,
        &store,
        &target,
        &sources,
        base.as_ref(),
    ))?;
    eprintln!(
        "Created manifest list {target} ({} entries)",
        created.entries.len()
    );
    println!("{}", created.descriptor.digest);
    Ok(ExitCode::SUCCESS)
}

/// `kiln manifest annotate`: the entry changed, the index stored again
/// under the same name; prints the new digest.
fn annotate(args: AnnotateArgs, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
    let target = Reference::parse(&args.target)?;
    let store = Store::open(&settings.root)?;
    let Some(index) = store.resolve(&target)? else {
        bail!("{target}: no such index in the store (make one with kiln manifest create)");
    };
    let digest = entry_digest(&args.manifest, &args.registry, settings)?;
    let mut annotations = BTreeMap::new();
    for pair in &args.annotations {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--annotation {pair}: expected KEY=VALUE");
        };
        annotations.insert(key.to_string(), value.to_string());
    }
    let change = EntryChange {
        os: args.os.clone(),
        architecture: args.arch.clone(),
        variant: args.variant.clone(),
        os_version: args.os_version.clone(),
        os_features: args.os_features.as_ref().map(|f| {
            f.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        }),
        annotations,
    };
    let changed = annotate_entry(&store, &index, &digest, &change)
        .with_context(|| format!("annotating {} in {target}", args.manifest))?;
    // The entries' sources stay theirs (for a later --amend); an index
    // built or pulled becomes a list of the manifest commands' own, which
    // `inspect` shows rather than the registry's (no source known).
    let name = target.to_string();
    let mut sources = IndexSources::read(&store, &name, &index.digest)?.unwrap_or(IndexSources {
        index: index.digest.clone(),
        entries: Vec::new(),
    });
    sources.index = changed.digest.clone();
    sources.write(&store, &name)?;
    store.tag(&target, &changed)?;
    println!("{}", changed.digest);
    Ok(ExitCode::SUCCESS)
}

/// The digest an `annotate` MANIFEST names: a digest, NAME@DIGEST, or a
/// tag resolved at its registry.
fn entry_digest(
    manifest: &str,
    registry: &RegistryArgs,
    settings: &GlobalSettings,
) -> anyhow::Result<Digest> {
    if let Ok(digest) = Digest::parse(manifest) {
        return Ok(digest);
    }
    let reference = Reference::parse(manifest).with_context(|| format!("manifest {manifest}"))?;
    if let Some(digest) = &reference.digest {
        return Ok(digest.clone());
    }
    let client = Client::new(registry.client_config(settings)?)?;
    let fetched = runtime()?
        .block_on(client.fetch_manifest(&reference))
        .with_context(|| format!("resolving {manifest}"))?;
    Ok(fetched.digest)
}

/// `kiln manifest push`: every manifest of the stored index, then the
/// index; prints its digest.
fn push(args: PushArgs, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
    let target = Reference::parse(&args.target)?;
    let dest = match &args.dest {
        Some(d) => Reference::parse(d)?,
        None => target.clone(),
    };
    let store = Store::open(&settings.root)?;
    let Some(index) = store.resolve(&target)? else {
        bail!("{target}: no such index in the store (make one with kiln manifest create)");
    };
    let client = Arc::new(Client::new(args.registry.client_config(settings)?)?);
    let reporter: Arc<dyn Reporter> = Arc::new(args.progress.reporter());
    let pushed = runtime()?.block_on(kiln_transfer::push_descriptor(
        &client,
        &store,
        &index,
        &dest,
        &PushOptions::default(),
        reporter,
    ))?;
    // The digest alone on stdout, as docker manifest push prints it
    // (`DIGEST=$(kiln manifest push …)`).
    eprintln!("{dest}: digest: {} size: {}", pushed.digest, pushed.size);
    println!("{}", pushed.digest);
    Ok(ExitCode::SUCCESS)
}
