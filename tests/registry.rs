//! `kiln pull`, `push`, `login` and `logout` end to end: the kiln binary
//! against the real distribution registry, with skopeo as the independent
//! writer and reader.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln_testsupport::image::{
    digest_of, host_platform, skopeo_copy, skopeo_raw_manifest, write_oci_layout, TestFile,
    TestImage,
};
use kiln_testsupport::{FaultPlan, FaultProxy, RegistryServer, Throttle};

/// A kiln invocation with its own store and Docker config directory.
struct Kiln {
    root: PathBuf,
    docker_config: PathBuf,
    extra_path: Option<PathBuf>,
}

impl Kiln {
    fn new(dir: &Path) -> Kiln {
        let docker_config = dir.join("docker-config");
        std::fs::create_dir_all(&docker_config).unwrap();
        Kiln {
            root: dir.join("store"),
            docker_config,
            extra_path: None,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
        // The store through KILN_ROOT, not `--root`: `login` and `logout`,
        // which use no store, refuse the flag.
        command
            .args(args)
            .env("DOCKER_CONFIG", &self.docker_config)
            .env("KILN_PROGRESS", "plain")
            // The collection after a build runs before kiln exits.
            .env("KILN_GC", "foreground")
            .env("KILN_ROOT", &self.root)
            .env_remove("KILN_REGISTRY_TIMEOUT")
            .env_remove("KILN_REGISTRY_SPEED_LIMIT")
            .env_remove("KILN_REGISTRY_SPEED_TIME")
            .env("KILN_REGISTRY_CONFIG", "");
        if let Some(extra) = &self.extra_path {
            let path = format!(
                "{}:{}",
                extra.display(),
                std::env::var("PATH").unwrap_or_default()
            );
            command.env("PATH", path);
        }
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kiln {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every blob in the store hashes to its name; returns their digests.
fn store_blobs(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(root.join("blobs/sha256")) else {
        return found;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let name = format!("sha256:{}", entry.file_name().to_string_lossy());
        let bytes = std::fs::read(entry.path()).unwrap();
        assert_eq!(
            digest_of(&bytes),
            name,
            "a blob in the store does not match its name"
        );
        found.push(name);
    }
    found
}

fn seed(
    registry: &RegistryServer,
    work: &Path,
    repo: &str,
    layers: &[Vec<TestFile>],
    creds: Option<(&str, &str)>,
    ca_dir: Option<&Path>,
) -> (TestImage, String) {
    let image = write_oci_layout(
        &work.join(repo.replace('/', "_")),
        "v1",
        &[&host_platform()],
        layers,
    )
    .unwrap();
    let target = format!("{}/{repo}:v1", registry.host);
    skopeo_copy(
        &format!("oci:{}:v1", image.layout.display()),
        &format!("docker://{target}"),
        creds,
        ca_dir,
    )
    .unwrap();
    (image, target)
}

fn small_layers() -> Vec<Vec<TestFile>> {
    vec![
        vec![TestFile::new("etc/os-release", "NAME=kiln-test\n")],
        vec![TestFile::new("usr/share/data", vec![3u8; 30_000])],
    ]
}

/// skopeo wants a directory of `*.crt` files.
fn skopeo_cert_dir(registry: &RegistryServer, work: &Path) -> PathBuf {
    let dir = work.join("skopeo-certs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(registry.ca_cert.as_ref().unwrap(), dir.join("ca.crt")).unwrap();
    dir
}

#[test]
fn pull_then_push_under_new_names_and_skopeo_reads_the_same_digest() {
    let registry = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (image, source) = seed(
        &registry,
        work.path(),
        "kiln/e2e-source",
        &small_layers(),
        None,
        None,
    );
    let kiln = Kiln::new(work.path());

    let stdout = kiln.ok(&["pull", &source]);
    assert!(stdout.contains(&source), "{stdout}");
    let blobs = store_blobs(&kiln.root);
    for digest in image.all_digests() {
        assert!(blobs.contains(&digest), "{digest} pulled");
    }

    // Again: nothing to download.
    let out = kiln.run(&["pull", &source]);
    assert!(
        stderr(&out).contains("Image is up to date"),
        "{}",
        stderr(&out)
    );

    // By digest too.
    let by_digest = format!("{}/kiln/e2e-source@{}", registry.host, image.digest);
    let stdout = kiln.ok(&["pull", &by_digest]);
    assert!(stdout.contains(&image.digest), "{stdout}");

    let copy = format!("{}/kiln/e2e-copy:v2", registry.host);
    let also = format!("{}/kiln/e2e-copy:also", registry.host);
    kiln.ok(&["tag", &source, &copy]);
    kiln.ok(&["tag", &source, &also]);
    let stdout = kiln.ok(&["push", "--chunk-size", "10000", &copy, &also]);
    assert!(
        stdout.contains(&format!("{copy}: digest: {}", image.digest)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{also}: digest: {}", image.digest)),
        "{stdout}"
    );
    for target in [&copy, &also] {
        let raw = skopeo_raw_manifest(&format!("docker://{target}"), None, None).unwrap();
        assert_eq!(digest_of(&raw), image.digest, "{target}");
    }

    // Counts of 0 are refused, naming the flag, not read as 1 or as no
    // chunking.
    for args in [
        &["push", "--concurrency", "0", &copy][..],
        &["push", "--chunk-size", "0", &copy][..],
        &["pull", "--concurrency", "0", &source][..],
    ] {
        let out = kiln.run(args);
        assert!(!out.status.success(), "{args:?}");
        let flag = args[1];
        assert!(
            stderr(&out).contains(&format!("invalid value '0' for '{flag}")),
            "{args:?}: {}",
            stderr(&out)
        );
    }

    // Pushing a name the store lacks says so.
    let out = kiln.run(&["push", &format!("{}/kiln/absent:v1", registry.host)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not in the store"),
        "{}",
        stderr(&out)
    );
}

/// `pull --concurrency N` downloads, and `push --concurrency N` uploads,
/// at most N blobs at once: counted by a proxy that slows every blob
/// (each several paced pieces: its bytes do not compress) so that
/// transfers started together overlap.
#[test]
fn concurrency_bounds_the_blobs_moved_at_once() {
    let registry = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let noise = |seed: u32| -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..40_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    };
    let layers: Vec<Vec<TestFile>> = (1..=4u32)
        .map(|n| vec![TestFile::new(&format!("layer-{n}"), noise(n))])
        .collect();
    seed(&registry, work.path(), "kiln/fanout", &layers, None, None);
    for (concurrency, bounded) in [("1", true), ("4", false)] {
        let pace = Some(Throttle {
            bytes: 8_000,
            every: Duration::from_millis(50),
        });
        let plan = FaultPlan {
            blob_throttle: pace,
            upload_throttle: pace,
            ..Default::default()
        };
        let proxy = FaultProxy::start(registry.addr, plan.clone()).unwrap();
        let kiln = Kiln::new(&work.path().join(format!("c{concurrency}")));
        let reference = format!("{}/kiln/fanout:v1", proxy.host);
        kiln.ok(&["pull", "--concurrency", concurrency, &reference]);
        // To another registry, where no blob can be mounted: every one is
        // uploaded.
        let other = RegistryServer::start_plain().unwrap();
        let other_proxy = FaultProxy::start(other.addr, plan).unwrap();
        let copy = format!("{}/kiln/fanout:v1", other_proxy.host);
        kiln.ok(&["tag", &reference, &copy]);
        kiln.ok(&["push", "--concurrency", concurrency, &copy]);
        let moved = [
            ("downloads", proxy.most_downloads_at_once()),
            ("uploads", other_proxy.most_uploads_at_once()),
        ];
        for (what, most) in moved {
            if bounded {
                assert_eq!(most, 1, "--concurrency 1: {what}");
            } else {
                assert!(
                    (2..=4).contains(&most),
                    "--concurrency 4: {most} {what} at once"
                );
            }
        }
    }
}

#[test]
fn login_logout_against_tls_registry_with_basic_auth() {
    let registry = RegistryServer::start_tls_basic("alice", "wonderland").unwrap();
    let work = tempfile::tempdir().unwrap();
    let certs = skopeo_cert_dir(&registry, work.path());
    let (image, source) = seed(
        &registry,
        work.path(),
        "kiln/private",
        &small_layers(),
        Some(("alice", "wonderland")),
        Some(&certs),
    );
    let kiln = Kiln::new(work.path());
    let ca = registry.ca_cert.clone().unwrap();
    let ca = ca.to_str().unwrap();

    // Without credentials: refused, and the error names the registry.
    let out = kiln.run(&["pull", "--ca-cert", ca, &source]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&registry.host), "{}", stderr(&out));

    // A wrong password is refused and nothing is written.
    let out = kiln.run_with_stdin(
        &[
            "login",
            "-u",
            "alice",
            "--password-stdin",
            "--ca-cert",
            ca,
            &registry.host,
        ],
        "nope\n",
    );
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(!kiln.docker_config.join("config.json").exists());

    // Without trusting the CA, login fails on the certificate.
    let out = kiln.run_with_stdin(
        &["login", "-u", "alice", "--password-stdin", &registry.host],
        "wonderland\n",
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).to_lowercase().contains("certificate"),
        "{}",
        stderr(&out)
    );

    let stdout = String::from_utf8_lossy(
        &kiln
            .run_with_stdin(
                &[
                    "login",
                    "-u",
                    "alice",
                    "--password-stdin",
                    "--ca-cert",
                    ca,
                    &registry.host,
                ],
                "wonderland\n",
            )
            .stdout,
    )
    .into_owned();
    assert!(stdout.contains("Login Succeeded"), "{stdout}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(kiln.docker_config.join("config.json")).unwrap())
            .unwrap();
    assert!(
        config["auths"][&registry.host]["auth"].is_string(),
        "{config}"
    );

    // Stored credentials are used by pull.
    kiln.ok(&["pull", "--ca-cert", ca, &source]);
    assert!(store_blobs(&kiln.root).contains(&image.digest));

    // explain fetches a base image's config as pull does: trusting the CA
    // (--ca-cert) or not checking it (--insecure-registry); without either,
    // the certificate fails and explain says so.
    let explainer = Kiln::new(&work.path().join("explain"));
    std::fs::copy(
        kiln.docker_config.join("config.json"),
        explainer.docker_config.join("config.json"),
    )
    .unwrap();
    let context = work.path().join("explain-context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(context.join("Dockerfile"), format!("FROM {source}\n")).unwrap();
    let context = context.to_str().unwrap();
    let out = explainer.run(&["explain", "--format", "json", context]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr(&out).contains("invalid peer certificate"),
        "{}",
        stderr(&out)
    );
    for flags in [["--ca-cert", ca], ["--insecure-registry", &registry.host]] {
        let mut args = vec!["explain", "--format", "json"];
        args.extend_from_slice(&flags);
        args.push(context);
        let json: serde_json::Value = serde_json::from_str(&explainer.ok(&args)).unwrap();
        assert_eq!(json["argv"], serde_json::json!(["/bin/sh"]), "{flags:?}");
    }

    // SSL_CERT_FILE works as well as --ca-cert.
    let other = Kiln::new(&work.path().join("other"));
    std::fs::copy(
        kiln.docker_config.join("config.json"),
        other.docker_config.join("config.json"),
    )
    .unwrap();
    let out = other
        .command(&["pull", &source])
        .env("SSL_CERT_FILE", ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let stdout = kiln.ok(&["logout", &registry.host]);
    assert!(stdout.contains("Removing login credentials"), "{stdout}");
    let out = kiln.run(&["pull", "--ca-cert", ca, &source]);
    assert!(!out.status.success(), "credentials are gone");
    let stdout = kiln.ok(&["logout", &registry.host]);
    assert!(stdout.contains("Not logged in"), "{stdout}");

    // An empty username is refused before the registry is asked, as
    // Docker refuses it.
    let out = kiln.run(&[
        "login",
        "-u",
        "",
        "-p",
        "wonderland",
        "--ca-cert",
        ca,
        &registry.host,
    ]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("-u: the username is empty"),
        "{}",
        stderr(&out)
    );
    // The password as a flag (-p), as `docker login -p`: a wrong one is
    // refused, the right one stored and used.
    let out = kiln.run(&[
        "login",
        "-u",
        "alice",
        "-p",
        "nope",
        "--ca-cert",
        ca,
        &registry.host,
    ]);
    assert!(!out.status.success(), "{}", stderr(&out));
    let stdout = kiln.ok(&[
        "login",
        "-u",
        "alice",
        "-p",
        "wonderland",
        "--ca-cert",
        ca,
        &registry.host,
    ]);
    assert!(stdout.contains("Login Succeeded"), "{stdout}");
    kiln.ok(&["pull", "--ca-cert", ca, &source]);
}

/// A `docker-credential-<name>` helper keeping credentials in `store_file`.
fn write_credential_helper(dir: &Path, name: &str) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let store_file = dir.join("helper-store.json");
    let script = format!(
        "#!/bin/sh\nset -e\ncase \"$1\" in\n\
         store) cat > '{store}' ;;\n\
         get) read server || true; if [ -f '{store}' ]; then cat '{store}'; else echo 'credentials not found in native keychain'; exit 1; fi ;;\n\
         erase) rm -f '{store}' ;;\n\
         *) exit 1 ;;\nesac\n",
        store = store_file.display()
    );
    let helper = bin.join(format!("docker-credential-{name}"));
    std::fs::write(&helper, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn token_auth_registry_with_a_credential_helper() {
    let registry = RegistryServer::start_token("bob", "builder").unwrap();
    let work = tempfile::tempdir().unwrap();
    let (image, source) = seed(
        &registry,
        work.path(),
        "kiln/tokened",
        &small_layers(),
        Some(("bob", "builder")),
        None,
    );
    let mut kiln = Kiln::new(work.path());
    kiln.extra_path = Some(write_credential_helper(work.path(), "kilntest"));
    std::fs::write(
        kiln.docker_config.join("config.json"),
        r#"{"credsStore": "kilntest"}"#,
    )
    .unwrap();

    // Anonymous pull is allowed by the token server.
    kiln.ok(&["pull", &source]);
    assert!(store_blobs(&kiln.root).contains(&image.digest));

    // Push needs credentials: refused first, then login stores them through the helper.
    let target = format!("{}/kiln/tokened-copy:v1", registry.host);
    kiln.ok(&["tag", &source, &target]);
    let out = kiln.run(&["push", &target]);
    assert!(!out.status.success(), "anonymous push must fail");
    let out = kiln.run_with_stdin(
        &["login", "-u", "bob", "--password-stdin", &registry.host],
        "builder\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stored = std::fs::read_to_string(work.path().join("helper-store.json")).unwrap();
    assert!(
        stored.contains("\"Username\":\"bob\"") && stored.contains(&registry.host),
        "{stored}"
    );
    let config = std::fs::read_to_string(kiln.docker_config.join("config.json")).unwrap();
    assert!(
        !config.contains("auths"),
        "the helper holds the secret, not config.json: {config}"
    );

    let stdout = kiln.ok(&["push", &target]);
    assert!(stdout.contains(&image.digest), "{stdout}");
    let raw = skopeo_raw_manifest(
        &format!("docker://{target}"),
        Some(("bob", "builder")),
        None,
    )
    .unwrap();
    assert_eq!(digest_of(&raw), image.digest);
    let tokens = registry.token_server.as_ref().unwrap();
    assert!(tokens.tokens_issued() > 0);

    // A login an older client left in `auths` under a scheme: a lookup
    // reads `auths` before the helper, so logout removes it too.
    let auth = "Ym9iOmJ1aWxkZXI="; // bob:builder
    std::fs::write(
        kiln.docker_config.join("config.json"),
        format!(
            r#"{{"credsStore": "kilntest", "auths": {{"https://{}": {{"auth": "{auth}"}}}}}}"#,
            registry.host
        ),
    )
    .unwrap();
    kiln.ok(&["logout", &registry.host]);
    assert!(!work.path().join("helper-store.json").exists());
    let config = std::fs::read_to_string(kiln.docker_config.join("config.json")).unwrap();
    assert!(!config.contains(&registry.host), "{config}");
    let out = kiln.run(&["push", &target]);
    assert!(
        !out.status.success(),
        "pushed after logout: {}",
        stderr(&out)
    );
}

#[test]
fn pull_killed_midway_then_pulled_again_completes_with_sound_blobs() {
    let registry = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let layers = vec![
        vec![TestFile::incompressible("big/one", 3_000_000, 11)],
        vec![TestFile::incompressible("big/two", 3_000_000, 22)],
        vec![TestFile::incompressible("big/three", 3_000_000, 33)],
    ];
    let (image, _) = seed(&registry, work.path(), "kiln/killed", &layers, None, None);
    // Slow the downloads so the kill lands in the middle of one.
    let proxy = FaultProxy::start(
        registry.addr,
        FaultPlan {
            blob_chunk_delay: Some(Duration::from_millis(50)),
            ..Default::default()
        },
    )
    .unwrap();
    let reference = format!("{}/kiln/killed:v1", proxy.host);
    let kiln = Kiln::new(work.path());
    let mut child = kiln_testsupport::ChildGuard::spawn(
        kiln.command(&["pull", &reference])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    // Wait until a blob is being written into ingest/, then kill -9.
    let deadline = Instant::now() + Duration::from_secs(60);
    let ingest = kiln.root.join("ingest");
    loop {
        let busy = std::fs::read_dir(&ingest)
            .map(|d| {
                d.flatten()
                    .any(|e| e.metadata().map(|m| m.len() > 100_000).unwrap_or(false))
            })
            .unwrap_or(false);
        if busy {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "pull ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "no download started");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill_and_reap();
    let partial = store_blobs(&kiln.root);
    let all = image.all_digests();
    assert!(
        all.iter().any(|d| !partial.contains(d)),
        "the pull was cut short"
    );

    // What the killed pull was writing is left in ingest/<hex>.partial.
    let partials: Vec<(String, u64)> = std::fs::read_dir(&ingest)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let hex = name.strip_suffix(".partial")?.to_string();
            Some((hex, e.metadata().unwrap().len()))
        })
        .filter(|(_, len)| *len > 0)
        .collect();
    assert!(
        partials.iter().any(|(_, len)| *len > 100_000),
        "a partial file of the blob being written: {partials:?}"
    );

    proxy.set_plan(FaultPlan::default());
    let before = proxy.requests().len();
    kiln.ok(&["pull", &reference]);
    let blobs = store_blobs(&kiln.root);
    for digest in &all {
        assert!(
            blobs.contains(digest),
            "{digest} present after the second pull"
        );
    }
    // Each partial blob was continued where the killed pull stopped: one
    // Range request for the rest, never the whole blob again.
    let requests = proxy.requests()[before..].to_vec();
    let sizes: std::collections::HashMap<String, u64> = image.platforms[0]
        .layers
        .iter()
        .chain([&image.platforms[0].config])
        .map(|b| (b.digest.clone(), b.size))
        .collect();
    for (hex, len) in &partials {
        let digest = format!("sha256:{hex}");
        let size = sizes[&digest];
        let of_blob: Vec<&String> = requests
            .iter()
            .filter(|r| r.contains(&format!("/blobs/{digest}")))
            .collect();
        if *len == size {
            assert!(of_blob.is_empty(), "{digest}: {of_blob:?}");
        } else {
            assert_eq!(of_blob.len(), 1, "{digest}: {of_blob:?}");
            assert!(
                of_blob[0].ends_with(&format!("Range: bytes={len}-")),
                "{digest} resumed at {len}: {of_blob:?}"
            );
        }
    }
    assert!(
        std::fs::read_dir(&ingest).unwrap().next().is_none(),
        "ingest/ is empty after the pull"
    );
}

#[test]
fn two_pulls_at_once_into_one_store_both_succeed() {
    let registry = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let layers = vec![
        vec![TestFile::incompressible("a", 1_000_000, 5)],
        vec![TestFile::incompressible("b", 1_000_000, 6)],
    ];
    let (image, source) = seed(&registry, work.path(), "kiln/twice", &layers, None, None);
    let kiln = Kiln::new(work.path());
    let children: Vec<_> = (0..2)
        .map(|_| {
            kiln_testsupport::ChildGuard::spawn(
                kiln.command(&["pull", &source])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped()),
            )
            .unwrap()
        })
        .collect();
    for child in children {
        // A hang guard, not a timing assertion: a stuck pull fails the test.
        let out = child
            .wait_with_output_timeout(Duration::from_secs(300))
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let blobs = store_blobs(&kiln.root);
    for digest in image.all_digests() {
        assert!(blobs.contains(&digest), "{digest}");
    }
}

#[test]
fn identity_token_in_docker_config_is_exchanged_for_a_bearer_token() {
    let registry = RegistryServer::start_token("carol", "secret").unwrap();
    let work = tempfile::tempdir().unwrap();
    let (image, source) = seed(
        &registry,
        work.path(),
        "kiln/refresh",
        &small_layers(),
        Some(("carol", "secret")),
        None,
    );
    let kiln = Kiln::new(work.path());
    kiln.ok(&["pull", &source]);
    let target = format!("{}/kiln/refresh-copy:v1", registry.host);
    kiln.ok(&["tag", &source, &target]);
    let tokens = registry.token_server.as_ref().unwrap();

    // A wrong refresh token is refused by the token server.
    let config = |token: &str| {
        serde_json::json!({"auths": {registry.host.clone(): {"identitytoken": token}}}).to_string()
    };
    std::fs::write(
        kiln.docker_config.join("config.json"),
        config("kiln-test-refresh-mallory"),
    )
    .unwrap();
    let refused_before = tokens.requests_refused();
    let out = kiln.run(&["push", &target]);
    assert!(!out.status.success());
    assert!(tokens.requests_refused() > refused_before);

    std::fs::write(
        kiln.docker_config.join("config.json"),
        config(&tokens.refresh_token("carol")),
    )
    .unwrap();
    let stdout = kiln.ok(&["push", &target]);
    assert!(stdout.contains(&image.digest), "{stdout}");
    let raw = skopeo_raw_manifest(
        &format!("docker://{target}"),
        Some(("carol", "secret")),
        None,
    )
    .unwrap();
    assert_eq!(digest_of(&raw), image.digest);
}

/// What a loaded two-core machine may add to a configured limit.
const STALL_MARGIN: Duration = Duration::from_secs(20);

/// Runs `kiln pull REFERENCE` into a fresh store under `dir` with `env`
/// and extra `flags`; returns the output and how long it took.
fn timed_pull(
    dir: &Path,
    reference: &str,
    env: &[(&str, &str)],
    flags: &[&str],
) -> (Output, Duration) {
    let kiln = Kiln::new(dir);
    let mut command = kiln.command(&["pull"]);
    command.args(flags).arg(reference).envs(env.iter().copied());
    let started = Instant::now();
    let out = command.output().unwrap();
    (out, started.elapsed())
}

/// `KILN_REGISTRY_TIMEOUT` (and `--registry-timeout`, which wins) is the
/// deadline of a manifest: a manifest trickling in at 100 B/s, which takes
/// some 5 s, fails at a 3 s deadline and arrives within the default one.
#[test]
fn registry_timeout_is_the_deadline_of_a_manifest() {
    let registry = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    seed(
        &registry,
        work.path(),
        "kiln/deadline",
        &small_layers(),
        None,
        None,
    );
    let proxy = FaultProxy::start(
        registry.addr,
        FaultPlan {
            manifest_throttle: Some(Throttle {
                bytes: 10,
                every: Duration::from_millis(100),
            }),
            ..Default::default()
        },
    )
    .unwrap();
    let reference = format!("{}/kiln/deadline:v1", proxy.host);

    let (out, took) = timed_pull(
        &work.path().join("short"),
        &reference,
        &[("KILN_REGISTRY_TIMEOUT", "3")],
        &[],
    );
    assert!(!out.status.success(), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(
        text.contains(&format!("{}/kiln/deadline: manifest", proxy.host))
            && text.contains("not received within the 3 s deadline"),
        "{text}"
    );
    assert!(
        took < Duration::from_secs(3) + STALL_MARGIN,
        "{took:?}: {text}"
    );
    eprintln!("KILN_REGISTRY_TIMEOUT=3 failed after {took:.1?}: {text}");

    // The flag wins over the environment.
    let (out, _) = timed_pull(
        &work.path().join("flag"),
        &reference,
        &[("KILN_REGISTRY_TIMEOUT", "600")],
        &["--registry-timeout", "3"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not received within the 3 s deadline"),
        "{}",
        stderr(&out)
    );

    let (out, took) = timed_pull(&work.path().join("default"), &reference, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        took > Duration::from_secs(3),
        "the manifest was slow: {took:?}"
    );
}

/// `KILN_REGISTRY_SPEED_LIMIT` and `KILN_REGISTRY_SPEED_TIME` are the speed
/// cutoff of blobs: a layer sent at about 20 kB/s fails a 100 kB/s floor
/// after the 2 s window, passes a 1 kB/s floor, and passes the 100 kB/s
/// floor too when the window is longer than the whole download.
#[test]
fn registry_speed_settings_cut_a_slow_blob() {
    let registry = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let layers = vec![vec![TestFile::incompressible("big", 100_000, 17)]];
    let (image, _) = seed(&registry, work.path(), "kiln/slow", &layers, None, None);
    let proxy = FaultProxy::start(
        registry.addr,
        FaultPlan {
            blob_throttle: Some(Throttle {
                bytes: 2048,
                every: Duration::from_millis(100),
            }),
            ..Default::default()
        },
    )
    .unwrap();
    let reference = format!("{}/kiln/slow:v1", proxy.host);
    let layer = &image.platforms[0].layers[0].digest;

    let (out, took) = timed_pull(
        &work.path().join("fast-floor"),
        &reference,
        &[
            ("KILN_REGISTRY_SPEED_LIMIT", "100000"),
            ("KILN_REGISTRY_SPEED_TIME", "2"),
        ],
        &[],
    );
    assert!(!out.status.success(), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(
        text.contains(&format!("{}/kiln/slow: blob {layer}", proxy.host))
            && text.contains("transfer below 100000 B/s for 2 s"),
        "{text}"
    );
    assert!(
        took < Duration::from_secs(2) + STALL_MARGIN,
        "{took:?}: {text}"
    );
    eprintln!("KILN_REGISTRY_SPEED_LIMIT=100000 failed after {took:.1?}: {text}");

    let (out, _) = timed_pull(
        &work.path().join("slow-floor"),
        &reference,
        &[
            ("KILN_REGISTRY_SPEED_LIMIT", "1000"),
            ("KILN_REGISTRY_SPEED_TIME", "2"),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let (out, _) = timed_pull(
        &work.path().join("long-window"),
        &reference,
        &[
            ("KILN_REGISTRY_SPEED_LIMIT", "100000"),
            ("KILN_REGISTRY_SPEED_TIME", "60"),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}
