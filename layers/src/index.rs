//! Writing an image index: one entry per platform's image (a
//! multi-platform build, `kiln manifest create`), in the order given, and
//! any other manifest with its annotations (BuildKit's attestation
//! manifests: `vnd.docker.reference.type: attestation-manifest`,
//! `vnd.docker.reference.digest: <the image's manifest>`, platform
//! `unknown/unknown`).
//!
//! The index is an OCI image index, or with Docker media types a Docker
//! manifest list (schema 2 has no annotations: entries with annotations,
//! or index annotations, are refused there). Entries are written as
//! BuildKit writes them (media type, digest, size, platform; annotations
//! only when given) through the canonical serializer, so the same images
//! in the same order give the same index digest whoever gathers them.
//!
//! ```
//! # fn main() -> kiln_layers::Result<()> {
//! use kiln_layers::index::IndexWriter;
//! use kiln_layers::{Descriptor, Digest, Platform, Store, media};
//! let dir = tempfile::tempdir().expect("tempdir");
//! let store = Store::open(dir.path())?;
//! let manifest = Descriptor::new(media::OCI_MANIFEST, Digest::of(b"m"), 1);
//! let mut index = IndexWriter::new(false);
//! index.add_image(&manifest, &Platform::parse("linux/arm64")?);
//! let written = index.write(&store)?;
//! assert_eq!(written.media_type, media::OCI_INDEX);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{
    media, Descriptor, Index, Platform, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME,
};
use crate::store::Store;

/// An index being assembled; [`IndexWriter::write`] stores it.
#[derive(Clone, Debug)]
pub struct IndexWriter {
    docker: bool,
    manifests: Vec<Descriptor>,
    annotations: BTreeMap<String, String>,
}

impl IndexWriter {
    /// An empty index: a Docker manifest list when `docker`, else an OCI
    /// image index.
    pub fn new(docker: bool) -> IndexWriter {
        IndexWriter {
            docker,
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
        }
    }

    /// Adds a platform's image manifest: its media type, digest and size,
    /// the platform (normalized), and the descriptor's own annotations
    /// (`--annotation manifest-descriptor:`; a name the store gave it is
    /// not one).
    pub fn add_image(&mut self, manifest: &Descriptor, platform: &Platform) {
        let mut entry = Descriptor::new(
            manifest.media_type.clone(),
            manifest.digest.clone(),
            manifest.size,
        );
        entry.platform = Some(platform.normalized());
        entry.annotations = manifest.annotations.clone();
        entry.annotations.remove(ANNOTATION_REF_NAME);
        entry.annotations.remove(ANNOTATION_CONTAINERD_NAME);
        self.manifests.push(entry);
    }

    /// Adds any other entry as it is given (platform and annotations
    /// included): an attestation manifest, an entry copied from another
    /// index.
    pub fn add_entry(&mut self, entry: Descriptor) {
        self.manifests.push(entry);
    }

    /// Sets an annotation of the index itself.
    pub fn annotate(&mut self, key: &str, value: &str) {
        self.annotations.insert(key.to_string(), value.to_string());
    }

    /// The entries so far.
    pub fn entries(&self) -> &[Descriptor] {
        &self.manifests
    }

    /// The index document.
    pub fn index(&self) -> Result<Index> {
        let media_type = if self.docker {
            media::DOCKER_MANIFEST_LIST
        } else {
            media::OCI_INDEX
        };
        if self.docker {
            let annotated = self.manifests.iter().find(|d| !d.annotations.is_empty());
            if let Some(entry) = annotated {
                return Err(Error::InvalidManifest {
                    what: format!("manifest list entry {}", entry.digest),
                    reason: "a Docker manifest list has no annotations; use OCI media types".into(),
                });
            }
            if !self.annotations.is_empty() {
                return Err(Error::InvalidManifest {
                    what: "manifest list".into(),
                    reason: "a Docker manifest list has no annotations; use OCI media types".into(),
                });
            }
        }
        Ok(Index {
            schema_version: 2,
            artifact_type: None,
            media_type: Some(media_type.to_string()),
            manifests: self.manifests.clone(),
            annotations: self.annotations.clone(),
        })
    }

    /// Stores the index (canonical JSON); returns its descriptor (tag it
    /// with [`Store::tag`]).
    pub fn write(&self, store: &Store) -> Result<Descriptor> {
        let index = self.index()?;
        let media_type = index.media_type.clone().unwrap_or_default();
        store.put_json(&media_type, &index)
    }
}

