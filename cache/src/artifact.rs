//! The cache as an OCI artifact (docs/cache.md): made in the store from a
//! build's steps for an export, and told apart from an image on import.
//!
//! Made: each exported layer in its compressed form (a layer the build
//! made is compressed once, as for a push; one that came compressed goes
//! as it is), the cache config, and either an image manifest with the
//! artifact type whose config is the cache config and whose layers are
//! the layer blobs, or an index listing the layer blobs then the config.

use std::collections::BTreeMap;

use kiln_builder::cache::format::{CacheConfig, CacheLayer, ARTIFACT_TYPE, CONFIG_MEDIA_TYPE};
use kiln_builder::cache::StepResult;
use kiln_layers::compressed::compressed_layers;
use kiln_layers::oci::{media, Descriptor, Index, Manifest, ManifestKind};
use kiln_layers::{Reporter, Store};

use crate::spec::ExportOptions;

/// A cache artifact written to the store.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The manifest or index.
    pub manifest: Descriptor,
    /// The cache config blob.
    pub config: Descriptor,
    /// The layer blobs, in the config's order.
    pub layers: Vec<Descriptor>,
    /// How many steps it holds.
    pub steps: usize,
}

impl Artifact {
    /// Every blob the manifest names (layers, then the config).
    pub fn blobs(&self) -> Vec<Descriptor> {
        let mut blobs = self.layers.clone();
        blobs.push(self.config.clone());
        blobs
    }
}

/// Writes the artifact of `steps` to the store; `None` when there is no
/// step to export (BuildKit skips the export then too).
pub fn make(
    store: &Store,
    steps: &[&StepResult],
    options: &ExportOptions,
    reporter: &dyn Reporter,
) -> Result<Option<Artifact>, kiln_layers::Error> {
    if steps.is_empty() {
        return Ok(None);
    }
    let _lease = store.lease()?;
    let stored: Vec<Descriptor> = steps
        .iter()
        .filter_map(|s| s.layer.as_ref().map(|(d, _)| d.clone()))
        .collect();
    let compressed = compressed_layers(store, &stored, options.compression, reporter)?;
    let by_stored: BTreeMap<_, _> = stored
        .iter()
        .map(|d| d.digest.clone())
        .zip(compressed)
        .collect();
    let mut config = CacheConfig::new();
    for step in steps {
        let layer = step.layer.as_ref().and_then(|(stored, diff_id)| {
            let mut blob = by_stored.get(&stored.digest)?.clone();
            blob.media_type = layer_media_type(&blob.media_type, options.oci_media_types);
            Some(CacheLayer {
                diff_id: diff_id.clone(),
                blob: Some(blob),
                image_layer: None,
            })
        });
        config.add_step(&step.key, step.created, layer);
    }
    let layers: Vec<Descriptor> = config
        .layers
        .iter()
        .filter_map(|l| l.blob.clone())
        .collect();
    let config_desc = store.put_json(CONFIG_MEDIA_TYPE, &config)?;
    let manifest = if options.image_manifest {
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.into()),
            artifact_type: Some(ARTIFACT_TYPE.into()),
            config: config_desc.clone(),
            layers: layers.clone(),
            subject: None,
            annotations: BTreeMap::new(),
        };
        store.put_json(media::OCI_MANIFEST, &manifest)?
    } else {
        let media_type = match options.oci_media_types {
            true => media::OCI_INDEX,
            false => media::DOCKER_MANIFEST_LIST,
        };
        let mut manifests = layers.clone();
        manifests.push(config_desc.clone());
        let index = Index {
            schema_version: 2,
            media_type: Some(media_type.into()),
            artifact_type: options.oci_media_types.then(|| ARTIFACT_TYPE.into()),
            manifests,
            annotations: BTreeMap::new(),
        };
        store.put_json(media_type, &index)?
    };
    Ok(Some(Artifact {
        manifest,
        config: config_desc,
        layers,
        steps: config.steps.len(),
    }))
}

/// A layer's media type in the family asked for (same bytes).
fn layer_media_type(current: &str, oci: bool) -> String {
    use kiln_layers::media::*;
    let converted = match (current, oci) {
        (OCI_LAYER, false) => DOCKER_LAYER,
        (OCI_LAYER_GZIP, false) => DOCKER_LAYER_GZIP,
        (OCI_LAYER_ZSTD, false) => DOCKER_LAYER_ZSTD,
        (DOCKER_LAYER, true) => OCI_LAYER,
        (DOCKER_LAYER_GZIP, true) => OCI_LAYER_GZIP,
        (DOCKER_LAYER_ZSTD, true) => OCI_LAYER_ZSTD,
        (other, _) => other,
    };
    converted.to_string()
}

/// The cache config a manifest or index names, if it is a kiln cache: an
/// index entry, or an image manifest's config, of a kiln cache config
/// media type (of any version: a newer one is refused when read).
pub fn cache_config_of(kind: &ManifestKind) -> Option<&Descriptor> {
    let is_config = |d: &&Descriptor| {
        d.media_type
            .starts_with("application/vnd.kiln.cache.config.")
    };
    match kind {
        ManifestKind::Index(index) => index.manifests.iter().find(is_config),
        ManifestKind::Image(manifest) => Some(&manifest.config).filter(is_config),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_layers::Digest;

    fn step(store: &Store, key: &str, content: &[u8]) -> StepResult {
        let layer = store.put_blob(media::OCI_LAYER, content).unwrap();
        StepResult {
            stage: 0,
            key: Digest::of(key.as_bytes()),
            created: 7,
            layer: Some((layer.clone(), layer.digest)),
        }
    }

    #[test]
    fn a_manifest_or_an_index_of_compressed_layers_and_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let steps = [step(&store, "a", b"layer a"), step(&store, "b", b"layer b")];
        let refs: Vec<&StepResult> = steps.iter().collect();
        let made = make(
            &store,
            &refs,
            &ExportOptions::default(),
            &kiln_layers::NoProgress,
        )
        .unwrap()
        .unwrap();
        let kind = store.read_manifest(&made.manifest).unwrap();
        let ManifestKind::Image(manifest) = &kind else {
            panic!("{kind:?}")
        };
        assert_eq!(manifest.artifact_type.as_deref(), Some(ARTIFACT_TYPE));
        assert_eq!(cache_config_of(&kind), Some(&made.config));
        assert_eq!(manifest.layers, made.layers);
        assert!(made
            .layers
            .iter()
            .all(|l| l.media_type == media::OCI_LAYER_GZIP && store.has_blob(&l.digest)));
        let config = CacheConfig::parse(&store.read_blob(&made.config.digest).unwrap()).unwrap();
        assert_eq!(config.steps.len(), 2);
        assert_eq!(config.layers[0].diff_id, steps[0].layer.as_ref().unwrap().1);

        let docker = ExportOptions {
            oci_media_types: false,
            image_manifest: false,
            ..ExportOptions::default()
        };
        let listed = make(&store, &refs, &docker, &kiln_layers::NoProgress)
            .unwrap()
            .unwrap();
        assert_eq!(listed.manifest.media_type, media::DOCKER_MANIFEST_LIST);
        let kind = store.read_manifest(&listed.manifest).unwrap();
        let ManifestKind::Index(index) = &kind else {
            panic!("{kind:?}")
        };
        assert_eq!(index.manifests.len(), 3);
        assert_eq!(index.manifests[0].media_type, media::DOCKER_LAYER_GZIP);
        assert_eq!(cache_config_of(&kind), Some(&listed.config));
        assert!(make(&store, &[], &docker, &kiln_layers::NoProgress)
            .unwrap()
            .is_none());
    }
}
