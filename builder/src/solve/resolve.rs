//! Base images for a build: the images its `oci-layout://` named contexts
//! put into the store, the store's tags, and a pull (through the caller's
//! [`ImagePuller`]) of what the store lacks.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use kiln_layers::oci::{Descriptor, Platform};
use kiln_layers::store::Image;
use kiln_layers::{Digest, Reference, Store};

use crate::contexts::named::LayoutContextImage;
use crate::plan::{FoundImage, ImageLookup, ImageName, LookupError};

use super::*;

/// Pulls an image the store lacks into the store; returns its manifest
/// (or index) descriptor. The CLI provides it (the builder speaks no
/// HTTP). An image the registry does not have is
/// [`LookupError::NotFound`]; its message need not name the image (the
/// caller's does).
pub trait ImagePuller: Sync {
    fn pull(&self, reference: &Reference, platform: &Platform) -> Result<Descriptor, LookupError>;
    /// Puts a layer blob of a stored image that the store lacks (one
    /// pulled without its layers, or built on a cache's) into the store,
    /// from where the image came. By default there is nowhere to look.
    fn fetch_blob(&self, _store: &Store, blob: &Descriptor) -> Result<(), LookupError> {
        Err(LookupError::NotFound(format!(
            "layer {} is not in the store",
            blob.digest
        )))
    }
}

/// Resolves base images to their config through the store's tags
/// (`index.json`), following an index to the platform's manifest, and
/// (given an [`ImagePuller`]) pulling what is missing. A stored image of another
/// platform than the one wanted is not used: it is pulled for that platform
/// (moby's builder checks the local image's platform the same way), or
/// refused when nothing can be pulled. Images resolved once are remembered
/// for the rest of the build, per reference and platform; the solver finds
/// them again by the manifest digest the plan recorded.
pub struct StoreResolver<'a> {
    /// None: no store exists (see [`StoreResolver::open_existing`]).
    store: Option<Store>,
    pull: Option<&'a dyn ImagePuller>,
    /// Pull even when the store has the tag (`--pull`).
    always_pull: bool,
    /// Use a stored image whatever its platform (analysis only: explain
    /// and check report what the store has, and the
    /// InvalidBaseImagePlatform lint says when it is another platform).
    any_stored_platform: bool,
    /// (reference, normalized platform) → image.
    images: Mutex<HashMap<(Reference, String), Image>>,
    /// Images the build's named contexts put into the store
    /// (`oci-layout://`): found by their reference, never pulled.
    provided: Vec<LayoutContextImage>,
}

impl<'a> StoreResolver<'a> {
    pub fn new(store: &Store, pull: Option<&'a dyn ImagePuller>) -> Self {
        StoreResolver {
            store: Some(store.clone()),
            pull,
            always_pull: false,
            any_stored_platform: false,
            images: Mutex::new(HashMap::new()),
            provided: Vec::new(),
        }
    }

