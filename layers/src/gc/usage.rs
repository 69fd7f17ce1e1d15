//! Disk usage as `du` counts it (allocated blocks, an inode with several
//! links once), and a cache of it for the store's trees that never change
//! once made: complete snapshots and parked upper dirs, whose 20,000-file
//! trees a collection after every build would otherwise walk again each
//! time. The cache lives in `<root>/gc-sizes.json` ([`Store::gc_sizes_path`]),
//! keyed by the tree's path under the root, with its directory's inode and
//! change time: a tree replaced under the same name is measured again.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::store::{write_atomic, Store};

/// Bytes `path` (a file or a whole tree) holds on disk, as `du -s -B1`
/// counts them; entries that vanish meanwhile count nothing.
pub(crate) fn du(path: &Path) -> Result<u64> {
    let mut seen = HashSet::new();
    du_walk(path, &mut seen).map_err(|e| crate::error::Error::io("measure", path, e))
}

fn du_walk(path: &Path, seen: &mut HashSet<(u64, u64)>) -> io::Result<u64> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() && meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
        return Ok(0);
    }
    let mut bytes = meta.blocks().saturating_mul(512);
    if meta.is_dir() {
        let entries = match fs::read_dir(path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(bytes),
            Err(e) => return Err(e),
        };
        for entry in entries {
            match entry {
                Ok(entry) => bytes = bytes.saturating_add(du_walk(&entry.path(), seen)?),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(bytes)
}

/// A measured tree: what identified it, and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
    bytes: u64,
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
    pub(crate) fn measure(&mut self, key: &str, path: &Path) -> Result<u64> {
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(crate::error::Error::io("stat", path, e)),
        };
        self.used.insert(key.to_string());
        let (ino, ctime, ctime_nsec) = (meta.ino(), meta.ctime(), meta.ctime_nsec());
        if let Some(e) = self.entries.get(key) {
            if (e.ino, e.ctime, e.ctime_nsec) == (ino, ctime, ctime_nsec) {
                return Ok(e.bytes);
            }
        }
        let bytes = du(path)?;
        self.entries.insert(
            key.to_string(),
            Entry {
                ino,
                ctime,
                ctime_nsec,
                bytes,
            },
        );
        self.changed = true;
        Ok(bytes)
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
        let first = cache.measure("snapshots/abc", &tree).unwrap();
        assert_eq!(first, du(&tree).unwrap());
        cache.save(&store).unwrap();

        // Immutable by contract: a change inside is not seen...
        fs::write(tree.join("fs/g"), vec![1u8; 50_000]).unwrap();
        let mut cache = SizeCache::load(&store);
        assert_eq!(cache.measure("snapshots/abc", &tree).unwrap(), first);
        // ... but a tree put in its place is.
        fs::rename(&tree, store.root().join("old")).unwrap();
        fs::create_dir_all(tree.join("fs")).unwrap();
        let replaced = cache.measure("snapshots/abc", &tree).unwrap();
        assert_eq!(replaced, du(&tree).unwrap());
        assert_ne!(replaced, first);
        assert_eq!(
            cache
                .measure("snapshots/gone", &store.root().join("nope"))
                .unwrap(),
            0
        );
    }
}
