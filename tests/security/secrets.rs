//! Issue: `--secret id=X,env=VAR` wrote the value to
//! `$TMPDIR/kiln-secret-<pid>-<id>`, removed only when kiln returned:
//! SIGINT, SIGTERM or SIGKILL during the build left it there.
//!
//! Each test starts a build whose RUN reads the secret, prints its sha256
//! and sleeps; once that line shows in the progress, it sends kiln the
//! signal, waits for kiln to end, and looks in /tmp, $TMPDIR, /dev/shm, the
//! runtime's scratch bases and the store root for the secret's bytes and
//! for files named `kiln-secret-*` ([`probe`]). `the_probe_finds_a_secret_left_on_disk`
//! shows the probe finding what the old code left.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::kiln_command;
use crate::{require_root, Fixture};

/// A value found nowhere else: the probe looks for these bytes.
fn secret_value() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("probe-value-{nanos:x}-{:x}", std::process::id())
}

/// Seconds since the epoch (what `st_ctime` counts).
fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What the probe found: paths with why (`name` or `content`).
#[derive(Debug, Default)]
struct Findings(Vec<(PathBuf, &'static str)>);

impl Findings {
    fn has(&self, path: &Path, why: &str) -> bool {
        self.0.iter().any(|(p, w)| p == path && *w == why)
    }
}

/// The places a secret could be left on disk: /tmp, $TMPDIR, /dev/shm,
/// the runtime's other scratch bases (/run/kiln, $XDG_RUNTIME_DIR/kiln,
/// where a run's secret tmpfs is mounted) and `store`. Every regular file under `store`, and elsewhere every one
/// created or written since `since` (its ctime, which no one can set back:
/// only those can come from this test's build), is checked by name
/// (`kiln-secret-*`) and by content. Symlinks are not followed; files that
/// vanish meanwhile (other tests') are skipped.
fn probe(value: &[u8], store: &Path, since: i64) -> Findings {
    let mut roots = vec![
        (PathBuf::from("/tmp"), false),
        (PathBuf::from("/dev/shm"), false),
        (store.to_path_buf(), true),
    ];
    if let Some(tmpdir) = std::env::var_os("TMPDIR") {
        roots.push((PathBuf::from(tmpdir), false));
    }
    roots.push((PathBuf::from("/run/kiln"), false));
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        roots.push((PathBuf::from(dir).join("kiln"), false));
    }
    let mut found = Findings::default();
    for (root, every_file) in roots {
        let mut stack = vec![root];
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
                    continue;
                }
                if !meta.is_file() || (!every_file && meta.ctime() < since) {
                    continue;
                }
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("kiln-secret-")
                {
                    found.0.push((path.clone(), "name"));
                }
                if let Ok(bytes) = std::fs::read(&path) {
                    if bytes.windows(value.len()).any(|w| w == value) {
                        found.0.push((path, "content"));
                    }
                }
            }
        }
    }
    found.0.sort();
    found.0.dedup();
    found
}

/// Held by each test: the probe of one must not see what
/// `the_probe_finds_a_secret_left_on_disk` plants.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn the_probe_finds_a_secret_left_on_disk() {
    require_root!();
    let _one = one_at_a_time();
    let fixture = Fixture::new();
    let since = now_secs() - 1;
    let value = secret_value();
    // What kiln used to leave: the value in $TMPDIR/kiln-secret-<pid>-<id>.
    let left = tempfile::tempdir().unwrap();
    let old_file = left
        .path()
        .join(format!("kiln-secret-{}-probe", std::process::id()));
    std::fs::write(&old_file, &value).unwrap();
    // The bytes alone, under other names, in /dev/shm and in the store.
    let mut shm = tempfile::Builder::new()
        .prefix("probe-")
        .tempfile_in("/dev/shm")
        .unwrap();
    std::io::Write::write_all(&mut shm, format!("x{value}y").as_bytes()).unwrap();
    let in_store = fixture.root().join("blobs").join("probe-copy");
    std::fs::write(&in_store, &value).unwrap();
    let found = probe(value.as_bytes(), &fixture.root(), since);
    assert!(found.has(&old_file, "name"), "{found:?}");
    assert!(found.has(&old_file, "content"), "{found:?}");
    assert!(found.has(shm.path(), "content"), "{found:?}");
    assert!(found.has(&in_store, "content"), "{found:?}");
}

