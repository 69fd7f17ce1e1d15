//! The store's garbage collection end to end, as root (real builds):
//! the automatic collection after a build under the policy of
//! `<root>/gc.toml` (keep-storage least recently used first,
//! keep-duration, types, enabled), its detaching and its locking against
//! concurrent builds, min-free-space on a small filesystem made for the
//! test, `kiln system df` against `du`, and `kiln prune`'s flags and dry
//! run, the seal that makes snapshots trusted after a reboot, and the
//! order of a build's fsyncs. Builds
//! run their collection in the foreground (`KILN_GC`, set by
//! `common::kiln_command`) unless a test says otherwise.

#[path = "../common/mod.rs"]
mod common;

mod concurrency;
mod df;
mod policy;
mod prune;
mod seal;
mod space;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::kiln_command;

macro_rules! require_root {
    () => {
        kiln_testsupport::require_root!("real namespaces and overlay mounts")
    };
}
pub(crate) use require_root;

/// Like `require_root!`, for tests whose only need for root is kiln's
/// own (they run rootless in scripts/test-rootless).
macro_rules! require_namespaces {
    () => {
        kiln_testsupport::require_namespaces!("real namespaces and overlay mounts")
    };
}
pub(crate) use require_namespaces;

pub(crate) use common::text;
/// The suite's store: `busybox:latest` imported, scratch beside it.
pub(crate) use common::BusyboxStore as Fixture;

/// What the suite adds to it.
impl Fixture {
    /// Writes the store's policy file.
    pub(crate) fn policy(&self, text: &str) {
        std::fs::write(self.root().join("gc.toml"), text).expect("write gc.toml");
    }

    /// `kiln --root ROOT ARGS…` (plain progress, foreground collection).
    pub(crate) fn kiln(&self, args: &[&str]) -> Command {
        let mut command = kiln_command();
        command
            .arg("--root")
            .arg(self.root())
            .args(args)
            .env("KILN_PROGRESS", "plain");
        command
    }

    /// Runs `kiln ARGS…`, which must succeed; returns stdout and stderr.
    pub(crate) fn ok(&self, args: &[&str]) -> Output {
        let out = self.kiln(args).output().expect("run kiln");
        assert!(out.status.success(), "kiln {args:?}: {}", text(&out));
        out
    }

    /// Builds `context` with `args`; returns the build's output.
    pub(crate) fn build(&self, context: &Path, args: &[&str]) -> Output {
        self.ok(&build_args(context, args))
    }

    /// Like [`Fixture::build`], with the automatic collection detached (as
    /// by default): the build returns before it.
    pub(crate) fn build_detached(&self, context: &Path, args: &[&str]) -> Output {
        let args = build_args(context, args);
        let out = self
            .kiln(&args)
            .env("KILN_GC", "detached")
            .output()
            .expect("run kiln build");
        assert!(out.status.success(), "kiln {args:?}: {}", text(&out));
        out
    }
}

/// `command` run by `unshare` in a time namespace whose boottime runs
/// 1,000,000 s ahead of the host's (its program, arguments and
/// environment).
pub(crate) fn ahead_in_time(command: &Command) -> Command {
    wrapped(
        &["unshare", "--time", "--boottime", "1000000", "--fork", "--"],
        command,
    )
}

/// `command` (its program, arguments and environment) run by `wrapper`,
/// a program and its arguments that end with the command to run.
pub(crate) fn wrapped(wrapper: &[&str], command: &Command) -> Command {
    let mut outer = Command::new(wrapper[0]);
    outer
        .args(&wrapper[1..])
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => outer.env(key, value),
            None => outer.env_remove(key),
        };
    }
    outer
}

/// `build ARGS… CONTEXT`.
fn build_args<'a>(context: &'a Path, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    all.push(context.to_str().expect("utf-8 path"));
    all
}

/// Whether the build's RUN step (the last one with `RUN` in its title)
/// came from the cache, in plain progress.
pub(crate) fn run_cached(out: &Output) -> bool {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let step = stderr
        .lines()
        .rfind(|l| l.starts_with('#') && l.contains("] RUN "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no RUN step in\n{stderr}"))
        .to_string();
    stderr.lines().any(|l| l == format!("{step} CACHED"))
}

/// `du -s -c -B1` of the paths that exist among `paths`, together.
pub(crate) fn du(paths: &[PathBuf]) -> u64 {
    let present: Vec<&PathBuf> = paths.iter().filter(|p| p.exists()).collect();
    if present.is_empty() {
        return 0;
    }
    let out = Command::new("du")
        .args(["-s", "-c", "-B1"])
        .args(&present)
        .output()
        .expect("run du");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("du said {stdout}"))
}

/// `kiln system df --format json`.
pub(crate) fn df(fixture: &Fixture) -> serde_json::Value {
    let out = fixture.ok(&["system", "df", "--format", "json"]);
    serde_json::from_slice(&out.stdout).expect("df json")
}

/// The size of `area` in `df`'s JSON.
pub(crate) fn area(df: &serde_json::Value, name: &str, field: &str) -> u64 {
    df["Areas"]
        .as_array()
        .expect("areas")
        .iter()
        .find(|a| a["Type"] == name)
        .and_then(|a| a[field].as_u64())
        .unwrap_or_else(|| panic!("no {name} in {df}"))
}

/// The start time of process `pid` as this process's `/proc` shows it
/// (field 22 of `/proc/<pid>/stat`).
pub(crate) fn start_time(pid: &str) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    stat[stat.rfind(')').expect("comm") + 1..]
        .split_whitespace()
        .nth(19)
        .expect("field 22")
        .to_string()
}

