//! Image types shared by the OCI and Docker v2 schema 2 formats: descriptors,
//! manifests, indexes / manifest lists, image configs, platforms.
//!
//! Unknown fields are kept (`extra`) so that a config read and written again
//! loses nothing; kiln serializes these with [`crate::to_canonical_json`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::digest::Digest;
use crate::error::Error;

/// Media type strings.
pub mod media {
    pub const OCI_LAYOUT_VERSION: &str = "1.0.0";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// The empty JSON object `{}`, the config of an artifact manifest.
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const OCI_LAYER_ND: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
    pub const OCI_LAYER_ND_GZIP: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    pub const OCI_LAYER_ND_ZSTD: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
    pub const DOCKER_LAYER_FOREIGN: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";

    /// The `Accept` header value a registry client sends for manifests.
    pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

    /// True for image manifests of either family.
    pub fn is_manifest(media_type: &str) -> bool {
        media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
    }

    /// True for OCI indexes and Docker manifest lists.
    pub fn is_index(media_type: &str) -> bool {
        media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
    }

    /// True for layer media types kiln can unpack.
    pub fn is_layer(media_type: &str) -> bool {
        matches!(
            media_type,
            OCI_LAYER
                | OCI_LAYER_GZIP
                | OCI_LAYER_ZSTD
                | OCI_LAYER_ND
                | OCI_LAYER_ND_GZIP
                | OCI_LAYER_ND_ZSTD
                | DOCKER_LAYER
                | DOCKER_LAYER_GZIP
                | DOCKER_LAYER_ZSTD
                | DOCKER_LAYER_FOREIGN
        )
    }
}

/// The `org.opencontainers.image.ref.name` annotation.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's (and `docker save`'s) full image name annotation.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// What BuildKit marks an index entry with that is not an image of its
/// own (`attestation-manifest`), and the digest of the image it is about.
pub const ANNOTATION_REFERENCE_TYPE: &str = "vnd.docker.reference.type";
pub const ANNOTATION_REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";

/// Points at a blob by media type, digest and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The content itself, base64 (the OCI image spec's embedded data: an
    /// artifact's empty config carries `e30=`, `{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: None,
            annotations: BTreeMap::new(),
            data: None,
            platform: None,
            artifact_type: None,
        }
    }
}

