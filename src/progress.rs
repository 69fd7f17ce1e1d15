//! Progress rendering for the CLI: the library's [`Reporter`] drawn as
//! indicatif bars (tty), plain lines, JSON lines, or nothing.
//!
//! Commands flatten [`ProgressArgs`] into their arguments and build a
//! [`CliReporter`] from it. Everything goes to stderr; stdout stays for
//! command output.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use indicatif::{
    MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle, TermLike,
};
use kiln_builder::solve::{BuildEvents, StepEvent, StepOutcome};
use kiln_layers::{Outcome, Reporter};

/// `--progress` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Bars, even when stderr is not a terminal.
    Tty,
    /// One line when an item starts and one when it ends.
    Plain,
    /// Nothing.
    Quiet,
    /// One JSON object per event.
    Json,
}

/// The `--progress` flag, for commands to flatten in.
#[derive(Clone, Debug, Default, Args)]
pub struct ProgressArgs {
    /// How to show progress: auto, tty, plain, quiet or json (on stderr).
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto, env = "KILN_PROGRESS")]
    pub progress: ProgressMode,
}

impl ProgressArgs {
    pub fn reporter(&self) -> CliReporter {
        CliReporter::new(self.progress)
    }
}

/// The live view's terminal: stderr, drawn on even when it is not a
/// terminal (`--progress tty`), 20 times a second at most.
fn tty() -> ProgressDrawTarget {
    ProgressDrawTarget::term_like_with_hz(Box::new(Stderr::default()), 20)
}

/// stderr as the live view sees it: the terminal's size (BuildKit's 80
/// columns when stderr is not one); writes are gathered and sent at each
/// flush.
#[derive(Debug, Default)]
struct Stderr {
    pending: Mutex<Vec<u8>>,
}

impl Stderr {
    /// (rows, columns) of the terminal, BuildKit's 10 x 80 when unknown.
    fn size() -> (u16, u16) {
        match rustix::termios::tcgetwinsize(std::io::stderr()) {
            Ok(size) if size.ws_row > 0 && size.ws_col > 0 => (size.ws_row, size.ws_col),
            _ => (10, 80),
        }
    }

    fn put(&self, text: &str) -> std::io::Result<()> {
        match self.pending.lock() {
            Ok(mut pending) => {
                pending.extend_from_slice(text.as_bytes());
                Ok(())
            }
            Err(_) => Err(std::io::Error::other("progress output lock poisoned")),
        }
    }

    fn csi(&self, n: usize, code: char) -> std::io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.put(&format!("\x1b[{n}{code}"))
    }
}

impl TermLike for Stderr {
    fn width(&self) -> u16 {
        Self::size().1
    }

    fn height(&self) -> u16 {
        Self::size().0
    }

    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.csi(n, 'A')
    }

    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.csi(n, 'B')
    }

    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.csi(n, 'C')
    }

    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        self.csi(n, 'D')
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.put(s)?;
        self.put("\n")
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.put(s)
    }

    fn clear_line(&self) -> std::io::Result<()> {
        self.put("\r\x1b[2K")
    }

    fn flush(&self) -> std::io::Result<()> {
        let bytes = match self.pending.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(_) => return Err(std::io::Error::other("progress output lock poisoned")),
        };
        let mut err = std::io::stderr().lock();
        err.write_all(&bytes)?;
        err.flush()
    }
}

/// A [`Reporter`] for the terminal.
pub struct CliReporter {
    mode: ProgressMode,
    multi: Option<MultiProgress>,
    items: Mutex<HashMap<String, Item>>,
}

struct Item {
    bar: Option<ProgressBar>,
    started: Instant,
    label: String,
    bytes: u64,
}

/// `sha256:0123456789abcdef…` → `0123456789ab`; anything else unchanged.
fn short_id(id: &str) -> &str {
    match id.strip_prefix("sha256:").and_then(|hex| hex.get(..12)) {
        Some(short) => short,
        None => id,
    }
}

