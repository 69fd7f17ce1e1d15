//! Unpacking a layer tar into a directory, safely.
//!
//! Every path is resolved component by component from a directory fd with
//! `O_NOFOLLOW`, so nothing is ever written outside the destination: names
//! with `..` or a leading `/` are refused, and so is any entry whose parent
//! path goes through a symlink — whether an earlier entry of the same layer
//! planted it or a lower layer did (lower layers are consulted when a parent
//! directory has to be created). Hardlink targets are resolved the same way
//! and must already exist in this layer.
//!
//! OCI whiteouts become overlay whiteouts: `.wh.NAME` → a 0/0 character
//! device `NAME`, `.wh..wh..opq` → `trusted.overlay.opaque=y` on the parent,
//! so a stack of unpacked layers mounts as overlay lower dirs.

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
    /// Keep them as ordinary files (extracting an arbitrary tar, e.g. `ADD`).
    AsFiles,
}

/// How to unpack.
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
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            whiteouts: Whiteouts::Overlay,
            lowers: Vec::new(),
            // SAFETY: geteuid cannot fail.
            preserve_owners: unsafe { libc::geteuid() } == 0,
            label: "layer".into(),
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

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Unpacks the uncompressed tar stream `tar` into `dest` (an existing
/// directory). The stream is read up to the tar end marker; a caller hashing
/// it should drain the rest.
pub fn unpack(tar: impl Read, dest: &Path, options: &UnpackOptions) -> Result<UnpackStats> {
    let root = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open", dest, e.into()))?;
    let mut unpacker = Unpacker {
        root,
        options,
        dir_times: Vec::new(),
        stats: UnpackStats::default(),
    };
    let mut archive = tar::Archive::new(tar);
    let tar_err = |source: io::Error| Error::Tar {
        layer: options.label.clone(),
        source,
    };
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        unpacker.entry(&mut entry)?;
    }
    unpacker.finish()?;
    Ok(unpacker.stats)
}

struct Unpacker<'o> {
    root: OwnedFd,
    options: &'o UnpackOptions,
    /// Directory mtimes, set last (creating children changes them).
    dir_times: Vec<(Vec<OsString>, u64)>,
    stats: UnpackStats,
}

/// Splits a tar name into clean components; `Err` says why it is unsafe.
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

