//! Push: every blob of an image from the store (skipping those the registry
//! has, mounting when told where from), then the manifest under the tag.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use bytes::Bytes;
use kiln_layers::compressed::compressed_image;
use kiln_layers::oci::{parse_manifest, Descriptor, ManifestKind};
use kiln_layers::{Compression, Digest, Outcome, Reporter, Store};
use kiln_registry::{BlobSource, Client, PushOutcome, Reference, Repository};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::{BlobOrigins, TransferError};

/// How to push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Blobs uploaded at once.
    pub concurrency: usize,
    /// A repository of the same registry that holds the blobs: the registry
    /// is asked to mount from it before uploading. Without it, kiln mounts
    /// from where each blob was pulled from or pushed to ([`BlobOrigins`]).
    pub mount_from: Option<Repository>,
    /// How the image's plain (uncompressed) layers, which builds store, are
    /// compressed on the way out; compressed layers go as they are.
    pub compression: Compression,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            concurrency: 6,
            mount_from: None,
            compression: Compression::Gzip,
        }
    }
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub reference: Reference,
    /// Digest and size of the manifest (or index) the tag now names.
    pub digest: Digest,
    pub size: u64,
    pub blobs_uploaded: usize,
    pub blobs_mounted: usize,
    pub blobs_skipped: usize,
}

/// A blob in the store, opened afresh for each upload attempt.
struct StoreBlob {
    store: Store,
    digest: Digest,
    size: u64,
    reporter: Arc<dyn Reporter>,
}

struct ProgressReader {
    inner: std::fs::File,
    reporter: Arc<dyn Reporter>,
    id: String,
    count: u64,
    reported: u64,
}

impl Read for ProgressReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count - self.reported >= 256 * 1024 || n == 0 {
            self.reported = self.count;
            self.reporter.progress(&self.id, self.count);
        }
        Ok(n)
    }
}

impl BlobSource for StoreBlob {
    fn size(&self) -> u64 {
        self.size
    }
    fn open(&self, offset: u64) -> std::io::Result<Box<dyn Read + Send>> {
        let mut file = self
            .store
            .open_blob(&self.digest)
            .map_err(std::io::Error::other)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(ProgressReader {
            inner: file,
            reporter: self.reporter.clone(),
            id: self.digest.to_string(),
            count: offset,
            reported: offset,
        }))
    }
}