/// Starts `kiln build` with the secret `probe` taken from the environment;
/// returns kiln and the lines of its progress (stderr), read on a thread.
fn start_build(fixture: &Fixture, value: &str) -> (Child, mpsc::Receiver<String>) {
    let ctx = fixture.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\n\
             RUN --mount=type=secret,id=probe,required=true \
             sha256sum /run/secrets/probe && echo read-done && sleep 60\n",
        )],
    );
    let mut child = kiln_command()
        .arg("--root")
        .arg(fixture.root())
        .args(["build", "--secret", "id=probe,env=KILN_PROBE_SECRET"])
        .arg(&ctx)
        .env("KILN_PROBE_SECRET", value)
        .env("KILN_PROGRESS", "plain")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kiln");
    let stderr = child.stderr.take().expect("stderr");
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    (child, lines)
}

/// Waits for the RUN's own output `read-done` (`#N 0.123 read-done`, not
/// the echo of its command); returns the progress so far. The sha256 the
/// RUN printed must be the value's: the secret was mounted.
fn wait_for_the_run(lines: &mpsc::Receiver<String>, value: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no read-done ({e}):\n{}", seen.join("\n")));
        let output = line
            .split_once(' ')
            .and_then(|(_, rest)| rest.split_once(' '))
            .map(|(_, text)| text.to_string());
        seen.push(line);
        if output.as_deref() == Some("read-done") {
            break;
        }
    }
    let digest = kiln_layers::Digest::of(value.as_bytes());
    let digest = digest.hex();
    assert!(
        seen.iter()
            .any(|l| l.contains(&format!("{digest}  /run/secrets/probe"))),
        "the RUN did not read the secret:\n{}",
        seen.join("\n")
    );
    seen
}

/// The whole test for one signal.
fn interrupted_build_leaves_no_secret(signal: libc::c_int) {
    require_root!();
    let _one = one_at_a_time();
    let fixture = Fixture::new();
    let since = now_secs() - 1;
    let value = secret_value();
    let (mut child, lines) = start_build(&fixture, &value);
    let seen = wait_for_the_run(&lines, &value);
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill with the pid of the child this test started and has not
    // reaped yet.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for kiln") {
            break status;
        }
        assert!(Instant::now() < deadline, "kiln did not end after {signal}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // SIGKILL ends kiln at once; SIGINT and SIGTERM cancel the build, which
    // unwinds and exits 130 as buildx does for a canceled build.
    let ended_as_expected = if signal == libc::SIGKILL {
        status.signal() == Some(signal)
    } else {
        status.code() == Some(130)
    };
    assert!(
        ended_as_expected,
        "kiln was to be interrupted mid-RUN by signal {signal} ({status}):\n{}",
        seen.join("\n")
    );
    let found = probe(value.as_bytes(), &fixture.root(), since);
    assert!(
        found.0.is_empty(),
        "the secret was left on disk after signal {signal}: {found:?}"
    );
}

#[test]
fn sigint_mid_run_leaves_no_secret_on_disk() {
    interrupted_build_leaves_no_secret(libc::SIGINT);
}

#[test]
fn sigterm_mid_run_leaves_no_secret_on_disk() {
    interrupted_build_leaves_no_secret(libc::SIGTERM);
}

#[test]
fn sigkill_mid_run_leaves_no_secret_on_disk() {
    interrupted_build_leaves_no_secret(libc::SIGKILL);
}