    /// Reads the store at `root`, if one exists there, and never pulls;
    /// without a store every image is unknown, and nothing is created
    /// (explain and check write nothing). A stored image is used whatever
    /// its platform.
    pub fn open_existing(root: &Path) -> Result<StoreResolver<'static>, kiln_layers::Error> {
        let store = if Store::exists_at(root) {
            Some(Store::open(root)?)
        } else {
            None
        };
        Ok(StoreResolver {
            store,
            pull: None,
            always_pull: false,
            any_stored_platform: true,
            images: Mutex::new(HashMap::new()),
            provided: Vec::new(),
        })
    }

    /// Pull base images even when the store has them (a tag may have moved).
    pub fn always_pull(mut self, yes: bool) -> Self {
        self.always_pull = yes;
        self
    }

    /// Images in the store that these references name for this build
    /// only (the `oci-layout://` named contexts'): looked up there first,
    /// for the platform wanted, and never pulled, whatever `--pull` says.
    pub fn with_images(mut self, images: &[LayoutContextImage]) -> Self {
        self.provided = images.to_vec();
        self
    }

    /// Puts a layer blob the store lacks into it, through the puller.
    pub(crate) fn fetch_blob(&self, blob: &Descriptor) -> Result<(), SolveError> {
        let (Some(store), Some(puller)) = (&self.store, self.pull) else {
            return Err(SolveError::Store(kiln_layers::Error::BlobNotFound(
                blob.digest.clone(),
            )));
        };
        puller
            .fetch_blob(store, blob)
            .map_err(|e| SolveError::Fetch {
                blob: blob.digest.to_string(),
                message: e.to_string(),
            })
    }

    /// The image this resolver resolved to the manifest `digest` (what the
    /// plan recorded for a FROM, `COPY --from` or `RUN --mount from=`).
    pub(super) fn resolved(
        &self,
        name: &ImageName,
        digest: Option<&Digest>,
    ) -> Result<Image, SolveError> {
        let unresolved = || SolveError::Unresolved(name.to_string());
        let digest = digest.ok_or_else(unresolved)?;
        let images = self.images.lock().map_err(|_| unresolved())?;
        images
            .values()
            .find(|image| &image.manifest_descriptor.digest == digest)
            .cloned()
            .ok_or_else(unresolved)
    }

    /// The stored image `reference` names, for `platform`: `Ok(None)` when
    /// the store lacks it or (unless [`Self::any_stored_platform`]) has it
    /// for another platform only, with the reason in `mismatch`.
    fn stored(
        &self,
        store: &Store,
        reference: &Reference,
        platform: &Platform,
        mismatch: &mut Option<String>,
    ) -> Result<Option<Image>, LookupError> {
        // By tag, or by a digest the store holds under the repository.
        let Some(desc) = store
            .resolve_with_digests(reference)
            .map_err(LookupError::failed)?
        else {
            return Ok(None);
        };
        let read = match self.any_stored_platform {
            true => store.read_image_or_held(&desc, platform),
            false => store.read_image(&desc, platform),
        };
        let image = match read {
            Ok(image) => image,
            // The index lists the platform; the store holds others only.
            Err(kiln_layers::Error::PlatformNotInStore { stored, .. }) => {
                *mismatch = Some(format!(
                    "the local store has it for platform {stored}, not {platform}"
                ));
                return Ok(None);
            }
            Err(e @ kiln_layers::Error::NoMatchingPlatform { .. }) => {
                *mismatch = Some(e.to_string());
                return Ok(None);
            }
            Err(e) => return Err(LookupError::failed(e)),
        };
        let config = &image.config;
        let stored = Platform {
            os_version: None,
            ..config.platform()
        };
        // A config without an architecture says nothing to check against.
        let matches = config.architecture.is_empty() || platform.compatible_rank(&stored).is_some();
        if matches || self.any_stored_platform {
            return Ok(Some(image));
        }
        *mismatch = Some(format!(
            "the local store has it for platform {}, not {platform}",
            stored.normalized()
        ));
        Ok(None)
    }
}

impl StoreResolver<'_> {
    /// The image `parsed` names for `platform`: a named context's, else
    /// the store's, else pulled (when a puller is given).
    fn find(&self, parsed: &Reference, platform: &Platform) -> Result<Image, LookupError> {
        let Some(store) = &self.store else {
            return Err(LookupError::NotFound("not in the local store".into()));
        };
        if let Some(layout) = self.provided.iter().find(|p| &p.reference == parsed) {
            // The platform's blobs, from the layout, then the image.
            let said = |e: kiln_layers::Error| format!("{}: {e}", layout.shown);
            kiln_layers::archive::load_layout_platform(store, &layout.dir, &layout.root, platform)
                .map_err(|e| match e {
                    kiln_layers::Error::NoMatchingPlatform { .. } => LookupError::NotFound(said(e)),
                    e => LookupError::failed(said(e)),
                })?;
            return store
                .read_image(&layout.root, platform)
                .map_err(|e| LookupError::failed(said(e)));
        }
        let mut mismatch = None;
        let local = if self.always_pull && self.pull.is_some() {
            None
        } else {
            self.stored(store, parsed, platform, &mut mismatch)?
        };
        match (local, self.pull) {
            (Some(image), _) => Ok(image),
            (None, Some(puller)) => {
                let desc = puller.pull(parsed, platform).map_err(|e| match &mismatch {
                    // Say why the stored image was not used.
                    Some(stored) => match e {
                        LookupError::NotFound(text) => {
                            LookupError::NotFound(format!("{text} ({stored})"))
                        }
                        LookupError::Failed(source) => {
                            LookupError::failed(format!("{source} ({stored})"))
                        }
                    },
                    None => e,
                })?;
                store
                    .read_image(&desc, platform)
                    .map_err(LookupError::failed)
            }
            (None, None) => Err(LookupError::NotFound(
                mismatch.unwrap_or_else(|| "not in the local store".into()),
            )),
        }
    }
}

impl ImageLookup for StoreResolver<'_> {
    /// Errors leave the reference out: the caller's message names it.
    fn lookup(&self, parsed: &Reference, platform: &Platform) -> Result<FoundImage, LookupError> {
        let platform = platform.normalized();
        let key = (parsed.clone(), platform.to_string());
        let remembered = self.images.lock().ok().and_then(|m| m.get(&key).cloned());
        let image = match remembered {
            // Already resolved in this build (another stage, COPY --from).
            Some(image) => image,
            None => {
                let image = self.find(parsed, &platform)?;
                if let Ok(mut images) = self.images.lock() {
                    images.insert(key, image.clone());
                }
                image
            }
        };
        Ok(FoundImage {
            reference: parsed.clone(),
            digest: Some(image.manifest_descriptor.digest),
            config: image.config,
        })
    }
}
