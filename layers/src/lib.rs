//! kiln-layers: the local content store and everything made of layers.
//!
//! Owns the OCI-layout store (blobs written to `ingest/`, verified, renamed),
//! snapshots (each layer unpacked once as an overlay lower dir), diffs of an
//! overlay upper dir into tar layers, compression, and OCI layout /
//! docker-archive import and export. It knows nothing of Dockerfile syntax.
