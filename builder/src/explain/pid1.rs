//! Which process is PID 1 and whether the stop signal reaches the
//! application: `docker stop` (and Compose, and the kubelet) send the stop
//! signal (STOPSIGNAL, else SIGTERM) to PID 1 only, wait (10 s; Kubernetes'
//! `terminationGracePeriodSeconds`, 30 s), then SIGKILL everything.
//!
//! Walking the argv:
//! - an init (`docker run --init`, Compose's `init: true`, `tini`,
//!   `dumb-init`, `catatonit`) is PID 1 and forwards the signal to its
//!   child, which is then walked;
//! - a shell running a command string (`sh -c '…'`: shell form) is PID 1
//!   and does not pass SIGTERM on (Docker's documentation says so of shell
//!   form), unless the string `exec`s the command;
//! - an exec-form program that is a script in the image (read through
//!   [`ImageFiles`] when the image is in the store): a script that ends in
//!   `exec "$@"` hands PID 1 to its arguments, which are walked; one that
//!   `exec`s another program hands PID 1 to it; one that does neither
//!   stays PID 1 as a shell that does not forward the signal;
//! - anything else is the application as PID 1: it gets the signal, but
//!   as PID 1 no default action applies, so it stops only if it handles it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::launch::Overrides;
use super::{Commands, Form, Source, Warning};
use crate::image::split_env;

/// Reads files of an image (its layers stacked).
pub trait ImageFiles {
    /// The bytes of the regular file at the absolute `path`, symlinks
    /// followed (at most the first `limit` bytes); `None` when there is
    /// none.
    fn read_file(&self, path: &str, limit: usize) -> Option<Vec<u8>>;
}

/// PID 1 and what stopping the container does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pid1 {
    /// PID 1's argv (`None`: the container has no command).
    pub process: Option<Vec<String>>,
    /// `application`, `shell` (a command string or a script that does not
    /// exec), `init`, `none`.
    pub kind: &'static str,
    /// The application's argv, when PID 1 is an init or a shell.
    pub application: Option<Vec<String>>,
    pub stop_signal: String,
    /// `yes`, `no`, or `unknown` (a program kiln could not look into).
    pub signal_reaches_application: &'static str,
    /// Seconds from the stop signal to SIGKILL.
    pub timeout_seconds: u64,
    /// What stopping the container does, in words.
    pub on_stop: String,
    /// How PID 1 was worked out.
    pub steps: Vec<String>,
}

/// What [`analyse`] needs.
pub(crate) struct Input<'a> {
    pub argv: Option<&'a [String]>,
    pub commands: &'a Commands,
    pub entrypoint_from_image: bool,
    pub cmd_from_image: bool,
    pub sources: &'a BTreeMap<String, Source>,
    pub env: &'a [String],
    pub overrides: &'a Overrides,
    pub stop_signal: Option<&'a str>,
    pub files: Option<&'a dyn ImageFiles>,
}

/// [`Pid1`], and a warning for each pitfall.
pub(crate) struct Analysis {
    pub pid1: Pid1,
    pub warnings: Vec<Warning>,
}

/// Programs that are an init: PID 1 that forwards signals and reaps.
const INITS: &[&str] = &[
    "tini",
    "tini-static",
    "dumb-init",
    "catatonit",
    "docker-init",
];
/// Programs that are a shell.
const SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "busybox"];

