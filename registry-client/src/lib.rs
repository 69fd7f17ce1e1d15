//! kiln-registry: the OCI distribution protocol.
//!
//! Owns authentication (anonymous, bearer, basic; docker config.json and
//! credential helpers), pulling and pushing manifests and blobs, cross-repository
//! mounts and retries. It streams bytes to and from its caller and never touches
//! the store's files.
