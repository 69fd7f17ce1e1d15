//! A cache in a registry (`type=registry`), and inline caches in images
//! there: what an export pushes (the artifact's blobs, each skipped when
//! the repository has it or mounted when another repository of the
//! registry does, then its manifest under the tag), and what an import
//! reads (the manifest; then the cache config, or an image's config with
//! kiln's inline cache). A layer is fetched only when the build needs it,
//! through the same verified, resumable download as a pull; where it came
//! from is noted, so that pushing it elsewhere in the registry mounts it.

use std::sync::Arc;

use kiln_builder::cache::format::{CacheConfig, INLINE_KEY};
use kiln_builder::cache::{
    BlobProvider, CacheExport, CacheExporter, CacheSource, CachedStep, StepsByKey,
};
use kiln_builder::session::RemoteError;
use kiln_layers::oci::{media, parse_manifest, Descriptor, ImageConfig, Manifest, ManifestKind};
use kiln_layers::store::MAX_JSON_BLOB;
use kiln_layers::{Digest, Platform, Reporter, Store};
use kiln_registry::{Client, Reference};

use crate::artifact::{self, cache_config_of};
use crate::error::CacheError;
use crate::spec::ExportOptions;

/// The registry side of a build: the client, the runtime that drives it,
/// and where transfers report progress.
#[derive(Clone)]
pub struct Net {
    pub runtime: tokio::runtime::Handle,
    pub client: Arc<Client>,
    pub reporter: Arc<dyn Reporter>,
}

/// `--cache-to type=registry,ref=REF`.
pub struct RegistryExporter {
    pub reference: Reference,
    pub options: ExportOptions,
    pub net: Net,
}

impl CacheExporter for RegistryExporter {
    fn name(&self) -> String {
        format!("exporting cache to registry {}", self.reference)
    }

    fn ignore_error(&self) -> bool {
        self.options.ignore_error
    }

    fn export(
        &self,
        store: &Store,
        cache: &CacheExport,
        blobs: &dyn BlobProvider,
        reporter: &dyn Reporter,
    ) -> Result<Vec<String>, RemoteError> {
        let steps = cache.select(self.options.mode);
        // A layer taken from elsewhere without its content is mounted from
        // where it is, or fetched by the push; one from nowhere it could be
        // fetched (a directory), or one force-compression may convert
        // (which needs its bytes, as BuildKit fetches a lazy layer first),
        // is fetched now.
        let origins = kiln_transfer::BlobOrigins::new(store);
        let force = self.options.compression.force;
        for (layer, _) in steps.iter().filter_map(|s| s.layer.as_ref()) {
            if !store.has_blob(&layer.digest) && (force || origins.lookup(&layer.digest).is_empty())
            {
                blobs.provide(store, layer)?;
            }
        }
        let what = self.reference.to_string();
        let made = artifact::make(store, &steps, &self.options, reporter).map_err(|source| {
            CacheError::Store {
                what: what.clone(),
                source: Box::new(source),
            }
        })?;
        let Some(made) = made else {
            return Ok(vec!["skipping cache export for empty result".into()]);
        };
        let push_options = kiln_transfer::PushOptions::default();
        let pushed = self
            .net
            .runtime
            .block_on(kiln_transfer::push_artifact(
                &self.net.client,
                store,
                &self.reference,
                &made.manifest,
                &made.blobs(),
                &push_options,
                self.net.reporter.clone(),
            ))
            .map_err(|source| CacheError::Transfer {
                what,
                source: Box::new(source),
            })?;
        Ok(vec![
            format!(
                "writing {} blobs: {} uploaded, {} mounted, {} already there",
                made.layers.len() + 1,
                pushed.blobs_uploaded,
                pushed.blobs_mounted,
                pushed.blobs_skipped
            ),
            format!(
                "writing cache manifest {} for {} steps done",
                made.manifest.digest, made.steps
            ),
        ])
    }
}

/// `--cache-from type=registry,ref=REF` (or a bare `REF`): the steps of a
/// cache manifest there, or of the inline cache of the image there.
pub struct RegistrySource {
    reference: Reference,
    /// Cache manifest, or image with inline cache.
    kind: &'static str,
    steps: StepsByKey,
    net: Net,
}

impl RegistrySource {
    /// Reads the manifest `reference` names and what it holds: a kiln
    /// cache's config, or (an image, for each of `platforms` when it is
    /// an index) the image config's inline cache.
    pub fn open(
        reference: &Reference,
        platforms: &[Platform],
        net: &Net,
    ) -> Result<RegistrySource, CacheError> {
        let what = reference.to_string();
        let (kind, steps) = net
            .runtime
            .block_on(read_cache(&net.client, reference, platforms))?;
        tracing::info!("{what}: {} steps in its {kind}", steps.len());
        Ok(RegistrySource {
            reference: reference.clone(),
            kind,
            steps,
            net: net.clone(),
        })
    }
}

