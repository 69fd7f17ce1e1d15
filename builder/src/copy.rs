//! COPY and ADD as BuildKit's file op executes them (fsutil's `copy`
//! package), writing into a step's upper dir over the image's lower dirs.
//!
//! The Dockerfile frontend maps `COPY src... dest` to one copy action per
//! source with [`CopyOptions::dockerfile_copy`]: wildcards allowed (and
//! allowed to match nothing), the source path's own symlinks followed, a
//! directory's *contents* copied, destination parents created. What happens
//! then, per matched source:
//! - the destination's parent is created (the destination itself when it ends
//!   in `/` or `/.`), 0755 (or a numeric `--chmod`), owned by `--chown` or root;
//! - the destination path is resolved through symlinks inside the rootfs;
//! - if the destination is an existing directory, a file (or, without
//!   contents semantics, a directory) goes inside it under its base name;
//! - files keep their mode (or take `--chmod`), owner (or `--chown`), mtime
//!   and atime; symlinks are copied as symlinks; hard links stay linked;
//! - a directory copied onto an existing one merges into it, keeping the
//!   existing one's owner and mode but taking the source's mtime.
//!
//! Times, as fsutil gives them (the frontend sets no fixed time for COPY,
//! so `utime` is unset; `SOURCE_DATE_EPOCH` only reaches the layer, whose
//! writer clamps every mtime to it with `rewrite-timestamp=true`):
//! - the destination parents COPY creates have the copy's time;
//! - the directory a directory's contents go into takes the source
//!   directory's atime and mtime once they are in, whether COPY created it
//!   or it existed (fsutil's `copyFileTimestamp` since 2022; Docker
//!   20.10's BuildKit left the copy time on one it created);
//! - an existing directory otherwise changes only when an entry is made in
//!   it: its ancestors are copied up with their times kept
//!   ([`LayeredRootfs::copy_up_parents`], as overlayfs copies up), so
//!   `COPY tool /usr/local/bin/` changes `/usr/local/bin` only.
//!
//! ADD additionally extracts local tar archives (see [`crate::archive`]) and
//! fetches URLs through a caller-provided [`UrlFetcher`], each once per
//! build ([`UrlDownloads`]).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_reference::redact_credentials;
use sha2::Digest as _;

use crate::context::EntryKind;
use crate::dockerignore::{MatchInfo, PatternMatcher};
use crate::gomatch::{contains_wildcards, go_match};
use crate::modes::Chmod;
use crate::rootfs::{
    clean_rel, create_file_copy, join, make_node, resolve, set_mode, set_owner, set_times,
    set_xattr, LayeredRootfs, NewFileInfo, RootfsError, SourceMeta, SourceTree,
};
use crate::users::Owner;

/// Why a COPY/ADD failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0}: not found")]
    SourceNotFound(String),
    #[error("no source files were specified: {0} matched nothing")]
    NoMatch(String),
    #[error("bad source pattern {0:?}")]
    BadPattern(String),
    #[error("cannot replace to directory {0} with file")]
    FileOverDirectory(String),
    #[error("cannot copy to non-directory: {0}")]
    DirectoryOverFile(String),
    #[error("failed to stat {0}: parent of the destination does not exist")]
    MissingDestParent(String),
    #[error("archive {archive}: entry {entry:?} would be extracted outside {dest}")]
    ArchiveBreakout {
        archive: String,
        entry: String,
        dest: String,
    },
    #[error("archive {archive}: {message}")]
    Archive { archive: String, message: String },
    /// The extractor refused an archive's entry or failed writing it.
    #[error(transparent)]
    Extract(kiln_layers::Error),
    #[error(
        "fetching {}: {}",
        redact_credentials(url),
        redact_credentials(message)
    )]
    Fetch { url: String, message: String },
    #[error(
        "checksum of {}: expected {expected}, got {actual}",
        redact_credentials(url)
    )]
    ChecksumMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("unsupported checksum {0:?} (want sha256:<hex>, sha384:<hex> or sha512:<hex>)")]
    BadChecksum(String),
    #[error(transparent)]
    Fs(#[from] RootfsError),
}

/// The knobs of one copy action (BuildKit's `FileActionCopy`).
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// Expand `*?[` in the source path (Go `filepath.Match` per level).
    pub allow_wildcard: bool,
    /// A wildcard matching nothing is not an error.
    pub allow_empty_wildcard: bool,
    /// Follow symlinks in the source path itself (its last component too).
    pub follow_symlinks: bool,
    /// `COPY dir /dst` copies dir's contents, not dir.
    pub copy_dir_contents: bool,
    /// Create missing destination parents (else their absence is an error).
    pub create_dest_path: bool,
    /// `--chown`, resolved.
    pub chown: Option<Owner>,
    /// `--chmod`.
    pub chmod: Option<Chmod>,
    /// Fixed (seconds, nanoseconds) for every copied object, instead of
    /// each source's own times.
    pub utime: Option<(i64, i64)>,
    /// ADD: extract a local source that is a tar archive.
    pub attempt_unpack: bool,
    /// `COPY --exclude` patterns, relative to each copied source.
    pub exclude_patterns: Vec<String>,
    /// Only paths matching one of these (relative to each copied source)
    /// are copied, with the directories leading to them (`COPY --parents`).
    pub include_patterns: Vec<String>,
    /// Link unchanged files from an earlier run of the same COPY
    /// ([`crate::copy_reuse`]), and note what this one writes.
    pub reuse: Option<std::sync::Arc<crate::copy_reuse::Reuse>>,
    /// Replace a destination entry of another kind (a directory where a
    /// file goes, a file where a directory goes) instead of refusing, as
    /// the local exporter's receiver (fsutil's `DiskWriter`) does: for a
    /// destination with no lower layers only (`type=local` into a used
    /// directory), where removing the entry is all it takes.
    pub replace_other_kinds: bool,
}

