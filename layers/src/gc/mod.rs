//! Garbage collection of the store: what `kiln prune` removes, what the
//! automatic collection after a build removes, and what `kiln system df`
//! reports, all from one inventory (`inventory`) and one choice
//! (`select`) under a [`Policy`] in BuildKit's vocabulary.
//!
//! A collection first seals the snapshots made so far ([`Store::seal`]: a
//! `syncfs`, then they are trusted after a crash) as [`SealFirst`] says,
//! then runs in three phases:
//!
//! 1. Without a lock, sizes of new immutable trees (snapshots, parked
//!    upper dirs) are measured into the size cache, so that phase 2 is
//!    short, and the policy chooses from what is seen: when it chooses
//!    nothing (and nothing was passed over for want of the lock), the
//!    collection ends here, taking no lock. Otherwise it waits for the
//!    builds, pulls and runs that hold a [`crate::Lease`].
//! 2. Under `gc.lock` held exclusively (no lease is held: nothing in
//!    flight uses anything), the policy chooses, the chosen dangling
//!    images leave `index.json` and every chosen file and directory is
//!    renamed into `trash/`: renames only, so a build that starts now
//!    waits milliseconds for its lease, not for deletions. It chooses from
//!    phase 1's inventory when that still holds: phase 1 began with no
//!    lease held, passed over no scratch the policy collects, and nothing
//!    it saw has changed since (no entry added, removed or renamed in the
//!    directories it listed, as far as their mtimes can tell:
//!    `inventory::DirStamp`; no item used). Otherwise it scans the store
//!    again first (`Rescan` says why), reading only the cache records
//!    added, touched or replaced since phase 1 (`inventory::ReadMemo`),
//!    and walking no tree that a build it waited for noted (their notes
//!    are taken in first; a `kiln prune` beside it may take them before).
//! 3. The lock released, the renames are made durable (`fsync` of the
//!    trash and of the directories the entries left), then the trash
//!    entries are deleted and measured.
//!
//! When all phase 1 chose is already in the trash (abandoned, or a dead
//! process's: after a build that replaced no tag and no cache record,
//! its abandoned step dirs are all there is), phase 2 is skipped: nobody
//! uses or can take back a trash entry, so it is deleted without the lock,
//! and a build that starts meanwhile waits for nothing. A collection that
//! also removes what a rebuild left unreferenced still takes the lock.
//!
//! A kill at any point leaves only trash, named after the dead collector,
//! which the next collection deletes. Two collections never remove the
//! same thing: phase 2 is exclusive, and the trash entries of a live
//! process are its own to delete. The automatic collections of one store
//! take turns ([`Store::gc_turn`]): one runs, at most one more waits, any
//! other leaves the work to the waiting one; the one after a build waits
//! as buildkitd's does, a second after the build and a minute after the
//! last collection ([`Pacing`]).

mod inventory;
mod policy;
mod select;
mod usage;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

pub use inventory::Area;
pub use policy::{
    parse_duration, parse_size, Disk, GcConfig, Kind, Policy, Space, DEFAULT_KEEP_STORAGE,
    DEFAULT_MIN_FREE_SPACE,
};
pub(crate) use usage::Tally;
pub use usage::TreeSize;

use crate::cleanup::remove_tree;
use crate::digest::Digest;
use crate::error::Result;
use crate::oci::ANNOTATION_REF_NAME;
use crate::store::{fsync_dir, lock, try_lock, PruneReport, Rescanned, Store};
use inventory::{scan, DirStamp, Inventory, ReadMemo, What};
use select::{select, Selection};
use usage::SizeCache;

/// How a collection waits for the builds, pulls and runs in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockWait {
    /// As long as they take.
    Block,
    /// At most this long; then the collection does nothing.
    Poll(Duration),
}

/// Whether a collection seals the snapshots made so far first
/// ([`Store::seal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealFirst {
    /// Always (`kiln prune`).
    Always,
    /// When this boot's last seal is older than this (the automatic
    /// collection: its `syncfs` slows the builds running meanwhile).
    IfOlderThan(Duration),
    /// Never (a collection a build waits for).
    Never,
}

/// How often the automatic collection seals at most.
pub const SEAL_INTERVAL: Duration = Duration::from_secs(300);

/// How to collect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollectOptions {
    /// Only say what would be removed. Takes no lock but an exclusive one
    /// that is free at once (then the figures are exact). Never seals.
    pub dry_run: bool,
    pub wait: LockWait,
    pub seal: SealFirst,
}

/// One area of the store in `kiln system df`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AreaUsage {
    /// What `du` counts there.
    pub bytes: u64,
    /// What `kiln prune --all` would remove there now.
    pub reclaimable: u64,
}

/// What the store holds (`kiln system df`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub areas: BTreeMap<Area, AreaUsage>,
    /// What `du` counts for the whole store: the areas' sum, less what
    /// files linked between areas count in more than one.
    pub total: u64,
    /// The bytes keep-storage limits: every kind's but untagged images'
    /// (unless `gc.toml`'s types has `dangling`), less what tagged images
    /// and untagged ones left alone keep.
    pub collectable: u64,
    pub disk: Disk,
}

/// The automatic collection's turn (see the module docs); released on drop.
#[derive(Debug)]
pub struct GcTurn {
    _run: File,
}

/// When an automatic collection may start. After a build kiln paces its
/// collections as buildkitd paces its own (its controller runs the GC a
/// second after each build, and at most once a minute: `ThrottleAfter`),
/// so that builds run back to back do not each share the machine with a
/// collection, and a burst of them leaves one collection to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pacing {
    /// How long after it was asked for the collection starts.
    pub delay: Duration,
    /// How long after the last automatic collection ended (`gc.log`'s
    /// mtime) the next may start.
    pub interval: Duration,
}