impl CliReporter {
    pub fn new(mode: ProgressMode) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Tty,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        };
        let multi = (mode == ProgressMode::Tty).then(|| MultiProgress::with_draw_target(tty()));
        CliReporter {
            mode,
            multi,
            items: Mutex::new(HashMap::new()),
        }
    }

    /// The live view bars are drawn in (tty mode only).
    pub fn multi(&self) -> Option<MultiProgress> {
        self.multi.clone()
    }

    /// The mode after resolving `auto`.
    #[allow(dead_code)] // for pull/push/build
    pub fn mode(&self) -> ProgressMode {
        self.mode
    }

    /// Prints a line without tearing the bars.
    #[allow(dead_code)] // for pull/push/build
    pub fn println(&self, line: &str) {
        match (&self.multi, self.mode) {
            (_, ProgressMode::Quiet) => {}
            (_, ProgressMode::Json) => {
                self.json(&serde_json::json!({"event": "message", "message": line}))
            }
            (Some(multi), _) => {
                let _ = multi.println(line);
            }
            (None, _) => eprintln!("{line}"),
        }
    }

    /// One write per line: stderr is unbuffered, and `Value`'s Display
    /// writes token by token (a download's progress is hundreds of lines).
    fn json(&self, value: &serde_json::Value) {
        let line = format!("{value}\n");
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn bar(&self, id: &str, label: &str, total: Option<u64>) -> Option<ProgressBar> {
        let multi = self.multi.as_ref()?;
        let bar = match total {
            Some(t) => {
                let bar = ProgressBar::new(t);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:.bold} {msg:<11} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar
            }
            None => {
                let bar = ProgressBar::new_spinner();
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:.bold} {msg:<11} {spinner} {bytes} {bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            }
        };
        let bar = multi.add(bar);
        bar.set_prefix(short_id(id).to_string());
        bar.set_message(label.to_string());
        Some(bar)
    }
}

impl Reporter for CliReporter {
    fn start(&self, id: &str, label: &str, total: Option<u64>) {
        let bar = self.bar(id, label, total);
        match self.mode {
            ProgressMode::Plain => match total {
                Some(t) => eprintln!("{}: {label} ({})", short_id(id), human_bytes(t)),
                None => eprintln!("{}: {label}", short_id(id)),
            },
            ProgressMode::Json => self.json(&serde_json::json!({
                "event": "start", "id": id, "label": label, "total": total
            })),
            _ => {}
        }
        if let Ok(mut items) = self.items.lock() {
            items.insert(
                id.to_string(),
                Item {
                    bar,
                    started: Instant::now(),
                    label: label.to_string(),
                    bytes: 0,
                },
            );
        }
    }

    fn progress(&self, id: &str, bytes: u64) {
        let mut known = false;
        if let Ok(mut items) = self.items.lock() {
            if let Some(item) = items.get_mut(id) {
                known = true;
                item.bytes = bytes;
                if let Some(bar) = &item.bar {
                    bar.set_position(bytes);
                }
            }
        }
        // An item never started here (filtered out by a wrapper) stays silent.
        if known && self.mode == ProgressMode::Json {
            self.json(&serde_json::json!({"event": "progress", "id": id, "bytes": bytes}));
        }
    }

    fn done(&self, id: &str, outcome: Outcome) {
        let item = self
            .items
            .lock()
            .ok()
            .and_then(|mut items| items.remove(id));
        if item.is_none() {
            return;
        }
        let (elapsed, label, bytes) = item
            .as_ref()
            .map(|i| (i.started.elapsed(), i.label.clone(), i.bytes))
            .unwrap_or_default();
        let status = match &outcome {
            Outcome::Done => "done".to_string(),
            Outcome::Skipped(why) => format!("skipped: {why}"),
            Outcome::Failed(why) => format!("failed: {why}"),
        };
        match self.mode {
            ProgressMode::Tty => {
                if let Some(bar) = item.and_then(|i| i.bar) {
                    bar.finish_with_message(format!("{label} {status}"));
                }
            }
            ProgressMode::Plain => eprintln!(
                "{}: {label} {status} ({} in {:.1}s)",
                short_id(id),
                human_bytes(bytes),
                elapsed.as_secs_f64()
            ),
            ProgressMode::Json => {
                let (status, message) = match outcome {
                    Outcome::Done => ("done", None),
                    Outcome::Skipped(m) => ("skipped", Some(m)),
                    Outcome::Failed(m) => ("failed", Some(m)),
                };
                self.json(&serde_json::json!({
                    "event": "done", "id": id, "status": status, "message": message,
                    "bytes": bytes, "seconds": elapsed.as_secs_f64()
                }));
            }
            ProgressMode::Quiet | ProgressMode::Auto => {}
        }
    }
}

