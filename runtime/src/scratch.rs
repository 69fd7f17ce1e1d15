//! The per-run scratch directories on a tmpfs, and the removal of those
//! that killed runs left behind.
//!
//! A run's small files go to `<base>/<pid>.<start>-<nanos>-<n>/` where the
//! base is `/run/kiln` (root), `$XDG_RUNTIME_DIR/kiln` or
//! `/dev/shm/kiln-<uid>`, a directory of mode 0700 owned by the user.
//! `<pid>.<start>` names the process that made it: its id and start time
//! (clock ticks after boot, field 22 of `/proc/<pid>/stat`, in the host's
//! clock: `kiln_owner`), so that a pid reused by another process after a
//! kill is not taken for the owner.
//! [`remove_dead_scratch`] (called by `kiln prune`) removes the directories
//! whose owner is gone; names of an older kiln (`<pid>-<nanos>-<n>`) count
//! as dead when no process has that pid.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The bases a run's scratch may live under, in the order they are tried,
/// each with the filesystem that must be a tmpfs for it to be used:
/// `(mount, base)`.
pub(crate) fn scratch_bases() -> Vec<(PathBuf, PathBuf)> {
    // In a rootless build's user namespace kiln is uid 0 there, yet the
    // user outside: its scratch is the user's, never root's.
    let euid = crate::userns::host_uid();
    let mut bases = Vec::new();
    if euid == 0 {
        bases.push((PathBuf::from("/run"), PathBuf::from("/run/kiln")));
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        bases.push((dir.clone(), dir.join("kiln")));
    }
    bases.push((
        PathBuf::from("/dev/shm"),
        PathBuf::from(format!("/dev/shm/kiln-{euid}")),
    ));
    bases
}

/// Whether `base` is a directory of this user's that no one else may
/// enter; one of this user's that is looser is made so (mode 0700).
pub(crate) fn private_base(base: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let euid = rustix::process::geteuid().as_raw();
    let Ok(meta) = std::fs::symlink_metadata(base) else {
        return false;
    };
    if !meta.is_dir() || meta.uid() != euid {
        return false;
    }
    meta.mode() & 0o077 == 0
        || std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o700)).is_ok()
}

/// This process's owner token, `<pid>.<start>` ([`kiln_owner::Owner`]).
pub(crate) fn owner_token() -> String {
    kiln_owner::Owner::current().token()
}

/// Whether the process that made the scratch dir `name` is still running.
fn owner_alive(name: &str) -> bool {
    let owner = name.split('-').next().unwrap_or_default();
    if let Some(owner) = kiln_owner::Owner::parse(owner) {
        return owner.is_alive();
    }
    match owner.parse::<u32>() {
        // An older kiln's `<pid>-<nanos>-<n>`: dead when no process has
        // that pid.
        Ok(pid) => pid == std::process::id() || kiln_owner::is_running(pid),
        // Not a name this module makes: left alone.
        Err(_) => true,
    }
}

/// Disk blocks a tree holds, in bytes (as `du` counts them).
fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut bytes = meta.blocks().saturating_mul(512);
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                bytes = bytes.saturating_add(disk_usage(&entry.path()));
            }
        }
    }
    bytes
}

/// What [`remove_dead_scratch`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemovedScratch {
    pub dirs: usize,
    pub bytes: u64,
}

/// Removes the run scratch directories (see the module docs) whose owner
/// process is gone, under every base this user's runs may use; a live
/// run's are never touched.
pub fn remove_dead_scratch() -> RemovedScratch {
    let mut removed = RemovedScratch::default();
    for (path, bytes) in dead_scratch() {
        crate::helper::remove_tree(&path);
        if std::fs::symlink_metadata(&path).is_err() {
            removed.dirs += 1;
            removed.bytes += bytes;
        }
    }
    removed
}

/// The run scratch directories [`remove_dead_scratch`] would remove now,
/// with the bytes each holds (as `du` counts them).
pub fn dead_scratch() -> Vec<(PathBuf, u64)> {
    let mut dead = Vec::new();
    for (_, base) in scratch_bases() {
        if !private_base(&base) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !owner_alive(&name) {
                let path = entry.path();
                let bytes = disk_usage(&path);
                dead.push((path, bytes));
            }
        }
    }
    dead
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_alive_dead_and_reused() {
        let me = owner_token();
        assert!(owner_alive(&format!("{me}-1-2")));
        // A live process (the test runner's parent) with another start
        // time: its pid was reused.
        let parent = rustix::process::Pid::as_raw(rustix::process::getppid()) as u32;
        let start = kiln_owner::Owner::of_pid(parent).unwrap().start;
        assert!(owner_alive(&format!("{parent}.{start}-1-2")));
        assert!(
            !owner_alive(&format!("{parent}.{}-1-2", start + 2)),
            "pid reused"
        );
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!owner_alive(&format!("{pid}.1-1-2")));
        assert!(!owner_alive(&format!("{pid}-1-2")), "an older kiln's name");
        assert!(owner_alive("not-ours"));
    }
}
