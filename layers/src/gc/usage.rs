//! Disk usage as `du` counts it (allocated blocks, an inode with several
//! links once), and a cache of it for the store's trees that never change
//! once made: complete snapshots and parked upper dirs, whose 20,000-file
//! trees a collection after every build would otherwise walk again each
//! time. The cache lives in `<root>/gc-sizes.json` ([`Store::gc_sizes_path`]),
//! keyed by the tree's path under the root, with its directory's inode and
//! change time: a tree replaced under the same name is measured again.
//!
//! A build notes the size of each tree it leaves in the store (a snapshot
//! it made of a step's upper dir, a parked duplicate of one), taken from
//! the metadata its layer's tar was written from ([`Tally`], the same sum
//! a walk makes): lines in `<root>/gc-notes/` ([`Store::note_tree_size`]),
//! which the next collection takes into the cache, so that it walks only
//! trees no build noted (pulled snapshots, snapshots unpacked because
//! adopting the upper dir failed, a snapshot marked linked since, trees of
//! older kilns, notes lost past the cap). The notes were made for
//! 20,000-file trees that a collection a minute spent seconds walking
//! while builds ran.
//!
//! Trees may share files: incremental COPY hard-links a new snapshot's
//! unchanged files to an earlier snapshot's. [`measure_tree`] splits a
//! tree's size into what only it holds ([`TreeSize::own`]: files whose
//! every link is inside it) and the files with links elsewhere
//! ([`TreeSize::shared`], by inode), which the inventory counts once per
//! area and frees with their last holder. A snapshot whose files gain
//! links elsewhere is marked ([`Store::mark_snapshot_linked`]), which
//! changes its directory's change time: it is measured again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fd::AsFd;
use rustix::fs::{openat, statat, AtFlags, Dir, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::store::{write_atomic, Store};

/// Bytes `path` (a file or a whole tree) holds on disk, as `du -s -B1`
/// counts them; entries that vanish meanwhile count nothing.
pub(crate) fn du(path: &Path) -> Result<u64> {
    measure_tree(path).map(|size| size.total())
}

/// A tree's size as `du` counts it ([`TreeSize::total`]), split by whether
/// a file's links are all inside the tree. A build takes it as it writes a
/// layer's tar ([`crate::diff::LayerBlob::tree`]) and notes it for the
/// collection ([`Store::note_tree_size`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeSize {
    /// Directories, and files with every link inside the tree.
    pub(crate) own: u64,
    /// Files with links outside the tree, as [`Run`]s, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) shared: Vec<Run>,
}

impl TreeSize {
    /// What `du` counts for the tree alone.
    pub fn total(&self) -> u64 {
        self.own + self.shared.iter().map(|r| r.1 * r.2).sum::<u64>()
    }
}

/// A tree's size summed from the metadata of its root and of every entry
/// under it, each once, as [`measure_tree`] sums it from a walk: the one
/// rule for what a file counts, whoever looked at it.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    own: u64,
    links: Links,
}

impl Tally {
    /// Counts one entry: `blocks` of 512 bytes allocated; a file (not a
    /// directory) with several links is held back until the end, when it
    /// is known whether all of them are inside the tree.
    pub(crate) fn add(&mut self, blocks: u64, is_dir: bool, nlink: u64, ino: u64) {
        let bytes = blocks.saturating_mul(512);
        if !is_dir && nlink > 1 {
            self.links.entry(ino).or_insert((nlink, 0, bytes)).1 += 1;
        } else {
            self.own = self.own.saturating_add(bytes);
        }
    }

    pub(crate) fn finish(self) -> TreeSize {
        let mut size = TreeSize {
            own: self.own,
            shared: Vec::new(),
        };
        let mut shared = Vec::new();
        for (ino, (nlink, seen, bytes)) in self.links {
            if seen >= nlink {
                size.own += bytes;
            } else {
                shared.push((ino, bytes));
            }
        }
        shared.sort_unstable();
        size.shared = to_runs(&shared);
        size
    }
}

/// Files with consecutive inode numbers and one size each: (first inode,
/// how many, bytes each). The files a COPY linked were made one after the
/// other, so 20,000 of them are a few runs, not 20,000 entries.
pub(crate) type Run = (u64, u64, u64);

