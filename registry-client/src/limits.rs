//! Deadlines and the low-speed cutoff of registry traffic and `ADD <url>`
//! downloads: the settings ([`Timeouts`]), how a stall is reported
//! ([`Stall`]), and the pieces the client enforces them with (a time budget
//! per operation, a sliding-window speed check, a guarded body reader and an
//! upload meter).
//!
//! The model, in curl's terms: `connect` is `--connect-timeout`; `total`
//! is `--max-time` for small documents (manifests, tokens, error bodies,
//! configs) and the budget of everything but body streaming for blobs;
//! `speed_limit`/`speed_time` are `--speed-limit`/`--speed-time`, applied
//! to every body, in either direction.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use tokio::time::Instant;

/// How long registry requests may take, and how slow a transfer may get.
///
/// The defaults ([`Timeouts::with_total`] of 60 s): 15 s to connect, 30 s
/// for response headers, 60 s for a small document or for all the waiting
/// of one blob transfer, and a floor of 1 KiB/s over 30 s for bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing a connection, TLS handshake included.
    pub connect: Duration,
    /// Waiting for the response headers once the request (its body
    /// included) has been sent.
    pub response: Duration,
    /// The overall deadline of one operation. A manifest, a token, a
    /// `/v2/` probe, a HEAD or POST, and a blob of at most
    /// [`small_document_bytes`](Timeouts::small_document_bytes) must be
    /// done within it, retries and `Retry-After` waits included. A larger
    /// blob (down or up) may take as long as its body keeps above the speed
    /// floor; everything else it waits for (connecting, headers, retries)
    /// shares this budget. Waits for `connect` and `response` are cut to
    /// what is left of it.
    pub total: Duration,
    /// Low-speed cutoff: a body (a response, or an upload) that averages
    /// fewer than this many bytes per second over `speed_time` fails.
    /// 0 turns the cutoff off.
    pub speed_limit: u64,
    /// The window the speed is averaged over; also how long a body may
    /// send nothing at all.
    pub speed_time: Duration,
}

impl Timeouts {
    /// The default overall deadline.
    pub const DEFAULT_TOTAL: Duration = Duration::from_secs(60);
    /// The default speed floor, bytes per second.
    pub const DEFAULT_SPEED_LIMIT: u64 = 1024;
    /// The default speed window.
    pub const DEFAULT_SPEED_TIME: Duration = Duration::from_secs(30);

    /// Limits scaled from one overall deadline: a quarter of it to
    /// connect, half of it for response headers; the default speed floor.
    pub fn with_total(total: Duration) -> Timeouts {
        Timeouts {
            connect: total / 4,
            response: total / 2,
            total,
            speed_limit: Self::DEFAULT_SPEED_LIMIT,
            speed_time: Self::DEFAULT_SPEED_TIME,
        }
    }

    /// Blobs expected to be no larger than this are held to `total` like
    /// manifests: `speed_limit × total` bytes (60 KiB by default), what
    /// arrives within the deadline even at the speed floor. Image configs
    /// are smaller than that.
    pub fn small_document_bytes(&self) -> u64 {
        let bytes = self.speed_limit as f64 * self.total.as_secs_f64();
        if bytes >= u64::MAX as f64 {
            u64::MAX
        } else {
            bytes as u64
        }
    }

    /// How much longer than [`Timeouts::response`] to wait for the answer
    /// to an upload whose last byte was just handed to the connection:
    /// that byte is not yet at the registry. Up to [`DRAIN_BOUND`] bytes of
    /// the body (no more than were `sent`) may still sit in the HTTP and
    /// socket buffers between the two; this is the time they take at the
    /// `rate` the upload was measured at (over its last speed window), or
    /// at the speed floor when there is no such measure (the body went out
    /// within two windows, buffers taking most of it at once). With the
    /// floor off and no measure, the overall deadline.
    pub(crate) fn drain_allowance(&self, rate: Option<f64>, sent: u64) -> Duration {
        let buffered = sent.min(DRAIN_BOUND) as f64;
        let floor = self.speed_limit as f64;
        let rate = match rate {
            Some(rate) if rate > 0.0 => rate.max(floor),
            _ if floor > 0.0 => floor,
            _ => return self.total,
        };
        // Bounded: 16 MiB at 1 B/s is under 200 days.
        Duration::from_secs_f64(buffered / rate)
    }