/// Works out PID 1.
pub(crate) fn analyse(input: &Input<'_>) -> Analysis {
    let ov = input.overrides;
    let mut walk = Walk {
        input,
        steps: Vec::new(),
        warnings: Vec::new(),
        forwarded_by_init: false,
    };
    let signal = input.stop_signal.unwrap_or("SIGTERM").to_string();
    let timeout = ov.stop_timeout_seconds();
    let Some(argv) = input.argv else {
        return Analysis {
            pid1: Pid1 {
                process: None,
                kind: "none",
                application: None,
                stop_signal: signal,
                signal_reaches_application: "unknown",
                timeout_seconds: timeout,
                on_stop: "the container does not start: it has no command".into(),
                steps: Vec::new(),
            },
            warnings: Vec::new(),
        };
    };
    let mut process = argv.to_vec();
    if let Some(init) = ov.init.as_ref().filter(|g| g.value) {
        process = std::iter::once("/sbin/docker-init".to_string())
            .chain(std::iter::once("--".to_string()))
            .chain(argv.iter().cloned())
            .collect();
        walk.steps.push(format!(
            "{}: docker-init (tini) is PID 1 and forwards signals to {}",
            describe(&init.source),
            first(argv)
        ));
        walk.forwarded_by_init = true;
    }
    let end = walk.follow(argv, 0);
    let kind = if walk.forwarded_by_init {
        "init"
    } else {
        end.kind
    };
    let pid1 = Pid1 {
        on_stop: on_stop(ov, &signal, timeout, end.reaches, &process),
        process: Some(process),
        kind,
        application: (kind != "application").then(|| end.application.clone()),
        stop_signal: signal.clone(),
        signal_reaches_application: end.reaches,
        timeout_seconds: timeout,
        steps: walk.steps,
    };
    let mut warnings = walk.warnings;
    if signal
        .trim_start_matches("SIG")
        .eq_ignore_ascii_case("KILL")
        || signal == "9"
    {
        warnings.push(Warning {
            code: "StopSignalKill",
            message: "the stop signal is SIGKILL: the application never gets to shut down cleanly"
                .into(),
            history: input.sources.get("stop_signal").and_then(|s| s.history),
            line: input.sources.get("stop_signal").and_then(|s| s.line),
            file: input
                .sources
                .get("stop_signal")
                .and_then(|s| s.file.clone()),
        });
    }
    Analysis { pid1, warnings }
}

/// Where a walk ended: what the application is and whether it gets the signal.
struct End {
    kind: &'static str,
    application: Vec<String>,
    reaches: &'static str,
}

struct Walk<'a, 'b> {
    input: &'b Input<'a>,
    steps: Vec<String>,
    warnings: Vec<Warning>,
    /// An init is PID 1 and forwards the signal down the chain.
    forwarded_by_init: bool,
}

impl Walk<'_, '_> {
    /// Follows `argv` (run as PID 1, or as the child of an init) to the
    /// application.
    fn follow(&mut self, argv: &[String], depth: usize) -> End {
        let program = argv.first().map(String::as_str).unwrap_or("");
        let name = program.rsplit('/').next().unwrap_or(program);
        if depth > 4 {
            return self.application(argv);
        }
        if INITS.contains(&name) {
            let child = init_child(argv);
            self.steps.push(format!(
                "{program} is an init: it forwards the stop signal to {} and reaps zombies",
                first(&child)
            ));
            if child.is_empty() {
                return self.application(argv);
            }
            self.forwarded_by_init = true;
            return self.follow(&child, depth + 1);
        }
        if SHELLS.contains(&name) {
            if let Some(script) = command_string(argv) {
                return self.shell_string(argv, script, depth);
            }
        }
        match self.script(program) {
            Some(script) => self.script_file(argv, &script, depth),
            None => self.application(argv),
        }
    }

    /// The end of the chain: a program that is not a shell, init or script.
    fn application(&mut self, argv: &[String]) -> End {
        let program = first(argv);
        if self.forwarded_by_init {
            self.steps
                .push(format!("{program} gets the stop signal from the init"));
        } else {
            self.steps.push(format!(
                "{program} is PID 1: it gets the stop signal, but as PID 1 no default action applies, so it stops only if it handles the signal (run with an init, e.g. docker run --init, if it does not)"
            ));
        }
        End {
            kind: "application",
            application: argv.to_vec(),
            reaches: "yes",
        }
    }

    /// `sh -c 'STRING'`: the shell stays, unless STRING `exec`s.
    fn shell_string(&mut self, argv: &[String], script: &str, depth: usize) -> End {
        let program = first(argv);
        if let Some(rest) = script.trim_start().strip_prefix("exec ") {
            self.steps.push(format!(
                "{program} -c runs `exec {}`: the command replaces the shell",
                rest.trim()
            ));
            let words: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
            return self.follow(&words, depth + 1);
        }
        let field = self.shell_field();
        let (by_init, pid) = (
            self.forwarded_by_init,
            if self.forwarded_by_init {
                "the init's child"
            } else {
                "PID 1"
            },
        );
        self.steps.push(format!(
            "{program} -c '{script}': the shell is {pid} and runs the command as its child; it does not pass SIGTERM on"
        ));
        let source = field.and_then(|f| self.input.sources.get(f));
        let name = match source {
            Some(s) if s.file.is_some() => s.instruction.clone(),
            _ => field.map(str::to_uppercase),
        };
        let message = if by_init {
            format!("the command runs through `{program} -c`: the init signals the shell, which dies without passing the signal on; the application is killed without a chance to shut down cleanly (`exec` the command)")
        } else {
            format!("{} runs through `{program} -c`: {program} is PID 1 and does not forward SIGTERM, so a stop waits for its timeout and then kills (use exec form, or `exec` the command)", name.unwrap_or_else(|| "the command".into()))
        };
        self.warnings
            .push(warning("ShellFormSignals", message, source));
        End {
            kind: "shell",
            application: vec![script.to_string()],
            reaches: "no",
        }
    }

