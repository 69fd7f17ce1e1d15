//! The HTTP side: endpoint discovery (`/v2/` ping, https or plain http),
//! authentication, retries, and the pull/push operations.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt as _;
use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE,
    RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use crate::auth::{Challenge, Credential, CredentialSource};
use crate::download::parse_http_date;
use crate::error::Error;
use crate::hosts::{ClientCert, RegistryHosts, Route, Schemes};
use crate::limits::{
    BodyError, BodyReader, Budget, SpeedCheck, Stall, Timeouts, UploadMeter, UPLOAD_PIECE,
};
use crate::reference::{api_host, Digest, Reference, Repository};

/// Media types kiln asks for when fetching a manifest: both the Docker and OCI families.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Manifests larger than this are refused (distribution's own limit is 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Token responses larger than this are refused.
const MAX_TOKEN_BYTES: usize = 1024 * 1024;

/// Of an error response's body, only this much is read (for its message).
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// How often and how patiently to retry 5xx, 429, connection errors and
/// response headers that did not come. Every retry and wait also has to fit
/// in the operation's deadline ([`Timeouts::total`]): retries stop when the
/// next wait would pass it.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Delay before the first retry; doubles each time.
    pub initial_backoff: Duration,
    /// Longest delay between attempts from backoff.
    pub max_backoff: Duration,
    /// Longest `Retry-After` kiln is willing to wait: an answer asking for
    /// longer (or for longer than the deadline leaves) fails at once.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Settings for a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Registries (as named in references, or their API host) allowed over
    /// plain HTTP and, over HTTPS, with unverified certificates.
    pub insecure_registries: Vec<String>,
    /// Extra PEM files of CA certificates to trust besides the system roots,
    /// for every registry.
    pub ca_certs: Vec<PathBuf>,
    /// Per-registry settings and mirrors (a registry configuration file).
    pub hosts: RegistryHosts,
    /// Where credentials come from.
    pub credentials: CredentialSource,
    pub retry: RetryPolicy,
    /// Deadlines and the low-speed cutoff, for registry traffic and
    /// [`Client::download`] alike.
    pub timeouts: Timeouts,
    /// Upload blobs in PATCH chunks of this many bytes; `None` uploads each
    /// blob in one PUT.
    pub chunk_size: Option<u64>,
    pub user_agent: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            insecure_registries: Vec::new(),
            ca_certs: Vec::new(),
            hosts: RegistryHosts::default(),
            credentials: CredentialSource::default(),
            retry: RetryPolicy::default(),
            timeouts: Timeouts::default(),
            chunk_size: None,
            user_agent: format!("kiln/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// A manifest (or index) as the registry sent it; the bytes are never re-serialized.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// `Content-Type` of the response, without parameters.
    pub media_type: String,
    /// sha256 of `bytes`.
    pub digest: Digest,
    pub bytes: Vec<u8>,
}

/// Bytes to upload, opened afresh for each attempt.
pub trait BlobSource: Send + Sync {
    /// Total length in bytes.
    fn size(&self) -> u64;
    /// A reader positioned `offset` bytes into the blob.
    fn open(&self, offset: u64) -> std::io::Result<Box<dyn Read + Send>>;
}

/// A blob held in memory (configs, small layers, tests).
#[derive(Debug, Clone)]
pub struct MemoryBlob(pub Bytes);

impl BlobSource for MemoryBlob {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn open(&self, offset: u64) -> std::io::Result<Box<dyn Read + Send>> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.0.len());
        Ok(Box::new(std::io::Cursor::new(self.0.slice(start..))))
    }
}

/// What [`Client::push_blob`] had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The registry already had the blob in this repository.
    Exists,
    /// Mounted from another repository of the same registry.
    Mounted,
    /// Uploaded.
    Uploaded,
}

#[derive(Debug, Clone)]
struct Endpoint {
    base: Url,
    challenge: Option<Challenge>,
}

/// Names what a request concerns, for error messages, and where it goes.
struct Ctx<'a> {
    /// The host asked: the registry, or one of its mirrors.
    registry: &'a str,
    /// The repository's name there.
    repository: &'a str,
    what: String,
    /// For a mirror, the registry it stands in for (`?ns=`).
    mirror_of: Option<&'a str>,
}

impl Route {
    /// What a request for `what` along this route concerns.
    fn ctx(&self, what: String) -> Ctx<'_> {
        Ctx {
            registry: &self.host,
            repository: &self.name,
            what,
            mirror_of: self.mirror_of.as_deref(),
        }
    }
}

/// A registry client shared by all concurrent operations of one command.
///
/// ```no_run
/// # async fn demo() -> Result<(), kiln_registry::Error> {
/// use kiln_registry::{Client, ClientConfig, Reference};
/// let client = Client::new(ClientConfig::default())?;
/// let reference = Reference::parse("localhost:5000/app:v1")?;
/// let manifest = client.fetch_manifest(&reference).await?;
/// println!("{} {}", manifest.media_type, manifest.digest);
/// # Ok(()) }
/// ```
pub struct Client {
    pub(crate) http: reqwest::Client,
    /// For hosts with TLS settings of their own (`--insecure-registry`, or
    /// `insecure`, `ca`, `keypair` in their table), keyed by host; each
    /// built when the host is first asked (loading the system roots again
    /// costs every command time).
    host_clients: Mutex<HashMap<String, reqwest::Client>>,
    config: ClientConfig,
    endpoints: Mutex<HashMap<String, Endpoint>>,
    /// Mirrors that could not be reached: the rest of this client's pulls
    /// skip them.
    down: Mutex<HashSet<String>>,
    /// Held while a registry is probed, so that concurrent first requests
    /// (one per blob) wait for one probe instead of each opening its own
    /// HTTPS and HTTP connections.
    probing: tokio::sync::Mutex<()>,
    tokens: Mutex<HashMap<String, String>>,
    credentials: Mutex<HashMap<String, Option<Credential>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

/// The TLS settings of one host, besides the system roots and `--ca-cert`.
#[derive(Default)]
struct HostTls<'a> {
    ca_certs: &'a [PathBuf],
    client_cert: Option<&'a ClientCert>,
    accept_invalid_certs: bool,
}

fn build_http(config: &ClientConfig, tls: HostTls<'_>) -> Result<reqwest::Client, Error> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .user_agent(config.user_agent.clone())
        // Response headers and bodies are timed by the client itself
        // (`Client::exchange`, `BodyReader`): no read timeout here.
        .connect_timeout(config.timeouts.connect)
        .pool_idle_timeout(Duration::from_secs(30))
        .danger_accept_invalid_certs(tls.accept_invalid_certs);
    if let Some(cert) = tls.client_cert {
        builder = builder.identity(client_identity(cert)?);
    }
    for path in config.ca_certs.iter().chain(tls.ca_certs) {
        let pem = std::fs::read(path).map_err(|e| Error::CaCert {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| Error::CaCert {
            path: path.display().to_string(),
            detail: error_chain(&e),
        })?;
        if certs.is_empty() {
            return Err(Error::CaCert {
                path: path.display().to_string(),
                detail: "no PEM certificate in the file".into(),
            });
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| Error::ClientSetup(error_chain(&e)))
}

/// A client certificate and its key as reqwest takes them: one PEM bundle.
fn client_identity(cert: &ClientCert) -> Result<reqwest::Identity, Error> {
    let failed = |detail: String| Error::ClientCert {
        cert: cert.cert.display().to_string(),
        key: cert.key.display().to_string(),
        detail,
    };
    let mut pem =
        std::fs::read(&cert.key).map_err(|e| failed(format!("{}: {e}", cert.key.display())))?;
    pem.push(b'\n');
    pem.extend(
        std::fs::read(&cert.cert).map_err(|e| failed(format!("{}: {e}", cert.cert.display())))?,
    );
    reqwest::Identity::from_pem(&pem).map_err(|e| failed(error_chain(&e)))
}

/// Extracts `CODE: message` pairs from a distribution error body.
fn registry_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(errors) => errors
            .errors
            .iter()
            .map(|e| format!("{} {}", e.code, e.message).trim().to_string())
            .collect::<Vec<_>>()
            .join("; "),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            text.chars().take(200).collect()
        }
    }
}

