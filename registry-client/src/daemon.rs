//! The docker daemon `kiln build --load` (a `type=docker` output without
//! `dest`) loads the image into, as buildx's docker driver does: found as
//! the docker CLI finds it (`DOCKER_HOST`, else the context `DOCKER_CONTEXT`
//! or `config.json`'s `currentContext` names, else
//! `unix:///var/run/docker.sock`), reached over its Unix socket or over TCP
//! (`tcp://HOST:PORT`; with TLS when `DOCKER_TLS_VERIFY` or `DOCKER_TLS`
//! is set, or the context has TLS files or `skip-tls-verify`, with the CA
//! and client certificate the docker CLI would send, as a docker-in-docker
//! service of a CI job is reached) with the two calls this needs, `GET /_ping` and
//! `POST /images/load`, in HTTP/1.1. A daemon reached over SSH is refused,
//! naming where the address came from. The daemon's API is the one HTTP kiln speaks besides
//! the registries' and downloads'; it is here because this crate is the
//! one that speaks HTTP.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

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

/// The docker CLI's default address when TLS is asked for and no host is
/// given (`opts.ParseHost` with `defaultToTLS`).
const DEFAULT_TLS_HOST: &str = "tcp://localhost:2376";

/// The port of a `tcp://` address that gives none (the docker CLI's
/// `defaultHTTPPort`, with or without TLS).
const DEFAULT_TCP_PORT: u16 = 2375;

/// How long connecting, a TLS handshake or a ping may take (the docker
/// CLI's dialer waits 30 s too).
const PING_TIMEOUT: Duration = Duration::from_secs(30);

/// A docker daemon on a Unix socket or over TCP, and the lines it answered
/// loads with.
#[derive(Debug)]
pub struct Daemon {
    /// The address as given (`unix:///…`, `tcp://…`), a password in it
    /// masked.
    host: String,
    /// Where the address came from (`DOCKER_HOST`, a docker context, the
    /// default), for errors.
    source: String,
    endpoint: Endpoint,
    /// What the daemon said of each load (`Loaded image: app:1`).
    loaded: Mutex<Vec<String>>,
    /// Whether the caller was interrupted: a load stops waiting then.
    canceled: fn() -> bool,
    /// How long connecting, the TLS handshake and a ping may take.
    timeout: Duration,
}

/// Where the daemon listens, and how it is spoken to there.
#[derive(Debug)]
enum Endpoint {
    Unix(PathBuf),
    Tcp(TcpEndpoint),
}

/// A daemon over TCP: plain HTTP, or HTTPS with the TLS material the
/// docker CLI would use.
#[derive(Debug)]
struct TcpEndpoint {
    host: String,
    port: u16,
    /// The path the daemon's API is under (`tcp://HOST:PORT/PATH`), without
    /// its last `/`.
    base: String,
    tls: Option<Tls>,
}

/// A TLS configuration, and what it was made of, for errors.
#[derive(Debug)]
struct Tls {
    config: Arc<rustls::ClientConfig>,
    /// `DOCKER_TLS_VERIFY, certificates from DIR`, and whether a client
    /// certificate is sent.
    said: String,
}