/// Sorted (inode, bytes) pairs as [`Run`]s.
fn to_runs(shared: &[(u64, u64)]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for &(ino, bytes) in shared {
        match runs.last_mut() {
            Some((start, count, b)) if *b == bytes && *start + *count == ino => *count += 1,
            _ => runs.push((ino, 1, bytes)),
        }
    }
    runs
}

/// The inode ranges of many trees' shared runs cut where any run starts or
/// ends, each piece with how many of the trees hold it: what a file
/// shared by several trees counts in each, and when it is freed.
#[derive(Debug, Default)]
pub(crate) struct Segments {
    /// Piece `i` is inodes `bounds[i]..bounds[i + 1]`.
    bounds: Vec<u64>,
    holders: Vec<u32>,
    bytes_each: Vec<u64>,
}

impl Segments {
    /// The segments of `runs` (of any number of trees; a tree's own runs
    /// never overlap).
    pub(crate) fn new<'a>(runs: impl Iterator<Item = &'a Run> + Clone) -> Segments {
        let mut bounds: Vec<u64> = runs
            .clone()
            .flat_map(|&(start, count, _)| [start, start + count])
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        let n = bounds.len().saturating_sub(1);
        let mut seg = Segments {
            holders: vec![0; n],
            bytes_each: vec![0; n],
            bounds,
        };
        for run in runs {
            for i in seg.covered(run) {
                seg.holders[i] += 1;
                seg.bytes_each[i] = run.2;
            }
        }
        seg
    }

    /// The segments `run` covers (all of each).
    fn covered(&self, &(start, count, _): &Run) -> std::ops::Range<usize> {
        let first = self.bounds.partition_point(|&b| b < start);
        let end = self.bounds.partition_point(|&b| b < start + count);
        first..end.max(first)
    }

    fn len(&self, i: usize) -> u64 {
        self.bounds[i + 1] - self.bounds[i]
    }

    /// Bytes of every file some run holds, each once (`du` of the trees
    /// together, for their shared files).
    pub(crate) fn union_bytes(&self) -> u64 {
        (0..self.holders.len())
            .filter(|&i| self.holders[i] > 0)
            .map(|i| self.len(i) * self.bytes_each[i])
            .sum()
    }

    /// `runs`' part of the shared bytes: each file's bytes divided among
    /// its holders.
    pub(crate) fn share(&self, runs: &[Run]) -> u64 {
        runs.iter()
            .flat_map(|run| self.covered(run))
            .map(|i| self.len(i) * self.bytes_each[i] / u64::from(self.holders[i].max(1)))
            .sum()
    }

    /// A counter of deleted holders, for [`Segments::delete`].
    pub(crate) fn deletions(&self) -> Vec<u32> {
        vec![0; self.holders.len()]
    }

    /// Notes that a tree with `runs` is deleted; returns the bytes of its
    /// shared files whose every holder is now deleted.
    pub(crate) fn delete(&self, runs: &[Run], deleted: &mut [u32]) -> u64 {
        let mut freed = 0;
        for i in runs.iter().flat_map(|run| self.covered(run)) {
            deleted[i] += 1;
            if deleted[i] == self.holders[i] {
                freed += self.len(i) * self.bytes_each[i];
            }
        }
        freed
    }
}

/// Measures `path` (a file or a whole tree) as [`TreeSize`]; entries that
/// vanish meanwhile count nothing. Only inodes on the tree's own device
/// can be shared (a hard link never crosses filesystems).
pub(crate) fn measure_tree(path: &Path) -> Result<TreeSize> {
    let mut tally = Tally::default();
    links_walk(CWD, path, &mut tally)
        .map_err(|e| crate::error::Error::io("measure", path, e.into()))?;
    Ok(tally.finish())
}

/// Files with several links: inode → (links, links seen in the tree, bytes).
type Links = HashMap<u64, (u64, u64, u64)>;

