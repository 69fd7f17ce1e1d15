//! The content store: an OCI image layout plus `ingest/`, `snapshots/`,
//! `cache/` and the rest of the folders ARCHITECTURE.md lists. This file is
//! the one place that knows their names: other code asks [`Store`] for
//! the paths.
//!
//! The root is made private (mode 0700) when created, and tightened to
//! 0700 on open when it is looser: images hold setuid binaries and device
//! nodes, which no other user may reach through the store's paths. A root
//! that gives a group only the right to traverse (0710, as Docker's data
//! root with user namespaces) is kept as it is.
//!
//! Blobs are written to a uniquely named file in `ingest/` (or, for a
//! download that may be resumed after a kill, `ingest/<hex>.partial` under
//! an exclusive lock), hashed as bytes
//! arrive, verified (size and sha256), fsynced and renamed into
//! `blobs/sha256/` (a build step's layer on a thread of its own,
//! [`IngestWriter::commit_in_background`]; so are its cache record and
//! copy shape: the private `pending` module says what keeps that safe):
//! a blob's name always matches its bytes, and two
//! processes writing the same blob both succeed (the rename is atomic and
//! the contents equal). `index.json` is rewritten under `index.lock` with
//! write-temp + rename, after an fsync of `blobs/sha256/` that makes the
//! names of the blobs it may name durable. Build cache records, copy shapes
//! and compressed variants are fsynced but their renames are not: a crash
//! may lose one (a cache miss), and their readers check that what they
//! name is there (blobs; a copy shape's snapshot). `prune` and the
//! automatic collection ([`crate::gc`]) take `gc.lock` exclusively; every
//! writer holds it shared (a [`Lease`]) so nothing in flight is collected.
//!
//! Last-used times, which the collection removes the least recent of first,
//! cost the build one `utimensat` per use: a build cache record's is its
//! file's mtime ([`Store::touch_cache`] on every cache hit), a cache
//! mount's its directory's mtime ([`Store::touch`] when a RUN mounts it),
//! an untagged image's its manifest blob's mtime (touched when a build
//! records it again). `gc.toml` holds the automatic collection's policy,
//! `gc-sizes.json` the sizes of trees that never change once made (and
//! `gc-notes/` those a build noted as it made them, until a collection
//! takes them in), `sealed` up to when each boot's snapshots are on disk
//! (`crate::seal`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::canonical::to_canonical_json;
use crate::digest::{chain_ids, Digest};
use crate::direct::DirectWrites;
use crate::error::{io_at, Error, Result};
use crate::oci::{
    media, parse_manifest, Descriptor, ImageConfig, Index, Manifest, ManifestKind, Platform,
    ANNOTATION_REF_NAME,
};
use crate::owner::Owner;
use crate::reference::Reference;

const OCI_LAYOUT_FILE: &str = "oci-layout";
const INDEX_FILE: &str = "index.json";
const CACHE_DIR: &str = "cache";

/// Largest manifest or config kiln reads into memory.
pub const MAX_JSON_BLOB: u64 = 16 << 20;

/// A store rooted at a directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// A shared hold on the store that keeps `prune` from running; take one for
/// the whole of a pull or build (blobs committed but not yet tagged are
/// otherwise unreferenced). Released on drop.
#[derive(Debug)]
pub struct Lease {
    _file: File,
}

/// An image resolved to its manifest and config.
#[derive(Clone, Debug)]
pub struct Image {
    /// The manifest's descriptor (after platform selection, if the tag
    /// pointed at an index).
    pub manifest_descriptor: Descriptor,
    pub manifest: Manifest,
    pub config: ImageConfig,
}

impl Image {
    /// The image id Docker shows: the config digest.
    pub fn id(&self) -> &Digest {
        &self.manifest.config.digest
    }

    /// Layer descriptors paired with their diff ids, bottom first.
    pub fn layers(&self) -> Result<Vec<(Descriptor, Digest)>> {
        if self.manifest.layers.len() != self.config.rootfs.diff_ids.len() {
            return Err(Error::InvalidManifest {
                what: format!("image {}", self.manifest_descriptor.digest),
                reason: format!(
                    "{} layers but {} diff ids in the config",
                    self.manifest.layers.len(),
                    self.config.rootfs.diff_ids.len()
                ),
            });
        }
        Ok(self
            .manifest
            .layers
            .iter()
            .cloned()
            .zip(self.config.rootfs.diff_ids.iter().cloned())
            .collect())
    }

    /// Chain ids of the layers, bottom first.
    pub fn chain_ids(&self) -> Vec<Digest> {
        chain_ids(&self.config.rootfs.diff_ids)
    }

    /// Sum of the layer and config blob sizes (what the store holds).
    pub fn content_size(&self) -> u64 {
        self.manifest.layers.iter().map(|l| l.size).sum::<u64>() + self.manifest.config.size
    }
}

/// A tag in `index.json`.
#[derive(Clone, Debug)]
pub struct TaggedImage {
    /// The full reference (`docker.io/library/busybox:latest`) or the raw
    /// annotation when it does not parse as one.
    pub name: String,
    pub reference: Option<Reference>,
    pub descriptor: Descriptor,
}

/// What the build cache keeps alive: blobs and snapshots named by a record
/// survive `prune` unless the cache itself is pruned.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheRecord {
    #[serde(default)]
    pub blobs: Vec<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<Digest>,
    /// Whatever the builder wants to remember (diff id, config changes, …).
    #[serde(default)]
    pub data: serde_json::Value,
}

/// What `prune` may remove besides unreferenced blobs and snapshots.
#[derive(Clone, Copy, Debug, Default)]
pub struct PruneOptions {
    /// Also drop every build cache record first, and the contents of
    /// `RUN --mount=type=cache` mounts (`cache-mounts/`), which BuildKit
    /// likewise keeps until the build cache is pruned.
    pub build_cache: bool,
}

impl PruneOptions {
    /// The collection policy these options stand for: unreferenced blobs
    /// and snapshots and scratch (leftovers, parked dirs, partial writes,
    /// trash), and with `build_cache` the build cache and cache mounts.
    pub fn policy(&self) -> crate::gc::Policy {
        use crate::gc::{Kind, Policy};
        let mut kinds = vec![Kind::Unreferenced, Kind::Scratch];
        if self.build_cache {
            kinds.extend([Kind::Cache, Kind::CacheMount]);
        }
        Policy::all_of(kinds)
    }
}

/// What `prune` removed, and the disk space each kind freed (blocks, as
/// `du` counts them; a file with several links counts once all are gone).
#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    pub blobs: Vec<Digest>,
    pub blob_bytes: u64,
    /// Partial writes removed: files in `ingest/` and temp files of
    /// interrupted atomic writes.
    pub ingest_files: usize,
    pub ingest_bytes: u64,
    pub snapshots: Vec<String>,
    pub snapshot_bytes: u64,
    pub cache_records: usize,
    pub cache_record_bytes: u64,
    /// Work directories and unfinished snapshots that killed processes left
    /// in `builds/`, the duplicate upper dirs of `--no-cache` reruns parked
    /// in `parked/`, and state directories
    /// of killed `kiln run`s in `containers/`.
    pub build_dirs: usize,
    pub build_bytes: u64,
    /// Cache mounts removed (only with [`PruneOptions::build_cache`]).
    pub cache_mounts: usize,
    pub cache_mount_bytes: u64,
    /// What killed deletions left in `trash/`.
    pub trash_entries: usize,
    pub trash_bytes: u64,
    /// Records of compressed variants whose blob is gone.
    pub variants: usize,
    pub variant_bytes: u64,
    /// Untagged images removed (their manifest digests).
    pub images: Vec<Digest>,
    /// The collectable bytes (what keep-storage limits) before and after.
    pub usage_before: u64,
    pub usage_after: u64,
    /// What the policy's limits kept, when it had limits.
    pub keep: Option<u64>,
    /// Free bytes on the store's filesystem before.
    pub free_before: u64,
    /// How long the collection held the store exclusively (choice, renames
    /// into the trash, and a scan when `rescanned`): what a build starting
    /// then waited at most.
    pub exclusive: std::time::Duration,
    /// The scan the collection made again while it held the store
    /// exclusively, when it made one (else it chose from its first scan).
    pub rescanned: Option<Rescanned>,
    /// How long it waited for `gc.lock`, that is for the builds, pulls and
    /// runs using the store to end, before it held the store.
    pub waited: std::time::Duration,
    /// How long sealing the store's snapshots (`Store::seal`, a `syncfs`)
    /// took, first.
    pub synced: std::time::Duration,
    /// Why the seal failed or was not made, when it was not.
    pub unsealed: Option<String>,
}

/// A collection's second scan of the store, made while it held it
/// exclusively ([`PruneReport::rescanned`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rescanned {
    /// Why the first scan's inventory could not be chosen from.
    pub why: &'static str,
    /// How long it took, taking in the builds' new notes included.
    pub took: std::time::Duration,
    /// How many snapshots and parked upper dirs it walked to measure them,
    /// for want of a size noted or cached for them as they are. Not
    /// counted: the other trees every scan walks (scratch, trash entries,
    /// cache mounts), which are not noted.
    pub walked: usize,
}

