//! Small test images built by hand as OCI layouts, and `skopeo` helpers to
//! move them in and out of a registry.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

use crate::process::run;
use crate::{Result, TestSupportError};

/// One file in a test layer.
#[derive(Debug, Clone)]
pub struct TestFile {
    pub path: String,
    pub contents: Vec<u8>,
}

impl TestFile {
    pub fn new(path: &str, contents: impl Into<Vec<u8>>) -> TestFile {
        TestFile {
            path: path.to_string(),
            contents: contents.into(),
        }
    }

    /// `len` bytes that gzip cannot shrink (xorshift from `seed`), for large blobs.
    pub fn incompressible(path: &str, len: usize, seed: u64) -> TestFile {
        let mut state = seed | 1;
        let mut contents = Vec::with_capacity(len + 8);
        while contents.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            contents.extend_from_slice(&state.to_le_bytes());
        }
        contents.truncate(len);
        TestFile::new(path, contents)
    }
}

/// A blob written into the layout.
#[derive(Debug, Clone)]
pub struct BlobInfo {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

/// What [`write_oci_layout`] produced.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub layout: PathBuf,
    pub tag: String,
    /// Digest of the manifest (or of the index, for multi-platform images).
    pub digest: String,
    pub media_type: String,
    /// For each platform (`os/arch`): manifest, config, layers.
    pub platforms: Vec<PlatformImage>,
}

#[derive(Debug, Clone)]
pub struct PlatformImage {
    pub platform: String,
    pub manifest: BlobInfo,
    pub config: BlobInfo,
    pub layers: Vec<BlobInfo>,
}

impl TestImage {
    /// Every blob of every platform (manifests, configs, layers) plus the index, if any.
    pub fn all_digests(&self) -> Vec<String> {
        let mut all = vec![self.digest.clone()];
        for p in &self.platforms {
            all.push(p.manifest.digest.clone());
            all.push(p.config.digest.clone());
            all.extend(p.layers.iter().map(|l| l.digest.clone()));
        }
        all.sort();
        all.dedup();
        all
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn write_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Result<BlobInfo> {
    let hex = sha256_hex(bytes);
    let path = layout.join("blobs/sha256").join(&hex);
    std::fs::write(&path, bytes)
        .map_err(TestSupportError::io(format!("writing {}", path.display())))?;
    Ok(BlobInfo {
        digest: format!("sha256:{hex}"),
        size: bytes.len() as u64,
        media_type: media_type.to_string(),
    })
}

/// A gzipped tar of `files` (regular files, mode 0644, fixed mtime), and the
/// sha256 of the uncompressed tar (its diff id).
pub fn tar_gz(files: &[TestFile]) -> Result<(Vec<u8>, String)> {
    let mut builder = tar::Builder::new(Vec::new());
    for file in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(file.contents.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, &file.path, file.contents.as_slice())
            .map_err(TestSupportError::io(format!(
                "adding {} to a tar",
                file.path
            )))?;
    }
    let tar = builder
        .into_inner()
        .map_err(TestSupportError::io("finishing a tar"))?;
    let diff_id = format!("sha256:{}", sha256_hex(&tar));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).map_err(TestSupportError::io("gzip"))?;
    let gz = gz.finish().map_err(TestSupportError::io("gzip"))?;
    Ok((gz, diff_id))
}

/// The host's platform as `os/arch` in OCI terms.
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    format!("linux/{arch}")
}

