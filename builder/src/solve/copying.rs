//! The copying snapshotter (BuildKit's "native", buildah's vfs): a RUN
//! where overlay cannot be mounted (the store on overlayfs) works on a
//! full copy of its root filesystem, and its changes are found afterwards
//! by comparing the copy with the layers it was made from.
//!
//! [`CopiedRoot::make`] copies the merged view of a step's layers
//! ([`LayeredRootfs`]: whiteouts and opaque directories applied) into a
//! scratch directory of the step: plain copies (`copy_file_range`, which
//! shares extents where the filesystem can), never hard links into the
//! snapshots, which the RUN may change in place. Hard links between lower
//! files are not kept, as overlay does not keep them once one is written.
//!
//! [`CopiedRoot::diff_into`] then walks the copy and the merged view side
//! by side and moves what changed into the step's (empty) upper dir in
//! the form overlay would have left there, so that the layer and snapshot
//! are made by the same code and are the same bytes as with overlay:
//!
//! - an entry only in the copy, or one the RUN touched (its inode or
//!   change time is not the one the copy made: written, truncated,
//!   chmod-ed, replaced, even with the same size and mtime restored), or
//!   whose type, mode, owner, size, mtime, link target, device or xattrs
//!   differ, is moved (renamed) there;
//! - an entry only in the layers becomes a whiteout (a 0/0 character
//!   device, which needs no CAP_MKNOD, or on an overlayfs, which refuses
//!   those, an empty file marked by an xattr: `kiln_layers::whiteout`);
//! - a directory that is not the one copied there (its inode and birth
//!   time differ: the RUN removed it and made another, or put one where a
//!   file was) is moved whole and made opaque, as overlay makes a
//!   directory created over a whiteout;
//! - the directories above anything moved are made in the upper dir with
//!   the copy's owner, mode, xattrs and mtime, as overlay copies them up;
//!   a directory whose own metadata changed, likewise.
//!
//! What differs from overlay: a file opened for writing and closed
//! without a write (its change time unchanged) is not in the layer
//! (overlay copies it up on open).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::context::EntryKind;
use crate::rootfs::{
    create_file_copy, host_xattrs, join, make_node, set_mode, set_owner, set_times, LayeredRootfs,
    NewFileInfo, RootfsError, SourceMeta, SourceTree,
};

/// Which directory a path of the copy was when the copy was made: a
/// directory with another identity afterwards was made by the RUN.
type DirIdentity = (u64, Option<SystemTime>);

/// Which inode a file, symlink or node of the copy was, and its change
/// time, when the copy was made: the kernel moves the change time on
/// every write and metadata change, and nothing can set it back.
type LeafIdentity = (u64, i64, i64);

/// A step's root filesystem copied into a directory of its own.
pub struct CopiedRoot {
    dir: PathBuf,
    dirs: HashMap<String, DirIdentity>,
    leaves: HashMap<String, LeafIdentity>,
}

fn identity(meta: &std::fs::Metadata) -> DirIdentity {
    (meta.ino(), meta.created().ok())
}

fn leaf_identity(meta: &std::fs::Metadata) -> LeafIdentity {
    (meta.ino(), meta.ctime(), meta.ctime_nsec())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError + '_ {
    move |e| RootfsError::io(path.display())(e)
}

impl CopiedRoot {
    /// Copies the merged view of `rootfs` into `dir` (made here; it must
    /// not exist).
    pub fn make(rootfs: &LayeredRootfs, dir: &Path) -> Result<CopiedRoot, RootfsError> {
        std::fs::create_dir(dir).map_err(io(dir))?;
        let mut copied = CopiedRoot {
            dir: dir.to_path_buf(),
            dirs: HashMap::new(),
            leaves: HashMap::new(),
        };
        let root = rootfs
            .stat("")?
            .ok_or_else(|| RootfsError::NotFound("/".into()))?;
        copied.copy_dir(rootfs, "", &root)?;
        Ok(copied)
    }

