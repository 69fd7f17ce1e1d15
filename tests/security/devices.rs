//! Issue: no device restriction. `RUN mknod /kmsg c 1 11 && echo X > /kmsg`
//! wrote into the host's kernel log, and so did the same under `kiln run`;
//! a device node unpacked from an image layer was as usable.
//!
//! Each probe writes a unique marker and the tests read the host's kernel
//! log (/dev/kmsg) afterwards. Every restriction kiln has is exercised for
//! real on this machine: the cgroup v1 devices controller (the default
//! here), the cgroup v2 BPF device program (on the unified hierarchy, with
//! `KILN_DEVICE_RESTRICTION=bpf`) and nodev mounts (`=nodev`, what rootless
//! kiln gets). The control runs with `KILN_DEVICE_RESTRICTION=none` and
//! shows the probes do reach the host's log when nothing stops them.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::common::{busybox_rootfs_dir, kiln_command, kiln_ok};
use crate::{require_root, text, Fixture};

/// A marker no other run writes.
fn marker(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("kiln-device-probe-{what}-{}-{nanos}", std::process::id())
}

/// Whether the host's kernel log holds `marker` (every record still in the
/// ring buffer, read without blocking).
fn host_kernel_log_has(marker: &str) -> bool {
    let mut kmsg = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .expect("open /dev/kmsg");
    let mut record = vec![0u8; 16384];
    loop {
        match kmsg.read(&mut record) {
            Ok(0) => return false,
            Ok(n) => {
                if String::from_utf8_lossy(&record[..n]).contains(marker) {
                    return true;
                }
            }
            // Records overwritten while reading: go on with the next.
            Err(err) if err.raw_os_error() == Some(libc::EPIPE) => {}
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(err) => panic!("reading /dev/kmsg: {err}"),
        }
    }
}

/// `kiln --root ROOT ARGS…` with `KILN_DEVICE_RESTRICTION` set (or not).
fn kiln_with(fixture: &Fixture, restriction: Option<&str>, args: &[&str]) -> Output {
    let mut command: Command = kiln_command();
    command
        .arg("--root")
        .arg(fixture.root())
        .args(args)
        .env("KILN_PROGRESS", "plain")
        .stdin(Stdio::null());
    match restriction {
        Some(value) => command.env("KILN_DEVICE_RESTRICTION", value),
        None => command.env_remove("KILN_DEVICE_RESTRICTION"),
    };
    command.output().expect("run kiln")
}

/// The mknod probe: a kmsg node made in the root and one in /dev, each
/// written with the marker.
fn mknod_probe(marker: &str) -> String {
    format!(
        "mknod /kmsg c 1 11 && echo {marker}-root > /kmsg; \
         mknod /dev/kmsg2 c 1 11 && echo {marker}-dev > /dev/kmsg2; \
         echo prob''ed"
    )
}

/// Builds, without the cache, a one-stage image from `base` whose RUN is
/// `probe` (a probe above: the words it prints are spelled apart in it, so
/// a build's progress, which echoes the command, has them only from its
/// output).
fn build_probe(fixture: &Fixture, restriction: Option<&str>, base: &str, probe: &str) -> Output {
    let dir = format!("ctx-{}", marker(base).replace([':', '.'], "-"));
    let context = fixture.context(
        &dir,
        &[("Dockerfile", &format!("FROM {base}\nRUN {probe}\n"))],
    );
    kiln_with(
        fixture,
        restriction,
        &["build", "--no-cache", context.to_str().expect("utf-8 path")],
    )
}

/// An image `devimg:latest` whose layer holds /kmsg (char 1:11) and /mem
/// (char 1:1), both 0666, imported from a tar made here.
fn import_device_image(fixture: &Fixture) {
    let rootfs = fixture.dir("devimg-rootfs");
    busybox_rootfs_dir(&rootfs).expect("busybox rootfs");
    for (name, minor) in [("kmsg", 11), ("mem", 1)] {
        // Made in a test directory and never opened here.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            rootfs.join(name),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, minor),
        )
        .unwrap_or_else(|e| panic!("mknod {name}: {e}"));
        std::fs::set_permissions(
            rootfs.join(name),
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )
        .expect("chmod");
    }
    let tar = fixture.dir("devimg").join("devimg.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .expect("run tar");
    assert!(out.status.success(), "{}", text(&out));
    kiln_ok(
        &fixture.root(),
        &["import", tar.to_str().expect("utf-8"), "devimg:latest"],
    );
}

/// The image-node probe: the layer's /kmsg is there, a character device,
/// and written with the marker; /mem is read.
fn image_node_probe(marker: &str) -> String {
    format!(
        "[ -c /kmsg ] && [ -c /mem ] && echo nodes-pre''sent; \
         echo {marker}-image > /kmsg; head -c 1 /mem > /dev/null; echo prob''ed"
    )
}

/// The standard nodes still work.
const STANDARD_NODES: &str = "echo x > /dev/null && head -c 1 /dev/zero > /dev/null && \
     head -c 1 /dev/urandom > /dev/null && echo standard-ok";

