//! Data-driven plan tests: `testdata/builder/plan/<case>/` holds a
//! `Dockerfile`, optional `options` (`build-arg K=V`, `target NAME` lines),
//! optional `images.json` (base image configs by reference; the busybox-like
//! default below otherwise) and `expected`, a JSON dump of every needed
//! stage: its base, steps (expanded, ready to run) and final config and
//! history. Regenerate with `KILN_BLESS=1`.

mod common;

use std::collections::BTreeMap;

use kiln_builder::plan::{plan, BuildOptions, FoundImage, ImageLookup, LookupError};
use kiln_layers::oci::{ImageConfig, Platform};
use kiln_layers::{Digest, Reference};

/// Base image configs by reference as `images.json` writes them; a key
/// names the image the Dockerfile's reference normalizes to.
struct TestImages(BTreeMap<String, ImageConfig>);

impl ImageLookup for TestImages {
    fn lookup(
        &self,
        reference: &Reference,
        _platform: &Platform,
    ) -> Result<FoundImage, LookupError> {
        let (key, config) = self
            .0
            .iter()
            .find(|(key, _)| Reference::parse(key).as_ref() == Ok(reference))
            .ok_or_else(|| LookupError::NotFound(format!("{reference}: not found")))?;
        Ok(FoundImage {
            reference: reference.clone(),
            // A made-up manifest digest, distinct per image.
            digest: Some(Digest::parse(&format!("sha256:{:0>64}", key.len())).unwrap()),
            config: config.clone(),
        })
    }
}

const DEFAULT_IMAGES: &str = r#"{
  "busybox": {"architecture": "amd64", "os": "linux",
    "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:1111111111111111111111111111111111111111111111111111111111111111"]},
    "history": [{"created_by": "base image"}]}
}"#;

fn run(case: &std::path::Path) -> String {
    let text = std::fs::read_to_string(case.join("Dockerfile")).unwrap();
    let images: BTreeMap<String, ImageConfig> = serde_json::from_str(
        &std::fs::read_to_string(case.join("images.json"))
            .unwrap_or_else(|_| DEFAULT_IMAGES.to_string()),
    )
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
    let ast = match kiln_parser::parse(&text, "Dockerfile") {
        Ok(a) => a,
        Err(e) => return format!("parse error: {e}\n"),
    };
    let typed = match kiln_parser::instructions::from_ast(&ast) {
        Ok(t) => t,
        Err(e) => return format!("parse error: {e}\n"),
    };
    let planned = match plan(&typed, &opts, &TestImages(images)) {
        Ok(p) => p,
        Err(e) => return format!("error: {e}\n"),
    };
    let mut out = serde_json::json!({
        "target": planned.target,
        "order": planned.order,
        "warnings": planned.warnings,
        "skipped": planned.stages.iter().filter(|s| !s.needed).map(|s| s.index).collect::<Vec<_>>(),
        "stages": planned.stages.iter().filter(|s| s.needed).map(|s| serde_json::json!({
            "index": s.index,
            "name": s.name,
            "base": s.base,
            "deps": s.deps,
            "steps": s.steps,
            "config": s.image.config,
            "history": s.image.history,
            "provenance": s.provenance,
        })).collect::<Vec<_>>(),
    });
    // Steps carry no cache key without a context; keep the dump stable.
    if let Some(stages) = out["stages"].as_array_mut() {
        for s in stages {
            for step in s["steps"].as_array_mut().into_iter().flatten() {
                step.as_object_mut().unwrap().remove("cache_key");
            }
        }
    }
    serde_json::to_string_pretty(&out).unwrap() + "\n"
}

#[test]
fn plan_cases() {
    common::run_area("plan", |case| {
        common::check_golden(case, "expected", &run(case))
    });
}

