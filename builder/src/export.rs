//! Where a built image goes besides the store (`--output`, with buildx's
//! forms): an OCI layout (a directory, or a tar), a docker-archive tar, the
//! final root filesystem as a directory (`type=local`, or `-o DIR`) or a
//! tar (`type=tar`, or `-o -` for standard output), or the image itself
//! under more names, pushed or not (`type=image,name=…,push=…`;
//! `type=registry` pushes).
//!
//! ```
//! use kiln_builder::export::{Dest, Output};
//! let out = Output::parse("type=oci,dest=/tmp/image.tar").unwrap();
//! assert_eq!(out, Output::Oci("/tmp/image.tar".into()));
//! assert_eq!(Output::parse("out").unwrap(), Output::Local("out".into()));
//! assert_eq!(Output::parse("-").unwrap(), Output::Tar(Dest::Stdout));
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
    /// `type=local,dest=DIR` (or `-o DIR`): the final root filesystem.
    Local(PathBuf),
    /// `type=tar,dest=FILE|-` (or `-o -`): the final root filesystem as a
    /// tar.
    Tar(Dest),
    /// `type=image[,name=REF[,REF…]][,push=true]`, `type=registry` (push
    /// implied): the image in the store under these names too, pushed when
    /// asked.
    Image { names: Vec<Reference>, push: bool },
}

/// A file, or standard output (`-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    File(PathBuf),
    Stdout,
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
    /// Parses `type=KIND,key=value,…` (`type` defaults to `local`), or the
    /// shorthands `PATH` (`type=local,dest=PATH`) and `-` (a tar of the
    /// root filesystem to standard output).
    pub fn parse(spec: &str) -> Result<Output, ExportError> {
        let bad = |message: String| ExportError::Spec {
            spec: spec.to_string(),
            message,
        };
        if !spec.contains('=') && !spec.contains(',') {
            return Ok(match spec {
                "-" => Output::Tar(Dest::Stdout),
                "" => return Err(bad("an output needs a destination".into())),
                path => Output::Local(PathBuf::from(path)),
            });
        }
        let fields = kiln_parser::mount::csv_fields(spec).map_err(|e| bad(e.to_string()))?;
        let mut map: BTreeMap<String, String> = BTreeMap::new();
        for field in fields {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| bad(format!("invalid field '{field}' must be a key=value pair")))?;
            map.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
        let kind = map.remove("type").unwrap_or_else(|| "local".into());
        let dest = map.remove("dest");
        let output = match kind.as_str() {
            "oci" | "docker" | "local" | "tar" => {
                let dest = dest.ok_or_else(|| bad("dest= is required".into()))?;
                if dest.is_empty() {
                    return Err(bad(
                        "dest= is empty: a path, or - for standard output".into()
                    ));
                }
                if kind == "local" && dest == "-" {
                    return Err(bad("type=local writes a directory, not standard output: \
                         type=tar,dest=- (or -o -) writes the files as a tar there"
                        .into()));
                }
                match kind.as_str() {
                    "oci" => Output::Oci(dest.into()),
                    "docker" => Output::Docker(dest.into()),
                    "local" => Output::Local(dest.into()),
                    _ if dest == "-" => Output::Tar(Dest::Stdout),
                    _ => Output::Tar(Dest::File(dest.into())),
                }
            }
            "image" | "registry" => {
                if dest.is_some() {
                    return Err(bad(format!("dest= is not an option of type={kind}")));
                }
                let names = match map.remove("name") {
                    None => Vec::new(),
                    Some(names) => names
                        .split(',')
                        .map(|n| Reference::parse_tag(n.trim()).map_err(|e| bad(e.to_string())))
                        .collect::<Result<_, _>>()?,
                };
                let push = match map.remove("push").as_deref() {
                    None => kind == "registry",
                    Some("true") => true,
                    Some("false") => kind == "registry",
                    Some(other) => return Err(bad(format!("push={other}: true or false"))),
                };
                Output::Image { names, push }
            }
            other => {
                return Err(bad(format!(
                    "type={other} is not supported (oci, docker, local, tar, image, registry)"
                )))
            }
        };
        // Every option of a kind is used above: anything left is unknown.
        if let Some(key) = map.keys().next() {
            return Err(bad(format!("{key}= is not an option of type={kind}")));
        }
        Ok(output)
    }

    /// Whether the output goes to standard output (nothing else may,
    /// neither another output nor the image id): `-o -`, `dest=-` of a tar,
    /// an OCI layout or a docker-archive.
    pub fn to_stdout(&self) -> bool {
        match self {
            Output::Tar(dest) => *dest == Dest::Stdout,
            Output::Oci(dest) | Output::Docker(dest) => dest.as_os_str() == "-",
            Output::Local(_) | Output::Image { .. } => false,
        }
    }

    /// Writes `built` there (an image output is the session's: names and
    /// pushes). An archive output returns the manifest it wrote (its
    /// layers compressed, as BuildKit's oci and docker exporters do);
    /// `name` is the reference the archive records.
    pub fn write(
        &self,
        store: &Store,
        built: &BuiltImage,
        name: &Reference,
        compression: Compression,
        reporter: &dyn Reporter,
    ) -> Result<Option<Descriptor>, ExportError> {
        let (format, dest) = match self {
            Output::Oci(dest) => (Format::Oci, dest),
            Output::Docker(dest) => (Format::Docker, dest),
            Output::Local(dest) => {
                export_local(store, &built.snapshots, dest)?;
                return Ok(None);
            }
            Output::Tar(dest) => {
                export_tar(store, &[(None, &built.snapshots)], dest)?;
                return Ok(None);
            }
            Output::Image { .. } => return Ok(None),
        };
        let store_err = |source| ExportError::Store {
            dest: dest.clone(),
            source,
        };
        let manifest =
            compressed_image(store, &built.manifest, compression, reporter).map_err(store_err)?;
        let item = SaveItem::single(
            name.clone(),
            store
                .read_image(&manifest, &built.platform())
                .map_err(store_err)?,
        );
        archive::save(store, &[item], format, dest).map_err(store_err)?;
        Ok(Some(manifest))
    }
}

