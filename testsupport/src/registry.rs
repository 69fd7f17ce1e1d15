//! The distribution registry (`docker-registry`), started for one test.

use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::run;
use crate::tls::TestCa;
use crate::token::{TokenServer, ISSUER, SERVICE};
use crate::{free_port, Result, TestSupportError};

/// The program the Debian package `docker-registry` installs.
pub const REGISTRY_PROGRAM: &str = "docker-registry";

/// How clients authenticate.
enum Mode {
    Plain,
    TlsBasic { username: String, password: String },
    Token { username: String, password: String },
    TlsClientCert,
}

/// A running registry on 127.0.0.1; killed (and waited for) on drop.
pub struct RegistryServer {
    pub addr: SocketAddr,
    /// `127.0.0.1:PORT`, the registry part of image references.
    pub host: String,
    /// The CA to trust, in TLS mode.
    pub ca_cert: Option<PathBuf>,
    /// Username and password, in basic and token modes.
    pub credentials: Option<(String, String)>,
    /// The token server, in token mode.
    pub token_server: Option<TokenServer>,
    /// A client certificate and its key (PEM files) the registry accepts,
    /// in client-certificate mode.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    child: Child,
    dir: TempDir,
}

impl RegistryServer {
    /// Plain HTTP, no authentication.
    pub fn start_plain() -> Result<RegistryServer> {
        Self::start(Mode::Plain)
    }

    /// HTTPS with a certificate from a CA made for this registry
    /// ([`RegistryServer::ca_cert`]), and htpasswd basic auth.
    pub fn start_tls_basic(username: &str, password: &str) -> Result<RegistryServer> {
        Self::start(Mode::TlsBasic {
            username: username.into(),
            password: password.into(),
        })
    }

    /// Plain HTTP with token auth: anonymous clients may pull, `username` may push.
    pub fn start_token(username: &str, password: &str) -> Result<RegistryServer> {
        Self::start(Mode::Token {
            username: username.into(),
            password: password.into(),
        })
    }

    /// HTTPS with a certificate from a CA made for this registry
    /// ([`RegistryServer::ca_cert`]) that also signs the client certificates
    /// the registry requires ([`RegistryServer::client_cert`]); no other
    /// authentication.
    pub fn start_tls_client_cert() -> Result<RegistryServer> {
        Self::start(Mode::TlsClientCert)
    }

