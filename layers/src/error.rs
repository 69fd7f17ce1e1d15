//! The crate's error type: every variant names the file, blob, image or tar
//! entry it concerns.

use std::path::PathBuf;

use crate::digest::Digest;

/// Everything that can go wrong in the store, snapshots, diffs and archives.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A reference or digest string that does not parse (it names the string).
    #[error(transparent)]
    Reference(#[from] kiln_reference::ReferenceError),
    #[error("blob {expected}: content has digest {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {0} is not in the store")]
    BlobNotFound(Digest),
    #[error("{what}: invalid JSON: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: {reason}")]
    InvalidManifest { what: String, reason: String },
    #[error("{what}: unsupported media type {media_type:?}")]
    UnsupportedMediaType { what: String, media_type: String },
    #[error("image {image}: no manifest for platform {platform} (available: {available})")]
    NoMatchingPlatform {
        image: String,
        platform: String,
        available: String,
    },
    /// An image of one platform (no index) asked for as another's.
    #[error(
        "image {image} was found but does not match the specified platform: \
         wanted {wanted}, actual: {actual}"
    )]
    PlatformMismatch {
        image: String,
        wanted: String,
        actual: String,
    },
    /// The index lists the platform but the store does not hold its
    /// image (a pull of another platform kept only that one).
    #[error("image {image}: platform {platform} is not in the store (it holds: {stored})")]
    PlatformNotInStore {
        image: String,
        platform: String,
        stored: String,
    },
    #[error(
        "invalid platform {0:?}: expected os/arch[/variant], a known OS or a known architecture"
    )]
    InvalidPlatform(String),
    #[error("image {0} not found in the store")]
    ImageNotFound(String),
    #[error("{query:?} matches more than one image: {matches}")]
    AmbiguousImage { query: String, matches: String },
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    UnsafeEntry {
        layer: String,
        entry: String,
        reason: String,
    },
    #[error("layer {layer}: {reason}")]
    BadLayer { layer: String, reason: String },
    /// An archive entry (`ADD`) that would land outside the directory it is
    /// extracted into (`into`, a path in the destination tree).
    #[error("archive {archive}: entry {entry:?} would be extracted outside {into}")]
    ArchiveBreakout {
        archive: String,
        entry: String,
        into: String,
    },
    #[error("archive {archive}: entry {entry:?}: {reason}")]
    UnsafeArchiveEntry {
        archive: String,
        entry: String,
        reason: String,
    },
    #[error("layer {layer}: reading tar: {source}")]
    Tar {
        layer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot turn into a layer: {reason}")]
    Diff { path: PathBuf, reason: String },
    #[error("archive {path}: {reason}")]
    Archive { path: PathBuf, reason: String },
    /// A garbage collection policy file that does not parse: the file, the
    /// line (1-based) and what is wrong there.
    #[error("{}:{line}: {reason}", path.display())]
    Config {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// Shorthand for the crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path` while doing `op` (a verb: "open", "rename", …).
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// `.map_err(io_at("open", &path))` in one short call.
pub(crate) fn io_at<'a>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::io(op, path, source)
}
