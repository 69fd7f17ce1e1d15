//! Where a built image goes besides the store (`--output`): an OCI layout
//! (a directory, or a tar), a docker-archive tar, or the final root
//! filesystem as a plain directory.
//!
//! ```
//! use kiln_builder::export::Output;
//! let out = Output::parse("type=oci,dest=/tmp/image.tar").unwrap();
//! assert_eq!(out, Output::Oci("/tmp/image.tar".into()));
//! assert!(Output::parse("type=oci").is_err());
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_layers::archive::{self, Format, SaveItem};
use kiln_layers::compressed::compressed_image;
use kiln_layers::{Compression, Descriptor, Platform, Reference, Reporter, Store};

use crate::copy::CopyOptions;
use crate::rootfs::LayeredRootfs;
use crate::solve::BuiltImage;

/// One `--output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// `type=oci,dest=DIR|FILE.tar`: an OCI image layout.
    Oci(PathBuf),
    /// `type=docker,dest=FILE.tar`: a docker-archive (`docker load` reads it).
    Docker(PathBuf),
    /// `type=local,dest=DIR`: the final root filesystem.
    Local(PathBuf),
}

/// Why an output could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("--output {spec}: {message}")]
    Spec { spec: String, message: String },
    #[error("--output {dest}: {source}")]
    Store {
        dest: PathBuf,
        #[source]
        source: kiln_layers::Error,
    },
    #[error("--output {dest}: {message}")]
    Copy { dest: PathBuf, message: String },
}

impl Output {
    /// Parses `type=KIND,dest=PATH` (`type` defaults to `local`).
    pub fn parse(spec: &str) -> Result<Output, ExportError> {
        let bad = |message: String| ExportError::Spec {
            spec: spec.to_string(),
            message,
        };
        let fields: BTreeMap<String, String> = spec
            .split(',')
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            })
            .collect();
        let dest = fields
            .get("dest")
            .map(PathBuf::from)
            .ok_or_else(|| bad("dest= is required".into()))?;
        match fields.get("type").map(String::as_str).unwrap_or("local") {
            "oci" => Ok(Output::Oci(dest)),
            "docker" => Ok(Output::Docker(dest)),
            "local" => Ok(Output::Local(dest)),
            other => Err(bad(format!(
                "type={other} is not supported (oci, docker, local)"
            ))),
        }
    }

    fn dest(&self) -> &Path {
        match self {
            Output::Oci(p) | Output::Docker(p) | Output::Local(p) => p,
        }
    }

    /// Writes `built` there. An image output returns the manifest it wrote
    /// (its layers compressed, as BuildKit's oci and docker exporters do);
    /// `name` is the reference the archive records.
    pub fn write(
        &self,
        store: &Store,
        built: &BuiltImage,
        name: &Reference,
        compression: Compression,
        reporter: &dyn Reporter,
    ) -> Result<Option<Descriptor>, ExportError> {
        let dest = self.dest().to_path_buf();
        let store_err = |source| ExportError::Store {
            dest: dest.clone(),
            source,
        };
        let format = match self {
            Output::Oci(_) => Format::Oci,
            Output::Docker(_) => Format::Docker,
            Output::Local(_) => {
                export_local(store, &built.snapshots, &dest)?;
                return Ok(None);
            }
        };
        let manifest =
            compressed_image(store, &built.manifest, compression, reporter).map_err(store_err)?;
        let item = SaveItem {
            reference: name.clone(),
            image: store
                .read_image(&manifest, &built.platform())
                .map_err(store_err)?,
        };
        archive::save(store, &[item], format, &dest).map_err(store_err)?;
        Ok(Some(manifest))
    }
}

/// The final root filesystem, merged from the snapshots, into `dest`.
fn export_local(
    store: &Store,
    snapshots_bottom_first: &[PathBuf],
    dest: &Path,
) -> Result<(), ExportError> {
    let copy_err = |message: String| ExportError::Copy {
        dest: dest.to_path_buf(),
        message,
    };
    std::fs::create_dir_all(dest).map_err(|e| copy_err(e.to_string()))?;
    // The source view needs an (empty) upper dir of its own.
    let scratch = store
        .scratch_dir("export")
        .map_err(|e| copy_err(e.to_string()))?;
    let source = LayeredRootfs::new(
        scratch.path(),
        snapshots_bottom_first.iter().rev().cloned().collect(),
    );
    let target = LayeredRootfs::new(dest, Vec::new());
    let mut options = CopyOptions::dockerfile_copy(false);
    options.allow_wildcard = false;
    crate::copy::copy(&source, "/", &target, "/", &options).map_err(|e| copy_err(e.to_string()))?;
    Ok(())
}

impl BuiltImage {
    /// The platform the image's config names.
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.config.architecture.clone(),
            os: self.config.os.clone(),
            os_version: self.config.os_version.clone(),
            os_features: None,
            variant: self.config.variant.clone(),
        }
    }
}
