//! End-to-end builds with the real runtime (namespaces, overlay) and a real
//! store: a busybox base image imported into a temp store, Dockerfiles
//! built, layers read back from the store and checked. Needs root and
//! busybox-static (scripts/setup installs it).

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kiln_builder::context::BuildContext;
use kiln_builder::dockerignore::PatternMatcher;
use kiln_builder::plan::{compute_cache_keys, plan, BuildOptions, RemoteSources};
use kiln_builder::secrets::Secret;
use kiln_builder::solve::{
    solve, BuildEvents, BuiltImage, SolveError, SolveOptions, StepEvent, StepOutcome, StoreResolver,
};
use kiln_layers::import::{import_rootfs, ImportOptions};
use kiln_layers::{NoProgress, Platform, Reference, Store};
use kiln_runtime::{HelperCommand, Network};

#[derive(Default)]
struct Events(Mutex<Vec<(String, bool)>>);

impl BuildEvents for Events {
    fn step_started(&self, _: &StepEvent<'_>) {}
    fn step_done(&self, step: &StepEvent<'_>, outcome: &StepOutcome) {
        // The FROM vertex (step 1) is not a cached/built step of its own.
        if step.number > 1 {
            self.0.lock().unwrap().push((
                step.instruction.to_string(),
                *outcome == StepOutcome::Cached,
            ));
        }
    }
    fn step_output(&self, _: &StepEvent<'_>, _: &str) {}
}

fn build(
    store: &Store,
    context: &Path,
    dockerfile: &str,
    events: &Events,
) -> Result<BuiltImage, SolveError> {
    build_with(store, context, dockerfile, events, Some(1_700_000_000))
}

fn build_with(
    store: &Store,
    context: &Path,
    dockerfile: &str,
    events: &Events,
    source_date_epoch: Option<i64>,
) -> Result<BuiltImage, SolveError> {
    build_full(
        store,
        context,
        dockerfile,
        events,
        source_date_epoch,
        false,
        &[],
    )
}

fn build_full(
    store: &Store,
    context: &Path,
    dockerfile: &str,
    events: &Events,
    source_date_epoch: Option<i64>,
    docker_media_types: bool,
    secrets: &[(&str, &Path)],
) -> Result<BuiltImage, SolveError> {
    let typed =
        kiln_parser::instructions::from_ast(&kiln_parser::parse(dockerfile, "Dockerfile").unwrap())
            .unwrap();
    let opts = BuildOptions {
        target_platform: Platform::parse("linux/amd64").unwrap(),
        build_platform: Platform::parse("linux/amd64").unwrap(),
        ..Default::default()
    };
    let resolver = StoreResolver::new(store, None);
    let mut p = plan(&typed, &opts, &resolver).unwrap();
    // Its .dockerignore's patterns (one per line), if it has one.
    let ignore = std::fs::read_to_string(context.join(".dockerignore")).unwrap_or_default();
    let patterns = ignore.lines().filter(|l| !l.trim().is_empty());
    let ctx = BuildContext::load(context, &PatternMatcher::new(patterns).unwrap(), None).unwrap();
    compute_cache_keys(&mut p, Some(&ctx), &RemoteSources::default()).unwrap();
    let solve_opts = SolveOptions {
        named_contexts: None,
        no_cache: false,
        no_cache_stages: Default::default(),
        source_date_epoch,
        layer_epoch: source_date_epoch,
        network: Network::None,
        networks: None,
        snapshotter: kiln_runtime::Snapshotter::Overlay,
        chroot: false,
        helper: HelperCommand::subcommand_of(env!("CARGO_BIN_EXE_kiln-builder-test-helper")),
        downloads: None,
        events,
        reporter: &NoProgress,
        docker_media_types,
        secrets: secrets
            .iter()
            .map(|(k, v)| (k.to_string(), Secret::from_bytes(std::fs::read(v).unwrap())))
            .chain([("mem".to_string(), Secret::from_bytes("in-memory"))])
            .collect(),
        ssh: Default::default(),
        limits: Default::default(),
        shared: None,
        cache_from: None,
        inline_cache: false,
        result: Default::default(),
    };
    solve(store, &p, &ctx, &resolver, &solve_opts)
}

/// Each layer's entries: path → (kind char, content for small files).
fn layer_entries(store: &Store, image: &BuiltImage, index: usize) -> Vec<(String, char, String)> {
    let blob = store.open_blob(&image.layers[index].digest).unwrap();
    let mut archive = tar::Archive::new(kiln_layers::compress::decompress(blob).unwrap());
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let kind = match entry.header().entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            _ => 'f',
        };
        let mut content = String::new();
        if kind == 'f' && entry.size() < 100 {
            entry.read_to_string(&mut content).unwrap();
        }
        out.push((path, kind, content));
    }
    out
}

const DOCKERFILE: &str = r#"FROM busybox:test AS base
RUN echo built > /built.txt && rm /etc/motd

FROM base
WORKDIR /app
COPY hello.txt ./
ARG GREETING=hi
RUN echo "$GREETING $(cat hello.txt)" > out.txt
ENV K=v
CMD ["cat", "/app/out.txt"]
"#;