/// The wait a `Retry-After` header asks for: seconds, or an HTTP date
/// (`now` is the clock to measure it from).
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = u64::try_from(parse_http_date(value)?).ok()?;
    let now = now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

fn scope_pull(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

fn scope_push(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

/// A request body of `len` bytes from `stream`, handed to the connection in
/// pieces of at most [`UPLOAD_PIECE`] bytes, that reports its progress to
/// `meter` (reset here: the body is made afresh for each attempt).
fn metered_body<S>(stream: S, len: u64, meter: Arc<UploadMeter>) -> reqwest::Body
where
    S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    meter.reset(len);
    let stream = futures_util::stream::unfold(
        (Box::pin(stream), meter, Bytes::new()),
        |(mut stream, meter, mut pending)| async move {
            meter.polled();
            if pending.is_empty() {
                match stream.next().await {
                    Some(Ok(chunk)) => pending = chunk,
                    Some(Err(err)) => {
                        meter.ended();
                        return Some((Err(err), (stream, meter, pending)));
                    }
                    None => {
                        meter.ended();
                        return None;
                    }
                }
            }
            let piece = pending.split_to(pending.len().min(UPLOAD_PIECE));
            meter.sent(piece.len() as u64);
            Some((Ok(piece), (stream, meter, pending)))
        },
    );
    reqwest::Body::wrap_stream(stream)
}

/// Feeds `source` (from `offset`, `len` bytes) into a request body without
/// blocking the runtime.
fn reader_body(
    source: Arc<dyn BlobSource>,
    offset: u64,
    len: u64,
    meter: Arc<UploadMeter>,
) -> reqwest::Body {
    const CHUNK: u64 = 1024 * 1024;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let mut reader = match source.open(offset) {
            Ok(reader) => reader,
            Err(err) => {
                let _ = tx.blocking_send(Err(err));
                return;
            }
        };
        let mut remaining = len;
        while remaining > 0 {
            let mut buf = vec![0u8; remaining.min(CHUNK) as usize];
            match reader.read(&mut buf) {
                Ok(0) => {
                    let _ = tx.blocking_send(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("blob source ended {remaining} bytes early"),
                    )));
                    return;
                }
                Ok(n) => {
                    buf.truncate(n);
                    remaining -= n as u64;
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return;
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => {
                    let _ = tx.blocking_send(Err(err));
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    metered_body(stream, len, meter)
}

/// How a request failed before its response headers came.
#[derive(Debug)]
pub(crate) enum Exchange {
    Stalled(Stall),
    Failed(reqwest::Error),
}

impl Exchange {
    /// The stall behind the failure (a connect timeout is reqwest's own).
    pub(crate) fn stall(&self, timeouts: &Timeouts) -> Option<Stall> {
        match self {
            Exchange::Stalled(stall) => Some(stall.clone()),
            Exchange::Failed(err) if err.is_connect() && err.is_timeout() => Some(Stall::Connect {
                limit: timeouts.connect,
            }),
            Exchange::Failed(_) => None,
        }
    }

    /// The stall, or else reqwest's error chain.
    pub(crate) fn text(&self, timeouts: &Timeouts) -> String {
        match (self.stall(timeouts), self) {
            (Some(stall), _) => stall.to_string(),
            (None, Exchange::Failed(err)) => error_chain(err),
            (None, Exchange::Stalled(stall)) => stall.to_string(),
        }
    }
}

/// A GET that a pull sends to a repository's mirrors, then its registry.
struct PullGet<'a> {
    /// `manifest v1`, `blob sha256:…`: for messages.
    what: String,
    /// The path after `v2/NAME/`.
    tail: String,
    /// Adds the request's own headers.
    headers: &'a (dyn Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder + Sync),
}

/// True when `err` says the host could not be reached at all (no answer,
/// no connection), rather than that it answered.
fn cannot_reach(err: &Error) -> bool {
    match err {
        Error::Unreachable { .. } | Error::Connection { .. } => true,
        Error::Stalled { stall, .. } => {
            matches!(**stall, Stall::Connect { .. } | Stall::Headers { .. })
        }
        _ => false,
    }
}

/// Why a small document could not be read.
enum ReadError {
    Body(BodyError),
    TooLarge,
}

fn stalled(ctx: &Ctx<'_>, stall: Stall, attempts: u32) -> Error {
    Error::Stalled {
        registry: ctx.registry.to_string(),
        repository: ctx.repository.to_string(),
        what: ctx.what.clone(),
        stall: Box::new(stall),
        attempts,
    }
}

/// Which blob [`Client::fetch_blob`] (or its sink-verifies variant) fetches, and how.
struct BlobRequest<'a> {
    repository: &'a Repository,
    digest: &'a Digest,
    expected_size: Option<u64>,
    /// How many of the blob's first bytes the sink already holds.
    resume_from: u64,
    /// Whether to check the sha256 here (else the sink does).
    hash: bool,
}

/// A blob download under way: what has arrived so far, over the attempts
/// a dropped connection takes, and the deadline they share.
struct BlobDownload<'a> {
    request: BlobRequest<'a>,
    /// `blob sha256:…`, for messages.
    what: String,
    /// Where the last answer came from (the registry, or a mirror).
    route: Route,
    hasher: Sha256,
    /// Bytes the sink holds (`resume_from` included).
    received: u64,
    interruptions: u32,
    budget: Budget,
    /// A blob that small is a document (a config): its body counts against
    /// the budget too.
    small: bool,
}

impl<'a> BlobDownload<'a> {
    fn new(request: BlobRequest<'a>, timeouts: &Timeouts) -> BlobDownload<'a> {
        BlobDownload {
            what: format!("blob {}", request.digest),
            route: Route::origin(request.repository),
            hasher: Sha256::new(),
            received: request.resume_from,
            interruptions: 0,
            budget: Budget::new(timeouts.total),
            small: request
                .expected_size
                .is_some_and(|size| size <= timeouts.small_document_bytes()),
            request,
        }
    }

    /// What the last request concerns, and where it went.
    fn ctx(&self) -> Ctx<'_> {
        self.route.ctx(self.what.clone())
    }