    /// The registry's storage directory (`docker/registry/v2/...` lives here).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// What the registry logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `scheme://host` of the API.
    pub fn url(&self) -> String {
        let scheme = if self.ca_cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.host)
    }

    fn start(mode: Mode) -> Result<RegistryServer> {
        // A port freed by `free_port` can be taken by someone else (another
        // test's registry, say) before the registry binds it: the registry
        // then exits with "address already in use", and we try a new port.
        let mut last = None;
        for _ in 0..5 {
            match Self::start_once(&mode) {
                Ok(server) => return Ok(server),
                Err(TestSupportError::RegistryStart { reason, log })
                    if log.contains("address already in use") =>
                {
                    last = Some(TestSupportError::RegistryStart { reason, log });
                }
                Err(other) => return Err(other),
            }
        }
        Err(last.unwrap_or_else(|| TestSupportError::RegistryStart {
            reason: "no free port".into(),
            log: String::new(),
        }))
    }

    fn start_once(mode: &Mode) -> Result<RegistryServer> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-registry-")
            .tempdir()
            .map_err(TestSupportError::io("creating the registry directory"))?;
        let port = free_port()?;
        let host = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)
            .map_err(TestSupportError::io("creating registry storage"))?;
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {host}\n  secret: kiln-test-secret\n",
            storage.display()
        );
        let auth = Auth::configure(mode, dir.path(), &mut config)?;
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, &config)
            .map_err(TestSupportError::io("writing the registry config"))?;
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path)
            .map_err(TestSupportError::io("creating the registry log"))?;
        let log_err = log
            .try_clone()
            .map_err(TestSupportError::io("cloning the log handle"))?;
        let child = Command::new(REGISTRY_PROGRAM)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| TestSupportError::MissingProgram {
                program: REGISTRY_PROGRAM.into(),
                source,
            })?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut server = RegistryServer {
            addr,
            host,
            ca_cert: auth.ca_cert,
            credentials: auth.credentials,
            token_server: auth.token_server,
            client_cert: auth.client_cert,
            child,
            dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Ready means: our registry logged that it bound the port (so a
    /// listener someone else started on a reused port cannot pass for it),
    /// and `GET /v2/` there is answered by a distribution registry (the
    /// `Docker-Distribution-Api-Version` header; in TLS mode, Go's answer
    /// to plain HTTP on an HTTPS port, since this probe speaks no TLS).
    fn wait_ready(&mut self) -> Result<()> {
        const LIMIT: Duration = Duration::from_secs(30);
        let deadline = Instant::now() + LIMIT;
        let listening = format!("listening on {}", self.host);
        let mut last_probe = String::from("no answer yet");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(TestSupportError::RegistryStart {
                    reason: format!("exited with {status}"),
                    log: self.log(),
                });
            }
            if self.log().contains(&listening) {
                match probe_v2(self.addr, self.ca_cert.is_some()) {
                    Ok(()) => return Ok(()),
                    Err(why) => last_probe = why,
                }
            }
            if Instant::now() > deadline {
                return Err(TestSupportError::RegistryStart {
                    reason: format!(
                        "not serving the registry API on {} after {LIMIT:?}: {last_probe}",
                        self.addr
                    ),
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Files under the storage directory whose path contains `needle` (debugging aid).
    pub fn storage_files(&self, needle: &str) -> Vec<PathBuf> {
        let mut found = Vec::new();
        collect(&self.storage_dir(), needle, &mut found);
        found
    }
}

/// One plain-HTTP `GET /v2/` to `addr`; Ok when a registry answered.
fn probe_v2(addr: SocketAddr, tls: bool) -> std::result::Result<(), String> {
    use std::io::Write as _;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    let timeout = Some(Duration::from_secs(5));
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    let request = format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    // An HTTPS server answers and closes after the first bytes: a failed
    // write still leaves its answer to read.
    let written = stream.write_all(request.as_bytes());
    let mut answer = Vec::new();
    // A read error after some bytes (a reset once the answer is sent) still
    // leaves the answer to look at.
    let read = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let is_registry = if tls {
        text.contains("HTTP request to an HTTPS server")
    } else {
        head.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("docker-distribution-api-version:")
        })
    };
    if is_registry {
        Ok(())
    } else {
        Err(format!(
            "GET /v2/ answered {:?} (write: {written:?}, read: {read:?})",
            head.chars().take(200).collect::<String>()
        ))
    }
}

fn collect(dir: &Path, needle: &str, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, needle, found);
        } else if path.to_string_lossy().contains(needle) {
            found.push(path);
        }
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("KILN_TEST_REGISTRY_LOG").is_some() {
            let mut text = String::new();
            if let Ok(mut file) = std::fs::File::open(self.dir.path().join("registry.log")) {
                let _ = file.read_to_string(&mut text);
            }
            eprintln!("--- registry {} log ---\n{text}", self.host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn probe_refuses_a_listener_that_is_not_a_registry() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                .unwrap();
        });
        let err = probe_v2(addr, false).unwrap_err();
        assert!(err.contains("200 OK"), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn started_registries_answer_the_probe_in_every_mode() {
        let plain = RegistryServer::start_plain().unwrap();
        probe_v2(plain.addr, false).unwrap();
        let tls = RegistryServer::start_tls_basic("user", "secret").unwrap();
        probe_v2(tls.addr, true).unwrap();
        // A TLS registry is not mistaken for a plain one, nor the reverse.
        assert!(probe_v2(tls.addr, false).is_err());
        assert!(probe_v2(plain.addr, true).is_err());
        let token = RegistryServer::start_token("user", "secret").unwrap();
        probe_v2(token.addr, false).unwrap();
    }
}

/// What a mode adds to a registry: its TLS and auth settings go into the
/// config; the CA, credentials, token server and client certificate a
/// client needs come back.
#[derive(Default)]
struct Auth {
    ca_cert: Option<PathBuf>,
    credentials: Option<(String, String)>,
    token_server: Option<TokenServer>,
    client_cert: Option<(PathBuf, PathBuf)>,
}

impl Auth {
    fn configure(mode: &Mode, dir: &Path, config: &mut String) -> Result<Auth> {
        let mut auth = Auth::default();
        match mode {
            Mode::Plain => {}
            Mode::TlsBasic { username, password } => {
                let ca = TestCa::create(dir, "kiln test registry CA")?;
                let cert = ca.issue(dir, "registry", &["127.0.0.1", "localhost"])?;
                config.push_str(&format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    cert.cert_pem.display(),
                    cert.key_pem.display()
                ));
                let htpasswd = dir.join("htpasswd");
                let line = run(Command::new("htpasswd").args(["-Bbn", username, password]))?;
                std::fs::write(&htpasswd, line)
                    .map_err(TestSupportError::io("writing htpasswd"))?;
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                    htpasswd.display()
                ));
                auth.ca_cert = Some(ca.ca_cert);
                auth.credentials = Some((username.clone(), password.clone()));
            }
            Mode::Token { username, password } => {
                let tokens_dir = dir.join("token");
                std::fs::create_dir_all(&tokens_dir)
                    .map_err(TestSupportError::io("creating the token dir"))?;
                let server = TokenServer::start(
                    &tokens_dir,
                    &[(username.as_str(), password.as_str())],
                    &["pull"],
                )?;
                config.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                server.realm(),
                server.root_cert_bundle.display()
            ));
                auth.credentials = Some((username.clone(), password.clone()));
                auth.token_server = Some(server);
            }
            Mode::TlsClientCert => {
                let ca = TestCa::create(dir, "kiln test registry CA")?;
                let cert = ca.issue(dir, "registry", &["127.0.0.1", "localhost"])?;
                let client = ca.issue(dir, "client", &["kiln-test-client"])?;
                config.push_str(&format!(
                    "  tls:\n    certificate: {}\n    key: {}\n    clientcas:\n      - {}\n",
                    cert.cert_pem.display(),
                    cert.key_pem.display(),
                    ca.ca_cert.display()
                ));
                auth.ca_cert = Some(ca.ca_cert);
                auth.client_cert = Some((client.cert_pem, client.key_pem));
            }
        }
        Ok(auth)
    }
}