/// The steps the manifest at `reference` leads to, and what it was. An
/// index of images gives the inline caches of the images for each of
/// `platforms` it has (a build for several platforms takes each one's);
/// one that has none of them is an error.
async fn read_cache(
    client: &Client,
    reference: &Reference,
    platforms: &[Platform],
) -> Result<(&'static str, StepsByKey), CacheError> {
    let what = reference.to_string();
    let top = client
        .fetch_manifest(reference)
        .await
        .map_err(registry_err(&what))?;
    let kind = parse(&what, &top)?;
    if let Some(config) = cache_config_of(&kind) {
        let bytes = small_blob(client, reference, config).await?;
        let config = CacheConfig::parse(&bytes).map_err(|source| CacheError::Format {
            what: what.clone(),
            source: Box::new(source),
        })?;
        return Ok(("cache manifest", crate::steps_of(&what, &config, None)?));
    }
    let manifests = match kind {
        ManifestKind::Image(manifest) => vec![manifest],
        ManifestKind::Index(index) => {
            let mut chosen: Vec<&Descriptor> = Vec::new();
            for platform in platforms {
                if let Some(entry) = index.select_platform(platform) {
                    if !chosen.iter().any(|c| c.digest == entry.digest) {
                        chosen.push(entry);
                    }
                }
            }
            if chosen.is_empty() {
                let names: Vec<String> = platforms.iter().map(Platform::to_string).collect();
                return Err(CacheError::Invalid(format!(
                    "{what}: neither a kiln cache nor an image for {}",
                    names.join(", ")
                )));
            }
            let mut manifests = Vec::new();
            for entry in chosen {
                let fetched = client
                    .fetch_manifest(&reference.with_digest(entry.digest.clone()))
                    .await
                    .map_err(registry_err(&what))?;
                match parse(&what, &fetched)? {
                    ManifestKind::Image(manifest) => manifests.push(manifest),
                    ManifestKind::Index(_) => {
                        return Err(CacheError::Invalid(format!(
                            "{what}: its entry {} is another index",
                            entry.digest
                        )))
                    }
                }
            }
            manifests
        }
    };
    let mut steps = StepsByKey::new();
    for manifest in &manifests {
        steps.extend(inline_steps(client, reference, &what, manifest).await?);
    }
    Ok(("image's inline cache", steps))
}

/// The steps of the inline cache in the config of `manifest`, an image of
/// `reference`'s repository.
async fn inline_steps(
    client: &Client,
    reference: &Reference,
    what: &str,
    manifest: &Manifest,
) -> Result<StepsByKey, CacheError> {
    if !matches!(
        manifest.config.media_type.as_str(),
        media::OCI_CONFIG | media::DOCKER_CONFIG
    ) {
        return Err(CacheError::Invalid(format!(
            "{what}: neither a kiln cache nor an image (config type {})",
            manifest.config.media_type
        )));
    }
    let bytes = small_blob(client, reference, &manifest.config).await?;
    let config: ImageConfig = serde_json::from_slice(&bytes)
        .map_err(|e| CacheError::Invalid(format!("{what}: image config: {e}")))?;
    let inline = config.extra.get(INLINE_KEY).cloned().ok_or_else(|| {
        CacheError::Invalid(format!(
            "{what}: the image has no kiln inline cache (built without --cache-to type=inline)"
        ))
    })?;
    let cache = CacheConfig::from_value(inline).map_err(|source| CacheError::Format {
        what: what.to_string(),
        source: Box::new(source),
    })?;
    let layers: Vec<(Descriptor, Digest)> = manifest
        .layers
        .iter()
        .cloned()
        .zip(config.rootfs.diff_ids.iter().cloned())
        .collect();
    crate::steps_of(what, &cache, Some(&layers))
}

/// A registry error as a cache error naming `what` was read.
fn registry_err(what: &str) -> impl Fn(kiln_registry::Error) -> CacheError + '_ {
    move |source| CacheError::Registry {
        what: what.to_string(),
        source: Box::new(source),
    }
}

/// A fetched manifest or index, parsed.
fn parse(what: &str, fetched: &kiln_registry::Manifest) -> Result<ManifestKind, CacheError> {
    parse_manifest(
        &fetched.bytes,
        &fetched.media_type,
        &format!("manifest {}", fetched.digest),
    )
    .map_err(|source| CacheError::Store {
        what: what.to_string(),
        source: Box::new(source),
    })
}

/// A config-sized blob, read whole (size and digest checked by the client).
async fn small_blob(
    client: &Client,
    reference: &Reference,
    desc: &Descriptor,
) -> Result<Vec<u8>, CacheError> {
    if desc.size > MAX_JSON_BLOB {
        return Err(CacheError::Invalid(format!(
            "{reference}: config {} is {} bytes; over {MAX_JSON_BLOB} is refused",
            desc.digest, desc.size
        )));
    }
    let mut bytes = Vec::with_capacity(desc.size as usize);
    client
        .fetch_blob(
            &reference.repository,
            &desc.digest,
            Some(desc.size),
            &mut bytes,
        )
        .await
        .map_err(|source| CacheError::Registry {
            what: format!("{reference}: config {}", desc.digest),
            source: Box::new(source),
        })?;
    Ok(bytes)
}

impl CacheSource for RegistrySource {
    fn name(&self) -> String {
        format!("registry cache {} ({})", self.reference, self.kind)
    }

    fn lookup(&self, key: &Digest) -> Option<CachedStep> {
        self.steps.get(key).cloned()
    }

    fn taken(&self, store: &Store, blob: &Descriptor) {
        kiln_transfer::BlobOrigins::new(store).record(&blob.digest, &self.reference.repository);
    }

    fn keep_lazy(&self, store: &Store, blob: &Descriptor) -> Result<(), RemoteError> {
        let exists = self.net.runtime.block_on(
            self.net
                .client
                .blob_exists(&self.reference.repository, &blob.digest),
        )?;
        match exists {
            Some(_) => {
                self.taken(store, blob);
                Ok(())
            }
            None => Err(format!("{} does not have it", self.reference.repository).into()),
        }
    }

    fn fetch(&self, store: &Store, blob: &Descriptor) -> Result<(), RemoteError> {
        let what = self.reference.to_string();
        self.net
            .runtime
            .block_on(kiln_transfer::fetch_blob(
                &self.net.client,
                store,
                &self.reference.repository,
                &what,
                blob,
                self.net.reporter.clone(),
            ))
            // The source's name says which cache; the detail says the rest.
            .map_err(|source| source.detail())?;
        Ok(())
    }
}
