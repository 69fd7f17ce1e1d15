//! Pull/push benchmark against the local registry, timed next to `skopeo
//! copy` on the same image in the same run. Ignored by default (it moves
//! about 500 MB each way); run it with
//!
//! ```text
//! cargo test --release -p kiln --test registry_bench -- --ignored --nocapture
//! ```
//!
//! `KILN_BENCH_MB` changes the image size (default 500, in 5 layers).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_testsupport::image::{
    digest_of, host_platform, skopeo_copy, skopeo_raw_manifest, write_oci_layout, TestFile,
};
use kiln_testsupport::RegistryServer;

fn kiln(root: &Path, args: &[&str]) -> Duration {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
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

fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

#[test]
#[ignore = "benchmark: moves ~500 MB each way; run with --ignored --nocapture in release"]
fn pull_and_push_against_skopeo() {
    let total_mb: usize = std::env::var("KILN_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
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

    // Source registry, seeded by skopeo (untimed), for both pulls.
    let source = RegistryServer::start_plain().unwrap();
    let source_ref = format!("{}/bench/image:v1", source.host);
    skopeo_copy(&layout, &format!("docker://{source_ref}"), None, None).unwrap();

    // Pull: skopeo into an OCI layout, kiln into a fresh store.
    let skopeo_pull = timed(|| {
        skopeo_copy(
            &format!("docker://{source_ref}"),
            &format!("oci:{}:v1", work.path().join("skopeo-pulled").display()),
            None,
            None,
        )
        .unwrap()
    });
    let store = work.path().join("store");
    let kiln_pull = kiln(&store, &["pull", &source_ref]);

    // Push: each to a registry of its own that has none of the blobs.
    let skopeo_target = RegistryServer::start_plain().unwrap();
    let skopeo_push = timed(|| {
        skopeo_copy(
            &layout,
            &format!("docker://{}/bench/image:v1", skopeo_target.host),
            None,
            None,
        )
        .unwrap()
    });
    let kiln_target = RegistryServer::start_plain().unwrap();
    let kiln_ref = format!("{}/bench/image:v1", kiln_target.host);
    kiln(&store, &["tag", &source_ref, &kiln_ref]);
    let kiln_push = kiln(&store, &["push", &kiln_ref]);
    let raw = skopeo_raw_manifest(&format!("docker://{kiln_ref}"), None, None).unwrap();
    assert_eq!(digest_of(&raw), image.digest);

    let size: u64 = image.platforms[0].layers.iter().map(|l| l.size).sum();
    let mb = size as f64 / 1e6;
    println!("image: {mb:.0} MB in 5 layers");
    for (what, kiln_time, skopeo_time) in [
        ("pull", kiln_pull, skopeo_pull),
        ("push", kiln_push, skopeo_push),
    ] {
        println!(
            "{what}: kiln {:.2} s ({:.0} MB/s), skopeo {:.2} s ({:.0} MB/s), kiln/skopeo = {:.2}",
            kiln_time.as_secs_f64(),
            mb / kiln_time.as_secs_f64(),
            skopeo_time.as_secs_f64(),
            mb / skopeo_time.as_secs_f64(),
            kiln_time.as_secs_f64() / skopeo_time.as_secs_f64()
        );
    }
}
