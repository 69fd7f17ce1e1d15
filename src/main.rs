//! The `kiln` command line.
#![forbid(unsafe_code)]
// The doc comments on clap's arguments are the `--help` text: `host[:port]`
// there is meant literally, not as a rustdoc link.
#![allow(rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod cmd;
mod progress;
mod sandbox;
mod settings;

use settings::{GlobalSettings, TransferArgs};

/// A daemonless image builder and Dockerfile interpreter.
#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    about,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// Store root (an OCI image layout plus snapshots and cache).
    ///
    /// Refused by the commands that use no store (parse, debug, login,
    /// logout); KILN_ROOT is not.
    #[arg(long, global = true, env = "KILN_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,

    /// More output: step commands and cache decisions (-vv for debug logs).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(flatten)]
    transfer: TransferArgs,

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
    Manifest(cmd::manifest::ManifestCommand),
    #[command(flatten)]
    Info(cmd::info::InfoCommand),
    #[command(flatten)]
    Layers(cmd::layers::LayersCommand),
    #[command(flatten)]
    System(cmd::system::SystemCommand),
}

impl Command {
    /// The global settings the command reads (see [`settings::Reads`]).
    fn reads(&self) -> settings::Reads {
        match self {
            Command::Parse(c) => c.reads(),
            Command::Image(c) => c.reads(),
            Command::Run(c) => c.reads(),
            Command::Check(c) => c.reads(),
            Command::Build(c) => c.reads(),
            Command::Registry(c) => c.reads(),
            Command::Manifest(c) => c.reads(),
            Command::Info(c) => c.reads(),
            Command::Layers(c) => c.reads(),
            Command::System(c) => c.reads(),
        }
    }
}

/// Exit status of a command line kiln cannot read: 125, as the docker
/// CLI gives for a flag it does not know, so that `kiln run`'s own errors
/// stay apart from a container's exit status (clap's default, 2, is one a
/// container may exit with). `--help`, `--version` and a command without
/// its subcommand (which shows the help) exit 0.
const USAGE_ERROR: u8 = 125;

/// Prints clap's message (help and version on stdout, errors on stderr)
/// and gives the exit status for it.
fn usage_error(err: clap::Error) -> ExitCode {
    let _ = err.print();
    // A command without its subcommand shows its help, as docker's do.
    let help = clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand;
    match err.use_stderr() && err.kind() != help {
        true => ExitCode::from(USAGE_ERROR),
        false => ExitCode::SUCCESS,
    }
}

fn main() -> ExitCode {
    // No descriptor kiln's caller left open reaches anything kiln starts
    // (git, ssh, newuidmap, the runtime helper and through it a container):
    // the runtime closes them again before a container's exec, this covers
    // every other child. Best effort: nothing here depends on it succeeding.
    let _ = kiln_runtime::sys::cloexec_from(3);
    quiet_when_stdout_closes();
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        Err(err) => return usage_error(err),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => return usage_error(err.format(&mut Cli::command())),
    };
    if let Err(why) = init_logging(cli.verbose)
        .and_then(|()| settings::refuse_unread_flags(&matches, cli.command.reads()))
        .and_then(|()| cmd::build::refuse_quiet_with_progress(&matches))
    {
        eprintln!("error: {}", kiln_parser::escape_control(&why));
        return ExitCode::FAILURE;
    }
    let settings = GlobalSettings::resolve(cli.root, &cli.transfer);
    // The commands that touch the store run where the isolation needs
    // them: in a user namespace of their own when kiln is not root.
    let isolation = match &cli.command {
        Command::Build(c) => Some(c.isolation()),
        // `system df` and the collection measure and delete trees whose
        // directories belong to the user's subordinate ids.
        Command::Image(_) | Command::Registry(_) | Command::System(_) => {
            Some(sandbox::IsolationArg::Auto)
        }
        Command::Run(c) if !c.is_helper() => Some(sandbox::IsolationArg::Auto),
        _ => None,
    };
    if let Some(asked) = isolation {
        match sandbox::enter_user_namespace(asked, &settings.root) {
            Ok(Some(code)) => return code,
            Ok(None) => {}
            Err(why) => {
                eprintln!("error: {}", kiln_parser::escape_control(&why));
                return ExitCode::FAILURE;
            }
        }
    }
    let result = match cli.command {
        Command::Parse(c) => c.run(&settings),
        Command::Image(c) => c.run(&settings),
        Command::Run(c) => c.run(&settings),
        Command::Check(c) => c.run(&settings),
        Command::Build(c) => c.run(&settings),
        Command::Registry(c) => c.run(&settings),
        Command::Manifest(c) => c.run(&settings),
        Command::Info(c) => c.run(&settings),
        Command::Layers(c) => c.run(&settings),
        Command::System(c) => c.run(&settings),
    };
    match result {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) && kiln_runtime::sys::stdout_is_closed() => {
            kiln_runtime::sys::die_of_sigpipe()
        }
        Err(err) => {
            eprintln!("error: {}", error_text(&err));
            ExitCode::FAILURE
        }
    }
}

/// `kiln images | head -1`: once the reader of kiln's stdout is gone, kiln
/// ends as a C program with the default SIGPIPE action does, killed by
/// SIGPIPE (status 141 in a shell), saying nothing: the reader stopped
/// reading on purpose. Rust ignores SIGPIPE (a write then fails with EPIPE,
/// which kiln needs for its sockets and pipes to helpers), so the end is
/// played here: for an error caused by EPIPE while stdout is a pipe with no
/// reader, and for `println!`'s panic in that case. (git does the same.)
fn quiet_when_stdout_closes() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && kiln_runtime::sys::stdout_is_closed()
        {
            kiln_runtime::sys::die_of_sigpipe();
        }
        default_hook(info);
    }));
}

