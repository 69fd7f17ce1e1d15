//! A small stand-alone front end to the runtime, for its integration tests
//! and the benchmark (`scripts/bench-run`): runs a command in a container
//! whose layers are plain directories, re-executing itself as the helper.
//!
//! ```text
//! kiln-runtime-helper run --state DIR [--lower DIR]... [--upper DIR] [--user U]
//!     [--cwd DIR] [--hostname H] [--network none|host|private] [--env K=V]...
//!     [--volume HOST:CTR[:ro]]... [--timeout SECS] [--no-seccomp] [--tty] -- ARGV...
//! ```
//! `--upper` keeps the container's writes in DIR, which must be empty or
//! absent. Exits with the container's code; on a runtime error prints it
//! and exits with its Docker code (126/127) or 125.
//!
//! `kiln-runtime-helper __deny-setns ARGS...` runs itself with ARGS under a
//! seccomp filter that refuses `setns` (EPERM) and allows everything
//! else: the helper as it runs under a profile that allows `unshare` but
//! refuses `setns`, for the test of the network pool's fallback.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use kiln_runtime::{
    BindMount, HelperCommand, Network, RunSpec, Streams, UpperDir, HELPER_SUBCOMMAND,
};

fn usage(message: &str) -> ExitCode {
    eprintln!("kiln-runtime-helper: {message}");
    ExitCode::from(125)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some(HELPER_SUBCOMMAND) => std::process::exit(kiln_runtime::helper_main()),
        Some("run") => run(&args[1..]),
        Some("__deny-setns") => deny_setns_then(&args[1..]),
        _ => usage("expected `run` (see the source for options)"),
    }
}

/// Installs a filter refusing `setns`, then execs this program with `args`.
fn deny_setns_then(args: &[String]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let filter = seccompiler::TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| e.to_string())
        .and_then(|arch| {
            seccompiler::SeccompFilter::new(
                [(libc::SYS_setns, Vec::new())].into_iter().collect(),
                seccompiler::SeccompAction::Allow,
                seccompiler::SeccompAction::Errno(libc::EPERM as u32),
                arch,
            )
            .map_err(|e| e.to_string())
        })
        .and_then(|filter| seccompiler::BpfProgram::try_from(filter).map_err(|e| e.to_string()));
    let installed =
        filter.and_then(|bpf| seccompiler::apply_filter(&bpf).map_err(|e| e.to_string()));
    if let Err(e) = installed {
        return usage(&format!("a filter refusing setns: {e}"));
    }
    let err = std::process::Command::new("/proc/self/exe")
        .args(args)
        .exec();
    usage(&format!("exec /proc/self/exe: {err}"))
}

fn run(args: &[String]) -> ExitCode {
    let mut spec = RunSpec::new(Vec::new(), PathBuf::new(), Vec::new());
    spec.forward_signals = true;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            spec.argv = it.by_ref().cloned().collect();
            break;
        }
        let flag_only = matches!(arg.as_str(), "--no-seccomp" | "--tty");
        let value = if flag_only {
            String::new()
        } else {
            match it.next() {
                Some(v) => v.clone(),
                None => return usage(&format!("{arg} needs a value")),
            }
        };
        match arg.as_str() {
            "--state" => spec.state_dir = PathBuf::from(value),
            "--lower" => spec.lower_dirs.push(PathBuf::from(value)),
            "--upper" => spec.upper = UpperDir::Keep(PathBuf::from(value)),
            "--user" => spec.user = value,
            "--cwd" => spec.cwd = value,
            "--hostname" => spec.hostname = value,
            "--env" => spec.env.push(value),
            "--network" => {
                spec.network = match value.as_str() {
                    "host" => Network::Host,
                    "none" => Network::None,
                    "private" => Network::Private,
                    other => return usage(&format!("unknown network {other:?}")),
                }
            }
            "--volume" => {
                let parts: Vec<&str> = value.split(':').collect();
                if parts.len() < 2 {
                    return usage(&format!("bad volume {value:?}"));
                }
                spec.mounts.push(BindMount {
                    source: PathBuf::from(parts[0]),
                    target: PathBuf::from(parts[1]),
                    read_only: parts.get(2) == Some(&"ro"),
                    within: None,
                });
            }
            "--timeout" => match value.parse() {
                Ok(secs) => spec.timeout = Some(Duration::from_secs(secs)),
                Err(_) => return usage(&format!("bad timeout {value:?}")),
            },
            "--no-seccomp" => spec.seccomp = false,
            "--tty" => {
                spec.streams = Streams::Terminal {
                    forward_stdin: false,
                }
            }
            other => return usage(&format!("unknown option {other:?}")),
        }
    }
    if spec.state_dir.as_os_str().is_empty() || spec.argv.is_empty() {
        return usage("--state and a command after -- are required");
    }
    spec.image = spec
        .lower_dirs
        .last()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let helper = HelperCommand::current_exe(&[HELPER_SUBCOMMAND]);
    match kiln_runtime::run(spec, &helper) {
        Ok(status) => ExitCode::from((status.code() & 0xff) as u8),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(
                err.exit_code()
                    .and_then(|c| u8::try_from(c).ok())
                    .unwrap_or(125),
            )
        }
    }
}