    /// How often a quiet body or upload is looked at.
    pub(crate) fn tick(&self) -> Duration {
        (self.speed_time / 8).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts::with_total(Self::DEFAULT_TOTAL)
    }
}

/// The most of an upload the buffers between kiln and the registry are
/// assumed to hold once kiln has handed it over: hyper's write buffer
/// (about 400 KiB), the sender's socket buffer (Linux grows it to 4 MiB)
/// and the receiver's.
pub(crate) const DRAIN_BOUND: u64 = 16 * 1024 * 1024;

/// Upload bodies are handed to the connection in pieces of at most this
/// size, so that the upload meter moves in steps well below what the speed
/// floor asks for in a window.
pub(crate) const UPLOAD_PIECE: usize = 16 * 1024;

/// What stalled, with the figures: the reason in an
/// [`Error::Stalled`](crate::Error::Stalled) or
/// [`Error::DownloadStalled`](crate::Error::DownloadStalled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stall {
    /// No connection (TCP and TLS) within `limit`.
    Connect { limit: Duration },
    /// No response headers within `limit` of the request being sent.
    Headers { limit: Duration },
    /// No response headers before the operation's `deadline` passed.
    HeadersDeadline { deadline: Duration },
    /// A body averaged below `limit` bytes/s over `time`: `bytes` of
    /// `total` had moved.
    Slow {
        upload: bool,
        limit: u64,
        time: Duration,
        bytes: u64,
        total: Option<u64>,
    },
    /// A small document was not whole when the operation's `deadline`
    /// passed.
    BodyDeadline {
        deadline: Duration,
        bytes: u64,
        total: Option<u64>,
    },
    /// The registry answered `status` with a `Retry-After` of `asked`,
    /// more than the `cap` kiln waits.
    RetryAfter {
        status: u16,
        asked: Duration,
        cap: Duration,
    },
    /// The registry answered `status` with a `Retry-After` of `asked`, but
    /// only `left` of the operation's `deadline` remained.
    RetryAfterDeadline {
        status: u16,
        asked: Duration,
        left: Duration,
        deadline: Duration,
    },
}

/// `30 s`, `2.5 s`, `0.2 s`.
pub(crate) fn seconds(duration: Duration) -> String {
    let tenths = (duration.as_millis() + 50) / 100;
    if tenths % 10 == 0 {
        format!("{} s", tenths / 10)
    } else {
        format!("{}.{} s", tenths / 10, tenths % 10)
    }
}

fn of(bytes: u64, total: Option<u64>) -> String {
    match total {
        Some(total) => format!("{bytes} of {total} bytes"),
        None => format!("{bytes} bytes"),
    }
}

impl fmt::Display for Stall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stall::Connect { limit } => write!(f, "could not connect within {}", seconds(*limit)),
            Stall::Headers { limit } => {
                write!(f, "no response headers within {}", seconds(*limit))
            }
            Stall::HeadersDeadline { deadline } => write!(
                f,
                "no response headers before the {} deadline",
                seconds(*deadline)
            ),
            Stall::Slow {
                upload,
                limit,
                time,
                bytes,
                total,
            } => write!(
                f,
                "{} below {limit} B/s for {} ({} {})",
                if *upload { "upload" } else { "transfer" },
                seconds(*time),
                of(*bytes, *total),
                if *upload { "sent" } else { "received" },
            ),
            Stall::BodyDeadline {
                deadline,
                bytes,
                total,
            } => write!(
                f,
                "not received within the {} deadline ({} received)",
                seconds(*deadline),
                of(*bytes, *total)
            ),
            Stall::RetryAfter { status, asked, cap } => write!(
                f,
                "the registry answered {status} and asked to wait {} (Retry-After), \
                 longer than the {} kiln waits",
                seconds(*asked),
                seconds(*cap)
            ),
            Stall::RetryAfterDeadline {
                status,
                asked,
                left,
                deadline,
            } => write!(
                f,
                "the registry answered {status} and asked to wait {} (Retry-After), \
                 but only {} of the {} deadline is left",
                seconds(*asked),
                seconds(*left),
                seconds(*deadline)
            ),
        }
    }
}

