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
    let instruction = s.instruction.as_deref().unwrap_or("");
    let entry = |n: usize| {
        format!(
            "history entry {n}: {}",
            s.created_by.as_deref().unwrap_or("")
        )
    };
    let field = || match (&s.file, s.line) {
        (Some(file), Some(line)) => format!("{instruction}: {file} line {line}"),
        _ => format!("docker run {instruction}"),
    };
    match (s.from, s.history) {
        ("reset", Some(n)) => format!("reset by {}", entry(n)),
        ("reset", None) if s.file.is_some() || s.line.is_none() => {
            format!("reset by {}", field())
        }
        ("base_image", Some(n)) => format!(
            "base image {} ({})",
            s.image.as_deref().unwrap_or("?"),
            entry(n)
        ),
        ("history", Some(n)) => entry(n),
        ("kubernetes" | "compose" | "docker_run", _) => field(),
        ("unknown", _) => "not in the image's history".to_string(),
        ("line", _) => format!("line {}{stage}: {instruction}", s.line.unwrap_or(0)),
        ("reset", _) => format!(
            "reset by line {}{stage}: {instruction}",
            s.line.unwrap_or(0)
        ),
        ("onbuild", _) => format!(
            "ONBUILD trigger of the base, run at line {}{stage}: {instruction}",
            s.line.unwrap_or(0)
        ),
        ("base_image", _) => format!("base image {}", s.image.as_deref().unwrap_or("?")),
        ("stage", _) => format!("stage {}", s.stage.as_deref().unwrap_or("?")),
        _ => "default".to_string(),
    }
}

/// Renders the explanation; `invocation` is the `docker run` command line
/// the `argv` answers (e.g. `docker run --entrypoint sh IMAGE -c id`).
pub fn text(e: &Explanation, invocation: &str) -> String {
    text_width(e, invocation, None)
}

/// [`text`] fitted to `width` columns (`None`: values in full, however
/// long): a value too long for its column goes on a line of its own with
/// its source under it, and what is still too long is cut with `…` (the
/// JSON has every value in full).
pub fn text_width(e: &Explanation, invocation: &str, width: Option<usize>) -> String {
    let mut out = String::new();
    write_answer(&mut out, e, invocation, width);
    let _ = writeln!(out);
    write_settings(&mut out, e, width);
    write_collections(&mut out, e, width);
    write_overridden(&mut out, e, width);
    write_pid1(&mut out, e, width);
    let _ = writeln!(out);
    write_warnings(&mut out, e, width);
    let _ = writeln!(out);
    match width {
        Some(w) if w < TABLE_WIDTH => out.push_str(&narrow_table(e.cmd_form, e.entrypoint_form)),
        _ => out.push_str(&table(e.cmd_form, e.entrypoint_form)),
    }
    let _ = writeln!(out);
    match e.subject.as_ref().map(|s| s.kind) {
        Some("kubernetes") => out.push_str(&runtime_rules(e, &KUBERNETES_RULES, width)),
        Some("compose") => out.push_str(&runtime_rules(e, &COMPOSE_RULES, width)),
        _ => write_runs(&mut out, e, width),
    }
    out
}

