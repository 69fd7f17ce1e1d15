//! Turning a directory (an overlay upper dir) into a layer: a deterministic
//! tar, its diff id, and the compressed blob in the store.
//!
//! Entries are sorted by path bytes; headers are normalized (ustar, numeric
//! uid/gid, no user or group names, permission bits only, mtimes clamped to
//! `SOURCE_DATE_EPOCH` when given); PAX records carry long names, large ids
//! and xattrs; files sharing an inode become hardlinks to the first path.
//! Overlay whiteouts (0/0 character devices, or the xattr form of
//! `crate::whiteout`) become `.wh.NAME` entries and
//! opaque directories get a `.wh..wh..opq` entry. Overlay's own xattrs are
//! never copied; a `metacopy` or `redirect` upper dir is refused (mount the
//! overlay with `metacopy=off,redirect_dir=off`).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::compress::{Compression, Compressor};
use crate::digest::{Digest, HashingWriter};
use crate::error::{io_at, Error, Result};
use crate::gc::{Tally, TreeSize};
use crate::oci::Descriptor;
use crate::progress::{Outcome, Reporter};
use crate::store::{IngestWriter, Store};

/// How to write the tar.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiffOptions {
    /// Clamp every mtime to at most this (seconds since the epoch).
    pub source_date_epoch: Option<i64>,
    /// Translate overlay whiteouts and opaque dirs (true for an upper dir).
    pub overlay_whiteouts: bool,
    /// Start the writeback of every regular file read (a step's upper dir,
    /// which becomes a snapshot: the private `writeback` module says why).
    /// Not for a directory deleted once packed, whose pages need never be
    /// written.
    pub write_back: bool,
    /// Commit the blob with [`crate::store::IngestWriter::commit_in_background`]:
    /// its fsync and rename overlap what the caller does next (a build's
    /// next steps, its records, its config and manifest; the build waits
    /// for them with [`Store::settle_writes`] before it returns).
    pub commit_in_background: bool,
}

/// A layer written to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerBlob {
    /// The compressed blob.
    pub descriptor: Descriptor,
    /// sha256 of the uncompressed tar (what the config's `rootfs` lists).
    pub diff_id: Digest,
    /// Entries (files, directories, links, whiteouts) in the layer.
    pub entries: u64,
    /// What the directory the layer was made of holds on disk, as the
    /// store's collection counts it, from the metadata the tar was written
    /// from: to be noted with [`Store::note_tree_size`] once the directory
    /// is in place.
    pub tree: TreeSize,
}

/// Writes `dir` as a tar to `out`; returns `out`. See the module docs for
/// the format.
pub fn write_tar<W: Write>(dir: &Path, out: W, options: &DiffOptions) -> Result<W> {
    write_tar_counted(dir, out, options).map(|(out, _)| out)
}

/// What [`write_tar_counted`] learns of the directory besides the tar.
struct Walked {
    /// Entries written.
    entries: u64,
    /// The directory's size on disk ([`LayerBlob::tree`]).
    tree: TreeSize,
}

/// [`write_tar`], also returning how many entries were written and the
/// directory's size.
fn write_tar_counted<W: Write>(dir: &Path, out: W, options: &DiffOptions) -> Result<(W, Walked)> {
    let mut entries = Vec::new();
    collect(dir, PathBuf::new(), &mut entries)?;
    let root = fs::symlink_metadata(dir).map_err(io_at("stat", dir))?;
    let mut tally = Tally::default();
    for meta in std::iter::once(&root).chain(entries.iter().map(|(_, meta)| meta)) {
        tally.add(meta.blocks(), meta.is_dir(), meta.nlink(), meta.ino());
    }
    let tree = tally.finish();
    // Sorted by the name each entry gets in the tar (a whiteout's is
    // `.wh.NAME`), so the order is a function of the names alone.
    let key = |(rel, meta): &(PathBuf, fs::Metadata)| -> Vec<u8> {
        let whiteout =
            options.overlay_whiteouts && crate::whiteout::is_whiteout(&dir.join(rel), meta);
        match (whiteout, rel.parent(), rel.file_name()) {
            (true, Some(parent), Some(name)) => {
                let mut wh = std::ffi::OsString::from(".wh.");
                wh.push(name);
                parent.join(wh).into_os_string().into_vec()
            }
            _ => rel.as_os_str().as_bytes().to_vec(),
        }
    };
    entries.sort_by_cached_key(key);
    let mut writer = TarWriter {
        builder: tar::Builder::new(out),
        options: *options,
        seen_inodes: HashMap::new(),
        root: dir.to_path_buf(),
    };
    let count = entries.len() as u64;
    for (rel, meta) in entries {
        writer.entry(&rel, &meta)?;
    }
    let out = writer
        .builder
        .into_inner()
        .map_err(io_at("finish tar of", dir))?;
    Ok((
        out,
        Walked {
            entries: count,
            tree,
        },
    ))
}

