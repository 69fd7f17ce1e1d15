//! Whole indexes: pulling every platform of one (`kiln pull --platform
//! all`), and gathering an index from images already in registries
//! (`kiln manifest create`).

use std::collections::VecDeque;

use kiln_layers::index::{IndexSources, IndexWriter};
use kiln_layers::oci::{media, Descriptor, ImageConfig, Manifest, ManifestKind};
use kiln_layers::store::MAX_JSON_BLOB;
use kiln_layers::Store;
use kiln_registry::{Client, Reference};

use crate::pull::{parse_document, store_document, Chosen, MAX_INDEX_DEPTH};
use crate::{BlobOrigins, TransferError};

/// The manifest `reference` names and, when it is an index, every image
/// manifest it lists (nested indexes followed, at most
/// [`MAX_INDEX_DEPTH`] deep), each stored as it came. Entries of a media
/// type that is neither a manifest nor an index (artifacts kiln does not
/// know) are kept in the index but not fetched.
pub(crate) async fn resolve_all(
    client: &Client,
    store: &Store,
    reference: &Reference,
) -> Result<Chosen, TransferError> {
    let image = reference.to_string();
    let top = client.fetch_manifest(reference).await?;
    let (media_type, kind) = parse_document(&image, &top)?;
    let top_desc = store_document(store, &image, &media_type, &top)?;
    let index = match kind {
        ManifestKind::Image(manifest) => {
            return Ok(Chosen {
                resolved_digest: top.digest,
                top: None,
                images: vec![(top_desc, manifest)],
            })
        }
        ManifestKind::Index(index) => index,
    };
    let mut images = Vec::new();
    let mut queue: VecDeque<_> = index.manifests.into_iter().map(|d| (d, 1)).collect();
    while let Some((entry, depth)) = queue.pop_front() {
        if depth > MAX_INDEX_DEPTH {
            return Err(TransferError::NestingTooDeep {
                image,
                limit: MAX_INDEX_DEPTH,
            });
        }
        if !media::is_manifest(&entry.media_type) && !media::is_index(&entry.media_type) {
            tracing::warn!(
                image = %image,
                digest = %entry.digest,
                media_type = %entry.media_type,
                "index entry of an unknown media type: listed, not fetched"
            );
            continue;
        }
        let fetched = client
            .fetch_manifest(&reference.with_digest(entry.digest.clone()))
            .await?;
        let (media_type, kind) = parse_document(&image, &fetched)?;
        store_document(store, &image, &media_type, &fetched)?;
        match kind {
            ManifestKind::Image(manifest) => images.push((entry, manifest)),
            ManifestKind::Index(nested) => {
                queue.extend(nested.manifests.into_iter().map(|d| (d, depth + 1)))
            }
        }
    }
    Ok(Chosen {
        resolved_digest: top.digest,
        top: Some(top_desc),
        images,
    })
}

/// What [`create_index`] made.
#[derive(Debug, Clone)]
pub struct CreatedIndex {
    /// The index, stored and tagged.
    pub descriptor: Descriptor,
    /// Its entries, in order.
    pub entries: Vec<Descriptor>,
}

/// Gathers an index over `sources` as their registries have them (`kiln
/// manifest create`, as `docker manifest create` and `docker buildx
/// imagetools create` read them): an image manifest becomes one entry,
/// its platform from its config; an index gives each of its entries as it
/// lists them (platform and annotations kept). An entry already gathered
/// (the same digest) is not repeated. The index is a Docker manifest list
/// when every entry is a Docker manifest, else an OCI image index.
///
/// With `base` (`--amend`: the stored index `target` names), the new
/// index starts from its entries, as listed; a source given again
/// replaces the entries it gave before, in their place (as `docker
/// manifest create --amend` replaces the file it keeps for that source;
/// docker orders a list by those files' names), and the entries
/// of other sources, or of no known source (an index built or pulled),
/// stay. Which source gave which entry is kept with the index's name
/// ([`IndexSources`]).
///
/// The index, each manifest and each image's config are stored; the
/// layers stay in the registries, and where each blob is is noted
/// ([`BlobOrigins`]) so that a push mounts them (same registry) or copies
/// them (another one). The index is tagged `target`.
pub async fn create_index(
    client: &Client,
    store: &Store,
    target: &Reference,
    sources: &[Reference],
    base: Option<&Descriptor>,
) -> Result<CreatedIndex, TransferError> {
    let store_error = |source| TransferError::Store {
        context: format!("creating {target}"),
        cause: Box::new(source),
    };
    let _lease = store.lease().map_err(store_error)?;
    let name = target.to_string();
    let mut entries: Vec<Gathered> = match base {
        Some(base) => base_entries(store, &name, base).map_err(store_error)?,
        None => Vec::new(),
    };
    for source in sources {
        let source_name = source.to_string();
        let gave = |e: &Gathered| e.source.as_deref() == Some(source_name.as_str());
        // A source given again: its new entries take its old ones' place.
        let mut at = entries.iter().position(gave).unwrap_or(entries.len());
        entries.retain(|e| !gave(e));
        for (entry, from_index) in gather_source(client, store, source).await? {
            if !entries.iter().any(|e| e.entry.digest == entry.digest) {
                let gathered = Gathered {
                    entry,
                    from_index,
                    source: Some(source_name.clone()),
                };
                entries.insert(at, gathered);
                at += 1;
            }
        }
    }
    let docker = entries
        .iter()
        .all(|e| e.entry.media_type == media::DOCKER_MANIFEST);
    let mut writer = IndexWriter::new(docker);
    for gathered in &entries {
        match (gathered.from_index, &gathered.entry.platform) {
            (false, Some(platform)) => writer.add_image(&gathered.entry, platform),
            _ => writer.add_entry(gathered.entry.clone()),
        }
    }
    let descriptor = writer.write(store).map_err(store_error)?;
    IndexSources {
        index: descriptor.digest.clone(),
        entries: entries
            .iter()
            .filter_map(|e| Some((e.entry.digest.clone(), e.source.clone()?)))
            .collect(),
    }
    .write(store, &name)
    .map_err(store_error)?;
    store.tag(target, &descriptor).map_err(store_error)?;
    Ok(CreatedIndex {
        descriptor,
        entries: writer.entries().to_vec(),
    })
}

