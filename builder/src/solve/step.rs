//! One step: reused from the build cache, or run into a fresh upper dir
//! that becomes its layer and snapshot.

use std::path::Path;

use kiln_layers::diff::{write_layer, DiffOptions};
use kiln_layers::oci::Descriptor;
use kiln_layers::store::CacheRecord;
use kiln_layers::{Compression, Digest};
use kiln_parser::shorten;

use crate::plan::StepKind;
use crate::rootfs::LayeredRootfs;

use super::*;

/// Runs (or reuses) one step; returns whether it came from the cache. In
/// a multi-platform build, a key another platform's solve is running is
/// waited for, and one it ran is reused ([`SharedSteps`]).
pub(super) fn run_step(
    run: &StepRun<'_>,
    progress: &mut StageProgress,
) -> Result<bool, SolveError> {
    let shared = run.build.opts.shared.zip(run.step.cache_key.as_ref());
    let Some((shared, key)) = shared else {
        return run_and_record(run, progress, false);
    };
    let slot = shared.slot(key);
    let mut done_in_build = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cached = run_and_record(run, progress, *done_in_build)?;
    *done_in_build = true;
    Ok(cached)
}

/// Runs or reuses the step, then records its result for the cache
/// exporters.
fn run_and_record(
    run: &StepRun<'_>,
    progress: &mut StageProgress,
    done_in_build: bool,
) -> Result<bool, SolveError> {
    let layers_before = progress.out.layers.len();
    let cached = run_or_reuse(run, progress, done_in_build)?;
    progress.record_result(run.step, layers_before);
    Ok(cached)
}

/// Reuses the step's result from a cache (whatever `--no-cache` says when
/// `done_in_build`: this build made it), or runs it.
fn run_or_reuse(
    run: &StepRun<'_>,
    progress: &mut StageProgress,
    done_in_build: bool,
) -> Result<bool, SolveError> {
    let (step, opts) = (run.step, run.build.opts);
    refuse_names_without_files(run, progress)?;
    if from_cache(run, progress, done_in_build)? {
        tracing::info!("line {}: CACHED {}", step.line, shorten(&step.instruction));
        return Ok(true);
    }
    let no_cache = opts.no_cache || opts.no_cache_stages.contains(&step.stage);
    let why = match (&step.cache_key, no_cache) {
        (None, _) => "no cache key".to_string(),
        (Some(_), true) => "--no-cache".to_string(),
        (Some(key), false) => format!("cache miss {key}"),
    };
    tracing::info!("line {}: {why}: {}", step.line, shorten(&step.instruction));
    // The step runs on the layers below: their content is needed now.
    super::lazy::materialize(run.build, &progress.out)?;
    let dir = run.build.work.join(unique_name("step"));
    let upper = dir.join("upper");
    std::fs::create_dir_all(&upper).map_err(io_err(&upper))?;
    let rootfs = LayeredRootfs::new(&upper, progress.out.lowers_top_first());
    let reuse = match &step.kind {
        StepKind::Copy(c) => copy_reuse(run, c, progress),
        _ => None,
    };
    match &step.kind {
        StepKind::Run(r) => execute_run(run, r, &rootfs, &dir)?,
        StepKind::Copy(c) => {
            let copied = execute_copy(run, c, &rootfs, &dir, reuse.as_ref());
            if let Some((_, reuse)) = &reuse {
                reuse.mark_linked(run.build.store);
            }
            copied?
        }
        StepKind::Workdir(w) => execute_workdir(run, w, &rootfs)?,
    }
    tracing::debug!("line {}: step finished, packing its layer", step.line);
    let (record, leftover) = commit_layer(run, progress, &upper)?;
    // The layer's blob, the copy's shape and the step's cache record are
    // fsynced and renamed on threads of their own, side by side with each
    // other and with what the build does next; `solve` waits for them
    // before it returns (`Store::settle_writes`).
    if let (Some((key, reuse)), Some(chain)) = (&reuse, &record.chain_id) {
        tracing::info!(
            "line {}: {} unchanged files linked from an earlier run",
            step.line,
            reuse.linked()
        );
        reuse.save(run.build.store, key, chain);
    }
    discard_step_dir(run.build.store, &dir, &upper, &leftover);
    if let Some(key) = &step.cache_key {
        run.build.store.cache_put_in_background(key, &record)?;
    }
    Ok(false)
}

