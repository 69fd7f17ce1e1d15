//! Issue: limits were checked late or not at all. `kiln load` tagged an
//! image whose config is over 16 MiB, which `images`, `inspect` and `run`
//! then failed on; `kiln run` unpacked all 10,000 layers of an image before
//! refusing it for more than 500 overlay layers.

use std::path::Path;

use kiln_testsupport::image::{host_platform, write_oci_layout, TestFile};

use crate::common::{kiln, kiln_ok};
use crate::{text, Fixture};

/// Writes `bytes` as a blob of the layout; returns its descriptor as JSON.
fn put_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
    let digest = kiln_layers::Digest::of(bytes);
    std::fs::write(layout.join("blobs/sha256").join(digest.hex()), bytes).expect("write blob");
    serde_json::json!({"mediaType": media_type, "digest": digest.as_str(), "size": bytes.len()})
}

/// An OCI layout of one small image tagged `big:1` whose config carries a
/// label of `label_bytes` bytes; returns the config's digest.
fn layout_with_config_label(layout: &Path, label_bytes: usize) -> String {
    let image = write_oci_layout(
        layout,
        "big:1",
        &[&host_platform()],
        &[vec![TestFile::new("hello", "hi\n")]],
    )
    .expect("layout");
    let platform = &image.platforms[0];
    let config_path = layout
        .join("blobs/sha256")
        .join(&platform.config.digest["sha256:".len()..]);
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config_path).expect("config")).expect("json");
    config["config"]["Labels"] = serde_json::json!({"padding": "x".repeat(label_bytes)});
    let config = put_blob(
        layout,
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&config).expect("json"),
    );
    let layers: Vec<serde_json::Value> = platform
        .layers
        .iter()
        .map(|l| serde_json::json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size}))
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layers,
    });
    let mut manifest = put_blob(
        layout,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).expect("json"),
    );
    manifest["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "big:1"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [manifest]});
    std::fs::write(layout.join("index.json"), index.to_string()).expect("index.json");
    config["digest"].as_str().expect("digest").to_string()
}

#[test]
fn load_refuses_an_image_whose_config_is_over_16_mib_and_names_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("store");
    let big = tmp.path().join("big");
    let digest = layout_with_config_label(&big, 17 << 20);
    let out = kiln(&root, &["load", "-i", big.to_str().expect("utf-8")]);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&digest) && stderr.contains("16 MiB"),
        "{stderr}"
    );
    assert_eq!(
        kiln_ok(&root, &["images", "-q"]).trim(),
        "",
        "nothing tagged"
    );
    assert!(
        !root.join("blobs/sha256").join(&digest[7..]).exists(),
        "the config was not even copied"
    );

    // The control: the same image with a small config loads and is usable.
    let small = tmp.path().join("small");
    layout_with_config_label(&small, 1000);
    kiln_ok(&root, &["load", "-i", small.to_str().expect("utf-8")]);
    kiln_ok(&root, &["inspect", "big:1"]);
}

#[test]
fn run_refuses_an_image_with_more_than_500_layers_before_unpacking_any() {
    crate::require_namespaces!();
    let fixture = Fixture::new();
    let root = fixture.root();
    let layout = fixture.dir("layers");
    let layers: Vec<Vec<TestFile>> = (0..600)
        .map(|i| vec![TestFile::new(&format!("layer{i}"), format!("{i}\n"))])
        .collect();
    write_oci_layout(&layout, "tall:1", &[&host_platform()], &layers).expect("layout");
    kiln_ok(&root, &["load", "-i", layout.to_str().expect("utf-8")]);
    let out = kiln(&root, &["run", "tall:1", "true"]);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("600 layers") && stderr.contains("500"),
        "{stderr}"
    );
    let unpacked = std::fs::read_dir(root.join("snapshots"))
        .expect("snapshots")
        .count();
    assert_eq!(unpacked, 0, "no layer unpacked");
}
