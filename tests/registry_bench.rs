//! Pull/push benchmark against the local registry, timed next to `skopeo
//! copy` on the same image in the same run. Ignored by default (it moves
//! about 500 MB each way, several times); run it with
//!
//! ```text
//! cargo test --release -p kiln --test registry_bench -- --ignored --nocapture
//! ```
//!
//! `KILN_BENCH_MB` changes the image size (default 500, in 5 layers);
//! `KILN_BENCH_ROUNDS` the number of rounds (default 3, medians reported);
//! `KILN_BENCH_BIN` times another kiln binary (say, an earlier build)
//! instead of the one cargo built.
//!
//! Kept comparable on purpose:
//! - both tools are timed the same way (wall time of a child process);
//! - both start cold each round: kiln pulls into an empty store, skopeo into
//!   an empty OCI layout; each push goes to a fresh registry of its own, so
//!   no blob already exists there and no cross-repository mount is possible
//!   (the run checks the kiln target's log: every blob was uploaded, none
//!   mounted);
//! - the order alternates between rounds, so neither tool always runs on
//!   the warmer machine, and `sync` runs (untimed) before each timed step,
//!   so none pays for the writeback of the one before;
//! - `curl` fetching the same blobs into files (then fsynced, as both tools
//!   do), and uploading them to a fresh registry (6 at once, like both
//!   tools), is timed too: the registry's and the disk's own speed, the
//!   floor of any pull or push.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_testsupport::image::{
    digest_of, host_platform, skopeo_copy, skopeo_raw_manifest, write_oci_layout, TestFile,
};
use kiln_testsupport::RegistryServer;

