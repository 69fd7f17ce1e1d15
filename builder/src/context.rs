//! The build context: the files under the context directory that survive
//! `.dockerignore`, with a content digest for each.
//!
//! The walk follows BuildKit's context transfer (fsutil's filtered walk):
//! entries come in lexical order, symlinks are not followed, an excluded
//! directory is skipped whole unless a `!` exception could re-include
//! something below it, and an excluded directory that has an included
//! descendant is still part of the context (as its parent). Owners are
//! reset to 0:0 as the docker CLI does when it sends a context.
//!
//! Hashing reads each regular file once; a [`StatCache`] persisted in the
//! store remembers `(path, size, mtime, inode, ctime) → sha256`
//! so that an unchanged context is not read again. The change time is
//! there because nothing can set it: a file rewritten with its size and
//! mtime restored (`touch -r`, a tool keeping times) still has a new one.
//!
//! ```no_run
//! use kiln_builder::{context::{BuildContext, StatCache}, dockerignore};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = std::path::Path::new("app");
//! let ignore = dockerignore::load_for_build(dir, None)?;
//! let store = kiln_layers::Store::open("/var/lib/kiln")?;
//! let mut cache = StatCache::open_in(&store, dir)?;
//! let ctx = BuildContext::load(dir, &ignore, Some(&mut cache))?;
//! cache.save()?;
//! println!("{} entries, {} files read", ctx.entries().len(), ctx.stats().files_read);
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::dockerignore::{MatchInfo, PatternMatcher};

/// Failure while reading the context or the stat cache.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("build context {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("build context {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("context stat cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ContextError + '_ {
    move |source| ContextError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The hex SHA-256 of no bytes: the content digest of a socket's empty file.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// What kind of filesystem object an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    /// A symlink and its target, never followed.
    Symlink(String),
    Fifo,
    Socket,
    /// Character or block device, with its `st_rdev`.
    Device {
        block: bool,
        rdev: u64,
    },
}

/// One included path of the context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContextEntry {
    /// Slash-separated path relative to the context root (no leading `/`).
    pub path: String,
    pub kind: EntryKind,
    /// Permission and special bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner as COPY sees it: always 0, as the docker CLI resets it.
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Modification time, seconds and nanoseconds since the epoch.
    pub mtime: (i64, i64),
    /// `sha256:<hex>` of the file's bytes (regular files only).
    pub content_digest: Option<String>,
    /// `sha256:<hex>` over everything COPY carries: kind, mode, owner, link
    /// target, content. mtime is left out, as BuildKit's content hash does.
    pub digest: String,
}

/// How much work hashing did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HashStats {
    /// Regular files whose bytes were read.
    pub files_read: usize,
    /// Regular files whose digest came from the stat cache.
    pub files_cached: usize,
    pub bytes_read: u64,
}

/// The filtered, hashed build context.
#[derive(Debug, Clone)]
pub struct BuildContext {
    root: PathBuf,
    entries: BTreeMap<String, ContextEntry>,
    stats: HashStats,
    /// The directories (`""`: the root) that are not on the host as the
    /// build sees them: something in them, at any depth, is excluded, or
    /// owned by someone other than root (the docker CLI sends every file
    /// as root's). Each one's parents are in it too.
    altered: BTreeSet<String>,
    /// Entries whose name, or symlink target, is not UTF-8 (kept under a
    /// lossy name, not read, not walked into): a build that does not copy
    /// them goes on, one that does is refused ([`RootfsError::NotUtf8`]).
    ///
    /// [`RootfsError::NotUtf8`]: crate::rootfs::RootfsError::NotUtf8
    undecodable: BTreeSet<String>,
    /// Sockets, which the context holds as empty regular files with the
    /// socket's mode and times, as BuildKit's context transfer makes them
    /// (fsutil asks data of regular files only and writes anything it has
    /// no other form for as a regular file): the copy reads no bytes of
    /// them ([`crate::rootfs::SourceTree`] for `BuildContext`).
    sockets: BTreeSet<String>,
}