/// The TLS material for a daemon over TCP, as the docker CLI gathers it:
/// from `DOCKER_CERT_PATH` (else its configuration directory) when
/// `DOCKER_TLS_VERIFY` or `DOCKER_TLS` is set, or from a docker context's
/// TLS files.
#[derive(Debug, Default)]
struct TlsMaterial {
    /// PEM of the CAs to trust instead of the system's.
    ca: Option<Vec<u8>>,
    /// PEM of the client certificate and its key, sent when both are there.
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    /// Whether the daemon's certificate goes unchecked (`DOCKER_TLS`
    /// without `DOCKER_TLS_VERIFY`, a context's `skip-tls-verify`).
    skip_verify: bool,
    /// Where it came from, for errors.
    source: String,
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
        // A DOCKER_HOST of spaces alone still picks the default context,
        // and then the default address, as in the docker CLI.
        let docker_host = std::env::var_os("DOCKER_HOST").filter(|v| !v.is_empty());
        let context = match docker_host {
            Some(_) => None,
            None => context_name(env("DOCKER_CONTEXT"), config_dir.as_deref())?,
        };
        let (host, source, tls) = match (env("DOCKER_HOST"), context) {
            (None, Some(context)) => {
                let Some(dir) = config_dir.as_deref() else {
                    bail!(
                        "docker context {context:?}: no docker configuration directory \
                         (set DOCKER_CONFIG or HOME)"
                    );
                };
                let (host, tls) = context_endpoint(dir, &context)?;
                (host, format!("docker context {context:?}"), tls)
            }
            // DOCKER_HOST, else the default: the docker CLI's default
            // context, which reads the TLS variables.
            (host, _) => {
                let tls = env_tls(|key| std::env::var_os(key), config_dir.as_deref())?;
                let source = match docker_host {
                    Some(_) => "DOCKER_HOST",
                    None => "the default",
                };
                let host = host.unwrap_or_else(|| match tls {
                    Some(_) => DEFAULT_TLS_HOST.to_string(),
                    None => DEFAULT_HOST.to_string(),
                });
                (host, source.to_string(), tls)
            }
        };
        let mut daemon = Daemon::with_tls(&host, tls)
            .with_context(|| format!("the docker daemon of {source}"))?;
        daemon.source = source;
        Ok(daemon)
    }

    /// The daemon at `host` (`unix://PATH`, `tcp://HOST:PORT`, or
    /// `HOST:PORT`), with `tls` for an address over TCP (unused for a
    /// socket, as by the docker CLI).
    fn with_tls(host: &str, tls: Option<TlsMaterial>) -> Result<Daemon> {
        let endpoint = match parse_host(host)? {
            Address::Unix(path) => Endpoint::Unix(path),
            Address::Tcp { host, port, base } => Endpoint::Tcp(TcpEndpoint {
                host,
                port,
                base,
                tls: match tls {
                    Some(material) => Some(Tls {
                        config: Arc::new(
                            client_config(&material)
                                .with_context(|| format!("TLS ({})", material.source))?,
                        ),
                        said: material.said(),
                    }),
                    None => None,
                },
            }),
        };
        Ok(Daemon {
            host: kiln_reference::redact_credentials(host),
            source: "given".to_string(),
            endpoint,
            loaded: Mutex::new(Vec::new()),
            canceled: || false,
            timeout: PING_TIMEOUT,
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
            .request("GET", "/_ping", None, Some(self.timeout))
            .with_context(|| self.unreachable())?;
        if status != 200 {
            let body = String::from_utf8_lossy(&body);
            // Go's HTTPS server answers plain HTTP so.
            let context = self.source.starts_with("docker context");
            let hint = match (body.contains("HTTPS server"), context) {
                (true, false) => {
                    " (for a daemon that requires TLS, set DOCKER_TLS_VERIFY=1 and \
                     DOCKER_CERT_PATH to the directory of its ca.pem, cert.pem and key.pem)"
                }
                (true, true) => {
                    " (for a daemon that requires TLS, give the context its certificates: \
                     docker context update NAME --docker host=…,ca=…,cert=…,key=…)"
                }
                (false, _) => "",
            };
            bail!(
                "{} (from {}): the docker daemon answered /_ping with {status}: {}{hint}",
                self.host,
                self.source,
                body.trim()
            );
        }
        Ok(())
    }

    /// Loads the docker-archive `archive` gives, read to its end and sent
    /// as it comes (a chunked upload, as buildx streams it); returns what
    /// the daemon said it loaded, and keeps it for [`Daemon::loaded`].
    pub fn load(&self, archive: &mut dyn Read) -> Result<Vec<String>> {
        let (status, body) = self
            .request("POST", "/images/load?quiet=1", Some(archive), None)
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
        let tls = match &self.endpoint {
            Endpoint::Tcp(TcpEndpoint { tls: Some(tls), .. }) => format!("; TLS: {}", tls.said),
            _ => String::new(),
        };
        format!(
            "cannot reach the docker daemon at {} (from {}{tls})",
            self.host, self.source
        )
    }

    /// One HTTP/1.1 request, its body (if any) read from `body` and sent
    /// in chunks as it comes; the status and the whole (unchunked) body of
    /// the answer.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&mut dyn Read>,
        timeout: Option<Duration>,
    ) -> Result<(u16, Vec<u8>)> {
        let (mut stream, host_header, base) = self.connect()?;
        let length = match body {
            Some(_) => "Transfer-Encoding: chunked",
            None => "Content-Length: 0",
        };
        let head = format!(
            "{method} {base}{path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: kiln/{}\r\n\
             Content-Type: application/x-tar\r\n{length}\r\n\
             Connection: close\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        let canceled = self.canceled;
        let sent = send(&mut stream, head.as_bytes(), body, canceled);
        if sent.is_err() {
            // The daemon may have answered before reading it all (a refusal,
            // a full disk) and closed: its answer says more than the error.
            stream.shutdown_write();
        }
        let answer =
            receive(&mut stream, timeout, canceled).and_then(|bytes| parse_response(&bytes));
        match (sent, answer) {
            (_, Ok(parsed)) => Ok(parsed),
            (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        }
    }

    /// A connection to the daemon, with the `Host` header and the path
    /// prefix requests on it take.
    fn connect(&self) -> Result<(Connection, String, &str)> {
        match &self.endpoint {
            Endpoint::Unix(socket) => {
                let stream = UnixStream::connect(socket)
                    .with_context(|| format!("connecting to {}", socket.display()))?;
                // Short waits, so that an interrupted kiln stops waiting.
                stream.set_read_timeout(Some(POLL))?;
                stream.set_write_timeout(Some(POLL))?;
                Ok((Connection::Unix(stream), "docker".to_string(), ""))
            }
            Endpoint::Tcp(tcp) => {
                let address = join_host_port(&tcp.host, tcp.port);
                let stream = connect_tcp(&tcp.host, tcp.port, self.timeout)
                    .with_context(|| format!("connecting to {address}"))?;
                stream.set_read_timeout(Some(POLL))?;
                stream.set_write_timeout(Some(POLL))?;
                let connection = match &tcp.tls {
                    None => Connection::Tcp(stream),
                    Some(tls) => {
                        let name = ServerName::try_from(tcp.host.clone())
                            .with_context(|| format!("{:?} as a TLS server name", tcp.host))?;
                        let session = rustls::ClientConnection::new(tls.config.clone(), name)
                            .context("starting TLS")?;
                        let mut stream = rustls::StreamOwned::new(session, stream);
                        handshake(&mut stream, self.timeout, self.canceled)?;
                        Connection::Tls(Box::new(stream))
                    }
                };
                Ok((connection, address, &tcp.base))
            }
        }
    }
}

/// Completes the TLS handshake, waiting at most `timeout` for the daemon's
/// side of it (a port that accepts and never answers would hold the ping
/// forever otherwise).
fn handshake(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    timeout: Duration,
    canceled: fn() -> bool,
) -> Result<()> {
    let mut quiet = Duration::ZERO;
    while stream.conn.is_handshaking() {
        interrupted(canceled)?;
        match stream.conn.complete_io(&mut stream.sock) {
            Ok(_) => quiet = Duration::ZERO,
            Err(e) if waited(&e) => {
                quiet += POLL;
                if quiet >= timeout {
                    bail!("no TLS handshake in {}s", quiet.as_secs());
                }
            }
            Err(e) => return Err(e).context("TLS handshake"),
        }
    }
    Ok(())
}

/// A connection to the daemon: a Unix socket, TCP, or TLS over TCP.
enum Connection {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Connection {
    /// Says that nothing more will be sent, so that the daemon stops
    /// waiting for the rest of an upload and answers. Over TLS: what
    /// rustls still holds and its close_notify, as far as the socket
    /// takes them, then the socket's own shutdown; the answer is read all
    /// the same ([`Read`] on it never writes).
    fn shutdown_write(&mut self) {
        let _ = match self {
            Connection::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            Connection::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Connection::Tls(s) => {
                s.conn.send_close_notify();
                while s.conn.wants_write() {
                    match s.conn.write_tls(&mut s.sock) {
                        Ok(n) if n > 0 => {}
                        _ => break,
                    }
                }
                s.sock.shutdown(std::net::Shutdown::Write)
            }
        };
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Connection::Unix(s) => s.read(buf),
            Connection::Tcp(s) => s.read(buf),
            Connection::Tls(s) => read_tls(s, buf),
        }
    }
}

/// Reads what the daemon sent over TLS without writing anything (rustls'
/// own stream first sends what it still holds, which after a failed send
/// fails again, and the daemon's early answer would be lost). The request
/// is flushed whole before its answer is read ([`send`]).
fn read_tls(
    s: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    loop {
        match s.conn.reader().read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            done => return done,
        }
        // Nothing decrypted yet: more records from the socket (its time
        // out comes back as an error for the caller to retry).
        s.conn.read_tls(&mut s.sock)?;
        s.conn
            .process_new_packets()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Connection::Unix(s) => s.write(buf),
            Connection::Tcp(s) => s.write(buf),
            Connection::Tls(s) => match s.write(buf)? {
                // rustls' queue is full (the socket took part of it): send
                // what it holds, then the caller tries again.
                0 if !buf.is_empty() => {
                    s.flush()?;
                    Err(std::io::ErrorKind::WouldBlock.into())
                }
                n => Ok(n),
            },
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Connection::Unix(s) => s.flush(),
            Connection::Tcp(s) => s.flush(),
            Connection::Tls(s) => s.flush(),
        }
    }
}

