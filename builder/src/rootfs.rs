//! Filesystem views COPY/ADD read from and write to, as plain file
//! operations (no mounts), so that they are testable anywhere.
//!
//! - [`SourceTree`]: something COPY reads: the build context
//!   ([`crate::context::BuildContext`]), a plain directory ([`DirTree`]) or a
//!   stage's root filesystem ([`LayeredRootfs`]).
//! - [`LayeredRootfs`]: overlay lower dirs (top-most first) plus the step's
//!   upper dir, merged the way overlayfs merges them: a character device
//!   0:0 is a whiteout, a directory with `trusted.overlay.opaque=y` hides
//!   what lies below it, a non-directory hides everything below it. Writes go
//!   to the upper dir, copying parent directories up first as overlayfs would.
//! - [`resolve`]: symlink resolution confined to a root (continuity's
//!   `RootPath`): absolute targets restart at the root and `..` stops there.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, XattrFlags};

use crate::context::{BuildContext, EntryKind};

/// A failed filesystem operation on a view.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: too many levels of symbolic links")]
    TooManyLinks(String),
    #[error("{0}: not a directory")]
    NotADirectory(String),
    #[error("{0}: not found")]
    NotFound(String),
    /// A name (or a symlink's target) that is not UTF-8: kiln's paths are
    /// strings, so it would be copied under another name. Refused rather
    /// than renamed.
    #[error("{path}: its name or link target is not UTF-8, which kiln cannot copy yet{hint}")]
    NotUtf8 { path: String, hint: &'static str },
}

impl RootfsError {
    /// [`RootfsError::NotUtf8`] for a path of an image's files.
    pub(crate) fn not_utf8(path: impl std::fmt::Display) -> RootfsError {
        RootfsError::NotUtf8 {
            path: path.to_string(),
            hint: "",
        }
    }

    pub(crate) fn io(path: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> RootfsError {
        let path = path.to_string();
        move |source| RootfsError::Io { path, source }
    }
}

/// What COPY needs to know about a source object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMeta {
    pub kind: EntryKind,
    /// Permission and special bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    /// (device, inode, link count), to keep hard links together.
    pub inode: (u64, u64, u64),
}

impl SourceMeta {
    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }

    pub(crate) fn from_host(path: &Path, meta: &std::fs::Metadata) -> Result<Self, RootfsError> {
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(RootfsError::io(path.display()))?;
            let target = target
                .into_os_string()
                .into_string()
                .map_err(|_| RootfsError::not_utf8(path.display()))?;
            EntryKind::Symlink(target)
        } else if ft.is_file() {
            EntryKind::File
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else if ft.is_socket() {
            EntryKind::Socket
        } else {
            EntryKind::Device {
                block: ft.is_block_device(),
                rdev: meta.rdev(),
            }
        };
        Ok(SourceMeta {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.len(),
            atime: (meta.atime(), meta.atime_nsec()),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            inode: (meta.dev(), meta.ino(), meta.nlink()),
        })
    }
}

/// A read-only tree COPY can take sources from. Paths are clean,
/// slash-separated and relative to the tree's root (`""` is the root).
pub trait SourceTree {
    /// `lstat`: the object itself, symlinks not followed; `None` if absent.
    fn stat(&self, rel: &str) -> Result<Option<SourceMeta>, RootfsError>;
    /// Names in a directory, sorted.
    fn list(&self, rel: &str) -> Result<Vec<String>, RootfsError>;
    /// Where the bytes of a regular file can be read.
    fn host_file(&self, rel: &str) -> Result<PathBuf, RootfsError>;
    /// Extended attributes to carry over (name, value); none by default.
    fn xattrs(&self, _rel: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        Vec::new()
    }
    /// `sha256:<hex>` of a regular file's bytes, when the tree knows it
    /// without reading them (the build context hashed them).
    fn content_digest(&self, _rel: &str) -> Option<String> {
        None
    }
}

/// Joins a clean relative directory and a name.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else if name.is_empty() {
        dir.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Cleans a path given inside a root into the relative form used by the