/// An owner token, `<pid>.<start>`, of a process that has exited.
pub(crate) fn dead_owner() -> String {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let start = start_time(&child.id().to_string());
    child.wait().expect("wait");
    format!("{}.{start}", child.id())
}

/// Every snapshot's stamp: its file, boot and time (panics on one that
/// is missing or does not parse).
pub(crate) fn stamps(root: &Path) -> Vec<(PathBuf, String, u128)> {
    let dir = std::fs::read_dir(root.join("snapshots")).expect("snapshots");
    dir.map(|entry| {
        let path = entry.expect("entry").path().join("stamp");
        let text = std::fs::read_to_string(&path).expect("stamp");
        let mut words = text.split_whitespace();
        match (words.next(), words.next(), words.next().map(str::parse)) {
            (Some("boot"), Some(boot), Some(Ok(at))) => (path, boot.to_string(), at),
            _ => panic!("{}: not a stamp: {text:?}", path.display()),
        }
    })
    .collect()
}

/// `count` files of `size` bytes in `dir`.
pub(crate) fn fill(dir: &Path, count: usize, size: usize) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for i in 0..count {
        std::fs::write(dir.join(format!("f{i}")), vec![b'x'; size]).expect("write");
    }
}

/// Sets `path`'s mtime `secs` seconds into the past.
pub(crate) fn age(path: &Path, secs: u64) {
    let when = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(when))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The cache record files of the store.
pub(crate) fn records(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root.join("cache"))
        .expect("cache dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    out.sort();
    out
}

/// The files that make image `tag` whole: its manifest, config and layer
/// blobs and its layers' snapshot directories, each with its inode and
/// birth time. A file that was collected and made again (a snapshot
/// unpacked anew from its blob, which `kiln run` would do without a word)
/// has another birth time, even where its inode number was reused.
pub(crate) fn image_files(root: &Path, tag: &str) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let store = kiln_layers::store::Store::open(root).expect("open the store");
    let platform = kiln_layers::oci::Platform::host();
    let found = store.find(tag, &platform).expect("find the image");
    let [tagged] = found.as_slice() else {
        panic!("{tag}: {found:?}");
    };
    let image = store
        .read_image(&tagged.descriptor, &platform)
        .expect("read the image");
    let mut paths = vec![
        store.blob_path(&tagged.descriptor.digest),
        store.blob_path(&image.manifest_descriptor.digest),
        store.blob_path(image.id()),
    ];
    paths.extend(
        image
            .manifest
            .layers
            .iter()
            .map(|l| store.blob_path(&l.digest)),
    );
    paths.extend(image.chain_ids().iter().map(|c| store.snapshot_path(c)));
    paths.dedup();
    paths
        .into_iter()
        .map(|path| {
            let meta =
                std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let born = meta.created().expect("birth time (statx)");
            (path, meta.ino(), born)
        })
        .collect()
}

/// Checks that `collectable`, what `kiln system df` says keep-storage
/// limits, is what [`du_collectable`] measures. As root only: in the
/// rootless run the store holds trees of subordinate ids that `du`, run as
/// the user, may not read.
pub(crate) fn assert_du_collectable(root: &Path, collectable: u64, context: &str) {
    if kiln_testsupport::is_root() {
        assert_eq!(du_collectable(root), collectable, "{context}");
    }
}

/// What `du` counts in the store outside what its tagged images keep
/// ([`image_files`] of each, their snapshots' whole directories) and the
/// store's own small files at its top (index, policy, logs, locks): the
/// bytes keep-storage limits, measured without kiln's inventory.
fn du_collectable(root: &Path) -> u64 {
    let store = kiln_layers::store::Store::open(root).expect("open the store");
    let mut kept: Vec<PathBuf> = Vec::new();
    for tagged in store.list().expect("list the images") {
        let name = tagged.name.clone();
        for (path, _, _) in image_files(root, &name) {
            // A snapshot's `fs/`: its whole directory (marker, stamp).
            match path.file_name().is_some_and(|n| n == "fs") {
                true => kept.extend(path.parent().map(Path::to_path_buf)),
                false => kept.push(path),
            }
        }
    }
    kept.extend(
        std::fs::read_dir(root)
            .expect("store")
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .map(|e| e.path()),
    );
    kept.sort();
    kept.dedup();
    // The store's folders themselves (the root, its subfolders, the
    // blob algorithm folders): their own blocks, not their contents.
    let mut folders = vec![root.to_path_buf()];
    for dir in [root.to_path_buf(), root.join("blobs")] {
        folders.extend(
            std::fs::read_dir(&dir)
                .expect("store folder")
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    let folders: u64 = folders
        .iter()
        .map(|d| {
            use std::os::unix::fs::MetadataExt;
            std::fs::symlink_metadata(d).expect("folder").blocks() * 512
        })
        .sum();
    // `du` of several paths counts a file linked into two of them once.
    du(&[root.to_path_buf()]) - du(&kept) - folders
}

/// Whether every file of [`image_files`]'s `before` is still there, the
/// same file.
pub(crate) fn assert_untouched(
    root: &Path,
    tag: &str,
    before: &[(PathBuf, u64, std::time::SystemTime)],
) {
    assert_eq!(image_files(root, tag), before, "{tag}'s files changed");
}
