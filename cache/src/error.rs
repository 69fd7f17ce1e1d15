//! Why a cache could not be imported or exported: each error names the
//! cache (its reference or directory) and the blob concerned.

use std::path::PathBuf;

use kiln_builder::cache::format::FormatError;

/// A cache import or export that failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{what}: {source}")]
    Registry {
        what: String,
        #[source]
        source: Box<kiln_registry::Error>,
    },
    #[error("{what}: {source}")]
    Transfer {
        what: String,
        #[source]
        source: Box<kiln_transfer::TransferError>,
    },
    #[error("{what}: {source}")]
    Store {
        what: String,
        #[source]
        source: Box<kiln_layers::Error>,
    },
    #[error("{what}: {source}")]
    Format {
        what: String,
        #[source]
        source: Box<FormatError>,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl CacheError {
    /// An I/O error at `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CacheError {
        let path = path.into();
        move |source| CacheError::Io { path, source }
    }
}
