//! Progress reporting for long operations (blob transfers, unpacking,
//! compression). Library code calls a [`Reporter`]; only the CLI draws.

/// How an item ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Finished normally.
    Done,
    /// Nothing to do, e.g. the blob was already in the store.
    Skipped(String),
    /// Failed with this message.
    Failed(String),
}

/// Receives progress events: `start(id, …)`, any number of
/// `progress(id, bytes)`, then `done(id, …)`. `id` is unique among the items
/// in flight (a digest, usually). Implementations must be cheap: `progress`
/// may be called for every buffer.
pub trait Reporter: Send + Sync {
    /// An item begins; `total` bytes when known.
    fn start(&self, id: &str, label: &str, total: Option<u64>);
    /// `bytes` is the running total handled so far (not a delta), so that a
    /// resumed transfer can report where it restarted.
    fn progress(&self, id: &str, bytes: u64);
    /// The item ended.
    fn done(&self, id: &str, outcome: Outcome);
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Reporter for NoProgress {
    fn start(&self, _: &str, _: &str, _: Option<u64>) {}
    fn progress(&self, _: &str, _: u64) {}
    fn done(&self, _: &str, _: Outcome) {}
}

/// A reader that reports the bytes read through it.
pub struct ProgressReader<'r, R> {
    inner: R,
    reporter: &'r dyn Reporter,
    id: String,
    count: u64,
    last_reported: u64,
}

impl<'r, R> ProgressReader<'r, R> {
    pub fn new(inner: R, reporter: &'r dyn Reporter, id: impl Into<String>) -> Self {
        ProgressReader {
            inner,
            reporter,
            id: id.into(),
            count: 0,
            last_reported: 0,
        }
    }
}

impl<R: std::io::Read> std::io::Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        // Every 256 KiB, and at the end, is plenty for a bar.
        if self.count - self.last_reported >= 256 * 1024 || n == 0 {
            self.last_reported = self.count;
            self.reporter.progress(&self.id, self.count);
        }
        Ok(n)
    }
}
