//! Which items a collection removes, given the store's [`Inventory`] and a
//! [`Policy`]: a pure function, so that a dry run, `kiln system df` and
//! the collection itself agree.
//!
//! The collectable bytes ("usage", what keep-storage limits) are, as
//! BuildKit counts its cache records whatever a prune's filter, the own
//! files of every item but untagged images (unless `dangling` is among the
//! policy's kinds) plus the blobs and snapshots those items hold that no
//! tagged image pins and no untagged image left alone holds: an untagged
//! image is no build cache, keeps what it holds as a tagged image does,
//! and is not counted, or a limit it could never meet would hold it. Of the policy's kinds, garbage goes first, then what was
//! last used longer ago than keep-duration, whatever the limits. Then the
//! candidates (the other items, last used before now minus `until` when
//! that is set) go least recently used first while the usage exceeds
//! [`Policy::keep_bytes`] (with no size limit, none). Removing an item frees
//! its own files and each blob or snapshot no remaining item or tagged
//! image holds.

use std::time::SystemTime;

use crate::gc::inventory::{Inventory, Item};
use crate::gc::policy::{Disk, Kind, Policy};

/// What a collection removes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Selection {
    /// Items removed, in the order chosen.
    pub items: Vec<usize>,
    /// Blobs and snapshots that nothing kept holds any more.
    pub freed: Vec<usize>,
    /// Collectable bytes before and after.
    pub usage_before: u64,
    pub usage_after: u64,
    /// The bytes the limits keep, when there are limits.
    pub keep: Option<u64>,
}

fn own_bytes(inv: &Inventory, item: &Item) -> u64 {
    item.pieces.iter().map(|p| inv.weight(p)).sum()
}

struct Selecting<'a> {
    inv: &'a Inventory,
    refs: Vec<usize>,
    taken: Vec<bool>,
    usage: u64,
    sel: Selection,
}

impl Selecting<'_> {
    fn take(&mut self, index: usize) {
        let item = &self.inv.items[index];
        self.usage = self.usage.saturating_sub(own_bytes(self.inv, item));
        for &r in &item.holds {
            self.refs[r] -= 1;
            let resource = &self.inv.resources[r];
            if self.refs[r] == 0 && !resource.pinned {
                self.usage = self.usage.saturating_sub(self.inv.weight(&resource.piece));
                self.sel.freed.push(r);
            }
        }
        self.sel.items.push(index);
        self.taken[index] = true;
    }
}

