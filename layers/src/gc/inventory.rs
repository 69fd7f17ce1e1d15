//! What the store holds, as a collection sees it: the items it may remove
//! (each with its kind, when it was last used, the files and directories
//! that go with it, and the blobs and snapshots it keeps alive), the blobs
//! and snapshots tagged images pin, and the bytes of each area of the
//! store as `du` counts them (`kiln system df`).
//!
//! Last-used times: a build cache record's is its file's mtime (touched on
//! every cache hit, [`Store::touch_cache`]); a cache mount's, its
//! directory's mtime (touched when a RUN mounts it); a dangling image's,
//! its manifest blob's mtime (touched when a build makes it again); a
//! parked upper dir's, the time in its name; a partial download's or a
//! compressed variant's, its file's mtime.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::digest::{chain_ids, Digest};
use crate::error::Result;
use crate::gc::policy::Kind;
use crate::gc::usage::{du, key_of, measure_tree, Run, Segments, SizeCache, TreeSize};
use crate::oci::{Descriptor, ManifestKind, ANNOTATION_REF_NAME};
use crate::owner::Owner;
use crate::store::{copy_shape_chain, CacheRecord, Store};

/// The areas of the store `kiln system df` shows, by where things live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Area {
    /// Blobs that are not layers: manifests, configs, indexes (and the
    /// `blobs/` directories themselves).
    Images,
    /// Layer blobs: those an image in `index.json` or a cache record names
    /// as a layer, and the blobs nothing references that are not JSON
    /// documents.
    Layers,
    /// `snapshots/`.
    Snapshots,
    /// `cache/`: build cache records and the build contexts' stat caches.
    BuildCache,
    /// `cache-mounts/`.
    CacheMounts,
    /// `builds/`, `parked/`, `trash/` and `containers/`.
    Scratch,
    /// `ingest/`.
    Ingest,
    /// Everything else: `index.json`, lock files, `variants/`, `origins/`,
    /// `index-sources/`, the policy file and the size cache.
    Other,
}

impl Area {
    pub const ALL: [Area; 8] = [
        Area::Images,
        Area::Layers,
        Area::Snapshots,
        Area::BuildCache,
        Area::CacheMounts,
        Area::Scratch,
        Area::Ingest,
        Area::Other,
    ];

    /// The row's name in `kiln system df`.
    pub fn name(self) -> &'static str {
        match self {
            Area::Images => "images",
            Area::Layers => "layers",
            Area::Snapshots => "snapshots",
            Area::BuildCache => "build cache",
            Area::CacheMounts => "cache mounts",
            Area::Scratch => "scratch/trash",
            Area::Ingest => "ingest partials",
            Area::Other => "other",
        }
    }
}

/// What a deleted piece counts as in a prune's report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum What {
    Blob(Option<Digest>),
    Snapshot(String),
    /// Files in `ingest/` and temp files of interrupted atomic writes.
    PartialWrite,
    CacheRecord,
    /// Work dirs and unfinished snapshots in `builds/`, parked upper dirs
    /// in `parked/` (in `builds/` in older stores) and state dirs in
    /// `containers/`.
    BuildDir,
    CacheMount,
    /// What was already in `trash/`.
    Trash,
    VariantRecord,
}

/// One file or directory a collection deletes.
#[derive(Clone, Debug)]
pub(crate) struct Piece {
    pub path: PathBuf,
    /// What deleting it frees by itself ([`TreeSize::own`]).
    pub bytes: u64,
    pub area: Area,
    pub what: What,
    /// Its files with links elsewhere ([`TreeSize::shared`]): freed with
    /// the last piece holding them ([`Inventory::freed_in_order`]).
    pub shared: Vec<Run>,
}

/// Something a collection may remove as a whole.
#[derive(Clone, Debug)]
pub(crate) struct Item {
    pub kind: Kind,
    /// Kept for no one (unreferenced, left by a dead process): removed
    /// whatever the limits, when its kind is collected.
    pub garbage: bool,
    pub last_used: LastUsed,
    pub pieces: Vec<Piece>,
    /// Blobs and snapshots it keeps alive ([`Inventory::resources`]).
    pub holds: Vec<usize>,
    /// A dangling image: its `index.json` entry.
    pub image: Option<Descriptor>,
}

