//! kiln's cache format: what a cache export writes and a cache import
//! reads, wherever it lives (a registry, an OCI layout, an image config).
//! docs/cache.md describes it for readers that are not kiln.
//!
//! The heart of it is the cache config, a JSON document of media type
//! [`CONFIG_MEDIA_TYPE`]:
//!
//! ```json
//! {
//!   "schemaVersion": 1,
//!   "keyVersion": "kiln-step-v3",
//!   "layers": [
//!     {"diffId": "sha256:…", "blob": {"mediaType": "…tar+gzip", "digest": "sha256:…", "size": 123}}
//!   ],
//!   "steps": [
//!     {"key": "sha256:…", "created": 1700000000, "layer": 0},
//!     {"key": "sha256:…", "created": 1700000000}
//!   ]
//! }
//! ```
//!
//! Each step is a cache key ([`crate::plan::keys`], of version
//! `keyVersion`) with what a build needs to skip the step: when its layer
//! was first made (history times, hence the image id, depend on it) and
//! its layer (an index into `layers`; a cache of older keys may have a
//! step without one, which a build does not take). A step's image config changes are not results: they are
//! planned from the Dockerfile, as are the keys. Each layer is a blob with
//! its diff id (the digest of its uncompressed tar, which the image config
//! lists and the unpacked content is checked against).
//!
//! In a registry or an OCI layout the config is wrapped as an ordinary OCI
//! artifact: an image manifest whose `artifactType` is [`ARTIFACT_TYPE`],
//! whose config is the cache config and whose layers are the `layers`
//! blobs in order; or (`image-manifest=false`, as BuildKit's older form)
//! an image index listing the layer blobs and then the config. Inline (in
//! an image's config under [`INLINE_KEY`]) a layer has no blob but an
//! `imageLayer`: its index among the image's own layers.
//!
//! A reader refuses a `schemaVersion` newer than [`SCHEMA_VERSION`] (the
//! build goes on without that cache); a new version is made whenever the
//! meaning of a field changes.

use std::collections::BTreeMap;

use kiln_layers::oci::{media, Descriptor};
use kiln_layers::Digest;
use serde::{Deserialize, Serialize};

use super::{CachedLayer, CachedStep, StepResult};
use crate::plan::keys::KEY_VERSION;

/// The media type of the cache config blob.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.kiln.cache.config.v1+json";
/// The `artifactType` of a cache manifest or index.
pub const ARTIFACT_TYPE: &str = "application/vnd.kiln.cache.v1";
/// The format version this kiln writes and the newest it reads.
pub const SCHEMA_VERSION: u32 = 1;
/// The key of inline cache metadata in an image config.
pub const INLINE_KEY: &str = "kiln.cache";

/// The cache config (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// The [`KEY_VERSION`] of the keys.
    #[serde(rename = "keyVersion")]
    pub key_version: String,
    #[serde(default)]
    pub layers: Vec<CacheLayer>,
    #[serde(default)]
    pub steps: Vec<CacheStep>,
}

/// One layer: its diff id and where its blob is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheLayer {
    #[serde(rename = "diffId")]
    pub diff_id: Digest,
    /// The blob (registry and OCI layout caches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<Descriptor>,
    /// The index of the layer among the image's own (inline caches).
    #[serde(
        rename = "imageLayer",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub image_layer: Option<usize>,
}

/// One step: its key, when its layer was made, and its layer if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStep {
    pub key: Digest,
    /// Seconds since the epoch.
    pub created: i64,
    /// Index into [`CacheConfig::layers`]; none when the step made no layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
}

/// Why a cache config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cache format version {found} is newer than this kiln reads ({SCHEMA_VERSION})")]
    Newer { found: u64 },
    #[error("not a kiln cache config: {0}")]
    Json(#[source] serde_json::Error),
    #[error("invalid kiln cache config: {0}")]
    Invalid(String),
}

/// The layers of the image an inline cache is in: each layer's descriptor
/// (as the manifest names it) and diff id (as the config lists it).
pub type ImageLayers<'a> = &'a [(Descriptor, Digest)];

impl CacheConfig {
    /// An empty config of this kiln's versions.
    pub fn new() -> CacheConfig {
        CacheConfig {
            schema_version: SCHEMA_VERSION,
            key_version: KEY_VERSION.to_string(),
            layers: Vec::new(),
            steps: Vec::new(),
        }
    }