impl Pacing {
    /// How much of the interval is left after a collection that ended at
    /// `last` (none known: none). One dated in the future counts as just
    /// ended: the wait never exceeds the interval.
    fn wait_after(&self, last: Option<SystemTime>) -> Duration {
        last.map_or(Duration::ZERO, |t| {
            self.interval
                .saturating_sub(t.elapsed().unwrap_or(Duration::ZERO))
        })
    }

    /// At once (`KILN_GC=foreground`, `kiln __gc`).
    pub const NONE: Pacing = Pacing {
        delay: Duration::ZERO,
        interval: Duration::ZERO,
    };
    /// After a build or run returned (the detached collection).
    pub const AFTER_BUILD: Pacing = Pacing {
        delay: Duration::from_secs(1),
        interval: Duration::from_secs(60),
    };
}

/// Which directory a store's root is: a collection that waited does not
/// collect a store made anew at the same path (device, inode and birth
/// time; an inode number alone may be reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StoreIdentity {
    dev: rustix::fs::Dev,
    ino: u64,
    born: (i64, u32),
}

impl StoreIdentity {
    /// `None` when the root is gone. Where `statx` is refused (an old
    /// seccomp profile) or missing, device and inode from `stat`; where the
    /// filesystem keeps no birth time, statx reports it as zero.
    fn of(store: &Store) -> Option<StoreIdentity> {
        use rustix::fs::{statx, AtFlags, StatxFlags, CWD};
        match statx(
            CWD,
            store.root(),
            AtFlags::empty(),
            StatxFlags::INO | StatxFlags::BTIME,
        ) {
            Ok(st) => Some(StoreIdentity {
                dev: rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
                ino: st.stx_ino,
                born: (st.stx_btime.tv_sec, st.stx_btime.tv_nsec),
            }),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => None,
            Err(_) => StoreIdentity::of_stat(store.root()),
        }
    }

    /// The fallback of [`StoreIdentity::of`]: device and inode from
    /// `stat`, no birth time.
    fn of_stat(root: &std::path::Path) -> Option<StoreIdentity> {
        let st = rustix::fs::stat(root).ok()?;
        Some(StoreIdentity {
            dev: st.st_dev,
            ino: st.st_ino,
            born: (0, 0),
        })
    }
}

impl Store {
    /// The automatic collection's policy file (`<root>/gc.toml`), or the
    /// defaults when there is none.
    pub fn gc_config(&self) -> Result<GcConfig> {
        GcConfig::load(&self.gc_config_path())
    }

    /// Waits until `pacing` lets an automatic collection start and the
    /// running one has finished. A paced collection waits in
    /// `gc-queue.lock`, and returns `None` when another one already waits
    /// there (that one will see what this one would); an unpaced one
    /// (`Pacing::NONE`) waits only for the running one. `kiln prune` and a
    /// build's lease wait for none of this. `None` too when the store was
    /// removed or replaced while this one waited.
    pub fn gc_turn(&self, pacing: Pacing) -> Result<Option<GcTurn>> {
        let asked = Instant::now();
        let Some(store) = StoreIdentity::of(self) else {
            return Ok(None);
        };
        let queued = if pacing == Pacing::NONE {
            None
        } else {
            match try_lock(&self.gc_queue_lock_path())? {
                Some(queued) => Some(queued),
                None => return Ok(None),
            }
        };
        let replaced = || StoreIdentity::of(self) != Some(store);
        let mut last = self.last_collection();
        let mut due = asked + pacing.delay.max(pacing.wait_after(last));
        loop {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if replaced() {
                return Ok(None);
            }
            let run = lock(&self.gc_run_lock_path(), true)?;
            // Again: the running collection this one waited for may have
            // waited long (for leases) while the store was replaced.
            if replaced() {
                return Ok(None);
            }
            let now = self.last_collection();
            if now == last || pacing == Pacing::NONE {
                drop(queued);
                return Ok(Some(GcTurn { _run: run }));
            }
            // Another collection ended meanwhile: the interval runs from
            // its end (once: a date that stays put is not waited for again).
            last = now;
            due = Instant::now() + pacing.wait_after(last);
        }
    }

    /// Whether a paced automatic collection waits for its turn now (holds
    /// `gc-queue.lock`). It has not looked at the store yet, so it will see
    /// what was done until now; another one started now would leave at once
    /// ([`Store::gc_turn`]), so a command that finds one waiting starts
    /// none. (The lock is tried, so for an instant this holds it: a paced
    /// collection that tries it then leaves, and the caller starts one.)
    pub fn collection_waiting(&self) -> Result<bool> {
        Ok(try_lock(&self.gc_queue_lock_path())?.is_none())
    }

    /// When the last automatic collection ended (`gc.log`'s mtime).
    fn last_collection(&self) -> Option<SystemTime> {
        std::fs::metadata(self.gc_log_path())
            .and_then(|m| m.modified())
            .ok()
    }

    /// What each area of the store holds and what `kiln prune --all` would
    /// remove there, and what the automatic collection's limit counts.
    pub fn usage(&self) -> Result<Usage> {
        let kinds = self.gc_config()?.policy.types;
        let mut sizes = SizeCache::load(self);
        let inv = self.scan_now(&mut sizes)?;
        let sel = select(
            &inv,
            &Policy::all_of(Kind::ALL),
            SystemTime::now(),
            Disk::default(),
        );
        let counted = select(
            &inv,
            &Policy::all_of(kinds),
            SystemTime::now(),
            Disk::default(),
        );
        let mut areas: BTreeMap<Area, AreaUsage> = Area::ALL
            .iter()
            .map(|a| {
                let bytes = inv.areas.get(a).copied().unwrap_or(0);
                (
                    *a,
                    AreaUsage {
                        bytes,
                        reclaimable: 0,
                    },
                )
            })
            .collect();
        let pieces: Vec<_> = chosen_pieces(&inv, &sel).collect();
        for (piece, bytes) in pieces
            .iter()
            .zip(inv.freed_in_order(pieces.iter().copied()))
        {
            if let Some(a) = areas.get_mut(&piece.area) {
                a.reclaimable += bytes;
            }
        }
        let total = areas.values().map(|a| a.bytes).sum::<u64>() - inv.shared_overlap;
        Ok(Usage {
            areas,
            total,
            collectable: counted.usage_before,
            disk: Disk::of(self.root())?,
        })
    }