/// Adds `name` (in `dir`) and everything under it to `tally`; what
/// vanishes meanwhile counts nothing. Each entry is looked up in its
/// directory's descriptor, as `du` does, not by its whole path from the
/// root (a store's trees of 2.4 million entries took 4.3 s instead of 6.2).
fn links_walk(
    dir: impl AsFd,
    name: impl rustix::path::Arg,
    tally: &mut Tally,
) -> rustix::io::Result<()> {
    let name = name.as_cow_c_str()?;
    let st = match statat(&dir, &*name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
    tally.add(st.st_blocks as u64, is_dir, st.st_nlink as u64, st.st_ino);
    if !is_dir {
        return Ok(());
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match openat(&dir, &*name, flags, Mode::empty()) {
        Ok(fd) => fd,
        // Gone, or replaced by something else than a directory meanwhile.
        Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut entries = Dir::new(fd)?;
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let child = entry.file_name();
        if child == c"." || child == c".." {
            continue;
        }
        links_walk(entries.fd()?, child, tally)?;
    }
    Ok(())
}

/// A tree's size noted by the build that wrote it: its key and entry, a
/// line of a file in `gc-notes/`.
#[derive(Debug, Serialize, Deserialize)]
struct Note {
    key: String,
    #[serde(flatten)]
    entry: Entry,
}

/// The file builds append notes to, in [`Store::gc_notes_dir`].
const NOTES: &str = "notes";

/// Past this size the notes file takes no more (a store whose collection
/// is off: nothing takes them in); those trees are walked instead.
const NOTES_CAP: u64 = 8 << 20;

impl Store {
    /// Notes `size`, taken as a build wrote the tree now at `path` (a
    /// snapshot, a parked upper dir), so that the collection need not walk
    /// it (see the module docs). It counts for the tree as it is now: once
    /// its inode or change time differ (it was replaced, or marked
    /// linked), it is measured again. Appended to `gc-notes/notes` with a
    /// single `write_all`, on a line of its own, not fsynced: only a cache.
    pub fn note_tree_size(&self, path: &Path, size: &TreeSize) -> Result<()> {
        let meta =
            fs::symlink_metadata(path).map_err(|e| crate::error::Error::io("stat", path, e))?;
        let note = Note {
            key: key_of(self, path),
            entry: Entry {
                ino: meta.ino(),
                ctime: meta.ctime(),
                ctime_nsec: meta.ctime_nsec(),
                bytes: size.own,
                shared: size.shared.clone(),
            },
        };
        let dir = self.gc_notes_dir();
        fs::create_dir_all(&dir).map_err(|e| crate::error::Error::io("create", &dir, e))?;
        let notes = dir.join(NOTES);
        let json = serde_json::to_vec(&note).map_err(|source| crate::error::Error::Json {
            what: notes.display().to_string(),
            source,
        })?;
        // On a line of its own even after a line a crash cut short.
        let mut line = Vec::with_capacity(json.len() + 2);
        line.push(b'\n');
        line.extend_from_slice(&json);
        line.push(b'\n');
        fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&notes)
            .and_then(|mut f| {
                if f.metadata()?.len() > NOTES_CAP {
                    return Ok(());
                }
                io::Write::write_all(&mut f, &line)
            })
            .map_err(|e| crate::error::Error::io("append to", &notes, e))
    }
}

impl Store {
    /// [`Store::note_tree_size`] for the tree at `path` whose entry `part`
    /// (a snapshot's `fs`) a build measured as `part_size`: the rest (the
    /// tree's own directory, its other entries, which hold no link to
    /// `part`: a snapshot's marker files) is measured now.
    pub(crate) fn note_tree_around(
        &self,
        path: &Path,
        part: &str,
        part_size: &TreeSize,
    ) -> Result<()> {
        let mut rest = Tally::default();
        let measure = |path: &Path, tally: &mut Tally| {
            links_walk(CWD, path, tally)
                .map_err(|e| crate::error::Error::io("measure", path, e.into()))
        };
        let meta =
            fs::symlink_metadata(path).map_err(|e| crate::error::Error::io("stat", path, e))?;
        rest.add(meta.blocks(), true, meta.nlink(), meta.ino());
        for entry in self.list_dir(path)? {
            if entry.file_name() != Some(std::ffi::OsStr::new(part)) {
                measure(&entry, &mut rest)?;
            }
        }
        let rest = rest.finish();
        let mut shared = part_size.shared.clone();
        shared.extend(rest.shared);
        shared.sort_unstable();
        let size = TreeSize {
            own: part_size.own + rest.own,
            shared,
        };
        self.note_tree_size(path, &size)
    }
}

/// A measured tree: what identified it, and its size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
    bytes: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    shared: Vec<Run>,
}

