//! kiln-transfer: moves images between a registry and the local store.
//!
//! [`pull`] resolves a tag (following an index to the platform asked for),
//! fetches the config and layers in parallel (bounded) into the store's
//! ingest, where each blob is verified before it gets its name, and tags the
//! image. A download that a killed pull left in `ingest/` is continued with
//! a Range request and verified whole (a partial file with wrong bytes is
//! caught then, and the blob fetched again from byte 0). [`fetch_config`]
//! gets only an image's config: no layers, nothing stored. [`push`] uploads
//! every blob (skipping those the registry has) and then the manifest,
//! under each name given; an index goes with every manifest it lists
//! (pushed first), and a blob the store lacks (an index gathered by
//! [`create_index`] from images in registries) is mounted from the
//! repository it is in, or copied from another registry. Progress goes through the store's [`Reporter`](kiln_layers::Reporter);
//! the bytes pulled are stored exactly as received.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use kiln_layers::{NoProgress, Platform, Store};
//! use kiln_registry::{Client, ClientConfig, Reference};
//! let client = Arc::new(Client::new(ClientConfig::default())?);
//! let store = Store::open("/var/lib/kiln")?;
//! let image = Reference::parse("localhost:5000/app:v1")?;
//! let options = kiln_transfer::PullOptions::new(Platform::host());
//! let pulled = kiln_transfer::pull(&client, &store, &image, &options, Arc::new(NoProgress)).await?;
//! println!("{} {}", pulled.reference, pulled.manifest.digest);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod blobs;
mod config;
mod error;
mod index;
mod origins;
mod pull;
mod push;

pub use blobs::{fetch_blob, fetch_from_origins, fetch_missing, pull_lazily, push_artifact};
pub use config::{fetch_config, FetchedConfig};
pub use error::TransferError;
pub use index::{create_index, CreatedIndex};
pub use origins::BlobOrigins;
pub use pull::{pull, PullOptions, Pulled};
pub use push::{push, push_descriptor, PushOptions, Pushed};