impl CopyOptions {
    /// What `COPY`/`ADD` of a local (context or stage) path uses.
    pub fn dockerfile_copy(is_add: bool) -> Self {
        CopyOptions {
            allow_wildcard: true,
            allow_empty_wildcard: true,
            follow_symlinks: true,
            copy_dir_contents: true,
            create_dest_path: true,
            attempt_unpack: is_add,
            ..Default::default()
        }
    }

    /// What a heredoc source or a downloaded URL uses.
    pub fn single_file() -> Self {
        CopyOptions {
            create_dest_path: true,
            ..Default::default()
        }
    }
}

/// What one copy wrote, as paths in the rootfs (no leading `/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub written: Vec<String>,
    /// Archives that were extracted instead of copied.
    pub unpacked: Vec<String>,
}

/// The destination of COPY/ADD as the frontend computes it: relative paths
/// join the working directory; a trailing `/` (or `/.`, or a bare `.`) is
/// kept, because it makes the destination a directory.
pub fn dest_path(workdir: &str, dest: &str) -> String {
    let dest = if dest.is_empty() || dest == "." {
        "./"
    } else {
        dest
    };
    let mut p = crate::dockerignore::go_clean(dest);
    if !p.starts_with('/') {
        let wd = if workdir.is_empty() { "/" } else { workdir };
        p = crate::dockerignore::go_clean(&format!("/{wd}/{p}"));
    }
    if dest.ends_with('/') && !p.ends_with('/') {
        p.push('/');
    } else if dest.ends_with("/.") {
        if p != "/" {
            p.push('/');
        }
        p.push('.');
    }
    p
}

/// Copies `src_path` (as written in the Dockerfile, relative to the source
/// tree's root) to `dest_path` (from [`dest_path`]) in `dest`.
pub fn copy(
    src: &dyn SourceTree,
    src_path: &str,
    dest: &LayeredRootfs,
    dest_path: &str,
    opts: &CopyOptions,
) -> Result<CopyReport, CopyError> {
    let mut report = CopyReport::default();
    if !opts.create_dest_path {
        let resolved = resolve(dest, &parent_of(&clean_rel(dest_path)), true)?;
        if dest.stat(&resolved)?.is_none() {
            return Err(CopyError::MissingDestParent(dest_path.to_string()));
        }
    }
    let matches = if opts.allow_wildcard {
        let found = resolve_wildcards(src, src_path, opts.follow_symlinks)?;
        if found.is_empty() {
            if opts.allow_empty_wildcard {
                return Ok(report);
            }
            return Err(CopyError::NoMatch(src_path.to_string()));
        }
        found
    } else {
        vec![clean_rel(src_path)]
    };
    let includes = if opts.include_patterns.is_empty() {
        None
    } else {
        Some(
            PatternMatcher::new(&opts.include_patterns)
                .map_err(|e| CopyError::BadPattern(e.to_string()))?,
        )
    };
    let excludes = if opts.exclude_patterns.is_empty() {
        None
    } else {
        Some(
            PatternMatcher::new(&opts.exclude_patterns)
                .map_err(|e| CopyError::BadPattern(e.to_string()))?,
        )
    };
    for m in matches {
        if opts.attempt_unpack {
            let followed = resolve(src, &m, true)?;
            if let Some(meta) = src.stat(&followed)? {
                if meta.kind == EntryKind::File {
                    let host = src.host_file(&followed)?;
                    if crate::archive::is_archive(&host) {
                        crate::archive::unpack(&host, dest, dest_path, opts.chown)?;
                        report.unpacked.push(m.clone());
                        continue;
                    }
                }
            }
        }
        let mut copier = Copier {
            src,
            dest,
            opts,
            excludes: excludes.as_ref(),
            includes: includes.as_ref(),
            inodes: HashMap::new(),
            pending_parents: Vec::new(),
            report: &mut report,
        };
        copier.copy_one(&m, dest_path)?;
    }
    Ok(report)
}

fn parent_of(rel: &str) -> String {
    match rel.rfind('/') {
        Some(i) => rel[..i].to_string(),
        None => String::new(),
    }
}

fn base_of(rel: &str) -> &str {
    match rel.rfind('/') {
        Some(i) => &rel[i + 1..],
        None => rel,
    }
}

/// `COPY --parents SRC`: the directory copied and the include pattern
/// below it. `a/./b/*` pivots at `a` (the pattern is `b/*`); without a
/// `/./` the whole source root is copied and SRC is the pattern.
pub fn split_parents(src: &str) -> (String, String) {
    let (base, pattern) = match src.split_once("/./") {
        Some((base, pattern)) => (base.to_string(), pattern.to_string()),
        None => ("/".to_string(), src.to_string()),
    };
    let pattern = crate::dockerignore::go_clean(&format!("/{pattern}"));
    (base, pattern.trim_start_matches('/').to_string())
}

/// Copies with `COPY --parents` semantics: the matched paths keep their
/// directories (relative to the pivot) under the destination. A source
/// without wildcards must exist.
pub fn copy_parents(
    src: &dyn SourceTree,
    src_path: &str,
    dest: &LayeredRootfs,
    dest_path: &str,
    opts: &CopyOptions,
) -> Result<CopyReport, CopyError> {
    let (base, pattern) = split_parents(src_path);
    if !contains_wildcards(&base) && !contains_wildcards(&pattern) {
        let required = resolve(
            src,
            &join(&clean_rel(&base), &pattern),
            opts.follow_symlinks,
        )?;
        if src.stat(&required)?.is_none() {
            return Err(CopyError::SourceNotFound(format!(
                "/{}",
                join(&clean_rel(&base), &pattern)
            )));
        }
    }
    let mut o = opts.clone();
    o.include_patterns = vec![pattern];
    o.copy_dir_contents = true;
    copy(src, &base, dest, dest_path, &o)
}