impl PruneReport {
    /// Everything freed, in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.blob_bytes
            + self.ingest_bytes
            + self.snapshot_bytes
            + self.cache_record_bytes
            + self.build_bytes
            + self.cache_mount_bytes
            + self.trash_bytes
            + self.variant_bytes
    }
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A name no other process or thread uses, `<pid>.<start>-<nanos>-<n>`:
/// the owner token of this process ([`Owner::token`]), the time and a
/// counter. Scratch named `<kind>-<suffix>` can be told to be a dead
/// process's leftover with [`Owner::of_name`].
pub fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{}",
        Owner::current().token(),
        nanos,
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `blobs/sha256/` directories into which this process has renamed
/// blobs since it last fsynced them ([`Store::sync_blob_names`]).
static UNSYNCED_BLOB_DIRS: std::sync::Mutex<BTreeSet<PathBuf>> =
    std::sync::Mutex::new(BTreeSet::new());

fn unsynced_blob_dirs() -> std::sync::MutexGuard<'static, BTreeSet<PathBuf>> {
    UNSYNCED_BLOB_DIRS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `value` as canonical JSON; `what` names it in the error.
fn canonical_bytes<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>> {
    to_canonical_json(value).map_err(|source| Error::Json {
        what: format!("serializing {what}"),
        source,
    })
}

/// Makes the entries of `dir` durable (an fsync of the directory).
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at("fsync", dir))
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_replacing(path, bytes, NameSync::Now)
}

/// Writes a record whose loss is only a cache miss (a build cache record,
/// a copy shape, a compressed variant: each reader checks that what the
/// record names is present): temp file, fsync, rename. Its contents are
/// always whole, but its name may be lost in a crash until something
/// later fsyncs the journal or the directory. One fsync per record instead
/// of two: on ext4 each is a journal commit, which waits for whatever
/// other writes that commit carries.
pub(crate) fn write_record(path: &Path, bytes: &[u8]) -> Result<()> {
    write_replacing(path, bytes, NameSync::Later)
}

/// Whether [`write_replacing`] fsyncs the directory after its rename.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NameSync {
    Now,
    Later,
}

fn write_replacing(path: &Path, bytes: &[u8], name_sync: NameSync) -> Result<()> {
    Staged::write(path, bytes)?.publish(name_sync)
}

/// The new contents of a file, whole and fsynced under a temporary name
/// beside it, not yet renamed into place: what [`write_replacing`] does
/// in two halves, so that something else may be made durable at the same
/// time, before the rename (`index.json`'s blob names,
/// [`Store::write_index`]).
struct Staged<'a> {
    path: &'a Path,
    tmp: PathBuf,
}

impl<'a> Staged<'a> {
    fn write(path: &'a Path, bytes: &[u8]) -> Result<Staged<'a>> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staged = Staged {
            path,
            tmp: dir.join(format!(".{name}.tmp-{}", unique_suffix())),
        };
        let written = File::create(&staged.tmp)
            .map_err(io_at("create", &staged.tmp))
            .and_then(|mut f| {
                f.write_all(bytes).map_err(io_at("write", &staged.tmp))?;
                f.sync_all().map_err(io_at("fsync", &staged.tmp))
            });
        match written {
            Ok(()) => Ok(staged),
            Err(e) => Err(staged.discard(e)),
        }
    }

    /// Renames the file into place (and fsyncs its directory for
    /// [`NameSync::Now`]).
    fn publish(self, name_sync: NameSync) -> Result<()> {
        let path = self.path;
        let dir = path.parent().unwrap_or(Path::new("."));
        if let Err(e) = fs::rename(&self.tmp, path) {
            return Err(self.discard(Error::io("rename into place", path, e)));
        }
        match name_sync {
            NameSync::Now => fsync_dir(dir),
            NameSync::Later => Ok(()),
        }
    }

    /// Removes the temporary file; returns `error`, the reason.
    fn discard(self, error: Error) -> Error {
        let _ = fs::remove_file(&self.tmp);
        error
    }
}

/// An exclusive `flock` on `path` if no one else holds one, else `None`.
pub(crate) fn try_lock(path: &Path) -> Result<Option<File>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_at("open lock file", path))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(Error::io("lock", path, e.into())),
    }
}

/// An `flock` on `path` (created if missing), exclusive or shared, waited
/// for; held until the returned file is closed. The store's locks, and a
/// local cache's `index.json.lock`.
pub fn lock(path: &Path, exclusive: bool) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_at("open lock file", path))?;
    let op = if exclusive {
        rustix::fs::FlockOperation::LockExclusive
    } else {
        rustix::fs::FlockOperation::LockShared
    };
    rustix::fs::flock(&file, op).map_err(|e| Error::io("lock", path, e.into()))?;
    Ok(file)
}

/// The root's mode when kiln creates it, and the most it keeps on open:
/// owner only, plus a group's right to traverse when it was given one.
const ROOT_MODE: u32 = 0o700;
const ROOT_GROUP_TRAVERSE: u32 = 0o010;

/// Creates the store's root private, or makes an existing one so.
fn make_private_root(root: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_at("create directory", parent))?;
    }
    match fs::DirBuilder::new().mode(ROOT_MODE).create(root) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("create directory", root, e)),
    }
    let meta = fs::metadata(root).map_err(io_at("stat", root))?;
    let mode = meta.permissions().mode() & 0o7777;
    // A root that gives the group or others more than a group's traverse
    // (0710, set on purpose) loses every right of theirs.
    let wanted = if mode & 0o077 & !ROOT_GROUP_TRAVERSE != 0 {
        mode & !0o077
    } else {
        mode
    };
    if mode != wanted {
        // Only the owner (or root) can; anyone else gets a warning, since
        // refusing would protect nothing.
        if let Err(e) = fs::set_permissions(root, fs::Permissions::from_mode(wanted)) {
            tracing::warn!(
                "{}: the store is mode {mode:04o}; cannot make it {wanted:04o}: {e}",
                root.display()
            );
        }
    }
    Ok(())
}

impl Store {
    /// Opens the store at `root`, creating the layout if it is missing, and
    /// makes the root private (mode 0700; 0710 is kept) if it is not.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let store = Store { root: root.into() };
        make_private_root(&store.root)?;
        for dir in [
            store.blobs_dir(),
            store.ingest_dir(),
            store.snapshots_dir(),
            store.cache_dir(),
            store.trash_dir(),
            store.builds_dir(),
            store.parked_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(io_at("create directory", &dir))?;
        }
        let layout = store.root.join(OCI_LAYOUT_FILE);
        if !layout.exists() {
            write_atomic(
                &layout,
                format!(
                    "{{\"imageLayoutVersion\":\"{}\"}}",
                    media::OCI_LAYOUT_VERSION
                )
                .as_bytes(),
            )?;
        }
        let index = store.index_path();
        if !index.exists() {
            let _guard = store.lock_index()?;
            if !index.exists() {
                store.write_index(&Index::empty(), false)?;
            }
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    // ----- folder names -----

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub(crate) fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    pub(crate) fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// Where deletions happen: a directory is renamed in here (same
    /// filesystem, atomic) before it is deleted, so that a killed deletion
    /// never leaves a half-deleted directory in its place.
    pub(crate) fn trash_dir(&self) -> PathBuf {
        self.root.join("trash")
    }

    pub(crate) fn variants_dir(&self) -> PathBuf {
        self.root.join("variants")
    }

    /// Scratch of running processes, each entry named with its owner
    /// ([`crate::store::unique_suffix`]): builds' work dirs
    /// ([`Store::scratch_dir`]) and snapshots being made
    /// (`Store::unfinished_snapshot_path`). Every build lists it to take
    /// what dead owners left, so nothing that stays goes here.
    pub fn builds_dir(&self) -> PathBuf {
        self.root.join("builds")
    }

    /// Where a snapshot is made before it is renamed into `snapshots/`
    /// (a new name each call): `builds/snapshot-<owner>-…`, so that a
    /// killed process's unfinished snapshot is found without listing
    /// `snapshots/`, which grows with the store.
    pub(crate) fn unfinished_snapshot_path(&self) -> PathBuf {
        self.builds_dir()
            .join(format!("snapshot-{}", unique_suffix()))
    }

    /// The builder's parked duplicate upper dirs of `--no-cache` reruns
    /// (`trash-<secs>-<bytes>-…`): collectable data, kept while the
    /// collection's limits allow.
    pub fn parked_dir(&self) -> PathBuf {
        self.root.join("parked")
    }

    /// The contents of `RUN --mount=type=cache` mounts, one dir per `name`.
    pub fn cache_mounts_dir(&self) -> PathBuf {
        self.root.join("cache-mounts")
    }

    /// State directories of running `kiln run` containers.
    pub fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    /// Records of the repositories blobs were pulled from.
    pub fn origins_dir(&self) -> PathBuf {
        self.root.join("origins")
    }

    /// Which source reference each entry of an index made by `kiln
    /// manifest create` came from, one record per index name
    /// ([`crate::index::IndexSources`]): what `--amend` replaces by.
    pub fn index_sources_dir(&self) -> PathBuf {
        self.root.join("index-sources")
    }

    /// Build cache records (`<key hex>.json`) and, below, the build
    /// context's stat caches.
    pub(crate) fn cache_dir(&self) -> PathBuf {
        self.root.join(CACHE_DIR)
    }

    /// The build context's stat caches, one file per context directory.
    pub fn context_stats_dir(&self) -> PathBuf {
        self.root.join(CACHE_DIR).join("context-stats")
    }

    /// The records of what earlier COPY steps wrote (`<shape hex>.json`,
    /// [`CopyShape`]): which snapshot holds each copied file, with its
    /// content digest, so a later run of the same COPY can link the files
    /// that did not change.
    pub fn copy_shapes_dir(&self) -> PathBuf {
        self.root.join(CACHE_DIR).join("copy-shapes")
    }

    /// Stores `shape` under `key`, its fsync and rename on a thread of
    /// their own ([`Store::settle_writes`] waits for them; so does
    /// [`Store::copy_shape_get`] of the same key). A shape that cannot be
    /// written is only logged: it is an optimisation of the next run of
    /// the same COPY, never needed.
    pub fn copy_shape_put_in_background(&self, key: &Digest, shape: &CopyShape) -> Result<()> {
        let dir = self.copy_shapes_dir();
        fs::create_dir_all(&dir).map_err(|e| Error::io("create", dir.clone(), e))?;
        let path = dir.join(format!("{}.json", key.hex()));
        let files = serde_json::to_vec(&shape.files).map_err(|source| Error::Json {
            what: path.display().to_string(),
            source,
        })?;
        let mut bytes = format!("{}\n", shape.chain_id).into_bytes();
        bytes.extend_from_slice(&files);
        crate::pending::spawn(path.clone(), move || {
            if let Err(e) = write_record(&path, &bytes) {
                tracing::debug!("copy shape not kept: {e}");
            }
            Ok(())
        });
        Ok(())
    }

    /// The copy shape record under `key`, if there is one that parses.
    pub fn copy_shape_get(&self, key: &Digest) -> Result<Option<CopyShape>> {
        let path = self.copy_shapes_dir().join(format!("{}.json", key.hex()));
        crate::pending::wait_for(&path);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        let Some((head, files)) = split_head(&bytes) else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(files).ok().map(|files| CopyShape {
            chain_id: head,
            files,
        }))
    }

