//! Snapshots: each layer unpacked once, ready to be an overlay lower dir.
//!
//! A snapshot is `snapshots/<chain-id hex>/`, holding `fs/` (the lower dir)
//! and `complete`, a marker naming the chain id, written after `fs/` is
//! whole, and before it `stamp`, the boot and time that made it (nothing
//! is fsynced: a snapshot of an earlier boot counts only when a seal
//! covers its stamp, `crate::seal`). Both are made in `builds/snapshot-<owner>-…/`
//! (`Store::unfinished_snapshot_path`) and the directory is renamed into
//! place (never over an existing one), so a
//! snapshot appears whole, marker included, or not at all; deletion renames
//! it into the trash first (`crate::cleanup`), so it vanishes at once.
//! A snapshot is used only when its marker says it is complete: a directory
//! without one (a snapshot of an older kiln, half deleted by one) is moved
//! to the trash and unpacked again. Two processes preparing the same
//! snapshot both succeed (the loser's copy is abandoned to the trash).
//! Leftover unfinished snapshots are removed by `prune`, or by the next
//! build once their owner is gone (an older kiln's, `snapshots/.tmp-*`, by
//! the next collection).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::compress::decompress;
use crate::digest::{Digest, HashingReader};
use crate::error::{io_at, Error, Result};
use crate::progress::{Outcome, ProgressReader, Reporter};
use crate::seal::{sync_filesystem, Stamp, Trust};
use crate::store::{fsync_dir, Image, Store};
use crate::unpack::{unpack, UnpackOptions, Whiteouts};

/// The lower dir inside a snapshot's directory.
const FS_DIR: &str = "fs";
/// The marker written last: the chain id.
const COMPLETE: &str = "complete";
/// The boot and time that made the snapshot (`crate::seal`), written
/// before the marker.
const STAMP: &str = "stamp";

/// The first 512 bytes of the small file at `path` (a marker, a stamp)
/// as text; bytes that are not text come back empty (after a crash the
/// file may hold anything).
fn read_small(path: &Path) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|f| f.take(512).read_to_end(&mut bytes))?;
    Ok(String::from_utf8(bytes).unwrap_or_default())
}

/// Creates the file at `path` holding `text`, fsynced when `sync`.
fn write_file(path: &Path, text: &str, sync: bool) -> Result<()> {
    let mut file = File::create(path).map_err(io_at("create", path))?;
    file.write_all(text.as_bytes())
        .and_then(|()| if sync { file.sync_all() } else { Ok(()) })
        .map_err(io_at("write", path))
}