/// BuildKit's `ResolveWildcards`: the path is split at the first component
/// with a wildcard; below the fixed part every path (lexical order, dirs not
/// descended once matched) whose remainder matches is taken.
pub fn resolve_wildcards(
    tree: &dyn SourceTree,
    src_path: &str,
    follow_links: bool,
) -> Result<Vec<String>, CopyError> {
    let cleaned = clean_rel(src_path);
    let parts: Vec<&str> = if cleaned.is_empty() {
        Vec::new()
    } else {
        cleaned.split('/').collect()
    };
    let Some(first_wild) = parts.iter().position(|p| contains_wildcards(p)) else {
        return Ok(vec![cleaned]);
    };
    let fixed = parts[..first_wild].join("/");
    let pattern = parts[first_wild..].join("/");
    let base = if follow_links {
        resolve(tree, &fixed, true)?
    } else {
        resolve(tree, &fixed, false)?
    };
    let Some(base_meta) = tree.stat(&base)? else {
        return Err(CopyError::SourceNotFound(format!("/{fixed}")));
    };
    go_match(&pattern, "").map_err(|_| CopyError::BadPattern(src_path.to_string()))?;
    let mut out = Vec::new();
    if base_meta.is_dir() {
        walk_matches(tree, &base, "", &pattern, &mut out)?;
    }
    Ok(out)
}

fn walk_matches(
    tree: &dyn SourceTree,
    base: &str,
    rel: &str,
    pattern: &str,
    out: &mut Vec<String>,
) -> Result<(), CopyError> {
    for name in tree.list(&join(base, rel))? {
        let child_rel = join(rel, &name);
        let full = join(base, &child_rel);
        let Some(meta) = tree.stat(&full)? else {
            continue;
        };
        let matched = go_match(pattern, &child_rel).unwrap_or(false);
        if matched {
            out.push(full.clone());
        }
        if meta.is_dir() && !matched {
            walk_matches(tree, base, &child_rel, pattern, out)?;
        }
    }
    Ok(())
}

/// Creates `rel` and missing parents in the merged view, as fsutil's
/// `MkdirAll`: new directories get `mode`, `owner` (else stay root's) and
/// `utime` (else now). Returns the directories created.
pub fn mkdir_all(
    dest: &LayeredRootfs,
    rel: &str,
    mode: u32,
    owner: Option<Owner>,
    utime: Option<(i64, i64)>,
) -> Result<Vec<String>, CopyError> {
    let rel = resolve(dest, rel, true)?;
    let mut created = Vec::new();
    if rel.is_empty() {
        return Ok(created);
    }
    let parts: Vec<&str> = rel.split('/').collect();
    for depth in 1..=parts.len() {
        let prefix = parts[..depth].join("/");
        match dest.stat(&prefix)? {
            Some(meta) if meta.is_dir() => continue,
            Some(_) => return Err(RootfsError::NotADirectory(format!("/{prefix}")).into()),
            None => {
                dest.copy_up_parents(&prefix)?;
                let host = dest.upper_path(&prefix);
                std::fs::create_dir(&host).map_err(RootfsError::io(host.display()))?;
                set_mode(&host, mode)?;
                if let Some(o) = owner {
                    set_owner(&host, o.uid, o.gid)?;
                }
                if let Some(t) = utime {
                    set_times(&host, t, t)?;
                }
                created.push(prefix);
            }
        }
    }
    Ok(created)
}

/// One entry of a copy as the walk reaches it: the copied source itself,
/// or something below it.
struct Entry<'e> {
    /// Its path in the source tree.
    src: &'e str,
    /// Its path below the copied source, which the patterns match (empty
    /// for the source itself).
    components: &'e str,
    /// Its path in the rootfs.
    target: &'e str,
    /// An existing directory at the target takes the source's mode (true
    /// below the copied source).
    overwrite_meta: bool,
    /// What the patterns said of its parent.
    parent: &'e Matches,
    /// The target's parent was created by this copy (it was in no layer),
    /// so the target exists nowhere and its parents are in the upper dir:
    /// no lookups through the layers are needed.
    in_new_dir: bool,
}

/// The pattern matchers' results for one path, from which its children's
/// matching starts.
#[derive(Default)]
struct Matches {
    excl: MatchInfo,
    incl: MatchInfo,
}

/// What the patterns decided for one entry.
struct Selection {
    /// It is copied (a directory that is not may still have children that
    /// are).
    include: bool,
    /// An exclude pattern matched it.
    excluded: bool,
    matches: Matches,
}

/// fsutil's `ensureEmptyFileTarget`: a file cannot replace a directory;
/// whatever the upper dir has at `target` (a whiteout too) goes.
fn ensure_empty_file_target(
    dest: &LayeredRootfs,
    target: &str,
    target_meta: Option<&SourceMeta>,
) -> Result<(), CopyError> {
    if target_meta.is_some_and(SourceMeta::is_dir) {
        return Err(CopyError::FileOverDirectory(format!("/{target}")));
    }
    let upper = dest.upper_path(target);
    if std::fs::symlink_metadata(&upper).is_ok() {
        std::fs::remove_file(&upper).map_err(RootfsError::io(upper.display()))?;
    }
    Ok(())
}

struct PendingParent {
    src: String,
    dst: String,
    copied: bool,
}