impl BuildContext {
    /// Walks `root`, keeping what `ignore` does not exclude, and hashes it.
    pub fn load(
        root: &Path,
        ignore: &PatternMatcher,
        mut cache: Option<&mut StatCache>,
    ) -> Result<Self, ContextError> {
        let meta = std::fs::metadata(root).map_err(io_err(root))?;
        if !meta.is_dir() {
            return Err(ContextError::NotADirectory(root.to_path_buf()));
        }
        // Absolute, so that the stat cache's keys name one file whatever
        // the working directory was.
        let root = std::fs::canonicalize(root).map_err(io_err(root))?;
        let mut ctx = BuildContext {
            root: root.clone(),
            entries: BTreeMap::new(),
            stats: HashStats::default(),
            altered: BTreeSet::new(),
            undecodable: BTreeSet::new(),
            sockets: BTreeSet::new(),
        };
        if meta.uid() != 0 || meta.gid() != 0 {
            ctx.alter("");
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if let Some(cache) = cache.as_mut() {
            cache.begin_walk();
        }
        let mut pending_parents: Vec<(String, std::fs::Metadata)> = Vec::new();
        ctx.walk_dir(
            "",
            ignore,
            &MatchInfo::default(),
            &mut pending_parents,
            &mut cache,
            now,
        )?;
        Ok(ctx)
    }

    fn walk_dir(
        &mut self,
        rel_dir: &str,
        ignore: &PatternMatcher,
        parent_info: &MatchInfo,
        pending_parents: &mut Vec<(String, std::fs::Metadata)>,
        cache: &mut Option<&mut StatCache>,
        now: i64,
    ) -> Result<(), ContextError> {
        let host_dir = self.host_path(rel_dir);
        let mut children: Vec<(String, std::fs::Metadata, bool)> = Vec::new();
        for entry in std::fs::read_dir(&host_dir).map_err(io_err(&host_dir))? {
            let entry = entry.map_err(io_err(&host_dir))?;
            // Stat relative to the open directory (as lstat): no walk of
            // the whole path for each of thousands of files.
            let meta = entry.metadata().map_err(io_err(&entry.path()))?;
            // A name that is not UTF-8 is kept under its lossy form, which
            // names no host file: its entry is not read (see `undecodable`).
            let (name, decodable) = match entry.file_name().into_string() {
                Ok(name) => (name, true),
                Err(raw) => (raw.to_string_lossy().into_owned(), false),
            };
            children.push((name, meta, decodable));
        }
        children.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, meta, decodable) in children {
            let rel = if rel_dir.is_empty() {
                name.clone()
            } else {
                format!("{rel_dir}/{name}")
            };
            let (excluded, info) = ignore.matches_using_parent_results(&rel, parent_info);
            if excluded {
                self.alter(rel_dir);
            } else if meta.uid() != 0 || meta.gid() != 0 {
                self.alter(if meta.is_dir() { &rel } else { rel_dir });
            }
            if excluded {
                if meta.is_dir() && !ignore.can_skip_excluded_dir(&rel) {
                    pending_parents.push((rel.clone(), meta));
                    self.walk_dir(&rel, ignore, &info, pending_parents, cache, now)?;
                    // Still pending means nothing below was included.
                    if pending_parents.last().is_some_and(|(p, _)| *p == rel) {
                        pending_parents.pop();
                    }
                }
                continue;
            }
            // An included path brings in its excluded ancestors.
            for (parent_rel, parent_meta) in pending_parents.drain(..) {
                let entry = self.make_entry(&parent_rel, &parent_meta, cache, now)?;
                self.entries.insert(parent_rel, entry);
            }
            if !decodable {
                self.add_undecodable(&rel, &meta);
                continue;
            }
            let entry = self.make_entry(&rel, &meta, cache, now)?;
            if matches!(&entry.kind, EntryKind::Symlink(t) if t.contains('\u{FFFD}'))
                && self.link_target_undecodable(&rel)
            {
                self.add_undecodable(&rel, &meta);
                continue;
            }
            self.entries.insert(rel.clone(), entry);
            if meta.is_dir() {
                self.walk_dir(&rel, ignore, &info, pending_parents, cache, now)?;
            }
        }
        Ok(())
    }

    /// An entry kiln cannot read by its name: listed (a COPY that takes it
    /// is refused, naming it), not hashed, not walked into.
    fn add_undecodable(&mut self, rel: &str, meta: &std::fs::Metadata) {
        let mut entry = ContextEntry {
            path: rel.to_string(),
            kind: if meta.is_dir() {
                EntryKind::Dir
            } else {
                EntryKind::File
            },
            mode: meta.mode() & 0o7777,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: (meta.mtime(), meta.mtime_nsec()),
            content_digest: None,
            digest: String::new(),
        };
        entry.digest = entry_digest(&entry);
        self.entries.insert(rel.to_string(), entry);
        self.undecodable.insert(rel.to_string());
    }