/// views: `/a/./b/../c/` → `a/c`; `..` never climbs above the root.
pub fn clean_rel(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

const MAX_SYMLINKS: usize = 255;

/// Resolves symlinks in `rel` inside `tree`, never leaving its root. With
/// `follow_last` false the last component is left as it is (only its
/// directory is resolved). Missing components are kept literally, as
/// continuity's `RootPath` does.
pub fn resolve(tree: &dyn SourceTree, rel: &str, follow_last: bool) -> Result<String, RootfsError> {
    resolve_under(tree, "", rel, follow_last)
}

/// Like [`resolve`], but with the directory `base` acting as the root (as
/// a chroot into it would): `rel` is relative to `base`, absolute link
/// targets restart at `base`, `..` stops there. Returns a path relative to
/// the tree's root, always inside `base`.
pub fn resolve_under(
    tree: &dyn SourceTree,
    base: &str,
    rel: &str,
    follow_last: bool,
) -> Result<String, RootfsError> {
    let base = clean_rel(base);
    let cleaned = clean_rel(rel);
    if cleaned.is_empty() {
        return Ok(base);
    }
    if !follow_last {
        let (dir, name) = match cleaned.rfind('/') {
            Some(i) => (&cleaned[..i], &cleaned[i + 1..]),
            None => ("", cleaned.as_str()),
        };
        let dir = resolve_under(tree, &base, dir, true)?;
        return Ok(join(&dir, name));
    }
    let root: Vec<String> = if base.is_empty() {
        Vec::new()
    } else {
        base.split('/').map(str::to_string).collect()
    };
    let mut pending: Vec<String> = cleaned.split('/').rev().map(str::to_string).collect();
    let mut current: Vec<String> = root.clone();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                if current.len() > root.len() {
                    current.pop();
                }
                continue;
            }
            _ => {}
        }
        let candidate = join(&current.join("/"), &part);
        match tree.stat(&candidate)? {
            Some(SourceMeta {
                kind: EntryKind::Symlink(target),
                ..
            }) => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(RootfsError::TooManyLinks(rel.to_string()));
                }
                if target.starts_with('/') {
                    current.truncate(root.len());
                }
                for piece in target.split('/').rev() {
                    pending.push(piece.to_string());
                }
            }
            Some(_) => current.push(part),
            None => {
                // The rest does not exist: keep it literally.
                current.push(part);
                while let Some(rest) = pending.pop() {
                    match rest.as_str() {
                        "" | "." => {}
                        ".." => {
                            if current.len() > root.len() {
                                current.pop();
                            }
                        }
                        _ => current.push(rest),
                    }
                }
            }
        }
    }
    Ok(current.join("/"))
}

/// A plain directory on the host as a source tree.
#[derive(Debug, Clone)]
pub struct DirTree {
    root: PathBuf,
}

impl DirTree {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirTree { root: root.into() }
    }

    fn host(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }
}

fn lstat_opt(path: &Path) -> Result<Option<std::fs::Metadata>, RootfsError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) =>
        {
            Ok(None)
        }
        Err(e) => Err(RootfsError::Io {
            path: path.display().to_string(),
            source: e,
        }),
    }
}

fn sorted_names(path: &Path) -> Result<Vec<String>, RootfsError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path).map_err(RootfsError::io(path.display()))? {
        let entry = entry.map_err(RootfsError::io(path.display()))?;
        let name = (entry.file_name().into_string())
            .map_err(|name| RootfsError::not_utf8(path.join(name).display()))?;
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// Extended attributes of a host path worth carrying into an image
/// (`user.*`, `security.*` such as file capabilities, `trusted.*` minus
/// overlayfs' own).
pub fn host_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let Ok(len) = rustix::fs::llistxattr(path, &mut names[..]) else {
        return Vec::new();
    };
    names.truncate(len);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let wanted = (name.starts_with(b"user.")
            || name.starts_with(b"security.")
            || name.starts_with(b"trusted."))
            && !name.starts_with(b"trusted.overlay.")
            && !name.starts_with(b"user.overlay.");
        if !wanted {
            continue;
        }
        let mut value = vec![0u8; 65536];
        if let Ok(n) = rustix::fs::lgetxattr(path, name, &mut value[..]) {
            value.truncate(n);
            out.push((name.to_vec(), value));
        }
    }
    out
}

