//! The docker daemon `kiln build --load` (a `type=docker` output without
//! `dest`) loads the image into, as buildx's docker driver does: found as
//! the docker CLI finds it (`DOCKER_HOST`, else the context `DOCKER_CONTEXT`
//! or `config.json`'s `currentContext` names, else
//! `unix:///var/run/docker.sock`), reached over its Unix socket with the
//! two calls this needs, `GET /_ping` and `POST /images/load`, in plain
//! HTTP/1.1. A daemon reached over TCP or SSH is refused, naming where the
//! address came from. The daemon's API is the one HTTP kiln speaks besides
//! the registries' and downloads'; it is here because this crate is the
//! one that speaks HTTP.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::Digest;

/// Why the docker daemon could not be found or reached, or did not load
/// the image: a message naming the daemon and what failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DaemonError(String);

type Result<T> = std::result::Result<T, DaemonError>;

impl From<std::io::Error> for DaemonError {
    fn from(e: std::io::Error) -> Self {
        DaemonError(e.to_string())
    }
}

macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(DaemonError(format!($($arg)*)))
    };
}

/// What failed, put before why: `what: why`.
trait Context<T> {
    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
    fn context(self, what: &str) -> Result<T>
    where
        Self: Sized,
    {
        self.with_context(|| what.to_string())
    }
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| DaemonError(format!("{}: {e}", what())))
    }
}

impl<T> Context<T> for Option<T> {
    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.ok_or_else(|| DaemonError(what().to_string()))
    }
}

/// The docker CLI's default daemon address.
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// How long the daemon may take to answer a ping.
const PING_TIMEOUT: Duration = Duration::from_secs(30);

/// A docker daemon on a Unix socket, and the lines it answered loads with.
#[derive(Debug)]
pub struct Daemon {
    /// `unix:///…` as given.
    host: String,
    /// Where the address came from (`DOCKER_HOST`, a docker context, the
    /// default), for errors.
    source: String,
    socket: PathBuf,
    /// What the daemon said of each load (`Loaded image: app:1`).
    loaded: Mutex<Vec<String>>,
    /// Whether the caller was interrupted: a load stops waiting then.
    canceled: fn() -> bool,
}

impl Daemon {
    /// The daemon the docker CLI would use here.
    pub fn from_env() -> Result<Daemon> {
        // Trimmed, as the docker CLI reads them.
        let env = |key: &str| {
            let value = std::env::var(key).ok()?;
            Some(value.trim().to_string()).filter(|v| !v.is_empty())
        };
        let config_dir = crate::auth::default_config_dir();
        let (host, source) = match env("DOCKER_HOST") {
            Some(host) => (host, "DOCKER_HOST".to_string()),
            None => match context_name(env("DOCKER_CONTEXT"), config_dir.as_deref())? {
                Some(context) => {
                    let Some(dir) = config_dir.as_deref() else {
                        bail!(
                            "docker context {context:?}: no docker configuration directory \
                             (set DOCKER_CONFIG or HOME)"
                        );
                    };
                    (
                        context_host(dir, &context)?,
                        format!("docker context {context:?}"),
                    )
                }
                None => (DEFAULT_HOST.to_string(), "the default".to_string()),
            },
        };
        let mut daemon =
            Daemon::at(&host).with_context(|| format!("the docker daemon of {source}"))?;
        daemon.source = source;
        Ok(daemon)
    }

    /// The daemon at `host`, which must be `unix://PATH`.
    pub fn at(host: &str) -> Result<Daemon> {
        let Some(path) = host.strip_prefix("unix://") else {
            bail!(
                "{host}: kiln loads images into a docker daemon on a Unix socket \
                 (unix://PATH) only; for another daemon, write the archive \
                 (-o type=docker,dest=image.tar) and run docker load -i image.tar"
            );
        };
        // The docker CLI's default socket then.
        let path = match path {
            "" => DEFAULT_HOST.trim_start_matches("unix://"),
            path => path,
        };
        Ok(Daemon {
            host: host.to_string(),
            source: "given".to_string(),
            socket: PathBuf::from(path),
            loaded: Mutex::new(Vec::new()),
            canceled: || false,
        })
    }

    /// Stops waiting for the daemon once `canceled` says so (checked every
    /// second while the archive goes out and the answer comes back).
    pub fn canceled_by(mut self, canceled: fn() -> bool) -> Daemon {
        self.canceled = canceled;
        self
    }

    /// Whether the daemon answers, before a build spends its time.
    pub fn ping(&self) -> Result<()> {
        let (status, body) = self
            .request("GET", "/_ping", None, Some(PING_TIMEOUT))
            .with_context(|| self.unreachable())?;
        if status != 200 {
            bail!(
                "{}: the docker daemon answered /_ping with {status}: {}",
                self.host,
                String::from_utf8_lossy(&body).trim()
            );
        }
        Ok(())
    }

