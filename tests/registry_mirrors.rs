//! The registry configuration file end to end (`--registry-config`,
//! `KILN_REGISTRY_CONFIG`): `kiln pull` and `kiln build` (FROM, COPY
//! --from) reach an image through a mirror, fall back to the registry when
//! the mirror is down, speak plain HTTP to a registry by name with
//! `http = true`, and refuse a key they do not know. Real distribution
//! registries; fault proxies in front of them count what each was asked.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{busybox_rootfs_tar, kiln_command};
use kiln_testsupport::image::{host_platform, skopeo_copy, write_oci_layout, TestFile};
use kiln_testsupport::{FaultPlan, FaultProxy, RegistryServer};

fn kiln(root: &Path, config: Option<&Path>, args: &[&str]) -> Output {
    let mut command = kiln_command();
    command
        .arg("--root")
        .arg(root)
        .env("KILN_PROGRESS", "plain");
    if let Some(config) = config {
        command.arg("--registry-config").arg(config);
    }
    command.args(args).output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "kiln failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let file = dir.join("registries.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// A small image at `TARGET:v1`, pushed with skopeo.
fn seed_small(work: &Path, target: &str) {
    let image = write_oci_layout(
        &work.join(format!("layout-{}", target.replace(['/', ':'], "_"))),
        "v1",
        &[&host_platform()],
        &[vec![TestFile::new("etc/os-release", "NAME=kiln-mirror\n")]],
    )
    .unwrap();
    skopeo_copy(
        &format!("oci:{}:v1", image.layout.display()),
        &format!("docker://{target}:v1"),
        None,
        None,
    )
    .unwrap();
}

/// A busybox image at `TARGET` (`kiln import`, then `kiln push`).
fn seed_busybox(work: &Path, target: &str) {
    let tar = work.join("busybox.tar");
    busybox_rootfs_tar(&tar).unwrap();
    let store = work.join("seed-store");
    ok(kiln(
        &store,
        None,
        &["import", tar.to_str().unwrap(), target],
    ));
    ok(kiln(&store, None, &["push", target]));
}

fn proxy(registry: &RegistryServer) -> FaultProxy {
    FaultProxy::start(registry.addr, FaultPlan::default()).unwrap()
}

#[test]
fn pull_and_build_get_their_images_through_the_mirror() {
    let work = tempfile::tempdir().unwrap();
    let origin_registry = RegistryServer::start_plain().unwrap();
    let mirror_registry = RegistryServer::start_plain().unwrap();
    let (origin, mirror) = (proxy(&origin_registry), proxy(&mirror_registry));
    seed_busybox(
        work.path(),
        &format!("{}/kiln/busybox:v1", mirror_registry.host),
    );
    let config = write_config(
        work.path(),
        &format!(
            "[registry.\"{}\"]\nmirrors = [\"{}\"]\n",
            origin.host, mirror.host
        ),
    );
    let image = format!("{}/kiln/busybox:v1", origin.host);

    let pulled = work.path().join("pulled");
    ok(kiln(&pulled, Some(&config), &["pull", &image]));
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
    let ns = format!("?ns={}", origin.host.replace(':', "%3A"));
    assert!(
        mirror
            .requests()
            .contains(&format!("GET /v2/kiln/busybox/manifests/v1{ns}")),
        "{:?}",
        mirror.requests()
    );

    // A build whose base (and COPY --from image) only the mirror has, with
    // the file named by the environment this time.
    let before = mirror.requests().len();
    let context = work.path().join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM {image}\nRUN echo built-on-the-mirrored-base > /built\nCOPY --from={image} /bin/busybox /copied-busybox\n"
        ),
    )
    .unwrap();
    let out = work.path().join("out");
    let built = kiln_command()
        .arg("--root")
        .arg(work.path().join("built"))
        .env("KILN_REGISTRY_CONFIG", &config)
        .env("KILN_PROGRESS", "plain")
        .args(["build", "-o", out.to_str().unwrap()])
        .arg(&context)
        .output()
        .unwrap();
    ok(built);
    assert_eq!(
        std::fs::read_to_string(out.join("built")).unwrap(),
        "built-on-the-mirrored-base\n"
    );
    assert!(out.join("copied-busybox").is_file());
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
    let asked_now = &mirror.requests()[before..];
    assert!(
        asked_now
            .iter()
            .any(|r| r.starts_with("GET /v2/kiln/busybox/manifests/v1?ns=")),
        "{asked_now:?}"
    );
    assert!(
        asked_now
            .iter()
            .any(|r| r.starts_with("GET /v2/kiln/busybox/blobs/sha256:")),
        "{asked_now:?}"
    );
}

