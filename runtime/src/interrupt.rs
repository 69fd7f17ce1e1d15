//! Interrupting kiln (Ctrl-C, `kill`): SIGINT and SIGTERM, or the signals
//! `kiln run` hands on to its container ([`forwarded_signals`]), handed to
//! the caller through a pipe ([`Interrupts`]), and every run of the process
//! canceled at once ([`cancel_runs`]): each running container is killed,
//! its [`crate::run`] ends with [`RuntimeError::Canceled`] once the
//! container is gone (its cgroups and scratch removed as on any end), and
//! no new run starts.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! let interrupts = kiln_runtime::interrupt::Interrupts::install()?;
//! std::thread::spawn(move || {
//!     if let Some(signal) = interrupts.wait() {
//!         eprintln!("signal {signal}: canceling");
//!         kiln_runtime::interrupt::cancel_runs();
//!     }
//! });
//! # Ok(()) }
//! ```
//!
//! [`RuntimeError::Canceled`]: crate::RuntimeError::Canceled

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use rustix::event::{PollFd, PollFlags};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::OnceLock;

static CANCELED: AtomicBool = AtomicBool::new(false);

/// Readable once runs are canceled: every run's wait loop polls its read
/// end. Nothing reads from it, so it stays readable for every later poll.
static CANCEL_PIPE: OnceLock<Option<(OwnedFd, OwnedFd)>> = OnceLock::new();

fn cancel_pipe() -> Option<&'static (OwnedFd, OwnedFd)> {
    CANCEL_PIPE.get_or_init(|| crate::sys::pipe().ok()).as_ref()
}

/// Cancels every run of this process, running or to come: their containers
/// are killed and [`crate::run`] returns [`crate::RuntimeError::Canceled`].
/// There is no undoing it: it is how a process that was told to stop
/// winds down.
pub fn cancel_runs() {
    if CANCELED.swap(true, Ordering::SeqCst) {
        return;
    }
    if let Some((_, write)) = cancel_pipe() {
        let _ = rustix::io::write(write, &[1]);
    }
}

/// Whether [`cancel_runs`] was called.
pub fn runs_canceled() -> bool {
    CANCELED.load(Ordering::SeqCst)
}

/// What a run's wait loop polls: readable once runs are canceled (None
/// when the pipe could not be made; [`runs_canceled`] still tells).
pub(crate) fn cancel_fd() -> Option<BorrowedFd<'static>> {
    cancel_pipe().map(|(read, _)| read.as_fd())
}

/// The write end [`on_interrupt`] writes to, -1 when none is installed.
static INTERRUPT_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_interrupt(signal: libc::c_int) {
    let fd = INTERRUPT_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = signal as u8;
        // SAFETY: write(2) of one byte we own, on the pipe's write end,
        // which stays open while the handler is installed; write is
        // async-signal-safe and the end is non-blocking.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
}

/// The signals [`Interrupts::install`] catches.
const INTERRUPT_SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

/// The signals `kiln run` hands on to the container, as docker run's
/// signal proxy does: every one a process can catch but SIGCHLD and
/// SIGPIPE (docker's exceptions; its Go runtime's SIGURG too), the faults
/// a crash of kiln itself raises (SIGSEGV, SIGBUS, SIGFPE, SIGILL,
/// SIGTRAP, SIGABRT, SIGSYS), and SIGTTIN and SIGTTOU (kiln's own terminal
/// I/O in the background would loop on them); the real-time ones glibc
/// leaves free too. SIGWINCH resizes the container's terminal instead.
/// The rootless outer kiln hands the same ones to the inner one, and the
/// runtime helper ignores them.
pub fn forwarded_signals() -> Vec<libc::c_int> {
    let standard = [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGTERM,
        libc::SIGSTKFLT,
        libc::SIGCONT,
        libc::SIGTSTP,
        libc::SIGXCPU,
        libc::SIGXFSZ,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGWINCH,
        libc::SIGIO,
        libc::SIGPWR,
    ];
    standard
        .into_iter()
        .chain(libc::SIGRTMIN()..=libc::SIGRTMAX())
        .collect()
}

/// Signals caught for as long as this lives (the dispositions before come
/// back when it is dropped): each one received is read by
/// [`Interrupts::wait`] or [`Interrupts::take`] instead of ending the
/// process. A build catches SIGINT and SIGTERM ([`Interrupts::install`]);
/// `kiln run` and the rootless outer kiln catch the signals they hand on
/// ([`forwarded_signals`]). One is read at a time per process: one
/// installed while another lives receives the signals of both until it is
/// dropped, then the other has its own back. Processes kiln starts get the default
/// dispositions back at exec.
pub struct Interrupts {
    read: OwnedFd,
    _write: OwnedFd,
    previous: Vec<(libc::c_int, libc::sigaction)>,
    /// The write end [`on_interrupt`] wrote to before this was installed.
    previous_pipe: RawFd,
}

impl Interrupts {
    /// Installs the handlers of SIGINT and SIGTERM.
    pub fn install() -> io::Result<Interrupts> {
        Interrupts::install_for(&INTERRUPT_SIGNALS)
    }