/// An image name is parsed where its line is expanded: an invalid one
/// (after ARG expansion) in FROM, `COPY --from` or `RUN --mount from=` is
/// an error naming that line and the expanded text, before any image is
/// looked up.
#[test]
fn invalid_image_names_name_their_line() {
    let cases = [
        (
            "ARG BASE=Busybox\nFROM ${BASE}\nRUN true\n",
            2,
            r#"invalid reference "Busybox": repository name (library/Busybox) must be lowercase"#,
        ),
        (
            "FROM busybox\nRUN true\nCOPY --from=registry.example.com/team/App:1 /x /x\n",
            3,
            r#"invalid reference "registry.example.com/team/App:1""#,
        ),
        (
            "FROM busybox\n\nRUN --mount=type=bind,from=tools:bad@tag,target=/t true\n",
            3,
            r#"invalid reference "tools:bad@tag": invalid digest "tag""#,
        ),
    ];
    let images: BTreeMap<String, ImageConfig> = serde_json::from_str(DEFAULT_IMAGES).unwrap();
    for (dockerfile, line, message) in cases {
        let typed = kiln_parser::instructions::from_ast(
            &kiln_parser::parse(dockerfile, "Dockerfile").unwrap(),
        )
        .unwrap();
        let err = plan(
            &typed,
            &BuildOptions::default(),
            &TestImages(images.clone()),
        )
        .unwrap_err();
        assert!(
            matches!(
                err.kind,
                kiln_builder::plan::PlanErrorKind::InvalidReference(_)
            ),
            "{dockerfile}: {err:?}"
        );
        assert_eq!(err.line(), Some(line), "{dockerfile}: {err}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("line {line}: {message}")),
            "{dockerfile}: {text}"
        );
    }
}

mod cache_keys {
    use super::*;
    use kiln_builder::context::BuildContext;
    use kiln_builder::dockerignore::PatternMatcher;
    use kiln_builder::git::{GitError, GitSource, ResolvedCommit};
    use kiln_builder::plan::keys::UrlContent;
    use kiln_builder::plan::{compute_cache_keys, KeySources, RemoteSources};

    /// Key sources with fixed answers: every Git ref names commit 1111…,
    /// every URL holds content 2222….
    struct FixedSources;

    impl KeySources for FixedSources {
        fn git_commit(&self, _: &GitSource) -> Result<ResolvedCommit, GitError> {
            Ok(ResolvedCommit {
                commit: "1".repeat(40),
                used_ref: "refs/tags/v1".into(),
            })
        }

        fn url_content(&self, _: &str) -> Result<Option<UrlContent>, String> {
            Ok(Some(UrlContent {
                digest: format!("sha256:{}", "2".repeat(64)),
                last_modified: Some(1_600_000_000),
            }))
        }
    }

    /// `stage line key` for every needed step of `dockerfile` over the
    /// context in `ctx_dir`.
    fn key_lines(ctx_dir: &std::path::Path, dockerfile: &str) -> String {
        let ctx = BuildContext::load(
            ctx_dir,
            &PatternMatcher::new(Vec::<String>::new()).unwrap(),
            None,
        )
        .unwrap();
        context_key_lines(&ctx, dockerfile)
    }

    /// [`key_lines`] over a context already loaded.
    fn context_key_lines(ctx: &BuildContext, dockerfile: &str) -> String {
        let typed = kiln_parser::instructions::from_ast(
            &kiln_parser::parse(dockerfile, "Dockerfile").unwrap(),
        )
        .unwrap();
        let images: BTreeMap<String, ImageConfig> = serde_json::from_str(DEFAULT_IMAGES).unwrap();
        let opts = BuildOptions {
            target_platform: Platform::parse("linux/amd64").unwrap(),
            build_platform: Platform::parse("linux/amd64").unwrap(),
            ..Default::default()
        };
        let mut p = plan(&typed, &opts, &TestImages(images)).unwrap();
        compute_cache_keys(&mut p, Some(ctx), &FixedSources).unwrap();
        let mut out = String::new();
        for &i in &p.order {
            for step in &p.stages[i].steps {
                out.push_str(&format!(
                    "{} {} {}\n",
                    i,
                    step.line,
                    step.cache_key.as_ref().unwrap()
                ));
            }
        }
        out
    }