    /// Whether the symlink `rel`'s target is not UTF-8.
    fn link_target_undecodable(&self, rel: &str) -> bool {
        std::fs::read_link(self.host_path(rel)).is_ok_and(|t| t.to_str().is_none())
    }

    /// Whether `rel` is, or is under, an entry whose name or link target
    /// is not UTF-8.
    pub fn is_undecodable(&self, rel: &str) -> bool {
        let rel = rel.trim_matches('/');
        self.undecodable.iter().any(|u| {
            rel == u
                || rel
                    .strip_prefix(u.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }

    /// Whether `rel` is a socket, which the build sees as an empty regular
    /// file (see `sockets`).
    pub fn is_socket(&self, rel: &str) -> bool {
        !self.sockets.is_empty() && self.sockets.contains(rel.trim_matches('/'))
    }

    /// Marks `dir` and its parents as not on the host as the build sees
    /// them.
    fn alter(&mut self, dir: &str) {
        let mut dir = dir;
        while self.altered.insert(dir.to_string()) && !dir.is_empty() {
            dir = dir.rsplit_once('/').map_or("", |(parent, _)| parent);
        }
    }

    /// Whether the directory `rel` is on the host exactly as the build sees
    /// it (nothing in it excluded, everything owned by root): a read-only
    /// mount may bind it where it lies instead of a copy.
    pub fn is_as_seen(&self, rel: &str) -> bool {
        let rel = rel.trim_matches('/');
        let rel = if rel == "." { "" } else { rel };
        !self.altered.contains(rel)
    }

    fn make_entry(
        &mut self,
        rel: &str,
        meta: &std::fs::Metadata,
        cache: &mut Option<&mut StatCache>,
        now: i64,
    ) -> Result<ContextEntry, ContextError> {
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            let host = self.host_path(rel);
            let target = std::fs::read_link(&host).map_err(io_err(&host))?;
            EntryKind::Symlink(target.to_string_lossy().into_owned())
        } else if ft.is_file() {
            EntryKind::File
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else if ft.is_socket() {
            // An empty regular file (see `sockets`): a directory holding
            // one is not on the host as the build sees it.
            self.sockets.insert(rel.to_string());
            self.alter(rel.rsplit_once('/').map_or("", |(dir, _)| dir));
            EntryKind::File
        } else {
            EntryKind::Device {
                block: ft.is_block_device(),
                rdev: meta.rdev(),
            }
        };
        let mtime = (meta.mtime(), meta.mtime_nsec());
        let content_digest = if ft.is_socket() {
            Some(format!("sha256:{EMPTY_SHA256}"))
        } else if kind == EntryKind::File {
            let key = StatKey {
                size: meta.len(),
                mtime_sec: mtime.0,
                mtime_nsec: mtime.1,
                ino: meta.ino(),
                ctime_sec: meta.ctime(),
                ctime_nsec: meta.ctime_nsec(),
            };
            let cached = cache.as_mut().and_then(|c| c.lookup(rel, &key));
            let digest = match cached {
                Some(d) => {
                    self.stats.files_cached += 1;
                    d
                }
                None => {
                    let (d, n) = sha256_file(&self.host_path(rel))?;
                    self.stats.files_read += 1;
                    self.stats.bytes_read += n;
                    // A file modified within the last seconds could change
                    // again without its mtime moving: don't trust that stat.
                    if let Some(c) = cache.as_mut() {
                        if mtime.0 < now - 2 {
                            c.insert(rel, key, d.clone());
                        }
                    }
                    d
                }
            };
            Some(format!("sha256:{digest}"))
        } else {
            None
        };
        let mut entry = ContextEntry {
            path: rel.to_string(),
            kind,
            mode: meta.mode() & 0o7777,
            uid: 0,
            gid: 0,
            size: if ft.is_file() { meta.len() } else { 0 },
            mtime,
            content_digest,
            digest: String::new(),
        };
        entry.digest = entry_digest(&entry);
        Ok(entry)
    }

    /// The context directory on the host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a context path lives on the host.
    pub fn host_path(&self, rel: &str) -> PathBuf {
        let rel = rel.trim_start_matches('/');
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// All included entries, by path.
    pub fn entries(&self) -> &BTreeMap<String, ContextEntry> {
        &self.entries
    }

    /// One entry (`""` or `"."` is the root, which is always included and has
    /// no entry).
    pub fn get(&self, rel: &str) -> Option<&ContextEntry> {
        self.entries.get(rel.trim_start_matches('/'))
    }

    /// Whether a context path is part of the (filtered) context.
    pub fn contains(&self, rel: &str) -> bool {
        let rel = rel.trim_matches('/');
        rel.is_empty() || rel == "." || self.entries.contains_key(rel)
    }

    /// The included children names of a directory, sorted.
    pub fn children(&self, rel_dir: &str) -> Vec<&str> {
        let dir = rel_dir.trim_matches('/');
        let dir = if dir == "." { "" } else { dir };
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, _)| {
                let rest = &k[prefix.len()..];
                (!rest.is_empty() && !rest.contains('/')).then_some(rest)
            })
            .collect()
    }

    /// A digest of a path and everything included below it: what a COPY of
    /// that path depends on. `None` when the path is not in the context.
    pub fn tree_digest(&self, rel: &str) -> Option<String> {
        let rel = rel.trim_matches('/');
        let rel = if rel == "." { "" } else { rel };
        let mut hasher = Sha256::new();
        if rel.is_empty() {
            hasher.update(b"root\0");
        } else {
            let entry = self.entries.get(rel)?;
            hasher.update(b"self\0");
            hasher.update(entry.digest.as_bytes());
            hasher.update(b"\0");
        }
        let prefix = if rel.is_empty() {
            String::new()
        } else {
            format!("{rel}/")
        };
        for (path, entry) in self
            .entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
        {
            hasher.update(&path.as_bytes()[prefix.len()..]);
            hasher.update(b"\0");
            hasher.update(entry.digest.as_bytes());
            hasher.update(b"\0");
        }
        Some(format!("sha256:{}", hex(&hasher.finalize())))
    }

    /// What hashing cost.
    pub fn stats(&self) -> HashStats {
        self.stats
    }
}

fn entry_digest(e: &ContextEntry) -> String {
    let mut h = Sha256::new();
    let kind = match &e.kind {
        EntryKind::File => "file".to_string(),
        EntryKind::Dir => "dir".to_string(),
        EntryKind::Symlink(t) => format!("symlink:{t}"),
        EntryKind::Fifo => "fifo".to_string(),
        EntryKind::Socket => "socket".to_string(),
        EntryKind::Device { block, rdev } => format!("dev:{block}:{rdev}"),
    };
    h.update(
        format!(
            "{kind}\0{:o}\0{}\0{}\0{}\0",
            e.mode,
            e.uid,
            e.gid,
            e.content_digest.as_deref().unwrap_or("")
        )
        .as_bytes(),
    );
    format!("sha256:{}", hex(&h.finalize()))
}

/// Hex digest and length of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<(String, u64), ContextError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    // Below malloc's mmap threshold: one buffer per file stays cheap.
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex(&hasher.finalize()), total))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct StatKey {
    size: u64,
    mtime_sec: i64,
    mtime_nsec: i64,
    ino: u64,
    ctime_sec: i64,
    ctime_nsec: i64,
}