/// `host:port`, an IPv6 address in brackets.
fn join_host_port(host: &str, port: u16) -> String {
    match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    }
}

/// The first of `host`'s addresses that accepts a connection in time.
fn connect_tcp(host: &str, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = None;
    for address in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the host")
    }))
}

/// A daemon address, as the docker CLI's `opts.ParseHost` reads it.
#[derive(Debug, PartialEq)]
enum Address {
    Unix(PathBuf),
    Tcp {
        host: String,
        port: u16,
        base: String,
    },
}

/// Reads `unix://PATH` (the default socket when PATH is empty),
/// `tcp://HOST:PORT/PATH` (`localhost` and port 2375 when left out) or
/// `HOST:PORT` alone (TCP). Other schemes are refused.
fn parse_host(host: &str) -> Result<Address> {
    // What errors show of it: a password masked.
    let shown = kiln_reference::redact_credentials(host);
    let refused = || {
        DaemonError(format!(
            "{shown}: kiln loads images into a docker daemon on a Unix socket or over TCP \
             (unix://PATH, tcp://HOST:PORT) only; for another daemon, write the archive \
             (-o type=docker,dest=image.tar) and run docker load -i image.tar"
        ))
    };
    let (scheme, rest) = match host.split_once("://") {
        Some((scheme, rest)) => (scheme, rest),
        None => ("tcp", host),
    };
    match scheme {
        "unix" => {
            if rest.contains("://") {
                bail!("{shown}: not a Unix socket address");
            }
            Ok(Address::Unix(PathBuf::from(match rest {
                "" => DEFAULT_HOST.trim_start_matches("unix://"),
                path => path,
            })))
        }
        "tcp" => parse_tcp(rest).with_context(|| format!("{shown}: not a daemon address")),
        _ => Err(refused()),
    }
}