    /// Passes `data` on to `sink` (hashing it when asked to), refusing
    /// bytes past the expected size.
    fn write(&mut self, data: &[u8], sink: &mut (dyn Write + Send)) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        let after = self.received + data.len() as u64;
        if let Some(expected) = self.request.expected_size {
            if after > expected {
                return Err(self.size_error(after, expected));
            }
        }
        if self.request.hash {
            self.hasher.update(data);
        }
        sink.write_all(data).map_err(|cause| Error::Sink {
            registry: self.route.host.clone(),
            repository: self.route.name.clone(),
            digest: self.request.digest.to_string(),
            cause,
        })?;
        self.received = after;
        Ok(())
    }

    /// After a body ended (`broken_off` saying why, when it failed): why
    /// the download is not done yet, or `None` when it is.
    fn unfinished(&self, broken_off: Option<String>) -> Option<String> {
        if broken_off.is_some() {
            return broken_off;
        }
        match self.request.expected_size {
            Some(expected) if self.received < expected => Some(format!(
                "connection closed after {} of {expected} bytes",
                self.received
            )),
            _ => None,
        }
    }

    /// Checks the size and (when hashing here) the digest of what arrived;
    /// returns the byte count.
    fn finish(self) -> Result<u64, Error> {
        if let Some(expected) = self.request.expected_size {
            if self.received != expected {
                return Err(self.size_error(self.received, expected));
            }
        }
        if !self.request.hash {
            return Ok(self.received);
        }
        let actual = Digest::from_hash(self.hasher.finalize().as_slice());
        if actual != *self.request.digest {
            return Err(Error::DigestMismatch {
                registry: self.route.host.clone(),
                repository: self.route.name.clone(),
                digest: self.request.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(self.received)
    }

    fn size_error(&self, actual: u64, expected: u64) -> Error {
        Error::SizeMismatch {
            registry: self.route.host.clone(),
            repository: self.route.name.clone(),
            digest: self.request.digest.to_string(),
            expected,
            actual,
        }
    }
}

/// The first byte a 206 response's `Content-Range: bytes <start>-…` names.
fn content_range_start(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split('-').next())
        .and_then(|v| v.parse::<u64>().ok())
}

impl Client {
    /// Builds a client: system roots plus `SSL_CERT_FILE` (read by the
    /// native-roots loader) and `config.ca_certs`.
    pub fn new(config: ClientConfig) -> Result<Client, Error> {
        Ok(Client {
            http: build_http(&config, HostTls::default())?,
            host_clients: Mutex::new(HashMap::new()),
            config,
            endpoints: Mutex::new(HashMap::new()),
            down: Mutex::new(HashSet::new()),
            probing: tokio::sync::Mutex::new(()),
            tokens: Mutex::new(HashMap::new()),
            credentials: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    fn is_insecure(&self, registry: &str) -> bool {
        let host = api_host(registry);
        self.config
            .insecure_registries
            .iter()
            .any(|h| h == registry || h == host)
    }

    /// The HTTP client for `host`: the shared one, or one with the host's
    /// own TLS settings (made on first use).
    fn http_for(&self, host: &str) -> Result<reqwest::Client, Error> {
        let settings = self.config.hosts.get(host);
        let flagged = self.is_insecure(host);
        if !flagged && !settings.is_some_and(|s| s.has_own_tls()) {
            return Ok(self.http.clone());
        }
        let mut clients = self
            .host_clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(host) {
            return Ok(client.clone());
        }
        let tls = HostTls {
            ca_certs: settings.map_or(&[], |s| s.ca_certs.as_slice()),
            client_cert: settings.and_then(|s| s.client_cert.as_ref()),
            accept_invalid_certs: flagged || settings.is_some_and(|s| s.insecure),
        };
        let client = build_http(&self.config, tls)?;
        clients.insert(host.to_string(), client.clone());
        Ok(client)
    }

    /// Sends `request` and waits for its response headers: at most
    /// [`Timeouts::response`] after the request (its body included) went
    /// out, and no later than `budget` allows. An `upload` body is held to
    /// the speed cutoff meanwhile. Also returns how long the upload body
    /// was moving (time the caller's budget does not count).
    pub(crate) async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        budget: &Budget,
        upload: Option<&UploadMeter>,
    ) -> (Result<reqwest::Response, Exchange>, Duration) {
        let timeouts = &self.config.timeouts;
        let start = Instant::now();
        let tick = timeouts.tick();
        let mut speed: Option<SpeedCheck> = None;
        // Once the upload is handed over: the time its buffered tail may take.
        let mut drain: Option<Duration> = None;
        let send = request.send();
        tokio::pin!(send);
        loop {
            let now = Instant::now();
            let meter = upload.map(UploadMeter::state);
            let drained = match meter {
                Some(m) if m.finished.is_some() => *drain.get_or_insert_with(|| {
                    let rate = speed.as_mut().and_then(|speed| {
                        speed.record(now, m.sent);
                        speed.rate(now, m.sent)
                    });
                    timeouts.drain_allowance(rate, m.sent)
                }),
                _ => Duration::ZERO,
            };
            // Not charged to the budget: the body moving, and draining.
            let streamed = meter.map_or(Duration::ZERO, |m| m.streamed(now)) + drained;
            let wake = match meter {
                // The body is going out: the speed cutoff, not the header wait.
                Some(m) if m.finished.is_none() && m.started.is_some() => {
                    let speed = speed.get_or_insert_with(|| {
                        SpeedCheck::new(
                            timeouts.speed_limit,
                            timeouts.speed_time,
                            m.started.unwrap_or(now),
                        )
                    });
                    speed.record(now, m.sent);
                    if speed.stalled(now, m.sent) {
                        let stall = Stall::Slow {
                            upload: true,
                            limit: timeouts.speed_limit,
                            time: timeouts.speed_time,
                            bytes: m.sent,
                            total: Some(m.len),
                        };
                        return (Err(Exchange::Stalled(stall)), streamed);
                    }
                    now + tick
                }
                _ => {
                    let from = meter.and_then(|m| m.finished).unwrap_or(start);
                    let headers_by = from + timeouts.response + drained;
                    let budget_by = budget.deadline() + streamed;
                    if now >= headers_by.min(budget_by) {
                        let stall = if headers_by <= budget_by {
                            Stall::Headers {
                                limit: timeouts.response + drained,
                            }
                        } else {
                            Stall::HeadersDeadline {
                                deadline: budget.limit(),
                            }
                        };
                        return (Err(Exchange::Stalled(stall)), streamed);
                    }
                    let by = headers_by.min(budget_by);
                    // Look again when the body starts moving.
                    if meter.is_some() {
                        by.min(now + tick)
                    } else {
                        by
                    }
                }
            };
            if let Ok(result) = tokio::time::timeout_at(wake, &mut send).await {
                // The time actually spent moving and draining the body.
                let now = Instant::now();
                let streamed = upload.map_or(Duration::ZERO, |u| {
                    let m = u.state();
                    let draining = m
                        .finished
                        .map_or(Duration::ZERO, |f| now.saturating_duration_since(f));
                    m.streamed(now) + draining.min(drain.unwrap_or_default())
                });
                return (result.map_err(Exchange::Failed), streamed);
            }
        }
    }

    /// Reads a small body whole: within `budget`, under the speed cutoff,
    /// and no more than `max` bytes.
    async fn read_document(
        &self,
        response: reqwest::Response,
        budget: &Budget,
        max: usize,
    ) -> Result<Vec<u8>, ReadError> {
        let total = response.content_length();
        let mut body = BodyReader::new(response, &self.config.timeouts, Some(budget), 0, total);
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await.map_err(ReadError::Body)? {
            if bytes.len() + chunk.len() > max {
                return Err(ReadError::TooLarge);
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    /// How long to wait before retrying a 429 or 5xx `response`: `None`
    /// when retries or the budget are used up (the answer stands), a stall
    /// when the registry asks for a longer wait than kiln gives.
    fn retry_delay(
        &self,
        response: &reqwest::Response,
        retries: u32,
        budget: &Budget,
    ) -> Result<Option<Duration>, Stall> {
        let policy = &self.config.retry;
        if retries >= policy.max_retries {
            return Ok(None);
        }
        let status = response.status().as_u16();
        let left = budget.remaining();
        match retry_after(response.headers(), SystemTime::now()) {
            Some(asked) if asked > policy.max_retry_after => Err(Stall::RetryAfter {
                status,
                asked,
                cap: policy.max_retry_after,
            }),
            Some(asked) if asked >= left => Err(Stall::RetryAfterDeadline {
                status,
                asked,
                left,
                deadline: budget.limit(),
            }),
            Some(asked) => Ok(Some(asked)),
            None => {
                let delay = policy.backoff(retries);
                Ok((delay < left).then_some(delay))
            }
        }
    }

    /// GET `/v2/` once (plus retries on 5xx/429): `Ok(challenge)` when the
    /// server speaks the registry API.
    async fn ping(
        &self,
        registry: &str,
        base: &Url,
        budget: &Budget,
    ) -> Result<Option<Challenge>, String> {
        let url = base.join("v2/").map_err(|e| e.to_string())?;
        let http = self.http_for(registry).map_err(|e| e.to_string())?;
        let mut retry = 0;
        loop {
            let request = http.get(url.clone());
            let response = match self.exchange(request, budget, None).await {
                (Ok(response), _) => response,
                (Err(failure), _) => return Err(failure.text(&self.config.timeouts)),
            };
            let status = response.status();
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                match self.retry_delay(&response, retry, budget) {
                    Ok(Some(delay)) => {
                        retry += 1;
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    Ok(None) => {}
                    Err(stall) => return Err(stall.to_string()),
                }
            }
            return match status {
                s if s.is_success() => Ok(None),
                StatusCode::UNAUTHORIZED => {
                    let challenges: Vec<Challenge> = response
                        .headers()
                        .get_all(WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .filter_map(Challenge::parse)
                        .collect();
                    // Prefer bearer, as Docker does.
                    let bearer = challenges
                        .iter()
                        .find(|c| matches!(c, Challenge::Bearer { .. }))
                        .or(challenges.first());
                    match bearer {
                        Some(challenge) => Ok(Some(challenge.clone())),
                        None => Err("401 without a usable WWW-Authenticate challenge".into()),
                    }
                }
                other => Err(format!("{url} answered {other}; is this a registry?")),
            };
        }
    }

    /// Finds how to talk to `registry` (a registry or mirror host): over
    /// the schemes its settings allow ([`RegistryHosts::schemes`]: HTTPS;
    /// plain HTTP when HTTPS fails for loopback and `--insecure-registry`
    /// hosts; plain HTTP only for `http = true`); and its auth challenge.
    async fn endpoint(&self, registry: &str, budget: &Budget) -> Result<Endpoint, Error> {
        if let Some(endpoint) = self.lock_endpoints().get(registry) {
            return Ok(endpoint.clone());
        }
        let _probing = self.probing.lock().await;
        // Another task may have probed it while this one waited.
        if let Some(endpoint) = self.lock_endpoints().get(registry) {
            return Ok(endpoint.clone());
        }
        let unreachable = |detail: String| Error::Unreachable {
            registry: registry.to_string(),
            detail,
        };
        let schemes = self
            .config
            .hosts
            .schemes(registry, self.is_insecure(registry));
        let endpoint = match schemes {
            Schemes::Https => self.probe(registry, "https", budget).await,
            Schemes::Http => self.probe(registry, "http", budget).await,
            Schemes::HttpsThenHttp => match self.probe(registry, "https", budget).await {
                Ok(endpoint) => Ok(endpoint),
                Err(https_err) => match self.probe(registry, "http", budget).await {
                    Ok(endpoint) => Ok(endpoint),
                    Err(http_err) => Err(format!("https: {https_err}; http: {http_err}")),
                },
            },
        }
        .map_err(unreachable)?;
        tracing::debug!(registry, base = %endpoint.base, challenge = ?endpoint.challenge, "registry endpoint");
        self.lock_endpoints()
            .insert(registry.to_string(), endpoint.clone());
        Ok(endpoint)
    }

    /// Pings `registry` over `scheme`: its endpoint, or why not.
    async fn probe(
        &self,
        registry: &str,
        scheme: &str,
        budget: &Budget,
    ) -> Result<Endpoint, String> {
        let base = Url::parse(&format!("{scheme}://{}/", api_host(registry)))
            .map_err(|e| format!("{scheme}: {e}"))?;
        let challenge = self.ping(registry, &base, budget).await?;
        Ok(Endpoint { base, challenge })
    }

    fn lock_endpoints(&self) -> std::sync::MutexGuard<'_, HashMap<String, Endpoint>> {
        self.endpoints
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn credential(&self, registry: &str) -> Result<Option<Credential>, Error> {
        if let Some(found) = self
            .credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(registry)
        {
            return Ok(found.clone());
        }
        let source = self.config.credentials.clone();
        let name = registry.to_string();
        // Credential helpers are external processes: keep them off the runtime threads.
        let found = tokio::task::spawn_blocking(move || source.lookup(&name))
            .await
            .map_err(|e| Error::ClientSetup(format!("credential lookup task: {e}")))?
            .map_err(|cause| Error::Credentials {
                registry: registry.to_string(),
                cause,
            })?;
        self.credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(registry.to_string(), found.clone());
        Ok(found)
    }

    fn token_key(registry: &str, scopes: &BTreeSet<String>) -> String {
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        format!("{registry} {}", scopes.join(" "))
    }

    /// Asks the token server at `realm` for a bearer token covering `scopes`.
    async fn fetch_token(
        &self,
        registry: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &BTreeSet<String>,
        budget: &Budget,
    ) -> Result<String, Error> {
        let ctx = Ctx {
            registry,
            repository: "",
            what: format!("token from {realm}"),
            mirror_of: None,
        };
        let token_err = |detail: String| Error::Token {
            registry: registry.to_string(),
            realm: realm.to_string(),
            detail,
        };
        let mut url =
            Url::parse(realm).map_err(|e| token_err(format!("invalid realm URL: {e}")))?;
        let credential = self.credential(registry).await?;
        let http = self.http_for(registry)?;
        let request = match &credential {
            Some(Credential::IdentityToken(refresh)) => {
                let mut form: Vec<(&str, &str)> = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh),
                    ("client_id", "kiln"),
                ];
                if let Some(service) = service {
                    form.push(("service", service));
                }
                let scope = scopes.iter().cloned().collect::<Vec<_>>().join(" ");
                if !scope.is_empty() {
                    form.push(("scope", &scope));
                }
                let body = form
                    .iter()
                    .map(|(k, v)| format!("{k}={}", urlencode(v)))
                    .collect::<Vec<_>>()
                    .join("&");
                http.post(url)
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(body)
            }
            other => {
                {
                    let mut query = url.query_pairs_mut();
                    if let Some(service) = service {
                        query.append_pair("service", service);
                    }
                    for scope in scopes {
                        query.append_pair("scope", scope);
                    }
                    if let Some(Credential::UsernamePassword { username, .. }) = other {
                        query.append_pair("account", username);
                    }
                }
                let mut request = http.get(url);
                if let Some(basic) = other.as_ref().and_then(Credential::basic_header) {
                    request = request.header(AUTHORIZATION, basic);
                }
                request
            }
        };
        let response = match self.exchange(request, budget, None).await {
            (Ok(response), _) => response,
            (Err(failure), _) => {
                return Err(match failure.stall(&self.config.timeouts) {
                    Some(stall) => stalled(&ctx, stall, 1),
                    None => token_err(failure.text(&self.config.timeouts)),
                })
            }
        };
        let status = response.status();
        let body = match self.read_document(response, budget, MAX_TOKEN_BYTES).await {
            Ok(body) => body,
            Err(ReadError::Body(BodyError::Stalled(stall))) => return Err(stalled(&ctx, stall, 1)),
            Err(ReadError::Body(BodyError::Failed(err))) => {
                return Err(token_err(error_chain(&err)))
            }
            Err(ReadError::TooLarge) => {
                return Err(token_err(format!(
                    "the response is larger than {MAX_TOKEN_BYTES} bytes"
                )))
            }
        };
        if !status.is_success() {
            return Err(token_err(format!(
                "answered {status}: {}",
                registry_message(&body)
            )));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| token_err(format!("invalid token response: {e}")))?;
        parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| token_err("the response has no token".into()))
    }

    /// The `Authorization` header for a request needing `scopes`, if the registry wants one.
    async fn authorization(
        &self,
        registry: &str,
        endpoint: &Endpoint,
        scopes: &BTreeSet<String>,
        budget: &Budget,
    ) -> Result<Option<String>, Error> {
        match &endpoint.challenge {
            None => Ok(None),
            Some(Challenge::Basic { .. }) => Ok(self
                .credential(registry)
                .await?
                .and_then(|c| c.basic_header())),
            Some(Challenge::Bearer { realm, service, .. }) => {
                let key = Self::token_key(registry, scopes);
                if let Some(token) = self.lock_tokens().get(&key) {
                    return Ok(Some(format!("Bearer {token}")));
                }
                let token = self
                    .fetch_token(registry, realm, service.as_deref(), scopes, budget)
                    .await?;
                self.lock_tokens().insert(key, token.clone());
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// Sends the request `build` makes (called afresh for each attempt),
    /// authenticating on 401 and, when `retry`, retrying connection errors,
    /// response headers that did not come, 5xx and 429 with backoff, all
    /// within `budget` (which is charged for the time spent, less the time
    /// an `upload` body was moving). Returns the first response that is not
    /// retried; the caller judges its status.
    async fn send(
        &self,
        ctx: &Ctx<'_>,
        scopes: &[String],
        retry: bool,
        budget: &mut Budget,
        upload: Option<&UploadMeter>,
        build: &(dyn Fn(&reqwest::Client, &Url) -> reqwest::RequestBuilder + Sync),
    ) -> Result<reqwest::Response, Error> {
        let mut scopes: BTreeSet<String> = scopes.iter().cloned().collect();
        let mut reauthenticated = false;
        let mut retries = 0;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let endpoint = self.endpoint(ctx.registry, budget).await?;
            let mut request = build(&self.http_for(ctx.registry)?, &endpoint.base);
            if let Some(origin) = ctx.mirror_of {
                request = request.query(&[("ns", origin)]);
            }
            if let Some(auth) = self
                .authorization(ctx.registry, &endpoint, &scopes, budget)
                .await?
            {
                request = request.header(AUTHORIZATION, auth);
            }
            let (result, streamed) = self.exchange(request, budget, upload).await;
            budget.exclude(streamed);
            let response = match result {
                Ok(response) => response,
                Err(failure) => {
                    let stall = failure.stall(&self.config.timeouts);
                    let transient = match (&stall, &failure) {
                        // Other stalls: the deadline is gone, or the upload
                        // was too slow; another attempt would fare no better.
                        (Some(stall), _) => {
                            matches!(stall, Stall::Headers { .. } | Stall::Connect { .. })
                        }
                        (None, Exchange::Failed(err)) => !err.is_builder() && !err.is_redirect(),
                        (None, Exchange::Stalled(_)) => false,
                    };
                    let delay = self.config.retry.backoff(retries);
                    if retry
                        && transient
                        && retries < self.config.retry.max_retries
                        && delay < budget.remaining()
                    {
                        tracing::debug!(what = %ctx.what, error = %failure.text(&self.config.timeouts), "retrying");
                        tokio::time::sleep(delay).await;
                        retries += 1;
                        continue;
                    }
                    return Err(match (stall, failure) {
                        (Some(stall), _) => stalled(ctx, stall, attempts),
                        (None, failure) => Error::Connection {
                            registry: ctx.registry.to_string(),
                            repository: ctx.repository.to_string(),
                            what: ctx.what.clone(),
                            detail: failure.text(&self.config.timeouts),
                        },
                    });
                }
            };
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !reauthenticated {
                reauthenticated = true;
                let challenge = response
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .filter_map(Challenge::parse)
                    .next();
                if let Some(challenge) = challenge {
                    if let Challenge::Bearer {
                        scope: Some(extra), ..
                    } = &challenge
                    {
                        scopes.extend(
                            extra
                                .split(' ')
                                .filter(|s| !s.is_empty())
                                .map(str::to_string),
                        );
                    }
                    let key = Self::token_key(ctx.registry, &scopes);
                    self.lock_tokens().remove(&key);
                    if let Some(endpoint) = self.lock_endpoints().get_mut(ctx.registry) {
                        endpoint.challenge = Some(challenge);
                    }
                    continue;
                }
            }
            let transient = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
            if retry && transient {
                match self.retry_delay(&response, retries, budget) {
                    Ok(Some(delay)) => {
                        tracing::debug!(what = %ctx.what, %status, ?delay, "retrying");
                        tokio::time::sleep(delay).await;
                        retries += 1;
                        continue;
                    }
                    Ok(None) => {}
                    Err(stall) => return Err(stalled(ctx, stall, attempts)),
                }
            }
            return Ok(response);
        }
    }

    /// GETs `v2/NAME/TAIL` for a pull of `repository`: from each of its
    /// mirrors in turn ([`RegistryHosts::pull_routes`]), then from the
    /// registry. A mirror that fails or answers anything but success is
    /// passed over (one that cannot be reached, for the rest of this
    /// client's pulls); as containerd does, only the registry's requests are
    /// retried. Returns the first successful answer, else the registry's
    /// (the caller judges its status), and where it came from. One budget
    /// covers every host asked.
    async fn pull_get(
        &self,
        repository: &Repository,
        get: &PullGet<'_>,
        budget: &mut Budget,
    ) -> Result<(reqwest::Response, Route), Error> {
        let mut routes = self.config.hosts.pull_routes(repository);
        let origin = routes.pop().unwrap_or_else(|| Route::origin(repository));
        for mirror in routes {
            if self.lock_down().contains(&mirror.host) {
                continue;
            }
            let failure = match self.get_along(&mirror, get, false, budget).await {
                Ok(response) if response.status().is_success() => return Ok((response, mirror)),
                Ok(response) => format!("answered {}", response.status()),
                Err(err) => {
                    if cannot_reach(&err) {
                        self.lock_down().insert(mirror.host.clone());
                    }
                    err.to_string()
                }
            };
            tracing::info!(
                registry = %repository.registry,
                mirror = %mirror.host,
                "{}: mirror {failure}; asking the next",
                get.what
            );
        }
        let response = self.get_along(&origin, get, true, budget).await?;
        Ok((response, origin))
    }

    /// One GET of a pull, along `route`.
    async fn get_along(
        &self,
        route: &Route,
        get: &PullGet<'_>,
        retry: bool,
        budget: &mut Budget,
    ) -> Result<reqwest::Response, Error> {
        let ctx = route.ctx(get.what.clone());
        let path = format!("v2/{}/{}", route.name, get.tail);
        let scopes = [scope_pull(&route.name)];
        self.send(&ctx, &scopes, retry, budget, None, &|http, base| {
            (get.headers)(http.get(join(base, &path)))
        })
        .await
    }

    fn lock_down(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.down
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Turns an unexpected response into an error carrying the registry's
    /// message (read for at most [`Timeouts::response`]; a body that does
    /// not come in time leaves the message out).
    async fn status_error(&self, ctx: &Ctx<'_>, response: reqwest::Response) -> Error {
        let status = response.status();
        let budget = Budget::new(self.config.timeouts.response);
        let body = self
            .read_document(response, &budget, MAX_ERROR_BODY_BYTES)
            .await
            .unwrap_or_default();
        let message = registry_message(&body);
        let registry = ctx.registry.to_string();
        let repository = ctx.repository.to_string();
        let what = ctx.what.clone();
        match status {
            StatusCode::NOT_FOUND => Error::NotFound {
                registry,
                repository,
                what,
                message,
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Error::Denied {
                registry,
                repository,
                what,
                status: status.as_u16(),
                message,
            },
            _ => Error::Status {
                registry,
                repository,
                what,
                status: status.as_u16(),
                message,
            },
        }
    }

    /// Checks that the registry accepts the credentials configured for it
    /// (what `kiln login` does before storing them).
    pub async fn check_login(&self, registry: &str) -> Result<(), Error> {
        let mut budget = Budget::new(self.config.timeouts.total);
        let endpoint = self.endpoint(registry, &budget).await?;
        let ctx = Ctx {
            registry,
            repository: "",
            what: "login".into(),
            mirror_of: None,
        };
        match &endpoint.challenge {
            None => Ok(()),
            Some(Challenge::Basic { .. }) => {
                let response = self
                    .send(&ctx, &[], true, &mut budget, None, &|http, base| {
                        http.get(base.join("v2/").unwrap_or_else(|_| base.clone()))
                    })
                    .await?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(self.status_error(&ctx, response).await)
                }
            }
            Some(Challenge::Bearer { realm, service, .. }) => self
                .fetch_token(
                    registry,
                    realm,
                    service.as_deref(),
                    &BTreeSet::new(),
                    &budget,
                )
                .await
                .map(|_| ()),
        }
    }

    /// Fetches the manifest or index `reference` names. When the reference
    /// has a digest, the bytes are checked against it. All of it, retries
    /// included, must be done within [`Timeouts::total`].
    pub async fn fetch_manifest(&self, reference: &Reference) -> Result<Manifest, Error> {
        let mut budget = Budget::new(self.config.timeouts.total);
        let repository = &reference.repository;
        let wanted = reference.manifest_reference();
        let get = PullGet {
            what: format!("manifest {wanted}"),
            tail: format!("manifests/{wanted}"),
            headers: &|request| request.header(ACCEPT, MANIFEST_ACCEPT),
        };
        let (response, route) = self.pull_get(repository, &get, &mut budget).await?;
        let ctx = route.ctx(get.what);
        if !response.status().is_success() {
            return Err(self.status_error(&ctx, response).await);
        }
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let header_digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = match self
            .read_document(response, &budget, MAX_MANIFEST_BYTES)
            .await
        {
            Ok(bytes) => bytes,
            Err(ReadError::Body(BodyError::Stalled(stall))) => return Err(stalled(&ctx, stall, 1)),
            Err(ReadError::Body(BodyError::Failed(err))) => {
                return Err(Error::Connection {
                    registry: route.host.clone(),
                    repository: route.name.clone(),
                    what: ctx.what.clone(),
                    detail: error_chain(&err),
                })
            }
            Err(ReadError::TooLarge) => {
                return Err(Error::ManifestTooLarge {
                    registry: route.host.clone(),
                    repository: route.name.clone(),
                    reference: wanted,
                    limit: MAX_MANIFEST_BYTES,
                })
            }
        };
        let digest = Digest::of(&bytes);
        let expected = match (&reference.digest, header_digest) {
            (Some(d), _) => Some(d.to_string()),
            (None, Some(header)) if header.starts_with("sha256:") => Some(header),
            _ => None,
        };
        if let Some(expected) = expected {
            if expected != digest.to_string() {
                return Err(Error::DigestMismatch {
                    registry: route.host.clone(),
                    repository: route.name.clone(),
                    digest: expected,
                    actual: digest.to_string(),
                });
            }
        }
        Ok(Manifest {
            media_type,
            digest,
            bytes,
        })
    }

    /// Streams blob `digest` into `sink`, hashing as bytes arrive. A dropped
    /// connection is resumed with `Range` from the last byte written; 5xx and
    /// 429 are retried. Returns the byte count once size and digest check out.
    /// On error, the bytes already written are not to be trusted.
    ///
    /// The body is held to the speed cutoff ([`Timeouts::speed_limit`]);
    /// everything else (connecting, headers, retries) to [`Timeouts::total`]
    /// in all, and the whole of it when `expected_size` is at most
    /// [`Timeouts::small_document_bytes`]. A stalled body is not retried.
    pub async fn fetch_blob(
        &self,
        repository: &Repository,
        digest: &Digest,
        expected_size: Option<u64>,
        sink: &mut (dyn Write + Send),
    ) -> Result<u64, Error> {
        let request = BlobRequest {
            repository,
            digest,
            expected_size,
            resume_from: 0,
            hash: true,
        };
        self.fetch_blob_inner(request, sink).await
    }

    /// Like [`Client::fetch_blob`] but leaves the sha256 check to `sink`,
    /// for callers whose sink hashes anyway (the store's ingest writer
    /// does, and refuses to name a blob whose bytes do not match): hashing
    /// twice is most of a pull's CPU time. The size is still enforced.
    ///
    /// `resume_from` is how many of the blob's first bytes the sink already
    /// holds (a partial file an earlier, killed pull left): only the rest
    /// is requested, with `Range: bytes=<resume_from>-`, exactly as a
    /// dropped connection is resumed (a server that ignores Range has the
    /// bytes before it skipped). Returns the blob's whole size; only the
    /// sink can tell whether those earlier bytes were right.
    pub async fn fetch_blob_sink_verifies(
        &self,
        repository: &Repository,
        digest: &Digest,
        size: u64,
        resume_from: u64,
        sink: &mut (dyn Write + Send),
    ) -> Result<u64, Error> {
        if resume_from > size {
            return Err(Error::SizeMismatch {
                registry: repository.registry.clone(),
                repository: repository.name.clone(),
                digest: digest.to_string(),
                expected: size,
                actual: resume_from,
            });
        }
        if resume_from == size {
            // Everything is there already; a `bytes=<size>-` request would be
            // answered 416.
            return Ok(size);
        }
        let request = BlobRequest {
            repository,
            digest,
            expected_size: Some(size),
            resume_from,
            hash: false,
        };
        self.fetch_blob_inner(request, sink).await
    }

    /// Downloads the blob `request` names into `sink`: asks for the bytes
    /// not yet received, writes the body, and resumes (after a backoff)
    /// when the connection drops, until the whole blob is there.
    async fn fetch_blob_inner(
        &self,
        request: BlobRequest<'_>,
        sink: &mut (dyn Write + Send),
    ) -> Result<u64, Error> {
        // The hash would miss the bytes before the offset.
        debug_assert!(!request.hash || request.resume_from == 0);
        let mut download = BlobDownload::new(request, &self.config.timeouts);
        loop {
            let (response, skip) = self.request_rest_of_blob(&mut download).await?;
            let broken_off = self
                .receive_blob_body(&mut download, response, skip, sink)
                .await?;
            match download.unfinished(broken_off) {
                None => break,
                Some(detail) => self.before_resuming(&mut download, detail).await?,
            }
        }
        download.finish()
    }

    /// Asks for the blob from the first byte not yet received (with `Range`
    /// past byte 0); returns the response and how many bytes at its front
    /// to drop (a server may ignore Range and send the whole blob).
    async fn request_rest_of_blob(
        &self,
        download: &mut BlobDownload<'_>,
    ) -> Result<(reqwest::Response, u64), Error> {
        let offset = download.received;
        let get = PullGet {
            what: download.what.clone(),
            tail: format!("blobs/{}", download.request.digest),
            headers: &|request| {
                if offset > 0 {
                    request.header(RANGE, format!("bytes={offset}-"))
                } else {
                    request
                }
            },
        };
        let (response, route) = self
            .pull_get(download.request.repository, &get, &mut download.budget)
            .await?;
        download.route = route;
        let skip = match response.status() {
            StatusCode::OK => offset,
            StatusCode::PARTIAL_CONTENT if content_range_start(&response) == Some(offset) => 0,
            StatusCode::PARTIAL_CONTENT => {
                let value = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                return Err(Error::BadHeader {
                    registry: download.route.host.clone(),
                    repository: download.route.name.clone(),
                    what: download.what.clone(),
                    header: "Content-Range",
                    value,
                });
            }
            _ => return Err(self.status_error(&download.ctx(), response).await),
        };
        Ok((response, skip))
    }

    /// Writes the body of `response` to `sink`, less its first `skip`
    /// bytes; returns why the body broke off, if it did. A stall is an
    /// error: it is not retried.
    async fn receive_blob_body(
        &self,
        download: &mut BlobDownload<'_>,
        response: reqwest::Response,
        mut skip: u64,
        sink: &mut (dyn Write + Send),
    ) -> Result<Option<String>, Error> {
        let mut body = BodyReader::new(
            response,
            &self.config.timeouts,
            download.small.then_some(&download.budget),
            download.received,
            download.request.expected_size,
        );
        let mut broken_off = None;
        loop {
            let chunk = match body.next().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(BodyError::Stalled(stall)) => {
                    return Err(stalled(&download.ctx(), stall, download.interruptions + 1))
                }
                Err(BodyError::Failed(err)) => {
                    broken_off = Some(error_chain(&err));
                    break;
                }
            };
            let mut data = &chunk[..];
            if skip > 0 {
                let n = skip.min(data.len() as u64) as usize;
                data = &data[n..];
                skip -= n as u64;
            }
            download.write(data, sink)?;
        }
        if !download.small {
            download.budget.exclude(body.elapsed());
        }
        Ok(broken_off)
    }

    /// Waits before resuming a download whose connection broke off, or
    /// gives up when the retries or the budget are used up.
    async fn before_resuming(
        &self,
        download: &mut BlobDownload<'_>,
        detail: String,
    ) -> Result<(), Error> {
        let delay = self.config.retry.backoff(download.interruptions);
        if download.interruptions >= self.config.retry.max_retries
            || delay >= download.budget.remaining()
        {
            return Err(Error::Connection {
                registry: download.route.host.clone(),
                repository: download.route.name.clone(),
                what: download.what.clone(),
                detail,
            });
        }
        tracing::debug!(
            digest = %download.request.digest,
            received = download.received,
            %detail,
            "blob download interrupted; resuming"
        );
        tokio::time::sleep(delay).await;
        download.interruptions += 1;
        Ok(())
    }

    /// The size of blob `digest` in `repository`, or `None` if the registry lacks it.
    pub async fn blob_exists(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<Option<u64>, Error> {
        let mut budget = Budget::new(self.config.timeouts.total);
        self.blob_exists_within(repository, digest, &mut budget)
            .await
    }

    async fn blob_exists_within(
        &self,
        repository: &Repository,
        digest: &Digest,
        budget: &mut Budget,
    ) -> Result<Option<u64>, Error> {
        let ctx = Ctx {
            registry: &repository.registry,
            repository: &repository.name,
            what: format!("blob {digest}"),
            mirror_of: None,
        };
        let path = format!("v2/{}/blobs/{}", repository.name, digest);
        let response = self
            .send(
                &ctx,
                &[scope_push(&repository.name)],
                true,
                budget,
                None,
                &|http, base| http.head(join(base, &path)),
            )
            .await?;
        match response.status() {
            s if s.is_success() => Ok(Some(
                response
                    .headers()
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.status_error(&ctx, response).await),
        }
    }

    /// Location of a new upload session (after POST or a refused mount).
    fn upload_location(
        &self,
        ctx: &Ctx<'_>,
        base: &Url,
        response: &reqwest::Response,
    ) -> Result<Url, Error> {
        let value = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        base.join(value).map_err(|_| Error::BadHeader {
            registry: ctx.registry.to_string(),
            repository: ctx.repository.to_string(),
            what: ctx.what.clone(),
            header: "Location",
            value: value.to_string(),
        })
    }

    /// Asks the registry to mount blob `digest` into `repository` from
    /// `from` (another repository of the same registry), without
    /// uploading anything: `true` when it did; `false` when it would not
    /// (it then opened an upload session, which is left to expire).
    pub async fn mount_blob(
        &self,
        repository: &Repository,
        digest: &Digest,
        from: &Repository,
    ) -> Result<bool, Error> {
        if from.registry != repository.registry || from.name == repository.name {
            return Ok(false);
        }
        let mut budget = Budget::new(self.config.timeouts.total);
        let ctx = Ctx {
            registry: &repository.registry,
            repository: &repository.name,
            what: format!("blob {digest}"),
            mirror_of: None,
        };
        let uploads = format!("v2/{}/blobs/uploads/", repository.name);
        let scopes = [scope_push(&repository.name), scope_pull(&from.name)];
        let response = self
            .send(&ctx, &scopes, true, &mut budget, None, &|http, base| {
                let mut url = join(base, &uploads);
                url.query_pairs_mut()
                    .append_pair("mount", &digest.to_string())
                    .append_pair("from", &from.name);
                http.post(url).header(CONTENT_LENGTH, "0")
            })
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => Ok(false),
            _ => Err(self.status_error(&ctx, response).await),
        }
    }

    /// Uploads blob `digest` unless the repository has it; tries a
    /// cross-repository mount from `mount_from` first (same registry only).
    ///
    /// The upload body is held to the speed cutoff
    /// ([`Timeouts::speed_limit`]); everything else (the checks, opening
    /// sessions, response headers, new sessions after a dropped upload) to
    /// [`Timeouts::total`] in all.
    pub async fn push_blob(
        &self,
        repository: &Repository,
        digest: &Digest,
        source: Arc<dyn BlobSource>,
        mount_from: Option<&Repository>,
    ) -> Result<PushOutcome, Error> {
        let mut budget = Budget::new(self.config.timeouts.total);
        if self
            .blob_exists_within(repository, digest, &mut budget)
            .await?
            .is_some()
        {
            return Ok(PushOutcome::Exists);
        }
        let ctx = Ctx {
            registry: &repository.registry,
            repository: &repository.name,
            what: format!("blob {digest}"),
            mirror_of: None,
        };
        let base = self.endpoint(&repository.registry, &budget).await?.base;
        let uploads = format!("v2/{}/blobs/uploads/", repository.name);
        let mut attempts = 0;
        loop {
            let mut session = None;
            if let Some(from) = mount_from
                .filter(|f| f.registry == repository.registry && f.name != repository.name)
            {
                let scopes = [scope_push(&repository.name), scope_pull(&from.name)];
                let response = self
                    .send(&ctx, &scopes, true, &mut budget, None, &|http, base| {
                        let mut url = join(base, &uploads);
                        url.query_pairs_mut()
                            .append_pair("mount", &digest.to_string())
                            .append_pair("from", &from.name);
                        http.post(url).header(CONTENT_LENGTH, "0")
                    })
                    .await?;
                match response.status() {
                    StatusCode::CREATED => return Ok(PushOutcome::Mounted),
                    // The registry could not mount and opened an upload session instead.
                    StatusCode::ACCEPTED => {
                        session = Some(self.upload_location(&ctx, &base, &response)?)
                    }
                    _ => return Err(self.status_error(&ctx, response).await),
                }
            }
            let location = match session {
                Some(location) => location,
                None => {
                    let response = self
                        .send(
                            &ctx,
                            &[scope_push(&repository.name)],
                            true,
                            &mut budget,
                            None,
                            &|http, base| {
                                http.post(join(base, &uploads)).header(CONTENT_LENGTH, "0")
                            },
                        )
                        .await?;
                    if response.status() != StatusCode::ACCEPTED {
                        return Err(self.status_error(&ctx, response).await);
                    }
                    self.upload_location(&ctx, &base, &response)?
                }
            };
            let delay = self.config.retry.backoff(attempts);
            match self
                .upload(&ctx, repository, digest, &source, location, &mut budget)
                .await
            {
                Ok(()) => return Ok(PushOutcome::Uploaded),
                // A failed upload session may hold partial bytes: start a new one.
                Err(err)
                    if err.is_transient()
                        && attempts < self.config.retry.max_retries
                        && delay < budget.remaining() =>
                {
                    tracing::debug!(%digest, error = %err, "upload failed; starting a new session");
                    tokio::time::sleep(delay).await;
                    attempts += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn upload(
        &self,
        ctx: &Ctx<'_>,
        repository: &Repository,
        digest: &Digest,
        source: &Arc<dyn BlobSource>,
        mut location: Url,
        budget: &mut Budget,
    ) -> Result<(), Error> {
        let size = source.size();
        let scopes = [scope_push(&repository.name)];
        let base = self.endpoint(&repository.registry, budget).await?.base;
        let meter = Arc::new(UploadMeter::default());
        let put_body = match self.config.chunk_size {
            Some(chunk) if chunk > 0 => {
                let mut offset = 0;
                while offset < size {
                    let len = chunk.min(size - offset);
                    let url = location.clone();
                    let response = self
                        .send(ctx, &scopes, false, budget, Some(&meter), &|http, _| {
                            http.patch(url.clone())
                                .header(CONTENT_TYPE, "application/octet-stream")
                                .header(CONTENT_RANGE, format!("{}-{}", offset, offset + len - 1))
                                .header(CONTENT_LENGTH, len)
                                .body(reader_body(source.clone(), offset, len, meter.clone()))
                        })
                        .await?;
                    if response.status() != StatusCode::ACCEPTED {
                        return Err(self.status_error(ctx, response).await);
                    }
                    location = self.upload_location(ctx, &base, &response)?;
                    offset += len;
                }
                false
            }
            _ => true,
        };
        let mut url = location;
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let response = self
            .send(
                ctx,
                &scopes,
                false,
                budget,
                put_body.then_some(&*meter),
                &|http, _| {
                    let request = http
                        .put(url.clone())
                        .header(CONTENT_TYPE, "application/octet-stream");
                    if put_body {
                        request.header(CONTENT_LENGTH, size).body(reader_body(
                            source.clone(),
                            0,
                            size,
                            meter.clone(),
                        ))
                    } else {
                        request.header(CONTENT_LENGTH, 0)
                    }
                },
            )
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(self.status_error(ctx, response).await);
        }
        Ok(())
    }

    /// Uploads a manifest under `tag_or_digest`; returns its digest.
    pub async fn put_manifest(
        &self,
        repository: &Repository,
        tag_or_digest: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest, Error> {
        let ctx = Ctx {
            registry: &repository.registry,
            repository: &repository.name,
            what: format!("manifest {tag_or_digest}"),
            mirror_of: None,
        };
        let path = format!("v2/{}/manifests/{}", repository.name, tag_or_digest);
        // A document: sending it and the answer count against one deadline.
        let mut budget = Budget::new(self.config.timeouts.total);
        let response = self
            .send(
                &ctx,
                &[scope_push(&repository.name)],
                true,
                &mut budget,
                None,
                &|http, base| {
                    http.request(Method::PUT, join(base, &path))
                        .header(CONTENT_TYPE, media_type)
                        .body(bytes.clone())
                },
            )
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(self.status_error(&ctx, response).await);
        }
        Ok(Digest::of(&bytes))
    }
}

fn join(base: &Url, path: &str) -> Url {
    // `path` is built from validated repository names, tags and digests.
    base.join(path).unwrap_or_else(|_| base.clone())
}

fn urlencode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let policy = RetryPolicy {
            max_retries: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(5),
        };
        assert_eq!(policy.backoff(0), Duration::from_millis(100));
        assert_eq!(policy.backoff(2), Duration::from_millis(400));
        assert_eq!(policy.backoff(30), Duration::from_secs(1));
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let mut headers = HeaderMap::new();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_400);
        assert_eq!(retry_after(&headers, now), None);
        headers.insert(RETRY_AFTER, "100000".parse().unwrap());
        assert_eq!(
            retry_after(&headers, now),
            Some(Duration::from_secs(100_000))
        );
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(80)));
        // A date in the past: retry now.
        let later = now + Duration::from_secs(3600);
        assert_eq!(retry_after(&headers, later), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers, now), None);
    }

    #[test]
    fn registry_messages_are_extracted() {
        let body = br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry","detail":"x"}]}"#;
        assert_eq!(
            registry_message(body),
            "BLOB_UNKNOWN blob unknown to registry"
        );
        assert_eq!(registry_message(b"plain text"), "plain text");
    }

    #[test]
    fn memory_blob_opens_at_offset() {
        let blob = MemoryBlob(Bytes::from_static(b"hello world"));
        let mut text = String::new();
        blob.open(6).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "world");
    }
}