fn combined(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A probe's script for a marker ([`mknod_probe`], [`image_node_probe`]).
type Probe = fn(&str) -> String;

/// Runs both probes from `kiln run` and from a RUN step under
/// `restriction`; returns whether any marker reached the host's log.
fn probe_all(fixture: &Fixture, restriction: Option<&str>, label: &str) -> (bool, Vec<String>) {
    let mut outputs = Vec::new();
    let mut markers = Vec::new();

    // Each probe from `kiln run` and from a RUN step (one build each); the
    // words it prints must show it ran to its end (and found the image's
    // nodes).
    let probes: [(&str, Probe, &[&str]); 2] = [
        ("busybox:latest", mknod_probe, &["probed"]),
        (
            "devimg:latest",
            image_node_probe,
            &["nodes-present", "probed"],
        ),
    ];
    for (image, probe, words) in probes {
        for via in ["run", "build"] {
            let m = marker(&format!(
                "{label}-{via}-{}",
                image.trim_end_matches(":latest")
            ));
            let out = match via {
                "run" => kiln_with(
                    fixture,
                    restriction,
                    &["run", "--rm", image, "sh", "-c", &probe(&m)],
                ),
                _ => {
                    let out = build_probe(fixture, restriction, image, &probe(&m));
                    assert!(out.status.success(), "{}", text(&out));
                    out
                }
            };
            let all = combined(&out);
            assert!(
                words.iter().all(|w| all.contains(w)),
                "{via} {image}: {}",
                text(&out)
            );
            outputs.push(all);
            markers.push(m);
        }
    }

    let reached = markers.iter().any(|m| host_kernel_log_has(m));
    (reached, outputs)
}

fn assert_restricted(restriction: Option<&str>, label: &str) {
    let fixture = Fixture::new();
    import_device_image(&fixture);
    let (reached, outputs) = probe_all(&fixture, restriction, label);
    assert!(
        !reached,
        "a probe reached the host's kernel log:\n{}",
        outputs.join("\n---\n")
    );
    for output in &outputs {
        assert!(
            output.contains("can't create /kmsg") || output.contains("/kmsg:"),
            "the write was not refused:\n{output}"
        );
    }
    let out = kiln_with(
        &fixture,
        restriction,
        &["run", "--rm", "busybox:latest", "sh", "-c", STANDARD_NODES],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("standard-ok"),
        "{}",
        text(&out)
    );
}

/// The default here: the cgroup v1 devices controller (kiln info says so).
#[test]
fn device_nodes_are_unusable_under_the_default_restriction() {
    require_root!();
    let fixture = Fixture::new();
    let out = kiln_with(&fixture, None, &["info", "--format", "json"]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("info json");
    assert_eq!(info["device_restriction"], "cgroup-v1", "{info}");
    assert_restricted(None, "v1");
}

/// The cgroup v2 device program, attached to a cgroup on the unified
/// hierarchy (empty of controllers here, which a device program needs none of).
#[test]
fn device_nodes_are_unusable_under_the_bpf_device_program() {
    require_root!();
    if !Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists()
        && !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
    {
        eprintln!("skipped: no cgroup2 hierarchy");
        return;
    }
    assert_restricted(Some("bpf"), "bpf");
}

/// Where no device cgroup can be had: nodev mounts.
#[test]
fn device_nodes_are_unusable_with_nodev_mounts_only() {
    require_root!();
    assert_restricted(Some("nodev"), "nodev");
}

/// Control: with the restriction off, each probe does write into the host's
/// kernel log. Without this, a probe that could never reach it would pass
/// the tests above.
#[test]
fn without_a_restriction_the_probes_reach_the_host_kernel_log() {
    require_root!();
    let fixture = Fixture::new();
    import_device_image(&fixture);
    let m = marker("control-run");
    let out = kiln_with(
        &fixture,
        Some("none"),
        &[
            "run",
            "--rm",
            "busybox:latest",
            "sh",
            "-c",
            &mknod_probe(&m),
        ],
    );
    assert!(
        host_kernel_log_has(&format!("{m}-root")) && host_kernel_log_has(&format!("{m}-dev")),
        "{}",
        text(&out)
    );
    let m = marker("control-image");
    let out = kiln_with(
        &fixture,
        Some("none"),
        &[
            "run",
            "--rm",
            "devimg:latest",
            "sh",
            "-c",
            &image_node_probe(&m),
        ],
    );
    assert!(host_kernel_log_has(&format!("{m}-image")), "{}", text(&out));
    let m = marker("control-build");
    let out = build_probe(&fixture, Some("none"), "busybox:latest", &mknod_probe(&m));
    assert!(
        host_kernel_log_has(&format!("{m}-root")) && host_kernel_log_has(&format!("{m}-dev")),
        "{}",
        text(&out)
    );
    let m = marker("control-build-image");
    let out = build_probe(
        &fixture,
        Some("none"),
        "devimg:latest",
        &image_node_probe(&m),
    );
    assert!(host_kernel_log_has(&format!("{m}-image")), "{}", text(&out));
}

/// `kiln info` names the restriction a run gets, also when one is chosen.
#[test]
fn kiln_info_names_the_device_restriction() {
    require_root!();
    let fixture = Fixture::new();
    for (value, expected) in [
        ("bpf", "bpf"),
        ("nodev", "nodev-only"),
        ("none", "unrestricted"),
    ] {
        let out = kiln_with(&fixture, Some(value), &["info"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("device restriction: {expected}:"))
                && stdout.contains("KILN_DEVICE_RESTRICTION"),
            "{}",
            text(&out)
        );
    }
    let out = kiln_with(
        &fixture,
        Some("sometimes"),
        &["run", "busybox:latest", "true"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("KILN_DEVICE_RESTRICTION=\"sometimes\""),
        "{}",
        text(&out)
    );
}
