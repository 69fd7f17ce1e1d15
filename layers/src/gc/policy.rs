//! What a collection may remove and how much it keeps, in BuildKit's
//! vocabulary (`keep-storage`, `keep-duration`, `min-free-space`,
//! `reserved-space`, filters by type), and the policy file
//! `<root>/gc.toml` that sets the automatic collection's policy.
//!
//! The file is a small, strict subset of TOML: one `[gc]` table of the keys
//! below, `#` comments; any other key, table or value is an error naming
//! the file and the line.
//!
//! ```toml
//! [gc]
//! enabled = true            # collect after every build
//! keep-storage = "10GB"     # or "10%" of the store's filesystem; "0": no limit
//!                           # (BuildKit's maxUsedSpace; max-used-space is the same key)
//! keep-duration = "720h"    # also remove what was not used for this long
//! min-free-space = "2GB"    # keep this much free (a build collects first)
//! reserved-space = "1GB"    # never collect below this; alone, the limit
//! types = ["cache", "cache-mount", "unreferenced", "scratch"]
//! ```
//!
//! Sizes are read as BuildKit and `docker buildx prune` read them
//! (`units.RAMInBytes`): `k`, `m`, `g`, `t` with or without `b`/`ib`,
//! are powers of 1024 (`"10GB"` is 10 GiB); a bare number is bytes.
//! Durations are Go's (`"48h"`, `"1h30m"`, `"90s"`) plus `d` for days; a
//! bare number is seconds.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};

/// What a collection may remove, by kind (`--filter type=`, `types`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Build cache records (a step's cached result) and the layers and
    /// snapshots only they keep.
    Cache,
    /// The contents of `RUN --mount=type=cache` mounts.
    CacheMount,
    /// Images in the store without a name (`<none>`), and the layers and
    /// snapshots only they keep.
    Dangling,
    /// Blobs and snapshots that nothing references, and the compressed
    /// forms of layers made for a push or an export.
    Unreferenced,
    /// Scratch and trash: work dirs of killed builds and runs, duplicate
    /// upper dirs parked by `--no-cache` reruns, partial downloads and
    /// writes, directories being deleted.
    Scratch,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 5] = [
        Kind::Cache,
        Kind::CacheMount,
        Kind::Dangling,
        Kind::Unreferenced,
        Kind::Scratch,
    ];

    /// The name `--filter type=` and `types` use.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cache => "cache",
            Kind::CacheMount => "cache-mount",
            Kind::Dangling => "dangling",
            Kind::Unreferenced => "unreferenced",
            Kind::Scratch => "scratch",
        }
    }

    /// Parses a [`Kind::name`], or the name of BuildKit's record type that
    /// is the same kind (`docker buildx prune --filter type=`):
    /// `exec.cachemount` and `regular`. BuildKit's other record types
    /// (`source.local`, `source.git.checkout`, `frontend`, `internal`)
    /// have no counterpart in kiln's store and are refused.
    pub fn parse(name: &str) -> std::result::Result<Kind, String> {
        match name {
            "exec.cachemount" => return Ok(Kind::CacheMount),
            "regular" => return Ok(Kind::Cache),
            _ => {}
        }
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown type {name:?} (one of {}; of BuildKit's record types, \
                     exec.cachemount and regular)",
                    names.join(", ")
                )
            })
    }
}

/// An amount of disk space: bytes, or a share of the size of the
/// filesystem the store is on (at most `cap` bytes when one is given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Bytes(u64),
    Percent { percent: u8, cap: Option<u64> },
}

impl Space {
    /// `"10GB"`, `"512m"`, `"1048576"`, `"10%"` (see the module docs).
    pub fn parse(text: &str) -> std::result::Result<Space, String> {
        let text = text.trim();
        if let Some(number) = text.strip_suffix('%') {
            return match number.trim().parse::<u8>() {
                Ok(percent) if percent <= 100 => Ok(Space::Percent { percent, cap: None }),
                _ => Err(format!("invalid percentage {text:?} (0% to 100%)")),
            };
        }
        parse_size(text).map(Space::Bytes)
    }

