//! kiln-layers: the local content store and everything made of layers.
//!
//! Owns the OCI-layout store (blobs written to `ingest/`, verified, renamed),
//! snapshots (each layer unpacked once as an overlay lower dir), diffs of an
//! overlay upper dir into tar layers, compression, and OCI layout /
//! docker-archive import and export. It knows nothing of Dockerfile syntax.
//!
//! Where to start:
//! - [`Store`] (`store`): `open`, `ingest` → [`IngestWriter`] (`Write`,
//!   `offset`/`reset` for resumed downloads, `commit` verifies and renames),
//!   `put_blob`/`put_json` (canonical JSON), `has_blob`/`open_blob`/
//!   `read_blob`, `tag`/`untag`/`resolve`/`list`/`find`, `read_manifest`,
//!   `read_image` (platform selection among the images held), `write_image`, `lease` (hold one
//!   while a pull or build is in flight), `prune`, `remove_image`,
//!   `cache_put`/`cache_get`.
//! - Snapshots (`snapshot`): `Store::prepare_snapshots` unpacks an image's
//!   layers once per chain id and returns the lower dirs, bottom first
//!   (a snapshot counts only when its completion marker says so;
//!   `has_snapshot`, `adopt_snapshot`); `overlay_lowerdir` formats them
//!   for mount. A stamp beside the marker names the boot that made it: after
//!   a reboot a snapshot counts only when a seal (`seal`, `Store::seal`: a `syncfs`
//!   each collection runs first) came after it.
//! - Deleting and leftovers (`cleanup`, `owner`): directories are renamed
//!   into `trash/` before they are deleted; `Store::scratch_dir` names a
//!   build's scratch with its owner process, `remove_dead_scratch` takes
//!   what dead processes left.
//! - Garbage collection (`gc`): `Store::collect` under a `gc::Policy`
//!   (BuildKit's keep-storage, keep-duration, min-free-space,
//!   reserved-space, filters by kind; least recently used first), the
//!   policy file `gc.toml` (`Store::gc_config`), `Store::usage` (`kiln
//!   system df`), `Store::gc_turn` (automatic collections take turns).
//! - Layers: `diff::write_layer` (upper dir → compressed blob + diff id),
//!   `diff::write_tar`, `unpack::unpack` (safe, whiteout-aware),
//!   `compress` (gzip, zstd; the one sniffer, `Magic`, and the decoders of
//!   layer blobs and of `ADD` archives), `compressed::compressed_image`
//!   (a built image's plain layers compressed on their way out, once).
//! - Archives: `archive::save` / `archive::load` (OCI layout dir or tar,
//!   docker-archive), `import::import_rootfs`.
//! - Indexes (`platforms`, `index`): a tag may name an index of several
//!   platforms; `Store::platform_entries` lists every entry and whether
//!   the store holds it, `read_image_or_held` picks what listings show;
//!   `index::IndexWriter` writes an index of built or gathered manifests.
//! - Types: `oci` (descriptors, manifests, indexes, configs, platforms,
//!   media types), [`Reference`] (Docker's normalization), [`Digest`].
//! - Progress: [`Reporter`] (`start` → `progress` → `done`).
//!
//! ```no_run
//! use std::io::Write;
//! use kiln_layers::{Descriptor, Digest, Store, Reference, media};
//!
//! # fn main() -> Result<(), kiln_layers::Error> {
//! let store = Store::open("/var/lib/kiln")?;
//! let _lease = store.lease()?; // keeps `prune` away until the image is tagged
//! let bytes = b"{}";
//! let expected = Descriptor::new(media::OCI_CONFIG, Digest::of(bytes), 2);
//! let mut w = store.ingest(Some(expected))?;
//! w.write_all(bytes).expect("write");
//! let desc = w.commit()?; // verified, fsynced, renamed into blobs/sha256/
//! assert!(store.has_blob(&desc.digest));
//! # Ok(()) }
//! ```

// Unsafe code only where a module says why: writeback.rs's
// sync_file_range, which rustix lacks.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod archive;
pub mod canonical;
pub mod cleanup;
pub mod compress;
pub mod compressed;
pub mod diff;
pub mod digest;
mod direct;
pub mod error;
pub mod gc;
pub mod import;
pub mod index;
pub mod oci;
mod pending;
/// Which process owns a scratch name (the `kiln-owner` crate).
pub use kiln_owner as owner;
pub mod platforms;
pub mod progress;
pub mod reference;
pub mod seal;
pub mod snapshot;
pub mod store;
pub mod unpack;
pub mod whiteout;
#[allow(unsafe_code)]
mod writeback;

pub use canonical::to_canonical_json;
pub use compress::Compression;
pub use digest::{chain_ids, Digest};
pub use error::{Error, Result};
pub use oci::{media, Descriptor, ImageConfig, Index, Manifest, ManifestKind, Platform};
pub use platforms::{EntryKind, PlatformEntry};
pub use progress::{NoProgress, Outcome, Reporter};
pub use reference::Reference;
pub use store::{ContentStamp, CopyShape, Image, IngestWriter, Lease, Store};
