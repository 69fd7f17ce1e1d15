//! ADD's local archive handling: a source is an archive when, decompressed
//! by sniffing its first bytes (gzip, bzip2, xz, zstd, else plain:
//! [`kiln_layers::compress::decompress_archive`]), it starts with a valid
//! tar header — the test BuildKit applies. It is then extracted into the
//! destination directory, never outside it, by kiln-layers' one tar
//! extractor; this module only says how paths resolve in a step's rootfs.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use kiln_layers::unpack::{ExtractOptions, ExtractTarget, NoPlaceForEntry};

use crate::context::EntryKind;
use crate::copy::{mkdir_all, CopyError};
use crate::rootfs::{join, resolve, resolve_under, LayeredRootfs, SourceMeta, SourceTree};
use crate::users::Owner;

/// Opens a file decompressed, as a stream (kiln-layers' sniffer and
/// decoders: gzip, bzip2, xz, zstd, else plain).
fn open_decompressed(path: &Path) -> std::io::Result<Box<dyn Read + Send>> {
    kiln_layers::compress::decompress_archive(File::open(path)?)
}

/// Whether ADD would extract this file.
pub fn is_archive(path: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    let Ok(reader) = open_decompressed(path) else {
        return false;
    };
    let mut archive = tar::Archive::new(reader);
    let Ok(mut entries) = archive.entries() else {
        return false;
    };
    matches!(entries.next(), Some(Ok(_)))
}

/// Extracts `archive` into the directory `dest_path` (created if missing)
/// of `dest` through kiln-layers' extractor ([`kiln_layers::unpack::extract`],
/// whose module docs say what is refused). Owners come from the archive
/// unless `chown` is given; modes, mtimes and xattrs come from the archive.
/// Paths resolve as a chroot into the destination would resolve them:
/// symlinks are followed, never out of it ([`AddTarget`]).
pub fn unpack(
    archive_path: &Path,
    dest: &LayeredRootfs,
    dest_path: &str,
    chown: Option<Owner>,
) -> Result<(), CopyError> {
    let archive_name = archive_path.display().to_string();
    let dest_rel = resolve(dest, dest_path, true)?;
    mkdir_all(dest, &dest_rel, 0o755, chown, None)?;
    dest.copy_up_parents(&join(&dest_rel, "x"))?;
    let reader = open_decompressed(archive_path).map_err(|e| CopyError::Archive {
        archive: archive_name.clone(),
        message: e.to_string(),
    })?;
    let target = AddTarget {
        dest,
        base: dest_rel.clone(),
    };
    let options = ExtractOptions {
        owner: chown.map(|o| (o.uid, o.gid)),
        preserve_owners: true,
        label: archive_name,
    };
    kiln_layers::unpack::extract(
        reader,
        dest.upper(),
        &components(&dest_rel),
        &target,
        &options,
    )
    .map_err(|e| match e {
        kiln_layers::Error::ArchiveBreakout {
            archive,
            entry,
            into,
        } => CopyError::ArchiveBreakout {
            archive,
            entry,
            dest: into,
        },
        other => CopyError::Extract(other),
    })?;
    Ok(())
}

/// A clean relative path as components.
fn components(rel: &str) -> Vec<OsString> {
    rel.split('/')
        .filter(|c| !c.is_empty())
        .map(OsString::from)
        .collect()
}

/// Components as a clean relative path (the views' paths are UTF-8).
fn rel_path(comps: &[OsString]) -> String {
    let parts: Vec<_> = comps.iter().map(|c| c.to_string_lossy()).collect();
    parts.join("/")
}

fn io_error(e: impl Into<CopyError>) -> std::io::Error {
    std::io::Error::other(e.into())
}

/// Where ADD extracts: the directory `base` of a step's rootfs (the image's
/// layers under the step's upper dir), resolved as a chroot into `base`.
/// Directories an archive needs but does not list are created 0755 and
/// root's, `--chown` or not, as BuildKit's untar creates them (`base`
/// itself, made before, takes `--chown` as COPY's destination does);
/// existing ones, and hardlink targets, are copied up into the upper dir
/// first.
pub struct AddTarget<'a> {
    pub dest: &'a LayeredRootfs,
    /// Relative to the rootfs' root.
    pub base: String,
}

