//! Extracting a tar into a directory, safely: kiln's one tar extractor, for
//! image layers ([`unpack`]) and for the archives `ADD` extracts
//! ([`extract`]).
//!
//! The defences are the same in both modes. Every path is opened component
//! by component from a directory fd with `O_NOFOLLOW`, so nothing is ever
//! written outside the destination, nor through a symlink: an entry whose
//! parent path is (or has become) a symlink is refused; a file, link or node
//! replaces whatever had its name (never writing through it: created with
//! `O_EXCL|O_NOFOLLOW` after the old one is removed); a hardlink's target
//! must be a non-directory inside the destination, resolved the same way.
//! Overlay's own xattrs (`trusted.overlay.*`, `user.overlay.*`) in the tar
//! are ignored: they would change what a mount shows.
//!
//! What differs is how names lead to places:
//!
//! - A **layer** ([`unpack`], OCI semantics, as containerd applies one):
//!   names that are absolute or contain `..` are refused, and so is any
//!   path through a symlink, whether an earlier entry of the same layer
//!   planted it or a lower layer did (lower layers are consulted when a
//!   parent directory has to be created, which then copies the lower
//!   directory's owner and mode). Hardlink targets must be in this layer.
//!   A hardlink entry's owner, mode, mtime and xattrs are set on the inode
//!   it shares with its target, as containerd's untar sets them (in both
//!   modes). The root entry (`./`) sets the root's metadata. OCI whiteouts become
//!   overlay whiteouts: `.wh.NAME` → a 0/0 character device `NAME`,
//!   `.wh..wh..opq` → `trusted.overlay.opaque=y` on the parent, so a stack
//!   of unpacked layers mounts as overlay lower dirs ([`Whiteouts::Overlay`]).
//! - An **archive** ([`extract`], Docker's `ADD`, which BuildKit untars
//!   chrooted into the destination directory): names are joined to the
//!   destination as Go's `filepath.Join("/", name)` does there, a leading
//!   `/` and every `..` stopping at it (`../x` is `x`); the directories on
//!   the way are resolved by the caller's [`ExtractTarget`] as a chroot
//!   into the destination would resolve them (symlinks followed, never out
//!   of it; a symlink whose target is missing is not made through, as
//!   BuildKit's untar fails there); a symlink is written as the archive has it, whatever its
//!   target (resolved in the image, and never written through here); a
//!   hardlink's target is taken the same way, and may name any non-directory of the
//!   destination (the target copies it into the writable dir first, as
//!   overlayfs' copy-up would). A directory entry named `.` (`./`) is
//!   skipped, one that climbs to the destination (`../`) gives it its
//!   owner, mode and mtime, and `.wh.` names are plain files, as in Docker
//!   and BuildKit.
//!
//! In both modes a directory that replaces a non-directory where a lower
//! layer has a directory is made opaque, so the lower one's contents do
//! not show through it.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// What to do with `.wh.` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whiteouts {
    /// Turn them into overlay whiteouts (unpacking an image layer).
    Overlay,
    /// Keep them as ordinary files (a layer read as plain files).
    AsFiles,
}

/// How to unpack a layer.
#[derive(Clone, Debug)]
pub struct UnpackOptions {
    pub whiteouts: Whiteouts,
    /// The directories this layer will sit on, top first; consulted so a
    /// path through a lower layer's symlink is refused and implicitly
    /// created parents copy the lower directory's owner and mode.
    pub lowers: Vec<PathBuf>,
    /// Apply the tar's uid/gid (needs root); otherwise files belong to us.
    pub preserve_owners: bool,
    /// Names this layer in errors (usually its digest).
    pub label: String,
    /// Start the writeback of every regular file once written (a layer
    /// unpacked into a snapshot, whose files are never fsynced: the private
    /// `writeback` module says why). Not for a tree read once and deleted.
    pub write_back: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            whiteouts: Whiteouts::Overlay,
            lowers: Vec::new(),
            preserve_owners: rustix::process::geteuid().is_root(),
            label: "layer".into(),
            write_back: false,
        }
    }
}

/// Counts of what was unpacked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub whiteouts: u64,
    pub bytes: u64,
}

/// How to extract an archive.
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    /// Owner (uid, gid) of every entry instead of the archive's (`ADD
    /// --chown`).
    pub owner: Option<(u32, u32)>,
    /// Apply owners at all (needs root or a user namespace mapping them).
    pub preserve_owners: bool,
    /// Names the archive in errors (usually its path).
    pub label: String,
}

/// The tree an archive is extracted into, as its caller sees it: kiln's
/// builder has an image's layers under a step's upper dir, and only the
/// upper dir (the `root` given to [`extract`]) is written. Paths are clean
/// components (no empty, `.` or `..` one, no `/` inside one); `dir` and
/// `path` arguments are relative to the destination directory, results
/// relative to `root`. Names are UTF-8 here (other bytes are replaced with
/// U+FFFD before they reach the target, as the builder's views take them).
///
/// The extractor trusts no answer: it opens what the target returns with
/// `O_NOFOLLOW` from `root` and refuses anything outside the destination.
pub trait ExtractTarget {
    /// Resolves the directory `dir` as a chroot into the destination would
    /// (symlinks followed, absolute targets restarting at the destination,
    /// `..` stopping there) and makes it, with its parents, real
    /// directories under `root` (copied up where the tree has them, created
    /// where it has nothing). Returns where it is. A [`NoPlaceForEntry`]
    /// error says the entry has nowhere to go (a symlink on the way leads
    /// to nothing) and is reported as the entry's.
    fn directory(&self, dir: &[OsString]) -> io::Result<Vec<OsString>>;

