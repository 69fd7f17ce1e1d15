//! An image's config without its layers: what `kiln explain` needs of a
//! base image that is not in the store.

use kiln_layers::oci::{Descriptor, ImageConfig};
use kiln_layers::store::MAX_JSON_BLOB;
use kiln_layers::{Digest, Platform};
use kiln_registry::{Client, Reference};

use crate::pull::{check_config_media_type, resolve_manifest, Resolved};
use crate::TransferError;

/// What [`fetch_config`] found.
#[derive(Debug, Clone)]
pub struct FetchedConfig {
    pub reference: Reference,
    /// The digest the reference resolved to at the registry (an index's,
    /// for multi-platform images).
    pub resolved_digest: Digest,
    /// The platform's image manifest (its platform from the index, or else
    /// from the config).
    pub manifest: Descriptor,
    /// The config blob's descriptor, as the manifest lists it.
    pub config_descriptor: Descriptor,
    pub config: ImageConfig,
}

/// Fetches the config of `reference` for `platform`: the manifest (through
/// indexes, as [`pull`](crate::pull) selects), then the config blob, whose
/// size and sha256 are checked against the manifest. No layer is requested
/// and nothing is stored (the caller may have no store, and a later pull
/// fetches the two small blobs again).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use kiln_layers::Platform;
/// use kiln_registry::{Client, ClientConfig, Reference};
/// let client = Client::new(ClientConfig::default())?;
/// let image = Reference::parse("localhost:5000/base:1")?;
/// let fetched = kiln_transfer::fetch_config(&client, &image, &Platform::host()).await?;
/// println!("{} is for {}", fetched.manifest.digest, fetched.config.architecture);
/// # Ok(()) }
/// ```
pub async fn fetch_config(
    client: &Client,
    reference: &Reference,
    platform: &Platform,
) -> Result<FetchedConfig, TransferError> {
    let image = reference.to_string();
    let Resolved {
        resolved_digest,
        manifest,
        manifest_descriptor: mut manifest_desc,
    } = resolve_manifest(client, reference, platform, |_, _| Ok(())).await?;
    let manifest_digest = manifest_desc.digest.to_string();
    check_config_media_type(&manifest, &image, &manifest_digest)?;
    let desc = &manifest.config;
    if desc.size > MAX_JSON_BLOB {
        return Err(TransferError::MalformedConfig {
            image,
            digest: desc.digest.to_string(),
            reason: format!(
                "the manifest says it is {} bytes; configs over {MAX_JSON_BLOB} are refused",
                desc.size
            ),
        });
    }
    let mut bytes = Vec::with_capacity(desc.size as usize);
    // The client checks the size and the sha256 before returning.
    client
        .fetch_blob(
            &reference.repository,
            &desc.digest,
            Some(desc.size),
            &mut bytes,
        )
        .await
        .map_err(|err| match err {
            kiln_registry::Error::NotFound { registry, .. } => TransferError::MissingBlob {
                image: image.clone(),
                manifest: manifest_digest.clone(),
                role: "config",
                digest: desc.digest.to_string(),
                registry,
            },
            other => TransferError::Registry(other),
        })?;
    let config: ImageConfig =
        serde_json::from_slice(&bytes).map_err(|e| TransferError::MalformedConfig {
            image: image.clone(),
            digest: desc.digest.to_string(),
            reason: e.to_string(),
        })?;
    if manifest_desc.platform.is_none() {
        manifest_desc.platform = Some(config.platform());
    }
    Ok(FetchedConfig {
        reference: reference.clone(),
        resolved_digest,
        manifest: manifest_desc,
        config_descriptor: desc.clone(),
        config,
    })
}