struct Copier<'a> {
    src: &'a dyn SourceTree,
    dest: &'a LayeredRootfs,
    opts: &'a CopyOptions,
    excludes: Option<&'a PatternMatcher>,
    includes: Option<&'a PatternMatcher>,
    /// Source (device, inode) → destination path of its first copy.
    inodes: HashMap<(u64, u64), String>,
    /// Directories entered but not yet created (excluded by a pattern
    /// that an exception may still re-include below).
    pending_parents: Vec<PendingParent>,
    report: &'a mut CopyReport,
}

impl Copier<'_> {
    fn dir_mode(&self) -> u32 {
        self.opts
            .chmod
            .as_ref()
            .and_then(Chmod::octal)
            .unwrap_or(0o755)
    }

    /// fsutil's `Copy` for one (already wildcard-resolved) source.
    fn copy_one(&mut self, src_rel: &str, dest_path: &str) -> Result<(), CopyError> {
        // The directory that must exist first: the destination itself when
        // it is spelled as a directory, else its parent.
        let spelled_dir = dest_path.ends_with('/') || dest_path.ends_with("/.") || dest_path == ".";
        let ensure = if spelled_dir {
            clean_rel(dest_path)
        } else {
            parent_of(&clean_rel(dest_path))
        };
        mkdir_all(
            self.dest,
            &ensure,
            self.dir_mode(),
            self.opts.chown,
            self.opts.utime,
        )?;
        let dst = resolve(self.dest, dest_path, true)?;

        let followed = resolve(self.src, src_rel, self.opts.follow_symlinks)?;
        let src_meta = self
            .src
            .stat(&followed)?
            .ok_or_else(|| CopyError::SourceNotFound(format!("/{src_rel}")))?;
        // prepareTargetDir: os.Stat follows a symlink at the destination.
        let dest_resolved = resolve(self.dest, &dst, true)?;
        let dest_meta = self.dest.stat(&dest_resolved)?;
        let mut target = dst.clone();
        if let Some(dm) = &dest_meta {
            if (!self.opts.copy_dir_contents && src_meta.is_dir())
                || (!src_meta.is_dir() && dm.is_dir())
            {
                target = join(&dest_resolved, base_of(src_rel));
            }
        }
        let target_parent =
            if self.opts.copy_dir_contents && src_meta.is_dir() && dest_meta.is_none() {
                target.clone()
            } else {
                parent_of(&target)
            };
        mkdir_all(
            self.dest,
            &target_parent,
            self.dir_mode(),
            self.opts.chown,
            self.opts.utime,
        )?;
        // The parent may sit behind a symlink; land inside the rootfs.
        let target = join(
            &resolve(self.dest, &parent_of(&target), true)?,
            base_of(&target),
        );
        self.copy_entry(&Entry {
            src: &followed,
            components: "",
            target: &target,
            overwrite_meta: false,
            parent: &Matches::default(),
            in_new_dir: false,
        })
    }

    /// Copies one entry (a directory with everything below it) that the
    /// patterns select: its content, then its metadata.
    fn copy_entry(&mut self, entry: &Entry<'_>) -> Result<(), CopyError> {
        let Some(selection) = self.select(entry) else {
            return Ok(());
        };
        let meta = self
            .src
            .stat(entry.src)?
            .ok_or_else(|| CopyError::SourceNotFound(format!("/{}", entry.src)))?;
        if !selection.include && !meta.is_dir() {
            return Ok(());
        }
        let target = entry.target;
        let mut target_meta = if entry.in_new_dir {
            None
        } else {
            self.dest.stat(target)?
        };
        if selection.include {
            self.create_pending_parents(entry.overwrite_meta)?;
        }
        if !meta.is_dir() && !entry.in_new_dir {
            target_meta = self.replace_directory(target, target_meta)?;
            ensure_empty_file_target(self.dest, target, target_meta.as_ref())?;
        }
        let mut copy_info = selection.include;
        let mut restore_time = false;
        match &meta.kind {
            EntryKind::Dir => {
                let created = self.copy_directory(entry, &meta, &selection)?;
                if !entry.overwrite_meta {
                    copy_info = created;
                    restore_time = !created;
                }
            }
            EntryKind::File => {
                if self.copy_file(entry, &meta, copy_info)? {
                    return Ok(());
                }
            }
            EntryKind::Symlink(link) => {
                self.dest.copy_up_parents(target)?;
                let upper = self.dest.upper_path(target);
                std::os::unix::fs::symlink(link, &upper)
                    .map_err(RootfsError::io(upper.display()))?;
                self.wrote(target, None);
            }
            kind => {
                self.dest.copy_up_parents(target)?;
                let upper = self.dest.upper_path(target);
                make_node(&upper, kind, meta.mode)?;
                self.wrote(target, None);
            }
        }
        if copy_info {
            self.copy_file_info(&meta, entry.src, target)?;
        } else if restore_time && target_meta.is_some() {
            let upper = self.dest.upper_path(target);
            let (a, m) = self.times(&meta);
            set_times(&upper, a, m)?;
        }
        Ok(())
    }

    /// What `--parents`' include patterns and `--exclude`'s patterns say of
    /// the entry (the copied source itself is always included); `None` when
    /// it is excluded with nothing below it that could be copied.
    fn select(&self, entry: &Entry<'_>) -> Option<Selection> {
        let mut selection = Selection {
            include: true,
            excluded: false,
            matches: Matches::default(),
        };
        if entry.components.is_empty() {
            return Some(selection);
        }
        if let Some(inc) = self.includes {
            let (m, info) = inc.matches_using_parent_results(entry.components, &entry.parent.incl);
            selection.matches.incl = info;
            selection.include = m;
        }
        if let Some(ex) = self.excludes {
            let (m, info) = ex.matches_using_parent_results(entry.components, &entry.parent.excl);
            selection.matches.excl = info;
            if m {
                selection.include = false;
                selection.excluded = true;
                if !ex.has_exclusions() && self.includes.is_none() {
                    return None;
                }
            }
        }
        Some(selection)
    }

    /// Copies a regular file's content, or hard-links it to the copy of
    /// the same source inode made earlier; true when its metadata was set
    /// with the content (a new file in a new directory).
    fn copy_file(
        &mut self,
        entry: &Entry<'_>,
        meta: &SourceMeta,
        copy_info: bool,
    ) -> Result<bool, CopyError> {
        let (src, target) = (entry.src, entry.target);
        if !entry.in_new_dir {
            self.dest.copy_up_parents(target)?;
        }
        let upper = self.dest.upper_path(target);
        let key = (meta.inode.0, meta.inode.1);
        let linked = match self.inodes.get(&key) {
            Some(first) if meta.inode.2 > 1 => {
                let first_upper = self.dest.upper_path(first);
                std::fs::hard_link(&first_upper, &upper).is_ok()
            }
            _ => false,
        };
        if !linked && entry.in_new_dir && copy_info {
            // The common case, with everything set through the new file's
            // descriptor.
            let digest = self.create_file(src, target, &upper, meta)?;
            if meta.inode.2 > 1 {
                self.inodes.insert(key, target.to_string());
            }
            self.wrote(target, digest.as_deref());
            return Ok(true);
        }
        if !linked && copy_info && self.opts.reuse.is_some() {
            // A link to an earlier run's file comes with its metadata set:
            // nothing may be set on it (that inode is in a snapshot).
            let digest = self.with_file_info(src, meta, |info| {
                self.link_unchanged(src, target, &upper, meta, info)
            });
            if let Some(digest) = digest {
                self.wrote(target, Some(&digest));
                return Ok(true);
            }
        }
        if !linked {
            let host = self.src.host_file(src)?;
            crate::rootfs::copy_file_contents(&host, &upper, meta.mode)?;
            if meta.inode.2 > 1 {
                self.inodes.insert(key, target.to_string());
            }
        }
        // The caller sets the metadata when `copy_info`: then the file is
        // the copy's own, offered to a later run.
        let digest = (copy_info && !linked)
            .then(|| self.src.content_digest(src))
            .flatten();
        self.wrote(target, digest.as_deref());
        Ok(false)
    }

    /// Notes that `target` was written (`digest`: the content digest of a
    /// regular file whose bytes and metadata are the copy's own).
    fn wrote(&mut self, target: &str, digest: Option<&str>) {
        if let Some(reuse) = &self.opts.reuse {
            reuse.wrote(target, digest);
        }
        self.report.written.push(target.to_string());
    }

    /// Creates `upper` as a copy of the source file `src` with its final
    /// owner, mode, extended attributes and times, or as a link to the
    /// same file of an earlier run of the COPY; returns the source's
    /// content digest when it is known.
    fn create_file(
        &self,
        src: &str,
        target: &str,
        upper: &Path,
        meta: &SourceMeta,
    ) -> Result<Option<String>, CopyError> {
        self.with_file_info(src, meta, |info| {
            if let Some(digest) = self.link_unchanged(src, target, upper, meta, info) {
                return Ok(Some(digest));
            }
            let host = self.src.host_file(src)?;
            create_file_copy(&host, upper, info)?;
            Ok(self.src.content_digest(src))
        })
    }

    /// Calls `f` with the owner, mode, extended attributes and times the
    /// copy of `src` gets.
    fn with_file_info<T>(
        &self,
        src: &str,
        meta: &SourceMeta,
        f: impl FnOnce(&NewFileInfo<'_>) -> T,
    ) -> T {
        let owner = self.owner_of(meta);
        let (atime, mtime) = self.times(meta);
        let xattrs = self.src.xattrs(src);
        f(&NewFileInfo {
            uid: owner.uid,
            gid: owner.gid,
            mode: self.mode_of(meta),
            xattrs: &xattrs,
            atime,
            mtime,
        })
    }

    /// Links `upper` to the file an earlier run of the COPY left at
    /// `target` when it has the source's content digest and the metadata
    /// `info` this copy gives it; returns the digest if it did.
    fn link_unchanged(
        &self,
        src: &str,
        target: &str,
        upper: &Path,
        meta: &SourceMeta,
        info: &NewFileInfo<'_>,
    ) -> Option<String> {
        // A source with hard links is copied: its other names would be
        // linked to this file and have their metadata set on it.
        let reuse = self.opts.reuse.as_ref().filter(|_| meta.inode.2 == 1)?;
        let digest = self.src.content_digest(src)?;
        reuse
            .try_link(target, &digest, info, upper)
            .then_some(digest)
    }

    fn times(&self, meta: &SourceMeta) -> ((i64, i64), (i64, i64)) {
        match self.opts.utime {
            Some(t) => (t, t),
            None => (meta.atime, meta.mtime),
        }
    }

    fn owner_of(&self, meta: &SourceMeta) -> Owner {
        self.opts.chown.unwrap_or(Owner {
            uid: meta.uid,
            gid: meta.gid,
        })
    }

    fn mode_of(&self, meta: &SourceMeta) -> u32 {
        match &self.opts.chmod {
            Some(c) => c.apply(meta.mode, meta.is_dir()),
            None => meta.mode,
        }
    }

    fn copy_file_info(&self, meta: &SourceMeta, src: &str, target: &str) -> Result<(), CopyError> {
        let upper = self.dest.upper_path(target);
        let owner = self.owner_of(meta);
        set_owner(&upper, owner.uid, owner.gid)?;
        if !matches!(meta.kind, EntryKind::Symlink(_)) {
            set_mode(&upper, self.mode_of(meta))?;
        }
        for (name, value) in self.src.xattrs(src) {
            set_xattr(&upper, &name, &value);
        }
        let (a, m) = self.times(meta);
        set_times(&upper, a, m)?;
        Ok(())
    }

    /// Creates the directory when it is included, then copies its
    /// children (unless it is excluded with no exception that could bring
    /// one back); true if the directory did not exist.
    fn copy_directory(
        &mut self,
        entry: &Entry<'_>,
        meta: &SourceMeta,
        selection: &Selection,
    ) -> Result<bool, CopyError> {
        let mut created = false;
        let mut pending = PendingParent {
            src: entry.src.to_string(),
            dst: entry.target.to_string(),
            copied: false,
        };
        if selection.include {
            created = self.copy_directory_only(
                entry.target,
                meta,
                entry.overwrite_meta,
                entry.in_new_dir,
            )?;
            pending.copied = true;
        }
        self.pending_parents.push(pending);
        let result = (|| {
            if selection.excluded && !self.excludes.is_some_and(|e| e.has_exclusions()) {
                return Ok(());
            }
            for name in self.src.list(entry.src)? {
                self.copy_entry(&Entry {
                    src: &join(entry.src, &name),
                    components: &join(entry.components, &name),
                    target: &join(entry.target, &name),
                    overwrite_meta: true,
                    parent: &selection.matches,
                    in_new_dir: created,
                })?;
            }
            Ok(())
        })();
        self.pending_parents.pop();
        result.map(|()| created)
    }

    /// With [`CopyOptions::replace_other_kinds`], removes the directory a
    /// file is to replace (then nothing is there).
    fn replace_directory(
        &self,
        target: &str,
        target_meta: Option<SourceMeta>,
    ) -> Result<Option<SourceMeta>, CopyError> {
        if !(self.opts.replace_other_kinds && target_meta.as_ref().is_some_and(SourceMeta::is_dir))
        {
            return Ok(target_meta);
        }
        let upper = self.dest.upper_path(target);
        kiln_tree::remove_tree(&upper).map_err(|e| RootfsError::Io {
            path: format!("{} {}", e.op, e.path.display()),
            source: e.source,
        })?;
        Ok(None)
    }

    /// Creates the directory itself; true if it did not exist.
    fn copy_directory_only(
        &mut self,
        target: &str,
        meta: &SourceMeta,
        overwrite_meta: bool,
        in_new_dir: bool,
    ) -> Result<bool, CopyError> {
        if in_new_dir {
            let upper = self.dest.upper_path(target);
            std::fs::create_dir(&upper).map_err(RootfsError::io(upper.display()))?;
            set_mode(&upper, meta.mode)?;
            self.wrote(target, None);
            return Ok(true);
        }
        match self.dest.stat(target)? {
            None => {
                self.dest.copy_up_parents(target)?;
                let upper = self.dest.upper_path(target);
                // A whiteout in the upper dir goes; the new directory must
                // then hide what the lower layers had there (opaque).
                let replaced_whiteout = std::fs::symlink_metadata(&upper).is_ok();
                if replaced_whiteout {
                    std::fs::remove_file(&upper).map_err(RootfsError::io(upper.display()))?;
                }
                std::fs::create_dir(&upper).map_err(RootfsError::io(upper.display()))?;
                if replaced_whiteout {
                    set_xattr(&upper, b"trusted.overlay.opaque", b"y");
                }
                set_mode(&upper, meta.mode)?;
                self.wrote(target, None);
                Ok(true)
            }
            Some(existing) if !existing.is_dir() && self.opts.replace_other_kinds => {
                let upper = self.dest.upper_path(target);
                std::fs::remove_file(&upper).map_err(RootfsError::io(upper.display()))?;
                std::fs::create_dir(&upper).map_err(RootfsError::io(upper.display()))?;
                set_mode(&upper, meta.mode)?;
                self.wrote(target, None);
                Ok(true)
            }
            Some(existing) if !existing.is_dir() => {
                Err(CopyError::DirectoryOverFile(format!("/{target}")))
            }
            Some(_) => {
                // Bring the directory itself into the upper dir so that its
                // metadata can change and children can be written.
                self.dest.copy_up_parents(&join(target, "x"))?;
                if overwrite_meta {
                    set_mode(&self.dest.upper_path(target), meta.mode)?;
                }
                Ok(false)
            }
        }
    }

    fn create_pending_parents(&mut self, overwrite_meta: bool) -> Result<(), CopyError> {
        for i in 0..self.pending_parents.len() {
            if self.pending_parents[i].copied {
                continue;
            }
            let src = self.pending_parents[i].src.clone();
            let dst = self.pending_parents[i].dst.clone();
            let meta = self
                .src
                .stat(&src)?
                .ok_or_else(|| CopyError::SourceNotFound(format!("/{src}")))?;
            let created = self.copy_directory_only(&dst, &meta, overwrite_meta, false)?;
            if created {
                self.copy_file_info(&meta, &src, &dst)?;
            }
            self.pending_parents[i].copied = true;
        }
        Ok(())
    }
}

