//! Duplicate upper dirs of `--no-cache` reruns, parked instead of deleted
//! (see [`discard_step_dir`]).

use std::path::Path;

use kiln_layers::Store;

use super::*;

const TRASH_PREFIX: &str = "trash-";

/// What a step knows of its upper dir should it be left over (a duplicate
/// of a snapshot already there) and parked ([`discard_step_dir`]).
#[derive(Debug, Default)]
pub(super) struct Leftover {
    /// Its disk use, estimated from its layer: put in the parked name.
    pub bytes: u64,
    /// Its size, taken as its layer was written.
    pub tree: Option<kiln_layers::gc::TreeSize>,
}

/// Removes a step's work dir. An upper dir still there is a duplicate of a
/// snapshot that already existed (a `--no-cache` rerun that produced the
/// same chain id): it is renamed into `parked/trash-<secs>-<bytes>-…`
/// instead of being deleted now. Deleting a 20,000-file tree frees 20,000
/// inodes at once, and on ext4 without a journal every file created while
/// their inode table blocks stay cached then skips the freed inodes one by
/// one (`recently_deleted()`): a rerun of a 20,000-file COPY went from 4.6 s
/// to 12 s and more, growing with each rerun. So, like BuildKit's cache GC
/// with its keep-storage limit, kiln keeps these parked dirs as collectable
/// data (kind `scratch`, last used when parked): the store's collection
/// (`kiln_layers::gc`, after the build has returned) removes them, least
/// recently used first, once the store holds more than its policy keeps,
/// and `kiln prune` removes them all. `known.bytes` estimates the tree's
/// disk use, so that many small files count for their blocks and inodes;
/// `known.tree`, the size the layer's tar was written from, is noted for
/// the collection, which then need not walk the parked dir. The rest of
/// the work dir is abandoned to the trash (a rename): the build itself
/// deletes nothing.
pub(super) fn discard_step_dir(store: &Store, dir: &Path, upper: &Path, known: &Leftover) {
    let leftover = std::fs::read_dir(upper)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    if leftover {
        let trash = store.parked_dir().join(unique_name(&format!(
            "{TRASH_PREFIX}{}-{}",
            now_secs(),
            known.bytes
        )));
        match std::fs::rename(upper, &trash) {
            Err(e) => tracing::debug!("parking {} in the trash: {e}", upper.display()),
            Ok(()) => {
                if let Some(tree) = &known.tree {
                    if let Err(e) = store.note_tree_size(&trash, tree) {
                        tracing::debug!("{e}");
                    }
                }
            }
        }
    }
    if let Err(e) = store.abandon(dir, "step") {
        tracing::debug!("{e}");
    }
}

#[cfg(test)]
mod trash_tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn duplicate_uppers_are_parked_with_their_time_and_size() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let builds = root.path().join("builds");
        // A step dir whose upper was not renamed into a snapshot.
        let dir = builds.join("build-1").join("step-1");
        let upper = dir.join("upper");
        std::fs::create_dir_all(upper.join("ctx")).unwrap();
        std::fs::write(upper.join("ctx/f"), "data").unwrap();
        discard_step_dir(
            &store,
            &dir,
            &upper,
            &Leftover {
                bytes: 4,
                tree: None,
            },
        );
        assert!(!dir.exists());
        let parked: Vec<PathBuf> = std::fs::read_dir(store.parked_dir())
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
        // The name says when and how much (what the collection goes by).
        let name = parked[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let fields: Vec<&str> = name[TRASH_PREFIX.len()..].split('-').collect();
        assert!((fields[0].parse::<i64>().unwrap() - now_secs()).abs() < 60);
        assert_eq!(fields[1], "4");
    }

    #[test]
    fn an_empty_or_renamed_upper_is_not_parked() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let builds = root.path().join("builds");
        let dir = builds.join("build-1").join("step-1");
        let upper = dir.join("upper");
        std::fs::create_dir_all(&upper).unwrap();
        discard_step_dir(&store, &dir, &upper, &Leftover::default());
        let dir2 = builds.join("build-1").join("step-2");
        std::fs::create_dir_all(&dir2).unwrap();
        discard_step_dir(&store, &dir2, &dir2.join("upper"), &Leftover::default());
        assert!(!dir.exists() && !dir2.exists());
        let names: Vec<String> = std::fs::read_dir(&builds)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["build-1".to_string()]);
        assert_eq!(std::fs::read_dir(store.parked_dir()).unwrap().count(), 0);
        // The step dirs wait in the trash for the collection.
        assert_eq!(
            std::fs::read_dir(root.path().join("trash"))
                .unwrap()
                .count(),
            2
        );
    }
}
