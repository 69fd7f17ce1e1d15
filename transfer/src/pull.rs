//! Pull: manifest (through an index to one platform), then config and
//! layers in parallel into the store's ingest, verified, then the tag.

use std::io::Write;
use std::sync::Arc;

use kiln_layers::oci::{
    media, parse_manifest, Descriptor, Index, Manifest, ManifestKind, Platform,
};
use kiln_layers::{Digest, Outcome, Reporter, Store};
use kiln_registry::{Client, Reference};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::{BlobOrigins, TransferError};

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The platform picked from an index (`--platform`, default the host's).
    pub platform: Platform,
    /// Blobs fetched at once (6, as skopeo).
    pub concurrency: usize,
    /// Tag the image in the store under the reference pulled.
    pub tag: bool,
}

impl PullOptions {
    pub fn new(platform: Platform) -> PullOptions {
        PullOptions {
            platform,
            concurrency: 6,
            tag: true,
        }
    }
}

/// What a pull stored.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub reference: Reference,
    /// The image manifest stored and tagged (after platform selection).
    pub manifest: Descriptor,
    /// The digest the reference resolved to at the registry (an index's, for multi-platform images).
    pub resolved_digest: Digest,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// Blobs downloaded (the others were already in the store).
    pub blobs_fetched: usize,
    pub bytes_fetched: u64,
}

const MAX_INDEX_DEPTH: usize = 8;

/// Reports bytes written through it as a running total.
struct ProgressWriter<'r, W> {
    inner: W,
    reporter: &'r dyn Reporter,
    id: String,
    written: u64,
    reported: u64,
}

impl<W: Write> Write for ProgressWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        // Every 256 KiB is plenty for a bar.
        if self.written - self.reported >= 256 * 1024 {
            self.reported = self.written;
            self.reporter.progress(&self.id, self.written);
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Pulls `reference` into `store`: see the crate docs.
pub async fn pull(
    client: &Arc<Client>,
    store: &Store,
    reference: &Reference,
    options: &PullOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<Pulled, TransferError> {
    let image = reference.to_string();
    // Keeps `kiln prune` from collecting blobs committed before the tag exists.
    let _lease = store.lease().map_err(|source| TransferError::Store {
        context: format!("pulling {image}"),
        cause: Box::new(source),
    })?;
    let top = client.fetch_manifest(reference).await?;
    let resolved_digest = top.digest.clone();
    let mut current = top;
    let mut platform_of_choice = None;
    let mut depth = 0;
    let manifest: Manifest = loop {
        let digest = current.digest.to_string();
        let kind = parse_manifest(
            &current.bytes,
            &current.media_type,
            &format!("manifest {digest}"),
        )
        .map_err(|source| match source {
            kiln_layers::Error::UnsupportedMediaType { media_type, .. } => {
                TransferError::UnknownMediaType {
                    image: image.clone(),
                    manifest: digest.clone(),
                    role: "manifest",
                    digest: digest.clone(),
                    media_type,
                }
            }
            source => TransferError::MalformedManifest {
                image: image.clone(),
                digest: digest.clone(),
                cause: Box::new(source),
            },
        })?;
        let media_type = match (&kind, current.media_type.as_str()) {
            (_, m) if media::is_manifest(m) || media::is_index(m) => m.to_string(),
            (ManifestKind::Image(m), _) => m
                .media_type
                .clone()
                .unwrap_or_else(|| media::OCI_MANIFEST.into()),
            (ManifestKind::Index(i), _) => i
                .media_type
                .clone()
                .unwrap_or_else(|| media::OCI_INDEX.into()),
        };
        store
            .put_blob(&media_type, &current.bytes)
            .map_err(|source| TransferError::Store {
                context: format!("{image}: storing manifest {digest}"),
                cause: Box::new(source),
            })?;
        match kind {
            ManifestKind::Image(manifest) => break manifest,
            ManifestKind::Index(index) => {
                depth += 1;
                if depth > MAX_INDEX_DEPTH {
                    return Err(TransferError::NestingTooDeep {
                        image,
                        limit: MAX_INDEX_DEPTH,
                    });
                }
                let chosen = select(&index, &options.platform, &image)?;
                platform_of_choice = chosen.platform.clone();
                current = client
                    .fetch_manifest(&reference.with_digest(chosen.digest.clone()))
                    .await?;
            }
        }
    };
    let manifest_digest = current.digest.to_string();
    let mut manifest_desc = Descriptor::new(
        if media::is_manifest(&current.media_type) {
            current.media_type.clone()
        } else {
            manifest
                .media_type
                .clone()
                .unwrap_or_else(|| media::OCI_MANIFEST.into())
        },
        current.digest.clone(),
        current.bytes.len() as u64,
    );

    // Refuse what kiln cannot use before downloading anything.
    if manifest.config.media_type != media::OCI_CONFIG
        && manifest.config.media_type != media::DOCKER_CONFIG
    {
        return Err(TransferError::UnknownMediaType {
            image,
            manifest: manifest_digest,
            role: "config",
            digest: manifest.config.digest.to_string(),
            media_type: manifest.config.media_type.clone(),
        });
    }
    for layer in &manifest.layers {
        if !media::is_layer(&layer.media_type) {
            return Err(TransferError::UnknownMediaType {
                image,
                manifest: manifest_digest,
                role: "layer",
                digest: layer.digest.to_string(),
                media_type: layer.media_type.clone(),
            });
        }
    }

    let mut blobs: Vec<(&'static str, Descriptor)> = vec![("config", manifest.config.clone())];
    blobs.extend(manifest.layers.iter().map(|l| ("layer", l.clone())));
    let semaphore = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for (role, desc) in blobs {
        let (client, store, reporter, semaphore) = (
            client.clone(),
            store.clone(),
            reporter.clone(),
            semaphore.clone(),
        );
        let repository = reference.repository.clone();
        let (image, manifest_digest) = (image.clone(), manifest_digest.clone());
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            fetch_blob(
                &client,
                &store,
                &repository,
                role,
                &desc,
                &image,
                &manifest_digest,
                reporter.as_ref(),
            )
            .await
        });
    }
    let mut first_error = None;
    let (mut blobs_fetched, mut bytes_fetched) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        let result = joined.map_err(|e| TransferError::Task {
            what: format!("pulling {image}"),
            detail: e.to_string(),
        });
        match result.and_then(|r| r) {
            Ok(Some(bytes)) => {
                blobs_fetched += 1;
                bytes_fetched += bytes;
            }
            Ok(None) => {}
            Err(err) => {
                if first_error.is_none() {
                    first_error = Some(err);
                    // Stop the other downloads: the pull has failed.
                    tasks.abort_all();
                }
            }
        }
    }
    if let Some(err) = first_error {
        return Err(err);
    }

    manifest_desc.platform = platform_of_choice.or_else(|| {
        store
            .read_config(&manifest.config)
            .ok()
            .map(|config| Platform {
                architecture: config.architecture,
                os: config.os,
                os_version: config.os_version,
                os_features: None,
                variant: config.variant,
            })
    });
    if options.tag {
        store
            .tag(reference, &manifest_desc)
            .map_err(|source| TransferError::Store {
                context: format!("tagging {image}"),
                cause: Box::new(source),
            })?;
    }
    Ok(Pulled {
        reference: reference.clone(),
        manifest: manifest_desc,
        resolved_digest,
        config: manifest.config.clone(),
        layers: manifest.layers.clone(),
        blobs_fetched,
        bytes_fetched,
    })
}