    /// The copy: the RUN's root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn copy_dir(
        &mut self,
        view: &LayeredRootfs,
        rel: &str,
        meta: &SourceMeta,
    ) -> Result<(), RootfsError> {
        let dest = self.dir.join(rel);
        if !rel.is_empty() {
            std::fs::create_dir(&dest).map_err(io(&dest))?;
        }
        for name in view.list(rel)? {
            let child = join(rel, &name);
            let Some(child_meta) = view.stat(&child)? else {
                continue;
            };
            if child_meta.is_dir() {
                self.copy_dir(view, &child, &child_meta)?;
            } else {
                let dest = self.dir.join(&child);
                copy_leaf(view, &child, &child_meta, &dest)?;
                if let Ok(after) = std::fs::symlink_metadata(&dest) {
                    self.leaves.insert(child, leaf_identity(&after));
                }
            }
        }
        set_owner(&dest, meta.uid, meta.gid)?;
        set_mode(&dest, meta.mode)?;
        for (name, value) in view.xattrs(rel) {
            crate::rootfs::set_xattr(&dest, &name, &value);
        }
        set_times(&dest, meta.atime, meta.mtime)?;
        let after = std::fs::symlink_metadata(&dest).map_err(io(&dest))?;
        self.dirs.insert(rel.to_string(), identity(&after));
        Ok(())
    }

    /// Moves what the RUN changed in the copy into `upper` (an empty
    /// directory on the same filesystem) as overlay would have left it,
    /// comparing with `rootfs`'s layers. The copy is left to be discarded.
    pub fn diff_into(&self, rootfs: &LayeredRootfs, upper: &Path) -> Result<(), RootfsError> {
        let mut diff = Diff {
            copy: &self.dir,
            view: rootfs,
            upper,
            dirs: &self.dirs,
            leaves: &self.leaves,
            made: Vec::new(),
        };
        diff.walk_dir("")?;
        // Deepest first: setting a directory's mtime after its children.
        for (rel, meta) in diff.made.iter().rev() {
            set_dir_meta(&upper.join(rel), meta)?;
        }
        Ok(())
    }
}

/// A file, symlink, fifo or device of the merged view copied to `dest`.
fn copy_leaf(
    view: &LayeredRootfs,
    rel: &str,
    meta: &SourceMeta,
    dest: &Path,
) -> Result<(), RootfsError> {
    match &meta.kind {
        EntryKind::File => {
            let xattrs = view.xattrs(rel);
            let info = NewFileInfo {
                uid: meta.uid,
                gid: meta.gid,
                mode: meta.mode,
                xattrs: &xattrs,
                atime: meta.atime,
                mtime: meta.mtime,
            };
            create_file_copy(&view.host_file(rel)?, dest, &info)
        }
        EntryKind::Symlink(target) => {
            std::os::unix::fs::symlink(target, dest).map_err(io(dest))?;
            set_owner(dest, meta.uid, meta.gid)?;
            set_times(dest, meta.atime, meta.mtime)
        }
        // A socket has no tar form: nothing of it reaches a layer.
        EntryKind::Socket => Ok(()),
        kind => {
            make_node(dest, kind, meta.mode)?;
            set_owner(dest, meta.uid, meta.gid)?;
            set_mode(dest, meta.mode)?;
            for (name, value) in view.xattrs(rel) {
                crate::rootfs::set_xattr(dest, &name, &value);
            }
            set_times(dest, meta.atime, meta.mtime)
        }
    }
}

/// A directory of the copy as it was before anything was moved out of it
/// (which changes its mtime).
struct DirMeta {
    meta: std::fs::Metadata,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Gives the directory `to` the owner, mode, xattrs and times of `from`.
fn set_dir_meta(to: &Path, from: &DirMeta) -> Result<(), RootfsError> {
    let meta = &from.meta;
    set_owner(to, meta.uid(), meta.gid())?;
    set_mode(to, meta.mode() & 0o7777)?;
    for (name, value) in &from.xattrs {
        crate::rootfs::set_xattr(to, name, value);
    }
    set_times(
        to,
        (meta.atime(), meta.atime_nsec()),
        (meta.mtime(), meta.mtime_nsec()),
    )
}

/// One comparison of a copy with its layers.
struct Diff<'a> {
    copy: &'a Path,
    view: &'a LayeredRootfs,
    upper: &'a Path,
    dirs: &'a HashMap<String, DirIdentity>,
    leaves: &'a HashMap<String, LeafIdentity>,
    /// Directories made in the upper dir, parents first, with the copy's
    /// metadata, which they get at the end.
    made: Vec<(String, DirMeta)>,
}

/// Extended attributes (name, value).
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Whether the copy's entry (`now`, its xattrs) differs from the layers'
/// (`before`, theirs): anything a layer records (the kind carries a link's
/// target and a device's numbers); a regular file's bytes by size and
/// mtime.
fn changed(now: &SourceMeta, before: &SourceMeta, xattrs: (Xattrs, Xattrs)) -> bool {
    let (mut now_xattrs, mut before_xattrs) = xattrs;
    now_xattrs.sort();
    before_xattrs.sort();
    now.kind != before.kind
        || now.mode != before.mode
        || now.uid != before.uid
        || now.gid != before.gid
        || now.mtime != before.mtime
        || (now.kind == EntryKind::File && now.size != before.size)
        || now_xattrs != before_xattrs
}

