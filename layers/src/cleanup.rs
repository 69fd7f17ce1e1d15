//! Deleting from the store so that a kill at any moment leaves nothing
//! half-deleted in its place, and finding what killed processes left.
//!
//! A directory whose presence means something (a snapshot, a cache mount,
//! a build's scratch) is renamed into `trash/<kind>-<suffix>` first — one
//! atomic rename on the same filesystem — and only then deleted. A kill
//! during the deletion leaves a partial tree in `trash/` and nowhere else;
//! the next `prune` or `rmi`, or the next collection, deletes it.
//!
//! A build deletes nothing large itself: what it no longer needs (its
//! scratch, the leftovers of killed builds) is renamed into the trash
//! under a name without an owner ([`Store::abandon`]), and the collection
//! that runs after the build ([`crate::gc`]) deletes it.
//!
//! Scratch is named with an owner token ([`crate::store::unique_suffix`]):
//! [`Store::remove_dead_scratch`] moves to the trash what processes that
//! are gone left in `builds/` (work dirs, unfinished snapshots), `ingest/`
//! and the cache mounts being seeded, and never touches a live process's.
//! It lists only directories that hold scratch, never `snapshots/`, so
//! that its cost does not grow with the store.
//!
//! [`Meter`] measures what a deletion frees the way `du` does: allocated
//! blocks, each inode once, a file with several links when its last link
//! goes.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{io_at, Error, Result};
use crate::owner::Owner;
use crate::store::{unique_suffix, Store};

static ABANDONED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Disk space freed by deletions, counted as `du` counts it.
#[derive(Debug, Default)]
pub struct Meter {}

impl Meter {
    /// Notes that the entry `st` describes (read just before it was
    /// deleted) is deleted; returns the bytes that frees: all of a
    /// directory's or a file's with no other link, none of a file whose
    /// other links remain (wherever they are).
    fn deleted(&mut self, st: &rustix::fs::Stat) -> u64 {
        let dir = rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir();
        if dir || st.st_nlink <= 1 {
            u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512)
        } else {
            0
        }
    }
}

/// What a cleanup removed: how many entries and how many bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Freed {
    pub entries: usize,
    pub bytes: u64,
}

impl Freed {
    fn add(&mut self, bytes: u64) {
        self.entries += 1;
        self.bytes += bytes;
    }
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// Deletes `path` (a file or a whole tree), measuring it with `meter`;
/// returns the bytes freed. Directories without the owner's rights (an
/// overlay work dir, an image's read-only dirs, seen by a rootless kiln)
/// are made writable on the way. Entries that vanish meanwhile (another
/// process deleting the same trash) are not errors.
///
/// Below `path` everything goes by descriptor, each directory opened with
/// `O_NOFOLLOW` from its parent's and emptied through it: a tree a
/// container may still change (a RUN that outlived its kiln) cannot swap
/// a directory for a symlink and have the deletion, or the chmod, follow
/// it out of the tree.
pub(crate) fn remove_tree(path: &Path, meter: &mut Meter) -> Result<u64> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::io(
            "remove",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "not a removable path"),
        ));
    };
    let parent = match parent.as_os_str().is_empty() {
        true => Path::new("."),
        false => parent,
    };
    let flags =
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC;
    let dir = match rustix::fs::open(parent, flags, rustix::fs::Mode::empty()) {
        Ok(dir) => dir,
        Err(rustix::io::Errno::NOENT) => return Ok(0),
        Err(e) => return Err(Error::io("open", parent, e.into())),
    };
    remove_at(&dir, Path::new(name), path, meter)
}

