//! Disk usage as `du` counts it (allocated blocks, an inode with several
//! links once), and a cache of it for the store's trees that never change
//! once made: complete snapshots and parked upper dirs, whose 20,000-file
//! trees a collection after every build would otherwise walk again each
//! time. The cache lives in `<root>/gc-sizes.json` ([`Store::gc_sizes_path`]),
//! keyed by the tree's path under the root, with its directory's inode and
//! change time: a tree replaced under the same name is measured again.
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
/// a file's links are all inside the tree.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TreeSize {
    /// Directories, and files with every link inside the tree.
    pub own: u64,
    /// Files with links outside the tree, as [`Run`]s, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared: Vec<Run>,
}

impl TreeSize {
    /// What `du` counts for the tree alone.
    pub(crate) fn total(&self) -> u64 {
        self.own + self.shared.iter().map(|r| r.1 * r.2).sum::<u64>()
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
    let mut links = Links::new();
    let own = links_walk(CWD, path, &mut links)
        .map_err(|e| crate::error::Error::io("measure", path, e.into()))?;
    let mut size = TreeSize {
        own,
        shared: Vec::new(),
    };
    let mut shared = Vec::new();
    for (ino, (nlink, seen, bytes)) in links {
        if seen >= nlink {
            size.own += bytes;
        } else {
            shared.push((ino, bytes));
        }
    }
    shared.sort_unstable();
    size.shared = to_runs(&shared);
    Ok(size)
}

/// Files with several links: inode → (links, links seen in the tree, bytes).
type Links = HashMap<u64, (u64, u64, u64)>;

/// Sums allocated blocks of `name` (in `dir`) and everything under it as
/// `du` does, but leaves files with several links out of the sum: `links`
/// gets them. Each entry is looked up in its directory's descriptor, as
/// `du` does, not by its whole path from the root (a store's trees of 2.4
/// million entries took 4.3 s instead of 6.2).
fn links_walk(
    dir: impl AsFd,
    name: impl rustix::path::Arg,
    links: &mut Links,
) -> rustix::io::Result<u64> {
    let name = name.as_cow_c_str()?;
    let st = match statat(&dir, &*name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(0),
        Err(e) => return Err(e),
    };
    let bytes = (st.st_blocks as u64).saturating_mul(512);
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        if st.st_nlink > 1 {
            let entry = links
                .entry(st.st_ino)
                .or_insert((st.st_nlink as u64, 0, bytes));
            entry.1 += 1;
            return Ok(0);
        }
        return Ok(bytes);
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match openat(&dir, &*name, flags, Mode::empty()) {
        Ok(fd) => fd,
        // Gone, or replaced by something else than a directory meanwhile.
        Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(bytes),
        Err(e) => return Err(e),
    };
    let mut total = bytes;
    let mut entries = Dir::new(fd)?;
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let child = entry.file_name();
        if child == c"." || child == c".." {
            continue;
        }
        total = total.saturating_add(links_walk(entries.fd()?, child, links)?);
    }
    Ok(total)
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
}

impl SizeCache {
    /// The store's cache; empty when missing or unreadable (it is only a
    /// cache: every size in it can be measured again).
    pub(crate) fn load(store: &Store) -> SizeCache {
        let entries = fs::read(store.gc_sizes_path())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        SizeCache {
            entries,
            ..SizeCache::default()
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
        write_atomic(&store.gc_sizes_path(), &bytes)
    }
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
        assert_eq!(first, du(&tree).unwrap());
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
        let out = std::process::Command::new("du")
            .args(["-s", "-B1"])
            .arg(&tree)
            .output()
            .unwrap();
        let du_command: u64 = String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(du(&tree).unwrap(), du_command);
        assert!(du_command < 1 << 20, "the link to outside was followed");
        // A symlink given as the tree itself is not followed either.
        std::os::unix::fs::symlink(&outside, tmp.path().join("link")).unwrap();
        assert!(du(&tmp.path().join("link")).unwrap() < 1 << 20);
        assert_eq!(du(&tmp.path().join("missing")).unwrap(), 0);
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
        let du_command = |paths: &[&Path]| -> u64 {
            let out = std::process::Command::new("du")
                .args(["-s", "-c", "-B1"])
                .args(paths)
                .output()
                .unwrap();
            let text = String::from_utf8(out.stdout).unwrap();
            let total = text.lines().last().unwrap().split_whitespace().next();
            total.unwrap().parse().unwrap()
        };
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
