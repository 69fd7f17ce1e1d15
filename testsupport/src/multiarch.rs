//! A two-platform base image for the multi-platform tests: a busybox root
//! filesystem for linux/amd64 and one for linux/arm64, each with the
//! static busybox of Debian's `busybox-static` package for that
//! architecture (the arm64 one a real aarch64 program, which runs here only
//! through qemu-user-static), pushed to a registry as one OCI index; and
//! the same with linux/arm/v7 (Debian's armhf) as well
//! ([`push_busybox_index_of`] with [`ARM_V7`]).
//!
//! scripts/setup downloads the `.deb` files (`apt-get download
//! busybox-static:amd64 busybox-static:arm64 busybox-static:armhf`, arm64
//! and armhf added to dpkg's architectures) into `$KILN_TEST_DEBS`, default
//! `/var/cache/kiln-test/debs`; they are unpacked here with `dpkg-deb -x`,
//! never installed.
//!
//! ```no_run
//! use kiln_testsupport::{multiarch, RegistryServer};
//! let registry = RegistryServer::start_plain().unwrap();
//! let base = multiarch::push_busybox_index(&registry, "base/busybox:1").unwrap();
//! assert_eq!(base.manifests.len(), 2);
//! ```

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::image::{digest_of, skopeo_copy};
use crate::process::run;
use crate::registry::RegistryServer;
use crate::rootfs::BusyboxRootfs;
use crate::{Result, TestSupportError};

/// The platforms of the index, with Debian's name of each architecture.
pub const PLATFORMS: [(&str, &str); 2] = [("linux/amd64", "amd64"), ("linux/arm64", "arm64")];

/// linux/arm/v7, Debian's armhf.
pub const ARM_V7: (&str, &str) = ("linux/arm/v7", "armhf");

/// One platform's image as pushed.
#[derive(Debug, Clone)]
pub struct PlatformManifest {
    /// `os/arch[/variant]`.
    pub platform: String,
    pub digest: String,
    pub config_digest: String,
    /// Its one layer's diff id (the layer is gzip-compressed).
    pub diff_id: String,
}

/// What [`push_busybox_index`] pushed.
#[derive(Debug, Clone)]
pub struct MultiArchImage {
    /// `registry/name:tag`.
    pub reference: String,
    /// The index's digest.
    pub digest: String,
    pub manifests: Vec<PlatformManifest>,
}

impl MultiArchImage {
    /// The manifest of `platform` (`linux/arm64`).
    pub fn platform(&self, platform: &str) -> &PlatformManifest {
        self.manifests
            .iter()
            .find(|m| m.platform == platform)
            .unwrap_or_else(|| panic!("no {platform} in {:?}", self.manifests))
    }
}

/// The downloaded `busybox-static` package for Debian architecture `arch`.
pub fn busybox_deb(arch: &str) -> Result<PathBuf> {
    let dir = std::env::var_os("KILN_TEST_DEBS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kiln-test/debs"));
    let suffix = format!("_{arch}.deb");
    let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy())
                .is_some_and(|n| n.starts_with("busybox-static_") && n.ends_with(&suffix))
        })
    });
    found.ok_or_else(|| TestSupportError::MissingProgram {
        program: format!("busybox-static:{arch} (a .deb in {})", dir.display()),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

/// Writes `bytes` as a blob of the layout; returns (digest, size).
fn write_blob(layout: &Path, bytes: &[u8]) -> Result<(String, u64)> {
    let digest = digest_of(bytes);
    let path = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    std::fs::write(&path, bytes)
        .map_err(TestSupportError::io(format!("writing {}", path.display())))?;
    Ok((digest, bytes.len() as u64))
}

fn descriptor(media_type: &str, (digest, size): &(String, u64)) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": digest, "size": size})
}

/// Lays out, archives and writes one platform's image into `layout`;
/// returns it and its index entry.
fn platform_image(
    work: &Path,
    layout: &Path,
    platform: &str,
    arch: &str,
) -> Result<(PlatformManifest, serde_json::Value)> {
    let unpacked = work.join(format!("deb-{arch}"));
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(busybox_deb(arch)?)
        .arg(&unpacked))?;
    let tar = work.join(format!("rootfs-{arch}.tar"));
    BusyboxRootfs {
        mount_points: true,
        busybox: Some(unpacked.join("bin/busybox")),
    }
    .write_tar(&tar)?;
    let plain = std::fs::read(&tar).map_err(TestSupportError::io("reading the rootfs tar"))?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).map_err(TestSupportError::io("gzip"))?;
    let layer = write_blob(layout, &gz.finish().map_err(TestSupportError::io("gzip"))?)?;
    let diff_id = digest_of(&plain);
    let mut parts = platform.splitn(3, '/');
    let (os, arch_name, variant) = (
        parts.next().unwrap_or("linux"),
        parts.next().unwrap_or(platform),
        parts.next(),
    );
    let mut fields = serde_json::json!({"os": os, "architecture": arch_name});
    if let Some(variant) = variant {
        fields["variant"] = variant.into();
    }
    let mut config = serde_json::json!({
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": format!("busybox-static {arch}")}],
        "created": "2024-01-01T00:00:00Z",
    });
    if let (Some(config), Some(fields)) = (config.as_object_mut(), fields.as_object()) {
        config.extend(fields.clone());
    }
    let config_blob = write_blob(layout, config.to_string().as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config_blob),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layer)],
    });
    let manifest_blob = write_blob(layout, manifest.to_string().as_bytes())?;
    let mut entry = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest_blob);
    entry["platform"] = fields;
    Ok((
        PlatformManifest {
            platform: platform.to_string(),
            digest: manifest_blob.0,
            config_digest: config_blob.0,
            diff_id,
        },
        entry,
    ))
}

/// Makes the two-platform busybox index ([`PLATFORMS`]) and pushes it
/// (`skopeo copy --all`) to `registry` as `name` (`repository:tag`).
pub fn push_busybox_index(registry: &RegistryServer, name: &str) -> Result<MultiArchImage> {
    push_busybox_index_of(registry, name, &PLATFORMS)
}

/// [`push_busybox_index`] of `platforms` (platform, Debian architecture),
/// in that order.
pub fn push_busybox_index_of(
    registry: &RegistryServer,
    name: &str,
    platforms: &[(&str, &str)],
) -> Result<MultiArchImage> {
    let work = tempfile::tempdir().map_err(TestSupportError::io("creating a work dir"))?;
    let layout = work.path().join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256"))
        .map_err(TestSupportError::io("creating the layout"))?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(TestSupportError::io("writing oci-layout"))?;
    let mut manifests = Vec::new();
    let mut entries = Vec::new();
    for (platform, arch) in platforms.iter().copied() {
        let (manifest, entry) = platform_image(work.path(), &layout, platform, arch)?;
        manifests.push(manifest);
        entries.push(entry);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let index_blob = write_blob(&layout, index.to_string().as_bytes())?;
    let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
    let mut top = descriptor("application/vnd.oci.image.index.v1+json", &index_blob);
    top["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    std::fs::write(
        layout.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": [top]}).to_string(),
    )
    .map_err(TestSupportError::io("writing index.json"))?;
    let reference = format!("{}/{name}", registry.host);
    skopeo_copy(
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker://{reference}"),
        None,
        None,
    )?;
    Ok(MultiArchImage {
        reference,
        digest: index_blob.0,
        manifests,
    })
}