/// The time one operation may spend waiting: connecting, for headers, in
/// backoff and `Retry-After`, and reading small documents. Time spent
/// streaming a large body is given back with [`Budget::exclude`].
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    limit: Duration,
    deadline: Instant,
}

impl Budget {
    pub(crate) fn new(limit: Duration) -> Budget {
        Budget {
            limit,
            deadline: Instant::now() + limit,
        }
    }

    /// The configured length of the budget (for messages).
    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    pub(crate) fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Does not count `streamed` (time a body was moving) against the budget.
    pub(crate) fn exclude(&mut self, streamed: Duration) {
        self.deadline += streamed;
    }
}

/// The low-speed cutoff: fewer than `limit × window` bytes in the last
/// `window` (once a whole window has passed) is a stall.
#[derive(Debug)]
pub(crate) struct SpeedCheck {
    limit: u64,
    window: Duration,
    start: Instant,
    /// (when, bytes moved by then), oldest first; one at or before the
    /// window's start is kept.
    samples: VecDeque<(Instant, u64)>,
}

impl SpeedCheck {
    pub(crate) fn new(limit: u64, window: Duration, start: Instant) -> SpeedCheck {
        let mut samples = VecDeque::new();
        samples.push_back((start, 0));
        SpeedCheck {
            limit,
            window,
            start,
            samples,
        }
    }

    /// Notes that `moved` bytes in all had moved by `now`.
    pub(crate) fn record(&mut self, now: Instant, moved: u64) {
        // One sample per 1/32 of the window is precise enough; skipping
        // samples only makes the check more lenient (an older count at the
        // window's start).
        let step = self.window / 32;
        if let Some(&(last, _)) = self.samples.back() {
            if now.saturating_duration_since(last) < step {
                return;
            }
        }
        self.samples.push_back((now, moved));
        let window_start = now.checked_sub(self.window).unwrap_or(self.start);
        while self.samples.len() > 1 && self.samples[1].0 <= window_start {
            self.samples.pop_front();
        }
    }

    /// Bytes moved in the window ending `now`, `moved` being the count at `now`.
    fn in_window(&self, now: Instant, moved: u64) -> u64 {
        let window_start = now.checked_sub(self.window).unwrap_or(self.start);
        let at_start = self
            .samples
            .iter()
            .take_while(|(when, _)| *when <= window_start)
            .last()
            .map_or(0, |(_, bytes)| *bytes);
        moved.saturating_sub(at_start)
    }

    /// True when fewer than `limit × window` bytes moved in the window
    /// ending `now`, `moved` being the count at `now`.
    pub(crate) fn stalled(&self, now: Instant, moved: u64) -> bool {
        if self.limit == 0 || now.saturating_duration_since(self.start) < self.window {
            return false;
        }
        let needed = self.limit as f64 * self.window.as_secs_f64();
        (self.in_window(now, moved) as f64) < needed
    }

    /// Bytes per second over the window ending `now`, once two windows have
    /// passed (the first holds the burst that fills the buffers).
    pub(crate) fn rate(&self, now: Instant, moved: u64) -> Option<f64> {
        if now.saturating_duration_since(self.start) < self.window * 2 || self.window.is_zero() {
            return None;
        }
        Some(self.in_window(now, moved) as f64 / self.window.as_secs_f64())
    }
}

/// Why a guarded body read failed.
#[derive(Debug)]
pub(crate) enum BodyError {
    Stalled(Stall),
    Failed(reqwest::Error),
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A response body read under the speed cutoff and, for small documents, a
/// deadline.
pub(crate) struct BodyReader {
    stream: ByteStream,
    speed: SpeedCheck,
    /// (when, the deadline's length for messages).
    deadline: Option<(Instant, Duration)>,
    tick: Duration,
    started: Instant,
    received: u64,
    /// Bytes of the document before this body (a resumed blob), for messages.
    offset: u64,
    total: Option<u64>,
}

impl BodyReader {
    pub(crate) fn new(
        response: reqwest::Response,
        timeouts: &Timeouts,
        deadline: Option<&Budget>,
        offset: u64,
        total: Option<u64>,
    ) -> BodyReader {
        let now = Instant::now();
        BodyReader {
            stream: Box::pin(response.bytes_stream()),
            speed: SpeedCheck::new(timeouts.speed_limit, timeouts.speed_time, now),
            deadline: deadline.map(|b| (b.deadline(), b.limit())),
            tick: timeouts.tick(),
            started: now,
            received: 0,
            offset,
            total,
        }
    }