/// A build's steps drawn as BuildKit draws its vertices: numbered `#N`
/// lines (plain), a live view redrawn in place (tty), one JSON object per
/// event (json), or nothing (quiet). Writes to stderr, or to the writer
/// given to `BuildProgress::with_writer` (plain and json modes; tests).
///
/// The tty view is BuildKit's (its `progressui` tty display): a header
/// `[+] Building 1.2s (3/5)`, ` => NAME` lines cut to the terminal's width
/// with the time right-aligned at the end, the last lines of a running
/// step's output under it (` => => # …`), warnings (` => WARN: …`), and
/// `CACHED`, `ERROR` or `CANCELED` before the name of a step that ended so.
pub struct BuildProgress {
    mode: ProgressMode,
    state: Mutex<BuildState>,
    multi: Option<MultiProgress>,
    header: Option<ProgressBar>,
    out: Mutex<Box<dyn Write + Send>>,
    /// Print Dockerfile warnings (`WARNING: Dockerfile:3: …`).
    show_warnings: bool,
}

#[derive(Default)]
struct BuildState {
    next_id: usize,
    /// Vertices by (stage index, step number).
    vertices: HashMap<(usize, usize), Vertex>,
    /// The vertex the last plain line was about (BuildKit repeats a
    /// vertex's header, after a blank line, when output switches to it).
    last_printed: Option<usize>,
    started: usize,
    finished: usize,
    /// The first step that failed: its `[stage n/t] INSTRUCTION` name and
    /// message, for the error summary.
    failure: Option<(String, String)>,
}

struct Vertex {
    id: usize,
    name: String,
    started: Instant,
    bar: Option<ProgressBar>,
    /// Tty only: the running step's last output lines, drawn under it.
    log_bars: Vec<ProgressBar>,
    last_lines: std::collections::VecDeque<String>,
    /// Tty only: its warnings, drawn under it.
    warn_bars: Vec<ProgressBar>,
}

/// How many output lines the tty view keeps under a running step.
const TTY_LOG_LINES: usize = 6;

/// A time as BuildKit's tty view shows it (`%3.1fs`, under 0.05s as 0).
fn tty_seconds(seconds: f64) -> String {
    let seconds = if seconds < 0.05 { 0.0 } else { seconds };
    format!("{seconds:.1}s")
}

/// A tty line: `template`'s `{wide_msg}` takes what the terminal's width
/// leaves, cut to fit (BuildKit cuts a name to the width, never wraps it),
/// and the last column stays empty, as in BuildKit's view (its lines are
/// `width - 1` wide).
fn tty_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!("{template} "))
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .with_key(
            "secs",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&tty_seconds(state.elapsed().as_secs_f64()));
            },
        )
}

/// A running step: its name, and its time so far at the right edge.
fn running_style() -> ProgressStyle {
    tty_style(" => {wide_msg} {secs}")
}

/// A finished step: its name, and its time (the bar's prefix) at the
/// right edge.
fn finished_style() -> ProgressStyle {
    tty_style(" => {wide_msg} {prefix}")
}

/// A line under a step: `indent` then the text, cut to the width.
fn detail_style(indent: &str) -> ProgressStyle {
    tty_style(&format!("{indent}{{wide_msg}}"))
}

