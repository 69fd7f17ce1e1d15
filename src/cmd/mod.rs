//! One module per group of commands. Each owns its clap arguments and turns
//! them into calls on the library crates; no build logic lives here.

pub mod build;
pub mod check;
pub mod explain_image;
pub mod image;
pub mod info;
pub mod interrupt;
pub mod layers;
pub mod limits;
pub mod manifest;
pub mod parse;
pub mod plan_view;
pub mod registry;
pub mod run;
pub mod step_flags;
pub mod system;

/// The async runtime for the commands that talk to a registry (pull, push,
/// login, a build's base images and `ADD <url>`): multi-threaded, I/O and
/// timers enabled.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Fetches the layers of `image` that the store lacks — of a base image a
/// build pulled without its layers, or of an image built on a registry
/// cache and only pushed — from the repositories each is known to be in.
/// Nothing is done (no client made) when the store has them all.
pub fn fetch_missing_layers(
    store: &kiln_layers::Store,
    image: &kiln_layers::Image,
    settings: &crate::settings::GlobalSettings,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if image
        .manifest
        .layers
        .iter()
        .all(|l| store.has_blob(&l.digest))
    {
        return Ok(());
    }
    let client = std::sync::Arc::new(kiln_registry::Client::new(kiln_registry::ClientConfig {
        hosts: settings.registry_hosts()?,
        timeouts: settings.timeouts.clone(),
        ..kiln_registry::ClientConfig::default()
    })?);
    let reporter: std::sync::Arc<dyn kiln_layers::Reporter> =
        std::sync::Arc::new(kiln_layers::NoProgress);
    runtime()?
        .block_on(kiln_transfer::fetch_missing(
            &client, store, image, reporter,
        ))
        .with_context(|| {
            format!(
                "fetching the layers of {} that the store lacks (through the registry \
                 configuration file; for --insecure-registry or --ca-cert, `kiln pull` the \
                 image with them first)",
                image.manifest_descriptor.digest
            )
        })?;
    // The image's tag is already written: its layers' names are made
    // durable here.
    store
        .sync_blob_names()
        .context("making the fetched layers durable")?;
    Ok(())
}