    /// How long the body has been read.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn slow(&self) -> Stall {
        Stall::Slow {
            upload: false,
            limit: self.speed.limit,
            time: self.speed.window,
            bytes: self.offset + self.received,
            total: self.total,
        }
    }

    fn check(&self, now: Instant) -> Result<(), Stall> {
        if let Some((deadline, limit)) = self.deadline {
            if now >= deadline {
                return Err(Stall::BodyDeadline {
                    deadline: limit,
                    bytes: self.offset + self.received,
                    total: self.total,
                });
            }
        }
        if self.speed.stalled(now, self.received) {
            return Err(self.slow());
        }
        Ok(())
    }

    /// The next chunk, `None` at the end of the body.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, BodyError> {
        loop {
            let now = Instant::now();
            self.check(now).map_err(BodyError::Stalled)?;
            let mut wake = now + self.tick;
            if let Some((deadline, _)) = self.deadline {
                wake = wake.min(deadline);
            }
            match tokio::time::timeout_at(wake, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    self.received += chunk.len() as u64;
                    let now = Instant::now();
                    self.speed.record(now, self.received);
                    // A trickle of tiny chunks never lets the timer fire.
                    self.check(now).map_err(BodyError::Stalled)?;
                    return Ok(Some(chunk));
                }
                Ok(Some(Err(err))) => return Err(BodyError::Failed(err)),
                Ok(None) => return Ok(None),
                // Nothing arrived for a tick: check again.
                Err(_) => {}
            }
        }
    }
}

/// How far an upload body has got, for the watchdog of the request carrying
/// it. Reset when the body is made afresh for an attempt.
#[derive(Debug, Default)]
pub(crate) struct UploadMeter {
    state: Mutex<MeterState>,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MeterState {
    pub(crate) sent: u64,
    pub(crate) len: u64,
    /// When the first bytes were handed to the connection.
    pub(crate) started: Option<Instant>,
    /// When the last were.
    pub(crate) finished: Option<Instant>,
}

impl MeterState {
    /// How long the body has been (or was) moving.
    pub(crate) fn streamed(&self, now: Instant) -> Duration {
        match self.started {
            Some(started) => self
                .finished
                .unwrap_or(now)
                .saturating_duration_since(started),
            None => Duration::ZERO,
        }
    }
}

impl UploadMeter {
    fn lock(&self) -> std::sync::MutexGuard<'_, MeterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn reset(&self, len: u64) {
        *self.lock() = MeterState {
            len,
            ..MeterState::default()
        };
    }

    /// Called when the connection asks for the next piece of the body.
    pub(crate) fn polled(&self) {
        let mut state = self.lock();
        if state.started.is_none() {
            state.started = Some(Instant::now());
        }
        if state.len == 0 && state.finished.is_none() {
            state.finished = Some(Instant::now());
        }
    }

    pub(crate) fn sent(&self, n: u64) {
        let mut state = self.lock();
        state.sent += n;
        if state.sent >= state.len && state.finished.is_none() {
            state.finished = Some(Instant::now());
        }
    }

    /// The body ended (or failed): no more bytes will come.
    pub(crate) fn ended(&self) {
        let mut state = self.lock();
        if state.finished.is_none() {
            state.finished = Some(Instant::now());
        }
    }