impl SourceTree for DirTree {
    fn stat(&self, rel: &str) -> Result<Option<SourceMeta>, RootfsError> {
        let host = self.host(rel);
        match lstat_opt(&host)? {
            Some(m) => Ok(Some(SourceMeta::from_host(&host, &m)?)),
            None => Ok(None),
        }
    }

    fn list(&self, rel: &str) -> Result<Vec<String>, RootfsError> {
        sorted_names(&self.host(rel))
    }

    fn host_file(&self, rel: &str) -> Result<PathBuf, RootfsError> {
        Ok(self.host(rel))
    }

    fn xattrs(&self, rel: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        host_xattrs(&self.host(rel))
    }
}

impl SourceTree for BuildContext {
    fn stat(&self, rel: &str) -> Result<Option<SourceMeta>, RootfsError> {
        if !self.contains(rel) {
            return Ok(None);
        }
        if self.is_undecodable(rel) {
            return Err(RootfsError::NotUtf8 {
                path: self.host_path(rel).display().to_string(),
                hint: " (leave it out of the context with .dockerignore)",
            });
        }
        let host = self.host_path(rel);
        match lstat_opt(&host)? {
            Some(m) => {
                let mut meta = SourceMeta::from_host(&host, &m)?;
                // The docker CLI sends the context with owners reset to 0.
                meta.uid = 0;
                meta.gid = 0;
                if self.is_socket(rel) {
                    meta.kind = EntryKind::File;
                    meta.size = 0;
                }
                Ok(Some(meta))
            }
            None => Ok(None),
        }
    }

    fn list(&self, rel: &str) -> Result<Vec<String>, RootfsError> {
        Ok(self.children(rel).into_iter().map(str::to_string).collect())
    }

    fn host_file(&self, rel: &str) -> Result<PathBuf, RootfsError> {
        // A socket's bytes are none (opening it would fail).
        if self.is_socket(rel) {
            return Ok(PathBuf::from("/dev/null"));
        }
        Ok(self.host_path(rel))
    }

    fn content_digest(&self, rel: &str) -> Option<String> {
        self.get(rel).and_then(|e| e.content_digest.clone())
    }
}

/// Overlay lower dirs plus an upper dir; see the module docs.
#[derive(Debug, Clone)]
pub struct LayeredRootfs {
    upper: PathBuf,
    /// Top-most first, as in overlayfs' `lowerdir=`.
    lowers: Vec<PathBuf>,
}

/// Where the visible version of a path lives.
#[derive(Debug, Clone)]
struct Located {
    host: PathBuf,
    in_upper: bool,
    meta: std::fs::Metadata,
}

use kiln_layers::whiteout::{is_opaque, is_whiteout};

impl LayeredRootfs {
    /// `lowers` top-most first; `upper` receives every write.
    pub fn new(upper: impl Into<PathBuf>, lowers: Vec<PathBuf>) -> Self {
        LayeredRootfs {
            upper: upper.into(),
            lowers,
        }
    }

    /// The upper dir.
    pub fn upper(&self) -> &Path {
        &self.upper
    }

    /// The lower dirs, top-most first.
    pub fn lowers(&self) -> &[PathBuf] {
        &self.lowers
    }