/// Diffs `dir` into a compressed layer blob in `store`, returning its
/// descriptor (with the OCI layer media type) and diff id.
pub fn write_layer(
    store: &Store,
    dir: &Path,
    compression: Compression,
    options: &DiffOptions,
    reporter: &dyn Reporter,
) -> Result<LayerBlob> {
    let id = format!("diff {}", dir.display());
    reporter.start(&id, "packing", None);
    let result = (|| -> Result<LayerBlob> {
        let ingest = store.ingest_direct()?;
        if compression == Compression::None {
            // The blob is the tar itself: the store's digest is the diff id,
            // so the bytes are hashed once.
            let (ingest, walked) = write_tar_counted(dir, ingest, options)?;
            let mut descriptor = commit(ingest, options)?;
            descriptor.media_type = compression.oci_layer_media_type().to_string();
            return Ok(LayerBlob {
                diff_id: descriptor.digest.clone(),
                descriptor,
                entries: walked.entries,
                tree: walked.tree,
            });
        }
        let compressor = Compressor::new(compression, ingest).map_err(io_at("compress", dir))?;
        let hashing = HashingWriter::new(compressor);
        let (hashing, walked) = write_tar_counted(dir, hashing, options)?;
        let (diff_id, _, compressor) = hashing.into_parts();
        let ingest = compressor.finish().map_err(io_at("compress", dir))?;
        let mut descriptor = commit(ingest, options)?;
        descriptor.media_type = compression.oci_layer_media_type().to_string();
        Ok(LayerBlob {
            descriptor,
            diff_id,
            entries: walked.entries,
            tree: walked.tree,
        })
    })();
    match &result {
        Ok(_) => reporter.done(&id, Outcome::Done),
        Err(e) => reporter.done(&id, Outcome::Failed(e.to_string())),
    }
    result
}

/// Commits the layer's blob now or in the background, as `options` say.
fn commit(ingest: IngestWriter, options: &DiffOptions) -> Result<Descriptor> {
    match options.commit_in_background {
        true => ingest.commit_in_background(),
        false => ingest.commit(),
    }
}

fn collect(root: &Path, rel: PathBuf, out: &mut Vec<(PathBuf, fs::Metadata)>) -> Result<()> {
    let dir = root.join(&rel);
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).map_err(io_at("list", &dir))? {
        names.push(entry.map_err(io_at("list", &dir))?.file_name());
    }
    for name in names {
        let child_rel = rel.join(&name);
        let path = root.join(&child_rel);
        let meta = fs::symlink_metadata(&path).map_err(io_at("stat", &path))?;
        let is_dir = meta.is_dir();
        out.push((child_rel.clone(), meta));
        if is_dir {
            collect(root, child_rel, out)?;
        }
    }
    Ok(())
}

struct TarWriter<W: Write> {
    builder: tar::Builder<W>,
    options: DiffOptions,
    seen_inodes: HashMap<(u64, u64), PathBuf>,
    root: PathBuf,
}

/// Extended attributes: (name, value) pairs.
type Xattrs = Vec<(String, Vec<u8>)>;

/// xattrs of `path` (not following symlinks), sorted by name.
fn read_xattrs(path: &Path) -> Result<Xattrs> {
    let mut names = vec![0u8; 4096];
    let len = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::OPNOTSUPP) => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list xattrs", path, e.into())),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let mut value = vec![0u8; 256];
        let n = loop {
            match rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]) {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(rustix::io::Errno::NODATA) => break usize::MAX,
                Err(e) => return Err(Error::io("read xattr", path, e.into())),
            }
        };
        if n != usize::MAX {
            value.truncate(n);
            out.push((name, value));
        }
    }
    out.sort();
    Ok(out)
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // "<len> <key>=<value>\n" where len counts the whole record, itself included.
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