#[test]
fn multi_stage_build_layers_cache_and_reproducibility() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_with_busybox(dir.path());
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("hello.txt"), "hello").unwrap();

    let events = Events::default();
    let image = build(&store, &ctx, DOCKERFILE, &events).unwrap();
    let config = image.config.config.clone().unwrap();
    assert_eq!(
        config.cmd,
        Some(vec!["cat".to_string(), "/app/out.txt".to_string()])
    );
    assert_eq!(config.working_dir.as_deref(), Some("/app"));
    assert!(config.env.unwrap().contains(&"K=v".to_string()));
    // base + RUN + WORKDIR + COPY + RUN
    assert_eq!(image.layers.len(), 5);
    assert_eq!(image.config.rootfs.diff_ids.len(), 5);
    let non_empty = image
        .config
        .history
        .iter()
        .filter(|h| h.empty_layer != Some(true))
        .count();
    assert_eq!(non_empty, 5, "{:#?}", image.config.history);
    assert!(events.0.lock().unwrap().iter().all(|(_, cached)| !cached));

    let run1 = layer_entries(&store, &image, 1);
    assert!(
        run1.contains(&("built.txt".into(), 'f', "built\n".into())),
        "{run1:?}"
    );
    assert!(run1.iter().any(|(p, _, _)| p == "etc/.wh.motd"), "{run1:?}");
    let copy = layer_entries(&store, &image, 3);
    assert!(
        copy.contains(&("app/hello.txt".into(), 'f', "hello".into())),
        "{copy:?}"
    );
    let run2 = layer_entries(&store, &image, 4);
    assert!(
        run2.contains(&("app/out.txt".into(), 'f', "hi hello\n".into())),
        "{run2:?}"
    );

    // Nothing changed: every step is a cache hit and the image is identical.
    let events = Events::default();
    let again = build(&store, &ctx, DOCKERFILE, &events).unwrap();
    assert!(
        events.0.lock().unwrap().iter().all(|(_, cached)| *cached),
        "{:?}",
        events.0.lock().unwrap()
    );
    assert_eq!(again.manifest.digest, image.manifest.digest);

    // One context file changed: the COPY and what follows run again.
    std::fs::write(ctx.join("hello.txt"), "HELLO").unwrap();
    let events = Events::default();
    let changed = build(&store, &ctx, DOCKERFILE, &events).unwrap();
    let cached: Vec<bool> = events.0.lock().unwrap().iter().map(|(_, c)| *c).collect();
    assert_eq!(cached, [true, true, false, false]);
    let run2 = layer_entries(&store, &changed, 4);
    assert!(
        run2.contains(&("app/out.txt".into(), 'f', "hi HELLO\n".into())),
        "{run2:?}"
    );

    // Another store, same inputs, SOURCE_DATE_EPOCH set: the same image.
    let dir2 = tempfile::tempdir().unwrap();
    let store2 = common::store_with_busybox(dir2.path());
    let elsewhere = build(&store2, &ctx, DOCKERFILE, &Events::default()).unwrap();
    assert_eq!(elsewhere.manifest.digest, changed.manifest.digest);
}

#[test]
fn failing_run_names_line_and_code() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_with_busybox(dir.path());
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let err = build(
        &store,
        &ctx,
        "FROM busybox:test\nRUN echo before\nRUN echo going down; echo to stderr >&2; exit 3\nRUN echo never\n",
        &Events::default(),
    )
    .unwrap_err();
    let message = err.to_string();
    match err {
        SolveError::RunFailed {
            line,
            code,
            last_lines,
            ..
        } => {
            assert_eq!((line, code), (3, 3));
            assert_eq!(last_lines, ["going down", "to stderr"]);
            assert!(
                message.contains("line 3") && message.contains("to stderr"),
                "{message}"
            );
        }
        other => panic!("unexpected {other}"),
    }
}

/// A step that changes nothing makes the empty layer (a tar of two zero
/// blocks), as BuildKit's does; `WORKDIR /` makes no step at all.
#[test]
fn empty_steps_make_the_empty_layer_and_parallel_stages_meet() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_with_busybox(dir.path());
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let df = "FROM busybox:test AS a\nRUN echo a > /a\n\
              FROM busybox:test AS b\nRUN echo b > /b\n\
              FROM busybox:test\nWORKDIR /\nWORKDIR /tmp\nCOPY --from=a /a /\nCOPY --from=b /b /\nRUN cat /a /b > /ab\n";
    let image = build(&store, &ctx, df, &Events::default()).unwrap();
    // WORKDIR / makes no step; WORKDIR /tmp exists already: the empty layer.
    assert_eq!(image.layers.len(), 5, "{:#?}", image.config.history);
    let history = |created_by: &str| {
        (image.config.history.iter())
            .find(|h| h.created_by.as_deref() == Some(created_by))
            .unwrap()
            .empty_layer
    };
    assert_eq!(history("WORKDIR /"), Some(true));
    assert_eq!(history("WORKDIR /tmp"), None);
    const EMPTY_TAR: &str =
        "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
    assert_eq!(image.config.rootfs.diff_ids[1].as_str(), EMPTY_TAR);
    let last = layer_entries(&store, &image, 4);
    assert!(
        last.contains(&("ab".into(), 'f', "a\nb\n".into())),
        "{last:?}"
    );
}