    fn layers(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.upper.as_path()).chain(self.lowers.iter().map(PathBuf::as_path))
    }

    fn host_in(layer: &Path, rel: &str) -> PathBuf {
        if rel.is_empty() {
            layer.to_path_buf()
        } else {
            layer.join(rel)
        }
    }

    /// Finds the layer whose version of `rel` is visible (no symlink
    /// following). `rel` must be clean.
    fn locate(&self, rel: &str) -> Result<Option<Located>, RootfsError> {
        let parts: Vec<&str> = if rel.is_empty() {
            Vec::new()
        } else {
            rel.split('/').collect()
        };
        'layers: for (index, layer) in self.layers().enumerate() {
            // Walk the ancestors in this layer: a whiteout or non-directory
            // ancestor hides the path in this and all lower layers; an opaque
            // ancestor hides it in the lower layers.
            let mut opaque_below = false;
            for depth in 0..parts.len() {
                let prefix = parts[..depth].join("/");
                let host = Self::host_in(layer, &prefix);
                match lstat_opt(&host)? {
                    None if opaque_below => return Ok(None),
                    None => continue 'layers,
                    Some(m) if is_whiteout(&host, &m) => return Ok(None),
                    Some(m) if !m.is_dir() => return Ok(None),
                    Some(_) => {
                        if depth > 0 && is_opaque(&host) {
                            opaque_below = true;
                        }
                    }
                }
            }
            let host = Self::host_in(layer, rel);
            match lstat_opt(&host)? {
                Some(m) if is_whiteout(&host, &m) => return Ok(None),
                Some(meta) => {
                    return Ok(Some(Located {
                        host,
                        in_upper: index == 0,
                        meta,
                    }))
                }
                None if opaque_below => return Ok(None),
                None => {}
            }
        }
        Ok(None)
    }

    /// Names visible in a directory: the union of the layers down to the
    /// first opaque one, less whiteouts.
    fn merged_list(&self, rel: &str) -> Result<Vec<String>, RootfsError> {
        let mut seen = std::collections::BTreeMap::<String, bool>::new();
        let parts: Vec<&str> = if rel.is_empty() {
            Vec::new()
        } else {
            rel.split('/').collect()
        };
        'layers: for layer in self.layers() {
            let mut stop_after = false;
            for depth in 0..=parts.len() {
                let prefix = parts[..depth].join("/");
                let host = Self::host_in(layer, &prefix);
                match lstat_opt(&host)? {
                    None if stop_after => break 'layers,
                    None => continue 'layers,
                    Some(m) if is_whiteout(&host, &m) || !m.is_dir() => break 'layers,
                    Some(_) => {
                        if depth > 0 && is_opaque(&host) {
                            stop_after = true;
                        }
                    }
                }
            }
            let host = Self::host_in(layer, rel);
            for name in sorted_names(&host)? {
                if seen.contains_key(&name) {
                    continue;
                }
                let path = host.join(&name);
                let visible = lstat_opt(&path)?.is_some_and(|m| !is_whiteout(&path, &m));
                seen.insert(name, visible);
            }
            if stop_after {
                break;
            }
        }
        Ok(seen
            .into_iter()
            .filter_map(|(name, visible)| visible.then_some(name))
            .collect())
    }

    /// Reads a file through the merged view, following symlinks inside the
    /// root. `None` when it does not exist or is not a regular file.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, RootfsError> {
        let rel = resolve(self, path, true)?;
        match self.locate(&rel)? {
            Some(found) if found.meta.is_file() => std::fs::read(&found.host)
                .map(Some)
                .map_err(RootfsError::io(found.host.display())),
            _ => Ok(None),
        }
    }

    /// The host path of `rel` in the upper dir.
    pub fn upper_path(&self, rel: &str) -> PathBuf {
        Self::host_in(&self.upper, rel)
    }

    /// Makes sure every ancestor directory of `rel` exists in the upper dir,
    /// copying each up (mode, owner, times) from the layer it is visible in,
    /// and, as overlayfs does, without changing the times of the directory
    /// each is copied into. Ancestors must already exist in the merged view
    /// as directories.
    pub fn copy_up_parents(&self, rel: &str) -> Result<(), RootfsError> {
        let parts: Vec<&str> = if rel.is_empty() {
            Vec::new()
        } else {
            rel.split('/').collect()
        };
        for depth in 1..parts.len() {
            let prefix = parts[..depth].join("/");
            self.copy_up_dir(&prefix)?;
        }
        Ok(())
    }

    /// Copies one visible directory up into the upper dir (no-op if there).
    fn copy_up_dir(&self, rel: &str) -> Result<(), RootfsError> {
        let upper = self.upper_path(rel);
        if let Some(m) = lstat_opt(&upper)? {
            if m.is_dir() {
                return Ok(());
            }
        }
        let found = self
            .locate(rel)?
            .ok_or_else(|| RootfsError::NotFound(format!("/{rel}")))?;
        if !found.meta.is_dir() {
            return Err(RootfsError::NotADirectory(format!("/{rel}")));
        }
        let parent = ParentTimes::keep(self.upper_path(parent_rel(rel)))?;
        std::fs::create_dir(&upper).map_err(RootfsError::io(upper.display()))?;
        let meta = SourceMeta::from_host(&found.host, &found.meta)?;
        set_owner(&upper, meta.uid, meta.gid)?;
        set_mode(&upper, meta.mode)?;
        set_times(&upper, meta.atime, meta.mtime)?;
        parent.restore()
    }

    /// Whether the lower layers alone (the upper dir left out) show a
    /// directory at `rel`: one made there in the upper dir in place of
    /// something else must be opaque, or its contents show through.
    pub fn lower_is_dir(&self, rel: &str) -> bool {
        let Some((top, rest)) = self.lowers.split_first() else {
            return false;
        };
        let lowers = LayeredRootfs::new(top, rest.to_vec());
        matches!(lowers.locate(rel), Ok(Some(found)) if found.meta.is_dir())
    }

    /// Copies the non-directory visible at `rel` up into the upper dir,
    /// with its owner, mode, times and (for a file) xattrs, as overlayfs
    /// does before it links or changes a lower file. Returns false when
    /// nothing, or a directory, is visible there.
    pub fn copy_up_file(&self, rel: &str) -> Result<bool, RootfsError> {
        let Some(found) = self.locate(rel)? else {
            return Ok(false);
        };
        if found.meta.is_dir() {
            return Ok(false);
        }
        if found.in_upper {
            return Ok(true);
        }
        self.copy_up_parents(rel)?;
        let parent = ParentTimes::keep(self.upper_path(parent_rel(rel)))?;
        let upper = self.upper_path(rel);
        let meta = SourceMeta::from_host(&found.host, &found.meta)?;
        match &meta.kind {
            EntryKind::File => {
                let xattrs = host_xattrs(&found.host);
                let info = NewFileInfo {
                    uid: meta.uid,
                    gid: meta.gid,
                    mode: meta.mode,
                    xattrs: &xattrs,
                    atime: meta.atime,
                    mtime: meta.mtime,
                };
                create_file_copy(&found.host, &upper, &info)?;
            }
            EntryKind::Symlink(target) => {
                std::os::unix::fs::symlink(target, &upper)
                    .map_err(RootfsError::io(upper.display()))?;
                set_owner(&upper, meta.uid, meta.gid)?;
                set_times(&upper, meta.atime, meta.mtime)?;
            }
            node => {
                make_node(&upper, node, meta.mode)?;
                set_owner(&upper, meta.uid, meta.gid)?;
                set_mode(&upper, meta.mode)?;
                set_times(&upper, meta.atime, meta.mtime)?;
            }
        }
        parent.restore()?;
        Ok(true)
    }

    /// Removes a path from the merged view: deleted from the upper dir, and
    /// hidden with a whiteout when a lower layer still has it.
    pub fn remove(&self, rel: &str) -> Result<(), RootfsError> {
        let upper = self.upper_path(rel);
        // A file or a whole tree (nothing there: nothing to do), by
        // descriptor, directories without their owner's rights opened.
        kiln_tree::remove_tree(&upper).map_err(|e| RootfsError::io(e.path.display())(e.source))?;
        if self.locate(rel)?.is_some() {
            self.copy_up_parents(rel)?;
            // The whiteout: a 0/0 character device.
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &upper,
                FileType::CharacterDevice,
                Mode::empty(),
                0,
            )
            .map_err(|e| RootfsError::io(upper.display())(e.into()))?;
        }
        Ok(())
    }
}

