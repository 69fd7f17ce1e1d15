//! Whether a snapshot's files survived a crash: snapshots are stamped with
//! the boot that made them, and trusted across a reboot only when a
//! `syncfs` of the store ran after them.
//!
//! A snapshot is derived data: its files come from a layer blob or from a
//! build step's upper dir, whose blob is written (and fsynced) with it.
//! Its files are not fsynced one by one (a 20,000-file COPY would wait on
//! 20,000 of them), so an fsynced completion marker would not make them
//! durable either: after a power loss it could name a snapshot whose
//! files are empty, and every later build would use those (containerd's
//! overlay snapshots had this defect, containerd#5854). Instead:
//!
//! - Beside its completion marker (`complete`, which names the chain id
//!   as it always did), a snapshot has `stamp`: the boot
//!   (`/proc/sys/kernel/random/boot_id`) and the `CLOCK_BOOTTIME` at which
//!   it was whole ([`Stamp`]; the host's clock: a time namespace's offset
//!   is taken off). Neither, nor the rename into place, is fsynced: until
//!   the machine goes down, every process reads the same page cache,
//!   whatever reached the disk.
//! - [`Store::seal`] notes the time, `syncfs`es the store's filesystem and
//!   records in `sealed` that everything of this boot up to that time is
//!   on disk. `kiln prune` seals first ([`Store::collect`]); so does the
//!   automatic collection after a build, when this boot's last seal is
//!   older than [`crate::gc::SEAL_INTERVAL`] (its `syncfs` slows the builds
//!   that run meanwhile). The collection a build makes first for
//!   `min-free-space` does not seal.
//! - After a reboot, a snapshot of an earlier boot counts as complete only
//!   when that boot's seal is no earlier than its stamp. One that is not
//!   covered is moved to the trash and unpacked again from its blob, as
//!   an incomplete one is.
//!
//! For one process, trust never shrinks within a boot, so that what it
//! uses it does not later take for incomplete: a snapshot of this boot is
//! trusted; the seals of earlier boots are never dropped and never change;
//! what it cannot judge (no boot id, `sealed` or a stamp unreadable) it
//! trusts. Two processes may still judge a snapshot of an earlier boot
//! differently (an older kiln, which trusts every stamp, or one that
//! cannot read `sealed` beside one that can), and the one that distrusts
//! it moves it to the trash even if the other is using it.
//!
//! A snapshot without a stamp counts as it always did: one of an older
//! kiln (whose marker was fsynced, its files not), or one made where the
//! boot id cannot be read, which is made durable before its marker
//! (`syncfs`, then the marker and the directories fsynced).
//!
//! Not covered: `syncfs` reports writeback errors only since the store
//! was opened for it (and none before Linux 5.8), and on some network and
//! FUSE filesystems flushes nothing; a store copied to another disk is as
//! durable as the copy; clones of one VM image restored from memory share
//! a boot id.

use std::sync::OnceLock;

use crate::error::{io_at, Result};
use crate::owner::boottime_offset_ns;
use crate::store::{write_atomic, Store};

/// When a snapshot was whole: a boot and a time on its `CLOCK_BOOTTIME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub boot: String,
    /// Nanoseconds since that boot.
    pub at: u128,
}

impl Stamp {
    /// Now, in this boot; `None` where the boot id cannot be read. The
    /// time is the host's: a time namespace's boottime offset (which
    /// would put this process's clock ahead of or behind other kilns') is
    /// taken off.
    pub fn now() -> Option<Stamp> {
        let boot = current_boot()?;
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        let here = i128::from(ts.tv_sec) * NANOS + i128::from(ts.tv_nsec);
        let at = u128::try_from(here - boottime_offset_ns()).ok()?;
        Some(Stamp {
            boot: boot.to_string(),
            at,
        })
    }

    /// The stamp file's line: `boot <id> <nanoseconds>`.
    pub(crate) fn line(&self) -> String {
        format!("boot {} {}", self.boot, self.at)
    }

    /// Parses a stamp line; `None` when it is not one.
    pub(crate) fn parse(line: &str) -> Option<Stamp> {
        let mut words = line.split(' ');
        let (Some("boot"), Some(boot), Some(at), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return None;
        };
        let valid_id = !boot.is_empty() && boot.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        Some(Stamp {
            boot: valid_id.then(|| boot.to_string())?,
            at: at.parse().ok()?,
        })
    }
}

const NANOS: i128 = 1_000_000_000;

/// This boot's id, read once per process.
fn current_boot() -> Option<&'static str> {
    static BOOT: OnceLock<Option<String>> = OnceLock::new();
    BOOT.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let id = text.trim();
        (!id.is_empty()).then(|| id.to_string())
    })
    .as_deref()
}

