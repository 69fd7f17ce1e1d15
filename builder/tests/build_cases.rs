//! Data-driven end-to-end builds: `testdata/builder/build/<case>/` holds a
//! `Dockerfile` (its base is `busybox:test`, a static busybox imported into
//! a temp store), `context` (a tree spec, see tests/common/tree.rs),
//! optional `options` (`build-arg K=V`, `target NAME`) and `expected`: the
//! image's config, its history and every layer the build added, entry by
//! entry (type, mode, owner, content or link target). The goldens are
//! kiln's own output (regression goldens, regenerated with `KILN_BLESS=1`);
//! the cases were compared with BuildKit by hand, using a differential
//! harness, when they were written. Needs root and busybox-static, like
//! tests/solve.rs.

mod common;
#[path = "common/tree.rs"]
mod tree;

use std::io::Read;
use std::path::Path;

use kiln_builder::context::BuildContext;
use kiln_builder::dockerignore;
use kiln_builder::plan::{compute_cache_keys, plan, BuildOptions, RemoteSources};
use kiln_builder::solve::{solve, NoEvents, SolveOptions, StoreResolver};
use kiln_layers::{NoProgress, Platform, Store};
use kiln_runtime::{HelperCommand, Network};

fn layer_listing(store: &Store, digest: &kiln_layers::Digest) -> Vec<String> {
    let blob = store.open_blob(digest).unwrap();
    let mut archive = tar::Archive::new(kiln_layers::compress::decompress(blob).unwrap());
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mode = header.mode().unwrap() & 0o7777;
        let owner = format!("{}:{}", header.uid().unwrap(), header.gid().unwrap());
        let line = match header.entry_type() {
            tar::EntryType::Directory => format!("d {path} {mode:o} {owner}"),
            tar::EntryType::Symlink => format!(
                "l {path} -> {} {owner}",
                String::from_utf8_lossy(&entry.link_name_bytes().unwrap_or_default())
            ),
            tar::EntryType::Link => format!(
                "h {path} => {}",
                String::from_utf8_lossy(&entry.link_name_bytes().unwrap_or_default())
            ),
            tar::EntryType::Fifo => format!("p {path} {mode:o} {owner}"),
            _ => {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).unwrap();
                let shown = match std::str::from_utf8(&bytes) {
                    Ok(t) if bytes.len() <= 40 => format!("{t:?}"),
                    _ => format!("{} bytes", bytes.len()),
                };
                format!("f {path} {mode:o} {owner} {shown}")
            }
        };
        out.push(line);
    }
    out
}

fn run(case: &Path) -> String {
    let work = tempfile::tempdir().unwrap();
    let store = common::store_with_busybox(work.path());
    let ctx = work.path().join("context");
    std::fs::create_dir_all(&ctx).unwrap();
    tree::copy_files(&case.join("context-files"), &ctx);
    if let Ok(spec) = std::fs::read_to_string(case.join("context")) {
        tree::build(&ctx, &spec);
    }
    let text = std::fs::read_to_string(case.join("Dockerfile")).unwrap();
    let typed =
        kiln_parser::instructions::from_ast(&kiln_parser::parse(&text, "Dockerfile").unwrap())
            .unwrap();
    let mut opts = BuildOptions {
        target_platform: Platform::parse("linux/amd64").unwrap(),
        build_platform: Platform::parse("linux/amd64").unwrap(),
        ..Default::default()
    };
    for line in std::fs::read_to_string(case.join("options"))
        .unwrap_or_default()
        .lines()
    {
        match line.split_once(' ') {
            Some(("build-arg", kv)) => {
                let (k, v) = kv.split_once('=').unwrap();
                opts.build_args.insert(k.into(), v.into());
            }
            Some(("target", t)) => opts.target = Some(t.into()),
            _ if line.trim().is_empty() => {}
            _ => panic!("bad options line {line:?}"),
        }
    }
    let resolver = StoreResolver::new(&store, None);
    let mut planned = match plan(&typed, &opts, &resolver) {
        Ok(p) => p,
        Err(e) => return format!("plan error: {e}\n"),
    };
    let ignore = dockerignore::load_for_build(&ctx, None).unwrap();
    let context = BuildContext::load(&ctx, &ignore, None).unwrap();
    if let Err(e) = compute_cache_keys(&mut planned, Some(&context), &RemoteSources::default()) {
        return format!("plan error: {e}\n");
    }
    let solve_opts = SolveOptions {
        named_contexts: None,
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
        events: &NoEvents,
        reporter: &NoProgress,
        docker_media_types: false,
        secrets: Default::default(),
        ssh: Default::default(),
        limits: Default::default(),
        shared: None,
        cache_from: None,
        inline_cache: false,
        result: Default::default(),
    };
    let built = match solve(&store, &planned, &context, &resolver, &solve_opts) {
        Ok(b) => b,
        Err(e) => return format!("build error: {e}\n"),
    };
    let mut out = String::new();
    out.push_str("config:\n");
    out.push_str(&serde_json::to_string_pretty(&built.config.config).unwrap());
    out.push_str("\nhistory:\n");
    for h in &built.config.history {
        out.push_str(&format!(
            "  {}{}\n",
            h.created_by.as_deref().unwrap_or(""),
            if h.empty_layer == Some(true) {
                "  (empty)"
            } else {
                ""
            }
        ));
    }
    // The base image's layers are not this build's.
    let base_layers = planned.stages[planned.target].image.rootfs.diff_ids.len();
    for (i, layer) in built.layers.iter().enumerate().skip(base_layers) {
        out.push_str(&format!("layer {i}:\n"));
        for line in layer_listing(&store, &layer.digest) {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

#[test]
fn build_cases() {
    common::run_area("build", |case| {
        common::check_golden(case, "expected", &run(case))
    });
}
