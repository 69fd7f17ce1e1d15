//! Blobs by descriptor, with no image around them: one fetched into the
//! store from a repository (a layer of a build cache, taken when a build
//! needs it), or a list pushed from the store followed by the manifest
//! that names them (a build cache artifact, whose manifest is no image's
//! and may be an index of blobs). Both go through the same machinery as a
//! pull and a push: resumed, verified downloads; skipped, mounted or
//! uploaded blobs.
//!
//! And images whose layers the store lacks: [`pull_lazily`] stores an
//! image's manifest and config and notes where its layers are
//! ([`BlobOrigins`]) without fetching them (what a build does with its
//! base images: a build whose steps are all cached needs none of their
//! content); [`fetch_from_origins`] and [`fetch_missing`] fetch such
//! layers when something needs them (a run, a save, a build step).

use std::sync::Arc;

use bytes::Bytes;
use kiln_layers::oci::Descriptor;
use kiln_layers::store::Image;
use kiln_layers::{Platform, Reporter, Store};
use kiln_registry::{Client, Reference, Repository};

use crate::pull::{check_media_types, fetch_blob as fetch_one, resolve_manifest, PullRun};
use crate::push::{push_blob_list, read_manifest, PushRun};
use crate::BlobOrigins;
use crate::{PushOptions, Pushed, TransferError};

/// Fetches `blob` from `repository` into the store unless it is there
/// (continuing what a killed fetch left; verified before it gets its
/// name). `what` names what the blob belongs to, in messages. Returns the
/// bytes downloaded.
pub async fn fetch_blob(
    client: &Arc<Client>,
    store: &Store,
    repository: &Repository,
    what: &str,
    blob: &Descriptor,
    reporter: Arc<dyn Reporter>,
) -> Result<u64, TransferError> {
    let _lease = store.lease().map_err(|source| TransferError::Store {
        context: format!("{what}: fetching {}", blob.digest),
        cause: Box::new(source),
    })?;
    let run = PullRun {
        client: client.clone(),
        store: store.clone(),
        repository: repository.clone(),
        image: what.to_string(),
        manifest_digest: what.to_string(),
        reporter,
    };
    Ok(fetch_one(&run, "layer", blob).await?.unwrap_or(0))
}

/// Pushes `blobs` from the store to `target`'s repository (each skipped
/// when the registry has it, mounted when it can be, else uploaded), then
/// the manifest or index `manifest` (stored bytes, unchanged) under
/// `target`'s tag.
pub async fn push_artifact(
    client: &Arc<Client>,
    store: &Store,
    target: &Reference,
    manifest: &Descriptor,
    blobs: &[Descriptor],
    options: &PushOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<Pushed, TransferError> {
    let image = target.to_string();
    let _lease = store.lease().map_err(|source| TransferError::Store {
        context: format!("pushing {image}"),
        cause: Box::new(source),
    })?;
    let run = PushRun {
        client,
        store,
        target,
        options,
        reporter: &reporter,
        image,
    };
    let mut pushed = Pushed {
        reference: target.clone(),
        digest: manifest.digest.clone(),
        size: manifest.size,
        blobs_uploaded: 0,
        blobs_mounted: 0,
        blobs_skipped: 0,
    };
    let list = blobs.iter().map(|b| ("blob", b.clone())).collect();
    push_blob_list(&run, list, &mut pushed).await?;
    let bytes = read_manifest(&run, manifest)?;
    let tag = target.tag.clone().unwrap_or_else(|| "latest".to_string());
    client
        .put_manifest(
            &target.repository,
            &tag,
            &manifest.media_type,
            Bytes::from(bytes),
        )
        .await?;
    Ok(pushed)
}

/// Fetches `blob`, which the store lacks, from a repository it is known
/// to be in ([`BlobOrigins`]: where it was pulled from or pushed to, or
/// where a build cache had it), the latest first.
pub async fn fetch_from_origins(
    client: &Arc<Client>,
    store: &Store,
    blob: &Descriptor,
    reporter: Arc<dyn Reporter>,
) -> Result<u64, TransferError> {
    let mut last_error = None;
    for repository in BlobOrigins::new(store).lookup(&blob.digest).iter().rev() {
        let what = repository.to_string();
        match fetch_blob(client, store, repository, &what, blob, reporter.clone()).await {
            Ok(bytes) => return Ok(bytes),
            Err(err) => last_error = Some(err),
        }
    }
    Err(
        last_error.unwrap_or_else(|| TransferError::IncompleteImage {
            image: "the store".into(),
            digest: blob.digest.to_string(),
        }),
    )
}

/// Fetches every layer of `image` that the store lacks from where it is
/// known to be; returns how many were fetched.
pub async fn fetch_missing(
    client: &Arc<Client>,
    store: &Store,
    image: &Image,
    reporter: Arc<dyn Reporter>,
) -> Result<usize, TransferError> {
    let mut fetched = 0;
    for layer in &image.manifest.layers {
        if !store.has_blob(&layer.digest) {
            fetch_from_origins(client, store, layer, reporter.clone()).await?;
            fetched += 1;
        }
    }
    Ok(fetched)
}

/// Pulls `reference` for `platform` without its layers: the manifests and
/// the config are stored (verified), the image tagged, and each layer's
/// repository noted so that it is fetched when needed
/// ([`fetch_from_origins`]) or mounted by a push to the same registry.
/// Returns the image manifest's descriptor.
pub async fn pull_lazily(
    client: &Arc<Client>,
    store: &Store,
    reference: &Reference,
    platform: &Platform,
    reporter: Arc<dyn Reporter>,
) -> Result<Descriptor, TransferError> {
    let image = reference.to_string();
    let store_err = |context: String| {
        move |source| TransferError::Store {
            context,
            cause: Box::new(source),
        }
    };
    let _lease = store
        .lease()
        .map_err(store_err(format!("pulling {image}")))?;
    let resolved = resolve_manifest(client, reference, platform, |media_type, fetched| {
        store
            .put_blob(media_type, &fetched.bytes)
            .map(|_| ())
            .map_err(store_err(format!(
                "{image}: storing manifest {}",
                fetched.digest
            )))
    })
    .await?;
    let mut manifest_desc = resolved.manifest_descriptor;
    let manifest = resolved.manifest;
    check_media_types(&manifest, &image, manifest_desc.digest.as_str())?;
    let run = PullRun {
        client: client.clone(),
        store: store.clone(),
        repository: reference.repository.clone(),
        image: image.clone(),
        manifest_digest: manifest_desc.digest.to_string(),
        reporter,
    };
    fetch_one(&run, "config", &manifest.config).await?;
    let origins = BlobOrigins::new(store);
    for layer in &manifest.layers {
        origins.record(&layer.digest, &reference.repository);
    }
    if manifest_desc.platform.is_none() {
        manifest_desc.platform = store
            .read_config(&manifest.config)
            .ok()
            .map(|config| config.platform());
    }
    store
        .tag(reference, &manifest_desc)
        .map_err(store_err(format!("tagging {image}")))?;
    Ok(manifest_desc)
}