impl AddTarget<'_> {
    /// Refuses a directory path that goes through a symlink whose target
    /// is not a directory: BuildKit's untar makes only the directories
    /// missing at their own names (Go's `MkdirAll`, which fails with
    /// "file exists" on such a link) and opens entries through the link,
    /// which fails where its target is missing. COPY, by contrast, makes
    /// the link's missing target (continuity's `MkdirAll` in scope).
    fn refuse_dangling_links(&self, dir: &[OsString]) -> std::io::Result<()> {
        let mut parent = self.base.clone();
        for (i, name) in dir.iter().enumerate() {
            let name = name.to_string_lossy();
            match self.dest.stat(&join(&parent, &name)).map_err(io_error)? {
                // Missing here: made here, with what follows.
                None => return Ok(()),
                Some(SourceMeta {
                    kind: EntryKind::Symlink(target),
                    ..
                }) => {
                    let resolved =
                        resolve_under(self.dest, &self.base, &rel_path(&dir[..=i]), true)
                            .map_err(io_error)?;
                    let is_dir = (self.dest.stat(&resolved).map_err(io_error)?)
                        .is_some_and(|meta| meta.is_dir());
                    if !is_dir {
                        return Err(std::io::Error::other(NoPlaceForEntry(format!(
                            "{} is a symlink to {target}, which is not a directory in the \
                             destination; an archive's entries are not made through it",
                            rel_path(&dir[..=i])
                        ))));
                    }
                    parent = resolved;
                }
                Some(meta) if meta.is_dir() => parent = join(&parent, &name),
                // Not a directory: refused where it is made.
                Some(_) => return Ok(()),
            }
        }
        Ok(())
    }
}

impl ExtractTarget for AddTarget<'_> {
    fn directory(&self, dir: &[OsString]) -> std::io::Result<Vec<OsString>> {
        self.refuse_dangling_links(dir)?;
        let resolved =
            resolve_under(self.dest, &self.base, &rel_path(dir), true).map_err(io_error)?;
        // Root's whatever `--chown` says: go-archive's untar makes the
        // directories an archive implies with the root pair
        // (`MkdirAllAndChown(parent, 0755, rootIDs…)`); only the entries
        // take the owner.
        mkdir_all(self.dest, &resolved, 0o755, None, None).map_err(io_error)?;
        self.dest
            .copy_up_parents(&join(&resolved, "x"))
            .map_err(io_error)?;
        Ok(components(&resolved))
    }

    fn link_target(&self, path: &[OsString]) -> std::io::Result<Option<Vec<OsString>>> {
        let resolved =
            resolve_under(self.dest, &self.base, &rel_path(path), false).map_err(io_error)?;
        if !self.dest.copy_up_file(&resolved).map_err(io_error)? {
            return Ok(None);
        }
        Ok(Some(components(&resolved)))
    }

    fn dir_below(&self, path: &[OsString]) -> bool {
        self.dest.lower_is_dir(&rel_path(path))
    }
}

#[cfg(test)]
mod xz_tests {
    use super::*;

    fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, content) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, &content[..])
                .unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn xz(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        liblzma::read::XzEncoder::new(bytes, 6)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn xz_streams_back_exactly_what_was_compressed() {
        // Larger than the decoder's buffers: read back across several reads.
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let tar = tar_of(&[("a.txt", b"hello\n".to_vec()), ("big.bin", big)]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar.xz");
        std::fs::write(&path, xz(&tar)).unwrap();
        assert!(is_archive(&path));
        let mut decoded = Vec::new();
        open_decompressed(&path)
            .unwrap()
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, tar);
    }

    #[test]
    fn xz_of_something_else_is_not_an_archive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.xz");
        std::fs::write(&path, xz(&[b'n'; 4096])).unwrap();
        assert!(!is_archive(&path));
    }
}
