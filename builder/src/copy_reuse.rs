//! Incremental COPY: a COPY from the build context that misses the cache
//! links, instead of copying, each file whose bytes and metadata equal the
//! file an earlier run of the same COPY left in its snapshot.
//!
//! The earlier run is found by a *shape* key (the parent snapshot chain and
//! the instruction's text, [`shape_key`]): a hint only. What is reused is
//! decided per file and exactly: the earlier run recorded, for every file
//! it wrote from the context, the content digest of the source
//! ([`CopyShape`], in the store's `cache/copy-shapes/`); a file is linked
//! only when the source's content digest is that one, and the snapshot's
//! file has the owner, permission bits, mtime (to the nanosecond) and
//! extended attributes the copy would give it. Anything else is copied.
//!
//! Linking is safe because snapshots are never changed in place once
//! committed (overlay copies a lower file up before writing it; the
//! copying snapshotter copies). A snapshot inode is linked at most once per
//! step, so two paths of one layer never share an inode unless the copy
//! itself would have linked them (the layer's tar writes a hard-link entry
//! for an inode seen twice in one walk).

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kiln_layers::{CopyShape, Digest, Store};

use crate::rootfs::{host_xattrs, NewFileInfo};

/// The shape key of a COPY: the snapshot chain it runs on and its text.
pub fn shape_key(parent_chain: Option<&Digest>, instruction: &str) -> Digest {
    let parent = parent_chain.map(Digest::to_string).unwrap_or_default();
    Digest::of(format!("copy-shape\0{parent}\0{instruction}").as_bytes())
}

/// Reuse state for one COPY step: the earlier result (if one is usable)
/// and what this run has written so far.
#[derive(Debug, Default)]
pub struct Reuse {
    previous: Option<Previous>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct Previous {
    chain: Digest,
    snapshot: PathBuf,
    files: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct State {
    /// Snapshot inodes (device, inode) linked by this step.
    used: HashSet<(u64, u64)>,
    /// Destination path → content digest of what was written there.
    written: BTreeMap<String, String>,
    linked: usize,
}

impl Reuse {
    /// The reuse state of a COPY with shape `key`: the earlier run's
    /// record, if it parses and its snapshot is present.
    pub fn load(store: &Store, key: &Digest) -> Reuse {
        let previous = match store.copy_shape_get(key) {
            Ok(Some(shape)) => store.has_snapshot(&shape.chain_id).then(|| Previous {
                snapshot: store.snapshot_path(&shape.chain_id),
                chain: shape.chain_id,
                files: shape.files,
            }),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!("{e}");
                None
            }
        };
        Reuse {
            previous,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Links `upper` (which must not exist) to the earlier snapshot's file
    /// at `target` when its content digest is `digest` and its metadata is
    /// `info`'s; true if it did.
    pub fn try_link(
        &self,
        target: &str,
        digest: &str,
        info: &NewFileInfo<'_>,
        upper: &Path,
    ) -> bool {
        let Some(prev) = &self.previous else {
            return false;
        };
        if prev.files.get(target).map(String::as_str) != Some(digest) {
            return false;
        }
        let path = prev.snapshot.join(target);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return false;
        };
        let same = meta.file_type().is_file()
            && meta.uid() == info.uid
            && meta.gid() == info.gid
            && meta.mode() & 0o7777 == info.mode & 0o7777
            && (meta.mtime(), meta.mtime_nsec()) == info.mtime
            && same_xattrs(host_xattrs(&path), info.xattrs);
        if !same {
            return false;
        }
        let mut state = self.state();
        let inode = (meta.dev(), meta.ino());
        if state.used.contains(&inode) || std::fs::hard_link(&path, upper).is_err() {
            return false;
        }
        state.used.insert(inode);
        state.linked += 1;
        true
    }

    /// Notes that `target` was written: with the content digest of a
    /// regular file copied from the context, else `None` (it is then never
    /// offered for reuse).
    pub fn wrote(&self, target: &str, digest: Option<&str>) {
        let mut state = self.state();
        match digest {
            Some(d) => state.written.insert(target.to_string(), d.to_string()),
            None => state.written.remove(target),
        };
    }

    /// How many files were linked.
    pub fn linked(&self) -> usize {
        self.state().linked
    }

    /// Marks the earlier snapshot as linked from when files were linked
    /// ([`Store::mark_snapshot_linked`]: its measured size counted them
    /// as its own). Called once the copy is over, whether it succeeded or
    /// not (a failed step's dir, in the trash, holds the links too), and
    /// never before a link is made (a size measured in between would be
    /// cached as current).
    pub fn mark_linked(&self, store: &Store) {
        if let Some(prev) = self.previous.as_ref().filter(|_| self.linked() > 0) {
            if let Err(e) = store.mark_snapshot_linked(&prev.chain) {
                tracing::warn!("{e}");
            }
        }
    }

    /// Records what this run wrote as the shape `key`'s result, snapshot
    /// `chain` (fsynced and renamed in the background:
    /// [`Store::copy_shape_put_in_background`]).
    pub fn save(&self, store: &Store, key: &Digest, chain: &Digest) {
        let shape = CopyShape {
            chain_id: chain.clone(),
            files: std::mem::take(&mut self.state().written),
        };
        if let Err(e) = store.copy_shape_put_in_background(key, &shape) {
            tracing::debug!("copy shape {key}: {e}");
        }
    }
}

/// Whether two sets of extended attributes are the same, in any order.
fn same_xattrs(mut a: Vec<(Vec<u8>, Vec<u8>)>, b: &[(Vec<u8>, Vec<u8>)]) -> bool {
    let mut b = b.to_vec();
    a.sort();
    b.sort();
    a == b
}