/// Cuts `text` to `width` characters, the last one `…`.
fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut s: String = text.chars().take(width.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// Wraps `text` at spaces to lines of `width`, the lines after the first
/// indented by `indent` spaces; a word longer than a line is cut.
fn wrap(text: &str, width: Option<usize>, indent: usize) -> String {
    let Some(width) = width else {
        return text.to_string();
    };
    let body = text.trim_start_matches(' ');
    let lead = text.len() - body.len();
    let mut lines: Vec<String> = Vec::new();
    let mut line = " ".repeat(lead);
    for word in body.split(' ') {
        let room = width.saturating_sub(if lines.is_empty() { 0 } else { indent });
        let started = line.len() > lead || !lines.is_empty() && !line.is_empty();
        if started && line.chars().count() + 1 + word.chars().count() > room {
            lines.push(std::mem::take(&mut line));
        }
        if line.len() > lead || (!lines.is_empty() && !line.is_empty()) {
            line.push(' ');
        }
        line.push_str(word);
    }
    lines.push(line);
    let pad = " ".repeat(indent);
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let room = width.saturating_sub(if i == 0 { 0 } else { indent });
            let l = cut(l, room);
            if i == 0 {
                l
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Rows of `prefix value  <- source`, values padded to the longest (to
/// at most half the width when fitted).
fn write_rows(out: &mut String, rows: &[(String, String, String)], width: Option<usize>) {
    let longest = rows
        .iter()
        .map(|(_, v, _)| v.chars().count())
        .max()
        .unwrap_or(0);
    let prefix = rows
        .iter()
        .map(|(p, _, _)| p.chars().count())
        .max()
        .unwrap_or(0);
    let Some(width) = width else {
        for (p, value, source) in rows {
            let _ = writeln!(out, "{p:<prefix$}{value:<longest$}  <- {source}");
        }
        return;
    };
    let column = longest.min(width.saturating_sub(prefix) / 2);
    for (p, value, source) in rows {
        let p = format!("{p:<prefix$}");
        let n = value.chars().count();
        if n <= column {
            let line = format!("{p}{value:<column$}  <- {source}");
            let _ = writeln!(out, "{}", cut(&line, width));
        } else {
            let _ = writeln!(out, "{}", cut(&format!("{p}{value}"), width));
            let under = format!("{}  <- {source}", " ".repeat(prefix));
            let _ = writeln!(out, "{}", cut(&under, width));
        }
    }
}

/// What was explained, and what `invocation` (or the runtime) runs.
fn write_answer(out: &mut String, e: &Explanation, invocation: &str, width: Option<usize>) {
    let Some(subject) = &e.subject else {
        let _ = writeln!(out, "target stage: {} (FROM {})", e.target, e.base);
        let _ = writeln!(out);
        let _ = writeln!(out, "{invocation} runs:");
        write_argv(out, e, width);
        return;
    };
    let digest = subject
        .digest
        .as_ref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    let _ = writeln!(out, "image: {}{digest}", subject.image);
    match &subject.base {
        Some(base) => {
            let entries = match subject.base_history_entries {
                1 => "history entry 0".to_string(),
                n => format!("history entries 0-{}", n.saturating_sub(1)),
            };
            let _ = writeln!(out, "built on: {base} ({entries})");
        }
        None => {
            let _ = writeln!(
                out,
                "built on: not known (no image in the store it starts with)"
            );
        }
    }
    let place = |what: &str| {
        let workload = subject
            .workload
            .as_ref()
            .map(|w| format!("{w}, "))
            .unwrap_or_default();
        format!(
            "{what} {} ({workload}{} line {})",
            subject.name.as_deref().unwrap_or("?"),
            subject.file.as_deref().unwrap_or("?"),
            subject.line.unwrap_or(0)
        )
    };
    let _ = writeln!(out);
    match subject.kind {
        "kubernetes" => {
            let _ = writeln!(out, "{} runs:", place("Kubernetes container"));
        }
        "compose" => {
            let _ = writeln!(out, "{} runs:", place("Compose service"));
        }
        _ => {
            let _ = writeln!(out, "{invocation} runs:");
        }
    }
    write_argv(out, e, width);
}

fn write_argv(out: &mut String, e: &Explanation, width: Option<usize>) {
    match &e.argv {
        Some(argv) => {
            let line = format!("  {}", list(Some(argv)));
            let _ = writeln!(out, "{}", width.map(|w| cut(&line, w)).unwrap_or(line));
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
fn write_settings(out: &mut String, e: &Explanation, width: Option<usize>) {
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
    let rows: Vec<(String, String, String)> = rows
        .into_iter()
        .map(|(name, value, source)| (format!("{:<12} ", format!("{name}:")), value, source))
        .collect();
    write_rows(out, &rows, width);
}

/// The env, exposed ports, volumes and labels, one line per entry with
/// where it came from (`-` for an empty collection).
fn write_collections(out: &mut String, e: &Explanation, width: Option<usize>) {
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
        let rows: Vec<(String, String, String)> = names
            .iter()
            .zip(&shown)
            .map(|(name, text)| {
                let source = describe(e.sources.get(&format!("{key}.{name}")));
                ("  ".to_string(), text.clone(), source)
            })
            .collect();
        write_rows(out, &rows, width);
    }
}

/// The image's values the runtime replaced.
fn write_overridden(out: &mut String, e: &Explanation, width: Option<usize>) {
    if e.overridden.is_empty() {
        return;
    }
    let _ = writeln!(out, "replaced (the image's own value):");
    let rows: Vec<(String, String, String)> = e
        .overridden
        .iter()
        .map(|(field, o)| {
            let value = match &o.image_value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (
                format!("  {field}: "),
                value,
                describe(o.image_source.as_ref()),
            )
        })
        .collect();
    write_rows(out, &rows, width);
}

/// PID 1, whether the stop signal reaches the application, and how that
/// was worked out.
fn write_pid1(out: &mut String, e: &Explanation, width: Option<usize>) {
    let Some(p) = &e.pid1 else {
        return;
    };
    let _ = writeln!(out);
    let process = p
        .process
        .as_ref()
        .map(|v| list(Some(v)))
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "{}",
        wrap(&format!("PID 1: {process} ({})", p.kind), width, 2)
    );
    if let Some(app) = &p.application {
        let _ = writeln!(
            out,
            "{}",
            wrap(&format!("application: {}", list(Some(app))), width, 2)
        );
    }
    let reaches = match p.signal_reaches_application {
        "yes" => "yes",
        "no" => "no",
        _ => "not known",
    };
    let _ = writeln!(
        out,
        "stop signal {} reaches the application: {reaches}",
        p.stop_signal
    );
    let _ = writeln!(
        out,
        "{}",
        wrap(&format!("on stop: {}", p.on_stop), width, 2)
    );
    for step in &p.steps {
        let _ = writeln!(out, "{}", wrap(&format!("  - {step}"), width, 4));
    }
}

/// The warnings, each with its line (or history entry, or manifest line).
fn write_warnings(out: &mut String, e: &Explanation, width: Option<usize>) {
    if e.warnings.is_empty() {
        let _ = writeln!(out, "warnings: none");
    } else {
        let _ = writeln!(out, "warnings:");
        for w in &e.warnings {
            let at = match (&w.file, w.line, w.history) {
                (Some(file), Some(l), _) => format!("{file} line {l}: "),
                (None, Some(l), _) => format!("line {l}: "),
                (_, None, Some(h)) => format!("history entry {h}: "),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "{}",
                wrap(&format!("  {at}{}: {}", w.code, w.message), width, 4)
            );
        }
    }
}

/// What the usual `docker run` invocations run.
fn write_runs(out: &mut String, e: &Explanation, width: Option<usize>) {
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
        let line = format!("{command:<w$}  -> {result}");
        let _ = writeln!(out, "{}", width.map(|w| cut(&line, w)).unwrap_or(line));
    }
}

/// A runtime's rules for its two command fields: (title, rows of (which
/// fields are given, what runs)).
struct Rules {
    title: &'static str,
    /// The two fields, as [`super::Subject::given`] names them.
    fields: [&'static str; 2],
    rows: [(&'static str, &'static str); 4],
}

const KUBERNETES_RULES: Rules = Rules {
    title: "Kubernetes command x args (kubernetes.io, \"Define a Command and Arguments for a Container\")",
    fields: ["command", "args"],
    rows: [
        ("neither command nor args", "the image's ENTRYPOINT and CMD"),
        ("command only", "command; the image's ENTRYPOINT and CMD are ignored"),
        ("args only", "the image's ENTRYPOINT with args"),
        ("command and args", "command with args; the image's are ignored"),
    ],
};

const COMPOSE_RULES: Rules = Rules {
    title: "Compose entrypoint x command (the Compose file reference)",
    fields: ["entrypoint", "command"],
    rows: [
        (
            "neither entrypoint nor command",
            "the image's ENTRYPOINT and CMD",
        ),
        ("entrypoint only", "entrypoint; the image's CMD is dropped"),
        ("command only", "the image's ENTRYPOINT with command"),
        ("entrypoint and command", "entrypoint with command"),
    ],
};

/// The runtime's rules, this container's row marked with `(*)`.
fn runtime_rules(e: &Explanation, rules: &Rules, width: Option<usize>) -> String {
    let given = |field: &str| {
        e.subject
            .as_ref()
            .is_some_and(|s| s.given.iter().any(|g| g == field))
    };
    let row = match (given(rules.fields[0]), given(rules.fields[1])) {
        (false, false) => 0,
        (true, false) => 1,
        (false, true) => 2,
        (true, true) => 3,
    };
    let mut out = wrap(&format!("{} ((*) = this one):", rules.title), width, 2);
    out.push('\n');
    let w = rules.rows.iter().map(|(a, _)| a.len()).max().unwrap_or(0);
    for (i, (when, runs)) in rules.rows.iter().enumerate() {
        let mark = if i == row { "(*) " } else { "    " };
        let _ = writeln!(out, "  {mark}{when:<w$}  -> {runs}");
    }
    out
}

/// How wide [`table`] is.
const TABLE_WIDTH: usize = 126;

/// [`table`] as a list, for narrow terminals.
pub fn narrow_table(cmd: Form, entrypoint: Form) -> String {
    const CELLS: [(Form, Form, &str); 9] = [
        (Form::None, Form::None, "error, not allowed"),
        (Form::None, Form::Shell, "/bin/sh -c exec_entry p1_entry"),
        (Form::None, Form::Exec, "exec_entry p1_entry"),
        (Form::Exec, Form::None, "exec_cmd p1_cmd"),
        (Form::Exec, Form::Shell, "/bin/sh -c exec_entry p1_entry"),
        (
            Form::Exec,
            Form::Exec,
            "exec_entry p1_entry exec_cmd p1_cmd",
        ),
        (Form::Shell, Form::None, "/bin/sh -c exec_cmd p1_cmd"),
        (Form::Shell, Form::Shell, "/bin/sh -c exec_entry p1_entry"),
        (
            Form::Shell,
            Form::Exec,
            "exec_entry p1_entry /bin/sh -c exec_cmd p1_cmd",
        ),
    ];
    let name = |f: Form| match f {
        Form::None => "none",
        Form::Exec => "exec",
        Form::Shell => "shell",
    };
    let mut out = String::from("CMD x ENTRYPOINT (Dockerfile reference; (*) = this image):\n");
    for (c, ep, runs) in CELLS {
        let mark = if (c, ep) == (cmd, entrypoint) {
            "(*) "
        } else {
            "    "
        };
        let cell = format!("CMD {} + ENTRYPOINT {}", name(c), name(ep));
        let _ = writeln!(out, "  {mark}{cell:<29} -> {runs}");
    }
    out
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
