//! What the network tests reach: the Debian mirror this machine's apt
//! sources name (the one outside address the test machines reach, over
//! plain http), and a server on the host's loopback that a private
//! network must not reach.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;

use crate::{Result, TestSupportError};

/// The first `http://` mirror in the host's apt sources
/// (`/etc/apt/sources.list`, `/etc/apt/sources.list.d/*.list` and
/// `*.sources`), e.g. `http://deb.example.org/debian`, and a file every
/// Debian mirror has under it (`dists/<suite>/Release`), as a whole URL.
pub fn debian_mirror_release() -> Result<String> {
    let mut files = vec![Path::new("/etc/apt/sources.list").to_path_buf()];
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let name = file.to_string_lossy();
        if !(name.ends_with(".list") || name.ends_with(".sources")) {
            continue;
        }
        if let Some(url) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|text| release_url(&text))
        {
            return Ok(url);
        }
    }
    Err(TestSupportError::Io {
        what: "finding an http:// Debian mirror in the apt sources".into(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "none"),
    })
}

/// The Release file URL of the first http source in a `.list` or
/// deb822 `.sources` text.
fn release_url(text: &str) -> Option<String> {
    let mut uri: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            // deb [options] URI SUITE COMPONENTS...
            ["deb", rest @ ..] => {
                let rest: Vec<&str> = rest
                    .iter()
                    .copied()
                    .skip_while(|w| w.starts_with('['))
                    .collect();
                let rest: Vec<&str> = rest
                    .into_iter()
                    .skip_while(|w| !w.contains("://"))
                    .collect();
                if let [url, suite, ..] = rest.as_slice() {
                    if url.starts_with("http://") {
                        return Some(format!(
                            "{}/dists/{suite}/Release",
                            url.trim_end_matches('/')
                        ));
                    }
                }
            }
            ["URIs:", url, ..] => uri = Some(url.to_string()),
            ["Suites:", suite, ..] => {
                if let Some(url) = uri.as_deref().filter(|u| u.starts_with("http://")) {
                    return Some(format!(
                        "{}/dists/{suite}/Release",
                        url.trim_end_matches('/')
                    ));
                }
            }
            [] => uri = None,
            _ => {}
        }
    }
    None
}

/// An HTTP server on the host's 127.0.0.1 that answers every request with
/// `body`, until the test process ends. Returns its port.
pub fn loopback_server(body: &'static str) -> Result<u16> {
    let file = ServedFile {
        body: std::sync::Arc::new(std::sync::Mutex::new(body.as_bytes().to_vec())),
        last_modified: None,
    };
    Ok(file.serve()?.port())
}

/// What [`ServedFile::serve`] answers every request with: the bytes
/// `body` holds at the time of the request (a test may change them), and
/// a `Last-Modified` header when given (an HTTP date).
pub struct ServedFile {
    pub body: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    pub last_modified: Option<&'static str>,
}

impl ServedFile {
    /// Serves on the host's 127.0.0.1 until the test process ends;
    /// returns the address.
    pub fn serve(self) -> Result<std::net::SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(TestSupportError::io("binding 127.0.0.1:0"))?;
        let addr = listener
            .local_addr()
            .map_err(TestSupportError::io("listener address"))?;
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let body = match self.body.lock() {
                    Ok(body) => body.clone(),
                    Err(poisoned) => poisoned.into_inner().clone(),
                };
                let last_modified = self
                    .last_modified
                    .map(|date| format!("Last-Modified: {date}\r\n"))
                    .unwrap_or_default();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{last_modified}Connection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(&body);
            }
        });
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::release_url;

    #[test]
    fn release_url_from_list_and_deb822_sources() {
        assert_eq!(
            release_url("deb [arch=amd64] http://m.example/debian bookworm main\n"),
            Some("http://m.example/debian/dists/bookworm/Release".into())
        );
        assert_eq!(
            release_url("deb https://s.example/debian bookworm main\n"),
            None
        );
        let deb822 = "Types: deb\n# comment\nURIs: http://m.example/debian/\n\
                      Suites: bookworm bookworm-updates\nComponents: main\n";
        assert_eq!(
            release_url(deb822),
            Some("http://m.example/debian/dists/bookworm/Release".into())
        );
    }
}