    /// Whether a store exists at `root` (its `index.json` is there): what a
    /// command that never creates one (explain, check) asks before
    /// [`Store::open`].
    pub fn exists_at(root: &Path) -> bool {
        root.join(INDEX_FILE).is_file()
    }

    /// `index.json`: the images and their names.
    pub(crate) fn index_path(&self) -> PathBuf {
        self.root.join(INDEX_FILE)
    }

    /// The automatic collection's policy (`crate::gc::GcConfig`).
    pub fn gc_config_path(&self) -> PathBuf {
        self.root.join("gc.toml")
    }

    /// What the last automatic collection did (one line, rewritten by each).
    pub fn gc_log_path(&self) -> PathBuf {
        self.root.join("gc.log")
    }

    /// Up to when each boot's snapshots are on disk
    /// (`crate::seal`).
    pub(crate) fn sealed_path(&self) -> PathBuf {
        self.root.join("sealed")
    }

    /// Sizes of immutable trees the collection measured (a cache).
    pub(crate) fn gc_sizes_path(&self) -> PathBuf {
        self.root.join("gc-sizes.json")
    }

    /// Sizes of trees builds noted as they wrote them, a line each, until
    /// a collection takes them into `gc-sizes.json`: builds append to
    /// `notes` there, a collection renames it to `taken-<owner>…` first.
    /// A directory of its own, which the collection's stamp of the store
    /// does not cover (`crate::gc`): a note is not a change it must see.
    pub(crate) fn gc_notes_dir(&self) -> PathBuf {
        self.root.join("gc-notes")
    }

    /// Held shared by every pull, build and run ([`Store::lease`]),
    /// exclusively by a collection (prune, the automatic one) and rmi.
    pub(crate) fn gc_lock_path(&self) -> PathBuf {
        self.root.join("gc.lock")
    }

    /// Held by the automatic collection that waits for its turn.
    pub fn gc_queue_lock_path(&self) -> PathBuf {
        self.root.join("gc-queue.lock")
    }

    /// Held by the automatic collection that runs.
    pub fn gc_run_lock_path(&self) -> PathBuf {
        self.root.join("gc-run.lock")
    }

    /// The modification times of `index.json` and of the directories
    /// whose entries a collection counts (blobs, snapshots, build cache
    /// records, COPY shape records, cache mounts, trash, ingest): equal
    /// before and after a command that added and removed nothing there.
    /// `builds/` and `parked/` are left out: every build makes and removes
    /// its scratch directory in `builds/`, and what a build parks comes
    /// with new blobs.
    pub fn content_stamp(&self) -> ContentStamp {
        let dirs = [
            self.index_path(),
            self.blobs_dir(),
            self.snapshots_dir(),
            self.cache_dir(),
            self.copy_shapes_dir(),
            self.cache_mounts_dir(),
            self.trash_dir(),
            self.ingest_dir(),
        ];
        ContentStamp(
            dirs.iter()
                .map(|d| {
                    use std::os::unix::fs::MetadataExt;
                    fs::metadata(d).ok().map(|m| (m.mtime(), m.mtime_nsec()))
                })
                .collect(),
        )
    }

    /// Held while `index.json` is rewritten.
    pub(crate) fn index_lock_path(&self) -> PathBuf {
        self.root.join("index.lock")
    }

    /// Held while an incomplete snapshot is replaced.
    pub(crate) fn snapshots_lock_path(&self) -> PathBuf {
        self.root.join("snapshots.lock")
    }

