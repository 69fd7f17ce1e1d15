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
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
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
        let multi = (mode == ProgressMode::Tty)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        CliReporter {
            mode,
            multi,
            items: Mutex::new(HashMap::new()),
        }
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

    fn json(&self, value: &serde_json::Value) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{value}");
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
        if let Ok(mut items) = self.items.lock() {
            if let Some(item) = items.get_mut(id) {
                item.bytes = bytes;
                if let Some(bar) = &item.bar {
                    bar.set_position(bytes);
                }
            }
        }
        if self.mode == ProgressMode::Json {
            self.json(&serde_json::json!({"event": "progress", "id": id, "bytes": bytes}));
        }
    }

    fn done(&self, id: &str, outcome: Outcome) {
        let item = self
            .items
            .lock()
            .ok()
            .and_then(|mut items| items.remove(id));
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

/// Sizes as the docker CLI prints them (powers of 1000): `4.26MB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        // Three significant digits, like docker's units.HumanSize.
        let decimals = if value >= 100.0 {
            0
        } else if value >= 10.0 {
            1
        } else {
            2
        };
        format!("{value:.decimals$}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(999), "999B");
        assert_eq!(human_bytes(4_260_000), "4.26MB");
        assert_eq!(human_bytes(12_345_678), "12.3MB");
        assert_eq!(human_bytes(123_456_789_012), "123GB");
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