impl SourceTree for LayeredRootfs {
    fn stat(&self, rel: &str) -> Result<Option<SourceMeta>, RootfsError> {
        match self.locate(rel)? {
            Some(found) => Ok(Some(SourceMeta::from_host(&found.host, &found.meta)?)),
            None => Ok(None),
        }
    }

    fn list(&self, rel: &str) -> Result<Vec<String>, RootfsError> {
        self.merged_list(rel)
    }

    fn host_file(&self, rel: &str) -> Result<PathBuf, RootfsError> {
        self.locate(rel)?
            .map(|f| f.host)
            .ok_or_else(|| RootfsError::NotFound(format!("/{rel}")))
    }

    fn xattrs(&self, rel: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        match self.locate(rel) {
            Ok(Some(found)) => host_xattrs(&found.host),
            _ => Vec::new(),
        }
    }
}

impl LayeredRootfs {
    /// Whether the visible version of `rel` lives in the upper dir.
    pub fn is_in_upper(&self, rel: &str) -> Result<bool, RootfsError> {
        Ok(self.locate(rel)?.is_some_and(|f| f.in_upper))
    }
}

/// The parent of a clean relative path (`""` for a top-level name).
fn parent_rel(rel: &str) -> &str {
    rel.rfind('/').map_or("", |i| &rel[..i])
}

