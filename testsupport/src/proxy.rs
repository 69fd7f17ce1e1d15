//! A fault-injecting HTTP proxy in front of a real registry: it forwards
//! each request on its own upstream connection (forcing `Connection: close`)
//! and, as planned, cuts a blob download midway, flips a byte in one,
//! answers an error status instead of forwarding, sends manifests or blobs
//! (or forwards uploads) at a set pace, or never answers. Also
//! [`SilentServer`], a listener that accepts connections and never answers.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{Result, TestSupportError};

/// Answer `status` (with `Retry-After: retry_after` if set) instead of
/// forwarding, `times` times, to GET/HEAD requests whose path contains `path_contains`.
#[derive(Debug, Clone)]
pub struct StatusFault {
    pub status: u16,
    pub times: u32,
    pub retry_after: Option<u32>,
    pub path_contains: String,
}

/// Answer GET/HEAD requests whose path contains `path_contains` with this
/// response instead of forwarding (e.g. a malformed manifest).
#[derive(Debug, Clone)]
pub struct CannedResponse {
    pub path_contains: String,
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// A pace: `bytes` at a time, then a pause of `every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    pub bytes: usize,
    pub every: Duration,
}

impl Throttle {
    /// `bytes` every second.
    pub fn per_second(bytes: usize) -> Throttle {
        Throttle {
            bytes,
            every: Duration::from_secs(1),
        }
    }
}

/// Read the request and never answer, `times` times, for requests whose
/// path contains `path_contains` (the connection stays open until the
/// client gives up).
#[derive(Debug, Clone)]
pub struct Hang {
    pub times: u32,
    pub path_contains: String,
}

/// The faults to inject. Blob faults apply to GET `/v2/.../blobs/sha256:...` responses with a body.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// Close the connection after this many body bytes, on the first `drop_times` blob downloads
    /// that are longer than that.
    pub drop_blob_after: Option<u64>,
    pub drop_times: u32,
    /// Flip (xor 0xff) the body byte at this offset on every blob download longer than that.
    pub flip_blob_byte_at: Option<u64>,
    pub status_faults: Vec<StatusFault>,
    pub canned: Vec<CannedResponse>,
    /// Sleep this long after each 64 KiB of a blob download (slow registry).
    pub blob_chunk_delay: Option<std::time::Duration>,
    /// Close the connection after forwarding this many request-body bytes,
    /// on the first `drop_upload_times` blob uploads (PUT/PATCH) longer than that.
    pub drop_upload_after: Option<u64>,
    pub drop_upload_times: u32,
    /// Send the bodies of successful manifest GETs (`/manifests/`) at this
    /// pace (the head goes at once).
    pub manifest_throttle: Option<Throttle>,
    /// Send the bodies of successful blob GETs at this pace.
    pub blob_throttle: Option<Throttle>,
    /// Forward the bodies of blob uploads (PUT/PATCH) at this pace.
    pub upload_throttle: Option<Throttle>,
    pub hangs: Vec<Hang>,
}

#[derive(Debug, Default, Clone)]
struct Counters {
    drops: u32,
    flips: u32,
    statuses: u32,
    canned: u32,
    throttled: u32,
    hangs: u32,
    tls_hellos: u32,
    requests: Vec<String>,
    /// Blob downloads and uploads in flight now, and the most at once.
    downloads: InFlight,
    uploads: InFlight,
}

#[derive(Debug, Default, Clone, Copy)]
struct InFlight {
    now: u32,
    most: u32,
}

/// A blob download (GET `/blobs/sha256:`) or upload (PUT or PATCH
/// `/blobs/uploads/`) being forwarded, counted in [`Counters`] from its
/// request head until the exchange ends (drop).
struct Transfer<'a> {
    shared: &'a Shared,
    upload: bool,
}

impl<'a> Transfer<'a> {
    fn start(shared: &'a Shared, method: &str, path: &str) -> Option<Transfer<'a>> {
        let upload = match method {
            "GET" if path.contains("/blobs/sha256:") => false,
            "PUT" | "PATCH" if path.contains("/blobs/uploads/") => true,
            _ => return None,
        };
        let mut counters = shared.counters.lock().unwrap_or_else(|p| p.into_inner());
        let flight = if upload {
            &mut counters.uploads
        } else {
            &mut counters.downloads
        };
        flight.now += 1;
        flight.most = flight.most.max(flight.now);
        Some(Transfer { shared, upload })
    }
}

impl Drop for Transfer<'_> {
    fn drop(&mut self) {
        let mut counters = self
            .shared
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let flight = if self.upload {
            &mut counters.uploads
        } else {
            &mut counters.downloads
        };
        flight.now -= 1;
    }
}

