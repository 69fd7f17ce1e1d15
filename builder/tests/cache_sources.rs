//! The solver and `--cache-from` sources ([`kiln_builder::cache`]), with a
//! source made in the test from another store's build: a step it has is
//! taken (not run), the stages only such steps read are not run, and a
//! source that cannot deliver is one warning, after which the build runs
//! what it needs — the stage it had left out included. Needs root (RUN in
//! namespaces).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use kiln_builder::cache::{CacheSource, CacheSources, CachedLayer, CachedStep, StepResult};
use kiln_builder::context::BuildContext;
use kiln_builder::dockerignore::PatternMatcher;
use kiln_builder::plan::{compute_cache_keys, plan, BuildOptions, RemoteSources};
use kiln_builder::session::RemoteError;
use kiln_builder::solve::{
    solve, BuildEvents, BuiltImage, ResultContent, SolveOptions, StepEvent, StepOutcome,
    StoreResolver,
};
use kiln_layers::oci::Descriptor;
use kiln_layers::{Digest, NoProgress, Platform, Store};
use kiln_runtime::{HelperCommand, Network};

const DOCKERFILE: &str = "FROM busybox:test AS build\n\
    RUN head -c 16 /dev/urandom | od -An -tx1 > /made\n\
    FROM busybox:test\n\
    COPY --from=build /made /made\n";

/// What the steps did (instruction, taken from a cache) and the warnings.
#[derive(Default)]
struct Events {
    steps: Mutex<Vec<(String, bool)>>,
    warnings: Mutex<Vec<String>>,
}

impl BuildEvents for Events {
    fn step_started(&self, _: &StepEvent<'_>) {}
    fn step_done(&self, step: &StepEvent<'_>, outcome: &StepOutcome) {
        if step.number > 1 {
            self.steps.lock().unwrap().push((
                step.instruction.to_string(),
                *outcome == StepOutcome::Cached,
            ));
        }
    }
    fn build_warning(&self, message: &str) {
        self.warnings.lock().unwrap().push(message.to_string());
    }
}

impl Events {
    fn ran(&self, prefix: &str) -> bool {
        self.steps
            .lock()
            .unwrap()
            .iter()
            .any(|(i, cached)| i.starts_with(prefix) && !cached)
    }
}

/// The results of a build in `origin`, served from there (or, `broken`,
/// failing to). A `lazy` one leaves a layer of a result that is only
/// pushed where it is, as a registry's does.
struct StoreSource {
    origin: Store,
    steps: BTreeMap<Digest, CachedStep>,
    broken: bool,
    lazy: bool,
}

impl StoreSource {
    fn new(origin: &Store, results: &[StepResult], broken: bool) -> StoreSource {
        let steps = results
            .iter()
            .map(|r| {
                let layer = r.layer.as_ref().map(|(blob, diff_id)| CachedLayer {
                    blob: blob.clone(),
                    diff_id: diff_id.clone(),
                });
                let step = CachedStep {
                    created: r.created,
                    layer,
                };
                (r.key.clone(), step)
            })
            .collect();
        StoreSource {
            origin: origin.clone(),
            steps,
            broken,
            lazy: false,
        }
    }
}

impl CacheSource for StoreSource {
    fn name(&self) -> String {
        "test source".into()
    }
    fn lookup(&self, key: &Digest) -> Option<CachedStep> {
        self.steps.get(key).cloned()
    }
    fn keep_lazy(&self, store: &Store, blob: &Descriptor) -> Result<(), RemoteError> {
        match self.lazy {
            true => Ok(()),
            false => self.fetch(store, blob),
        }
    }
    fn fetch(&self, store: &Store, blob: &Descriptor) -> Result<(), RemoteError> {
        if self.broken {
            return Err("the blob is gone".into());
        }
        let mut from = self.origin.open_blob(&blob.digest)?;
        let mut ingest = store.ingest(Some(blob.clone()))?;
        std::io::copy(&mut from, &mut ingest)?;
        ingest.commit()?;
        Ok(())
    }
}

fn build(
    store: &Store,
    context: &Path,
    sources: &[Box<dyn CacheSource>],
    events: &Events,
    result: ResultContent,
) -> BuiltImage {
    let typed =
        kiln_parser::instructions::from_ast(&kiln_parser::parse(DOCKERFILE, "Dockerfile").unwrap())
            .unwrap();
    let opts = BuildOptions {
        target_platform: Platform::parse("linux/amd64").unwrap(),
        build_platform: Platform::parse("linux/amd64").unwrap(),
        ..Default::default()
    };
    let resolver = StoreResolver::new(store, None);
    let mut p = plan(&typed, &opts, &resolver).unwrap();
    let ignore = PatternMatcher::new(Vec::<String>::new()).unwrap();
    let ctx = BuildContext::load(context, &ignore, None).unwrap();
    compute_cache_keys(&mut p, Some(&ctx), &RemoteSources::default()).unwrap();
    let cache_from = CacheSources::new(sources, events);
    let solve_opts = SolveOptions {
        no_cache: false,
        no_cache_stages: Default::default(),
        source_date_epoch: Some(1_700_000_000),
        layer_epoch: Some(1_700_000_000),
        network: Network::None,
        networks: None,
        snapshotter: kiln_runtime::Snapshotter::Overlay,
        chroot: false,
        helper: HelperCommand::subcommand_of(env!("CARGO_BIN_EXE_kiln-builder-test-helper")),
        downloads: None,
        events,
        reporter: &NoProgress,
        docker_media_types: false,
        secrets: Default::default(),
        ssh: Default::default(),
        limits: Default::default(),
        shared: None,
        cache_from: Some(&cache_from),
        inline_cache: false,
        result,
        named_contexts: None,
    };
    solve(store, &p, &ctx, &resolver, &solve_opts).unwrap()
}

#[test]
fn steps_from_a_source_and_the_stages_they_spare() {
    if !kiln_testsupport::require_root("RUN in namespaces") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let context = dir.path().join("ctx");
    std::fs::create_dir(&context).unwrap();
    let origin = common::store_with_busybox(&dir.path().join("origin"));
    let first = build(
        &origin,
        &context,
        &[],
        &Events::default(),
        ResultContent::Blobs,
    );
    // Only the last stage's step, as `mode=min` exports it.
    let last: Vec<StepResult> = first
        .steps
        .iter()
        .filter(|s| s.stage == 1)
        .cloned()
        .collect();
    assert_eq!(last.len(), 1);

    let store = common::store_with_busybox(&dir.path().join("second"));
    let events = Events::default();
    let sources: Vec<Box<dyn CacheSource>> =
        vec![Box::new(StoreSource::new(&origin, &last, false))];
    let second = build(&store, &context, &sources, &events, ResultContent::Blobs);
    assert_eq!(second.config.rootfs, first.config.rootfs, "the same layers");
    let steps = events.steps.lock().unwrap().clone();
    assert_eq!(
        steps,
        vec![("COPY --from=build /made /made".to_string(), true)]
    );
    assert!(events.warnings.lock().unwrap().is_empty());

    // A source that cannot deliver: one warning; the step runs, and the
    // stage it reads, left out at first, is built after all.
    let store = common::store_with_busybox(&dir.path().join("third"));
    let events = Events::default();
    let sources: Vec<Box<dyn CacheSource>> = vec![Box::new(StoreSource::new(&origin, &last, true))];
    let third = build(&store, &context, &sources, &events, ResultContent::Blobs);
    let warnings = events.warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("test source") && warnings[0].contains("the blob is gone"));
    assert!(events.ran("RUN head") && events.ran("COPY --from=build"));
    assert_ne!(third.config.rootfs, first.config.rootfs, "made anew");
}