    /// Resolves a hardlink's target `path` like [`ExtractTarget::directory`]
    /// but without following its last component, and makes the
    /// non-directory there present under `root` (copied up from the layer
    /// it is in). `None` when nothing, or a directory, is there.
    fn link_target(&self, path: &[OsString]) -> io::Result<Option<Vec<OsString>>>;

    /// Whether the layers under `root` show a directory at `path`: a
    /// directory made there in place of something else must then hide it.
    fn dir_below(&self, path: &[OsString]) -> bool;
}

/// What an [`ExtractTarget`] answers, inside an `io::Error`
/// (`io::Error::other`), when an entry has nowhere to go: a symlink on its
/// way leads to nothing. The extractor reports it as the entry's error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NoPlaceForEntry(pub String);

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Unpacks the uncompressed layer tar stream `tar` into `dest` (an existing
/// directory). The stream is read up to the tar end marker; a caller hashing
/// it should drain the rest.
pub fn unpack(tar: impl Read, dest: &Path, options: &UnpackOptions) -> Result<UnpackStats> {
    let mode = Kind::Layer {
        whiteouts: options.whiteouts,
        lowers: &options.lowers,
        write_back: options.write_back,
    };
    run(tar, dest, mode, options.preserve_owners, &options.label)
}

/// Extracts the uncompressed archive `tar` into the directory `into`
/// (components below `root`, which must exist as directories there) as
/// `ADD` does; `target` resolves paths in the tree `root` is the writable
/// part of. See the module docs.
pub fn extract(
    tar: impl Read,
    root: &Path,
    into: &[OsString],
    target: &dyn ExtractTarget,
    options: &ExtractOptions,
) -> Result<UnpackStats> {
    let mode = Kind::Archive {
        target,
        into,
        owner: options.owner,
    };
    run(tar, root, mode, options.preserve_owners, &options.label)
}

fn run(
    tar: impl Read,
    dest: &Path,
    kind: Kind<'_>,
    preserve_owners: bool,
    label: &str,
) -> Result<UnpackStats> {
    let root = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open", dest, e.into()))?;
    let mut unpacker = Unpacker {
        root,
        kind,
        preserve_owners,
        label,
        dir_times: Vec::new(),
        stats: UnpackStats::default(),
    };
    let mut archive = tar::Archive::new(tar);
    let entries = archive.entries().map_err(|e| unpacker.stream_err(e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| unpacker.stream_err(e))?;
        unpacker.entry(&mut entry)?;
    }
    unpacker.finish()?;
    Ok(unpacker.stats)
}

/// A layer or an archive, with what each needs.
enum Kind<'a> {
    Layer {
        whiteouts: Whiteouts,
        lowers: &'a [PathBuf],
        write_back: bool,
    },
    Archive {
        target: &'a dyn ExtractTarget,
        into: &'a [OsString],
        owner: Option<(u32, u32)>,
    },
}

struct Unpacker<'a> {
    root: OwnedFd,
    kind: Kind<'a>,
    preserve_owners: bool,
    label: &'a str,
    /// Directory mtimes, set last (creating children changes them).
    dir_times: Vec<(Vec<OsString>, u64)>,
    stats: UnpackStats,
}

/// Splits a layer's tar name into clean components; `Err` says why it is
/// unsafe.
pub(crate) fn clean_components(raw: &[u8]) -> std::result::Result<Vec<OsString>, &'static str> {
    if raw.starts_with(b"/") {
        return Err("absolute path");
    }
    if raw.contains(&0) {
        return Err("NUL byte in name");
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("'..' in path"),
            _ => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

/// A name with a NUL byte, which no path can hold.
#[derive(Debug, PartialEq, Eq)]
struct NulInName;

/// Cleans an archive's name (an entry's, a hardlink's target) the way
/// BuildKit's untar does, chrooted into the destination (go-archive's
/// `Unpack` with `/` as the destination, `resolvePathInChroot`): joined to
/// `/` and lexically cleaned as Go's `filepath.Join` does, so a leading
/// `/` starts at the destination and `..` stops there (`../x` is `x`).
fn archive_components(raw: &[u8]) -> std::result::Result<Vec<OsString>, NulInName> {
    if raw.contains(&0) {
        return Err(NulInName);
    }
    let mut out: Vec<OsString> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            _ => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

/// Whether Go's `filepath.Clean` makes `raw` the name `.`: relative, and
/// never climbing above where it starts (`./`, `a/..`; not `..`, `/`,
/// `a/../..`).
fn go_cleans_to_dot(raw: &[u8]) -> bool {
    if raw.starts_with(b"/") {
        return false;
    }
    let mut depth = 0usize;
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return false,
            },
            _ => depth += 1,
        }
    }
    depth == 0
}

fn display(comps: &[OsString]) -> String {
    let parts: Vec<_> = comps.iter().map(|c| c.to_string_lossy()).collect();
    parts.join("/")
}

/// Whether `comps` is a clean path (what a target must return).
fn is_clean(comps: &[OsString]) -> bool {
    comps.iter().all(|c| {
        let b = c.as_bytes();
        !b.is_empty() && b != b"." && b != b".." && !b.contains(&b'/') && !b.contains(&0)
    })
}

/// What a path is in the lower layers' merged view.
enum Lower {
    Missing,
    Dir { mode: u32, uid: u32, gid: u32 },
    Symlink,
    Other,
}

/// Which side of a copy failed.
enum Failed {
    Reading(io::Error),
    Writing(io::Error),
}

