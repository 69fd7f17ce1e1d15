//! The registry client against a real distribution registry: plain HTTP,
//! TLS with basic auth, token auth, and a fault-injecting proxy.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kiln_registry::{
    Client, ClientConfig, Credential, CredentialSource, Digest, Error, MemoryBlob, PushOutcome,
    Reference, RetryPolicy,
};
use kiln_testsupport::image::{skopeo_copy, write_oci_layout, TestFile};
use kiln_testsupport::proxy::StatusFault;
use kiln_testsupport::{FaultPlan, FaultProxy, RegistryServer};

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        max_retries: 4,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        max_retry_after: Duration::from_secs(2),
    }
}

fn config() -> ClientConfig {
    ClientConfig {
        credentials: CredentialSource {
            ignore_docker_config: true,
            ..Default::default()
        },
        retry: quick_retries(),
        ..Default::default()
    }
}

fn with_credentials(
    mut config: ClientConfig,
    registry: &str,
    user: &str,
    pass: &str,
) -> ClientConfig {
    config.credentials.explicit.insert(
        registry.to_string(),
        Credential::UsernamePassword {
            username: user.into(),
            password: pass.into(),
        },
    );
    config
}

/// Bytes that differ per call site, large enough to span several reads.
fn blob_bytes(seed: u8, len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>(),
    )
}

