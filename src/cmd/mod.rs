//! One module per group of commands. Each owns its clap arguments and turns
//! them into calls on the library crates; no build logic lives here.

pub mod build;
pub mod check;
pub mod image;
pub mod info;
pub mod limits;
pub mod parse;
pub mod plan_view;
pub mod registry;
pub mod run;
pub mod system;
