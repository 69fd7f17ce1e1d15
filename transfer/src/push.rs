//! Push: every blob of an image from the store (skipping those the registry
//! has, mounting when told where from), then the manifest under the tag.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use bytes::Bytes;
use kiln_layers::compressed::{compressed_image, LayerForm};
use kiln_layers::oci::{parse_manifest, Descriptor, Index, Manifest, ManifestKind};
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
    /// compressed on the way out; compressed layers go as they are, unless
    /// `force` ([`LayerForm`]).
    pub compression: LayerForm,
    /// Put the manifest (or index) by its digest and tag nothing, as
    /// BuildKit's `push-by-digest=true`: the target's tag is not used.
    pub by_digest: bool,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            concurrency: 6,
            mount_from: None,
            compression: LayerForm::from(Compression::Gzip),
            by_digest: false,
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
    if let Ok(ManifestKind::Index(index)) = store.read_manifest(desc) {
        // Before compressing anything: every entry's manifest is needed.
        check_children_present(store, &index, &image)?;
    }
    let desc = compress_layers(store, desc, options.compression, &reporter, &image).await?;
    // A registry keeps a manifest put by digest only under its own.
    if let (Some(named), false) = (&target.digest, options.by_digest) {
        if named != &desc.digest {
            return Err(TransferError::DigestChanges {
                image,
                stored: named.to_string(),
                pushed: desc.digest.to_string(),
            });
        }
    }
    let mut pushed = Pushed {
        reference: if options.by_digest {
            target.at_digest(desc.digest.clone())
        } else {
            target.clone()
        },
        digest: desc.digest.clone(),
        size: desc.size,
        blobs_uploaded: 0,
        blobs_mounted: 0,
        blobs_skipped: 0,
    };
    let tag = match (&target.tag, &target.digest) {
        _ if options.by_digest => desc.digest.to_string(),
        (Some(tag), _) => tag.clone(),
        (None, Some(digest)) => digest.to_string(),
        (None, None) => "latest".to_string(),
    };
    let run = PushRun {
        client,
        store,
        target,
        options,
        reporter: &reporter,
        image,
    };
    push_manifest_tree(&run, &desc, &tag, &mut pushed, 0).await?;
    Ok(pushed)
}

/// The image `desc` names with its plain layers compressed
/// ([`compressed_image`], on a blocking thread): the descriptor to push.
async fn compress_layers(
    store: &Store,
    desc: &Descriptor,
    compression: LayerForm,
    reporter: &Arc<dyn Reporter>,
    image: &str,
) -> Result<Descriptor, TransferError> {
    let (store, desc, reporter) = (store.clone(), desc.clone(), reporter.clone());
    let context = || format!("compressing the layers of {image}");
    tokio::task::spawn_blocking(move || {
        compressed_image(&store, &desc, compression, reporter.as_ref())
    })
    .await
    .map_err(|e| TransferError::Store {
        context: context(),
        cause: Box::new(kiln_layers::Error::io(
            "compress",
            std::path::Path::new("layers"),
            std::io::Error::other(e.to_string()),
        )),
    })?
    .map_err(|source| TransferError::Store {
        context: context(),
        cause: Box::new(source),
    })
}

/// One push: where from, where to, and how; every manifest of the image's
/// tree is pushed with it.
pub(crate) struct PushRun<'a> {
    pub(crate) client: &'a Arc<Client>,
    pub(crate) store: &'a Store,
    pub(crate) target: &'a Reference,
    pub(crate) options: &'a PushOptions,
    pub(crate) reporter: &'a Arc<dyn Reporter>,
    /// The target, as messages name it.
    pub(crate) image: String,
}

