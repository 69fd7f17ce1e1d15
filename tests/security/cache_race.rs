//! Issue: a RUN could have a host directory bound into another RUN through
//! a shared cache mount's `source=`. Two RUNs (of one build, or of two
//! builds on one store) can hold a cache with `sharing=shared` at once.
//! The builder resolved `source=` inside the cache, and the runtime then
//! bound it by path: if the other RUN swapped a directory on that path for
//! a symlink to the host's `/some/dir` meanwhile, the bind followed it (the
//! init still sees the host's filesystem then), and the RUN got the host
//! directory, writable, at its target (BuildKit had the same race:
//! CVE-2024-23651).
//!
//! A cache's `source=` is now opened from the cache directory, resolved
//! inside it (`openat2` with `RESOLVE_IN_ROOT`), and the runtime binds
//! that descriptor, never the path: a symlink swapped in is resolved
//! inside the cache, or the RUN fails. The test races one build that
//! keeps swapping the cache's `sub` for a symlink to a host directory
//! against builds that write through `source=sub`, and checks that the
//! host directory got nothing, and that the swapping went on all along.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{kiln, kiln_command};
use crate::{cache_mount_dir, require_namespaces, text, Fixture};

/// Attempts made by the writing builds.
const ATTEMPTS: usize = 40;

/// The swapping RUN: `sub` is a directory, then (briefly) a symlink to
/// `host_dir`, over and over, until the cache has a `stop` file (or a
/// minute went by); it counts its rounds in `rounds`.
fn swapper_dockerfile(host_dir: &Path) -> String {
    format!(
        "FROM busybox:latest\n\
         RUN --mount=type=cache,id=race,target=/c sh -c '\
         mkdir -p /c/sub; n=0; end=$(( $(date +%s) + 60 )); : > /c/swapping; \
         while [ ! -e /c/stop ] && [ $(date +%s) -lt $end ]; do \
         mv /c/sub /c/held; ln -s {} /c/sub; rm /c/sub; mv /c/held /c/sub; \
         n=$((n+1)); echo $n > /c/rounds; done'\n",
        host_dir.display()
    )
}

/// The `written-*` files anywhere under `dir`, symlinks not followed.
fn files_named_written(dir: &Path) -> usize {
    let mut count = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(entry.path()),
                Ok(t) if t.is_file() => {
                    count +=
                        usize::from(entry.file_name().to_string_lossy().starts_with("written-"))
                }
                _ => {}
            }
        }
    }
    count
}

/// The swapping RUN's round count (read again while it is being
/// rewritten: `echo` truncates the file first).
/// The swapping build: stopped (through the cache's `stop` file, then
/// killed) when the test ends, even by a panic.
struct Swapper {
    child: std::process::Child,
    cache: Option<PathBuf>,
}

impl Swapper {
    /// Lets the swapping RUN end and waits for its build.
    fn stop(&mut self) -> std::process::ExitStatus {
        if let Some(cache) = &self.cache {
            std::fs::write(cache.join("stop"), "").expect("stop the swapping");
        }
        self.child.wait().expect("wait for the swapping build")
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(cache) = &self.cache {
                let _ = std::fs::write(cache.join("stop"), "");
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn rounds(cache: &Path) -> u64 {
    for _ in 0..1000 {
        let read = std::fs::read_to_string(cache.join("rounds"));
        if let Some(n) = read.ok().and_then(|s| s.trim().parse().ok()) {
            return n;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("no round count in {}", cache.display());
}

#[test]
fn a_shared_cache_source_swapped_for_a_symlink_does_not_reach_the_host() {
    require_namespaces!();
    let fixture = Fixture::new();
    let host_dir = fixture.dir("host-dir");
    std::fs::write(host_dir.join("existing"), "host\n").expect("write");
    let swapper = fixture.context("swapper", &[("Dockerfile", &swapper_dockerfile(&host_dir))]);
    let child = kiln_command()
        .arg("--root")
        .arg(fixture.root())
        .args(["build", "--no-cache"])
        .arg(&swapper)
        .env("KILN_PROGRESS", "plain")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the swapping build");
    let mut swapper = Swapper { child, cache: None };
    let cache = cache_mount_dir(&fixture.root(), "race");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cache.join("swapping").exists() {
        assert!(Instant::now() < deadline, "the swapping RUN never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    swapper.cache = Some(cache.clone());
    let rounds_before = rounds(&cache);

    let mut outcomes = Vec::new();
    for attempt in 0..ATTEMPTS {
        let writer = fixture.context(
            &format!("writer-{attempt}"),
            &[(
                "Dockerfile",
                &format!(
                    "FROM busybox:latest\n\
                     RUN --mount=type=cache,id=race,source=sub,target=/x \
                     echo {attempt} > /x/written-{attempt}\n"
                ),
            )],
        );
        let out = kiln(
            &fixture.root(),
            &["build", "--no-cache", writer.to_str().expect("utf-8 path")],
        );
        outcomes.push(out);
    }
    let rounds_after = rounds(&cache);
    let status = swapper.stop();
    assert!(status.success(), "the swapping build failed: {status}");

    eprintln!(
        "{} of {ATTEMPTS} writers succeeded; {} swapping rounds meanwhile",
        outcomes.iter().filter(|out| out.status.success()).count(),
        rounds_after.saturating_sub(rounds_before)
    );
    let errors: Vec<String> = outcomes
        .iter()
        .filter(|out| !out.status.success())
        .filter_map(|out| {
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            stderr
                .lines()
                .rfind(|l| l.starts_with("error:"))
                .map(str::to_string)
        })
        .collect();
    eprintln!("the writers' errors: {errors:#?}");
    let names: Vec<_> = std::fs::read_dir(&host_dir)
        .expect("host dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let failures: Vec<String> = outcomes
        .iter()
        .filter(|out| !out.status.success())
        .map(text)
        .collect();
    assert_eq!(
        names,
        ["existing"],
        "a RUN wrote to the host through the cache; failed attempts: {failures:#?}"
    );
    // The race was on while the writers ran: the swapping went on.
    assert!(
        rounds_after > rounds_before + 100,
        "the swapping RUN made {} rounds while the writers ran",
        rounds_after.saturating_sub(rounds_before)
    );
    // What a writer that did run wrote is in the cache (in `sub`, or
    // wherever the swapping moved `sub` with it).
    let written = files_named_written(&cache);
    let succeeded = outcomes.iter().filter(|out| out.status.success()).count();
    assert_eq!(written, succeeded, "failed attempts: {failures:#?}");
    assert!(succeeded > 0, "no attempt succeeded: {failures:#?}");
}
