//! The `kiln` command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod progress;
mod settings;

use settings::GlobalSettings;

/// A daemonless image builder and Dockerfile interpreter.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, propagate_version = true)]
struct Cli {
    /// Store root (an OCI image layout plus snapshots and cache).
    #[arg(long, global = true, env = "KILN_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,

    /// More output: step commands and cache decisions (-vv for debug logs).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Parse(cmd::parse::ParseCommand),
    #[command(flatten)]
    Image(cmd::image::ImageCommand),
    #[command(flatten)]
    Run(cmd::run::RunCommand),
    #[command(flatten)]
    Check(cmd::check::CheckCommand),
    #[command(flatten)]
    Build(cmd::build::BuildCommand),
    #[command(flatten)]
    Registry(cmd::registry::RegistryCommand),
    #[command(flatten)]
    Info(cmd::info::InfoCommand),
}

fn main() -> ExitCode {
    // No descriptor kiln's caller left open reaches anything kiln starts
    // (git, ssh, newuidmap, the runtime helper and through it a container):
    // the runtime closes them again before a container's exec, this covers
    // every other child. Best effort: nothing here depends on it succeeding.
    let _ = kiln_runtime::sys::cloexec_from(3);
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let settings = GlobalSettings::resolve(cli.root);
    let result = match cli.command {
        Command::Parse(c) => c.run(&settings),
        Command::Image(c) => c.run(&settings),
        Command::Run(c) => c.run(&settings),
        Command::Check(c) => c.run(&settings),
        Command::Build(c) => c.run(&settings),
        Command::Registry(c) => c.run(&settings),
        Command::Info(c) => c.run(&settings),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", error_text(&err));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, as `{:#}` prints them, without a
/// cause whose text the message already holds (many errors say what their
/// cause says, and also return it as their `source()`).
fn error_text(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command};

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `kiln run -v` is a volume, as in `docker run`; `--verbose` still
    /// reaches the global setting there, and `-v` means verbose elsewhere.
    #[test]
    fn run_takes_v_as_a_volume() {
        let cli = Cli::try_parse_from([
            "kiln",
            "run",
            "-v",
            "/a:/b",
            "--verbose",
            "--verbose",
            "img",
        ])
        .unwrap();
        assert_eq!(cli.verbose, 2);
        let Command::Run(run) = cli.command else {
            panic!("not run: {:?}", cli.command);
        };
        assert!(format!("{run:?}").contains("\"/a:/b\""), "{run:?}");

        let cli = Cli::try_parse_from(["kiln", "-v", "run", "img"]).unwrap();
        assert_eq!(cli.verbose, 1);
        let cli = Cli::try_parse_from(["kiln", "images", "-vv"]).unwrap();
        assert_eq!(cli.verbose, 2);
    }
}
