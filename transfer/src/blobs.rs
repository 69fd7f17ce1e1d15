//! Blobs by descriptor, with no image around them: one fetched into the
//! store from a repository (a layer of a build cache, taken when a build
//! needs it), or a list pushed from the store followed by the manifest
//! that names them (a build cache artifact, whose manifest is no image's
//! and may be an index of blobs). Both go through the same machinery as a
//! pull and a push: resumed, verified downloads; skipped, mounted or
//! uploaded blobs.

use std::sync::Arc;

use bytes::Bytes;
use kiln_layers::oci::Descriptor;
use kiln_layers::{Reporter, Store};
use kiln_registry::{Client, Reference, Repository};

use crate::pull::{fetch_blob as fetch_one, PullRun};
use crate::push::{push_blob_list, read_manifest, PushRun};
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