#[test]
fn cached_rebuild_without_epoch_keeps_the_image_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_with_busybox(dir.path());
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let df = "FROM busybox:test\nENV A=1\nRUN echo x > /x\nLABEL l=v\n";
    let first = build_with(&store, &ctx, df, &Events::default(), None).unwrap();
    // A second later the times would differ if they were "now".
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let events = Events::default();
    let second = build_with(&store, &ctx, df, &events, None).unwrap();
    assert!(events.0.lock().unwrap().iter().all(|(_, c)| *c));
    assert_eq!(first.manifest.digest, second.manifest.digest);
    let created: Vec<_> = second
        .config
        .history
        .iter()
        .map(|h| h.created.clone())
        .collect();
    assert!(created.iter().all(|c| c.is_some()), "{created:?}");
}

#[test]
fn docker_media_types_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_with_busybox(dir.path());
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let df = "FROM busybox:test\nRUN echo x > /x\n";
    let image = build_full(&store, &ctx, df, &Events::default(), Some(1), true, &[]).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&store.read_blob(&image.manifest.digest).unwrap()).unwrap();
    assert_eq!(manifest["mediaType"], kiln_layers::media::DOCKER_MANIFEST);
    assert_eq!(
        manifest["config"]["mediaType"],
        kiln_layers::media::DOCKER_CONFIG
    );
    // The base's layers as pulled, the built one plain (compressed on push).
    let layers = manifest["layers"].as_array().unwrap();
    for layer in &layers[..layers.len() - 1] {
        assert_eq!(layer["mediaType"], kiln_layers::media::DOCKER_LAYER_GZIP);
    }
    assert_eq!(
        layers[layers.len() - 1]["mediaType"],
        kiln_layers::media::DOCKER_LAYER
    );
    let oci = build_full(&store, &ctx, df, &Events::default(), Some(1), false, &[]).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&store.read_blob(&oci.manifest.digest).unwrap()).unwrap();
    assert_eq!(manifest["mediaType"], kiln_layers::media::OCI_MANIFEST);
    // The base's layers as pulled, the built one plain (compressed on push).
    let layers = manifest["layers"].as_array().unwrap();
    for layer in &layers[..layers.len() - 1] {
        assert_eq!(layer["mediaType"], kiln_layers::media::OCI_LAYER_GZIP);
    }
    assert_eq!(
        layers[layers.len() - 1]["mediaType"],
        kiln_layers::media::OCI_LAYER
    );
}

#[test]
fn run_mounts_bind_tmpfs_secret_cache() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_with_busybox(dir.path());
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(ctx.join("ctxdir")).unwrap();
    std::fs::write(ctx.join("ctxdir/c.txt"), "ctx\n").unwrap();
    // A context mount shows what the context is: .dockerignore applied,
    // every owner root (a host owner of 1234 is not seen; as a user the
    // files are the user's, root in the build's user namespace anyway).
    std::fs::write(ctx.join("ctxdir/hidden.txt"), "hidden\n").unwrap();
    std::fs::write(ctx.join(".dockerignore"), "ctxdir/hidden.txt\n").unwrap();
    let _ = std::os::unix::fs::chown(ctx.join("ctxdir/c.txt"), Some(1234), Some(1234));
    let secret = dir.path().join("token");
    std::fs::write(&secret, "s3cret").unwrap();
    let df = "FROM busybox:test AS src\n\
              RUN mkdir -p /data/sub && echo from-stage > /data/sub/f\n\
              FROM busybox:test\n\
              RUN --mount=type=bind,source=ctxdir,target=/ctx cat /ctx/c.txt > /from-ctx\n\
              RUN --mount=type=bind,target=/whole ls -a /whole/ctxdir > /ctx-list && stat -c %u:%g /whole/ctxdir/c.txt > /ctx-owner\n\
              RUN --mount=type=bind,source=ctxdir/c.txt,target=/one stat -c %u:%g /one > /file-owner\n\
              RUN --mount=type=bind,from=src,source=/data,target=/st cat /st/sub/f > /from-stage\n\
              RUN --mount=type=tmpfs,target=/scratch echo temp > /scratch/t && ls /scratch > /tmp-list\n\
              RUN --mount=type=secret,id=tok cat /run/secrets/tok > /secret-copy\n\
              RUN --mount=type=secret,id=mem,target=/m cat /m > /mem-copy\n\
              RUN --mount=type=cache,target=/cache echo once >> /cache/log && cat /cache/log > /cache-seen\n";
    let image = build_full(
        &store,
        &ctx,
        df,
        &Events::default(),
        Some(1),
        false,
        &[("tok", &secret)],
    )
    .unwrap();
    let mut all = Vec::new();
    for i in 1..image.layers.len() {
        all.extend(layer_entries(&store, &image, i));
    }
    for (path, content) in [
        ("from-ctx", "ctx\n"),
        ("ctx-list", ".\n..\nc.txt\n"),
        ("ctx-owner", "0:0\n"),
        ("file-owner", "0:0\n"),
        ("from-stage", "from-stage\n"),
        ("tmp-list", "t\n"),
        ("secret-copy", "s3cret"),
        ("mem-copy", "in-memory"),
        ("cache-seen", "once\n"),
    ] {
        assert!(
            all.contains(&(path.to_string(), 'f', content.to_string())),
            "{path}: {all:?}"
        );
    }
    for (path, _, _) in &all {
        assert_ne!(path, "m", "the secret's mount point leaked into a layer");
        for mounted in [
            "ctx/",
            "whole/",
            "st/",
            "scratch/",
            "run/secrets/tok",
            "cache/",
        ] {
            assert!(
                !path.starts_with(mounted),
                "{path} leaked into a layer: {all:?}"
            );
        }
    }
    // The cache mount outlives the build: a changed RUN sees the old log.
    let df2 = df.replace(
        "cat /cache/log > /cache-seen",
        "cat /cache/log > /cache-seen2",
    );
    let again = build_full(
        &store,
        &ctx,
        &df2,
        &Events::default(),
        Some(1),
        false,
        &[("tok", &secret)],
    )
    .unwrap();
    let last = layer_entries(&store, &again, again.layers.len() - 1);
    assert!(
        last.contains(&("cache-seen2".into(), 'f', "once\nonce\n".into())),
        "{last:?}"
    );
    // A required secret that is missing fails the step.
    let df3 = "FROM busybox:test\nRUN --mount=type=secret,id=nope,required=true true\n";
    let err = build(&store, &ctx, df3, &Events::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("secret nope is required"), "{err}");
}