/// Deletes the entry `name` of the directory `dir` (shown as `shown`).
fn remove_at(
    dir: &std::os::fd::OwnedFd,
    name: &Path,
    shown: &Path,
    meter: &mut Meter,
) -> Result<u64> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let failed = |what: &'static str| move |e: rustix::io::Errno| Error::io(what, shown, e.into());
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(0),
        Err(e) => return Err(failed("stat")(e)),
    };
    let unlink_file = |meter: &mut Meter| match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => Ok(meter.deleted(&st)),
        Err(rustix::io::Errno::NOENT) => Ok(0),
        Err(e) => Err(failed("remove")(e)),
    };
    if !FileType::from_raw_mode(st.st_mode).is_dir() {
        return unlink_file(meter);
    }
    // O_PATH first: a directory without read permission for its owner
    // (overlay's `work/work`) can be opened so, chmodded, then read.
    let pinned = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let pinned = match rustix::fs::openat(dir, name, pinned, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(0),
        // No longer a directory: a symlink (or a file) put in its place
        // meanwhile, removed itself, never followed.
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => return unlink_file(meter),
        Err(e) => return Err(failed("open")(e)),
    };
    if st.st_mode & 0o700 != 0o700 {
        // Through the descriptor's own path (fchmod takes no O_PATH one).
        let own = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&pinned));
        let _ = rustix::fs::chmod(own, Mode::from_raw_mode(0o700));
    }
    let read = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let sub = rustix::fs::openat(&pinned, ".", read, Mode::empty()).map_err(failed("open"))?;
    let mut names = Vec::new();
    let entries = rustix::fs::Dir::read_from(&sub).map_err(failed("list"))?;
    for entry in entries {
        let entry = entry.map_err(failed("list"))?;
        let entry_name = entry.file_name().to_bytes();
        if entry_name != b"." && entry_name != b".." {
            names.push(std::ffi::OsStr::from_bytes(entry_name).to_os_string());
        }
    }
    let mut bytes = 0;
    for entry_name in names {
        let entry_name = Path::new(&entry_name);
        bytes += remove_at(&sub, entry_name, &shown.join(entry_name), meter)?;
    }
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) => Ok(bytes + meter.deleted(&st)),
        Err(rustix::io::Errno::NOENT) => Ok(bytes),
        Err(e) => Err(failed("remove")(e)),
    }
}

/// A build's scratch directory under `builds/`, named with this process's
/// owner token, so that a later build can tell it from a live one once
/// this process is killed. Dropped, it goes through the trash.
#[derive(Debug)]
pub struct ScratchDir {
    store: Store,
    path: PathBuf,
}

impl ScratchDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Never made (`Store::lazy_scratch_dir`): nothing to do.
        if fs::symlink_metadata(&self.path).is_err() {
            return;
        }
        // Empty, it is removed here: one rmdir, and nothing left for a
        // collection.
        if fs::remove_dir(&self.path).is_ok() {
            return;
        }
        if let Err(e) = self.store.abandon(&self.path, "build") {
            tracing::warn!("{e}");
        }
    }
}

impl Store {
    /// Renames `path` (anything inside the store) into `trash/`; returns
    /// where it went, `None` when it is not there. `kind` starts the trash
    /// entry's name.
    pub(crate) fn move_to_trash(&self, path: &Path, kind: &str) -> Result<Option<PathBuf>> {
        self.rename_into_trash(path, &format!("{kind}-{}", unique_suffix()))
    }

    /// Renames `path` into the trash under a name without an owner, for
    /// the next collection (or prune) to delete: this process will not.
    /// Returns where it went, `None` when it is not there.
    pub fn abandon(&self, path: &Path, kind: &str) -> Result<Option<PathBuf>> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // `abandoned` where an owner token would be (see `Owner::of_name`);
        // the owner's pid keeps names of concurrent processes apart.
        let name = format!(
            "{kind}-abandoned.{}-{nanos}-{}",
            std::process::id(),
            ABANDONED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        self.rename_into_trash(path, &name)
    }

