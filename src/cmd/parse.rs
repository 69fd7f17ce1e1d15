//! `kiln parse` and `kiln debug`: the parser's views of a Dockerfile.

use std::process::ExitCode;

use clap::Subcommand;

use crate::settings::GlobalSettings;

#[derive(Debug, Subcommand)]
pub enum ParseCommand {
    /// Parse a Dockerfile and print its syntax tree.
    Parse,
}

impl ParseCommand {
    pub fn run(self, _settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
        anyhow::bail!("kiln parse is being written")
    }
}