/// Whether writing failed because the reader went away: an io error, or
/// serde_json's (which hides the io error it wraps from `chain`).
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    let pipe = Some(std::io::ErrorKind::BrokenPipe);
    err.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().map(|e| e.kind()) == pipe
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == pipe
    })
}

/// An error and its causes on one line, `a: b: c`, as `{:#}` joins them,
/// but a cause whose text the line already ends with is not repeated
/// (errors whose message includes their source's: `write F: No space left
/// on device` caused by `No space left on device`). Control characters
/// (from a Dockerfile, a file name, a container's output) are escaped.
fn error_text(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.ends_with(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    kiln_parser::escape_control(&text).into_owned()
}

/// Diagnostics on stderr: `KILN_LOG` (a tracing filter, `debug`,
/// `kiln_layers=trace`) when set and not empty, else warnings, or more
/// with `-v` (info) and `-vv` (debug). A `KILN_LOG` that is not a filter
/// is refused, not taken for the default.
fn init_logging(verbose: u8) -> Result<(), String> {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = match std::env::var("KILN_LOG") {
        Ok(value) if !value.is_empty() => tracing_subscriber::EnvFilter::try_new(&value)
            .map_err(|e| format!("KILN_LOG={value}: not a log filter ({e})"))?,
        _ => tracing_subscriber::EnvFilter::new(default),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches, Parser};

    use super::{Cli, Command};

    #[test]
    fn an_error_shows_each_cause_once_and_no_control_character() {
        /// `{prefix}{source}`, with `source` as its source too: the shape
        /// that repeated text.
        #[derive(Debug)]
        struct Wraps(&'static str, Box<dyn std::error::Error + Send + Sync>);
        impl std::fmt::Display for Wraps {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}{}", self.0, self.1)
            }
        }
        impl std::error::Error for Wraps {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(self.1.as_ref())
            }
        }
        let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let layer = Wraps("layer sha256:1: write ./bin/x: ", Box::new(enospc));
        let err =
            anyhow::Error::new(Wraps("store: ", Box::new(layer))).context("building \u{1b}[2J");
        assert_eq!(
            super::error_text(&err),
            "building \\x1b[2J: store: layer sha256:1: write ./bin/x: \
             No space left on device (os error 28)"
        );
        // A cause not already said is kept.
        let err = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EACCES))
            .context("opening /x");
        assert_eq!(
            super::error_text(&err),
            "opening /x: Permission denied (os error 13)"
        );
    }

    /// `kiln ARGS…` parsed as `main` parses it, then checked for global
    /// flags its command does not read.
    fn unread(args: &[&str]) -> Result<(), String> {
        let matches = Cli::command()
            .try_get_matches_from(std::iter::once("kiln").chain(args.iter().copied()))
            .unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        crate::settings::refuse_unread_flags(&matches, cli.command.reads())
    }

    /// A global flag on the command line of a command that reads nothing
    /// it sets is refused, before or after the command's name; the same
    /// flag is taken where the command reads it.
    #[test]
    fn global_flags_are_refused_where_nothing_reads_them() {
        assert_eq!(
            unread(&["images", "--registry-timeout", "5"]),
            Err(
                "--registry-timeout has no effect on `kiln images`, which talks to no registry"
                    .into()
            )
        );
        assert_eq!(
            unread(&["--registry-config", "/r.toml", "manifest", "inspect", "x"]),
            Ok(())
        );
        assert_eq!(
            unread(&["--root", "/s", "debug", "expand", "$A"]),
            Err("--root has no effect on `kiln debug expand`, which uses no store".into())
        );
        assert_eq!(
            unread(&["login", "--root", "/s", "-u", "a", "h"]),
            Err("--root has no effect on `kiln login`, which uses no store".into())
        );
        assert_eq!(
            unread(&["login", "--registry-timeout", "5", "-u", "a", "h"]),
            Ok(())
        );
        assert_eq!(
            unread(&["explain", "--offline", "--registry-timeout", "5"]),
            Err(
                "--registry-timeout has no effect on `kiln explain`, which talks to no \
                 registry (--offline)"
                    .into()
            )
        );
        for args in [
            &["parse", "--registry-speed-limit", "1"][..],
            &["tag", "--registry-speed-time", "1", "a", "b"],
            &["rmi", "--registry-config", "", "a"],
            &["check", "--registry-timeout", "5"],
            &["info", "--registry-timeout", "5"],
            &["system", "df", "--registry-timeout", "5"],
            &["logout", "--registry-timeout", "5"],
            &["logout", "--root", "/s"],
            &["explain", "--offline", "--registry-timeout", "5"],
        ] {
            assert!(unread(args).is_err(), "{args:?} accepted");
        }
        for args in [
            &["build", "--registry-timeout", "5", "--root", "/s", "."][..],
            &["pull", "--registry-speed-limit", "1", "x"],
            &["push", "--registry-config", "/r.toml", "x"],
            &["save", "--registry-timeout", "5", "-o", "o.tar", "x"],
            &["run", "--registry-timeout", "5", "x"],
            &["layers", "--registry-timeout", "5", "x"],
            &["history", "--registry-timeout", "5", "x"],
            &["explain", "--registry-timeout", "5"],
            &["explain", "--offline", "--root", "/s"],
            &["images", "--root", "/s"],
            &["check", "--root", "/s"],
            &["system", "df", "--root", "/s"],
        ] {
            assert_eq!(unread(args), Ok(()), "{args:?}");
        }
    }

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
