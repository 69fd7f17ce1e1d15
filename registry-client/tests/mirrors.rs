//! Registry mirrors and per-registry settings (a registry configuration
//! file's `[registry."HOST"]` tables) against real distribution registries:
//! fault proxies in front of them count what each host was asked; images
//! are seeded with skopeo.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kiln_registry::{
    Client, ClientConfig, Credential, CredentialSource, Digest, Error, MemoryBlob, Reference,
    RegistryHosts, RetryPolicy,
};
use kiln_testsupport::image::{host_platform, skopeo_copy, write_oci_layout, TestFile, TestImage};
use kiln_testsupport::proxy::StatusFault;
use kiln_testsupport::{FaultPlan, FaultProxy, RegistryServer};

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        max_retry_after: Duration::from_secs(1),
    }
}

/// Reads `text` as the registry configuration file `dir/registries.toml`.
fn hosts(dir: &Path, text: &str) -> RegistryHosts {
    let file = dir.join("registries.toml");
    std::fs::write(&file, text).unwrap();
    RegistryHosts::load(&file).unwrap()
}

fn config(hosts: RegistryHosts) -> ClientConfig {
    ClientConfig {
        hosts,
        credentials: CredentialSource {
            ignore_docker_config: true,
            ..Default::default()
        },
        retry: quick_retries(),
        ..Default::default()
    }
}

fn client(hosts: RegistryHosts) -> Client {
    Client::new(config(hosts)).unwrap()
}

/// Pushes a one-platform, two-layer image to `HOST/REPO:v1` with skopeo
/// (`cert_dir`: skopeo's certificate directory for a TLS registry).
fn seed(
    work: &Path,
    target: &str,
    creds: Option<(&str, &str)>,
    cert_dir: Option<&Path>,
) -> TestImage {
    let layout = work.join(format!("layout-{}", target.replace(['/', ':'], "_")));
    let image = write_oci_layout(
        &layout,
        "v1",
        &[&host_platform()],
        &[
            vec![TestFile::new("etc/os-release", "NAME=kiln-mirror-test\n")],
            vec![TestFile::new("usr/share/data", vec![7u8; 40_000])],
        ],
    )
    .unwrap();
    skopeo_copy(
        &format!("oci:{}:v1", image.layout.display()),
        &format!("docker://{target}:v1"),
        creds,
        cert_dir,
    )
    .unwrap();
    image
}

/// Fetches what a pull of `reference` fetches (the manifest, its config
/// and layers) and checks each against `image`.
async fn pull(client: &Client, reference: &Reference, image: &TestImage) -> Result<(), Error> {
    let manifest = client.fetch_manifest(reference).await?;
    let platform = &image.platforms[0];
    assert_eq!(manifest.digest.to_string(), platform.manifest.digest);
    for blob in std::iter::once(&platform.config).chain(&platform.layers) {
        let digest = Digest::parse(&blob.digest).unwrap();
        let mut bytes = Vec::new();
        client
            .fetch_blob(&reference.repository, &digest, Some(blob.size), &mut bytes)
            .await?;
        assert_eq!(Digest::of(&bytes), digest);
    }
    Ok(())
}

/// The GETs of manifests and blobs in `requests`, without the ping.
fn content_gets(requests: &[String]) -> Vec<&String> {
    requests
        .iter()
        .filter(|r| r.contains("/manifests/") || r.contains("/blobs/"))
        .collect()
}