fn select<'i>(
    index: &'i Index,
    platform: &Platform,
    image: &str,
) -> Result<&'i Descriptor, TransferError> {
    index
        .select_platform(platform)
        .ok_or_else(|| TransferError::NoMatchingPlatform {
            image: image.to_string(),
            platform: platform.to_string(),
            available: index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Fetches one blob into the store unless it is there; `Some(bytes)` when downloaded.
#[allow(clippy::too_many_arguments)]
async fn fetch_blob(
    client: &Client,
    store: &Store,
    repository: &kiln_registry::Repository,
    role: &'static str,
    desc: &Descriptor,
    image: &str,
    manifest_digest: &str,
    reporter: &dyn Reporter,
) -> Result<Option<u64>, TransferError> {
    let id = desc.digest.to_string();
    let store_err = |source: kiln_layers::Error| TransferError::Store {
        context: format!("{image}: {role} {id}"),
        cause: Box::new(source),
    };
    let origins = BlobOrigins::new(store);
    if store.blob_size(&desc.digest).map_err(store_err)? == Some(desc.size) {
        origins.record(&desc.digest, repository);
        reporter.start(&id, role, Some(desc.size));
        reporter.done(&id, Outcome::Skipped("already in the store".into()));
        return Ok(None);
    }
    reporter.start(&id, role, Some(desc.size));
    let writer = store.ingest(Some(desc.clone())).map_err(store_err)?;
    let mut sink = ProgressWriter {
        // Network chunks are small; write the ingest file in large pieces.
        inner: std::io::BufWriter::with_capacity(1 << 20, writer),
        reporter,
        id: id.clone(),
        written: 0,
        reported: 0,
    };
    // The ingest writer hashes every byte and refuses a mismatch at commit;
    // the client need not hash them a second time.
    let result = client
        .fetch_blob_sink_verifies(repository, &desc.digest, desc.size, &mut sink)
        .await;
    let bytes = match result {
        Ok(bytes) => bytes,
        Err(err) => {
            let message = err.to_string();
            reporter.done(&id, Outcome::Failed(message));
            // Dropping the ingest writer removes its partial file.
            return Err(match err {
                kiln_registry::Error::NotFound { registry, .. } => TransferError::MissingBlob {
                    image: image.to_string(),
                    manifest: manifest_digest.to_string(),
                    role,
                    digest: id,
                    registry,
                },
                other => TransferError::Registry(other),
            });
        }
    };
    reporter.progress(&id, bytes);
    let writer = match sink.inner.into_inner() {
        Ok(writer) => writer,
        Err(err) => {
            let cause =
                kiln_layers::Error::io("write", format!("ingest of {id}"), err.into_error());
            reporter.done(&id, Outcome::Failed(cause.to_string()));
            return Err(store_err(cause));
        }
    };
    // Commit fsyncs: let the runtime move other downloads off this thread meanwhile.
    // (block_in_place exists only on the multi-threaded runtime.)
    let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread;
    let committed = if multi_thread {
        tokio::task::block_in_place(|| writer.commit())
    } else {
        writer.commit()
    };
    match committed {
        Ok(_) => {
            origins.record(&desc.digest, repository);
            reporter.done(&id, Outcome::Done);
            Ok(Some(bytes))
        }
        Err(kiln_layers::Error::DigestMismatch { actual, .. }) => {
            // Bytes from the registry that do not match their name: say where they came from.
            let err = kiln_registry::Error::DigestMismatch {
                registry: repository.registry.clone(),
                repository: repository.name.clone(),
                digest: id.clone(),
                actual: actual.to_string(),
            };
            reporter.done(&id, Outcome::Failed(err.to_string()));
            Err(TransferError::Registry(err))
        }
        Err(source) => {
            reporter.done(&id, Outcome::Failed(source.to_string()));
            Err(store_err(source))
        }
    }
}