    /// The amount in bytes on a filesystem of `fs_total` bytes.
    pub fn bytes(self, fs_total: u64) -> u64 {
        match self {
            Space::Bytes(n) => n,
            Space::Percent { percent, cap } => {
                let share = (u128::from(fs_total) * u128::from(percent) / 100) as u64;
                cap.map_or(share, |cap| share.min(cap))
            }
        }
    }
}

/// Parses a size (see the module docs) into bytes.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?} (a number and a unit: 512MB, 10GB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("invalid size {text:?}: unknown unit {unit:?}")),
    };
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("invalid size {text:?}: too large"));
    }
    Ok(bytes as u64)
}

/// Parses a duration (see the module docs).
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let invalid = || format!("invalid duration {text:?} (like 48h, 30m, 1h30m, 7d, or seconds)");
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, tail) = rest.split_at(split);
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let secs = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            _ => return Err(invalid()),
        };
        total += value * secs;
        rest = tail;
    }
    if text.is_empty() || !total.is_finite() || total > u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(Duration::from_secs_f64(total))
}

/// The size and free space of the filesystem a policy is applied on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Disk {
    pub total: u64,
    /// Bytes an unprivileged writer may still use (`df`'s "Avail").
    pub free: u64,
}

impl Disk {
    /// The filesystem `path` is on.
    pub fn of(path: &Path) -> Result<Disk> {
        let stat = rustix::fs::statvfs(path).map_err(|e| Error::io("statfs", path, e.into()))?;
        Ok(Disk {
            total: stat.f_blocks.saturating_mul(stat.f_frsize),
            free: stat.f_bavail.saturating_mul(stat.f_frsize),
        })
    }
}

/// What a collection removes, of the kinds in `types`: everything that is
/// garbage (unreferenced, left by dead processes, trash); what was last
/// used longer ago than `keep_duration`; then, least recently used first,
/// the candidates (last used longer ago than `until`, when set) while the
/// collectable bytes exceed [`Policy::keep_bytes`], as BuildKit's prune.
/// Without a size limit nothing more goes.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub types: BTreeSet<Kind>,
    /// Keep at most this much collectable data (BuildKit's maxUsedSpace;
    /// gc.toml's keep-storage); `Some(Bytes(0))` keeps nothing.
    pub keep_storage: Option<Space>,
    /// Remove what was last used longer ago than this, whatever the size.
    pub keep_duration: Option<Duration>,
    /// Only what was last used longer ago than this is a candidate for the
    /// size limits (`--filter until=`).
    pub until: Option<Duration>,
    /// Remove until the filesystem has this much free.
    pub min_free_space: Option<Space>,
    /// The size limits never take the collectable data below this; alone,
    /// it is the limit (BuildKit's reservedSpace, and its older
    /// keepStorage).
    pub reserved_space: Option<Space>,
}

/// What the automatic collection keeps by default: 10% of the store's
/// filesystem, at most 10 GB (BuildKit's reservedSpace default, and its
/// keepStorage default before v0.17).
pub const DEFAULT_KEEP_STORAGE: Space = Space::Percent {
    percent: 10,
    cap: Some(10_000_000_000),
};

/// The free space the automatic collection keeps by default, collecting
/// before a build when there is less: 5% of the filesystem, at most 2 GB.
pub const DEFAULT_MIN_FREE_SPACE: Space = Space::Percent {
    percent: 5,
    cap: Some(2_000_000_000),
};

impl Policy {
    /// The kinds the automatic collection takes by default: all but
    /// dangling images (as Docker's builder GC leaves images alone).
    pub fn default_types() -> BTreeSet<Kind> {
        [
            Kind::Cache,
            Kind::CacheMount,
            Kind::Unreferenced,
            Kind::Scratch,
        ]
        .into_iter()
        .collect()
    }

    /// A policy that removes everything of `types` (keeps 0 bytes).
    pub fn all_of(types: impl IntoIterator<Item = Kind>) -> Policy {
        Policy {
            types: types.into_iter().collect(),
            keep_storage: Some(Space::Bytes(0)),
            keep_duration: None,
            until: None,
            min_free_space: None,
            reserved_space: None,
        }
    }