/// `io::copy` that tells a failed read of `from` from a failed write to `to`.
fn copy_entry(from: &mut impl Read, to: &mut impl Write) -> std::result::Result<u64, Failed> {
    let mut buf = [0u8; 8192];
    let mut copied = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failed::Reading(e)),
        };
        to.write_all(&buf[..n]).map_err(Failed::Writing)?;
        copied += n as u64;
    }
}

/// The metadata an entry gets from its header.
struct Attrs {
    uid: u32,
    gid: u32,
    /// Permission bits.
    mode: u32,
    mtime: u64,
    /// Its PAX xattrs but overlay's own.
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Where an entry goes: its parent directory, opened, and its name there.
struct Place<'p> {
    /// The tar's name for the entry, as errors show it.
    shown: &'p str,
    parent: &'p OwnedFd,
    name: &'p OsString,
    /// The entry's path below the root.
    path: Vec<OsString>,
}

/// What [`Unpacker::clear`] found at a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cleared {
    /// Nothing was there.
    Absent,
    /// A directory, kept.
    KeptDir,
    /// Something was there and was removed.
    Removed,
}

fn errno_io(e: Errno) -> io::Error {
    e.into()
}

impl Unpacker<'_> {
    fn is_archive(&self) -> bool {
        matches!(self.kind, Kind::Archive { .. })
    }

    fn unsafe_entry(&self, entry: &str, reason: impl Into<String>) -> Error {
        if self.is_archive() {
            Error::UnsafeArchiveEntry {
                archive: self.label.to_string(),
                entry: entry.to_string(),
                reason: reason.into(),
            }
        } else {
            Error::UnsafeEntry {
                layer: self.label.to_string(),
                entry: entry.to_string(),
                reason: reason.into(),
            }
        }
    }

    /// An archive entry that would land outside the destination.
    fn breakout(&self, entry: &str) -> Error {
        let into = match &self.kind {
            Kind::Archive { into, .. } => format!("/{}", display(into)),
            Kind::Layer { .. } => "/".to_string(),
        };
        Error::ArchiveBreakout {
            archive: self.label.to_string(),
            entry: entry.to_string(),
            into,
        }
    }

    fn io(&self, op: &'static str, path: &str, e: impl Into<io::Error>) -> Error {
        Error::io(
            op,
            PathBuf::from(format!("{}: {path}", self.label)),
            e.into(),
        )
    }

    /// The tar stream itself failed (before or between entries).
    fn stream_err(&self, source: io::Error) -> Error {
        if self.is_archive() {
            Error::Archive {
                path: PathBuf::from(self.label),
                reason: format!("reading tar: {source}"),
            }
        } else {
            Error::Tar {
                layer: self.label.to_string(),
                source,
            }
        }
    }

    /// Reading one entry's header or data failed.
    fn tar_err(&self, entry: &str, e: io::Error) -> Error {
        if self.is_archive() {
            Error::Archive {
                path: PathBuf::from(self.label),
                reason: format!("entry {entry:?}: {e}"),
            }
        } else {
            Error::Tar {
                layer: format!("{} (entry {entry:?})", self.label),
                source: e,
            }
        }
    }

    fn unsupported(&self, entry: &str, reason: String) -> Error {
        if self.is_archive() {
            Error::Archive {
                path: PathBuf::from(self.label),
                reason: format!("entry {entry:?}: {reason}"),
            }
        } else {
            Error::BadLayer {
                layer: self.label.to_string(),
                reason: format!("entry {entry:?}: {reason}"),
            }
        }
    }

    fn open_dir(&self, comps: &[OsString], create: bool, entry: &str) -> Result<OwnedFd> {
        let mut current = rustix::fs::openat(
            &self.root,
            ".",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io("open", ".", e))?;
        for (i, comp) in comps.iter().enumerate() {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let next = match rustix::fs::openat(&current, comp.as_os_str(), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    let mode = match self.lower_kind(&comps[..=i]) {
                        Lower::Symlink => {
                            return Err(self.unsafe_entry(
                                entry,
                                format!(
                                "{} is a symlink in a lower layer; refusing to write through it",
                                display(&comps[..=i])
                            ),
                            ))
                        }
                        Lower::Dir { mode, uid, gid } => Some((mode, uid, gid)),
                        Lower::Missing | Lower::Other => None,
                    };
                    rustix::fs::mkdirat(&current, comp.as_os_str(), Mode::from_raw_mode(0o755))
                        .map_err(|e| self.io("mkdir", &display(&comps[..=i]), e))?;
                    if let Some((mode, uid, gid)) = mode {
                        if self.preserve_owners {
                            chown_at(&current, comp, uid, gid)
                                .map_err(|e| self.io("chown", &display(&comps[..=i]), e))?;
                        }
                        rustix::fs::chmodat(
                            &current,
                            comp.as_os_str(),
                            Mode::from_raw_mode(mode & 0o7777),
                            AtFlags::empty(),
                        )
                        .map_err(|e| self.io("chmod", &display(&comps[..=i]), e))?;
                    }
                    rustix::fs::openat(&current, comp.as_os_str(), flags, Mode::empty())
                        .map_err(|e| self.io("open", &display(&comps[..=i]), e))?
                }
                Err(Errno::NOTDIR) | Err(Errno::LOOP) | Err(Errno::NOENT) => {
                    let what = match rustix::fs::statat(
                        &current,
                        comp.as_os_str(),
                        AtFlags::SYMLINK_NOFOLLOW,
                    ) {
                        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                            "is a symlink; refusing to write through it"
                        }
                        Ok(_) => "is not a directory",
                        Err(_) => "does not exist",
                    };
                    return Err(
                        self.unsafe_entry(entry, format!("{} {what}", display(&comps[..=i])))
                    );
                }
                Err(e) => return Err(self.io("open", &display(&comps[..=i]), e)),
            };
            // O_PATH|O_NOFOLLOW can open a symlink itself; make sure it is a
            // directory before walking on.
            let st = rustix::fs::fstat(&next).map_err(|e| self.io("stat", entry, e))?;
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                return Err(self.unsafe_entry(
                    entry,
                    format!(
                        "{} is a symlink; refusing to write through it",
                        display(&comps[..=i])
                    ),
                ));
            }
            current = next;
        }
        Ok(current)
    }

    /// Looks `comps` up in the lower layers, top first, never following
    /// symlinks.
    fn lower_kind(&self, comps: &[OsString]) -> Lower {
        'lowers: for lower in self.lowers() {
            let Ok(mut dir) = rustix::fs::open(
                lower,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            let (last, parents) = match comps.split_last() {
                Some(x) => x,
                None => return Lower::Missing,
            };
            for comp in parents {
                match rustix::fs::openat(
                    &dir,
                    comp.as_os_str(),
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => dir = fd,
                    Err(Errno::NOENT) => continue 'lowers,
                    // A non-directory here hides everything below it.
                    Err(_) => return Lower::Missing,
                }
            }
            match rustix::fs::statat(&dir, last.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Err(_) => continue,
                Ok(st) => {
                    return match FileType::from_raw_mode(st.st_mode) {
                        FileType::Directory => Lower::Dir {
                            mode: st.st_mode,
                            uid: st.st_uid,
                            gid: st.st_gid,
                        },
                        FileType::Symlink => Lower::Symlink,
                        FileType::CharacterDevice if st.st_rdev == 0 => Lower::Missing,
                        FileType::RegularFile
                            if st.st_size == 0
                                && crate::whiteout::has_whiteout_xattr(
                                    &proc_fd_path(&dir).join(last),
                                ) =>
                        {
                            Lower::Missing
                        }
                        _ => Lower::Other,
                    }
                }
            }
        }
        Lower::Missing
    }

    /// Removes whatever is at `name` unless it is a directory and
    /// `keep_dir`.
    fn clear(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        keep_dir: bool,
        entry: &str,
    ) -> Result<Cleared> {
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(Cleared::Absent),
            Err(e) => Err(self.io("stat", entry, e)),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                if keep_dir {
                    return Ok(Cleared::KeptDir);
                }
                // Through /proc/self/fd the parent is pinned; kiln_tree
                // follows no symlink inside, and opens directories an
                // earlier entry left without their owner's rights.
                let path = proc_path(parent, name);
                kiln_tree::remove_tree(&path).map_err(|e| self.io("remove", entry, e.source))?;
                Ok(Cleared::Removed)
            }
            Ok(_) => {
                rustix::fs::unlinkat(parent, name, AtFlags::empty())
                    .map_err(|e| self.io("remove", entry, e))?;
                Ok(Cleared::Removed)
            }
        }
    }

    /// The lower layers a layer is unpacked onto (none for an archive,
    /// whose target knows its own).
    fn lowers(&self) -> &[PathBuf] {
        match &self.kind {
            Kind::Layer { lowers, .. } => lowers,
            Kind::Archive { .. } => &[],
        }
    }

    /// Whether the layers below show a directory at `path` (below the root).
    fn dir_below(&self, path: &[OsString]) -> bool {
        match &self.kind {
            Kind::Layer { .. } => matches!(self.lower_kind(path), Lower::Dir { .. }),
            Kind::Archive { target, .. } => target.dir_below(path),
        }
    }

    /// Checks what an archive's target answered: clean, and inside the
    /// destination directory.
    fn confined(&self, resolved: Vec<OsString>, entry: &str) -> Result<Vec<OsString>> {
        let Kind::Archive { into, .. } = &self.kind else {
            return Ok(resolved);
        };
        if !is_clean(&resolved) || !resolved.starts_with(into) {
            return Err(self.breakout(entry));
        }
        Ok(resolved)
    }

    /// Opens the directory an entry goes in (`parent`: its components as
    /// named in the tar): for a layer, walked and created here; for an
    /// archive, resolved and made by the target. Returns it with its path
    /// below the root.
    fn parent_dir(&self, parent: &[OsString], entry: &str) -> Result<(OwnedFd, Vec<OsString>)> {
        match &self.kind {
            Kind::Layer { .. } => Ok((self.open_dir(parent, true, entry)?, parent.to_vec())),
            Kind::Archive { target, .. } => {
                let resolved = target.directory(parent).map_err(|e| {
                    // Nothing to make the entry in (a symlink to nothing):
                    // said of the entry, as BuildKit's untar fails on it.
                    let no_place = e
                        .get_ref()
                        .is_some_and(|inner| inner.is::<NoPlaceForEntry>());
                    if no_place {
                        self.tar_err(entry, e)
                    } else {
                        self.io("resolve", &display(parent), e)
                    }
                })?;
                let resolved = self.confined(resolved, entry)?;
                Ok((self.open_dir(&resolved, false, entry)?, resolved))
            }
        }
    }

    /// The tar's name for an entry, or a link's target (`link`), as this
    /// mode reads names: a layer's as it is; an archive's (ADD) only when
    /// it is UTF-8, the paths of a build step's root filesystem being
    /// strings (an image layer keeps any name: its snapshot is written as
    /// the tar says). `shown` names the entry in the error.
    fn name_bytes(&self, raw: &[u8], shown: &str, link: bool) -> Result<Vec<u8>> {
        if self.is_archive() && std::str::from_utf8(raw).is_err() {
            let what = match link {
                true => format!("its link target {:?}", String::from_utf8_lossy(raw)),
                false => "its name".to_string(),
            };
            return Err(self.unsupported(
                shown,
                format!(
                    "{what} is not UTF-8, which kiln cannot copy into a build step yet; \
                     rename it in the archive"
                ),
            ));
        }
        Ok(raw.to_vec())
    }

    /// Writes one entry of the tar: a whiteout, the root's metadata, or a
    /// file, directory, link or node in its parent directory.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader) {
            return Ok(());
        }
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let raw_path = self.name_bytes(&raw_path, &shown, false)?;
        let comps = self.components(&raw_path, &shown)?;
        let attrs = self.attrs(entry, &shown)?;
        self.stats.entries += 1;
        let Some((name, parent_comps)) = comps.split_last() else {
            return self.root_entry(kind, &attrs, &raw_path, &shown);
        };
        let name_str = name.to_string_lossy();
        let overlay_whiteouts = matches!(
            self.kind,
            Kind::Layer {
                whiteouts: Whiteouts::Overlay,
                ..
            }
        );
        if overlay_whiteouts && name_str.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(parent_comps, name, &name_str, &shown);
        }
        let (parent, parent_path) = self.parent_dir(parent_comps, &shown)?;
        let mut path = parent_path;
        path.push(name.clone());
        let place = Place {
            shown: &shown,
            parent: &parent,
            name,
            path,
        };
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.write_file(entry, &place, &attrs)
            }
            tar::EntryType::Directory => self.make_dir(place, &attrs),
            tar::EntryType::Symlink => self.make_symlink(entry, &place, &attrs),
            tar::EntryType::Link => self.make_hardlink(entry, &place, &attrs),
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                self.make_node(entry.header(), &place, &attrs)
            }
            other => Err(self.unsupported(&shown, format!("unsupported tar entry type {other:?}"))),
        }
    }

    /// The components of an entry's name below the root, as this mode
    /// cleans names (refusing the unsafe ones).
    fn components(&self, raw_path: &[u8], shown: &str) -> Result<Vec<OsString>> {
        match &self.kind {
            Kind::Layer { .. } => {
                clean_components(raw_path).map_err(|why| self.unsafe_entry(shown, why))
            }
            Kind::Archive { .. } => archive_components(raw_path)
                .map_err(|NulInName| self.unsafe_entry(shown, "NUL byte in name")),
        }
    }

    /// The owner, mode, mtime and xattrs an entry gets: its header's (an
    /// empty numeric field reads as 0), or an archive's fixed owner.
    fn attrs<R: Read>(&self, entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<Attrs> {
        let header = entry.header();
        let old = header.as_old();
        let (uid, gid) = match &self.kind {
            Kind::Archive {
                owner: Some(owner), ..
            } => *owner,
            _ => {
                let uid = lenient(header.uid(), &old.uid).map_err(|e| self.tar_err(shown, e))?;
                let gid = lenient(header.gid(), &old.gid).map_err(|e| self.tar_err(shown, e))?;
                match (u32::try_from(uid), u32::try_from(gid)) {
                    (Ok(u), Ok(g)) if u != u32::MAX && g != u32::MAX => (u, g),
                    _ => return Err(self.unsafe_entry(shown, "uid or gid out of range")),
                }
            }
        };
        let mode = lenient(header.mode(), &old.mode).map_err(|e| self.tar_err(shown, e))? & 0o7777;
        let mtime = lenient(header.mtime(), &old.mtime).map_err(|e| self.tar_err(shown, e))?;
        let xattrs = self.xattrs(entry, shown)?;
        Ok(Attrs {
            uid,
            gid,
            mode,
            mtime,
            xattrs,
        })
    }

    /// An entry naming the root (`./`): a layer's, a directory, sets the
    /// root's metadata. An archive's entry named `.` once cleaned (`./`,
    /// `a/..`) is skipped, the destination keeping its own metadata; a
    /// directory whose name climbs to the destination (`../`, `/`,
    /// `a/../..`) gives it its owner, mode and mtime (not its xattrs):
    /// go-archive v0.2.0's `Unpack`, which BuildKit vendors, skips only the
    /// name `.`, and merges a directory into the one there (docker 20.10's
    /// BuildKit does so for `../`; go-archive v0.3 refuses `../`). An
    /// archive's non-directory that climbs to the destination is refused:
    /// BuildKit's untar removes everything in the destination for it, then
    /// fails.
    fn root_entry(
        &mut self,
        kind: tar::EntryType,
        attrs: &Attrs,
        raw_path: &[u8],
        shown: &str,
    ) -> Result<()> {
        if let Kind::Archive { into, .. } = &self.kind {
            // Whatever it is (go-archive v0.2.0, which BuildKit vendors).
            if go_cleans_to_dot(raw_path) {
                return Ok(());
            }
            if !kind.is_dir() {
                return Err(
                    self.unsafe_entry(shown, "names the destination itself but is not a directory")
                );
            }
            let into = into.to_vec();
            let path = self.open_dir(&into, false, shown)?;
            let dir = rustix::fs::openat(
                &path,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| self.io("open", shown, e))?;
            self.set_owner_mode_fd(&dir, attrs.uid, attrs.gid, attrs.mode, shown)?;
            self.dir_times.push((into, attrs.mtime));
            return Ok(());
        }
        if !kind.is_dir() {
            return Err(self.unsafe_entry(shown, "names the layer root but is not a directory"));
        }
        let root = rustix::fs::openat(
            &self.root,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io("open", ".", e))?;
        self.set_owner_mode_fd(&root, attrs.uid, attrs.gid, attrs.mode, shown)?;
        self.dir_times.push((Vec::new(), attrs.mtime));
        Ok(())
    }

    /// An OCI whiteout in a layer unpacked for overlay: the opaque marker
    /// makes its directory opaque, `.wh.NAME` becomes an overlay whiteout
    /// (a 0/0 character device) `NAME`, aufs bookkeeping is skipped.
    fn whiteout(
        &mut self,
        parent_comps: &[OsString],
        name: &OsStr,
        name_str: &str,
        shown: &str,
    ) -> Result<()> {
        let parent = self.open_dir(parent_comps, true, shown)?;
        self.stats.whiteouts += 1;
        if name_str == OPAQUE_MARKER {
            crate::whiteout::set_opaque(&proc_fd_path(&parent))
                .map_err(|e| self.io("set opaque xattr", shown, e))?;
            return Ok(());
        }
        if name_str.starts_with(".wh..wh.") {
            // aufs bookkeeping (.wh..wh.plnk and friends): not content.
            return Ok(());
        }
        let target = &name.as_bytes()[WHITEOUT_PREFIX.len()..];
        if target.is_empty() || target == b"." || target == b".." {
            return Err(self.unsafe_entry(shown, "whiteout of an invalid name"));
        }
        let target = OsStr::from_bytes(target);
        self.clear(&parent, target, false, shown)?;
        crate::whiteout::make_whiteout_at(&parent, target)
            .map_err(|e| self.io("create whiteout", shown, e))?;
        Ok(())
    }

    /// A regular file: created new (whatever had its name removed), its
    /// content written, then its owner, mode, xattrs and mtime set.
    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        place: &Place<'_>,
        attrs: &Attrs,
    ) -> Result<()> {
        let (parent, name, shown) = (place.parent, place.name, place.shown);
        self.clear(parent, name, false, shown)?;
        let fd = rustix::fs::openat(
            parent,
            name.as_os_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.io("create", shown, e))?;
        let mut file = File::from(fd);
        // A failed write (ENOSPC, EDQUOT) is the file's, not the tar's: it
        // is named as such, with the OS error.
        let n = copy_entry(entry, &mut file).map_err(|e| match e {
            Failed::Reading(e) => self.tar_err(shown, e),
            Failed::Writing(e) => self.io("write", shown, e),
        })?;
        self.stats.bytes += n;
        self.set_owner_mode_fd(file.as_fd(), attrs.uid, attrs.gid, attrs.mode, shown)?;
        for (k, v) in &attrs.xattrs {
            set_xattr_checked(
                self,
                rustix::fs::fsetxattr(&file, k.as_str(), v, XattrFlags::empty()),
                k,
                shown,
            )?;
        }
        rustix::fs::futimens(&file, &times(attrs.mtime))
            .map_err(|e| self.io("set mtime", shown, e))?;
        if matches!(
            self.kind,
            Kind::Layer {
                write_back: true,
                ..
            }
        ) && n > 0
        {
            // The writeback thread gets a read-only descriptor: a writable
            // one held past the unpack would make an exec of the file fail
            // (ETXTBSY). Where it cannot be opened so (a mode that denies
            // reading to a user without privileges), hinted here.
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rustix::fs::openat(parent, name.as_os_str(), flags, Mode::empty()) {
                Ok(read_only) => crate::writeback::later(File::from(read_only)),
                Err(_) => crate::writeback::start(&file, 0, 0),
            }
        }
        Ok(())
    }

    /// A directory: made unless one is there (anything else there is
    /// removed), then its owner, mode and xattrs set; its mtime is set at
    /// the end.
    fn make_dir(&mut self, place: Place<'_>, attrs: &Attrs) -> Result<()> {
        let (parent, name, shown) = (place.parent, place.name, place.shown);
        let cleared = self.clear(parent, name, true, shown)?;
        if cleared != Cleared::KeptDir {
            rustix::fs::mkdirat(parent, name.as_os_str(), Mode::from_raw_mode(0o700))
                .map_err(|e| self.io("mkdir", shown, e))?;
        }
        let dir = rustix::fs::openat(
            parent,
            name.as_os_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io("open", shown, e))?;
        if cleared == Cleared::Removed && self.dir_below(&place.path) {
            // It replaced something that hid a lower directory: that one
            // stays hidden.
            crate::whiteout::set_opaque(&proc_fd_path(&dir))
                .map_err(|e| self.io("set opaque xattr", shown, e))?;
        }
        self.set_owner_mode_fd(&dir, attrs.uid, attrs.gid, attrs.mode, shown)?;
        for (k, v) in &attrs.xattrs {
            set_xattr_checked(
                self,
                rustix::fs::fsetxattr(&dir, k.as_str(), v, XattrFlags::empty()),
                k,
                shown,
            )?;
        }
        self.dir_times.push((place.path, attrs.mtime));
        Ok(())
    }

    /// A symlink (an archive's may not point out of the destination), its
    /// owner and mtime set.
    fn make_symlink<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        place: &Place<'_>,
        attrs: &Attrs,
    ) -> Result<()> {
        let (parent, name, shown) = (place.parent, place.name, place.shown);
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| self.unsafe_entry(shown, "symlink without a target"))?;
        // Written as the archive has it, whatever it points at: untarred
        // chrooted into the destination (BuildKit), a target that climbs
        // is inside it there, and it is resolved in the image, where it is
        // the image's. Nothing later is written through it (entries'
        // directories are resolved inside the destination).
        let target = self.name_bytes(&target, shown, true)?;
        self.clear(parent, name, false, shown)?;
        rustix::fs::symlinkat(OsStr::from_bytes(&target), parent, name.as_os_str())
            .map_err(|e| self.io("symlink", shown, e))?;
        if self.preserve_owners {
            chown_at(parent, name, attrs.uid, attrs.gid).map_err(|e| self.io("chown", shown, e))?;
        }
        rustix::fs::utimensat(
            parent,
            name.as_os_str(),
            &times(attrs.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io("set mtime", shown, e))
    }

    /// A hardlink to a non-directory already in the layer (or, for an
    /// archive, anywhere in the destination).
    fn make_hardlink<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        place: &Place<'_>,
        attrs: &Attrs,
    ) -> Result<()> {
        let (parent, name, shown) = (place.parent, place.name, place.shown);
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| self.unsafe_entry(shown, "hardlink without a target"))?;
        let target = self.name_bytes(&target, shown, true)?;
        let target_comps = self.link_target(&target, shown)?;
        let Some((target_name, target_parent)) = target_comps.split_last() else {
            return Err(self.unsafe_entry(shown, "hardlink to the root"));
        };
        if target_comps == place.path {
            return Err(self.unsafe_entry(shown, "hardlink to itself"));
        }
        let not_a_file = || {
            self.unsafe_entry(
                shown,
                format!(
                    "hardlink target {} is not a file in this {}",
                    display(&target_comps),
                    if self.is_archive() {
                        "archive's destination"
                    } else {
                        "layer"
                    }
                ),
            )
        };
        let target_dir = self
            .open_dir(target_parent, false, shown)
            .map_err(|_| not_a_file())?;
        let target_type = match rustix::fs::statat(
            &target_dir,
            target_name.as_os_str(),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {
                FileType::from_raw_mode(st.st_mode)
            }
            _ => return Err(not_a_file()),
        };
        self.clear(parent, name, false, shown)?;
        rustix::fs::linkat(
            &target_dir,
            target_name.as_os_str(),
            parent,
            name.as_os_str(),
            AtFlags::empty(),
        )
        .map_err(|e| self.io("hardlink", shown, e))?;
        self.hardlink_attrs(place, attrs, target_type == FileType::Symlink)
    }

    /// The link entry's own owner, xattrs, mode and mtime, set on the inode
    /// it shares with its target, as containerd's and go-archive's untar
    /// set them after the link (a tar writer gives both entries the same,
    /// a hand-made tar may not). A link to a symlink takes the owner only:
    /// no lchmod, no times through it (go-archive), and no xattrs, which a
    /// symlink entry of its own does not get either here (the kernel
    /// refuses `user.*` on a symlink; the references skip that error).
    fn hardlink_attrs(&self, place: &Place<'_>, attrs: &Attrs, to_symlink: bool) -> Result<()> {
        let (parent, name, shown) = (place.parent, place.name, place.shown);
        if !to_symlink {
            return self.set_attrs_at(parent, name, attrs, shown);
        }
        if self.preserve_owners {
            chown_at(parent, name, attrs.uid, attrs.gid).map_err(|e| self.io("chown", shown, e))?;
        }
        Ok(())
    }

    /// Sets the owner (when owners are preserved), xattrs, exact mode and
    /// mtime of the non-symlink `name` in `parent`, in go-archive's order
    /// (the chown first: it clears setuid bits and `security.capability`,
    /// which the mode and the xattrs then set).
    fn set_attrs_at(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        attrs: &Attrs,
        shown: &str,
    ) -> Result<()> {
        if self.preserve_owners {
            chown_at(parent, name, attrs.uid, attrs.gid).map_err(|e| self.io("chown", shown, e))?;
        }
        let node = proc_path(parent, name);
        for (k, v) in &attrs.xattrs {
            set_xattr_checked(
                self,
                rustix::fs::lsetxattr(&node, k.as_str(), v, XattrFlags::empty()),
                k,
                shown,
            )?;
        }
        rustix::fs::chmodat(
            parent,
            name,
            Mode::from_raw_mode(attrs.mode),
            AtFlags::empty(),
        )
        .map_err(|e| self.io("chmod", shown, e))?;
        rustix::fs::utimensat(parent, name, &times(attrs.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.io("set mtime", shown, e))
    }

    /// A character or block device or a fifo, with its exact mode, owner,
    /// xattrs and mtime.
    fn make_node(&mut self, header: &tar::Header, place: &Place<'_>, attrs: &Attrs) -> Result<()> {
        let (parent, name, shown) = (place.parent, place.name, place.shown);
        let file_type = match header.entry_type() {
            tar::EntryType::Char => FileType::CharacterDevice,
            tar::EntryType::Block => FileType::BlockDevice,
            _ => FileType::Fifo,
        };
        // FIFOs carry no device numbers (and some writers leave the fields
        // empty).
        let (major, minor) = if file_type == FileType::Fifo {
            (0, 0)
        } else {
            (
                header
                    .device_major()
                    .map_err(|e| self.tar_err(shown, e))?
                    .unwrap_or(0),
                header
                    .device_minor()
                    .map_err(|e| self.tar_err(shown, e))?
                    .unwrap_or(0),
            )
        };
        self.clear(parent, name, false, shown)?;
        let mode = Mode::from_raw_mode(attrs.mode);
        rustix::fs::mknodat(
            parent,
            name.as_os_str(),
            file_type,
            mode,
            rustix::fs::makedev(major, minor),
        )
        .map_err(|e| self.io("mknod", shown, e))?;
        // mknod applies the umask: the exact mode is set with the rest.
        self.set_attrs_at(parent, name, attrs, shown)
    }

    /// Where a hardlink's target (`raw`, as the tar names it) is, below the
    /// root: in this layer for a layer; anywhere in the destination for an
    /// archive, brought under the root by the target.
    fn link_target(&self, raw: &[u8], shown: &str) -> Result<Vec<OsString>> {
        match &self.kind {
            Kind::Layer { .. } => clean_components(raw)
                .map_err(|why| self.unsafe_entry(shown, format!("hardlink target: {why}"))),
            Kind::Archive { target, .. } => {
                let comps = archive_components(raw).map_err(|NulInName| {
                    self.unsafe_entry(shown, "hardlink target: NUL byte in name")
                })?;
                if comps.is_empty() {
                    return Ok(comps);
                }
                match target
                    .link_target(&comps)
                    .map_err(|e| self.io("resolve", &display(&comps), e))?
                {
                    Some(resolved) => self.confined(resolved, shown),
                    None => Err(self.unsafe_entry(
                        shown,
                        format!(
                            "hardlink target {} is not a file in this archive's destination",
                            display(&comps)
                        ),
                    )),
                }
            }
        }
    }

    fn xattrs<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        let Some(exts) = entry.pax_extensions().map_err(|e| self.tar_err(shown, e))? else {
            return Ok(out);
        };
        for ext in exts {
            let ext = ext.map_err(|e| self.tar_err(shown, e))?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                // Overlay's own attributes would change what the mount shows
                // (opacity, redirects); a tar may not set them directly.
                if name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.") {
                    tracing::warn!(tar = %self.label, entry = shown, xattr = name, "ignoring overlay xattr");
                    continue;
                }
                out.push((name.to_string(), ext.value_bytes().to_vec()));
            }
        }
        Ok(out)
    }

    fn set_owner_mode_fd(
        &self,
        fd: impl AsFd,
        uid: u32,
        gid: u32,
        mode: u32,
        shown: &str,
    ) -> Result<()> {
        if self.preserve_owners {
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| self.io("chown", shown, e))?;
        }
        // After chown, which clears set-id bits.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| self.io("chmod", shown, e))
    }

    fn finish(&mut self) -> Result<()> {
        // Deepest first, so setting a child's time cannot disturb a parent's.
        let mut dirs = std::mem::take(&mut self.dir_times);
        dirs.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
        for (comps, mtime) in dirs {
            let shown = display(&comps);
            // A later entry may have replaced the directory with a file.
            let Ok(dir) = self.open_dir(&comps, false, &shown) else {
                continue;
            };
            // An O_PATH fd cannot be futimens()ed; its /proc link can.
            rustix::fs::utimensat(
                rustix::fs::CWD,
                proc_fd_path(&dir),
                &times(mtime),
                AtFlags::empty(),
            )
            .map_err(|e| self.io("set mtime", &shown, e))?;
        }
        Ok(())
    }
}