/// Imports a one-layer image with the given files (path, content) as `tag`.
fn import_files_image(store: &Store, dir: &Path, tag: &str, files: &[(&str, &str)]) {
    let root = dir.join(format!("rootfs-{}", tag.replace([':', '/'], "-")));
    for (path, content) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    let options = kiln_layers::diff::DiffOptions {
        source_date_epoch: Some(1_600_000_000),
        overlay_whiteouts: false,
        write_back: false,
        commit_in_background: false,
    };
    let tar = kiln_layers::diff::write_tar(&root, Vec::new(), &options).unwrap();
    let mut import = ImportOptions::new(tag);
    import.platform = Platform::parse("linux/amd64").unwrap();
    import.created = 1_600_000_000;
    let desc = import_rootfs(store, &tar[..], &import, &NoProgress).unwrap();
    store.tag(&Reference::parse(tag).unwrap(), &desc).unwrap();
}

/// All files of the image's layers after the base: path → content.
fn added_files(store: &Store, image: &BuiltImage) -> Vec<(String, char, String)> {
    let mut all = Vec::new();
    for i in 1..image.layers.len() {
        all.extend(layer_entries(store, image, i));
    }
    all
}

#[test]
fn run_mounts_from_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_with_busybox(dir.path());
    import_files_image(
        &store,
        dir.path(),
        "tools:test",
        &[("data/tool.txt", "tool v1\n"), ("data/sub/deep", "deep\n")],
    );
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let df = "FROM busybox:test AS src\n\
              RUN mkdir /seed && echo from-stage > /seed/s\n\
              FROM busybox:test\n\
              RUN --mount=type=bind,from=tools:test,source=/data,target=/t cat /t/tool.txt /t/sub/deep > /from-image\n\
              RUN --mount=from=tools:test,source=data/tool.txt,target=/f.txt cat /f.txt > /from-image-file\n\
              RUN --mount=type=cache,id=seeded,from=tools:test,source=/data,target=/c cat /c/tool.txt > /cache-first && echo more >> /c/tool.txt\n\
              RUN --mount=type=cache,id=seeded,from=tools:test,source=/data,target=/c cat /c/tool.txt > /cache-second\n\
              RUN --mount=type=cache,id=stage-seeded,from=src,source=/seed,target=/c cat /c/s > /cache-from-stage\n";
    let image = build_full(&store, &ctx, df, &Events::default(), Some(1), false, &[]).unwrap();
    let all = added_files(&store, &image);
    for (path, content) in [
        ("from-image", "tool v1\ndeep\n"),
        ("from-image-file", "tool v1\n"),
        ("cache-first", "tool v1\n"),
        ("cache-second", "tool v1\nmore\n"),
        ("cache-from-stage", "from-stage\n"),
    ] {
        assert!(
            all.contains(&(path.to_string(), 'f', content.to_string())),
            "{path}: {all:?}"
        );
    }
    for (path, _, _) in &all {
        for mounted in ["t/", "f.txt", "c/", "data/"] {
            assert!(
                !path.starts_with(mounted),
                "{path} leaked into a layer: {all:?}"
            );
        }
    }

    // The image's digest is part of the cache key: the tag moved to other
    // content, so the bind step runs again and sees the new file; a cache
    // mount seeded from the new image starts from the new content.
    import_files_image(
        &store,
        dir.path(),
        "tools:test",
        &[
            ("data/tool.txt", "tool v2\n"),
            ("data/sub/deep", "deeper\n"),
        ],
    );
    let events = Events::default();
    let again = build_full(&store, &ctx, df, &events, Some(1), false, &[]).unwrap();
    let all = added_files(&store, &again);
    for (path, content) in [
        ("from-image", "tool v2\ndeeper\n"),
        ("cache-first", "tool v2\n"),
    ] {
        assert!(
            all.contains(&(path.to_string(), 'f', content.to_string())),
            "{path}: {all:?}"
        );
    }
    let ran: Vec<bool> = events.0.lock().unwrap().iter().map(|(_, c)| *c).collect();
    assert!(ran.contains(&false), "nothing ran again: {ran:?}");

    // An unchanged image: every step is a cache hit.
    let events = Events::default();
    build_full(&store, &ctx, df, &events, Some(1), false, &[]).unwrap();
    let steps = events.0.lock().unwrap().clone();
    assert!(steps.iter().all(|(_, cached)| *cached), "{steps:?}");

    // An image that is not there fails while planning, naming the line.
    let typed = kiln_parser::instructions::from_ast(
        &kiln_parser::parse(
            "FROM busybox:test\nRUN --mount=from=absent:1,target=/x true\n",
            "Dockerfile",
        )
        .unwrap(),
    )
    .unwrap();
    let opts = BuildOptions {
        target_platform: Platform::parse("linux/amd64").unwrap(),
        build_platform: Platform::parse("linux/amd64").unwrap(),
        ..Default::default()
    };
    let err = plan(&typed, &opts, &StoreResolver::new(&store, None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2") && err.contains("absent:1"), "{err}");
}

/// Each entry of a layer: (path, content bytes). The blob is decompressed
/// as its magic bytes say.
fn layer_bytes(store: &Store, image: &BuiltImage, index: usize) -> Vec<(String, Vec<u8>)> {
    let mut blob = Vec::new();
    store
        .open_blob(&image.layers[index].digest)
        .unwrap()
        .read_to_end(&mut blob)
        .unwrap();
    let mut archive = tar::Archive::new(kiln_layers::compress::decompress(&blob[..]).unwrap());
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.push((entry.path().unwrap().display().to_string(), data));
    }
    out
}

