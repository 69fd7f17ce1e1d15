//! Pull and push between a real registry and a real store, with skopeo as
//! the independent writer and reader, and a fault proxy for bad input.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_layers::{NoProgress, Outcome, Platform, Reporter, Store};
use kiln_registry::{Client, ClientConfig, CredentialSource, Reference, RetryPolicy};
use kiln_testsupport::image::{
    digest_of, skopeo_copy, skopeo_raw_manifest, write_oci_layout, TestFile, TestImage,
};
use kiln_testsupport::{CannedResponse, FaultPlan, FaultProxy, RegistryServer};
use kiln_transfer::{pull, push, PullOptions, PushOptions, TransferError};

fn client() -> Arc<Client> {
    Arc::new(
        Client::new(ClientConfig {
            credentials: CredentialSource {
                ignore_docker_config: true,
                ..Default::default()
            },
            retry: RetryPolicy {
                max_retries: 3,
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(100),
                max_retry_after: Duration::from_secs(1),
            },
            ..Default::default()
        })
        .unwrap(),
    )
}

fn layers() -> Vec<Vec<TestFile>> {
    vec![
        vec![
            TestFile::new("etc/hostname", "kiln\n"),
            TestFile::new("etc/motd", "hello\n"),
        ],
        vec![TestFile::new(
            "usr/bin/tool",
            (0..200_000u32)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>(),
        )],
        vec![TestFile::new("app/data.bin", vec![42u8; 70_000])],
    ]
}

/// Writes a test image and has skopeo push it to `registry` as `repo:tag`.
fn seed(
    registry: &RegistryServer,
    work: &Path,
    repo: &str,
    platforms: &[&str],
) -> (TestImage, String) {
    let image = write_oci_layout(
        &work.join(repo.replace('/', "_")),
        "v1",
        platforms,
        &layers(),
    )
    .unwrap();
    let target = format!("{}/{repo}:v1", registry.host);
    skopeo_copy(
        &format!("oci:{}:v1", image.layout.display()),
        &format!("docker://{target}"),
        None,
        None,
    )
    .unwrap();
    (image, target)
}

/// Every file in blobs/sha256 hashes to its name; returns how many there are.
fn check_blobs_match_names(store_root: &Path) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(store_root.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let bytes = std::fs::read(entry.path()).unwrap();
        assert_eq!(
            digest_of(&bytes),
            format!("sha256:{}", entry.file_name().to_string_lossy()),
            "blob {:?} does not match its name",
            entry.path()
        );
        count += 1;
    }
    count
}