fn display(comps: &[OsString]) -> String {
    let parts: Vec<_> = comps.iter().map(|c| c.to_string_lossy()).collect();
    parts.join("/")
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

fn errno_io(e: Errno) -> io::Error {
    e.into()
}

impl Unpacker<'_> {
    fn unsafe_entry(&self, entry: &str, reason: impl Into<String>) -> Error {
        Error::UnsafeEntry {
            layer: self.options.label.clone(),
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }

    fn io(&self, op: &'static str, path: &str, e: impl Into<io::Error>) -> Error {
        Error::io(
            op,
            PathBuf::from(format!("{}: {path}", self.options.label)),
            e.into(),
        )
    }

    /// Opens the directory at `comps` without following any symlink,
    /// creating missing directories when `create`.
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
                        if self.options.preserve_owners {
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
        'lowers: for lower in &self.options.lowers {
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
                        _ => Lower::Other,
                    }
                }
            }
        }
        Lower::Missing
    }

    /// Removes whatever is at `name` unless it is a directory and
    /// `keep_dir`; returns whether a directory remains.
    fn clear(&self, parent: &OwnedFd, name: &OsStr, keep_dir: bool, entry: &str) -> Result<bool> {
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(self.io("stat", entry, e)),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                if keep_dir {
                    return Ok(true);
                }
                // Through /proc/self/fd the parent is pinned; std's
                // remove_dir_all never follows symlinks inside.
                let path = proc_path(parent, name);
                std::fs::remove_dir_all(&path).map_err(|e| self.io("remove", entry, e))?;
                Ok(false)
            }
            Ok(_) => {
                rustix::fs::unlinkat(parent, name, AtFlags::empty())
                    .map_err(|e| self.io("remove", entry, e))?;
                Ok(false)
            }
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let comps = clean_components(&raw_path).map_err(|why| self.unsafe_entry(&shown, why))?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader) {
            return Ok(());
        }
        let old = header.as_old();
        let uid = lenient(header.uid(), &old.uid).map_err(|e| self.tar_err(&shown, e))?;
        let gid = lenient(header.gid(), &old.gid).map_err(|e| self.tar_err(&shown, e))?;
        let (uid, gid) = match (u32::try_from(uid), u32::try_from(gid)) {
            (Ok(u), Ok(g)) if u != u32::MAX && g != u32::MAX => (u, g),
            _ => return Err(self.unsafe_entry(&shown, "uid or gid out of range")),
        };
        let mode = lenient(header.mode(), &old.mode).map_err(|e| self.tar_err(&shown, e))? & 0o7777;
        let mtime = lenient(header.mtime(), &old.mtime).map_err(|e| self.tar_err(&shown, e))?;
        let xattrs = self.xattrs(entry, &shown)?;
        self.stats.entries += 1;

        let Some((name, parent_comps)) = comps.split_last() else {
            // The layer's root ("./"): only its metadata applies.
            if kind.is_dir() {
                let root = rustix::fs::openat(
                    &self.root,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.io("open", ".", e))?;
                self.set_owner_mode_fd(&root, uid, gid, mode, &shown)?;
                self.dir_times.push((Vec::new(), mtime));
                return Ok(());
            }
            return Err(self.unsafe_entry(&shown, "names the layer root but is not a directory"));
        };
        let name_str = name.to_string_lossy();

        if self.options.whiteouts == Whiteouts::Overlay && name_str.starts_with(WHITEOUT_PREFIX) {
            let parent = self.open_dir(parent_comps, true, &shown)?;
            self.stats.whiteouts += 1;
            if name_str == OPAQUE_MARKER {
                rustix::fs::setxattr(
                    proc_fd_path(&parent),
                    OVERLAY_OPAQUE_XATTR,
                    b"y",
                    XattrFlags::empty(),
                )
                .map_err(|e| self.io("set opaque xattr", &shown, e))?;
                return Ok(());
            }
            if name_str.starts_with(".wh..wh.") {
                // aufs bookkeeping (.wh..wh.plnk and friends): not content.
                return Ok(());
            }
            let target = &name.as_bytes()[WHITEOUT_PREFIX.len()..];
            if target.is_empty() || target == b"." || target == b".." {
                return Err(self.unsafe_entry(&shown, "whiteout of an invalid name"));
            }
            let target = OsStr::from_bytes(target);
            self.clear(&parent, target, false, &shown)?;
            rustix::fs::mknodat(
                &parent,
                target,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| self.io("create whiteout", &shown, e))?;
            return Ok(());
        }

        let parent = self.open_dir(parent_comps, true, &shown)?;
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.clear(&parent, name, false, &shown)?;
                let fd = rustix::fs::openat(
                    &parent,
                    name.as_os_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.io("create", &shown, e))?;
                let mut file = File::from(fd);
                // A failed write (ENOSPC, EDQUOT) is the file's, not the
                // tar's: it is named as such, with the OS error.
                let n = copy_entry(entry, &mut file).map_err(|e| match e {
                    Failed::Reading(e) => self.tar_err(&shown, e),
                    Failed::Writing(e) => self.io("write", &shown, e),
                })?;
                self.stats.bytes += n;
                self.set_owner_mode_fd(file.as_fd(), uid, gid, mode, &shown)?;
                for (k, v) in &xattrs {
                    set_xattr_checked(
                        self,
                        rustix::fs::fsetxattr(&file, k.as_str(), v, XattrFlags::empty()),
                        k,
                        &shown,
                    )?;
                }
                rustix::fs::futimens(&file, &times(mtime))
                    .map_err(|e| self.io("set mtime", &shown, e))?;
            }
            tar::EntryType::Directory => {
                if !self.clear(&parent, name, true, &shown)? {
                    rustix::fs::mkdirat(&parent, name.as_os_str(), Mode::from_raw_mode(0o700))
                        .map_err(|e| self.io("mkdir", &shown, e))?;
                }
                let dir = rustix::fs::openat(
                    &parent,
                    name.as_os_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.io("open", &shown, e))?;
                self.set_owner_mode_fd(&dir, uid, gid, mode, &shown)?;
                for (k, v) in &xattrs {
                    set_xattr_checked(
                        self,
                        rustix::fs::fsetxattr(&dir, k.as_str(), v, XattrFlags::empty()),
                        k,
                        &shown,
                    )?;
                }
                self.dir_times.push((comps.clone(), mtime));
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&shown, "symlink without a target"))?
                    .into_owned();
                self.clear(&parent, name, false, &shown)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent, name.as_os_str())
                    .map_err(|e| self.io("symlink", &shown, e))?;
                if self.options.preserve_owners {
                    chown_at_nofollow(&parent, name, uid, gid)
                        .map_err(|e| self.io("chown", &shown, e))?;
                }
                rustix::fs::utimensat(
                    &parent,
                    name.as_os_str(),
                    &times(mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| self.io("set mtime", &shown, e))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&shown, "hardlink without a target"))?
                    .into_owned();
                let target_comps = clean_components(&target)
                    .map_err(|why| self.unsafe_entry(&shown, format!("hardlink target: {why}")))?;
                let Some((target_name, target_parent)) = target_comps.split_last() else {
                    return Err(self.unsafe_entry(&shown, "hardlink to the layer root"));
                };
                if target_comps == comps {
                    return Err(self.unsafe_entry(&shown, "hardlink to itself"));
                }
                let target_dir = self.open_dir(target_parent, false, &shown).map_err(|_| {
                    self.unsafe_entry(
                        &shown,
                        format!(
                            "hardlink target {} is not a file in this layer",
                            display(&target_comps)
                        ),
                    )
                })?;
                match rustix::fs::statat(
                    &target_dir,
                    target_name.as_os_str(),
                    AtFlags::SYMLINK_NOFOLLOW,
                ) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {}
                    _ => {
                        return Err(self.unsafe_entry(
                            &shown,
                            format!(
                                "hardlink target {} is not a file in this layer",
                                display(&target_comps)
                            ),
                        ))
                    }
                }
                self.clear(&parent, name, false, &shown)?;
                rustix::fs::linkat(
                    &target_dir,
                    target_name.as_os_str(),
                    &parent,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| self.io("hardlink", &shown, e))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let file_type = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                // FIFOs carry no device numbers (and some writers leave the
                // fields empty).
                let (major, minor) = if file_type == FileType::Fifo {
                    (0, 0)
                } else {
                    (
                        header
                            .device_major()
                            .map_err(|e| self.tar_err(&shown, e))?
                            .unwrap_or(0),
                        header
                            .device_minor()
                            .map_err(|e| self.tar_err(&shown, e))?
                            .unwrap_or(0),
                    )
                };
                self.clear(&parent, name, false, &shown)?;
                rustix::fs::mknodat(
                    &parent,
                    name.as_os_str(),
                    file_type,
                    Mode::from_raw_mode(mode),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(|e| self.io("mknod", &shown, e))?;
                if self.options.preserve_owners {
                    chown_at_nofollow(&parent, name, uid, gid)
                        .map_err(|e| self.io("chown", &shown, e))?;
                }
                // mknod applies the umask; set the exact mode afterwards.
                rustix::fs::chmodat(
                    &parent,
                    name.as_os_str(),
                    Mode::from_raw_mode(mode),
                    AtFlags::empty(),
                )
                .map_err(|e| self.io("chmod", &shown, e))?;
                let path = proc_path(&parent, name);
                for (k, v) in &xattrs {
                    set_xattr_checked(
                        self,
                        rustix::fs::lsetxattr(&path, k.as_str(), v, XattrFlags::empty()),
                        k,
                        &shown,
                    )?;
                }
                rustix::fs::utimensat(
                    &parent,
                    name.as_os_str(),
                    &times(mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| self.io("set mtime", &shown, e))?;
            }
            other => {
                return Err(Error::BadLayer {
                    layer: self.options.label.clone(),
                    reason: format!("entry {shown:?}: unsupported tar entry type {other:?}"),
                })
            }
        }
        Ok(())
    }

    fn tar_err(&self, entry: &str, e: io::Error) -> Error {
        Error::Tar {
            layer: format!("{} (entry {entry:?})", self.options.label),
            source: e,
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
                // (opacity, redirects); a layer may not set them directly.
                if name.starts_with("trusted.overlay.") {
                    tracing::warn!(layer = %self.options.label, entry = shown, xattr = name, "ignoring overlay xattr");
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
        if self.options.preserve_owners {
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

fn chown_at_nofollow(parent: &OwnedFd, name: &OsStr, uid: u32, gid: u32) -> rustix::io::Result<()> {
    chown_at(parent, name, uid, gid)
}

fn proc_fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn proc_path(parent: &OwnedFd, name: &OsStr) -> PathBuf {
    proc_fd_path(parent).join(name)
}