    /// Scans with the exclusive lock when it is free at once (exact
    /// figures), else without.
    fn scan_now(&self, sizes: &mut SizeCache) -> Result<Inventory> {
        let gc = try_lock(&self.gc_lock_path())?;
        scan(self, sizes, &mut ReadMemo::default(), gc.is_some())
    }

    /// Removes what `policy` chooses (see the module docs) and reports what
    /// each kind freed, as `du` counts it; with `dry_run`, removes nothing
    /// and reports what it would free. `None`: the wait ran out.
    pub fn collect(
        &self,
        policy: &Policy,
        options: &CollectOptions,
    ) -> Result<Option<PruneReport>> {
        if !options.dry_run {
            return self.seal_then_collect(policy, options);
        }
        let mut sizes = SizeCache::load(self);
        let inv = self.scan_now(&mut sizes)?;
        let disk = Disk::of(self.root())?;
        let sel = select(&inv, policy, SystemTime::now(), disk);
        Ok(Some(predicted(&inv, &sel, disk)))
    }

    /// Seals the snapshots made so far as `options.seal` says
    /// ([`Store::seal`]; a failure does not stop the collection: they stay
    /// trusted in this boot, and the report says why), then collects.
    fn seal_then_collect(
        &self,
        policy: &Policy,
        options: &CollectOptions,
    ) -> Result<Option<PruneReport>> {
        let sealing = Instant::now();
        let skip = match options.seal {
            SealFirst::Always => None,
            SealFirst::Never => Some("this collection does not seal".to_string()),
            SealFirst::IfOlderThan(interval) => self
                .last_seal_age()
                .filter(|age| *age < interval)
                .map(|age| format!("the last seal was {} s ago", age.as_secs())),
        };
        let unsealed = skip.or_else(|| match self.seal() {
            Ok(Some(_)) => None,
            Ok(None) => Some("the boot id cannot be read".to_string()),
            Err(e) => {
                tracing::warn!("sealing the store's snapshots: {e}");
                Some(e.to_string())
            }
        });
        let synced = sealing.elapsed();
        let mut report = self.collect_now(policy, options.wait)?;
        if let Some(report) = &mut report {
            report.synced = synced;
            report.unsealed = unsealed;
        }
        Ok(report)
    }

    /// Phases 1 to 3 (see the module docs).
    fn collect_now(&self, policy: &Policy, wait: LockWait) -> Result<Option<PruneReport>> {
        let mut sizes = SizeCache::load_taking_notes(self);
        // Phase 1, without the lock: new immutable trees are measured now
        // (a 20,000-file snapshot takes a while), not while a build that
        // starts waits for its lease. When the policy chooses nothing
        // there and nothing was passed over for want of the lock, phase 2
        // would choose nothing either (what changes meanwhile is a build's,
        // whose own collection follows it): the lock is not taken.
        let look = self.first_look(&mut sizes)?;
        let first = &look.inv;
        let disk = Disk::of(self.root())?;
        let sel = select(first, policy, SystemTime::now(), disk);
        let deferred = look.deferred(policy);
        if sel.items.is_empty() && sel.freed.is_empty() && !deferred {
            if let Err(e) = sizes.save(self) {
                tracing::warn!("{e}");
            }
            return Ok(Some(predicted(first, &sel, disk)));
        }
        let (mut report, trashed) = if !deferred && only_trash(first, &sel) {
            // What phase 1 chose is already in the trash, abandoned or a
            // dead process's: nothing in flight uses it or can take it
            // back, and two deleting the same entry both succeed. It goes
            // without the lock: a build that starts meanwhile waits for
            // nothing. (A build abandons its step dirs there: after one
            // that replaced no tag and no record, that is all there is.)
            let trashed = chosen_pieces(first, &sel)
                .map(|piece| (piece.path.clone(), piece.what.clone()))
                .collect();
            (predicted(first, &sel, disk), trashed)
        } else {
            let waiting = Instant::now();
            let Some(gc) = self.wait_for_gc_lock(wait)? else {
                return Ok(None);
            };
            let locked = Instant::now();
            let choice = self.choose_under_lock(look, policy, &mut sizes)?;
            let mut report = predicted(&choice.inv, &choice.sel, choice.disk);
            report.rescanned = choice.rescan.map(|(_, figures)| figures);
            report.waited = locked.duration_since(waiting);
            let moved = self.move_chosen_to_trash(&choice.inv, &choice.sel)?;
            drop(gc);
            report.exclusive = locked.elapsed();
            // The renames made durable before anything is deleted; not
            // under the lock, where writeback would hold every build.
            for dir in std::iter::once(self.trash_dir()).chain(moved.from) {
                fsync_dir(&dir)?;
            }
            (report, moved.trashed)
        };
        // Phase 3: the deletions, measured. One that fails (a file made
        // immutable, a tree deeper than the open-file limit) is said and
        // left in the trash for the next collection; the others go, or
        // one entry would keep every later collection from freeing
        // anything.
        report.clear_removed();
        for (path, what) in trashed {
            match remove_tree(&path) {
                Ok(bytes) => report.count(&what, bytes),
                Err(e) => tracing::warn!("left in the trash: {e}"),
            }
        }
        if let Err(e) = sizes.save(self) {
            tracing::warn!("{e}");
        }
        Ok(Some(report))
    }

