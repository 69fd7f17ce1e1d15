//! The text form of an [`Explanation`]: values with their sources,
//! warnings, the Dockerfile reference's CMD × ENTRYPOINT table with this
//! image's cell marked, and what the usual `docker run` invocations run.

use std::fmt::Write as _;

use super::{Explanation, Form, Source};

/// A command as a JSON array (unambiguous about word boundaries), or `-`.
fn list(value: Option<&Vec<String>>) -> String {
    match value {
        Some(v) => serde_json::to_string(v).unwrap_or_default(),
        None => "-".to_string(),
    }
}

fn describe(source: Option<&Source>) -> String {
    let Some(s) = source else {
        return "not set".to_string();
    };
    let stage = s
        .stage
        .as_ref()
        .map(|st| format!(" (stage {st})"))
        .unwrap_or_default();
    match s.from {
        "line" => format!(
            "line {}{stage}: {}",
            s.line.unwrap_or(0),
            s.instruction.as_deref().unwrap_or("")
        ),
        "reset" => format!(
            "reset by line {}{stage}: {}",
            s.line.unwrap_or(0),
            s.instruction.as_deref().unwrap_or("")
        ),
        "onbuild" => format!(
            "ONBUILD trigger of the base, run at line {}{stage}: {}",
            s.line.unwrap_or(0),
            s.instruction.as_deref().unwrap_or("")
        ),
        "base_image" => format!("base image {}", s.image.as_deref().unwrap_or("?")),
        "stage" => format!("stage {}", s.stage.as_deref().unwrap_or("?")),
        _ => "default".to_string(),
    }
}

/// Renders the explanation; `invocation` is the `docker run` command line
/// the `argv` answers (e.g. `docker run --entrypoint sh IMAGE -c id`).
pub fn text(e: &Explanation, invocation: &str) -> String {
    let mut out = String::new();
    write_answer(&mut out, e, invocation);
    let _ = writeln!(out);
    write_settings(&mut out, e);
    write_collections(&mut out, e);
    let _ = writeln!(out);
    write_warnings(&mut out, e);
    let _ = writeln!(out);
    out.push_str(&table(e.cmd_form, e.entrypoint_form));
    let _ = writeln!(out);
    write_runs(&mut out, e);
    out
}

/// The target stage, and what `invocation` runs.
fn write_answer(out: &mut String, e: &Explanation, invocation: &str) {
    let _ = writeln!(out, "target stage: {} (FROM {})", e.target, e.base);
    let _ = writeln!(out);
    let _ = writeln!(out, "{invocation} runs:");
    match &e.argv {
        Some(argv) => {
            let _ = writeln!(out, "  {}", list(Some(argv)));
        }
        None => {
            let _ = writeln!(
                out,
                "  nothing: docker run fails with \"no command specified\""
            );
        }
    }
}

/// One line per single-valued setting (entrypoint, cmd, shell, user,
/// workdir, stop signal, healthcheck): its value and where it came from.
fn write_settings(out: &mut String, e: &Explanation) {
    let rows: Vec<(&str, String, String)> = vec![
        (
            "entrypoint",
            list(e.entrypoint.as_ref()),
            describe(e.sources.get("entrypoint")),
        ),
        ("cmd", list(e.cmd.as_ref()), describe(e.sources.get("cmd"))),
        (
            "shell",
            list(Some(&e.shell)),
            describe(e.sources.get("shell")),
        ),
        (
            "user",
            match e.user.as_deref() {
                Some(u) if !u.is_empty() => u.to_string(),
                _ => "- (root)".to_string(),
            },
            describe(e.sources.get("user")),
        ),
        (
            "workdir",
            match e.workdir.as_deref() {
                Some(w) if !w.is_empty() => w.to_string(),
                _ => "- (/)".to_string(),
            },
            describe(e.sources.get("workdir")),
        ),
        (
            "stop signal",
            e.stop_signal
                .clone()
                .unwrap_or_else(|| "- (SIGTERM)".to_string()),
            describe(e.sources.get("stop_signal")),
        ),
        (
            "healthcheck",
            e.healthcheck
                .as_ref()
                .map(|h| h.to_string())
                .unwrap_or_else(|| "-".to_string()),
            describe(e.sources.get("healthcheck")),
        ),
    ];
    let width = rows
        .iter()
        .map(|(_, v, _)| v.chars().count())
        .max()
        .unwrap_or(0);
    for (name, value, source) in &rows {
        let _ = writeln!(
            out,
            "{:<12} {:<width$}  <- {}",
            format!("{name}:"),
            value,
            source
        );
    }
}

