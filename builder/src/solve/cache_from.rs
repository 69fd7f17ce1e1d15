//! A step taken from a cache from elsewhere (`--cache-from`) when the
//! store has no record of it: its layer is the cache's blob, left where
//! it is until something needs its content ([`super::lazy`]: then it is
//! fetched, and unpacked with its content checked against the diff id).
//! A record is kept in the store, usable once the blob is there, so the
//! next build here finds the step without the source. When no source has
//! the step, it runs.

use kiln_layers::oci::Descriptor;
use kiln_layers::store::CacheRecord;
use kiln_layers::Digest;

use crate::cache::{CachedLayer, CachedStep};

use super::*;

/// Takes the step's result from the first source that has it; false when
/// none has (the step then runs).
pub(super) fn reuse_from_sources(
    run: &StepRun<'_>,
    progress: &mut StageProgress,
    key: &Digest,
) -> Result<bool, SolveError> {
    let Some(sources) = run.build.opts.cache_from else {
        return Ok(false);
    };
    let Some((index, cached)) = sources.lookup(key) else {
        return Ok(false);
    };
    // Every step makes a layer (the empty tar when it changes nothing): a
    // step without one is of no use here, and the step runs.
    let Some(layer) = &cached.layer else {
        return Ok(false);
    };
    let record = take(
        run.build.store,
        progress,
        run.step.history_index,
        &cached,
        layer,
    );
    sources.note_taken(&layer.blob.digest, index);
    if let Some(source) = sources.source(index) {
        source.taken(run.build.store, &layer.blob);
    }
    run.build.store.cache_put(key, &record)?;
    if let Some(source) = sources.source(index) {
        tracing::info!("line {}: CACHED from {}", run.step.line, source.name());
    }
    Ok(true)
}

/// Makes `cached`, with its `layer`, the step's result (the layer's content not fetched);
/// returns the record to keep.
fn take(
    store: &Store,
    progress: &mut StageProgress,
    history_index: usize,
    cached: &CachedStep,
    layer: &CachedLayer,
) -> CacheRecord {
    progress.step_times.insert(history_index, cached.created);
    let out = &mut progress.out;
    let chain = match out.chain() {
        None => layer.diff_id.clone(),
        Some(parent) => Digest::of(format!("{parent} {}", layer.diff_id).as_bytes()),
    };
    out.layers.push((layer.blob.clone(), layer.diff_id.clone()));
    out.snapshots.push(store.snapshot_path(&chain));
    layer_record(layer, chain, cached.created)
}

/// The store's record of a layer taken from a cache.
fn layer_record(layer: &CachedLayer, chain: Digest, created: i64) -> CacheRecord {
    let blob: &Descriptor = &layer.blob;
    CacheRecord {
        blobs: vec![blob.digest.clone()],
        chain_id: Some(chain),
        data: serde_json::json!({
            "created": created,
            "diff_id": layer.diff_id.to_string(),
            "media_type": blob.media_type,
            "size": blob.size,
        }),
    }
}