    fn rename_into_trash(&self, path: &Path, name: &str) -> Result<Option<PathBuf>> {
        let trash = self.trash_dir();
        let target = trash.join(name);
        match fs::rename(path, &target) {
            Ok(()) => Ok(Some(target)),
            Err(e) if not_found(&e) && fs::symlink_metadata(path).is_err() => {
                // Either `path` is gone (nothing to do) or `trash/` is
                // (a store from before it existed): made, and tried again.
                if trash.is_dir() {
                    return Ok(None);
                }
                fs::create_dir_all(&trash).map_err(io_at("create directory", &trash))?;
                match fs::rename(path, &target) {
                    Ok(()) => Ok(Some(target)),
                    Err(e) if not_found(&e) => Ok(None),
                    Err(e) => Err(Error::io("move to the trash", path, e)),
                }
            }
            Err(e) => Err(Error::io("move to the trash", path, e)),
        }
    }

    /// A new scratch directory `builds/<kind>-<owner>-…` (see
    /// [`ScratchDir`]).
    pub fn scratch_dir(&self, kind: &str) -> Result<ScratchDir> {
        let dir = self.lazy_scratch_dir(kind);
        fs::create_dir_all(dir.path()).map_err(io_at("create directory", dir.path()))?;
        Ok(dir)
    }

    /// Like [`Store::scratch_dir`], but the directory is not made: whoever
    /// first writes under it makes it (`create_dir_all`). A build whose
    /// steps are all cached then creates and removes nothing in `builds/`
    /// (after a collection deleted many files, creating one there can take
    /// milliseconds on ext4).
    pub fn lazy_scratch_dir(&self, kind: &str) -> ScratchDir {
        ScratchDir {
            store: self.clone(),
            path: self
                .builds_dir()
                .join(format!("{kind}-{}", unique_suffix())),
        }
    }

    /// Deletes what is in `trash/`. With `only_unowned`, entries that a
    /// live process other than this one moved there are left to it (it is
    /// deleting them); hold a [`crate::Lease`] then. Without, hold the
    /// collector's exclusive lock.
    pub(crate) fn empty_trash(&self, meter: &mut Meter, only_unowned: bool) -> Result<Freed> {
        let mut freed = Freed::default();
        for path in self.list_dir(&self.trash_dir())? {
            if only_unowned {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                let owner = name.as_deref().and_then(Owner::of_name);
                if owner.is_some_and(|o| o != Owner::current() && o.is_alive()) {
                    continue;
                }
            }
            freed.add(remove_tree(&path, meter)?);
        }
        Ok(freed)
    }

    /// Moves to the trash (or, for single files, deletes) the scratch that
    /// processes which are no longer running left behind: build dirs and
    /// unfinished snapshots in `builds/`, partial blobs in `ingest/` (not
    /// the resumable `<hex>.partial` downloads, kept for the next pull) and
    /// cache mounts being seeded. Scratch of a live process,
    /// and anything whose name carries no owner (from an older kiln; `kiln
    /// prune` removes it), is left alone. Cheap: renames and unlinks; the
    /// trash entries are abandoned ([`Store::abandon`]) to the collection.
    pub fn remove_dead_scratch(&self) -> Result<Freed> {
        let mut freed = Freed::default();
        for path in self.dead_entries(&self.builds_dir(), "")? {
            // The kind its name starts with: `build`, `snapshot`, …
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let kind = name.as_deref().and_then(|n| n.split('-').next());
            if self.abandon(&path, kind.unwrap_or("build"))?.is_some() {
                freed.entries += 1;
            }
        }
        for path in self.dead_entries(&self.cache_mounts_dir(), "seeding-")? {
            if self.abandon(&path, "cache-mount")?.is_some() {
                freed.entries += 1;
            }
        }
        let mut meter = Meter::default();
        for path in self.dead_entries(&self.ingest_dir(), "")? {
            freed.add(remove_tree(&path, &mut meter)?);
        }
        Ok(freed)
    }

