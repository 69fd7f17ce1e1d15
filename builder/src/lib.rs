//! kiln-builder: from typed Dockerfile instructions to an image.
//!
//! Owns stages, ARG/ENV scoping, the step graph (a DAG planned before anything
//! runs), cache keys, the scheduler, image config assembly, and the
//! explain/check analyses. It speaks no HTTP and calls no mount/unshare: the
//! registry client, the layer store and the runtime do that on its behalf.

pub mod archive;
pub mod changes;
pub mod context;
pub mod copy;
pub mod dockerignore;
pub mod explain;
pub mod gomatch;
pub mod image;
pub mod lint;
pub mod modes;
pub mod plan;
pub mod rootfs;
pub mod run_argv;
pub mod solve;
pub mod users;