fn kiln(root: &Path, args: &[&str]) -> Duration {
    let bin =
        std::env::var_os("KILN_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_kiln").into());
    let start = Instant::now();
    let out = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(args)
        .env("KILN_PROGRESS", "quiet")
        .env("DOCKER_CONFIG", root.join("no-docker-config"))
        .output()
        .unwrap();
    let elapsed = start.elapsed();
    assert!(
        out.status.success(),
        "kiln {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

/// Flushes every dirty page on the machine (untimed), so that no timed step
/// pays for the writeback of the one before it (a registry writes 500 MB
/// without fsync on each push).
fn settle() {
    let status = Command::new("sync").status().unwrap();
    assert!(status.success(), "sync failed");
}

fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

/// Fetches every blob URL at once into files in `dir`, then fsyncs them
/// (as both tools do); `None` without curl. Returns the time to download,
/// and to download and make durable.
fn curl_all(urls: &[String], dir: &Path) -> Option<(Duration, Duration)> {
    std::fs::create_dir(dir).unwrap();
    let files: Vec<_> = (0..urls.len()).map(|i| dir.join(i.to_string())).collect();
    let mut command = Command::new("curl");
    command.args(["--silent", "--fail", "--parallel", "--parallel-max", "6"]);
    for (url, file) in urls.iter().zip(&files) {
        command.arg("--output").arg(file).arg(url);
    }
    let start = Instant::now();
    let status = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    let downloaded = start.elapsed();
    assert!(status.success(), "curl of the blobs failed");
    // coreutils' sync with file operands fsyncs just those files.
    let synced = Command::new("sync").args(&files).status().unwrap();
    assert!(synced.success(), "sync of the downloaded blobs failed");
    Some((downloaded, start.elapsed()))
}

/// Uploads every blob file to `registry` at once (POST, then a streamed
/// monolithic PUT, as kiln does); `None` without curl.
fn curl_upload_all(
    registry: &RegistryServer,
    blobs: &[(String, std::path::PathBuf)],
) -> Option<Duration> {
    Command::new("curl").arg("--version").output().ok()?;
    let base = registry.url();
    let start = Instant::now();
    let threads: Vec<_> = blobs
        .iter()
        .cloned()
        .map(|(digest, path)| {
            let base = base.clone();
            std::thread::spawn(move || {
                let post = Command::new("curl")
                    .args(["--silent", "--fail", "--include", "--request", "POST"])
                    .arg(format!("{base}/v2/bench/image/blobs/uploads/"))
                    .output()
                    .unwrap();
                assert!(post.status.success(), "curl POST failed");
                let headers = String::from_utf8_lossy(&post.stdout).to_string();
                let location = headers
                    .lines()
                    .find_map(|l| {
                        l.split_once(':')
                            .filter(|(name, _)| name.eq_ignore_ascii_case("location"))
                            .map(|(_, value)| value.trim().to_string())
                    })
                    .unwrap();
                let location = if location.starts_with("http") {
                    location
                } else {
                    format!("{base}{location}")
                };
                let separator = if location.contains('?') { '&' } else { '?' };
                let status = Command::new("curl")
                    .args([
                        "--silent",
                        "--fail",
                        "--output",
                        "/dev/null",
                        "--request",
                        "PUT",
                    ])
                    .args(["--header", "Content-Type: application/octet-stream"])
                    .arg("--upload-file")
                    .arg(&path)
                    .arg(format!("{location}{separator}digest={digest}"))
                    .status()
                    .unwrap();
                assert!(status.success(), "curl PUT of {digest} failed");
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    Some(start.elapsed())
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2
    }
}

fn secs(values: &[Duration]) -> String {
    values
        .iter()
        .map(|d| format!("{:.2}", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Request lines in a registry's log whose text contains all of `needles`.
fn log_lines(registry: &RegistryServer, needles: &[&str]) -> usize {
    registry
        .log()
        .lines()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .count()
}

#[test]
#[ignore = "benchmark: moves ~500 MB each way per round; run with --ignored --nocapture in release"]
fn pull_and_push_against_skopeo() {
    let total_mb: usize = std::env::var("KILN_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let rounds: usize = std::env::var("KILN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let layer_bytes = total_mb * 1024 * 1024 / 5;
    let work = tempfile::tempdir().unwrap();
    let layers: Vec<Vec<TestFile>> = (0..5)
        .map(|i| {
            vec![TestFile::incompressible(
                &format!("layer{i}/data"),
                layer_bytes,
                1000 + i as u64,
            )]
        })
        .collect();
    let image = write_oci_layout(
        &work.path().join("layout"),
        "v1",
        &[&host_platform()],
        &layers,
    )
    .unwrap();
    let layout = format!("oci:{}:v1", work.path().join("layout").display());
    let platform = &image.platforms[0];
    let blob_count = 1 + platform.layers.len();

    // Source registry, seeded by skopeo (untimed), for every pull.
    let source = RegistryServer::start_plain().unwrap();
    let source_ref = format!("{}/bench/image:v1", source.host);
    skopeo_copy(&layout, &format!("docker://{source_ref}"), None, None).unwrap();
    let blob_urls: Vec<String> = std::iter::once(&platform.config)
        .chain(&platform.layers)
        .map(|b| format!("{}/v2/bench/image/blobs/{}", source.url(), b.digest))
        .collect();

    let blob_files: Vec<(String, std::path::PathBuf)> = std::iter::once(&platform.config)
        .chain(&platform.layers)
        .map(|b| {
            let hex = b.digest.trim_start_matches("sha256:");
            (
                b.digest.clone(),
                work.path().join("layout/blobs/sha256").join(hex),
            )
        })
        .collect();

    let (mut kiln_pulls, mut skopeo_pulls, mut kiln_pushes, mut skopeo_pushes) =
        (vec![], vec![], vec![], vec![]);
    let (mut curl_pulls, mut curl_durable_pulls, mut curl_pushes) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        let dir = work.path().join(format!("round{round}"));
        std::fs::create_dir(&dir).unwrap();
        let store = dir.join("store");
        let kiln_first = round % 2 == 1;

        // Pull: kiln into an empty store, skopeo into an empty OCI layout.
        let mut kiln_pull = || kiln_pulls.push(kiln(&store, &["pull", &source_ref]));
        let mut skopeo_pull = || {
            skopeo_pulls.push(timed(|| {
                skopeo_copy(
                    &format!("docker://{source_ref}"),
                    &format!("oci:{}:v1", dir.join("skopeo-pulled").display()),
                    None,
                    None,
                )
                .unwrap()
            }))
        };
        if kiln_first {
            settle();
            kiln_pull();
            settle();
            skopeo_pull();
        } else {
            settle();
            skopeo_pull();
            settle();
            kiln_pull();
        }
        settle();
        if let Some((downloaded, durable)) = curl_all(&blob_urls, &dir.join("curl-pulled")) {
            curl_pulls.push(downloaded);
            curl_durable_pulls.push(durable);
        }

        // Push: each to a fresh registry that has none of the blobs, removed
        // (with its unflushed files) right after.
        let mut kiln_push = || {
            let target = RegistryServer::start_plain().unwrap();
            let kiln_ref = format!("{}/bench/image:v1", target.host);
            kiln(&store, &["tag", &source_ref, &kiln_ref]);
            settle();
            kiln_pushes.push(kiln(&store, &["push", &kiln_ref]));
            let raw = skopeo_raw_manifest(&format!("docker://{kiln_ref}"), None, None).unwrap();
            assert_eq!(digest_of(&raw), image.digest);
            // Every blob uploaded by kiln, none mounted: the same work skopeo did.
            assert_eq!(log_lines(&target, &["mount="]), 0, "kiln mounted a blob");
            // Access-log lines (`"PUT /v2/... HTTP/1.1" 201`): one per finished upload.
            let uploads = log_lines(&target, &["\"PUT ", "/blobs/uploads/", "digest="]);
            assert_eq!(uploads, blob_count, "kiln uploaded {uploads} blobs");
        };
        let mut skopeo_push = || {
            let target = RegistryServer::start_plain().unwrap();
            settle();
            skopeo_pushes.push(timed(|| {
                skopeo_copy(
                    &layout,
                    &format!("docker://{}/bench/image:v1", target.host),
                    None,
                    None,
                )
                .unwrap()
            }))
        };
        if kiln_first {
            kiln_push();
            skopeo_push();
        } else {
            skopeo_push();
            kiln_push();
        }
        let curl_target = RegistryServer::start_plain().unwrap();
        settle();
        if let Some(took) = curl_upload_all(&curl_target, &blob_files) {
            curl_pushes.push(took);
        }
        drop(curl_target);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    let size: u64 = platform.layers.iter().map(|l| l.size).sum();
    let mb = size as f64 / 1e6;
    println!("image: {mb:.0} MB in 5 layers; {rounds} rounds, order alternating");
    println!("pull s, per round: kiln {}", secs(&kiln_pulls));
    println!("pull s, per round: skopeo {}", secs(&skopeo_pulls));
    println!("push s, per round: kiln {}", secs(&kiln_pushes));
    println!("push s, per round: skopeo {}", secs(&skopeo_pushes));
    for (what, times) in [
        ("pull floor (curl, 6 at once, into files)", curl_pulls),
        (
            "durable pull floor (the same, then fsync)",
            curl_durable_pulls,
        ),
        ("push floor (curl, 6 at once, POST + PUT)", curl_pushes),
    ] {
        if !times.is_empty() {
            let floor = median(times.clone());
            println!(
                "{what}: {} s, median {:.2} s ({:.0} MB/s)",
                secs(&times),
                floor.as_secs_f64(),
                mb / floor.as_secs_f64()
            );
        }
    }
    for (what, kiln_times, skopeo_times) in [
        ("pull", kiln_pulls, skopeo_pulls),
        ("push", kiln_pushes, skopeo_pushes),
    ] {
        let (kiln_time, skopeo_time) = (median(kiln_times), median(skopeo_times));
        println!(
            "{what} (medians): kiln {:.2} s ({:.0} MB/s), skopeo {:.2} s ({:.0} MB/s), kiln/skopeo = {:.2}",
            kiln_time.as_secs_f64(),
            mb / kiln_time.as_secs_f64(),
            skopeo_time.as_secs_f64(),
            mb / skopeo_time.as_secs_f64(),
            kiln_time.as_secs_f64() / skopeo_time.as_secs_f64()
        );
    }
}