/// The media type of an in-toto statement (a layer of an attestation
/// manifest).
pub const IN_TOTO_MEDIA_TYPE: &str = "application/vnd.in-toto+json";
/// The layer annotation naming the statement's predicate type.
pub const ANNOTATION_PREDICATE_TYPE: &str = "in-toto.io/predicate-type";
/// The value of `vnd.docker.reference.type` on an attestation manifest.
pub const REFERENCE_TYPE_ATTESTATION: &str = "attestation-manifest";

/// One in-toto statement to attach: its predicate type and its JSON bytes.
#[derive(Clone, Debug)]
pub struct Statement {
    pub predicate_type: String,
    pub bytes: Vec<u8>,
}

/// The artifact type of an attestation manifest written as an OCI
/// artifact.
pub const ARTIFACT_TYPE_ATTESTATION: &str = "application/vnd.docker.attestation.manifest.v1+json";

/// Stores an attestation manifest for the image manifest `subject`, as
/// BuildKit's image exporter writes one (`commitAttestationsManifest`):
/// each statement a layer (`application/vnd.in-toto+json`, annotated with
/// its predicate type) of an OCI image manifest whose config is, with
/// `artifact` (`oci-artifact=true`, current BuildKit's default with OCI
/// media types), the empty JSON object, the manifest then having an
/// `artifactType` and `subject` naming the image; else a config of
/// platform `unknown/unknown` whose diff ids are the statements' digests.
/// Returns the index entry: platform `unknown/unknown`, annotated
/// `vnd.docker.reference.type: attestation-manifest` and
/// `vnd.docker.reference.digest: <subject>` (add it with
/// [`IndexWriter::add_entry`], after the images, as BuildKit orders them).
pub fn write_attestation_manifest(
    store: &Store,
    subject: &Descriptor,
    statements: &[Statement],
    artifact: bool,
) -> Result<Descriptor> {
    let mut layers = Vec::new();
    for statement in statements {
        let mut layer = store.put_blob(IN_TOTO_MEDIA_TYPE, &statement.bytes)?;
        layer.annotations.insert(
            ANNOTATION_PREDICATE_TYPE.to_string(),
            statement.predicate_type.clone(),
        );
        layers.push(layer);
    }
    let manifest = if artifact {
        let mut config = store.put_blob(media::OCI_EMPTY, b"{}")?;
        config.data = Some("e30=".to_string());
        crate::oci::Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.to_string()),
            artifact_type: Some(ARTIFACT_TYPE_ATTESTATION.to_string()),
            config,
            layers,
            subject: Some(Descriptor::new(
                subject.media_type.clone(),
                subject.digest.clone(),
                subject.size,
            )),
            annotations: BTreeMap::new(),
        }
    } else {
        // The config as Go's ocispecs.Image marshals it (field order kept).
        let diff_ids: Vec<String> = layers.iter().map(|l| l.digest.to_string()).collect();
        let config = format!(
            r#"{{"architecture":"unknown","os":"unknown","config":{{}},"rootfs":{{"type":"layers","diff_ids":{}}}}}"#,
            serde_json::Value::from(diff_ids)
        );
        let config = store.put_blob(media::OCI_CONFIG, config.as_bytes())?;
        crate::oci::Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.to_string()),
            artifact_type: None,
            config,
            layers,
            subject: None,
            annotations: BTreeMap::new(),
        }
    };
    let mut entry = store.put_json(media::OCI_MANIFEST, &manifest)?;
    entry.annotations.insert(
        crate::oci::ANNOTATION_REFERENCE_DIGEST.to_string(),
        subject.digest.to_string(),
    );
    entry.annotations.insert(
        crate::oci::ANNOTATION_REFERENCE_TYPE.to_string(),
        REFERENCE_TYPE_ATTESTATION.to_string(),
    );
    entry.platform = Some(Platform {
        architecture: "unknown".into(),
        os: "unknown".into(),
        os_version: None,
        os_features: None,
        variant: None,
    });
    Ok(entry)
}

/// What `kiln manifest annotate` changes of an index entry (as `docker
/// manifest annotate`): its platform's fields, and annotations added.
#[derive(Clone, Debug, Default)]
pub struct EntryChange {
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub variant: Option<String>,
    pub os_version: Option<String>,
    pub os_features: Option<Vec<String>>,
    pub annotations: BTreeMap<String, String>,
}