/// `HOST:PORT/PATH` of a `tcp://` address, as `opts.ParseTCPAddr` reads it.
fn parse_tcp(address: &str) -> Result<Address> {
    if address.contains("://") {
        bail!("a second scheme");
    }
    // The URL's host, then its path; a query or fragment is not part of it.
    let address = address.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = match address.find('/') {
        Some(at) => address.split_at(at),
        None => (address, ""),
    };
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']').context("no closing ]")?;
            // `[::1]:` takes the default port; `[::1]` alone is refused, as
            // by the docker CLI.
            (host, after.strip_prefix(':').context("no port after ]")?)
        }
        None => match authority.split_once(':') {
            // More than one colon and no brackets: an IPv6 address alone.
            Some((_, port)) if port.contains(':') => (authority, ""),
            Some((host, port)) => (host, port),
            None => (authority, ""),
        },
    };
    let host = match host {
        "" => "localhost",
        host => host,
    };
    let port = match port {
        "" => DEFAULT_TCP_PORT,
        port => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0 && port.bytes().all(|b| b.is_ascii_digit()))
            .with_context(|| format!("port {port:?}"))?,
    };
    Ok(Address::Tcp {
        host: host.to_string(),
        port,
        base: path.trim_end_matches('/').to_string(),
    })
}

