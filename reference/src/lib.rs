//! kiln-reference: the two value types every kiln crate names images and
//! blobs with, and the one function every crate shows URLs through; nothing
//! else (no I/O beyond hashing a reader, no HTTP, no store).
//!
//! - [`Digest`]: a validated `sha256:<64 lowercase hex>`; blobs, diff ids,
//!   chain ids and manifest digests alike.
//! - [`Reference`]: an image reference parsed and normalized with Docker's
//!   rules (distribution/reference's `ParseNormalizedNamed`): `alpine` →
//!   `docker.io/library/alpine:latest`, `host:5000/x/y:tag`, `name@sha256:…`
//!   with or without a tag.
//! - [`redact_credentials`]: a URL (or a text holding URLs) as it may be
//!   shown or recorded, its `user:password@` masked as BuildKit masks it.
//!
//! The store (kiln-layers) and the registry client (kiln-registry) both
//! depend on this crate, so an image pulled, stored, built and pushed keeps
//! one typed name throughout, never re-parsed from its string form.
//!
//! ```
//! use kiln_reference::{Digest, Reference};
//! let image = Reference::parse("alpine:3.19")?;
//! assert_eq!(image.to_string(), "docker.io/library/alpine:3.19");
//! assert_eq!(image.familiar(), "alpine:3.19");
//! let pinned = image.with_digest(Digest::of(b"manifest"));
//! assert_eq!(pinned.manifest_reference(), Digest::of(b"manifest").to_string());
//! # Ok::<(), kiln_reference::ReferenceError>(())
//! ```

#![forbid(unsafe_code)]

mod digest;
mod redact;
mod reference;

pub use digest::Digest;
pub use redact::redact_credentials;
pub use reference::{
    is_valid_registry, is_valid_repository_path, Reference, Repository, DEFAULT_TAG, DOCKER_HUB,
    NAME_TOTAL_LENGTH_MAX,
};

/// Why a reference or digest string was refused; names the string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest { input: String, reason: String },
}