/// A directory's times, taken before a copy-up puts an entry in it and
/// put back after: overlayfs copies an entry up without touching its
/// parent's times (`ovl_copy_up_one` sets them back), so only the
/// directory a new entry is made in, not its ancestors, shows a change.
struct ParentTimes {
    path: PathBuf,
    atime: (i64, i64),
    mtime: (i64, i64),
}

impl ParentTimes {
    fn keep(path: PathBuf) -> Result<Self, RootfsError> {
        let meta = std::fs::symlink_metadata(&path).map_err(RootfsError::io(path.display()))?;
        Ok(ParentTimes {
            path,
            atime: (meta.atime(), meta.atime_nsec()),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        })
    }

    fn restore(self) -> Result<(), RootfsError> {
        set_times(&self.path, self.atime, self.mtime)
    }
}

/// `lchown`.
pub fn set_owner(path: &Path, uid: u32, gid: u32) -> Result<(), RootfsError> {
    rustix::fs::chownat(
        rustix::fs::CWD,
        path,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| RootfsError::io(path.display())(e.into()))
}

/// `chmod` with special bits (never on a symlink).
pub fn set_mode(path: &Path, mode: u32) -> Result<(), RootfsError> {
    rustix::fs::chmod(path, Mode::from_raw_mode(mode))
        .map_err(|e| RootfsError::io(path.display())(e.into()))
}

/// (seconds, nanoseconds) access and modification times as `utimensat`
/// and `futimens` take them.
fn timestamps(atime: (i64, i64), mtime: (i64, i64)) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1 as _,
        },
        last_modification: Timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1 as _,
        },
    }
}

/// `utimensat(AT_SYMLINK_NOFOLLOW)` with (seconds, nanoseconds) pairs.
pub fn set_times(path: &Path, atime: (i64, i64), mtime: (i64, i64)) -> Result<(), RootfsError> {
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &timestamps(atime, mtime),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| RootfsError::io(path.display())(e.into()))
}

/// `lsetxattr`, ignoring failures the target filesystem may not support.
pub fn set_xattr(path: &Path, name: &[u8], value: &[u8]) {
    let _ = rustix::fs::lsetxattr(path, name, value, XattrFlags::empty());
}

/// What a new regular file gets besides its bytes.
pub struct NewFileInfo<'a> {
    pub uid: u32,
    pub gid: u32,
    /// Permission and special bits.
    pub mode: u32,
    pub xattrs: &'a [(Vec<u8>, Vec<u8>)],
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
}

/// Creates `dest`, which must not exist, with the bytes of `src`, then sets
/// owner, mode, xattrs and times through the open file: one path walk for
/// each of the two opens and none after, which is what makes a COPY of many
/// small files cheap. Owner before mode (chown clears set-id bits) and
/// xattrs (it clears file capabilities too); times last.
pub fn create_file_copy(
    src: &Path,
    dest: &Path,
    info: &NewFileInfo<'_>,
) -> Result<(), RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |path: &Path| RootfsError::io(path.display().to_string());
    let to = copy_to(src, dest, false)?;
    std::os::unix::fs::fchown(&to, Some(info.uid), Some(info.gid)).map_err(err(dest))?;
    to.set_permissions(std::fs::Permissions::from_mode(info.mode & 0o7777))
        .map_err(err(dest))?;
    for (name, value) in info.xattrs {
        // Best effort, as with set_xattr.
        let _ = rustix::fs::fsetxattr(&to, name.as_slice(), value, XattrFlags::empty());
    }
    rustix::fs::futimens(&to, &timestamps(info.atime, info.mtime)).map_err(|e| err(dest)(e.into()))
}

