//! A step taken from a cache from elsewhere (`--cache-from`) when the
//! store has no record of it: its layer is the cache's blob, fetched and
//! unpacked (its content checked against the diff id), and a record is
//! kept in the store so the next build here finds it without the source.
//! A source that fails is dropped with a warning ([`CacheSources::fail`])
//! and the next one is asked; when none has the step, it runs.

use kiln_layers::oci::Descriptor;
use kiln_layers::store::CacheRecord;
use kiln_layers::Digest;

use crate::cache::{CachedLayer, CachedStep};

use super::*;

/// Reuses the step's result from the first source that has it and can
/// deliver it; false when none can (the step then runs).
pub(super) fn reuse_from_sources(
    run: &StepRun<'_>,
    progress: &mut StageProgress,
    key: &Digest,
) -> Result<bool, SolveError> {
    let Some(sources) = run.build.opts.cache_from else {
        return Ok(false);
    };
    while let Some((index, cached)) = sources.lookup(key) {
        match apply(run, progress, index, &cached) {
            Ok(record) => {
                run.build.store.cache_put(key, &record)?;
                tracing::info!(
                    "line {}: CACHED from {}",
                    run.step.line,
                    sources.source(index).map(|s| s.name()).unwrap_or_default()
                );
                return Ok(true);
            }
            Err(why) => sources.fail(index, &why),
        }
    }
    Ok(false)
}

/// Makes `cached` the step's result; returns the record to keep. An error
/// (the source's blob could not be fetched or is not what it claims) is
/// the source's, and leaves `progress` as it was.
fn apply(
    run: &StepRun<'_>,
    progress: &mut StageProgress,
    source: usize,
    cached: &CachedStep,
) -> Result<CacheRecord, String> {
    let history_index = run.step.history_index;
    let Some(layer) = &cached.layer else {
        progress.empty_steps.push(history_index);
        progress.step_times.insert(history_index, cached.created);
        return Ok(CacheRecord {
            blobs: Vec::new(),
            chain_id: progress.out.chain(),
            data: serde_json::json!({ "empty": true, "created": cached.created }),
        });
    };
    let chain = match progress.out.chain() {
        None => layer.diff_id.clone(),
        Some(parent) => Digest::of(format!("{parent} {}", layer.diff_id).as_bytes()),
    };
    unpack(run, &progress.out, source, layer, &chain)?;
    let out = &mut progress.out;
    out.layers.push((layer.blob.clone(), layer.diff_id.clone()));
    out.snapshots.push(run.build.store.snapshot_path(&chain));
    progress.step_times.insert(history_index, cached.created);
    Ok(layer_record(layer, chain, cached.created))
}

/// Fetches the layer's blob from the source unless the store has it, and
/// unpacks it as the snapshot `chain` over the stage's snapshots so far.
fn unpack(
    run: &StepRun<'_>,
    out: &StageOutput,
    source: usize,
    layer: &CachedLayer,
    chain: &Digest,
) -> Result<(), String> {
    let build = run.build;
    let (store, reporter) = (build.store, build.opts.reporter);
    if build.store.has_snapshot(chain) {
        return Ok(());
    }
    if !store.has_blob(&layer.blob.digest) {
        let source = build
            .opts
            .cache_from
            .and_then(|s| s.source(source))
            .ok_or("the source failed")?;
        source
            .fetch(store, &layer.blob)
            .map_err(|e| format!("fetching layer {}: {e}", layer.blob.digest))?;
    }
    store
        .unpack_snapshot(
            &layer.blob,
            &layer.diff_id,
            chain,
            out.lowers_top_first(),
            reporter,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
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
