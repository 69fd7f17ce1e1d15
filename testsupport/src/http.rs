//! A small HTTP/1.1 file server for tests: fixed paths and bodies on a free
//! loopback port, optionally behind basic auth, recording each request's
//! head (so a test can count fetches or look for leaked credentials).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use base64::Engine;

/// Serves its files until the test process ends.
pub struct FileServer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// `127.0.0.1:<port>`.
    pub host: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FileServer {
    /// Serves `files` (path → body) to every client.
    pub fn start(files: BTreeMap<String, Vec<u8>>) -> std::io::Result<FileServer> {
        FileServer::serve(files, None)
    }

    /// Serves `files` only to requests with basic auth `user:password`;
    /// others get 401.
    pub fn start_with_basic_auth(
        files: BTreeMap<String, Vec<u8>>,
        user: &str,
        password: &str,
    ) -> std::io::Result<FileServer> {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        FileServer::serve(files, Some(format!("authorization: basic {token}")))
    }

    fn serve(
        files: BTreeMap<String, Vec<u8>>,
        auth_line: Option<String>,
    ) -> std::io::Result<FileServer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let head = read_head(&mut stream);
                if let Ok(mut seen) = seen.lock() {
                    seen.push(head.clone());
                }
                let authorized = auth_line
                    .as_ref()
                    .is_none_or(|line| head.lines().any(|l| l.eq_ignore_ascii_case(line)));
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let response = match (authorized, files.get(&path)) {
                    (false, _) => (
                        "401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"test\"",
                        &[][..],
                    ),
                    (true, Some(body)) => ("200 OK", body.as_slice()),
                    (true, None) => ("404 Not Found", &[][..]),
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    response.0,
                    response.1.len()
                );
                let _ = stream.write_all(response.1);
            }
        });
        Ok(FileServer {
            url: format!("http://{addr}"),
            host: addr.to_string(),
            requests,
        })
    }

    /// The heads (request line and headers) of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// The request line and headers, up to the blank line.
fn read_head(stream: &mut std::net::TcpStream) -> String {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&request).into_owned()
}
