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
//! The deletions themselves go through `kiln_tree` (by descriptor, never
//! through a symlink), which measures what they free the way `du` does:
//! allocated blocks, each inode once, a file with several links when its
//! last link goes.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{io_at, Error, Result};
use crate::owner::Owner;
use crate::store::{unique_suffix, Store};

static ABANDONED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

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

/// Deletes `path` (a file or a whole tree) with `kiln_tree`: by
/// descriptor, never through a symlink (a tree a container may still
/// change, a RUN that outlived its kiln, cannot have the deletion follow
/// it out), directories without the owner's rights (an overlay work dir,
/// an image's read-only dirs, seen by a rootless kiln) made writable on
/// the way. Returns the bytes freed, as `du` counts them; entries that
/// vanish meanwhile (another process deleting the same trash) are not
/// errors.
pub(crate) fn remove_tree(path: &Path) -> Result<u64> {
    kiln_tree::remove_tree(path).map_err(|e| Error::io(e.op, e.path, e.source))
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
    pub(crate) fn empty_trash(&self, only_unowned: bool) -> Result<Freed> {
        let mut freed = Freed::default();
        for path in self.list_dir(&self.trash_dir())? {
            if only_unowned {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                let owner = name.as_deref().and_then(Owner::of_name);
                if owner.is_some_and(|o| o != Owner::current() && o.is_alive()) {
                    continue;
                }
            }
            // As a collection does: said, left for the next, the rest
            // deleted.
            match remove_tree(&path) {
                Ok(bytes) => freed.add(bytes),
                Err(e) => tracing::warn!("left in the trash: {e}"),
            }
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
        for path in self.dead_entries(&self.ingest_dir(), "")? {
            freed.add(remove_tree(&path)?);
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
        let freed = store.empty_trash(false).unwrap();
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
        let freed = store.empty_trash(true).unwrap();
        assert_eq!(freed.entries, 3);
        assert_eq!(fs::read_dir(store.trash_dir()).unwrap().count(), 0);
    }
}