fn ingest_is_empty(store_root: &Path) -> bool {
    std::fs::read_dir(store_root.join("ingest"))
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

/// Records the events, to check progress is reported.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Reporter for Recorder {
    fn start(&self, id: &str, label: &str, _: Option<u64>) {
        self.0.lock().unwrap().push(format!("start {label} {id}"));
    }
    fn progress(&self, _: &str, _: u64) {}
    fn done(&self, id: &str, outcome: Outcome) {
        self.0
            .lock()
            .unwrap()
            .push(format!("done {id} {outcome:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_what_skopeo_pushed_push_it_back_and_skopeo_agrees() {
    let registry = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (image, source) = seed(
        &registry,
        work.path(),
        "kiln/source",
        &[&kiln_testsupport::image::host_platform()],
    );
    let store_dir = work.path().join("store");
    let store = Store::open(&store_dir).unwrap();
    let client = client();

    let recorder = Arc::new(Recorder::default());
    let reference = Reference::parse(&source).unwrap();
    let pulled = pull(
        &client,
        &store,
        &reference,
        &PullOptions::new(Platform::host()),
        recorder.clone(),
    )
    .await
    .unwrap();
    assert_eq!(pulled.manifest.digest.to_string(), image.digest);
    assert_eq!(pulled.blobs_fetched, 4, "config and three layers");
    let tagged = store.resolve(&reference).unwrap().unwrap();
    assert_eq!(tagged.digest.to_string(), image.digest);
    for digest in image.all_digests() {
        assert!(store.has_blob(&digest.parse().unwrap()), "{digest} stored");
    }
    assert_eq!(check_blobs_match_names(&store_dir), 5);
    assert!(ingest_is_empty(&store_dir));
    let events = recorder.0.lock().unwrap().clone();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.starts_with("done") && e.ends_with("Done"))
            .count(),
        4,
        "{events:?}"
    );

    // A second pull downloads nothing.
    let again = pull(
        &client,
        &store,
        &reference,
        &PullOptions::new(Platform::host()),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(again.blobs_fetched, 0);

    // Push to another registry under two names: the first uploads every
    // blob, the second finds them all present.
    let elsewhere = RegistryServer::start_plain().unwrap();
    let targets = [
        format!("{}/kiln/copy:v2", elsewhere.host),
        format!("{}/kiln/copy:also", elsewhere.host),
    ];
    for (i, target) in targets.iter().enumerate() {
        let target_ref = Reference::parse(target).unwrap();
        store.tag(&target_ref, &tagged).unwrap();
        let pushed = push(
            &client,
            &store,
            &target_ref,
            &PushOptions::default(),
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
        assert_eq!(pushed.digest.as_str(), image.digest);
        if i == 0 {
            assert_eq!((pushed.blobs_uploaded, pushed.blobs_mounted), (4, 0));
        } else {
            assert_eq!(pushed.blobs_skipped, 4);
        }
        // skopeo reads the same manifest digest back.
        let raw = skopeo_raw_manifest(&format!("docker://{target}"), None, None).unwrap();
        assert_eq!(digest_of(&raw), image.digest);
    }
    // And can copy the whole image out, verifying every blob.
    let out = work.path().join("out");
    skopeo_copy(
        &format!("docker://{}", targets[0]),
        &format!("oci:{}:x", out.display()),
        None,
        None,
    )
    .unwrap();

    // Within the source registry, blobs are mounted from where they were pulled.
    let same_registry = Reference::parse(&format!("{}/kiln/sibling:v1", registry.host)).unwrap();
    store.tag(&same_registry, &tagged).unwrap();
    let pushed = push(
        &client,
        &store,
        &same_registry,
        &PushOptions::default(),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!((pushed.blobs_mounted, pushed.blobs_uploaded), (4, 0));
    let raw = skopeo_raw_manifest(&format!("docker://{same_registry}"), None, None).unwrap();
    assert_eq!(digest_of(&raw), image.digest);

    // An explicit --mount-from works too.
    let mounted_ref = Reference::parse(&format!("{}/kiln/mounted:v1", registry.host)).unwrap();
    store.tag(&mounted_ref, &tagged).unwrap();
    let pushed = push(
        &client,
        &store,
        &mounted_ref,
        &PushOptions {
            mount_from: Some(reference.repository.clone()),
            ..Default::default()
        },
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!((pushed.blobs_mounted, pushed.blobs_uploaded), (4, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_selects_the_platform_from_an_index() {
    let registry = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (image, source) = seed(
        &registry,
        work.path(),
        "kiln/multi",
        &["linux/amd64", "linux/arm64"],
    );
    let store_dir = work.path().join("store");
    let store = Store::open(&store_dir).unwrap();
    let reference = Reference::parse(&source).unwrap();
    let client = client();

    let arm = pull(
        &client,
        &store,
        &reference,
        &PullOptions::new(Platform::parse("linux/arm64").unwrap()),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    let arm_image = image
        .platforms
        .iter()
        .find(|p| p.platform == "linux/arm64")
        .unwrap();
    assert_eq!(arm.manifest.digest.to_string(), arm_image.manifest.digest);
    assert_eq!(arm.resolved_digest.as_str(), image.digest);
    let amd_image = image
        .platforms
        .iter()
        .find(|p| p.platform == "linux/amd64")
        .unwrap();
    for layer in &amd_image.layers {
        assert!(
            !store.has_blob(&layer.digest.parse().unwrap()),
            "other platform's layers not fetched"
        );
    }

    let err = pull(
        &client,
        &store,
        &reference,
        &PullOptions::new(Platform::parse("linux/s390x").unwrap()),
        Arc::new(NoProgress),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, TransferError::NoMatchingPlatform { .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("linux/s390x") && text.contains("linux/arm64"),
        "{text}"
    );
    check_blobs_match_names(&store_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_is_refused_and_nothing_is_stored() {
    let registry = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (image, _) = seed(
        &registry,
        work.path(),
        "kiln/corrupt",
        &[&kiln_testsupport::image::host_platform()],
    );
    let proxy = FaultProxy::start(
        registry.addr,
        FaultPlan {
            flip_blob_byte_at: Some(100),
            ..Default::default()
        },
    )
    .unwrap();
    let store_dir = work.path().join("store");
    let store = Store::open(&store_dir).unwrap();
    let reference = Reference::parse(&format!("{}/kiln/corrupt:v1", proxy.host)).unwrap();
    let err = pull(
        &client(),
        &store,
        &reference,
        &PullOptions::new(Platform::host()),
        Arc::new(NoProgress),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    let corrupted: Vec<&str> = image.platforms[0]
        .layers
        .iter()
        .chain([&image.platforms[0].config])
        .filter(|b| b.size > 100)
        .map(|b| b.digest.as_str())
        .collect();
    assert!(
        corrupted.iter().any(|d| text.contains(d)),
        "names the digest: {text}"
    );
    assert!(text.contains(&proxy.host), "names the registry: {text}");
    assert!(proxy.flips_injected() >= 1);
    for digest in corrupted {
        assert!(
            !store.has_blob(&digest.parse().unwrap()),
            "{digest} must not be stored"
        );
    }
    check_blobs_match_names(&store_dir);
    assert!(ingest_is_empty(&store_dir), "no partial files left");
    assert!(store.resolve(&reference).unwrap().is_none());
}

/// Serves `manifest` for the tag through a proxy and pulls it.
async fn pull_canned(
    manifest: serde_json::Value,
    content_type: &str,
) -> (TransferError, Store, tempfile::TempDir) {
    let registry = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (_, _) = seed(
        &registry,
        work.path(),
        "kiln/canned",
        &[&kiln_testsupport::image::host_platform()],
    );
    let proxy = FaultProxy::start(
        registry.addr,
        FaultPlan {
            canned: vec![CannedResponse {
                path_contains: "/manifests/v1".into(),
                status: 200,
                content_type: content_type.into(),
                body: serde_json::to_vec(&manifest).unwrap(),
            }],
            ..Default::default()
        },
    )
    .unwrap();
    let store = Store::open(work.path().join("store")).unwrap();
    let reference = Reference::parse(&format!("{}/kiln/canned:v1", proxy.host)).unwrap();
    let err = pull(
        &client(),
        &store,
        &reference,
        &PullOptions::new(Platform::host()),
        Arc::new(NoProgress),
    )
    .await
    .unwrap_err();
    assert_eq!(proxy.canned_served(), 1);
    assert!(store.resolve(&reference).unwrap().is_none());
    (err, store, work)
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_naming_a_missing_blob() {
    let absent = digest_of(b"no such config");
    let (err, _, _) = pull_canned(
        serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": absent, "size": 14},
            "layers": [],
        }),
        OCI_MANIFEST,
    )
    .await;
    assert!(matches!(err, TransferError::MissingBlob { .. }), "{err}");
    assert!(err.to_string().contains(&absent), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_with_an_unknown_layer_media_type() {
    let (err, _, _) = pull_canned(
        serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(b"c"), "size": 1},
            "layers": [{"mediaType": "application/vnd.example.mystery", "digest": digest_of(b"l"), "size": 1}],
        }),
        OCI_MANIFEST,
    )
    .await;
    assert!(
        matches!(err, TransferError::UnknownMediaType { role: "layer", .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("application/vnd.example.mystery"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_manifest() {
    let (err, _, _) = pull_canned(
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": 5}),
        OCI_MANIFEST,
    )
    .await;
    assert!(
        matches!(err, TransferError::MalformedManifest { .. }),
        "{err}"
    );
    let (err, _, _) = pull_canned(
        serde_json::json!({"hello": "world"}),
        "application/vnd.example.thing+json",
    )
    .await;
    assert!(
        matches!(err, TransferError::UnknownMediaType { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_during_a_pull_are_resumed() {
    let registry = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (image, _) = seed(
        &registry,
        work.path(),
        "kiln/flaky",
        &[&kiln_testsupport::image::host_platform()],
    );
    let proxy = FaultProxy::start(
        registry.addr,
        FaultPlan {
            drop_blob_after: Some(1000),
            drop_times: 3,
            ..Default::default()
        },
    )
    .unwrap();
    let store_dir = work.path().join("store");
    let store = Store::open(&store_dir).unwrap();
    let reference = Reference::parse(&format!("{}/kiln/flaky:v1", proxy.host)).unwrap();
    let pulled = pull(
        &client(),
        &store,
        &reference,
        &PullOptions::new(Platform::host()),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(pulled.manifest.digest.to_string(), image.digest);
    assert!(proxy.drops_injected() >= 2, "{}", proxy.drops_injected());
    assert!(proxy
        .requests()
        .iter()
        .any(|r| r.contains("Range: bytes=1000-")));
    assert_eq!(check_blobs_match_names(&store_dir), 5);
}

#[tokio::test(flavor = "current_thread")]
async fn pull_works_on_a_single_threaded_runtime() {
    let registry = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (image, source) = seed(
        &registry,
        work.path(),
        "kiln/single",
        &[&kiln_testsupport::image::host_platform()],
    );
    let store = Store::open(work.path().join("store")).unwrap();
    let reference = Reference::parse(&source).unwrap();
    let pulled = pull(
        &client(),
        &store,
        &reference,
        &PullOptions::new(Platform::host()),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(pulled.manifest.digest.to_string(), image.digest);
    let pushed = push(
        &client(),
        &store,
        &reference.with_tag("again"),
        &PushOptions::default(),
        Arc::new(NoProgress),
    )
    .await;
    assert!(
        matches!(pushed, Err(TransferError::NotInStore(_))),
        "{pushed:?}"
    );
}