    /// Phase 1's scan, and what phase 2 needs to tell whether it still
    /// holds.
    fn first_look(&self, sizes: &mut SizeCache) -> Result<FirstLook> {
        // Held (if free) until the stamp is taken: a lease taken after it
        // shows as a change in a stamped directory. When it is held, phase
        // 2 scans again whatever the stamp would say: none is taken.
        let stamp = try_lock(&self.gc_lock_path())?.map(|_free| DirStamp::of(self));
        let mut memo = ReadMemo::default();
        let inv = scan(self, sizes, &mut memo, false)?;
        Ok(FirstLook { inv, stamp, memo })
    }

    /// Phase 2's inventory and choice, made with the lock held: phase 1's
    /// inventory when it still holds (see [`Rescan`] for when it may not),
    /// chosen from again (the free space may differ), so that a build that
    /// starts meanwhile waits for no scan; otherwise a new scan.
    fn choose_under_lock(
        &self,
        look: FirstLook,
        policy: &Policy,
        sizes: &mut SizeCache,
    ) -> Result<Choice> {
        let rescanned = match &look.stamp {
            _ if look.deferred(policy) => Some(Rescan::Deferred),
            None => Some(Rescan::Busy),
            Some(stamp) if !stamp.settled() => Some(Rescan::Untold),
            Some(stamp)
                if !stamp.same_now(self)
                    || look
                        .inv
                        .items
                        .iter()
                        .any(|item| !item.last_used.unchanged()) =>
            {
                Some(Rescan::Changed)
            }
            Some(_) => None,
        };
        let mut memo = look.memo;
        let scanning = Instant::now();
        let walked = sizes.walked;
        let inv = match rescanned {
            None => look.inv,
            Some(_) => {
                // The trees that builds made while this one waited for
                // them were noted: not walked now, while builds wait.
                sizes.take_new_notes(self);
                scan(self, sizes, &mut memo, true)?
            }
        };
        let rescan = rescanned.map(|reason| {
            let figures = Rescanned {
                why: reason.why(),
                took: scanning.elapsed(),
                walked: sizes.walked - walked,
            };
            (reason, figures)
        });
        let disk = Disk::of(self.root())?;
        let sel = select(&inv, policy, SystemTime::now(), disk);
        Ok(Choice {
            inv,
            sel,
            disk,
            rescan,
        })
    }

    fn wait_for_gc_lock(&self, wait: LockWait) -> Result<Option<File>> {
        let path = self.gc_lock_path();
        match wait {
            LockWait::Block => lock(&path, true).map(Some),
            LockWait::Poll(limit) => {
                let deadline = Instant::now() + limit;
                loop {
                    if let Some(gc) = try_lock(&path)? {
                        return Ok(Some(gc));
                    }
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Phase 2: the chosen dangling images leave `index.json`, then every
    /// chosen file and directory is renamed into the trash (what is there
    /// already stays). Returns what to delete.
    fn move_chosen_to_trash(&self, inv: &Inventory, sel: &Selection) -> Result<Moved> {
        let images: Vec<Digest> = sel
            .items
            .iter()
            .filter_map(|&i| inv.items[i].image.as_ref().map(|d| d.digest.clone()))
            .collect();
        if !images.is_empty() {
            self.update_index(|index| {
                index.manifests.retain(|d| {
                    d.annotations.contains_key(ANNOTATION_REF_NAME) || !images.contains(&d.digest)
                })
            })?;
        }
        let mut moved = Moved::default();
        for piece in chosen_pieces(inv, sel) {
            if piece.what == What::Trash {
                moved.trashed.push((piece.path.clone(), piece.what.clone()));
            } else if let Some(to) = self.move_to_trash(&piece.path, piece.what.trash_name())? {
                moved.trashed.push((to, piece.what.clone()));
                moved.from.extend(piece.path.parent().map(PathBuf::from));
            }
        }
        Ok(moved)
    }
}

/// What phase 2 moved: the trash entries to delete, with what each was,
/// and the directories they left.
#[derive(Default)]
struct Moved {
    trashed: Vec<(PathBuf, What)>,
    from: BTreeSet<PathBuf>,
}

/// Phase 1's inventory, and what tells phase 2 whether it still holds.
struct FirstLook {
    inv: Inventory,
    /// Taken just before the scan, when nothing held `gc.lock` (no build,
    /// pull or run in flight, no other collection): one started since
    /// wrote in a stamped directory (its scratch, its results), or nothing
    /// but the touch of what it used. `None`: something held it.
    stamp: Option<DirStamp>,
    /// What the scan read, for phase 2's scan if it must make one.
    memo: ReadMemo,
}

impl FirstLook {
    /// Whether the scan passed over scratch that only a scan with the lock
    /// may take, and the policy collects scratch.
    fn deferred(&self, policy: &Policy) -> bool {
        self.inv.deferred && policy.types.contains(&Kind::Scratch)
    }
}

/// Why phase 2 scanned the store again instead of choosing from phase 1's
/// inventory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rescan {
    /// Phase 1 passed over scratch only a scan with the lock may take.
    Deferred,
    /// `gc.lock` was held as phase 1 began (a build, pull or run in
    /// flight, or another collection): what a build writes inside trees (a
    /// cache mount) or leaves when killed is not seen.
    Busy,
    /// Whether the store changed could not be told ([`DirStamp`]).
    Untold,
    /// The store changed: an entry added, removed or renamed in a
    /// directory phase 1 listed, or an item used.
    Changed,
}

impl Rescan {
    fn why(self) -> &'static str {
        match self {
            Rescan::Deferred => {
                "the first scan passed over scratch that only a scan with the lock may take"
            }
            Rescan::Busy => "the store was in use when the first scan began",
            Rescan::Untold => "whether the store changed after the first scan could not be told",
            Rescan::Changed => "the store changed after the first scan",
        }
    }
}

/// What phase 2 removes, and from what it chose.
struct Choice {
    inv: Inventory,
    sel: Selection,
    disk: Disk,
    /// The scan made again under the lock, if one was: why, and its
    /// figures.
    rescan: Option<(Rescan, Rescanned)>,
}

/// Whether every file and directory `sel` chose is a trash entry (no
/// dangling image, nothing it frees).
fn only_trash(inv: &Inventory, sel: &Selection) -> bool {
    sel.freed.is_empty()
        && sel.items.iter().all(|&i| inv.items[i].image.is_none())
        && chosen_pieces(inv, sel).all(|piece| piece.what == What::Trash)
}

/// The files and directories of the chosen items and the blobs and
/// snapshots they freed.
fn chosen_pieces<'a>(
    inv: &'a Inventory,
    sel: &'a Selection,
) -> impl Iterator<Item = &'a inventory::Piece> {
    sel.items
        .iter()
        .flat_map(|&i| inv.items[i].pieces.iter())
        .chain(sel.freed.iter().map(|&r| &inv.resources[r].piece))
}

