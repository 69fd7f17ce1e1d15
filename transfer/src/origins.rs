//! Where each blob was pulled from, so that pushing it to another
//! repository of the same registry can be a cross-repository mount instead
//! of an upload (Docker keeps the same record).
//!
//! One small file per blob under `<store root>/origins/<hex>`, one
//! `registry/repository` per line. Losing or corrupting it costs only an
//! upload, so errors here are logged, never fatal.

use std::io::Write as _;
use std::path::PathBuf;

use kiln_layers::{Digest, Store};
use kiln_registry::Repository;

/// Most origins remembered per blob.
const MAX_ORIGINS: usize = 8;

/// The origins record of one store.
#[derive(Debug, Clone)]
pub struct BlobOrigins {
    dir: PathBuf,
}

impl BlobOrigins {
    pub fn new(store: &Store) -> BlobOrigins {
        BlobOrigins {
            dir: store.origins_dir(),
        }
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Repositories `digest` is known to be in.
    pub fn lookup(&self, digest: &Digest) -> Vec<Repository> {
        let Ok(text) = std::fs::read_to_string(self.path(digest)) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|line| {
                let (registry, name) = line.trim().split_once('/')?;
                (!registry.is_empty() && !name.is_empty()).then(|| Repository {
                    registry: registry.to_string(),
                    name: name.to_string(),
                })
            })
            .collect()
    }

    /// A repository of `target`'s registry, other than `target`, that has `digest`.
    pub fn mount_source(&self, digest: &Digest, target: &Repository) -> Option<Repository> {
        self.lookup(digest)
            .into_iter()
            .rev()
            .find(|r| r.registry == target.registry && r.name != target.name)
    }

    /// Notes that `repository` has `digest`.
    pub fn record(&self, digest: &Digest, repository: &Repository) {
        let known = self.lookup(digest);
        if known.contains(repository) {
            return;
        }
        let mut lines: Vec<String> = known.iter().map(|r| r.to_string()).collect();
        lines.push(repository.to_string());
        let keep = lines.len().saturating_sub(MAX_ORIGINS);
        let text = lines[keep..].join("\n") + "\n";
        // Write-then-rename so a concurrent reader never sees half a file.
        let result = std::fs::create_dir_all(&self.dir).and_then(|_| {
            let tmp = self
                .dir
                .join(format!(".{}.{}.tmp", digest.hex(), std::process::id()));
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            std::fs::rename(&tmp, self.path(digest))
        });
        if let Err(err) = result {
            tracing::warn!(%digest, %repository, error = %err, "cannot record the blob's origin");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(registry: &str, name: &str) -> Repository {
        Repository {
            registry: registry.into(),
            name: name.into(),
        }
    }

    #[test]
    fn records_and_picks_a_mount_source_on_the_same_registry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let origins = BlobOrigins::new(&store);
        let digest = Digest::of(b"layer");
        assert_eq!(origins.mount_source(&digest, &repo("r:5000", "a")), None);
        origins.record(&digest, &repo("r:5000", "a"));
        origins.record(&digest, &repo("other.io", "x/y"));
        origins.record(&digest, &repo("r:5000", "a"));
        assert_eq!(origins.lookup(&digest).len(), 2, "no duplicates");
        assert_eq!(
            origins.mount_source(&digest, &repo("r:5000", "b")),
            Some(repo("r:5000", "a"))
        );
        assert_eq!(
            origins.mount_source(&digest, &repo("r:5000", "a")),
            None,
            "not from itself"
        );
        assert_eq!(origins.mount_source(&digest, &repo("third.io", "a")), None);
        for i in 0..20 {
            origins.record(&digest, &repo("r:5000", &format!("n{i}")));
        }
        assert_eq!(origins.lookup(&digest).len(), MAX_ORIGINS);
        assert_eq!(
            origins.mount_source(&digest, &repo("r:5000", "z")),
            Some(repo("r:5000", "n19"))
        );
    }
}