/// `sealed`: boot id → the latest time of that boot known to be on disk,
/// one `<id> <nanoseconds>` line each, oldest boot first. `Ok(empty)` when
/// there is none.
fn read_seals(store: &Store) -> std::io::Result<Vec<(String, u128)>> {
    let text = match std::fs::read_to_string(store.sealed_path()) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|line| {
            let (boot, at) = line.split_once(' ')?;
            Some((boot.to_string(), at.parse().ok()?))
        })
        .collect())
}

/// Whether a snapshot stamped `stamp` can be trusted, and if not why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trust {
    Trusted,
    /// Its boot has no seal.
    NoSeal,
    /// Its boot's last seal came before it was made.
    SealedBefore,
}

impl Store {
    /// Whether the files of a snapshot stamped `stamp` can be trusted: it
    /// was made in this boot, or a seal of its boot came after it (or this
    /// process cannot tell: see the module docs).
    pub(crate) fn trust(&self, stamp: &Stamp) -> Trust {
        let Some(boot) = current_boot() else {
            return Trust::Trusted;
        };
        if boot == stamp.boot {
            return Trust::Trusted;
        }
        let seals = match read_seals(self) {
            Ok(seals) => seals,
            Err(e) => {
                tracing::warn!(
                    "{}: {e}; snapshots of earlier boots are trusted",
                    self.sealed_path().display()
                );
                return Trust::Trusted;
            }
        };
        match seals.iter().find(|(b, _)| *b == stamp.boot) {
            None => Trust::NoSeal,
            Some(&(_, sealed)) if stamp.at <= sealed => Trust::Trusted,
            Some(_) => Trust::SealedBefore,
        }
    }

    /// How long ago this boot's last seal started; `None` when this boot
    /// has none (or it cannot be told).
    pub fn last_seal_age(&self) -> Option<std::time::Duration> {
        let now = Stamp::now()?;
        let seals = read_seals(self).ok()?;
        let (_, at) = seals.iter().find(|(boot, _)| *boot == now.boot)?;
        let nanos = now.at.checked_sub(*at)?;
        Some(std::time::Duration::from_nanos(u64::try_from(nanos).ok()?))
    }

    /// Makes everything the store's filesystem holds so far durable
    /// (`syncfs`) and records in `sealed` that snapshots of this boot
    /// stamped before it started survive a crash. Returns the seal's time;
    /// `None` where the boot id cannot be read (then nothing is stamped).
    pub fn seal(&self) -> Result<Option<Stamp>> {
        let Some(now) = Stamp::now() else {
            return Ok(None);
        };
        sync_filesystem(&self.snapshots_dir())?;
        // A seal that started later (a concurrent one) is kept; the other
        // boots' seals stay as they are.
        let mut seals = read_seals(self).map_err(io_at("read", &self.sealed_path()))?;
        let later = seals
            .iter()
            .filter(|(boot, _)| *boot == now.boot)
            .map(|&(_, at)| at)
            .fold(now.at, u128::max);
        seals.retain(|(boot, _)| *boot != now.boot);
        seals.push((now.boot.clone(), later));
        let text: String = seals
            .iter()
            .map(|(boot, at)| format!("{boot} {at}\n"))
            .collect();
        write_atomic(&self.sealed_path(), text.as_bytes())?;
        Ok(Some(now))
    }
}

/// `syncfs` of the filesystem that holds `dir`.
pub(crate) fn sync_filesystem(dir: &std::path::Path) -> Result<()> {
    let file = std::fs::File::open(dir).map_err(io_at("open", dir))?;
    rustix::fs::syncfs(&file).map_err(|e| crate::error::Error::io("syncfs", dir, e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_line_reads_back_and_nothing_else_does() {
        let stamp = Stamp {
            boot: "0c1d2e3f-aaaa-4bbb-8ccc-0123456789ab".into(),
            at: 1_234_567_890_123,
        };
        assert_eq!(Stamp::parse(&stamp.line()), Some(stamp));
        for bad in [
            "",
            "boot",
            "boot  12",
            "boot abc",
            "boot abc 12 more",
            "boot ab/c 12",
            "boot abc -1",
            "sha256:abc",
        ] {
            assert_eq!(Stamp::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn this_machine_has_a_boot_id_and_its_clock_goes_forward() {
        let first = Stamp::now().expect("/proc/sys/kernel/random/boot_id");
        let second = Stamp::now().expect("boot id");
        assert_eq!(first.boot, second.boot);
        assert!(second.at >= first.at && first.at > 0);
    }
}