/// Chooses what `policy` removes from `inv` at `now`, on `disk`.
pub(crate) fn select(inv: &Inventory, policy: &Policy, now: SystemTime, disk: Disk) -> Selection {
    let wanted = |item: &Item| policy.types.contains(&item.kind);
    let counted = |item: &Item| item.kind != Kind::Dangling || wanted(item);
    let mut refs = vec![0usize; inv.resources.len()];
    // Held by an untagged image left alone: kept, as if pinned.
    let mut kept = vec![false; inv.resources.len()];
    for item in &inv.items {
        for &r in &item.holds {
            refs[r] += 1;
            kept[r] |= !counted(item);
        }
    }
    let usage = inv
        .items
        .iter()
        .filter(|i| counted(i))
        .map(|i| own_bytes(inv, i))
        .sum::<u64>()
        + inv
            .resources
            .iter()
            .zip(refs.iter().zip(&kept))
            .filter(|(r, (n, kept))| !r.pinned && **n > 0 && !**kept)
            .map(|(r, _)| inv.weight(&r.piece))
            .sum::<u64>();
    let mut s = Selecting {
        inv,
        refs,
        taken: vec![false; inv.items.len()],
        usage,
        sel: Selection {
            usage_before: usage,
            ..Selection::default()
        },
    };
    let before = |limit: Option<std::time::Duration>, item: &Item| {
        limit.is_some_and(|d| now.checked_sub(d).is_some_and(|t| item.last_used.at < t))
    };
    for (i, item) in inv.items.iter().enumerate() {
        if wanted(item) && (item.garbage || before(policy.keep_duration, item)) {
            s.take(i);
        }
    }
    let disk = Disk {
        free: disk.free.saturating_add(usage - s.usage),
        ..disk
    };
    let keep = policy.keep_bytes(s.usage, disk);
    let mut candidates: Vec<usize> = (0..inv.items.len())
        .filter(|&i| {
            let item = &inv.items[i];
            wanted(item) && !s.taken[i] && (policy.until.is_none() || before(policy.until, item))
        })
        .collect();
    candidates.sort_by_key(|&i| (inv.items[i].last_used.at, i));
    for i in candidates {
        match keep {
            Some(k) if s.usage > k => s.take(i),
            _ => break,
        }
    }
    s.sel.usage_after = s.usage;
    s.sel.keep = keep;
    s.sel
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::gc::inventory::{Area, LastUsed, Piece, Resource, What};
    use crate::gc::policy::Space;

    fn piece(bytes: u64) -> Piece {
        Piece {
            path: PathBuf::from("/x"),
            bytes,
            area: Area::Other,
            what: What::CacheRecord,
            shared: Vec::new(),
        }
    }

    fn item(kind: Kind, age_secs: u64, own: u64, holds: Vec<usize>, garbage: bool) -> Item {
        Item {
            kind,
            garbage,
            last_used: LastUsed::fixed(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - age_secs),
            ),
            pieces: vec![piece(own)],
            holds,
            image: None,
        }
    }

    /// Records 0..4 (oldest first), a snapshot shared by 1 and 3, one a
    /// tagged image pins, a cache mount and garbage.
    fn store() -> Inventory {
        let resource = |bytes, pinned| Resource {
            piece: piece(bytes),
            pinned,
        };
        Inventory {
            segments: Default::default(),
            deferred: false,
            shared_overlap: 0,
            items: vec![
                item(Kind::Cache, 500, 1, vec![0], false),
                item(Kind::Cache, 400, 1, vec![1], false),
                item(Kind::Cache, 300, 1, vec![2], false),
                item(Kind::Cache, 200, 1, vec![1], false),
                item(Kind::CacheMount, 450, 50, vec![], false),
                item(Kind::Unreferenced, 0, 7, vec![], true),
            ],
            resources: vec![
                resource(100, false),
                resource(100, false),
                resource(100, true),
            ],
            areas: Default::default(),
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    const DISK: Disk = Disk {
        total: 1 << 40,
        free: 1 << 39,
    };

    #[test]
    fn least_recently_used_first_until_under_keep_storage() {
        let inv = store();
        let mut policy = Policy::all_of([Kind::Cache, Kind::Unreferenced]);
        policy.keep_storage = Some(Space::Bytes(152));
        let sel = select(&inv, &policy, now(), DISK);
        // 4 records (4) + 2 unpinned snapshots (200) + mount (50) + garbage
        // (7): every kind counts, as BuildKit counts every record whatever
        // a prune's filter, though only the policy's are taken.
        assert_eq!(sel.usage_before, 261);
        // Garbage, then record 0 (frees its snapshot); record 1 frees only
        // itself (record 3 shares its snapshot): 261-7-101-1 = 152.
        assert_eq!(sel.items, vec![5, 0, 1]);
        assert_eq!(sel.freed, vec![0]);
        assert_eq!(sel.usage_after, 152);
        assert_eq!(sel.keep, Some(152));
    }

    /// An untagged image the policy leaves alone (no `dangling` among its
    /// kinds) is no build cache: it keeps what it holds, as a tagged image
    /// would, and neither that nor its own bytes count, so a limit it
    /// alone exceeds is met, and nothing it holds is freed; with
    /// `dangling`, it counts and goes first (the oldest). Kinds the policy
    /// does not take still count (the cache mount, the garbage).
    #[test]
    fn an_untagged_image_left_alone_is_not_counted_against_the_limit() {
        let mut inv = store();
        inv.resources.push(Resource {
            piece: piece(1000),
            pinned: false,
        });
        // Holds the new snapshot and record 2's.
        inv.items
            .push(item(Kind::Dangling, 900, 3, vec![3, 2], false));
        let mut policy = Policy::all_of([Kind::Cache]);
        policy.keep_storage = Some(Space::Bytes(160));
        let sel = select(&inv, &policy, now(), DISK);
        // Records (4), mount (50), garbage (7), the two unpinned snapshots
        // no untagged image holds (200).
        assert_eq!(sel.usage_before, 261);
        assert_eq!(sel.items, vec![0]);
        assert_eq!(sel.usage_after, 160);
        assert!(!sel.freed.contains(&3));
        let mut with_images = Policy::all_of([Kind::Cache, Kind::Dangling]);
        with_images.keep_storage = Some(Space::Bytes(261));
        let sel = select(&inv, &with_images, now(), DISK);
        assert_eq!(sel.usage_before, 1264);
        assert_eq!(sel.items, vec![6]);
        assert_eq!(sel.freed, vec![3]);
        assert_eq!(sel.usage_after, 261);
    }

    #[test]
    fn kinds_durations_and_no_limits() {
        let inv = store();
        // Keep nothing: every item of the kinds; the pinned snapshot stays.
        let sel = select(&inv, &Policy::all_of([Kind::Cache]), now(), DISK);
        assert_eq!(sel.items, vec![0, 1, 2, 3]);
        assert_eq!(sel.freed, vec![0, 1]);
        // Candidates only among what was unused for longer than 350 s.
        let mut old = Policy::all_of([Kind::Cache, Kind::CacheMount]);
        old.until = Some(Duration::from_secs(350));
        assert_eq!(select(&inv, &old, now(), DISK).items, vec![0, 4, 1]);
        // No size limit: only garbage and what expired goes.
        let mut expiring = Policy::all_of(Kind::ALL);
        expiring.keep_storage = None;
        assert_eq!(select(&inv, &expiring, now(), DISK).items, vec![5]);
        expiring.keep_duration = Some(Duration::from_secs(350));
        assert_eq!(select(&inv, &expiring, now(), DISK).items, vec![0, 1, 4, 5]);
        // Under the limit: garbage only.
        let mut roomy = Policy::all_of(Kind::ALL);
        roomy.keep_storage = Some(Space::Bytes(1 << 30));
        assert_eq!(select(&inv, &roomy, now(), DISK).items, vec![5]);
    }

    #[test]
    fn min_free_space_frees_what_is_missing_but_keeps_the_reserve() {
        let inv = store();
        let disk = Disk {
            total: 1000,
            free: 100,
        };
        let mut policy = Policy::all_of([Kind::Cache]);
        policy.keep_storage = None;
        policy.min_free_space = Some(Space::Bytes(200));
        // 100 bytes short: record 0 (101) is enough.
        assert_eq!(select(&inv, &policy, now(), disk).items, vec![0]);
        policy.reserved_space = Some(Space::Bytes(1000));
        assert!(select(&inv, &policy, now(), disk).items.is_empty());
    }
}