    /// Where a blob lives (whether or not it is there). A blob this
    /// process is still putting there
    /// ([`IngestWriter::commit_in_background`]) is waited for: it is
    /// there when this returns, unless that write failed (then its error
    /// is [`Store::settle_writes`]'s, which fails the build).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let path = self.blobs_dir().join(digest.hex());
        crate::pending::wait_for(&path);
        path
    }

    /// Waits for the writes this process runs in the background into this
    /// store (blobs committed with [`IngestWriter::commit_in_background`],
    /// records put with [`Store::cache_put_in_background`] and
    /// [`Store::copy_shape_put_in_background`]); returns the first that
    /// failed. A build calls it before it returns; writing `index.json`
    /// does too.
    pub fn settle_writes(&self) -> Result<()> {
        crate::pending::settle(&self.root)
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Size of a stored blob, `None` when absent.
    pub fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("stat", path, e)),
        }
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::BlobNotFound(digest.clone())
            } else {
                Error::io("open", path, e)
            }
        })
    }

    /// Reads a small blob (manifest, config) whole; refuses more than 16 MiB.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let file = self.open_blob(digest)?;
        let mut bytes = Vec::new();
        file.take(MAX_JSON_BLOB + 1)
            .read_to_end(&mut bytes)
            .map_err(io_at("read", &path))?;
        if bytes.len() as u64 > MAX_JSON_BLOB {
            return Err(Error::InvalidManifest {
                what: format!("blob {digest}"),
                reason: "larger than 16 MiB; not a manifest or config".into(),
            });
        }
        Ok(bytes)
    }

    /// A shared hold that keeps `prune` away until dropped.
    pub fn lease(&self) -> Result<Lease> {
        Ok(Lease {
            _file: lock(&self.gc_lock_path(), false)?,
        })
    }

    /// Starts writing a blob. With `expected`, the writer refuses bytes past
    /// its size and `commit` checks size and digest; without, the digest is
    /// whatever arrives.
    pub fn ingest(&self, expected: Option<Descriptor>) -> Result<IngestWriter> {
        let lease = self.lease()?;
        let label = expected
            .as_ref()
            .map_or("unknown".to_string(), |d| d.digest.hex().to_string());
        let path = self
            .ingest_dir()
            .join(format!("{label}-{}", unique_suffix()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_at("create", &path))?;
        Ok(IngestWriter {
            file: Some(io::BufWriter::with_capacity(256 * 1024, file)),
            path,
            blobs_dir: self.blobs_dir(),
            expected,
            hasher: Sha256::new(),
            written: 0,
            writeback_from: 0,
            keep_on_drop: false,
            direct: None,
            lease: Some(lease),
        })
    }

    /// Like [`Store::ingest`] without an expected descriptor, for a large
    /// blob made here (a layer packed from a snapshot): written with
    /// `O_DIRECT` in whole chunks where the filesystem allows it (see the
    /// `direct` module), so that packing a layer neither fills the page
    /// cache with bytes only a push reads again nor waits for their
    /// writeback at the fsync; a layer smaller than a chunk is written
    /// through the page cache as before.
    pub fn ingest_direct(&self) -> Result<IngestWriter> {
        let mut writer = self.ingest(None)?;
        writer.direct = writer
            .file
            .as_ref()
            .and_then(|file| DirectWrites::start(file.get_ref()));
        Ok(writer)
    }

    /// Like [`Store::ingest`], but continues what an earlier, interrupted
    /// writer of the same blob left in `ingest/<hex>.partial` (even one in
    /// a killed process): [`IngestWriter::offset`] says how many bytes are
    /// already there (send `Range: bytes=<offset>-`). The partial file is
    /// kept when the writer is dropped uncommitted, so a later attempt can
    /// resume; a digest mismatch at commit removes it. The bytes already
    /// there are hashed on opening, so commit verifies size and sha256 over
    /// the whole blob, not just the part this writer received.
    ///
    /// The partial file is held under an exclusive `flock` from opening
    /// until commit has renamed or removed it (or the writer is dropped):
    /// when another writer, in this process or another, holds it, this
    /// falls back to a fresh, uniquely named [`Store::ingest`], so two pulls
    /// of one blob never write into the same file.
    pub fn ingest_resumable(&self, expected: Descriptor) -> Result<IngestWriter> {
        let lease = self.lease()?;
        let path = self
            .ingest_dir()
            .join(format!("{}.partial", expected.digest.hex()));
        // The lock-file dance: lock, then make sure the path still names the
        // inode we locked (a committing writer renames it away).
        for _ in 0..8 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_at("open", &path))?;
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => return self.ingest(Some(expected)),
                Err(e) => return Err(Error::io("lock", &path, e.into())),
            }
            let locked = file.metadata().map_err(io_at("stat", &path))?;
            match fs::metadata(&path) {
                Ok(now)
                    if std::os::unix::fs::MetadataExt::ino(&now)
                        == std::os::unix::fs::MetadataExt::ino(&locked) => {}
                _ => continue,
            }
            let mut len = locked.len();
            if len > expected.size {
                file.set_len(0).map_err(io_at("truncate", &path))?;
                len = 0;
            }
            let mut hasher = Sha256::new();
            let mut reader = io::BufReader::new(&mut file).take(len);
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = reader.read(&mut buf).map_err(io_at("read", &path))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            drop(reader);
            io::Seek::seek(&mut file, io::SeekFrom::Start(len)).map_err(io_at("seek", &path))?;
            // A download of a layer from its first byte skips the page cache.
            let direct = (len == 0 && expected.size >= crate::direct::CHUNK as u64)
                .then(|| DirectWrites::start(&file))
                .flatten();
            return Ok(IngestWriter {
                file: Some(io::BufWriter::with_capacity(256 * 1024, file)),
                path,
                blobs_dir: self.blobs_dir(),
                expected: Some(expected),
                hasher,
                written: len,
                writeback_from: len,
                keep_on_drop: true,
                direct,
                lease: Some(lease),
            });
        }
        self.ingest(Some(expected))
    }

    /// Stores `bytes` as a blob of `media_type`.
    pub fn put_blob(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
        let digest = Digest::of(bytes);
        let desc = Descriptor::new(media_type, digest.clone(), bytes.len() as u64);
        if self.blob_size(&digest)? == Some(bytes.len() as u64) {
            return Ok(desc);
        }
        let mut w = self.ingest(Some(desc))?;
        w.write_all(bytes).map_err(io_at("write", &w.path))?;
        w.commit()
    }

    /// Stores each of `blobs` (a media type and the bytes) as
    /// [`Store::put_blob`] does, all at once: their fsyncs run side by
    /// side, so the disk's cache flushes they wait for overlap (a build's
    /// config and manifest). The descriptors come in the order given.
    pub fn put_blobs(&self, blobs: &[(&str, &[u8])]) -> Result<Vec<Descriptor>> {
        let Some(((media_type, bytes), rest)) = blobs.split_first() else {
            return Ok(Vec::new());
        };
        std::thread::scope(|s| {
            // A blob no thread could be had for is stored on this one.
            let others: Vec<_> = rest
                .iter()
                .map(|&(media_type, bytes)| {
                    std::thread::Builder::new()
                        .spawn_scoped(s, move || self.put_blob(media_type, bytes))
                        .map_err(|_| (media_type, bytes))
                })
                .collect();
            let mut stored = vec![self.put_blob(media_type, bytes)];
            for other in others {
                stored.push(match other {
                    Ok(thread) => thread
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                    Err((media_type, bytes)) => self.put_blob(media_type, bytes),
                });
            }
            stored.into_iter().collect()
        })
    }

    /// Serializes `value` canonically and stores it.
    pub fn put_json<T: Serialize>(&self, media_type: &str, value: &T) -> Result<Descriptor> {
        self.put_blob(media_type, &canonical_bytes(media_type, value)?)
    }

    /// Writes an image's config (`config_type`) and a manifest
    /// (`manifest_type`) naming it and `layers`, the two blobs at once
    /// ([`Store::put_blobs`]); returns the manifest's descriptor, with the
    /// config's platform.
    pub fn write_config_and_manifest(
        &self,
        (config_type, manifest_type): (&str, &str),
        config: &ImageConfig,
        layers: &[Descriptor],
    ) -> Result<Descriptor> {
        let config_bytes = canonical_bytes(config_type, config)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(manifest_type.into()),
            artifact_type: None,
            config: Descriptor::new(
                config_type,
                Digest::of(&config_bytes),
                config_bytes.len() as u64,
            ),
            layers: layers.to_vec(),
            subject: None,
            annotations: BTreeMap::new(),
        };
        let manifest_bytes = canonical_bytes(manifest_type, &manifest)?;
        let stored = self.put_blobs(&[
            (config_type, &config_bytes),
            (manifest_type, &manifest_bytes),
        ])?;
        let mut desc = stored.into_iter().nth(1).ok_or_else(|| {
            Error::io(
                "write",
                self.blobs_dir(),
                io::Error::other("put_blobs returned fewer descriptors than blobs"),
            )
        })?;
        desc.platform = Some(config.platform());
        Ok(desc)
    }

    /// Writes `config` and an OCI manifest over `layers`; returns the
    /// manifest's descriptor (tag it with [`Store::tag`]).
    pub fn write_image(&self, config: &ImageConfig, layers: &[Descriptor]) -> Result<Descriptor> {
        if config.rootfs.diff_ids.len() != layers.len() {
            return Err(Error::InvalidManifest {
                what: "new image".into(),
                reason: format!(
                    "{} layers but {} diff ids",
                    layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            });
        }
        self.write_config_and_manifest((media::OCI_CONFIG, media::OCI_MANIFEST), config, layers)
    }

    /// Parses a manifest or index blob.
    pub fn read_manifest(&self, desc: &Descriptor) -> Result<ManifestKind> {
        let bytes = self.read_blob(&desc.digest)?;
        parse_manifest(
            &bytes,
            &desc.media_type,
            &format!("manifest {}", desc.digest),
        )
    }

    pub fn read_config(&self, desc: &Descriptor) -> Result<ImageConfig> {
        let bytes = self.read_blob(&desc.digest)?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            what: format!("config {}", desc.digest),
            source,
        })
    }

    /// Follows `desc` (a manifest, or an index from which `platform` picks
    /// one of the images the store holds: `crate::platforms`) to the
    /// image's manifest and config.
    pub fn read_image(&self, desc: &Descriptor, platform: &Platform) -> Result<Image> {
        let mut current = desc.clone();
        // Nested indexes are legal; a loop bound keeps a hostile cycle finite.
        for _ in 0..8 {
            match self.read_manifest(&current)? {
                ManifestKind::Image(manifest) => {
                    let config = self.read_config(&manifest.config)?;
                    return Ok(Image {
                        manifest_descriptor: current,
                        manifest,
                        config,
                    });
                }
                ManifestKind::Index(index) => {
                    current = self.pick_held(&index, platform, desc)?;
                }
            }
        }
        Err(Error::InvalidManifest {
            what: format!("manifest {}", desc.digest),
            reason: "indexes nested more than 8 deep".into(),
        })
    }

    // ----- index.json -----

    fn lock_index(&self) -> Result<File> {
        lock(&self.index_lock_path(), true)
    }

    /// Reads `index.json`.
    pub fn read_index(&self) -> Result<Index> {
        let path = self.index_path();
        let bytes = fs::read(&path).map_err(io_at("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            what: path.display().to_string(),
            source,
        })
    }

    /// Writes `index`; `names_new`: it names a manifest the index on disk
    /// does not.
    fn write_index(&self, index: &Index, names_new: bool) -> Result<()> {
        let bytes = to_canonical_json(index).map_err(|source| Error::Json {
            what: "index.json".into(),
            source,
        })?;
        // The blobs a new entry names must not lose their names in a
        // crash that keeps the index: their renames are fsynced first
        // (`IngestWriter::commit` leaves that to here), whoever made them
        // (a blob another process renamed counts as present too). An index
        // that only loses entries (untag, rmi, a collection under its
        // lock) needs no more than this process's own pending names.
        //
        // That fsync of `blobs/sha256/` and the one of the new index's
        // bytes are independent (both come before the rename): they run
        // side by side, one flush of the disk's cache waited for instead
        // of two in a row.
        // Blobs renamed in the background are renamed first.
        self.settle_writes()?;
        if names_new {
            unsynced_blob_dirs().insert(self.blobs_dir());
        }
        let path = self.index_path();
        if !unsynced_blob_dirs().contains(&self.blobs_dir()) {
            return write_atomic(&path, &bytes);
        }
        let staged = std::thread::scope(|s| {
            let names = std::thread::Builder::new().spawn_scoped(s, || self.sync_blob_names());
            let staged = Staged::write(&path, &bytes);
            // Without a thread of its own, the fsync runs here, after.
            let names = match names {
                Ok(thread) => thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(_) => self.sync_blob_names(),
            };
            match (staged, names) {
                (Ok(staged), Err(e)) => Err(staged.discard(e)),
                (staged, _) => staged,
            }
        })?;
        staged.publish(NameSync::Now)
    }

    /// Makes durable the names of the blobs this process renamed into
    /// `blobs/sha256/` and has not yet fsynced (one fsync of the
    /// directory; nothing when there are none): for a command that fetched
    /// blobs an existing tag already names, which writes no `index.json`.
    pub fn sync_blob_names(&self) -> Result<()> {
        self.settle_writes()?;
        let blobs = self.blobs_dir();
        if unsynced_blob_dirs().remove(&blobs) {
            if let Err(e) = fsync_dir(&blobs) {
                unsynced_blob_dirs().insert(blobs);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Changes `index.json` under its lock.
    pub(crate) fn update_index<T>(&self, change: impl FnOnce(&mut Index) -> T) -> Result<T> {
        let _guard = self.lock_index()?;
        let mut index = self.read_index()?;
        let before = index.clone();
        let out = change(&mut index);
        // Unchanged (a tag moved to where it was), it is not written: a
        // build that adds nothing leaves the store as it was
        // ([`Store::content_stamp`]).
        if index != before {
            let names_new = index
                .manifests
                .iter()
                .any(|d| !before.manifests.iter().any(|b| b.digest == d.digest));
            self.write_index(&index, names_new)?;
        } else {
            // A tag that names what this process just fetched.
            self.sync_blob_names()?;
        }
        Ok(out)
    }

    /// Points `reference` at `desc` (replacing what it named before).
    pub fn tag(&self, reference: &Reference, desc: &Descriptor) -> Result<()> {
        let name = reference.to_string();
        let mut entry = desc.clone();
        entry
            .annotations
            .insert(ANNOTATION_REF_NAME.to_string(), name.clone());
        self.update_index(|index| {
            index
                .manifests
                .retain(|d| d.annotations.get(ANNOTATION_REF_NAME) != Some(&name));
            index.manifests.push(entry);
            index.manifests.sort_by(|a, b| {
                a.annotations
                    .get(ANNOTATION_REF_NAME)
                    .cmp(&b.annotations.get(ANNOTATION_REF_NAME))
            });
        })
    }

    /// Records an image without a name (`<none>` in `kiln images`), so it is
    /// kept until removed by digest (or collected as a dangling image, least
    /// recently recorded first: its manifest blob's mtime is set to now).
    pub fn add_untagged(&self, desc: &Descriptor) -> Result<()> {
        let mut entry = desc.clone();
        entry.annotations.remove(ANNOTATION_REF_NAME);
        self.update_index(|index| {
            let present = index.manifests.iter().any(|d| {
                d.digest == entry.digest && !d.annotations.contains_key(ANNOTATION_REF_NAME)
            });
            if !present {
                index.manifests.push(entry);
            }
        })?;
        self.touch(&self.blob_path(&desc.digest))
    }

    /// Removes the tag; returns what it pointed at.
    pub fn untag(&self, reference: &Reference) -> Result<Option<Descriptor>> {
        let name = reference.to_string();
        self.update_index(|index| {
            let found = index
                .manifests
                .iter()
                .position(|d| d.annotations.get(ANNOTATION_REF_NAME) == Some(&name));
            found.map(|i| index.manifests.remove(i))
        })
    }

    /// What `reference` points at, if tagged.
    pub fn resolve(&self, reference: &Reference) -> Result<Option<Descriptor>> {
        let name = reference.to_string();
        let index = self.read_index()?;
        Ok(index
            .manifests
            .into_iter()
            .find(|d| d.annotations.get(ANNOTATION_REF_NAME) == Some(&name)))
    }

    /// What `reference` names, as [`Store::resolve`]; and for `NAME@DIGEST`
    /// that no entry names, what the store holds of that digest under a tag
    /// of the same repository: the tagged manifest or index itself, or a
    /// manifest a tagged index lists. Docker keeps the digests an image
    /// was pulled by as its repo digests, so `app@sha256:…` finds what
    /// `pull app:1` fetched; kiln finds it by the same digest.
    pub fn resolve_with_digests(&self, reference: &Reference) -> Result<Option<Descriptor>> {
        if let Some(desc) = self.resolve(reference)? {
            return Ok(Some(desc));
        }
        let Some(digest) = &reference.digest else {
            return Ok(None);
        };
        let name = reference.name();
        for tagged in self.list()? {
            if tagged.reference.as_ref().map(Reference::name) != Some(name.clone()) {
                continue;
            }
            if &tagged.descriptor.digest == digest {
                return Ok(Some(tagged.descriptor));
            }
            if !crate::oci::media::is_index(&tagged.descriptor.media_type) {
                continue;
            }
            let listed = self.platform_entries(&tagged.descriptor)?;
            if let Some(entry) = listed
                .into_iter()
                .find(|e| &e.descriptor.digest == digest && self.has_blob(digest))
            {
                return Ok(Some(entry.descriptor));
            }
        }
        Ok(None)
    }

    /// Every tag, sorted by name.
    pub fn list(&self) -> Result<Vec<TaggedImage>> {
        let index = self.read_index()?;
        Ok(index
            .manifests
            .into_iter()
            .map(|d| {
                let name = d
                    .annotations
                    .get(ANNOTATION_REF_NAME)
                    .cloned()
                    .unwrap_or_default();
                TaggedImage {
                    reference: Reference::parse(&name).ok(),
                    name,
                    descriptor: d,
                }
            })
            .collect())
    }

    /// Finds an image the way `docker inspect`/`rmi` do: a reference first,
    /// else an image id (config digest) or manifest digest, or a unique
    /// prefix of at least 4 hex digits. Returns the matching tags' entries.
    pub fn find(&self, query: &str, platform: &Platform) -> Result<Vec<TaggedImage>> {
        if let Ok(reference) = Reference::parse(query) {
            if let Some(desc) = self.resolve_with_digests(&reference)? {
                return Ok(vec![TaggedImage {
                    name: reference.to_string(),
                    reference: Some(reference),
                    descriptor: desc,
                }]);
            }
        }
        let hex = query.strip_prefix("sha256:").unwrap_or(query);
        if hex.len() < 4 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::ImageNotFound(query.to_string()));
        }
        let hex = hex.to_ascii_lowercase();
        let mut by_image: BTreeMap<Digest, Vec<TaggedImage>> = BTreeMap::new();
        for tagged in self.list()? {
            let manifest_match = tagged.descriptor.digest.hex().starts_with(&hex);
            let id = self
                .read_image_or_held(&tagged.descriptor, platform)
                .ok()
                .map(|img| img.id().clone());
            let id_match = id.as_ref().is_some_and(|d| d.hex().starts_with(&hex));
            if manifest_match || id_match {
                let key = id.unwrap_or_else(|| tagged.descriptor.digest.clone());
                by_image.entry(key).or_default().push(tagged);
            }
        }
        match by_image.len() {
            0 => Err(Error::ImageNotFound(query.to_string())),
            1 => Ok(by_image.into_values().next().unwrap_or_default()),
            _ => Err(Error::AmbiguousImage {
                query: query.to_string(),
                matches: by_image
                    .keys()
                    .map(|d| d.short().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    // ----- build cache records -----

    pub(crate) fn cache_path(&self, key: &Digest) -> PathBuf {
        self.cache_dir().join(format!("{}.json", key.hex()))
    }

    /// Records that the build cache record `key` was used now (its last-use
    /// time, which the collection goes by, is its file's mtime).
    pub fn touch_cache(&self, key: &Digest) -> Result<()> {
        self.touch(&self.cache_path(key))
    }

    /// Sets `path`'s mtime (a last-use time) to now.
    pub fn touch(&self, path: &Path) -> Result<()> {
        use rustix::fs::{Timespec, Timestamps, UTIME_NOW, UTIME_OMIT};
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_OMIT,
            },
            last_modification: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_NOW,
            },
        };
        rustix::fs::utimensat(rustix::fs::CWD, path, &times, rustix::fs::AtFlags::empty())
            .map_err(|e| Error::io("touch", path, e.into()))
    }

    /// Stores a build cache record under `key` (the step's cache key).
    pub fn cache_put(&self, key: &Digest, record: &CacheRecord) -> Result<()> {
        let (path, bytes) = self.cache_record(key, record)?;
        write_record(&path, &bytes)
    }

    /// [`Store::cache_put`], its fsync and rename on a thread of their own
    /// ([`Store::settle_writes`] waits for them; so does
    /// [`Store::cache_get`] of the same key). Another process may find the
    /// record before the blob it names: a miss, as after a crash.
    pub fn cache_put_in_background(&self, key: &Digest, record: &CacheRecord) -> Result<()> {
        let (path, bytes) = self.cache_record(key, record)?;
        crate::pending::spawn(path.clone(), move || write_record(&path, &bytes));
        Ok(())
    }

    /// Where the build cache record `key` is kept, and its bytes.
    fn cache_record(&self, key: &Digest, record: &CacheRecord) -> Result<(PathBuf, Vec<u8>)> {
        let bytes = to_canonical_json(record).map_err(|source| Error::Json {
            what: format!("cache record {key}"),
            source,
        })?;
        Ok((self.cache_path(key), bytes))
    }

    /// The record under `key`, if any and if every blob it names is present.
    pub fn cache_get(&self, key: &Digest) -> Result<Option<CacheRecord>> {
        let path = self.cache_path(key);
        crate::pending::wait_for(&path);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        let record: CacheRecord = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            what: path.display().to_string(),
            source,
        })?;
        if record.blobs.iter().all(|d| self.has_blob(d)) {
            Ok(Some(record))
        } else {
            Ok(None)
        }
    }

    fn cache_records(&self) -> Result<Vec<(PathBuf, Option<CacheRecord>)>> {
        let dir = self.cache_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_at("list", &dir))? {
            let entry = entry.map_err(io_at("list", &dir))?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                let record = fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                out.push((path, record));
            }
        }
        Ok(out)
    }

    // ----- garbage collection -----

    /// Blobs and chain ids reachable from `index.json` and the cache.
    fn reachable(&self) -> Result<(BTreeSet<Digest>, BTreeSet<Digest>)> {
        let mut blobs = BTreeSet::new();
        let mut chains = BTreeSet::new();
        let mut queue: Vec<Descriptor> = self.read_index()?.manifests;
        for (_, record) in self.cache_records()? {
            if let Some(record) = record {
                blobs.extend(record.blobs);
                chains.extend(record.chain_id);
            }
        }
        while let Some(desc) = queue.pop() {
            if !blobs.insert(desc.digest.clone()) || !self.has_blob(&desc.digest) {
                continue;
            }
            // Anything that is not a manifest we understand is kept as is.
            match self.read_manifest(&desc) {
                Ok(ManifestKind::Index(index)) => queue.extend(index.manifests),
                Ok(ManifestKind::Image(manifest)) => {
                    blobs.insert(manifest.config.digest.clone());
                    blobs.extend(manifest.layers.iter().map(|l| l.digest.clone()));
                    if let Ok(config) = self.read_config(&manifest.config) {
                        chains.extend(chain_ids(&config.rootfs.diff_ids));
                    }
                }
                Err(_) => {}
            }
        }
        Ok((blobs, chains))
    }

    /// Removes unreferenced blobs, everything in `ingest/`, unreferenced
    /// snapshots, leftovers of killed builds, runs and deletions, and (with
    /// [`PruneOptions::build_cache`]) the build cache and cache mounts: a
    /// collection ([`crate::gc`]) under [`PruneOptions::policy`]. Waits for
    /// every [`Lease`] to be released first. Never removes a blob
    /// reachable from `index.json` or a cache record. Everything goes
    /// through the trash (`crate::cleanup`): a kill leaves nothing
    /// half-deleted in place. The report says what each kind freed.
    pub fn prune(&self, prune: PruneOptions) -> Result<PruneReport> {
        let options = crate::gc::CollectOptions {
            dry_run: false,
            wait: crate::gc::LockWait::Block,
            seal: crate::gc::SealFirst::Always,
        };
        let report = self.collect(&prune.policy(), &options)?;
        Ok(report.unwrap_or_default())
    }

    /// Untags `reference` and removes the blobs and snapshots of what it
    /// pointed at that nothing else references (`docker rmi`). Returns the
    /// descriptor it pointed at and the blobs removed.
    pub fn remove_image(&self, reference: &Reference) -> Result<Option<(Descriptor, Vec<Digest>)>> {
        let Some(desc) = self.untag(reference)? else {
            return Ok(None);
        };
        self.collect_image(desc).map(Some)
    }

    /// Removes every `index.json` entry (tagged or not) for the manifest
    /// `digest`, then its unreferenced blobs and snapshots.
    pub fn remove_image_digest(
        &self,
        digest: &Digest,
    ) -> Result<Option<(Descriptor, Vec<Digest>)>> {
        let removed = self.update_index(|index| {
            let mut found = None;
            index.manifests.retain(|d| {
                if &d.digest == digest {
                    found = Some(d.clone());
                    false
                } else {
                    true
                }
            });
            found
        })?;
        match removed {
            Some(desc) => self.collect_image(desc).map(Some),
            None => Ok(None),
        }
    }

    fn collect_image(&self, desc: Descriptor) -> Result<(Descriptor, Vec<Digest>)> {
        let _gc = lock(&self.gc_lock_path(), true)?;
        let mut candidates = vec![desc.digest.clone()];
        let mut queue = vec![desc.clone()];
        while let Some(d) = queue.pop() {
            match self.read_manifest(&d) {
                Ok(ManifestKind::Index(i)) => {
                    candidates.extend(i.manifests.iter().map(|m| m.digest.clone()));
                    queue.extend(i.manifests);
                }
                Ok(ManifestKind::Image(m)) => {
                    candidates.push(m.config.digest.clone());
                    candidates.extend(m.layers.iter().map(|l| l.digest.clone()));
                }
                Err(_) => {}
            }
        }
        let (keep_blobs, keep_chains) = self.reachable()?;
        let mut removed = Vec::new();
        for digest in candidates {
            if keep_blobs.contains(&digest) || removed.contains(&digest) {
                continue;
            }
            let path = self.blob_path(&digest);
            match fs::remove_file(&path) {
                Ok(()) => removed.push(digest),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", path, e)),
            }
        }
        fsync_dir(&self.blobs_dir())?;
        self.trash_snapshots_except(&keep_chains)?;
        // This image's snapshots, and what earlier killed deletions left.
        self.empty_trash(false)?;
        Ok((desc, removed))
    }

    /// Moves every snapshot (finished or not) but those of `keep` into the
    /// trash; returns their names and where they went.
    fn trash_snapshots_except(&self, keep: &BTreeSet<Digest>) -> Result<Vec<(String, PathBuf)>> {
        let mut trashed = Vec::new();
        for path in self.list_dir(&self.snapshots_dir())? {
            let name = file_name(&path);
            let wanted = Digest::parse(&format!("sha256:{name}"))
                .map(|d| keep.contains(&d))
                .unwrap_or(false);
            if !wanted {
                if let Some(to) = self.move_to_trash(&path, "snapshot")? {
                    trashed.push((name, to));
                }
            }
        }
        fsync_dir(&self.snapshots_dir())?;
        Ok(trashed)
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A blob being written. Implements [`Write`]; hashes as bytes arrive.
/// Dropped without [`commit`](IngestWriter::commit), it removes its file.
pub struct IngestWriter {
    // Buffered: tar headers and compressor output arrive in small pieces.
    file: Option<io::BufWriter<File>>,
    path: PathBuf,
    blobs_dir: PathBuf,
    expected: Option<Descriptor>,
    hasher: Sha256,
    written: u64,
    /// File offset up to which writeback was already started.
    writeback_from: u64,
    /// Resumable writers leave their partial file for the next attempt.
    keep_on_drop: bool,
    /// A large download written around the page cache ([`crate::direct`]).
    direct: Option<DirectWrites>,
    /// Held until the blob is in place (taken along by
    /// [`IngestWriter::commit_in_background`]).
    lease: Option<Lease>,
}

/// Writeback of a blob's pages is started every this many bytes.
const WRITEBACK_STEP: u64 = 8 * 1024 * 1024;

impl IngestWriter {
    /// Bytes received so far: where a resumed download continues from
    /// (`Range: bytes=<offset>-`).
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// Drops what was written and starts over (a server that ignored Range).
    pub fn reset(&mut self) -> Result<()> {
        if let (Some(direct), Some(f)) = (self.direct.as_mut(), self.file.as_ref()) {
            direct
                .abandon(f.get_ref())
                .map_err(io_at("write", &self.path))?;
        }
        if let Some(f) = self.file.as_mut() {
            f.flush().map_err(io_at("write", &self.path))?;
            f.get_ref()
                .set_len(0)
                .map_err(io_at("truncate", &self.path))?;
            io::Seek::seek(f.get_mut(), io::SeekFrom::Start(0))
                .map_err(io_at("seek", &self.path))?;
        }
        self.hasher = Sha256::new();
        self.written = 0;
        self.writeback_from = 0;
        Ok(())
    }

    /// The descriptor this writer was started with.
    pub fn expected(&self) -> Option<&Descriptor> {
        self.expected.as_ref()
    }

    /// Verifies size and digest, fsyncs the bytes and moves them into
    /// `blobs/sha256/`. The new name is made durable by the next write of
    /// `index.json` (which fsyncs `blobs/sha256/` first) or
    /// [`Store::sync_blob_names`], not here: only a tag needs it, as what
    /// else names blobs checks that they are there.
    /// On a mismatch nothing is stored and the error names the digest.
    pub fn commit(mut self) -> Result<Descriptor> {
        let (desc, sealed) = self.seal()?;
        sealed.publish()?;
        Ok(desc)
    }

    /// [`IngestWriter::commit`] in two halves: the size and digest are
    /// verified here, and the descriptor returned, while the fsync and the
    /// rename into `blobs/sha256/` run on a thread of their own (the
    /// `pending` module), so that the flush they wait for overlaps the
    /// build's next fsyncs. Until then the blob is not under its name:
    /// [`Store::blob_path`] waits for it in this process, and
    /// [`Store::settle_writes`] for all of them (writing `index.json` does).
    ///
    /// ```
    /// # fn main() -> kiln_layers::error::Result<()> {
    /// use kiln_layers::store::Store;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path())?;
    /// let mut writer = store.ingest(None)?;
    /// std::io::Write::write_all(&mut writer, b"layer bytes").unwrap();
    /// let desc = writer.commit_in_background()?;
    /// // A reader in this process waits for the rename.
    /// assert_eq!(store.read_blob(&desc.digest)?, b"layer bytes");
    /// store.settle_writes()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn commit_in_background(mut self) -> Result<Descriptor> {
        let (desc, sealed) = self.seal()?;
        crate::pending::spawn(sealed.target.clone(), move || sealed.publish());
        Ok(desc)
    }

    /// Flushes what was written and verifies size and digest; on a
    /// mismatch (or a failed write) removes the file. The file, still
    /// open (a resumable writer's lock held), and the store's lease go to
    /// the [`SealedBlob`]: a resuming writer that took the lock in between
    /// would otherwise write into, or truncate, what is becoming a blob.
    fn seal(&mut self) -> Result<(Descriptor, SealedBlob)> {
        let Some(file) = self.file.take() else {
            return Err(Error::io(
                "commit",
                &self.path,
                io::Error::other("already committed"),
            ));
        };
        let mut held = None;
        let result = (|| {
            let file = held.insert(
                file.into_inner()
                    .map_err(|e| Error::io("write", &self.path, e.into_error()))?,
            );
            if let Some(direct) = self.direct.as_mut() {
                direct.finish(file).map_err(io_at("write", &self.path))?;
            }
            let hasher = std::mem::take(&mut self.hasher);
            let digest = Digest::from_hash(hasher.finalize().as_slice());
            match &self.expected {
                Some(exp) if exp.size != self.written => Err(Error::SizeMismatch {
                    digest: exp.digest.clone(),
                    expected: exp.size,
                    actual: self.written,
                }),
                Some(exp) if exp.digest != digest => Err(Error::DigestMismatch {
                    expected: exp.digest.clone(),
                    actual: digest,
                }),
                Some(exp) => Ok(exp.clone()),
                None => Ok(Descriptor::new(
                    "application/octet-stream",
                    digest,
                    self.written,
                )),
            }
        })();
        match (result, held) {
            (Ok(desc), Some(file)) => {
                let sealed = SealedBlob {
                    file,
                    path: self.path.clone(),
                    target: self.blobs_dir.join(desc.digest.hex()),
                    _lease: self.lease.take(),
                };
                Ok((desc, sealed))
            }
            (result, held) => {
                let _ = fs::remove_file(&self.path);
                drop(held);
                Err(result.err().unwrap_or_else(|| {
                    Error::io("commit", &self.path, io::Error::other("no file"))
                }))
            }
        }
    }
}