    /// Reads a config: the version first (a newer one is refused whatever
    /// else it holds), then the fields, then their consistency.
    pub fn parse(bytes: &[u8]) -> Result<CacheConfig, FormatError> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(FormatError::Json)?;
        Self::from_value(value)
    }

    /// [`CacheConfig::parse`] of a JSON value (an inline cache's).
    pub fn from_value(value: serde_json::Value) -> Result<CacheConfig, FormatError> {
        let version = value
            .get("schemaVersion")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| FormatError::Invalid("no schemaVersion".into()))?;
        if version > u64::from(SCHEMA_VERSION) {
            return Err(FormatError::Newer { found: version });
        }
        let config: CacheConfig = serde_json::from_value(value).map_err(FormatError::Json)?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), FormatError> {
        for (i, layer) in self.layers.iter().enumerate() {
            match (&layer.blob, layer.image_layer) {
                (Some(blob), None) if media::is_layer(&blob.media_type) => {}
                (Some(blob), None) => {
                    return Err(FormatError::Invalid(format!(
                        "layer {i}: {} is not a layer media type",
                        blob.media_type
                    )))
                }
                (None, Some(_)) => {}
                _ => {
                    return Err(FormatError::Invalid(format!(
                        "layer {i}: needs exactly one of blob and imageLayer"
                    )))
                }
            }
        }
        for step in &self.steps {
            if let Some(n) = step.layer.filter(|n| *n >= self.layers.len()) {
                return Err(FormatError::Invalid(format!(
                    "step {}: layer {n} of {}",
                    step.key,
                    self.layers.len()
                )));
            }
        }
        Ok(())
    }

    /// Adds a step; its layer (when it has one) is `layer`, added unless a
    /// layer with the same diff id is there.
    pub fn add_step(&mut self, key: &Digest, created: i64, layer: Option<CacheLayer>) {
        let index =
            layer.map(
                |layer| match self.layers.iter().position(|l| l.diff_id == layer.diff_id) {
                    Some(i) => i,
                    None => {
                        self.layers.push(layer);
                        self.layers.len() - 1
                    }
                },
            );
        if self.steps.iter().any(|s| &s.key == key) {
            return;
        }
        self.steps.push(CacheStep {
            key: key.clone(),
            created,
            layer: index,
        });
    }

    /// The inline config of the steps of an image whose layers are
    /// `image`: each step's layer by its index there (the first layer with
    /// its diff id). Steps whose layer is not in the image are left out.
    pub fn inline<'s>(
        steps: impl IntoIterator<Item = &'s StepResult>,
        image: ImageLayers<'_>,
    ) -> CacheConfig {
        let mut config = CacheConfig::new();
        for step in steps {
            let layer = match &step.layer {
                None => None,
                Some((_, diff_id)) => match image.iter().position(|(_, d)| d == diff_id) {
                    Some(n) => Some(CacheLayer {
                        diff_id: diff_id.clone(),
                        blob: None,
                        image_layer: Some(n),
                    }),
                    None => continue,
                },
            };
            config.add_step(&step.key, step.created, layer);
        }
        config
    }

    /// Whether the keys are of the version this kiln computes (otherwise
    /// none can match).
    pub fn keys_match(&self) -> bool {
        self.key_version == KEY_VERSION
    }

    /// The steps by key, ready for the solver. An inline config's layers
    /// are found in `image` (its diff ids must agree with the config's).
    pub fn steps_by_key(
        &self,
        image: Option<ImageLayers<'_>>,
    ) -> Result<BTreeMap<Digest, CachedStep>, FormatError> {
        let layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, layer)| resolve_layer(i, layer, image))
            .collect::<Result<Vec<CachedLayer>, FormatError>>()?;
        Ok(self
            .steps
            .iter()
            .map(|step| {
                let cached = CachedStep {
                    created: step.created,
                    layer: step.layer.and_then(|n| layers.get(n).cloned()),
                };
                (step.key.clone(), cached)
            })
            .collect())
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig::new()
    }
}

