//! kiln-registry: the OCI distribution protocol.
//!
//! Owns authentication (anonymous, bearer, basic; docker config.json and
//! credential helpers), pulling and pushing manifests and blobs, cross-repository
//! mounts and retries, where each registry is reached and which mirrors a
//! pull asks first ([`RegistryHosts`], read from BuildKit's
//! `[registry."HOST"]` tables), deadlines and the low-speed cutoff ([`Timeouts`],
//! [`Stall`]), and plain downloads for `ADD <url>`. It streams bytes to and from its caller and never touches
//! the store's files. [`Reference`] and [`Digest`] are kiln-reference's, the
//! same types the store (kiln-layers) names images and blobs with.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kiln_registry::Error> {
//! use kiln_registry::{Client, ClientConfig, Reference};
//! let client = Client::new(ClientConfig::default())?;
//! let image = Reference::parse("localhost:5000/app:v1")?;
//! let manifest = client.fetch_manifest(&image).await?;
//! let mut config = Vec::new();
//! # let config_digest: kiln_registry::Digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000".parse()?;
//! client.fetch_blob(&image.repository, &config_digest, None, &mut config).await?;
//! # let _ = manifest; Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod auth;
mod client;
pub mod daemon;
mod download;
mod error;
mod hosts;
mod hosts_file;
mod limits;
pub mod reference;

pub use auth::{Challenge, Credential, CredentialError, CredentialSource, DockerConfig};
pub use client::{
    BlobSource, Client, ClientConfig, Manifest, MemoryBlob, PushOutcome, RetryPolicy,
    MANIFEST_ACCEPT, MAX_MANIFEST_BYTES,
};
pub use download::{parse_http_date, Downloaded};
pub use error::Error;
pub use hosts::{ClientCert, HostSettings, Mirror, RegistryHosts, Route, Schemes};
pub use hosts_file::HostsFileError;
pub use limits::{Stall, Timeouts};
pub use reference::{Digest, Reference, ReferenceError, Repository};