#[derive(Debug, Clone)]
struct CachedDigest {
    key: StatKey,
    sha256: String,
}

/// `(path, size, mtime, inode) → sha256` of one context directory's files,
/// kept between builds in the store's context stats directory
/// ([`kiln_layers::Store::context_stats_dir`]), one file per context named
/// with a hash of its absolute path, one line a file:
/// `<sha256> <size> <mtime sec> <mtime nsec> <inode> <path>`. One file per
/// context, so a build reads only what its own context needs; written back
/// (temp file + rename) only when something changed, with only the files
/// this walk saw.
#[derive(Debug)]
pub struct StatCache {
    file: PathBuf,
    loaded: HashMap<String, CachedDigest>,
    seen: Vec<(String, CachedDigest)>,
    changed: bool,
}

impl StatCache {
    /// Opens the cache of the context directory `context` in `store`; a
    /// missing or unreadable cache starts empty.
    pub fn open_in(store: &kiln_layers::Store, context: &Path) -> Result<Self, ContextError> {
        Self::open_at(&store.context_stats_dir(), context)
    }

    /// Opens the cache of `context` in the store's `stats_dir`.
    fn open_at(stats_dir: &Path, context: &Path) -> Result<Self, ContextError> {
        let context = std::fs::canonicalize(context).unwrap_or_else(|_| context.to_path_buf());
        let name = hex(&Sha256::digest(context.as_os_str().as_encoded_bytes()));
        let file = stats_dir.join(&name[..32]);
        let loaded = match std::fs::read(&file) {
            Ok(bytes) => parse_stat_cache(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(source) => return Err(ContextError::Cache { path: file, source }),
        };
        Ok(StatCache {
            file,
            loaded,
            seen: Vec::new(),
            changed: false,
        })
    }

    /// An in-memory cache that `save` does not persist anywhere useful.
    pub fn in_memory() -> Self {
        StatCache {
            file: PathBuf::new(),
            loaded: HashMap::new(),
            seen: Vec::new(),
            changed: false,
        }
    }

    /// Starts a walk: what an earlier walk with this cache saw is known.
    fn begin_walk(&mut self) {
        let seen: Vec<_> = self.seen.drain(..).collect();
        self.loaded.extend(seen);
    }

    fn lookup(&mut self, rel: &str, key: &StatKey) -> Option<String> {
        let found = self.loaded.get(rel).filter(|c| c.key == *key)?.clone();
        let sha256 = found.sha256.clone();
        self.seen.push((rel.to_string(), found));
        Some(sha256)
    }

    fn insert(&mut self, rel: &str, key: StatKey, sha256: String) {
        // A newline would end the record early: such a file is not cached.
        if !rel.contains('\n') {
            self.seen
                .push((rel.to_string(), CachedDigest { key, sha256 }));
            self.changed = true;
        }
    }

    /// Number of remembered files.
    pub fn len(&self) -> usize {
        if self.seen.is_empty() {
            self.loaded.len()
        } else {
            self.seen.len()
        }
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the cache atomically (temp file + rename) if it changed: a
    /// file was hashed, or one it had is gone.
    pub fn save(&mut self) -> Result<(), ContextError> {
        let unchanged = !self.changed && self.seen.len() == self.loaded.len();
        if unchanged || self.file.as_os_str().is_empty() {
            return Ok(());
        }
        let err = |source| ContextError::Cache {
            path: self.file.clone(),
            source,
        };
        let dir = self.file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut text = String::with_capacity(self.seen.len() * 120);
        for (rel, c) in &self.seen {
            let k = &c.key;
            text.push_str(&format!(
                "{} {} {} {} {} {} {} {rel}\n",
                c.sha256, k.size, k.mtime_sec, k.mtime_nsec, k.ino, k.ctime_sec, k.ctime_nsec
            ));
        }
        let tmp = self
            .file
            .with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, &self.file).map_err(err)?;
        self.loaded = self.seen.drain(..).collect();
        self.changed = false;
        Ok(())
    }
}

/// Lines of a stat cache file; a malformed line is skipped (its file is
/// then hashed again).
fn parse_stat_cache(bytes: &[u8]) -> HashMap<String, CachedDigest> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = HashMap::new();
    // Records end at '\n' only: a name may end in '\r'.
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        let mut fields = line.splitn(8, ' ');
        let parsed = (|| {
            let sha256 = fields.next()?;
            let size = fields.next()?.parse().ok()?;
            let mtime_sec = fields.next()?.parse().ok()?;
            let mtime_nsec = fields.next()?.parse().ok()?;
            let ino = fields.next()?.parse().ok()?;
            let ctime_sec = fields.next()?.parse().ok()?;
            let ctime_nsec = fields.next()?.parse().ok()?;
            let rel = fields.next()?;
            (sha256.len() == 64).then(|| {
                let key = StatKey {
                    size,
                    mtime_sec,
                    mtime_nsec,
                    ino,
                    ctime_sec,
                    ctime_nsec,
                };
                let sha256 = sha256.to_string();
                (rel.to_string(), CachedDigest { key, sha256 })
            })
        })();
        if let Some((rel, cached)) = parsed {
            out.insert(rel, cached);
        }
    }
    out
}