/// Pushes a one-layer image with `client` and returns (reference, layer, config, manifest bytes).
async fn push_small_image(
    client: &Client,
    reference: &Reference,
    layer: Bytes,
) -> (Digest, Digest, Vec<u8>) {
    let repo = &reference.repository;
    let layer_digest = Digest::of(&layer);
    let config = Bytes::from(
        r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
    );
    let config_digest = Digest::of(&config);
    client
        .push_blob(
            repo,
            &layer_digest,
            Arc::new(MemoryBlob(layer.clone())),
            None,
        )
        .await
        .unwrap();
    client
        .push_blob(
            repo,
            &config_digest,
            Arc::new(MemoryBlob(config.clone())),
            None,
        )
        .await
        .unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest.to_string(), "size": layer.len()}],
    })
    .to_string()
    .into_bytes();
    client
        .put_manifest(
            repo,
            reference.tag.as_deref().unwrap_or("latest"),
            "application/vnd.oci.image.manifest.v1+json",
            Bytes::from(manifest.clone()),
        )
        .await
        .unwrap();
    (layer_digest, config_digest, manifest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_registry_push_pull_mount_and_chunked_upload() {
    let registry = RegistryServer::start_plain().unwrap();
    let client = Client::new(config()).unwrap();
    let reference = Reference::parse(&format!("{}/kiln/plain:v1", registry.host)).unwrap();
    let layer = blob_bytes(1, 300_000);
    let (layer_digest, _config_digest, manifest) =
        push_small_image(&client, &reference, layer.clone()).await;

    // The manifest comes back byte for byte, with its digest.
    let fetched = client.fetch_manifest(&reference).await.unwrap();
    assert_eq!(fetched.bytes, manifest);
    assert_eq!(fetched.digest, Digest::of(&manifest));
    assert_eq!(
        fetched.media_type,
        "application/vnd.oci.image.manifest.v1+json"
    );
    let by_digest = client
        .fetch_manifest(&reference.with_digest(fetched.digest.clone()))
        .await
        .unwrap();
    assert_eq!(by_digest.bytes, manifest);

    // The blob streams back verified.
    let mut sink = Vec::new();
    let n = client
        .fetch_blob(
            &reference.repository,
            &layer_digest,
            Some(layer.len() as u64),
            &mut sink,
        )
        .await
        .unwrap();
    assert_eq!(n, layer.len() as u64);
    assert_eq!(sink, layer);

    // Pushing again skips the upload.
    let again = client
        .push_blob(
            &reference.repository,
            &layer_digest,
            Arc::new(MemoryBlob(layer.clone())),
            None,
        )
        .await
        .unwrap();
    assert_eq!(again, PushOutcome::Exists);

    // Cross-repository mount within the registry.
    let other = Reference::parse(&format!("{}/kiln/other:v1", registry.host)).unwrap();
    assert_eq!(
        client
            .blob_exists(&other.repository, &layer_digest)
            .await
            .unwrap(),
        None
    );
    let mounted = client
        .push_blob(
            &other.repository,
            &layer_digest,
            Arc::new(MemoryBlob(layer.clone())),
            Some(&reference.repository),
        )
        .await
        .unwrap();
    assert_eq!(mounted, PushOutcome::Mounted);
    assert_eq!(
        client
            .blob_exists(&other.repository, &layer_digest)
            .await
            .unwrap(),
        Some(layer.len() as u64)
    );

    // Chunked upload: PATCH with Content-Range, then PUT.
    let chunked = Client::new(ClientConfig {
        chunk_size: Some(64 * 1024),
        ..config()
    })
    .unwrap();
    let big = blob_bytes(7, 200_001);
    let big_digest = Digest::of(&big);
    let outcome = chunked
        .push_blob(
            &reference.repository,
            &big_digest,
            Arc::new(MemoryBlob(big.clone())),
            None,
        )
        .await
        .unwrap();
    assert_eq!(outcome, PushOutcome::Uploaded);
    let mut sink = Vec::new();
    client
        .fetch_blob(
            &reference.repository,
            &big_digest,
            Some(big.len() as u64),
            &mut sink,
        )
        .await
        .unwrap();
    assert_eq!(sink, big);

    // A missing manifest and a missing blob name what was missing.
    let missing = client
        .fetch_manifest(&reference.with_tag("nope"))
        .await
        .unwrap_err();
    assert!(matches!(missing, Error::NotFound { .. }), "{missing}");
    assert!(missing.to_string().contains("kiln/plain"), "{missing}");
    let absent = Digest::of(b"absent");
    let err = client
        .fetch_blob(&reference.repository, &absent, None, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&absent.to_string()), "{err}");
    assert!(err.to_string().contains(&registry.host), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registry_with_basic_auth() {
    let registry = RegistryServer::start_tls_basic("alice", "wonderland").unwrap();
    let ca = registry.ca_cert.clone().unwrap();
    let reference = Reference::parse(&format!("{}/kiln/secure:v1", registry.host)).unwrap();

    // Trusting the test CA and with credentials: push and pull work.
    let trusted = ClientConfig {
        ca_certs: vec![ca.clone()],
        ..config()
    };
    let client = Client::new(with_credentials(
        trusted.clone(),
        &registry.host,
        "alice",
        "wonderland",
    ))
    .unwrap();
    let layer = blob_bytes(3, 10_000);
    let (layer_digest, _, manifest) = push_small_image(&client, &reference, layer.clone()).await;
    assert_eq!(
        client.fetch_manifest(&reference).await.unwrap().bytes,
        manifest
    );
    client.check_login(&registry.host).await.unwrap();

    // Wrong password: denied.
    let wrong = Client::new(with_credentials(
        trusted.clone(),
        &registry.host,
        "alice",
        "nope",
    ))
    .unwrap();
    let err = wrong
        .fetch_blob(&reference.repository, &layer_digest, None, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Denied { status: 401, .. }), "{err}");
    assert!(wrong.check_login(&registry.host).await.is_err());

    // Without the CA the certificate is refused, and there is no silent
    // fallback to plain HTTP that would work.
    let untrusted = Client::new(with_credentials(
        config(),
        &registry.host,
        "alice",
        "wonderland",
    ))
    .unwrap();
    let err = untrusted.fetch_manifest(&reference).await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // --insecure-registry accepts the unverified certificate.
    let insecure = Client::new(with_credentials(
        ClientConfig {
            insecure_registries: vec![registry.host.clone()],
            ..config()
        },
        &registry.host,
        "alice",
        "wonderland",
    ))
    .unwrap();
    assert_eq!(
        insecure.fetch_manifest(&reference).await.unwrap().bytes,
        manifest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_registry() {
    let registry = RegistryServer::start_token("bob", "builder").unwrap();
    let tokens = registry.token_server.as_ref().unwrap();
    let reference = Reference::parse(&format!("{}/kiln/token:v1", registry.host)).unwrap();

    // Anonymous clients get a pull-only token: pushing is refused.
    let anonymous = Client::new(config()).unwrap();
    let layer = blob_bytes(9, 50_000);
    let layer_digest = Digest::of(&layer);
    let err = anonymous
        .push_blob(
            &reference.repository,
            &layer_digest,
            Arc::new(MemoryBlob(layer.clone())),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Denied { .. }), "{err}");
    assert!(tokens.tokens_issued() > 0);

    // With credentials: push works, through bearer tokens.
    let issued_before = tokens.tokens_issued();
    let client = Client::new(with_credentials(config(), &registry.host, "bob", "builder")).unwrap();
    let (_, _, manifest) = push_small_image(&client, &reference, layer.clone()).await;
    assert!(tokens.tokens_issued() > issued_before);
    client.check_login(&registry.host).await.unwrap();

    // Anonymous pull works.
    let fetched = anonymous.fetch_manifest(&reference).await.unwrap();
    assert_eq!(fetched.bytes, manifest);
    let mut sink = Vec::new();
    anonymous
        .fetch_blob(
            &reference.repository,
            &layer_digest,
            Some(layer.len() as u64),
            &mut sink,
        )
        .await
        .unwrap();
    assert_eq!(sink, layer);

    // Bad credentials: the token server refuses, and the error says where.
    let wrong = Client::new(with_credentials(config(), &registry.host, "bob", "nope")).unwrap();
    let err = wrong.fetch_manifest(&reference).await.unwrap_err();
    assert!(matches!(err, Error::Token { .. }), "{err}");
    assert!(tokens.requests_refused() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_an_image_skopeo_pushed() {
    let registry = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let image = write_oci_layout(
        &work.path().join("layout"),
        "v1",
        &["linux/amd64"],
        &[
            vec![TestFile::new("hello.txt", "hello")],
            vec![TestFile::new("bin/tool", vec![7u8; 5000])],
        ],
    )
    .unwrap();
    let target = format!("{}/kiln/skopeo:v1", registry.host);
    skopeo_copy(
        &format!("oci:{}:v1", image.layout.display()),
        &format!("docker://{target}"),
        None,
        None,
    )
    .unwrap();
    let client = Client::new(config()).unwrap();
    let reference = Reference::parse(&target).unwrap();
    let manifest = client.fetch_manifest(&reference).await.unwrap();
    assert_eq!(manifest.digest.to_string(), image.digest);
    for layer in &image.platforms[0].layers {
        let digest: Digest = layer.digest.parse().unwrap();
        let mut sink = Vec::new();
        client
            .fetch_blob(&reference.repository, &digest, Some(layer.size), &mut sink)
            .await
            .unwrap();
        assert_eq!(Digest::of(&sink), digest);
    }
}

/// A registry with one large blob, and a client to read it through a proxy.
async fn proxied_blob(plan: FaultPlan) -> (RegistryServer, FaultProxy, Client, Reference, Bytes) {
    let registry = RegistryServer::start_plain().unwrap();
    let direct = Client::new(config()).unwrap();
    let reference = Reference::parse(&format!("{}/kiln/faults:v1", registry.host)).unwrap();
    let blob = blob_bytes(5, 1_500_000);
    direct
        .push_blob(
            &reference.repository,
            &Digest::of(&blob),
            Arc::new(MemoryBlob(blob.clone())),
            None,
        )
        .await
        .unwrap();
    let proxy = FaultProxy::start(registry.addr, plan).unwrap();
    let through_proxy = Reference::parse(&format!("{}/kiln/faults:v1", proxy.host)).unwrap();
    (
        registry,
        proxy,
        Client::new(config()).unwrap(),
        through_proxy,
        blob,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_mid_blob_is_resumed_with_range() {
    let (_registry, proxy, client, reference, blob) = proxied_blob(FaultPlan {
        drop_blob_after: Some(400_000),
        drop_times: 2,
        ..Default::default()
    })
    .await;
    let digest = Digest::of(&blob);
    let mut sink = Vec::new();
    let n = client
        .fetch_blob(
            &reference.repository,
            &digest,
            Some(blob.len() as u64),
            &mut sink,
        )
        .await
        .unwrap();
    assert_eq!(n, blob.len() as u64);
    assert_eq!(sink, blob);
    assert_eq!(proxy.drops_injected(), 2);
    let ranged: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.contains("Range:"))
        .collect();
    assert!(
        ranged.iter().any(|r| r.contains("bytes=400000-")),
        "resumed from the cut: {ranged:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_rate_limits_are_retried() {
    let (_registry, proxy, client, reference, blob) = proxied_blob(FaultPlan {
        status_faults: vec![
            StatusFault {
                status: 503,
                times: 2,
                retry_after: None,
                path_contains: "/blobs/".into(),
            },
            StatusFault {
                status: 500,
                times: 1,
                retry_after: None,
                path_contains: "/blobs/".into(),
            },
            StatusFault {
                status: 429,
                times: 1,
                retry_after: Some(1),
                path_contains: "/blobs/".into(),
            },
        ],
        ..Default::default()
    })
    .await;
    let digest = Digest::of(&blob);
    let mut sink = Vec::new();
    client
        .fetch_blob(
            &reference.repository,
            &digest,
            Some(blob.len() as u64),
            &mut sink,
        )
        .await
        .unwrap();
    assert_eq!(sink, blob);
    assert_eq!(proxy.statuses_injected(), 4);

    // More failures than retries: the error names the status and blob.
    proxy.set_plan(FaultPlan {
        status_faults: vec![StatusFault {
            status: 503,
            times: 100,
            retry_after: None,
            path_contains: "/blobs/".into(),
        }],
        ..Default::default()
    });
    let err = client
        .fetch_blob(
            &reference.repository,
            &digest,
            Some(blob.len() as u64),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Status { status: 503, .. }), "{err}");
    assert!(err.to_string().contains(&digest.to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_is_a_digest_mismatch() {
    let (_registry, proxy, client, reference, blob) = proxied_blob(FaultPlan {
        flip_blob_byte_at: Some(123_456),
        ..Default::default()
    })
    .await;
    let digest = Digest::of(&blob);
    let err = client
        .fetch_blob(
            &reference.repository,
            &digest,
            Some(blob.len() as u64),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&digest.to_string()) && text.contains(&proxy.host),
        "{text}"
    );
    assert_eq!(proxy.flips_injected(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_uploads_start_a_new_session() {
    let registry = RegistryServer::start_plain().unwrap();
    let proxy = FaultProxy::start(
        registry.addr,
        FaultPlan {
            drop_upload_after: Some(100_000),
            drop_upload_times: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let blob = blob_bytes(11, 700_000);
    let digest = Digest::of(&blob);
    for chunk_size in [None, Some(256 * 1024)] {
        let client = Client::new(ClientConfig {
            chunk_size,
            ..config()
        })
        .unwrap();
        let repo = Reference::parse(&format!(
            "{}/kiln/uploads-{}:v1",
            proxy.host,
            chunk_size.unwrap_or(0)
        ))
        .unwrap()
        .repository;
        let outcome = client
            .push_blob(&repo, &digest, Arc::new(MemoryBlob(blob.clone())), None)
            .await
            .unwrap();
        assert_eq!(outcome, PushOutcome::Uploaded);
        let mut sink = Vec::new();
        client
            .fetch_blob(&repo, &digest, Some(blob.len() as u64), &mut sink)
            .await
            .unwrap();
        assert_eq!(sink, blob);
        proxy.set_plan(FaultPlan {
            drop_upload_after: Some(100_000),
            drop_upload_times: 1,
            ..Default::default()
        });
    }
    assert_eq!(proxy.drops_injected(), 3);
}

/// `chunk_size` uploads a blob in PATCH requests of that many bytes (the
/// last one shorter), then a PUT with no body; without it, one PUT
/// carries the whole blob. Counted on the wire, through a proxy that
/// injects nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_uploads_send_one_patch_per_chunk() {
    let registry = RegistryServer::start_plain().unwrap();
    let proxy = FaultProxy::start(registry.addr, FaultPlan::default()).unwrap();
    let blob = blob_bytes(13, 300_000);
    let digest = Digest::of(&blob);
    for (chunk_size, patches) in [(None, 0), (Some(64 * 1024), 5), (Some(100_000), 3)] {
        let client = Client::new(ClientConfig {
            chunk_size,
            ..config()
        })
        .unwrap();
        let name = format!("kiln/chunks-{}", chunk_size.unwrap_or(0));
        let repo = Reference::parse(&format!("{}/{name}:v1", proxy.host))
            .unwrap()
            .repository;
        let before = proxy.requests().len();
        let outcome = client
            .push_blob(&repo, &digest, Arc::new(MemoryBlob(blob.clone())), None)
            .await
            .unwrap();
        assert_eq!(outcome, PushOutcome::Uploaded);
        let requests = proxy.requests()[before..].to_vec();
        let count = |method: &str| {
            requests
                .iter()
                .filter(|r| {
                    r.starts_with(method) && r.contains(&format!("/v2/{name}/blobs/uploads/"))
                })
                .count()
        };
        assert_eq!(count("PATCH "), patches, "{chunk_size:?}: {requests:?}");
        assert_eq!(count("PUT "), 1, "{chunk_size:?}: {requests:?}");
        let mut sink = Vec::new();
        client
            .fetch_blob(&repo, &digest, Some(blob.len() as u64), &mut sink)
            .await
            .unwrap();
        assert_eq!(sink, blob);
    }
}

/// `ADD <url>` downloads: the body streams to the caller; a non-2xx answer is
/// an error naming the URL. The registry serves as the plain HTTP server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_a_url_and_names_it_on_failure() {
    let registry = RegistryServer::start_plain().unwrap();
    let client = Client::new(config()).unwrap();
    let reference = Reference::parse(&format!("{}/kiln/download:v1", registry.host)).unwrap();
    let layer = blob_bytes(7, 70_000);
    let (layer_digest, _, _) = push_small_image(&client, &reference, layer.clone()).await;

    let url = format!(
        "http://{}/v2/kiln/download/blobs/{layer_digest}",
        registry.host
    );
    let mut body = Vec::new();
    let got = client.download(&url, &mut body).await.unwrap();
    assert_eq!(body, layer);
    assert_eq!(got.size, layer.len() as u64);

    let missing = format!(
        "http://{}/v2/kiln/download/blobs/sha256:{}",
        registry.host,
        "0".repeat(64)
    );
    let err = client
        .download(&missing, &mut Vec::new())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&missing) && text.contains("404"), "{text}");
}

/// `fetch_blob_sink_verifies` with `resume_from`: only the rest of the
/// blob is requested (a Range request) and written; a sink already holding
/// the whole blob causes no request; an offset past the end is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_fetch_resumes_from_an_offset_the_caller_holds() {
    let registry = RegistryServer::start_plain().unwrap();
    let proxy = FaultProxy::start(registry.addr, FaultPlan::default()).unwrap();
    let client = Client::new(config()).unwrap();
    let repo = Reference::parse(&format!("{}/kiln/resume:v1", proxy.host))
        .unwrap()
        .repository;
    let blob = blob_bytes(5, 300_000);
    let digest = Digest::of(&blob);
    client
        .push_blob(&repo, &digest, Arc::new(MemoryBlob(blob.clone())), None)
        .await
        .unwrap();
    let size = blob.len() as u64;
    let blob_gets = || {
        proxy
            .requests()
            .into_iter()
            .filter(|r| r.starts_with(&format!("GET /v2/kiln/resume/blobs/{digest}")))
            .collect::<Vec<_>>()
    };

    let mut sink = blob[..123_456].to_vec();
    let total = client
        .fetch_blob_sink_verifies(&repo, &digest, size, 123_456, &mut sink)
        .await
        .unwrap();
    assert_eq!(total, size);
    assert!(sink == blob, "the rest was appended");
    assert_eq!(
        blob_gets(),
        vec![format!(
            "GET /v2/kiln/resume/blobs/{digest} Range: bytes=123456-"
        )]
    );

    let mut whole = blob.to_vec();
    let total = client
        .fetch_blob_sink_verifies(&repo, &digest, size, size, &mut whole)
        .await
        .unwrap();
    assert_eq!(total, size);
    assert!(whole == blob);
    assert_eq!(blob_gets().len(), 1, "nothing requested for a whole blob");

    let err = client
        .fetch_blob_sink_verifies(&repo, &digest, size, size + 1, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&digest.to_string()), "{err}");
}
