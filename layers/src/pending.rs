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
//!   miss, as after a crash (`Store::cache_get` checks).
//! - `index.json` is written only after [`settle`]: every blob renamed in
//!   the background is renamed before the fsync of `blobs/sha256/` that
//!   makes durable the names a new tag needs.
//! - A build settles before it returns, whether it failed or not; the
//!   first job that failed fails it (its error names the file).
//!
//! Jobs are settled by the directory their file goes under (a store's
//! root): a process with two stores, as a test binary, settles each
//! store's on its own.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::error::Result;

/// One write in flight: whether it is done, and its result until
/// [`settle`] takes it.
#[derive(Default)]
struct Job {
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Default)]
struct State {
    done: bool,
    result: Option<Result<()>>,
}

impl Job {
    fn finish(&self, result: Result<()>) {
        let mut state = lock(&self.state);
        state.done = true;
        state.result = Some(result);
        self.done.notify_all();
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
        jobs.push((target, Arc::clone(&job)));
        IN_FLIGHT.store(jobs.len(), Ordering::Release);
    }
    // Taken by whichever thread runs it.
    let work = Arc::new(Mutex::new(Some(work)));
    let run = {
        let (job, work) = (Arc::clone(&job), Arc::clone(&work));
        move || {
            if let Some(work) = lock(&work).take() {
                job.finish(work());
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("kiln-store-write".into())
        .spawn(run)
    {
        tracing::debug!("no thread for a store write ({e}); writing it here");
        if let Some(work) = lock(&work).take() {
            job.finish(work());
        }
    }
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
    for job in started {
        if let Some(Err(e)) = lock(&job.state).result.take() {
            match first {
                None => first = Some(e),
                Some(_) => tracing::warn!("{e}"),
            }
        }
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
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
}
