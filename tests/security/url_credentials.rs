//! Issue: `ADD https://user:password@host/file` showed the password in the
//! build's progress, the `-v` log and the image's history.
//!
//! A local HTTP server that requires basic auth serves the file: the
//! download must still succeed (the credentials go in an `Authorization`
//! header), while the password appears in no output (plain progress, `-v`,
//! `-vv`, a failed download's error), no history entry, no
//! `--metadata-file`, no file of the store and no `--output type=oci`
//! export. The history shows the URL masked as BuildKit masks URLs.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::common::kiln;
use crate::{require_root, text, Fixture};

const USER: &str = "probe-user";
const PASSWORD: &str = "pw-5f8e2c9a17";
const BODY: &[u8] = b"downloaded with basic auth\n";

/// Serves [`BODY`] to requests whose `Authorization` is `USER:PASSWORD`,
/// 401 to others, on 127.0.0.1 until the test ends; keeps each request's
/// head.
fn serve_with_basic_auth(requests: Arc<Mutex<Vec<String>>>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let expected = format!(
        "authorization: basic {}",
        base64_encode(format!("{USER}:{PASSWORD}").as_bytes())
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 8192];
            let n = stream.read(&mut request).unwrap_or(0);
            let head = String::from_utf8_lossy(&request[..n]).into_owned();
            let authorized = head.lines().any(|l| l.eq_ignore_ascii_case(&expected));
            requests.lock().unwrap().push(head);
            if authorized {
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    BODY.len()
                );
                let _ = stream.write_all(BODY);
            } else {
                let _ = write!(
                    stream,
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"probe\"\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        }
    });
    format!("127.0.0.1:{}", addr.port())
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Every file under `dir` (not following symlinks) that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let bytes = std::fs::read(&path).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

#[test]
fn url_password_is_in_no_output_history_metadata_or_file() {
    require_root!();
    let fixture = Fixture::new();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let host = serve_with_basic_auth(requests.clone());
    let url = format!("http://{USER}:{PASSWORD}@{host}/files/data.txt");
    let shown = format!("http://xxxxx:xxxxx@{host}/files/data.txt");
    let ctx = fixture.context(
        "ctx",
        &[(
            "Dockerfile",
            &format!(
                "FROM busybox\nADD {url} /fetched/\n\
                 RUN grep -q 'with basic auth' /fetched/data.txt\n"
            ),
        )],
    );
    // The search finds the password where it is: the Dockerfile.
    assert_eq!(
        files_holding(&ctx, PASSWORD.as_bytes()).len(),
        1,
        "the search does not find the password in the Dockerfile"
    );
    let out = fixture.dir("out");
    let metadata = out.join("metadata.json");
    let oci = out.join("image.tar");
    let root = fixture.root();
    let mut outputs = Vec::new();
    for verbosity in [None, Some("-v"), Some("-vv")] {
        let mut args = vec!["build", "--no-cache", "-t", "probe:1"];
        args.extend(verbosity);
        let meta_arg = metadata.to_str().unwrap().to_string();
        let oci_arg = format!("type=oci,tar=false,dest={}", oci.display());
        args.extend(["--metadata-file", &meta_arg, "--output", &oci_arg]);
        // The store as well: the history is read from it.
        args.extend(["--output", "type=image"]);
        args.push(ctx.to_str().unwrap());
        let result = kiln(&root, &args);
        assert!(result.status.success(), "{args:?}: {}", text(&result));
        outputs.push((args.join(" "), text(&result)));
    }
    // A download that fails (wrong password) names the URL masked too.
    let wrong = fixture.context(
        "wrong",
        &[(
            "Dockerfile",
            &format!("FROM busybox\nADD http://{USER}:wrong-{PASSWORD}@{host}/files/data.txt /\n"),
        )],
    );
    let failed = kiln(&root, &["build", "-v", wrong.to_str().unwrap()]);
    assert!(!failed.status.success(), "{}", text(&failed));
    assert!(
        text(&failed).contains("401"),
        "the download was to be refused: {}",
        text(&failed)
    );
    outputs.push(("build with a wrong password".into(), text(&failed)));

    // The download itself sent the credentials, in a header.
    let heads = requests.lock().unwrap().clone();
    assert!(
        heads.iter().any(|h| h.starts_with("GET /files/data.txt ")),
        "{heads:?}"
    );
    for head in &heads {
        assert!(
            !head.contains(PASSWORD),
            "the request line or a header: {head}"
        );
    }

    for (what, output) in &outputs {
        assert!(
            !output.contains(PASSWORD),
            "{what} shows the password:\n{output}"
        );
    }
    // The plain progress names the step with the URL masked.
    assert!(
        outputs[0].1.contains(&format!("ADD {shown} /fetched/")),
        "{}",
        outputs[0].1
    );
    let inspect = kiln(&root, &["inspect", "probe:1"]);
    let inspect = text(&inspect);
    assert!(
        inspect.contains(&format!("ADD {shown} /fetched/ # buildkit")),
        "the history has no masked ADD:\n{inspect}"
    );
    assert!(!inspect.contains(PASSWORD), "{inspect}");
    let meta = std::fs::read_to_string(&metadata).unwrap();
    assert!(!meta.contains(PASSWORD), "{meta}");
    let in_files = files_holding(&root, PASSWORD.as_bytes());
    assert!(
        in_files.is_empty(),
        "the store holds the password: {in_files:?}"
    );
    let in_export = files_holding(&out, PASSWORD.as_bytes());
    assert!(
        in_export.is_empty(),
        "the export holds the password: {in_export:?}"
    );
}