/// A result that is only pushed keeps a layer taken from a source where
/// the source has it; the store's record of that step, whose layer it
/// lacks, is then not used by a build without the source: the step runs,
/// with the stage it reads, and the result is whole in the store.
#[test]
fn a_record_whose_layer_stayed_in_a_source_is_not_used_without_it() {
    if !kiln_testsupport::require_root("RUN in namespaces") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let context = dir.path().join("ctx");
    std::fs::create_dir(&context).unwrap();
    let origin = common::store_with_busybox(&dir.path().join("origin"));
    let first = build(
        &origin,
        &context,
        &[],
        &Events::default(),
        ResultContent::Blobs,
    );
    let last: Vec<StepResult> = first
        .steps
        .iter()
        .filter(|s| s.stage == 1)
        .cloned()
        .collect();
    let copied = last[0].layer.clone().expect("the COPY's layer").0;

    let store = common::store_with_busybox(&dir.path().join("second"));
    let mut source = StoreSource::new(&origin, &last, false);
    source.lazy = true;
    let sources: Vec<Box<dyn CacheSource>> = vec![Box::new(source)];
    let events = Events::default();
    let lazy = build(&store, &context, &sources, &events, ResultContent::Lazy);
    assert_eq!(lazy.config.rootfs, first.config.rootfs);
    assert!(!events.ran("COPY --from=build") && !events.ran("RUN head"));
    assert!(
        !store.has_blob(&copied.digest),
        "the layer stayed in the source"
    );

    let events = Events::default();
    let alone = build(&store, &context, &[], &events, ResultContent::Blobs);
    assert!(events.ran("RUN head") && events.ran("COPY --from=build"));
    assert_ne!(alone.config.rootfs, first.config.rootfs, "made anew");
    for layer in &alone.layers {
        assert!(store.has_blob(&layer.digest), "{}", layer.digest);
    }
}