struct Shared {
    plan: Mutex<FaultPlan>,
    counters: Mutex<Counters>,
}

/// A proxy on 127.0.0.1 in front of `upstream`; stops on drop.
pub struct FaultProxy {
    pub addr: SocketAddr,
    /// `127.0.0.1:PORT`, to use as the registry in references.
    pub host: String,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy forwarding to the plain-HTTP `upstream`.
    pub fn start(upstream: SocketAddr, plan: FaultPlan) -> Result<FaultProxy> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(TestSupportError::io("binding the proxy"))?;
        let addr = listener
            .local_addr()
            .map_err(TestSupportError::io("proxy address"))?;
        let shared = Arc::new(Shared {
            plan: Mutex::new(plan),
            counters: Mutex::new(Counters::default()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = stream else { continue };
                    let shared = shared.clone();
                    std::thread::spawn(move || {
                        let _ = handle(client, upstream, &shared);
                    });
                }
            })
        };
        Ok(FaultProxy {
            addr,
            host: addr.to_string(),
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Replaces the plan (counters are kept).
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.shared.plan.lock().unwrap_or_else(|p| p.into_inner()) = plan;
    }

    fn counters(&self) -> Counters {
        self.shared
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Blob downloads cut so far.
    pub fn drops_injected(&self) -> u32 {
        self.counters().drops
    }

    /// Blob downloads corrupted so far.
    pub fn flips_injected(&self) -> u32 {
        self.counters().flips
    }

    /// Error statuses answered so far.
    pub fn statuses_injected(&self) -> u32 {
        self.counters().statuses
    }

    /// Canned responses served so far.
    pub fn canned_served(&self) -> u32 {
        self.counters().canned
    }

    /// Responses (and uploads) sent at a throttled pace so far.
    pub fn throttled(&self) -> u32 {
        self.counters().throttled
    }

    /// Requests left unanswered so far.
    pub fn hangs_injected(&self) -> u32 {
        self.counters().hangs
    }

    /// TLS handshakes refused so far (clients trying HTTPS first).
    pub fn tls_hellos(&self) -> u32 {
        self.counters().tls_hellos
    }

    /// `METHOD path [Range]` of every request seen, in order.
    pub fn requests(&self) -> Vec<String> {
        self.counters().requests
    }

    /// The most blob downloads (GET `/blobs/sha256:`) forwarded at the
    /// same time so far: how many a client ran at once.
    pub fn most_downloads_at_once(&self) -> u32 {
        self.counters().downloads.most
    }

    /// The most blob uploads (PUT or PATCH `/blobs/uploads/`) forwarded at
    /// the same time so far.
    pub fn most_uploads_at_once(&self) -> u32 {
        self.counters().uploads.most
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A listener on 127.0.0.1 that accepts connections, reads nothing and
/// never answers (a registry that hangs); connections are closed on drop.
pub struct SilentServer {
    pub addr: SocketAddr,
    /// `127.0.0.1:PORT`, to use as the registry in references.
    pub host: String,
    accepted: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentServer {
    pub fn start() -> Result<SilentServer> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(TestSupportError::io("binding the silent server"))?;
        let addr = listener
            .local_addr()
            .map_err(TestSupportError::io("silent server address"))?;
        let accepted = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut open = Vec::new();
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        accepted.fetch_add(1, Ordering::SeqCst);
                        open.push(stream);
                    }
                }
            })
        };
        Ok(SilentServer {
            addr,
            host: addr.to_string(),
            accepted,
            stop,
            thread: Some(thread),
        })
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u32 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes a part of a body to `out` at `pace` if set: a pause before each
/// piece but the body's very first (`started`: some of it went before),
/// none after the last, so that an exchange ends with its last byte (a
/// client's next request is not seen as overlapping it).
fn write_paced(
    out: &mut TcpStream,
    data: &[u8],
    pace: Option<Throttle>,
    started: bool,
) -> std::io::Result<()> {
    match pace {
        None => out.write_all(data),
        Some(pace) => {
            for (i, piece) in data.chunks(pace.bytes.max(1)).enumerate() {
                if started || i > 0 {
                    std::thread::sleep(pace.every);
                }
                out.write_all(piece)?;
                out.flush()?;
            }
            Ok(())
        }
    }
}

/// Copies `from` to `to` until EOF, at `pace` if set.
fn copy_paced(from: &mut TcpStream, to: &mut TcpStream, pace: Option<Throttle>) {
    let Some(pace) = pace else {
        let _ = std::io::copy(from, to);
        return;
    };
    let mut buf = vec![0u8; pace.bytes.max(1)];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
        std::thread::sleep(pace.every);
    }
}