use kiln_testsupport::git::git_in;

fn serve_git(base: &Path) -> u16 {
    kiln_testsupport::git::serve_git(base).unwrap()
}

#[test]
fn add_git_repository() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_with_busybox(dir.path());
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    // A repository with a main branch, an annotated tag and a dev branch.
    let served = dir.path().join("served");
    let repo = served.join("repo.git");
    std::fs::create_dir_all(repo.join("docs")).unwrap();
    git_in(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README"), "v1\n").unwrap();
    std::fs::write(repo.join("docs/guide.txt"), "guide v1\n").unwrap();
    std::os::unix::fs::symlink("README", repo.join("link")).unwrap();
    git_in(&repo, &["add", "-A"]);
    git_in(&repo, &["commit", "-q", "-m", "one"]);
    git_in(&repo, &["tag", "-a", "v1", "-m", "release 1"]);
    let v1_commit = git_in(&repo, &["rev-parse", "HEAD"]);
    git_in(&repo, &["checkout", "-q", "-b", "dev"]);
    std::fs::write(repo.join("dev.txt"), "dev\n").unwrap();
    git_in(&repo, &["add", "-A"]);
    git_in(&repo, &["commit", "-q", "-m", "dev"]);
    let dev_commit = git_in(&repo, &["rev-parse", "HEAD"]);
    git_in(&repo, &["checkout", "-q", "main"]);
    std::fs::write(repo.join("docs/guide.txt"), "guide v2\n").unwrap();
    git_in(&repo, &["commit", "-q", "-am", "two"]);
    let port = serve_git(&served);
    let url = format!("git://127.0.0.1:{port}/repo.git");

    let df = format!(
        "FROM busybox:test\n\
         ADD {url} /src\n\
         ADD {url}#v1:docs /docs-v1\n\
         ADD --keep-git-dir=true {url}#dev /kept\n\
         ADD --checksum={short} {url}?tag=v1&subdir=docs /checked/\n",
        short = &v1_commit[..12]
    );
    let image = build_full(&store, &ctx, &df, &Events::default(), Some(1), false, &[]).unwrap();
    let src = layer_entries(&store, &image, 1);
    assert!(
        src.contains(&("src/README".into(), 'f', "v1\n".into())),
        "{src:?}"
    );
    assert!(src.contains(&("src/docs/guide.txt".into(), 'f', "guide v2\n".into())));
    assert!(src.iter().any(|(p, k, _)| p == "src/link" && *k == 'l'));
    assert!(
        !src.iter().any(|(p, _, _)| p.starts_with("src/.git")),
        "the .git dir is dropped by default: {src:?}"
    );
    assert!(!src.iter().any(|(p, _, _)| p.starts_with("src/dev.txt")));
    let docs = layer_entries(&store, &image, 2);
    let docs_files: Vec<&str> = docs
        .iter()
        .filter(|(_, k, _)| *k == 'f')
        .map(|(p, _, _)| p.as_str())
        .collect();
    assert_eq!(docs_files, vec!["docs-v1/guide.txt"], "{docs:?}");
    assert!(docs.contains(&("docs-v1/guide.txt".into(), 'f', "guide v1\n".into())));
    // (.git holds binary files: read paths and contents as bytes.)
    let kept = layer_bytes(&store, &image, 3);
    assert!(kept.contains(&("kept/dev.txt".into(), b"dev\n".to_vec())));
    // BuildKit leaves HEAD detached at the commit, the branch beside it.
    let dev_head = format!("{dev_commit}\n").into_bytes();
    assert!(
        kept.contains(&("kept/.git/HEAD".into(), dev_head.clone())),
        "--keep-git-dir keeps .git, HEAD at the commit: {:?}",
        kept.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    assert!(
        kept.contains(&("kept/.git/refs/heads/dev".into(), dev_head)),
        "{:?}",
        kept.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    assert!(!kept.iter().any(|(p, _)| p == "kept/.git/FETCH_HEAD"));
    let checked = layer_entries(&store, &image, 4);
    assert!(checked.contains(&("checked/guide.txt".into(), 'f', "guide v1\n".into())));

    // Unchanged refs: every step is a cache hit (no clone).
    let events = Events::default();
    build_full(&store, &ctx, &df, &events, Some(1), false, &[]).unwrap();
    let steps = events.0.lock().unwrap().clone();
    assert!(steps.iter().all(|(_, cached)| *cached), "{steps:?}");

    // A new commit on main: the key is the commit, so the first ADD runs
    // again and sees it.
    std::fs::write(repo.join("README"), "v3\n").unwrap();
    git_in(&repo, &["commit", "-q", "-am", "three"]);
    let events = Events::default();
    let again = build_full(&store, &ctx, &df, &events, Some(1), false, &[]).unwrap();
    let steps = events.0.lock().unwrap().clone();
    assert!(!steps[0].1, "the moved branch was a cache hit: {steps:?}");
    let src = layer_entries(&store, &again, 1);
    assert!(src.contains(&("src/README".into(), 'f', "v3\n".into())));

    // A checksum that is not the commit, and a ref that does not exist,
    // fail before anything runs, naming the line.
    let plan_error = |dockerfile: &str| -> String {
        let typed = kiln_parser::instructions::from_ast(
            &kiln_parser::parse(dockerfile, "Dockerfile").unwrap(),
        )
        .unwrap();
        let opts = BuildOptions {
            target_platform: Platform::parse("linux/amd64").unwrap(),
            build_platform: Platform::parse("linux/amd64").unwrap(),
            ..Default::default()
        };
        let mut p = plan(&typed, &opts, &StoreResolver::new(&store, None)).unwrap();
        let context = BuildContext::load(
            &ctx,
            &PatternMatcher::new(Vec::<String>::new()).unwrap(),
            None,
        )
        .unwrap();
        compute_cache_keys(&mut p, Some(&context), &RemoteSources::default())
            .unwrap_err()
            .to_string()
    };
    let err = plan_error(&format!(
        "FROM busybox:test\nADD --checksum=0123abcd {url}#v1 /x\n"
    ));
    assert!(
        err.contains("line 2") && err.contains("expected checksum to match 0123abcd"),
        "{err}"
    );
    let err = plan_error(&format!("FROM busybox:test\n\nADD {url}#nope /x\n"));
    assert!(
        err.contains("line 3") && err.contains("does not contain ref nope"),
        "{err}"
    );
}

/// [`build_full`] with agents for `RUN --mount=type=ssh`.
fn build_with_ssh(
    store: &Store,
    context: &Path,
    dockerfile: &str,
    ssh: &kiln_builder::ssh::SshAgents,
) -> Result<BuiltImage, SolveError> {
    let typed =
        kiln_parser::instructions::from_ast(&kiln_parser::parse(dockerfile, "Dockerfile").unwrap())
            .unwrap();
    let opts = BuildOptions {
        target_platform: Platform::parse("linux/amd64").unwrap(),
        build_platform: Platform::parse("linux/amd64").unwrap(),
        ..Default::default()
    };
    let resolver = StoreResolver::new(store, None);
    let mut p = plan(&typed, &opts, &resolver).unwrap();
    // Its .dockerignore's patterns (one per line), if it has one.
    let ignore = std::fs::read_to_string(context.join(".dockerignore")).unwrap_or_default();
    let patterns = ignore.lines().filter(|l| !l.trim().is_empty());
    let ctx = BuildContext::load(context, &PatternMatcher::new(patterns).unwrap(), None).unwrap();
    compute_cache_keys(&mut p, Some(&ctx), &RemoteSources::default()).unwrap();
    let events = Events::default();
    let solve_opts = SolveOptions {
        named_contexts: None,
        no_cache: false,
        no_cache_stages: Default::default(),
        source_date_epoch: Some(1),
        layer_epoch: Some(1),
        network: Network::None,
        networks: None,
        snapshotter: kiln_runtime::Snapshotter::Overlay,
        chroot: false,
        helper: HelperCommand::subcommand_of(env!("CARGO_BIN_EXE_kiln-builder-test-helper")),
        downloads: None,
        events: &events,
        reporter: &NoProgress,
        docker_media_types: false,
        secrets: Default::default(),
        ssh: ssh.clone(),
        limits: Default::default(),
        shared: None,
        cache_from: None,
        inline_cache: false,
        result: Default::default(),
    };
    solve(store, &p, &ctx, &resolver, &solve_opts)
}

/// Puts the host's `ssh-add` and the shared libraries it loads (as `ldd`
/// lists them) under `root`, at their own paths.
fn host_ssh_add_into(root: &Path) {
    let ssh_add = PathBuf::from("/usr/bin/ssh-add");
    let ldd = std::process::Command::new("ldd")
        .arg(&ssh_add)
        .output()
        .unwrap();
    let mut files = vec![ssh_add];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            files.push(PathBuf::from(path));
        }
    }
    for file in files {
        let dest = root.join(file.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&file, &dest).unwrap();
    }
}