    /// Which field put the shell in argv: the image's shell-form
    /// ENTRYPOINT or CMD, or the runtime's entrypoint or command.
    fn shell_field(&self) -> Option<&'static str> {
        let c = self.input.commands;
        if self.input.entrypoint_from_image && c.entrypoint_form == Form::Shell {
            Some("entrypoint")
        } else if self.input.entrypoint_from_image && c.entrypoint.is_some() {
            None
        } else if self.input.cmd_from_image && c.cmd_form == Form::Shell && c.entrypoint.is_none() {
            Some("cmd")
        } else if !self.input.entrypoint_from_image && self.input.sources.contains_key("entrypoint")
        {
            Some("entrypoint")
        } else {
            Some("cmd")
        }
    }

    /// An exec-form script: does it `exec`?
    fn script_file(&mut self, argv: &[String], script: &Script, depth: usize) -> End {
        let program = first(argv);
        let text = &script.text;
        if execs_arguments(text) {
            self.steps.push(format!(
                "{program} is a script ({}) that ends in `exec \"$@\"`: its arguments replace it",
                script.path
            ));
            if argv.len() > 1 {
                return self.follow(&argv[1..], depth + 1);
            }
            return self.application(argv);
        }
        if let Some(line) = exec_line(text) {
            self.steps.push(format!(
                "{program} is a script ({}) that runs `{line}`: that program replaces it",
                script.path
            ));
            let words: Vec<String> = line
                .trim_start_matches("exec")
                .split_whitespace()
                .map(|w| w.trim_matches('"').to_string())
                .collect();
            return self.application(&words);
        }
        let traps = text
            .lines()
            .any(|l| l.trim_start().starts_with("trap ") && l.contains("TERM"));
        self.steps.push(format!(
            "{program} is a script ({}) that does not exec: its shell stays {} and {}",
            script.path,
            if self.forwarded_by_init {
                "the init's child"
            } else {
                "PID 1"
            },
            if traps {
                "traps TERM itself"
            } else {
                "does not pass SIGTERM on to what it runs"
            }
        ));
        if !traps {
            let source = self.input.sources.get(
                if self.input.entrypoint_from_image && self.input.commands.entrypoint.is_some() {
                    "entrypoint"
                } else {
                    "cmd"
                },
            );
            self.warnings.push(warning(
                "ScriptDoesNotExec",
                format!("{program} is a shell script ({}) that runs the application without `exec`: the shell stays PID 1 and does not forward SIGTERM (end it with `exec \"$@\"`, or exec the application)", script.path),
                source,
            ));
        }
        End {
            kind: "shell",
            // What the script runs is (usually) its arguments.
            application: if argv.len() > 1 {
                argv[1..].to_vec()
            } else {
                argv.to_vec()
            },
            reaches: if traps { "unknown" } else { "no" },
        }
    }

    /// The script at `program` (resolved in PATH), when the image's files
    /// can be read and it starts with `#!`.
    fn script(&mut self, program: &str) -> Option<Script> {
        let files = self.input.files?;
        for path in candidates(program, self.input.env) {
            if let Some(bytes) = files.read_file(&path, 64 << 10) {
                if !bytes.starts_with(b"#!") {
                    return None;
                }
                return Some(Script {
                    path,
                    text: String::from_utf8_lossy(&bytes).into_owned(),
                });
            }
        }
        None
    }
}

struct Script {
    path: String,
    text: String,
}

/// Where `program` is looked for: itself when it has a `/`, else each
/// directory of the container's PATH.
fn candidates(program: &str, env: &[String]) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_string()];
    }
    let path = env
        .iter()
        .map(|e| split_env(e))
        .find(|(k, _)| *k == "PATH")
        .map(|(_, v)| v)
        .unwrap_or(crate::image::DEFAULT_PATH);
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| format!("{}/{program}", d.trim_end_matches('/')))
        .collect()
}

