//! kiln-cache: a build's cache to and from elsewhere (`--cache-to`,
//! `--cache-from`), so that it travels between machines (CI runners)
//! through a registry or a directory.
//!
//! The builder owns the seams ([`kiln_builder::cache`]: the solver asks
//! [`CacheSource`]s for a step its store has no record of; a finished
//! build hands its steps to [`CacheExporter`]s) and the format
//! ([`kiln_builder::cache::format`], docs/cache.md). This crate owns where
//! a cache lives:
//!
//! - [`spec`]: the flags, as buildx reads them; what kiln does not support
//!   (gha, s3, azblob, unknown keys) is refused with the flag named.
//! - [`artifact`]: the cache as an OCI artifact made in the store (an image
//!   manifest with an `artifactType`, or an index of blobs).
//! - [`local`]: an OCI layout on disk (`type=local`).
//! - [`registry`]: a registry (`type=registry`), and images there with an
//!   inline cache (`--cache-from REF`).
//!
//! Inline export (`type=inline`) is the builder's: the solver writes the
//! steps into the image config it makes.
//!
//! A `--cache-from` that cannot be read (missing, a registry down, a
//! newer format) is a warning and the build goes on without it, as in
//! BuildKit; a `--cache-to` that fails fails the build unless it says
//! `ignore-error=true`.

#![forbid(unsafe_code)]

pub mod artifact;
pub mod error;
pub mod local;
pub mod registry;
pub mod spec;

use std::time::Instant;

use kiln_builder::cache::format::{CacheConfig, ImageLayers};
use kiln_builder::cache::{CacheExporter, CacheSource, StepsByKey};
use kiln_builder::plan::keys::KEY_VERSION;
use kiln_builder::session::RemoteError;
use kiln_builder::solve::BuildEvents;
use kiln_layers::Platform;

pub use error::CacheError;
pub use registry::Net;

/// What a cache's registry side is for: its registry, whether the cache
/// said `registry.insecure=true`, and whether it is exported there (and
/// may fetch what it sends from where steps took it) or read from there.
#[derive(Debug, Clone, Copy)]
pub struct NetFor<'a> {
    pub registry: &'a str,
    pub insecure: bool,
    pub export: bool,
}
use spec::{CacheFrom, CacheTo};

/// The steps of a cache config, by key; a config whose keys are of
/// another version is refused (none of its keys could match).
pub(crate) fn steps_of(
    what: &str,
    config: &CacheConfig,
    image: Option<ImageLayers<'_>>,
) -> Result<StepsByKey, CacheError> {
    if !config.keys_match() {
        return Err(CacheError::Invalid(format!(
            "{what}: its keys are of version {}, this kiln computes {KEY_VERSION}: no step can match",
            config.key_version
        )));
    }
    config
        .steps_by_key(image)
        .map_err(|source| CacheError::Format {
            what: what.to_string(),
            source: Box::new(source),
        })
}

/// Where a `--cache-from` reads from, as progress names it.
fn source_name(spec: &CacheFrom) -> String {
    match spec {
        CacheFrom::Registry { reference, .. } => reference.to_string(),
        CacheFrom::Local { src, .. } => src.display().to_string(),
    }
}

/// Loads each `--cache-from`, in order, for a build of `platforms`: its
/// manifest and config are read now, its layers when the build needs
/// them. One that cannot be loaded is a warning (through `events`) and is
/// left out. `net` gives the registry side for each ([`NetFor`]), made on
/// first use.
pub fn open_sources(
    specs: &[CacheFrom],
    platforms: &[Platform],
    net: &dyn Fn(NetFor<'_>) -> Result<Net, RemoteError>,
    events: &dyn BuildEvents,
) -> Vec<Box<dyn CacheSource>> {
    let mut sources: Vec<Box<dyn CacheSource>> = Vec::new();
    for spec in specs {
        let started = Instant::now();
        let name = format!("importing cache manifest from {}", source_name(spec));
        let opened: Result<Box<dyn CacheSource>, RemoteError> = match spec {
            CacheFrom::Registry {
                reference,
                insecure,
            } => net(NetFor {
                registry: reference.registry(),
                insecure: *insecure,
                export: false,
            })
            .and_then(|net| {
                registry::RegistrySource::open(reference, platforms, &net)
                    .map(|s| Box::new(s) as Box<dyn CacheSource>)
                    .map_err(RemoteError::from)
            }),
            CacheFrom::Local { src, tag, digest } => {
                local::LocalSource::open(src, tag, digest.as_ref())
                    .map(|s| Box::new(s) as Box<dyn CacheSource>)
                    .map_err(RemoteError::from)
            }
        };
        match opened {
            Ok(source) => {
                events.internal(&name, &[], started.elapsed().as_secs_f64());
                sources.push(source);
            }
            Err(e) => {
                let message = format!("{name}: {e}; building without it");
                tracing::warn!("{message}");
                events.build_warning(&message);
            }
        }
    }
    sources
}

/// The exporters of the `--cache-to`s, and whether one is inline. The same
/// destination twice is refused, as BuildKit does.
pub fn exporters(
    specs: &[CacheTo],
    net: &dyn Fn(NetFor<'_>) -> Result<Net, RemoteError>,
) -> Result<(Vec<Box<dyn CacheExporter>>, bool), RemoteError> {
    let mut exporters: Vec<Box<dyn CacheExporter>> = Vec::new();
    let mut inline = false;
    let mut seen = std::collections::BTreeSet::new();
    for spec in specs {
        let destination = match spec {
            CacheTo::Registry { reference, .. } => format!("type=registry,ref={reference}"),
            CacheTo::Local { dest, .. } => format!("type=local,dest={}", dest.display()),
            CacheTo::Inline => "type=inline".to_string(),
        };
        if !seen.insert(destination.clone()) {
            return Err(format!("--cache-to {destination} is given twice").into());
        }
        match spec {
            CacheTo::Registry {
                reference,
                options,
                insecure,
            } => exporters.push(Box::new(registry::RegistryExporter {
                reference: reference.clone(),
                options: options.clone(),
                net: net(NetFor {
                    registry: reference.registry(),
                    insecure: *insecure,
                    export: true,
                })?,
            })),
            CacheTo::Local { dest, tag, options } => {
                exporters.push(Box::new(local::LocalExporter {
                    dest: dest.clone(),
                    tag: tag.clone(),
                    options: options.clone(),
                }))
            }
            CacheTo::Inline => inline = true,
        }
    }
    Ok((exporters, inline))
}