/// A fresh ed25519 key in `dir`; returns (private key path, the line
/// `ssh-add -l` shows for it).
fn ssh_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen is needed (openssh-client; scripts/setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key.with_extension("pub"))
        .output()
        .unwrap();
    (key, String::from_utf8_lossy(&listed.stdout).into_owned())
}

#[test]
fn run_mount_ssh_reaches_the_forwarded_agent() {
    use kiln_builder::ssh::parse_ssh_flag;
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_with_busybox(dir.path());
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    host_ssh_add_into(&ctx);
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (key_default, listed_default) = ssh_key(&keys, "default-key");
    let (key_other, listed_other) = ssh_key(&keys, "other-key");
    assert_ne!(listed_default, listed_other);

    // Real ssh-agents, started from key files as `--ssh ID=KEY` does; the
    // second is then forwarded by its socket, as `--ssh ID=SOCKET` is.
    let (default_id, default_agent) =
        parse_ssh_flag(&format!("default={}", key_default.display()), None).unwrap();
    let (_, other_agent) = parse_ssh_flag(&format!("x={}", key_other.display()), None).unwrap();
    let (other_id, other_socket) =
        parse_ssh_flag(&format!("other={}", other_agent.socket().display()), None).unwrap();
    let agents: kiln_builder::ssh::SshAgents = [
        (default_id, default_agent.socket().to_path_buf()),
        (other_id, other_socket.socket().to_path_buf()),
    ]
    .into_iter()
    .collect();

    let df = "FROM busybox:test\n\
              COPY . /\n\
              ENV LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu\n\
              RUN --mount=type=ssh ssh-add -l > /keys-default && echo \"$SSH_AUTH_SOCK\" > /sock-env && stat -c '%u %g %a %F' \"$SSH_AUTH_SOCK\" > /sock-stat\n\
              RUN --mount=type=ssh,id=other,target=/tmp/o.sock,required=true,uid=1000,gid=1000,mode=0660 ssh-add -l > /keys-other && echo \"$SSH_AUTH_SOCK\" > /sock-env2 && stat -c '%u %g %a' /tmp/o.sock > /sock-stat2\n\
              RUN --mount=type=ssh,id=absent sh -c 'test -e /run/buildkit/ssh_agent.0 && echo present || echo skipped' > /absent\n\
              USER app\n\
              RUN --mount=type=ssh,uid=1000 ssh-add -l\n";
    let image = build_with_ssh(&store, &ctx, df, &agents).unwrap();
    let all = added_files(&store, &image);
    for (path, content) in [
        ("keys-default", listed_default.as_str()),
        ("keys-other", listed_other.as_str()),
        ("sock-env", "/run/buildkit/ssh_agent.0\n"),
        ("sock-stat", "0 0 600 socket\n"),
        ("sock-env2", "/tmp/o.sock\n"),
        ("sock-stat2", "1000 1000 660\n"),
        ("absent", "skipped\n"),
    ] {
        assert!(
            all.contains(&(path.to_string(), 'f', content.to_string())),
            "{path}: {:?}",
            all.iter()
                .filter(|(p, _, _)| !p.contains("lib") && !p.starts_with("usr"))
                .collect::<Vec<_>>()
        );
    }
    for (path, _, _) in &all {
        assert!(
            !path.starts_with("run/buildkit/ssh_agent") && path != "tmp/o.sock",
            "{path}: a socket mount leaked into a layer"
        );
    }

    // A required agent that was not forwarded fails the step, naming the
    // line and the id; without `required` the mount is skipped (above).
    let df = "FROM busybox:test\n\nRUN --mount=type=ssh,id=deploy,required true\n";
    let err = build_with_ssh(&store, &ctx, df, &agents)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 3") && err.contains("no SSH key \"deploy\" forwarded"),
        "{err}"
    );
}