#[test]
fn a_mirror_that_is_down_falls_back_to_the_registry() {
    let work = tempfile::tempdir().unwrap();
    let origin_registry = RegistryServer::start_plain().unwrap();
    let origin = proxy(&origin_registry);
    // Nothing behind this proxy (port 0 cannot be connected to): every
    // request it takes ends with the connection closed.
    let down = FaultProxy::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        FaultPlan::default(),
    )
    .unwrap();
    seed_small(work.path(), &format!("{}/kiln/small", origin_registry.host));
    let config = write_config(
        work.path(),
        &format!(
            "[registry.\"{}\"]\nmirrors = [\"{}\"]\n",
            origin.host, down.host
        ),
    );
    let store = work.path().join("store");
    ok(kiln(
        &store,
        Some(&config),
        &["pull", &format!("{}/kiln/small:v1", origin.host)],
    ));
    assert_eq!(down.requests(), ["GET /v2/"]);
    assert!(origin
        .requests()
        .contains(&"GET /v2/kiln/small/manifests/v1".to_string()));
}

#[test]
fn unknown_keys_and_missing_files_are_refused_by_name() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let config = write_config(
        work.path(),
        "[registry.\"docker.io\"]\nmirrors = [\"mirror.example\"]\nmirror-by-digest-only = true\n",
    );
    let out = kiln(&store, Some(&config), &["pull", "127.0.0.1:1/x:v1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!(
            "{}:3: [registry.\"docker.io\"] mirror-by-digest-only: unknown key; kiln reads mirrors, http, insecure, ca, keypair, tlsconfigdir",
            config.display()
        )),
        "{}",
        stderr(&out)
    );

    // A build refuses it too, before anything runs.
    let context = work.path().join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY Dockerfile /\n",
    )
    .unwrap();
    let out = kiln(&store, Some(&config), &["build", context.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("mirror-by-digest-only: unknown key"),
        "{}",
        stderr(&out)
    );
    // With no file at all (an empty name), the same build succeeds.
    let empty = Path::new("");
    ok(kiln(
        &store,
        Some(empty),
        &["build", context.to_str().unwrap()],
    ));

    let missing = work.path().join("missing.toml");
    let out = kiln(&store, Some(&missing), &["pull", "127.0.0.1:1/x:v1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!(
            "registry configuration {}: No such file",
            missing.display()
        )),
        "{}",
        stderr(&out)
    );
}

/// `kiln ARGS…` in a mount namespace of its own whose /etc/hosts names
/// `registry.kiln.test` as 127.0.0.1: a registry by a name that is not
/// loopback's.
fn kiln_with_hosts_entry(work: &Path, root: &Path, config: &Path, args: &[&str]) -> Output {
    let hosts = work.join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n127.0.0.1 registry.kiln.test\n",
    )
    .unwrap();
    let inner = kiln_command();
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/hosts && exec \"$@\"")
        .arg(&hosts)
        .arg(inner.get_program())
        .arg("--root")
        .arg(root)
        .arg("--registry-config")
        .arg(config)
        .args(args);
    for (key, value) in inner.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    command.output().unwrap()
}

#[test]
fn http_true_reaches_a_plain_http_registry_by_name() {
    kiln_testsupport::require_root!("a mount namespace with an /etc/hosts of its own");
    let work = tempfile::tempdir().unwrap();
    let registry = RegistryServer::start_plain().unwrap();
    seed_small(work.path(), &format!("{}/kiln/small", registry.host));
    let host = format!("registry.kiln.test:{}", registry.addr.port());
    let image = format!("{host}/kiln/small:v1");
    let store = work.path().join("store");

    // Not loopback by name: HTTPS only, which this registry does not speak.
    let none = write_config(work.path(), "");
    let out = kiln_with_hosts_entry(work.path(), &store, &none, &["pull", &image]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("{host}: cannot reach the registry")),
        "{}",
        stderr(&out)
    );

    let plain = write_config(
        work.path(),
        &format!("[registry.\"{host}\"]\nhttp = true\n"),
    );
    let out = kiln_with_hosts_entry(work.path(), &store, &plain, &["pull", &image]);
    let stdout = ok(out);
    assert!(stdout.contains(&image), "{stdout}");
}
