//! The registry client's errors. Each names the registry and repository,
//! and the digest or tag concerned.

use crate::auth::CredentialError;
use crate::limits::Stall;

/// What went wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Reference(#[from] crate::reference::ReferenceError),

    #[error("{registry}: cannot reach the registry: {detail}")]
    Unreachable { registry: String, detail: String },

    #[error("{registry}/{repository}: {what}: {detail}")]
    Connection {
        registry: String,
        repository: String,
        what: String,
        detail: String,
    },

    /// A request or transfer exceeded one of the [`Timeouts`](crate::Timeouts):
    /// `stall` says which, with the figures. Not retried by the client.
    #[error("{}: {what}: {stall}{}", place(.registry, .repository), attempts_note(*.attempts))]
    Stalled {
        registry: String,
        /// Empty for requests that concern no repository (tokens).
        repository: String,
        /// What was asked for: `manifest v1`, `blob sha256:…`, `token from URL`.
        what: String,
        stall: Box<Stall>,
        /// Attempts made (retries of header timeouts and connection errors).
        attempts: u32,
    },

    #[error("{registry}/{repository}: {what}: registry answered {status}{}", registry_message(.message))]
    Status {
        registry: String,
        repository: String,
        what: String,
        status: u16,
        message: String,
    },

    #[error("{registry}/{repository}: {what} not found{}", registry_message(.message))]
    NotFound {
        registry: String,
        repository: String,
        what: String,
        message: String,
    },

    #[error("{registry}/{repository}: {what}: access denied ({status}){}", registry_message(.message))]
    Denied {
        registry: String,
        repository: String,
        what: String,
        status: u16,
        message: String,
    },

    #[error("{registry}: getting a token from {realm}: {detail}")]
    Token {
        registry: String,
        realm: String,
        detail: String,
    },

    #[error("{registry}: unsupported authentication challenge {challenge:?}")]
    Challenge { registry: String, challenge: String },

    #[error("{registry}: {cause}")]
    Credentials {
        registry: String,
        cause: CredentialError,
    },

    #[error(
        "{registry}/{repository}: {digest}: bytes received hash to {actual}; not storing them"
    )]
    DigestMismatch {
        registry: String,
        repository: String,
        digest: String,
        actual: String,
    },

    #[error("{registry}/{repository}: {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        registry: String,
        repository: String,
        digest: String,
        expected: u64,
        actual: u64,
    },

    #[error("{registry}/{repository}: manifest {reference} is larger than {limit} bytes")]
    ManifestTooLarge {
        registry: String,
        repository: String,
        reference: String,
        limit: usize,
    },

    #[error("{registry}/{repository}: {digest}: writing the received bytes: {cause}")]
    Sink {
        registry: String,
        repository: String,
        digest: String,
        cause: std::io::Error,
    },

    #[error("{registry}/{repository}: {digest}: reading the bytes to upload: {cause}")]
    Source {
        registry: String,
        repository: String,
        digest: String,
        cause: std::io::Error,
    },

    #[error("{registry}/{repository}: {what}: registry sent an invalid {header} header {value:?}")]
    BadHeader {
        registry: String,
        repository: String,
        what: String,
        header: &'static str,
        value: String,
    },

    #[error("reading CA certificates from {path}: {detail}")]
    CaCert { path: String, detail: String },

    #[error("client certificate {cert} (key {key}): {detail}")]
    ClientCert {
        cert: String,
        key: String,
        detail: String,
    },

    #[error("building the HTTP client: {0}")]
    ClientSetup(String),

    /// `url` keeps its credentials (the caller's); the message masks them.
    #[error(
        "downloading {}: {}",
        kiln_reference::redact_credentials(url),
        kiln_reference::redact_credentials(detail)
    )]
    Download { url: String, detail: String },

    #[error("downloading {url}: {stall}")]
    DownloadStalled { url: String, stall: Box<Stall> },
}

fn place(registry: &str, repository: &str) -> String {
    if repository.is_empty() {
        registry.to_string()
    } else {
        format!("{registry}/{repository}")
    }
}

fn attempts_note(attempts: u32) -> String {
    if attempts > 1 {
        format!(" ({attempts} attempts)")
    } else {
        String::new()
    }
}

fn registry_message(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl Error {
    /// What stalled, for [`Error::Stalled`] and [`Error::DownloadStalled`].
    pub fn stall(&self) -> Option<&Stall> {
        match self {
            Error::Stalled { stall, .. } | Error::DownloadStalled { stall, .. } => Some(stall),
            _ => None,
        }
    }

    /// True when retrying later could succeed (used by callers that loop).
    /// A stall is not: the client has used up the time it was given.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connection { .. } | Error::Unreachable { .. } => true,
            Error::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}