/// ADD of a Git URL leaves the checkout's times whatever `?mtime=` says,
/// as BuildKit's ADD does (only a Git build context applies it): a commit
/// dated 2001 gives no file of 2001.
#[test]
fn add_git_ignores_mtime_commit_as_buildkit() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_with_busybox(dir.path());
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let served = dir.path().join("served");
    let repo = served.join("repo.git");
    std::fs::create_dir_all(&repo).unwrap();
    git_in(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README"), "old\n").unwrap();
    git_in(&repo, &["add", "-A"]);
    const COMMITTED: u64 = 978_307_200; // 2001-01-01
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args([
            "-c",
            "user.name=kiln",
            "-c",
            "user.email=kiln@example.invalid",
        ])
        .args(["commit", "-q", "-m", "old"])
        .env("GIT_COMMITTER_DATE", format!("@{COMMITTED} +0000"))
        .env("GIT_AUTHOR_DATE", format!("@{COMMITTED} +0000"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let port = serve_git(&served);
    let df =
        format!("FROM busybox:test\nADD git://127.0.0.1:{port}/repo.git?mtime=commit /timed\n");
    let image = build_full(&store, &ctx, &df, &Events::default(), None, false, &[]).unwrap();
    let blob = store.open_blob(&image.layers[1].digest).unwrap();
    let mut archive = tar::Archive::new(kiln_layers::compress::decompress(blob).unwrap());
    let readme = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().ends_with("README"))
        .expect("README in the layer");
    let mtime = readme.header().mtime().unwrap();
    assert!(
        mtime > COMMITTED + 86_400 * 365 * 20,
        "mtime {mtime}: the commit's time"
    );
}

#[test]
fn add_git_repository_with_submodules() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_with_busybox(dir.path());
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let served = dir.path().join("served");
    let port = serve_git(&served);
    let sub = served.join("sub.git");
    std::fs::create_dir_all(&sub).unwrap();
    git_in(&sub, &["init", "-q", "-b", "main"]);
    std::fs::write(sub.join("s.txt"), "from the submodule\n").unwrap();
    git_in(&sub, &["add", "-A"]);
    git_in(&sub, &["commit", "-q", "-m", "sub"]);
    let top = served.join("top.git");
    std::fs::create_dir_all(&top).unwrap();
    git_in(&top, &["init", "-q", "-b", "main"]);
    std::fs::write(top.join("t.txt"), "top\n").unwrap();
    git_in(
        &top,
        &[
            "submodule",
            "add",
            "-q",
            &format!("git://127.0.0.1:{port}/sub.git"),
            "vendor/sub",
        ],
    );
    git_in(&top, &["add", "-A"]);
    git_in(&top, &["commit", "-q", "-m", "top"]);

    let url = format!("git://127.0.0.1:{port}/top.git");
    let df = format!(
        "FROM busybox:test\n\
         ADD {url} /with/\n\
         ADD {url}?submodules=false /without/\n"
    );
    let image = build_full(&store, &ctx, &df, &Events::default(), Some(1), false, &[]).unwrap();
    let with: Vec<String> = layer_bytes(&store, &image, 1)
        .into_iter()
        .filter(|(p, data)| p == "with/vendor/sub/s.txt" && data == b"from the submodule\n")
        .map(|(p, _)| p)
        .collect();
    assert_eq!(with.len(), 1, "the submodule is checked out");
    let without = layer_bytes(&store, &image, 2);
    assert!(without.iter().any(|(p, _)| p == "without/t.txt"));
    assert!(
        !without
            .iter()
            .any(|(p, _)| p.starts_with("without/vendor/sub/s.txt")),
        "?submodules=false leaves it out: {:?}",
        without.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
}

#[test]
fn writable_bind_mounts_change_neither_the_context_nor_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_with_busybox(dir.path());
    import_files_image(
        &store,
        dir.path(),
        "tools:test",
        &[("data/tool.txt", "tool\n")],
    );
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(ctx.join("d")).unwrap();
    std::fs::write(ctx.join("f.txt"), "context file\n").unwrap();
    std::fs::write(ctx.join("d/g.txt"), "context dir\n").unwrap();
    // Each RUN writes through its rw mount and reads its write back; the
    // last RUN reads the image's file again through a read-only mount.
    let df = "FROM busybox:test\n\
              RUN --mount=type=bind,source=f.txt,target=/f.txt,rw echo changed > /f.txt && cat /f.txt > /seen-file\n\
              RUN --mount=type=bind,source=d,target=/d,rw echo changed > /d/g.txt && touch /d/new && ls /d > /seen-dir\n\
              RUN --mount=type=bind,from=tools:test,source=data/tool.txt,target=/t.txt,readwrite echo changed > /t.txt\n\
              RUN --mount=type=bind,from=tools:test,source=data/tool.txt,target=/t.txt cat /t.txt > /image-after\n";
    let image = build_full(&store, &ctx, df, &Events::default(), Some(1), false, &[]).unwrap();
    let all: Vec<(String, Vec<u8>)> = (1..image.layers.len())
        .flat_map(|i| layer_bytes(&store, &image, i))
        .collect();
    for (path, content) in [
        ("seen-file", "changed\n"),
        ("seen-dir", "g.txt\nnew\n"),
        ("image-after", "tool\n"),
    ] {
        assert!(
            all.contains(&(path.to_string(), content.as_bytes().to_vec())),
            "{path}: {:?}",
            all.iter().map(|(p, _)| p).collect::<Vec<_>>()
        );
    }
    assert_eq!(
        std::fs::read_to_string(ctx.join("f.txt")).unwrap(),
        "context file\n"
    );
    assert_eq!(
        std::fs::read_to_string(ctx.join("d/g.txt")).unwrap(),
        "context dir\n"
    );
    assert!(!ctx.join("d/new").exists());
}