    pub(crate) fn state(&self) -> MeterState {
        *self.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn default_limits_cut_a_one_byte_per_second_stream_at_thirty_seconds() {
        let timeouts = Timeouts::default();
        assert_eq!(timeouts.connect, Duration::from_secs(15));
        assert_eq!(timeouts.response, Duration::from_secs(30));
        assert_eq!(timeouts.total, Duration::from_secs(60));
        assert_eq!(timeouts.small_document_bytes(), 60 * 1024);
        let start = Instant::now();
        let mut check = SpeedCheck::new(timeouts.speed_limit, timeouts.speed_time, start);
        let mut tripped = None;
        for second in 1..=120u64 {
            let now = at(start, second * 1000);
            check.record(now, second);
            if check.stalled(now, second) {
                tripped = Some(second);
                break;
            }
        }
        assert_eq!(tripped, Some(30));
    }

    #[test]
    fn a_steady_stream_above_the_floor_never_trips() {
        let start = Instant::now();
        let mut check = SpeedCheck::new(1000, Duration::from_secs(2), start);
        // 200 bytes every 100 ms: 2000 B/s for a minute.
        for tick in 1..=600u64 {
            let now = at(start, tick * 100);
            check.record(now, tick * 200);
            assert!(!check.stalled(now, tick * 200), "tripped at {tick}");
        }
        assert!(check.samples.len() <= 34, "{}", check.samples.len());
    }

    #[test]
    fn a_burst_then_silence_trips_one_window_after_the_burst() {
        let start = Instant::now();
        let mut check = SpeedCheck::new(1000, Duration::from_secs(2), start);
        check.record(at(start, 100), 1_000_000);
        assert!(!check.stalled(at(start, 2000), 1_000_000));
        assert!(!check.stalled(at(start, 2099), 1_000_000));
        assert!(check.stalled(at(start, 2150), 1_000_000));
    }

    #[test]
    fn nothing_trips_before_a_whole_window_or_with_the_cutoff_off() {
        let start = Instant::now();
        let check = SpeedCheck::new(1000, Duration::from_secs(2), start);
        assert!(!check.stalled(at(start, 1999), 0));
        assert!(check.stalled(at(start, 2000), 0));
        let off = SpeedCheck::new(0, Duration::from_secs(2), start);
        assert!(!off.stalled(at(start, 60_000), 0));
    }

    #[test]
    fn the_rate_is_measured_past_the_first_burst() {
        let start = Instant::now();
        let mut check = SpeedCheck::new(1000, Duration::from_secs(2), start);
        // 3 MB at once (buffers filling), then 10 kB/s.
        check.record(at(start, 10), 3_000_000);
        for tick in 1..=40u64 {
            check.record(at(start, tick * 100), 3_000_000 + tick * 1000);
        }
        assert_eq!(check.rate(at(start, 3900), 3_039_000), None);
        let rate = check.rate(at(start, 4000), 3_040_000).unwrap();
        assert!((9_000.0..=11_000.0).contains(&rate), "{rate}");
    }

    #[test]
    fn draining_buffers_are_allowed_for() {
        let timeouts = Timeouts::default();
        // No measure: the floor. A measure: that rate (never below the floor).
        assert_eq!(
            timeouts.drain_allowance(None, 10 * 1024),
            Duration::from_secs(10)
        );
        assert_eq!(
            timeouts.drain_allowance(Some(1024.0 * 1024.0), 1 << 30),
            Duration::from_secs(16)
        );
        assert_eq!(
            timeouts.drain_allowance(Some(1.0), 2048),
            Duration::from_secs(2)
        );
        let off = Timeouts {
            speed_limit: 0,
            ..Timeouts::default()
        };
        assert_eq!(off.drain_allowance(None, 1 << 20), off.total);
    }

    #[test]
    fn budgets_give_back_streaming_time() {
        let mut budget = Budget::new(Duration::from_secs(10));
        let before = budget.deadline();
        budget.exclude(Duration::from_secs(5));
        assert_eq!(budget.deadline(), before + Duration::from_secs(5));
        assert!(budget.remaining() > Duration::from_secs(14));
    }

    #[test]
    fn messages_carry_the_figures() {
        assert_eq!(seconds(Duration::from_secs(30)), "30 s");
        assert_eq!(seconds(Duration::from_millis(2500)), "2.5 s");
        let slow = Stall::Slow {
            upload: false,
            limit: 1024,
            time: Duration::from_secs(30),
            bytes: 17,
            total: Some(812),
        };
        assert_eq!(
            slow.to_string(),
            "transfer below 1024 B/s for 30 s (17 of 812 bytes received)"
        );
        let wait = Stall::RetryAfter {
            status: 429,
            asked: Duration::from_secs(100_000),
            cap: Duration::from_secs(60),
        };
        assert!(
            wait.to_string().contains("asked to wait 100000 s"),
            "{wait}"
        );
    }
}
