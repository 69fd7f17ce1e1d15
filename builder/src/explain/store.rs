//! Base image configs from the local store (no network).

use std::path::Path;

use kiln_layers::oci::Platform;
use kiln_layers::{Reference, Store};

use crate::plan::{ImageResolver, ResolvedImage};

/// Resolves base images to their config through the store's tags
/// (`index.json`), following an index to the platform's manifest.
#[derive(Debug, Clone)]
pub struct StoreImages {
    store: Option<Store>,
}

impl StoreImages {
    /// The store at `root`, if one exists there; without one every image is
    /// unknown (and nothing is created: explain and check write nothing).
    pub fn open_existing(root: &Path) -> Result<StoreImages, kiln_layers::Error> {
        if !root.join("index.json").is_file() {
            return Ok(StoreImages { store: None });
        }
        Ok(StoreImages {
            store: Some(Store::open(root)?),
        })
    }
}

impl ImageResolver for StoreImages {
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String> {
        let parsed = Reference::parse(reference).map_err(|e| e.to_string())?;
        let not_found = || "not found in the local store".to_string();
        let Some(store) = &self.store else {
            return Err(not_found());
        };
        let descriptor = store
            .resolve(&parsed)
            .map_err(|e| e.to_string())?
            .ok_or_else(not_found)?;
        let image = store
            .read_image(&descriptor, platform)
            .map_err(|e| e.to_string())?;
        Ok(ResolvedImage {
            reference: parsed.to_string(),
            digest: Some(descriptor.digest.to_string()),
            config: image.config,
        })
    }
}