impl BuildProgress {
    /// `mode` as resolved by [`CliReporter::mode`] (never `Auto`). In tty
    /// mode, `shared` is the view to draw into (the [`CliReporter`]'s, so
    /// layer progress and steps share the screen), else a new one.
    pub fn new(mode: ProgressMode, shared: Option<MultiProgress>) -> Self {
        let multi = (mode == ProgressMode::Tty)
            .then(|| shared.unwrap_or_else(|| MultiProgress::with_draw_target(tty())));
        let header = multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new_spinner());
            bar.set_style(tty_style("[+] Building {secs} {wide_msg}"));
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        BuildProgress {
            mode,
            state: Mutex::new(BuildState {
                next_id: 1,
                ..BuildState::default()
            }),
            multi,
            header,
            out: Mutex::new(Box::new(std::io::stderr())),
            show_warnings: mode != ProgressMode::Quiet,
        }
    }

    /// Whether Dockerfile warnings are printed (by default, unless quiet).
    pub fn show_warnings(mut self, show: bool) -> Self {
        self.show_warnings = show;
        self
    }

    /// Plain or json output into `out` instead of stderr (for tests).
    #[cfg(test)]
    pub fn with_writer(mode: ProgressMode, out: Box<dyn Write + Send>) -> Self {
        let mut progress = BuildProgress::new(mode, None);
        progress.out = Mutex::new(out);
        progress
    }

    /// One write per line (the output is unbuffered).
    fn write_line(&self, line: &str) {
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(format!("{line}\n").as_bytes());
        }
    }

    fn json(&self, value: serde_json::Value) {
        self.write_line(&value.to_string());
    }

    /// Plain: the blank line and header that precede a vertex's lines when
    /// the previous line was about another vertex.
    fn switch_to(&self, state: &mut BuildState, id: usize, name: &str) {
        if state.last_printed == Some(id) {
            return;
        }
        if state.last_printed.is_some() {
            self.write_line("");
        }
        self.write_line(&format!("#{id} {name}"));
        state.last_printed = Some(id);
    }

    fn update_header(&self, state: &BuildState) {
        if let Some(header) = &self.header {
            header.set_message(format!("({}/{})", state.finished, state.started));
        }
    }

    /// A vertex with no Dockerfile step behind it (`exporting to image`),
    /// with its detail lines and time: printed at once.
    pub fn vertex(&self, name: &str, lines: &[String], seconds: f64) {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(_) => return,
        };
        let id = state.next_id;
        state.next_id += 1;
        match self.mode {
            ProgressMode::Plain => {
                self.switch_to(&mut state, id, name);
                for line in lines {
                    self.write_line(&format!("#{id} {line}"));
                }
                self.write_line(&format!("#{id} DONE {seconds:.1}s"));
            }
            ProgressMode::Json => self.json(serde_json::json!({
                "event": "vertex", "id": id, "name": name, "lines": lines, "seconds": seconds
            })),
            ProgressMode::Tty => {
                if let Some(multi) = &self.multi {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(finished_style());
                    bar.set_prefix(tty_seconds(seconds));
                    bar.finish_with_message(name.to_string());
                    for line in lines {
                        let detail = multi.add(ProgressBar::new_spinner());
                        detail.set_style(detail_style(" => => "));
                        detail.finish_with_message(line.clone());
                    }
                }
            }
            ProgressMode::Quiet | ProgressMode::Auto => {}
        }
    }

    /// The first failed step's name (`[stage n/t] INSTRUCTION`) and message.
    pub fn failure(&self) -> Option<(String, String)> {
        self.state.lock().ok()?.failure.clone()
    }

    /// The whole build's end: stops the live view's timer, which says
    /// `FINISHED` when the build succeeded, as BuildKit's does.
    pub fn finish(&self, succeeded: bool) {
        if let Some(header) = &self.header {
            if succeeded {
                if let Ok(state) = self.state.lock() {
                    header.set_message(format!("({}/{}) FINISHED", state.finished, state.started));
                }
            }
            header.finish();
        }
        if let Ok(mut out) = self.out.lock() {
            let _ = out.flush();
        }
    }

    /// Tty: a running step's line.
    fn running_bar(&self, name: &str) -> Option<ProgressBar> {
        let multi = self.multi.as_ref()?;
        let bar = multi.add(ProgressBar::new_spinner());
        bar.set_style(running_style());
        bar.set_message(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        Some(bar)
    }

    /// Tty: a running step's output, its last lines drawn under it.
    fn tty_output(&self, vertex: &mut Vertex, line: &str) {
        if vertex.last_lines.len() == TTY_LOG_LINES {
            vertex.last_lines.pop_front();
        }
        vertex.last_lines.push_back(line.to_string());
        let (Some(multi), Some(bar)) = (&self.multi, &vertex.bar) else {
            return;
        };
        while vertex.log_bars.len() < vertex.last_lines.len() {
            let after = vertex
                .log_bars
                .last()
                .or(vertex.warn_bars.last())
                .unwrap_or(bar)
                .clone();
            let log = multi.insert_after(&after, ProgressBar::new_spinner());
            log.set_style(detail_style(" => => # "));
            vertex.log_bars.push(log);
        }
        for (log, text) in vertex.log_bars.iter().zip(&vertex.last_lines) {
            log.set_message(text.clone());
        }
    }

    /// Tty: a finished step's line, marked as it ended, with its time.
    fn tty_done(vertex: &Vertex, outcome: &StepOutcome, seconds: f64) {
        for log in &vertex.log_bars {
            // A failed step keeps its last lines on screen.
            if matches!(outcome, StepOutcome::Failed(_)) {
                log.finish();
            } else {
                log.finish_and_clear();
            }
        }
        let Some(bar) = &vertex.bar else {
            return;
        };
        let (mark, seconds) = match outcome {
            StepOutcome::Cached => ("CACHED ", 0.0),
            StepOutcome::Done => ("", seconds),
            StepOutcome::Failed(_) => ("ERROR ", seconds),
            StepOutcome::Canceled => ("CANCELED ", seconds),
        };
        bar.set_style(finished_style());
        bar.set_prefix(tty_seconds(seconds));
        bar.finish_with_message(format!("{mark}{}", vertex.name));
    }

    /// Plain: how a step ended, under its header.
    fn plain_done(&self, state: &mut BuildState, vertex: &Vertex, outcome: &StepOutcome) {
        let (id, seconds) = (vertex.id, vertex.started.elapsed().as_secs_f64());
        self.switch_to(state, id, &vertex.name);
        match outcome {
            StepOutcome::Cached => self.write_line(&format!("#{id} CACHED")),
            StepOutcome::Done => self.write_line(&format!("#{id} DONE {seconds:.1}s")),
            StepOutcome::Failed(message) => self.write_line(&format!("#{id} ERROR: {message}")),
            StepOutcome::Canceled => self.write_line(&format!("#{id} CANCELED")),
        }
    }
}