/// Pushes what the manifest or index `desc` names (the manifests of an
/// index, nested at most `MAX_DEPTH` deep; the config and layers of an
/// image manifest), then the manifest itself under `tag`.
async fn push_manifest_tree(
    run: &PushRun<'_>,
    desc: &Descriptor,
    tag: &str,
    pushed: &mut Pushed,
    depth: usize,
) -> Result<(), TransferError> {
    const MAX_DEPTH: usize = 8;
    if depth > MAX_DEPTH {
        return Err(TransferError::NestingTooDeep {
            image: run.image.clone(),
            limit: MAX_DEPTH,
        });
    }
    let bytes = read_manifest(run, desc)?;
    let kind = parse_manifest(
        &bytes,
        &desc.media_type,
        &format!("manifest {}", desc.digest),
    )
    .map_err(|source| TransferError::MalformedManifest {
        image: run.image.clone(),
        digest: desc.digest.to_string(),
        cause: Box::new(source),
    })?;
    match kind {
        ManifestKind::Index(index) => {
            check_children_present(run.store, &index, &run.image)?;
            for child in &index.manifests {
                let child_tag = child.digest.to_string();
                Box::pin(push_manifest_tree(
                    run,
                    child,
                    &child_tag,
                    pushed,
                    depth + 1,
                ))
                .await?;
            }
        }
        ManifestKind::Image(manifest) => push_blobs(run, &manifest, pushed).await?,
    }
    // The stored bytes, never re-serialized: the digest stays the same.
    run.client
        .put_manifest(
            &run.target.repository,
            tag,
            &desc.media_type,
            Bytes::from(bytes),
        )
        .await?;
    Ok(())
}

/// Refuses to push an index whose entries the store does not all have
/// (a pull of one platform keeps the index but only that platform's
/// manifest), naming the first platform missing.
fn check_children_present(store: &Store, index: &Index, image: &str) -> Result<(), TransferError> {
    let missing = index
        .manifests
        .iter()
        .find(|child| !store.has_blob(&child.digest));
    match missing {
        Some(child) => Err(TransferError::PlatformNotInStore {
            image: image.to_string(),
            platform: child
                .platform
                .as_ref()
                .map_or("unknown".into(), |p| p.normalized().to_string()),
            digest: child.digest.to_string(),
        }),
        None => Ok(()),
    }
}

/// The stored bytes of the manifest or index `desc`.
pub(crate) fn read_manifest(
    run: &PushRun<'_>,
    desc: &Descriptor,
) -> Result<Vec<u8>, TransferError> {
    run.store
        .read_blob(&desc.digest)
        .map_err(|source| match source {
            kiln_layers::Error::BlobNotFound(_) => TransferError::IncompleteImage {
                image: run.image.clone(),
                digest: desc.digest.to_string(),
            },
            source => TransferError::Store {
                context: format!("{}: reading manifest {}", run.image, desc.digest),
                cause: Box::new(source),
            },
        })
}

/// Pushes the config and layers of `manifest`, `options.concurrency` at a
/// time, counting in `pushed` what each upload did; the first failure
/// stops the others.
async fn push_blobs(
    run: &PushRun<'_>,
    manifest: &Manifest,
    pushed: &mut Pushed,
) -> Result<(), TransferError> {
    let mut blobs = vec![("config", manifest.config.clone())];
    blobs.extend(manifest.layers.iter().map(|l| ("layer", l.clone())));
    push_blob_list(run, blobs, pushed).await
}

/// Pushes `blobs` (each with its role, for progress), as [`push_blobs`]
/// does the blobs of a manifest.
pub(crate) async fn push_blob_list(
    run: &PushRun<'_>,
    blobs: Vec<(&'static str, Descriptor)>,
    pushed: &mut Pushed,
) -> Result<(), TransferError> {
    check_blobs_present(run, &blobs)?;
    let semaphore = Arc::new(Semaphore::new(run.options.concurrency.max(1)));
    let origins = BlobOrigins::new(run.store);
    let mut tasks = JoinSet::new();
    for (role, blob) in blobs {
        let repository = run.target.repository.clone();
        // Mount from where the blob was pulled, unless told otherwise.
        let mount_from = run
            .options
            .mount_from
            .clone()
            .or_else(|| origins.mount_source(&blob.digest, &repository));
        let upload = BlobUpload {
            client: run.client.clone(),
            store: run.store.clone(),
            reporter: run.reporter.clone(),
            origins: origins.clone(),
            repository,
            mount_from,
            role,
            blob,
        };
        let semaphore = semaphore.clone();
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            upload.run().await
        });
    }
    count_outcomes(tasks, pushed, &run.image).await
}

