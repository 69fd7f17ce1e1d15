//! Base images as the planner sees them: names parsed where their line is
//! expanded ([`ImageName`]), and configs looked up through the
//! [`ImageLookup`] seam (the builder speaks no HTTP: the store resolver, a
//! registry, or a test table answer).

use kiln_layers::oci::{ImageConfig, Platform};
use kiln_layers::{Digest, Reference};
use serde::Serialize;

use super::{PlanError, PlanErrorKind};

/// A base image as the registry or the store knows it.
#[derive(Debug, Clone)]
pub struct FoundImage {
    /// The reference it was found by (normalized, e.g.
    /// `docker.io/library/alpine:3.20`).
    pub reference: Reference,
    /// The manifest digest, when known.
    pub digest: Option<Digest>,
    pub config: ImageConfig,
}

/// Why a lookup gave no image: the image does not exist where it was
/// looked for, or looking failed (a corrupt store, a registry error). Only
/// the first lets a caller try elsewhere or treat the image as unknown.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Nowhere to be found; the text says where it was looked for.
    #[error("{0}")]
    NotFound(String),
    /// The lookup itself failed.
    #[error("{0}")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl LookupError {
    /// A failure with `error` as its cause.
    pub fn failed(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> LookupError {
        LookupError::Failed(error.into())
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, LookupError::NotFound(_))
    }
}

/// Looks base images up (config only) by their parsed reference. The
/// planner parses every image name once, where its Dockerfile line is
/// expanded, and hands the typed value here.
pub trait ImageLookup {
    /// Errors leave the reference out: the caller's message names it.
    fn lookup(&self, reference: &Reference, platform: &Platform)
        -> Result<FoundImage, LookupError>;
}

/// A resolver for offline analysis: every image is unknown and empty.
#[derive(Debug, Default)]
pub struct OfflineResolver;

impl ImageLookup for OfflineResolver {
    fn lookup(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<FoundImage, LookupError> {
        Ok(empty_image(reference, platform))
    }
}

/// What an unknown image is taken to be when the planner treats unknown
/// images as empty: no config, no digest.
pub(crate) fn empty_image(reference: &Reference, platform: &Platform) -> FoundImage {
    FoundImage {
        reference: reference.clone(),
        digest: None,
        config: ImageConfig {
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone(),
            ..Default::default()
        },
    }
}

/// An image a Dockerfile names (FROM, `COPY --from`, `RUN --mount from=`),
/// parsed once where its line was expanded. Plans (JSON, progress,
/// history) show it as [`ImageName::shown`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    /// The parsed, normalized reference: what resolvers and the solver get.
    pub reference: Reference,
    /// How the plan shows it: the expanded text as written (`busybox`);
    /// a resolved FROM shows the normalized name it was found by.
    pub shown: String,
}

impl ImageName {
    /// Parses the expanded text `written` of Dockerfile line `line`.
    pub fn parse(written: &str, line: usize) -> Result<ImageName, PlanError> {
        let reference = Reference::parse(written)
            .map_err(|reason| PlanError::at(line, PlanErrorKind::InvalidReference(reason)))?;
        Ok(ImageName {
            reference,
            shown: written.to_string(),
        })
    }

    /// The name of an image a resolver found: shown normalized.
    pub fn found(reference: Reference) -> ImageName {
        ImageName {
            shown: reference.to_string(),
            reference,
        }
    }
}

impl std::fmt::Display for ImageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Serialize for ImageName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.shown)
    }
}
