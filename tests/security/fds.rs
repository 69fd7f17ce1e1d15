//! Issue: descriptors kiln's caller left open reached the container. With
//! `exec 7</host/dir; kiln run IMAGE ls /proc/self/fd/7/` the container saw
//! the host directory, and `/proc/self/fd/7/../..` walked the host's root,
//! read-write.
//!
//! Each test starts kiln with descriptors 3–1023 all open, without
//! close-on-exec, on a host directory holding a marker file, and looks for
//! the marker through every `/proc/self/fd/N` inside the container.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

use crate::common::kiln_command;
use crate::{text, Fixture};

/// The probe: prints `LEAK n` for each descriptor through which the marker
/// file is reachable, then `probed` (written `prob''ed`, so that only the
/// probe's output has the word, not its command line that a build's
/// progress echoes).
const PROBE: &str = "n=3; while [ $n -lt 1024 ]; do \
     [ -e /proc/self/fd/$n/kiln-fd-marker ] && echo LEAK $n; \
     [ -e /proc/self/fd/$n/../kiln-fd-marker ] && echo LEAK $n; \
     n=$((n+1)); done; echo prob''ed";

/// `kiln --root ROOT ARGS…` started with descriptors 3–1023 open on
/// `host_dir` (inheritable, as a shell's `exec 7<dir` leaves them).
fn kiln_with_open_fds(fixture: &Fixture, host_dir: &std::path::Path, args: &[&str]) -> Output {
    let dir = std::fs::File::open(host_dir).expect("open host dir");
    let source = dir.as_raw_fd();
    let mut command: Command = kiln_command();
    command
        .arg("--root")
        .arg(fixture.root())
        .args(args)
        .env("KILN_PROGRESS", "plain")
        .stdin(Stdio::null());
    // SAFETY: between fork and exec the closure only calls dup2 and fcntl
    // (async-signal-safe) on descriptor numbers, allocating nothing; rustix
    // would need an OwnedFd for each target number, which only unsafe code
    // makes.
    unsafe {
        command.pre_exec(move || {
            for fd in 3..1024 {
                if fd != source && libc::dup2(source, fd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // dup2 leaves the copies inheritable; the original too.
            if libc::fcntl(source, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = command.output().expect("run kiln");
    drop(dir);
    out
}

fn host_dir_with_marker(fixture: &Fixture) -> std::path::PathBuf {
    let dir = fixture.dir("host-secret");
    std::fs::write(dir.join("kiln-fd-marker"), "host").expect("write marker");
    dir
}

/// Whether `text` has a `LEAK <n>` the probe printed (its own command line,
/// echoed in the build's progress, has `LEAK $n`).
fn leaked(text: &str) -> bool {
    text.match_indices("LEAK ")
        .any(|(at, m)| text[at + m.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

fn assert_probe_clean(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", text(out));
    assert!(
        stdout.contains("probed") || stderr.contains("probed"),
        "the probe did not run to its end:\n{}",
        text(out)
    );
    assert!(
        !leaked(&stdout) && !leaked(&stderr),
        "an inherited descriptor reached the container:\n{}",
        text(out)
    );
}

#[test]
fn kiln_run_passes_no_inherited_descriptor() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    let host = host_dir_with_marker(&fixture);
    let out = kiln_with_open_fds(
        &fixture,
        &host,
        &["run", "--rm", "busybox:latest", "sh", "-c", PROBE],
    );
    assert_probe_clean(&out);
}

#[test]
fn a_run_step_sees_no_inherited_descriptor() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    let host = host_dir_with_marker(&fixture);
    let context = fixture.context(
        "ctx",
        &[(
            "Dockerfile",
            &format!("FROM busybox:latest\nRUN {PROBE} > /probe.txt; cat /probe.txt\n"),
        )],
    );
    let out = kiln_with_open_fds(
        &fixture,
        &host,
        &[
            "build",
            "--no-cache",
            "-t",
            "probe:latest",
            context.to_str().expect("utf-8 path"),
        ],
    );
    assert_probe_clean(&out);
}

/// The probe itself finds a descriptor that does reach a process: a plain
/// `sh` started the same way sees the marker. Without this, a probe that
/// could never print LEAK would pass the tests above.
#[test]
fn the_probe_finds_an_inherited_descriptor_on_the_host() {
    let fixture_dir = tempfile::tempdir().expect("tempdir");
    let host = fixture_dir.path().join("host");
    std::fs::create_dir(&host).expect("mkdir");
    std::fs::write(host.join("kiln-fd-marker"), "host").expect("write marker");
    let dir = std::fs::File::open(&host).expect("open host dir");
    let source = dir.as_raw_fd();
    let mut command = Command::new("sh");
    command.arg("-c").arg(PROBE);
    // SAFETY: as in kiln_with_open_fds: only dup2 between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself would leave close-on-exec set: clear it then.
            let done = if source == 7 {
                libc::fcntl(7, libc::F_SETFD, 0)
            } else {
                libc::dup2(source, 7)
            };
            if done < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = command.output().expect("run sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(leaked(&stdout), "{}", text(&out));
}