fn proxy(registry: &RegistryServer) -> FaultProxy {
    FaultProxy::start(registry.addr, FaultPlan::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_has_the_image_serves_the_pull_and_pushes_go_to_the_registry() {
    let work = tempfile::tempdir().unwrap();
    let origin_registry = RegistryServer::start_plain().unwrap();
    let mirror_registry = RegistryServer::start_plain().unwrap();
    let (origin, mirror) = (proxy(&origin_registry), proxy(&mirror_registry));
    let image = seed(
        work.path(),
        &format!("{}/kiln/app", mirror_registry.host),
        None,
        None,
    );
    let hosts = hosts(
        work.path(),
        &format!(
            "[registry.\"{}\"]\nmirrors = [\"{}\"]\n",
            origin.host, mirror.host
        ),
    );
    let client = client(hosts);
    let reference = Reference::parse(&format!("{}/kiln/app:v1", origin.host)).unwrap();
    pull(&client, &reference, &image).await.unwrap();

    // Every GET went to the mirror, naming the registry it stands in for;
    // the registry was not asked at all.
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
    let asked = mirror.requests();
    // `ns` is form-encoded, as Go's url.Values encodes it for containerd.
    let ns = format!("?ns={}", origin.host.replace(':', "%3A"));
    assert!(
        asked.contains(&format!("GET /v2/kiln/app/manifests/v1{ns}")),
        "{asked:?}"
    );
    let platform = &image.platforms[0];
    for blob in std::iter::once(&platform.config).chain(&platform.layers) {
        let get = format!("GET /v2/kiln/app/blobs/{}{ns}", blob.digest);
        assert_eq!(asked.iter().filter(|r| **r == get).count(), 1, "{asked:?}");
    }

    // A push goes to the registry only.
    let before = mirror.requests().len();
    let pushed = Reference::parse(&format!("{}/kiln/pushed:v1", origin.host)).unwrap();
    let layer = Bytes::from_static(b"pushed through the registry, never the mirror");
    client
        .push_blob(
            &pushed.repository,
            &Digest::of(&layer),
            Arc::new(MemoryBlob(layer.clone())),
            None,
        )
        .await
        .unwrap();
    assert_eq!(mirror.requests().len(), before, "{:?}", mirror.requests());
    assert!(
        origin
            .requests()
            .iter()
            .any(|r| r.starts_with("POST /v2/kiln/pushed/blobs/uploads/")),
        "{:?}",
        origin.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_without_the_image_hands_each_request_to_the_registry() {
    let work = tempfile::tempdir().unwrap();
    let origin_registry = RegistryServer::start_plain().unwrap();
    let mirror_registry = RegistryServer::start_plain().unwrap();
    let (origin, mirror) = (proxy(&origin_registry), proxy(&mirror_registry));
    let image = seed(
        work.path(),
        &format!("{}/kiln/app", origin_registry.host),
        None,
        None,
    );
    let hosts = hosts(
        work.path(),
        &format!(
            "[registry.\"{}\"]\nmirrors = [\"{}\"]\n",
            origin.host, mirror.host
        ),
    );
    let client = client(hosts);
    let reference = Reference::parse(&format!("{}/kiln/app:v1", origin.host)).unwrap();
    pull(&client, &reference, &image).await.unwrap();

    // The mirror was asked for each document once (its 404 is not
    // retried), then the registry served it.
    let platform = &image.platforms[0];
    let documents = 2 + platform.layers.len();
    assert_eq!(content_gets(&mirror.requests()).len(), documents);
    assert_eq!(content_gets(&origin.requests()).len(), documents);
    assert!(origin
        .requests()
        .contains(&"GET /v2/kiln/app/manifests/v1".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_is_down_is_asked_once_then_passed_over() {
    let work = tempfile::tempdir().unwrap();
    let origin_registry = RegistryServer::start_plain().unwrap();
    let origin = proxy(&origin_registry);
    // A proxy with nothing behind it (port 0 cannot be connected to): it
    // takes the request, then hangs up.
    let nowhere = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mirror = FaultProxy::start(nowhere, FaultPlan::default()).unwrap();
    let image = seed(
        work.path(),
        &format!("{}/kiln/app", origin_registry.host),
        None,
        None,
    );
    let hosts = hosts(
        work.path(),
        &format!(
            "[registry.\"{}\"]\nmirrors = [\"{}\"]\n",
            origin.host, mirror.host
        ),
    );
    let client = client(hosts);
    let reference = Reference::parse(&format!("{}/kiln/app:v1", origin.host)).unwrap();
    pull(&client, &reference, &image).await.unwrap();
    pull(&client, &reference, &image).await.unwrap();
    // One probe, then never again; the registry served everything.
    assert_eq!(mirror.requests(), ["GET /v2/"]);
    let documents = 2 + image.platforms[0].layers.len();
    assert_eq!(content_gets(&origin.requests()).len(), 2 * documents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_answering_errors_is_not_retried_and_the_registry_is() {
    let work = tempfile::tempdir().unwrap();
    let origin_registry = RegistryServer::start_plain().unwrap();
    let mirror_registry = RegistryServer::start_plain().unwrap();
    let origin = proxy(&origin_registry);
    let mirror = proxy(&mirror_registry);
    let image = seed(
        work.path(),
        &format!("{}/kiln/app", origin_registry.host),
        None,
        None,
    );
    let failing = |times| FaultPlan {
        status_faults: vec![StatusFault {
            status: 503,
            times,
            retry_after: None,
            path_contains: "/manifests/".into(),
        }],
        ..FaultPlan::default()
    };
    mirror.set_plan(failing(10));
    origin.set_plan(failing(1));
    let hosts = hosts(
        work.path(),
        &format!(
            "[registry.\"{}\"]\nmirrors = [\"{}\"]\n",
            origin.host, mirror.host
        ),
    );
    let client = client(hosts);
    let reference = Reference::parse(&format!("{}/kiln/app:v1", origin.host)).unwrap();
    pull(&client, &reference, &image).await.unwrap();
    let manifest_gets = |p: &FaultProxy| {
        p.requests()
            .iter()
            .filter(|r| r.contains("/manifests/"))
            .count()
    };
    assert_eq!(manifest_gets(&mirror), 1, "{:?}", mirror.requests());
    // The registry's 503 was retried.
    assert_eq!(manifest_gets(&origin), 2, "{:?}", origin.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_path_is_put_before_the_repository_name() {
    let work = tempfile::tempdir().unwrap();
    let mirror_registry = RegistryServer::start_plain().unwrap();
    let mirror = proxy(&mirror_registry);
    let image = seed(
        work.path(),
        &format!("{}/proxy/docker.io/kiln/app", mirror_registry.host),
        None,
        None,
    );
    // The registry itself does not even exist: the mirror is enough.
    let hosts = hosts(
        work.path(),
        &format!(
            "[registry.\"registry.invalid\"]\nmirrors = [\"https://{}/proxy/docker.io/\"]\n",
            mirror.host
        ),
    );
    let client = client(hosts);
    let reference = Reference::parse("registry.invalid/kiln/app:v1").unwrap();
    pull(&client, &reference, &image).await.unwrap();
    assert!(
        mirror.requests().contains(
            &"GET /v2/proxy/docker.io/kiln/app/manifests/v1?ns=registry.invalid".to_string()
        ),
        "{:?}",
        mirror.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_true_speaks_plain_http_at_once_and_http_false_refuses_it() {
    let work = tempfile::tempdir().unwrap();
    let registry = RegistryServer::start_plain().unwrap();
    let front = proxy(&registry);
    let image = seed(
        work.path(),
        &format!("{}/kiln/app", registry.host),
        None,
        None,
    );
    let reference = Reference::parse(&format!("{}/kiln/app:v1", front.host)).unwrap();

    // No table: a loopback registry is tried over HTTPS first.
    pull(&client(RegistryHosts::default()), &reference, &image)
        .await
        .unwrap();
    let hellos = front.tls_hellos();
    assert!(hellos >= 1);

    // http = true: plain HTTP only, no TLS handshake.
    let plain = hosts(
        work.path(),
        &format!("[registry.\"{}\"]\nhttp = true\n", front.host),
    );
    pull(&client(plain), &reference, &image).await.unwrap();
    assert_eq!(front.tls_hellos(), hellos);

    // http = false: HTTPS only, which this registry does not speak.
    let https_only = hosts(
        work.path(),
        &format!("[registry.\"{}\"]\nhttp = false\n", front.host),
    );
    let err = pull(&client(https_only), &reference, &image)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Unreachable { registry, .. } if *registry == front.host),
        "{err}"
    );
    assert_eq!(front.tls_hellos(), hellos + 1);
}

/// skopeo's (and BuildKit's `tlsconfigdir`) certificate directory:
/// `ca.crt`, and `client.cert` with `client.key` when given.
fn cert_dir(work: &Path, registry: &RegistryServer) -> PathBuf {
    let dir = work.join("certs.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(registry.ca_cert.as_ref().unwrap(), dir.join("ca.crt")).unwrap();
    if let Some((cert, key)) = &registry.client_cert {
        std::fs::copy(cert, dir.join("client.cert")).unwrap();
        std::fs::copy(key, dir.join("client.key")).unwrap();
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_and_insecure_reach_a_registry_with_a_private_certificate() {
    let work = tempfile::tempdir().unwrap();
    let registry = RegistryServer::start_tls_basic("ada", "lovelace").unwrap();
    let certs = cert_dir(work.path(), &registry);
    let image = seed(
        work.path(),
        &format!("{}/kiln/app", registry.host),
        Some(("ada", "lovelace")),
        Some(&certs),
    );
    let reference = Reference::parse(&format!("{}/kiln/app:v1", registry.host)).unwrap();
    let with_login = |hosts| {
        let mut config = config(hosts);
        config.credentials.explicit.insert(
            registry.host.clone(),
            Credential::UsernamePassword {
                username: "ada".into(),
                password: "lovelace".into(),
            },
        );
        Client::new(config).unwrap()
    };

    let err = pull(&with_login(RegistryHosts::default()), &reference, &image)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");

    let ca = hosts(
        work.path(),
        &format!(
            "[registry.\"{}\"]\nca = [\"{}\"]\n",
            registry.host,
            registry.ca_cert.as_ref().unwrap().display()
        ),
    );
    pull(&with_login(ca), &reference, &image).await.unwrap();

    let insecure = hosts(
        work.path(),
        &format!("[registry.\"{}\"]\ninsecure = true\n", registry.host),
    );
    pull(&with_login(insecure), &reference, &image)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_keypair_or_tlsconfigdir() {
    let work = tempfile::tempdir().unwrap();
    let registry = RegistryServer::start_tls_client_cert().unwrap();
    let certs = cert_dir(work.path(), &registry);
    let image = seed(
        work.path(),
        &format!("{}/kiln/app", registry.host),
        None,
        Some(&certs),
    );
    let reference = Reference::parse(&format!("{}/kiln/app:v1", registry.host)).unwrap();
    let ca = registry.ca_cert.as_ref().unwrap().display().to_string();
    let table = format!("[registry.\"{}\"]\nca = [\"{ca}\"]\n", registry.host);

    // Trusted, but without a certificate of its own: the registry refuses.
    let err = pull(&client(hosts(work.path(), &table)), &reference, &image)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");

    let (cert, key) = registry.client_cert.as_ref().unwrap();
    let keypair = format!(
        "{table}[[registry.\"{}\".keypair]]\nkey = \"{}\"\ncert = \"{}\"\n",
        registry.host,
        key.display(),
        cert.display()
    );
    pull(&client(hosts(work.path(), &keypair)), &reference, &image)
        .await
        .unwrap();

    let dir = format!(
        "[registry.\"{}\"]\ntlsconfigdir = [\"{}\"]\n",
        registry.host,
        certs.display()
    );
    pull(&client(hosts(work.path(), &dir)), &reference, &image)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_is_reached_with_its_own_table_and_credentials() {
    let work = tempfile::tempdir().unwrap();
    let origin_registry = RegistryServer::start_plain().unwrap();
    let origin = proxy(&origin_registry);
    let mirror = RegistryServer::start_tls_basic("grace", "hopper").unwrap();
    let certs = cert_dir(work.path(), &mirror);
    let image = seed(
        work.path(),
        &format!("{}/kiln/app", mirror.host),
        Some(("grace", "hopper")),
        Some(&certs),
    );
    let hosts = hosts(
        work.path(),
        &format!(
            "[registry.\"{origin}\"]\nmirrors = [\"{mirror}\"]\n\n[registry.\"{mirror}\"]\nca = [\"{ca}\"]\n",
            origin = origin.host,
            mirror = mirror.host,
            ca = mirror.ca_cert.as_ref().unwrap().display()
        ),
    );
    // Credentials for the mirror's host only.
    let mut config = config(hosts);
    config.credentials.explicit.insert(
        mirror.host.clone(),
        Credential::UsernamePassword {
            username: "grace".into(),
            password: "hopper".into(),
        },
    );
    let client = Client::new(config).unwrap();
    let reference = Reference::parse(&format!("{}/kiln/app:v1", origin.host)).unwrap();
    pull(&client, &reference, &image).await.unwrap();
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
}