/// When an item was last used, and the file or directory whose mtime says
/// so (none: a time in its name, or never).
#[derive(Clone, Debug)]
pub(crate) struct LastUsed {
    pub at: SystemTime,
    pub from: Option<PathBuf>,
}

impl LastUsed {
    /// `path`'s mtime.
    fn mtime_of(path: &Path) -> LastUsed {
        LastUsed::from_metadata(path, std::fs::symlink_metadata(path).ok().as_ref())
    }

    /// `path`'s mtime, from its metadata (`None`: it could not be read).
    fn from_metadata(path: &Path, meta: Option<&std::fs::Metadata>) -> LastUsed {
        LastUsed {
            at: meta
                .and_then(|m| m.modified().ok())
                .unwrap_or(SystemTime::UNIX_EPOCH),
            from: Some(path.to_path_buf()),
        }
    }

    /// A time that does not change.
    pub(crate) fn fixed(at: SystemTime) -> LastUsed {
        LastUsed { at, from: None }
    }

    /// Whether it reads as it did: the item was not used since.
    pub(crate) fn unchanged(&self) -> bool {
        self.from
            .as_deref()
            .is_none_or(|path| mtime(path) == self.at)
    }
}

/// A blob or snapshot that items or tagged images keep.
#[derive(Clone, Debug)]
pub(crate) struct Resource {
    pub piece: Piece,
    /// Kept by a tagged image: never removed.
    pub pinned: bool,
}

/// The store as a collection sees it.
#[derive(Debug, Default)]
pub(crate) struct Inventory {
    pub items: Vec<Item>,
    pub resources: Vec<Resource>,
    /// `du` of each area.
    pub areas: BTreeMap<Area, u64>,
    /// The shared files of every measured tree, with how many hold each.
    pub segments: Segments,
    /// Bytes of shared files counted in more than one area (each area
    /// counts them once, as `du` of it does).
    pub shared_overlap: u64,
    /// Scanned without the exclusive lock, entries were passed over that
    /// only a scan with it may take for leftovers (scratch without an
    /// owner in its name).
    pub deferred: bool,
}

impl Inventory {
    /// What a collection counts of `piece` against the limits: its own
    /// bytes and an equal part of each shared file's (with each holder
    /// counted so, a shared file counts once in the usage).
    pub(crate) fn weight(&self, piece: &Piece) -> u64 {
        piece.bytes + self.segments.share(&piece.shared)
    }

    /// What deleting `pieces` in this order frees at each, as `du` counts
    /// it: a shared file is freed with the last of its holders, if all of
    /// them are deleted.
    pub(crate) fn freed_in_order<'a>(&self, pieces: impl Iterator<Item = &'a Piece>) -> Vec<u64> {
        let mut deleted = self.segments.deletions();
        pieces
            .map(|piece| piece.bytes + self.segments.delete(&piece.shared, &mut deleted))
            .collect()
    }
}

/// The inventory being made.
struct Scan<'a> {
    store: &'a Store,
    sizes: &'a mut SizeCache,
    memo: &'a mut ReadMemo,
    /// Whether the caller holds the collector's exclusive lock (no build,
    /// pull or run is in flight), so that scratch without an owner in its
    /// name and container state dirs are leftovers.
    exclusive: bool,
    inv: Inventory,
    /// Blobs and chain ids kept by something, with their resource index
    /// once the blob or snapshot is found on disk.
    held_blobs: BTreeMap<Digest, Held>,
    held_chains: BTreeMap<Digest, Held>,
    /// Blobs some manifest or record names as a layer.
    layers: BTreeSet<Digest>,
    /// Per item, the blobs and chains it holds (resolved at the end).
    item_holds: Vec<(Vec<Digest>, Vec<Digest>)>,
    /// Blobs on disk that nothing holds: digest → piece.
    loose_blobs: BTreeMap<Digest, Piece>,
    /// Per area, the shared files of its trees: `du` of an area counts
    /// each once.
    area_shared: BTreeMap<Area, Vec<Run>>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Held {
    pinned: bool,
    resource: Option<usize>,
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn blocks(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).map_or(0, |m| m.blocks().saturating_mul(512))
}

