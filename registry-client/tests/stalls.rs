//! Deadlines and the low-speed cutoff, against a real distribution registry
//! behind the fault proxy: manifests, blobs and uploads sent at 1 B/s, a
//! registry that accepts and never answers, a long `Retry-After`, and
//! transfers that are slow but above the floor (which must succeed).
//!
//! Timing assertions are "failed with the stall error, and within the
//! configured limit plus a generous margin" (the suite runs on loaded
//! machines); lower bounds are asserted only where a deadline cannot fire
//! early.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kiln_registry::{
    Client, ClientConfig, CredentialSource, Digest, Error, MemoryBlob, PushOutcome, Reference,
    RetryPolicy, Stall, Timeouts,
};
use kiln_testsupport::{
    FaultPlan, FaultProxy, Hang, RegistryServer, SilentServer, StatusFault, Throttle,
};

/// What a loaded two-core machine may add to any configured limit.
const MARGIN: Duration = Duration::from_secs(15);

fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(1),
        response: Duration::from_secs(2),
        total: Duration::from_secs(5),
        speed_limit: 1000,
        speed_time: Duration::from_secs(2),
    }
}

fn config(timeouts: Timeouts) -> ClientConfig {
    ClientConfig {
        credentials: CredentialSource {
            ignore_docker_config: true,
            ..Default::default()
        },
        retry: RetryPolicy {
            max_retries: 4,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            max_retry_after: Duration::from_secs(10),
        },
        timeouts,
        ..Default::default()
    }
}

fn blob_bytes(seed: u8, len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>(),
    )
}

/// A registry holding `kiln/stalls:v1` (a manifest, a small config and a
/// 300 kB layer), and a proxy in front of it with `plan`.
struct Setup {
    _registry: RegistryServer,
    proxy: FaultProxy,
    /// `kiln/stalls:v1` through the proxy.
    reference: Reference,
    layer: Bytes,
    config: Bytes,
}

async fn setup(plan: FaultPlan) -> Setup {
    let registry = RegistryServer::start_plain().unwrap();
    let direct = Client::new(config(Timeouts::default())).unwrap();
    let reference = Reference::parse(&format!("{}/kiln/stalls:v1", registry.host)).unwrap();
    let repo = &reference.repository;
    let layer = blob_bytes(3, 300_000);
    let config_blob = Bytes::from(
        r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
    );
    for blob in [&layer, &config_blob] {
        direct
            .push_blob(
                repo,
                &Digest::of(blob),
                Arc::new(MemoryBlob(blob.clone())),
                None,
            )
            .await
            .unwrap();
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::of(&config_blob).to_string(), "size": config_blob.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": Digest::of(&layer).to_string(), "size": layer.len()}],
    })
    .to_string();
    direct
        .put_manifest(
            repo,
            "v1",
            "application/vnd.oci.image.manifest.v1+json",
            Bytes::from(manifest),
        )
        .await
        .unwrap();
    let proxy = FaultProxy::start(registry.addr, plan).unwrap();
    let through = Reference::parse(&format!("{}/kiln/stalls:v1", proxy.host)).unwrap();
    Setup {
        _registry: registry,
        proxy,
        reference: through,
        layer,
        config: config_blob,
    }
}