/// Largest value an 8-byte octal ustar field holds.
const USTAR_ID_MAX: u64 = 0o7777777;
const USTAR_SIZE_MAX: u64 = 0o77777777777;

/// A tar header with the given fields and size 0 (the name, link and
/// checksum are filled in when it is appended).
fn ustar_header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid.min(USTAR_ID_MAX));
    h.set_gid(gid.min(USTAR_ID_MAX));
    h.set_mtime(mtime.min(USTAR_SIZE_MAX));
    h.set_size(0);
    h
}

/// Overlay's own xattrs, taken out of `xattrs`: the rest, and whether the
/// directory is opaque. A `metacopy` or `redirect` xattr is refused.
fn split_overlay_xattrs(xattrs: Xattrs, path: &Path) -> Result<(Xattrs, bool)> {
    let mut overlay_opaque = false;
    let mut kept_xattrs = Vec::new();
    for (k, v) in xattrs {
        // `user.overlay.*` is what a rootless overlay (mounted with
        // `userxattr` inside a user namespace) writes instead.
        let overlay_attr = k
            .strip_prefix("trusted.overlay.")
            .or_else(|| k.strip_prefix("user.overlay."));
        if let Some(what) = overlay_attr {
            match what {
                "opaque" => overlay_opaque = v == b"y",
                "metacopy" | "redirect" => {
                    return Err(Error::Diff {
                        path: path.to_path_buf(),
                        reason: format!(
                            "overlay {what} xattr: mount the overlay with metacopy=off,redirect_dir=off"
                        ),
                    })
                }
                _ => {}
            }
            continue;
        }
        kept_xattrs.push((k, v));
    }
    Ok((kept_xattrs, overlay_opaque))
}

/// The PAX records of an entry: its xattrs, then the ids past the 7-digit
/// octal field (the header keeps the clamped value, as Go's archive/tar
/// does).
fn pax_records(xattrs: Xattrs, uid: u64, gid: u64) -> Vec<(String, Vec<u8>)> {
    let mut pax: Vec<(String, Vec<u8>)> = xattrs
        .into_iter()
        .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v))
        .collect();
    for (key, id) in [("uid", uid), ("gid", gid)] {
        if id > USTAR_ID_MAX {
            pax.push((key.to_string(), id.to_string().into_bytes()));
        }
    }
    pax
}

/// What every tar entry of one path (but a whiteout) is made of.
struct Entry<'p> {
    /// The path on the host.
    path: &'p Path,
    /// The name in the tar: the path below the upper dir.
    name: Vec<u8>,
    /// Permission bits.
    mode: u32,
    uid: u64,
    gid: u64,
    /// Clamped to `SOURCE_DATE_EPOCH`.
    mtime: u64,
    pax: Vec<(String, Vec<u8>)>,
}

impl Entry<'_> {
    fn header(&self, kind: tar::EntryType) -> tar::Header {
        ustar_header(kind, self.mode, self.uid, self.gid, self.mtime)
    }
}

impl<W: Write> TarWriter<W> {
    fn clamp(&self, mtime: i64) -> u64 {
        let t = match self.options.source_date_epoch {
            Some(epoch) => mtime.min(epoch),
            None => mtime,
        };
        t.max(0) as u64
    }

    /// Appends the tar entry (or entries) of one path of the upper dir.
    fn entry(&mut self, rel: &Path, meta: &fs::Metadata) -> Result<()> {
        let path = self.root.join(rel);
        let ft = meta.file_type();
        let mtime = self.clamp(meta.mtime());
        let xattrs = if ft.is_symlink() {
            Vec::new()
        } else {
            read_xattrs(&path)?
        };
        let (kept_xattrs, overlay_opaque) = split_overlay_xattrs(xattrs, &path)?;
        if self.options.overlay_whiteouts && crate::whiteout::is_whiteout(&path, meta) {
            return self.append_whiteout(rel, mtime);
        }
        let (uid, gid) = (meta.uid() as u64, meta.gid() as u64);
        let entry = Entry {
            path: &path,
            name: rel.as_os_str().as_bytes().to_vec(),
            mode: meta.mode() & 0o7777,
            uid,
            gid,
            mtime,
            pax: pax_records(kept_xattrs, uid, gid),
        };
        if ft.is_dir() {
            self.append_directory(entry, overlay_opaque)
        } else if ft.is_symlink() {
            self.append_symlink(entry)
        } else if ft.is_file() {
            self.append_file(entry, rel, meta)
        } else {
            self.append_special(entry, ft, meta.rdev())
        }
    }

