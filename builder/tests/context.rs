//! Build-context tests. Data-driven cases live in
//! `testdata/builder/context/<case>/`: `tree` (see tests/common/tree.rs),
//! optional `dockerignore`, and `expected`, the context listing. Regenerate
//! with `KILN_BLESS=1`.

mod common;
#[path = "common/tree.rs"]
mod tree;

use kiln_builder::context::{BuildContext, EntryKind, StatCache};
use kiln_builder::dockerignore::{parse_ignore_file, PatternMatcher};

fn listing(ctx: &BuildContext) -> String {
    let mut out = String::new();
    for e in ctx.entries().values() {
        let line = match &e.kind {
            EntryKind::Dir => format!("dir  {} {:o}", e.path, e.mode),
            EntryKind::File => format!(
                "file {} {:o} {}",
                e.path,
                e.mode,
                &e.content_digest.as_deref().unwrap()[7..19]
            ),
            EntryKind::Symlink(t) => format!("link {} -> {t}", e.path),
            other => format!("{other:?} {}", e.path),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[test]
fn context_cases() {
    common::run_area("context", |case| {
        let tmp = tempfile::tempdir().unwrap();
        let spec = std::fs::read_to_string(case.join("tree")).unwrap();
        tree::build(tmp.path(), &spec);
        let ignore = match std::fs::read_to_string(case.join("dockerignore")) {
            Ok(text) => {
                PatternMatcher::from_lines("dockerignore", &parse_ignore_file(&text)).unwrap()
            }
            Err(_) => PatternMatcher::new(Vec::<String>::new()).unwrap(),
        };
        let ctx = BuildContext::load(tmp.path(), &ignore, None).unwrap();
        common::check_golden(case, "expected", &listing(&ctx))
    });
}

fn write_old(path: &std::path::Path, content: &str) {
    std::fs::write(path, content).unwrap();
    tree::set_mtime(path);
}

#[test]
fn stat_cache_skips_unchanged_files_and_persists() {
    let ctx_dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    for i in 0..5 {
        write_old(
            &ctx_dir.path().join(format!("f{i}")),
            &format!("content {i}"),
        );
    }
    let none = PatternMatcher::new(Vec::<String>::new()).unwrap();

    let mut cache = StatCache::open_in(
        &kiln_layers::Store::open(store.path()).unwrap(),
        ctx_dir.path(),
    )
    .unwrap();
    let first = BuildContext::load(ctx_dir.path(), &none, Some(&mut cache)).unwrap();
    assert_eq!(first.stats().files_read, 5);
    cache.save().unwrap();
    let files = || {
        std::fs::read_dir(
            kiln_layers::Store::open(store.path())
                .unwrap()
                .context_stats_dir(),
        )
        .unwrap()
        .count()
    };
    assert_eq!(files(), 1);

    // Another context has a cache of its own.
    let other_dir = tempfile::tempdir().unwrap();
    write_old(&other_dir.path().join("g"), "other");
    let mut other = StatCache::open_in(
        &kiln_layers::Store::open(store.path()).unwrap(),
        other_dir.path(),
    )
    .unwrap();
    assert!(other.is_empty());
    let loaded = BuildContext::load(other_dir.path(), &none, Some(&mut other)).unwrap();
    assert_eq!(loaded.stats().files_read, 1);
    other.save().unwrap();
    assert_eq!(files(), 2);

    // A new process: the cache comes back from disk.
    let mut cache = StatCache::open_in(
        &kiln_layers::Store::open(store.path()).unwrap(),
        ctx_dir.path(),
    )
    .unwrap();
    assert_eq!(cache.len(), 5);
    let second = BuildContext::load(ctx_dir.path(), &none, Some(&mut cache)).unwrap();
    assert_eq!(second.stats().files_read, 0);
    assert_eq!(second.stats().files_cached, 5);
    assert_eq!(first.tree_digest(""), second.tree_digest(""));

    // Same size, same mtime, same inode but other bytes: the change time
    // moved (nothing can set it back), so that file alone is read again.
    let f0 = ctx_dir.path().join("f0");
    std::fs::write(&f0, "CONTENT 0").unwrap();
    tree::set_mtime(&f0);
    let third = BuildContext::load(ctx_dir.path(), &none, Some(&mut cache)).unwrap();
    assert_eq!(third.stats().files_read, 1);
    assert_eq!(third.stats().files_cached, 4);
    assert_ne!(
        third.get("f0").unwrap().content_digest,
        first.get("f0").unwrap().content_digest
    );

    // A change of size is noticed too, and only that file is read.
    write_old(&f0, "changed content");
    let fourth = BuildContext::load(ctx_dir.path(), &none, Some(&mut cache)).unwrap();
    assert_eq!(fourth.stats().files_read, 1);
    assert_eq!(fourth.stats().files_cached, 4);
    assert_ne!(fourth.tree_digest(""), first.tree_digest(""));

    // A removed file leaves the cache when it is saved.
    std::fs::remove_file(ctx_dir.path().join("f4")).unwrap();
    BuildContext::load(ctx_dir.path(), &none, Some(&mut cache)).unwrap();
    cache.save().unwrap();
    let reopened = StatCache::open_in(
        &kiln_layers::Store::open(store.path()).unwrap(),
        ctx_dir.path(),
    )
    .unwrap();
    assert_eq!(reopened.len(), 4);
    write_old(&ctx_dir.path().join("f4"), "content 4");

    // Without a cache every file is read.
    let uncached = BuildContext::load(ctx_dir.path(), &none, None).unwrap();
    assert_eq!(uncached.stats().files_read, 5);
    assert_eq!(uncached.tree_digest(""), fourth.tree_digest(""));
}

#[test]
fn recently_modified_files_are_not_cached() {
    let ctx_dir = tempfile::tempdir().unwrap();
    std::fs::write(ctx_dir.path().join("fresh"), "x").unwrap();
    let none = PatternMatcher::new(Vec::<String>::new()).unwrap();
    let mut cache = StatCache::in_memory();
    BuildContext::load(ctx_dir.path(), &none, Some(&mut cache)).unwrap();
    let again = BuildContext::load(ctx_dir.path(), &none, Some(&mut cache)).unwrap();
    assert_eq!(again.stats().files_read, 1);
}

#[test]
fn tree_digest_covers_metadata_and_selection() {
    let dir = tempfile::tempdir().unwrap();
    tree::build(
        dir.path(),
        "d a\nf a/x 644 one\nf a/y 644 two\nf b 644 three\n",
    );
    let none = PatternMatcher::new(Vec::<String>::new()).unwrap();
    let before = BuildContext::load(dir.path(), &none, None).unwrap();
    // Changing b does not change the digest of a.
    write_old(&dir.path().join("b"), "other");
    let after_b = BuildContext::load(dir.path(), &none, None).unwrap();
    assert_eq!(before.tree_digest("a"), after_b.tree_digest("a"));
    assert_ne!(before.tree_digest("b"), after_b.tree_digest("b"));
    // A mode change of a/x changes a's digest; an mtime change does not.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.path().join("a/x"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let after_mode = BuildContext::load(dir.path(), &none, None).unwrap();
    assert_ne!(before.tree_digest("a"), after_mode.tree_digest("a"));
    std::fs::set_permissions(
        dir.path().join("a/x"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::write(dir.path().join("a/y"), "two").unwrap();
    let after_touch = BuildContext::load(dir.path(), &none, None).unwrap();
    assert_eq!(before.tree_digest("a"), after_touch.tree_digest("a"));
    assert_eq!(before.tree_digest("missing"), None);
    // Excluding a file changes what a COPY of its directory selects.
    let ignore = PatternMatcher::new(["a/y"]).unwrap();
    let filtered = BuildContext::load(dir.path(), &ignore, None).unwrap();
    assert_ne!(before.tree_digest("a"), filtered.tree_digest("a"));
    assert_eq!(filtered.children("a"), ["x"]);
}

#[test]
fn stat_cache_keeps_names_ending_in_carriage_return() {
    let ctx_dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    write_old(&ctx_dir.path().join("name\r"), "a");
    write_old(&ctx_dir.path().join("with space"), "b");
    let none = PatternMatcher::new(Vec::<String>::new()).unwrap();
    let mut cache = StatCache::open_in(
        &kiln_layers::Store::open(store.path()).unwrap(),
        ctx_dir.path(),
    )
    .unwrap();
    let first = BuildContext::load(ctx_dir.path(), &none, Some(&mut cache)).unwrap();
    assert_eq!(first.stats().files_read, 2);
    cache.save().unwrap();
    let mut cache = StatCache::open_in(
        &kiln_layers::Store::open(store.path()).unwrap(),
        ctx_dir.path(),
    )
    .unwrap();
    let second = BuildContext::load(ctx_dir.path(), &none, Some(&mut cache)).unwrap();
    assert_eq!(second.stats().files_read, 0);
    assert_eq!(second.stats().files_cached, 2);
}

/// Which directories the host has as the build sees them (nothing in them
/// excluded, everything owned by root): those a read-only bind mount may
/// bind where they lie.
#[test]
fn directories_as_seen_are_those_with_nothing_excluded_or_owned_by_others() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for sub in ["clean/deep", "ignored/keep", "owned"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::write(root.join("clean/deep/f"), "f").unwrap();
    std::fs::write(root.join("ignored/keep/f"), "f").unwrap();
    std::fs::write(root.join("ignored/secret"), "s").unwrap();
    std::fs::write(root.join("owned/f"), "f").unwrap();
    let as_root = rustix::process::geteuid().is_root();
    if as_root {
        std::os::unix::fs::chown(root.join("owned/f"), Some(1234), None).unwrap();
    }
    let ignore = PatternMatcher::new(["ignored/secret"]).unwrap();
    let ctx = BuildContext::load(root, &ignore, None).unwrap();
    // Excluded below: not as seen, nor anything holding it.
    assert!(!ctx.is_as_seen("ignored"));
    assert!(!ctx.is_as_seen(""));
    assert!(!ctx.is_as_seen("/"));
    assert!(!ctx.is_as_seen("owned"));
    // As a user every file is the user's: nothing is as the build sees it.
    assert_eq!(ctx.is_as_seen("clean"), as_root);
    assert_eq!(ctx.is_as_seen("clean/deep"), as_root);
    assert_eq!(ctx.is_as_seen("ignored/keep"), as_root);
}