/// The TLS material the variables ask for, as the docker CLI's default
/// context reads them: TLS when `DOCKER_TLS_VERIFY` or `DOCKER_TLS` is set
/// (to anything), the daemon checked only with `DOCKER_TLS_VERIFY`;
/// `ca.pem` from `DOCKER_CERT_PATH` (else the configuration directory)
/// must be there, `cert.pem` and `key.pem` are sent when they are.
fn env_tls(
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
    config_dir: Option<&Path>,
) -> Result<Option<TlsMaterial>> {
    let set = |key: &str| var(key).is_some_and(|v| !v.is_empty());
    let verify = set("DOCKER_TLS_VERIFY");
    if !verify && !set("DOCKER_TLS") {
        return Ok(None);
    }
    let variable = match verify {
        true => "DOCKER_TLS_VERIFY",
        false => "DOCKER_TLS",
    };
    let dir = match var("DOCKER_CERT_PATH").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match config_dir {
            Some(dir) => dir.to_path_buf(),
            None => bail!(
                "{variable}: no DOCKER_CERT_PATH and no docker configuration directory \
                 (set DOCKER_CONFIG or HOME) to read ca.pem from"
            ),
        },
    };
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).with_context(|| format!("{variable}: reading {}", path.display()))
    };
    let optional = |name: &str| match dir.join(name).exists() {
        true => read(name).map(Some),
        false => Ok(None),
    };
    Ok(Some(TlsMaterial {
        ca: Some(read("ca.pem")?),
        cert: optional("cert.pem")?,
        key: optional("key.pem")?,
        skip_verify: !verify,
        source: format!("{variable}, certificates from {}", dir.display()),
    }))
}

impl TlsMaterial {
    /// Where it came from, whether the daemon is checked and whether a
    /// client certificate is sent.
    fn said(&self) -> String {
        let checked = match self.skip_verify {
            true => "the daemon's certificate unchecked",
            false => "the daemon's certificate checked",
        };
        let client = match (&self.cert, &self.key) {
            (Some(_), Some(_)) => "a client certificate sent",
            _ => "no client certificate (cert.pem and key.pem) to send",
        };
        format!("{}; {checked}; {client}", self.source)
    }
}

/// A rustls configuration for `material`, as the docker CLI makes its Go
/// one: its CAs (else the system's), its client certificate when it has
/// both halves, no check of the daemon's certificate when it says so.
fn client_config(material: &TlsMaterial) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    // ca.pem is read whether or not it is used, as by the docker CLI; of
    // its certificates, those that can be read count (Go's
    // AppendCertsFromPEM), and one at least must.
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = &material.ca {
        let certs = CertificateDer::pem_slice_iter(pem).filter_map(|cert| cert.ok());
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            bail!("ca.pem holds no certificate");
        }
    }
    let builder = match (material.skip_verify, &material.ca) {
        (true, _) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider))),
        (false, Some(_)) => builder.with_root_certificates(roots),
        (false, None) => {
            // The system's, those rustls cannot read left out, as reqwest
            // leaves them.
            let native = rustls_native_certs::load_native_certs().certs;
            roots.add_parsable_certificates(native);
            builder.with_root_certificates(roots)
        }
    };
    match (&material.cert, &material.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<std::result::Result<Vec<_>, _>>()
                .context("cert.pem")?;
            if chain.is_empty() {
                bail!("cert.pem holds no certificate");
            }
            if String::from_utf8_lossy(key).contains("ENCRYPTED") {
                bail!(
                    "key.pem: the private key is encrypted; the docker CLI and kiln read \
                     unencrypted keys only"
                );
            }
            let key = PrivateKeyDer::from_pem_slice(key).context("key.pem")?;
            builder
                .with_client_auth_cert(chain, key)
                .context("cert.pem and key.pem")
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The daemon's certificate taken unchecked (`DOCKER_TLS` without
/// `DOCKER_TLS_VERIFY`, a context's `skip-tls-verify`), as Go's
/// `InsecureSkipVerify`: its signatures on the handshake are still checked.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
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

/// Writes `head`, then `body` in HTTP/1.1 chunks (the last one empty),
/// stopping when kiln is interrupted.
fn send(
    stream: &mut Connection,
    head: &[u8],
    body: Option<&mut dyn Read>,
    canceled: fn() -> bool,
) -> Result<()> {
    let mut pending = head.to_vec();
    let mut body = body;
    let mut buf = vec![0u8; 256 * 1024];
    let mut ended = false;
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
        let Some(reader) = body.as_mut() else {
            return flush(stream, canceled);
        };
        if ended {
            return flush(stream, canceled);
        }
        let n = loop {
            match reader.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                read => break read.context("reading the archive")?,
            }
        };
        // A chunk: its size in hex, its bytes; the empty one ends the body.
        pending.clear();
        pending.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        pending.extend_from_slice(&buf[..n]);
        pending.extend_from_slice(b"\r\n");
        ended = n == 0;
    }
}