    /// An overlay whiteout (a 0/0 character device) as a `.wh.NAME` entry.
    fn append_whiteout(&mut self, rel: &Path, mtime: u64) -> Result<()> {
        let name = rel.file_name().map(|n| n.as_bytes()).unwrap_or_default();
        let parent = rel
            .parent()
            .map(|p| p.as_os_str().as_bytes())
            .unwrap_or_default();
        let mut wh = parent.to_vec();
        if !wh.is_empty() {
            wh.push(b'/');
        }
        wh.extend_from_slice(b".wh.");
        wh.extend_from_slice(name);
        let header = ustar_header(tar::EntryType::Regular, 0o600, 0, 0, mtime);
        self.append(&wh, None, header, Vec::new(), io::empty())
    }

    /// A directory, followed by its `.wh..wh..opq` marker when it is
    /// opaque.
    fn append_directory(&mut self, entry: Entry<'_>, overlay_opaque: bool) -> Result<()> {
        let mut dir_name = entry.name.clone();
        dir_name.push(b'/');
        let header = entry.header(tar::EntryType::Directory);
        self.append(&dir_name, None, header, entry.pax, io::empty())?;
        if self.options.overlay_whiteouts && overlay_opaque {
            let mut marker = entry.name;
            marker.extend_from_slice(b"/.wh..wh..opq");
            let header = ustar_header(tar::EntryType::Regular, 0o600, 0, 0, entry.mtime);
            self.append(&marker, None, header, Vec::new(), io::empty())?;
        }
        Ok(())
    }

    fn append_symlink(&mut self, entry: Entry<'_>) -> Result<()> {
        let target = fs::read_link(entry.path).map_err(io_at("read link", entry.path))?;
        let header = entry.header(tar::EntryType::Symlink);
        self.append(
            &entry.name,
            Some(target.as_os_str().as_bytes()),
            header,
            entry.pax,
            io::empty(),
        )
    }

