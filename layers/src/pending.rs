//! Store writes that finish on a thread of their own: a layer blob's fsync
//! and rename into `blobs/sha256/`, a build cache record's, a copy
//! shape's ([`crate::store::IngestWriter::commit_in_background`],
//! [`crate::store::Store::cache_put_in_background`],
//! [`crate::store::Store::copy_shape_put_in_background`]).
//!
//! An fsync waits for the disk to flush its cache: about 0.3 ms on a quiet
//! disk, 1-2 ms when it is busy or has been idle. A build that makes a
//! layer used to wait for its blob's fsync, then its cache record's, then
//! its config's and manifest's, one after another; started as soon as the
//! bytes are written and waited for together (by [`settle`], before the
//! index is written), those flushes overlap.
//!
//! What keeps the store's invariants as they were:
//!
//! - A job's file appears under its name only when the job renames it
//!   there, after its fsync: a blob's name still always means its bytes
//!   are on disk. Until then, a reader in this process waits for the job
//!   of the path it reads ([`wait_for`]: `Store::blob_path`,
//!   `Store::cache_get`, `Store::copy_shape_get`); another process sees
//!   no file yet, and a record whose blob is not there yet is a cache
//!   miss, as after a crash (`Store::cache_get` checks). What lists
//!   directories instead (the collection's inventory, `Store::content_stamp`,
//!   the cache records `rmi` reads) runs after a build has settled.
//! - `index.json` is written only after [`settle`]: every blob renamed in
//!   the background is renamed before the fsync of `blobs/sha256/` that
//!   makes durable the names a new tag needs.
//! - A build settles before it returns, whether it failed or not; a job
//!   that failed fails it (its error names the file; of several, the one
//!   started first). A job that panicked counts as failed. Every settle
//!   that waited for a failed job reports it, so that of two builds in
//!   one process (the platforms of one build) the one whose write failed
//!   fails whichever settles first.
//!
//! Jobs are found by their file's path as the store spells it, and settled
//! by the directory their file goes under (a store's root): a process with
//! two stores, as a test binary, settles each store's on its own, and one
//! store must be reached through one spelling of its root (the CLI opens
//! it once).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::error::{Error, Result};

/// One write in flight: whether it is done, and why it failed, if it did
/// (kept for every [`settle`] that waited for it).
#[derive(Default)]
struct Job {
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Default)]
struct State {
    done: bool,
    /// Why it failed, when it did: the operation, the file and the error,
    /// kept for every settle that waited for it.
    failed: Option<(&'static str, PathBuf, String)>,
}

impl Job {
    fn finish(&self, result: Result<()>) {
        let mut state = lock(&self.state);
        state.done = true;
        state.failed = result.err().map(|e| match e {
            Error::Io { op, path, source } => (op, path, source.to_string()),
            other => ("write", PathBuf::new(), other.to_string()),
        });
        self.done.notify_all();
    }

    /// Its error, when it failed (one more copy of it).
    fn error(&self) -> Option<Error> {
        let state = lock(&self.state);
        let (op, path, message) = state.failed.as_ref()?;
        Some(Error::io(op, path, std::io::Error::other(message.clone())))
    }