    /// The keys of a fixed Dockerfile and context are pinned: a change of
    /// the encoding shows here (and then needs a new KEY_VERSION).
    #[test]
    fn keys_are_pinned_by_a_golden_file() {
        common::run_area("keys", |case| {
            let dockerfile = std::fs::read_to_string(case.join("Dockerfile")).unwrap();
            common::check_golden(case, "expected", &key_lines(case, &dockerfile))
        });
    }

    /// Two checkouts of the same files — another path, other mtimes and
    /// inode numbers — give the same keys (what lets the cache travel
    /// between machines).
    #[test]
    fn keys_do_not_depend_on_where_or_when_the_context_was_written() {
        let golden = common::area_dir("keys").join("all-step-kinds");
        let dockerfile = std::fs::read_to_string(golden.join("Dockerfile")).unwrap();
        let copy = tempfile::tempdir().unwrap();
        let other = copy.path().join("elsewhere/ctx");
        std::fs::create_dir_all(other.join("app")).unwrap();
        // Written in another order, a second apart: new inodes, new mtimes.
        for name in ["app/main.py", "app/data.txt"] {
            std::thread::sleep(std::time::Duration::from_millis(1100));
            std::fs::copy(golden.join(name), other.join(name)).unwrap();
        }
        use std::os::unix::fs::MetadataExt;
        let a = std::fs::metadata(golden.join("app/main.py")).unwrap();
        let b = std::fs::metadata(other.join("app/main.py")).unwrap();
        assert_ne!((a.ino(), a.mtime()), (b.ino(), b.mtime()));
        assert_eq!(
            key_lines(&golden, &dockerfile),
            key_lines(&other, &dockerfile)
        );
    }