/// The report a selection predicts (sizes as scanned).
fn predicted(inv: &Inventory, sel: &Selection, disk: Disk) -> PruneReport {
    let mut report = PruneReport {
        usage_before: sel.usage_before,
        usage_after: sel.usage_after,
        keep: sel.keep,
        free_before: disk.free,
        ..PruneReport::default()
    };
    for &i in &sel.items {
        if let Some(image) = &inv.items[i].image {
            report.images.push(image.digest.clone());
        }
    }
    let pieces: Vec<_> = chosen_pieces(inv, sel).collect();
    for (piece, bytes) in pieces
        .iter()
        .zip(inv.freed_in_order(pieces.iter().copied()))
    {
        report.count(&piece.what, bytes);
    }
    report
}

impl What {
    /// How a trash entry of this piece is named (`<name>-<owner>-…`).
    fn trash_name(&self) -> &'static str {
        match self {
            What::Blob(_) => "blob",
            What::Snapshot(_) => "snapshot",
            What::PartialWrite => "ingest",
            What::CacheRecord => "cache",
            What::BuildDir => "build",
            What::CacheMount => "cache-mount",
            What::Trash => "trash",
            What::VariantRecord => "variant",
        }
    }
}

impl PruneReport {
    /// Forgets what was counted of removals (keeps the usage figures).
    fn clear_removed(&mut self) {
        *self = PruneReport {
            images: std::mem::take(&mut self.images),
            usage_before: self.usage_before,
            usage_after: self.usage_after,
            keep: self.keep,
            free_before: self.free_before,
            exclusive: self.exclusive,
            rescanned: self.rescanned,
            waited: self.waited,
            synced: self.synced,
            unsealed: self.unsealed.take(),
            ..PruneReport::default()
        };
    }

    /// Counts one removed piece.
    fn count(&mut self, what: &What, bytes: u64) {
        match what {
            What::Blob(digest) => {
                self.blob_bytes += bytes;
                self.blobs.extend(digest.clone());
            }
            What::Snapshot(name) => {
                self.snapshot_bytes += bytes;
                self.snapshots.push(name.clone());
            }
            What::PartialWrite => {
                self.ingest_files += 1;
                self.ingest_bytes += bytes;
            }
            What::CacheRecord => {
                self.cache_records += 1;
                self.cache_record_bytes += bytes;
            }
            What::BuildDir => {
                self.build_dirs += 1;
                self.build_bytes += bytes;
            }
            What::CacheMount => {
                self.cache_mounts += 1;
                self.cache_mount_bytes += bytes;
            }
            What::Trash => {
                self.trash_entries += 1;
                self.trash_bytes += bytes;
            }
            What::VariantRecord => {
                self.variants += 1;
                self.variant_bytes += bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CacheRecord;
    use std::sync::mpsc;

    /// Writes `gc.log` dated `secs_ago` seconds before now (after, when
    /// negative).
    fn log_dated(store: &Store, secs_ago: i64) {
        let path = store.gc_log_path();
        std::fs::write(&path, "a collection\n").unwrap();
        let now = SystemTime::now();
        let when = if secs_ago >= 0 {
            now - Duration::from_secs(secs_ago.unsigned_abs())
        } else {
            now + Duration::from_secs(secs_ago.unsigned_abs())
        };
        File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(when))
            .unwrap();
    }

    fn store() -> (tempfile::TempDir, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        (tmp, store)
    }

    /// `gc_turn(pacing)` in a thread: whether it got a turn, and when it
    /// returned; fails the test if it takes a minute.
    fn turn_in_thread(store: &Store, pacing: Pacing) -> mpsc::Receiver<(bool, Instant)> {
        let root = store.root().to_path_buf();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let store = Store::open(root).unwrap();
            let turn = store.gc_turn(pacing).unwrap();
            tx.send((turn.is_some(), Instant::now())).unwrap();
            drop(turn);
        });
        rx
    }

    #[test]
    fn pacing_leaves_what_is_left_of_the_minute() {
        let now = SystemTime::now();
        let paced = Pacing::AFTER_BUILD;
        assert_eq!(paced.wait_after(None), Duration::ZERO);
        let wait = paced.wait_after(Some(now - Duration::from_secs(50)));
        assert!(
            (9.0..=10.0).contains(&wait.as_secs_f64()),
            "50 s after the last: {wait:?}"
        );
        assert_eq!(
            paced.wait_after(Some(now - Duration::from_secs(120))),
            Duration::ZERO
        );
        // Dated an hour ahead (a clock set back): a minute, no more.
        let ahead = Some(now + Duration::from_secs(3600));
        assert_eq!(paced.wait_after(ahead), Duration::from_secs(60));
        assert_eq!(Pacing::NONE.wait_after(ahead), Duration::ZERO);
    }

