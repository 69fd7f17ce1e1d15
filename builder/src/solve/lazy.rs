//! Layers whose content the store does not have yet: taken from a cache
//! (`--cache-from`), or of a base image pulled without its layers. A step
//! records such a layer (its blob, its diff id, where its snapshot will
//! be) without fetching it; the content is fetched and unpacked only when
//! something needs it ([`materialize`]): a step that runs on top of it, a
//! `COPY --from` or mount that reads its stage, the result's export
//! ([`complete_result`]). An image that is only pushed keeps its layers
//! where they are (the push mounts them), so a build whose every step is
//! cached downloads no layer at all.
//!
//! A cache source that cannot give a blob it promised, or whose content is
//! not what its diff id says, is dropped (one warning) and the build
//! fails with [`SolveError::CacheSourceFailed`], which the solver answers
//! by building again without it.

use std::path::PathBuf;

use kiln_layers::oci::Descriptor;
use kiln_layers::store::Image;
use kiln_layers::Digest;

use super::*;

/// What the result must have in the store when the solver returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResultContent {
    /// Every layer blob: the image is whole in the store.
    #[default]
    Blobs,
    /// Every layer unpacked too (an output of the root filesystem).
    Snapshots,
    /// Layers may stay where a cache or a registry has them (the image is
    /// only pushed, to where they can be mounted from).
    Lazy,
}

/// Makes every snapshot of `out` present: each layer's blob fetched when
/// the store lacks it, and unpacked over the ones below.
pub(super) fn materialize(build: &Build<'_>, out: &StageOutput) -> Result<(), SolveError> {
    let diff_ids: Vec<Digest> = out.layers.iter().map(|(_, d)| d.clone()).collect();
    let chains = kiln_layers::chain_ids(&diff_ids);
    let wanted: Vec<&Descriptor> = out
        .layers
        .iter()
        .zip(&chains)
        .filter(|(_, chain)| !build.store.has_snapshot(chain))
        .map(|((layer, _), _)| layer)
        .collect();
    ensure_blobs(build, &wanted)?;
    for (i, ((layer, diff_id), chain)) in out.layers.iter().zip(&chains).enumerate() {
        if build.store.has_snapshot(chain) {
            continue;
        }
        let lowers: Vec<PathBuf> = out.snapshots[..i].iter().rev().cloned().collect();
        let unpacked =
            build
                .store
                .unpack_snapshot(layer, diff_id, chain, lowers, build.opts.reporter);
        if let Err(e) = unpacked {
            return Err(match taken_from(build, layer) {
                Some(index) => source_failed(build, index, format!("layer {}: {e}", layer.digest)),
                None => e.into(),
            });
        }
    }
    Ok(())
}

/// The snapshots of an image (`COPY --from=<image>`, a mount from one),
/// its missing blobs fetched first.
pub(super) fn image_snapshots(
    build: &Build<'_>,
    image: &Image,
) -> Result<Vec<PathBuf>, SolveError> {
    let layers: Vec<&Descriptor> = image.manifest.layers.iter().collect();
    ensure_blobs(build, &layers)?;
    Ok(build.store.prepare_snapshots(image, build.opts.reporter)?)
}

/// How many blobs are fetched at once (as a pull).
const PARALLEL_FETCHES: usize = 6;