/// One entry of the index being gathered.
struct Gathered {
    entry: Descriptor,
    /// Listed by an index (kept as listed), or an image manifest (its
    /// platform from its config).
    from_index: bool,
    /// The source reference it was gathered from, when known.
    source: Option<String>,
}

/// The entries of the stored index `base` (named `name`), as listed, each
/// with the source it was gathered from where the name's record knows it.
fn base_entries(
    store: &Store,
    name: &str,
    base: &Descriptor,
) -> Result<Vec<Gathered>, kiln_layers::Error> {
    let ManifestKind::Index(index) = store.read_manifest(base)? else {
        return Err(kiln_layers::Error::InvalidManifest {
            what: format!("{name} ({})", base.digest),
            reason: "an image manifest, not an index: --amend adds to an index".into(),
        });
    };
    let record = IndexSources::read(store, name, &base.digest)?;
    Ok(index
        .manifests
        .into_iter()
        .map(|entry| Gathered {
            source: record
                .as_ref()
                .and_then(|r| r.source_of(&entry.digest))
                .map(str::to_string),
            entry,
            from_index: true,
        })
        .collect())
}

/// One source's entries, each with whether it came from an index (kept
/// as listed) or is an image manifest (its platform from its config).
async fn gather_source(
    client: &Client,
    store: &Store,
    source: &Reference,
) -> Result<Vec<(Descriptor, bool)>, TransferError> {
    let image = source.to_string();
    let fetched = client.fetch_manifest(source).await?;
    let (media_type, kind) = parse_document(&image, &fetched)?;
    let desc = store_document(store, &image, &media_type, &fetched)?;
    match kind {
        ManifestKind::Image(manifest) => {
            let config = keep_manifest(client, store, source, &desc, &manifest).await?;
            let mut entry = desc;
            entry.platform = Some(config.platform().normalized());
            Ok(vec![(entry, false)])
        }
        ManifestKind::Index(index) => {
            let mut out = Vec::new();
            for entry in index.manifests {
                if !media::is_manifest(&entry.media_type) {
                    return Err(TransferError::MalformedManifest {
                        image: image.clone(),
                        digest: fetched.digest.to_string(),
                        cause: Box::new(kiln_layers::Error::InvalidManifest {
                            what: format!("entry {}", entry.digest),
                            reason: format!(
                                "{} is not an image manifest (nested indexes are not gathered)",
                                entry.media_type
                            ),
                        }),
                    });
                }
                let child = client
                    .fetch_manifest(&source.with_digest(entry.digest.clone()))
                    .await?;
                let (child_type, child_kind) = parse_document(&image, &child)?;
                let child_desc = store_document(store, &image, &child_type, &child)?;
                if let ManifestKind::Image(manifest) = child_kind {
                    keep_manifest(client, store, source, &child_desc, &manifest).await?;
                }
                out.push((entry, true));
            }
            Ok(out)
        }
    }
}

/// Stores an image manifest's config (fetched, size and digest checked)
/// and notes where its config and layers are; returns the config.
async fn keep_manifest(
    client: &Client,
    store: &Store,
    source: &Reference,
    desc: &Descriptor,
    manifest: &Manifest,
) -> Result<ImageConfig, TransferError> {
    let image = source.to_string();
    let config = &manifest.config;
    if config.size > MAX_JSON_BLOB {
        return Err(TransferError::MalformedConfig {
            image,
            digest: config.digest.to_string(),
            reason: format!(
                "{} bytes; configs over {MAX_JSON_BLOB} are refused",
                config.size
            ),
        });
    }
    let mut bytes = Vec::with_capacity(config.size as usize);
    client
        .fetch_blob(
            &source.repository,
            &config.digest,
            Some(config.size),
            &mut bytes,
        )
        .await?;
    store
        .put_blob(&config.media_type, &bytes)
        .map_err(|source| TransferError::Store {
            context: format!(
                "{image}: storing config {} of {}",
                config.digest, desc.digest
            ),
            cause: Box::new(source),
        })?;
    let origins = BlobOrigins::new(store);
    for blob in std::iter::once(config).chain(&manifest.layers) {
        origins.record(&blob.digest, &source.repository);
    }
    serde_json::from_slice(&bytes).map_err(|e| TransferError::MalformedConfig {
        image,
        digest: config.digest.to_string(),
        reason: e.to_string(),
    })
}