fn assert_within(started: Instant, limit: Duration, err: &Error) {
    let took = started.elapsed();
    assert!(
        took < limit + MARGIN,
        "took {took:?}, allowed {limit:?} plus {MARGIN:?}: {err}"
    );
    eprintln!("failed after {took:.1?}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_at_one_byte_per_second_fails_at_the_speed_floor_or_the_deadline() {
    let setup = setup(FaultPlan {
        manifest_throttle: Some(Throttle::per_second(1)),
        ..Default::default()
    })
    .await;

    // The speed floor (1000 B/s over 2 s) cuts it first.
    let client = Client::new(config(timeouts())).unwrap();
    let started = Instant::now();
    let err = client.fetch_manifest(&setup.reference).await.unwrap_err();
    assert!(
        matches!(err.stall(), Some(Stall::Slow { upload: false, .. })),
        "{err}"
    );
    assert_within(started, timeouts().speed_time, &err);
    let text = err.to_string();
    assert!(
        text.contains(&format!("{}/kiln/stalls: manifest v1:", setup.proxy.host))
            && text.contains("transfer below 1000 B/s for 2 s"),
        "{text}"
    );

    // Without the speed floor, the overall deadline (5 s) does.
    let no_floor = Client::new(config(Timeouts {
        speed_limit: 0,
        ..timeouts()
    }))
    .unwrap();
    let started = Instant::now();
    let err = no_floor.fetch_manifest(&setup.reference).await.unwrap_err();
    assert!(
        matches!(err.stall(), Some(Stall::BodyDeadline { .. })),
        "{err}"
    );
    assert!(
        started.elapsed() >= timeouts().total,
        "not before the deadline"
    );
    assert_within(started, timeouts().total, &err);
    assert!(
        err.to_string()
            .contains("manifest v1: not received within the 5 s deadline"),
        "{err}"
    );
    assert_eq!(setup.proxy.throttled(), 2, "one request each, no retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_at_one_byte_per_second_fails_at_the_speed_floor_and_is_not_retried() {
    let setup = setup(FaultPlan {
        blob_throttle: Some(Throttle::per_second(1)),
        ..Default::default()
    })
    .await;
    let client = Client::new(config(timeouts())).unwrap();
    let digest = Digest::of(&setup.layer);
    let started = Instant::now();
    let err = client
        .fetch_blob(
            &setup.reference.repository,
            &digest,
            Some(setup.layer.len() as u64),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.stall(), Some(Stall::Slow { upload: false, .. })),
        "{err}"
    );
    assert_within(started, timeouts().speed_time, &err);
    let text = err.to_string();
    assert!(
        text.contains(&setup.proxy.host)
            && text.contains(&format!("blob {digest}: transfer below 1000 B/s for 2 s"))
            && text.contains("of 300000 bytes received"),
        "{text}"
    );
    let gets = setup
        .proxy
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET") && r.contains(&digest.to_string()))
        .count();
    assert_eq!(gets, 1, "a stalled body is not retried");

    // A config-sized blob is a document: with a speed window too long to
    // matter, the overall deadline still holds it (the layer above would
    // not be).
    let long_window = Timeouts {
        speed_time: Duration::from_secs(60),
        ..timeouts()
    };
    assert!(setup.config.len() as u64 <= long_window.small_document_bytes());
    assert!(setup.layer.len() as u64 > long_window.small_document_bytes());
    let client = Client::new(config(long_window)).unwrap();
    let started = Instant::now();
    let err = client
        .fetch_blob(
            &setup.reference.repository,
            &Digest::of(&setup.config),
            Some(setup.config.len() as u64),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.stall(), Some(Stall::BodyDeadline { .. })),
        "{err}"
    );
    assert!(
        started.elapsed() >= timeouts().total,
        "not before the deadline"
    );
    assert_within(started, timeouts().total, &err);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_never_answers_fails_within_the_deadline() {
    // Accepts connections and says nothing: the HTTPS probe gets no TLS
    // handshake (connect timeout), the plain one no headers.
    let silent = SilentServer::start().unwrap();
    let client = Client::new(config(timeouts())).unwrap();
    let reference = Reference::parse(&format!("{}/kiln/silent:v1", silent.host)).unwrap();
    let started = Instant::now();
    let err = client.fetch_manifest(&reference).await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    assert_within(started, timeouts().total, &err);
    let text = err.to_string();
    assert!(
        text.contains(&silent.host)
            && text.contains("https: could not connect within 1 s")
            && text.contains("http: no response headers within 2 s"),
        "{text}"
    );
    assert!(silent.connections() >= 2, "{}", silent.connections());

    // A registry that answers its probe but not the manifest request: each
    // attempt waits 2 s for headers, retries stop at the 5 s deadline.
    let setup = setup(FaultPlan {
        hangs: vec![Hang {
            times: 100,
            path_contains: "/manifests/".into(),
        }],
        ..Default::default()
    })
    .await;
    let started = Instant::now();
    let err = client.fetch_manifest(&setup.reference).await.unwrap_err();
    assert!(
        matches!(err, Error::Stalled { attempts: 2.., .. })
            && matches!(err.stall(), Some(Stall::HeadersDeadline { .. })),
        "{err:?}"
    );
    assert!(
        started.elapsed() >= timeouts().total,
        "not before the deadline"
    );
    assert_within(started, timeouts().total, &err);
    assert!(
        err.to_string()
            .contains("manifest v1: no response headers before the 5 s deadline"),
        "{err}"
    );
    let hung = setup.proxy.hangs_injected();
    assert!((2..=3).contains(&hung), "{hung} attempts");

    // One hang, then an answer: the retry succeeds.
    setup.proxy.set_plan(FaultPlan {
        hangs: vec![Hang {
            times: 1,
            path_contains: "/manifests/".into(),
        }],
        ..Default::default()
    });
    client.fetch_manifest(&setup.reference).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_after_fails_at_once_naming_the_wait() {
    let setup = setup(FaultPlan {
        status_faults: vec![StatusFault {
            status: 429,
            times: 1,
            retry_after: Some(100_000),
            path_contains: "/manifests/".into(),
        }],
        ..Default::default()
    })
    .await;
    let client = Client::new(config(timeouts())).unwrap();
    let started = Instant::now();
    let err = client.fetch_manifest(&setup.reference).await.unwrap_err();
    assert!(
        matches!(err.stall(), Some(Stall::RetryAfter { status: 429, .. })),
        "{err}"
    );
    // "At once": well before the deadline it would otherwise wait out.
    assert!(
        started.elapsed() < timeouts().total,
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.to_string().contains(
            "manifest v1: the registry answered 429 and asked to wait 100000 s (Retry-After), \
             longer than the 10 s kiln waits"
        ),
        "{err}"
    );

    // Under the cap but past the deadline (8 s of 5): also at once.
    setup.proxy.set_plan(FaultPlan {
        status_faults: vec![StatusFault {
            status: 503,
            times: 1,
            retry_after: Some(8),
            path_contains: "/manifests/".into(),
        }],
        ..Default::default()
    });
    let started = Instant::now();
    let err = client.fetch_manifest(&setup.reference).await.unwrap_err();
    assert!(
        matches!(
            err.stall(),
            Some(Stall::RetryAfterDeadline { status: 503, .. })
        ),
        "{err}"
    );
    assert!(
        started.elapsed() < timeouts().total,
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.to_string()
            .contains("asked to wait 8 s (Retry-After), but only"),
        "{err}"
    );

    // A short one is waited for.
    setup.proxy.set_plan(FaultPlan {
        status_faults: vec![StatusFault {
            status: 429,
            times: 1,
            retry_after: Some(1),
            path_contains: "/manifests/".into(),
        }],
        ..Default::default()
    });
    let started = Instant::now();
    client.fetch_manifest(&setup.reference).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(setup.proxy.statuses_injected(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_but_steady_transfers_above_the_floor_succeed() {
    // 4 kB every 100 ms (about 40 kB/s) against a floor of 1000 B/s: the
    // 300 kB layer takes longer than the 5 s deadline, which a blob body is
    // not held to. Uploads: 16 kB every 100 ms.
    let pace = Throttle {
        bytes: 4096,
        every: Duration::from_millis(100),
    };
    let setup = setup(FaultPlan {
        manifest_throttle: Some(Throttle {
            bytes: 100,
            every: Duration::from_millis(50),
        }),
        blob_throttle: Some(pace),
        upload_throttle: Some(Throttle {
            bytes: 16 * 1024,
            every: Duration::from_millis(100),
        }),
        ..Default::default()
    })
    .await;
    let client = Client::new(config(timeouts())).unwrap();
    let manifest = client.fetch_manifest(&setup.reference).await.unwrap();
    assert!(!manifest.bytes.is_empty());
    let started = Instant::now();
    let mut sink = Vec::new();
    let digest = Digest::of(&setup.layer);
    client
        .fetch_blob(
            &setup.reference.repository,
            &digest,
            Some(setup.layer.len() as u64),
            &mut sink,
        )
        .await
        .unwrap();
    assert!(sink == setup.layer);
    assert!(
        started.elapsed() > timeouts().total,
        "the pace made the download outlast the deadline: {:?}",
        started.elapsed()
    );

    // An upload at that pace, larger than the socket buffers in between,
    // also outlasting the deadline.
    let upload = blob_bytes(9, 1_500_000);
    let started = Instant::now();
    let repo = Reference::parse(&format!("{}/kiln/steady:v1", setup.proxy.host))
        .unwrap()
        .repository;
    let outcome = client
        .push_blob(
            &repo,
            &Digest::of(&upload),
            Arc::new(MemoryBlob(upload.clone())),
            None,
        )
        .await
        .unwrap();
    assert_eq!(outcome, PushOutcome::Uploaded);
    assert!(
        started.elapsed() > timeouts().total,
        "the pace made the upload outlast the deadline: {:?}",
        started.elapsed()
    );
    assert_eq!(setup.proxy.throttled(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_at_one_byte_per_second_fails_at_the_speed_floor() {
    let setup = setup(FaultPlan {
        upload_throttle: Some(Throttle::per_second(1)),
        ..Default::default()
    })
    .await;
    let client = Client::new(config(timeouts())).unwrap();
    // Larger than what the socket buffers between kiln and the proxy hold.
    let upload = blob_bytes(13, 16_000_000);
    let digest = Digest::of(&upload);
    let repo = Reference::parse(&format!("{}/kiln/stalled-upload:v1", setup.proxy.host))
        .unwrap()
        .repository;
    let started = Instant::now();
    let err = client
        .push_blob(&repo, &digest, Arc::new(MemoryBlob(upload)), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err.stall(), Some(Stall::Slow { upload: true, .. })),
        "{err}"
    );
    assert_within(started, timeouts().speed_time, &err);
    let text = err.to_string();
    assert!(
        text.contains(&format!("blob {digest}: upload below 1000 B/s for 2 s"))
            && text.contains("of 16000000 bytes sent"),
        "{text}"
    );
    assert_eq!(
        setup.proxy.throttled(),
        1,
        "a stalled upload is not retried"
    );
}

/// `ADD <url>` downloads get the same cutoff; the error names the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_download_at_one_byte_per_second_fails_at_the_speed_floor() {
    let setup = setup(FaultPlan {
        blob_throttle: Some(Throttle::per_second(1)),
        ..Default::default()
    })
    .await;
    let client = Client::new(config(timeouts())).unwrap();
    let url = format!(
        "http://{}/v2/kiln/stalls/blobs/{}",
        setup.proxy.host,
        Digest::of(&setup.layer)
    );
    let started = Instant::now();
    let err = client.download(&url, &mut Vec::new()).await.unwrap_err();
    assert!(
        matches!(err, Error::DownloadStalled { .. })
            && matches!(err.stall(), Some(Stall::Slow { .. })),
        "{err}"
    );
    assert_within(started, timeouts().speed_time, &err);
    assert!(
        err.to_string().starts_with(&format!(
            "downloading {url}: transfer below 1000 B/s for 2 s"
        )),
        "{err}"
    );

    // A server that never answers: no headers within the response timeout.
    let silent = SilentServer::start().unwrap();
    let url = format!("http://{}/file", silent.host);
    let started = Instant::now();
    let err = client.download(&url, &mut Vec::new()).await.unwrap_err();
    assert!(
        matches!(err, Error::DownloadStalled { .. })
            && matches!(err.stall(), Some(Stall::Headers { .. })),
        "{err}"
    );
    assert_within(started, timeouts().response, &err);
}