/// Refuses a COPY/ADD `--chown` or a WORKDIR's USER that names a user or
/// group on a stage with no layer yet (`FROM scratch`, or an image
/// without layers): BuildKit has no filesystem to read `/etc/passwd`
/// from there and fails the step ("invalid user index -1" from its file
/// op's owner on a scratch input, "invalid missing user mount" on an
/// image without layers), where a stage with files but not the name gets
/// root. Asked before the cache, so that the answer does not depend on
/// what an earlier kiln cached.
fn refuse_names_without_files(
    run: &StepRun<'_>,
    progress: &StageProgress,
) -> Result<(), SolveError> {
    if !progress.out.layers.is_empty() {
        return Ok(());
    }
    let (spec, what) = match &run.step.kind {
        StepKind::Copy(c) => match &c.chown {
            Some(spec) => (spec, format!("--chown={spec}")),
            None => return Ok(()),
        },
        StepKind::Workdir(w) => match &w.user {
            Some(user) => (user, format!("USER {user}")),
            None => return Ok(()),
        },
        StepKind::Run(_) => return Ok(()),
    };
    if !crate::users::ChownSpec::parse(spec).names_a_user_or_group() {
        return Ok(());
    }
    Err(run.error(format!(
        "{what}: the stage has no files yet (FROM scratch), so there is no /etc/passwd \
         or /etc/group to look a name up in (BuildKit fails here too: \"invalid user index \
         -1\"); give numeric ids (UID:GID), or copy those files in first"
    )))
}

/// The shape key and reuse state of a COPY from the build context that
/// runs ([`crate::copy_reuse`]); `None` for any other copy.
fn copy_reuse(
    run: &StepRun<'_>,
    c: &crate::plan::CopyStep,
    progress: &StageProgress,
) -> Option<(Digest, std::sync::Arc<crate::copy_reuse::Reuse>)> {
    let eligible =
        matches!(c.from, crate::plan::CopyFrom::Context) && !c.is_add && c.inline.is_empty();
    if !eligible {
        return None;
    }
    let chain = progress.out.chain();
    let key = crate::copy_reuse::shape_key(chain.as_ref(), &run.step.instruction);
    // `--no-cache` builds from nothing earlier, this included; what it
    // wrote is still recorded for the next build.
    let opts = run.build.opts;
    let reuse = if opts.no_cache || opts.no_cache_stages.contains(&run.step.stage) {
        crate::copy_reuse::Reuse::default()
    } else {
        crate::copy_reuse::Reuse::load(run.build.store, &key)
    };
    Some((key, std::sync::Arc::new(reuse)))
}

/// Reuses the step's cache record when there is a usable one (and no
/// `--no-cache`, unless the record is this build's own).
fn from_cache(
    run: &StepRun<'_>,
    progress: &mut StageProgress,
    done_in_build: bool,
) -> Result<bool, SolveError> {
    let (step, store) = (run.step, run.build.store);
    let opts = run.build.opts;
    let no_cache = !done_in_build && (opts.no_cache || opts.no_cache_stages.contains(&step.stage));
    let Some(key) = step.cache_key.as_ref().filter(|_| !no_cache) else {
        return Ok(false);
    };
    let Some(record) = store.cache_get(key)? else {
        return super::cache_from::reuse_from_sources(run, progress, key);
    };
    if !reuse(run.build, &record, progress)? {
        tracing::info!("line {}: cache record unusable, running", step.line);
        return super::cache_from::reuse_from_sources(run, progress, key);
    }
    // Its last use, which the store's collection goes by (least recently
    // used first).
    if let Err(e) = store.touch_cache(key) {
        tracing::debug!("{e}");
    }
    let created = record
        .data
        .get("created")
        .and_then(|v| v.as_i64())
        .unwrap_or_else(now_secs);
    progress.step_times.insert(step.history_index, created);
    Ok(true)
}

