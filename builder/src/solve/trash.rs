//! Duplicate upper dirs of `--no-cache` reruns, parked instead of deleted
//! (see [`discard_step_dir`]).

use std::path::{Path, PathBuf};

use kiln_layers::Store;

use super::*;

/// How many bytes of duplicate upper dirs the store's trash (see
/// [`discard_step_dir`]) keeps; a build's end removes the oldest beyond it.
const TRASH_KEEP_BYTES: u64 = 1 << 30;

const TRASH_PREFIX: &str = "trash-";

/// Removes a step's work dir. An upper dir still there is a duplicate of a
/// snapshot that already existed (a `--no-cache` rerun that produced the
/// same chain id): it is renamed into `builds/trash-<secs>-<bytes>-…`
/// instead of being deleted now. Deleting a 20,000-file tree frees 20,000
/// inodes at once, and on ext4 without a journal every file created while
/// their inode table blocks stay cached then skips the freed inodes one by
/// one (`recently_deleted()`): a rerun of a 20,000-file COPY went from 4.6 s
/// to 12 s and more, growing with each rerun. So, like BuildKit's cache GC
/// with its keep-storage limit, kiln keeps the trash until it exceeds
/// [`TRASH_KEEP_BYTES`] (checked at the end of a build) or `kiln prune`
/// runs (it lives under `builds/`). `bytes` estimates its disk use, so
/// that many small files count for their blocks and inodes.
pub(super) fn discard_step_dir(store: &Store, dir: &Path, upper: &Path, bytes: u64) {
    let leftover = std::fs::read_dir(upper)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    if leftover {
        let trash = store.builds_dir().join(unique_name(&format!(
            "{TRASH_PREFIX}{}-{bytes}",
            now_secs()
        )));
        if let Err(e) = std::fs::rename(upper, &trash) {
            tracing::debug!("parking {} in the trash: {e}", upper.display());
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Removes the oldest trash entries (see [`discard_step_dir`]) until the
/// rest holds at most [`TRASH_KEEP_BYTES`]; entries whose name carries no
/// time and size are left to `kiln prune`.
pub(super) fn empty_old_trash(store: &Store) {
    let builds = store.builds_dir();
    let Ok(entries) = std::fs::read_dir(&builds) else {
        return;
    };
    let mut parked: Vec<(i64, Option<u64>, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let fields: Vec<&str> = name.strip_prefix(TRASH_PREFIX)?.split('-').collect();
            let secs = fields.first()?.parse::<i64>().ok()?;
            // `<secs>-<bytes>-<pid>-<n>-<nanos>`; an older kiln's names had
            // no size (`<secs>-<pid>-<n>-<nanos>`): those just go.
            let bytes = match fields.len() {
                5 => Some(fields[1].parse::<u64>().ok()?),
                4 => None,
                _ => return None,
            };
            Some((secs, bytes, entry.path()))
        })
        .collect();
    parked.sort_by_key(|p| std::cmp::Reverse(p.0));
    let mut kept: u64 = 0;
    for (_, bytes, path) in parked {
        let over = match bytes {
            Some(bytes) => {
                kept = kept.saturating_add(bytes);
                kept > TRASH_KEEP_BYTES
            }
            None => true,
        };
        if over {
            // A concurrent build may be removing the same entry: ignore.
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

#[cfg(test)]
mod trash_tests {
    use super::*;

    #[test]
    fn duplicate_uppers_are_parked_then_the_oldest_beyond_the_budget_removed() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let builds = root.path().join("builds");
        // A step dir whose upper was not renamed into a snapshot.
        let dir = builds.join("build-1").join("step-1");
        let upper = dir.join("upper");
        std::fs::create_dir_all(upper.join("ctx")).unwrap();
        std::fs::write(upper.join("ctx/f"), "data").unwrap();
        discard_step_dir(&store, &dir, &upper, 4);
        assert!(!dir.exists());
        let parked: Vec<PathBuf> = std::fs::read_dir(&builds)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(TRASH_PREFIX)
            })
            .collect();
        assert_eq!(parked.len(), 1, "{parked:?}");
        assert_eq!(
            std::fs::read_to_string(parked[0].join("ctx/f")).unwrap(),
            "data"
        );

        // Within the budget everything stays. Beyond it the oldest go
        // first, whatever the order of the names; other entries (a running
        // build's work dir, a name without a size) are never touched.
        let now = now_secs();
        let half = TRASH_KEEP_BYTES / 2;
        let entry = |age: i64, bytes: u64| {
            let p = builds.join(format!("{TRASH_PREFIX}{}-{bytes}-1-2-3", now - age));
            std::fs::create_dir_all(p.join("d")).unwrap();
            p
        };
        let older = entry(100, half);
        empty_old_trash(&store);
        assert!(parked[0].is_dir() && older.is_dir());
        let oldest = entry(900, half);
        let middle = entry(500, half);
        let other = builds.join("build-2");
        let no_size = builds.join(format!("{TRASH_PREFIX}{}", now - 1000));
        // An older kiln's name (no size): removed first.
        let older_kiln = builds.join(format!("{TRASH_PREFIX}{}-77-1-2", now - 1));
        std::fs::create_dir_all(&other).unwrap();
        std::fs::create_dir_all(&no_size).unwrap();
        std::fs::create_dir_all(&older_kiln).unwrap();
        empty_old_trash(&store);
        assert!(parked[0].is_dir() && older.is_dir());
        assert!(!middle.exists() && !oldest.exists());
        assert!(other.is_dir() && no_size.is_dir());
        assert!(!older_kiln.exists());
    }

    #[test]
    fn an_empty_or_renamed_upper_leaves_no_trash() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let builds = root.path().join("builds");
        let dir = builds.join("build-1").join("step-1");
        let upper = dir.join("upper");
        std::fs::create_dir_all(&upper).unwrap();
        discard_step_dir(&store, &dir, &upper, 0);
        let dir2 = builds.join("build-1").join("step-2");
        std::fs::create_dir_all(&dir2).unwrap();
        discard_step_dir(&store, &dir2, &dir2.join("upper"), 0);
        assert!(!dir.exists() && !dir2.exists());
        let names: Vec<String> = std::fs::read_dir(&builds)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["build-1".to_string()]);
    }
}