/// An operating system and CPU an image runs on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform kiln runs on (`linux/amd64`, `linux/arm64`, `linux/arm/v7`,
    /// …), normalized as [`Platform::normalized`] says.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            architecture: arch.to_string(),
            os: std::env::consts::OS.to_string(),
            os_version: None,
            os_features: None,
            variant: None,
        }
        .normalized()
    }

    /// Parses `os/arch[/variant]` (Docker's `--platform` syntax) into its
    /// [`Platform::normalized`] form: `linux/aarch64` and `linux/arm64/v8`
    /// give `linux/arm64`, `linux/arm` gives `linux/arm/v7`.
    pub fn parse(s: &str) -> Result<Platform, Error> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || Error::InvalidPlatform(s.to_string());
        if parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        // One word, as containerd's `platforms.Parse` reads it: a known OS
        // on the host's architecture, else a known architecture on the
        // host's OS.
        if let [word] = parts[..] {
            let host = Platform::host();
            let os = match word.to_ascii_lowercase().as_str() {
                "macos" => "darwin".to_string(),
                other => other.to_string(),
            };
            if CONTAINERD_OS.contains(&os.as_str()) {
                return Ok(Platform { os, ..host }.normalized());
            }
            let (architecture, variant) = normalize_arch(word, None);
            if !CONTAINERD_ARCH.contains(&architecture.as_str()) {
                return Err(bad());
            }
            return Ok(Platform {
                architecture,
                variant,
                ..host
            }
            .normalized());
        }
        Ok(Platform {
            architecture: parts[1].to_string(),
            os: parts[0].to_ascii_lowercase(),
            os_version: None,
            os_features: None,
            variant: parts.get(2).map(|v| v.to_string()),
        }
        .normalized())
    }

    /// The platform as containerd's `platforms.Normalize` (and so BuildKit)
    /// leaves it: architecture aliases resolved (`x86_64` → `amd64`,
    /// `aarch64` → `arm64`, `armhf` → `arm/v7`), default variants dropped
    /// where the spec says they are implied (`arm64/v8`, `amd64/v1`) and
    /// made explicit where it does not (`arm` → `arm/v7`). Two spellings of
    /// one platform compare equal only in this form.
    pub fn normalized(&self) -> Platform {
        let (architecture, variant) = normalize_arch(&self.architecture, self.variant.as_deref());
        Platform {
            architecture,
            os: self.os.to_ascii_lowercase(),
            variant,
            ..self.clone()
        }
    }

    /// Whether an image built for `candidate` runs here when `self` is wanted.
    /// An arm/v7 host also runs v6 and v5; an absent variant matches any.
    pub fn compatible_rank(&self, candidate: &Platform) -> Option<u32> {
        if !self.os.eq_ignore_ascii_case(&candidate.os) {
            return None;
        }
        let (want_arch, want_variant) = normalize_arch(&self.architecture, self.variant.as_deref());
        let (cand_arch, cand_variant) =
            normalize_arch(&candidate.architecture, candidate.variant.as_deref());
        if want_arch != cand_arch {
            return None;
        }
        match (want_variant.as_deref(), cand_variant.as_deref()) {
            (None, None) => Some(0),
            (Some(w), Some(c)) if w == c => Some(0),
            (None, Some(_)) => Some(1),
            (Some(_), None) => Some(1),
            (Some(w), Some(c)) if want_arch == "arm" => {
                // Older ARM variants run on newer cores: v7 runs v6 and v5.
                let level = |v: &str| v.trim_start_matches('v').parse::<u32>().ok();
                match (level(w), level(c)) {
                    (Some(w), Some(c)) if c < w => Some(1 + w - c),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// The os/arch pairs an index entry may be given (`kiln manifest
/// annotate`): those `docker manifest annotate` accepts (its
/// `validOSArches`) and those a Go toolchain builds for (`go tool dist
/// list`, which has arm64 for Windows, loong64 and ppc64 for Linux, that
/// Docker's older list lacks), and `unknown/unknown`, the platform
/// BuildKit gives an attestation manifest. Exact, lowercase: `ARM64` is
/// not `arm64`.
pub const KNOWN_OS_ARCH: &[(&str, &[&str])] = &[
    ("aix", &["ppc64"]),
    ("android", &["386", "amd64", "arm", "arm64"]),
    ("darwin", &["386", "amd64", "arm", "arm64"]),
    ("dragonfly", &["amd64"]),
    ("freebsd", &["386", "amd64", "arm", "arm64", "riscv64"]),
    ("illumos", &["amd64"]),
    ("ios", &["amd64", "arm64"]),
    ("js", &["wasm"]),
    (
        "linux",
        &[
            "386", "amd64", "arm", "arm64", "loong64", "mips", "mips64", "mips64le", "mipsle",
            "ppc64", "ppc64le", "riscv64", "s390x",
        ],
    ),
    ("netbsd", &["386", "amd64", "arm", "arm64"]),
    (
        "openbsd",
        &["386", "amd64", "arm", "arm64", "ppc64", "riscv64"],
    ),
    ("plan9", &["386", "amd64", "arm"]),
    ("solaris", &["amd64"]),
    ("unknown", &["unknown"]),
    ("wasip1", &["wasm"]),
    ("windows", &["386", "amd64", "arm", "arm64"]),
];

/// The operating systems containerd's `platforms.Parse` knows as a
/// one-word platform (its `isKnownOS`).
const CONTAINERD_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "windows",
    "zos",
];

/// The architectures containerd's `platforms.Parse` knows as a one-word
/// platform (its `isKnownArch`).
const CONTAINERD_ARCH: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "ppc64",
    "ppc64le",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

/// Whether `os`/`arch` is one of [`KNOWN_OS_ARCH`].
pub fn known_os_arch(os: &str, arch: &str) -> bool {
    KNOWN_OS_ARCH
        .iter()
        .any(|(known, arches)| *known == os && arches.contains(&arch))
}

/// containerd's `normalizeArch`: (architecture, variant) lowercased, aliases
/// resolved, implied default variants dropped (arm64's v8, amd64's v1) and
/// arm's made explicit (v7).
fn normalize_arch(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant
        .map(str::to_ascii_lowercase)
        .filter(|v| !v.is_empty());
    let (arch, variant) = match arch.as_str() {
        "i386" | "i686" => ("386", None),
        "x86_64" | "x86-64" | "amd64" => ("amd64", variant.filter(|v| v != "v1")),
        "aarch64" | "arm64" => ("arm64", variant.filter(|v| v != "8" && v != "v8")),
        "armhf" => ("arm", Some("v7".to_string())),
        "armel" => ("arm", Some("v6".to_string())),
        "arm" => {
            let variant = match variant.as_deref() {
                None | Some("7") => "v7".to_string(),
                Some(v @ ("5" | "6" | "8")) => format!("v{v}"),
                Some(v) => v.to_string(),
            };
            ("arm", Some(variant))
        }
        other => (other, variant),
    };
    (arch.to_string(), variant)
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image manifest (OCI or Docker v2 schema 2: the same shape).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI index or a Docker manifest list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// What the index is when it is no image (an artifact's type).
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Index {
    /// An empty OCI index (what a fresh `index.json` holds).
    pub fn empty() -> Index {
        Index {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.to_string()),
            artifact_type: None,
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
        }
    }

    /// The manifest for `want`: an exact match first, then a compatible one
    /// (ARM variants), else `None`. Entries without a platform are skipped
    /// unless they are the only entry.
    pub fn select_platform(&self, want: &Platform) -> Option<&Descriptor> {
        let mut best: Option<(u32, &Descriptor)> = None;
        for desc in &self.manifests {
            let rank = match &desc.platform {
                Some(p) => want.compatible_rank(p),
                None if self.manifests.len() == 1 => Some(u32::MAX),
                None => None,
            };
            if let Some(rank) = rank {
                if best.is_none_or(|(r, _)| rank < r) {
                    best = Some((rank, desc));
                }
            }
        }
        best.map(|(_, d)| d)
    }
}

/// A manifest blob, whichever kind it turned out to be.
// Short-lived and rarely moved: boxing would only add noise at every match.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum ManifestKind {
    Image(Manifest),
    Index(Index),
}

/// Parses manifest bytes. `media_type` is the descriptor's (or the
/// Content-Type header's); when empty, the document's own `mediaType` or its
/// shape decides. `what` names the blob in errors.
pub fn parse_manifest(bytes: &[u8], media_type: &str, what: &str) -> Result<ManifestKind, Error> {
    let value: Value = serde_json::from_slice(bytes).map_err(|source| Error::Json {
        what: what.to_string(),
        source,
    })?;
    let own = value.get("mediaType").and_then(Value::as_str).unwrap_or("");
    let kind = if !media_type.is_empty() && media_type != "application/json" {
        media_type
    } else if !own.is_empty() {
        own
    } else if value.get("manifests").is_some() {
        media::OCI_INDEX
    } else if value.get("config").is_some() {
        media::OCI_MANIFEST
    } else {
        ""
    };
    if kind == media::DOCKER_SCHEMA1 || kind == media::DOCKER_SCHEMA1_SIGNED {
        return Err(Error::UnsupportedMediaType {
            what: format!("{what} (Docker schema 1 manifests are not supported)"),
            media_type: kind.to_string(),
        });
    }
    let json_err = |source| Error::Json {
        what: what.to_string(),
        source,
    };
    if media::is_manifest(kind) {
        let m: Manifest = serde_json::from_value(value).map_err(json_err)?;
        if m.schema_version != 2 {
            return Err(Error::InvalidManifest {
                what: what.to_string(),
                reason: format!("schemaVersion {} (expected 2)", m.schema_version),
            });
        }
        Ok(ManifestKind::Image(m))
    } else if media::is_index(kind) {
        let i: Index = serde_json::from_value(value).map_err(json_err)?;
        Ok(ManifestKind::Index(i))
    } else {
        Err(Error::UnsupportedMediaType {
            what: what.to_string(),
            media_type: kind.to_string(),
        })
    }
}

/// An image configuration (the `config` blob). Fields kiln does not model
/// are kept in `extra`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl ImageConfig {
    /// The platform the config describes (`architecture`, `os`,
    /// `os.version`, `variant`), as written (not normalized).
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            os_version: self.os_version.clone(),
            os_features: None,
            variant: self.variant.clone(),
        }
    }
}