/// Pushes the image the store has under `reference` to the registry it names.
pub async fn push(
    client: &Arc<Client>,
    store: &Store,
    reference: &Reference,
    options: &PushOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<Pushed, TransferError> {
    let desc = store
        .resolve(reference)
        .map_err(|source| TransferError::Store {
            context: format!("looking up {reference}"),
            cause: Box::new(source),
        })?
        .ok_or_else(|| TransferError::NotInStore(reference.to_string()))?;
    push_descriptor(client, store, &desc, reference, options, reporter).await
}

/// Pushes the manifest or index `desc` (and everything it names) from the
/// store to `target` (tagged with its tag, or put by digest).
pub async fn push_descriptor(
    client: &Arc<Client>,
    store: &Store,
    desc: &Descriptor,
    target: &Reference,
    options: &PushOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<Pushed, TransferError> {
    let image = target.to_string();
    // The compressed layers and manifest are referenced by nothing in the
    // store: the lease keeps `kiln prune` away until they are uploaded.
    let _lease = store.lease().map_err(|source| TransferError::Store {
        context: format!("pushing {image}"),
        cause: Box::new(source),
    })?;
    let desc = {
        let (store, desc, reporter) = (store.clone(), desc.clone(), reporter.clone());
        let compression = options.compression;
        tokio::task::spawn_blocking(move || {
            compressed_image(&store, &desc, compression, reporter.as_ref())
        })
        .await
        .map_err(|e| TransferError::Store {
            context: format!("compressing the layers of {image}"),
            cause: Box::new(kiln_layers::Error::io(
                "compress",
                std::path::Path::new("layers"),
                std::io::Error::other(e.to_string()),
            )),
        })?
        .map_err(|source| TransferError::Store {
            context: format!("compressing the layers of {image}"),
            cause: Box::new(source),
        })?
    };
    let desc = &desc;
    let mut pushed = Pushed {
        reference: target.clone(),
        digest: desc.digest.clone(),
        size: desc.size,
        blobs_uploaded: 0,
        blobs_mounted: 0,
        blobs_skipped: 0,
    };
    let tag = match (&target.tag, &target.digest) {
        (Some(tag), _) => tag.clone(),
        (None, Some(digest)) => digest.to_string(),
        (None, None) => "latest".to_string(),
    };
    push_manifest_tree(
        client,
        store,
        desc,
        target,
        &tag,
        options,
        &reporter,
        &image,
        &mut pushed,
        0,
    )
    .await?;
    Ok(pushed)
}

#[allow(clippy::too_many_arguments)]
async fn push_manifest_tree(
    client: &Arc<Client>,
    store: &Store,
    desc: &Descriptor,
    target: &Reference,
    tag: &str,
    options: &PushOptions,
    reporter: &Arc<dyn Reporter>,
    image: &str,
    pushed: &mut Pushed,
    depth: usize,
) -> Result<(), TransferError> {
    const MAX_DEPTH: usize = 8;
    if depth > MAX_DEPTH {
        return Err(TransferError::NestingTooDeep {
            image: image.to_string(),
            limit: MAX_DEPTH,
        });
    }
    let bytes = store
        .read_blob(&desc.digest)
        .map_err(|source| match source {
            kiln_layers::Error::BlobNotFound(_) => TransferError::IncompleteImage {
                image: image.to_string(),
                digest: desc.digest.to_string(),
            },
            source => TransferError::Store {
                context: format!("{image}: reading manifest {}", desc.digest),
                cause: Box::new(source),
            },
        })?;
    let kind = parse_manifest(
        &bytes,
        &desc.media_type,
        &format!("manifest {}", desc.digest),
    )
    .map_err(|source| TransferError::MalformedManifest {
        image: image.to_string(),
        digest: desc.digest.to_string(),
        cause: Box::new(source),
    })?;
    match kind {
        ManifestKind::Index(index) => {
            for child in &index.manifests {
                let child_tag = child.digest.to_string();
                Box::pin(push_manifest_tree(
                    client,
                    store,
                    child,
                    target,
                    &child_tag,
                    options,
                    reporter,
                    image,
                    pushed,
                    depth + 1,
                ))
                .await?;
            }
        }
        ManifestKind::Image(manifest) => {
            let mut blobs = vec![("config", manifest.config.clone())];
            blobs.extend(manifest.layers.iter().map(|l| ("layer", l.clone())));
            for (_, blob) in &blobs {
                let present =
                    store
                        .blob_size(&blob.digest)
                        .map_err(|source| TransferError::Store {
                            context: format!("{image}: blob {}", blob.digest),
                            cause: Box::new(source),
                        })?;
                if present.is_none() {
                    return Err(TransferError::IncompleteImage {
                        image: image.to_string(),
                        digest: blob.digest.to_string(),
                    });
                }
            }
            let semaphore = Arc::new(Semaphore::new(options.concurrency.max(1)));
            let origins = BlobOrigins::new(store);
            let mut tasks = JoinSet::new();
            for (role, blob) in blobs {
                let (client, store, reporter, semaphore) = (
                    client.clone(),
                    store.clone(),
                    reporter.clone(),
                    semaphore.clone(),
                );
                let repository = target.repository.clone();
                // Mount from where the blob was pulled, unless told otherwise.
                let mount_from = options
                    .mount_from
                    .clone()
                    .or_else(|| origins.mount_source(&blob.digest, &repository));
                let origins = origins.clone();
                tasks.spawn(async move {
                    let _permit = semaphore.acquire_owned().await;
                    let id = blob.digest.to_string();
                    reporter.start(&id, role, Some(blob.size));
                    let source = Arc::new(StoreBlob {
                        store,
                        digest: blob.digest.clone(),
                        size: blob.size,
                        reporter: reporter.clone(),
                    });
                    match client
                        .push_blob(&repository, &blob.digest, source, mount_from.as_ref())
                        .await
                    {
                        Ok(outcome) => {
                            origins.record(&blob.digest, &repository);
                            reporter.done(
                                &id,
                                match outcome {
                                    PushOutcome::Exists => {
                                        Outcome::Skipped("already in the registry".into())
                                    }
                                    PushOutcome::Mounted => Outcome::Skipped("mounted".into()),
                                    PushOutcome::Uploaded => Outcome::Done,
                                },
                            );
                            Ok(outcome)
                        }
                        Err(err) => {
                            reporter.done(&id, Outcome::Failed(err.to_string()));
                            Err(TransferError::Registry(err))
                        }
                    }
                });
            }
            let mut first_error = None;
            while let Some(joined) = tasks.join_next().await {
                let result = joined
                    .map_err(|e| TransferError::Task {
                        what: format!("pushing {image}"),
                        detail: e.to_string(),
                    })
                    .and_then(|r| r);
                match result {
                    Ok(PushOutcome::Uploaded) => pushed.blobs_uploaded += 1,
                    Ok(PushOutcome::Mounted) => pushed.blobs_mounted += 1,
                    Ok(PushOutcome::Exists) => pushed.blobs_skipped += 1,
                    Err(err) => {
                        if first_error.is_none() {
                            first_error = Some(err);
                            tasks.abort_all();
                        }
                    }
                }
            }
            if let Some(err) = first_error {
                return Err(err);
            }
        }
    }
    // The stored bytes, never re-serialized: the digest stays the same.
    client
        .put_manifest(
            &target.repository,
            tag,
            &desc.media_type,
            Bytes::from(bytes),
        )
        .await?;
    Ok(())
}