/// Sizes of immutable trees, loaded from and saved to the store.
#[derive(Debug, Default)]
pub(crate) struct SizeCache {
    entries: BTreeMap<String, Entry>,
    /// Keys looked up since loading: what is saved.
    used: HashSet<String>,
    changed: bool,
    /// Trees walked since loading (the others' sizes were known).
    pub(crate) walked: usize,
    /// Notes files taken in, removed once the cache is saved.
    taken: Vec<PathBuf>,
}

impl SizeCache {
    /// The store's cache, with the sizes builds noted since it was saved;
    /// empty when missing or unreadable (it is only a cache: every size
    /// in it can be measured again). The notes stay for the collection
    /// that saves ([`SizeCache::load_taking_notes`]).
    pub(crate) fn load(store: &Store) -> SizeCache {
        let mut cache = SizeCache::saved(store);
        for file in notes_files(store) {
            cache.add_notes(&file);
        }
        cache
    }

    /// [`SizeCache::load`], for a collection that will save the cache:
    /// the notes file is renamed aside first (a build then starts a new
    /// one), and every notes file read is removed once the cache is saved
    /// ([`SizeCache::save`]). A collection that gives up or fails before
    /// that leaves them to the next.
    pub(crate) fn load_taking_notes(store: &Store) -> SizeCache {
        let mut cache = SizeCache::saved(store);
        set_notes_aside(store);
        for file in notes_files(store) {
            if file.file_name() != Some(std::ffi::OsStr::new(NOTES)) {
                cache.take_notes(file);
            }
        }
        cache
    }

    /// Takes in the notes builds made since the cache was loaded with
    /// [`SizeCache::load_taking_notes`]: a collection that waited for the
    /// builds in flight calls it once it holds the store, so that its scan
    /// then does not walk the trees those builds made.
    pub(crate) fn take_new_notes(&mut self, store: &Store) {
        if let Some(taken) = set_notes_aside(store) {
            self.take_notes(taken);
        }
    }

    /// Adds the notes in `file`, to be removed once the cache is saved.
    fn take_notes(&mut self, file: PathBuf) {
        self.add_notes(&file);
        self.taken.push(file);
        self.changed = true;
    }

    fn saved(store: &Store) -> SizeCache {
        let entries = fs::read(store.gc_sizes_path())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        SizeCache {
            entries,
            ..SizeCache::default()
        }
    }

    /// Adds the notes in `path` (later lines win; a line that does not
    /// parse, say one a crash cut short, is skipped).
    fn add_notes(&mut self, path: &Path) {
        let Ok(text) = fs::read(path) else {
            return;
        };
        for line in text.split(|b| *b == b'\n') {
            if let Ok(note) = serde_json::from_slice::<Note>(line) {
                self.entries.insert(note.key, note.entry);
            }
        }
    }