/// Stores a copy of the index `index` with the entry for the manifest
/// `digest` changed by `change`; returns the new index's descriptor (the
/// caller tags it). The entry must be there; a Docker manifest list takes
/// no annotations.
pub fn annotate_entry(
    store: &Store,
    index: &Descriptor,
    digest: &crate::digest::Digest,
    change: &EntryChange,
) -> Result<Descriptor> {
    let mut doc = match store.read_manifest(index)? {
        crate::oci::ManifestKind::Index(doc) => doc,
        crate::oci::ManifestKind::Image(_) => {
            return Err(Error::InvalidManifest {
                what: format!("manifest {}", index.digest),
                reason: "an image manifest, not an index".into(),
            })
        }
    };
    let entry = doc
        .manifests
        .iter_mut()
        .find(|d| &d.digest == digest)
        .ok_or_else(|| Error::InvalidManifest {
            what: format!("index {}", index.digest),
            reason: format!("it has no entry for {digest}"),
        })?;
    let mut platform = entry.platform.clone().unwrap_or(Platform {
        architecture: String::new(),
        os: String::new(),
        os_version: None,
        os_features: None,
        variant: None,
    });
    let set = |field: &mut String, value: &Option<String>| {
        if let Some(v) = value {
            *field = v.clone();
        }
    };
    set(&mut platform.os, &change.os);
    set(&mut platform.architecture, &change.architecture);
    let touched = change.os.is_some() || change.architecture.is_some();
    if touched && !crate::oci::known_os_arch(&platform.os, &platform.architecture) {
        return Err(Error::InvalidManifest {
            what: format!("entry {digest}"),
            reason: format!(
                "unsupported os/arch combination {}/{} (as docker manifest annotate, kiln \
                 takes the pairs Go builds for, lowercase: linux/amd64, linux/arm64, \
                 windows/amd64, …)",
                platform.os, platform.architecture
            ),
        });
    }
    if change.variant.is_some() {
        platform.variant = change.variant.clone().filter(|v| !v.is_empty());
    }
    if change.os_version.is_some() {
        platform.os_version = change.os_version.clone().filter(|v| !v.is_empty());
    }
    if change.os_features.is_some() {
        platform.os_features = change.os_features.clone().filter(|f| !f.is_empty());
    }
    entry.platform = Some(platform);
    entry.annotations.extend(change.annotations.clone());
    let docker = index.media_type == media::DOCKER_MANIFEST_LIST;
    let mut writer = IndexWriter::new(docker);
    writer.annotations = doc.annotations.clone();
    for entry in doc.manifests {
        writer.add_entry(entry);
    }
    writer.write(store)
}

/// Where the entries of an index `kiln manifest create` made came from:
/// for each entry's digest, the source reference it was gathered from, as
/// `docker manifest create` keeps one file per source in its manifest
/// store. `--amend` replaces the entries of a source given again and keeps
/// the others. Kept per index name, valid only while that name still
/// names [`IndexSources::index`] (a build or a tag may have moved it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSources {
    /// The index the record describes.
    pub index: Digest,
    /// (entry digest, source reference), in the index's order.
    pub entries: Vec<(Digest, String)>,
}

