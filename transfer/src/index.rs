//! Whole indexes: pulling every platform of one (`kiln pull --platform
//! all`), and gathering an index from images already in registries
//! (`kiln manifest create`).

use std::collections::VecDeque;

use kiln_layers::oci::{media, ManifestKind};
use kiln_layers::Store;
use kiln_registry::{Client, Reference};

use crate::pull::{parse_document, store_document, Chosen, MAX_INDEX_DEPTH};
use crate::TransferError;

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
