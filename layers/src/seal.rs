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
//! - The marker names the boot (`/proc/sys/kernel/random/boot_id`) and
//!   the `CLOCK_BOOTTIME` at which the snapshot was whole ([`Stamp`]; the
//!   host's clock: a time namespace's offset is taken off). It
//!   and the rename into place need no fsync: within one boot the page
//!   cache is what every process reads, whatever reached the disk.
//! - [`Store::seal`] notes the time, `syncfs`es the store's filesystem and
//!   records in `sealed` that everything of this boot up to that time is
//!   on disk. The collection seals at the start of each run
//!   ([`Store::collect`]), off the build's path.
//! - After a reboot, a snapshot of an earlier boot counts as complete only
//!   when `sealed` covers its stamp. One that is not covered is moved to
//!   the trash and unpacked again from its blob, as an incomplete one is.
//!
//! A marker without a stamp (written by an older kiln, or where the boot id
//! cannot be read, when the marker and directories are fsynced as before)
//! counts as it always did.

use std::sync::OnceLock;

use crate::error::{io_at, Result};
use crate::store::{write_atomic, Store};

/// How many boots `sealed` remembers (the most recent).
const BOOTS_KEPT: usize = 16;

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
        let at = u128::try_from(here - boottime_offset()).unwrap_or(0);
        Some(Stamp {
            boot: boot.to_string(),
            at,
        })
    }

    /// The marker's stamp line: `boot <id> <nanoseconds>`.
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

/// This process's time namespace's boottime offset in nanoseconds
/// (`/proc/self/timens_offsets`; 0 without time namespaces), read once.
fn boottime_offset() -> i128 {
    static OFFSET: OnceLock<i128> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/self/timens_offsets").unwrap_or_default();
        parse_boottime_offset(&text).unwrap_or(0)
    })
}

/// The `boottime <secs> <nanos>` line of `timens_offsets`, in nanoseconds.
fn parse_boottime_offset(text: &str) -> Option<i128> {
    let line = text.lines().find(|l| l.starts_with("boottime"))?;
    let mut words = line.split_whitespace().skip(1);
    let secs: i128 = words.next()?.parse().ok()?;
    let nanos: i128 = words.next()?.parse().ok()?;
    Some(secs * NANOS + nanos)
}

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
/// one `<id> <nanoseconds>` line each, oldest boot first.
fn read_seals(store: &Store) -> Vec<(String, u128)> {
    let Ok(text) = std::fs::read_to_string(store.sealed_path()) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let (boot, at) = line.split_once(' ')?;
            Some((boot.to_string(), at.parse().ok()?))
        })
        .collect()
}

impl Store {
    /// Whether the files of a snapshot stamped `stamp` can be trusted: it
    /// was made in this boot, or a seal of its boot came after it.
    pub(crate) fn is_sealed(&self, stamp: &Stamp) -> bool {
        current_boot() == Some(stamp.boot.as_str())
            || read_seals(self)
                .iter()
                .any(|(boot, sealed)| *boot == stamp.boot && stamp.at <= *sealed)
    }

    /// Makes everything the store's filesystem holds so far durable
    /// (`syncfs`) and records in `sealed` that snapshots of this boot
    /// stamped before it started survive a crash. Returns the seal's time;
    /// `None` where the boot id cannot be read (then nothing is stamped).
    pub fn seal(&self) -> Result<Option<Stamp>> {
        let Some(now) = Stamp::now() else {
            return Ok(None);
        };
        let root = std::fs::File::open(self.root()).map_err(io_at("open", self.root()))?;
        rustix::fs::syncfs(&root)
            .map_err(|e| crate::error::Error::io("syncfs", self.root(), e.into()))?;
        // A seal that started later (a concurrent one) is kept.
        let mut seals = read_seals(self);
        let later = seals
            .iter()
            .filter(|(boot, _)| *boot == now.boot)
            .map(|&(_, at)| at)
            .fold(now.at, u128::max);
        seals.retain(|(boot, _)| *boot != now.boot);
        seals.push((now.boot.clone(), later));
        let skip = seals.len().saturating_sub(BOOTS_KEPT);
        let text: String = seals[skip..]
            .iter()
            .map(|(boot, at)| format!("{boot} {at}\n"))
            .collect();
        write_atomic(&self.sealed_path(), text.as_bytes())?;
        Ok(Some(now))
    }
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
    fn a_time_namespace_offset_is_read_in_nanoseconds() {
        let text = "monotonic           0         0\nboottime         -100       250\n";
        assert_eq!(parse_boottime_offset(text), Some(-100 * NANOS + 250));
        assert_eq!(parse_boottime_offset(""), None);
    }

    #[test]
    fn this_machine_has_a_boot_id_and_its_clock_goes_forward() {
        let first = Stamp::now().expect("/proc/sys/kernel/random/boot_id");
        let second = Stamp::now().expect("boot id");
        assert_eq!(first.boot, second.boot);
        assert!(second.at >= first.at && first.at > 0);
    }
}
