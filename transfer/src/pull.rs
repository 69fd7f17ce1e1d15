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
    /// Every platform of an index (`--platform all`, `--all-platforms`):
    /// each image manifest it lists (attestation manifests included) with
    /// its blobs; `platform` then only says which one [`Pulled`] describes.
    pub all_platforms: bool,
    /// Blobs fetched at once (6, as skopeo).
    pub concurrency: usize,
    /// Tag the image in the store under the reference pulled.
    pub tag: bool,
}

impl PullOptions {
    pub fn new(platform: Platform) -> PullOptions {
        PullOptions {
            platform,
            all_platforms: false,
            concurrency: 6,
            tag: true,
        }
    }
}

/// What a pull stored.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub reference: Reference,
    /// What the tag names: the index the registry gave (kept whole, though
    /// only the platforms pulled have their images in the store), or the
    /// image manifest.
    pub tagged: Descriptor,
    /// The platform's image manifest (after platform selection; with
    /// every platform, the one `PullOptions::platform` picks, else the
    /// first).
    pub manifest: Descriptor,
    /// Every image manifest stored, with its platform.
    pub manifests: Vec<Descriptor>,
    /// The digest the reference resolved to at the registry (an index's, for multi-platform images).
    pub resolved_digest: Digest,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// Blobs downloaded (the others were already in the store).
    pub blobs_fetched: usize,
    /// Bytes received from the registry: a blob resumed from a partial
    /// file counts only the rest; one fetched again after its partial file
    /// proved wrong counts both downloads.
    pub bytes_fetched: u64,
}

pub(crate) const MAX_INDEX_DEPTH: usize = 8;

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
    let chosen = if options.all_platforms {
        crate::index::resolve_all(client, store, reference).await?
    } else {
        resolve_one(client, store, reference, &options.platform).await?
    };
    if !options.all_platforms {
        // Refuse what kiln cannot use before downloading anything.
        for (desc, manifest) in &chosen.images {
            check_media_types(manifest, &image, desc.digest.as_str())?;
        }
    }
    let run = PullRun {
        client: client.clone(),
        store: store.clone(),
        repository: reference.repository.clone(),
        image: image.clone(),
        manifest_digest: chosen.resolved_digest.to_string(),
        reporter,
    };
    let (blobs_fetched, bytes_fetched) =
        fetch_blobs(Arc::new(run), &chosen.images, options.concurrency).await?;
    let mut manifests = Vec::new();
    for (mut desc, manifest) in chosen.images.iter().cloned() {
        if desc.platform.is_none() {
            desc.platform = store
                .read_config(&manifest.config)
                .ok()
                .map(|c| c.platform());
        }
        manifests.push((desc, manifest));
    }
    let tagged = match &chosen.top {
        Some(index) => index.clone(),
        None => manifests
            .first()
            .map(|(d, _)| d.clone())
            .ok_or_else(|| TransferError::NotInStore(image.clone()))?,
    };
    if options.tag {
        store
            .tag(reference, &tagged)
            .map_err(|source| TransferError::Store {
                context: format!("tagging {image}"),
                cause: Box::new(source),
            })?;
    }
    let described = manifests
        .iter()
        .find(|(d, _)| {
            d.platform
                .as_ref()
                .is_some_and(|p| options.platform.compatible_rank(p).is_some())
        })
        .or(manifests.first())
        .cloned()
        .ok_or_else(|| TransferError::NotInStore(image.clone()))?;
    Ok(Pulled {
        reference: reference.clone(),
        tagged,
        manifest: described.0,
        manifests: manifests.iter().map(|(d, _)| d.clone()).collect(),
        resolved_digest: chosen.resolved_digest,
        config: described.1.config.clone(),
        layers: described.1.layers.clone(),
        blobs_fetched,
        bytes_fetched,
    })
}

/// The manifests a pull fetches the blobs of.
pub(crate) struct Chosen {
    /// The digest the reference resolved to.
    pub resolved_digest: Digest,
    /// The index the reference named (stored), when it named one.
    pub top: Option<Descriptor>,
    /// The image manifests chosen (stored), each with its descriptor as
    /// the index gave it.
    pub images: Vec<(Descriptor, Manifest)>,
}

/// The manifest for `platform` (through indexes), every manifest and
/// index on the way stored as it came.
async fn resolve_one(
    client: &Client,
    store: &Store,
    reference: &Reference,
    platform: &Platform,
) -> Result<Chosen, TransferError> {
    let image = reference.to_string();
    let mut top = None;
    let resolved = resolve_manifest(client, reference, platform, |media_type, fetched| {
        let desc = store_document(store, &image, media_type, fetched)?;
        if top.is_none() && media::is_index(media_type) {
            top = Some(desc);
        }
        Ok(())
    })
    .await?;
    Ok(Chosen {
        resolved_digest: resolved.resolved_digest,
        top,
        images: vec![(resolved.manifest_descriptor, resolved.manifest)],
    })
}

