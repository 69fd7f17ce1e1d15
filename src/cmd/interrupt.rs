//! An interrupted `kiln build` (Ctrl-C, SIGTERM) ends as `docker buildx
//! build` does: the first signal cancels the build — running containers
//! are killed ([`kiln_runtime::interrupt::cancel_runs`]), running steps end
//! `CANCELED` in the progress, no further step starts, and the build's
//! scratch is removed as it unwinds — then kiln says the build was
//! canceled and exits 130, buildx's code for a canceled build (SIGINT and
//! SIGTERM alike: buildx cancels its context on either). A second signal
//! ends kiln at once, as buildx's does; what that leaves (scratch under
//! `builds/`, the runs' cgroups) the next build or `kiln prune` removes,
//! and the containers die with kiln (the runtime's parent-death signal).

use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

/// buildx's exit code for a canceled build (`codes.Canceled`, or an error
/// that is `context.Canceled`).
pub const EXIT_CANCELED: u8 = 130;

/// The signal that interrupted the build, once one did.
pub struct Interruption {
    signal: Arc<AtomicI32>,
}

impl Interruption {
    /// Catches SIGINT and SIGTERM for the rest of the process (a thread
    /// waits for them). When they cannot be caught, they end kiln as
    /// before.
    pub fn watch() -> Interruption {
        let signal = Arc::new(AtomicI32::new(0));
        match kiln_runtime::interrupt::Interrupts::install() {
            Ok(interrupts) => {
                let seen = signal.clone();
                std::thread::spawn(move || {
                    let Some(first) = interrupts.wait() else {
                        return;
                    };
                    seen.store(first, Ordering::SeqCst);
                    kiln_runtime::interrupt::cancel_runs();
                    if let Some(second) = interrupts.wait() {
                        eprintln!(
                            "error: build canceled: {} again, exiting without cleaning up",
                            signal_name(second)
                        );
                        std::process::exit(i32::from(EXIT_CANCELED));
                    }
                });
            }
            Err(e) => tracing::warn!("SIGINT and SIGTERM cannot be caught: {e}"),
        }
        Interruption { signal }
    }

    /// The signal received, if any.
    pub fn signal(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }

    /// When the build was interrupted: says so and gives the exit code.
    pub fn canceled(&self) -> Option<ExitCode> {
        let signal = self.signal()?;
        eprintln!("error: build canceled by {}", signal_name(signal));
        Some(ExitCode::from(EXIT_CANCELED))
    }
}

fn signal_name(signal: i32) -> String {
    use rustix::process::Signal;
    if signal == Signal::INT.as_raw() {
        "SIGINT".into()
    } else if signal == Signal::TERM.as_raw() {
        "SIGTERM".into()
    } else {
        format!("signal {signal}")
    }
}
