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
