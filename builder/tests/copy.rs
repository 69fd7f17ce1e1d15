//! Data-driven COPY/ADD tests: `testdata/builder/copy/<case>/` holds
//! - `context`: tree spec of the build context (tests/common/tree.rs), plus
//!   optional `context-files/` copied in as-is (archives) and `dockerignore`;
//! - `lower`: tree spec of the image's layers, top-most first, separated by
//!   `---` lines (optional);
//! - `stage`: tree spec of another stage's rootfs for `--from=stage`;
//! - `ops`: `WORKDIR dir`, `COPY|ADD [--chown=..] [--chmod=..]
//!   [--exclude=..] [--from=stage] SRC... DEST`, `HEREDOC NAME DEST TEXT`;
//! - `expected`: the listing of the upper dir afterwards, with errors.
//!
//! Regenerate with `KILN_BLESS=1`.

mod common;
#[path = "common/tree.rs"]
mod tree;

use std::path::{Path, PathBuf};

use kiln_builder::context::BuildContext;
use kiln_builder::copy::{self, CopyOptions};
use kiln_builder::dockerignore::{parse_ignore_file, PatternMatcher};
use kiln_builder::modes::Chmod;
use kiln_builder::rootfs::{DirTree, LayeredRootfs, SourceTree};
use kiln_builder::users::ChownSpec;

