//! ADD's local archive handling: a source is an archive when, decompressed
//! by sniffing its first bytes (gzip, bzip2, xz, zstd, else plain:
//! [`kiln_layers::compress::decompress_archive`]), it starts with a valid
//! tar header — the test BuildKit applies. It is then
//! extracted into the destination directory, never outside it.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::context::EntryKind;
use crate::copy::{mkdir_all, CopyError};
use crate::rootfs::{
    clean_rel, join, make_node, resolve, resolve_under, set_mode, set_owner, set_times,
    LayeredRootfs, RootfsError, SourceTree,
};
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
/// of `dest`. Owners come from the archive unless `chown` is given; modes
/// and mtimes come from the archive. Entries climbing out with `..`, or
/// through a symlink, are refused.
pub fn unpack(
    archive_path: &Path,
    dest: &LayeredRootfs,
    dest_path: &str,
    chown: Option<Owner>,
) -> Result<(), CopyError> {
    let archive_name = archive_path.display().to_string();
    let arch_err = |message: String| CopyError::Archive {
        archive: archive_name.clone(),
        message,
    };
    let dest_rel = resolve(dest, dest_path, true)?;
    mkdir_all(dest, &dest_rel, 0o755, chown, None)?;
    let reader = open_decompressed(archive_path).map_err(|e| arch_err(e.to_string()))?;
    let mut archive = tar::Archive::new(reader);
    let mut dir_times: Vec<(String, (i64, i64))> = Vec::new();
    for entry in archive.entries().map_err(|e| arch_err(e.to_string()))? {
        let mut entry = entry.map_err(|e| arch_err(e.to_string()))?;
        let raw_path = entry.path_bytes().into_owned();
        let raw_name = String::from_utf8_lossy(&raw_path).into_owned();
        let header = entry.header().clone();
        let kind = header.entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader | tar::EntryType::GNULongName
        ) {
            continue;
        }
        // Go's archive code: a cleaned name that climbs above the
        // destination is refused; an absolute one is taken as relative.
        let cleaned = crate::dockerignore::go_clean(&raw_name);
        if cleaned == ".." || cleaned.starts_with("../") {
            return Err(CopyError::ArchiveBreakout {
                archive: archive_name.clone(),
                entry: raw_name,
                dest: format!("/{dest_rel}"),
            });
        }
        let inside = clean_rel(&cleaned);
        if inside.is_empty() {
            continue;
        }
        let base = inside.rsplit('/').next().unwrap_or("");
        if base.starts_with(".wh.") {
            // AUFS whiteouts have no meaning for ADD; BuildKit's untar
            // applies them to the destination, kiln skips them.
            tracing::debug!("ADD {archive_name}: skipping whiteout entry {raw_name}");
            continue;
        }
        // Resolve the parent as if chrooted into the destination (as
        // BuildKit's chrootarchive does): links cannot lead out of it.
        let parent = match inside.rfind('/') {
            Some(i) => &inside[..i],
            None => "",
        };
        let parent_resolved = resolve_under(dest, &dest_rel, parent, true)?;
        mkdir_all(dest, &parent_resolved, 0o755, chown, None)?;
        let target = join(&parent_resolved, base);
        let upper = dest.upper_path(&target);
        dest.copy_up_parents(&target)?;
        let mode = header.mode().map_err(|e| arch_err(e.to_string()))? & 0o7777;
        let owner = chown.unwrap_or(Owner {
            uid: header.uid().unwrap_or(0) as u32,
            gid: header.gid().unwrap_or(0) as u32,
        });
        let mtime = (header.mtime().unwrap_or(0) as i64, 0);
        let existing = dest.stat(&target)?;
        // Anything but a directory onto a directory, or a directory onto a
        // non-directory, replaces what was there.
        if let Some(existing) = &existing {
            let keeps = existing.is_dir() && kind == tar::EntryType::Directory;
            if !keeps {
                dest.remove(&target)?;
                if std::fs::symlink_metadata(&upper).is_ok() {
                    std::fs::remove_file(&upper).map_err(RootfsError::io(upper.display()))?;
                }
            }
        } else if std::fs::symlink_metadata(&upper).is_ok() {
            // A whiteout left in the upper dir.
            std::fs::remove_file(&upper).map_err(RootfsError::io(upper.display()))?;
        }
        match kind {
            tar::EntryType::Directory => {
                if dest.stat(&target)?.is_none() {
                    std::fs::create_dir(&upper).map_err(RootfsError::io(upper.display()))?;
                } else {
                    dest.copy_up_parents(&join(&target, "x"))?;
                }
                set_owner(&upper, owner.uid, owner.gid)?;
                set_mode(&upper, mode)?;
                dir_times.push((target.clone(), mtime));
                continue;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut out = File::create(&upper).map_err(RootfsError::io(upper.display()))?;
                std::io::copy(&mut entry, &mut out)
                    .map_err(|e| arch_err(format!("{raw_name}: {e}")))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default();
                // moby's check: the link, joined to its directory, must not
                // point above the destination.
                let relative_link = link.trim_start_matches('/');
                let joined = crate::dockerignore::go_clean(&if parent.is_empty() {
                    relative_link.to_string()
                } else {
                    format!("{parent}/{relative_link}")
                });
                if joined == ".." || joined.starts_with("../") {
                    return Err(CopyError::ArchiveBreakout {
                        archive: archive_name.clone(),
                        entry: raw_name,
                        dest: format!("/{dest_rel}"),
                    });
                }
                std::os::unix::fs::symlink(&link, &upper)
                    .map_err(RootfsError::io(upper.display()))?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default();
                let joined = crate::dockerignore::go_clean(&link);
                if joined == ".." || joined.starts_with("../") {
                    return Err(CopyError::ArchiveBreakout {
                        archive: archive_name.clone(),
                        entry: raw_name,
                        dest: format!("/{dest_rel}"),
                    });
                }
                let source = resolve_under(dest, &dest_rel, &clean_rel(&joined), false)?;
                let source_host = dest.host_file(&source)?;
                std::fs::hard_link(&source_host, &upper)
                    .map_err(RootfsError::io(upper.display()))?;
                continue;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let rdev = libc::makedev(
                    header.device_major().ok().flatten().unwrap_or(0),
                    header.device_minor().ok().flatten().unwrap_or(0),
                );
                let node = match kind {
                    tar::EntryType::Fifo => EntryKind::Fifo,
                    tar::EntryType::Block => EntryKind::Device { block: true, rdev },
                    _ => EntryKind::Device { block: false, rdev },
                };
                make_node(&upper, &node, mode)?;
            }
            other => {
                tracing::debug!("ADD {archive_name}: skipping {raw_name} of type {other:?}");
                continue;
            }
        }
        set_owner(&upper, owner.uid, owner.gid)?;
        if kind != tar::EntryType::Symlink {
            set_mode(&upper, mode)?;
        }
        set_times(&upper, mtime, mtime)?;
    }
    // Directory times last: writing their children moved them.
    for (dir, mtime) in dir_times.iter().rev() {
        set_times(&dest.upper_path(dir), *mtime, *mtime)?;
    }
    Ok(())
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
        lzma_rs::xz_compress(&mut &bytes[..], &mut out).unwrap();
        out
    }

    #[test]
    fn xz_streams_back_exactly_what_was_compressed() {
        // Several chunks' worth, so the hand-over between threads is used.
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