    /// Asserts that `gc_turn(pacing)` gets its turn, no sooner than
    /// `at_least` after it was asked.
    fn turn_comes_after(store: &Store, pacing: Pacing, at_least: Duration) {
        let asked = Instant::now();
        let (got, at) = turn_in_thread(store, pacing)
            .recv_timeout(Duration::from_secs(60))
            .expect("the collection never got its turn");
        assert!(got);
        assert!(at - asked >= at_least, "{:?}", at - asked);
    }

    #[test]
    fn a_log_dated_ahead_is_waited_for_once() {
        let (_tmp, store) = store();
        log_dated(&store, -3600);
        let pacing = Pacing {
            delay: Duration::ZERO,
            interval: Duration::from_millis(300),
        };
        turn_comes_after(&store, pacing, Duration::from_millis(300));
    }

    #[test]
    fn a_paced_collection_waits_its_delay_first() {
        let (_tmp, store) = store();
        let pacing = Pacing {
            delay: Duration::from_millis(300),
            interval: Duration::ZERO,
        };
        turn_comes_after(&store, pacing, Duration::from_millis(300));
    }

    #[test]
    fn the_stat_fallback_names_the_store_by_the_same_device_and_inode_as_statx() {
        let (_tmp, store) = store();
        let by_statx = StoreIdentity::of(&store).expect("the store is there");
        let by_stat = StoreIdentity::of_stat(store.root()).expect("the store is there");
        assert_eq!((by_stat.dev, by_stat.ino), (by_statx.dev, by_statx.ino));
        assert_eq!(by_stat.born, (0, 0));
        let gone = store.root().join("no-such-store");
        assert_eq!(StoreIdentity::of_stat(&gone), None);
    }

    #[test]
    fn a_store_removed_or_made_anew_while_one_waited_is_left_alone() {
        for remake in [false, true] {
            let (_tmp, store) = store();
            let root = store.root().to_path_buf();
            let (opened, ready) = mpsc::channel();
            let waiting = std::thread::spawn(move || {
                let store = Store::open(root).unwrap();
                opened.send(()).unwrap();
                let pacing = Pacing {
                    delay: Duration::from_secs(2),
                    interval: Duration::ZERO,
                };
                store.gc_turn(pacing).unwrap().is_some()
            });
            ready.recv().unwrap();
            // (It notes which directory the store is at once, then waits.)
            std::thread::sleep(Duration::from_millis(300));
            std::fs::remove_dir_all(store.root()).unwrap();
            if remake {
                Store::open(store.root()).unwrap();
            }
            let got = waiting.join().unwrap();
            assert!(!got, "collected a store removed or made anew: {remake}");
        }
    }

    #[test]
    fn while_one_waits_another_paced_one_leaves_and_an_unpaced_one_runs() {
        let (_tmp, store) = store();
        // A paced collection waits in the queue (this test holds its lock).
        let _queued = try_lock(&store.gc_queue_lock_path()).unwrap().unwrap();
        assert!(store.gc_turn(Pacing::AFTER_BUILD).unwrap().is_none());
        assert!(store.gc_turn(Pacing::NONE).unwrap().is_some());
    }

    #[test]
    fn a_collection_that_waits_is_seen_and_one_that_has_its_turn_is_not() {
        let (_tmp, store) = store();
        assert!(!store.collection_waiting().unwrap());
        // A collection is running (this test holds its lock): a paced one
        // started now waits in the queue until it ends.
        let running = lock(&store.gc_run_lock_path(), true).unwrap();
        let root = store.root().to_path_buf();
        let (started, start) = mpsc::channel();
        let (turn_tx, turn) = mpsc::channel();
        let (looked, look) = mpsc::channel::<()>();
        let waiting = std::thread::spawn(move || {
            let store = Store::open(root).unwrap();
            started.send(()).unwrap();
            // Paced (not `Pacing::NONE`), with nothing to wait for but the
            // running collection (there was none before).
            let pacing = Pacing {
                delay: Duration::ZERO,
                interval: Duration::from_secs(1),
            };
            let got = store.gc_turn(pacing).unwrap();
            turn_tx.send(got.is_some()).unwrap();
            // It keeps its turn until the test has looked.
            let _ = look.recv();
        });
        start.recv().unwrap();
        // (It takes the queue at once; the check below tries the lock, and
        // must not be what makes the waiting one leave.)
        std::thread::sleep(Duration::from_millis(200));
        assert!(store.collection_waiting().unwrap());
        drop(running);
        let got = turn
            .recv_timeout(Duration::from_secs(60))
            .expect("the collection never got its turn");
        assert!(got, "the waiting collection left");
        assert!(!store.collection_waiting().unwrap());
        looked.send(()).unwrap();
        waiting.join().unwrap();
    }

    #[test]
    fn the_minute_runs_from_a_collection_that_ended_while_one_waited() {
        let (_tmp, store) = store();
        log_dated(&store, 600);
        // A collection is running (this test holds its lock).
        let running = lock(&store.gc_run_lock_path(), true).unwrap();
        let pacing = Pacing {
            delay: Duration::ZERO,
            interval: Duration::from_secs(1),
        };
        let waiting = turn_in_thread(&store, pacing);
        std::thread::sleep(Duration::from_millis(200));
        // It ends now.
        std::fs::write(store.gc_log_path(), "the running one\n").unwrap();
        let ended = Instant::now();
        drop(running);
        let (got, at) = waiting
            .recv_timeout(Duration::from_secs(60))
            .expect("the collection never got its turn");
        assert!(got);
        // (File times come from the kernel's coarse clock: a tick behind.)
        assert!(
            at - ended >= Duration::from_millis(900),
            "{:?} after the last ended",
            at - ended
        );
    }