/// [`ensure_blob`] for each of `blobs`, several at once; the first error
/// is returned.
fn ensure_blobs(build: &Build<'_>, blobs: &[&Descriptor]) -> Result<(), SolveError> {
    let missing: Vec<&Descriptor> = blobs
        .iter()
        .copied()
        .filter(|b| !build.store.has_blob(&b.digest))
        .collect();
    if missing.len() < 2 {
        return missing.iter().try_for_each(|b| ensure_blob(build, b));
    }
    let next = AtomicU64::new(0);
    let first_error: Mutex<Option<SolveError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL_FETCHES.min(missing.len()) {
            scope.spawn(|| {
                while let Some(blob) = missing.get(next.fetch_add(1, Ordering::Relaxed) as usize) {
                    if let Err(e) = ensure_blob(build, blob) {
                        if let Ok(mut first) = first_error.lock() {
                            first.get_or_insert(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    match first_error.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Puts `blob` into the store unless it is there: from the cache source
/// it was taken from, else from where its image was pulled.
pub(super) fn ensure_blob(build: &Build<'_>, blob: &Descriptor) -> Result<(), SolveError> {
    if build.store.has_blob(&blob.digest) {
        return Ok(());
    }
    let Some(index) = taken_from(build, blob) else {
        return build.resolver.fetch_blob(blob);
    };
    let source = build
        .opts
        .cache_from
        .and_then(|s| s.source(index))
        .ok_or_else(|| SolveError::CacheSourceFailed("a cache source failed".into()))?;
    source
        .fetch(build.store, blob)
        .map_err(|e| source_failed(build, index, format!("fetching layer {}: {e}", blob.digest)))
}

/// Gives the result what `build.opts.result` asks of it.
pub(super) fn complete_result(build: &Build<'_>, target: &StageOutput) -> Result<(), SolveError> {
    match build.opts.result {
        ResultContent::Blobs => {
            let layers: Vec<&Descriptor> = target.layers.iter().map(|(l, _)| l).collect();
            ensure_blobs(build, &layers)
        }
        ResultContent::Snapshots => materialize(build, target),
        ResultContent::Lazy => {
            for (layer, _) in &target.layers {
                keep_lazy(build, layer)?;
            }
            Ok(())
        }
    }
}

/// A result layer the store lacks stays where it is: a cache source makes
/// sure it is there (and says where, for the push); a base image's was
/// noted where it was pulled from.
fn keep_lazy(build: &Build<'_>, blob: &Descriptor) -> Result<(), SolveError> {
    if build.store.has_blob(&blob.digest) {
        return Ok(());
    }
    let Some(index) = taken_from(build, blob) else {
        return Ok(());
    };
    let source = build
        .opts
        .cache_from
        .and_then(|s| s.source(index))
        .ok_or_else(|| SolveError::CacheSourceFailed("a cache source failed".into()))?;
    source
        .keep_lazy(build.store, blob)
        .map_err(|e| source_failed(build, index, format!("layer {}: {e}", blob.digest)))
}

/// The cache source `blob` was taken from, if it was.
fn taken_from(build: &Build<'_>, blob: &Descriptor) -> Option<usize> {
    build.opts.cache_from?.taken_from(&blob.digest)
}

/// Drops source `index` (one warning) and says so to the solver.
fn source_failed(build: &Build<'_>, index: usize, why: String) -> SolveError {
    if let Some(sources) = build.opts.cache_from {
        sources.fail(index, &why);
    }
    SolveError::CacheSourceFailed(why)
}

/// The blobs a finished build can still fetch (for its cache exports): a
/// layer's from the cache source it was taken from, else from where its
/// image was pulled. (Every platform's resolver of a build has the same
/// store and puller: any one of them fetches any image's blob.)
pub struct BuildBlobs<'a> {
    pub sources: &'a crate::cache::CacheSources<'a>,
    pub resolver: &'a StoreResolver<'a>,
}

impl crate::cache::BlobProvider for BuildBlobs<'_> {
    fn provide(
        &self,
        store: &kiln_layers::Store,
        blob: &Descriptor,
    ) -> Result<(), crate::session::RemoteError> {
        if store.has_blob(&blob.digest) {
            return Ok(());
        }
        match self.sources.taken_from(&blob.digest) {
            Some(index) => self
                .sources
                .source(index)
                .ok_or("its cache source failed")?
                .fetch(store, blob),
            None => Ok(self.resolver.fetch_blob(blob)?),
        }
    }
}
