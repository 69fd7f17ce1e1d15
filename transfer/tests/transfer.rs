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

    // An explicit --mount-from wins over where the blobs were pulled
    // from: a repository that lacks them mounts nothing (the registry
    // starts an upload instead), one that has them mounts every one.
    let push_mounting = |name: &str, from: &str| {
        let target = Reference::parse(&format!("{}/kiln/{name}:v1", registry.host)).unwrap();
        store.tag(&target, &tagged).unwrap();
        let from = Reference::parse(&format!("{}/kiln/{from}:v1", registry.host))
            .unwrap()
            .repository;
        let options = PushOptions {
            mount_from: Some(from),
            ..Default::default()
        };
        let (client, store) = (client.clone(), store.clone());
        async move { push(&client, &store, &target, &options, Arc::new(NoProgress)).await }
    };
    let pushed = push_mounting("unmounted", "holds-nothing").await.unwrap();
    assert_eq!((pushed.blobs_mounted, pushed.blobs_uploaded), (0, 4));
    let pushed = push_mounting("mounted", "sibling").await.unwrap();
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
    // A blob whose bytes were refused leaves nothing in ingest/ (downloads
    // the failure cut short keep their partial files, for the next pull
    // to resume and verify).
    let refused = match &err {
        TransferError::Registry(kiln_registry::Error::DigestMismatch { digest, .. }) => {
            digest.clone()
        }
        other => panic!("a digest mismatch, not {other}"),
    };
    let hex = refused.strip_prefix("sha256:").unwrap();
    for entry in std::fs::read_dir(store_dir.join("ingest")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains(hex), "{name} left in ingest/");
    }
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

