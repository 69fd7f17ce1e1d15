//! Image references with Docker's normalization: `alpine` →
//! `docker.io/library/alpine:latest`, `host:5000/x/y:tag`, `name@sha256:…`.
//!
//! The type is kiln-reference's, shared with the registry client. The store's
//! `index.json` names images by the full form ([`Reference`]'s `Display`);
//! `docker save` archives use the familiar form ([`Reference::familiar`]).

pub use kiln_reference::{Reference, ReferenceError, Repository, DEFAULT_TAG, DOCKER_HUB};