/// A blob whose bytes are written and verified, not yet fsynced nor in
/// place ([`IngestWriter::seal`]).
struct SealedBlob {
    file: File,
    path: PathBuf,
    /// Its name in `blobs/sha256/`.
    target: PathBuf,
    _lease: Option<Lease>,
}

impl SealedBlob {
    /// Fsyncs the bytes and renames them to their name (same name, same
    /// bytes: another writer may already have put it there, and renaming
    /// over it is harmless); on failure removes them.
    fn publish(self) -> Result<()> {
        let result = self
            .file
            .sync_all()
            .map_err(io_at("fsync", &self.path))
            .and_then(|()| {
                fs::rename(&self.path, &self.target)
                    .map_err(io_at("rename into place", &self.target))
            });
        match result {
            Ok(()) => {
                if let Some(blobs) = self.target.parent() {
                    unsynced_blob_dirs().insert(blobs.to_path_buf());
                }
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_file(&self.path);
                Err(e)
            }
        }
    }
}

impl Write for IngestWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("write after commit"));
        };
        if let Some(exp) = &self.expected {
            if self.written + buf.len() as u64 > exp.size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "blob {}: more than the expected {} bytes",
                        exp.digest, exp.size
                    ),
                ));
            }
        }
        // Once direct writes are over (finished, or no thread to write
        // with), bytes go through the buffer again.
        if let Some(direct) = self.direct.as_mut().filter(|d| d.active()) {
            direct.write(file.get_mut(), buf)?;
            self.hasher.update(buf);
            self.written += buf.len() as u64;
            return Ok(buf.len());
        }
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        let in_file = self.written - file.buffer().len() as u64;
        if in_file >= self.writeback_from + WRITEBACK_STEP {
            crate::writeback::start(
                file.get_ref(),
                self.writeback_from,
                in_file - self.writeback_from,
            );
            self.writeback_from = in_file;
        }
        Ok(n)
    }

    /// Writes out what is buffered; a direct writer goes on through the
    /// page cache (its buffered tail need not be a whole block).
    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => {
                if let Some(direct) = self.direct.as_mut() {
                    direct.finish(f.get_mut())?;
                }
                f.flush()
            }
            None => Ok(()),
        }
    }
}