/// Where the bytes of a URL come from: the caller's HTTP client (the
/// builder speaks no HTTP).
pub trait UrlFetcher {
    /// Streams the body of `url` into `out`.
    fn fetch(&self, url: &str, out: &mut dyn Write) -> Result<FetchInfo, String>;
}

/// What the fetcher learned besides the body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchInfo {
    /// `Last-Modified`, as seconds since the epoch; it becomes the mtime.
    pub last_modified: Option<i64>,
}

/// The file name ADD gives a URL's content: the last path segment, or
/// `__unnamed__`. Never the response's Content-Disposition: BuildKit's
/// Dockerfile frontend computes this name from the URL and passes it to its
/// HTTP source, which reads that header only when no name was given.
pub fn url_file_name(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    let path = without_query
        .split_once("://")
        .map(|(_, rest)| rest.find('/').map(|i| &rest[i..]).unwrap_or(""))
        .unwrap_or("");
    let cleaned = crate::dockerignore::go_clean(if path.is_empty() { "/" } else { path });
    match cleaned.rsplit('/').next() {
        Some(base) if !base.is_empty() && base != "." => base.to_string(),
        _ => "__unnamed__".to_string(),
    }
}

/// Downloads `url` into `dir/<name>` (mode 0600, mtime from Last-Modified),
/// verifying `checksum` when given. Returns the file's name in `dir`.
pub fn fetch_url(
    fetcher: &dyn UrlFetcher,
    url: &str,
    checksum: Option<&str>,
    dir: &Path,
) -> Result<String, CopyError> {
    let name = url_file_name(url);
    let path = dir.join(&name);
    let mut hashing = ContentHasher::for_checksum(checksum)?;
    download(fetcher, url, &path, &mut hashing)?;
    if let (Some(expected), Some(actual)) = (checksum, hashing.finish()) {
        if expected != actual {
            return Err(CopyError::ChecksumMismatch {
                url: url.to_string(),
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(name)
}

/// Streams `url` into a new file at `path`, through `hashing`, then gives
/// the file ADD's mode (0600) and the Last-Modified time (else the epoch) as its mtime.
fn download(
    fetcher: &dyn UrlFetcher,
    url: &str,
    path: &Path,
    hashing: &mut ContentHasher,
) -> Result<FetchInfo, CopyError> {
    let fetch_err = |message: String| CopyError::Fetch {
        url: url.to_string(),
        message,
    };
    let file = std::fs::File::create(path)
        .map_err(|e| fetch_err(format!("creating {}: {e}", path.display())))?;
    let mut writer = std::io::BufWriter::with_capacity(128 * 1024, file);
    let info = {
        let mut tee = Tee {
            out: &mut writer,
            hashing,
        };
        fetcher.fetch(url, &mut tee).map_err(fetch_err)?
    };
    writer
        .flush()
        .map_err(|e| fetch_err(format!("writing {}: {e}", path.display())))?;
    drop(writer);
    set_mode(path, 0o600)?;
    // Without Last-Modified, the epoch, as BuildKit's HTTP source sets it:
    // the layer is then the same at every download of the same bytes.
    let t = info.last_modified.unwrap_or(0);
    set_times(path, (t, 0), (t, 0))?;
    Ok(info)
}

/// The ADD URLs of one build, each downloaded once: the cache keys are
/// computed on the content ([`UrlDownloads::get`] on a URL without
/// `--checksum`), and the step that adds it, when it runs, copies the same
/// file instead of fetching the URL again.
///
/// Each URL gets its own directory `dir/<n>/` holding one file named as
/// ADD names it ([`url_file_name`]), mode 0600, its mtime the
/// Last-Modified time (else the epoch). `dir` is the build's own: created on the first
/// download and removed, with everything in it, when this is dropped.
///
/// ```no_run
/// # use kiln_builder::copy::{UrlDownloads, UrlFetcher};
/// # fn demo(fetcher: &(dyn UrlFetcher + Sync)) -> Result<(), kiln_builder::copy::CopyError> {
/// let downloads = UrlDownloads::new(fetcher, "/var/lib/kiln/builds/urls-1".into());
/// let first = downloads.get("https://example.com/app.tar.gz")?;
/// let again = downloads.get("https://example.com/app.tar.gz")?; // no request
/// assert_eq!(first.path(), again.path());
/// # Ok(()) }
/// ```
pub struct UrlDownloads<'a> {
    fetcher: &'a (dyn UrlFetcher + Sync),
    dir: PathBuf,
    /// One slot per URL, locked while it downloads so that two stages
    /// adding the same URL at the same moment wait for one download.
    slots: std::sync::Mutex<HashMap<String, DownloadSlot>>,
    next_dir: std::sync::atomic::AtomicU64,
}

type DownloadSlot = std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<DownloadedUrl>>>>;

/// A URL's content as [`UrlDownloads`] holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadedUrl {
    pub url: String,
    /// The directory holding only [`DownloadedUrl::name`].
    pub dir: PathBuf,
    /// The file's name, as ADD names it: [`url_file_name`].
    pub name: String,
    /// `sha256:<hex>` of the content.
    pub digest: String,
    /// `Last-Modified`, as seconds since the epoch (the file's mtime).
    pub last_modified: Option<i64>,
}

impl DownloadedUrl {
    /// The downloaded file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// Checks the content against ADD's `--checksum` (`sha256:`, `sha384:`
    /// or `sha512:` and the hex digest); sha256 is known already, the
    /// others are computed from the file.
    pub fn verify(&self, checksum: &str) -> Result<(), CopyError> {
        let mut hashing = ContentHasher::for_checksum(Some(checksum))?;
        let actual = if hashing.algorithm == "sha256" {
            self.digest.clone()
        } else {
            let path = self.path();
            let mut file = std::fs::File::open(&path).map_err(|e| CopyError::Fetch {
                url: self.url.clone(),
                message: format!("reading {}: {e}", path.display()),
            })?;
            std::io::copy(&mut file, &mut hashing).map_err(|e| CopyError::Fetch {
                url: self.url.clone(),
                message: format!("reading {}: {e}", path.display()),
            })?;
            hashing.finish().unwrap_or_default()
        };
        if actual != checksum {
            return Err(CopyError::ChecksumMismatch {
                url: self.url.clone(),
                expected: checksum.to_string(),
                actual,
            });
        }
        Ok(())
    }
}

impl<'a> UrlDownloads<'a> {
    /// Downloads through `fetcher` into `dir` (see the type's docs).
    pub fn new(fetcher: &'a (dyn UrlFetcher + Sync), dir: PathBuf) -> Self {
        UrlDownloads {
            fetcher,
            dir,
            slots: std::sync::Mutex::new(HashMap::new()),
            next_dir: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `url`'s content: downloaded now the first time it is asked for,
    /// the same file afterwards. A failed download is not remembered.
    pub fn get(&self, url: &str) -> Result<std::sync::Arc<DownloadedUrl>, CopyError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.entry(url.to_string()).or_default().clone()
        };
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(done) = slot.as_ref() {
            return Ok(done.clone());
        }
        // A directory per download keeps two URLs that end in the same
        // name apart.
        let number = self
            .next_dir
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.dir.join(number.to_string());
        std::fs::create_dir_all(&dir).map_err(|e| CopyError::Fetch {
            url: url.to_string(),
            message: format!("creating {}: {e}", dir.display()),
        })?;
        let name = url_file_name(url);
        let mut hashing = ContentHasher::sha256();
        let info = download(self.fetcher, url, &dir.join(&name), &mut hashing)?;
        let done = std::sync::Arc::new(DownloadedUrl {
            url: url.to_string(),
            dir,
            name,
            digest: hashing.finish().unwrap_or_default(),
            last_modified: info.last_modified,
        });
        *slot = Some(done.clone());
        Ok(done)
    }
}

impl Drop for UrlDownloads<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes to `out` and hashes what was written.
struct Tee<'a> {
    out: &'a mut dyn Write,
    hashing: &'a mut ContentHasher,
}

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hashing.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

enum Hasher {
    None,
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

/// Hashes content with the algorithm a `--checksum` names (or none).
struct ContentHasher {
    hasher: Hasher,
    algorithm: &'static str,
}

impl ContentHasher {
    fn for_checksum(checksum: Option<&str>) -> Result<Self, CopyError> {
        let (hasher, algorithm) = match checksum.map(|c| c.split_once(':')) {
            None => (Hasher::None, ""),
            Some(Some(("sha256", hex))) if hex.len() == 64 => {
                (Hasher::Sha256(sha2::Sha256::new()), "sha256")
            }
            Some(Some(("sha384", hex))) if hex.len() == 96 => {
                (Hasher::Sha384(sha2::Sha384::new()), "sha384")
            }
            Some(Some(("sha512", hex))) if hex.len() == 128 => {
                (Hasher::Sha512(sha2::Sha512::new()), "sha512")
            }
            Some(_) => return Err(CopyError::BadChecksum(checksum.unwrap_or("").to_string())),
        };
        Ok(ContentHasher { hasher, algorithm })
    }

    fn sha256() -> Self {
        ContentHasher {
            hasher: Hasher::Sha256(sha2::Sha256::new()),
            algorithm: "sha256",
        }
    }

    fn update(&mut self, buf: &[u8]) {
        match &mut self.hasher {
            Hasher::None => {}
            Hasher::Sha256(h) => h.update(buf),
            Hasher::Sha384(h) => h.update(buf),
            Hasher::Sha512(h) => h.update(buf),
        }
    }

    /// `<algorithm>:<hex>`, or None without an algorithm.
    fn finish(self) -> Option<String> {
        let hex = match self.hasher {
            Hasher::None => return None,
            Hasher::Sha256(h) => crate::context::hex(&h.finalize()),
            Hasher::Sha384(h) => crate::context::hex(&h.finalize()),
            Hasher::Sha512(h) => crate::context::hex(&h.finalize()),
        };
        Some(format!("{}:{hex}", self.algorithm))
    }
}

impl Write for ContentHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes a heredoc source as BuildKit's inline-document step does (a
/// 0644 file named after the heredoc) into `dir`; returns its path.
pub fn write_heredoc(dir: &Path, name: &str, content: &str) -> Result<PathBuf, CopyError> {
    let rel = clean_rel(name);
    let path = dir.join(if rel.is_empty() { "__heredoc__" } else { &rel });
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(RootfsError::io(parent.display()))?;
    }
    std::fs::write(&path, content).map_err(RootfsError::io(path.display()))?;
    set_mode(&path, 0o644)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dest_paths_follow_the_frontend() {
        assert_eq!(dest_path("/", "/x"), "/x");
        assert_eq!(dest_path("/app", "x"), "/app/x");
        assert_eq!(dest_path("/app", "x/"), "/app/x/");
        assert_eq!(dest_path("/app", "."), "/app/");
        assert_eq!(dest_path("/app", ""), "/app/");
        assert_eq!(dest_path("/", "."), "/");
        assert_eq!(dest_path("/app", "/x/."), "/x/.");
        assert_eq!(dest_path("/app", "../y//z/"), "/y/z/");
    }

    #[test]
    fn url_names() {
        assert_eq!(url_file_name("https://h/a/b.tar.gz?x=1"), "b.tar.gz");
        assert_eq!(url_file_name("https://h/"), "__unnamed__");
        assert_eq!(url_file_name("https://h"), "__unnamed__");
        assert_eq!(url_file_name("http://h/dir/"), "dir");
    }
}