impl Output {
    /// Refuses, before a build that makes an index runs (several
    /// platforms, or one with `BUILDKIT_MULTI_PLATFORM`), an output that
    /// cannot hold one: a docker-archive (as BuildKit's docker exporter
    /// refuses a manifest list).
    pub fn check_platforms(&self, platforms: &[Platform]) -> Result<(), ExportError> {
        let Output::Docker(dest) = self else {
            return Ok(());
        };
        let message = match platforms {
            [one] => format!(
                "type=docker: a docker-archive holds one image, not an index, and \
                 BUILDKIT_MULTI_PLATFORM asks for an index of {one}; leave the build arg out, \
                 or use type=oci"
            ),
            _ => format!(
                "type=docker: a docker-archive holds one platform's image, and this build \
                 makes {} ({}); use type=oci, or build one --platform",
                platforms.len(),
                platforms
                    .iter()
                    .map(Platform::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Err(ExportError::Copy {
            dest: dest.clone(),
            message,
        })
    }

    /// Writes a multi-platform build's `index` (as stored) and its
    /// platforms' `images` there: an OCI layout of the index (layers
    /// compressed); the root filesystems under one directory per platform
    /// (`linux_amd64`, `linux_arm_v7`, as buildx names them) for
    /// type=local and type=tar. Returns the index an archive holds.
    pub fn write_index(
        &self,
        store: &Store,
        index: &Descriptor,
        images: &[BuiltImage],
        name: &Reference,
        compression: Compression,
        reporter: &dyn Reporter,
    ) -> Result<Option<Descriptor>, ExportError> {
        let dirs: Vec<(String, &BuiltImage)> = images
            .iter()
            .map(|b| (platform_dir(&b.platform()), b))
            .collect();
        match self {
            Output::Oci(dest) => {
                let store_err = |source| ExportError::Store {
                    dest: dest.clone(),
                    source,
                };
                let compressed =
                    compressed_image(store, index, compression, reporter).map_err(store_err)?;
                let item = SaveItem::held(store, name.clone(), &compressed, &images[0].platform())
                    .map_err(store_err)?;
                archive::save(store, &[item], Format::Oci, dest).map_err(store_err)?;
                Ok(Some(compressed))
            }
            Output::Docker(_) => {
                let platforms: Vec<Platform> = images.iter().map(BuiltImage::platform).collect();
                self.check_platforms(&platforms)?;
                Ok(None)
            }
            Output::Local(dest) => {
                for (dir, built) in &dirs {
                    export_local(store, &built.snapshots, &dest.join(dir))?;
                }
                Ok(None)
            }
            Output::Tar(dest) => {
                let trees: Vec<(Option<&str>, &[PathBuf])> = dirs
                    .iter()
                    .map(|(dir, built)| (Some(dir.as_str()), built.snapshots.as_slice()))
                    .collect();
                export_tar(store, &trees, dest)?;
                Ok(None)
            }
            Output::Image { .. } => Ok(None),
        }
    }
}

/// The directory a platform's root filesystem goes in when an output holds
/// several: `os_arch[_variant]`.
fn platform_dir(platform: &Platform) -> String {
    platform.normalized().to_string().replace('/', "_")
}

/// Root filesystems (its files' times clamped by nothing: as they are in
/// the image) as one tar into `dest`: each tree at the top, or under its
/// directory.
fn export_tar(
    store: &Store,
    trees: &[(Option<&str>, &[PathBuf])],
    dest: &Dest,
) -> Result<(), ExportError> {
    let shown = match dest {
        Dest::File(path) => path.clone(),
        Dest::Stdout => PathBuf::from("-"),
    };
    let failed = |message: String| ExportError::Copy {
        dest: shown.clone(),
        message,
    };
    let scratch = store
        .scratch_dir("export")
        .map_err(|e| failed(e.to_string()))?;
    let merged = scratch.path().join("rootfs");
    for (dir, snapshots_bottom_first) in trees {
        let into = match dir {
            Some(dir) => merged.join(dir),
            None => merged.clone(),
        };
        export_local(store, snapshots_bottom_first, &into)?;
    }
    let options = kiln_layers::diff::DiffOptions {
        source_date_epoch: None,
        overlay_whiteouts: false,
        write_back: false,
    };
    match dest {
        Dest::File(path) => {
            let file = std::fs::File::create(path).map_err(|e| failed(e.to_string()))?;
            let mut out =
                kiln_layers::diff::write_tar(&merged, std::io::BufWriter::new(file), &options)
                    .map_err(|e| failed(e.to_string()))?;
            std::io::Write::flush(&mut out).map_err(|e| failed(e.to_string()))
        }
        Dest::Stdout => {
            let stdout = std::io::stdout().lock();
            let mut out =
                kiln_layers::diff::write_tar(&merged, std::io::BufWriter::new(stdout), &options)
                    .map_err(|e| failed(e.to_string()))?;
            std::io::Write::flush(&mut out).map_err(|e| failed(e.to_string()))
        }
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