fn run_ops(case: &Path, work: &Path) -> String {
    let ctx_dir = work.join("context");
    std::fs::create_dir_all(&ctx_dir).unwrap();
    tree::copy_files(&case.join("context-files"), &ctx_dir);
    if let Ok(spec) = std::fs::read_to_string(case.join("context")) {
        tree::build(&ctx_dir, &spec);
    }
    tree::set_mtime(&ctx_dir);
    let ignore = match std::fs::read_to_string(case.join("dockerignore")) {
        Ok(text) => PatternMatcher::from_lines("dockerignore", &parse_ignore_file(&text)).unwrap(),
        Err(_) => PatternMatcher::new(Vec::<String>::new()).unwrap(),
    };
    let context = BuildContext::load(&ctx_dir, &ignore, None).unwrap();

    let mut lowers: Vec<PathBuf> = Vec::new();
    if let Ok(spec) = std::fs::read_to_string(case.join("lower")) {
        for (i, layer) in spec.split("\n---\n").enumerate() {
            let dir = work.join(format!("lower{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            tree::build(&dir, layer);
            lowers.push(dir);
        }
    }
    let stage_dir = work.join("stage");
    std::fs::create_dir_all(&stage_dir).unwrap();
    if let Ok(spec) = std::fs::read_to_string(case.join("stage")) {
        tree::build(&stage_dir, &spec);
    }
    let stage = DirTree::new(&stage_dir);
    let upper = work.join("upper");
    std::fs::create_dir_all(&upper).unwrap();
    let rootfs = LayeredRootfs::new(&upper, lowers);

    let mut log = String::new();
    let mut workdir = "/".to_string();
    let ops = std::fs::read_to_string(case.join("ops")).unwrap();
    for (n, line) in ops
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let mut words: Vec<&str> = line.split_whitespace().collect();
        let verb = words.remove(0);
        let result: Result<(), String> = match verb {
            "WORKDIR" => {
                workdir = copy::dest_path(&workdir, words[0])
                    .trim_end_matches('/')
                    .to_string();
                if workdir.is_empty() {
                    workdir = "/".into();
                }
                Ok(())
            }
            "HEREDOC" => {
                let (name, dest) = (words[0], words[1]);
                let text = words[2..].join(" ").replace("\\n", "\n");
                let tmp = work.join(format!("heredoc{n}"));
                std::fs::create_dir_all(&tmp).unwrap();
                copy::write_heredoc(&tmp, name, &text).unwrap();
                copy::copy(
                    &DirTree::new(&tmp),
                    name,
                    &rootfs,
                    &copy::dest_path(&workdir, dest),
                    &CopyOptions::single_file(),
                )
                .map(|_| ())
                .map_err(|e| e.to_string())
            }
            "COPY" | "ADD" => {
                let mut opts = CopyOptions::dockerfile_copy(verb == "ADD");
                let mut from_stage = false;
                let mut parents = false;
                let mut chown = None;
                while words.first().is_some_and(|w| w.starts_with("--")) {
                    let flag = words.remove(0);
                    let (k, v) = flag.split_once('=').unwrap_or((flag, ""));
                    match k {
                        "--chown" => chown = Some(ChownSpec::parse(v)),
                        "--chmod" => opts.chmod = Some(Chmod::parse(v).unwrap()),
                        "--exclude" => opts.exclude_patterns.push(v.to_string()),
                        "--from" => from_stage = true,
                        "--parents" => parents = true,
                        other => panic!("unknown flag {other}"),
                    }
                }
                let dest = words.pop().unwrap();
                let src_tree: &dyn SourceTree = if from_stage { &stage } else { &context };
                (|| {
                    if let Some(spec) = chown {
                        opts.chown = Some(spec.resolve(&rootfs).map_err(|e| e.to_string())?.owner);
                    }
                    for src in &words {
                        let run = if parents {
                            copy::copy_parents
                        } else {
                            copy::copy
                        };
                        run(
                            src_tree,
                            src,
                            &rootfs,
                            &copy::dest_path(&workdir, dest),
                            &opts,
                        )
                        .map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })()
            }
            other => panic!("unknown op {other}"),
        };
        if let Err(e) = result {
            log.push_str(&format!("# line {}: {line}\n#   error: {e}\n", n + 1));
        }
    }
    let work_str = work.display().to_string();
    format!("{}{log}", tree::listing(&upper)).replace(&work_str, "<work>")
}

#[test]
fn copy_cases() {
    common::run_area("copy", |case| {
        let work = tempfile::tempdir().unwrap();
        let actual = run_ops(case, work.path());
        common::check_golden(case, "expected", &actual)
    });
}

mod url_sources {
    use std::os::unix::fs::MetadataExt;

    use kiln_builder::copy::{fetch_url, CopyError, FetchInfo, UrlDownloads, UrlFetcher};

    struct Fixed(&'static [u8]);

    impl UrlFetcher for Fixed {
        fn fetch(&self, _url: &str, out: &mut dyn std::io::Write) -> Result<FetchInfo, String> {
            out.write_all(self.0).map_err(|e| e.to_string())?;
            Ok(FetchInfo {
                last_modified: Some(1_234_567_890),
            })
        }
    }

    const SHA256_HELLO: &str =
        "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn fetched_file_is_0600_with_last_modified_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let name = fetch_url(
            &Fixed(b"hello"),
            "https://example.invalid/a/file.txt?x=1",
            Some(SHA256_HELLO),
            dir.path(),
        )
        .unwrap();
        assert_eq!(name, "file.txt");
        let meta = std::fs::metadata(dir.path().join("file.txt")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        assert_eq!(meta.mtime(), 1_234_567_890);
        assert_eq!(
            std::fs::read(dir.path().join("file.txt")).unwrap(),
            b"hello"
        );
    }

    /// Sends no Last-Modified.
    struct Undated(&'static [u8]);

    impl UrlFetcher for Undated {
        fn fetch(&self, _url: &str, out: &mut dyn std::io::Write) -> Result<FetchInfo, String> {
            out.write_all(self.0).map_err(|e| e.to_string())?;
            Ok(FetchInfo {
                last_modified: None,
            })
        }
    }

    /// Without Last-Modified the file's mtime is the epoch, as BuildKit's
    /// HTTP source sets it, not the download's time: two builds fetching
    /// the same bytes make the same layer.
    #[test]
    fn a_file_served_without_last_modified_is_dated_the_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let url = "https://example.invalid/undated.txt";
        fetch_url(&Undated(b"hello"), url, None, dir.path()).unwrap();
        let meta = std::fs::metadata(dir.path().join("undated.txt")).unwrap();
        assert_eq!((meta.mtime(), meta.mtime_nsec()), (0, 0));
        assert_eq!(meta.mode() & 0o7777, 0o600);
    }

    /// Serves `/<name>` as the name's bytes, counting requests per URL.
    #[derive(Default)]
    struct Counting(std::sync::Mutex<std::collections::BTreeMap<String, usize>>);

    impl UrlFetcher for Counting {
        fn fetch(&self, url: &str, out: &mut dyn std::io::Write) -> Result<FetchInfo, String> {
            *self.0.lock().unwrap().entry(url.to_string()).or_default() += 1;
            let body = url.rsplit('/').next().unwrap_or("");
            out.write_all(body.as_bytes()).map_err(|e| e.to_string())?;
            Ok(FetchInfo {
                last_modified: Some(1_234_567_890),
            })
        }
    }

    #[test]
    fn a_build_downloads_each_url_once_and_removes_the_files_when_done() {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("urls");
        let fetcher = Counting::default();
        let first_path = {
            let downloads = UrlDownloads::new(&fetcher, dir.clone());
            let first = downloads.get("https://a.invalid/x/hello").unwrap();
            let again = downloads.get("https://a.invalid/x/hello").unwrap();
            // The same name from another URL is another file.
            let other = downloads.get("https://b.invalid/y/hello").unwrap();
            assert_eq!(first, again);
            assert_ne!(first.path(), other.path());
            assert_eq!(first.name, "hello");
            assert_eq!(first.digest, SHA256_HELLO);
            assert_eq!(first.last_modified, Some(1_234_567_890));
            let meta = std::fs::metadata(first.path()).unwrap();
            assert_eq!(meta.mode() & 0o7777, 0o600);
            assert_eq!(meta.mtime(), 1_234_567_890);
            assert_eq!(std::fs::read(other.path()).unwrap(), b"hello");
            first.path()
        };
        let counts = fetcher.0.lock().unwrap().clone();
        assert_eq!(counts.get("https://a.invalid/x/hello"), Some(&1));
        assert_eq!(counts.get("https://b.invalid/y/hello"), Some(&1));
        assert!(!first_path.exists());
        assert!(!dir.exists());
    }

    #[test]
    fn a_download_is_verified_against_each_checksum_algorithm() {
        let work = tempfile::tempdir().unwrap();
        let fetcher = Counting::default();
        let downloads = UrlDownloads::new(&fetcher, work.path().join("urls"));
        let hello = downloads.get("https://a.invalid/hello").unwrap();
        hello.verify(SHA256_HELLO).unwrap();
        hello
            .verify(
                "sha512:9b71d224bd62f3785d96d46ad3ea3d73319bfbc2890caadae2dff72519673ca7\
                 2323c3d99ba5c11d7c7acc6e14b8c5da0c4663475c2e5c3adef46f73bcdec043",
            )
            .unwrap();
        let err = hello
            .verify(&format!("sha384:{}", "0".repeat(96)))
            .unwrap_err();
        assert!(matches!(err, CopyError::ChecksumMismatch { .. }), "{err}");
        let err = hello
            .verify(&format!("sha256:{}", "0".repeat(64)))
            .unwrap_err();
        assert!(err.to_string().contains("https://a.invalid/hello"), "{err}");
        assert!(matches!(
            hello.verify("md5:abc").unwrap_err(),
            CopyError::BadChecksum(_)
        ));
        assert_eq!(fetcher.0.lock().unwrap().values().sum::<usize>(), 1);
    }

    #[test]
    fn checksum_mismatch_and_bad_checksums_fail() {
        let dir = tempfile::tempdir().unwrap();
        let err = fetch_url(
            &Fixed(b"HELLO"),
            "https://example.invalid/f",
            Some(SHA256_HELLO),
            dir.path(),
        )
        .unwrap_err();
        assert!(matches!(err, CopyError::ChecksumMismatch { .. }), "{err}");
        let err = fetch_url(
            &Fixed(b"hello"),
            "https://example.invalid/f",
            Some("md5:abc"),
            dir.path(),
        )
        .unwrap_err();
        assert!(matches!(err, CopyError::BadChecksum(_)), "{err}");
    }
}