/// The proxy's log lines for blob `digest`.
fn blob_requests(proxy: &FaultProxy, digest: &str) -> Vec<String> {
    proxy
        .requests()
        .into_iter()
        .filter(|r| r.contains(&format!("/blobs/{digest}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_config_follows_an_index_and_requests_no_layer() {
    let registry = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (image, _) = seed(
        &registry,
        work.path(),
        "kiln/configs",
        &["linux/amd64", "linux/arm64"],
    );
    let proxy = FaultProxy::start(registry.addr, FaultPlan::default()).unwrap();
    let reference = Reference::parse(&format!("{}/kiln/configs:v1", proxy.host)).unwrap();
    let client = client();
    for wanted in ["linux/arm64", "linux/amd64"] {
        let fetched =
            kiln_transfer::fetch_config(&client, &reference, &Platform::parse(wanted).unwrap())
                .await
                .unwrap();
        let expected = image
            .platforms
            .iter()
            .find(|p| p.platform == wanted)
            .unwrap();
        assert_eq!(fetched.resolved_digest.as_str(), image.digest);
        assert_eq!(
            fetched.manifest.digest.as_str(),
            expected.manifest.digest,
            "{wanted}"
        );
        assert_eq!(
            fetched.manifest.platform.as_ref().unwrap().to_string(),
            wanted
        );
        assert_eq!(
            fetched.config_descriptor.digest.as_str(),
            expected.config.digest
        );
        assert_eq!(fetched.config.os, "linux");
        assert_eq!(
            fetched.config.architecture,
            wanted.split_once('/').unwrap().1
        );
        assert_eq!(
            fetched.config.config.as_ref().unwrap().cmd,
            Some(vec!["/bin/sh".to_string()])
        );
    }
    // Two configs and nothing else were fetched as blobs.
    let blob_gets: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.contains("/blobs/"))
        .collect();
    assert_eq!(blob_gets.len(), 2, "{blob_gets:?}");
    for platform in &image.platforms {
        for layer in &platform.layers {
            assert!(
                blob_requests(&proxy, &layer.digest).is_empty(),
                "layer {} was requested",
                layer.digest
            );
        }
        assert_eq!(blob_requests(&proxy, &platform.config.digest).len(), 1);
    }

    // A platform the index lacks is an error naming the ones it has.
    let err = kiln_transfer::fetch_config(
        &client,
        &reference,
        &Platform::parse("linux/s390x").unwrap(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, TransferError::NoMatchingPlatform { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("linux/arm64"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_config_of_a_single_manifest() {
    let registry = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (image, _) = seed(
        &registry,
        work.path(),
        "kiln/single-config",
        &["linux/arm64"],
    );
    let proxy = FaultProxy::start(registry.addr, FaultPlan::default()).unwrap();
    let reference = Reference::parse(&format!("{}/kiln/single-config:v1", proxy.host)).unwrap();
    // The reference names a manifest, not an index: the platform asked for
    // does not filter (as pull: the image is what it is).
    let fetched = kiln_transfer::fetch_config(&client(), &reference, &Platform::host())
        .await
        .unwrap();
    assert_eq!(fetched.manifest.digest.as_str(), image.digest);
    assert_eq!(fetched.resolved_digest.as_str(), image.digest);
    assert_eq!(
        fetched.manifest.platform.as_ref().unwrap().to_string(),
        "linux/arm64",
        "the platform comes from the config"
    );
    assert_eq!(
        fetched.config_descriptor.digest.as_str(),
        image.platforms[0].config.digest
    );
    assert_eq!(fetched.config.architecture, "arm64");
    for layer in &image.platforms[0].layers {
        assert!(blob_requests(&proxy, &layer.digest).is_empty());
    }
    assert_eq!(
        proxy
            .requests()
            .iter()
            .filter(|r| r.contains("/blobs/"))
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_config_refuses_a_corrupted_config() {
    let registry = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (image, _) = seed(
        &registry,
        work.path(),
        "kiln/bad-config",
        &[&kiln_testsupport::image::host_platform()],
    );
    let proxy = FaultProxy::start(
        registry.addr,
        FaultPlan {
            flip_blob_byte_at: Some(20),
            ..Default::default()
        },
    )
    .unwrap();
    let reference = Reference::parse(&format!("{}/kiln/bad-config:v1", proxy.host)).unwrap();
    let err = kiln_transfer::fetch_config(&client(), &reference, &Platform::host())
        .await
        .unwrap_err();
    assert_eq!(proxy.flips_injected(), 1);
    assert!(
        matches!(
            err,
            TransferError::Registry(kiln_registry::Error::DigestMismatch { .. })
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&image.platforms[0].config.digest),
        "names the config's digest: {text}"
    );
    assert!(text.contains(&proxy.host), "names the registry: {text}");
}

/// An image with one large, incompressible layer (so that half of it is a
/// lot of bytes), pushed by skopeo; returns the large layer's descriptor
/// and bytes too.
fn seed_large(
    registry: &RegistryServer,
    work: &Path,
    repo: &str,
) -> (TestImage, kiln_layers::Descriptor, Vec<u8>) {
    let layers = vec![
        vec![TestFile::new("etc/hostname", "kiln\n")],
        vec![TestFile::incompressible("big/blob", 1_500_000, 7)],
    ];
    let image = write_oci_layout(
        &work.join(repo.replace('/', "_")),
        "v1",
        &[&kiln_testsupport::image::host_platform()],
        &layers,
    )
    .unwrap();
    skopeo_copy(
        &format!("oci:{}:v1", image.layout.display()),
        &format!("docker://{}/{repo}:v1", registry.host),
        None,
        None,
    )
    .unwrap();
    let big = image.platforms[0]
        .layers
        .iter()
        .max_by_key(|l| l.size)
        .unwrap()
        .clone();
    let bytes = std::fs::read(
        image
            .layout
            .join("blobs/sha256")
            .join(big.digest.strip_prefix("sha256:").unwrap()),
    )
    .unwrap();
    assert!(bytes.len() > 1_000_000);
    let desc = kiln_layers::Descriptor::new(
        big.media_type.clone(),
        big.digest.parse().unwrap(),
        big.size,
    );
    (image, desc, bytes)
}

/// What a pull killed mid-blob leaves: `prefix` in the blob's partial file.
fn leave_partial(store: &Store, desc: &kiln_layers::Descriptor, prefix: &[u8]) {
    use std::io::Write as _;
    let mut writer = store.ingest_resumable(desc.clone()).unwrap();
    assert_eq!(writer.offset(), 0);
    writer.write_all(prefix).unwrap();
    drop(writer);
    assert!(!store.has_blob(&desc.digest));
}

fn total_size(image: &TestImage) -> u64 {
    let p = &image.platforms[0];
    p.config.size + p.layers.iter().map(|l| l.size).sum::<u64>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_continues_a_partial_blob_with_a_range_request() {
    let registry = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (image, big, bytes) = seed_large(&registry, work.path(), "kiln/resume");
    let proxy = FaultProxy::start(registry.addr, FaultPlan::default()).unwrap();
    let store_dir = work.path().join("store");
    let store = Store::open(&store_dir).unwrap();
    let half = bytes.len() / 2;
    leave_partial(&store, &big, &bytes[..half]);

    let reference = Reference::parse(&format!("{}/kiln/resume:v1", proxy.host)).unwrap();
    let pulled = pull(
        &client(),
        &store,
        &reference,
        &PullOptions::new(Platform::host()),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(pulled.manifest.digest.as_str(), image.digest);
    // Only the second half of the large blob came over the wire.
    assert_eq!(
        blob_requests(&proxy, big.digest.as_str()),
        vec![format!(
            "GET /v2/kiln/resume/blobs/{} Range: bytes={half}-",
            big.digest
        )]
    );
    assert_eq!(pulled.bytes_fetched, total_size(&image) - half as u64);
    assert!(std::fs::read(store.blob_path(&big.digest)).unwrap() == bytes);
    assert_eq!(check_blobs_match_names(&store_dir), 4);
    assert!(ingest_is_empty(&store_dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_blob_with_wrong_bytes_is_discarded_and_fetched_again_whole() {
    let registry = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (image, big, bytes) = seed_large(&registry, work.path(), "kiln/torn");
    let proxy = FaultProxy::start(registry.addr, FaultPlan::default()).unwrap();
    let store_dir = work.path().join("store");
    let store = Store::open(&store_dir).unwrap();
    let half = bytes.len() / 2;
    // Right length, wrong content (as a disk that lost pages leaves it).
    let mut torn = bytes[..half].to_vec();
    torn[1234] ^= 0x01;
    leave_partial(&store, &big, &torn);

    let reference = Reference::parse(&format!("{}/kiln/torn:v1", proxy.host)).unwrap();
    let pulled = pull(
        &client(),
        &store,
        &reference,
        &PullOptions::new(Platform::host()),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(pulled.manifest.digest.as_str(), image.digest);
    // The rest was fetched, the whole failed to verify, and the blob was
    // fetched again from byte 0 within the same pull.
    assert_eq!(
        blob_requests(&proxy, big.digest.as_str()),
        vec![
            format!(
                "GET /v2/kiln/torn/blobs/{} Range: bytes={half}-",
                big.digest
            ),
            format!("GET /v2/kiln/torn/blobs/{}", big.digest),
        ]
    );
    assert_eq!(
        pulled.bytes_fetched,
        total_size(&image) - half as u64 + big.size
    );
    assert!(std::fs::read(store.blob_path(&big.digest)).unwrap() == bytes);
    assert_eq!(check_blobs_match_names(&store_dir), 4);
    assert!(ingest_is_empty(&store_dir));
}

/// Two pulls of the same image at once, with a partial file to resume:
/// one of them continues it (holding its lock), the other downloads into a
/// file of its own or finds the blob stored; neither corrupts the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pulls_of_a_partial_blob_at_once_both_succeed() {
    let registry = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (image, big, bytes) = seed_large(&registry, work.path(), "kiln/both");
    // Slow enough that the two downloads overlap.
    let proxy = FaultProxy::start(
        registry.addr,
        FaultPlan {
            blob_chunk_delay: Some(Duration::from_millis(5)),
            ..Default::default()
        },
    )
    .unwrap();
    let store_dir = work.path().join("store");
    let store = Store::open(&store_dir).unwrap();
    let half = bytes.len() / 2;
    leave_partial(&store, &big, &bytes[..half]);

    let reference = Reference::parse(&format!("{}/kiln/both:v1", proxy.host)).unwrap();
    let client = client();
    let options = PullOptions::new(Platform::host());
    let (first, second) = tokio::join!(
        pull(&client, &store, &reference, &options, Arc::new(NoProgress)),
        pull(&client, &store, &reference, &options, Arc::new(NoProgress)),
    );
    assert_eq!(first.unwrap().manifest.digest.as_str(), image.digest);
    assert_eq!(second.unwrap().manifest.digest.as_str(), image.digest);
    let requests = blob_requests(&proxy, big.digest.as_str());
    let ranged = requests
        .iter()
        .filter(|r| r.ends_with(&format!("Range: bytes={half}-")))
        .count();
    assert_eq!(ranged, 1, "the partial file was resumed once: {requests:?}");
    assert!(requests.len() <= 2, "{requests:?}");
    assert!(std::fs::read(store.blob_path(&big.digest)).unwrap() == bytes);
    assert_eq!(check_blobs_match_names(&store_dir), 4);
    assert!(ingest_is_empty(&store_dir));
}

/// A pull killed after the last byte was written but before the commit
/// left the whole blob in its partial file: the next pull requests nothing
/// of it and verifies and stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_partial_blob_is_committed_without_a_request() {
    let registry = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (image, big, bytes) = seed_large(&registry, work.path(), "kiln/complete");
    let proxy = FaultProxy::start(registry.addr, FaultPlan::default()).unwrap();
    let store_dir = work.path().join("store");
    let store = Store::open(&store_dir).unwrap();
    leave_partial(&store, &big, &bytes);

    let reference = Reference::parse(&format!("{}/kiln/complete:v1", proxy.host)).unwrap();
    let pulled = pull(
        &client(),
        &store,
        &reference,
        &PullOptions::new(Platform::host()),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(pulled.manifest.digest.as_str(), image.digest);
    assert!(blob_requests(&proxy, big.digest.as_str()).is_empty());
    assert_eq!(pulled.bytes_fetched, total_size(&image) - big.size);
    assert!(std::fs::read(store.blob_path(&big.digest)).unwrap() == bytes);
    assert_eq!(check_blobs_match_names(&store_dir), 4);
    assert!(ingest_is_empty(&store_dir));
}