/// A numeric header field left empty (all NUL or spaces) reads as 0, as in
/// Go's archive/tar, which wrote many of the layers out there.
fn lenient<T: Default>(parsed: io::Result<T>, raw: &[u8]) -> io::Result<T> {
    match parsed {
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(T::default()),
        other => other,
    }
}

fn set_xattr_checked(
    u: &Unpacker<'_>,
    r: rustix::io::Result<()>,
    name: &str,
    shown: &str,
) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        // A filesystem without xattr support (or this namespace of them):
        // Docker warns and goes on too.
        Err(Errno::OPNOTSUPP) => {
            tracing::warn!(
                entry = shown,
                xattr = name,
                "xattr not supported here; skipped"
            );
            Ok(())
        }
        Err(e) => Err(u.io("set xattr", shown, errno_io(e))),
    }
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime.min(i64::MAX as u64) as i64,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn chown_at(parent: &OwnedFd, name: &OsStr, uid: u32, gid: u32) -> rustix::io::Result<()> {
    rustix::fs::chownat(
        parent,
        name,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
}

fn proc_fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn proc_path(parent: &OwnedFd, name: &OsStr) -> PathBuf {
    proc_fd_path(parent).join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(raw: &str) -> Result<String, NulInName> {
        archive_components(raw.as_bytes()).map(|c| display(&c))
    }

    #[test]
    fn only_names_go_cleans_to_dot_are_the_destination_left_alone() {
        for name in ["./", ".", "a/..", "./a/../", "a/b/../.."] {
            assert!(go_cleans_to_dot(name.as_bytes()), "{name}");
        }
        for name in ["../", "..", "/", "a/../..", "../a/..", "/./"] {
            assert!(!go_cleans_to_dot(name.as_bytes()), "{name}");
        }
    }

    /// Joined to the destination as `filepath.Join("/", name)` inside
    /// BuildKit's chroot: `..` stops at the destination, relative names
    /// and absolute ones alike.
    #[test]
    fn archive_names_clean_as_go_and_stop_at_the_destination() {
        assert_eq!(names("a/./b//c/"), Ok("a/b/c".into()));
        assert_eq!(names("a/../b"), Ok("b".into()));
        assert_eq!(names("/etc/x"), Ok("etc/x".into()));
        assert_eq!(names("/../x"), Ok("x".into()));
        assert_eq!(names("../x"), Ok("x".into()));
        assert_eq!(names("a/../../x"), Ok("x".into()));
        assert_eq!(names("../../"), Ok("".into()));
        assert_eq!(names("a\0b"), Err(NulInName));
    }

    #[test]
    fn layer_names_refuse_absolute_and_dotdot() {
        assert!(clean_components(b"/x").is_err());
        assert!(clean_components(b"a/../b").is_err());
        assert_eq!(
            display(&clean_components(b"./a//b/").unwrap()),
            "a/b".to_string()
        );
    }
}
