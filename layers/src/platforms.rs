//! The platforms of a stored image: what a tagged index lists, which of
//! its images the store holds whole, and which one a command picks.
//!
//! A tag names what the registry or the build named: an image manifest, or
//! an index (an OCI image index or a Docker manifest list) of one image per
//! platform. A pull of one platform keeps the index and that platform's
//! image; a pull of every platform, a multi-platform build or a load keeps
//! them all. Every entry of an index is listed, whether the store holds its
//! image or not, and whatever its platform (`unknown/unknown` attestation
//! manifests, platforms kiln cannot run): nothing an index says is dropped.
//!
//! An image counts as held when its manifest, its config and every layer
//! are blobs of the store. [`Store::read_image`] picks among the held ones
//! only, so that a platform the index lists but the store lacks is pulled
//! (a build) or named in the error (`run`, `inspect --platform`).

use crate::error::{Error, Result};
use crate::oci::{
    media, Descriptor, Index, ManifestKind, Platform, ANNOTATION_REFERENCE_DIGEST,
    ANNOTATION_REFERENCE_TYPE,
};
use crate::store::{Image, Store};

/// What an index entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// An image manifest: a platform's image.
    Image,
    /// An attestation manifest BuildKit attaches to an image
    /// (`vnd.docker.reference.type: attestation-manifest`).
    Attestation,
    /// A nested index.
    Index,
    /// Anything else (an artifact, a media type kiln does not know).
    Other,
}

/// One entry of a stored image: an index's manifest, or the image itself
/// when the tag names a manifest.
#[derive(Clone, Debug)]
pub struct PlatformEntry {
    /// The entry as the index lists it (for a lone manifest: its
    /// descriptor, with the platform its config names).
    pub descriptor: Descriptor,
    /// The platform the entry says (normalized), if any.
    pub platform: Option<Platform>,
    pub kind: EntryKind,
    /// The store holds it whole (manifest, config and layers; for a nested
    /// index, its blob).
    pub present: bool,
}

impl PlatformEntry {
    /// How listings show the entry: its platform (`linux/arm64`,
    /// `unknown/unknown`), `attestation` for an attestation manifest, or
    /// `unknown` when the index gives none.
    pub fn label(&self) -> String {
        match (&self.kind, &self.platform) {
            (EntryKind::Attestation, _) => "attestation".to_string(),
            (_, Some(p)) => p.to_string(),
            (_, None) => "unknown".to_string(),
        }
    }

    /// The image an attestation manifest is about.
    pub fn attests(&self) -> Option<&str> {
        self.descriptor
            .annotations
            .get(ANNOTATION_REFERENCE_DIGEST)
            .map(String::as_str)
    }
}

pub(crate) fn kind_of(desc: &Descriptor) -> EntryKind {
    if desc
        .annotations
        .get(ANNOTATION_REFERENCE_TYPE)
        .is_some_and(|t| t == "attestation-manifest")
    {
        EntryKind::Attestation
    } else if media::is_index(&desc.media_type) {
        EntryKind::Index
    } else if media::is_manifest(&desc.media_type) {
        EntryKind::Image
    } else {
        EntryKind::Other
    }
}

/// `a, b, c` of the entries' labels, `none` for none.
pub(crate) fn labels<'a>(entries: impl Iterator<Item = &'a Descriptor>) -> String {
    let text: Vec<String> = entries
        .map(|d| match &d.platform {
            Some(p) => p.normalized().to_string(),
            None => "unknown".to_string(),
        })
        .collect();
    if text.is_empty() {
        "none".to_string()
    } else {
        text.join(", ")
    }
}

impl Store {
    /// Whether the store holds the image manifest `desc` whole: the
    /// manifest, its config and every layer. A nested index counts when its
    /// blob is there.
    pub fn holds_image(&self, desc: &Descriptor) -> bool {
        if !self.has_blob(&desc.digest) {
            return false;
        }
        if media::is_index(&desc.media_type) {
            return true;
        }
        match self.read_manifest(desc) {
            Ok(ManifestKind::Image(m)) => std::iter::once(&m.config)
                .chain(&m.layers)
                .all(|blob| self.has_blob(&blob.digest)),
            Ok(ManifestKind::Index(_)) => true,
            Err(_) => false,
        }
    }