    /// Installs the handlers of `signals`. When one cannot be caught
    /// (SIGKILL, SIGSTOP), none stays installed.
    pub fn install_for(signals: &[libc::c_int]) -> io::Result<Interrupts> {
        let (read, write) = crate::sys::pipe()?;
        // A handler must never block: a full pipe drops the signal.
        rustix::fs::fcntl_setfl(&write, rustix::fs::OFlags::NONBLOCK)?;
        let previous_pipe = INTERRUPT_PIPE.swap(write.as_raw_fd(), Ordering::SeqCst);
        // Dropped on an error below: what was installed so far is undone,
        // so that no handler writes to the closed (and perhaps reused)
        // number of this pipe.
        let mut interrupts = Interrupts {
            read,
            _write: write,
            previous: Vec::with_capacity(signals.len()),
            previous_pipe,
        };
        for &signal in signals {
            // SAFETY: installs a handler that only calls write(2) (see
            // on_interrupt), with structs we own; rustix has no safe
            // sigaction.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_interrupt as *const () as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, &action, &mut old) != 0 {
                    return Err(io::Error::last_os_error());
                }
                interrupts.previous.push((signal, old));
            }
        }
        Ok(interrupts)
    }

    /// Waits for the next signal caught; returns its number (None if the
    /// pipe failed).
    pub fn wait(&self) -> Option<libc::c_int> {
        let mut byte = [0u8; 1];
        loop {
            match rustix::io::read(&self.read, &mut byte) {
                Ok(1) => return Some(libc::c_int::from(byte[0])),
                Err(rustix::io::Errno::INTR) => continue,
                _ => return None,
            }
        }
    }

    /// The signals caught and not read yet, in the order they came, without
    /// waiting: for a loop that polls [`Interrupts::as_fd`] with other
    /// descriptors.
    pub fn take(&self) -> Vec<libc::c_int> {
        let mut fds = [PollFd::new(&self.read, PollFlags::IN)];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if !matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0) {
            return Vec::new();
        }
        // Readable and read by no one else: this returns what is there.
        let mut buf = [0u8; 64];
        let n = rustix::io::read(&self.read, &mut buf).unwrap_or(0);
        buf[..n].iter().map(|b| libc::c_int::from(*b)).collect()
    }
}

/// The pipe's read end: readable when a signal was caught.
impl AsFd for Interrupts {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        // In the reverse order of install: a signal listed twice gets its
        // first disposition back.
        for (signal, old) in self.previous.iter().rev() {
            // SAFETY: restores the disposition saved at install, a struct
            // the kernel filled.
            unsafe { libc::sigaction(*signal, old, std::ptr::null_mut()) };
        }
        INTERRUPT_PIPE.store(self.previous_pipe, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Dispositions and the pipe are the process's: one test at a time.
    static SIGNALS: Mutex<()> = Mutex::new(());

    fn disposition(signal: libc::c_int) -> usize {
        // SAFETY: reads a disposition into a struct we own.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            assert_eq!(libc::sigaction(signal, std::ptr::null(), &mut old), 0);
            old.sa_sigaction
        }
    }

    #[test]
    fn a_signal_is_read_not_fatal() {
        let _one = SIGNALS.lock().unwrap_or_else(|e| e.into_inner());
        let interrupts = Interrupts::install().unwrap();
        // SAFETY: raising a signal whose handler was just installed.
        unsafe { libc::raise(libc::SIGTERM) };
        assert_eq!(interrupts.wait(), Some(libc::SIGTERM));
    }

    #[test]
    fn one_installed_over_another_gives_the_signals_back() {
        let _one = SIGNALS.lock().unwrap_or_else(|e| e.into_inner());
        let before = disposition(libc::SIGUSR1);
        let outer = Interrupts::install().unwrap();
        let inner = Interrupts::install_for(&[libc::SIGUSR1, libc::SIGTERM]).unwrap();
        // SAFETY: raising signals whose handlers were just installed.
        unsafe { libc::raise(libc::SIGUSR1) };
        // SAFETY: as above.
        unsafe { libc::raise(libc::SIGTERM) };
        assert_eq!(inner.take(), [libc::SIGUSR1, libc::SIGTERM]);
        assert!(inner.take().is_empty());
        drop(inner);
        assert_eq!(disposition(libc::SIGUSR1), before);
        // SAFETY: SIGTERM's handler is the outer one again.
        unsafe { libc::raise(libc::SIGTERM) };
        assert_eq!(outer.take(), [libc::SIGTERM]);
    }

    #[test]
    fn a_signal_that_cannot_be_caught_installs_none() {
        let _one = SIGNALS.lock().unwrap_or_else(|e| e.into_inner());
        let before = disposition(libc::SIGUSR2);
        let pipe = INTERRUPT_PIPE.load(Ordering::SeqCst);
        assert!(Interrupts::install_for(&[libc::SIGUSR2, libc::SIGKILL]).is_err());
        assert_eq!(disposition(libc::SIGUSR2), before);
        assert_eq!(INTERRUPT_PIPE.load(Ordering::SeqCst), pipe);
    }
}
