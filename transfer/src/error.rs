//! Errors of pull and push: each names the image, registry and digest concerned.

/// Why a pull or push failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The registry said no, or the bytes did not match (the message names
    /// registry, repository and digest).
    #[error(transparent)]
    Registry(#[from] kiln_registry::Error),

    #[error("{context}: {cause}")]
    Store {
        context: String,
        cause: Box<kiln_layers::Error>,
    },

    #[error("{image}: manifest {digest} is malformed: {cause}")]
    MalformedManifest {
        image: String,
        digest: String,
        cause: Box<kiln_layers::Error>,
    },

    #[error("{image}: config {digest} is unusable: {reason}")]
    MalformedConfig {
        image: String,
        digest: String,
        reason: String,
    },

    #[error("{image}: manifest {manifest} lists {role} {digest} with unsupported media type {media_type:?}")]
    UnknownMediaType {
        image: String,
        manifest: String,
        role: &'static str,
        digest: String,
        media_type: String,
    },

    #[error("{image}: manifest {manifest} names {role} {digest}, which {registry} does not have")]
    MissingBlob {
        image: String,
        manifest: String,
        role: &'static str,
        digest: String,
        registry: String,
    },

    #[error("{image}: no manifest for platform {platform} (available: {available})")]
    NoMatchingPlatform {
        image: String,
        platform: String,
        available: String,
    },

    #[error("{image}: indexes nested more than {limit} deep")]
    NestingTooDeep { image: String, limit: usize },

    #[error("image {0} is not in the store")]
    NotInStore(String),

    #[error(
        "{image}: platform {platform} (manifest {digest}) is not in the store; \
         pull every platform first (kiln pull --platform all)"
    )]
    PlatformNotInStore {
        image: String,
        platform: String,
        digest: String,
    },

    #[error("{image}: blob {digest} is not in the store; the image is incomplete")]
    IncompleteImage { image: String, digest: String },

    #[error(
        "{image}: the store's image is {stored}, whose layers are compressed on the way out: \
         the registry would get {pushed}, not the digest named; push it by a tag (kiln tag, \
         then kiln push)"
    )]
    DigestChanges {
        image: String,
        stored: String,
        pushed: String,
    },
    #[error("{what}: background task failed: {detail}")]
    Task { what: String, detail: String },
}

impl TransferError {
    /// The image the error is about, for the variants whose message starts
    /// with it (`{image}: …`).
    pub fn image(&self) -> Option<&str> {
        match self {
            TransferError::MalformedManifest { image, .. }
            | TransferError::MalformedConfig { image, .. }
            | TransferError::UnknownMediaType { image, .. }
            | TransferError::MissingBlob { image, .. }
            | TransferError::NoMatchingPlatform { image, .. }
            | TransferError::NestingTooDeep { image, .. }
            | TransferError::PlatformNotInStore { image, .. }
            | TransferError::IncompleteImage { image, .. }
            | TransferError::DigestChanges { image, .. } => Some(image),
            _ => None,
        }
    }

    /// The message without its leading image name, for a caller whose own
    /// message names the image (`base image X: no manifest for …`).
    pub fn detail(&self) -> String {
        let text = self.to_string();
        match self.image() {
            Some(image) => text
                .strip_prefix(&format!("{image}: "))
                .map(str::to_string)
                .unwrap_or(text),
            None => text,
        }
    }
}