/// What a container started from the image runs with.
///
/// Written as BuildKit writes it (image-spec's `omitempty` fields): an
/// empty list, map or string, and `ArgsEscaped: false`, are left out, as
/// absent ones are (`CMD []` gives no `Cmd`, `ENTRYPOINT []` no
/// `Entrypoint`), so that the same Dockerfile gives the same config bytes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "absent_or_empty_str")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "absent_or_empty_map")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "absent_or_empty_list")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "absent_or_empty_list")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "absent_or_empty_list")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "absent_or_empty_map")]
    pub volumes: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "absent_or_empty_str")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "absent_or_empty_map")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "absent_or_empty_str")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "absent_or_false")]
    pub args_escaped: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Value>,
    #[serde(default, skip_serializing_if = "absent_or_empty_list")]
    pub on_build: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "absent_or_empty_list")]
    pub shell: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn absent_or_empty_list(v: &Option<Vec<String>>) -> bool {
    v.as_ref().is_none_or(Vec::is_empty)
}

fn absent_or_empty_map<V>(v: &Option<BTreeMap<String, V>>) -> bool {
    v.as_ref().is_none_or(BTreeMap::is_empty)
}

fn absent_or_empty_str(v: &Option<String>) -> bool {
    v.as_ref().is_none_or(String::is_empty)
}

