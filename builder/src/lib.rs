//! kiln-builder: from typed Dockerfile instructions to an image.
//!
//! Owns stages, ARG/ENV scoping, the step graph (a DAG planned before anything
//! runs), cache keys, the scheduler, image config assembly, and the
//! explain/check analyses. It speaks no HTTP and calls no mount/unshare: the
//! registry client, the layer store and the runtime do that on its behalf.
//!
//! ## `COPY --link`
//!
//! The files are copied onto an empty directory, as BuildKit does, so the
//! layer stands alone: a symlink on the destination path in the base is not
//! followed (`COPY --link a /opt/link/` makes a directory `/opt/link`), and
//! the parent directories the copy creates are fresh (0755, root) and come
//! out over the base's. `--chown` names are still resolved in the base's
//! `/etc/passwd` and `/etc/group`. One difference remains: BuildKit's cache
//! key of a `--link` step does not depend on the steps before it (the
//! layer is rebased onto a changed base without re-running); kiln's key
//! includes its parent, so a changed base copies again (same layer bytes).

// Unsafe code only where a module says why; solve.rs's output pipe is the
// last one (kiln_runtime::pipe replaces it, then this becomes forbid).
#![forbid(unsafe_code)]

pub mod annotations;
pub mod archive;
pub mod cache;
pub mod changes;
pub mod context;
pub mod contexts;
pub mod copy;
pub mod copy_reuse;
pub mod dockerignore;
pub mod emulation;
pub mod explain;
pub mod export;
pub mod frontend;
pub mod git;
pub mod gomatch;
pub mod image;
pub mod image_layers;
pub mod lint;
pub mod modes;
pub mod plan;
pub mod platforms;
pub mod provenance;
pub mod rootfs;
pub mod run_argv;
pub mod secrets;
pub mod session;
pub mod solve;
pub mod ssh;
pub mod subrequests;
pub mod users;