impl BuildEvents for BuildProgress {
    fn step_started(&self, step: &StepEvent<'_>) {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(_) => return,
        };
        let id = state.next_id;
        state.next_id += 1;
        state.started += 1;
        // A very long instruction (a 10 MB RUN line) is not echoed whole.
        let name = format!(
            "{} {}",
            step.prefix(),
            kiln_parser::shorten(step.instruction)
        );
        match self.mode {
            ProgressMode::Plain => self.switch_to(&mut state, id, &name),
            ProgressMode::Json => self.json(serde_json::json!({
                "event": "step_started", "id": id, "stage": step.stage,
                "number": step.number, "total": step.total, "line": step.line,
                "instruction": step.instruction,
            })),
            _ => {}
        }
        let vertex = Vertex {
            id,
            bar: self.running_bar(&name),
            name,
            started: Instant::now(),
            log_bars: Vec::new(),
            last_lines: Default::default(),
            warn_bars: Vec::new(),
        };
        state
            .vertices
            .insert((step.stage_index, step.number), vertex);
        self.update_header(&state);
    }

    fn step_output(&self, step: &StepEvent<'_>, line: &str) {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(_) => return,
        };
        let Some(vertex) = state.vertices.get_mut(&(step.stage_index, step.number)) else {
            return;
        };
        let (id, name, seconds) = (
            vertex.id,
            vertex.name.clone(),
            vertex.started.elapsed().as_secs_f64(),
        );
        match self.mode {
            ProgressMode::Plain => {
                self.switch_to(&mut state, id, &name);
                self.write_line(&format!("#{id} {seconds:.3} {line}"));
            }
            ProgressMode::Json => self.json(serde_json::json!({
                "event": "output", "id": id, "seconds": seconds, "line": line,
            })),
            ProgressMode::Tty => self.tty_output(vertex, line),
            ProgressMode::Quiet | ProgressMode::Auto => {}
        }
    }

    fn step_done(&self, step: &StepEvent<'_>, outcome: &StepOutcome) {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(_) => return,
        };
        state.finished += 1;
        let Some(vertex) = state.vertices.remove(&(step.stage_index, step.number)) else {
            return;
        };
        let seconds = vertex.started.elapsed().as_secs_f64();
        if let (StepOutcome::Failed(message), None) = (outcome, &state.failure) {
            state.failure = Some((vertex.name.clone(), message.clone()));
        }
        match self.mode {
            ProgressMode::Plain => self.plain_done(&mut state, &vertex, outcome),
            ProgressMode::Json => {
                let (status, message) = match outcome {
                    StepOutcome::Cached => ("cached", None),
                    StepOutcome::Done => ("done", None),
                    StepOutcome::Failed(m) => ("error", Some(m.clone())),
                    StepOutcome::Canceled => ("canceled", None),
                };
                self.json(serde_json::json!({
                    "event": "step_done", "id": vertex.id, "status": status,
                    "message": message, "seconds": seconds,
                }));
            }
            ProgressMode::Tty => Self::tty_done(&vertex, outcome, seconds),
            ProgressMode::Quiet | ProgressMode::Auto => {}
        }
        self.update_header(&state);
    }

    fn internal(&self, name: &str, lines: &[String], seconds: f64) {
        self.vertex(name, lines, seconds);
    }

    fn warning(&self, file: &str, warning: &kiln_builder::plan::PlanWarning) {
        if !self.show_warnings {
            return;
        }
        if self.mode == ProgressMode::Json {
            self.json(serde_json::json!({
                "event": "warning", "file": file, "line": warning.line,
                "message": warning.message,
            }));
            return;
        }
        let line = match warning.line {
            Some(l) => format!("WARNING: {file}:{l}: {}", warning.message),
            None => format!("WARNING: {}", warning.message),
        };
        match &self.multi {
            // Above the live view, not through it.
            Some(multi) => {
                let _ = multi.println(&line);
            }
            None => eprintln!("{line}"),
        }
    }

    /// BuildKit's warning on a vertex: `#N WARN: …` under the step
    /// (plain), a ` => WARN: …` line under it (tty).
    fn step_warning(&self, step: &StepEvent<'_>, message: &str) {
        if !self.show_warnings {
            return;
        }
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(_) => return,
        };
        let Some(vertex) = state.vertices.get_mut(&(step.stage_index, step.number)) else {
            return;
        };
        let (id, name) = (vertex.id, vertex.name.clone());
        match self.mode {
            ProgressMode::Plain => {
                self.switch_to(&mut state, id, &name);
                self.write_line(&format!("#{id} WARN: {message}"));
            }
            ProgressMode::Json => self.json(serde_json::json!({
                "event": "warning", "id": id, "line": step.line, "message": message,
            })),
            ProgressMode::Tty => {
                if let (Some(multi), Some(bar)) = (&self.multi, &vertex.bar) {
                    let after = vertex.warn_bars.last().unwrap_or(bar).clone();
                    let warn = multi.insert_after(&after, ProgressBar::new_spinner());
                    warn.set_style(detail_style(" => WARN: "));
                    warn.finish_with_message(message.to_string());
                    vertex.warn_bars.push(warn);
                }
            }
            ProgressMode::Quiet | ProgressMode::Auto => {}
        }
    }

    fn build_warning(&self, message: &str) {
        match self.mode {
            ProgressMode::Json => self.json(serde_json::json!({
                "event": "warning", "message": message,
            })),
            ProgressMode::Quiet => {}
            _ => eprintln!("WARNING: {message}"),
        }
    }
}