fn absent_or_false(v: &Option<bool>) -> bool {
    !v.unwrap_or(false)
}

/// The layers of an image, as uncompressed-content digests, bottom first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs {
            kind: "layers".to_string(),
            diff_ids: Vec::new(),
        }
    }
}

/// One step of how the image was made.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_layer: Option<bool>,
}

/// Formats seconds since the epoch as RFC 3339 UTC (`2024-01-02T03:04:05Z`).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Parses the RFC 3339 timestamps found in configs (fractions and offsets
/// allowed) into seconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = s.get(19..)?;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" | "" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset)
}

// Howard Hinnant's civil-calendar algorithms.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        for secs in [0, 951_782_400, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(secs)), Some(secs));
        }
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            parse_rfc3339("2024-02-29T12:00:00.123456789+01:00"),
            parse_rfc3339("2024-02-29T11:00:00Z")
        );
    }

    #[test]
    fn platform_selection_prefers_exact_then_compatible_variants() {
        let idx: Index = serde_json::from_str(
            r#"{"schemaVersion":2,"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":1,"platform":{"architecture":"arm","os":"linux","variant":"v6"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":1,"platform":{"architecture":"amd64","os":"linux"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333","size":1,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}"#,
        )
        .unwrap();
        let pick = |p: &str| {
            idx.select_platform(&Platform::parse(p).unwrap())
                .map(|d| d.digest.hex()[..1].to_string())
        };
        assert_eq!(pick("linux/amd64").as_deref(), Some("2"));
        assert_eq!(pick("linux/arm64").as_deref(), Some("3"));
        assert_eq!(pick("linux/aarch64").as_deref(), Some("3"));
        assert_eq!(pick("linux/arm/v7").as_deref(), Some("1"));
        assert_eq!(pick("linux/arm/v5"), None);
        assert_eq!(pick("windows/amd64"), None);
    }

    #[test]
    fn platforms_are_normalized_as_containerd_does() {
        let norm = |s: &str| Platform::parse(s).unwrap().to_string();
        for (given, want) in [
            ("linux/arm64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/aarch64", "linux/arm64"),
            ("Linux/AArch64/8", "linux/arm64"),
            ("linux/arm64/v9", "linux/arm64/v9"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/7", "linux/arm/v7"),
            ("linux/arm/v6", "linux/arm/v6"),
            ("linux/arm/5", "linux/arm/v5"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/armel", "linux/arm/v6"),
            ("linux/x86_64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/i386", "linux/386"),
            ("linux/s390x", "linux/s390x"),
        ] {
            assert_eq!(norm(given), want, "{given}");
        }
        // One word: an OS on the host's architecture, or an architecture on
        // the host's OS (containerd's platforms.Parse).
        let host = Platform::host();
        assert_eq!(norm("linux"), format!("linux/{}", host.architecture));
        assert_eq!(norm("aarch64"), format!("{}/arm64", host.os));
        assert_eq!(norm("armhf"), format!("{}/arm/v7", host.os));
        assert_eq!(norm("macos"), format!("darwin/{}", host.architecture));
        assert!(Platform::parse("bogus").is_err());
        assert!(Platform::parse("unknown").is_err());
        assert!(Platform::parse("linux//v8").is_err());
        // A config's spelling (arm64 + v8) is the same platform.
        let config = Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            os_version: None,
            os_features: None,
            variant: Some("v8".into()),
        };
        assert_eq!(config.normalized(), Platform::parse("linux/arm64").unwrap());
        assert_eq!(Platform::host(), Platform::host().normalized());
    }

    #[test]
    fn config_keeps_unknown_fields() {
        let text = r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"Cmd":["sh"],"Domainname":""},"container_config":{"Hostname":"x"}}"#;
        let cfg: ImageConfig = serde_json::from_str(text).unwrap();
        assert!(cfg.extra.contains_key("container_config"));
        let again: Value =
            serde_json::from_slice(&crate::to_canonical_json(&cfg).unwrap()).unwrap();
        assert_eq!(again, serde_json::from_str::<Value>(text).unwrap());
    }

    #[test]
    fn schema1_and_unknown_types_are_refused() {
        let err = parse_manifest(b"{\"schemaVersion\":1}", media::DOCKER_SCHEMA1, "m").unwrap_err();
        assert!(err.to_string().contains("schema 1"), "{err}");
        let err = parse_manifest(b"{}", "text/plain", "m").unwrap_err();
        assert!(err.to_string().contains("text/plain"), "{err}");
        let err = parse_manifest(b"{", "", "m").unwrap_err();
        assert!(err.to_string().contains("invalid JSON"), "{err}");
    }
}
