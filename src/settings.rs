//! Settings every command shares, resolved once from flags and environment.

use std::path::PathBuf;

/// Where the store lives. (`-v` is applied once, to logging, in `main`.)
#[derive(Debug, Clone)]
pub struct GlobalSettings {
    /// The store root (`--root`, `KILN_ROOT`).
    pub root: PathBuf,
}

impl GlobalSettings {
    pub fn resolve(root: Option<PathBuf>) -> Self {
        GlobalSettings {
            root: root.unwrap_or_else(default_root),
        }
    }
}

/// `/var/lib/kiln` for root; `$XDG_DATA_HOME/kiln` (or `~/.local/share/kiln`) otherwise.
fn default_root() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/kiln");
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(data).join("kiln");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/kiln"),
        None => PathBuf::from(".kiln"),
    }
}

/// `SOURCE_DATE_EPOCH` from the environment: the time reproducible outputs
/// are stamped with (seconds since the epoch).
pub fn source_date_epoch() -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
}