/// The argv an init runs: after its options (and a `--`).
fn init_child(argv: &[String]) -> Vec<String> {
    let mut rest = &argv[1.min(argv.len())..];
    while let Some(word) = rest.first() {
        if word == "--" {
            rest = &rest[1..];
            break;
        }
        if !word.starts_with('-') {
            break;
        }
        rest = &rest[1..];
    }
    rest.to_vec()
}

/// The command string of `sh -c STRING` (options like `-e`, `-ec` before it).
fn command_string(argv: &[String]) -> Option<&str> {
    let mut words = argv.iter().skip(1);
    while let Some(word) = words.next() {
        if !word.starts_with('-') {
            return None;
        }
        if word.len() > 1
            && word[1..].chars().all(|c| c.is_ascii_alphabetic())
            && word.contains('c')
        {
            return words.next().map(String::as_str);
        }
    }
    None
}

/// Whether a script's last `exec` runs its arguments (`exec "$@"`).
fn execs_arguments(text: &str) -> bool {
    exec_line(text).is_some_and(|l| {
        let args = l.trim_start_matches("exec").trim();
        ["\"$@\"", "$@", "\"${@}\"", "${@}"].contains(&args)
    })
}

/// The script's last line that is an `exec` of a program (not a
/// redirection like `exec 2>&1`).
fn exec_line(text: &str) -> Option<&str> {
    text.lines().rev().map(str::trim).find(|l| {
        l.strip_prefix("exec ")
            .map(str::trim_start)
            .is_some_and(|rest| {
                !rest.is_empty()
                    && !rest.starts_with(|c: char| c.is_ascii_digit() || c == '>' || c == '<')
            })
    })
}

fn first(argv: &[String]) -> String {
    argv.first().cloned().unwrap_or_default()
}

/// A source in words, for steps.
fn describe(source: &Source) -> String {
    match (&source.file, source.line, &source.instruction) {
        (Some(file), Some(line), Some(field)) => format!("{field}: {file} line {line}"),
        (_, _, Some(what)) => what.clone(),
        _ => source.from.to_string(),
    }
}

fn warning(code: &'static str, message: String, source: Option<&Source>) -> Warning {
    Warning {
        code,
        message,
        line: source.and_then(|s| s.line),
        history: source.and_then(|s| s.history),
        file: source.and_then(|s| s.file.clone()),
    }
}

/// What stopping does, in words.
fn on_stop(ov: &Overrides, signal: &str, timeout: u64, reaches: &str, pid1: &[String]) -> String {
    let who = match ov.kind {
        "kubernetes" => "the kubelet",
        "compose" => "docker-compose stop",
        _ => "docker stop",
    };
    let pid1 = first(pid1);
    match reaches {
        "yes" => format!("{who} sends {signal} to PID 1 ({pid1}), which reaches the application; it has {timeout} s to exit before SIGKILL"),
        "no" => format!("{who} sends {signal} to PID 1 ({pid1}), which does not pass it on: the application runs on until SIGKILL after {timeout} s (every stop takes {timeout} s, and nothing shuts down cleanly)"),
        _ => format!("{who} sends {signal} to PID 1 ({pid1}); whether the application gets it depends on what {pid1} does; SIGKILL follows after {timeout} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn exec_detection() {
        assert!(execs_arguments("#!/bin/sh\nset -e\nexec \"$@\"\n"));
        assert!(!execs_arguments("#!/bin/sh\nexec 2>&1\n\"$@\"\n"));
        assert_eq!(
            exec_line("#!/bin/sh\nexec gosu app \"$@\"\n"),
            Some("exec gosu app \"$@\"")
        );
        assert_eq!(command_string(&v(&["sh", "-ec", "x"])), Some("x"));
        assert_eq!(command_string(&v(&["sh", "script.sh"])), None);
        assert_eq!(
            init_child(&v(&["tini", "-s", "--", "app", "-x"])),
            v(&["app", "-x"])
        );
        assert_eq!(init_child(&v(&["dumb-init", "app"])), v(&["app"]));
    }

    #[test]
    fn path_candidates() {
        assert_eq!(
            candidates("app", &v(&["PATH=/usr/bin:/bin/"])),
            v(&["/usr/bin/app", "/bin/app"])
        );
        assert_eq!(candidates("/x/app", &[]), v(&["/x/app"]));
    }
}