impl Diff<'_> {
    /// Makes `rel`'s directory (and those above it) in the upper dir.
    fn upper_dir(&mut self, rel: &str) -> Result<PathBuf, RootfsError> {
        let path = self.upper.join(rel);
        if rel.is_empty() || path.is_dir() {
            return Ok(path);
        }
        if let Some(parent) = rel.rfind('/').map(|i| &rel[..i]) {
            self.upper_dir(parent)?;
        }
        // Before anything is moved out of it.
        let from = self.copy.join(rel);
        let meta = DirMeta {
            meta: std::fs::symlink_metadata(&from).map_err(io(&from))?,
            xattrs: host_xattrs(&from),
        };
        std::fs::create_dir(&path).map_err(io(&path))?;
        self.made.push((rel.to_string(), meta));
        Ok(path)
    }

    /// Compares the directory `rel`, the same in the copy and the layers.
    fn walk_dir(&mut self, rel: &str) -> Result<(), RootfsError> {
        let copy_dir = self.copy.join(rel);
        // Before anything is moved out of it.
        let now = std::fs::symlink_metadata(&copy_dir).map_err(io(&copy_dir))?;
        let now_xattrs = host_xattrs(&copy_dir);
        let mut names: Vec<String> = Vec::new();
        for entry in std::fs::read_dir(&copy_dir).map_err(io(&copy_dir))? {
            let entry = entry.map_err(io(&copy_dir))?;
            // A RUN's file whose name is not UTF-8 would land in the layer
            // under another name: refused.
            let name = (entry.file_name().into_string())
                .map_err(|name| RootfsError::not_utf8(copy_dir.join(name).display()))?;
            names.push(name);
        }
        let lower_names = self.view.list(rel)?;
        for name in &lower_names {
            if names.contains(name) {
                continue;
            }
            // A socket is not copied (no layer can hold one): missing from
            // the copy, it was not deleted.
            let socket = self
                .view
                .stat(&join(rel, name))?
                .is_some_and(|m| m.kind == EntryKind::Socket);
            if !socket {
                self.whiteout(rel, name)?;
            }
        }
        names.sort();
        for name in names {
            self.compare(&join(rel, &name))?;
        }
        if let (false, Some(before)) = (rel.is_empty(), self.view.stat(rel)?) {
            let now_meta = SourceMeta::from_host(&copy_dir, &now)?;
            let xattrs = (now_xattrs, self.view.xattrs(rel));
            if changed(&now_meta, &before, xattrs) {
                self.upper_dir(rel)?;
            }
        }
        Ok(())
    }

    /// One entry of the copy against the layers.
    fn compare(&mut self, rel: &str) -> Result<(), RootfsError> {
        let path = self.copy.join(rel);
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        let before = self.view.stat(rel)?;
        if meta.is_dir() {
            let same_dir = self.dirs.get(rel) == Some(&identity(&meta))
                && before.as_ref().is_some_and(SourceMeta::is_dir);
            if same_dir {
                return self.walk_dir(rel);
            }
            // New, or made where something else was: opaque then, as
            // overlay makes a directory created over a whiteout.
            let moved = self.move_up(rel)?;
            if before.is_some() {
                kiln_layers::whiteout::set_opaque(&moved)
                    .map_err(|e| RootfsError::io(moved.display())(e.into()))?;
            }
            return Ok(());
        }
        let now = SourceMeta::from_host(&path, &meta)?;
        let touched = self.leaves.get(rel) != Some(&leaf_identity(&meta));
        let differs = match &before {
            None => true,
            Some(_) if touched => true,
            Some(before) => {
                let xattrs = match meta.is_symlink() {
                    true => (Vec::new(), Vec::new()),
                    false => (host_xattrs(&path), self.view.xattrs(rel)),
                };
                changed(&now, before, xattrs)
            }
        };
        if differs {
            self.move_up(rel)?;
        }
        Ok(())
    }

    /// Renames the copy's `rel` into the upper dir; returns where it went.
    fn move_up(&mut self, rel: &str) -> Result<PathBuf, RootfsError> {
        let (parent, _) = rel.rsplit_once('/').unwrap_or(("", rel));
        self.upper_dir(parent)?;
        let (from, to) = (self.copy.join(rel), self.upper.join(rel));
        std::fs::rename(&from, &to).map_err(io(&from))?;
        Ok(to)
    }

    /// An overlay whiteout for `dir/name`, which the RUN deleted.
    fn whiteout(&mut self, dir: &str, name: &str) -> Result<(), RootfsError> {
        let parent = self.upper_dir(dir)?;
        let path = parent.join(name);
        let parent_fd = std::fs::File::open(&parent).map_err(io(&parent))?;
        kiln_layers::whiteout::make_whiteout_at(&parent_fd, std::ffi::OsStr::new(name))
            .map_err(|e| RootfsError::io(path.display())(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A RUN's changes, made in the copy, land in the upper dir as overlay
    /// would leave them: changed and new entries (one rewritten with the
    /// same size and mtime too), a whiteout, an opaque replaced directory,
    /// the parents; nothing untouched.
    #[test]
    fn changes_in_the_copy_become_an_upper_dir() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        for (path, text) in [
            ("keep", "k"),
            ("a", "a"),
            ("d/x", "x"),
            ("d/y", "y"),
            ("r/k", "k"),
        ] {
            write(&lower.join(path), text);
        }
        std::fs::create_dir(&upper).unwrap();
        let rootfs = LayeredRootfs::new(&upper, vec![lower.clone()]);
        let copied = CopiedRoot::make(&rootfs, &dir.path().join("copy")).unwrap();
        let copy = copied.dir().to_path_buf();
        assert_eq!(std::fs::read_to_string(copy.join("d/y")).unwrap(), "y");
        // Copies, not links into the layer.
        assert_ne!(
            std::fs::metadata(copy.join("a")).unwrap().ino(),
            std::fs::metadata(lower.join("a")).unwrap().ino()
        );
        // The RUN: change a, rewrite keep with the same size and its
        // mtime restored, delete d/x, replace r, add z.
        write(&copy.join("a"), "changed");
        let keep = std::fs::metadata(copy.join("keep")).unwrap();
        write(&copy.join("keep"), "K");
        let mtime = std::fs::FileTimes::new().set_modified(keep.modified().unwrap());
        std::fs::File::options()
            .write(true)
            .open(copy.join("keep"))
            .and_then(|f| f.set_times(mtime))
            .unwrap();
        std::fs::remove_file(copy.join("d/x")).unwrap();
        std::fs::remove_dir_all(copy.join("r")).unwrap();
        write(&copy.join("r/n"), "n");
        write(&copy.join("z"), "z");
        copied.diff_into(&rootfs, &upper).unwrap();

        let mut names: Vec<String> = walkdir(&upper);
        names.sort();
        assert_eq!(names, ["a", "d", "d/x", "keep", "r", "r/n", "z"]);
        assert_eq!(std::fs::read_to_string(upper.join("keep")).unwrap(), "K");
        assert_eq!(std::fs::read_to_string(upper.join("a")).unwrap(), "changed");
        let x = upper.join("d/x");
        assert!(kiln_layers::whiteout::is_whiteout(
            &x,
            &std::fs::symlink_metadata(&x).unwrap()
        ));
        assert!(kiln_layers::whiteout::is_opaque(&upper.join("r")));
        assert!(!kiln_layers::whiteout::is_opaque(&upper.join("d")));
        // d, a parent copied up, keeps the copy's mtime.
        assert_eq!(
            std::fs::metadata(upper.join("d")).unwrap().mtime(),
            std::fs::metadata(copy.join("d")).unwrap().mtime()
        );
    }

    /// A hard link the RUN made to a file of the layers: both names are
    /// in the upper dir, one inode, as overlay copies the file up to link
    /// it (the link moves the file's change time).
    #[test]
    fn a_link_to_a_layer_file_takes_both_names_up() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        write(&lower.join("a"), "a");
        std::fs::create_dir(&upper).unwrap();
        let rootfs = LayeredRootfs::new(&upper, vec![lower.clone()]);
        let copied = CopiedRoot::make(&rootfs, &dir.path().join("copy")).unwrap();
        std::fs::hard_link(copied.dir().join("a"), copied.dir().join("b")).unwrap();
        copied.diff_into(&rootfs, &upper).unwrap();
        let mut names = walkdir(&upper);
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(
            std::fs::metadata(upper.join("a")).unwrap().ino(),
            std::fs::metadata(upper.join("b")).unwrap().ino()
        );
    }

    /// A socket in the layers (a RUN's, in its snapshot) is not copied,
    /// and not taken for deleted: no whiteout for it.
    #[test]
    fn a_socket_of_the_layers_is_no_whiteout() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        std::fs::create_dir_all(lower.join("run")).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(lower.join("run/s")).unwrap();
        std::fs::create_dir(&upper).unwrap();
        let rootfs = LayeredRootfs::new(&upper, vec![lower.clone()]);
        let copied = CopiedRoot::make(&rootfs, &dir.path().join("copy")).unwrap();
        copied.diff_into(&rootfs, &upper).unwrap();
        assert_eq!(walkdir(&upper), Vec::<String>::new());
    }

    /// Paths below `root`, relative.
    fn walkdir(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                out.push(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
                if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                    stack.push(path);
                }
            }
        }
        out
    }
}