    /// A regular file: its content, or a hard link to the first path of
    /// the same inode.
    fn append_file(&mut self, entry: Entry<'_>, rel: &Path, meta: &fs::Metadata) -> Result<()> {
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.seen_inodes.get(&key) {
                let first = first.as_os_str().as_bytes().to_vec();
                let header = entry.header(tar::EntryType::Link);
                return self.append(&entry.name, Some(&first), header, entry.pax, io::empty());
            }
            self.seen_inodes.insert(key, rel.to_path_buf());
        }
        let size = meta.len();
        let mut header = entry.header(tar::EntryType::Regular);
        let mut pax = entry.pax;
        if size > USTAR_SIZE_MAX {
            pax.push(("size".into(), size.to_string().into_bytes()));
        } else {
            header.set_size(size);
        }
        let path = entry.path;
        let file = File::open(path).map_err(io_at("open", path))?;
        // A file that changes size while we read would corrupt the tar;
        // `take` plus the length check below turns that into an error.
        let mut reader = io::Read::take(file, size);
        self.append_checked(&entry.name, header, pax, &mut reader, size, path)?;
        if self.options.write_back && size > 0 {
            crate::writeback::later(reader.into_inner());
        }
        Ok(())
    }

    /// A character or block device or a fifo; a socket, which has no tar
    /// form, is skipped (as Docker does).
    fn append_special(&mut self, entry: Entry<'_>, ft: fs::FileType, rdev: u64) -> Result<()> {
        let kind = if ft.is_char_device() {
            tar::EntryType::Char
        } else if ft.is_block_device() {
            tar::EntryType::Block
        } else if ft.is_fifo() {
            tar::EntryType::Fifo
        } else {
            tracing::debug!(path = %entry.path.display(), "skipping socket");
            return Ok(());
        };
        let mut header = entry.header(kind);
        let (major, minor) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
        header
            .set_device_major(major)
            .and_then(|()| header.set_device_minor(minor))
            .map_err(io_at("device numbers of", entry.path))?;
        self.append(&entry.name, None, header, entry.pax, io::empty())
    }

    fn append(
        &mut self,
        name: &[u8],
        link: Option<&[u8]>,
        header: tar::Header,
        pax: Vec<(String, Vec<u8>)>,
        data: impl io::Read,
    ) -> Result<()> {
        let mut header = header;
        let mut pax = pax;
        self.fill_names(&mut header, name, link, &mut pax)?;
        self.write_pax(name, &pax, &header)?;
        header.set_cksum();
        self.builder.append(&header, data).map_err(|e| {
            Error::io(
                "write tar entry",
                PathBuf::from(String::from_utf8_lossy(name).into_owned()),
                e,
            )
        })
    }

    fn append_checked(
        &mut self,
        name: &[u8],
        header: tar::Header,
        pax: Vec<(String, Vec<u8>)>,
        reader: &mut io::Take<File>,
        size: u64,
        path: &Path,
    ) -> Result<()> {
        let mut header = header;
        let mut pax = pax;
        self.fill_names(&mut header, name, None, &mut pax)?;
        self.write_pax(name, &pax, &header)?;
        header.set_cksum();
        let mut counted = CountingReader {
            inner: reader,
            count: 0,
        };
        self.builder
            .append(&header, &mut counted)
            .map_err(io_at("write tar entry for", path))?;
        if counted.count != size {
            return Err(Error::Diff {
                path: path.to_path_buf(),
                reason: format!(
                    "file shrank while being read ({} of {size} bytes)",
                    counted.count
                ),
            });
        }
        Ok(())
    }

    /// Puts `name`/`link` in the header, or in PAX records when too long.
    fn fill_names(
        &self,
        header: &mut tar::Header,
        name: &[u8],
        link: Option<&[u8]>,
        pax: &mut Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        let old = header.as_old_mut();
        if name.len() <= 100 {
            old.name[..name.len()].copy_from_slice(name);
        } else {
            pax.push(("path".into(), name.to_vec()));
            old.name.copy_from_slice(&name[..100]);
        }
        if let Some(link) = link {
            if link.len() <= 100 {
                old.linkname[..link.len()].copy_from_slice(link);
            } else {
                pax.push(("linkpath".into(), link.to_vec()));
                old.linkname.copy_from_slice(&link[..100]);
            }
        }
        Ok(())
    }

    fn write_pax(
        &mut self,
        name: &[u8],
        pax: &[(String, Vec<u8>)],
        header: &tar::Header,
    ) -> Result<()> {
        if pax.is_empty() {
            return Ok(());
        }
        let mut records = pax.to_vec();
        records.sort();
        let mut body = Vec::new();
        for (k, v) in &records {
            body.extend_from_slice(&pax_record(k, v));
        }
        let mut pax_header = tar::Header::new_ustar();
        pax_header.set_entry_type(tar::EntryType::XHeader);
        pax_header.set_mode(0o644);
        pax_header.set_mtime(header.mtime().unwrap_or(0));
        pax_header.set_size(body.len() as u64);
        // Name it like Go's archive/tar does ("PaxHeaders.0/<base>"), cut to fit.
        let base = name
            .rsplit(|b| *b == b'/')
            .find(|s| !s.is_empty())
            .unwrap_or(b"x");
        let mut pax_name = b"PaxHeaders.0/".to_vec();
        pax_name.extend_from_slice(&base[..base.len().min(80)]);
        pax_header.as_old_mut().name[..pax_name.len()].copy_from_slice(&pax_name);
        pax_header.set_cksum();
        self.builder
            .append(&pax_header, body.as_slice())
            .map_err(|e| {
                Error::io(
                    "write tar entry",
                    PathBuf::from(String::from_utf8_lossy(name).into_owned()),
                    e,
                )
            })
    }
}

struct CountingReader<'a, R> {
    inner: &'a mut R,
    count: u64,
}

impl<R: io::Read> io::Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        for value_len in [0, 1, 5, 6, 7, 90, 95, 96, 97, 99, 100, 995, 996, 997] {
            let value = vec![b'a'; value_len];
            let rec = pax_record("path", &value);
            let (len, _) = std::str::from_utf8(&rec).unwrap().split_once(' ').unwrap();
            assert_eq!(
                len.parse::<usize>().unwrap(),
                rec.len(),
                "value length {value_len}"
            );
        }
    }
}