    /// How many bytes of collectable data to keep when `usage` bytes are
    /// collectable, on `disk`; `None` without a size limit (keep all).
    /// BuildKit's `calculateKeepBytes`: start from keep-storage (its
    /// maxUsedSpace), lower it to free min-free-space, never below
    /// reserved-space; reserved-space alone is the limit (as BuildKit's
    /// reservedSpace, and its old keepStorage, are).
    pub fn keep_bytes(&self, usage: u64, disk: Disk) -> Option<u64> {
        let bytes = |s: Space| s.bytes(disk.total);
        let mut keep = self.keep_storage.map(bytes);
        if let Some(min_free) = self.min_free_space.map(bytes) {
            let excess = min_free.saturating_sub(disk.free);
            if excess > 0 {
                let target = usage.saturating_sub(excess);
                keep = Some(keep.map_or(target, |k| k.min(target)));
            } else if keep.is_none() {
                // Only min-free-space is set, and there is enough free.
                keep = Some(usage);
            }
        }
        match self.reserved_space.map(bytes) {
            Some(reserved) => Some(keep.unwrap_or(0).max(reserved)),
            None => keep,
        }
    }
}

/// The policy file, `<root>/gc.toml` (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct GcConfig {
    /// Whether builds collect automatically (after they return, and before
    /// they start when free space is short).
    pub enabled: bool,
    pub policy: Policy,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            enabled: true,
            policy: Policy {
                types: Policy::default_types(),
                keep_storage: Some(DEFAULT_KEEP_STORAGE),
                keep_duration: None,
                until: None,
                min_free_space: Some(DEFAULT_MIN_FREE_SPACE),
                reserved_space: None,
            },
        }
    }
}

