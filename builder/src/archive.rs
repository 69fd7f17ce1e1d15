//! ADD's local archive handling: a source is an archive when, decompressed
//! by sniffing its first bytes (gzip, bzip2, xz, zstd, else plain), it
//! starts with a valid tar header — the test BuildKit applies. It is then
//! extracted into the destination directory, never outside it.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::context::EntryKind;
use crate::copy::{mkdir_all, CopyError};
use crate::rootfs::{
    clean_rel, join, make_node, resolve, resolve_under, set_mode, set_owner, set_times,
    LayeredRootfs, RootfsError, SourceTree,
};
use crate::users::Owner;

/// Compression detected from magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

/// Sniffs the compression of a stream's first bytes.
pub fn detect(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b, 0x08]) {
        Compression::Gzip
    } else if head.starts_with(b"BZh") {
        Compression::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Compression::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Opens a file decompressed, as a stream: only what is read gets decoded
/// (sniffing a tar header decodes a few blocks, not the whole archive).
fn open_decompressed(path: &Path) -> std::io::Result<Box<dyn Read>> {
    let mut file = File::open(path)?;
    let mut head = [0u8; 6];
    let n = read_up_to(&mut file, &mut head)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(match detect(&head[..n]) {
        Compression::None => Box::new(BufReader::new(file)),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(BufReader::new(file))),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(file)?),
        Compression::Xz => Box::new(XzReader::spawn(file)),
    })
}

/// Chunks of decoded xz in flight between the decoder thread and the reader
/// (each up to [`XZ_CHUNK`] bytes): bounds the memory a read-ahead takes.
const XZ_CHUNKS_IN_FLIGHT: usize = 4;
const XZ_CHUNK: usize = 64 * 1024;

/// xz decoded on a thread of its own: the pure-Rust decoder only writes
/// into a `Write`, so its output is handed over in chunks. Dropping the
/// reader early stops the decoder at its next write.
struct XzReader {
    chunks: Receiver<Vec<u8>>,
    current: Vec<u8>,
    position: usize,
    decoder: Option<JoinHandle<std::io::Result<()>>>,
}

impl XzReader {
    fn spawn(file: File) -> XzReader {
        let (sender, chunks) = sync_channel(XZ_CHUNKS_IN_FLIGHT);
        let decoder = std::thread::spawn(move || {
            let mut out = BufWriter::with_capacity(XZ_CHUNK, ChunkWriter(sender));
            lzma_rs::xz_decompress(&mut BufReader::new(file), &mut out).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("xz: {e:?}"))
            })?;
            out.flush()
        });
        XzReader {
            chunks,
            current: Vec::new(),
            position: 0,
            decoder: Some(decoder),
        }
    }
}

impl Read for XzReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.position == self.current.len() {
            match self.chunks.recv() {
                Ok(chunk) => {
                    self.current = chunk;
                    self.position = 0;
                }
                // The decoder is done: the end, or why it stopped.
                Err(_) => {
                    if let Some(decoder) = self.decoder.take() {
                        decoder
                            .join()
                            .map_err(|_| std::io::Error::other("the xz decoder panicked"))??;
                    }
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.position);
        buf[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

/// Sends what is written to an [`XzReader`]; fails once the reader is gone.
struct ChunkWriter(SyncSender<Vec<u8>>);

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .send(buf.to_vec())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "reader gone"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
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
    fn a_truncated_xz_is_an_error_not_a_short_read() {
        let tar = tar_of(&[("a.txt", vec![b'x'; 200_000])]);
        let compressed = xz(&tar);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.tar.xz");
        std::fs::write(&path, &compressed[..compressed.len() - 20]).unwrap();
        let mut decoded = Vec::new();
        let result = open_decompressed(&path).unwrap().read_to_end(&mut decoded);
        assert!(
            result.is_err(),
            "read {} bytes without error",
            decoded.len()
        );
    }

    #[test]
    fn xz_of_something_else_is_not_an_archive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.xz");
        std::fs::write(&path, xz(&[b'n'; 4096])).unwrap();
        assert!(!is_archive(&path));
    }
}