    /// Loads the docker-archive at `archive`; returns what the daemon
    /// said it loaded, and keeps it for [`Daemon::loaded`].
    pub fn load(&self, archive: &Path) -> Result<Vec<String>> {
        let file = std::fs::File::open(archive)
            .with_context(|| format!("opening {}", archive.display()))?;
        let size = file.metadata()?.len();
        let (status, body) = self
            .request("POST", "/images/load?quiet=1", Some((file, size)), None)
            .with_context(|| self.unreachable())?;
        let lines = load_answer(status, &body).with_context(|| self.host.clone())?;
        if let Ok(mut loaded) = self.loaded.lock() {
            loaded.extend(lines.iter().cloned());
        }
        Ok(lines)
    }

    /// Every line the daemon answered loads with so far.
    pub fn loaded(&self) -> Vec<String> {
        self.loaded.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn unreachable(&self) -> String {
        format!(
            "cannot reach the docker daemon at {} (from {})",
            self.host, self.source
        )
    }

    /// One HTTP/1.1 request, its body streamed from a file of `size`
    /// bytes; the status and the whole (unchunked) body of the answer.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(std::fs::File, u64)>,
        timeout: Option<Duration>,
    ) -> Result<(u16, Vec<u8>)> {
        let mut stream = UnixStream::connect(&self.socket)
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        // Short waits, so that an interrupted kiln stops waiting.
        stream.set_read_timeout(Some(POLL))?;
        stream.set_write_timeout(Some(POLL))?;
        let length = body.as_ref().map_or(0, |(_, size)| *size);
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: kiln/{}\r\n\
             Content-Type: application/x-tar\r\nContent-Length: {length}\r\n\
             Connection: close\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        let canceled = self.canceled;
        let sent = send(
            &mut stream,
            head.as_bytes(),
            body.map(|(file, _)| file),
            canceled,
        );
        if sent.is_err() {
            // The daemon may have answered before reading it all (a refusal,
            // a full disk) and closed: its answer says more than the error.
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
        let answer =
            receive(&mut stream, timeout, canceled).and_then(|bytes| parse_response(&bytes));
        match (sent, answer) {
            (_, Ok(parsed)) => Ok(parsed),
            (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        }
    }
}

/// How long one read or write waits before kiln looks whether it was
/// interrupted.
const POLL: Duration = Duration::from_secs(1);

fn interrupted(canceled: fn() -> bool) -> Result<()> {
    match canceled() {
        true => bail!("canceled"),
        false => Ok(()),
    }
}

fn waited(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

/// Writes `head`, then `body`, stopping when kiln is interrupted.
fn send(
    stream: &mut UnixStream,
    head: &[u8],
    body: Option<std::fs::File>,
    canceled: fn() -> bool,
) -> Result<()> {
    let mut pending = head.to_vec();
    let mut body = body;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let mut written = 0;
        while written < pending.len() {
            interrupted(canceled)?;
            match stream.write(&pending[written..]) {
                Ok(0) => bail!("the daemon closed the connection"),
                Ok(n) => written += n,
                Err(e) if waited(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let Some(file) = body.as_mut() else {
            return Ok(());
        };
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        pending.clear();
        pending.extend_from_slice(&buf[..n]);
    }
}

/// Reads the answer to its end, stopping when kiln is interrupted or, with
/// `timeout`, when the daemon says nothing for that long.
fn receive(
    stream: &mut UnixStream,
    timeout: Option<Duration>,
    canceled: fn() -> bool,
) -> Result<Vec<u8>> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let mut quiet = Duration::ZERO;
    loop {
        interrupted(canceled)?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(answer),
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                quiet = Duration::ZERO;
            }
            Err(e) if waited(&e) => {
                quiet += POLL;
                if timeout.is_some_and(|t| quiet >= t) {
                    bail!("no answer in {}s", quiet.as_secs());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The docker context to use, as the docker CLI picks it: `DOCKER_CONTEXT`,
/// else `config.json`'s `currentContext`; none for `default`.
fn context_name(from_env: Option<String>, config_dir: Option<&Path>) -> Result<Option<String>> {
    let name = match from_env {
        Some(name) => Some(name),
        None => match config_dir.map(|d| d.join("config.json")) {
            Some(path) if path.is_file() => {
                // One that cannot be read names no context: the docker CLI
                // warns and uses the default one.
                let config = std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|text| {
                        serde_json::from_str::<serde_json::Value>(&text).map_err(|e| e.to_string())
                    });
                match config {
                    Ok(config) => config["currentContext"].as_str().map(str::to_string),
                    Err(e) => {
                        tracing::warn!("{}: {e}; using the default docker context", path.display());
                        None
                    }
                }
            }
            _ => None,
        },
    };
    Ok(name.filter(|n| !n.is_empty() && n != "default"))
}

/// The docker endpoint of the context `name`, from its metadata
/// (`contexts/meta/<sha256 of the name>/meta.json` under the docker CLI's
/// configuration directory).
fn context_host(config_dir: &Path, name: &str) -> Result<String> {
    let id = Digest::of(name.as_bytes());
    let path = config_dir
        .join("contexts/meta")
        .join(id.hex())
        .join("meta.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("docker context {name:?}: reading {}", path.display()))?;
    let meta: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("docker context {name:?}: reading {}", path.display()))?;
    match meta["Endpoints"]["docker"]["Host"].as_str() {
        Some(host) if !host.is_empty() => Ok(host.to_string()),
        _ => bail!(
            "docker context {name:?}: {} names no docker endpoint",
            path.display()
        ),
    }
}

/// The status and body of an HTTP/1.1 answer read whole (a chunked body
/// joined).
fn parse_response(answer: &[u8]) -> Result<(u16, Vec<u8>)> {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the daemon's answer has no end of headers")?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("the daemon's answer starts {status_line:?}"))?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(key, value)| {
            key.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = &answer[split + 4..];
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk of the daemon's answer has no size line")?;
        let size_text = String::from_utf8_lossy(&rest[..end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("a chunk size of {size_text:?}"))?;
        rest = &rest[end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        let chunk = rest
            .get(..size)
            .context("the daemon's answer ends within a chunk")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

/// What `POST /images/load` answered: the lines of its `stream` messages,
/// or the error it gave (an `error` message, or a status that is not 200
/// with docker's `{"message": …}`).
fn load_answer(status: u16, body: &[u8]) -> Result<Vec<String>> {
    let messages = serde_json::Deserializer::from_slice(body).into_iter::<serde_json::Value>();
    let mut lines = Vec::new();
    for message in messages {
        let Ok(message) = message else {
            break;
        };
        if let Some(error) = message["errorDetail"]["message"]
            .as_str()
            .or(message["error"].as_str())
            .or(message["message"].as_str().filter(|_| status != 200))
        {
            bail!("the docker daemon could not load the image: {error}");
        }
        if let Some(stream) = message["stream"].as_str() {
            lines.extend(
                stream
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from),
            );
        }
    }
    if status != 200 {
        bail!(
            "the docker daemon answered the load with {status}: {}",
            String::from_utf8_lossy(body).trim()
        );
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_answers_are_joined() {
        let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                       5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n";
        let (status, body) = parse_response(answer).unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"hello world"[..]));
        let plain = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno";
        assert_eq!(parse_response(plain).unwrap(), (404, b"no".to_vec()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn load_answers_give_their_lines_or_their_error() {
        let ok = br#"{"stream":"Loaded image: app:1\n"}{"stream":"Loaded image: app:2\n"}"#;
        assert_eq!(
            load_answer(200, ok).unwrap(),
            ["Loaded image: app:1", "Loaded image: app:2"]
        );
        let failed = br#"{"errorDetail":{"message":"unexpected EOF"},"error":"unexpected EOF"}"#;
        let err = load_answer(200, failed).unwrap_err().to_string();
        assert!(err.contains("unexpected EOF"), "{err}");
        let refused = br#"{"message":"client version 1.99 is too new"}"#;
        let err = load_answer(400, refused).unwrap_err().to_string();
        assert!(err.contains("too new"), "{err}");
    }

    #[test]
    fn only_unix_sockets_are_reached() {
        assert_eq!(
            Daemon::at("unix:///run/d.sock").unwrap().socket,
            Path::new("/run/d.sock")
        );
        // The docker CLI's default socket, as it reads `unix://`.
        assert_eq!(
            Daemon::at("unix://").unwrap().socket,
            Path::new("/var/run/docker.sock")
        );
        let err = Daemon::at("tcp://127.0.0.1:2375").unwrap_err().to_string();
        assert!(err.contains("Unix socket"), "{err}");
    }

    #[test]
    fn a_context_names_its_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let id = Digest::of(b"ci");
        let meta = dir.path().join("contexts/meta").join(id.hex());
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(
            meta.join("meta.json"),
            r#"{"Name":"ci","Endpoints":{"docker":{"Host":"unix:///ci.sock"}}}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"currentContext":"ci"}"#).unwrap();
        let name = context_name(None, Some(dir.path())).unwrap();
        assert_eq!(name.as_deref(), Some("ci"));
        assert_eq!(context_host(dir.path(), "ci").unwrap(), "unix:///ci.sock");
        // The environment's wins; `default` is no context of its own.
        assert_eq!(
            context_name(Some("default".into()), Some(dir.path())).unwrap(),
            None
        );
    }
}
