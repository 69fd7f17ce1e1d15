//! A token server for the registry's `auth: token` mode: it checks HTTP
//! basic credentials and signs ES256 JWTs (with an `x5c` chain the registry
//! verifies against its `rootcertbundle`), as Docker Hub's auth service does.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use crate::tls::TestCa;
use crate::{Result, TestSupportError};

/// The JWT issuer the registry is configured to expect.
pub const ISSUER: &str = "kiln-test-token-issuer";
/// The service name the registry announces in its challenge.
pub const SERVICE: &str = "kiln-test-registry";
/// Refresh tokens (Docker's `identitytoken`) are this prefix plus the user name.
pub const REFRESH_TOKEN_PREFIX: &str = "kiln-test-refresh-";

struct Policy {
    users: BTreeMap<String, String>,
    /// Actions granted without credentials (e.g. `["pull"]`).
    anonymous_actions: Vec<String>,
}

struct Signer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    rng: SystemRandom,
}

/// Issues tokens at `http://<addr>/token` until dropped.
pub struct TokenServer {
    pub addr: SocketAddr,
    /// PEM of the CA that signed the token-signing certificate (the registry's `rootcertbundle`).
    pub root_cert_bundle: std::path::PathBuf,
    issued: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Starts a token server; `users` may push and pull, anonymous clients get `anonymous_actions`.
    pub fn start(
        dir: &Path,
        users: &[(&str, &str)],
        anonymous_actions: &[&str],
    ) -> Result<TokenServer> {
        let ca = TestCa::create(dir, "kiln test token CA")?;
        let signing = ca.issue(dir, "token-signer", &["kiln-test-token-signer"])?;
        let rng = SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &signing.key_pkcs8, &rng)
                .map_err(|e| TestSupportError::Signing(e.to_string()))?;
        let signer = Arc::new(Signer {
            key,
            cert_der: signing.cert_der,
            rng,
        });
        let policy = Arc::new(Policy {
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            anonymous_actions: anonymous_actions.iter().map(|a| a.to_string()).collect(),
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(TestSupportError::io("binding the token server"))?;
        let addr = listener
            .local_addr()
            .map_err(TestSupportError::io("token server address"))?;
        let issued = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (issued, refused, stop) = (issued.clone(), refused.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (signer, policy, issued, refused) = (
                        signer.clone(),
                        policy.clone(),
                        issued.clone(),
                        refused.clone(),
                    );
                    std::thread::spawn(move || {
                        let _ = serve(stream, &signer, &policy, &issued, &refused);
                    });
                }
            })
        };
        Ok(TokenServer {
            addr,
            root_cert_bundle: ca.ca_cert,
            issued,
            refused,
            stop,
            thread: Some(thread),
        })
    }

    /// The realm URL for the registry configuration.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The refresh token (`identitytoken` in config.json) this server accepts for `user`.
    pub fn refresh_token(&self, user: &str) -> String {
        format!("{REFRESH_TOKEN_PREFIX}{user}")
    }

    /// Tokens handed out so far.
    pub fn tokens_issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }

    /// Requests refused for bad credentials so far.
    pub fn requests_refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    extra_headers: &str,
    body: &str,
) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// One token request, checked as distribution's token servers check it
/// (method, grant type, credentials, scope) before a token is signed.
/// Test support, longer than kiln's 100-line budget: the checks read in
/// the order the protocol has them.
fn serve(
    mut stream: TcpStream,
    signer: &Signer,
    policy: &Policy,
    issued: &AtomicUsize,
    refused: &AtomicUsize,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_string());
            }
            if name.trim().eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("GET");
    let target = parts.next().unwrap_or("/");
    // GET carries the parameters in the query; the OAuth2 POST (refresh
    // token grant) in a form body.
    let params = if method == "POST" {
        let mut body = vec![0u8; content_length.min(64 * 1024)];
        std::io::Read::read_exact(&mut reader, &mut body)?;
        String::from_utf8_lossy(&body).into_owned()
    } else {
        target
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or("")
            .to_string()
    };
    let mut scopes = Vec::new();
    let mut service = String::new();
    let mut refresh_token = None;
    for pair in params.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "scope" => scopes.push(percent_decode(value)),
            "service" => service = percent_decode(value),
            "refresh_token" => refresh_token = Some(percent_decode(value)),
            _ => {}
        }
    }
    if method == "POST" {
        let user = refresh_token
            .as_deref()
            .and_then(|t| t.strip_prefix(REFRESH_TOKEN_PREFIX))
            .filter(|user| policy.users.contains_key(*user));
        let Some(user) = user else {
            refused.fetch_add(1, Ordering::SeqCst);
            return respond(
                &mut stream,
                "401 Unauthorized",
                "",
                r#"{"error":"invalid_grant"}"#,
            );
        };
        authorization = Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(
                "{user}:{}",
                policy.users.get(user).map(String::as_str).unwrap_or("")
            ))
        ));
    }
    let subject = match authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Basic "))
    {
        Some(encoded) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .unwrap_or_default();
            let (user, pass) = decoded.split_once(':').unwrap_or(("", ""));
            if policy.users.get(user).map(String::as_str) != Some(pass) {
                refused.fetch_add(1, Ordering::SeqCst);
                return respond(
                    &mut stream,
                    "401 Unauthorized",
                    "WWW-Authenticate: Basic realm=\"kiln-test\"\r\n",
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad username or password"}]}"#,
                );
            }
            Some(user.to_string())
        }
        None => None,
    };
    let mut access = Vec::new();
    for scope in scopes.iter().flat_map(|s| s.split(' ')) {
        let mut parts = scope.splitn(3, ':');
        let (Some(kind), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let granted: Vec<&str> = actions
            .split(',')
            .filter(|a| subject.is_some() || policy.anonymous_actions.iter().any(|x| x == a))
            .collect();
        access.push(serde_json::json!({"type": kind, "name": name, "actions": granted}));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": subject.clone().unwrap_or_default(),
        "aud": if service.is_empty() { SERVICE.to_string() } else { service },
        "exp": now + 600,
        "nbf": now - 60,
        "iat": now,
        "jti": format!("{now}-{}", issued.load(Ordering::SeqCst)),
        "access": access,
    });
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&signer.cert_der)],
    });
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let signing_input = format!("{}.{}", b64(&header), b64(&claims));
    let signature = match signer.key.sign(&signer.rng, signing_input.as_bytes()) {
        Ok(signature) => signature,
        Err(_) => return respond(&mut stream, "500 Internal Server Error", "", "{}"),
    };
    let token = format!(
        "{signing_input}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature.as_ref())
    );
    issued.fetch_add(1, Ordering::SeqCst);
    let body =
        serde_json::json!({"token": token, "access_token": token, "expires_in": 600}).to_string();
    respond(&mut stream, "200 OK", "", &body)
}
