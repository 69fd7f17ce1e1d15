//! Running helper programs and reporting their failures.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use crate::{Result, TestSupportError};

/// Runs `command`, returning stdout; an error carries stderr.
pub(crate) fn run(command: &mut Command) -> Result<Vec<u8>> {
    let program = command.get_program().to_string_lossy().into_owned();
    let described = format!("{command:?}");
    let output = command.output().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            TestSupportError::MissingProgram {
                program: program.clone(),
                source,
            }
        } else {
            TestSupportError::Io {
                what: format!("running {described}"),
                source,
            }
        }
    })?;
    if !output.status.success() {
        return Err(TestSupportError::Command {
            command: described,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(output.stdout)
}

/// A child process that is killed (SIGKILL) and reaped when the guard
/// drops, so a failing assertion cannot leave it running.
///
/// ```no_run
/// use kiln_testsupport::ChildGuard;
/// let mut child = ChildGuard::spawn(std::process::Command::new("sleep").arg("600")).unwrap();
/// assert!(child.try_wait().unwrap().is_none());
/// // killed and reaped here
/// ```
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    /// Guards an already started child.
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard { child: Some(child) }
    }

    /// Starts `command` and guards the child.
    pub fn spawn(command: &mut Command) -> Result<ChildGuard> {
        let child = command.spawn().map_err(|source| TestSupportError::Io {
            what: format!("starting {command:?}"),
            source,
        })?;
        Ok(ChildGuard::new(child))
    }

    /// Waits up to `limit` for the child to exit. On timeout the child is
    /// killed and reaped and the error says so: a hang guard, so a test
    /// fails instead of blocking CI.
    pub fn wait_timeout(&mut self, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            let exited = self
                .try_wait()
                .map_err(TestSupportError::io("waiting for a child process"))?;
            if let Some(status) = exited {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill_and_reap();
                return Err(TestSupportError::Timeout {
                    what: format!("process {}", self.id()),
                    after: limit,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Like [`ChildGuard::wait_timeout`], collecting stdout and stderr
    /// (those that were piped) on threads so a full pipe cannot block it.
    pub fn wait_with_output_timeout(mut self, limit: Duration) -> Result<Output> {
        let stdout = self.stdout.take().map(drain);
        let stderr = self.stderr.take().map(drain);
        let status = self.wait_timeout(limit)?;
        let join = |handle: Option<std::thread::JoinHandle<Vec<u8>>>| {
            handle
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default()
        };
        Ok(Output {
            status,
            stdout: join(stdout),
            stderr: join(stderr),
        })
    }

    /// SIGKILL (if still running) and wait.
    pub fn kill_and_reap(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

impl std::ops::Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.child
            .as_ref()
            .expect("the child is present until drop")
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("the child is present until drop")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_the_guard_kills_and_reaps_the_child() {
        let guard = ChildGuard::spawn(Command::new("sleep").arg("600")).unwrap();
        let pid = guard.id();
        drop(guard);
        // Killed and reaped: not even a zombie is left in /proc.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(stat.is_empty(), "pid {pid} still exists: {stat}");
    }

    #[test]
    fn wait_timeout_kills_a_hanging_child_and_says_so() {
        let mut guard = ChildGuard::spawn(Command::new("sleep").arg("600")).unwrap();
        let err = guard.wait_timeout(Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, TestSupportError::Timeout { .. }), "{err}");
        assert!(guard.try_wait().unwrap().is_some(), "killed and reaped");
    }

    #[test]
    fn wait_with_output_timeout_returns_status_and_output() {
        let guard = ChildGuard::spawn(
            Command::new("sh")
                .args(["-c", "echo out; echo err >&2; exit 3"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped()),
        )
        .unwrap();
        let out = guard
            .wait_with_output_timeout(Duration::from_secs(60))
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }
}
