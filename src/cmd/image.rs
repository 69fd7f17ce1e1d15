//! Local image commands: `images`, `tag`, `inspect`, `rmi`, `prune`,
//! `save`, `load`, `import`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use kiln_layers::archive::{self, Format, SaveItem};
use kiln_layers::import::{import_rootfs, ImportOptions};
use kiln_layers::oci::parse_rfc3339;
use kiln_layers::store::{Image, TaggedImage};
use kiln_layers::{
    Compression, EntryKind, ManifestKind, Platform, PlatformEntry, Reference, Store,
};

use crate::progress::{human_bytes, ProgressArgs};
use crate::settings::{GlobalSettings, Reads};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SaveFormat {
    Oci,
    Docker,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LayerCompression {
    Gzip,
    Zstd,
    None,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List images in the store.
    Images {
        /// Only image ids (not with --format).
        #[arg(short, long, conflicts_with = "format")]
        quiet: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Give an image another name.
    Tag {
        /// Existing image (reference, id or digest).
        source: String,
        /// New reference.
        target: String,
    },
    /// Show an image's manifest and config as JSON.
    Inspect {
        #[arg(required = true)]
        images: Vec<String>,
        /// Platform to pick from a multi-platform image (os/arch[/variant]).
        #[arg(long)]
        platform: Option<String>,
    },
    /// Remove images (their tags, then blobs nothing else uses).
    Rmi {
        #[arg(required = true)]
        images: Vec<String>,
        /// Remove an image id even if several tags name it.
        #[arg(short, long)]
        force: bool,
    },
    /// Remove unreferenced blobs and snapshots and leftovers of killed writes and builds;
    /// with --all or limits, build cache too (least recently used first).
    Prune(crate::cmd::system::PruneArgs),
    /// Write images to an OCI layout (dir or .tar) or a docker-archive tar.
    Save(SaveArgs),
    /// Load images from an OCI layout (dir or tar) or a docker-archive tar.
    Load {
        #[arg(short, long)]
        input: PathBuf,
        #[command(flatten)]
        progress: ProgressArgs,
    },
    /// Create a one-layer image from a root filesystem tar (`-` for stdin).
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    #[arg(long, value_enum, default_value_t = SaveFormat::Docker)]
    format: SaveFormat,
    /// Output path (`-` for stdout).
    #[arg(short, long)]
    output: PathBuf,
    #[arg(required = true)]
    images: Vec<String>,
    /// Save only this platform of a multi-platform image (default: the
    /// index and every platform the store holds).
    #[arg(long)]
    platform: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    rootfs: PathBuf,
    reference: String,
    /// Dockerfile instruction applied to the config (CMD, ENTRYPOINT,
    /// ENV, EXPOSE, HEALTHCHECK, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME,
    /// WORKDIR).
    #[arg(short, long)]
    change: Vec<String>,
    /// Platform recorded in the config (default: this machine's).
    #[arg(long)]
    platform: Option<String>,
    #[arg(long, value_enum, default_value_t = LayerCompression::Gzip)]
    compression: LayerCompression,
    #[command(flatten)]
    progress: ProgressArgs,
}

fn platform(arg: &Option<String>) -> anyhow::Result<Platform> {
    Ok(match arg {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    })
}

impl ImageCommand {
    /// The global settings this command reads (see [`Reads`]).
    pub fn reads(&self) -> Reads {
        match self {
            // Layers a build left in a registry are fetched first.
            ImageCommand::Save(_) => Reads::BOTH,
            _ => Reads::STORE,
        }
    }

    pub fn run(self, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
        let store = Store::open(&settings.root)
            .with_context(|| format!("opening the store at {}", settings.root.display()))?;
        match self {
            ImageCommand::Images { quiet, format } => images(&store, quiet, format),
            ImageCommand::Tag { source, target } => tag(&store, &source, &target),
            ImageCommand::Inspect { images, platform } => inspect_all(&store, &images, &platform),
            ImageCommand::Rmi { images, force } => rmi(&store, &images, force),
            ImageCommand::Prune(args) => crate::cmd::system::prune(&store, &args),
            ImageCommand::Save(args) => save(&store, args, settings),
            ImageCommand::Load { input, progress } => load(&store, &input, &progress),
            ImageCommand::Import(args) => import(&store, args),
        }
    }
}

/// `kiln tag`: names the image `source` finds `target` too.
fn tag(store: &Store, source: &str, target: &str) -> anyhow::Result<ExitCode> {
    let found = store.find(source, &Platform::host())?;
    let Some(first) = found.first() else {
        bail!("image {source} not found");
    };
    let target = Reference::parse_tag(target)?;
    let mut desc = first.descriptor.clone();
    desc.annotations.clear();
    store.tag(&target, &desc)?;
    Ok(ExitCode::SUCCESS)
}

/// `kiln inspect`: one JSON array, an entry per image asked for.
fn inspect_all(
    store: &Store,
    queries: &[String],
    platform_arg: &Option<String>,
) -> anyhow::Result<ExitCode> {
    let platform = platform_arg.as_deref().map(Platform::parse).transpose()?;
    let mut out = Vec::new();
    for query in queries {
        out.push(inspect(store, query, platform.as_ref())?);
    }
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, &out)?;
    writeln!(stdout)?;
    Ok(ExitCode::SUCCESS)
}

/// `kiln save`: the tagged images the queries find, into one archive.
/// A multi-platform image goes whole (the index and every platform the
/// store holds) unless `--platform` picks one.
fn save(store: &Store, args: SaveArgs, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
    let platform = platform(&args.platform)?;
    // (query, name, what) for every image asked for, in order.
    let mut wanted = Vec::new();
    for query in &args.images {
        for (name, descriptor) in save_names(store, query, &platform)? {
            wanted.push((query.as_str(), name, descriptor));
        }
    }
    // An image also saved under a name needs no unnamed entry (docker
    // writes one only for an image nothing names); nothing twice.
    let named: Vec<kiln_layers::Digest> = (wanted.iter())
        .filter(|(_, name, _)| name.is_some())
        .map(|(_, _, d)| d.digest.clone())
        .collect();
    let mut seen = Vec::new();
    let mut items = Vec::new();
    for (query, name, descriptor) in wanted {
        if name.is_none() && named.contains(&descriptor.digest) {
            continue;
        }
        let key = (
            name.as_ref().map(|r| r.to_string()),
            descriptor.digest.clone(),
        );
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let item = match &args.platform {
            Some(_) => SaveItem::single(name, store.read_image_for(&descriptor, &platform, query)?),
            None => SaveItem::held(store, name, &descriptor, &platform)?,
        };
        // Layers a build left where they are come down first.
        for image in &item.images {
            crate::cmd::fetch_missing_layers(store, image, settings)?;
        }
        items.push(item);
    }
    let format = match args.format {
        SaveFormat::Oci => Format::Oci,
        SaveFormat::Docker => Format::Docker,
    };
    archive::save(store, &items, format, &args.output)?;
    Ok(ExitCode::SUCCESS)
}

/// What `save QUERY` writes, as `docker save` names it: a tag, that tag;
/// a repository without tag or digest, every tag of it the store has (or
/// its `latest`, as a lookup of the name finds it); an image id, the
/// image without a name (`RepoTags` null).
fn save_names(
    store: &Store,
    query: &str,
    platform: &Platform,
) -> anyhow::Result<Vec<(Option<Reference>, kiln_layers::Descriptor)>> {
    let last = query.rsplit('/').next().unwrap_or(query);
    let name_only = !last.contains(':') && !last.contains('@');
    if let (true, Ok(asked)) = (name_only, Reference::parse(query)) {
        let tags: Vec<_> = store
            .list()?
            .into_iter()
            .filter_map(|t| Some((t.reference?, t.descriptor)))
            .filter(|(r, _)| r.digest.is_none() && r.name() == asked.name())
            .map(|(r, d)| (Some(r), d))
            .collect();
        if !tags.is_empty() {
            return Ok(tags);
        }
    }
    if let Ok(reference) = Reference::parse(query) {
        if let Some(descriptor) = store.resolve_with_digests(&reference)? {
            // NAME@DIGEST is no tag: the image goes unnamed, as docker
            // names no archive entry by a digest reference.
            let name = reference.digest.is_none().then_some(reference);
            return Ok(vec![(name, descriptor)]);
        }
    }
    // An id (or a manifest digest): the image, unnamed.
    let found = store.find(query, platform)?;
    Ok(found
        .into_iter()
        .next()
        .map(|t| (None, t.descriptor))
        .into_iter()
        .collect())
}

/// `kiln load`: the archive's images into the store, and their names.
fn load(store: &Store, input: &Path, progress: &ProgressArgs) -> anyhow::Result<ExitCode> {
    let reporter = progress.reporter();
    let loaded = archive::load(store, input, &reporter)?;
    for l in loaded {
        if l.references.is_empty() {
            // Docker's image id: the config digest (an index's own digest
            // for a multi-platform image, as `kiln images` shows it).
            let id = match store.read_manifest(&l.manifest)? {
                ManifestKind::Image(manifest) => manifest.config.digest,
                ManifestKind::Index(_) => l.manifest.digest.clone(),
            };
            println!("Loaded image ID: {id}");
        }
        for r in l.references {
            println!("Loaded image: {}", r.familiar());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln import`: a one-layer image from a root filesystem tar, tagged;
/// prints its id.
fn import(store: &Store, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let reference = Reference::parse_tag(&args.reference)?;
    let reporter = args.progress.reporter();
    let mut options = import_options(&args)?;
    let rootfs = &args.rootfs;
    let _lease = store.lease()?;
    let desc = if rootfs.as_os_str() == "-" {
        options.source = "-".into();
        import_rootfs(store, std::io::stdin(), &options, &reporter)?
    } else {
        let file =
            std::fs::File::open(rootfs).with_context(|| format!("opening {}", rootfs.display()))?;
        options.size = file.metadata().ok().map(|m| m.len());
        import_rootfs(store, file, &options, &reporter)?
    };
    store.tag(&reference, &desc)?;
    let image = store.read_image(&desc, &options.platform)?;
    println!("{}", image.id());
    Ok(ExitCode::SUCCESS)
}

/// The import's config (`--change` applied), creation time
/// (`SOURCE_DATE_EPOCH`), platform and compression.
fn import_options(args: &ImportArgs) -> anyhow::Result<ImportOptions> {
    let mut options = ImportOptions::new(args.rootfs.display().to_string());
    options.config = kiln_builder::changes::apply_changes(Default::default(), &args.change)?;
    if let Some(epoch) = crate::settings::source_date_epoch()? {
        options.created = epoch;
    }
    options.platform = platform(&args.platform)?;
    options.compression = match args.compression {
        LayerCompression::Gzip => Compression::Gzip,
        LayerCompression::Zstd => Compression::Zstd,
        LayerCompression::None => Compression::None,
    };
    Ok(options)
}

pub(crate) fn ago(created: Option<&str>) -> String {
    let Some(secs) = created.and_then(parse_rfc3339) else {
        return "N/A".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let d = (now - secs).max(0);
    let (n, unit) = match d {
        0..=59 => (d, "second"),
        60..=3599 => (d / 60, "minute"),
        3600..=86_399 => (d / 3600, "hour"),
        86_400..=1_209_599 => (d / 86_400, "day"),
        1_209_600..=5_183_999 => (d / 604_800, "week"),
        5_184_000..=31_535_999 => (d / 2_592_000, "month"),
        _ => (d / 31_536_000, "year"),
    };
    if n == 1 {
        format!("1 {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}

/// One row of `kiln images`: a tag, the image it shows (this machine's
/// platform when held, else the first held), and every platform entry.
struct Row {
    repository: String,
    tag: String,
    tagged: TaggedImage,
    image: Option<Image>,
    entries: Vec<PlatformEntry>,
}

impl Row {
    fn of(store: &Store, tagged: TaggedImage) -> Row {
        let (repository, tag) = match &tagged.reference {
            Some(r) => (
                r.familiar_name(),
                r.tag.clone().unwrap_or_else(|| "<none>".into()),
            ),
            None => ("<none>".to_string(), "<none>".to_string()),
        };
        let image = store
            .read_image_or_held(&tagged.descriptor, &Platform::host())
            .inspect_err(|e| tracing::warn!(image = %tagged.name, error = %e, "cannot read image"))
            .ok();
        let entries = store
            .platform_entries(&tagged.descriptor)
            .unwrap_or_default();
        Row {
            repository,
            tag,
            tagged,
            image,
            entries,
        }
    }

    fn is_index(&self) -> bool {
        kiln_layers::media::is_index(&self.tagged.descriptor.media_type)
    }

    /// The image id: the config digest, or for a multi-platform image the
    /// index digest (as Docker's containerd image store shows it).
    fn id(&self) -> &kiln_layers::Digest {
        match &self.image {
            Some(image) if !self.is_index() => image.id(),
            _ => &self.tagged.descriptor.digest,
        }
    }

    /// What the store holds of it: the blobs of every held platform, each
    /// counted once.
    fn size(&self, store: &Store) -> Option<u64> {
        let mut blobs = std::collections::BTreeMap::new();
        for entry in self.entries.iter().filter(|e| e.present) {
            if let Ok(ManifestKind::Image(m)) = store.read_manifest(&entry.descriptor) {
                for blob in std::iter::once(&m.config).chain(&m.layers) {
                    blobs.insert(blob.digest.clone(), blob.size);
                }
            }
        }
        (!blobs.is_empty()).then(|| blobs.values().sum())
    }

    /// The platforms, a platform the store lacks in parentheses
    /// (`linux/amd64,(linux/arm64)`); attestations left out.
    fn platforms(&self) -> String {
        let shown: Vec<String> = self
            .entries
            .iter()
            .filter(|e| e.kind != EntryKind::Attestation)
            .map(|e| match e.present {
                true => e.label(),
                false => format!("({})", e.label()),
            })
            .collect();
        if shown.is_empty() {
            "-".into()
        } else {
            shown.join(",")
        }
    }

    fn json(&self, store: &Store) -> serde_json::Value {
        let platforms: Vec<_> = self
            .entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "Platform": e.platform.as_ref().map(|p| p.to_string()),
                    "Kind": entry_kind(&e.kind),
                    "Digest": e.descriptor.digest,
                    "MediaType": e.descriptor.media_type,
                    "Present": e.present,
                })
            })
            .collect();
        serde_json::json!({
            "Name": self.tagged.name,
            "Repository": self.repository,
            "Tag": self.tag,
            "ID": self.image.as_ref().map(|_| self.id().to_string()),
            "Digest": self.tagged.descriptor.digest,
            "MediaType": self.tagged.descriptor.media_type,
            "Created": self.image.as_ref().and_then(|i| i.config.created.clone()),
            "Size": self.size(store),
            "Platforms": platforms,
        })
    }

    fn cells(&self, store: &Store) -> [String; 6] {
        let (created, size) = match &self.image {
            Some(i) => (
                ago(i.config.created.as_deref()),
                self.size(store).map_or("N/A".into(), human_bytes),
            ),
            None => ("N/A".into(), "N/A".into()),
        };
        [
            self.repository.clone(),
            self.tag.clone(),
            self.id().short().to_string(),
            created,
            size,
            self.platforms(),
        ]
    }
}

fn entry_kind(kind: &EntryKind) -> &'static str {
    match kind {
        EntryKind::Image => "image",
        EntryKind::Attestation => "attestation",
        EntryKind::Index => "index",
        EntryKind::Other => "other",
    }
}

fn images(store: &Store, quiet: bool, format: ListFormat) -> anyhow::Result<ExitCode> {
    let rows: Vec<Row> = store
        .list()?
        .into_iter()
        .map(|t| Row::of(store, t))
        .collect();
    let mut stdout = std::io::stdout().lock();
    if quiet {
        for row in &rows {
            writeln!(stdout, "{}", row.id().short())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let ListFormat::Json = format {
        let list: Vec<_> = rows.iter().map(|r| r.json(store)).collect();
        serde_json::to_writer_pretty(&mut stdout, &list)?;
        writeln!(stdout)?;
        return Ok(ExitCode::SUCCESS);
    }
    let table: Vec<[String; 6]> = rows.iter().map(|r| r.cells(store)).collect();
    let header = [
        "REPOSITORY",
        "TAG",
        "IMAGE ID",
        "CREATED",
        "SIZE",
        "PLATFORMS",
    ];
    let mut widths = header.map(str::len);
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i == cells.len() - 1 {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}   "));
            }
        }
        s
    };
    writeln!(stdout, "{}", line(header))?;
    for row in &table {
        writeln!(
            stdout,
            "{}",
            line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]])
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln inspect` of one image: its manifest and config (of the platform
/// asked for, else this machine's when held, else the first held), and
/// for a multi-platform image the index and every platform entry.
fn inspect(
    store: &Store,
    query: &str,
    platform: Option<&Platform>,
) -> anyhow::Result<serde_json::Value> {
    let found = store.find(query, platform.unwrap_or(&Platform::host()))?;
    let Some(first) = found.first() else {
        bail!("image {query} not found");
    };
    let image = match platform {
        Some(p) => store.read_image_for(&first.descriptor, p, query)?,
        None => store.read_image_or_held(&first.descriptor, &Platform::host())?,
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&store.read_blob(&image.manifest_descriptor.digest)?)?;
    let config: serde_json::Value = serde_json::from_slice(&store.read_blob(image.id())?)?;
    let tags: Vec<String> = found
        .iter()
        .filter_map(|t| t.reference.as_ref().map(|r| r.familiar()))
        .collect();
    let mut out = serde_json::json!({
        "Id": image.id(),
        "RepoTags": tags,
        "Digest": image.manifest_descriptor.digest,
        "MediaType": image.manifest_descriptor.media_type,
        "Created": image.config.created,
        "Architecture": image.config.architecture,
        "Os": image.config.os,
        "Variant": image.config.variant,
        "Size": image.content_size(),
        "Manifest": manifest,
        // Docker's `Config` is the image config's `config` (Cmd, Env, …);
        // the whole config document is kiln's `ImageConfig`.
        "Config": config.get("config").cloned().unwrap_or_else(|| serde_json::json!({})),
        "RootFS": {
            "Type": "layers",
            "Layers": image.config.rootfs.diff_ids,
        },
        "ImageConfig": config,
    });
    if let Some(author) = &image.config.author {
        out["Author"] = serde_json::json!(author);
    }
    let top = &first.descriptor;
    if kiln_layers::media::is_index(&top.media_type) {
        let row = Row::of(store, first.clone());
        let index: serde_json::Value = serde_json::from_slice(&store.read_blob(&top.digest)?)?;
        out["Index"] = serde_json::json!({
            "Digest": top.digest,
            "MediaType": top.media_type,
            "Manifest": index,
        });
        out["Platforms"] = row.json(store)["Platforms"].take();
    }
    Ok(out)
}

/// The image an entry names, as `kiln rmi` tells images apart: an image
/// manifest by its image config, an index by its images' configs (its
/// attestation manifests left out), so that a tag and the canonical name
/// of the same image as pushed, its layers compressed, are one image;
/// anything else (an artifact, whose empty config many share; a manifest
/// the store lacks) by its manifest's digest.
fn image_key(store: &Store, desc: &kiln_layers::Descriptor) -> Vec<kiln_layers::Digest> {
    let config_of = |desc: &kiln_layers::Descriptor| match store.read_manifest(desc) {
        Ok(kiln_layers::ManifestKind::Image(manifest))
            if [
                kiln_layers::media::OCI_CONFIG,
                kiln_layers::media::DOCKER_CONFIG,
            ]
            .contains(&manifest.config.media_type.as_str()) =>
        {
            Some(manifest.config.digest)
        }
        _ => None,
    };
    let keys = match store.read_manifest(desc) {
        Ok(kiln_layers::ManifestKind::Index(index)) => {
            let images = index.manifests.iter().filter(|entry| {
                !entry
                    .annotations
                    .contains_key(kiln_layers::oci::ANNOTATION_REFERENCE_TYPE)
            });
            let mut configs: Option<Vec<_>> = images.map(config_of).collect();
            if let Some(configs) = &mut configs {
                configs.sort();
            }
            configs.filter(|c| !c.is_empty())
        }
        _ => config_of(desc).map(|config| vec![config]),
    };
    keys.unwrap_or_else(|| vec![desc.digest.clone()])
}

/// After the tag `removed` of the image `key` ([`image_key`]) was taken
/// away: its repository's digest names of that image (`repo@digest`, a
/// build's `name-canonical=true`) go too when no other tag of the
/// repository names it, as docker untags an image's repository digests
/// with its last tag. Returns the names removed.
fn remove_canonical_names(
    store: &Store,
    removed: &Reference,
    key: &[kiln_layers::Digest],
) -> anyhow::Result<Vec<Reference>> {
    let repository = removed.name();
    let same = |t: &TaggedImage| {
        t.reference.as_ref().map(Reference::name).as_ref() == Some(&repository)
            && image_key(store, &t.descriptor) == key
    };
    let listed: Vec<TaggedImage> = store.list()?.into_iter().filter(same).collect();
    if (listed.iter()).any(|t| t.reference.as_ref().is_some_and(|r| r.tag.is_some())) {
        return Ok(Vec::new());
    }
    let mut gone = Vec::new();
    for reference in listed.iter().filter_map(|t| t.reference.as_ref()) {
        if let Some((_, blobs)) = store.remove_image(reference)? {
            println!("Untagged: {}", reference.familiar());
            for d in blobs {
                println!("Deleted: {d}");
            }
            gone.push(reference.clone());
        }
    }
    Ok(gone)
}

/// Whether removing by id needs `--force`: as docker's, unless the
/// image's names are of one repository with at most one tag (a tag and its
/// canonical names, or an untagged record).
fn needs_force(found: &[TaggedImage]) -> bool {
    let names: Vec<&Reference> = found.iter().filter_map(|t| t.reference.as_ref()).collect();
    let repositories: std::collections::BTreeSet<String> = names.iter().map(|r| r.name()).collect();
    let tags = names.iter().filter(|r| r.tag.is_some()).count();
    found.len() > 1 && (repositories.len() > 1 || tags > 1)
}

fn rmi(store: &Store, queries: &[String], force: bool) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for query in queries {
        let result = (|| -> anyhow::Result<()> {
            let found: Vec<TaggedImage> = store.find(query, &Platform::host())?;
            let by_reference = Reference::parse(query)
                .ok()
                .filter(|r| found.len() == 1 && found[0].reference.as_ref() == Some(r));
            if by_reference.is_none() && needs_force(&found) && !force {
                bail!(
                    "{query} is referenced by {} tags ({}); remove them by name or use --force",
                    found.len(),
                    found
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            // Names an earlier removal took with it, and manifests removed
            // with every entry naming them.
            let mut gone: Vec<Reference> = Vec::new();
            let mut removed_manifests = Vec::new();
            // Read before anything is removed: a removal may take the
            // manifests they are read from.
            let keys: Vec<_> = (found.iter())
                .map(|t| image_key(store, &t.descriptor))
                .collect();
            for (tagged, key) in found.into_iter().zip(keys) {
                if tagged.reference.as_ref().is_some_and(|r| gone.contains(r)) {
                    continue;
                }
                if removed_manifests.contains(&tagged.descriptor.digest) {
                    // Removed with the untagged record of its manifest.
                    if let Some(r) = &tagged.reference {
                        println!("Untagged: {}", r.familiar());
                        if r.digest.is_none() {
                            gone.extend(remove_canonical_names(store, r, &key)?);
                        }
                    }
                    continue;
                }
                let removed = match &tagged.reference {
                    Some(r) => match store.remove_image(r)? {
                        Some(removed) => Some(removed),
                        // Found by a digest of its repository: not a name
                        // of its own to take away.
                        None => bail!(
                            "{r} names nothing in the store itself (a tag of its repository \
                             names that digest); remove the image by its tag or id"
                        ),
                    },
                    None => {
                        removed_manifests.push(tagged.descriptor.digest.clone());
                        store.remove_image_digest(&tagged.descriptor.digest)?
                    }
                };
                if let Some(r) = &tagged.reference {
                    println!("Untagged: {}", r.familiar());
                }
                if let Some((_, blobs)) = removed {
                    for d in blobs {
                        println!("Deleted: {d}");
                    }
                }
                if let Some(r) = tagged.reference.as_ref().filter(|r| r.digest.is_none()) {
                    gone.extend(remove_canonical_names(store, r, &key)?);
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            eprintln!("error: {e:#}");
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