/// Refuses to push an image whose blobs the store does not all have,
/// unless it knows a repository that has each missing one (a layer left
/// where a build cache or a registry has it: mounted or fetched from
/// there).
fn check_blobs_present(
    run: &PushRun<'_>,
    blobs: &[(&str, Descriptor)],
) -> Result<(), TransferError> {
    for (_, blob) in blobs {
        let present = run
            .store
            .blob_size(&blob.digest)
            .map_err(|source| TransferError::Store {
                context: format!("{}: blob {}", run.image, blob.digest),
                cause: Box::new(source),
            })?;
        if present.is_none() && BlobOrigins::new(run.store).lookup(&blob.digest).is_empty() {
            return Err(TransferError::IncompleteImage {
                image: run.image.clone(),
                digest: blob.digest.to_string(),
            });
        }
    }
    Ok(())
}

/// Waits for every upload task, counting what each did in `pushed`; on the
/// first failure, aborts the rest and returns it.
async fn count_outcomes(
    mut tasks: JoinSet<Result<PushOutcome, TransferError>>,
    pushed: &mut Pushed,
    image: &str,
) -> Result<(), TransferError> {
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
    match first_error {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// One blob's upload, owned by the task that does it.
struct BlobUpload {
    client: Arc<Client>,
    store: Store,
    reporter: Arc<dyn Reporter>,
    origins: BlobOrigins,
    repository: Repository,
    /// The repository to ask the registry to mount the blob from.
    mount_from: Option<Repository>,
    /// `config` or `layer`, for the progress line.
    role: &'static str,
    blob: Descriptor,
}

impl BlobUpload {
    /// Pushes the blob (skipped when the registry has it, mounted when it
    /// can be), reporting progress and noting where the blob now is.
    async fn run(self) -> Result<PushOutcome, TransferError> {
        let (blob, reporter) = (&self.blob, &self.reporter);
        let id = blob.digest.to_string();
        reporter.start(&id, self.role, Some(blob.size));
        let pushed = match self.store.has_blob(&blob.digest) {
            true => self.push().await,
            false => self.push_absent().await,
        };
        match pushed {
            Ok(outcome) => {
                self.origins.record(&blob.digest, &self.repository);
                reporter.done(
                    &id,
                    match outcome {
                        PushOutcome::Exists => Outcome::Skipped("already in the registry".into()),
                        PushOutcome::Mounted => Outcome::Skipped("mounted".into()),
                        PushOutcome::Uploaded => Outcome::Done,
                    },
                );
                Ok(outcome)
            }
            Err(err) => {
                reporter.done(&id, Outcome::Failed(err.to_string()));
                Err(err)
            }
        }
    }

    /// Uploads the blob from the store unless the repository has it or
    /// can mount it.
    async fn push(&self) -> Result<PushOutcome, TransferError> {
        let source = Arc::new(StoreBlob {
            store: self.store.clone(),
            digest: self.blob.digest.clone(),
            size: self.blob.size,
            reporter: self.reporter.clone(),
        });
        Ok(self
            .client
            .push_blob(
                &self.repository,
                &self.blob.digest,
                source,
                self.mount_from.as_ref(),
            )
            .await?)
    }

    /// A blob the store lacks (a layer left where a build cache or a
    /// registry has it): skipped when the repository has it, mounted from
    /// where it is, else fetched from there first and uploaded.
    async fn push_absent(&self) -> Result<PushOutcome, TransferError> {
        let digest = &self.blob.digest;
        if self
            .client
            .blob_exists(&self.repository, digest)
            .await?
            .is_some()
        {
            return Ok(PushOutcome::Exists);
        }
        if let Some(from) = &self.mount_from {
            if self
                .client
                .mount_blob(&self.repository, digest, from)
                .await?
            {
                return Ok(PushOutcome::Mounted);
            }
        }
        crate::blobs::fetch_from_origins(
            &self.client,
            &self.store,
            &self.blob,
            self.reporter.clone(),
        )
        .await?;
        self.push().await
    }
}