    /// The entries of `dir` named `<prefix>…<owner token>` whose owner is
    /// gone. Runs before every build: names are only compared, and a path
    /// is made only for what is found.
    fn dead_entries(&self, dir: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
        let dead = |name: &str| {
            name.starts_with(prefix) && Owner::of_name(name).is_some_and(|o| !o.is_alive())
        };
        Ok(self
            .names_in(dir)?
            .into_iter()
            .filter(|name| dead(&name.to_string_lossy()))
            .map(|name| dir.join(name))
            .collect())
    }

    /// The entries of `dir`, in the order of their names; none when it
    /// does not exist.
    pub(crate) fn list_dir(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let mut names = self.names_in(dir)?;
        // By name, not by path: comparing paths splits both into
        // components, which made the sort of a large `snapshots/` the
        // largest cost of a build that had nothing to run.
        names.sort_unstable();
        Ok(names.into_iter().map(|name| dir.join(name)).collect())
    }

    /// The names in `dir`, in no order; none when it does not exist.
    fn names_in(&self, dir: &Path) -> Result<Vec<OsString>> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list", dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => out.push(entry.file_name()),
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(Error::io("list", dir, e)),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn du(path: &Path) -> u64 {
        let out = std::process::Command::new("du")
            .args(["-s", "-B1"])
            .arg(path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn a_removed_tree_frees_what_du_counted_and_shared_links_count_once() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/f"), vec![7u8; 10_000]).unwrap();
        fs::write(tree.join("a/b/g"), vec![1u8; 100_000]).unwrap();
        fs::hard_link(tree.join("a/b/g"), tree.join("link")).unwrap();
        std::os::unix::fs::symlink("a/f", tree.join("sym")).unwrap();
        let measured = du(&tree);
        let freed = remove_tree(&tree, &mut Meter::default()).unwrap();
        assert_eq!(freed, measured);
        assert!(!tree.exists());

        // A file linked from outside the tree frees nothing.
        fs::create_dir_all(tree.join("d")).unwrap();
        fs::write(tree.join("d/h"), vec![2u8; 50_000]).unwrap();
        fs::hard_link(tree.join("d/h"), tmp.path().join("outside")).unwrap();
        let dirs_only = du(&tree) - du(&tmp.path().join("outside"));
        let freed = remove_tree(&tree, &mut Meter::default()).unwrap();
        assert_eq!(freed, dirs_only);
        assert!(tmp.path().join("outside").is_file());

        // Three links in three trees (unchanged files of three COPY runs),
        // two trees deleted with one meter: the file stays, nothing of it
        // is counted; the last tree's deletion frees it.
        let trees: Vec<PathBuf> = ["x", "y", "z"].iter().map(|t| tmp.path().join(t)).collect();
        for t in &trees {
            fs::create_dir_all(t).unwrap();
        }
        fs::write(trees[0].join("f"), vec![3u8; 80_000]).unwrap();
        fs::hard_link(trees[0].join("f"), trees[1].join("f")).unwrap();
        fs::hard_link(trees[0].join("f"), trees[2].join("f")).unwrap();
        let file = fs::metadata(trees[0].join("f")).unwrap().blocks() * 512;
        let dir = |t: &Path| fs::metadata(t).unwrap().blocks() * 512;
        let dirs = dir(&trees[0]) + dir(&trees[1]);
        let last = dir(&trees[2]) + file;
        let mut meter = Meter::default();
        let freed = remove_tree(&trees[0], &mut meter).unwrap()
            + remove_tree(&trees[1], &mut meter).unwrap();
        assert_eq!(freed, dirs);
        assert_eq!(remove_tree(&trees[2], &mut meter).unwrap(), last);
    }

    /// A tree that changes while it is deleted (a container still running
    /// in it): a thread keeps swapping its directories for symlinks to a
    /// directory outside the tree (read-only, holding a file) and back.
    /// The deletion may fail on the way, but it never follows a symlink:
    /// the outside directory keeps its file and its mode.
    #[test]
    fn a_tree_swapping_dirs_for_symlinks_is_deleted_without_following_them() {
        use std::os::unix::fs::PermissionsExt;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        for round in 0..60 {
            fs::write(outside.join("keep"), "keep").unwrap();
            fs::set_permissions(&outside, fs::Permissions::from_mode(0o500)).unwrap();
            let tree = tmp.path().join(format!("tree-{round}"));
            for n in 0..100 {
                let dir = tree.join(format!("d{n}"));
                fs::create_dir_all(&dir).unwrap();
                fs::write(dir.join("keep"), "tree").unwrap();
                // Read-only, as an image's can be: the deletion chmods it
                // (and must chmod no symlink's target).
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o500)).unwrap();
            }
            let stop = Arc::new(AtomicBool::new(false));
            let swapper = {
                let (stop, tree, outside) = (stop.clone(), tree.clone(), outside.clone());
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let (dir, held) = (tree.join(format!("d{n}")), tree.join("held"));
                        if fs::rename(&dir, &held).is_ok() {
                            let _ = std::os::unix::fs::symlink(&outside, &dir);
                            std::thread::yield_now();
                            let _ = fs::remove_file(&dir);
                            let _ = fs::rename(&held, &dir);
                        }
                        n = (n + 1) % 100;
                    }
                })
            };
            let _ = remove_tree(&tree, &mut Meter::default());
            stop.store(true, Ordering::Relaxed);
            swapper.join().unwrap();
            assert!(
                outside.join("keep").is_file(),
                "round {round}: a file outside was deleted"
            );
            let mode = fs::metadata(&outside).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o500, "round {round}: the chmod followed a symlink");
            let _ = remove_tree(&tree, &mut Meter::default());
        }
    }

    /// Directories without the owner's rights (overlay's `work/work` is
    /// 000; an image's can be 0500 or 0300) are chmodded, read and
    /// removed. Root is refused nothing whatever the modes, so run as
    /// root the test runs itself again as their non-root owner (uid
    /// 65534), where it shows that the chmod comes before the read (with
    /// the read first: EACCES on the 0300 directory).
    #[test]
    fn directories_without_the_owners_rights_are_removed() {
        use std::os::unix::fs::PermissionsExt;
        if rustix::process::geteuid().is_root() {
            let name = "directories_without_the_owners_rights_are_removed";
            run_as_nobody(&format!("cleanup::tests::{name}"));
        }
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        for (dir, mode) in [("none", 0o000), ("rx", 0o500), ("wx", 0o300)] {
            let dir = tree.join(dir);
            fs::create_dir_all(dir.join("inner")).unwrap();
            fs::write(dir.join("inner/f"), "f").unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
        }
        remove_tree(&tree, &mut Meter::default()).unwrap();
        assert!(!tree.exists());
    }

    /// Runs the test `name` of this test binary as uid and gid 65534, and
    /// asserts that it ran and passed. The binary is copied into a memfd
    /// (mode 0755) and executed through it (`/proc/self/fd/N`): that user
    /// may not reach the directory it is in, nor have the right to
    /// execute it there.
    fn run_as_nobody(name: &str) {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let flags = rustix::fs::MemfdFlags::CLOEXEC;
        let exe = fs::File::from(rustix::fs::memfd_create("tests", flags).unwrap());
        let mut binary = fs::File::open(std::env::current_exe().unwrap()).unwrap();
        std::io::copy(&mut binary, &mut &exe).unwrap();
        rustix::fs::fchmod(&exe, rustix::fs::Mode::from_raw_mode(0o755)).unwrap();
        let out = std::process::Command::new(format!("/proc/self/fd/{}", exe.as_raw_fd()))
            .args([name, "--exact", "--test-threads=1"])
            .env("TMPDIR", "/tmp")
            .current_dir("/")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "as uid 65534:\n{stdout}\n{stderr}");
        assert!(
            stdout.contains("test result: ok. 1 passed"),
            "as uid 65534:\n{stdout}\n{stderr}"
        );
    }

    #[test]
    fn a_discarded_dir_leaves_its_place_at_once_and_the_trash_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let dir = store.cache_mounts_dir().join("m");
        fs::create_dir_all(dir.join("x")).unwrap();
        fs::write(dir.join("x/f"), "f").unwrap();
        let trashed = store.move_to_trash(&dir, "cache-mount").unwrap().unwrap();
        assert!(!dir.exists());
        assert!(trashed.join("x/f").is_file());
        assert_eq!(store.move_to_trash(&dir, "cache-mount").unwrap(), None);
        let freed = store.empty_trash(&mut Meter::default(), false).unwrap();
        assert_eq!(freed.entries, 1);
        assert!(freed.bytes > 0);
        assert_eq!(fs::read_dir(store.trash_dir()).unwrap().count(), 0);
    }

    #[test]
    fn dead_scratch_goes_and_live_scratch_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        // A process that has exited: its pid and start time.
        let mut child = std::process::Command::new("sleep")
            .arg("0")
            .spawn()
            .unwrap();
        let text = fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
        child.wait().unwrap();
        let start: u64 = text[text.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .nth(19)
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        let dead = format!("{}.{start}-1-2", child.id());
        let live = store.scratch_dir("build").unwrap();
        fs::write(live.path().join("f"), "live").unwrap();
        let dead_build = store.builds_dir().join(format!("build-{dead}"));
        fs::create_dir_all(dead_build.join("step/upper")).unwrap();
        let parked = store.parked_dir().join("trash-1700000000-4096-1-2-3");
        fs::create_dir_all(&parked).unwrap();
        let live_unpack = store.unfinished_snapshot_path();
        fs::create_dir_all(&live_unpack).unwrap();
        let dead_ingest = store.ingest_dir().join(format!("abc-{dead}"));
        fs::write(&dead_ingest, "partial").unwrap();
        let partial = store.ingest_dir().join("abc.partial");
        fs::write(&partial, "resumable").unwrap();
        let dead_unpack = store.builds_dir().join(format!("snapshot-{dead}"));
        fs::create_dir_all(&dead_unpack).unwrap();
        // An older kiln's unfinished snapshot: `snapshots/` is not listed
        // before a build (the collection takes it).
        let old_unpack = store.snapshots_dir().join(format!(".tmp-{dead}"));
        fs::create_dir_all(&old_unpack).unwrap();
        let freed = store.remove_dead_scratch().unwrap();
        assert_eq!(freed.entries, 3);
        assert!(!dead_build.exists() && !dead_ingest.exists() && !dead_unpack.exists());
        assert!(live.path().join("f").is_file(), "a live build's scratch");
        assert!(live_unpack.is_dir(), "a live process's unfinished snapshot");
        assert!(parked.is_dir() && partial.is_file() && old_unpack.is_dir());
        let mut trashed: Vec<String> = fs::read_dir(store.trash_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        trashed.sort();
        assert_eq!(trashed.len(), 2, "{trashed:?}");
        assert!(trashed[0].starts_with("build-abandoned."), "{trashed:?}");
        assert!(trashed[1].starts_with("snapshot-abandoned."), "{trashed:?}");
        // Abandoned: whoever empties the trash deletes them.
        for name in &trashed {
            assert_eq!(Owner::of_name(name), None, "{name}");
        }
        let path = live.path().to_path_buf();
        drop(live);
        assert!(!path.exists());
        assert_eq!(fs::read_dir(store.trash_dir()).unwrap().count(), 3);
        let freed = store.empty_trash(&mut Meter::default(), true).unwrap();
        assert_eq!(freed.entries, 3);
        assert_eq!(fs::read_dir(store.trash_dir()).unwrap().count(), 0);
    }
}
