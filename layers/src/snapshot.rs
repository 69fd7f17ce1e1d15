//! Snapshots: each layer unpacked once, under `snapshots/<chain-id hex>/`,
//! ready to be an overlay lower dir.
//!
//! A snapshot is unpacked into `snapshots/.tmp-…` and renamed into place
//! when complete (and its diff id verified), so a present snapshot is always
//! whole; two processes preparing the same one both succeed (the loser's
//! copy is dropped). Leftover `.tmp-` dirs are removed by `prune`.

use std::fs;
use std::io::Read;
use std::path::PathBuf;

use crate::compress::decompress;
use crate::digest::{Digest, HashingReader};
use crate::error::{io_at, Error, Result};
use crate::progress::{Outcome, ProgressReader, Reporter};
use crate::store::{unique_suffix, Image, Store};
use crate::unpack::{unpack, UnpackOptions, Whiteouts};

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

impl Store {
    /// Where the snapshot for `chain_id` lives (whether or not it is there).
    pub fn snapshot_path(&self, chain_id: &Digest) -> PathBuf {
        self.root().join("snapshots").join(chain_id.hex())
    }

    /// Unpacks every layer of `image` that has no snapshot yet and returns
    /// all of its snapshot dirs, bottom first. Hold a [`crate::Lease`]
    /// while using them.
    pub fn prepare_snapshots(
        &self,
        image: &Image,
        reporter: &dyn Reporter,
    ) -> Result<Vec<PathBuf>> {
        let layers = image.layers()?;
        let chains = image.chain_ids();
        let mut paths: Vec<PathBuf> = Vec::with_capacity(layers.len());
        for ((layer, diff_id), chain) in layers.iter().zip(&chains) {
            let path = self.snapshot_path(chain);
            if !path.is_dir() {
                let lowers: Vec<PathBuf> = paths.iter().rev().cloned().collect();
                self.unpack_snapshot(layer, diff_id, chain, lowers, reporter)?;
            }
            paths.push(path);
        }
        Ok(paths)
    }

    /// Unpacks one layer blob as the snapshot `chain_id` on top of `lowers`
    /// (top first), checking that its uncompressed bytes hash to `diff_id`.
    pub fn unpack_snapshot(
        &self,
        layer: &crate::oci::Descriptor,
        diff_id: &Digest,
        chain_id: &Digest,
        lowers: Vec<PathBuf>,
        reporter: &dyn Reporter,
    ) -> Result<PathBuf> {
        let final_path = self.snapshot_path(chain_id);
        let tmp = self
            .root()
            .join("snapshots")
            .join(format!(".tmp-{}", unique_suffix()));
        fs::create_dir(&tmp).map_err(io_at("create directory", &tmp))?;
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
                ..UnpackOptions::default()
            };
            unpack(&mut hashing as &mut dyn Read, &tmp, &options)?;
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
            match fs::rename(&tmp, &final_path) {
                Ok(()) => Ok(()),
                // Another process finished the same snapshot first.
                Err(e)
                    if final_path.is_dir()
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::ENOTEMPTY) | Some(libc::EEXIST)
                        ) =>
                {
                    let _ = fs::remove_dir_all(&tmp);
                    Ok(())
                }
                Err(e) => Err(Error::io("rename into place", &final_path, e)),
            }
        })();
        match &result {
            Ok(()) => reporter.done(&id, Outcome::Done),
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                reporter.done(&id, Outcome::Failed(e.to_string()));
            }
        }
        result.map(|()| final_path)
    }
}