impl GcConfig {
    /// Reads `path`; the defaults when it does not exist.
    pub fn load(path: &Path) -> Result<GcConfig> {
        match std::fs::read_to_string(path) {
            Ok(text) => GcConfig::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(GcConfig::default()),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    /// Parses the text of the file `path` (named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<GcConfig> {
        let mut config = GcConfig::default();
        let mut in_gc = false;
        let mut seen = BTreeSet::new();
        for (n, raw) in text.lines().enumerate() {
            let error = |reason: String| Error::Config {
                path: path.to_path_buf(),
                line: n + 1,
                reason,
            };
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            if line.starts_with('[') {
                if line != "[gc]" {
                    return Err(error(format!("unknown table {line} (only [gc])")));
                }
                in_gc = true;
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(error(format!("expected key = value, found {line:?}")));
            };
            let key = key.trim();
            if !in_gc {
                return Err(error(format!("{key} outside the [gc] table")));
            }
            if !seen.insert(key.to_string()) {
                return Err(error(format!("{key} is set twice")));
            }
            if seen.contains("keep-storage") && seen.contains("max-used-space") {
                return Err(error(
                    "keep-storage and max-used-space are one limit: give one".into(),
                ));
            }
            config.set(key, value.trim()).map_err(error)?;
        }
        Ok(config)
    }

    fn set(&mut self, key: &str, value: &str) -> std::result::Result<(), String> {
        let policy = &mut self.policy;
        let space = |v: &str| -> std::result::Result<Option<Space>, String> {
            let space = match Value::parse(v)? {
                Value::Str(s) => Space::parse(&s)?,
                Value::Int(n) => Space::Bytes(n),
                other => return Err(format!("{key}: expected a size, found {other:?}")),
            };
            Ok((space != Space::Bytes(0)).then_some(space))
        };
        match key {
            "enabled" => match Value::parse(value)? {
                Value::Bool(b) => self.enabled = b,
                other => return Err(format!("enabled: expected true or false, found {other:?}")),
            },
            // BuildKit's maxUsedSpace is the same limit (`parse` refuses both).
            "keep-storage" | "max-used-space" => policy.keep_storage = space(value)?,
            "min-free-space" => policy.min_free_space = space(value)?,
            "reserved-space" => policy.reserved_space = space(value)?,
            "keep-duration" => {
                let duration = match Value::parse(value)? {
                    Value::Str(s) => parse_duration(&s)?,
                    Value::Int(n) => Duration::from_secs(n),
                    other => {
                        return Err(format!(
                            "keep-duration: expected a duration, found {other:?}"
                        ))
                    }
                };
                policy.keep_duration = (!duration.is_zero()).then_some(duration);
            }
            "types" => match Value::parse(value)? {
                // An enabled collection that may collect nothing, not even
                // dead runs' scratch: say so rather than do nothing.
                Value::List(names) if names.is_empty() => {
                    return Err("types = []: collects nothing; leave types out for the \
                                default kinds, or set enabled = false"
                        .to_string())
                }
                Value::List(names) => {
                    policy.types = names
                        .iter()
                        .map(|n| Kind::parse(n))
                        .collect::<std::result::Result<_, _>>()?;
                }
                other => return Err(format!("types: expected a list of names, found {other:?}")),
            },
            _ => {
                return Err(format!(
                    "unknown key {key:?} (enabled, keep-storage or max-used-space, \
                     keep-duration, min-free-space, reserved-space, types)"
                ))
            }
        }
        Ok(())
    }
}

/// The line without a `#` comment (a `#` inside a string is kept).
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

/// A value of the policy file.
#[derive(Debug, PartialEq)]
enum Value {
    Str(String),
    Int(u64),
    Bool(bool),
    List(Vec<String>),
}

impl Value {
    fn parse(text: &str) -> std::result::Result<Value, String> {
        let string = |s: &str| -> Option<String> {
            let inner = s.strip_prefix('"')?.strip_suffix('"')?;
            (!inner.contains(['"', '\\'])).then(|| inner.to_string())
        };
        if let Some(s) = string(text) {
            return Ok(Value::Str(s));
        }
        match text {
            "true" => return Ok(Value::Bool(true)),
            "false" => return Ok(Value::Bool(false)),
            _ => {}
        }
        if let Ok(n) = text.replace('_', "").parse::<u64>() {
            return Ok(Value::Int(n));
        }
        if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            let items: Vec<&str> = inner
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            return items
                .iter()
                .map(|item| string(item).ok_or_else(|| format!("not a string: {item}")))
                .collect::<std::result::Result<_, _>>()
                .map(Value::List);
        }
        Err(format!(
            "invalid value {text}: a \"string\", a number, true, false or [\"a\", \"b\"]"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn sizes_and_durations_read_as_buildkit_reads_them() {
        assert_eq!(parse_size("10GB"), Ok(10 * GIB));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("10 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(
            Space::parse("10%"),
            Ok(Space::Percent {
                percent: 10,
                cap: None
            })
        );
        assert!(Space::parse("120%").is_err());
        assert_eq!(DEFAULT_KEEP_STORAGE.bytes(50 * GIB), 5 * GIB);
        assert_eq!(DEFAULT_KEEP_STORAGE.bytes(1000 * GIB), 10_000_000_000);
        assert_eq!(parse_duration("48h"), Ok(Duration::from_secs(48 * 3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        for bad in ["", "h", "5y", "1h-2m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kinds_by_kiln_and_buildkit_names() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.name()), Ok(kind));
        }
        assert_eq!(Kind::parse("exec.cachemount"), Ok(Kind::CacheMount));
        assert_eq!(Kind::parse("regular"), Ok(Kind::Cache));
        for other in ["source.local", "internal", "blobs"] {
            assert!(Kind::parse(other).is_err(), "{other}");
        }
    }

    #[test]
    fn keep_bytes_follows_buildkit() {
        let disk = Disk {
            total: 100 * GIB,
            free: 10 * GIB,
        };
        let mut policy = Policy::all_of([Kind::Cache]);
        assert_eq!(policy.keep_bytes(50 * GIB, disk), Some(0));
        policy.keep_storage = None;
        assert_eq!(policy.keep_bytes(50 * GIB, disk), None);
        policy.keep_storage = Some(Space::Bytes(20 * GIB));
        assert_eq!(policy.keep_bytes(50 * GIB, disk), Some(20 * GIB));
        // 15 GiB free wanted, 10 free: 5 more must go.
        policy.min_free_space = Some(Space::Bytes(15 * GIB));
        assert_eq!(policy.keep_bytes(50 * GIB, disk), Some(20 * GIB));
        assert_eq!(policy.keep_bytes(22 * GIB, disk), Some(17 * GIB));
        // ... but never below the reserve.
        policy.reserved_space = Some(Space::Bytes(18 * GIB));
        assert_eq!(policy.keep_bytes(22 * GIB, disk), Some(18 * GIB));
        // min-free-space alone keeps everything while there is enough free.
        let only_free = Policy {
            keep_storage: None,
            min_free_space: Some(Space::Bytes(5 * GIB)),
            ..Policy::all_of([Kind::Cache])
        };
        assert_eq!(only_free.keep_bytes(30 * GIB, disk), Some(30 * GIB));
        // reserved-space alone is the limit.
        let only_reserve = Policy {
            keep_storage: None,
            reserved_space: Some(Space::Bytes(12 * GIB)),
            ..Policy::all_of([Kind::Cache])
        };
        assert_eq!(only_reserve.keep_bytes(30 * GIB, disk), Some(12 * GIB));
    }

    #[test]
    fn the_policy_file_is_parsed_strictly() {
        let path = Path::new("/store/gc.toml");
        let text = "# kiln's collection\n[gc]\nenabled = false # off\n\
                    keep-storage = \"2GB\"\nkeep-duration = \"48h\"\n\
                    min-free-space = \"10%\"\nreserved-space = 1048576\n\
                    types = [\"cache\", \"scratch\"]\n";
        let config = GcConfig::parse(text, path).unwrap();
        assert!(!config.enabled);
        assert_eq!(config.policy.keep_storage, Some(Space::Bytes(2 * GIB)));
        assert_eq!(
            config.policy.keep_duration,
            Some(Duration::from_secs(48 * 3600))
        );
        assert_eq!(
            config.policy.min_free_space,
            Some(Space::Percent {
                percent: 10,
                cap: None
            })
        );
        assert_eq!(config.policy.reserved_space, Some(Space::Bytes(1 << 20)));
        assert_eq!(
            config.policy.types,
            [Kind::Cache, Kind::Scratch].into_iter().collect()
        );
        assert_eq!(
            GcConfig::parse("[gc]\nkeep-storage = \"0\"\n", path)
                .unwrap()
                .policy
                .keep_storage,
            None
        );
        // BuildKit's name of the same limit.
        assert_eq!(
            GcConfig::parse("[gc]\nmax-used-space = \"3GB\"\n", path)
                .unwrap()
                .policy
                .keep_storage,
            Some(Space::Bytes(3 * GIB))
        );
        for (text, line, words) in [
            (
                "[gc]\n\nkeep-storag = \"1GB\"\n",
                3,
                "unknown key \"keep-storag\"",
            ),
            ("keep-storage = \"1GB\"\n", 1, "outside the [gc] table"),
            ("[worker]\n", 1, "unknown table"),
            ("[gc]\nenabled = yes\n", 2, "invalid value yes"),
            (
                "[gc]\ntypes = [\"cache\", \"blobs\"]\n",
                2,
                "unknown type \"blobs\"",
            ),
            (
                "[gc]\nkeep-storage = \"1GB\"\nkeep-storage = \"2GB\"\n",
                3,
                "set twice",
            ),
            (
                "[gc]\nkeep-storage = \"1GB\"\nmax-used-space = \"2GB\"\n",
                3,
                "one limit",
            ),
            ("[gc]\nkeep-duration = \"soon\"\n", 2, "invalid duration"),
            ("[gc]\ntypes = []\n", 2, "types = []: collects nothing"),
            ("[gc]\nkeep-storage\n", 2, "expected key = value"),
        ] {
            let err = GcConfig::parse(text, path).unwrap_err().to_string();
            let at = format!("/store/gc.toml:{line}: ");
            assert!(
                err.starts_with(&at) && err.contains(words),
                "{text:?}: {err}"
            );
        }
        assert_eq!(
            GcConfig::load(Path::new("/nonexistent/gc.toml")).unwrap(),
            GcConfig::default()
        );
    }
}