/// Whether the file at `path` starts as a JSON document does (`{`): a
/// manifest, index or config rather than a layer.
fn is_json(path: &Path) -> bool {
    use std::io::Read;
    let mut first = [0u8; 1];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut first))
        .is_ok_and(|()| first[0] == b'{')
}

/// Whether the scratch `name` belongs to another process that is running.
fn live_other(name: &str) -> bool {
    Owner::of_name(name).is_some_and(|o| o != Owner::current() && o.is_alive())
}

/// What the scans of one collection read from files that change only by
/// being replaced or touched (build cache records): phase 2's scan under
/// the lock reads again only those that were added, replaced or touched
/// since phase 1's (a store after twenty benchmark runs holds 1,500).
#[derive(Debug, Default)]
pub(crate) struct ReadMemo {
    records: HashMap<PathBuf, (FileKey, Option<CacheRecord>)>,
    /// Records read from disk so far (the others came from the memo).
    pub(crate) reads: usize,
}

/// A file as it is on disk: replaced (a new inode), rewritten or touched
/// (new times), it reads differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileKey {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileKey {
    fn of(meta: &std::fs::Metadata) -> FileKey {
        FileKey {
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl ReadMemo {
    /// The record at `path` (`None`: unreadable or not a record), read
    /// unless it was read before as `meta` says it is now.
    fn record(&mut self, path: &Path, meta: Option<&std::fs::Metadata>) -> Option<CacheRecord> {
        let key = meta.map(FileKey::of);
        if let (Some(key), Some((known, record))) = (key, self.records.get(path)) {
            if *known == key {
                return record.clone();
            }
        }
        self.reads += 1;
        let record: Option<CacheRecord> = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(key) = key {
            self.records
                .insert(path.to_path_buf(), (key, record.clone()));
        }
        record
    }
}

/// Scans the store. `exclusive`: the caller holds `gc.lock` exclusively.
/// `memo` carries what an earlier scan of the same collection read.
pub(crate) fn scan(
    store: &Store,
    sizes: &mut SizeCache,
    memo: &mut ReadMemo,
    exclusive: bool,
) -> Result<Inventory> {
    let mut scan = Scan {
        store,
        sizes,
        memo,
        exclusive,
        inv: Inventory::default(),
        held_blobs: BTreeMap::new(),
        held_chains: BTreeMap::new(),
        layers: BTreeSet::new(),
        item_holds: Vec::new(),
        loose_blobs: BTreeMap::new(),
        area_shared: BTreeMap::new(),
    };
    scan.index()?;
    scan.records()?;
    scan.copy_shapes()?;
    scan.blobs()?;
    scan.variants()?;
    scan.snapshots()?;
    scan.cache_mounts()?;
    scan.scratch()?;
    scan.ingest()?;
    scan.other()?;
    Ok(scan.finish())
}

/// The mtimes of every directory a [`scan`] lists, and of `index.json`,
/// taken before a scan. Read again later and equal, they say that no entry
/// was added, removed or renamed in any of them since: every write that
/// adds a reference (a tag, a cache record, a blob, a snapshot) is one of
/// those. (Not what changes inside a tree, such as a cache mount being
/// written, nor a touch that marks a use: see [`LastUsed::unchanged`].)
///
/// Only when that can be told: the file system dates changes with its own
/// clock, coarsely (a tick, or seconds on some), so a change made after
/// the stamp could bear the time it read. A probe file is touched first:
/// the stamp holds only if every directory last changed strictly before
/// the probe's time, which any later change is dated at or after. And
/// only on a local file system whose directory times are read as they
/// are, not from a cache ([`times_are_current`]).
#[derive(Debug)]
pub(crate) struct DirStamp {
    mtimes: Vec<SystemTime>,
    settled: bool,
}

impl DirStamp {
    pub(crate) fn of(store: &Store) -> DirStamp {
        let probe = store.gc_lock_path();
        let probed = store.touch(&probe).ok().map(|()| mtime(&probe));
        let mtimes = dir_mtimes(store);
        let settled = times_are_current(store)
            && probed.is_some_and(|probe| mtimes.iter().all(|&time| time < probe));
        DirStamp { mtimes, settled }
    }

    /// Whether a change made after it was taken would show (see above).
    pub(crate) fn settled(&self) -> bool {
        self.settled
    }

    /// Whether the directories read as they did when it was taken.
    pub(crate) fn same_now(&self, store: &Store) -> bool {
        dir_mtimes(store) == self.mtimes
    }
}

/// Whether the store's file system is one whose directory mtimes are read
/// as they are and dated by the clock that dates a touch: local ones known
/// to, not a network file system that may serve them from a cache (nor one
/// that dates changes by a clock of its own). Only the root's: a store
/// directory mounted from elsewhere is not covered.
pub(crate) fn times_are_current(store: &Store) -> bool {
    const LOCAL: [u64; 6] = [
        0xEF53,      // ext2, ext3, ext4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0xF2F5_2010, // f2fs
        0x794C_7630, // overlayfs
    ];
    rustix::fs::statfs(store.root()).is_ok_and(|stat| LOCAL.contains(&(stat.f_type as u64)))
}

/// The directories' mtimes ([`mtime`]: the epoch for one that is missing).
fn dir_mtimes(store: &Store) -> Vec<SystemTime> {
    let variants = store.list_dir(&store.variants_dir()).unwrap_or_default();
    [
        store.root().to_path_buf(),
        store.index_path(),
        store.blobs_dir(),
        store.cache_dir(),
        store.copy_shapes_dir(),
        store.variants_dir(),
        store.snapshots_dir(),
        store.cache_mounts_dir(),
        store.builds_dir(),
        store.parked_dir(),
        store.containers_dir(),
        store.trash_dir(),
        store.ingest_dir(),
    ]
    .iter()
    .chain(&variants)
    .map(|path| mtime(path))
    .collect()
}

impl Scan<'_> {
    fn add(&mut self, area: Area, bytes: u64) {
        *self.inv.areas.entry(area).or_default() += bytes;
    }

    /// Whether scratch named `name` (not a live process's) may be taken
    /// for a leftover: with an owner in its name (a dead one), or any
    /// under the exclusive lock; otherwise notes that it was deferred.
    fn may_take(&mut self, name: &str) -> bool {
        let may = self.exclusive || Owner::of_name(name).is_some();
        self.inv.deferred |= !may;
        may
    }

    /// Adds a measured tree to `area`; returns its own bytes.
    fn add_tree(&mut self, area: Area, size: &TreeSize) -> u64 {
        self.add(area, size.own);
        self.area_shared
            .entry(area)
            .or_default()
            .extend_from_slice(&size.shared);
        size.own
    }

    fn push(&mut self, item: Item, blobs: Vec<Digest>, chains: Vec<Digest>) {
        for d in &blobs {
            self.held_blobs.entry(d.clone()).or_default();
        }
        for c in &chains {
            self.held_chains.entry(c.clone()).or_default();
        }
        self.inv.items.push(item);
        self.item_holds.push((blobs, chains));
    }

    /// Blobs, layers and chain ids an image (manifest or index) names.
    fn walk(&mut self, root: &Descriptor) -> (Vec<Digest>, Vec<Digest>) {
        let (mut blobs, mut chains) = (Vec::new(), Vec::new());
        let mut queue = vec![root.clone()];
        let mut seen = BTreeSet::new();
        while let Some(desc) = queue.pop() {
            if !seen.insert(desc.digest.clone()) {
                continue;
            }
            blobs.push(desc.digest.clone());
            // What is not a manifest kiln understands is kept as it is.
            match self.store.read_manifest(&desc) {
                Ok(ManifestKind::Index(index)) => queue.extend(index.manifests),
                Ok(ManifestKind::Image(manifest)) => {
                    blobs.push(manifest.config.digest.clone());
                    for layer in &manifest.layers {
                        blobs.push(layer.digest.clone());
                        self.layers.insert(layer.digest.clone());
                    }
                    if let Ok(config) = self.store.read_config(&manifest.config) {
                        chains.extend(chain_ids(&config.rootfs.diff_ids));
                    }
                }
                Err(_) => {}
            }
        }
        (blobs, chains)
    }

    /// Tagged images pin what they name; each dangling one is an item.
    fn index(&mut self) -> Result<()> {
        let index = self.store.read_index()?;
        let (tagged, dangling): (Vec<_>, Vec<_>) = index
            .manifests
            .into_iter()
            .partition(|d| d.annotations.contains_key(ANNOTATION_REF_NAME));
        for desc in &tagged {
            let (blobs, chains) = self.walk(desc);
            for d in blobs {
                self.held_blobs.entry(d).or_default().pinned = true;
            }
            for c in chains {
                self.held_chains.entry(c).or_default().pinned = true;
            }
        }
        let mut seen = BTreeSet::new();
        for desc in dangling {
            if !seen.insert(desc.digest.clone()) {
                continue;
            }
            let (blobs, chains) = self.walk(&desc);
            let item = Item {
                kind: Kind::Dangling,
                garbage: false,
                last_used: LastUsed::mtime_of(&self.store.blob_path(&desc.digest)),
                pieces: Vec::new(),
                holds: Vec::new(),
                image: Some(desc),
            };
            self.push(item, blobs, chains);
        }
        Ok(())
    }

    /// Build cache records: one item each.
    fn records(&mut self) -> Result<()> {
        let dir = self.store.cache_dir();
        self.add(Area::BuildCache, blocks(&dir));
        let shapes = self.store.copy_shapes_dir();
        for path in self.store.list_dir(&dir)? {
            let name = name_of(&path);
            if path == shapes {
                continue;
            }
            if !name.ends_with(".json") || name.starts_with('.') {
                // The build contexts' stat caches; temp files: `other`.
                if !name.starts_with('.') {
                    let bytes = du(&path)?;
                    self.add(Area::BuildCache, bytes);
                }
                continue;
            }
            // One stat for its size, its last use and the memo.
            let meta = std::fs::symlink_metadata(&path).ok();
            let bytes = meta.as_ref().map_or(0, |m| m.blocks().saturating_mul(512));
            self.add(Area::BuildCache, bytes);
            let last_used = LastUsed::from_metadata(&path, meta.as_ref());
            let record = self.memo.record(&path, meta.as_ref());
            let (blobs, chains) = match record {
                Some(r) => {
                    self.layers.extend(r.blobs.iter().cloned());
                    (r.blobs, r.chain_id.into_iter().collect())
                }
                None => (Vec::new(), Vec::new()),
            };
            let item = Item {
                kind: Kind::Cache,
                garbage: false,
                last_used,
                pieces: vec![Piece {
                    path,
                    bytes,
                    area: Area::BuildCache,
                    what: What::CacheRecord,
                    shared: Vec::new(),
                }],
                holds: Vec::new(),
                image: None,
            };
            self.push(item, blobs, chains);
        }
        Ok(())
    }

    /// COPY shape records (`cache/copy-shapes/`): an item each, of the
    /// build cache's kind, last used when last written; unreferenced
    /// garbage once the snapshot they name is gone (nothing can link from
    /// it). They keep no snapshot alive.
    fn copy_shapes(&mut self) -> Result<()> {
        let dir = self.store.copy_shapes_dir();
        self.add(Area::BuildCache, blocks(&dir));
        for path in self.store.list_dir(&dir)? {
            let name = name_of(&path);
            if name.starts_with('.') {
                // Temp files of interrupted writes: `other`.
                continue;
            }
            let bytes = blocks(&path);
            self.add(Area::BuildCache, bytes);
            let piece = Piece {
                path: path.clone(),
                bytes,
                area: Area::BuildCache,
                what: What::CacheRecord,
                shared: Vec::new(),
            };
            let live = copy_shape_chain(&path).is_some_and(|c| self.store.has_snapshot(&c));
            if !live {
                self.garbage(Kind::Unreferenced, piece);
                continue;
            }
            self.kept(Kind::Cache, LastUsed::mtime_of(&path), vec![piece]);
        }
        Ok(())
    }

    fn resource(&mut self, piece: Piece, pinned: bool) -> usize {
        self.inv.resources.push(Resource { piece, pinned });
        self.inv.resources.len() - 1
    }

    /// Every blob: a resource when something holds it, else loose.
    fn blobs(&mut self) -> Result<()> {
        let dir = self.store.blobs_dir();
        let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        self.add(Area::Images, blocks(&parent) + blocks(&dir));
        for path in self.store.list_dir(&dir)? {
            let digest = Digest::parse(&format!("sha256:{}", name_of(&path))).ok();
            let bytes = blocks(&path);
            let area = match &digest {
                Some(d) if self.layers.contains(d) => Area::Layers,
                Some(d) if self.held_blobs.contains_key(d) => Area::Images,
                _ if is_json(&path) => Area::Images,
                _ => Area::Layers,
            };
            self.add(area, bytes);
            let piece = Piece {
                path,
                bytes,
                area,
                what: What::Blob(digest.clone()),
                shared: Vec::new(),
            };
            let Some(digest) = digest else {
                self.garbage(Kind::Unreferenced, piece);
                continue;
            };
            match self.held_blobs.get(&digest).copied() {
                Some(held) => {
                    let r = self.resource(piece, held.pinned);
                    if let Some(h) = self.held_blobs.get_mut(&digest) {
                        h.resource = Some(r);
                    }
                }
                None => {
                    self.loose_blobs.insert(digest, piece);
                }
            }
        }
        Ok(())
    }

    /// An item kept while the limits allow, holding nothing.
    fn kept(&mut self, kind: Kind, last_used: LastUsed, pieces: Vec<Piece>) {
        let item = Item {
            kind,
            garbage: false,
            last_used,
            pieces,
            holds: Vec::new(),
            image: None,
        };
        self.push(item, Vec::new(), Vec::new());
    }

    fn garbage(&mut self, kind: Kind, piece: Piece) {
        self.push(
            Item {
                kind,
                garbage: true,
                last_used: LastUsed::fixed(SystemTime::UNIX_EPOCH),
                pieces: vec![piece],
                holds: Vec::new(),
                image: None,
            },
            Vec::new(),
            Vec::new(),
        );
    }

    /// Converted forms of layers (`variants/<form>/<source>` naming a
    /// blob nothing else holds): an item each blob, with every record that
    /// names it (a plain layer's and a gzip one's zstd forms can be one
    /// blob), last used when the newest of them was written. Records whose
    /// blob is gone are garbage. The other loose blobs too.
    fn variants(&mut self) -> Result<()> {
        let mut by_blob: BTreeMap<Digest, Vec<Piece>> = BTreeMap::new();
        for dir in self.store.list_dir(&self.store.variants_dir())? {
            for path in self.store.list_dir(&dir)? {
                let bytes = blocks(&path);
                let record = Piece {
                    path: path.clone(),
                    bytes,
                    area: Area::Other,
                    what: What::VariantRecord,
                    shared: Vec::new(),
                };
                let named = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| Digest::parse(t.split_whitespace().next()?).ok());
                match named.filter(|d| self.store.has_blob(d)) {
                    Some(digest) => by_blob.entry(digest).or_default().push(record),
                    None => self.garbage(Kind::Unreferenced, record),
                }
            }
        }
        for (digest, records) in by_blob {
            // A blob something else holds keeps its records with it.
            let Some(blob) = self.loose_blobs.remove(&digest) else {
                continue;
            };
            let last_used = records
                .iter()
                .map(|r| LastUsed::mtime_of(&r.path))
                .max_by_key(|l| l.at)
                .unwrap_or_else(|| LastUsed::fixed(SystemTime::UNIX_EPOCH));
            let mut pieces = vec![blob];
            pieces.extend(records);
            self.kept(Kind::Unreferenced, last_used, pieces);
        }
        for (_, piece) in std::mem::take(&mut self.loose_blobs) {
            self.garbage(Kind::Unreferenced, piece);
        }
        Ok(())
    }

    /// Snapshots: a resource when something holds their chain id, else
    /// garbage; unfinished ones of dead processes are garbage too (made
    /// here by older kilns, `.tmp-*`; now in `builds/`).
    fn snapshots(&mut self) -> Result<()> {
        let dir = self.store.snapshots_dir();
        self.add(Area::Snapshots, blocks(&dir));
        for path in self.store.list_dir(&dir)? {
            let name = name_of(&path);
            if name.starts_with('.') {
                // A step's upper dir being made a snapshot may hold links
                // to another snapshot (incremental COPY).
                let size = measure_tree(&path)?;
                let bytes = self.add_tree(Area::Snapshots, &size);
                if name.starts_with(".tmp-") && !live_other(&name) && self.may_take(&name) {
                    let piece = Piece {
                        path,
                        bytes,
                        area: Area::Snapshots,
                        what: What::Snapshot(name),
                        shared: size.shared,
                    };
                    self.garbage(Kind::Scratch, piece);
                }
                continue;
            }
            let size = self.sizes.measure(&key_of(self.store, &path), &path)?;
            let piece = Piece {
                path,
                bytes: self.add_tree(Area::Snapshots, &size),
                area: Area::Snapshots,
                what: What::Snapshot(name.clone()),
                shared: size.shared,
            };
            let chain = Digest::parse(&format!("sha256:{name}")).ok();
            match chain.and_then(|c| self.held_chains.get(&c).copied().map(|h| (c, h))) {
                Some((chain, held)) => {
                    let r = self.resource(piece, held.pinned);
                    if let Some(h) = self.held_chains.get_mut(&chain) {
                        h.resource = Some(r);
                    }
                }
                None => self.garbage(Kind::Unreferenced, piece),
            }
        }
        Ok(())
    }

    /// Cache mounts: an item each; one a dead build was seeding is garbage.
    fn cache_mounts(&mut self) -> Result<()> {
        let dir = self.store.cache_mounts_dir();
        self.add(Area::CacheMounts, blocks(&dir));
        for path in self.store.list_dir(&dir)? {
            let name = name_of(&path);
            let bytes = du(&path)?;
            self.add(Area::CacheMounts, bytes);
            if live_other(&name) {
                continue;
            }
            let piece = Piece {
                path: path.clone(),
                bytes,
                area: Area::CacheMounts,
                what: What::CacheMount,
                shared: Vec::new(),
            };
            if name.starts_with("seeding-") {
                self.garbage(Kind::Scratch, piece);
                continue;
            }
            self.kept(Kind::CacheMount, LastUsed::mtime_of(&path), vec![piece]);
        }
        Ok(())
    }

    /// `builds/`, `parked/`, `containers/` and `trash/`.
    fn scratch(&mut self) -> Result<()> {
        for dir in [
            self.store.builds_dir(),
            self.store.parked_dir(),
            self.store.containers_dir(),
            self.store.trash_dir(),
        ] {
            self.add(Area::Scratch, blocks(&dir));
            let in_trash = dir == self.store.trash_dir();
            for path in self.store.list_dir(&dir)? {
                self.scratch_entry(path, in_trash)?;
            }
        }
        Ok(())
    }

    fn scratch_entry(&mut self, path: PathBuf, in_trash: bool) -> Result<()> {
        let name = name_of(&path);
        if let Some(parked) = parked_time(&name).filter(|_| !in_trash) {
            // A duplicate upper dir parked by a --no-cache rerun (see the
            // builder's `discard_step_dir`): kept while the limits allow.
            let size = self.sizes.measure(&key_of(self.store, &path), &path)?;
            let piece = Piece {
                path,
                bytes: self.add_tree(Area::Scratch, &size),
                area: Area::Scratch,
                what: What::BuildDir,
                shared: size.shared,
            };
            self.kept(Kind::Scratch, LastUsed::fixed(parked), vec![piece]);
            return Ok(());
        }
        // A build's work dir may hold links to snapshots (a COPY's), a
        // trashed snapshot links from or to others.
        let size = measure_tree(&path)?;
        let bytes = self.add_tree(Area::Scratch, &size);
        // A live process's scratch is its own; without the exclusive lock,
        // so is anything whose name says no owner (an older kiln's work dir
        // or container state): it may be in use.
        if live_other(&name) || !(in_trash || self.may_take(&name)) {
            return Ok(());
        }
        let what = if in_trash {
            What::Trash
        } else {
            What::BuildDir
        };
        let piece = Piece {
            path,
            bytes,
            area: Area::Scratch,
            what,
            shared: size.shared,
        };
        self.garbage(Kind::Scratch, piece);
        Ok(())
    }

    /// `ingest/`: resumable downloads are kept while the limits allow;
    /// other partial writes of dead processes are garbage.
    fn ingest(&mut self) -> Result<()> {
        let dir = self.store.ingest_dir();
        self.add(Area::Ingest, blocks(&dir));
        for path in self.store.list_dir(&dir)? {
            let name = name_of(&path);
            let bytes = du(&path)?;
            self.add(Area::Ingest, bytes);
            if live_other(&name) {
                continue;
            }
            let piece = Piece {
                path: path.clone(),
                bytes,
                area: Area::Ingest,
                what: What::PartialWrite,
                shared: Vec::new(),
            };
            if name.ends_with(".partial") {
                self.kept(Kind::Scratch, LastUsed::mtime_of(&path), vec![piece]);
            } else if self.may_take(&name) {
                self.garbage(Kind::Scratch, piece);
            }
        }
        Ok(())
    }

    /// The root's other entries (`other`), and temp files of interrupted
    /// atomic writes there and in `cache/` (garbage once their writer is
    /// gone).
    fn other(&mut self) -> Result<()> {
        let root = self.store.root().to_path_buf();
        self.add(Area::Other, blocks(&root));
        let areas = [
            self.store.blobs_dir().parent().map(Path::to_path_buf),
            Some(self.store.snapshots_dir()),
            Some(self.store.cache_dir()),
            Some(self.store.cache_mounts_dir()),
            Some(self.store.builds_dir()),
            Some(self.store.parked_dir()),
            Some(self.store.containers_dir()),
            Some(self.store.trash_dir()),
            Some(self.store.ingest_dir()),
        ];
        for path in self.store.list_dir(&root)? {
            if areas.iter().any(|a| a.as_deref() == Some(path.as_path())) {
                continue;
            }
            self.add(Area::Other, du(&path)?);
        }
        for (dir, area) in [
            (root, Area::Other),
            (self.store.cache_dir(), Area::BuildCache),
            (self.store.copy_shapes_dir(), Area::BuildCache),
        ] {
            for path in self.store.list_dir(&dir)? {
                let name = name_of(&path);
                if !(name.starts_with('.') && name.contains(".tmp-")) {
                    continue;
                }
                let bytes = du(&path)?;
                if area == Area::BuildCache {
                    self.add(area, bytes);
                }
                if !live_other(&name) {
                    let what = What::PartialWrite;
                    self.garbage(
                        Kind::Scratch,
                        Piece {
                            path,
                            bytes,
                            area,
                            what,
                            shared: Vec::new(),
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Resolves what each item holds to the resources found on disk.
    fn finish(mut self) -> Inventory {
        let areas = std::mem::take(&mut self.area_shared);
        let mut per_area = 0;
        for (area, runs) in &areas {
            let bytes = Segments::new(runs.iter()).union_bytes();
            self.add(*area, bytes);
            per_area += bytes;
        }
        self.inv.segments = Segments::new(areas.values().flatten());
        self.inv.shared_overlap = per_area.saturating_sub(self.inv.segments.union_bytes());
        for (item, (blobs, chains)) in self.inv.items.iter_mut().zip(&self.item_holds) {
            let mut holds: Vec<usize> = blobs
                .iter()
                .filter_map(|d| self.held_blobs.get(d).and_then(|h| h.resource))
                .chain(
                    chains
                        .iter()
                        .filter_map(|c| self.held_chains.get(c).and_then(|h| h.resource)),
                )
                .collect();
            holds.sort_unstable();
            holds.dedup();
            item.holds = holds;
        }
        self.inv
    }
}

/// The time in a parked upper dir's name, `trash-<secs>-<bytes>-…` (see
/// the builder's `discard_step_dir`).
fn parked_time(name: &str) -> Option<SystemTime> {
    let secs: u64 = name
        .strip_prefix("trash-")?
        .split('-')
        .next()?
        .parse()
        .ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}