impl Drop for IngestWriter {
    fn drop(&mut self) {
        if let Some(mut file) = self.file.take() {
            if self.keep_on_drop {
                // What was received stays for a resuming writer.
                if let Some(direct) = self.direct.as_mut() {
                    let _ = direct.finish(file.get_mut());
                }
                drop(file); // flushes what was received
            } else {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

impl std::fmt::Debug for IngestWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestWriter")
            .field("path", &self.path)
            .field("expected", &self.expected)
            .field("written", &self.written)
            .finish()
    }
}

/// What [`Store::content_stamp`] returns: compare two.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentStamp(Vec<Option<(i64, i64)>>);

/// What one run of a COPY from the build context wrote: the snapshot it
/// became and the content digest (`sha256:<hex>`) of each regular file it
/// copied, by destination path without the leading `/`. Stored as the
/// chain id on the first line (what a collection reads,
/// `copy_shape_chain`), then the files as one JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyShape {
    pub chain_id: Digest,
    pub files: BTreeMap<String, String>,
}

/// The chain id on a copy shape record's first line, and the rest.
fn split_head(bytes: &[u8]) -> Option<(Digest, &[u8])> {
    let end = bytes.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    Some((Digest::parse(head).ok()?, &bytes[end + 1..]))
}

/// The snapshot chain a copy shape record at `path` names, reading only
/// its first line; `None` if it names none.
pub(crate) fn copy_shape_chain(path: &Path) -> Option<Digest> {
    let mut head = [0u8; 128];
    let n = File::open(path).and_then(|mut f| f.read(&mut head)).ok()?;
    split_head(&head[..n]).map(|(chain, _)| chain)
}

#[cfg(test)]
mod ingest_writeback_tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    fn descriptor(bytes: &[u8]) -> Descriptor {
        Descriptor::new(
            "application/octet-stream",
            Digest::from_hash(Sha256::digest(bytes).as_slice()),
            bytes.len() as u64,
        )
    }

