//! Security suite: one module per way out of a container or into the store
//! that kiln closes (see SECURITY.md for the threat model). Root, real
//! namespaces and overlay mounts; each test says what it probes.

#[path = "../common/mod.rs"]
mod common;

mod cache_race;
mod devices;
mod fds;
mod image_limits;
mod kill_removal;
mod leftovers;
mod limits;
mod mount_points;
mod privileges;
mod secrets;
mod store_modes;
mod url_credentials;

macro_rules! require_root {
    () => {
        kiln_testsupport::require_root!("real namespaces and overlay mounts")
    };
}
pub(crate) use require_root;

/// Like `require_root!`, for tests whose only need for root is kiln's
/// own (they run rootless in scripts/test-rootless).
macro_rules! require_namespaces {
    () => {
        kiln_testsupport::require_namespaces!("real namespaces and overlay mounts")
    };
}
pub(crate) use require_namespaces;

pub(crate) use common::text;
/// The suites' store: `busybox:latest` imported, scratch beside it.
pub(crate) use common::BusyboxStore as Fixture;

/// The host directory of `RUN --mount=type=cache,id=ID`.
pub(crate) fn cache_mount_dir(root: &std::path::Path, id: &str) -> std::path::PathBuf {
    root.join("cache-mounts")
        .join(kiln_layers::Digest::of(id.as_bytes()).hex())
}