/// Overlay's `lowerdir=` value for snapshots given bottom first (overlay
/// wants the top first, separated by ':').
pub fn overlay_lowerdir(snapshots_bottom_first: &[PathBuf]) -> String {
    snapshots_bottom_first
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Renames `from` to `to` unless `to` exists (even as an empty directory,
/// which a plain rename would replace).
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .map_err(std::io::Error::from)
}

impl Store {
    /// The directory of the snapshot for `chain_id`: its `fs/` and marker.
    fn snapshot_dir(&self, chain_id: &Digest) -> PathBuf {
        self.snapshots_dir().join(chain_id.hex())
    }

    /// The lower dir of the snapshot for `chain_id` (whether or not it is
    /// there; see [`Store::has_snapshot`]).
    pub fn snapshot_path(&self, chain_id: &Digest) -> PathBuf {
        self.snapshot_dir(chain_id).join(FS_DIR)
    }

    /// Whether the snapshot for `chain_id` is there and complete: its
    /// marker, written last, names it, and its stamp, when it has one, is
    /// of this boot or sealed ([`crate::seal`]).
    pub fn has_snapshot(&self, chain_id: &Digest) -> bool {
        self.snapshot_state(chain_id).is_ok()
    }

    /// `Ok` when the snapshot for `chain_id` is complete; else why not.
    fn snapshot_state(&self, chain_id: &Digest) -> std::result::Result<(), &'static str> {
        let dir = self.snapshot_dir(chain_id);
        let marker = read_small(&dir.join(COMPLETE)).map_err(|_| "no completion marker")?;
        if marker.trim_end() != chain_id.as_str() {
            return Err("its completion marker names another chain");
        }
        let stamp = dir.join(STAMP);
        match read_small(&stamp) {
            // No stamp: an older kiln's, or one made durable at once.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // One this process cannot read now, it cannot judge.
            Err(e) => tracing::warn!("{}: {e}; its snapshot is trusted", stamp.display()),
            Ok(text) => match Stamp::parse(text.trim_end()).map(|s| self.trust(&s)) {
                Some(Trust::Trusted) => {}
                Some(Trust::NoSeal) => return Err("made in an earlier boot that has no seal"),
                Some(Trust::SealedBefore) => {
                    return Err("made in an earlier boot after that boot's last seal")
                }
                None => return Err("its stamp is unreadable"),
            },
        }
        if !self.snapshot_path(chain_id).is_dir() {
            return Err("no fs directory");
        }
        Ok(())
    }

    /// Notes the size of the snapshot for `chain_id`, made by
    /// [`Store::adopt_snapshot`] from a directory whose size a build took
    /// as it wrote its layer ([`crate::diff::LayerBlob::tree`]), so that
    /// the collection need not walk it ([`Store::note_tree_size`]).
    pub fn note_snapshot_size(&self, chain_id: &Digest, fs: &crate::gc::TreeSize) -> Result<()> {
        self.note_tree_around(&self.snapshot_dir(chain_id), FS_DIR, fs)
    }

    /// Notes that files of the snapshot for `chain_id` gained hard links
    /// outside it (incremental COPY linked them into a new snapshot): its
    /// directory's times are set to now, which changes its change time, so
    /// its cached size, which counted those files as its own, is measured
    /// again (`crate::gc`).
    pub fn mark_snapshot_linked(&self, chain_id: &Digest) -> Result<()> {
        let dir = self.snapshot_dir(chain_id);
        File::open(&dir)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()))
            .map_err(io_at("set the times of", &dir))
    }

    /// Moves what is at the snapshot's place to the trash, unless it is
    /// complete. Under `snapshots.lock`, so that two processes never both
    /// find it incomplete and one then trashes what the other has just
    /// put in its place (which another process may already be using).
    fn discard_incomplete_snapshot(&self, chain_id: &Digest) -> Result<()> {
        let dir = self.snapshot_dir(chain_id);
        if fs::symlink_metadata(&dir).is_err() {
            return Ok(());
        }
        let _lock = crate::store::lock(&self.snapshots_lock_path(), true)?;
        let Err(why) = self.snapshot_state(chain_id) else {
            return Ok(());
        };
        tracing::warn!(
            "{}: incomplete snapshot ({why}); unpacking it again",
            dir.display()
        );
        // Renamed away; the collection deletes it.
        self.abandon(&dir, "snapshot")?;
        Ok(())
    }

    /// Writes the stamp and then the marker into `tmp` (a snapshot being
    /// made) and renames `tmp` into place: nothing is fsynced, the stamp
    /// says whether it survived a crash ([`crate::seal`]). Where the boot
    /// cannot be told, the snapshot is made durable instead: `syncfs`, no
    /// stamp, the marker and both directories fsynced. `Ok(false)`: a
    /// complete snapshot was already there (`tmp` is left to the caller).
    fn place_snapshot(&self, tmp: &Path, chain_id: &Digest) -> Result<bool> {
        let stamp = Stamp::now();
        let durable = stamp.is_none();
        match &stamp {
            Some(stamp) => write_file(&tmp.join(STAMP), &format!("{}\n", stamp.line()), false)?,
            None => sync_filesystem(tmp)?,
        }
        write_file(&tmp.join(COMPLETE), &format!("{chain_id}\n"), durable)?;
        if durable {
            fsync_dir(tmp)?;
        }
        let final_dir = self.snapshot_dir(chain_id);
        for _ in 0..3 {
            match rename_noreplace(tmp, &final_dir) {
                Ok(()) => {
                    if durable {
                        fsync_dir(&self.snapshots_dir())?;
                    }
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if self.has_snapshot(chain_id) {
                        // Another process finished the same snapshot first.
                        return Ok(false);
                    }
                    self.discard_incomplete_snapshot(chain_id)?;
                }
                Err(e) => return Err(Error::io("rename into place", &final_dir, e)),
            }
        }
        Err(Error::io(
            "rename into place",
            &final_dir,
            std::io::Error::other("an incomplete snapshot keeps reappearing there"),
        ))
    }

    /// Makes the directory `dir` (on the store's filesystem, e.g. a build
    /// step's upper dir with overlay whiteouts) the snapshot for
    /// `chain_id`, by renaming it: `Ok(true)` when `dir` is the snapshot
    /// now. When a complete snapshot is already there, `dir` is left as it
    /// is and `Ok(false)` returned; when another process placed one while
    /// `dir` was being made ready, `dir` is abandoned to the trash and
    /// `Ok(false)` returned too. Whether or not this fails, `dir` is
    /// either left as it was or gone.
    pub fn adopt_snapshot(&self, dir: &Path, chain_id: &Digest) -> Result<bool> {
        if self.has_snapshot(chain_id) {
            return Ok(false);
        }
        let tmp = self.unfinished_snapshot_path();
        fs::create_dir(&tmp).map_err(io_at("create directory", &tmp))?;
        let fs_dir = tmp.join(FS_DIR);
        if let Err(e) = fs::rename(dir, &fs_dir) {
            let _ = fs::remove_dir(&tmp);
            return Err(Error::io("rename", dir, e));
        }
        let placed = self.place_snapshot(&tmp, chain_id);
        if !matches!(placed, Ok(true)) {
            let _ = self.abandon(&tmp, "snapshot");
        }
        placed
    }

    /// Unpacks every layer of `image` that has no complete snapshot yet and
    /// returns all of its snapshot dirs, bottom first. Hold a
    /// [`crate::Lease`] while using them.
    pub fn prepare_snapshots(
        &self,
        image: &Image,
        reporter: &dyn Reporter,
    ) -> Result<Vec<PathBuf>> {
        let layers = image.layers()?;
        let chains = image.chain_ids();
        let mut paths: Vec<PathBuf> = Vec::with_capacity(layers.len());
        for ((layer, diff_id), chain) in layers.iter().zip(&chains) {
            if !self.has_snapshot(chain) {
                let lowers: Vec<PathBuf> = paths.iter().rev().cloned().collect();
                self.unpack_snapshot(layer, diff_id, chain, lowers, reporter)?;
            }
            paths.push(self.snapshot_path(chain));
        }
        Ok(paths)
    }

    /// Unpacks one layer blob as the snapshot `chain_id` on top of `lowers`
    /// (top first), checking that its uncompressed bytes hash to `diff_id`.
    /// An incomplete snapshot in its place is replaced. Returns the lower
    /// dir.
    pub fn unpack_snapshot(
        &self,
        layer: &crate::oci::Descriptor,
        diff_id: &Digest,
        chain_id: &Digest,
        lowers: Vec<PathBuf>,
        reporter: &dyn Reporter,
    ) -> Result<PathBuf> {
        let final_path = self.snapshot_path(chain_id);
        self.discard_incomplete_snapshot(chain_id)?;
        let tmp = self.unfinished_snapshot_path();
        let fs_dir = tmp.join(FS_DIR);
        fs::create_dir_all(&fs_dir).map_err(io_at("create directory", &fs_dir))?;
        let id = layer.digest.to_string();
        reporter.start(&id, "unpacking", Some(layer.size));
        let result = (|| {
            let blob = self.open_blob(&layer.digest)?;
            let counted = ProgressReader::new(blob, reporter, id.clone());
            let decompressed = decompress(counted).map_err(|source| Error::Tar {
                layer: layer.digest.to_string(),
                source,
            })?;
            let mut hashing = HashingReader::new(decompressed);
            let options = UnpackOptions {
                whiteouts: Whiteouts::Overlay,
                lowers,
                // The errors say "layer <label>" themselves.
                label: layer.digest.to_string(),
                write_back: true,
                ..UnpackOptions::default()
            };
            unpack(&mut hashing as &mut dyn Read, &fs_dir, &options)?;
            let (actual, _) = hashing.drain_and_finish().map_err(|source| Error::Tar {
                layer: layer.digest.to_string(),
                source,
            })?;
            if &actual != diff_id {
                return Err(Error::BadLayer {
                    layer: layer.digest.to_string(),
                    reason: format!(
                        "uncompressed content has digest {actual}, config says {diff_id}"
                    ),
                });
            }
            self.place_snapshot(&tmp, chain_id)
        })();
        match &result {
            Ok(true) => reporter.done(&id, Outcome::Done),
            Ok(false) => {
                let _ = self.abandon(&tmp, "snapshot");
                reporter.done(&id, Outcome::Done);
            }
            Err(e) => {
                let _ = self.abandon(&tmp, "snapshot");
                reporter.done(&id, Outcome::Failed(e.to_string()));
            }
        }
        result.map(|_| final_path)
    }
}