    fn stored(store: &Store, desc: &Descriptor) -> Vec<u8> {
        let mut bytes = Vec::new();
        store
            .open_blob(&desc.digest)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        bytes
    }

    /// Writes spanning several writeback steps, in pieces that straddle the
    /// steps and the write buffer, are stored exactly.
    #[test]
    fn blob_larger_than_several_writeback_steps_is_stored_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let bytes = data(3 * WRITEBACK_STEP as usize + 12_345);
        let desc = descriptor(&bytes);
        let mut writer = store.ingest(Some(desc.clone())).unwrap();
        for piece in bytes.chunks(1_000_003) {
            writer.write_all(piece).unwrap();
        }
        assert_eq!(writer.writeback_from % 1_000_003, 0);
        assert!(writer.writeback_from >= 2 * WRITEBACK_STEP);
        writer.commit().unwrap();
        assert!(stored(&store, &desc) == bytes);
    }

    /// A resumed writer starts writeback where the partial file ends.
    #[test]
    fn resumed_blob_past_a_writeback_step_is_stored_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let bytes = data(2 * WRITEBACK_STEP as usize + 777);
        let desc = descriptor(&bytes);
        let split = WRITEBACK_STEP as usize + 5;
        let mut first = store.ingest_resumable(desc.clone()).unwrap();
        first.write_all(&bytes[..split]).unwrap();
        drop(first);
        let mut resumed = store.ingest_resumable(desc.clone()).unwrap();
        assert_eq!(resumed.offset(), split as u64);
        assert_eq!(resumed.writeback_from, split as u64);
        resumed.write_all(&bytes[split..]).unwrap();
        resumed.commit().unwrap();
        assert!(stored(&store, &desc) == bytes);
    }

    /// A large download from byte 0 skips the page cache (on ext4, under
    /// /var/tmp: both whole chunks go with `O_DIRECT`) and is stored
    /// exactly; one whose bytes are wrong is refused at commit and leaves
    /// no blob.
    #[test]
    fn large_download_is_written_direct_and_verified() {
        let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let bytes = data(2 * crate::direct::CHUNK + 4097);
        let desc = descriptor(&bytes);
        let mut writer = store.ingest_resumable(desc.clone()).unwrap();
        for piece in bytes.chunks(65_536 + 17) {
            writer.write_all(piece).unwrap();
        }
        let (Some(direct), Some(file)) = (writer.direct.as_mut(), writer.file.as_mut()) else {
            panic!("no direct writes on /var/tmp");
        };
        assert_eq!(direct.finish(file.get_mut()).unwrap(), 2);
        writer.commit().unwrap();
        assert!(stored(&store, &desc) == bytes);

        let mut wrong = bytes.clone();
        wrong[crate::direct::CHUNK + 3] ^= 1;
        // Expected: the digest of other bytes of the same length.
        let other = descriptor(&data(wrong.len() + 1)[1..]);
        let mut writer = store.ingest_resumable(other.clone()).unwrap();
        writer.write_all(&wrong).unwrap();
        assert!(matches!(writer.commit(), Err(Error::DigestMismatch { .. })));
        assert!(!store.has_blob(&other.digest));
    }

    /// A blob made here (a layer) skips the page cache in whole chunks
    /// too, and its digest is what was written.
    #[test]
    fn a_large_blob_made_here_is_written_direct() {
        let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let bytes = data(3 * crate::direct::CHUNK + 100);
        let mut writer = store.ingest_direct().unwrap();
        for piece in bytes.chunks(65_536 + 17) {
            writer.write_all(piece).unwrap();
        }
        let (Some(direct), Some(file)) = (writer.direct.as_mut(), writer.file.as_mut()) else {
            panic!("no direct writes on /var/tmp");
        };
        assert_eq!(direct.finish(file.get_mut()).unwrap(), 3);
        let desc = writer.commit().unwrap();
        assert_eq!(
            desc,
            Descriptor::new(
                "application/octet-stream",
                Digest::of(&bytes),
                bytes.len() as u64
            )
        );
        assert!(stored(&store, &desc) == bytes);
    }

    /// A small layer made here, flushed and then written on: the bytes
    /// after the flush go through the writer's buffer, after those before
    /// it, and the blob is what was written.
    #[test]
    fn a_blob_made_here_written_on_after_a_flush_is_stored_exactly() {
        let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let bytes = data(3 * 65_536 + 11);
        let mut writer = store.ingest_direct().unwrap();
        writer.write_all(&bytes[..1000]).unwrap();
        writer.flush().unwrap();
        writer.write_all(&bytes[1000..]).unwrap();
        let file = writer.file.as_ref().unwrap();
        assert_eq!(file.buffer().len(), bytes.len() - 1000, "bytes buffered");
        let desc = writer.commit().unwrap();
        assert_eq!(desc.digest, Digest::of(&bytes));
        assert!(stored(&store, &desc) == bytes);
    }

    /// The disk fills up during a large download: the partial file the
    /// dropped writer leaves is a prefix of the blob (even when there is
    /// room again as it is dropped), so once there is room
    /// again a resumed download continues it and commits the right blob.
    #[test]
    fn a_download_cut_by_a_full_disk_resumes_to_the_right_blob() {
        kiln_testsupport::require_root!("mounting a small tmpfs");
        let chunk = crate::direct::CHUNK;
        // Room for 2.5 chunks of the 5 once the ballast is in.
        let fs = crate::direct::tests::Tmpfs::mount(6 * chunk, 7 * chunk / 2);
        let store = Store::open(fs.dir.join("store")).unwrap();
        let bytes = data(5 * chunk);
        let desc = descriptor(&bytes);
        let mut writer = store.ingest_resumable(desc.clone()).unwrap();
        assert!(writer.direct.is_some());
        let cut = bytes
            .chunks(65_536 + 17)
            .any(|p| writer.write_all(p).is_err());
        assert!(cut, "no write failed with the tmpfs full");
        // Room again before the writer is dropped (another process freed
        // some): still nothing more is written.
        fs.free_ballast();
        drop(writer);
        let mut resumed = store.ingest_resumable(desc.clone()).unwrap();
        let offset = resumed.offset() as usize;
        assert!(
            offset >= 2 * chunk && offset < bytes.len(),
            "offset {offset}"
        );
        resumed.write_all(&bytes[offset..]).unwrap();
        resumed.commit().unwrap();
        assert!(stored(&store, &desc) == bytes);
    }

    /// A committed blob's name waits for the next fsync of its directory:
    /// a tag that leaves `index.json` as it was makes it durable too.
    #[test]
    fn blob_names_are_synced_by_a_tag_even_when_the_index_is_unchanged() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let blobs = store.blobs_dir();
        let pending = || unsynced_blob_dirs().contains(&blobs);
        let config = store.put_blob("application/json", b"{}").unwrap();
        assert!(pending());
        let reference = Reference::parse("names:1").unwrap();
        store.tag(&reference, &config).unwrap();
        assert!(!pending());
        // The same tag again (the index unchanged) after a new blob.
        store.put_blob("application/json", b"{\"a\":1}").unwrap();
        assert!(pending());
        store.tag(&reference, &config).unwrap();
        assert!(!pending());
        store.put_blob("application/json", b"{\"b\":2}").unwrap();
        store.sync_blob_names().unwrap();
        assert!(!pending());
    }

    /// Writes left to threads of their own: a layer committed so is read
    /// back whole by this process at once (the reader waits), a cache
    /// record too; a cache record that cannot be written fails the settle,
    /// a copy shape (only an optimisation) does not.
    #[test]
    fn background_writes_are_waited_for_and_only_a_lost_record_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let mut writer = store.ingest(None).unwrap();
        writer.write_all(b"layer").unwrap();
        let desc = writer.commit_in_background().unwrap();
        assert_eq!(store.read_blob(&desc.digest).unwrap(), b"layer");
        let record = CacheRecord {
            blobs: vec![desc.digest.clone()],
            chain_id: None,
            data: serde_json::json!({}),
        };
        let key = Digest::of(b"step");
        store.cache_put_in_background(&key, &record).unwrap();
        assert_eq!(store.cache_get(&key).unwrap(), Some(record.clone()));
        store.settle_writes().unwrap();

        // Where the records would go is taken by directories.
        let shape_key = Digest::of(b"shape");
        let shape_path = store
            .copy_shapes_dir()
            .join(format!("{}.json", shape_key.hex()));
        fs::create_dir_all(shape_path.join("in-the-way")).unwrap();
        let shape = CopyShape {
            chain_id: desc.digest.clone(),
            files: BTreeMap::new(),
        };
        store
            .copy_shape_put_in_background(&shape_key, &shape)
            .unwrap();
        store.settle_writes().unwrap();
        let lost = Digest::of(b"lost");
        fs::create_dir_all(store.cache_path(&lost).join("in-the-way")).unwrap();
        store.cache_put_in_background(&lost, &record).unwrap();
        let err = store.settle_writes().unwrap_err().to_string();
        assert!(err.contains(&lost.hex().to_string()), "{err}");
    }

    /// Blobs stored at once come back in the order given, each whole; a
    /// config and manifest written together name each other as one after
    /// the other would, and a tag of the manifest leaves no blob name
    /// pending.
    #[test]
    fn blobs_stored_at_once_are_whole_and_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let (a, b, c) = (data(70_000), b"{}".to_vec(), data(3));
        let put = store
            .put_blobs(&[("x/a", &a), ("x/b", &b), ("x/c", &c)])
            .unwrap();
        let types: Vec<&str> = put.iter().map(|d| d.media_type.as_str()).collect();
        assert_eq!(types, ["x/a", "x/b", "x/c"]);
        for (desc, bytes) in put.iter().zip([&a, &b, &c]) {
            assert_eq!(desc.digest, descriptor(bytes).digest);
            assert_eq!(&stored(&store, desc), bytes);
        }
        assert!(store.put_blobs(&[]).unwrap().is_empty());

        let config = ImageConfig {
            architecture: "arm64".into(),
            os: "linux".into(),
            variant: Some("v8".into()),
            ..Default::default()
        };
        let layers = [put[0].clone()];
        let desc = store
            .write_config_and_manifest(
                (media::DOCKER_CONFIG, media::DOCKER_MANIFEST),
                &config,
                &layers,
            )
            .unwrap();
        assert_eq!(desc.media_type, media::DOCKER_MANIFEST);
        assert_eq!(desc.platform, Some(config.platform()));
        let ManifestKind::Image(manifest) = store.read_manifest(&desc).unwrap() else {
            panic!("not an image manifest");
        };
        assert_eq!(manifest.config.media_type, media::DOCKER_CONFIG);
        assert_eq!(manifest.layers, layers);
        assert_eq!(store.read_config(&manifest.config).unwrap(), config);
        store
            .tag(&Reference::parse("together:1").unwrap(), &desc)
            .unwrap();
        assert!(!unsynced_blob_dirs().contains(&store.blobs_dir()));
        let image = store.read_image(&desc, &config.platform()).unwrap();
        assert_eq!(image.config, config);
    }
}