    fn wait(&self) {
        let mut state = lock(&self.state);
        while !state.done {
            state = self
                .done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The writes this process started and has not settled, each with the
/// path it renames its file to.
static JOBS: Mutex<Vec<(PathBuf, Arc<Job>)>> = Mutex::new(Vec::new());

/// How many entries [`JOBS`] has (kept under its lock): a reader with
/// nothing in flight does not take the lock.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `work`, which puts a file at `target`, on a thread of its own (on
/// this one, before returning, when no thread can be had).
pub(crate) fn spawn(target: PathBuf, work: impl FnOnce() -> Result<()> + Send + 'static) {
    let job = Arc::new(Job::default());
    {
        let mut jobs = lock(&JOBS);
        jobs.push((target.clone(), Arc::clone(&job)));
        IN_FLIGHT.store(jobs.len(), Ordering::Release);
    }
    // Taken by whichever thread runs it.
    let work = Arc::new(Mutex::new(Some(work)));
    let run = {
        let (job, work, target) = (Arc::clone(&job), Arc::clone(&work), target.clone());
        move || run_job(&job, &work, &target)
    };
    if let Err(e) = std::thread::Builder::new()
        .name("kiln-store-write".into())
        .spawn(run)
    {
        tracing::debug!("no thread for a store write ({e}); writing it here");
        run_job(&job, &work, &target);
    }
}

/// Runs the job's work, if no other thread has, and marks it done; a
/// panic in it is the job's error (its waiters would otherwise wait
/// forever).
fn run_job<F: FnOnce() -> Result<()>>(job: &Job, work: &Mutex<Option<F>>, target: &Path) {
    let Some(work) = lock(work).take() else {
        return;
    };
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|_| {
            Err(Error::io(
                "write",
                target,
                std::io::Error::other("the thread writing it panicked"),
            ))
        });
    job.finish(result);
}

/// Waits for the writes in flight that put a file at `target`, if any.
pub(crate) fn wait_for(target: &Path) {
    if IN_FLIGHT.load(Ordering::Acquire) == 0 {
        return;
    }
    let mine: Vec<Arc<Job>> = lock(&JOBS)
        .iter()
        .filter(|(t, _)| t == target)
        .map(|(_, job)| Arc::clone(job))
        .collect();
    for job in mine {
        job.wait();
    }
}

/// Waits for every write this process has in flight whose file goes
/// under `root`; returns the first error among them (the others are
/// logged).
pub(crate) fn settle(root: &Path) -> Result<()> {
    if IN_FLIGHT.load(Ordering::Acquire) == 0 {
        return Ok(());
    }
    // Waited for while still listed, so that a reader of one of their
    // paths meanwhile waits too; then taken off the list.
    let started: Vec<Arc<Job>> = lock(&JOBS)
        .iter()
        .filter(|(target, _)| target.starts_with(root))
        .map(|(_, job)| Arc::clone(job))
        .collect();
    for job in &started {
        job.wait();
    }
    {
        let mut jobs = lock(&JOBS);
        jobs.retain(|(_, job)| !started.iter().any(|s| Arc::ptr_eq(s, job)));
        IN_FLIGHT.store(jobs.len(), Ordering::Release);
    }
    let mut first = None;
    for e in started.iter().filter_map(|job| job.error()) {
        match first {
            None => first = Some(e),
            Some(_) => tracing::warn!("{e}"),
        }
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_reader_of_a_path_waits_for_its_write_and_settle_reports_the_first_error() {
        let dir = tempfile::tempdir().unwrap();
        let (target, other) = (dir.path().join("a"), dir.path().join("b"));
        let (go, wait) = mpsc::channel::<()>();
        let written = target.clone();
        spawn(target.clone(), move || {
            wait.recv().unwrap();
            std::fs::write(&written, b"x").map_err(|e| Error::io("write", &written, e))
        });
        spawn(other.clone(), move || {
            Err(Error::io(
                "write",
                &other,
                std::io::Error::other("disk full"),
            ))
        });
        assert!(!target.exists(), "the write is held back");
        go.send(()).unwrap();
        wait_for(&target);
        assert_eq!(std::fs::read(&target).unwrap(), b"x");
        let err = settle(dir.path()).unwrap_err().to_string();
        assert!(err.contains("disk full"), "{err}");
        settle(dir.path()).unwrap();
    }

    #[test]
    fn a_write_that_panics_is_done_and_failed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("p");
        spawn(target.clone(), || panic!("boom"));
        wait_for(&target);
        let err = settle(dir.path()).unwrap_err().to_string();
        assert!(err.contains("the thread writing it panicked"), "{err}");
    }
}