/// Writes the bytes of `src` (a regular file, or anything that reads as
/// one: `/dev/null` for a context's socket) to `dest`, created or
/// truncated (not through a symlink) with the permission bits `mode`, as
/// `std::fs::copy` does for a regular file, which refuses anything else.
/// Owner, times and xattrs are the caller's to set.
pub fn copy_file_contents(src: &Path, dest: &Path, mode: u32) -> Result<(), RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    copy_to(src, dest, true)?
        .set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(RootfsError::io(dest.display().to_string()))
}

/// The bytes of `src` written to `dest`, a new file (0600, not through a
/// symlink; with `replace`, one that is there is truncated instead of
/// refused), returned open for its metadata.
fn copy_to(src: &Path, dest: &Path, replace: bool) -> Result<std::fs::File, RootfsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |path: &Path| RootfsError::io(path.display().to_string());
    let mut from = std::fs::File::open(src).map_err(err(src))?;
    let mut options = std::fs::OpenOptions::new();
    match replace {
        true => options.create(true).truncate(true),
        false => options.create_new(true),
    };
    let mut to = options
        .write(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(dest)
        .map_err(err(dest))?;
    copy_bytes(&mut from, &mut to).map_err(err(dest))?;
    Ok(to)
}

/// `copy_file_range` until the source ends (the kernel copies, or shares
/// extents, without a trip through user space); plain read/write where the
/// filesystems cannot.
fn copy_bytes(from: &mut std::fs::File, to: &mut std::fs::File) -> std::io::Result<()> {
    use rustix::io::Errno;
    let mut copied: u64 = 0;
    loop {
        // No offsets: the file offsets are used and advanced.
        match rustix::fs::copy_file_range(&*from, None, &*to, None, 1 << 30) {
            // Some filesystems (procfs, some FUSE) answer 0 at once for a
            // file that has bytes: read it the plain way then.
            Ok(0) if copied == 0 => {
                std::io::copy(from, to)?;
                return Ok(());
            }
            Ok(0) => return Ok(()),
            Ok(n) => copied += n as u64,
            Err(Errno::INTR) => {}
            Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP | Errno::PERM)
                if copied == 0 =>
            {
                std::io::copy(from, to)?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `mknod` for fifos and devices.
pub fn make_node(path: &Path, kind: &EntryKind, mode: u32) -> Result<(), RootfsError> {
    let (file_type, rdev) = match kind {
        EntryKind::Fifo => (FileType::Fifo, 0),
        EntryKind::Socket => (FileType::Socket, 0),
        EntryKind::Device { block: true, rdev } => (FileType::BlockDevice, *rdev),
        EntryKind::Device { block: false, rdev } => (FileType::CharacterDevice, *rdev),
        _ => return Err(RootfsError::NotFound(path.display().to_string())),
    };
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        file_type,
        Mode::from_raw_mode(mode & 0o7777),
        rdev,
    )
    .map_err(|e| RootfsError::io(path.display())(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_rel_never_climbs() {
        assert_eq!(clean_rel("/a/./b/../c/"), "a/c");
        assert_eq!(clean_rel("../../x"), "x");
        assert_eq!(clean_rel("/"), "");
    }

    #[test]
    fn resolve_stays_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("real/sub")).unwrap();
        std::os::unix::fs::symlink("/real", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../real/sub", root.join("real/up")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("escape")).unwrap();
        let tree = DirTree::new(root);
        assert_eq!(resolve(&tree, "/abs/sub", true).unwrap(), "real/sub");
        assert_eq!(resolve(&tree, "real/up/x/y", true).unwrap(), "real/sub/x/y");
        assert_eq!(resolve(&tree, "abs", false).unwrap(), "abs");
        assert_eq!(resolve(&tree, "escape", true).unwrap(), "etc/passwd");
        assert!(matches!(
            resolve(&tree, "loop", true),
            Err(RootfsError::TooManyLinks(_))
        ));
    }
}