/// The env, exposed ports, volumes and labels, one line per entry with
/// where it came from (`-` for an empty collection).
fn write_collections(out: &mut String, e: &Explanation) {
    let grouped: [(&str, &str, Vec<String>); 4] = [
        (
            "env",
            "env",
            e.env
                .iter()
                .map(|kv| kv.split('=').next().unwrap_or("").to_string())
                .collect(),
        ),
        ("exposed ports", "exposed_ports", e.exposed_ports.clone()),
        ("volumes", "volumes", e.volumes.clone()),
        ("labels", "labels", e.labels.keys().cloned().collect()),
    ];
    for (title, key, names) in grouped {
        if names.is_empty() {
            let _ = writeln!(out, "{:<12} -", format!("{title}:"));
            continue;
        }
        let _ = writeln!(out, "{title}:");
        let shown: Vec<String> = match key {
            "env" => e.env.clone(),
            "labels" => e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            _ => names.clone(),
        };
        let w = shown.iter().map(|s| s.chars().count()).max().unwrap_or(0);
        for (name, text) in names.iter().zip(&shown) {
            let _ = writeln!(
                out,
                "  {text:<w$}  <- {}",
                describe(e.sources.get(&format!("{key}.{name}")))
            );
        }
    }
}

/// The warnings, each with its line.
fn write_warnings(out: &mut String, e: &Explanation) {
    if e.warnings.is_empty() {
        let _ = writeln!(out, "warnings: none");
    } else {
        let _ = writeln!(out, "warnings:");
        for w in &e.warnings {
            let at = w.line.map(|l| format!("line {l}: ")).unwrap_or_default();
            let _ = writeln!(out, "  {at}{}: {}", w.code, w.message);
        }
    }
}

/// What the usual `docker run` invocations run.
fn write_runs(out: &mut String, e: &Explanation) {
    let runs = [
        ("docker run IMAGE".to_string(), &e.run.plain),
        (
            format!("docker run IMAGE {}", e.run.example_args.join(" ")),
            &e.run.with_args,
        ),
        (
            format!("docker run --entrypoint {} IMAGE", e.run.example_entrypoint),
            &e.run.with_entrypoint,
        ),
    ];
    let w = runs
        .iter()
        .map(|(c, _)| c.chars().count())
        .max()
        .unwrap_or(0);
    for (command, argv) in &runs {
        let result = match argv {
            Some(v) => list(Some(v)),
            None => "error: no command specified".to_string(),
        };
        let _ = writeln!(out, "{command:<w$}  -> {result}");
    }
}

/// The reference's table, this image's cell marked with `*`.
pub fn table(cmd: Form, entrypoint: Form) -> String {
    const HEADER: [&str; 4] = [
        "",
        "No ENTRYPOINT",
        "ENTRYPOINT exec_entry p1_entry",
        "ENTRYPOINT [\"exec_entry\", \"p1_entry\"]",
    ];
    const ROWS: [[&str; 4]; 3] = [
        [
            "No CMD",
            "error, not allowed",
            "/bin/sh -c exec_entry p1_entry",
            "exec_entry p1_entry",
        ],
        [
            "CMD [\"exec_cmd\", \"p1_cmd\"]",
            "exec_cmd p1_cmd",
            "/bin/sh -c exec_entry p1_entry",
            "exec_entry p1_entry exec_cmd p1_cmd",
        ],
        [
            "CMD exec_cmd p1_cmd",
            "/bin/sh -c exec_cmd p1_cmd",
            "/bin/sh -c exec_entry p1_entry",
            "exec_entry p1_entry /bin/sh -c exec_cmd p1_cmd",
        ],
    ];
    let row = match cmd {
        Form::None => 0,
        Form::Exec => 1,
        Form::Shell => 2,
    };
    let column = match entrypoint {
        Form::None => 1,
        Form::Shell => 2,
        Form::Exec => 3,
    };
    let cell = |r: usize, c: usize, text: &str| -> String {
        if c == 0 {
            text.to_string()
        } else if r == row && c == column {
            format!("(*) {text}")
        } else {
            text.to_string()
        }
    };
    let mut grid: Vec<Vec<String>> = vec![HEADER.iter().map(|t| t.to_string()).collect()];
    for (r, cells) in ROWS.iter().enumerate() {
        grid.push(
            cells
                .iter()
                .enumerate()
                .map(|(c, t)| cell(r, c, t))
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..4)
        .map(|c| grid.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::from("CMD x ENTRYPOINT (Dockerfile reference; (*) = this image):\n");
    for (i, r) in grid.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, t)| format!("{t:<w$}", w = widths[c]))
            .collect();
        let _ = writeln!(out, "  {}", line.join(" | ").trim_end());
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            let _ = writeln!(out, "  {}", rule.join("-+-"));
        }
    }
    out
}