pub use kiln_builder::session::human_bytes;

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer tests can read back.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn step<'a>(
        stage_index: usize,
        stage: &'a str,
        number: usize,
        instruction: &'a str,
    ) -> StepEvent<'a> {
        StepEvent {
            stage_index,
            stage,
            number,
            total: 12,
            line: 1,
            instruction,
        }
    }

    #[test]
    fn plain_lines_repeat_the_header_when_parallel_steps_interleave() {
        let out = Shared::default();
        let progress = BuildProgress::with_writer(ProgressMode::Plain, Box::new(out.clone()));
        let a = step(0, "a", 2, "RUN one");
        let b = step(1, "b", 10, "RUN two");
        progress.step_started(&a);
        progress.step_started(&b);
        progress.step_output(&a, "from a");
        progress.step_done(&b, &StepOutcome::Cached);
        progress.step_done(&a, &StepOutcome::Failed("boom".into()));
        progress.vertex("exporting to image", &["writing image x done".into()], 0.0);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let text: String = text
            .lines()
            .map(|l| match l.strip_prefix("#1 0.") {
                Some(_) => "#1 T from a".to_string(),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            text,
            "#1 [a  2/12] RUN one\n\n#2 [b 10/12] RUN two\n\n#1 [a  2/12] RUN one\n#1 T from a\n\n\
             #2 [b 10/12] RUN two\n#2 CACHED\n\n#1 [a  2/12] RUN one\n#1 ERROR: boom\n\n\
             #3 exporting to image\n#3 writing image x done\n#3 DONE 0.0s"
        );
        assert_eq!(
            progress.failure(),
            Some(("[a  2/12] RUN one".to_string(), "boom".to_string()))
        );
    }

    #[test]
    fn single_unnamed_stage_has_no_stage_name() {
        assert_eq!(step(0, "", 3, "COPY . .").prefix(), "[ 3/12]");
    }

    #[test]
    fn ids_are_shortened() {
        assert_eq!(
            short_id("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
            "0123456789ab"
        );
        assert_eq!(short_id("rootfs.tar"), "rootfs.tar");
    }
}