    /// Every entry of the image `desc` names (see the module docs): an
    /// index's manifests in its order, or the manifest itself.
    pub fn platform_entries(&self, desc: &Descriptor) -> Result<Vec<PlatformEntry>> {
        let index = match self.read_manifest(desc)? {
            ManifestKind::Index(index) => index,
            ManifestKind::Image(manifest) => {
                let mut descriptor = desc.clone();
                if descriptor.platform.is_none() {
                    descriptor.platform = self
                        .read_config(&manifest.config)
                        .ok()
                        .map(|c| c.platform());
                }
                return Ok(vec![PlatformEntry {
                    platform: descriptor.platform.as_ref().map(Platform::normalized),
                    present: self.holds_image(&descriptor),
                    kind: EntryKind::Image,
                    descriptor,
                }]);
            }
        };
        Ok(index
            .manifests
            .into_iter()
            .map(|descriptor| PlatformEntry {
                platform: descriptor.platform.as_ref().map(Platform::normalized),
                present: self.holds_image(&descriptor),
                kind: kind_of(&descriptor),
                descriptor,
            })
            .collect())
    }

    /// The entry of `index` (named `top` in errors) for `platform` among
    /// those the store holds (see [`Index::select_platform`]). An entry
    /// for the platform that the store lacks is
    /// [`Error::PlatformNotInStore`]; none at all,
    /// [`Error::NoMatchingPlatform`].
    pub(crate) fn pick_held(
        &self,
        index: &Index,
        platform: &Platform,
        top: &Descriptor,
    ) -> Result<Descriptor> {
        let held = Index {
            manifests: index
                .manifests
                .iter()
                .filter(|d| kind_of(d) != EntryKind::Attestation && self.holds_image(d))
                .cloned()
                .collect(),
            ..index.clone()
        };
        if let Some(picked) = held.select_platform(platform) {
            return Ok(picked.clone());
        }
        if index.select_platform(platform).is_some() {
            return Err(Error::PlatformNotInStore {
                image: top.digest.to_string(),
                platform: platform.to_string(),
                stored: labels(held.manifests.iter()),
            });
        }
        Err(Error::NoMatchingPlatform {
            image: top.digest.to_string(),
            platform: platform.to_string(),
            available: labels(
                index
                    .manifests
                    .iter()
                    .filter(|d| kind_of(d) != EntryKind::Attestation),
            ),
        })
    }

    /// The image `desc` names for `platform`, a platform someone asked
    /// for (`--platform` of run, inspect, save, history, layers, explain):
    /// as [`Store::read_image`], and an image of one platform (no index)
    /// that is another platform's is refused, as Docker refuses it, rather
    /// than shown or run as if it were the one asked for. (`read_image`
    /// takes it, whatever its platform: a build's base of another platform
    /// gets a warning, as in BuildKit.) `shown` names the image in the
    /// error: the name it was asked by.
    pub fn read_image_for(
        &self,
        desc: &Descriptor,
        platform: &Platform,
        shown: &str,
    ) -> Result<Image> {
        let image = self.read_image(desc, platform)?;
        let actual = image.config.platform();
        if !actual.architecture.is_empty() && platform.compatible_rank(&actual).is_none() {
            return Err(Error::PlatformMismatch {
                image: shown.to_string(),
                wanted: platform.to_string(),
                actual: actual.normalized().to_string(),
            });
        }
        Ok(image)
    }

    /// The image `desc` names for `preferred` when the store holds it,
    /// else the first image it holds (what `images`, `inspect` and `tag`
    /// show of an image pulled for another platform than this machine's).
    pub fn read_image_or_held(&self, desc: &Descriptor, preferred: &Platform) -> Result<Image> {
        match self.read_image(desc, preferred) {
            Err(Error::PlatformNotInStore { .. } | Error::NoMatchingPlatform { .. }) => {
                let held = self
                    .platform_entries(desc)?
                    .into_iter()
                    .find(|e| e.present && e.kind == EntryKind::Image);
                match held {
                    Some(entry) => {
                        let platform = entry.platform.unwrap_or_else(|| preferred.clone());
                        self.read_image(&entry.descriptor, &platform)
                    }
                    None => self.read_image(desc, preferred),
                }
            }
            other => other,
        }
    }
}