    /// The size of the immutable tree `path` (`key` names it), measured
    /// unless the cache has it.
    pub(crate) fn measure(&mut self, key: &str, path: &Path) -> Result<TreeSize> {
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TreeSize::default()),
            Err(e) => return Err(crate::error::Error::io("stat", path, e)),
        };
        self.used.insert(key.to_string());
        let (ino, ctime, ctime_nsec) = (meta.ino(), meta.ctime(), meta.ctime_nsec());
        if let Some(e) = self.entries.get(key) {
            if (e.ino, e.ctime, e.ctime_nsec) == (ino, ctime, ctime_nsec) {
                return Ok(TreeSize {
                    own: e.bytes,
                    shared: e.shared.clone(),
                });
            }
        }
        let size = measure_tree(path)?;
        self.walked += 1;
        self.entries.insert(
            key.to_string(),
            Entry {
                ino,
                ctime,
                ctime_nsec,
                bytes: size.own,
                shared: size.shared.clone(),
            },
        );
        self.changed = true;
        Ok(size)
    }

    /// Writes the sizes of the trees looked up since loading (those no
    /// longer there are dropped), when anything changed.
    pub(crate) fn save(mut self, store: &Store) -> Result<()> {
        let before = self.entries.len();
        self.entries.retain(|k, _| self.used.contains(k));
        if !self.changed && self.entries.len() == before {
            return Ok(());
        }
        let bytes =
            serde_json::to_vec(&self.entries).map_err(|source| crate::error::Error::Json {
                what: store.gc_sizes_path().display().to_string(),
                source,
            })?;
        write_atomic(&store.gc_sizes_path(), &bytes)?;
        for file in &self.taken {
            let _ = fs::remove_file(file);
        }
        Ok(())
    }
}

/// Renames the notes file builds append to aside, to be taken in (a build
/// then starts a new one); returns its new path, `None` when there was
/// none.
fn set_notes_aside(store: &Store) -> Option<PathBuf> {
    let dir = store.gc_notes_dir();
    let taken = dir.join(format!("taken-{}", crate::store::unique_suffix()));
    fs::rename(dir.join(NOTES), &taken).ok().map(|()| taken)
}

/// The files in `gc-notes/`, oldest first (by modification time, then
/// name): taken ones a collection left, then the one builds append to.
fn notes_files(store: &Store) -> Vec<PathBuf> {
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = store
        .list_dir(&store.gc_notes_dir())
        .unwrap_or_default()
        .into_iter()
        .map(|path| {
            let modified = fs::metadata(&path).and_then(|m| m.modified());
            (modified.unwrap_or(std::time::UNIX_EPOCH), path)
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, path)| path).collect()
}