/// Turns the step's upper dir into its layer and snapshot (an empty tar
/// and an empty snapshot when it is empty); returns the cache record to
/// keep, and what is known of the upper dir should it be left over and
/// parked.
fn commit_layer(
    run: &StepRun<'_>,
    progress: &mut StageProgress,
    upper: &Path,
) -> Result<(CacheRecord, Leftover), SolveError> {
    let (store, opts, step) = (run.build.store, run.build.opts, run.step);
    let now = now_secs();
    progress.step_times.insert(step.history_index, now);
    let out = &mut progress.out;
    // An upper dir left empty makes a layer too, the empty tar (its diff
    // id is the digest of two zero blocks), as BuildKit's exporter writes
    // one for every RUN, COPY and WORKDIR that changed nothing.
    let diff_options = DiffOptions {
        source_date_epoch: opts.layer_epoch,
        overlay_whiteouts: true,
        write_back: true,
        commit_in_background: true,
    };
    // Packing is part of the step's own progress line: no separate item.
    // Layers are stored as plain tar (the digest is the diff id); they are
    // compressed when they leave the store (`kiln_layers::compressed`).
    let blob = write_layer(
        store,
        upper,
        Compression::None,
        &diff_options,
        &kiln_layers::NoProgress,
    )?;
    let chain = match out.chain() {
        None => blob.diff_id.clone(),
        Some(parent) => Digest::of(format!("{parent} {}", blob.diff_id).as_bytes()),
    };
    let snapshot = store.snapshot_path(&chain);
    if !store.has_snapshot(&chain) {
        // The upper dir already has overlay whiteouts: it is the snapshot.
        // Should moving it fail, the layer is unpacked.
        match store.adopt_snapshot(upper, &chain) {
            Ok(true) => {
                // Its size, for the collection, which need not walk it.
                if let Err(e) = store.note_snapshot_size(&chain, &blob.tree) {
                    tracing::debug!("{e}");
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::debug!("{}: {e}; unpacking the layer instead", upper.display());
                store.unpack_snapshot(
                    &blob.descriptor,
                    &blob.diff_id,
                    &chain,
                    out.lowers_top_first(),
                    opts.reporter,
                )?;
            }
        }
    }
    out.layers
        .push((blob.descriptor.clone(), blob.diff_id.clone()));
    out.snapshots.push(snapshot);
    let record = CacheRecord {
        blobs: vec![blob.descriptor.digest.clone()],
        chain_id: Some(chain),
        data: serde_json::json!({
            "created": now,
            "diff_id": blob.diff_id.to_string(),
            "media_type": blob.descriptor.media_type,
            "size": blob.descriptor.size,
        }),
    };
    // Should the upper dir be left (a duplicate of a snapshot already
    // there), what parking it keeps on disk: estimated for its name (the
    // tar's bytes plus a block and an inode's worth an entry), and as the
    // tar's walk found it.
    let leftover = Leftover {
        bytes: blob
            .descriptor
            .size
            .saturating_add(blob.entries.saturating_mul(4096)),
        tree: Some(blob.tree),
    };
    Ok((record, leftover))
}

/// Applies a cache record; false if it cannot be used (then the step
/// runs). The snapshot is made when something needs it
/// ([`super::lazy::materialize`]).
fn reuse(
    build: &Build<'_>,
    record: &CacheRecord,
    progress: &mut StageProgress,
) -> Result<bool, SolveError> {
    let (Some(layer), Some(diff_id), Some(media_type), Some(size)) = (
        record.blobs.first(),
        record.data.get("diff_id").and_then(|v| v.as_str()),
        record.data.get("media_type").and_then(|v| v.as_str()),
        record.data.get("size").and_then(|v| v.as_u64()),
    ) else {
        return Ok(false);
    };
    let Ok(diff_id) = Digest::parse(diff_id) else {
        return Ok(false);
    };
    let descriptor = Descriptor::new(media_type, layer.clone(), size);
    let out = &mut progress.out;
    let chain = match out.chain() {
        None => diff_id.clone(),
        Some(parent) => Digest::of(format!("{parent} {diff_id}").as_bytes()),
    };
    out.layers.push((descriptor, diff_id));
    out.snapshots.push(build.store.snapshot_path(&chain));
    Ok(true)
}