/// Sends what the connection still holds (rustls' queue: its answer is
/// read without writing), stopping when kiln is interrupted.
fn flush(stream: &mut Connection, canceled: fn() -> bool) -> Result<()> {
    loop {
        interrupted(canceled)?;
        match stream.flush() {
            Ok(()) => return Ok(()),
            Err(e) if waited(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads the answer to its end, stopping when kiln is interrupted or, with
/// `timeout`, when the daemon says nothing for that long.
fn receive(
    stream: &mut Connection,
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
            // A TLS peer that closed without saying so: what came is
            // checked as an answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {
                return Ok(answer)
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
/// configuration directory), and its TLS material: the files of
/// `contexts/tls/<sha256 of the name>/docker/` and the endpoint's
/// `SkipTLSVerify`, as `docker context create --docker
/// host=…,ca=…,cert=…,key=…,skip-tls-verify=…` stores them.
fn context_endpoint(config_dir: &Path, name: &str) -> Result<(String, Option<TlsMaterial>)> {
    let id = Digest::of(name.as_bytes());
    let path = config_dir
        .join("contexts/meta")
        .join(id.hex())
        .join("meta.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("docker context {name:?}: reading {}", path.display()))?;
    let meta: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("docker context {name:?}: reading {}", path.display()))?;
    let endpoint = &meta["Endpoints"]["docker"];
    if !endpoint.is_object() {
        bail!(
            "docker context {name:?}: {} names no docker endpoint",
            path.display()
        );
    }
    // No host is the default one, as for the docker CLI.
    let host = match endpoint["Host"].as_str() {
        Some(host) if !host.is_empty() => host.to_string(),
        _ => DEFAULT_HOST.to_string(),
    };
    let skip_verify = endpoint["SkipTLSVerify"].as_bool().unwrap_or(false);
    let dir = config_dir
        .join("contexts/tls")
        .join(id.hex())
        .join("docker");
    let read = |file: &str| {
        let path = dir.join(file);
        match path.exists() {
            true => std::fs::read(&path)
                .with_context(|| format!("docker context {name:?}: reading {}", path.display()))
                .map(Some),
            false => Ok(None),
        }
    };
    let tls = match dir.is_dir() {
        // No files and no skip-tls-verify: plain HTTP.
        false if !skip_verify => None,
        _ => Some(TlsMaterial {
            ca: read("ca.pem")?,
            cert: read("cert.pem")?,
            key: read("key.pem")?,
            skip_verify,
            source: format!(
                "docker context {name:?}, certificates from {}",
                dir.display()
            ),
        }),
    };
    Ok((host, tls))
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
    fn a_body_goes_in_chunks() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut connection = Connection::Unix(ours);
        let mut body: &[u8] = b"hello";
        send(
            &mut connection,
            b"POST / HTTP/1.1\r\n\r\n",
            Some(&mut body),
            || false,
        )
        .unwrap();
        drop(connection);
        let mut sent = Vec::new();
        theirs.read_to_end(&mut sent).unwrap();
        assert_eq!(sent, b"POST / HTTP/1.1\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
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
    fn addresses_are_read_as_the_docker_cli_reads_them() {
        let tcp = |host: &str, port: u16, base: &str| Address::Tcp {
            host: host.to_string(),
            port,
            base: base.to_string(),
        };
        for (given, read) in [
            ("unix:///run/d.sock", Address::Unix("/run/d.sock".into())),
            // The default socket, as `unix://` alone.
            ("unix://", Address::Unix("/var/run/docker.sock".into())),
            ("tcp://docker:2376", tcp("docker", 2376, "")),
            // Port 2375 when none is given, with TLS or not; localhost
            // when no host is.
            ("tcp://docker", tcp("docker", 2375, "")),
            ("tcp://", tcp("localhost", 2375, "")),
            ("tcp://:2376", tcp("localhost", 2376, "")),
            // No scheme is TCP.
            ("127.0.0.1:2375", tcp("127.0.0.1", 2375, "")),
            ("tcp://[::1]:2376", tcp("::1", 2376, "")),
            ("tcp://[::1]:", tcp("::1", 2375, "")),
            ("tcp://::1", tcp("::1", 2375, "")),
            ("tcp://docker:2375/v1/", tcp("docker", 2375, "/v1")),
        ] {
            assert_eq!(parse_host(given).unwrap(), read, "{given}");
        }
        for (given, said) in [
            ("ssh://docker-host", "on a Unix socket or over TCP"),
            (
                "npipe:////./pipe/docker_engine",
                "on a Unix socket or over TCP",
            ),
            ("tcp://docker:port", "port \"port\""),
            ("tcp://docker:0", "port \"0\""),
            ("tcp://http://docker", "a second scheme"),
            ("tcp://[::1", "no closing ]"),
            // As the docker CLI: a bracketed host needs its colon.
            ("tcp://[::1]", "no port after ]"),
            ("tcp://docker:+2375", "port \"+2375\""),
        ] {
            let err = parse_host(given).unwrap_err().to_string();
            assert!(err.contains(said) && err.contains(given), "{given}: {err}");
        }
    }

    #[test]
    fn tls_is_asked_for_as_the_docker_cli_asks_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().to_str().unwrap().to_string();
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            let certs = certs.clone();
            move |key: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.replace("$DIR", &certs).into())
            }
        };
        // Neither variable, or both empty: no TLS.
        assert!(env_tls(vars(&[]), None).unwrap().is_none());
        assert!(
            env_tls(vars(&[("DOCKER_TLS_VERIFY", ""), ("DOCKER_TLS", "")]), None)
                .unwrap()
                .is_none()
        );
        // ca.pem must be there, in DOCKER_CERT_PATH or the configuration
        // directory.
        let err = env_tls(
            vars(&[("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CERT_PATH", "$DIR")]),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("DOCKER_TLS_VERIFY") && err.contains("ca.pem"),
            "{err}"
        );
        std::fs::write(dir.path().join("ca.pem"), "ca").unwrap();
        // Any value asks, "0" too; verified only with DOCKER_TLS_VERIFY; the
        // client certificate only when its files are there.
        let tls = env_tls(
            vars(&[("DOCKER_TLS_VERIFY", "0"), ("DOCKER_CERT_PATH", "$DIR")]),
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(tls.ca.as_deref(), Some(&b"ca"[..]));
        assert!(!tls.skip_verify && tls.cert.is_none() && tls.key.is_none());
        std::fs::write(dir.path().join("cert.pem"), "cert").unwrap();
        std::fs::write(dir.path().join("key.pem"), "key").unwrap();
        let tls = env_tls(vars(&[("DOCKER_TLS", "1")]), Some(dir.path()))
            .unwrap()
            .unwrap();
        assert!(tls.skip_verify);
        assert_eq!(tls.cert.as_deref(), Some(&b"cert"[..]));
        assert_eq!(tls.key.as_deref(), Some(&b"key"[..]));
        assert!(tls.source.contains(&certs), "{}", tls.source);
        // A CA file that holds no certificate is refused when it counts.
        let checked = TlsMaterial {
            ca: tls.ca,
            ..TlsMaterial::default()
        };
        let err = client_config(&checked).unwrap_err().to_string();
        assert!(err.contains("ca.pem holds no certificate"), "{err}");
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
        let (host, tls) = context_endpoint(dir.path(), "ci").unwrap();
        assert_eq!(host, "unix:///ci.sock");
        assert!(tls.is_none());
        // The environment's wins; `default` is no context of its own.
        assert_eq!(
            context_name(Some("default".into()), Some(dir.path())).unwrap(),
            None
        );
        // A context's TLS: its files, and its SkipTLSVerify.
        std::fs::write(
            meta.join("meta.json"),
            r#"{"Name":"ci","Endpoints":{"docker":{"Host":"tcp://d:2376","SkipTLSVerify":true}}}"#,
        )
        .unwrap();
        let (_, tls) = context_endpoint(dir.path(), "ci").unwrap();
        let tls = tls.unwrap();
        assert!(tls.skip_verify && tls.ca.is_none());
        let files = dir
            .path()
            .join("contexts/tls")
            .join(id.hex())
            .join("docker");
        std::fs::create_dir_all(&files).unwrap();
        std::fs::write(files.join("ca.pem"), "ca").unwrap();
        std::fs::write(
            meta.join("meta.json"),
            r#"{"Name":"ci","Endpoints":{"docker":{"Host":"tcp://d:2376"}}}"#,
        )
        .unwrap();
        let (_, tls) = context_endpoint(dir.path(), "ci").unwrap();
        let tls = tls.unwrap();
        assert!(
            tls.source.contains(files.to_str().unwrap()),
            "{}",
            tls.source
        );
        assert!(!tls.skip_verify);
        assert_eq!(tls.ca.as_deref(), Some(&b"ca"[..]));
        assert!(tls.cert.is_none());
        // An endpoint without a host is the default one, as for the docker
        // CLI; a context without a docker endpoint is refused.
        std::fs::write(
            meta.join("meta.json"),
            r#"{"Name":"ci","Endpoints":{"docker":{"SkipTLSVerify":false}}}"#,
        )
        .unwrap();
        assert_eq!(context_endpoint(dir.path(), "ci").unwrap().0, DEFAULT_HOST);
        std::fs::write(meta.join("meta.json"), r#"{"Name":"ci","Endpoints":{}}"#).unwrap();
        let err = context_endpoint(dir.path(), "ci").unwrap_err().to_string();
        assert!(err.contains("names no docker endpoint"), "{err}");
    }

    #[test]
    fn a_tls_handshake_that_gets_no_answer_times_out() {
        // A port that accepts and never answers (a dead port forward).
        let silent = kiln_testsupport::proxy::SilentServer::start().unwrap();
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = kiln_testsupport::tls::TestCa::create(ca_dir.path(), "ca").unwrap();
        let tls = TlsMaterial {
            ca: Some(std::fs::read(&ca.ca_cert).unwrap()),
            source: "a test".into(),
            ..TlsMaterial::default()
        };
        let host = format!("tcp://{}", silent.addr);
        let mut daemon = Daemon::with_tls(&host, Some(tls)).unwrap();
        daemon.timeout = Duration::from_secs(2);
        let err = daemon.ping().unwrap_err().to_string();
        assert!(err.contains("no TLS handshake in 2s"), "{err}");
        assert!(err.contains(&host) && err.contains("TLS: a test"), "{err}");
    }

    /// An archive whose reading fails after `0` bytes, as a writer that
    /// gave up.
    struct Failing(usize);

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("the writer gave up"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(b'x');
            self.0 -= n;
            Ok(n)
        }
    }

    #[test]
    fn over_tls_a_load_that_fails_ends_the_upload() {
        // A TLS stand-in for the daemon: it reads the request until the
        // client's side ends (at most 10 s), then refuses the load, as
        // dockerd refuses an archive cut short.
        let dir = tempfile::tempdir().unwrap();
        let ca = kiln_testsupport::tls::TestCa::create(dir.path(), "ca").unwrap();
        let server = ca.issue(dir.path(), "server", &["127.0.0.1"]).unwrap();
        let certs = CertificateDer::pem_slice_iter(&std::fs::read(&server.cert_pem).unwrap())
            .collect::<std::result::Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(&std::fs::read(&server.key_pem).unwrap()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let serving = std::thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let session = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            let mut tls = rustls::StreamOwned::new(session, socket);
            let mut got = Vec::new();
            let mut buf = [0u8; 64 * 1024];
            let ended = loop {
                match tls.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break true,
                    Err(_) => break false,
                }
            };
            let _ = tls.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 14\r\nConnection: close\r\n\r\n\
                  unexpected EOF",
            );
            tls.conn.send_close_notify();
            let _ = tls.flush();
            (ended, got)
        });
        let tls = TlsMaterial {
            ca: Some(std::fs::read(&ca.ca_cert).unwrap()),
            source: "a test".into(),
            ..TlsMaterial::default()
        };
        let daemon = Daemon::with_tls(&format!("tcp://{address}"), Some(tls)).unwrap();
        let err = daemon.load(&mut Failing(100_000)).unwrap_err().to_string();
        let (ended, got) = serving.join().unwrap();
        assert!(ended, "the upload never ended for the daemon");
        assert!(got.starts_with(b"POST /images/load"));
        assert!(
            err.contains("answered the load with 400: unexpected EOF"),
            "{err}"
        );
    }

    #[test]
    fn a_password_in_the_address_is_not_shown() {
        let daemon = Daemon::with_tls("tcp://me:secret@127.0.0.1:9", None).unwrap();
        let err = daemon.ping().unwrap_err().to_string();
        assert!(
            !err.contains("secret") && err.contains("127.0.0.1:9"),
            "{err}"
        );
        // Nor when the address itself is refused.
        for host in ["tcp://me:secret@docker:abc", "ssh://me:secret@docker"] {
            let err = Daemon::with_tls(host, None).unwrap_err().to_string();
            assert!(!err.contains("secret") && err.contains("docker"), "{err}");
        }
    }
}