/// Stores a manifest or index as it came; returns its descriptor.
pub(crate) fn store_document(
    store: &Store,
    image: &str,
    media_type: &str,
    fetched: &kiln_registry::Manifest,
) -> Result<Descriptor, TransferError> {
    store
        .put_blob(media_type, &fetched.bytes)
        .map_err(|source| TransferError::Store {
            context: format!("{image}: storing manifest {}", fetched.digest),
            cause: Box::new(source),
        })
}

/// What a reference resolves to for one platform.
pub(crate) struct Resolved {
    /// The digest the reference named at the registry (an index's, for
    /// multi-platform images).
    pub resolved_digest: Digest,
    pub manifest: Manifest,
    /// The image manifest's descriptor, with the platform the index gave it
    /// (`None` when the reference named a manifest directly).
    pub manifest_descriptor: Descriptor,
}

/// Fetches the manifest `reference` names and follows indexes to the one
/// for `platform`; each manifest or index fetched (its digest checked by
/// the client) is passed to `visit` with its media type before it is
/// followed.
pub(crate) async fn resolve_manifest(
    client: &Client,
    reference: &Reference,
    platform: &Platform,
    mut visit: impl FnMut(&str, &kiln_registry::Manifest) -> Result<(), TransferError>,
) -> Result<Resolved, TransferError> {
    let image = reference.to_string();
    let top = client.fetch_manifest(reference).await?;
    let resolved_digest = top.digest.clone();
    let mut current = top;
    let mut platform_of_choice = None;
    let mut depth = 0;
    let manifest: Manifest = loop {
        let (media_type, kind) = parse_document(&image, &current)?;
        visit(&media_type, &current)?;
        match kind {
            ManifestKind::Image(manifest) => break manifest,
            ManifestKind::Index(index) => {
                depth += 1;
                // Nested indexes are legal; the bound keeps a hostile cycle finite.
                if depth > MAX_INDEX_DEPTH {
                    return Err(TransferError::NestingTooDeep {
                        image,
                        limit: MAX_INDEX_DEPTH,
                    });
                }
                let chosen = select(&index, platform, &image)?;
                platform_of_choice = chosen.platform.clone();
                current = client
                    .fetch_manifest(&reference.with_digest(chosen.digest.clone()))
                    .await?;
            }
        }
    };
    let mut manifest_descriptor = Descriptor::new(
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
    manifest_descriptor.platform = platform_of_choice;
    Ok(Resolved {
        resolved_digest,
        manifest,
        manifest_descriptor,
    })
}

/// A fetched manifest or index, parsed, and the media type it is stored
/// with: the registry's Content-Type when it names one, else the
/// document's own (or its shape's).
pub(crate) fn parse_document(
    image: &str,
    fetched: &kiln_registry::Manifest,
) -> Result<(String, ManifestKind), TransferError> {
    let digest = fetched.digest.to_string();
    let kind = parse_manifest(
        &fetched.bytes,
        &fetched.media_type,
        &format!("manifest {digest}"),
    )
    .map_err(|source| match source {
        kiln_layers::Error::UnsupportedMediaType { media_type, .. } => {
            TransferError::UnknownMediaType {
                image: image.to_string(),
                manifest: digest.clone(),
                role: "manifest",
                digest: digest.clone(),
                media_type,
            }
        }
        source => TransferError::MalformedManifest {
            image: image.to_string(),
            digest: digest.clone(),
            cause: Box::new(source),
        },
    })?;
    let media_type = match (&kind, fetched.media_type.as_str()) {
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
    Ok((media_type, kind))
}

/// Refuses a config kiln cannot read.
pub(crate) fn check_config_media_type(
    manifest: &Manifest,
    image: &str,
    manifest_digest: &str,
) -> Result<(), TransferError> {
    if manifest.config.media_type != media::OCI_CONFIG
        && manifest.config.media_type != media::DOCKER_CONFIG
    {
        return Err(TransferError::UnknownMediaType {
            image: image.to_string(),
            manifest: manifest_digest.to_string(),
            role: "config",
            digest: manifest.config.digest.to_string(),
            media_type: manifest.config.media_type.clone(),
        });
    }
    Ok(())
}

/// Refuses a manifest whose config or layers kiln cannot read.
pub(crate) fn check_media_types(
    manifest: &Manifest,
    image: &str,
    manifest_digest: &str,
) -> Result<(), TransferError> {
    check_config_media_type(manifest, image, manifest_digest)?;
    for layer in &manifest.layers {
        if !media::is_layer(&layer.media_type) {
            return Err(TransferError::UnknownMediaType {
                image: image.to_string(),
                manifest: manifest_digest.to_string(),
                role: "layer",
                digest: layer.digest.to_string(),
                media_type: layer.media_type.clone(),
            });
        }
    }
    Ok(())
}

/// Fetches the config and layers of `manifests` into the store (each blob
/// once), `concurrency` at a time; the first failure stops the others.
/// Returns how many blobs were downloaded and the bytes received.
async fn fetch_blobs(
    run: Arc<PullRun>,
    manifests: &[(Descriptor, Manifest)],
    concurrency: usize,
) -> Result<(usize, u64), TransferError> {
    let mut blobs: Vec<BlobJob> = Vec::new();
    for (desc, manifest) in manifests {
        let roles = std::iter::once(("config", &manifest.config))
            .chain(manifest.layers.iter().map(|l| ("layer", l)));
        for (role, blob) in roles {
            if !blobs.iter().any(|b| b.desc.digest == blob.digest) {
                blobs.push(BlobJob {
                    role,
                    desc: blob.clone(),
                    manifest: desc.digest.to_string(),
                });
            }
        }
    }
    let semaphore = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for job in blobs {
        let (run, semaphore) = (run.clone(), semaphore.clone());
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            fetch_blob_of(&run, job.role, &job.desc, &job.manifest).await
        });
    }
    let mut first_error = None;
    let (mut blobs_fetched, mut bytes_fetched) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        let result = joined.map_err(|e| TransferError::Task {
            what: format!("pulling {}", run.image),
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
    match first_error {
        Some(err) => Err(err),
        None => Ok((blobs_fetched, bytes_fetched)),
    }
}

/// One blob to fetch: its role and descriptor, and the manifest naming it
/// (for messages).
struct BlobJob {
    role: &'static str,
    desc: Descriptor,
    manifest: String,
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

/// Fetches one blob into the store unless it is there; `Some(bytes)` when
/// downloaded (not counting bytes an earlier pull left to resume from).
pub(crate) async fn fetch_blob(
    run: &PullRun,
    role: &'static str,
    desc: &Descriptor,
) -> Result<Option<u64>, TransferError> {
    fetch_blob_of(run, role, desc, &run.manifest_digest).await
}

/// [`fetch_blob`] of a blob that `manifest` names (one pull may fetch the
/// blobs of several platforms' manifests).
async fn fetch_blob_of(
    run: &PullRun,
    role: &'static str,
    desc: &Descriptor,
    manifest: &str,
) -> Result<Option<u64>, TransferError> {
    let (store, repository, reporter) = (&run.store, &run.repository, run.reporter.as_ref());
    let id = desc.digest.to_string();
    let origins = BlobOrigins::new(store);
    let present = store
        .blob_size(&desc.digest)
        .map_err(|source| TransferError::Store {
            context: format!("{}: {role} {id}", run.image),
            cause: Box::new(source),
        })?;
    reporter.start(&id, role, Some(desc.size));
    if present == Some(desc.size) {
        origins.record(&desc.digest, repository);
        reporter.done(&id, Outcome::Skipped("already in the store".into()));
        return Ok(None);
    }
    let blob = BlobFetch {
        run,
        role,
        desc,
        manifest,
    };
    let mut from_zero = false;
    // Bytes downloaded by an attempt whose result was thrown away count too.
    let mut wasted = 0;
    loop {
        match blob.attempt(from_zero).await {
            Ok(bytes) => {
                origins.record(&desc.digest, repository);
                reporter.done(&id, Outcome::Done);
                return Ok(Some(wasted + bytes));
            }
            Err(Attempt::ResumedBadly {
                resumed_from,
                downloaded,
                why,
            }) if !from_zero => {
                // The bytes an earlier pull left were wrong (a torn write,
                // a disk that lost pages), or the registry cannot serve a
                // range: the partial file is gone; fetch the whole blob.
                tracing::warn!(
                    digest = %id,
                    resumed_from,
                    %why,
                    "resumed download refused; downloading the blob again from the start"
                );
                from_zero = true;
                wasted += downloaded;
            }
            Err(Attempt::ResumedBadly { why, .. }) | Err(Attempt::Failed(why)) => {
                reporter.done(&id, Outcome::Failed(why.to_string()));
                return Err(why);
            }
        }
    }
}

/// How one download attempt failed.
enum Attempt {
    /// It continued a partial file and the whole did not verify (or the
    /// registry answered the range request badly): worth one more attempt
    /// from byte 0.
    ResumedBadly {
        resumed_from: u64,
        /// Bytes this attempt received.
        downloaded: u64,
        why: TransferError,
    },
    Failed(TransferError),
}

/// What every blob of one pull is fetched with (shared by the tasks that
/// fetch them).
pub(crate) struct PullRun {
    pub(crate) client: Arc<Client>,
    pub(crate) store: Store,
    pub(crate) repository: kiln_registry::Repository,
    /// The reference pulled, as messages name it.
    pub(crate) image: String,
    /// The image manifest naming the blobs, for messages (a pull of several
    /// platforms names each blob's own: [`BlobJob`]).
    pub(crate) manifest_digest: String,
    pub(crate) reporter: Arc<dyn Reporter>,
}

/// One blob being pulled, for [`BlobFetch::attempt`].
struct BlobFetch<'a> {
    run: &'a PullRun,
    role: &'static str,
    desc: &'a Descriptor,
    /// The image manifest naming the blob, for messages.
    manifest: &'a str,
}

/// Runs blocking file work (hashing a partial file, fsync at commit) off
/// the runtime's other tasks where the runtime allows it
/// (`block_in_place` exists only on the multi-threaded runtime).
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

impl BlobFetch<'_> {
    fn store_error(&self, source: kiln_layers::Error) -> TransferError {
        TransferError::Store {
            context: format!("{}: {} {}", self.run.image, self.role, self.desc.digest),
            cause: Box::new(source),
        }
    }

    /// Downloads the blob into `ingest/<hex>.partial`, continuing what a
    /// killed pull left there unless `from_zero`, and commits it; returns
    /// the bytes downloaded.
    async fn attempt(&self, from_zero: bool) -> Result<u64, Attempt> {
        let (run, desc) = (self.run, self.desc);
        let id = desc.digest.to_string();
        let failed = |e| Attempt::Failed(e);
        // Opening hashes the bytes already in the partial file.
        let mut writer = blocking(|| run.store.ingest_resumable(desc.clone()))
            .map_err(|e| failed(self.store_error(e)))?;
        if from_zero && writer.offset() > 0 {
            writer.reset().map_err(|e| failed(self.store_error(e)))?;
        }
        let resumed_from = writer.offset();
        if resumed_from > 0 {
            tracing::debug!(digest = %id, resumed_from, "resuming a partial download");
            run.reporter.progress(&id, resumed_from);
        }
        let mut sink = ProgressWriter {
            // The ingest writer gathers network chunks into large writes.
            inner: writer,
            reporter: run.reporter.as_ref(),
            id: id.clone(),
            written: resumed_from,
            reported: resumed_from,
        };
        // The ingest writer hashes every byte (those already in the file
        // included) and refuses a mismatch at commit; the client need not
        // hash them a second time.
        let result = run
            .client
            .fetch_blob_sink_verifies(
                &run.repository,
                &desc.digest,
                desc.size,
                resumed_from,
                &mut sink,
            )
            .await;
        if let Err(err) = result {
            // Dropping the ingest writer keeps its partial file (flushed),
            // for the next pull to resume from.
            return Err(match err {
                kiln_registry::Error::NotFound { registry, .. } => {
                    failed(TransferError::MissingBlob {
                        image: run.image.clone(),
                        manifest: self.manifest.to_string(),
                        role: self.role,
                        digest: id,
                        registry,
                    })
                }
                // A registry that mishandles the range: the next attempt
                // starts the partial file over.
                err @ (kiln_registry::Error::BadHeader { .. }
                | kiln_registry::Error::Status { status: 416, .. })
                    if resumed_from > 0 =>
                {
                    Attempt::ResumedBadly {
                        resumed_from,
                        downloaded: sink.written - resumed_from,
                        why: TransferError::Registry(err),
                    }
                }
                other => failed(TransferError::Registry(other)),
            });
        }
        run.reporter.progress(&id, desc.size);
        let writer = sink.inner;
        // Commit verifies size and sha256 over the whole file and fsyncs.
        match blocking(|| writer.commit()) {
            Ok(_) => Ok(desc.size - resumed_from),
            Err(kiln_layers::Error::DigestMismatch { actual, .. }) => {
                // Bytes that do not match their name: say where they came from.
                let err = TransferError::Registry(kiln_registry::Error::DigestMismatch {
                    registry: run.repository.registry.clone(),
                    repository: run.repository.name.clone(),
                    digest: id,
                    actual: actual.to_string(),
                });
                Err(if resumed_from > 0 {
                    Attempt::ResumedBadly {
                        resumed_from,
                        downloaded: desc.size - resumed_from,
                        why: err,
                    }
                } else {
                    failed(err)
                })
            }
            Err(source) => Err(failed(self.store_error(source))),
        }
    }
}