/// A layer of the config as the solver takes it: its blob and diff id.
fn resolve_layer(
    i: usize,
    layer: &CacheLayer,
    image: Option<ImageLayers<'_>>,
) -> Result<CachedLayer, FormatError> {
    let blob = match (&layer.blob, layer.image_layer, image) {
        (Some(blob), _, _) => blob.clone(),
        (None, Some(n), Some(image)) => {
            let (blob, diff_id) = image.get(n).ok_or_else(|| {
                FormatError::Invalid(format!("layer {i}: image layer {n} of {}", image.len()))
            })?;
            if diff_id != &layer.diff_id {
                return Err(FormatError::Invalid(format!(
                    "layer {i}: image layer {n} has diff id {diff_id}, the cache says {}",
                    layer.diff_id
                )));
            }
            blob.clone()
        }
        (None, _, _) => {
            return Err(FormatError::Invalid(format!(
                "layer {i}: an image layer outside an image"
            )))
        }
    };
    Ok(CachedLayer {
        blob,
        diff_id: layer.diff_id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    fn blob(s: &str) -> Descriptor {
        Descriptor::new(media::OCI_LAYER_GZIP, digest(s), 10)
    }

    #[test]
    fn round_trips_and_shares_layers_by_diff_id() {
        let mut config = CacheConfig::new();
        let layer = |name: &str| CacheLayer {
            diff_id: digest(&format!("diff-{name}")),
            blob: Some(blob(name)),
            image_layer: None,
        };
        config.add_step(&digest("k1"), 1, Some(layer("a")));
        config.add_step(&digest("k2"), 2, None);
        config.add_step(&digest("k3"), 3, Some(layer("a")));
        config.add_step(&digest("k1"), 9, Some(layer("b")));
        assert_eq!(config.layers.len(), 2, "{config:?}");
        assert_eq!(config.steps.len(), 3, "a key is recorded once");
        let bytes = serde_json::to_vec(&config).unwrap();
        let read = CacheConfig::parse(&bytes).unwrap();
        assert_eq!(read, config);
        let steps = read.steps_by_key(None).unwrap();
        assert_eq!(steps[&digest("k3")].layer, steps[&digest("k1")].layer);
        assert!(steps[&digest("k2")].layer.is_none());
        assert_eq!(steps[&digest("k2")].created, 2);
    }

    #[test]
    fn a_newer_version_is_refused_before_anything_else() {
        let text = br#"{"schemaVersion": 2, "keyVersion": "x", "steps": "whatever"}"#;
        let err = CacheConfig::parse(text).unwrap_err();
        assert!(matches!(err, FormatError::Newer { found: 2 }), "{err}");
        assert!(err.to_string().contains("version 2 is newer"), "{err}");
    }

    #[test]
    fn inconsistent_configs_are_refused() {
        for text in [
            r#"{"keyVersion": "x"}"#,
            r#"{"schemaVersion": 1, "keyVersion": "x", "steps": [{"key": "sha256:0000000000000000000000000000000000000000000000000000000000000000", "created": 1, "layer": 0}]}"#,
            r#"{"schemaVersion": 1, "keyVersion": "x", "layers": [{"diffId": "sha256:0000000000000000000000000000000000000000000000000000000000000000"}]}"#,
            r#"{"schemaVersion": 1, "keyVersion": "x", "layers": [{"diffId": "sha256:0000000000000000000000000000000000000000000000000000000000000000", "blob": {"mediaType": "application/json", "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000000", "size": 1}}]}"#,
            "not json",
        ] {
            assert!(CacheConfig::parse(text.as_bytes()).is_err(), "{text}");
        }
    }

    #[test]
    fn inline_layers_are_found_among_the_image_layers() {
        let image = vec![
            (blob("base"), digest("diff-base")),
            (blob("a"), digest("diff-a")),
        ];
        let steps = [
            StepResult {
                stage: 0,
                key: digest("k1"),
                created: 5,
                layer: Some((blob("plain-a"), digest("diff-a"))),
            },
            StepResult {
                stage: 0,
                key: digest("k2"),
                created: 6,
                layer: Some((blob("other"), digest("diff-other"))),
            },
        ];
        let config = CacheConfig::inline(&steps, &image);
        assert_eq!(
            config.steps.len(),
            1,
            "a layer not in the image is left out"
        );
        assert_eq!(config.layers[0].image_layer, Some(1));
        let by_key = config.steps_by_key(Some(&image)).unwrap();
        let layer = by_key[&digest("k1")].layer.clone().unwrap();
        assert_eq!(layer.blob, blob("a"), "the image's own blob");
        assert!(config.steps_by_key(None).is_err());
        let shifted = vec![(blob("a"), digest("diff-x")), image[0].clone()];
        assert!(config.steps_by_key(Some(&shifted)).is_err());
    }
}