/// Reads up to the end of the HTTP head; returns (head, bytes read past it).
fn read_head(stream: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() > 256 * 1024 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "head too long",
            ));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before the head ended",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_string())
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// One request's path through the fault plan, in the order a registry
/// client meets it: TLS probe, hang, error status, canned answer, then
/// forwarding with upload cuts, pacing, blob cuts and flipped bytes.
/// Test support, longer than kiln's 100-line budget: each fault is a few
/// lines at the point of the exchange where it strikes, and splitting them
/// apart would hide that order.
fn handle(
    mut client: TcpStream,
    upstream_addr: SocketAddr,
    shared: &Shared,
) -> std::io::Result<()> {
    // A TLS ClientHello (clients probing HTTPS first): answer as Go's
    // servers do, so the client falls back to plain HTTP at once.
    let mut first = [0u8; 1];
    if client.peek(&mut first)? == 1 && first[0] == 0x16 {
        shared
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tls_hellos += 1;
        client.write_all(
            b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n",
        )?;
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    let (head, early_body) = read_head(&mut client)?;
    let head_text = String::from_utf8_lossy(&head).into_owned();
    let mut request_line = head_text.lines().next().unwrap_or("").split_whitespace();
    let method = request_line.next().unwrap_or("").to_string();
    let path = request_line.next().unwrap_or("").to_string();
    let range = header_value(&head_text, "range");
    {
        let mut counters = shared.counters.lock().unwrap_or_else(|p| p.into_inner());
        let mut line = format!("{method} {path}");
        if let Some(range) = &range {
            line.push_str(&format!(" Range: {range}"));
        }
        counters.requests.push(line);
    }
    // Ends (set to None, or dropped) when its response is all written, not
    // when the threads of the exchange are done.
    let mut transfer = Transfer::start(shared, &method, &path);

    // No answer at all: wait for the client to give up.
    let hang = {
        let mut plan = shared.plan.lock().unwrap_or_else(|p| p.into_inner());
        match plan
            .hangs
            .iter_mut()
            .find(|h| h.times > 0 && path.contains(&h.path_contains))
        {
            Some(hang) => {
                hang.times -= 1;
                true
            }
            None => false,
        }
    };
    if hang {
        shared
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .hangs += 1;
        let mut sink = [0u8; 8192];
        while matches!(client.read(&mut sink), Ok(n) if n > 0) {}
        return Ok(());
    }

    // Error statuses instead of forwarding.
    if method == "GET" || method == "HEAD" {
        let mut plan = shared.plan.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fault) = plan
            .status_faults
            .iter_mut()
            .find(|f| f.times > 0 && path.contains(&f.path_contains))
        {
            fault.times -= 1;
            let retry_after = fault
                .retry_after
                .map(|s| format!("Retry-After: {s}\r\n"))
                .unwrap_or_default();
            let response = format!(
                "HTTP/1.1 {} {}\r\nContent-Length: 0\r\nConnection: close\r\n{retry_after}\r\n",
                fault.status,
                reason(fault.status)
            );
            drop(plan);
            shared
                .counters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .statuses += 1;
            client.write_all(response.as_bytes())?;
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
        if let Some(canned) = plan
            .canned
            .iter()
            .find(|c| path.contains(&c.path_contains))
            .cloned()
        {
            drop(plan);
            shared
                .counters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .canned += 1;
            let head = format!(
                "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                canned.status,
                if canned.status == 200 { "OK" } else { reason(canned.status) },
                canned.content_type,
                canned.body.len()
            );
            client.write_all(head.as_bytes())?;
            if method == "GET" {
                client.write_all(&canned.body)?;
            }
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
    }

    // Forward, one request per upstream connection.
    let mut upstream = TcpStream::connect(upstream_addr)?;
    let mut forwarded = String::new();
    for (i, line) in head_text.split("\r\n").enumerate() {
        if line.is_empty() {
            continue;
        }
        if i > 0
            && line
                .split(':')
                .next()
                .is_some_and(|k| k.trim().eq_ignore_ascii_case("connection"))
        {
            continue;
        }
        forwarded.push_str(line);
        forwarded.push_str("\r\n");
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    let request_length: u64 = header_value(&head_text, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cut_upload = if (method == "PUT" || method == "PATCH") && path.contains("/blobs/uploads/") {
        let mut plan = shared.plan.lock().unwrap_or_else(|p| p.into_inner());
        match plan.drop_upload_after {
            Some(limit) if plan.drop_upload_times > 0 && request_length > limit => {
                plan.drop_upload_times -= 1;
                Some(limit)
            }
            _ => None,
        }
    } else {
        None
    };
    upstream.write_all(forwarded.as_bytes())?;
    if let Some(limit) = cut_upload {
        // Forward `limit` body bytes, then hang up on both sides.
        let mut remaining = limit;
        let first = early_body.len().min(remaining as usize);
        upstream.write_all(&early_body[..first])?;
        remaining -= first as u64;
        let mut chunk = vec![0u8; 64 * 1024];
        while remaining > 0 {
            let want = chunk.len().min(remaining as usize);
            let n = client.read(&mut chunk[..want])?;
            if n == 0 {
                break;
            }
            upstream.write_all(&chunk[..n])?;
            remaining -= n as u64;
        }
        shared
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drops += 1;
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
        return Ok(());
    }
    let is_upload = (method == "PUT" || method == "PATCH") && path.contains("/blobs/uploads/");
    let upload_pace = if is_upload {
        shared
            .plan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .upload_throttle
    } else {
        None
    };
    if upload_pace.is_some() && request_length > 0 {
        shared
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .throttled += 1;
    }
    // (A pause before its first piece too: the upload's pieces that follow
    // come through `copy_paced`, which pauses after each.)
    write_paced(&mut upstream, &early_body, upload_pace, true)?;
    let body_copier = {
        let mut from_client = client.try_clone()?;
        let mut to_upstream = upstream.try_clone()?;
        std::thread::spawn(move || copy_paced(&mut from_client, &mut to_upstream, upload_pace))
    };

    let (response_head, mut response_body) = read_head(&mut upstream)?;
    let status_ok =
        response_head.starts_with(b"HTTP/1.1 200") || response_head.starts_with(b"HTTP/1.1 206");
    let is_blob_get = method == "GET" && path.contains("/blobs/sha256:");
    let body_length: Option<u64> =
        header_value(&String::from_utf8_lossy(&response_head), "content-length")
            .and_then(|v| v.parse().ok());
    let content_length = body_length.unwrap_or(0);
    let (mut cut_at, mut flip_at) = (None, None);
    if is_blob_get && status_ok {
        let mut plan = shared.plan.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(limit) = plan.drop_blob_after {
            if plan.drop_times > 0 && content_length > limit {
                plan.drop_times -= 1;
                cut_at = Some(limit);
            }
        }
        if let Some(at) = plan.flip_blob_byte_at {
            if content_length > at {
                flip_at = Some(at);
            }
        }
    }
    let is_manifest_get = method == "GET" && path.contains("/manifests/");
    let (chunk_delay, pace) = if status_ok {
        let plan = shared.plan.lock().unwrap_or_else(|p| p.into_inner());
        if is_blob_get {
            (plan.blob_chunk_delay, plan.blob_throttle)
        } else if is_manifest_get {
            (None, plan.manifest_throttle)
        } else {
            (None, None)
        }
    } else {
        (None, None)
    };
    if pace.is_some() {
        shared
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .throttled += 1;
    }
    client.write_all(&response_head)?;
    // The client has the whole response once it has the body's last byte
    // (here, for an empty one), and may start its next transfer before
    // the upstream's close reaches this thread: the transfer ends then.
    if body_length == Some(0) {
        transfer = None;
    }
    let mut sent: u64 = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let mut data = if response_body.is_empty() {
            let n = upstream.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            chunk[..n].to_vec()
        } else {
            std::mem::take(&mut response_body)
        };
        if let Some(at) = flip_at {
            if at >= sent && at < sent + data.len() as u64 {
                data[(at - sent) as usize] ^= 0xff;
                // Counted before the bytes go out, so a test never reads a stale count.
                shared
                    .counters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .flips += 1;
            }
        }
        if let Some(limit) = cut_at {
            if sent + data.len() as u64 >= limit {
                let keep = (limit - sent) as usize;
                write_paced(&mut client, &data[..keep], pace, sent > 0)?;
                client.flush()?;
                shared
                    .counters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .drops += 1;
                let _ = client.shutdown(Shutdown::Both);
                let _ = upstream.shutdown(Shutdown::Both);
                let _ = body_copier.join();
                return Ok(());
            }
        }
        write_paced(&mut client, &data, pace, sent > 0)?;
        sent += data.len() as u64;
        if body_length.is_some_and(|n| sent >= n) {
            transfer = None;
        }
        if let Some(delay) = chunk_delay {
            std::thread::sleep(delay);
        }
    }
    client.flush()?;
    drop(transfer);
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
    let _ = body_copier.join();
    Ok(())
}