/// Writes an OCI layout at `layout` holding one image tagged `tag`. With one
/// platform it is a plain manifest; with several, an index of them. Each
/// platform gets `layers` (with the platform name added to every file so
/// the blobs differ).
pub fn write_oci_layout(
    layout: &Path,
    tag: &str,
    platforms: &[&str],
    layers: &[Vec<TestFile>],
) -> Result<TestImage> {
    std::fs::create_dir_all(layout.join("blobs/sha256"))
        .map_err(TestSupportError::io("creating the layout"))?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(TestSupportError::io("writing oci-layout"))?;
    let mut built = Vec::new();
    for platform in platforms {
        let (os, arch) = platform.split_once('/').unwrap_or(("linux", platform));
        let mut layer_infos = Vec::new();
        let mut diff_ids = Vec::new();
        for files in layers {
            let mut files = files.clone();
            if platforms.len() > 1 {
                files.push(TestFile::new("etc/platform", platform.as_bytes()));
            }
            let (gz, diff_id) = tar_gz(&files)?;
            layer_infos.push(write_blob(
                layout,
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &gz,
            )?);
            diff_ids.push(diff_id);
        }
        let config = serde_json::json!({
            "architecture": arch,
            "os": os,
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [],
        });
        let config_info = write_blob(
            layout,
            "application/vnd.oci.image.config.v1+json",
            config.to_string().as_bytes(),
        )?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": config_info.media_type, "digest": config_info.digest, "size": config_info.size},
            "layers": layer_infos.iter().map(|l| serde_json::json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
        });
        let manifest_info = write_blob(
            layout,
            "application/vnd.oci.image.manifest.v1+json",
            manifest.to_string().as_bytes(),
        )?;
        built.push(PlatformImage {
            platform: platform.to_string(),
            manifest: manifest_info,
            config: config_info,
            layers: layer_infos,
        });
    }
    let (top, media_type) = if built.len() == 1 {
        (
            built[0].manifest.clone(),
            built[0].manifest.media_type.clone(),
        )
    } else {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": built.iter().map(|p| {
                let (os, arch) = p.platform.split_once('/').unwrap_or(("linux", &p.platform));
                serde_json::json!({"mediaType": p.manifest.media_type, "digest": p.manifest.digest, "size": p.manifest.size,
                    "platform": {"os": os, "architecture": arch}})
            }).collect::<Vec<_>>(),
        });
        let info = write_blob(
            layout,
            "application/vnd.oci.image.index.v1+json",
            index.to_string().as_bytes(),
        )?;
        let media_type = info.media_type.clone();
        (info, media_type)
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": top.media_type,
            "digest": top.digest,
            "size": top.size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string())
        .map_err(TestSupportError::io("writing index.json"))?;
    Ok(TestImage {
        layout: layout.to_path_buf(),
        tag: tag.to_string(),
        digest: top.digest,
        media_type,
        platforms: built,
    })
}

/// Arguments that make skopeo accept a test registry (plain HTTP or a test CA).
fn tls_args(direction: &str, ca_dir: Option<&Path>) -> Vec<String> {
    match ca_dir {
        Some(dir) => vec![format!("--{direction}-cert-dir={}", dir.display())],
        None => vec![format!("--{direction}-tls-verify=false")],
    }
}

/// `skopeo copy --all --preserve-digests SRC DST` (transport-qualified names,
/// e.g. `oci:/path:tag`, `docker://127.0.0.1:5000/x:y`).
pub fn skopeo_copy(
    src: &str,
    dst: &str,
    creds: Option<(&str, &str)>,
    ca_dir: Option<&Path>,
) -> Result<()> {
    let mut command = Command::new("skopeo");
    command.args([
        "--insecure-policy",
        "copy",
        "--all",
        "--preserve-digests",
        "--quiet",
    ]);
    if src.starts_with("docker://") {
        command.args(tls_args("src", ca_dir));
        if let Some((user, pass)) = creds {
            command.arg(format!("--src-creds={user}:{pass}"));
        }
    }
    if dst.starts_with("docker://") {
        command.args(tls_args("dest", ca_dir));
        if let Some((user, pass)) = creds {
            command.arg(format!("--dest-creds={user}:{pass}"));
        }
    }
    command.args([src, dst]);
    run(&mut command).map(|_| ())
}

/// The raw manifest bytes skopeo reads for `image` (`docker://...`).
pub fn skopeo_raw_manifest(
    image: &str,
    creds: Option<(&str, &str)>,
    ca_dir: Option<&Path>,
) -> Result<Vec<u8>> {
    let mut command = Command::new("skopeo");
    command.args(["inspect", "--raw"]);
    match ca_dir {
        Some(dir) => command.arg(format!("--cert-dir={}", dir.display())),
        None => command.arg("--tls-verify=false"),
    };
    if let Some((user, pass)) = creds {
        command.arg(format!("--creds={user}:{pass}"));
    }
    command.arg(image);
    run(&mut command)
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}