    /// Two CI runners: each a store at a path of its own, each with a
    /// checkout of the same files at another path, with other mtimes and
    /// inode numbers, loaded through that store's stat cache (first cold,
    /// then warm, as a runner's second build finds it): the same keys
    /// everywhere, the golden file's. What lets `--cache-from` hit.
    #[test]
    fn two_runners_compute_the_same_keys() {
        use kiln_builder::context::StatCache;
        use std::os::unix::fs::MetadataExt;
        let golden = common::area_dir("keys").join("all-step-kinds");
        let dockerfile = std::fs::read_to_string(golden.join("Dockerfile")).unwrap();
        let expected = key_lines(&golden, &dockerfile);
        let mut seen = Vec::new();
        // Both kept to the end: the second runner's files cannot take the
        // first's inode numbers.
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        for ((runner, mtime), dir) in [("a", "2001-01-01 00:00:00"), ("b", "2010-06-15 12:34:56")]
            .into_iter()
            .zip(&dirs)
        {
            let store = kiln_layers::Store::open(dir.path().join(format!("runner-{runner}/store")))
                .unwrap();
            let ctx = dir.path().join(format!("checkout-{runner}/work/ctx"));
            std::fs::create_dir_all(ctx.join("app")).unwrap();
            // Another order each time: other inode numbers.
            let mut names = vec!["Dockerfile", "app/main.py", "app/data.txt"];
            if runner == "b" {
                names.reverse();
            }
            for name in names {
                std::fs::copy(golden.join(name), ctx.join(name)).unwrap();
            }
            let touched = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("find . -exec touch -h -d '{mtime}' {{}} +"))
                .current_dir(&ctx)
                .status()
                .unwrap();
            assert!(touched.success());
            let meta = std::fs::metadata(ctx.join("app/main.py")).unwrap();
            seen.push((meta.ino(), meta.mtime(), store.root().to_path_buf()));
            for pass in ["cold", "warm"] {
                let mut stats = StatCache::open_in(&store, &ctx).unwrap();
                let ignore = PatternMatcher::new(Vec::<String>::new()).unwrap();
                let loaded = BuildContext::load(&ctx, &ignore, Some(&mut stats)).unwrap();
                stats.save().unwrap();
                assert_eq!(
                    context_key_lines(&loaded, &dockerfile),
                    expected,
                    "runner {runner}, {pass} stat cache"
                );
            }
        }
        assert_ne!(seen[0].0, seen[1].0, "other inodes");
        assert_ne!(seen[0].1, seen[1].1, "other mtimes");
        assert_ne!(seen[0].2, seen[1].2, "other store paths");
    }

    const DOCKERFILE: &str =
        "FROM busybox\nRUN echo one\nCOPY app/ /app/\nRUN echo two\nCOPY other.txt /\n";

    fn keys(ctx_dir: &std::path::Path, dockerfile: &str, args: &[(&str, &str)]) -> Vec<String> {
        let typed = kiln_parser::instructions::from_ast(
            &kiln_parser::parse(dockerfile, "Dockerfile").unwrap(),
        )
        .unwrap();
        let images: BTreeMap<String, ImageConfig> = serde_json::from_str(DEFAULT_IMAGES).unwrap();
        let mut opts = BuildOptions {
            target_platform: Platform::parse("linux/amd64").unwrap(),
            build_platform: Platform::parse("linux/amd64").unwrap(),
            ..Default::default()
        };
        for (k, v) in args {
            opts.build_args.insert(k.to_string(), v.to_string());
        }
        let mut p = plan(&typed, &opts, &TestImages(images)).unwrap();
        let ctx = BuildContext::load(
            ctx_dir,
            &PatternMatcher::new(Vec::<String>::new()).unwrap(),
            None,
        )
        .unwrap();
        compute_cache_keys(&mut p, Some(&ctx), &RemoteSources::default()).unwrap();
        p.stages[p.target]
            .steps
            .iter()
            .map(|s| s.cache_key.as_ref().unwrap().to_string())
            .collect()
    }

    #[test]
    fn keys_follow_content_and_parents() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("app")).unwrap();
        std::fs::write(dir.path().join("app/main.py"), "print(1)").unwrap();
        std::fs::write(dir.path().join("other.txt"), "x").unwrap();
        let first = keys(dir.path(), DOCKERFILE, &[]);
        assert_eq!(first.len(), 4);
        assert_eq!(
            first,
            keys(dir.path(), DOCKERFILE, &[]),
            "keys are deterministic"
        );

        // Changing a file under app/ changes the COPY of app/ and all after.
        std::fs::write(dir.path().join("app/main.py"), "print(2)").unwrap();
        let changed = keys(dir.path(), DOCKERFILE, &[]);
        assert_eq!(first[0], changed[0]);
        assert_ne!(first[1], changed[1]);
        assert_ne!(first[2], changed[2]);
        assert_ne!(first[3], changed[3]);

        // A different RUN command changes its key and what follows only.
        let edited = keys(dir.path(), &DOCKERFILE.replace("echo two", "echo 2"), &[]);
        assert_eq!(changed[..2], edited[..2]);
        assert_ne!(changed[2], edited[2]);
        assert_ne!(changed[3], edited[3]);
    }

    #[test]
    fn args_reaching_a_run_change_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let df = "FROM busybox\nRUN echo before\nARG V=1\nRUN echo $V\n";
        let a = keys(dir.path(), df, &[]);
        let b = keys(dir.path(), df, &[("V", "2")]);
        assert_eq!(a[0], b[0], "the arg does not reach the first RUN");
        assert_ne!(a[1], b[1]);
        // An unused build arg changes nothing.
        let c = keys(dir.path(), df, &[("UNUSED", "x")]);
        assert_eq!(a, c);
    }

    #[test]
    fn missing_copy_source_is_an_error_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let typed = kiln_parser::instructions::from_ast(
            &kiln_parser::parse("FROM busybox\n\nCOPY nope.txt /\n", "Dockerfile").unwrap(),
        )
        .unwrap();
        let images: BTreeMap<String, ImageConfig> = serde_json::from_str(DEFAULT_IMAGES).unwrap();
        let mut p = plan(&typed, &BuildOptions::default(), &TestImages(images)).unwrap();
        let ctx = BuildContext::load(
            dir.path(),
            &PatternMatcher::new(Vec::<String>::new()).unwrap(),
            None,
        )
        .unwrap();
        let err = compute_cache_keys(&mut p, Some(&ctx), &RemoteSources::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.txt") && err.contains("line 3"), "{err}");
    }
}