    /// Sets the mtime of the file or directory at `path`.
    fn set_mtime(path: &std::path::Path, when: SystemTime) {
        File::open(path)
            .and_then(|f| f.set_modified(when))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// A store with three build cache records last used an hour, a minute
    /// and a second ago, whose directories last changed a minute ago; the
    /// records' paths, least recently used first.
    fn store_with_records() -> (tempfile::TempDir, Store, Vec<PathBuf>) {
        let (tmp, store) = store();
        drop(store.lease().unwrap());
        let now = SystemTime::now();
        let mut paths = Vec::new();
        for (i, age) in [3600, 60, 1].into_iter().enumerate() {
            let key = Digest::of(format!("record {i}").as_bytes());
            store.cache_put(&key, &CacheRecord::default()).unwrap();
            let path = store.cache_path(&key);
            set_mtime(&path, now - Duration::from_secs(age));
            paths.push(path);
        }
        // Every directory (and `index.json`), deepest first.
        let mut dirs = vec![store.root().to_path_buf()];
        let mut i = 0;
        while let Some(dir) = dirs.get(i).cloned() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                }
            }
            i += 1;
        }
        for path in std::iter::once(&store.index_path()).chain(dirs.iter().rev()) {
            set_mtime(path, now - Duration::from_secs(60));
        }
        (tmp, store, paths)
    }

    /// Keeps `n` records' worth of build cache: with three, the policy
    /// chooses the least recently used ones.
    fn keep_records(paths: &[PathBuf], n: u64) -> Policy {
        use std::os::unix::fs::MetadataExt;
        let bytes = std::fs::metadata(&paths[0]).unwrap().blocks() * 512;
        Policy {
            keep_storage: Some(Space::Bytes(n * bytes)),
            ..Policy::all_of([Kind::Cache])
        }
    }

    /// Whether the file system the tests' stores are on is one where
    /// phase 2 may choose from phase 1's scan. Where it is not, the tests
    /// that need it fail, or, with `KILN_TEST_ALLOW_SKIP=1`, say so and
    /// stop, as the tests that need root do.
    fn reuse_possible(store: &Store) -> bool {
        if inventory::times_are_current(store) {
            return true;
        }
        kiln_testsupport::users::skip_or_fail(
            &format!(
                "needs its store on a local file system kiln knows, not {}",
                store.root().display()
            ),
            "set TMPDIR to a directory on ext4, xfs, btrfs, tmpfs, f2fs or overlayfs",
        );
        false
    }

    /// Phase 1, then `meanwhile`, then phase 2's choice: why it scanned
    /// again (if it did), and the paths it chose.
    fn phases(
        store: &Store,
        policy: &Policy,
        meanwhile: impl FnOnce(),
    ) -> (Option<Rescan>, Vec<PathBuf>) {
        let mut sizes = SizeCache::load_taking_notes(store);
        let look = store.first_look(&mut sizes).unwrap();
        meanwhile();
        second_look(store, look, policy, &mut sizes)
    }

    fn second_look(
        store: &Store,
        look: FirstLook,
        policy: &Policy,
        sizes: &mut SizeCache,
    ) -> (Option<Rescan>, Vec<PathBuf>) {
        let choice = store.choose_under_lock(look, policy, sizes).unwrap();
        let chosen = chosen_pieces(&choice.inv, &choice.sel)
            .map(|piece| piece.path.clone())
            .collect();
        (choice.rescan.map(|(why, _)| why), chosen)
    }

    #[test]
    fn phase_two_chooses_from_phase_one_when_nothing_changed() {
        let (_tmp, store, paths) = store_with_records();
        if !reuse_possible(&store) {
            return;
        }
        let policy = keep_records(&paths, 2);
        assert_eq!(
            phases(&store, &policy, || {}),
            (None, vec![paths[0].clone()])
        );
    }

    #[test]
    fn notes_taken_in_do_not_make_phase_two_scan_again() {
        let (_tmp, store, paths) = store_with_records();
        if !reuse_possible(&store) {
            return;
        }
        // A build's note, left for this collection to take in (of a
        // record's file, so that what there is to choose from stays the
        // same), in a store that has had notes before: their directory
        // was made long ago.
        let size = usage::measure_tree(&paths[2]).unwrap();
        store.note_tree_size(&paths[2], &size).unwrap();
        set_mtime(store.root(), SystemTime::now() - Duration::from_secs(60));
        let policy = keep_records(&paths, 2);
        assert_eq!(
            phases(&store, &policy, || {}),
            (None, vec![paths[0].clone()])
        );
    }

    #[test]
    fn trees_noted_while_the_collection_waited_are_not_walked_under_the_lock() {
        let (_tmp, store, paths) = store_with_records();
        let policy = keep_records(&paths, 2);
        let mut sizes = SizeCache::load_taking_notes(&store);
        let look = store.first_look(&mut sizes).unwrap();
        // While the collection waits for it, a build parks an upper dir
        // and notes its size, as `discard_step_dir` does.
        let parked = store.parked_dir().join("trash-1-2-x");
        std::fs::create_dir_all(parked.join("etc")).unwrap();
        std::fs::write(parked.join("etc/file"), b"parked").unwrap();
        let size = usage::measure_tree(&parked).unwrap();
        store.note_tree_size(&parked, &size).unwrap();
        let choice = store.choose_under_lock(look, &policy, &mut sizes).unwrap();
        let (_, rescan) = choice.rescan.expect("the parked dir makes it scan again");
        assert_eq!(rescan.walked, 0, "{rescan:?}");
        assert_eq!(sizes.walked, 0);
        // And counted at its size.
        let counted: Vec<u64> = choice
            .inv
            .items
            .iter()
            .flat_map(|item| &item.pieces)
            .filter(|piece| piece.path == parked)
            .map(|piece| piece.bytes)
            .collect();
        assert_eq!(counted, vec![size.own]);
        // Taken in, to be removed once the cache is saved.
        sizes.save(&store).unwrap();
        let notes = store.list_dir(&store.gc_notes_dir()).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn a_record_used_after_phase_one_is_not_taken_for_the_least_recently_used() {
        let (_tmp, store, paths) = store_with_records();
        if !reuse_possible(&store) {
            return;
        }
        let policy = keep_records(&paths, 2);
        // A build hits the oldest record while the collection waits.
        let used = || store.touch(&paths[0]).unwrap();
        let chose = phases(&store, &policy, used);
        assert_eq!(chose, (Some(Rescan::Changed), vec![paths[1].clone()]));
    }

    #[test]
    fn a_second_scan_reads_only_the_records_added_touched_or_replaced() {
        let (_tmp, store, paths) = store_with_records();
        let mut sizes = SizeCache::load(&store);
        let mut memo = ReadMemo::default();
        let records = |inv: &Inventory| {
            inv.items
                .iter()
                .filter(|item| item.kind == Kind::Cache && !item.garbage)
                .count()
        };
        let first = scan(&store, &mut sizes, &mut memo, false).unwrap();
        assert_eq!((records(&first), memo.reads), (3, 3));
        let again = scan(&store, &mut sizes, &mut memo, false).unwrap();
        assert_eq!((records(&again), memo.reads), (3, 3));
        // A cache hit touches one; a rebuild replaces another; a new one.
        store.touch(&paths[0]).unwrap();
        let replaced = Digest::of(b"record 1");
        assert_eq!(store.cache_path(&replaced), paths[1]);
        let naming = CacheRecord {
            chain_id: Some(Digest::of(b"a snapshot")),
            ..CacheRecord::default()
        };
        store.cache_put(&replaced, &naming).unwrap();
        store
            .cache_put(&Digest::of(b"record 3"), &CacheRecord::default())
            .unwrap();
        let after = scan(&store, &mut sizes, &mut memo, false).unwrap();
        assert_eq!((records(&after), memo.reads), (4, 6));
    }

    /// Writes a blob nothing names, dated (with the directories its
    /// phase-1 stamp covers) a minute ago; returns its digest.
    fn loose_blob(store: &Store) -> Digest {
        let bytes = b"a layer";
        let digest = Digest::of(bytes);
        std::fs::write(store.blob_path(&digest), bytes).unwrap();
        for dir in [store.blobs_dir(), store.root().to_path_buf()] {
            set_mtime(&dir, SystemTime::now() - Duration::from_secs(60));
        }
        digest
    }

    /// Puts a build cache record under `key` that names `blob`, as a
    /// build that made or used it does.
    fn name_in_a_record(store: &Store, key: &Digest, blob: &Digest) {
        let record = CacheRecord {
            blobs: vec![blob.clone()],
            ..CacheRecord::default()
        };
        store.cache_put(key, &record).unwrap();
    }

    #[test]
    fn a_record_replaced_while_the_collection_waits_is_read_again() {
        let (_tmp, store, records) = store_with_records();
        if !reuse_possible(&store) {
            return;
        }
        let digest = loose_blob(&store);
        // A rebuild of the step of an existing record replaces it with one
        // that names the blob, at the same path, while the collection
        // waits: phase 2 must not take phase 1's reading of that path.
        let key = Digest::of(b"record 2");
        assert_eq!(store.cache_path(&key), records[2]);
        let replace = || name_in_a_record(&store, &key, &digest);
        let policy = Policy::all_of([Kind::Unreferenced]);
        assert_eq!(
            phases(&store, &policy, replace),
            (Some(Rescan::Changed), vec![])
        );
    }

    #[test]
    fn a_blob_phase_one_saw_unreferenced_is_kept_once_a_record_names_it() {
        let (_tmp, store, _records) = store_with_records();
        if !reuse_possible(&store) {
            return;
        }
        let digest = loose_blob(&store);
        let policy = Policy::all_of([Kind::Unreferenced]);
        let unchanged = phases(&store, &policy, || {});
        assert_eq!(unchanged, (None, vec![store.blob_path(&digest)]));
        // A build's cache record names it while the collection waits.
        let key = Digest::of(b"the step that made it");
        let named = || name_in_a_record(&store, &key, &digest);
        assert_eq!(
            phases(&store, &policy, named),
            (Some(Rescan::Changed), vec![])
        );
    }

    #[test]
    fn a_store_changed_as_phase_one_began_is_scanned_again() {
        let (_tmp, store, paths) = store_with_records();
        let policy = keep_records(&paths, 2);
        // `cache/` dated no earlier than the probe: a change made after the
        // stamp could bear the same time.
        set_mtime(
            &store.cache_dir(),
            SystemTime::now() + Duration::from_secs(3600),
        );
        let chose = phases(&store, &policy, || {});
        assert_eq!(chose, (Some(Rescan::Untold), vec![paths[0].clone()]));
    }

    #[test]
    fn a_build_in_flight_as_phase_one_began_makes_phase_two_scan_again() {
        let (_tmp, store, paths) = store_with_records();
        let policy = keep_records(&paths, 2);
        let mut sizes = SizeCache::load(&store);
        let lease = store.lease().unwrap();
        let look = store.first_look(&mut sizes).unwrap();
        drop(lease);
        let chose = second_look(&store, look, &policy, &mut sizes);
        assert_eq!(chose, (Some(Rescan::Busy), vec![paths[0].clone()]));
    }

    #[test]
    fn scratch_phase_one_passed_over_makes_phase_two_scan_again() {
        let (_tmp, store, paths) = store_with_records();
        // A work dir whose name says no owner (an older kiln's): only a
        // scan under the lock takes it for a leftover.
        let unowned = store.builds_dir().join("build-of-an-older-kiln");
        std::fs::create_dir_all(&unowned).unwrap();
        let policy = Policy {
            types: [Kind::Cache, Kind::Scratch].into_iter().collect(),
            ..keep_records(&paths, 2)
        };
        let (why, chosen) = phases(&store, &policy, || {});
        assert_eq!(why, Some(Rescan::Deferred));
        assert!(chosen.contains(&unowned), "{chosen:?}");
    }
}
