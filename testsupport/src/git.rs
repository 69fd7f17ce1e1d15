//! A `git://` server for tests: the repositories under a directory served
//! on a free loopback port, each connection handed to `git daemon --inetd`
//! (no port race, nothing left running once the test process ends), and
//! [`git_in`] to make the repositories.

use std::path::Path;

/// Serves the repositories under `base` over `git://127.0.0.1:<port>/`
/// (`--export-all`, `--base-path=base`) until the test process ends.
/// Returns the port.
pub fn serve_git(base: &Path) -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let base = base.to_path_buf();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let Ok(reader) = stream.try_clone() else {
                continue;
            };
            let child = std::process::Command::new("git")
                .arg("daemon")
                .arg("--inetd")
                .arg("--export-all")
                .arg(format!("--base-path={}", base.display()))
                .arg(&base)
                .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                    reader,
                )))
                .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                    stream,
                )))
                .stderr(std::process::Stdio::null())
                .spawn();
            if let Ok(mut child) = child {
                std::thread::spawn(move || child.wait());
            }
        }
    });
    Ok(port)
}

/// Runs git in `dir` as a fixed author (a test fixture: panics with git's
/// stderr on failure); returns its trimmed stdout.
pub fn git_in(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=kiln",
            "-c",
            "user.email=kiln@example.invalid",
        ])
        .args(args)
        .output()
        .expect("git is needed (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