impl IndexSources {
    /// The record kept for the index name `name`, when there is one that
    /// parses and it describes `index`.
    pub fn read(store: &Store, name: &str, index: &Digest) -> Result<Option<IndexSources>> {
        let path = Self::path(store, name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        Ok(serde_json::from_slice::<IndexSources>(&bytes)
            .ok()
            .filter(|record| record.index == *index))
    }

    /// Keeps the record for the index name `name`, replacing the one before.
    pub fn write(&self, store: &Store, name: &str) -> Result<()> {
        let dir = store.index_sources_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", dir.clone(), e))?;
        let path = Self::path(store, name);
        let bytes = serde_json::to_vec(self).map_err(|source| Error::Json {
            what: path.display().to_string(),
            source,
        })?;
        crate::store::write_atomic(&path, &bytes)
    }

    /// The source `digest`'s entry was gathered from, if recorded.
    pub fn source_of(&self, digest: &Digest) -> Option<&str> {
        self.entries
            .iter()
            .find(|(d, _)| d == digest)
            .map(|(_, source)| source.as_str())
    }

    /// A file per name: the name's digest (names hold `/` and `:`).
    fn path(store: &Store, name: &str) -> std::path::PathBuf {
        store
            .index_sources_dir()
            .join(format!("{}.json", Digest::of(name.as_bytes()).hex()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn manifest(n: u8) -> Descriptor {
        Descriptor::new(media::OCI_MANIFEST, Digest::of(&[n]), 100 + n as u64)
    }

    #[test]
    fn entries_keep_their_order_and_attestations_their_annotations() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut writer = IndexWriter::new(false);
        writer.add_image(&manifest(1), &Platform::parse("linux/amd64").unwrap());
        writer.add_image(&manifest(2), &Platform::parse("linux/arm64/v8").unwrap());
        let mut attestation = manifest(3);
        attestation.platform = Some(Platform::parse("unknown/unknown").unwrap());
        attestation.annotations.insert(
            crate::oci::ANNOTATION_REFERENCE_TYPE.into(),
            "attestation-manifest".into(),
        );
        writer.add_entry(attestation);
        let desc = writer.write(&store).unwrap();
        let text = String::from_utf8(store.read_blob(&desc.digest).unwrap()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let entries = value["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0]["digest"], manifest(1).digest.as_str());
        assert_eq!(
            entries[1]["platform"],
            serde_json::json!({"architecture": "arm64", "os": "linux"})
        );
        assert!(entries[0].get("annotations").is_none(), "{text}");
        assert_eq!(
            entries[2]["annotations"]["vnd.docker.reference.type"],
            "attestation-manifest"
        );
        // The same images in the same order: the same index.
        let mut again = IndexWriter::new(false);
        again.add_image(&manifest(1), &Platform::parse("linux/x86_64").unwrap());
        again.add_image(&manifest(2), &Platform::parse("linux/aarch64").unwrap());
        let mut first_two = writer.clone();
        first_two.manifests.truncate(2);
        assert_eq!(
            again.write(&store).unwrap().digest,
            first_two.write(&store).unwrap().digest
        );
    }

    #[test]
    fn an_annotated_entry_gets_its_platform_fields_and_annotations() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut writer = IndexWriter::new(false);
        writer.add_image(&manifest(1), &Platform::parse("linux/amd64").unwrap());
        writer.add_image(&manifest(2), &Platform::parse("linux/arm64").unwrap());
        let index = writer.write(&store).unwrap();
        let change = EntryChange {
            architecture: Some("riscv64".into()),
            variant: Some("rva22".into()),
            os_features: Some(vec!["sse4".into()]),
            annotations: [("org.example.note".to_string(), "yes".to_string())].into(),
            ..Default::default()
        };
        let changed = annotate_entry(&store, &index, &manifest(2).digest, &change).unwrap();
        assert_ne!(changed.digest, index.digest);
        let doc: Index =
            serde_json::from_slice(&store.read_blob(&changed.digest).unwrap()).unwrap();
        let entry = &doc.manifests[1];
        let platform = entry.platform.as_ref().unwrap();
        assert_eq!(platform.to_string(), "linux/riscv64/rva22");
        assert_eq!(
            platform.os_features.as_deref(),
            Some(&["sse4".to_string()][..])
        );
        assert_eq!(entry.annotations["org.example.note"], "yes");
        assert_eq!(
            doc.manifests[0],
            writer.entries()[0],
            "the other entry is as it was"
        );
        let err = annotate_entry(&store, &index, &manifest(9).digest, &change).unwrap_err();
        assert!(err.to_string().contains("has no entry for"), "{err}");
        // An os or arch no toolchain builds for (or not lowercase) is
        // refused, as docker manifest annotate refuses it; the pair is
        // judged whole, with what the entry had.
        for (os, arch, pair) in [
            (None, Some("ARM64"), "linux/ARM64"),
            (Some("bogusos"), None, "bogusos/arm64"),
            (Some("windows"), Some("s390x"), "windows/s390x"),
        ] {
            let change = EntryChange {
                os: os.map(str::to_string),
                architecture: arch.map(str::to_string),
                ..Default::default()
            };
            let err = annotate_entry(&store, &index, &manifest(2).digest, &change).unwrap_err();
            let wanted = format!("unsupported os/arch combination {pair} ");
            assert!(err.to_string().contains(&wanted), "{err}");
        }
        let change = EntryChange {
            os: Some("windows".into()),
            ..Default::default()
        };
        annotate_entry(&store, &index, &manifest(2).digest, &change).unwrap();
    }

    #[test]
    fn a_docker_manifest_list_refuses_annotations() {
        let mut writer = IndexWriter::new(true);
        writer.add_image(&manifest(1), &Platform::parse("linux/amd64").unwrap());
        assert_eq!(
            writer.index().unwrap().media_type.as_deref(),
            Some(media::DOCKER_MANIFEST_LIST)
        );
        writer.annotate("org.opencontainers.image.created", "now");
        let err = writer.index().unwrap_err();
        assert!(err.to_string().contains("no annotations"), "{err}");
    }
}