/// `path` relative to the store's root, as a cache key.
pub(crate) fn key_of(store: &Store, path: &Path) -> String {
    path.strip_prefix(store.root())
        .map(PathBuf::from)
        .unwrap_or_else(|_| path.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_sizes_are_used_until_the_tree_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let tree = store.root().join("snapshots/abc");
        fs::create_dir_all(tree.join("fs")).unwrap();
        fs::write(tree.join("fs/f"), vec![1u8; 20_000]).unwrap();
        let mut cache = SizeCache::load(&store);
        let first = cache.measure("snapshots/abc", &tree).unwrap().total();
        assert_eq!(first, du_command(&[&tree]));
        cache.save(&store).unwrap();

        // Immutable by contract: a change inside is not seen...
        fs::write(tree.join("fs/g"), vec![1u8; 50_000]).unwrap();
        let mut cache = SizeCache::load(&store);
        assert_eq!(
            cache.measure("snapshots/abc", &tree).unwrap().total(),
            first
        );
        // ... but a tree put in its place is.
        fs::rename(&tree, store.root().join("old")).unwrap();
        fs::create_dir_all(tree.join("fs")).unwrap();
        let replaced = cache.measure("snapshots/abc", &tree).unwrap().total();
        assert_eq!(replaced, du(&tree).unwrap());
        assert_ne!(replaced, first);
        assert_eq!(
            cache
                .measure("snapshots/gone", &store.root().join("nope"))
                .unwrap()
                .total(),
            0
        );
    }

    #[test]
    fn a_walk_counts_symlinks_as_themselves_and_a_missing_tree_as_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let (tree, outside) = (tmp.path().join("tree"), tmp.path().join("outside"));
        fs::create_dir_all(tree.join("a/b/c")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("big"), vec![1u8; 1 << 20]).unwrap();
        fs::write(tree.join("a/b/c/f"), vec![2u8; 10_000]).unwrap();
        // A link to a directory outside, with a long target (stored in a
        // block of its own): counted as itself, not followed.
        std::os::unix::fs::symlink(&outside, tree.join("a/to-outside")).unwrap();
        let long = format!("{}/{}", outside.display(), "x".repeat(200));
        std::os::unix::fs::symlink(long, tree.join("a/b/long")).unwrap();
        let counted = du_command(&[&tree]);
        assert_eq!(du(&tree).unwrap(), counted);
        assert!(counted < 1 << 20, "the link to outside was followed");
        // A symlink given as the tree itself is not followed either.
        std::os::unix::fs::symlink(&outside, tmp.path().join("link")).unwrap();
        assert!(du(&tmp.path().join("link")).unwrap() < 1 << 20);
        assert_eq!(du(&tmp.path().join("missing")).unwrap(), 0);
    }

    /// What the `du` command counts for `paths` together (`du -s -c
    /// -B1`: a file linked from two of them once).
    fn du_command(paths: &[&Path]) -> u64 {
        let out = std::process::Command::new("du")
            .args(["-s", "-c", "-B1"])
            .args(paths)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let total = text.lines().last().unwrap().split_whitespace().next();
        total.unwrap().parse().unwrap()
    }

    /// A tree with what a layer can hold: nested and empty directories,
    /// files, a link inside the tree, a link to a file outside it, a
    /// symlink. Returns (tree, outside).
    fn layer_like_tree(tmp: &Path) -> (PathBuf, PathBuf) {
        let (tree, outside) = (tmp.join("tree"), tmp.join("outside"));
        fs::create_dir_all(tree.join("a/b/empty")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(tree.join("a/one"), vec![1u8; 5000]).unwrap();
        fs::write(tree.join("a/b/two"), vec![2u8; 70_000]).unwrap();
        fs::hard_link(tree.join("a/one"), tree.join("a/b/one-again")).unwrap();
        fs::write(outside.join("far"), vec![3u8; 12_000]).unwrap();
        fs::hard_link(outside.join("far"), tree.join("a/far")).unwrap();
        std::os::unix::fs::symlink("../one", tree.join("a/b/link")).unwrap();
        (tree, outside)
    }

    #[test]
    fn the_size_a_layer_is_written_from_is_what_a_walk_measures() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let (tree, _outside) = layer_like_tree(tmp.path());
        let blob = crate::diff::write_layer(
            &store,
            &tree,
            crate::Compression::None,
            &crate::diff::DiffOptions::default(),
            &crate::NoProgress,
        )
        .unwrap();
        let walked = measure_tree(&tree).unwrap();
        assert_eq!(blob.tree, walked);
        assert_eq!(walked.shared.len(), 1, "the link to outside: {walked:?}");
        assert_eq!(blob.tree.total(), du_command(&[&tree]));
    }

    #[test]
    fn noted_sizes_are_taken_by_the_collection_and_used_without_a_walk() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let (tree, _outside) = layer_like_tree(tmp.path());
        let parked = store.parked_dir().join("trash-1-2-x");
        fs::create_dir_all(store.parked_dir()).unwrap();
        fs::rename(&tree, &parked).unwrap();
        let size = measure_tree(&parked).unwrap();
        store.note_tree_size(&parked, &size).unwrap();
        let key = key_of(&store, &parked);

        // Read (system df): used, and left for the collection.
        let notes = || store.list_dir(&store.gc_notes_dir()).unwrap();
        let mut cache = SizeCache::load(&store);
        assert_eq!(cache.measure(&key, &parked).unwrap(), size);
        assert_eq!(cache.walked, 0);
        assert_eq!(notes().len(), 1);

        // Taken (a collection): a note made meanwhile is kept for the
        // next; one that gave up before saving leaves its notes too.
        let cache = SizeCache::load_taking_notes(&store);
        store.note_tree_size(&parked, &size).unwrap();
        drop(cache);
        assert_eq!(notes().len(), 2, "{:?}", notes());
        let mut cache = SizeCache::load_taking_notes(&store);
        assert_eq!(cache.measure(&key, &parked).unwrap(), size);
        assert_eq!(cache.walked, 0);
        cache.save(&store).unwrap();
        assert!(notes().is_empty(), "{:?}", notes());
        let mut cache = SizeCache::load(&store);
        assert_eq!(cache.measure(&key, &parked).unwrap(), size);
        assert_eq!(cache.walked, 0);

        // A tree changed since (its change time moved): walked again.
        fs::write(parked.join("new"), vec![4u8; 30_000]).unwrap();
        let mut cache = SizeCache::load(&store);
        let now = cache.measure(&key, &parked).unwrap();
        assert_eq!(cache.walked, 1);
        assert_eq!(now.total(), du_command(&[&parked]));
        assert_ne!(now, size);
    }

    #[test]
    fn a_note_cut_short_is_skipped_and_a_later_one_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let tree = store.parked_dir().join("trash-1-2-y");
        fs::create_dir_all(&tree).unwrap();
        fs::write(tree.join("f"), vec![1u8; 9000]).unwrap();
        let size = measure_tree(&tree).unwrap();
        let wrong = TreeSize {
            own: 1,
            shared: Vec::new(),
        };
        store.note_tree_size(&tree, &wrong).unwrap();
        let notes = store.gc_notes_dir().join(NOTES);
        let mut text = fs::read(&notes).unwrap();
        text.extend_from_slice(b"{\"key\":\"parked/trash-1-2-y\",\"ino\":");
        fs::write(&notes, &text).unwrap();
        store.note_tree_size(&tree, &size).unwrap();
        let mut cache = SizeCache::load(&store);
        assert_eq!(cache.measure(&key_of(&store, &tree), &tree).unwrap(), size);
        assert_eq!(cache.walked, 0);
    }

    #[test]
    fn shared_files_are_kept_as_runs_of_consecutive_inodes() {
        let shared = vec![
            (5, 4096),
            (6, 4096),
            (7, 4096),
            (8, 8192),
            (10, 8192),
            (11, 8192),
        ];
        let runs = to_runs(&shared);
        assert_eq!(runs, vec![(5, 3, 4096), (8, 1, 8192), (10, 2, 8192)]);
        assert!(to_runs(&[]).is_empty());
    }

    #[test]
    fn segments_count_each_shared_file_once_and_free_it_with_its_last_holder() {
        // Trees a (inodes 10..20), b (15..25), c (18..19), 100 bytes each.
        let (a, b, c) = (vec![(10, 10, 100)], vec![(15, 10, 100)], vec![(18, 1, 100)]);
        let seg = Segments::new([&a, &b, &c].into_iter().flatten());
        assert_eq!(seg.union_bytes(), 15 * 100);
        // a: 5 alone, 15..18 and 19..20 with b, 18 with b and c.
        assert_eq!(seg.share(&a), 500 + 400 / 2 + 100 / 3);
        let mut deleted = seg.deletions();
        assert_eq!(seg.delete(&a, &mut deleted), 500);
        assert_eq!(seg.delete(&c, &mut deleted), 0);
        assert_eq!(seg.delete(&b, &mut deleted), 1000);
        assert_eq!(Segments::new(std::iter::empty()).union_bytes(), 0);
    }

    #[test]
    fn files_linked_from_outside_are_shared_links_inside_are_own() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        fs::write(a.join("alone"), vec![1u8; 10_000]).unwrap();
        fs::write(a.join("inside"), vec![2u8; 20_000]).unwrap();
        fs::hard_link(a.join("inside"), a.join("inside2")).unwrap();
        fs::write(a.join("shared"), vec![3u8; 30_000]).unwrap();
        fs::hard_link(a.join("shared"), b.join("shared")).unwrap();

        let size = measure_tree(&a).unwrap();
        let shared = fs::metadata(a.join("shared")).unwrap();
        assert_eq!(
            size.shared,
            vec![(shared.ino(), 1, shared.blocks() * 512)],
            "only the file linked from b is shared"
        );
        // What the `du` command counts: a alone, and both trees together
        // (the shared file once).
        assert_eq!(size.total(), du_command(&[&a]));
        assert_eq!(du(&a).unwrap(), du_command(&[&a]));
        assert_eq!(
            size.own + measure_tree(&b).unwrap().total(),
            du_command(&[&a, &b])
        );
        // Once b is gone, a holds all of its files.
        fs::remove_dir_all(&b).unwrap();
        let size = measure_tree(&a).unwrap();
        assert!(size.shared.is_empty());
        assert_eq!(size.own, du(&a).unwrap());
    }
}
